/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/pins.c: which repositories the `pin` patterns pin, against a
 * hand-built configuration. */
#include "../unit.h"

#include "../../../proxy/offline.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static struct rp_conf_registry regs[] = {
    {.name = "redhat",
     .url = "https://registry.redhat.io",
     .host = "registry.redhat.io",
     .port = 443,
     .hostport = "registry.redhat.io"},
    {.name = "hub",
     .url = "https://registry-1.docker.io",
     .host = "registry-1.docker.io",
     .port = 443,
     .hostport = "registry-1.docker.io",
     .dockerhub = true},
    {.name = "local",
     .url = "https://127.0.0.1:5001",
     .host = "127.0.0.1",
     .port = 5001,
     .hostport = "127.0.0.1:5001"},
};

static bool pinned(const char *pattern, const char *registry, const char *repo)
{
    char *pins[] = {(char *)pattern};
    struct rp_conf conf = {.registries = regs, .n_registries = 3};
    conf.cache.pins = pins;
    conf.cache.n_pins = 1;
    return rp_pin_pattern_match(&conf, registry, repo);
}

static void test_name_or_host(void)
{
    CHECK(pinned("redhat/openshift3/*", "redhat", "openshift3/ose-pod"));
    CHECK(pinned("registry.redhat.io/openshift3/*", "redhat", "openshift3/ose-pod"));
    CHECK(pinned("registry.redhat.io/*", "redhat", "a/b/c"));
    CHECK(pinned("127.0.0.1:5001/ns/x", "local", "ns/x"));
    CHECK(!pinned("registry.redhat.io/openshift3/*", "redhat", "rhel8/ubi"));
    CHECK(!pinned("quay.io/*", "redhat", "openshift3/ose-pod"));
}

/* Docker Hub as its clients name it: "docker.io", official images without "library/". */
static void test_dockerhub(void)
{
    CHECK(pinned("docker.io/nginx", "hub", "library/nginx"));
    CHECK(pinned("docker.io/library/nginx", "hub", "library/nginx"));
    CHECK(pinned("hub/nginx", "hub", "library/nginx"));
    CHECK(pinned("registry-1.docker.io/nginx", "hub", "library/nginx"));
    CHECK(pinned("docker.io/bitnami/*", "hub", "bitnami/redis"));
    CHECK(!pinned("docker.io/nginx", "hub", "library/redis"));
    CHECK(!pinned("docker.io/redis", "hub", "bitnami/redis"));
    /* Only a one-component rest is a short name, and only on Docker Hub. */
    CHECK(!pinned("docker.io/a/b", "hub", "library/a/b"));
    CHECK(!pinned("redhat/ubi", "redhat", "library/ubi"));
    CHECK(!pinned("docker.io/ns/x", "local", "ns/x"));
}

static char *read_pins(const char *dir)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/" RP_PINS_FILE, dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* Lines already in the file (the last without its newline), repeated in the batch, and
 * new ones: each new line once, in order, the file otherwise as it was. */
static void test_add_lines(void)
{
    char dir[256];
    unit_mkdtemp(dir, sizeof(dir), "rp-test-pins");
    char path[512];
    snprintf(path, sizeof(path), "%s/" RP_PINS_FILE, dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs("# mirrored\nr/a:1@sha256:aa\n\nr/b@sha256:bb", f);
    fclose(f);
    char *batch[] = {"r/b@sha256:bb",   "r/c:2@sha256:cc", "r/a:1@sha256:aa", "",
                     "r/c:2@sha256:cc", "r/a:1@sha256:a",  "r/d@sha256:dd"};
    CHECK(rp_pins_add_lines(dir, batch, sizeof(batch) / sizeof(batch[0])) == 0);
    CHECK_STR(read_pins(dir), "# mirrored\nr/a:1@sha256:aa\n\nr/b@sha256:bb\nr/c:2@sha256:cc\n"
                              "r/a:1@sha256:a\nr/d@sha256:dd\n");
    /* Nothing new: the file is left alone. */
    CHECK(rp_pins_add_lines(dir, batch, 3) == 0);
    CHECK_STR(read_pins(dir), "# mirrored\nr/a:1@sha256:aa\n\nr/b@sha256:bb\nr/c:2@sha256:cc\n"
                              "r/a:1@sha256:a\nr/d@sha256:dd\n");
    unlink(path);
    rmdir(dir);
}

static bool file_is(const char *path, const char *want)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    return n == strlen(want) && memcmp(buf, want, n) == 0;
}

/* The pins file lives in the cache directory, where others may write: a symlink planted as
 * pins.tmp made the rewrite truncate and fill the file it points to, and one planted as pins
 * made it copy whatever file that names (a secret, as the user running the import) into the
 * world-readable pins file. Neither is followed. */
static void test_add_lines_planted_symlinks(void)
{
    char dir[256], out[256], pins[512], tmp[600], victim[600];
    unit_mkdtemp(dir, sizeof(dir), "rp-test-pins");
    unit_mkdtemp(out, sizeof(out), "rp-test-pins-out");
    snprintf(pins, sizeof(pins), "%s/" RP_PINS_FILE, dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", pins);
    snprintf(victim, sizeof(victim), "%s/secret", out);
    FILE *f = fopen(victim, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs("root:secret-hash\n", f);
    fclose(f);
    char *batch[] = {"r/x@sha256:xx"};

    CHECK(symlink(victim, tmp) == 0);
    CHECK(rp_pins_add_lines(dir, batch, 1) == 0);
    CHECK(file_is(victim, "root:secret-hash\n"));
    CHECK_STR(read_pins(dir), "r/x@sha256:xx\n");
    struct stat st;
    CHECK(lstat(tmp, &st) != 0);
    unlink(tmp);
    unlink(pins);

    CHECK(symlink(victim, pins) == 0);
    CHECK(rp_pins_add_lines(dir, batch, 1) != 0);
    CHECK(file_is(victim, "root:secret-hash\n"));
    CHECK(lstat(pins, &st) == 0 && S_ISLNK(st.st_mode)); /* nothing copied out of it */
    unlink(pins);
    unlink(tmp);
    unlink(victim);
    rmdir(out);
    rmdir(dir);
}

int main(void)
{
    RUN(test_add_lines);
    RUN(test_add_lines_planted_symlinks);
    RUN(test_name_or_host);
    RUN(test_dockerhub);
    UNIT_EXIT();
}
