/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for util/util.c's text helpers that guard secrets. */
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

int main(void)
{
    RUN(test_redact_userinfo);
    UNIT_EXIT();
}
