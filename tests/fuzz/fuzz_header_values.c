/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_header_values: libFuzzer target for the header values read outside the request head:
 * an upstream's Link (the next page of a tags list or referrers) and Transfer-Encoding, and
 * a client's If-None-Match. The input is one value, or a value and a tag split at the first
 * newline. What the Link reader keeps must be safe to hand a client: visible ASCII, no
 * quote or angle bracket, never an ns= parameter, and no longer than what it came from. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_query(const char *link, bool referrers)
{
    size_t cap = strlen(link) + 1;
    char *out = malloc(cap);
    if (!out)
        return;
    if (rp_http_link_next_query(link, referrers, out, cap) == 0) {
        size_t n = strlen(out);
        if (n >= cap || (n > 0 && out[0] != '?'))
            abort();
        for (size_t i = 0; i < n; i++)
            if (out[i] <= 0x20 || out[i] >= 0x7f || out[i] == '"' || out[i] == '<' || out[i] == '>')
                abort();
        /* Each parameter: non-empty, and never ns (bare or with a value). */
        for (const char *p = out + (n ? 1 : 0); n && *p;) {
            size_t k = strcspn(p, "&");
            if (k == 0 || (k >= 2 && memcmp(p, "ns", 2) == 0 && (k == 2 || p[2] == '=')))
                abort();
            p += k + (p[k] == '&');
        }
        /* A buffer one byte short of the result is refused, not overrun. */
        char *tight = malloc(n + 1);
        if (tight && n > 0 && rp_http_link_next_query(link, referrers, tight, n) != -1)
            abort();
        free(tight);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    /* Transfer-Encoding: counted bytes, not a string; chunked only if it ends so. */
    if (rp_http_te_chunked((const char *)data, size)) {
        size_t n = size;
        while (n > 0 && (data[n - 1] == ' ' || data[n - 1] == '\t'))
            n--;
        if (n < 7 || strncasecmp((const char *)data + n - 7, "chunked", 7) != 0)
            abort();
    }

    check_query(s, false);
    check_query(s, true);

    /* If-None-Match: the value up to the first newline, the tag after it. */
    char *nl = strchr(s, '\n');
    const char *tag = "sha256:0123";
    if (nl) {
        *nl = '\0';
        tag = nl + 1;
    }
    bool named = rp_http_etag_list_names(s, tag);
    /* A list that has the tag quoted as an element of its own names it. */
    if (!named && !strchr(s, '"') && !strchr(tag, '"') && !strpbrk(tag, ", \t") && *tag) {
        size_t n = strlen(s) + strlen(tag) + 8;
        char *more = malloc(n);
        if (more) {
            strcpy(more, s);
            strcat(more, ", \"");
            strcat(more, tag);
            strcat(more, "\"");
            if (!rp_http_etag_list_names(more, tag))
                abort();
            free(more);
        }
    }
    free(s);
    return 0;
}
