/* SPDX-License-Identifier: Apache-2.0 */
/* auth/challenge.c: WWW-Authenticate parsing (RFC 7235 section 4.1, several challenges per
 * header value, token68 tolerated). The header comes from upstream servers: the input is
 * counted (not NUL-terminated), capped, and every loop is bounded by its length. */
#include "auth.h"

#include <stdlib.h>
#include <string.h>

#include "../util/util.h"

/* Real challenges are a few hundred bytes; anything this large is not one we can use. */
#define MAX_HEADER_LEN ((size_t)8 * 1024)

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static bool is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 7230 tchar. */
static bool is_tchar(unsigned char c)
{
    return is_alnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token68_char(unsigned char c)
{
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

/* qdtext and the octets a quoted-pair may escape: HTAB, SP, VCHAR, obs-text. */
static bool is_qchar(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* An unquoted value is an RFC token in the grammar, but some servers send URLs unquoted
 * (`realm=https://host/token`); accept any visible ASCII that cannot end the value. */
static bool is_bare_value_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != ',' && c != '"';
}

struct cursor {
    const unsigned char *s;
    size_t len;
    size_t i;
};

static void skip_ws(struct cursor *p)
{
    while (p->i < p->len && is_ws(p->s[p->i]))
        p->i++;
}

static size_t token_len(const struct cursor *p)
{
    size_t k = p->i;
    while (k < p->len && is_tchar(p->s[k]))
        k++;
    return k - p->i;
}

static char *dup_lower(const unsigned char *s, size_t n)
{
    char *r = rp_xmalloc(n + 1);
    for (size_t k = 0; k < n; k++)
        r[k] = (char)((s[k] >= 'A' && s[k] <= 'Z') ? s[k] + ('a' - 'A') : s[k]);
    r[n] = '\0';
    return r;
}

/* A token68 (`Basic dXNlcjpwYXNz==`) as the whole of a challenge's parameters: token68
 * characters, optional '=' padding, then the end of the challenge. Tolerated and skipped:
 * no scheme we use carries one in a challenge. */
static bool skip_token68(struct cursor *p)
{
    size_t k = p->i;
    while (k < p->len && is_token68_char(p->s[k]))
        k++;
    if (k == p->i)
        return false;
    while (k < p->len && p->s[k] == '=')
        k++;
    while (k < p->len && is_ws(p->s[k]))
        k++;
    if (k < p->len && p->s[k] != ',')
        return false;
    p->i = k;
    return true;
}

/* Reads the quoted-string at p->i (the opening quote). *ok is false when it is
 * unterminated or holds a control character. Returns the unescaped value when keep is
 * true, else NULL (validation only, nothing allocated). */
static char *read_quoted(struct cursor *p, bool keep, bool *ok)
{
    size_t k = p->i + 1, n = 0;
    *ok = false;
    /* First pass: find the end and the unescaped length without allocating. */
    for (;;) {
        if (k >= p->len)
            return NULL;
        unsigned char c = p->s[k];
        if (c == '"')
            break;
        if (c == '\\') {
            if (k + 1 >= p->len || !is_qchar(p->s[k + 1]))
                return NULL;
            k += 2;
        } else if (is_qchar(c)) {
            k++;
        } else {
            return NULL;
        }
        n++;
    }
    *ok = true;
    char *v = NULL;
    if (keep) {
        v = rp_xmalloc(n + 1);
        size_t o = 0;
        for (size_t j = p->i + 1; j < k; j++) {
            if (p->s[j] == '\\')
                j++;
            v[o++] = (char)p->s[j];
        }
        v[o] = '\0';
    }
    p->i = k + 1;
    return v;
}

static bool has_param(const struct rp_auth_challenge *c, const unsigned char *name, size_t n)
{
    for (size_t k = 0; k < c->n_params; k++)
        if (rp_strieq_n((const char *)name, n, c->params[k].name))
            return true;
    return false;
}

/* Parses `name BWS = BWS value` at p->i (name is known to be a token of length nlen) and
 * the list separator or end after it. Stores it in cur when cur is non-NULL, has room and
 * does not hold the name yet: RFC 7235 allows each name once, and keeping the first makes
 * the choice deterministic. */
static int parse_param(struct cursor *p, size_t nlen, struct rp_auth_challenge *cur)
{
    const unsigned char *name = p->s + p->i;
    p->i += nlen;
    skip_ws(p);
    if (p->i >= p->len || p->s[p->i] != '=')
        return -1;
    p->i++;
    skip_ws(p);
    bool keep = cur && cur->n_params < RP_AUTH_MAX_PARAMS && !has_param(cur, name, nlen);
    char *value = NULL;
    if (p->i < p->len && p->s[p->i] == '"') {
        bool ok;
        value = read_quoted(p, keep, &ok);
        if (!ok)
            return -1;
    } else {
        size_t k = p->i;
        while (k < p->len && is_bare_value_char(p->s[k]))
            k++;
        if (k == p->i)
            return -1;
        if (keep)
            value = rp_xstrndup((const char *)p->s + p->i, k - p->i);
        p->i = k;
    }
    skip_ws(p);
    if (p->i < p->len && p->s[p->i] != ',') {
        free(value);
        return -1;
    }
    if (keep) {
        cur->params[cur->n_params].name = dup_lower(name, nlen);
        cur->params[cur->n_params].value = value;
        cur->n_params++;
    }
    return 0;
}

int rp_auth_parse_challenges(const char *header, size_t len, struct rp_auth_challenge *out,
                             size_t max)
{
    int rc = RP_AUTH_E_SYNTAX;
    size_t n = 0;
    struct rp_auth_challenge *cur = NULL;
    bool in_challenge = false;

    if (len > MAX_HEADER_LEN || (!header && len > 0))
        return RP_AUTH_E_SYNTAX;
    if (!out)
        max = 0;
    struct cursor p = {(const unsigned char *)header, len, 0};

    for (;;) {
        /* Lists allow empty elements: skip any run of OWS and commas. */
        while (p.i < p.len && (is_ws(p.s[p.i]) || p.s[p.i] == ','))
            p.i++;
        if (p.i >= p.len)
            break;
        size_t tl = token_len(&p);
        if (tl == 0)
            goto out;
        if (in_challenge) {
            /* After a comma inside a challenge: `name =` continues it, anything else is
             * the next challenge's scheme. */
            struct cursor look = p;
            look.i += tl;
            skip_ws(&look);
            if (look.i < look.len && look.s[look.i] == '=') {
                if (parse_param(&p, tl, cur) < 0)
                    goto out;
                continue;
            }
        }
        size_t after = p.i + tl;
        if (after < p.len && !is_ws(p.s[after]) && p.s[after] != ',')
            goto out;
        cur = NULL;
        if (n < max) {
            cur = &out[n++];
            memset(cur, 0, sizeof(*cur));
            cur->scheme = dup_lower(p.s + p.i, tl);
        }
        in_challenge = true;
        p.i = after;
        skip_ws(&p);
        if (p.i >= p.len || p.s[p.i] == ',')
            continue;
        /* The scheme was followed by whitespace and something: a token68 or the first
         * auth-param, which must then be `name = value`. */
        if (skip_token68(&p))
            continue;
        tl = token_len(&p);
        if (tl == 0 || parse_param(&p, tl, cur) < 0)
            goto out;
    }
    rc = (int)n;
out:
    if (rc < 0)
        rp_auth_challenges_free(out, n);
    return rc;
}

void rp_auth_challenges_free(struct rp_auth_challenge *c, size_t n)
{
    if (!c)
        return;
    for (size_t k = 0; k < n; k++) {
        free(c[k].scheme);
        c[k].scheme = NULL;
        for (size_t j = 0; j < c[k].n_params && j < RP_AUTH_MAX_PARAMS; j++) {
            free(c[k].params[j].name);
            free(c[k].params[j].value);
            c[k].params[j].name = c[k].params[j].value = NULL;
        }
        c[k].n_params = 0;
    }
}

const char *rp_auth_challenge_param(const struct rp_auth_challenge *c, const char *name)
{
    if (!c || !name)
        return NULL;
    for (size_t k = 0; k < c->n_params && k < RP_AUTH_MAX_PARAMS; k++)
        if (rp_strieq_n(name, strlen(name), c->params[k].name))
            return c->params[k].value;
    return NULL;
}
