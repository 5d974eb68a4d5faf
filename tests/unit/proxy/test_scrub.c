/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/scrub.c: what the loop does with the worker's verdict (job_done),
 * against a real cache and no loop. scrub.c is included to reach its statics; its public
 * names are renamed here, as the unit binary is also linked with the proxy's scrub.o. */
#define rp_scrub_new unit_rp_scrub_new
#define rp_scrub_reconfigured unit_rp_scrub_reconfigured
#define rp_scrub_free unit_rp_scrub_free
#include "../../../proxy/scrub.c"

#include "../unit.h"

#include <openssl/evp.h>

static char *mk_tmpdir(void)
{
    char buf[512];
    return rp_xstrdup(unit_mkdtemp(buf, sizeof(buf), "rp-scrub"));
}

/* Publishes n bytes of seed as a blob; digest receives its name. */
static void put_blob(struct rp_cache *c, size_t n, int seed, char *digest)
{
    char *p = rp_xmalloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + (seed * 7 + (int)i) % 26);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
    memcpy(digest, "sha256:", 7);
    for (unsigned int i = 0; i < len; i++)
        snprintf(digest + 7 + 2 * i, 3, "%02x", md[i]);
    int err = 0;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, digest, (int64_t)n, &err);
    CHECK(f != NULL);
    if (f) {
        CHECK_INT(rp_cache_fill_write(f, p, n), RP_CACHE_OK);
        CHECK_INT(rp_cache_fill_commit(f), RP_CACHE_OK);
    }
    free(p);
}

/* The worker's verdict on digest handed to job_done, as from the syncer. */
static void verdict(struct rp_scrub *s, const char *digest, int rc, const char *why)
{
    struct scrub_job *j = rp_xcalloc(1, sizeof(*j));
    j->s = s;
    j->cache = s->srv->cache;
    j->digest = rp_xstrdup(digest);
    j->rc = rc;
    j->fd = -1;
    snprintf(j->why, sizeof(j->why), "%s", why);
    s->busy = true;
    job_done(j);
}

/* The worker found a symlink in the blob's path, but when the loop looks again the blob is
 * a plain file (fetched again meanwhile). That second look is the scrub's, not a client's
 * read: the blob keeps its place in the eviction (LRU) order. It used to open the blob as a
 * request does, which marked it just used, and the next eviction took another. */
static void test_symlink_recheck_keeps_lru_order(void)
{
    char *dir = mk_tmpdir();
    char err[256];
    struct rp_cache *c = rp_cache_open(dir, 300, err, sizeof(err));
    CHECK(c != NULL);
    if (!c) {
        free(dir);
        return;
    }
    struct rp_conf conf = {0};
    struct rp_server srv = {.conf = &conf, .cache = c};
    struct rp_scrub s = {.srv = &srv};
    atomic_init(&s.stop, true); /* no next blob: there is no worker here */
    char a[RP_CACHE_DIGEST_BUF], b[RP_CACHE_DIGEST_BUF], x[RP_CACHE_DIGEST_BUF],
        d[RP_CACHE_DIGEST_BUF];
    put_blob(c, 100, 1, a); /* the oldest */
    put_blob(c, 100, 2, b);
    put_blob(c, 100, 3, x);
    verdict(&s, a, RP_CACHE_E_CORRUPT, "a symlink in its path (Too many levels of symbolic links)");
    CHECK(!s.busy);
    CHECK(rp_cache_blob_present(c, a)); /* a plain file now: kept */
    CHECK_INT(srv.metrics.scrub_damaged, 0);
    put_blob(c, 100, 4, d); /* over max_size: the least recently used goes */
    CHECK(!rp_cache_blob_present(c, a));
    CHECK(rp_cache_blob_present(c, b));
    CHECK(rp_cache_blob_present(c, x));
    CHECK(rp_cache_blob_present(c, d));
    rp_cache_close(c);
    unit_rm_rf(dir);
    free(dir);
}

/* Still planted when the loop looks: the symlink (not what it points to) is removed and the
 * blob forgotten, counted as damaged. */
static void test_symlink_still_there_is_removed(void)
{
    char *dir = mk_tmpdir(), *out = mk_tmpdir();
    char err[256];
    struct rp_cache *c = rp_cache_open(dir, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c) {
        free(dir);
        free(out);
        return;
    }
    struct rp_conf conf = {0};
    struct rp_server srv = {.conf = &conf, .cache = c};
    struct rp_scrub s = {.srv = &srv};
    atomic_init(&s.stop, true);
    char a[RP_CACHE_DIGEST_BUF];
    put_blob(c, 100, 1, a);
    char *file = rp_cache_blob_path(c, a);
    char *shard = rp_xstrdup(file);
    *strrchr(shard, '/') = '\0';
    char *victim = rp_xasprintf("%s/%s", out, strrchr(file, '/') + 1);
    CHECK(rename(file, victim) == 0);
    CHECK(rmdir(shard) == 0);
    CHECK(symlink(out, shard) == 0);
    verdict(&s, a, RP_CACHE_E_CORRUPT, "a symlink in its path (Not a directory)");
    CHECK(!rp_cache_blob_present(c, a));
    CHECK_INT(srv.metrics.scrub_damaged, 1);
    struct stat st;
    CHECK(lstat(shard, &st) != 0 || !S_ISLNK(st.st_mode));
    CHECK(stat(victim, &st) == 0 && st.st_size == 100); /* what it pointed to: untouched */
    rp_cache_close(c);
    free(victim);
    free(shard);
    free(file);
    unit_rm_rf(dir);
    unit_rm_rf(out);
    free(dir);
    free(out);
}

int main(void)
{
    RUN(test_symlink_recheck_keeps_lru_order);
    RUN(test_symlink_still_there_is_removed);
    UNIT_EXIT();
}
