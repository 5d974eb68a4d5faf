/* SPDX-License-Identifier: Apache-2.0 */
/* progress: what mirror, export and import show while they work: one status line on a
 * terminal (stderr, redrawn in place), plain lines on stdout for each finished item. */
#include "offline.h"

#include "../util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#define REDRAW_MS 200

void rp_format_bytes(uint64_t n, char *buf, size_t len)
{
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
}

void rp_progress_init(struct rp_progress *p, const char *verb, size_t total, uint64_t total_bytes)
{
    *p = (struct rp_progress){
        .tty = isatty(STDERR_FILENO) == 1,
        .verb = verb,
        .start_ms = rp_now_ms(),
        .total = total,
        .total_bytes = total_bytes,
    };
}

double rp_progress_rate(const struct rp_progress *p)
{
    int64_t ms = rp_now_ms() - p->start_ms;
    return ms > 0 ? (double)p->bytes / 1e6 / ((double)ms / 1000.0) : 0.0;
}

void rp_progress_update(struct rp_progress *p, bool force)
{
    if (!p->tty)
        return;
    int64_t now = rp_now_ms();
    if (!force && now - p->last_ms < REDRAW_MS)
        return;
    p->last_ms = now;
    char got[32], tot[32] = "";
    rp_format_bytes(p->bytes, got, sizeof(got));
    if (p->total_bytes)
        rp_format_bytes(p->total_bytes, tot, sizeof(tot));
    fprintf(stderr, "\r\033[K%s: %zu/%zu %s, %s%s%s, %.1f MB/s", p->verb, p->done, p->total,
            p->noun ? p->noun : "images", got, tot[0] ? " of " : "", tot, rp_progress_rate(p));
    fflush(stderr);
    p->shown = true;
}

void rp_progress_line(struct rp_progress *p, const char *fmt, ...)
{
    if (p->tty && p->shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        p->shown = false;
    }
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    rp_progress_update(p, true);
}

void rp_progress_end(struct rp_progress *p)
{
    if (p->tty && p->shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    p->shown = false;
}
