/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for conf/: the option table, parsing and its error messages, password files,
 * URL splitting, registry lookup and the token-realm policy. */
#include "conf/conf.h"
#include "tests/unit/unit.h"
#include "util/util.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MINIMAL                                                                                    \
    "[listen \"127.0.0.1:5000\"]\n"                                                                \
    "[registry \"r\"]\n"                                                                           \
    "url = https://r.example.com\n"

static char err[1024];

/* Parses NUL-terminated text as "test.conf". */
static struct rp_conf *parse(const char *text)
{
    struct rp_conf *c = NULL;
    if (rp_conf_parse(text, strlen(text), "test.conf", &c, err, sizeof(err)) != 0)
        return NULL;
    return c;
}

/* Expects text to fail with exactly `want` as the message. */
static void expect_err(const char *text, const char *want)
{
    struct rp_conf *c = NULL;
    int rc = rp_conf_parse(text, strlen(text), "test.conf", &c, err, sizeof(err));
    CHECK_INT(rc, -1);
    CHECK(c == NULL);
    CHECK_STR(err, want);
    rp_conf_free(c);
}

/* Parses text and returns the first registry's field through a callback-free path: the
 * caller frees the conf. */
static const struct rp_conf_registry *reg0(struct rp_conf *c)
{
    return c && c->n_registries ? &c->registries[0] : NULL;
}

static void test_default_text(void)
{
    const char *t = rp_conf_default_text();
    struct rp_conf *c = NULL;
    CHECK_INT(rp_conf_parse(t, strlen(t), "<embedded>", &c, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    if (!c)
        return;
    CHECK_STR(c->source, "<embedded>");
    CHECK_INT(c->n_listens, 1);
    CHECK_STR(c->listens[0].addr, "0.0.0.0:5000");
    CHECK_STR(c->listens[0].host, "0.0.0.0");
    CHECK_INT(c->listens[0].port, 5000);
    CHECK_STR(c->listens[0].default_name, "registry.redhat.io");
    CHECK(c->listens[0].def == &c->registries[0]);
    CHECK(c->listens[0].tls_cert == NULL);
    CHECK_INT(c->n_registries, 4);
    CHECK_STR(c->cache.dir, "/var/cache/regproxy");
    CHECK(c->cache.max_size == 100ULL << 30);
    CHECK_INT(c->cache.tag_ttl_ms, 600000);

    const struct rp_conf_registry *r = &c->registries[0];
    CHECK_STR(r->name, "registry.redhat.io");
    CHECK_STR(r->url, "https://registry.redhat.io");
    CHECK_STR(r->scheme, "https");
    CHECK_STR(r->host, "registry.redhat.io");
    CHECK_INT(r->port, 443);
    CHECK_STR(r->hostport, "registry.redhat.io");
    CHECK(!r->dockerhub);
    CHECK(r->user == NULL && r->password == NULL);
    CHECK(r->tls_verify);
    CHECK(r->test_login);
    CHECK_STR(r->test_image, "openshift3/ose-pod");
    CHECK_INT(r->tag_ttl_ms, -1);
    CHECK_INT(r->n_token_realms, 0);

    const struct rp_conf_registry *d = rp_conf_find_registry(c, "docker.io", 9);
    CHECK(d != NULL);
    if (d) {
        CHECK_STR(d->name, "docker.io");
        CHECK_STR(d->host, "registry-1.docker.io");
        CHECK(d->dockerhub);
        CHECK(d->test_image == NULL);
    }
    CHECK(!c->registries[1].dockerhub);
    CHECK(!c->registries[3].dockerhub);
    rp_conf_free(c);
}

static void test_minimal_defaults(void)
{
    struct rp_conf *c = parse(MINIMAL);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(c->cache.dir, "/var/cache/regproxy"); /* no [cache] at all */
    CHECK(c->cache.max_size == 100ULL << 30);
    CHECK_INT(c->cache.tag_ttl_ms, 600000);
    CHECK(c->listens[0].default_name == NULL && c->listens[0].def == NULL);
    CHECK(reg0(c)->test_image == NULL);
    rp_conf_free(c);
}

static void test_several_listeners_any_order(void)
{
    /* `default` is resolved after the whole file: registries may come later. */
    struct rp_conf *c = parse("# comment\n"
                              "; another comment\n"
                              "\n"
                              "[listen \"0.0.0.0:5000\"]\n"
                              "  default = quay  \n"
                              "[listen \"[::1]:5001\"]\n"
                              "default=docker.io\n"
                              "[listen \"[2001:DB8::1]:443\"]\n"
                              "default = QUAY.IO\n"
                              "[listen \"localhost:65535\"]\n"
                              "[registry \"quay\"]\n"
                              "url = https://quay.io/\n"
                              "[registry \"hub\"]\n"
                              "url = \"https://registry-1.docker.io\"\n");
    CHECK(c != NULL);
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_INT(c->n_listens, 4);
    CHECK(c->listens[0].def == &c->registries[0]);
    CHECK_STR(c->listens[1].addr, "[::1]:5001");
    CHECK_STR(c->listens[1].host, "::1");
    CHECK_INT(c->listens[1].port, 5001);
    CHECK(c->listens[1].def == &c->registries[1]); /* docker.io finds registry-1.docker.io */
    CHECK_STR(c->listens[2].host, "2001:db8::1");
    CHECK_INT(c->listens[2].port, 443);
    CHECK(c->listens[2].def == &c->registries[0]); /* by host, case-insensitively */
    CHECK_STR(c->listens[3].host, "localhost");
    CHECK_INT(c->listens[3].port, 65535);
    CHECK(c->listens[3].def == NULL);
    CHECK_STR(c->registries[0].url, "https://quay.io");              /* trailing slash stripped */
    CHECK_STR(c->registries[1].url, "https://registry-1.docker.io"); /* quotes stripped */
    rp_conf_free(c);
}

static void test_registry_fields(void)
{
    struct rp_conf *c = parse("[listen \"127.0.0.1:5000\"]\n"
                              "tls_cert = /etc/regproxy/tls.crt\n"
                              "tls_key = tls.key\n"
                              "[registry \"a\"]\n"
                              "url = http://LOCALHOST:5001\n"
                              "user = 12345678|cluster-pull\n"
                              "password = \" p#ss;w=rd \"\n"
                              "tls_verify = off\n"
                              "test_image = library/busybox\n"
                              "test_login = FALSE\n"
                              "tag_ttl = 90\n"
                              "token_realms = https://auth.example.com/token , http://x:81/\n"
                              "[registry \"b\"]\n"
                              "url = https://[::1]:8443\n"
                              "[registry \"c\"]\n"
                              "url = http://[fe80::2]\n"
                              "[registry \"d\"]\n"
                              "url = https://docker.io\n");
    CHECK(c != NULL);
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_STR(c->listens[0].tls_cert, "/etc/regproxy/tls.crt");
    CHECK_STR(c->listens[0].tls_key, "tls.key"); /* source has no directory */
    const struct rp_conf_registry *a = &c->registries[0];
    CHECK_STR(a->url, "http://LOCALHOST:5001");
    CHECK_STR(a->scheme, "http");
    CHECK_STR(a->host, "localhost");
    CHECK_INT(a->port, 5001);
    CHECK_STR(a->hostport, "localhost:5001");
    CHECK_STR(a->user, "12345678|cluster-pull");
    CHECK_STR(a->password, " p#ss;w=rd ");
    CHECK(!a->tls_verify);
    CHECK(!a->test_login);
    CHECK_STR(a->test_image, "library/busybox");
    CHECK_INT(a->tag_ttl_ms, 90000);
    CHECK_INT(a->n_token_realms, 2);
    if (a->n_token_realms == 2) {
        CHECK_STR(a->token_realms[0], "https://auth.example.com/token");
        CHECK_STR(a->token_realms[1], "http://x:81/");
    }
    CHECK_STR(c->registries[1].host, "::1");
    CHECK_STR(c->registries[1].hostport, "[::1]:8443");
    CHECK_STR(c->registries[2].hostport, "[fe80::2]");
    CHECK_INT(c->registries[2].port, 80);
    CHECK(c->registries[3].dockerhub);
    rp_conf_free(c);
}

static void test_bool_values(void)
{
    static const char *const yes[] = {"yes", "true", "on", "1", "YES", "True"};
    static const char *const no[] = {"no", "false", "off", "0", "No", "OFF"};
    char text[256];
    for (size_t i = 0; i < 6; i++) {
        for (int v = 0; v < 2; v++) {
            snprintf(text, sizeof(text), MINIMAL "tls_verify = %s\n", v ? yes[i] : no[i]);
            struct rp_conf *c = parse(text);
            CHECK(c != NULL);
            if (c)
                CHECK_INT(reg0(c)->tls_verify, v);
            rp_conf_free(c);
        }
    }
    expect_err(MINIMAL "tls_verify = yep\n",
               "test.conf:4: bad value for 'tls_verify' in [registry \"r\"]: expected yes or no");
    expect_err(MINIMAL "test_login = 2\n",
               "test.conf:4: bad value for 'test_login' in [registry \"r\"]: expected yes or no");
}

static void test_size_values(void)
{
    static const struct {
        const char *text;
        uint64_t want;
    } ok[] = {
        {"0", 0},           {"1234", 1234},           {"1K", 1024},
        {"2k", 2048},       {"3M", 3ULL << 20},       {"100G", 100ULL << 30},
        {"5T", 5ULL << 40}, {"1048576T", 1ULL << 60}, {"1152921504606846976", 1ULL << 60},
    };
    char text[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(text, sizeof(text), MINIMAL "[cache]\nmax_size = %s\n", ok[i].text);
        struct rp_conf *c = parse(text);
        CHECK(c != NULL);
        if (c)
            CHECK(c->cache.max_size == ok[i].want);
        rp_conf_free(c);
    }
    static const char *const bad[] = {"-1",  "1.5G", "G",    "10 G",
                                      "1KB", "1P",   "0x10", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), MINIMAL "[cache]\nmax_size = %s\n", bad[i]);
        expect_err(text, "test.conf:5: bad value for 'max_size' in [cache]: expected a size: a "
                         "number with optional K, M, G or T");
    }
    expect_err(MINIMAL "[cache]\nmax_size = 1048577T\n",
               "test.conf:5: 'max_size' in [cache] must be between 0 and 1048576T");
    expect_err(MINIMAL "[cache]\nmax_size = 2000000T\n",
               "test.conf:5: 'max_size' in [cache] must be between 0 and 1048576T");
}

static void test_duration_values(void)
{
    static const struct {
        const char *text;
        int64_t want_ms;
    } ok[] = {
        {"0", 0},        {"10", 10000},   {"250ms", 250},   {"3s", 3000},
        {"10m", 600000}, {"2h", 7200000}, {"1d", 86400000}, {"30d", 30LL * 86400000},
        {"10M", 600000}, {"5MS", 5},
    };
    char text[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(text, sizeof(text), MINIMAL "tag_ttl = %s\n[cache]\ntag_ttl = %s\n", ok[i].text,
                 ok[i].text);
        struct rp_conf *c = parse(text);
        CHECK(c != NULL);
        if (c) {
            CHECK_INT(c->cache.tag_ttl_ms, ok[i].want_ms);
            CHECK_INT(reg0(c)->tag_ttl_ms, ok[i].want_ms);
        }
        rp_conf_free(c);
    }
    static const char *const bad[] = {"-1", "1.5s", "s", "10 s", "1w", "10sec", "1y"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), MINIMAL "tag_ttl = %s\n", bad[i]);
        expect_err(text, "test.conf:4: bad value for 'tag_ttl' in [registry \"r\"]: expected a "
                         "duration: a number with optional ms, s, m, h or d");
    }
    expect_err(MINIMAL "tag_ttl = 31d\n",
               "test.conf:4: 'tag_ttl' in [registry \"r\"] must be between 0 and 30d");
    expect_err(MINIMAL "[cache]\ntag_ttl = 2592000001ms\n",
               "test.conf:5: 'tag_ttl' in [cache] must be between 0 and 30d");
    expect_err(MINIMAL "[cache]\ntag_ttl = 99999999999999999d\n",
               "test.conf:5: bad value for 'tag_ttl' in [cache]: expected a duration: a number "
               "with optional ms, s, m, h or d");
}

static void test_url_values(void)
{
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = ftp://r.example.com\n",
               "test.conf:3: bad value for 'url' in [registry \"r\"]: the scheme must be http or "
               "https");
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = https://u:secret@r.example.com\n",
               "test.conf:3: bad value for 'url' in [registry \"r\"]: credentials in the url are "
               "not allowed; use user and password_file");
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = https://r.example.com/v2\n",
               "test.conf:3: bad value for 'url' in [registry \"r\"]: a path, query or fragment "
               "is not allowed");
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = https://r.example.com?x\n",
               "test.conf:3: bad value for 'url' in [registry \"r\"]: a path, query or fragment "
               "is not allowed");
    expect_err(
        "[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = r.example.com\n",
        "test.conf:3: bad value for 'url' in [registry \"r\"]: expected http(s)://host[:port]");
    expect_err(
        "[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = https://r.example.com:0\n",
        "test.conf:3: bad value for 'url' in [registry \"r\"]: expected http(s)://host[:port]");
    expect_err(
        "[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = https://r.example.com:65536\n",
        "test.conf:3: bad value for 'url' in [registry \"r\"]: expected http(s)://host[:port]");
    expect_err(MINIMAL "token_realms = https://a.example.com/t,\n",
               "test.conf:4: bad value for 'token_realms' in [registry \"r\"]: empty list item");
    expect_err(MINIMAL "token_realms = https://a.example.com/t, ftp://b/\n",
               "test.conf:4: bad value for 'token_realms' in [registry \"r\"]: the scheme must be "
               "http or https");
    expect_err(MINIMAL "token_realms = https://a@b/\n",
               "test.conf:4: bad value for 'token_realms' in [registry \"r\"]: credentials in a "
               "realm url are not allowed");
    expect_err(MINIMAL "token_realms = auth.example.com\n",
               "test.conf:4: bad value for 'token_realms' in [registry \"r\"]: expected a "
               "comma-separated list of http(s)://host[:port][/path]");
}

static void test_listen_addresses(void)
{
    static const char *const bad[] = {"5000",         ":5000",         "host:",     "host:0",
                                      "host:65536",   "::1:5000",      "[::1]5000", "[::1]",
                                      "[zz::1]:5000", "h st:5000",     "a..b:5000", "host:50:00",
                                      "*:5000",       "[1.2.3.4]:5000"};
    char text[256], want[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "[registry \"r\"]\nurl = https://r\n[listen \"%s\"]\n",
                 bad[i]);
        snprintf(want, sizeof(want),
                 "test.conf:3: bad listen address \"%s\": expected host:port or [v6]:port (port "
                 "1-65535)",
                 bad[i]);
        expect_err(text, want);
    }
}

static void test_syntax_errors(void)
{
    expect_err(MINIMAL "\n[registry \"x\"]\nurl = https://x\npasword = hunter2\n",
               "test.conf:7: unknown key 'pasword' in [registry \"x\"]");
    expect_err("user = x\n" MINIMAL, "test.conf:1: key 'user' outside a section");
    expect_err(MINIMAL "user\n", "test.conf:4: expected 'key = value' or a [section]");
    expect_err(MINIMAL "user = a\nuser = b\n",
               "test.conf:5: duplicate key 'user' in [registry \"r\"] (first on line 4)");
    expect_err(MINIMAL "[registry \"R\"]\nurl = https://x\n",
               "test.conf:4: duplicate section [registry \"R\"]");
    expect_err(MINIMAL "[listen \"127.0.0.1:5000\"]\n",
               "test.conf:4: duplicate section [listen \"127.0.0.1:5000\"] (same address as "
               "[listen \"127.0.0.1:5000\"])");
    expect_err(MINIMAL "[listen \"LOCALHOST:1\"]\n[listen \"localhost:1\"]\n",
               "test.conf:5: duplicate section [listen \"localhost:1\"] (same address as [listen "
               "\"LOCALHOST:1\"])");
    expect_err(MINIMAL "[cache]\n[cache]\n", "test.conf:5: duplicate section [cache]");
    expect_err(MINIMAL "[mirror \"x\"]\n", "test.conf:4: unknown section [mirror]");
    expect_err(MINIMAL "[Registry \"x\"]\n",
               "test.conf:4: malformed section header: expected [kind] or [kind \"name\"]");
    expect_err(MINIMAL "[registry \"x\"\n",
               "test.conf:4: malformed section header: expected [kind] or [kind \"name\"]");
    expect_err(MINIMAL "[registry x]\n",
               "test.conf:4: malformed section header: expected [kind] or [kind \"name\"]");
    expect_err(MINIMAL "[registry \"x\"] # c\n",
               "test.conf:4: malformed section header: expected [kind] or [kind \"name\"]");
    expect_err(MINIMAL "[]\n",
               "test.conf:4: malformed section header: expected [kind] or [kind \"name\"]");
    expect_err(MINIMAL "[registry \"a\"b\"]\n",
               "test.conf:4: section name may not contain quotes or control characters");
    expect_err(MINIMAL "[registry \"a\tb\"]\n",
               "test.conf:4: section name may not contain quotes or control characters");
    expect_err(MINIMAL "[registry]\n",
               "test.conf:4: section [registry] needs a name: [registry \"NAME\"]");
    expect_err(MINIMAL "[listen]\n",
               "test.conf:4: section [listen] needs a name: [listen \"ADDR\"]");
    expect_err(MINIMAL "[registry \"\"]\n", "test.conf:4: empty name in section [registry \"\"]");
    expect_err(MINIMAL "[cache \"x\"]\n", "test.conf:4: section [cache] takes no name");
    expect_err(MINIMAL "user =\n", "test.conf:4: empty value for 'user' in [registry \"r\"]");
    expect_err(MINIMAL "user = \"\"\n", "test.conf:4: empty value for 'user' in [registry \"r\"]");
    expect_err(MINIMAL "user = \"abc\n",
               "test.conf:4: bad value for 'user' in [registry \"r\"]: unbalanced quotes");
    expect_err(MINIMAL "user = \"a\"b\"\n",
               "test.conf:4: bad value for 'user' in [registry \"r\"]: unbalanced quotes");
    expect_err(MINIMAL "user = a\x01"
                       "b\n",
               "test.conf:4: bad value for 'user' in [registry \"r\"]: control character");
    expect_err(MINIMAL " = x\n", "test.conf:4: invalid key name");
    expect_err(MINIMAL "password hunter2 = x\n", "test.conf:4: invalid key name");
    expect_err(MINIMAL "repos = a/*\n", "test.conf:4: unknown key 'repos' in [registry \"r\"]");
    expect_err(MINIMAL "url = https://r\n",
               "test.conf:4: duplicate key 'url' in [registry \"r\"] (first on line 3)");
    expect_err(MINIMAL "[cache]\nurl = https://x\n", "test.conf:5: unknown key 'url' in [cache]");
    expect_err("[listen \"1.2.3.4:1\"]\nurl = https://x\n",
               "test.conf:2: unknown key 'url' in [listen \"1.2.3.4:1\"]");
    /* Literal values: quotes only around the whole value, '#' and ';' are not comments. */
    struct rp_conf *c = parse(MINIMAL "user = a \"b\" # c ; d\n");
    CHECK(c != NULL);
    if (c)
        CHECK_STR(reg0(c)->user, "a \"b\" # c ; d");
    rp_conf_free(c);
}

static void test_structure_errors(void)
{
    expect_err("", "test.conf: no [listen \"ADDR\"] section");
    expect_err("[registry \"r\"]\nurl = https://r\n", "test.conf: no [listen \"ADDR\"] section");
    expect_err("[listen \"1.2.3.4:1\"]\n[cache]\n", "test.conf: no [registry \"NAME\"] section");
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nuser = x\n[cache]\n",
               "test.conf:2: missing required key 'url' in [registry \"r\"]");
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\n",
               "test.conf:2: missing required key 'url' in [registry \"r\"]");
    expect_err("[listen \"1.2.3.4:1\"]\ndefault = nope\n[registry \"r\"]\nurl = https://r\n",
               "test.conf:2: default 'nope' in [listen \"1.2.3.4:1\"] names no [registry]");
    expect_err("[listen \"1.2.3.4:1\"]\ntls_cert = a.crt\n" MINIMAL,
               "test.conf:2: 'tls_cert' in [listen \"1.2.3.4:1\"] needs 'tls_key'");
    expect_err(MINIMAL "[listen \"1.2.3.4:1\"]\n\ntls_key = a.key\n",
               "test.conf:6: 'tls_key' in [listen \"1.2.3.4:1\"] needs 'tls_cert'");
    expect_err(MINIMAL "password = x\n",
               "test.conf:4: 'password' in [registry \"r\"] needs 'user'");
    /* NUL bytes, long lines, too many sections. */
    struct rp_conf *c = NULL;
    static const char nul[] = MINIMAL "user = a\0b\n";
    CHECK_INT(rp_conf_parse(nul, sizeof(nul) - 1, "test.conf", &c, err, sizeof(err)), -1);
    CHECK_STR(err, "test.conf:4: NUL byte in line");
    char *big = rp_xmalloc(8192);
    size_t n = (size_t)snprintf(big, 8192, MINIMAL "user = ");
    memset(big + n, 'a', 4097 - 7);
    big[n + 4097 - 7] = '\n';
    CHECK_INT(rp_conf_parse(big, n + 4097 - 7 + 1, "test.conf", &c, err, sizeof(err)), -1);
    CHECK_STR(err, "test.conf:4: line longer than 4096 bytes");
    /* Exactly 4096 bytes is fine. */
    CHECK_INT(rp_conf_parse(big, n + 4096 - 7, "test.conf", &c, err, sizeof(err)), 0);
    if (c)
        CHECK_INT(strlen(reg0(c)->user), 4096 - 7);
    rp_conf_free(c);
    free(big);

    struct rp_buf b;
    rp_buf_init(&b, 1 << 20);
    rp_buf_addf(&b, "[listen \"1.2.3.4:1\"]\n");
    for (int i = 0; i < 256; i++)
        rp_buf_addf(&b, "[registry \"r%d\"]\nurl = https://r%d\n", i, i);
    c = NULL;
    CHECK_INT(rp_conf_parse(b.data, b.len, "test.conf", &c, err, sizeof(err)), -1);
    CHECK_STR(err, "test.conf:512: too many sections (at most 256)");
    rp_buf_reset(&b);
    rp_buf_addf(&b, "[listen \"1.2.3.4:1\"]\n");
    for (int i = 0; i < 255; i++)
        rp_buf_addf(&b, "[registry \"r%d\"]\nurl = https://r%d\n", i, i);
    CHECK_INT(rp_conf_parse(b.data, b.len, "test.conf", &c, err, sizeof(err)), 0);
    if (c)
        CHECK_INT(c->n_registries, 255);
    rp_conf_free(c);
    rp_buf_free(&b);

    /* CRLF line endings and a byte order mark are accepted. */
    c = parse("\xef\xbb\xbf[listen \"1.2.3.4:1\"]\r\n[registry \"r\"]\r\nurl = https://r\r\n");
    CHECK(c != NULL);
    if (c)
        CHECK_STR(reg0(c)->url, "https://r");
    rp_conf_free(c);
    /* No output and no crash on NULL arguments. */
    CHECK_INT(rp_conf_parse(NULL, 0, NULL, &c, err, sizeof(err)), -1);
    CHECK_STR(err, "<config>: no [listen \"ADDR\"] section");
    CHECK_INT(rp_conf_parse(MINIMAL, strlen(MINIMAL), "t", NULL, err, sizeof(err)), -1);
    CHECK_INT(rp_conf_parse("x", 1, "t", &c, NULL, 0), -1);
    rp_conf_free(NULL);
}

/* ---- files ---- */

static char tmpdir[64];

static void write_file(const char *name, const char *content, size_t len)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK(fwrite(content, 1, len, f) == len);
    fclose(f);
}

static void remove_file(const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    unlink(path);
}

static void test_password_file(void)
{
    char text[1024], src[256];
    struct rp_conf *c = NULL;
    static const char token[] = "s3cr3t-t0ken\r\nsecond line\n";
    write_file("token", token, strlen(token));
    write_file("empty", "", 0);
    write_file("blank", "\nx\n", 3);
    write_file("noeol", "abc", 3);

    /* Absolute path. */
    snprintf(text, sizeof(text), MINIMAL "user = 1|u\npassword_file = %s/token\n", tmpdir);
    c = parse(text);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(reg0(c)->password, "s3cr3t-t0ken");
        CHECK(strncmp(reg0(c)->password_file, tmpdir, strlen(tmpdir)) == 0);
    }
    rp_conf_free(c);

    /* Relative to the config file's directory, whatever the cwd. */
    snprintf(src, sizeof(src), "%s/regproxy.conf", tmpdir);
    snprintf(text, sizeof(text), MINIMAL "user = 1|u\npassword_file = noeol\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (c) {
        CHECK_STR(reg0(c)->password, "abc");
        char want[256];
        snprintf(want, sizeof(want), "%s/noeol", tmpdir);
        CHECK_STR(reg0(c)->password_file, want);
    }
    rp_conf_free(c);

    /* Through rp_conf_load_file, also relative. */
    snprintf(text, sizeof(text), MINIMAL "user = 1|u\npassword_file = \"token\"\n");
    write_file("regproxy.conf", text, strlen(text));
    CHECK_INT(rp_conf_load_file(src, &c, err, sizeof(err)), 0);
    if (c) {
        CHECK_STR(c->source, src);
        CHECK_STR(reg0(c)->password, "s3cr3t-t0ken");
    }
    rp_conf_free(c);

    /* Errors name the file, never its content. */
    char want[512];
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = empty\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:5: password_file '%s/empty' in [registry \"r\"]: empty first line", src, tmpdir);
    CHECK_STR(err, want);
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = blank\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:5: password_file '%s/blank' in [registry \"r\"]: empty first line", src, tmpdir);
    CHECK_STR(err, want);
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = missing\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:5: password_file '%s/missing' in [registry \"r\"]: No such file or directory", src,
             tmpdir);
    CHECK_STR(err, want);
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = .\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:5: password_file '%s/.' in [registry \"r\"]: not a regular file", src, tmpdir);
    CHECK_STR(err, want);

    /* At most 64 KiB. */
    char *big = rp_xmalloc(65537);
    memset(big, 'x', 65537);
    write_file("big", big, 65537);
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = big\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:5: password_file '%s/big' in [registry \"r\"]: larger than 64 KiB", src, tmpdir);
    CHECK_STR(err, want);
    write_file("big", big, 65536);
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (c)
        CHECK_INT(strlen(reg0(c)->password), 65536);
    rp_conf_free(c);
    free(big);

    /* Mutually exclusive with password, in either order; both need user. */
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword = x\npassword_file = token\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:6: 'password_file' and 'password' in [registry \"r\"] are mutually exclusive",
             src);
    CHECK_STR(err, want);
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = token\npassword = x\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:6: 'password' and 'password_file' in [registry \"r\"] are mutually exclusive",
             src);
    CHECK_STR(err, want);
    snprintf(text, sizeof(text), MINIMAL "password_file = token\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s:4: 'password_file' in [registry \"r\"] needs 'user'", src);
    CHECK_STR(err, want);
    CHECK(strstr(err, "s3cr3t") == NULL);

    remove_file("token");
    remove_file("empty");
    remove_file("blank");
    remove_file("noeol");
    remove_file("big");
    remove_file("regproxy.conf");
}

static void test_ca_file(void)
{
    char text[1024], src[256], want[512];
    struct rp_conf *c = NULL;
    snprintf(src, sizeof(src), "%s/regproxy.conf", tmpdir);
    write_file("ca.pem", "-----BEGIN CERTIFICATE-----\n", 28);
    snprintf(text, sizeof(text), MINIMAL "ca_file = ca.pem\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    snprintf(want, sizeof(want), "%s/ca.pem", tmpdir);
    if (c)
        CHECK_STR(reg0(c)->ca_file, want);
    rp_conf_free(c);
    snprintf(text, sizeof(text), MINIMAL "ca_file = nope.pem\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:4: ca_file '%s/nope.pem' in [registry \"r\"]: No such file or directory", src,
             tmpdir);
    CHECK_STR(err, want);
    /* A FIFO must not hang the parser. */
    char fifo[256];
    snprintf(fifo, sizeof(fifo), "%s/fifo", tmpdir);
    CHECK_INT(mkfifo(fifo, 0600), 0);
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = fifo\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    CHECK(strstr(err, "not a regular file") != NULL);
    remove_file("fifo");
    remove_file("ca.pem");
}

static void test_load_file(void)
{
    char path[256], want[512];
    struct rp_conf *c = NULL;
    snprintf(path, sizeof(path), "%s/big.conf", tmpdir);
    char *big = rp_xmalloc((1 << 20) + 1);
    memset(big, '#', (1 << 20) + 1);
    for (size_t i = 63; i < (1 << 20) + 1; i += 64)
        big[i] = '\n';
    write_file("big.conf", big, (1 << 20) + 1);
    CHECK_INT(rp_conf_load_file(path, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s: file is larger than 1 MiB", path);
    CHECK_STR(err, want);
    /* Exactly 1 MiB of comments is read (and then lacks sections). */
    write_file("big.conf", big, 1 << 20);
    CHECK_INT(rp_conf_load_file(path, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s: no [listen \"ADDR\"] section", path);
    CHECK_STR(err, want);
    free(big);
    remove_file("big.conf");
    CHECK_INT(rp_conf_load_file(path, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", path);
    CHECK_STR(err, want);
    CHECK(c == NULL);
}

static void test_password_never_in_errors(void)
{
    /* Whatever goes wrong on or after a password line, the value is not echoed. */
    static const char *const texts[] = {
        MINIMAL "password = hunter2\n",
        MINIMAL "pasword = hunter2\n",
        MINIMAL "password hunter2\n",
        MINIMAL "password: hunter2\n",
        MINIMAL "user = u\npassword = hunter2\npassword = hunter2\n",
        MINIMAL "user = u\npassword = \"hunter2\n",
        MINIMAL "user = u\npassword = hunter2\x01\n",
        MINIMAL "user = u\npassword = hunter2\n[cache]\nmax_size = hunter2\n",
        "[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = https://u:hunter2@r\n",
        "[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nurl = https://r\ntoken_realms = "
        "https://u:hunter2@r/\n",
        "[listen \"1.2.3.4:1\"]\ndefault = x\n[registry \"r\"]\nurl = https://r\nuser = "
        "u\npassword = hunter2\n",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct rp_conf *c = NULL;
        CHECK_INT(rp_conf_parse(texts[i], strlen(texts[i]), "test.conf", &c, err, sizeof(err)), -1);
        CHECK(err[0] != '\0');
        if (strstr(err, "hunter2"))
            fprintf(stderr, "leaked in: %s\n", err);
        CHECK(strstr(err, "hunter2") == NULL);
    }
}

/* ---- URLs, lookup, realms ---- */

static void test_split_url(void)
{
    char *scheme = NULL, *host = NULL, *path = NULL;
    int port = -1;
    CHECK_INT(
        rp_conf_split_url("HTTPS://Registry.RedHat.IO/auth/x?y=1", &scheme, &host, &port, &path),
        0);
    CHECK_STR(scheme, "https");
    CHECK_STR(host, "registry.redhat.io");
    CHECK_INT(port, 443);
    CHECK_STR(path, "/auth/x?y=1");
    free(scheme);
    free(host);
    free(path);

    CHECK_INT(rp_conf_split_url("http://[::1]:8080", &scheme, &host, &port, &path), 0);
    CHECK_STR(scheme, "http");
    CHECK_STR(host, "::1");
    CHECK_INT(port, 8080);
    CHECK_STR(path, "");
    free(scheme);
    free(host);
    free(path);

    CHECK_INT(rp_conf_split_url("http://h", NULL, NULL, &port, NULL), 0);
    CHECK_INT(port, 80);
    CHECK_INT(rp_conf_split_url("foo+bar://h", NULL, NULL, &port, NULL), 0);
    CHECK_INT(port, 0);
    CHECK_INT(rp_conf_split_url("https://127.0.0.1:5001?x", NULL, &host, &port, &path), 0);
    CHECK_STR(host, "127.0.0.1");
    CHECK_INT(port, 5001);
    CHECK_STR(path, "?x");
    free(host);
    free(path);

    static const char *const bad[] = {
        NULL,
        "",
        "h",
        "://h",
        "https://",
        "https:///x",
        "https://:1",
        "https://h:",
        "https://h:0",
        "https://h:65536",
        "https://h:x",
        "https://h:1:2",
        "https://a@b/",
        "https://a:b@c",
        "https://[::1",
        "https://[::1]x",
        "https://[zz]/",
        "https://h h/",
        "https://h/a b",
        "1http://h",
        "ht_tp://h",
        "https://a..b/",
        "https://.a/",
        "https://a./",
        "https://h\x7f",
        "https://h/\xc3\xa9",
        "https://[::1]:",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        scheme = host = path = NULL;
        int r = rp_conf_split_url(bad[i], &scheme, &host, &port, &path);
        if (r != -1)
            fprintf(stderr, "accepted: %s\n", bad[i] ? bad[i] : "(null)");
        CHECK_INT(r, -1);
        CHECK(scheme == NULL && host == NULL && path == NULL);
    }
}

static void test_find_registry(void)
{
    struct rp_conf *c = parse("[listen \"1.2.3.4:1\"]\n"
                              "[registry \"rh\"]\nurl = https://registry.redhat.io\n"
                              "[registry \"local\"]\nurl = http://127.0.0.1:5001\n"
                              "[registry \"hub\"]\nurl = https://registry-1.docker.io\n"
                              "[registry \"quay.io\"]\nurl = https://quay.io:443\n"
                              "[registry \"v6\"]\nurl = https://[::1]:444\n");
    CHECK(c != NULL);
    if (!c)
        return;
#define FIND(s) rp_conf_find_registry(c, s, strlen(s))
    CHECK(FIND("rh") == &c->registries[0]);
    CHECK(FIND("RH") == &c->registries[0]);
    CHECK(FIND("registry.redhat.io") == &c->registries[0]);
    CHECK(FIND("Registry.RedHat.io") == &c->registries[0]);
    CHECK(FIND("127.0.0.1:5001") == &c->registries[1]);
    CHECK(FIND("127.0.0.1") == &c->registries[1]);
    CHECK(FIND("docker.io") == &c->registries[2]);
    CHECK(FIND("index.docker.io") == &c->registries[2]);
    CHECK(FIND("registry-1.docker.io") == &c->registries[2]);
    CHECK(FIND("quay.io") == &c->registries[3]);
    CHECK_STR(c->registries[3].hostport, "quay.io");
    CHECK(FIND("[::1]:444") == &c->registries[4]);
    CHECK(FIND("::1") == &c->registries[4]);
    CHECK(FIND("nope") == NULL);
    CHECK(FIND("127.0.0.1:5002") == NULL);
    CHECK(FIND("") == NULL);
    CHECK(rp_conf_find_registry(c, "rhx", 2) == &c->registries[0]); /* counted */
    CHECK(rp_conf_find_registry(NULL, "rh", 2) == NULL);
#undef FIND
    rp_conf_free(c);

    /* A section name wins over another registry's host. */
    c = parse("[listen \"1.2.3.4:1\"]\n"
              "[registry \"a\"]\nurl = https://quay.io\n"
              "[registry \"quay.io\"]\nurl = https://mirror.example.com\n");
    CHECK(c != NULL);
    if (c)
        CHECK(rp_conf_find_registry(c, "quay.io", 7) == &c->registries[1]);
    rp_conf_free(c);
}

static void test_realm_policy(void)
{
    struct rp_conf *c =
        parse("[listen \"1.2.3.4:1\"]\n"
              "[registry \"rh\"]\nurl = https://registry.redhat.io\n"
              "[registry \"hub\"]\nurl = https://registry-1.docker.io\n"
              "[registry \"local\"]\nurl = https://127.0.0.1:5001\n"
              "[registry \"listed\"]\nurl = https://r.example.com\n"
              "token_realms = https://auth.example.com/token, https://other.example.net/\n"
              "[registry \"plain\"]\nurl = http://reg.internal.example:5000\n"
              "[registry \"v6\"]\nurl = https://[2001:db8::1]\n");
    CHECK(c != NULL);
    if (!c)
        return;
    const struct rp_conf_registry *rh = &c->registries[0], *hub = &c->registries[1],
                                  *local = &c->registries[2], *listed = &c->registries[3],
                                  *plain = &c->registries[4], *v6 = &c->registries[5];
    CHECK(rp_conf_realm_allowed(
        rh, "https://registry.redhat.io/auth/realms/rhcc/protocol/redhat-docker-v2/auth"));
    CHECK(rp_conf_realm_allowed(rh, "https://sso.redhat.io/x"));
    CHECK(rp_conf_realm_allowed(rh, "https://SSO.RedHat.io/x"));
    CHECK(rp_conf_realm_allowed(rh, "https://registry.redhat.io:8443/auth"));
    CHECK(!rp_conf_realm_allowed(rh, "http://registry.redhat.io/auth"));
    CHECK(!rp_conf_realm_allowed(rh, "https://evil.example/"));
    CHECK(!rp_conf_realm_allowed(rh, "https://redhat.io.evil.com/"));
    CHECK(!rp_conf_realm_allowed(rh, "https://notredhat.io/"));
    CHECK(!rp_conf_realm_allowed(rh, "https://u@registry.redhat.io/"));
    CHECK(!rp_conf_realm_allowed(rh, "https://u:p@sso.redhat.io/"));
    CHECK(!rp_conf_realm_allowed(rh, "ftp://registry.redhat.io/"));
    CHECK(!rp_conf_realm_allowed(rh, "registry.redhat.io/auth"));
    CHECK(!rp_conf_realm_allowed(rh, ""));
    CHECK(!rp_conf_realm_allowed(rh, NULL));
    CHECK(!rp_conf_realm_allowed(NULL, "https://registry.redhat.io/"));

    CHECK(rp_conf_realm_allowed(hub, "https://auth.docker.io/token"));
    CHECK(!rp_conf_realm_allowed(hub, "https://auth.docker.com/token"));

    CHECK(rp_conf_realm_allowed(local, "https://127.0.0.1:6000/token"));
    CHECK(rp_conf_realm_allowed(local, "https://127.0.0.1/token"));
    CHECK(!rp_conf_realm_allowed(local, "https://localhost:6000/token"));
    CHECK(!rp_conf_realm_allowed(local, "https://127.0.0.2/"));
    CHECK(!rp_conf_realm_allowed(local, "https://10.127.0.0.1/"));
    CHECK(!rp_conf_realm_allowed(local, "https://x.0.0.1/"));
    CHECK(!rp_conf_realm_allowed(local, "http://127.0.0.1:6000/token"));

    CHECK(rp_conf_realm_allowed(listed, "https://auth.example.com/token"));
    CHECK(rp_conf_realm_allowed(listed, "https://auth.example.com/token?x"));
    CHECK(rp_conf_realm_allowed(listed, "https://auth.example.com/token/sub"));
    CHECK(rp_conf_realm_allowed(listed, "https://AUTH.example.com:443/token"));
    CHECK(rp_conf_realm_allowed(listed, "https://other.example.net/anything"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/tokenx"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com.evil/token"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com:8443/token"));
    CHECK(!rp_conf_realm_allowed(listed, "http://auth.example.com/token"));
    CHECK(!rp_conf_realm_allowed(listed, "https://a@auth.example.com/token"));
    /* token_realms replaces the default policy, own host included. */
    CHECK(!rp_conf_realm_allowed(listed, "https://r.example.com/token"));

    CHECK(rp_conf_realm_allowed(plain, "http://reg.internal.example:5000/token"));
    CHECK(rp_conf_realm_allowed(plain, "http://auth.internal.example/token"));
    CHECK(rp_conf_realm_allowed(plain, "https://auth.internal.example/token"));
    CHECK(!rp_conf_realm_allowed(plain, "http://auth.example/token"));
    CHECK(!rp_conf_realm_allowed(plain, "http://internal.example/token")); /* not a subdomain */

    CHECK(rp_conf_realm_allowed(v6, "https://[2001:DB8::1]:8443/t"));
    CHECK(!rp_conf_realm_allowed(v6, "https://[2001:db8::2]/t"));
    rp_conf_free(c);
}

static void test_option_table(void)
{
    size_t n = 0;
    const struct rp_conf_option *o = rp_conf_options(&n);
    CHECK(n >= 16);
    int seen_url = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(o[i].key && o[i].key[0]);
        CHECK(o[i].help && o[i].help[0]);
        CHECK(strcmp(rp_conf_type_name(o[i].type), "?") != 0);
        CHECK(strcmp(rp_conf_section_name(o[i].section), "?") != 0);
        if (o[i].section == RP_CONF_SECTION_REGISTRY && strcmp(o[i].key, "url") == 0)
            seen_url = (o[i].flags & RP_CONF_F_REQUIRED) != 0;
        /* Keys are unique within a section. */
        for (size_t j = 0; j < i; j++)
            CHECK(o[j].section != o[i].section || strcmp(o[j].key, o[i].key) != 0);
        /* requires/conflicts name keys of the same section. */
        const char *rel[2] = {o[i].requires, o[i].conflicts};
        for (int k = 0; k < 2; k++) {
            if (!rel[k])
                continue;
            bool found = false;
            for (size_t j = 0; j < n; j++)
                found |= o[j].section == o[i].section && strcmp(o[j].key, rel[k]) == 0;
            CHECK(found);
        }
    }
    CHECK(seen_url);
    CHECK_STR(rp_conf_type_name(RP_CONF_SECRET), "secret");
    CHECK_STR(rp_conf_section_name(RP_CONF_SECTION_CACHE), "cache");
    /* Every key is accepted in its section (the table drives the parser). */
    for (size_t i = 0; i < n; i++) {
        if (o[i].section != RP_CONF_SECTION_CACHE || !o[i].default_text)
            continue;
        char text[256];
        snprintf(text, sizeof(text), MINIMAL "[cache]\n%s = %s\n", o[i].key, o[i].default_text);
        struct rp_conf *c = parse(text);
        CHECK(c != NULL);
        rp_conf_free(c);
    }
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/rp-test-conf-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_default_text);
    RUN(test_minimal_defaults);
    RUN(test_several_listeners_any_order);
    RUN(test_registry_fields);
    RUN(test_bool_values);
    RUN(test_size_values);
    RUN(test_duration_values);
    RUN(test_url_values);
    RUN(test_listen_addresses);
    RUN(test_syntax_errors);
    RUN(test_structure_errors);
    RUN(test_password_file);
    RUN(test_ca_file);
    RUN(test_load_file);
    RUN(test_password_never_in_errors);
    RUN(test_split_url);
    RUN(test_find_registry);
    RUN(test_realm_policy);
    RUN(test_option_table);
    rmdir(tmpdir);
    UNIT_EXIT();
}
