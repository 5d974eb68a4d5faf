/* SPDX-License-Identifier: Apache-2.0 */
/* auth/token.c: token server answers (Docker token spec: token / access_token,
 * expires_in, issued_at as RFC 3339). The body comes from the network: it is capped, and
 * the token is checked to be safe to put in an Authorization header. */
#include "auth.h"

#include <jansson.h>
#include <string.h>

#include "../util/util.h"

/* Real answers are a few KiB (JWTs with a handful of claims). */
#define MAX_BODY_LEN ((size_t)64 * 1024)
/* The spec's default lifetime, used when expires_in is absent or nonsense. */
#define DEFAULT_EXPIRES_S 60
/* A server claiming a longer lifetime is not trusted beyond a day: a stale token only costs
 * one 401 and a refetch, a token cached forever for a revoked account costs more. */
#define MAX_EXPIRES_S ((int64_t)24 * 3600)

static int64_t parse_expires_in(const json_t *v)
{
    int64_t s = 0;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        s = i > MAX_EXPIRES_S ? MAX_EXPIRES_S : (int64_t)i;
    } else if (json_is_real(v)) {
        /* Not what the spec says, but harmless to accept; NaN and negatives fail >= 1. */
        double d = json_real_value(v);
        s = d >= MAX_EXPIRES_S ? MAX_EXPIRES_S : (d >= 1 ? (int64_t)d : 0);
    }
    return s < 1 ? DEFAULT_EXPIRES_S : s;
}

/* Reads exactly n digits at s[*i]. */
static bool read_digits(const char *s, size_t len, size_t *i, int n, int *out)
{
    int v = 0;
    for (int k = 0; k < n; k++) {
        if (*i >= len || s[*i] < '0' || s[*i] > '9')
            return false;
        v = v * 10 + (s[(*i)++] - '0');
    }
    *out = v;
    return true;
}

static bool read_char(const char *s, size_t len, size_t *i, const char *set)
{
    if (*i >= len || s[*i] == '\0' || !strchr(set, s[*i]))
        return false;
    (*i)++;
    return true;
}

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's
 * days_from_civil); our own so we need neither timegm nor the TZ environment. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* RFC 3339 date-time: YYYY-MM-DD('T'|'t'|' ')hh:mm:ss[.frac]('Z'|'z'|('+'|'-')hh:mm).
 * Returns seconds since the epoch (fraction dropped), or 0 when invalid or not after the
 * epoch (Go servers send "0001-01-01T00:00:00Z" for "unset"). */
static int64_t parse_rfc3339(const char *s, size_t len)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t i = 0;
    int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0;

    if (!read_digits(s, len, &i, 4, &y) || !read_char(s, len, &i, "-") ||
        !read_digits(s, len, &i, 2, &mo) || !read_char(s, len, &i, "-") ||
        !read_digits(s, len, &i, 2, &d) || !read_char(s, len, &i, "Tt ") ||
        !read_digits(s, len, &i, 2, &h) || !read_char(s, len, &i, ":") ||
        !read_digits(s, len, &i, 2, &mi) || !read_char(s, len, &i, ":") ||
        !read_digits(s, len, &i, 2, &sec))
        return 0;
    if (i < len && s[i] == '.') {
        size_t start = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return 0;
    }
    if (read_char(s, len, &i, "Zz")) {
        sign = 0;
    } else if (i < len && (s[i] == '+' || s[i] == '-')) {
        sign = s[i++] == '-' ? -1 : 1;
        if (!read_digits(s, len, &i, 2, &oh) || !read_char(s, len, &i, ":") ||
            !read_digits(s, len, &i, 2, &om))
            return 0;
    } else {
        return 0;
    }
    if (i != len)
        return 0;
    if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 60 || oh > 23 || om > 59)
        return 0;
    if (d > mdays[mo - 1] + (mo == 2 && is_leap(y)))
        return 0;
    /* sec == 60 is a leap second: it folds into the next minute, as POSIX time does. */
    int64_t t = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + sec;
    t -= (int64_t)sign * ((int64_t)oh * 3600 + (int64_t)om * 60);
    return t > 0 ? t : 0;
}

/* The token goes verbatim into "Authorization: Bearer TOKEN": visible ASCII only, so a
 * hostile realm cannot inject header lines or split the value. */
static bool token_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)s[k] <= 0x20 || (unsigned char)s[k] >= 0x7f)
            return false;
    return true;
}

int rp_auth_parse_token(const char *body, size_t len, struct rp_auth_token *out)
{
    int rc = RP_AUTH_E_SYNTAX;
    json_t *root = NULL;
    json_error_t jerr;

    memset(out, 0, sizeof(*out));
    if (!body || len > MAX_BODY_LEN)
        goto out;
    /* Duplicate keys would make "which token" depend on the parser; refuse them. */
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root))
        goto out;

    /* `token` is the spec's field, `access_token` its OAuth2 alias; a wrong type or an
     * empty string counts as absent so the other one can still serve. */
    const json_t *t = json_object_get(root, "token");
    if (!json_is_string(t) || json_string_length(t) == 0)
        t = json_object_get(root, "access_token");
    if (!json_is_string(t) || !token_ok(json_string_value(t), json_string_length(t))) {
        rc = RP_AUTH_E_NO_TOKEN;
        goto out;
    }
    out->token = rp_xstrndup(json_string_value(t), json_string_length(t));
    out->expires_in = parse_expires_in(json_object_get(root, "expires_in"));
    const json_t *ia = json_object_get(root, "issued_at");
    if (json_is_string(ia))
        out->issued_at = parse_rfc3339(json_string_value(ia), json_string_length(ia));
    rc = RP_AUTH_OK;
out:
    if (root)
        rp_conf_json_scrub(root); /* the token, and whatever the server nested beside it */
    json_decref(root);
    return rc;
}
