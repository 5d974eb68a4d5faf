/* SPDX-License-Identifier: Apache-2.0 */
/* proxy: the event-driven server. This header is internal to proxy/: the types shared by
 * server.c (sockets, HTTP framing), request.c (the client request state machine),
 * fetch.c (one authenticated upstream exchange), tokens.c (shared token fetches),
 * fill.c (shared blob downloads into the cache) and errors.c. */
#ifndef RP_PROXY_H
#define RP_PROXY_H

#include <event2/util.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "../auth/auth.h"
#include "../cache/cache.h"
#include "../conf/conf.h"
#include "../util/util.h"
#include "acl.h"
#include "http_parse.h"
#include "metrics.h"
#include "offline.h"
#include "scrub.h"
#include "syncer.h"
#include "route.h"
#include "upstream.h"

struct event_base;
struct event;
struct bufferevent;
struct evconnlistener;
struct evbuffer;

#define RP_MANIFEST_MAX (4 * 1024 * 1024) /* largest manifest or index accepted upstream */
/* Tags lists and referrers: docker-registry 2.8 ignores n and answers every tag of a
 * repository at once, megabytes where CI tags every commit (100,000 tags of a branch and a
 * commit id are about 5 MB). They stream to the client (request.c: list_stream_start), and
 * this bounds what passes: an upstream that sends more is cut there, its client with it. */
#define RP_LIST_BODY_MAX (16 * 1024 * 1024)
#define RP_ERROR_BODY_MAX (64 * 1024) /* upstream error bodies kept for the client */
#define RP_REDIRECTS_MAX 5
#define RP_STREAM_HIGH (1024 * 1024)           /* stop feeding a client with this much queued */
#define RP_STREAM_LOW (256 * 1024)             /* and go on when it has drained to this */
#define RP_CONN_IN_SIZE (RP_HTTP_MAX_HEAD + 1) /* a whole head, and a byte to see it is too big */

struct rp_server;
struct rp_conn;
struct rp_req;
struct rp_fetch;
struct rp_fill;
struct rp_token_fetch;
struct rp_check;
struct rp_inflight;
struct rp_htpasswd;
struct rp_listen_ctx;

/* ------------------------------------------------------------------------- fetch.c */
/* One exchange with a registry: attaches credentials (waiting for a shared token fetch
 * when needed), retries once per 401 with refreshed credentials, follows blob redirects
 * without credentials, and hands the final response to its owner. */

enum rp_fetch_fail {
    RP_FETCH_OK = 0,
    RP_FETCH_E_TRANSPORT, /* no (complete) response: unreachable, TLS, timeout, reset */
    RP_FETCH_E_TOKEN,     /* no token could be had (token_err says why) */
    RP_FETCH_E_AUTH,      /* a 401 that credentials cannot fix (auth_err says why) */
    RP_FETCH_E_REDIRECT,  /* a redirect we refuse: too many, bad scheme, malformed */
    RP_FETCH_E_OWNER,     /* refused: the owner's callback aborted the transfer, or the
                           * answer was unusable (Content-Encoding, no final head) */
};

struct rp_fetch_result {
    enum rp_fetch_fail fail;
    int status;                  /* final HTTP status, 0 when none arrived */
    int token_err;               /* RP_FETCH_E_TOKEN */
    int auth_err;                /* RP_FETCH_E_AUTH */
    enum rp_xfer_error xfer_err; /* E_TRANSPORT, or the realm's for E_TOKEN */
    const char *err;             /* human-readable detail, or NULL; valid during on_done_cb */
    /* The final request carried an Authorization (Basic, or a bearer token from the realm):
     * the registry asked for one and was given it. */
    bool authorized;
    /* The final answer came from where the registry redirected (a blob CDN, a backing
     * registry), not from the registry itself. */
    bool from_redirect;
};

struct rp_fetch_cb {
    /* The final response's status and headers (not a retried 401, not a followed
     * redirect). Return 0 to go on, -1 to abort (on_done follows with E_OWNER). */
    int (*on_headers_cb)(void *arg, int status, const struct rp_xfer_headers *h);
    /* Final response body bytes: return n, 0 to pause (see rp_fetch_resume), -1 to abort. */
    long (*on_data_cb)(void *arg, const char *p, size_t n);
    /* Always called exactly once unless cancelled; never from inside rp_fetch_start. */
    void (*on_done_cb)(void *arg, const struct rp_fetch_result *res);
    /* rp_fetch_opts.deadline_ms passed with the exchange under way (token_wait: still
     * waiting for the realm). The owner answers its client some other way and cancels f,
     * hands it to another owner (rp_fetch_rebind), or does nothing and waits on. */
    void (*on_deadline_cb)(void *arg, bool token_wait);
};

struct rp_fetch_opts {
    const struct rp_conf_registry *reg;
    const char *path; /* "/v2/..." with an optional query: appended to reg->url */
    const char *name; /* repository, for the token scope */
    bool head;
    const char *accept;
    const char *range;
    bool stream;           /* long body: a stall timeout instead of a total one */
    bool follow_redirects; /* blobs go to CDNs, manifests to backing registries */
    /* 0, or how long the owner's client may wait for the whole exchange (token wait,
     * retries, redirects) before on_deadline_cb (required then); the exchange itself keeps
     * the usual limits. A registry whose own request has no answer by then counts as silent
     * (rp_server_registry_silent). For an owner with something to answer instead: a stale
     * tag. */
    int64_t deadline_ms;
};

struct rp_fetch *rp_fetch_start(struct rp_server *srv, const struct rp_fetch_opts *o,
                                const struct rp_fetch_cb *cb, void *arg);
/* Stops the exchange; no callback follows. Accepts NULL. Safe inside callbacks. */
void rp_fetch_cancel(struct rp_fetch *f);
/* The exchange goes on for another owner: later callbacks go to cb and arg (a final head
 * that already reached the old owner is not repeated). */
void rp_fetch_rebind(struct rp_fetch *f, const struct rp_fetch_cb *cb, void *arg);
void rp_fetch_resume(struct rp_fetch *f);
/* For tokens.c: the token wait of f ended with err (RP_AUTH_OK or an error); asked_ms: when
 * the token was asked for (rp_now_ms), the time its life is counted from. */
void rp_fetch_token_ready(struct rp_fetch *f, int err, enum rp_xfer_error xe, const char *detail,
                          int64_t asked_ms);
/* For tokens.c: the token f waited for was asked with credentials a reload has since
 * replaced (credentials), or of a realm the registry has since stopped naming; f starts
 * its authentication over with the current ones. */
void rp_fetch_token_stale(struct rp_fetch *f, bool credentials);

/* ------------------------------------------------------------------------ tokens.c */
/* One token request per (registry, scope), shared by every fetch that needs it. */
/* Registers f as waiting; starts the token request if none runs. Returns 0 when f waits
 * (rp_fetch_token_ready follows), or an RP_AUTH_E_* code when no request can be made
 * (nothing was dialed). */
int rp_tokens_wait(struct rp_server *srv, struct rp_auth *auth, const struct rp_conf_registry *reg,
                   const char *scope, struct rp_fetch *f);
void rp_tokens_leave(struct rp_server *srv, struct rp_fetch *f);
void rp_tokens_free_all(struct rp_server *srv);

/* -------------------------------------------------------------------------- fill.c */
/* A blob download into the cache, shared by every client that asks for the digest while
 * it runs. The download goes at upstream speed into the cache's temp file; each reader
 * streams from that file at its own pace. */

/* Joins the fill of r's blob, starting one when none runs. r becomes a reader: fill.c
 * answers it (headers when upstream's arrive, bytes as they land, an error or an abort;
 * when upstream sends no Content-Length, headers and all the bytes only once the whole
 * blob is in and verified, or a 503 when the cache has no room for it).
 * A reader of another repository that has no head yet when the fill fails looks up again
 * (RQ_LOOKUP) rather than take that repository's error.
 * Returns 0, or -1 when no fill could be started (r was answered with an error). */
int rp_fill_join(struct rp_server *srv, struct rp_req *r);
/* Starts downloading a blob into the cache with no reader, behind a range of it that was
 * passed through (lazy-pulling snapshotters read layers in ranges; a resumed pull asks from
 * where it stopped): size is the blob's, from that range's answer, or -1 when it did not
 * say (a multipart answer). Does nothing when a fill for the digest runs, the blob is
 * cached already, or, its size known, the cache may not keep it (rp_cache_can_hold) or has
 * no room for it (its temp file is allocated first, so that costs no upstream request).
 * Returns whether a fill started; its download starts at the next loop turn, so this may
 * be called from a transfer's callback. */
bool rp_fill_behind(struct rp_server *srv, const struct rp_conf_registry *reg, const char *repo,
                    const char *digest, int64_t size);
/* r goes away (client left); the fill continues without it, unless r was its last reader
 * and the cache will not keep the blob (larger than what max_size leaves beside the pins):
 * that download is given up from the loop, logged and counted as not kept. One whose size
 * upstream did not send is given up so once what has arrived is more than that. */
void rp_fill_leave(struct rp_req *r);
/* r's client drained its output: feed it more. */
void rp_fill_reader_drained(struct rp_req *r);
/* The fill running for digest, or NULL. */
struct rp_fill *rp_fill_find(struct rp_server *srv, const char *digest);
/* Whether f downloads for this registry and repository (its readers need no
 * confirmation that the repository has the blob: the download itself confirms it). */
bool rp_fill_is_for(const struct rp_fill *f, const struct rp_conf_registry *reg, const char *repo);
/* The blob's length as f's upstream announced it, or -1 while not known. */
int64_t rp_fill_length(const struct rp_fill *f);
/* Whether f's blob is all in and verified (being made durable): its length and type are
 * then known for sure. Not before: upstream's Content-Length is only its word, and a HEAD
 * answered with a wrong one could not be taken back as a GET's cut body is. */
bool rp_fill_head_known(const struct rp_fill *f);
/* Answers r, a HEAD of f's blob, from f (rp_fill_head_known must hold): the head a GET
 * joining f gets, without the body and without an upstream request of its own. */
void rp_fill_answer_head(struct rp_fill *f, struct rp_req *r);
void rp_fills_free_all(struct rp_server *srv);

/* ---------------------------------------------------------------------- inflight.c */
/* Concurrent misses for one manifest (method, registry, repository, reference, Accept),
 * concurrent revalidations of one tag, and concurrent confirmations that a repository has
 * a blob cached from another, share one upstream exchange; a HEAD waits on a
 * GET of the same manifest when there is one. Returns true when r now waits for a request
 * already fetching it (it is driven again, from the loop, when that one is done, or given
 * a HEAD leader's shared answer); false when r should fetch, in which case it leads and
 * must call rp_inflight_done once it has its answer: a leader may need several fetches for
 * it (a revalidation, then the GET of a moved tag), and waiters woken in between would find
 * nothing new and each fetch on their own. */
bool rp_inflight_wait(struct rp_server *srv, struct rp_req *r);
/* A leading HEAD is about to answer its client with a success from upstream (r->up_status
 * and r->up_h): the HEADs waiting on it get the same answer (rp_req_answer_shared) rather
 * than look up a manifest that was never cached. No effect unless r leads a HEAD. */
void rp_inflight_share(struct rp_req *r);
/* A leading revalidation found upstream down or failing and is about to answer its tag
 * stale: its waiters are told (peer_stale), and serve the tag stale too, each within
 * max_stale, rather than each revalidate on its own, which against a stalled upstream
 * meant a second full timeout apiece, and as many upstream connections as waiters. No
 * effect unless r leads. */
void rp_inflight_stale(struct rp_req *r);
/* A leader is about to answer a failure that had no whole answer from upstream
 * (unreachable, timed out, cut before or after its head; the token realm likewise): its
 * waiters are handed res (peer_failed) and answer it as their own, as a blob's readers
 * share its download's failure, rather than each ask upstream again: against a stalled
 * upstream that was a second full timeout apiece, and as many upstream connections as
 * waiters. An answer (a 404, a 5xx) is not shared: each waiter still asks on its own. No
 * effect unless r leads. */
void rp_inflight_failed(struct rp_req *r, const struct rp_fetch_result *res);
/* The leader answered its client, or was cancelled with it before upstream answered (its
 * waiters then share a fetch again rather than each making one). */
void rp_inflight_done(struct rp_req *r, bool answered);
void rp_inflight_leave(struct rp_req *r); /* a waiter went away */
void rp_inflight_free_all(struct rp_server *srv);

/* ----------------------------------------------------------------------- request.c */

/* A tag's revalidation that outlived its client's revalidate_timeout (the tag was served
 * stale): it finishes in the background and records what upstream said, so a registry that
 * is slow but answers still moves and refreshes tags. Freed when done, or at shutdown. */
struct rp_reval;
void rp_revals_free_all(struct rp_server *srv);

/* The media type a manifest's bytes give themselves (mediaType, or for an OCI manifest or
 * index without it, the one its shape names), malloc'd; NULL when they give none (schema 1)
 * or it could not be a header value. It is the type cached for those bytes, whoever
 * labelled them otherwise (another registry's Content-Type, a bundle's metadata), since
 * every registry's clients are served them. */
char *rp_manifest_own_type(const char *body, size_t len);
/* A signed schema 1 manifest's digest ("sha256" or "sha512" algo), as registries name it
 * (Docker-Content-Digest, references by digest): of its payload, the bytes without the
 * signatures, as libtrust's JWS gives it (the first signature's protected header names the
 * payload's formatLength and the formatTail the signatures replaced), written to out. False,
 * out untouched, when the bytes do not say, or when that payload is not the manifest itself
 * less its signatures (another manifest's bytes as formatTail). */
bool rp_manifest_schema1_digest(const char *algo, const char *body, size_t len, char *out,
                                size_t outlen);

enum rp_req_state {
    RQ_ROUTE,     /* parse and validate the target, pick the registry */
    RQ_LOOKUP,    /* consult the cache */
    RQ_CONFIRM,   /* cached, but not known for this repository: HEAD upstream */
    RQ_UPSTREAM,  /* an upstream fetch answers (manifests, tags, referrers, pass-through) */
    RQ_FILL,      /* reading a blob from a shared fill */
    RQ_WAIT_PEER, /* another request is fetching the same manifest: look up when it is done */
    RQ_SENDING,   /* response fully queued: done when the client has taken it */
    RQ_DONE,
};

struct rp_req {
    struct rp_conn *conn;
    enum rp_req_state state;
    int64_t started_ms;
    char id[32];
    bool head;
    char *target;
    char *accept;
    char *range;
    char *if_none_match; /* its If-None-Match list, or NULL */
    struct rp_route route;
    bool routed;              /* route is valid */
    const char *cache_status; /* HIT, MISS, STALE, REVALIDATED, PASS: for logs and header */
    /* upstream */
    struct rp_fetch *fetch;
    int up_status;
    char *up_err;
    struct rp_xfer_headers up_h;
    struct rp_buf body;
    size_t body_cap;
    bool fetch_head;    /* the current fetch is a HEAD */
    bool streaming;     /* pass-through stream of a blob range */
    bool range_refused; /* upstream answered the range pass-through with 416 */
    bool fill_behind;   /* a range pass-through that starts the cache's fill (rp_fill_behind) */
    /* Upstream ignored the range, sending the whole blob with no length: the download is to
     * serve it (range_to_fill: once this fetch is done). */
    bool range_unsized, range_to_fill;
    bool paused;
    int64_t stream_expected, stream_sent;
    /* A whole blob passed through is hashed on the way, and its last byte held back until
     * the digest matched, as a fill's readers' is: a corrupt answer never looks complete. */
    EVP_MD_CTX *stream_md;
    char stream_last;
    /* tags: what the cache had, for revalidation and stale-if-error */
    bool have_stale;
    char stale_digest[RP_DIGEST_MAX + 1];
    int64_t stale_age_s;
    bool revalidating;          /* the current fetch is a HEAD checking a cached tag */
    int64_t revalidate_from_ms; /* when that HEAD started: revalidate_timeout counts from it */
    bool confirmed;             /* upstream said this repository has the cached blob (RQ_CONFIRM) */
    int64_t confirmed_len;      /* the blob's Content-Length in that answer, or -1 */
    /* The cached blob being sent is marked in use (rp_cache_blob_open; rp_cache_hold for a
     * fill's reader, whose temp file becomes the blob) until the request is freed: eviction
     * neither counts its bytes as freed nor takes it while it is sent. */
    bool blob_held;
    bool canonical_fetch; /* a tag asked upstream with the proxy's Accept (request.c) */
    /* reading from a fill */
    struct rp_fill *fill;
    int fill_fd;
    int64_t fill_sent; /* bytes of the blob queued to the client */
    int64_t fill_end;  /* bytes the client is owed in total */
    TAILQ_ENTRY(rp_req) fill_link;
    /* a multipart answer going out over TLS a piece at a time (request.c) */
    struct rp_multipart *mp;
    /* manifest misses shared with concurrent requests (inflight.c) */
    struct rp_inflight *inflight; /* waiting on this one */
    struct rp_inflight *leads;    /* fetching for this one's waiters */
    bool coalesced;               /* already waited once: fetch alone if it still misses */
    bool peer_stale;              /* the revalidation waited on served stale (upstream failing) */
    bool peer_failed;             /* the fetch waited on had no whole answer: see peer_res */
    struct rp_fetch_result peer_res; /* its err is peer_err */
    char *peer_err;
    TAILQ_ENTRY(rp_req) inflight_link;
    /* accounting */
    int status;
    uint64_t bytes;
    size_t head_len; /* of the head rp_conn_write_head queued, for rp_req_take_back */
};

struct rp_req *rp_req_new(struct rp_conn *c, const struct rp_http_request_head *h);
void rp_req_drive(struct rp_req *r);
void rp_req_output_drained(struct rp_req *r);
void rp_req_free(struct rp_req *r); /* accepts NULL */
void rp_req_error(struct rp_req *r, int status, const char *code, const char *message,
                  const char *detail);
/* An error about upstream, with the registry, its status and error in the detail. */
void rp_req_upstream_error(struct rp_req *r, int status, const char *code, const char *message,
                           int up_status, const char *err);
/* A 4xx from where the registry redirected (a CDN refusing an expired signed URL): a 502
 * naming it so, not the registry's own 401/403/404 for the client to act on. True when
 * answered. */
bool rp_req_redirect_refused(struct rp_req *r, const struct rp_fetch_result *res, int status);
/* The message of a 503 for an upstream that could not be reached: a TLS failure says so. */
const char *rp_req_unreachable_msg(enum rp_xfer_error e);
/* Answers a HEAD with the upstream success another HEAD of the same manifest got (status
 * and upstream's headers, copied), as a MISS. */
void rp_req_answer_shared(struct rp_req *r, int status, const struct rp_xfer_headers *h);
/* Passes a failed upstream answer on honestly (never turned into 404). allow: upstream's
 * Allow, for a 405 (or NULL). */
void rp_req_answer_upstream_failure(struct rp_req *r, int status, const char *retry_after,
                                    const char *allow, const char *body, size_t len);
/* A blob GET answered straight from upstream, streamed with backpressure and not cached:
 * for when the cache cannot hold it (its disk is full of what cannot be evicted). */
void rp_req_pass_through(struct rp_req *r);
/* 416 for a blob range past the end of its `size` bytes. */
void rp_req_range_unsatisfiable(struct rp_req *r, uint64_t size);
/* Writes r's access-log line (aborted: why it was cut short, or NULL). */
void rp_req_log(const struct rp_req *r, const char *aborted);
/* Logs the access line and hands the connection on (abort: close at once). */
void rp_req_finish(struct rp_req *r, const char *aborted);
/* The whole response is queued: r finishes once the client has taken it, so its access
 * line's time and bytes are the delivery's, and a client gone midway is logged as such. */
void rp_req_queued(struct rp_req *r);
/* An answer begun with rp_conn_write_head failed before any of it left the proxy (head and
 * body so far all still queued, as when upstream's head, body and failure come in one loop
 * iteration): takes it back, so that r can be answered with an error rather than cut.
 * False when some of it is out (or may be: a TLS connection's file body, or bytes OpenSSL
 * sealed); then cutting the connection is all that is left. */
bool rp_req_take_back(struct rp_req *r);
/* r was cut with `undelivered` bytes still queued, its client gone (why: "client") or the
 * proxy stopping before it ended ("shutdown"): logged as aborted=WHY, and counted in the
 * metrics if its response had begun. The connection frees r. */
void rp_req_cut(struct rp_req *r, size_t undelivered, const char *why);

/* ------------------------------------------------------------------------ server.c */

/* A client connection. Plain connections do their own non-blocking reads and writes on two
 * events, so a cache hit costs one read and one write: a whole response is written as it is
 * made when nothing is queued before it (else later in the same loop iteration), and the
 * write event is only polled for while the socket is full. TLS connections leave their I/O
 * to a bufferevent over OpenSSL. Either way the client is owed `out`, then (plain only) the
 * file body, in that order; `in` holds what it sent that is not parsed yet. */
struct rp_conn {
    struct rp_server *srv;
    const struct rp_conf_listen *listen;
    evutil_socket_t fd;
    struct bufferevent *bev; /* TLS only */
    struct event *rev, *wev; /* plain only */
    struct evbuffer *out;
    int file_fd;        /* plain only: a file body sent with sendfile once out is empty, or -1 */
    uint64_t file_off;  /* where the next sendfile starts */
    uint64_t file_left; /* bytes of it still owed */
    char *in;           /* a pooled buffer of RP_CONN_IN_SIZE while bytes wait, else NULL */
    size_t in_len;
    size_t write_low; /* the write callback runs once out has drained to this */
    bool read_paused; /* in is full: rev is off until a request consumes it */
    bool writing;     /* wev is pending: the socket took less than we had */
    /* TLS: OpenSSL holds a record the socket did not take all of (its last write fell
     * short). The bytes it sealed are at the front of `out`, and must go out as sealed:
     * all of them were added before tls_sealed_at (a count of bytes ever added to out,
     * tls_added). */
    bool tls_record_pending;
    uint64_t tls_added, tls_sealed_at;
    bool write_queued; /* on the server's write queue: written later in this loop iteration */
    bool in_write_cb;  /* conn_free waits for the write callback to return */
    bool parsing;      /* in conn_try_parse's loop: conn_free waits for it too */
    bool parse_again;  /* a request ended inside that loop: it takes the next one */
    bool freed;
    struct rp_req *req;
    /* Its head's client credentials are being hashed (acl.h): parsing waits for the verdict,
     * then takes the same head again. */
    struct rp_htpasswd_waiter auth_wait;
    bool keep_alive;
    /* The response going out has no length known when its head left (a list streamed from
     * an upstream that sent none, rp_conn_write_head_unsized): to an HTTP/1.1 client it is
     * chunked, each piece framed by rp_conn_body_add and ended by rp_conn_body_end; to an
     * HTTP/1.0 one it runs to the close. body_framing counts the chunk framing queued, which
     * rp_conn_take_back takes back with the rest. Cleared when the request is done. */
    bool body_chunked;
    bool body_to_close;
    size_t body_framing;
    /* The request being answered is HTTP/1.0: a 1.0 client reads to EOF unless the answer
     * says "Connection: keep-alive" (RFC 9112 9.3), as Go and nginx answer it. */
    bool http10;
    bool close_after;
    struct event *linger_ev; /* closing: draining input until EOF or this fires */
    struct event *wait_ev;   /* between requests: idle timeout, then the head deadline */
    bool head_started;       /* a request's first bytes arrived; its deadline runs */
    /* The peer's address (IPv4 or IPv6; sin6_family says which), judged against the
     * listener's allow list at each request: a reload that narrows it reaches keep-alive
     * connections too. */
    struct sockaddr_in6 peer_sa;
    bool over_limit; /* refused at accept (max_connections, allow): told why, then closed */
    struct rp_listen_ctx *lctx; /* the listener it came in on (settings swap on reload) */
    size_t listener;            /* that listener's index, set for refused connections too */
    unsigned n_requests;
    char peer[64];
    TAILQ_ENTRY(rp_conn) link;
    TAILQ_ENTRY(rp_conn) write_link; /* while write_queued */
};
TAILQ_HEAD(rp_conn_list, rp_conn);

struct rp_listener {
    const struct rp_conf_listen *conf;
    struct evconnlistener *ev;
};

enum rp_check_state { RP_CHECK_PENDING, RP_CHECK_OK, RP_CHECK_FAILED, RP_CHECK_SKIPPED };
struct rp_check_status {
    enum rp_check_state state;
    char *line;
};

struct rp_server {
    struct event_base *base;
    struct rp_conf *conf;
    struct rp_upstream *up;
    struct rp_cache *cache;
    struct rp_auth **auths; /* one per conf->registries[i] */
    struct rp_reach {
        int64_t silent_ms;   /* when it last gave no answer, 0 once it answered since */
        int64_t answered_ms; /* when it last answered */
    } * reach;               /* one per registry (rp_server_upstream_seen) */
    struct rp_listener *listeners;
    struct rp_listen_ctx *lctx; /* one per listener */
    size_t n_listeners;
    struct rp_conn_list conns;
    size_t n_conns;
    /* Plain connections with output to write later in this loop iteration, and the event
     * (no descriptor, no timeout) that writes them. A connection's own write event is only
     * for waiting on a full socket: activating that one by hand would make libevent re-arm
     * it with its send timeout, registering EPOLLOUT behind our back. */
    struct rp_conn_list write_queue;
    struct event *write_ev;
    char *in_pool; /* free input buffers, linked through their first bytes */
    size_t n_in_pool;
    size_t n_refusing;                /* connections refused at accept, being answered */
    struct rp_log_ration refused_log; /* refusals at max_connections */
    TAILQ_HEAD(, rp_token_fetch) token_fetches;
    TAILQ_HEAD(, rp_fill) fills;
    struct rp_syncer *syncer; /* fsyncs finished fills off the loop (syncer.h) */
    struct rp_syncer *hasher; /* checks client passwords off the loop (acl.h) */
    /* serve: makes the cache's unsynced writes durable off the loop (rp_cache_set_sync_hook);
     * one rp_cache_sync queued at a time, and one more if writes came meanwhile. */
    struct rp_syncer *durable;
    bool durable_queued, durable_again;
    struct rp_scrub *scrub;             /* serve: [cache] scrub_interval (scrub.h) */
    TAILQ_HEAD(, rp_inflight) inflight; /* manifest fetches others wait on */
    TAILQ_HEAD(, rp_reval) revals;      /* revalidations finishing in the background */
    size_t n_fills;
    /* Sizes of blobs that fills started behind a multipart range (which gives no size)
     * downloaded and verified, so that the next such range decides with no upstream request
     * whether the cache may take the blob (fill.c; a small ring, oldest overwritten). A
     * length upstream only announced is not one: no digest vouched for it. */
    struct rp_blob_size {
        char digest[RP_DIGEST_MAX + 1];
        int64_t size;
    } behind_sizes[16];
    unsigned behind_sizes_next;
    struct rp_pins_stamp pins_stamp;     /* the pins file as last applied (reload.c) */
    bool reload_refused;                 /* the last reload was refused (reload.c) */
    bool notify_failed;                  /* NOTIFY_SOCKET refused a datagram: warned once */
    struct rp_conf_watch refused_source; /* the configuration file as it was then */
    struct event *sig_term, *sig_int, *sig_hup;
    struct event *log_flush_ev; /* writes the log lines batched in this loop iteration */
    struct event *watch_ev;     /* polls credential files for changes */
    struct evconnlistener *admin;
    struct event *admin_resume_ev;           /* accepting again after accept() failed (EMFILE) */
    TAILQ_HEAD(, rp_admin_conn) admin_conns; /* a scraper's may still be open at exit */
    size_t n_admin_conns;
    struct rp_log_ration admin_refused_log; /* connections closed past the admin cap */
    struct rp_metrics metrics;
    struct rp_check_status *checks; /* one per registry: the last login check */
    TAILQ_HEAD(, rp_check) checks_running;
    bool stopping;          /* a signal came: no keep-alive, no new connections */
    bool draining;          /* ... and the loop ends when the last connection closes */
    struct event *drain_ev; /* [admin] drain_timeout: the loop ends then anyway */
};

/* Rebuilds every listener's TLS context, allow list and client accounts from fresh
 * (same shape as the running configuration) and swaps them in; -1 (nothing changed) when
 * any fails to load. */
int rp_server_reload_listeners(struct rp_server *srv, const struct rp_conf *fresh);
/* Loads every listener's TLS context, allow list and client accounts as serve would, and
 * drops them: -1, each failure logged, when any would keep serve from starting (`check`). */
int rp_server_check_listeners(const struct rp_conf *conf);
/* The client accounts of the listener c came in on, or NULL (anonymous). */
struct rp_htpasswd *rp_conn_htpasswd(const struct rp_conn *c);
/* -v on the command line: debug logging whatever [admin] log_level says, reloads included. */
extern bool rp_verbose;
/* [admin] log_format and log_level (unless rp_verbose). */
void rp_server_apply_logging(const struct rp_conf *conf);
struct rp_auth *rp_server_auth(struct rp_server *srv, const struct rp_conf_registry *reg);
/* How a request to the registry itself (not a redirect's target) ended: with an answer, or
 * with none because the registry could not be reached or did not answer in time. After no
 * answer, tags past tag_ttl are served stale at once (within max_stale) for
 * RP_UNREACHABLE_HOLD_MS rather than each wait out a revalidation of its own; an answer ends
 * that. A request sent (sent_ms) before the last answer, that times out only after it, does
 * not start it again: one request hung since before the registry came back says nothing of
 * it now. */
#define RP_UNREACHABLE_HOLD_MS 30000
void rp_server_upstream_seen(struct rp_server *srv, const struct rp_conf_registry *reg,
                             bool answered, int64_t sent_ms);
/* Whether the registry gave no answer less than RP_UNREACHABLE_HOLD_MS ago, and none since. */
bool rp_server_registry_silent(const struct rp_server *srv, const struct rp_conf_registry *reg);
/* Warns when the listeners' max_connections (and a margin) exceed the open-files limit:
 * past it new connections wait in the backlog instead of getting a 503. At the start
 * (reload_why NULL) and after a reload that changed a max_connections. */
void rp_server_check_nofile(const struct rp_conf *conf, const char *reload_why);
/* The Date every answer carries (RFC 9110 6.6.1: an origin server with a clock sends one),
 * as "Date: <IMF-fixdate>\r\n". Formatted once a second, from the loop's cached clock: no
 * system call, no allocation on a cache hit's path. */
const char *rp_server_date_line(struct rp_server *srv);
/* Pins digest when (registry, repo) matches a [cache] pin pattern. */
void rp_server_maybe_pin(struct rp_server *srv, const struct rp_conf_registry *reg,
                         const char *repo, const char *digest);
/* Queues a response head; the body follows through rp_conn_output. extra: more header
 * lines, each ending in CRLF, or NULL. The request's head_len says how long it was. */
void rp_conn_write_head(struct rp_conn *c, int status, const char *content_type,
                        int64_t content_length, const char *extra);
/* A whole response: head, then the len bytes of body unless !send_body (HEAD, whose
 * Content-Length still says len; a 304 has none, RFC 9110 8.6). Sent at once when nothing is queued
 * before it; body need only live until the call returns. */
void rp_conn_write_response(struct rp_conn *c, int status, const char *content_type,
                            const char *extra, const void *body, size_t len, bool send_body);
/* A whole response whose body is len bytes of fd from off (a cached blob): the head, then
 * the file. Takes fd: it is closed once sent, or with the connection, or at once on failure
 * (-1: cut the connection, a head may be out). Plain connections send the file with sendfile
 * from here, allocating nothing; TLS connections read it into their output 64 KiB at a
 * time as OpenSSL drains it. Pipelined requests wait until it is queued, as nothing may be
 * queued before it. */
int rp_conn_write_file(struct rp_conn *c, int status, const char *content_type, const char *extra,
                       int fd, uint64_t off, uint64_t len);
/* Queues len bytes of fd from off after everything queued, without taking fd: on plain
 * connections a file segment sent with sendfile, on TLS connections the connection's file
 * body (extended when it is the rest of the one still going out), read in as OpenSSL
 * drains it. -1 when it cannot. */
int rp_conn_queue_file(struct rp_conn *c, int fd, uint64_t off, uint64_t len);
struct evbuffer *rp_conn_output(struct rp_conn *c);
/* Bytes the client is still owed: the output evbuffer and a file body. */
size_t rp_conn_output_len(struct rp_conn *c);
/* Drops the last len bytes queued, if all of them are still queued (so none has been
 * sent; earlier answers queued before them stay) and no file body follows; on a TLS
 * connection only when none of them is sealed in a record OpenSSL has yet to send.
 * len is the head and body bytes the request queued: the chunk framing of an unsized
 * response is added here, and the response's framing forgotten with it. Returns whether it
 * did. */
bool rp_conn_take_back(struct rp_conn *c, size_t len);
/* Queues the head of a response whose length is not known yet (no Content-Length): chunked
 * to an HTTP/1.1 client, to the close (Connection: close) to an HTTP/1.0 one. Not for HEAD,
 * 1xx, 204 or 304, which have no body. Its body goes through rp_conn_body_add and ends with
 * rp_conn_body_end; cut short (rp_conn_request_done with abort), the client sees a cut: the
 * chunks do not end, or a response to the close ends in a reset, not a clean close. */
void rp_conn_write_head_unsized(struct rp_conn *c, int status, const char *content_type,
                                const char *extra);
/* Queues n body bytes of the response going out, framed as a chunk when it is chunked
 * (nothing for n == 0: an empty chunk would end it). */
void rp_conn_body_add(struct rp_conn *c, const void *p, size_t n);
/* The body is all queued: a chunked one gets its last chunk. */
void rp_conn_body_end(struct rp_conn *c);
/* Make the connection call rp_req_output_drained when its output falls to RP_STREAM_LOW. */
void rp_conn_stream_mode(struct rp_conn *c);
void rp_conn_request_done(struct rp_conn *c, bool abort);

/* --------------------------------------------------------------------- accesslog.c */
struct rp_access {
    const char *id, *method, *path, *registry, *cache, *peer;
    int status, upstream;
    uint64_t bytes;
    int64_t ms;
    const char *aborted; /* why the response was cut short, or NULL */
    const char *reason;  /* why a malformed request was refused, or NULL */
};
void rp_access_log(const struct rp_access *a);
/* A new request id ("prefix-sequence"). */
void rp_request_id(char *buf, size_t len);

/* The headers of every blob answer, given the digest twice: its digest is its only validator,
 * sent as a strong ETag as distribution does, which If-Range may name. */
#define RP_BLOB_HEADERS "Accept-Ranges: bytes\r\nDocker-Content-Digest: %s\r\nETag: \"%s\"\r\n"

/* ------------------------------------------------------------------------ errors.c */
char *rp_error_body(const char *code, const char *message, const char *detail);
const char *rp_error_code_for_status(int status, enum rp_route_kind kind);
bool rp_header_value_safe(const char *v);
void rp_headers_copy(struct rp_xfer_headers *dst, const struct rp_xfer_headers *src);
void rp_headers_free(struct rp_xfer_headers *h);
bool rp_digest_matches(const char *digest, const unsigned char *md, unsigned int mdlen);
const EVP_MD *rp_digest_md(const char *digest);

/* Serves until SIGTERM/SIGINT. SIGHUP, SIGTERM and SIGINT may be blocked on entry (main
 * holds them while starting): they are unblocked once their handlers are in place. */
int rp_server_run(struct rp_conf *conf);
/* Blocks (SIG_BLOCK) or unblocks (SIG_UNBLOCK) the signals serve holds pending while it
 * starts: SIGHUP, SIGTERM, SIGINT. main blocks them before loading; rp_server_run unblocks
 * them once its handlers are in place. */
void rp_server_hold_signals(int how);
/* accept() failed on l (EMFILE, ENFILE, ENOBUFS): the listening socket stays readable, and
 * the loop would spin on it at full CPU, libevent logging each turn. Logs it (label: whose
 * listener) and disables l for 100 ms, after which resume_ev fires (a timer the caller
 * made, which enables l again when it still should). */
void rp_server_accept_pause(struct evconnlistener *l, struct event *resume_ev, const char *label);
/* Tells a systemd-style service manager the proxy's state (rp_sd_notify); a failure is
 * logged once, not fatal. */
void rp_server_notify(struct rp_server *srv, const char *state);
/* What rp_server_run serves with, without listeners, signals, admin, reload or checks: the
 * event loop, the cache (pins file applied), the upstream client, auths, metrics. 0, or -1
 * (logged); either way rp_server_fini undoes what was done. Used by `regproxy mirror`,
 * which runs the proxy in-process. */
int rp_server_init(struct rp_server *srv, struct rp_conf *conf);
/* Serves on l alone (the mirror's internal listener, e.g. 127.0.0.1 port 0; l must outlive
 * the server), answering only requests that carry "Authorization: Bearer KEY" (key is
 * copied, and wiped at rp_server_fini): any local user can connect to 127.0.0.1, and this
 * listener pulls with the configuration's credentials. Returns the bound port, or -1
 * (logged). */
int rp_server_listen_internal(struct rp_server *srv, const struct rp_conf_listen *l,
                              const char *key);
/* Closes connections, fills, listeners and the cache, frees everything; srv is zeroed. */
void rp_server_fini(struct rp_server *srv);

/* admin.c: /metrics, /healthz, /readyz on the admin address (not fatal when it fails). */
int rp_admin_start(struct rp_server *srv, const char *addr);
/* Closes the admin connections still open, and frees the rest of admin's state (at exit). */
void rp_admin_free_all(struct rp_server *srv);

/* reload.c: SIGHUP and credential-file changes re-read the configuration in place. */
int rp_reload(struct rp_server *srv, const char *why);
void rp_reload_init(struct rp_server *srv);
void rp_reload_fini(struct rp_server *srv);

/* -------------------------------------------------------------------------- check.c */
typedef void (*rp_check_done_cb)(void *arg, const struct rp_conf_registry *reg, bool ok,
                                 const char *line);
/* Starts the login check of reg (ping, token flow, manifest of test_image); done is called
 * once with a one-line verdict. Returns -1 (and never calls done) when test_login is off. */
int rp_check_start(struct rp_server *srv, const struct rp_conf_registry *reg, rp_check_done_cb done,
                   void *arg);
/* test_image ("repo", "repo:tag" or "repo@digest"; tag latest when none) as the check asks
 * for it: the repository into name, with library/ for a one-component name on Docker Hub
 * as routing gives pulls, the tag or digest into ref. -1 when it is not a valid reference
 * or does not fit. */
int rp_check_parse_test_image(const struct rp_conf_registry *reg, const char *image, char *name,
                              size_t nlen, char *ref, size_t rlen);
/* A rp_check_done_cb that logs the verdict (serve's start-up and reload checks). */
void rp_server_check_logged(void *arg, const struct rp_conf_registry *reg, bool ok,
                            const char *line);
/* serve's login checks of every registry, as `regproxy check` does them, logged (at start
 * and on each reload): checks still running are dropped (their verdicts would overwrite the
 * new ones), each registry's verdict is pending until its check ends, skipped when it has
 * test_login off, and offline ones are never dialed. */
void rp_server_checks_start(struct rp_server *srv);
/* Cancels checks still running (shutdown). */
void rp_checks_free_all(struct rp_server *srv);
/* `regproxy check`: checks every registry, prints a line each; 0 when all passed. */
int rp_check_main(struct rp_conf *conf);

#endif
