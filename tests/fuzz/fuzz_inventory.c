/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_inventory: arbitrary bytes as an openshift-ansible inventory (INI or YAML, with
 * Python-literal credential lists). Whatever the importer accepts must render to a
 * configuration that rp_conf_parse accepts; every refusal must explain itself. */
#include "conf/conf.h"
#include "conf/internal.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rp_conf_inventory *inv = NULL;
    char err[1024];
    if (rp_conf_inventory_parse((const char *)data, size, "fuzz.ini", &inv, err, sizeof(err)) !=
        0) {
        if (strncmp(err, "fuzz.ini", 8) != 0 || err[8] == '\0')
            __builtin_trap();
        return 0;
    }
    struct rp_buf b;
    rp_buf_init(&b, (size_t)4 << 20);
    /* No password directory: nothing touches the filesystem. */
    if (rp_conf_inventory_render(inv, NULL, "proxy.example.com:5000", &b, err, sizeof(err)) != 0)
        __builtin_trap();
    struct rp_conf *conf = NULL;
    if (rp_conf_parse(b.data, b.len, "rendered.conf", &conf, err, sizeof(err)) != 0)
        __builtin_trap();
    rp_conf_free(conf);
    rp_buf_free(&b);
    rp_conf_inventory_free(inv);
    return 0;
}
