/* SPDX-License-Identifier: Apache-2.0 */
/* route: turns a request target into (registry, repository, kind, reference), validating
 * every part against the distribution spec's grammars. Pure functions; no I/O. The router
 * only ever selects configured registries: nothing in a request names a host to dial. */
#ifndef RP_ROUTE_H
#define RP_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "../conf/conf.h"

#define RP_NAME_MAX 255   /* repository name, as sent upstream (distribution's limit) */
#define RP_TAG_MAX 128    /* [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} */
#define RP_DIGEST_MAX 135 /* "sha512:" + 128 hex */
#define RP_TARGET_MAX 2048

enum rp_route_kind {
    RP_ROUTE_PING,      /* GET /v2/ */
    RP_ROUTE_MANIFEST,  /* /v2/<name>/manifests/<tag|digest> */
    RP_ROUTE_BLOB,      /* /v2/<name>/blobs/<digest> */
    RP_ROUTE_TAGS,      /* /v2/<name>/tags/list[?n=&last=] */
    RP_ROUTE_REFERRERS, /* /v2/<name>/referrers/<digest>[?artifactType=] */
};
const char *rp_route_kind_name(enum rp_route_kind k); /* "ping", "manifest", ... */

enum rp_route_err {
    RP_ROUTE_OK = 0,
    RP_ROUTE_E_NOT_FOUND = -1,      /* not a registry API path: 404 NOT_FOUND */
    RP_ROUTE_E_NAME_INVALID = -2,   /* 400 NAME_INVALID (bad grammar, too long, traversal,
                                       percent-encoding anywhere in the path) */
    RP_ROUTE_E_NAME_UNKNOWN = -3,   /* 404 NAME_UNKNOWN: no configured registry serves it */
    RP_ROUTE_E_DIGEST_INVALID = -4, /* 400 DIGEST_INVALID */
    RP_ROUTE_E_TAG_INVALID = -5,    /* 400 TAG_INVALID (manifest reference that is neither) */
    RP_ROUTE_E_PARAM_INVALID = -6,  /* 400 PAGINATION_NUMBER_INVALID / bad query */
    RP_ROUTE_E_UNSUPPORTED = -7,    /* 404 UNSUPPORTED: e.g. /v2/_catalog */
    RP_ROUTE_E_TOO_LONG = -8,       /* 414: target longer than RP_TARGET_MAX */
};

struct rp_route {
    enum rp_route_kind kind;
    const struct rp_conf_registry *reg; /* NULL only for PING */
    /* Repository name as sent upstream: prefix stripped, "library/" added for Docker Hub
     * single-component names. */
    char name[RP_NAME_MAX + 1];
    /* What the client called the repository (its path's name part, prefix included), used
     * to rewrite Link headers into the proxy's namespace. */
    char client_name[RP_TARGET_MAX + 1];
    char ref[RP_DIGEST_MAX + 1]; /* tag or digest (MANIFEST, BLOB, REFERRERS); "" else */
    bool ref_is_digest;
    bool via_ns; /* chosen by ?ns= (Link rewrites must keep the ns parameter) */
    long n;      /* TAGS, REFERRERS: ?n=, -1 when absent; capped at RP_TAGS_N_MAX */
    /* TAGS: ?last= (a tag); REFERRERS: a tag or a digest; "" when absent, or when it is a
     * registry's own token (kept as sent in extra_query) */
    char last[RP_DIGEST_MAX + 1];
    char artifact_type[256]; /* REFERRERS: ?artifactType= (decoded), "" when absent */
    /* Query parameters other than ns, n, last and artifactType, as sent, each with a leading
     * '&' (those with characters beyond [A-Za-z0-9-._~+=%XX] are left out), and a last=
     * that is a registry's own token rather than a tag. Forwarded with tags/list and
     * referrers: registries page with parameters of their own, named in the next page's
     * Link. As long as a target may be, so that no token that reached us is cut (Amazon's
     * run to hundreds of bytes, longer once percent-encoded). */
    char extra_query[RP_TARGET_MAX + 1];
};
#define RP_TAGS_N_MAX 10000

/* Parses an origin-form request target ("/v2/...[?query]") for a request that arrived on
 * `listener`. Routing (DESIGN.md): `ns=<host>` selects the registry whose host (or name) is
 * <host>; else a first path component equal to a configured registry's name, host or
 * hostport selects it and is stripped; else the listener's default registry. A first
 * component that looks like a host (contains '.' or ':', or is "localhost") but is not
 * configured, an unknown ns, or no default: E_NAME_UNKNOWN. Unknown query parameters are
 * kept in extra_query (tags/list and referrers forward them); `ns`, `n`, `last`,
 * `artifactType` are percent-decoded and validated (`last` is a tag, or for referrers a tag
 * or a digest; any other `last` of extra_query's grammar is a registry's own token, kept
 * there as sent). Returns RP_ROUTE_OK or an error;
 * *why (may be NULL) gets a static human-readable reason. */
int rp_route_parse(const struct rp_conf *conf, const struct rp_conf_listen *listener,
                   const char *target, size_t len, struct rp_route *out, const char **why);

/* The repository reg serves the valid repository name `name` (nlen bytes) under, written
 * to out (outlen bytes, NUL-terminated): Docker Hub's official images live under library/,
 * so "alpine" is "library/alpine" there, as docker pulls it. -1 when it does not fit. */
int rp_route_upstream_name(const struct rp_conf_registry *reg, const char *name, size_t nlen,
                           char *out, size_t outlen);

/* Grammar checks (distribution spec). */
bool rp_valid_name(const char *s, size_t len); /* path-component grammar, <= RP_NAME_MAX */
bool rp_valid_tag(const char *s, size_t len);
/* "sha256:" + 64 lower-case hex, or "sha512:" + 128 lower-case hex. */
bool rp_valid_digest(const char *s, size_t len);

#endif
