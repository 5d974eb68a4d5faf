/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for util/util.c's helpers that guard secrets, its sd_notify client and its log
 * rationing. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../unit.h"
#include "../../../util/util.h"

static void redacted(const char *in, const char *want)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", in);
    rp_redact_userinfo(buf);
    CHECK_STR(buf, want);
}

static void test_redact_userinfo(void)
{
    /* What curl 7.88 writes for a malformed https_proxy. */
    redacted("Unsupported proxy syntax in 'http://u:S3cret@proxy:31280000'",
             "Unsupported proxy syntax in 'http://proxy:31280000'");
    redacted("Unsupported proxy scheme for 'htpp://u:S3cret@proxy:3128'",
             "Unsupported proxy scheme for 'htpp://proxy:3128'");
    /* No scheme: the whole word before the '@'. */
    redacted("bad proxy u:S3cret@proxy:3128 here", "bad proxy proxy:3128 here");
    /* A password with an '@' in it: up to the last one. */
    redacted("\"http://u:p@ss@proxy\"", "\"http://proxy\"");
    /* Nothing to do. */
    redacted("Failed to connect to 127.0.0.1 port 1: Connection refused",
             "Failed to connect to 127.0.0.1 port 1: Connection refused");
    redacted("", "");
    redacted("@", "");
    redacted("x@y@z w@", "z ");
    redacted("a b  'c' (d) <e>", "a b  'c' (d) <e>");
}

static bool all_zero(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* The move out of caller storage is the one growth a test can watch without reading freed
 * memory; heap-to-heap growth takes the same path (copy, wipe, free). */
static void test_buf_secret(void)
{
    char storage[16];
    struct rp_buf b;
    rp_buf_init_in(&b, storage, sizeof(storage), 1024);
    b.secret = true;
    CHECK_INT(rp_buf_add(&b, "0123456789", 10), 0);
    CHECK(b.data == storage);
    CHECK_INT(rp_buf_addf(&b, "%s", "abcdefghij"), 0);
    CHECK(b.data != storage);
    CHECK(all_zero(storage, sizeof(storage)));
    CHECK_STR(b.data, "0123456789abcdefghij");
    /* Heap growth keeps the content. */
    char big[600];
    memset(big, 'x', sizeof(big));
    CHECK_INT(rp_buf_add(&b, big, sizeof(big)), 0);
    CHECK_INT(b.len, 620);
    CHECK(memcmp(b.data, "0123456789abcdefghij", 20) == 0 && b.data[619] == 'x' &&
          b.data[620] == '\0');
    rp_buf_reset(&b);
    CHECK(all_zero(b.data, 620));
    rp_buf_free(&b);

    struct rp_buf h;
    rp_buf_init_secret(&h, 4096);
    CHECK(h.secret);
    for (int i = 0; i < 100; i++)
        CHECK_INT(rp_buf_add(&h, "secret-", 7), 0);
    CHECK_INT(h.len, 700);
    CHECK(memcmp(h.data + 693, "secret-", 7) == 0);
    rp_buf_free(&h);
    CHECK(h.data == NULL);

    /* A borrowed secret buffer that never moved is wiped by free. */
    rp_buf_init_in(&b, storage, sizeof(storage), 1024);
    b.secret = true;
    CHECK_INT(rp_buf_add(&b, "pw", 2), 0);
    rp_buf_free(&b);
    CHECK(all_zero(storage, sizeof(storage)));
}

/* A service manager's socket: bound to a path, or to an abstract name (path NULL). */
static int manager_socket(const char *path, const char *abstract)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    socklen_t len;
    if (path) {
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        len = sizeof(sa);
    } else {
        memcpy(sa.sun_path + 1, abstract, strlen(abstract));
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(abstract));
    }
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, len) == 0);
    return fd;
}

static void received(int fd, const char *want)
{
    char got[256];
    ssize_t n = recv(fd, got, sizeof(got) - 1, MSG_DONTWAIT);
    CHECK(n >= 0);
    got[n < 0 ? 0 : n] = 0;
    CHECK_STR(got, want);
}

static void test_sd_notify(void)
{
    unsetenv("NOTIFY_SOCKET");
    CHECK_INT(rp_sd_notify("READY=1"), 0);

    char dir[] = "/tmp/rp-notify-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof(path), "%s/notify", dir);
    int fd = manager_socket(path, NULL);
    setenv("NOTIFY_SOCKET", path, 1);
    CHECK_INT(rp_sd_notify("READY=1\nSTATUS=serving"), 1);
    received(fd, "READY=1\nSTATUS=serving");
    close(fd);
    unlink(path);
    rmdir(dir);

    char name[64];
    snprintf(name, sizeof(name), "rp-notify-test-%d", (int)getpid());
    fd = manager_socket(NULL, name);
    char at[80];
    snprintf(at, sizeof(at), "@%s", name);
    setenv("NOTIFY_SOCKET", at, 1);
    CHECK_INT(rp_sd_notify("STOPPING=1"), 1);
    received(fd, "STOPPING=1");
    close(fd);

    /* Nobody listening, or a name no socket can have: an error, not a crash. */
    setenv("NOTIFY_SOCKET", path, 1);
    CHECK_INT(rp_sd_notify("READY=1"), -1);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    CHECK_INT(rp_sd_notify("READY=1"), -1);
    CHECK_INT(errno, EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

static void on_alarm(int sig)
{
    (void)sig;
}

/* A manager's socket at path whose queue is full (nobody reads it). */
static int full_manager_socket(const char *path)
{
    int fd = manager_socket(path, NULL);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1); /* mkdtemp's: far shorter than sun_path */
    int tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int queued = 0;
    while (sendto(tx, "X=1", 3, 0, (struct sockaddr *)&sa, sizeof(sa)) == 3)
        queued++;
    CHECK(queued > 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    close(tx);
    return fd;
}

/* The proxy sends from its event loop: a manager that stopped reading (its queue full) must
 * cost a refused message after a short wait, not a loop blocked in sendto() until it reads
 * again; one busy for a moment still gets the message. */
static void test_sd_notify_full_queue(void)
{
    char dir[] = "/tmp/rp-notify-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof(path), "%s/notify", dir);
    int fd = full_manager_socket(path);
    setenv("NOTIFY_SOCKET", path, 1);
    /* No SA_RESTART: were sendto() to block, the alarm ends it with EINTR. */
    struct sigaction act = {.sa_handler = on_alarm}, old;
    sigaction(SIGALRM, &act, &old);
    alarm(5);
    CHECK_INT(rp_sd_notify("READY=1"), -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    alarm(0);
    sigaction(SIGALRM, &old, NULL);

    /* Busy for a moment: a reader drains the queue 200 ms later, and gets the message. */
    pid_t pid = fork();
    if (pid == 0) {
        usleep(200 * 1000);
        char got[64];
        for (;;) {
            ssize_t n = recv(fd, got, sizeof(got) - 1, 0);
            if (n < 0)
                _exit(2);
            got[n] = 0;
            if (strcmp(got, "STOPPING=1") == 0)
                _exit(0);
        }
    }
    CHECK(pid > 0);
    CHECK_INT(rp_sd_notify("STOPPING=1"), 1);
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    unsetenv("NOTIFY_SOCKET");
    close(fd);
    unlink(path);
    rmdir(dir);
}

/* The first event is logged; those within RP_LOG_RATION_MS only counted; the next line due
 * says how many came, itself included. Time is moved by moving the last line back. */
static void test_log_ration(void)
{
    struct rp_log_ration r = {0};
    char more[64];
    CHECK(rp_log_ration(&r, "refused", more, sizeof(more)));
    CHECK_STR(more, "");
    for (int i = 0; i < 3; i++)
        CHECK(!rp_log_ration(&r, "refused", more, sizeof(more)));
    r.logged_ms -= RP_LOG_RATION_MS;
    CHECK(rp_log_ration(&r, "refused", more, sizeof(more)));
    CHECK_STR(more, "; 4 refused since the last such line");
    r.logged_ms -= RP_LOG_RATION_MS;
    CHECK(rp_log_ration(&r, "refused", more, sizeof(more)));
    CHECK_STR(more, "");
}

/* SipHash-2-4's reference vectors (Aumasson and Bernstein, appendix A): key 00..0f,
 * messages 00..(n-1). rp_str_hash, keyed per process, is stable within it. */
static void test_siphash(void)
{
    uint64_t k[2] = {0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
    unsigned char m[15];
    for (size_t i = 0; i < sizeof(m); i++)
        m[i] = (unsigned char)i;
    CHECK(rp_siphash(k, m, 0) == 0x726fdb47dd0e0e31ull);
    CHECK(rp_siphash(k, m, 8) == 0x93f5f5799a932462ull);
    CHECK(rp_siphash(k, m, 15) == 0xa129ca6149be45e5ull);
    const char *d = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    CHECK(rp_str_hash(d) == rp_str_hash(d));
    CHECK(rp_str_hash("a") != rp_str_hash("b"));
}

static void http_date(int64_t t, const char *want)
{
    char out[RP_HTTP_DATE_LEN + 1];
    rp_fmt_http_date(out, t);
    out[RP_HTTP_DATE_LEN] = '\0';
    CHECK_STR(out, want);
}

/* RFC 9110's own example, the leap days and century rules, and every day of 1968-2105 (a
 * step of a day and some seconds) against the C library in the C locale. */
static void test_http_date(void)
{
    http_date(784111777, "Sun, 06 Nov 1994 08:49:37 GMT");
    http_date(0, "Thu, 01 Jan 1970 00:00:00 GMT");
    http_date(951782400, "Tue, 29 Feb 2000 00:00:00 GMT");
    http_date(4107542399, "Sun, 28 Feb 2100 23:59:59 GMT");
    http_date(4107542400, "Mon, 01 Mar 2100 00:00:00 GMT");
    http_date(2147483648, "Tue, 19 Jan 2038 03:14:08 GMT");
    http_date(-1, "Thu, 01 Jan 1970 00:00:00 GMT");
    http_date(INT64_MAX, "Fri, 31 Dec 9999 23:59:59 GMT");
    int bad = 0;
    for (int64_t t = 0; t < 4260000000 && bad < 5; t += 86400 + 3677) {
        time_t tt = (time_t)t;
        struct tm tm;
        gmtime_r(&tt, &tm);
        char want[64], got[RP_HTTP_DATE_LEN + 1];
        strftime(want, sizeof(want), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        rp_fmt_http_date(got, t);
        got[RP_HTTP_DATE_LEN] = '\0';
        if (strcmp(got, want) != 0) {
            fprintf(stderr, "%lld: %s != %s\n", (long long)t, got, want);
            bad++;
        }
    }
    CHECK_INT(bad, 0);
}

/* A file read whole; a directory, a FIFO and a file over the cap refused with the reason. */
static void test_read_fd_whole(void)
{
    char dir[4096], path[4200], fifo[4200], why[128];
    unit_mkdtemp(dir, sizeof(dir), "rp-read");
    snprintf(path, sizeof(path), "%s/f", dir);
    snprintf(fifo, sizeof(fifo), "%s/p", dir);
    FILE *f = fopen(path, "w");
    CHECK(f && fputs("abc\n", f) >= 0 && fclose(f) == 0);
    char *out = NULL;
    size_t len = 0;
    int fd = open(path, O_RDONLY);
    CHECK_INT(rp_read_fd_whole(fd, 4, &out, &len, why, sizeof(why)), 0);
    CHECK_STR(out, "abc\n");
    CHECK_INT(len, 4);
    free(out);
    CHECK_INT(rp_read_fd_whole(fd, 3, &out, &len, why, sizeof(why)), -1);
    CHECK(out == NULL && strncmp(why, "larger than", 11) == 0);
    close(fd);
    fd = open(dir, O_RDONLY | O_DIRECTORY);
    CHECK_INT(rp_read_fd_whole(fd, 1 << 20, &out, &len, why, sizeof(why)), -1);
    CHECK_STR(why, "not a regular file (a directory)");
    close(fd);
    CHECK(mkfifo(fifo, 0600) == 0);
    fd = open(fifo, O_RDONLY | O_NONBLOCK);
    CHECK_INT(rp_read_fd_whole(fd, 1 << 20, &out, &len, why, sizeof(why)), -1);
    CHECK_STR(why, "not a regular file (a device, FIFO or socket)");
    close(fd);
    unlink(fifo);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    RUN(test_read_fd_whole);
    RUN(test_http_date);
    RUN(test_siphash);
    RUN(test_redact_userinfo);
    RUN(test_buf_secret);
    RUN(test_sd_notify);
    RUN(test_sd_notify_full_queue);
    RUN(test_log_ration);
    UNIT_EXIT();
}
