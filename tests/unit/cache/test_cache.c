/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for cache/: fills and their verification, manifests (raw and lz4), tags, links,
 * persistence, index snapshot damage, crash safety (kill -9 of a writer), eviction. With
 * RP_CACHE_BENCH=1 it instead times open at 100k entries and measures manifest compression. */
#include "../unit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <lz4.h>
#include <lz4hc.h>
#include <openssl/evp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "util/util.h"

#define REG "registry.redhat.io"
#define REPO "rhel8/ubi"
#define MT_OCI "application/vnd.oci.image.manifest.v1+json"
#define MT_INDEX "application/vnd.oci.image.index.v1+json"

/* ---------------------------------------------------------------- helpers --- */

static char *mk_tmpdir(void)
{
    char buf[4096];
    return rp_xstrdup(unit_mkdtemp(buf, sizeof(buf), "rp_cache_test"));
}

static void rm_rf(char *dir)
{
    unit_rm_rf(dir);
    free(dir);
}

static int count_n;
static int count_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path;
    (void)st;
    (void)ftw;
    if (flag == FTW_F)
        count_n++;
    return 0;
}

/* Regular files under dir/sub, recursively. */
static int count_files(const char *dir, const char *sub)
{
    char *p = rp_xasprintf("%s/%s", dir, sub);
    count_n = 0;
    nftw(p, count_cb, 16, FTW_PHYS);
    free(p);
    return count_n;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void hexify(const unsigned char *md, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* "sha256:<hex>" (or sha512) of the bytes, into out (RP_CACHE_DIGEST_BUF). */
static void digest_of(const void *p, size_t n, char *out, bool sha512)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(p, n, md, &len, sha512 ? EVP_sha512() : EVP_sha256(), NULL);
    memcpy(out, sha512 ? "sha512:" : "sha256:", 7);
    hexify(md, len, out + 7);
}

static char *obj_path(const char *dir, const char *top, const char *digest)
{
    return rp_xasprintf("%s/%s/%.6s/%.2s/%s", dir, top, digest, digest + 7, digest + 7);
}

static struct rp_cache *open_ok(const char *dir, uint64_t max)
{
    char err[256];
    struct rp_cache *c = rp_cache_open(dir, max, err, sizeof(err));
    if (!c)
        fprintf(stderr, "open %s: %s\n", dir, err);
    return c;
}

/* Fills digest with the bytes (in chunks of 7 to exercise appends). */
static int fill(struct rp_cache *c, const char *digest, const void *p, size_t n, int64_t expect)
{
    int err = 0;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, digest, expect, &err);
    if (!f)
        return err;
    for (size_t off = 0; off < n; off += 7) {
        size_t k = n - off < 7 ? n - off : 7;
        int rc = rp_cache_fill_write(f, (const char *)p + off, k);
        if (rc != RP_CACHE_OK) {
            rp_cache_fill_abort(f);
            return rc;
        }
    }
    return rp_cache_fill_commit(f);
}

/* Publishes the string as a blob under its own digest; digest receives it. */
static int put_blob(struct rp_cache *c, const char *s, char *digest)
{
    digest_of(s, strlen(s), digest, false);
    return fill(c, digest, s, strlen(s), (int64_t)strlen(s));
}

/* Blob of exactly n bytes derived from seed. */
static char *sized(size_t n, int seed)
{
    char *p = rp_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + (seed * 7 + (int)i) % 26);
    p[n] = '\0';
    return p;
}

static char *read_all(int fd, size_t *len)
{
    struct rp_buf b;
    rp_buf_init(&b, 1 << 26);
    char tmp[4096];
    ssize_t r;
    while ((r = read(fd, tmp, sizeof(tmp))) > 0)
        rp_buf_add(&b, tmp, (size_t)r);
    *len = b.len;
    return b.data ? b.data : rp_xstrdup("");
}

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        *len = 0;
        return NULL;
    }
    char *s = read_all(fd, len);
    close(fd);
    return s;
}

static void spit(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, p, n) != (ssize_t)n)
        perror(path);
    if (fd >= 0)
        close(fd);
}

static bool blob_is(struct rp_cache *c, const char *digest, const char *want)
{
    struct rp_cache_blob b;
    if (rp_cache_blob_open(c, digest, &b) != RP_CACHE_OK)
        return false;
    size_t n;
    char *s = read_all(b.fd, &n);
    close(b.fd);
    rp_cache_release(c, digest);
    bool ok = b.size == strlen(want) && n == strlen(want) && memcmp(s, want, n) == 0;
    free(s);
    return ok;
}

static bool has_blob(struct rp_cache *c, const char *digest)
{
    struct rp_cache_blob b;
    if (rp_cache_blob_open(c, digest, &b) != RP_CACHE_OK)
        return false;
    close(b.fd);
    rp_cache_release(c, digest);
    return true;
}

/* A manifest-like JSON text of about n bytes (repetitive: compresses well). */
static char *json_manifest(size_t layers, int seed)
{
    struct rp_buf b;
    rp_buf_init(&b, 1 << 24);
    rp_buf_addf(&b, "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"layers\":[", MT_OCI);
    for (size_t i = 0; i < layers; i++) {
        char d[RP_CACHE_DIGEST_BUF];
        char seedtxt[32];
        snprintf(seedtxt, sizeof(seedtxt), "%d/%zu", seed, i);
        digest_of(seedtxt, strlen(seedtxt), d, false);
        rp_buf_addf(&b,
                    "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\","
                    "\"digest\":\"%s\",\"size\":%zu}",
                    i ? "," : "", d, 1000 + i * 37);
    }
    rp_buf_addf(&b, "]}");
    return b.data;
}

static char *manifest_header(const char *dir, const char *digest)
{
    char *p = obj_path(dir, "manifests", digest);
    size_t n;
    char *s = slurp(p, &n);
    free(p);
    if (!s)
        return NULL;
    char *nl = memchr(s, '\n', n);
    if (nl)
        *nl = '\0';
    return s;
}

/* ---------------------------------------------------------------- fills --- */

static void test_fill_commit(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    const char *data = "hello, layer bytes\n";
    char d[RP_CACHE_DIGEST_BUF];
    digest_of(data, strlen(data), d, false);

    int err = -99;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, d, (int64_t)strlen(data), &err);
    CHECK(f != NULL);
    CHECK_INT(err, RP_CACHE_OK);
    /* Readers can follow the temp file while it grows; it lives under dir/tmp. */
    const char *tp = rp_cache_fill_path(f);
    char *tmpdir = rp_xasprintf("%s/tmp/", dir);
    CHECK(tp && strncmp(tp, tmpdir, strlen(tmpdir)) == 0 && exists(tp));
    CHECK_INT(rp_cache_fill_write(f, data, 5), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_write(f, data + 5, 0), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_written(f), 5);
    int rfd = open(tp, O_RDONLY);
    CHECK(rfd >= 0);
    CHECK_INT(rp_cache_fill_write(f, data + 5, strlen(data) - 5), RP_CACHE_OK);
    /* Not visible before commit. */
    struct rp_cache_blob b;
    CHECK_INT(rp_cache_blob_open(c, d, &b), RP_CACHE_E_NOENT);
    CHECK_INT(b.fd, -1);
    CHECK(!rp_cache_blob_present(c, d));
    CHECK_INT(rp_cache_fill_commit(f), RP_CACHE_OK);
    CHECK(rp_cache_blob_present(c, d));
    CHECK(!rp_cache_blob_present(c, "sha256:nonsense"));
    CHECK(!rp_cache_blob_present(NULL, d));
    /* The early reader's fd still reads the whole content after the rename. */
    size_t n;
    char *s = read_all(rfd, &n);
    CHECK(n == strlen(data) && memcmp(s, data, n) == 0);
    free(s);
    close(rfd);

    CHECK(blob_is(c, d, data));
    char *bp = obj_path(dir, "blobs", d);
    CHECK(exists(bp));
    CHECK_INT(count_files(dir, "tmp"), 0);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 1);
    CHECK_INT(st.size, strlen(data));

    /* Unknown size, and committing the same digest again is harmless. */
    CHECK_INT(fill(c, d, data, strlen(data), -1), RP_CACHE_OK);
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 1);
    CHECK_INT(st.size, strlen(data));

    /* sha512 and the empty blob. */
    char d512[RP_CACHE_DIGEST_BUF], d0[RP_CACHE_DIGEST_BUF];
    digest_of(data, strlen(data), d512, true);
    CHECK_INT(fill(c, d512, data, strlen(data), (int64_t)strlen(data)), RP_CACHE_OK);
    CHECK(blob_is(c, d512, data));
    digest_of("", 0, d0, false);
    CHECK_INT(fill(c, d0, "", 0, 0), RP_CACHE_OK);
    CHECK(blob_is(c, d0, ""));
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 3);
    CHECK_INT(st.size, 2 * strlen(data));

    free(bp);
    free(tmpdir);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_fill_digest_mismatch(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF];
    digest_of("the real content", 16, d, false);
    CHECK_INT(fill(c, d, "tampered content", 16, 16), RP_CACHE_E_DIGEST);
    CHECK_INT(fill(c, d, "tampered content", 16, -1), RP_CACHE_E_DIGEST);
    CHECK_INT(count_files(dir, "blobs"), 0);
    CHECK_INT(count_files(dir, "tmp"), 0);
    struct rp_cache_blob b;
    CHECK(!rp_cache_blob_present(c, d));
    CHECK_INT(rp_cache_blob_open(c, d, &b), RP_CACHE_E_NOENT);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.size, 0);
    rp_cache_close(c);
    rm_rf(dir);
}

/* rp_cache_fill_verify gives the verdict early (readers get the last byte then) and once:
 * commit keeps it rather than hashing again. */
static void test_fill_verify_then_commit(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char good[RP_CACHE_DIGEST_BUF];
    digest_of("verified bytes", 14, good, false);
    int err = 0;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, good, 14, &err);
    CHECK(f != NULL);
    CHECK_INT(rp_cache_fill_write(f, "verified bytes", 14), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_verify(f), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_verify(f), RP_CACHE_OK);
    CHECK_INT(count_files(dir, "blobs"), 0); /* verified is not yet published */
    CHECK_INT(rp_cache_fill_commit(f), RP_CACHE_OK);
    CHECK_INT(count_files(dir, "blobs"), 1);
    f = rp_cache_fill_begin(c, good, 14, &err);
    CHECK(f != NULL);
    CHECK_INT(rp_cache_fill_write(f, "tampered bytes", 14), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_verify(f), RP_CACHE_E_DIGEST);
    CHECK_INT(rp_cache_fill_commit(f), RP_CACHE_E_DIGEST);
    CHECK_INT(count_files(dir, "tmp"), 0);
    /* Bytes written after the verdict (size unknown, so nothing else stops them) would be
     * published unchecked: the write fails and so does the commit. */
    char hello[RP_CACHE_DIGEST_BUF];
    digest_of("hello", 5, hello, false);
    f = rp_cache_fill_begin(c, hello, -1, &err);
    CHECK(f != NULL);
    CHECK_INT(rp_cache_fill_write(f, "hello", 5), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_verify(f), RP_CACHE_OK);
    CHECK(rp_cache_fill_write(f, " world", 6) != RP_CACHE_OK);
    CHECK(rp_cache_fill_commit(f) != RP_CACHE_OK);
    CHECK(!rp_cache_blob_present(c, hello));
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_fill_size_mismatch(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF];
    const char *data = "0123456789";
    digest_of(data, 10, d, false);
    /* Fewer bytes than announced (the digest would not match either: size is checked). */
    CHECK_INT(fill(c, d, data, 10, 11), RP_CACHE_E_SIZE);
    CHECK_INT(fill(c, d, data, 10, 0), RP_CACHE_E_SIZE);
    /* Right bytes, wrong announced size: still refused. */
    int err;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, d, 12, &err);
    CHECK_INT(rp_cache_fill_write(f, data, 10), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_commit(f), RP_CACHE_E_SIZE);
    CHECK_INT(count_files(dir, "blobs"), 0);
    CHECK_INT(count_files(dir, "tmp"), 0);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_fill_write_past_expected(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF];
    digest_of("abc", 3, d, false);
    int err;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, d, 3, &err);
    CHECK_INT(rp_cache_fill_write(f, "ab", 2), RP_CACHE_OK);
    CHECK_INT(rp_cache_fill_write(f, "cde", 3), RP_CACHE_E_SIZE);
    CHECK_INT(rp_cache_fill_written(f), 2);
    /* Sticky: the fill is doomed even if the rest would fit. */
    CHECK_INT(rp_cache_fill_write(f, "c", 1), RP_CACHE_E_SIZE);
    CHECK_INT(rp_cache_fill_commit(f), RP_CACHE_E_SIZE);
    CHECK_INT(count_files(dir, "blobs"), 0);
    CHECK_INT(count_files(dir, "tmp"), 0);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_fill_abort(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF];
    digest_of("abc", 3, d, false);
    int err;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, d, -1, &err);
    CHECK_INT(rp_cache_fill_write(f, "abc", 3), RP_CACHE_OK);
    CHECK_INT(count_files(dir, "tmp"), 1);
    rp_cache_fill_abort(f);
    rp_cache_fill_abort(NULL);
    CHECK_INT(count_files(dir, "tmp"), 0);
    CHECK_INT(count_files(dir, "blobs"), 0);
    CHECK(!has_blob(c, d));
    CHECK(rp_cache_fill_begin(c, d, -2, &err) == NULL);
    CHECK_INT(err, RP_CACHE_E_INVALID);
    rp_cache_close(c);
    rm_rf(dir);
}

/* Closing the cache under an unfinished fill removes its temp file; the fill object stays
 * valid until committed (which fails) or aborted. */
static void test_close_with_open_fill(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF];
    digest_of("abc", 3, d, false);
    int err;
    struct rp_cache_fill *f1 = rp_cache_fill_begin(c, d, 3, &err);
    struct rp_cache_fill *f2 = rp_cache_fill_begin(c, d, 3, &err);
    CHECK_INT(rp_cache_fill_write(f1, "abc", 3), RP_CACHE_OK);
    rp_cache_close(c);
    CHECK_INT(count_files(dir, "tmp"), 0);
    CHECK_INT(rp_cache_fill_write(f2, "abc", 3), RP_CACHE_E_IO);
    CHECK_INT(rp_cache_fill_commit(f1), RP_CACHE_E_IO);
    rp_cache_fill_abort(f2);
    CHECK_INT(count_files(dir, "blobs"), 0);
    rm_rf(dir);
}

/* ---------------------------------------------------------------- manifests --- */

static void test_manifest_raw(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    const char *m = "{\"schemaVersion\":2,\"mediaType\":\"" MT_OCI "\"}";
    char d[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), d, false);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK(got.len == strlen(m) && memcmp(got.data, m, got.len) == 0);
    CHECK_STR(got.media_type, MT_OCI);
    rp_cache_manifest_free(&got);
    rp_cache_manifest_free(NULL);
    char *h = manifest_header(dir, d);
    char *want = rp_xasprintf("RPMF 1 raw %zu %s", strlen(m), MT_OCI);
    CHECK_STR(h, want);
    free(h);
    free(want);
    /* A blob of that digest is another entry. */
    struct rp_cache_blob b;
    CHECK_INT(rp_cache_blob_open(c, d, &b), RP_CACHE_E_NOENT);
    /* Media types with parameters and spaces, and the empty one, survive. */
    const char *m2 = "{}";
    digest_of(m2, 2, d, false);
    CHECK_INT(rp_cache_manifest_put(c, d, "application/json; charset=utf-8", m2, 2), RP_CACHE_OK);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK_STR(got.media_type, "application/json; charset=utf-8");
    CHECK_STR(got.data, "{}");
    rp_cache_manifest_free(&got);
    digest_of("", 0, d, false);
    CHECK_INT(rp_cache_manifest_put(c, d, "", NULL, 0), RP_CACHE_OK);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK_STR(got.media_type, "");
    CHECK_INT(got.len, 0);
    rp_cache_manifest_free(&got);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 3);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_manifest_lz4(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char *m = json_manifest(20, 1);
    size_t len = strlen(m);
    CHECK(len > 2000);
    char d[RP_CACHE_DIGEST_BUF];
    digest_of(m, len, d, false);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, m, len), RP_CACHE_OK);
    char *h = manifest_header(dir, d);
    char *want = rp_xasprintf("RPMF 1 lz4 %zu %s", len, MT_OCI);
    CHECK_STR(h, want);
    free(h);
    free(want);
    char *p = obj_path(dir, "manifests", d);
    struct stat sb;
    CHECK(stat(p, &sb) == 0 && (size_t)sb.st_size < len);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.size, sb.st_size); /* accounted as stored, not as served */
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK(got.len == len && memcmp(got.data, m, len) == 0);
    CHECK_STR(got.media_type, MT_OCI);
    rp_cache_manifest_free(&got);

    /* Incompressible bytes at/above the threshold stay raw. */
    unsigned char rnd[600];
    for (size_t i = 0; i < sizeof(rnd); i++)
        rnd[i] = (unsigned char)((i * 2654435761u) >> 13 ^ (i * 40503u) >> 5);
    char d2[RP_CACHE_DIGEST_BUF];
    digest_of(rnd, sizeof(rnd), d2, false);
    CHECK_INT(rp_cache_manifest_put(c, d2, MT_OCI, (char *)rnd, sizeof(rnd)), RP_CACHE_OK);
    h = manifest_header(dir, d2);
    CHECK(h && strncmp(h, "RPMF 1 raw 600 ", 15) == 0);
    free(h);
    CHECK_INT(rp_cache_manifest_get(c, d2, &got), RP_CACHE_OK);
    CHECK(got.len == sizeof(rnd) && memcmp(got.data, rnd, sizeof(rnd)) == 0);
    rp_cache_manifest_free(&got);

    /* Re-put with the same media type is a no-op; another media type replaces it. */
    struct stat sb2;
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, m, len), RP_CACHE_OK);
    CHECK(stat(p, &sb2) == 0 && sb2.st_ino == sb.st_ino);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_INDEX, m, len), RP_CACHE_OK);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK_STR(got.media_type, MT_INDEX);
    rp_cache_manifest_free(&got);
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 2);
    free(p);
    free(m);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_manifest_put_rejects(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    const char *m = "{\"schemaVersion\":2}";
    char d[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), d, false);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, "{\"schemaVersion\":3}", strlen(m)),
              RP_CACHE_E_DIGEST);
    CHECK_INT(rp_cache_manifest_put(c, d, "bad\ntype", m, strlen(m)), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_manifest_put(c, d, NULL, m, strlen(m)), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, NULL, 3), RP_CACHE_E_INVALID);
    char *longmt = sized(256, 1);
    CHECK_INT(rp_cache_manifest_put(c, d, longmt, m, strlen(m)), RP_CACHE_E_INVALID);
    free(longmt);
    char *big = sized(RP_CACHE_MANIFEST_MAX + 1, 2);
    char db[RP_CACHE_DIGEST_BUF];
    digest_of(big, RP_CACHE_MANIFEST_MAX + 1, db, false);
    CHECK_INT(rp_cache_manifest_put(c, db, MT_OCI, big, RP_CACHE_MANIFEST_MAX + 1),
              RP_CACHE_E_INVALID);
    /* Exactly at the limit is fine. */
    digest_of(big, RP_CACHE_MANIFEST_MAX, db, false);
    CHECK_INT(rp_cache_manifest_put(c, db, MT_OCI, big, RP_CACHE_MANIFEST_MAX), RP_CACHE_OK);
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, db, &got), RP_CACHE_OK);
    CHECK(got.len == RP_CACHE_MANIFEST_MAX && memcmp(got.data, big, got.len) == 0);
    rp_cache_manifest_free(&got);
    free(big);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_E_NOENT);
    CHECK(got.data == NULL && got.media_type == NULL);
    CHECK_INT(count_files(dir, "tmp"), 0);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 1);
    rp_cache_close(c);
    rm_rf(dir);
}

/* Damages the stored file of a manifest with fn and checks the read answers E_CORRUPT,
 * removes the file and forgets the entry. The verified copy in memory keeps answering until
 * a restart empties memory; the first read from disk after it must catch the damage. */
static void corrupt_case(const char *what, bool compressible,
                         void (*fn)(const char *path, char *s, size_t n))
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char *m = compressible ? json_manifest(10, 7) : rp_xstrdup("{\"a\":1}");
    char d[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), d, false);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    char *p = obj_path(dir, "manifests", d);
    size_t n;
    char *s = slurp(p, &n);
    fn(p, s, n);
    free(s);
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK(got.len == strlen(m) && memcmp(got.data, m, got.len) == 0);
    rp_cache_manifest_free(&got);
    rp_cache_close(c);
    c = open_ok(dir, 0);
    int rc = rp_cache_manifest_get(c, d, &got);
    if (rc != RP_CACHE_E_CORRUPT)
        fprintf(stderr, "corrupt case %s: rc %d\n", what, rc);
    CHECK_INT(rc, RP_CACHE_E_CORRUPT);
    CHECK(got.data == NULL);
    CHECK(!exists(p));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.size, 0);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_E_NOENT);
    /* It can be stored again. */
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    rp_cache_manifest_free(&got);
    free(p);
    free(m);
    rp_cache_close(c);
    rm_rf(dir);
}

static void flip_last(const char *path, char *s, size_t n)
{
    s[n - 1] ^= 0x20;
    spit(path, s, n);
}

static void truncate_one(const char *path, char *s, size_t n)
{
    spit(path, s, n - 1);
}

static void flip_middle_payload(const char *path, char *s, size_t n)
{
    char *nl = memchr(s, '\n', n);
    size_t off = (size_t)(nl - s) + 1 + (n - (size_t)(nl - s)) / 2;
    s[off] ^= 0x01;
    spit(path, s, n);
}

static void bad_header(const char *path, char *s, size_t n)
{
    s[1] = 'X';
    spit(path, s, n);
}

static void wrong_length(const char *path, char *s, size_t n)
{
    /* "RPMF 1 raw 7 ..." -> "RPMF 1 raw 8 ...": the length no longer matches. */
    char *sp = strchr(s + 11, ' ');
    sp[-1]++;
    spit(path, s, n);
}

static void empty_file(const char *path, char *s, size_t n)
{
    (void)s;
    (void)n;
    spit(path, "", 0);
}

static void test_manifest_corrupt(void)
{
    corrupt_case("raw flip", false, flip_last);
    corrupt_case("raw truncated", false, truncate_one);
    corrupt_case("raw length", false, wrong_length);
    corrupt_case("lz4 flip", true, flip_middle_payload);
    corrupt_case("lz4 truncated", true, truncate_one);
    corrupt_case("bad header", true, bad_header);
    corrupt_case("empty", true, empty_file);
}

/* ---------------------------------------------------------------- tags, links --- */

static void test_tags(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d1[RP_CACHE_DIGEST_BUF], d2[RP_CACHE_DIGEST_BUF], got[RP_CACHE_DIGEST_BUF];
    digest_of("one", 3, d1, false);
    digest_of("two", 3, d2, true);
    int64_t when = -1;
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_E_NOENT);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "latest", d1, NULL, 1700000000), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, d1);
    CHECK_INT(when, 1700000000);
    /* Replace (atomic) with a sha512 digest and a newer time. */
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "latest", d2, NULL, 1700000600), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, d2);
    CHECK_INT(when, 1700000600);
    CHECK_INT(count_files(dir, "tags"), 1);
    CHECK_INT(count_files(dir, "tmp"), 0);
    /* Keys are distinct per registry, repo and tag, including shifted boundaries. */
    CHECK_INT(rp_cache_tag_get(c, "docker.io", REPO, "latest", got, sizeof(got), &when),
              RP_CACHE_E_NOENT);
    CHECK_INT(rp_cache_tag_get(c, REG, "rhel8/ubi/latest", "x", got, sizeof(got), &when),
              RP_CACHE_E_NOENT);
    CHECK_INT(rp_cache_tag_set(c, REG, "rhel8", "ubilatest", d1, NULL, 5), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, d2);
    /* Request text never reaches a path. */
    CHECK_INT(rp_cache_tag_set(c, "../../x", "../../../etc/passwd", "..", d1, NULL, 1),
              RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_get(c, "../../x", "../../../etc/passwd", "..", got, sizeof(got), &when),
              RP_CACHE_OK);
    CHECK_INT(count_files(dir, "tags"), 3);
    /* Deleted: gone from memory and disk, the others kept; deleting again is fine. */
    CHECK_INT(rp_cache_tag_delete(c, REG, "rhel8", "ubilatest"), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_get(c, REG, "rhel8", "ubilatest", got, sizeof(got), &when),
              RP_CACHE_E_NOENT);
    CHECK_INT(count_files(dir, "tags"), 2);
    CHECK_INT(rp_cache_tag_delete(c, REG, "rhel8", "ubilatest"), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_delete(c, REG, REPO, ""), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_tag_set(c, REG, "rhel8", "ubilatest", d1, NULL, 5), RP_CACHE_OK);
    /* Bad arguments. */
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, 100, &when), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "latest", "sha256:abc", NULL, 1), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "", d1, NULL, 1), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_tag_set(c, REG, NULL, "x", d1, NULL, 1), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "x", d1, NULL, -1), RP_CACHE_E_INVALID);
    char *longrepo = sized(1025, 3);
    CHECK_INT(rp_cache_tag_set(c, REG, longrepo, "x", d1, NULL, 1), RP_CACHE_E_INVALID);
    free(longrepo);

    /* A damaged tag file is reported and removed. */
    char hexname[65];
    {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
        EVP_DigestUpdate(ctx, REG, sizeof(REG));
        EVP_DigestUpdate(ctx, REPO, sizeof(REPO));
        EVP_DigestUpdate(ctx, "latest", 7);
        EVP_DigestFinal_ex(ctx, md, &mdlen);
        EVP_MD_CTX_free(ctx);
        hexify(md, 32, hexname);
    }
    char *tp = rp_xasprintf("%s/tags/%.2s/%s", dir, hexname, hexname);
    /* Memory answers until a restart; then the file is read and its checksum checked. */
    rp_cache_close(c);
    c = open_ok(dir, 0);
    size_t n;
    char *s = slurp(tp, &n);
    CHECK(s && strncmp(s, "RPTAG 1 1700000600 sha512:", 26) == 0);
    if (s) {
        s[30] = s[30] == '0' ? '1' : '0'; /* a digit of the digest: only the checksum notices */
        spit(tp, s, n);
        free(s);
    }
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when),
              RP_CACHE_E_CORRUPT);
    CHECK(!exists(tp));
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_E_NOENT);
    spit(tp, "garbage", 7);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when),
              RP_CACHE_E_CORRUPT);
    CHECK(!exists(tp));
    free(tp);
    rp_cache_close(c);
    rm_rf(dir);
}

/* A tag records its manifest's media type, read back from memory and from the file: what
 * revalidates an artifact tag whose manifest left the cache (an OCI artifact manifest is
 * refused to an Accept that does not name it). */
static void test_tag_media_type(void)
{
    const char *art = "application/vnd.oci.artifact.manifest.v1+json";
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d1[RP_CACHE_DIGEST_BUF], got[RP_CACHE_DIGEST_BUF], type[256];
    digest_of("one", 3, d1, false);
    int64_t when = -1;
    CHECK_INT(rp_cache_tag_type(c, REG, REPO, "art", type, sizeof(type)), RP_CACHE_E_NOENT);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "art", d1, art, 1700000000), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "plain", d1, NULL, 1700000000), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "empty", d1, "", 1700000000), RP_CACHE_OK);
    for (int round = 0; round < 2; round++) { /* memory, then the files after a restart */
        CHECK_INT(rp_cache_tag_get(c, REG, REPO, "art", got, sizeof(got), &when), RP_CACHE_OK);
        CHECK_STR(got, d1);
        CHECK_INT(when, 1700000000);
        CHECK_INT(rp_cache_tag_type(c, REG, REPO, "art", type, sizeof(type)), RP_CACHE_OK);
        CHECK_STR(type, art);
        CHECK_INT(rp_cache_tag_type(c, REG, REPO, "art", type, 10), RP_CACHE_E_INVALID);
        CHECK_INT(rp_cache_tag_get(c, REG, REPO, "plain", got, sizeof(got), &when), RP_CACHE_OK);
        CHECK_STR(got, d1);
        CHECK_INT(rp_cache_tag_type(c, REG, REPO, "plain", type, sizeof(type)), RP_CACHE_E_NOENT);
        CHECK_INT(rp_cache_tag_type(c, REG, REPO, "empty", type, sizeof(type)), RP_CACHE_E_NOENT);
        rp_cache_close(c);
        c = open_ok(dir, 0);
    }
    /* Replaced without a type: none is kept from before. */
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "art", d1, NULL, 1700000001), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_type(c, REG, REPO, "art", type, sizeof(type)), RP_CACHE_E_NOENT);
    /* A type that could not go back out as a header value is refused. */
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "bad", d1, "a/b\r\nX: y", 1), RP_CACHE_E_INVALID);
    char *longtype = sized(256, 'a');
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "bad", d1, longtype, 1), RP_CACHE_E_INVALID);
    free(longtype);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "bad", got, sizeof(got), &when), RP_CACHE_E_NOENT);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_links(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF], d2[RP_CACHE_DIGEST_BUF];
    digest_of("layer", 5, d, false);
    digest_of("other", 5, d2, false);
    CHECK(!rp_cache_linked(c, REG, REPO, d));
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK);
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK); /* idempotent */
    CHECK(rp_cache_linked(c, REG, REPO, d));
    CHECK(!rp_cache_linked(c, REG, REPO, d2));
    CHECK(!rp_cache_linked(c, REG, "rhel8/other", d));
    CHECK(!rp_cache_linked(c, "docker.io", REPO, d));
    CHECK_INT(count_files(dir, "links"), 1);
    CHECK_INT(count_files(dir, "tmp"), 0);
    CHECK_INT(rp_cache_link(c, REG, REPO, "sha256:" REPO), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_link(c, "", REPO, d), RP_CACHE_E_INVALID);
    CHECK(!rp_cache_linked(c, REG, REPO, "sha256:"));
    CHECK(!rp_cache_linked(c, NULL, REPO, d));
    rp_cache_close(c);
    rm_rf(dir);
}

struct seen_links {
    size_t n;
    char what[4][600];
};

static void collect_link(void *arg, const char *registry, const char *repo, const char *digest)
{
    struct seen_links *s = arg;
    if (s->n < 4)
        snprintf(s->what[s->n], sizeof(s->what[0]), "%s %s %s", registry, repo, digest);
    s->n++;
}

static int strcmp_cb(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Links are read back from their files (pins of `pin` patterns are derived from them);
 * damaged files and files under another key's name are skipped. */
static void test_links_each(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    struct seen_links seen = {0};
    CHECK_INT(rp_cache_links_each(c, collect_link, &seen), 0); /* no links/ yet */
    char d[RP_CACHE_DIGEST_BUF], d2[RP_CACHE_DIGEST_BUF];
    digest_of("layer", 5, d, false);
    digest_of("other", 5, d2, true);
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK);
    CHECK_INT(rp_cache_link(c, "docker.io", "library/alpine", d2), RP_CACHE_OK);
    CHECK_INT(rp_cache_link(c, REG, "rhel8/other", d), RP_CACHE_OK);
    CHECK_INT(rp_cache_links_each(c, collect_link, &seen), 3);
    qsort(seen.what, 3, sizeof(seen.what[0]), strcmp_cb);
    char want[3][600];
    snprintf(want[0], sizeof(want[0]), "docker.io library/alpine %s", d2);
    snprintf(want[1], sizeof(want[1]), "%s %s %s", REG, "rhel8/other", d);
    snprintf(want[2], sizeof(want[2]), "%s %s %s", REG, REPO, d);
    for (int i = 0; i < 3; i++)
        CHECK_STR(seen.what[i], want[i]);
    /* Damage: one link truncated, one copied under the other's name, stray files. */
    char *files[3];
    size_t nf = 0;
    char *links = rp_xasprintf("%s/links", dir);
    DIR *top = opendir(links);
    struct dirent *de;
    while (top && (de = readdir(top)))
        if (de->d_name[0] != '.') {
            char *sub = rp_xasprintf("%s/%s", links, de->d_name);
            DIR *sd = opendir(sub);
            struct dirent *fe;
            while (sd && (fe = readdir(sd)))
                if (fe->d_name[0] != '.' && nf < 3)
                    files[nf++] = rp_xasprintf("%s/%s", sub, fe->d_name);
            if (sd)
                closedir(sd);
            free(sub);
        }
    if (top)
        closedir(top);
    CHECK_INT(nf, 3);
    size_t len = 0;
    char *body = slurp(files[0], &len);
    spit(files[0], body, len - 2);
    free(body);
    body = slurp(files[1], &len);
    spit(files[2], body, len); /* files[2] now says what files[1] says */
    free(body);
    char *stray = rp_xasprintf("%s/zz", links);
    spit(stray, "x", 1);
    free(stray);
    memset(&seen, 0, sizeof(seen));
    CHECK_INT(rp_cache_links_each(c, collect_link, &seen), 1);
    body = slurp(files[1], &len);
    CHECK(seen.n == 1 && strstr(body, strrchr(seen.what[0], ' ') + 1) != NULL);
    free(body);
    for (size_t i = 0; i < nf; i++)
        free(files[i]);
    free(links);
    rp_cache_close(c);
    rm_rf(dir);
}

/* ---------------------------------------------------------------- persistence --- */

static void test_reopen_persists(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char b1[RP_CACHE_DIGEST_BUF], b2[RP_CACHE_DIGEST_BUF], md[RP_CACHE_DIGEST_BUF],
        got[RP_CACHE_DIGEST_BUF];
    CHECK_INT(put_blob(c, "first blob", b1), RP_CACHE_OK);
    CHECK_INT(put_blob(c, "second blob", b2), RP_CACHE_OK);
    char *m = json_manifest(12, 3);
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "8.9", md, NULL, 42), RP_CACHE_OK);
    CHECK_INT(rp_cache_link(c, REG, REPO, b1), RP_CACHE_OK);
    struct rp_cache_stats st1, st2;
    rp_cache_stats(c, &st1);
    rp_cache_close(c);
    char *ip = rp_xasprintf("%s/index", dir);
    CHECK(exists(ip));

    c = open_ok(dir, 0);
    CHECK(c != NULL);
    /* The loaded snapshot is removed at once: a crash from now on must rebuild. */
    CHECK(!exists(ip));
    rp_cache_stats(c, &st2);
    CHECK_INT(st2.entries, st1.entries);
    CHECK_INT(st2.size, st1.size);
    CHECK(blob_is(c, b1, "first blob"));
    CHECK(blob_is(c, b2, "second blob"));
    struct rp_cache_manifest mf;
    CHECK_INT(rp_cache_manifest_get(c, md, &mf), RP_CACHE_OK);
    CHECK_STR(mf.data, m);
    CHECK_STR(mf.media_type, MT_OCI);
    rp_cache_manifest_free(&mf);
    int64_t when;
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "8.9", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, md);
    CHECK_INT(when, 42);
    CHECK(rp_cache_linked(c, REG, REPO, b1));
    CHECK(!rp_cache_linked(c, REG, REPO, b2));

    /* A second process (or open) on the same directory is refused while we hold it. */
    char err[256];
    CHECK(rp_cache_open(dir, 0, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "lock") != NULL);
    rp_cache_close(c);
    free(ip);
    free(m);
    rm_rf(dir);
}

static int sync_requests;

static void count_sync_request(void *arg)
{
    (void)arg;
    sync_requests++;
}

/* With a sync hook, each write whose fsync was left undone asks for rp_cache_sync; the
 * content is the same, durable after the sync or the close, and the hook can be taken back. */
static void test_sync_hook(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    rp_cache_set_sync_hook(c, count_sync_request, NULL);
    sync_requests = 0;
    char b1[RP_CACHE_DIGEST_BUF], md[RP_CACHE_DIGEST_BUF];
    CHECK_INT(put_blob(c, "hooked blob", b1), RP_CACHE_OK);
    int after_blob = sync_requests;
    CHECK(after_blob >= 1); /* its directory entry (the bytes were fsynced before the rename) */
    char *m = json_manifest(3, 7);
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    int after_manifest = sync_requests;
    CHECK(after_manifest > after_blob);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "hooked", md, NULL, 7), RP_CACHE_OK);
    int after_tag = sync_requests;
    CHECK(after_tag > after_manifest);
    CHECK_INT(rp_cache_link(c, REG, REPO, b1), RP_CACHE_OK);
    CHECK(sync_requests > after_tag);
    CHECK_INT(rp_cache_sync(c), 0);
    /* Back to the synchronous way: no more requests. */
    rp_cache_set_sync_hook(c, NULL, NULL);
    int before = sync_requests;
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "plain", md, NULL, 8), RP_CACHE_OK);
    CHECK_INT(sync_requests, before);
    rp_cache_close(c);

    c = open_ok(dir, 0);
    CHECK(blob_is(c, b1, "hooked blob"));
    struct rp_cache_manifest mf;
    CHECK_INT(rp_cache_manifest_get(c, md, &mf), RP_CACHE_OK);
    CHECK_STR(mf.data, m);
    rp_cache_manifest_free(&mf);
    char got[RP_CACHE_DIGEST_BUF];
    int64_t when;
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "hooked", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, md);
    CHECK(rp_cache_linked(c, REG, REPO, b1));
    rp_cache_close(c);
    free(m);
    rm_rf(dir);
}

static void test_tmp_leftovers_removed(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    rp_cache_close(c);
    char *p1 = rp_xasprintf("%s/tmp/fill.1", dir), *p2 = rp_xasprintf("%s/tmp/junk", dir);
    spit(p1, "half a layer", 12);
    spit(p2, "", 0);
    c = open_ok(dir, 0);
    CHECK(!exists(p1) && !exists(p2));
    CHECK_INT(count_files(dir, "tmp"), 0);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 0);
    rp_cache_close(c);
    free(p1);
    free(p2);
    rm_rf(dir);
}

/* Writes n entries, closes, damages the snapshot with fn, reopens: everything is served. */
static void damaged_index_case(void (*fn)(const char *path, char *s, size_t n))
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[5][RP_CACHE_DIGEST_BUF];
    char text[5][32];
    for (int i = 0; i < 5; i++) {
        snprintf(text[i], sizeof(text[i]), "blob number %d", i);
        CHECK_INT(put_blob(c, text[i], d[i]), RP_CACHE_OK);
    }
    char *m = json_manifest(9, 4);
    char md[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    struct rp_cache_stats st1, st2;
    rp_cache_stats(c, &st1);
    rp_cache_close(c);
    char *ip = rp_xasprintf("%s/index", dir);
    size_t n;
    char *s = slurp(ip, &n);
    CHECK(s != NULL && n > 64);
    fn(ip, s, n);
    free(s);
    c = open_ok(dir, 0);
    CHECK(c != NULL);
    CHECK(!exists(ip));
    rp_cache_stats(c, &st2);
    CHECK_INT(st2.entries, st1.entries);
    CHECK_INT(st2.size, st1.size);
    for (int i = 0; i < 5; i++)
        CHECK(blob_is(c, d[i], text[i]));
    struct rp_cache_manifest mf;
    CHECK_INT(rp_cache_manifest_get(c, md, &mf), RP_CACHE_OK);
    rp_cache_manifest_free(&mf);
    rp_cache_close(c);
    free(ip);
    free(m);
    rm_rf(dir);
}

static void idx_truncate(const char *path, char *s, size_t n)
{
    spit(path, s, n - 40);
}

static void idx_garbage(const char *path, char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s[i] = (char)(i * 131 + 7);
    spit(path, s, n);
}

static void idx_flip(const char *path, char *s, size_t n)
{
    s[40] ^= 0x10; /* inside the first record: only the checksum notices */
    spit(path, s, n);
}

static void idx_empty(const char *path, char *s, size_t n)
{
    (void)s;
    (void)n;
    spit(path, "", 0);
}

/* A snapshot with a plausible structure that lists one entry twice (checksum recomputed). */
static void idx_duplicate(const char *path, char *s, size_t n)
{
    const size_t rec = 9 + 32;
    size_t body = n - 32;
    char *t = rp_xmalloc(n + rec);
    memcpy(t, s, body);
    memcpy(t + body, s + 32, rec); /* copy of the first record */
    uint64_t count = 0;
    for (int i = 7; i >= 0; i--)
        count = count << 8 | (unsigned char)t[16 + i];
    count++;
    for (int i = 0; i < 8; i++)
        t[16 + i] = (char)(count >> (8 * i));
    unsigned int mdlen;
    EVP_Digest(t, body + rec, (unsigned char *)t + body + rec, &mdlen, EVP_sha256(), NULL);
    spit(path, t, n + rec);
    free(t);
}

static void test_index_damaged(void)
{
    damaged_index_case(idx_truncate);
    damaged_index_case(idx_garbage);
    damaged_index_case(idx_flip);
    damaged_index_case(idx_empty);
    damaged_index_case(idx_duplicate);
}

/* A writer killed with SIGKILL at arbitrary moments never leaves a published file whose
 * content does not match its name, and the next open serves what was published. */
static void crash_writer(const char *dir)
{
    struct rp_cache *c = open_ok(dir, 0);
    if (!c)
        _exit(3);
    for (int i = 0;; i++) {
        size_t n = 4096 + (size_t)(i % 13) * 20000;
        char *p = sized(n, i);
        char d[RP_CACHE_DIGEST_BUF];
        digest_of(p, n, d, false);
        struct rp_cache_fill *f = rp_cache_fill_begin(c, d, (int64_t)n, NULL);
        for (size_t off = 0; f && off < n; off += 4096)
            rp_cache_fill_write(f, p + off, n - off < 4096 ? n - off : 4096);
        rp_cache_fill_commit(f);
        free(p);
        char *m = json_manifest(5 + (size_t)(i % 30), i);
        digest_of(m, strlen(m), d, false);
        rp_cache_manifest_put(c, d, MT_OCI, m, strlen(m));
        char tag[16];
        snprintf(tag, sizeof(tag), "t%d", i % 4);
        rp_cache_tag_set(c, REG, REPO, tag, d, NULL, i);
        rp_cache_link(c, REG, REPO, d);
        free(m);
    }
}

static int verify_n, verify_bad;
static int verify_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    if (flag != FTW_F)
        return 0;
    size_t n;
    char *s = slurp(path, &n);
    char d[RP_CACHE_DIGEST_BUF];
    digest_of(s, n, d, false);
    if (strcmp(d + 7, path + ftw->base) != 0) {
        fprintf(stderr, "published blob %s does not match its name\n", path);
        verify_bad++;
    }
    verify_n++;
    free(s);
    return 0;
}

static int manifest_cb_bad;
static struct rp_cache *manifest_cb_cache;
static int manifest_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    if (flag != FTW_F)
        return 0;
    char d[RP_CACHE_DIGEST_BUF];
    snprintf(d, sizeof(d), "sha256:%s", path + ftw->base);
    struct rp_cache_manifest m;
    if (rp_cache_manifest_get(manifest_cb_cache, d, &m) != RP_CACHE_OK) {
        fprintf(stderr, "published manifest %s not served\n", path);
        manifest_cb_bad++;
    }
    rp_cache_manifest_free(&m);
    return 0;
}

static void test_crash_kill9(void)
{
    char *dir = mk_tmpdir();
    int rounds = 10, total_blobs = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t pid = fork();
        if (pid == 0) {
            crash_writer(dir);
            _exit(0);
        }
        /* From "still opening" to "dozens of files published". */
        struct timespec ts = {0, (long)(1 + (r * 7) % 45) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status));

        struct rp_cache *c = open_ok(dir, 0);
        CHECK(c != NULL);
        if (!c)
            break;
        CHECK_INT(count_files(dir, "tmp"), 0);
        char *bd = rp_xasprintf("%s/blobs", dir);
        verify_n = verify_bad = 0;
        nftw(bd, verify_cb, 16, FTW_PHYS);
        free(bd);
        CHECK_INT(verify_bad, 0);
        total_blobs = verify_n;
        struct rp_cache_stats st;
        rp_cache_stats(c, &st);
        CHECK_INT(st.entries, (uint64_t)verify_n + (uint64_t)count_files(dir, "manifests"));
        char *mdir = rp_xasprintf("%s/manifests", dir);
        manifest_cb_bad = 0;
        manifest_cb_cache = c;
        nftw(mdir, manifest_cb, 16, FTW_PHYS);
        free(mdir);
        CHECK_INT(manifest_cb_bad, 0);
        for (int t = 0; t < 4; t++) {
            char tag[16], got[RP_CACHE_DIGEST_BUF];
            int64_t when;
            snprintf(tag, sizeof(tag), "t%d", t);
            int rc = rp_cache_tag_get(c, REG, REPO, tag, got, sizeof(got), &when);
            CHECK(rc == RP_CACHE_OK || rc == RP_CACHE_E_NOENT);
        }
        rp_cache_close(c);
        /* The next writer starts from a clean snapshot or, every other round, rebuilds. */
        if (r % 2) {
            char *ip = rp_xasprintf("%s/index", dir);
            unlink(ip);
            free(ip);
        }
    }
    CHECK(total_blobs > 0);
    rm_rf(dir);
}

/* ---------------------------------------------------------------- eviction --- */

static void test_evict_lru(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 300);
    char d[5][RP_CACHE_DIGEST_BUF];
    char *t[5];
    for (int i = 0; i < 5; i++)
        t[i] = sized(100, i);
    CHECK_INT(put_blob(c, t[0], d[0]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[1], d[1]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[2], d[2]), RP_CACHE_OK);
    CHECK(has_blob(c, d[0])); /* 0 becomes the most recent: 1 is now the oldest */
    CHECK_INT(put_blob(c, t[3], d[3]), RP_CACHE_OK);
    CHECK(!has_blob(c, d[1]));
    char *p1 = obj_path(dir, "blobs", d[1]);
    CHECK(!exists(p1));
    free(p1);
    CHECK(has_blob(c, d[0]) && has_blob(c, d[2]) && has_blob(c, d[3]));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 3);
    CHECK_INT(st.size, 300);
    CHECK_INT(st.evictions, 1);
    CHECK_INT(st.evicted_bytes, 100);
    /* Reopened with a smaller bound, the owner's first eviction (open itself evicts
     * nothing: pins come back after it) goes oldest first, in the order the snapshot
     * recorded. */
    rp_cache_close(c);
    c = open_ok(dir, 0);
    CHECK_INT(put_blob(c, t[0], d[0]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[1], d[1]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[2], d[2]), RP_CACHE_OK);
    CHECK(has_blob(c, d[0]));
    rp_cache_close(c);
    c = open_ok(dir, 200);
    rp_cache_stats(c, &st);
    CHECK(st.size > 200); /* all still there */
    rp_cache_evict(c);
    rp_cache_stats(c, &st);
    CHECK(st.size <= 200);
    CHECK(has_blob(c, d[0])); /* most recent before close */
    CHECK(!has_blob(c, d[1]));
    rp_cache_close(c);
    for (int i = 0; i < 5; i++)
        free(t[i]);
    rm_rf(dir);
}

/* manifest_get counts as use, and the snapshot keeps the LRU order across a restart. */
/* A reader's in-use mark survives its file vanishing behind the cache's back and the blob
 * being filled again: the old reader's release used to take the new reader's mark (the
 * forgotten entry was freed, the new one counted from 0), so the blob could be evicted
 * while it was being sent. */
static void test_in_use_survives_forget(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 250);
    char x[RP_CACHE_DIGEST_BUF], y[RP_CACHE_DIGEST_BUF], z[RP_CACHE_DIGEST_BUF];
    char *tx = sized(100, 41), *ty = sized(100, 42), *tz = sized(100, 43);
    CHECK_INT(put_blob(c, tx, x), RP_CACHE_OK);
    struct rp_cache_blob a, b, r;
    CHECK_INT(rp_cache_blob_open(c, x, &a), RP_CACHE_OK); /* reader A */
    char *px = obj_path(dir, "blobs", x);
    CHECK_INT(unlink(px), 0);
    CHECK_INT(rp_cache_blob_open(c, x, &b), RP_CACHE_E_NOENT); /* forgotten */
    CHECK_INT(put_blob(c, tx, x), RP_CACHE_OK);                /* filled again */
    CHECK_INT(rp_cache_blob_open(c, x, &r), RP_CACHE_OK);      /* reader C */
    close(a.fd);
    rp_cache_release(c, x); /* A is done */
    CHECK_INT(put_blob(c, ty, y), RP_CACHE_OK);
    CHECK_INT(put_blob(c, tz, z), RP_CACHE_OK); /* over max_size: the oldest not in use goes */
    CHECK(exists(px));
    CHECK(!has_blob(c, y));
    close(r.fd);
    rp_cache_release(c, x); /* C is done */
    CHECK(has_blob(c, x) && has_blob(c, z));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.size, 200);
    free(px);
    free(tx);
    free(ty);
    free(tz);
    rp_cache_close(c);
    rm_rf(dir);
}

/* A blob published while older content is in use is not evicted by its own publish, and
 * LRU order holds once the reader lets go: max 100, A (60) in use, C (10), then B (50). B's
 * commit may take C (unused, older) but not B; A's release takes A, the least recent. */
static void test_evict_spares_published_while_in_use(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 100);
    char da[RP_CACHE_DIGEST_BUF], db[RP_CACHE_DIGEST_BUF], dc[RP_CACHE_DIGEST_BUF];
    char *a = sized(60, 1), *b = sized(50, 2), *cc = sized(10, 3);
    CHECK_INT(put_blob(c, a, da), RP_CACHE_OK);
    struct rp_cache_blob ba;
    CHECK_INT(rp_cache_blob_open(c, da, &ba), RP_CACHE_OK); /* a slow client reads A */
    CHECK_INT(put_blob(c, cc, dc), RP_CACHE_OK);
    CHECK_INT(put_blob(c, b, db), RP_CACHE_OK);
    CHECK(rp_cache_blob_present(c, db));
    CHECK(rp_cache_blob_present(c, da));
    close(ba.fd);
    rp_cache_release(c, da);
    CHECK(rp_cache_blob_present(c, db));
    CHECK(!rp_cache_blob_present(c, da));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK(st.size <= 100);
    rp_cache_close(c);
    free(a);
    free(b);
    free(cc);
    rm_rf(dir);
}

/* The same for a manifest: while a blob in use keeps the store over max_size, the manifest
 * just published (it fits beside the pins) is not evicted at once, as if it did not fit: it
 * crossed the network for nothing, and the requests waiting for it (inflight.c) found it
 * gone and each fetched it again. Once the blob is released, LRU order decides. */
static void test_evict_spares_published_manifest_while_in_use(void)
{
    char *dir = mk_tmpdir();
    char *m = json_manifest(1, 51);
    char md[RP_CACHE_DIGEST_BUF], da[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    uint64_t max = 600; /* the manifest's file fits, beside the blob it does not */
    struct rp_cache *c = open_ok(dir, max);
    char *a = sized(500, 52);
    CHECK_INT(put_blob(c, a, da), RP_CACHE_OK);
    struct rp_cache_blob ba;
    CHECK_INT(rp_cache_blob_open(c, da, &ba), RP_CACHE_OK); /* a slow client reads A */
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK(st.size > max); /* over by what is in use */
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, md, &got), RP_CACHE_OK);
    rp_cache_manifest_free(&got);
    close(ba.fd);
    rp_cache_release(c, da); /* A is the least recently used: it goes */
    CHECK(!rp_cache_blob_present(c, da));
    CHECK_INT(rp_cache_manifest_get(c, md, &got), RP_CACHE_OK);
    rp_cache_manifest_free(&got);
    rp_cache_stats(c, &st);
    CHECK(st.size <= max);
    rp_cache_close(c);
    /* Too big beside the pins it still goes at once, as the mirror expects. */
    rm_rf(dir);
    dir = mk_tmpdir();
    c = open_ok(dir, max);
    CHECK_INT(put_blob(c, a, da), RP_CACHE_OK);
    rp_cache_pin(c, da);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    CHECK_INT(rp_cache_manifest_get(c, md, &got), RP_CACHE_E_NOENT);
    rp_cache_close(c);
    free(a);
    free(m);
    rm_rf(dir);
}

/* A fill's readers hold the temp file that becomes the blob: held before the publish, the
 * blob is in use once published, and eviction waits for the release. */
static void test_hold_before_publish(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 100);
    char da[RP_CACHE_DIGEST_BUF], db[RP_CACHE_DIGEST_BUF], dn[RP_CACHE_DIGEST_BUF];
    char *a = sized(60, 4), *b = sized(50, 5), *never = sized(30, 6);
    digest_of(a, strlen(a), da, false);
    rp_cache_hold(c, da);
    CHECK_INT(put_blob(c, a, da), RP_CACHE_OK);
    CHECK_INT(put_blob(c, b, db), RP_CACHE_OK); /* 110: A is in use, B just published */
    CHECK(rp_cache_blob_present(c, da));
    CHECK(rp_cache_blob_present(c, db));
    rp_cache_release(c, da);
    CHECK(!rp_cache_blob_present(c, da));
    CHECK(rp_cache_blob_present(c, db));
    /* Held but never published (a fill that failed): the release forgets it. */
    digest_of(never, strlen(never), dn, false);
    rp_cache_hold(c, dn);
    rp_cache_release(c, dn);
    CHECK(!rp_cache_blob_present(c, dn));
    rp_cache_close(c);
    free(a);
    free(b);
    free(never);
    rm_rf(dir);
}

/* A fill's reader holds the blob before it is published; when the digest is pinned the
 * hold lands on the pin's placeholder. A reload that changes the pins (unpin_all) must not
 * free a held placeholder: the publish would start a fresh entry, not in use, and eviction
 * would take the blob while the reader still sends it. */
static void test_hold_survives_unpin(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 100);
    char da[RP_CACHE_DIGEST_BUF], db[RP_CACHE_DIGEST_BUF];
    char *a = sized(60, 41), *b = sized(50, 42);
    digest_of(a, strlen(a), da, false);
    rp_cache_pin(c, da);
    rp_cache_hold(c, da);  /* a verified reader of the fill */
    rp_cache_unpin_all(c); /* reload: pin patterns changed */
    CHECK_INT(put_blob(c, a, da), RP_CACHE_OK);
    CHECK_INT(put_blob(c, b, db), RP_CACHE_OK); /* 110 > 100: A is held, B just published */
    CHECK(rp_cache_blob_present(c, da));
    rp_cache_release(c, da);
    rp_cache_close(c);
    free(a);
    free(b);
    rm_rf(dir);
}

static void test_evict_manifest_touch(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char *m = json_manifest(3, 11);
    char md[RP_CACHE_DIGEST_BUF], a[RP_CACHE_DIGEST_BUF], b[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    char *ta = sized(100, 31), *tb = sized(100, 32);
    CHECK_INT(put_blob(c, ta, a), RP_CACHE_OK);
    CHECK_INT(put_blob(c, tb, b), RP_CACHE_OK);
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, md, &got), RP_CACHE_OK); /* order now: a, b, m */
    rp_cache_manifest_free(&got);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    rp_cache_close(c);
    c = open_ok(dir, st.size - 1);
    rp_cache_evict(c);
    CHECK(!has_blob(c, a));
    CHECK(has_blob(c, b));
    CHECK_INT(rp_cache_manifest_get(c, md, &got), RP_CACHE_OK);
    rp_cache_manifest_free(&got);
    rp_cache_stats(c, &st);
    CHECK_INT(st.evictions, 1);
    CHECK_INT(st.evicted_bytes, 100);
    rp_cache_close(c);
    free(m);
    free(ta);
    free(tb);
    rm_rf(dir);
}

static void test_evict_pinned(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 200);
    char d[4][RP_CACHE_DIGEST_BUF];
    char *t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = sized(100, 10 + i);
        digest_of(t[i], 100, d[i], false);
    }
    rp_cache_pin(c, d[0]); /* before the content arrives */
    rp_cache_pin(c, "sha256:nope");
    CHECK_INT(put_blob(c, t[0], d[0]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[1], d[1]), RP_CACHE_OK);
    rp_cache_pin(c, d[1]); /* after */
    CHECK_INT(put_blob(c, t[2], d[2]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[3], d[3]), RP_CACHE_OK);
    CHECK(has_blob(c, d[0]) && has_blob(c, d[1]));
    CHECK(!has_blob(c, d[2]) && !has_blob(c, d[3]));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.size, 200);
    CHECK_INT(st.evictions, 2);
    /* Pins do not survive a reopen, clean or not (the owner pins again from its
     * configuration): only what is pinned anew holds once eviction runs. (Presence is
     * checked without opening: the last release of a blob runs eviction.) */
    rp_cache_close(c);
    c = open_ok(dir, 100);
    rp_cache_stats(c, &st);
    CHECK_INT(st.size, 200); /* open evicts nothing */
    rp_cache_pin(c, d[1]);
    CHECK_INT(put_blob(c, t[2], d[2]), RP_CACHE_OK);
    CHECK(!rp_cache_blob_present(c, d[0]) && rp_cache_blob_present(c, d[1]) &&
          !rp_cache_blob_present(c, d[2]));
    rp_cache_close(c);
    /* rp_cache_unpin_all lets pinned content go, and drops pins of absent content. */
    c = open_ok(dir, 250);
    rp_cache_pin(c, d[1]);
    rp_cache_pin(c, d[3]); /* absent */
    CHECK(rp_cache_can_hold(c, d[3], 1000));
    CHECK_INT(put_blob(c, t[0], d[0]), RP_CACHE_OK);
    rp_cache_unpin_all(c);
    CHECK(!rp_cache_can_hold(c, d[3], 1000));
    CHECK_INT(rp_cache_evict(c), 0);
    CHECK_INT(put_blob(c, t[2], d[2]), RP_CACHE_OK); /* 300 bytes: the oldest goes */
    CHECK(!rp_cache_blob_present(c, d[0]) && rp_cache_blob_present(c, d[1]));
    CHECK_INT(put_blob(c, t[3], d[3]), RP_CACHE_OK); /* and then the one unpinned */
    CHECK(!rp_cache_blob_present(c, d[1]) && rp_cache_blob_present(c, d[2]) &&
          rp_cache_blob_present(c, d[3]));
    rp_cache_close(c);
    for (int i = 0; i < 4; i++)
        free(t[i]);
    rm_rf(dir);
}

/* A blob bigger than max_size is not to be kept unless pinned; unbounded caches keep all. */
static void test_can_hold(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 200);
    char d[2][RP_CACHE_DIGEST_BUF];
    char *t = sized(100, 7);
    digest_of(t, 100, d[0], false);
    t[0] ^= 1;
    digest_of(t, 100, d[1], false);
    CHECK(rp_cache_can_hold(c, d[0], 200));
    CHECK(!rp_cache_can_hold(c, d[0], 201));
    CHECK(rp_cache_room_for(c, d[0]) == 200);
    rp_cache_pin(c, d[1]);
    CHECK(rp_cache_can_hold(c, d[1], 201));
    CHECK(rp_cache_room_for(c, d[1]) == UINT64_MAX);
    CHECK(!rp_cache_can_hold(c, "sha256:nope", 1));
    CHECK(rp_cache_room_for(c, "sha256:nope") == 0);
    /* Pinned content present takes its share of max_size: 150 pinned bytes leave 50. */
    char p[RP_CACHE_DIGEST_BUF];
    char *big = sized(150, 8);
    CHECK_INT(put_blob(c, big, p), RP_CACHE_OK);
    rp_cache_pin(c, p);
    CHECK(rp_cache_can_hold(c, d[0], 50));
    CHECK(!rp_cache_can_hold(c, d[0], 51));
    CHECK(rp_cache_room_for(c, d[0]) == 50);
    CHECK(rp_cache_can_hold(c, d[1], 201)); /* pinned itself */
    free(big);
    rp_cache_close(c);
    c = open_ok(dir, 0);
    CHECK(rp_cache_can_hold(c, d[0], UINT64_MAX));
    CHECK(rp_cache_room_for(c, d[0]) == UINT64_MAX);
    rp_cache_close(c);
    free(t);
    rm_rf(dir);
}

static void test_evict_in_use(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 200);
    char d[4][RP_CACHE_DIGEST_BUF];
    char *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = sized(100, 20 + i);
    CHECK_INT(put_blob(c, t[0], d[0]), RP_CACHE_OK);
    struct rp_cache_blob b1, b2;
    CHECK_INT(rp_cache_blob_open(c, d[0], &b1), RP_CACHE_OK);
    CHECK_INT(rp_cache_blob_open(c, d[0], &b2), RP_CACHE_OK); /* two readers */
    CHECK_INT(put_blob(c, t[1], d[1]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[2], d[2]), RP_CACHE_OK); /* 0 is oldest but in use: 1 goes */
    CHECK(!has_blob(c, d[1]));
    char *p0 = obj_path(dir, "blobs", d[0]);
    CHECK(exists(p0));
    rp_cache_release(c, d[0]);
    CHECK_INT(put_blob(c, t[3], d[3]), RP_CACHE_OK); /* still one reader: 2 goes */
    CHECK(!has_blob(c, d[2]));
    CHECK(exists(p0));
    rp_cache_release(c, d[0]);
    rp_cache_release(c, d[0]);                       /* extra releases are ignored */
    CHECK_INT(put_blob(c, t[1], d[1]), RP_CACHE_OK); /* 0 is free and the oldest now */
    CHECK(!exists(p0));
    /* The readers' fds still read the whole content after the unlink. */
    size_t n;
    char *s = read_all(b1.fd, &n);
    CHECK(n == 100 && memcmp(s, t[0], 100) == 0);
    free(s);
    close(b1.fd);
    close(b2.fd);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.evictions, 3);
    CHECK_INT(st.evicted_bytes, 300);
    CHECK_INT(st.entries, 2);
    free(p0);
    rp_cache_close(c);
    for (int i = 0; i < 4; i++)
        free(t[i]);
    rm_rf(dir);
}

/* ------------------------------------------------------------ full disk --- */

static bool write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
    close(fd);
    return ok;
}

/* Puts this process into a mount namespace of its own with a tmpfs of mib MiB on dir: a
 * file system that can be filled on purpose, gone with the process. Root does it directly,
 * others through a user namespace. false when neither is allowed here. */
static bool small_fs(const char *dir, int mib)
{
    if (geteuid() != 0) {
        char map[64];
        uid_t uid = geteuid();
        gid_t gid = getegid();
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
            return false;
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
        if (!write_text("/proc/self/uid_map", map) || !write_text("/proc/self/setgroups", "deny"))
            return false;
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
        if (!write_text("/proc/self/gid_map", map))
            return false;
    } else if (unshare(CLONE_NEWNS) != 0) {
        return false;
    }
    char opt[32];
    snprintf(opt, sizeof(opt), "size=%dm", mib);
    return mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0 &&
           mount("tmpfs", dir, "tmpfs", 0, opt) == 0;
}

/* Publishes n bytes from seed in writes of 64 KiB; expect -1 leaves the size unknown (no
 * allocation up front: room is then made by the writes). */
static int put_big(struct rp_cache *c, size_t n, int seed, char *digest, bool known)
{
    char *p = sized(n, seed);
    digest_of(p, n, digest, false);
    int err = 0;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, digest, known ? (int64_t)n : -1, &err);
    for (size_t off = 0; f && off < n; off += 65536) {
        err = rp_cache_fill_write(f, p + off, n - off < 65536 ? n - off : 65536);
        if (err != RP_CACHE_OK) {
            rp_cache_fill_abort(f);
            f = NULL;
        }
    }
    if (f)
        err = rp_cache_fill_commit(f);
    free(p);
    return err;
}

/* Takes every free byte of the file system holding path; returns the filler's path. */
static char *fill_up(const char *dir)
{
    char *junk = rp_xasprintf("%s/junk", dir);
    int fd = open(junk, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    static char zeros[4096];
    while (fd >= 0 && write(fd, zeros, sizeof(zeros)) > 0)
        ;
    if (fd >= 0)
        close(fd);
    return junk;
}

#define MiB ((size_t)1024 * 1024)

static bool on_disk(const char *dir, const char *digest)
{
    char *p = obj_path(dir, "blobs", digest);
    bool yes = exists(p);
    free(p);
    return yes;
}

static void disk_full_body(const char *root)
{
    char *dir = rp_xasprintf("%s/cache", root);
    struct rp_cache *c = open_ok(dir, 0); /* unbounded: only the disk bounds it */
    CHECK(c != NULL);
    if (!c) {
        free(dir);
        return;
    }
    char a[RP_CACHE_DIGEST_BUF], b[RP_CACHE_DIGEST_BUF], cc[RP_CACHE_DIGEST_BUF],
        d[RP_CACHE_DIGEST_BUF], e[RP_CACHE_DIGEST_BUF], g[RP_CACHE_DIGEST_BUF],
        h[RP_CACHE_DIGEST_BUF], k[RP_CACHE_DIGEST_BUF], big[RP_CACHE_DIGEST_BUF];
    /* 6 of the 8 MiB: a pinned, b being served, c and d free to go (c the oldest). */
    CHECK_INT(put_big(c, 3 * MiB / 2, 1, a, true), RP_CACHE_OK);
    rp_cache_pin(c, a);
    CHECK_INT(put_big(c, 3 * MiB / 2, 2, b, true), RP_CACHE_OK);
    CHECK_INT(put_big(c, 3 * MiB / 2, 3, cc, true), RP_CACHE_OK);
    CHECK_INT(put_big(c, 3 * MiB / 2, 4, d, true), RP_CACHE_OK);
    struct rp_cache_blob served;
    CHECK_INT(rp_cache_blob_open(c, b, &served), RP_CACHE_OK);
    /* 3 MiB do not fit in what is left: the oldest evictable blobs make room, before the
     * fill has taken a byte. */
    CHECK_INT(put_big(c, 3 * MiB, 5, e, true), RP_CACHE_OK);
    CHECK(!has_blob(c, cc));
    CHECK(has_blob(c, a) && has_blob(c, b) && has_blob(c, e));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK(st.evictions >= 1 && st.evicted_bytes >= 3 * MiB / 2);
    /* More than all the evictable blobs and the free space: refused up front, and nothing
     * is evicted in vain. */
    int err = 0;
    CHECK(rp_cache_fill_begin(c,
                              "sha256:"
                              "0000000000000000000000000000000000000000000000000000"
                              "000000000000",
                              (int64_t)(6 * MiB), &err) == NULL);
    CHECK_INT(err, RP_CACHE_E_NOSPACE);
    rp_cache_stats(c, &st);
    CHECK_INT(st.disk_full, 1);
    CHECK_INT(count_files(dir, "tmp"), 0);
    CHECK(has_blob(c, a) && has_blob(c, b));
    CHECK(on_disk(dir, e)); /* hopeless: nothing was evicted for it */
    CHECK_STR(rp_cache_strerror(RP_CACHE_E_NOSPACE), "cache disk full");
    /* Something else fills the disk to the last byte: a manifest, a tag, a fill of unknown
     * size (its writes hit ENOSPC) and the readiness probe each make room from the blobs,
     * oldest first (looked at on disk: has_blob would count as use). */
    CHECK_INT(put_big(c, 3 * MiB / 2, 6, g, true), RP_CACHE_OK);
    CHECK_INT(put_big(c, 3 * MiB / 2, 7, h, true), RP_CACHE_OK);
    CHECK_INT(put_big(c, 3 * MiB / 2, 8, k, true), RP_CACHE_OK);
    char *junk = fill_up(root);
    char *m = json_manifest(40, 3), *m2 = json_manifest(40, 4);
    char md[RP_CACHE_DIGEST_BUF], md2[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    digest_of(m2, strlen(m2), md2, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    CHECK(!on_disk(dir, g) && on_disk(dir, h) && on_disk(dir, k));
    free(fill_up(root));
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "latest", md, NULL, 1000), RP_CACHE_OK);
    CHECK(!on_disk(dir, h) && on_disk(dir, k));
    free(fill_up(root));
    CHECK_INT(put_big(c, 64 * 1024, 9, big, false), RP_CACHE_OK);
    CHECK(!on_disk(dir, k) && on_disk(dir, big));
    free(fill_up(root));
    CHECK_INT(rp_cache_probe_writable(c), RP_CACHE_OK); /* big goes */
    CHECK(!on_disk(dir, big));
    free(fill_up(root));
    CHECK_INT(rp_cache_probe_writable(c), RP_CACHE_E_NOSPACE); /* only a and b are left */
    CHECK_INT(put_big(c, 64 * 1024, 9, big, false), RP_CACHE_E_NOSPACE);
    CHECK_INT(rp_cache_manifest_put(c, md2, MT_OCI, m2, strlen(m2)), RP_CACHE_E_NOSPACE);
    CHECK_INT(count_files(dir, "tmp"), 0);
    /* Nothing is stuck: once the disk has room again, everything works. */
    unlink(junk);
    CHECK_INT(put_big(c, 64 * 1024, 9, big, false), RP_CACHE_OK);
    CHECK(has_blob(c, a) && has_blob(c, b) && has_blob(c, big));
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, md, &got), RP_CACHE_OK);
    CHECK(got.len == strlen(m) && memcmp(got.data, m, got.len) == 0);
    rp_cache_manifest_free(&got);
    close(served.fd);
    rp_cache_release(c, b);
    rp_cache_close(c);
    free(m);
    free(m2);
    free(junk);
    free(dir);
}

/* Runs body(root) in a child with a tmpfs of 8 MiB of its own on root (small_fs); says so
 * and passes when this machine allows no such mount. */
static void in_small_fs(const char *name, void (*body)(const char *root))
{
    char *root = mk_tmpdir();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!small_fs(root, 8))
            _exit(77);
        body(root);
        exit(unit_cur_failed ? 1 : 0); /* exit, not _exit: the leak check runs */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        fprintf(stderr, "%s: skipped: no mount namespace with a tmpfs here (%s)\n", name,
                geteuid() ? "no user namespaces" : "no CAP_SYS_ADMIN");
    else
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    rm_rf(root);
}

/* A full file system (ENOSPC) is met by evicting least recently used blobs, never pinned or
 * served ones; when nothing is left to evict, calls fail with E_NOSPACE and leave nothing
 * behind. Runs in a child with a tmpfs of 8 MiB of its own. */
static void test_disk_full(void)
{
    in_small_fs("test_disk_full", disk_full_body);
}

/* Blobs being sent (released, but their descriptors open) free no blocks when evicted:
 * making room counts what it evicts instead of asking statvfs again, which had evicted the
 * whole cache before failing. In an 8 MiB tmpfs: six 1 MiB blobs held open, then a fill of
 * 3 MiB evicts about 3 MiB worth in one round, fails with E_NOSPACE, and half stays. */
static void open_blobs_body(const char *root)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/cache", root);
    struct rp_cache *c = open_ok(dir, 0);
    char d[6][RP_CACHE_DIGEST_BUF], big[RP_CACHE_DIGEST_BUF];
    int fds[6];
    for (int i = 0; i < 6; i++) {
        CHECK_INT(put_big(c, 1 << 20, i + 1, d[i], true), RP_CACHE_OK);
        struct rp_cache_blob b;
        CHECK_INT(rp_cache_blob_open(c, d[i], &b), RP_CACHE_OK);
        fds[i] = b.fd;
        rp_cache_release(c, d[i]); /* as a response does once the file is queued */
    }
    char *p = sized(3 << 20, 99);
    digest_of(p, 3 << 20, big, false);
    free(p);
    int err = 0;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, big, 3 << 20, &err);
    CHECK(f == NULL);
    CHECK_INT(err, RP_CACHE_E_NOSPACE);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK(st.entries >= 2 && st.entries <= 4);
    for (int i = 0; i < 6; i++)
        close(fds[i]);
    /* Their blocks free now: the next fill finds room. */
    CHECK_INT(put_big(c, 3 << 20, 99, big, true), RP_CACHE_OK);
    rp_cache_close(c);
}

/* Closing on a full disk: the snapshot lists the index as it is, so it must not evict to
 * make room for itself (it would name blobs gone). It is skipped, and the next open
 * rebuilds the index from the files: every blob is still there. */
static void snapshot_full_body(const char *root)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/cache", root);
    struct rp_cache *c = open_ok(dir, 0);
    char d[3][RP_CACHE_DIGEST_BUF];
    for (int i = 0; i < 3; i++)
        CHECK_INT(put_big(c, 1 << 20, i + 11, d[i], true), RP_CACHE_OK);
    char *junk = fill_up(root);
    rp_cache_close(c);
    unlink(junk);
    free(junk);
    c = open_ok(dir, 0);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 3);
    for (int i = 0; i < 3; i++)
        CHECK(has_blob(c, d[i]));
    rp_cache_close(c);
}

static void test_disk_full_snapshot_evicts_nothing(void)
{
    in_small_fs("test_disk_full_snapshot_evicts_nothing", snapshot_full_body);
}

static void test_disk_full_blobs_being_sent(void)
{
    in_small_fs("test_disk_full_blobs_being_sent", open_blobs_body);
}

/* After a crash the index is rebuilt without pins: open must not evict to max_size before
 * the owner has pinned again (pinned mirrors may exceed max_size). */
static void test_open_evicts_nothing_before_pins(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[5][RP_CACHE_DIGEST_BUF];
    char text[32];
    for (int i = 0; i < 5; i++) {
        snprintf(text, sizeof(text), "pinned blob %d", i);
        CHECK_INT(put_blob(c, text, d[i]), RP_CACHE_OK);
        rp_cache_pin(c, d[i]);
    }
    rp_cache_close(c);
    char *ip = rp_xasprintf("%s/index", dir);
    unlink(ip); /* as after a crash: no snapshot, so no pins */
    free(ip);
    c = open_ok(dir, 20);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 5);
    for (int i = 0; i < 5; i++)
        rp_cache_pin(c, d[i]);
    CHECK_INT(rp_cache_evict(c), 0);
    for (int i = 0; i < 5; i++)
        CHECK(rp_cache_blob_present(c, d[i]));
    rp_cache_close(c);
    rm_rf(dir);
}

/* A blob deleted behind the cache's back is a miss, and the accounting follows. */
static void test_blob_vanished(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF];
    CHECK_INT(put_blob(c, "short-lived", d), RP_CACHE_OK);
    char *p = obj_path(dir, "blobs", d);
    unlink(p);
    struct rp_cache_blob b;
    CHECK(rp_cache_blob_present(c, d)); /* the index has not looked yet */
    CHECK_INT(rp_cache_blob_open(c, d, &b), RP_CACHE_E_NOENT);
    CHECK(!rp_cache_blob_present(c, d));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.size, 0);
    free(p);
    rp_cache_close(c);
    rm_rf(dir);
}

/* A blob file whose size is no longer the one its fill verified (cut short, appended to,
 * replaced) cannot match its digest: it is removed and reported missing, never served, so
 * the next request fetches it again instead of every client failing its digest check. */
static void blob_resized_case(bool reopen, bool grow)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF];
    const char *text = "a layer that will be damaged on disk";
    CHECK_INT(put_blob(c, text, d), RP_CACHE_OK);
    if (reopen) /* the size then comes from the snapshot */
        rp_cache_close(c);
    char *p = obj_path(dir, "blobs", d);
    if (grow) {
        int fd = open(p, O_WRONLY | O_APPEND);
        CHECK(fd >= 0 && write(fd, "junk", 4) == 4);
        close(fd);
    } else {
        CHECK(truncate(p, 10) == 0);
    }
    if (reopen)
        c = open_ok(dir, 0);
    struct rp_cache_blob b;
    CHECK_INT(rp_cache_blob_open(c, d, &b), RP_CACHE_E_CORRUPT);
    CHECK_INT(b.fd, -1);
    CHECK(!exists(p));
    CHECK(!rp_cache_blob_present(c, d));
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.size, 0);
    CHECK_INT(put_blob(c, text, d), RP_CACHE_OK); /* fetched again, it is served again */
    CHECK(blob_is(c, d, text));
    free(p);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_blob_resized(void)
{
    blob_resized_case(false, false);
    blob_resized_case(false, true);
    blob_resized_case(true, false);
    blob_resized_case(true, true);
}

struct scrub_seen {
    int checked, n, removed; /* n: damaged or unreadable */
    uint64_t checked_bytes;
    char digest[RP_CACHE_DIGEST_BUF];
    char why[256];
};

static void scrub_cb(void *arg, const char *digest, uint64_t size, const char *why, bool removed)
{
    struct scrub_seen *v = arg;
    v->checked++;
    v->checked_bytes += size;
    if (!why)
        return;
    v->n++;
    v->removed += removed;
    snprintf(v->digest, sizeof(v->digest), "%s", digest);
    snprintf(v->why, sizeof(v->why), "%s", why);
}

/* rp_cache_verify finds same-size damage, which opening a blob cannot see, and removes the
 * entry (a pinned one stays pinned, as a placeholder); intact content stays, a manifest's
 * damage is found too, and a second pass finds nothing. */
static void test_verify(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char good[RP_CACHE_DIGEST_BUF], bad[RP_CACHE_DIGEST_BUF], big[RP_CACHE_DIGEST_BUF];
    char *bigs = sized(3u << 20, 5); /* more than one read of the scrub */
    CHECK_INT(put_blob(c, "intact blob", good), RP_CACHE_OK);
    CHECK_INT(put_blob(c, "blob to damage", bad), RP_CACHE_OK);
    CHECK_INT(put_blob(c, bigs, big), RP_CACHE_OK);
    char *m = json_manifest(3, 1), md[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    rp_cache_pin(c, bad);

    struct scrub_seen v = {0};
    struct rp_cache_verify_stats st;
    CHECK_INT(rp_cache_verify(c, scrub_cb, &v, &st), RP_CACHE_OK);
    CHECK_INT(v.n, 0);
    CHECK(st.blobs == 3 && st.manifests == 1 && st.damaged == 0 && st.unreadable == 0);
    struct rp_cache_stats cs; /* what the callback's caller expects to see */
    rp_cache_stats(c, &cs);
    CHECK_INT(v.checked, (int)cs.entries);
    CHECK(v.checked_bytes == cs.size);
    CHECK(st.blob_bytes == strlen("intact blob") + strlen("blob to damage") + (3u << 20));

    char *path = obj_path(dir, "blobs", bad);
    spit(path, "blob to damagE", strlen("blob to damage")); /* same size */
    CHECK(has_blob(c, bad));                                /* what serving sees: nothing wrong */
    CHECK_INT(rp_cache_verify(c, scrub_cb, &v, &st), RP_CACHE_OK);
    CHECK_INT(v.n, 1);
    CHECK_INT(v.removed, 1);
    CHECK_STR(v.digest, bad);
    CHECK(strncmp(v.why, "its 14 bytes hash to sha256:", 28) == 0);
    CHECK(st.damaged == 1 && st.blobs == 3);
    CHECK(!exists(path));
    CHECK(!has_blob(c, bad));
    CHECK(blob_is(c, good, "intact blob"));
    CHECK(blob_is(c, big, bigs));
    /* A manifest's damage: found, removed. */
    char *mpath = obj_path(dir, "manifests", md);
    size_t mlen;
    char *mf = slurp(mpath, &mlen);
    mf[mlen - 2] ^= 1;
    spit(mpath, mf, mlen);
    free(mf);
    memset(&v, 0, sizeof(v));
    CHECK_INT(rp_cache_verify(c, scrub_cb, &v, &st), RP_CACHE_OK);
    CHECK_INT(v.n, 1);
    CHECK_STR(v.digest, md);
    CHECK(st.damaged == 1 && st.manifests == 1);
    CHECK(!exists(mpath));

    /* Still pinned: the content, fetched again, is not evicted. */
    CHECK_INT(put_blob(c, "blob to damage", bad), RP_CACHE_OK);
    CHECK_INT(rp_cache_evict(c), 0);
    rp_cache_set_max_size(c, 1);
    rp_cache_evict(c);
    CHECK(has_blob(c, bad));
    CHECK(!has_blob(c, good));
    rp_cache_set_max_size(c, 0);

    memset(&v, 0, sizeof(v));
    CHECK_INT(rp_cache_verify(c, scrub_cb, &v, &st), RP_CACHE_OK);
    CHECK_INT(v.n, 0);
    CHECK(st.damaged == 0 && st.manifests == 0 && st.blobs == 1);
    CHECK_INT(rp_cache_verify(NULL, NULL, NULL, &st), RP_CACHE_E_INVALID);

    free(mpath);
    free(path);
    free(m);
    free(bigs);
    rp_cache_close(c);
    rm_rf(dir);
}

static void count_blob(void *arg, const char *digest, uint64_t size)
{
    (void)digest;
    ((uint64_t *)arg)[0]++;
    ((uint64_t *)arg)[1] += size;
}

/* The online scrub's pieces: blobs listed, a file checked on any thread (paced, stoppable),
 * and a damaged blob dropped only while its file is the one that was checked. */
static void test_scrub_parts(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char a[RP_CACHE_DIGEST_BUF], b[RP_CACHE_DIGEST_BUF];
    char *big = sized(2u << 20, 3);
    CHECK_INT(put_blob(c, "scrub me", a), RP_CACHE_OK);
    CHECK_INT(put_blob(c, big, b), RP_CACHE_OK);
    char *m = json_manifest(1, 2), md[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    uint64_t seen[2] = {0, 0};
    CHECK_INT((int)rp_cache_blobs_each(c, count_blob, seen), 2); /* blobs only */
    CHECK(seen[0] == 2 && seen[1] == strlen("scrub me") + (2u << 20));

    char *pa = rp_cache_blob_path(c, a), *pb = rp_cache_blob_path(c, b);
    char *want = obj_path(dir, "blobs", a);
    CHECK_STR(pa, want);
    CHECK(rp_cache_blob_path(c, "sha256:nothex") == NULL);
    char why[256];
    int fd = open(pb, O_RDONLY);
    /* 2 MiB at 8 MiB/s: paced to about a quarter of a second. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_INT(rp_cache_check_fd(fd, b, 2u << 20, 8u << 20, NULL, why, sizeof(why)), RP_CACHE_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double spent = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(spent >= 0.2);
    lseek(fd, 0, SEEK_SET);
    atomic_bool stop;
    atomic_init(&stop, true);
    CHECK_INT(rp_cache_check_fd(fd, b, 2u << 20, 0, &stop, why, sizeof(why)), RP_CACHE_E_IO);
    CHECK_STR(why, "stopped");
    lseek(fd, 0, SEEK_SET);
    CHECK_INT(rp_cache_check_fd(fd, b, (2u << 20) + 1, 0, NULL, why, sizeof(why)), RP_CACHE_E_SIZE);
    close(fd);

    /* Damaged in place: dropped while it is the same file. */
    spit(pa, "scrub mE", 8);
    struct stat st;
    CHECK(stat(pa, &st) == 0);
    fd = open(pa, O_RDONLY);
    CHECK_INT(rp_cache_check_fd(fd, a, 8, 0, NULL, why, sizeof(why)), RP_CACHE_E_DIGEST);
    close(fd);
    CHECK(strncmp(why, "its 8 bytes hash to sha256:", 27) == 0);
    /* Replaced meanwhile (evicted, fetched again: another inode): left alone. */
    char *moved = rp_xasprintf("%s.old", pa);
    CHECK(rename(pa, moved) == 0);
    spit(pa, "scrub me", 8);
    CHECK_INT(rp_cache_blob_drop(c, a, (uint64_t)st.st_dev, (uint64_t)st.st_ino), RP_CACHE_E_NOENT);
    CHECK(blob_is(c, a, "scrub me"));
    struct stat st2;
    CHECK(stat(pa, &st2) == 0);
    CHECK_INT(rp_cache_blob_drop(c, a, (uint64_t)st2.st_dev, (uint64_t)st2.st_ino), RP_CACHE_OK);
    CHECK(!exists(pa));
    CHECK(!has_blob(c, a));
    CHECK_INT(rp_cache_blob_drop(c, a, (uint64_t)st2.st_dev, (uint64_t)st2.st_ino),
              RP_CACHE_E_NOENT);
    CHECK(blob_is(c, b, big));
    unlink(moved);

    free(moved);
    free(want);
    free(pa);
    free(pb);
    free(m);
    free(big);
    rp_cache_close(c);
    rm_rf(dir);
}

/* The scrub's second look at a blob (rp_cache_blob_recheck) removes what a request's open
 * would, but counts no use: the blob keeps its place in the LRU order and is not held. */
static void test_blob_recheck(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 300);
    char d[4][RP_CACHE_DIGEST_BUF];
    char *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = sized(100, i);
    CHECK_INT(put_blob(c, t[0], d[0]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[1], d[1]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[2], d[2]), RP_CACHE_OK);
    CHECK_INT(rp_cache_blob_recheck(c, d[0]), RP_CACHE_OK);
    CHECK_INT(put_blob(c, t[3], d[3]), RP_CACHE_OK);
    CHECK(!rp_cache_blob_present(c, d[0])); /* still the oldest, and not held */
    CHECK(rp_cache_blob_present(c, d[1]));
    /* A symlink standing for its file: removed (not what it points to), forgotten. */
    char *p = obj_path(dir, "blobs", d[1]);
    char *out = mk_tmpdir();
    char *victim = rp_xasprintf("%s/victim", out);
    spit(victim, t[1], 100);
    CHECK(unlink(p) == 0 && symlink(victim, p) == 0);
    CHECK_INT(rp_cache_blob_recheck(c, d[1]), RP_CACHE_E_CORRUPT);
    CHECK(!rp_cache_blob_present(c, d[1]));
    CHECK(!exists(p));
    CHECK(exists(victim));
    /* Gone behind the cache's back: forgotten. */
    char *p2 = obj_path(dir, "blobs", d[2]);
    CHECK(unlink(p2) == 0);
    CHECK_INT(rp_cache_blob_recheck(c, d[2]), RP_CACHE_E_NOENT);
    CHECK(!rp_cache_blob_present(c, d[2]));
    CHECK_INT(rp_cache_blob_recheck(c, d[0]), RP_CACHE_E_NOENT);
    CHECK_INT(rp_cache_blob_recheck(c, "sha256:nothex"), RP_CACHE_E_INVALID);
    rp_cache_close(c);
    free(p2);
    free(victim);
    free(p);
    for (int i = 0; i < 4; i++)
        free(t[i]);
    rm_rf(out);
    rm_rf(dir);
}

/* Symlinks planted in the cache directory never make the cache delete, truncate or create
 * files outside it: a tmp/ that points elsewhere is refused (open empties tmp/), as are the
 * other top directories (publishing and eviction would go through them) and a lock file that
 * does (it would be created); the readiness probe does not write through one. */
static void test_planted_symlinks(void)
{
    char *out = mk_tmpdir();
    char *victim = rp_xasprintf("%s/precious", out), *absent = rp_xasprintf("%s/created", out);

    char *dir = mk_tmpdir();
    spit(victim, "precious", 8);
    char *p = rp_xasprintf("%s/tmp", dir);
    CHECK(symlink(out, p) == 0);
    char err[256];
    struct rp_cache *c = rp_cache_open(dir, 0, err, sizeof(err));
    CHECK(c == NULL);
    CHECK(exists(victim));
    rp_cache_close(c);
    free(p);
    rm_rf(dir);

    dir = mk_tmpdir();
    p = rp_xasprintf("%s/links", dir);
    CHECK(symlink(out, p) == 0);
    c = rp_cache_open(dir, 0, err, sizeof(err));
    CHECK(c == NULL);
    rp_cache_close(c);
    free(p);
    rm_rf(dir);

    dir = mk_tmpdir();
    p = rp_xasprintf("%s/lock", dir);
    CHECK(symlink(absent, p) == 0);
    c = rp_cache_open(dir, 0, err, sizeof(err));
    CHECK(c == NULL);
    CHECK(!exists(absent));
    rp_cache_close(c);
    free(p);
    rm_rf(dir);

    dir = mk_tmpdir();
    c = open_ok(dir, 0);
    p = rp_xasprintf("%s/tmp/probe.%ld", dir, (long)getpid());
    CHECK(symlink(victim, p) == 0);
    CHECK_INT(rp_cache_probe_writable(c), RP_CACHE_OK);
    size_t n = 0;
    char *s = slurp(victim, &n);
    CHECK(s && n == 8 && memcmp(s, "precious", 8) == 0);
    free(s);
    CHECK_INT(count_files(dir, "tmp"), 0);
    rp_cache_close(c);
    free(p);
    rm_rf(dir);

    free(victim);
    free(absent);
    rm_rf(out);
}

/* ---------------------------------------------------------------- arguments --- */

static void test_invalid_digests(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char ok[RP_CACHE_DIGEST_BUF];
    digest_of("x", 1, ok, false);
    char upper[RP_CACHE_DIGEST_BUF];
    snprintf(upper, sizeof(upper), "%s", ok);
    for (char *q = upper + 7; *q; q++)
        if (*q >= 'a' && *q <= 'f')
            *q = (char)(*q - 'a' + 'A');
    char shorter[RP_CACHE_DIGEST_BUF], longer[RP_CACHE_DIGEST_BUF + 2], nl[RP_CACHE_DIGEST_BUF + 2];
    snprintf(shorter, sizeof(shorter), "%.70s", ok);
    snprintf(longer, sizeof(longer), "%s0", ok);
    snprintf(nl, sizeof(nl), "%s\n", ok);
    char s512as256[RP_CACHE_DIGEST_BUF];
    snprintf(s512as256, sizeof(s512as256), "sha512:%s", ok + 7);
    char trav[RP_CACHE_DIGEST_BUF];
    snprintf(trav, sizeof(trav), "sha256:../../../../../../etc/passwd%.36s", ok + 7);
    const char *bad[] = {
        "",
        "sha256:",
        "sha256",
        "SHA256:0000000000000000000000000000000000000000000000000000000000000000",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        upper,
        shorter,
        longer,
        nl,
        s512as256,
        trav,
        "sha256:000000000000000000000000000000000000000000000000000000000000000g",
        NULL,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *b = bad[i];
        struct rp_cache_blob blob;
        struct rp_cache_manifest m;
        char got[RP_CACHE_DIGEST_BUF];
        int64_t when;
        int err = 0;
        CHECK_INT(rp_cache_blob_open(c, b, &blob), RP_CACHE_E_INVALID);
        CHECK_INT(rp_cache_manifest_get(c, b, &m), RP_CACHE_E_INVALID);
        CHECK_INT(rp_cache_manifest_put(c, b, MT_OCI, "x", 1), RP_CACHE_E_INVALID);
        CHECK(rp_cache_fill_begin(c, b, -1, &err) == NULL);
        CHECK_INT(err, RP_CACHE_E_INVALID);
        CHECK_INT(rp_cache_link(c, REG, REPO, b), RP_CACHE_E_INVALID);
        CHECK(!rp_cache_linked(c, REG, REPO, b));
        CHECK_INT(rp_cache_tag_set(c, REG, REPO, "t", b, NULL, 1), RP_CACHE_E_INVALID);
        CHECK_INT(rp_cache_tag_get(c, REG, REPO, "t", got, sizeof(got), &when), RP_CACHE_E_NOENT);
        rp_cache_release(c, b);
        rp_cache_pin(c, b);
    }
    CHECK_INT(count_files(dir, "blobs") + count_files(dir, "manifests") +
                  count_files(dir, "links") + count_files(dir, "tags") + count_files(dir, "tmp"),
              0);
    /* The valid spelling works; NULL cache arguments are refused, not crashed on. */
    CHECK_INT(fill(c, ok, "x", 1, 1), RP_CACHE_OK);
    struct rp_cache_blob blob;
    CHECK_INT(rp_cache_blob_open(NULL, ok, &blob), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_fill_commit(NULL), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_evict(NULL), 0);
    rp_cache_close(NULL);
    rp_cache_close(c);
    rm_rf(dir);
}

static void test_strerror_and_open_errors(void)
{
    for (int e = RP_CACHE_E_CORRUPT; e <= RP_CACHE_OK; e++)
        CHECK(strstr(rp_cache_strerror(e), "unknown") == NULL);
    CHECK(strstr(rp_cache_strerror(-100), "unknown") != NULL);
    char err[256];
    CHECK(rp_cache_open("", 0, err, sizeof(err)) == NULL);
    CHECK(err[0] != '\0');
    CHECK(rp_cache_open(NULL, 0, err, sizeof(err)) == NULL);
    /* A file where the directory should be. */
    char *dir = mk_tmpdir();
    char *f = rp_xasprintf("%s/file", dir);
    spit(f, "x", 1);
    CHECK(rp_cache_open(f, 0, err, sizeof(err)) == NULL);
    CHECK(strstr(err, f) != NULL);
    /* Nested directories are created. */
    char *nested = rp_xasprintf("%s/a/b/c", dir);
    struct rp_cache *c = open_ok(nested, 0);
    CHECK(c != NULL);
    rp_cache_close(c);
    free(f);
    free(nested);
    rm_rf(dir);
}

static void test_stats(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    CHECK(st.size == 0 && st.entries == 0 && st.evictions == 0 && st.evicted_bytes == 0);
    char d[RP_CACHE_DIGEST_BUF];
    char *big = sized(10000, 5);
    CHECK_INT(put_blob(c, big, d), RP_CACHE_OK);
    CHECK_INT(put_blob(c, "tiny", d), RP_CACHE_OK);
    char *m = json_manifest(30, 1);
    char md[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    char *mp = obj_path(dir, "manifests", md);
    struct stat sb;
    stat(mp, &sb);
    rp_cache_stats(c, &st);
    CHECK_INT(st.entries, 3);
    CHECK_INT(st.size, 10000 + 4 + (uint64_t)sb.st_size);
    /* Tags and links are not entries. */
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "x", md, NULL, 1), RP_CACHE_OK);
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK);
    struct rp_cache_stats st2;
    rp_cache_stats(c, &st2);
    CHECK(memcmp(&st, &st2, sizeof(st)) == 0);
    free(big);
    free(m);
    free(mp);
    rp_cache_close(c);
    rm_rf(dir);
}

/* ---------------------------------------------------------------- memory --- */

/* Path of the tag or link file of (a, b, c3), as cache.c names it. */
static char *key_file(const char *dir, const char *top, const char *a, const char *b,
                      const char *c3)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen;
    char hexname[65];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, a, strlen(a) + 1);
    EVP_DigestUpdate(ctx, b, strlen(b) + 1);
    EVP_DigestUpdate(ctx, c3, strlen(c3) + 1);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    hexify(md, 32, hexname);
    return rp_xasprintf("%s/%s/%.2s/%s", dir, top, hexname, hexname);
}

/* Tags answer from memory after tag_set and after a good disk read, even with the file gone
 * behind the cache's back; tag_set keeps memory coherent; a restart goes back to disk. */
static void test_mem_tags(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d1[RP_CACHE_DIGEST_BUF], d2[RP_CACHE_DIGEST_BUF], got[RP_CACHE_DIGEST_BUF];
    digest_of("one", 3, d1, false);
    digest_of("two", 3, d2, true);
    int64_t when = -1;
    char *tp = key_file(dir, "tags", REG, REPO, "latest");
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "latest", d1, NULL, 100), RP_CACHE_OK);
    CHECK(exists(tp));
    unlink(tp);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, d1);
    CHECK_INT(when, 100);
    /* A replace is seen at once (memory and file agree again). */
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "latest", d2, NULL, 200), RP_CACHE_OK);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, d2);
    CHECK_INT(when, 200);
    /* A disk read fills memory too. */
    rp_cache_close(c);
    c = open_ok(dir, 0);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, d2);
    unlink(tp);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_OK);
    CHECK_STR(got, d2);
    CHECK_INT(when, 200);
    /* Memory is per process life: after a restart the missing file is a miss. */
    rp_cache_close(c);
    c = open_ok(dir, 0);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_E_NOENT);
    /* Turned off, every get reads the file. */
    rp_cache_set_memory(c, 0, 0, 0);
    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "latest", d1, NULL, 300), RP_CACHE_OK);
    unlink(tp);
    CHECK_INT(rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when), RP_CACHE_E_NOENT);
    free(tp);
    rp_cache_close(c);
    rm_rf(dir);
}

/* Positive link answers are remembered (after link and after a stat that found the file);
 * negative ones are not, so a link file that appears later is seen. */
static void test_mem_links(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char d[RP_CACHE_DIGEST_BUF], d2[RP_CACHE_DIGEST_BUF];
    digest_of("layer", 5, d, false);
    digest_of("other", 5, d2, false);
    char *lp = key_file(dir, "links", REG, REPO, d), *lp2 = key_file(dir, "links", REG, REPO, d2);
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK);
    unlink(lp);
    CHECK(rp_cache_linked(c, REG, REPO, d));
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK); /* remembered: no rewrite */
    CHECK(!exists(lp));
    CHECK(!rp_cache_linked(c, REG, REPO, d2));
    size_t n;
    rp_cache_close(c);
    c = open_ok(dir, 0);
    CHECK(!rp_cache_linked(c, REG, REPO, d)); /* the file is gone and memory with it */
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK);
    char *s = slurp(lp, &n);
    CHECK(s != NULL);
    char *sub = rp_xasprintf("%.*s", (int)(strrchr(lp2, '/') - lp2), lp2);
    mkdir(sub, 0755);
    free(sub);
    spit(lp2, s ? s : "", s ? n : 0); /* d2's link appears behind our back: not remembered */
    free(s);
    CHECK(rp_cache_linked(c, REG, REPO, d2));
    unlink(lp2); /* ... but now it is, from the positive stat */
    CHECK(rp_cache_linked(c, REG, REPO, d2));
    /* Keys that differ only in where the parts split are different keys. */
    CHECK(!rp_cache_linked(c, REG "/rhel8", "ubi", d));
    CHECK(!rp_cache_linked(c, REG, REPO, "sha256:nothex"));
    free(lp);
    free(lp2);
    rp_cache_close(c);
    rm_rf(dir);
}

/* Manifests answer from memory after put and after a verified read; peek hands out the
 * memory copy itself; eviction from the store drops the copy. */
static void test_mem_manifests(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char *m = json_manifest(10, 21);
    size_t len = strlen(m);
    char d[RP_CACHE_DIGEST_BUF];
    digest_of(m, len, d, false);
    char *p = obj_path(dir, "manifests", d);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, m, len), RP_CACHE_OK);
    unlink(p);
    const char *data = NULL, *mt = NULL;
    size_t n = 0;
    CHECK_INT(rp_cache_manifest_peek(c, d, &data, &n, &mt), RP_CACHE_OK);
    CHECK(n == len && data && memcmp(data, m, len) == 0 && data[len] == '\0');
    CHECK_STR(mt, MT_OCI);
    const char *again = NULL;
    CHECK_INT(rp_cache_manifest_peek(c, d, &again, &n, &mt), RP_CACHE_OK);
    CHECK(again == data); /* zero-copy: the same memory each time */
    struct rp_cache_manifest got;
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK(got.len == len && got.data != data && memcmp(got.data, m, len) == 0);
    CHECK(got.data[len] == '\0');
    CHECK_STR(got.media_type, MT_OCI);
    rp_cache_manifest_free(&got);
    /* Republished with another media type: memory follows. */
    CHECK_INT(rp_cache_manifest_put(c, d, MT_INDEX, m, len), RP_CACHE_OK);
    CHECK_INT(rp_cache_manifest_peek(c, d, &data, &n, &mt), RP_CACHE_OK);
    CHECK_STR(mt, MT_INDEX);
    /* A verified disk read fills memory. */
    rp_cache_close(c);
    c = open_ok(dir, 0);
    CHECK_INT(rp_cache_manifest_peek(c, d, &data, &n, &mt), RP_CACHE_OK);
    CHECK_STR(mt, MT_INDEX);
    unlink(p);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_OK);
    CHECK(got.len == len && memcmp(got.data, m, len) == 0);
    rp_cache_manifest_free(&got);
    /* Store eviction drops the memory copy with the entry. */
    struct rp_cache_stats st;
    rp_cache_stats(c, &st);
    rp_cache_close(c);
    c = open_ok(dir, st.size + 50);
    CHECK_INT(rp_cache_manifest_put(c, d, MT_OCI, m, len), RP_CACHE_OK); /* file back */
    CHECK_INT(rp_cache_manifest_peek(c, d, &data, &n, &mt), RP_CACHE_OK);
    char b[RP_CACHE_DIGEST_BUF];
    char *big = sized(100, 4);
    CHECK_INT(put_blob(c, big, b), RP_CACHE_OK);
    CHECK(!exists(p));
    rp_cache_stats(c, &st);
    CHECK_INT(st.evictions, 1);
    CHECK_INT(rp_cache_manifest_peek(c, d, &data, &n, &mt), RP_CACHE_E_NOENT);
    CHECK(data == NULL && n == 0 && mt == NULL);
    CHECK_INT(rp_cache_manifest_get(c, d, &got), RP_CACHE_E_NOENT);
    CHECK_INT(rp_cache_manifest_peek(c, "sha256:xyz", &data, &n, &mt), RP_CACHE_E_INVALID);
    CHECK_INT(rp_cache_manifest_peek(NULL, d, &data, &n, &mt), RP_CACHE_E_INVALID);
    free(big);
    free(p);
    free(m);
    rp_cache_close(c);
    rm_rf(dir);
}

/* Each memory is bounded, least recently used first; a manifest too big for the memory bound
 * is still served (from the spare) and verified like any other. */
static void test_mem_bounds(void)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char *m[3], d[3][RP_CACHE_DIGEST_BUF], got[RP_CACHE_DIGEST_BUF], tag[3][16];
    char *mp[3], *tp[3], *lp[3];
    for (int i = 0; i < 3; i++) {
        m[i] = json_manifest(4, 40 + i);
        digest_of(m[i], strlen(m[i]), d[i], false);
        snprintf(tag[i], sizeof(tag[i]), "t%d", i);
        mp[i] = obj_path(dir, "manifests", d[i]);
        tp[i] = key_file(dir, "tags", REG, REPO, tag[i]);
        lp[i] = key_file(dir, "links", REG, REPO, d[i]);
    }
    /* Room for two manifests of this size (each costs its bytes plus a small header). */
    size_t two = 2 * (strlen(m[0]) + 200);
    rp_cache_set_memory(c, two, 2, 2);
    int64_t when;
    const char *data, *mt;
    size_t n;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(rp_cache_manifest_put(c, d[i], MT_OCI, m[i], strlen(m[i])), RP_CACHE_OK);
        CHECK_INT(rp_cache_tag_set(c, REG, REPO, tag[i], d[i], NULL, i), RP_CACHE_OK);
        CHECK_INT(rp_cache_link(c, REG, REPO, d[i]), RP_CACHE_OK);
        if (i == 1) { /* 0 becomes the most recent of each: 1 is now the one to go */
            CHECK_INT(rp_cache_manifest_peek(c, d[0], &data, &n, &mt), RP_CACHE_OK);
            CHECK_INT(rp_cache_tag_get(c, REG, REPO, tag[0], got, sizeof(got), &when), 0);
            CHECK(rp_cache_linked(c, REG, REPO, d[0]));
        }
    }
    for (int i = 0; i < 3; i++) {
        unlink(mp[i]);
        unlink(tp[i]);
        unlink(lp[i]);
    }
    for (int i = 0; i < 3; i++) {
        bool kept = i != 1;
        CHECK_INT(rp_cache_manifest_peek(c, d[i], &data, &n, &mt),
                  kept ? RP_CACHE_OK : RP_CACHE_E_NOENT);
        if (kept)
            CHECK(n == strlen(m[i]) && memcmp(data, m[i], n) == 0);
        CHECK_INT(rp_cache_tag_get(c, REG, REPO, tag[i], got, sizeof(got), &when),
                  kept ? RP_CACHE_OK : RP_CACHE_E_NOENT);
        CHECK(rp_cache_linked(c, REG, REPO, d[i]) == kept);
    }
    /* Too big for the memory bound: answered from the spare, read and verified each time. */
    rp_cache_set_memory(c, 64, 2, 2);
    for (int i = 0; i < 3; i++)
        if (i != 1)
            CHECK_INT(rp_cache_manifest_put(c, d[i], MT_OCI, m[i], strlen(m[i])), RP_CACHE_OK);
    CHECK_INT(rp_cache_manifest_peek(c, d[0], &data, &n, &mt), RP_CACHE_OK);
    CHECK(n == strlen(m[0]) && memcmp(data, m[0], n) == 0);
    CHECK_INT(rp_cache_manifest_peek(c, d[2], &data, &n, &mt), RP_CACHE_OK);
    CHECK(n == strlen(m[2]) && memcmp(data, m[2], n) == 0);
    unlink(mp[0]);
    CHECK_INT(rp_cache_manifest_peek(c, d[0], &data, &n, &mt), RP_CACHE_E_NOENT);
    spit(mp[2], "garbage", 7);
    CHECK_INT(rp_cache_manifest_peek(c, d[2], &data, &n, &mt), RP_CACHE_E_CORRUPT);
    for (int i = 0; i < 3; i++) {
        free(m[i]);
        free(mp[i]);
        free(tp[i]);
        free(lp[i]);
    }
    rp_cache_close(c);
    rm_rf(dir);
}

/* ---------------------------------------------------------------- planted symlinks --- */

/* Replaces the directory holding path by a symlink to out, where a file of path's name holds
 * other bytes of the same length (a size check alone would not notice). The outside file's
 * path; the caller frees it. */
static char *plant_shard(const char *path, const char *out, const char *bytes)
{
    char *shard = rp_xstrdup(path);
    char *slash = strrchr(shard, '/');
    *slash = '\0';
    char *outside = rp_xasprintf("%s/%s", out, slash + 1);
    spit(outside, bytes, strlen(bytes));
    rm_rf(rp_xstrdup(shard));
    CHECK(symlink(out, shard) == 0);
    free(shard);
    return outside;
}

static bool file_is(const char *path, const char *want)
{
    size_t n = 0;
    char *s = slurp(path, &n);
    bool ok = s && n == strlen(want) && memcmp(s, want, n) == 0;
    free(s);
    return ok;
}

/* Not a symlink (a directory made again, or nothing). */
static bool not_symlink(const char *path)
{
    struct stat st;
    return lstat(path, &st) != 0 || !S_ISLNK(st.st_mode);
}

static char *parent_dir(const char *path)
{
    char *p = rp_xstrdup(path);
    *strrchr(p, '/') = '\0';
    return p;
}

/* Two blobs of n bytes whose <hh> directories differ. */
static void two_shards(char *a, char *da, char *b, char *db, size_t n)
{
    for (int seed = 0;; seed++) {
        char *x = sized(n, seed), *y = sized(n, seed + 100);
        memcpy(a, x, n + 1);
        memcpy(b, y, n + 1);
        free(x);
        free(y);
        digest_of(a, n, da, false);
        digest_of(b, n, db, false);
        if (memcmp(da + 7, db + 7, 2) != 0)
            return;
    }
}

/* Every way the cache reaches a file below its directory, with a symlink planted in the
 * path (the <hh> directory, or the file itself) pointing outside: nothing outside is read
 * (served), written, created or removed; what the symlink stands for is damaged (a miss),
 * the symlink is removed, and a new fill publishes inside the cache again. */
static void planted_symlink_cases(void)
{
    char *dir = mk_tmpdir(), *out = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    rp_cache_set_memory(c, 0, 0, 0); /* every lookup goes to the files */

    /* A blob's <hh> directory: not served, the symlink goes, a new fill lands inside. */
    const char *real = "the real bytes of a cached blob";
    const char *fake = "THE FAKE BYTES of a cached blob";
    char d[RP_CACHE_DIGEST_BUF];
    CHECK_INT(put_blob(c, real, d), RP_CACHE_OK);
    char *p = obj_path(dir, "blobs", d), *shard = parent_dir(p);
    char *outside = plant_shard(p, out, fake);
    struct rp_cache_blob b;
    int rc = rp_cache_blob_open(c, d, &b);
    CHECK(rc != RP_CACHE_OK);
    if (rc == RP_CACHE_OK) {
        size_t n;
        char *s = read_all(b.fd, &n);
        CHECK(!(n == strlen(fake) && memcmp(s, fake, n) == 0)); /* served from outside */
        free(s);
        close(b.fd);
        rp_cache_release(c, d);
    }
    CHECK(!rp_cache_blob_present(c, d));
    CHECK(not_symlink(shard));
    CHECK_INT(put_blob(c, real, d), RP_CACHE_OK);
    CHECK(blob_is(c, d, real));
    CHECK(file_is(outside, fake));
    CHECK_INT(count_files(out, "."), 1);

    /* The blob file itself a symlink: not served, the symlink (only) removed. */
    CHECK(unlink(p) == 0 && symlink(outside, p) == 0);
    CHECK(rp_cache_blob_open(c, d, &b) != RP_CACHE_OK);
    CHECK(not_symlink(p));
    CHECK(file_is(outside, fake));
    free(outside);
    free(shard);
    free(p);

    /* Publishing into a symlinked <hh> directory creates nothing outside. */
    char *o2 = rp_xasprintf("%s/empty", out);
    CHECK(mkdir(o2, 0755) == 0);
    const char *other = "a blob published into a planted shard";
    char d2[RP_CACHE_DIGEST_BUF];
    digest_of(other, strlen(other), d2, false);
    p = obj_path(dir, "blobs", d2);
    shard = parent_dir(p);
    rm_rf(rp_xstrdup(shard));
    CHECK(symlink(o2, shard) == 0);
    CHECK_INT(put_blob(c, other, d2), RP_CACHE_OK);
    CHECK_INT(count_files(o2, "."), 0);
    CHECK(not_symlink(shard));
    CHECK(blob_is(c, d2, other));
    free(shard);
    free(p);

    /* A manifest (even a valid copy behind the symlink is not read), a tag, a link. */
    char *m = json_manifest(2, 9), md[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), md, false);
    CHECK_INT(rp_cache_manifest_put(c, md, MT_OCI, m, strlen(m)), RP_CACHE_OK);
    p = obj_path(dir, "manifests", md);
    size_t mlen = 0;
    char *mfile = slurp(p, &mlen);
    outside = plant_shard(p, out, mfile ? mfile : "");
    struct rp_cache_manifest mm;
    CHECK(rp_cache_manifest_get(c, md, &mm) != RP_CACHE_OK);
    rp_cache_manifest_free(&mm);
    CHECK(file_is(outside, mfile ? mfile : ""));
    free(mfile);
    free(outside);
    free(p);
    free(m);

    CHECK_INT(rp_cache_tag_set(c, REG, REPO, "v1", d, MT_OCI, 1000), RP_CACHE_OK);
    p = key_file(dir, "tags", REG, REPO, "v1");
    size_t tlen = 0;
    char *tfile = slurp(p, &tlen);
    outside = plant_shard(p, out, tfile ? tfile : "");
    char got[RP_CACHE_DIGEST_BUF];
    int64_t when;
    CHECK(rp_cache_tag_get(c, REG, REPO, "v1", got, sizeof(got), &when) != RP_CACHE_OK);
    CHECK(file_is(outside, tfile ? tfile : ""));
    CHECK_INT(rp_cache_tag_delete(c, REG, REPO, "v1"), RP_CACHE_OK);
    CHECK(file_is(outside, tfile ? tfile : "")); /* not deleted through the symlink */
    free(tfile);
    free(outside);
    free(p);

    p = key_file(dir, "links", REG, REPO, d);
    outside = plant_shard(p, out, "RPLINK whatever");
    CHECK(!rp_cache_linked(c, REG, REPO, d));
    CHECK_INT(rp_cache_link(c, REG, REPO, d), RP_CACHE_OK);
    CHECK(file_is(outside, "RPLINK whatever"));
    CHECK(rp_cache_linked(c, REG, REPO, d));
    free(outside);
    free(p);

    /* verify reports it as damaged, removes nothing outside. */
    char v1[64], dv1[RP_CACHE_DIGEST_BUF], v2[64], dv2[RP_CACHE_DIGEST_BUF];
    two_shards(v1, dv1, v2, dv2, 40);
    CHECK_INT(fill(c, dv1, v1, 40, 40), RP_CACHE_OK);
    p = obj_path(dir, "blobs", dv1);
    outside = plant_shard(p, out, v2);
    struct scrub_seen v = {0};
    struct rp_cache_verify_stats st;
    CHECK_INT(rp_cache_verify(c, scrub_cb, &v, &st), RP_CACHE_OK);
    CHECK_INT(st.damaged, 1);
    CHECK_STR(v.digest, dv1);
    CHECK(strstr(v.why, "not followed") != NULL);
    CHECK(file_is(outside, v2));
    CHECK(!rp_cache_blob_present(c, dv1));
    free(outside);
    free(p);
    rp_cache_close(c);

    /* Eviction of a blob behind a symlinked <hh> unlinks nothing outside. */
    char *dir2 = mk_tmpdir();
    c = open_ok(dir2, 60);
    CHECK_INT(fill(c, dv1, v1, 40, 40), RP_CACHE_OK);
    p = obj_path(dir2, "blobs", dv1);
    char *o3 = rp_xasprintf("%s/evict", out);
    CHECK(mkdir(o3, 0755) == 0);
    outside = plant_shard(p, o3, v1);
    CHECK_INT(fill(c, dv2, v2, 40, 40), RP_CACHE_OK); /* evicts dv1 */
    CHECK(!rp_cache_blob_present(c, dv1));
    CHECK(file_is(outside, v1));
    free(outside);
    free(p);

    /* The scan at open (no snapshot) does not index through a symlinked <hh>, and the blob
     * file descriptor for the scrub worker is not opened through one either. */
    rp_cache_close(c);
    char *idx = rp_xasprintf("%s/index", dir2);
    unlink(idx);
    free(idx);
    p = obj_path(dir2, "blobs", dv2);
    outside = plant_shard(p, o3, v2);
    c = open_ok(dir2, 0);
    CHECK(!rp_cache_blob_present(c, dv2));
    CHECK(rp_cache_blob_fd(c, dv2) < 0 && (errno == ELOOP || errno == ENOTDIR));
    CHECK(file_is(outside, v2));
    rp_cache_close(c);
    free(outside);
    free(p);

    free(o3);
    free(o2);
    rm_rf(dir2);
    rm_rf(dir);
    rm_rf(out);
}

static void test_planted_symlinks_below(void)
{
    planted_symlink_cases();
}

/* A seccomp filter that answers openat2 with err, as old kernels (ENOSYS) and container
 * runtimes that do not know the call (EPERM) do. */
static bool refuse_openat2(int err)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat2, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof(f) / sizeof(f[0])), f};
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

/* The same, where openat2 is refused: the component walk keeps every guarantee. */
static void test_planted_symlinks_no_openat2(void)
{
    static const int errs[] = {ENOSYS, EPERM};
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            if (!refuse_openat2(errs[i]))
                _exit(2);
            struct open_how how = {.flags = O_RDONLY};
            if (syscall(SYS_openat2, AT_FDCWD, ".", &how, sizeof(how)) >= 0 || errno != errs[i])
                _exit(3);
            unit_cur_failed = 0;
            planted_symlink_cases();
            _exit(unit_cur_failed ? 1 : 0);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

/* ---------------------------------------------------------------- benchmark --- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void rnd_digest(char *out)
{
    unsigned char raw[32];
    for (int i = 0; i < 32; i++)
        raw[i] = (unsigned char)rng();
    memcpy(out, "sha256:", 7);
    hexify(raw, 32, out + 7);
}

/* Real-ish manifests: the shapes registries serve, with random digests (which is what
 * limits compression: 64 hex digits carry 32 bytes of entropy). */
static char *gen_v2s2_pretty(int layers)
{
    struct rp_buf b;
    char d[RP_CACHE_DIGEST_BUF];
    rp_buf_init(&b, 1 << 22);
    rnd_digest(d);
    rp_buf_addf(&b,
                "{\n   \"schemaVersion\": 2,\n   \"mediaType\": "
                "\"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n"
                "      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n"
                "      \"size\": %d,\n      \"digest\": \"%s\"\n   },\n   \"layers\": [\n",
                1000 + (int)(rng() % 9000), d);
    for (int i = 0; i < layers; i++) {
        rnd_digest(d);
        rp_buf_addf(&b,
                    "      {\n         \"mediaType\": "
                    "\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n"
                    "         \"size\": %llu,\n         \"digest\": \"%s\"\n      }%s\n",
                    (unsigned long long)(rng() % 90000000), d, i + 1 < layers ? "," : "");
    }
    rp_buf_addf(&b, "   ]\n}");
    return b.data;
}

static char *gen_oci_manifest(int layers)
{
    struct rp_buf b;
    char d[RP_CACHE_DIGEST_BUF], base[RP_CACHE_DIGEST_BUF];
    rp_buf_init(&b, 1 << 22);
    rnd_digest(d);
    rp_buf_addf(&b,
                "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\","
                "\"digest\":\"%s\",\"size\":%d},\"layers\":[",
                d, 1000 + (int)(rng() % 9000));
    for (int i = 0; i < layers; i++) {
        rnd_digest(d);
        rp_buf_addf(&b,
                    "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\","
                    "\"digest\":\"%s\",\"size\":%llu}",
                    i ? "," : "", d, (unsigned long long)(rng() % 90000000));
    }
    rnd_digest(base);
    rp_buf_addf(&b,
                "],\"annotations\":{\"org.opencontainers.image.base.digest\":\"%s\","
                "\"org.opencontainers.image.base.name\":\"docker.io/library/alpine:3.19\","
                "\"org.opencontainers.image.created\":\"2024-05-01T10:11:12Z\"}}",
                base);
    return b.data;
}

static const char *const arches[][3] = {
    {"amd64", "", ""}, {"arm", "v6", ""},   {"arm", "v7", ""},   {"arm64", "v8", ""},
    {"386", "", ""},   {"ppc64le", "", ""}, {"riscv64", "", ""}, {"s390x", "", ""},
};

/* BuildKit style OCI index: one image manifest and one attestation manifest per platform. */
static char *gen_oci_index_buildkit(int platforms)
{
    struct rp_buf b;
    char att[RP_CACHE_DIGEST_BUF];
    rp_buf_init(&b, 1 << 22);
    rp_buf_addf(&b,
                "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\","
                "\"manifests\":[");
    char(*ds)[RP_CACHE_DIGEST_BUF] = rp_xmalloc((size_t)platforms * sizeof(*ds));
    for (int i = 0; i < platforms; i++) {
        rnd_digest(ds[i]);
        rp_buf_addf(&b,
                    "%s{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                    "\"digest\":\"%s\",\"size\":%d,\"platform\":{\"architecture\":\"%s\","
                    "\"os\":\"linux\"%s%s%s}}",
                    i ? "," : "", ds[i], 1000 + (int)(rng() % 1000), arches[i % 8][0],
                    arches[i % 8][1][0] ? ",\"variant\":\"" : "", arches[i % 8][1],
                    arches[i % 8][1][0] ? "\"" : "");
    }
    for (int i = 0; i < platforms; i++) {
        rnd_digest(att);
        rp_buf_addf(&b,
                    ",{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                    "\"digest\":\"%s\",\"size\":%d,\"annotations\":{"
                    "\"vnd.docker.reference.digest\":\"%s\","
                    "\"vnd.docker.reference.type\":\"attestation-manifest\"},"
                    "\"platform\":{\"architecture\":\"unknown\",\"os\":\"unknown\"}}",
                    att, 500 + (int)(rng() % 500), ds[i]);
    }
    rp_buf_addf(&b, "]}");
    free(ds);
    return b.data;
}

/* Docker Hub library style manifest list, pretty-printed with 3 spaces. */
static char *gen_manifest_list_pretty(int platforms)
{
    struct rp_buf b;
    char d[RP_CACHE_DIGEST_BUF];
    rp_buf_init(&b, 1 << 22);
    rp_buf_addf(&b, "{\n   \"manifests\": [\n");
    for (int i = 0; i < platforms; i++) {
        rnd_digest(d);
        rp_buf_addf(&b,
                    "      {\n         \"digest\": \"%s\",\n         \"mediaType\": "
                    "\"application/vnd.docker.distribution.manifest.v2+json\",\n"
                    "         \"platform\": {\n            \"architecture\": \"%s\",\n"
                    "            \"os\": \"linux\"%s%s%s\n         },\n         \"size\": %d\n"
                    "      }%s\n",
                    d, arches[i % 8][0],
                    arches[i % 8][1][0] ? ",\n            \"variant\": \"" : "", arches[i % 8][1],
                    arches[i % 8][1][0] ? "\"" : "", 500 + (int)(rng() % 1000),
                    i + 1 < platforms ? "," : "");
    }
    rp_buf_addf(&b, "   ],\n   \"mediaType\": "
                    "\"application/vnd.docker.distribution.manifest.list.v2+json\",\n"
                    "   \"schemaVersion\": 2\n}");
    return b.data;
}

/* Docker schema 1 (signed): fsLayers plus escaped v1Compatibility history. */
static char *gen_schema1(int layers)
{
    struct rp_buf b;
    char d[RP_CACHE_DIGEST_BUF], id[RP_CACHE_DIGEST_BUF], parent[RP_CACHE_DIGEST_BUF];
    rp_buf_init(&b, 1 << 22);
    rp_buf_addf(&b, "{\n   \"schemaVersion\": 1,\n   \"name\": \"openshift3/ose-pod\",\n"
                    "   \"tag\": \"v3.11\",\n   \"architecture\": \"amd64\",\n"
                    "   \"fsLayers\": [\n");
    for (int i = 0; i < layers; i++) {
        rnd_digest(d);
        rp_buf_addf(&b, "      {\n         \"blobSum\": \"%s\"\n      }%s\n", d,
                    i + 1 < layers ? "," : "");
    }
    rp_buf_addf(&b, "   ],\n   \"history\": [\n");
    parent[0] = '\0';
    for (int i = 0; i < layers; i++) {
        rnd_digest(id);
        rp_buf_addf(
            &b,
            "      {\n         \"v1Compatibility\": \"{\\\"id\\\":\\\"%s\\\",%s%s%s"
            "\\\"created\\\":\\\"2019-0%d-1%dT08:%02d:11.%09dZ\\\",\\\"container_config\\\":"
            "{\\\"Cmd\\\":[\\\"/bin/sh -c #(nop) LABEL release=%d\\\"]},"
            "\\\"throwaway\\\":true}\"\n      }%s\n",
            id + 7, parent[0] ? "\\\"parent\\\":\\\"" : "", parent[0] ? parent + 7 : "",
            parent[0] ? "\\\"," : "", 1 + i % 9, i % 10, i % 60, (int)(rng() % 999999999), i,
            i + 1 < layers ? "," : "");
        memcpy(parent, id, sizeof(parent));
    }
    rp_buf_addf(&b, "   ],\n   \"signatures\": [\n      {\n         \"header\": {\n"
                    "            \"jwk\": {\n               \"crv\": \"P-256\",\n"
                    "               \"kid\": \"5GNM:JZFC:ZUSR:TLB2:JGWJ:7UJN:LGB3:HGUZ:MZAC:"
                    "N3YS:JSZR:RUDF\",\n               \"kty\": \"EC\",\n"
                    "               \"x\": \"jGh5lKcUGM1KEG7KsKJpwBtJ2e0VMlwM-Lrr02c3pN0\",\n"
                    "               \"y\": \"ZzcfzEnnQFRcNvydFxRpHTA2LMHnHQKXQZzZ0q8n8Vo\"\n"
                    "            },\n            \"alg\": \"ES256\"\n         },\n"
                    "         \"signature\": \"ldGn0bHUqrs2a4KN1bYSMgZ6uxPe9xxqH1Og2EMKHKD3"
                    "W8vKk0iC1o8J-M8S6yl3ySpInbTw9qzFpT1wn4cc1A\",\n"
                    "         \"protected\": \"eyJmb3JtYXRMZW5ndGgiOjY0MzksImZvcm1hdFRhaWwiOiJD"
                    "bjAiLCJ0aW1lIjoiMjAxOS0wNS0xNlQxMjowMDowMFoifQ\"\n      }\n   ]\n}");
    return b.data;
}

static void bench_manifests(void)
{
    struct {
        const char *name;
        char *text;
    } cases[] = {
        {"docker v2s2, 5 layers, pretty", gen_v2s2_pretty(5)},
        {"docker v2s2, 12 layers, pretty", gen_v2s2_pretty(12)},
        {"OCI manifest, 8 layers, compact", gen_oci_manifest(8)},
        {"OCI index (BuildKit), 2 platforms + attestations", gen_oci_index_buildkit(2)},
        {"OCI index (BuildKit), 8 platforms + attestations", gen_oci_index_buildkit(8)},
        {"manifest list, 8 platforms, pretty", gen_manifest_list_pretty(8)},
        {"schema1 signed, 10 layers", gen_schema1(10)},
    };
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    size_t tot_raw = 0, tot_disk = 0;
    printf(
        "BENCH manifests: raw bytes -> stored file (header + payload), lz4 fast for reference\n");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *m = cases[i].text;
        size_t len = strlen(m);
        char d[RP_CACHE_DIGEST_BUF];
        digest_of(m, len, d, false);
        rp_cache_manifest_put(c, d, MT_OCI, m, len);
        char *p = obj_path(dir, "manifests", d);
        struct stat sb;
        stat(p, &sb);
        free(p);
        char *tmp = rp_xmalloc((size_t)LZ4_compressBound((int)len));
        int fast = LZ4_compress_default(m, tmp, (int)len, LZ4_compressBound((int)len));
        double t0 = now_s();
        int hc = 0;
        for (int k = 0; k < 100; k++)
            hc = LZ4_compress_HC(m, tmp, (int)len, LZ4_compressBound((int)len), 9);
        double t_hc = (now_s() - t0) / 100;
        char *back = rp_xmalloc(len);
        t0 = now_s();
        for (int k = 0; k < 1000; k++)
            LZ4_decompress_safe(tmp, back, hc, (int)len);
        double t_dec = (now_s() - t0) / 1000;
        struct rp_cache_manifest got;
        t0 = now_s();
        for (int k = 0; k < 100; k++) {
            rp_cache_manifest_get(c, d, &got);
            rp_cache_manifest_free(&got);
        }
        double t_get = (now_s() - t0) / 100;
        printf("BENCH   %-52s %6zu -> %6lld (%5.1f%% saved; lz4 fast payload %d, hc %d; "
               "hc %.0f us, decode %.1f us, get %.0f us)\n",
               cases[i].name, len, (long long)sb.st_size,
               100.0 * (1.0 - (double)sb.st_size / (double)len), fast, hc, t_hc * 1e6, t_dec * 1e6,
               t_get * 1e6);
        tot_raw += len;
        tot_disk += (size_t)sb.st_size;
        free(tmp);
        free(back);
        free(cases[i].text);
    }
    printf("BENCH   total %zu -> %zu bytes (%.1f%% saved)\n", tot_raw, tot_disk,
           100.0 * (1.0 - (double)tot_disk / (double)tot_raw));
    rp_cache_close(c);
    rm_rf(dir);
}

/* The proxy's warm "manifest by tag" path: tag_get, linked, then the manifest, per request;
 * with rp_cache_manifest_get (a copy to free) and with rp_cache_manifest_peek (none), from
 * memory and, for comparison, with memory turned off (every call reads and checks a file). */
static void bench_hot_path(long loops)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0);
    char *m = gen_oci_manifest(8);
    char d[RP_CACHE_DIGEST_BUF], got[RP_CACHE_DIGEST_BUF];
    digest_of(m, strlen(m), d, false);
    rp_cache_manifest_put(c, d, MT_OCI, m, strlen(m));
    rp_cache_link(c, REG, REPO, d);
    rp_cache_tag_set(c, REG, REPO, "latest", d, NULL, 1700000000);
    for (int mode = 0; mode < 3; mode++) {
        bool peek = mode == 1, disk = mode == 2;
        long k = disk ? (loops / 20 > 0 ? loops / 20 : 1) : loops;
        if (disk)
            rp_cache_set_memory(c, 0, 0, 0);
        size_t sink = 0;
        int64_t when;
        double t0 = now_s();
        for (long i = 0; i < k; i++) {
            if (rp_cache_tag_get(c, REG, REPO, "latest", got, sizeof(got), &when) != 0 ||
                !rp_cache_linked(c, REG, REPO, got))
                abort();
            if (peek) {
                const char *data, *mt;
                size_t n;
                if (rp_cache_manifest_peek(c, got, &data, &n, &mt) != 0)
                    abort();
                sink += n;
            } else {
                struct rp_cache_manifest mm;
                if (rp_cache_manifest_get(c, got, &mm) != 0)
                    abort();
                sink += mm.len;
                rp_cache_manifest_free(&mm);
            }
        }
        double t = now_s() - t0;
        printf("BENCH hot path (%zu-byte manifest, %ld loops): tag_get+linked+manifest_%s %s "
               "%.0f ns/op\n",
               strlen(m), k, peek ? "peek" : "get", disk ? "(memory off)" : "(memory)",
               t / (double)k * 1e9);
        CHECK(sink == strlen(m) * (size_t)k);
    }
    free(m);
    rp_cache_close(c);
    rm_rf(dir);
}

static long max_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void bench_open(long n)
{
    char *dir = mk_tmpdir();
    struct rp_cache *c = open_ok(dir, 0); /* creates the layout */
    rp_cache_close(c);
    char *ip0 = rp_xasprintf("%s/index", dir);
    unlink(ip0); /* it lists no entries: the files below come behind the cache's back */
    free(ip0);
    double t0 = now_s();
    char text[64], d[RP_CACHE_DIGEST_BUF];
    for (long i = 0; i < n; i++) {
        int len = snprintf(text, sizeof(text), "bench blob %ld\n", i);
        digest_of(text, (size_t)len, d, false);
        char *sub = rp_xasprintf("%s/blobs/sha256/%.2s", dir, d + 7);
        mkdir(sub, 0755);
        char *p = rp_xasprintf("%s/%s", sub, d + 7);
        spit(p, text, (size_t)len);
        free(sub);
        free(p);
    }
    printf("BENCH open: created %ld blob files in %.2f s\n", n, now_s() - t0);
    long rss0 = max_rss_kb();
    struct rp_cache_stats st;
    for (int round = 0; round < 3; round++) {
        t0 = now_s();
        c = open_ok(dir, 0);
        double t_rebuild = now_s() - t0;
        rp_cache_stats(c, &st);
        t0 = now_s();
        rp_cache_close(c);
        double t_close = now_s() - t0;
        t0 = now_s();
        c = open_ok(dir, 0);
        double t_snap = now_s() - t0;
        rp_cache_stats(c, &st);
        char *ip = rp_xasprintf("%s/index", dir);
        t0 = now_s();
        rp_cache_close(c);
        double t_close2 = now_s() - t0;
        struct stat sb;
        stat(ip, &sb);
        printf("BENCH open %ld entries: rebuild from files %.1f ms, snapshot write+fsync at close "
               "%.1f ms (%lld bytes), open from snapshot %.1f ms, close %.1f ms\n",
               (long)st.entries, t_rebuild * 1e3, t_close * 1e3, (long long)sb.st_size,
               t_snap * 1e3, t_close2 * 1e3);
        unlink(ip); /* next round rebuilds again */
        free(ip);
    }
    printf("BENCH open: max RSS grew by %ld KiB while open\n", max_rss_kb() - rss0);
    t0 = now_s();
    rm_rf(dir);
    printf("BENCH open: removed in %.1f s\n", now_s() - t0);
}

int main(void)
{
    rp_log_set_level(RP_LOG_ERROR); /* damaged-file warnings are expected here */
    const char *bench = getenv("RP_CACHE_BENCH");
    if (bench && strcmp(bench, "1") == 0) {
        const char *ns = getenv("RP_CACHE_BENCH_N");
        long n = ns ? strtol(ns, NULL, 10) : 100000;
        const char *ls = getenv("RP_CACHE_BENCH_LOOPS");
        long loops = ls ? strtol(ls, NULL, 10) : 1000000;
        bench_hot_path(loops > 0 ? loops : 1000000);
        if (getenv("RP_CACHE_BENCH_HOT_ONLY"))
            return 0;
        bench_manifests();
        bench_open(n > 0 ? n : 100000);
        return 0;
    }
    RUN(test_fill_commit);
    RUN(test_fill_digest_mismatch);
    RUN(test_fill_verify_then_commit);
    RUN(test_fill_size_mismatch);
    RUN(test_fill_write_past_expected);
    RUN(test_fill_abort);
    RUN(test_close_with_open_fill);
    RUN(test_manifest_raw);
    RUN(test_manifest_lz4);
    RUN(test_manifest_put_rejects);
    RUN(test_manifest_corrupt);
    RUN(test_tags);
    RUN(test_tag_media_type);
    RUN(test_links);
    RUN(test_links_each);
    RUN(test_reopen_persists);
    RUN(test_sync_hook);
    RUN(test_tmp_leftovers_removed);
    RUN(test_index_damaged);
    RUN(test_crash_kill9);
    RUN(test_evict_lru);
    RUN(test_evict_manifest_touch);
    RUN(test_evict_pinned);
    RUN(test_can_hold);
    RUN(test_evict_in_use);
    RUN(test_evict_spares_published_while_in_use);
    RUN(test_evict_spares_published_manifest_while_in_use);
    RUN(test_hold_before_publish);
    RUN(test_hold_survives_unpin);
    RUN(test_disk_full);
    RUN(test_disk_full_blobs_being_sent);
    RUN(test_disk_full_snapshot_evicts_nothing);
    RUN(test_open_evicts_nothing_before_pins);
    RUN(test_blob_vanished);
    RUN(test_blob_resized);
    RUN(test_verify);
    RUN(test_scrub_parts);
    RUN(test_blob_recheck);
    RUN(test_planted_symlinks);
    RUN(test_planted_symlinks_below);
    RUN(test_planted_symlinks_no_openat2);
    RUN(test_invalid_digests);
    RUN(test_strerror_and_open_errors);
    RUN(test_stats);
    RUN(test_in_use_survives_forget);
    RUN(test_mem_tags);
    RUN(test_mem_links);
    RUN(test_mem_manifests);
    RUN(test_mem_bounds);
    UNIT_EXIT();
}
