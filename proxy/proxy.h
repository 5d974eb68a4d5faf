/* SPDX-License-Identifier: Apache-2.0 */
/* proxy: the event-driven server. This header is internal to proxy/: the connection,
 * request and server types shared by server.c (sockets, HTTP framing), request.c (the
 * request state machine), tokens.c (shared token fetches) and errors.c. */
#ifndef RP_PROXY_H
#define RP_PROXY_H

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "../auth/auth.h"
#include "../conf/conf.h"
#include "../util/util.h"
#include "http_parse.h"
#include "route.h"
#include "upstream.h"

struct event_base;
struct event;
struct bufferevent;
struct evconnlistener;
struct evbuffer;

#define RP_MANIFEST_MAX (4 * 1024 * 1024) /* largest manifest or index accepted upstream */
#define RP_SMALL_BODY_MAX (1024 * 1024)   /* tags lists, referrers */
#define RP_ERROR_BODY_MAX (64 * 1024)     /* upstream error bodies kept for the client */
#define RP_REDIRECTS_MAX 5
#define RP_STREAM_HIGH (1024 * 1024)  /* pause upstream when this much waits for the client */
#define RP_STREAM_LOW (256 * 1024)    /* and resume when the client has drained to this */

struct rp_server;
struct rp_conn;
struct rp_token_fetch;

enum rp_req_state {
    RQ_ROUTE,        /* parse and validate the target, pick the registry */
    RQ_AUTH,         /* ask auth/ what to attach; may need a token first */
    RQ_WAIT_TOKEN,   /* waiting on a shared token fetch */
    RQ_SEND,         /* start the upstream request (registry or redirect target) */
    RQ_WAIT_UPSTREAM, /* upstream transfer under way (headers, then body) */
    RQ_UPSTREAM_DONE, /* the transfer ended: decide retry, redirect, answer or error */
    RQ_STREAMING,    /* response headers sent; body flowing from upstream */
    RQ_FINISHING,    /* response fully queued; waiting for the client to drain it */
    RQ_DONE,
};

/* How the current upstream response's body is handled. */
enum rp_body_mode {
    BODY_NONE,    /* nothing decided yet */
    BODY_BUFFER,  /* collect (capped) and answer at the end: manifests, lists, errors */
    BODY_DISCARD, /* drain and ignore (a 401 that we retry, a redirect) */
    BODY_STREAM,  /* forward to the client as it arrives: blobs */
};

struct rp_req {
    struct rp_conn *conn;
    enum rp_req_state state;
    int64_t started_ms;
    bool head;        /* client asked HEAD */
    char *target;     /* request target as sent (owned) */
    char *accept;     /* client's Accept, forwarded for manifests (owned, may be NULL) */
    char *range;      /* client's Range, forwarded for blobs (owned, may be NULL) */
    struct rp_route route;
    struct rp_auth *auth; /* the routed registry's auth state (server-owned) */
    char *scope;          /* "repository:NAME:pull" */
    char *authorization;  /* what we attach to the registry request (secret, owned) */
    int auth_retries;     /* 401s answered by refreshing credentials */
    int token_err;        /* result of the shared token fetch we waited on */
    int redirects;
    char *url;            /* current upstream URL (owned) */
    bool url_is_registry; /* current URL is on the registry's own origin */
    struct rp_xfer *xfer;
    enum rp_body_mode mode;
    struct rp_buf body; /* BUFFER mode */
    size_t body_cap;
    int up_status;       /* last upstream status (0: none) */
    bool up_ok;          /* last transfer completed */
    char *up_err;        /* last transfer's error text (owned) */
    struct rp_xfer_headers up_h; /* copies of the upstream headers we act on (owned) */
    /* STREAM mode */
    int64_t stream_expected; /* bytes the client was promised, or -1 */
    int64_t stream_sent;
    bool stream_verify;      /* whole-blob GET: verify the digest before the last byte */
    EVP_MD_CTX *sha;
    bool paused;
    /* response accounting for the access log */
    int status;
    uint64_t bytes;
    const char *cache_status; /* "PASS" for uncached pass-through */
    TAILQ_ENTRY(rp_req) token_link; /* on a token fetch's waiter list */
    struct rp_token_fetch *waiting_on;
};

struct rp_conn {
    struct rp_server *srv;
    const struct rp_conf_listen *listen;
    struct bufferevent *bev;
    struct rp_req *req; /* the request being answered, or NULL between requests */
    bool keep_alive;    /* of the current request */
    bool close_after;   /* close once the output buffer is drained */
    char peer[64];
    TAILQ_ENTRY(rp_conn) link;
};
TAILQ_HEAD(rp_conn_list, rp_conn);

struct rp_listener {
    const struct rp_conf_listen *conf;
    struct evconnlistener *ev;
};

struct rp_server {
    struct event_base *base;
    struct rp_conf *conf;
    struct rp_upstream *up;
    struct rp_auth **auths; /* one per conf->registries[i] */
    struct rp_listener *listeners;
    size_t n_listeners;
    struct rp_conn_list conns;
    size_t n_conns;
    TAILQ_HEAD(, rp_token_fetch) token_fetches;
    struct event *sig_term, *sig_int;
    bool stopping;
};

/* server.c */
/* Queues the status line and headers common to every response; `extra` is a block of
 * further "Name: value\r\n" lines (may be NULL). content_length < 0 omits it. */
void rp_conn_write_head(struct rp_conn *c, int status, const char *content_type,
                        int64_t content_length, const char *extra);
struct evbuffer *rp_conn_output(struct rp_conn *c);
size_t rp_conn_output_len(struct rp_conn *c);
/* The request is answered (fully queued, or aborted when `abort` is set). The connection
 * goes on with the next request, or closes (at once when aborted, so a truncated body is
 * never mistaken for a complete one). Frees the request. */
void rp_conn_request_done(struct rp_conn *c, bool abort);

/* request.c */
struct rp_req *rp_req_new(struct rp_conn *c, const struct rp_http_request_head *h);
void rp_req_drive(struct rp_req *r);
/* The client drained its output to the low watermark (resume a paused stream). */
void rp_req_output_drained(struct rp_req *r);
/* Frees the request, cancelling its transfer and leaving any token wait. Accepts NULL. */
void rp_req_free(struct rp_req *r);
/* Answers with a registry-format JSON error and finishes the request. */
void rp_req_error(struct rp_req *r, int status, const char *code, const char *message,
                  const char *detail);

/* tokens.c: one token request per (registry, scope), shared by every waiting request. */
/* Registers r as waiting for a token for r->scope; starts the fetch if none runs. Returns
 * 0 when r waits (when the fetch ends, r->token_err is set and rp_req_drive(r) called), or
 * -1 when no fetch can be made (r->token_err says why; nothing was dialed). */
int rp_tokens_wait(struct rp_server *srv, struct rp_req *r);
/* Removes r from its waiter list (r is going away). */
void rp_tokens_leave(struct rp_req *r);
void rp_tokens_free_all(struct rp_server *srv);

/* errors.c: {"errors":[{"code":..,"message":..,"detail":..}]}; detail may be NULL. */
char *rp_error_body(const char *code, const char *message, const char *detail);
/* The spec's error code for an upstream status we pass on (401 UNAUTHORIZED, ...). */
const char *rp_error_code_for_status(int status, enum rp_route_kind kind);

/* main.c entry for `serve`. */
int rp_server_run(struct rp_conf *conf);

#endif
