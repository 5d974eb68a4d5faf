/* SPDX-License-Identifier: Apache-2.0 */
/* conf: the configuration file (INI style, see docs/configuration.md), its validation and
 * defaults, and the embedded default configuration. Plain C, no I/O beyond reading files. */
#ifndef RP_CONF_H
#define RP_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* One upstream registry: a [registry "NAME"] section. All strings are owned by the
 * struct rp_conf they belong to and live as long as it does. */
struct rp_conf_registry {
    char *name;     /* the section's NAME, e.g. "registry.redhat.io" or "docker.io" */
    char *url;      /* as configured, e.g. "https://registry.redhat.io" (no trailing slash);
                     * an offline registry without url gets "https://NAME" (NAME must then
                     * be a host[:port]), so host and hostport route as usual. Never dialed
                     * while offline. */
    char *scheme;   /* "https" or "http", lower case */
    char *host;     /* lower case host name or IP literal (IPv6 without brackets) */
    int port;       /* explicit port, or 443 / 80 from the scheme */
    char *hostport; /* "host" when the port is the scheme's default, else "host:port"
                     * (IPv6 literals in brackets): what clients and Host headers use */
    bool dockerhub; /* Docker Hub: single-component names get "library/" (true when the
                     * host is registry-1.docker.io or docker.io) */
    char *user;     /* NULL for anonymous */
    char *password; /* secret: from `password` or the first line of `password_file`;
                     * never logged; zeroed when the conf is freed */
    char *password_file;
    bool tls_verify; /* default yes */
    char *ca_file;   /* PEM bundle to verify the registry's TLS with; NULL = system CAs */
    /* Egress HTTP(S) proxy (http(s)://host[:port]) for every connection made for this
     * registry: its API, its token realm, the CDNs its blobs redirect to. NULL: libcurl's
     * environment (https_proxy, http_proxy, no_proxy). */
    char *proxy;
    /* Realms that may receive this registry's credentials, as URL prefixes (scheme, host,
     * optional port and path). n_token_realms == 0 means the default policy: https realms
     * on the registry's own host or its registrable domain (see rp_conf_realm_allowed). */
    char **token_realms;
    size_t n_token_realms;
    char *test_image;   /* repository used by `regproxy check`; may be NULL */
    bool test_login;    /* default yes */
    int64_t tag_ttl_ms; /* -1: inherit [cache] tag_ttl */
    /* A docker config.json or a kubernetes.io/dockerconfigjson Secret (JSON or YAML) whose
     * entry for this registry's host fills user and password, or identity_token. */
    char *auth_file;
    /* Credential files (password_file, auth_file) readable by group or others are refused
     * unless this is set; then a warning is recorded in struct rp_conf instead. */
    bool allow_readable_credentials;
    /* secret: the auth_file entry's `identitytoken` (an OAuth2 refresh token, as `docker
     * login` stores for some registries). auth/ exchanges it for access tokens with the
     * token spec's OAuth2 POST. Zeroed when the conf is freed. */
    char *identity_token;
    /* Repositories clients may pull from this registry (fnmatch patterns such as
     * "openshift3/" + "*"); none: all. Checked before any upstream contact. */
    char **repos;
    size_t n_repos;
    /* Never contact upstream (no token, ping, login check or fetch): answer from the cache
     * only, tags whatever their age, 404 for the rest. Set by `offline` here or in [cache];
     * it also turns test_login off. Not reloadable (SIGHUP keeps the running value). */
    bool offline;
};

/* One listening address: a [listen "ADDR"] section. */
struct rp_conf_listen {
    char *addr;                         /* as written: "0.0.0.0:5000", "[::1]:5000" */
    char *host;                         /* "0.0.0.0", "::1" */
    int port;                           /* 1..65535 */
    char *default_name;                 /* the `default` key, NULL when absent */
    const struct rp_conf_registry *def; /* resolved default registry, or NULL */
    char *tls_cert;
    char *tls_key;
    /* Client networks allowed on this listener ("10.128.0.0/14", "fd00::/8"); none: all.
     * Connections from other addresses are answered 403 at accept, holding no connection
     * slot; a keep-alive connection whose address a reload removed gets 403 at its next
     * request. */
    char **allow;
    size_t n_allow;
    /* htpasswd file (bcrypt) of client accounts; NULL: clients are anonymous. */
    char *htpasswd;
    /* Connections open at once on this listener; beyond it new ones get a 503 and close. */
    uint64_t max_connections;
    /* A keep-alive connection waiting this long for its next request is closed. */
    int64_t idle_timeout_ms;
};

struct rp_conf_cache {
    char *dir;            /* default /var/cache/regproxy */
    uint64_t max_size;    /* bytes; 0 = unbounded. Accepts suffixes K, M, G, T (powers of 1024) */
    int64_t tag_ttl_ms;   /* default 10 minutes; accepts ms, s, m, h, d suffixes */
    int64_t max_stale_ms; /* stale-if-error window past tag_ttl; default 7 days */
    /* A revalidation with a stale answer at hand is given up after this (0: never). */
    int64_t revalidate_timeout_ms;
    char **pins; /* "REGISTRY/REPO" fnmatch patterns whose content is never evicted */
    size_t n_pins;
    bool offline; /* every registry is offline (copied into each rp_conf_registry.offline) */
    /* serve re-reads every cached blob this often and checks its digest (0: never), at
     * most scrub_rate bytes per second (proxy/scrub.c). */
    int64_t scrub_interval_ms;
    uint64_t scrub_rate;
};

/* A credential file the configuration read (or a listener's certificate, key or htpasswd
 * file), as it was when read: the proxy re-stats it (rp_conf_files_changed) to reload when a
 * token or a certificate is rotated. */
struct rp_conf_watch {
    char *path;   /* as resolved: absolute, or relative to the cwd at parse time */
    bool missing; /* could not be stat'ed (only from rp_conf_stamp) */
    uint64_t dev, ino;
    int64_t size;
    int64_t mtime_ns, ctime_ns;
};

/* The operator's side: the admin listener and logging. */
struct rp_conf_admin {
    char *listen;             /* host:port of /metrics, /healthz, /readyz; "off" disables it */
    char *log_format;         /* "text" or "json" */
    char *log_level;          /* "debug", "info", "warn" or "error" */
    int64_t drain_timeout_ms; /* SIGTERM: how long busy connections may finish (0: at once) */
    bool core_dumps;          /* the process stays dumpable (default: not; see main.c) */
};

struct rp_conf {
    char *source; /* file path, or "<embedded>" */
    struct rp_conf_listen *listens;
    size_t n_listens;
    struct rp_conf_registry *registries;
    size_t n_registries;
    struct rp_conf_cache cache;
    struct rp_conf_admin admin;
    /* Every password_file and auth_file read, in file order, then each listener's tls_cert,
     * tls_key and htpasswd (a file named twice is listed once). */
    struct rp_conf_watch *watch;
    size_t n_watch;
    /* Things that are allowed but worth a line in the log (readable credential files under
     * allow_readable_credentials), one sentence each,
     * naming file and section, never a secret. The proxy logs them at startup. */
    char **warnings;
    size_t n_warnings;
};

/* Parses configuration text. `source` names it in error messages. On success returns 0
 * and *out (free with rp_conf_free). On failure returns -1 and writes a one-line message
 * naming source, line and key (e.g. "regproxy.conf:12: unknown key 'pasword' in
 * [registry \"x\"]") into err. Password files are read during parsing (relative paths are
 * relative to the config file's directory); their contents never appear in err. */
int rp_conf_parse(const char *text, size_t len, const char *source, struct rp_conf **out, char *err,
                  size_t errlen);
/* Reads and parses a file (at most 1 MiB). Same contract as rp_conf_parse. */
int rp_conf_load_file(const char *path, struct rp_conf **out, char *err, size_t errlen);
/* The embedded default configuration (the text of conf/regproxy.conf at build time). */
const char *rp_conf_default_text(void);
/* Frees everything, zeroing secrets. Accepts NULL. */
void rp_conf_free(struct rp_conf *conf);

/* Whether any file in conf->watch now differs from when it was read (device, inode, size,
 * mtime or ctime; a file that vanished or cannot be stat'ed counts as changed, unless it
 * was missing already). Symlinks are followed, so a Kubernetes secret volume's atomic
 * `..data` swap is seen. */
bool rp_conf_files_changed(const struct rp_conf *conf);
/* A file's state now into w (its path left alone; missing when it cannot be stat'ed), and
 * whether path now differs from such a state. */
void rp_conf_stamp(const char *path, struct rp_conf_watch *w);
bool rp_conf_stamp_differs(const struct rp_conf_watch *w, const char *path);
/* The watched files' states now, in conf->watch's order (no paths; free() it), and their
 * recording as the states to compare with. A reload takes the first before it reads the
 * files and, refused (say, a certificate rewritten before its key), records them: the next
 * is tried when a file changes again, not every time the watch looks, and a file rewritten
 * while the refused reload read it still counts as changed. */
struct rp_conf_watch *rp_conf_watch_now(const struct rp_conf *conf);
void rp_conf_watch_rearm(struct rp_conf *conf, const struct rp_conf_watch *now);

/* Credentials found in an auth file (docker config.json or dockerconfigjson Secret). */
struct rp_conf_auth {
    char *key;            /* the `auths` key that matched, as written */
    char *user;           /* NULL when the entry has only an identitytoken */
    char *password;       /* secret; NULL when the entry has only an identitytoken */
    char *identity_token; /* secret; NULL unless the entry has `identitytoken` */
};

/* Finds the credentials for a registry in the text of an auth file: a docker config.json
 * ({"auths": {KEY: {"auth": base64("user:password")} | {"username", "password"} |
 * {"identitytoken"}}}) or a Kubernetes Secret of type kubernetes.io/dockerconfigjson whose
 * data[".dockerconfigjson"] is a base64 config.json (or stringData, plain), in JSON or YAML.
 * KEY matches as docker matches it: scheme and path are ignored ("https://index.docker.io/v1/"
 * is "index.docker.io"); a KEY with a port matches only that port (`host` is lower case,
 * IPv6 without brackets, `port` the effective port, 443 for https); a KEY without one
 * matches the host on any port. host:port matches are preferred to host-only ones, and
 * KEYs without a repository path to ones with it; ties go to the first in the file. With
 * `dockerhub`, docker.io, index.docker.io and registry-1.docker.io are all the same host.
 * Returns 0 and fills *out (free with rp_conf_auth_clear), or -1 with a one-line message
 * in err, "SOURCE: what is wrong" (no prefix when source is NULL): invalid JSON/YAML with
 * line and column, binary data, a missing or mistyped field with its path, bad base64, or
 * no entry for the host with the KEYs present. Never puts a secret into err. At most
 * 1 MiB of text. */
int rp_conf_auth_parse(const char *text, size_t len, const char *source, const char *host, int port,
                       bool dockerhub, struct rp_conf_auth *out, char *err, size_t errlen);
/* Frees the strings (zeroing secrets) and clears *a. Accepts NULL. */
void rp_conf_auth_clear(struct rp_conf_auth *a);

/* Reads an openshift-ansible inventory, an INI file with an [OSEv3:vars] (or [all:vars])
 * section or a YAML group_vars / YAML inventory file, and prints an equivalent regproxy
 * configuration to `out`: oreg_url's registry (with oreg_auth_user/oreg_auth_password) as
 * the default registry of a [listen "0.0.0.0:PORT"] section, one [registry] section per
 * openshift_additional_registry_credentials item (Python-literal or YAML list: host, user,
 * password, test_login, test_image, tls_verify), each with `proxy` from openshift_https_proxy
 * (openshift_http_proxy for http registries) unless openshift_no_proxy names it (a proxy
 * URL with credentials becomes a comment saying to put it in the environment), and, as a
 * closing comment, the oreg_url that
 * points the cluster at the proxy: "oreg_url=PROXY_HOSTPORT/<oreg_url's path>". PORT is
 * proxy_hostport's port (5000 when it has none; then ":5000" is added to the oreg_url).
 * Each password is written to "<out_dir>/<host>.password" (mode 0600, created under a
 * temporary name and renamed, so it is never readable by others even for a moment; out_dir
 * is created 0700 if missing) and the configuration names it with password_file, as an
 * absolute path. No password is ever printed or put into err. Nothing is written (neither
 * files nor `out`) unless the whole inventory was understood. The password files keep
 * their temporary names until the configuration was written to `out`, so a failure up to
 * then (a password file or `out` that cannot be written) leaves nothing new behind: the
 * temporaries are removed, out_dir too if this call made it, and an earlier import's files
 * are as they were. (Should a rename into place fail after that, the files renamed so far
 * that are new are removed.) Returns 0, or -1 with a one-line message naming the inventory
 * (and line, for INI) in err. */
int rp_conf_import_inventory(const char *inventory_path, const char *out_dir,
                             const char *proxy_hostport, FILE *out, char *err, size_t errlen);

/* Writes docs/configuration.md: an introduction, one table per section generated from the
 * option table (key, type, default, meaning), and the credential file formats. The unit
 * tests fail when the committed file differs. Returns 0, or -1 on a write error. */
int rp_conf_write_doc(FILE *out);

/* Makes jansson wipe every block it frees. Its parser copies what it reads into buffers
 * that grow by malloc-copy-free and are freed unwiped, so a token answer or a credential
 * file would leave copies in the heap that scrubbing the parsed strings cannot reach. Call
 * once, before any JSON is parsed. */
void rp_conf_json_wipe_freed(void);

/* Wipes every string in a parsed JSON tree, at any depth, before it is freed: a token answer
 * or a credential file's secrets (keys are field names, not secrets). The tree stays owned
 * by the caller. */
struct json_t;
void rp_conf_json_scrub(struct json_t *j);

/* The registry whose section name, host, or hostport equals s (case-insensitive);
 * "docker.io" also finds a registry whose host is registry-1.docker.io. NULL if none. */
const struct rp_conf_registry *rp_conf_find_registry(const struct rp_conf *conf, const char *s,
                                                     size_t len);

/* Whether `realm_url` may be sent this registry's credentials (and, since the proxy dials
 * nothing it was not configured for, whether it may be dialed at all). With token_realms
 * set: realm_url starts with one of them (scheme and host compared case-insensitively, the
 * prefix ending at a '/' boundary or the end). Default: the realm's scheme is https (or http
 * when the registry's own url is http), and its host equals the registry's host, the
 * registry's registrable domain (the last two labels of the host; an IP literal is its own
 * domain), or ends in "." + that domain. */
bool rp_conf_realm_allowed(const struct rp_conf_registry *reg, const char *realm_url);

/* Splits "scheme://host[:port][/path]" into parts. Returns 0 or -1 when malformed (no
 * scheme, empty host, bad port, userinfo present). Outputs are new strings (host lower
 * case; IPv6 without brackets); *path is "" when absent. Any output pointer may be NULL.
 * *port is 0 when no port is given and the scheme is neither http nor https; the path
 * output is everything after the authority (path, query and fragment). */
int rp_conf_split_url(const char *url, char **scheme, char **host, int *port, char **path);

/* The option table: one row per key, in file order. The parser is driven by it, and
 * `regproxy check` and docs/configuration.md are generated from or checked against it. */
enum rp_conf_section_kind {
    RP_CONF_SECTION_LISTEN,   /* [listen "ADDR"]: struct rp_conf_listen */
    RP_CONF_SECTION_CACHE,    /* [cache]: struct rp_conf_cache */
    RP_CONF_SECTION_REGISTRY, /* [registry "NAME"]: struct rp_conf_registry */
    RP_CONF_SECTION_ADMIN,    /* [admin]: struct rp_conf_admin */
};

enum rp_conf_type {
    RP_CONF_STRING,   /* char *, taken literally */
    RP_CONF_BOOL,     /* bool: yes/no, true/false, on/off, 1/0 */
    RP_CONF_SIZE,     /* uint64_t bytes: a number with optional K, M, G, T (powers of 1024) */
    RP_CONF_DURATION, /* int64_t ms: a number with optional ms, s, m, h, d (plain = seconds);
                       * -1 when unset and without default */
    RP_CONF_URL,      /* char *: http(s)://host[:port], no userinfo, no path */
    RP_CONF_LIST,     /* char ** + size_t count (aux_offset): comma-separated http(s) URLs */
    RP_CONF_PATH,     /* char *: relative paths are taken from the config file's directory */
    RP_CONF_SECRET,   /* char *: never logged or put in errors, zeroed on free */
    RP_CONF_COUNT,    /* uint64_t: a plain whole number */
};

#define RP_CONF_F_REQUIRED 1u /* the section is an error without it */
#define RP_CONF_F_READABLE 2u /* PATH: must name a readable regular file at parse time */
/* PATH: a credential file whose first line fills the secret at aux_offset; read once the
 * section is complete (see RP_CONF_F_AUTH_FILE for the mode check and the watch). */
#define RP_CONF_F_SECRET_FILE 4u
#define RP_CONF_F_URL_ITEMS 8u /* LIST: every item must be an http(s) URL */
/* PATH: an auth file (see rp_conf_auth_parse), read once the section is complete, since the
 * entry is chosen by the section's url. Like F_SECRET_FILE files it is a credential file:
 * its mode is checked (allow_readable_credentials) and it is recorded in rp_conf.watch. */
#define RP_CONF_F_AUTH_FILE 16u
#define RP_CONF_F_CIDR_ITEMS 32u /* LIST: every item must be an address or address/bits */
/* With F_REQUIRED in [registry]: not required when the registry is offline (its own
 * `offline` or [cache] offline, which may come later in the file: checked at the end). */
#define RP_CONF_F_UNLESS_OFFLINE 64u

struct rp_conf_option {
    enum rp_conf_section_kind section;
    const char *key;
    enum rp_conf_type type;
    const char *default_text; /* as it would be written in the file; NULL: none */
    uint64_t min, max;        /* inclusive bounds for SIZE (bytes) and DURATION (ms) */
    size_t offset;            /* the field it fills in the section's struct */
    size_t aux_offset;        /* LIST: its size_t count; F_SECRET_FILE: the secret */
    unsigned flags;           /* RP_CONF_F_* */
    const char *requires;     /* key that must be set too in the same section, or NULL */
    const char *conflicts;    /* keys that must not be set too, separated by spaces, or NULL */
    const char *help;         /* one line for docs and `regproxy check` */
};

/* The table and its length. */
const struct rp_conf_option *rp_conf_options(size_t *n);
/* "listen", "cache", "registry". */
const char *rp_conf_section_name(enum rp_conf_section_kind kind);
/* "string", "bool", "size", "duration", "url", "list", "path", "secret". */
const char *rp_conf_type_name(enum rp_conf_type type);

#endif
