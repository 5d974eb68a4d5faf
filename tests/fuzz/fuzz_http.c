/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_http: libFuzzer target for the request-head parser (and the Range parser on whatever
 * Range header it finds): no crash, no over-read, accepted heads obey the limits and carry
 * no ambiguous framing, and a head read in pieces reads as it does whole. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/http_parse.h"
#include "util/util.h"

static bool named(const struct rp_http_header *x, const char *name)
{
    return x->name_len == strlen(name) && strncasecmp(x->name, name, x->name_len) == 0;
}

/* TCP splits pipelined heads at any byte: each proper prefix of an accepted head must ask for
 * more, never refuse. All of them for short heads, a spread of them for long ones. */
static void check_prefixes(const char *buf, int rc)
{
    static struct rp_http_request_head p;
    for (size_t k = 0; k < (size_t)rc; k += k < 512 || k + 8 >= (size_t)rc ? 1 : 61)
        if (rp_http_parse_request(buf, k, 2048, &p) != RP_HTTP_NEED_MORE)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct rp_http_request_head h;
    const char *buf = (const char *)data;
    int rc = rp_http_parse_request(buf, size, 2048, &h);
    if (rc < RP_HTTP_E_TARGET)
        abort();
    /* The server reads no more into a full buffer: a head that does not fit is an error. */
    if (rc == RP_HTTP_NEED_MORE && size >= RP_HTTP_MAX_HEAD)
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
    /* Framing a server in front of us could read otherwise never gets through (RFC 9112
     * 6.1, 6.3), and has_body says whether a body follows. */
    size_t n_cl = 0, n_te = 0, n_host = 0;
    uint64_t cl = 0;
    for (size_t i = 0; i < h.n_headers; i++) {
        const struct rp_http_header *x = &h.headers[i];
        if (named(x, "content-length")) {
            n_cl++;
            if (rp_parse_u64(x->value, x->value_len, &cl) != 0)
                abort();
        } else if (named(x, "transfer-encoding")) {
            n_te++;
        } else if (named(x, "host")) {
            n_host++;
        }
    }
    if (n_cl > 1 || (n_te && (n_cl || h.minor == 0)) || n_host > 1 || (h.minor == 1 && !n_host))
        abort();
    if (h.has_body != (cl > 0 || n_te > 0))
        abort();
    if ((h.method == RP_HTTP_GET) != (h.method_len == 3 && !memcmp(h.method_str, "GET", 3)) ||
        (h.method == RP_HTTP_HEAD) != (h.method_len == 4 && !memcmp(h.method_str, "HEAD", 4)))
        abort();
    check_prefixes(buf, rc);
    const struct rp_http_header *range = rp_http_find_header(&h, "range");
    if (range) {
        uint64_t s, e;
        if (rp_http_parse_range(range->value, range->value_len, 1000, &s, &e) == RP_RANGE_OK &&
            !(s <= e && e < 1000))
            abort();
    }
    return 0;
}
