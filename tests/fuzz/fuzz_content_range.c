/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_content_range: libFuzzer target for rp_http_parse_content_range, which reads an
 * upstream's 206 answer. An accepted value must describe a range inside its complete length
 * and print back as a value that reads the same. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t a = 0, b = 0, c = 0;
    if (rp_http_parse_content_range((const char *)data, size, &a, &b, &c) != 0)
        return 0;
    if (!(a <= b && b < c))
        abort();
    /* What was read prints back as a value that reads the same. */
    char again[80];
    int n = snprintf(again, sizeof(again), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, a, b, c);
    uint64_t a2, b2, c2;
    if (n <= 0 || rp_http_parse_content_range(again, (size_t)n, &a2, &b2, &c2) != 0 || a2 != a ||
        b2 != b || c2 != c)
        abort();
    return 0;
}
