/* SPDX-License-Identifier: Apache-2.0 */
/* route: request target -> (registry, repository, kind, reference). Everything a client sends
 * is checked against the distribution spec's grammars before it can name a cache path or an
 * upstream URL; the router only ever picks among configured registries. */
#include "route.h"

#include <stdint.h>
#include <string.h>

#include "../util/util.h"

const char *rp_route_kind_name(enum rp_route_kind k)
{
    switch (k) {
    case RP_ROUTE_PING:
        return "ping";
    case RP_ROUTE_MANIFEST:
        return "manifest";
    case RP_ROUTE_BLOB:
        return "blob";
    case RP_ROUTE_TAGS:
        return "tags";
    case RP_ROUTE_REFERRERS:
        return "referrers";
    }
    return "unknown";
}

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static bool is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* One path component: [a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)* (OCI distribution spec, "Pulling
 * manifests"). Separators never start, end or follow each other, which is what rules out
 * "." and ".." as components. */
static bool valid_component(const char *s, size_t len)
{
    size_t i = 0;
    if (len == 0 || !is_lower_alnum(s[0]))
        return false;
    while (i < len) {
        while (i < len && is_lower_alnum(s[i]))
            i++;
        if (i == len)
            return true;
        if (s[i] == '.') {
            i++;
        } else if (s[i] == '_') {
            i++;
            if (i < len && s[i] == '_')
                i++;
        } else if (s[i] == '-') {
            while (i < len && s[i] == '-')
                i++;
        } else {
            return false;
        }
        if (i == len || !is_lower_alnum(s[i]))
            return false;
    }
    return true;
}

bool rp_valid_name(const char *s, size_t len)
{
    if (len == 0 || len > RP_NAME_MAX)
        return false;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '/') {
            if (!valid_component(s + start, i - start))
                return false;
            start = i + 1;
        }
    }
    return true;
}

bool rp_valid_tag(const char *s, size_t len)
{
    if (len == 0 || len > RP_TAG_MAX)
        return false;
    if (!is_alnum(s[0]) && s[0] != '_')
        return false;
    for (size_t i = 1; i < len; i++)
        if (!is_alnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return false;
    return true;
}

bool rp_valid_digest(const char *s, size_t len)
{
    /* Only the two registered algorithms, lower-case hex only (OCI image spec, "Digests"):
     * a digest is also a cache file name, so exactly one spelling per content is accepted. */
    size_t hexlen;
    if (len > 7 && memcmp(s, "sha256:", 7) == 0)
        hexlen = 64;
    else if (len > 7 && memcmp(s, "sha512:", 7) == 0)
        hexlen = 128;
    else
        return false;
    if (len != 7 + hexlen)
        return false;
    for (size_t i = 7; i < len; i++)
        if (!is_lower_hex(s[i]))
            return false;
    return true;
}

static bool has_suffix(const char *s, size_t len, const char *suf)
{
    size_t n = strlen(suf);
    return len >= n && memcmp(s + len - n, suf, n) == 0;
}

/* Characters allowed anywhere in the path before any grammar applies. '%' is refused outright:
 * percent-encoding is how "%2e%2e" and "%2f" traversal arrives, and no valid name, tag or
 * digest needs it. */
static int check_path_chars(const char *p, size_t len, const char **why)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '%') {
            *why = "percent-encoding is not allowed in the path";
            return RP_ROUTE_E_NAME_INVALID;
        }
        if (c == '\\') {
            *why = "backslash in path";
            return RP_ROUTE_E_NAME_INVALID;
        }
        if (c < 0x21 || c >= 0x7f) {
            *why = "control, space or non-ASCII character in path";
            return RP_ROUTE_E_NAME_INVALID;
        }
    }
    /* Empty, "." and ".." segments, checked on the whole path so the reference segment is
     * covered too. */
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && p[i] != '/')
            continue;
        size_t seg = i - start;
        if (i < len && seg == 0 && start > 0) {
            *why = "empty path segment (\"//\")";
            return RP_ROUTE_E_NAME_INVALID;
        }
        if ((seg == 1 && p[start] == '.') || (seg == 2 && p[start] == '.' && p[start + 1] == '.')) {
            *why = "\".\" or \"..\" path segment";
            return RP_ROUTE_E_NAME_INVALID;
        }
        start = i + 1;
    }
    return RP_ROUTE_OK;
}

/* A host or host:port as containerd writes it in ?ns= (decoded), or a registry's section
 * name, which Links to a next page carry (rewrite_link) and which may hold a '_' (conf.c):
 * nothing that could change the meaning of a URL. Upper case is tolerated (lookup is
 * case-insensitive). */
static bool valid_ns(const char *s, size_t len)
{
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!is_alnum(c) && c != '.' && c != '-' && c != '_' && c != ':' && c != '[' && c != ']')
            return false;
    }
    return true;
}

static bool is_mt_char(char c)
{
    return is_alnum(c) || (c != '\0' && strchr("!#$&^_.+-", c) != NULL);
}

/* type "/" subtype, each restricted-name-first restricted-name-chars* (RFC 6838 4.2). */
static bool valid_media_type(const char *s, size_t len)
{
    if (len == 0 || len > 255)
        return false;
    const char *slash = memchr(s, '/', len);
    if (!slash)
        return false;
    size_t tlen = (size_t)(slash - s), slen = len - tlen - 1;
    if (tlen == 0 || slen == 0 || !is_alnum(s[0]) || !is_alnum(slash[1]))
        return false;
    for (size_t i = 0; i < len; i++)
        if (s + i != slash && !is_mt_char(s[i]))
            return false;
    return true;
}

struct query {
    char ns[256]; /* decoded */
    size_t ns_len;
    bool has_ns;
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes a query value's %XX escapes into out (NUL-terminated): clients encode values as
 * Go's url.Values does (containerd's ns=host%3A5000, oras' artifactType=a%2Fb). '+' stays
 * '+', as media types need it. -1 on a malformed escape, an encoded NUL, or no room; what
 * was decoded is then validated by the value's own grammar. */
static int query_decode(const char *v, size_t vlen, char *out, size_t outlen, size_t *olen)
{
    size_t o = 0;
    for (size_t i = 0; i < vlen; i++) {
        char c = v[i];
        if (c == '%') {
            if (i + 2 >= vlen || hexval(v[i + 1]) < 0 || hexval(v[i + 2]) < 0)
                return -1;
            c = (char)(hexval(v[i + 1]) * 16 + hexval(v[i + 2]));
            if (c == '\0')
                return -1;
            i += 2;
        }
        if (o + 1 >= outlen)
            return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    *olen = o;
    return 0;
}

/* A parameter the router does not know, as forwarded with a tags/list request: registries
 * such as older Quay page tags with an opaque parameter of their own (next_page=...), which
 * must reach them again when the client follows the Link. Unreserved characters, '+', '='
 * and well-formed escapes only, and none in the key: a registry decodes keys too, and %6E
 * would reach it as an n the router never judged. */
static bool forwardable_param(const char *k, size_t len)
{
    const char *eq = memchr(k, '=', len);
    if (memchr(k, '%', eq ? (size_t)(eq - k) : len))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = k[i];
        if (c == '%') {
            if (i + 2 >= len || hexval(k[i + 1]) < 0 || hexval(k[i + 2]) < 0)
                return false;
            i += 2;
        } else if (!is_alnum(c) && !strchr("-._~+=", c)) {
            return false;
        }
    }
    return len > 0 && k[0] != '=';
}

/* Keeps a registry's own paging parameter ("key=value" as sent, escapes and all) in
 * extra_query, to be forwarded: an unknown parameter, or a last= that is no tag (nor, for
 * referrers, a digest) but a registry's own token, named in its Link and meant to come back
 * as it was (Amazon ECR pages tags lists by an opaque base64 last=). False when it is not
 * of that grammar or does not fit: a last= is then refused, as dropped it would have
 * upstream answer the first page again, for ever. */
static bool keep_extra_param(const char *kv, size_t len, struct rp_route *out)
{
    size_t have = strlen(out->extra_query);
    if (!forwardable_param(kv, len) || have + len + 1 >= sizeof(out->extra_query))
        return false;
    out->extra_query[have] = '&';
    memcpy(out->extra_query + have + 1, kv, len);
    out->extra_query[have + 1 + len] = '\0';
    return true;
}

static int parse_query(const char *q, size_t len, struct rp_route *out, struct query *qs,
                       const char **why)
{
    bool seen_n = false, seen_last = false, seen_at = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)q[i];
        if (c < 0x21 || c >= 0x7f) {
            *why = "control, space or non-ASCII character in query";
            return RP_ROUTE_E_PARAM_INVALID;
        }
    }
    size_t pos = 0;
    while (pos <= len) {
        const char *amp = memchr(q + pos, '&', len - pos);
        size_t end = amp ? (size_t)(amp - q) : len;
        const char *k = q + pos;
        size_t plen = end - pos;
        pos = end + 1;
        if (plen == 0)
            continue;
        const char *eq = memchr(k, '=', plen);
        size_t klen = eq ? (size_t)(eq - k) : plen;
        const char *v = eq ? eq + 1 : k + plen;
        size_t vlen = eq ? plen - klen - 1 : 0;
        bool known = (klen == 2 && memcmp(k, "ns", 2) == 0) || (klen == 1 && k[0] == 'n') ||
                     (klen == 4 && memcmp(k, "last", 4) == 0) ||
                     (klen == 12 && memcmp(k, "artifactType", 12) == 0);
        if (!known) {
            /* Kept for tags/list and referrers only; otherwise ignored, whatever it
             * contains. */
            (void)keep_extra_param(k, plen, out);
            continue;
        }
        if (!eq && klen == 2) {
            *why = "query parameter without a value";
            return RP_ROUTE_E_PARAM_INVALID;
        }
        char dec[512]; /* more than any valid value: the grammars below judge */
        size_t dlen;
        if (query_decode(v, vlen, dec, sizeof(dec), &dlen) != 0) {
            if (klen == 4 && !seen_last && keep_extra_param(k, plen, out)) {
                seen_last = true;
                continue;
            }
            *why = "malformed percent-encoding in a query value, or a value too long";
            return RP_ROUTE_E_PARAM_INVALID;
        }
        v = dec;
        vlen = dlen;
        /* An empty n, last or artifactType ("n=", or "n" alone) is not given, as Go's
         * Query().Get reads it in docker-registry; given twice, even empty, is still an
         * error: which one counts would be a guess. */
        bool empty = vlen == 0 && klen != 2;
        if (klen == 2) {
            if (qs->has_ns) {
                *why = "repeated ns parameter";
                return RP_ROUTE_E_PARAM_INVALID;
            }
            if (!valid_ns(v, vlen)) {
                *why = "ns is not a host[:port]";
                return RP_ROUTE_E_NAME_INVALID;
            }
            qs->has_ns = true;
            memcpy(qs->ns, v, vlen + 1);
            qs->ns_len = vlen;
            continue;
        }
        if (klen == 1) {
            uint64_t n;
            if (seen_n || (!empty && rp_parse_u64(v, vlen, &n) != 0)) {
                *why = "n must be a non-negative decimal number, given once";
                return RP_ROUTE_E_PARAM_INVALID;
            }
            seen_n = true;
            if (!empty)
                out->n = n > RP_TAGS_N_MAX ? RP_TAGS_N_MAX : (long)n;
        } else if (klen == 4) {
            /* A tag, as tags/list pages by; a referrers page may be named by the last
             * digest listed (the kind is checked once the path is split). */
            if (seen_last || !(empty || rp_valid_tag(v, vlen) || rp_valid_digest(v, vlen) ||
                               keep_extra_param(k, plen, out))) {
                *why = "last must be a valid tag, a digest for referrers, or a registry's token "
                       "([A-Za-z0-9-._~+=] and %XX), given once";
                return RP_ROUTE_E_PARAM_INVALID;
            }
            seen_last = true;
            if (empty || rp_valid_tag(v, vlen) || rp_valid_digest(v, vlen)) {
                memcpy(out->last, v, vlen);
                out->last[vlen] = '\0';
            }
        } else {
            if (seen_at || !(empty || valid_media_type(v, vlen)) ||
                vlen >= sizeof(out->artifact_type)) {
                *why = "artifactType must be a media type, given once";
                return RP_ROUTE_E_PARAM_INVALID;
            }
            seen_at = true;
            memcpy(out->artifact_type, v, vlen);
            out->artifact_type[vlen] = '\0';
        }
    }
    return RP_ROUTE_OK;
}

/* Splits ".../<name>/<kind>/<ref>" by its last two segments, which is unambiguous: a name may
 * contain components called "blobs" or "manifests", a reference never contains '/'. */
static int split_kind(const char *p, size_t len, struct rp_route *out, size_t *name_len,
                      const char **ref, size_t *ref_len, const char **why)
{
    const char *slash = NULL;
    for (size_t i = len; i > 0; i--) {
        if (p[i - 1] == '/') {
            slash = p + i - 1;
            break;
        }
    }
    if (!slash) {
        *why = "not a registry API path";
        return RP_ROUTE_E_NOT_FOUND;
    }
    size_t head = (size_t)(slash - p);
    const char *last = slash + 1;
    size_t last_len = len - head - 1;
    static const struct {
        const char *suffix;
        enum rp_route_kind kind;
    } kinds[] = {
        {"/manifests", RP_ROUTE_MANIFEST},
        {"/blobs", RP_ROUTE_BLOB},
        {"/referrers", RP_ROUTE_REFERRERS},
    };
    if (last_len == 4 && memcmp(last, "list", 4) == 0 && has_suffix(p, head, "/tags")) {
        out->kind = RP_ROUTE_TAGS;
        *name_len = head - 5;
        *ref = last + last_len;
        *ref_len = 0;
        return RP_ROUTE_OK;
    }
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        if (!has_suffix(p, head, kinds[k].suffix))
            continue;
        if (last_len == 0)
            break;
        out->kind = kinds[k].kind;
        *name_len = head - strlen(kinds[k].suffix);
        *ref = last;
        *ref_len = last_len;
        return RP_ROUTE_OK;
    }
    *why = "not a registry API path";
    return RP_ROUTE_E_NOT_FOUND;
}

static int check_ref(struct rp_route *out, const char *ref, size_t len, const char **why)
{
    if (out->kind == RP_ROUTE_TAGS)
        return RP_ROUTE_OK;
    bool digest = out->kind != RP_ROUTE_MANIFEST || memchr(ref, ':', len) != NULL;
    if (digest) {
        if (!rp_valid_digest(ref, len)) {
            *why = "invalid digest (sha256:<64 hex> or sha512:<128 hex>, lower case)";
            return RP_ROUTE_E_DIGEST_INVALID;
        }
    } else if (!rp_valid_tag(ref, len)) {
        *why = "invalid tag";
        return RP_ROUTE_E_TAG_INVALID;
    }
    memcpy(out->ref, ref, len);
    out->ref[len] = '\0';
    out->ref_is_digest = digest;
    return RP_ROUTE_OK;
}

static bool looks_like_host(const char *s, size_t len)
{
    return memchr(s, '.', len) || memchr(s, ':', len) || rp_strieq_n(s, len, "localhost");
}

/* Sets out->reg and out->name from the client's name (steps 1-4 of DESIGN.md's Routing). */
static int choose_registry(const struct rp_conf *conf, const struct rp_conf_listen *listener,
                           const char *cname, size_t clen, const struct query *qs,
                           struct rp_route *out, const char **why)
{
    const char *name = cname;
    size_t nlen = clen;
    const struct rp_conf_registry *reg = NULL;
    if (qs->has_ns) {
        reg = conf ? rp_conf_find_registry(conf, qs->ns, qs->ns_len) : NULL;
        if (!reg) {
            *why = "ns names no configured registry";
            return RP_ROUTE_E_NAME_UNKNOWN;
        }
        out->via_ns = true;
    } else {
        const char *slash = memchr(cname, '/', clen);
        /* The first component is split off before the name grammar applies: registry
         * hostports like "127.0.0.1:5001" are not valid name components. As in docker's
         * reference parsing, a single-component name is never a registry prefix. */
        if (slash) {
            size_t flen = (size_t)(slash - cname);
            reg = conf ? rp_conf_find_registry(conf, cname, flen) : NULL;
            if (reg) {
                name = slash + 1;
                nlen = clen - flen - 1;
            } else if (looks_like_host(cname, flen)) {
                *why = "unknown registry";
                return RP_ROUTE_E_NAME_UNKNOWN;
            }
        }
        if (!reg) {
            reg = listener ? listener->def : NULL;
            if (!reg) {
                *why = "no registry prefix and this listener has no default registry";
                return RP_ROUTE_E_NAME_UNKNOWN;
            }
        }
    }
    if (!rp_valid_name(name, nlen)) {
        *why = nlen > RP_NAME_MAX ? "repository name too long" : "invalid repository name";
        return RP_ROUTE_E_NAME_INVALID;
    }
    if (rp_route_upstream_name(reg, name, nlen, out->name, sizeof(out->name)) != 0) {
        *why = "repository name too long";
        return RP_ROUTE_E_NAME_INVALID;
    }
    out->reg = reg;
    return RP_ROUTE_OK;
}

int rp_route_upstream_name(const struct rp_conf_registry *reg, const char *name, size_t nlen,
                           char *out, size_t outlen)
{
    const char *prefix = reg->dockerhub && !memchr(name, '/', nlen) ? "library/" : "";
    size_t plen = strlen(prefix);
    if (plen + nlen >= outlen || plen + nlen > RP_NAME_MAX)
        return -1;
    memcpy(out, prefix, plen);
    memcpy(out + plen, name, nlen);
    out[plen + nlen] = '\0';
    return 0;
}

int rp_route_parse(const struct rp_conf *conf, const struct rp_conf_listen *listener,
                   const char *target, size_t len, struct rp_route *out, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    *why = "ok";
    memset(out, 0, sizeof(*out));
    out->n = -1;
    if (len > RP_TARGET_MAX) {
        *why = "request target too long";
        return RP_ROUTE_E_TOO_LONG;
    }
    const char *qmark = memchr(target, '?', len);
    size_t plen = qmark ? (size_t)(qmark - target) : len;
    if (plen < 3 || memcmp(target, "/v2", 3) != 0 || (plen > 3 && target[3] != '/')) {
        *why = "not a registry API path";
        return RP_ROUTE_E_NOT_FOUND;
    }
    int rc = check_path_chars(target, plen, why);
    if (rc != RP_ROUTE_OK)
        return rc;
    struct query qs = {0};
    if (qmark) {
        rc = parse_query(qmark + 1, len - plen - 1, out, &qs, why);
        if (rc != RP_ROUTE_OK)
            return rc;
    }
    /* Past "/v2/"; check_path_chars has ruled out "//" so rest never starts with '/'. */
    const char *rest = target + 4;
    size_t rlen = plen > 4 ? plen - 4 : 0;
    if (rlen == 0) {
        out->kind = RP_ROUTE_PING;
        return RP_ROUTE_OK;
    }
    if (rlen == 8 && memcmp(rest, "_catalog", 8) == 0) {
        *why = "the catalog API is not supported";
        return RP_ROUTE_E_UNSUPPORTED;
    }
    /* Prepend the '/' so "<name>/<kind>" and "/<kind>" (empty name) parse alike. */
    size_t name_len, ref_len;
    const char *ref;
    rc = split_kind(rest - 1, rlen + 1, out, &name_len, &ref, &ref_len, why);
    if (rc != RP_ROUTE_OK)
        return rc;
    if (name_len == 0) {
        *why = "not a registry API path";
        return RP_ROUTE_E_NOT_FOUND;
    }
    name_len--; /* the '/' prepended above */
    rc = check_ref(out, ref, ref_len, why);
    if (rc != RP_ROUTE_OK)
        return rc;
    if (out->kind != RP_ROUTE_REFERRERS && out->last[0] &&
        !rp_valid_tag(out->last, strlen(out->last))) {
        *why = "last must be a valid tag, given once";
        return RP_ROUTE_E_PARAM_INVALID;
    }
    memcpy(out->client_name, rest, name_len);
    out->client_name[name_len] = '\0';
    rc = choose_registry(conf, listener, rest, name_len, &qs, out, why);
    if (rc != RP_ROUTE_OK) {
        out->reg = NULL;
        return rc;
    }
    return RP_ROUTE_OK;
}
