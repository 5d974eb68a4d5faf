/* SPDX-License-Identifier: Apache-2.0 */
/* fetch: one authenticated exchange with a registry. It owns the credential dance (auth/
 * decides, tokens.c shares token requests), the single retry per 401, and blob redirects,
 * so request.c and fill.c only see the final answer. */
#include "proxy.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#define METADATA_TIMEOUT_MS 60000L
#define STALL_TIMEOUT_S 60L
#define AUTH_RETRIES 2 /* first contact (anonymous, learns the challenge) + one refresh */

enum fetch_state {
    F_AUTH,       /* decide what credentials to attach */
    F_WAIT_TOKEN, /* a shared token request is under way */
    F_SEND,       /* start the transfer to url */
    F_WAIT,       /* transfer under way */
    F_DONE,
};

struct rp_fetch {
    struct rp_server *srv;
    enum fetch_state state;
    const struct rp_conf_registry *reg;
    struct rp_auth *auth;
    struct rp_fetch_cb cb;
    void *arg;
    char *scope;
    char *registry_url; /* reg->url + path */
    char *url;          /* current URL: registry_url or a redirect target */
    bool url_is_registry;
    char *authorization; /* secret */
    /* rp_auth_generation when authorization was made: a 401 that answers credentials a
     * reload has since replaced says nothing about the new ones. */
    uint64_t authorization_generation;
    char *accept, *range;
    bool head, stream, follow_redirects;
    int auth_retries;
    /* The token being sent was fetched for this request: a 401 for it is the realm's
     * verdict on the scope (insufficient_scope), which another fetch would only repeat,
     * unless a reload has changed the credentials since (token_generation). */
    bool token_fresh;
    uint64_t token_generation;
    /* When the token this fetch waited for was asked for: F_AUTH judges that token as of
     * then. A realm slower than the token's life less the margin gives one already past
     * its keep time by the clock that counts from the asking; judged by the clock at its
     * arrival, it was dropped and asked for again, by the same request, without end. */
    int64_t token_asked_ms;
    int redirects;
    struct rp_xfer *xfer;
    bool headed; /* the current transfer's final response head arrived (xfer_headers_cb) */
    bool body_before_head; /* and body bytes came without one: refused (xfer_data_cb) */
    bool final;            /* the current transfer's response goes to the owner */
    size_t drained;        /* body bytes of a non-final answer (a redirect, a retried 401) so far */
    /* A final answer that is not a success: its body goes to the owner up to
     * RP_ERROR_BODY_MAX, then the transfer ends there and counts as complete (err_cut). A
     * blob's transfer has no total timeout, and an error body that never ends would hold the
     * request, and every client waiting on it, for good. */
    size_t err_bytes;
    bool err_cut;
    int status;
    char *location;
    char *www_authenticate;
    struct rp_fetch_result res;
    char *res_err;
    struct event *defer;       /* reports a failure that happened before any I/O */
    struct event *deadline_ev; /* rp_fetch_opts.deadline_ms */
    int64_t sent_ms;           /* when the current transfer started */
    bool in_token_wait;
};

static void fetch_free(struct rp_fetch *f)
{
    if (f->xfer)
        rp_xfer_cancel(f->xfer);
    if (f->in_token_wait)
        rp_tokens_leave(f->srv, f);
    if (f->defer)
        event_free(f->defer);
    if (f->deadline_ev)
        event_free(f->deadline_ev);
    free(f->scope);
    free(f->registry_url);
    free(f->url);
    rp_free_secret(f->authorization);
    free(f->accept);
    free(f->range);
    free(f->location);
    free(f->www_authenticate);
    free(f->res_err);
    free(f);
}

static void fetch_drive(struct rp_fetch *f);

static void report(struct rp_fetch *f)
{
    f->state = F_DONE;
    f->res.err = f->res_err;
    struct rp_fetch_result res = f->res;
    void (*done)(void *, const struct rp_fetch_result *) = f->cb.on_done_cb;
    void *arg = f->arg;
    /* The owner may cancel or start fetches from its callback; ours is over. */
    f->cb.on_done_cb = NULL;
    done(arg, &res);
    fetch_free(f);
}

static void fail(struct rp_fetch *f, enum rp_fetch_fail why, const char *err)
{
    f->res.fail = why;
    if (err && !f->res_err)
        f->res_err = rp_xstrdup(err);
    report(f);
}

static void defer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    report(arg);
}

/* Failures before any I/O are reported from the loop, never from inside rp_fetch_start. */
static void fail_later(struct rp_fetch *f, enum rp_fetch_fail why, const char *err)
{
    f->res.fail = why;
    if (err && !f->res_err)
        f->res_err = rp_xstrdup(err);
    f->state = F_DONE;
    f->defer = evtimer_new(f->srv->base, defer_cb, f);
    struct timeval now = {0, 0};
    evtimer_add(f->defer, &now);
}

static int drained_too_much(struct rp_fetch *f, int status)
{
    f->res.fail = status >= 300 && status < 400 ? RP_FETCH_E_REDIRECT : RP_FETCH_E_TRANSPORT;
    if (!f->res_err)
        f->res_err = rp_xasprintf("upstream's %d answer has a body over %d bytes", status,
                                  RP_ERROR_BODY_MAX);
    return -1;
}

static int xfer_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    struct rp_fetch *f = arg;
    f->headed = true;
    f->status = status;
    f->final = true;
    bool fresh = f->token_fresh && f->token_generation == rp_auth_generation(f->auth);
    /* Like rp_fetch_token_stale: 401s made under replaced credentials do not count. */
    if (status == 401 && f->authorization_generation != rp_auth_generation(f->auth))
        f->auth_retries = 0;
    if (status == 401 && f->url_is_registry && f->auth_retries < AUTH_RETRIES && !fresh) {
        f->final = false;
        free(f->www_authenticate);
        f->www_authenticate = h->www_authenticate ? rp_xstrdup(h->www_authenticate) : NULL;
    } else if (f->follow_redirects && h->location &&
               (status == 301 || status == 302 || status == 303 || status == 307 ||
                status == 308)) {
        f->final = false;
        free(f->location);
        f->location = rp_xstrdup(h->location);
    }
    if (!f->final) {
        /* The body of a retried 401 or a redirect is drained and ignored, up to the bound
         * every error body has: a blob's transfer has no total timeout to stop an endless
         * one. */
        f->drained = 0;
        if (h->length > RP_ERROR_BODY_MAX)
            return drained_too_much(f, status);
        return 0;
    }
    f->res.status = status;
    f->res.authorized = f->url_is_registry && f->authorization != NULL;
    f->res.from_redirect = !f->url_is_registry;
    f->err_bytes = 0;
    f->err_cut = false;
    /* We send no Accept-Encoding, so curl decodes nothing: encoded content would be cached
     * and served as if it were the manifest (a blob's digest would catch it; a tag's
     * manifest without Docker-Content-Digest would not). */
    if (status >= 200 && status < 300 && h->content_encoding &&
        !rp_strieq_n(h->content_encoding, strlen(h->content_encoding), "identity")) {
        f->res.fail = RP_FETCH_E_OWNER;
        if (!f->res_err && rp_header_value_safe(h->content_encoding))
            f->res_err = rp_xasprintf("upstream sent Content-Encoding %.64s, which was not asked "
                                      "for",
                                      h->content_encoding);
        return -1;
    }
    if (f->cb.on_headers_cb(f->arg, status, h) < 0) {
        f->res.fail = RP_FETCH_E_OWNER;
        return -1;
    }
    return 0;
}

static long xfer_data_cb(void *arg, const char *p, size_t n)
{
    struct rp_fetch *f = arg;
    if (!f->headed) {
        /* A body before any final head: after a 101 (see xfer_done_cb), refused at once,
         * however long it is, rather than drained as a redirect's or a 401's would be. */
        f->body_before_head = true;
        return -1;
    }
    if (!f->final) {
        f->drained += n;
        return f->drained > RP_ERROR_BODY_MAX ? drained_too_much(f, f->status) : (long)n;
    }
    bool error = f->status < 200 || f->status > 299;
    size_t take = n;
    if (error) {
        size_t room = RP_ERROR_BODY_MAX - f->err_bytes;
        if (take > room)
            take = room;
        f->err_bytes += take;
    }
    long r = take ? f->cb.on_data_cb(f->arg, p, take) : 0;
    if (r < 0) {
        f->res.fail = RP_FETCH_E_OWNER;
        return r;
    }
    if (error && take < n && r == (long)take) {
        f->err_cut = true; /* the rest is not read: the answer is complete as far as we go */
        return -1;
    }
    return r == (long)take ? (long)n : r;
}

static int follow_redirect(struct rp_fetch *f);

static void xfer_done_cb(void *arg, enum rp_xfer_error xe, int status, const char *err)
{
    struct rp_fetch *f = arg;
    f->xfer = NULL;
    if (status)
        f->status = status;
    if (f->err_cut)
        xe = RP_XFER_OK;
    /* The registry answered once a head (or a 1xx's body, which ends in a write error of
     * ours) arrived: counted by that status, as the access line's upstream says, also when
     * the body failed afterwards. "other" is for no answer. */
    bool answered = xe == RP_XFER_OK || f->headed || f->body_before_head;
    rp_metrics_upstream(&f->srv->metrics, (size_t)(f->reg - f->srv->conf->registries),
                        answered ? f->status : 0, rp_now_ms() - f->sent_ms);
    /* The registry's own reachability (a CDN's is not its): see rp_server_registry_silent. */
    if (f->url_is_registry && (answered || xe == RP_XFER_E_UNREACHABLE || xe == RP_XFER_E_TIMEOUT))
        rp_server_upstream_seen(f->srv, f->reg, answered, f->sent_ms);
    if (f->body_before_head || (xe == RP_XFER_OK && !f->headed)) {
        /* No final head ever came: a 101 nobody asked for ends curl's header parsing, and
         * the rest arrives as a body. Neither a retried 401 nor a redirect (whose Location
         * would be NULL, or the previous hop's, fetched again up to RP_REDIRECTS_MAX). */
        f->res.status = f->status;
        if (!f->res_err)
            f->res_err =
                rp_xasprintf("upstream answered %d and no final answer followed", f->status);
        fail(f, RP_FETCH_E_OWNER, NULL);
        return;
    }
    if (xe != RP_XFER_OK) {
        f->res.xfer_err = xe;
        if (!f->res.status)
            f->res.status = status; /* an answer refused in its head: upstream is reachable */
        if (f->res.fail == RP_FETCH_OK)
            f->res.fail = RP_FETCH_E_TRANSPORT;
        fail(f, f->res.fail, err); /* a res_err set before (drained_too_much) comes first */
        return;
    }
    if (f->final) {
        report(f);
        return;
    }
    if (f->status == 401) {
        f->auth_retries++;
        /* Sent with credentials a reload has replaced (Basic with the old password): not a
         * verdict on the new ones, which the retry sends. */
        bool replaced = f->authorization_generation != rp_auth_generation(f->auth);
        int e = rp_auth_on_unauthorized(f->auth, f->scope, f->www_authenticate,
                                        replaced ? NULL : f->authorization);
        if (e != RP_AUTH_OK) {
            f->res.status = 401;
            f->res.auth_err = e;
            fail(f, RP_FETCH_E_AUTH, rp_auth_strerror(e));
            return;
        }
        f->state = F_AUTH;
        fetch_drive(f);
        return;
    }
    if (follow_redirect(f) == 0)
        fetch_drive(f);
}

static const struct rp_xfer_cb xfer_cb = {
    .on_headers_cb = xfer_headers_cb,
    .on_data_cb = xfer_data_cb,
    .on_done_cb = xfer_done_cb,
};

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

/* Resolves Location against the current URL. https only (http only for a registry that
 * is itself configured as http, and never from https to http); credentials go along only
 * when the target is the registry's own origin. */
static int follow_redirect(struct rp_fetch *f)
{
    if (++f->redirects > RP_REDIRECTS_MAX) {
        fail(f, RP_FETCH_E_REDIRECT, "too many redirects");
        return -1;
    }
    CURLU *u = curl_url();
    char *next = NULL, *scheme = NULL;
    bool parsed = curl_url_set(u, CURLUPART_URL, f->url, 0) == CURLUE_OK &&
                  curl_url_set(u, CURLUPART_URL, f->location, 0) == CURLUE_OK &&
                  curl_url_get(u, CURLUPART_URL, &next, 0) == CURLUE_OK &&
                  curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK;
    curl_url_cleanup(u);
    if (!parsed) {
        curl_free(next);
        curl_free(scheme);
        fail(f, RP_FETCH_E_REDIRECT, "redirect to a malformed location");
        return -1;
    }
    bool allowed = strcmp(scheme, "https") == 0 ||
                   (strcmp(scheme, "http") == 0 && strcmp(f->reg->scheme, "http") == 0 &&
                    strncmp(f->url, "http:", 5) == 0);
    curl_free(scheme);
    if (!allowed) {
        curl_free(next);
        fail(f, RP_FETCH_E_REDIRECT, "redirect to a scheme that is not allowed (https only)");
        return -1;
    }
    free(f->url);
    f->url = rp_xstrdup(next);
    curl_free(next);
    f->url_is_registry = same_origin(f->url, f->reg->url);
    f->state = F_SEND;
    return 0;
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_fetch *f = arg;
    if (f->state == F_DONE)
        return; /* a failure already waits in defer */
    /* The registry itself keeps us waiting (a realm or a CDN is not it): later requests
     * need not wait for it as long (rp_server_registry_silent). Any answer undoes that. */
    if (f->xfer && f->url_is_registry && !f->headed && !f->body_before_head)
        rp_server_upstream_seen(f->srv, f->reg, false, f->sent_ms);
    if (f->cb.on_deadline_cb)
        f->cb.on_deadline_cb(f->arg, f->in_token_wait);
}

void rp_fetch_token_ready(struct rp_fetch *f, int err, enum rp_xfer_error xe, const char *detail,
                          int64_t asked_ms)
{
    f->in_token_wait = false;
    if (err != RP_AUTH_OK) {
        f->res.token_err = err;
        f->res.xfer_err = xe;
        fail(f, RP_FETCH_E_TOKEN, detail ? detail : rp_auth_strerror(err));
        return;
    }
    f->token_fresh = true;
    f->token_generation = rp_auth_generation(f->auth);
    f->token_asked_ms = asked_ms;
    f->state = F_AUTH;
    fetch_drive(f);
}

void rp_fetch_token_stale(struct rp_fetch *f, bool credentials)
{
    f->in_token_wait = false;
    /* The reload also forgot the challenge: f must learn it again from a 401, so its 401s
     * so far, made under the old credentials, do not count against it. A realm the
     * registry moved away from needs no 401 more: the new one is known already. */
    if (credentials)
        f->auth_retries = 0;
    f->token_fresh = false;
    f->state = F_AUTH;
    fetch_drive(f);
}

static void fetch_drive(struct rp_fetch *f)
{
    for (;;) {
        switch (f->state) {
        case F_AUTH: {
            rp_free_secret(f->authorization);
            f->authorization = NULL;
            f->authorization_generation = rp_auth_generation(f->auth);
            /* Just woken with a token (F_AUTH follows no 401 for a fresh one): the freshest
             * there is, sent however long the realm took; judged by the clock's now, a token
             * the realm was slow to give would be asked for again, and again. */
            bool woken = f->token_fresh && f->token_generation == f->authorization_generation;
            if (rp_auth_prepare(f->auth, f->scope, woken ? f->token_asked_ms : rp_now_ms(),
                                &f->authorization) == RP_AUTH_NEED_TOKEN) {
                int e = rp_tokens_wait(f->srv, f->auth, f->reg, f->scope, f);
                if (e == 0) {
                    f->state = F_WAIT_TOKEN;
                    f->in_token_wait = true;
                    return;
                }
                f->res.token_err = e;
                fail_later(f, RP_FETCH_E_TOKEN, rp_auth_strerror(e));
                return;
            }
            free(f->url);
            f->url = rp_xstrdup(f->registry_url);
            f->url_is_registry = true;
            f->state = F_SEND;
            break;
        }
        case F_SEND: {
            struct rp_xfer_opts o = {
                .url = f->url,
                .head = f->head,
                /* Credentials only ever go to the registry's own origin, never to a
                 * redirect target (CDNs get signed URLs, not our secrets). */
                .authorization = f->url_is_registry ? f->authorization : NULL,
                .accept = f->accept,
                .range = f->range,
                .ca_file = f->reg->ca_file,
                .tls_verify = f->reg->tls_verify,
                .proxy = f->reg->proxy,
                .timeout_ms = f->stream ? 0 : METADATA_TIMEOUT_MS,
                .stall_timeout_s = STALL_TIMEOUT_S,
            };
            f->headed = false;
            f->body_before_head = false;
            f->final = false;
            f->status = 0;
            f->state = F_WAIT;
            f->sent_ms = rp_now_ms();
            f->xfer = rp_upstream_start(f->srv->up, &o, &xfer_cb, f);
            if (!f->xfer)
                fail_later(f, RP_FETCH_E_TRANSPORT, "cannot start the upstream request");
            return;
        }
        case F_WAIT_TOKEN:
        case F_WAIT:
        case F_DONE:
            return;
        }
    }
}

struct rp_fetch *rp_fetch_start(struct rp_server *srv, const struct rp_fetch_opts *o,
                                const struct rp_fetch_cb *cb, void *arg)
{
    struct rp_fetch *f = rp_xcalloc(1, sizeof(*f));
    f->srv = srv;
    f->reg = o->reg;
    f->auth = rp_server_auth(srv, o->reg);
    f->cb = *cb;
    f->arg = arg;
    f->scope = rp_auth_scope_pull(o->name);
    f->registry_url = rp_xasprintf("%s%s", o->reg->url, o->path);
    f->accept = o->accept ? rp_xstrdup(o->accept) : NULL;
    f->range = o->range ? rp_xstrdup(o->range) : NULL;
    f->head = o->head;
    f->stream = o->stream;
    f->follow_redirects = o->follow_redirects;
    f->state = F_AUTH;
    if (o->deadline_ms > 0 && cb->on_deadline_cb) {
        f->deadline_ev = evtimer_new(srv->base, deadline_cb, f);
        struct timeval tv = {(time_t)(o->deadline_ms / 1000),
                             (suseconds_t)(o->deadline_ms % 1000 * 1000)};
        evtimer_add(f->deadline_ev, &tv);
    }
    fetch_drive(f);
    return f;
}

void rp_fetch_cancel(struct rp_fetch *f)
{
    if (!f)
        return;
    /* A request under way (its client left, a fill nobody waits for) was sent all the
     * same: counted as xfer_done_cb would, by the status of a head that arrived, as the
     * access line's upstream says, else as no answer. */
    if (f->xfer)
        rp_metrics_upstream(&f->srv->metrics, (size_t)(f->reg - f->srv->conf->registries),
                            f->headed || f->body_before_head ? f->status : 0,
                            rp_now_ms() - f->sent_ms);
    fetch_free(f);
}

void rp_fetch_rebind(struct rp_fetch *f, const struct rp_fetch_cb *cb, void *arg)
{
    f->cb = *cb;
    f->arg = arg;
}

void rp_fetch_resume(struct rp_fetch *f)
{
    if (f && f->xfer)
        rp_xfer_resume(f->xfer);
}
