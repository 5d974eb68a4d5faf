/* SPDX-License-Identifier: Apache-2.0 */
/* auth: the upstream side of registry authentication. Parses WWW-Authenticate challenges
 * and token answers, decides what to send where (which realm may receive which
 * credentials), and remembers tokens per (registry, scope) until they expire.
 * No I/O: proxy/ performs the requests this module asks for. */
#ifndef RP_AUTH_H
#define RP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../conf/conf.h"

enum rp_auth_err {
    RP_AUTH_OK = 0,
    RP_AUTH_E_SYNTAX = -1,            /* malformed header or answer */
    RP_AUTH_E_NO_CHALLENGE = -2,      /* 401 without a usable Bearer or Basic challenge */
    RP_AUTH_E_REALM_NOT_ALLOWED = -3, /* realm not in the registry's allowed realms */
    RP_AUTH_E_NO_CREDENTIALS = -4,    /* Basic challenge, but no credentials configured */
    RP_AUTH_E_REJECTED = -5,          /* realm answered 401/403: credentials rejected */
    RP_AUTH_E_REALM_ERROR = -6,       /* realm answered another non-2xx status */
    RP_AUTH_E_NO_TOKEN = -7,          /* 2xx answer without token/access_token */
};
/* Short fixed description of an error code, for logs, metrics and error bodies. */
const char *rp_auth_strerror(int err);

/* --- WWW-Authenticate (RFC 7235 section 4.1; Docker token spec) --- */
#define RP_AUTH_MAX_PARAMS 16
#define RP_AUTH_MAX_CHALLENGES 8
struct rp_auth_param {
    char *name;  /* lower case */
    char *value; /* unquoted, backslash escapes resolved */
};
struct rp_auth_challenge {
    char *scheme; /* lower case: "bearer", "basic", ... */
    struct rp_auth_param params[RP_AUTH_MAX_PARAMS];
    size_t n_params;
};
/* Parses one header value, which may hold several challenges separated by commas
 * (`Bearer realm="a,b",service="s", Basic realm="x"`). Fills at most `max` challenges
 * (extra ones and extra params are ignored) and returns how many, or RP_AUTH_E_SYNTAX.
 * Input of any bytes and any length is safe. Free with rp_auth_challenges_free. */
int rp_auth_parse_challenges(const char *header, size_t len, struct rp_auth_challenge *out,
                             size_t max);
void rp_auth_challenges_free(struct rp_auth_challenge *c, size_t n);
/* Value of param `name` (lower case) or NULL. */
const char *rp_auth_challenge_param(const struct rp_auth_challenge *c, const char *name);

/* --- Token answers (Docker token spec: token / access_token, expires_in, issued_at) --- */
struct rp_auth_token {
    char *token;        /* secret; `token` preferred, else `access_token` */
    int64_t expires_in; /* seconds; 60 when absent or < 1 (the spec's default) */
    int64_t issued_at;  /* seconds since the epoch parsed from RFC 3339, or 0 when absent */
};
/* Parses a JSON token answer (at most 64 KiB). Returns RP_AUTH_OK and fills *out (free
 * out->token with rp_free_secret), RP_AUTH_E_SYNTAX, or RP_AUTH_E_NO_TOKEN. */
int rp_auth_parse_token(const char *body, size_t len, struct rp_auth_token *out);

/* --- Per-registry state: learned challenge and token cache --- */
struct rp_auth;
/* State for one registry. Keeps a pointer to reg (which must outlive it). */
struct rp_auth *rp_auth_new(const struct rp_conf_registry *reg);
void rp_auth_free(struct rp_auth *a); /* accepts NULL; zeroes tokens */

/* The scope string for pulling `name`: "repository:NAME:pull". New string. */
char *rp_auth_scope_pull(const char *name);

enum rp_auth_step {
    RP_AUTH_SEND,       /* send the request now with *authorization (NULL: none) */
    RP_AUTH_NEED_TOKEN, /* a token must be fetched first: call rp_auth_token_request */
};
/* What to attach to a request to the registry itself for `scope` at monotonic time now_ms.
 * Before any challenge was seen, requests go anonymous (the registry's 401 teaches us); so
 * does the next one without a cached token after the learned realm failed (not allowed,
 * unreachable, an error other than 401/403, or no token in its answer), as the registry
 * may name another realm by now.
 * For a learned Basic challenge: "Basic base64(user:password)". For Bearer: "Bearer TOKEN"
 * from the cache while it has not expired (with a safety margin), else NEED_TOKEN.
 * *authorization is a new string (a secret; free with rp_free_secret) or NULL. */
enum rp_auth_step rp_auth_prepare(struct rp_auth *a, const char *scope, int64_t now_ms,
                                  char **authorization);

/* A request sent with `sent_authorization` (may be NULL) got 401 with the given
 * WWW-Authenticate header (may be NULL). Learns the challenge (scheme, realm, service):
 * Bearer when offered, except that Basic offered beside it wins when the Bearer realm may
 * not be dialed and user and password are configured. Drops the cached token for scope if
 * it is the one that was rejected, also when the header offers nothing usable.
 * Returns RP_AUTH_OK when a retry can succeed (the caller retries once at most),
 * else an error: E_NO_CHALLENGE, E_NO_CREDENTIALS (Basic without credentials), or
 * E_REJECTED (Basic credentials that were just sent were refused). */
int rp_auth_on_unauthorized(struct rp_auth *a, const char *scope, const char *www_authenticate,
                            const char *sent_authorization);

/* The token request to make for scope (after NEED_TOKEN). With an identity token (an
 * OAuth2 refresh token from a docker config.json) it is an OAuth2 POST of *post_body
 * (form-encoded grant_type=refresh_token, service, scope, client_id, refresh_token; a
 * secret: free with rp_free_secret) to the realm, with no Authorization. Otherwise
 * *post_body is NULL and it is a GET of *url with
 * *authorization (NULL: anonymous; credentials are sent only when the realm is allowed and
 * credentials are configured). Returns RP_AUTH_OK, or E_REALM_NOT_ALLOWED when the realm
 * may not be dialed, or E_NO_CHALLENGE if no Bearer challenge is known.
 * *url and *authorization are new strings (free *authorization with rp_free_secret). */
int rp_auth_token_request(struct rp_auth *a, const char *scope, char **url, char **authorization,
                          char **post_body);

/* The realm answered a token request for scope with HTTP `status` and `body` (status 0:
 * no answer, the transfer failed). On success the token is cached until asked_ms +
 * expires_in minus a margin: asked_ms is when the request was sent, since the realm's clock
 * for the token started no earlier. Returns RP_AUTH_OK, E_REJECTED (401/403), E_REALM_ERROR
 * (other non-2xx, or 0), E_SYNTAX or E_NO_TOKEN. */
int rp_auth_token_response(struct rp_auth *a, const char *scope, int status, const char *body,
                           size_t len, int64_t asked_ms);

/* The Bearer realm learned from the registry's challenge, or NULL (for messages). */
const char *rp_auth_realm(const struct rp_auth *a);

/* Forgets every token and the learned challenge (credentials changed), and starts a new
 * generation. */
void rp_auth_reset(struct rp_auth *a);
/* Changes with every rp_auth_reset. A token request made in an earlier generation was made
 * with credentials that may no longer be configured: its answer must not be cached or
 * used (rp_auth_token_response of it is the caller's mistake). */
uint64_t rp_auth_generation(const struct rp_auth *a);
/* Changes whenever the learned challenge does (another scheme, realm or service), and with
 * every rp_auth_reset. A token request made under an earlier challenge went to a realm the
 * registry may no longer trust: its answer must not be cached or sent either. */
uint64_t rp_auth_challenge_epoch(const struct rp_auth *a);

#endif
