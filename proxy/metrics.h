/* SPDX-License-Identifier: Apache-2.0 */
/* metrics: counters, gauges and histograms in the Prometheus text format. Plain counting
 * with fixed label sets (route kinds, status codes, configured registry names), so no
 * label can grow without bound and none carries a secret. */
#ifndef RP_METRICS_H
#define RP_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../util/util.h"

#define RP_METRICS_KINDS 6 /* ping, manifest, blob, tags, referrers, other */
#define RP_METRICS_CACHE_RESULTS 5
#define RP_METRICS_LATENCY_BUCKETS 12

enum rp_cache_result { RP_CR_HIT, RP_CR_MISS, RP_CR_STALE, RP_CR_REVALIDATED, RP_CR_PASS };

/* What became of blob downloads, counted by registry. */
enum rp_fill_event {
    RP_FILL_RESUMED,      /* resumed with a ranged GET after the network cut it */
    RP_FILL_NOT_KEPT,     /* larger than max_size: served uncached, or stopped clientless */
    RP_FILL_BEHIND_RANGE, /* started with no reader, behind a range passed through */
    RP_FILL_NO_ROOM,      /* given up: the disk is full of what cannot be evicted */
    RP_FILL_EVENTS
};

/* Why a TLS handshake on a listener failed: a fixed set, named in labels by
 * rp_metrics_tls_fail_name. */
enum rp_tls_fail {
    RP_TLS_FAIL_UNKNOWN_CA,       /* the client's alert unknown_ca: it lacks tls_cert's issuer */
    RP_TLS_FAIL_BAD_CERTIFICATE,  /* alert bad_certificate (Go clients, on any verify error) */
    RP_TLS_FAIL_ALERT_OTHER,      /* another alert from the client */
    RP_TLS_FAIL_PROTOCOL_VERSION, /* no TLS version in common (the client offers < 1.2) */
    RP_TLS_FAIL_NO_SHARED_CIPHER, /* no cipher suite (or key exchange group) in common */
    RP_TLS_FAIL_HTTP_REQUEST,     /* plain HTTP, answered 400 */
    RP_TLS_FAIL_EOF,              /* the client hung up (or reset) mid-handshake */
    RP_TLS_FAIL_TIMEOUT,          /* not completed within the head deadline (10 s) */
    RP_TLS_FAIL_OTHER,            /* not TLS at all, a malformed handshake, ... */
    RP_TLS_FAILS
};
const char *rp_metrics_tls_fail_name(enum rp_tls_fail why);

struct rp_metrics_registry {
    uint64_t upstream_by_class[6]; /* 1xx..5xx by first digit; [0]: no answer */
    uint64_t latency_buckets[RP_METRICS_LATENCY_BUCKETS + 1]; /* cumulative at render */
    double latency_sum;
    uint64_t latency_count;
    uint64_t token_ok, token_failed;
    uint64_t fills[RP_FILL_EVENTS]; /* by enum rp_fill_event */
};

struct rp_metrics {
    /* requests by route kind and status class (2xx..5xx, and [0] for others) */
    uint64_t requests[RP_METRICS_KINDS][6];
    uint64_t cache[RP_METRICS_CACHE_RESULTS];
    uint64_t bytes_from_cache, bytes_from_upstream;
    uint64_t connections_refused;
    uint64_t scrub_bytes, scrub_damaged; /* [cache] scrub_interval (scrub.c) */
    int64_t scrub_last_pass_s;           /* Unix time the last whole pass ended; 0: none */
    /* Reloads (SIGHUP, a watched file) applied and refused, and whether the last one was
     * refused: the running configuration is then not the file's (reload.c). */
    uint64_t reloads_applied, reloads_refused;
    bool last_reload_refused;
    struct rp_metrics_registry *regs; /* one per configured registry */
    size_t n_regs;
    uint64_t (*tls_fails)[RP_TLS_FAILS]; /* one row per listener, by enum rp_tls_fail */
    size_t n_listeners;
};

void rp_metrics_init(struct rp_metrics *m, size_t n_registries, size_t n_listeners);
void rp_metrics_fini(struct rp_metrics *m);
/* kind: enum rp_route_kind value, or RP_METRICS_KINDS - 1 for requests that never routed. */
void rp_metrics_request(struct rp_metrics *m, int kind, int status, const char *cache_status,
                        uint64_t bytes);
void rp_metrics_upstream(struct rp_metrics *m, size_t reg, int status, int64_t ms);
void rp_metrics_token(struct rp_metrics *m, size_t reg, int ok);
void rp_metrics_fill(struct rp_metrics *m, size_t reg, enum rp_fill_event ev);
/* A TLS handshake failed on listener (its index in the configuration). */
void rp_metrics_tls_fail(struct rp_metrics *m, size_t listener, enum rp_tls_fail why);

/* Values that are read at render time rather than counted. */
struct rp_metrics_gauges {
    uint64_t open_connections;
    uint64_t fills_in_flight;
    uint64_t cache_bytes, cache_entries, cache_evictions, cache_evicted_bytes, cache_disk_full;
    uint64_t max_size;
};
/* Renders everything in the text exposition format (version 0.0.4) into out.
 * registry_names[i] names m->regs[i]; tls_listener_names[i] names listener i when it serves
 * TLS, and is NULL when it does not (its handshake failures are then left out). */
void rp_metrics_render(const struct rp_metrics *m, const struct rp_metrics_gauges *g,
                       const char *const *registry_names, const char *const *tls_listener_names,
                       struct rp_buf *out);

#endif
