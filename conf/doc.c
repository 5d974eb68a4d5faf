/* SPDX-License-Identifier: Apache-2.0 */
/* conf/doc.c: writes docs/configuration.md from the option table, so the reference and the
 * parser cannot drift apart (a unit test compares the committed file with this output). */
#include "conf.h"

#include <stdio.h>
#include <string.h>

static const char intro[] =
    "<!-- Generated from the option table in conf/conf.c by rp_conf_write_doc (conf/doc.c).\n"
    "     Do not edit: tests/unit/conf fails when this file differs. Regenerate with\n"
    "     build/san/tests/unit/conf/test_conf --write-doc docs/configuration.md -->\n"
    "# Configuring regproxy\n"
    "\n"
    "regproxy reads one INI-style file (`regproxy serve -c FILE`; without `-c` it serves the\n"
    "copy of `conf/regproxy.conf` compiled into the binary). `regproxy check -c FILE` validates\n"
    "a file and prints a summary. Every error names the file, the line and the key, and never\n"
    "shows a password.\n"
    "\n"
    "```ini\n"
    "[listen \"0.0.0.0:5000\"]\n"
    "default = registry.redhat.io\n"
    "\n"
    "[cache]\n"
    "dir = /var/cache/regproxy\n"
    "max_size = 100G\n"
    "\n"
    "[registry \"registry.redhat.io\"]\n"
    "url = https://registry.redhat.io\n"
    "auth_file = /etc/regproxy/pull-secret.yaml\n"
    "```\n"
    "\n"
    "## Syntax\n"
    "\n"
    "- A section starts with `[listen \"ADDR\"]`, `[registry \"NAME\"]`, `[cache]` or\n"
    "  `[admin]`; keys before the first section are an error, and so are unknown keys and\n"
    "  duplicates.\n"
    "- `key = value`, one per line. Lines starting with `#` or `;` are comments; elsewhere `#`\n"
    "  and `;` are part of the value. Double quotes around the whole value keep leading and\n"
    "  trailing spaces; there are no escapes.\n"
    "- Lines are at most 4096 bytes and the file at most 1 MiB; CRLF line ends and a UTF-8\n"
    "  byte order mark are accepted.\n"
    "- Relative paths are taken from the configuration file's directory.\n"
    "\n"
    "Value types:\n"
    "\n"
    "| type | written as |\n"
    "| --- | --- |\n"
    "| string | taken literally |\n"
    "| bool | `yes`/`no`, `true`/`false`, `on`/`off`, `1`/`0` (any case) |\n"
    "| size | bytes: a number with an optional `K`, `M`, `G` or `T` (powers of 1024) |\n"
    "| count | a whole number |\n"
    "| duration | a number with an optional `ms`, `s`, `m`, `h` or `d`; a plain number is "
    "seconds |\n"
    "| url | `http(s)://host[:port]`, no user name or password, no path |\n"
    "| list | comma-separated items |\n"
    "| path | a file or directory name |\n"
    "| secret | like string, but never logged and wiped from memory when no longer needed |\n";

static const char *const section_intro[] = {
    [RP_CONF_SECTION_LISTEN] =
        "One section per listening address: an IP address and port (`0.0.0.0:5000`,\n"
        "`[::]:5000`), not a host name. Clients pull\n"
        "`/v2/<registry>/<repository>/...` (a registry's name or host as the first path\n"
        "component), `/v2/<repository>/...?ns=<host>` (containerd's mirror convention), or\n"
        "plain `/v2/<repository>/...`, which goes to the listener's `default` registry: that is\n"
        "how an OpenShift `oreg_url` pointing at the proxy works.\n",
    [RP_CONF_SECTION_CACHE] = "At most one section; without it the defaults below apply.\n",
    [RP_CONF_SECTION_REGISTRY] =
        "One section per upstream registry; NAME is how clients and `default` refer to it: the\n"
        "first component of an image reference, so letters, digits, '.', '_', '-', and ':' or\n"
        "'[]' of a host:port.\n"
        "The proxy dials no host that is not configured here. Credentials come from `user`\n"
        "with `password` or `password_file`, or from `auth_file`; with none the registry is\n"
        "pulled anonymously.\n",
    [RP_CONF_SECTION_ADMIN] =
        "At most one section: the operator's listener (/metrics in the Prometheus text\n"
        "format, /healthz, /readyz) and logging. Never put the admin address on a registry\n"
        "listener's network unless you mean to.\n",
};

static const char *const section_header[] = {
    [RP_CONF_SECTION_LISTEN] = "[listen \"ADDR\"]",
    [RP_CONF_SECTION_CACHE] = "[cache]",
    [RP_CONF_SECTION_REGISTRY] = "[registry \"NAME\"]",
    [RP_CONF_SECTION_ADMIN] = "[admin]",
};

static const char credentials[] =
    "## Credential files\n"
    "\n"
    "### password_file\n"
    "\n"
    "The first line of the file is the password (a trailing CR is dropped; the file may hold\n"
    "at most 64 KiB). `user` names the account, for example a registry service account\n"
    "`12345678|cluster-pull` from <https://access.redhat.com/terms-based-registry/>.\n"
    "\n"
    "### auth_file\n"
    "\n"
    "Credentials as cluster administrators already hold them, in any of these forms (JSON or\n"
    "YAML, at most 1 MiB):\n"
    "\n"
    "- a docker `config.json` (also what `podman login --authfile` writes):\n"
    "\n"
    "  ```json\n"
    "  {\"auths\": {\"registry.redhat.io\": {\"auth\": \"<base64 of user:password>\"},\n"
    "             \"quay.io\": {\"username\": \"me\", \"password\": \"...\"},\n"
    "             \"registry.example.com:5000\": {\"identitytoken\": \"...\"}}}\n"
    "  ```\n"
    "\n"
    "- the OpenShift secret downloaded from a registry service account's page (a Kubernetes\n"
    "  `Secret` of type `kubernetes.io/dockerconfigjson`; `stringData` with the plain JSON is\n"
    "  accepted too):\n"
    "\n"
    "  ```yaml\n"
    "  apiVersion: v1\n"
    "  kind: Secret\n"
    "  metadata:\n"
    "    name: 12345678-cluster-pull-pull-secret\n"
    "  data:\n"
    "    .dockerconfigjson: <base64 of a config.json as above>\n"
    "  type: kubernetes.io/dockerconfigjson\n"
    "  ```\n"
    "\n"
    "The entry is chosen as docker chooses it, by the host of the registry's `url`: a scheme\n"
    "(`https://`, `http://`) and a path in the key are ignored, so\n"
    "`https://index.docker.io/v1/` names `index.docker.io`. A key with a port matches only that\n"
    "port (`registry.example.com:443` matches `https://registry.example.com`); a key without\n"
    "one matches the host on any port. An exact host:port key is preferred to a host-only\n"
    "key, and a key without a repository path to one with it (`quay.io` before\n"
    "`quay.io/myorg`); remaining ties go to the first key in the file. For Docker Hub\n"
    "(`url = https://registry-1.docker.io` or `https://docker.io`) the keys `docker.io`,\n"
    "`index.docker.io`, `https://index.docker.io/v1/` and `registry-1.docker.io` all match.\n"
    "\n"
    "Within the entry, `auth` (base64 of `user:password`; line breaks in it are skipped, as\n"
    "docker skips them) wins over `username` and `password`, as in docker. An entry with\n"
    "only an `identitytoken` (an OAuth2 refresh token, as `docker login` stores for some\n"
    "registries) is used as docker uses it: the token flow exchanges it for access tokens\n"
    "with the token spec's OAuth2 POST\n"
    "(`grant_type=refresh_token`). Entries that only point at a credential store\n"
    "(`credsStore`, `credHelpers`) cannot be read; export the credentials with\n"
    "`podman login --authfile FILE` instead.\n"
    "\n"
    "Errors name the file and what is wrong (invalid JSON or YAML with its line and column,\n"
    "binary data, a missing or mistyped field with its path such as\n"
    "`auths.\"quay.io\".auth`, bad base64, a file over 1 MiB) and, when no key matches, list\n"
    "the keys present. They never show a secret.\n"
    "\n"
    "### Permissions\n"
    "\n"
    "A `password_file` or `auth_file` that its group or others may access (mode `& 077`) is\n"
    "refused: `chmod 600` it. A Kubernetes secret volume gives its files mode 0644 unless\n"
    "the volume sets `defaultMode: 0400`, and with a pod `fsGroup` the kubelet still makes\n"
    "them group-readable (0440). Where a readable file cannot be helped,\n"
    "`allow_readable_credentials = yes` in the registry's section accepts the file and logs a\n"
    "warning instead.\n"
    "\n"
    "### Rotation\n"
    "\n"
    "Every credential file read is remembered with its device, inode, size and modification\n"
    "and change times, so the proxy can notice a rotated token (including the atomic swap\n"
    "of a Kubernetes secret volume) and reload. A listener's `tls_cert`, `tls_key` and\n"
    "`htpasswd` are watched the same way, so a certificate renewed by cert-manager is\n"
    "served without a SIGHUP. A reload that is refused (a certificate written before its\n"
    "key, a configuration file broken meanwhile) is logged once and tried again when a\n"
    "watched file, or the configuration file, changes next. A listener whose `tls_cert`\n"
    "and `tls_key` hold the same bytes as when its TLS context was built keeps that context\n"
    "across a reload, so clients keep resuming their TLS sessions through a credential\n"
    "rotation or a SIGHUP.\n"
    "\n"
    "## Importing an openshift-ansible inventory\n"
    "\n"
    "The inventory importer (`rp_conf_import_inventory` in `conf/`) turns the registry\n"
    "settings of an OpenShift 3.x inventory into a regproxy configuration. It reads an INI\n"
    "inventory's `[OSEv3:vars]` (or `[all:vars]`) section, or a YAML `group_vars` file or\n"
    "YAML inventory, and uses:\n"
    "\n"
    "| inventory variable | becomes |\n"
    "| --- | --- |\n"
    "| `oreg_url` | its registry becomes a `[registry]` section and the `default` of "
    "`[listen \"0.0.0.0:PORT\"]` (PORT from the proxy's address, 5000 by default; without "
    "`oreg_url`: `registry.redhat.io`, or `docker.io` for "
    "`openshift_deployment_type=origin`) |\n"
    "| `oreg_auth_user`, `oreg_auth_password` | that registry's `user` and `password_file` |\n"
    "| `oreg_test_login` | its `test_login` |\n"
    "| `openshift_additional_registry_credentials` | one `[registry]` per item: `host`, "
    "`user`, `password` (to a `password_file`), `test_login`, `test_image`, `tls_verify`; "
    "in the Python-literal form `[{'host': ..., 'test_login': 'False'}, ...]` or as a YAML "
    "list |\n"
    "| `openshift_https_proxy`, `openshift_http_proxy`, `openshift_no_proxy` | each registry's "
    "`proxy` (the https one for https registries), except those `openshift_no_proxy` names; "
    "a proxy URL with credentials becomes a comment saying to set it as `https_proxy` in "
    "regproxy's environment instead |\n"
    "\n"
    "Each password is written to `OUT_DIR/HOST.password` with mode 0600 and never printed.\n"
    "The output closes with the `oreg_url` to put in the inventory so the cluster pulls\n"
    "through the proxy, e.g. `oreg_url=proxy.example.com:5000/openshift3/ose-${component}:"
    "${version}`.\n";

/* A table cell: '|' would end the cell and a newline the row. */
static void cell(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", out);
        else if (*s == '\n')
            fputc(' ', out);
        else
            fputc(*s, out);
    }
}

/* "`a`, `b`" from the space-separated key list of requires/conflicts. */
static void key_list(FILE *out, const char *keys)
{
    bool first = true;
    while (*keys) {
        size_t n = strcspn(keys, " ");
        if (n > 0) {
            fprintf(out, "%s`%.*s`", first ? "" : ", ", (int)n, keys);
            first = false;
        }
        keys += n;
        while (*keys == ' ')
            keys++;
    }
}

int rp_conf_write_doc(FILE *out)
{
    size_t n;
    const struct rp_conf_option *o = rp_conf_options(&n);
    fputs(intro, out);
    for (int k = RP_CONF_SECTION_LISTEN; k <= RP_CONF_SECTION_ADMIN; k++) {
        fprintf(out,
                "\n## %s\n\n%s\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n",
                section_header[k], section_intro[k]);
        for (size_t i = 0; i < n; i++) {
            if ((int)o[i].section != k)
                continue;
            fprintf(out, "| `%s`%s | %s | ", o[i].key,
                    (o[i].flags & RP_CONF_F_REQUIRED) ? " (required)" : "",
                    rp_conf_type_name(o[i].type));
            if (o[i].default_text) {
                fputc('`', out);
                cell(out, o[i].default_text);
                fputc('`', out);
            } else {
                fputs("none", out);
            }
            fputs(" | ", out);
            cell(out, o[i].help);
            if (o[i].requires) {
                fputs(". Needs ", out);
                key_list(out, o[i].requires);
            }
            if (o[i].conflicts) {
                fputs(". Not with ", out);
                key_list(out, o[i].conflicts);
            }
            fputs(" |\n", out);
        }
    }
    fputc('\n', out);
    fputs(credentials, out);
    fflush(out);
    return ferror(out) ? -1 : 0;
}
