/* SPDX-License-Identifier: Apache-2.0 */
/* fill: one upstream download per blob digest, however many clients ask at once. The
 * download runs at upstream speed into the cache's temp file (the temp file is the buffer,
 * so memory stays flat and a slow client slows no one); every reader, the first included,
 * streams from that file at its own pace with sendfile; a Range that runs to the blob's end
 * reads it from its first byte. A range that cannot (request.c) is passed through, and a
 * download with no reader starts behind it. A reader never receives a blob's last byte
 * before the digest matched, so a corrupt download never looks complete. A download the
 * network cuts is resumed where the file ends (a ranged GET; the hash goes on where it
 * was), so a layer crosses the internet once even over a flaky link, and readers only see
 * a pause. Once its last reader has left, a download goes on only if the cache will keep
 * the blob.
 *
 * A 200 without Content-Length (chunked or close-delimited: Harbor's proxy-cache projects
 * send proxied blobs so) cannot be streamed as above: a reader's head needs the length,
 * and there is no last byte to hold back that the head would have announced. Such a
 * download runs to its end first; only when its digest matched do the readers get their
 * heads, as cache hits of the temp file. Blob clients (docker, containerd, CRI-O, skopeo,
 * podman) set no timeout on a blob GET's response head, only on the whole transfer or
 * none, so the silent wait costs them nothing but the overlap of download and delivery.
 * Its size is known only at the end: judged against max_size then (and, with no reader,
 * as the bytes land); a cut one resumes only when a 206 names the total. */
#include "proxy.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define PUMP_CHUNK (1024 * 1024)
#define PUMP_MIN (256 * 1024)
/* Resumptions of one download after the network cut it (docker retries a layer 5 times). */
#define FILL_RESUMES 3
/* Downloads with no client that go on at once (for the next client: all left, or begun
 * behind a range). Each holds a temp file, an upstream connection and its buffers (some
 * 340 KB), for as long as upstream takes: without a bound, a client on the anonymous port
 * that asks for blob after blob and hangs up after each head made as many. Beyond it, the
 * download whose last client just left stops, and none starts behind a range. */
#define FILL_ORPHANS_MAX 64

enum fill_state {
    FILL_WAITING, /* no answer from upstream yet */
    FILL_RUNNING, /* bytes flowing into the temp file */
    FILL_REFUSED, /* upstream answered with an error: collecting its body for the readers */
    FILL_SYNCING, /* verified and released; the worker thread is making it durable */
};

struct rp_fill {
    struct rp_server *srv;
    enum fill_state state;
    char digest[RP_DIGEST_MAX + 1];
    const struct rp_conf_registry *reg;
    char *repo;
    struct rp_fetch *fetch;
    struct rp_cache_fill *cf;
    int64_t expected;
    int64_t written;
    char *content_type;
    int up_status;
    char *retry_after;
    char *allow; /* upstream's Allow, for a 405 relayed to the readers */
    struct rp_buf err_body;
    char *fail_reason;
    bool disk_full;     /* the cache could not make room: readers are passed through */
    bool no_cache;      /* the cache could not start the fill at all (full, read-only, out of
                         * descriptors): readers are passed through likewise */
    bool behind;        /* started behind a range with no reader (rp_fill_behind) */
    bool declined;      /* no reader waits, and the cache cannot take it: not a failure */
    bool unsized;       /* upstream gave no length: readers get no head before the digest matched */
    int64_t room;       /* unsized, no reader: what the cache may keep of it (-1: not asked) */
    int64_t room_asked; /* bytes written when room was asked */
    int64_t started_ms;
    int64_t ms;               /* download time, for the log */
    struct event *flush_ev;   /* once per loop iteration: gathered bytes to the file, readers on */
    struct event *start_ev;   /* a fill begun inside another transfer's callback starts here */
    struct event *abandon_ev; /* its last reader left: is the download still wanted? */
    bool flush_queued;
    int resumes;  /* ranged GETs so far after cuts */
    int64_t skip; /* a resumption answered 200 (Range ignored): bytes to drop first */
    TAILQ_HEAD(, rp_req) readers;
    TAILQ_ENTRY(rp_fill) link;
};

static void fill_free(struct rp_fill *f)
{
    if (f->fetch)
        rp_fetch_cancel(f->fetch);
    if (f->flush_ev)
        event_free(f->flush_ev);
    if (f->start_ev)
        event_free(f->start_ev);
    if (f->abandon_ev)
        event_free(f->abandon_ev);
    rp_cache_fill_abort(f->cf);
    free(f->repo);
    free(f->content_type);
    free(f->retry_after);
    free(f->allow);
    free(f->fail_reason);
    rp_buf_free(&f->err_body);
    free(f);
}

struct rp_fill *rp_fill_find(struct rp_server *srv, const char *digest)
{
    struct rp_fill *f;
    TAILQ_FOREACH(f, &srv->fills, link)
    if (strcmp(f->digest, digest) == 0)
        return f;
    return NULL;
}

bool rp_fill_is_for(const struct rp_fill *f, const struct rp_conf_registry *reg, const char *repo)
{
    return f->reg == reg && strcmp(f->repo, repo) == 0;
}

int64_t rp_fill_length(const struct rp_fill *f)
{
    return f->unsized ? -1 : f->expected;
}

bool rp_fill_head_known(const struct rp_fill *f)
{
    /* Verified only: while it runs, its length is the word of whoever answered the GET (a
     * CDN that may send more or less than the blob); the blob's own registry is asked. */
    return f->state == FILL_SYNCING;
}

/* The headers of every head r gets from f: the blob's, and how the cache answered. Their
 * length. */
static int head_extra(const struct rp_fill *f, const struct rp_req *r, char *extra, size_t n)
{
    return snprintf(extra, n, RP_BLOB_HEADERS "X-Regproxy-Cache: %s\r\n", f->digest, f->digest,
                    r->cache_status);
}

void rp_fill_answer_head(struct rp_fill *f, struct rp_req *r)
{
    char extra[2 * RP_DIGEST_MAX + 256];
    head_extra(f, r, extra, sizeof(extra));
    r->up_status = f->up_status;
    rp_conn_write_response(r->conn, 200, f->content_type, extra, NULL, (size_t)f->expected, false);
    rp_req_queued(r);
}

/* Queues [r->fill_sent, upto) of the blob to r's client from the temp file
 * (rp_conn_queue_file: the reader may go away at any time). */
static int queue_range(struct rp_req *r, int64_t upto)
{
    int64_t n = upto - r->fill_sent;
    if (n <= 0)
        return 0;
    if (rp_conn_queue_file(r->conn, r->fill_fd, (uint64_t)r->fill_sent, (uint64_t)n) < 0)
        return -1;
    r->fill_sent += n;
    r->bytes += (uint64_t)n;
    return 0;
}

/* Feeds a reader what has landed, up to its client's high-water mark. Until the fill is
 * verified, the last byte the reader is owed is held back. */
static void pump(struct rp_req *r)
{
    struct rp_fill *f = r->fill;
    if (r->fill_fd < 0)
        return;
    int64_t limit = (int64_t)rp_cache_fill_flushed(f->cf);
    if (limit >= r->fill_end)
        limit = r->fill_end - 1;
    /* A reader takes the download in pieces of PUMP_MIN at least (the tail comes with the
     * verification): fed the few KiB each loop iteration brings, a hundred readers of a
     * slow download cost a descriptor, a segment and a sendfile each per iteration and
     * starved the download itself. */
    if (limit - r->fill_sent < PUMP_MIN)
        return;
    while (r->fill_sent < limit && rp_conn_output_len(r->conn) < RP_STREAM_HIGH) {
        int64_t upto = r->fill_sent + PUMP_CHUNK < limit ? r->fill_sent + PUMP_CHUNK : limit;
        if (queue_range(r, upto) < 0) {
            rp_warn("fill %s: cannot queue file data: %s", f->digest, strerror(errno));
            return;
        }
    }
}

static void reader_detach(struct rp_req *r)
{
    TAILQ_REMOVE(&r->fill->readers, r, fill_link);
    r->fill = NULL;
}

static void fill_abandon_check(struct rp_fill *f);

/* A reader answered without the download (a 416 once the size is known, a temp file it
 * cannot open) leaves it as a departing client does: the last one gone, the download goes
 * on only if the cache will keep the blob. */
static void reader_drop(struct rp_req *r)
{
    struct rp_fill *f = r->fill;
    reader_detach(r);
    fill_abandon_check(f);
}

/* Upstream's headers arrived: the reader's client gets its response head now (clients give
 * up when headers take long), then bytes as they land. A reader with a Range (one that runs
 * to the end: request.c's range_joins_fill) gets a 206 for it, or a 416 once the size says
 * it starts past the end. */
static void reader_start(struct rp_req *r)
{
    struct rp_fill *f = r->fill;
    uint64_t first = 0, last = 0;
    enum rp_range_result rr = RP_RANGE_NONE;
    if (r->range)
        rr = rp_http_parse_range(r->range, strlen(r->range), (uint64_t)f->expected, &first, &last);
    if (rr == RP_RANGE_UNSATISFIABLE) {
        reader_drop(r);
        rp_req_range_unsatisfiable(r, (uint64_t)f->expected);
        return;
    }
    r->fill_fd = rp_cache_fill_open_reader(f->cf);
    if (r->fill_fd < 0) {
        /* Out of descriptors, say: nothing is sent yet, so the client gets an answer
         * rather than a bare close later. The fill goes on for the others. */
        rp_error("fill %s: cannot open temp file: %s", f->digest, strerror(errno));
        reader_drop(r);
        rp_req_error(r, 503, "UNAVAILABLE", "cannot read the blob being downloaded; retry", NULL);
        return;
    }
    char extra[2 * RP_DIGEST_MAX + 256];
    int n = head_extra(f, r, extra, sizeof(extra));
    r->fill_sent = 0;
    r->fill_end = f->expected;
    if (rr == RP_RANGE_OK) {
        r->fill_sent = (int64_t)first;
        r->fill_end = (int64_t)last + 1;
        snprintf(extra + n, sizeof(extra) - (size_t)n, "Content-Range: bytes %llu-%llu/%lld\r\n",
                 (unsigned long long)first, (unsigned long long)last, (long long)f->expected);
    }
    r->up_status = f->up_status;
    rp_conn_write_head(r->conn, rr == RP_RANGE_OK ? 206 : 200, f->content_type,
                       r->fill_end - r->fill_sent, extra);
    rp_conn_stream_mode(r->conn);
    pump(r);
}

/* Whether a Content-Range value says exactly bytes first-last of total (the unit is
 * case-insensitive, nothing else may differ). */
static bool content_range_is(const char *v, int64_t first, int64_t last, int64_t total)
{
    char want[80];
    snprintf(want, sizeof(want), "bytes %lld-%lld/%lld", (long long)first, (long long)last,
             (long long)total);
    return v && strcasecmp(v, want) == 0;
}

/* The answer to a resumption's ranged GET: 206 for exactly the rest of the blob, or 200 with
 * all of it (a server that ignores Range: what the file has is skipped). Anything else ends
 * the fill; the readers' heads are out, so they are cut. */
static int resume_headers(struct rp_fill *f, int status, const struct rp_xfer_headers *h)
{
    int64_t have = f->written;
    if (f->unsized) {
        /* Only a 206 whose Content-Range names the rest and the total vouches that the
         * bytes go on where the file ends; a 200 from the start again (the first GET cut
         * before any byte) is the same answer as the first. */
        uint64_t first = 0, last = 0, total = 0;
        if (status == 206 && h->content_range &&
            rp_http_parse_content_range(h->content_range, strlen(h->content_range), &first, &last,
                                        &total) == 0 &&
            first == (uint64_t)have && total <= INT64_MAX && last + 1 == total &&
            (h->length < 0 || (uint64_t)h->length == total - first)) {
            f->expected = (int64_t)total;
            return 0;
        }
        if (status == 200 && have == 0) {
            f->expected = h->length;
            return 0;
        }
        f->fail_reason = rp_xasprintf(
            "resuming at byte %lld of a blob sent without length: upstream answered %d%s%s",
            (long long)have, status, status == 206 ? " for range " : "",
            status == 206 && rp_header_value_safe(h->content_range) ? h->content_range : "");
        return -1;
    }
    /* Sent without Content-Length (chunked, as everything such an upstream sends), the
     * answer is as long as its Content-Range says; the temp file takes no byte past the
     * blob's size, and one short of it fails the verification. */
    if (status == 206 && (h->length < 0 || h->length == f->expected - have) &&
        content_range_is(h->content_range, have, f->expected - 1, f->expected))
        return 0;
    if (status == 200 && (h->length < 0 || h->length == f->expected)) {
        f->skip = have;
        return 0;
    }
    f->fail_reason = rp_xasprintf(
        "resuming at byte %lld of %lld: upstream answered %d%s%s", (long long)have,
        (long long)f->expected, status, status == 206 ? " for range " : "",
        status == 206 && rp_header_value_safe(h->content_range) ? h->content_range : "");
    return -1;
}

static int64_t behind_size_known(const struct rp_server *srv, const char *digest)
{
    for (size_t i = 0; i < sizeof(srv->behind_sizes) / sizeof(srv->behind_sizes[0]); i++)
        if (strcmp(srv->behind_sizes[i].digest, digest) == 0)
            return srv->behind_sizes[i].size;
    return -1;
}

static void behind_size_learn(struct rp_server *srv, const char *digest, int64_t size)
{
    const size_t n = sizeof(srv->behind_sizes) / sizeof(srv->behind_sizes[0]);
    if (behind_size_known(srv, digest) >= 0)
        return;
    struct rp_blob_size *e = &srv->behind_sizes[srv->behind_sizes_next++ % n];
    snprintf(e->digest, sizeof(e->digest), "%s", digest);
    e->size = size;
}

static void fill_count(const struct rp_fill *f, enum rp_fill_event ev);
static void start_readers(struct rp_fill *f);

/* Downloads under way that no client reads (FILL_ORPHANS_MAX). */
static size_t orphans(const struct rp_server *srv)
{
    size_t n = 0;
    const struct rp_fill *f;
    TAILQ_FOREACH(f, &srv->fills, link)
    n += TAILQ_EMPTY(&f->readers) && !f->declined &&
         (f->state == FILL_WAITING || f->state == FILL_RUNNING);
    return n;
}

/* Stops a download no client reads, being one too many of those (the caller stops the
 * transfer, as for fill_decline). */
static void fill_too_many(struct rp_fill *f)
{
    f->declined = true;
    rp_info("fill %s registry=%s bytes=%lld: stopped with its clients gone: %d downloads with "
            "no client go on already",
            f->digest, f->reg->name, (long long)f->written, FILL_ORPHANS_MAX);
}

/* No reader waits for the download and the cache will not keep the blob: it is not wanted,
 * which is not a failure. Counted and logged (how: when it was seen, bytes: the blob's size,
 * -1 unknown); the caller stops the transfer. */
static void fill_decline(struct rp_fill *f, int64_t bytes, const char *how)
{
    f->declined = true;
    fill_count(f, RP_FILL_NOT_KEPT);
    rp_info("fill %s registry=%s bytes=%lld: %s: larger than the cache's max_size", f->digest,
            f->reg->name, (long long)bytes, how);
}

/* fill_decline for a download under way. */
static void fill_give_up(struct rp_fill *f)
{
    char how[80];
    snprintf(how, sizeof(how), "given up at %lld with its clients gone", (long long)f->written);
    fill_decline(f, f->unsized ? -1 : f->expected, how);
}

/* Pins the blob by the patterns in force (as a finished fill is) and asks whether the cache
 * may keep size bytes of it: not when that is more than max_size leaves beside the pins. */
static bool fill_keepable(struct rp_fill *f, int64_t size)
{
    rp_server_maybe_pin(f->srv, f->reg, f->repo, f->digest);
    return rp_cache_can_hold(f->srv->cache, f->digest, (uint64_t)size);
}

/* Re-asked after this much more has landed: a reload may pin more beside it. */
#define FILL_ROOM_REASK (64 * 1024 * 1024)

/* fill_keepable for what has landed of a download with no length and no reader, asked for
 * every piece: nearly full, the cache walks its whole index for an answer (asked per piece,
 * 128 MiB beside 150,000 entries took a minute, not a second, the loop busy with it), so the
 * room it has is asked once, and again only when the download passes it or has grown by
 * FILL_ROOM_REASK. */
static bool unsized_keepable(struct rp_fill *f)
{
    if (f->room < 0 || f->written > f->room || f->written - f->room_asked >= FILL_ROOM_REASK) {
        rp_server_maybe_pin(f->srv, f->reg, f->repo, f->digest);
        uint64_t room = rp_cache_room_for(f->srv->cache, f->digest);
        f->room = room > INT64_MAX ? INT64_MAX : (int64_t)room;
        f->room_asked = f->written;
    }
    return f->written <= f->room;
}

static int fill_headers_cb(void *arg, int status, const struct rp_xfer_headers *h)
{
    struct rp_fill *f = arg;
    if (f->resumes)
        return resume_headers(f, status, h);
    f->up_status = status;
    if (status != 200) {
        f->state = FILL_REFUSED;
        if (h->retry_after && rp_header_value_safe(h->retry_after) && strlen(h->retry_after) < 64)
            f->retry_after = rp_xstrdup(h->retry_after);
        /* Relayed as request.c relays it (RFC 9110 15.5.6: a 405 says what is allowed). */
        if (status == 405 && h->allow)
            f->allow = rp_xstrdup(h->allow);
        return 0;
    }
    /* Readers would get a whole answer from the head alone (no last byte to hold back until
     * the digest matches): an empty body is refused unless it is the digest of nothing. */
    if (h->length == 0 && !rp_digest_is_empty(f->digest)) {
        f->fail_reason = rp_xstrdup("upstream sent an empty body for a blob that is not");
        return -1;
    }
    if (f->cf && h->length >= 0 && h->length != f->expected) {
        /* Begun behind a range, with the size its answer gave. */
        f->fail_reason = rp_xasprintf("upstream sent %lld bytes for a blob of %lld",
                                      (long long)h->length, (long long)f->expected);
        return -1;
    }
    if (!f->cf) {
        int err = 0;
        /* Begun behind a multipart range, the size is first known here; or every client
         * left while upstream was silent. With no client waiting for the whole blob, one
         * the cache may not keep is not downloaded. Its length is not remembered: no
         * digest vouches for it, and a wrong one (a CDN's) would keep every later fill
         * behind a multipart range from starting. */
        f->unsized = h->length < 0;
        /* Unsized, nothing says yet that it is too big: judged as its bytes land. */
        if (TAILQ_EMPTY(&f->readers) && !fill_keepable(f, h->length < 0 ? 0 : h->length)) {
            fill_decline(f, h->length,
                         f->behind ? "not downloaded behind a range"
                                   : "not downloaded with its clients gone");
            return -1;
        }
        if (TAILQ_EMPTY(&f->readers) && orphans(f->srv) > FILL_ORPHANS_MAX) {
            fill_too_many(f);
            return -1;
        }
        f->cf = rp_cache_fill_begin(f->srv->cache, f->digest, h->length, &err);
        if (!f->cf) {
            f->fail_reason = rp_xasprintf("cache: %s", rp_cache_strerror(err));
            f->disk_full = err == RP_CACHE_E_NOSPACE;
            /* Upstream has the blob; only the proxy's store failed. Every reader is still
             * before its head: served uncached from upstream, not refused with a 502 that
             * reads as upstream's fault. */
            f->no_cache = true;
            return -1;
        }
    } else if (TAILQ_EMPTY(&f->readers) && orphans(f->srv) > FILL_ORPHANS_MAX) {
        /* Begun behind a range, with its size: an orphan then, counted so. Joined since by
         * a client that left before this head (no running download to judge then), it is
         * one more than the bound allows now. */
        fill_too_many(f);
        return -1;
    }
    if (!f->cf || h->length >= 0)
        f->expected = h->length; /* begun behind a range, the size is already known */
    f->content_type = rp_xstrdup(
        rp_header_value_safe(h->content_type) ? h->content_type : "application/octet-stream");
    f->state = FILL_RUNNING;
    if (f->unsized) {
        rp_info("fill %s registry=%s: upstream sent no length; its clients get the blob once "
                "it is in and verified",
                f->digest, f->reg->name);
        return 0;
    }
    start_readers(f);
    /* Every reader was answered at once without it (ranges past the end, now that the size
     * is known): judged as if none had waited, above. Here, not on the next loop turn: over
     * a fast link the whole blob lands meanwhile. */
    if (TAILQ_EMPTY(&f->readers) && !fill_keepable(f, f->expected)) {
        fill_decline(f, f->expected, "not downloaded, its clients answered without it");
        return -1;
    }
    return 0;
}

/* Gives every reader that has none its head, and what has landed. */
static void start_readers(struct rp_fill *f)
{
    struct rp_req *r, *next;
    for (r = TAILQ_FIRST(&f->readers); r; r = next) {
        next = TAILQ_NEXT(r, fill_link);
        /* A 416 answered here can let a pipelined request on that connection join now:
         * it was started when it joined. */
        if (r->fill_fd < 0)
            reader_start(r);
    }
}

static void fill_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_fill *f = arg;
    f->flush_queued = false;
    if (f->state != FILL_RUNNING && f->state != FILL_SYNCING)
        return;
    if (f->state == FILL_RUNNING && rp_cache_fill_flush(f->cf) != RP_CACHE_OK)
        return; /* sticky: the fill fails its verification */
    /* Only readers running low are fed here; the others are fed when their client has
     * drained them to RP_STREAM_LOW (rp_fill_reader_drained). */
    struct rp_req *r;
    TAILQ_FOREACH(r, &f->readers, fill_link)
    if (rp_conn_output_len(r->conn) < RP_STREAM_LOW)
        pump(r);
}

static long fill_data_cb(void *arg, const char *p, size_t n)
{
    struct rp_fill *f = arg;
    size_t all = n;
    if (f->state == FILL_REFUSED) {
        rp_buf_add(&f->err_body, p, n); /* past the cap the body is cut, not fatal */
        return (long)n;
    }
    if (f->skip > 0) {
        size_t k = (uint64_t)f->skip < n ? (size_t)f->skip : n;
        f->skip -= (int64_t)k;
        p += k;
        n -= k;
        if (n == 0)
            return (long)all;
    }
    int e = rp_cache_fill_write(f->cf, p, n);
    if (e != RP_CACHE_OK) {
        f->fail_reason = rp_xasprintf("cache: %s", rp_cache_strerror(e));
        f->disk_full = e == RP_CACHE_E_NOSPACE;
        return -1;
    }
    f->written += (int64_t)n;
    /* With no reader and no length, whether the cache may keep it is known only as it
     * grows: past that, it stops here, as at headers (fill_headers_cb). Judged per piece,
     * not per loop iteration: over a fast link the rest and the end come in one. */
    if (f->unsized && TAILQ_EMPTY(&f->readers) && !unsized_keepable(f)) {
        fill_give_up(f);
        return -1;
    }
    /* curl hands over a TLS record at a time, many per loop iteration: the file write and
     * the readers' pumps wait for the iteration's last one. */
    if (!f->flush_ev) {
        fill_flush_cb(-1, 0, f); /* no event (out of memory): at once, as before */
    } else if (!f->flush_queued) {
        f->flush_queued = true;
        event_active(f->flush_ev, EV_TIMEOUT, 1);
    }
    return (long)all;
}

/* Every reader is told the fill failed: one that has not had its head yet gets an error
 * answer, as does one whose head has not left the proxy yet (upstream's head, body and
 * failure came in one loop iteration); one that is mid-body is cut off. The fill must be
 * unlisted first: a reader of another repository looks up again and must not find it. */
static void fail_readers(struct rp_fill *f, const struct rp_fetch_result *res)
{
    struct rp_req *r;
    while ((r = TAILQ_FIRST(&f->readers))) {
        reader_detach(r);
        if (r->fill_fd >= 0) {
            if (!rp_req_take_back(r)) {
                rp_req_finish(r, "fill");
                continue;
            }
            close(r->fill_fd);
            r->fill_fd = -1;
        }
        /* Passed through, an answer without a length would be refused (request.c can hold
         * back no last byte of it): the reader is told the cache's trouble instead. */
        bool pass = (f->disk_full || f->no_cache) && !f->unsized;
        if (!pass && !rp_fill_is_for(f, r->route.reg, r->route.name)) {
            /* Joined from another repository (confirmed upstream, or linked): what failed
             * is the fill's repository, its registry's answer for it, its download; this
             * one's may serve it. It starts over: the first to do so begins a download
             * from its own repository, and the others join that. */
            r->state = RQ_LOOKUP;
            rp_req_drive(r);
            continue;
        }
        if (pass) {
            /* The proxy's own trouble, for its admin (the log; on a full disk also
             * regproxy_cache_disk_full_total): the client is served from upstream, uncached,
             * as a proxy whose cache cannot take more does. Each such client fetches for
             * itself. */
            rp_req_pass_through(r);
        } else if (f->disk_full || f->no_cache) {
            rp_req_error(r, 503, "UNAVAILABLE",
                         "the cache has no room for a blob upstream sends without a length; "
                         "retry later",
                         NULL);
        } else if (f->state == FILL_REFUSED) {
            if (!rp_req_redirect_refused(r, res, f->up_status))
                rp_req_answer_upstream_failure(r, f->up_status, f->retry_after, f->allow,
                                               f->err_body.data, f->err_body.len);
        } else if (res->fail == RP_FETCH_E_TOKEN || res->fail == RP_FETCH_E_AUTH) {
            /* 502: the registry refused the proxy, not the client (see up_failed). */
            rp_req_upstream_error(r, 502, "UNAUTHORIZED", "cannot authenticate upstream",
                                  res->status, f->fail_reason ? f->fail_reason : res->err);
        } else if (res->fail == RP_FETCH_E_TRANSPORT && !res->status) {
            rp_req_upstream_error(r, 503, "UNAVAILABLE", rp_req_unreachable_msg(res->xfer_err), 0,
                                  res->err);
        } else {
            rp_req_upstream_error(r, 502, "UNKNOWN", "upstream blob download failed", res->status,
                                  f->fail_reason ? f->fail_reason : res->err);
        }
    }
}

static void fill_unlist(struct rp_fill *f)
{
    TAILQ_REMOVE(&f->srv->fills, f, link);
    f->srv->n_fills--;
}

/* Verified: every reader gets the rest now (the file stays readable through its descriptor
 * after the rename). to_publish: the file becomes the cached blob, which the readers then
 * hold as a cache hit's reader does (eviction does not count bytes still being sent as
 * freed); rp_req_free releases it. */
static void release_readers(struct rp_fill *f, bool to_publish)
{
    struct rp_req *r;
    while ((r = TAILQ_FIRST(&f->readers))) {
        reader_detach(r);
        if (to_publish && r->fill_fd >= 0 && !r->blob_held) {
            rp_cache_hold(f->srv->cache, f->digest);
            r->blob_held = true;
        }
        if (r->fill_fd < 0 || queue_range(r, r->fill_end) < 0) {
            rp_req_finish(r, "fill");
            continue;
        }
        rp_req_queued(r);
    }
}

/* Pins the verified blob by the patterns in force (publishing runs eviction, which must
 * not take it) and asks whether the cache may keep it: kept, a blob larger than what
 * max_size leaves beside the pins would evict every other unpinned entry and then itself.
 * Not, the fill ends here: its readers get the rest from the temp file, which goes with it. */
static bool keep_or_end(struct rp_fill *f)
{
    if (fill_keepable(f, f->written))
        return true;
    fill_unlist(f);
    release_readers(f, false);
    fill_count(f, RP_FILL_NOT_KEPT);
    rp_warn("fill %s registry=%s bytes=%lld ms=%lld: served but not cached, larger than the "
            "cache's max_size (%llu bytes) leaves beside what is pinned",
            f->digest, f->reg->name, (long long)f->written, (long long)f->ms,
            (unsigned long long)f->srv->conf->cache.max_size);
    fill_free(f);
    return false;
}

/* On the worker thread: only the fill's descriptor is touched. */
static void fill_sync_work(void *arg)
{
    struct rp_fill *f = arg;
    rp_cache_fill_sync(f->cf);
}

/* Back on the loop: durable, so it can be published. Readers that joined while the sync
 * ran get their last byte now. */
static void fill_synced(void *arg)
{
    struct rp_fill *f = arg;
    /* Judged in fill_done_cb already; but a reload during the sync repins from repository
     * links, which this blob has only after the commit: judged again on the patterns in
     * force now. */
    if (!keep_or_end(f))
        return;
    fill_unlist(f);
    release_readers(f, true);
    struct rp_cache_fill *cf = f->cf;
    f->cf = NULL;
    int e = rp_cache_fill_commit(cf);
    if (e != RP_CACHE_OK) {
        rp_warn("fill %s registry=%s verified but not cached: %s", f->digest, f->reg->name,
                rp_cache_strerror(e));
        fill_free(f);
        return;
    }
    rp_cache_link(f->srv->cache, f->reg->name, f->repo, f->digest);
    rp_info("fill %s registry=%s bytes=%lld ms=%lld resumed=%d (durable after %lld)", f->digest,
            f->reg->name, (long long)f->written, (long long)f->ms, f->resumes,
            (long long)(rp_now_ms() - f->started_ms));
    fill_free(f);
}

static const struct rp_fetch_cb fill_cb;

static void fill_count(const struct rp_fill *f, enum rp_fill_event ev)
{
    rp_metrics_fill(&f->srv->metrics, (size_t)(f->reg - f->srv->conf->registries), ev);
}

/* Starts the download, or (range: "bytes=N-") its resumption. */
static void fill_fetch(struct rp_fill *f, const char *range)
{
    char *path = rp_xasprintf("/v2/%s/blobs/%s", f->repo, f->digest);
    struct rp_fetch_opts o = {
        .reg = f->reg,
        .path = path,
        .name = f->repo,
        .range = range,
        .stream = true,
        .follow_redirects = true,
    };
    f->fetch = rp_fetch_start(f->srv, &o, &fill_cb, f);
    free(path);
}

/* The network cut a running download (reset, early close, stall): it goes on from where
 * the file ends, from the registry again (a CDN's signed URL may have expired). Only
 * transport failures qualify: a complete answer with wrong bytes is not retried. */
static bool fill_resume(struct rp_fill *f, const struct rp_fetch_result *res)
{
    if (f->state != FILL_RUNNING || res->fail != RP_FETCH_E_TRANSPORT ||
        f->resumes >= FILL_RESUMES || (f->expected >= 0 && f->written >= f->expected))
        return false;
    f->resumes++;
    fill_count(f, RP_FILL_RESUMED);
    char of[40] = "an unknown number of";
    if (f->expected >= 0)
        snprintf(of, sizeof(of), "%lld", (long long)f->expected);
    rp_warn("fill %s registry=%s: upstream stopped at %lld of %s bytes (%s); resuming there "
            "(%d of %d)",
            f->digest, f->reg->name, (long long)f->written, of,
            res->err ? res->err : "transport error", f->resumes, FILL_RESUMES);
    free(f->fail_reason);
    f->fail_reason = NULL;
    f->skip = 0;
    char range[48];
    snprintf(range, sizeof(range), "bytes=%lld-", (long long)f->written);
    fill_fetch(f, f->written > 0 ? range : NULL);
    return true;
}

static void fill_done_cb(void *arg, const struct rp_fetch_result *res)
{
    struct rp_fill *f = arg;
    f->fetch = NULL;
    int64_t ms = rp_now_ms() - f->started_ms;
    if (fill_resume(f, res))
        return;
    if (f->declined) {
        fill_unlist(f);
        fail_readers(f, res); /* none: they are gone, or it was not declined */
        fill_free(f);
        return;
    }
    /* Every byte of a download of known size is in, and only what would follow them was
     * cut (a chunked answer's terminating chunk, lost with the connection): nothing is left
     * to resume, and the digest judges the bytes as at a clean end. Failed, the readers
     * were cut one byte short of a blob that was whole. */
    bool all_in = f->state == FILL_RUNNING && res->fail == RP_FETCH_E_TRANSPORT && !f->unsized &&
                  f->expected >= 0 && f->written == f->expected;
    if (f->state != FILL_RUNNING || (res->fail != RP_FETCH_OK && !all_in)) {
        fill_unlist(f);
        rp_warn("fill %s registry=%s failed after %lld bytes in %lld ms: %s (upstream %d)%s",
                f->digest, f->reg->name, (long long)f->written, (long long)ms,
                f->fail_reason ? f->fail_reason
                : res->err     ? res->err
                               : "refused",
                f->up_status,
                f->disk_full || f->no_cache
                    ? "; clients waiting for it are passed through, uncached"
                    : "");
        if (f->disk_full)
            fill_count(f, RP_FILL_NO_ROOM);
        fail_readers(f, res);
        fill_free(f);
        return;
    }
    int e = rp_cache_fill_verify(f->cf);
    if (e != RP_CACHE_OK) {
        fill_unlist(f);
        rp_warn("fill %s registry=%s rejected: %s; nothing cached", f->digest, f->reg->name,
                rp_cache_strerror(e));
        struct rp_fetch_result bad = *res;
        bad.fail = RP_FETCH_E_OWNER;
        free(f->fail_reason);
        f->fail_reason = rp_xasprintf("%s", rp_cache_strerror(e));
        f->disk_full = e == RP_CACHE_E_NOSPACE;
        if (f->disk_full)
            fill_count(f, RP_FILL_NO_ROOM);
        fail_readers(f, &bad);
        fill_free(f);
        return;
    }
    f->ms = ms;
    if (f->unsized) {
        /* The digest vouches for the size now: the readers get their heads, and the rest
         * (all of it) below. */
        f->expected = f->written;
        f->unsized = false;
        start_readers(f);
    }
    /* Learned once the digest vouches for it: a size from an answer that then failed (a
     * CDN's error page sent as a 200) would make every later fill behind a multipart range
     * begin with it, and fail at the true answer's Content-Length. */
    if (f->behind)
        behind_size_learn(f->srv, f->digest, f->written);
    if (!keep_or_end(f))
        return;
    /* Verified: the readers get the rest before the slow fsync, which runs on the worker
     * thread so that no client of this loop waits for the disk. The fill stays findable
     * meanwhile: a client asking for the blob now joins it rather than fetching it again. */
    release_readers(f, true);
    f->state = FILL_SYNCING;
    rp_syncer_submit(f->srv->syncer, fill_sync_work, fill_synced, f);
}

static const struct rp_fetch_cb fill_cb = {
    .on_headers_cb = fill_headers_cb,
    .on_data_cb = fill_data_cb,
    .on_done_cb = fill_done_cb,
};

/* The last reader left a running download. One the cache will not keep (larger than what
 * max_size leaves beside the pins) would only be thrown away at its end, after holding a
 * temp file and the upstream link all that while: it stops now. Judged from the loop, as
 * a reader may leave inside one of this fill's own callbacks, and again then, as one may
 * have joined since. */
static void fill_abandon_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_fill *f = arg;
    int64_t size = f->expected >= 0 ? f->expected : f->written; /* unsized: so far */
    if (f->state != FILL_RUNNING || f->declined || !TAILQ_EMPTY(&f->readers))
        return;
    bool too_many = orphans(f->srv) > FILL_ORPHANS_MAX;
    if (!too_many && fill_keepable(f, size))
        return;
    fill_unlist(f);
    if (too_many)
        fill_too_many(f);
    else
        fill_give_up(f);
    fill_free(f);
}

static void fill_start_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rp_fill *f = arg;
    event_free(f->start_ev);
    f->start_ev = NULL;
    fill_fetch(f, NULL);
}

/* Lists a new fill and starts its download (at the next loop turn when deferred: libcurl
 * takes no new transfer from inside another's callback); cf is its temp file when already
 * begun (the size known), else NULL. */
static struct rp_fill *fill_start(struct rp_server *srv, const struct rp_conf_registry *reg,
                                  const char *repo, const char *digest, struct rp_cache_fill *cf,
                                  int64_t expected, bool deferred)
{
    struct rp_fill *f = rp_xcalloc(1, sizeof(*f));
    f->srv = srv;
    f->state = FILL_WAITING;
    snprintf(f->digest, sizeof(f->digest), "%s", digest);
    f->reg = reg;
    f->repo = rp_xstrdup(repo);
    f->cf = cf;
    f->expected = expected;
    f->room = -1;
    f->started_ms = rp_now_ms();
    rp_buf_init(&f->err_body, RP_ERROR_BODY_MAX);
    f->flush_ev = event_new(srv->base, -1, 0, fill_flush_cb, f);
    f->abandon_ev = event_new(srv->base, -1, 0, fill_abandon_cb, f);
    TAILQ_INIT(&f->readers);
    TAILQ_INSERT_TAIL(&srv->fills, f, link);
    srv->n_fills++;
    if (deferred) {
        f->start_ev = event_new(srv->base, -1, 0, fill_start_cb, f);
        if (!f->start_ev) {
            fill_unlist(f);
            fill_free(f);
            return NULL;
        }
        event_active(f->start_ev, 0, 0);
    } else {
        fill_fetch(f, NULL);
    }
    return f;
}

int rp_fill_join(struct rp_server *srv, struct rp_req *r)
{
    struct rp_fill *f = rp_fill_find(srv, r->route.ref);
    if (!f)
        f = fill_start(srv, r->route.reg, r->route.name, r->route.ref, NULL, -1, false);
    r->fill = f;
    r->fill_fd = -1;
    r->state = RQ_FILL;
    TAILQ_INSERT_TAIL(&f->readers, r, fill_link);
    rp_debug("request %s joins the download of %s", r->id, f->digest);
    if ((f->state == FILL_RUNNING && !f->unsized) || f->state == FILL_SYNCING)
        reader_start(r);
    return 0;
}

bool rp_fill_behind(struct rp_server *srv, const struct rp_conf_registry *reg, const char *repo,
                    const char *digest, int64_t size)
{
    /* Concurrent ranges all pass through; the first answer starts the fill, and a late one
     * may come after it finished. */
    if (rp_fill_find(srv, digest) || rp_cache_blob_present(srv->cache, digest) ||
        orphans(srv) >= FILL_ORPHANS_MAX)
        return false;
    /* Pinned first, as a finished fill is: a pin lets the cache keep a blob over max_size. */
    rp_server_maybe_pin(srv, reg, repo, digest);
    if (size < 0)
        size = behind_size_known(srv, digest);
    if (size >= 0 && !rp_cache_can_hold(srv->cache, digest, (uint64_t)size))
        return false;
    /* With the size known, the temp file first: its room is allocated now, so a full disk
     * costs no download. */
    struct rp_cache_fill *cf = NULL;
    if (size >= 0) {
        int err = 0;
        cf = rp_cache_fill_begin(srv->cache, digest, size, &err);
        if (!cf) {
            rp_debug("fill %s registry=%s: not started behind a range: cache: %s", digest,
                     reg->name, rp_cache_strerror(err));
            if (err == RP_CACHE_E_NOSPACE)
                rp_metrics_fill(&srv->metrics, (size_t)(reg - srv->conf->registries),
                                RP_FILL_NO_ROOM);
            return false;
        }
    }
    struct rp_fill *f = fill_start(srv, reg, repo, digest, cf, size, true);
    if (!f)
        return false;
    f->behind = true;
    fill_count(f, RP_FILL_BEHIND_RANGE);
    rp_info("fill %s registry=%s bytes=%lld: started behind a range request", digest, reg->name,
            (long long)size);
    return true;
}

void rp_fill_leave(struct rp_req *r)
{
    struct rp_fill *f = r->fill;
    if (!f)
        return;
    reader_detach(r);
    fill_abandon_check(f);
}

/* The download goes on if the cache will keep it: the next client will want it. Judged on
 * the next loop turn (fill_abandon_cb), not in the caller's midst. */
static void fill_abandon_check(struct rp_fill *f)
{
    f->room = -1; /* asked afresh once there is no reader */
    if (TAILQ_EMPTY(&f->readers) && f->state == FILL_RUNNING && f->abandon_ev)
        event_active(f->abandon_ev, EV_TIMEOUT, 1);
}

void rp_fill_reader_drained(struct rp_req *r)
{
    if (r->fill)
        pump(r);
}

void rp_fills_free_all(struct rp_server *srv)
{
    struct rp_fill *f;
    while ((f = TAILQ_FIRST(&srv->fills))) {
        TAILQ_REMOVE(&srv->fills, f, link);
        srv->n_fills--;
        struct rp_req *r;
        while ((r = TAILQ_FIRST(&f->readers)))
            reader_detach(r);
        fill_free(f);
    }
}
