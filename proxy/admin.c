/* SPDX-License-Identifier: Apache-2.0 */
/* admin: the operator's listener (never a registry listener): /metrics in the Prometheus
 * text format, /healthz (the process answers) and /readyz (configuration loaded, cache
 * writable; each registry's last login check is reported alongside). One request per
 * connection; these are scraped, not browsed. */
#include "proxy.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Idle limit for reads and writes, and the whole time a request head may take to arrive:
 * the idle timeout alone restarts with every byte, so a client trickling one byte at a time
 * would hold the connection (and a descriptor the registry listeners share) indefinitely. */
#define ADMIN_TIMEOUT_S 10
/* Admin connections open at once. The registry listeners have max_connections; without a
 * bound here a flood of admin connections (a runaway scraper, a port scan) would take the
 * descriptors their clients need. Probes and scrapes take one each, briefly: past the cap a
 * connection is closed at once, unanswered. */
#define ADMIN_CONNS_MAX 64

struct rp_admin_conn {
    struct rp_server *srv;
    struct bufferevent *bev;
    TAILQ_ENTRY(rp_admin_conn) link; /* srv->admin_conns: freed at exit if still open */
    struct event *deadline;          /* ADMIN_TIMEOUT_S after the accept: the head is due */
    bool done;
    bool head; /* the request is a HEAD */
};

static void admin_free(struct rp_admin_conn *a)
{
    TAILQ_REMOVE(&a->srv->admin_conns, a, link);
    a->srv->n_admin_conns--;
    if (a->deadline)
        event_free(a->deadline);
    bufferevent_free(a->bev);
    free(a);
}

void rp_admin_free_all(struct rp_server *srv)
{
    struct rp_admin_conn *a;
    while ((a = TAILQ_FIRST(&srv->admin_conns)))
        admin_free(a);
    if (srv->admin_resume_ev)
        event_free(srv->admin_resume_ev);
    srv->admin_resume_ev = NULL;
}

static void admin_reply(struct rp_admin_conn *a, int status, const char *type, const char *body,
                        size_t len)
{
    /* Content-Length still says what a GET gets; a HEAD's answer is the head alone. */
    struct evbuffer *out = bufferevent_get_output(a->bev);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "%sCache-Control: no-store\r\nConnection: close\r\n\r\n",
                        status,
                        status == 200   ? "OK"
                        : status == 503 ? "Service Unavailable"
                        : status == 405 ? "Method Not Allowed"
                        : status == 400 ? "Bad Request"
                        : status == 408 ? "Request Timeout"
                                        : "Not Found",
                        rp_server_date_line(a->srv), type, len,
                        /* RFC 9110 15.5.6: a 405 says which methods are allowed */
                        status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!a->head)
        evbuffer_add(out, body, len);
    a->done = true;
    bufferevent_disable(a->bev, EV_READ);
}

static void render_metrics(struct rp_server *srv, struct rp_buf *out)
{
    struct rp_cache_stats st;
    rp_cache_stats(srv->cache, &st);
    struct rp_metrics_gauges g = {
        .open_connections = srv->n_conns,
        .fills_in_flight = srv->n_fills,
        .cache_bytes = st.size,
        .cache_entries = st.entries,
        .cache_evictions = st.evictions,
        .cache_evicted_bytes = st.evicted_bytes,
        .cache_disk_full = st.disk_full,
        .max_size = srv->conf->cache.max_size,
    };
    const char **names = rp_xcalloc(srv->conf->n_registries + 1, sizeof(*names));
    for (size_t i = 0; i < srv->conf->n_registries; i++)
        names[i] = srv->conf->registries[i].name;
    const char **tls = rp_xcalloc(srv->conf->n_listens + 1, sizeof(*tls));
    for (size_t i = 0; i < srv->conf->n_listens; i++)
        if (srv->conf->listens[i].tls_cert)
            tls[i] = srv->conf->listens[i].addr;
    rp_metrics_render(&srv->metrics, &g, names, tls, out);
    free(tls);
    free(names);
}

/* Ready when a pull could be served: the configuration is loaded (we run) and the cache
 * takes writes. A registry whose login check fails does not make the proxy unready: it
 * still serves the other registries and everything cached. */
static int render_ready(struct rp_server *srv, struct rp_buf *out)
{
    bool writable = rp_cache_probe_writable(srv->cache) == RP_CACHE_OK;
    json_t *regs = json_object();
    for (size_t i = 0; i < srv->conf->n_registries; i++) {
        const struct rp_check_status *cs = &srv->checks[i];
        json_object_set_new(regs, srv->conf->registries[i].name,
                            json_pack("{s:s, s:s}", "check",
                                      cs->state == RP_CHECK_OK        ? "ok"
                                      : cs->state == RP_CHECK_FAILED  ? "failed"
                                      : cs->state == RP_CHECK_SKIPPED ? "skipped"
                                                                      : "pending",
                                      "detail", cs->line ? cs->line : ""));
    }
    /* Draining after SIGTERM: no longer a target for new pulls. */
    bool ready = writable && !srv->stopping;
    json_t *root =
        json_pack("{s:b, s:b, s:b, s:b, s:o}", "ready", ready, "config_loaded", 1, "cache_writable",
                  writable, "stopping", srv->stopping, "registries", regs);
    char *s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    rp_buf_add(out, s, strlen(s));
    rp_buf_add(out, "\n", 1);
    free(s);
    return ready ? 200 : 503;
}

static void admin_read_cb(struct bufferevent *bev, void *arg)
{
    struct rp_admin_conn *a = arg;
    if (a->done)
        return;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t avail = evbuffer_get_length(in);
    size_t look = avail < RP_HTTP_MAX_HEAD ? avail : RP_HTTP_MAX_HEAD;
    const char *data = (const char *)evbuffer_pullup(in, (ssize_t)look);
    struct rp_http_request_head h;
    int n = rp_http_parse_request(data, look, 256, &h);
    if (n == RP_HTTP_NEED_MORE && avail < RP_HTTP_MAX_HEAD)
        return;
    if (n <= 0) {
        admin_reply(a, 400, "text/plain", "bad request\n", 12);
        return;
    }
    if (h.method != RP_HTTP_GET && h.method != RP_HTTP_HEAD) {
        admin_reply(a, 405, "text/plain", "GET or HEAD only\n", 17);
        return;
    }
    a->head = h.method == RP_HTTP_HEAD;
    size_t plen = h.target_len;
    const char *q = memchr(h.target, '?', plen);
    if (q)
        plen = (size_t)(q - h.target);
    struct rp_buf body;
    rp_buf_init(&body, 16 * 1024 * 1024);
    if (rp_strieq_n(h.target, plen, "/metrics")) {
        render_metrics(a->srv, &body);
        admin_reply(a, 200, "text/plain; version=0.0.4; charset=utf-8", body.data, body.len);
    } else if (rp_strieq_n(h.target, plen, "/healthz")) {
        admin_reply(a, 200, "text/plain", "ok\n", 3);
    } else if (rp_strieq_n(h.target, plen, "/readyz")) {
        int status = render_ready(a->srv, &body);
        admin_reply(a, status, "application/json", body.data, body.len);
    } else {
        admin_reply(a, 404, "text/plain", "not found\n", 10);
    }
    rp_buf_free(&body);
}

static void admin_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_admin_conn *a = arg;
    if (!a->done)
        admin_reply(a, 408, "text/plain", "request head not received in time\n", 34);
}

static void admin_write_cb(struct bufferevent *bev, void *arg)
{
    struct rp_admin_conn *a = arg;
    if (a->done && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        admin_free(a);
}

static void admin_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    admin_free(arg);
}

static void admin_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                            int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    struct rp_server *srv = arg;
    if (srv->n_admin_conns >= ADMIN_CONNS_MAX) {
        evutil_closesocket(fd);
        char more[64];
        if (rp_log_ration(&srv->admin_refused_log, "closed", more, sizeof(more)))
            rp_warn("admin listen: connection closed unanswered: %d admin connections open, "
                    "the most allowed%s",
                    ADMIN_CONNS_MAX, more);
        return;
    }
    struct rp_admin_conn *a = rp_xcalloc(1, sizeof(*a));
    a->srv = srv;
    /* Not BEV_OPT_DEFER_CALLBACKS: a deferred callback still queued when the loop ends (a
     * client hanging up as SIGTERM comes) holds a reference that bufferevent_free cannot
     * drop, and the connection would never be freed. Our callbacks are never nested: each
     * is called by libevent, which keeps the bufferevent alive across it. */
    a->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!a->bev) {
        evutil_closesocket(fd);
        free(a);
        return;
    }
    TAILQ_INSERT_TAIL(&srv->admin_conns, a, link);
    srv->n_admin_conns++;
    bufferevent_setcb(a->bev, admin_read_cb, admin_write_cb, admin_event_cb, a);
    struct timeval tv = {ADMIN_TIMEOUT_S, 0};
    bufferevent_set_timeouts(a->bev, &tv, &tv);
    a->deadline = evtimer_new(srv->base, admin_deadline_cb, a);
    if (a->deadline)
        evtimer_add(a->deadline, &tv);
    bufferevent_enable(a->bev, EV_READ | EV_WRITE);
}

static void admin_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_server *srv = arg;
    if (srv->admin)
        evconnlistener_enable(srv->admin);
}

/* A probe or a scrape waiting while descriptors ran out would spin the loop, as on the
 * registry listeners. */
static void admin_error_cb(struct evconnlistener *l, void *arg)
{
    struct rp_server *srv = arg;
    rp_server_accept_pause(l, srv->admin_resume_ev, "admin listen");
}

int rp_admin_start(struct rp_server *srv, const char *addr)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) < 0) {
        rp_error("admin listen %s: not an address", addr);
        return -1;
    }
    TAILQ_INIT(&srv->admin_conns);
    srv->admin = evconnlistener_new_bind(srv->base, admin_accept_cb, srv,
                                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
                                         (struct sockaddr *)&ss, sslen);
    if (!srv->admin) {
        rp_error("admin listen %s: %s (metrics and probes unavailable; still serving)", addr,
                 strerror(errno));
        return -1;
    }
    srv->admin_resume_ev = evtimer_new(srv->base, admin_resume_cb, srv);
    evconnlistener_set_error_cb(srv->admin, admin_error_cb);
    rp_info("admin listener on %s (/metrics, /healthz, /readyz)", addr);
    return 0;
}
