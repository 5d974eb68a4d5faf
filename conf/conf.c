/* SPDX-License-Identifier: Apache-2.0 */
/* conf: reads the INI-style configuration into struct rp_conf. One option table drives the
 * parser, the defaults and freeing; URL splitting and the token-realm policy live here too. */
#include "conf.h"
#include "internal.h"

#include "../util/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Generated from conf/regproxy.conf by tests/tools/embed.sh (see the Makefile). */
extern const char rp_conf_default_text_data[];

#define MAX_TEXT ((size_t)1 << 20)         /* a config file; also bounds the number of lines */
#define MAX_LINE 4096                      /* bytes per line, without the newline */
#define MAX_SECTIONS 256                   /* [listen], [cache] and [registry] sections together */
#define MAX_SECRET_FILE ((size_t)64 << 10) /* password_file */
#define MAX_WARNINGS (2 * MAX_SECTIONS)    /* two per registry at most */
#define MAX_KEY 64

#define SECOND_MS INT64_C(1000)
#define DAY_MS (86400 * SECOND_MS)
#define STALE_MAX_MS (365LL * 24 * 3600 * 1000)
#define TTL_MAX_MS (30 * DAY_MS)
#define SIZE_MAX_BYTES (UINT64_C(1) << 60)

#define LISTEN_F(f) offsetof(struct rp_conf_listen, f)
#define CACHE_F(f) offsetof(struct rp_conf_cache, f)
#define REG_F(f) offsetof(struct rp_conf_registry, f)
#define ADMIN_F(f) offsetof(struct rp_conf_admin, f)

/* Every option, in the order docs/configuration.md lists them. Adding a row here is all a
 * new key needs unless it has cross-field rules (see finish_section). */
static const struct rp_conf_option options[] = {
    {.section = RP_CONF_SECTION_LISTEN,
     .key = "default",
     .type = RP_CONF_STRING,
     .offset = LISTEN_F(default_name),
     .help = "registry (its name, host or host:port) serving names without a registry prefix"},
    {.section = RP_CONF_SECTION_LISTEN,
     .key = "tls_cert",
     .type = RP_CONF_PATH,
     .offset = LISTEN_F(tls_cert),
     .flags = RP_CONF_F_READABLE,
     .requires = "tls_key",
     .help = "PEM certificate chain to serve HTTPS with"},
    {.section = RP_CONF_SECTION_LISTEN,
     .key = "tls_key",
     .type = RP_CONF_PATH,
     .offset = LISTEN_F(tls_key),
     .flags = RP_CONF_F_READABLE,
     .requires = "tls_cert",
     .help = "PEM private key for tls_cert, unencrypted (no passphrase is asked for)"},
    {.section = RP_CONF_SECTION_LISTEN,
     .key = "allow",
     .type = RP_CONF_LIST,
     .offset = LISTEN_F(allow),
     .aux_offset = LISTEN_F(n_allow),
     .flags = RP_CONF_F_CIDR_ITEMS,
     .help = "client networks allowed on this listener, e.g. 10.128.0.0/14, 172.30.0.0/16 "
             "(default: everyone); connections from other addresses get 403 at accept"},
    {.section = RP_CONF_SECTION_LISTEN,
     .key = "max_connections",
     .type = RP_CONF_COUNT,
     .default_text = "16384",
     .min = 1,
     .max = 1000000,
     .offset = LISTEN_F(max_connections),
     .help = "connections open at once on this listener; beyond it new connections get a 503 "
             "and are closed"},
    {.section = RP_CONF_SECTION_LISTEN,
     .key = "idle_timeout",
     .type = RP_CONF_DURATION,
     .default_text = "60s",
     .min = 1000,
     .max = 24LL * 3600 * 1000,
     .offset = LISTEN_F(idle_timeout_ms),
     .help = "how long a keep-alive connection may wait for its next request; a response still "
             "being sent is not idle"},
    {.section = RP_CONF_SECTION_LISTEN,
     .key = "htpasswd",
     .type = RP_CONF_PATH,
     .offset = LISTEN_F(htpasswd),
     .flags = RP_CONF_F_READABLE,
     .help = "htpasswd file (htpasswd -B) of client accounts: clients must log in with Basic "
             "credentials (default: anonymous)"},

    {.section = RP_CONF_SECTION_CACHE,
     .key = "dir",
     .type = RP_CONF_PATH,
     .default_text = "/var/cache/regproxy",
     .offset = CACHE_F(dir),
     .help = "directory holding cached blobs, manifests and the index"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "max_size",
     .type = RP_CONF_SIZE,
     .default_text = "100G",
     .min = 0,
     .max = SIZE_MAX_BYTES,
     .offset = CACHE_F(max_size),
     .help = "evict least recently used content beyond this size; 0 = unbounded. A blob "
             "larger than this is served but not kept (unless pinned). Tag and repository "
             "link files are not counted; those of content no longer cached are removed once "
             "evictions happened and at least 1024 more were written. A full disk also "
             "evicts least recently used blobs, whatever this says"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "tag_ttl",
     .type = RP_CONF_DURATION,
     .default_text = "10m",
     .min = 0,
     .max = TTL_MAX_MS,
     .offset = CACHE_F(tag_ttl_ms),
     .help = "how long a cached tag is served without asking upstream"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "pin",
     .type = RP_CONF_LIST,
     .offset = CACHE_F(pins),
     .aux_offset = CACHE_F(n_pins),
     .help = "images never evicted: comma-separated REGISTRY/REPOSITORY patterns with shell "
             "wildcards, where * also matches '/' (registry.redhat.io/* pins a whole "
             "registry), e.g. registry.redhat.io/openshift3/*. REGISTRY is the section name "
             "or the host (docker.io for Docker Hub, where docker.io/nginx also pins "
             "library/nginx). Applied to what is cached "
             "already at every start and on a reload that changes them; a pattern removed "
             "lets its images go"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "max_stale",
     .type = RP_CONF_DURATION,
     .default_text = "7d",
     .min = 0,
     .max = STALE_MAX_MS,
     .offset = CACHE_F(max_stale_ms),
     .help = "how long past its tag_ttl a cached tag may still be served while upstream "
             "is down or failing (stale-if-error)"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "revalidate_timeout",
     .type = RP_CONF_DURATION,
     .default_text = "10s",
     .min = 0,
     .max = 60000,
     .offset = CACHE_F(revalidate_timeout_ms),
     .help = "how long a client waits for upstream's answer about a tag past its tag_ttl "
             "(the token included) while the cached tag could still be served stale; past it "
             "the client gets the tag stale, the question goes on in the background and its "
             "answer is recorded for the next client, and a registry that had not answered is "
             "not asked about other stale tags for 30 s. 0: wait for upstream's own limits "
             "(60 s for an answer)"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "offline",
     .type = RP_CONF_BOOL,
     .default_text = "no",
     .offset = CACHE_F(offline),
     .help = "every registry is offline (see offline in [registry]): a disconnected proxy "
             "serving mirrored or imported content"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "scrub_interval",
     .type = RP_CONF_DURATION,
     .default_text = "0",
     .min = 0,
     .max = STALE_MAX_MS,
     .offset = CACHE_F(scrub_interval_ms),
     .help = "while serving, re-read every cached blob this often and check it against its "
             "digest (0: never). Blobs are verified as they arrive and then served as stored, "
             "so damage on disk that keeps a file's size would otherwise reach every client; "
             "a damaged blob is removed and fetched again at the next pull (not through an "
             "offline registry: the log line then says its images need mirroring or "
             "importing again). The first pass "
             "starts one scrub_interval (at most 10m) after the start, each next one "
             "scrub_interval after the last ended. regproxy verify does the same offline"},
    {.section = RP_CONF_SECTION_CACHE,
     .key = "scrub_rate",
     .type = RP_CONF_SIZE,
     .default_text = "50M",
     .min = 1 << 20,
     .max = SIZE_MAX_BYTES,
     .offset = CACHE_F(scrub_rate),
     .help = "bytes per second the scrub reads at most, leaving the disk to serving"},

    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "url",
     .type = RP_CONF_URL,
     .offset = REG_F(url),
     .flags = RP_CONF_F_REQUIRED | RP_CONF_F_UNLESS_OFFLINE,
     .help = "upstream base URL, http(s)://host[:port]; required unless the registry is "
             "offline (credentials for an http:// url are sent in clear text: a warning)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "user",
     .type = RP_CONF_STRING,
     .offset = REG_F(user),
     .conflicts = "auth_file",
     .help = "user name for the token flow or Basic auth (taken literally, '|' included)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "password",
     .type = RP_CONF_SECRET,
     .offset = REG_F(password),
     .requires = "user",
     .conflicts = "password_file auth_file",
     .help = "password or token for user; prefer password_file"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "password_file",
     .type = RP_CONF_PATH,
     .offset = REG_F(password_file),
     .aux_offset = REG_F(password),
     .flags = RP_CONF_F_SECRET_FILE,
     .requires = "user",
     .conflicts = "password auth_file",
     .help = "file whose first line is the password, read at startup (at most 64 KiB; "
             "mode 0600, see allow_readable_credentials)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "auth_file",
     .type = RP_CONF_PATH,
     .offset = REG_F(auth_file),
     .flags = RP_CONF_F_AUTH_FILE,
     .conflicts = "user password password_file",
     .help = "docker config.json or kubernetes.io/dockerconfigjson Secret (JSON or YAML) "
             "whose entry for the url's host gives user and password (at most 1 MiB; mode "
             "0600)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "allow_readable_credentials",
     .type = RP_CONF_BOOL,
     .default_text = "no",
     .offset = REG_F(allow_readable_credentials),
     .help = "accept a password_file or auth_file that group or others may read (logged as "
             "a warning) instead of refusing it"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "repos",
     .type = RP_CONF_LIST,
     .offset = REG_F(repos),
     .aux_offset = REG_F(n_repos),
     .help = "repositories clients may pull, as shell patterns whose * stays within one "
             "path component (openshift3/* allows openshift3/ose-pod, not openshift3/a/b), "
             "e.g. openshift3/*, rhel8/ubi (on Docker Hub, nginx also allows library/nginx); "
             "default: all; others get 403 DENIED before any upstream contact"},
    {.section = RP_CONF_SECTION_ADMIN,
     .key = "listen",
     .type = RP_CONF_STRING,
     .default_text = "127.0.0.1:5001",
     .offset = ADMIN_F(listen),
     .help = "address of /metrics, /healthz and /readyz (never a registry listener), which "
             "takes 64 connections at once and closes more at once, unanswered; off "
             "disables it"},
    {.section = RP_CONF_SECTION_ADMIN,
     .key = "log_format",
     .type = RP_CONF_STRING,
     .default_text = "text",
     .offset = ADMIN_F(log_format),
     .help = "text (key=value lines) or json (one JSON object per line)"},
    {.section = RP_CONF_SECTION_ADMIN,
     .key = "log_level",
     .type = RP_CONF_STRING,
     .default_text = "info",
     .offset = ADMIN_F(log_level),
     .help = "debug, info, warn or error"},
    {.section = RP_CONF_SECTION_ADMIN,
     .key = "drain_timeout",
     .type = RP_CONF_DURATION,
     .default_text = "25s",
     .min = 0,
     .max = 3600LL * 1000,
     .offset = ADMIN_F(drain_timeout_ms),
     .help = "on SIGTERM or SIGINT, how long responses being sent may take to finish (new "
             "connections are refused, idle ones closed) before the proxy exits; 0 = at once. "
             "A second signal exits at once"},
    {.section = RP_CONF_SECTION_ADMIN,
     .key = "core_dumps",
     .type = RP_CONF_BOOL,
     .default_text = "no",
     .offset = ADMIN_F(core_dumps),
     .help = "let the process dump core (and be traced by its user), to debug a crash. Off, "
             "it is not dumpable: a core would hold the credentials, tokens and "
             "Authorization headers in memory. Read at start only"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "tls_verify",
     .type = RP_CONF_BOOL,
     .default_text = "yes",
     .offset = REG_F(tls_verify),
     .help = "verify the TLS certificates of the registry, its token realm and its blob CDNs "
             "(`no` turns it off for all three)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "ca_file",
     .type = RP_CONF_PATH,
     .offset = REG_F(ca_file),
     .flags = RP_CONF_F_READABLE,
     .help = "PEM bundle of CAs to trust for the registry, its token realm and its blob CDNs, in "
             "addition to the system CAs (curl keeps its CA directory, /etc/ssl/certs on Debian, "
             "as docker keeps the system pool beside certs.d)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "proxy",
     .type = RP_CONF_URL,
     .offset = REG_F(proxy),
     .help =
         "egress HTTP proxy, http(s)://host[:port], for everything fetched for this "
         "registry (its API, token realm and blob CDNs), always through CONNECT tunnels, so the "
         "proxy sees host names only. Default: the environment's proxy variables as curl "
         "reads them (https_proxy, http_proxy, all_proxy, which may name a socks5 proxy, and "
         "no_proxy); this setting ignores no_proxy"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "token_realms",
     .type = RP_CONF_LIST,
     .offset = REG_F(token_realms),
     .aux_offset = REG_F(n_token_realms),
     .flags = RP_CONF_F_URL_ITEMS,
     .help = "URL prefixes that may receive the credentials (default: https on the registry's "
             "host, on any port, as a token server beside the registry often is, or on its "
             "domain or a sibling subdomain of it: gitlab.com and auth.docker.io for "
             "registry.gitlab.com and registry-1.docker.io). Set it to narrow that to one URL. A "
             "realm whose path has dot segments, '\\' or percent-encoded '.', '/' or '\\' is "
             "refused either way"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "test_image",
     .type = RP_CONF_STRING,
     .offset = REG_F(test_image),
     .help = "image `regproxy check` reads the manifest of, REPOSITORY[:TAG|@DIGEST] (tag "
             "latest when none; on Docker Hub alpine means library/alpine, as in a pull; "
             "default: openshift3/ose-pod on registry.redhat.io, none elsewhere: check then "
             "stops after the ping and its token flow)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "test_login",
     .type = RP_CONF_BOOL,
     .default_text = "yes",
     .offset = REG_F(test_login),
     .help = "whether `regproxy check` logs in to this registry"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "tag_ttl",
     .type = RP_CONF_DURATION,
     .min = 0,
     .max = TTL_MAX_MS,
     .offset = REG_F(tag_ttl_ms),
     .help = "tag freshness for this registry (default: [cache] tag_ttl)"},
    {.section = RP_CONF_SECTION_REGISTRY,
     .key = "offline",
     .type = RP_CONF_BOOL,
     .default_text = "no",
     .offset = REG_F(offline),
     .help = "never contact this registry (no token, ping or login check): serve only what "
             "the cache holds (mirrored or imported), tags whatever their age; the rest is "
             "404. Without url, the section name is the registry's host[:port]"},
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

const struct rp_conf_option *rp_conf_options(size_t *n)
{
    if (n)
        *n = N_OPTIONS;
    return options;
}

const char *rp_conf_section_name(enum rp_conf_section_kind kind)
{
    switch (kind) {
    case RP_CONF_SECTION_LISTEN:
        return "listen";
    case RP_CONF_SECTION_CACHE:
        return "cache";
    case RP_CONF_SECTION_REGISTRY:
        return "registry";
    case RP_CONF_SECTION_ADMIN:
        return "admin";
    }
    return "?";
}

const char *rp_conf_type_name(enum rp_conf_type type)
{
    static const char *const names[] = {"string", "bool", "size",   "duration", "url",
                                        "list",   "path", "secret", "count"};
    if ((unsigned)type < sizeof(names) / sizeof(names[0]))
        return names[type];
    return "?";
}

const char *rp_conf_default_text(void)
{
    return rp_conf_default_text_data;
}

/* ---- small character and host checks (ASCII only, locale-independent) ---- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

static bool is_ctl(char c)
{
    return (unsigned char)c < 0x20 || c == 0x7f;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char to_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c | 0x20) : c;
}

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && is_ws((*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_ws((*s)[*n - 1]))
        (*n)--;
}

static char *lower_dup(const char *s, size_t n)
{
    char *d = rp_xstrndup(s, n);
    for (size_t i = 0; i < n; i++)
        d[i] = to_lower(d[i]);
    return d;
}

/* A DNS name or dotted IPv4: labels of letters, digits, '-' and '_', no empty label. */
static bool valid_hostname(const char *h, size_t n)
{
    if (n == 0 || n > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (is_alpha(c) || is_digit(c) || c == '-' || c == '_') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0;
}

static bool valid_ipv6(const char *h, size_t n)
{
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr a;
    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, h, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, &a) == 1;
}

static bool is_ip_literal(const char *h)
{
    struct in_addr a;
    return strchr(h, ':') != NULL || inet_pton(AF_INET, h, &a) == 1;
}

static int default_port(const char *scheme)
{
    if (strcmp(scheme, "https") == 0)
        return 443;
    if (strcmp(scheme, "http") == 0)
        return 80;
    return 0;
}

static bool is_http_scheme(const char *scheme)
{
    return strcmp(scheme, "https") == 0 || strcmp(scheme, "http") == 0;
}

/* Parses "1".."65535". */
static int parse_port(const char *s, size_t n, int *port)
{
    uint64_t v;
    if (rp_parse_u64(s, n, &v) != 0 || v < 1 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

/* ---- URLs ---- */

int rp_conf_split_url(const char *url, char **scheme, char **host, int *port, char **path)
{
    if (!url)
        return -1;
    /* URLs are ASCII without spaces; anything else is a sign of a mangled header. */
    for (const char *c = url; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
            return -1;
    const char *sep = strstr(url, "://");
    if (!sep || sep == url || !is_alpha(url[0]))
        return -1;
    size_t slen = (size_t)(sep - url);
    for (size_t i = 1; i < slen; i++)
        if (!is_alpha(url[i]) && !is_digit(url[i]) && url[i] != '+' && url[i] != '-' &&
            url[i] != '.')
            return -1;

    const char *auth = sep + 3;
    size_t alen = strcspn(auth, "/?#");
    if (alen == 0 || memchr(auth, '@', alen))
        return -1;
    const char *h, *p = NULL;
    size_t hlen, plen = 0;
    if (auth[0] == '[') {
        const char *rb = memchr(auth, ']', alen);
        if (!rb)
            return -1;
        h = auth + 1;
        hlen = (size_t)(rb - h);
        size_t rest = alen - hlen - 2;
        if (rest > 0) {
            if (rb[1] != ':')
                return -1;
            p = rb + 2;
            plen = rest - 1;
        }
        if (!valid_ipv6(h, hlen))
            return -1;
    } else {
        const char *colon = memchr(auth, ':', alen);
        h = auth;
        hlen = colon ? (size_t)(colon - auth) : alen;
        if (colon) {
            p = colon + 1;
            plen = alen - hlen - 1;
        }
        if (!valid_hostname(h, hlen))
            return -1;
    }

    char *s = lower_dup(url, slen);
    int prt = default_port(s);
    if (p && parse_port(p, plen, &prt) != 0) {
        free(s);
        return -1;
    }
    if (scheme)
        *scheme = s;
    else
        free(s);
    if (host)
        *host = lower_dup(h, hlen);
    if (port)
        *port = prt;
    if (path)
        *path = rp_xstrdup(auth + alen);
    return 0;
}

/* The "registrable domain" is approximated as the last two labels of the host: without a
 * public-suffix list, "example.co.uk" gives "co.uk", which is too broad for such hosts, but
 * the registries this proxy is meant for (redhat.io, docker.io, quay.io) are all
 * second-level names. Set token_realms where that matters. */
static const char *registrable_domain(const char *host)
{
    const char *last = strrchr(host, '.');
    if (!last)
        return host;
    const char *d = host;
    for (const char *c = host; c < last; c++)
        if (*c == '.')
            d = c + 1;
    return d;
}

/* Whether a realm's path could name another path than it spells: curl removes dot segments
 * before dialing, and many servers also decode %2e, %2f or %5c, or take '\' for '/', before
 * resolving them, so "/token/../steal" or "/token/%2e%2e/steal" passes a prefix check of
 * /token and lands elsewhere. Refusing them is simpler than normalising the way every server
 * might; no real token server needs them. A ';' ends a segment's name for servers that take
 * path parameters ("..;"). The query and fragment are not paths and are left alone. */
static bool path_is_ambiguous(const char *path)
{
    size_t end = strcspn(path, "?#");
    for (size_t i = 0; i < end; i++) {
        if (path[i] == '\\')
            return true;
        if (path[i] == '%' && i + 2 < end) {
            char a = path[i + 1], b = (char)(path[i + 2] | 0x20);
            if ((a == '2' && (b == 'e' || b == 'f')) || (a == '5' && b == 'c'))
                return true;
        }
    }
    size_t i = 0;
    while (i < end) {
        size_t seg = strcspn(path + i, "/"), name = strcspn(path + i, "/;");
        if (i + seg > end)
            seg = end - i;
        if (name > seg)
            name = seg;
        if ((name == 1 && path[i] == '.') || (name == 2 && path[i] == '.' && path[i + 1] == '.'))
            return true;
        i += seg + 1;
    }
    return false;
}

/* realm (already split) starts with the configured prefix: same scheme, host and port, and
 * the prefix's path ends at a '/' boundary of the realm's path. */
static bool realm_prefix_match(const char *prefix, const char *scheme, const char *host, int port,
                               const char *path)
{
    char *ps = NULL, *ph = NULL, *pp = NULL;
    int pport;
    bool ok = false;
    if (rp_conf_split_url(prefix, &ps, &ph, &pport, &pp) != 0)
        goto out;
    if (strcmp(ps, scheme) != 0 || strcmp(ph, host) != 0 || pport != port)
        goto out;
    size_t n = strlen(pp);
    if (strncmp(path, pp, n) != 0)
        goto out;
    ok = n == 0 || pp[n - 1] == '/' || path[n] == '\0' || path[n] == '/' || path[n] == '?' ||
         path[n] == '#';
out:
    free(ps);
    free(ph);
    free(pp);
    return ok;
}

bool rp_conf_realm_allowed(const struct rp_conf_registry *reg, const char *realm_url)
{
    char *scheme = NULL, *host = NULL, *path = NULL;
    int port;
    bool ok = false;
    if (!reg || !realm_url || rp_conf_split_url(realm_url, &scheme, &host, &port, &path) != 0)
        return false;
    if (!is_http_scheme(scheme) || path_is_ambiguous(path))
        goto out;
    if (reg->n_token_realms > 0) {
        for (size_t i = 0; i < reg->n_token_realms && !ok; i++)
            ok = realm_prefix_match(reg->token_realms[i], scheme, host, port, path);
        goto out;
    }
    /* Plain http only when the registry itself is plain http: a test or in-cluster
     * registry. Credentials for an https registry never travel in the clear. */
    if (strcmp(scheme, "https") != 0 && !(reg->scheme && strcmp(reg->scheme, "http") == 0))
        goto out;
    if (!reg->host)
        goto out;
    if (strcasecmp(host, reg->host) == 0) {
        ok = true;
        goto out;
    }
    if (is_ip_literal(reg->host))
        goto out;
    const char *dom = registrable_domain(reg->host);
    size_t hl = strlen(host), dl = strlen(dom);
    /* The domain itself is no less its owner's than a sibling is: GitLab.com's registry
     * (registry.gitlab.com) names https://gitlab.com/jwt/auth. */
    ok = (hl == dl || (hl > dl + 1 && host[hl - dl - 1] == '.')) &&
         strcasecmp(host + hl - dl, dom) == 0;
out:
    free(scheme);
    free(host);
    free(path);
    return ok;
}

static bool is_dockerhub_host(const char *s, size_t n)
{
    return rp_strieq_n(s, n, "docker.io") || rp_strieq_n(s, n, "registry-1.docker.io") ||
           rp_strieq_n(s, n, "index.docker.io");
}

/* "HOST:PORT" naming r's host and port, the scheme's default included ("quay.io:443" for a
 * registry kept as "quay.io"; an IPv6 host in brackets). */
static bool names_host_and_port(const struct rp_conf_registry *r, const char *s, size_t len)
{
    size_t colon = len;
    while (colon > 0 && s[colon - 1] >= '0' && s[colon - 1] <= '9')
        colon--;
    if (colon == 0 || colon == len || s[colon - 1] != ':' || len - colon > 5)
        return false;
    int port = 0;
    for (size_t i = colon; i < len; i++)
        port = port * 10 + (s[i] - '0');
    size_t hlen = colon - 1;
    bool v6 = strchr(r->host, ':') != NULL;
    if (v6 != (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']'))
        return false;
    if (v6) {
        s++;
        hlen -= 2;
    }
    return port == r->port && rp_strieq_n(s, hlen, r->host);
}

const struct rp_conf_registry *rp_conf_find_registry(const struct rp_conf *conf, const char *s,
                                                     size_t len)
{
    if (!conf || !s || len == 0)
        return NULL;
    /* Names first: a section named like another registry's host is the one meant. */
    for (size_t i = 0; i < conf->n_registries; i++)
        if (rp_strieq_n(s, len, conf->registries[i].name))
            return &conf->registries[i];
    for (size_t i = 0; i < conf->n_registries; i++) {
        const struct rp_conf_registry *r = &conf->registries[i];
        if (rp_strieq_n(s, len, r->host) || rp_strieq_n(s, len, r->hostport) ||
            names_host_and_port(r, s, len))
            return r;
    }
    /* Docker Hub goes by three names; clients use "docker.io" for the one the API is on. */
    if (is_dockerhub_host(s, len))
        for (size_t i = 0; i < conf->n_registries; i++)
            if (is_dockerhub_host(conf->registries[i].host, strlen(conf->registries[i].host)))
                return &conf->registries[i];
    return NULL;
}

/* ---- the parser ---- */

struct parser {
    struct rp_conf *conf;
    const char *source;
    char *dir; /* the config file's directory, for relative paths; NULL when it has none */
    char *err;
    size_t errlen;
    int kind;     /* current section kind, -1 before the first header */
    size_t index; /* current section's index in listens or registries */
    unsigned header_line;
    unsigned key_line[N_OPTIONS]; /* current section: line where each key was set, 0 = not */
    bool have_cache;
    bool have_admin;
    unsigned admin_listen_line; /* the line that set [admin] listen; 0: the default */
    size_t n_sections;
    unsigned *default_line; /* per listen: line of its `default` key */
    /* per registry: its header line when a F_UNLESS_OFFLINE key is missing (0: none is),
     * and whether its name could stand in for the url (a host[:port]) */
    unsigned *unless_offline_line;
    const char **unless_offline_key;
    bool *name_is_host;
    /* per registry: the line of its http:// url when it has credentials (0: not so) */
    unsigned *clear_text_line;
};

static void fail(struct parser *p, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct parser *p, unsigned line, const char *fmt, ...)
{
    if (!p->err || p->errlen == 0)
        return;
    int n = line ? snprintf(p->err, p->errlen, "%s:%u: ", p->source, line)
                 : snprintf(p->err, p->errlen, "%s: ", p->source);
    if (n < 0 || (size_t)n >= p->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static void *section_base(const struct parser *p)
{
    switch (p->kind) {
    case RP_CONF_SECTION_LISTEN:
        return &p->conf->listens[p->index];
    case RP_CONF_SECTION_CACHE:
        return &p->conf->cache;
    case RP_CONF_SECTION_ADMIN:
        return &p->conf->admin;
    default:
        return &p->conf->registries[p->index];
    }
}

/* "[registry "x"]" for messages. Names hold no control characters or quotes. */
static const char *section_desc(const struct parser *p, char *buf, size_t n)
{
    switch (p->kind) {
    case RP_CONF_SECTION_LISTEN:
        snprintf(buf, n, "[listen \"%s\"]", p->conf->listens[p->index].addr);
        break;
    case RP_CONF_SECTION_CACHE:
        snprintf(buf, n, "[cache]");
        break;
    case RP_CONF_SECTION_ADMIN:
        snprintf(buf, n, "[admin]");
        break;
    default:
        snprintf(buf, n, "[registry \"%s\"]", p->conf->registries[p->index].name);
        break;
    }
    return buf;
}

static int option_index(int kind, const char *key, size_t n)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if ((int)options[i].section == kind && strlen(options[i].key) == n &&
            memcmp(options[i].key, key, n) == 0)
            return (int)i;
    return -1;
}

static void *field(void *base, size_t offset)
{
    return (char *)base + offset;
}

static void free_option(const struct rp_conf_option *o, void *base)
{
    if (o->type == RP_CONF_LIST) {
        char ***list = field(base, o->offset);
        size_t *n = field(base, o->aux_offset);
        for (size_t i = 0; i < *n; i++)
            free((*list)[i]);
        free(*list);
        *list = NULL;
        *n = 0;
        return;
    }
    char **s = field(base, o->offset);
    if (o->type == RP_CONF_SECRET)
        rp_free_secret(*s);
    else if (o->type == RP_CONF_STRING || o->type == RP_CONF_URL || o->type == RP_CONF_PATH)
        free(*s);
    else
        return;
    *s = NULL;
}

static void free_section(int kind, void *base)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if ((int)options[i].section == kind)
            free_option(&options[i], base);
}

void rp_conf_free(struct rp_conf *conf)
{
    if (!conf)
        return;
    for (size_t i = 0; i < conf->n_listens; i++) {
        struct rp_conf_listen *l = &conf->listens[i];
        free_section(RP_CONF_SECTION_LISTEN, l);
        free(l->addr);
        free(l->host);
    }
    free(conf->listens);
    for (size_t i = 0; i < conf->n_registries; i++) {
        struct rp_conf_registry *r = &conf->registries[i];
        free_section(RP_CONF_SECTION_REGISTRY, r);
        free(r->name);
        free(r->scheme);
        free(r->host);
        free(r->hostport);
        rp_free_secret(r->identity_token);
    }
    free(conf->registries);
    for (size_t i = 0; i < conf->n_watch; i++)
        free(conf->watch[i].path);
    free(conf->watch);
    for (size_t i = 0; i < conf->n_warnings; i++)
        free(conf->warnings[i]);
    free(conf->warnings);
    free_section(RP_CONF_SECTION_CACHE, &conf->cache);
    free_section(RP_CONF_SECTION_ADMIN, &conf->admin);
    free(conf->source);
    free(conf);
}

/* ---- values ---- */

static int parse_bool(const char *v, size_t n, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (rp_strieq_n(v, n, yes[i])) {
            *out = true;
            return 0;
        }
        if (rp_strieq_n(v, n, no[i])) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Digits followed by one of `units` (case-insensitive); a plain number is in units of
 * `plain`. Returns -1 on syntax errors and overflow. */
struct unit {
    const char *name;
    uint64_t mult;
};

static int parse_with_unit(const char *v, size_t n, const struct unit *units, size_t n_units,
                           uint64_t plain, uint64_t *out)
{
    size_t d = 0;
    while (d < n && is_digit(v[d]))
        d++;
    uint64_t num, mult = 0;
    if (rp_parse_u64(v, d, &num) != 0)
        return -1;
    if (d == n) {
        mult = plain;
    } else {
        for (size_t i = 0; i < n_units && !mult; i++)
            if (rp_strieq_n(v + d, n - d, units[i].name))
                mult = units[i].mult;
        if (!mult)
            return -1;
    }
    if (num > UINT64_MAX / mult)
        return -1;
    *out = num * mult;
    return 0;
}

static const struct unit size_units[] = {{"K", UINT64_C(1) << 10},
                                         {"M", UINT64_C(1) << 20},
                                         {"G", UINT64_C(1) << 30},
                                         {"T", UINT64_C(1) << 40}};
static const struct unit duration_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};

/* Bounds in messages, in the largest unit that divides them: "30d", "1048576T". */
static void format_amount(char *buf, size_t n, uint64_t v, const struct unit *units, size_t n_units,
                          const char *base)
{
    if (v == 0) {
        snprintf(buf, n, "0");
        return;
    }
    for (size_t i = n_units; i-- > 0;) {
        if (units[i].mult > 1 && v % units[i].mult == 0) {
            snprintf(buf, n, "%llu%s", (unsigned long long)(v / units[i].mult), units[i].name);
            return;
        }
    }
    snprintf(buf, n, "%llu%s", (unsigned long long)v, base);
}

static void out_of_range(struct parser *p, const struct rp_conf_option *o, unsigned line,
                         const struct unit *units, size_t n_units, const char *base)
{
    char desc[MAX_LINE + 32], lo[32], hi[32];
    format_amount(lo, sizeof(lo), o->min, units, n_units, base);
    format_amount(hi, sizeof(hi), o->max, units, n_units, base);
    fail(p, line, "'%s' in %s must be between %s and %s", o->key,
         section_desc(p, desc, sizeof(desc)), lo, hi);
}

/* Paths relative to the config file's directory, so a config works from any cwd. */
static char *resolve_path(const struct parser *p, const char *v, size_t n)
{
    if (v[0] == '/' || !p->dir)
        return rp_xstrndup(v, n);
    return rp_xasprintf("%s/%.*s", p->dir, (int)n, v);
}

/* The password in a password file's text: its first line, without CR. */
static char *first_line_secret(const char *buf, size_t len, const char **why)
{
    size_t n = 0;
    while (n < len && buf[n] != '\n')
        n++;
    while (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n == 0) {
        *why = "empty first line";
        return NULL;
    }
    if (memchr(buf, '\0', n)) {
        *why = "contains a NUL byte";
        return NULL;
    }
    return rp_xstrndup(buf, n);
}

/* A registry url: http(s), no userinfo, nothing after the authority but one '/'. */
static const char *check_base_url(const char *v)
{
    char *scheme = NULL, *path = NULL;
    const char *why = NULL;
    /* Checked first so the message says what to do instead; the parser rejects it too. */
    if (strchr(v, '@'))
        return "credentials in the url are not allowed; use user and password_file";
    if (rp_conf_split_url(v, &scheme, NULL, NULL, &path) != 0)
        return "expected http(s)://host[:port]";
    if (!is_http_scheme(scheme))
        why = "the scheme must be http or https";
    else if (path[0] != '\0' && strcmp(path, "/") != 0)
        why = "a path, query or fragment is not allowed";
    free(scheme);
    free(path);
    return why;
}

static const char *check_realm_url(const char *v)
{
    char *scheme = NULL, *path = NULL;
    if (strchr(v, '@'))
        return "credentials in a realm url are not allowed";
    if (rp_conf_split_url(v, &scheme, NULL, NULL, &path) != 0)
        return "expected a comma-separated list of http(s)://host[:port][/path]";
    bool ok = is_http_scheme(scheme), ambiguous = path_is_ambiguous(path);
    free(scheme);
    free(path);
    if (!ok)
        return "the scheme must be http or https";
    /* Realms with these are refused at run time; a prefix with them would match none. */
    return ambiguous ? "dot segments, '\\' or percent-encoded '.', '/' or '\\' are not allowed "
                       "in a realm path"
                     : NULL;
}

/* NULL when s is a network ADDR[/BITS] whose address is the network's first (no host bits
 * set: 10.0.0.1/8 most likely means 10.0.0.0/8 or 10.0.0.1/32, and guessing is wrong one way
 * or the other); else why not. */
static const char *cidr_why(const char *s)
{
    static const char *const bad = "expected a network such as 10.128.0.0/14 or fd00::/8";
    char buf[64];
    unsigned char addr[16];
    if (strlen(s) >= sizeof(buf))
        return bad;
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    long max = strchr(buf, ':') ? 128 : 32;
    uint64_t bits = (uint64_t)max;
    if (slash) {
        *slash = '\0';
        if (rp_parse_u64(slash + 1, strlen(slash + 1), &bits) != 0 || bits > (uint64_t)max)
            return bad;
    }
    if (inet_pton(max == 128 ? AF_INET6 : AF_INET, buf, addr) != 1)
        return bad;
    for (long b = (long)bits; b < max; b++)
        if (addr[b / 8] & (0x80u >> (b % 8)))
            return "host bits set after the prefix length: write the network's first address "
                   "(10.0.0.0/8), or a single address (10.0.0.1 or 10.0.0.1/32)";
    return NULL;
}

static int set_list(const struct rp_conf_option *o, void *base, const char *v, size_t n,
                    const char **why)
{
    char ***list = field(base, o->offset);
    size_t *count = field(base, o->aux_offset);
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && v[i] != ',')
            continue;
        const char *item = v + start;
        size_t ilen = i - start;
        start = i + 1;
        trim(&item, &ilen);
        if (ilen == 0) {
            *why = "empty list item";
            return -1;
        }
        char *s = rp_xstrndup(item, ilen);
        if (o->flags & RP_CONF_F_CIDR_ITEMS)
            *why = cidr_why(s);
        if (*why || ((o->flags & RP_CONF_F_URL_ITEMS) && (*why = check_realm_url(s)) != NULL)) {
            free(s);
            return -1;
        }
        *list = rp_xrealloc(*list, (*count + 1) * sizeof(**list));
        (*list)[(*count)++] = s;
    }
    return 0;
}

/* Stores one value into the option's field. `line` 0 means a built-in default. Values are
 * never echoed in messages: a mistyped key may have a password on its line. */
static int set_value(struct parser *p, const struct rp_conf_option *o, void *base, const char *v,
                     size_t n, unsigned line)
{
    const char *why = NULL;
    char desc[MAX_LINE + 32];
    void *f = field(base, o->offset);
    uint64_t u;
    bool b;
    char *s = NULL;

    switch (o->type) {
    case RP_CONF_STRING:
    case RP_CONF_SECRET:
        free_option(o, base);
        *(char **)f = rp_xstrndup(v, n);
        return 0;
    case RP_CONF_BOOL:
        if (parse_bool(v, n, &b) != 0) {
            why = "expected yes or no";
            break;
        }
        *(bool *)f = b;
        return 0;
    case RP_CONF_COUNT:
        if (rp_parse_u64(v, n, &u) != 0) {
            why = "expected a whole number";
            break;
        }
        if (u < o->min || u > o->max) {
            fail(p, line, "'%s' in %s must be between %llu and %llu", o->key,
                 section_desc(p, desc, sizeof(desc)), (unsigned long long)o->min,
                 (unsigned long long)o->max);
            return -1;
        }
        *(uint64_t *)f = u;
        return 0;
    case RP_CONF_SIZE:
        if (parse_with_unit(v, n, size_units, 4, 1, &u) != 0) {
            why = "expected a size: a number with optional K, M, G or T";
            break;
        }
        if (u < o->min || u > o->max) {
            out_of_range(p, o, line, size_units, 4, "");
            return -1;
        }
        *(uint64_t *)f = u;
        return 0;
    case RP_CONF_DURATION:
        if (parse_with_unit(v, n, duration_units, 5, 1000, &u) != 0) {
            why = "expected a duration: a number with optional ms, s, m, h or d";
            break;
        }
        if (u < o->min || u > o->max) {
            out_of_range(p, o, line, duration_units, 5, "ms");
            return -1;
        }
        *(int64_t *)f = (int64_t)u;
        return 0;
    case RP_CONF_URL:
        s = rp_xstrndup(v, n);
        if (strchr(s, '@') && strcmp(o->key, "proxy") == 0) {
            /* Not a secret type, so never in a configuration: env is the proxy's own place. */
            why = "credentials in the proxy url are not allowed; a proxy that needs them is "
                  "given in the https_proxy environment variable";
            free(s);
            break;
        }
        if ((why = check_base_url(s)) != NULL) {
            free(s);
            break;
        }
        if (n > 0 && s[n - 1] == '/')
            s[n - 1] = '\0';
        free_option(o, base);
        *(char **)f = s;
        return 0;
    case RP_CONF_LIST:
        free_option(o, base);
        if (set_list(o, base, v, n, &why) != 0)
            break;
        return 0;
    case RP_CONF_PATH:
        s = resolve_path(p, v, n);
        if (o->flags & RP_CONF_F_READABLE) {
            struct stat st;
            int fd = rp_conf_open_regular(s, &st, &why);
            if (fd < 0) {
                fail(p, line, "%s '%s' in %s: %s", o->key, s, section_desc(p, desc, sizeof(desc)),
                     why);
                free(s);
                return -1;
            }
            close(fd);
        }
        /* Credential files are read in finish_section: which entry of an auth file applies
         * and whether a readable mode is allowed depend on keys that may come later. */
        free_option(o, base);
        *(char **)f = s;
        return 0;
    }
    fail(p, line, "bad value for '%s' in %s: %s", o->key, section_desc(p, desc, sizeof(desc)),
         why ? why : "invalid");
    return -1;
}

static void apply_defaults(struct parser *p, int kind, void *base)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct rp_conf_option *o = &options[i];
        if ((int)o->section != kind)
            continue;
        if (o->default_text)
            set_value(p, o, base, o->default_text, strlen(o->default_text), 0);
        else if (o->type == RP_CONF_DURATION)
            *(int64_t *)field(base, o->offset) = -1;
    }
}

static void warn(struct parser *p, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a warning for the proxy to log: "SOURCE:LINE: message". */
static void warn(struct parser *p, unsigned line, const char *fmt, ...)
{
    struct rp_conf *c = p->conf;
    if (c->n_warnings >= MAX_WARNINGS)
        return;
    char msg[3 * MAX_LINE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->warnings = rp_xrealloc(c->warnings, (c->n_warnings + 1) * sizeof(*c->warnings));
    c->warnings[c->n_warnings++] = line ? rp_xasprintf("%s:%u: %s", p->source, line, msg)
                                        : rp_xasprintf("%s: %s", p->source, msg);
}

static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void watch_fill(struct rp_conf_watch *w, const struct stat *st)
{
    w->missing = false;
    w->dev = (uint64_t)st->st_dev;
    w->ino = (uint64_t)st->st_ino;
    w->size = (int64_t)st->st_size;
    w->mtime_ns = ts_ns(st->st_mtim);
    w->ctime_ns = ts_ns(st->st_ctim);
}

static void watch_add(struct rp_conf *c, const char *path, const struct stat *st)
{
    for (size_t i = 0; i < c->n_watch; i++)
        if (strcmp(c->watch[i].path, path) == 0)
            return;
    c->watch = rp_xrealloc(c->watch, (c->n_watch + 1) * sizeof(*c->watch));
    struct rp_conf_watch *w = &c->watch[c->n_watch++];
    w->path = rp_xstrdup(path);
    watch_fill(w, st);
}

void rp_conf_stamp(const char *path, struct rp_conf_watch *w)
{
    struct stat st;
    if (path && stat(path, &st) == 0) {
        watch_fill(w, &st);
    } else {
        memset(w, 0, sizeof(*w));
        w->missing = true;
    }
}

bool rp_conf_stamp_differs(const struct rp_conf_watch *w, const char *path)
{
    struct rp_conf_watch now;
    rp_conf_stamp(path, &now);
    if (now.missing || w->missing)
        return now.missing != w->missing;
    return now.dev != w->dev || now.ino != w->ino || now.size != w->size ||
           now.mtime_ns != w->mtime_ns || now.ctime_ns != w->ctime_ns;
}

bool rp_conf_files_changed(const struct rp_conf *conf)
{
    for (size_t i = 0; conf && i < conf->n_watch; i++)
        if (rp_conf_stamp_differs(&conf->watch[i], conf->watch[i].path))
            return true;
    return false;
}

struct rp_conf_watch *rp_conf_watch_now(const struct rp_conf *conf)
{
    struct rp_conf_watch *now = rp_xcalloc(conf->n_watch + 1, sizeof(*now));
    for (size_t i = 0; i < conf->n_watch; i++)
        rp_conf_stamp(conf->watch[i].path, &now[i]);
    return now;
}

void rp_conf_watch_rearm(struct rp_conf *conf, const struct rp_conf_watch *now)
{
    for (size_t i = 0; i < conf->n_watch; i++) {
        char *path = conf->watch[i].path;
        conf->watch[i] = now[i];
        conf->watch[i].path = path;
    }
}

/* What a group/other mode bit lets others do, for the message. */
static const char *exposure(mode_t mode)
{
    if (mode & S_IROTH)
        return "readable by others";
    if (mode & S_IRGRP)
        return "readable by its group";
    if (mode & S_IWOTH)
        return "writable by others";
    if (mode & S_IWGRP)
        return "writable by its group";
    return "accessible to group or others";
}

/* Reads a password_file or auth_file into the registry: the mode check (a credential file
 * others can read is a leaked credential, so it is refused unless the registry opts in),
 * the watch entry, then the content. The fd is checked, not the path, so the file judged is
 * the file read. */
static int load_credential_file(struct parser *p, const struct rp_conf_option *o,
                                struct rp_conf_registry *r, unsigned line, const char *desc)
{
    const char *path = *(char **)field(r, o->offset);
    const char *why = NULL;
    char *buf = NULL;
    size_t len = 0;
    struct stat st;
    int rc = -1;
    bool auth = (o->flags & RP_CONF_F_AUTH_FILE) != 0;
    int fd = rp_conf_open_regular(path, &st, &why);
    if (fd < 0) {
        fail(p, line, "%s '%s' in %s: %s", o->key, path, desc, why);
        return -1;
    }
    mode_t loose = st.st_mode & 077;
    if (loose && !r->allow_readable_credentials) {
        fail(p, line,
             "%s '%s' in %s is %s (mode %04o); chmod 600 it, or set "
             "allow_readable_credentials = yes",
             o->key, path, desc, exposure(loose), (unsigned)(st.st_mode & 07777));
        goto out;
    }
    if (rp_conf_read_fd(fd, &st, auth ? RP_CONF_MAX_DOC : MAX_SECRET_FILE,
                        auth ? "larger than 1 MiB" : "larger than 64 KiB", &buf, &len, &why) != 0) {
        fail(p, line, "%s '%s' in %s: %s", o->key, path, desc, why);
        goto out;
    }
    if (!auth) {
        char *secret = first_line_secret(buf, len, &why);
        if (!secret) {
            fail(p, line, "%s '%s' in %s: %s", o->key, path, desc, why);
            goto out;
        }
        char **aux = field(r, o->aux_offset);
        rp_free_secret(*aux);
        *aux = secret;
    } else {
        struct rp_conf_auth a;
        char why2[1024];
        if (rp_conf_auth_parse(buf, len, NULL, r->host, r->port, r->dockerhub, &a, why2,
                               sizeof(why2)) != 0) {
            fail(p, line, "%s '%s' in %s: %s", o->key, path, desc, why2);
            goto out;
        }
        /* user, password and password_file conflict with auth_file: nothing to replace. */
        r->user = a.user;
        r->password = a.password;
        r->identity_token = a.identity_token;
        free(a.key);
    }
    if (loose)
        warn(p, line, "%s '%s' in %s is %s (mode %04o); allowed by allow_readable_credentials",
             o->key, path, desc, exposure(loose), (unsigned)(st.st_mode & 07777));
    watch_add(p->conf, path, &st);
    rc = 0;
out:
    if (buf) {
        rp_secure_zero(buf, len);
        free(buf);
    }
    close(fd);
    return rc;
}

/* Cross-field rules and derived fields, once the section's last key is read. */
static int parse_listen_addr(const char *a, size_t n, char **host, int *port);

static bool one_of(const char *v, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (strcmp(v, *allowed) == 0)
            return true;
    return false;
}

/* [admin] values with a fixed vocabulary. */
static int check_admin(struct parser *p, const char *desc)
{
    static const char *const formats[] = {"text", "json", NULL};
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    const struct rp_conf_admin *a = &p->conf->admin;
    int i;
    if (!one_of(a->log_format, formats)) {
        i = option_index(p->kind, "log_format", 10);
        fail(p, i >= 0 && p->key_line[i] ? p->key_line[i] : p->header_line,
             "log_format in %s must be text or json", desc);
        return -1;
    }
    if (!one_of(a->log_level, levels)) {
        i = option_index(p->kind, "log_level", 9);
        fail(p, i >= 0 && p->key_line[i] ? p->key_line[i] : p->header_line,
             "log_level in %s must be debug, info, warn or error", desc);
        return -1;
    }
    char *host = NULL;
    int port;
    if (strcmp(a->listen, "off") != 0 &&
        parse_listen_addr(a->listen, strlen(a->listen), &host, &port) != 0) {
        i = option_index(p->kind, "listen", 6);
        fail(p, i >= 0 && p->key_line[i] ? p->key_line[i] : p->header_line,
             "listen in %s: expected IPV4:PORT, [IPV6]:PORT (an address, not a host name) or "
             "off",
             desc);
        return -1;
    }
    free(host);
    i = option_index(p->kind, "listen", 6);
    p->admin_listen_line = i >= 0 ? p->key_line[i] : 0;
    return 0;
}

static int finish_section(struct parser *p)
{
    char desc[MAX_LINE + 32];
    if (p->kind < 0)
        return 0;
    section_desc(p, desc, sizeof(desc));
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct rp_conf_option *o = &options[i];
        if ((int)o->section != p->kind)
            continue;
        if ((o->flags & RP_CONF_F_REQUIRED) && !p->key_line[i]) {
            if ((o->flags & RP_CONF_F_UNLESS_OFFLINE) && p->kind == RP_CONF_SECTION_REGISTRY) {
                p->unless_offline_line[p->index] = p->header_line;
                p->unless_offline_key[p->index] = o->key;
                continue; /* decided in finish_file, once [cache] offline is known */
            }
            fail(p, p->header_line, "missing required key '%s' in %s", o->key, desc);
            return -1;
        }
        if (o->requires && p->key_line[i]) {
            int r = option_index(p->kind, o->requires, strlen(o->requires));
            if (r >= 0 && !p->key_line[r]) {
                fail(p, p->key_line[i], "'%s' in %s needs '%s'", o->key, desc, o->requires);
                return -1;
            }
        }
    }
    if (p->kind == RP_CONF_SECTION_ADMIN && check_admin(p, desc) != 0)
        return -1;
    if (p->kind == RP_CONF_SECTION_REGISTRY) {
        struct rp_conf_registry *r = &p->conf->registries[p->index];
        /* A user alone would be sent with no password, or not at all: never meant. */
        int u = option_index(p->kind, "user", 4), pw = option_index(p->kind, "password", 8),
            pwf = option_index(p->kind, "password_file", 13);
        if (u >= 0 && p->key_line[u] && !(pw >= 0 && p->key_line[pw]) &&
            !(pwf >= 0 && p->key_line[pwf])) {
            fail(p, p->key_line[u], "'user' in %s needs 'password' or 'password_file'", desc);
            return -1;
        }
        if (!r->url) {
            /* Offline without url (checked in finish_file): the name is the host[:port]
             * clients and auth files know the registry by. */
            char *guess = rp_xasprintf("https://%s", r->name);
            p->name_is_host[p->index] = check_base_url(guess) == NULL;
            if (p->name_is_host[p->index])
                r->url = guess;
            else
                free(guess);
        }
        if (!r->url) {
            /* Not a usable host: finish_file reports it; placeholders keep the struct
             * complete until then. */
            r->scheme = rp_xstrdup("https");
            r->host = lower_dup(r->name, strlen(r->name));
            r->port = 443;
            r->hostport = rp_xstrdup(r->host);
            p->kind = -1;
            return 0;
        }
        if (rp_conf_split_url(r->url, &r->scheme, &r->host, &r->port, NULL) != 0) {
            fail(p, p->header_line, "bad url in %s", desc); /* checked when set */
            return -1;
        }
        bool v6 = strchr(r->host, ':') != NULL;
        if (r->port == default_port(r->scheme))
            r->hostport = v6 ? rp_xasprintf("[%s]", r->host) : rp_xstrdup(r->host);
        else
            r->hostport = v6 ? rp_xasprintf("[%s]:%d", r->host, r->port)
                             : rp_xasprintf("%s:%d", r->host, r->port);
        r->dockerhub =
            strcmp(r->host, "registry-1.docker.io") == 0 || strcmp(r->host, "docker.io") == 0;
        if (!r->test_image && strcmp(r->host, "registry.redhat.io") == 0)
            r->test_image = rp_xstrdup("openshift3/ose-pod");
        for (size_t i = 0; i < N_OPTIONS; i++) {
            const struct rp_conf_option *o = &options[i];
            if ((int)o->section == p->kind && p->key_line[i] &&
                (o->flags & (RP_CONF_F_SECRET_FILE | RP_CONF_F_AUTH_FILE)) &&
                load_credential_file(p, o, r, p->key_line[i], desc) != 0)
                return -1;
        }
        int url = option_index(p->kind, "url", 3);
        if (strcmp(r->scheme, "http") == 0 && (r->user || r->identity_token) && url >= 0)
            p->clear_text_line[p->index] = p->key_line[url];
    }
    p->kind = -1;
    return 0;
}

/* "IPV4:port" or "[IPV6]:port", as the listener binds it: an address, not a host name
 * (a name could resolve to several addresses, or differently at each start). *host gets
 * the address in its canonical spelling, so two spellings of one address compare equal. */
static int parse_listen_addr(const char *a, size_t n, char **host, int *port)
{
    const char *h, *pt;
    size_t hlen;
    int af;
    if (n > 0 && a[0] == '[') {
        const char *rb = memchr(a, ']', n);
        if (!rb || (size_t)(rb - a) + 1 >= n || rb[1] != ':')
            return -1;
        h = a + 1;
        hlen = (size_t)(rb - h);
        pt = rb + 2;
        af = AF_INET6;
    } else {
        const char *colon = memchr(a, ':', n);
        if (!colon)
            return -1;
        h = a;
        hlen = (size_t)(colon - a);
        pt = colon + 1;
        af = AF_INET;
    }
    char text[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    if (hlen >= sizeof(text))
        return -1;
    memcpy(text, h, hlen);
    text[hlen] = '\0';
    if (inet_pton(af, text, bin) != 1 || !inet_ntop(af, bin, text, sizeof(text)))
        return -1;
    if (parse_port(pt, n - (size_t)(pt - a), port) != 0)
        return -1;
    *host = rp_xstrdup(text);
    return 0;
}

/* An IPv4-mapped IPv6 address ("::ffff:10.0.0.1") as its IPv4 address; else h itself. */
static const char *unmapped(const char *h)
{
    return strncmp(h, "::ffff:", 7) == 0 && strchr(h + 7, '.') ? h + 7 : h;
}

/* Whether two listen addresses (canonical hosts) would take the same socket, as Linux binds
 * them: one port, and the same address; or [::] (dual-stack: libevent does not set
 * IPV6_V6ONLY) beside anything; or 0.0.0.0 beside any IPv4 address, IPv4-mapped ones
 * included. 0.0.0.0:P and [::1]:P bind side by side. */
static bool listen_overlap(const char *h1, int p1, const char *h2, int p2)
{
    if (p1 != p2)
        return false;
    if (strcmp(h1, "::") == 0 || strcmp(h2, "::") == 0)
        return true;
    const char *a = unmapped(h1), *b = unmapped(h2);
    bool v4a = strchr(a, ':') == NULL, v4b = strchr(b, ':') == NULL;
    if (v4a && v4b && (strcmp(a, "0.0.0.0") == 0 || strcmp(b, "0.0.0.0") == 0))
        return true;
    return strcmp(a, b) == 0;
}

static int open_section(struct parser *p, int kind, const char *name, size_t nlen, unsigned line)
{
    struct rp_conf *c = p->conf;
    if (++p->n_sections > MAX_SECTIONS) {
        fail(p, line, "too many sections (at most %d)", MAX_SECTIONS);
        return -1;
    }
    memset(p->key_line, 0, sizeof(p->key_line));
    p->header_line = line;

    if (kind == RP_CONF_SECTION_CACHE) {
        if (p->have_cache) {
            fail(p, line, "duplicate section [cache]");
            return -1;
        }
        p->have_cache = true; /* defaults were applied when the conf was created */
    } else if (kind == RP_CONF_SECTION_ADMIN) {
        if (p->have_admin) {
            fail(p, line, "duplicate section [admin]");
            return -1;
        }
        p->have_admin = true;
    } else if (kind == RP_CONF_SECTION_LISTEN) {
        char *host;
        int port;
        if (parse_listen_addr(name, nlen, &host, &port) != 0) {
            fail(p, line,
                 "bad listen address \"%.*s\": expected IPV4:PORT or [IPV6]:PORT, an "
                 "address and not a host name (port 1-65535)",
                 (int)nlen, name);
            return -1;
        }
        for (size_t i = 0; i < c->n_listens; i++) {
            if (listen_overlap(c->listens[i].host, c->listens[i].port, host, port)) {
                bool same = strcmp(c->listens[i].host, host) == 0;
                fail(p, line, "%s [listen \"%.*s\"] (%s [listen \"%s\"])",
                     same ? "duplicate section" : "overlapping section", (int)nlen, name,
                     same ? "same address as" : "a wildcard address takes the port of",
                     c->listens[i].addr);
                free(host);
                return -1;
            }
        }
        c->listens = rp_xrealloc(c->listens, (c->n_listens + 1) * sizeof(*c->listens));
        p->default_line = rp_xrealloc(p->default_line, (c->n_listens + 1) * sizeof(unsigned));
        struct rp_conf_listen *l = &c->listens[c->n_listens];
        memset(l, 0, sizeof(*l));
        l->addr = rp_xstrndup(name, nlen);
        l->host = host;
        l->port = port;
        p->default_line[c->n_listens] = 0;
        p->index = c->n_listens++;
        apply_defaults(p, kind, l);
    } else {
        for (size_t i = 0; i < c->n_registries; i++) {
            if (rp_strieq_n(name, nlen, c->registries[i].name)) {
                fail(p, line, "duplicate section [registry \"%.*s\"]", (int)nlen, name);
                return -1;
            }
        }
        c->registries = rp_xrealloc(c->registries, (c->n_registries + 1) * sizeof(*c->registries));
        size_t nr = c->n_registries + 1;
        p->unless_offline_line = rp_xrealloc(p->unless_offline_line, nr * sizeof(unsigned));
        p->unless_offline_key = rp_xrealloc(p->unless_offline_key, nr * sizeof(const char *));
        p->name_is_host = rp_xrealloc(p->name_is_host, nr * sizeof(bool));
        p->clear_text_line = rp_xrealloc(p->clear_text_line, nr * sizeof(unsigned));
        p->clear_text_line[nr - 1] = 0;
        p->unless_offline_line[nr - 1] = 0;
        p->unless_offline_key[nr - 1] = NULL;
        p->name_is_host[nr - 1] = true;
        struct rp_conf_registry *r = &c->registries[c->n_registries];
        memset(r, 0, sizeof(*r));
        r->name = rp_xstrndup(name, nlen);
        p->index = c->n_registries++;
        apply_defaults(p, kind, r);
    }
    p->kind = kind;
    return 0;
}

/* s is a trimmed line starting with '['. */
static int parse_header(struct parser *p, const char *s, size_t n, unsigned line)
{
    if (n < 2 || s[n - 1] != ']') {
        fail(p, line, "malformed section header: expected [kind] or [kind \"name\"]");
        return -1;
    }
    const char *in = s + 1;
    size_t il = n - 2;
    trim(&in, &il);
    size_t wl = 0;
    while (wl < il && in[wl] >= 'a' && in[wl] <= 'z')
        wl++;
    const char *rest = in + wl;
    size_t rl = il - wl;
    trim(&rest, &rl);
    if (wl == 0 || (rl > 0 && (rl < 2 || rest[0] != '"' || rest[rl - 1] != '"'))) {
        fail(p, line, "malformed section header: expected [kind] or [kind \"name\"]");
        return -1;
    }
    int kind = -1;
    for (int k = RP_CONF_SECTION_LISTEN; k <= RP_CONF_SECTION_ADMIN; k++) {
        const char *kn = rp_conf_section_name((enum rp_conf_section_kind)k);
        if (strlen(kn) == wl && memcmp(in, kn, wl) == 0)
            kind = k;
    }
    if (kind < 0) {
        fail(p, line, "unknown section [%.*s]", (int)wl, in);
        return -1;
    }
    const char *name = rl ? rest + 1 : NULL;
    size_t nlen = rl ? rl - 2 : 0;
    for (size_t i = 0; i < nlen; i++) {
        if (name[i] == '"' || is_ctl(name[i])) {
            fail(p, line, "section name may not contain quotes or control characters");
            return -1;
        }
    }
    bool named = kind != RP_CONF_SECTION_CACHE && kind != RP_CONF_SECTION_ADMIN;
    if (named && !name) {
        fail(p, line, "section [%s] needs a name: [%s \"%s\"]", rp_conf_section_name(kind),
             rp_conf_section_name(kind), kind == RP_CONF_SECTION_LISTEN ? "ADDR" : "NAME");
        return -1;
    }
    if (named && nlen == 0) {
        fail(p, line, "empty name in section [%s \"\"]", rp_conf_section_name(kind));
        return -1;
    }
    if (!named && name) {
        fail(p, line, "section [%s] takes no name", rp_conf_section_name(kind));
        return -1;
    }
    /* Clients write a registry's name as the first component of an image reference, and
     * admins in pin patterns, mirror lists and `default`: a name with a space or a '/' could
     * never be reached, and would be written bare into the access log's fields. */
    for (size_t i = 0; kind == RP_CONF_SECTION_REGISTRY && i < nlen; i++) {
        char ch = name[i];
        if (!is_alpha(ch) && !is_digit(ch) && !strchr("._-:[]", ch)) {
            fail(p, line,
                 "bad registry name \"%.*s\": letters, digits, '.', '_', '-', and ':' or '[]' "
                 "of a host:port, as in an image reference",
                 (int)nlen, name);
            return -1;
        }
    }
    if (finish_section(p) != 0)
        return -1;
    return open_section(p, kind, name, nlen, line);
}

/* s is a trimmed, non-empty line that is neither a comment nor a header. */
static int parse_key_value(struct parser *p, const char *s, size_t n, unsigned line)
{
    char desc[MAX_LINE + 32];
    const char *eq = memchr(s, '=', n);
    if (!eq) {
        fail(p, line, "expected 'key = value' or a [section]");
        return -1;
    }
    const char *key = s, *v = eq + 1;
    size_t klen = (size_t)(eq - s), vlen = n - klen - 1;
    trim(&key, &klen);
    trim(&v, &vlen);
    bool key_ok = klen > 0 && klen <= MAX_KEY;
    for (size_t i = 0; i < klen && key_ok; i++)
        key_ok =
            is_alpha(key[i]) || is_digit(key[i]) || key[i] == '_' || key[i] == '-' || key[i] == '.';
    if (!key_ok) {
        /* Not echoed: a line like "password hunter2 = x" would leak. */
        fail(p, line, "invalid key name");
        return -1;
    }
    if (p->kind < 0) {
        fail(p, line, "key '%.*s' outside a section", (int)klen, key);
        return -1;
    }
    section_desc(p, desc, sizeof(desc));
    int idx = option_index(p->kind, key, klen);
    if (idx < 0) {
        fail(p, line, "unknown key '%.*s' in %s", (int)klen, key, desc);
        return -1;
    }
    const struct rp_conf_option *o = &options[idx];
    if (p->key_line[idx]) {
        fail(p, line, "duplicate key '%s' in %s (first on line %u)", o->key, desc,
             p->key_line[idx]);
        return -1;
    }
    for (const char *c = o->conflicts; c && *c;) {
        size_t cl = strcspn(c, " ");
        int ci = option_index(p->kind, c, cl);
        if (ci >= 0 && p->key_line[ci]) {
            fail(p, line, "'%s' and '%.*s' in %s are mutually exclusive", o->key, (int)cl, c, desc);
            return -1;
        }
        c += cl;
        while (*c == ' ')
            c++;
    }
    /* Quotes keep leading or trailing spaces; there are no escapes, and quotes elsewhere in
     * a value are literal. */
    if (vlen > 0 && v[0] == '"') {
        if (vlen < 2 || v[vlen - 1] != '"' || memchr(v + 1, '"', vlen - 2)) {
            fail(p, line, "bad value for '%s' in %s: unbalanced quotes", o->key, desc);
            return -1;
        }
        v++;
        vlen -= 2;
    }
    if (vlen == 0) {
        fail(p, line, "empty value for '%s' in %s", o->key, desc);
        return -1;
    }
    for (size_t i = 0; i < vlen; i++) {
        if (is_ctl(v[i])) {
            fail(p, line, "bad value for '%s' in %s: control character", o->key, desc);
            return -1;
        }
    }
    if (set_value(p, o, section_base(p), v, vlen, line) != 0)
        return -1;
    p->key_line[idx] = line;
    if (p->kind == RP_CONF_SECTION_LISTEN && o->offset == LISTEN_F(default_name))
        p->default_line[p->index] = line;
    return 0;
}

/* After the last line: the file as a whole must make sense. */
static int finish_file(struct parser *p)
{
    struct rp_conf *c = p->conf;
    if (finish_section(p) != 0)
        return -1;
    if (c->n_listens == 0) {
        fail(p, 0, "no [listen \"ADDR\"] section");
        return -1;
    }
    if (c->n_registries == 0) {
        fail(p, 0, "no [registry \"NAME\"] section");
        return -1;
    }
    for (size_t i = 0; i < c->n_registries; i++) {
        struct rp_conf_registry *r = &c->registries[i];
        r->offline = r->offline || c->cache.offline;
        /* An offline registry is never dialed, the login check included. */
        if (r->offline)
            r->test_login = false;
        /* Basic goes to the registry or its realm, which may then be http:// too (see
         * rp_conf_realm_allowed); a token would be as readable. */
        if (p->clear_text_line[i] && !r->offline)
            warn(p, p->clear_text_line[i],
                 "[registry \"%s\"] has credentials but its url is plain http://: they travel "
                 "in clear text to the registry and its token realm; use https://",
                 r->name);
        if (!p->unless_offline_line[i])
            continue;
        if (!r->offline) {
            fail(p, p->unless_offline_line[i], "missing required key '%s' in [registry \"%s\"]",
                 p->unless_offline_key[i], r->name);
            return -1;
        }
        if (!p->name_is_host[i]) {
            fail(p, p->unless_offline_line[i],
                 "[registry \"%s\"] is offline without url, so its name must be the "
                 "registry's host[:port]; set url to name it otherwise",
                 r->name);
            return -1;
        }
    }
    char *ahost = NULL;
    int aport = 0;
    if (strcmp(c->admin.listen, "off") != 0 &&
        parse_listen_addr(c->admin.listen, strlen(c->admin.listen), &ahost, &aport) == 0) {
        for (size_t i = 0; i < c->n_listens; i++) {
            if (!listen_overlap(c->listens[i].host, c->listens[i].port, ahost, aport))
                continue;
            if (!p->admin_listen_line) {
                /* Only the default collides: configurations written before the admin
                 * listener existed still serve, without it, as they did. */
                warn(p, 0,
                     "[listen \"%s\"] takes the admin listener's default port (%s): metrics "
                     "and probes are off; set [admin] listen to another address to have them",
                     c->listens[i].addr, c->admin.listen);
                free(c->admin.listen);
                c->admin.listen = rp_xstrdup("off");
                break;
            }
            fail(p, p->admin_listen_line,
                 "[admin] listen %s%s takes the port of [listen \"%s\"]: give the admin "
                 "listener another address or port, or off",
                 c->admin.listen, p->admin_listen_line ? "" : " (its default)", c->listens[i].addr);
            free(ahost);
            return -1;
        }
    }
    free(ahost);
    for (size_t i = 0; i < c->n_listens; i++) {
        struct rp_conf_listen *l = &c->listens[i];
        /* Client accounts and serving certificates are rotated like registry credentials
         * (cert-manager renews into a secret volume): a change reloads. (The server reads
         * these files; one that cannot be read fails there, with its reason.) */
        const char *served[] = {l->tls_cert, l->tls_key, l->htpasswd};
        for (size_t k = 0; k < sizeof(served) / sizeof(served[0]); k++) {
            struct stat st;
            if (served[k] && stat(served[k], &st) == 0)
                watch_add(c, served[k], &st);
        }
        if (!l->default_name)
            continue;
        l->def = rp_conf_find_registry(c, l->default_name, strlen(l->default_name));
        if (!l->def) {
            fail(p, p->default_line[i], "default '%s' in [listen \"%s\"] names no [registry]",
                 l->default_name, l->addr);
            return -1;
        }
    }
    return 0;
}

int rp_conf_parse(const char *text, size_t len, const char *source, struct rp_conf **out, char *err,
                  size_t errlen)
{
    struct parser p = {
        .source = source ? source : "<config>", .err = err, .errlen = errlen, .kind = -1};
    int rc = -1;
    if (err && errlen)
        err[0] = '\0';
    if (!out)
        return -1;
    *out = NULL;
    p.conf = rp_xcalloc(1, sizeof(*p.conf));
    p.conf->source = rp_xstrdup(p.source);
    const char *slash = strrchr(p.source, '/');
    if (slash)
        p.dir =
            slash == p.source ? rp_xstrdup("/") : rp_xstrndup(p.source, (size_t)(slash - p.source));
    p.kind = RP_CONF_SECTION_CACHE;
    apply_defaults(&p, RP_CONF_SECTION_CACHE, &p.conf->cache);
    p.kind = RP_CONF_SECTION_ADMIN;
    apply_defaults(&p, RP_CONF_SECTION_ADMIN, &p.conf->admin);
    p.kind = -1;
    if (!text && len > 0) {
        fail(&p, 0, "no text");
        goto out;
    }
    if (len > MAX_TEXT) {
        fail(&p, 0, "larger than 1 MiB");
        goto out;
    }
    size_t pos = 0;
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
        pos = 3; /* a UTF-8 byte order mark, as some editors write */
    for (unsigned line = 1; pos < len; line++) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        if (n > MAX_LINE) {
            fail(&p, line, "line longer than %d bytes", MAX_LINE);
            goto out;
        }
        if (memchr(s, '\0', n)) {
            fail(&p, line, "NUL byte in line");
            goto out;
        }
        trim(&s, &n);
        if (n == 0 || s[0] == '#' || s[0] == ';')
            continue;
        if (s[0] == '[' ? parse_header(&p, s, n, line) : parse_key_value(&p, s, n, line))
            goto out;
    }
    if (finish_file(&p) != 0)
        goto out;
    *out = p.conf;
    p.conf = NULL;
    rc = 0;
out:
    rp_conf_free(p.conf);
    free(p.dir);
    free(p.default_line);
    free(p.unless_offline_line);
    free(p.unless_offline_key);
    free(p.name_is_host);
    free(p.clear_text_line);
    return rc;
}

int rp_conf_load_file(const char *path, struct rp_conf **out, char *err, size_t errlen)
{
    struct stat st;
    const char *why = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc = -1;
    if (out)
        *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!path || !out)
        return -1;
    int fd = rp_conf_open_regular(path, &st, &why);
    if (fd < 0) {
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read: %s", path, why);
        return -1;
    }
    /* One byte more than allowed, to tell "exactly 1 MiB" from "larger". */
    buf = rp_xmalloc(MAX_TEXT + 1);
    while (len <= MAX_TEXT) {
        ssize_t r = read(fd, buf + len, MAX_TEXT + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            if (err && errlen)
                snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    if (len > MAX_TEXT) {
        if (err && errlen)
            snprintf(err, errlen, "%s: file is larger than 1 MiB", path);
        goto out;
    }
    rc = rp_conf_parse(buf, len, path, out, err, errlen);
out:
    rp_secure_zero(buf, len); /* may hold a password */
    free(buf);
    close(fd);
    return rc;
}
