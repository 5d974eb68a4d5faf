/* SPDX-License-Identifier: Apache-2.0 */
/* request: one client request's state machine (route -> auth -> upstream -> answer).
 * Callbacks from the client socket, the upstream transfer and the token fetch only record
 * what happened and call rp_req_drive, which advances the state in one switch. */
#include "proxy.h"

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ACCEPT_MAX 4096
#define RANGE_MAX 128
#define METADATA_TIMEOUT_MS 60000L
#define STALL_TIMEOUT_S 60L

static const struct rp_xfer_cb upstream_cb;

static void headers_free(struct rp_xfer_headers *h)
{
    free(h->content_type);
    free(h->content_length);
    free(h->content_range);
    free(h->docker_content_digest);
    free(h->www_authenticate);
    free(h->location);
    free(h->retry_after);
    free(h->link);
    free(h->etag);
    free(h->oci_filters_applied);
    memset(h, 0, sizeof(*h));
    h->length = -1;
}

static char *dup_or_null(const char *s)
{
    return s ? rp_xstrdup(s) : NULL;
}

static void headers_copy(struct rp_xfer_headers *dst, const struct rp_xfer_headers *src)
{
    headers_free(dst);
    dst->content_type = dup_or_null(src->content_type);
    dst->content_length = dup_or_null(src->content_length);
    dst->content_range = dup_or_null(src->content_range);
    dst->docker_content_digest = dup_or_null(src->docker_content_digest);
    dst->www_authenticate = dup_or_null(src->www_authenticate);
    dst->location = dup_or_null(src->location);
    dst->retry_after = dup_or_null(src->retry_after);
    dst->link = dup_or_null(src->link);
    dst->etag = dup_or_null(src->etag);
    dst->oci_filters_applied = dup_or_null(src->oci_filters_applied);
    dst->length = src->length;
}

/* Header values are forwarded to clients only when they are plain visible ASCII, so an
 * upstream cannot split our response or inject headers. */
static bool header_value_safe(const char *v)
{
    if (!v)
        return false;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

struct rp_req *rp_req_new(struct rp_conn *c, const struct rp_http_request_head *h)
{
    struct rp_req *r = rp_xcalloc(1, sizeof(*r));
    r->conn = c;
    r->state = RQ_ROUTE;
    r->started_ms = rp_now_ms();
    r->head = h->method == RP_HTTP_HEAD;
    r->target = rp_xstrndup(h->target, h->target_len);
    r->cache_status = "PASS";
    r->stream_expected = -1;
    r->up_h.length = -1;
    /* Docker sends one Accept header per media type; others send one list. Upstream gets
     * the same list either way (joined as RFC 9110 allows). */
    struct rp_buf acc;
    rp_buf_init(&acc, ACCEPT_MAX);
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct rp_http_header *hd = &h->headers[i];
        if (rp_strieq_n(hd->name, hd->name_len, "accept") && hd->value_len > 0) {
            if ((acc.len && rp_buf_add(&acc, ", ", 2) < 0) ||
                rp_buf_add(&acc, hd->value, hd->value_len) < 0)
                break; /* an absurd Accept list is cut, not fatal */
        } else if (rp_strieq_n(hd->name, hd->name_len, "range") && !r->range &&
                   hd->value_len <= RANGE_MAX) {
            r->range = rp_xstrndup(hd->value, hd->value_len);
        }
    }
    if (acc.len && header_value_safe(acc.data))
        r->accept = rp_xstrdup(acc.data);
    rp_buf_free(&acc);
    if (r->range && !header_value_safe(r->range)) {
        free(r->range);
        r->range = NULL;
    }
    return r;
}

void rp_req_free(struct rp_req *r)
{
    if (!r)
        return;
    if (r->xfer)
        rp_xfer_cancel(r->xfer);
    if (r->waiting_on)
        rp_tokens_leave(r);
    free(r->target);
    free(r->accept);
    free(r->range);
    free(r->scope);
    rp_free_secret(r->authorization);
    free(r->url);
    free(r->up_err);
    headers_free(&r->up_h);
    rp_buf_free(&r->body);
    if (r->sha)
        EVP_MD_CTX_free(r->sha);
    free(r);
}

static void log_access(struct rp_req *r, const char *aborted)
{
    rp_info("access method=%s path=%s status=%d bytes=%llu ms=%lld registry=%s cache=%s "
            "upstream=%d peer=%s%s%s",
            r->head ? "HEAD" : "GET", r->target, r->status, (unsigned long long)r->bytes,
            (long long)(rp_now_ms() - r->started_ms), r->route.reg ? r->route.reg->name : "-",
            r->cache_status, r->up_status, r->conn->peer, aborted ? " aborted=" : "",
            aborted ? aborted : "");
}

static void finish(struct rp_req *r)
{
    log_access(r, NULL);
    rp_conn_request_done(r->conn, false);
}

/* Ends a response that cannot be completed: the connection is closed at once so the
 * client sees a short body rather than a clean end. */
static void abort_response(struct rp_req *r, const char *why)
{
    log_access(r, why);
    rp_conn_request_done(r->conn, true);
}

static void respond(struct rp_req *r, int status, const char *type, const char *body, size_t len,
                    const char *extra)
{
    rp_conn_write_head(r->conn, status, type, (int64_t)len, extra);
    if (!r->head && len) {
        evbuffer_add(rp_conn_output(r->conn), body, len);
        r->bytes += len;
    }
    finish(r);
}

void rp_req_error(struct rp_req *r, int status, const char *code, const char *message,
                  const char *detail)
{
    char *body = rp_error_body(code, message, detail);
    respond(r, status, "application/json", body, strlen(body), NULL);
    free(body);
}

/* An error about the upstream, with the registry and its error in the detail. */
static void upstream_error(struct rp_req *r, int status, const char *code, const char *message,
                           const char *err)
{
    json_t *d = json_pack("{s:s}", "registry", r->route.reg->name);
    if (r->up_status)
        json_object_set_new(d, "upstream_status", json_integer(r->up_status));
    if (err)
        json_object_set_new(d, "error", json_string(err));
    char *detail = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    rp_req_error(r, status, code, message, detail);
    free(detail);
}

static void route_error(struct rp_req *r, int e, const char *why)
{
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

static size_t registry_index(const struct rp_server *srv, const struct rp_conf_registry *reg)
{
    return (size_t)(reg - srv->conf->registries);
}

static char *registry_url(const struct rp_req *r)
{
    const struct rp_route *rt = &r->route;
    const char *base = rt->reg->url;
    switch (rt->kind) {
    case RP_ROUTE_MANIFEST:
        return rp_xasprintf("%s/v2/%s/manifests/%s", base, rt->name, rt->ref);
    case RP_ROUTE_BLOB:
        return rp_xasprintf("%s/v2/%s/blobs/%s", base, rt->name, rt->ref);
    case RP_ROUTE_REFERRERS:
        if (rt->artifact_type[0])
            return rp_xasprintf("%s/v2/%s/referrers/%s?artifactType=%s", base, rt->name, rt->ref,
                                rt->artifact_type);
        return rp_xasprintf("%s/v2/%s/referrers/%s", base, rt->name, rt->ref);
    case RP_ROUTE_TAGS: {
        /* Only validated parameters travel upstream. */
        char q[200] = "";
        if (rt->n >= 0 && rt->last[0])
            snprintf(q, sizeof(q), "?n=%ld&last=%s", rt->n, rt->last);
        else if (rt->n >= 0)
            snprintf(q, sizeof(q), "?n=%ld", rt->n);
        else if (rt->last[0])
            snprintf(q, sizeof(q), "?last=%s", rt->last);
        return rp_xasprintf("%s/v2/%s/tags/list%s", base, rt->name, q);
    }
    case RP_ROUTE_PING:
    default:
        return rp_xasprintf("%s/v2/", base);
    }
}

static void start_upstream(struct rp_req *r)
{
    const struct rp_conf_registry *reg = r->route.reg;
    bool stream = r->route.kind == RP_ROUTE_BLOB && !r->head;
    struct rp_xfer_opts o = {
        .url = r->url,
        .head = r->head,
        /* Credentials only ever go to the registry's own origin, never to a redirect
         * target (CDNs get signed URLs, not our secrets). */
        .authorization = r->url_is_registry ? r->authorization : NULL,
        .accept = r->route.kind == RP_ROUTE_MANIFEST ? r->accept : NULL,
        .range = r->route.kind == RP_ROUTE_BLOB ? r->range : NULL,
        .ca_file = reg->ca_file,
        .tls_verify = reg->tls_verify,
        .timeout_ms = stream ? 0 : METADATA_TIMEOUT_MS,
        .stall_timeout_s = STALL_TIMEOUT_S,
    };
    headers_free(&r->up_h);
    rp_buf_free(&r->body);
    r->mode = BODY_NONE;
    r->up_status = 0;
    r->up_ok = false;
    free(r->up_err);
    r->up_err = NULL;
    r->state = RQ_WAIT_UPSTREAM;
    r->xfer = rp_upstream_start(r->conn->srv->up, &o, &upstream_cb, r);
    if (!r->xfer)
        upstream_error(r, 502, "UNKNOWN", "cannot start the upstream request", NULL);
}

/* --- streaming a blob from upstream to the client --- */

static const EVP_MD *digest_md(const char *digest)
{
    return strncmp(digest, "sha512:", 7) == 0 ? EVP_sha512() : EVP_sha256();
}

static bool digest_matches(const char *digest, const unsigned char *md, unsigned int mdlen)
{
    const char *hex = strchr(digest, ':');
    if (!hex || strlen(hex + 1) != (size_t)mdlen * 2)
        return false;
    hex++;
    static const char digits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < mdlen; i++)
        if (hex[2 * i] != digits[md[i] >> 4] || hex[2 * i + 1] != digits[md[i] & 15])
            return false;
    return true;
}

static int start_stream(struct rp_req *r, int status, const struct rp_xfer_headers *h)
{
    if (h->length < 0) {
        /* Without a length a truncated body would look complete to the client. */
        free(r->up_err);
        r->up_err = rp_xstrdup("upstream sent a blob without Content-Length");
        return -1;
    }
    struct rp_buf extra;
    rp_buf_init(&extra, 16384);
    rp_buf_addf(&extra, "Accept-Ranges: bytes\r\nDocker-Content-Digest: %s\r\n", r->route.ref);
    if (status == 206 && header_value_safe(h->content_range))
        rp_buf_addf(&extra, "Content-Range: %s\r\n", h->content_range);
    if (header_value_safe(h->etag))
        rp_buf_addf(&extra, "ETag: %s\r\n", h->etag);
    const char *type =
        header_value_safe(h->content_type) ? h->content_type : "application/octet-stream";
    rp_conn_write_head(r->conn, status, type, h->length, extra.data);
    rp_buf_free(&extra);
    r->mode = BODY_STREAM;
    r->state = RQ_STREAMING;
    r->stream_expected = h->length;
    r->stream_sent = 0;
    /* A whole blob is verified before its last byte leaves: a corrupt one never arrives
     * complete. A range cannot be checked and is passed as upstream sent it. */
    r->stream_verify = status == 200;
    if (r->stream_verify) {
        r->sha = EVP_MD_CTX_new();
        EVP_DigestInit_ex(r->sha, digest_md(r->route.ref), NULL);
    }
    /* The client's drain speed governs the upstream: see RP_STREAM_HIGH. */
    bufferevent_setwatermark(r->conn->bev, EV_WRITE, RP_STREAM_LOW, 0);
    return 0;
}

static long stream_data(struct rp_req *r, const char *p, size_t n)
{
    if (rp_conn_output_len(r->conn) >= RP_STREAM_HIGH) {
        r->paused = true;
        return 0;
    }
    if ((int64_t)n > r->stream_expected - r->stream_sent) {
        free(r->up_err);
        r->up_err = rp_xstrdup("upstream sent more bytes than its Content-Length");
        return -1;
    }
    if (r->stream_verify) {
        EVP_DigestUpdate(r->sha, p, n);
        if (r->stream_sent + (int64_t)n == r->stream_expected) {
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int mdlen = 0;
            EVP_DigestFinal_ex(r->sha, md, &mdlen);
            if (!digest_matches(r->route.ref, md, mdlen)) {
                free(r->up_err);
                r->up_err = rp_xstrdup("blob digest mismatch");
                return -1;
            }
        }
    }
    evbuffer_add(rp_conn_output(r->conn), p, n);
    r->stream_sent += (int64_t)n;
    r->bytes += n;
    return (long)n;
}

void rp_req_output_drained(struct rp_req *r)
{
    if (r->state == RQ_STREAMING && r->paused && r->xfer) {
        r->paused = false;
        rp_xfer_resume(r->xfer);
    }
}

/* --- upstream callbacks: record, decide the body mode, and hand over to rp_req_drive --- */

static bool is_redirect(int status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

static int up_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    struct rp_req *r = arg;
    r->up_status = status;
    headers_copy(&r->up_h, h);
    size_t cap;
    if (status == 401 && r->url_is_registry && r->auth_retries < 2) {
        r->mode = BODY_DISCARD;
        cap = RP_ERROR_BODY_MAX;
    } else if (is_redirect(status) && h->location && r->route.kind == RP_ROUTE_BLOB) {
        r->mode = BODY_DISCARD;
        cap = RP_ERROR_BODY_MAX;
    } else if ((status == 200 || status == 206) && r->route.kind == RP_ROUTE_BLOB && !r->head) {
        return start_stream(r, status, h);
    } else {
        r->mode = BODY_BUFFER;
        if (status >= 200 && status < 300)
            cap = r->route.kind == RP_ROUTE_MANIFEST ? RP_MANIFEST_MAX : RP_SMALL_BODY_MAX;
        else
            cap = RP_ERROR_BODY_MAX;
    }
    r->body_cap = cap;
    rp_buf_init(&r->body, cap);
    if (h->length > (int64_t)cap && !r->head) {
        free(r->up_err);
        r->up_err = rp_xasprintf("upstream answer of %lld bytes exceeds the %zu byte limit",
                                 (long long)h->length, cap);
        return -1;
    }
    return 0;
}

static long up_data_cb(void *arg, const char *p, size_t n)
{
    struct rp_req *r = arg;
    switch (r->mode) {
    case BODY_STREAM:
        return stream_data(r, p, n);
    case BODY_BUFFER:
    case BODY_DISCARD:
        if (rp_buf_add(&r->body, p, n) < 0) {
            if (r->mode == BODY_DISCARD)
                return (long)n; /* ignored anyway; keep the connection reusable */
            free(r->up_err);
            r->up_err = rp_xasprintf("upstream answer exceeds the %zu byte limit", r->body_cap);
            return -1;
        }
        return (long)n;
    case BODY_NONE:
    default:
        return -1;
    }
}

static void up_done_cb(void *arg, bool ok, int status, const char *err)
{
    struct rp_req *r = arg;
    r->xfer = NULL;
    r->up_ok = ok;
    if (status)
        r->up_status = status;
    if (err && !r->up_err)
        r->up_err = rp_xstrdup(err);
    if (r->state == RQ_STREAMING) {
        if (ok && r->stream_sent == r->stream_expected) {
            r->state = RQ_FINISHING;
            finish(r);
        } else {
            rp_warn("stream of %s from %s failed after %lld of %lld bytes: %s", r->route.ref,
                    r->route.reg->name, (long long)r->stream_sent, (long long)r->stream_expected,
                    r->up_err ? r->up_err : "short body");
            abort_response(r, "upstream");
        }
        return;
    }
    r->state = RQ_UPSTREAM_DONE;
    rp_req_drive(r);
}

static const struct rp_xfer_cb upstream_cb = {
    .on_headers_cb = up_headers_cb,
    .on_data_cb = up_data_cb,
    .on_done_cb = up_done_cb,
};

/* --- deciding what an ended upstream exchange means --- */

/* Scheme, host and port of a URL, for same-origin checks. */
static bool same_origin(const char *a, const char *b)
{
    char *sa = NULL, *ha = NULL, *sb = NULL, *hb = NULL;
    int pa = 0, pb = 0;
    bool same = rp_conf_split_url(a, &sa, &ha, &pa, NULL) == 0 &&
                rp_conf_split_url(b, &sb, &hb, &pb, NULL) == 0 && strcmp(sa, sb) == 0 &&
                strcmp(ha, hb) == 0 && pa == pb;
    free(sa);
    free(ha);
    free(sb);
    free(hb);
    return same;
}

/* Follows a blob redirect: resolves Location against the current URL, refuses scheme
 * downgrades, and drops credentials unless the target is the registry's own origin. */
static int follow_redirect(struct rp_req *r)
{
    const struct rp_conf_registry *reg = r->route.reg;
    if (++r->redirects > RP_REDIRECTS_MAX) {
        upstream_error(r, 502, "UNKNOWN", "too many redirects from upstream", NULL);
        return -1;
    }
    CURLU *u = curl_url();
    char *next = NULL;
    char *scheme = NULL;
    if (curl_url_set(u, CURLUPART_URL, r->url, 0) != CURLUE_OK ||
        curl_url_set(u, CURLUPART_URL, r->up_h.location, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_URL, &next, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        upstream_error(r, 502, "UNKNOWN", "upstream redirected to a malformed location", NULL);
        return -1;
    }
    curl_url_cleanup(u);
    bool https = strcmp(scheme, "https") == 0;
    bool allowed = https || (strcmp(scheme, "http") == 0 && strcmp(reg->scheme, "http") == 0 &&
                             strncmp(r->url, "http:", 5) == 0);
    curl_free(scheme);
    if (!allowed) {
        curl_free(next);
        upstream_error(r, 502, "UNKNOWN",
                       "upstream redirected to a scheme that is not allowed (https only)", NULL);
        return -1;
    }
    free(r->url);
    r->url = rp_xstrdup(next);
    curl_free(next);
    r->url_is_registry = same_origin(r->url, reg->url);
    r->state = RQ_SEND;
    return 0;
}

/* Rewrites a tags/list Link header (`</v2/NAME/tags/list?...>; rel="next"`) into the
 * proxy's namespace: the client's name for the repository, and its ns= when it used one.
 * Returns a new string, or NULL when the link is not one we understand (it is dropped). */
static char *rewrite_link(const struct rp_req *r, const char *link)
{
    const char *lt = strchr(link, '<');
    const char *gt = lt ? strchr(lt, '>') : NULL;
    if (!lt || !gt)
        return NULL;
    const char *uri = lt + 1;
    size_t ulen = (size_t)(gt - uri);
    /* Absolute links are reduced to their path: the client must come back to us. */
    const char *path = memchr(uri, '/', ulen);
    if (ulen > 8 && (strncmp(uri, "https://", 8) == 0 || strncmp(uri, "http://", 7) == 0)) {
        const char *host = strstr(uri, "//") + 2;
        path = memchr(host, '/', ulen - (size_t)(host - uri));
    }
    if (!path)
        return NULL;
    size_t plen = ulen - (size_t)(path - uri);
    char *want = rp_xasprintf("/v2/%s/tags/list", r->route.name);
    size_t wlen = strlen(want);
    bool ok = plen >= wlen && memcmp(path, want, wlen) == 0 &&
              (plen == wlen || path[wlen] == '?');
    free(want);
    if (!ok)
        return NULL;
    const char *query = path + wlen; /* "" or "?..." up to gt */
    size_t qlen = plen - wlen;
    for (size_t i = 0; i < qlen; i++)
        if (query[i] <= 0x20 || query[i] >= 0x7f || query[i] == '"' || query[i] == '<')
            return NULL;
    char *out;
    if (r->route.via_ns)
        out = rp_xasprintf("</v2/%s/tags/list%.*s%sns=%s>%s", r->route.client_name, (int)qlen,
                           query, qlen ? "&" : "?", r->route.reg->name, gt + 1);
    else
        out = rp_xasprintf("</v2/%s/tags/list%.*s>%s", r->route.client_name, (int)qlen, query,
                           gt + 1);
    if (!header_value_safe(out)) {
        free(out);
        return NULL;
    }
    return out;
}

static void digest_hex(const char *algo, const EVP_MD *md, const char *p, size_t n, char *out,
                       size_t outlen)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_Digest(p, n, d, &dlen, md, NULL);
    size_t o = (size_t)snprintf(out, outlen, "%s:", algo);
    for (unsigned int i = 0; i < dlen && o + 2 < outlen; i++)
        o += (size_t)snprintf(out + o, outlen - o, "%02x", d[i]);
}

static void answer_success(struct rp_req *r)
{
    const struct rp_xfer_headers *h = &r->up_h;
    struct rp_buf extra;
    rp_buf_init(&extra, 32768);
    const char *type = header_value_safe(h->content_type) ? h->content_type : NULL;
    int64_t length = r->head ? h->length : (int64_t)r->body.len;
    switch (r->route.kind) {
    case RP_ROUTE_MANIFEST: {
        char digest[RP_DIGEST_MAX + 1];
        if (!r->head) {
            const char *algo = r->route.ref_is_digest && strncmp(r->route.ref, "sha512:", 7) == 0
                                   ? "sha512"
                                   : "sha256";
            digest_hex(algo, strcmp(algo, "sha512") == 0 ? EVP_sha512() : EVP_sha256(),
                       r->body.data ? r->body.data : "", r->body.len, digest, sizeof(digest));
            /* A manifest asked for by digest must be that digest, whatever upstream says. */
            if (r->route.ref_is_digest && strcmp(digest, r->route.ref) != 0) {
                rp_buf_free(&extra);
                upstream_error(r, 502, "MANIFEST_INVALID",
                               "upstream sent a manifest that does not match the digest", NULL);
                return;
            }
            rp_buf_addf(&extra, "Docker-Content-Digest: %s\r\n", digest);
        } else if (r->route.ref_is_digest) {
            rp_buf_addf(&extra, "Docker-Content-Digest: %s\r\n", r->route.ref);
        } else if (h->docker_content_digest && rp_valid_digest(h->docker_content_digest,
                                                               strlen(h->docker_content_digest))) {
            rp_buf_addf(&extra, "Docker-Content-Digest: %s\r\n", h->docker_content_digest);
        }
        if (header_value_safe(h->etag))
            rp_buf_addf(&extra, "ETag: %s\r\n", h->etag);
        break;
    }
    case RP_ROUTE_BLOB: /* HEAD only: GETs stream */
        rp_buf_addf(&extra, "Accept-Ranges: bytes\r\nDocker-Content-Digest: %s\r\n", r->route.ref);
        if (!type)
            type = "application/octet-stream";
        break;
    case RP_ROUTE_TAGS:
        if (h->link) {
            char *link = rewrite_link(r, h->link);
            if (link)
                rp_buf_addf(&extra, "Link: %s\r\n", link);
            free(link);
        }
        break;
    case RP_ROUTE_REFERRERS:
        if (header_value_safe(h->oci_filters_applied))
            rp_buf_addf(&extra, "OCI-Filters-Applied: %s\r\n", h->oci_filters_applied);
        break;
    case RP_ROUTE_PING:
        break;
    }
    rp_conn_write_head(r->conn, r->up_status, type, length, extra.data);
    rp_buf_free(&extra);
    if (!r->head && r->body.len) {
        evbuffer_add(rp_conn_output(r->conn), r->body.data, r->body.len);
        r->bytes += r->body.len;
    }
    finish(r);
}

/* Upstream said no. The status is passed on honestly (never turned into 404), with the
 * upstream's own registry-format body when it sent one, else ours. */
static void answer_failure(struct rp_req *r)
{
    int status = r->up_status;
    if (status < 400 || status > 599) {
        upstream_error(r, 502, "UNKNOWN", "unexpected answer from upstream", NULL);
        return;
    }
    struct rp_buf extra;
    rp_buf_init(&extra, 1024);
    if ((status == 429 || status == 503) && header_value_safe(r->up_h.retry_after) &&
        strlen(r->up_h.retry_after) < 64)
        rp_buf_addf(&extra, "Retry-After: %s\r\n", r->up_h.retry_after);
    json_t *j = r->body.len ? json_loadb(r->body.data, r->body.len, 0, NULL) : NULL;
    bool registry_format = j && json_is_array(json_object_get(j, "errors"));
    json_decref(j);
    if (registry_format) {
        rp_conn_write_head(r->conn, status, "application/json", (int64_t)r->body.len, extra.data);
        if (!r->head) {
            evbuffer_add(rp_conn_output(r->conn), r->body.data, r->body.len);
            r->bytes += r->body.len;
        }
        rp_buf_free(&extra);
        finish(r);
        return;
    }
    char *msg = rp_xasprintf("upstream registry %s answered %d", r->route.reg->name, status);
    json_t *d = json_pack("{s:s, s:i}", "registry", r->route.reg->name, "upstream_status", status);
    char *detail = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    char *body = rp_error_body(rp_error_code_for_status(status, r->route.kind), msg, detail);
    rp_conn_write_head(r->conn, status, "application/json", (int64_t)strlen(body), extra.data);
    if (!r->head) {
        evbuffer_add(rp_conn_output(r->conn), body, strlen(body));
        r->bytes += strlen(body);
    }
    free(body);
    free(detail);
    free(msg);
    rp_buf_free(&extra);
    finish(r);
}

static void token_failure(struct rp_req *r)
{
    int e = r->token_err;
    char *msg = rp_xasprintf("cannot authenticate to %s: %s", r->route.reg->name,
                             rp_auth_strerror(e));
    switch (e) {
    case RP_AUTH_E_REJECTED:
    case RP_AUTH_E_NO_CREDENTIALS:
        upstream_error(r, 401, "UNAUTHORIZED", msg, NULL);
        break;
    case RP_AUTH_E_REALM_ERROR:
        upstream_error(r, 503, "UNAVAILABLE", msg, r->up_err);
        break;
    default:
        upstream_error(r, 502, "UNKNOWN", msg, NULL);
        break;
    }
    free(msg);
}

static void upstream_done(struct rp_req *r)
{
    int status = r->up_status;
    if (!r->up_ok) {
        if (status == 0) {
            upstream_error(r, 503, "UNAVAILABLE", "upstream registry unreachable", r->up_err);
        } else {
            upstream_error(r, 502, "UNKNOWN", "upstream answer rejected", r->up_err);
        }
        return;
    }
    if (r->mode == BODY_DISCARD && status == 401) {
        r->auth_retries++;
        int e = rp_auth_on_unauthorized(r->auth, r->scope, r->up_h.www_authenticate,
                                        r->authorization);
        if (e != RP_AUTH_OK) {
            char *msg = rp_xasprintf("upstream %s refused the request: %s", r->route.reg->name,
                                     rp_auth_strerror(e));
            upstream_error(r, 401, "UNAUTHORIZED", msg, NULL);
            free(msg);
            return;
        }
        r->state = RQ_AUTH;
        rp_req_drive(r);
        return;
    }
    if (r->mode == BODY_DISCARD && is_redirect(status)) {
        if (follow_redirect(r) == 0)
            rp_req_drive(r);
        return;
    }
    if (status >= 200 && status < 300)
        answer_success(r);
    else
        answer_failure(r);
}

void rp_req_drive(struct rp_req *r)
{
    struct rp_server *srv = r->conn->srv;
    for (;;) {
        switch (r->state) {
        case RQ_ROUTE: {
            const char *why = NULL;
            int e = rp_route_parse(srv->conf, r->conn->listen, r->target, strlen(r->target),
                                   &r->route, &why);
            if (e != RP_ROUTE_OK) {
                route_error(r, e, why);
                return;
            }
            if (r->route.kind == RP_ROUTE_PING) {
                /* Answered here: clients ping before every pull, and no upstream is
                 * needed to say that this endpoint speaks the v2 API anonymously. */
                respond(r, 200, "application/json", "{}", 2, NULL);
                return;
            }
            r->auth = srv->auths[registry_index(srv, r->route.reg)];
            r->scope = rp_auth_scope_pull(r->route.name);
            r->state = RQ_AUTH;
            break;
        }
        case RQ_AUTH: {
            rp_free_secret(r->authorization);
            r->authorization = NULL;
            if (rp_auth_prepare(r->auth, r->scope, rp_now_ms(), &r->authorization) ==
                RP_AUTH_NEED_TOKEN) {
                r->state = RQ_WAIT_TOKEN;
                r->token_err = RP_AUTH_OK;
                if (rp_tokens_wait(srv, r) == 0)
                    return; /* woken by tokens.c */
                break;      /* failed at once: token_err is set */
            }
            free(r->url);
            r->url = registry_url(r);
            r->url_is_registry = true;
            r->state = RQ_SEND;
            break;
        }
        case RQ_WAIT_TOKEN:
            if (r->token_err != RP_AUTH_OK) {
                token_failure(r);
                return;
            }
            r->state = RQ_AUTH;
            break;
        case RQ_SEND:
            start_upstream(r);
            return;
        case RQ_UPSTREAM_DONE:
            upstream_done(r);
            return;
        case RQ_WAIT_UPSTREAM:
        case RQ_STREAMING:
        case RQ_FINISHING:
        case RQ_DONE:
            return;
        }
    }
}
