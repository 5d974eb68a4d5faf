/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_conf: arbitrary bytes into the configuration parser, then the lookups that run on a
 * parsed config, so a crash, leak or out-of-bounds read in either shows up. */
#include "conf/conf.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const realms[] = {"https://auth.docker.io/token",
                                         "https://registry.redhat.io/auth", "http://127.0.0.1/t",
                                         "https://a.example.com/token?x"};
    struct rp_conf *conf = NULL;
    char err[512];
    /* The input is not NUL-terminated: the parser must stay within size bytes. */
    if (rp_conf_parse((const char *)data, size, "fuzz.conf", &conf, err, sizeof(err)) == 0) {
        for (size_t i = 0; i < conf->n_registries; i++) {
            const struct rp_conf_registry *r = &conf->registries[i];
            rp_conf_find_registry(conf, r->name, strlen(r->name));
            rp_conf_find_registry(conf, r->hostport, strlen(r->hostport));
            for (size_t j = 0; j < sizeof(realms) / sizeof(realms[0]); j++)
                rp_conf_realm_allowed(r, realms[j]);
            for (size_t j = 0; j < r->n_token_realms; j++)
                rp_conf_realm_allowed(r, r->token_realms[j]);
        }
        rp_conf_find_registry(conf, "docker.io", 9);
    } else if (err[0] == '\0') {
        __builtin_trap(); /* every failure explains itself */
    }
    rp_conf_free(conf);
    return 0;
}
