/* SPDX-License-Identifier: Apache-2.0 */
/* main: the command line. `serve` runs the proxy, `check` validates a configuration and
 * logs in to each registry, `import-inventory` turns an openshift-ansible inventory into a
 * configuration, `help` explains each. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../conf/conf.h"
#include "../util/util.h"
#include "proxy.h"

struct command_help {
    const char *name;
    const char *synopsis;
    const char *text;
};

static const struct command_help commands[] = {
    {"serve", "serve [-c FILE] [-v]",
     "Serves the Docker Registry v2 API anonymously on every [listen] address, pulling\n"
     "through the configured registries with their credentials and caching what it pulls.\n"
     "Without -c it serves the embedded default configuration (conf/regproxy.conf).\n"
     "At start-up it logs in to each registry with test_login (as `check` does) and logs\n"
     "the verdicts; a failing registry does not stop the others.\n"
     "Signals: SIGHUP re-reads the configuration (credentials and per-registry settings\n"
     "apply in place, tokens are dropped, pulls in flight continue; a broken file is\n"
     "refused and the old configuration keeps serving); a change to a password_file or\n"
     "auth_file does the same by itself. SIGTERM/SIGINT stop.\n"
     "The admin listener ([admin] listen, default 127.0.0.1:5001) serves /metrics,\n"
     "/healthz and /readyz.\n"},
    {"check", "check [-c FILE]",
     "Validates the configuration (errors name file, line and key), prints its warnings,\n"
     "then for each registry with test_login = yes: pings it, runs the token flow and asks\n"
     "for the manifest of test_image. Prints one line per registry: `ok (...)`, `skipped`\n"
     "or `FAILED: <reason>` (credentials rejected by realm X, realm not allowed, TLS\n"
     "verification failed, image not found, unreachable, timed out). Exits 1 when any\n"
     "registry failed.\n"},
    {"import-inventory", "import-inventory INVENTORY [-o DIR] [--proxy HOST:PORT]",
     "Reads an openshift-ansible inventory (INI with [OSEv3:vars], or YAML group_vars) and\n"
     "prints an equivalent regproxy configuration: oreg_url's registry becomes the default\n"
     "registry with oreg_auth_user / oreg_auth_password, and every entry of\n"
     "openshift_additional_registry_credentials becomes a [registry] section. Passwords are\n"
     "written to DIR/<host>.password (mode 0600; DIR defaults to ./regproxy-credentials),\n"
     "never into the configuration. Ends with the new oreg_url pointing at the proxy\n"
     "(--proxy, default proxy.example.com:5000).\n"},
    {"help", "help [COMMAND]", "Explains a command, or lists them all.\n"},
};

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
    return conf;
}

int main(int argc, char **argv)
{
    enum { OPT_PROXY = 1000 };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"output", required_argument, NULL, 'o'},
        {"proxy", required_argument, NULL, OPT_PROXY},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *outdir = "regproxy-credentials", *proxy = "proxy.example.com:5000";
    const char *cmd = NULL;
    const char *args[4];
    size_t nargs = 0;
    /* Options may come before or after the command: `regproxy serve -c FILE`. */
    int c;
    while ((c = getopt_long(argc, argv, "-c:vhVo:", opts, NULL)) != -1) {
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
            break;
        case 'o':
            outdir = optarg;
            break;
        case OPT_PROXY:
            proxy = optarg;
            break;
        case 'h':
            return help(cmd);
        case 'V':
            printf("regproxy %s\n", RP_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!cmd) {
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "help") == 0)
        return help(nargs ? args[0] : NULL);
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
    if (nargs) {
        fprintf(stderr, "regproxy: unexpected argument '%s'\n", args[0]);
        return 2;
    }
    if (strcmp(cmd, "serve") == 0) {
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
