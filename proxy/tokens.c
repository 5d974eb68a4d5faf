/* SPDX-License-Identifier: Apache-2.0 */
/* tokens: token fetches shared per (registry, scope). However many requests need the same
 * token at once, the realm sees one request; auth/ decides what to send and parses the
 * answer, this file only performs it. */
#include "proxy.h"

#include <stdlib.h>
#include <string.h>

#define TOKEN_TIMEOUT_MS 30000L
/* Token fetches left without a waiter (their clients gone) that may go on, for the token
 * to serve the next request for the scope. Every distinct repository name an anonymous
 * client asks for is a scope, so without a bound a client that asks and hangs up, name
 * after name, kept a realm connection and its memory for each (up to TOKEN_TIMEOUT_MS
 * against a slow realm): beyond it the oldest such fetch is cancelled. */
#define TOKEN_ORPHANS_MAX 32

struct waiter {
    struct rp_fetch *fetch;
    TAILQ_ENTRY(waiter) link;
};
TAILQ_HEAD(waiter_list, waiter);

struct rp_token_fetch {
    struct rp_server *srv;
    struct rp_auth *auth;
    const struct rp_conf_registry *reg;
    char *scope;
    uint64_t generation; /* of auth when the request was made */
    uint64_t epoch;      /* rp_auth_challenge_epoch then: the realm asked */
    struct rp_xfer *xfer;
    struct rp_buf body;
    int64_t started_ms;
    bool waking; /* answered: its waiters are being woken, no new one may join */
    /* Why the answer was refused (a static string), for the error in place of curl's
     * "Failed writing received data to disk/application". */
    const char *refused;
    struct waiter_list waiters;
    TAILQ_ENTRY(rp_token_fetch) link;
};

static void fetch_free(struct rp_token_fetch *f)
{
    if (f->xfer)
        rp_xfer_cancel(f->xfer);
    free(f->scope);
    rp_buf_free(&f->body);
    free(f);
}

#define TOKEN_TOO_BIG "the token realm's answer exceeds 64 KiB"
_Static_assert(RP_ERROR_BODY_MAX == 64 * 1024, "TOKEN_TOO_BIG names RP_ERROR_BODY_MAX");

static int fetch_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    (void)status;
    struct rp_token_fetch *f = arg;
    if (h->length > RP_ERROR_BODY_MAX) {
        f->refused = TOKEN_TOO_BIG;
        return -1;
    }
    return 0;
}

static long fetch_data_cb(void *arg, const char *p, size_t n)
{
    struct rp_token_fetch *f = arg;
    if (rp_buf_add(&f->body, p, n) < 0) {
        f->refused = TOKEN_TOO_BIG;
        return -1;
    }
    return (long)n;
}

enum staleness { FRESH, STALE_CREDENTIALS, STALE_REALM };

/* Wakes every waiter, then frees f: with the answer (e, xe, err), or, when stale, told to
 * start over. Each waiter may finish (and free) itself, or another waiter, whose
 * rp_tokens_leave must still find it here: f stays listed until all are woken, closed to
 * newcomers (one retrying at once starts a fetch of its own rather than hearing this
 * answer again). */
static void wake_all(struct rp_token_fetch *f, enum staleness stale, int e, enum rp_xfer_error xe,
                     const char *err)
{
    f->waking = true;
    struct waiter *w;
    while ((w = TAILQ_FIRST(&f->waiters))) {
        TAILQ_REMOVE(&f->waiters, w, link);
        struct rp_fetch *waiting = w->fetch;
        free(w);
        if (stale != FRESH)
            rp_fetch_token_stale(waiting, stale == STALE_CREDENTIALS);
        else
            rp_fetch_token_ready(waiting, e, xe, err, f->started_ms);
    }
    TAILQ_REMOVE(&f->srv->token_fetches, f, link);
    fetch_free(f);
}

static void fetch_done_cb(void *arg, enum rp_xfer_error xe, int status, const char *err)
{
    bool ok = xe == RP_XFER_OK;
    struct rp_token_fetch *f = arg;
    f->xfer = NULL;
    if (f->refused && !ok)
        err = f->refused;
    if (f->generation != rp_auth_generation(f->auth)) {
        /* A reload replaced the credentials this token was asked with (they may have been
         * revoked, or belong to an account that may see more than the new one): the answer
         * is dropped unread, and each waiter starts over with the new credentials rather
         * than make its request with the old account's token. That costs the requests in
         * flight across a reload one more round trip and token fetch. */
        rp_info("token registry=%s status=%d ms=%lld discarded: the credentials changed in a "
                "reload",
                f->reg->name, status, (long long)(rp_now_ms() - f->started_ms));
        wake_all(f, STALE_CREDENTIALS, 0, xe, NULL);
        return;
    }
    if (f->epoch != rp_auth_challenge_epoch(f->auth)) {
        /* The registry named another realm (or service, or scheme) meanwhile: this realm's
         * token is one it may refuse, and a fresh token's 401 is final. Dropped unread like
         * the above, and each waiter asks the realm now named. */
        rp_info("token registry=%s status=%d ms=%lld discarded: the registry names another "
                "realm now",
                f->reg->name, status, (long long)(rp_now_ms() - f->started_ms));
        wake_all(f, STALE_REALM, 0, xe, NULL);
        return;
    }
    int e = rp_auth_token_response(f->auth, f->scope, ok ? status : 0, f->body.data, f->body.len,
                                   f->started_ms);
    rp_metrics_token(&f->srv->metrics, (size_t)(f->reg - f->srv->conf->registries),
                     e == RP_AUTH_OK);
    if (e == RP_AUTH_OK)
        rp_info("token registry=%s status=%d ms=%lld", f->reg->name, status,
                (long long)(rp_now_ms() - f->started_ms));
    else /* with nothing configured, no credentials were rejected: say what was refused */
        rp_warn("token registry=%s status=%d ms=%lld error=\"%s\"%s%s", f->reg->name, status,
                (long long)(rp_now_ms() - f->started_ms),
                e == RP_AUTH_E_REJECTED && !f->reg->user && !f->reg->identity_token
                    ? "anonymous token refused (no credentials configured)"
                    : rp_auth_strerror(e),
                err ? " detail=" : "", err ? err : "");
    wake_all(f, FRESH, e, xe, ok ? NULL : err);
}

static const struct rp_xfer_cb fetch_cb = {
    .on_headers_cb = fetch_headers_cb,
    .on_data_cb = fetch_data_cb,
    .on_done_cb = fetch_done_cb,
};

static void add_waiter(struct rp_token_fetch *tf, struct rp_fetch *f)
{
    struct waiter *w = rp_xcalloc(1, sizeof(*w));
    w->fetch = f;
    TAILQ_INSERT_TAIL(&tf->waiters, w, link);
}

int rp_tokens_wait(struct rp_server *srv, struct rp_auth *auth, const struct rp_conf_registry *reg,
                   const char *scope, struct rp_fetch *fetch)
{
    struct rp_token_fetch *f;
    TAILQ_FOREACH(f, &srv->token_fetches, link)
    {
        /* Not a request made with credentials a reload has since replaced, nor one to a
         * realm the registry has since stopped naming. */
        if (!f->waking && f->auth == auth && f->generation == rp_auth_generation(auth) &&
            f->epoch == rp_auth_challenge_epoch(auth) && strcmp(f->scope, scope) == 0) {
            add_waiter(f, fetch);
            return 0;
        }
    }
    char *url = NULL, *authorization = NULL, *post_body = NULL;
    int e = rp_auth_token_request(auth, scope, &url, &authorization, &post_body);
    if (e != RP_AUTH_OK) {
        rp_warn("token registry=%s error=\"%s\"", reg->name, rp_auth_strerror(e));
        free(url);
        rp_free_secret(authorization);
        return e;
    }
    f = rp_xcalloc(1, sizeof(*f));
    f->srv = srv;
    f->auth = auth;
    f->reg = reg;
    f->scope = rp_xstrdup(scope);
    f->generation = rp_auth_generation(auth);
    f->epoch = rp_auth_challenge_epoch(auth);
    f->started_ms = rp_now_ms();
    /* The answer holds the token, and arrives in as many pieces as the network likes. */
    rp_buf_init_secret(&f->body, RP_ERROR_BODY_MAX);
    TAILQ_INIT(&f->waiters);
    struct rp_xfer_opts o = {
        .url = url,
        .authorization = authorization,
        .post_body = post_body,
        .ca_file = reg->ca_file,
        .tls_verify = reg->tls_verify,
        .proxy = reg->proxy,
        .timeout_ms = TOKEN_TIMEOUT_MS,
    };
    f->xfer = rp_upstream_start(srv->up, &o, &fetch_cb, f);
    free(url);
    rp_free_secret(authorization);
    rp_free_secret(post_body);
    if (!f->xfer) {
        fetch_free(f);
        return RP_AUTH_E_REALM_ERROR;
    }
    TAILQ_INSERT_TAIL(&srv->token_fetches, f, link);
    add_waiter(f, fetch);
    return 0;
}

/* Cancels the oldest token fetches nobody waits for beyond TOKEN_ORPHANS_MAX. One being
 * answered (waking) is left alone: wake_all still walks it. */
static void trim_orphans(struct rp_server *srv)
{
    size_t n = 0;
    struct rp_token_fetch *f, *next;
    TAILQ_FOREACH(f, &srv->token_fetches, link)
    n += !f->waking && TAILQ_EMPTY(&f->waiters);
    for (f = TAILQ_FIRST(&srv->token_fetches); f && n > TOKEN_ORPHANS_MAX; f = next) {
        next = TAILQ_NEXT(f, link);
        if (f->waking || !TAILQ_EMPTY(&f->waiters))
            continue;
        rp_debug("token registry=%s: request cancelled, no client waits for it", f->reg->name);
        TAILQ_REMOVE(&srv->token_fetches, f, link);
        fetch_free(f);
        n--;
    }
}

void rp_tokens_leave(struct rp_server *srv, struct rp_fetch *fetch)
{
    /* The token request goes on without this waiter: its token serves the next one (as
     * long as there are few such requests, trim_orphans). */
    struct rp_token_fetch *f;
    TAILQ_FOREACH(f, &srv->token_fetches, link)
    {
        struct waiter *w;
        TAILQ_FOREACH(w, &f->waiters, link)
        {
            if (w->fetch == fetch) {
                TAILQ_REMOVE(&f->waiters, w, link);
                free(w);
                if (TAILQ_EMPTY(&f->waiters) && !f->waking)
                    trim_orphans(srv);
                return;
            }
        }
    }
}

void rp_tokens_free_all(struct rp_server *srv)
{
    struct rp_token_fetch *f;
    while ((f = TAILQ_FIRST(&srv->token_fetches))) {
        TAILQ_REMOVE(&srv->token_fetches, f, link);
        struct waiter *w;
        while ((w = TAILQ_FIRST(&f->waiters))) {
            TAILQ_REMOVE(&f->waiters, w, link);
            free(w);
        }
        fetch_free(f);
    }
}
