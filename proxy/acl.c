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
#define VERIFIED_MAX 256
#define FAILED_MAX 64
#define FAIL_HASHES_PER_S 4.0
#define PEER_FAIL_PER_S 1.0
#define PEER_FAIL_BURST 2.0
#define PEERS_MAX 128 /* client addresses whose share is tracked; the stalest gives way */

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

bool rp_acl_repo_allowed(char *const *patterns, size_t n, const char *repo)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (fnmatch(patterns[i], repo, FNM_PATHNAME) == 0)
            return true;
    return false;
}

struct htpasswd_user {
    char *name;
    char *hash;
};

struct rp_htpasswd {
    struct htpasswd_user *users;
    size_t n;
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
    size_t n_hashes; /* crypt calls so far, for tests */
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
        key[0] = 6;
        memcpy(key + 1, bin, 8);
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
static struct peer_share *peer_share(struct rp_htpasswd *h, const char *peer, int64_t now)
{
    unsigned char key[17];
    peer_key(peer, key);
    struct peer_share *s = NULL, *stalest = NULL;
    for (size_t i = 0; i < h->n_peers && !s; i++) {
        if (memcmp(h->peers[i].key, key, sizeof(key)) == 0)
            s = &h->peers[i];
        else if (!stalest || h->peers[i].refill_ms < stalest->refill_ms)
            stalest = &h->peers[i];
    }
    if (!s) {
        s = h->n_peers < PEERS_MAX ? &h->peers[h->n_peers++] : stalest;
        memcpy(s->key, key, sizeof(key));
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
    for (size_t i = 0; i < h->n; i++) {
        free(h->users[i].name);
        rp_free_secret(h->users[i].hash);
    }
    free(h->users);
    rp_secure_zero(h, sizeof(*h));
    free(h);
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
    size_t total = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        total += strlen(line);
        if (total > HTPASSWD_MAX) {
            snprintf(err, errlen, "%s: larger than 1 MiB", path);
            goto fail;
        }
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        char *colon = strchr(line, ':');
        if (!colon || colon == line || !colon[1]) {
            snprintf(err, errlen, "%s:%u: expected user:hash", path, lineno);
            goto fail;
        }
        *colon = '\0';
        h->users = rp_xrealloc(h->users, (h->n + 1) * sizeof(*h->users));
        h->users[h->n].name = rp_xstrdup(line);
        h->users[h->n].hash = rp_xstrdup(colon + 1);
        h->n++;
    }
    fclose(f);
    return h;
fail:
    fclose(f);
    rp_htpasswd_free(h);
    return NULL;
}

bool rp_htpasswd_check(struct rp_htpasswd *h, const char *authorization, const char *peer)
{
    if (!authorization || strncasecmp(authorization, "Basic ", 6) != 0)
        return false;
    const char *b64 = authorization + 6;
    while (*b64 == ' ')
        b64++;
    size_t dlen = 0;
    unsigned char *dec = rp_base64_decode(b64, strlen(b64), &dlen);
    if (!dec)
        return false;
    bool ok = false;
    char *colon = memchr(dec, ':', dlen);
    if (!colon)
        goto out;
    unsigned char mac[32];
    unsigned int maclen = sizeof(mac);
    /* sha256(random key || user:pass): a keyed digest, enough to recognise a credential
     * that already verified without keeping it. */
    unsigned char keyed[32 + 4096];
    if (dlen > 4096)
        goto out;
    memcpy(keyed, h->key, 32);
    memcpy(keyed + 32, dec, dlen);
    EVP_Digest(keyed, 32 + dlen, mac, &maclen, EVP_sha256(), NULL);
    rp_secure_zero(keyed, sizeof(keyed));
    for (size_t i = 0; i < h->n_verified; i++)
        if (CRYPTO_memcmp(h->verified[i], mac, 32) == 0) {
            ok = true;
            goto out;
        }
    for (size_t i = 0; i < h->n_failed; i++)
        if (CRYPTO_memcmp(h->failed[i], mac, 32) == 0)
            goto out;
    /* Failures refill the budgets over time; a success is never refused by them. */
    int64_t now = rp_now_ms();
    refill(&h->fail_tokens, &h->fail_refill_ms, now, FAIL_HASHES_PER_S, FAIL_HASHES_PER_S);
    struct peer_share *share = peer_share(h, peer, now);
    if (h->fail_tokens < 1.0 || share->tokens < 1.0)
        goto out; /* guessing faster than the budget: refused unhashed */
    *colon = '\0';
    const char *user = (const char *)dec;
    const char *pass = colon + 1;
    /* An unknown user is hashed too (against the first user's hash, and fails), so the
     * time taken does not tell which user names exist. */
    const struct htpasswd_user *u = h->n ? &h->users[0] : NULL;
    bool known = false;
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->users[i].name, user) == 0) {
            u = &h->users[i];
            known = true;
            break;
        }
    if (u) {
        struct crypt_data cd;
        memset(&cd, 0, sizeof(cd));
        const char *out = crypt_r(pass, u->hash, &cd);
        h->n_hashes++;
        ok = known && out && out[0] != '*' && strlen(out) == strlen(u->hash) &&
             CRYPTO_memcmp(out, u->hash, strlen(out)) == 0;
        rp_secure_zero(&cd, sizeof(cd));
    }
    if (ok) {
        memcpy(h->verified[h->next_verified], mac, 32);
        h->next_verified = (h->next_verified + 1) % VERIFIED_MAX;
        if (h->n_verified < VERIFIED_MAX)
            h->n_verified++;
    } else {
        h->fail_tokens -= 1.0;
        share->tokens -= 1.0;
        memcpy(h->failed[h->next_failed], mac, 32);
        h->next_failed = (h->next_failed + 1) % FAILED_MAX;
        if (h->n_failed < FAILED_MAX)
            h->n_failed++;
    }
out:
    rp_secure_zero(dec, dlen);
    free(dec);
    return ok;
}

size_t rp_htpasswd_hashes(const struct rp_htpasswd *h)
{
    return h ? h->n_hashes : 0;
}
