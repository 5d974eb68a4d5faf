/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/check.c: the manifest a login check asks for, from test_image, named
 * as a pull through the proxy names it upstream. */
#include "../unit.h"

#include "../../../proxy/proxy.h"

#define D64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static const struct rp_conf_registry quay = {.name = "quay.io", .host = "quay.io"};
static const struct rp_conf_registry hub = {
    .name = "docker.io", .host = "registry-1.docker.io", .dockerhub = true};

static int parse(const struct rp_conf_registry *reg, const char *image, char *name, char *ref)
{
    return rp_check_parse_test_image(reg, image, name, RP_NAME_MAX + 1, ref, RP_DIGEST_MAX + 1);
}

static void test_forms(void)
{
    char name[RP_NAME_MAX + 1], ref[RP_DIGEST_MAX + 1];
    CHECK_INT(parse(&quay, "openshift3/ose-pod", name, ref), 0);
    CHECK_STR(name, "openshift3/ose-pod");
    CHECK_STR(ref, "latest");
    CHECK_INT(parse(&quay, "ns/app:v3.11", name, ref), 0);
    CHECK_STR(name, "ns/app");
    CHECK_STR(ref, "v3.11");
    CHECK_INT(parse(&quay, "ns/app@sha256:" D64, name, ref), 0);
    CHECK_STR(name, "ns/app");
    CHECK_STR(ref, "sha256:" D64);
    CHECK_INT(parse(&quay, "alpine", name, ref), 0);
    CHECK_STR(name, "alpine"); /* only Docker Hub has library/ */
    CHECK_INT(parse(&quay, "foo:bar:baz", name, ref), -1);
    CHECK_INT(parse(&quay, "Upper/case", name, ref), -1);
    CHECK_INT(parse(&quay, "ns/app@sha256:short", name, ref), -1);
}

/* Docker Hub serves official images only under library/: asked for "alpine" it answers 401,
 * which the check would report as the account's permissions. */
static void test_dockerhub_official_images(void)
{
    char name[RP_NAME_MAX + 1], ref[RP_DIGEST_MAX + 1];
    CHECK_INT(parse(&hub, "alpine", name, ref), 0);
    CHECK_STR(name, "library/alpine");
    CHECK_STR(ref, "latest");
    CHECK_INT(parse(&hub, "alpine:3.19", name, ref), 0);
    CHECK_STR(name, "library/alpine");
    CHECK_STR(ref, "3.19");
    CHECK_INT(parse(&hub, "alpine@sha256:" D64, name, ref), 0);
    CHECK_STR(name, "library/alpine");
    CHECK_INT(parse(&hub, "library/alpine", name, ref), 0);
    CHECK_STR(name, "library/alpine");
    CHECK_INT(parse(&hub, "bitnami/redis", name, ref), 0);
    CHECK_STR(name, "bitnami/redis");
    /* Too long once prefixed: refused, not cut. */
    char longname[RP_NAME_MAX + 1];
    memset(longname, 'a', RP_NAME_MAX - 4);
    longname[RP_NAME_MAX - 4] = '\0';
    CHECK_INT(parse(&hub, longname, name, ref), -1);
    CHECK_INT(parse(&quay, longname, name, ref), 0);
}

int main(void)
{
    RUN(test_forms);
    RUN(test_dockerhub_official_images);
    UNIT_EXIT();
}
