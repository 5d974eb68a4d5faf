/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_htpasswd: a client's Authorization header, checked against client accounts (a
 * listener's htpasswd), with the client address the server passes along. Input: the header
 * value, then optionally "\n" and the peer. Nothing but the one account's exact credentials
 * may pass, whatever the encoding games (padding, spaces, NULs, colons in the password). (What is
 * let in when it should be is test_acl's; here the budget refuses most checks anyway.) */
#include "proxy/acl.h"
#include "util/util.h"

#include <crypt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Two accounts; an unknown user is hashed against the first. */
static const char *const creds[] = {"node:s3:cret", "other:pw"};

static struct rp_htpasswd *accounts;

static void setup(void)
{
    const char *base = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/fuzz_htpasswd.XXXXXX", base && *base ? base : "/tmp");
    int fd = mkstemp(path);
    const char *salt = crypt_gensalt("$2b$", 4, NULL, 0); /* the cheapest bcrypt */
    char *h1 = salt ? rp_xstrdup(crypt("s3:cret", salt)) : NULL;
    char *h2 = salt ? rp_xstrdup(crypt("pw", salt)) : NULL;
    if (fd < 0 || !h1 || !h2)
        abort();
    FILE *f = fdopen(fd, "w");
    fprintf(f, "node:%s\nother:%s\n", h1, h2);
    fclose(f);
    free(h1);
    free(h2);
    char err[256];
    accounts = rp_htpasswd_load(path, err, sizeof(err));
    unlink(path);
    if (!accounts)
        abort();
    rp_log_set_level(RP_LOG_ERROR);
}

/* Whether value is "Basic" + spaces + the base64 of exactly one account's user:pass. */
static bool is_an_account(const char *value)
{
    if (strncasecmp(value, "Basic ", 6) != 0)
        return false;
    value += 6;
    while (*value == ' ')
        value++;
    size_t n = 0;
    unsigned char *dec = rp_base64_decode(value, strlen(value), &n);
    bool same = false;
    for (size_t i = 0; dec && i < sizeof(creds) / sizeof(creds[0]) && !same; i++)
        same = n == strlen(creds[i]) && memcmp(dec, creds[i], n) == 0;
    free(dec);
    return same;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!accounts)
        setup();
    char *in = rp_xstrndup((const char *)data, size); /* stops at a NUL, as headers do */
    char *peer = strchr(in, '\n');
    if (peer)
        *peer++ = '\0';
    bool ok = rp_htpasswd_check(accounts, in, peer);
    if (ok && !is_an_account(in))
        abort(); /* let in with credentials that are no account's */
    free(in);
    return 0;
}
