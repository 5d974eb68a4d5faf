/* SPDX-License-Identifier: Apache-2.0 */
/* metrics: counting and the Prometheus text rendering; see metrics.h. */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

static const char *const kind_names[RP_METRICS_KINDS] = {"ping", "manifest",  "blob",
                                                         "tags", "referrers", "other"};
static const char *const class_names[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
static const char *const cache_names[RP_METRICS_CACHE_RESULTS] = {"hit", "miss", "stale",
                                                                  "revalidated", "pass"};
/* Upper bounds in seconds of the upstream latency histogram. */
static const double latency_le[RP_METRICS_LATENCY_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                              0.5,   1,    2.5,   5,    10,  30};

static const char *const tls_fail_names[RP_TLS_FAILS] = {
    [RP_TLS_FAIL_UNKNOWN_CA] = "alert_unknown_ca",
    [RP_TLS_FAIL_BAD_CERTIFICATE] = "alert_bad_certificate",
    [RP_TLS_FAIL_ALERT_OTHER] = "alert_other",
    [RP_TLS_FAIL_PROTOCOL_VERSION] = "protocol_version",
    [RP_TLS_FAIL_NO_SHARED_CIPHER] = "no_shared_cipher",
    [RP_TLS_FAIL_HTTP_REQUEST] = "http_request",
    [RP_TLS_FAIL_EOF] = "eof",
    [RP_TLS_FAIL_TIMEOUT] = "timeout",
    [RP_TLS_FAIL_OTHER] = "other",
};

const char *rp_metrics_tls_fail_name(enum rp_tls_fail why)
{
    return why < RP_TLS_FAILS ? tls_fail_names[why] : "other";
}

void rp_metrics_init(struct rp_metrics *m, size_t n_registries, size_t n_listeners)
{
    memset(m, 0, sizeof(*m));
    m->regs = rp_xcalloc(n_registries ? n_registries : 1, sizeof(*m->regs));
    m->n_regs = n_registries;
    m->tls_fails = rp_xcalloc(n_listeners ? n_listeners : 1, sizeof(*m->tls_fails));
    m->n_listeners = n_listeners;
}

void rp_metrics_fini(struct rp_metrics *m)
{
    free(m->regs);
    m->regs = NULL;
    free(m->tls_fails);
    m->tls_fails = NULL;
}

static int status_class(int status)
{
    return status >= 100 && status < 600 ? status / 100 : 0;
}

void rp_metrics_request(struct rp_metrics *m, int kind, int status, const char *cache_status,
                        uint64_t bytes)
{
    if (kind < 0 || kind >= RP_METRICS_KINDS)
        kind = RP_METRICS_KINDS - 1;
    m->requests[kind][status_class(status)]++;
    /* Cache results and bytes by source describe content: an error body the proxy wrote
     * (upstream unreachable, a repository not allowed) came from neither place. */
    bool content = (status >= 200 && status < 300) || status == 304;
    if (!cache_status || !content || kind == 0 || kind == RP_METRICS_KINDS - 1)
        return;
    static const struct {
        const char *name;
        enum rp_cache_result r;
    } map[] = {{"HIT", RP_CR_HIT},
               {"MISS", RP_CR_MISS},
               {"STALE", RP_CR_STALE},
               {"REVALIDATED", RP_CR_REVALIDATED},
               {"PASS", RP_CR_PASS}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcmp(cache_status, map[i].name) == 0) {
            m->cache[map[i].r]++;
            if (map[i].r == RP_CR_MISS || map[i].r == RP_CR_PASS)
                m->bytes_from_upstream += bytes;
            else
                m->bytes_from_cache += bytes;
            return;
        }
    }
}

void rp_metrics_upstream(struct rp_metrics *m, size_t reg, int status, int64_t ms)
{
    if (reg >= m->n_regs)
        return;
    struct rp_metrics_registry *r = &m->regs[reg];
    r->upstream_by_class[status_class(status)]++;
    double s = (double)ms / 1000.0;
    for (int i = 0; i < RP_METRICS_LATENCY_BUCKETS; i++) {
        if (s <= latency_le[i]) {
            r->latency_buckets[i]++;
            break;
        }
        if (i == RP_METRICS_LATENCY_BUCKETS - 1)
            r->latency_buckets[RP_METRICS_LATENCY_BUCKETS]++;
    }
    r->latency_sum += s;
    r->latency_count++;
}

void rp_metrics_fill(struct rp_metrics *m, size_t reg, enum rp_fill_event ev)
{
    if (reg < m->n_regs && ev < RP_FILL_EVENTS)
        m->regs[reg].fills[ev]++;
}

void rp_metrics_tls_fail(struct rp_metrics *m, size_t listener, enum rp_tls_fail why)
{
    if (listener < m->n_listeners && why < RP_TLS_FAILS)
        m->tls_fails[listener][why]++;
}

void rp_metrics_token(struct rp_metrics *m, size_t reg, int ok)
{
    if (reg >= m->n_regs)
        return;
    if (ok)
        m->regs[reg].token_ok++;
    else
        m->regs[reg].token_failed++;
}

/* Label values are registry names and listener addresses from the configuration, which
 * admits none of the characters the format escapes; escaped anyway (backslash, quote,
 * newline), should that rule ever loosen. */
static void add_label_value(struct rp_buf *out, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            rp_buf_addf(out, "\\%c", *v);
        else if (*v == '\n')
            rp_buf_addf(out, "\\n");
        else
            rp_buf_add(out, v, 1);
    }
}

/* One sample of a per-registry counter: name{registry="REG"MORE} V, where MORE is "" or
 * ",label=\"value\"". */
static void reg_sample(struct rp_buf *out, const char *name, const char *reg, const char *more,
                       uint64_t v)
{
    rp_buf_addf(out, "%s{registry=\"", name);
    add_label_value(out, reg);
    rp_buf_addf(out, "\"%s} %llu\n", more, (unsigned long long)v);
}

static void head(struct rp_buf *out, const char *name, const char *type, const char *help)
{
    rp_buf_addf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void rp_metrics_render(const struct rp_metrics *m, const struct rp_metrics_gauges *g,
                       const char *const *registry_names, const char *const *tls_listener_names,
                       struct rp_buf *out)
{
    head(out, "regproxy_requests_total", "counter",
         "Client requests answered, by route kind and status class.");
    for (int k = 0; k < RP_METRICS_KINDS; k++)
        for (int c = 0; c < 6; c++)
            if (m->requests[k][c])
                rp_buf_addf(out, "regproxy_requests_total{route=\"%s\",status=\"%s\"} %llu\n",
                            kind_names[k], class_names[c], (unsigned long long)m->requests[k][c]);
    head(out, "regproxy_cache_requests_total", "counter",
         "Manifest, blob, tags list and referrers requests answered with content (2xx, 304), "
         "by cache result (hit, miss, stale, revalidated, pass).");
    for (int i = 0; i < RP_METRICS_CACHE_RESULTS; i++)
        rp_buf_addf(out, "regproxy_cache_requests_total{result=\"%s\"} %llu\n", cache_names[i],
                    (unsigned long long)m->cache[i]);
    head(out, "regproxy_served_bytes_total", "counter",
         "Content bytes (2xx bodies) sent to clients, by where they came from.");
    rp_buf_addf(out, "regproxy_served_bytes_total{source=\"cache\"} %llu\n",
                (unsigned long long)m->bytes_from_cache);
    rp_buf_addf(out, "regproxy_served_bytes_total{source=\"upstream\"} %llu\n",
                (unsigned long long)m->bytes_from_upstream);
    head(out, "regproxy_upstream_requests_total", "counter",
         "Requests to upstream registries, by registry and status class (other: no answer).");
    for (size_t r = 0; r < m->n_regs; r++)
        for (int c = 0; c < 6; c++) {
            rp_buf_addf(out, "regproxy_upstream_requests_total{registry=\"");
            add_label_value(out, registry_names[r]);
            rp_buf_addf(out, "\",status=\"%s\"} %llu\n", class_names[c],
                        (unsigned long long)m->regs[r].upstream_by_class[c]);
        }
    head(out, "regproxy_upstream_request_duration_seconds", "histogram",
         "Time from starting an upstream request to its end.");
    for (size_t r = 0; r < m->n_regs; r++) {
        const struct rp_metrics_registry *x = &m->regs[r];
        uint64_t cum = 0;
        for (int i = 0; i <= RP_METRICS_LATENCY_BUCKETS; i++) {
            cum += x->latency_buckets[i];
            rp_buf_addf(out, "regproxy_upstream_request_duration_seconds_bucket{registry=\"");
            add_label_value(out, registry_names[r]);
            if (i < RP_METRICS_LATENCY_BUCKETS)
                rp_buf_addf(out, "\",le=\"%g\"} %llu\n", latency_le[i], (unsigned long long)cum);
            else
                rp_buf_addf(out, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        rp_buf_addf(out, "regproxy_upstream_request_duration_seconds_sum{registry=\"");
        add_label_value(out, registry_names[r]);
        rp_buf_addf(out, "\"} %.6f\n", x->latency_sum);
        rp_buf_addf(out, "regproxy_upstream_request_duration_seconds_count{registry=\"");
        add_label_value(out, registry_names[r]);
        rp_buf_addf(out, "\"} %llu\n", (unsigned long long)x->latency_count);
    }
    head(out, "regproxy_token_fetches_total", "counter",
         "Token requests to registry realms, by registry and result.");
    for (size_t r = 0; r < m->n_regs; r++) {
        reg_sample(out, "regproxy_token_fetches_total", registry_names[r], ",result=\"ok\"",
                   m->regs[r].token_ok);
        reg_sample(out, "regproxy_token_fetches_total", registry_names[r], ",result=\"failed\"",
                   m->regs[r].token_failed);
    }
    static const struct {
        const char *name, *help;
    } fill_events[RP_FILL_EVENTS] = {
        [RP_FILL_RESUMED] = {"regproxy_fill_resumes_total",
                             "Blob downloads resumed with a ranged GET after the network cut "
                             "them, by registry."},
        [RP_FILL_NOT_KEPT] = {"regproxy_fill_not_kept_total",
                              "Blob downloads not cached, being larger than max_size (served, "
                              "or stopped once no client was left for them), by registry."},
        [RP_FILL_BEHIND_RANGE] = {"regproxy_fill_behind_range_total",
                                  "Blob downloads into the cache started behind a range of an "
                                  "uncached blob that was passed through, by registry."},
        [RP_FILL_NO_ROOM] = {"regproxy_fill_no_room_total",
                             "Blobs not cached because the disk had no room that eviction "
                             "could make (their clients are passed through from upstream), "
                             "by registry."},
    };
    for (int ev = 0; ev < RP_FILL_EVENTS; ev++) {
        head(out, fill_events[ev].name, "counter", fill_events[ev].help);
        for (size_t r = 0; r < m->n_regs; r++)
            reg_sample(out, fill_events[ev].name, registry_names[r], "", m->regs[r].fills[ev]);
    }
    head(out, "regproxy_fills_in_flight", "gauge", "Blob downloads into the cache under way.");
    rp_buf_addf(out, "regproxy_fills_in_flight %llu\n", (unsigned long long)g->fills_in_flight);
    head(out, "regproxy_cache_size_bytes", "gauge", "Bytes of published cache entries.");
    rp_buf_addf(out, "regproxy_cache_size_bytes %llu\n", (unsigned long long)g->cache_bytes);
    head(out, "regproxy_cache_max_size_bytes", "gauge", "The configured max_size (0: unbounded).");
    rp_buf_addf(out, "regproxy_cache_max_size_bytes %llu\n", (unsigned long long)g->max_size);
    head(out, "regproxy_cache_entries", "gauge", "Published blobs and manifests.");
    rp_buf_addf(out, "regproxy_cache_entries %llu\n", (unsigned long long)g->cache_entries);
    head(out, "regproxy_cache_evictions_total", "counter",
         "Entries evicted to honour max_size or to make room on a full disk.");
    rp_buf_addf(out, "regproxy_cache_evictions_total %llu\n",
                (unsigned long long)g->cache_evictions);
    head(out, "regproxy_cache_evicted_bytes_total", "counter", "Bytes evicted.");
    rp_buf_addf(out, "regproxy_cache_evicted_bytes_total %llu\n",
                (unsigned long long)g->cache_evicted_bytes);
    head(out, "regproxy_cache_disk_full_total", "counter",
         "Cache writes given up because the disk was full and no eviction could make room.");
    rp_buf_addf(out, "regproxy_cache_disk_full_total %llu\n",
                (unsigned long long)g->cache_disk_full);
    head(out, "regproxy_cache_scrubbed_bytes_total", "counter",
         "Bytes of cached blobs the scrub (scrub_interval) read and checked.");
    rp_buf_addf(out, "regproxy_cache_scrubbed_bytes_total %llu\n",
                (unsigned long long)m->scrub_bytes);
    head(out, "regproxy_cache_scrub_damaged_total", "counter",
         "Cached blobs the scrub found damaged and removed.");
    rp_buf_addf(out, "regproxy_cache_scrub_damaged_total %llu\n",
                (unsigned long long)m->scrub_damaged);
    head(out, "regproxy_cache_scrub_last_pass_end_seconds", "gauge",
         "Unix time the scrub last finished a pass over every cached blob (0: never since the "
         "start).");
    rp_buf_addf(out, "regproxy_cache_scrub_last_pass_end_seconds %lld\n",
                (long long)m->scrub_last_pass_s);
    head(out, "regproxy_config_reloads_total", "counter",
         "Configuration reloads (SIGHUP, or a watched credential, certificate or htpasswd "
         "file changed), by result: applied, or refused (the previous configuration still "
         "serves; the log says why).");
    rp_buf_addf(out, "regproxy_config_reloads_total{result=\"applied\"} %llu\n",
                (unsigned long long)m->reloads_applied);
    rp_buf_addf(out, "regproxy_config_reloads_total{result=\"refused\"} %llu\n",
                (unsigned long long)m->reloads_refused);
    head(out, "regproxy_config_last_reload_successful", "gauge",
         "0 when the last reload was refused (the running configuration is not the file's), "
         "else 1.");
    rp_buf_addf(out, "regproxy_config_last_reload_successful %d\n", m->last_reload_refused ? 0 : 1);
    head(out, "regproxy_open_connections", "gauge", "Client connections open.");
    rp_buf_addf(out, "regproxy_open_connections %llu\n", (unsigned long long)g->open_connections);
    head(out, "regproxy_connections_refused_total", "counter",
         "Connections refused at the connection limit.");
    rp_buf_addf(out, "regproxy_connections_refused_total %llu\n",
                (unsigned long long)m->connections_refused);
    head(out, "regproxy_tls_handshake_failures_total", "counter",
         "TLS handshakes that failed on a TLS listener, by listener and reason (alert_unknown_ca, "
         "alert_bad_certificate: the client does not accept tls_cert; eof: hung up, as TCP "
         "health checks do; timeout: not completed within 10 s).");
    for (size_t l = 0; l < m->n_listeners; l++) {
        if (!tls_listener_names[l])
            continue;
        for (int why = 0; why < RP_TLS_FAILS; why++) {
            rp_buf_addf(out, "regproxy_tls_handshake_failures_total{listener=\"");
            add_label_value(out, tls_listener_names[l]);
            rp_buf_addf(out, "\",reason=\"%s\"} %llu\n", tls_fail_names[why],
                        (unsigned long long)m->tls_fails[l][why]);
        }
    }
}
