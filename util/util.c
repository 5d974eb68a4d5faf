/* SPDX-License-Identifier: Apache-2.0 */
/* util: shared helpers; see util.h for the contract of each. */
#include "util.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void oom(size_t n)
{
    rp_log_flush();
    fprintf(stderr, "regproxy: out of memory allocating %zu bytes\n", n);
    abort();
}

void *rp_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *rp_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *rp_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *rp_xstrdup(const char *s)
{
    return rp_xstrndup(s, strlen(s));
}

char *rp_xstrndup(const char *s, size_t n)
{
    char *p = rp_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *rp_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0)
        oom(0);
    return s;
}

void rp_buf_init(struct rp_buf *b, size_t cap)
{
    b->data = NULL;
    b->len = 0;
    b->alloc = 0;
    b->cap = cap;
    b->borrowed = false;
    b->secret = false;
}

void rp_buf_init_secret(struct rp_buf *b, size_t cap)
{
    rp_buf_init(b, cap);
    b->secret = true;
}

void rp_buf_init_in(struct rp_buf *b, char *storage, size_t size, size_t cap)
{
    rp_buf_init(b, cap);
    if (size) {
        b->data = storage;
        b->data[0] = '\0';
        b->alloc = size;
        b->borrowed = true;
    }
}

int rp_buf_add(struct rp_buf *b, const void *p, size_t n)
{
    if (n > b->cap || b->len > b->cap - n)
        return -1;
    if (b->len + n + 1 > b->alloc) {
        size_t a = b->alloc ? b->alloc : 256;
        while (a < b->len + n + 1)
            a *= 2;
        if (a > b->cap + 1)
            a = b->cap + 1;
        if (b->borrowed || b->secret) {
            char *d = rp_xmalloc(a);
            if (b->data)
                memcpy(d, b->data, b->len);
            if (b->secret)
                rp_secure_zero(b->data, b->alloc);
            if (!b->borrowed)
                free(b->data);
            b->data = d;
            b->borrowed = false;
        } else {
            b->data = rp_xrealloc(b->data, a);
        }
        b->alloc = a;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int rp_buf_addf(struct rp_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof(small)) {
        int r = rp_buf_add(b, small, (size_t)n);
        if (b->secret)
            rp_secure_zero(small, sizeof(small));
        return r;
    }
    char *big = rp_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int r = rp_buf_add(b, big, (size_t)n);
    if (b->secret)
        rp_secure_zero(big, (size_t)n + 1);
    free(big);
    return r;
}

void rp_buf_reset(struct rp_buf *b)
{
    if (b->secret)
        rp_secure_zero(b->data, b->len);
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void rp_buf_free(struct rp_buf *b)
{
    if (b->secret)
        rp_secure_zero(b->data, b->alloc);
    if (!b->borrowed)
        free(b->data);
    b->borrowed = false;
    b->data = NULL;
    b->len = b->alloc = 0;
}

static enum rp_log_level log_level = RP_LOG_INFO;
static bool log_json;

void rp_log_set_level(enum rp_log_level level)
{
    log_level = level;
}

void rp_log_set_json(bool on)
{
    log_json = on;
}

bool rp_log_is_json(void)
{
    return log_json;
}

bool rp_log_enabled(enum rp_log_level level)
{
    return level >= log_level;
}

void rp_log_time(char *buf, size_t len)
{
    /* Formatting a date is costly and every access line needs one: the part down to the
     * second is kept until the second changes. */
    static time_t last_sec = -1;
    static char last[64];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != last_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        snprintf(last, sizeof(last), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        last_sec = ts.tv_sec;
    }
    int ms = (int)(ts.tv_nsec / 1000000);
    snprintf(buf, len, "%s.%c%c%cZ", last, '0' + ms / 100, '0' + ms / 10 % 10, '0' + ms % 10);
}

/* Batching (rp_log_batch): lines gather here and leave in one write per event-loop
 * iteration, so a busy server does not pay a system call per access line. */
#define LOG_BATCH_SIZE (64 * 1024)
static char *log_batch;
static size_t log_batch_len;
static void (*log_kick)(void *);
static void *log_kick_arg;
static bool log_kicked;

static void log_write(const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere to report a failing log */
        p += w;
        n -= (size_t)w;
    }
}

void rp_log_flush(void)
{
    log_write(log_batch, log_batch_len);
    log_batch_len = 0;
    log_kicked = false;
}

void rp_log_batch(void (*kick)(void *), void *arg)
{
    if (!kick) {
        rp_log_flush();
        free(log_batch);
        log_batch = NULL;
        log_kick = NULL;
        return;
    }
    if (!log_batch)
        log_batch = rp_xmalloc(LOG_BATCH_SIZE);
    log_kick = kick;
    log_kick_arg = arg;
}

void rp_log_line(const char *line, size_t len)
{
    if (len > 8191)
        len = 8191;
    if (log_batch) {
        if (log_batch_len + len + 1 > LOG_BATCH_SIZE)
            rp_log_flush();
        memcpy(log_batch + log_batch_len, line, len);
        log_batch[log_batch_len + len] = '\n';
        log_batch_len += len + 1;
        if (!log_kicked) {
            log_kicked = true;
            log_kick(log_kick_arg);
        }
        return;
    }
    /* One write per line keeps lines whole when several processes share stderr. */
    char buf[8192];
    memcpy(buf, line, len);
    buf[len] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len + 1);
    (void)w;
}

/* Appends s to out as the body of a JSON string (no quotes), escaping what RFC 8259
 * requires; bytes >= 0x80 pass through (our messages are ASCII or UTF-8). */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
    return o;
}

void rp_log(enum rp_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (level < log_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char ts[40];
    rp_log_time(ts, sizeof(ts));
    char line[6300];
    size_t n;
    if (log_json) {
        n = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                             names[level]);
        n += json_escape(line + n, sizeof(line) - n - 3, msg);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\"}");
    } else {
        for (char *p = msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        n = (size_t)snprintf(line, sizeof(line), "%s %s %s", ts, names[level], msg);
    }
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    rp_log_line(line, n);
}

int64_t rp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool rp_log_ration(struct rp_log_ration *r, const char *what, char *more, size_t len)
{
    r->count++;
    int64_t now = rp_now_ms();
    if (r->logged_ms && now - r->logged_ms < RP_LOG_RATION_MS)
        return false;
    more[0] = '\0';
    if (r->count > 1)
        snprintf(more, len, "; %zu %s since the last such line", r->count, what);
    r->logged_ms = now;
    r->count = 0;
    return true;
}

int64_t rp_wall_s(void)
{
    return (int64_t)time(NULL);
}

size_t rp_fmt_u64(char *out, uint64_t v)
{
    char tmp[RP_U64_DIGITS];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

bool rp_strieq_n(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

void rp_fmt_http_date(char *out, int64_t t)
{
    static const char wday[7][3] = {{'T', 'h', 'u'}, {'F', 'r', 'i'}, {'S', 'a', 't'},
                                    {'S', 'u', 'n'}, {'M', 'o', 'n'}, {'T', 'u', 'e'},
                                    {'W', 'e', 'd'}};
    static const char mon[12][3] = {{'J', 'a', 'n'}, {'F', 'e', 'b'}, {'M', 'a', 'r'},
                                    {'A', 'p', 'r'}, {'M', 'a', 'y'}, {'J', 'u', 'n'},
                                    {'J', 'u', 'l'}, {'A', 'u', 'g'}, {'S', 'e', 'p'},
                                    {'O', 'c', 't'}, {'N', 'o', 'v'}, {'D', 'e', 'c'}};
    if (t < 0)
        t = 0;
    int64_t days = t / 86400, secs = t % 86400;
    int wd = (int)(days % 7); /* 1970-01-01 was a Thursday */
    /* Civil date from days since the epoch (H. Hinnant's days_from_civil, inverted). */
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = yoe + era * 400 + (m <= 2);
    if (y > 9999) /* four digits is the format's: the last second it can name */
        y = 9999, m = 12, d = 31, secs = 86399, wd = 1;
    char *p = out;
    memcpy(p, wday[wd], 3);
    p[3] = ',';
    p[4] = ' ';
    p[5] = (char)('0' + d / 10);
    p[6] = (char)('0' + d % 10);
    p[7] = ' ';
    memcpy(p + 8, mon[m - 1], 3);
    p[11] = ' ';
    p[12] = (char)('0' + y / 1000);
    p[13] = (char)('0' + y / 100 % 10);
    p[14] = (char)('0' + y / 10 % 10);
    p[15] = (char)('0' + y % 10);
    p[16] = ' ';
    int hh = (int)(secs / 3600), mm = (int)(secs / 60 % 60), ss = (int)(secs % 60);
    p[17] = (char)('0' + hh / 10);
    p[18] = (char)('0' + hh % 10);
    p[19] = ':';
    p[20] = (char)('0' + mm / 10);
    p[21] = (char)('0' + mm % 10);
    p[22] = ':';
    p[23] = (char)('0' + ss / 10);
    p[24] = (char)('0' + ss % 10);
    memcpy(p + 25, " GMT", 4);
}

int rp_read_fd_whole(int fd, size_t cap, char **out, size_t *len, char *why, size_t whylen)
{
    *out = NULL;
    *len = 0;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "not a regular file (%s)",
                 S_ISDIR(st.st_mode) ? "a directory" : "a device, FIFO or socket");
        return -1;
    }
    if ((uint64_t)st.st_size > cap) {
        snprintf(why, whylen, "larger than %zu MiB (%llu bytes)", cap >> 20,
                 (unsigned long long)st.st_size);
        return -1;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = rp_xmalloc(size + 1);
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whylen, "%s", strerror(errno));
            free(buf);
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 0;
}

int rp_parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static uint64_t rotl64(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl64(v1, 13);                                                                       \
        v1 ^= v0;                                                                                  \
        v0 = rotl64(v0, 32);                                                                       \
        v2 += v3;                                                                                  \
        v3 = rotl64(v3, 16);                                                                       \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl64(v3, 21);                                                                       \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl64(v1, 17);                                                                       \
        v1 ^= v2;                                                                                  \
        v2 = rotl64(v2, 32);                                                                       \
    } while (0)

static uint64_t load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

uint64_t rp_siphash(const uint64_t k[2], const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t v0 = 0x736f6d6570736575ull ^ k[0], v1 = 0x646f72616e646f6dull ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ k[0], v3 = 0x7465646279746573ull ^ k[1];
    uint64_t b = (uint64_t)n << 56;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t m = load_le64(p);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t i = 0; i < n; i++)
        b |= (uint64_t)p[i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

void rp_random_key(uint64_t k[2])
{
    unsigned char b[16];
    if (getrandom(b, sizeof(b), GRND_NONBLOCK) != (ssize_t)sizeof(b)) {
        /* Early boot without entropy: weaker, but tables bound their chains anyway. */
        static unsigned n;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 32 ^ (uint64_t)getpid();
        uint64_t y = (uint64_t)(uintptr_t)k * 0x9e3779b97f4a7c15ull ^ ++n;
        memcpy(b, &x, 8);
        memcpy(b + 8, &y, 8);
    }
    k[0] = load_le64(b);
    k[1] = load_le64(b + 8);
}

static uint64_t str_key[2];
static pthread_once_t str_key_once = PTHREAD_ONCE_INIT;

static void str_key_init(void)
{
    rp_random_key(str_key);
}

uint64_t rp_str_hash(const char *s)
{
    return rp_mem_hash(s, strlen(s));
}

uint64_t rp_mem_hash(const void *p, size_t n)
{
    pthread_once(&str_key_once, str_key_init);
    return rp_siphash(str_key, p, n);
}

void rp_hex_encode(const unsigned char *raw, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 15];
    }
    out[2 * n] = '\0';
}

char *rp_base64_encode(const void *p, size_t n)
{
    size_t outlen = 4 * ((n + 2) / 3);
    char *out = rp_xmalloc(outlen + 1);
    int w = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    out[w] = '\0';
    return out;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

unsigned char *rp_base64_decode(const char *s, size_t len, size_t *outlen)
{
    while (len > 0 && s[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return NULL;
    unsigned char *out = rp_xmalloc(len / 4 * 3 + 3 + 1);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

void rp_secure_zero(void *p, size_t n)
{
    if (p && n)
        OPENSSL_cleanse(p, n);
}

void rp_free_secret(char *s)
{
    if (!s)
        return;
    rp_secure_zero(s, strlen(s));
    free(s);
}

void rp_redact_userinfo(char *s)
{
    /* Only ever shrinks the text, so it works in place. */
    char *w = s;
    for (char *p = s; *p;) {
        size_t n = strcspn(p, " \t'\"<>()");
        char *at = NULL;
        for (char *q = p; q < p + n; q++)
            if (*q == '@')
                at = q; /* the last one: a password may hold an '@' */
        char *from = p + n;
        if (at) {
            char *sch = strstr(p, "://");
            from = sch && sch < at ? sch + 3 : p;
        }
        size_t keep = (size_t)(from - p);
        memmove(w, p, keep);
        w += keep;
        if (at) {
            size_t rest = (size_t)(p + n - (at + 1));
            memmove(w, at + 1, rest);
            w += rest;
        }
        p += n;
        if (*p)
            *w++ = *p++;
    }
    *w = '\0';
}

#define SD_NOTIFY_WAIT_MS 1000

int rp_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path)) {
        errno = EINVAL;
        return -1;
    }
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* An abstract name's length counts exactly its bytes; a path's may include the NUL. */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    /* The caller is an event loop: a manager whose queue is full is waited for a while (a
     * READY=1 lost to a busy moment of PID 1 would leave the unit starting for good: it has
     * no start timeout), but one that stopped reading costs that while, not a proxy blocked
     * until it reads. */
    struct timeval tv = {SD_NOTIFY_WAIT_MS / 1000, (SD_NOTIFY_WAIT_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    ssize_t sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return sent == (ssize_t)strlen(state) ? 1 : -1;
}
