/* SPDX-License-Identifier: Apache-2.0 */
/* main: the command line. `serve` runs the proxy; `check` validates a configuration. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../conf/conf.h"
#include "../util/util.h"
#include "proxy.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: regproxy COMMAND [OPTIONS]\n"
               "\n"
               "An anonymous Docker Registry v2 endpoint that pulls through authenticating\n"
               "registries, holding their credentials in one place.\n"
               "\n"
               "commands:\n"
               "  serve [-c FILE] [-v]   serve the registry API (default config: the embedded\n"
               "                         copy of conf/regproxy.conf)\n"
               "  check [-c FILE]        validate a configuration file, then log in to each\n"
               "                         registry with test_login (ping, token, manifest of\n"
               "                         test_image): one line each; non-zero exit on failure\n"
               "  help                   this text\n"
               "\n"
               "options:\n"
               "  -c, --config FILE      configuration file (INI; see docs/configuration.md)\n"
               "  -v, --verbose          debug logging\n"
               "  -h, --help             this text\n"
               "  -V, --version          print the version\n");
}

static struct rp_conf *load(const char *path)
{
    char err[512];
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
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "+c:vhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'v':
            rp_log_set_level(RP_LOG_DEBUG);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("regproxy %s\n", RP_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    /* Options may also follow the command: `regproxy serve -c FILE`. */
    optind++;
    while ((c = getopt_long(argc, argv, "c:vhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'v':
            rp_log_set_level(RP_LOG_DEBUG);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("regproxy %s\n", RP_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "regproxy: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
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
        fflush(stdout);
        int rc = rp_check_main(conf);
        rp_conf_free(conf);
        return rc;
    }
    fprintf(stderr, "regproxy: unknown command '%s' (see regproxy --help)\n", cmd);
    return 2;
}
