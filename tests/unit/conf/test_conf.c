/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for conf/: the option table, parsing and its error messages, password files,
 * URL splitting, registry lookup and the token-realm policy; auth files (docker config.json
 * and dockerconfigjson Secrets), credential file modes and the change watch; the
 * openshift-ansible inventory importer; docs/configuration.md against the table. */
#include "conf/conf.h"
#include "conf/internal.h"
#include "tests/unit/unit.h"
#include "util/util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
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
    CHECK(c->cache.scrub_interval_ms == 0);
    CHECK(c->cache.scrub_rate == 50ULL << 20);

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
    CHECK_INT(c->listens[0].idle_timeout_ms, 60000);
    CHECK_INT(c->admin.drain_timeout_ms, 25000);
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
                              "[listen \"127.0.0.2:65535\"]\n"
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
    CHECK_STR(c->listens[3].host, "127.0.0.2");
    CHECK_INT(c->listens[3].port, 65535);
    CHECK(c->listens[3].def == NULL);
    CHECK_STR(c->registries[0].url, "https://quay.io");              /* trailing slash stripped */
    CHECK_STR(c->registries[1].url, "https://registry-1.docker.io"); /* quotes stripped */
    rp_conf_free(c);
}

static void test_registry_fields(void)
{
    /* Certificate paths must name readable files; what is in them is the server's business. */
    struct rp_conf *c = parse("[listen \"127.0.0.1:5000\"]\n"
                              "tls_cert = /etc/passwd\n"
                              "tls_key = Makefile\n"
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
    CHECK_STR(c->listens[0].tls_cert, "/etc/passwd");
    CHECK_STR(c->listens[0].tls_key, "Makefile"); /* source has no directory */
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
    struct rp_conf *c = parse("[listen \"127.0.0.1:5000\"]\nidle_timeout = 1500ms\n"
                              "[registry \"r\"]\nurl = https://r.example.com\n");
    CHECK(c != NULL);
    if (c)
        CHECK_INT(c->listens[0].idle_timeout_ms, 1500);
    rp_conf_free(c);
    c = parse(MINIMAL "[admin]\ndrain_timeout = 0\n");
    CHECK(c != NULL);
    if (c)
        CHECK_INT(c->admin.drain_timeout_ms, 0);
    rp_conf_free(c);
    expect_err(MINIMAL "[admin]\ndrain_timeout = 2h\n",
               "test.conf:5: 'drain_timeout' in [admin] must be between 0 and 1h");
    expect_err("[listen \"127.0.0.1:5000\"]\nidle_timeout = 999ms\n",
               "test.conf:2: 'idle_timeout' in [listen \"127.0.0.1:5000\"] must be between 1s "
               "and 1d");
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
    expect_err(MINIMAL "token_realms = https://a.example.com/t/../u\n",
               "test.conf:4: bad value for 'token_realms' in [registry \"r\"]: dot segments, '\\' "
               "or percent-encoded '.', '/' or '\\' are not allowed in a realm path");
    expect_err(MINIMAL "token_realms = https://a.example.com/t%2Fu\n",
               "test.conf:4: bad value for 'token_realms' in [registry \"r\"]: dot segments, '\\' "
               "or percent-encoded '.', '/' or '\\' are not allowed in a realm path");
    expect_err(MINIMAL "token_realms = auth.example.com\n",
               "test.conf:4: bad value for 'token_realms' in [registry \"r\"]: expected a "
               "comma-separated list of http(s)://host[:port][/path]");
}

static void test_listen_addresses(void)
{
    static const char *const bad[] = {
        "5000",      ":5000",          "host:",          "host:0",     "host:65536",   "::1:5000",
        "[::1]5000", "[::1]",          "[zz::1]:5000",   "h st:5000",  "a..b:5000",    "host:50:00",
        "*:5000",    "[1.2.3.4]:5000", "localhost:5000", "1.2.3:5000", "[::1%lo]:5000"};
    char text[256], want[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "[registry \"r\"]\nurl = https://r\n[listen \"%s\"]\n",
                 bad[i]);
        snprintf(want, sizeof(want),
                 "test.conf:3: bad listen address \"%s\": expected IPV4:PORT or [IPV6]:PORT, an "
                 "address and not a host name (port 1-65535)",
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
    expect_err(MINIMAL "[listen \"[FD00::0:1]:1\"]\n[listen \"[fd00::1]:1\"]\n",
               "test.conf:5: duplicate section [listen \"[fd00::1]:1\"] (same address as [listen "
               "\"[FD00::0:1]:1\"])");
    expect_err(MINIMAL "[listen \"127.0.0.2:1\"]\n[listen \"0.0.0.0:1\"]\n",
               "test.conf:5: overlapping section [listen \"0.0.0.0:1\"] (a wildcard address takes "
               "the port of [listen \"127.0.0.2:1\"])");
    expect_err(MINIMAL "[listen \"localhost:1\"]\n",
               "test.conf:4: bad listen address \"localhost:1\": expected IPV4:PORT or "
               "[IPV6]:PORT, an address and not a host name (port 1-65535)");
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
    expect_err(MINIMAL "[registry \"my reg\"]\n",
               "test.conf:4: bad registry name \"my reg\": letters, digits, '.', '_', '-', and "
               "':' or '[]' of a host:port, as in an image reference");
    expect_err(MINIMAL "[registry \"quay.io/org\"]\n",
               "test.conf:4: bad registry name \"quay.io/org\": letters, digits, '.', '_', '-', "
               "and ':' or '[]' of a host:port, as in an image reference");
    expect_err(MINIMAL "[registry \"a=b\"]\nurl = https://x\n",
               "test.conf:4: bad registry name \"a=b\": letters, digits, '.', '_', '-', and "
               "':' or '[]' of a host:port, as in an image reference");
    struct rp_conf *named = parse(MINIMAL "[registry \"Reg_1.example-x:5000\"]\nurl = https://x\n"
                                          "[registry \"[fd00::1]:5000\"]\nurl = https://y\n");
    CHECK_STR(err, "");
    CHECK(named && named->n_registries == 3);
    rp_conf_free(named);
    expect_err("[listen \"127.0.0.1:1\"]\n[cache]\nscrub_rate = 1K\n",
               "test.conf:3: 'scrub_rate' in [cache] must be between 1M and 1048576T");
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
    expect_err(MINIMAL "repo = a/*\n", "test.conf:4: unknown key 'repo' in [registry \"r\"]");
    expect_err(MINIMAL "url = https://r\n",
               "test.conf:4: duplicate key 'url' in [registry \"r\"] (first on line 3)");
    expect_err(MINIMAL "[cache]\nurl = https://x\n", "test.conf:5: unknown key 'url' in [cache]");
    expect_err("[listen \"1.2.3.4:1\"]\nurl = https://x\n",
               "test.conf:2: unknown key 'url' in [listen \"1.2.3.4:1\"]");
    /* Literal values: quotes only around the whole value, '#' and ';' are not comments. */
    struct rp_conf *c = parse(MINIMAL "user = a \"b\" # c ; d\npassword = x\n");
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
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\nuser = x\npassword = y\n[cache]\n",
               "test.conf:2: missing required key 'url' in [registry \"r\"]");
    expect_err("[listen \"1.2.3.4:1\"]\n[registry \"r\"]\n",
               "test.conf:2: missing required key 'url' in [registry \"r\"]");
    expect_err("[listen \"1.2.3.4:1\"]\ndefault = nope\n[registry \"r\"]\nurl = https://r\n",
               "test.conf:2: default 'nope' in [listen \"1.2.3.4:1\"] names no [registry]");
    expect_err("[listen \"1.2.3.4:1\"]\ntls_cert = Makefile\n" MINIMAL,
               "test.conf:2: 'tls_cert' in [listen \"1.2.3.4:1\"] needs 'tls_key'");
    expect_err(MINIMAL "[listen \"1.2.3.4:1\"]\n\ntls_key = Makefile\n",
               "test.conf:6: 'tls_key' in [listen \"1.2.3.4:1\"] needs 'tls_cert'");
    expect_err(MINIMAL "[listen \"1.2.3.4:1\"]\n\ntls_key = no-such.key\n",
               "test.conf:6: tls_key 'no-such.key' in [listen \"1.2.3.4:1\"]: No such file or "
               "directory");
    expect_err(MINIMAL "[listen \"1.2.3.4:1\"]\nallow = 10.0.0.1/8\n",
               "test.conf:5: bad value for 'allow' in [listen \"1.2.3.4:1\"]: host bits set after "
               "the prefix length: write the network's first address (10.0.0.0/8), or a single "
               "address (10.0.0.1 or 10.0.0.1/32)");
    expect_err(MINIMAL "[listen \"1.2.3.4:1\"]\nallow = fd00::1/8\n",
               "test.conf:5: bad value for 'allow' in [listen \"1.2.3.4:1\"]: host bits set after "
               "the prefix length: write the network's first address (10.0.0.0/8), or a single "
               "address (10.0.0.1 or 10.0.0.1/32)");
    expect_err(MINIMAL "[admin]\nlisten = 0.0.0.0:7\n[listen \"127.0.0.2:7\"]\n",
               "test.conf:5: [admin] listen 0.0.0.0:7 takes the port of [listen \"127.0.0.2:7\"]: "
               "give the admin listener another address or port, or off");
    expect_err(MINIMAL "[admin]\nlisten = [::ffff:127.0.0.2]:7\n[listen \"0.0.0.0:7\"]\n",
               "test.conf:5: [admin] listen [::ffff:127.0.0.2]:7 takes the port of [listen "
               "\"0.0.0.0:7\"]: give the admin listener another address or port, or off");
    expect_err(MINIMAL "[listen \"[::]:8\"]\n[listen \"127.0.0.2:8\"]\n",
               "test.conf:5: overlapping section [listen \"127.0.0.2:8\"] (a wildcard address "
               "takes the port of [listen \"[::]:8\"])");
    /* Linux binds these side by side: an IPv4 wildcard and an IPv6 address. */
    struct rp_conf *ok = parse(MINIMAL "[listen \"0.0.0.0:7000\"]\n[listen \"[::1]:7000\"]\n"
                                       "[admin]\nlisten = 0.0.0.0:5002\n");
    CHECK(ok != NULL);
    rp_conf_free(ok);
    /* Only the admin listener's default collides: it is turned off, with a warning, so a
     * configuration written before it existed still serves. */
    ok = parse(MINIMAL "[listen \"127.0.0.1:5001\"]\n");
    CHECK(ok != NULL);
    if (ok) {
        CHECK_STR(ok->admin.listen, "off");
        CHECK_INT(ok->n_warnings, 1);
        if (ok->n_warnings)
            CHECK_STR(ok->warnings[0], "test.conf: [listen \"127.0.0.1:5001\"] takes the admin "
                                       "listener's default port (127.0.0.1:5001): metrics and "
                                       "probes are off; set [admin] listen to another address to "
                                       "have them");
    }
    rp_conf_free(ok);
    expect_err(MINIMAL "user = x\n",
               "test.conf:4: 'user' in [registry \"r\"] needs 'password' or 'password_file'");
    expect_err(MINIMAL "password = x\n",
               "test.conf:4: 'password' in [registry \"r\"] needs 'user'");
    /* NUL bytes, long lines, too many sections. */
    struct rp_conf *c = NULL;
    static const char nul[] = MINIMAL "user = a\0b\n";
    CHECK_INT(rp_conf_parse(nul, sizeof(nul) - 1, "test.conf", &c, err, sizeof(err)), -1);
    CHECK_STR(err, "test.conf:4: NUL byte in line");
    char *big = rp_xmalloc(8192);
    size_t n = (size_t)snprintf(big, 8192, MINIMAL "password = x\nuser = ");
    memset(big + n, 'a', 4097 - 7);
    big[n + 4097 - 7] = '\n';
    CHECK_INT(rp_conf_parse(big, n + 4097 - 7 + 1, "test.conf", &c, err, sizeof(err)), -1);
    CHECK_STR(err, "test.conf:5: line longer than 4096 bytes");
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

static char tmpdir[64]; /* a longer $TMPDIR fails mkdtemp, clearly */

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
    /* Credential files others can read are refused; tests that want that say so. */
    CHECK(chmod(path, 0600) == 0);
}

static void write_file_mode(const char *name, const char *content, mode_t mode)
{
    char path[256];
    write_file(name, content, strlen(content));
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    CHECK(chmod(path, mode) == 0);
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

/* The egress proxy: a base url like the registry's, without credentials (they would sit in
 * the configuration unprotected). */
static void test_proxy(void)
{
    char text[1024], src[256];
    struct rp_conf *c = NULL;
    snprintf(src, sizeof(src), "%s/regproxy.conf", tmpdir);
    snprintf(text, sizeof(text), MINIMAL "proxy = http://proxy.corp:3128/\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (c)
        CHECK_STR(reg0(c)->proxy, "http://proxy.corp:3128");
    rp_conf_free(c);
    c = NULL;
    snprintf(text, sizeof(text), MINIMAL "\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (c)
        CHECK(reg0(c)->proxy == NULL);
    rp_conf_free(c);
    static const struct {
        const char *v, *why;
    } bad[] = {
        {"http://u:hunter2@proxy.corp:3128", "credentials in the proxy url are not allowed"},
        {"socks5://proxy.corp:1080", "the scheme must be http or https"},
        {"http://proxy.corp:3128/path", "a path, query or fragment is not allowed"},
        {"proxy.corp:3128", "expected http(s)://host[:port]"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = NULL;
        snprintf(text, sizeof(text), MINIMAL "proxy = %s\n", bad[i].v);
        CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
        CHECK(strstr(err, bad[i].why) != NULL);
        CHECK(strstr(err, "hunter2") == NULL);
    }
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
    /* The scheme's default port written out names the same registry (default = HOST:443). */
    CHECK(FIND("quay.io:443") == &c->registries[3]);
    CHECK(FIND("Registry.RedHat.io:443") == &c->registries[0]);
    CHECK(FIND("quay.io:80") == NULL);
    CHECK(FIND("quay.io:0443") == &c->registries[3]);
    CHECK(FIND("quay.io:443443") == NULL);
    CHECK(FIND(":443") == NULL);
    CHECK(FIND("quay.io:") == NULL);
    CHECK(FIND("[::1]:443") == NULL);
    CHECK(FIND("[127.0.0.1]:5001") == NULL);
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
              "[registry \"v6\"]\nurl = https://[2001:db8::1]\n"
              "[registry \"gitlab\"]\nurl = https://registry.gitlab.com\n");
    CHECK(c != NULL);
    if (!c)
        return;
    const struct rp_conf_registry *rh = &c->registries[0], *hub = &c->registries[1],
                                  *local = &c->registries[2], *listed = &c->registries[3],
                                  *plain = &c->registries[4], *v6 = &c->registries[5],
                                  *gitlab = &c->registries[6];
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
    /* The registrable domain itself, as GitLab.com's registry names it. */
    CHECK(rp_conf_realm_allowed(gitlab, "https://gitlab.com/jwt/auth"));
    CHECK(rp_conf_realm_allowed(gitlab, "https://GitLab.com/jwt/auth"));
    CHECK(rp_conf_realm_allowed(rh, "https://redhat.io/auth"));
    CHECK(!rp_conf_realm_allowed(gitlab, "https://xgitlab.com/jwt/auth"));
    CHECK(!rp_conf_realm_allowed(gitlab, "https://com/jwt/auth"));
    CHECK(!rp_conf_realm_allowed(gitlab, "https://gitlab.com.evil/jwt/auth"));
    CHECK(!rp_conf_realm_allowed(gitlab, "http://gitlab.com/jwt/auth"));

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
    /* curl removes dot segments and servers may decode before resolving: a realm that could
     * land outside the prefix is refused whatever it spells. */
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token/../steal"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token/./x"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token/.."));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token/..;/steal"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token/%2e%2e/steal"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token/%2E./steal"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token%2f..%2fsteal"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token/..%5csteal"));
    CHECK(!rp_conf_realm_allowed(listed, "https://auth.example.com/token\\..\\steal"));
    CHECK(!rp_conf_realm_allowed(listed, "https://other.example.net/a/../b"));
    CHECK(rp_conf_realm_allowed(listed, "https://auth.example.com/token/...x/.y/a..b"));
    CHECK(rp_conf_realm_allowed(listed, "https://auth.example.com/token?u=/../x%2e%2f"));
    CHECK(rp_conf_realm_allowed(listed, "https://auth.example.com/token/%41"));
    CHECK(!rp_conf_realm_allowed(rh, "https://sso.redhat.io/auth/../x"));
    CHECK(!rp_conf_realm_allowed(rh, "https://sso.redhat.io/auth/%2e%2e/x"));
    CHECK(!rp_conf_realm_allowed(plain, "http://reg.internal.example:5000/a/./b"));
    /* token_realms replaces the default policy, own host included. */
    CHECK(!rp_conf_realm_allowed(listed, "https://r.example.com/token"));

    CHECK(rp_conf_realm_allowed(plain, "http://reg.internal.example:5000/token"));
    CHECK(rp_conf_realm_allowed(plain, "http://auth.internal.example/token"));
    CHECK(rp_conf_realm_allowed(plain, "https://auth.internal.example/token"));
    CHECK(!rp_conf_realm_allowed(plain, "http://auth.example/token"));
    CHECK(rp_conf_realm_allowed(plain, "http://internal.example/token")); /* its domain */
    CHECK(!rp_conf_realm_allowed(plain, "http://example/token"));

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
        /* requires/conflicts name keys of the same section (conflicts: a list). */
        const char *rel[2] = {o[i].requires, o[i].conflicts};
        for (int k = 0; k < 2; k++) {
            for (const char *r = rel[k]; r && *r;) {
                size_t rl = strcspn(r, " ");
                bool found = false;
                for (size_t j = 0; j < n; j++)
                    found |= o[j].section == o[i].section && strlen(o[j].key) == rl &&
                             strncmp(o[j].key, r, rl) == 0;
                CHECK(found);
                r += rl;
                while (*r == ' ')
                    r++;
            }
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

/* ---- auth files: docker config.json and dockerconfigjson Secrets ---- */

static char *b64(const char *s)
{
    return rp_base64_encode(s, strlen(s));
}

/* Parses an auth file text for host:port as "pull.json"; the caller clears *a. */
static int auth(const char *text, const char *host, int port, bool hub, struct rp_conf_auth *a)
{
    return rp_conf_auth_parse(text, strlen(text), "pull.json", host, port, hub, a, err,
                              sizeof(err));
}

static void expect_auth_err(const char *text, const char *host, int port, const char *want)
{
    struct rp_conf_auth a;
    CHECK_INT(auth(text, host, port, false, &a), -1);
    CHECK(a.user == NULL && a.password == NULL && a.identity_token == NULL && a.key == NULL);
    CHECK_STR(err, want);
}

static void test_auth_formats(void)
{
    struct rp_conf_auth a;
    char *u = b64("12345678|cluster-pull:s3cr3t:with:colons");
    char *t = rp_xasprintf("{\"auths\": {\"registry.redhat.io\": {\"auth\": \"%s\", \"email\": "
                           "\"me@example.com\"}}}",
                           u);
    CHECK_INT(auth(t, "registry.redhat.io", 443, false, &a), 0);
    CHECK_STR(err, "");
    CHECK_STR(a.key, "registry.redhat.io");
    CHECK_STR(a.user, "12345678|cluster-pull");
    CHECK_STR(a.password, "s3cr3t:with:colons"); /* split at the first ':' */
    CHECK(a.identity_token == NULL);
    rp_conf_auth_clear(&a);
    CHECK(a.user == NULL && a.key == NULL);
    free(t);
    free(u);

    /* username and password, as podman writes for robot accounts. */
    CHECK_INT(auth("{\"auths\":{\"quay.io\":{\"username\":\"org+robot\",\"password\":\"pw\"}}}",
                   "quay.io", 443, false, &a),
              0);
    CHECK_STR(a.user, "org+robot");
    CHECK_STR(a.password, "pw");
    rp_conf_auth_clear(&a);

    /* `auth` wrapped the way base64(1) wraps at 76 columns (a service account's token is
     * longer than that): docker and podman (Go's base64) skip CR and LF, not spaces. */
    CHECK_INT(auth("{\"auths\":{\"quay.io\":{\"auth\":\"dXNlcjpw\\nYXNz\\r\\n\"}}}", "quay.io", 443,
                   false, &a),
              0);
    CHECK_STR(err, "");
    CHECK_STR(a.user, "user");
    CHECK_STR(a.password, "pass");
    rp_conf_auth_clear(&a);
    expect_auth_err("{\"auths\":{\"quay.io\":{\"auth\":\"dXNlcjpw YXNz\"}}}", "quay.io", 443,
                    "pull.json: auths.\"quay.io\".auth is not valid base64");

    /* `auth` wins over username/password, as in docker. */
    u = b64("a:b");
    t = rp_xasprintf("{\"auths\":{\"quay.io\":{\"username\":\"x\",\"password\":\"y\",\"auth\":"
                     "\"%s\"}}}",
                     u);
    CHECK_INT(auth(t, "quay.io", 443, false, &a), 0);
    CHECK_STR(a.user, "a");
    CHECK_STR(a.password, "b");
    rp_conf_auth_clear(&a);
    free(t);
    free(u);

    /* identitytoken, with docker's "<token>:" auth beside it, and alone. */
    u = b64("<token>:");
    t = rp_xasprintf("{\"auths\":{\"r.example.com\":{\"auth\":\"%s\",\"identitytoken\":"
                     "\"refresh-tok\"}}}",
                     u);
    CHECK_INT(auth(t, "r.example.com", 443, false, &a), 0);
    CHECK_STR(a.user, "<token>");
    CHECK(a.password == NULL);
    CHECK_STR(a.identity_token, "refresh-tok");
    rp_conf_auth_clear(&a);
    free(t);
    free(u);
    CHECK_INT(auth("{\"auths\":{\"r.example.com\":{\"identitytoken\":\"tok\",\"auth\":\"\"}}}",
                   "r.example.com", 443, false, &a),
              0);
    CHECK(a.user == NULL && a.password == NULL);
    CHECK_STR(a.identity_token, "tok");
    rp_conf_auth_clear(&a);

    /* Unpadded base64 and other top-level keys docker writes. */
    u = b64("ab:cd");
    CHECK(u[strlen(u) - 1] == '=');
    u[strlen(u) - 1] = '\0';
    t = rp_xasprintf("{\"auths\":{\"h.example.com\":{\"auth\":\"%s\"}},\"HttpHeaders\":"
                     "{\"User-Agent\":\"x\"},\"credsStore\":\"desktop\"}",
                     u);
    CHECK_INT(auth(t, "h.example.com", 443, false, &a), 0);
    CHECK_STR(a.password, "cd");
    rp_conf_auth_clear(&a);
    free(t);
    free(u);
    rp_conf_auth_clear(NULL);
}

/* Which key of {"auths": {keys...}} is chosen for host:port. */
static const char *pick(const char *keys_json, const char *host, int port, bool hub)
{
    static char got[128];
    struct rp_conf_auth a;
    char *t = rp_xasprintf("{\"auths\": %s}", keys_json);
    got[0] = '\0';
    if (auth(t, host, port, hub, &a) == 0)
        snprintf(got, sizeof(got), "%s", a.password);
    else
        snprintf(got, sizeof(got), "none");
    rp_conf_auth_clear(&a);
    free(t);
    return got;
}

#define E(key, pw) "\"" key "\": {\"username\": \"u\", \"password\": \"" pw "\"}"

static void test_auth_key_matching(void)
{
    static const char *const match[] = {
        "registry.example.com",
        "https://registry.example.com",
        "http://registry.example.com",
        "https://registry.example.com/",
        "https://registry.example.com/v2/",
        "registry.example.com:443",
        "https://registry.example.com:443/v1/",
        "REGISTRY.Example.COM",
        "HTTPS://registry.example.com",
        "registry.example.com/some/org",
    };
    static const char *const nomatch[] = {
        "registry.example.com:5000",
        "registry.example.com.evil",
        "evil.com/registry.example.com",
        "example.com",
        "oci://registry.example.com",
        "registry.example.com:x",
        "https://",
        "",
        "registry.example.com:0443x",
    };
    char keys[256];
    for (size_t i = 0; i < sizeof(match) / sizeof(match[0]); i++) {
        snprintf(keys, sizeof(keys), "{\"%s\": {\"auth\": \"dTpw\"}}", match[i]);
        const char *got = pick(keys, "registry.example.com", 443, false);
        if (strcmp(got, "p") != 0)
            fprintf(stderr, "key %s: %s\n", match[i], err);
        CHECK_STR(got, "p");
    }
    for (size_t i = 0; i < sizeof(nomatch) / sizeof(nomatch[0]); i++) {
        snprintf(keys, sizeof(keys), "{\"%s\": {\"auth\": \"dTpw\"}}", nomatch[i]);
        const char *got = pick(keys, "registry.example.com", 443, false);
        if (strcmp(got, "none") != 0)
            fprintf(stderr, "key %s matched\n", nomatch[i]);
        CHECK_STR(got, "none");
    }
    /* Exact host:port first, then host only, whatever the order in the file. */
    CHECK_STR(
        pick("{" E("registry.example.com", "host") "," E("registry.example.com:443", "exact") "}",
             "registry.example.com", 443, false),
        "exact");
    CHECK_STR(pick("{" E("https://registry.example.com:5000/v2/",
                         "exact") "," E("registry.example.com", "host") "}",
                   "registry.example.com", 5000, false),
              "exact");
    CHECK_STR(
        pick("{" E("registry.example.com:5000", "exact") "," E("registry.example.com", "host") "}",
             "registry.example.com", 443, false),
        "host");
    /* A bare key beats a per-namespace one; among equals the first wins. */
    CHECK_STR(pick("{" E("quay.io/org", "ns") "," E("quay.io", "bare") "}", "quay.io", 443, false),
              "bare");
    CHECK_STR(pick("{" E("https://quay.io", "first") "," E("quay.io", "second") "}", "quay.io", 443,
                   false),
              "first");
    /* Other ports and IPv6 literals. */
    CHECK_STR(pick("{" E("localhost:5000", "l") "}", "localhost", 5000, false), "l");
    CHECK_STR(pick("{" E("http://localhost:5000/", "l") "}", "localhost", 5000, false), "l");
    CHECK_STR(pick("{" E("localhost:5001", "l") "}", "localhost", 5000, false), "none");
    CHECK_STR(pick("{" E("[::1]:5000", "v6") "}", "::1", 5000, false), "v6");
    CHECK_STR(pick("{" E("[::1]", "v6") "}", "::1", 5000, false), "v6");
    CHECK_STR(pick("{" E("::1", "v6") "}", "::1", 5000, false), "none");
    CHECK_STR(pick("{" E("[::1]:5001", "v6") "}", "::1", 5000, false), "none");
}

static void test_auth_dockerhub(void)
{
    static const char *const keys[] = {"docker.io",
                                       "index.docker.io",
                                       "https://index.docker.io/v1/",
                                       "registry-1.docker.io",
                                       "https://registry-1.docker.io",
                                       "Docker.IO:443"};
    char json[256];
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        snprintf(json, sizeof(json), "{\"%s\": {\"auth\": \"dTpw\"}}", keys[i]);
        CHECK_STR(pick(json, "registry-1.docker.io", 443, true), "p");
        CHECK_STR(pick(json, "docker.io", 443, true), "p");
        /* Only Docker Hub treats them as one host. */
        CHECK_STR(pick(json, "quay.io", 443, false), "none");
    }
    CHECK_STR(
        pick("{\"index.docker.io\": {\"auth\": \"dTpw\"}}", "registry-1.docker.io", 443, false),
        "none");

    /* Through a config: url = https://registry-1.docker.io is a Docker Hub registry. */
    char src[256], text[512];
    struct rp_conf *c = NULL;
    snprintf(src, sizeof(src), "%s/regproxy.conf", tmpdir);
    const char *hub = "{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":\"dTpw\"}}}";
    write_file("hub.json", hub, strlen(hub));
    snprintf(text, sizeof(text),
             "[listen \"127.0.0.1:5000\"]\n[registry \"docker.io\"]\nurl = "
             "https://registry-1.docker.io\nauth_file = hub.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    if (c) {
        CHECK_STR(reg0(c)->user, "u");
        CHECK_STR(reg0(c)->password, "p");
    }
    rp_conf_free(c);
    remove_file("hub.json");
}

static const char *const config_json_for_secret =
    "{\"auths\":{\"registry.redhat.io\":{\"auth\":\"MTEwMDkxMDN8dWhjLXB1bGw6ZXlKaGJHY2lP\","
    "\"email\":\"me@example.com\"},\"quay.io\":{\"username\":\"q\",\"password\":\"qp\"}}}";

static void test_auth_secret(void)
{
    struct rp_conf_auth a;
    char *inner = b64(config_json_for_secret);
    /* The YAML secret as Red Hat's service-account page offers it. */
    char *yaml = rp_xasprintf("apiVersion: v1\n"
                              "kind: Secret\n"
                              "metadata:\n"
                              "  name: 11009103-uhc-pull-pull-secret\n"
                              "data:\n"
                              "  .dockerconfigjson: %s\n"
                              "type: kubernetes.io/dockerconfigjson\n",
                              inner);
    CHECK_INT(auth(yaml, "registry.redhat.io", 443, false, &a), 0);
    CHECK_STR(err, "");
    CHECK_STR(a.user, "11009103|uhc-pull");
    CHECK_STR(a.password, "eyJhbGciO");
    rp_conf_auth_clear(&a);
    CHECK_INT(auth(yaml, "quay.io", 443, false, &a), 0);
    CHECK_STR(a.password, "qp");
    rp_conf_auth_clear(&a);
    free(yaml);

    /* The same in JSON (`oc get secret -o json`). */
    char *json = rp_xasprintf("{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":"
                              "\"x\"},\"type\":\"kubernetes.io/dockerconfigjson\",\"data\":{"
                              "\".dockerconfigjson\":\"%s\"}}",
                              inner);
    CHECK_INT(auth(json, "registry.redhat.io", 443, false, &a), 0);
    CHECK_STR(a.user, "11009103|uhc-pull");
    rp_conf_auth_clear(&a);
    free(json);

    /* Base64 folded over several lines, a document marker, CRLF line ends. */
    size_t n = strlen(inner);
    struct rp_buf b;
    rp_buf_init(&b, 1 << 16);
    rp_buf_addf(&b, "---\r\nkind: Secret\r\ntype: kubernetes.io/dockerconfigjson\r\ndata:\r\n  "
                    ".dockerconfigjson: >-\r\n");
    for (size_t i = 0; i < n; i += 40)
        rp_buf_addf(&b, "    %.*s\r\n", (int)(n - i < 40 ? n - i : 40), inner + i);
    CHECK_INT(auth(b.data, "registry.redhat.io", 443, false, &a), 0);
    CHECK_STR(a.password, "eyJhbGciO");
    rp_conf_auth_clear(&a);
    rp_buf_free(&b);

    /* stringData holds the plain JSON. */
    yaml = rp_xasprintf("kind: Secret\nstringData:\n  .dockerconfigjson: '%s'\n",
                        config_json_for_secret);
    CHECK_INT(auth(yaml, "quay.io", 443, false, &a), 0);
    CHECK_STR(a.user, "q");
    rp_conf_auth_clear(&a);
    free(yaml);

    /* A plain config.json in YAML is fine too. */
    CHECK_INT(auth("auths:\n  quay.io:\n    auth: dTpw\n", "quay.io", 443, false, &a), 0);
    CHECK_STR(a.password, "p");
    rp_conf_auth_clear(&a);
    free(inner);
}

static void test_auth_errors(void)
{
    /* Malformed entries: the message has the file, the field's path and the fault. */
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"auth\":\"!!not-base64!!\"}}}",
                    "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\".auth is not valid base64");
    char *nocolon = b64("userpass");
    char *t = rp_xasprintf("{\"auths\":{\"r.example.com\":{\"auth\":\"%s\"}}}", nocolon);
    expect_auth_err(t, "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\".auth does not decode to user:password");
    free(t);
    free(nocolon);
    char *empty_pw = b64("user:");
    t = rp_xasprintf("{\"auths\":{\"r.example.com\":{\"auth\":\"%s\"}}}", empty_pw);
    expect_auth_err(t, "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\".auth decodes to an empty password");
    free(t);
    free(empty_pw);
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"auth\":\"OnA=\"}}}", "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\".auth decodes to an empty user name");
    expect_auth_err("{\"auths\":{\"r.example.com\":{}}}", "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\" has no credentials (auth, username and "
                    "password, or identitytoken)");
    expect_auth_err("{\"auths\":{\"r.example.com\":{}},\"credsStore\":\"desktop\"}",
                    "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\" has no credentials (auth, username and "
                    "password, or identitytoken): docker keeps them in the credential store "
                    "'desktop' (credsStore), which regproxy does not read");
    /* What docker login writes beside a credential helper: an empty entry in auths. The
     * helper names the registry's own store, so it is the one docker would ask. */
    expect_auth_err("{\"auths\":{\"r.example.com\":{}},\"credsStore\":\"desktop\","
                    "\"credHelpers\":{\"r.example.com\":\"ecr-login\"}}",
                    "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\" has no credentials (auth, username and "
                    "password, or identitytoken): docker keeps them with the credential helper "
                    "'ecr-login' (credHelpers), which regproxy does not run");
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"username\":\"u\"}}}", "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\" has a username but no password");
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"password\":\"hunter2\"}}}", "r.example.com",
                    443, "pull.json: auths.\"r.example.com\" has a password but no username");
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"registrytoken\":\"hunter2\"}}}",
                    "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\" holds a registrytoken; registrytoken "
                    "credentials are not supported");
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"username\":\"u\",\"password\":\"a\\nb\"}}}",
                    "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\": a credential contains a control "
                    "character");
    /* Wrong types. */
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"auth\":12345}}}", "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\".auth is not a string");
    expect_auth_err("{\"auths\":{\"r.example.com\":{\"username\":[\"u\"],\"password\":\"p\"}}}",
                    "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\".username is not a string");
    expect_auth_err("{\"auths\":{\"r.example.com\":\"dTpw\"}}", "r.example.com", 443,
                    "pull.json: auths.\"r.example.com\" is not an object");
    expect_auth_err("{\"auths\":[]}", "r.example.com", 443,
                    "pull.json: \"auths\" is not an object");
    expect_auth_err("[1, 2]", "r.example.com", 443,
                    "pull.json: expected a JSON object or YAML mapping (a docker config.json or a "
                    "Kubernetes Secret of type kubernetes.io/dockerconfigjson)");
    expect_auth_err("just some text\n", "r.example.com", 443,
                    "pull.json: expected a JSON object or YAML mapping (a docker config.json or a "
                    "Kubernetes Secret of type kubernetes.io/dockerconfigjson)");
    expect_auth_err("{\"credHelpers\":{}}", "r.example.com", 443,
                    "pull.json: no \"auths\" object: not a docker config.json or a Kubernetes "
                    "Secret of type kubernetes.io/dockerconfigjson");
    expect_auth_err("", "r.example.com", 443, "pull.json: empty document");
    /* No entry for the host: the keys present are listed, never their credentials. */
    expect_auth_err("{\"auths\":{}}", "r.example.com", 443,
                    "pull.json: \"auths\" is empty: no entry for r.example.com");
    expect_auth_err("{\"auths\":{\"quay.io\":{\"auth\":\"aHVudGVyMjpodW50ZXIy\"},\"https://"
                    "index.docker.io/v1/\":{\"auth\":\"aHVudGVyMjpodW50ZXIy\"}}}",
                    "r.example.com", 5000,
                    "pull.json: no entry for r.example.com:5000 (keys present: \"quay.io\", "
                    "\"https://index.docker.io/v1/\")");
    expect_auth_err("{\"auths\":{\"r.example.com:5000\":{\"auth\":\"dTpw\"}},\"credHelpers\":{"
                    "\"r.example.com\":\"ecr-login\"}}",
                    "r.example.com", 443,
                    "pull.json: no entry for r.example.com (keys present: "
                    "\"r.example.com:5000\"); r.example.com is served by the credential helper "
                    "'ecr-login' (credHelpers), which regproxy does not run");
    expect_auth_err("{\"auths\":{\"bad\\u0001key\\nx\":{\"auth\":\"dTpw\"}}}", "r.example.com", 443,
                    "pull.json: no entry for r.example.com (keys present: \"bad?key?x\")");
    /* Syntax errors: where, and what, but never the text there. */
    struct rp_conf_auth a;
    CHECK_INT(auth("{\"auths\": {\"x\": {\"auth\": hunter2}}}", "x", 443, false, &a), -1);
    CHECK_STR(err, "pull.json: invalid JSON at line 1, column 31: invalid token");
    CHECK_INT(auth("{\"auths\": {\"x\": {\"auth\": \"aHVudGVyMjpodW50ZXIy\"", "x", 443, false, &a),
              -1);
    CHECK(strncmp(err, "pull.json: invalid JSON at line 1, column ", 42) == 0);
    CHECK(strstr(err, "aHVudGVy") == NULL);
    /* Blank lines (and a byte order mark) before the JSON count: the line is the file's. */
    CHECK_INT(auth("\n\n{\"auths\": {\"x\": {\"auth\": hunter2}}}", "x", 443, false, &a), -1);
    CHECK_STR(err, "pull.json: invalid JSON at line 3, column 31: invalid token");
    CHECK_INT(
        auth("\xef\xbb\xbf\r\n  {\"auths\": {\"x\": {\"auth\": hunter2}}}", "x", 443, false, &a),
        -1);
    CHECK_STR(err, "pull.json: invalid JSON at line 2, column 33: invalid token");
    CHECK_INT(auth("{\"auths\": {}, \"auths\": {}}", "x", 443, false, &a), -1);
    CHECK(strncmp(err, "pull.json: invalid JSON at line 1, column ", 42) == 0);
    CHECK(strstr(err, "duplicate") != NULL);
    expect_auth_err("kind: Secret\ndata: {.dockerconfigjson: [unclosed\n", "x", 443,
                    "pull.json: invalid YAML at line 3, column 1: did not find expected ',' or "
                    "']'");
    expect_auth_err("auths:\n  quay.io: &a {auth: dTpw}\n  r.example.com: *a\n", "r.example.com",
                    443,
                    "pull.json: invalid YAML at line 3, column 18: aliases (*name) are not "
                    "supported");
    expect_auth_err("auths: {}\n---\nauths: {}\n", "x", 443,
                    "pull.json: invalid YAML at line 2, column 1: more than one document");
    expect_auth_err("auths: {}\nauths: {}\n", "x", 443,
                    "pull.json: invalid YAML at line 2, column 1: duplicate key");
    /* Binary garbage. */
    static const char garbage[] = "\x7f"
                                  "ELF\x02\x01\x01\0\0\0";
    CHECK_INT(rp_conf_auth_parse(garbage, sizeof(garbage) - 1, "pull.json", "x", 443, false, &a,
                                 err, sizeof(err)),
              -1);
    CHECK_STR(err, "pull.json: binary data, not a docker config.json or a Kubernetes Secret "
                   "(JSON or YAML)");
    expect_auth_err("{\"auths\": \"\xff\xfe\"}", "x", 443,
                    "pull.json: binary data, not a docker config.json or a Kubernetes Secret "
                    "(JSON or YAML)");
    /* Secrets that are not dockerconfigjson. */
    expect_auth_err("kind: ConfigMap\ndata: {}\n", "x", 443,
                    "pull.json: \"kind\" is \"ConfigMap\", expected \"Secret\"");
    expect_auth_err("kind: Secret\ntype: Opaque\ndata: {}\n", "x", 443,
                    "pull.json: Secret \"type\" is \"Opaque\", expected "
                    "\"kubernetes.io/dockerconfigjson\"");
    expect_auth_err("kind: Secret\ntype: kubernetes.io/dockercfg\ndata: {.dockercfg: e30=}\n", "x",
                    443,
                    "pull.json: Secret \"type\" is \"kubernetes.io/dockercfg\", expected "
                    "\"kubernetes.io/dockerconfigjson\" (the legacy .dockercfg format is not "
                    "supported)");
    expect_auth_err("kind: Secret\ndata:\n  other: e30=\n", "x", 443,
                    "pull.json: Secret has no data.\".dockerconfigjson\"");
    expect_auth_err("kind: Secret\ndata:\n  .dockerconfigjson: '***'\n", "x", 443,
                    "pull.json: data.\".dockerconfigjson\" is not valid base64");
    expect_auth_err("kind: Secret\ndata:\n  .dockerconfigjson: [1]\n", "x", 443,
                    "pull.json: data.\".dockerconfigjson\" is not a string");
    expect_auth_err("kind: Secret\ndata: [1]\n", "x", 443,
                    "pull.json: Secret \"data\" is not an object");
    /* jansson quotes what it stopped at: a byte of a password, or its escape. */
    expect_auth_err("{\"auths\": {\"x\": {\"auth\": \"se\tcret\"}}}", "x", 443,
                    "pull.json: invalid JSON at line 1, column 28: control character");
    expect_auth_err("{\"auths\": {\"x\": {\"auth\": \"se\\u12G4cret\"}}}", "x", 443,
                    "pull.json: invalid JSON at line 1, column 33: invalid escape");
    expect_auth_err("{\"auths\": {\"x\": {\"auth\": \"\\ud800\\u0041\"}}}", "x", 443,
                    "pull.json: invalid JSON at line 1, column 39: invalid Unicode");
    char *notjson = b64("auths: {}");
    t = rp_xasprintf("kind: Secret\ndata:\n  .dockerconfigjson: %s\n", notjson);
    expect_auth_err(t, "x", 443,
                    "pull.json: data.\".dockerconfigjson\" does not decode to JSON: line 1, "
                    "column 5: '[' or '{' expected");
    free(t);
    free(notjson);
    char *inner = b64("{\"auths\":{\"r.example.com\":{\"auth\":\"%%%\"}}}");
    t = rp_xasprintf("kind: Secret\ndata:\n  .dockerconfigjson: %s\n", inner);
    expect_auth_err(t, "r.example.com", 443,
                    "pull.json: data.\".dockerconfigjson\": auths.\"r.example.com\".auth is not "
                    "valid base64");
    free(t);
    free(inner);
    /* Size. */
    char *big = rp_xmalloc((1 << 20) + 2);
    memset(big, ' ', (1 << 20) + 1);
    big[(1 << 20) + 1] = '\0';
    CHECK_INT(
        rp_conf_auth_parse(big, (1 << 20) + 1, "pull.json", "x", 443, false, &a, err, sizeof(err)),
        -1);
    CHECK_STR(err, "pull.json: larger than 1 MiB");
    free(big);
    /* Without a source, no prefix; NULL err is fine. */
    CHECK_INT(rp_conf_auth_parse("{}", 2, NULL, "x", 443, false, &a, err, sizeof(err)), -1);
    CHECK_STR(err, "no \"auths\" object: not a docker config.json or a Kubernetes Secret of type "
                   "kubernetes.io/dockerconfigjson");
    CHECK_INT(rp_conf_auth_parse("{}", 2, NULL, "x", 443, false, &a, NULL, 0), -1);
    CHECK_INT(rp_conf_auth_parse("{}", 2, NULL, "x", 443, false, NULL, err, sizeof(err)), -1);
}

/* auth_file inside a configuration. */
static void test_auth_file_conf(void)
{
    char text[2048], src[256], want[1024];
    struct rp_conf *c = NULL;
    snprintf(src, sizeof(src), "%s/regproxy.conf", tmpdir);
    char *rh = b64("11009103|uhc-pull:rh-secret");
    char *json = rp_xasprintf("{\"auths\":{\"registry.redhat.io\":{\"auth\":\"%s\"},"
                              "\"quay.io\":{\"username\":\"q\",\"password\":\"quay-secret\"},"
                              "\"tok.example.com\":{\"identitytoken\":\"tok-secret\"}}}",
                              rh);
    write_file("pull.json", json, strlen(json));
    snprintf(text, sizeof(text),
             "[listen \"127.0.0.1:5000\"]\ndefault = registry.redhat.io\n"
             "[registry \"registry.redhat.io\"]\nauth_file = pull.json\n"
             "url = https://registry.redhat.io\n"
             "[registry \"quay.io\"]\nurl = https://quay.io\nauth_file = %s/pull.json\n"
             "[registry \"tok\"]\nurl = https://tok.example.com\nauth_file = pull.json\n",
             tmpdir);
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    if (c) {
        snprintf(want, sizeof(want), "%s/pull.json", tmpdir);
        CHECK_STR(c->registries[0].auth_file, want);
        CHECK_STR(c->registries[0].user, "11009103|uhc-pull");
        CHECK_STR(c->registries[0].password, "rh-secret");
        CHECK_STR(c->registries[0].test_image, "openshift3/ose-pod");
        CHECK(c->registries[0].identity_token == NULL);
        CHECK_STR(c->registries[1].user, "q");
        CHECK_STR(c->registries[1].password, "quay-secret");
        CHECK(c->registries[2].user == NULL && c->registries[2].password == NULL);
        CHECK_STR(c->registries[2].identity_token, "tok-secret");
        /* One file, watched once; an identitytoken is used as an OAuth2 refresh token,
         * nothing to warn about. */
        CHECK_INT(c->n_watch, 1);
        if (c->n_watch == 1)
            CHECK_STR(c->watch[0].path, want);
        CHECK_INT(c->n_warnings, 0);
    }
    rp_conf_free(c);

    /* auth_file is exclusive with user, password and password_file, in either order. */
    static const struct {
        const char *keys, *msg;
    } conflicts[] = {
        {"user = u\nauth_file = pull.json\n", "'auth_file' and 'user'"},
        {"auth_file = pull.json\nuser = u\n", "'user' and 'auth_file'"},
        {"auth_file = pull.json\npassword_file = pw\n", "'password_file' and 'auth_file'"},
        {"password = x\nauth_file = pull.json\n", "'auth_file' and 'password'"},
    };
    for (size_t i = 0; i < sizeof(conflicts) / sizeof(conflicts[0]); i++) {
        snprintf(text, sizeof(text), MINIMAL "%s", conflicts[i].keys);
        CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
        snprintf(want, sizeof(want), "%s:5: %s in [registry \"r\"] are mutually exclusive", src,
                 conflicts[i].msg);
        CHECK_STR(err, want);
    }

    /* Errors name the config line, the file and the fault; never a secret. */
    snprintf(text, sizeof(text), MINIMAL "auth_file = pull.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:4: auth_file '%s/pull.json' in [registry \"r\"]: no entry for r.example.com "
             "(keys present: \"registry.redhat.io\", \"quay.io\", \"tok.example.com\")",
             src, tmpdir);
    CHECK_STR(err, want);
    CHECK(strstr(err, "secret") == NULL && strstr(err, rh) == NULL);
    snprintf(text, sizeof(text), MINIMAL "auth_file = nope.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:4: auth_file '%s/nope.json' in [registry \"r\"]: No such file or directory", src,
             tmpdir);
    CHECK_STR(err, want);
    static const char garbage[] = "\x1f\x8b\x08\0\0\0\0\0\0\x03";
    write_file("garbage.json", garbage, sizeof(garbage) - 1);
    snprintf(text, sizeof(text), MINIMAL "auth_file = garbage.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:4: auth_file '%s/garbage.json' in [registry \"r\"]: binary data, not a docker "
             "config.json or a Kubernetes Secret (JSON or YAML)",
             src, tmpdir);
    CHECK_STR(err, want);
    const char *bad = "{\"auths\":{\"r.example.com\":{\"auth\":\"hunter2!\"}}}";
    write_file("bad.json", bad, strlen(bad));
    snprintf(text, sizeof(text), MINIMAL "auth_file = bad.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:4: auth_file '%s/bad.json' in [registry \"r\"]: auths.\"r.example.com\".auth is "
             "not valid base64",
             src, tmpdir);
    CHECK_STR(err, want);

    /* A 50 MB file is refused from its size, without reading it. */
    char path[256];
    snprintf(path, sizeof(path), "%s/huge.json", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK_INT(ftruncate(fd, 50 * 1000 * 1000), 0);
        close(fd);
    }
    snprintf(text, sizeof(text), MINIMAL "auth_file = huge.json\n");
    int64_t t0 = rp_now_ms();
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    CHECK(rp_now_ms() - t0 < 500);
    snprintf(want, sizeof(want),
             "%s:4: auth_file '%s/huge.json' in [registry \"r\"]: larger than 1 MiB", src, tmpdir);
    CHECK_STR(err, want);
    remove_file("huge.json");
    remove_file("garbage.json");
    remove_file("bad.json");
    remove_file("pull.json");
    free(json);
    free(rh);
}

static void test_credential_mode(void)
{
    char text[1024], src[256], want[1024];
    struct rp_conf *c = NULL;
    snprintf(src, sizeof(src), "%s/regproxy.conf", tmpdir);
    write_file_mode("pw644", "s3cr3t\n", 0644);
    write_file_mode("pw640", "s3cr3t\n", 0640);
    write_file_mode("pw620", "s3cr3t\n", 0620);
    write_file_mode("pw400", "s3cr3t\n", 0400);
    write_file_mode("pull644.json", "{\"auths\":{\"r.example.com\":{\"auth\":\"dTpw\"}}}", 0644);

    static const struct {
        const char *file, *what;
        unsigned mode;
    } refused[] = {
        {"pw644", "readable by others", 0644},
        {"pw640", "readable by its group", 0640},
        {"pw620", "writable by its group", 0620},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = %s\n", refused[i].file);
        CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
        snprintf(want, sizeof(want),
                 "%s:5: password_file '%s/%s' in [registry \"r\"] is %s (mode %04o); chmod 600 "
                 "it, or set allow_readable_credentials = yes",
                 src, tmpdir, refused[i].file, refused[i].what, refused[i].mode);
        CHECK_STR(err, want);
    }
    snprintf(text, sizeof(text), MINIMAL "auth_file = pull644.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s:4: auth_file '%s/pull644.json' in [registry \"r\"] is readable by others (mode "
             "0644); chmod 600 it, or set allow_readable_credentials = yes",
             src, tmpdir);
    CHECK_STR(err, want);
    snprintf(text, sizeof(text),
             MINIMAL "allow_readable_credentials = no\nauth_file = pull644.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);

    /* Owner-only modes pass without a warning. */
    snprintf(text, sizeof(text), MINIMAL "user = u\npassword_file = pw400\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (c) {
        CHECK_STR(reg0(c)->password, "s3cr3t");
        CHECK_INT(c->n_warnings, 0);
        CHECK(!reg0(c)->allow_readable_credentials);
    }
    rp_conf_free(c);

    /* allow_readable_credentials = yes accepts them with a warning, whatever the key order. */
    snprintf(text, sizeof(text),
             MINIMAL
             "user = u\npassword_file = pw644\nallow_readable_credentials = yes\n"
             "[registry \"s\"]\nallow_readable_credentials = yes\nurl = https://r.example.com\n"
             "auth_file = pull644.json\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    if (c) {
        CHECK_STR(reg0(c)->password, "s3cr3t");
        CHECK(reg0(c)->allow_readable_credentials);
        CHECK_STR(c->registries[1].password, "p");
        CHECK_INT(c->n_warnings, 2);
        if (c->n_warnings == 2) {
            snprintf(want, sizeof(want),
                     "%s:5: password_file '%s/pw644' in [registry \"r\"] is readable by others "
                     "(mode 0644); allowed by allow_readable_credentials",
                     src, tmpdir);
            CHECK_STR(c->warnings[0], want);
            snprintf(want, sizeof(want),
                     "%s:10: auth_file '%s/pull644.json' in [registry \"s\"] is readable by "
                     "others (mode 0644); allowed by allow_readable_credentials",
                     src, tmpdir);
            CHECK_STR(c->warnings[1], want);
        }
        CHECK_INT(c->n_watch, 2);
    }
    rp_conf_free(c);
    /* It is per registry. */
    snprintf(text, sizeof(text),
             MINIMAL "allow_readable_credentials = yes\n[registry \"s\"]\nurl = https://s\n"
                     "user = u\npassword_file = pw644\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), -1);
    CHECK(strstr(err, "[registry \"s\"] is readable by others (mode 0644)") != NULL);
    remove_file("pw644");
    remove_file("pw640");
    remove_file("pw620");
    remove_file("pw400");
    remove_file("pull644.json");
}

static void set_mtime(const char *name, time_t sec)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    struct timespec ts[2] = {{.tv_sec = sec}, {.tv_sec = sec}};
    CHECK_INT(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void test_watch(void)
{
    char text[1024], src[256], want[512];
    struct rp_conf *c = NULL;
    snprintf(src, sizeof(src), "%s/regproxy.conf", tmpdir);
    write_file("pw", "one\n", 4);
    const char *pull = "{\"auths\":{\"s.example.com\":{\"auth\":\"dTpw\"}}}";
    write_file("pull.json", pull, strlen(pull));
    snprintf(text, sizeof(text),
             MINIMAL "user = u\npassword_file = pw\n[registry \"s\"]\nurl = https://s.example.com\n"
                     "auth_file = pull.json\n[registry \"t\"]\nurl = https://t\nuser = v\n"
                     "password_file = pw\n");
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (!c)
        return;
    CHECK_INT(c->n_watch, 2); /* pw is named twice, watched once */
    if (c->n_watch == 2) {
        snprintf(want, sizeof(want), "%s/pw", tmpdir);
        CHECK_STR(c->watch[0].path, want);
        CHECK_INT(c->watch[0].size, 4);
        snprintf(want, sizeof(want), "%s/pull.json", tmpdir);
        CHECK_STR(c->watch[1].path, want);
    }
    CHECK(!rp_conf_files_changed(c));
    set_mtime("pw", 1000000000); /* touch */
    CHECK(rp_conf_files_changed(c));
    rp_conf_free(c);

    /* Rewritten content, same size. */
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (!c)
        return;
    CHECK(!rp_conf_files_changed(c));
    write_file("pull.json", "{\"auths\":{\"s.example.com\":{\"auth\":\"dTpx\"}}}",
               strlen(pull)); /* same size */
    CHECK(rp_conf_files_changed(c));
    rp_conf_free(c);

    /* Replaced by rename, as a Kubernetes secret volume does; then removed. */
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (!c)
        return;
    char a[256], b[256];
    snprintf(a, sizeof(a), "%s/pw.new", tmpdir);
    snprintf(b, sizeof(b), "%s/pw", tmpdir);
    write_file("pw.new", "one\n", 4);
    set_mtime("pw.new", 1000000000);
    set_mtime("pw", 1000000000);
    rp_conf_free(c);
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (!c)
        return;
    CHECK(!rp_conf_files_changed(c));
    CHECK_INT(rename(a, b), 0);
    CHECK(rp_conf_files_changed(c));
    rp_conf_free(c);
    CHECK_INT(rp_conf_parse(text, strlen(text), src, &c, err, sizeof(err)), 0);
    if (!c)
        return;
    remove_file("pw");
    CHECK(rp_conf_files_changed(c));
    /* Rearmed after a refused reload: unchanged until a file changes again. */
    struct rp_conf_watch *now = rp_conf_watch_now(c);
    rp_conf_watch_rearm(c, now);
    free(now);
    CHECK(!rp_conf_files_changed(c));
    now = rp_conf_watch_now(c);   /* taken before a reload reads the files... */
    write_file("pw", "two\n", 4); /* ...one written while it reads them... */
    rp_conf_watch_rearm(c, now);
    free(now);
    CHECK(rp_conf_files_changed(c)); /* ...still counts as changed */
    now = rp_conf_watch_now(c);
    rp_conf_watch_rearm(c, now);
    free(now);
    CHECK(!rp_conf_files_changed(c));
    set_mtime("pull.json", 1000000000);
    CHECK(rp_conf_files_changed(c));
    rp_conf_free(c);
    remove_file("pw");
    remove_file("pull.json");

    /* Nothing to watch. */
    c = parse(MINIMAL);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->n_watch, 0);
        CHECK_INT(c->n_warnings, 0);
        CHECK(!rp_conf_files_changed(c));
    }
    rp_conf_free(c);
    CHECK(!rp_conf_files_changed(NULL));
}

/* ---- openshift-ansible inventories ---- */

/* Runs the importer into a string; returns it (free it) or NULL. */
static char *import(const char *inventory, const char *out_dir, const char *proxy)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    int rc = rp_conf_import_inventory(inventory, out_dir, proxy, f, err, sizeof(err));
    fclose(f);
    if (rc != 0) {
        CHECK_INT(len, 0); /* nothing printed on failure */
        free(buf);
        return NULL;
    }
    return buf;
}

/* The imported text parses; password files exist with mode 0600 and hold the password. */
static struct rp_conf *check_imported(const char *text, const char *const *secrets)
{
    struct rp_conf *c = NULL;
    for (size_t i = 0; secrets[i]; i++) {
        if (strstr(text, secrets[i]))
            fprintf(stderr, "password printed: %s\n", secrets[i]);
        CHECK(strstr(text, secrets[i]) == NULL);
    }
    CHECK_INT(rp_conf_parse(text, strlen(text), "imported.conf", &c, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    if (!c) {
        fprintf(stderr, "%s\n", text);
        return NULL;
    }
    for (size_t i = 0; i < c->n_registries; i++) {
        const char *pf = c->registries[i].password_file;
        struct stat st;
        if (!pf)
            continue;
        CHECK(pf[0] == '/');
        CHECK_INT(stat(pf, &st), 0);
        CHECK_INT(st.st_mode & 07777, 0600);
    }
    return c;
}

static void rm_dir(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_INT(system(cmd), 0);
}

static void test_import_inventory_ini(void)
{
    char out[256], want[512];
    struct stat st;
    snprintf(out, sizeof(out), "%s/ini-out", tmpdir);
    char *text = import("tests/fixtures/inventory/hosts.ini", out, "proxy.example.com:5000");
    CHECK(text != NULL);
    if (!text) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_INT(stat(out, &st), 0);
    CHECK_INT(st.st_mode & 07777, 0700);
    static const char *const secrets[] = {"ini-oreg-secret", "eyJhbGciOiJSUzUxMiJ9", "ini-pass-1",
                                          "ini-pass-2", NULL};
    CHECK(strstr(text, "[listen \"0.0.0.0:5000\"]\ndefault = registry.redhat.io\n") != NULL);
    CHECK(strstr(text, "\n# oreg_url=proxy.example.com:5000/openshift3/ose-${component}:"
                       "${version}\n") != NULL);
    CHECK(strstr(text, "ignored.example.com") == NULL); /* [OSEv3:vars] beats [all:vars] */
    struct rp_conf *c = check_imported(text, secrets);
    if (c) {
        CHECK_INT(c->n_registries, 3);
        CHECK(c->listens[0].def == &c->registries[0]);
        const struct rp_conf_registry *r = &c->registries[0];
        CHECK_STR(r->name, "registry.redhat.io");
        CHECK_STR(r->url, "https://registry.redhat.io");
        CHECK_STR(r->user, "11009103|uhc-pull");
        CHECK_STR(r->password, "eyJhbGciOiJSUzUxMiJ9.ini-oreg-secret");
        snprintf(want, sizeof(want), "%s/registry.redhat.io.password", out);
        char *real = realpath(out, NULL);
        if (real) {
            snprintf(want, sizeof(want), "%s/registry.redhat.io.password", real);
            CHECK_STR(r->password_file, want);
            free(real);
        }
        CHECK(!r->test_login);
        r = &c->registries[1];
        CHECK_STR(r->name, "registry.connect.redhat.com");
        CHECK_STR(r->user, "rhn-user");
        CHECK_STR(r->password, "ini-pass-1;#x");
        CHECK_STR(r->test_image, "mongodb/enterprise-operator:0.3.2");
        CHECK(r->test_login && r->tls_verify);
        r = &c->registries[2];
        CHECK_STR(r->name, "registry.example.com:5000");
        CHECK_STR(r->url, "https://registry.example.com:5000");
        CHECK_STR(r->user, "admin");
        CHECK_STR(r->password, "ini-pass-2");
        CHECK(!r->test_login && !r->tls_verify);
        CHECK_INT(c->n_watch, 3);
    }
    rp_conf_free(c);
    free(text);

    /* Importing again replaces the password files. */
    text = import("tests/fixtures/inventory/hosts.ini", out, "proxy.example.com:5000");
    CHECK(text != NULL);
    free(text);
    rm_dir(out);
}

/* Variables set only in [all:vars] count like those in [OSEv3:vars]: the importer moves
 * them into the one set of variables it reads, then wipes its own copy of the section. */
static void test_import_inventory_all_vars(void)
{
    char path[256], out[256];
    snprintf(path, sizeof(path), "%s/all-vars.ini", tmpdir);
    snprintf(out, sizeof(out), "%s/all-vars-out", tmpdir);
    static const char ini[] =
        "[OSEv3:vars]\nopenshift_deployment_type=openshift-enterprise\n\n"
        "[all:vars]\noreg_url=registry.example.com:5000/x/y-${component}:${version}\n"
        "oreg_auth_user=all-user\noreg_auth_password=all-vars-secret\n";
    write_file("all-vars.ini", ini, strlen(ini));
    char *text = import(path, out, "proxy.example.com:5000");
    CHECK(text != NULL);
    if (!text) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    static const char *const secrets[] = {"all-vars-secret", NULL};
    struct rp_conf *c = check_imported(text, secrets);
    if (c) {
        CHECK_INT(c->n_registries, 1);
        CHECK_STR(c->registries[0].name, "registry.example.com:5000");
        CHECK_STR(c->registries[0].user, "all-user");
        CHECK_STR(c->registries[0].password, "all-vars-secret");
    }
    rp_conf_free(c);
    free(text);
    rm_dir(out);
}

/* A value that opens a bracket it does not close continues on the next lines only while
 * they do not start another variable or section: openshift-ansible's docs wrap the
 * credentials list so, and a password such as "{Xy7q" is text, as Ansible reads it. */
static void test_import_inventory_ini_brackets(void)
{
    char path[256], out[256];
    snprintf(path, sizeof(path), "%s/brackets.ini", tmpdir);
    snprintf(out, sizeof(out), "%s/brackets-out", tmpdir);
    static const char ini[] =
        "[OSEv3:vars]\n"
        "oreg_auth_user=u\n"
        "oreg_auth_password={Xy7q\n"
        "oreg_url=registry.example.com:5000/ocp/ose-${component}:${version}\n"
        "openshift_additional_registry_credentials=[\n"
        "  {'host':'registry.connect.redhat.com','user':'a','password':'[pw-a'},\n"
        "  {'host':'quay.io','user':'b','password':'pw-b'}]\n"
        "openshift_deployment_type=openshift-enterprise\n"
        "\n[masters]\nm1\n";
    write_file("brackets.ini", ini, strlen(ini));
    char *text = import(path, out, "proxy.example.com:5000");
    CHECK(text != NULL);
    if (!text) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    static const char *const secrets[] = {"{Xy7q", "[pw-a", "pw-b", NULL};
    struct rp_conf *c = check_imported(text, secrets);
    if (c) {
        CHECK_INT(c->n_registries, 3);
    }
    if (c && c->n_registries == 3) {
        CHECK_STR(c->registries[0].name, "registry.example.com:5000");
        CHECK_STR(c->registries[0].user, "u");
        CHECK_STR(c->registries[0].password, "{Xy7q");
        CHECK_STR(c->registries[1].name, "registry.connect.redhat.com");
        CHECK_STR(c->registries[1].password, "[pw-a");
        CHECK_STR(c->registries[2].name, "quay.io");
        CHECK_STR(c->registries[2].password, "pw-b");
    }
    rp_conf_free(c);
    free(text);
    rm_dir(out);
}

/* The same in a YAML inventory: all's vars hold the credentials, OSEv3's the oreg_url (and
 * win where both set a variable, as Ansible's group precedence has it). */
static void test_import_inventory_yaml_all_vars(void)
{
    char path[256], out[256];
    snprintf(path, sizeof(path), "%s/all-vars.yml", tmpdir);
    snprintf(out, sizeof(out), "%s/all-vars-yml-out", tmpdir);
    static const char yml[] = "all:\n"
                              "  vars:\n"
                              "    oreg_auth_user: all-user\n"
                              "    oreg_auth_password: yaml-all-vars-secret\n"
                              "    oreg_url: ignored.example.com/should/lose:to-OSEv3\n"
                              "  children:\n"
                              "    OSEv3:\n"
                              "      children:\n"
                              "        masters:\n"
                              "          hosts:\n"
                              "            master.example.com:\n"
                              "      vars:\n"
                              "        openshift_deployment_type: openshift-enterprise\n"
                              "        oreg_url: registry.example.com:5000/x/y-${component}\n";
    write_file("all-vars.yml", yml, strlen(yml));
    char *text = import(path, out, "proxy.example.com:5000");
    CHECK(text != NULL);
    if (!text) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK(strstr(text, "ignored.example.com") == NULL);
    static const char *const secrets[] = {"yaml-all-vars-secret", NULL};
    struct rp_conf *c = check_imported(text, secrets);
    if (c) {
        CHECK_INT(c->n_registries, 1);
        CHECK_STR(c->registries[0].name, "registry.example.com:5000");
        CHECK_STR(c->registries[0].user, "all-user");
        CHECK_STR(c->registries[0].password, "yaml-all-vars-secret");
    }
    rp_conf_free(c);
    free(text);
    rm_dir(out);
}

static void test_import_inventory_yaml(void)
{
    char out[256];
    snprintf(out, sizeof(out), "%s/yaml-out", tmpdir);
    char *text = import("tests/fixtures/inventory/OSEv3.yml", out, "10.0.0.5:5001");
    CHECK(text != NULL);
    if (!text) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    static const char *const secrets[] = {"yaml-oreg-secret", "yaml-pass-1", "0123456789", NULL};
    CHECK(strstr(text, "[listen \"0.0.0.0:5001\"]\n") != NULL);
    CHECK(strstr(text, "[admin]\n# metrics and probes; the default port is the proxy's here\n"
                       "listen = 127.0.0.1:5002\n") != NULL);
    CHECK(strstr(text, "\n# oreg_url=10.0.0.5:5001/openshift3/ose-${component}:${version}\n") !=
          NULL);
    struct rp_conf *c = check_imported(text, secrets);
    if (c) {
        /* registry.redhat.io is listed twice with the same credentials: one section. */
        CHECK_INT(c->n_registries, 3);
        CHECK_STR(c->registries[0].name, "registry.redhat.io");
        CHECK_STR(c->registries[0].user, "11009103|uhc-pull");
        CHECK_STR(c->registries[0].password, "yaml-oreg-secret-XyZ");
        CHECK_STR(c->registries[1].name, "registry.connect.redhat.com");
        CHECK_STR(c->registries[1].test_image, "sonatype/nexus-repository-manager:latest");
        CHECK_STR(c->registries[2].name, "quay.io");
        CHECK_STR(c->registries[2].user, "robot+puller");
        CHECK_STR(c->registries[2].password, "0123456789");
        CHECK(!c->registries[2].test_login);
        CHECK(c->registries[2].tls_verify);
    }
    rp_conf_free(c);
    free(text);
    rm_dir(out);

    /* A YAML inventory (hosts.yml) for origin: Docker Hub is the default registry, and the
     * credentials list is a Python literal inside a YAML string. No port: 5000 is added. */
    text = import("tests/fixtures/inventory/hosts.yml", out, "proxy.example.com");
    CHECK(text != NULL);
    if (!text) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    static const char *const secrets2[] = {"yaml-hub-secret", "yaml-inline-pass", NULL};
    CHECK(strstr(text, "# The inventory sets no oreg_url; assumed "
                       "docker.io/openshift/origin-${component}:${version}.\n") != NULL);
    CHECK(strstr(text, "\n# oreg_url=proxy.example.com:5000/openshift/origin-${component}:"
                       "${version}\n") != NULL);
    c = check_imported(text, secrets2);
    if (c) {
        CHECK_INT(c->n_registries, 2);
        CHECK_STR(c->registries[0].name, "docker.io");
        CHECK_STR(c->registries[0].url, "https://registry-1.docker.io");
        CHECK(c->registries[0].dockerhub);
        CHECK_STR(c->registries[0].user, "hubuser");
        CHECK_STR(c->registries[0].password, "yaml-hub-secret");
        CHECK_STR(c->registries[1].name, "registry.example.com");
        CHECK_STR(c->registries[1].password, "yaml-inline-pass");
        CHECK_INT(c->listens[0].port, 5000);
    }
    rp_conf_free(c);
    free(text);
    rm_dir(out);
}

/* openshift_http(s)_proxy and openshift_no_proxy: what the installer gives docker, the
 * registries get as `proxy`; credentials in a proxy URL are never printed. */
static void test_import_inventory_egress(void)
{
    char path[256], out[256];
    snprintf(path, sizeof(path), "%s/egress.ini", tmpdir);
    snprintf(out, sizeof(out), "%s/egress-out", tmpdir);
    static const char inv[] =
        "[OSEv3:vars]\n"
        "oreg_url=registry.redhat.io/openshift3/ose-${component}:${version}\n"
        "openshift_http_proxy=http://proxy.corp.example:3128/\n"
        "openshift_https_proxy=proxy.corp.example:3129\n"
        "openshift_no_proxy='.cluster.local, Registry.Internal.Example,10.0.0.1'\n"
        "openshift_additional_registry_credentials=[{'host':'registry.internal.example',"
        "'user':'u','password':'p1'},{'host':'mirror.registry.internal.example:5000'},"
        "{'host':'http://plain.example:5000'},{'host':'quay.io'}]\n";
    write_file("egress.ini", inv, strlen(inv));
    char *text = import(path, out, "proxy:5000");
    CHECK(text != NULL);
    static const char *const secrets[] = {"p1", NULL};
    struct rp_conf *c = text ? check_imported(text, secrets) : NULL;
    if (c) {
        CHECK_INT(c->n_registries, 5);
        CHECK_STR(c->registries[0].name, "registry.redhat.io");
        CHECK_STR(c->registries[0].proxy, "http://proxy.corp.example:3129");
        /* Named by openshift_no_proxy, itself or as a domain. */
        CHECK(c->registries[1].proxy == NULL);
        CHECK(c->registries[2].proxy == NULL);
        CHECK_STR(c->registries[3].name, "plain.example:5000");
        CHECK_STR(c->registries[3].proxy, "http://proxy.corp.example:3128");
        CHECK_STR(c->registries[4].proxy, "http://proxy.corp.example:3129");
    }
    CHECK(text && strstr(text, "# no proxy: openshift_no_proxy names this registry\n"));
    rp_conf_free(c);
    free(text);
    rm_dir(out);

    /* A proxy with credentials: a comment, never the password. */
    static const char inv2[] = "[OSEv3:vars]\n"
                               "openshift_https_proxy=http://proxyuser:leakme@proxy.corp:3128\n";
    write_file("egress.ini", inv2, strlen(inv2));
    text = import(path, out, "proxy:5000");
    CHECK(text != NULL);
    static const char *const secrets2[] = {"leakme", "proxyuser", NULL};
    c = text ? check_imported(text, secrets2) : NULL;
    if (c)
        CHECK(c->registries[0].proxy == NULL);
    CHECK(text && strstr(text, "# openshift_https_proxy has credentials, which a configuration "
                               "does not keep: give it to regproxy\n# as https_proxy in its "
                               "environment (systemctl edit regproxy)\n"));
    rp_conf_free(c);
    free(text);
    rm_dir(out);
    unlink(path);
}

/* Imports inventory text written to tmpdir/inv.EXT; expects failure with `want` (after
 * "PATH"), no password in the message and no output directory created. */
static void expect_import_err(const char *ext, const char *inventory, const char *want)
{
    char path[256], out[256], full[1024];
    struct stat st;
    snprintf(path, sizeof(path), "%s/inv.%s", tmpdir, ext);
    snprintf(out, sizeof(out), "%s/err-out", tmpdir);
    write_file(strrchr(path, '/') + 1, inventory, strlen(inventory));
    char *text = import(path, out, "proxy:5000");
    CHECK(text == NULL);
    free(text);
    snprintf(full, sizeof(full), "%s%s", path, want);
    CHECK_STR(err, full);
    CHECK(strstr(err, "leakme") == NULL);
    CHECK(stat(out, &st) != 0);
    unlink(path);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names in dir other than "." and "..", as "a b c " (sorted: the order of readdir is not
 * stable). */
static void dir_names(const char *dir, char *out, size_t outlen)
{
    char *names[64];
    size_t n = 0;
    out[0] = '\0';
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(out, outlen, "(none)");
        return;
    }
    for (struct dirent *e; (e = readdir(d)) && n < 64;)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            names[n++] = rp_xstrdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof(names[0]), cmp_str);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(out);
        snprintf(out + len, outlen - len, "%s ", names[i]);
        free(names[i]);
    }
}

/* A failure after the passwords were ready (here: the configuration cannot be written)
 * leaves nothing new behind: no password file, no temporary, no directory made for them,
 * and an earlier import's file as it was. */
static void test_import_inventory_failure_leaves_nothing(void)
{
    char out_dir[128], names[1024];
    snprintf(out_dir, sizeof(out_dir), "%s/creds-fail", tmpdir);
    FILE *full = fopen("/dev/full", "w");
    CHECK(full != NULL);
    if (!full)
        return;
    CHECK_INT(rp_conf_import_inventory("tests/fixtures/inventory/hosts.ini", out_dir, "p:5000",
                                       full, err, sizeof(err)),
              -1);
    CHECK(strstr(err, "cannot write the configuration") != NULL);
    dir_names(out_dir, names, sizeof(names));
    CHECK_STR(names, "(none)");
    /* Into a directory that exists, holding an earlier import's file. */
    CHECK_INT(mkdir(out_dir, 0700), 0);
    char old[256];
    snprintf(old, sizeof(old), "%s/registry.redhat.io.password", out_dir);
    write_file("creds-fail/registry.redhat.io.password", "earlier\n", 8);
    CHECK_INT(rp_conf_import_inventory("tests/fixtures/inventory/hosts.ini", out_dir, "p:5000",
                                       full, err, sizeof(err)),
              -1);
    fclose(full);
    dir_names(out_dir, names, sizeof(names));
    CHECK_STR(names, "registry.redhat.io.password ");
    FILE *f = fopen(old, "r");
    CHECK(f != NULL);
    if (f) {
        char buf[64] = "";
        CHECK_INT(fread(buf, 1, sizeof(buf) - 1, f), 8);
        fclose(f);
        CHECK_STR(buf, "earlier\n");
    }
    unlink(old);
    rmdir(out_dir);
}

static void test_import_inventory_errors(void)
{
    expect_import_err("ini", "[OSEv3:vars]\nopenshift_https_proxy=ftp://proxy:21\n",
                      ":2: openshift_https_proxy: expected http(s)://host[:port]");
    expect_import_err("ini", "[OSEv3:vars]\nopenshift_http_proxy=http://proxy:3128/path\n",
                      ":2: openshift_http_proxy: expected http(s)://host[:port]");
    expect_import_err("ini", "[OSEv3:vars]\nopenshift_https_proxy={{ corp_proxy }}\n",
                      ":2: openshift_https_proxy is a Jinja template; put the plain value in");
    expect_import_err("ini",
                      "[OSEv3:vars]\nopenshift_additional_registry_credentials=[{'host':'a.example."
                      "com','password':'leakme'}]\n",
                      ":2: openshift_additional_registry_credentials[0] (a.example.com): a "
                      "password without a user; regproxy logs in with both");
    expect_import_err("ini",
                      "[OSEv3:vars]\nopenshift_additional_registry_credentials=[{'host':'a.example."
                      "com','user':'u','password':'leakme'\n\n",
                      ":2: openshift_additional_registry_credentials: expected ',' or '}' at "
                      "character 56 of the value");
    expect_import_err("ini",
                      "[OSEv3:vars]\nopenshift_additional_registry_credentials=[{'user':'u',"
                      "'password':'leakme'}]\n",
                      ":2: openshift_additional_registry_credentials[0] has no 'host'");
    expect_import_err("ini",
                      "[OSEv3:vars]\nopenshift_additional_registry_credentials=[{'host':'a.example."
                      "com','test_login':'maybe'}]\n",
                      ":2: openshift_additional_registry_credentials[0]: 'test_login': expected "
                      "True or False");
    expect_import_err("ini",
                      "[OSEv3:vars]\nopenshift_additional_registry_credentials=[{'host':'not a "
                      "host','user':'u','password':'leakme'}]\n",
                      ":2: openshift_additional_registry_credentials[0]: expected a registry "
                      "host[:port]");
    expect_import_err("ini",
                      "[OSEv3:vars]\noreg_url=r.example.com/x/y:1\noreg_auth_user=u\n"
                      "oreg_auth_password=leakme\nopenshift_additional_registry_credentials=[{"
                      "'host':'R.example.com','user':'u','password':'other'}]\n",
                      ":5: openshift_additional_registry_credentials[0] (r.example.com): "
                      "different credentials than oreg_url for the same registry");
    expect_import_err("ini", "[OSEv3:vars]\noreg_url=registry.example.com\n",
                      ":2: oreg_url: expected REGISTRY/REPOSITORY, e.g. "
                      "registry.redhat.io/openshift3/ose-${component}:${version}");
    expect_import_err("ini", "[OSEv3:vars]\noreg_url={{ my_registry }}/x\n",
                      ":2: oreg_url is a Jinja template; put the plain value in");
    expect_import_err("ini", "[OSEv3:vars]\noreg_auth_user=u\nleakme\n",
                      ":3: expected key=value in the vars section");
    expect_import_err("ini",
                      "[OSEv3:vars]\nopenshift_additional_registry_credentials={'host': 'x'}\n",
                      ":2: openshift_additional_registry_credentials is not a list");
    expect_import_err("yml", "oreg_url: [unclosed\n",
                      ": invalid YAML at line 2, column 1: did not find expected ',' or ']'");
    expect_import_err("yml", "- a\n- b\n",
                      ": expected an INI inventory with [OSEv3:vars] or a YAML mapping of "
                      "variables");
    expect_import_err("yml",
                      "openshift_additional_registry_credentials:\n- host: a.example.com\n  "
                      "user: [u]\n",
                      ": openshift_additional_registry_credentials[0]: 'user' is not a string");
    expect_import_err("yml", "oreg_url: 5\n",
                      ": oreg_url: expected REGISTRY/REPOSITORY, e.g. "
                      "registry.redhat.io/openshift3/ose-${component}:${version}");
    expect_import_err("yml", "oreg_auth_user: {a: b}\n", ": oreg_auth_user is not a string");
    expect_import_err("bin", "\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
                      ": binary data, not an INI or YAML inventory");

    char path[256], out[256], want[512];
    snprintf(out, sizeof(out), "%s/err-out", tmpdir);
    snprintf(path, sizeof(path), "%s/missing.ini", tmpdir);
    CHECK(import(path, out, "proxy:5000") == NULL);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", path);
    CHECK_STR(err, want);
    /* A bad proxy address is found before anything is written. */
    static const char *const bad_proxy[] = {"", "http://proxy:5000", "proxy:5000/x", "proxy:0",
                                            "a b:1"};
    for (size_t i = 0; i < sizeof(bad_proxy) / sizeof(bad_proxy[0]); i++) {
        struct stat st;
        CHECK(import("tests/fixtures/inventory/hosts.ini", out, bad_proxy[i]) == NULL);
        CHECK_STR(err, "proxy address: expected host:port, e.g. proxy.example.com:5000");
        CHECK(stat(out, &st) != 0);
    }
    CHECK(import("tests/fixtures/inventory/hosts.ini", out, NULL) == NULL);
    CHECK_INT(rp_conf_import_inventory(NULL, out, "p:1", stdout, err, sizeof(err)), -1);

    /* A templated or vaulted password is not written; the config says what to do. */
    snprintf(path, sizeof(path), "%s/vault.ini", tmpdir);
    const char *inv = "[OSEv3:vars]\noreg_auth_user=u\noreg_auth_password={{ vault_leakme }}\n"
                      "openshift_additional_registry_credentials=[{'host':'q.example.com','user':"
                      "'u2'}]\n";
    write_file("vault.ini", inv, strlen(inv));
    char *text = import(path, out, "[::1]:5000");
    CHECK(text != NULL);
    if (text) {
        CHECK(strstr(text, "leakme") == NULL);
        CHECK(strstr(text, "# the password in oreg_url is a Jinja template or vault-encrypted: "
                           "write it to a file (chmod 600) and set\n# password_file = "
                           "/etc/regproxy/registry.redhat.io.password\n") != NULL);
        CHECK(strstr(text, "# the inventory has no password for this user") != NULL);
        CHECK(strstr(text, "\n# user = u\n# the password in oreg_url") != NULL);
        CHECK(strstr(text, "# oreg_url=[::1]:5000/openshift3/ose-${component}:${version}") != NULL);
        static const char *const none[] = {NULL};
        struct rp_conf *c = check_imported(text, none);
        if (c) {
            /* No password: the user waits in a comment; the registry is anonymous. */
            CHECK(c->registries[0].user == NULL);
            CHECK(c->registries[0].password_file == NULL);
            CHECK_STR(c->registries[1].name, "q.example.com");
        }
        rp_conf_free(c);
        snprintf(want, sizeof(want), "%s/registry.redhat.io.password", out);
        struct stat st;
        CHECK(stat(want, &st) != 0);
    }
    free(text);
    unlink(path);
    rm_dir(out);
}

/* The Python-literal parser on its own, through the fuzz-facing text API. */
static void test_inventory_literals(void)
{
    static const char *const ok[] = {
        "[OSEv3:vars]\nopenshift_additional_registry_credentials=[]\n",
        "[OSEv3:vars]\nopenshift_additional_registry_credentials=\n",
        "[OSEv3:vars]\nopenshift_additional_registry_credentials=[ { \"host\" : \"a.example.com\" "
        ", 'user':u'x', 'password': r'p\\w', 'test_login': True, 'tls_verify': 0 }, ]  # c\n",
        "[OSEv3:vars]\nopenshift_additional_registry_credentials=[\n  {'host':'a.example.com',\n"
        "   'user':'x','password':'it''s'}]\n",
        "[OSEv3:vars]\nopenshift_additional_registry_credentials=({'host':'a.example.com',"
        "'user':'x','password':12345,'test_image':None},)\n",
        "[OSEv3:vars]\noreg_url='localhost:5000/ocp/ose-${component}:${version}' # comment\n",
        "[OSEv3:vars]\noreg_url=\"registry.example.com/o/i:${version}\"\n",
        "[OSEv3:vars]\noreg_url=ocp/ose-${component}:${version}\n",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct rp_conf_inventory *inv = NULL;
        int rc = rp_conf_inventory_parse(ok[i], strlen(ok[i]), "inv", &inv, err, sizeof(err));
        if (rc != 0)
            fprintf(stderr, "%zu: %s\n", i, err);
        CHECK_INT(rc, 0);
        struct rp_buf b;
        rp_buf_init(&b, 1 << 20);
        if (inv) {
            CHECK_INT(rp_conf_inventory_render(inv, NULL, "p:1", &b, err, sizeof(err)), 0);
            struct rp_conf *c = NULL;
            CHECK_INT(rp_conf_parse(b.data, b.len, "r.conf", &c, err, sizeof(err)), 0);
            if (!c)
                fprintf(stderr, "%s\n%s\n", err, b.data);
            if (c && i == 5)
                CHECK_STR(c->registries[0].url, "https://localhost:5000");
            if (c && i == 7)
                CHECK_STR(c->registries[0].name, "docker.io");
            if (c && i == 2)
                CHECK(c->registries[1].test_login && !c->registries[1].tls_verify);
            rp_conf_free(c);
        }
        rp_buf_free(&b);
        rp_conf_inventory_free(inv);
    }
}

/* [admin], allow, htpasswd and repos. */
static void test_admin_and_access_keys(void)
{
    struct rp_conf *c = NULL;
    char msg[512];
    const char *good = "[listen \"127.0.0.1:5000\"]\ndefault = r\nallow = 10.128.0.0/14, "
                       "fd00::/8, 192.168.1.7\n\n[registry \"r\"]\nurl = https://r.example.com\n"
                       "repos = openshift3/*, rhel8/ubi\n\n[admin]\nlisten = 0.0.0.0:5001\n"
                       "log_format = json\nlog_level = warn\n";
    CHECK_INT(rp_conf_parse(good, strlen(good), "t.conf", &c, msg, sizeof(msg)), 0);
    if (c) {
        CHECK_INT(c->listens[0].n_allow, 3);
        CHECK_STR(c->listens[0].allow[1], "fd00::/8");
        CHECK_INT(c->registries[0].n_repos, 2);
        CHECK_STR(c->registries[0].repos[0], "openshift3/*");
        CHECK_STR(c->admin.listen, "0.0.0.0:5001");
        CHECK_STR(c->admin.log_format, "json");
        CHECK_STR(c->admin.log_level, "warn");
    }
    rp_conf_free(c);
    const char *dflt =
        "[listen \"127.0.0.1:5000\"]\n[registry \"r\"]\nurl = https://r.example.com\n";
    c = NULL;
    CHECK_INT(rp_conf_parse(dflt, strlen(dflt), "t.conf", &c, msg, sizeof(msg)), 0);
    if (c) {
        CHECK_STR(c->admin.listen, "127.0.0.1:5001");
        CHECK_STR(c->admin.log_format, "text");
        CHECK_STR(c->admin.log_level, "info");
        CHECK_INT(c->listens[0].n_allow, 0);
    }
    rp_conf_free(c);
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"[listen \"127.0.0.1:5000\"]\nallow = 10.0.0.0/33\n[registry \"r\"]\nurl = https://r.x\n",
         "t.conf:2: bad value for 'allow' in [listen \"127.0.0.1:5000\"]: expected a network"},
        /* A prefix length that wraps to a negative number as a long. */
        {"[listen \"127.0.0.1:5000\"]\nallow = 10.0.0.0/18446744073709551615\n[registry \"r\"]\n"
         "url = https://r.x\n",
         "t.conf:2: bad value for 'allow' in [listen \"127.0.0.1:5000\"]: expected a network"},
        {"[listen \"127.0.0.1:5000\"]\nallow = example.com\n[registry \"r\"]\nurl = https://r.x\n",
         "t.conf:2: bad value for 'allow' in [listen \"127.0.0.1:5000\"]: expected a network"},
        {"[listen \"127.0.0.1:5000\"]\n[registry \"r\"]\nurl = https://r.x\n[admin]\n"
         "log_format = xml\n",
         "t.conf:5: log_format in [admin] must be text or json"},
        {"[listen \"127.0.0.1:5000\"]\n[registry \"r\"]\nurl = https://r.x\n[admin]\n"
         "log_level = loud\n",
         "t.conf:5: log_level in [admin] must be debug, info, warn or error"},
        {"[listen \"127.0.0.1:5000\"]\n[registry \"r\"]\nurl = https://r.x\n[admin]\n"
         "listen = nowhere\n",
         "t.conf:5: listen in [admin]: expected IPV4:PORT, [IPV6]:PORT (an address, not a host "
         "name) or off"},
        {"[listen \"127.0.0.1:5000\"]\n[registry \"r\"]\nurl = https://r.x\n[admin]\n[admin]\n",
         "t.conf:5: duplicate section [admin]"},
        {"[listen \"127.0.0.1:5000\"]\n[registry \"r\"]\nurl = https://r.x\n[admin \"x\"]\n",
         "t.conf:4: section [admin] takes no name"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = NULL;
        msg[0] = '\0';
        CHECK_INT(rp_conf_parse(bad[i].text, strlen(bad[i].text), "t.conf", &c, msg, sizeof(msg)),
                  -1);
        CHECK(c == NULL);
        if (strncmp(msg, bad[i].msg, strlen(bad[i].msg)) != 0) {
            fprintf(stderr, "case %zu: got \"%s\", want prefix \"%s\"\n", i, msg, bad[i].msg);
            unit_cur_failed = 1;
        }
        rp_conf_free(c);
    }
}

static void test_doc_up_to_date(void)
{
    char *want = NULL, *have = NULL;
    size_t wlen = 0;
    FILE *f = open_memstream(&want, &wlen);
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK_INT(rp_conf_write_doc(f), 0);
    fclose(f);
    /* Unit tests run from the repository root. */
    f = fopen("docs/configuration.md", "rb");
    CHECK(f != NULL);
    if (f) {
        have = rp_xmalloc(wlen + 2);
        size_t hlen = fread(have, 1, wlen + 1, f);
        fclose(f);
        bool same = hlen == wlen && memcmp(have, want, wlen) == 0;
        if (!same)
            fprintf(stderr, "docs/configuration.md is not what the option table says; "
                            "regenerate it: build/san/tests/unit/conf/test_conf --write-doc "
                            "docs/configuration.md\n");
        CHECK(same);
    }
    /* Every key is documented. */
    size_t n;
    const struct rp_conf_option *o = rp_conf_options(&n);
    for (size_t i = 0; i < n; i++) {
        char row[128];
        snprintf(row, sizeof(row), "\n| `%s`", o[i].key);
        CHECK(strstr(want, row) != NULL);
    }
    free(have);
    free(want);
}

static int write_doc(const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f || rp_conf_write_doc(f) != 0 || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

/* Credentials for a plain http:// registry cross the network in clear text (Basic to the
 * registry, or to its token realm, which may be http:// then too): said once, at the url's
 * line, unless the registry is never dialed. */
static void test_http_credentials_warned(void)
{
    const char *want = "test.conf:6: [registry \"h\"] has credentials but its url is plain "
                       "http://: they travel in clear text to the registry and its token realm; "
                       "use https://";
    struct rp_conf *c = parse(MINIMAL "[registry \"h\"]\nuser = u\nurl = http://127.0.0.1:5000\n"
                                      "password = p\n");
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->n_warnings, 1);
        if (c->n_warnings)
            CHECK_STR(c->warnings[0], want);
    }
    rp_conf_free(c);
    static const char *const quiet[] = {
        /* https, or no credentials */
        MINIMAL "[registry \"h\"]\nuser = u\nurl = https://127.0.0.1:5000\npassword = p\n",
        MINIMAL "[registry \"h\"]\nurl = http://127.0.0.1:5000\n",
        /* offline: never dialed, whichever section says it, before or after */
        MINIMAL "[registry \"h\"]\nuser = u\nurl = http://127.0.0.1:5000\npassword = p\n"
                "offline = yes\n",
        MINIMAL "[registry \"h\"]\nuser = u\nurl = http://127.0.0.1:5000\npassword = p\n"
                "[cache]\noffline = yes\n",
    };
    for (size_t i = 0; i < sizeof(quiet) / sizeof(quiet[0]); i++) {
        c = parse(quiet[i]);
        CHECK(c != NULL);
        if (c) {
            for (size_t k = 0; k < c->n_warnings; k++)
                fprintf(stderr, "unexpected warning: %s\n", c->warnings[k]);
            CHECK_INT(c->n_warnings, 0);
        }
        rp_conf_free(c);
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-doc") == 0)
        return write_doc(argv[2]);
    unit_mkdtemp(tmpdir, sizeof(tmpdir), "rp-test-conf");
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
    RUN(test_proxy);
    RUN(test_load_file);
    RUN(test_password_never_in_errors);
    RUN(test_split_url);
    RUN(test_find_registry);
    RUN(test_realm_policy);
    RUN(test_http_credentials_warned);
    RUN(test_option_table);
    RUN(test_auth_formats);
    RUN(test_auth_key_matching);
    RUN(test_auth_dockerhub);
    RUN(test_auth_secret);
    RUN(test_auth_errors);
    RUN(test_auth_file_conf);
    RUN(test_credential_mode);
    RUN(test_watch);
    RUN(test_import_inventory_ini);
    RUN(test_import_inventory_all_vars);
    RUN(test_import_inventory_ini_brackets);
    RUN(test_import_inventory_yaml);
    RUN(test_import_inventory_yaml_all_vars);
    RUN(test_import_inventory_errors);
    RUN(test_import_inventory_failure_leaves_nothing);
    RUN(test_import_inventory_egress);
    RUN(test_inventory_literals);
    RUN(test_admin_and_access_keys);
    RUN(test_doc_up_to_date);
    rmdir(tmpdir);
    UNIT_EXIT();
}
