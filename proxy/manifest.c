/* SPDX-License-Identifier: Apache-2.0 */
/* manifest: what an image is made of, for the mirror, the pins walk and bundles: the
 * references of an index or image manifest, --platform filters, and image references
 * ("registry/repo:tag@digest") resolved against the configuration. Pure functions over
 * memory (the list loader aside), fuzzed by tests/fuzz/fuzz_manifest.c. */
#include "offline.h"

#include "../util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LIST_FILE_MAX ((size_t)16 << 20)
#define LIST_IMAGES_MAX 100000
#define PLATFORMS_MAX 64
/* JSON integers beyond 2^53 are not exact in most producers: no real blob is that big. */
#define SIZE_LIMIT (INT64_C(1) << 53)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies a JSON string member into buf; absent is "", present but not a string that fits
 * (or with control characters) is an error. */
static int str_member(json_t *obj, const char *key, char *buf, size_t len, bool required)
{
    json_t *v = json_object_get(obj, key);
    buf[0] = '\0';
    if (!v)
        return required ? -1 : 0;
    if (!json_is_string(v) || json_string_length(v) >= len)
        return -1;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

/* A descriptor: digest and size required, mediaType optional. */
static int descriptor(json_t *d, enum rp_ref_kind kind, struct rp_manifest_ref *out,
                      const char **why)
{
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    if (!json_is_object(d)) {
        *why = "a descriptor is not an object";
        return -1;
    }
    if (str_member(d, "digest", out->digest, sizeof(out->digest), true) != 0 ||
        !rp_valid_digest(out->digest, strlen(out->digest))) {
        *why = "a descriptor has a missing or invalid digest";
        return -1;
    }
    if (str_member(d, "mediaType", out->media_type, sizeof(out->media_type), false) != 0) {
        *why = "a descriptor has an invalid mediaType";
        return -1;
    }
    json_t *size = json_object_get(d, "size");
    if (!json_is_integer(size) || json_integer_value(size) < 0 ||
        json_integer_value(size) > SIZE_LIMIT) {
        *why = "a descriptor has a missing or invalid size";
        return -1;
    }
    out->size = (int64_t)json_integer_value(size);
    if (kind == RP_REF_CHILD) {
        json_t *p = json_object_get(d, "platform");
        if (p && !json_is_object(p)) {
            *why = "a platform is not an object";
            return -1;
        }
        out->has_platform = p != NULL;
        if (p && (str_member(p, "os", out->os, sizeof(out->os), false) != 0 ||
                  str_member(p, "architecture", out->arch, sizeof(out->arch), false) != 0 ||
                  str_member(p, "variant", out->variant, sizeof(out->variant), false) != 0)) {
            *why = "a platform has an invalid os, architecture or variant";
            return -1;
        }
    }
    return 0;
}

/* Layers that registries do not serve (Windows base layers point at URLs elsewhere). */
static bool non_distributable(const char *media_type)
{
    return strstr(media_type, "foreign") != NULL || strstr(media_type, "nondistributable") != NULL;
}

unsigned long rp_manifest_refs_calls;

int rp_manifest_refs(const char *json, size_t len, struct rp_manifest_refs *out, char *err,
                     size_t errlen)
{
    rp_manifest_refs_calls++;
    json_t *root = NULL;
    const char *why = NULL;
    int rc = -1;
    memset(out, 0, sizeof(*out));
    if (len > RP_CACHE_MANIFEST_MAX) {
        set_err(err, errlen, "manifest larger than %zu bytes", RP_CACHE_MANIFEST_MAX);
        return -1;
    }
    json_error_t je;
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        set_err(err, errlen, "manifest is not JSON: %s (line %d)", je.text, je.line);
        return -1;
    }
    if (!json_is_object(root)) {
        why = "manifest is not a JSON object";
        goto out;
    }
    json_t *sv = json_object_get(root, "schemaVersion");
    if (json_is_integer(sv) && json_integer_value(sv) == 1) {
        why = "Docker schema 1 manifests are not supported (ask for schema 2 or OCI)";
        goto out;
    }
    json_t *manifests = json_object_get(root, "manifests");
    json_t *config = json_object_get(root, "config");
    json_t *layers = json_object_get(root, "layers");
    if (manifests && (config || layers)) {
        /* No index has a config or layers, no image manifest has manifests. Read as an
         * index, its config and layers went unchecked and unpinned: an import tagged such a
         * document, served as the image its mediaType says, with none of its layers. */
        why = "both an index (manifests) and an image manifest (config, layers)";
        goto out;
    }
    if (manifests) {
        if (!json_is_array(manifests)) {
            why = "\"manifests\" is not an array";
            goto out;
        }
        if (json_array_size(manifests) > RP_MANIFEST_REFS_MAX) {
            why = "index lists too many manifests";
            goto out;
        }
        out->is_index = true;
        out->v = rp_xcalloc(json_array_size(manifests) + 1, sizeof(*out->v));
        size_t i;
        json_t *d;
        json_array_foreach(manifests, i, d)
        {
            if (descriptor(d, RP_REF_CHILD, &out->v[out->n], &why) != 0)
                goto out;
            out->n++;
        }
    } else if (config || layers) {
        if (!config || !json_is_array(layers)) {
            why = "image manifest without config or layers";
            goto out;
        }
        if (json_array_size(layers) >= RP_MANIFEST_REFS_MAX) {
            why = "manifest lists too many layers";
            goto out;
        }
        out->v = rp_xcalloc(json_array_size(layers) + 1, sizeof(*out->v));
        if (descriptor(config, RP_REF_CONFIG, &out->v[0], &why) != 0)
            goto out;
        out->n = 1;
        size_t i;
        json_t *d;
        json_array_foreach(layers, i, d)
        {
            if (descriptor(d, RP_REF_LAYER, &out->v[out->n], &why) != 0)
                goto out;
            if (!non_distributable(out->v[out->n].media_type))
                out->n++;
        }
    } else {
        why = "neither an index (manifests) nor an image manifest (config, layers)";
        goto out;
    }
    rc = 0;
out:
    if (rc != 0) {
        if (why)
            set_err(err, errlen, "%s", why);
        rp_manifest_refs_free(out);
    }
    json_decref(root);
    return rc;
}

void rp_manifest_refs_free(struct rp_manifest_refs *r)
{
    if (!r)
        return;
    free(r->v);
    r->v = NULL;
    r->n = 0;
}

/* ---- platforms ---- */

struct platform {
    char os[RP_PLATFORM_PART_MAX + 1], arch[RP_PLATFORM_PART_MAX + 1],
        variant[RP_PLATFORM_PART_MAX + 1];
};

struct rp_platforms {
    struct platform v[PLATFORMS_MAX];
    size_t n;
};

static bool platform_part_ok(const char *s, size_t n)
{
    if (n == 0 || n > RP_PLATFORM_PART_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

int rp_platforms_parse(const char *s, struct rp_platforms **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!s)
        return 0;
    struct rp_platforms *p = rp_xcalloc(1, sizeof(*p));
    const char *item = s;
    for (;;) {
        size_t ilen = strcspn(item, ",");
        const char *parts[3] = {NULL, NULL, NULL};
        size_t plen[3] = {0, 0, 0};
        size_t np = 0;
        for (size_t i = 0, start = 0; i <= ilen; i++) {
            if (i < ilen && item[i] != '/')
                continue;
            if (np == 3)
                goto bad;
            parts[np] = item + start;
            plen[np++] = i - start;
            start = i + 1;
        }
        if (np < 2 || p->n == PLATFORMS_MAX)
            goto bad;
        for (size_t k = 0; k < np; k++)
            if (!platform_part_ok(parts[k], plen[k]))
                goto bad;
        struct platform *pl = &p->v[p->n++];
        memcpy(pl->os, parts[0], plen[0]);
        memcpy(pl->arch, parts[1], plen[1]);
        if (np == 3)
            memcpy(pl->variant, parts[2], plen[2]);
        if (item[ilen] == '\0')
            break;
        item += ilen + 1;
    }
    *out = p;
    return 0;
bad:
    set_err(err, errlen,
            "bad --platform '%s': expected os/arch[/variant][,...], e.g. "
            "linux/amd64,linux/arm64/v8",
            s);
    free(p);
    return -1;
}

/* A platform's variant as containerd normalises it: an arm64 without one is v8, an arm
 * without one v7, an amd64 without one v1 (indexes often leave it out, users often write
 * it). */
static const char *variant_of(const char *arch, const char *variant)
{
    if (variant[0])
        return variant;
    if (strcmp(arch, "arm64") == 0)
        return "v8";
    if (strcmp(arch, "arm") == 0)
        return "v7";
    if (strcmp(arch, "amd64") == 0)
        return "v1";
    return "";
}

/* "vN" as N (1..99), or 0. */
static int variant_level(const char *v)
{
    if (v[0] != 'v' || v[1] < '1' || v[1] > '9')
        return 0;
    if (!v[2])
        return v[1] - '0';
    if (v[2] >= '0' && v[2] <= '9' && !v[3])
        return (v[1] - '0') * 10 + (v[2] - '0');
    return 0;
}

/* Whether a machine of variant want runs an image of variant have, as containerd's
 * platforms.Only decides it: amd64 levels run the levels below them (an amd64/v3 node
 * pulls a v1 image when the index has no v3 one), arm v7 runs v6 and v5; otherwise the
 * variants are equal. */
static bool variant_runs(const char *arch, const char *want, const char *have)
{
    if (strcmp(want, have) == 0)
        return true;
    int w = variant_level(want), h = variant_level(have);
    if (strcmp(arch, "amd64") == 0)
        return w && h && h <= w;
    if (strcmp(arch, "arm") == 0)
        return w && h >= 5 && h <= w;
    return false;
}

bool rp_platforms_match(const struct rp_platforms *p, const struct rp_manifest_ref *child)
{
    /* No platform: for every one (containerd's images.FilterPlatforms keeps a descriptor
     * whose Platform is nil, and pulls it when nothing more specific matches). */
    if (!p || (child->kind == RP_REF_CHILD && !child->has_platform))
        return true;
    for (size_t i = 0; i < p->n; i++) {
        const struct platform *pl = &p->v[i];
        if (strcmp(pl->os, child->os) == 0 && strcmp(pl->arch, child->arch) == 0 &&
            (!pl->variant[0] || variant_runs(pl->arch, variant_of(pl->arch, pl->variant),
                                             variant_of(child->arch, child->variant))))
            return true;
    }
    return false;
}

void rp_platforms_free(struct rp_platforms *p)
{
    free(p);
}

/* ---- image references ---- */

int rp_image_ref_parse(const struct rp_conf *conf, const char *s, size_t len,
                       struct rp_image_ref *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (len == 0 || len > RP_TARGET_MAX - 64) {
        *why = "empty or too long";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) {
            *why = "spaces or control characters in the reference";
            return -1;
        }
    }
    size_t nlen = len; /* registry/repo[:tag] */
    const char *at = memchr(s, '@', len);
    if (at) {
        size_t dlen = len - (size_t)(at - s) - 1;
        if (!rp_valid_digest(at + 1, dlen)) {
            *why = "invalid digest (expected sha256:<64 hex>)";
            return -1;
        }
        memcpy(out->digest, at + 1, dlen);
        nlen = (size_t)(at - s);
    }
    const char *slash = memchr(s, '/', nlen);
    if (!slash) {
        *why = "expected REGISTRY/REPOSITORY[:TAG][@DIGEST]";
        return -1;
    }
    /* A tag is a ':' after the last '/' (a registry's ":port" comes before it). */
    const char *last_slash = slash;
    for (const char *p = slash; p < s + nlen; p++)
        if (*p == '/')
            last_slash = p;
    const char *colon = memchr(last_slash, ':', (size_t)(s + nlen - last_slash));
    size_t plen = nlen;
    if (colon) {
        size_t tlen = (size_t)(s + nlen - colon - 1);
        if (!rp_valid_tag(colon + 1, tlen)) {
            *why = "invalid tag";
            return -1;
        }
        memcpy(out->tag, colon + 1, tlen);
        plen = (size_t)(colon - s);
    }
    if (!out->tag[0] && !out->digest[0])
        memcpy(out->tag, "latest", 7);
    /* The proxy's router decides what the first component names, exactly as for a pull
     * through the prefix (so "library/" is added for Docker Hub the same way). */
    const char *ref = out->digest[0] ? out->digest : out->tag;
    char *target = rp_xasprintf("/v2/%.*s/manifests/%s", (int)plen, s, ref);
    struct rp_route rt;
    int rc = rp_route_parse(conf, NULL, target, strlen(target), &rt, why);
    free(target);
    if (rc != RP_ROUTE_OK || !rt.reg || rt.kind != RP_ROUTE_MANIFEST) {
        if (rc == RP_ROUTE_E_NAME_UNKNOWN)
            *why = "the first component is not a configured registry's name or host";
        else if (rc == RP_ROUTE_OK)
            *why = "not an image reference";
        return -1;
    }
    out->reg = rt.reg;
    memcpy(out->repo, rt.name, sizeof(out->repo));
    return 0;
}

void rp_image_ref_format(const struct rp_image_ref *r, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s%s%s%s%s", r->reg ? r->reg->name : "?", r->repo, r->tag[0] ? ":" : "",
             r->tag, r->digest[0] ? "@" : "", r->digest);
}

int rp_image_list_load(const struct rp_conf *conf, const char *path, struct rp_image_ref **out,
                       size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    int rc = -1;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > LIST_FILE_MAX) {
        set_err(err, errlen, "%s: not a regular file of at most 16 MiB", path);
        goto out;
    }
    size_t size = (size_t)st.st_size, got = 0;
    buf = rp_xmalloc(size + 1);
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            set_err(err, errlen, "%s: %s", path, r < 0 ? strerror(errno) : "shrank while read");
            goto out;
        }
        got += (size_t)r;
    }
    buf[size] = '\0';
    /* Lists written on Windows: Notepad and PowerShell's UTF8 encoding start the file with a
     * byte order mark, which is no part of the first reference; Windows PowerShell's `>`
     * writes UTF-16, where every other byte is NUL: say so rather than quote garbage. */
    size_t start = 0;
    if (size >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0)
        start = 3;
    else if (size >= 2 && (memcmp(buf, "\xff\xfe", 2) == 0 || memcmp(buf, "\xfe\xff", 2) == 0)) {
        set_err(err, errlen, "%s: UTF-16 text; save the list as UTF-8 or ASCII", path);
        goto out;
    }
    struct rp_image_ref *v = NULL;
    size_t cnt = 0, alloc = 0;
    unsigned line = 0;
    for (size_t pos = start; pos < size;) {
        line++;
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', size - pos);
        size_t l = nl ? (size_t)(nl - s) : size - pos;
        pos += l + (nl ? 1 : 0);
        const char *hash = memchr(s, '#', l);
        if (hash)
            l = (size_t)(hash - s);
        while (l && (s[0] == ' ' || s[0] == '\t')) {
            s++;
            l--;
        }
        while (l && (s[l - 1] == ' ' || s[l - 1] == '\t' || s[l - 1] == '\r'))
            l--;
        if (l == 0)
            continue;
        if (cnt == LIST_IMAGES_MAX) {
            set_err(err, errlen, "%s:%u: more than %d images", path, line, LIST_IMAGES_MAX);
            free(v);
            goto out;
        }
        if (cnt == alloc) {
            alloc = alloc ? alloc * 2 : 16;
            v = rp_xrealloc(v, alloc * sizeof(*v));
        }
        const char *why = NULL;
        if (rp_image_ref_parse(conf, s, l, &v[cnt], &why) != 0) {
            set_err(err, errlen, "%s:%u: '%.*s': %s", path, line, (int)(l > 200 ? 200 : l), s, why);
            free(v);
            goto out;
        }
        cnt++;
    }
    *out = v;
    *n = cnt;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* Whether the parameters after a media range (up to the next ',') say q=0: "not
 * acceptable" (RFC 9110 12.4.2). */
static bool refused(const char *p)
{
    size_t len = strcspn(p, ",");
    for (const char *q = p; q < p + len; q++) {
        if (*q != ';')
            continue;
        const char *v = q + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if ((v[0] != 'q' && v[0] != 'Q') || v[1] != '=')
            continue;
        v += 2;
        if (*v != '0')
            return false;
        for (v++; *v == '.' || *v == '0'; v++)
            ;
        return v >= p + len || *v == ';' || *v == ' ' || *v == '\t';
    }
    return false;
}

bool rp_accept_names(const char *accept, const char *media_type)
{
    if (!accept || !media_type || !*media_type)
        return false;
    size_t n = strlen(media_type);
    for (const char *p = accept; (p = strstr(p, media_type)); p += n) {
        bool start_ok = p == accept || p[-1] == ' ' || p[-1] == ',' || p[-1] == '\t';
        char after = p[n];
        if (start_ok &&
            (after == '\0' || after == ',' || after == ';' || after == ' ' || after == '\t'))
            return !refused(p + n);
    }
    return false;
}

void rp_media_type_normalize(char *t)
{
    if (!t)
        return;
    char *semi = strchr(t, ';');
    if (semi)
        *semi = '\0';
    size_t n = strlen(t);
    while (n > 0 && (t[n - 1] == ' ' || t[n - 1] == '\t'))
        t[--n] = '\0';
    for (char *c = t; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
}

bool rp_manifest_tag_canonical(const char *accept, const char *media_type)
{
    if (!media_type)
        return false;
    if (strcmp(media_type, RP_MEDIA_DOCKER_MANIFEST) == 0 ||
        strcmp(media_type, RP_MEDIA_OCI_MANIFEST) == 0)
        return rp_accept_names(accept, RP_MEDIA_DOCKER_LIST) &&
               rp_accept_names(accept, RP_MEDIA_OCI_INDEX);
    return strstr(media_type, "vnd.docker.distribution.manifest.v1") == NULL;
}

void rp_digest_of(const char *like, const void *data, size_t len, char out[RP_CACHE_DIGEST_BUF])
{
    bool sha512 = like && strncmp(like, "sha512:", 7) == 0;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, sha512 ? EVP_sha512() : EVP_sha256(), NULL);
    size_t o = (size_t)snprintf(out, RP_CACHE_DIGEST_BUF, "%s:", sha512 ? "sha512" : "sha256");
    if (o + 2 * (size_t)mdlen < RP_CACHE_DIGEST_BUF)
        rp_hex_encode(md, mdlen, out + o);
}

bool rp_digest_is_empty(const char *digest)
{
    char empty[RP_CACHE_DIGEST_BUF];
    rp_digest_of(digest, "", 0, empty);
    return strcmp(empty, digest) == 0;
}
