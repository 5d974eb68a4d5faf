/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_route: libFuzzer target feeding arbitrary bytes to rp_route_parse as a request target,
 * checking that whatever is accepted satisfies the grammars the cache and upstream rely on. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct rp_conf_registry regs[] = {
    {.name = "registry.redhat.io",
     .url = "https://registry.redhat.io",
     .scheme = "https",
     .host = "registry.redhat.io",
     .port = 443,
     .hostport = "registry.redhat.io"},
    {.name = "docker.io",
     .url = "https://registry-1.docker.io",
     .scheme = "https",
     .host = "registry-1.docker.io",
     .port = 443,
     .hostport = "registry-1.docker.io",
     .dockerhub = true},
    {.name = "local",
     .url = "https://127.0.0.1:5001",
     .scheme = "https",
     .host = "127.0.0.1",
     .port = 5001,
     .hostport = "127.0.0.1:5001"},
};
static struct rp_conf_listen listens[] = {
    {.addr = "0.0.0.0:5000", .host = "0.0.0.0", .port = 5000, .def = &regs[0]},
    {.addr = "0.0.0.0:5001", .host = "0.0.0.0", .port = 5001, .def = &regs[1]},
    {.addr = "0.0.0.0:5002", .host = "0.0.0.0", .port = 5002},
};
static const struct rp_conf conf = {
    .source = "<fuzz>",
    .listens = listens,
    .n_listens = 3,
    .registries = regs,
    .n_registries = 3,
};

static void check(const uint8_t *data, size_t size, const struct rp_conf_listen *l)
{
    struct rp_route r;
    const char *why = NULL;
    int rc = rp_route_parse(&conf, l, (const char *)data, size, &r, &why);
    if (!why)
        abort();
    if (rc != RP_ROUTE_OK) {
        if (rc < RP_ROUTE_E_TOO_LONG || rc > 0 || r.reg != NULL)
            abort();
        return;
    }
    const char *q = memchr(data, '?', size);
    size_t plen = q ? (size_t)(q - (const char *)data) : size;
    if (memchr(data, '%', plen) || memchr(data, '\\', plen))
        abort();
    if (r.kind == RP_ROUTE_PING) {
        if (r.reg != NULL)
            abort();
        return;
    }
    if (r.reg == NULL || !rp_valid_name(r.name, strlen(r.name)))
        abort();
    if (strlen(r.client_name) > plen)
        abort();
    switch (r.kind) {
    case RP_ROUTE_BLOB:
    case RP_ROUTE_REFERRERS:
        if (!r.ref_is_digest || !rp_valid_digest(r.ref, strlen(r.ref)))
            abort();
        break;
    case RP_ROUTE_MANIFEST:
        if (r.ref_is_digest ? !rp_valid_digest(r.ref, strlen(r.ref))
                            : !rp_valid_tag(r.ref, strlen(r.ref)))
            abort();
        break;
    case RP_ROUTE_TAGS:
        if (r.ref[0] || r.n < -1 || r.n > RP_TAGS_N_MAX ||
            (r.last[0] && !rp_valid_tag(r.last, strlen(r.last))))
            abort();
        break;
    default:
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < sizeof(listens) / sizeof(listens[0]); i++)
        check(data, size, &listens[i]);
    check(data, size, NULL);
    return 0;
}
