/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_range: libFuzzer target for rp_http_parse_range. The first 8 bytes are the body size,
 * the rest the header value; an accepted range must lie within the body. */
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
    return 0;
}
