/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: WWW-Authenticate header values from upstream registries, through
 * rp_auth_parse_challenges and, as a 401 answer, through the rp_auth state machine up to
 * the token request URL. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "util/util.h"

static struct rp_conf_registry reg = {
    .name = "registry.example.com",
    .url = "https://registry.example.com",
    .scheme = "https",
    .host = "registry.example.com",
    .port = 443,
    .hostport = "registry.example.com",
    .user = "12345678|cluster-pull",
    .password = "secret",
    .tag_ttl_ms = -1,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    /* A copy without a trailing NUL: any read past size is caught by ASan. */
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    int n = rp_auth_parse_challenges(copy, size, c, RP_AUTH_MAX_CHALLENGES);
    if (n > RP_AUTH_MAX_CHALLENGES)
        abort();
    for (int k = 0; k < n; k++) {
        if (!c[k].scheme || c[k].n_params > RP_AUTH_MAX_PARAMS)
            abort();
        for (size_t j = 0; j < c[k].n_params; j++)
            if (rp_auth_challenge_param(&c[k], c[k].params[j].name) == NULL)
                abort();
    }
    if (n > 0)
        rp_auth_challenges_free(c, (size_t)n);
    free(copy);

    /* The same bytes as a header the proxy received (a C string: cut at the first NUL). */
    char *h = rp_xstrndup((const char *)data, size);
    struct rp_auth *a = rp_auth_new(&reg);
    char *url = NULL, *authz = NULL, *post = NULL;
    if (rp_auth_on_unauthorized(a, "repository:a/b:pull", h, NULL) == RP_AUTH_OK &&
        rp_auth_token_request(a, "repository:a/b:pull", &url, &authz, &post) == RP_AUTH_OK) {
        for (const char *p = url; *p; p++)
            if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
                abort();
    }
    free(url);
    rp_free_secret(authz);
    rp_auth_free(a);
    free(h);
    return 0;
}
