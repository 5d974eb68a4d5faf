/* SPDX-License-Identifier: Apache-2.0 */
/* http_parse: strict HTTP/1.x request heads (RFC 9112) and single byte ranges (RFC 9110).
 * Anything ambiguous is an error rather than a guess: request smuggling lives in the gap
 * between two parsers' guesses. */
#include "http_parse.h"

#include <string.h>

#include "../util/util.h"

/* Longest method we bother to read; we serve GET and HEAD, the rest is 405 anyway. */
#define METHOD_MAX 32

/* tchar (RFC 9110 5.6.2). */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Parses the request line p[0..n), without its line end. `complete` is false while the line
 * end has not arrived yet: then only what is already decidable is checked. Every part is
 * bounded (method, target by max_target, version), so an endless request line is refused
 * within max_target + ~45 bytes, before the buffer fills. */
static int parse_request_line(const char *p, size_t n, bool complete, size_t max_target,
                              struct rp_http_request_head *out)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]) && i <= METHOD_MAX)
        i++;
    if (i > METHOD_MAX)
        return RP_HTTP_E_BAD;
    if (i == n)
        return complete ? RP_HTTP_E_BAD : RP_HTTP_NEED_MORE;
    if (p[i] != ' ' || i == 0)
        return RP_HTTP_E_BAD;
    out->method_str = p;
    out->method_len = i;

    size_t t = i + 1, j = t;
    for (; j < n && p[j] != ' '; j++) {
        unsigned char c = (unsigned char)p[j];
        /* RFC 9112 3.2: the target is visible ASCII; no whitespace, controls or raw UTF-8. */
        if (c < 0x21 || c >= 0x7f)
            return RP_HTTP_E_BAD;
        if (j - t >= max_target)
            return RP_HTTP_E_URI_TOO_LONG;
    }
    if (j == n)
        return complete ? RP_HTTP_E_BAD : RP_HTTP_NEED_MORE;
    if (j == t)
        return RP_HTTP_E_BAD; /* two spaces */
    out->target = p + t;
    out->target_len = j - t;

    const char *v = p + j + 1;
    size_t vlen = n - j - 1;
    if (!complete)
        return vlen > 9 ? RP_HTTP_E_BAD : RP_HTTP_NEED_MORE; /* "HTTP/1.1\r" at most */
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
        v[7] < '0' || v[7] > '9')
        return RP_HTTP_E_BAD;
    /* Version before target form, so the HTTP/2 preface "PRI * HTTP/2.0" reads as a version
     * error rather than an asterisk-form target. */
    if (v[5] != '1')
        return RP_HTTP_E_VERSION;
    /* A later 1.x is read as 1.1, the highest we conform to (RFC 9110 2.5), as nginx does. */
    out->minor = v[7] == '0' ? 0 : 1;
    if (out->target[0] != '/') {
        /* absolute-form, which RFC 9112 3.2.2 says a server must accept (clients set to use
         * an HTTP proxy send it): its authority is dropped, as routing never reads a host
         * from a request; the path and query are the target. */
        const char *tg = out->target;
        size_t tl = out->target_len, s;
        if (tl > 7 && rp_strieq_n(tg, 7, "http://"))
            s = 7;
        else if (tl > 8 && rp_strieq_n(tg, 8, "https://"))
            s = 8;
        else
            return RP_HTTP_E_TARGET;
        size_t a = s;
        while (a < tl && tg[a] != '/' && tg[a] != '?' && tg[a] != '#')
            a++;
        if (a == s || a == tl || tg[a] != '/')
            return RP_HTTP_E_TARGET;
        out->target = tg + a;
        out->target_len = tl - a;
    }

    if (i == 3 && memcmp(p, "GET", 3) == 0)
        out->method = RP_HTTP_GET;
    else if (i == 4 && memcmp(p, "HEAD", 4) == 0)
        out->method = RP_HTTP_HEAD;
    else
        out->method = RP_HTTP_OTHER;
    return 1;
}

/* Finds the next line starting at `pos`: sets *content_end (before CR LF or LF) and *next
 * (after the LF). Returns 1, 0 when no LF yet, or E_BAD for a CR not followed by LF or a NUL.
 */
static int next_line(const char *buf, size_t len, size_t pos, size_t *content_end, size_t *next)
{
    for (size_t i = pos; i < len; i++) {
        char c = buf[i];
        if (c == '\n') {
            *content_end = i;
            *next = i + 1;
            return 1;
        }
        if (c == '\0')
            return RP_HTTP_E_BAD;
        if (c == '\r') {
            if (i + 1 == len)
                return 0;
            if (buf[i + 1] != '\n')
                return RP_HTTP_E_BAD; /* bare CR (RFC 9112 2.2) */
            *content_end = i;
            *next = i + 2;
            return 1;
        }
    }
    return 0;
}

static int parse_header_line(const char *p, size_t n, struct rp_http_header *h)
{
    if (n == 0 || is_ows(p[0]))
        return RP_HTTP_E_BAD; /* obs-fold, or whitespace before the name (RFC 9112 5.2) */
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i == n || p[i] != ':')
        return RP_HTTP_E_BAD; /* no whitespace between name and colon (RFC 9112 5.1) */
    h->name = p;
    h->name_len = i;
    size_t vs = i + 1, ve = n;
    while (vs < ve && is_ows(p[vs]))
        vs++;
    while (ve > vs && is_ows(p[ve - 1]))
        ve--;
    for (size_t k = vs; k < ve; k++) {
        unsigned char c = (unsigned char)p[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return RP_HTTP_E_BAD;
    }
    h->value = p + vs;
    h->value_len = ve - vs;
    return 1;
}

/* Host = uri-host [ ":" port ] (RFC 9112 3.2, RFC 3986 3.2.2), checked as loosely as Go's
 * net/http checks it (the registries behind us are mostly Go): a byte outside that set, such
 * as whitespace, '/', '@' or '?', cannot be part of any host. Empty is valid (RFC 9112 3.2). */
static bool host_valid(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c != '\0' && strchr("!$%&'()*+,-.:;=[]_~", c))))
            return false;
    }
    return true;
}

static bool name_is(const struct rp_http_header *h, const char *name)
{
    return rp_strieq_n(h->name, h->name_len, name);
}

/* Connection is a comma-separated token list and may be repeated (RFC 9110 7.6.1). */
static void apply_connection(const struct rp_http_header *h, bool *close, bool *keep)
{
    size_t i = 0, n = h->value_len;
    const char *v = h->value;
    while (i < n) {
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && is_ows(v[e - 1]))
            e--;
        if (rp_strieq_n(v + s, e - s, "close"))
            *close = true;
        else if (rp_strieq_n(v + s, e - s, "keep-alive"))
            *keep = true;
    }
}

static int check_semantics(struct rp_http_request_head *out)
{
    size_t n_host = 0, n_cl = 0, n_te = 0;
    uint64_t cl = 0;
    bool close = false, keep = false;
    for (size_t i = 0; i < out->n_headers; i++) {
        const struct rp_http_header *h = &out->headers[i];
        if (name_is(h, "host")) {
            /* RFC 9112 3.2: an invalid Host value is a 400 like a missing one. */
            if (++n_host > 1 || !host_valid(h->value, h->value_len))
                return RP_HTTP_E_BAD;
        } else if (name_is(h, "content-length")) {
            /* Even a repeated equal value is refused: RFC 9112 6.3 allows merging them, but a
             * proxy in front of us might not, and disagreement is how smuggling starts. */
            if (++n_cl > 1 || rp_parse_u64(h->value, h->value_len, &cl) != 0)
                return RP_HTTP_E_FRAMING;
        } else if (name_is(h, "transfer-encoding")) {
            n_te++;
        } else if (name_is(h, "connection")) {
            apply_connection(h, &close, &keep);
        } else if (name_is(h, "expect")) {
            /* RFC 9110 10.1.1: a 100-continue expectation in HTTP/1.0 is ignored. */
            if (out->minor == 1 && rp_strieq_n(h->value, h->value_len, "100-continue"))
                out->expect_continue = true;
        }
    }
    /* RFC 9112 6.1: TE in a 1.0 request means faulty framing; TE with CL is smuggling. */
    if (n_te > 0 && (n_cl > 0 || out->minor == 0))
        return RP_HTTP_E_FRAMING;
    if (n_host == 0 && out->minor == 1)
        return RP_HTTP_E_BAD; /* RFC 9112 3.2 */
    out->has_body = cl > 0 || n_te > 0;
    out->keep_alive = !close && (out->minor == 1 || keep);
    return 0;
}

int rp_http_parse_request(const char *buf, size_t len, size_t max_target,
                          struct rp_http_request_head *out)
{
    memset(out, 0, sizeof(*out));
    size_t pos = 0, ce, next;
    int rc;
    /* RFC 9112 2.2: ignore empty lines before the request line (bounded by the head cap). */
    for (;;) {
        rc = next_line(buf, len, pos, &ce, &next);
        if (rc < 0)
            return rc;
        if (rc == 0 || ce > pos)
            break;
        pos = next;
        if (pos > RP_HTTP_MAX_HEAD)
            return RP_HTTP_E_HEADERS_TOO_LARGE;
    }
    if (rc == 0) {
        if (len - pos == 1 && buf[pos] == '\r') /* the CR of an empty line before it */
            return len >= RP_HTTP_MAX_HEAD ? RP_HTTP_E_HEADERS_TOO_LARGE : RP_HTTP_NEED_MORE;
        rc = parse_request_line(buf + pos, len - pos, false, max_target, out);
        if (rc < 0)
            return rc;
        return len >= RP_HTTP_MAX_HEAD ? RP_HTTP_E_HEADERS_TOO_LARGE : RP_HTTP_NEED_MORE;
    }
    rc = parse_request_line(buf + pos, ce - pos, true, max_target, out);
    if (rc < 0)
        return rc;
    pos = next;
    for (;;) {
        if (pos > RP_HTTP_MAX_HEAD)
            return RP_HTTP_E_HEADERS_TOO_LARGE;
        rc = next_line(buf, len, pos, &ce, &next);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return len >= RP_HTTP_MAX_HEAD ? RP_HTTP_E_HEADERS_TOO_LARGE : RP_HTTP_NEED_MORE;
        if (ce == pos)
            break; /* the empty line ending the head */
        if (out->n_headers == RP_HTTP_MAX_HEADERS)
            return RP_HTTP_E_HEADERS_TOO_LARGE;
        rc = parse_header_line(buf + pos, ce - pos, &out->headers[out->n_headers]);
        if (rc < 0)
            return rc;
        out->n_headers++;
        pos = next;
    }
    if (next > RP_HTTP_MAX_HEAD)
        return RP_HTTP_E_HEADERS_TOO_LARGE;
    rc = check_semantics(out);
    if (rc < 0)
        return rc;
    return (int)next;
}

const struct rp_http_header *rp_http_find_header(const struct rp_http_request_head *h,
                                                 const char *name)
{
    for (size_t i = 0; i < h->n_headers; i++)
        if (name_is(&h->headers[i], name))
            return &h->headers[i];
    return NULL;
}

/* One range-spec (RFC 9110 14.1.1), OWS already trimmed, against a body of size bytes. */
static enum rp_range_result parse_range_spec(const char *s, size_t n, uint64_t size,
                                             uint64_t *start, uint64_t *end)
{
    const char *dash = memchr(s, '-', n);
    if (!dash)
        return RP_RANGE_NONE;
    size_t a_len = (size_t)(dash - s), b_len = n - a_len - 1;
    uint64_t a, b;
    if (a_len == 0) {
        /* suffix-range: the last b bytes; "-0" is never satisfiable (RFC 9110 14.1.1). */
        if (rp_parse_u64(dash + 1, b_len, &b) != 0)
            return RP_RANGE_NONE;
        if (b == 0)
            return RP_RANGE_UNSATISFIABLE;
        if (size == 0)
            return RP_RANGE_NONE; /* satisfiable but empty: a 200 with no body says it */
        *start = b >= size ? 0 : size - b;
        *end = size - 1;
        return RP_RANGE_OK;
    }
    if (rp_parse_u64(s, a_len, &a) != 0)
        return RP_RANGE_NONE;
    if (b_len == 0) {
        b = UINT64_MAX;
    } else {
        if (rp_parse_u64(dash + 1, b_len, &b) != 0)
            return RP_RANGE_NONE;
        if (b < a)
            return RP_RANGE_NONE; /* invalid range-spec: ignore the header */
    }
    if (a >= size)
        return RP_RANGE_UNSATISFIABLE;
    *start = a;
    *end = b >= size ? size - 1 : b;
    return RP_RANGE_OK;
}

/* The range-set of a "bytes=" value, OWS trimmed at both ends; NULL for another unit. */
static const char *range_set(const char *value, size_t len, size_t *n)
{
    /* ranges-specifier = range-unit "=" range-set; the unit is case-insensitive (RFC 9110
     * 14.1). OWS is tolerated after '=' and at the end, as list syntax allows. */
    if (len < 6 || !rp_strieq_n(value, 6, "bytes="))
        return NULL;
    size_t i = 6, e = len;
    while (i < e && is_ows(value[i]))
        i++;
    while (e > i && is_ows(value[e - 1]))
        e--;
    *n = e - i;
    return value + i;
}

enum rp_range_result rp_http_parse_range(const char *value, size_t len, uint64_t size,
                                         uint64_t *start, uint64_t *end)
{
    size_t n;
    const char *s = range_set(value, len, &n);
    if (!s || memchr(s, ',', n))
        return RP_RANGE_NONE; /* multiple ranges: serving the whole body is allowed */
    return parse_range_spec(s, n, size, start, end);
}

/* The next non-empty element of the range-set [*p, e) into [*a, *b), OWS trimmed; false at
 * the end. Empty list elements are allowed and skipped (RFC 9110 5.6.1). */
static bool next_range_spec(const char **p, const char *e, const char **a, const char **b)
{
    while (*p) {
        const char *comma = memchr(*p, ',', (size_t)(e - *p));
        *a = *p;
        *b = comma ? comma : e;
        *p = comma ? comma + 1 : NULL;
        while (*a < *b && is_ows(**a))
            (*a)++;
        while (*b > *a && is_ows((*b)[-1]))
            (*b)--;
        if (*a < *b)
            return true;
    }
    return false;
}

bool rp_http_range_valid(const char *value, size_t len)
{
    size_t n;
    const char *s = range_set(value, len, &n);
    if (!s)
        return false;
    size_t elements = 0;
    const char *a, *b;
    for (const char *p = s; next_range_spec(&p, s + n, &a, &b); elements++) {
        uint64_t first, last;
        if (parse_range_spec(a, (size_t)(b - a), UINT64_MAX, &first, &last) == RP_RANGE_NONE)
            return false;
    }
    return elements > 0;
}

enum rp_range_result rp_http_parse_ranges(const char *value, size_t len, uint64_t size,
                                          struct rp_byte_range *out, size_t max, size_t *n_out)
{
    size_t n;
    const char *s = range_set(value, len, &n);
    if (!s)
        return RP_RANGE_NONE;
    size_t k = 0, elements = 0;
    uint64_t total = 0;
    const char *a, *b;
    for (const char *p = s; next_range_spec(&p, s + n, &a, &b);) {
        elements++;
        uint64_t first = 0, last = 0;
        enum rp_range_result rr = parse_range_spec(a, (size_t)(b - a), size, &first, &last);
        if (rr == RP_RANGE_NONE)
            return RP_RANGE_NONE; /* one invalid range-spec: the header is ignored */
        if (rr == RP_RANGE_UNSATISFIABLE)
            continue;
        if (k == max)
            return RP_RANGE_NONE;
        /* More bytes asked for than the body has (overlaps, repeats): the whole body, once,
         * is the cheaper answer (RFC 9110 15.3.7.2 lets a server refuse such sets). */
        uint64_t n_bytes = last - first + 1;
        if (n_bytes > size - total) /* total <= size here: no wrap whatever size is */
            return RP_RANGE_NONE;
        total += n_bytes;
        out[k].first = first;
        out[k].last = last;
        k++;
    }
    if (elements == 0)
        return RP_RANGE_NONE;
    if (k == 0)
        return RP_RANGE_UNSATISFIABLE;
    *n_out = k;
    return RP_RANGE_OK;
}

int rp_http_parse_content_range(const char *value, size_t len, uint64_t *first, uint64_t *last,
                                uint64_t *complete)
{
    /* Content-Range = range-unit SP range-resp; range-resp = incl-range "/" complete-length.
     * The unit is case-insensitive; the value is taken as a header value, OWS trimmed. */
    while (len > 0 && is_ows(value[len - 1]))
        len--;
    while (len > 0 && is_ows(value[0])) {
        value++;
        len--;
    }
    if (len < 6 || !rp_strieq_n(value, 6, "bytes "))
        return -1;
    const char *s = value + 6;
    size_t n = len - 6;
    const char *dash = memchr(s, '-', n);
    const char *slash = memchr(s, '/', n);
    if (!dash || !slash || slash < dash)
        return -1;
    uint64_t a, b, c;
    if (rp_parse_u64(s, (size_t)(dash - s), &a) != 0 ||
        rp_parse_u64(dash + 1, (size_t)(slash - dash - 1), &b) != 0 ||
        rp_parse_u64(slash + 1, n - (size_t)(slash + 1 - s), &c) != 0 || a > b || b >= c)
        return -1;
    *first = a;
    *last = b;
    *complete = c;
    return 0;
}

bool rp_http_etag_list_names(const char *value, const char *tag)
{
    if (!value)
        return false;
    size_t tlen = strlen(tag);
    for (const char *p = value; *p;) {
        if (*p == ',' || *p == ' ' || *p == '\t') {
            p++;
            continue;
        }
        if (*p == '*')
            return true;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        const char *v = p;
        size_t n;
        if (*p == '"') {
            /* An opaque tag may hold commas: it runs to its closing quote. */
            v = ++p;
            const char *q = strchr(p, '"');
            n = q ? (size_t)(q - p) : strlen(p);
            p += n + (q ? 1 : 0);
        } else {
            n = strcspn(p, ", \t");
            p += n;
        }
        if (n == tlen && memcmp(v, tag, n) == 0)
            return true;
    }
    return false;
}

bool rp_http_te_chunked(const char *value, size_t len)
{
    while (len > 0 && is_ows(value[len - 1]))
        len--;
    if (len < 7 || !rp_strieq_n(value + len - 7, 7, "chunked"))
        return false;
    if (len == 7)
        return true;
    char before = value[len - 8];
    return is_ows(before) || before == ',';
}

/* Whether a link-value's parameters (what follows its `>`, up to the next link-value) say
 * rel="next" (or rel=next; RFC 8288 relation types are case-insensitive). */
static bool link_is_next(const char *params, size_t len)
{
    for (size_t i = 0; i + 3 <= len; i++) {
        if (!rp_strieq_n(params + i, 3, "rel") ||
            (i > 0 && params[i - 1] != ';' && params[i - 1] != ' ' && params[i - 1] != '\t'))
            continue;
        size_t j = i + 3;
        while (j < len && (params[j] == ' ' || params[j] == '\t'))
            j++;
        if (j >= len || params[j] != '=')
            continue;
        j++;
        while (j < len && (params[j] == ' ' || params[j] == '\t'))
            j++;
        bool quoted = j < len && params[j] == '"';
        j += quoted;
        if (j + 4 <= len && rp_strieq_n(params + j, 4, "next") &&
            (j + 4 == len || params[j + 4] == (quoted ? '"' : ';') ||
             (!quoted && (params[j + 4] == ' ' || params[j + 4] == ','))))
            return true;
    }
    return false;
}

int rp_http_link_next_query(const char *link, bool referrers, char *out, size_t cap)
{
    const char *lt = NULL, *gt = NULL;
    for (const char *p = link; (p = strchr(p, '<')) != NULL;) {
        const char *e = strchr(p, '>');
        if (!e)
            return -1;
        const char *params = e + 1, *next = strchr(params, '<');
        size_t plen = next ? (size_t)(next - params) : strlen(params);
        if (link_is_next(params, plen)) {
            lt = p;
            gt = e;
            break;
        }
        p = e + 1;
    }
    if (!lt)
        return -1;
    const char *uri = lt + 1;
    size_t ulen = (size_t)(gt - uri);
    const char *path = uri;
    /* Absolute links are reduced to their path: the client must come back to us. */
    if (ulen > 8 && (strncmp(uri, "https://", 8) == 0 || strncmp(uri, "http://", 7) == 0)) {
        const char *host = strstr(uri, "//") + 2;
        path = memchr(host, '/', ulen - (size_t)(host - uri));
        if (!path)
            return -1;
    }
    size_t plen = ulen - (size_t)(path - uri);
    /* Any /v2/.../tags/list (or /v2/.../referrers/<digest>): only the query is kept, and a
     * registry the request was redirected to (registry.k8s.io's backing one) names the
     * repository its own way. */
    const char *q = memchr(path, '?', plen);
    size_t pathlen = q ? (size_t)(q - path) : plen;
    const char *suffix = referrers ? "/referrers" : "/tags/list";
    size_t slen = strlen(suffix), end = pathlen;
    if (referrers) { /* the subject's segment: the page is of the request's subject */
        while (end > 0 && path[end - 1] != '/')
            end--;
        if (end == pathlen || end == 0)
            return -1;
        end--;
    }
    if (!(end > 4 + slen && memcmp(path, "/v2/", 4) == 0 &&
          memcmp(path + end - slen, suffix, slen) == 0))
        return -1;
    const char *query = path + pathlen;
    size_t qlen = plen - pathlen;
    for (size_t i = 0; i < qlen; i++)
        if (query[i] <= 0x20 || query[i] >= 0x7f || query[i] == '"' || query[i] == '<')
            return -1;
    /* Each parameter kept costs what it had: its text and the '?' or '&' before it. */
    if (cap < qlen + 1)
        return -1;
    /* ns= is the client's word to the proxy, and its router takes it over the path:
     * upstream's would send the client's next page, and the proxy's credentials, to another
     * registry. */
    size_t o = 0;
    for (size_t i = 1; i < qlen;) {
        const char *amp = memchr(query + i, '&', qlen - i);
        size_t n = amp ? (size_t)(amp - (query + i)) : qlen - i;
        bool ns = n >= 2 && memcmp(query + i, "ns", 2) == 0 && (n == 2 || query[i + 2] == '=');
        if (n && !ns) {
            out[o] = o ? '&' : '?';
            o++;
            memcpy(out + o, query + i, n);
            o += n;
        }
        i += n + 1;
    }
    out[o] = '\0';
    return 0;
}
