/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_credfile: arbitrary bytes as an auth file (docker config.json or dockerconfigjson
 * Secret, JSON or YAML), looked up for a few registries, so crashes, leaks and unexplained
 * failures in the JSON/YAML reading, base64 and key matching show up. */
#include "conf/conf.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct {
        const char *host;
        int port;
        bool hub;
    } regs[] = {
        {"registry.redhat.io", 443, false},
        {"registry-1.docker.io", 443, true},
        {"localhost", 5000, false},
        {"::1", 5000, false},
    };
    char err[1024];
    for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++) {
        struct rp_conf_auth a;
        /* The input is not NUL-terminated: the parser must stay within size bytes. */
        if (rp_conf_auth_parse((const char *)data, size, "fuzz.json", regs[i].host, regs[i].port,
                               regs[i].hub, &a, err, sizeof(err)) == 0) {
            /* Success always yields a key and usable credentials. */
            if (!a.key || (!a.user && !a.identity_token) || (a.user && !a.user[0]))
                __builtin_trap();
            if (a.user && !a.password && !a.identity_token)
                __builtin_trap();
        } else if (strncmp(err, "fuzz.json: ", 11) != 0 || err[11] == '\0') {
            __builtin_trap(); /* every failure names the file and explains itself */
        }
        rp_conf_auth_clear(&a);
    }
    return 0;
}
