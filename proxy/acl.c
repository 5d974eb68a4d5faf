/* SPDX-License-Identifier: Apache-2.0 */
/* acl: network, client-credential and repository checks; see acl.h. */
#include "acl.h"

#include <arpa/inet.h>
#include <crypt.h>
#include <fnmatch.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../util/util.h"

#define HTPASSWD_MAX (1024 * 1024)
#define HTPASSWD_WARN_MAX 50 /* entries named one by one; the rest are counted */
#define VERIFIED_MAX 256
#define FAILED_MAX 64
#define FAIL_HASHES_PER_S 4.0
#define PEER_FAIL_PER_S 1.0
#define PEER_FAIL_BURST 2.0
#define PEERS_MAX 128      /* client addresses whose share is tracked; the stalest gives way */
#define PEER_HASHING_MAX 2 /* distinct credentials of one address hashing at once */

int rp_acl_parse_cidr(const char *s, struct rp_cidr *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (strlen(s) >= sizeof(buf))
        return -1;
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    long bits = -1;
    if (slash) {
        *slash = '\0';
        uint64_t v;
        if (rp_parse_u64(slash + 1, strlen(slash + 1), &v) < 0 || v > 128)
            return -1;
        bits = (long)v;
    }
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        if (bits > 32)
            return -1;
        out->bits = bits < 0 ? 32 : (unsigned)bits;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        out->bits = bits < 0 ? 128 : (unsigned)bits;
    } else {
        return -1;
    }
    size_t len = out->family == AF_INET ? 4 : 16;
    for (size_t i = 0; i < len; i++) {
        unsigned keep = out->bits >= (i + 1) * 8 ? 8 : out->bits > i * 8 ? out->bits - i * 8 : 0;
        uint8_t mask = keep ? (uint8_t)(0xff << (8 - keep)) : 0;
        if (out->addr[i] & (uint8_t)~mask)
            return -1;
    }
    return 0;
}

static bool prefix_match(const uint8_t *a, const uint8_t *net, unsigned bits)
{
    for (unsigned i = 0; i < bits / 8; i++)
        if (a[i] != net[i])
            return false;
    unsigned rest = bits % 8;
    if (!rest)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bits / 8] & mask) == (net[bits / 8] & mask);
}

bool rp_acl_allows(const struct rp_cidr *nets, size_t n, const struct sockaddr *sa)
{
    if (n == 0)
        return true;
    uint8_t v4[4], v6[16];
    bool has4 = false, has6 = false;
    if (sa->sa_family == AF_INET) {
        memcpy(v4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        has4 = true;
    } else if (sa->sa_family == AF_INET6) {
        memcpy(v6, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        has6 = true;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(v6, mapped, 12) == 0) {
            memcpy(v4, v6 + 12, 4);
            has4 = true;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (nets[i].family == AF_INET && has4 && prefix_match(v4, nets[i].addr, nets[i].bits))
            return true;
        if (nets[i].family == AF_INET6 && has6 && prefix_match(v6, nets[i].addr, nets[i].bits))
            return true;
    }
    return false;
}

bool rp_acl_repo_allowed(char *const *patterns, size_t n, const char *repo, bool dockerhub)
{
    if (n == 0)
        return true;
    /* Routing turned the client's "nginx" into "library/nginx"; the operator wrote it the
     * client's way. Only a one-component rest: "library/a/b" was never a short name. */
    const char *short_name = NULL;
    if (dockerhub && strncmp(repo, "library/", 8) == 0 && !strchr(repo + 8, '/'))
        short_name = repo + 8;
    for (size_t i = 0; i < n; i++)
        if (fnmatch(patterns[i], repo, FNM_PATHNAME) == 0 ||
            (short_name && fnmatch(patterns[i], short_name, FNM_PATHNAME) == 0))
            return true;
    return false;
}

struct htpasswd_user {
    char *name;
    char *hash;
    bool usable; /* a password may match hash (unusable_hash) */
};

struct rp_htpasswd {
    struct htpasswd_user *users;
    size_t n;
    /* The first usable entry: what an unknown user, or one that can never log in, is
     * hashed against (crypt refuses the others at once, which would tell them apart). n
     * when there is none (then nothing is hashed, for anyone). */
    size_t decoy;
    char **warnings; /* see rp_htpasswd_warning */
    size_t n_warnings;
    /* Keyed digests of credentials that verified: HMAC(key, user:pass). The key is random
     * per process, so the table is useless to anyone who reads the memory later. */
    unsigned char key[32];
    unsigned char verified[VERIFIED_MAX][32];
    size_t n_verified, next_verified;
    /* Credentials that failed lately (same keyed digest): asked again, no second hash. */
    unsigned char failed[FAILED_MAX][32];
    size_t n_failed, next_failed;
    /* Hashes of credentials that failed, as a token bucket (FAIL_HASHES_PER_S, at most
     * that many saved up): past it, unknown credentials fail without hashing, so guesses
     * cannot hold the event loop (a bcrypt is tens of ms, and runs on it). */
    double fail_tokens;
    int64_t fail_refill_ms;
    /* Each client address's share of those, as a bucket of its own. */
    struct peer_share {
        unsigned char key[17]; /* family, then the IPv4 address or the IPv6 /64 */
        double tokens;
        int64_t refill_ms;
    } peers[PEERS_MAX];
    size_t n_peers;
    struct rp_htpasswd_job *jobs; /* hashing now */
    size_t n_jobs;
    bool orphaned;   /* freed while jobs ran: the last one frees it */
    size_t n_hashes; /* hashes computed so far, for tests */
};

struct rp_htpasswd_job {
    struct rp_htpasswd *h;
    struct rp_htpasswd_job *next; /* h->jobs */
    unsigned char mac[32];
    unsigned char peer[17];
    char *pass, *hash; /* copies: the work runs off the loop */
    bool known, ok;
    bool hashed; /* crypt computed a hash (it refuses a locked or unknown setting at once) */
    struct rp_htpasswd_waiter *waiters;
};

/* The address part of "a.b.c.d:port" or "[v6]:port", as a key: IPv6 clients are counted by
 * /64, as one host usually owns at least that much. Anything else is one shared key. */
static void peer_key(const char *peer, unsigned char key[17])
{
    memset(key, 0, 17);
    if (!peer)
        return;
    char addr[INET6_ADDRSTRLEN + 1];
    const char *colon = strrchr(peer, ':');
    size_t n = colon ? (size_t)(colon - peer) : strlen(peer);
    if (n >= 2 && peer[0] == '[' && peer[n - 1] == ']') {
        peer++;
        n -= 2;
    }
    if (n >= sizeof(addr))
        return;
    memcpy(addr, peer, n);
    addr[n] = '\0';
    unsigned char bin[16];
    if (inet_pton(AF_INET, addr, bin) == 1) {
        key[0] = 4;
        memcpy(key + 1, bin, 4);
    } else if (inet_pton(AF_INET6, addr, bin) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(bin, mapped, 12) == 0) {
            /* An IPv4 client on a [::] listener: keyed as itself, not as the ::/64 every
             * IPv4 client shares (one guesser would lock all of them out). */
            key[0] = 4;
            memcpy(key + 1, bin + 12, 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, bin, 8);
        }
    }
}

static void refill(double *tokens, int64_t *since_ms, int64_t now, double rate, double cap)
{
    *tokens += (double)(now - *since_ms) * rate / 1000.0;
    if (*tokens > cap)
        *tokens = cap;
    *since_ms = now;
}

/* The client's share, refilled to now; a new client takes the stalest slot when all are
 * used (a stale one has refilled anyway). */
static struct peer_share *peer_share(struct rp_htpasswd *h, const unsigned char key[17],
                                     int64_t now)
{
    struct peer_share *s = NULL, *stalest = NULL;
    for (size_t i = 0; i < h->n_peers && !s; i++) {
        if (memcmp(h->peers[i].key, key, 17) == 0)
            s = &h->peers[i];
        else if (!stalest || h->peers[i].refill_ms < stalest->refill_ms)
            stalest = &h->peers[i];
    }
    if (!s) {
        s = h->n_peers < PEERS_MAX ? &h->peers[h->n_peers++] : stalest;
        memcpy(s->key, key, 17);
        s->tokens = PEER_FAIL_BURST;
        s->refill_ms = now;
    }
    refill(&s->tokens, &s->refill_ms, now, PEER_FAIL_PER_S, PEER_FAIL_BURST);
    return s;
}

void rp_htpasswd_free(struct rp_htpasswd *h)
{
    if (!h)
        return;
    if (h->n_jobs) { /* their verdicts are dropped; rp_htpasswd_job_done frees h */
        h->orphaned = true;
        return;
    }
    for (size_t i = 0; i < h->n; i++) {
        free(h->users[i].name);
        rp_free_secret(h->users[i].hash);
    }
    free(h->users);
    for (size_t i = 0; i < h->n_warnings; i++)
        free(h->warnings[i]);
    free(h->warnings);
    rp_secure_zero(h, sizeof(*h));
    free(h);
}

/* Why no password can ever match hash, or NULL when one may. Login fails on these
 * without a word (crypt(3) refuses them), so the load says it; the reason never quotes
 * the hash. */
static const char *unusable_hash(const char *hash)
{
    if (strncmp(hash, "{SHA}", 5) == 0)
        return "{SHA} (unsalted SHA-1) hashes are not accepted; set the password again with "
               "htpasswd -B";
    if (hash[0] == '!' || hash[0] == '*')
        return "the entry is locked (its hash starts with '!' or '*')";
    if (strncmp(hash, "$apr1$", 6) == 0)
        return NULL;
    int cs = crypt_checksalt(hash);
    /* Traditional DES, the one "legacy" method without a prefix, is always 13 characters:
     * anything else of that shape (a plain-text password) matches nothing. */
    bool des_shape = hash[0] != '$' && hash[0] != '_';
    if (cs == CRYPT_SALT_INVALID || cs == CRYPT_SALT_METHOD_DISABLED ||
        (cs == CRYPT_SALT_METHOD_LEGACY && des_shape && strlen(hash) != 13))
        return "not a password hash crypt(3) knows here (plain text?); set the password again "
               "with htpasswd -B";
    return NULL;
}

const char *rp_htpasswd_warning(const struct rp_htpasswd *h, size_t i)
{
    return h && i < h->n_warnings ? h->warnings[i] : NULL;
}

struct rp_htpasswd *rp_htpasswd_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return NULL;
    }
    struct rp_htpasswd *h = rp_xcalloc(1, sizeof(*h));
    RAND_bytes(h->key, sizeof(h->key));
    h->fail_tokens = FAIL_HASHES_PER_S;
    h->fail_refill_ms = rp_now_ms();
    char line[4096];
    unsigned lineno = 0;
    size_t total = 0, unusable = 0;
    for (;;) {
        /* fgets ends what it read with a NUL: only a read that filled the buffer puts one
         * in its last byte, whatever NUL bytes the line has (strlen would stop at those). */
        line[sizeof(line) - 1] = '\n';
        if (!fgets(line, sizeof(line), f))
            break;
        lineno++;
        bool full = line[sizeof(line) - 1] == '\0';
        size_t chunk = full ? sizeof(line) - 1 : strlen(line);
        total += chunk;
        /* A line that fills the buffer has more: read on to its end, so that its rest is
         * never taken as a line of its own (the tail of a long commented-out entry would
         * be a live account). */
        bool longer = false;
        if (full && line[chunk - 1] != '\n') {
            size_t more = 0;
            bool cr = false;
            int ch;
            while ((ch = getc(f)) != EOF && ch != '\n' && ++total <= HTPASSWD_MAX) {
                more++;
                cr = ch == '\r';
            }
            total += ch == '\n';
            longer = more > (cr ? 1u : 0u); /* a CRLF's CR alone does not make it longer */
        }
        if (total > HTPASSWD_MAX) {
            snprintf(err, errlen, "%s: larger than 1 MiB", path);
            goto fail;
        }
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        if (longer) {
            snprintf(err, errlen, "%s:%u: line longer than %zu bytes", path, lineno,
                     sizeof(line) - 1);
            goto fail;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line || !colon[1] || colon[1] == ':') {
            snprintf(err, errlen, "%s:%u: expected user:hash", path, lineno);
            goto fail;
        }
        *colon = '\0';
        /* nginx files may end a line with ":comment"; no hash has a ':' of its own. */
        char *comment = strchr(colon + 1, ':');
        if (comment)
            *comment = '\0';
        h->users = rp_xrealloc(h->users, (h->n + 1) * sizeof(*h->users));
        h->users[h->n].name = rp_xstrdup(line);
        h->users[h->n].hash = rp_xstrdup(colon + 1);
        const char *why = unusable_hash(colon + 1);
        h->users[h->n].usable = !why;
        h->n++;
        if (why && ++unusable <= HTPASSWD_WARN_MAX) {
            /* The name goes into a log line: nothing in it may end or forge one. */
            for (char *p = line; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '\'')
                    *p = '?';
            h->warnings = rp_xrealloc(h->warnings, (h->n_warnings + 1) * sizeof(*h->warnings));
            h->warnings[h->n_warnings++] =
                rp_xasprintf("%s:%u: user '%s' can never log in: %s", path, lineno, line, why);
        }
    }
    fclose(f);
    for (h->decoy = 0; h->decoy < h->n && !h->users[h->decoy].usable; h->decoy++)
        ;
    if (unusable > HTPASSWD_WARN_MAX) {
        h->warnings = rp_xrealloc(h->warnings, (h->n_warnings + 1) * sizeof(*h->warnings));
        h->warnings[h->n_warnings++] = rp_xasprintf("%s: %zu more entries can never log in", path,
                                                    unusable - HTPASSWD_WARN_MAX);
    }
    return h;
fail:
    fclose(f);
    rp_htpasswd_free(h);
    return NULL;
}

static void remember(unsigned char (*ring)[32], size_t max, size_t *n, size_t *next,
                     const unsigned char mac[32])
{
    memcpy(ring[*next], mac, 32);
    *next = (*next + 1) % max;
    if (*n < max)
        (*n)++;
}

static bool in_ring(unsigned char (*ring)[32], size_t n, const unsigned char mac[32])
{
    for (size_t i = 0; i < n; i++)
        if (CRYPTO_memcmp(ring[i], mac, 32) == 0)
            return true;
    return false;
}

enum rp_htpasswd_verdict rp_htpasswd_begin(struct rp_htpasswd *h, const char *authorization,
                                           const char *peer, struct rp_htpasswd_waiter *w,
                                           struct rp_htpasswd_job **submit)
{
    *submit = NULL;
    if (!authorization || strncasecmp(authorization, "Basic ", 6) != 0)
        return RP_HTPASSWD_FAIL;
    const char *b64 = authorization + 6;
    while (*b64 == ' ')
        b64++;
    size_t dlen = 0;
    unsigned char *dec = rp_base64_decode(b64, strlen(b64), &dlen);
    if (!dec)
        return RP_HTPASSWD_FAIL;
    enum rp_htpasswd_verdict v = RP_HTPASSWD_FAIL;
    char *colon = memchr(dec, ':', dlen);
    /* A NUL would end the name or the password early where they are used as C strings:
     * "user:pass\0anything" would pass as user:pass. */
    if (!colon || dlen > 4096 || memchr(dec, '\0', dlen))
        goto out;
    unsigned char mac[32];
    unsigned int maclen = sizeof(mac);
    /* sha256(random key || user:pass): a keyed digest, enough to recognise a credential
     * that already verified without keeping it. */
    unsigned char keyed[32 + 4096];
    memcpy(keyed, h->key, 32);
    memcpy(keyed + 32, dec, dlen);
    EVP_Digest(keyed, 32 + dlen, mac, &maclen, EVP_sha256(), NULL);
    rp_secure_zero(keyed, sizeof(keyed));
    if (in_ring(h->verified, h->n_verified, mac)) {
        v = RP_HTPASSWD_OK;
        goto out;
    }
    if (in_ring(h->failed, h->n_failed, mac))
        goto out;
    unsigned char key[17];
    peer_key(peer, key);
    size_t hashing_here = 0;
    for (struct rp_htpasswd_job *j = h->jobs; j; j = j->next) {
        if (CRYPTO_memcmp(j->mac, mac, 32) == 0) { /* being hashed: wait for that one */
            w->job = j;
            w->next = j->waiters;
            j->waiters = w;
            v = RP_HTPASSWD_WAIT;
            goto out;
        }
        hashing_here += memcmp(j->peer, key, sizeof(key)) == 0;
    }
    /* Failures refill the budgets over time; a success is never refused by them. */
    int64_t now = rp_now_ms();
    refill(&h->fail_tokens, &h->fail_refill_ms, now, FAIL_HASHES_PER_S, FAIL_HASHES_PER_S);
    struct peer_share *share = peer_share(h, key, now);
    if (h->fail_tokens < 1.0 || share->tokens < 1.0 || hashing_here >= PEER_HASHING_MAX)
        goto out; /* guessing faster than the budget: refused unhashed */
    *colon = '\0';
    const char *user = (const char *)dec;
    /* An unknown user is hashed too (against the first usable entry's hash, and fails), so
     * the time taken does not tell which user names exist; so is a user whose entry can never
     * log in (crypt would refuse a locked or {SHA} hash at once). */
    const struct htpasswd_user *u = NULL;
    for (size_t i = 0; i < h->n && !u; i++)
        if (strcmp(h->users[i].name, user) == 0)
            u = &h->users[i];
    bool known = u && u->usable;
    if (!known)
        u = h->decoy < h->n ? &h->users[h->decoy] : NULL;
    if (!u)
        goto out;
    /* Every hash is taken as a failure until it proves otherwise: hashes already running
     * count against the budgets, or parallel guesses would all start before any charged
     * it (and leave it in debt, refusing everyone's first logins for long after). */
    h->fail_tokens -= 1.0;
    share->tokens -= 1.0;
    struct rp_htpasswd_job *j = rp_xcalloc(1, sizeof(*j));
    j->h = h;
    memcpy(j->mac, mac, 32);
    memcpy(j->peer, key, sizeof(key));
    j->pass = rp_xstrdup(colon + 1);
    j->hash = rp_xstrdup(u->hash);
    j->known = known;
    j->next = h->jobs;
    h->jobs = j;
    h->n_jobs++;
    w->job = j;
    w->next = NULL;
    j->waiters = w;
    *submit = j;
    v = RP_HTPASSWD_WAIT;
out:
    rp_secure_zero(dec, dlen);
    free(dec);
    return v;
}

void rp_htpasswd_cancel(struct rp_htpasswd_waiter *w)
{
    if (!w->job)
        return;
    for (struct rp_htpasswd_waiter **pp = &w->job->waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    w->job = NULL;
}

/* Apache's MD5 crypt, "$apr1$SALT$HASH": htpasswd's default (-m) and what nginx takes, but
 * not one of crypt(3)'s methods. The md5crypt algorithm with its own magic string. Writes
 * the whole hash to out (at most 6 + 8 + 1 + 22 + 1 bytes); NULL when setting is not one. */
#define APR1_MAX 38
static const char *apr1_crypt(const char *pw, const char *setting, char out[APR1_MAX])
{
    static const char magic[] = "$apr1$";
    static const char itoa64[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    if (strncmp(setting, magic, 6) != 0)
        return NULL;
    const char *salt = setting + 6;
    size_t slen = strcspn(salt, "$");
    if (slen > 8)
        slen = 8;
    size_t plen = strlen(pw);
    unsigned char fin[16], alt[16];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const char *res = NULL;
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_md5(), NULL) != 1)
        goto out;
    EVP_DigestUpdate(ctx, pw, plen);
    EVP_DigestUpdate(ctx, salt, slen);
    EVP_DigestUpdate(ctx, pw, plen);
    EVP_DigestFinal_ex(ctx, alt, NULL);
    EVP_DigestInit_ex(ctx, EVP_md5(), NULL);
    EVP_DigestUpdate(ctx, pw, plen);
    EVP_DigestUpdate(ctx, magic, 6);
    EVP_DigestUpdate(ctx, salt, slen);
    for (size_t left = plen; left > 0; left -= left > 16 ? 16 : left)
        EVP_DigestUpdate(ctx, alt, left > 16 ? 16 : left);
    for (size_t i = plen; i; i >>= 1)
        EVP_DigestUpdate(ctx, (i & 1) ? "" : pw, 1);
    EVP_DigestFinal_ex(ctx, fin, NULL);
    for (int i = 0; i < 1000; i++) {
        EVP_DigestInit_ex(ctx, EVP_md5(), NULL);
        if (i & 1)
            EVP_DigestUpdate(ctx, pw, plen);
        else
            EVP_DigestUpdate(ctx, fin, 16);
        if (i % 3)
            EVP_DigestUpdate(ctx, salt, slen);
        if (i % 7)
            EVP_DigestUpdate(ctx, pw, plen);
        if (i & 1)
            EVP_DigestUpdate(ctx, fin, 16);
        else
            EVP_DigestUpdate(ctx, pw, plen);
        EVP_DigestFinal_ex(ctx, fin, NULL);
    }
    char *o = out + snprintf(out, APR1_MAX, "%s%.*s$", magic, (int)slen, salt);
    static const unsigned char order[5][3] = {
        {0, 6, 12}, {1, 7, 13}, {2, 8, 14}, {3, 9, 15}, {4, 10, 5}};
    for (int g = 0; g < 5; g++) {
        unsigned long v = ((unsigned long)fin[order[g][0]] << 16) |
                          ((unsigned long)fin[order[g][1]] << 8) | fin[order[g][2]];
        for (int k = 0; k < 4; k++, v >>= 6)
            *o++ = itoa64[v & 0x3f];
    }
    unsigned long v = fin[11];
    for (int k = 0; k < 2; k++, v >>= 6)
        *o++ = itoa64[v & 0x3f];
    *o = '\0';
    res = out;
out:
    EVP_MD_CTX_free(ctx);
    rp_secure_zero(fin, sizeof(fin));
    rp_secure_zero(alt, sizeof(alt));
    return res;
}

void rp_htpasswd_job_work(void *arg)
{
    struct rp_htpasswd_job *j = arg;
    struct crypt_data cd;
    char apr1[APR1_MAX];
    memset(&cd, 0, sizeof(cd));
    const char *out = strncmp(j->hash, "$apr1$", 6) == 0 ? apr1_crypt(j->pass, j->hash, apr1)
                                                         : crypt_r(j->pass, j->hash, &cd);
    j->hashed = out && out[0] != '*';
    j->ok = j->known && out && out[0] != '*' && strlen(out) == strlen(j->hash) &&
            CRYPTO_memcmp(out, j->hash, strlen(out)) == 0;
    rp_secure_zero(&cd, sizeof(cd));
    rp_secure_zero(apr1, sizeof(apr1));
}

void rp_htpasswd_job_done(void *arg)
{
    struct rp_htpasswd_job *j = arg;
    struct rp_htpasswd *h = j->h;
    for (struct rp_htpasswd_job **pp = &h->jobs; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    h->n_jobs--;
    h->n_hashes += j->hashed;
    if (!h->orphaned) {
        if (j->ok) { /* the budgets are for failures: this one is given back */
            int64_t now = rp_now_ms();
            remember(h->verified, VERIFIED_MAX, &h->n_verified, &h->next_verified, j->mac);
            refill(&h->fail_tokens, &h->fail_refill_ms, now, FAIL_HASHES_PER_S, FAIL_HASHES_PER_S);
            if ((h->fail_tokens += 1.0) > FAIL_HASHES_PER_S)
                h->fail_tokens = FAIL_HASHES_PER_S;
            struct peer_share *share = peer_share(h, j->peer, now);
            if ((share->tokens += 1.0) > PEER_FAIL_BURST)
                share->tokens = PEER_FAIL_BURST;
        } else {
            remember(h->failed, FAILED_MAX, &h->n_failed, &h->next_failed, j->mac);
        }
    }
    /* Each waiter begins again and finds the verdict (or, h orphaned by a reload, the new
     * accounts). j is off h's list, so waking starts other jobs rather than joining this
     * one; it lives until all are woken, so that a waiter freed by another's wake-up is
     * taken off its list by rp_htpasswd_cancel rather than woken after free. */
    rp_free_secret(j->pass);
    rp_free_secret(j->hash);
    j->pass = j->hash = NULL;
    struct rp_htpasswd_waiter *w;
    while ((w = j->waiters)) {
        j->waiters = w->next;
        w->job = NULL;
        w->next = NULL;
        w->done(w);
    }
    rp_secure_zero(j, sizeof(*j));
    free(j);
    if (h->orphaned && h->n_jobs == 0) {
        h->orphaned = false;
        rp_htpasswd_free(h);
    }
}

static void check_done(struct rp_htpasswd_waiter *w)
{
    (void)w;
}

bool rp_htpasswd_check(struct rp_htpasswd *h, const char *authorization, const char *peer)
{
    struct rp_htpasswd_waiter w = {.done = check_done};
    struct rp_htpasswd_job *job = NULL;
    enum rp_htpasswd_verdict v = rp_htpasswd_begin(h, authorization, peer, &w, &job);
    if (v != RP_HTPASSWD_WAIT)
        return v == RP_HTPASSWD_OK;
    if (!job) { /* another caller's hash is running: no waiting here */
        rp_htpasswd_cancel(&w);
        return false;
    }
    rp_htpasswd_job_work(job);
    bool ok = job->ok;
    rp_htpasswd_job_done(job);
    return ok;
}

size_t rp_htpasswd_hashes(const struct rp_htpasswd *h)
{
    return h ? h->n_hashes : 0;
}
