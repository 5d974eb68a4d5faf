/* SPDX-License-Identifier: Apache-2.0 */
/* conf/credfile.c: credentials as cluster admins hold them: a docker config.json, or the
 * kubernetes.io/dockerconfigjson Secret from a registry's service-account page (JSON or
 * YAML). Picks the entry for one registry the way docker does and never echoes a secret. */
#include "conf.h"
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DCJ "data.\".dockerconfigjson\""

struct cred_parse {
    const char *host;
    int port;
    bool dockerhub;
    const char *where; /* "" or DCJ ": " when the config.json came out of a Secret */
    char *why;
    size_t whylen;
};

static int cfail(struct cred_parse *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int cfail(struct cred_parse *c, const char *fmt, ...)
{
    int n = snprintf(c->why, c->whylen, "%s", c->where);
    if (n < 0 || (size_t)n >= c->whylen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why + n, c->whylen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* A key quoted for messages: keys are host names, not secrets, but come from the file. */
static const char *quoted(struct rp_buf *b, const char *s)
{
    rp_buf_reset(b);
    rp_buf_add(b, "\"", 1);
    rp_conf_buf_add_safe(b, s);
    rp_buf_add(b, "\"", 1);
    return b->data;
}

static bool is_hub(const char *h, size_t n)
{
    return rp_strieq_n(h, n, "docker.io") || rp_strieq_n(h, n, "index.docker.io") ||
           rp_strieq_n(h, n, "registry-1.docker.io");
}

/* How well an `auths` key names the registry: 0 = not at all; higher is better. The key is
 * cut as docker's ConvertToHostname cuts it (scheme off, path off), then host:port with an
 * equal port beats a bare host, and a bare key beats one with a repository path (podman's
 * per-namespace entries such as "quay.io/org"). */
static int key_rank(const struct cred_parse *c, const char *key)
{
    const char *s = key;
    if (strncasecmp(s, "https://", 8) == 0)
        s += 8;
    else if (strncasecmp(s, "http://", 7) == 0)
        s += 7;
    else if (strstr(s, "://"))
        return 0;
    size_t alen = strcspn(s, "/");
    const char *path = s + alen;
    bool has_path =
        !(path[0] == '\0' || strcmp(path, "/") == 0 || strcmp(path, "/v1/") == 0 ||
          strcmp(path, "/v1") == 0 || strcmp(path, "/v2/") == 0 || strcmp(path, "/v2") == 0);
    const char *h = s, *p = NULL;
    size_t hlen = alen, plen = 0;
    if (alen > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', alen);
        if (!rb)
            return 0;
        h = s + 1;
        hlen = (size_t)(rb - h);
        if (rb + 1 < s + alen) {
            if (rb[1] != ':')
                return 0;
            p = rb + 2;
            plen = (size_t)(s + alen - p);
        }
    } else {
        const char *colon = memchr(s, ':', alen);
        if (colon) {
            if (memchr(colon + 1, ':', (size_t)(s + alen - colon - 1)))
                return 0; /* an unbracketed IPv6 literal: no way to tell its port */
            hlen = (size_t)(colon - s);
            p = colon + 1;
            plen = alen - hlen - 1;
        }
    }
    if (hlen == 0)
        return 0;
    if (!rp_strieq_n(h, hlen, c->host) && !(c->dockerhub && is_hub(h, hlen)))
        return 0;
    int rank = 1;
    if (p) {
        uint64_t v;
        if (rp_parse_u64(p, plen, &v) != 0 || v != (uint64_t)c->port)
            return 0;
        rank = 2;
    }
    return rank * 2 + (has_path ? 0 : 1);
}

static bool has_ctl(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

/* An optional string field: -1 on a wrong type, else 0 with *out NULL when absent. */
static int opt_string(struct cred_parse *c, json_t *entry, const char *qkey, const char *field,
                      const char **out, size_t *outlen)
{
    json_t *v = json_object_get(entry, field);
    *out = NULL;
    *outlen = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return cfail(c, "auths.%s.%s is not a string", qkey, field);
    *out = json_string_value(v);
    *outlen = json_string_length(v);
    return 0;
}

static int take_entry(struct cred_parse *c, json_t *cfg, const char *key, json_t *entry,
                      struct rp_conf_auth *out)
{
    struct rp_buf qb;
    const char *auth, *user, *pass, *tok, *regtok;
    size_t authl, userl, passl, tokl, regtokl;
    unsigned char *dec = NULL;
    size_t decl = 0;
    int rc = -1;
    rp_buf_init(&qb, 256);
    const char *q = quoted(&qb, key);
    if (!json_is_object(entry)) {
        cfail(c, "auths.%s is not an object", q);
        goto out;
    }
    if (opt_string(c, entry, q, "auth", &auth, &authl) ||
        opt_string(c, entry, q, "username", &user, &userl) ||
        opt_string(c, entry, q, "password", &pass, &passl) ||
        opt_string(c, entry, q, "identitytoken", &tok, &tokl) ||
        opt_string(c, entry, q, "registrytoken", &regtok, &regtokl))
        goto out;
    if (regtokl > 0) {
        cfail(c, "auths.%s holds a registrytoken; registrytoken credentials are not supported", q);
        goto out;
    }
    if (authl > 0) {
        /* docker decodes `auth` and lets it win over username/password. Go's decoder
         * skips CR and LF, so an `auth` made with base64(1), which wraps at 76 columns,
         * works with docker and podman: so it does here. */
        char *flat = rp_xmalloc(authl + 1);
        size_t flatl = 0;
        for (size_t i = 0; i < authl; i++)
            if (auth[i] != '\r' && auth[i] != '\n')
                flat[flatl++] = auth[i];
        dec = rp_base64_decode(flat, flatl, &decl);
        rp_secure_zero(flat, authl + 1);
        free(flat);
        if (!dec) {
            cfail(c, "auths.%s.auth is not valid base64", q);
            goto out;
        }
        const char *colon = memchr(dec, ':', decl);
        if (!colon || has_ctl((const char *)dec, decl)) {
            cfail(c, "auths.%s.auth does not decode to user:password", q);
            goto out;
        }
        user = (const char *)dec;
        userl = (size_t)(colon - user);
        pass = colon + 1;
        passl = decl - userl - 1;
        if (userl == 0 && (passl > 0 || tokl == 0)) {
            cfail(c, "auths.%s.auth decodes to an empty user name", q);
            goto out;
        }
        if (passl == 0 && tokl == 0) {
            cfail(c, "auths.%s.auth decodes to an empty password", q);
            goto out;
        }
    }
    if ((user && has_ctl(user, userl)) || (pass && has_ctl(pass, passl)) ||
        (tok && has_ctl(tok, tokl))) {
        cfail(c, "auths.%s: a credential contains a control character", q);
        goto out;
    }
    if (userl == 0 && passl > 0) {
        cfail(c, "auths.%s has a password but no username", q);
        goto out;
    }
    if (userl > 0 && passl == 0 && tokl == 0) {
        cfail(c, "auths.%s has a username but no password", q);
        goto out;
    }
    if (userl == 0 && tokl == 0) {
        const char *store = json_string_value(json_object_get(cfg, "credsStore"));
        const char *helper = NULL, *hk;
        json_t *hv;
        struct rp_buf sb;
        rp_buf_init(&sb, 256);
        /* docker asks the registry's credHelpers entry before credsStore, and leaves an
         * empty auths entry beside either. */
        json_object_foreach(json_object_get(cfg, "credHelpers"), hk, hv)
        {
            if (!helper && key_rank(c, hk) > 0)
                helper = json_string_value(hv);
        }
        if (helper) {
            rp_buf_addf(&sb, ": docker keeps them with the credential helper '");
            rp_conf_buf_add_safe(&sb, helper);
            rp_buf_addf(&sb, "' (credHelpers), which regproxy does not run");
        } else if (store) {
            rp_buf_addf(&sb, ": docker keeps them in the credential store '");
            rp_conf_buf_add_safe(&sb, store);
            rp_buf_addf(&sb, "' (credsStore), which regproxy does not read");
        }
        cfail(c, "auths.%s has no credentials (auth, username and password, or identitytoken)%s", q,
              sb.len ? sb.data : "");
        rp_buf_free(&sb);
        goto out;
    }
    out->key = rp_xstrdup(key);
    if (userl > 0) {
        out->user = rp_xstrndup(user, userl);
        if (passl > 0)
            out->password = rp_xstrndup(pass, passl);
    }
    if (tokl > 0)
        out->identity_token = rp_xstrndup(tok, tokl);
    rc = 0;
out:
    if (dec) {
        rp_secure_zero(dec, decl);
        free(dec);
    }
    rp_buf_free(&qb);
    return rc;
}

/* The registry as messages show it: "host" or "host:port" ("[v6]:port"). */
static void target_name(const struct cred_parse *c, char *buf, size_t n)
{
    bool v6 = strchr(c->host, ':') != NULL;
    if (c->port == 443 || c->port == 0)
        snprintf(buf, n, v6 ? "[%s]" : "%s", c->host);
    else
        snprintf(buf, n, v6 ? "[%s]:%d" : "%s:%d", c->host, c->port);
}

static int from_config(struct cred_parse *c, json_t *cfg, struct rp_conf_auth *out)
{
    char target[300];
    target_name(c, target, sizeof(target));
    if (!json_is_object(cfg))
        return cfail(c, "expected a JSON object or YAML mapping (a docker config.json or a "
                        "Kubernetes Secret of type kubernetes.io/dockerconfigjson)");
    json_t *auths = json_object_get(cfg, "auths");
    if (!auths)
        return cfail(c, "no \"auths\" object: not a docker config.json or a Kubernetes Secret "
                        "of type kubernetes.io/dockerconfigjson");
    if (!json_is_object(auths))
        return cfail(c, "\"auths\" is not an object");
    const char *key, *best_key = NULL;
    json_t *v, *best = NULL;
    int best_rank = 0;
    json_object_foreach(auths, key, v)
    {
        int r = key_rank(c, key);
        if (r > best_rank) {
            best_rank = r;
            best = v;
            best_key = key;
        }
    }
    if (best)
        return take_entry(c, cfg, best_key, best, out);

    struct rp_buf b;
    rp_buf_init(&b, 1024);
    json_t *helpers = json_object_get(cfg, "credHelpers");
    json_object_foreach(helpers, key, v)
    {
        if (key_rank(c, key) > 0 && json_is_string(v)) {
            rp_buf_addf(&b, "; %s is served by the credential helper '", target);
            rp_conf_buf_add_safe(&b, json_string_value(v));
            rp_buf_addf(&b, "' (credHelpers), which regproxy does not run");
            break;
        }
    }
    if (json_object_size(auths) == 0) {
        cfail(c, "\"auths\" is empty: no entry for %s%s", target, b.len ? b.data : "");
    } else {
        struct rp_buf keys;
        rp_buf_init(&keys, 1024);
        size_t shown = 0;
        json_object_foreach(auths, key, v)
        {
            if (shown == 10) {
                rp_buf_addf(&keys, ", and %zu more", json_object_size(auths) - shown);
                break;
            }
            rp_buf_addf(&keys, "%s\"", shown++ ? ", " : "");
            rp_conf_buf_add_safe(&keys, key);
            rp_buf_add(&keys, "\"", 1);
        }
        cfail(c, "no entry for %s (keys present: %s)%s", target, keys.data, b.len ? b.data : "");
        rp_buf_free(&keys);
    }
    rp_buf_free(&b);
    return -1;
}

/* A Kubernetes Secret: its data[".dockerconfigjson"] (base64) or stringData (plain) holds
 * the config.json. */
static int from_secret(struct cred_parse *c, json_t *secret, struct rp_conf_auth *out)
{
    struct rp_buf qb;
    json_t *kind = json_object_get(secret, "kind");
    json_t *type = json_object_get(secret, "type");
    json_t *data = json_object_get(secret, "data");
    json_t *sdata = json_object_get(secret, "stringData");
    json_t *inner = NULL;
    char *b64 = NULL, *decoded = NULL;
    size_t decl = 0;
    int rc = -1;
    rp_buf_init(&qb, 256);
    if (!json_is_string(kind) || strcmp(json_string_value(kind), "Secret") != 0) {
        cfail(c, "\"kind\" is %s, expected \"Secret\"",
              json_is_string(kind) ? quoted(&qb, json_string_value(kind)) : "not a string");
        goto out;
    }
    if (type && (!json_is_string(type) ||
                 strcmp(json_string_value(type), "kubernetes.io/dockerconfigjson") != 0)) {
        cfail(c, "Secret \"type\" is %s, expected \"kubernetes.io/dockerconfigjson\"%s",
              json_is_string(type) ? quoted(&qb, json_string_value(type)) : "not a string",
              json_is_string(type) &&
                      strcmp(json_string_value(type), "kubernetes.io/dockercfg") == 0
                  ? " (the legacy .dockercfg format is not supported)"
                  : "");
        goto out;
    }
    json_t *v = json_is_object(data) ? json_object_get(data, ".dockerconfigjson") : NULL;
    json_t *sv = json_is_object(sdata) ? json_object_get(sdata, ".dockerconfigjson") : NULL;
    if (data && !json_is_object(data)) {
        cfail(c, "Secret \"data\" is not an object");
        goto out;
    }
    if (v) {
        if (!json_is_string(v)) {
            cfail(c, DCJ " is not a string");
            goto out;
        }
        /* Long base64 values get wrapped or folded in YAML; the spaces are not data. */
        const char *s = json_string_value(v);
        size_t n = json_string_length(v), k = 0;
        b64 = rp_xmalloc(n + 1);
        for (size_t i = 0; i < n; i++)
            if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
                b64[k++] = s[i];
        decoded = (char *)rp_base64_decode(b64, k, &decl);
        rp_secure_zero(b64, n);
        if (!decoded) {
            cfail(c, DCJ " is not valid base64");
            goto out;
        }
    } else if (sv && json_is_string(sv)) {
        decl = json_string_length(sv);
        decoded = rp_xstrndup(json_string_value(sv), decl);
    } else if (sv) {
        cfail(c, "stringData.\".dockerconfigjson\" is not a string");
        goto out;
    } else {
        cfail(c, "Secret has no " DCJ);
        goto out;
    }
    if (rp_conf_is_binary(decoded, decl)) {
        cfail(c, DCJ " does not decode to text (binary data)");
        goto out;
    }
    json_error_t e;
    inner = json_loadb(decoded, decl, JSON_REJECT_DUPLICATES, &e);
    if (!inner) {
        rp_conf_json_error_scrub(e.text); /* it would quote the secret */
        cfail(c, DCJ " does not decode to JSON: line %d, column %d: %s", e.line, e.column, e.text);
        rp_secure_zero(&e, sizeof(e));
        goto out;
    }
    c->where = DCJ ": ";
    rc = from_config(c, inner, out);
out:
    if (decoded) {
        rp_secure_zero(decoded, decl);
        free(decoded);
    }
    free(b64);
    rp_conf_tree_scrub(inner);
    rp_buf_free(&qb);
    return rc;
}

int rp_conf_auth_parse(const char *text, size_t len, const char *source, const char *host, int port,
                       bool dockerhub, struct rp_conf_auth *out, char *err, size_t errlen)
{
    char why[1024];
    struct cred_parse c = {.host = host ? host : "",
                           .port = port,
                           .dockerhub = dockerhub,
                           .where = "",
                           .why = why,
                           .whylen = sizeof(why)};
    json_t *root = NULL;
    int rc = -1;
    why[0] = '\0';
    if (err && errlen)
        err[0] = '\0';
    if (!out)
        return -1;
    memset(out, 0, sizeof(*out));
    if (!text && len > 0) {
        cfail(&c, "no text");
        goto out;
    }
    if (len > RP_CONF_MAX_DOC) {
        cfail(&c, "larger than 1 MiB");
        goto out;
    }
    if (rp_conf_is_binary(text, len)) {
        cfail(&c, "binary data, not a docker config.json or a Kubernetes Secret (JSON or YAML)");
        goto out;
    }
    root = rp_conf_tree_load(text, len, why, sizeof(why));
    if (!root)
        goto out;
    if (json_is_object(root) && !json_object_get(root, "auths") &&
        (json_object_get(root, "kind") || json_object_get(root, "data") ||
         json_object_get(root, "stringData")))
        rc = from_secret(&c, root, out);
    else
        rc = from_config(&c, root, out);
out:
    rp_conf_tree_scrub(root);
    if (rc != 0) {
        rp_conf_auth_clear(out);
        if (err && errlen) {
            if (source)
                snprintf(err, errlen, "%s: %s", source, why);
            else
                snprintf(err, errlen, "%s", why);
        }
    }
    return rc;
}

void rp_conf_auth_clear(struct rp_conf_auth *a)
{
    if (!a)
        return;
    free(a->key);
    free(a->user);
    rp_free_secret(a->password);
    rp_free_secret(a->identity_token);
    memset(a, 0, sizeof(*a));
}
