/* SPDX-License-Identifier: Apache-2.0 */
/* main: the command line. `serve` runs the proxy, `check` validates a configuration and
 * logs in to each registry, `import-inventory` turns an openshift-ansible inventory into a
 * configuration, `mirror`, `export` and `import` prepare and feed disconnected clusters,
 * `help` explains each. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "../conf/conf.h"
#include "../util/util.h"
#include "offline.h"
#include "proxy.h"

struct command_help {
    const char *name;
    const char *synopsis;
    const char *text;
    const char *opts; /* the options it takes, by their letters in opt_name (-v: all do) */
};

static const struct command_help commands[] = {
    {"serve", "serve [-c FILE] [-v]",
     "Serves the Docker Registry v2 API anonymously on every [listen] address, pulling\n"
     "through the configured registries with their credentials and caching what it pulls.\n"
     "Without -c it serves the embedded default configuration (conf/regproxy.conf).\n"
     "At start-up it logs in to each registry with test_login (as `check` does) and logs\n"
     "the verdicts; a failing registry does not stop the others.\n"
     "Signals: SIGHUP re-reads the configuration (credentials and per-registry settings\n"
     "apply in place, the tokens of a registry whose credentials, token_realms, TLS or\n"
     "proxy settings changed are dropped, pulls in flight continue; a broken file is\n"
     "refused and the old configuration keeps serving); a change to a password_file,\n"
     "auth_file, tls_cert, tls_key or htpasswd file does the same by itself.\n"
     "SIGTERM/SIGINT drain, then stop.\n"
     "The admin listener ([admin] listen, default 127.0.0.1:5001) serves /metrics,\n"
     "/healthz and /readyz.\n",
     "c"},
    {"check", "check [-c FILE]",
     "Validates the configuration (errors name file, line and key; each listener's\n"
     "tls_cert, tls_key and htpasswd are loaded as serve loads them), prints its warnings,\n"
     "then for each registry with test_login = yes: pings it, runs the token flow and asks\n"
     "for the manifest of test_image. Prints one line per registry: `ok (...)`, `skipped`\n"
     "or `FAILED: <reason>` (credentials rejected by realm X, none configured where the\n"
     "realm wants some, realm not allowed, TLS verification failed, TLS handshake failed,\n"
     "image not found, unreachable, timed out). Exits 1 when any registry failed.\n",
     "c"},
    {"import-inventory", "import-inventory INVENTORY [-o DIR] [--proxy HOST:PORT]",
     "Reads an openshift-ansible inventory (INI with [OSEv3:vars], or YAML group_vars) and\n"
     "prints an equivalent regproxy configuration: oreg_url's registry becomes the default\n"
     "registry with oreg_auth_user / oreg_auth_password, and every entry of\n"
     "openshift_additional_registry_credentials becomes a [registry] section. Passwords are\n"
     "written to DIR/<host>.password (mode 0600; DIR defaults to ./regproxy-credentials),\n"
     "never into the configuration. Ends with the new oreg_url pointing at the proxy\n"
     "(--proxy, default proxy.example.com:5000).\n",
     "op"},
    {"mirror", "mirror -c FILE LIST [--platform OS/ARCH[,...]] [-j N]",
     "Pulls every image of LIST into the cache ahead of a disconnection. LIST has one image\n"
     "a line, REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:... ('#' starts a comment), where\n"
     "REGISTRY is a configured registry's name or host, as in the proxy's prefix routing.\n"
     "The proxy runs in-process on an internal 127.0.0.1 listener and every manifest, the\n"
     "children of indexes (only those of --platform when given), every config and layer\n"
     "are pulled through it, so they are verified, linked and tagged as a cluster's pull\n"
     "would; the mirror checks each digest again. N blobs at a time (-j, default 4).\n"
     "Everything mirrored is pinned (never evicted) and recorded in the cache dir's `pins`\n"
     "file, which `serve` re-applies at every start. A rerun fetches only what is missing.\n"
     "Prints a line per image (a progress line on a terminal) and a summary; exits 0 when\n"
     "every image succeeded, else 1, naming each failure with the proxy's error (a LIST\n"
     "naming no image is an error too).\n"
     "The cache must not be in use by a running regproxy.\n",
     "cPj"},
    {"export", "export -c FILE [LIST] -o BUNDLE [--split SIZE] | [LIST] --oci DIR",
     "Writes the cached images of LIST (default: everything in the `pins` file, i.e. every\n"
     "image mirrored or imported) into BUNDLE, a single file checked end to end (format\n"
     "version 1: header, LZ4-compressed metadata and manifests, blobs as stored, a sha256\n"
     "trailer). --split SIZE (e.g. 4G) writes BUNDLE.000, BUNDLE.001, ... of at most SIZE\n"
     "bytes each. --oci DIR writes an OCI image layout instead, readable by skopeo copy\n"
     "oci:DIR:TAG (each image is named REGISTRY/REPO:TAG, and TAG alone when unique;\n"
     "Docker-format images are written as they are, with a warning: skopeo and podman do\n"
     "not read them from a layout).\n"
     "Every blob's digest is checked as it is copied. Needs the cache not in use.\n",
     "coSO"},
    {"import", "import -c FILE BUNDLE",
     "Loads a bundle (BUNDLE, or BUNDLE.000 for a split one) into the cache. The whole\n"
     "bundle is read and verified first (format version, every part present, every digest\n"
     "and size, the trailer checksum); a truncated, corrupted or incomplete bundle is\n"
     "refused without touching the cache. Then it is published: blobs, each manifest once\n"
     "what it names is in, repository links, pins (recorded in the `pins` file), and tags\n"
     "last. Importing a bundle twice changes nothing. Every registry the bundle names must\n"
     "be configured (offline = yes and no url is the disconnected setup). Stop the proxy\n"
     "serving the cache first.\n",
     "c"},
    {"verify", "verify -c FILE",
     "Reads every blob and manifest in the cache and checks it against its digest. Content\n"
     "is verified as it arrives and then served as stored, so damage on disk that keeps a\n"
     "file's size (a flipped bit, zeros after a crash) would reach every client, each\n"
     "failing its own check. Each damaged entry is named and removed, so the next pull\n"
     "fetches it again (in an offline cache: mirror or import it again); an unreadable\n"
     "one is named and kept. Every mirrored or imported image that lost a manifest or a\n"
     "layer (removed, or its file gone) is named. Ends with a summary; exits 0 when\n"
     "everything matched and every such image is whole, else 1 (also when the pins file\n"
     "cannot be read: then no such image was checked).\n"
     "Needs the cache not in use.\n",
     "c"},
    {"help", "help [COMMAND]", "Explains a command, or lists them all.\n", ""},
};

/* The option letters of commands[].opts, as written on the command line. */
static const char *opt_name(int letter)
{
    switch (letter) {
    case 'c':
        return "-c/--config";
    case 'o':
        return "-o/--output";
    case 'p':
        return "--proxy";
    case 'P':
        return "--platform";
    case 'j':
        return "-j/--jobs";
    case 'S':
        return "--split";
    default:
        return "--oci";
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: regproxy COMMAND [OPTIONS]\n"
               "\n"
               "An anonymous Docker Registry v2 endpoint that pulls through authenticating\n"
               "registries, holding their credentials in one place, and caches what it pulls.\n"
               "\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %s\n", commands[i].synopsis);
    fprintf(f, "\n"
               "options:\n"
               "  -c, --config FILE      configuration file (INI; see docs/configuration.md)\n"
               "  -v, --verbose          debug logging\n"
               "  -o, --output DIR       inventory import: where password files go\n"
               "      --proxy HOST:PORT  inventory import: the proxy's address for oreg_url\n"
               "  -o, --output BUNDLE    export: the bundle to write\n"
               "      --platform LIST    mirror: OS/ARCH[/VARIANT],... of indexes to mirror\n"
               "  -j, --jobs N           mirror: blobs fetched at once (default 4)\n"
               "      --split SIZE       export: parts of at most SIZE bytes (K, M, G, T)\n"
               "      --oci DIR          export: an OCI image layout instead of a bundle\n"
               "  -h, --help             this text\n"
               "  -V, --version          print the version\n"
               "\n"
               "`regproxy help COMMAND` explains a command; man regproxy has the rest.\n");
}

static int help(const char *cmd)
{
    if (!cmd) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, cmd) == 0) {
            printf("usage: regproxy %s\n\n%s", commands[i].synopsis, commands[i].text);
            return 0;
        }
    }
    fprintf(stderr, "regproxy: no command '%s' (see regproxy help)\n", cmd);
    return 2;
}

/* "4G", "700M", "65536": bytes, suffixes in powers of 1024. 0 on a bad value. */
static uint64_t parse_size(const char *s)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return 0;
    unsigned shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    default:
        return 0;
    }
    if (*end && end[1] && !((end[1] == 'B' || end[1] == 'b') && !end[2]))
        return 0;
    if (v > (UINT64_MAX >> shift))
        return 0;
    return (uint64_t)v << shift;
}

/* Every command that reads credentials first makes the process undumpable: no core file
 * (which would hold passwords, tokens and the Authorization headers in curl's and
 * OpenSSL's buffers, none of which we can wipe) and no ptrace by the same user. */
static void no_core_dumps(void)
{
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        fprintf(stderr, "regproxy: cannot turn core dumps off: %s\n", strerror(errno));
}

static struct rp_conf *load(const char *path)
{
    char err[1024];
    struct rp_conf *conf = NULL;
    int rc;
    if (path) {
        rc = rp_conf_load_file(path, &conf, err, sizeof(err));
    } else {
        const char *text = rp_conf_default_text();
        rc = rp_conf_parse(text, strlen(text), "<embedded>", &conf, err, sizeof(err));
    }
    if (rc != 0) {
        fprintf(stderr, "regproxy: %s\n", err);
        return NULL;
    }
    /* [admin] core_dumps: the admin debugging a crash takes the risk knowingly. */
    if (conf->admin.core_dumps && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0)
        fprintf(stderr, "regproxy: cannot turn core dumps on: %s\n", strerror(errno));
    return conf;
}

int main(int argc, char **argv)
{
    enum { OPT_PROXY = 1000, OPT_PLATFORM, OPT_SPLIT, OPT_OCI };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"output", required_argument, NULL, 'o'},
        {"proxy", required_argument, NULL, OPT_PROXY},
        {"platform", required_argument, NULL, OPT_PLATFORM},
        {"jobs", required_argument, NULL, 'j'},
        {"split", required_argument, NULL, OPT_SPLIT},
        {"oci", required_argument, NULL, OPT_OCI},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *outdir = "regproxy-credentials", *proxy = "proxy.example.com:5000";
    const char *cmd = NULL, *platform = NULL, *oci = NULL, *split = NULL;
    bool have_output = false;
    int jobs = 4;
    const char *args[4];
    size_t nargs = 0;
    char given[16] = ""; /* option letters seen, as in commands[].opts */
    bool want_help = false;
    rp_conf_json_wipe_freed();
    /* Options may come before or after the command: `regproxy serve -c FILE`. */
    int c;
    while ((c = getopt_long(argc, argv, "-c:vhVo:j:", opts, NULL)) != -1) {
        int letter = c == OPT_PROXY      ? 'p'
                     : c == OPT_PLATFORM ? 'P'
                     : c == OPT_SPLIT    ? 'S'
                     : c == OPT_OCI      ? 'O'
                     : strchr("coj", c)  ? c
                                         : 0;
        if (letter && !strchr(given, letter))
            given[strlen(given)] = (char)letter;
        switch (c) {
        case 1:
            if (!cmd)
                cmd = optarg;
            else if (nargs < sizeof(args) / sizeof(args[0]))
                args[nargs++] = optarg;
            else {
                fprintf(stderr, "regproxy: too many arguments\n");
                return 2;
            }
            break;
        case 'c':
            config = optarg;
            break;
        case 'v':
            rp_log_set_level(RP_LOG_DEBUG);
            rp_verbose = true;
            break;
        case 'o':
            outdir = optarg;
            have_output = true;
            break;
        case OPT_PROXY:
            proxy = optarg;
            break;
        case OPT_PLATFORM:
            platform = optarg;
            break;
        case 'j': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (!end || *end || v < 1 || v > 256) {
                fprintf(stderr, "regproxy: -j wants a number from 1 to 256\n");
                return 2;
            }
            jobs = (int)v;
            break;
        }
        case OPT_SPLIT:
            split = optarg;
            break;
        case OPT_OCI:
            oci = optarg;
            break;
        case 'h':
            want_help = true; /* `regproxy -h serve` explains serve: the command may follow */
            break;
        case 'V':
            printf("regproxy %s\n", RP_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (want_help)
        return help(cmd && strcmp(cmd, "help") == 0 && nargs ? args[0] : cmd);
    if (!cmd) {
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "help") == 0)
        return help(nargs ? args[0] : NULL);
    /* An option the command does not take is an error, not silently ignored: `serve
     * --proxy X` or `import -o F` means the user expects something that will not happen. */
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, cmd) != 0)
            continue;
        for (const char *g = given; *g; g++)
            if (!strchr(commands[i].opts, *g)) {
                fprintf(stderr,
                        "regproxy %s: %s does not apply to this command\nusage: regproxy %s\n", cmd,
                        opt_name(*g), commands[i].synopsis);
                return 2;
            }
    }
    no_core_dumps();
    if (strcmp(cmd, "import-inventory") == 0) {
        if (nargs != 1) {
            fprintf(stderr, "usage: regproxy import-inventory INVENTORY [-o DIR] "
                            "[--proxy HOST:PORT]\n");
            return 2;
        }
        char err[1024];
        if (rp_conf_import_inventory(args[0], outdir, proxy, stdout, err, sizeof(err)) != 0) {
            fprintf(stderr, "regproxy: %s\n", err);
            return 1;
        }
        return 0;
    }
    if (strcmp(cmd, "mirror") == 0 || strcmp(cmd, "export") == 0 || strcmp(cmd, "import") == 0) {
        /* The cache they work on is the configuration's: the embedded default would be
         * /var/cache/regproxy, which is rarely what a one-off command means. */
        if (!config) {
            fprintf(stderr, "regproxy %s: -c FILE is required\n", cmd);
            return 2;
        }
        bool is_export = strcmp(cmd, "export") == 0;
        if ((strcmp(cmd, "export") != 0 && nargs != 1) || (is_export && nargs > 1) ||
            (is_export && !have_output == !oci)) {
            for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (strcmp(commands[i].name, cmd) == 0)
                    fprintf(stderr, "usage: regproxy %s\n", commands[i].synopsis);
            return 2;
        }
        if (is_export && ((oci && !*oci) || (have_output && !*outdir))) {
            fprintf(stderr, "regproxy export: %s names no file\n", oci ? "--oci" : "-o");
            return 2;
        }
        uint64_t split_bytes = 0;
        if (split && (!is_export || oci)) {
            fprintf(stderr, "regproxy: --split SIZE goes with export -o (e.g. --split 4G)\n");
            return 2;
        }
        if (split && (split_bytes = parse_size(split)) == 0) {
            fprintf(stderr,
                    "regproxy export: bad --split size '%s': a whole number of bytes, "
                    "optionally with K, M, G or T (e.g. 4G, or 4480M for a DVD)\n",
                    split);
            return 2;
        }
        struct rp_conf *conf = load(config);
        if (!conf)
            return 1;
        int rc;
        if (strcmp(cmd, "mirror") == 0) {
            struct rp_mirror_opts mo = {.list = args[0], .platforms = platform, .jobs = jobs};
            rc = rp_mirror_main(conf, &mo);
        } else if (is_export) {
            struct rp_export_opts eo = {.list = nargs ? args[0] : NULL,
                                        .output = have_output ? outdir : NULL,
                                        .split = split_bytes,
                                        .oci = oci};
            rc = rp_export_main(conf, &eo);
        } else {
            rc = rp_import_main(conf, args[0]);
        }
        rp_conf_free(conf);
        return rc;
    }
    if (nargs) {
        fprintf(stderr, "regproxy: unexpected argument '%s'\n", args[0]);
        return 2;
    }
    if (strcmp(cmd, "verify") == 0) {
        if (!config) { /* as for mirror: the embedded default's cache is rarely the one meant */
            fprintf(stderr, "regproxy verify: -c FILE is required\n");
            return 2;
        }
        struct rp_conf *conf = load(config);
        if (!conf)
            return 1;
        int rc = rp_verify_main(conf);
        rp_conf_free(conf);
        return rc;
    }
    if (strcmp(cmd, "serve") == 0) {
        /* Until rp_server_run's handlers are in place (a large cache takes a while to
         * open), these signals are held pending, then handled: SIGHUP's default action
         * would end the process (systemctl reload soon after start), and a PID 1 (in a
         * container) drops a SIGTERM or SIGINT it has no handler for, so a pod deleted
         * during start-up would serve on until the SIGKILL. */
        rp_server_hold_signals(SIG_BLOCK);
        struct rp_conf *conf = load(config);
        if (!conf)
            return 1;
        int rc = rp_server_run(conf);
        rp_conf_free(conf);
        return rc;
    }
    if (strcmp(cmd, "check") == 0) {
        struct rp_conf *conf = load(config);
        if (!conf)
            return 1;
        /* What serve loads only when it opens the listeners: a key that is not the
         * certificate's, or an htpasswd line it cannot read, fails here too. */
        if (rp_server_check_listeners(conf) != 0) {
            fprintf(stderr,
                    "regproxy: %s: a listener's tls_cert, tls_key or htpasswd did not "
                    "load (see above)\n",
                    conf->source);
            rp_conf_free(conf);
            return 1;
        }
        printf("%s: configuration ok: %zu listener(s), %zu registr%s\n", conf->source,
               conf->n_listens, conf->n_registries, conf->n_registries == 1 ? "y" : "ies");
        for (size_t i = 0; i < conf->n_warnings; i++)
            printf("warning: %s\n", conf->warnings[i]);
        fflush(stdout);
        int rc = rp_check_main(conf);
        rp_conf_free(conf);
        return rc;
    }
    fprintf(stderr, "regproxy: unknown command '%s' (see regproxy help)\n", cmd);
    return 2;
}
