/* SPDX-License-Identifier: Apache-2.0 */
/* check: logs in to each registry the way a pull would (ping, token flow, a manifest
 * request for its test_image) and says in one line whether it works, or precisely why
 * not. `regproxy check` prints the lines; `serve` logs them at start-up. */
#include "proxy.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_ACCEPT                                                                               \
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "        \
    "application/vnd.docker.distribution.manifest.list.v2+json, "                                  \
    "application/vnd.docker.distribution.manifest.v2+json"

enum check_step { STEP_PING, STEP_MANIFEST };

struct rp_check {
    struct rp_server *srv;
    const struct rp_conf_registry *reg;
    enum check_step step;
    char name[RP_NAME_MAX + 1];
    char ref[RP_DIGEST_MAX + 1];
    char *image;   /* test_image as when the check started: a reload may change the registry's */
    bool ping_401; /* the ping's 401, not a verdict: the manifest request is (see below) */
    bool get;      /* the manifest asked for with GET: HEAD was refused */
    struct rp_fetch *fetch;
    rp_check_done_cb done;
    void *arg;
    TAILQ_ENTRY(rp_check) link;
};

static void check_finish(struct rp_check *c, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void check_finish(struct rp_check *c, bool ok, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* The line quotes upstream's words (a realm, an error): no control character or double
     * quote may forge a line or a field of the text log, or of /readyz's detail. */
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '"')
            *p = '?';
    TAILQ_REMOVE(&c->srv->checks_running, c, link);
    c->done(c->arg, c->reg, ok, line);
    free(c->image);
    free(c);
}

int rp_check_parse_test_image(const struct rp_conf_registry *reg, const char *image, char *name,
                              size_t nlen, char *ref, size_t rlen)
{
    const char *at = strchr(image, '@');
    const char *slash = strrchr(image, '/');
    const char *colon = strrchr(image, ':');
    size_t n;
    if (at) {
        n = (size_t)(at - image);
        snprintf(ref, rlen, "%s", at + 1);
        if (!rp_valid_digest(ref, strlen(ref)))
            return -1;
    } else if (colon && (!slash || colon > slash)) {
        n = (size_t)(colon - image);
        snprintf(ref, rlen, "%s", colon + 1);
        if (!rp_valid_tag(ref, strlen(ref)))
            return -1;
    } else {
        n = strlen(image);
        snprintf(ref, rlen, "latest");
    }
    /* As a pull routes it: Docker Hub serves "alpine" only as library/alpine, and asked for
     * "alpine" answers 401, which would read as a permissions problem. */
    if (!rp_valid_name(image, n))
        return -1;
    return rp_route_upstream_name(reg, image, n, name, nlen);
}

static const struct rp_fetch_cb check_cb;

static void check_step(struct rp_check *c)
{
    char *path = c->step == STEP_PING ? rp_xstrdup("/v2/")
                                      : rp_xasprintf("/v2/%s/manifests/%s", c->name, c->ref);
    struct rp_fetch_opts o = {
        .reg = c->reg,
        .path = path,
        .name = c->name,
        .head = c->step == STEP_MANIFEST && !c->get,
        .accept = c->step == STEP_MANIFEST ? CHECK_ACCEPT : NULL,
        .follow_redirects = true, /* as pulls do: some registries redirect manifests */
    };
    c->fetch = rp_fetch_start(c->srv, &o, &check_cb, c);
    free(path);
}

static int check_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    (void)arg;
    (void)status;
    (void)h;
    return 0;
}

static long check_data_cb(void *arg, const char *p, size_t n)
{
    (void)arg;
    (void)p;
    return (long)n; /* bodies (a ping's {} or an error) are not needed */
}

static void check_done_cb(void *arg, const struct rp_fetch_result *res)
{
    struct rp_check *c = arg;
    c->fetch = NULL;
    const char *realm = rp_auth_realm(rp_server_auth(c->srv, c->reg));
    const char *what = c->step == STEP_PING ? "ping" : "manifest request";
    switch (res->fail) {
    case RP_FETCH_OK:
        break;
    case RP_FETCH_E_TRANSPORT:
        check_finish(c, false, "%s: %s (%s)", rp_xfer_error_name(res->xfer_err), c->reg->url,
                     res->err ? res->err : what);
        return;
    case RP_FETCH_E_TOKEN:
        switch (res->token_err) {
        case RP_AUTH_E_REJECTED:
            /* With nothing configured there were no credentials to reject: the realm wants
             * some, which is what the operator has to add. */
            if (!c->reg->user && !c->reg->identity_token)
                check_finish(c, false,
                             "no credentials configured, and realm %s refused an anonymous "
                             "token (set user and password_file, or auth_file)",
                             realm ? realm : "?");
            else
                check_finish(c, false, "credentials rejected by realm %s", realm ? realm : "?");
            return;
        case RP_AUTH_E_REALM_NOT_ALLOWED:
            check_finish(c, false,
                         "realm not allowed: %s (add it to token_realms if it is "
                         "trusted with this registry's credentials)",
                         realm ? realm : "?");
            return;
        case RP_AUTH_E_REALM_ERROR:
            check_finish(c, false, "token realm %s failed: %s%s%s", realm ? realm : "?",
                         res->xfer_err ? rp_xfer_error_name(res->xfer_err) : "bad answer",
                         res->err ? ": " : "", res->err ? res->err : "");
            return;
        default:
            check_finish(c, false, "token flow failed: %s", rp_auth_strerror(res->token_err));
            return;
        }
    case RP_FETCH_E_AUTH:
        /* A registry may answer 401 to /v2/ and serve its images anonymously: a pull, which
         * never pings, works. A 401 that rejected nothing we sent says nothing of the
         * manifest, whose request (the same auth flow a pull runs) gives the verdict. */
        if (c->step == STEP_PING && c->image && res->auth_err != RP_AUTH_E_REJECTED) {
            c->ping_401 = true;
            c->step = STEP_MANIFEST;
            check_step(c);
            return;
        }
        switch (res->auth_err) {
        case RP_AUTH_E_NO_CREDENTIALS:
            /* Nothing was sent, so nothing was rejected: say what the operator must add. */
            if (c->reg->identity_token)
                check_finish(c, false,
                             "the registry asks for Basic credentials, and the auth_file "
                             "gives only an identity token, which is for a token realm (set "
                             "user and password_file)");
            else
                check_finish(c, false,
                             "no credentials configured, and the registry asks for Basic "
                             "credentials (set user and password_file, or auth_file)");
            return;
        case RP_AUTH_E_REJECTED:
            check_finish(c, false, "credentials rejected by the registry (Basic)");
            return;
        default: /* a 401 without a challenge we can answer: nothing was tried */
            check_finish(c, false, "%s: %s", what, rp_auth_strerror(res->auth_err));
            return;
        }
    case RP_FETCH_E_REDIRECT:
    case RP_FETCH_E_OWNER:
    default:
        check_finish(c, false, "%s failed: %s", what, res->err ? res->err : "?");
        return;
    }
    if (c->step == STEP_PING) {
        if (res->status == 401 && c->image) {
            /* A 401 that outlived the token retry: the realm's token (anonymous, or for
             * credentials it accepted) grants nothing on /v2/ there, which says nothing of
             * the image either, as above. */
            c->ping_401 = true;
            c->step = STEP_MANIFEST;
            check_step(c);
            return;
        }
        if (res->status != 200) {
            check_finish(c, false, "ping answered %d", res->status);
            return;
        }
        if (!c->image) {
            check_finish(c, true, "ok (ping; no test_image to inspect)");
            return;
        }
        c->step = STEP_MANIFEST;
        check_step(c);
        return;
    }
    /* HEAD saves a pull from Docker Hub's rate limit, but not every registry implements it
     * for manifests; a pull GETs, and so does the check then. */
    if ((res->status == 405 || res->status == 501) && !c->get) {
        c->get = true;
        check_step(c);
        return;
    }
    if (res->status == 404) {
        check_finish(c, false, "image not found: %s", c->image);
        return;
    }
    if (res->status == 401 || res->status == 403) {
        /* The realm gave an anonymous token the registry does not take for this image (a
         * registry that wants an account for every image may): there is no account whose
         * permissions could be wrong. */
        if (!c->reg->user && !c->reg->identity_token)
            check_finish(c, false,
                         "access to %s denied (%d) to an anonymous pull: no credentials "
                         "configured (set user and password_file, or auth_file)",
                         c->image, res->status);
        else
            check_finish(c, false, "access to %s denied (%d): check the account's permissions",
                         c->image, res->status);
        return;
    }
    if (res->status != 200) {
        check_finish(c, false, "manifest request for %s answered %d", c->image, res->status);
        return;
    }
    /* Said as it happened: configured credentials the registry never asked for are not
     * "accepted", and an identitytoken is credentials too. */
    bool creds = c->reg->user || c->reg->identity_token;
    check_finish(c, true, "ok (ping%s, %s, manifest %s)", c->ping_401 ? " answered 401" : "",
                 !creds            ? "anonymous"
                 : res->authorized ? "credentials accepted"
                                   : "credentials not asked for",
                 c->image);
}

static const struct rp_fetch_cb check_cb = {
    .on_headers_cb = check_headers_cb,
    .on_data_cb = check_data_cb,
    .on_done_cb = check_done_cb,
};

int rp_check_start(struct rp_server *srv, const struct rp_conf_registry *reg, rp_check_done_cb done,
                   void *arg)
{
    if (!reg->test_login)
        return -1;
    struct rp_check *c = rp_xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->reg = reg;
    c->done = done;
    c->arg = arg;
    c->step = STEP_PING;
    c->image = reg->test_image ? rp_xstrdup(reg->test_image) : NULL;
    TAILQ_INSERT_TAIL(&srv->checks_running, c, link);
    if (reg->test_image && rp_check_parse_test_image(reg, reg->test_image, c->name, sizeof(c->name),
                                                     c->ref, sizeof(c->ref)) < 0) {
        snprintf(c->name, sizeof(c->name), "invalid");
        check_finish(c, false, "test_image '%s' is not a valid image reference", reg->test_image);
        return 0;
    }
    if (!reg->test_image)
        snprintf(c->name, sizeof(c->name), "library/test"); /* scope for the ping only */
    check_step(c);
    return 0;
}

struct cli_state {
    size_t pending;
    size_t failed;
    struct event_base *base;
};

static void cli_done(void *arg, const struct rp_conf_registry *reg, bool ok, const char *line)
{
    struct cli_state *st = arg;
    printf("registry %s: %s%s\n", reg->name, ok ? "" : "FAILED: ", line);
    fflush(stdout);
    if (!ok)
        st->failed++;
    if (--st->pending == 0)
        event_base_loopexit(st->base, NULL);
}

void rp_checks_free_all(struct rp_server *srv)
{
    struct rp_check *c;
    while ((c = TAILQ_FIRST(&srv->checks_running))) {
        TAILQ_REMOVE(&srv->checks_running, c, link);
        rp_fetch_cancel(c->fetch);
        free(c->image);
        free(c);
    }
}

int rp_check_main(struct rp_conf *conf)
{
    struct rp_server srv;
    memset(&srv, 0, sizeof(srv));
    srv.conf = conf;
    TAILQ_INIT(&srv.conns);
    TAILQ_INIT(&srv.token_fetches);
    TAILQ_INIT(&srv.fills);
    TAILQ_INIT(&srv.inflight);
    TAILQ_INIT(&srv.checks_running);
    signal(SIGPIPE, SIG_IGN);
    srv.base = event_base_new();
    srv.up = srv.base ? rp_upstream_new(srv.base) : NULL;
    if (!srv.up) {
        fprintf(stderr, "regproxy: cannot initialise the event loop or libcurl\n");
        if (srv.base)
            event_base_free(srv.base);
        return 1;
    }
    srv.auths = rp_xcalloc(conf->n_registries, sizeof(*srv.auths));
    for (size_t i = 0; i < conf->n_registries; i++)
        srv.auths[i] = rp_auth_new(&conf->registries[i]);
    /* One pending count held until every check has started: a check that ends at once (a
     * malformed test_image) would otherwise bring pending to 0 and stop the loop before
     * the checks started after it ran. */
    struct cli_state st = {.base = srv.base, .pending = 1};
    for (size_t i = 0; i < conf->n_registries; i++) {
        const struct rp_conf_registry *reg = &conf->registries[i];
        st.pending++;
        if (rp_check_start(&srv, reg, cli_done, &st) < 0) {
            st.pending--;
            printf("registry %s: skipped (%s)\n", reg->name,
                   reg->offline ? "offline: never dialed" : "test_login = no");
        }
    }
    if (--st.pending)
        event_base_dispatch(srv.base);
    rp_checks_free_all(&srv);
    rp_tokens_free_all(&srv);
    for (size_t i = 0; i < conf->n_registries; i++)
        rp_auth_free(srv.auths[i]);
    free(srv.auths);
    rp_upstream_free(srv.up);
    event_base_free(srv.base);
    return st.failed ? 1 : 0;
}
