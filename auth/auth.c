/* SPDX-License-Identifier: Apache-2.0 */
/* auth/auth.c: per-registry authentication state: the challenge learned from 401s, the
 * token requests to make, and the token cache per scope. No I/O and no logging: every
 * string here may be a secret or derived from one. */
#include "auth.h"

#include <stdlib.h>
#include <string.h>

#include "../util/util.h"

/* Scopes are per repository; a proxy serving thousands of repositories keeps the most
 * useful tokens and refetches the rest (one request each), with memory bounded. */
#define MAX_TOKENS 1024
/* Tokens are dropped this long before the server's expiry, so a request started just
 * before expiry does not reach the registry just after it (the server's clock started
 * when it issued the token, before our request for it even returned). Short-lived tokens
 * lose a quarter of their life instead: a 60 s token is reused for 45 s. */
#define MAX_MARGIN_MS 30000

enum kind { KIND_NONE, KIND_BASIC, KIND_BEARER };

struct token_entry {
    char *scope;
    char *token; /* secret */
    int64_t expiry_ms;
};

struct rp_auth {
    const struct rp_conf_registry *reg;
    enum kind kind;
    char *realm;   /* Bearer only */
    char *service; /* Bearer only; NULL when the challenge had none */
    struct token_entry *tokens;
    size_t n_tokens, alloc_tokens;
    uint64_t generation; /* bumped by rp_auth_reset */
    uint64_t epoch;      /* bumped by rp_auth_reset and by learning another challenge */
    /* The learned realm failed (not allowed, or no token from it): only a request to the
     * registry can tell whether it still names that realm, and with no token to send none
     * would ever be made again, so the next one goes anonymous and its 401 teaches anew. */
    bool relearn;
};

static const char *const errstr[] = {
    [0] = "ok",
    [-RP_AUTH_E_SYNTAX] = "malformed authentication header or token answer",
    [-RP_AUTH_E_NO_CHALLENGE] = "401 without a usable Bearer or Basic challenge",
    [-RP_AUTH_E_REALM_NOT_ALLOWED] = "token realm not allowed for this registry",
    [-RP_AUTH_E_NO_CREDENTIALS] = "registry asks for Basic credentials, none configured",
    [-RP_AUTH_E_REJECTED] = "credentials rejected",
    [-RP_AUTH_E_REALM_ERROR] = "token realm answered with an error",
    [-RP_AUTH_E_NO_TOKEN] = "token answer without a usable token",
};

const char *rp_auth_strerror(int err)
{
    if (err > 0 || (size_t) - (int64_t)err >= sizeof(errstr) / sizeof(errstr[0]))
        return "unknown authentication error";
    return errstr[-err];
}

char *rp_auth_scope_pull(const char *name)
{
    return rp_xasprintf("repository:%s:pull", name ? name : "");
}

/* Joins strings into one exactly sized allocation: unlike asprintf, no intermediate buffer
 * holding part of a secret is left behind in freed memory. */
static char *join(const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *r = rp_xmalloc(la + lb + lc + 1);
    memcpy(r, a, la);
    memcpy(r + la, b, lb);
    memcpy(r + la + lb, c, lc);
    r[la + lb + lc] = '\0';
    return r;
}

static bool has_credentials(const struct rp_conf_registry *reg)
{
    return reg->user && reg->password;
}

/* "Basic base64(user:password)", or NULL without credentials. */
static char *basic_authorization(const struct rp_conf_registry *reg)
{
    if (!has_credentials(reg))
        return NULL;
    char *pair = join(reg->user, ":", reg->password);
    char *b64 = rp_base64_encode(pair, strlen(pair));
    char *r = join("Basic ", b64, "");
    rp_free_secret(pair);
    rp_free_secret(b64);
    return r;
}

static bool starts_with_ci(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    return strlen(s) >= n && rp_strieq_n(s, n, prefix);
}

static const char *scope_key(const char *scope)
{
    return scope ? scope : "";
}

static struct token_entry *find_token(struct rp_auth *a, const char *scope)
{
    for (size_t k = 0; k < a->n_tokens; k++)
        if (strcmp(a->tokens[k].scope, scope) == 0)
            return &a->tokens[k];
    return NULL;
}

/* Order is not kept: the last entry moves into the hole. */
static void drop_token(struct rp_auth *a, struct token_entry *e)
{
    rp_free_secret(e->token);
    free(e->scope);
    *e = a->tokens[--a->n_tokens];
    memset(&a->tokens[a->n_tokens], 0, sizeof(a->tokens[0]));
}

static void drop_all_tokens(struct rp_auth *a)
{
    while (a->n_tokens > 0)
        drop_token(a, &a->tokens[a->n_tokens - 1]);
}

static void store_token(struct rp_auth *a, const char *scope, char *token, int64_t expiry_ms)
{
    struct token_entry *e = find_token(a, scope);
    if (e) {
        rp_free_secret(e->token);
        e->token = token;
        e->expiry_ms = expiry_ms;
        return;
    }
    if (a->n_tokens == MAX_TOKENS) {
        /* Full: evict the entry that expires first (an expired one if there is any). */
        struct token_entry *victim = &a->tokens[0];
        for (size_t k = 1; k < a->n_tokens; k++)
            if (a->tokens[k].expiry_ms < victim->expiry_ms)
                victim = &a->tokens[k];
        drop_token(a, victim);
    }
    if (a->n_tokens == a->alloc_tokens) {
        size_t n = a->alloc_tokens ? a->alloc_tokens * 2 : 8;
        if (n > MAX_TOKENS)
            n = MAX_TOKENS;
        a->tokens = rp_xrealloc(a->tokens, n * sizeof(a->tokens[0]));
        a->alloc_tokens = n;
    }
    e = &a->tokens[a->n_tokens++];
    e->scope = rp_xstrdup(scope);
    e->token = token;
    e->expiry_ms = expiry_ms;
}

static void forget_challenge(struct rp_auth *a)
{
    free(a->realm);
    free(a->service);
    a->realm = a->service = NULL;
    a->kind = KIND_NONE;
}

struct rp_auth *rp_auth_new(const struct rp_conf_registry *reg)
{
    struct rp_auth *a = rp_xcalloc(1, sizeof(*a));
    a->reg = reg;
    return a;
}

void rp_auth_free(struct rp_auth *a)
{
    if (!a)
        return;
    rp_auth_reset(a);
    free(a->tokens);
    free(a);
}

void rp_auth_reset(struct rp_auth *a)
{
    drop_all_tokens(a);
    forget_challenge(a);
    a->relearn = false;
    a->generation++;
    a->epoch++;
}

uint64_t rp_auth_generation(const struct rp_auth *a)
{
    return a->generation;
}

uint64_t rp_auth_challenge_epoch(const struct rp_auth *a)
{
    return a->epoch;
}

enum rp_auth_step rp_auth_prepare(struct rp_auth *a, const char *scope, int64_t now_ms,
                                  char **authorization)
{
    *authorization = NULL;
    switch (a->kind) {
    case KIND_NONE:
        return RP_AUTH_SEND;
    case KIND_BASIC:
        *authorization = basic_authorization(a->reg);
        return RP_AUTH_SEND;
    case KIND_BEARER:
        break;
    }
    struct token_entry *e = find_token(a, scope_key(scope));
    if (e && now_ms < e->expiry_ms) {
        *authorization = join("Bearer ", e->token, "");
        return RP_AUTH_SEND;
    }
    if (e)
        drop_token(a, e);
    if (a->relearn)
        return RP_AUTH_SEND;
    return RP_AUTH_NEED_TOKEN;
}

/* A realm we would put in a URL: non-empty visible ASCII (a quoted-string may carry
 * spaces and 8-bit bytes, which no URL we dial should). */
static bool realm_usable(const char *realm)
{
    if (!realm || !*realm)
        return false;
    for (const unsigned char *p = (const unsigned char *)realm; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return false;
    return true;
}

static bool same_str(const char *x, const char *y)
{
    return (!x && !y) || (x && y && strcmp(x, y) == 0);
}

/* Switches to the given challenge; tokens from another realm or service mean nothing to
 * the new one, so they go, and so do the answers of token requests under way to the old
 * realm (a new epoch: proxy/tokens.c). */
static void learn(struct rp_auth *a, enum kind kind, const char *realm, const char *service)
{
    if (a->kind == kind && same_str(a->realm, realm) && same_str(a->service, service))
        return;
    a->epoch++;
    drop_all_tokens(a);
    forget_challenge(a);
    a->kind = kind;
    a->realm = realm ? rp_xstrdup(realm) : NULL;
    a->service = service ? rp_xstrdup(service) : NULL;
}

int rp_auth_on_unauthorized(struct rp_auth *a, const char *scope, const char *www_authenticate,
                            const char *sent_authorization)
{
    struct rp_auth_challenge ch[RP_AUTH_MAX_CHALLENGES];
    int n = 0, rc = RP_AUTH_E_NO_CHALLENGE;

    /* The token that was sent is refused, whatever the challenge says: one we cannot use
     * (none, RFC 6750's realm-less `Bearer error="invalid_token"`, a malformed one) used to
     * leave it cached, sent and refused again by every request until it expired. Only if
     * it is the cached one: another request may already have replaced it with a fresh one. */
    struct token_entry *e = find_token(a, scope_key(scope));
    if (e && sent_authorization && starts_with_ci(sent_authorization, "Bearer ") &&
        strcmp(sent_authorization + 7, e->token) == 0)
        drop_token(a, e);
    if (!www_authenticate)
        return RP_AUTH_E_NO_CHALLENGE;
    n = rp_auth_parse_challenges(www_authenticate, strlen(www_authenticate), ch,
                                 RP_AUTH_MAX_CHALLENGES);
    if (n < 0)
        return n;

    const struct rp_auth_challenge *bearer = NULL, *basic = NULL;
    for (int k = 0; k < n; k++) {
        if (!bearer && strcmp(ch[k].scheme, "bearer") == 0 &&
            realm_usable(rp_auth_challenge_param(&ch[k], "realm")))
            bearer = &ch[k];
        else if (!basic && strcmp(ch[k].scheme, "basic") == 0)
            basic = &ch[k];
    }

    /* The realm policy guards the realm; the registry itself may have the credentials, so
     * Basic beside a realm we may not dial works where failing would not. */
    if (bearer && basic && has_credentials(a->reg) &&
        !rp_conf_realm_allowed(a->reg, rp_auth_challenge_param(bearer, "realm")))
        bearer = NULL;
    if (bearer || basic)
        a->relearn = false;
    if (bearer) {
        learn(a, KIND_BEARER, rp_auth_challenge_param(bearer, "realm"),
              rp_auth_challenge_param(bearer, "service"));
        rc = RP_AUTH_OK;
    } else if (basic) {
        learn(a, KIND_BASIC, NULL, NULL);
        if (!has_credentials(a->reg))
            rc = RP_AUTH_E_NO_CREDENTIALS;
        else if (sent_authorization && starts_with_ci(sent_authorization, "Basic "))
            rc = RP_AUTH_E_REJECTED;
        else
            rc = RP_AUTH_OK;
    }
    rp_auth_challenges_free(ch, (size_t)n);
    return rc;
}

/* Appends s percent-encoded (everything but RFC 3986 unreserved characters). */
static size_t put_encoded(char *dst, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '%';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    return o;
}

static size_t put(char *dst, const char *s, size_t n)
{
    memcpy(dst, s, n);
    return n;
}

/* The Docker token spec's OAuth2 form: a refresh token (docker login's identitytoken)
 * is exchanged for an access token. */
static char *oauth2_body(const struct rp_auth *a, const char *scope)
{
    const char *tok = a->reg->identity_token;
    const char *service = a->service ? a->service : "";
    const char *sc = scope ? scope : "";
    /* The fixed text (52 + 7 + 15 bytes), every other byte percent-encoded at worst, NUL. */
    size_t need = 52 + 7 + 15 + 3 * (strlen(service) + strlen(sc) + strlen(tok)) + 1;
    char *b = rp_xmalloc(need);
    size_t o = put(b, "grant_type=refresh_token&client_id=regproxy&service=", 52);
    o += put_encoded(b + o, service);
    o += put(b + o, "&scope=", 7);
    o += put_encoded(b + o, sc);
    o += put(b + o, "&refresh_token=", 15);
    o += put_encoded(b + o, tok);
    b[o] = '\0';
    return b;
}

int rp_auth_token_request(struct rp_auth *a, const char *scope, char **url, char **authorization,
                          char **post_body)
{
    *url = NULL;
    *authorization = NULL;
    *post_body = NULL;
    if (a->kind != KIND_BEARER)
        return RP_AUTH_E_NO_CHALLENGE;
    /* The realm is named by the upstream; it is dialed (with or without credentials) only
     * when the configuration allows it for this registry. */
    if (!rp_conf_realm_allowed(a->reg, a->realm)) {
        a->relearn = true;
        return RP_AUTH_E_REALM_NOT_ALLOWED;
    }

    const char *service = a->service && *a->service ? a->service : NULL;
    const char *sc = scope && *scope ? scope : NULL;
    /* A fragment is not sent to the server; the query goes before it, so cut it off. */
    size_t rlen = strcspn(a->realm, "#");
    size_t need =
        rlen + 1 + (service ? 9 + 3 * strlen(service) : 0) + (sc ? 7 + 3 * strlen(sc) : 0) + 1;
    char *u = rp_xmalloc(need);
    size_t o = put(u, a->realm, rlen);
    if (service || sc) {
        if (!memchr(a->realm, '?', rlen))
            u[o++] = '?';
        else if (u[o - 1] != '?' && u[o - 1] != '&')
            u[o++] = '&';
    }
    if (service) {
        o += put(u + o, "service=", 8);
        o += put_encoded(u + o, service);
    }
    if (sc) {
        if (service)
            u[o++] = '&';
        o += put(u + o, "scope=", 6);
        o += put_encoded(u + o, sc);
    }
    u[o] = '\0';
    if (a->reg->identity_token && *a->reg->identity_token) {
        /* POST to the realm itself; everything travels in the form body. */
        u[rlen] = '\0';
        *url = u;
        *post_body = oauth2_body(a, sc);
        return RP_AUTH_OK;
    }
    *url = u;
    *authorization = basic_authorization(a->reg);
    return RP_AUTH_OK;
}

int rp_auth_token_response(struct rp_auth *a, const char *scope, int status, const char *body,
                           size_t len, int64_t asked_ms)
{
    struct rp_auth_token t;

    /* A refusal is the realm speaking about our credentials: it is still the realm. */
    if (status == 401 || status == 403)
        return RP_AUTH_E_REJECTED;
    if (status < 200 || status > 299) {
        a->relearn = true;
        return RP_AUTH_E_REALM_ERROR;
    }
    int rc = rp_auth_parse_token(body, len, &t);
    if (rc != RP_AUTH_OK) {
        a->relearn = true;
        return rc;
    }
    /* expires_in is in [1, 1 day], so life_ms - margin_ms is at least 750 ms. issued_at is
     * not used: comparing the server's wall clock with ours would make expiry depend on
     * clock skew, while the monotonic clock from when the request was sent errs only on the
     * safe side (the token's life cannot have begun before it). */
    int64_t life_ms = t.expires_in * 1000;
    int64_t margin_ms = life_ms / 4 < MAX_MARGIN_MS ? life_ms / 4 : MAX_MARGIN_MS;
    int64_t keep_ms = life_ms - margin_ms;
    int64_t expiry = asked_ms > INT64_MAX - keep_ms ? INT64_MAX : asked_ms + keep_ms;
    store_token(a, scope_key(scope), t.token, expiry);
    return RP_AUTH_OK;
}

const char *rp_auth_realm(const struct rp_auth *a)
{
    return a->realm;
}
