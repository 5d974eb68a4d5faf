/* SPDX-License-Identifier: Apache-2.0 */
/* unit: a minimal test harness. Each test binary prints "PASS name" or "FAIL name" per
 * test (tests/run.py counts them) and exits non-zero when any failed. */
#ifndef RP_UNIT_H
#define RP_UNIT_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int unit_passed, unit_failed, unit_cur_failed;
static const char *unit_cur;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__, unit_cur, #cond); \
            unit_cur_failed = 1;                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *ua_ = (a), *ub_ = (b);                                                         \
        if (!ua_ || !ub_ || strcmp(ua_, ub_) != 0) {                                               \
            fprintf(stderr, "%s:%d: %s: \"%s\" != \"%s\"\n", __FILE__, __LINE__, unit_cur,         \
                    ua_ ? ua_ : "(null)", ub_ ? ub_ : "(null)");                                   \
            unit_cur_failed = 1;                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long ua_ = (long long)(a), ub_ = (long long)(b);                                      \
        if (ua_ != ub_) {                                                                          \
            fprintf(stderr, "%s:%d: %s: %s == %lld, expected %lld\n", __FILE__, __LINE__,          \
                    unit_cur, #a, ua_, ub_);                                                       \
            unit_cur_failed = 1;                                                                   \
        }                                                                                          \
    } while (0)

static inline void unit_run(const char *name, void (*fn)(void))
{
    unit_cur = name;
    unit_cur_failed = 0;
    fn();
    printf("%s %s\n", unit_cur_failed ? "FAIL" : "PASS", name);
    fflush(stdout);
    if (unit_cur_failed)
        unit_failed++;
    else
        unit_passed++;
}

/* A new directory under $TMPDIR (else /tmp) named prefix.XXXXXX, written into buf; exits
 * the test binary when it cannot be made. */
static inline char *unit_mkdtemp(char *buf, size_t len, const char *prefix)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, len, "%s/%s.XXXXXX", base && *base ? base : "/tmp", prefix);
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        exit(2);
    }
    return buf;
}

static inline int unit_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes dir and all below it (symlinks themselves, never what they point to). */
static inline void unit_rm_rf(const char *dir)
{
    nftw(dir, unit_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

#define RUN(fn) unit_run(#fn, fn)
#define UNIT_EXIT() return unit_failed ? 1 : 0

#endif
