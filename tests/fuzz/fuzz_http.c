/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_http: libFuzzer target for the request-head parser (and the Range parser on whatever
 * Range header it finds): no crash, no over-read, and accepted heads obey the limits. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct rp_http_request_head h;
    const char *buf = (const char *)data;
    int rc = rp_http_parse_request(buf, size, 2048, &h);
    if (rc < RP_HTTP_E_TARGET)
        abort();
    if (rc <= 0)
        return 0;
    if ((size_t)rc > size || rc > RP_HTTP_MAX_HEAD || h.n_headers > RP_HTTP_MAX_HEADERS)
        abort();
    if (h.target < buf || h.target + h.target_len > buf + rc || h.target_len == 0 ||
        h.target_len > 2048 || h.target[0] != '/' || (h.minor != 0 && h.minor != 1))
        abort();
    for (size_t i = 0; i < h.n_headers; i++) {
        const struct rp_http_header *x = &h.headers[i];
        if (x->name < buf || x->name + x->name_len > buf + rc || x->value < buf ||
            x->value + x->value_len > buf + rc || x->name_len == 0)
            abort();
        if (memchr(x->value, '\r', x->value_len) || memchr(x->value, '\n', x->value_len) ||
            memchr(x->value, '\0', x->value_len))
            abort();
    }
    const char *names[] = {"host", "content-length", "transfer-encoding", "connection"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        (void)rp_http_find_header(&h, names[i]);
    const struct rp_http_header *range = rp_http_find_header(&h, "range");
    if (range) {
        uint64_t s, e;
        if (rp_http_parse_range(range->value, range->value_len, 1000, &s, &e) == RP_RANGE_OK &&
            !(s <= e && e < 1000))
            abort();
    }
    return 0;
}
