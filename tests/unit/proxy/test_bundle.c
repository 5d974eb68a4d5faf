/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests of the disconnected-cluster code without a network: manifest references,
 * --platform filters, image references, the offline configuration, and export -> verify ->
 * import of a small cache, with damaged bundles refused. `test_bundle --write-seeds DIR`
 * writes the fuzz_bundle seed corpus (a valid bundle and damaged variants). */
#include "../unit.h"

#include <lz4frame.h>
#include <openssl/evp.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "conf/conf.h"
#include "proxy/offline.h"
#include "util/util.h"

static char tmpdir[64]; /* a longer $TMPDIR fails mkdtemp, clearly */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct rp_buf b;
    rp_buf_init(&b, (size_t)1 << 30);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        rp_buf_add(&b, chunk, n);
    fclose(f);
    *len = b.len;
    return b.data ? b.data : rp_xstrdup("");
}

static void spit(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return;
    fwrite(p, 1, n, f);
    fclose(f);
}

static struct rp_conf *conf_sized(const char *cache, bool offline, const char *max_size)
{
    char *text = rp_xasprintf("[listen \"127.0.0.1:5000\"]\n[cache]\ndir = %s\nmax_size = %s\n%s"
                              "[registry \"reg.example\"]\n%s[admin]\nlisten = off\n",
                              cache, max_size, offline ? "offline = yes\n" : "",
                              offline ? "" : "url = https://reg.example\n");
    struct rp_conf *c = NULL;
    char err[512];
    if (rp_conf_parse(text, strlen(text), "test.conf", &c, err, sizeof(err)) != 0)
        fprintf(stderr, "conf: %s\n", err);
    free(text);
    return c;
}

static struct rp_conf *conf_for(const char *cache, bool offline)
{
    return conf_sized(cache, offline, "100G");
}

/* Which answers to a tag become the tag's digest: only those no registry narrowed to the
 * client's Accept. */
static void test_accept_and_tag_canonical(void)
{
    const char *docker = RP_MEDIA_DOCKER_MANIFEST
        ", " RP_MEDIA_DOCKER_LIST ";q=0.9, " RP_MEDIA_OCI_MANIFEST "," RP_MEDIA_OCI_INDEX;
    CHECK(rp_accept_names(docker, RP_MEDIA_DOCKER_LIST)); /* with a parameter */
    CHECK(rp_accept_names(docker, RP_MEDIA_OCI_INDEX));   /* after a bare comma */
    CHECK(rp_accept_names(docker, RP_MEDIA_DOCKER_MANIFEST));
    CHECK(!rp_accept_names("*/*", RP_MEDIA_DOCKER_LIST)); /* a wildcard names nothing */
    CHECK(!rp_accept_names("application/vnd.oci.image.index.v1+jsonx", RP_MEDIA_OCI_INDEX));
    CHECK(!rp_accept_names("xapplication/vnd.oci.image.index.v1+json", RP_MEDIA_OCI_INDEX));
    CHECK(!rp_accept_names(NULL, RP_MEDIA_OCI_INDEX));
    CHECK(!rp_accept_names(docker, ""));
    /* q=0 is "not acceptable"; other weights are names. */
    CHECK(!rp_accept_names(RP_MEDIA_DOCKER_LIST ";q=0", RP_MEDIA_DOCKER_LIST));
    CHECK(!rp_accept_names(RP_MEDIA_DOCKER_LIST "; q=0.000, x/y", RP_MEDIA_DOCKER_LIST));
    CHECK(rp_accept_names(RP_MEDIA_DOCKER_LIST ";q=0.5", RP_MEDIA_DOCKER_LIST));
    CHECK(rp_accept_names(RP_MEDIA_DOCKER_LIST ";q=0.01", RP_MEDIA_DOCKER_LIST));
    CHECK(rp_accept_names(RP_MEDIA_DOCKER_LIST ";q=1, x/y;q=0", RP_MEDIA_DOCKER_LIST));
    /* Lists and indexes always; images only when the client named their list type. */
    CHECK(rp_manifest_tag_canonical(NULL, RP_MEDIA_DOCKER_LIST));
    CHECK(rp_manifest_tag_canonical("*/*", RP_MEDIA_OCI_INDEX));
    CHECK(rp_manifest_tag_canonical(docker, RP_MEDIA_DOCKER_MANIFEST));
    CHECK(rp_manifest_tag_canonical(docker, RP_MEDIA_OCI_MANIFEST));
    CHECK(!rp_manifest_tag_canonical(RP_MEDIA_DOCKER_MANIFEST, RP_MEDIA_DOCKER_MANIFEST));
    CHECK(!rp_manifest_tag_canonical("*/*", RP_MEDIA_DOCKER_MANIFEST));
    CHECK(!rp_manifest_tag_canonical(NULL, RP_MEDIA_DOCKER_MANIFEST));
    CHECK(!rp_manifest_tag_canonical(RP_MEDIA_OCI_MANIFEST ", " RP_MEDIA_DOCKER_LIST,
                                     RP_MEDIA_OCI_MANIFEST));
    /* One list type is not enough: a registry may narrow an index of the other type. */
    CHECK(!rp_manifest_tag_canonical(RP_MEDIA_DOCKER_MANIFEST ", " RP_MEDIA_DOCKER_LIST,
                                     RP_MEDIA_DOCKER_MANIFEST));
    CHECK(!rp_manifest_tag_canonical(RP_MEDIA_OCI_MANIFEST ", " RP_MEDIA_OCI_INDEX,
                                     RP_MEDIA_OCI_MANIFEST));
    /* Schema 1 never (its digest is not of its bytes); other types always. */
    CHECK(!rp_manifest_tag_canonical(docker, "application/vnd.docker.distribution.manifest.v1+"
                                             "prettyjws"));
    CHECK(rp_manifest_tag_canonical(NULL, "application/vnd.cncf.helm.config.v1+json"));
    CHECK(!rp_manifest_tag_canonical(docker, NULL));
}

static void test_manifest_refs(void)
{
    const char *idx =
        "{\"schemaVersion\":2,\"manifests\":[{\"digest\":\"sha256:"
        "1111111111111111111111111111111111111111111111111111111111111111\",\"size\":5,"
        "\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\",\"variant\":\"v8\"}},"
        "{\"digest\":\"sha256:2222222222222222222222222222222222222222222222222222222222222222\","
        "\"size\":7,\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}}]}";
    struct rp_manifest_refs r;
    char err[256];
    CHECK_INT(rp_manifest_refs(idx, strlen(idx), &r, err, sizeof(err)), 0);
    CHECK(r.is_index);
    CHECK_INT(r.n, 2);
    if (r.n == 2) {
        CHECK_STR(r.v[0].arch, "arm64");
        CHECK_STR(r.v[0].variant, "v8");
        CHECK_INT(r.v[1].size, 7);
        struct rp_platforms *p = NULL;
        CHECK_INT(rp_platforms_parse("linux/arm64", &p, err, sizeof(err)), 0);
        CHECK(rp_platforms_match(p, &r.v[0]));
        CHECK(!rp_platforms_match(p, &r.v[1]));
        rp_platforms_free(p);
        CHECK_INT(rp_platforms_parse("linux/arm64/v7,linux/amd64", &p, err, sizeof(err)), 0);
        CHECK(!rp_platforms_match(p, &r.v[0]));
        CHECK(rp_platforms_match(p, &r.v[1]));
        rp_platforms_free(p);
        CHECK(rp_platforms_match(NULL, &r.v[0]));
    }
    rp_manifest_refs_free(&r);
    /* Variants run as containerd's platforms.Only has it: amd64 levels and arm v5-v7 run
     * the ones below them, and no variant is amd64 v1, arm v7, arm64 v8. */
    const char *idx2 =
        "{\"schemaVersion\":2,\"manifests\":["
        "{\"digest\":\"sha256:1111111111111111111111111111111111111111111111111111111111111111\","
        "\"size\":5,\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}},"
        "{\"digest\":\"sha256:2222222222222222222222222222222222222222222222222222222222222222\","
        "\"size\":5,\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\","
        "\"variant\":\"v3\"}},"
        "{\"digest\":\"sha256:3333333333333333333333333333333333333333333333333333333333333333\","
        "\"size\":5,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm\","
        "\"variant\":\"v6\"}},"
        "{\"digest\":\"sha256:4444444444444444444444444444444444444444444444444444444444444444\","
        "\"size\":5,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm\"}}]}";
    CHECK_INT(rp_manifest_refs(idx2, strlen(idx2), &r, err, sizeof(err)), 0);
    CHECK_INT(r.n, 4);
    if (r.n == 4) {
        static const struct {
            const char *want;
            bool amd64, amd64v3, armv6, arm;
        } cases[] = {
            {"linux/amd64", true, true, false, false},
            {"linux/amd64/v1", true, false, false, false},
            {"linux/amd64/v2", true, false, false, false},
            {"linux/amd64/v3", true, true, false, false},
            {"linux/amd64/v4", true, true, false, false},
            {"linux/arm", false, false, true, true},
            {"linux/arm/v7", false, false, true, true},
            {"linux/arm/v6", false, false, true, false},
            {"linux/arm/v5", false, false, false, false},
            {"linux/arm64", false, false, false, false},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            struct rp_platforms *pl = NULL;
            CHECK_INT(rp_platforms_parse(cases[i].want, &pl, err, sizeof(err)), 0);
            CHECK(rp_platforms_match(pl, &r.v[0]) == cases[i].amd64);
            CHECK(rp_platforms_match(pl, &r.v[1]) == cases[i].amd64v3);
            CHECK(rp_platforms_match(pl, &r.v[2]) == cases[i].armv6);
            CHECK(rp_platforms_match(pl, &r.v[3]) == cases[i].arm);
            rp_platforms_free(pl);
        }
    }
    rp_manifest_refs_free(&r);
    /* A child that names no platform is for every platform, as containerd's pulls take it
     * (images.FilterPlatforms keeps a descriptor whose Platform is nil): a --platform mirror
     * that left it out left the image unpullable offline. An empty platform object is a
     * platform, of no os or architecture. */
    const char *idx3 =
        "{\"schemaVersion\":2,\"manifests\":["
        "{\"digest\":\"sha256:1111111111111111111111111111111111111111111111111111111111111111\","
        "\"size\":5,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"},"
        "{\"digest\":\"sha256:2222222222222222222222222222222222222222222222222222222222222222\","
        "\"size\":5,\"platform\":{}}]}";
    CHECK_INT(rp_manifest_refs(idx3, strlen(idx3), &r, err, sizeof(err)), 0);
    CHECK_INT(r.n, 2);
    if (r.n == 2) {
        struct rp_platforms *pl = NULL;
        CHECK_INT(rp_platforms_parse("linux/amd64", &pl, err, sizeof(err)), 0);
        CHECK(rp_platforms_match(pl, &r.v[0]));
        CHECK(!rp_platforms_match(pl, &r.v[1]));
        rp_platforms_free(pl);
    }
    rp_manifest_refs_free(&r);
    struct rp_platforms *p = NULL;
    CHECK_INT(rp_platforms_parse("linux", &p, err, sizeof(err)), -1);
    CHECK_INT(rp_platforms_parse("linux/amd64,", &p, err, sizeof(err)), -1);
    CHECK_INT(rp_platforms_parse("a/b/c/d", &p, err, sizeof(err)), -1);

    const char *img =
        "{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:"
        "3333333333333333333333333333333333333333333333333333333333333333\",\"size\":2},"
        "\"layers\":[{\"mediaType\":\"application/vnd.docker.image.rootfs.foreign.diff.tar."
        "gzip\",\"digest\":\"sha256:"
        "4444444444444444444444444444444444444444444444444444444444444444\",\"size\":1},"
        "{\"digest\":\"sha256:5555555555555555555555555555555555555555555555555555555555555555\","
        "\"size\":0}]}";
    CHECK_INT(rp_manifest_refs(img, strlen(img), &r, err, sizeof(err)), 0);
    CHECK(!r.is_index);
    CHECK_INT(r.n, 2); /* config + the distributable layer */
    if (r.n == 2) {
        CHECK_INT(r.v[0].kind, RP_REF_CONFIG);
        CHECK_INT(r.v[1].kind, RP_REF_LAYER);
    }
    rp_manifest_refs_free(&r);
    /* The last two are both an index and an image manifest: read as an index, the config
     * and layers went unchecked (an import tagged an image whose layers it did not carry)
     * and unpinned. */
    const char *bad[] = {"",
                         "[]",
                         "{\"schemaVersion\":1,\"fsLayers\":[]}",
                         "{\"manifests\":[{\"digest\":\"sha256:ab\",\"size\":1}]}",
                         "{\"config\":{\"digest\":\"sha256:"
                         "3333333333333333333333333333333333333333333333333333333333333333\","
                         "\"size\":-1},\"layers\":[]}",
                         "{\"manifests\":{}}",
                         "{\"a\":1,\"a\":2}",
                         "{\"schemaVersion\":2,\"manifests\":[],\"config\":{\"digest\":\"sha256:"
                         "3333333333333333333333333333333333333333333333333333333333333333\","
                         "\"size\":1},\"layers\":[]}",
                         "{\"schemaVersion\":2,\"manifests\":[],\"layers\":[]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(rp_manifest_refs(bad[i], strlen(bad[i]), &r, err, sizeof(err)), -1);
        CHECK(err[0] != '\0');
    }
}

static void test_image_refs(void)
{
    struct rp_conf *c = conf_for("/tmp/unused", false);
    CHECK(c != NULL);
    if (!c)
        return;
    struct rp_image_ref r;
    const char *why = NULL;
    char buf[512];
    CHECK_INT(rp_image_ref_parse(c, "reg.example/ns/x:v1", 19, &r, &why), 0);
    CHECK_STR(r.repo, "ns/x");
    CHECK_STR(r.tag, "v1");
    rp_image_ref_format(&r, buf, sizeof(buf));
    CHECK_STR(buf, "reg.example/ns/x:v1");
    const char *d = "reg.example/ns/x@sha256:"
                    "1111111111111111111111111111111111111111111111111111111111111111";
    CHECK_INT(rp_image_ref_parse(c, d, strlen(d), &r, &why), 0);
    CHECK_STR(r.tag, "");
    CHECK(r.digest[0] == 's');
    CHECK_INT(rp_image_ref_parse(c, "reg.example/ns/x", 16, &r, &why), 0);
    CHECK_STR(r.tag, "latest");
    CHECK_INT(rp_image_ref_parse(c, "other.example/ns/x:v1", 21, &r, &why), -1);
    CHECK_INT(rp_image_ref_parse(c, "ns/x:v1", 7, &r, &why), -1);
    CHECK_INT(rp_image_ref_parse(c, "reg.example/ns/x:v 1", 20, &r, &why), -1);
    CHECK_INT(rp_image_ref_parse(c, "reg.example/ns/x@sha256:12", 26, &r, &why), -1);
    rp_conf_free(c);
}

static void test_offline_conf(void)
{
    struct rp_conf *c = conf_for("/tmp/unused", true);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK(c->registries[0].offline);
    CHECK(!c->registries[0].test_login);
    CHECK_STR(c->registries[0].host, "reg.example");
    CHECK_STR(c->registries[0].hostport, "reg.example");
    rp_conf_free(c);
    const char *t = "[listen \"127.0.0.1:1\"]\n[registry \"127.0.0.1:5000\"]\noffline = yes\n";
    char err[512];
    CHECK_INT(rp_conf_parse(t, strlen(t), "t.conf", &c, err, sizeof(err)), 0);
    if (c) {
        CHECK_STR(c->registries[0].hostport, "127.0.0.1:5000");
        CHECK_INT(c->registries[0].port, 5000);
        rp_conf_free(c);
    }
    t = "[listen \"127.0.0.1:1\"]\n[registry \"my-mirror:x\"]\noffline = yes\n";
    CHECK_INT(rp_conf_parse(t, strlen(t), "t.conf", &c, err, sizeof(err)), -1);
    CHECK(strstr(err, "must be the registry's host") != NULL);
    /* [cache] offline after the registry still waives its url */
    t = "[listen \"127.0.0.1:1\"]\n[registry \"r.example\"]\n[cache]\noffline = yes\n";
    CHECK_INT(rp_conf_parse(t, strlen(t), "t.conf", &c, err, sizeof(err)), 0);
    rp_conf_free(c);
}

/* A cache with one tiny image (config + one layer) of reg.example/ns/x:v1, pinned. */
static void make_source(const char *dir, char *mdigest)
{
    struct rp_conf *conf = conf_for(dir, false);
    char err[512];
    struct rp_cache *c = rp_cache_open(dir, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c || !conf) {
        rp_conf_free(conf);
        return;
    }
    const char *blobs[2] = {"{\"architecture\":\"amd64\",\"os\":\"linux\"}",
                            "layer bytes, not really a tar"};
    char bd[2][RP_CACHE_DIGEST_BUF];
    for (int i = 0; i < 2; i++) {
        rp_digest_of(NULL, blobs[i], strlen(blobs[i]), bd[i]);
        int e;
        struct rp_cache_fill *f = rp_cache_fill_begin(c, bd[i], (int64_t)strlen(blobs[i]), &e);
        CHECK(f != NULL);
        rp_cache_fill_write(f, blobs[i], strlen(blobs[i]));
        CHECK_INT(rp_cache_fill_commit(f), 0);
        CHECK_INT(rp_cache_link(c, "reg.example", "ns/x", bd[i]), 0);
    }
    char *m = rp_xasprintf("{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{\"mediaType\":"
                           "\"application/vnd.oci.image.config.v1+json\",\"digest\":\"%s\","
                           "\"size\":%zu},\"layers\":[{\"mediaType\":\"application/"
                           "vnd.oci.image.layer.v1.tar\",\"digest\":\"%s\",\"size\":%zu}]}",
                           RP_MEDIA_OCI_MANIFEST, bd[0], strlen(blobs[0]), bd[1], strlen(blobs[1]));
    rp_digest_of(NULL, m, strlen(m), mdigest);
    CHECK_INT(rp_cache_manifest_put(c, mdigest, RP_MEDIA_OCI_MANIFEST, m, strlen(m)), 0);
    CHECK_INT(rp_cache_link(c, "reg.example", "ns/x", mdigest), 0);
    CHECK_INT(rp_cache_tag_set(c, "reg.example", "ns/x", "v1", mdigest, NULL, 1000), 0);
    CHECK_INT(rp_pins_add(dir, "reg.example", "ns/x", "v1", mdigest), 0);
    CHECK_INT(rp_pins_add(dir, "reg.example", "ns/x", "v1", mdigest), 0); /* once */
    free(m);
    rp_cache_close(c);
    rp_conf_free(conf);
}

struct mem {
    const char *p;
    size_t len, pos;
};

static long mem_read(void *arg, void *buf, size_t n, const char **why)
{
    (void)why;
    struct mem *m = arg;
    size_t k = m->len - m->pos < n ? m->len - m->pos : n;
    memcpy(buf, m->p + m->pos, k);
    m->pos += k;
    return (long)k;
}

static int verify_mem(const char *p, size_t len, char *err, size_t errlen)
{
    struct mem m = {.p = p, .len = len};
    struct rp_bundle_src src = {.read = mem_read, .arg = &m};
    return rp_bundle_read(&src, 0, NULL, NULL, NULL, err, errlen);
}

/* Exports the source cache, returns the bundle's bytes. */
static char *export_bundle(const char *src, const char *path, size_t *len)
{
    struct rp_conf *conf = conf_for(src, false);
    struct rp_export_opts o = {.output = path};
    int rc = conf ? rp_export_main(conf, &o) : 1;
    CHECK_INT(rc, 0);
    rp_conf_free(conf);
    return rc == 0 ? slurp(path, len) : NULL;
}

static void test_export_import(void)
{
    char src[128], dst[128], path[160], bad[160], err[1024];
    char mdigest[RP_CACHE_DIGEST_BUF];
    snprintf(src, sizeof(src), "%s/src", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst", tmpdir);
    snprintf(path, sizeof(path), "%s/b.rpb", tmpdir);
    snprintf(bad, sizeof(bad), "%s/bad.rpb", tmpdir);
    make_source(src, mdigest);
    size_t len = 0;
    char *b = export_bundle(src, path, &len);
    if (!b)
        return;
    CHECK_INT(verify_mem(b, len, err, sizeof(err)), 0);
    /* Every single flipped bit, every truncation and any extra byte is refused. */
    for (size_t i = 0; i < len; i++) {
        b[i] ^= 0x10;
        CHECK(verify_mem(b, len, err, sizeof(err)) != 0);
        b[i] ^= 0x10;
    }
    for (size_t n = 0; n < len; n++)
        CHECK(verify_mem(b, n, err, sizeof(err)) != 0);
    char *longer = rp_xmalloc(len + 1);
    memcpy(longer, b, len);
    longer[len] = 0;
    CHECK(verify_mem(longer, len + 1, err, sizeof(err)) != 0);
    free(longer);
    b[11] = 9;
    CHECK(verify_mem(b, len, err, sizeof(err)) != 0);
    CHECK(strstr(err, "newer") != NULL);
    b[11] = 1;

    /* A bundle of a registry the importing side does not configure is refused whole. */
    char *other_text = rp_xasprintf("[listen \"127.0.0.1:1\"]\n[cache]\ndir = %s\noffline = yes\n"
                                    "[registry \"other.example\"]\n",
                                    dst);
    struct rp_conf *other = NULL;
    CHECK_INT(rp_conf_parse(other_text, strlen(other_text), "o.conf", &other, err, sizeof(err)), 0);
    free(other_text);
    if (other)
        CHECK_INT(rp_import_main(other, path), 1);
    rp_conf_free(other);
    /* An image that is not cached: export refuses and writes nothing. */
    char list[160], none[160];
    snprintf(list, sizeof(list), "%s/missing.list", tmpdir);
    snprintf(none, sizeof(none), "%s/none.rpb", tmpdir);
    const char *missing = "reg.example/ns/x:v1\nreg.example/ns/y:v1 # not mirrored\n";
    spit(list, missing, strlen(missing));
    struct rp_conf *sconf = conf_for(src, false);
    struct rp_export_opts eo = {.list = list, .output = none};
    CHECK_INT(rp_export_main(sconf, &eo), 1);
    rp_conf_free(sconf);
    struct stat st;
    CHECK(stat(none, &st) != 0);

    struct rp_conf *conf = conf_for(dst, true);
    b[len / 2] ^= 1;
    spit(bad, b, len);
    b[len / 2] ^= 1;
    CHECK_INT(rp_import_main(conf, bad), 1);
    CHECK(stat(dst, &st) != 0); /* refused before the cache was even created */
    CHECK_INT(rp_import_main(conf, path), 0);
    CHECK_INT(rp_import_main(conf, path), 0);
    struct rp_cache *c = rp_cache_open(dst, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        char d[RP_CACHE_DIGEST_BUF];
        int64_t t = 0;
        CHECK_INT(rp_cache_tag_get(c, "reg.example", "ns/x", "v1", d, sizeof(d), &t), 0);
        CHECK_STR(d, mdigest);
        CHECK_INT(t, 1000);
        CHECK(rp_cache_linked(c, "reg.example", "ns/x", mdigest));
        rp_cache_close(c);
    }
    char *pins_path = rp_xasprintf("%s/pins", dst);
    size_t plen = 0;
    char *pins = slurp(pins_path, &plen);
    char *want = rp_xasprintf("reg.example/ns/x:v1@%s\n", mdigest);
    CHECK_STR(pins, want);
    free(want);
    free(pins);
    free(pins_path);
    rp_conf_free(conf);
    free(b);
}

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

/* Appends a record (type, name, data) to buf at *len. */
static void add_record(unsigned char *buf, size_t *len, char type, const char *name,
                       const void *data, size_t n)
{
    unsigned char h[16] = {0};
    h[0] = (unsigned char)type;
    put_be(h + 4, strlen(name), 4);
    put_be(h + 8, n, 8);
    memcpy(buf + *len, h, 16);
    memcpy(buf + *len + 16, name, strlen(name));
    memcpy(buf + *len + 16 + strlen(name), data, n);
    *len += 16 + strlen(name) + n;
}

static size_t lz4_frame(const char *in, unsigned char *out, size_t cap)
{
    size_t n = LZ4F_compressFrame(out, cap, in, strlen(in), NULL);
    CHECK(!LZ4F_isError(n));
    return LZ4F_isError(n) ? 0 : n;
}

/* A bundle made by hand, whole and with a correct trailer, whose image manifest references
 * a layer the bundle does not carry: import refuses it and writes nothing (it used to tag and
 * pin an image whose layer was nowhere). */
static void test_import_refuses_incomplete_image(void)
{
    const char *cfg = "{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    char cd[RP_CACHE_DIGEST_BUF], ld[RP_CACHE_DIGEST_BUF], md[RP_CACHE_DIGEST_BUF];
    rp_digest_of(NULL, cfg, strlen(cfg), cd);
    rp_digest_of(NULL, "missing layer", 13, ld);
    char *m = rp_xasprintf("{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{\"mediaType\":"
                           "\"application/vnd.oci.image.config.v1+json\",\"digest\":\"%s\","
                           "\"size\":%zu},\"layers\":[{\"mediaType\":\"application/"
                           "vnd.oci.image.layer.v1.tar\",\"digest\":\"%s\",\"size\":13}]}",
                           RP_MEDIA_OCI_MANIFEST, cd, strlen(cfg), ld);
    rp_digest_of(NULL, m, strlen(m), md);
    char *meta = rp_xasprintf(
        "{\"format\":\"regproxy-bundle\",\"version\":1,\"images\":[{\"registry\":\"reg.example\","
        "\"repo\":\"ns/x\",\"tag\":\"v1\",\"digest\":\"%s\"}],\"manifests\":[{\"digest\":\"%s\","
        "\"media_type\":\"%s\",\"size\":%zu,\"repos\":[[\"reg.example\",\"ns/x\"]]}],"
        "\"blobs\":[{\"digest\":\"%s\",\"size\":%zu,\"repos\":[[\"reg.example\",\"ns/x\"]]}]}",
        md, md, RP_MEDIA_OCI_MANIFEST, strlen(m), cd, strlen(cfg));
    size_t cap = 8192, len = 32, zn;
    unsigned char *b = rp_xcalloc(1, cap), z[4096];
    zn = lz4_frame(meta, z, sizeof(z));
    add_record(b, &len, 'M', "", z, zn);
    zn = lz4_frame(m, z, sizeof(z));
    add_record(b, &len, 'm', md, z, zn);
    add_record(b, &len, 'b', cd, cfg, strlen(cfg));
    memcpy(b, "RPBUNDLE", 8);
    put_be(b + 8, 1, 4);
    put_be(b + 16, len + 16 + 32, 8);
    unsigned char sum[32];
    unsigned int sl = 0;
    EVP_Digest(b, len, sum, &sl, EVP_sha256(), NULL);
    add_record(b, &len, 'T', "", sum, 32);
    char path[160], dst[128], err[1024];
    snprintf(path, sizeof(path), "%s/incomplete.rpb", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst-incomplete", tmpdir);
    CHECK_INT(verify_mem((const char *)b, len, err, sizeof(err)), 0); /* well formed */
    spit(path, b, len);
    struct rp_conf *conf = conf_for(dst, true);
    CHECK_INT(rp_import_main(conf, path), 1);
    struct stat st;
    CHECK(stat(dst, &st) != 0); /* refused before the cache was even created */
    rp_conf_free(conf);
    free(b);
    free(m);
    free(meta);
}

/* A split bundle's header whose part size is near 2^64: the part count must not wrap to 0
 * (the importer then opened a part name it never made, a crash on a hostile file). */
static void test_import_huge_part_size(void)
{
    char path[160], dst[128];
    snprintf(path, sizeof(path), "%s/huge.000", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst-huge", tmpdir);
    unsigned char b[4096] = {0};
    memcpy(b, "RPBUNDLE", 8);
    put_be(b + 8, 1, 4);
    put_be(b + 16, sizeof(b), 8);
    put_be(b + 24, UINT64_MAX, 8);
    spit(path, b, sizeof(b));
    struct rp_conf *conf = conf_for(dst, true);
    CHECK_INT(rp_import_main(conf, path), 1);
    struct stat st;
    CHECK(stat(dst, &st) != 0);
    rp_conf_free(conf);
}

/* A cache over max_size with its content pinned (mirrored or imported beyond it, or
 * max_size lowered since): export reads it all and evicts nothing. It used to open the cache
 * with max_size, so releasing each blob it read evicted unpinned-looking content, the image
 * being exported included, and then failed for want of it. */
static void test_export_evicts_nothing(void)
{
    char src[128], path[160], pins[160], mdigest[RP_CACHE_DIGEST_BUF];
    snprintf(src, sizeof(src), "%s/src-over", tmpdir);
    snprintf(path, sizeof(path), "%s/over.rpb", tmpdir);
    snprintf(pins, sizeof(pins), "%s/pins", src);
    make_source(src, mdigest);
    FILE *f = fopen(pins, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fprintf(f, "reg.example/ns/x:v1@%s\n", mdigest);
    fclose(f);
    struct rp_conf *conf = conf_sized(src, false, "1");
    struct rp_export_opts o = {.output = path};
    CHECK_INT(conf ? rp_export_main(conf, &o) : 1, 0);
    rp_conf_free(conf);
    /* All of it is still there: a second export, from an unbounded cache, has it all. */
    char again[160];
    snprintf(again, sizeof(again), "%s/again.rpb", tmpdir);
    size_t l1 = 0, l2 = 0;
    char *b1 = slurp(path, &l1), *b2 = export_bundle(src, again, &l2);
    CHECK(b1 != NULL && b2 != NULL && l1 == l2 && l1 > 0);
    free(b1);
    free(b2);
}

static void put_blob(struct rp_cache *c, const char *repo, const char *data, char *digest)
{
    rp_digest_of(NULL, data, strlen(data), digest);
    int e;
    struct rp_cache_fill *f = rp_cache_fill_begin(c, digest, (int64_t)strlen(data), &e);
    CHECK(f != NULL);
    rp_cache_fill_write(f, data, strlen(data));
    CHECK_INT(rp_cache_fill_commit(f), 0);
    CHECK_INT(rp_cache_link(c, "reg.example", repo, digest), 0);
}

/* An image manifest (config + one layer) stored and linked; the layer is stored only when
 * with_layer. */
static void put_image_typed(struct rp_cache *c, const char *repo, const char *tag, bool with_layer,
                            const char *type, char *mdigest)
{
    char cfg[128], layer[128], cd[RP_CACHE_DIGEST_BUF], ld[RP_CACHE_DIGEST_BUF];
    snprintf(cfg, sizeof(cfg), "{\"architecture\":\"amd64\",\"os\":\"linux\",\"t\":\"%s\"}", tag);
    snprintf(layer, sizeof(layer), "layer of %s", tag);
    put_blob(c, repo, cfg, cd);
    if (with_layer)
        put_blob(c, repo, layer, ld);
    else
        rp_digest_of(NULL, layer, strlen(layer), ld);
    char *m = rp_xasprintf("{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{\"mediaType\":"
                           "\"application/vnd.oci.image.config.v1+json\",\"digest\":\"%s\","
                           "\"size\":%zu},\"layers\":[{\"mediaType\":\"application/"
                           "vnd.oci.image.layer.v1.tar\",\"digest\":\"%s\",\"size\":%zu}]}",
                           RP_MEDIA_OCI_MANIFEST, cd, strlen(cfg), ld, strlen(layer));
    rp_digest_of(NULL, m, strlen(m), mdigest);
    CHECK_INT(rp_cache_manifest_put(c, mdigest, type, m, strlen(m)), 0);
    CHECK_INT(rp_cache_link(c, "reg.example", repo, mdigest), 0);
    free(m);
}

static void put_image(struct rp_cache *c, const char *repo, const char *tag, bool with_layer,
                      char *mdigest)
{
    put_image_typed(c, repo, tag, with_layer, RP_MEDIA_OCI_MANIFEST, mdigest);
}

/* `mirror --platform linux/arm64` of an index caches the arm64 child and its blobs; the
 * amd64 child's manifest got into the cache too (a client's `skopeo inspect`, or an earlier
 * mirror interrupted before its layers) without its layer. Export leaves the amd64 child out,
 * as it does for a child whose manifest is not cached (it used to refuse the image). */
static void test_export_partial_child(void)
{
    char src[128], out[160], arm[RP_CACHE_DIGEST_BUF], amd[RP_CACHE_DIGEST_BUF],
        idx[RP_CACHE_DIGEST_BUF], err[512];
    snprintf(src, sizeof(src), "%s/src-partial", tmpdir);
    snprintf(out, sizeof(out), "%s/partial.rpb", tmpdir);
    struct rp_cache *c = rp_cache_open(src, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    put_image(c, "ns/m", "arm", true, arm);
    put_image(c, "ns/m", "amd", false, amd); /* manifest only: its layer never came */
    char *i = rp_xasprintf(
        "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"manifests\":["
        "{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":1,\"platform\":{\"os\":\"linux\","
        "\"architecture\":\"arm64\"}},"
        "{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":1,\"platform\":{\"os\":\"linux\","
        "\"architecture\":\"amd64\"}}]}",
        RP_MEDIA_OCI_INDEX, RP_MEDIA_OCI_MANIFEST, arm, RP_MEDIA_OCI_MANIFEST, amd);
    rp_digest_of(NULL, i, strlen(i), idx);
    CHECK_INT(rp_cache_manifest_put(c, idx, RP_MEDIA_OCI_INDEX, i, strlen(i)), 0);
    CHECK_INT(rp_cache_link(c, "reg.example", "ns/m", idx), 0);
    CHECK_INT(rp_cache_tag_set(c, "reg.example", "ns/m", "v1", idx, NULL, 1000), 0);
    rp_cache_close(c);
    free(i);
    CHECK_INT(rp_pins_add(src, "reg.example", "ns/m", "v1", idx), 0);
    struct rp_conf *conf = conf_for(src, false);
    struct rp_export_opts o = {.output = out};
    CHECK_INT(conf ? rp_export_main(conf, &o) : 1, 0);
    rp_conf_free(conf);
}

/* --platform linux/arm64/v8 (the form the usage text suggests, and what containerd
 * normalises arm64 to) against an index whose arm64 entry has no variant. */
static void test_platform_arm64_v8(void)
{
    const char *idx = "{\"schemaVersion\":2,\"manifests\":[{\"digest\":\"sha256:"
                      "1111111111111111111111111111111111111111111111111111111111111111\","
                      "\"size\":7,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\"}}]}";
    struct rp_manifest_refs r;
    char err[256];
    CHECK_INT(rp_manifest_refs(idx, strlen(idx), &r, err, sizeof(err)), 0);
    struct rp_platforms *p = NULL;
    CHECK_INT(rp_platforms_parse("linux/arm64/v8", &p, err, sizeof(err)), 0);
    CHECK(r.n == 1 && rp_platforms_match(p, &r.v[0]));
    rp_platforms_free(p);
    rp_manifest_refs_free(&r);
}

/* An index listing the same child n times (legal JSON, a crafted bundle or upstream).
 * Returns its digest; the index is stored and linked. */
static void put_fanout_index(struct rp_cache *c, const char *child, size_t n, char *digest)
{
    struct rp_buf b;
    rp_buf_init(&b, RP_CACHE_MANIFEST_MAX);
    rp_buf_addf(&b, "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"manifests\":[",
                RP_MEDIA_OCI_INDEX);
    for (size_t i = 0; i < n; i++)
        rp_buf_addf(&b,
                    "%s{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":1,"
                    "\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}}",
                    i ? "," : "", RP_MEDIA_OCI_INDEX, child);
    rp_buf_add(&b, "]}", 2);
    rp_digest_of(NULL, b.data, b.len, digest);
    CHECK_INT(rp_cache_manifest_put(c, digest, RP_MEDIA_OCI_INDEX, b.data, b.len), 0);
    CHECK_INT(rp_cache_link(c, "reg.example", "ns/fan", digest), 0);
    rp_buf_free(&b);
}

/* Indexes whose children repeat: A lists B 64 times, B lists C 64 times, C lists the image
 * 64 times. The pin walk visits each digest once; it walked every path (64^3 walks of the
 * image here, 4096^4 with the largest manifests: a crafted bundle hung import, then every
 * start of the proxy, which walks the pins file). */
static void test_pin_walk_shared_children(void)
{
    char dir[128], err[512], img[RP_CACHE_DIGEST_BUF], ci[RP_CACHE_DIGEST_BUF],
        bi[RP_CACHE_DIGEST_BUF], ai[RP_CACHE_DIGEST_BUF];
    snprintf(dir, sizeof(dir), "%s/fanout", tmpdir);
    struct rp_cache *c = rp_cache_open(dir, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    put_image(c, "ns/fan", "img", true, img);
    put_fanout_index(c, img, 64, ci);
    put_fanout_index(c, ci, 64, bi);
    put_fanout_index(c, bi, 64, ai);
    int64_t t0 = rp_now_ms();
    CHECK_INT((int)rp_pin_walk(c, ai), 6); /* A, B, C, the image, its config and layer */
    CHECK(rp_now_ms() - t0 < 2000);
    /* The image reached first too deep to be expanded (five indexes down), then directly:
     * its config and layer are pinned all the same. */
    char chain[5][RP_CACHE_DIGEST_BUF], two[RP_CACHE_DIGEST_BUF];
    put_fanout_index(c, img, 1, chain[4]);
    for (int i = 3; i >= 0; i--)
        put_fanout_index(c, chain[i + 1], 1, chain[i]);
    struct rp_buf b;
    rp_buf_init(&b, 4096);
    rp_buf_addf(&b,
                "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"manifests\":["
                "{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":1},"
                "{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":1}]}",
                RP_MEDIA_OCI_INDEX, RP_MEDIA_OCI_INDEX, chain[1], RP_MEDIA_OCI_MANIFEST, img);
    rp_digest_of(NULL, b.data, b.len, two);
    CHECK_INT(rp_cache_manifest_put(c, two, RP_MEDIA_OCI_INDEX, b.data, b.len), 0);
    rp_buf_free(&b);
    /* two -> chain[1..4] -> image at depth 5, and two -> image at depth 1 */
    CHECK_INT((int)rp_pin_walk(c, two), 8);
    rp_cache_close(c);
}

/* Export of an index whose children repeat (A lists B 256 times, B lists the image 256
 * times, as a mirror accepts: it fetches each digest once): each manifest is collected
 * once. Export walked every path, checking and collecting the image 2 * 256^2 times (with
 * 4096-entry indexes, hours). */
static void test_export_shared_children(void)
{
    char dir[128], out[160], err[512], img[RP_CACHE_DIGEST_BUF], bi[RP_CACHE_DIGEST_BUF],
        ai[RP_CACHE_DIGEST_BUF];
    snprintf(dir, sizeof(dir), "%s/fanout-export", tmpdir);
    snprintf(out, sizeof(out), "%s/fanout.rpb", tmpdir);
    struct rp_cache *c = rp_cache_open(dir, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    put_image(c, "ns/fan", "img", true, img);
    put_fanout_index(c, img, 256, bi);
    put_fanout_index(c, bi, 256, ai);
    CHECK_INT(rp_cache_tag_set(c, "reg.example", "ns/fan", "v1", ai, NULL, 1000), 0);
    rp_cache_close(c);
    CHECK_INT(rp_pins_add(dir, "reg.example", "ns/fan", "v1", ai), 0);
    struct rp_conf *conf = conf_for(dir, false);
    struct rp_export_opts o = {.output = out};
    /* Work counted, not timed: every path is 2 * 256^2 parses; each manifest once (and the
     * image once per entry of B, checking it is whole) is a few hundred. */
    unsigned long parses = rp_manifest_refs_calls;
    CHECK_INT(conf ? rp_export_main(conf, &o) : 1, 0);
    parses = rp_manifest_refs_calls - parses;
    fprintf(stderr, "export of a 256 x 256 fan-out: %lu manifest parses\n", parses);
    CHECK(parses <= 4 * 256);
    rp_conf_free(conf);
    char dst[128];
    snprintf(dst, sizeof(dst), "%s/fanout-import", tmpdir);
    conf = conf_for(dst, true);
    CHECK_INT(conf ? rp_import_main(conf, out) : 1, 0);
    rp_conf_free(conf);
}

/* Appends a record to a growing bundle. */
static void buf_record(struct rp_buf *b, char type, const char *name, const void *data, size_t n)
{
    unsigned char h[16] = {0};
    h[0] = (unsigned char)type;
    put_be(h + 4, strlen(name), 4);
    put_be(h + 8, n, 8);
    rp_buf_add(b, h, 16);
    rp_buf_add(b, name, strlen(name));
    rp_buf_add(b, data, n);
}

static void buf_lz4_record(struct rp_buf *b, char type, const char *name, const char *text)
{
    size_t cap = LZ4F_compressFrameBound(strlen(text), NULL);
    unsigned char *z = rp_xmalloc(cap);
    buf_record(b, type, name, z, lz4_frame(text, z, cap));
    free(z);
}

/* A hand-made bundle whose image is an index nesting n indexes, each listing the next and
 * the last the image manifest, listed outermost first. Import publishes each manifest after
 * what it names in time linear in the bundle: it rescanned every held manifest, parsing
 * each index again, once per level (n rounds of n parses and n^2 comparisons: minutes for a
 * few-megabyte bundle). */
static void test_import_deep_nesting(void)
{
    enum { N = 1000 };
    const char *cfg = "{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    char cd[RP_CACHE_DIGEST_BUF], (*md)[RP_CACHE_DIGEST_BUF] = rp_xcalloc(N + 1, sizeof(*md));
    char **text = rp_xcalloc(N + 1, sizeof(*text));
    rp_digest_of(NULL, cfg, strlen(cfg), cd);
    text[N] = rp_xasprintf("{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{"
                           "\"mediaType\":\"application/vnd.oci.image.config.v1+json\","
                           "\"digest\":\"%s\",\"size\":%zu},\"layers\":[]}",
                           RP_MEDIA_OCI_MANIFEST, cd, strlen(cfg));
    rp_digest_of(NULL, text[N], strlen(text[N]), md[N]);
    for (int i = N - 1; i >= 0; i--) {
        text[i] = rp_xasprintf("{\"schemaVersion\":2,\"mediaType\":\"%s\",\"manifests\":[{"
                               "\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":%zu}]}",
                               RP_MEDIA_OCI_INDEX,
                               i == N - 1 ? RP_MEDIA_OCI_MANIFEST : RP_MEDIA_OCI_INDEX, md[i + 1],
                               strlen(text[i + 1]));
        rp_digest_of(NULL, text[i], strlen(text[i]), md[i]);
    }
    struct rp_buf meta;
    rp_buf_init(&meta, (size_t)64 << 20);
    rp_buf_addf(&meta,
                "{\"format\":\"regproxy-bundle\",\"version\":1,\"images\":[{\"registry\":"
                "\"reg.example\",\"repo\":\"ns/deep\",\"tag\":\"v1\",\"digest\":\"%s\"}],"
                "\"manifests\":[",
                md[0]);
    for (int i = 0; i <= N; i++)
        rp_buf_addf(&meta,
                    "%s{\"digest\":\"%s\",\"media_type\":\"%s\",\"size\":%zu,\"repos\":"
                    "[[\"reg.example\",\"ns/deep\"]]}",
                    i ? "," : "", md[i], i < N ? RP_MEDIA_OCI_INDEX : RP_MEDIA_OCI_MANIFEST,
                    strlen(text[i]));
    rp_buf_addf(&meta,
                "],\"blobs\":[{\"digest\":\"%s\",\"size\":%zu,\"repos\":[[\"reg.example\","
                "\"ns/deep\"]]}]}",
                cd, strlen(cfg));
    struct rp_buf b;
    rp_buf_init(&b, (size_t)64 << 20);
    unsigned char head[32] = {0};
    rp_buf_add(&b, head, sizeof(head));
    buf_lz4_record(&b, 'M', "", meta.data);
    for (int i = 0; i <= N; i++)
        buf_lz4_record(&b, 'm', md[i], text[i]);
    buf_record(&b, 'b', cd, cfg, strlen(cfg));
    unsigned char *h = (unsigned char *)b.data;
    memcpy(h, "RPBUNDLE", 8);
    put_be(h + 8, 1, 4);
    put_be(h + 16, b.len + 16 + 32, 8);
    unsigned char sum[32];
    unsigned int sl = 0;
    EVP_Digest(b.data, b.len, sum, &sl, EVP_sha256(), NULL);
    buf_record(&b, 'T', "", sum, 32);
    char path[160], dst[128], err[512];
    snprintf(path, sizeof(path), "%s/deep.rpb", tmpdir);
    /* On tmpfs where there is one: the import's thousands of fsyncs take ~25 s on disk. */
    char shm[] = "/dev/shm/rp-test-deep.XXXXXX";
    bool on_shm = mkdtemp(shm) != NULL;
    snprintf(dst, sizeof(dst), "%s/dst-deep", on_shm ? shm : tmpdir);
    spit(path, b.data, b.len);
    struct rp_conf *conf = conf_for(dst, true);
    /* Work counted, not timed: a rescan per level is about N^2 / 2 parses (500,000); a
     * verification pass and one topological pass are a few per manifest. */
    unsigned long parses = rp_manifest_refs_calls;
    CHECK_INT(conf ? rp_import_main(conf, path) : 1, 0);
    parses = rp_manifest_refs_calls - parses;
    fprintf(stderr, "import of %d nested indexes: %lu manifest parses\n", N, parses);
    CHECK(parses <= 4 * (N + 1));
    rp_conf_free(conf);
    struct rp_cache *c = rp_cache_open(dst, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        struct rp_cache_manifest m;
        CHECK_INT(rp_cache_manifest_get(c, md[0], &m), RP_CACHE_OK);
        rp_cache_manifest_free(&m);
        CHECK_INT(rp_cache_manifest_get(c, md[N], &m), RP_CACHE_OK);
        rp_cache_manifest_free(&m);
        rp_cache_close(c);
    }
    if (on_shm)
        unit_rm_rf(shm);
    for (int i = 0; i <= N; i++)
        free(text[i]);
    free(text);
    free(md);
    rp_buf_free(&meta);
    rp_buf_free(&b);
}

/* A manifest cached with its Content-Type's parameters (as the proxy kept them before it
 * normalised manifest types: quay, pulp and Satellite add "; charset=utf-8"). The export
 * writes its media type alone: the metadata's media types are refused with a space in them,
 * and such a bundle was refused whole by every import. */
static void test_export_media_type_parameters(void)
{
    char src[128], dst[128], out[160], err[512], md[RP_CACHE_DIGEST_BUF];
    snprintf(src, sizeof(src), "%s/src-charset", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst-charset", tmpdir);
    snprintf(out, sizeof(out), "%s/charset.rpb", tmpdir);
    struct rp_cache *c = rp_cache_open(src, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    put_image_typed(c, "ns/cs", "cs", true, RP_MEDIA_OCI_MANIFEST "; charset=utf-8", md);
    CHECK_INT(rp_cache_tag_set(c, "reg.example", "ns/cs", "v1", md, NULL, 1000), 0);
    rp_cache_close(c);
    CHECK_INT(rp_pins_add(src, "reg.example", "ns/cs", "v1", md), 0);
    struct rp_conf *conf = conf_for(src, false);
    struct rp_export_opts o = {.output = out};
    CHECK_INT(conf ? rp_export_main(conf, &o) : 1, 0);
    rp_conf_free(conf);
    conf = conf_for(dst, true);
    CHECK_INT(conf ? rp_import_main(conf, out) : 1, 0);
    rp_conf_free(conf);
    c = rp_cache_open(dst, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        struct rp_cache_manifest m = {0};
        CHECK_INT(rp_cache_manifest_get(c, md, &m), RP_CACHE_OK);
        if (m.media_type) {
            CHECK_STR(m.media_type, RP_MEDIA_OCI_MANIFEST);
            rp_cache_manifest_free(&m);
        }
        rp_cache_close(c);
    }
}

/* The pins file cannot be written at the end of an import (a full disk; here its temp name
 * is taken by a directory): the import fails and no tag has moved. It set the tags first,
 * so they named content that the next start does not pin and may evict, which an offline
 * cache cannot fetch again. */
static void test_import_pins_failure_sets_no_tag(void)
{
    char src[128], dst[128], out[160], tmp[192], err[512], md[RP_CACHE_DIGEST_BUF];
    snprintf(src, sizeof(src), "%s/src-nopins", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst-nopins", tmpdir);
    snprintf(out, sizeof(out), "%s/nopins.rpb", tmpdir);
    struct rp_cache *c = rp_cache_open(src, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    put_image(c, "ns/np", "np", true, md);
    CHECK_INT(rp_cache_tag_set(c, "reg.example", "ns/np", "v1", md, NULL, 1000), 0);
    rp_cache_close(c);
    CHECK_INT(rp_pins_add(src, "reg.example", "ns/np", "v1", md), 0);
    struct rp_conf *conf = conf_for(src, false);
    struct rp_export_opts o = {.output = out};
    CHECK_INT(conf ? rp_export_main(conf, &o) : 1, 0);
    rp_conf_free(conf);
    c = rp_cache_open(dst, 0, err, sizeof(err));
    CHECK(c != NULL);
    rp_cache_close(c);
    snprintf(tmp, sizeof(tmp), "%s/pins.tmp", dst);
    CHECK_INT(mkdir(tmp, 0755), 0);
    conf = conf_for(dst, true);
    CHECK_INT(conf ? rp_import_main(conf, out) : 0, 1);
    c = rp_cache_open(dst, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        char cur[RP_CACHE_DIGEST_BUF];
        int64_t when;
        CHECK(rp_cache_tag_get(c, "reg.example", "ns/np", "v1", cur, sizeof(cur), &when) !=
              RP_CACHE_OK);
        rp_cache_close(c);
    }
    /* Once the file can be written, importing again finishes the job. */
    rmdir(tmp);
    CHECK_INT(conf ? rp_import_main(conf, out) : 1, 0);
    rp_conf_free(conf);
}

static struct timespec tags_mtime;
static int tag_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)f;
    if (flag == FTW_F && strstr(p, "/tags/")) {
        if (st->st_mtim.tv_sec > tags_mtime.tv_sec ||
            (st->st_mtim.tv_sec == tags_mtime.tv_sec && st->st_mtim.tv_nsec > tags_mtime.tv_nsec))
            tags_mtime = st->st_mtim;
    }
    return 0;
}

/* The tag moved upstream between two mirrors: the pins file lists both digests under the
 * same tag. Only the image the tag names carries it in the bundle, so the import sets it
 * once, to that digest, and a second import changes nothing (it set the tag twice, old
 * digest then new, each time). */
static void test_import_twice_tag_moved(void)
{
    char src[128], dst[128], out[160], a[RP_CACHE_DIGEST_BUF], b[RP_CACHE_DIGEST_BUF], err[512];
    snprintf(src, sizeof(src), "%s/src-moved", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst-moved", tmpdir);
    snprintf(out, sizeof(out), "%s/moved.rpb", tmpdir);
    struct rp_cache *c = rp_cache_open(src, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    put_image(c, "ns/t", "old", true, a);
    put_image(c, "ns/t", "new", true, b);
    CHECK_INT(rp_cache_tag_set(c, "reg.example", "ns/t", "v1", b, NULL, 2000), 0);
    rp_cache_close(c);
    CHECK_INT(rp_pins_add(src, "reg.example", "ns/t", "v1", a), 0); /* first mirror */
    CHECK_INT(rp_pins_add(src, "reg.example", "ns/t", "v1", b), 0); /* after the move */
    struct rp_conf *conf = conf_for(src, false);
    struct rp_export_opts o = {.output = out};
    CHECK_INT(conf ? rp_export_main(conf, &o) : 1, 0);
    rp_conf_free(conf);
    conf = conf_for(dst, true);
    CHECK_INT(rp_import_main(conf, out), 0);
    memset(&tags_mtime, 0, sizeof(tags_mtime));
    nftw(dst, tag_cb, 16, FTW_PHYS);
    struct timespec before = tags_mtime;
    usleep(20000);
    CHECK_INT(rp_import_main(conf, out), 0);
    memset(&tags_mtime, 0, sizeof(tags_mtime));
    nftw(dst, tag_cb, 16, FTW_PHYS);
    CHECK(before.tv_sec == tags_mtime.tv_sec && before.tv_nsec == tags_mtime.tv_nsec);
    rp_conf_free(conf);
    c = rp_cache_open(dst, 0, err, sizeof(err));
    CHECK(c != NULL);
    char cur[RP_CACHE_DIGEST_BUF];
    int64_t when;
    if (c) {
        CHECK_INT(rp_cache_tag_get(c, "reg.example", "ns/t", "v1", cur, sizeof(cur), &when), 0);
        CHECK_STR(cur, b);
        rp_cache_close(c);
    }
}

/* A bundle's tag time is taken as is up to now: one ahead of the importer's clock (a clock
 * that was ahead, or a crafted bundle) would keep the tag fresh until then. */
static void test_import_tag_time_future(void)
{
    char src[128], dst[128], out[160], a[RP_CACHE_DIGEST_BUF], err[512];
    snprintf(src, sizeof(src), "%s/src-future", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst-future", tmpdir);
    snprintf(out, sizeof(out), "%s/future.rpb", tmpdir);
    struct rp_cache *c = rp_cache_open(src, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    put_image(c, "ns/f", "one", true, a);
    CHECK_INT(rp_cache_tag_set(c, "reg.example", "ns/f", "v1", a, NULL, INT64_MAX), 0);
    rp_cache_close(c);
    CHECK_INT(rp_pins_add(src, "reg.example", "ns/f", "v1", a), 0);
    struct rp_conf *conf = conf_for(src, false);
    struct rp_export_opts o = {.output = out};
    CHECK_INT(conf ? rp_export_main(conf, &o) : 1, 0);
    rp_conf_free(conf);
    conf = conf_for(dst, true);
    CHECK_INT(rp_import_main(conf, out), 0);
    rp_conf_free(conf);
    c = rp_cache_open(dst, 0, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        char cur[RP_CACHE_DIGEST_BUF];
        int64_t when = -1;
        CHECK_INT(rp_cache_tag_get(c, "reg.example", "ns/f", "v1", cur, sizeof(cur), &when), 0);
        CHECK_STR(cur, a);
        CHECK(when >= 0 && when <= rp_wall_s());
        rp_cache_close(c);
    }
}

/* Lines added at once: each once, whether listed in the file already or twice in the
 * batch; nothing new, nothing written. */
static void test_pins_add_lines(void)
{
    char dir[128], path[160];
    snprintf(dir, sizeof(dir), "%s/pins-lines", tmpdir);
    CHECK_INT(mkdir(dir, 0755), 0);
    snprintf(path, sizeof(path), "%s/pins", dir);
    CHECK_INT(rp_pins_add(dir, "r", "a", "v1", "sha256:1"), 0);
    char *lines[] = {
        rp_pins_line("r", "a", "v1", "sha256:1"), rp_pins_line("r", "b", NULL, "sha256:2"),
        rp_pins_line("r", "b", NULL, "sha256:2"), rp_pins_line("r", "c", "", "sha256:3")};
    CHECK_STR(lines[1], "r/b@sha256:2");
    CHECK_INT(rp_pins_add_lines(dir, lines, 4), 0);
    size_t len = 0;
    char *got = slurp(path, &len);
    CHECK_STR(got, "r/a:v1@sha256:1\nr/b@sha256:2\nr/c@sha256:3\n");
    free(got);
    struct stat before, after;
    CHECK_INT(stat(path, &before), 0);
    CHECK_INT(rp_pins_add_lines(dir, lines, 4), 0);
    CHECK_INT(stat(path, &after), 0);
    CHECK(before.st_ino == after.st_ino); /* not rewritten */
    for (size_t i = 0; i < 4; i++)
        free(lines[i]);
}

/* A pins file an admin edited: CRLF line ends, indentation, blank lines with spaces and
 * comments still give every pin (they were skipped: the image left unpinned, evictable). */
static void test_pins_load_edited(void)
{
    char dir[128], path[160], text[1024];
    snprintf(dir, sizeof(dir), "%s/pins-edited", tmpdir);
    CHECK_INT(mkdir(dir, 0755), 0);
    snprintf(path, sizeof(path), "%s/pins", dir);
    const char *d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const char *d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    snprintf(text, sizeof(text),
             "# mirrored on Monday\r\n  reg.example/ns/a:v1@%s\r\n   \r\n\treg.example/ns/b@%s \n"
             "  # reg.example/ns/c@%s\n",
             d1, d2, d2);
    spit(path, text, strlen(text));
    struct rp_conf *conf = conf_for(dir, false);
    struct rp_image_ref *v = NULL;
    size_t n = 0;
    char err[256];
    CHECK_INT(conf ? rp_pins_load(conf, &v, &n, err, sizeof(err)) : -1, 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(v[0].digest, d1);
        CHECK_STR(v[1].digest, d2);
    }
    free(v);
    rp_conf_free(conf);
}

/* The fuzz_bundle seeds: a valid bundle and a few near misses. */
static int write_seeds(const char *dir)
{
    char src[128], path[160], out[512], mdigest[RP_CACHE_DIGEST_BUF];
    snprintf(src, sizeof(src), "%s/src", tmpdir);
    snprintf(path, sizeof(path), "%s/seed.rpb", tmpdir);
    make_source(src, mdigest);
    size_t len = 0;
    char *b = export_bundle(src, path, &len);
    if (!b)
        return 1;
    snprintf(out, sizeof(out), "%s/valid", dir);
    spit(out, b, len);
    snprintf(out, sizeof(out), "%s/truncated", dir);
    spit(out, b, len - 40);
    b[len - 3] ^= 1;
    snprintf(out, sizeof(out), "%s/bad_trailer", dir);
    spit(out, b, len);
    b[len - 3] ^= 1;
    b[11] = 2;
    snprintf(out, sizeof(out), "%s/newer_version", dir);
    spit(out, b, len);
    free(b);
    return 0;
}

/* Pin patterns match an image by its registry's section name or by its host[:port]. */
static void test_pin_pattern_by_name_or_host(void)
{
    static const char text[] = "[listen \"127.0.0.1:5000\"]\n"
                               "[cache]\npin = registry.example.com:5443/team/*, corp/base\n"
                               "[registry \"corp\"]\nurl = https://registry.example.com:5443\n"
                               "[registry \"other\"]\nurl = https://other.example.com\n";
    struct rp_conf *conf = NULL;
    char err[256];
    CHECK_INT(rp_conf_parse(text, sizeof(text) - 1, "pins.conf", &conf, err, sizeof(err)), 0);
    if (!conf)
        return;
    CHECK(rp_pin_pattern_match(conf, "corp", "team/app")); /* by host:port */
    CHECK(rp_pin_pattern_match(conf, "corp", "team/a/b")); /* '*' crosses '/' */
    CHECK(rp_pin_pattern_match(conf, "corp", "base"));     /* by name */
    CHECK(!rp_pin_pattern_match(conf, "corp", "other/app"));
    CHECK(!rp_pin_pattern_match(conf, "other", "team/app"));
    rp_conf_free(conf);
}

int main(int argc, char **argv)
{
    unit_mkdtemp(tmpdir, sizeof(tmpdir), "rp-test-bundle");
    rp_log_set_level(RP_LOG_ERROR);
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) {
        int rc = write_seeds(argv[2]);
        unit_rm_rf(tmpdir);
        return rc;
    }
    RUN(test_accept_and_tag_canonical);
    RUN(test_manifest_refs);
    RUN(test_image_refs);
    RUN(test_offline_conf);
    RUN(test_export_import);
    RUN(test_import_refuses_incomplete_image);
    RUN(test_import_huge_part_size);
    RUN(test_export_evicts_nothing);
    RUN(test_export_partial_child);
    RUN(test_platform_arm64_v8);
    RUN(test_pin_walk_shared_children);
    RUN(test_export_shared_children);
    RUN(test_import_deep_nesting);
    RUN(test_export_media_type_parameters);
    RUN(test_import_pins_failure_sets_no_tag);
    RUN(test_import_twice_tag_moved);
    RUN(test_import_tag_time_future);
    RUN(test_pins_add_lines);
    RUN(test_pins_load_edited);
    RUN(test_pin_pattern_by_name_or_host);
    unit_rm_rf(tmpdir);
    UNIT_EXIT();
}
