/* SPDX-License-Identifier: Apache-2.0 */
/* server: listeners, connections and HTTP/1.1 framing toward clients. Requests are parsed
 * by http_parse.c and handed to request.c; this file owns sockets and keep-alive. */
#include "proxy.h"
#include "acl.h"
#include "offline.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#define HEAD_DEADLINE_S 10 /* from a request's first byte to its complete head (slowloris) */
#define SEND_TIMEOUT_S 120 /* a client that takes nothing for this long is gone */
#define MAX_REQUESTS_PER_CONN 10000
#define LINGER_S 2 /* draining a rejected client before closing */

/* What a listener's configuration turns into; rebuilt on reload and swapped whole. */
struct listen_settings {
    SSL_CTX *tls;
    unsigned char tls_files[32]; /* sha256 of the tls_cert and tls_key tls was built from */
    struct rp_cidr *allow;       /* parsed conf->allow */
    size_t n_allow;
    struct rp_htpasswd *htpasswd;
};

struct rp_listen_ctx {
    struct rp_server *srv;
    const struct rp_conf_listen *conf;
    struct listen_settings set;
    size_t n_conns;                    /* open connections accepted here (max_connections) */
    struct rp_listener *li;            /* its listener (li->ev is NULL once closed) */
    struct event *resume_ev;           /* accepting again after accept() failed */
    struct rp_log_ration tls_fail_log; /* failed TLS handshakes */
    /* The internal listener's (rp_server_listen_internal): every request must carry
     * "Authorization: Bearer KEY". A secret; NULL on configured listeners. */
    char *key;
};

static const char *status_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 416:
        return "Range Not Satisfiable";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

struct evbuffer *rp_conn_output(struct rp_conn *c)
{
    return c->out;
}

size_t rp_conn_output_len(struct rp_conn *c)
{
    return evbuffer_get_length(c->out) + (size_t)c->file_left;
}

/* The response is done with, or taken back: the next one is framed by its own head. */
static void body_unframed(struct rp_conn *c)
{
    c->body_chunked = false;
    c->body_to_close = false;
    c->body_framing = 0;
}

bool rp_conn_take_back(struct rp_conn *c, size_t len)
{
    /* Bytes leave from the front: while the output still holds the len bytes last queued,
     * none of them has left, even behind earlier answers (pipelined requests) still
     * queued. evbuffer cuts only from the front, so those are set aside and put back; the
     * piece split is a memory chain (a head is never added to a file segment's), whole
     * chains just move. On TLS, the front may be sealed in a record OpenSSL holds for a
     * full socket: libevent offers it the same bytes again (the same count from the front,
     * which the set-aside keeps), and the record goes out whatever they are. So the bytes
     * taken back must all have been added after that record was sealed. */
    len += c->body_framing;
    size_t have = evbuffer_get_length(c->out);
    if (len == 0 || c->file_left || have < len)
        return false;
    if (c->tls_record_pending && c->tls_added - c->tls_sealed_at < len)
        return false;
    if (have == len) {
        if (evbuffer_drain(c->out, len) != 0)
            return false;
        body_unframed(c);
        return true;
    }
    size_t before = have - len;
    if (before > INT_MAX)
        return false;
    struct evbuffer *front = evbuffer_new();
    if (!front)
        return false;
    uint64_t added = c->tls_added; /* the front goes back: not bytes added after a seal */
    bool ok = evbuffer_remove_buffer(c->out, front, before) == (int)before &&
              evbuffer_drain(c->out, len) == 0;
    if (!ok)
        evbuffer_prepend_buffer(c->out, front);
    else
        ok = evbuffer_add_buffer(c->out, front) == 0;
    c->tls_added = added;
    evbuffer_free(front);
    if (ok)
        body_unframed(c);
    return ok;
}

/* Input buffers are held only while bytes wait to be parsed: ten thousand idle keep-alive
 * connections hold none, and a busy server cycles through the same few without malloc. */
#define IN_POOL_MAX 64

static void in_take(struct rp_conn *c)
{
    struct rp_server *srv = c->srv;
    if (c->in)
        return;
    if (srv->in_pool) {
        c->in = srv->in_pool;
        memcpy(&srv->in_pool, c->in, sizeof(char *));
        srv->n_in_pool--;
    } else {
        c->in = rp_xmalloc(RP_CONN_IN_SIZE);
    }
}

static void in_release(struct rp_conn *c)
{
    struct rp_server *srv = c->srv;
    if (!c->in)
        return;
    if (srv->n_in_pool < IN_POOL_MAX) {
        memcpy(c->in, &srv->in_pool, sizeof(char *));
        srv->in_pool = c->in;
        srv->n_in_pool++;
    } else {
        free(c->in);
    }
    c->in = NULL;
    c->in_len = 0;
}

static void in_pool_free(struct rp_server *srv)
{
    while (srv->in_pool) {
        char *b = srv->in_pool;
        memcpy(&srv->in_pool, b, sizeof(char *));
        free(b);
    }
    srv->n_in_pool = 0;
}

/* Drops the first n input bytes (a parsed head) and reads on if reading had paused. */
static void in_consume(struct rp_conn *c, size_t n)
{
    c->in_len -= n;
    if (c->in_len)
        memmove(c->in, c->in + n, c->in_len);
    else
        in_release(c);
    if (c->read_paused) {
        c->read_paused = false;
        event_add(c->rev, NULL);
    }
}

/* TLS: moves what OpenSSL decrypted into `in`, as much as fits. */
static void in_pull_tls(struct rp_conn *c)
{
    struct evbuffer *src = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(src);
    if (avail == 0 || c->in_len == RP_CONN_IN_SIZE)
        return;
    in_take(c);
    size_t room = RP_CONN_IN_SIZE - c->in_len;
    int n = evbuffer_remove(src, c->in + c->in_len, avail < room ? avail : room);
    if (n > 0)
        c->in_len += (size_t)n;
}

/* Appends to a head being built; the caller has sized `head` for the worst case. */
static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}
#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_u64(char *p, uint64_t v)
{
    return p + rp_fmt_u64(p, v);
}

/* Every response head is built here, by copying rather than printf: it is on the path of
 * every cache hit. Into `small` when it fits (returned), else into a heap buffer the caller
 * frees. */
static char *build_head(struct rp_conn *c, int status, const char *content_type,
                        int64_t content_length, const char *extra, char *small, size_t cap,
                        size_t *len)
{
    const char *reason = status_reason(status);
    size_t reason_len = strlen(reason);
    size_t type_len = content_type ? strlen(content_type) : 0;
    size_t extra_len = extra ? strlen(extra) : 0;
    size_t need = 256 + reason_len + type_len + extra_len + (c->req ? sizeof(c->req->id) : 0);
    char *head = need <= cap ? small : rp_xmalloc(need);
    char *p = PUT_LIT(head, "HTTP/1.1 ");
    p = put_u64(p, (uint64_t)(status > 0 && status < 1000 ? status : 500));
    *p++ = ' ';
    p = put(p, reason, reason_len);
    p = PUT_LIT(p, "\r\nDocker-Distribution-API-Version: registry/2.0\r\n");
    p = put(p, rp_server_date_line(c->srv), sizeof("Date: \r\n") - 1 + RP_HTTP_DATE_LEN);
    if (c->req) {
        p = PUT_LIT(p, "X-Request-Id: ");
        p = put(p, c->req->id, strlen(c->req->id));
        p = PUT_LIT(p, "\r\n");
    }
    if (content_type) {
        p = PUT_LIT(p, "Content-Type: ");
        p = put(p, content_type, type_len);
        p = PUT_LIT(p, "\r\n");
    }
    /* A 304 has no content, and a Content-Length there would have to be the 200's; a 204
     * must not have one (RFC 9110 8.6): none. */
    if (content_length >= 0 && status != 304 && status != 204) {
        p = PUT_LIT(p, "Content-Length: ");
        p = put_u64(p, (uint64_t)content_length);
        p = PUT_LIT(p, "\r\n");
    } else if (content_length < 0 && c->body_chunked) {
        p = PUT_LIT(p, "Transfer-Encoding: chunked\r\n");
    }
    if (extra)
        p = put(p, extra, extra_len);
    if (!c->keep_alive || c->body_to_close)
        p = PUT_LIT(p, "Connection: close\r\n");
    else if (c->http10)
        p = PUT_LIT(p, "Connection: keep-alive\r\n");
    p = PUT_LIT(p, "\r\n");
    *len = (size_t)(p - head);
    if (c->req)
        c->req->status = status;
    return head;
}

#define HEAD_SMALL 1024

void rp_conn_write_head(struct rp_conn *c, int status, const char *content_type,
                        int64_t content_length, const char *extra)
{
    char small[HEAD_SMALL];
    size_t len;
    char *head =
        build_head(c, status, content_type, content_length, extra, small, sizeof(small), &len);
    evbuffer_add(c->out, head, len);
    if (c->req)
        c->req->head_len = len;
    if (head != small)
        free(head);
}

void rp_conn_write_head_unsized(struct rp_conn *c, int status, const char *content_type,
                                const char *extra)
{
    /* RFC 9112 6.3: chunked is HTTP/1.1's; an HTTP/1.0 client reads to the close. */
    body_unframed(c);
    if (c->http10)
        c->body_to_close = true;
    else
        c->body_chunked = true;
    rp_conn_write_head(c, status, content_type, -1, extra);
}

void rp_conn_body_add(struct rp_conn *c, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (!c->body_chunked) {
        evbuffer_add(c->out, p, n);
        return;
    }
    char size[24];
    int k = snprintf(size, sizeof(size), "%zx\r\n", n);
    evbuffer_add(c->out, size, (size_t)k);
    evbuffer_add(c->out, p, n);
    evbuffer_add(c->out, "\r\n", 2);
    c->body_framing += (size_t)k + 2;
}

void rp_conn_body_end(struct rp_conn *c)
{
    if (!c->body_chunked)
        return;
    evbuffer_add(c->out, "0\r\n\r\n", 5);
    c->body_framing += 5;
}

/* Writes head and body straight to the socket when nothing is queued before them (see
 * rp_conn_write_response); returns the bytes the socket took. An error is left for the
 * queued write to meet again, where it closes the connection: the request is still being
 * answered here. */
static size_t write_now(struct rp_conn *c, const char *head, size_t hlen, const void *body,
                        size_t blen)
{
    if (c->bev || !c->keep_alive || c->writing || c->write_queued || c->in_len ||
        evbuffer_get_length(c->out) || c->file_left)
        return 0;
    struct iovec iov[2] = {{(void *)head, hlen}, {(void *)body, blen}};
    ssize_t n = writev(c->fd, iov, blen ? 2 : 1);
    return n > 0 ? (size_t)n : 0;
}

static void conn_queue_write(struct rp_conn *c);

/* A TLS connection's file body (a cached blob, or what a fill reader is owed) is read into
 * its output a piece at a time, as OpenSSL drains it. A file segment in a bufferevent_openssl
 * output is mapped instead, whole: a page fault every few pages, and the mapped size
 * resident while it goes out (150 MB for a cached 100 MB blob; 135 MB for six readers of a
 * 100 MB download, whose rest is queued at once when it verifies), at 1.4-1.5x nginx's CPU
 * per GiB; reading it costs 0.9x. */
#define TLS_FILE_PIECE (64 * 1024)
#define TLS_FILE_LOW TLS_FILE_PIECE        /* refilled when drained to this */
#define TLS_FILE_HIGH (2 * TLS_FILE_PIECE) /* to at least this */

/* Reads the file body on into out; -1 when the file ends early or cannot be read. */
static int tls_file_refill(struct rp_conn *c)
{
    while (c->file_left && evbuffer_get_length(c->out) < TLS_FILE_HIGH) {
        size_t want = c->file_left < TLS_FILE_PIECE ? (size_t)c->file_left : TLS_FILE_PIECE;
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(c->out, (ev_ssize_t)want, &v, 1) < 1)
            return -1;
        ssize_t n = pread(c->file_fd, v.iov_base, want, (off_t)c->file_off);
        if (n <= 0) {
            if (n == 0)
                errno = EIO; /* the file is shorter than it was said to be */
            return -1;
        }
        v.iov_len = (size_t)n;
        evbuffer_commit_space(c->out, &v, 1);
        c->file_off += (uint64_t)n;
        c->file_left -= (uint64_t)n;
    }
    if (c->file_left == 0 && c->file_fd >= 0) {
        close(c->file_fd);
        c->file_fd = -1;
    }
    return 0;
}

/* Makes fd (taken) a TLS connection's file body. */
static int tls_file_start(struct rp_conn *c, int fd, uint64_t off, uint64_t len)
{
    c->file_fd = fd;
    c->file_off = off;
    c->file_left = len;
    bufferevent_setwatermark(c->bev, EV_WRITE, TLS_FILE_LOW, 0);
    return tls_file_refill(c);
}

int rp_conn_queue_file(struct rp_conn *c, int fd, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    if (!c->bev) {
        int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dup_fd < 0)
            return -1;
        /* The segment owns its descriptor: the reader may go away at any time. */
        struct evbuffer_file_segment *seg =
            evbuffer_file_segment_new(dup_fd, (ev_off_t)off, (ev_off_t)len, EVBUF_FS_CLOSE_ON_FREE);
        if (!seg) {
            close(dup_fd);
            return -1;
        }
        int rc = evbuffer_add_file_segment(c->out, seg, 0, (ev_off_t)len);
        evbuffer_file_segment_free(seg);
        return rc;
    }
    if (c->file_left) {
        if (c->file_off + c->file_left != off)
            return -1; /* not the rest of the file being sent */
        c->file_left += len;
        return 0;
    }
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    return dup_fd < 0 ? -1 : tls_file_start(c, dup_fd, off, len);
}

int rp_conn_write_file(struct rp_conn *c, int status, const char *content_type, const char *extra,
                       int fd, uint64_t off, uint64_t len)
{
    if (c->file_left) { /* cannot happen: requests wait for the file body (conn_try_parse) */
        close(fd);
        return -1;
    }
    if (c->bev) {
        rp_conn_write_head(c, status, content_type, (int64_t)len, extra);
        if (len == 0) {
            close(fd);
            return 0;
        }
        return tls_file_start(c, fd, off, len); /* -1: the head is out, the caller cuts */
    }
    char small[HEAD_SMALL];
    size_t hlen;
    char *head =
        build_head(c, status, content_type, (int64_t)len, extra, small, sizeof(small), &hlen);
    size_t done = write_now(c, head, hlen, NULL, 0);
    if (done < hlen)
        evbuffer_add(c->out, head + done, hlen - done);
    if (head != small)
        free(head);
    c->file_fd = fd;
    c->file_off = off;
    c->file_left = len;
    conn_queue_write(c);
    return 0;
}

/* The output's evbuffer allocates a chain for every response once the previous one has
 * drained (libevent frees drained chains). A response known whole is therefore written
 * straight from the stack and the body's own memory when nothing is queued before it and no
 * pipelined request waits behind it (those are answered together, in one writev, through
 * the evbuffer): a cache hit then allocates nothing. What the socket does not take is queued
 * as usual. A connection about to close keeps the queued path, which lingers after the
 * flush so unread input cannot turn the close into a reset. */
void rp_conn_write_response(struct rp_conn *c, int status, const char *content_type,
                            const char *extra, const void *body, size_t len, bool send_body)
{
    char small[HEAD_SMALL];
    size_t hlen;
    char *head =
        build_head(c, status, content_type, (int64_t)len, extra, small, sizeof(small), &hlen);
    size_t blen = send_body ? len : 0;
    size_t done = write_now(c, head, hlen, body, blen);
    if (done < hlen)
        evbuffer_add(c->out, head + done, hlen - done);
    size_t bdone = done > hlen ? done - hlen : 0;
    if (bdone < blen)
        evbuffer_add(c->out, (const char *)body + bdone, blen - bdone);
    if (head != small)
        free(head);
}

struct rp_auth *rp_server_auth(struct rp_server *srv, const struct rp_conf_registry *reg)
{
    return srv->auths[reg - srv->conf->registries];
}

/* `regproxy check` runs fetches on a server of its own, which keeps no such record. */
void rp_server_upstream_seen(struct rp_server *srv, const struct rp_conf_registry *reg,
                             bool answered, int64_t sent_ms)
{
    if (!srv->reach)
        return;
    struct rp_reach *at = &srv->reach[reg - srv->conf->registries];
    if (answered) {
        at->silent_ms = 0;
        at->answered_ms = rp_now_ms();
    } else if (sent_ms >= at->answered_ms) {
        at->silent_ms = rp_now_ms(); /* not sent before the last answer, timing out only now */
    }
}

bool rp_server_registry_silent(const struct rp_server *srv, const struct rp_conf_registry *reg)
{
    int64_t at = srv->reach ? srv->reach[reg - srv->conf->registries].silent_ms : 0;
    return at && rp_now_ms() - at < RP_UNREACHABLE_HOLD_MS;
}

const char *rp_server_date_line(struct rp_server *srv)
{
    /* Per thread: the offline tools may serve from threads of their own. */
    static _Thread_local int64_t at = -1;
    static _Thread_local char line[sizeof("Date: \r\n") + RP_HTTP_DATE_LEN] = "Date: ";
    struct timeval tv;
    if (!srv->base || event_base_gettimeofday_cached(srv->base, &tv) != 0)
        gettimeofday(&tv, NULL);
    if ((int64_t)tv.tv_sec != at) {
        at = (int64_t)tv.tv_sec;
        rp_fmt_http_date(line + 6, at);
        memcpy(line + 6 + RP_HTTP_DATE_LEN, "\r\n", 3);
    }
    return line;
}

void rp_server_maybe_pin(struct rp_server *srv, const struct rp_conf_registry *reg,
                         const char *repo, const char *digest)
{
    if (rp_pin_pattern_match(srv->conf, reg->name, repo))
        rp_cache_pin(srv->cache, digest);
}

void rp_conn_stream_mode(struct rp_conn *c)
{
    c->write_low = RP_STREAM_LOW;
    if (c->bev)
        bufferevent_setwatermark(c->bev, EV_WRITE, RP_STREAM_LOW, 0);
}

/* Waiting for a request: idle until its first byte, then a hard deadline for the whole
 * head, so a client trickling one byte a second is cut off (an inactivity timeout would
 * be reset by every byte). */
static void conn_wait_request(struct rp_conn *c, bool head_started)
{
    int64_t idle_ms = c->listen->idle_timeout_ms;
    struct timeval tv = {head_started ? HEAD_DEADLINE_S : idle_ms / 1000,
                         head_started ? 0 : (idle_ms % 1000) * 1000};
    c->head_started = head_started;
    evtimer_add(c->wait_ev, &tv);
}

static void conn_close_after_flush(struct rp_conn *c);

/* Between requests. Idle time counts from when the last response is all with the kernel: a
 * blob still going to a slow client is not idle (a client that stops taking it meets the
 * send timeout), so until then the timer waits for conn_write_done. */
static void conn_idle(struct rp_conn *c)
{
    if (c->head_started || rp_conn_output_len(c) != 0)
        return;
    if (c->srv->stopping) /* draining: a connection is done once it has nothing to send */
        conn_close_after_flush(c);
    else
        conn_wait_request(c, false);
}

static void conn_free(struct rp_conn *c);
struct rp_http_request_head;

/* A TLS connection whose handshake is not done yet. */
static bool conn_handshaking(const struct rp_conn *c)
{
    SSL *ssl = c->bev ? bufferevent_openssl_get_ssl(c->bev) : NULL;
    return ssl && !SSL_is_init_finished(ssl);
}
static void conn_reject(struct rp_conn *c, const struct rp_http_request_head *h, int status,
                        const char *code, const char *message);

static void wait_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_conn *c = arg;
    if (c->req || c->close_after || c->auth_wait.job)
        return;
    if (conn_handshaking(c)) {
        /* Counted, not logged: scanners connect and say nothing by the thousand. */
        rp_metrics_tls_fail(&c->srv->metrics, c->listener, RP_TLS_FAIL_TIMEOUT);
        rp_debug("conn %s: TLS handshake not completed in %d s", c->peer, HEAD_DEADLINE_S);
        conn_free(c);
        return;
    }
    if (c->head_started) {
        conn_reject(c, NULL, 408, "UNSUPPORTED", "request head not received in time");
        return;
    }
    rp_debug("conn %s: idle timeout", c->peer);
    conn_free(c);
}

static void drain_check(struct rp_server *srv);

static void conn_free(struct rp_conn *c)
{
    struct rp_server *srv = c->srv;
    if (c->lctx)
        c->lctx->n_conns--;
    if (c->over_limit)
        c->srv->n_refusing--;
    if (c->wait_ev)
        event_free(c->wait_ev);
    if (c->linger_ev)
        event_free(c->linger_ev);
    if (c->req) {
        rp_req_free(c->req);
        c->req = NULL;
    }
    rp_htpasswd_cancel(&c->auth_wait);
    TAILQ_REMOVE(&c->srv->conns, c, link);
    c->srv->n_conns--;
    if (c->write_queued)
        TAILQ_REMOVE(&c->srv->write_queue, c, write_link);
    in_release(c);
    if (c->file_fd >= 0)
        close(c->file_fd);
    if (c->body_to_close) {
        /* A body that runs to the close and did not end (rp_conn_request_done clears this
         * once it has): a FIN would look like its end, whoever closes here (an upstream cut,
         * the client's send timeout, drain_timeout or a second signal at shutdown). A reset
         * is all that tells the client this one was cut. */
        struct linger l = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    if (c->bev) {
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
        /* SSL_free drops the session from the cache of a connection not shut down, as if
         * it had broken: a keep-alive connection the client closed, or idle_timeout ended,
         * could not be resumed by session ID. Nothing is sent (a cut answer's close must
         * not look like its end); a fatal alert has dropped the session already. */
        if (SSL_is_init_finished(ssl)) {
            /* The client's close_notify is answered with ours (TLS 1.2 asks for it; clients
             * that wait for it report "unexpected eof" without it), unless a body that runs
             * to the close was cut. */
            if ((SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN) && !c->body_to_close) {
                ERR_clear_error();
                SSL_shutdown(ssl);
                ERR_clear_error();
            }
            SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
        }
        /* libevent may free the SSL, and its BIO, after c is gone. */
        BIO_set_callback_arg(SSL_get_wbio(ssl), NULL);
        bufferevent_free(c->bev); /* closes fd, frees out */
    } else {
        event_free(c->rev);
        event_free(c->wev);
        evbuffer_free(c->out);
        evutil_closesocket(c->fd);
    }
    if (c->in_write_cb || c->parsing)
        c->freed = true; /* the write callback or the parse loop frees it on return */
    else
        free(c);
    drain_check(srv);
}

static void linger_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_free(arg);
}

static void conn_linger(struct rp_conn *c)
{
    /* TLS: close_notify tells the client the close is the answer's end, not a cut (strict
     * clients reading to the close, rustls ones say, report "unexpected eof" without it). */
    SSL *ssl = c->bev ? bufferevent_openssl_get_ssl(c->bev) : NULL;
    if (ssl && SSL_is_init_finished(ssl)) {
        ERR_clear_error();
        SSL_shutdown(ssl);
        ERR_clear_error();
    }
    if (c->linger_ev) {
        /* A refused connection's timer was set up front (refuse_connection): its answer
         * is out now, so the client hears the end at once. */
        shutdown(c->fd, SHUT_WR);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    in_release(c);
    if (c->bev) {
        bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
        bufferevent_enable(c->bev, EV_READ);
    } else if (c->read_paused) {
        c->read_paused = false;
        event_add(c->rev, NULL);
    }
    c->linger_ev = evtimer_new(c->srv->base, linger_timeout_cb, c);
    struct timeval tv = {LINGER_S, 0};
    evtimer_add(c->linger_ev, &tv);
}

/* Closes after the queued response: once it is flushed we shut our side down and drain
 * whatever the client still sends for a moment, because closing with unread input makes the
 * kernel send a reset that can destroy the response before the client reads it. */
static void conn_close_after_flush(struct rp_conn *c)
{
    c->close_after = true;
    if (rp_conn_output_len(c) == 0)
        conn_linger(c);
}

/* Answers and logs a request refused before request.c. h is its head when that parsed (then
 * a HEAD gets no body, and the log names method and target, which the parser checked: a
 * token and visible ASCII), else NULL. The id goes to the client as X-Request-Id, as every
 * answer's does, so a refusal can be found in the log. */
static void conn_refuse(struct rp_conn *c, const struct rp_http_request_head *h, int status,
                        const char *code, const char *message, const char *extra,
                        const char *reason)
{
    char id[32], method[17] = "-", path[1024] = "-", hdrs[512];
    rp_request_id(id, sizeof(id));
    if (h) {
        snprintf(method, sizeof(method), "%.*s", (int)(h->method_len > 16 ? 16 : h->method_len),
                 h->method_str);
        size_t n = h->target_len < sizeof(path) - 1 ? h->target_len : sizeof(path) - 1;
        snprintf(path, sizeof(path), "%.*s", (int)n, h->target);
    }
    snprintf(hdrs, sizeof(hdrs), "X-Request-Id: %s\r\n%s", id, extra ? extra : "");
    char *body = rp_error_body(code, message, NULL);
    bool with_body = !(h && h->method == RP_HTTP_HEAD);
    size_t body_len = strlen(body);
    rp_conn_write_response(c, status, "application/json", hdrs, body, body_len, with_body);
    free(body);
    rp_metrics_request(&c->srv->metrics, -1, status, NULL, 0);
    struct rp_access a = {.id = id,
                          .method = method,
                          .path = path,
                          .registry = "-",
                          .cache = "-",
                          .peer = c->peer,
                          .status = status,
                          .bytes = with_body ? body_len : 0,
                          .reason = reason};
    rp_access_log(&a);
}

/* Refuses a request and closes (h as for conn_refuse). */
static void conn_reject(struct rp_conn *c, const struct rp_http_request_head *h, int status,
                        const char *code, const char *message)
{
    c->keep_alive = false;
    conn_refuse(c, h, status, code, message, NULL, message);
    conn_close_after_flush(c);
}

static void conn_try_parse(struct rp_conn *c);

/* 401 with a Basic challenge to the head h (n bytes of c->in); the connection stays usable
 * for the retry with credentials. */
static void conn_challenge(struct rp_conn *c, const struct rp_http_request_head *h, size_t n)
{
    conn_refuse(c, h, 401, "UNAUTHORIZED", "authentication required",
                "WWW-Authenticate: Basic realm=\"regproxy\"\r\n", "no valid client credentials");
    in_consume(c, n); /* h points into c->in: used up above */
    /* This head is done: its deadline must not fire on the idle connection after (it
     * answered a 408 nobody asked for, read as the next request's answer). */
    evtimer_del(c->wait_ev);
    c->head_started = false;
    if (!c->keep_alive) {
        conn_close_after_flush(c);
        return;
    }
    conn_idle(c);
    conn_try_parse(c);
}

void rp_conn_request_done(struct rp_conn *c, bool abort)
{
    struct rp_req *r = c->req;
    c->req = NULL;
    rp_req_free(r);
    if (abort) {
        conn_free(c); /* a body to the close, cut: reset there */
        return;
    }
    bool to_close = c->body_to_close;
    body_unframed(c);
    if (!c->keep_alive || to_close || c->srv->stopping) {
        /* Even with nothing left to send: closing with unread input (requests pipelined
         * behind a Connection: close) makes the kernel reset the connection, which can
         * destroy the answer's tail before the client reads it. */
        conn_close_after_flush(c);
        return;
    }
    c->write_low = 0;
    if (c->bev)
        bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    conn_idle(c);
    conn_try_parse(c);
}

static void conn_parse_one(struct rp_conn *c);

/* The credentials of the head waiting in the input were hashed: parse it again, which now
 * finds the verdict. */
static void conn_hashed(struct rp_htpasswd_waiter *w)
{
    struct rp_conn *c = (struct rp_conn *)((char *)w - offsetof(struct rp_conn, auth_wait));
    conn_try_parse(c);
}

/* Takes the requests waiting in the input, one at a time. One answered at once (a cached
 * manifest, a ping) ends inside conn_parse_one, and rp_conn_request_done asks for the next:
 * called from there, this only notes it for the loop below. Taking it right there would
 * nest a call chain per pipelined request, and the 500-odd smallest requests the input
 * buffer holds would grow the stack by over a megabyte. */
static void conn_try_parse(struct rp_conn *c)
{
    if (c->parsing) {
        c->parse_again = true;
        return;
    }
    c->parsing = true;
    do {
        c->parse_again = false;
        conn_parse_one(c);
    } while (c->parse_again && !c->freed);
    c->parsing = false;
    if (c->freed && !c->in_write_cb)
        free(c);
}

/* Whether the head carries "Authorization: Bearer KEY": the internal listener is on
 * 127.0.0.1, where any local user can connect, and it pulls with the configuration's
 * credentials under no allow list or client accounts. Only the process that made it knows
 * KEY. */
static bool internal_key_ok(const char *key, const struct rp_http_request_head *h)
{
    const struct rp_http_header *ah = rp_http_find_header(h, "authorization");
    size_t klen = strlen(key);
    return ah && ah->value_len == 7 + klen && rp_strieq_n(ah->value, 7, "Bearer ") &&
           CRYPTO_memcmp(ah->value + 7, key, klen) == 0;
}

static void conn_parse_one(struct rp_conn *c)
{
    if (c->bev)
        in_pull_tls(c);
    if (c->req || c->auth_wait.job || c->close_after || c->in_len == 0 || c->file_left)
        return;
    /* A client that pipelines requests and reads nothing would have every answer queued
     * (a cached manifest is answered at once): the next request waits until what it is owed
     * has gone out (conn_write_done parses again), and its input, bounded, waits too. */
    if (rp_conn_output_len(c) > RP_STREAM_HIGH)
        return;
    if (!c->head_started)
        conn_wait_request(c, true);
    struct rp_http_request_head h;
    int n = rp_http_parse_request(c->in, c->in_len, RP_TARGET_MAX, &h);
    switch (n) {
    case RP_HTTP_NEED_MORE:
        return;
    case RP_HTTP_E_HEADERS_TOO_LARGE:
        conn_reject(c, NULL, 431, "UNSUPPORTED", "request header fields too large");
        return;
    case RP_HTTP_E_URI_TOO_LONG:
        conn_reject(c, NULL, 414, "NAME_INVALID", "request target too long");
        return;
    case RP_HTTP_E_VERSION:
        conn_reject(c, NULL, 505, "UNSUPPORTED", "only HTTP/1.0 and HTTP/1.1 are spoken here");
        return;
    case RP_HTTP_E_FRAMING:
        conn_reject(c, NULL, 400, "UNSUPPORTED", "conflicting or malformed message framing");
        return;
    case RP_HTTP_E_TARGET:
        conn_reject(c, NULL, 400, "UNSUPPORTED",
                    "only origin-form and http(s) absolute-form request targets are accepted");
        return;
    default:
        if (n < 0) {
            conn_reject(c, NULL, 400, "UNSUPPORTED", "malformed request");
            return;
        }
    }
    /* Keep-alive is bounded too: the last allowed request is answered with close. */
    c->keep_alive = h.keep_alive && ++c->n_requests < MAX_REQUESTS_PER_CONN && !c->srv->stopping;
    c->http10 = h.minor == 0;
    /* A pull proxy takes no uploads: a push (PUT of a manifest, PATCH of a blob, with
     * their bodies) is told 405 as a read-only registry tells it; any other body is
     * refused. Either way the connection closes, so a body's bytes can never be read as a
     * second request. */
    if (h.method != RP_HTTP_GET && h.method != RP_HTTP_HEAD) {
        c->keep_alive = false;
        conn_refuse(c, &h, 405, "UNSUPPORTED", "only GET and HEAD are supported",
                    "Allow: GET, HEAD\r\n", "method not allowed");
        conn_close_after_flush(c);
        return;
    }
    if (h.has_body) {
        conn_reject(c, &h, 400, "UNSUPPORTED", "request bodies are not accepted");
        return;
    }
    if (!rp_acl_allows(c->lctx->set.allow, c->lctx->set.n_allow,
                       (const struct sockaddr *)&c->peer_sa)) {
        conn_reject(c, &h, 403, "DENIED", "this network may not pull from this proxy");
        return;
    }
    if (c->lctx->key && !internal_key_ok(c->lctx->key, &h)) {
        conn_reject(c, &h, 403, "DENIED", "this listener serves the mirror's own requests only");
        return;
    }
    struct rp_htpasswd *accounts = rp_conn_htpasswd(c);
    if (accounts) {
        const struct rp_http_header *ah = rp_http_find_header(&h, "authorization");
        char *value = ah ? rp_xstrndup(ah->value, ah->value_len) : NULL;
        struct rp_htpasswd_job *job = NULL;
        enum rp_htpasswd_verdict v =
            value ? rp_htpasswd_begin(accounts, value, c->peer, &c->auth_wait, &job)
                  : RP_HTPASSWD_FAIL;
        rp_free_secret(value);
        if (v == RP_HTPASSWD_WAIT) {
            /* conn_hashed takes this head again: it must not count twice. */
            c->n_requests--;
            if (job)
                rp_syncer_submit(c->srv->hasher, rp_htpasswd_job_work, rp_htpasswd_job_done, job);
            return;
        }
        if (v != RP_HTPASSWD_OK) {
            /* Registry clients log in when challenged, then send Basic on every request.
             * Credentials that failed end the connection: guesses pipelined behind them are
             * not each worth a hash (see rp_htpasswd_check). */
            if (ah)
                c->keep_alive = false;
            conn_challenge(c, &h, (size_t)n);
            return;
        }
    }
    c->req = rp_req_new(c, &h);
    in_consume(c, (size_t)n);
    evtimer_del(c->wait_ev);
    c->head_started = false;
    rp_req_drive(c->req);
}

static bool retriable(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

/* EOF, error or send timeout: the client is gone; whatever it was waiting for is moot. */
static void conn_gone(struct rp_conn *c)
{
    if (c->req && !c->close_after)
        rp_req_cut(c->req, rp_conn_output_len(c), "client");
    conn_free(c);
}

/* Output drained to the write watermark. */
static void conn_write_done(struct rp_conn *c)
{
    if (c->close_after && rp_conn_output_len(c) == 0) {
        conn_linger(c);
        return;
    }
    if (c->req) {
        rp_req_output_drained(c->req);
        return;
    }
    conn_idle(c);
    conn_try_parse(c); /* requests that waited for a backlog of answers to go */
}

static void conn_readable_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct rp_conn *c = arg;
    if (c->close_after) { /* lingering: whatever still comes is dropped */
        char sink[4096];
        ssize_t n = read(fd, sink, sizeof(sink));
        if (n == 0 || (n < 0 && !retriable(errno)))
            conn_free(c);
        return;
    }
    in_take(c);
    ssize_t n = read(fd, c->in + c->in_len, RP_CONN_IN_SIZE - c->in_len);
    if (n > 0) {
        c->in_len += (size_t)n;
        if (c->in_len == RP_CONN_IN_SIZE) { /* pipelined requests wait here */
            event_del(c->rev);
            c->read_paused = true;
        }
        conn_try_parse(c);
        return;
    }
    if (c->in_len == 0)
        in_release(c);
    if (n < 0 && retriable(errno))
        return;
    if (n < 0)
        rp_debug("conn %s: %s", c->peer, strerror(errno));
    if (n == 0 && c->req && c->req->state == RQ_SENDING) {
        /* A half-close (shutdown(SHUT_WR) after the request, as `nc -N` does) with the
         * answer queued whole, a cached blob going out: it is still the client's, as nginx
         * and Go deliver a cached or static answer, and the connection closes after it
         * (requests pipelined behind are dropped). Any other answer (from upstream, or
         * from a download not yet published) is cut, as nginx's 499 cuts a proxied one. A
         * client gone altogether shows at the next write. */
        event_del(c->rev);
        c->read_paused = true; /* the close after it reads the EOF again (conn_linger) */
        c->keep_alive = false;
        return;
    }
    conn_gone(c);
}

/* Lets epoll say when the socket takes more (it took less than we had, or a stream is
 * refilling), and gives up on a client that takes nothing for SEND_TIMEOUT_S. */
static void conn_poll_write(struct rp_conn *c)
{
    struct timeval tv = {SEND_TIMEOUT_S, 0};
    event_add(c->wev, &tv);
    c->writing = true;
}

/* Called whenever something is added to a plain connection's output: the write is queued to
 * run later in this loop iteration, after whatever else the request adds, so head and body
 * leave in one writev without waiting for epoll to say the socket is writable (it almost
 * always is). Inside the write callback (a stream refilling its output) the next write
 * waits for epoll instead, so one fast client cannot starve the others. */
static void conn_queue_write(struct rp_conn *c)
{
    if (c->writing || c->write_queued)
        return;
    if (c->in_write_cb) {
        conn_poll_write(c);
        return;
    }
    struct rp_server *srv = c->srv;
    if (TAILQ_EMPTY(&srv->write_queue))
        event_active(srv->write_ev, EV_WRITE, 1);
    TAILQ_INSERT_TAIL(&srv->write_queue, c, write_link);
    c->write_queued = true;
}

static void conn_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    if (info->n_added)
        conn_queue_write(arg);
}

/* One sendfile moves at most this much. A call holds the socket's lock throughout, and the
 * ACKs that arrive meanwhile wait in its backlog, to be processed (and to push out the next
 * segments) only when the call ends; on loopback an uncapped call ran for tens of MiB. At
 * 256 KiB a single client got 5-8 % more MB/s for 5-8 % less CPU per GiB (bench/run.py
 * --only blob, 1 GiB cap against 64 KiB..512 KiB, 2026-12-01: 128-256 KiB best, 64 KiB no
 * better than uncapped). */
#define SENDFILE_CHUNK (256u * 1024)

/* What the next sendfile asks for. */
static size_t file_piece(const struct rp_conn *c)
{
    return c->file_left < SENDFILE_CHUNK ? (size_t)c->file_left : SENDFILE_CHUNK;
}

/* Sends from the file body; <= 0 as write(2). */
static ssize_t conn_send_file(struct rp_conn *c)
{
    off_t off = (off_t)c->file_off;
    size_t want = file_piece(c);
    ssize_t n = sendfile(c->fd, c->file_fd, &off, want);
    if (n > 0) {
        c->file_off += (uint64_t)n;
        c->file_left -= (uint64_t)n;
    } else if (n == 0) {
        errno = EIO; /* the file is shorter than it was said to be */
        n = -1;
    }
    if (c->file_left == 0) {
        close(c->file_fd);
        c->file_fd = -1;
    }
    return n;
}

/* Head, then up to 2 MiB of file, then yield to the other connections. */
#define WRITES_PER_CALLBACK 9

static void conn_write(struct rp_conn *c)
{
    /* Writes on while the kernel takes whole chains (head, then a file segment), then the
     * file body; a piece taken in part means the socket is full, and asking again would
     * only get EAGAIN. */
    bool file_done = false;
    for (int i = 0; i < WRITES_PER_CALLBACK && rp_conn_output_len(c); i++) {
        bool file = evbuffer_get_length(c->out) == 0;
        size_t first = file ? file_piece(c) : evbuffer_get_contiguous_space(c->out);
        ssize_t n = file ? conn_send_file(c) : evbuffer_write(c->out, c->fd);
        if (n < 0 && !retriable(errno)) {
            rp_debug("conn %s: %s", c->peer, strerror(errno));
            conn_gone(c);
            return;
        }
        file_done = file && c->file_left == 0;
        if (n <= 0 || (size_t)n < first)
            break;
    }
    size_t left = rp_conn_output_len(c);
    if (left && !c->writing) {
        conn_poll_write(c);
    } else if (!left && c->writing) {
        event_del(c->wev);
        c->writing = false;
    }
    if (left > c->write_low)
        return;
    c->in_write_cb = true;
    conn_write_done(c);
    /* Pipelined requests waited for the file body to go. */
    if (file_done && !c->freed)
        conn_try_parse(c);
    c->in_write_cb = false;
    if (c->freed && !c->parsing)
        free(c);
}

/* The socket takes more, or it took nothing for SEND_TIMEOUT_S. */
static void conn_writable_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct rp_conn *c = arg;
    if (what & EV_TIMEOUT) {
        rp_info("conn %s: client took nothing for %d s; closing", c->peer, SEND_TIMEOUT_S);
        conn_gone(c);
        return;
    }
    conn_write(c);
}

static void write_queue_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_server *srv = arg;
    struct rp_conn *c;
    while ((c = TAILQ_FIRST(&srv->write_queue))) {
        TAILQ_REMOVE(&srv->write_queue, c, write_link);
        c->write_queued = false;
        conn_write(c);
    }
}

/* Watches the TLS socket's writes for rp_conn_take_back: after OpenSSL's write of a record
 * fell short, the record is pending until a later write completes it, and what it sealed
 * was in `out` by then (libevent drains only after SSL_write returns). */
static long tls_write_watch(BIO *b, int oper, const char *argp, size_t len, int argi, long argl,
                            int ret, size_t *processed)
{
    (void)argp;
    (void)argi;
    (void)argl;
    struct rp_conn *c = (struct rp_conn *)BIO_get_callback_arg(b);
    if (c && oper == (BIO_CB_WRITE | BIO_CB_RETURN)) {
        c->tls_record_pending = ret <= 0 || !processed || *processed < len;
        if (c->tls_record_pending)
            c->tls_sealed_at = c->tls_added;
    }
    return ret;
}

static void tls_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    ((struct rp_conn *)arg)->tls_added += info->n_added;
}

static void tls_read_cb(struct bufferevent *bev, void *arg)
{
    struct rp_conn *c = arg;
    if (c->close_after) {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    conn_try_parse(c);
}

static void tls_write_cb(struct bufferevent *bev, void *arg)
{
    struct rp_conn *c = arg;
    if (c->file_left) {
        if (tls_file_refill(c) < 0) {
            rp_warn("conn %s: cannot read the blob being sent: %s", c->peer, strerror(errno));
            conn_gone(c);
            return;
        }
        if (c->file_left)
            return; /* more of the file next time */
        /* All of it is queued: back to the request's own watermark (a fill reader is fed
         * at it; a cached blob's request ends when its output is gone). */
        bufferevent_setwatermark(bev, EV_WRITE, c->write_low, 0);
        if (evbuffer_get_length(c->out) > c->write_low)
            return;
    }
    conn_write_done(c);
}

/* Plain HTTP sent to a TLS listener (an http:// mirror or endpoint, curl without https)
 * is told so, as Go's servers tell it (docker-registry: 400 "Client sent an HTTP request to
 * an HTTPS server."); it was reset, which clients report as "connection reset by peer".
 * OpenSSL read only the first bytes: the rest of the request is read and dropped before the
 * close, which would otherwise reset the connection and lose the answer. */
static void tls_answer_plain_http(struct rp_conn *c)
{
    static const char message[] = "Client sent an HTTP request to an HTTPS server.";
    char id[32], head[512];
    rp_request_id(id, sizeof(id));
    char *body = rp_error_body("UNSUPPORTED", message, NULL);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 400 Bad Request\r\nDocker-Distribution-API-Version: registry/2.0\r\n"
                     "%sX-Request-Id: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     rp_server_date_line(c->srv), id, strlen(body));
    size_t body_len = strlen(body);
    struct iovec iov[2] = {{head, (size_t)n}, {body, body_len}};
    ssize_t w = writev(c->fd, iov, 2);
    if (w > 0) /* the socket's buffer is empty: it takes it all */
        shutdown(c->fd, SHUT_WR);
    free(body);
    /* The access line counts the body bytes that left, as for every refusal. */
    size_t sent = w > n ? (size_t)(w - n) : 0;
    /* What has arrived, at most a request head's worth: a client that keeps sending is
     * not read for longer than that on the loop. */
    char sink[4096];
    for (int i = 0; i < RP_CONN_IN_SIZE / (int)sizeof(sink) + 1; i++)
        if (read(c->fd, sink, sizeof(sink)) <= 0)
            break;
    rp_metrics_request(&c->srv->metrics, -1, 400, NULL, 0);
    struct rp_access a = {.id = id,
                          .method = "-",
                          .path = "-",
                          .registry = "-",
                          .cache = "-",
                          .peer = c->peer,
                          .status = 400,
                          .bytes = sent < body_len ? sent : body_len,
                          .reason = "plain HTTP sent to a TLS listener"};
    rp_access_log(&a);
}

/* The OpenSSL error that ended a connection, or 0 when none did (a hang-up or a reset).
 * libevent keeps the first three, giving back the latest first, beside SSL_get_error's
 * code (SSL_ERROR_SSL, SSL_ERROR_SYSCALL: no library) and the system's errno: the SSL
 * library's earliest names the cause. */
static unsigned long tls_error(struct bufferevent *bev)
{
    unsigned long e = 0, other = 0, x;
    while ((x = bufferevent_get_openssl_error(bev))) {
        int lib = ERR_GET_LIB(x);
        if (lib == ERR_LIB_SSL)
            e = x;
        else if (lib != 0 && lib != ERR_LIB_SYS)
            other = x;
    }
    return e ? e : other;
}

/* Why a handshake failed, from tls_error's answer. */
static enum rp_tls_fail tls_fail_reason(unsigned long e)
{
    if (!e)
        return RP_TLS_FAIL_EOF;
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return RP_TLS_FAIL_OTHER;
    int r = ERR_GET_REASON(e);
    switch (r) {
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
        return RP_TLS_FAIL_UNKNOWN_CA;
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
        return RP_TLS_FAIL_BAD_CERTIFICATE;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        return RP_TLS_FAIL_PROTOCOL_VERSION;
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
        return RP_TLS_FAIL_NO_SHARED_CIPHER;
    case SSL_R_HTTP_REQUEST:
        return RP_TLS_FAIL_HTTP_REQUEST;
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING /* OpenSSL 3 */
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return RP_TLS_FAIL_EOF;
#endif
    }
    /* An alert received is its description plus SSL_AD_REASON_OFFSET (ssl.h). */
    if (r > SSL_AD_REASON_OFFSET && r < SSL_AD_REASON_OFFSET + 256)
        return RP_TLS_FAIL_ALERT_OTHER;
    return RP_TLS_FAIL_OTHER;
}

/* A handshake that failed on a TLS listener is counted by reason. An operator whose nodes
 * do not trust tls_cert's issuer heard nothing of it, only the nodes' pulls failing: it is
 * logged at info in their words, with the same rationing as refusals at max_connections
 * (per listener: the first, then a line a second at most, counting those in between).
 * A hang-up is only counted: load balancers' TCP health checks connect and close, and
 * plain HTTP has its access-log line already. */
static void tls_handshake_failed(struct rp_conn *c, unsigned long e)
{
    struct rp_server *srv = c->srv;
    enum rp_tls_fail why = tls_fail_reason(e);
    rp_metrics_tls_fail(&srv->metrics, c->listener, why);
    if (why == RP_TLS_FAIL_EOF || why == RP_TLS_FAIL_HTTP_REQUEST) {
        rp_debug("conn %s: TLS handshake not completed (%s)", c->peer,
                 rp_metrics_tls_fail_name(why));
        return;
    }
    if (c->listener >= srv->n_listeners)
        return;
    struct rp_listen_ctx *ctx = &srv->lctx[c->listener];
    char more[80];
    if (!rp_log_ration(&ctx->tls_fail_log, "failed handshakes on it", more, sizeof(more)))
        return;
    const char *cert = c->listen->tls_cert ? c->listen->tls_cert : "tls_cert";
    switch (why) {
    case RP_TLS_FAIL_UNKNOWN_CA:
        rp_info("conn %s: TLS handshake on %s failed: the client does not trust the issuer of "
                "%s (alert unknown_ca): give clients the CA that signed it%s",
                c->peer, c->listen->addr, cert, more);
        break;
    case RP_TLS_FAIL_BAD_CERTIFICATE:
        /* Go's crypto/tls (containerd, CRI-O, podman, skopeo, docker) sends this one for any
         * certificate it does not accept, an unknown issuer included. */
        rp_info("conn %s: TLS handshake on %s failed: the client rejected %s (alert "
                "bad_certificate; Go clients send it when they lack the issuing CA, when the "
                "name they dialed is not in its subjectAltName, or when it has expired)%s",
                c->peer, c->listen->addr, cert, more);
        break;
    case RP_TLS_FAIL_ALERT_OTHER:
        rp_info("conn %s: TLS handshake on %s failed: the client ended it with alert %s%s", c->peer,
                c->listen->addr,
                SSL_alert_desc_string_long(ERR_GET_REASON(e) - SSL_AD_REASON_OFFSET), more);
        break;
    case RP_TLS_FAIL_PROTOCOL_VERSION:
        rp_info("conn %s: TLS handshake on %s failed: no TLS version in common (the proxy takes "
                "TLS 1.2 and 1.3; the client offered older ones)%s",
                c->peer, c->listen->addr, more);
        break;
    case RP_TLS_FAIL_NO_SHARED_CIPHER:
        rp_info("conn %s: TLS handshake on %s failed: no cipher suite in common (TLS 1.2 takes "
                "ECDHE with AES-GCM or ChaCha20 only)%s",
                c->peer, c->listen->addr, more);
        break;
    default: {
        const char *detail = ERR_reason_error_string(e);
        rp_info("conn %s: TLS handshake on %s failed: %s (a client speaking something other "
                "than TLS, or a scanner)%s",
                c->peer, c->listen->addr, detail ? detail : "no detail", more);
        break;
    }
    }
}

static void tls_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct rp_conn *c = arg;
    if (what == BEV_EVENT_CONNECTED) {
        /* TLS handshake done: the handshake deadline gives way to idle_timeout, unless
         * the request head has begun (its own deadline runs then). */
        if (!c->head_started && !c->req && !c->close_after && !c->auth_wait.job)
            conn_wait_request(c, false);
        return;
    }
    bool handshaking = conn_handshaking(c);
    if (what & BEV_EVENT_TIMEOUT) {
        rp_info("conn %s: client took nothing for %d s; closing", c->peer, SEND_TIMEOUT_S);
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
        unsigned long e = tls_error(bev);
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST)
            tls_answer_plain_http(c);
        else if (what & BEV_EVENT_ERROR)
            rp_debug("conn %s: %s", c->peer, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        if (handshaking)
            tls_handshake_failed(c, e);
    }
    conn_gone(c);
}

/* The listener callback needs the server, the listener's config and its TLS context. */
static void settings_free(struct listen_settings *st)
{
    /* Connections keep their own reference to an SSL_CTX through their SSL objects. */
    if (st->tls)
        SSL_CTX_free(st->tls);
    free(st->allow);
    rp_htpasswd_free(st->htpasswd);
    memset(st, 0, sizeof(*st));
}

static SSL_CTX *tls_context(const struct rp_conf_listen *l);
static void tls_warn_validity(const struct rp_conf_listen *l, SSL_CTX *ctx);

/* sha256 of the contents of tls_cert, then tls_key (each length-prefixed): what an SSL_CTX
 * was built from. Contents, not mtimes: a Kubernetes secret volume swaps a symlink to files
 * whose times say nothing. -1 when either cannot be read (tls_context then says why). */
static int tls_files_digest(const struct rp_conf_listen *l, unsigned char out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 ? 0 : -1;
    const char *paths[2] = {l->tls_cert, l->tls_key};
    for (size_t i = 0; i < 2 && rc == 0; i++) {
        FILE *f = fopen(paths[i], "rb");
        if (!f) {
            rc = -1;
            break;
        }
        unsigned char buf[8192];
        uint64_t len = 0;
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
            EVP_DigestUpdate(md, buf, n);
            len += n;
        }
        if (ferror(f))
            rc = -1;
        fclose(f);
        EVP_DigestUpdate(md, &len, sizeof(len));
    }
    unsigned int dlen = 0;
    if (rc == 0 && (EVP_DigestFinal_ex(md, out, &dlen) != 1 || dlen != 32))
        rc = -1;
    EVP_MD_CTX_free(md);
    return rc;
}

/* `prev`: the listener's settings before a reload, or NULL. Its SSL_CTX is kept when
 * tls_cert and tls_key hold what it was built from: a new one would have new session
 * ticket keys and an empty session cache, and every client would lose TLS session
 * resumption at each reload (a credential file rotated, a SIGHUP). */
static int settings_load(const struct rp_conf_listen *l, struct listen_settings *st,
                         const struct listen_settings *prev)
{
    memset(st, 0, sizeof(*st));
    if (l->tls_cert) {
        bool digested = tls_files_digest(l, st->tls_files) == 0;
        if (digested && prev && prev->tls &&
            memcmp(prev->tls_files, st->tls_files, sizeof(st->tls_files)) == 0 &&
            SSL_CTX_up_ref(prev->tls) == 1) {
            st->tls = prev->tls;
            tls_warn_validity(l, st->tls);
        } else {
            st->tls = tls_context(l);
            if (!digested) /* never matches: the next reload builds a new context */
                memset(st->tls_files, 0, sizeof(st->tls_files));
        }
        if (!st->tls)
            goto fail;
    }
    if (l->n_allow) {
        st->allow = rp_xcalloc(l->n_allow, sizeof(*st->allow));
        for (size_t i = 0; i < l->n_allow; i++) {
            if (rp_acl_parse_cidr(l->allow[i], &st->allow[i]) != 0) {
                rp_error("listen %s: allow '%s' is not a network (host bits set?)", l->addr,
                         l->allow[i]);
                goto fail;
            }
        }
        st->n_allow = l->n_allow;
    }
    if (l->htpasswd) {
        char err[512];
        st->htpasswd = rp_htpasswd_load(l->htpasswd, err, sizeof(err));
        if (!st->htpasswd) {
            rp_error("listen %s: htpasswd %s", l->addr, err);
            goto fail;
        }
        const char *w;
        for (size_t i = 0; (w = rp_htpasswd_warning(st->htpasswd, i)); i++)
            rp_warn("listen %s: htpasswd %s", l->addr, w);
    }
    return 0;
fail:
    settings_free(st);
    return -1;
}

int rp_server_reload_listeners(struct rp_server *srv, const struct rp_conf *fresh)
{
    struct listen_settings *tmp = rp_xcalloc(srv->n_listeners + 1, sizeof(*tmp));
    int rc = -1;
    for (size_t i = 0; i < srv->n_listeners; i++)
        if (settings_load(&fresh->listens[i], &tmp[i], &srv->lctx[i].set) != 0)
            goto out;
    for (size_t i = 0; i < srv->n_listeners; i++) {
        struct listen_settings old = srv->lctx[i].set;
        srv->lctx[i].set = tmp[i];
        tmp[i] = old;
    }
    rc = 0;
out:
    for (size_t i = 0; i < srv->n_listeners; i++)
        settings_free(&tmp[i]);
    free(tmp);
    return rc;
}

int rp_server_check_listeners(const struct rp_conf *conf)
{
    int rc = 0;
    for (size_t i = 0; i < conf->n_listens; i++) {
        struct listen_settings st;
        if (settings_load(&conf->listens[i], &st, NULL) != 0)
            rc = -1;
        else
            settings_free(&st);
    }
    return rc;
}

struct rp_htpasswd *rp_conn_htpasswd(const struct rp_conn *c)
{
    return c->lctx->set.htpasswd;
}

static void peer_name(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%u", ip, ntohs(sin->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%u", ip, ntohs(sin6->sin6_port));
    } else {
        snprintf(out, outlen, "unix");
    }
}

/* A connection refused at accept (past max_connections, or from outside `allow`) is still
 * told why: it gets a small error answer and the same brief lingering close as any refused
 * request (closing with its request unread would reset the connection and lose the answer).
 * It holds no max_connections slot; a second, small budget bounds those refusals, and beyond
 * it the connection is simply closed. */
#define REFUSING_MAX 256

static struct rp_conn *conn_new(struct rp_listen_ctx *ctx, evutil_socket_t fd, const char *peer);

/* Returns the length of the body queued, or -1 when the connection was closed unanswered
 * (past REFUSING_MAX, or out of memory). */
static ssize_t answer_at_accept(struct rp_listen_ctx *ctx, evutil_socket_t fd, const char *peer,
                                const char *status_line, const char *extra_headers,
                                const char *code, const char *message)
{
    if (ctx->srv->n_refusing >= REFUSING_MAX) {
        evutil_closesocket(fd);
        return -1;
    }
    struct rp_conn *c = conn_new(ctx, fd, peer);
    if (!c)
        return -1;
    c->over_limit = true;
    ctx->srv->n_refusing++;
    struct evbuffer *out = rp_conn_output(c);
    char *body = rp_error_body(code, message, NULL);
    size_t body_len = strlen(body);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %s\r\nDocker-Distribution-API-Version: registry/2.0\r\n%s"
                        "Content-Type: application/json\r\n%s"
                        "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                        status_line, rp_server_date_line(ctx->srv), extra_headers, body_len, body);
    free(body);
    conn_close_after_flush(c);
    /* A TLS client that never starts its handshake never takes the answer, and would hold
     * one of the REFUSING_MAX slots for good: it gets the linger time, then is closed. */
    if (!c->linger_ev) {
        c->linger_ev = evtimer_new(c->srv->base, linger_timeout_cb, c);
        struct timeval tv = {LINGER_S, 0};
        evtimer_add(c->linger_ev, &tv);
    }
    return (ssize_t)body_len;
}

/* A herd past max_connections would write a line per refused connection: rationed
 * (rp_log_ration; the metric counts every one). */
static void refuse_connection(struct rp_listen_ctx *ctx, evutil_socket_t fd, const char *peer)
{
    struct rp_server *srv = ctx->srv;
    srv->metrics.connections_refused++;
    char more[64];
    if (rp_log_ration(&srv->refused_log, "refused", more, sizeof(more)))
        rp_warn("conn %s: refused, %zu connections open on %s (max_connections %llu)%s", peer,
                ctx->n_conns, ctx->conf->addr, (unsigned long long)ctx->conf->max_connections,
                more);
    answer_at_accept(ctx, fd, peer, "503 Service Unavailable", "Retry-After: 1\r\n", "UNAVAILABLE",
                     "too many connections, retry");
}

static struct rp_conn *conn_new(struct rp_listen_ctx *ctx, evutil_socket_t fd, const char *peer)
{
    struct rp_server *srv = ctx->srv;
    struct rp_conn *c = rp_xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->listen = ctx->conf;
    c->listener = (size_t)(ctx - srv->lctx);
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    c->fd = fd;
    c->file_fd = -1;
    c->auth_wait.done = conn_hashed;
    if (ctx->set.tls) {
        int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
        SSL *ssl = SSL_new(ctx->set.tls);
        c->bev = ssl ? bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      opts)
                     : NULL;
        if (!c->bev) {
            if (ssl)
                SSL_free(ssl);
            evutil_closesocket(fd);
            free(c);
            return NULL;
        }
        c->out = bufferevent_get_output(c->bev);
        BIO *wbio = SSL_get_wbio(ssl);
        BIO_set_callback_ex(wbio, tls_write_watch);
        BIO_set_callback_arg(wbio, (char *)c);
        if (!evbuffer_add_cb(c->out, tls_out_cb, c)) {
            BIO_set_callback_arg(wbio, NULL);
            bufferevent_free(c->bev);
            free(c);
            return NULL;
        }
        bufferevent_setcb(c->bev, tls_read_cb, tls_write_cb, tls_event_cb, c);
        /* Stop reading ahead once a full head is buffered: pipelined requests wait there. */
        bufferevent_setwatermark(c->bev, EV_READ, 0, RP_CONN_IN_SIZE);
        struct timeval send_timeout = {SEND_TIMEOUT_S, 0};
        bufferevent_set_timeouts(c->bev, NULL, &send_timeout);
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    } else {
        c->rev = event_new(srv->base, fd, EV_READ | EV_PERSIST, conn_readable_cb, c);
        c->wev = event_new(srv->base, fd, EV_WRITE | EV_PERSIST, conn_writable_cb, c);
        c->out = evbuffer_new();
        /* DRAINS_TO_FD: file segments (cached blobs, fills) go out with sendfile rather
         * than being mapped and copied. */
        if (!c->rev || !c->wev || !c->out || !evbuffer_add_cb(c->out, conn_out_cb, c) ||
            evbuffer_set_flags(c->out, EVBUFFER_FLAG_DRAINS_TO_FD) != 0) {
            if (c->rev)
                event_free(c->rev);
            if (c->wev)
                event_free(c->wev);
            if (c->out)
                evbuffer_free(c->out);
            evutil_closesocket(fd);
            free(c);
            return NULL;
        }
        event_add(c->rev, NULL);
    }
    c->wait_ev = evtimer_new(srv->base, wait_timeout_cb, c);
    TAILQ_INSERT_TAIL(&srv->conns, c, link);
    srv->n_conns++;
    return c;
}

/* `allow` depends on the address alone, so a client outside it is refused at accept: it
 * holds no max_connections slot and no idle time, and is answered before it asks (the 403
 * its request would get), without waiting for a request that may never come. Counted and
 * logged as that 403; past REFUSING_MAX as what it is, a close with no answer (status 0). */
static void deny_connection(struct rp_listen_ctx *ctx, evutil_socket_t fd, const char *peer)
{
    char id[32];
    rp_request_id(id, sizeof(id));
    /* The access line counts the body that goes out, as every refusal's does. */
    ssize_t body_len = answer_at_accept(ctx, fd, peer, "403 Forbidden", "", "DENIED",
                                        "this network may not pull from this proxy");
    bool answered = body_len >= 0;
    rp_metrics_request(&ctx->srv->metrics, -1, answered ? 403 : 0, NULL, 0);
    struct rp_access a = {.id = id,
                          .method = "-",
                          .path = "-",
                          .registry = "-",
                          .cache = "-",
                          .peer = peer,
                          .status = answered ? 403 : 0,
                          .bytes = answered ? (uint64_t)body_len : 0,
                          .reason = answered ? "this network may not pull from this proxy; "
                                               "refused at accept"
                                             : "this network may not pull from this proxy; "
                                               "closed unanswered at accept, too many refusals "
                                               "under way"};
    rp_access_log(&a);
}

static void listen_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    (void)l;
    struct rp_listen_ctx *ctx = arg;
    char peer[64];
    peer_name(sa, peer, sizeof(peer));
    if (!rp_acl_allows(ctx->set.allow, ctx->set.n_allow, sa)) {
        deny_connection(ctx, fd, peer);
        return;
    }
    if (ctx->n_conns >= ctx->conf->max_connections) {
        refuse_connection(ctx, fd, peer);
        return;
    }
    /* Answers leave whole (head and body in one writev, or sendfile after the head), so
     * Nagle only holds back the short tail of a partly taken write until the client ACKs:
     * measured on a warm 200 MiB blob to one client, about 6% more throughput without it.
     * nginx (tcp_nodelay on) and Go's servers turn it off too. Best effort. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct rp_conn *c = conn_new(ctx, fd, peer);
    if (!c)
        return;
    c->lctx = ctx;
    ctx->n_conns++;
    /* A reload may narrow `allow` while the connection lives: each request is judged
     * again by this address. */
    memcpy(&c->peer_sa, sa,
           (size_t)salen < sizeof(c->peer_sa) ? (size_t)salen : sizeof(c->peer_sa));
    if (c->bev) {
        /* A TLS handshake gets the head deadline, not idle_timeout: a client that connects
         * and sends nothing, or half a ClientHello, is the slowloris of TLS listeners. */
        struct timeval tv = {HEAD_DEADLINE_S, 0};
        evtimer_add(c->wait_ev, &tv);
    } else {
        conn_wait_request(c, false);
    }
}

/* OpenSSL's default asks for a key's passphrase on the controlling terminal: started from
 * a shell, a reload would hold the loop, and every pull, until someone typed. */
static int no_passphrase(char *buf, int size, int rwflag, void *asked)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    if (asked)
        *(bool *)asked = true;
    return -1;
}

/* The first error OpenSSL queued, as text; the queue is emptied. */
static void tls_error_text(char *buf, size_t len)
{
    ERR_error_string_n(ERR_peek_error(), buf, len);
    ERR_clear_error();
}

/* A key of the certificate's type that is not its key fails as it loads with this. */
static bool key_mismatch(unsigned long e)
{
    return ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
}

/* A certificate past its notAfter (or before its notBefore) still loads, and is served: a
 * client that does not verify can use it, and the one it replaces may be no better. Every
 * verifying client refuses it, so the operator hears it at start, at `check` and at
 * reload, instead of from each client. */
static void tls_warn_validity(const struct rp_conf_listen *l, SSL_CTX *ctx)
{
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    if (!leaf)
        return;
    const ASN1_TIME *until = X509_get0_notAfter(leaf), *from = X509_get0_notBefore(leaf);
    /* -1: earlier than now, 1: later, 0: a time that does not parse (not warned about). */
    bool expired = X509_cmp_current_time(until) < 0;
    if (!expired && X509_cmp_current_time(from) <= 0)
        return;
    char when[64] = "?";
    BIO *b = BIO_new(BIO_s_mem());
    if (b && ASN1_TIME_print(b, expired ? until : from) == 1) {
        int n = BIO_read(b, when, (int)sizeof(when) - 1);
        when[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
    rp_warn("listen %s: tls_cert %s %s %s: clients that verify it refuse the connection", l->addr,
            l->tls_cert, expired ? "expired on" : "is not valid until", when);
}

/* OpenSSL's default list also takes, in TLS 1.2, RSA key exchange (no forward secrecy) and
 * CBC with SHA-1 (AES128-SHA), which scanners report. Of the list OpenSSL starts with (its
 * default, or the system's crypto policy), TLS 1.2 keeps the suites with an ephemeral key
 * exchange and an AEAD cipher: ECDHE with AES-GCM or ChaCha20 is what every registry client
 * (Go's crypto/tls, curl, Java 8) offers. TLS 1.3's suites are all of that kind. */
static void tls_strong_ciphers(SSL_CTX *ctx)
{
    STACK_OF(SSL_CIPHER) *all = SSL_CTX_get_ciphers(ctx);
    struct rp_buf keep;
    rp_buf_init(&keep, 64 * 1024);
    for (int i = 0; all && i < sk_SSL_CIPHER_num(all); i++) {
        const SSL_CIPHER *c = sk_SSL_CIPHER_value(all, i);
        int kx = SSL_CIPHER_get_kx_nid(c);
        if ((kx == NID_kx_ecdhe || kx == NID_kx_dhe) && SSL_CIPHER_is_aead(c))
            rp_buf_addf(&keep, "%s%s", keep.len ? ":" : "", SSL_CIPHER_get_name(c));
    }
    if (keep.len) /* else the policy allows no such suite: it is left as it is */
        SSL_CTX_set_cipher_list(ctx, keep.data);
    rp_buf_free(&keep);
}

/* TLS 1.2 or newer, the certificate chain and key from the listener's config. A load that
 * fails says which file and why in the operator's terms: OpenSSL's own text for an EC key
 * given with an RSA certificate is "no certificate assigned". */
static SSL_CTX *tls_context(const struct rp_conf_listen *l)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    bool asked = false;
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, &asked);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF /* OpenSSL 3 */
    /* A client's close without close_notify (between requests, whose heads frame them) is
     * a close, as before OpenSSL 3: not a fatal error, which drops the session from the
     * cache, so a TLS 1.2 client resuming by session ID could not. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    /* An idle keep-alive connection (a node between pulls) would otherwise hold OpenSSL's
     * read and write buffers: 2,000 idle TLS clients (each after one request) grew RSS by
     * 61.5 MiB without this, 30.3 MiB with it. nginx sets it too. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    tls_strong_ciphers(ctx);
    char why[600], ssl_err[256];
    ERR_clear_error();
    bool have_key = false, mismatch = false;
    if (SSL_CTX_use_certificate_chain_file(ctx, l->tls_cert) != 1) {
        tls_error_text(ssl_err, sizeof(ssl_err));
        snprintf(why, sizeof(why), "no PEM certificate could be read from tls_cert %s (%s)",
                 l->tls_cert, ssl_err);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, l->tls_key, SSL_FILETYPE_PEM) == 1) {
        /* A key of another type than the certificate's loads, and fails here. */
        have_key = true;
        mismatch = SSL_CTX_check_private_key(ctx) != 1;
    } else if (key_mismatch(ERR_peek_error())) {
        have_key = mismatch = true;
    } else {
        tls_error_text(ssl_err, sizeof(ssl_err));
        if (asked)
            snprintf(why, sizeof(why),
                     "%s is encrypted (a passphrase is never asked for: "
                     "give an unencrypted key)",
                     l->tls_key);
        else
            snprintf(why, sizeof(why), "no PEM private key could be read from tls_key %s (%s)",
                     l->tls_key, ssl_err);
    }
    if (mismatch) {
        ERR_clear_error();
        snprintf(why, sizeof(why),
                 "tls_key %s is not the private key of the first certificate in tls_cert %s "
                 "(the server's own certificate comes first, then its chain)",
                 l->tls_key, l->tls_cert);
    } else if (have_key) {
        SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL); /* `asked` is this frame's */
        tls_warn_validity(l, ctx);
        return ctx;
    }
    rp_error("listen %s: cannot load tls_cert/tls_key: %s", l->addr, why);
    SSL_CTX_free(ctx);
    return NULL;
}

/* Draining: the loop ends once the last client connection is gone. */
static void drain_check(struct rp_server *srv)
{
    if (srv->draining && srv->n_conns == 0) {
        srv->draining = false;
        rp_info("drained: every response was sent; exiting");
        event_base_loopexit(srv->base, NULL);
    }
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_server *srv = arg;
    srv->draining = false;
    rp_warn("drain_timeout: %zu connections still busy; closing them and exiting", srv->n_conns);
    event_base_loopexit(srv->base, NULL);
}

/* SIGTERM/SIGINT. Like an orchestrator expects (Kubernetes sends SIGTERM and waits its grace
 * period), pulls in progress are let finish: the listeners close (new connections are
 * refused, so clients go to another replica), idle keep-alive connections close, and busy
 * ones answer their request with Connection: close. The loop ends when the last one is
 * gone, at drain_timeout, or at a second signal. */
static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct rp_server *srv = arg;
    int64_t ms = srv->conf->admin.drain_timeout_ms;
    if (!srv->stopping)
        rp_server_notify(srv, "STOPPING=1");
    if (srv->stopping || ms <= 0 || !srv->n_conns) {
        rp_info("signal %d: shutting down%s", (int)sig, srv->stopping ? " now" : "");
        srv->stopping = true;
        srv->draining = false;
        event_base_loopexit(srv->base, NULL);
        return;
    }
    srv->stopping = true;
    for (size_t i = 0; i < srv->n_listeners; i++) {
        if (srv->listeners[i].ev)
            evconnlistener_free(srv->listeners[i].ev);
        srv->listeners[i].ev = NULL;
    }
    struct rp_conn *c, *next;
    for (c = TAILQ_FIRST(&srv->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        c->keep_alive = false;
        if (!c->req && !c->close_after && !c->head_started && !c->in_len &&
            rp_conn_output_len(c) == 0)
            conn_free(c);
    }
    rp_info("signal %d: draining: listeners closed, %zu connections finishing (at most %lld ms; "
            "a second signal exits at once)",
            (int)sig, srv->n_conns, (long long)ms);
    srv->drain_ev = evtimer_new(srv->base, drain_timeout_cb, srv);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    if (srv->drain_ev)
        evtimer_add(srv->drain_ev, &tv);
    srv->draining = true;
    drain_check(srv);
}

static void listen_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_listen_ctx *ctx = arg;
    if (!ctx->srv->stopping && ctx->li->ev)
        evconnlistener_enable(ctx->li->ev);
}

void rp_server_accept_pause(struct evconnlistener *l, struct event *resume_ev, const char *label)
{
    int err = EVUTIL_SOCKET_ERROR();
    rp_warn("%s: accept: %s; new connections wait 100 ms", label, strerror(err));
    evconnlistener_disable(l);
    struct timeval tv = {0, 100000};
    evtimer_add(resume_ev, &tv);
}

/* Accepting pauses; the connections already open go on, and closing them frees
 * descriptors. */
static void listen_error_cb(struct evconnlistener *l, void *arg)
{
    struct rp_listen_ctx *ctx = arg;
    char label[300];
    snprintf(label, sizeof(label), "listen %s", ctx->conf->addr);
    rp_server_accept_pause(l, ctx->resume_ev, label);
}

static int listen_on(struct rp_server *srv, struct rp_listener *li, struct rp_listen_ctx *ctx)
{
    if (settings_load(li->conf, &ctx->set, NULL) != 0)
        return -1;
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char spec[300];
    if (strchr(li->conf->host, ':'))
        snprintf(spec, sizeof(spec), "[%s]:%d", li->conf->host, li->conf->port);
    else
        snprintf(spec, sizeof(spec), "%s:%d", li->conf->host, li->conf->port);
    if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) < 0) {
        rp_error("listen %s: not an address", li->conf->addr);
        return -1;
    }
    li->ev = evconnlistener_new_bind(srv->base, listen_accept_cb, ctx,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 511,
                                     (struct sockaddr *)&ss, sslen);
    if (!li->ev) {
        rp_error("listen %s: %s", li->conf->addr, strerror(errno));
        return -1;
    }
    ctx->li = li;
    ctx->resume_ev = evtimer_new(srv->base, listen_resume_cb, ctx);
    evconnlistener_set_error_cb(li->ev, listen_error_cb);
    rp_info("listening on %s%s (default registry: %s)", li->conf->addr,
            ctx->set.tls ? " with TLS" : "", li->conf->def ? li->conf->def->name : "none");
    return 0;
}

void rp_server_checks_start(struct rp_server *srv)
{
    rp_checks_free_all(srv);
    for (size_t i = 0; i < srv->conf->n_registries; i++) {
        const struct rp_conf_registry *reg = &srv->conf->registries[i];
        struct rp_check_status *cs = &srv->checks[i];
        free(cs->line);
        cs->line = reg->offline ? rp_xstrdup("offline") : NULL;
        cs->state = RP_CHECK_PENDING; /* before: a check may end inside rp_check_start */
        if (reg->offline || rp_check_start(srv, reg, rp_server_check_logged, srv) < 0)
            cs->state = RP_CHECK_SKIPPED;
    }
}

void rp_server_check_logged(void *arg, const struct rp_conf_registry *reg, bool ok,
                            const char *line)
{
    struct rp_server *srv = arg;
    struct rp_check_status *cs = &srv->checks[reg - srv->conf->registries];
    cs->state = ok ? RP_CHECK_OK : RP_CHECK_FAILED;
    free(cs->line);
    cs->line = rp_xstrdup(line);
    if (ok)
        rp_info("check registry=%s: %s", reg->name, line);
    else
        rp_warn("check registry=%s: FAILED: %s", reg->name, line);
}

bool rp_verbose;

void rp_server_apply_logging(const struct rp_conf *conf)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    rp_log_set_json(strcmp(conf->admin.log_format, "json") == 0);
    for (int i = 0; i < 4; i++)
        if (strcmp(conf->admin.log_level, levels[i]) == 0 && !rp_verbose)
            rp_log_set_level((enum rp_log_level)i);
}

int rp_server_init(struct rp_server *srv, struct rp_conf *conf)
{
    memset(srv, 0, sizeof(*srv));
    srv->conf = conf;
    rp_server_apply_logging(conf);
    TAILQ_INIT(&srv->conns);
    TAILQ_INIT(&srv->write_queue);
    TAILQ_INIT(&srv->token_fetches);
    TAILQ_INIT(&srv->fills);
    TAILQ_INIT(&srv->inflight);
    TAILQ_INIT(&srv->revals);
    TAILQ_INIT(&srv->checks_running);
    signal(SIGPIPE, SIG_IGN);
    srv->base = event_base_new();
    if (srv->base)
        srv->write_ev = event_new(srv->base, -1, 0, write_queue_cb, srv);
    if (!srv->base || !srv->write_ev) {
        rp_error("cannot create the event loop");
        return -1;
    }
    char err[512];
    srv->cache = rp_cache_open(conf->cache.dir, conf->cache.max_size, err, sizeof(err));
    if (!srv->cache) {
        rp_error("cache %s: %s", conf->cache.dir, err);
        return -1;
    }
    /* The default max_size is more than many nodes' disks: say which bound holds. */
    struct statvfs sv;
    if (statvfs(conf->cache.dir, &sv) == 0) {
        uint64_t fs = (uint64_t)sv.f_blocks * sv.f_frsize;
        if (!conf->cache.max_size || conf->cache.max_size > fs) {
            char a[32], b[32];
            rp_format_bytes(fs, a, sizeof(a));
            rp_format_bytes((uint64_t)sv.f_bavail * sv.f_frsize, b, sizeof(b));
            rp_info("cache %s: the disk bounds the cache, not max_size (file system %s, %s "
                    "free): when it is full, least recently used blobs make room",
                    conf->cache.dir, a, b);
        }
    }
    /* The cache keeps no pins across an open: they come from the pins file and the pin
     * patterns, so an image that no longer qualifies is evictable again. */
    rp_pins_stamp(conf->cache.dir, &srv->pins_stamp); /* before reading: see reload.c */
    rp_pins_apply(srv->cache, conf);
    rp_cache_evict(srv->cache); /* to max_size, now that pins are back (not done by open) */
    srv->syncer = rp_syncer_new(srv->base);
    srv->hasher = rp_syncer_new(srv->base);
    srv->up = rp_upstream_new(srv->base);
    if (!srv->up) {
        rp_error("cannot initialise libcurl");
        return -1;
    }
    srv->auths = rp_xcalloc(conf->n_registries, sizeof(*srv->auths));
    srv->checks = rp_xcalloc(conf->n_registries + 1, sizeof(*srv->checks));
    srv->reach = rp_xcalloc(conf->n_registries + 1, sizeof(*srv->reach));
    rp_metrics_init(&srv->metrics, conf->n_registries, conf->n_listens);
    for (size_t i = 0; i < conf->n_registries; i++)
        srv->auths[i] = rp_auth_new(&conf->registries[i]);
    return 0;
}

static void durable_work(void *arg)
{
    struct rp_server *srv = arg;
    if (rp_cache_sync(srv->cache) != 0)
        rp_warn("cache: syncfs: %s", strerror(errno));
}

static void durable_submit(struct rp_server *srv);

static void durable_done(void *arg)
{
    struct rp_server *srv = arg;
    srv->durable_queued = false;
    if (srv->durable_again && srv->durable) {
        srv->durable_again = false;
        durable_submit(srv);
    }
}

static void durable_submit(struct rp_server *srv)
{
    srv->durable_queued = true;
    rp_syncer_submit(srv->durable, durable_work, durable_done, srv);
}

/* The cache left a write unsynced. A sync already queued may have begun before it: one more
 * follows that one, however many writes come meanwhile. */
static void durable_request(void *arg)
{
    struct rp_server *srv = arg;
    if (srv->durable_queued)
        srv->durable_again = true;
    else
        durable_submit(srv);
}

int rp_server_listen_internal(struct rp_server *srv, const struct rp_conf_listen *l,
                              const char *key)
{
    srv->n_listeners = 1;
    srv->listeners = rp_xcalloc(1, sizeof(*srv->listeners));
    srv->lctx = rp_xcalloc(1, sizeof(*srv->lctx));
    srv->listeners[0].conf = l;
    srv->lctx[0].srv = srv;
    srv->lctx[0].conf = l;
    srv->lctx[0].key = rp_xstrdup(key);
    if (settings_load(l, &srv->lctx[0].set, NULL) != 0)
        return -1;
    /* Bound here rather than by listen_on: port 0 (any free port) is the point. */
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)l->port);
    if (inet_pton(AF_INET, l->host, &sin.sin_addr) != 1) {
        rp_error("internal listener: %s is not an IPv4 address", l->host);
        return -1;
    }
    srv->listeners[0].ev =
        evconnlistener_new_bind(srv->base, listen_accept_cb, &srv->lctx[0], LEV_OPT_CLOSE_ON_FREE,
                                64, (struct sockaddr *)&sin, sizeof(sin));
    if (!srv->listeners[0].ev) {
        rp_error("internal listener on %s: %s", l->host, strerror(errno));
        return -1;
    }
    socklen_t len = sizeof(sin);
    if (getsockname(evconnlistener_get_fd(srv->listeners[0].ev), (struct sockaddr *)&sin, &len) !=
        0)
        return -1;
    return ntohs(sin.sin_port);
}

void rp_server_fini(struct rp_server *srv)
{
    srv->draining = false;
    if (srv->drain_ev)
        event_free(srv->drain_ev);
    if (srv->conns.tqh_last) /* initialised */
        while (!TAILQ_EMPTY(&srv->conns)) {
            /* Cut by drain_timeout or a second signal: the access log still has a line
             * for each request, saying it did not end, and what the client got. */
            struct rp_conn *c = TAILQ_FIRST(&srv->conns);
            if (c->req && !c->close_after)
                rp_req_cut(c->req, rp_conn_output_len(c), "shutdown");
            conn_free(c);
        }
    in_pool_free(srv);
    rp_scrub_free(srv->scrub); /* stops a pass within about 100 ms */
    srv->scrub = NULL;
    rp_syncer_free(srv->hasher); /* its jobs' waiters are gone with the connections */
    srv->hasher = NULL;
    if (srv->checks_running.tqh_last)
        rp_checks_free_all(srv);
    if (srv->inflight.tqh_last)
        rp_inflight_free_all(srv);
    if (srv->revals.tqh_last)
        rp_revals_free_all(srv);
    rp_syncer_free(srv->syncer); /* publishes the fills it was making durable */
    srv->syncer = NULL;
    if (srv->fills.tqh_last)
        rp_fills_free_all(srv);
    if (srv->token_fetches.tqh_last)
        rp_tokens_free_all(srv);
    for (size_t i = 0; i < srv->n_listeners; i++)
        if (srv->listeners[i].ev)
            evconnlistener_free(srv->listeners[i].ev);
    free(srv->listeners);
    if (srv->lctx)
        for (size_t i = 0; i < srv->n_listeners; i++) {
            settings_free(&srv->lctx[i].set);
            rp_free_secret(srv->lctx[i].key);
            if (srv->lctx[i].resume_ev)
                event_free(srv->lctx[i].resume_ev);
        }
    free(srv->lctx);
    if (srv->auths)
        for (size_t i = 0; i < srv->conf->n_registries; i++)
            rp_auth_free(srv->auths[i]);
    free(srv->auths);
    rp_upstream_free(srv->up);
    if (srv->durable) {
        /* Its last job finishes first: rp_cache_close syncs what came after. */
        rp_cache_set_sync_hook(srv->cache, NULL, NULL);
        struct rp_syncer *d = srv->durable;
        srv->durable = NULL;
        rp_syncer_free(d);
    }
    rp_cache_close(srv->cache);
    if (srv->sig_term)
        event_free(srv->sig_term);
    if (srv->sig_int)
        event_free(srv->sig_int);
    rp_reload_fini(srv);
    if (srv->admin)
        evconnlistener_free(srv->admin);
    if (srv->admin_conns.tqh_last)
        rp_admin_free_all(srv);
    if (srv->checks)
        for (size_t i = 0; i < srv->conf->n_registries; i++)
            free(srv->checks[i].line);
    free(srv->checks);
    free(srv->reach);
    rp_metrics_fini(&srv->metrics);
    if (srv->log_flush_ev) {
        rp_log_batch(NULL, NULL);
        event_free(srv->log_flush_ev);
    }
    if (srv->write_ev)
        event_free(srv->write_ev);
    if (srv->base)
        event_base_free(srv->base);
    memset(srv, 0, sizeof(*srv));
}

static void log_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    rp_log_flush();
}

/* The first line of a batch queues the flush behind the callbacks already due in this loop
 * iteration: under load one write carries the access lines of many requests, and a quiet
 * server still writes each line within microseconds. */
static void log_kick(void *arg)
{
    struct rp_server *srv = arg;
    event_active(srv->log_flush_ev, EV_TIMEOUT, 1);
}

/* Every connection is a descriptor (a blob being sent, two): the usual soft limit of 1024
 * is below the default max_connections, and past it accept() fails where a 503 was meant
 * to answer. The soft limit goes up to the hard one; if that is still short, say so. */
void rp_server_check_nofile(const struct rp_conf *conf, const char *reload_why)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    uint64_t want = 64; /* the cache, logs, upstream connections */
    for (size_t i = 0; i < conf->n_listens; i++)
        want += conf->listens[i].max_connections;
    if (rl.rlim_cur != RLIM_INFINITY && want > rl.rlim_cur)
        rp_warn("%s%s%sopen files limited to %llu, below the listeners' max_connections (%llu "
                "in all): past it new connections wait instead of getting a 503; raise "
                "LimitNOFILE (ulimit -n)",
                reload_why ? "reload (" : "", reload_why ? reload_why : "", reload_why ? "): " : "",
                (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

static void raise_nofile(const struct rp_conf *conf)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    rp_server_check_nofile(conf, NULL);
}

void rp_server_hold_signals(int how)
{
    sigset_t held;
    sigemptyset(&held);
    sigaddset(&held, SIGHUP);
    sigaddset(&held, SIGTERM);
    sigaddset(&held, SIGINT);
    sigprocmask(how, &held, NULL);
}

void rp_server_notify(struct rp_server *srv, const char *state)
{
    if (rp_sd_notify(state) < 0 && !srv->notify_failed) {
        srv->notify_failed = true;
        rp_warn("cannot tell the service manager (NOTIFY_SOCKET) the proxy's state: %s",
                strerror(errno));
    }
}

int rp_server_run(struct rp_conf *conf)
{
    int rc = 1;
    struct rp_server srv;
    if (rp_server_init(&srv, conf) != 0)
        goto out;
    /* Serving, the loop must not wait for the disk: what reads check is made durable on a
     * thread of its own (the mirror, which serves no one, keeps the cache synchronous). */
    srv.durable = rp_syncer_new(srv.base);
    if (srv.durable)
        rp_cache_set_sync_hook(srv.cache, durable_request, &srv);
    srv.scrub = rp_scrub_new(&srv);
    raise_nofile(conf);
    srv.n_listeners = conf->n_listens;
    srv.listeners = rp_xcalloc(conf->n_listens, sizeof(*srv.listeners));
    srv.lctx = rp_xcalloc(conf->n_listens, sizeof(*srv.lctx));
    for (size_t i = 0; i < conf->n_listens; i++) {
        srv.listeners[i].conf = &conf->listens[i];
        srv.lctx[i].srv = &srv;
        srv.lctx[i].conf = &conf->listens[i];
        if (listen_on(&srv, &srv.listeners[i], &srv.lctx[i]) < 0)
            goto out;
    }
    srv.sig_term = evsignal_new(srv.base, SIGTERM, signal_cb, &srv);
    srv.sig_int = evsignal_new(srv.base, SIGINT, signal_cb, &srv);
    evsignal_add(srv.sig_term, NULL);
    evsignal_add(srv.sig_int, NULL);
    rp_reload_init(&srv);
    /* main held these back while starting: one sent meanwhile is handled now. */
    rp_server_hold_signals(SIG_UNBLOCK);
    if (strcmp(conf->admin.listen, "off") != 0)
        rp_admin_start(&srv, conf->admin.listen);
    for (size_t i = 0; i < conf->n_warnings; i++)
        rp_warn("config: %s", conf->warnings[i]);
    srv.log_flush_ev = event_new(srv.base, -1, 0, log_flush_cb, &srv);
    if (srv.log_flush_ev)
        rp_log_batch(log_kick, &srv);
    rp_info("regproxy %s serving (%zu registries)", RP_VERSION, conf->n_registries);
    for (size_t i = 0; i < conf->n_registries; i++)
        if (conf->registries[i].offline)
            rp_info("registry %s is offline: serving from the cache only",
                    conf->registries[i].name);
    rp_server_checks_start(&srv);
    /* Listeners bound and the cache open: a systemd Type=notify unit is started now, and
     * units ordered after it wait for this, not for the fork. */
    rp_server_notify(&srv, "READY=1\nSTATUS=serving");
    event_base_dispatch(srv.base);
    rc = 0;
out:
    rp_server_fini(&srv);
    return rc;
}
