/* SPDX-License-Identifier: Apache-2.0 */
/* inflight: concurrent misses for the same manifest, revalidations of the same tag, and
 * confirmations that a repository has a blob cached from another, share one upstream
 * exchange (a confirmation's waiters are woken as soon as it recorded the link). The first request
 * leads (it fetches, verifies and caches); the others wait and, when the leader has answered, look
 * up again: a success is then a cache hit. A HEAD caches no manifest, so a HEAD leader's success is
 * handed to the HEADs waiting on it as it is; a HEAD also waits on a GET of the same manifest,
 * whose answer it then finds cached. After a failure each waiter asks upstream once more on its own
 * (an error answer is not something to cache or replay), except after a revalidation that found
 * upstream down or failing and served its tag stale (its waiters serve it stale too), or a fetch
 * that had no whole answer from upstream (its waiters answer the same failure, serving their tag
 * stale where they may). A leader that goes away before upstream answered (its client left, its
 * fetch cancelled) has no answer at all: its waiters share one fetch again, led by the first of
 * them. Clients that give up on a slow upstream are the herd this exists for. */
#include "proxy.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

struct rp_inflight {
    struct rp_server *srv;
    char *key;
    struct rp_req *leader;
    TAILQ_HEAD(, rp_req) waiters;
    struct event *wake;
    bool answered; /* the leader's fetch ended with upstream's answer, not cancelled */
    bool stale;    /* the leader served its tag stale: upstream is down or failing */
    bool failed;   /* the leader had no whole answer from upstream: res is its failure */
    struct rp_fetch_result res;
    char *err; /* res's */
    /* A HEAD leader's success, as its client got it (rp_inflight_share). */
    bool shared;
    int status;
    struct rp_xfer_headers h;
    TAILQ_ENTRY(rp_inflight) link;
};

/* Method, kind (a manifest, or a blob's confirmation), registry, repository, reference and
 * the exact Accept list: two clients that accept different media types may get different
 * manifests for one tag, and a HEAD leader's answer caches no manifest for a GET to find. */
static char *key_of(const struct rp_req *r, char method)
{
    return rp_xasprintf("%c%c%s%c%s%c%s%c%s", method, (char)('0' + (int)r->route.kind),
                        r->route.reg->name, 0, r->route.name, 0, r->route.ref, 0,
                        r->accept ? r->accept : "");
}

static size_t key_len(const char *k)
{
    size_t n = 0;
    for (int i = 0; i < 4; i++)
        n += strlen(k + n) + 1;
    return n;
}

static struct rp_inflight *find(struct rp_server *srv, const char *key)
{
    size_t n = key_len(key);
    struct rp_inflight *f;
    /* One whose leader is done only waits for wake_cb to wake its waiters and free it: a new
     * miss for the key must not join or lead it, it starts an entry of its own. */
    TAILQ_FOREACH(f, &srv->inflight, link)
    if (!f->wake && key_len(f->key) == n && memcmp(f->key, key, n) == 0)
        return f;
    return NULL;
}

static void entry_free(struct rp_inflight *f)
{
    TAILQ_REMOVE(&f->srv->inflight, f, link);
    if (f->wake)
        event_free(f->wake);
    rp_headers_free(&f->h);
    free(f->err);
    free(f->key);
    free(f);
}

/* Waiters are woken from the loop, never from inside the leader's own teardown. */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_inflight *f = arg;
    struct rp_req *r;
    while ((r = TAILQ_FIRST(&f->waiters))) {
        TAILQ_REMOVE(&f->waiters, r, inflight_link);
        r->inflight = NULL;
        if (f->shared && r->head) {
            rp_req_answer_shared(r, f->status, &f->h);
            continue;
        }
        /* After an answer the cache did not keep, no second wait: each fetches itself.
         * Without one, the first woken leads a new entry (find skips this one) and the
         * others join it, as fresh misses would. */
        r->coalesced = f->answered;
        r->peer_stale = f->stale;
        if (f->failed) {
            r->peer_failed = true;
            r->peer_res = f->res;
            free(r->peer_err);
            r->peer_err = f->err ? rp_xstrdup(f->err) : NULL;
            r->peer_res.err = r->peer_err;
        }
        r->state = RQ_LOOKUP;
        rp_req_drive(r);
    }
    entry_free(f);
}

bool rp_inflight_wait(struct rp_server *srv, struct rp_req *r)
{
    if (r->coalesced)
        return false;
    char *key = NULL;
    struct rp_inflight *f = NULL;
    if (r->head) {
        /* A GET under way answers a HEAD too, from the cache, once it is done. */
        key = key_of(r, 'G');
        f = find(srv, key);
        if (!f || !f->leader) {
            free(key);
            key = NULL;
            f = NULL;
        }
    }
    if (!key) {
        key = key_of(r, r->head ? 'H' : 'G');
        f = find(srv, key);
    }
    if (f && f->leader) {
        free(key);
        rp_debug("request %s waits for request %s: %s registry=%s repo=%s ref=%s", r->id,
                 f->leader->id, rp_route_kind_name(r->route.kind), r->route.reg->name,
                 r->route.name, r->route.ref);
        TAILQ_INSERT_TAIL(&f->waiters, r, inflight_link);
        r->inflight = f;
        r->state = RQ_WAIT_PEER;
        return true;
    }
    if (!f) {
        f = rp_xcalloc(1, sizeof(*f));
        f->srv = srv;
        f->key = key;
        TAILQ_INIT(&f->waiters);
        TAILQ_INSERT_TAIL(&srv->inflight, f, link);
    } else {
        free(key);
    }
    f->leader = r;
    r->leads = f;
    return false;
}

void rp_inflight_share(struct rp_req *r)
{
    struct rp_inflight *f = r->leads;
    if (!f || !r->head)
        return;
    f->shared = true;
    f->status = r->up_status;
    rp_headers_copy(&f->h, &r->up_h);
}

void rp_inflight_stale(struct rp_req *r)
{
    if (r->leads)
        r->leads->stale = true;
}

void rp_inflight_failed(struct rp_req *r, const struct rp_fetch_result *res)
{
    struct rp_inflight *f = r->leads;
    if (!f)
        return;
    f->failed = true;
    f->res = *res;
    free(f->err);
    f->err = res->err ? rp_xstrdup(res->err) : NULL;
    f->res.err = f->err;
}

void rp_inflight_done(struct rp_req *r, bool answered)
{
    struct rp_inflight *f = r->leads;
    if (!f)
        return;
    r->leads = NULL;
    f->leader = NULL;
    f->answered = answered;
    if (TAILQ_EMPTY(&f->waiters)) {
        entry_free(f);
        return;
    }
    f->wake = evtimer_new(f->srv->base, wake_cb, f);
    struct timeval now = {0, 0};
    evtimer_add(f->wake, &now);
}

void rp_inflight_leave(struct rp_req *r)
{
    struct rp_inflight *f = r->inflight;
    if (!f)
        return;
    TAILQ_REMOVE(&f->waiters, r, inflight_link);
    r->inflight = NULL;
}

void rp_inflight_free_all(struct rp_server *srv)
{
    struct rp_inflight *f;
    while ((f = TAILQ_FIRST(&srv->inflight))) {
        struct rp_req *r;
        while ((r = TAILQ_FIRST(&f->waiters))) {
            TAILQ_REMOVE(&f->waiters, r, inflight_link);
            r->inflight = NULL;
        }
        if (f->leader)
            f->leader->leads = NULL;
        entry_free(f);
    }
}
