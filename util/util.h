/* SPDX-License-Identifier: Apache-2.0 */
/* util: the few helpers every module shares: aborting allocation, capped buffers for
 * network-fed data, logging with levels, clocks and small string checks. */
#ifndef RP_UTIL_H
#define RP_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RP_VERSION "0.1.0"

/* Allocation failure is not recoverable for sizes we choose; these abort with a message.
 * Sizes that come from the network go through struct rp_buf, which has a cap. */
void *rp_xmalloc(size_t n);
void *rp_xcalloc(size_t n, size_t size);
void *rp_xrealloc(void *p, size_t n);
char *rp_xstrdup(const char *s);
char *rp_xstrndup(const char *s, size_t n);
/* printf into a new string (aborts on allocation failure). */
char *rp_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable byte buffer with a hard cap. Always NUL-terminated after the data (the NUL is
 * not counted in len), so text can be used as a C string. */
struct rp_buf {
    char *data;
    size_t len;
    size_t alloc;
    size_t cap;    /* rp_buf_add fails with -1 rather than grow len past this */
    bool borrowed; /* data is the caller's storage (rp_buf_init_in), not ours to free */
    bool secret;   /* rp_buf_init_secret */
};
void rp_buf_init(struct rp_buf *b, size_t cap);
/* For a buffer that will hold a secret (a token answer, a password): growing it moves the
 * data to a new allocation and wipes the old one (realloc would free it unwiped, leaving
 * copies of the secret in the heap), and reset and free wipe it. */
void rp_buf_init_secret(struct rp_buf *b, size_t cap);
/* Starts in the caller's storage (typically on its stack) and moves to the heap only if
 * it outgrows it: the common small case allocates nothing. */
void rp_buf_init_in(struct rp_buf *b, char *storage, size_t size, size_t cap);
/* Appends; returns 0, or -1 when the cap would be exceeded (the buffer is unchanged). */
int rp_buf_add(struct rp_buf *b, const void *p, size_t n);
int rp_buf_addf(struct rp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rp_buf_reset(struct rp_buf *b);
void rp_buf_free(struct rp_buf *b);

/* Logging. Messages go to stderr as one line each. Callers never pass secrets. */
enum rp_log_level { RP_LOG_DEBUG, RP_LOG_INFO, RP_LOG_WARN, RP_LOG_ERROR };
void rp_log_set_level(enum rp_log_level level);
void rp_log(enum rp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* JSON lines instead of text: every line becomes {"ts":..,"level":..,"msg":..}. */
void rp_log_set_json(bool on);
bool rp_log_is_json(void);
bool rp_log_enabled(enum rp_log_level level);
/* Writes one preformatted line (no newline inside) with a single write, or, while batching,
 * appends it to the batch. */
void rp_log_line(const char *line, size_t len);
/* Batching, for a server: lines are kept in memory and kick(arg) is called for the first
 * line of each batch; the caller arranges for rp_log_flush to run soon after (at the end of
 * the event-loop iteration), and a full batch flushes by itself. kick NULL flushes and stops
 * batching; do that before exiting. */
void rp_log_batch(void (*kick)(void *), void *arg);
void rp_log_flush(void);
/* The current time as RFC 3339 UTC with milliseconds into buf (at least 32 bytes). */
void rp_log_time(char *buf, size_t len);
#define rp_debug(...) rp_log(RP_LOG_DEBUG, __VA_ARGS__)
#define rp_info(...) rp_log(RP_LOG_INFO, __VA_ARGS__)
#define rp_warn(...) rp_log(RP_LOG_WARN, __VA_ARGS__)
#define rp_error(...) rp_log(RP_LOG_ERROR, __VA_ARGS__)

/* Milliseconds on the monotonic clock (for deadlines and token expiry). */
int64_t rp_now_ms(void);

/* A log line about a herd of like events (refused connections, failed handshakes): the
 * first is logged, then at most one line per RP_LOG_RATION_MS, saying how many came since
 * the last (the metrics count every one). */
#define RP_LOG_RATION_MS 1000
struct rp_log_ration {
    int64_t logged_ms; /* when the last line was written; 0: none yet */
    size_t count;      /* events since then, the current one included */
};
/* Counts one event. True when its line is due: then `more` holds "; N WHAT since the last
 * such line" when N > 1, else "". */
bool rp_log_ration(struct rp_log_ration *r, const char *what, char *more, size_t len);
/* Seconds since the epoch (for issued_at in token answers and log stamps). */
int64_t rp_wall_s(void);

/* Case-insensitive comparison of a counted string with a C string. */
bool rp_strieq_n(const char *a, size_t alen, const char *b);
/* Writes v in decimal to out (room for RP_U64_DIGITS, no terminating NUL); returns the
 * number of digits. For heads and log lines built without printf. */
#define RP_U64_DIGITS 20
size_t rp_fmt_u64(char *out, uint64_t v);
/* Writes the IMF-fixdate (RFC 9110 5.6.7) of `t` seconds since the epoch to out, e.g.
 * "Sun, 06 Nov 1994 08:49:37 GMT": RP_HTTP_DATE_LEN bytes, no terminating NUL. By hand:
 * strftime's names follow the locale. */
#define RP_HTTP_DATE_LEN 29
void rp_fmt_http_date(char *out, int64_t t);
/* Reads the file open at fd whole into a NUL-terminated heap buffer (*out, *len): for the
 * small files the offline tools keep beside the cache (pins, an OCI layout's index.json).
 * 0; or -1, *out NULL, with the reason in why: not a regular file (a directory, a device,
 * FIFO or socket), more than cap bytes, or a read error (a list cut short there would pass
 * for the whole). A file that shrinks while read gives what was there. */
int rp_read_fd_whole(int fd, size_t cap, char **out, size_t *len, char *why, size_t whylen);
/* Strict decimal parse of [s, s+len) into *out: digits only, no sign, no overflow. */
int rp_parse_u64(const char *s, size_t len, uint64_t *out);

/* SipHash-2-4 of n bytes under key k. */
uint64_t rp_siphash(const uint64_t k[2], const void *data, size_t n);
/* A random key for rp_siphash (getrandom; time and pid when the kernel has no entropy yet). */
void rp_random_key(uint64_t k[2]);
/* SipHash of a NUL-terminated string under a key random per process: for tables keyed by
 * digests that are only claims (a bundle's metadata, a pins file), which anyone may pick
 * to collide under a known hash. */
uint64_t rp_str_hash(const char *s);
/* The same, of n bytes. */
uint64_t rp_mem_hash(const void *p, size_t n);
/* Lower-case hex of n bytes into out (room for 2n + 1: it is NUL-terminated). */
void rp_hex_encode(const unsigned char *raw, size_t n, char *out);
/* Standard base64 (with padding) of n bytes, as a new string. */
char *rp_base64_encode(const void *p, size_t n);
/* Decodes standard base64 (padding optional, no whitespace). Returns a new buffer with a
 * trailing NUL (not counted in *outlen), or NULL when the input is not base64. */
unsigned char *rp_base64_decode(const char *s, size_t len, size_t *outlen);

/* Removes the user name and password of any URL in a message, in place: every word (up to
 * a space, quote or bracket) with an '@' loses what comes before its last '@', and that
 * '@', after its scheme if it has one. For text from libraries that quote URLs as given
 * (curl's error buffer, with an https_proxy that holds a password). */
void rp_redact_userinfo(char *s);
/* Overwrites memory holding a secret before it is freed. */
void rp_secure_zero(void *p, size_t n);
/* rp_secure_zero + free for NUL-terminated secrets; accepts NULL. */
void rp_free_secret(char *s);

/* Tells the service manager about the service's state (systemd's sd_notify protocol: one
 * datagram of "KEY=value" lines to the unix socket named by $NOTIFY_SOCKET, a path or, with
 * a leading '@', an abstract name), e.g. "READY=1", "RELOADING=1", "STOPPING=1". Returns 1
 * when sent, 0 when no manager listens (no $NOTIFY_SOCKET), -1 with errno on failure
 * (EAGAIN when the manager's queue stayed full for a second: it blocks no longer).
 * Written here rather than linked from libsystemd: the protocol is one sendto(), and the
 * proxy also runs where there is no systemd (containers). */
int rp_sd_notify(const char *state);

#endif
