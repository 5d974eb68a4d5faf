/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_cache_index: libFuzzer target for the cache's on-disk metadata, which a crash, a full
 * disk or an operator can damage. The first byte picks the file the rest becomes ('l': a
 * link file, else by its value modulo 3: index snapshot, manifest file, tag file); the cache
 * must still open, answer, never serve bytes that do not match their digest, and read back
 * from a link file only the link its name stands for. */
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ftw.h>

#include "cache/cache.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REG "registry.redhat.io"
#define REPO "rhel8/ubi"
#define TAG "latest"

/* The manifest whose file the fuzzer replaces (seeds hold it raw and lz4-compressed). */
static const char manifest[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
    "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":"
    "\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":1470},"
    "\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":"
    "\"sha256:2db29710123e3e53a794f2694094b9b4338aa9ee5c40b930cb8063a1be392c54\",\"size\":"
    "2818413},{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":"
    "\"sha256:9dd2ef4b2a7e8b8f4b1f4f1f6fc1a3b8a5b2f0e2b9b7c1f1a7e1e2d3c4b5a6f7\",\"size\":"
    "31532595},{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":"
    "\"sha256:88aad6602e16761a658ae2b5f54ab257e12bb6cb365a65efbf95b976cd825c9a\",\"size\":"
    "1024}],\"annotations\":{\"org.opencontainers.image.base.name\":"
    "\"docker.io/library/ubuntu:22.04\"}}";

static char *dir, *index_path, *manifest_path, *tag_path, *link_path;
static char manifest_digest[RP_CACHE_DIGEST_BUF];

static void hex(const unsigned char *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void cleanup(void)
{
    if (dir)
        nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* The path of the tag or link file of (REG, REPO, last) as the cache names it: top/hh/hex of
 * sha256(REG NUL REPO NUL last NUL); its directory is created. */
static char *key_file(const char *top, const char *last)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, REG, sizeof(REG));
    EVP_DigestUpdate(ctx, REPO, sizeof(REPO));
    EVP_DigestUpdate(ctx, last, strlen(last) + 1);
    EVP_DigestFinal_ex(ctx, md, &len);
    EVP_MD_CTX_free(ctx);
    char h[65];
    hex(md, 32, h);
    char *sub = rp_xasprintf("%s/%s", dir, top);
    mkdir(sub, 0755);
    free(sub);
    sub = rp_xasprintf("%s/%s/%.2s", dir, top, h);
    mkdir(sub, 0755);
    free(sub);
    return rp_xasprintf("%s/%s/%.2s/%s", dir, top, h, h);
}

static void setup(void)
{
    char tmpl[64];
    snprintf(tmpl, sizeof(tmpl), "%s/fuzz_cache.XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    dir = mkdtemp(tmpl) ? rp_xstrdup(tmpl) : NULL;
    if (!dir)
        abort();
    atexit(cleanup);
    rp_log_set_level(RP_LOG_ERROR);

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(manifest, strlen(manifest), md, &len, EVP_sha256(), NULL);
    memcpy(manifest_digest, "sha256:", 7);
    hex(md, 32, manifest_digest + 7);
    manifest_path =
        rp_xasprintf("%s/manifests/sha256/%.2s/%s", dir, manifest_digest + 7, manifest_digest + 7);
    char *sub = rp_xasprintf("%s/manifests", dir);
    mkdir(sub, 0755);
    free(sub);
    sub = rp_xasprintf("%s/manifests/sha256", dir);
    mkdir(sub, 0755);
    free(sub);
    sub = rp_xasprintf("%s/manifests/sha256/%.2s", dir, manifest_digest + 7);
    mkdir(sub, 0755);
    free(sub);

    tag_path = key_file("tags", TAG);
    link_path = key_file("links", manifest_digest);
    index_path = rp_xasprintf("%s/index", dir);
}

/* The only link link_path may yield: the one its name is the hash of. */
static void check_link(void *arg, const char *registry, const char *repo, const char *digest)
{
    (*(size_t *)arg)++;
    if (strcmp(registry, REG) != 0 || strcmp(repo, REPO) != 0 ||
        strcmp(digest, manifest_digest) != 0)
        abort();
}

static void spit(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || (n && write(fd, p, n) != (ssize_t)n))
        abort();
    close(fd);
}

static bool gone(const char *path)
{
    struct stat st;
    return stat(path, &st) != 0;
}

static struct rp_cache *open_or_die(void)
{
    char err[256];
    /* A small bound, so loaded and rebuilt entries go through eviction too. */
    struct rp_cache *c = rp_cache_open(dir, (uint64_t)64 * 1024, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "%s\n", err);
        abort(); /* damaged metadata must never stop the cache from opening */
    }
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir)
        setup();
    if (size < 1)
        return 0;
    int which = data[0] == 'l' ? 3 : data[0] % 3; /* 'i' index, 'm' manifest, 't' tag */
    unlink(index_path);
    unlink(manifest_path);
    unlink(tag_path);
    unlink(link_path);
    const char *target = which == 0   ? index_path
                         : which == 1 ? manifest_path
                         : which == 2 ? tag_path
                                      : link_path;
    spit(target, data + 1, size - 1);

    struct rp_cache *c = open_or_die();
    size_t links = 0;
    if (rp_cache_links_each(c, check_link, &links) != links || links > 1)
        abort();
    struct rp_cache_manifest m;
    int rc = rp_cache_manifest_get(c, manifest_digest, &m);
    if (rc == RP_CACHE_OK) {
        if (m.len != strlen(manifest) || memcmp(m.data, manifest, m.len) != 0 || !m.media_type)
            abort();
        rp_cache_manifest_free(&m);
    } else if (rc != RP_CACHE_E_NOENT && !(rc == RP_CACHE_E_CORRUPT && gone(manifest_path))) {
        abort();
    }

    char digest[RP_CACHE_DIGEST_BUF];
    int64_t when = -1;
    rc = rp_cache_tag_get(c, REG, REPO, TAG, digest, sizeof(digest), &when);
    if (rc == RP_CACHE_OK) {
        size_t n = strlen(digest);
        if (when < 0 || !((n == 71 && strncmp(digest, "sha256:", 7) == 0) ||
                          (n == 135 && strncmp(digest, "sha512:", 7) == 0)))
            abort();
        /* A recorded media type goes out in an Accept header: printable ASCII only. */
        char type[256];
        rc = rp_cache_tag_type(c, REG, REPO, TAG, type, sizeof(type));
        if (rc == RP_CACHE_OK) {
            if (!type[0])
                abort();
            for (const char *t = type; *t; t++)
                if (*t < 0x20 || *t > 0x7e)
                    abort();
        } else if (rc != RP_CACHE_E_NOENT) {
            abort();
        }
    } else if (rc != RP_CACHE_E_NOENT && !(rc == RP_CACHE_E_CORRUPT && gone(tag_path))) {
        abort();
    }

    struct rp_cache_blob b;
    if (rp_cache_blob_open(c, manifest_digest, &b) == RP_CACHE_OK) {
        close(b.fd);
        rp_cache_release(c, manifest_digest);
    }

    /* Whatever was accepted must survive a snapshot round trip unchanged. */
    struct rp_cache_stats before, after;
    rp_cache_stats(c, &before);
    rp_cache_close(c);
    c = open_or_die();
    rp_cache_stats(c, &after);
    if (before.entries != after.entries || before.size != after.size)
        abort();
    rp_cache_close(c);
    return 0;
}
