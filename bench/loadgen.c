/* SPDX-License-Identifier: Apache-2.0 */
/* loadgen: the HTTP/1.1 load generator bench/run.py drives. Keep-alive connections on
 * libevent, a round-robin request mix, a log-linear latency histogram, an optional read rate
 * per connection (slow clients) and an idle mode that only holds connections open. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define READ_BUF ((size_t)256 * 1024) /* one recv per readiness event, at most this much */
#define HEAD_CAP ((size_t)64 * 1024)  /* a response head larger than this is a protocol error */
#define MAX_CONNECTING 256 /* connects in flight at once (the listen backlogs are ~511) */
#define MAX_URLS 64
#define MAX_HEADERS 32
#define MAX_CONNS 60000
#define RECONNECT_DELAY_S 0.05 /* after a failed connect, so a dead server is not spun on */
#define MAX_CONNECT_FAILS 200  /* consecutive failed connects that end the run */
#define DEFAULT_CAP_S 600.0    /* run length bound when only -n is given */
#define IDLE_SETUP_S 120.0     /* -k: time allowed to open every connection */
#define IDLE_CHECK_S 60.0      /* -k: time allowed for the closing request on each one */

/* Latency histogram in microseconds: values below 64 exactly, above that 32 sub-buckets per
 * power of two (relative error under 2%), up to 2^40 us. */
#define H_SUB 32
#define H_EXACT 64
#define H_POWERS 35
#define H_BUCKETS (H_EXACT + H_POWERS * H_SUB)

struct url {
    char *path;
    char *req;
    size_t req_len;
};

enum conn_state {
    C_CLOSED,     /* no socket (waiting to connect, or finished) */
    C_QUEUED,     /* waiting for a connect slot */
    C_CONNECTING, /* non-blocking connect in flight */
    C_SENDING,    /* request partly written */
    C_HEAD,       /* reading the response head */
    C_BODY,       /* Content-Length body */
    C_BODY_EOF,   /* body delimited by the connection closing */
    C_CHUNK_SIZE, /* chunked: reading a chunk-size line */
    C_CHUNK_DATA,
    C_CHUNK_CRLF,
    C_TRAILER, /* chunked: trailer lines up to the empty one */
    C_KEEP,    /* between requests on a kept-alive connection */
};

struct conn {
    int id;
    int fd;
    enum conn_state st;
    struct event *rev, *wev, *tmr;
    const struct url *u;
    size_t wpos;
    char *head;
    size_t head_len, head_alloc;
    char line[128]; /* chunk-size and trailer lines */
    size_t line_len;
    int status;
    uint64_t remaining;
    uint64_t body_got; /* body bytes of the current response */
    bool close_after;
    bool in_req;
    bool paused;     /* reading stopped by the rate limit */
    bool done;       /* will issue no more requests */
    bool checked;    /* -k: the closing request was issued */
    int connect_err; /* a connect that failed at once, reported by connected_cb */
    double req_start, last_activity;
    double tokens, tok_time; /* rate limit bucket */
    uint64_t reqs;
};

static struct {
    char host[256], port[16];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct url urls[MAX_URLS];
    size_t n_urls;
    const char *headers[MAX_HEADERS];
    size_t n_headers;
    int conns;
    double seconds;
    uint64_t max_reqs;
    double rate;
    double timeout;
    int64_t expect_size; /* -s: body size every 2xx response must have; -1: any */
    bool idle;
} opt;

static struct {
    struct event_base *base;
    struct event *tick, *deadline;
    struct conn *conns;
    uint64_t issued, completed, inflight, bytes, errors;
    uint64_t e_status, e_connect, e_reset, e_short, e_timeout, e_protocol, e_idle_closed;
    uint64_t e_size;
    uint64_t status_class[6];
    uint64_t hist[H_BUCKETS];
    uint64_t max_us;
    double t0, t_end;
    size_t next_url;
    int connecting;
    int *queue; /* ring of conn ids waiting for a connect slot */
    int q_head, q_len;
    int consecutive_connect_fails;
    bool stopping;
    int idle_phase; /* -k: 0 opening, 1 holding, 2 checking */
    int established, idle_failed, held;
    double hold_start, hold_end, setup_s;
} g;

static void conn_start(struct conn *c);
static void conn_close(struct conn *c);
static void begin_request(struct conn *c);
static void read_cb(evutil_socket_t fd, short what, void *arg);
static void maybe_finish(void);

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        die("out of memory");
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct timeval tv_of(double s)
{
    struct timeval tv;
    if (s < 0)
        s = 0;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

/* --- histogram --- */

static int hist_index(uint64_t us)
{
    if (us < H_EXACT)
        return (int)us;
    int e = 63 - __builtin_clzll(us); /* >= 6 */
    int sub = (int)((us >> (e - 5)) & (H_SUB - 1));
    int idx = H_EXACT + (e - 6) * H_SUB + sub;
    return idx < H_BUCKETS ? idx : H_BUCKETS - 1;
}

/* The middle of a bucket's range, in microseconds. */
static double hist_value(int idx)
{
    if (idx < H_EXACT)
        return idx;
    int e = (idx - H_EXACT) / H_SUB + 6;
    int sub = (idx - H_EXACT) % H_SUB;
    double lo = (double)((uint64_t)(H_SUB + sub) << (e - 5));
    double width = (double)((uint64_t)1 << (e - 5));
    return lo + width / 2;
}

static void hist_record(double seconds)
{
    uint64_t us = seconds <= 0 ? 0 : (uint64_t)(seconds * 1e6);
    g.hist[hist_index(us)]++;
    if (us > g.max_us)
        g.max_us = us;
}

static double hist_pct_ms(double pct)
{
    uint64_t total = 0;
    for (int i = 0; i < H_BUCKETS; i++)
        total += g.hist[i];
    if (total == 0)
        return 0;
    uint64_t want = (uint64_t)ceil(pct / 100.0 * (double)total);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        seen += g.hist[i];
        if (seen >= want) {
            double v = hist_value(i);
            if (v > (double)g.max_us)
                v = (double)g.max_us;
            return v / 1000.0;
        }
    }
    return (double)g.max_us / 1000.0;
}

/* --- options --- */

static void usage(void)
{
    fputs("usage: loadgen [-c CONNS] [-d SECONDS] [-n MAXREQS] [-H 'Name: value']... [-r "
          "BYTES_PER_S]\n"
          "               [-s BYTES] [-t TIMEOUT_S] [-k] URL...\n"
          "  -c  connections (default 1)\n"
          "  -d  run length; requests in flight at the end are dropped, their bytes counted\n"
          "      (default 10, or a 600 s bound when -n is given)\n"
          "  -n  stop after this many requests\n"
          "  -H  extra request header (repeatable)\n"
          "  -r  read at most this many body bytes per second per connection (slow clients)\n"
          "  -s  every 2xx response's body must be this many bytes (else a \"size\" error)\n"
          "  -t  inactivity timeout per request (default 60)\n"
          "  -k  idle mode: open CONNS keep-alive connections (one request each), hold them idle\n"
          "      for SECONDS, then send one more request on each\n"
          "  URLs are http://HOST:PORT/PATH on one host; several make a round-robin mix.\n"
          "Prints one JSON line.\n",
          stderr);
    exit(2);
}

static double parse_num(const char *s, const char *what)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < 0 || !isfinite(v))
        die("bad %s: %s", what, s);
    return v;
}

static void parse_url(const char *s)
{
    if (opt.n_urls >= MAX_URLS)
        die("at most %d URLs", MAX_URLS);
    if (strncmp(s, "http://", 7) != 0)
        die("only http:// URLs: %s", s);
    const char *hp = s + 7;
    const char *slash = strchr(hp, '/');
    const char *path = slash ? slash : "/";
    size_t hplen = slash ? (size_t)(slash - hp) : strlen(hp);
    char host[256], port[16] = "80";
    const char *colon = memchr(hp, ':', hplen);
    size_t hlen = colon ? (size_t)(colon - hp) : hplen;
    if (hlen == 0 || hlen >= sizeof(host))
        die("bad host in %s", s);
    memcpy(host, hp, hlen);
    host[hlen] = '\0';
    if (colon) {
        size_t plen = hplen - hlen - 1;
        if (plen == 0 || plen >= sizeof(port))
            die("bad port in %s", s);
        memcpy(port, colon + 1, plen);
        port[plen] = '\0';
    }
    if (opt.n_urls == 0) {
        memcpy(opt.host, host, sizeof(host));
        memcpy(opt.port, port, sizeof(port));
    } else if (strcmp(opt.host, host) != 0 || strcmp(opt.port, port) != 0) {
        die("all URLs must name the same host and port");
    }
    struct url *u = &opt.urls[opt.n_urls++];
    u->path = xstrdup(path);
}

static void build_requests(void)
{
    for (size_t i = 0; i < opt.n_urls; i++) {
        struct url *u = &opt.urls[i];
        size_t n = strlen(u->path) + strlen(opt.host) + 128;
        for (size_t h = 0; h < opt.n_headers; h++)
            n += strlen(opt.headers[h]) + 2;
        u->req = xmalloc(n);
        int w = snprintf(u->req, n,
                         "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: regproxy-loadgen\r\n",
                         u->path, opt.host, opt.port);
        size_t len = (size_t)w;
        for (size_t h = 0; h < opt.n_headers; h++) {
            size_t hl = strlen(opt.headers[h]);
            memcpy(u->req + len, opt.headers[h], hl);
            memcpy(u->req + len + hl, "\r\n", 2);
            len += hl + 2;
        }
        memcpy(u->req + len, "\r\n", 2);
        len += 2;
        u->req_len = len;
    }
}

static void resolve(void)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int e = getaddrinfo(opt.host, opt.port, &hints, &res);
    if (e != 0 || !res)
        die("cannot resolve %s:%s: %s", opt.host, opt.port, gai_strerror(e));
    memcpy(&opt.addr, res->ai_addr, res->ai_addrlen);
    opt.addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)opt.conns + 64;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < want)
        fprintf(stderr, "loadgen: RLIMIT_NOFILE is %llu, below %d connections\n",
                (unsigned long long)rl.rlim_cur, opt.conns);
}

/* --- connections --- */

static void count_error(uint64_t *kind)
{
    (*kind)++;
    g.errors++;
}

static void stop_all(void)
{
    if (g.stopping)
        return;
    g.stopping = true;
    g.t_end = now_s();
    event_base_loopbreak(g.base);
}

static void connect_slot_free(void)
{
    g.connecting--;
    while (g.q_len > 0 && g.connecting < MAX_CONNECTING && !g.stopping) {
        struct conn *c = &g.conns[g.queue[g.q_head]];
        g.q_head = (g.q_head + 1) % opt.conns;
        g.q_len--;
        c->st = C_CLOSED;
        conn_start(c);
    }
}

static void reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_start(arg);
}

static void rate_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    if (c->paused && c->fd >= 0) {
        c->paused = false;
        c->last_activity = now_s();
        event_add(c->rev, NULL);
    }
}

/* The connection is gone (by error, by the server, or by us); start another one unless the
 * run is ending. after_error delays the new connect a little. */
static void conn_restart(struct conn *c, bool after_error)
{
    conn_close(c);
    if (g.stopping || c->done || opt.idle)
        return;
    if (opt.max_reqs && g.issued >= opt.max_reqs) {
        c->done = true;
        maybe_finish();
        return;
    }
    if (after_error) {
        event_free(c->tmr);
        c->tmr = evtimer_new(g.base, reconnect_cb, c);
        struct timeval tv = tv_of(RECONNECT_DELAY_S);
        evtimer_add(c->tmr, &tv);
    } else {
        conn_start(c);
    }
}

static void conn_close(struct conn *c)
{
    if (c->in_req) {
        c->in_req = false;
        g.inflight--;
    }
    if (c->rev) {
        event_free(c->rev);
        c->rev = NULL;
    }
    if (c->wev) {
        event_free(c->wev);
        c->wev = NULL;
    }
    if (c->tmr)
        evtimer_del(c->tmr);
    if (c->fd >= 0) {
        if (c->st == C_CONNECTING)
            connect_slot_free();
        close(c->fd);
        c->fd = -1;
    }
    c->st = C_CLOSED;
    c->paused = false;
}

static void idle_check_progress(void);

/* A request ended without a complete response: count it under its kind and start over
 * (in idle mode the connection is simply lost). */
static void request_broken(struct conn *c, uint64_t *kind)
{
    count_error(kind);
    conn_restart(c, true);
    if (opt.idle) {
        if (!c->checked && !c->done)
            g.idle_failed++;
        c->done = true;
        idle_check_progress();
    }
}

static void response_done(struct conn *c)
{
    double t = now_s();
    hist_record(t - c->req_start);
    g.completed++;
    c->reqs++;
    c->in_req = false;
    g.inflight--;
    int cls = c->status / 100;
    if (cls >= 1 && cls <= 5)
        g.status_class[cls]++;
    if (cls != 2)
        count_error(&g.e_status);
    else if (opt.expect_size >= 0 && c->body_got != (uint64_t)opt.expect_size)
        count_error(&g.e_size); /* complete by its own framing, but not the body asked for */
    else
        g.consecutive_connect_fails = 0;
    if (opt.idle) {
        if (c->checked) {
            if (cls == 2)
                g.held++;
            c->done = true;
            conn_close(c);
        } else if (c->close_after) {
            g.idle_failed++;
            c->done = true;
            conn_close(c);
        } else {
            g.established++;
            c->st = C_KEEP;
        }
        idle_check_progress();
        return;
    }
    if (c->close_after) {
        conn_restart(c, false);
        return;
    }
    c->st = C_KEEP;
    begin_request(c);
}

static int parse_head(struct conn *c, size_t head_len)
{
    /* Status line: HTTP/1.x NNN ... */
    const char *p = c->head;
    if (head_len < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return -1;
    if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
        return -1;
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    bool http10 = p[7] == '0';
    bool have_len = false, chunked = false;
    bool conn_close_hdr = false, conn_keep_hdr = false;
    uint64_t len = 0;
    const char *end = c->head + head_len;
    const char *line = memchr(p, '\n', head_len);
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        size_t ll = (size_t)(eol - line);
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        if (ll == 0)
            break;
        const char *colon = memchr(line, ':', ll);
        if (colon) {
            size_t nl = (size_t)(colon - line);
            const char *v = colon + 1;
            const char *ve = line + ll;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t vl = (size_t)(ve - v);
            if (nl == 14 && strncasecmp(line, "content-length", 14) == 0) {
                if (vl == 0 || vl > 19)
                    return -1;
                len = 0;
                for (size_t i = 0; i < vl; i++) {
                    if (v[i] < '0' || v[i] > '9')
                        return -1;
                    len = len * 10 + (uint64_t)(v[i] - '0');
                }
                have_len = true;
            } else if (nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                chunked = vl >= 7 && strncasecmp(ve - 7, "chunked", 7) == 0;
            } else if (nl == 10 && strncasecmp(line, "connection", 10) == 0) {
                if (vl == 5 && strncasecmp(v, "close", 5) == 0)
                    conn_close_hdr = true;
                if (vl == 10 && strncasecmp(v, "keep-alive", 10) == 0)
                    conn_keep_hdr = true;
            }
        }
        line = eol;
    }
    c->close_after = conn_close_hdr || (http10 && !conn_keep_hdr);
    bool no_body = c->status == 204 || c->status == 304 || c->status / 100 == 1;
    if (no_body) {
        c->remaining = 0;
        c->st = C_BODY;
    } else if (chunked) {
        c->st = C_CHUNK_SIZE;
        c->line_len = 0;
    } else if (have_len) {
        c->remaining = len;
        c->st = C_BODY;
    } else {
        c->st = C_BODY_EOF;
        c->close_after = true;
    }
    return 0;
}

/* Feeds received bytes to the response parser. Returns false when the connection was
 * closed or restarted meanwhile (the caller must not touch it further this round). */
static bool feed(struct conn *c, const char *data, size_t n)
{
    while (n > 0 || (c->st == C_BODY && c->remaining == 0)) {
        switch (c->st) {
        case C_HEAD: {
            size_t old = c->head_len;
            size_t take = n;
            if (old + take > HEAD_CAP)
                take = HEAD_CAP - old;
            if (old + take > c->head_alloc) {
                size_t na = c->head_alloc ? c->head_alloc : 1024;
                while (na < old + take)
                    na *= 2;
                c->head = xrealloc(c->head, na);
                c->head_alloc = na;
            }
            memcpy(c->head + old, data, take);
            c->head_len = old + take;
            size_t from = old > 3 ? old - 3 : 0;
            char *hit = memmem(c->head + from, c->head_len - from, "\r\n\r\n", 4);
            if (!hit) {
                if (c->head_len >= HEAD_CAP) {
                    request_broken(c, &g.e_protocol);
                    return false;
                }
                return true;
            }
            size_t head_len = (size_t)(hit - c->head) + 4;
            size_t used = head_len - old;
            data += used;
            n -= used;
            if (parse_head(c, head_len) < 0) {
                request_broken(c, &g.e_protocol);
                return false;
            }
            break;
        }
        case C_BODY: {
            size_t take = n < c->remaining ? n : (size_t)c->remaining;
            g.bytes += take;
            c->body_got += take;
            c->remaining -= take;
            data += take;
            n -= take;
            if (c->remaining == 0) {
                if (n > 0) { /* we never pipeline: nothing may follow a response */
                    request_broken(c, &g.e_protocol);
                    return false;
                }
                response_done(c);
                return false;
            }
            break;
        }
        case C_BODY_EOF:
            g.bytes += n;
            c->body_got += n;
            n = 0;
            break;
        case C_CHUNK_SIZE:
        case C_TRAILER: {
            const char *nl = memchr(data, '\n', n);
            size_t take = nl ? (size_t)(nl - data) + 1 : n;
            if (c->line_len + take > sizeof(c->line) - 1) {
                request_broken(c, &g.e_protocol);
                return false;
            }
            memcpy(c->line + c->line_len, data, take);
            c->line_len += take;
            data += take;
            n -= take;
            if (!nl)
                break;
            c->line[c->line_len] = '\0';
            bool empty = c->line_len <= 2;
            c->line_len = 0;
            if (c->st == C_TRAILER) {
                if (empty) {
                    if (n > 0) {
                        request_broken(c, &g.e_protocol);
                        return false;
                    }
                    response_done(c);
                    return false;
                }
                break;
            }
            char *end = NULL;
            errno = 0;
            unsigned long long sz = strtoull(c->line, &end, 16);
            if (errno || end == c->line || (*end != '\r' && *end != ';' && *end != '\n')) {
                request_broken(c, &g.e_protocol);
                return false;
            }
            if (sz == 0) {
                c->st = C_TRAILER;
            } else {
                c->remaining = sz;
                c->st = C_CHUNK_DATA;
            }
            break;
        }
        case C_CHUNK_DATA: {
            size_t take = n < c->remaining ? n : (size_t)c->remaining;
            g.bytes += take;
            c->body_got += take;
            c->remaining -= take;
            data += take;
            n -= take;
            if (c->remaining == 0) {
                c->st = C_CHUNK_CRLF;
                c->line_len = 0;
            }
            break;
        }
        case C_CHUNK_CRLF: {
            char ch = *data;
            data++;
            n--;
            if (ch == '\n')
                c->st = C_CHUNK_SIZE;
            else if (ch != '\r') {
                request_broken(c, &g.e_protocol);
                return false;
            }
            break;
        }
        case C_KEEP:
        case C_SENDING:
        case C_CLOSED:
        case C_QUEUED:
        case C_CONNECTING:
            /* Bytes nobody asked for. */
            request_broken(c, &g.e_protocol);
            return false;
        }
    }
    return true;
}

static void on_eof(struct conn *c, bool reset)
{
    if (c->st == C_BODY_EOF) {
        response_done(c); /* close_after is set: it reconnects */
        return;
    }
    if (c->st == C_KEEP) {
        if (opt.idle) {
            count_error(&g.e_idle_closed);
            c->done = true;
            conn_close(c);
            idle_check_progress();
            return;
        }
        conn_restart(c, false); /* the server closed an idle keep-alive connection */
        return;
    }
    /* A reset, or a close before the head was complete, is a reset; a close inside the
     * body is a short body. */
    if (c->st == C_HEAD || reset)
        request_broken(c, &g.e_reset);
    else
        request_broken(c, &g.e_short);
}

static void rate_pause(struct conn *c, double t)
{
    /* Resume when at least 16 KiB (or a tenth of a second's worth) can be read. */
    double want = opt.rate / 10 < 16384 ? opt.rate / 10 : 16384;
    if (want < 1)
        want = 1;
    double wait = (want - c->tokens) / opt.rate;
    (void)t;
    c->paused = true;
    event_del(c->rev);
    event_free(c->tmr);
    c->tmr = evtimer_new(g.base, rate_resume_cb, c);
    struct timeval tv = tv_of(wait);
    evtimer_add(c->tmr, &tv);
}

static char rbuf[READ_BUF];

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct conn *c = arg;
    size_t cap = sizeof(rbuf);
    double t = now_s();
    if (opt.rate > 0) {
        double burst = opt.rate / 10 < 65536 ? 65536 : opt.rate / 10;
        c->tokens += (t - c->tok_time) * opt.rate;
        if (c->tokens > burst)
            c->tokens = burst;
        c->tok_time = t;
        if (c->tokens < 1) {
            rate_pause(c, t);
            return;
        }
        if ((double)cap > c->tokens)
            cap = (size_t)c->tokens;
    }
    ssize_t n = recv(fd, rbuf, cap, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        on_eof(c, true);
        return;
    }
    if (n == 0) {
        on_eof(c, false);
        return;
    }
    c->last_activity = t;
    if (opt.rate > 0)
        c->tokens -= (double)n;
    feed(c, rbuf, (size_t)n);
}

static void write_cb(evutil_socket_t fd, short what, void *arg);

static void send_some(struct conn *c)
{
    while (c->wpos < c->u->req_len) {
        ssize_t n = send(c->fd, c->u->req + c->wpos, c->u->req_len - c->wpos, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                event_free(c->wev);
                c->wev = event_new(g.base, c->fd, EV_WRITE, write_cb, c);
                event_add(c->wev, NULL);
                return;
            }
            if (errno == EINTR)
                continue;
            request_broken(c, &g.e_reset);
            return;
        }
        c->wpos += (size_t)n;
    }
    c->st = C_HEAD;
    c->head_len = 0;
    c->body_got = 0;
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    send_some(arg);
}

static void begin_request(struct conn *c)
{
    if (g.stopping)
        return;
    if (opt.max_reqs && g.issued >= opt.max_reqs) {
        c->done = true;
        conn_close(c);
        maybe_finish();
        return;
    }
    c->u = &opt.urls[g.next_url];
    g.next_url = (g.next_url + 1) % opt.n_urls;
    g.issued++;
    g.inflight++;
    c->in_req = true;
    c->wpos = 0;
    c->req_start = now_s();
    c->last_activity = c->req_start;
    c->tokens = 0;
    c->tok_time = c->req_start;
    c->st = C_SENDING;
    send_some(c);
}

static void connected_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct conn *c = arg;
    int err = c->connect_err;
    socklen_t el = sizeof(err);
    if (!err && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    c->connect_err = 0;
    connect_slot_free();
    c->st = C_CLOSED; /* the slot is released; conn_close must not release it again */
    if (err) {
        count_error(&g.e_connect);
        if (++g.consecutive_connect_fails >= MAX_CONNECT_FAILS) {
            fprintf(stderr, "loadgen: %d connects in a row failed (%s); giving up\n",
                    g.consecutive_connect_fails, strerror(err));
            stop_all();
            return;
        }
        if (opt.idle) {
            conn_close(c);
            c->done = true;
            g.idle_failed++;
            idle_check_progress();
            return;
        }
        conn_restart(c, true);
        return;
    }
    event_free(c->wev);
    c->wev = NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->rev = event_new(g.base, fd, EV_READ | EV_PERSIST, read_cb, c);
    event_add(c->rev, NULL);
    c->st = C_KEEP;
    begin_request(c);
}

static void conn_start(struct conn *c)
{
    if (g.stopping || c->done)
        return;
    if (g.connecting >= MAX_CONNECTING) {
        c->st = C_QUEUED;
        g.queue[(g.q_head + g.q_len) % opt.conns] = c->id;
        g.q_len++;
        return;
    }
    int fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        count_error(&g.e_connect);
        fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
        stop_all();
        return;
    }
    if (opt.rate > 0) {
        /* A small receive buffer makes a slow reader slow on the wire too (no autotuning to
         * megabytes of kernel buffer that would hide it). */
        int rcv = 64 * 1024;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    }
    c->fd = fd;
    c->st = C_CONNECTING;
    g.connecting++;
    c->wev = event_new(g.base, fd, EV_WRITE, connected_cb, c);
    if (connect(fd, (struct sockaddr *)&opt.addr, opt.addrlen) != 0 && errno != EINPROGRESS) {
        /* Reported by the callback, like an asynchronous failure. */
        c->connect_err = errno;
        event_active(c->wev, EV_WRITE, 0);
        return;
    }
    event_add(c->wev, NULL);
}

/* --- run control --- */

static void maybe_finish(void)
{
    if (opt.idle || g.stopping)
        return;
    if (opt.max_reqs && g.issued >= opt.max_reqs && g.inflight == 0)
        stop_all();
}

static void idle_hold_end_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    g.hold_end = now_s();
    g.idle_phase = 2;
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &g.conns[i];
        if (c->st == C_KEEP && !c->done) {
            c->checked = true;
            begin_request(c);
        } else {
            c->done = true;
        }
    }
    idle_check_progress();
}

static void idle_check_progress(void)
{
    if (g.idle_phase == 0 && g.established + g.idle_failed >= opt.conns) {
        g.idle_phase = 1;
        g.hold_start = now_s();
        g.setup_s = g.hold_start - g.t0;
        fprintf(stderr, "loadgen: holding %d idle connections for %.0f s\n", g.established,
                opt.seconds);
        event_free(g.deadline);
        g.deadline = evtimer_new(g.base, idle_hold_end_cb, NULL);
        struct timeval tv = tv_of(opt.seconds);
        evtimer_add(g.deadline, &tv);
        return;
    }
    if (g.idle_phase == 2) {
        for (int i = 0; i < opt.conns; i++)
            if (g.conns[i].in_req)
                return;
        stop_all();
    }
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (opt.idle && g.idle_phase == 0) {
        fprintf(stderr, "loadgen: only %d of %d connections open after %.0f s\n", g.established,
                opt.conns, IDLE_SETUP_S);
        g.idle_failed = opt.conns - g.established;
        idle_check_progress();
        return;
    }
    stop_all();
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    double t = now_s();
    if (opt.idle && g.idle_phase == 2 && t - g.hold_end > IDLE_CHECK_S) {
        stop_all();
        return;
    }
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &g.conns[i];
        if (c->in_req && !c->paused && t - c->last_activity > opt.timeout)
            request_broken(c, &g.e_timeout);
    }
}

static void print_json(void)
{
    double secs = g.t_end - g.t0;
    if (opt.idle)
        secs = g.hold_end > g.hold_start ? g.hold_end - g.hold_start : 0;
    double rate_base = g.t_end - g.t0 > 0 ? g.t_end - g.t0 : 1e-9;
    printf("{\"mode\":\"%s\",\"conns\":%d,\"requests\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"bytes\":%" PRIu64 ",\"seconds\":%.3f,\"req_per_s\":%.1f,\"mb_per_s\":%.2f,"
           "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,",
           opt.idle ? "idle" : "load", opt.conns, g.completed, g.errors, g.bytes, secs,
           (double)g.completed / rate_base, (double)g.bytes / 1e6 / rate_base, hist_pct_ms(50),
           hist_pct_ms(90), hist_pct_ms(99), (double)g.max_us / 1000.0);
    printf("\"status\":{\"1xx\":%" PRIu64 ",\"2xx\":%" PRIu64 ",\"3xx\":%" PRIu64
           ",\"4xx\":%" PRIu64 ",\"5xx\":%" PRIu64 "},",
           g.status_class[1], g.status_class[2], g.status_class[3], g.status_class[4],
           g.status_class[5]);
    printf("\"error_kinds\":{\"status\":%" PRIu64 ",\"connect\":%" PRIu64 ",\"reset\":%" PRIu64
           ",\"short_body\":%" PRIu64 ",\"timeout\":%" PRIu64 ",\"protocol\":%" PRIu64
           ",\"idle_closed\":%" PRIu64 ",\"size\":%" PRIu64 "}",
           g.e_status, g.e_connect, g.e_reset, g.e_short, g.e_timeout, g.e_protocol,
           g.e_idle_closed, g.e_size);
    if (opt.idle)
        printf(",\"established\":%d,\"held\":%d,\"setup_s\":%.3f", g.established, g.held,
               g.setup_s);
    printf("}\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    opt.conns = 1;
    opt.timeout = 60;
    opt.expect_size = -1;
    double seconds = -1;
    int ch;
    while ((ch = getopt(argc, argv, "c:d:n:H:r:s:t:kh")) != -1) {
        switch (ch) {
        case 'c': {
            double v = parse_num(optarg, "-c");
            if (v < 1 || v > MAX_CONNS)
                die("-c must be 1..%d", MAX_CONNS);
            opt.conns = (int)v;
            break;
        }
        case 'd':
            seconds = parse_num(optarg, "-d");
            break;
        case 'n':
            opt.max_reqs = (uint64_t)parse_num(optarg, "-n");
            break;
        case 'H':
            if (opt.n_headers >= MAX_HEADERS)
                die("at most %d headers", MAX_HEADERS);
            if (!strchr(optarg, ':') || strpbrk(optarg, "\r\n"))
                die("bad header: %s", optarg);
            opt.headers[opt.n_headers++] = optarg;
            break;
        case 'r':
            opt.rate = parse_num(optarg, "-r");
            break;
        case 's':
            opt.expect_size = (int64_t)parse_num(optarg, "-s");
            break;
        case 't':
            opt.timeout = parse_num(optarg, "-t");
            break;
        case 'k':
            opt.idle = true;
            break;
        default:
            usage();
        }
    }
    if (optind >= argc)
        usage();
    for (int i = optind; i < argc; i++)
        parse_url(argv[i]);
    if (seconds < 0)
        seconds = opt.max_reqs && !opt.idle ? DEFAULT_CAP_S : 10;
    opt.seconds = seconds;
    build_requests();
    resolve();
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);

    g.base = event_base_new();
    if (!g.base)
        die("cannot create the event loop");
    g.conns = calloc((size_t)opt.conns, sizeof(*g.conns));
    g.queue = calloc((size_t)opt.conns, sizeof(*g.queue));
    if (!g.conns || !g.queue)
        die("out of memory");
    g.t0 = now_s();
    for (int i = 0; i < opt.conns; i++) {
        g.conns[i].id = i;
        g.conns[i].fd = -1;
        g.conns[i].tmr = evtimer_new(g.base, reconnect_cb, &g.conns[i]);
    }
    g.tick = event_new(g.base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tick = tv_of(0.25);
    event_add(g.tick, &tick);
    g.deadline = evtimer_new(g.base, deadline_cb, NULL);
    struct timeval dl = tv_of(opt.idle ? IDLE_SETUP_S : opt.seconds);
    evtimer_add(g.deadline, &dl);
    for (int i = 0; i < opt.conns; i++)
        conn_start(&g.conns[i]);
    if (!g.stopping)
        event_base_dispatch(g.base);
    if (g.t_end == 0)
        g.t_end = now_s();
    print_json();

    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &g.conns[i];
        c->done = true;
        conn_close(c);
        if (c->tmr)
            event_free(c->tmr);
        free(c->head);
    }
    event_free(g.tick);
    event_free(g.deadline);
    event_base_free(g.base);
    free(g.conns);
    free(g.queue);
    for (size_t i = 0; i < opt.n_urls; i++) {
        free(opt.urls[i].path);
        free(opt.urls[i].req);
    }
    return 0;
}
