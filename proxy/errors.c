/* SPDX-License-Identifier: Apache-2.0 */
/* errors: the registry error format (distribution spec, "Error Codes"), used for every
 * error the proxy answers itself, and the small header and digest helpers that the
 * request, fetch and fill code share. */
#include "proxy.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

char *rp_error_body(const char *code, const char *message, const char *detail)
{
    json_t *err = json_pack("{s:s, s:s}", "code", code, "message", message);
    if (detail) {
        /* A detail given as JSON is embedded as such; anything else becomes a string. */
        json_t *d = json_loads(detail, JSON_DECODE_ANY, NULL);
        json_object_set_new(err, "detail", d ? d : json_string(detail));
    }
    json_t *root = json_pack("{s:[o]}", "errors", err);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) {
        rp_error("errors: cannot encode an error body");
        abort();
    }
    return s;
}

const char *rp_error_code_for_status(int status, enum rp_route_kind kind)
{
    switch (status) {
    case 400:
        return "UNSUPPORTED";
    case 401:
        return "UNAUTHORIZED";
    case 403:
        return "DENIED";
    case 404:
        /* A registry without the referrers API answers it 404, often not in the registry's
         * format (docker-registry 2.8: "404 page not found"); clients fall back to the
         * tag schema unless the code is NAME_UNKNOWN (oras-go reads that as "no such
         * repository" and fails). A registry-format 404 is relayed as it came. */
        return kind == RP_ROUTE_BLOB        ? "BLOB_UNKNOWN"
               : kind == RP_ROUTE_MANIFEST  ? "MANIFEST_UNKNOWN"
               : kind == RP_ROUTE_REFERRERS ? "UNSUPPORTED"
                                            : "NAME_UNKNOWN";
    case 405:
        return "UNSUPPORTED";
    case 429:
        return "TOOMANYREQUESTS";
    case 503:
        return "UNAVAILABLE";
    default:
        return "UNKNOWN";
    }
}

/* Header values are forwarded to clients only when they are plain visible ASCII, so an
 * upstream cannot split our response or inject headers. */
bool rp_header_value_safe(const char *v)
{
    if (!v)
        return false;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p >= 0x7f)
            return false;
    return true;
}

void rp_headers_free(struct rp_xfer_headers *h)
{
#define FREE(field, name) free(h->field);
    RP_XFER_HEADER_FIELDS(FREE)
#undef FREE
    memset(h, 0, sizeof(*h));
    h->length = -1;
}

static char *dup_or_null(const char *s)
{
    return s ? rp_xstrdup(s) : NULL;
}

void rp_headers_copy(struct rp_xfer_headers *dst, const struct rp_xfer_headers *src)
{
    rp_headers_free(dst);
#define COPY(field, name) dst->field = dup_or_null(src->field);
    RP_XFER_HEADER_FIELDS(COPY)
#undef COPY
    dst->length = src->length;
    dst->chunked = src->chunked;
}

const EVP_MD *rp_digest_md(const char *digest)
{
    return strncmp(digest, "sha512:", 7) == 0 ? EVP_sha512() : EVP_sha256();
}

bool rp_digest_matches(const char *digest, const unsigned char *md, unsigned int mdlen)
{
    const char *hex = strchr(digest, ':');
    if (!hex || strlen(hex + 1) != (size_t)mdlen * 2)
        return false;
    hex++;
    static const char digits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < mdlen; i++)
        if (hex[2 * i] != digits[md[i] >> 4] || hex[2 * i + 1] != digits[md[i] & 15])
            return false;
    return true;
}
