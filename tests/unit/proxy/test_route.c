/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/route.c: every route form and every rejection, against a hand-built
 * configuration (so these tests do not depend on the config parser). */
#include "../unit.h"

#include "../../../proxy/route.h"

#define D64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define SHA256 "sha256:" D64
#define SHA512 "sha512:" D64 D64

static struct rp_conf_registry regs[] = {
    {.name = "registry.redhat.io",
     .url = "https://registry.redhat.io",
     .scheme = "https",
     .host = "registry.redhat.io",
     .port = 443,
     .hostport = "registry.redhat.io",
     .tls_verify = true,
     .tag_ttl_ms = -1},
    {.name = "docker.io",
     .url = "https://registry-1.docker.io",
     .scheme = "https",
     .host = "registry-1.docker.io",
     .port = 443,
     .hostport = "registry-1.docker.io",
     .dockerhub = true,
     .tls_verify = true,
     .tag_ttl_ms = -1},
    {.name = "quay.io",
     .url = "https://quay.io",
     .scheme = "https",
     .host = "quay.io",
     .port = 443,
     .hostport = "quay.io",
     .tls_verify = true,
     .tag_ttl_ms = -1},
    {.name = "local",
     .url = "https://127.0.0.1:5001",
     .scheme = "https",
     .host = "127.0.0.1",
     .port = 5001,
     .hostport = "127.0.0.1:5001",
     .tls_verify = true,
     .tag_ttl_ms = -1},
};
#define REDHAT (&regs[0])
#define DOCKER (&regs[1])
#define QUAY (&regs[2])
#define LOCAL (&regs[3])

static struct rp_conf_listen listens[] = {
    {.addr = "0.0.0.0:5000",
     .host = "0.0.0.0",
     .port = 5000,
     .default_name = "registry.redhat.io",
     .def = &regs[0]},
    {.addr = "127.0.0.1:5002", .host = "127.0.0.1", .port = 5002},
};
#define WITH_DEF (&listens[0])
#define NO_DEF (&listens[1])

static struct rp_conf conf = {
    .source = "<test>",
    .listens = listens,
    .n_listens = 2,
    .registries = regs,
    .n_registries = 4,
};

static struct rp_route r;
static const char *why;

static int route_on(const struct rp_conf_listen *l, const char *target)
{
    why = NULL;
    int rc = rp_route_parse(&conf, l, target, strlen(target), &r, &why);
    if (!why || !*why) {
        fprintf(stderr, "%s: no reason given for %s\n", unit_cur, target);
        unit_cur_failed = 1;
    }
    return rc;
}

static int route(const char *target)
{
    return route_on(WITH_DEF, target);
}

static void test_kind_names(void)
{
    CHECK_STR(rp_route_kind_name(RP_ROUTE_PING), "ping");
    CHECK_STR(rp_route_kind_name(RP_ROUTE_MANIFEST), "manifest");
    CHECK_STR(rp_route_kind_name(RP_ROUTE_BLOB), "blob");
    CHECK_STR(rp_route_kind_name(RP_ROUTE_TAGS), "tags");
    CHECK_STR(rp_route_kind_name(RP_ROUTE_REFERRERS), "referrers");
}

static void test_ping(void)
{
    CHECK_INT(route("/v2/"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_PING);
    CHECK(r.reg == NULL);
    CHECK_INT(route("/v2"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_PING);
    CHECK_INT(route_on(NO_DEF, "/v2/"), RP_ROUTE_OK);
    CHECK(r.reg == NULL);
    CHECK_INT(route("/v2/?ns=docker.io"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_PING);
    CHECK(r.reg == NULL);
    /* Not the API root. */
    CHECK_INT(route("/v2x"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v1/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route(""), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("v2/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("http://evil/v2/"), RP_ROUTE_E_NOT_FOUND);
}

static void test_default_route(void)
{
    CHECK_INT(route("/v2/openshift3/ose-pod/manifests/v3.11"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_MANIFEST);
    CHECK(r.reg == REDHAT);
    CHECK_STR(r.name, "openshift3/ose-pod");
    CHECK_STR(r.client_name, "openshift3/ose-pod");
    CHECK_STR(r.ref, "v3.11");
    CHECK(!r.ref_is_digest);
    CHECK(!r.via_ns);
    CHECK_INT(r.n, -1);
    CHECK_STR(r.last, "");
    CHECK_STR(r.artifact_type, "");

    CHECK_INT(route("/v2/ubi8/manifests/" SHA256), RP_ROUTE_OK);
    CHECK(r.ref_is_digest);
    CHECK_STR(r.ref, SHA256);
    CHECK_STR(r.name, "ubi8");

    CHECK_INT(route("/v2/rhel8/ubi/blobs/" SHA512), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_BLOB);
    CHECK(r.ref_is_digest);
    CHECK_STR(r.ref, SHA512);

    /* A single-component name that looks like a host is still a name (as in docker's
     * reference parsing, only a component followed by '/' can be a registry). */
    CHECK_INT(route("/v2/foo.bar/manifests/latest"), RP_ROUTE_OK);
    CHECK(r.reg == REDHAT);
    CHECK_STR(r.name, "foo.bar");
    /* "local" is a registry name, but with no remainder it is the name itself. */
    CHECK_INT(route("/v2/local/manifests/latest"), RP_ROUTE_OK);
    CHECK(r.reg == REDHAT);
    CHECK_STR(r.name, "local");
}

static void test_prefix_route(void)
{
    CHECK_INT(route("/v2/registry.redhat.io/rhel8/ubi/manifests/latest"), RP_ROUTE_OK);
    CHECK(r.reg == REDHAT);
    CHECK_STR(r.name, "rhel8/ubi");
    CHECK_STR(r.client_name, "registry.redhat.io/rhel8/ubi");

    /* By section name (not a host). */
    CHECK_INT(route_on(NO_DEF, "/v2/local/team/app/manifests/1.0"), RP_ROUTE_OK);
    CHECK(r.reg == LOCAL);
    CHECK_STR(r.name, "team/app");
    CHECK_STR(r.client_name, "local/team/app");

    /* By hostport: ':' is not a name character, so the prefix is split off first. */
    CHECK_INT(route_on(NO_DEF, "/v2/127.0.0.1:5001/team/app/blobs/" SHA256), RP_ROUTE_OK);
    CHECK(r.reg == LOCAL);
    CHECK_INT(r.kind, RP_ROUTE_BLOB);
    CHECK_STR(r.name, "team/app");
    CHECK_STR(r.client_name, "127.0.0.1:5001/team/app");
    /* By host alone (without the port) too, as rp_conf_find_registry allows. */
    CHECK_INT(route_on(NO_DEF, "/v2/127.0.0.1/team/app/manifests/x"), RP_ROUTE_OK);
    CHECK(r.reg == LOCAL);

    CHECK_INT(route_on(NO_DEF, "/v2/quay.io/coreos/etcd/manifests/v3.5.0"), RP_ROUTE_OK);
    CHECK(r.reg == QUAY);
    CHECK_STR(r.name, "coreos/etcd");

    /* Case-insensitive host prefix. */
    CHECK_INT(route_on(NO_DEF, "/v2/Quay.IO/coreos/etcd/manifests/v3.5.0"), RP_ROUTE_OK);
    CHECK(r.reg == QUAY);
    CHECK_STR(r.client_name, "Quay.IO/coreos/etcd");
}

static void test_dockerhub(void)
{
    CHECK_INT(route("/v2/docker.io/alpine/manifests/3.19"), RP_ROUTE_OK);
    CHECK(r.reg == DOCKER);
    CHECK_STR(r.name, "library/alpine");
    CHECK_STR(r.client_name, "docker.io/alpine");
    CHECK_INT(route("/v2/docker.io/bitnami/redis/manifests/7"), RP_ROUTE_OK);
    CHECK_STR(r.name, "bitnami/redis");
    /* The upstream host also selects Docker Hub. */
    CHECK_INT(route("/v2/registry-1.docker.io/alpine/manifests/3.19"), RP_ROUTE_OK);
    CHECK(r.reg == DOCKER);
    CHECK_STR(r.name, "library/alpine");

    CHECK_INT(route_on(NO_DEF, "/v2/alpine/manifests/3.19?ns=docker.io"), RP_ROUTE_OK);
    CHECK(r.reg == DOCKER);
    CHECK(r.via_ns);
    CHECK_STR(r.name, "library/alpine");
    CHECK_STR(r.client_name, "alpine");
    CHECK_INT(route_on(NO_DEF, "/v2/library/alpine/manifests/3.19?ns=docker.io"), RP_ROUTE_OK);
    CHECK_STR(r.name, "library/alpine");
    CHECK_STR(r.client_name, "library/alpine");

    /* 247 + "library/" is 255: fits; 248 does not. */
    char t[600], name[300];
    memset(name, 'a', 247);
    name[247] = '\0';
    snprintf(t, sizeof(t), "/v2/%s/manifests/x?ns=docker.io", name);
    CHECK_INT(route(t), RP_ROUTE_OK);
    CHECK_INT(strlen(r.name), 255);
    memset(name, 'a', 248);
    name[248] = '\0';
    snprintf(t, sizeof(t), "/v2/%s/manifests/x?ns=docker.io", name);
    CHECK_INT(route(t), RP_ROUTE_E_NAME_INVALID);
    CHECK(r.reg == NULL);
    snprintf(t, sizeof(t), "/v2/%s/manifests/x", name);
    CHECK_INT(route(t), RP_ROUTE_OK); /* not Docker Hub: no prefix added */
}

static void test_ns(void)
{
    CHECK_INT(route("/v2/rhel8/ubi/manifests/latest?ns=quay.io"), RP_ROUTE_OK);
    CHECK(r.reg == QUAY);
    CHECK(r.via_ns);
    CHECK_STR(r.name, "rhel8/ubi");
    CHECK_STR(r.client_name, "rhel8/ubi");
    CHECK_INT(route_on(NO_DEF, "/v2/team/app/manifests/x?ns=127.0.0.1:5001"), RP_ROUTE_OK);
    CHECK(r.reg == LOCAL);
    CHECK_INT(route_on(NO_DEF, "/v2/team/app/manifests/x?foo=bar&ns=local&x"), RP_ROUTE_OK);
    CHECK(r.reg == LOCAL);
    /* containerd encodes the value as Go's url.Values does: ':' as %3A. */
    CHECK_INT(route_on(NO_DEF, "/v2/team/app/manifests/x?ns=127.0.0.1%3A5001"), RP_ROUTE_OK);
    CHECK(r.reg == LOCAL);
    CHECK_INT(route("/v2/foo/manifests/x?ns=quay%2eio"), RP_ROUTE_OK);
    CHECK(r.reg == QUAY);
    /* ns wins over a prefix-like first component: the whole path is the name. */
    CHECK_INT(route("/v2/quay.io/foo/manifests/x?ns=registry.redhat.io"), RP_ROUTE_OK);
    CHECK(r.reg == REDHAT);
    CHECK_STR(r.name, "quay.io/foo");

    /* Unconfigured hosts are never selected: SSRF attempts are just unknown names. */
    CHECK_INT(route("/v2/foo/manifests/x?ns=evil.example"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK(r.reg == NULL);
    CHECK_INT(route("/v2/foo/manifests/x?ns=169.254.169.254"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route("/v2/foo/manifests/x?ns=localhost:22"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route("/v2/foo/manifests/x?ns=[::1]:5001"), RP_ROUTE_E_NAME_UNKNOWN);
    /* A section name may hold a '_' (conf.c), and Links to a next page carry the name: such
     * an ns is looked up, not refused as malformed. */
    CHECK_INT(route("/v2/foo/manifests/x?ns=my_mirror"), RP_ROUTE_E_NAME_UNKNOWN);
    /* Malformed ns values. */
    CHECK_INT(route("/v2/foo/manifests/x?ns="), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=quay%2Fio"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=quay.io%00"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=quay.io%2"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=quay.io%zz"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=evil.example%2F"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=user@quay.io"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=quay.io/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests/x?ns=quay.io&ns=quay.io"), RP_ROUTE_E_PARAM_INVALID);
    char t[400];
    memset(t, 0, sizeof(t));
    memcpy(t, "/v2/foo/manifests/x?ns=", 23);
    memset(t + 23, 'a', 256);
    CHECK_INT(route(t), RP_ROUTE_E_NAME_INVALID);
}

static void test_unknown_prefix_and_no_default(void)
{
    CHECK_INT(route("/v2/evil.example/foo/manifests/x"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK(r.reg == NULL);
    CHECK_INT(route("/v2/169.254.169.254/foo/manifests/x"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route("/v2/localhost/foo/manifests/x"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route("/v2/localhost:22/foo/manifests/x"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route("/v2/127.0.0.1:5002/foo/blobs/" SHA256), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route("/v2/[::1]:5001/foo/manifests/x"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route_on(NO_DEF, "/v2/openshift3/ose-pod/manifests/v3.11"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route_on(NO_DEF, "/v2/alpine/manifests/latest"), RP_ROUTE_E_NAME_UNKNOWN);
    CHECK_INT(route_on(NULL, "/v2/alpine/manifests/latest"), RP_ROUTE_E_NAME_UNKNOWN);
}

static void test_nested_and_keyword_names(void)
{
    CHECK_INT(route("/v2/a/b/c/d/e/manifests/latest"), RP_ROUTE_OK);
    CHECK_STR(r.name, "a/b/c/d/e");
    /* Names may contain the API's keywords as components; the last two segments decide. */
    CHECK_INT(route("/v2/foo/blobs/manifests/latest"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_MANIFEST);
    CHECK_STR(r.name, "foo/blobs");
    CHECK_STR(r.ref, "latest");
    CHECK_INT(route("/v2/manifests/blobs/" SHA256), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_BLOB);
    CHECK_STR(r.name, "manifests");
    CHECK_INT(route("/v2/foo/manifests/tags/list"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_TAGS);
    CHECK_STR(r.name, "foo/manifests");
    CHECK_INT(route("/v2/tags/manifests/list"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_MANIFEST);
    CHECK_STR(r.name, "tags");
    CHECK_STR(r.ref, "list");
    CHECK_INT(route("/v2/referrers/referrers/" SHA256), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_REFERRERS);
    CHECK_STR(r.name, "referrers");
    CHECK_INT(route("/v2/a/blobs/b/manifests/c/blobs/" SHA256), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_BLOB);
    CHECK_STR(r.name, "a/blobs/b/manifests/c");
    /* Separators within components (a first component with '.' would be a host). */
    CHECK_INT(route("/v2/x/a.b_c__d---e/f-g/manifests/x"), RP_ROUTE_OK);
    CHECK_STR(r.name, "x/a.b_c__d---e/f-g");
    CHECK_INT(route("/v2/a.b/f-g/manifests/x"), RP_ROUTE_E_NAME_UNKNOWN);
}

static void test_not_found(void)
{
    CHECK_INT(route("/v2/foo"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/manifests"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/manifests/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/blobs/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/manifests/latest"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/tags"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/tags/list/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/tags/lists"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/blobs/uploads/"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/foo/other/x"), RP_ROUTE_E_NOT_FOUND);
    CHECK_INT(route("/v2/_catalog"), RP_ROUTE_E_UNSUPPORTED);
    CHECK_INT(route("/v2/_catalog?n=10"), RP_ROUTE_E_UNSUPPORTED);
}

static void test_traversal(void)
{
    CHECK_INT(route("/v2/../etc/passwd/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/../bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/./bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests/.."), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/blobs/.."), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/.."), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/%2e%2e/foo/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo%2fbar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo%2Fbar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests/%2e%2e"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo//bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2//foo/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/manifests//x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo\\..\\bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo\\bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo\tbar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/f\xc3\xb6o/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo\x7f/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    /* Percent in a prefix or host-looking component too. */
    CHECK_INT(route("/v2/quay.io%2f/foo/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    /* An embedded NUL ends nothing: the length is authoritative. */
    const char nul[] = "/v2/foo\0/../manifests/x";
    CHECK_INT(rp_route_parse(&conf, WITH_DEF, nul, sizeof(nul) - 1, &r, &why),
              RP_ROUTE_E_NAME_INVALID);
}

static void test_bad_names(void)
{
    CHECK_INT(route("/v2/Foo/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo-/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/-foo/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo..bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo___bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo._bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo:bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo@bar/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/_foo/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/quay.io/Foo/manifests/x"), RP_ROUTE_E_NAME_INVALID);
    CHECK(r.reg == NULL);

    char t[700], name[300];
    memset(name, 'a', 255);
    name[255] = '\0';
    snprintf(t, sizeof(t), "/v2/%s/manifests/x", name);
    CHECK_INT(route(t), RP_ROUTE_OK);
    memset(name, 'a', 256);
    name[256] = '\0';
    snprintf(t, sizeof(t), "/v2/%s/manifests/x", name);
    CHECK_INT(route(t), RP_ROUTE_E_NAME_INVALID);
    /* The limit applies to the upstream name, after the prefix is stripped. */
    snprintf(t, sizeof(t), "/v2/quay.io/%s/manifests/x", name);
    CHECK_INT(route(t), RP_ROUTE_E_NAME_INVALID);
    name[255] = '\0';
    snprintf(t, sizeof(t), "/v2/quay.io/%s/manifests/x", name);
    CHECK_INT(route(t), RP_ROUTE_OK);
    CHECK(r.reg == QUAY);
    CHECK_INT(strlen(r.client_name), 8 + 255);

    CHECK(rp_valid_name("a", 1));
    CHECK(!rp_valid_name("", 0));
    CHECK(!rp_valid_name("a/", 2));
    CHECK(!rp_valid_name("/a", 2));
    CHECK(!rp_valid_name("a__", 3));
}

static void test_digests(void)
{
    CHECK(rp_valid_digest(SHA256, strlen(SHA256)));
    CHECK(rp_valid_digest(SHA512, strlen(SHA512)));
    CHECK(!rp_valid_digest(SHA256, strlen(SHA256) - 1));
    CHECK(!rp_valid_digest("sha256:", 7));
    CHECK(!rp_valid_digest("sha512:" D64, strlen("sha512:" D64)));
    CHECK(!rp_valid_digest("sha256:" D64 "0", strlen(SHA256) + 1));

    CHECK_INT(route("/v2/foo/blobs/sha256:"
                    "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"),
              RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/blobs/sha256:0123456789abcdef"), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/blobs/md5:0123456789abcdef0123456789abcdef"),
              RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/blobs/sha256+b64:" D64), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/blobs/SHA256:" D64), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/blobs/" D64), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/blobs/latest"), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/manifests/sha256:" D64 "00"), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/manifests/md5:abc"), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/referrers/latest"), RP_ROUTE_E_DIGEST_INVALID);
    CHECK_INT(route("/v2/foo/referrers/sha256:abc"), RP_ROUTE_E_DIGEST_INVALID);
}

static void test_tags(void)
{
    CHECK(rp_valid_tag("latest", 6));
    CHECK(rp_valid_tag("_x", 2));
    CHECK(rp_valid_tag("V1.2-rc_3", 9));
    CHECK(!rp_valid_tag(".x", 2));
    CHECK(!rp_valid_tag("-x", 2));
    CHECK(!rp_valid_tag("", 0));

    char t[400], tag[200];
    memset(tag, 'a', 128);
    tag[128] = '\0';
    snprintf(t, sizeof(t), "/v2/foo/manifests/%s", tag);
    CHECK_INT(route(t), RP_ROUTE_OK);
    CHECK_STR(r.ref, tag);
    memset(tag, 'a', 129);
    tag[129] = '\0';
    snprintf(t, sizeof(t), "/v2/foo/manifests/%s", tag);
    CHECK_INT(route(t), RP_ROUTE_E_TAG_INVALID);
    memset(tag, 'a', 150); /* longer than a digest */
    tag[150] = '\0';
    snprintf(t, sizeof(t), "/v2/foo/manifests/%s", tag);
    CHECK_INT(route(t), RP_ROUTE_E_TAG_INVALID);
    CHECK_INT(route("/v2/foo/manifests/-x"), RP_ROUTE_E_TAG_INVALID);
    CHECK_INT(route("/v2/foo/manifests/a+b"), RP_ROUTE_E_TAG_INVALID);
    CHECK_INT(route("/v2/foo/manifests/a@b"), RP_ROUTE_E_TAG_INVALID);
}

static void test_tags_list(void)
{
    CHECK_INT(route("/v2/foo/bar/tags/list"), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_TAGS);
    CHECK_STR(r.name, "foo/bar");
    CHECK_STR(r.ref, "");
    CHECK_INT(r.n, -1);
    CHECK_INT(route("/v2/foo/tags/list?n=50&last=v1.2"), RP_ROUTE_OK);
    CHECK_INT(r.n, 50);
    CHECK_STR(r.last, "v1.2");
    CHECK_INT(route("/v2/foo/tags/list?n=0"), RP_ROUTE_OK);
    CHECK_INT(r.n, 0);
    CHECK_INT(route("/v2/foo/tags/list?n=999999"), RP_ROUTE_OK);
    CHECK_INT(r.n, RP_TAGS_N_MAX);
    CHECK_INT(route("/v2/foo/tags/list?n=18446744073709551615"), RP_ROUTE_OK);
    CHECK_INT(r.n, RP_TAGS_N_MAX);
    CHECK_INT(route("/v2/foo/tags/list?&&n=5&&"), RP_ROUTE_OK);
    CHECK_INT(r.n, 5);
    CHECK_INT(route("/v2/foo/tags/list?"), RP_ROUTE_OK);
    CHECK_INT(route("/v2/foo/tags/list?unknown=%zz&x"), RP_ROUTE_OK);
    CHECK_STR(r.extra_query, "&x"); /* a malformed escape is not forwarded */
    /* Registries' own paging parameters travel with tags/list (older Quay's next_page). */
    CHECK_INT(route("/v2/foo/tags/list?n=2&next_page=c3Rh%3D&ns=quay.io"), RP_ROUTE_OK);
    CHECK_STR(r.extra_query, "&next_page=c3Rh%3D");
    CHECK_INT(r.n, 2);
    CHECK_INT(route("/v2/foo/tags/list?a=<b>&c=d/e&f=g"), RP_ROUTE_OK);
    CHECK_STR(r.extra_query, "&f=g");
    /* An escaped key would reach the registry as a key the router validates (n, last). */
    CHECK_INT(route("/v2/foo/tags/list?%6E=99999999&%6Cast=..%2F..%2Fx&x%3D=1"), RP_ROUTE_OK);
    CHECK_STR(r.extra_query, "");
    CHECK_INT(r.n, -1);
    CHECK_INT(route("/v2/foo/tags/list?n=1%30"), RP_ROUTE_OK);
    CHECK_INT(r.n, 10);

    /* Empty is not given, as docker-registry reads it; twice, even empty, is refused. */
    CHECK_INT(route("/v2/foo/tags/list?n=&last="), RP_ROUTE_OK);
    CHECK_INT(r.n, -1);
    CHECK_STR(r.last, "");
    CHECK_INT(route("/v2/foo/tags/list?n&last"), RP_ROUTE_OK);
    CHECK_INT(r.n, -1);
    CHECK_STR(r.last, "");
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?artifactType="), RP_ROUTE_OK);
    CHECK_STR(r.artifact_type, "");
    CHECK_INT(route("/v2/foo/tags/list?n=&n=2"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?last=&last=v1"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?ns"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?ns="), RP_ROUTE_E_NAME_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?n=abc"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?n=-1"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?n=+1"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?n=1%3"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?n=18446744073709551616"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?n=1&n=2"), RP_ROUTE_E_PARAM_INVALID);
    /* A last= that is no tag is a registry's own token (Amazon ECR's base64), kept as sent
     * for the registry, not as a tag; of the grammar of a registry's own parameters only. */
    CHECK_INT(route("/v2/foo/tags/list?n=5&last=%2B%2Fx%3D%3D"), RP_ROUTE_OK);
    CHECK_STR(r.last, "");
    CHECK_STR(r.extra_query, "&last=%2B%2Fx%3D%3D");
    CHECK_INT(r.n, 5);
    CHECK_INT(route("/v2/foo/tags/list?last=.bad"), RP_ROUTE_OK);
    CHECK_STR(r.last, "");
    CHECK_STR(r.extra_query, "&last=.bad");
    CHECK_INT(route("/v2/foo/tags/list?last=a%2fb"), RP_ROUTE_OK);
    CHECK_STR(r.extra_query, "&last=a%2fb");
    CHECK_INT(route("/v2/foo/tags/list?last=v1"), RP_ROUTE_OK);
    CHECK_STR(r.last, "v1");
    CHECK_STR(r.extra_query, "");
    CHECK_INT(route("/v2/foo/tags/list?last=a/b"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?last=a b"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?last=a%zz"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?last=a<b>"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?last=%2Bx&last=v1"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/tags/list?last=v1&last=%2Bx"), RP_ROUTE_E_PARAM_INVALID);
    {
        /* Longer than a decoded value may be (511): kept whole, however long a target may
         * be (an Amazon token runs to hundreds of bytes), never cut or dropped (upstream
         * would answer the first page again). Past RP_TARGET_MAX the target is refused. */
        char t[RP_TARGET_MAX + 64];
        int n = snprintf(t, sizeof(t), "/v2/foo/tags/list?last=");
        memset(t + n, 'A', RP_TARGET_MAX + 1 - (size_t)n);
        t[RP_TARGET_MAX + 1] = '\0';
        CHECK_INT(route(t), RP_ROUTE_E_TOO_LONG);
        t[RP_TARGET_MAX] = '\0';
        CHECK_INT(route(t), RP_ROUTE_OK);
        CHECK_INT(strlen(r.extra_query), 1 + 5 + RP_TARGET_MAX - (size_t)n);
        t[n + 1600] = '\0';
        memcpy(t + n, "%2B", 3);
        CHECK_INT(route(t), RP_ROUTE_OK);
        CHECK_INT(strlen(r.extra_query), 1 + 5 + 1600);
        CHECK_STR(r.last, "");
    }
    CHECK_INT(route("/v2/foo/tags/list?x=\x01"), RP_ROUTE_E_PARAM_INVALID);
}

static void test_referrers(void)
{
    CHECK_INT(route("/v2/foo/referrers/" SHA256), RP_ROUTE_OK);
    CHECK_INT(r.kind, RP_ROUTE_REFERRERS);
    CHECK_STR(r.ref, SHA256);
    CHECK(r.ref_is_digest);
    CHECK_STR(r.artifact_type, "");
    CHECK_INT(
        route("/v2/foo/referrers/" SHA256 "?artifactType=application/vnd.example.sbom.v1+json"),
        RP_ROUTE_OK);
    CHECK_STR(r.artifact_type, "application/vnd.example.sbom.v1+json");
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?artifactType=text"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?artifactType=a/b/c"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?artifactType=/b"), RP_ROUTE_E_PARAM_INVALID);
    /* As oras-go sends it: the value encoded by url.Values. */
    CHECK_INT(
        route("/v2/foo/referrers/" SHA256 "?artifactType=application%2Fvnd.cncf.notary.signature"),
        RP_ROUTE_OK);
    CHECK_STR(r.artifact_type, "application/vnd.cncf.notary.signature");
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?artifactType=a%2Fb%3Bx"),
              RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?artifactType=a/b;x=y"), RP_ROUTE_E_PARAM_INVALID);
    char t[700];
    int n = snprintf(t, sizeof(t), "/v2/foo/referrers/" SHA256 "?artifactType=a/");
    memset(t + n, 'b', 254);
    t[n + 254] = '\0'; /* 256 characters */
    CHECK_INT(route(t), RP_ROUTE_E_PARAM_INVALID);
    t[n + 253] = '\0'; /* 255 */
    CHECK_INT(route(t), RP_ROUTE_OK);
    CHECK_INT(strlen(r.artifact_type), 255);
    /* Paged as a registry names the next page: by the last digest listed, n, and a cursor
     * of its own, all forwarded. A digest is no tag: tags lists still refuse it. */
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?n=2&last=" SHA256 "&cursor=YXQ6Mg%3D%3D"),
              RP_ROUTE_OK);
    CHECK_INT(r.n, 2);
    CHECK_STR(r.last, SHA256);
    CHECK_STR(r.extra_query, "&cursor=YXQ6Mg%3D%3D");
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?last=v1"), RP_ROUTE_OK);
    CHECK_STR(r.last, "v1");
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?last=a/b"), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/referrers/" SHA256 "?last=b3BhcXVl%3D"), RP_ROUTE_OK);
    CHECK_STR(r.last, "");
    CHECK_STR(r.extra_query, "&last=b3BhcXVl%3D");
    CHECK_INT(route("/v2/foo/tags/list?last=" SHA256), RP_ROUTE_E_PARAM_INVALID);
    CHECK_INT(route("/v2/foo/manifests/v1?last=" SHA256), RP_ROUTE_E_PARAM_INVALID);
}

static void test_too_long(void)
{
    static char t[RP_TARGET_MAX + 2];
    memset(t, 0, sizeof(t));
    memcpy(t, "/v2/foo/tags/list?x=", 20);
    memset(t + 20, 'a', RP_TARGET_MAX - 20);
    CHECK_INT(route(t), RP_ROUTE_OK);
    t[RP_TARGET_MAX] = 'a';
    CHECK_INT(route(t), RP_ROUTE_E_TOO_LONG);
    CHECK(why != NULL);
    /* why may be NULL. */
    CHECK_INT(rp_route_parse(&conf, WITH_DEF, t, strlen(t), &r, NULL), RP_ROUTE_E_TOO_LONG);
}

int main(void)
{
    RUN(test_kind_names);
    RUN(test_ping);
    RUN(test_default_route);
    RUN(test_prefix_route);
    RUN(test_dockerhub);
    RUN(test_ns);
    RUN(test_unknown_prefix_and_no_default);
    RUN(test_nested_and_keyword_names);
    RUN(test_not_found);
    RUN(test_traversal);
    RUN(test_bad_names);
    RUN(test_digests);
    RUN(test_tags);
    RUN(test_tags_list);
    RUN(test_referrers);
    RUN(test_too_long);
    UNIT_EXIT();
}
