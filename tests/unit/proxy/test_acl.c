/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/acl.c: CIDR parsing and matching, repository patterns, htpasswd. */
#include <arpa/inet.h>
#include <crypt.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <unistd.h>

#include "../unit.h"
#include "../../../proxy/acl.h"
#include "../../../util/util.h"

static struct sockaddr_storage v4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return ss;
}

static struct sockaddr_storage v6(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    sin6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &sin6->sin6_addr);
    return ss;
}

static void test_parse(void)
{
    struct rp_cidr c;
    CHECK(rp_acl_parse_cidr("10.0.0.0/8", &c) == 0 && c.family == AF_INET && c.bits == 8);
    CHECK(rp_acl_parse_cidr("192.168.1.7", &c) == 0 && c.bits == 32);
    CHECK(rp_acl_parse_cidr("fd00::/8", &c) == 0 && c.family == AF_INET6 && c.bits == 8);
    CHECK(rp_acl_parse_cidr("::1", &c) == 0 && c.bits == 128);
    CHECK(rp_acl_parse_cidr("0.0.0.0/0", &c) == 0 && c.bits == 0);
    CHECK(rp_acl_parse_cidr("10.0.0.1/8", &c) < 0); /* host bits set */
    CHECK(rp_acl_parse_cidr("10.0.0.0/33", &c) < 0);
    CHECK(rp_acl_parse_cidr("10.0.0.0/", &c) < 0);
    CHECK(rp_acl_parse_cidr("10.0.0.0/-1", &c) < 0);
    CHECK(rp_acl_parse_cidr("10.0.0", &c) < 0);
    CHECK(rp_acl_parse_cidr("example.com", &c) < 0);
    CHECK(rp_acl_parse_cidr("", &c) < 0);
    CHECK(rp_acl_parse_cidr("1.2.3.4/32/1", &c) < 0);
    CHECK(rp_acl_parse_cidr("fd00::/129", &c) < 0);
}

static void test_allows(void)
{
    struct rp_cidr nets[3];
    CHECK(rp_acl_parse_cidr("10.128.0.0/14", &nets[0]) == 0);
    CHECK(rp_acl_parse_cidr("172.30.0.0/16", &nets[1]) == 0);
    CHECK(rp_acl_parse_cidr("fd00::/8", &nets[2]) == 0);
    struct sockaddr_storage a;
    a = v4("10.129.3.4");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("10.132.0.1");
    CHECK(!rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("172.30.255.255");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("127.0.0.1");
    CHECK(!rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v6("::ffff:10.128.0.9");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v6("fdab::1");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v6("fe80::1");
    CHECK(!rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("8.8.8.8");
    CHECK(rp_acl_allows(nets, 0, (struct sockaddr *)&a)); /* no list: everyone */
}

static void test_repos(void)
{
    char *pats[] = {"openshift3/*", "rhel8/ubi"};
    CHECK(rp_acl_repo_allowed(pats, 2, "openshift3/ose-pod", false));
    CHECK(rp_acl_repo_allowed(pats, 2, "rhel8/ubi", false));
    CHECK(!rp_acl_repo_allowed(pats, 2, "rhel8/ubi-minimal", false));
    CHECK(!rp_acl_repo_allowed(pats, 2, "openshift3/a/b", false)); /* '*' stops at '/' */
    CHECK(!rp_acl_repo_allowed(pats, 2, "other/openshift3/x", false));
    CHECK(rp_acl_repo_allowed(pats, 0, "anything/at/all", false));
    /* Docker Hub: library/NAME is also NAME, as docker users write it. */
    char *hub[] = {"nginx", "bitnami/*"};
    CHECK(rp_acl_repo_allowed(hub, 2, "library/nginx", true));
    CHECK(!rp_acl_repo_allowed(hub, 2, "library/nginx", false));
    CHECK(rp_acl_repo_allowed(hub, 2, "bitnami/redis", true));
    CHECK(!rp_acl_repo_allowed(hub, 2, "library/redis", true));
    CHECK(!rp_acl_repo_allowed(hub, 2, "library/bitnami/x", true));
    CHECK(!rp_acl_repo_allowed(hub, 2, "someone/nginx", true));
    char *star[] = {"*"};
    CHECK(rp_acl_repo_allowed(star, 1, "library/nginx", true));
    CHECK(!rp_acl_repo_allowed(star, 1, "bitnami/redis", true));
}

static char *basic(const char *userpass)
{
    char *b = rp_base64_encode(userpass, strlen(userpass));
    char *h = rp_xasprintf("Basic %s", b);
    free(b);
    return h;
}

static void test_htpasswd(void)
{
    char dir[4096];
    unit_mkdtemp(dir, sizeof(dir), "rp-acl");
    char *path = rp_xasprintf("%s/htpasswd", dir);
    const char *salt = crypt_gensalt("$2b$", 5, NULL, 0);
    CHECK(salt != NULL);
    char *hash = rp_xstrdup(crypt("s3cret", salt));
    FILE *f = fopen(path, "w");
    char *hash2 = rp_xstrdup(crypt("other", salt));
    fprintf(f, "# nodes\n\nnode:%s\nnode2:%s\n", hash, hash2);
    free(hash2);
    fclose(f);
    char err[256];
    struct rp_htpasswd *h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    char *good = basic("node:s3cret"), *bad = basic("node:wrong"), *who = basic("nobody:s3cret");
    const char *a = "10.0.0.1:40000", *b = "10.0.0.2:40000";
    CHECK(rp_htpasswd_check(h, good, a));
    CHECK(rp_htpasswd_check(h, good, a)); /* remembered */
    CHECK_INT(rp_htpasswd_hashes(h), 1);
    CHECK(!rp_htpasswd_check(h, bad, b));
    CHECK(!rp_htpasswd_check(h, bad, b)); /* a failure is remembered too */
    CHECK_INT(rp_htpasswd_hashes(h), 2);
    CHECK(!rp_htpasswd_check(h, who, a)); /* an unknown user is hashed like a known one */
    CHECK_INT(rp_htpasswd_hashes(h), 3);
    /* One client guessing gets its share, 2 saved up (b has spent 1, refilled a little) and
     * 1 a second; the known-good still pass, from anywhere. */
    char guess[64];
    for (int i = 0; i < 50; i++) {
        snprintf(guess, sizeof(guess), "node:guess%d", i);
        char *g = basic(guess);
        CHECK(!rp_htpasswd_check(h, g, "10.0.0.2:40001")); /* same address, another port */
        free(g);
    }
    size_t after_b = rp_htpasswd_hashes(h);
    CHECK(after_b >= 3 + 1 && after_b <= 3 + 2);
    CHECK(rp_htpasswd_check(h, good, "10.0.0.2:1"));
    /* The rest of the budget is left to others: a first login from another address is
     * hashed and passes (with one budget for all, b's guesses had spent it). */
    char *good2 = basic("node2:other");
    CHECK(rp_htpasswd_check(h, good2, "10.0.0.3:5"));
    CHECK_INT(rp_htpasswd_hashes(h), after_b + 1);
    /* Many addresses guessing are still bounded by the budget for all (4 saved up). */
    for (int i = 0; i < 50; i++) {
        char peer[32];
        snprintf(peer, sizeof(peer), "10.1.0.%d:1", i);
        snprintf(guess, sizeof(guess), "node:many%d", i);
        char *g = basic(guess);
        CHECK(!rp_htpasswd_check(h, g, peer));
        free(g);
    }
    CHECK(rp_htpasswd_hashes(h) <= after_b + 1 + 4 + 1);
    /* IPv6 clients count by /64; unparseable peers share one key. */
    CHECK(!rp_htpasswd_check(h, "Bearer abc", "[2001:db8::1]:443"));
    CHECK(!rp_htpasswd_check(h, "Basic !!!", NULL));
    CHECK(!rp_htpasswd_check(h, NULL, "unix"));
    free(good2);
    rp_htpasswd_free(h);
    f = fopen(path, "w");
    fprintf(f, "justaname\n");
    fclose(f);
    CHECK(rp_htpasswd_load(path, err, sizeof(err)) == NULL);
    CHECK(strstr(err, ":1:") != NULL);
    f = fopen(path, "w");
    fprintf(f, "# no hash, only a comment\nnode::comment\n");
    fclose(f);
    CHECK(rp_htpasswd_load(path, err, sizeof(err)) == NULL);
    CHECK(strstr(err, ":2:") != NULL);
    free(good);
    free(bad);
    free(who);
    free(hash);
    unlink(path);
    rmdir(dir);
    free(path);
}

/* htpasswd's default hash (htpasswd -m, what nginx and Apache files mostly hold) is
 * Apache's MD5 ("$apr1$"), which crypt(3) does not know: such accounts could never log in.
 * Vectors from `openssl passwd -apr1`. */
static void test_htpasswd_apr1(void)
{
    char dir[4096];
    unit_mkdtemp(dir, sizeof(dir), "rp-acl");
    char *path = rp_xasprintf("%s/htpasswd", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "node:$apr1$rA.nd0m5$apAXHkZYw99AlHTNH/kYn0\n"
               "long:$apr1$x$8NceVVu1DjFLY3EWJfWpL/\n"
               "empty:$apr1$12345678$sHuPAw7VA9xjRbJz7zKV7/\n"
               "cut:$apr1$rA.nd0m5$apAXHkZYw99AlHTNH/kYn\n"
               "nginx:$apr1$rA.nd0m5$apAXHkZYw99AlHTNH/kYn0:a comment, as nginx allows\n");
    fclose(f);
    char err[256];
    struct rp_htpasswd *h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    char *good = basic("node:s3cret"), *bad = basic("node:s3cre"),
         *lg = basic("long:a-much-longer-password-than-sixteen-bytes"),
         *lbad = basic("long:a-much-longer-password-than-sixteen-byteS"), *em = basic("empty:"),
         *cut = basic("cut:s3cret");
    CHECK(rp_htpasswd_check(h, good, "10.0.0.1:1"));
    CHECK(!rp_htpasswd_check(h, bad, "10.0.0.2:1"));
    CHECK(rp_htpasswd_check(h, lg, "10.0.0.3:1"));
    CHECK(!rp_htpasswd_check(h, lbad, "10.0.0.4:1"));
    CHECK(rp_htpasswd_check(h, em, "10.0.0.5:1"));
    CHECK(!rp_htpasswd_check(h, cut, "10.0.0.6:1")); /* a truncated hash matches nothing */
    char *ng = basic("nginx:s3cret");
    CHECK(rp_htpasswd_check(h, ng, "10.0.0.7:1")); /* name:hash:comment */
    free(ng);
    rp_htpasswd_free(h);
    free(good);
    free(bad);
    free(lg);
    free(lbad);
    free(em);
    free(cut);
    unlink(path);
    rmdir(dir);
    free(path);
}

/* Entries that load but can never log in are named at load (file, line, user), never with
 * their hash; good entries, comments and blank lines are not. */
static void test_htpasswd_unusable_entries_warned(void)
{
    char dir[4096];
    unit_mkdtemp(dir, sizeof(dir), "rp-acl");
    char *path = rp_xasprintf("%s/htpasswd", dir);
    char *bcrypt = rp_xstrdup(crypt("pw", crypt_gensalt("$2b$", 4, NULL, 0)));
    FILE *f = fopen(path, "w");
    fprintf(f,
            "# accounts\n"
            "good:%s\n"
            "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
            "\n"
            "locked:!%s\n"
            "star:*\n"
            "apr:$apr1$rA.nd0m5$apAXHkZYw99AlHTNH/kYn0\n"
            "plain:notahash\n"
            "odd:$9$what$ever\n",
            bcrypt, bcrypt);
    fclose(f);
    char err[256];
    struct rp_htpasswd *h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    const char *want[][2] = {{":3: user 'sha' ", "{SHA}"},
                             {":5: user 'locked' ", "locked"},
                             {":6: user 'star' ", "locked"},
                             {":8: user 'plain' ", "not a password hash"},
                             {":9: user 'odd' ", "not a password hash"}};
    size_t n = 0;
    for (const char *w; h && (w = rp_htpasswd_warning(h, n)); n++) {
        if (n >= sizeof(want) / sizeof(want[0])) {
            fprintf(stderr, "unexpected warning: %s\n", w);
            continue;
        }
        CHECK(strncmp(w, path, strlen(path)) == 0);
        CHECK(strstr(w, want[n][0]) != NULL);
        CHECK(strstr(w, want[n][1]) != NULL);
        CHECK(strstr(w, "W6ph5") == NULL && strstr(w, bcrypt + 7) == NULL);
        CHECK(strchr(w, '\n') == NULL);
    }
    CHECK_INT(n, sizeof(want) / sizeof(want[0]));
    char *sha = basic("sha:password"), *star = basic("star:*");
    CHECK(!rp_htpasswd_check(h, sha, "10.0.0.1:1"));
    CHECK(!rp_htpasswd_check(h, star, "10.0.0.2:1"));
    free(sha);
    free(star);
    rp_htpasswd_free(h);
    free(bcrypt);
    unlink(path);
    rmdir(dir);
    free(path);
}

/* A line longer than the read buffer (4095 bytes) used to be read as several: the rest of a
 * long commented-out line was taken as an entry of its own (an account the operator had
 * disabled could log in), or failed the load with a line number past the file's. A long
 * comment is skipped whole; a long entry is refused, named by its own line. */
static void test_htpasswd_long_lines(void)
{
    char dir[4096];
    unit_mkdtemp(dir, sizeof(dir), "rp-acl");
    char *path = rp_xasprintf("%s/htpasswd", dir);
    char *hash = rp_xstrdup(crypt("pw", crypt_gensalt("$2b$", 4, NULL, 0)));
    char pad[4094];
    memset(pad, 'x', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    FILE *f = fopen(path, "w");
    /* "# " and pad fill the buffer: "evil:HASH" was read as the next line. */
    fprintf(f, "# %sevil:%s\n# short\nnode:%s\n", pad, hash, hash);
    fclose(f);
    char err[256];
    struct rp_htpasswd *h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    char *evil = basic("evil:pw"), *node = basic("node:pw");
    CHECK(h && !rp_htpasswd_check(h, evil, "10.0.0.1:1"));
    CHECK(h && rp_htpasswd_check(h, node, "10.0.0.2:1"));
    rp_htpasswd_free(h);
    /* A comment longer than the buffer with no ':' in its rest: loads. */
    f = fopen(path, "w");
    fprintf(f, "#%s%s\nnode:%s\n", pad, pad, hash);
    fclose(f);
    h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    CHECK(h && rp_htpasswd_check(h, node, "10.0.0.3:1"));
    rp_htpasswd_free(h);
    /* An entry that long is refused, at its own line. */
    f = fopen(path, "w");
    fprintf(f, "node:%s\nlong:%s%s\n", hash, hash, pad);
    fclose(f);
    CHECK(rp_htpasswd_load(path, err, sizeof(err)) == NULL);
    CHECK(strstr(err, ":2: ") != NULL);
    CHECK(strstr(err, ":3:") == NULL);
    /* An entry just filling the buffer before its CRLF is whole (and loads, warned). */
    f = fopen(path, "w");
    fprintf(f, "u:%.*s\r\nnode:%s\r\n", 4093, pad, hash);
    fclose(f);
    h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    CHECK(h && rp_htpasswd_check(h, node, "10.0.0.4:1"));
    rp_htpasswd_free(h);
    /* A last line just filling the buffer, without a newline, is whole. */
    f = fopen(path, "w");
    fprintf(f, "node:%s\n#%.*s", hash, 4094, pad);
    fclose(f);
    h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    rp_htpasswd_free(h);
    /* A long comment with a NUL byte in it (a file damaged by a crash is zero-filled): it
     * still fills the buffer, and "evil:HASH" after it was read as a line of its own. */
    f = fopen(path, "w");
    fputs("#", f);
    fputc('\0', f);
    fprintf(f, "%.*sevil:%s\nnode:%s\n", 4093, pad, hash, hash);
    fclose(f);
    h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    CHECK(h && !rp_htpasswd_check(h, evil, "10.0.0.5:1"));
    CHECK(h && rp_htpasswd_check(h, node, "10.0.0.6:1"));
    rp_htpasswd_free(h);
    free(evil);
    free(node);
    free(hash);
    unlink(path);
    rmdir(dir);
    free(path);
}

/* An unknown user costs a hash as a known one does, so that the time taken does not tell
 * which names exist: it used to be hashed against the first entry's hash, which, locked or
 * {SHA}, crypt(3) refuses at once: every unknown name answered without a hash while known
 * ones took a bcrypt. Entries that can never log in cost a hash too. */
static void test_htpasswd_unknown_user_costs_a_hash(void)
{
    char dir[4096];
    unit_mkdtemp(dir, sizeof(dir), "rp-acl");
    char *path = rp_xasprintf("%s/htpasswd", dir);
    char *hash = rp_xstrdup(crypt("pw", crypt_gensalt("$2b$", 4, NULL, 0)));
    FILE *f = fopen(path, "w");
    fprintf(f, "locked:!%s\nsha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nnode:%s\n", hash, hash);
    fclose(f);
    char err[256];
    struct rp_htpasswd *h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    char *nobody = basic("nobody:pw"), *locked = basic("locked:pw"), *sha = basic("sha:password"),
         *node = basic("node:pw");
    CHECK(h && !rp_htpasswd_check(h, nobody, "10.0.0.1:1"));
    CHECK_INT(rp_htpasswd_hashes(h), 1);
    CHECK(h && !rp_htpasswd_check(h, locked, "10.0.0.2:1"));
    CHECK_INT(rp_htpasswd_hashes(h), 2);
    CHECK(h && !rp_htpasswd_check(h, sha, "10.0.0.3:1"));
    CHECK_INT(rp_htpasswd_hashes(h), 3);
    CHECK(h && rp_htpasswd_check(h, node, "10.0.0.4:1"));
    CHECK_INT(rp_htpasswd_hashes(h), 4);
    rp_htpasswd_free(h);
    /* No entry that can log in: nothing to hash against, and nothing to find out. */
    f = fopen(path, "w");
    fprintf(f, "locked:!%s\n", hash);
    fclose(f);
    h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    CHECK(h && !rp_htpasswd_check(h, nobody, "10.0.0.1:1"));
    CHECK(h && !rp_htpasswd_check(h, locked, "10.0.0.2:1"));
    rp_htpasswd_free(h);
    free(nobody);
    free(locked);
    free(sha);
    free(node);
    free(hash);
    unlink(path);
    rmdir(dir);
    free(path);
}

static int woken;

static void count_wake(struct rp_htpasswd_waiter *w)
{
    (void)w;
    woken++;
}

/* A new directory with an htpasswd file of one account, node:pw (the cheapest bcrypt),
 * loaded. */
static struct rp_htpasswd *node_accounts(char *dir, size_t dlen, char **path)
{
    unit_mkdtemp(dir, dlen, "rp-acl");
    *path = rp_xasprintf("%s/htpasswd", dir);
    char *hash = rp_xstrdup(crypt("pw", crypt_gensalt("$2b$", 4, NULL, 0)));
    FILE *f = fopen(*path, "w");
    fprintf(f, "node:%s\n", hash);
    fclose(f);
    free(hash);
    char err[256];
    struct rp_htpasswd *h = rp_htpasswd_load(*path, err, sizeof(err));
    CHECK(h != NULL);
    return h;
}

/* The asynchronous check: one hash for concurrent checks of the same credentials, at most
 * PEER_HASHING_MAX (2) distinct credentials of one address hashing at once, waiters taken
 * off, and accounts freed (a reload) while a hash runs. */
static void test_htpasswd_async(void)
{
    char dir[4096], *path = NULL;
    struct rp_htpasswd *h = node_accounts(dir, sizeof(dir), &path);
    char *good = basic("node:pw"), *g1 = basic("node:x1"), *g2 = basic("node:x2");
    const char *a = "10.0.0.1:1", *b = "10.0.0.2:1";
    struct rp_htpasswd_waiter w[6];
    for (int i = 0; i < 6; i++)
        w[i] = (struct rp_htpasswd_waiter){.done = count_wake};
    struct rp_htpasswd_job *j1 = NULL, *j2 = NULL, *jx = NULL;
    CHECK_INT(rp_htpasswd_begin(h, good, a, &w[0], &j1), RP_HTPASSWD_WAIT);
    CHECK(j1 != NULL && w[0].job == j1);
    CHECK_INT(rp_htpasswd_begin(h, good, b, &w[1], &jx), RP_HTPASSWD_WAIT); /* joins j1 */
    CHECK(jx == NULL && w[1].job == j1);
    CHECK_INT(rp_htpasswd_begin(h, g1, a, &w[2], &j2), RP_HTPASSWD_WAIT);
    CHECK(j2 != NULL);
    CHECK_INT(rp_htpasswd_begin(h, g2, a, &w[3], &jx), RP_HTPASSWD_FAIL); /* a: 2 hashing */
    CHECK(jx == NULL && w[3].job == NULL);
    CHECK_INT(rp_htpasswd_begin(h, g2, b, &w[4], &jx), RP_HTPASSWD_WAIT); /* b may */
    struct rp_htpasswd_job *j3 = jx;
    CHECK(j3 != NULL);
    rp_htpasswd_cancel(&w[1]); /* its connection went away */
    CHECK(w[1].job == NULL);
    CHECK_INT(rp_htpasswd_hashes(h), 0);
    rp_htpasswd_job_work(j1);
    rp_htpasswd_job_done(j1);
    CHECK_INT(woken, 1); /* w[0] only */
    CHECK(w[0].job == NULL);
    CHECK_INT(rp_htpasswd_begin(h, good, a, &w[0], &jx), RP_HTPASSWD_OK); /* remembered */
    rp_htpasswd_job_work(j2);
    rp_htpasswd_job_done(j2);
    CHECK_INT(woken, 2);
    CHECK_INT(rp_htpasswd_begin(h, g1, a, &w[2], &jx), RP_HTPASSWD_FAIL); /* remembered */
    CHECK_INT(rp_htpasswd_hashes(h), 2);
    /* Freed while j3 hashes: the job finishes, wakes its waiter and frees the accounts. */
    rp_htpasswd_free(h);
    rp_htpasswd_job_work(j3);
    rp_htpasswd_job_done(j3);
    CHECK_INT(woken, 3);
    free(good);
    free(g1);
    free(g2);
    unlink(path);
    rmdir(dir);
    free(path);
}

static struct rp_htpasswd_waiter pair[2];

/* A waiter whose wake-up frees the other's connection, which cancels that waiter. */
static void wake_cancels_other(struct rp_htpasswd_waiter *w)
{
    woken++;
    rp_htpasswd_cancel(&pair[w == &pair[0] ? 1 : 0]);
}

/* Two connections waiting on one hash, the first woken taking the second away: the second is
 * neither woken nor touched through the finished job (it used to be freed before the wake-ups,
 * and the cancel read it). */
static void test_htpasswd_wake_cancels_other(void)
{
    char dir[4096], *path = NULL;
    struct rp_htpasswd *h = node_accounts(dir, sizeof(dir), &path);
    char *good = basic("node:pw");
    for (int i = 0; i < 2; i++)
        pair[i] = (struct rp_htpasswd_waiter){.done = wake_cancels_other};
    struct rp_htpasswd_job *j = NULL, *jx = NULL;
    CHECK_INT(rp_htpasswd_begin(h, good, "10.0.0.1:1", &pair[0], &j), RP_HTPASSWD_WAIT);
    CHECK_INT(rp_htpasswd_begin(h, good, "10.0.0.2:1", &pair[1], &jx), RP_HTPASSWD_WAIT);
    CHECK(j != NULL && jx == NULL);
    woken = 0;
    rp_htpasswd_job_work(j);
    rp_htpasswd_job_done(j);
    CHECK_INT(woken, 1);
    CHECK(pair[0].job == NULL && pair[1].job == NULL);
    woken = 0;
    rp_htpasswd_free(h);
    free(good);
    unlink(path);
    rmdir(dir);
    free(path);
}

int main(void)
{
    RUN(test_parse);
    RUN(test_allows);
    RUN(test_htpasswd_wake_cancels_other);
    RUN(test_repos);
    RUN(test_htpasswd);
    RUN(test_htpasswd_apr1);
    RUN(test_htpasswd_unusable_entries_warned);
    RUN(test_htpasswd_long_lines);
    RUN(test_htpasswd_unknown_user_costs_a_hash);
    RUN(test_htpasswd_async);
    UNIT_EXIT();
}
