/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for auth/: WWW-Authenticate parsing, token answers, and the per-registry
 * state machine (challenge learning, token requests, cache expiry, realm policy). */
#include "../unit.h"

#include <stdint.h>

#include "auth/auth.h"
#include "util/util.h"

/* rp_auth_token_request's OAuth2 body: NULL for every registry here but the one with an
 * identity token (test_flow_identity_token frees it). */
static char *post;

#define RH_CHALLENGE                                                                               \
    "Bearer "                                                                                      \
    "realm=\"https://registry.redhat.io/auth/realms/rhcc/protocol/redhat-docker-v2/auth\","        \
    "service=\"docker-registry\",scope=\"repository:rhel8/ubi:pull\""
#define RH_REALM "https://registry.redhat.io/auth/realms/rhcc/protocol/redhat-docker-v2/auth"
#define HUB_CHALLENGE                                                                              \
    "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","                \
    "scope=\"repository:library/ubuntu:pull\""
/* base64("12345678|cluster-pull:s3cret-token") */
#define RH_BASIC "Basic MTIzNDU2Nzh8Y2x1c3Rlci1wdWxsOnMzY3JldC10b2tlbg=="

static struct rp_conf_registry rh_reg = {
    .name = "registry.redhat.io",
    .url = "https://registry.redhat.io",
    .scheme = "https",
    .host = "registry.redhat.io",
    .port = 443,
    .hostport = "registry.redhat.io",
    .user = "12345678|cluster-pull",
    .password = "s3cret-token",
    .tls_verify = true,
    .test_login = true,
    .tag_ttl_ms = -1,
};

static struct rp_conf_registry hub_reg = {
    .name = "docker.io",
    .url = "https://registry-1.docker.io",
    .scheme = "https",
    .host = "registry-1.docker.io",
    .port = 443,
    .hostport = "registry-1.docker.io",
    .dockerhub = true,
    .tls_verify = true,
    .test_login = true,
    .tag_ttl_ms = -1,
};

/* Parses s from an exactly sized heap copy without a NUL, so ASan catches any read past
 * the length. */
static int parse_n(const char *s, size_t len, struct rp_auth_challenge *c, size_t max)
{
    char *copy = rp_xmalloc(len ? len : 1);
    memcpy(copy, s, len);
    int n = rp_auth_parse_challenges(copy, len, c, max);
    free(copy);
    return n;
}

static int parse(const char *s, struct rp_auth_challenge *c)
{
    return parse_n(s, strlen(s), c, RP_AUTH_MAX_CHALLENGES);
}

static int parse_token(const char *s, struct rp_auth_token *t)
{
    size_t len = strlen(s);
    char *copy = rp_xmalloc(len ? len : 1);
    memcpy(copy, s, len);
    int rc = rp_auth_parse_token(copy, len, t);
    free(copy);
    return rc;
}

static void test_challenge_redhat(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    int n = parse(RH_CHALLENGE, c);
    CHECK_INT(n, 1);
    if (n != 1)
        return;
    CHECK_STR(c[0].scheme, "bearer");
    CHECK_INT(c[0].n_params, 3);
    CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), RH_REALM);
    CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "docker-registry");
    CHECK_STR(rp_auth_challenge_param(&c[0], "scope"), "repository:rhel8/ubi:pull");
    CHECK(rp_auth_challenge_param(&c[0], "error") == NULL);
    rp_auth_challenges_free(c, (size_t)n);
}

static void test_challenge_dockerhub_quay(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    int n = parse(HUB_CHALLENGE, c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "https://auth.docker.io/token");
        CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "registry.docker.io");
        CHECK_STR(rp_auth_challenge_param(&c[0], "scope"), "repository:library/ubuntu:pull");
        rp_auth_challenges_free(c, 1);
    }
    n = parse("Bearer realm=\"https://quay.io/v2/auth\",service=\"quay.io\","
              "scope=\"repository:coreos/etcd:pull\",error=\"invalid_token\"",
              c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(c[0].n_params, 4);
        CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "quay.io");
        CHECK_STR(rp_auth_challenge_param(&c[0], "error"), "invalid_token");
        rp_auth_challenges_free(c, 1);
    }
}

static void test_challenge_basic_and_case(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    int n = parse("Basic realm=\"Registry Realm\"", c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(c[0].scheme, "basic");
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "Registry Realm");
        rp_auth_challenges_free(c, 1);
    }
    n = parse("BeArEr ReAlM=\"HTTPS://X/Y\",SERVICE=Svc", c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(c[0].scheme, "bearer");
        CHECK_STR(c[0].params[0].name, "realm");
        CHECK_STR(c[0].params[1].name, "service");
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "HTTPS://X/Y");
        CHECK_STR(rp_auth_challenge_param(&c[0], "REALM"), "HTTPS://X/Y");
        CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "Svc");
        rp_auth_challenges_free(c, 1);
    }
    n = parse("Basic", c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(c[0].scheme, "basic");
        CHECK_INT(c[0].n_params, 0);
        rp_auth_challenges_free(c, 1);
    }
}

static void test_challenge_multiple(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    int n = parse("Bearer realm=\"a,b\",service=\"s\", Basic realm=\"x\"", c);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(c[0].scheme, "bearer");
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "a,b");
        CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "s");
        CHECK_STR(c[1].scheme, "basic");
        CHECK_STR(rp_auth_challenge_param(&c[1], "realm"), "x");
        CHECK(rp_auth_challenge_param(&c[1], "service") == NULL);
        rp_auth_challenges_free(c, 2);
    }
    /* RFC 7235 section 4.1's example. */
    n = parse("Newauth realm=\"apps\", type=1, title=\"Login to \\\"apps\\\"\", Basic "
              "realm=\"simple\"",
              c);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(c[0].scheme, "newauth");
        CHECK_INT(c[0].n_params, 3);
        CHECK_STR(rp_auth_challenge_param(&c[0], "type"), "1");
        CHECK_STR(rp_auth_challenge_param(&c[0], "title"), "Login to \"apps\"");
        CHECK_STR(c[1].scheme, "basic");
        CHECK_STR(rp_auth_challenge_param(&c[1], "realm"), "simple");
        rp_auth_challenges_free(c, 2);
    }
    /* Schemes without parameters, before and after. */
    n = parse("Negotiate, Bearer realm=\"r\", NTLM", c);
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK_STR(c[0].scheme, "negotiate");
        CHECK_INT(c[0].n_params, 0);
        CHECK_STR(c[1].scheme, "bearer");
        CHECK_INT(c[1].n_params, 1);
        CHECK_STR(c[2].scheme, "ntlm");
        rp_auth_challenges_free(c, 3);
    }
}

static void test_challenge_spacing(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    int n = parse(" \t Bearer \t realm = \"r\" ,\t service\t=\"s\"  ,, ,scope= x  , ", c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(c[0].n_params, 3);
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "r");
        CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "s");
        CHECK_STR(rp_auth_challenge_param(&c[0], "scope"), "x");
        rp_auth_challenges_free(c, 1);
    }
    n = parse(",Basic realm=x,,Bearer realm=y", c);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "x");
        CHECK_STR(rp_auth_challenge_param(&c[1], "realm"), "y");
        rp_auth_challenges_free(c, 2);
    }
}

static void test_challenge_quoted(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    int n = parse("Bearer realm=\"a\\\"b\\\\c\\d\",service=\"\",scope=\"x, y=z\"", c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "a\"b\\cd");
        CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "");
        CHECK_STR(rp_auth_challenge_param(&c[0], "scope"), "x, y=z");
        rp_auth_challenges_free(c, 1);
    }
    /* Unquoted URL values, as some servers send them. */
    n = parse("Bearer realm=https://h.example/t?x=1,service=s", c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "https://h.example/t?x=1");
        CHECK_STR(rp_auth_challenge_param(&c[0], "service"), "s");
        rp_auth_challenges_free(c, 1);
    }
}

static void test_challenge_token68(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    int n = parse("Basic abc==", c);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(c[0].scheme, "basic");
        CHECK_INT(c[0].n_params, 0);
        rp_auth_challenges_free(c, 1);
    }
    n = parse("Negotiate YII+/x= , Bearer realm=\"r\"", c);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(c[0].scheme, "negotiate");
        CHECK_INT(c[0].n_params, 0);
        CHECK_STR(rp_auth_challenge_param(&c[1], "realm"), "r");
        rp_auth_challenges_free(c, 2);
    }
}

static void test_challenge_garbage(void)
{
    static const char *const bad[] = {
        "\"x\"",
        "=",
        "realm=\"x\"",
        "Bearer realm=\"x\" service=\"y\"",
        "Bearer realm=\"unterminated",
        "Bearer realm=\"x\\",
        "Bearer realm=\"a\x01z\"",
        "Bearer realm=\"x\"garbage",
        "Bearer foo bar",
        "Bearer@",
        "Bearer realm=x,service=",
        "Bearer realm=\"x\", =y",
        "Bearer ,realm=\"x\" \"y\"",
        "Bearer realm=\xff",
        "B\xc3\xa9"
        "arer realm=x",
        "Bearer realm=\"x\";",
    };
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        int n = parse(bad[k], c);
        if (n != RP_AUTH_E_SYNTAX) {
            fprintf(stderr, "accepted: %s (%d)\n", bad[k], n);
            unit_cur_failed = 1;
            if (n > 0)
                rp_auth_challenges_free(c, (size_t)n);
        }
    }
    /* Some inputs are odd but not errors. */
    CHECK_INT(parse("", c), 0);
    CHECK_INT(parse(" , ,\t", c), 0);
    CHECK_INT(rp_auth_parse_challenges(NULL, 0, c, RP_AUTH_MAX_CHALLENGES), 0);
    CHECK_INT(rp_auth_parse_challenges(NULL, 3, c, RP_AUTH_MAX_CHALLENGES), RP_AUTH_E_SYNTAX);
    /* "Bearer service" is two parameterless schemes. */
    int n = parse("Bearer realm=\"x\", service", c);
    CHECK_INT(n, 2);
    if (n > 0)
        rp_auth_challenges_free(c, (size_t)n);
    /* A NUL byte inside the counted input is a control character. */
    CHECK_INT(parse_n("Bearer realm=\"a\0b\"", 18, c, RP_AUTH_MAX_CHALLENGES), RP_AUTH_E_SYNTAX);
}

static void test_challenge_length_bound(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    /* The parser reads only len bytes: the closing quote lies beyond. */
    const char *s = "Bearer realm=\"abc\"";
    CHECK_INT(parse_n(s, strlen(s) - 1, c, RP_AUTH_MAX_CHALLENGES), RP_AUTH_E_SYNTAX);
    int n = parse_n("Basic realm=x JUNK", 13, c, RP_AUTH_MAX_CHALLENGES);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "x");
        rp_auth_challenges_free(c, 1);
    }
    /* Over 8 KiB: refused whatever it holds. */
    size_t big = 8 * 1024 + 1;
    char *h = rp_xmalloc(big + 1);
    memcpy(h, "Bearer realm=\"", 14);
    memset(h + 14, 'a', big - 15);
    h[big - 1] = '"';
    h[big] = '\0';
    CHECK_INT(parse_n(h, big, c, RP_AUTH_MAX_CHALLENGES), RP_AUTH_E_SYNTAX);
    n = parse_n(h + 1, big - 1, c, RP_AUTH_MAX_CHALLENGES); /* "earer realm=..." */
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(strlen(rp_auth_challenge_param(&c[0], "realm")), big - 15);
        rp_auth_challenges_free(c, 1);
    }
    free(h);
}

static void test_challenge_many_params(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    struct rp_buf b;
    rp_buf_init(&b, 4096);
    rp_buf_addf(&b, "Bearer realm=\"r\",realm=\"dup\"");
    for (int k = 0; k < 30; k++)
        rp_buf_addf(&b, ",p%d=\"v%d\"", k, k);
    rp_buf_addf(&b, ", Basic realm=\"b\"");
    int n = parse(b.data, c);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_INT(c[0].n_params, RP_AUTH_MAX_PARAMS);
        CHECK_STR(rp_auth_challenge_param(&c[0], "realm"), "r"); /* the first one wins */
        CHECK_STR(rp_auth_challenge_param(&c[0], "p14"), "v14");
        CHECK(rp_auth_challenge_param(&c[0], "p15") == NULL);
        CHECK_STR(rp_auth_challenge_param(&c[1], "realm"), "b");
        rp_auth_challenges_free(c, 2);
    }
    rp_buf_free(&b);
}

static void test_challenge_many_challenges(void)
{
    struct rp_auth_challenge c[RP_AUTH_MAX_CHALLENGES];
    struct rp_buf b;
    rp_buf_init(&b, 4096);
    for (int k = 0; k < 20; k++)
        rp_buf_addf(&b, "%sS%d realm=\"r%d\"", k ? ", " : "", k, k);
    int n = parse(b.data, c);
    CHECK_INT(n, RP_AUTH_MAX_CHALLENGES);
    if (n == RP_AUTH_MAX_CHALLENGES) {
        CHECK_STR(c[7].scheme, "s7");
        CHECK_STR(rp_auth_challenge_param(&c[7], "realm"), "r7");
        rp_auth_challenges_free(c, (size_t)n);
    }
    n = parse_n(b.data, b.len, c, 2);
    CHECK_INT(n, 2);
    if (n > 0)
        rp_auth_challenges_free(c, (size_t)n);
    CHECK_INT(parse_n(b.data, b.len, NULL, 0), 0);
    /* Extra challenges are ignored, but still have to be well-formed. */
    rp_buf_addf(&b, ", Bad \"x\"");
    CHECK_INT(parse(b.data, c), RP_AUTH_E_SYNTAX);
    rp_buf_free(&b);
}

static void test_token_fields(void)
{
    struct rp_auth_token t;
    CHECK_INT(parse_token("{\"token\":\"abc.def-ghi\"}", &t), RP_AUTH_OK);
    CHECK_STR(t.token, "abc.def-ghi");
    CHECK_INT(t.expires_in, 60);
    CHECK_INT(t.issued_at, 0);
    rp_free_secret(t.token);

    CHECK_INT(parse_token("{\"access_token\":\"oauth\"}", &t), RP_AUTH_OK);
    CHECK_STR(t.token, "oauth");
    rp_free_secret(t.token);

    CHECK_INT(parse_token("{\"access_token\":\"a\",\"token\":\"t\"}", &t), RP_AUTH_OK);
    CHECK_STR(t.token, "t");
    rp_free_secret(t.token);

    CHECK_INT(parse_token("{\"token\":\"\",\"access_token\":\"a\"}", &t), RP_AUTH_OK);
    CHECK_STR(t.token, "a");
    rp_free_secret(t.token);

    CHECK_INT(parse_token("{\"token\":42,\"access_token\":\"a\"}", &t), RP_AUTH_OK);
    CHECK_STR(t.token, "a");
    rp_free_secret(t.token);

    /* Nested strings (wiped with the rest of the answer) leave the token intact. */
    CHECK_INT(
        parse_token("{\"token\":\"t\",\"x\":{\"refresh\":\"r\",\"l\":[\"a\",{\"b\":\"c\"}]}}", &t),
        RP_AUTH_OK);
    CHECK_STR(t.token, "t");
    rp_free_secret(t.token);

    static const char *const no_token[] = {
        "{}",
        "{\"token\":42}",
        "{\"token\":null,\"access_token\":[]}",
        "{\"token\":\"\"}",
        "{\"token\":\"a b\"}",
        "{\"token\":\"a\\r\\nX-Evil: 1\"}",
        "{\"token\":\"a\\tb\"}",
        "{\"token\":\"caf\\u00e9\"}",
        "{\"access_token\":{\"token\":\"x\"}}",
    };
    for (size_t k = 0; k < sizeof(no_token) / sizeof(no_token[0]); k++) {
        int rc = parse_token(no_token[k], &t);
        if (rc != RP_AUTH_E_NO_TOKEN) {
            fprintf(stderr, "%s: %d\n", no_token[k], rc);
            unit_cur_failed = 1;
        }
        CHECK(t.token == NULL);
    }
}

static void test_token_syntax(void)
{
    static const char *const bad[] = {
        "",
        "[]",
        "\"token\"",
        "42",
        "null",
        "{",
        "{\"token\":\"a\"} x",
        "{\"token\":\"a\",}",
        "{\"token\":\"a\",\"token\":\"b\"}",
    };
    struct rp_auth_token t;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        int rc = parse_token(bad[k], &t);
        if (rc != RP_AUTH_E_SYNTAX) {
            fprintf(stderr, "'%s': %d\n", bad[k], rc);
            unit_cur_failed = 1;
        }
        CHECK(t.token == NULL);
    }
    CHECK_INT(rp_auth_parse_token(NULL, 0, &t), RP_AUTH_E_SYNTAX);

    /* 64 KiB is the limit, counted on the body as received. */
    size_t max = 64 * 1024;
    char *body = rp_xmalloc(max + 1);
    const char *json = "{\"token\":\"t\"}";
    memcpy(body, json, strlen(json));
    memset(body + strlen(json), ' ', max + 1 - strlen(json));
    CHECK_INT(rp_auth_parse_token(body, max, &t), RP_AUTH_OK);
    rp_free_secret(t.token);
    CHECK_INT(rp_auth_parse_token(body, max + 1, &t), RP_AUTH_E_SYNTAX);
    free(body);
}

static void test_token_expires_in(void)
{
    static const struct {
        const char *json;
        int64_t want;
    } cases[] = {
        {"{\"token\":\"t\",\"expires_in\":300}", 300},
        {"{\"token\":\"t\",\"expires_in\":1}", 1},
        {"{\"token\":\"t\",\"expires_in\":0}", 60},
        {"{\"token\":\"t\",\"expires_in\":-5}", 60},
        {"{\"token\":\"t\",\"expires_in\":\"300\"}", 60},
        {"{\"token\":\"t\",\"expires_in\":null}", 60},
        {"{\"token\":\"t\",\"expires_in\":true}", 60},
        {"{\"token\":\"t\",\"expires_in\":300.7}", 300},
        {"{\"token\":\"t\",\"expires_in\":0.5}", 60},
        {"{\"token\":\"t\",\"expires_in\":86400}", 86400},
        {"{\"token\":\"t\",\"expires_in\":1000000000000}", 86400},
        {"{\"token\":\"t\",\"expires_in\":1e300}", 86400},
        {"{\"token\":\"t\",\"expires_in\":-9223372036854775808}", 60},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct rp_auth_token t;
        CHECK_INT(parse_token(cases[k].json, &t), RP_AUTH_OK);
        if (t.expires_in != cases[k].want) {
            fprintf(stderr, "%s: expires_in %lld\n", cases[k].json, (long long)t.expires_in);
            unit_cur_failed = 1;
        }
        rp_free_secret(t.token);
    }
}

static void test_token_issued_at(void)
{
    static const struct {
        const char *value;
        int64_t want;
    } cases[] = {
        {"\"2009-11-10T23:00:00Z\"", 1257894000},
        {"\"2009-11-10t23:00:00z\"", 1257894000},
        {"\"2009-11-10 23:00:00Z\"", 1257894000},
        {"\"2009-11-10T23:00:00.123456789Z\"", 1257894000},
        {"\"2009-11-10T23:00:00.5+00:00\"", 1257894000},
        {"\"2009-11-10T23:00:00+01:00\"", 1257890400},
        {"\"2009-11-10T23:00:00-05:30\"", 1257913800},
        {"\"2024-02-29T00:00:00Z\"", 1709164800},
        {"\"2016-12-31T23:59:60Z\"", 1483228800},
        {"\"1970-01-01T00:00:01Z\"", 1},
        {"\"0001-01-01T00:00:00Z\"", 0},
        {"\"2023-02-29T00:00:00Z\"", 0},
        {"\"2009-13-10T23:00:00Z\"", 0},
        {"\"2009-11-10T24:00:00Z\"", 0},
        {"\"2009-11-10T23:00:00\"", 0},
        {"\"2009-11-10T23:00:00.Z\"", 0},
        {"\"2009-11-10T23:00:00Zjunk\"", 0},
        {"\"2009-11-10T23:00:00+0100\"", 0},
        {"\"2009-11-10\"", 0},
        {"\"yesterday\"", 0},
        {"\"\"", 0},
        {"1257894000", 0},
        {"null", 0},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct rp_auth_token t;
        char *json = rp_xasprintf("{\"token\":\"t\",\"issued_at\":%s}", cases[k].value);
        CHECK_INT(parse_token(json, &t), RP_AUTH_OK);
        if (t.issued_at != cases[k].want) {
            fprintf(stderr, "%s: issued_at %lld\n", cases[k].value, (long long)t.issued_at);
            unit_cur_failed = 1;
        }
        rp_free_secret(t.token);
        free(json);
    }
}

static void test_scope_and_strerror(void)
{
    char *s = rp_auth_scope_pull("rhel8/ubi");
    CHECK_STR(s, "repository:rhel8/ubi:pull");
    free(s);
    for (int e = RP_AUTH_OK; e >= RP_AUTH_E_NO_TOKEN; e--) {
        const char *m = rp_auth_strerror(e);
        CHECK(m != NULL && *m != '\0');
        for (int f = e + 1; f <= RP_AUTH_OK; f++)
            CHECK(strcmp(m, rp_auth_strerror(f)) != 0);
    }
    CHECK(rp_auth_strerror(-8) != NULL);
    CHECK(rp_auth_strerror(1) != NULL);
    CHECK(rp_auth_strerror(-2147483647 - 1) != NULL);
}

/* docker login's identitytoken: the token request is an OAuth2 POST of the refresh token
 * to the realm, with no Basic credentials anywhere. */
static void test_flow_identity_token(void)
{
    struct rp_conf_registry reg = rh_reg;
    reg.user = NULL;
    reg.password = NULL;
    reg.identity_token = "refresh/me+1";
    struct rp_auth *a = rp_auth_new(&reg);
    char *url = NULL, *authz = (char *)1, *body = NULL;
    const char *scope = "repository:rhel8/ubi:pull";
    CHECK_INT(rp_auth_on_unauthorized(a, scope, RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_token_request(a, scope, &url, &authz, &body), RP_AUTH_OK);
    CHECK_STR(url, RH_REALM);
    CHECK(authz == NULL);
    CHECK_STR(body, "grant_type=refresh_token&client_id=regproxy&service=docker-registry"
                    "&scope=repository%3Arhel8%2Fubi%3Apull&refresh_token=refresh%2Fme%2B1");
    free(url);
    rp_free_secret(body);
    const char *answer = "{\"access_token\":\"at1\",\"expires_in\":300}";
    CHECK_INT(rp_auth_token_response(a, scope, 200, answer, strlen(answer), 1000), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, scope, 1000, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, "Bearer at1");
    rp_free_secret(authz);
    rp_auth_free(a);

    /* No service, no scope, a short token: the form's fixed text alone must fit. */
    reg.identity_token = "r";
    a = rp_auth_new(&reg);
    CHECK_INT(rp_auth_on_unauthorized(a, "", "Bearer realm=\"" RH_REALM "\"", NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_token_request(a, "", &url, &authz, &body), RP_AUTH_OK);
    CHECK_STR(body, "grant_type=refresh_token&client_id=regproxy&service=&scope=&refresh_token=r");
    free(url);
    rp_free_secret(body);
    rp_auth_free(a);
}

/* The whole Bearer flow as proxy/ drives it against registry.redhat.io. */
static void test_flow_bearer(void)
{
    const char *scope = "repository:rhel8/ubi:pull";
    struct rp_auth *a = rp_auth_new(&rh_reg);
    char *authz = (char *)1, *url = NULL;
    int64_t now = 1000;

    CHECK_INT(rp_auth_prepare(a, scope, now, &authz), RP_AUTH_SEND);
    CHECK(authz == NULL);
    CHECK_INT(rp_auth_on_unauthorized(a, scope, RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, scope, now, &authz), RP_AUTH_NEED_TOKEN);
    CHECK(authz == NULL);

    CHECK_INT(rp_auth_token_request(a, scope, &url, &authz, &post), RP_AUTH_OK);
    CHECK_STR(url, RH_REALM "?service=docker-registry&scope=repository%3Arhel8%2Fubi%3Apull");
    CHECK_STR(authz, RH_BASIC);
    free(url);
    rp_free_secret(authz);

    const char *answer = "{\"token\":\"tok1\",\"expires_in\":300,"
                         "\"issued_at\":\"2024-05-01T10:00:00.123456789Z\"}";
    CHECK_INT(rp_auth_token_response(a, scope, 200, answer, strlen(answer), now), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, scope, now, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, "Bearer tok1");
    rp_free_secret(authz);

    /* 300 s token, 30 s margin: valid until now + 270 s. */
    CHECK_INT(rp_auth_prepare(a, scope, now + 270000 - 1, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, "Bearer tok1");
    rp_free_secret(authz);
    CHECK_INT(rp_auth_prepare(a, scope, now + 270000, &authz), RP_AUTH_NEED_TOKEN);
    CHECK(authz == NULL);

    now += 270000;
    answer = "{\"access_token\":\"tok2\",\"expires_in\":300}";
    CHECK_INT(rp_auth_token_response(a, scope, 200, answer, strlen(answer), now), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, scope, now, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, "Bearer tok2");

    /* A 401 for an older token leaves the fresh one alone... */
    CHECK_INT(rp_auth_on_unauthorized(a, scope, RH_CHALLENGE, "Bearer tok1"), RP_AUTH_OK);
    rp_free_secret(authz);
    CHECK_INT(rp_auth_prepare(a, scope, now, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, "Bearer tok2");
    /* ...a 401 for the token we sent drops it, and other scopes keep theirs. */
    answer = "{\"token\":\"other\"}";
    CHECK_INT(rp_auth_token_response(a, "repository:x/y:pull", 200, answer, strlen(answer), now),
              RP_AUTH_OK);
    CHECK_INT(rp_auth_on_unauthorized(a, scope, RH_CHALLENGE, authz), RP_AUTH_OK);
    rp_free_secret(authz);
    CHECK_INT(rp_auth_prepare(a, scope, now, &authz), RP_AUTH_NEED_TOKEN);
    CHECK_INT(rp_auth_prepare(a, "repository:x/y:pull", now, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, "Bearer other");
    rp_free_secret(authz);
    rp_auth_free(a);
}

static void test_token_margin(void)
{
    static const struct {
        const char *json;
        int64_t valid_ms;
    } cases[] = {
        {"{\"token\":\"t\"}", 45000},                       /* 60 s default, 15 s margin */
        {"{\"token\":\"t\",\"expires_in\":1}", 750},        /* a quarter of a second */
        {"{\"token\":\"t\",\"expires_in\":120}", 90000},    /* 30 s: a quarter */
        {"{\"token\":\"t\",\"expires_in\":3600}", 3570000}, /* the 30 s cap */
        {"{\"token\":\"t\",\"expires_in\":999999}", 86400000 - 30000},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct rp_auth *a = rp_auth_new(&rh_reg);
        char *authz;
        int64_t now = 5000;
        CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
        CHECK_INT(rp_auth_token_response(a, "s", 200, cases[k].json, strlen(cases[k].json), now),
                  RP_AUTH_OK);
        CHECK_INT(rp_auth_prepare(a, "s", now + cases[k].valid_ms - 1, &authz), RP_AUTH_SEND);
        rp_free_secret(authz);
        CHECK_INT(rp_auth_prepare(a, "s", now + cases[k].valid_ms, &authz), RP_AUTH_NEED_TOKEN);
        rp_auth_free(a);
    }
}

static void test_flow_anonymous_dockerhub(void)
{
    const char *scope = "repository:library/ubuntu:pull";
    struct rp_auth *a = rp_auth_new(&hub_reg);
    char *authz, *url;

    CHECK_INT(rp_auth_on_unauthorized(a, scope, HUB_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, scope, 0, &authz), RP_AUTH_NEED_TOKEN);
    CHECK_INT(rp_auth_token_request(a, scope, &url, &authz, &post), RP_AUTH_OK);
    CHECK_STR(url, "https://auth.docker.io/token?service=registry.docker.io"
                   "&scope=repository%3Alibrary%2Fubuntu%3Apull");
    CHECK(authz == NULL);
    free(url);
    const char *answer = "{\"token\":\"hub\",\"access_token\":\"hub\",\"expires_in\":300,"
                         "\"issued_at\":\"2024-05-01T10:00:00.123456789Z\"}";
    CHECK_INT(rp_auth_token_response(a, scope, 200, answer, strlen(answer), 0), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, scope, 0, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, "Bearer hub");
    rp_free_secret(authz);
    rp_auth_free(a);
}

static void test_token_request_url_forms(void)
{
    static const struct {
        const char *challenge;
        const char *scope;
        const char *want;
    } cases[] = {
        {"Bearer realm=\"https://registry.redhat.io/auth?x=1\",service=\"a b/c\"", "s:t",
         "https://registry.redhat.io/auth?x=1&service=a%20b%2Fc&scope=s%3At"},
        {"Bearer realm=\"https://registry.redhat.io/auth?\",service=\"s\"", "x",
         "https://registry.redhat.io/auth?service=s&scope=x"},
        {"Bearer realm=\"https://registry.redhat.io/auth\"", "repository:a/b:pull",
         "https://registry.redhat.io/auth?scope=repository%3Aa%2Fb%3Apull"},
        {"Bearer realm=\"https://registry.redhat.io/auth\",service=\"svc\"", NULL,
         "https://registry.redhat.io/auth?service=svc"},
        {"Bearer realm=\"https://registry.redhat.io/auth\"", "", "https://registry.redhat.io/auth"},
        {"Bearer realm=\"https://registry.redhat.io/auth#frag\",service=\"s\"", "~-._*",
         "https://registry.redhat.io/auth?service=s&scope=~-._%2A"},
        {"Bearer realm=\"https://registry.redhat.io/auth\",service=\"\"", "x",
         "https://registry.redhat.io/auth?scope=x"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct rp_auth *a = rp_auth_new(&rh_reg);
        char *url = NULL, *authz = NULL;
        CHECK_INT(rp_auth_on_unauthorized(a, cases[k].scope, cases[k].challenge, NULL), RP_AUTH_OK);
        CHECK_INT(rp_auth_token_request(a, cases[k].scope, &url, &authz, &post), RP_AUTH_OK);
        CHECK_STR(url, cases[k].want);
        CHECK_STR(authz, RH_BASIC);
        free(url);
        rp_free_secret(authz);
        rp_auth_free(a);
    }
}

static void test_foreign_realm(void)
{
    static const char *const realms[] = {
        "Bearer realm=\"https://evil.example/token\",service=\"docker-registry\"",
        "Bearer realm=\"http://registry.redhat.io/auth\",service=\"docker-registry\"",
        "Bearer realm=\"https://registry.redhat.io.evil.example/auth\"",
        "Bearer realm=\"https://evilredhat.io/auth\"",
    };
    for (size_t k = 0; k < sizeof(realms) / sizeof(realms[0]); k++) {
        struct rp_auth *a = rp_auth_new(&rh_reg);
        char *url = (char *)1, *authz = (char *)1;
        CHECK_INT(rp_auth_on_unauthorized(a, "s", realms[k], NULL), RP_AUTH_OK);
        CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
        CHECK_INT(rp_auth_token_request(a, "s", &url, &authz, &post), RP_AUTH_E_REALM_NOT_ALLOWED);
        CHECK(url == NULL);
        CHECK(authz == NULL);
        /* The next request asks the registry again (anonymously), the realm is kept for
         * messages until a 401 names one. */
        CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
        CHECK(authz == NULL);
        CHECK(rp_auth_realm(a) != NULL);
        CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
        CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
        rp_auth_free(a);
    }
}

static void test_basic_beside_foreign_realm(void)
{
    const char *h = "Bearer realm=\"https://evil.example/token\",service=\"s\", Basic realm=\"r\"";
    char *authz, *url;

    /* With credentials: Basic to the registry itself, the foreign realm never dialed. */
    struct rp_auth *a = rp_auth_new(&rh_reg);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", h, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, RH_BASIC);
    rp_free_secret(authz);
    rp_auth_free(a);

    /* An allowed realm is still preferred. */
    a = rp_auth_new(&rh_reg);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "Basic realm=\"r\", " RH_CHALLENGE, NULL),
              RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
    rp_auth_free(a);

    /* Without credentials Basic cannot help: the error names the realm policy. */
    a = rp_auth_new(&hub_reg);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", h, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
    CHECK_INT(rp_auth_token_request(a, "s", &url, &authz, &post), RP_AUTH_E_REALM_NOT_ALLOWED);
    rp_auth_free(a);
}

static void test_flow_basic(void)
{
    struct rp_auth *a = rp_auth_new(&rh_reg);
    char *authz, *url;
    const char *h = "Basic realm=\"Registry Realm\"";

    CHECK_INT(rp_auth_on_unauthorized(a, "s", h, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, RH_BASIC);
    /* The credentials just sent were refused: retrying cannot help. */
    CHECK_INT(rp_auth_on_unauthorized(a, "s", h, authz), RP_AUTH_E_REJECTED);
    rp_free_secret(authz);
    CHECK_INT(rp_auth_token_request(a, "s", &url, &authz, &post), RP_AUTH_E_NO_CHALLENGE);
    CHECK(url == NULL && authz == NULL);
    rp_auth_free(a);

    /* No credentials: nothing to retry with. */
    a = rp_auth_new(&hub_reg);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", h, NULL), RP_AUTH_E_NO_CREDENTIALS);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    CHECK(authz == NULL);
    rp_auth_free(a);
}

static void test_challenge_choice(void)
{
    struct rp_auth *a = rp_auth_new(&rh_reg);
    char *authz;

    /* Bearer is preferred wherever it appears. */
    CHECK_INT(rp_auth_on_unauthorized(
                  a, "s", "Basic realm=\"x\", Bearer realm=\"https://registry.redhat.io/a\"", NULL),
              RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
    /* A Bearer challenge without a usable realm does not count. */
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "Bearer service=\"x\", Basic realm=\"y\"", NULL),
              RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    CHECK_STR(authz, RH_BASIC);
    rp_free_secret(authz);

    CHECK_INT(rp_auth_on_unauthorized(a, "s", NULL, NULL), RP_AUTH_E_NO_CHALLENGE);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "", NULL), RP_AUTH_E_NO_CHALLENGE);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "Negotiate abc==", NULL), RP_AUTH_E_NO_CHALLENGE);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "Bearer service=\"x\"", NULL),
              RP_AUTH_E_NO_CHALLENGE);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "Bearer realm=\"https://a b/\"", NULL),
              RP_AUTH_E_NO_CHALLENGE);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "Bearer realm=\"\"", NULL), RP_AUTH_E_NO_CHALLENGE);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", "Bearer realm=\"x", NULL), RP_AUTH_E_SYNTAX);
    rp_auth_free(a);
}

static void test_challenge_change_drops_tokens(void)
{
    struct rp_auth *a = rp_auth_new(&rh_reg);
    char *authz;
    const char *answer = "{\"token\":\"t\"}";

    CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_token_response(a, "s", 200, answer, strlen(answer), 0), RP_AUTH_OK);
    uint64_t epoch = rp_auth_challenge_epoch(a);
    /* The same challenge again (another scope's 401) keeps the cache, and the epoch: token
     * requests under way to the realm still count. */
    CHECK_INT(rp_auth_on_unauthorized(a, "other", RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK(rp_auth_challenge_epoch(a) == epoch);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    rp_free_secret(authz);
    /* A different service: the old tokens were for someone else, and so are the answers
     * of token requests made before (a new epoch). */
    CHECK_INT(rp_auth_on_unauthorized(
                  a, "other", "Bearer realm=\"" RH_REALM "\",service=\"new-service\"", NULL),
              RP_AUTH_OK);
    CHECK(rp_auth_challenge_epoch(a) != epoch);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
    epoch = rp_auth_challenge_epoch(a);
    rp_auth_reset(a);
    CHECK(rp_auth_challenge_epoch(a) != epoch);
    rp_auth_free(a);
}

/* A 401 to a token we sent refuses that token, whatever its challenge says: one the proxy
 * cannot use (none, RFC 6750's realm-less `Bearer error="invalid_token"`, a malformed one)
 * must not leave the dead token cached, sent and refused by every request until it
 * expires (a day at most). */
static void test_refused_token_dropped_without_usable_challenge(void)
{
    static const char *const headers[] = {
        NULL, "", "Bearer error=\"invalid_token\"", "Bearer realm=\"unterminated", "Negotiate",
    };
    const char *scope = "repository:rhel8/ubi:pull";
    const char *answer = "{\"token\":\"tok1\",\"expires_in\":3600}";
    for (size_t k = 0; k < sizeof(headers) / sizeof(headers[0]); k++) {
        struct rp_auth *a = rp_auth_new(&rh_reg);
        char *authz;
        CHECK_INT(rp_auth_on_unauthorized(a, scope, RH_CHALLENGE, NULL), RP_AUTH_OK);
        CHECK_INT(rp_auth_token_response(a, scope, 200, answer, strlen(answer), 0), RP_AUTH_OK);
        CHECK_INT(rp_auth_token_response(a, "other", 200, answer, strlen(answer), 0), RP_AUTH_OK);
        CHECK_INT(rp_auth_prepare(a, scope, 0, &authz), RP_AUTH_SEND);
        CHECK_STR(authz, "Bearer tok1");
        CHECK(rp_auth_on_unauthorized(a, scope, headers[k], authz) != RP_AUTH_OK);
        rp_free_secret(authz);
        /* The next request gets a fresh token from the realm learned before... */
        CHECK_INT(rp_auth_prepare(a, scope, 0, &authz), RP_AUTH_NEED_TOKEN);
        CHECK(authz == NULL);
        /* ...and only the refused token went. */
        CHECK_INT(rp_auth_prepare(a, "other", 0, &authz), RP_AUTH_SEND);
        CHECK_STR(authz, "Bearer tok1");
        rp_free_secret(authz);
        rp_auth_free(a);
    }
}

static void test_token_response_errors(void)
{
    struct rp_auth *a = rp_auth_new(&rh_reg);
    char *authz;
    const char *ok = "{\"token\":\"t\"}";

    CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_token_response(a, "s", 401, ok, strlen(ok), 0), RP_AUTH_E_REJECTED);
    CHECK_INT(rp_auth_token_response(a, "s", 403, ok, strlen(ok), 0), RP_AUTH_E_REJECTED);
    CHECK_INT(rp_auth_token_response(a, "s", 500, ok, strlen(ok), 0), RP_AUTH_E_REALM_ERROR);
    CHECK_INT(rp_auth_token_response(a, "s", 302, ok, strlen(ok), 0), RP_AUTH_E_REALM_ERROR);
    CHECK_INT(rp_auth_token_response(a, "s", 0, ok, strlen(ok), 0), RP_AUTH_E_REALM_ERROR);
    CHECK_INT(rp_auth_token_response(a, "s", 200, "[]", 2, 0), RP_AUTH_E_SYNTAX);
    CHECK_INT(rp_auth_token_response(a, "s", 200, NULL, 0, 0), RP_AUTH_E_SYNTAX);
    CHECK_INT(rp_auth_token_response(a, "s", 200, "{}", 2, 0), RP_AUTH_E_NO_TOKEN);
    /* The realm gave no token: the next request asks the registry, whose 401 may name
     * another realm by now, instead of dialing this one again. */
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    CHECK(authz == NULL);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
    /* A refusal is about the credentials, from the right realm: no need to ask. */
    CHECK_INT(rp_auth_token_response(a, "s", 401, ok, strlen(ok), 0), RP_AUTH_E_REJECTED);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
    CHECK_INT(rp_auth_token_response(a, "s", 0, NULL, 0, 0), RP_AUTH_E_REALM_ERROR);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    CHECK(authz == NULL);
    CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_token_response(a, "s", 201, ok, strlen(ok), 0), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    rp_free_secret(authz);
    rp_auth_free(a);
}

static void test_reset(void)
{
    struct rp_auth *a = rp_auth_new(&rh_reg);
    char *authz, *url;
    const char *ok = "{\"token\":\"t\"}";

    CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_token_response(a, "s", 200, ok, strlen(ok), 0), RP_AUTH_OK);
    uint64_t gen = rp_auth_generation(a);
    rp_auth_reset(a);
    /* Token requests made before the reset are told apart by the generation. */
    CHECK(rp_auth_generation(a) != gen);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_SEND);
    CHECK(authz == NULL);
    CHECK_INT(rp_auth_token_request(a, "s", &url, &authz, &post), RP_AUTH_E_NO_CHALLENGE);
    /* And it learns again from the next 401. */
    CHECK_INT(rp_auth_on_unauthorized(a, "s", RH_CHALLENGE, NULL), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, "s", 0, &authz), RP_AUTH_NEED_TOKEN);
    rp_auth_reset(a);
    rp_auth_reset(a);
    rp_auth_free(a);
    rp_auth_free(NULL);
}

static void test_cache_bound(void)
{
    struct rp_auth *a = rp_auth_new(&hub_reg);
    const char *ok = "{\"token\":\"t\",\"expires_in\":3600}";
    char scope[64], *authz;
    int total = 1100, kept = 1024;

    CHECK_INT(rp_auth_on_unauthorized(a, NULL, HUB_CHALLENGE, NULL), RP_AUTH_OK);
    /* Stored one millisecond apart: the earliest to expire are evicted first. */
    for (int k = 0; k < total; k++) {
        snprintf(scope, sizeof(scope), "repository:r%d:pull", k);
        CHECK_INT(rp_auth_token_response(a, scope, 200, ok, strlen(ok), k), RP_AUTH_OK);
    }
    int sent = 0;
    for (int k = 0; k < total; k++) {
        snprintf(scope, sizeof(scope), "repository:r%d:pull", k);
        enum rp_auth_step st = rp_auth_prepare(a, scope, total, &authz);
        CHECK_INT(st, k < total - kept ? RP_AUTH_NEED_TOKEN : RP_AUTH_SEND);
        sent += st == RP_AUTH_SEND;
        rp_free_secret(authz);
    }
    CHECK_INT(sent, kept);
    /* A NULL scope (the /v2/ ping) is a key like any other. */
    CHECK_INT(rp_auth_token_response(a, NULL, 200, ok, strlen(ok), 0), RP_AUTH_OK);
    CHECK_INT(rp_auth_prepare(a, NULL, 0, &authz), RP_AUTH_SEND);
    rp_free_secret(authz);
    rp_auth_free(a);
}

int main(void)
{
    RUN(test_challenge_redhat);
    RUN(test_challenge_dockerhub_quay);
    RUN(test_challenge_basic_and_case);
    RUN(test_challenge_multiple);
    RUN(test_challenge_spacing);
    RUN(test_challenge_quoted);
    RUN(test_challenge_token68);
    RUN(test_challenge_garbage);
    RUN(test_challenge_length_bound);
    RUN(test_challenge_many_params);
    RUN(test_challenge_many_challenges);
    RUN(test_token_fields);
    RUN(test_token_syntax);
    RUN(test_token_expires_in);
    RUN(test_token_issued_at);
    RUN(test_scope_and_strerror);
    RUN(test_flow_bearer);
    RUN(test_flow_identity_token);
    RUN(test_token_margin);
    RUN(test_flow_anonymous_dockerhub);
    RUN(test_token_request_url_forms);
    RUN(test_foreign_realm);
    RUN(test_flow_basic);
    RUN(test_basic_beside_foreign_realm);
    RUN(test_challenge_choice);
    RUN(test_challenge_change_drops_tokens);
    RUN(test_token_response_errors);
    RUN(test_refused_token_dropped_without_usable_challenge);
    RUN(test_reset);
    RUN(test_cache_bound);
    UNIT_EXIT();
}
