/* SPDX-License-Identifier: Apache-2.0 */
/* mirror: `regproxy mirror` pulls a list of images into the cache ahead of a disconnection.
 * It runs the proxy in-process on an internal 127.0.0.1 listener and pulls through it with
 * a libcurl client on the same event loop, so every byte takes the path a cluster's pull
 * takes (shared fills, digest checks before publishing, repository links, tag records):
 * nothing here writes to the cache except pins. */
#include "offline.h"
#include "proxy.h"

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#define MANIFEST_TIMEOUT_MS (5 * 60 * 1000)
#define BLOB_STALL_S 300 /* the proxy streams as upstream delivers; a stall is upstream's */
#define ERROR_BODY_MAX (64 * 1024)
#define REASON_MAX 1000 /* of an error body quoted in a failure line */
#define NEST_MAX 2      /* an index inside an index: allowed once */
/* The pins file is rewritten whole (and fsynced) to add a line: once per image made a long
 * list quadratic. Images that complete within this much of the last rewrite wait for the
 * next one, which records them together. */
#define PINS_FLUSH_MS 1000

struct mirror;
struct image;

enum task_kind { T_MANIFEST, T_BLOB };

/* One GET through the internal listener. */
struct task {
    TAILQ_ENTRY(task) link;
    struct mirror *m;
    struct image *img;
    enum task_kind kind;
    char ref[RP_DIGEST_MAX + 1];    /* tag or digest asked for */
    char digest[RP_DIGEST_MAX + 1]; /* expected digest; "" for a tag */
    int64_t size;                   /* expected size, -1 when unknown */
    int depth;                      /* manifests: 0 for the image's own */
    struct rp_xfer *x;
    int status;
    /* A manifest by tag: the algorithm of the proxy's Docker-Content-Digest ("sha512:"), as
     * the proxy keeps a sha512 registry's manifests by their sha512 digest. */
    char algo_like[8];
    struct rp_buf body; /* manifest, or an error answer */
    EVP_MD_CTX *md;     /* blobs: hash of what arrives */
    uint64_t got;
    char *fail; /* why it failed, set by callbacks that abort */
};
TAILQ_HEAD(task_list, task);

struct image {
    struct rp_image_ref ref;
    char name[RP_TARGET_MAX];
    char top_digest[RP_DIGEST_MAX + 1];
    size_t pending; /* tasks queued or running */
    char *fail;     /* first failure: "what: why" */
    size_t manifests, blobs, cached_blobs;
    size_t leaves;     /* image manifests (not indexes) mirrored */
    bool top_is_index; /* then leaves must end above 0: a platform was there */
    uint64_t fetched, cached;
    char **seen; /* digests already queued for this image */
    size_t n_seen;
    bool started, finished;
    struct mirror *m;
};

struct mirror {
    struct rp_server srv;
    struct rp_conf_listen listen;
    int port;
    /* "Bearer KEY", KEY random per run: the internal listener answers only this client. */
    char authorization[7 + 64 + 1];
    struct rp_upstream *client;
    struct rp_platforms *platforms;
    struct image *images;
    size_t n_images, next_image, finished, failed, active_images;
    struct task_list queue;
    struct task_list running;
    size_t n_running;
    int jobs;
    struct rp_progress prog;
    uint64_t fetched, cached;
    struct event *sig_int, *sig_term;
    bool interrupted;
    /* Images complete and whole, waiting for their line in the pins file: each is reported
     * ok (or failed) once the rewrite that records it is done. */
    struct image **to_pin;
    size_t n_to_pin;
    struct event *pin_timer;
    int64_t pinned_ms; /* when the pins file was last rewritten */
};

static void pump(struct mirror *m);

static void task_free(struct task *t)
{
    if (!t)
        return;
    rp_xfer_cancel(t->x);
    rp_buf_free(&t->body);
    EVP_MD_CTX_free(t->md);
    free(t->fail);
    free(t);
}

static bool image_seen(struct image *img, const char *digest)
{
    for (size_t i = 0; i < img->n_seen; i++)
        if (strcmp(img->seen[i], digest) == 0)
            return true;
    img->seen = rp_xrealloc(img->seen, (img->n_seen + 1) * sizeof(*img->seen));
    img->seen[img->n_seen++] = rp_xstrdup(digest);
    return false;
}

static struct task *task_new(struct image *img, struct mirror *m, enum task_kind kind,
                             const char *ref, const char *digest, int64_t size, int depth)
{
    struct task *t = rp_xcalloc(1, sizeof(*t));
    t->m = m;
    t->img = img;
    t->kind = kind;
    snprintf(t->ref, sizeof(t->ref), "%s", ref);
    snprintf(t->digest, sizeof(t->digest), "%s", digest ? digest : "");
    t->size = size;
    t->depth = depth;
    img->pending++;
    /* Pinned before it arrives: the fill's publish runs eviction, which must spare it. */
    if (t->digest[0])
        rp_cache_pin(m->srv.cache, t->digest);
    return t;
}

static void image_fail(struct image *img, const char *what, const char *why)
{
    if (!img->fail)
        img->fail = rp_xasprintf("%s: %s", what, why);
}

/* The first of an image's manifests and blobs that is not in the cache, or NULL. Each was
 * verified as it arrived, but a blob the cache had no room for (a full disk, a failed
 * commit) is passed through uncached: such an image must not be reported ok and pinned. */
static const char *image_missing(struct mirror *m, const struct image *img)
{
    struct rp_cache *c = m->srv.cache;
    const char *data, *type;
    size_t len;
    if (img->top_digest[0] &&
        rp_cache_manifest_peek(c, img->top_digest, &data, &len, &type) != RP_CACHE_OK)
        return img->top_digest;
    for (size_t i = 0; i < img->n_seen; i++)
        if (!rp_cache_blob_present(c, img->seen[i]) &&
            rp_cache_manifest_peek(c, img->seen[i], &data, &len, &type) != RP_CACHE_OK)
            return img->seen[i];
    return NULL;
}

/* Reports an image, ok or failed: it is done. */
static void image_report(struct mirror *m, struct image *img)
{
    img->finished = true;
    m->finished++;
    m->active_images--;
    m->prog.done = m->finished;
    char fetched[32], cached[32];
    rp_format_bytes(img->fetched, fetched, sizeof(fetched));
    rp_format_bytes(img->cached, cached, sizeof(cached));
    if (img->fail) {
        m->failed++;
        rp_progress_line(&m->prog, "FAILED %s: %s", img->name, img->fail);
    } else {
        /* A reference by digest names it already. */
        rp_progress_line(
            &m->prog, "ok %s%s%s: %zu manifest%s, %zu blob%s (%s fetched, %s already cached)",
            img->name, img->ref.digest[0] ? "" : "@", img->ref.digest[0] ? "" : img->top_digest,
            img->manifests, img->manifests == 1 ? "" : "s", img->blobs, img->blobs == 1 ? "" : "s",
            fetched, cached);
    }
    for (size_t i = 0; i < img->n_seen; i++)
        free(img->seen[i]);
    free(img->seen);
    img->seen = NULL;
    img->n_seen = 0;
    if (m->finished == m->n_images)
        event_base_loopexit(m->srv.base, NULL);
}

/* Records the images waiting for the pins file in one rewrite, then reports them. */
static void pins_flush(struct mirror *m)
{
    if (m->pin_timer)
        evtimer_del(m->pin_timer);
    if (m->n_to_pin == 0)
        return;
    size_t n = m->n_to_pin;
    struct image **v = m->to_pin;
    m->to_pin = NULL;
    m->n_to_pin = 0;
    char **lines = rp_xcalloc(n, sizeof(*lines));
    for (size_t i = 0; i < n; i++)
        lines[i] =
            rp_pins_line(v[i]->ref.reg->name, v[i]->ref.repo, v[i]->ref.tag, v[i]->top_digest);
    int rc = rp_pins_add_lines(m->srv.conf->cache.dir, lines, n);
    m->pinned_ms = rp_now_ms();
    for (size_t i = 0; i < n; i++) {
        free(lines[i]);
        if (rc != 0)
            image_fail(v[i], "pins file", "could not record the image (see the log)");
        image_report(m, v[i]);
    }
    free(lines);
    free(v);
}

static void pin_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pins_flush(arg);
}

static void image_finish(struct mirror *m, struct image *img)
{
    /* After a signal no image is reported any more: those under way are named once, by
     * the summary, even one whose last flush completes while the cache closes. */
    if (m->interrupted)
        return;
    if (!img->fail && img->top_is_index && img->leaves == 0)
        image_fail(img, "manifest", "the index has no manifest for the requested platforms");
    const char *missing = img->fail ? NULL : image_missing(m, img);
    if (missing)
        image_fail(img, missing,
                   "received and verified but not kept by the cache (a full disk or max_size; "
                   "see the log)");
    if (img->fail) {
        image_report(m, img);
        return;
    }
    m->to_pin = rp_xrealloc(m->to_pin, (m->n_to_pin + 1) * sizeof(*m->to_pin));
    m->to_pin[m->n_to_pin++] = img;
    int64_t wait = m->pinned_ms + PINS_FLUSH_MS - rp_now_ms();
    if (wait <= 0 || m->finished + m->n_to_pin == m->n_images || !m->pin_timer) {
        pins_flush(m);
    } else if (!evtimer_pending(m->pin_timer, NULL)) {
        struct timeval tv = {.tv_sec = wait / 1000, .tv_usec = (wait % 1000) * 1000};
        evtimer_add(m->pin_timer, &tv);
    }
}

static void sync_barrier(void *arg)
{
    (void)arg;
}

static void image_synced(void *arg)
{
    struct image *img = arg;
    image_finish(img->m, img);
}

/* A task ended (successfully or not): the image may be complete. Its blobs are verified
 * but may still be on their way to disk (the proxy fsyncs on its worker thread): the image
 * is reported once the worker has also run an empty job queued behind those fsyncs, so
 * "ok" means every blob is durable and published. */
static void task_done(struct mirror *m, struct task *t)
{
    struct image *img = t->img;
    task_free(t);
    if (--img->pending == 0)
        rp_syncer_submit(m->srv.syncer, sync_barrier, image_synced, img);
}

/* Puts the tasks of an image in progress ahead of the images not started yet, so images
 * complete one after another rather than all at the end. */
static void queue_front(struct mirror *m, struct task_list *fresh)
{
    TAILQ_CONCAT(fresh, &m->queue, link);
    TAILQ_INIT(&m->queue);
    TAILQ_CONCAT(&m->queue, fresh, link);
}

/* "HTTP 404: {...}": the proxy's error body, cut and made printable. */
static char *http_reason(const struct task *t)
{
    struct rp_buf b;
    rp_buf_init(&b, REASON_MAX + 64);
    rp_buf_addf(&b, "HTTP %d", t->status);
    if (t->body.len) {
        rp_buf_add(&b, " ", 1);
        for (size_t i = 0; i < t->body.len && b.len < REASON_MAX; i++) {
            char c = t->body.data[i];
            if (c == '\n' || c == '\r')
                continue;
            rp_buf_add(&b, (unsigned char)c < 0x20 || c == 0x7f ? "?" : &c, 1);
        }
    }
    char *s = rp_xstrdup(b.data ? b.data : "");
    rp_buf_free(&b);
    return s;
}

static void manifest_done(struct mirror *m, struct task *t)
{
    struct image *img = t->img;
    char what[RP_DIGEST_MAX + 32];
    snprintf(what, sizeof(what), "manifest %s", t->ref);
    char digest[RP_CACHE_DIGEST_BUF];
    rp_digest_of(t->digest[0]      ? t->digest
                 : t->algo_like[0] ? t->algo_like
                                   : NULL,
                 t->body.data ? t->body.data : "", t->body.len, digest);
    if (t->digest[0] && strcmp(digest, t->digest) != 0) {
        image_fail(img, what, "received content does not match the digest");
        return;
    }
    if (t->depth == 0) {
        snprintf(img->top_digest, sizeof(img->top_digest), "%s", digest);
        rp_cache_pin(m->srv.cache, digest);
        /* By tag, the digest is known only now, after the proxy published the manifest
         * unpinned: with pinned content past max_size (earlier images of this list or of
         * the pins file), that publish evicted it at once. Pinned now, it is asked again by
         * digest, and kept; its references are followed from that answer. */
        const char *data, *type;
        size_t len;
        if (!t->digest[0] &&
            rp_cache_manifest_peek(m->srv.cache, digest, &data, &len, &type) != RP_CACHE_OK) {
            struct task_list again;
            TAILQ_INIT(&again);
            struct task *d = task_new(img, m, T_MANIFEST, digest, digest, -1, 0);
            TAILQ_INSERT_TAIL(&again, d, link);
            queue_front(m, &again);
            return;
        }
    }
    img->manifests++;
    m->prog.bytes += t->body.len;
    struct rp_manifest_refs refs;
    char err[256];
    if (rp_manifest_refs(t->body.data ? t->body.data : "", t->body.len, &refs, err, sizeof(err)) !=
        0) {
        image_fail(img, what, err);
        return;
    }
    struct task_list fresh;
    TAILQ_INIT(&fresh);
    for (size_t i = 0; i < refs.n; i++) {
        const struct rp_manifest_ref *r = &refs.v[i];
        if (r->kind == RP_REF_CHILD) {
            /* An index inside an index is followed whatever its descriptor says (usually
             * nothing): the platforms are those of the image manifests it lists. */
            bool nested = strcmp(r->media_type, RP_MEDIA_OCI_INDEX) == 0 ||
                          strcmp(r->media_type, RP_MEDIA_DOCKER_LIST) == 0;
            if (!nested && !rp_platforms_match(m->platforms, r))
                continue;
            if (t->depth >= NEST_MAX) {
                image_fail(img, what, "indexes nested too deeply");
                break;
            }
            if (image_seen(img, r->digest))
                continue;
            /* (TAILQ macros evaluate their element more than once) */
            struct task *c =
                task_new(img, m, T_MANIFEST, r->digest, r->digest, r->size, t->depth + 1);
            TAILQ_INSERT_TAIL(&fresh, c, link);
        } else {
            if (image_seen(img, r->digest))
                continue;
            struct task *b = task_new(img, m, T_BLOB, r->digest, r->digest, r->size, 0);
            TAILQ_INSERT_TAIL(&fresh, b, link);
        }
    }
    if (refs.is_index && t->depth == 0)
        img->top_is_index = true;
    else if (!refs.is_index)
        img->leaves++;
    rp_manifest_refs_free(&refs);
    queue_front(m, &fresh);
}

static void blob_done(struct mirror *m, struct task *t)
{
    struct image *img = t->img;
    char what[RP_DIGEST_MAX + 32];
    snprintf(what, sizeof(what), "blob %s", t->digest);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!t->md || EVP_DigestFinal_ex(t->md, md, &mdlen) != 1) {
        image_fail(img, what, "hashing failed");
        return;
    }
    /* The proxy checked it before publishing; checking again here makes the mirror's
     * verdict independent of the path the bytes took. */
    if (!rp_digest_matches(t->digest, md, mdlen)) {
        image_fail(img, what, "received content does not match the digest");
        return;
    }
    if (t->size >= 0 && t->got != (uint64_t)t->size) {
        char why[128];
        snprintf(why, sizeof(why), "received %llu bytes, the manifest says %lld",
                 (unsigned long long)t->got, (long long)t->size);
        image_fail(img, what, why);
        return;
    }
    img->blobs++;
    img->fetched += t->got;
    m->fetched += t->got;
}

static int task_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    struct task *t = arg;
    t->status = status;
    bool ok = status == 200;
    if (!ok) {
        rp_buf_init(&t->body, ERROR_BODY_MAX);
        return 0;
    }
    if (t->kind == T_MANIFEST) {
        const char *d = h->docker_content_digest;
        if (!t->digest[0] && d && rp_valid_digest(d, strlen(d)) && strncmp(d, "sha512:", 7) == 0)
            snprintf(t->algo_like, sizeof(t->algo_like), "sha512:");
        rp_buf_init(&t->body, RP_MANIFEST_MAX);
        if (h->length > (int64_t)RP_MANIFEST_MAX) {
            t->fail = rp_xstrdup("manifest larger than 4 MiB");
            return -1;
        }
        return 0;
    }
    if (t->size >= 0 && h->length >= 0 && h->length != t->size) {
        t->fail = rp_xasprintf("the proxy announces %lld bytes, the manifest says %lld",
                               (long long)h->length, (long long)t->size);
        return -1;
    }
    const EVP_MD *alg = rp_digest_md(t->digest);
    t->md = EVP_MD_CTX_new();
    if (!alg || !t->md || EVP_DigestInit_ex(t->md, alg, NULL) != 1) {
        t->fail = rp_xstrdup("cannot hash");
        return -1;
    }
    return 0;
}

static long task_data_cb(void *arg, const char *p, size_t n)
{
    struct task *t = arg;
    if (t->status != 200 || t->kind == T_MANIFEST) {
        if (rp_buf_add(&t->body, p, n) < 0) {
            if (t->status != 200)
                return (long)n; /* an error body is cut, not fatal */
            t->fail = rp_xstrdup("manifest larger than 4 MiB");
            return -1;
        }
        return (long)n;
    }
    if (t->size >= 0 && n > (uint64_t)t->size - t->got) {
        t->fail = rp_xstrdup("more bytes than the manifest says");
        return -1;
    }
    EVP_DigestUpdate(t->md, p, n);
    t->got += n;
    t->m->prog.bytes += n;
    rp_progress_update(&t->m->prog, false);
    return (long)n;
}

static void task_done_cb(void *arg, enum rp_xfer_error e, int status, const char *err)
{
    struct task *t = arg;
    struct mirror *m = t->m;
    t->x = NULL;
    TAILQ_REMOVE(&m->running, t, link);
    m->n_running--;
    char what[RP_DIGEST_MAX + 32];
    snprintf(what, sizeof(what), "%s %s", t->kind == T_MANIFEST ? "manifest" : "blob", t->ref);
    if (t->fail) {
        image_fail(t->img, what, t->fail);
    } else if (e != RP_XFER_OK) {
        char *why = rp_xasprintf("%s (%s)", err ? err : "transfer failed", rp_xfer_error_name(e));
        image_fail(t->img, what, why);
        free(why);
    } else if (status != 200) {
        char *why = http_reason(t);
        image_fail(t->img, what, why);
        free(why);
    } else if (t->kind == T_MANIFEST) {
        manifest_done(m, t);
    } else {
        blob_done(m, t);
    }
    task_done(m, t);
    pump(m);
}

static const struct rp_xfer_cb task_cb = {
    .on_headers_cb = task_headers_cb,
    .on_data_cb = task_data_cb,
    .on_done_cb = task_done_cb,
};

/* Starts t, or finishes it at once when nothing needs fetching. */
static void task_start(struct mirror *m, struct task *t)
{
    struct image *img = t->img;
    if (img->fail || m->interrupted) {
        task_done(m, t);
        return;
    }
    if (t->kind == T_BLOB) {
        /* Cached and linked to this repository: served without upstream anyway, and the
         * cache verified it when it was published. */
        struct rp_cache_blob b;
        if (rp_cache_linked(m->srv.cache, img->ref.reg->name, img->ref.repo, t->digest) &&
            rp_cache_blob_open(m->srv.cache, t->digest, &b) == RP_CACHE_OK) {
            close(b.fd);
            rp_cache_release(m->srv.cache, t->digest);
            img->blobs++;
            img->cached += b.size;
            m->cached += b.size;
            task_done(m, t);
            return;
        }
    }
    char *url = rp_xasprintf("http://127.0.0.1:%d/v2/%s/%s/%s/%s", m->port, img->ref.reg->name,
                             img->ref.repo, t->kind == T_MANIFEST ? "manifests" : "blobs", t->ref);
    struct rp_xfer_opts o = {
        .url = url,
        .authorization = m->authorization,
        .accept = t->kind == T_MANIFEST ? RP_MANIFEST_ACCEPT : NULL,
        .tls_verify = true,
        .timeout_ms = t->kind == T_MANIFEST ? MANIFEST_TIMEOUT_MS : 0,
        .stall_timeout_s = t->kind == T_BLOB ? BLOB_STALL_S : 0,
    };
    t->x = rp_upstream_start(m->client, &o, &task_cb, t);
    free(url);
    if (!t->x) {
        image_fail(img, t->ref, "cannot start the request");
        task_done(m, t);
        return;
    }
    TAILQ_INSERT_TAIL(&m->running, t, link);
    m->n_running++;
}

static void pump(struct mirror *m)
{
    while (m->n_running < (size_t)m->jobs && !m->interrupted) {
        struct task *t = TAILQ_FIRST(&m->queue);
        if (!t) {
            /* Next image, once the ones in progress have nothing left to queue. */
            if (m->next_image == m->n_images)
                return;
            struct image *img = &m->images[m->next_image++];
            img->started = true;
            m->active_images++;
            const char *ref = img->ref.digest[0] ? img->ref.digest : img->ref.tag;
            t = task_new(img, m, T_MANIFEST, ref, img->ref.digest, -1, 0);
            TAILQ_INSERT_TAIL(&m->queue, t, link);
            continue;
        }
        TAILQ_REMOVE(&m->queue, t, link);
        task_start(m, t);
    }
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct mirror *m = arg;
    /* Those complete and whole are recorded and reported first: they are mirrored. */
    pins_flush(m);
    rp_progress_line(&m->prog, "mirror: signal %d: stopping (a rerun resumes)", (int)sig);
    m->interrupted = true;
    event_base_loopexit(m->srv.base, NULL);
}

/* libcurl honours http_proxy: the internal listener must never be reached through one. */
static void no_proxy_for_loopback(void)
{
    const char *names[] = {"no_proxy", "NO_PROXY"};
    for (size_t i = 0; i < 2; i++) {
        const char *cur = getenv(names[i]);
        char *v = cur && cur[0] ? rp_xasprintf("%s,127.0.0.1", cur) : rp_xstrdup("127.0.0.1");
        setenv(names[i], v, 1);
        free(v);
    }
}

int rp_mirror_main(struct rp_conf *conf, const struct rp_mirror_opts *o)
{
    struct mirror m;
    memset(&m, 0, sizeof(m));
    TAILQ_INIT(&m.queue);
    TAILQ_INIT(&m.running);
    int rc = 1;
    char err[1024];
    m.jobs = o->jobs > 0 ? o->jobs : 4;
    if (rp_platforms_parse(o->platforms, &m.platforms, err, sizeof(err)) != 0) {
        fprintf(stderr, "regproxy mirror: %s\n", err);
        return 2;
    }
    struct rp_image_ref *refs = NULL;
    if (rp_image_list_load(conf, o->list, &refs, &m.n_images, err, sizeof(err)) != 0) {
        fprintf(stderr, "regproxy mirror: %s\n", err); /* a bad input file, as for export: 1 */
        rp_platforms_free(m.platforms);
        return 1;
    }
    if (m.n_images == 0) {
        /* Most likely the command that wrote the list failed (`oc adm release info ... >
         * LIST`): "0 of 0 images ok" and exit 0 would let the cluster be disconnected with
         * nothing mirrored. Export refuses an empty list the same way. */
        fprintf(stderr, "regproxy mirror: %s names no image (only blank lines and comments)\n",
                o->list);
        free(refs);
        rp_platforms_free(m.platforms);
        return 1;
    }
    m.images = rp_xcalloc(m.n_images + 1, sizeof(*m.images));
    for (size_t i = 0; i < m.n_images; i++) {
        m.images[i].ref = refs[i];
        m.images[i].m = &m;
    }
    free(refs);
    for (size_t i = 0; i < m.n_images; i++) {
        rp_image_ref_format(&m.images[i].ref, m.images[i].name, sizeof(m.images[i].name));
        if (m.images[i].ref.reg->offline) {
            fprintf(stderr, "regproxy mirror: %s: registry %s is offline in %s\n", m.images[i].name,
                    m.images[i].ref.reg->name, conf->source);
            goto out;
        }
    }
    no_proxy_for_loopback();
    /* The in-process proxy's access lines would drown the progress; -v keeps them. */
    if (!rp_log_enabled(RP_LOG_DEBUG) && strcmp(conf->admin.log_level, "error") != 0) {
        free(conf->admin.log_level);
        conf->admin.log_level = rp_xstrdup("warn");
    }
    /* Mirroring asks upstream what the tags name now: a cached tag, fresh or stale, would
     * carry an image the tag has since left into the pins and the next export. */
    conf->cache.tag_ttl_ms = 0;
    conf->cache.max_stale_ms = 0;
    for (size_t i = 0; i < conf->n_registries; i++)
        conf->registries[i].tag_ttl_ms = 0;
    if (rp_server_init(&m.srv, conf) != 0) {
        fprintf(stderr,
                "regproxy mirror: cannot open the cache %s (is a regproxy serving it? "
                "stop it first, or mirror into another cache dir)\n",
                conf->cache.dir);
        goto out;
    }
    m.listen.addr = "127.0.0.1:0";
    m.listen.host = "127.0.0.1";
    m.listen.max_connections = 1024;  /* the mirror's own client only */
    m.listen.idle_timeout_ms = 60000; /* as [listen] idle_timeout's default */
    /* Any local user can connect to 127.0.0.1: the listener, which pulls with the
     * configuration's credentials, serves only requests with this run's key. */
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        fprintf(stderr, "regproxy mirror: no random bytes for the internal listener's key\n");
        goto out;
    }
    memcpy(m.authorization, "Bearer ", 7);
    rp_hex_encode(raw, sizeof(raw), m.authorization + 7);
    rp_secure_zero(raw, sizeof(raw));
    m.port = rp_server_listen_internal(&m.srv, &m.listen, m.authorization + 7);
    if (m.port <= 0)
        goto out;
    m.client = rp_upstream_new(m.srv.base);
    if (!m.client) {
        fprintf(stderr, "regproxy mirror: cannot initialise libcurl\n");
        goto out;
    }
    m.sig_int = evsignal_new(m.srv.base, SIGINT, signal_cb, &m);
    m.sig_term = evsignal_new(m.srv.base, SIGTERM, signal_cb, &m);
    evsignal_add(m.sig_int, NULL);
    evsignal_add(m.sig_term, NULL);
    m.pin_timer = evtimer_new(m.srv.base, pin_timer_cb, &m);
    rp_progress_init(&m.prog, "mirroring", m.n_images, 0);
    if (m.n_images) {
        pump(&m);
        event_base_dispatch(m.srv.base);
        if (!m.interrupted)
            pins_flush(&m); /* (none waits: the loop ends when all are reported) */
    }
    rp_progress_end(&m.prog);
    char fetched[32], cached[32];
    rp_format_bytes(m.fetched, fetched, sizeof(fetched));
    rp_format_bytes(m.cached, cached, sizeof(cached));
    size_t ok = m.finished - m.failed, under_way = 0;
    for (size_t i = 0; m.interrupted && i < m.n_images; i++)
        if (m.images[i].started && !m.images[i].finished) {
            printf("interrupted %s: not mirrored, nor pinned; a rerun resumes it\n",
                   m.images[i].name);
            under_way++;
        }
    char not_done[96] = "";
    if (m.interrupted)
        snprintf(not_done, sizeof(not_done), ", %zu interrupted, %zu not started", under_way,
                 m.n_images - m.finished - under_way);
    printf("mirror: %zu of %zu images ok, %zu failed%s; %s fetched in %.1f s (%.1f MB/s), %s "
           "already cached\n",
           ok, m.n_images, m.failed, not_done, fetched,
           (double)(rp_now_ms() - m.prog.start_ms) / 1000.0, rp_progress_rate(&m.prog), cached);
    fflush(stdout);
    rc = ok == m.n_images ? 0 : 1;
out:
    while (!TAILQ_EMPTY(&m.running)) {
        struct task *t = TAILQ_FIRST(&m.running);
        TAILQ_REMOVE(&m.running, t, link);
        task_free(t);
    }
    while (!TAILQ_EMPTY(&m.queue)) {
        struct task *t = TAILQ_FIRST(&m.queue);
        TAILQ_REMOVE(&m.queue, t, link);
        task_free(t);
    }
    rp_upstream_free(m.client);
    if (m.sig_int)
        event_free(m.sig_int);
    if (m.sig_term)
        event_free(m.sig_term);
    if (m.pin_timer)
        event_free(m.pin_timer);
    free(m.to_pin);
    if (m.srv.base)
        rp_server_fini(&m.srv);
    for (size_t i = 0; i < m.n_images; i++) {
        for (size_t k = 0; k < m.images[i].n_seen; k++)
            free(m.images[i].seen[k]);
        free(m.images[i].seen);
        free(m.images[i].fail);
    }
    free(m.images);
    rp_platforms_free(m.platforms);
    rp_secure_zero(m.authorization, sizeof(m.authorization));
    return rc;
}
