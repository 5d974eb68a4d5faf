/* SPDX-License-Identifier: Apache-2.0 */
/* accesslog: one line per request, as text (key=value) or a JSON object, with a request
 * id that is also sent to the client as X-Request-Id. Paths are validated request targets
 * or '-'; credentials never reach this code. */
#include "proxy.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rp_request_id(char *buf, size_t len)
{
    /* A random per-process prefix keeps ids unique across restarts and replicas. Built by
     * hand: every request gets one. */
    static char prefix[9];
    static unsigned long long seq;
    if (!prefix[0]) {
        unsigned v;
        if (RAND_bytes((unsigned char *)&v, sizeof(v)) != 1)
            v = (unsigned)rp_now_ms();
        for (int i = 7; i >= 0; i--, v >>= 4)
            prefix[i] = "0123456789abcdef"[v & 15];
    }
    char digits[RP_U64_DIGITS];
    size_t n = rp_fmt_u64(digits, ++seq);
    if (len < 8 + 1 + n + 1) {
        if (len)
            buf[0] = '\0';
        return;
    }
    memcpy(buf, prefix, 8);
    buf[8] = '-';
    memcpy(buf + 9, digits, n);
    buf[9 + n] = '\0';
}

/* A bounded line builder for the text format (printf costs a third of a cache hit). */
struct line {
    char *p;
    size_t len, cap;
};

static void add(struct line *l, const char *s, size_t n)
{
    if (n > l->cap - l->len)
        n = l->cap - l->len;
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

static void adds(struct line *l, const char *s)
{
    add(l, s, strlen(s));
}

/* s in double quotes, '"' and '\\' escaped with '\\' (logfmt's quoted value). */
static void addquoted(struct line *l, const char *s)
{
    add(l, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            add(l, "\\", 1);
        add(l, s, 1);
    }
    add(l, "\"", 1);
}

/* A value as logfmt parsers (go-logfmt, Promtail's and Loki's logfmt) read it: bare unless
 * it holds '=' or '"', which they refuse in a bare value, dropping the whole line (a query:
 * tags/list?n=100, referrers?artifactType=...). Values here are visible ASCII (request
 * targets) or our own words. */
static void addval(struct line *l, const char *s)
{
    if (strpbrk(s, "=\""))
        addquoted(l, s);
    else
        adds(l, s);
}

static void addnum(struct line *l, long long v)
{
    char tmp[RP_U64_DIGITS];
    if (v < 0)
        add(l, "-", 1);
    add(l, tmp, rp_fmt_u64(tmp, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v));
}

void rp_access_log(const struct rp_access *a)
{
    if (!rp_log_enabled(RP_LOG_INFO))
        return;
    if (rp_log_is_json()) {
        char ts[40];
        rp_log_time(ts, sizeof(ts));
        json_t *o = json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:s, s:s, s:i, s:s}", "ts", ts, "level",
            "info", "msg", "access", "id", a->id, "method", a->method, "path", a->path, "status",
            a->status, "bytes", (json_int_t)a->bytes, "ms", (json_int_t)a->ms, "registry",
            a->registry, "cache", a->cache, "upstream", a->upstream, "peer", a->peer);
        if (a->aborted)
            json_object_set_new(o, "aborted", json_string(a->aborted));
        if (a->reason)
            json_object_set_new(o, "reason", json_string(a->reason));
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (s) {
            rp_log_line(s, strlen(s));
            free(s);
        }
        return;
    }
    /* The same line rp_info would write, without printf. */
    char buf[6144];
    struct line l = {buf, 0, sizeof(buf)};
    char ts[40];
    rp_log_time(ts, sizeof(ts));
    adds(&l, ts);
    adds(&l, " info access id=");
    adds(&l, a->id);
    adds(&l, " method=");
    adds(&l, a->method);
    adds(&l, " path=");
    addval(&l, a->path);
    adds(&l, " status=");
    addnum(&l, a->status);
    adds(&l, " bytes=");
    addnum(&l, (long long)a->bytes);
    adds(&l, " ms=");
    addnum(&l, (long long)a->ms);
    adds(&l, " registry=");
    adds(&l, a->registry);
    adds(&l, " cache=");
    adds(&l, a->cache);
    adds(&l, " upstream=");
    addnum(&l, a->upstream);
    adds(&l, " peer=");
    adds(&l, a->peer);
    if (a->aborted) {
        adds(&l, " aborted=");
        adds(&l, a->aborted);
    }
    if (a->reason) {
        adds(&l, " reason=");
        addquoted(&l, a->reason);
    }
    /* Lines are one per request: a reason never carries a line break into the log. */
    for (size_t i = 0; i < l.len; i++)
        if (buf[i] == '\n' || buf[i] == '\r')
            buf[i] = ' ';
    rp_log_line(buf, l.len);
}
