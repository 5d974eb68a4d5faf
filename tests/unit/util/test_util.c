/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for util/util.c's helpers that guard secrets. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

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

int main(void)
{
    RUN(test_redact_userinfo);
    RUN(test_buf_secret);
    UNIT_EXIT();
}
