/* SPDX-License-Identifier: Apache-2.0 */
/* reload: applies a re-read configuration on SIGHUP or when a watched file changes (a
 * credential file, a listener's certificate, key or htpasswd file). In-flight pulls keep
 * going: listeners, registries and the cache stay as they are and only their values change
 * in place (credentials, TLS settings and certificates, realms, allow lists, client
 * accounts, repository lists, checks, tag freshness, max_size, logging). Tokens obtained
 * with the old credentials (or realms, or TLS settings) are dropped; other registries keep
 * theirs. A new file that fails to parse, or that adds, removes, re-points or takes on or
 * off line registries or listeners, leaves the running configuration untouched and says
 * why; a changed admin listen or core_dumps is logged as applying at the next start. */
#include "proxy.h"

#include <event2/event.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define WATCH_INTERVAL_S 2

#define SWAP(a, b)                                                                                 \
    do {                                                                                           \
        __typeof__(a) swap_tmp_ = (a);                                                             \
        (a) = (b);                                                                                 \
        (b) = swap_tmp_;                                                                           \
    } while (0)

static bool same_shape(const struct rp_conf *a, const struct rp_conf *b, const char **why)
{
    if (a->n_registries != b->n_registries || a->n_listens != b->n_listens) {
        *why = "registries or listeners were added or removed";
        return false;
    }
    for (size_t i = 0; i < a->n_registries; i++) {
        if (strcmp(a->registries[i].name, b->registries[i].name) != 0 ||
            strcmp(a->registries[i].url, b->registries[i].url) != 0) {
            *why = "a registry's name or url changed";
            return false;
        }
        /* An offline registry is never contacted; going on or off line is a restart. */
        if (a->registries[i].offline != b->registries[i].offline) {
            *why = "a registry's offline setting changed";
            return false;
        }
    }
    for (size_t i = 0; i < a->n_listens; i++) {
        const struct rp_conf_listen *x = &a->listens[i], *y = &b->listens[i];
        if (strcmp(x->addr, y->addr) != 0 || (x->def == NULL) != (y->def == NULL) ||
            (x->def && strcmp(x->def->name, y->def->name) != 0)) {
            *why = "a listener's address or default registry changed";
            return false;
        }
    }
    if (strcmp(a->cache.dir, b->cache.dir) != 0) {
        *why = "the cache directory changed";
        return false;
    }
    return true;
}

static bool same_pin_patterns(const struct rp_conf *a, const struct rp_conf *b)
{
    if (a->cache.n_pins != b->cache.n_pins)
        return false;
    for (size_t i = 0; i < a->cache.n_pins; i++)
        if (strcmp(a->cache.pins[i], b->cache.pins[i]) != 0)
            return false;
    return true;
}

/* Pins again from scratch when the patterns or the pins file changed, so that a pattern or
 * a line removed lets its content go (and one added holds what is cached already). Reading
 * every link file holds the loop for a while on a big cache (1.1-1.5 s for 100,000 links
 * on the 2-core development machine, page cache warm): not done on reloads that change
 * neither. */
static void repin_if_changed(struct rp_server *srv, bool patterns_changed)
{
    struct rp_pins_stamp st;
    rp_pins_stamp(srv->conf->cache.dir, &st);
    if (!patterns_changed && memcmp(&st, &srv->pins_stamp, sizeof(st)) == 0)
        return;
    /* A pins file that cannot be read keeps the pins in force; its stamp is not taken, so
     * the next reload reads it again. */
    if (rp_pins_reapply(srv->cache, srv->conf) == 0)
        srv->pins_stamp = st;
    size_t evicted = rp_cache_evict(srv->cache);
    if (evicted)
        rp_info("reload: %zu cache entries no longer pinned were evicted to max_size", evicted);
}

static bool same_opt_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Whether tokens and the challenge learned for the running registry may outlive the reload:
 * the same credentials (as read from their files), the same realms they may go to, and the
 * same way of reaching the registry and its realm (a token fetched with tls_verify off, or
 * through another egress proxy, is not kept once the operator tightened that). */
static bool same_auth(const struct rp_conf_registry *a, const struct rp_conf_registry *b)
{
    if (!same_opt_str(a->user, b->user) || !same_opt_str(a->password, b->password) ||
        !same_opt_str(a->identity_token, b->identity_token) || a->tls_verify != b->tls_verify ||
        !same_opt_str(a->ca_file, b->ca_file) || !same_opt_str(a->proxy, b->proxy) ||
        a->n_token_realms != b->n_token_realms)
        return false;
    for (size_t i = 0; i < a->n_token_realms; i++)
        if (strcmp(a->token_realms[i], b->token_realms[i]) != 0)
            return false;
    return true;
}

/* Moves the new values into the running registry; the old ones end up in `fresh`, which
 * the caller frees (secrets are zeroed there). */
static void swap_registry(struct rp_conf_registry *run, struct rp_conf_registry *fresh)
{
    SWAP(run->user, fresh->user);
    SWAP(run->password, fresh->password);
    SWAP(run->password_file, fresh->password_file);
    SWAP(run->auth_file, fresh->auth_file);
    SWAP(run->identity_token, fresh->identity_token);
    SWAP(run->allow_readable_credentials, fresh->allow_readable_credentials);
    SWAP(run->tls_verify, fresh->tls_verify);
    SWAP(run->ca_file, fresh->ca_file);
    SWAP(run->proxy, fresh->proxy);
    SWAP(run->token_realms, fresh->token_realms);
    SWAP(run->n_token_realms, fresh->n_token_realms);
    SWAP(run->test_image, fresh->test_image);
    SWAP(run->test_login, fresh->test_login);
    SWAP(run->tag_ttl_ms, fresh->tag_ttl_ms);
    SWAP(run->repos, fresh->repos);
    SWAP(run->n_repos, fresh->n_repos);
}

int rp_reload(struct rp_server *srv, const char *why)
{
    struct rp_conf *run = srv->conf;
    if (strcmp(run->source, "<embedded>") == 0) {
        rp_info("reload (%s): the embedded configuration cannot change", why);
        return 0;
    }
    char err[512];
    struct rp_conf *fresh = NULL;
    if (rp_conf_load_file(run->source, &fresh, err, sizeof(err)) != 0) {
        rp_error("reload (%s) refused, still serving the previous configuration: %s", why, err);
        return -1;
    }
    const char *shape_why = NULL;
    if (!same_shape(run, fresh, &shape_why)) {
        rp_error("reload (%s) refused, still serving the previous configuration: %s; "
                 "restart regproxy to apply that",
                 why, shape_why);
        rp_conf_free(fresh);
        return -1;
    }
    if (rp_server_reload_listeners(srv, fresh) != 0) {
        rp_error("reload (%s) refused, still serving the previous configuration: a "
                 "listener's tls_cert, tls_key, allow or htpasswd did not load (see above)",
                 why);
        rp_conf_free(fresh);
        return -1;
    }
    bool conns_changed = false;
    for (size_t i = 0; i < run->n_listens; i++) {
        conns_changed |= run->listens[i].max_connections != fresh->listens[i].max_connections;
        SWAP(run->listens[i].tls_cert, fresh->listens[i].tls_cert);
        SWAP(run->listens[i].tls_key, fresh->listens[i].tls_key);
        SWAP(run->listens[i].allow, fresh->listens[i].allow);
        SWAP(run->listens[i].n_allow, fresh->listens[i].n_allow);
        SWAP(run->listens[i].htpasswd, fresh->listens[i].htpasswd);
        SWAP(run->listens[i].max_connections, fresh->listens[i].max_connections);
        SWAP(run->listens[i].idle_timeout_ms, fresh->listens[i].idle_timeout_ms);
    }
    SWAP(run->admin.log_format, fresh->admin.log_format);
    SWAP(run->admin.log_level, fresh->admin.log_level);
    SWAP(run->admin.drain_timeout_ms, fresh->admin.drain_timeout_ms);
    rp_server_apply_logging(run);
    if (conns_changed)
        rp_server_check_nofile(run, why);
    size_t reset = 0;
    for (size_t i = 0; i < run->n_registries; i++) {
        bool keep = same_auth(&run->registries[i], &fresh->registries[i]);
        swap_registry(&run->registries[i], &fresh->registries[i]);
        /* Tokens issued for the old credentials go: the next request fetches anew, and a
         * token fetch under way is not joined or kept. A registry whose credentials did not
         * change keeps its tokens (every reload used to cost each registry a 401 and a
         * token fetch, and a waiting request a fetch thrown away). */
        if (!keep) {
            rp_auth_reset(srv->auths[i]);
            reset++;
        }
    }
    /* What a reload cannot change is said, not silently kept. */
    if (strcmp(run->admin.listen, fresh->admin.listen) != 0)
        rp_warn("reload (%s): [admin] listen changed; it applies at the next start", why);
    if (run->admin.core_dumps != fresh->admin.core_dumps)
        rp_warn("reload (%s): [admin] core_dumps changed; it applies at the next start", why);
    bool size_changed = run->cache.max_size != fresh->cache.max_size;
    SWAP(run->cache.max_size, fresh->cache.max_size);
    rp_cache_set_max_size(srv->cache, run->cache.max_size);
    SWAP(run->cache.tag_ttl_ms, fresh->cache.tag_ttl_ms);
    SWAP(run->cache.max_stale_ms, fresh->cache.max_stale_ms);
    SWAP(run->cache.revalidate_timeout_ms, fresh->cache.revalidate_timeout_ms);
    bool scrub_changed = run->cache.scrub_interval_ms != fresh->cache.scrub_interval_ms;
    SWAP(run->cache.scrub_interval_ms, fresh->cache.scrub_interval_ms);
    SWAP(run->cache.scrub_rate, fresh->cache.scrub_rate);
    if (scrub_changed)
        rp_scrub_reconfigured(srv->scrub);
    bool patterns_changed = !same_pin_patterns(run, fresh);
    SWAP(run->cache.pins, fresh->cache.pins);
    SWAP(run->cache.n_pins, fresh->cache.n_pins);
    SWAP(run->watch, fresh->watch);
    SWAP(run->n_watch, fresh->n_watch);
    SWAP(run->warnings, fresh->warnings);
    SWAP(run->n_warnings, fresh->n_warnings);
    rp_conf_free(fresh);
    for (size_t i = 0; i < run->n_warnings; i++)
        rp_warn("config: %s", run->warnings[i]);
    rp_info("reload (%s): configuration applied; tokens dropped for %zu of %zu registries "
            "(credentials, realms or TLS settings changed)",
            why, reset, run->n_registries);
    repin_if_changed(srv, patterns_changed);
    if (size_changed) {
        /* On the loop, like the repinning above: a max_size lowered far evicts many entries
         * at once, an unlink each, and requests wait meanwhile. Rare, and asked for. */
        size_t evicted = rp_cache_evict(srv->cache);
        rp_info("reload (%s): max_size is now %llu bytes%s; %zu cache entries evicted to it", why,
                (unsigned long long)run->cache.max_size, run->cache.max_size ? "" : " (unbounded)",
                evicted);
    }
    rp_server_checks_start(srv);
    return 0;
}

/* A refused reload was tried with the files as they were when it began: the watch waits
 * for the next change (the rest of a rotation, say) instead of retrying, and logging, every
 * interval. The configuration file itself is not watched (a change to it waits for
 * SIGHUP), except while a refused reload is pending: a credential rotated while the file
 * was broken is applied once the file is fixed. */
static void reload_or_rearm(struct rp_server *srv, const char *why)
{
    if (srv->stopping) {
        /* Draining: READY=1 after STOPPING=1 would tell systemd the unit is back, and a new
         * configuration would start login checks for a proxy that is going away. */
        rp_info("reload (%s) ignored: shutting down", why);
        /* Not rearmed, a changed file would be found again, and this said, at every look
         * for as long as the drain lasts: the watch stops (a SIGHUP is still answered). */
        if (srv->watch_ev)
            event_del(srv->watch_ev);
        return;
    }
    /* systemd shows the unit reloading until READY=1 (MONOTONIC_USEC: what Type=notify-reload
     * units must send with it). */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char state[96];
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    rp_server_notify(srv, state);
    struct rp_conf_watch *now = rp_conf_watch_now(srv->conf);
    struct rp_conf_watch source;
    rp_conf_stamp(srv->conf->source, &source);
    if (rp_reload(srv, why) != 0) {
        rp_conf_watch_rearm(srv->conf, now);
        srv->reload_refused = true;
        srv->refused_source = source;
        srv->metrics.reloads_refused++;
    } else {
        srv->reload_refused = false;
        srv->metrics.reloads_applied++;
    }
    /* Refused, the proxy serves on with what the file no longer says (a renewed certificate
     * not taken, a rotated password not used): /metrics and the unit's status say so, not
     * only the log. */
    srv->metrics.last_reload_refused = srv->reload_refused;
    free(now);
    rp_server_notify(srv, srv->reload_refused
                              ? "READY=1\nSTATUS=serving; the last reload was refused, the "
                                "previous configuration is kept (see the log)"
                              : "READY=1\nSTATUS=serving");
}

static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_server *srv = arg;
    if (rp_conf_files_changed(srv->conf))
        reload_or_rearm(srv, "a watched file changed");
    else if (srv->reload_refused && rp_conf_stamp_differs(&srv->refused_source, srv->conf->source))
        reload_or_rearm(srv, "the configuration changed after a refused reload");
}

static void sighup_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reload_or_rearm(arg, "SIGHUP");
}

void rp_reload_init(struct rp_server *srv)
{
    srv->sig_hup = evsignal_new(srv->base, SIGHUP, sighup_cb, srv);
    evsignal_add(srv->sig_hup, NULL);
    srv->watch_ev = event_new(srv->base, -1, EV_PERSIST, watch_cb, srv);
    struct timeval tv = {WATCH_INTERVAL_S, 0};
    event_add(srv->watch_ev, &tv);
}

void rp_reload_fini(struct rp_server *srv)
{
    if (srv->sig_hup)
        event_free(srv->sig_hup);
    if (srv->watch_ev)
        event_free(srv->watch_ev);
}
