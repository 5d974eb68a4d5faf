/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/acl.c: CIDR parsing and matching, repository patterns, htpasswd. */
#include <arpa/inet.h>
#include <crypt.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <unistd.h>

#include "../unit.h"
#include "../../../proxy/acl.h"
#include "../../../util/util.h"

static struct sockaddr_storage v4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return ss;
}

static struct sockaddr_storage v6(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    sin6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &sin6->sin6_addr);
    return ss;
}

static void test_parse(void)
{
    struct rp_cidr c;
    CHECK(rp_acl_parse_cidr("10.0.0.0/8", &c) == 0 && c.family == AF_INET && c.bits == 8);
    CHECK(rp_acl_parse_cidr("192.168.1.7", &c) == 0 && c.bits == 32);
    CHECK(rp_acl_parse_cidr("fd00::/8", &c) == 0 && c.family == AF_INET6 && c.bits == 8);
    CHECK(rp_acl_parse_cidr("::1", &c) == 0 && c.bits == 128);
    CHECK(rp_acl_parse_cidr("0.0.0.0/0", &c) == 0 && c.bits == 0);
    CHECK(rp_acl_parse_cidr("10.0.0.1/8", &c) < 0); /* host bits set */
    CHECK(rp_acl_parse_cidr("10.0.0.0/33", &c) < 0);
    CHECK(rp_acl_parse_cidr("10.0.0.0/", &c) < 0);
    CHECK(rp_acl_parse_cidr("10.0.0.0/-1", &c) < 0);
    CHECK(rp_acl_parse_cidr("10.0.0", &c) < 0);
    CHECK(rp_acl_parse_cidr("example.com", &c) < 0);
    CHECK(rp_acl_parse_cidr("", &c) < 0);
    CHECK(rp_acl_parse_cidr("1.2.3.4/32/1", &c) < 0);
    CHECK(rp_acl_parse_cidr("fd00::/129", &c) < 0);
}

static void test_allows(void)
{
    struct rp_cidr nets[3];
    CHECK(rp_acl_parse_cidr("10.128.0.0/14", &nets[0]) == 0);
    CHECK(rp_acl_parse_cidr("172.30.0.0/16", &nets[1]) == 0);
    CHECK(rp_acl_parse_cidr("fd00::/8", &nets[2]) == 0);
    struct sockaddr_storage a;
    a = v4("10.129.3.4");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("10.132.0.1");
    CHECK(!rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("172.30.255.255");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("127.0.0.1");
    CHECK(!rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v6("::ffff:10.128.0.9");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v6("fdab::1");
    CHECK(rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v6("fe80::1");
    CHECK(!rp_acl_allows(nets, 3, (struct sockaddr *)&a));
    a = v4("8.8.8.8");
    CHECK(rp_acl_allows(nets, 0, (struct sockaddr *)&a)); /* no list: everyone */
}

static void test_repos(void)
{
    char *pats[] = {"openshift3/*", "rhel8/ubi"};
    CHECK(rp_acl_repo_allowed(pats, 2, "openshift3/ose-pod"));
    CHECK(rp_acl_repo_allowed(pats, 2, "rhel8/ubi"));
    CHECK(!rp_acl_repo_allowed(pats, 2, "rhel8/ubi-minimal"));
    CHECK(!rp_acl_repo_allowed(pats, 2, "openshift3/a/b")); /* '*' stops at '/' */
    CHECK(!rp_acl_repo_allowed(pats, 2, "other/openshift3/x"));
    CHECK(rp_acl_repo_allowed(pats, 0, "anything/at/all"));
}

static char *basic(const char *userpass)
{
    char *b = rp_base64_encode(userpass, strlen(userpass));
    char *h = rp_xasprintf("Basic %s", b);
    free(b);
    return h;
}

static void test_htpasswd(void)
{
    char dir[] = "/tmp/rp-acl-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *path = rp_xasprintf("%s/htpasswd", dir);
    const char *salt = crypt_gensalt("$2b$", 5, NULL, 0);
    CHECK(salt != NULL);
    char *hash = rp_xstrdup(crypt("s3cret", salt));
    FILE *f = fopen(path, "w");
    fprintf(f, "# nodes\n\nnode:%s\n", hash);
    fclose(f);
    char err[256];
    struct rp_htpasswd *h = rp_htpasswd_load(path, err, sizeof(err));
    CHECK(h != NULL);
    char *good = basic("node:s3cret"), *bad = basic("node:wrong"), *who = basic("nobody:s3cret");
    CHECK(rp_htpasswd_check(h, good));
    CHECK(rp_htpasswd_check(h, good)); /* remembered */
    CHECK_INT(rp_htpasswd_hashes(h), 1);
    CHECK(!rp_htpasswd_check(h, bad));
    CHECK(!rp_htpasswd_check(h, bad)); /* a failure is remembered too */
    CHECK_INT(rp_htpasswd_hashes(h), 2);
    CHECK(!rp_htpasswd_check(h, who)); /* an unknown user is hashed like a known one */
    CHECK_INT(rp_htpasswd_hashes(h), 3);
    /* Guesses faster than the budget fail unhashed; the known-good still passes. */
    char guess[64];
    for (int i = 0; i < 50; i++) {
        snprintf(guess, sizeof(guess), "node:guess%d", i);
        char *g = basic(guess);
        CHECK(!rp_htpasswd_check(h, g));
        free(g);
    }
    CHECK(rp_htpasswd_hashes(h) <= 3 + 2); /* 4 saved up, 3 spent above, a little refill */
    CHECK(rp_htpasswd_check(h, good));
    CHECK(!rp_htpasswd_check(h, "Bearer abc"));
    CHECK(!rp_htpasswd_check(h, "Basic !!!"));
    CHECK(!rp_htpasswd_check(h, NULL));
    rp_htpasswd_free(h);
    f = fopen(path, "w");
    fprintf(f, "justaname\n");
    fclose(f);
    CHECK(rp_htpasswd_load(path, err, sizeof(err)) == NULL);
    CHECK(strstr(err, ":1:") != NULL);
    free(good);
    free(bad);
    free(who);
    free(hash);
    unlink(path);
    rmdir(dir);
    free(path);
}

int main(void)
{
    RUN(test_parse);
    RUN(test_allows);
    RUN(test_repos);
    RUN(test_htpasswd);
    UNIT_EXIT();
}
