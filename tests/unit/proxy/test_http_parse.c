/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/http_parse.c: request heads split at every byte, each error class,
 * the size limits, framing and keep-alive rules, and Range parsing. */
#include "../unit.h"

#include "../../../proxy/http_parse.h"

#define MAXT 2048

static struct rp_http_request_head h;

static int parse_n(const char *s, size_t n)
{
    return rp_http_parse_request(s, n, MAXT, &h);
}

static int parse(const char *s)
{
    return parse_n(s, strlen(s));
}

/* A complete head: the whole string. */
#define CHECK_PARSES(s) CHECK_INT(parse(s), strlen(s))

static bool hdr_is(const char *name, const char *value)
{
    const struct rp_http_header *x = rp_http_find_header(&h, name);
    return x && x->value_len == strlen(value) && memcmp(x->value, value, x->value_len) == 0;
}

static const char GET_REQ[] = "GET /v2/foo/manifests/latest HTTP/1.1\r\n"
                              "Host: localhost:5000\r\n"
                              "User-Agent: docker/24.0\r\n"
                              "Accept: application/vnd.oci.image.index.v1+json, */*\r\n"
                              "X-Empty:\r\n"
                              "X-Spaces: \t padded \t \r\n"
                              "\r\n";

static void test_complete(void)
{
    size_t n = strlen(GET_REQ);
    CHECK_INT(parse(GET_REQ), n);
    CHECK_INT(h.method, RP_HTTP_GET);
    CHECK_INT(h.method_len, 3);
    CHECK(memcmp(h.method_str, "GET", 3) == 0);
    CHECK_INT(h.target_len, strlen("/v2/foo/manifests/latest"));
    CHECK(memcmp(h.target, "/v2/foo/manifests/latest", h.target_len) == 0);
    CHECK_INT(h.minor, 1);
    CHECK_INT(h.n_headers, 5);
    CHECK(h.keep_alive);
    CHECK(!h.has_body);
    CHECK(!h.expect_continue);
    CHECK(hdr_is("host", "localhost:5000"));
    CHECK(hdr_is("HOST", "localhost:5000"));
    CHECK(hdr_is("accept", "application/vnd.oci.image.index.v1+json, */*"));
    CHECK(hdr_is("x-empty", ""));
    CHECK(hdr_is("X-SPACES", "padded"));
    CHECK(rp_http_find_header(&h, "x-missing") == NULL);
    CHECK(rp_http_find_header(&h, "hos") == NULL);

    CHECK_INT(parse("HEAD /v2/ HTTP/1.0\r\n\r\n"), 22);
    CHECK_INT(h.method, RP_HTTP_HEAD);
    CHECK_INT(h.minor, 0);
    CHECK(!h.keep_alive);
    CHECK_INT(h.n_headers, 0);
    CHECK_INT(parse("DELETE /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), 33);
    CHECK_INT(h.method, RP_HTTP_OTHER);
    CHECK_INT(parse("get /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), 30);
    CHECK_INT(h.method, RP_HTTP_OTHER); /* methods are case-sensitive */
}

/* Every proper prefix of a valid head needs more; the whole head parses to its length. */
static void test_every_split(void)
{
    const char *reqs[] = {
        GET_REQ,
        "GET / HTTP/1.0\n\n",
        "HEAD /v2/ HTTP/1.1\nHost: a\n\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof(reqs) / sizeof(reqs[0]); k++) {
        size_t n = strlen(reqs[k]);
        for (size_t i = 0; i < n; i++) {
            char *copy = malloc(i ? i : 1); /* exact-size copy so ASan sees over-reads */
            memcpy(copy, reqs[k], i);
            int rc = parse_n(copy, i);
            if (rc != RP_HTTP_NEED_MORE) {
                fprintf(stderr, "request %zu prefix %zu: %d\n", k, i, rc);
                unit_cur_failed = 1;
            }
            free(copy);
        }
        char *copy = malloc(n);
        memcpy(copy, reqs[k], n);
        CHECK_INT(parse_n(copy, n), n);
        free(copy);
    }
}

static void test_pipelined(void)
{
    const char two[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    int n = parse(two);
    CHECK_INT(n, 28);
    CHECK_INT(parse(two + n), 28);
    CHECK(memcmp(h.target, "/b", 2) == 0);
    /* Garbage after the head is the caller's (a body or the next request). */
    CHECK_INT(parse("GET /a HTTP/1.1\r\nHost: x\r\n\r\n\x01\x02garbage"), 28);
}

static void test_lf_only(void)
{
    CHECK_INT(parse("GET /v2/ HTTP/1.1\nHost: x\n\n"), 27);
    CHECK(hdr_is("host", "x"));
    /* Mixed line ends. */
    CHECK_INT(parse("GET /v2/ HTTP/1.1\r\nHost: x\n\r\n"), 29);
    CHECK_INT(parse("GET /v2/ HTTP/1.1\nHost: x\r\n\n"), 28);
}

static void test_request_line_errors(void)
{
    CHECK_INT(parse("GET  /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/  HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/ HTTP/1.1 \r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse(" GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET\t/v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/\r\n\r\n"), RP_HTTP_E_BAD); /* HTTP/0.9 */
    CHECK_INT(parse("GET\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("G(T /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/\x01 HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/ http/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/ HTTP/1.1x\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/ HTTP/11\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    /* Errors are found before the line ends. */
    CHECK_INT(parse("G(T"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/\x01"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET /v2/ HTTP/1.1xxxx"), RP_HTTP_E_BAD);
    char longmethod[64];
    memset(longmethod, 'A', sizeof(longmethod));
    CHECK_INT(parse_n(longmethod, sizeof(longmethod)), RP_HTTP_E_BAD);
}

static void test_version(void)
{
    CHECK_INT(parse("GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n"), RP_HTTP_E_VERSION);
    /* RFC 9110 2.5: a later minor version is processed as the highest we implement, 1.1
     * (Host required, keep-alive by default). */
    CHECK_PARSES("GET /v2/ HTTP/1.2\r\nHost: x\r\n\r\n");
    CHECK_INT(h.minor, 1);
    CHECK(h.keep_alive);
    CHECK_INT(parse("GET /v2/ HTTP/1.9\r\n\r\n"), RP_HTTP_E_BAD); /* no Host, as for 1.1 */
    CHECK_INT(parse("GET /v2/ HTTP/0.9\r\nHost: x\r\n\r\n"), RP_HTTP_E_VERSION);
    CHECK_INT(parse("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), RP_HTTP_E_VERSION);
}

static void test_target_forms(void)
{
    /* absolute-form: the authority names nothing we dial; the path is the target. */
    CHECK(parse("GET http://evil.example/v2/x?n=1 HTTP/1.1\r\nHost: x\r\n\r\n") > 0);
    CHECK(h.target_len == 9 && memcmp(h.target, "/v2/x?n=1", 9) == 0);
    CHECK(parse("GET HTTPS://a:1/v2/ HTTP/1.1\r\nHost: x\r\n\r\n") > 0);
    CHECK(h.target_len == 4 && memcmp(h.target, "/v2/", 4) == 0);
    CHECK_INT(parse("GET http://evil.example HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_TARGET);
    CHECK_INT(parse("GET http:///v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_TARGET);
    CHECK_INT(parse("GET http://a?/v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_TARGET);
    CHECK_INT(parse("GET ftp://a/v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_TARGET);
    CHECK_INT(parse("CONNECT evil.example:443 HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_TARGET);
    CHECK_INT(parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_TARGET);
    CHECK_INT(parse("GET v2/ HTTP/1.1\r\nHost: x\r\n\r\n"), RP_HTTP_E_TARGET);
}

static void test_uri_too_long(void)
{
    static char buf[RP_HTTP_MAX_HEAD + 100];
    int n = snprintf(buf, sizeof(buf), "GET /");
    memset(buf + n, 'a', MAXT - 1); /* target of exactly MAXT bytes */
    n += MAXT - 1;
    n += snprintf(buf + n, sizeof(buf) - (size_t)n, " HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK_INT(parse(buf), n);
    CHECK_INT(h.target_len, MAXT);

    n = snprintf(buf, sizeof(buf), "GET /");
    memset(buf + n, 'a', MAXT);
    n += MAXT;
    n += snprintf(buf + n, sizeof(buf) - (size_t)n, " HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK_INT(parse(buf), RP_HTTP_E_URI_TOO_LONG);
    /* While the line is still arriving: refused as soon as the target is too long. */
    CHECK_INT(parse_n(buf, 5 + MAXT), RP_HTTP_E_URI_TOO_LONG);
    CHECK_INT(parse_n(buf, 4 + MAXT), RP_HTTP_NEED_MORE);
    /* Even when the caller's limit exceeds the head limit, a head that cannot end is refused. */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /", 5);
    CHECK_INT(rp_http_parse_request(buf, sizeof(buf), 1 << 20, &h), RP_HTTP_E_HEADERS_TOO_LARGE);
    CHECK_INT(rp_http_parse_request("GET /a HTTP/1.1\r\n", 17, 1, &h), RP_HTTP_E_URI_TOO_LONG);
}

static void test_header_errors(void)
{
    /* obs-fold */
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\n Host: x\r\n\r\n"), RP_HTTP_E_BAD);
    /* whitespace before the colon: a smuggling classic */
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 5\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHo(st: x\r\n\r\n"), RP_HTTP_E_BAD);
    /* bare CR, NUL, control characters */
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\rHost: x\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\r\n"), RP_HTTP_E_BAD);
    const char nul[] = "GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n";
    CHECK_INT(parse_n(nul, sizeof(nul) - 1), RP_HTTP_E_BAD);
    CHECK_INT(parse_n(nul, 24), RP_HTTP_E_BAD); /* NUL seen before the head is complete */
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7f\r\n\r\n"), RP_HTTP_E_BAD);
    /* obs-text in values is allowed (RFC 9110 5.5) */
    CHECK_PARSES("GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\xc3\xa9\r\n\r\n");
    /* Host rules */
    CHECK_INT(parse("GET / HTTP/1.1\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), RP_HTTP_E_BAD);
    CHECK_INT(parse("GET / HTTP/1.0\r\n\r\n"), 18);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 25);
}

static void test_limits(void)
{
    static char buf[RP_HTTP_MAX_HEAD + 1024];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < RP_HTTP_MAX_HEADERS - 1; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "X-%d: v\r\n", i);
    size_t before_end = n;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n");
    CHECK_INT(parse_n(buf, n), n);
    CHECK_INT(h.n_headers, RP_HTTP_MAX_HEADERS);
    n = before_end + (size_t)snprintf(buf + before_end, sizeof(buf) - before_end, "X-L: v\r\n");
    CHECK_INT(parse_n(buf, n), RP_HTTP_E_HEADERS_TOO_LARGE); /* even before the head ends */
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n");
    CHECK_INT(parse_n(buf, n), RP_HTTP_E_HEADERS_TOO_LARGE);

    /* A head of exactly RP_HTTP_MAX_HEAD bytes is fine; one more is not. */
    n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ");
    size_t fill = RP_HTTP_MAX_HEAD - n - 4;
    memset(buf + n, 'v', fill);
    n += fill;
    memcpy(buf + n, "\r\n\r\n", 4);
    n += 4;
    CHECK_INT(n, RP_HTTP_MAX_HEAD);
    CHECK_INT(parse_n(buf, n), RP_HTTP_MAX_HEAD);
    CHECK_INT(parse_n(buf, n - 1), RP_HTTP_NEED_MORE);
    memmove(buf + n - 3, buf + n - 4, 4);
    buf[n - 4] = 'v';
    CHECK_INT(parse_n(buf, n + 1), RP_HTTP_E_HEADERS_TOO_LARGE);
    CHECK_INT(parse_n(buf, n), RP_HTTP_E_HEADERS_TOO_LARGE); /* no end yet, no room left */
    CHECK_INT(parse_n(buf, n - 1), RP_HTTP_NEED_MORE);

    /* Leading empty lines count against the head limit. */
    memset(buf, '\n', RP_HTTP_MAX_HEAD + 10);
    CHECK_INT(parse_n(buf, RP_HTTP_MAX_HEAD + 10), RP_HTTP_E_HEADERS_TOO_LARGE);
    CHECK_INT(parse_n(buf, 100), RP_HTTP_NEED_MORE);
    /* So do CRLF ones, even when the buffer (a head and one byte: the server's input) ends
     * in the CR of one more: a full buffer is never "need more", which would leave the
     * connection waiting for bytes it has no room to read. */
    for (size_t i = 0; i < RP_HTTP_MAX_HEAD; i += 2)
        memcpy(buf + i, "\r\n", 2);
    buf[RP_HTTP_MAX_HEAD] = '\r';
    CHECK_INT(parse_n(buf, RP_HTTP_MAX_HEAD + 1), RP_HTTP_E_HEADERS_TOO_LARGE);
    CHECK_INT(parse_n(buf, RP_HTTP_MAX_HEAD - 1), RP_HTTP_NEED_MORE);
}

static void test_framing(void)
{
    CHECK_PARSES("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    CHECK(!h.has_body);
    CHECK_PARSES("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
    CHECK(h.has_body);
    CHECK_PARSES("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    CHECK(h.has_body);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"),
              RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    "Content-Length: 0\r\n\r\n"),
              RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
              RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
              RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"),
              RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"), RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n"), RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n"),
              RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n"), RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
              RP_HTTP_E_FRAMING);
    CHECK_INT(parse("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), RP_HTTP_E_FRAMING);
}

/* RFC 9112 3.2: a Host that is not uri-host [":" port] is a 400, as a missing one is. */
static void test_host(void)
{
    const char *ok[] = {"localhost:5000",
                        "registry.example",
                        "127.0.0.1:5000",
                        "[::1]:5000",
                        "[fe80::1%25eth0]",
                        "",
                        "xn--bcher-kva.example:443",
                        "a_b~c"};
    const char *bad[] = {"a b",   "a/b",  "x@evil.example",      "x?y", "x#y", "a\\b",
                         "\"x\"", "x\tz", "caf\xc3\xa9.example", "{x}", "a|b", "<x>"};
    char req[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", ok[i]);
        CHECK_INT(parse(req), (int)strlen(req));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
        CHECK_INT(parse(req), RP_HTTP_E_BAD);
        snprintf(req, sizeof(req), "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", bad[i]);
        CHECK_INT(parse(req), RP_HTTP_E_BAD);
    }
    /* absolute-form: the Host is ignored (RFC 9112 3.2.2) but must still be valid. */
    CHECK_INT(parse("GET http://a/v2/ HTTP/1.1\r\nHost: a b\r\n\r\n"), RP_HTTP_E_BAD);
}

static void test_keep_alive(void)
{
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n") > 0, 1);
    CHECK(h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") > 0, 1);
    CHECK(!h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, CLOSE\r\n\r\n") > 0, 1);
    CHECK(!h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: te\r\nConnection: close\r\n\r\n") > 0,
              1);
    CHECK(!h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n") > 0, 1);
    CHECK(h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.0\r\n\r\n") > 0, 1);
    CHECK(!h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") > 0, 1);
    CHECK(h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.0\r\nConnection: foo ,keep-alive ,\r\n\r\n") > 0, 1);
    CHECK(h.keep_alive);
    CHECK_INT(parse("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n") > 0, 1);
    CHECK(!h.keep_alive);
}

static void test_expect(void)
{
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n") > 0, 1);
    CHECK(h.expect_continue);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nexpect: 100-Continue\r\n\r\n") > 0, 1);
    CHECK(h.expect_continue);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n") > 0, 1);
    CHECK(!h.expect_continue);
    CHECK_INT(parse("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n") > 0, 1);
    CHECK(!h.expect_continue);
}

static enum rp_range_result range(const char *v, uint64_t size, uint64_t *s, uint64_t *e)
{
    *s = *e = 12345;
    return rp_http_parse_range(v, strlen(v), size, s, e);
}

static void test_range(void)
{
    uint64_t s, e;
    CHECK_INT(range("bytes=0-99", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(s, 0);
    CHECK_INT(e, 99);
    CHECK_INT(range("bytes=100-", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(s, 100);
    CHECK_INT(e, 999);
    CHECK_INT(range("bytes=-50", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(s, 950);
    CHECK_INT(e, 999);
    CHECK_INT(range("bytes=-5000", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(s, 0);
    CHECK_INT(e, 999);
    CHECK_INT(range("bytes=500-5000", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(s, 500);
    CHECK_INT(e, 999);
    CHECK_INT(range("bytes=999-999", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(s, 999);
    CHECK_INT(e, 999);
    CHECK_INT(range("Bytes=1-1", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(range("bytes= 1-2 ", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(e, 2);
    CHECK_INT(range("bytes=0-18446744073709551615", 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(e, 999);

    CHECK_INT(range("bytes=1000-", 1000, &s, &e), RP_RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=1000-2000", 1000, &s, &e), RP_RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=-0", 1000, &s, &e), RP_RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=0-", 0, &s, &e), RP_RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=0-0", 0, &s, &e), RP_RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=-0", 0, &s, &e), RP_RANGE_UNSATISFIABLE);
    /* A non-zero suffix of an empty body is satisfiable but empty: serve the body (200). */
    CHECK_INT(range("bytes=-5", 0, &s, &e), RP_RANGE_NONE);

    CHECK_INT(range("bytes=5-1", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=0-1,5-6", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=0-1, 5-6", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("items=0-1", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes 0-1", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes =0-1", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=-", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=abc", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=1", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=1-2-3", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=--5", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=+1-2", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=1 - 2", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=0x1-2", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=18446744073709551616-", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("bytes=-18446744073709551616", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(range("", 1000, &s, &e), RP_RANGE_NONE);
    CHECK_INT(s, 12345); /* outputs untouched unless OK */
    CHECK_INT(e, 12345);
    /* Counted, not NUL-terminated. */
    CHECK_INT(rp_http_parse_range("bytes=0-99trailing", 10, 1000, &s, &e), RP_RANGE_OK);
    CHECK_INT(e, 99);
}

static struct rp_byte_range rs[4];

static enum rp_range_result ranges(const char *v, uint64_t size, size_t *n)
{
    memset(rs, 0xee, sizeof(rs));
    *n = 999;
    return rp_http_parse_ranges(v, strlen(v), size, rs, 4, n);
}

/* Well-formedness alone, whatever the size: what the proxy keeps of a client's Range. */
static void test_range_valid(void)
{
    const char *good[] = {"bytes=0-",      "bytes=0-9",          "bytes=-5",       "bytes=-0",
                          "BYTES=1-2, 5-", "bytes=99999999999-", "bytes=0-1,,2-3", "bytes= 4-5 "};
    const char *bad[] = {"",        "bytes=",      "bytes=abc", "bytes=5-2", "items=0-1",
                         "bytes=1", "bytes=0-1,x", "bytes=,",   "bytes=-",   "bytes 0-1"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK(rp_http_range_valid(good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(!rp_http_range_valid(bad[i], strlen(bad[i])));
}

static void test_ranges(void)
{
    size_t n;
    CHECK_INT(ranges("bytes=0-9,100-199", 1000, &n), RP_RANGE_OK);
    CHECK_INT(n, 2);
    CHECK_INT(rs[0].first, 0);
    CHECK_INT(rs[0].last, 9);
    CHECK_INT(rs[1].first, 100);
    CHECK_INT(rs[1].last, 199);
    /* Order kept; suffix and open ranges; OWS and empty elements. */
    CHECK_INT(ranges("Bytes= -10 ,, 500-, 20-29 ,", 1000, &n), RP_RANGE_OK);
    CHECK_INT(n, 3);
    CHECK_INT(rs[0].first, 990);
    CHECK_INT(rs[1].first, 500);
    CHECK_INT(rs[1].last, 999);
    CHECK_INT(rs[2].first, 20);
    CHECK_INT(rs[2].last, 29);
    /* One range: as rp_http_parse_range. */
    CHECK_INT(ranges("bytes=5-", 1000, &n), RP_RANGE_OK);
    CHECK_INT(n, 1);
    CHECK_INT(rs[0].last, 999);
    /* Unsatisfiable ones are left out; none satisfiable is a 416. */
    CHECK_INT(ranges("bytes=2000-2999,0-0,-0", 1000, &n), RP_RANGE_OK);
    CHECK_INT(n, 1);
    CHECK_INT(rs[0].last, 0);
    CHECK_INT(ranges("bytes=2000-2999,1000-", 1000, &n), RP_RANGE_UNSATISFIABLE);
    /* The whole body instead: a bad spec anywhere, too many, overlaps past the size. */
    CHECK_INT(ranges("bytes=0-1,x", 1000, &n), RP_RANGE_NONE);
    /* Two whole bodies of a size past 2^63 would wrap a plain sum back below the size. */
    CHECK_INT(ranges("bytes=0-,0-", UINT64_MAX - 1, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("bytes=0-1,5-2", 1000, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("bytes=0-0,2-2,4-4,6-6", 1000, &n), RP_RANGE_OK);
    CHECK_INT(n, 4);
    CHECK_INT(ranges("bytes=0-0,2-2,4-4,6-6,8-8", 1000, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("bytes=0-599,400-999", 1000, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("bytes=0-499,500-999", 1000, &n), RP_RANGE_OK);
    CHECK_INT(ranges("bytes=0-,0-", 1000, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("bytes=", 1000, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("bytes=,,", 1000, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("items=0-1,2-3", 1000, &n), RP_RANGE_NONE);
    CHECK_INT(ranges("bytes=-5,-5", 0, &n), RP_RANGE_NONE);
    CHECK_INT(n, 999); /* untouched unless OK */
    /* Counted, not NUL-terminated. */
    CHECK_INT(rp_http_parse_ranges("bytes=0-1,2-3,x", 13, 1000, rs, 4, &n), RP_RANGE_OK);
    CHECK_INT(n, 2);
}

static int content_range(const char *v, uint64_t *a, uint64_t *b, uint64_t *c)
{
    *a = *b = *c = 12345;
    return rp_http_parse_content_range(v, strlen(v), a, b, c);
}

static void test_content_range(void)
{
    uint64_t a, b, c;
    CHECK_INT(content_range("bytes 1000-1999/5000", &a, &b, &c), 0);
    CHECK_INT(a, 1000);
    CHECK_INT(b, 1999);
    CHECK_INT(c, 5000);
    CHECK_INT(content_range("Bytes 0-0/1", &a, &b, &c), 0);
    CHECK_INT(c, 1);
    CHECK_INT(content_range(" bytes 4-9/10 ", &a, &b, &c), 0);
    CHECK_INT(b, 9);
    CHECK_INT(content_range("bytes 0-18446744073709551614/18446744073709551615", &a, &b, &c), 0);

    CHECK_INT(content_range("bytes 0-9/*", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes */10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0-10/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 5-4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes=0-4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("items 0-4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0-4", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0/4-10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0-4/10/20", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0-2-4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes -4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0-/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0-4/", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes  0-4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0 - 4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes +0-4/10", &a, &b, &c), -1);
    CHECK_INT(content_range("bytes 0-4/18446744073709551616", &a, &b, &c), -1);
    CHECK_INT(content_range("", &a, &b, &c), -1);
    CHECK_INT(a, 12345); /* outputs untouched unless 0 */
    CHECK_INT(b, 12345);
    CHECK_INT(c, 12345);
    /* Counted, not NUL-terminated. */
    CHECK_INT(rp_http_parse_content_range("bytes 0-4/10trailing", 12, &a, &b, &c), 0);
    CHECK_INT(c, 10);
}

static void test_etag_list(void)
{
    const char *d = "sha256:abc";
    CHECK(rp_http_etag_list_names("\"sha256:abc\"", d));
    CHECK(rp_http_etag_list_names("W/\"sha256:abc\"", d)); /* weak comparison */
    CHECK(rp_http_etag_list_names("sha256:abc", d));       /* bare, as docker-registry takes */
    CHECK(rp_http_etag_list_names("*", d));
    CHECK(rp_http_etag_list_names("\"x,y\", \"sha256:abc\"", d));
    CHECK(rp_http_etag_list_names(" ,\t\"other\" ,sha256:abc", d));
    CHECK(!rp_http_etag_list_names("\"sha256:abc, \"", d)); /* a comma inside a tag */
    CHECK(!rp_http_etag_list_names("\"sha256:ab\"", d));
    CHECK(!rp_http_etag_list_names("\"sha256:abcd\"", d));
    CHECK(rp_http_etag_list_names("\"sha256:abc", d)); /* unterminated: runs to the end */
    CHECK(!rp_http_etag_list_names("", d));
    CHECK(!rp_http_etag_list_names(NULL, d));
    CHECK(!rp_http_etag_list_names("W/", d));
}

static void test_te_chunked(void)
{
#define TE(s) rp_http_te_chunked(s, strlen(s))
    CHECK(TE("chunked"));
    CHECK(TE(" Chunked \t"));
    CHECK(TE("gzip, chunked"));
    CHECK(TE("gzip,chunked"));
    CHECK(!TE("chunked, gzip")); /* the last coding frames */
    CHECK(!TE("notchunked"));
    CHECK(!TE("hunked"));
    CHECK(!TE(""));
    CHECK(!TE("   "));
    CHECK(!rp_http_te_chunked("chunked", 6));
#undef TE
}

static void test_link_next(void)
{
    char out[256];
#define LINK(s, ref) rp_http_link_next_query(s, ref, out, sizeof(out))
    CHECK_INT(LINK("</v2/lib/app/tags/list?n=10&last=b>; rel=\"next\"", false), 0);
    CHECK_STR(out, "?n=10&last=b");
    CHECK_INT(LINK("<https://up.example/v2/x/tags/list?last=b>; rel=next", false), 0);
    CHECK_STR(out, "?last=b");
    /* Only rel="next", among several link-values; relation types are case-insensitive. */
    CHECK_INT(
        LINK("</v2/a/tags/list?p=1>; rel=\"prev\", </v2/a/tags/list?p=3>; REL=\"Next\"", false), 0);
    CHECK_STR(out, "?p=3");
    CHECK_INT(LINK("</v2/a/tags/list?p=1>; rel=\"prev\"", false), -1);
    CHECK_INT(LINK("</v2/a/tags/list?p=1>; norel=\"next\"", false), -1);
    /* ns= never passes, whatever its place; empty parameters go too. */
    CHECK_INT(LINK("</v2/a/tags/list?ns=evil.example&n=1&&ns&nsx=2>; rel=\"next\"", false), 0);
    CHECK_STR(out, "?n=1&nsx=2");
    CHECK_INT(LINK("</v2/a/tags/list?ns=evil.example>; rel=\"next\"", false), 0);
    CHECK_STR(out, "");
    CHECK_INT(LINK("</v2/a/tags/list>; rel=\"next\"", false), 0);
    CHECK_STR(out, "");
    /* Not a tags list, not under /v2/, a query that is not visible ASCII, no closing '>'. */
    CHECK_INT(LINK("</v2/a/manifests/x?n=1>; rel=\"next\"", false), -1);
    CHECK_INT(LINK("</v3/a/tags/list?n=1>; rel=\"next\"", false), -1);
    CHECK_INT(LINK("</v2/a/tags/list?n=\"1>; rel=\"next\"", false), -1);
    CHECK_INT(LINK("</v2/a/tags/list?n=1 2>; rel=\"next\"", false), -1);
    CHECK_INT(LINK("</v2/a/tags/list?n=1; rel=\"next\"", false), -1);
    CHECK_INT(LINK("<https://host-without-path>; rel=\"next\"", false), -1);
    /* Referrers pages name a subject; a tags link is not one. */
    CHECK_INT(LINK("</v2/a/referrers/sha256:0?n=1>; rel=\"next\"", true), 0);
    CHECK_STR(out, "?n=1");
    CHECK_INT(LINK("</v2/a/referrers/?n=1>; rel=\"next\"", true), -1);
    CHECK_INT(LINK("</v2/a/tags/list?n=1>; rel=\"next\"", true), -1);
    CHECK_INT(LINK("</v2/a/referrers/sha256:0?n=1>; rel=\"next\"", false), -1);
    /* Too small a buffer is refused, not overrun. */
    strcpy(out, "untouched");
    CHECK_INT(rp_http_link_next_query("</v2/a/tags/list?n=10>; rel=\"next\"", false, out, 5), -1);
    CHECK_STR(out, "untouched");
#undef LINK
}

int main(void)
{
    RUN(test_complete);
    RUN(test_every_split);
    RUN(test_pipelined);
    RUN(test_lf_only);
    RUN(test_request_line_errors);
    RUN(test_version);
    RUN(test_target_forms);
    RUN(test_uri_too_long);
    RUN(test_header_errors);
    RUN(test_limits);
    RUN(test_framing);
    RUN(test_host);
    RUN(test_keep_alive);
    RUN(test_expect);
    RUN(test_range);
    RUN(test_ranges);
    RUN(test_range_valid);
    RUN(test_content_range);
    RUN(test_etag_list);
    RUN(test_te_chunked);
    RUN(test_link_next);
    UNIT_EXIT();
}
