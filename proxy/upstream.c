/* SPDX-License-Identifier: Apache-2.0 */
/* upstream: libcurl multi on libevent (the hiperfifo pattern: curl tells us which sockets
 * to watch through the socket callback and when to call back through the timer callback;
 * after every curl_multi_socket_action we drain curl_multi_info_read). */
#include "upstream.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "../util/util.h"
#include "http_parse.h"

#define HEADER_BYTES_MAX (64 * 1024) /* all header lines of one response */
#define HEADER_VALUE_MAX 8192

struct sockinfo {
    struct event ev;
    bool added;
};

struct rp_xfer {
    struct rp_upstream *up;
    CURL *easy;
    struct curl_slist *req_headers;
    char *post_body; /* a secret (an OAuth2 refresh token): ours, wiped at free */
    struct rp_xfer_cb cb;
    void *arg;
    struct rp_xfer_headers h;
    size_t header_bytes;
    bool in_head; /* past a response's status line, before the blank line ending its head */
    bool headers_done;
    bool te_seen;     /* the head being read has a Transfer-Encoding: its Content-Length is void */
    bool cl_conflict; /* it has Content-Length lines of different values */
    bool cancelled;
    /* Why header_cb refused the answer (a static string), for the error in place of curl's
     * "Failed writing received data to disk/application". */
    const char *refused;
    int line_status; /* of the status line being read: curl may not report it after a refusal */
    bool added;      /* in the multi handle (not while waiting for add_ev) */
    char *proxy;     /* the configured egress proxy (never credentials), for messages */
    char errbuf[CURL_ERROR_SIZE];
    TAILQ_ENTRY(rp_xfer) link;
};
TAILQ_HEAD(xfer_list, rp_xfer);

struct rp_upstream {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct xfer_list xfers;
    size_t n_active;
    int in_curl; /* depth of calls into curl: cancellation must be deferred while > 0 */
    /* Depth of the curl calls that run its callbacks (socket_action, unpause). A transfer
     * started from one of those (a request answered inside a download's header callback,
     * then the next pipelined request) cannot be added there: curl refuses with
     * CURLM_RECURSIVE_API_CALL. It is added by add_ev, right after. */
    int in_curl_call;
    struct event *add_ev;
};

static void headers_clear(struct rp_xfer_headers *h)
{
#define CLEAR(field, name)                                                                         \
    free(h->field);                                                                                \
    h->field = NULL;
    RP_XFER_HEADER_FIELDS(CLEAR)
#undef CLEAR
    h->length = -1;
    h->chunked = false;
}

static void xfer_free(struct rp_xfer *x)
{
    if (!x)
        return;
    headers_clear(&x->h);
    /* The list holds curl's copies of our header lines, an Authorization among them: wiped
     * before they go back to the allocator. */
    for (struct curl_slist *l = x->req_headers; l; l = l->next)
        rp_secure_zero(l->data, strlen(l->data));
    curl_slist_free_all(x->req_headers);
    curl_easy_cleanup(x->easy);
    rp_free_secret(x->post_body);
    free(x->proxy);
    free(x);
}

static void xfer_remove(struct rp_upstream *up, struct rp_xfer *x)
{
    if (x->added)
        curl_multi_remove_handle(up->multi, x->easy);
    TAILQ_REMOVE(&up->xfers, x, link);
    up->n_active--;
    xfer_free(x);
}

/* Transfers cancelled while curl was on the stack are removed here, once it returned. */
static void reap_cancelled(struct rp_upstream *up)
{
    if (up->in_curl)
        return;
    struct rp_xfer *x, *next;
    for (x = TAILQ_FIRST(&up->xfers); x; x = next) {
        next = TAILQ_NEXT(x, link);
        if (x->cancelled)
            xfer_remove(up, x);
    }
}

const char *rp_xfer_error_name(enum rp_xfer_error e)
{
    switch (e) {
    case RP_XFER_OK:
        return "ok";
    case RP_XFER_E_UNREACHABLE:
        return "unreachable";
    case RP_XFER_E_TLS:
        return "TLS verification failed";
    case RP_XFER_E_TLS_HANDSHAKE:
        return "TLS handshake failed";
    case RP_XFER_E_TIMEOUT:
        return "timed out";
    case RP_XFER_E_ABORTED:
        return "aborted";
    case RP_XFER_E_OTHER:
    default:
        return "transfer failed";
    }
}

static enum rp_xfer_error classify(CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return RP_XFER_OK;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
        return RP_XFER_E_UNREACHABLE;
    case CURLE_SSL_CONNECT_ERROR:
        /* No certificate was looked at: the server speaks plain HTTP ("wrong version
         * number"), reset the connection, or shares no protocol version or cipher. Said as
         * verification, it sent the operator to ca_file. */
        return RP_XFER_E_TLS_HANDSHAKE;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return RP_XFER_E_TLS;
    case CURLE_OPERATION_TIMEDOUT:
        return RP_XFER_E_TIMEOUT;
    case CURLE_WRITE_ERROR:
        return RP_XFER_E_ABORTED;
    default:
        return RP_XFER_E_OTHER;
    }
}

static void check_multi_info(struct rp_upstream *up)
{
    CURLMsg *msg;
    int left;
    /* Callbacks may cancel or start transfers; removal waits until the loop is done. */
    up->in_curl++;
    while ((msg = curl_multi_info_read(up->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURLcode rc = msg->data.result;
        struct rp_xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        /* curl takes a connection closed inside a head for the end of a whole answer (with
         * no body): it is a cut, as one inside the body is, not the registry's answer. */
        bool cut_head = rc == CURLE_OK && x->in_head && !x->headers_done;
        if (cut_head)
            rc = CURLE_RECV_ERROR;
        if (!x->cancelled && x->cb.on_done_cb) {
            char err[CURL_ERROR_SIZE + 256];
            enum rp_xfer_error xe = classify(rc);
            long connect_code = 0;
            if (rc != CURLE_OK)
                curl_easy_getinfo(x->easy, CURLINFO_HTTP_CONNECTCODE, &connect_code);
            if (connect_code != 0 && (connect_code < 200 || connect_code > 299)) {
                /* curl calls this a receive error; for an admin it is the egress proxy's
                 * policy or failure, and the registry is unreachable through it. */
                snprintf(err, sizeof(err),
                         "the egress proxy refused the tunnel (CONNECT "
                         "answered %ld)",
                         connect_code);
                xe = RP_XFER_E_UNREACHABLE;
            } else if (x->proxy &&
                       (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_PROXY) &&
                       connect_code == 0) {
                /* No tunnel answer at all: it is the proxy that could not be reached (curl
                 * names only an address). */
                snprintf(err, sizeof(err), "cannot reach the egress proxy %.160s: %s", x->proxy,
                         x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
            } else if (cut_head) {
                snprintf(err, sizeof(err), "the connection closed inside the answer's head");
            } else if (rc == CURLE_WRITE_ERROR && x->refused) {
                snprintf(err, sizeof(err), "%s", x->refused);
                if (status == 0) /* an answer arrived: not "unreachable" */
                    status = x->line_status;
                xe = RP_XFER_E_OTHER; /* upstream's answer, not our callbacks' choice */
            } else if (rc != CURLE_OK) {
                snprintf(err, sizeof(err), "%s%s%s", curl_easy_strerror(rc),
                         x->errbuf[0] ? ": " : "", x->errbuf);
            }
            if (rc != CURLE_OK)
                rp_redact_userinfo(err); /* https_proxy may hold a password */
            /* Mark it cancelled first so anything the callback does to it is a no-op. */
            x->cancelled = true;
            x->cb.on_done_cb(x->arg, xe, (int)status, rc == CURLE_OK ? NULL : err);
        }
        x->cancelled = true;
    }
    up->in_curl--;
    reap_cancelled(up);
}

static void socket_action(struct rp_upstream *up, curl_socket_t fd, int ev)
{
    int running;
    up->in_curl++;
    up->in_curl_call++;
    curl_multi_socket_action(up->multi, fd, ev, &running);
    up->in_curl_call--;
    up->in_curl--;
    check_multi_info(up);
}

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rp_upstream *up = arg;
    int ev = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    socket_action(up, fd, ev);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    socket_action(arg, CURL_SOCKET_TIMEOUT, 0);
}

static int curl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    struct rp_upstream *up = userp;
    struct sockinfo *si = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (si) {
            if (si->added)
                event_del(&si->ev);
            free(si);
            curl_multi_assign(up->multi, s, NULL);
        }
        return 0;
    }
    if (!si) {
        si = rp_xcalloc(1, sizeof(*si));
        curl_multi_assign(up->multi, s, si);
    } else if (si->added) {
        event_del(&si->ev);
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    event_assign(&si->ev, up->base, s, kind, sock_event_cb, up);
    event_add(&si->ev, NULL);
    si->added = true;
    return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct rp_upstream *up = userp;
    if (timeout_ms < 0) {
        evtimer_del(up->timer);
        return 0;
    }
    /* Even a zero timeout goes through the loop: curl forbids calling
     * curl_multi_socket_action from inside this callback. */
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(up->timer, &tv);
    return 0;
}

static char **header_slot(struct rp_xfer_headers *h, const char *name, size_t len)
{
    static const struct {
        const char *name;
        size_t off;
    } known[] = {
#define KNOWN(field, name) {name, offsetof(struct rp_xfer_headers, field)},
        RP_XFER_HEADER_FIELDS(KNOWN)
#undef KNOWN
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (rp_strieq_n(name, len, known[i].name))
            return (char **)((char *)h + known[i].off);
    return NULL;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userp)
{
    struct rp_xfer *x = userp;
    size_t n = size * nitems;
    if (x->cancelled)
        return 0;
    x->header_bytes += n;
    if (x->header_bytes > HEADER_BYTES_MAX) {
        x->refused = "the answer's header lines exceed 64 KiB";
        return 0; /* aborts: CURLE_WRITE_ERROR */
    }
    if (!x->in_head) {
        /* A response's first line (the first, or the next after a 1xx): forget what a 1xx
         * said. The byte budget counts every response: endless 1xx are bounded too. */
        headers_clear(&x->h);
        x->te_seen = false;
        x->cl_conflict = false;
        x->in_head = true;
        const char *sp = memchr(buf, ' ', n);
        x->line_status = 0;
        if (sp && (size_t)(buf + n - sp) > 3)
            for (int i = 1; i <= 3 && sp[i] >= '0' && sp[i] <= '9'; i++)
                x->line_status = x->line_status * 10 + (sp[i] - '0');
        return n;
    }
    size_t len = n;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len == 0) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        x->in_head = false; /* after a 1xx, the next line starts a response */
        if (status >= 100 && status < 200)
            return n;
        x->headers_done = true;
        if (x->cl_conflict && !x->te_seen) {
            /* Which one frames the body is anybody's guess (curl takes the last, we took the
             * first): an unrecoverable error for a proxy (RFC 9112 6.3). */
            x->refused = "the answer has Content-Length lines of different values";
            return 0;
        }
        /* With a Transfer-Encoding, a Content-Length is to be ignored (RFC 9112 6.3), and
         * curl reads a chunked answer by its chunks. Taken as the size, it made a right
         * blob fail its size check, and told owners a length the body does not have. */
        if (x->h.content_length && !x->te_seen) {
            uint64_t v;
            if (rp_parse_u64(x->h.content_length, strlen(x->h.content_length), &v) == 0 &&
                v <= INT64_MAX)
                x->h.length = (int64_t)v;
        }
        if (x->cb.on_headers_cb && x->cb.on_headers_cb(x->arg, (int)status, &x->h) < 0)
            return 0;
        return n;
    }
    const char *colon = memchr(buf, ':', len);
    if (!colon)
        return n;
    if (rp_strieq_n(buf, (size_t)(colon - buf), "transfer-encoding")) {
        /* The last coding of the last such line is the framing (RFC 9112 6.1). */
        x->h.chunked = rp_http_te_chunked(colon + 1, (size_t)(buf + len - (colon + 1)));
        x->te_seen = true;
        return n;
    }
    char **slot = header_slot(&x->h, buf, (size_t)(colon - buf));
    if (!slot)
        return n;
    const char *v = colon + 1;
    const char *end = buf + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if ((size_t)(end - v) > HEADER_VALUE_MAX) {
        x->refused = "a header value in the answer exceeds 8 KiB";
        return 0;
    }
    if (*slot) {
        if (slot == &x->h.content_length &&
            (strlen(*slot) != (size_t)(end - v) || memcmp(*slot, v, (size_t)(end - v)) != 0))
            x->cl_conflict = true;
        /* Repeated headers: the first wins, except WWW-Authenticate, Link and Allow which
         * may be split across lines and are joined as a list (RFC 9110 5.3): a 405's Allow
         * over several lines names every method of them. */
        if (slot == &x->h.www_authenticate || slot == &x->h.link || slot == &x->h.allow) {
            char *joined = rp_xasprintf("%s, %.*s", *slot, (int)(end - v), v);
            free(*slot);
            *slot = joined;
        }
        return n;
    }
    *slot = rp_xstrndup(v, (size_t)(end - v));
    return n;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userp)
{
    struct rp_xfer *x = userp;
    size_t n = size * nmemb;
    if (x->cancelled || !x->cb.on_data_cb)
        return 0;
    long r = x->cb.on_data_cb(x->arg, ptr, n);
    if (r == 0)
        return CURL_WRITEFUNC_PAUSE;
    if (r < 0)
        return 0;
    return n;
}

/* Adds the transfers started inside curl's callbacks (see in_curl_call). One curl refuses
 * now ends as any failed transfer does, through its done callback. */
static void add_event_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_upstream *up = arg;
    struct rp_xfer *x;
    up->in_curl++;
    TAILQ_FOREACH(x, &up->xfers, link)
    {
        if (x->added || x->cancelled)
            continue;
        if (curl_multi_add_handle(up->multi, x->easy) == CURLM_OK) {
            x->added = true;
            continue;
        }
        x->cancelled = true;
        if (x->cb.on_done_cb)
            x->cb.on_done_cb(x->arg, RP_XFER_E_OTHER, 0, "curl refused the transfer");
    }
    up->in_curl--;
    reap_cancelled(up);
}

struct rp_upstream *rp_upstream_new(struct event_base *base)
{
    static bool global_done;
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return NULL;
        global_done = true;
    }
    struct rp_upstream *up = rp_xcalloc(1, sizeof(*up));
    up->base = base;
    TAILQ_INIT(&up->xfers);
    up->multi = curl_multi_init();
    if (!up->multi) {
        free(up);
        return NULL;
    }
    up->timer = evtimer_new(base, timer_event_cb, up);
    up->add_ev = event_new(base, -1, 0, add_event_cb, up);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, 64L);
    return up;
}

void rp_upstream_free(struct rp_upstream *up)
{
    if (!up)
        return;
    struct rp_xfer *x;
    while ((x = TAILQ_FIRST(&up->xfers)))
        xfer_remove(up, x);
    curl_multi_cleanup(up->multi);
    event_free(up->timer);
    event_free(up->add_ev);
    free(up);
}

/* curl_slist_append keeps a copy of the line, which holds the secret until xfer_free wipes
 * it; ours is wiped at once. */
static struct curl_slist *add_header(struct curl_slist *l, const char *name, const char *value)
{
    char *line = rp_xasprintf("%s: %s", name, value);
    struct curl_slist *r = curl_slist_append(l, line);
    rp_free_secret(line);
    if (!r) {
        rp_error("upstream: out of memory building headers");
        abort();
    }
    return r;
}

struct rp_xfer *rp_upstream_start(struct rp_upstream *up, const struct rp_xfer_opts *o,
                                  const struct rp_xfer_cb *cb, void *arg)
{
    struct rp_xfer *x = rp_xcalloc(1, sizeof(*x));
    x->up = up;
    x->cb = *cb;
    x->arg = arg;
    x->h.length = -1;
    x->easy = curl_easy_init();
    if (!x->easy) {
        free(x);
        return NULL;
    }
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    if (curl_easy_setopt(e, CURLOPT_URL, o->url) != CURLE_OK)
        goto fail;
    /* Only the web's schemes; redirects are the caller's decision, never curl's. */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* HTTP/1.1 keeps pausing one transfer from stalling others on a shared connection. */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "regproxy/" RP_VERSION);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 64L * 1024);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Through an egress proxy the header callback must see the registry's answer, not the
     * proxy's "200 Connection established". */
    curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    /* Through an egress proxy, always a CONNECT tunnel, http upstreams too: a forwarded
     * request would hand the proxy our Authorization header, and its own 401 would be taken
     * for the registry's challenge. */
    curl_easy_setopt(e, CURLOPT_HTTPPROXYTUNNEL, 1L);
    if (o->head)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    if (o->post_body) {
        /* Our copy, not COPYPOSTFIELDS: curl would free its copy of the refresh token
         * unwiped. POSTFIELDS reads ours, which outlives the easy handle. */
        x->post_body = rp_xstrdup(o->post_body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(x->post_body));
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->post_body);
    }
    if (o->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
    if (o->proxy) {
        x->proxy = rp_xstrdup(o->proxy);
        /* The configured proxy is the whole truth: an inherited no_proxy does not apply. */
        curl_easy_setopt(e, CURLOPT_PROXY, o->proxy);
        curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    }
    if (!o->tls_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 15000L);
    if (o->timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
    if (o->stall_timeout_s > 0) {
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, RP_XFER_STALL_BYTES_PER_S);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, o->stall_timeout_s);
    }
    /* No Accept-Encoding: a registry must hand us the stored bytes, or digests and sizes
     * would not match (a gzipped config blob breaks both). */
    if (o->authorization)
        x->req_headers = add_header(x->req_headers, "Authorization", o->authorization);
    if (o->accept)
        x->req_headers = add_header(x->req_headers, "Accept", o->accept);
    if (o->range)
        x->req_headers = add_header(x->req_headers, "Range", o->range);
    if (x->req_headers)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->req_headers);
    if (up->in_curl_call) {
        TAILQ_INSERT_TAIL(&up->xfers, x, link);
        up->n_active++;
        event_active(up->add_ev, EV_TIMEOUT, 1);
        return x;
    }
    if (curl_multi_add_handle(up->multi, e) != CURLM_OK)
        goto fail;
    x->added = true;
    TAILQ_INSERT_TAIL(&up->xfers, x, link);
    up->n_active++;
    return x;
fail:
    xfer_free(x);
    return NULL;
}

void rp_xfer_resume(struct rp_xfer *x)
{
    if (!x || x->cancelled)
        return;
    struct rp_upstream *up = x->up;
    up->in_curl++;
    up->in_curl_call++;
    CURLcode rc = curl_easy_pause(x->easy, CURLPAUSE_CONT);
    up->in_curl_call--;
    if (rc != CURLE_OK && !x->cancelled && x->cb.on_done_cb) {
        /* curl 7.88 hands the data held while paused to write_cb inside curl_easy_pause,
         * and a refusal there (a list past its cap) only makes this call fail: the transfer
         * went on, and the next data met the same refusal again, its owner's error set
         * twice (one leaked) and the end delayed by as long as upstream took to send more.
         * It ends here, as a write error of ours ends in check_multi_info. */
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        x->cancelled = true;
        x->cb.on_done_cb(x->arg, classify(rc), (int)status, curl_easy_strerror(rc));
    }
    up->in_curl--;
    reap_cancelled(up);
    /* Unpausing may have finished the transfer or changed its timers. */
    check_multi_info(up);
}

void rp_xfer_cancel(struct rp_xfer *x)
{
    if (!x)
        return;
    x->cancelled = true;
    x->cb.on_headers_cb = NULL;
    x->cb.on_data_cb = NULL;
    x->cb.on_done_cb = NULL;
    reap_cancelled(x->up);
}
