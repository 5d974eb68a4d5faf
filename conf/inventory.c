/* SPDX-License-Identifier: Apache-2.0 */
/* conf/inventory.c: turns the registry settings of an openshift-ansible (OpenShift 3.x)
 * inventory, INI or YAML, into a regproxy configuration, writing each password to a 0600
 * file instead of printing it. */
#include "conf.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_VALUE ((size_t)64 << 10) /* one INI value, continuation lines included */
#define MAX_PY_DEPTH 16
#define MAX_REGISTRIES 128
#define MAX_FIELD 1024 /* user names and test images */
#define CREDS "openshift_additional_registry_credentials"
#define DEFAULT_PORT 5000

struct inv_reg {
    char *name;       /* section name: "host" or "host:port"; "docker.io" for Docker Hub */
    char *url;        /* https://host[:port] (http:// when the inventory said so) */
    char *user;       /* NULL: none */
    char *password;   /* secret; NULL: none in the inventory */
    char *pw_problem; /* why a password present in the inventory cannot be used, or NULL */
    char *test_image;
    int test_login; /* -1: not set */
    int tls_verify; /* -1: not set */
    char *origin;   /* where it came from, for messages */
};

struct rp_conf_inventory {
    char *source;
    char *oreg_url; /* as the inventory has it, or the assumed default */
    bool oreg_assumed;
    char *oreg_path;      /* oreg_url after its registry host: "openshift3/ose-${component}:..." */
    struct inv_reg *regs; /* regs[0] is oreg_url's registry */
    size_t n_regs;
    /* openshift_http_proxy [0] and openshift_https_proxy [1], as http(s)://host[:port]; a
     * value with credentials is not kept (only that it had them), as a configuration has no
     * place for them. openshift_no_proxy as given. */
    char *egress[2];
    bool egress_creds[2];
    char *no_proxy;
};

/* The variables of the inventory: name -> value (strings from INI; any JSON from YAML),
 * and for INI name -> line. */
struct vars {
    json_t *v;
    json_t *lines;
    const char *source;
    char *err;
    size_t errlen;
};

static int vvfail(const struct vars *vs, long long line, const char *fmt, va_list ap)
{
    if (!vs->err || vs->errlen == 0)
        return -1;
    int n = line ? snprintf(vs->err, vs->errlen, "%s:%lld: ", vs->source, line)
                 : snprintf(vs->err, vs->errlen, "%s: ", vs->source);
    if (n >= 0 && (size_t)n < vs->errlen)
        vsnprintf(vs->err + n, vs->errlen - (size_t)n, fmt, ap);
    return -1;
}

static int vfail(const struct vars *vs, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int lfail(const struct vars *vs, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* "SOURCE:LINE: msg" when the variable `key` came from an INI line, else "SOURCE: msg". */
static int vfail(const struct vars *vs, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vvfail(vs, key ? (long long)json_integer_value(json_object_get(vs->lines, key)) : 0, fmt, ap);
    va_end(ap);
    return -1;
}

static int lfail(const struct vars *vs, unsigned line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vvfail(vs, line, fmt, ap);
    va_end(ap);
    return -1;
}

static bool is_sp(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && is_sp((*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_sp((*s)[*n - 1]))
        (*n)--;
}

/* ---- Python literals: what Ansible's INI values and openshift-ansible's examples use ---- */

struct py {
    const char *s;
    size_t n, i;
    const char *err;
    int depth;
};

static void py_ws(struct py *p)
{
    while (p->i < p->n && is_sp(p->s[p->i]))
        p->i++;
}

static json_t *py_fail(struct py *p, const char *what)
{
    if (!p->err)
        p->err = what;
    return NULL;
}

/* '...' or "..." with Python's common escapes, appended to b; an optional u/r/b prefix is
 * tolerated. */
static int py_string_into(struct py *p, struct rp_buf *b)
{
    bool raw = false;
    while (p->i < p->n && strchr("uUrRbB", p->s[p->i])) {
        raw |= p->s[p->i] == 'r' || p->s[p->i] == 'R';
        p->i++;
    }
    if (p->i >= p->n || (p->s[p->i] != '\'' && p->s[p->i] != '"')) {
        py_fail(p, "expected a string");
        return -1;
    }
    char q = p->s[p->i++];
    while (p->i < p->n && p->s[p->i] != q) {
        char c = p->s[p->i++];
        if (c == '\n') {
            py_fail(p, "line break inside a string");
            return -1;
        }
        if (c == '\\' && !raw && p->i < p->n) {
            char e = p->s[p->i++];
            switch (e) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case '\\':
            case '\'':
            case '"':
                c = e;
                break;
            default:
                rp_buf_add(b, "\\", 1);
                c = e;
                break;
            }
        }
        rp_buf_add(b, &c, 1);
    }
    if (p->i >= p->n) {
        py_fail(p, "unterminated string");
        return -1;
    }
    p->i++;
    return 0;
}

/* One string literal, or several adjacent ones, which concatenate as in Python: 'it' 's'
 * is "its". */
static json_t *py_strings(struct py *p)
{
    struct rp_buf b;
    json_t *j = NULL;
    /* The value cannot outgrow the input, so the cap never truncates. A secret: inventories
     * hold passwords. */
    rp_buf_init_secret(&b, p->n + 1);
    for (;;) {
        if (py_string_into(p, &b) != 0)
            goto out;
        size_t save = p->i;
        py_ws(p);
        size_t k = p->i;
        while (k < p->n && k - p->i < 2 && strchr("uUrRbB", p->s[k]))
            k++;
        if (k >= p->n || (p->s[k] != '\'' && p->s[k] != '"')) {
            p->i = save;
            break;
        }
    }
    j = json_stringn(b.data ? b.data : "", b.len);
    if (!j)
        py_fail(p, "string is not UTF-8");
out:
    rp_buf_free(&b);
    return j;
}

static json_t *py_value(struct py *p);

/* [a, b] / (a, b) and {k: v}: `close` is the closing bracket. */
static json_t *py_container(struct py *p, char close)
{
    bool dict = close == '}';
    json_t *c = dict ? json_object() : json_array();
    if (++p->depth > MAX_PY_DEPTH) {
        json_decref(c);
        return py_fail(p, "nested too deeply");
    }
    p->i++; /* the opening bracket */
    for (;;) {
        py_ws(p);
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            break;
        }
        json_t *k = NULL, *v;
        if (dict) {
            k = py_value(p);
            if (!k)
                goto fail;
            if (!json_is_string(k)) {
                json_decref(k);
                py_fail(p, "dictionary keys must be strings");
                goto fail;
            }
            py_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') {
                json_decref(k);
                py_fail(p, "expected ':'");
                goto fail;
            }
            p->i++;
        }
        v = py_value(p);
        if (!v) {
            json_decref(k);
            goto fail;
        }
        if (dict) {
            json_object_set_new(c, json_string_value(k), v);
            json_decref(k);
        } else {
            json_array_append_new(c, v);
        }
        py_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            continue;
        }
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            break;
        }
        py_fail(p, dict ? "expected ',' or '}'" : "expected ',' or ']'");
        goto fail;
    }
    p->depth--;
    return c;
fail:
    rp_conf_tree_scrub(c);
    return NULL;
}

static json_t *py_value(struct py *p)
{
    py_ws(p);
    if (p->i >= p->n)
        return py_fail(p, "unexpected end");
    char c = p->s[p->i];
    if (c == '[')
        return py_container(p, ']');
    if (c == '(')
        return py_container(p, ')');
    if (c == '{')
        return py_container(p, '}');
    if (c == '\'' || c == '"')
        return py_strings(p);
    /* Words and numbers: True/False/None (and JSON's spellings), digits kept as text. */
    size_t start = p->i;
    while (p->i < p->n &&
           (p->s[p->i] == '_' || p->s[p->i] == '.' || p->s[p->i] == '-' || p->s[p->i] == '+' ||
            (p->s[p->i] >= '0' && p->s[p->i] <= '9') || (p->s[p->i] >= 'a' && p->s[p->i] <= 'z') ||
            (p->s[p->i] >= 'A' && p->s[p->i] <= 'Z')))
        p->i++;
    size_t n = p->i - start;
    const char *w = p->s + start;
    if (n >= 1 && n <= 2 && p->i < p->n && (p->s[p->i] == '\'' || p->s[p->i] == '"') &&
        strspn(w, "uUrRbB") >= n) { /* a u'' or r'' prefix */
        p->i = start;
        return py_strings(p);
    }
    if ((n == 4 && (memcmp(w, "True", 4) == 0 || memcmp(w, "true", 4) == 0)))
        return json_true();
    if ((n == 5 && (memcmp(w, "False", 5) == 0 || memcmp(w, "false", 5) == 0)))
        return json_false();
    if ((n == 4 && (memcmp(w, "None", 4) == 0 || memcmp(w, "null", 4) == 0)))
        return json_null();
    if (n > 0 && ((w[0] >= '0' && w[0] <= '9') || w[0] == '-' || w[0] == '+'))
        return json_stringn(w, n);
    return py_fail(p, "expected a string, number, True, False, None, list or dictionary");
}

/* Parses a whole Python literal; on failure says where (never what: it may be a password). */
static json_t *py_parse(const char *s, size_t n, char *why, size_t whylen)
{
    struct py p = {.s = s, .n = n};
    json_t *j = py_value(&p);
    if (j) {
        py_ws(&p);
        if (p.i < p.n && p.s[p.i] != '#') {
            rp_conf_tree_scrub(j);
            j = NULL;
            py_fail(&p, "unexpected text after the value");
        }
    }
    if (!j)
        snprintf(why, whylen, "%s at character %zu of the value", p.err ? p.err : "invalid",
                 p.i + 1);
    return j;
}

/* ---- INI inventories ---- */

/* Does a trimmed line look like an INI section header, "[group]" or "[group:vars]"? */
static bool ini_header(const char *s, size_t n)
{
    if (n < 3 || s[0] != '[' || s[n - 1] != ']')
        return false;
    for (size_t i = 1; i + 1 < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == ':' || c == '.'))
            return false;
    }
    return true;
}

static bool looks_ini(const char *text, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + 1;
        trim(&s, &n);
        if (ini_header(s, n))
            return true;
    }
    return false;
}

/* Bracket depth of a value, quotes respected, fed a line at a time: an INI value that opens a
 * list and does not close it continues on the next lines (as openshift-ansible's docs wrap
 * the credentials list, though Ansible itself would not accept it). */
struct brackets {
    int depth;
    char quote;
    bool escape;
};

static void brackets_feed(struct brackets *br, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (br->escape) {
            br->escape = false;
        } else if (br->quote) {
            if (c == '\\')
                br->escape = true;
            else if (c == br->quote || c == '\n')
                br->quote = 0; /* strings do not span lines */
        } else if (c == '\'' || c == '"') {
            br->quote = c;
        } else if (c == '[' || c == '{' || c == '(') {
            br->depth++;
        } else if (c == ']' || c == '}' || c == ')') {
            br->depth--;
        }
    }
}

/* Does a trimmed line start a variable, "name=..." (as Ansible splits it at the first '=')? */
static bool looks_assignment(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                     (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
        i++;
    while (i > 0 && i < n && is_sp(s[i]))
        i++;
    return i > 0 && i < n && s[i] == '=';
}

/* An INI value as Ansible reads it: a quoted string is unquoted (with its escapes);
 * anything else stays text and is interpreted when used. */
static json_t *ini_value(const char *v, size_t n)
{
    if (n > 0 && (v[0] == '\'' || v[0] == '"')) {
        char why[128];
        json_t *j = py_parse(v, n, why, sizeof(why));
        if (j && json_is_string(j))
            return j;
        rp_conf_tree_scrub(j);
    }
    return json_stringn(v, n);
}

static int ini_parse(struct vars *vs, const char *text, size_t len)
{
    /* [OSEv3:vars] wins over [all:vars] whatever the order, as group vars override all. */
    json_t *all = json_object(), *all_lines = json_object();
    int rc = -1;
    int which = 0; /* 0: another section; 1: [all:vars]; 2: [OSEv3:vars] */
    unsigned line = 0;
    size_t pos = 0;
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + 1;
        line++;
        trim(&s, &n);
        if (n == 0 || s[0] == '#' || s[0] == ';')
            continue;
        if (s[0] == '[' && ini_header(s, n)) {
            which = rp_strieq_n(s, n, "[OSEv3:vars]") ? 2 : rp_strieq_n(s, n, "[all:vars]") ? 1 : 0;
            continue;
        }
        if (!which)
            continue;
        const char *eq = memchr(s, '=', n);
        if (!eq) {
            /* Not echoed: a line in a vars section may hold a password. */
            lfail(vs, line, "expected key=value in the vars section");
            goto out;
        }
        const char *k = s, *v = eq + 1;
        size_t kl = (size_t)(eq - s), vl = n - kl - 1;
        trim(&k, &kl);
        trim(&v, &vl);
        if (kl == 0 || kl > 128) {
            lfail(vs, line, "bad variable name");
            goto out;
        }
        unsigned first = line;
        json_t *val;
        struct brackets br = {0};
        if (vl > 0 && (v[0] == '[' || v[0] == '{'))
            brackets_feed(&br, v, vl);
        val = NULL;
        if (br.depth > 0) {
            struct rp_buf b;
            size_t pos1 = pos;
            unsigned line1 = line;
            rp_buf_init_secret(&b, MAX_VALUE); /* it may be a password */
            rp_buf_add(&b, v, vl);
            while (br.depth > 0 && pos < len) {
                s = text + pos;
                nl = memchr(s, '\n', len - pos);
                n = nl ? (size_t)(nl - s) : len - pos;
                const char *ts = s;
                size_t tn = n;
                trim(&ts, &tn);
                /* The next variable or section: the bracket was the value's own text (a
                 * password such as "{x7q"), which Ansible reads as a string. */
                if (ini_header(ts, tn) || looks_assignment(ts, tn))
                    break;
                pos += n + 1;
                line++;
                if (rp_buf_add(&b, "\n", 1) != 0 || rp_buf_add(&b, s, n) != 0) {
                    rp_buf_free(&b);
                    lfail(vs, first, "value longer than 64 KiB");
                    goto out;
                }
                brackets_feed(&br, "\n", 1);
                brackets_feed(&br, s, n);
            }
            if (br.depth > 0) {
                pos = pos1;
                line = line1;
            } else {
                const char *jv = b.data;
                size_t jl = b.len;
                trim(&jv, &jl);
                val = json_stringn(jv, jl);
                if (!val) {
                    rp_buf_free(&b);
                    lfail(vs, first, "value is not UTF-8");
                    goto out;
                }
            }
            rp_buf_free(&b);
        }
        if (!val)
            val = ini_value(v, vl);
        if (!val) {
            lfail(vs, first, "value is not UTF-8");
            goto out;
        }
        char *key = rp_xstrndup(k, kl);
        json_object_set_new(which == 2 ? vs->v : all, key, val);
        json_object_set_new(which == 2 ? vs->lines : all_lines, key, json_integer(first));
        free(key);
    }
    const char *key;
    json_t *val;
    json_object_foreach(all, key, val)
    {
        if (!json_object_get(vs->v, key)) {
            /* A copy: `all` is wiped below, and a shared node would be wiped with it. */
            json_object_set_new(vs->v, key, json_deep_copy(val));
            json_object_set(vs->lines, key, json_object_get(all_lines, key));
        }
    }
    rc = 0;
out:
    rp_conf_tree_scrub(all);
    json_decref(all_lines);
    return rc;
}

/* ---- YAML inventories ---- */

static bool has_known_var(json_t *o)
{
    return json_is_object(o) &&
           (json_object_get(o, "oreg_url") || json_object_get(o, "oreg_auth_user") ||
            json_object_get(o, CREDS) || json_object_get(o, "openshift_deployment_type"));
}

/* group_vars/OSEv3.yml is the mapping itself; a YAML inventory nests it, as OSEv3's vars
 * (under all's children, or a top-level group) and all's vars, which count too: Ansible
 * merges them, OSEv3's winning, as the INI reader does with [all:vars]. Returns a new
 * reference; the merged mapping holds copies, so each tree is wiped on its own. */
static json_t *yaml_vars(json_t *root)
{
    if (has_known_var(root))
        return json_incref(root);
    json_t *all = json_object_get(json_object_get(root, "all"), "vars");
    json_t *osev3 = json_object_get(
        json_object_get(json_object_get(json_object_get(root, "all"), "children"), "OSEv3"),
        "vars");
    if (!json_is_object(osev3))
        osev3 = json_object_get(json_object_get(root, "OSEv3"), "vars");
    if (!has_known_var(all) && !has_known_var(osev3))
        return json_incref(root);
    json_t *merged = json_object();
    json_t *layers[] = {all, osev3};
    for (size_t i = 0; i < sizeof(layers) / sizeof(layers[0]); i++) {
        if (!json_is_object(layers[i]))
            continue;
        json_t *copy = json_deep_copy(layers[i]);
        json_object_update(merged, copy);
        json_decref(copy); /* its values now belong to merged alone */
    }
    return merged;
}

/* ---- from variables to registries ---- */

static void reg_free(struct inv_reg *r)
{
    free(r->name);
    free(r->url);
    free(r->user);
    rp_free_secret(r->password);
    free(r->pw_problem);
    free(r->test_image);
    free(r->origin);
}

void rp_conf_inventory_free(struct rp_conf_inventory *inv)
{
    if (!inv)
        return;
    for (size_t i = 0; i < inv->n_regs; i++)
        reg_free(&inv->regs[i]);
    free(inv->regs);
    free(inv->source);
    free(inv->oreg_url);
    free(inv->oreg_path);
    free(inv->egress[0]);
    free(inv->egress[1]);
    free(inv->no_proxy);
    free(inv);
}

/* A string variable: strings as they are, numbers from YAML are already strings. NULL when
 * absent or null; -1 on another type. */
static int get_string(const struct vars *vs, json_t *obj, const char *key, const char *what,
                      const char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return obj == vs->v ? vfail(vs, key, "%s is not a string", key)
                            : vfail(vs, CREDS, "%s: '%s' is not a string", what, key);
    *out = json_string_value(v);
    return 0;
}

static int get_bool(const struct vars *vs, json_t *obj, const char *key, const char *what, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    json_t *v = json_object_get(obj, key);
    *out = -1;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = strlen(s);
        for (size_t i = 0; i < 4; i++) {
            if (rp_strieq_n(s, n, yes[i]))
                *out = 1;
            if (rp_strieq_n(s, n, no[i]))
                *out = 0;
        }
        if (*out >= 0)
            return 0;
    }
    return obj == vs->v ? vfail(vs, key, "%s: expected True or False", key)
                        : vfail(vs, CREDS, "%s: '%s': expected True or False", what, key);
}

/* A value printed into the configuration: the format has no escapes, so what it cannot
 * carry (control characters, quotes at the ends) is refused here, before anything is
 * written. */
static bool printable_value(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_FIELD || s[0] == '"')
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return !is_sp(s[0]) && !is_sp(s[n - 1]);
}

static bool templated(const char *s)
{
    return strstr(s, "{{") || strstr(s, "{%") || strncmp(s, "$ANSIBLE_VAULT", 14) == 0;
}

static bool is_hub(const char *h)
{
    return strcasecmp(h, "docker.io") == 0 || strcasecmp(h, "index.docker.io") == 0 ||
           strcasecmp(h, "registry-1.docker.io") == 0;
}

static char *lower_name(const char *s, size_t n)
{
    char *d = rp_xstrndup(s, n);
    for (size_t i = 0; i < n; i++)
        if (d[i] >= 'A' && d[i] <= 'Z')
            d[i] = (char)(d[i] | 0x20);
    return d;
}

/* host[:port], perhaps with an http(s):// prefix, into a section name and url. */
static int reg_target(const struct vars *vs, const char *key, const char *what,
                      const char *hostspec, char **name, char **url)
{
    const char *scheme = "https";
    const char *h = hostspec;
    if (strncasecmp(h, "https://", 8) == 0) {
        h += 8;
    } else if (strncasecmp(h, "http://", 7) == 0) {
        h += 7;
        scheme = "http";
    }
    size_t n = strlen(h);
    while (n > 0 && h[n - 1] == '/')
        n--;
    if (templated(hostspec))
        return vfail(vs, key, "%s is a Jinja template; put the plain host in", what);
    char *candidate = rp_xasprintf("%s://%.*s", scheme, (int)n, h);
    char *host = NULL, *path = NULL;
    int port = 0;
    int bad = rp_conf_split_url(candidate, NULL, &host, &port, &path) != 0 || path[0] != '\0';
    if (bad) {
        free(candidate);
        free(host);
        free(path);
        return vfail(vs, key, "%s: expected a registry host[:port]", what);
    }
    if (is_hub(host)) {
        *name = rp_xstrdup("docker.io");
        *url = rp_xstrdup("https://registry-1.docker.io");
        free(candidate);
    } else {
        *name = lower_name(h, n);
        *url = candidate;
    }
    free(host);
    free(path);
    return 0;
}

/* Adds a registry, or merges into the one of the same name (oreg_url's registry is often
 * listed among the additional credentials too). Takes ownership of name and url. */
static int add_reg(struct rp_conf_inventory *inv, const struct vars *vs, const char *key,
                   const char *origin, char *name, char *url, const char *user,
                   const char *password, const char *test_image, int test_login, int tls_verify)
{
    struct inv_reg *r = NULL;
    int rc = -1;
    if (user && (!printable_value(user) || templated(user))) {
        vfail(vs, key, "%s (%s): the user %s", origin, name,
              templated(user) ? "is a Jinja template or vault reference; put the plain value in"
                              : "is empty, too long, or has control characters or surrounding "
                                "spaces or quotes");
        goto out;
    }
    if (test_image && !printable_value(test_image)) {
        vfail(vs, key, "%s (%s): test_image is empty, too long, or has control characters", origin,
              name);
        goto out;
    }
    if (password && password[0] == '\0')
        password = NULL;
    if (password && !user) {
        vfail(vs, key, "%s (%s): a password without a user; regproxy logs in with both", origin,
              name);
        goto out;
    }
    for (size_t i = 0; i < inv->n_regs && !r; i++)
        if (strcmp(inv->regs[i].name, name) == 0)
            r = &inv->regs[i];
    if (r) {
        if ((user && r->user && strcmp(user, r->user) != 0) ||
            (password && r->password && strcmp(password, r->password) != 0)) {
            vfail(vs, key, "%s (%s): different credentials than %s for the same registry", origin,
                  name, r->origin);
            goto out;
        }
    } else {
        if (inv->n_regs >= MAX_REGISTRIES) {
            vfail(vs, key, "more than %d registries", MAX_REGISTRIES);
            goto out;
        }
        inv->regs = rp_xrealloc(inv->regs, (inv->n_regs + 1) * sizeof(*inv->regs));
        r = &inv->regs[inv->n_regs++];
        memset(r, 0, sizeof(*r));
        r->name = name;
        r->url = url;
        name = url = NULL;
        r->origin = rp_xstrdup(origin);
        r->test_login = r->tls_verify = -1;
    }
    if (user && !r->user)
        r->user = rp_xstrdup(user);
    if (password && !r->password && !r->pw_problem) {
        if (templated(password))
            r->pw_problem = rp_xasprintf("the password in %s is a Jinja template or "
                                         "vault-encrypted",
                                         origin);
        else if (strpbrk(password, "\r\n"))
            r->pw_problem = rp_xasprintf("the password in %s has a line break", origin);
        else
            r->password = rp_xstrdup(password);
    }
    if (test_image && !r->test_image)
        r->test_image = rp_xstrdup(test_image);
    if (test_login >= 0 && r->test_login < 0)
        r->test_login = test_login;
    if (tls_verify >= 0 && r->tls_verify < 0)
        r->tls_verify = tls_verify;
    rc = 0;
out:
    free(name);
    free(url);
    return rc;
}

static int take_oreg(struct rp_conf_inventory *inv, const struct vars *vs)
{
    const char *oreg, *dtype, *user, *pass;
    char *name = NULL, *url = NULL, *host = NULL;
    int test_login;
    if (get_string(vs, vs->v, "oreg_url", "oreg_url", &oreg) ||
        get_string(vs, vs->v, "openshift_deployment_type", "openshift_deployment_type", &dtype) ||
        get_string(vs, vs->v, "oreg_auth_user", "oreg_auth_user", &user) ||
        get_string(vs, vs->v, "oreg_auth_password", "oreg_auth_password", &pass) ||
        get_bool(vs, vs->v, "oreg_test_login", "oreg_test_login", &test_login))
        return -1;
    if (!oreg) {
        inv->oreg_assumed = true;
        oreg = dtype && strcmp(dtype, "origin") == 0
                   ? "docker.io/openshift/origin-${component}:${version}"
                   : "registry.redhat.io/openshift3/ose-${component}:${version}";
    }
    if (templated(oreg))
        return vfail(vs, "oreg_url", "oreg_url is a Jinja template; put the plain value in");
    inv->oreg_url = rp_xstrdup(oreg);
    const char *slash = strchr(oreg, '/');
    size_t fl = slash ? (size_t)(slash - oreg) : 0;
    if (!slash)
        return vfail(vs, "oreg_url",
                     "oreg_url: expected REGISTRY/REPOSITORY, e.g. "
                     "registry.redhat.io/openshift3/ose-${component}:${version}");
    /* Docker's rule for "is the first component a registry": a dot, a port or localhost. */
    if (slash &&
        (memchr(oreg, '.', fl) || memchr(oreg, ':', fl) || rp_strieq_n(oreg, fl, "localhost"))) {
        host = rp_xstrndup(oreg, fl);
        inv->oreg_path = rp_xstrdup(slash + 1);
    } else {
        host = rp_xstrdup("docker.io");
        inv->oreg_path = rp_xstrdup(oreg);
    }
    if (!printable_value(inv->oreg_path) || strchr(inv->oreg_path, ' ')) {
        free(host);
        return vfail(vs, "oreg_url",
                     "oreg_url: expected REGISTRY/REPOSITORY, e.g. "
                     "registry.redhat.io/openshift3/ose-${component}:${version}");
    }
    int rc = reg_target(vs, "oreg_url", "oreg_url's registry", host, &name, &url);
    free(host);
    if (rc != 0)
        return -1;
    return add_reg(inv, vs, user ? "oreg_auth_user" : "oreg_url", "oreg_url", name, url, user, pass,
                   NULL, test_login, -1);
}

static int take_creds(struct rp_conf_inventory *inv, const struct vars *vs)
{
    json_t *list = json_object_get(vs->v, CREDS), *parsed = NULL;
    int rc = -1;
    if (!list || json_is_null(list))
        return 0;
    if (json_is_string(list)) {
        const char *s = json_string_value(list);
        size_t n = json_string_length(list);
        trim(&s, &n);
        if (n == 0)
            return 0;
        char why[128];
        parsed = py_parse(s, n, why, sizeof(why));
        if (!parsed)
            return vfail(vs, CREDS, "%s: %s", CREDS, why);
        list = parsed;
    }
    if (!json_is_array(list)) {
        vfail(vs, CREDS, "%s is not a list", CREDS);
        goto out;
    }
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item)
    {
        char origin[96];
        snprintf(origin, sizeof(origin), "%s[%zu]", CREDS, i);
        const char *host, *user, *pass, *image;
        int login, verify;
        char *name = NULL, *url = NULL;
        if (!json_is_object(item)) {
            vfail(vs, CREDS, "%s is not a dictionary", origin);
            goto out;
        }
        if (get_string(vs, item, "host", origin, &host) ||
            get_string(vs, item, "user", origin, &user) ||
            get_string(vs, item, "password", origin, &pass) ||
            get_string(vs, item, "test_image", origin, &image) ||
            get_bool(vs, item, "test_login", origin, &login) ||
            get_bool(vs, item, "tls_verify", origin, &verify))
            goto out;
        if (!host) {
            vfail(vs, CREDS, "%s has no 'host'", origin);
            goto out;
        }
        if (reg_target(vs, CREDS, origin, host, &name, &url) != 0 ||
            add_reg(inv, vs, CREDS, origin, name, url, user, pass, image, login, verify) != 0)
            goto out;
    }
    rc = 0;
out:
    rp_conf_tree_scrub(parsed);
    return rc;
}

static const char *const EGRESS_VARS[2] = {"openshift_http_proxy", "openshift_https_proxy"};

/* The proxies the installer gives docker and the masters (HTTP_PROXY, HTTPS_PROXY,
 * NO_PROXY): the proxy's upstream connections need them just the same. */
static int take_egress(struct rp_conf_inventory *inv, const struct vars *vs)
{
    for (int i = 0; i < 2; i++) {
        const char *v;
        if (get_string(vs, vs->v, EGRESS_VARS[i], EGRESS_VARS[i], &v))
            return -1;
        if (!v || !v[0])
            continue;
        if (templated(v))
            return vfail(vs, EGRESS_VARS[i], "%s is a Jinja template; put the plain value in",
                         EGRESS_VARS[i]);
        const char *hp = strstr(v, "://") ? strstr(v, "://") + 3 : v;
        size_t n = strlen(hp);
        while (n > 0 && hp[n - 1] == '/')
            n--;
        if (memchr(hp, '@', n)) {
            inv->egress_creds[i] = true; /* never copied: it holds a password */
            continue;
        }
        char *u = strstr(v, "://") ? rp_xasprintf("%.*s", (int)(hp - v + n), v)
                                   : rp_xasprintf("http://%.*s", (int)n, hp);
        char *scheme = NULL, *path = NULL;
        bool ok = printable_value(u) && rp_conf_split_url(u, &scheme, NULL, NULL, &path) == 0 &&
                  (strcasecmp(scheme, "http") == 0 || strcasecmp(scheme, "https") == 0) &&
                  path[0] == '\0';
        free(scheme);
        free(path);
        if (!ok) {
            free(u);
            return vfail(vs, EGRESS_VARS[i], "%s: expected http(s)://host[:port]", EGRESS_VARS[i]);
        }
        inv->egress[i] = u;
    }
    const char *no;
    if (get_string(vs, vs->v, "openshift_no_proxy", "openshift_no_proxy", &no))
        return -1;
    if (no && no[0]) {
        if (templated(no) || !printable_value(no))
            return vfail(vs, "openshift_no_proxy",
                         "openshift_no_proxy: expected a comma-separated list of host names");
        inv->no_proxy = rp_xstrdup(no);
    }
    return 0;
}

/* Whether NO_PROXY's list names host, as curl and Go read it: "*", the host itself, or a
 * domain it is in (with or without a leading dot), case-insensitively. */
static bool no_proxy_names(const char *list, const char *host)
{
    size_t hl = strlen(host);
    for (const char *p = list; p && *p;) {
        while (*p == ',' || is_sp(*p))
            p++;
        const char *e = p;
        while (*e && *e != ',' && !is_sp(*e))
            e++;
        const char *d = p;
        size_t n = (size_t)(e - p);
        if (n == 1 && d[0] == '*')
            return true;
        if (n > 0 && d[0] == '.')
            d++, n--;
        if (n > 0 && n <= hl && strncasecmp(host + hl - n, d, n) == 0 &&
            (n == hl || host[hl - n - 1] == '.'))
            return true;
        p = e;
    }
    return false;
}

int rp_conf_inventory_parse(const char *text, size_t len, const char *source,
                            struct rp_conf_inventory **out, char *err, size_t errlen)
{
    struct vars vs = {.v = NULL,
                      .lines = json_object(),
                      .source = source ? source : "<inventory>",
                      .err = err,
                      .errlen = errlen};
    struct rp_conf_inventory *inv = rp_xcalloc(1, sizeof(*inv));
    json_t *root = NULL;
    int rc = -1;
    if (err && errlen)
        err[0] = '\0';
    if (out)
        *out = NULL;
    inv->source = rp_xstrdup(vs.source);
    if (!out || (!text && len > 0)) {
        vfail(&vs, NULL, "no text");
        goto out;
    }
    if (len > RP_CONF_MAX_DOC) {
        vfail(&vs, NULL, "larger than 1 MiB");
        goto out;
    }
    if (rp_conf_is_binary(text, len)) {
        vfail(&vs, NULL, "binary data, not an INI or YAML inventory");
        goto out;
    }
    if (looks_ini(text, len)) {
        vs.v = json_object();
        if (ini_parse(&vs, text, len) != 0)
            goto out;
    } else {
        char why[512];
        root = rp_conf_tree_load(text, len, why, sizeof(why));
        if (!root) {
            vfail(&vs, NULL, "%s", why);
            goto out;
        }
        if (!json_is_object(root)) {
            vfail(&vs, NULL,
                  "expected an INI inventory with [OSEv3:vars] or a YAML mapping of "
                  "variables");
            goto out;
        }
        vs.v = yaml_vars(root);
    }
    if (take_oreg(inv, &vs) != 0 || take_creds(inv, &vs) != 0 || take_egress(inv, &vs) != 0)
        goto out;
    *out = inv;
    inv = NULL;
    rc = 0;
out:
    rp_conf_tree_scrub(vs.v);
    rp_conf_tree_scrub(root);
    json_decref(vs.lines);
    rp_conf_inventory_free(inv);
    return rc;
}

/* ---- output ---- */

/* A password file written under a temporary name, waiting for its rename into place. */
struct staged {
    char *tmp;    /* NULL once renamed */
    char *path;   /* DIR/NAME.password */
    bool existed; /* path was there before (an earlier import's): never removed */
};

/* Writes the password to a temporary DIR/.NAME.password.XXXXXX, created 0600 (O_EXCL) and
 * synced: renamed into place only once the configuration is out (publish), so no reader
 * ever sees a partial or world-readable file, a failed import leaves nothing new, and a
 * second import replaces the first. */
static int stage_password(const char *dir, const char *name, const char *password,
                          struct staged *out, char *err, size_t errlen)
{
    char *path = rp_xasprintf("%s/%s.password", dir, name);
    char *tmp = rp_xasprintf("%s/.%s.password.XXXXXX", dir, name);
    size_t n = strlen(password), off = 0;
    struct stat st;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        goto fail;
    }
    if (fchmod(fd, 0600) != 0) {
        snprintf(err, errlen, "%s: cannot chmod: %s", path, strerror(errno));
        goto fail_unlink;
    }
    struct rp_buf b;
    rp_buf_init_secret(&b, n + 2);
    rp_buf_add(&b, password, n);
    rp_buf_add(&b, "\n", 1);
    while (off < b.len) {
        ssize_t w = write(fd, b.data + off, b.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
            rp_buf_free(&b);
            goto fail_unlink;
        }
        off += (size_t)w;
    }
    rp_buf_free(&b);
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        goto fail_unlink;
    }
    fd = -1;
    out->tmp = tmp;
    out->path = path;
    out->existed = lstat(path, &st) == 0;
    return 0;
fail_unlink:
    unlink(tmp);
fail:
    if (fd >= 0)
        close(fd);
    free(tmp);
    free(path);
    return -1;
}

/* Renames every staged file into place. When one cannot be, those already renamed that
 * were new are removed again (an earlier import's file, replaced, cannot be brought back). */
static int publish(struct staged *files, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (rename(files[i].tmp, files[i].path) == 0) {
            free(files[i].tmp);
            files[i].tmp = NULL;
            continue;
        }
        snprintf(err, errlen, "%s: cannot rename into place: %s", files[i].path, strerror(errno));
        for (size_t k = 0; k < i; k++)
            if (!files[k].existed)
                unlink(files[k].path);
        return -1;
    }
    return 0;
}

/* Removes what was not renamed into place, and frees the list. */
static void staged_free(struct staged *files, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (files[i].tmp)
            unlink(files[i].tmp);
        free(files[i].tmp);
        free(files[i].path);
    }
    free(files);
}

/* "host[:port]" the clients will use; adds ":5000" when there is no port. */
static int proxy_address(const char *hp, char **out, int *port, char *err, size_t errlen)
{
    char *u = rp_xasprintf("http://%s", hp ? hp : "");
    char *path = NULL;
    int p = 0;
    int rc = -1;
    if (!hp || !hp[0] || rp_conf_split_url(u, NULL, NULL, &p, &path) != 0 || path[0] != '\0') {
        snprintf(err, errlen, "proxy address: expected host:port, e.g. proxy.example.com:5000");
        goto out;
    }
    const char *rb = strrchr(hp, ']');
    const char *colon = strrchr(hp, ':');
    bool has_port = colon && (!rb || colon > rb);
    if (has_port) {
        *out = rp_xstrdup(hp);
        *port = p;
    } else {
        *out = rp_xasprintf("%s:%d", hp, DEFAULT_PORT);
        *port = DEFAULT_PORT;
    }
    rc = 0;
out:
    free(u);
    free(path);
    return rc;
}

int rp_conf_inventory_render(const struct rp_conf_inventory *inv, const char *pw_dir,
                             const char *proxy_hostport, struct rp_buf *b, char *err, size_t errlen)
{
    char *proxy = NULL;
    int port = 0, rc = -1;
    if (err && errlen)
        err[0] = '\0';
    if (!inv || inv->n_regs == 0 || !b) {
        snprintf(err, errlen, "nothing to render");
        return -1;
    }
    if (proxy_address(proxy_hostport, &proxy, &port, err, errlen) != 0)
        return -1;
    rp_buf_addf(b, "# regproxy configuration imported from the openshift-ansible inventory ");
    rp_conf_buf_add_safe(b, inv->source);
    rp_buf_addf(b, ".\n# Check it with `regproxy check -c FILE`; see docs/configuration.md.\n");
    if (inv->oreg_assumed)
        rp_buf_addf(b, "# The inventory sets no oreg_url; assumed %s.\n", inv->oreg_url);
    rp_buf_addf(b, "\n[listen \"0.0.0.0:%d\"]\ndefault = %s\n", port, inv->regs[0].name);
    /* The admin listener's default, 127.0.0.1:5001, would take the same port. */
    if (port == 5001)
        rp_buf_addf(b, "\n[admin]\n# metrics and probes; the default port is the proxy's "
                       "here\nlisten = 127.0.0.1:5002\n");
    for (size_t i = 0; i < inv->n_regs; i++) {
        const struct inv_reg *r = &inv->regs[i];
        rp_buf_addf(b, "\n# from %s\n[registry \"%s\"]\nurl = %s\n", r->origin, r->name, r->url);
        /* A user without its password is refused by the parser: until the password is
         * there, the user waits in a comment beside it (and the registry is anonymous). */
        if (r->user)
            rp_buf_addf(b, "%suser = %s\n", r->password && pw_dir ? "" : "# ", r->user);
        if (r->password && pw_dir) {
            char *path = rp_xasprintf("%s/%s.password", pw_dir, r->name);
            if (!printable_value(path)) {
                snprintf(err, errlen, "%s: the path cannot be written into the configuration",
                         path);
                free(path);
                goto out;
            }
            rp_buf_addf(b, "password_file = %s\n", path);
            free(path);
        } else if (r->password) {
            rp_buf_addf(b, "# password_file = (not written)\n");
        } else if (r->pw_problem) {
            rp_buf_addf(b,
                        "# %s: write it to a file (chmod 600) and set\n# password_file = "
                        "/etc/regproxy/%s.password\n",
                        r->pw_problem, r->name);
        } else if (r->user) {
            rp_buf_addf(b,
                        "# the inventory has no password for this user: write it to a file "
                        "(chmod 600) and set\n# password_file = /etc/regproxy/%s.password\n",
                        r->name);
        }
        if (r->test_image)
            rp_buf_addf(b, "test_image = %s\n", r->test_image);
        if (r->test_login >= 0)
            rp_buf_addf(b, "test_login = %s\n", r->test_login ? "yes" : "no");
        if (r->tls_verify >= 0)
            rp_buf_addf(b, "tls_verify = %s\n", r->tls_verify ? "yes" : "no");
        char *host = NULL;
        int https = strncmp(r->url, "https:", 6) == 0;
        if (rp_conf_split_url(r->url, NULL, &host, NULL, NULL) != 0)
            continue; /* checked when the registry was added */
        if (inv->no_proxy && no_proxy_names(inv->no_proxy, host) &&
            (inv->egress[https] || inv->egress_creds[https]))
            rp_buf_addf(b, "# no proxy: openshift_no_proxy names this registry\n");
        else if (inv->egress[https])
            rp_buf_addf(b, "proxy = %s\n", inv->egress[https]);
        else if (inv->egress_creds[https])
            rp_buf_addf(b,
                        "# %s has credentials, which a configuration does not keep: give it to "
                        "regproxy\n# as %s in its environment (systemctl edit regproxy)\n",
                        EGRESS_VARS[https], https ? "https_proxy" : "http_proxy");
        free(host);
    }
    rp_buf_addf(b,
                "\n# To pull through this proxy, set in the inventory ([OSEv3:vars]):\n"
                "# oreg_url=%s/%s\n",
                proxy, inv->oreg_path);
    if (!b->data) {
        snprintf(err, errlen, "configuration too large");
        goto out;
    }
    rc = 0;
out:
    free(proxy);
    return rc;
}

int rp_conf_import_inventory(const char *inventory_path, const char *out_dir,
                             const char *proxy_hostport, FILE *out, char *err, size_t errlen)
{
    struct rp_conf_inventory *inv = NULL;
    struct rp_buf b;
    struct stat st;
    const char *why = NULL;
    char *text = NULL, *dir = NULL;
    size_t len = 0, n_files = 0;
    int rc = -1, fd = -1;
    bool made_dir = false;
    struct staged *files = NULL;
    char tmp[1024];
    rp_buf_init(&b, (size_t)4 << 20);
    if (err && errlen)
        err[0] = '\0';
    if (!err || errlen == 0)
        err = tmp, errlen = sizeof(tmp);
    if (!inventory_path || !out_dir || !out) {
        snprintf(err, errlen, "rp_conf_import_inventory: missing argument");
        goto out;
    }
    fd = rp_conf_open_regular(inventory_path, &st, &why);
    if (fd < 0 ||
        rp_conf_read_fd(fd, &st, RP_CONF_MAX_DOC, "larger than 1 MiB", &text, &len, &why) != 0) {
        snprintf(err, errlen, "%s: cannot read: %s", inventory_path, why);
        goto out;
    }
    if (rp_conf_inventory_parse(text, len, inventory_path, &inv, err, errlen) != 0)
        goto out;
    /* Validated before any file is written. */
    char *proxy = NULL;
    int port;
    if (proxy_address(proxy_hostport, &proxy, &port, err, errlen) != 0)
        goto out;
    free(proxy);
    if (mkdir(out_dir, 0700) == 0) {
        made_dir = true;
    } else if (errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create: %s", out_dir, strerror(errno));
        goto out;
    }
    /* Absolute, so the configuration works wherever it is saved. */
    dir = realpath(out_dir, NULL);
    if (!dir || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a directory", out_dir);
        goto out;
    }
    if (rp_conf_inventory_render(inv, dir, proxy_hostport, &b, err, errlen) != 0)
        goto out;
    /* The files the configuration names (render's condition), each under a temporary name
     * until the configuration is out. */
    files = rp_xcalloc(inv->n_regs, sizeof(*files));
    for (size_t i = 0; i < inv->n_regs; i++) {
        const struct inv_reg *r = &inv->regs[i];
        if (!r->password)
            continue;
        if (stage_password(dir, r->name, r->password, &files[n_files], err, errlen) != 0)
            goto out;
        n_files++;
    }
    if (fwrite(b.data, 1, b.len, out) != b.len || fflush(out) != 0) {
        snprintf(err, errlen, "cannot write the configuration: %s", strerror(errno));
        goto out;
    }
    if (publish(files, n_files, err, errlen) != 0)
        goto out;
    rc = 0;
out:
    staged_free(files, n_files);
    if (rc != 0 && made_dir)
        rmdir(dir ? dir : out_dir);
    if (fd >= 0)
        close(fd);
    if (text) {
        rp_secure_zero(text, len);
        free(text);
    }
    free(dir);
    rp_buf_free(&b);
    rp_conf_inventory_free(inv);
    return rc;
}
