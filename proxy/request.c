/* SPDX-License-Identifier: Apache-2.0 */
/* request: one client request's state machine: route -> cache lookup -> (confirm |
 * upstream fetch | shared fill) -> answer. Callbacks from the client socket, fetches and
 * fills only record what happened and call rp_req_drive or answer. */
#include "proxy.h"
#include "offline.h"
#include "acl.h"

#include <errno.h>
#include <event2/buffer.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ACCEPT_MAX 4096
/* A Range header longer than this is ignored (the whole blob answers it): room for the
 * many ranges lazy pullers ask for at once. */
#define RANGE_MAX 2048
/* Ranges of one request answered as multipart/byteranges; more get the whole blob. */
#define RANGES_MAX 64
/* An If-None-Match list longer than this is ignored: the full answer is always a correct
 * one to a conditional request. */
#define INM_MAX 1024

static const struct rp_fetch_cb upstream_cb;
static void mp_free(struct rp_multipart *mp);

/* Whether an If-Range value is the strong ETag "<digest>" of the blob the target names
 * (/v2/<name>/blobs/<digest>). */
static bool if_range_names_blob(const struct rp_http_header *hd, const char *target, size_t tlen)
{
    const char *v = hd->value;
    size_t n = hd->value_len;
    if (n < 3 || v[0] != '"' || v[n - 1] != '"')
        return false;
    const char *d = v + 1;
    size_t dlen = n - 2;
    const char *q = memchr(target, '?', tlen);
    if (q)
        tlen = (size_t)(q - target);
    return tlen > dlen + 7 && memcmp(target + tlen - dlen, d, dlen) == 0 &&
           memcmp(target + tlen - dlen - 7, "/blobs/", 7) == 0;
}

/* The non-empty lines of header `name` as one list (RFC 9110 5.3: repeated lines join with
 * ", "), into dst: as many whole lines as fit in cap bytes, the rest left out. dst has room
 * for cap + 1 and is NUL-terminated. */
static void join_fields(const struct rp_http_request_head *h, const char *name, char *dst,
                        size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct rp_http_header *hd = &h->headers[i];
        if (!rp_strieq_n(hd->name, hd->name_len, name) || hd->value_len == 0)
            continue;
        size_t add = (n ? 2 : 0) + hd->value_len;
        if (n + add > cap)
            break;
        if (n) {
            memcpy(dst + n, ", ", 2);
            n += 2;
        }
        memcpy(dst + n, hd->value, hd->value_len);
        n += hd->value_len;
    }
    dst[n] = '\0';
}

struct rp_req *rp_req_new(struct rp_conn *c, const struct rp_http_request_head *h)
{
    /* One allocation: the strings the request keeps from its head live after it. Docker
     * sends one Accept header per media type; others send one list. Upstream gets the same
     * list either way (joined as RFC 9110 allows); an absurd list is cut, not fatal. */
    size_t acc_len = 0, range_len = 0, n_ranges = 0, inm_len = 0;
    bool acc_full = false, if_range_other = false;
    const struct rp_http_header *range = NULL;
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct rp_http_header *hd = &h->headers[i];
        if (rp_strieq_n(hd->name, hd->name_len, "accept") && hd->value_len > 0 && !acc_full) {
            size_t add = (acc_len ? 2 : 0) + hd->value_len;
            if (acc_len + add > ACCEPT_MAX)
                acc_full = true; /* the rest is cut; later headers still count */
            else
                acc_len += add;
        } else if (rp_strieq_n(hd->name, hd->name_len, "range")) {
            n_ranges++;
            range = hd;
        } else if (rp_strieq_n(hd->name, hd->name_len, "if-range")) {
            if_range_other = !if_range_names_blob(hd, h->target, h->target_len);
        } else if (rp_strieq_n(hd->name, hd->name_len, "if-none-match") && hd->value_len > 0) {
            inm_len += (inm_len ? 2 : 0) + hd->value_len;
        }
    }
    if (inm_len > INM_MAX)
        inm_len = 0;
    /* If-Range (RFC 9110 13.1.5): the range only for the representation it names. A blob's
     * only validator is its digest, as a strong ETag; a date or another tag gets it whole. */
    if (if_range_other)
        n_ranges = 0;
    /* Range is a single field: repeated, or too long to be a sane one, it is ignored
     * (RFC 9110 14.2), as a malformed one is below. */
    if (n_ranges != 1 || !range || range->value_len > RANGE_MAX)
        range = NULL;
    else
        range_len = range->value_len;
    struct rp_req *r = rp_xcalloc(1, sizeof(*r) + h->target_len + 1 + (acc_len + 1) +
                                         (range_len + 1) + (inm_len + 1));
    char *p = (char *)(r + 1);
    r->target = p;
    memcpy(p, h->target, h->target_len);
    p += h->target_len + 1;
    if (acc_len) {
        join_fields(h, "accept", p, acc_len);
        if (rp_header_value_safe(p))
            r->accept = p;
        p += acc_len + 1;
    }
    if (range) {
        memcpy(p, range->value, range_len);
        /* A Range that does not parse is ignored (RFC 9110 14.2), here once for all: kept,
         * it would pass through to upstream, which ignores it too and sends the whole blob,
         * uncached, at every such request. */
        if (rp_header_value_safe(p) && rp_http_range_valid(p, range_len))
            r->range = p;
        p += range_len + 1;
    }
    if (inm_len) {
        join_fields(h, "if-none-match", p, inm_len);
        if (rp_header_value_safe(p))
            r->if_none_match = p;
    }
    r->conn = c;
    r->state = RQ_ROUTE;
    r->started_ms = rp_now_ms();
    r->head = h->method == RP_HTTP_HEAD;
    rp_request_id(r->id, sizeof(r->id));
    r->cache_status = "PASS";
    r->stream_expected = -1;
    r->up_h.length = -1;
    r->confirmed_len = -1;
    r->fill_fd = -1;
    return r;
}

void rp_req_free(struct rp_req *r)
{
    if (!r)
        return;
    if (r->fetch)
        rp_fetch_cancel(r->fetch);
    /* Still leading here means the fetch was cancelled before it ended: no answer. */
    rp_inflight_done(r, false);
    rp_inflight_leave(r);
    rp_fill_leave(r);
    if (r->fill_fd >= 0)
        close(r->fill_fd);
    if (r->blob_held)
        rp_cache_release(r->conn->srv->cache, r->route.ref);
    mp_free(r->mp);
    free(r->up_err);
    free(r->peer_err);
    rp_headers_free(&r->up_h);
    rp_buf_free(&r->body);
    EVP_MD_CTX_free(r->stream_md);
    free(r);
}

void rp_req_log(const struct rp_req *r, const char *aborted)
{
    struct rp_access a = {
        .id = r->id,
        .method = r->head ? "HEAD" : "GET",
        .path = r->target,
        .registry = r->route.reg ? r->route.reg->name : "-",
        .cache = r->cache_status,
        .peer = r->conn->peer,
        .status = r->status,
        .upstream = r->up_status,
        .bytes = r->bytes,
        .ms = rp_now_ms() - r->started_ms,
        .aborted = aborted,
    };
    rp_access_log(&a);
}

/* What is still queued for r's client will never leave: bytes counts what did. */
static void uncount_undelivered(struct rp_req *r, size_t undelivered)
{
    r->bytes = r->bytes > undelivered ? r->bytes - undelivered : 0;
}

void rp_req_cut(struct rp_req *r, size_t undelivered, const char *why)
{
    uncount_undelivered(r, undelivered);
    rp_req_log(r, why);
    if (r->status) /* a response was under way: it counts, with what left the proxy */
        rp_metrics_request(&r->conn->srv->metrics, r->routed ? (int)r->route.kind : -1, r->status,
                           r->cache_status, r->bytes);
}

bool rp_req_take_back(struct rp_req *r)
{
    if (!r->head_len || !rp_conn_take_back(r->conn, r->head_len + (size_t)r->bytes))
        return false;
    r->head_len = 0;
    r->bytes = 0;
    r->status = 0;
    return true;
}

void rp_req_queued(struct rp_req *r)
{
    r->state = RQ_SENDING;
    if (rp_conn_output_len(r->conn) == 0)
        rp_req_finish(r, NULL);
}

void rp_req_finish(struct rp_req *r, const char *aborted)
{
    /* Waiters look up again from the loop, after this answer was cached (or not). */
    rp_inflight_done(r, aborted == NULL);
    /* Aborted, the connection closes at once (below): what is still queued for the client
     * never leaves, and bytes counts what did, as for a client that left (rp_req_cut). */
    if (aborted)
        uncount_undelivered(r, rp_conn_output_len(r->conn));
    rp_req_log(r, aborted);
    r->state = RQ_DONE;
    rp_metrics_request(&r->conn->srv->metrics, r->routed ? (int)r->route.kind : -1, r->status,
                       r->cache_status, r->bytes);
    /* Aborted: the connection closes at once, so a cut body never looks complete. */
    rp_conn_request_done(r->conn, aborted != NULL);
}

static void respond(struct rp_req *r, int status, const char *type, const char *body, size_t len,
                    const char *extra)
{
    rp_conn_write_response(r->conn, status, type, extra, body, len, !r->head);
    if (!r->head)
        r->bytes += len;
    rp_req_finish(r, NULL);
}

void rp_req_error(struct rp_req *r, int status, const char *code, const char *message,
                  const char *detail)
{
    char *body = rp_error_body(code, message, detail);
    respond(r, status, "application/json", body, strlen(body), NULL);
    free(body);
}

void rp_req_upstream_error(struct rp_req *r, int status, const char *code, const char *message,
                           int up_status, const char *err)
{
    json_t *d = json_pack("{s:s}", "registry", r->route.reg->name);
    if (up_status)
        json_object_set_new(d, "upstream_status", json_integer(up_status));
    if (err)
        json_object_set_new(d, "error", json_string(err));
    char *detail = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    if (up_status)
        r->up_status = up_status;
    rp_req_error(r, status, code, message, detail);
    free(detail);
}

/* respond() with an answer made from upstream's error. A HEAD's carries no Content-Length:
 * the GET's body is upstream's own error body, or quotes it, and a HEAD never sees it
 * (upstream's HEAD has none), so the length our own body would have is not the GET's, which
 * RFC 9110 8.6 forbids; 9.3.2 lets a HEAD omit what only the content determines. Clients
 * read nothing but a HEAD's status (containerd, containers/image). */
static void respond_upstream_error(struct rp_req *r, int status, const char *body, size_t len,
                                   const char *extra)
{
    if (!r->head) {
        respond(r, status, "application/json", body, len, extra);
        return;
    }
    rp_conn_write_head(r->conn, status, "application/json", -1, extra);
    rp_req_finish(r, NULL);
}

/* Upstream said no. 4xx pass on as they are (429 with its Retry-After), with upstream's
 * registry-format body when it sent one; 5xx become 503 with upstream's status and error
 * in the detail. Never turned into 404. */
/* What a 405's Allow says through the proxy: upstream's methods that the proxy serves too
 * (GET, HEAD), e.g. "GET" for a HEAD of tags/list on docker-registry. Upstream's PUT or
 * DELETE would invite a client to what the proxy refuses. */
static void allow_line(const char *allow, char *out, size_t cap)
{
    bool get = false, head = false;
    for (const char *p = allow; *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, " \t,");
        get |= n == 3 && memcmp(p, "GET", 3) == 0;
        head |= n == 4 && memcmp(p, "HEAD", 4) == 0;
        p += n;
    }
    snprintf(out, cap, "Allow: %s%s%s\r\n", get ? "GET" : "", get && head ? ", " : "",
             head ? "HEAD" : "");
}

void rp_req_answer_upstream_failure(struct rp_req *r, int status, const char *retry_after,
                                    const char *allow, const char *body, size_t len)
{
    r->up_status = status;
    if (status < 400 || status > 599) {
        rp_req_upstream_error(r, 502, "UNKNOWN", "unexpected answer from upstream", status, NULL);
        return;
    }
    char extra[128] = "";
    /* Seconds or an HTTP date fit in 64; a longer value would be cut with its CRLF and
     * the head would end inside the body (the fill caps it the same way). */
    if ((status == 429 || status >= 500) && retry_after && strlen(retry_after) < 64)
        snprintf(extra, sizeof(extra), "Retry-After: %s\r\n", retry_after);
    else if (status == 405 && allow)
        allow_line(allow, extra, sizeof(extra));
    json_t *j = len ? json_loadb(body, len, 0, NULL) : NULL;
    bool registry_format = j && json_is_array(json_object_get(j, "errors"));
    /* A 401 that survived the auth retries refuses the proxy's credentials or its tokens
     * (insufficient_scope): 502, as in up_failed, never a challenge-less 401 to a client
     * that has nothing to log in with. */
    if (status >= 500 || status == 401) {
        bool refused = status == 401;
        char *msg = refused ? rp_xasprintf("upstream registry %s refused the proxy's credentials",
                                           r->route.reg->name)
                            : rp_xasprintf("upstream registry %s failed with %d",
                                           r->route.reg->name, status);
        json_t *d =
            json_pack("{s:s, s:i}", "registry", r->route.reg->name, "upstream_status", status);
        if (registry_format)
            json_object_set(d, "upstream_errors", json_object_get(j, "errors"));
        char *detail = json_dumps(d, JSON_COMPACT);
        char *eb = rp_error_body(refused ? "UNAUTHORIZED" : "UNAVAILABLE", msg, detail);
        respond_upstream_error(r, refused ? 502 : 503, eb, strlen(eb), extra[0] ? extra : NULL);
        free(eb);
        free(detail);
        free(msg);
        json_decref(d);
        json_decref(j);
        return;
    }
    json_decref(j);
    if (registry_format) {
        respond_upstream_error(r, status, body, len, extra[0] ? extra : NULL);
        return;
    }
    char *msg = rp_xasprintf("upstream registry %s answered %d", r->route.reg->name, status);
    json_t *d = json_pack("{s:s, s:i}", "registry", r->route.reg->name, "upstream_status", status);
    char *detail = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    char *eb = rp_error_body(rp_error_code_for_status(status, r->route.kind), msg, detail);
    respond_upstream_error(r, status, eb, strlen(eb), extra[0] ? extra : NULL);
    free(eb);
    free(detail);
    free(msg);
}

static void route_error(struct rp_req *r, int e, const char *why)
{
    r->cache_status = "-"; /* never routed: the access line says so, as for a refusal */
    switch (e) {
    case RP_ROUTE_E_NAME_INVALID:
        rp_req_error(r, 400, "NAME_INVALID", why, NULL);
        return;
    case RP_ROUTE_E_NAME_UNKNOWN:
        rp_req_error(r, 404, "NAME_UNKNOWN", why, NULL);
        return;
    case RP_ROUTE_E_DIGEST_INVALID:
        rp_req_error(r, 400, "DIGEST_INVALID", why, NULL);
        return;
    case RP_ROUTE_E_TAG_INVALID:
        rp_req_error(r, 400, "TAG_INVALID", why, NULL);
        return;
    case RP_ROUTE_E_PARAM_INVALID:
        rp_req_error(r, 400, "PAGINATION_NUMBER_INVALID", why, NULL);
        return;
    case RP_ROUTE_E_TOO_LONG:
        rp_req_error(r, 414, "NAME_INVALID", why, NULL);
        return;
    case RP_ROUTE_E_UNSUPPORTED:
    case RP_ROUTE_E_NOT_FOUND:
    default:
        rp_req_error(r, 404, "UNSUPPORTED", why ? why : "not a registry API endpoint", NULL);
        return;
    }
}

/* Appends a list's paging parameters (n, last, a registry's own) to the query q holds, and
 * makes its first '&' the '?'. */
static void page_query(const struct rp_route *rt, char *q, size_t cap)
{
    if (rt->n >= 0)
        snprintf(q + strlen(q), cap - strlen(q), "&n=%ld", rt->n);
    if (rt->last[0])
        snprintf(q + strlen(q), cap - strlen(q), "&last=%s", rt->last);
    snprintf(q + strlen(q), cap - strlen(q), "%s", rt->extra_query);
    if (q[0])
        q[0] = '?';
}

/* The upstream path for the route (only validated parts travel upstream). */
static char *upstream_path(const struct rp_req *r)
{
    const struct rp_route *rt = &r->route;
    switch (rt->kind) {
    case RP_ROUTE_MANIFEST:
        return rp_xasprintf("/v2/%s/manifests/%s", rt->name, rt->ref);
    case RP_ROUTE_BLOB:
        return rp_xasprintf("/v2/%s/blobs/%s", rt->name, rt->ref);
    case RP_ROUTE_REFERRERS: {
        /* Encoded as clients send it: a Go registry reads a bare '+' as a space. */
        char enc[3 * sizeof(rt->artifact_type)];
        size_t o = 0;
        for (const char *c = rt->artifact_type; *c; c++) {
            if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                strchr("-._~", *c))
                enc[o++] = *c;
            else
                o += (size_t)snprintf(enc + o, sizeof(enc) - o, "%%%02X", (unsigned char)*c);
        }
        enc[o] = '\0';
        /* Paged as tags lists are: the parameters a registry named the next page with (its
         * Link, rewritten by rewrite_link) go back to it. */
        char q[sizeof(enc) + sizeof(rt->extra_query) + 200] = "";
        if (o)
            snprintf(q, sizeof(q), "&artifactType=%s", enc);
        page_query(rt, q, sizeof(q));
        return rp_xasprintf("/v2/%s/referrers/%s%s", rt->name, rt->ref, q);
    }
    case RP_ROUTE_TAGS: {
        char q[sizeof(rt->extra_query) + 200] = "";
        page_query(rt, q, sizeof(q));
        return rp_xasprintf("/v2/%s/tags/list%s", rt->name, q);
    }
    case RP_ROUTE_PING:
    default:
        return rp_xstrdup("/v2/");
    }
}

/* A GET by tag from a client that does not name both list types is asked upstream with
 * the proxy's own Accept list: the answer is then the tag's for everyone and recorded, so
 * such a client gets hits on a tag naming one image (bench/, old clients); only when that
 * answer is a type the client does not take is it asked again with the client's own. */
static void canonical_unless_named(struct rp_req *r)
{
    r->canonical_fetch =
        !r->route.ref_is_digest && !rp_manifest_tag_canonical(r->accept, RP_MEDIA_DOCKER_MANIFEST);
}

static bool manifest_cached_in(struct rp_cache *cache, const char *registry, const char *repo,
                               const char *digest, const char **data, size_t *len,
                               const char **type);
static bool manifest_cached(const struct rp_req *r, const char *digest, const char **data,
                            size_t *len, const char **type);
static bool stale_answer(struct rp_req *r, const char *why, int status);

static bool stale_servable(struct rp_req *r);
static bool reval_running(struct rp_server *srv, const struct rp_conf_registry *reg,
                          const char *repo, const char *tag);
static bool serve_stale(struct rp_req *r, const struct rp_fetch_result *res);
static void up_failed(struct rp_req *r, const struct rp_fetch_result *res);

/* A tag's revalidation asks with the proxy's list, and with the type its manifest was
 * cached as when the list does not name it (an OCI artifact manifest): a registry refuses
 * a manifest whose type the Accept does not name, and that 404 would read as the tag being
 * gone. The manifest may have left the cache (evicted, its file lost): then the type
 * recorded with the tag. NULL when the list alone will do. */
static char *revalidation_accept(const struct rp_req *r)
{
    const char *data, *type = NULL;
    size_t len;
    char recorded[RP_MEDIA_TYPE_MAX + 1];
    if (!manifest_cached(r, r->stale_digest, &data, &len, &type) &&
        rp_cache_tag_type(r->conn->srv->cache, r->route.reg->name, r->route.name, r->route.ref,
                          recorded, sizeof(recorded)) == RP_CACHE_OK)
        type = recorded;
    if (type && rp_header_value_safe(type) && !rp_accept_names(RP_MANIFEST_ACCEPT, type))
        return rp_xasprintf("%s, %s", RP_MANIFEST_ACCEPT, type);
    return NULL;
}

/* The media type to record with a tag naming digest (rp_cache_tag_set): the cached
 * manifest's, else what upstream just called it when the cache can keep that. NULL when
 * neither, and when the proxy's list names it: revalidation_accept has no use for such a
 * type, and a tag recorded without one keeps the file format (RPTAG 1) that earlier
 * versions read; they take a version 2 file for a damaged one and delete the tag. */
static const char *tag_type_in(struct rp_cache *cache, const char *registry, const char *repo,
                               const char *digest, const char *upstream_type)
{
    const char *data, *type;
    size_t len;
    if (!manifest_cached_in(cache, registry, repo, digest, &data, &len, &type))
        type = upstream_type;
    if (!type || !rp_header_value_safe(type) || strchr(type, '\t') ||
        strlen(type) > RP_MEDIA_TYPE_MAX || rp_accept_names(RP_MANIFEST_ACCEPT, type))
        return NULL;
    return type;
}

static const char *tag_type(const struct rp_req *r, const char *digest)
{
    return tag_type_in(r->conn->srv->cache, r->route.reg->name, r->route.name, digest,
                       r->up_h.content_type);
}

/* With a stale answer at hand, a slow registry is not waited for to the end: the whole
 * revalidation gets revalidate_timeout, its HEAD and the fetch that follows a HEAD that did
 * not settle it (no digest named: a GET, or a HEAD for a HEAD) alike. have_stale is set only
 * while a tag is being revalidated; a tag moved to a manifest not cached clears it. 0: no
 * deadline. */
static int64_t revalidate_deadline(struct rp_req *r)
{
    int64_t limit = r->conn->srv->conf->cache.revalidate_timeout_ms;
    if (r->route.kind != RP_ROUTE_MANIFEST || limit <= 0 || !stale_servable(r))
        return 0;
    int64_t left = limit - (rp_now_ms() - r->revalidate_from_ms);
    return left > 0 ? left : 1;
}

/* Starts the upstream exchange for this request. head: HEAD instead of the client's
 * method (revalidations and confirmations); body_cap: how much of a body to keep. */
static void start_fetch(struct rp_req *r, bool head, bool stream)
{
    char *path = upstream_path(r);
    char *own_accept =
        r->route.kind == RP_ROUTE_MANIFEST && r->revalidating ? revalidation_accept(r) : NULL;
    struct rp_fetch_opts o = {
        .reg = r->route.reg,
        .path = path,
        .name = r->route.name,
        .head = head,
        /* A tag is revalidated with the proxy's own list, as the tag's digest was recorded
         * (rp_manifest_tag_canonical): with a client's narrower one, registries answer
         * another manifest, which would look like a moved tag. */
        .accept = r->route.kind != RP_ROUTE_MANIFEST      ? NULL
                  : own_accept                            ? own_accept
                  : r->revalidating || r->canonical_fetch ? RP_MANIFEST_ACCEPT
                                                          : r->accept,
        .range = r->route.kind == RP_ROUTE_BLOB && stream ? r->range : NULL,
        .stream = stream,
        /* Blobs go to CDNs; manifests too, from some registries (registry.k8s.io answers
         * them with a 308 to the backing registry). Credentials never follow (fetch.c). */
        .follow_redirects = true,
        .deadline_ms = revalidate_deadline(r),
    };
    rp_headers_free(&r->up_h);
    rp_buf_free(&r->body);
    r->up_status = 0;
    free(r->up_err);
    r->up_err = NULL;
    r->streaming = false;
    EVP_MD_CTX_free(r->stream_md);
    r->stream_md = NULL;
    r->fetch_head = head;
    r->state = RQ_UPSTREAM;
    r->fetch = rp_fetch_start(r->conn->srv, &o, &upstream_cb, r);
    free(path);
    free(own_accept);
}

void rp_req_pass_through(struct rp_req *r)
{
    r->cache_status = "PASS";
    start_fetch(r, false, true);
}

/* --- answering from the cache --- */

/* The Warning line (RFC 7234 5.5.1) an answer served stale carries, or "". */
static const char *stale_warning(const char *cache_status)
{
    return strcmp(cache_status, "STALE") == 0 ? "Warning: 110 regproxy \"Response is Stale\"\r\n"
                                              : "";
}

/* A manifest's (or a 304's) digest, its ETag, and what the cache did, into dst: on the
 * stack, as the cache hit it answers for allocates nothing. */
#define DIGEST_HEADERS_MAX (2 * RP_DIGEST_MAX + 160)
static void digest_headers(char *dst, size_t cap, const char *digest, const char *cache_status)
{
    snprintf(dst, cap, "Docker-Content-Digest: %s\r\nETag: \"%s\"\r\nX-Regproxy-Cache: %s\r\n%s",
             digest, digest, cache_status, stale_warning(cache_status));
}

static void cache_header(struct rp_req *r, struct rp_buf *extra)
{
    rp_buf_addf(extra, "X-Regproxy-Cache: %s\r\n%s", r->cache_status,
                stale_warning(r->cache_status));
}

/* 416 for a blob range past its end, from the cache or from upstream; content_range is
 * "bytes *\/SIZE" or NULL when the size is not known. */
static void answer_range_unsatisfiable(struct rp_req *r, const char *content_range)
{
    struct rp_buf extra;
    char extra_mem[512];
    rp_buf_init_in(&extra, extra_mem, sizeof(extra_mem), 1024);
    rp_buf_addf(&extra, RP_BLOB_HEADERS, r->route.ref, r->route.ref);
    cache_header(r, &extra);
    if (content_range)
        rp_buf_addf(&extra, "Content-Range: %s\r\n", content_range);
    /* The blob exists: BLOB_UNKNOWN would be read as its absence. distribution's code. */
    char *eb = rp_error_body("RANGE_INVALID", "requested range not satisfiable", NULL);
    respond(r, 416, "application/json", eb, strlen(eb), extra.data);
    free(eb);
    rp_buf_free(&extra);
}

void rp_req_range_unsatisfiable(struct rp_req *r, uint64_t size)
{
    char cr[48];
    snprintf(cr, sizeof(cr), "bytes */%llu", (unsigned long long)size);
    answer_range_unsatisfiable(r, cr);
}

/* A multipart/byteranges answer going out over TLS: the parts are read into the output a
 * piece at a time as the client drains it (mp_pump), so memory stays flat whatever their
 * size. The descriptor keeps the bytes even if the entry is evicted meanwhile. */
struct rp_multipart {
    int fd;
    uint64_t size; /* the blob's */
    char boundary[25];
    size_t n, i;  /* parts, and the one going out */
    uint64_t off; /* bytes of part i queued */
    struct rp_byte_range rs[];
};

#define MP_PIECE (64 * 1024)

/* A part's head (the CRLF that ends the part before it, the boundary, its headers), or with
 * i == n the closing boundary. Returns its length. */
static size_t mp_head(char *buf, size_t cap, const char *boundary, const struct rp_byte_range *rs,
                      size_t n, size_t i, uint64_t size)
{
    int k = i == n ? snprintf(buf, cap, "\r\n--%s--\r\n", boundary)
                   : snprintf(buf, cap,
                              "%s--%s\r\nContent-Type: application/octet-stream\r\n"
                              "Content-Range: bytes %llu-%llu/%llu\r\n\r\n",
                              i ? "\r\n" : "", boundary, (unsigned long long)rs[i].first,
                              (unsigned long long)rs[i].last, (unsigned long long)size);
    return k > 0 ? (size_t)k : 0;
}

static void mp_free(struct rp_multipart *mp)
{
    if (!mp)
        return;
    if (mp->fd >= 0)
        close(mp->fd);
    free(mp);
}

/* Queues r's multipart answer on while the client's output is below RP_STREAM_HIGH; once
 * all of it is queued, r waits for the delivery (rp_req_queued). */
static void mp_pump(struct rp_req *r)
{
    struct rp_multipart *mp = r->mp;
    struct evbuffer *out = rp_conn_output(r->conn);
    char ph[256];
    while (rp_conn_output_len(r->conn) < RP_STREAM_HIGH) {
        if (mp->off == 0) {
            size_t k = mp_head(ph, sizeof(ph), mp->boundary, mp->rs, mp->n, mp->i, mp->size);
            if (evbuffer_add(out, ph, k) != 0)
                goto cut;
            r->bytes += k;
            if (mp->i == mp->n) {
                mp_free(mp);
                r->mp = NULL;
                rp_req_queued(r);
                return;
            }
        }
        uint64_t len = mp->rs[mp->i].last - mp->rs[mp->i].first + 1;
        size_t want = len - mp->off < MP_PIECE ? (size_t)(len - mp->off) : MP_PIECE;
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(out, (ev_ssize_t)want, &v, 1) != 1)
            goto cut;
        ssize_t got = pread(mp->fd, v.iov_base, want, (off_t)(mp->rs[mp->i].first + mp->off));
        if (got != (ssize_t)want) {
            if (got >= 0)
                errno = EIO; /* the file is shorter than the index said */
            goto cut;
        }
        v.iov_len = want;
        if (evbuffer_commit_space(out, &v, 1) != 0)
            goto cut;
        mp->off += want;
        r->bytes += want;
        if (mp->off == len) {
            mp->i++;
            mp->off = 0;
        }
    }
    return;
cut:
    /* The head is out: the client can only be cut off. */
    rp_warn("blob %s: cannot queue a multipart answer: %s", r->route.ref, strerror(errno));
    rp_req_finish(r, "file");
}

/* Several ranges of a cached blob, as one multipart/byteranges answer (RFC 9110 14.6):
 * lazy-pulling snapshotters (stargz, SOCI) ask for the chunks they need so. Plain
 * connections send every part from the file with sendfile, as slices of one file segment;
 * TLS ones read the parts in as the client drains them (mp_pump). Either way memory stays
 * flat. Takes b's descriptor and in-use mark. */
static void serve_multipart(struct rp_req *r, struct rp_cache_blob *b,
                            const struct rp_byte_range *rs, size_t n)
{
    struct rp_conn *c = r->conn;
    unsigned char rnd[12];
    char boundary[2 * sizeof(rnd) + 1];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        memset(rnd, 0x5a, sizeof(rnd)); /* the boundary need not be secret, only rare */
    rp_hex_encode(rnd, sizeof(rnd), boundary);
    char ph[256];
    uint64_t total = 0;
    for (size_t i = 0; i <= n; i++)
        total += mp_head(ph, sizeof(ph), boundary, rs, n, i, b->size) +
                 (i < n ? rs[i].last - rs[i].first + 1 : 0);
    /* Plain: one file segment, owning the descriptor, that every part is a slice of. */
    struct evbuffer_file_segment *seg = NULL;
    if (!c->bev) {
        seg = evbuffer_file_segment_new(b->fd, 0, (ev_off_t)b->size, EVBUF_FS_CLOSE_ON_FREE);
        if (!seg) {
            close(b->fd);
            rp_cache_release(c->srv->cache, r->route.ref);
            rp_req_error(r, 500, "UNKNOWN", "cannot read the cached blob", NULL);
            return;
        }
    } else {
        r->mp = rp_xcalloc(1, sizeof(*r->mp) + n * sizeof(rs[0]));
        r->mp->fd = b->fd;
        r->mp->size = b->size;
        memcpy(r->mp->boundary, boundary, sizeof(boundary));
        r->mp->n = n;
        memcpy(r->mp->rs, rs, n * sizeof(rs[0]));
    }
    b->fd = -1;
    r->blob_held = true; /* as for a whole blob (serve_blob) */

    struct rp_buf extra;
    char extra_mem[512];
    rp_buf_init_in(&extra, extra_mem, sizeof(extra_mem), 1024);
    rp_buf_addf(&extra, RP_BLOB_HEADERS, r->route.ref, r->route.ref);
    cache_header(r, &extra);
    char ctype[64];
    snprintf(ctype, sizeof(ctype), "multipart/byteranges; boundary=%s", boundary);
    rp_conn_write_head(c, 206, ctype, (int64_t)total, extra.data);
    rp_buf_free(&extra);
    if (!seg) {
        /* r->bytes grows as the parts are read in: a client that leaves is logged with
         * what left the proxy. */
        rp_conn_stream_mode(c);
        mp_pump(r);
        return;
    }
    r->bytes += total;
    struct evbuffer *out = rp_conn_output(c);
    for (size_t i = 0; i <= n; i++) {
        size_t k = mp_head(ph, sizeof(ph), boundary, rs, n, i, b->size);
        if (evbuffer_add(out, ph, k) != 0 ||
            (i < n && evbuffer_add_file_segment(out, seg, (ev_off_t)rs[i].first,
                                                (ev_off_t)(rs[i].last - rs[i].first + 1)) != 0)) {
            rp_warn("blob %s: cannot queue a multipart answer: %s", r->route.ref, strerror(errno));
            evbuffer_file_segment_free(seg);
            rp_req_finish(r, "file");
            return;
        }
    }
    evbuffer_file_segment_free(seg); /* the queued slices keep it */
    rp_req_queued(r);
}

/* Serves a cached blob from its file: sendfile at the client's pace, Range and HEAD. */
static void answer_not_modified(struct rp_req *r, const char *digest);

static void serve_blob(struct rp_req *r, struct rp_cache_blob *b)
{
    /* Its digest is a blob's ETag, as for manifests: a client (an HTTP cache in front)
     * revalidating the blob it has gets a 304, Range or not (RFC 9110 13.2.2 evaluates
     * If-None-Match first), as from docker-registry. */
    if (rp_http_etag_list_names(r->if_none_match, r->route.ref)) {
        close(b->fd);
        rp_cache_release(r->conn->srv->cache, r->route.ref);
        answer_not_modified(r, r->route.ref);
        return;
    }
    uint64_t start = 0, end = 0;
    enum rp_range_result rr = RP_RANGE_NONE;
    struct rp_byte_range rs[RANGES_MAX];
    size_t n = 0;
    /* Range is defined for GET only (RFC 9110 14.2): a HEAD's head is the whole blob's, as
     * an uncached HEAD's is (it goes upstream without the Range). */
    if (r->range && !r->head)
        rr = rp_http_parse_ranges(r->range, strlen(r->range), b->size, rs, RANGES_MAX, &n);
    if (rr == RP_RANGE_OK && n > 1) {
        serve_multipart(r, b, rs, n);
        return;
    }
    if (rr == RP_RANGE_OK) {
        start = rs[0].first;
        end = rs[0].last;
    }
    if (rr == RP_RANGE_UNSATISFIABLE) {
        close(b->fd);
        rp_cache_release(r->conn->srv->cache, r->route.ref);
        rp_req_range_unsatisfiable(r, b->size);
        return;
    }
    struct rp_buf extra;
    char extra_mem[512];
    rp_buf_init_in(&extra, extra_mem, sizeof(extra_mem), 1024);
    rp_buf_addf(&extra, RP_BLOB_HEADERS, r->route.ref, r->route.ref);
    cache_header(r, &extra);
    int status = 200;
    uint64_t len = b->size;
    if (rr == RP_RANGE_OK) {
        status = 206;
        len = end - start + 1;
        rp_buf_addf(&extra, "Content-Range: bytes %llu-%llu/%llu\r\n", (unsigned long long)start,
                    (unsigned long long)end, (unsigned long long)b->size);
    }
    if (r->head || len == 0) {
        close(b->fd);
        rp_conn_write_response(r->conn, status, "application/octet-stream", extra.data, NULL, len,
                               false);
    } else if (rp_conn_write_file(r->conn, status, "application/octet-stream", extra.data, b->fd,
                                  start, len) < 0) {
        rp_buf_free(&extra);
        rp_cache_release(r->conn->srv->cache, r->route.ref);
        rp_req_finish(r, "file");
        return;
    } else {
        r->bytes += len;
    }
    rp_buf_free(&extra);
    /* The connection owns the descriptor now. The open descriptor would keep the bytes
     * even if the entry were evicted, but they would still be on disk while max_size
     * counted them freed: the in-use mark lasts until the request is done with. */
    if (r->head || len == 0)
        rp_cache_release(r->conn->srv->cache, r->route.ref);
    else
        r->blob_held = true;
    rp_req_queued(r);
}

/* The 304 to a GET or HEAD whose If-None-Match names digest: the validator and digest the
 * 200 would carry, no body. From the stack, as the hit it replaces. */
static void answer_not_modified(struct rp_req *r, const char *digest)
{
    char extra[DIGEST_HEADERS_MAX];
    digest_headers(extra, sizeof(extra), digest, r->cache_status);
    respond(r, 304, NULL, NULL, 0, extra);
}

static bool accept_allows(const char *accept, const char *media_type)
{
    if (!accept || !media_type)
        return true;
    /* A client that accepts anything gets anything. */
    return rp_accept_names(accept, media_type) || rp_accept_names(accept, "*/*");
}

/* Tries to answer a manifest from the cache; true when answered. The hot path of a
 * cluster pulling a release: no file access, no hashing, and no allocation beyond the request
 * (head and body leave in one writev from the stack and the cache's memory; the cache's view
 * is only valid until its next change, so what the socket does not take is copied). */
/* Whether this request's repository has the manifest cached (linked, and its bytes still
 * there: a link outlives its file); its bytes and type as rp_cache_manifest_peek gives them. */
static bool manifest_cached_in(struct rp_cache *cache, const char *registry, const char *repo,
                               const char *digest, const char **data, size_t *len,
                               const char **type)
{
    return rp_cache_linked(cache, registry, repo, digest) &&
           rp_cache_manifest_peek(cache, digest, data, len, type) == RP_CACHE_OK;
}

static bool manifest_cached(const struct rp_req *r, const char *digest, const char **data,
                            size_t *len, const char **type)
{
    return manifest_cached_in(r->conn->srv->cache, r->route.reg->name, r->route.name, digest, data,
                              len, type);
}

static bool manifest_from_cache(struct rp_req *r, const char *digest, const char *status)
{
    struct rp_server *srv = r->conn->srv;
    const char *data, *type;
    size_t len;
    if (!manifest_cached(r, digest, &data, &len, &type) || !accept_allows(r->accept, type))
        return false;
    rp_server_maybe_pin(srv, r->route.reg, r->route.name, digest);
    r->cache_status = status;
    if (rp_http_etag_list_names(r->if_none_match, digest)) {
        answer_not_modified(r, digest);
        return true;
    }
    char extra[DIGEST_HEADERS_MAX];
    digest_headers(extra, sizeof(extra), digest, status);
    respond(r, 200, type, data, len, extra);
    return true;
}

static int64_t tag_ttl_ms(const struct rp_req *r)
{
    const struct rp_conf *conf = r->conn->srv->conf;
    return r->route.reg->tag_ttl_ms >= 0 ? r->route.reg->tag_ttl_ms : conf->cache.tag_ttl_ms;
}

/* A cached tag's age. A fetched time ahead of the clock (an imported bundle's, or a clock
 * that was ahead) tells nothing of it: taken as older than any limit, such a tag is
 * revalidated rather than fresh until then, and not served stale. Saturates, so a time
 * of INT64_MAX or an age in ms past int64 does not overflow. */
static int64_t tag_age_ms(int64_t fetched_s)
{
    int64_t now = rp_wall_s();
    if (fetched_s < 0 || fetched_s > now)
        return INT64_MAX;
    int64_t age_s = now - fetched_s;
    return age_s > INT64_MAX / 1000 ? INT64_MAX : age_s * 1000;
}

/* --- offline registries: the cache is all there is --- */

/* 404 naming what is missing and that the registry is offline: a disconnected cluster's
 * admin must see at once that the content was never mirrored or imported, not wait for a
 * timeout or read a 503 that suggests retrying. */
static void offline_missing(struct rp_req *r, const char *code, const char *what, const char *why)
{
    const struct rp_route *rt = &r->route;
    char *msg = rp_xasprintf("%s %s of %s/%s is not in the cache and registry %s is offline", what,
                             rt->ref, rt->reg->name, rt->name, rt->reg->name);
    json_t *d = json_pack("{s:s, s:s, s:s, s:b}", "registry", rt->reg->name, "repository", rt->name,
                          "reference", rt->ref, "offline", 1);
    if (why)
        json_object_set_new(d, "reason", json_string(why));
    char *detail = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    r->cache_status = "MISS";
    rp_req_error(r, 404, code, msg, detail);
    free(detail);
    free(msg);
}

/* lookup() for an offline registry: never starts a fetch. Tags are served whatever their
 * age (there is nobody to revalidate with); links still decide what a repository may
 * read, so a blob cached for another repository stays invisible here. */
static void offline_lookup(struct rp_req *r)
{
    struct rp_server *srv = r->conn->srv;
    const struct rp_route *rt = &r->route;
    switch (rt->kind) {
    case RP_ROUTE_BLOB: {
        struct rp_cache_blob b;
        if (rp_cache_linked(srv->cache, rt->reg->name, rt->name, rt->ref) &&
            rp_cache_blob_open(srv->cache, rt->ref, &b) == RP_CACHE_OK) {
            r->cache_status = "HIT";
            serve_blob(r, &b);
            return;
        }
        offline_missing(r, "BLOB_UNKNOWN", "blob", NULL);
        return;
    }
    case RP_ROUTE_MANIFEST: {
        char digest[RP_DIGEST_MAX + 1];
        int64_t fetched_s = 0;
        if (rt->ref_is_digest) {
            snprintf(digest, sizeof(digest), "%s", rt->ref);
        } else if (rp_cache_tag_get(srv->cache, rt->reg->name, rt->name, rt->ref, digest,
                                    sizeof(digest), &fetched_s) != RP_CACHE_OK) {
            offline_missing(r, "MANIFEST_UNKNOWN", "tag", NULL);
            return;
        }
        if (manifest_from_cache(r, digest, "HIT"))
            return;
        /* Cached but in a media type the client does not accept says so; an upstream
         * would have converted or refused the same way. */
        struct rp_cache_manifest m;
        const char *why = NULL;
        char *buf = NULL;
        if (rp_cache_linked(srv->cache, rt->reg->name, rt->name, digest) &&
            rp_cache_manifest_get(srv->cache, digest, &m) == RP_CACHE_OK) {
            buf = rp_xasprintf("cached as %s, which the client's Accept list does not include",
                               m.media_type);
            why = buf;
            rp_cache_manifest_free(&m);
        }
        offline_missing(r, "MANIFEST_UNKNOWN", rt->ref_is_digest ? "manifest" : "tag", why);
        free(buf);
        return;
    }
    case RP_ROUTE_TAGS:
    case RP_ROUTE_REFERRERS:
    case RP_ROUTE_PING:
    default: {
        /* The cache keeps no tag lists or referrers; 404 is what the distribution spec
         * answers for an unsupported referrers API, and clients fall back on it. */
        char *msg = rp_xasprintf("%s of %s/%s cannot be answered: registry %s is offline and "
                                 "the cache does not keep them",
                                 rt->kind == RP_ROUTE_TAGS ? "tag lists" : "referrers",
                                 rt->reg->name, rt->name, rt->reg->name);
        rp_req_error(r, 404, rt->kind == RP_ROUTE_TAGS ? "NAME_UNKNOWN" : "UNSUPPORTED", msg,
                     "{\"offline\":true}");
        free(msg);
        return;
    }
    }
}

/* Whether a blob Range GET is served by the download that fills the cache rather than
 * passed through. Only a range that runs to the blob's end can be: its last byte is the
 * blob's last, held back until the digest matched, as for a whole-blob reader; a bounded
 * range would wait for the whole download. From byte 0 it starts that download:
 * containerd 2.1 with parallel layer fetch asks for every blob as "bytes=0-", and passing
 * that through would leave the cache empty for good. Its further chunks ("bytes=K-", read
 * to the chunk's size, then closed) join the download. From elsewhere, with no download
 * running (a client resuming), it passes through rather than wait for the bytes before it.
 * A range passed through with no download running starts one behind it (rp_fill_behind). */
static bool range_joins_fill(const char *range, const struct rp_fill *running)
{
    uint64_t first = 0, last = 0;
    if (rp_http_parse_range(range, strlen(range), UINT64_MAX, &first, &last) != RP_RANGE_OK ||
        last != UINT64_MAX - 1)
        return false;
    return first == 0 || running;
}

/* Whether r is a GET whose Range no blob can satisfy, whatever its size ("bytes=-0", or a
 * first byte past any size): a 416 naming the size, which an upstream HEAD gives
 * (answer_success). Passed through, docker-registry answers "bytes=-0" with a 206 of no
 * bytes and a Content-Range whose first byte is past its last. */
static bool range_never_satisfiable(const struct rp_req *r)
{
    struct rp_byte_range rs[RANGES_MAX];
    size_t n = 0;
    return r->range && !r->head &&
           rp_http_parse_ranges(r->range, strlen(r->range), UINT64_MAX, rs, RANGES_MAX, &n) ==
               RP_RANGE_UNSATISFIABLE;
}

static void lookup(struct rp_req *r)
{
    struct rp_server *srv = r->conn->srv;
    const struct rp_route *rt = &r->route;
    if (rt->reg->offline) {
        offline_lookup(r);
        return;
    }
    /* Woken by a revalidation that served this tag stale (upstream is failing), or by a
     * fetch that had no whole answer from upstream (its failure is ours): see inflight.c. */
    bool peer_stale = r->peer_stale;
    bool peer_failed = r->peer_failed;
    r->peer_stale = false;
    r->peer_failed = false;
    switch (rt->kind) {
    case RP_ROUTE_BLOB: {
        struct rp_cache_blob b;
        bool cached = rp_cache_blob_open(srv->cache, rt->ref, &b) == RP_CACHE_OK;
        bool linked = r->confirmed || rp_cache_linked(srv->cache, rt->reg->name, rt->name, rt->ref);
        if (cached && linked) {
            r->cache_status = "HIT";
            /* Pins are not kept across a crash: whatever is served under a pinned name is
             * pinned again. */
            rp_server_maybe_pin(srv, rt->reg, rt->name, rt->ref);
            serve_blob(r, &b);
            return;
        }
        if (cached) {
            close(b.fd);
            rp_cache_release(srv->cache, rt->ref);
        }
        struct rp_fill *running = cached ? NULL : rp_fill_find(srv, rt->ref);
        if (cached || (running && !linked && !rp_fill_is_for(running, rt->reg, rt->name))) {
            /* Known content, but not known for this repository: upstream must confirm
             * that this repository has it before we hand it out. Once for a herd (a
             * cluster pulling an image whose base layers another repository cached): the
             * others wait, then find the link the confirmation recorded. */
            r->cache_status = "MISS";
            if (peer_failed) {
                up_failed(r, &r->peer_res);
                return;
            }
            if (rp_inflight_wait(srv, r))
                return;
            start_fetch(r, true, false);
            r->state = RQ_CONFIRM;
            return;
        }
        /* If-None-Match naming the digest (an HTTP cache in front revalidating the blob it
         * has, which this proxy evicted or never had): a blob has no other representation,
         * so once upstream's HEAD says this repository has it, the answer is a 304, as
         * docker-registry's and a cache hit's are (answer_success). A GET downloads
         * nothing for it, nor for a range no blob can satisfy (a 416 from that HEAD). */
        if (r->head || rp_http_etag_list_names(r->if_none_match, rt->ref) ||
            range_never_satisfiable(r)) {
            /* A download verified and being made durable knows the length for sure, and its
             * name is its digest: a HEAD pipelined behind the GET that filled the blob (read
             * once the GET's last byte is out, before the blob is published) costs no
             * upstream request of its own. Unless this repository's registry gave the
             * digest another length (see below). */
            if (running && rp_fill_head_known(running) &&
                !(r->confirmed && r->confirmed_len >= 0 &&
                  r->confirmed_len != rp_fill_length(running))) {
                r->cache_status = "MISS";
                if (rp_http_etag_list_names(r->if_none_match, rt->ref))
                    answer_not_modified(r, rt->ref);
                else if (!r->head)
                    rp_req_range_unsatisfiable(r, (uint64_t)rp_fill_length(running));
                else
                    rp_fill_answer_head(running, r);
                return;
            }
            start_fetch(r, true, false);
            return;
        }
        int64_t running_len = running ? rp_fill_length(running) : -1;
        if (r->confirmed && r->confirmed_len >= 0 && running_len >= 0 &&
            running_len != r->confirmed_len) {
            /* This repository's registry gives the digest another length than the download
             * under way (from another registry or repository) was announced with: one of
             * them is wrong, and a reader of that download would get its length, then a cut
             * when its digest fails. This registry's own bytes are passed through instead,
             * verified on the way as every pass-through is. */
            rp_req_pass_through(r);
            return;
        }
        if (r->range && !r->range_unsized && !range_joins_fill(r->range, running)) {
            /* A range of an uncached blob passes through; the cache is filled behind it
             * once upstream answered it (up_headers_cb). */
            r->fill_behind = !running;
            start_fetch(r, false, true);
            return;
        }
        r->cache_status = "MISS";
        rp_fill_join(srv, r);
        return;
    }
    case RP_ROUTE_MANIFEST: {
        if (rt->ref_is_digest) {
            if (manifest_from_cache(r, rt->ref, "HIT"))
                return;
        } else {
            char digest[RP_DIGEST_MAX + 1];
            int64_t fetched_s = 0;
            if (rp_cache_tag_get(srv->cache, rt->reg->name, rt->name, rt->ref, digest,
                                 sizeof(digest), &fetched_s) == RP_CACHE_OK) {
                int64_t age_ms = tag_age_ms(fetched_s);
                if (age_ms < tag_ttl_ms(r)) {
                    if (manifest_from_cache(r, digest, "HIT"))
                        return;
                    const char *data, *type;
                    size_t len;
                    if (manifest_cached(r, digest, &data, &len, &type)) {
                        /* Fresh, but a type this client does not take (a list for one that
                         * names none): what upstream narrows it to, for this Accept. */
                        r->cache_status = "MISS";
                        start_fetch(r, r->head, false);
                        return;
                    }
                }
                /* A herd past tag_ttl revalidates once: the others wait for the leader's
                 * answer, after which the tag is fresh again. HEADs too (containerd resolves
                 * tags so): with the manifest not cached, a HEAD leader's answer is handed
                 * to them (rp_inflight_share). */
                if (rp_inflight_wait(srv, r))
                    return;
                r->have_stale = true;
                snprintf(r->stale_digest, sizeof(r->stale_digest), "%s", digest);
                r->stale_age_s = age_ms / 1000;
                if (peer_stale && stale_answer(r, "failed the revalidation waited on", 0))
                    return;
                if (peer_failed) {
                    if (!serve_stale(r, &r->peer_res))
                        up_failed(r, &r->peer_res);
                    return;
                }
                /* The registry gave no answer moments ago: waiting out another revalidation
                 * (up to a connect or answer timeout) would only end here too. */
                if (rp_server_registry_silent(srv, rt->reg) &&
                    stale_answer(r, "gave no answer moments ago, not asked again yet", 0))
                    return;
                /* Its revalidation goes on in the background (up_deadline_cb): another
                 * would only wait out the same deadline for the same answer. */
                if (reval_running(srv, rt->reg, rt->name, rt->ref) &&
                    stale_answer(r, "is still being asked about it in the background", 0))
                    return;
                /* Past its freshness: a HEAD tells whether the tag still names it. Until
                 * it says the tag is unchanged (REVALIDATED) or the stale tag is given
                 * (STALE), the cache has no answer: a failure, or a client gone, is a
                 * MISS, as nginx counts an EXPIRED entry, not a pass-through. */
                r->cache_status = "MISS";
                r->revalidating = true;
                r->revalidate_from_ms = rp_now_ms();
                start_fetch(r, true, false);
                return;
            }
        }
        r->cache_status = "MISS";
        if (rp_inflight_wait(srv, r))
            return; /* woken when the request fetching it is done */
        if (peer_failed) {
            up_failed(r, &r->peer_res);
            return;
        }
        canonical_unless_named(r);
        start_fetch(r, r->head, false);
        return;
    }
    case RP_ROUTE_TAGS:
    case RP_ROUTE_REFERRERS:
    case RP_ROUTE_PING:
        /* A list's GET streams to its client (list_stream_start): a slow client pauses the
         * transfer, which a total timeout would cut; the stall timeout bounds upstream. */
        start_fetch(r, r->head, !r->head && rt->kind != RP_ROUTE_PING);
        return;
    }
}

/* --- upstream answers --- */

static void list_headers(const struct rp_req *r, struct rp_buf *extra);

/* A tags list's or referrers' success: its body passes to the client as it arrives, with
 * backpressure (up_data_cb, rp_req_output_drained), never whole in memory. docker-registry
 * 2.8 answers every tag of a repository at once, and clients that ask and do not read would
 * each hold a list. Nothing is decided from the whole body (a list has no digest to check,
 * and is not cached), so nothing is lost by not having it. Upstream's Content-Length goes to
 * the client; without one the answer is chunked, or runs to the close for an HTTP/1.0
 * client. Either way a cut upstream cuts the client (up_done_cb), and RP_LIST_BODY_MAX
 * still bounds what passes: an upstream that sends for ever is cut there. */
static int list_stream_start(struct rp_req *r, int status, const struct rp_xfer_headers *h)
{
    if (h->length > RP_LIST_BODY_MAX) {
        r->up_err = rp_xasprintf("upstream answer of %lld bytes exceeds the %d byte limit",
                                 (long long)h->length, RP_LIST_BODY_MAX);
        return -1;
    }
    struct rp_buf extra;
    rp_buf_init(&extra, 32768);
    list_headers(r, &extra);
    cache_header(r, &extra);
    const char *type = rp_header_value_safe(h->content_type) ? h->content_type : NULL;
    if (h->length >= 0)
        rp_conn_write_head(r->conn, status, type, h->length, extra.data);
    else
        rp_conn_write_head_unsized(r->conn, status, type, extra.data);
    rp_buf_free(&extra);
    r->streaming = true;
    r->stream_expected = h->length;
    r->stream_sent = 0;
    rp_conn_stream_mode(r->conn);
    return 0;
}

/* A 206's Content-Range, "bytes FIRST-LAST/COMPLETE", COMPLETE UINT64_MAX when upstream
 * wrote "*" (unknown: RFC 9110 14.4 allows it). -1 for anything else. */
static int pass_through_content_range(const char *v, uint64_t *first, uint64_t *last,
                                      uint64_t *complete)
{
    if (!v)
        return -1;
    if (rp_http_parse_content_range(v, strlen(v), first, last, complete) == 0)
        return 0;
    char buf[96];
    size_t n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n < 2 || n + 20 > sizeof(buf) || v[n - 1] != '*' || v[n - 2] != '/')
        return -1;
    snprintf(buf, sizeof(buf), "%.*s%llu", (int)(n - 1), v, (unsigned long long)UINT64_MAX);
    return rp_http_parse_content_range(buf, strlen(buf), first, last, complete);
}

/* Whether upstream's 206 to a range passed through answers the range the client asked for:
 * its Content-Range names exactly the bytes that range is of a blob of the complete length
 * it gives (as a server resolves an open or suffix range, or one past the end), and its
 * Content-Length, when it has one, is their number. A client splices a 206's bytes in at the
 * place it asked for: resuming a layer at byte K, bytes from elsewhere would make a layer
 * that fails its digest at best. For several ranges: a single part that spans them all (a
 * server may coalesce), or a multipart/byteranges answer, whose parts say their own ranges.
 * On success *first, *last, *complete (UINT64_MAX: unknown) are the range's, and *multipart
 * says the answer is a multipart one (no range). Otherwise *why says what is wrong. */
static bool pass_through_answers_range(const struct rp_req *r, const struct rp_xfer_headers *h,
                                       uint64_t *first, uint64_t *last, uint64_t *complete,
                                       bool *multipart, const char **why)
{
    size_t rlen = strlen(r->range);
    bool several = memchr(r->range, ',', rlen) != NULL;
    *multipart = false;
    if (!h->content_range && several) {
        const char *t = h->content_type;
        if (!t || !rp_strieq_n(t, strlen(t) < 20 ? strlen(t) : 20, "multipart/byteranges") ||
            !strstr(t, "boundary=")) {
            *why = "a 206 to several ranges that is neither one range nor multipart/byteranges";
            return false;
        }
        *multipart = true;
        return true;
    }
    if (pass_through_content_range(h->content_range, first, last, complete) != 0) {
        *why = h->content_range ? "a 206 whose Content-Range does not parse"
                                : "a 206 without Content-Range";
        return false;
    }
    uint64_t want_first = 0, want_last = 0;
    if (several) {
        struct rp_byte_range rs[RANGES_MAX];
        size_t n = 0;
        if (rp_http_parse_ranges(r->range, rlen, *complete, rs, RANGES_MAX, &n) != RP_RANGE_OK) {
            *why = "a 206 to ranges none of which that length satisfies";
            return false;
        }
        want_first = rs[0].first;
        want_last = rs[0].last;
        for (size_t i = 1; i < n; i++) {
            want_first = rs[i].first < want_first ? rs[i].first : want_first;
            want_last = rs[i].last > want_last ? rs[i].last : want_last;
        }
    } else if (rp_http_parse_range(r->range, rlen, *complete, &want_first, &want_last) !=
               RP_RANGE_OK) {
        *why = "a 206 to a range that its complete length does not satisfy";
        return false;
    }
    if (*first != want_first || *last != want_last) {
        *why = "a 206 for another range than the one asked for";
        return false;
    }
    if (*last - *first >= (uint64_t)INT64_MAX ||
        (h->length >= 0 && (uint64_t)h->length != *last - *first + 1)) {
        *why = "a 206 whose Content-Length is not its Content-Range's";
        return false;
    }
    return true;
}

static int up_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    struct rp_req *r = arg;
    r->up_status = status;
    rp_headers_copy(&r->up_h, h);
    if (r->route.kind == RP_ROUTE_MANIFEST) /* kept, compared and served as its type alone */
        rp_media_type_normalize(r->up_h.content_type);
    if (status == 416 && r->route.kind == RP_ROUTE_BLOB && r->range) {
        /* The range is past the blob's end. The body is not wanted, and may not be
         * readable: docker-registry announces the whole blob's length and sends a line. */
        r->range_refused = true;
        return -1;
    }
    bool ok = status >= 200 && status < 300;
    if (ok && status != 200 && r->route.kind == RP_ROUTE_MANIFEST) {
        /* Only a 200 carries the whole manifest (we send no Range). A manifest by tag has no
         * digest to check its bytes against: a 206 nobody asked for (a piece of it), a 204
         * (nothing) or a 203 (a transformation) would be cached and served as the tag's
         * manifest; a HEAD's would record the tag. */
        r->up_err = rp_xasprintf("upstream answered a manifest %s with status %d",
                                 r->fetch_head ? "HEAD" : "GET", status);
        return -1;
    }
    if (ok && r->route.kind == RP_ROUTE_BLOB && r->state == RQ_UPSTREAM && !r->fetch_head) {
        /* A range pass-through: streamed with backpressure, never cached. Only a whole
         * blob (hashed, its last byte held back) or the part asked for: any other success
         * (203, 204, a 206 nobody asked for) would reach the client unverified under the
         * blob's digest. */
        if (status != 200 && !(status == 206 && r->range)) {
            r->up_err = rp_xasprintf("upstream answered a blob GET with status %d", status);
            return -1;
        }
        if (h->length < 0 && status == 200 && r->range && !r->range_unsized) {
            /* Upstream ignored the Range and sends the whole blob with no length (chunked,
             * as Harbor's proxy-cache projects do): it cannot pass through (there is no last
             * byte to hold back until the digest matched), and no fill would start behind
             * it, so every range of the blob would fail. The download that fills the cache
             * serves the range instead, once verified, as it serves any client of such a
             * blob (up_done_cb). */
            r->range_unsized = true;
            r->range_to_fill = true;
            return -1;
        }
        uint64_t first = 0, last = 0, size = UINT64_MAX;
        bool multipart = false;
        const char *why = NULL;
        if (status == 206 &&
            !pass_through_answers_range(r, h, &first, &last, &size, &multipart, &why)) {
            r->up_err =
                rp_xasprintf("upstream answered Range %s with %s%s%s", r->range, why,
                             rp_header_value_safe(h->content_range) ? ": " : "",
                             rp_header_value_safe(h->content_range) ? h->content_range : "");
            return -1;
        }
        /* A 206 sent without Content-Length (chunked, or to the close) is as long as its
         * checked Content-Range says: the client gets that length, and an upstream that
         * sends fewer or more bytes cuts it (up_data_cb, up_done_cb), even when its framing
         * ends cleanly. A multipart one has no such bound. */
        int64_t length = h->length;
        if (length < 0 && status == 206 && !multipart)
            length = (int64_t)(last - first + 1);
        if (length < 0) {
            r->up_err = rp_xstrdup("upstream sent a blob range without Content-Length");
            return -1;
        }
        /* The head alone would be the whole answer, with no byte to hold back until the
         * digest matches: refused unless the blob is the empty one. */
        if (status == 200 && h->length == 0 && !rp_digest_is_empty(r->route.ref)) {
            r->up_err = rp_xstrdup("upstream sent an empty body for a blob that is not");
            return -1;
        }
        struct rp_buf extra;
        rp_buf_init(&extra, 16384);
        rp_buf_addf(&extra, RP_BLOB_HEADERS, r->route.ref, r->route.ref);
        /* The range as checked, in the form a client parses most surely. */
        if (status == 206 && !multipart && size != UINT64_MAX)
            rp_buf_addf(&extra, "Content-Range: bytes %llu-%llu/%llu\r\n",
                        (unsigned long long)first, (unsigned long long)last,
                        (unsigned long long)size);
        else if (status == 206 && !multipart)
            rp_buf_addf(&extra, "Content-Range: bytes %llu-%llu/*\r\n", (unsigned long long)first,
                        (unsigned long long)last);
        if (status == 206 && r->fill_behind) {
            /* A multipart answer to several ranges has no Content-Range: size unknown. */
            bool sized = !multipart && size <= INT64_MAX;
            rp_fill_behind(r->conn->srv, r->route.reg, r->route.name, r->route.ref,
                           sized ? (int64_t)size : -1);
        } else if (status == 200 && r->fill_behind) {
            /* Upstream ignored the Range (a CDN that does): without a fill behind it, every
             * range of this blob would download all of it again, and the cache never fill. */
            rp_fill_behind(r->conn->srv, r->route.reg, r->route.name, r->route.ref, h->length);
        }
        cache_header(r, &extra);
        rp_conn_write_head(r->conn, status,
                           rp_header_value_safe(h->content_type) ? h->content_type
                                                                 : "application/octet-stream",
                           length, extra.data);
        rp_buf_free(&extra);
        r->streaming = true;
        r->stream_expected = length;
        r->stream_sent = 0;
        /* A 206 of every byte of the blob (a range past its end from byte 0, a suffix
         * longer than it) is the whole blob too, and verified as a 200 is. */
        bool whole =
            (status == 200 && h->length > 0) ||
            (status == 206 && !multipart && first == 0 && size != UINT64_MAX && last + 1 == size);
        if (whole) {
            r->stream_md = EVP_MD_CTX_new();
            if (!r->stream_md ||
                EVP_DigestInit_ex(r->stream_md, rp_digest_md(r->route.ref), NULL) != 1) {
                r->up_err = rp_xstrdup("cannot hash the blob");
                return -1;
            }
        }
        rp_conn_stream_mode(r->conn);
        return 0;
    }
    if (ok && status != 204 && !r->fetch_head &&
        (r->route.kind == RP_ROUTE_TAGS || r->route.kind == RP_ROUTE_REFERRERS))
        return list_stream_start(r, status, h);
    if (r->fetch_head)
        return 0; /* no body: Content-Length describes what a GET would send */
    size_t cap = !ok                                  ? RP_ERROR_BODY_MAX
                 : r->route.kind == RP_ROUTE_MANIFEST ? RP_MANIFEST_MAX
                                                      : RP_LIST_BODY_MAX;
    r->body_cap = cap;
    rp_buf_init(&r->body, cap);
    /* An error answer's body is cut to its cap (fetch.c), not refused: the status is what
     * the client needs. */
    if (ok && h->length > (int64_t)cap) {
        r->up_err = rp_xasprintf("upstream answer of %lld bytes exceeds the %zu byte limit",
                                 (long long)h->length, cap);
        return -1;
    }
    return 0;
}

static long up_data_cb(void *arg, const char *p, size_t n)
{
    struct rp_req *r = arg;
    if (r->streaming) {
        if (rp_conn_output_len(r->conn) >= RP_STREAM_HIGH) {
            r->paused = true;
            return 0;
        }
        if (r->stream_expected >= 0 && (int64_t)n > r->stream_expected - r->stream_sent) {
            r->up_err = rp_xstrdup("upstream sent more bytes than its Content-Length");
            return -1;
        }
        if (r->stream_expected < 0 && r->stream_sent + (int64_t)n > RP_LIST_BODY_MAX) {
            r->up_err = rp_xasprintf("upstream answer exceeds the %d byte limit", RP_LIST_BODY_MAX);
            return -1;
        }
        size_t out = n;
        if (r->stream_md) {
            if (EVP_DigestUpdate(r->stream_md, p, n) != 1) {
                r->up_err = rp_xstrdup("cannot hash the blob");
                return -1;
            }
            if (r->stream_sent + (int64_t)n == r->stream_expected && n > 0)
                r->stream_last = p[--out]; /* sent once the digest matched */
        }
        rp_conn_body_add(r->conn, p, out);
        r->stream_sent += (int64_t)n;
        r->bytes += out;
        return (long)n;
    }
    if (rp_buf_add(&r->body, p, n) < 0) {
        if (r->up_status >= 400)
            return (long)n; /* an error body is cut, not fatal */
        r->up_err = rp_xasprintf("upstream answer exceeds the %zu byte limit", r->body_cap);
        return -1;
    }
    return (long)n;
}

void rp_req_output_drained(struct rp_req *r)
{
    if (r->mp) {
        mp_pump(r);
    } else if (r->state == RQ_SENDING) {
        if (rp_conn_output_len(r->conn) == 0)
            rp_req_finish(r, NULL);
    } else if (r->fill) {
        rp_fill_reader_drained(r);
    } else if (r->streaming && r->paused && r->fetch) {
        r->paused = false;
        rp_fetch_resume(r->fetch);
    }
}

/* Rewrites a tags/list (or referrers) Link header into the proxy's namespace: of its
 * link-values only the one with rel="next" is kept, as `</v2/CLIENT-NAME/tags/list?...>;
 * rel="next"` (`.../referrers/DIGEST?...`, the request's subject) with the client's ns=
 * when it used one; its other parameters and every other link are dropped, so nothing
 * upstream wrote reaches the client but that page's query. Returns a new string, or NULL
 * when there is no such link we understand (the header is dropped). */
static char *rewrite_link(const struct rp_req *r, const char *link)
{
    bool referrers = r->route.kind == RP_ROUTE_REFERRERS;
    size_t cap = strlen(link) + 1;
    char *kept = rp_xmalloc(cap);
    if (rp_http_link_next_query(link, referrers, kept, cap) != 0) {
        free(kept);
        return NULL;
    }
    const char *what = referrers ? "referrers/" : "tags/list";
    const char *ref = referrers ? r->route.ref : "";
    char *out;
    if (r->route.via_ns)
        out = rp_xasprintf("</v2/%s/%s%s%s%sns=%s>; rel=\"next\"", r->route.client_name, what, ref,
                           kept, kept[0] ? "&" : "?", r->route.reg->name);
    else
        out = rp_xasprintf("</v2/%s/%s%s%s>; rel=\"next\"", r->route.client_name, what, ref, kept);
    free(kept);
    if (!rp_header_value_safe(out)) {
        free(out);
        return NULL;
    }
    return out;
}

static void digest_hex(const char *algo, const char *p, size_t n, char *out, size_t outlen)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_Digest(p, n, d, &dlen, strcmp(algo, "sha512") == 0 ? EVP_sha512() : EVP_sha256(), NULL);
    size_t o = (size_t)snprintf(out, outlen, "%s:", algo);
    for (unsigned int i = 0; i < dlen && o + 2 < outlen; i++)
        o += (size_t)snprintf(out + o, outlen - o, "%02x", d[i]);
}

/* Whether a manifest fetched by tag is all upstream sent. A connection closed early ends a
 * body that has no Content-Length and is not chunked just as its real end does, so such a
 * body must match upstream's Docker-Content-Digest (which registries send); one that names a
 * digest must match it in any case. Except a signed schema 1 manifest: its digest is of the
 * payload without the signatures, so only the framing can say. *vouched: upstream's digest
 * matched, so the body is whole whatever the framing says. */
static bool tag_answer_whole(const struct rp_req *r, const char *body, bool *vouched)
{
    const char *d = r->up_h.docker_content_digest, *type = r->up_h.content_type;
    bool schema1 = type && strstr(type, "vnd.docker.distribution.manifest.v1");
    *vouched = false;
    if (d && rp_valid_digest(d, strlen(d)) && !schema1) {
        char got[RP_DIGEST_MAX + 1];
        digest_hex(strncmp(d, "sha512:", 7) == 0 ? "sha512" : "sha256", body, r->body.len, got,
                   sizeof(got));
        *vouched = strcmp(got, d) == 0;
        return *vouched;
    }
    return r->up_h.length >= 0 || r->up_h.chunked;
}

/* Standard base64 of the base64url text s (RFC 4648 5, unpadded, as JWS writes it),
 * decoded by rp_base64_decode. */
static unsigned char *b64url_decode(const char *s, size_t *outlen)
{
    char *std = rp_xstrdup(s);
    for (char *c = std; *c; c++)
        *c = *c == '-' ? '+' : *c == '_' ? '/' : *c;
    unsigned char *out = rp_base64_decode(std, strlen(std), outlen);
    free(std);
    return out;
}

bool rp_manifest_schema1_digest(const char *algo, const char *body, size_t len, char *out,
                                size_t outlen)
{
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *sig = json_array_get(json_object_get(j, "signatures"), 0);
    const char *prot = json_string_value(json_object_get(sig, "protected"));
    size_t plen = 0, tlen = 0;
    unsigned char *ph = prot ? b64url_decode(prot, &plen) : NULL;
    json_t *h = ph ? json_loadb((const char *)ph, plen, 0, NULL) : NULL;
    json_t *fl = json_object_get(h, "formatLength");
    const char *ft = json_string_value(json_object_get(h, "formatTail"));
    unsigned char *tail = ft ? b64url_decode(ft, &tlen) : NULL;
    bool ok = tail && json_is_integer(fl) && json_integer_value(fl) >= 0 &&
              (uint64_t)json_integer_value(fl) <= len;
    if (ok) {
        size_t n = (size_t)json_integer_value(fl);
        char *payload = rp_xmalloc(n + tlen + 1);
        memcpy(payload, body, n);
        memcpy(payload + n, tail, tlen);
        /* The header is upstream's word too: the payload it names must be the manifest
         * served, less its signatures, or any bytes would pass under another manifest's
         * digest (formatLength 0, and that manifest as formatTail), and a client that reads
         * the fields it was sent rather than the payload would use what it did not pin. */
        json_t *pj = json_loadb(payload, n + tlen, JSON_REJECT_DUPLICATES, NULL);
        json_t *unsigned_j = json_deep_copy(j);
        ok = json_is_object(pj) && json_is_object(unsigned_j) &&
             json_object_del(unsigned_j, "signatures") == 0 && json_equal(pj, unsigned_j);
        json_decref(unsigned_j);
        json_decref(pj);
        if (ok)
            digest_hex(algo, payload, n + tlen, out, outlen);
        free(payload);
    }
    free(tail);
    json_decref(h);
    free(ph);
    json_decref(j);
    return ok;
}

/* The own type of a parsed manifest (rp_manifest_own_type). */
static char *own_type_of(const json_t *j)
{
    const char *t = json_string_value(json_object_get(j, "mediaType"));
    json_t *sv = json_object_get(j, "schemaVersion");
    if (json_is_object(j) && !json_object_get(j, "mediaType") && json_is_integer(sv) &&
        json_integer_value(sv) == 2) {
        /* Without the field, the structure names the type (OCI image-spec: Docker schema 2
         * requires mediaType, so these are OCI's): else any registry's Content-Type would
         * relabel the bytes for every registry's clients (an image manifest called an index
         * fails their pulls). Both or neither of the shapes: no type of its own. */
        bool index = json_is_array(json_object_get(j, "manifests"));
        bool image = json_is_object(json_object_get(j, "config")) &&
                     json_is_array(json_object_get(j, "layers"));
        if (index != image)
            t = index ? RP_MEDIA_OCI_INDEX : RP_MEDIA_OCI_MANIFEST;
    }
    char *own = t && strlen(t) <= RP_MEDIA_TYPE_MAX && strchr(t, '/') && rp_header_value_safe(t)
                    ? rp_xstrdup(t)
                    : NULL;
    return own;
}

char *rp_manifest_own_type(const char *body, size_t len)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    char *own = own_type_of(j);
    json_decref(j);
    return own;
}

/* A manifest GET came back: verify, publish (bytes, media type, repository link, tag),
 * answer. */
static void manifest_fetched(struct rp_req *r)
{
    struct rp_server *srv = r->conn->srv;
    const struct rp_route *rt = &r->route;
    const char *type = rp_header_value_safe(r->up_h.content_type) ? r->up_h.content_type : NULL;
    const char *body = r->body.data ? r->body.data : "";
    char digest[RP_DIGEST_MAX + 1];
    /* By tag, in the algorithm upstream names the manifest with (a sha512 registry's tag). */
    const char *ud = r->up_h.docker_content_digest;
    const char *algo_of = rt->ref_is_digest                       ? rt->ref
                          : ud && rp_valid_digest(ud, strlen(ud)) ? ud
                                                                  : "sha256:";
    const char *algo = strncmp(algo_of, "sha512:", 7) == 0 ? "sha512" : "sha256";
    digest_hex(algo, body, r->body.len, digest, sizeof(digest));
    /* Signed schema 1 (what docker-registry makes of a schema 2 tag for a client naming no
     * schema 2 type) is named by its payload's digest, upstream's Docker-Content-Digest and
     * its HEAD's: the hash of the signed bytes differs at every signing. Not cached: the
     * cache keeps bytes under their own hash. */
    bool schema1 = type && strstr(type, "vnd.docker.distribution.manifest.v1") != NULL;
    if (schema1 && !(rt->ref_is_digest && strcmp(digest, rt->ref) == 0)) {
        char payload_digest[RP_DIGEST_MAX + 1];
        if (rp_manifest_schema1_digest(algo, body, r->body.len, payload_digest,
                                       sizeof(payload_digest)))
            memcpy(digest, payload_digest, sizeof(digest));
    }
    /* A manifest asked for by digest must be that digest, whatever upstream says. */
    if (rt->ref_is_digest && strcmp(digest, rt->ref) != 0) {
        rp_req_upstream_error(r, 502, "MANIFEST_INVALID",
                              "upstream sent a manifest that does not match the digest",
                              r->up_status, NULL);
        return;
    }
    bool vouched = false;
    if (!rt->ref_is_digest && !tag_answer_whole(r, body, &vouched)) {
        rp_req_upstream_error(r, 502, "MANIFEST_INVALID",
                              "upstream sent a manifest that may have been cut short: it does "
                              "not match upstream's Docker-Content-Digest, or has neither that "
                              "nor a Content-Length or chunked framing",
                              r->up_status, NULL);
        return;
    }
    /* Parsed once, for both questions below (the hot part of a miss by tag). */
    json_t *j = !rt->ref_is_digest || type ? json_loadb(body, r->body.len, 0, NULL) : NULL;
    /* Every manifest is a JSON object: a manifest by tag has no digest to vouch for it, and
     * one whose Content-Length lies short (with no Docker-Content-Digest) is framed as whole,
     * cut inside its JSON. Unless upstream's digest vouched for the bytes: they are whole,
     * and what jansson cannot read (a \u0000 in a string, an integer beyond 64 bits, a byte
     * that is not UTF-8) the clients' parsers may, as they do by digest. */
    if (!rt->ref_is_digest && !vouched && !json_is_object(j)) {
        json_decref(j);
        rp_req_upstream_error(r, 502, "MANIFEST_INVALID",
                              "upstream sent a manifest that is not a JSON object (cut short "
                              "by a wrong Content-Length, or no manifest)",
                              r->up_status, NULL);
        return;
    }
    /* The cache keeps one media type per digest, and the digest covers the bytes, not a
     * header: when the bytes name their type, that is the one stored and answered, or a
     * registry serving bytes another also serves (any public image's) under another
     * Content-Type would relabel them for the other registry's clients. */
    char *own = type ? own_type_of(j) : NULL;
    json_decref(j);
    if (own)
        type = own;
    if (type && !schema1) {
        /* Pinned before publishing: publishing runs eviction, which must not take it. */
        rp_server_maybe_pin(srv, rt->reg, rt->name, digest);
        int e = rp_cache_manifest_put(srv->cache, digest, type, body, r->body.len);
        if (e == RP_CACHE_OK) {
            rp_cache_link(srv->cache, rt->reg->name, rt->name, digest);
            /* Cached by digest whatever the Accept; the tag records only an answer every
             * client would get, not one narrowed to this client's Accept. */
            if (!rt->ref_is_digest &&
                rp_manifest_tag_canonical(r->canonical_fetch ? RP_MANIFEST_ACCEPT : r->accept,
                                          type))
                rp_cache_tag_set(srv->cache, rt->reg->name, rt->name, rt->ref, digest,
                                 tag_type(r, digest), rp_wall_s());
        } else {
            rp_warn("cache: manifest %s not stored: %s", digest, rp_cache_strerror(e));
        }
    }
    if (r->canonical_fetch && !accept_allows(r->accept, type)) {
        /* The tag's answer is not for this client: ask for what it takes. */
        r->canonical_fetch = false;
        free(own);
        start_fetch(r, false, false);
        return;
    }
    if (rp_http_etag_list_names(r->if_none_match, digest)) {
        free(own);
        answer_not_modified(r, digest);
        return;
    }
    struct rp_buf extra;
    rp_buf_init(&extra, 4096);
    rp_buf_addf(&extra, "Docker-Content-Digest: %s\r\nETag: \"%s\"\r\n", digest, digest);
    cache_header(r, &extra);
    respond(r, r->up_status, type, body, r->body.len, extra.data);
    rp_buf_free(&extra);
    free(own);
}

/* A tags list's or referrers' headers from upstream's: OCI-Filters-Applied, and the next
 * page's Link in the proxy's names. */
static void list_headers(const struct rp_req *r, struct rp_buf *extra)
{
    const struct rp_xfer_headers *h = &r->up_h;
    if (r->route.kind == RP_ROUTE_REFERRERS && rp_header_value_safe(h->oci_filters_applied))
        rp_buf_addf(extra, "OCI-Filters-Applied: %s\r\n", h->oci_filters_applied);
    /* A list that does not fit one answer names its next page in a Link (OCI distribution
     * spec, "Listing Referrers"), as tags lists do. */
    if (h->link) {
        char *link = rewrite_link(r, h->link);
        if (link)
            rp_buf_addf(extra, "Link: %s\r\n", link);
        free(link);
    }
}

static void answer_success(struct rp_req *r)
{
    const struct rp_xfer_headers *h = &r->up_h;
    if (r->route.kind == RP_ROUTE_MANIFEST && !r->head) {
        manifest_fetched(r);
        return;
    }
    const char *ud = h->docker_content_digest;
    if (r->route.kind == RP_ROUTE_MANIFEST && r->route.ref_is_digest && ud &&
        rp_valid_digest(ud, strlen(ud)) && strncmp(ud, r->route.ref, 7) == 0 &&
        strcmp(ud, r->route.ref) != 0) {
        /* A HEAD has no body to verify: upstream's own word that it is another manifest is
         * all there is, and must not be answered as the one asked for. (A digest in the
         * other algorithm may name the same bytes: only a GET can tell.) */
        rp_req_upstream_error(r, 502, "MANIFEST_INVALID",
                              "upstream named another digest than the one asked for", r->up_status,
                              NULL);
        return;
    }
    struct rp_buf extra;
    rp_buf_init(&extra, 32768);
    const char *type = rp_header_value_safe(h->content_type) ? h->content_type : NULL;
    int64_t length = r->head ? h->length : (int64_t)r->body.len;
    const char *digest = NULL; /* a manifest's, for its ETag and If-None-Match */
    switch (r->route.kind) {
    case RP_ROUTE_MANIFEST: /* HEAD */
        digest = r->route.ref_is_digest                  ? r->route.ref
                 : ud && rp_valid_digest(ud, strlen(ud)) ? ud
                                                         : NULL;
        if (digest)
            rp_buf_addf(&extra, "Docker-Content-Digest: %s\r\nETag: \"%s\"\r\n", digest, digest);
        break;
    case RP_ROUTE_BLOB: /* HEAD; a GET whose If-None-Match names the blob, or whose range no
                         * blob can satisfy (lookup) */
        rp_buf_addf(&extra, RP_BLOB_HEADERS, r->route.ref, r->route.ref);
        if (!type)
            type = "application/octet-stream";
        digest = r->route.ref; /* for If-None-Match only: its headers are in already */
        break;
    case RP_ROUTE_REFERRERS:
    case RP_ROUTE_TAGS:
        list_headers(r, &extra);
        break;
    case RP_ROUTE_PING:
        break;
    }
    cache_header(r, &extra);
    if (r->head && r->route.kind == RP_ROUTE_MANIFEST)
        rp_inflight_share(r);
    if (digest && rp_http_etag_list_names(r->if_none_match, digest))
        answer_not_modified(r, digest);
    else if (r->route.kind == RP_ROUTE_BLOB && !r->head && h->length >= 0)
        rp_req_range_unsatisfiable(r, (uint64_t)h->length); /* range_never_satisfiable */
    else if (r->route.kind == RP_ROUTE_BLOB && !r->head)
        answer_range_unsatisfiable(r, NULL);
    else if (r->head) {
        rp_conn_write_head(r->conn, r->up_status, type, length, extra.data);
        rp_req_finish(r, NULL);
    } else {
        respond(r, r->up_status, type, r->body.data, r->body.len, extra.data);
    }
    rp_buf_free(&extra);
}

void rp_req_answer_shared(struct rp_req *r, int status, const struct rp_xfer_headers *h)
{
    r->up_status = status;
    rp_headers_copy(&r->up_h, h);
    r->cache_status = "MISS";
    answer_success(r);
}

bool rp_req_redirect_refused(struct rp_req *r, const struct rp_fetch_result *res, int status)
{
    /* Blobs only: a CDN's 4xx is about its signed URL. A manifest, tag list or referrers
     * redirected to a backing registry (registry.k8s.io) gets that registry's answers, whose
     * 404 means what a 404 means (referrers: fall back to tags). Except a 429: the CDN
     * rate-limits, and the client backs off by its Retry-After as when pulling directly. */
    if (r->route.kind != RP_ROUTE_BLOB || !res->from_redirect || status < 400 || status >= 500 ||
        status == 429)
        return false;
    rp_warn("upstream %s: %s: the registry's redirect target answered %d", r->route.reg->name,
            rp_route_kind_name(r->route.kind), status);
    char *msg = rp_xasprintf("upstream registry %s redirected to a location that answered %d "
                             "(an expired or refused download URL)",
                             r->route.reg->name, status);
    rp_req_upstream_error(r, 502, "UNKNOWN", msg, status, NULL);
    free(msg);
    return true;
}

const char *rp_req_unreachable_msg(enum rp_xfer_error e)
{
    /* A certificate problem is the admin's to fix (ca_file), not an outage to wait out. */
    return e == RP_XFER_E_TLS || e == RP_XFER_E_TLS_HANDSHAKE
               ? "TLS with the upstream registry failed"
               : "upstream registry unreachable";
}

static void up_failed(struct rp_req *r, const struct rp_fetch_result *res)
{
    const char *err = r->up_err ? r->up_err : res->err;
    /* No whole answer from upstream (none at all, or one cut short): the requests waiting on
     * this one answer the same. */
    if (res->fail == RP_FETCH_E_TRANSPORT ||
        (res->fail == RP_FETCH_E_TOKEN && res->xfer_err != RP_XFER_OK &&
         res->xfer_err != RP_XFER_E_ABORTED)) {
        struct rp_fetch_result shared = *res;
        shared.err = err;
        rp_inflight_failed(r, &shared);
    }
    switch (res->fail) {
    case RP_FETCH_E_TOKEN: {
        int e = res->token_err;
        char *msg =
            rp_xasprintf("cannot authenticate to %s: %s", r->route.reg->name, rp_auth_strerror(e));
        /* 502, not 401: the client is anonymous here and its request was fine; a 401
         * (which must carry a challenge) would send it to log in, or its admin to add
         * pull secrets, when the proxy's own credentials are what the registry refused. */
        if (e == RP_AUTH_E_REJECTED || e == RP_AUTH_E_NO_CREDENTIALS)
            rp_req_upstream_error(r, 502, "UNAUTHORIZED", msg, 0, NULL);
        else if (e == RP_AUTH_E_REALM_ERROR)
            rp_req_upstream_error(r, 503, "UNAVAILABLE", msg, 0, err);
        else
            rp_req_upstream_error(r, 502, "UNKNOWN", msg, 0, NULL);
        free(msg);
        return;
    }
    case RP_FETCH_E_AUTH: {
        char *msg = rp_xasprintf("upstream %s refused the request: %s", r->route.reg->name,
                                 rp_auth_strerror(res->auth_err));
        rp_req_upstream_error(r, 502, "UNAUTHORIZED", msg, 401, NULL); /* 502: as above */
        free(msg);
        return;
    }
    case RP_FETCH_E_REDIRECT:
        rp_req_upstream_error(r, 502, "UNKNOWN", "upstream redirect refused", res->status, err);
        return;
    case RP_FETCH_E_OWNER:
        rp_req_upstream_error(r, 502, "UNKNOWN", "upstream answer rejected", res->status, err);
        return;
    case RP_FETCH_E_TRANSPORT:
    case RP_FETCH_OK:
    default:
        /* The access line says 503; the reason is for the admin, in the log too. */
        rp_warn("upstream %s: %s %s%s%s", r->route.reg->name, rp_route_kind_name(r->route.kind),
                res->status ? "answer incomplete" : "unreachable", err ? ": " : "", err ? err : "");
        if (res->status)
            rp_req_upstream_error(r, 502, "UNKNOWN", "upstream answer incomplete", res->status,
                                  err);
        else
            rp_req_upstream_error(r, 503, "UNAVAILABLE", rp_req_unreachable_msg(res->xfer_err), 0,
                                  err);
        return;
    }
}

/* r's cached tag (have_stale) is within tag_ttl + max_stale, its manifest is cached, and
 * of a type r's client takes: stale_answer would answer it. */
static bool stale_servable(struct rp_req *r)
{
    int64_t limit = tag_ttl_ms(r) + r->conn->srv->conf->cache.max_stale_ms;
    if (!r->have_stale || r->stale_age_s * 1000 > limit)
        return false;
    const char *data, *type;
    size_t len;
    return manifest_cached(r, r->stale_digest, &data, &len, &type) &&
           accept_allows(r->accept, type);
}

/* Answers r's cached tag (have_stale) stale, unless it is past tag_ttl + max_stale; why
 * and status say what upstream did. Its waiters, if r leads, serve it stale too. */
static bool stale_answer(struct rp_req *r, const char *why, int status)
{
    if (!stale_servable(r))
        return false;
    rp_warn("stale registry=%s repo=%s tag=%s age=%llds: upstream %s (status %d)",
            r->route.reg->name, r->route.name, r->route.ref, (long long)r->stale_age_s, why,
            status);
    rp_inflight_stale(r); /* before the answer, which wakes the waiters */
    return manifest_from_cache(r, r->stale_digest, "STALE");
}

/* stale-if-error: a cached tag may be served while upstream is down or failing (5xx, 429)
 * or refuses the proxy's credentials, for up to max_stale past its freshness. Refused
 * credentials are the token realm's verdict (E_TOKEN) or, with Basic, the registry's own
 * (E_AUTH: a 401 for the credentials sent). */
static bool serve_stale(struct rp_req *r, const struct rp_fetch_result *res)
{
    if (!r->have_stale)
        return false;
    bool outage = res->fail == RP_FETCH_E_TRANSPORT || res->fail == RP_FETCH_E_TOKEN ||
                  res->fail == RP_FETCH_E_AUTH ||
                  (res->fail == RP_FETCH_OK && (res->status >= 500 || res->status == 429));
    if (!outage)
        return false;
    return stale_answer(r, res->err ? res->err : "failed", res->status);
}

/* Records the tag as naming the manifest a HEAD answered to accept names (the proxy's
 * list, for a revalidation or a canonical fetch): as from a GET (containerd GETs the
 * digest next; until then a lookup finds it uncached and revalidates), with its type,
 * which the revalidation names when the list does not (an OCI artifact manifest). Not
 * when such a type cannot be recorded: the revalidation could not name it, and a
 * registry's 404 to that would read as the tag being gone. False when not recorded. */
static bool record_head_tag(struct rp_req *r, const char *accept)
{
    const char *t = rp_header_value_safe(r->up_h.content_type) ? r->up_h.content_type : NULL;
    const char *d = r->up_h.docker_content_digest;
    if (!d || !rp_valid_digest(d, strlen(d)) || !t)
        return false;
    const char *keep = tag_type(r, d);
    if (!(keep || rp_accept_names(RP_MANIFEST_ACCEPT, t)) || !rp_manifest_tag_canonical(accept, t))
        return false;
    rp_cache_tag_set(r->conn->srv->cache, r->route.reg->name, r->route.name, r->route.ref, d, keep,
                     rp_wall_s());
    return true;
}

static void up_done_cb(void *arg, const struct rp_fetch_result *res)
{
    struct rp_req *r = arg;
    r->fetch = NULL;
    if (res->status)
        r->up_status = res->status;
    if (r->range_refused) {
        /* upstream's Content-Range is passed on only when it is the "bytes *\/SIZE" kind */
        const char *cr = r->up_h.content_range;
        bool ok =
            cr && rp_header_value_safe(cr) && strncmp(cr, "bytes */", 8) == 0 && strlen(cr) < 40;
        answer_range_unsatisfiable(r, ok ? cr : NULL);
        return;
    }
    if (r->range_to_fill) {
        /* Served by the download rather than passed through (up_headers_cb). */
        r->range_to_fill = false;
        r->fill_behind = false;
        r->state = RQ_LOOKUP;
        rp_req_drive(r);
        return;
    }
    if (r->streaming) {
        bool whole = r->stream_expected < 0 || r->stream_sent == r->stream_expected;
        /* A hashed blob whose every byte is in, and only what would follow them was cut (a
         * chunked 206's terminating chunk, lost with the connection): its digest decides, as
         * at a clean end. Taken for a cut, the client was cut one byte short of a whole
         * blob. */
        bool all_in = res->fail == RP_FETCH_E_TRANSPORT && r->stream_md &&
                      r->stream_expected >= 0 && r->stream_sent == r->stream_expected;
        if ((res->fail != RP_FETCH_OK && !all_in) || !whole) {
            if (rp_req_take_back(r)) {
                r->streaming = false;
                up_failed(r, res);
                return;
            }
            /* Part of it is out: the client is cut, so it never looks whole. */
            const char *why = r->up_err ? r->up_err : res->err;
            rp_warn("upstream %s: %s cut after %lld bytes%s%s", r->route.reg->name,
                    rp_route_kind_name(r->route.kind), (long long)r->stream_sent, why ? ": " : "",
                    why ? why : "");
            rp_req_finish(r, "upstream");
            return;
        }
        if (r->stream_md) {
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int mdlen = 0;
            if (EVP_DigestFinal_ex(r->stream_md, md, &mdlen) != 1 ||
                !rp_digest_matches(r->route.ref, md, mdlen)) {
                bool back = rp_req_take_back(r);
                rp_warn("blob %s registry=%s passed through: upstream's bytes do not match the "
                        "digest; %s",
                        r->route.ref, r->route.reg->name,
                        back ? "none had reached the client, which is answered 502"
                             : "the client is cut before the last byte");
                if (back)
                    rp_req_upstream_error(r, 502, "UNKNOWN", "upstream answer rejected",
                                          res->status, "content does not match its digest");
                else
                    rp_req_finish(r, "digest");
                return;
            }
            evbuffer_add(rp_conn_output(r->conn), &r->stream_last, 1);
            r->bytes++;
        }
        if (r->route.kind != RP_ROUTE_BLOB) {
            /* A list: done once its client has it all, as the access line then says. */
            rp_conn_body_end(r->conn);
            rp_req_queued(r);
            return;
        }
        rp_req_finish(r, NULL);
        return;
    }
    if (r->revalidating) {
        r->revalidating = false;
        if (serve_stale(r, res))
            return;
        const char *d = r->up_h.docker_content_digest;
        bool named =
            res->fail == RP_FETCH_OK && res->status == 200 && d && rp_valid_digest(d, strlen(d));
        bool unchanged = named && strcmp(d, r->stale_digest) == 0;
        const char *data, *type;
        size_t len;
        if (unchanged) {
            /* Unchanged upstream: fresh again, answered from the cache. */
            rp_cache_tag_set(r->conn->srv->cache, r->route.reg->name, r->route.name, r->route.ref,
                             d, tag_type(r, d), rp_wall_s());
            if (manifest_from_cache(r, d, "REVALIDATED"))
                return;
        }
        bool cached = named && manifest_cached(r, d, &data, &len, &type);
        /* Moved to a manifest not cached: the tag follows upstream now, whoever answers
         * (a HEAD below, or a GET that may fail), or else stale serving would answer the
         * old digest in a later outage; nor does this request's GET, should it fail. The
         * revalidation asked with the proxy's list. */
        if (named && !unchanged && !cached) {
            r->have_stale = false;
            if (!record_head_tag(r, RP_MANIFEST_ACCEPT)) {
                /* A type a tag cannot record: the old digest is no longer the tag's, and
                 * stale serving (or an offline registry) must not answer it for the tag.
                 * Dropped, the next request is a plain miss. */
                rp_cache_tag_delete(r->conn->srv->cache, r->route.reg->name, r->route.name,
                                    r->route.ref);
            }
        }
        if (named && !unchanged && cached) {
            /* Moved to a manifest this repository has cached already (containerd resolves
             * a tag by HEAD, then fetches the digest): the tag follows, no GET needed. */
            rp_cache_tag_set(r->conn->srv->cache, r->route.reg->name, r->route.name, r->route.ref,
                             d, tag_type(r, d), rp_wall_s());
            if (manifest_from_cache(r, d, "REVALIDATED"))
                return;
            /* Of a type this client does not take: its own fetch follows. The old digest is
             * no longer the tag's: not answered stale should that fetch fail or be slow (past
             * revalidate_timeout, revalidate_deadline). */
            r->have_stale = false;
        }
        if (named && !cached && r->head && rp_header_value_safe(r->up_h.content_type) &&
            accept_allows(r->accept, r->up_h.content_type)) {
            /* A HEAD is answered by the revalidation's own HEAD, not a second one: moved, or
             * unchanged but never fetched (a node that has the image only HEADs the tag). */
            r->cache_status = "MISS";
            answer_success(r);
            return;
        }
        if (res->fail == RP_FETCH_OK && res->status >= 400) {
            /* Asked with the full Accept list: the tag is gone, not narrowed away. Stale
             * serving must not bring it back in a later outage. */
            if (res->status == 404)
                rp_cache_tag_delete(r->conn->srv->cache, r->route.reg->name, r->route.name,
                                    r->route.ref);
            rp_req_answer_upstream_failure(
                r, res->status,
                rp_header_value_safe(r->up_h.retry_after) ? r->up_h.retry_after : NULL,
                r->up_h.allow, r->body.data, r->body.len);
            return;
        }
        if (res->fail != RP_FETCH_OK) {
            up_failed(r, res);
            return;
        }
        r->cache_status = "MISS";
        /* Unchanged and cached, the tag's answer is known and not for this client: its own
         * next. */
        if (!unchanged || !manifest_cached(r, r->stale_digest, &data, &len, &type))
            canonical_unless_named(r);
        start_fetch(r, r->head, false);
        return;
    }
    if (res->fail != RP_FETCH_OK) {
        if (!serve_stale(r, res))
            up_failed(r, res);
        return;
    }
    if (r->state == RQ_CONFIRM) {
        if (res->status == 200) {
            /* Served on upstream's word even when the link cannot be kept (a full disk):
             * looking up again would only confirm again, for ever. */
            r->confirmed = true;
            r->confirmed_len = r->up_h.length;
            int e =
                rp_cache_link(r->conn->srv->cache, r->route.reg->name, r->route.name, r->route.ref);
            if (e != RP_CACHE_OK)
                rp_warn("blob %s registry=%s repo=%s: cannot record the repository link (%s); "
                        "served on upstream's confirmation",
                        r->route.ref, r->route.reg->name, r->route.name, rp_cache_strerror(e));
            rp_server_maybe_pin(r->conn->srv, r->route.reg, r->route.name, r->route.ref);
            /* The requests waiting on this confirmation find the link now, not once this
             * one's blob is all sent. */
            rp_inflight_done(r, true);
            r->state = RQ_LOOKUP;
            rp_req_drive(r);
            return;
        }
    } else if (res->status >= 200 && res->status < 300) {
        if (r->head && r->route.kind == RP_ROUTE_MANIFEST && !r->route.ref_is_digest) {
            const char *t =
                rp_header_value_safe(r->up_h.content_type) ? r->up_h.content_type : NULL;
            if (r->canonical_fetch && !accept_allows(r->accept, t)) {
                r->canonical_fetch = false;
                start_fetch(r, true, false);
                return;
            }
            record_head_tag(r, r->canonical_fetch ? RP_MANIFEST_ACCEPT : r->accept);
        }
        answer_success(r);
        return;
    } else if (r->canonical_fetch && res->status >= 400 && res->status < 500 &&
               res->status != 401 && res->status != 429) {
        /* Refused with the proxy's list: maybe not with the client's own. */
        r->canonical_fetch = false;
        start_fetch(r, r->head, false);
        return;
    }
    if (serve_stale(r, res))
        return;
    if (rp_req_redirect_refused(r, res, res->status))
        return;
    rp_req_answer_upstream_failure(
        r, res->status, rp_header_value_safe(r->up_h.retry_after) ? r->up_h.retry_after : NULL,
        r->up_h.allow, r->body.data, r->body.len);
}

/* --- revalidations finishing in the background --- */

struct rp_reval {
    TAILQ_ENTRY(rp_reval) link;
    struct rp_server *srv;
    const struct rp_conf_registry *reg;
    char *repo, *tag;
    char stale_digest[RP_DIGEST_MAX + 1];
    int64_t stale_fetched_s; /* the tag's recorded time at the handoff */
    struct rp_fetch *fetch;
    int status;
    char *digest, *type; /* upstream's Docker-Content-Digest and Content-Type, when usable */
};

static void reval_free(struct rp_reval *v)
{
    TAILQ_REMOVE(&v->srv->revals, v, link);
    rp_fetch_cancel(v->fetch);
    free(v->repo);
    free(v->tag);
    free(v->digest);
    free(v->type);
    free(v);
}

void rp_revals_free_all(struct rp_server *srv)
{
    while (!TAILQ_EMPTY(&srv->revals))
        reval_free(TAILQ_FIRST(&srv->revals));
}

static bool reval_running(struct rp_server *srv, const struct rp_conf_registry *reg,
                          const char *repo, const char *tag)
{
    struct rp_reval *v;
    TAILQ_FOREACH(v, &srv->revals, link)
    if (v->reg == reg && strcmp(v->repo, repo) == 0 && strcmp(v->tag, tag) == 0)
        return true;
    return false;
}

static int reval_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    struct rp_reval *v = arg;
    v->status = status;
    const char *d = h->docker_content_digest;
    if (d && rp_valid_digest(d, strlen(d)))
        v->digest = rp_xstrdup(d);
    if (h->content_type && rp_header_value_safe(h->content_type)) {
        v->type = rp_xstrdup(h->content_type);
        rp_media_type_normalize(v->type); /* as up_headers_cb keeps a manifest's type */
    }
    return 0;
}

static long reval_data_cb(void *arg, const char *p, size_t n)
{
    (void)arg;
    (void)p;
    return (long)n; /* a HEAD: nothing, or an error body nobody reads */
}

/* What the request would have recorded from the same answer (up_done_cb, revalidating). */
static const char *reval_record(struct rp_reval *v)
{
    struct rp_cache *c = v->srv->cache;
    const char *reg = v->reg->name, *d = v->digest, *data, *type;
    size_t len;
    /* The answer is as of when the question was asked. A tag recorded again since (another
     * client's revalidation or fetch found it moved, or refreshed it) holds a newer answer,
     * which this late one must not undo: the old digest back, fresh, or the tag forgotten. */
    char now_digest[RP_DIGEST_MAX + 1];
    int64_t now_fetched_s = 0;
    if (rp_cache_tag_get(c, reg, v->repo, v->tag, now_digest, sizeof(now_digest), &now_fetched_s) !=
            RP_CACHE_OK ||
        strcmp(now_digest, v->stale_digest) != 0 || now_fetched_s != v->stale_fetched_s)
        return "the tag changed meanwhile, left as it is";
    if (v->status == 404) {
        rp_cache_tag_delete(c, reg, v->repo, v->tag);
        return "gone upstream, forgotten";
    }
    if (v->status != 200 || !d)
        return "no usable answer";
    bool unchanged = strcmp(d, v->stale_digest) == 0;
    const char *keep = tag_type_in(c, reg, v->repo, d, v->type);
    if (unchanged || manifest_cached_in(c, reg, v->repo, d, &data, &len, &type)) {
        rp_cache_tag_set(c, reg, v->repo, v->tag, d, keep, rp_wall_s());
        return unchanged ? "unchanged, fresh again" : "moved to a manifest cached already";
    }
    if (v->type && (keep || rp_accept_names(RP_MANIFEST_ACCEPT, v->type)) &&
        rp_manifest_tag_canonical(RP_MANIFEST_ACCEPT, v->type)) {
        rp_cache_tag_set(c, reg, v->repo, v->tag, d, keep, rp_wall_s());
        return "moved, the new manifest fetched at the next request";
    }
    rp_cache_tag_delete(c, reg, v->repo, v->tag);
    return "moved to a type a tag cannot record, forgotten";
}

static void reval_done_cb(void *arg, const struct rp_fetch_result *res)
{
    struct rp_reval *v = arg;
    v->fetch = NULL;
    const char *what = res->fail == RP_FETCH_OK ? reval_record(v) : "failed";
    rp_info("revalidation registry=%s repo=%s tag=%s finished in the background: %s (upstream "
            "%d%s%s)",
            v->reg->name, v->repo, v->tag, what, res->status, res->err ? ": " : "",
            res->err ? res->err : "");
    reval_free(v);
}

static const struct rp_fetch_cb reval_cb = {
    .on_headers_cb = reval_headers_cb,
    .on_data_cb = reval_data_cb,
    .on_done_cb = reval_done_cb,
};

/* revalidate_timeout passed: the client gets the stale tag now, and the question goes on
 * without it, for the next client's sake. */
static void up_deadline_cb(void *arg, bool token_wait)
{
    struct rp_req *r = arg;
    struct rp_server *srv = r->conn->srv;
    /* Upstream's answer has begun, or there is no longer a stale tag to give (a reload
     * shortened max_stale, the manifest was evicted): wait on. */
    if (r->up_status || !stale_servable(r)) {
        rp_debug("request %s past revalidate_timeout: %s, waiting on", r->id,
                 r->up_status ? "upstream's answer has begun" : "no stale answer to give");
        return;
    }
    char why[160];
    snprintf(why, sizeof(why), "gave %s within revalidate_timeout (%lld ms)%s",
             token_wait ? "no token" : "no answer",
             (long long)srv->conf->cache.revalidate_timeout_ms,
             r->revalidating ? ", asked on in the background" : "");
    if (!r->revalidating) {
        /* The fetch after a HEAD that named no digest: this client's own, dropped. */
        rp_fetch_cancel(r->fetch);
        r->fetch = NULL;
    } else {
        struct rp_reval *v = rp_xcalloc(1, sizeof(*v));
        v->srv = srv;
        v->reg = r->route.reg;
        v->repo = rp_xstrdup(r->route.name);
        v->tag = rp_xstrdup(r->route.ref);
        snprintf(v->stale_digest, sizeof(v->stale_digest), "%s", r->stale_digest);
        char digest[RP_DIGEST_MAX + 1];
        if (rp_cache_tag_get(srv->cache, r->route.reg->name, r->route.name, r->route.ref, digest,
                             sizeof(digest), &v->stale_fetched_s) != RP_CACHE_OK ||
            strcmp(digest, v->stale_digest) != 0)
            v->stale_fetched_s = -1; /* changed already: the answer records nothing */
        v->fetch = r->fetch;
        r->fetch = NULL;
        rp_fetch_rebind(v->fetch, &reval_cb, v);
        TAILQ_INSERT_TAIL(&srv->revals, v, link);
        r->revalidating = false;
    }
    if (stale_answer(r, why, 0))
        return;
    struct rp_fetch_result res = {
        .fail = RP_FETCH_E_TRANSPORT, .xfer_err = RP_XFER_E_TIMEOUT, .err = why};
    up_failed(r, &res); /* the stale manifest went between the check and the answer */
}

static const struct rp_fetch_cb upstream_cb = {
    .on_headers_cb = up_headers_cb,
    .on_data_cb = up_data_cb,
    .on_done_cb = up_done_cb,
    .on_deadline_cb = up_deadline_cb,
};

void rp_req_drive(struct rp_req *r)
{
    struct rp_server *srv = r->conn->srv;
    switch (r->state) {
    case RQ_ROUTE: {
        const char *why = NULL;
        int e = rp_route_parse(srv->conf, r->conn->listen, r->target, strlen(r->target), &r->route,
                               &why);
        if (e != RP_ROUTE_OK) {
            route_error(r, e, why);
            return;
        }
        r->routed = true;
        if (r->route.reg && !rp_acl_repo_allowed(r->route.reg->repos, r->route.reg->n_repos,
                                                 r->route.name, r->route.reg->dockerhub)) {
            /* Checked before the cache and before any upstream contact. */
            rp_req_error(r, 403, "DENIED", "repository not allowed by this proxy's repos list",
                         NULL);
            return;
        }
        if (r->route.kind == RP_ROUTE_PING) {
            /* Answered here: clients ping before every pull, and no upstream is needed to
             * say that this endpoint speaks the v2 API anonymously. */
            respond(r, 200, "application/json", "{}", 2, NULL);
            return;
        }
        r->state = RQ_LOOKUP;
        lookup(r);
        return;
    }
    case RQ_LOOKUP:
        lookup(r);
        return;
    case RQ_CONFIRM:
    case RQ_UPSTREAM:
    case RQ_FILL:
    case RQ_WAIT_PEER:
    case RQ_SENDING:
    case RQ_DONE:
        return;
    }
}
