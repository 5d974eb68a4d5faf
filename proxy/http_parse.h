/* SPDX-License-Identifier: Apache-2.0 */
/* http_parse: strict HTTP/1.x request-head parsing, Range parsing, and the header values
 * read from upstream answers (Content-Range, Link, Transfer-Encoding) and clients
 * (If-None-Match). Pure functions over caller-owned bytes; no allocation. Hostile input is
 * the normal case here. */
#ifndef RP_HTTP_PARSE_H
#define RP_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RP_HTTP_MAX_HEADERS 64
#define RP_HTTP_MAX_HEAD 16384 /* request line + headers */

enum rp_http_method { RP_HTTP_GET, RP_HTTP_HEAD, RP_HTTP_OTHER };

struct rp_http_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading/trailing whitespace trimmed */
    size_t value_len;
};

struct rp_http_request_head {
    enum rp_http_method method;
    const char *method_str;
    size_t method_len;
    const char *target; /* origin-form "/...": as sent, or the path and query of an
                           absolute-form target (its authority dropped); others are rejected */
    size_t target_len;
    int minor; /* HTTP/1.<minor>: 0 or 1 (a later 1.x counts as 1.1) */
    struct rp_http_header headers[RP_HTTP_MAX_HEADERS];
    size_t n_headers;
    bool keep_alive;      /* 1.1 unless "Connection: close"; 1.0 only with keep-alive */
    bool has_body;        /* Content-Length > 0 or any Transfer-Encoding */
    bool expect_continue; /* Expect: 100-continue */
};

enum rp_http_parse_err {
    RP_HTTP_NEED_MORE = 0,            /* incomplete: read more (unless the buffer is full) */
    RP_HTTP_E_BAD = -1,               /* 400: malformed line, bad header syntax, obs-fold,
                                         bare CR, NUL, missing Host in 1.1, duplicate or
                                         invalid Host */
    RP_HTTP_E_HEADERS_TOO_LARGE = -2, /* 431: more than RP_HTTP_MAX_HEADERS, or head longer
                                         than RP_HTTP_MAX_HEAD */
    RP_HTTP_E_URI_TOO_LONG = -3,      /* 414: target longer than the caller's limit */
    RP_HTTP_E_VERSION = -4,           /* 505: not HTTP/1.x */
    RP_HTTP_E_FRAMING = -5,           /* 400 + close: both Content-Length and
                                         Transfer-Encoding, differing or repeated
                                         Content-Length, malformed Content-Length */
    RP_HTTP_E_TARGET = -6,            /* 400: authority-form (CONNECT), asterisk-form, or an
                                         absolute-form other than http(s)://host/path */
};

/* Parses the head at buf[0..len). Returns the head's length in bytes (> 0, including the
 * final CRLFCRLF; a bare LF line end is accepted too) when complete, or an error above.
 * Pointers in *out point into buf. max_target bounds the target length. */
int rp_http_parse_request(const char *buf, size_t len, size_t max_target,
                          struct rp_http_request_head *out);
/* First header named `name` (case-insensitive) or NULL. */
const struct rp_http_header *rp_http_find_header(const struct rp_http_request_head *h,
                                                 const char *name);

enum rp_range_result {
    RP_RANGE_NONE = 0,          /* no usable range: serve the whole body (200) */
    RP_RANGE_OK = 1,            /* single satisfiable range [*start, *end] inclusive: 206 */
    RP_RANGE_UNSATISFIABLE = 2, /* 416 with Content-Range: bytes * /size */
};
/* Parses a Range header value against a body of `size` bytes (RFC 9110 14.1.2). Only a
 * single "bytes=" range is honoured (first-last, first-, -suffix); multiple ranges,
 * other units and malformed values give RP_RANGE_NONE, as RFC 9110 allows. */
enum rp_range_result rp_http_parse_range(const char *value, size_t len, uint64_t size,
                                         uint64_t *start, uint64_t *end);
struct rp_byte_range {
    uint64_t first, last; /* inclusive */
};
/* Whether a Range header value is well formed whatever the body's size ("bytes=" and one or
 * more valid range-specs). One that is not is ignored (RFC 9110 14.2). */
bool rp_http_range_valid(const char *value, size_t len);
/* Parses a Range header value that may name several ranges ("bytes=0-9,100-199": lazy
 * pullers ask so) against a body of `size` bytes. RP_RANGE_OK: the satisfiable ranges, in
 * the order given, are out[0 .. *n_out) (unsatisfiable ones are left out). RP_RANGE_NONE
 * (serve the whole body): another unit, any malformed range-spec, more than max satisfiable
 * ranges, or ranges that add up to more bytes than the body has (overlaps). When none is
 * satisfiable: RP_RANGE_UNSATISFIABLE. */
enum rp_range_result rp_http_parse_ranges(const char *value, size_t len, uint64_t size,
                                          struct rp_byte_range *out, size_t max, size_t *n_out);
/* Parses a 206 answer's Content-Range value, "bytes FIRST-LAST/COMPLETE" (RFC 9110 14.4),
 * with FIRST <= LAST < COMPLETE. Returns 0, or -1 for anything else: an unknown complete
 * length (a "*" after the slash), the unsatisfied form, other units or malformed numbers.
 * The outputs are left alone unless it returns 0. */
int rp_http_parse_content_range(const char *value, size_t len, uint64_t *first, uint64_t *last,
                                uint64_t *complete);

/* Header values read from upstream and from clients beyond the request head. */

/* Whether an If-None-Match value (RFC 9110 13.1.2) names the entity-tag whose opaque part is
 * `tag`: "*", or an entity-tag equal to it by the weak comparison (W/ ignored). A bare,
 * unquoted value counts too: docker-registry takes one. An opaque tag may hold commas. */
bool rp_http_etag_list_names(const char *value, const char *tag);
/* Whether a Transfer-Encoding value's last coding is "chunked" (RFC 9112 6.1): whether the
 * body is framed by chunks. */
bool rp_http_te_chunked(const char *value, size_t len);
/* Reads a Link value (RFC 8288; repeated Link lines joined by commas) for its rel="next"
 * link to a tags list under /v2/ (with `referrers`, to a referrers page of a subject:
 * /v2/NAME/referrers/DIGEST). An absolute link counts by its path. Writes the link's query to
 * out as "" or "?k=v&..." with every ns= parameter left out, and returns 0; -1 (out
 * untouched) when there is no such link, its query holds anything but visible ASCII other
 * than '"' and '<', or out (cap bytes) cannot hold it: a cap of strlen(link) + 1 always can.
 * The path is not returned: the caller names its own repository. */
int rp_http_link_next_query(const char *link, bool referrers, char *out, size_t cap);

#endif
