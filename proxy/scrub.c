/* SPDX-License-Identifier: Apache-2.0 */
/* scrub: see scrub.h. A pass lists the cache's blobs on the loop, then hands them to the
 * worker one at a time; the loop never waits for it, and it touches nothing of the cache's
 * but the blob file it was given (opened through rp_cache_blob_fd). */
#include "scrub.h"

#include "offline.h" /* rp_format_bytes */
#include "proxy.h"

#include "../util/util.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The first pass waits one scrub_interval, but no longer than this, after the start (or a
 * reload that changed the interval): a proxy restarted more often than the interval would
 * otherwise never scrub. */
#define FIRST_PASS_MAX_MS (10 * 60 * 1000)

struct scrub_blob {
    char *digest;
    uint64_t size;
};

struct rp_scrub {
    struct rp_server *srv;
    struct rp_syncer *worker;
    struct event *timer;
    atomic_bool stop;
    struct scrub_blob *list; /* the pass's blobs, as listed when it began */
    size_t n, cap, next;
    bool busy; /* a job is with the worker */
    /* A reload turned the scrub off during a pass: the job under way was told to stop (stop
     * set), and its done ends the pass. */
    bool cancel;
    int64_t pass_start_ms;
    uint64_t pass_bytes, pass_damaged;
};

struct scrub_job {
    struct rp_scrub *s;
    const struct rp_cache *cache; /* only for rp_cache_blob_fd, which any thread may call */
    char *digest;
    uint64_t size, rate;
    int rc;
    /* Open from the check until the loop has acted on it: while it is open its inode cannot
     * be freed and given to a new file, so dev and ino name the checked file and no other. */
    int fd;
    uint64_t dev, ino;
    char why[256];
};

static void arm(struct rp_scrub *s, int64_t ms)
{
    event_del(s->timer);
    if (ms <= 0)
        return;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    event_add(s->timer, &tv);
}

static int64_t first_delay(const struct rp_scrub *s)
{
    int64_t iv = s->srv->conf->cache.scrub_interval_ms;
    return iv < FIRST_PASS_MAX_MS ? iv : FIRST_PASS_MAX_MS;
}

static void list_blob(void *arg, const char *digest, uint64_t size)
{
    struct rp_scrub *s = arg;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->list = rp_xrealloc(s->list, s->cap * sizeof(*s->list));
    }
    s->list[s->n++] = (struct scrub_blob){rp_xstrdup(digest), size};
}

static void list_free(struct rp_scrub *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->list[i].digest);
    free(s->list);
    s->list = NULL;
    s->n = s->cap = s->next = 0;
}

/* On the worker: the file as it is now against its digest. */
static void job_work(void *arg)
{
    struct scrub_job *j = arg;
    int fd = j->fd = rp_cache_blob_fd(j->cache, j->digest);
    struct stat st;
    if (fd < 0 && (errno == ELOOP || errno == ENOTDIR)) {
        /* Not followed: what it points to is not the cache's to check, nor to serve. */
        snprintf(j->why, sizeof(j->why), "a symlink in its path (%s); not followed",
                 strerror(errno));
        j->rc = RP_CACHE_E_CORRUPT;
        return;
    }
    if (fd < 0 || fstat(fd, &st) != 0) {
        j->rc = errno == ENOENT ? RP_CACHE_E_NOENT : RP_CACHE_E_IO; /* ENOENT: evicted since */
        snprintf(j->why, sizeof(j->why), "%s", strerror(errno));
        return;
    }
    j->dev = (uint64_t)st.st_dev;
    j->ino = (uint64_t)st.st_ino;
    if ((uint64_t)st.st_size != j->size) {
        snprintf(j->why, sizeof(j->why), "%llu bytes, %llu expected",
                 (unsigned long long)st.st_size, (unsigned long long)j->size);
        j->rc = RP_CACHE_E_SIZE;
    } else {
        j->rc =
            rp_cache_check_fd(fd, j->digest, j->size, j->rate, &j->s->stop, j->why, sizeof(j->why));
    }
}

static void next_blob(struct rp_scrub *s);

/* A blob is stored once for every registry: removed, it is fetched again by the next pull
 * unless that pull is through an offline registry. */
static bool any_registry_offline(const struct rp_conf *conf)
{
    for (size_t i = 0; i < conf->n_registries; i++)
        if (conf->registries[i].offline)
            return true;
    return false;
}

/* On the loop: acts on the verdict, then sends the next blob. */
static void job_done(void *arg)
{
    struct scrub_job *j = arg;
    struct rp_scrub *s = j->s;
    struct rp_server *srv = s->srv;
    s->busy = false;
    if (j->rc == RP_CACHE_OK || j->rc == RP_CACHE_E_DIGEST) {
        s->pass_bytes += j->size;
        srv->metrics.scrub_bytes += j->size;
    }
    if (j->rc == RP_CACHE_E_DIGEST || j->rc == RP_CACHE_E_SIZE) {
        if (rp_cache_blob_drop(srv->cache, j->digest, j->dev, j->ino) == RP_CACHE_OK) {
            rp_warn("cache scrub: blob %s is damaged (%s); removed: %s", j->digest, j->why,
                    srv->conf->cache.offline
                        ? "this cache is offline, so the images that use it need mirroring or "
                          "importing again"
                    : any_registry_offline(srv->conf)
                        ? "the next pull fetches it again, unless through an offline registry, "
                          "whose images that use it need mirroring or importing again"
                        : "the next pull fetches it again");
            s->pass_damaged++;
            srv->metrics.scrub_damaged++;
        } else {
            rp_debug("cache scrub: blob %s was replaced while it was checked", j->digest);
        }
    } else if (j->rc == RP_CACHE_E_CORRUPT) {
        /* Looked at again on the loop: the same symlink is removed and the blob forgotten,
         * as a request's open would; unless it was fetched again since. Not counted as a
         * use: the blob keeps its place in the eviction order. */
        int rc = rp_cache_blob_recheck(srv->cache, j->digest);
        if (rc == RP_CACHE_E_CORRUPT) {
            rp_warn("cache scrub: blob %s: %s; forgotten: %s", j->digest, j->why,
                    srv->conf->cache.offline ? "this cache is offline, so the images that use "
                                               "it need mirroring or importing again"
                                             : "the next pull fetches it again");
            s->pass_damaged++;
            srv->metrics.scrub_damaged++;
        }
    } else if (j->rc == RP_CACHE_E_IO && !atomic_load(&s->stop)) {
        rp_warn("cache scrub: blob %s: %s; kept", j->digest, j->why);
    }
    if (j->fd >= 0)
        close(j->fd);
    free(j->digest);
    free(j);
    if (s->cancel) {
        s->cancel = false;
        atomic_store(&s->stop, false);
        rp_info("cache scrub: pass stopped after %zu of %zu blobs: scrub_interval is now 0",
                s->next - 1, s->n);
        list_free(s);
        /* Turned on again since: a new pass, as after any change of the interval. */
        arm(s, first_delay(s));
        return;
    }
    if (!atomic_load(&s->stop))
        next_blob(s);
}

static void next_blob(struct rp_scrub *s)
{
    struct rp_server *srv = s->srv;
    while (s->next < s->n) {
        struct scrub_blob *b = &s->list[s->next++];
        /* Evicted since the pass began: nothing to check. */
        if (!rp_cache_blob_present(srv->cache, b->digest))
            continue;
        struct scrub_job *j = rp_xcalloc(1, sizeof(*j));
        j->s = s;
        j->digest = b->digest;
        b->digest = NULL;
        j->cache = srv->cache;
        j->size = b->size;
        j->rate = srv->conf->cache.scrub_rate;
        j->fd = -1;
        s->busy = true;
        rp_syncer_submit(s->worker, job_work, job_done, j);
        return;
    }
    char bytes[32];
    rp_format_bytes(s->pass_bytes, bytes, sizeof(bytes));
    rp_info("cache scrub: %zu blobs (%s) checked in %.1f s; %llu damaged", s->n, bytes,
            (double)(rp_now_ms() - s->pass_start_ms) / 1000.0, (unsigned long long)s->pass_damaged);
    srv->metrics.scrub_last_pass_s = (int64_t)time(NULL);
    list_free(s);
    arm(s, srv->conf->cache.scrub_interval_ms);
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_scrub *s = arg;
    if (s->busy || s->list || s->srv->conf->cache.scrub_interval_ms <= 0)
        return;
    s->pass_start_ms = rp_now_ms();
    s->pass_bytes = s->pass_damaged = 0;
    rp_cache_blobs_each(s->srv->cache, list_blob, s);
    if (s->n == 0)
        s->list = rp_xcalloc(1, sizeof(*s->list)); /* a pass, even of nothing */
    next_blob(s);
}

struct rp_scrub *rp_scrub_new(struct rp_server *srv)
{
    struct rp_scrub *s = rp_xcalloc(1, sizeof(*s));
    s->srv = srv;
    atomic_init(&s->stop, false);
    s->worker = rp_syncer_new(srv->base);
    s->timer = evtimer_new(srv->base, pass_cb, s);
    if (!s->worker || !s->timer) {
        rp_error("cache scrub: cannot start its thread or timer; no scrub");
        rp_syncer_free(s->worker);
        if (s->timer)
            event_free(s->timer);
        free(s);
        return NULL;
    }
    arm(s, first_delay(s));
    return s;
}

void rp_scrub_reconfigured(struct rp_scrub *s)
{
    if (!s)
        return;
    if (!s->busy && !s->list) {
        arm(s, first_delay(s));
    } else if (s->busy && s->srv->conf->cache.scrub_interval_ms <= 0) {
        /* Turned off during a pass (its reads hurt serving, say): the blob being read is
         * given up and the pass ends, rather than running on over the whole cache. Another
         * interval lets the pass go on; the next one is armed from it at its end. */
        s->cancel = true;
        atomic_store(&s->stop, true);
    }
}

void rp_scrub_free(struct rp_scrub *s)
{
    if (!s)
        return;
    atomic_store(&s->stop, true);
    rp_syncer_free(s->worker); /* the job under way ends early; its done runs here */
    event_free(s->timer);
    list_free(s);
    free(s);
}
