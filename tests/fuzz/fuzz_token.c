/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: token server answers through rp_auth_parse_token, checking that any
 * token it returns is safe to put in an Authorization header. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rp_auth_token t;
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    int rc = rp_auth_parse_token(copy, size, &t);
    if (rc == RP_AUTH_OK) {
        if (!t.token || !*t.token || t.expires_in < 1 || t.expires_in > 86400 || t.issued_at < 0)
            abort();
        for (const char *p = t.token; *p; p++)
            if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
                abort();
    } else if (t.token) {
        abort();
    }
    rp_free_secret(t.token);
    free(copy);
    return 0;
}
