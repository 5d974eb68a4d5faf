/* SPDX-License-Identifier: Apache-2.0 */
/* bundle: moving cached images across an air gap. `export` writes the images of a list (or
 * of the pins file) from the cache into one bundle stream (format in offline.h), optionally
 * split into parts for removable media, or into an OCI image layout; `import` reads a
 * bundle twice: a first pass verifies everything (header, version, every digest, sizes,
 * completeness, the trailer checksum) without touching the cache, a second publishes it
 * through the cache's verifying API. Plain files and the cache; no event loop. */
#include "offline.h"
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <lz4.h>
#include <lz4frame.h>
#include <malloc.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define IO_CHUNK ((size_t)1 << 20)
#define NAME_MAX_LEN 255
#define REC_META 'M'
#define REC_MANIFEST 'm'
#define REC_BLOB 'b'
#define REC_TRAILER 'T'
#define TRAILER_LEN 32
#define META_ITEMS_MAX 1000000
#define META_REPOS_MAX 10000 /* repositories one digest is linked to */
#define REGISTRY_NAME_MAX 255
#define SPLIT_MIN ((uint64_t)64 << 10)
#define PARTS_MAX 100000

/* ------------------------------------------------------------------ helpers --- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/* A registry's name as a bundle carries it: what a [registry "NAME"] section may be called
 * and a prefix may route by (no '/', printable). */
static bool registry_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= REGISTRY_NAME_MAX && printable(s, n) && !strchr(s, '/') && !strchr(s, '"');
}

static bool media_type_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= RP_MEDIA_TYPE_MAX && printable(s, n);
}

/* One LZ4 frame of exactly srclen bytes decoding to at most cap bytes. */
static int lz4_decode(const void *src, size_t srclen, size_t cap, char **out, size_t *outlen,
                      const char **why)
{
    LZ4F_dctx *dctx = NULL;
    char *buf = NULL;
    size_t alloc = 0, len = 0, pos = 0;
    int rc = -1;
    *out = NULL;
    *outlen = 0;
    if (LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION))) {
        *why = "cannot create an LZ4 context";
        return -1;
    }
    for (;;) {
        if (len == alloc) {
            if (alloc >= cap + 1) {
                *why = "compressed data decodes to more than allowed";
                goto out;
            }
            alloc = alloc ? alloc * 2 : 64 * 1024;
            if (alloc > cap + 1)
                alloc = cap + 1; /* one byte more, to tell "exactly cap" from "more" */
            buf = rp_xrealloc(buf, alloc + 1);
        }
        size_t dst = alloc - len, in = srclen - pos;
        size_t hint = LZ4F_decompress(dctx, buf + len, &dst, (const char *)src + pos, &in, NULL);
        if (LZ4F_isError(hint)) {
            *why = "corrupt LZ4 frame";
            goto out;
        }
        len += dst;
        pos += in;
        if (len > cap) {
            *why = "compressed data decodes to more than allowed";
            goto out;
        }
        if (hint == 0) {
            if (pos != srclen) {
                *why = "data after the LZ4 frame";
                goto out;
            }
            break;
        }
        if (pos == srclen && dst == 0) {
            *why = "truncated LZ4 frame";
            goto out;
        }
    }
    buf = rp_xrealloc(buf, len + 1);
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    LZ4F_freeDecompressionContext(dctx);
    return rc;
}

static char *lz4_encode(const void *src, size_t len, size_t *outlen)
{
    LZ4F_preferences_t prefs;
    memset(&prefs, 0, sizeof(prefs));
    prefs.frameInfo.contentSize = len; /* lets a reader size its buffer and check the end */
    size_t bound = LZ4F_compressFrameBound(len, &prefs);
    char *out = rp_xmalloc(bound);
    size_t n = LZ4F_compressFrame(out, bound, src, len, &prefs);
    if (LZ4F_isError(n)) {
        rp_error("bundle: LZ4 compression failed: %s", LZ4F_getErrorName(n));
        abort(); /* only on a programming error: the bound is what liblz4 asked for */
    }
    *outlen = n;
    return out;
}

/* ----------------------------------------------------------------- metadata --- */

struct bundle_repo {
    char *registry, *repo;
};

struct bundle_item {
    char digest[RP_CACHE_DIGEST_BUF];
    char *media_type; /* manifests */
    uint64_t size;
    struct bundle_repo *repos;
    size_t n_repos;
    /* export only */
    char *data; /* manifest: the LZ4 frame of its bytes */
    size_t data_len;
};

struct bundle_image {
    char *registry, *repo, *tag; /* tag NULL when by digest */
    char digest[RP_CACHE_DIGEST_BUF];
    int64_t tag_time; /* -1 when unknown */
};

struct rp_bundle_meta {
    struct bundle_image *images;
    size_t n_images;
    struct bundle_item *manifests;
    size_t n_manifests;
    struct bundle_item *blobs;
    size_t n_blobs;
};

static void items_free(struct bundle_item *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].media_type);
        for (size_t k = 0; k < v[i].n_repos; k++) {
            free(v[i].repos[k].registry);
            free(v[i].repos[k].repo);
        }
        free(v[i].repos);
        free(v[i].data);
    }
    free(v);
}

void rp_bundle_meta_free(struct rp_bundle_meta *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_images; i++) {
        free(m->images[i].registry);
        free(m->images[i].repo);
        free(m->images[i].tag);
    }
    free(m->images);
    items_free(m->manifests, m->n_manifests);
    items_free(m->blobs, m->n_blobs);
    free(m);
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int parse_repos(json_t *arr, struct bundle_item *it, const char **why)
{
    if (!json_is_array(arr) || json_array_size(arr) > META_REPOS_MAX) {
        *why = "metadata: \"repos\" is not an array of [registry, repository] pairs";
        return -1;
    }
    it->repos = rp_xcalloc(json_array_size(arr) + 1, sizeof(*it->repos));
    size_t i;
    json_t *pair;
    json_array_foreach(arr, i, pair)
    {
        json_t *r = json_array_get(pair, 0), *n = json_array_get(pair, 1);
        if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_string(r) ||
            !json_is_string(n) || !registry_name_ok(json_string_value(r)) ||
            !rp_valid_name(json_string_value(n), json_string_length(n))) {
            *why = "metadata: a repository is not a valid [registry, repository] pair";
            return -1;
        }
        it->repos[it->n_repos].registry = rp_xstrdup(json_string_value(r));
        it->repos[it->n_repos].repo = rp_xstrdup(json_string_value(n));
        it->n_repos++;
    }
    return 0;
}

static int parse_items(json_t *arr, bool manifests, struct bundle_item **out, size_t *n,
                       const char **why)
{
    if (!json_is_array(arr) || json_array_size(arr) > META_ITEMS_MAX) {
        *why = manifests ? "metadata: \"manifests\" is not an array"
                         : "metadata: \"blobs\" is not an array";
        return -1;
    }
    *out = rp_xcalloc(json_array_size(arr) + 1, sizeof(**out));
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        struct bundle_item *it = &(*out)[*n];
        const char *d = jstr(o, "digest"), *mt = jstr(o, "media_type");
        json_t *size = json_object_get(o, "size");
        if (!d || !rp_valid_digest(d, strlen(d))) {
            *why = "metadata: an entry has a missing or invalid digest";
            return -1;
        }
        snprintf(it->digest, sizeof(it->digest), "%s", d);
        (*n)++;
        if (!json_is_integer(size) || json_integer_value(size) < 0 ||
            (manifests && json_integer_value(size) > (json_int_t)RP_CACHE_MANIFEST_MAX)) {
            *why = "metadata: an entry has a missing or invalid size";
            return -1;
        }
        it->size = (uint64_t)json_integer_value(size);
        if (manifests) {
            /* Bundles exported from a cache that kept Content-Type parameters carry them. */
            it->media_type = rp_xstrdup(mt ? mt : "");
            rp_media_type_normalize(it->media_type);
            if (!media_type_ok(it->media_type)) {
                *why = "metadata: a manifest has a missing or invalid media_type";
                return -1;
            }
        }
        if (parse_repos(json_object_get(o, "repos"), it, why) != 0)
            return -1;
    }
    return 0;
}

/* Digest lookups over the metadata: an open-addressing table of indexes. */
struct dindex {
    size_t *slots; /* index + 1; 0 = empty */
    size_t mask;
};

static void dindex_init(struct dindex *x, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2 + 1)
        cap *= 2;
    x->slots = rp_xcalloc(cap, sizeof(*x->slots));
    x->mask = cap - 1;
}

/* Index of digest among items, or (size_t)-1. */
static size_t dindex_find(const struct dindex *x, const struct bundle_item *items, const char *d)
{
    for (size_t s = rp_str_hash(d) & x->mask;; s = (s + 1) & x->mask) {
        if (!x->slots[s])
            return (size_t)-1;
        if (strcmp(items[x->slots[s] - 1].digest, d) == 0)
            return x->slots[s] - 1;
    }
}

/* Adds item i; false when its digest is there already. */
static bool dindex_add(struct dindex *x, const struct bundle_item *items, size_t i)
{
    if (dindex_find(x, items, items[i].digest) != (size_t)-1)
        return false;
    size_t s = rp_str_hash(items[i].digest) & x->mask;
    while (x->slots[s])
        s = (s + 1) & x->mask;
    x->slots[s] = i + 1;
    return true;
}

/* What jansson may allocate while it parses a bundle's metadata. Its tree of real metadata
 * takes about 5 times the text (measured: 100,000 blobs, 15 MB of JSON, 78 MB); a crafted
 * one of empty objects takes 73 times, and 64 MiB of it (LZ4 shrinks that to 260 KB) took
 * 5 GB. Past the budget its allocations fail, and the bundle is refused. */
#define META_BUDGET(len) (10 * (int64_t)(len) + ((int64_t)16 << 20))

static struct {
    bool on, refused;
    int64_t used, limit;
} jbudget;

static void *jbudget_malloc(size_t n)
{
    if (jbudget.on && jbudget.used + (int64_t)n > jbudget.limit) {
        jbudget.refused = true;
        return NULL;
    }
    void *p = malloc(n);
    if (p && jbudget.on)
        jbudget.used += (int64_t)malloc_usable_size(p);
    return p;
}

static void jbudget_free(void *p)
{
    if (p && jbudget.on)
        jbudget.used -= (int64_t)malloc_usable_size(p);
    free(p);
}

static int meta_parse(const char *text, size_t len, struct rp_bundle_meta **out, char *err,
                      size_t errlen)
{
    const char *why = NULL;
    struct rp_bundle_meta *m = rp_xcalloc(1, sizeof(*m));
    struct dindex mi = {0}, bi = {0};
    json_error_t je;
    /* Both wrap malloc and free: objects from before or after the parse mix safely. */
    json_set_alloc_funcs(jbudget_malloc, jbudget_free);
    jbudget.used = 0;
    jbudget.refused = false;
    jbudget.limit = META_BUDGET(len);
    jbudget.on = true;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    jbudget.on = false;
    int rc = -1;
    if (jbudget.refused) {
        json_decref(root); /* NULL, or a tree a failed allocation left short */
        char sz[32], b[32];
        rp_format_bytes(len, sz, sizeof(sz));
        rp_format_bytes((uint64_t)jbudget.limit, b, sizeof(b));
        snprintf(err, errlen,
                 "metadata (%s of JSON) needs more than %s of memory to read, far more than "
                 "any export writes",
                 sz, b);
        rp_bundle_meta_free(m);
        return -1;
    }
    if (!json_is_object(root)) {
        why = "metadata is not a JSON object";
        goto out;
    }
    const char *fmt = jstr(root, "format");
    json_t *ver = json_object_get(root, "version");
    if (!fmt || strcmp(fmt, "regproxy-bundle") != 0 || !json_is_integer(ver) ||
        json_integer_value(ver) != RP_BUNDLE_VERSION) {
        why = "metadata does not describe a version 1 regproxy bundle";
        goto out;
    }
    if (parse_items(json_object_get(root, "manifests"), true, &m->manifests, &m->n_manifests,
                    &why) != 0 ||
        parse_items(json_object_get(root, "blobs"), false, &m->blobs, &m->n_blobs, &why) != 0)
        goto out;
    dindex_init(&mi, m->n_manifests);
    dindex_init(&bi, m->n_blobs);
    for (size_t i = 0; i < m->n_manifests; i++)
        if (!dindex_add(&mi, m->manifests, i)) {
            why = "metadata lists a manifest twice";
            goto out;
        }
    for (size_t i = 0; i < m->n_blobs; i++)
        if (!dindex_add(&bi, m->blobs, i)) {
            why = "metadata lists a blob twice";
            goto out;
        }
    json_t *images = json_object_get(root, "images");
    if (!json_is_array(images) || json_array_size(images) > META_ITEMS_MAX) {
        why = "metadata: \"images\" is not an array";
        goto out;
    }
    m->images = rp_xcalloc(json_array_size(images) + 1, sizeof(*m->images));
    size_t i;
    json_t *o;
    json_array_foreach(images, i, o)
    {
        struct bundle_image *im = &m->images[m->n_images];
        const char *reg = jstr(o, "registry"), *repo = jstr(o, "repo"), *tag = jstr(o, "tag"),
                   *d = jstr(o, "digest");
        json_t *tt = json_object_get(o, "tag_time");
        if (!reg || !registry_name_ok(reg) || !repo || !rp_valid_name(repo, strlen(repo)) ||
            (json_object_get(o, "tag") && (!tag || !rp_valid_tag(tag, strlen(tag)))) || !d ||
            !rp_valid_digest(d, strlen(d)) || (tt && !json_is_integer(tt))) {
            why = "metadata: an image has a missing or invalid registry, repo, tag or digest";
            goto out;
        }
        if (dindex_find(&mi, m->manifests, d) == (size_t)-1) {
            why = "metadata: an image's digest is not among the bundle's manifests";
            goto out;
        }
        im->registry = rp_xstrdup(reg);
        im->repo = rp_xstrdup(repo);
        im->tag = tag ? rp_xstrdup(tag) : NULL;
        snprintf(im->digest, sizeof(im->digest), "%s", d);
        im->tag_time = tt && json_integer_value(tt) >= 0 ? (int64_t)json_integer_value(tt) : -1;
        m->n_images++;
    }
    rc = 0;
out:
    if (rc != 0) {
        if (!root)
            snprintf(err, errlen, "metadata is not JSON: %s", je.text);
        else
            snprintf(err, errlen, "%s", why);
        rp_bundle_meta_free(m);
    } else {
        *out = m;
    }
    free(mi.slots);
    free(bi.slots);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------- reader --- */

struct reader {
    const struct rp_bundle_src *src;
    EVP_MD_CTX *sha; /* of the stream, for the trailer */
    uint64_t pos, total;
    char *err;
    size_t errlen;
};

/* Exactly n bytes, hashed into the stream sum when hash is set. */
static int rd(struct reader *r, void *buf, size_t n, bool hash)
{
    size_t got = 0;
    while (got < n) {
        const char *why = NULL;
        long k = r->src->read(r->src->arg, (char *)buf + got, n - got, &why);
        if (k < 0) {
            snprintf(r->err, r->errlen, "reading the bundle at byte %llu: %s",
                     (unsigned long long)(r->pos + got), why ? why : "read error");
            return -1;
        }
        if (k == 0) {
            snprintf(r->err, r->errlen,
                     "the bundle is truncated: it ends at byte %llu, its header says %llu",
                     (unsigned long long)(r->pos + got), (unsigned long long)r->total);
            return -1;
        }
        got += (size_t)k;
    }
    if (hash)
        EVP_DigestUpdate(r->sha, buf, n);
    r->pos += n;
    return 0;
}

/* Not (total + part_size - 1) / part_size: a hostile header's part_size near 2^64 wraps that
 * to 0 parts, and the importer then opened a part it had not allocated. */
static uint64_t parts_count(uint64_t total, uint64_t part_size)
{
    return part_size ? total / part_size + (total % part_size != 0) : 1;
}

static int parse_header(const unsigned char *h, uint64_t *total, uint64_t *part_size, char *err,
                        size_t errlen)
{
    if (memcmp(h, RP_BUNDLE_MAGIC, 8) != 0) {
        snprintf(err, errlen, "not a regproxy bundle (bad magic)");
        return -1;
    }
    uint32_t version = get_u32(h + 8);
    if (version > RP_BUNDLE_VERSION) {
        snprintf(err, errlen,
                 "the bundle has format version %u, newer than this regproxy reads (%d): "
                 "import it with a newer regproxy",
                 version, RP_BUNDLE_VERSION);
        return -1;
    }
    if (version == 0 || get_u32(h + 12) != 0) {
        snprintf(err, errlen, "bad bundle header (version %u, flags %u)", version, get_u32(h + 12));
        return -1;
    }
    *total = get_u64(h + 16);
    *part_size = get_u64(h + 24);
    if (*total < RP_BUNDLE_HEADER_LEN + 2 * RP_BUNDLE_RECORD_HEAD + TRAILER_LEN ||
        *total > (UINT64_C(1) << 62) || (*part_size && *part_size < SPLIT_MIN) ||
        parts_count(*total, *part_size) > PARTS_MAX) {
        snprintf(err, errlen, "bad bundle header (length %llu, part size %llu)",
                 (unsigned long long)*total, (unsigned long long)*part_size);
        return -1;
    }
    return 0;
}

int rp_bundle_read(const struct rp_bundle_src *src, unsigned flags,
                   const struct rp_bundle_sink *sink, void *arg, struct rp_bundle_meta **metap,
                   char *err, size_t errlen)
{
    static const struct rp_bundle_sink none;
    struct reader r = {.src = src, .err = err, .errlen = errlen};
    struct rp_bundle_meta *meta = NULL;
    unsigned char hdr[RP_BUNDLE_HEADER_LEN], rh[RP_BUNDLE_RECORD_HEAD];
    char *data = NULL, *plain = NULL;
    unsigned char *chunk = NULL;
    EVP_MD_CTX *bmd = NULL;
    size_t next_manifest = 0, next_blob = 0;
    uint64_t part_size, rec_start = 0;
    bool located = false; /* err is about the whole stream, not where reading stopped */
    bool trusted = (flags & RP_BUNDLE_F_TRUSTED) != 0;
    int rc = -1;
    if (!sink)
        sink = &none;
    if (metap)
        *metap = NULL;
    err[0] = '\0';
    r.sha = EVP_MD_CTX_new();
    bmd = EVP_MD_CTX_new();
    if (!r.sha || !bmd || EVP_DigestInit_ex(r.sha, EVP_sha256(), NULL) != 1) {
        snprintf(err, errlen, "cannot hash");
        goto out;
    }
    r.total = RP_BUNDLE_HEADER_LEN;
    if (rd(&r, hdr, sizeof(hdr), true) != 0 ||
        parse_header(hdr, &r.total, &part_size, err, errlen) != 0)
        goto out;
    for (;;) {
        if (r.total - r.pos < sizeof(rh)) {
            snprintf(err, errlen, "the bundle ends at byte %llu without a trailer",
                     (unsigned long long)r.pos);
            goto out;
        }
        rec_start = r.pos;
        /* The trailer's sum covers every byte before its record: hash a head only once
         * it is known not to be the trailer's. */
        if (rd(&r, rh, sizeof(rh), false) != 0)
            goto out;
        int type = rh[0];
        uint32_t name_len = get_u32(rh + 4);
        uint64_t data_len = get_u64(rh + 8);
        if (rh[1] || rh[2] || rh[3] || name_len > NAME_MAX_LEN || data_len > r.total - r.pos ||
            name_len > r.total - r.pos - data_len) {
            snprintf(err, errlen, "bad record at byte %llu (type 0x%02x, name %u, data %llu)",
                     (unsigned long long)(r.pos - sizeof(rh)), type, name_len,
                     (unsigned long long)data_len);
            goto out;
        }
        if (type == REC_TRAILER) {
            unsigned char want[TRAILER_LEN], got[EVP_MAX_MD_SIZE];
            unsigned int gl = 0;
            if (!meta || next_manifest != meta->n_manifests || next_blob != meta->n_blobs) {
                snprintf(err, errlen,
                         "the bundle is incomplete: the trailer comes after %zu of %zu "
                         "manifests and %zu of %zu blobs",
                         next_manifest, meta ? meta->n_manifests : 0, next_blob,
                         meta ? meta->n_blobs : 0);
                goto out;
            }
            if (name_len != 0 || data_len != TRAILER_LEN) {
                snprintf(err, errlen, "bad trailer record");
                goto out;
            }
            EVP_DigestFinal_ex(r.sha, got, &gl);
            if (rd(&r, want, sizeof(want), false) != 0)
                goto out;
            if (!trusted && memcmp(got, want, TRAILER_LEN) != 0) {
                snprintf(err, errlen,
                         "the bundle's checksum does not match its content "
                         "(corrupted in transit?)");
                located = true;
                goto out;
            }
            if (r.pos != r.total) {
                snprintf(err, errlen, "the bundle ends at byte %llu but its header says %llu",
                         (unsigned long long)r.pos, (unsigned long long)r.total);
                goto out;
            }
            unsigned char extra;
            const char *why = NULL;
            if (!trusted && src->read(src->arg, &extra, 1, &why) != 0) {
                snprintf(err, errlen, "data after the bundle's trailer");
                goto out;
            }
            break;
        }
        EVP_DigestUpdate(r.sha, rh, sizeof(rh));
        char name[NAME_MAX_LEN + 1];
        if (rd(&r, name, name_len, true) != 0)
            goto out;
        name[name_len] = '\0';
        if (type == REC_META) {
            if (meta || name_len) {
                snprintf(err, errlen, "unexpected metadata record at byte %llu",
                         (unsigned long long)r.pos);
                goto out;
            }
            if (data_len > LZ4F_compressFrameBound(RP_BUNDLE_META_MAX, NULL)) {
                snprintf(err, errlen, "metadata record too large");
                goto out;
            }
            data = rp_xmalloc((size_t)data_len + 1);
            size_t plen;
            const char *why = NULL;
            if (rd(&r, data, (size_t)data_len, true) != 0)
                goto out;
            if (lz4_decode(data, (size_t)data_len, RP_BUNDLE_META_MAX, &plain, &plen, &why) != 0) {
                snprintf(err, errlen, "metadata: %s", why);
                goto out;
            }
            if (meta_parse(plain, plen, &meta, err, errlen) != 0)
                goto out;
            free(data);
            free(plain);
            data = plain = NULL;
            if (sink->meta && sink->meta(arg, meta, err, errlen) != 0)
                goto sink_failed;
        } else if (type == REC_MANIFEST) {
            if (!meta || next_blob || next_manifest == meta->n_manifests ||
                strcmp(name, meta->manifests[next_manifest].digest) != 0) {
                snprintf(err, errlen, "unexpected manifest record %s at byte %llu",
                         printable(name, name_len) ? name : "?", (unsigned long long)r.pos);
                goto out;
            }
            const struct bundle_item *it = &meta->manifests[next_manifest++];
            if (data_len > LZ4F_compressFrameBound(RP_CACHE_MANIFEST_MAX, NULL)) {
                snprintf(err, errlen, "manifest %s: record too large", it->digest);
                goto out;
            }
            data = rp_xmalloc((size_t)data_len + 1);
            size_t plen;
            const char *why = NULL;
            char digest[RP_CACHE_DIGEST_BUF];
            if (rd(&r, data, (size_t)data_len, true) != 0)
                goto out;
            if (lz4_decode(data, (size_t)data_len, (size_t)it->size, &plain, &plen, &why) != 0) {
                snprintf(err, errlen, "manifest %s: %s", it->digest, why);
                goto out;
            }
            rp_digest_of(it->digest, plain, plen, digest);
            if (plen != it->size || strcmp(digest, it->digest) != 0) {
                snprintf(err, errlen, "manifest %s: content does not match its digest", it->digest);
                goto out;
            }
            if (sink->manifest &&
                sink->manifest(arg, it->digest, it->media_type, plain, plen, err, errlen) != 0)
                goto sink_failed;
            free(data);
            free(plain);
            data = plain = NULL;
        } else if (type == REC_BLOB) {
            if (!meta || next_manifest != meta->n_manifests || next_blob == meta->n_blobs ||
                strcmp(name, meta->blobs[next_blob].digest) != 0) {
                snprintf(err, errlen, "unexpected blob record %s at byte %llu",
                         printable(name, name_len) ? name : "?", (unsigned long long)r.pos);
                goto out;
            }
            const struct bundle_item *it = &meta->blobs[next_blob++];
            if (data_len != it->size) {
                snprintf(err, errlen, "blob %s: %llu bytes, the metadata says %llu", it->digest,
                         (unsigned long long)data_len, (unsigned long long)it->size);
                goto out;
            }
            int want =
                sink->blob_begin ? sink->blob_begin(arg, it->digest, it->size, err, errlen) : 1;
            if (want < 0)
                goto sink_failed;
            if (want == 1 && trusted && src->skip) {
                const char *why = NULL;
                if (src->skip(src->arg, data_len, &why) != 0) {
                    snprintf(err, errlen, "blob %s: %s", it->digest, why ? why : "seek failed");
                    goto out;
                }
                r.pos += data_len;
                continue;
            }
            const EVP_MD *alg = rp_digest_md(it->digest);
            if (!alg || EVP_DigestInit_ex(bmd, alg, NULL) != 1) {
                snprintf(err, errlen, "cannot hash");
                goto out;
            }
            if (!chunk)
                chunk = rp_xmalloc(IO_CHUNK);
            for (uint64_t left = data_len; left > 0;) {
                size_t n = left < IO_CHUNK ? (size_t)left : IO_CHUNK;
                if (rd(&r, chunk, n, !trusted) != 0)
                    goto out;
                EVP_DigestUpdate(bmd, chunk, n);
                if (want == 0 && sink->blob_data && sink->blob_data(arg, chunk, n, err, errlen))
                    goto sink_failed;
                left -= n;
            }
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int mdlen = 0;
            EVP_DigestFinal_ex(bmd, md, &mdlen);
            if (!rp_digest_matches(it->digest, md, mdlen)) {
                snprintf(err, errlen, "blob %s: content does not match its digest", it->digest);
                goto out;
            }
            if (want == 0 && sink->blob_end && sink->blob_end(arg, err, errlen) != 0)
                goto sink_failed;
        } else {
            snprintf(err, errlen, "unknown record type 0x%02x at byte %llu", type,
                     (unsigned long long)(r.pos - sizeof(rh) - name_len));
            goto out;
        }
    }
    rc = 0;
    if (metap) {
        *metap = meta;
        meta = NULL;
    }
    goto out;
sink_failed:
    located = true; /* the sink's reason (a full disk, a missing blob) is not about a part */
out:
    if (rc != 0 && !located && src->where && r.pos > 0) {
        /* The record being read when it failed, up to where reading stopped: a blob that
         * does not match its digest may have its damage in any part it spans. */
        char loc[1024];
        loc[0] = '\0';
        src->where(src->arg, rec_start, r.pos > rec_start ? r.pos : rec_start + 1, loc,
                   sizeof(loc));
        size_t el = strlen(err);
        if (loc[0] && el + 1 < errlen)
            snprintf(err + el, errlen - el, " (%s)", loc);
    }
    rp_bundle_meta_free(meta);
    free(data);
    free(plain);
    free(chunk);
    EVP_MD_CTX_free(r.sha);
    EVP_MD_CTX_free(bmd);
    return rc;
}

/* ------------------------------------------------------------ cache access --- */

/* The cache's lock is taken by whoever has it open; import checks it before its long
 * verification pass so a running proxy is reported at once, not after it. The definitive
 * check is rp_cache_open's, which refuses a symlinked lock: not followed here either. */
static bool cache_lock_held(const char *dir)
{
    char *path = rp_xasprintf("%s/lock", dir);
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return false;
    bool held = flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    close(fd); /* releases it if we got it */
    return held;
}

/* The sync hook of an import: the cache notes what it left unsynced, and the import syncs
 * at its own points (rp_cache_sync), not on request. */
static void import_sync_later(void *arg)
{
    (void)arg;
}

struct rp_cache *rp_offline_open_cache(const struct rp_conf *conf, const char *cmd,
                                       uint64_t max_size)
{
    if (cache_lock_held(conf->cache.dir)) {
        fprintf(stderr,
                "regproxy %s: the cache %s is in use (its lock is held, by a running regproxy "
                "serve or mirror?): stop it first; one process owns a cache at a time\n",
                cmd, conf->cache.dir);
        return NULL;
    }
    char err[512];
    struct rp_cache *c = rp_cache_open(conf->cache.dir, max_size, err, sizeof(err));
    if (!c)
        fprintf(stderr, "regproxy %s: %s\n", cmd, err);
    return c;
}

/* ----------------------------------------------------------- collecting images --- */

/* What an export writes: every manifest and blob of the images, each with the
 * repositories it is linked for. */
struct collect {
    struct rp_cache *c;
    struct bundle_item *manifests, *blobs;
    size_t n_manifests, n_blobs, alloc_m, alloc_b;
    struct dindex mi, bi;
    struct bundle_image *images;
    size_t n_images;
    uint64_t blob_bytes;
    size_t skipped_children; /* index children not in the cache (not mirrored) */
};

static void dindex_grow(struct dindex *x, const struct bundle_item *items, size_t n)
{
    if ((n + 1) * 2 <= x->mask + 1 && x->slots)
        return;
    free(x->slots);
    dindex_init(x, n * 2 + 16);
    for (size_t i = 0; i < n; i++)
        dindex_add(x, items, i);
}

static void add_repo(struct bundle_item *it, const char *reg, const char *repo)
{
    for (size_t i = 0; i < it->n_repos; i++)
        if (strcmp(it->repos[i].registry, reg) == 0 && strcmp(it->repos[i].repo, repo) == 0)
            return;
    it->repos = rp_xrealloc(it->repos, (it->n_repos + 1) * sizeof(*it->repos));
    it->repos[it->n_repos].registry = rp_xstrdup(reg);
    it->repos[it->n_repos].repo = rp_xstrdup(repo);
    it->n_repos++;
}

static struct bundle_item *new_item(struct bundle_item **v, size_t *n, size_t *alloc,
                                    struct dindex *x, const char *digest)
{
    if (*n == *alloc) {
        *alloc = *alloc ? *alloc * 2 : 64;
        *v = rp_xrealloc(*v, *alloc * sizeof(**v));
    }
    struct bundle_item *it = &(*v)[*n];
    memset(it, 0, sizeof(*it));
    snprintf(it->digest, sizeof(it->digest), "%s", digest);
    (*n)++;
    dindex_grow(x, *v, *n - 1);
    dindex_add(x, *v, *n - 1);
    return it;
}

static int collect_blob(struct collect *k, const char *reg, const char *repo,
                        const struct rp_manifest_ref *ref, char *err, size_t errlen)
{
    size_t i = k->bi.slots ? dindex_find(&k->bi, k->blobs, ref->digest) : (size_t)-1;
    if (i != (size_t)-1) {
        add_repo(&k->blobs[i], reg, repo);
        return 0;
    }
    struct rp_cache_blob b;
    if (!rp_cache_linked(k->c, reg, repo, ref->digest) ||
        rp_cache_blob_open(k->c, ref->digest, &b) != RP_CACHE_OK) {
        snprintf(err, errlen, "blob %s of %s/%s is not in the cache (mirror the image first)",
                 ref->digest, reg, repo);
        return -1;
    }
    close(b.fd);
    rp_cache_release(k->c, ref->digest);
    if ((int64_t)b.size != ref->size) {
        snprintf(err, errlen, "blob %s of %s/%s: cached size %llu, the manifest says %lld",
                 ref->digest, reg, repo, (unsigned long long)b.size, (long long)ref->size);
        return -1;
    }
    struct bundle_item *it = new_item(&k->blobs, &k->n_blobs, &k->alloc_b, &k->bi, ref->digest);
    it->size = b.size;
    k->blob_bytes += b.size;
    add_repo(it, reg, repo);
    return 0;
}

/* Whether a manifest and all it references are in the cache (an index: at least one child,
 * recursively), collecting nothing. */
static bool manifest_whole(struct collect *k, const char *reg, const char *repo, const char *digest,
                           int depth)
{
    struct rp_cache_manifest m;
    if (!rp_cache_linked(k->c, reg, repo, digest) ||
        rp_cache_manifest_get(k->c, digest, &m) != RP_CACHE_OK)
        return false;
    struct rp_manifest_refs refs;
    char why[256];
    bool whole = rp_manifest_refs(m.data, m.len, &refs, why, sizeof(why)) == 0;
    rp_cache_manifest_free(&m);
    if (!whole)
        return false;
    size_t children = 0;
    for (size_t r = 0; r < refs.n && whole; r++) {
        const struct rp_manifest_ref *ref = &refs.v[r];
        if (ref->kind == RP_REF_CHILD)
            children += depth < 2 && manifest_whole(k, reg, repo, ref->digest, depth + 1);
        else
            whole = rp_cache_linked(k->c, reg, repo, ref->digest) &&
                    rp_cache_blob_present(k->c, ref->digest);
    }
    if (refs.is_index && children == 0)
        whole = false;
    rp_manifest_refs_free(&refs);
    return whole;
}

/* Whether the manifest is collected for reg/repo: collect_manifest adds it before what it
 * references, and any failure there fails the whole export. */
static bool collected(const struct collect *k, const char *reg, const char *repo,
                      const char *digest)
{
    size_t i = k->mi.slots ? dindex_find(&k->mi, k->manifests, digest) : (size_t)-1;
    if (i == (size_t)-1)
        return false;
    const struct bundle_item *it = &k->manifests[i];
    for (size_t r = 0; r < it->n_repos; r++)
        if (strcmp(it->repos[r].registry, reg) == 0 && strcmp(it->repos[r].repo, repo) == 0)
            return true;
    return false;
}

/* 0, 1 when optional and not cached, -1 with err. */
static int collect_manifest(struct collect *k, const char *reg, const char *repo,
                            const char *digest, bool optional, int depth, char *err, size_t errlen)
{
    struct rp_cache_manifest m;
    if (!rp_cache_linked(k->c, reg, repo, digest) ||
        rp_cache_manifest_get(k->c, digest, &m) != RP_CACHE_OK) {
        if (optional)
            return 1;
        snprintf(err, errlen, "manifest %s of %s/%s is not in the cache (mirror it first)", digest,
                 reg, repo);
        return -1;
    }
    size_t i = k->mi.slots ? dindex_find(&k->mi, k->manifests, digest) : (size_t)-1;
    if (i == (size_t)-1) {
        struct bundle_item *it =
            new_item(&k->manifests, &k->n_manifests, &k->alloc_m, &k->mi, digest);
        /* As the proxy keeps them now: a cache filled before it cut Content-Type parameters
         * has "; charset=utf-8" types, which the bundle's reader refuses. */
        it->media_type = rp_xstrdup(m.media_type);
        rp_media_type_normalize(it->media_type);
        it->size = m.len;
        it->data = lz4_encode(m.data, m.len, &it->data_len);
        i = k->n_manifests - 1;
    }
    add_repo(&k->manifests[i], reg, repo);
    struct rp_manifest_refs refs;
    int rc = -1;
    char why[256];
    if (rp_manifest_refs(m.data, m.len, &refs, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "manifest %s of %s/%s: %s", digest, reg, repo, why);
        rp_cache_manifest_free(&m);
        return -1;
    }
    size_t present = 0;
    for (size_t r = 0; r < refs.n; r++) {
        const struct rp_manifest_ref *ref = &refs.v[r];
        int e;
        if (ref->kind == RP_REF_CHILD) {
            /* Collected already, with all it references: indexes may list a child many
             * times, and walking every path took refs^depth steps. */
            if (collected(k, reg, repo, ref->digest)) {
                present++;
                continue;
            }
            /* Children not cached were left out by the mirror's --platform; one whose
             * manifest came in without its blobs (a client's inspect, an interrupted
             * mirror) is left out the same way, not a reason to refuse the image. */
            e = depth < 2 && manifest_whole(k, reg, repo, ref->digest, depth + 1)
                    ? collect_manifest(k, reg, repo, ref->digest, true, depth + 1, err, errlen)
                    : 1;
            if (e == 1)
                k->skipped_children++;
            else if (e == 0)
                present++;
        } else {
            e = collect_blob(k, reg, repo, ref, err, errlen);
        }
        if (e < 0)
            goto out;
    }
    if (refs.is_index && present == 0) {
        snprintf(err, errlen, "index %s of %s/%s: none of its manifests is in the cache", digest,
                 reg, repo);
        goto out;
    }
    rc = 0;
out:
    rp_manifest_refs_free(&refs);
    rp_cache_manifest_free(&m);
    return rc;
}

static void collect_free(struct collect *k)
{
    items_free(k->manifests, k->n_manifests);
    items_free(k->blobs, k->n_blobs);
    free(k->mi.slots);
    free(k->bi.slots);
    for (size_t i = 0; i < k->n_images; i++) {
        free(k->images[i].registry);
        free(k->images[i].repo);
        free(k->images[i].tag);
    }
    free(k->images);
}

/* A tag that moved between mirrors is in the pins file once per digest: only one image
 * keeps it, the one the cache's tag names (tag_time >= 0), else the last listed (the newest
 * mirror); the others go by digest. Else import would set the tag once per image, so that
 * importing the bundle again rewrote it, and a crash between the writes left it on an old
 * digest. */
static void one_image_per_tag(struct collect *k)
{
    for (size_t i = 0; i < k->n_images; i++) {
        struct bundle_image *a = &k->images[i];
        for (size_t j = 0; a->tag && j < k->n_images; j++) {
            const struct bundle_image *b = &k->images[j];
            if (j == i || !b->tag || strcmp(a->tag, b->tag) != 0 || strcmp(a->repo, b->repo) != 0 ||
                strcmp(a->registry, b->registry) != 0)
                continue;
            bool a_cur = a->tag_time >= 0, b_cur = b->tag_time >= 0;
            if ((b_cur && !a_cur) || (b_cur == a_cur && j > i)) {
                free(a->tag);
                a->tag = NULL;
            }
        }
    }
}

/* The images to export (the list, or the pins file) and everything they reference. */
static int collect_all(struct collect *k, const struct rp_conf *conf, const char *list)
{
    struct rp_image_ref *refs = NULL;
    size_t n = 0;
    char err[1024];
    int rc = -1;
    if (list ? rp_image_list_load(conf, list, &refs, &n, err, sizeof(err))
             : rp_pins_load(conf, &refs, &n, err, sizeof(err))) {
        fprintf(stderr, "regproxy export: %s\n", err);
        return -1;
    }
    if (n == 0) {
        fprintf(stderr, "regproxy export: no images to export (%s)\n",
                list ? "the list is empty" : "nothing was mirrored or imported into this cache");
        goto out;
    }
    k->images = rp_xcalloc(n, sizeof(*k->images));
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const struct rp_image_ref *r = &refs[i];
        char name[RP_TARGET_MAX];
        rp_image_ref_format(r, name, sizeof(name));
        struct bundle_image *im = &k->images[k->n_images];
        im->tag_time = -1;
        if (r->digest[0]) {
            snprintf(im->digest, sizeof(im->digest), "%s", r->digest);
            /* A tag whose record names this digest keeps its time; else the export time. */
            char cur[RP_CACHE_DIGEST_BUF];
            int64_t t;
            if (r->tag[0] &&
                rp_cache_tag_get(k->c, r->reg->name, r->repo, r->tag, cur, sizeof(cur), &t) ==
                    RP_CACHE_OK &&
                strcmp(cur, r->digest) == 0)
                im->tag_time = t;
        } else if (rp_cache_tag_get(k->c, r->reg->name, r->repo, r->tag, im->digest,
                                    sizeof(im->digest), &im->tag_time) != RP_CACHE_OK) {
            fprintf(stderr, "regproxy export: %s: the tag is not in the cache (mirror it first)\n",
                    name);
            bad++;
            continue;
        }
        if (collect_manifest(k, r->reg->name, r->repo, im->digest, false, 0, err, sizeof(err)) !=
            0) {
            fprintf(stderr, "regproxy export: %s: %s\n", name, err);
            bad++;
            continue;
        }
        im->registry = rp_xstrdup(r->reg->name);
        im->repo = rp_xstrdup(r->repo);
        im->tag = r->tag[0] ? rp_xstrdup(r->tag) : NULL;
        k->n_images++;
    }
    if (bad) {
        fprintf(stderr, "regproxy export: %d of %zu images incomplete; nothing written\n", bad, n);
        goto out;
    }
    one_image_per_tag(k);
    rc = 0;
out:
    free(refs);
    return rc;
}

static json_t *repos_json(const struct bundle_item *it)
{
    json_t *a = json_array();
    for (size_t i = 0; i < it->n_repos; i++)
        json_array_append_new(a, json_pack("[s,s]", it->repos[i].registry, it->repos[i].repo));
    return a;
}

static char *meta_json(const struct collect *k)
{
    json_t *images = json_array(), *mans = json_array(), *blobs = json_array();
    for (size_t i = 0; i < k->n_images; i++) {
        const struct bundle_image *im = &k->images[i];
        json_t *o = json_pack("{s:s, s:s, s:s}", "registry", im->registry, "repo", im->repo,
                              "digest", im->digest);
        if (im->tag)
            json_object_set_new(o, "tag", json_string(im->tag));
        if (im->tag && im->tag_time >= 0)
            json_object_set_new(o, "tag_time", json_integer(im->tag_time));
        json_array_append_new(images, o);
    }
    for (size_t i = 0; i < k->n_manifests; i++) {
        const struct bundle_item *it = &k->manifests[i];
        json_array_append_new(mans, json_pack("{s:s, s:s, s:I, s:o}", "digest", it->digest,
                                              "media_type", it->media_type, "size",
                                              (json_int_t)it->size, "repos", repos_json(it)));
    }
    for (size_t i = 0; i < k->n_blobs; i++) {
        const struct bundle_item *it = &k->blobs[i];
        json_array_append_new(blobs, json_pack("{s:s, s:I, s:o}", "digest", it->digest, "size",
                                               (json_int_t)it->size, "repos", repos_json(it)));
    }
    json_t *root =
        json_pack("{s:s, s:i, s:s, s:I, s:o, s:o, s:o}", "format", "regproxy-bundle", "version",
                  RP_BUNDLE_VERSION, "regproxy", RP_VERSION, "created", (json_int_t)rp_wall_s(),
                  "images", images, "manifests", mans, "blobs", blobs);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) {
        rp_error("bundle: cannot encode the metadata");
        abort();
    }
    return s;
}

/* ------------------------------------------------------------------- writer --- */

/* The bundle stream into one file or parts of at most `split` bytes. Each file is written
 * under NAME.tmp and renamed only when the whole stream is written and synced, so an
 * interrupted export never leaves something that looks like a bundle. */
struct writer {
    const char *base;
    uint64_t split;
    int fd;
    uint64_t in_part, pos;
    EVP_MD_CTX *sha;
    char **names; /* final names of the parts written so far */
    size_t n;
    struct rp_progress *prog;
};

/* A temp file of an export's output, made new: the output often goes to a directory others
 * can write (shared media, a transfer area), and a symlink planted under the temp name was
 * followed, so that the export, usually run as root, truncated and overwrote the file it
 * named. The name is removed first (a leftover of an interrupted export), then created
 * exclusively, never through a symlink. */
static int create_new(const char *path)
{
    if (unlink(path) != 0 && errno != ENOENT)
        return -1;
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
}

static char *part_name(const char *base, uint64_t split, size_t i)
{
    return split ? rp_xasprintf("%s.%03zu", base, i) : rp_xstrdup(base);
}

static int w_close_part(struct writer *w)
{
    if (w->fd < 0)
        return 0;
    int fd = w->fd;
    w->fd = -1;
    if (fsync(fd) != 0) {
        close(fd);
        return -1;
    }
    return close(fd);
}

static int w_open_part(struct writer *w)
{
    char *name = part_name(w->base, w->split, w->n);
    char *tmp = rp_xasprintf("%s.tmp", name);
    w->fd = create_new(tmp);
    free(tmp);
    if (w->fd < 0) {
        free(name);
        return -1;
    }
    w->names = rp_xrealloc(w->names, (w->n + 1) * sizeof(*w->names));
    w->names[w->n++] = name;
    w->in_part = 0;
    return 0;
}

static int w_write(struct writer *w, const void *p, size_t n, bool hash)
{
    if (hash)
        EVP_DigestUpdate(w->sha, p, n);
    const char *c = p;
    while (n > 0) {
        if (w->fd < 0 || (w->split && w->in_part == w->split)) {
            if (w_close_part(w) != 0 || w_open_part(w) != 0)
                return -1;
        }
        size_t k = n;
        if (w->split && k > w->split - w->in_part)
            k = (size_t)(w->split - w->in_part);
        ssize_t r = write(w->fd, c, k);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
        w->in_part += (uint64_t)r;
        w->pos += (uint64_t)r;
        w->prog->bytes = w->pos;
    }
    rp_progress_update(w->prog, false);
    return 0;
}

static int w_finish(struct writer *w)
{
    if (w_close_part(w) != 0)
        return -1;
    for (size_t i = 0; i < w->n; i++) {
        char *tmp = rp_xasprintf("%s.tmp", w->names[i]);
        int e = rename(tmp, w->names[i]);
        free(tmp);
        if (e != 0)
            return -1;
    }
    /* Make the renames durable: removable media are unplugged right after. */
    char *dir = rp_xstrdup(w->base);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

static void w_cleanup(struct writer *w, bool failed)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    for (size_t i = 0; i < w->n; i++) {
        if (failed) {
            char *tmp = rp_xasprintf("%s.tmp", w->names[i]);
            unlink(tmp);
            free(tmp);
        }
        free(w->names[i]);
    }
    free(w->names);
    w->names = NULL;
    w->n = 0;
    EVP_MD_CTX_free(w->sha);
    w->sha = NULL;
}

static int w_record(struct writer *w, int type, const char *name, uint64_t data_len)
{
    unsigned char h[RP_BUNDLE_RECORD_HEAD];
    memset(h, 0, sizeof(h));
    h[0] = (unsigned char)type;
    size_t nl = name ? strlen(name) : 0;
    put_u32(h + 4, (uint32_t)nl);
    put_u64(h + 8, data_len);
    return w_write(w, h, sizeof(h), type != REC_TRAILER) ||
           (nl && w_write(w, name, nl, type != REC_TRAILER));
}

static uint64_t record_len(const char *name, uint64_t data_len)
{
    return RP_BUNDLE_RECORD_HEAD + (name ? strlen(name) : 0) + data_len;
}

/* Copies a cached blob into the writer, checking its digest on the way: a damaged cache
 * file must not travel on to the disconnected side. */
static int write_blob(struct rp_cache *c, const struct bundle_item *it,
                      int (*out)(void *arg, const void *p, size_t n), void *arg, char *err,
                      size_t errlen)
{
    struct rp_cache_blob b;
    int rc = -1;
    if (rp_cache_blob_open(c, it->digest, &b) != RP_CACHE_OK) {
        snprintf(err, errlen, "blob %s vanished from the cache", it->digest);
        return -1;
    }
    posix_fadvise(b.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = rp_xmalloc(IO_CHUNK);
    uint64_t done = 0;
    if (!md || EVP_DigestInit_ex(md, rp_digest_md(it->digest), NULL) != 1) {
        snprintf(err, errlen, "cannot hash");
        goto out;
    }
    while (done < it->size) {
        size_t want = it->size - done < IO_CHUNK ? (size_t)(it->size - done) : IO_CHUNK;
        ssize_t r = read(b.fd, buf, want);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(err, errlen, "reading blob %s from the cache: %s", it->digest,
                     r < 0 ? strerror(errno) : "shorter than indexed");
            goto out;
        }
        EVP_DigestUpdate(md, buf, (size_t)r);
        if (out(arg, buf, (size_t)r) != 0) {
            snprintf(err, errlen, "writing: %s", strerror(errno));
            goto out;
        }
        done += (uint64_t)r;
    }
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    EVP_DigestFinal_ex(md, d, &dl);
    if (!rp_digest_matches(it->digest, d, dl)) {
        snprintf(err, errlen, "blob %s in the cache does not match its digest (damaged disk?)",
                 it->digest);
        goto out;
    }
    rc = 0;
out:
    free(buf);
    EVP_MD_CTX_free(md);
    close(b.fd);
    rp_cache_release(c, it->digest);
    return rc;
}

static int w_blob_out(void *arg, const void *p, size_t n)
{
    return w_write(arg, p, n, true);
}

static int write_bundle(struct collect *k, const struct rp_export_opts *o, struct rp_progress *prog,
                        uint64_t *total_out, size_t *parts_out)
{
    struct writer w = {.base = o->output, .split = o->split, .fd = -1, .prog = prog};
    char err[1024];
    int rc = -1;
    char *meta = meta_json(k);
    size_t zlen;
    char *z = lz4_encode(meta, strlen(meta), &zlen);
    free(meta);
    /* The header carries the total length, so a reader knows how many parts to expect
     * and when the stream is cut short. */
    uint64_t total = RP_BUNDLE_HEADER_LEN + record_len(NULL, zlen) + record_len(NULL, TRAILER_LEN);
    for (size_t i = 0; i < k->n_manifests; i++)
        total += record_len(k->manifests[i].digest, k->manifests[i].data_len);
    for (size_t i = 0; i < k->n_blobs; i++)
        total += record_len(k->blobs[i].digest, k->blobs[i].size);
    prog->total_bytes = total;
    if (parts_count(total, o->split) > PARTS_MAX) {
        /* import refuses a header announcing more (parse_header): say so before writing. */
        char sz[32], min[32];
        rp_format_bytes(total, sz, sizeof(sz));
        rp_format_bytes(total / PARTS_MAX + 1, min, sizeof(min));
        fprintf(stderr,
                "regproxy export: this bundle (%s) would be more than %d parts of --split's "
                "size; import takes at most %d: use parts of at least %s\n",
                sz, PARTS_MAX, PARTS_MAX, min);
        goto out;
    }
    w.sha = EVP_MD_CTX_new();
    if (!w.sha || EVP_DigestInit_ex(w.sha, EVP_sha256(), NULL) != 1)
        goto fail;
    unsigned char h[RP_BUNDLE_HEADER_LEN];
    memcpy(h, RP_BUNDLE_MAGIC, 8);
    put_u32(h + 8, RP_BUNDLE_VERSION);
    put_u32(h + 12, 0);
    put_u64(h + 16, total);
    put_u64(h + 24, o->split);
    if (w_write(&w, h, sizeof(h), true) != 0 || w_record(&w, REC_META, NULL, zlen) != 0 ||
        w_write(&w, z, zlen, true) != 0)
        goto fail;
    for (size_t i = 0; i < k->n_manifests; i++) {
        const struct bundle_item *it = &k->manifests[i];
        if (w_record(&w, REC_MANIFEST, it->digest, it->data_len) != 0 ||
            w_write(&w, it->data, it->data_len, true) != 0)
            goto fail;
    }
    for (size_t i = 0; i < k->n_blobs; i++) {
        const struct bundle_item *it = &k->blobs[i];
        if (w_record(&w, REC_BLOB, it->digest, it->size) != 0)
            goto fail;
        if (write_blob(k->c, it, w_blob_out, &w, err, sizeof(err)) != 0) {
            fprintf(stderr, "regproxy export: %s\n", err);
            goto out;
        }
    }
    unsigned char sum[EVP_MAX_MD_SIZE];
    unsigned int sl = 0;
    EVP_DigestFinal_ex(w.sha, sum, &sl);
    if (w_record(&w, REC_TRAILER, NULL, TRAILER_LEN) != 0 ||
        w_write(&w, sum, TRAILER_LEN, false) != 0 || w.pos != total || w_finish(&w) != 0)
        goto fail;
    *total_out = total;
    *parts_out = w.n;
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "regproxy export: writing %s: %s\n", o->output, strerror(errno));
out:
    w_cleanup(&w, rc != 0);
    free(z);
    return rc;
}

/* ---------------------------------------------------------------- OCI layout --- */

static int mkdirs(const char *path)
{
    if (!*path) {
        errno = ENOENT;
        return -1;
    }
    char *p = rp_xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        *s = '/';
    }
    int rc = mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
    free(p);
    return rc;
}

struct fd_out {
    int fd;
    struct rp_progress *prog;
};

static int fd_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t r = write(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static int fd_out_cb(void *arg, const void *p, size_t n)
{
    struct fd_out *f = arg;
    if (fd_write_all(f->fd, p, n) != 0)
        return -1;
    f->prog->bytes += n;
    rp_progress_update(f->prog, false);
    return 0;
}

/* A directory inside the layout (blobs, blobs/<alg>), made when missing and opened, never
 * through a symlink: the output directory is often one others can write (shared media, a
 * transfer area), and a `blobs` symlink planted there sent every blob, written as root,
 * into the directory it named. Everything below is then reached relative to the
 * descriptor, so the path is not looked up again. shown names it in err. */
static int oci_subdir(int parent, const char *name, const char *shown, char *err, size_t errlen)
{
    if (mkdirat(parent, name, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", shown, strerror(errno));
        return -1;
    }
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        struct stat st;
        if (e == ELOOP ||
            (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)))
            snprintf(err, errlen,
                     "%s is a symbolic link: refused (the layout is written only inside its "
                     "directory, never through a link)",
                     shown);
        else
            snprintf(err, errlen, "%s: %s", shown, strerror(e));
        return -1;
    }
    return fd;
}

/* name in dirfd, written whole under name.tmp (made new, never through a symlink: see
 * create_new) and renamed over it; a symlink at name is replaced, not followed. Writes the
 * content through out, or data when out is NULL. 0, or -1 with errno set (err filled when
 * out failed). */
static int write_at(int dirfd, const char *name, const char *data, size_t len,
                    int (*out)(int fd, void *arg, char *err, size_t errlen), void *arg, char *err,
                    size_t errlen)
{
    char *tmp = rp_xasprintf("%s.tmp", name);
    int rc = -1, fd = -1;
    if (unlinkat(dirfd, tmp, 0) != 0 && errno != ENOENT)
        goto out;
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        goto out;
    if (out ? out(fd, arg, err, errlen) != 0 : fd_write_all(fd, data, len) != 0)
        goto out;
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    rc = renameat(dirfd, tmp, dirfd, name);
out:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (rc != 0)
        unlinkat(dirfd, tmp, 0);
    free(tmp);
    errno = e;
    return rc;
}

struct oci_blob_out {
    struct rp_cache *c;
    const struct bundle_item *it;
    const char *data; /* a manifest's bytes, or NULL: the blob from the cache */
    size_t len;
    struct rp_progress *prog;
    bool failed; /* write_blob failed: err says why */
};

static int oci_blob_out_cb(int fd, void *arg, char *err, size_t errlen)
{
    struct oci_blob_out *b = arg;
    struct fd_out fo = {.fd = fd, .prog = b->prog};
    if (b->data)
        return fd_out_cb(&fo, b->data, b->len);
    if (write_blob(b->c, b->it, fd_out_cb, &fo, err, errlen) != 0) {
        b->failed = true;
        return -1;
    }
    return 0;
}

#define OCI_INDEX_MAX (16 << 20)
#define OCI_REF_NAME "org.opencontainers.image.ref.name"

/* The manifests of an index.json already in the layout, read before anything is written:
 * the export keeps them (oci_keep). A new array: empty when there is no index.json, or a
 * symlink in its place (replaced); NULL with err set when what is there is no OCI index,
 * which is not the export's to overwrite. */
static json_t *oci_old_entries(int dfd, const char *dir, char *err, size_t errlen)
{
    int fd = openat(dfd, "index.json", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ELOOP)
            return json_array();
        snprintf(err, errlen, "%s/index.json: %s", dir, strerror(errno));
        return NULL;
    }
    char reason[128];
    const char *why = NULL;
    json_t *old = NULL, *entries = NULL;
    char *text = NULL;
    size_t len;
    json_error_t je;
    if (rp_read_fd_whole(fd, OCI_INDEX_MAX, &text, &len, reason, sizeof(reason)) != 0)
        why = reason;
    else if (!(old = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je)))
        why = je.text;
    else if (!json_is_array(json_object_get(old, "manifests")))
        why = "no manifests array";
    close(fd);
    if (why)
        snprintf(err, errlen,
                 "%s/index.json is there but is no OCI image index (%s): move it away or "
                 "export into another directory",
                 dir, why);
    else
        entries = json_incref(json_object_get(old, "manifests"));
    json_decref(old);
    free(text);
    return entries;
}

/* Appends to `into` the old entries whose ref.name is none of those in mans (the export's),
 * as `skopeo copy` into oci:DIR:TAG keeps the layout's other images: a second export into a
 * directory used to drop the first one's names, leaving its blobs unreachable. */
static void oci_keep(json_t *into, json_t *old, json_t *mans)
{
    size_t i, j;
    json_t *e, *n;
    json_array_foreach(old, i, e)
    {
        const char *name =
            json_string_value(json_object_get(json_object_get(e, "annotations"), OCI_REF_NAME));
        bool replaced = false;
        json_array_foreach(mans, j, n)
        {
            const char *nn =
                json_string_value(json_object_get(json_object_get(n, "annotations"), OCI_REF_NAME));
            replaced |= name && nn && strcmp(name, nn) == 0;
        }
        if (!replaced)
            json_array_append(into, e);
    }
}

/* DIR/blobs/<alg>/<hex> (blobs_fd: DIR/blobs, opened), written under a temp name and
 * renamed; a regular file of the right size is kept (a rerun after an interruption
 * resumes), anything else there is replaced. */
static int oci_blob(int blobs_fd, const char *dir, const char *digest, struct rp_cache *c,
                    const struct bundle_item *it, const char *data, size_t len,
                    struct rp_progress *prog, char *err, size_t errlen)
{
    const char *colon = strchr(digest, ':');
    char *alg = rp_xasprintf("%.*s", (int)(colon - digest), digest);
    char *shown = rp_xasprintf("%s/blobs/%s", dir, alg);
    const char *hex = colon + 1;
    int rc = -1;
    int afd = oci_subdir(blobs_fd, alg, shown, err, errlen);
    if (afd < 0)
        goto out;
    struct stat st;
    uint64_t want = data ? len : it->size;
    if (fstatat(afd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size == want) {
        prog->bytes += want;
        rc = 0;
        goto out;
    }
    struct oci_blob_out bo = {.c = c, .it = it, .data = data, .len = len, .prog = prog};
    if (write_at(afd, hex, NULL, 0, oci_blob_out_cb, &bo, err, errlen) != 0) {
        if (!bo.failed)
            snprintf(err, errlen, "%s/%s: %s", shown, hex, strerror(errno));
        goto out;
    }
    /* The rename made durable before index.json can name the blob: after a power cut a
     * layout must not name what its directory lost. */
    if (fsync(afd) != 0) {
        snprintf(err, errlen, "%s: %s", shown, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (afd >= 0)
        close(afd);
    free(shown);
    free(alg);
    return rc;
}

/* The OCI image layout skopeo, podman and containerd read: every image under its full
 * name "registry/repo:tag" as org.opencontainers.image.ref.name, and under its bare tag
 * too when no other exported image has that tag (so `oci:DIR:v1` works). */
static int write_oci(struct collect *k, const char *dir, struct rp_progress *prog)
{
    char err[1024];
    /* DIR itself is the operator's to name (a symlink to a mount is theirs to use); what
     * the export makes or enters inside it is reached only through descriptors. */
    if (mkdirs(dir) != 0) {
        fprintf(stderr, "regproxy export: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int rc = -1, dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), bfd = -1;
    char *shown = rp_xasprintf("%s/blobs", dir);
    json_t *mans = NULL, *old_entries = NULL;
    if (dfd < 0) {
        fprintf(stderr, "regproxy export: %s: %s\n", dir, strerror(errno));
        goto out;
    }
    if (!(old_entries = oci_old_entries(dfd, dir, err, sizeof(err)))) {
        fprintf(stderr, "regproxy export: %s\n", err);
        goto out;
    }
    if ((bfd = oci_subdir(dfd, "blobs", shown, err, sizeof(err))) < 0) {
        fprintf(stderr, "regproxy export: %s\n", err);
        goto out;
    }
    for (size_t i = 0; i < k->n_manifests; i++) {
        struct rp_cache_manifest m;
        const struct bundle_item *it = &k->manifests[i];
        if (rp_cache_manifest_get(k->c, it->digest, &m) != RP_CACHE_OK) {
            fprintf(stderr, "regproxy export: manifest %s vanished from the cache\n", it->digest);
            goto out;
        }
        int e = oci_blob(bfd, dir, it->digest, k->c, it, m.data, m.len, prog, err, sizeof(err));
        rp_cache_manifest_free(&m);
        if (e != 0) {
            fprintf(stderr, "regproxy export: %s\n", err);
            goto out;
        }
    }
    for (size_t i = 0; i < k->n_blobs; i++) {
        if (oci_blob(bfd, dir, k->blobs[i].digest, k->c, &k->blobs[i], NULL, 0, prog, err,
                     sizeof(err)) != 0) {
            fprintf(stderr, "regproxy export: %s\n", err);
            goto out;
        }
    }
    mans = json_array();
    for (size_t i = 0; i < k->n_images; i++) {
        const struct bundle_image *im = &k->images[i];
        size_t mi = dindex_find(&k->mi, k->manifests, im->digest);
        const struct bundle_item *it = &k->manifests[mi];
        char *full = im->tag ? rp_xasprintf("%s/%s:%s", im->registry, im->repo, im->tag)
                             : rp_xasprintf("%s/%s@%s", im->registry, im->repo, im->digest);
        /* skopeo and podman look up a name in index.json only among OCI manifests and
         * indexes; containerd takes Docker types too. Converting would change the digests
         * the images are pinned and signed by: say so instead of failing later in skopeo. */
        if (strcmp(it->media_type, RP_MEDIA_DOCKER_LIST) == 0 ||
            strcmp(it->media_type, RP_MEDIA_DOCKER_MANIFEST) == 0)
            fprintf(stderr,
                    "regproxy export: warning: %s is in Docker format (%s): skopeo and podman "
                    "do not read such an image from an OCI layout (containerd does); export a "
                    "bundle for them\n",
                    full, it->media_type);
        bool unique = im->tag != NULL;
        for (size_t j = 0; j < k->n_images && unique; j++)
            unique = j == i || !k->images[j].tag || strcmp(k->images[j].tag, im->tag) != 0;
        const char *names[2] = {full, unique ? im->tag : NULL};
        for (int n = 0; n < 2; n++) {
            if (!names[n])
                continue;
            json_array_append_new(mans,
                                  json_pack("{s:s, s:s, s:I, s:{s:s}}", "mediaType", it->media_type,
                                            "digest", it->digest, "size", (json_int_t)it->size,
                                            "annotations", OCI_REF_NAME, names[n]));
        }
        free(full);
    }
    json_t *all = json_array();
    oci_keep(all, old_entries, mans);
    json_array_extend(all, mans);
    json_t *index = json_pack("{s:i, s:s, s:o}", "schemaVersion", 2, "mediaType",
                              RP_MEDIA_OCI_INDEX, "manifests", all);
    char *text = json_dumps(index, JSON_COMPACT);
    json_decref(index);
    static const char layout[] = "{\"imageLayoutVersion\":\"1.0.0\"}";
    /* blobs/<alg> and blobs made durable before index.json, and index.json once renamed:
     * the export is done only when a power cut can no longer take it back. */
    /* The message names what failed: a directory (or anything else) in place of oci-layout
     * or index.json said only "writing DIR: Is a directory". */
    const char *failed = NULL;
    if (fsync(bfd) != 0)
        failed = "/blobs";
    else if (fsync(dfd) != 0)
        failed = "";
    else if (write_at(dfd, "oci-layout", layout, strlen(layout), NULL, NULL, err, sizeof(err)) != 0)
        failed = "/oci-layout";
    else if (write_at(dfd, "index.json", text, strlen(text), NULL, NULL, err, sizeof(err)) != 0)
        failed = "/index.json";
    else if (fsync(dfd) != 0)
        failed = "";
    if (failed)
        fprintf(stderr, "regproxy export: writing %s%s: %s\n", dir, failed, strerror(errno));
    else
        rc = 0;
    free(text);
out:
    json_decref(mans);
    json_decref(old_entries);
    if (bfd >= 0)
        close(bfd);
    if (dfd >= 0)
        close(dfd);
    free(shown);
    return rc;
}

int rp_export_main(struct rp_conf *conf, const struct rp_export_opts *o)
{
    struct collect k;
    memset(&k, 0, sizeof(k));
    int rc = 1;
    if (o->split && o->split < SPLIT_MIN) {
        fprintf(stderr, "regproxy export: --split must be at least 64K\n");
        return 2;
    }
    /* Opening creates a missing cache: a mistyped dir was made, empty, and the export said
     * that nothing was ever mirrored or imported into it. */
    struct stat sb;
    if (stat(conf->cache.dir, &sb) != 0) {
        fprintf(stderr, "regproxy export: no cache at %s: %s\n", conf->cache.dir, strerror(errno));
        return 1;
    }
    k.c = rp_offline_open_cache(conf, "export", 0);
    if (!k.c)
        return 1;
    if (collect_all(&k, conf, o->list) != 0)
        goto out;
    struct rp_progress prog;
    uint64_t manifest_bytes = 0;
    for (size_t i = 0; i < k.n_manifests; i++)
        manifest_bytes += k.manifests[i].size;
    rp_progress_init(&prog, "exporting", k.n_images, k.blob_bytes + manifest_bytes);
    uint64_t total = 0;
    size_t parts = 1;
    if (o->oci) {
        if (write_oci(&k, o->oci, &prog) != 0)
            goto out;
        total = prog.bytes;
    } else if (write_bundle(&k, o, &prog, &total, &parts) != 0) {
        goto out;
    }
    prog.done = k.n_images;
    rp_progress_end(&prog);
    for (size_t i = 0; i < k.n_images; i++)
        printf("exported %s/%s%s%s@%s\n", k.images[i].registry, k.images[i].repo,
               k.images[i].tag ? ":" : "", k.images[i].tag ? k.images[i].tag : "",
               k.images[i].digest);
    char sz[32];
    rp_format_bytes(total, sz, sizeof(sz));
    double secs = (double)(rp_now_ms() - prog.start_ms) / 1000.0;
    printf("export: %zu images, %zu manifests, %zu blobs; %s %s %s in %.2f s (%.1f MB/s)",
           k.n_images, k.n_manifests, k.n_blobs, sz, o->oci ? "into the OCI layout" : "to",
           o->oci ? o->oci : o->output, secs, secs > 0 ? (double)total / 1e6 / secs : 0.0);
    if (!o->oci && o->split)
        printf(" (%zu parts %s.000 ...)", parts, o->output);
    if (k.skipped_children)
        printf("; %zu platform manifests not in the cache were left out", k.skipped_children);
    printf("\n");
    rc = 0;
out:
    collect_free(&k);
    rp_cache_close(k.c);
    return rc;
}

/* ------------------------------------------------------------------- import --- */

/* The parts of a bundle as files, read as one stream. */
struct parts {
    char **paths;
    uint64_t *sizes;
    uint64_t part_size; /* the header's: 0 for one file */
    size_t n, cur;
    int fd;
};

static void parts_free(struct parts *p)
{
    if (p->fd >= 0)
        close(p->fd);
    for (size_t i = 0; i < p->n; i++)
        free(p->paths[i]);
    free(p->paths);
    free(p->sizes);
    memset(p, 0, sizeof(*p));
    p->fd = -1;
}

static int parts_rewind(struct parts *p)
{
    if (p->fd >= 0)
        close(p->fd);
    p->cur = 0;
    p->fd = open(p->paths[0], O_RDONLY | O_CLOEXEC);
    if (p->fd >= 0)
        posix_fadvise(p->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return p->fd < 0 ? -1 : 0;
}

static long parts_read(void *arg, void *buf, size_t n, const char **why)
{
    struct parts *p = arg;
    for (;;) {
        if (p->fd < 0)
            return 0;
        ssize_t r = read(p->fd, buf, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *why = strerror(errno);
            return -1;
        }
        if (r > 0)
            return (long)r;
        close(p->fd);
        p->fd = -1;
        if (p->cur + 1 == p->n)
            return 0;
        p->cur++;
        p->fd = open(p->paths[p->cur], O_RDONLY | O_CLOEXEC);
        if (p->fd < 0) {
            *why = "a bundle part vanished while reading";
            return -1;
        }
        posix_fadvise(p->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
}

static int parts_skip(void *arg, uint64_t n, const char **why)
{
    struct parts *p = arg;
    while (n > 0) {
        if (p->fd < 0) {
            *why = "past the end";
            return -1;
        }
        off_t at = lseek(p->fd, 0, SEEK_CUR);
        uint64_t left = at < 0 ? 0 : p->sizes[p->cur] - (uint64_t)at;
        uint64_t k = n < left ? n : left;
        if (at < 0 || lseek(p->fd, (off_t)k, SEEK_CUR) < 0) {
            *why = strerror(errno);
            return -1;
        }
        n -= k;
        if (n > 0) {
            close(p->fd);
            p->fd = -1;
            if (p->cur + 1 == p->n) {
                *why = "past the end";
                return -1;
            }
            p->fd = open(p->paths[++p->cur], O_RDONLY | O_CLOEXEC);
        }
    }
    return 0;
}

/* Which part files hold [from, to): "part P" or "parts P to Q"; nothing for one file. */
static void parts_where(void *arg, uint64_t from, uint64_t to, char *buf, size_t len)
{
    const struct parts *p = arg;
    buf[0] = '\0';
    if (p->n < 2 || !p->part_size || to <= from)
        return;
    size_t a = (size_t)(from / p->part_size), b = (size_t)((to - 1) / p->part_size);
    a = a < p->n ? a : p->n - 1;
    b = b < p->n ? b : p->n - 1;
    if (a == b)
        snprintf(buf, len, "in part %s", p->paths[a]);
    else
        snprintf(buf, len, "in parts %s to %s", p->paths[a], p->paths[b]);
}

/* Finds the bundle's files from BUNDLE (one file, or the .000 part, or the prefix of the
 * parts) and checks that every part its header announces is there with the right size. */
static int parts_open(const char *path, struct parts *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    p->fd = -1;
    struct stat st;
    char *first = rp_xstrdup(path);
    char *split0 = rp_xasprintf("%s.000", path);
    bool both = stat(first, &st) == 0 && S_ISREG(st.st_mode) && stat(split0, &st) == 0;
    free(split0);
    if (both) {
        /* A split export to the -o of an earlier whole one leaves that file there: reading
         * it would import last time's images and say nothing. */
        snprintf(err, errlen,
                 "both %s and the parts %s.000, ... are there: name the one to import "
                 "(%s.000 for the split bundle), or remove the other",
                 path, path, path);
        free(first);
        return -1;
    }
    if (stat(first, &st) != 0) {
        free(first);
        first = rp_xasprintf("%s.000", path);
        if (stat(first, &st) != 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            free(first);
            return -1;
        }
    }
    unsigned char h[RP_BUNDLE_HEADER_LEN];
    int fd = open(first, O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, h, sizeof(h)) : -1;
    if (fd >= 0)
        close(fd);
    uint64_t total, part_size;
    if (got != (ssize_t)sizeof(h)) {
        snprintf(err, errlen, "%s: %s", first,
                 got < 0 ? strerror(errno) : "too short for a bundle header (truncated?)");
        free(first);
        return -1;
    }
    char why[256];
    if (parse_header(h, &total, &part_size, why, sizeof(why)) != 0) {
        /* Named by a later part (b.rpb.001 for b.rpb.000): the header is only in the first. */
        size_t fl = strlen(first), digits = 0;
        while (digits < fl - 1 && first[fl - 1 - digits] >= '0' && first[fl - 1 - digits] <= '9')
            digits++;
        char *part0 = digits >= 3 && first[fl - 1 - digits] == '.'
                          ? rp_xasprintf("%.*s.000", (int)(fl - digits - 1), first)
                          : NULL;
        if (part0 && strcmp(part0, first) != 0 && memcmp(h, RP_BUNDLE_MAGIC, 8) != 0 &&
            stat(part0, &st) == 0) {
            snprintf(err, errlen, "%s is not the first part of a split bundle: name %s", first,
                     part0);
        } else {
            snprintf(err, errlen, "%s: %s", first, why);
        }
        free(part0);
        free(first);
        return -1;
    }
    size_t n = (size_t)parts_count(total, part_size);
    char *base = NULL;
    size_t fl = strlen(first);
    if (part_size) {
        if (fl < 4 || strcmp(first + fl - 4, ".000") != 0) {
            snprintf(err, errlen, "%s is part of a split bundle: name its first part, %s.000",
                     first, first);
            free(first);
            return -1;
        }
        base = rp_xstrndup(first, fl - 4);
    }
    p->paths = rp_xcalloc(n, sizeof(*p->paths));
    p->sizes = rp_xcalloc(n, sizeof(*p->sizes));
    p->n = n;
    p->part_size = part_size;
    for (size_t i = 0; i < n; i++) {
        p->paths[i] = part_size ? part_name(base, part_size, i) : rp_xstrdup(first);
        uint64_t want = part_size ? (i + 1 < n ? part_size : total - part_size * (n - 1)) : total;
        p->sizes[i] = want;
        if (stat(p->paths[i], &st) != 0) {
            snprintf(err, errlen, "bundle part %s is missing (the bundle has %zu parts)",
                     p->paths[i], n);
            goto fail;
        }
        if ((uint64_t)st.st_size != want) {
            snprintf(err, errlen,
                     "bundle part %s has %llu bytes, %llu expected: %s (copy it again)",
                     p->paths[i], (unsigned long long)st.st_size, (unsigned long long)want,
                     (uint64_t)st.st_size < want ? "truncated" : "wrong file");
            goto fail;
        }
    }
    free(base);
    free(first);
    if (parts_rewind(p) != 0) {
        snprintf(err, errlen, "%s: %s", p->paths[0], strerror(errno));
        parts_free(p);
        return -1;
    }
    return 0;
fail:
    free(base);
    free(first);
    parts_free(p);
    return -1;
}

struct import {
    const struct rp_conf *conf;
    struct rp_cache *c;
    struct rp_progress *prog;
    const struct rp_bundle_meta *meta;
    const struct rp_bundle_meta *verified; /* pass 1's, which pass 2's must equal */
    struct dindex mi, bi;                  /* pass 1: lookups in meta's lists */
    /* publishing */
    const struct bundle_item *blob; /* the blob being read */
    size_t next_manifest, next_blob;
    struct rp_cache_fill *fill;
    size_t new_manifests, new_blobs, cached_blobs;
    uint64_t new_bytes;
    /* Manifests read in pass 2, published once every blob is: an import that fails midway
     * (a full disk) must not leave manifests whose blobs never came, which clients would
     * start pulling and then fail on. */
    struct held_manifest *held;
    size_t n_held;
};

/* A manifest read in pass 2, kept until its blobs are in. Kept LZ4-compressed: a crafted
 * bundle's 4 MiB manifest of whitespace is 16 KB as a record, and 400 of them held as
 * read took 1.7 GB (found on review); held so, they take about what the bundle does. */
struct held_manifest {
    char digest[RP_CACHE_DIGEST_BUF];
    char *media_type, *z;
    size_t len, zlen; /* the manifest's length; its compressed form's */
    const struct bundle_item *it;
};

static void held_free(struct import *im)
{
    for (size_t i = 0; i < im->n_held; i++) {
        free(im->held[i].media_type);
        free(im->held[i].z);
    }
    free(im->held);
    im->held = NULL;
    im->n_held = 0;
}

/* The held manifest's bytes, in a new buffer. */
static char *held_data(const struct held_manifest *h)
{
    char *d = rp_xmalloc(h->len ? h->len : 1);
    if (LZ4_decompress_safe(h->z, d, (int)h->zlen, (int)h->len) != (int)h->len) {
        rp_error("bundle: a held manifest does not decompress"); /* ours: cannot happen */
        abort();
    }
    return d;
}

static const char *local_registry(const struct import *im, const char *name)
{
    const struct rp_conf_registry *r = rp_conf_find_registry(im->conf, name, strlen(name));
    return r ? r->name : NULL;
}

static bool items_same(const struct bundle_item *a, const struct bundle_item *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(a[i].digest, b[i].digest) != 0 || a[i].size != b[i].size ||
            a[i].n_repos != b[i].n_repos)
            return false;
        for (size_t k = 0; k < a[i].n_repos; k++)
            if (strcmp(a[i].repos[k].registry, b[i].repos[k].registry) != 0 ||
                strcmp(a[i].repos[k].repo, b[i].repos[k].repo) != 0)
                return false;
    }
    return true;
}

/* Whether pass 2 reads the metadata pass 1 verified (the file may have changed since:
 * a copy still being written, media swapped). Images are what tags and pins come from. */
static bool meta_same(const struct rp_bundle_meta *a, const struct rp_bundle_meta *b)
{
    if (a->n_images != b->n_images || a->n_manifests != b->n_manifests ||
        a->n_blobs != b->n_blobs || !items_same(a->manifests, b->manifests, a->n_manifests) ||
        !items_same(a->blobs, b->blobs, a->n_blobs))
        return false;
    for (size_t i = 0; i < a->n_images; i++) {
        const struct bundle_image *x = &a->images[i], *y = &b->images[i];
        if (strcmp(x->registry, y->registry) != 0 || strcmp(x->repo, y->repo) != 0 ||
            (x->tag == NULL) != (y->tag == NULL) || (x->tag && strcmp(x->tag, y->tag) != 0) ||
            strcmp(x->digest, y->digest) != 0 || x->tag_time != y->tag_time)
            return false;
    }
    return true;
}

static void free_lines(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Pass 1: the metadata names only registries this configuration serves. Pass 2: it is the
 * metadata pass 1 verified. */
static int verify_meta_cb(void *arg, const struct rp_bundle_meta *m, char *err, size_t errlen)
{
    struct import *im = arg;
    if (im->verified && !meta_same(im->verified, m)) {
        snprintf(err, errlen, "the bundle changed since it was verified");
        return -1;
    }
    im->meta = m;
    im->prog->total = m->n_images;
    for (size_t i = 0; i < m->n_images; i++) {
        if (!local_registry(im, m->images[i].registry)) {
            snprintf(err, errlen,
                     "the bundle has images of registry %s, which %s does not configure "
                     "(add a [registry \"%s\"] section, offline = yes)",
                     m->images[i].registry, im->conf->source, m->images[i].registry);
            return -1;
        }
    }
    return 0;
}

/* Pass 1: every blob an image manifest references is in the bundle, and at least one child
 * of an index (export leaves out platforms that were not mirrored): an import must not tag
 * and pin an image whose layers it cannot serve. */
static int verify_manifest_cb(void *arg, const char *digest, const char *media_type,
                              const char *data, size_t len, char *err, size_t errlen)
{
    (void)media_type;
    struct import *im = arg;
    if (!im->mi.slots) {
        dindex_init(&im->mi, im->meta->n_manifests);
        dindex_init(&im->bi, im->meta->n_blobs);
        for (size_t i = 0; i < im->meta->n_manifests; i++)
            dindex_add(&im->mi, im->meta->manifests, i);
        for (size_t i = 0; i < im->meta->n_blobs; i++)
            dindex_add(&im->bi, im->meta->blobs, i);
    }
    struct rp_manifest_refs refs;
    char why[256];
    if (rp_manifest_refs(data, len, &refs, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "manifest %s: %s", digest, why);
        return -1;
    }
    int rc = 0;
    size_t children = 0;
    for (size_t i = 0; i < refs.n && rc == 0; i++) {
        const char *d = refs.v[i].digest;
        if (refs.v[i].kind == RP_REF_CHILD) {
            children += dindex_find(&im->mi, im->meta->manifests, d) != (size_t)-1;
        } else if (dindex_find(&im->bi, im->meta->blobs, d) == (size_t)-1) {
            snprintf(err, errlen,
                     "manifest %s references blob %s, which the bundle does not "
                     "carry",
                     digest, d);
            rc = -1;
        }
    }
    if (rc == 0 && refs.is_index && refs.n && !children) {
        snprintf(err, errlen, "index %s: none of its manifests is in the bundle", digest);
        rc = -1;
    }
    rp_manifest_refs_free(&refs);
    return rc;
}

static int verify_blob_cb(void *arg, const char *digest, uint64_t size, char *err, size_t errlen)
{
    (void)digest;
    (void)err;
    (void)errlen;
    struct import *im = arg;
    im->prog->bytes += size;
    rp_progress_update(im->prog, false);
    return 1;
}

struct image_link {
    struct rp_cache *c;
    const char *reg, *repo;
    char digest[RP_CACHE_DIGEST_BUF]; /* the one that failed */
    int e;
};

static int image_link_visit(void *arg, const char *digest)
{
    struct image_link *l = arg;
    l->e = rp_cache_link(l->c, l->reg, l->repo, digest);
    if (l->e == RP_CACHE_OK)
        return 0;
    snprintf(l->digest, sizeof(l->digest), "%s", digest);
    return -1;
}

static int link_all(struct import *im, const struct bundle_item *it, char *err, size_t errlen)
{
    for (size_t i = 0; i < it->n_repos; i++) {
        const char *reg = local_registry(im, it->repos[i].registry);
        if (!reg)
            continue; /* a registry no image of ours names; nothing serves it */
        int e = rp_cache_link(im->c, reg, it->repos[i].repo, it->digest);
        if (e != RP_CACHE_OK) {
            snprintf(err, errlen, "linking %s to %s/%s: %s", it->digest, reg, it->repos[i].repo,
                     rp_cache_strerror(e));
            return -1;
        }
    }
    return 0;
}

/* The metadata entry of the record being read: the reader enforces metadata order, so it
 * is the one after the previous. */
static const struct bundle_item *next_item(const struct bundle_item *v, size_t n, size_t *cursor,
                                           const char *digest)
{
    if (*cursor < n && strcmp(v[*cursor].digest, digest) == 0)
        return &v[(*cursor)++];
    rp_error("bundle: record %s out of order", digest); /* rp_bundle_read rules it out */
    abort();
}

static int publish_manifest_cb(void *arg, const char *digest, const char *media_type,
                               const char *data, size_t len, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct import *im = arg;
    const struct bundle_item *it =
        next_item(im->meta->manifests, im->meta->n_manifests, &im->next_manifest, digest);
    /* Pinned first: publishing evicts, and must not evict what it is importing. */
    rp_cache_pin(im->c, digest);
    im->held = rp_xrealloc(im->held, (im->n_held + 1) * sizeof(*im->held));
    struct held_manifest *h = &im->held[im->n_held++];
    snprintf(h->digest, sizeof(h->digest), "%s", digest);
    /* The bytes' own type, as for a manifest fetched: a bundle's metadata cannot relabel
     * bytes that other registries' clients are served too. */
    h->media_type = rp_manifest_own_type(data, len);
    if (!h->media_type)
        h->media_type = rp_xstrdup(media_type ? media_type : "");
    /* Manifests are at most RP_CACHE_MANIFEST_MAX (4 MiB), well within LZ4's int. */
    int bound = LZ4_compressBound((int)len);
    h->z = rp_xmalloc(bound > 0 ? (size_t)bound : 1);
    int zlen = len ? LZ4_compress_default(data, h->z, (int)len, bound) : 0;
    if (len && zlen <= 0) {
        rp_error("bundle: cannot compress a manifest to hold it");
        abort();
    }
    h->z = rp_xrealloc(h->z, zlen > 0 ? (size_t)zlen : 1);
    h->zlen = (size_t)zlen;
    h->len = len;
    h->it = it;
    im->prog->bytes += len;
    return 0;
}

static int publish_held_one(struct import *im, const struct held_manifest *h, char *err,
                            size_t errlen)
{
    const char *digest = h->digest;
    const char *media_type = h->media_type[0] ? h->media_type : NULL;
    char *data = held_data(h);
    size_t len = h->len;
    const struct bundle_item *it = h->it;
    struct rp_cache_manifest old;
    bool had = rp_cache_manifest_get(im->c, digest, &old) == RP_CACHE_OK;
    if (had)
        rp_cache_manifest_free(&old);
    int e = rp_cache_manifest_put(im->c, digest, media_type, data, len);
    free(data);
    if (e != RP_CACHE_OK) {
        snprintf(err, errlen, "storing manifest %s: %s", digest, rp_cache_strerror(e));
        return -1;
    }
    if (!had)
        im->new_manifests++;
    return link_all(im, it, err, errlen);
}

/* Publishes every held manifest after the held manifests it names (children of an index),
 * whatever order the bundle lists them in (a nested index exported as an image of its own
 * comes before its parent): a topological order over the bundle's own references, in time
 * linear in them, as a crafted bundle may nest indexes a thousand deep. held[i] is manifest
 * record i, so the metadata's digests index the held ones. */
static int publish_held(struct import *im, char *err, size_t errlen)
{
    size_t n = im->n_held;
    struct dindex idx;
    dindex_init(&idx, n);
    for (size_t i = 0; i < n; i++)
        dindex_add(&idx, im->meta->manifests, i);
    size_t *waiting = rp_xcalloc(n + 1, sizeof(*waiting)); /* held children not published */
    size_t *counted = rp_xcalloc(n + 1, sizeof(*counted)); /* parent + 1 last counted for */
    size_t *first = rp_xcalloc(n + 1, sizeof(*first));     /* parents of i: edge index + 1 */
    struct edge {
        size_t parent, next;
    } *edges = NULL;
    size_t n_edges = 0, alloc_edges = 0;
    for (size_t i = 0; i < n; i++) {
        struct rp_manifest_refs refs;
        char e[128];
        char *data = held_data(&im->held[i]);
        int pe = rp_manifest_refs(data, im->held[i].len, &refs, e, sizeof(e));
        free(data);
        if (pe != 0)
            continue; /* verified in pass 1; nothing to wait for */
        for (size_t r = 0; r < refs.n; r++) {
            if (refs.v[r].kind != RP_REF_CHILD)
                continue;
            size_t k = dindex_find(&idx, im->meta->manifests, refs.v[r].digest);
            if (k == (size_t)-1 || k >= n || k == i || counted[k] == i + 1)
                continue;
            counted[k] = i + 1;
            if (n_edges == alloc_edges) {
                alloc_edges = alloc_edges ? alloc_edges * 2 : 64;
                edges = rp_xrealloc(edges, alloc_edges * sizeof(*edges));
            }
            edges[n_edges] = (struct edge){.parent = i, .next = first[k]};
            first[k] = ++n_edges;
            waiting[i]++;
        }
        rp_manifest_refs_free(&refs);
    }
    /* Ready manifests in bundle order, as a queue; a parent joins it when its last held
     * child is published. */
    size_t *queue = rp_xcalloc(n + 1, sizeof(*queue)), head = 0, tail = 0;
    bool *done = rp_xcalloc(n + 1, sizeof(*done));
    for (size_t i = 0; i < n; i++)
        if (waiting[i] == 0)
            queue[tail++] = i;
    int rc = 0;
    while (head < tail && rc == 0) {
        size_t i = queue[head++];
        rc = publish_held_one(im, &im->held[i], err, errlen);
        done[i] = true;
        for (size_t e = first[i]; e; e = edges[e - 1].next)
            if (--waiting[edges[e - 1].parent] == 0)
                queue[tail++] = edges[e - 1].parent;
    }
    /* Digests rule out cycles; anything left (none expected) is published as it is. */
    for (size_t i = 0; i < n && rc == 0; i++)
        if (!done[i])
            rc = publish_held_one(im, &im->held[i], err, errlen);
    free(queue);
    free(done);
    free(edges);
    free(first);
    free(counted);
    free(waiting);
    free(idx.slots);
    return rc;
}

static int publish_blob_begin_cb(void *arg, const char *digest, uint64_t size, char *err,
                                 size_t errlen)
{
    struct import *im = arg;
    im->blob = next_item(im->meta->blobs, im->meta->n_blobs, &im->next_blob, digest);
    rp_cache_pin(im->c, digest);
    struct rp_cache_blob b;
    if (rp_cache_blob_open(im->c, digest, &b) == RP_CACHE_OK) {
        /* Already there (verified when it was published): a second import changes
         * nothing but missing links. */
        close(b.fd);
        rp_cache_release(im->c, digest);
        im->cached_blobs++;
        im->prog->bytes += size;
        return link_all(im, im->blob, err, errlen) != 0 ? -1 : 1;
    }
    int e = 0;
    im->fill = rp_cache_fill_begin(im->c, digest, (int64_t)size, &e);
    if (!im->fill) {
        snprintf(err, errlen, "storing blob %s: %s", digest, rp_cache_strerror(e));
        return -1;
    }
    return 0;
}

static int publish_blob_data_cb(void *arg, const void *p, size_t n, char *err, size_t errlen)
{
    struct import *im = arg;
    int e = rp_cache_fill_write(im->fill, p, n);
    if (e != RP_CACHE_OK) {
        snprintf(err, errlen, "storing blob %s: %s", im->blob->digest, rp_cache_strerror(e));
        return -1;
    }
    im->prog->bytes += n;
    rp_progress_update(im->prog, false);
    return 0;
}

static int publish_blob_end_cb(void *arg, char *err, size_t errlen)
{
    struct import *im = arg;
    int e = rp_cache_fill_commit(im->fill);
    im->fill = NULL;
    if (e != RP_CACHE_OK) {
        snprintf(err, errlen, "storing blob %s: %s", im->blob->digest, rp_cache_strerror(e));
        return -1;
    }
    im->new_blobs++;
    im->new_bytes += im->blob->size;
    return link_all(im, im->blob, err, errlen);
}

int rp_import_main(struct rp_conf *conf, const char *bundle)
{
    struct parts parts;
    struct import im = {.conf = conf};
    struct rp_progress prog;
    struct rp_bundle_meta *meta = NULL;
    char err[1024];
    int rc = 1;
    if (parts_open(bundle, &parts, err, sizeof(err)) != 0) {
        fprintf(stderr, "regproxy import: refused, nothing imported: %s\n", err);
        return 1;
    }
    /* Fail fast on a running proxy, before a long verification. */
    if (cache_lock_held(conf->cache.dir)) {
        fprintf(stderr,
                "regproxy import: the cache %s is in use (its lock is held, by a running "
                "regproxy?): stop it, import, then start it again\n",
                conf->cache.dir);
        goto out;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < parts.n; i++)
        total += parts.sizes[i];
    rp_progress_init(&prog, "verifying", 0, total);
    im.prog = &prog;
    struct rp_bundle_src src = {
        .read = parts_read, .skip = parts_skip, .where = parts_where, .arg = &parts};
    const struct rp_bundle_sink verify = {
        .meta = verify_meta_cb, .manifest = verify_manifest_cb, .blob_begin = verify_blob_cb};
    /* Pass 1: everything is read and checked; the cache is not even opened. */
    if (rp_bundle_read(&src, 0, &verify, &im, &meta, err, sizeof(err)) != 0) {
        rp_progress_end(&prog);
        fprintf(stderr, "regproxy import: refused, nothing imported: %s\n", err);
        goto out;
    }
    rp_progress_end(&prog);
    double verify_s = (double)(rp_now_ms() - prog.start_ms) / 1000.0;
    printf("import: %s verified (%zu part%s, %zu images, %zu manifests, %zu blobs) in %.2f s\n",
           parts.paths[0], parts.n, parts.n == 1 ? "" : "s", meta->n_images, meta->n_manifests,
           meta->n_blobs, verify_s);
    fflush(stdout);
    im.c = rp_offline_open_cache(conf, "import", conf->cache.max_size);
    if (!im.c)
        goto out;
    /* Publishing evicts to max_size: what the proxy pins must be pinned here too. */
    rp_pins_apply(im.c, conf);
    /* Manifests and links are checked when read, so their files need not be fsynced one by
     * one (two fsyncs each: most of the 7,830 for 300 images, most of the import's time):
     * the cache leaves them to one syncfs before the tags. Blob bytes are fsynced before
     * their rename as always. */
    rp_cache_set_sync_hook(im.c, import_sync_later, NULL);
    im.verified = meta;
    /* Pass 2: publish through the cache, which verifies each digest again. */
    struct rp_progress pub;
    rp_progress_init(&pub, "importing", meta->n_images, total);
    pub.start_ms = prog.start_ms;
    im.prog = &pub;
    const struct rp_bundle_sink publish = {.meta = verify_meta_cb,
                                           .manifest = publish_manifest_cb,
                                           .blob_begin = publish_blob_begin_cb,
                                           .blob_data = publish_blob_data_cb,
                                           .blob_end = publish_blob_end_cb};
    struct rp_bundle_meta *meta2 = NULL;
    if (parts_rewind(&parts) != 0 ||
        rp_bundle_read(&src, RP_BUNDLE_F_TRUSTED, &publish, &im, &meta2, err, sizeof(err)) != 0 ||
        publish_held(&im, err, sizeof(err)) != 0) {
        rp_progress_end(&pub);
        rp_cache_fill_abort(im.fill);
        im.fill = NULL;
        rp_bundle_meta_free(meta2);
        fprintf(stderr,
                "regproxy import: failed while publishing (blobs published so far are "
                "verified, no manifest naming a missing one was published, and no tag was "
                "set; importing again finishes the job): %s\n",
                err[0] ? err : strerror(errno));
        goto out;
    }
    rp_bundle_meta_free(meta2);
    /* Each image's manifests and blobs are linked to its repository, whatever the items'
     * own repos lists say: the bundle names the image, and its manifest names the rest (as
     * a registry serves a manifest's blobs under its repository). A crafted bundle that
     * left them out was tagged, its manifest served, and every layer answered 404. */
    for (size_t i = 0; i < meta->n_images; i++) {
        const struct bundle_image *bi = &meta->images[i];
        struct image_link l = {
            .c = im.c, .reg = local_registry(&im, bi->registry), .repo = bi->repo};
        if (rp_manifest_walk(im.c, bi->digest, image_link_visit, &l, NULL) != 0) {
            rp_progress_end(&pub);
            fprintf(stderr,
                    "regproxy import: failed while linking %s to %s/%s (no tag was set; "
                    "importing again finishes the job): %s\n",
                    l.digest, l.reg, bi->repo, rp_cache_strerror(l.e));
            goto out;
        }
    }
    /* Durable before any tag moves: a power loss after a tag's file reached the disk and
     * before the manifest it names did would leave the tag naming nothing, where it had
     * named the image it had before. Tags are then written the synchronous way, each
     * whole before its rename: one left unsynced could be torn by a power loss (on file
     * systems that do not flush a file renamed over another), and a torn tag is a miss,
     * which an offline cache cannot fetch again. */
    if (rp_cache_sync(im.c) != 0) {
        rp_progress_end(&pub);
        fprintf(stderr,
                "regproxy import: failed to make the imported content durable (syncfs: %s); "
                "no tag was set; importing again finishes the job\n",
                strerror(errno));
        goto out;
    }
    rp_cache_set_sync_hook(im.c, NULL, NULL);
    /* In the pins file, at once, before any tag moves: a tag set on content that the next
     * start does not pin may see it evicted, and an offline cache cannot fetch it again. A
     * failure here (a full disk) leaves every tag as it was. */
    char **pin_lines = rp_xcalloc(meta->n_images + 1, sizeof(*pin_lines));
    for (size_t i = 0; i < meta->n_images; i++) {
        const struct bundle_image *bi = &meta->images[i];
        pin_lines[i] =
            rp_pins_line(local_registry(&im, bi->registry), bi->repo, bi->tag, bi->digest);
    }
    int pinned = rp_pins_add_lines(conf->cache.dir, pin_lines, meta->n_images);
    free_lines(pin_lines, meta->n_images);
    if (pinned != 0) {
        rp_progress_end(&pub);
        fprintf(stderr,
                "regproxy import: failed to record the images in %s/%s (see the log); no tag "
                "was set; importing again finishes the job\n",
                conf->cache.dir, RP_PINS_FILE);
        goto out;
    }
    size_t tags_set = 0;
    for (size_t i = 0; i < meta->n_images; i++) {
        const struct bundle_image *bi = &meta->images[i];
        const char *reg = local_registry(&im, bi->registry);
        rp_pin_walk(im.c, bi->digest);
        if (bi->tag) {
            char cur[RP_CACHE_DIGEST_BUF];
            int64_t t;
            bool have =
                rp_cache_tag_get(im.c, reg, bi->repo, bi->tag, cur, sizeof(cur), &t) == RP_CACHE_OK;
            bool same = have && strcmp(cur, bi->digest) == 0;
            /* A bundle older than what the cache knows of the tag (last week's imported
             * after this week's) does not move it back. */
            bool older = have && !same && bi->tag_time >= 0 && bi->tag_time < t;
            if (older)
                fprintf(stderr,
                        "regproxy import: tag %s/%s:%s kept at %s: the bundle's %s is older\n", reg,
                        bi->repo, bi->tag, cur, bi->digest);
            if (!same && !older) {
                /* At most now: a time ahead of this clock (the exporter's was ahead, or the
                 * bundle was made so) would keep the tag fresh until then. */
                int64_t now = rp_wall_s();
                /* No type recorded: an imported image is pinned, so its manifest, which
                 * names it, stays cached. */
                int e =
                    rp_cache_tag_set(im.c, reg, bi->repo, bi->tag, bi->digest, NULL,
                                     bi->tag_time >= 0 && bi->tag_time <= now ? bi->tag_time : now);
                if (e != RP_CACHE_OK) {
                    fprintf(stderr, "regproxy import: tag %s/%s:%s: %s\n", reg, bi->repo, bi->tag,
                            rp_cache_strerror(e));
                    goto out;
                }
                tags_set++;
            }
        }
        pub.done = i + 1;
        rp_progress_line(&pub, "imported %s/%s%s%s@%s", reg, bi->repo, bi->tag ? ":" : "",
                         bi->tag ? bi->tag : "", bi->digest);
    }
    rp_progress_end(&pub);
    char nb[32], tb[32];
    rp_format_bytes(im.new_bytes, nb, sizeof(nb));
    rp_format_bytes(total, tb, sizeof(tb));
    double secs = (double)(rp_now_ms() - prog.start_ms) / 1000.0;
    printf("import: %zu images; %zu new manifests, %zu new blobs (%s), %zu blobs already "
           "cached, %zu tags set; %s bundle in %.2f s (%.1f MB/s)\n",
           meta->n_images, im.new_manifests, im.new_blobs, nb, im.cached_blobs, tags_set, tb, secs,
           secs > 0 ? (double)total / 1e6 / secs : 0.0);
    rc = 0;
out:
    held_free(&im);
    free(im.mi.slots);
    free(im.bi.slots);
    rp_bundle_meta_free(meta);
    rp_cache_close(im.c);
    parts_free(&parts);
    return rc;
}
