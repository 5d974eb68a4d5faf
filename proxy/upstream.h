/* SPDX-License-Identifier: Apache-2.0 */
/* upstream: the HTTP client toward registries, token realms and CDNs: libcurl's multi
 * interface driven by the proxy's libevent loop (one event per curl socket, one timer),
 * so no call ever blocks the loop. Redirects are never followed here: the caller decides
 * where credentials may go. */
#ifndef RP_UPSTREAM_H
#define RP_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct rp_upstream;
struct rp_xfer;

/* The response headers the proxy acts on, as (field, lower-case name): one list, so that
 * reading, copying and freeing them cannot miss one. */
#define RP_XFER_HEADER_FIELDS(X)                                                                   \
    X(content_type, "content-type")                                                                \
    X(content_length, "content-length")                                                            \
    X(content_range, "content-range")                                                              \
    X(docker_content_digest, "docker-content-digest")                                              \
    X(www_authenticate, "www-authenticate")                                                        \
    X(location, "location")                                                                        \
    X(retry_after, "retry-after")                                                                  \
    X(link, "link")                                                                                \
    X(etag, "etag")                                                                                \
    X(oci_filters_applied, "oci-filters-applied")                                                  \
    X(content_encoding, "content-encoding")                                                        \
    X(allow, "allow")

/* Each value is a NUL-terminated copy (or NULL) owned by the transfer and valid until the
 * transfer's on_done returns. */
struct rp_xfer_headers {
#define RP_XFER_HEADER_MEMBER(field, name) char *field;
    RP_XFER_HEADER_FIELDS(RP_XFER_HEADER_MEMBER)
#undef RP_XFER_HEADER_MEMBER
    int64_t length; /* parsed Content-Length, or -1 (also beside a Transfer-Encoding) */
    bool chunked;   /* Transfer-Encoding ends in chunked: curl tells a cut from the end */
};

/* Why a transfer failed, for messages that tell an admin what to fix. */
enum rp_xfer_error {
    RP_XFER_OK = 0,
    RP_XFER_E_UNREACHABLE,   /* name resolution or connection failed */
    RP_XFER_E_TLS,           /* the certificate did not verify (or ours did not load) */
    RP_XFER_E_TLS_HANDSHAKE, /* no TLS handshake: plain HTTP, a reset, a protocol mismatch */
    RP_XFER_E_TIMEOUT,       /* connect, total or stall timeout */
    RP_XFER_E_ABORTED,       /* a callback asked to stop */
    RP_XFER_E_OTHER,         /* anything else (protocol error, reset mid-body) */
};
const char *rp_xfer_error_name(enum rp_xfer_error e);

struct rp_xfer_cb {
    /* Final (non-1xx) status line and headers arrived. Return 0 to continue, -1 to abort
     * the transfer (on_done follows with an error). */
    int (*on_headers_cb)(void *arg, int status, const struct rp_xfer_headers *h);
    /* Body bytes. Return n when consumed, 0 to pause (the same bytes are offered again
     * after rp_xfer_resume), -1 to abort. */
    long (*on_data_cb)(void *arg, const char *p, size_t n);
    /* The transfer ended: e is RP_XFER_OK when the whole response was received; err is a short
     * description otherwise (curl's message, no URL credentials since we never put any in
     * URLs). The xfer is freed after this returns; do not use it again. */
    void (*on_done_cb)(void *arg, enum rp_xfer_error e, int status, const char *err);
};

/* The floor below which a transfer counts as stalled: an upstream trickling a byte now and
 * then would otherwise hold a download, and every client waiting on it, for days. A cut
 * download resumes with a Range, so cutting a slow one costs little. */
#define RP_XFER_STALL_BYTES_PER_S 1024L

struct rp_xfer_opts {
    const char *url;
    bool head;                 /* HEAD instead of GET */
    const char *authorization; /* full header value or NULL; a secret, copied and zeroed */
    const char *accept;        /* forwarded Accept value or NULL */
    const char *range;         /* forwarded Range value or NULL */
    const char *post_body;     /* form-encoded POST body (a secret: copied, zeroed) or NULL */
    const char *ca_file;       /* NULL: system CAs */
    bool tls_verify;
    const char *proxy; /* egress proxy URL, or NULL: the environment's (https_proxy...) */
    long timeout_ms;   /* whole-transfer limit; 0 = none (blob streams have their own) */
    /* Abort when fewer than RP_XFER_STALL_BYTES_PER_S arrive per second for this long (0 =
     * off). A transfer paused for a slow client is not counted as slow by curl. */
    long stall_timeout_s;
    long connect_timeout_ms;
};

/* Creates the client on `base`. Returns NULL on failure (curl could not initialise). */
struct rp_upstream *rp_upstream_new(struct event_base *base);
/* Cancels every transfer without callbacks and frees. Accepts NULL. */
void rp_upstream_free(struct rp_upstream *up);

/* Starts a transfer. Callbacks are never called from inside this function. Returns NULL
 * only when curl refuses the options (for example a malformed URL). Safe from inside another
 * transfer's callbacks: curl takes no new transfer there, so it is handed over right after,
 * from the loop (and should curl refuse it then, it ends through on_done_cb). */
struct rp_xfer *rp_upstream_start(struct rp_upstream *up, const struct rp_xfer_opts *opts,
                                  const struct rp_xfer_cb *cb, void *arg);
/* Resumes a transfer paused by on_data_cb returning 0. May deliver data synchronously. */
void rp_xfer_resume(struct rp_xfer *x);
/* Stops a transfer; no callback is called after this. Safe from inside callbacks. */
void rp_xfer_cancel(struct rp_xfer *x);

#endif
