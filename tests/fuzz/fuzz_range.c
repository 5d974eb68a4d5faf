/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_range: libFuzzer target for rp_http_parse_range and rp_http_parse_ranges. The first
 * 8 bytes are the body size, the rest the header value; accepted ranges must lie within the
 * body and add up to no more than it, and a value with one range must read the same both
 * ways. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8)
        return 0;
    uint64_t body;
    memcpy(&body, data, 8);
    /* Small sizes half the time, so the clamping paths get exercised. */
    if (body & 1)
        body = (body >> 1) % 2048;
    uint64_t s = 0, e = 0;
    enum rp_range_result r = rp_http_parse_range((const char *)data + 8, size - 8, body, &s, &e);
    if (r == RP_RANGE_OK && !(s <= e && e < body))
        abort();
    if (r != RP_RANGE_OK && r != RP_RANGE_NONE && r != RP_RANGE_UNSATISFIABLE)
        abort();

    struct rp_byte_range rs[8];
    size_t n = 0;
    enum rp_range_result m =
        rp_http_parse_ranges((const char *)data + 8, size - 8, body, rs, 8, &n);
    if (m == RP_RANGE_OK) {
        if (n < 1 || n > 8)
            abort();
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++) {
            if (!(rs[i].first <= rs[i].last && rs[i].last < body))
                abort();
            total += rs[i].last - rs[i].first + 1;
        }
        if (total > body)
            abort();
    }
    /* Whatever reads as ranges for some size is well formed. */
    bool valid = rp_http_range_valid((const char *)data + 8, size - 8);
    if ((r != RP_RANGE_NONE || m != RP_RANGE_NONE) && !valid)
        abort();
    if (!memchr(data + 8, ',', size - 8) &&
        (m != r || (r == RP_RANGE_OK && (n != 1 || rs[0].first != s || rs[0].last != e))))
        abort();
    return 0;
}
