/* SPDX-License-Identifier: Apache-2.0 */
/* conf/tree.c: JSON (jansson) and YAML (libyaml) documents into one jansson tree, so the
 * credential file and inventory readers interpret a single shape whatever the syntax. */
#include "internal.h"

#include "conf.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* libyaml rather than a hand-written reader: YAML's block, flow, quoting and folding rules
 * are large, and a well-kept, widely fuzzed parser gets them right. */
#include <yaml.h>

#define MAX_DEPTH 64 /* our documents nest 4 levels; the bound keeps the recursion small */

int rp_conf_open_regular(const char *path, struct stat *st, const char **why)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        *why = strerror(errno);
        return -1;
    }
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        *why = "not a regular file";
        close(fd);
        return -1;
    }
    return fd;
}

int rp_conf_read_fd(int fd, const struct stat *st, size_t cap, const char *too_big, char **buf,
                    size_t *len, const char **why)
{
    size_t n = 0;
    *buf = NULL;
    *len = 0;
    if (st && st->st_size > 0 && (uint64_t)st->st_size > cap) {
        *why = too_big;
        return -1;
    }
    /* One byte more than allowed, to tell "exactly cap" from "larger". */
    char *b = rp_xmalloc(cap + 2);
    while (n <= cap) {
        ssize_t r = read(fd, b + n, cap + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *why = strerror(errno);
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > cap) {
        *why = too_big;
        goto fail;
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
fail:
    rp_secure_zero(b, cap + 2);
    free(b);
    return -1;
}

bool rp_conf_is_binary(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp, min;
        if (c == 0)
            return true;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            n = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return true;
        }
        if (i + n > len)
            return true;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return true;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return true;
        i += n;
    }
    return false;
}

void rp_conf_buf_add_safe(struct rp_buf *b, const char *s)
{
    size_t n = 0;
    for (; s[n] && n < 80; n++) {
        char c = s[n];
        rp_buf_add(b, (unsigned char)c < 0x20 || (unsigned char)c >= 0x7f ? "?" : &c, 1);
    }
    if (s[n])
        rp_buf_add(b, "...", 3);
}

/* ---- JSON ---- */

void rp_conf_json_error_scrub(char *text)
{
    /* What follows these quotes the input (perhaps a password): "near '<token>'", a byte
     * as "0x9", an escape as "'\\u12G4'" ("invalid Unicode escape '...'", "invalid Unicode
     * '\\u...'"). The messages' own quotes ("'[' or '{' expected") stay. */
    static const char *const marks[] = {" near ", " 0x", " '\\u", " '"};
    char *cut = NULL;
    for (size_t i = 0; i < sizeof(marks) / sizeof(marks[0]); i++) {
        char *at = strstr(text, marks[i]);
        /* " '" only after "escape": elsewhere it opens the message's own quote. */
        if (at && i == 3 && (at - text < 6 || strncmp(at - 6, "escape", 6) != 0))
            at = NULL;
        if (at && (!cut || at < cut))
            cut = at;
    }
    if (cut)
        *cut = '\0';
}

static json_t *json_load(const char *text, size_t len, char *why, size_t whylen)
{
    json_error_t e;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &e);
    if (j)
        return j;
    rp_conf_json_error_scrub(e.text);
    snprintf(why, whylen, "invalid JSON at line %d, column %d: %s", e.line, e.column, e.text);
    rp_secure_zero(&e, sizeof(e));
    return NULL;
}

/* ---- YAML ---- */

struct yload {
    yaml_parser_t parser;
    char *why;
    size_t whylen;
    bool failed;
};

static void y_fail(struct yload *y, const yaml_mark_t *m, const char *what)
{
    if (y->failed)
        return;
    y->failed = true;
    if (m)
        snprintf(y->why, y->whylen, "invalid YAML at line %zu, column %zu: %s", m->line + 1,
                 m->column + 1, what);
    else
        snprintf(y->why, y->whylen, "invalid YAML: %s", what);
}

static bool y_next(struct yload *y, yaml_event_t *ev)
{
    if (yaml_parser_parse(&y->parser, ev))
        return true;
    /* libyaml's problems are fixed strings, never the input's text. */
    y_fail(y, &y->parser.problem_mark, y->parser.problem ? y->parser.problem : "syntax error");
    return false;
}

static bool plain_is(const char *v, size_t n, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == n && memcmp(*words, v, n) == 0)
            return true;
    return false;
}

/* YAML 1.1 as Ansible (PyYAML) resolves it, for the scalars these files hold. */
static json_t *y_scalar(const yaml_event_t *ev)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes",
                                      "YES",  "on",   "On",   "ON",  NULL};
    static const char *const no[] = {"false", "False", "FALSE", "no",  "No",
                                     "NO",    "off",   "Off",   "OFF", NULL};
    const char *v = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (ev->data.scalar.plain_implicit && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        if (plain_is(v, n, nulls))
            return json_null();
        if (plain_is(v, n, yes))
            return json_true();
        if (plain_is(v, n, no))
            return json_false();
    }
    return json_stringn(v, n);
}

static json_t *y_node(struct yload *y, yaml_event_t *ev, int depth);

static json_t *y_sequence(struct yload *y, int depth)
{
    json_t *arr = json_array();
    yaml_event_t ev;
    while (y_next(y, &ev)) {
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return arr;
        }
        json_t *item = y_node(y, &ev, depth + 1);
        if (!item)
            break;
        json_array_append_new(arr, item);
    }
    rp_conf_tree_scrub(arr);
    return NULL;
}

static json_t *y_mapping(struct yload *y, int depth)
{
    json_t *obj = json_object();
    yaml_event_t ev;
    while (y_next(y, &ev)) {
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return obj;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            y_fail(y, &ev.start_mark, "mapping keys must be plain strings");
            yaml_event_delete(&ev);
            break;
        }
        yaml_mark_t at = ev.start_mark;
        char *key = rp_xstrndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
        bool bad = strlen(key) != ev.data.scalar.length;
        yaml_event_delete(&ev);
        if (bad || json_object_get(obj, key)) {
            y_fail(y, &at, bad ? "NUL character in a key" : "duplicate key");
            free(key);
            break;
        }
        if (!y_next(y, &ev)) {
            free(key);
            break;
        }
        json_t *val = y_node(y, &ev, depth + 1);
        if (!val) {
            free(key);
            break;
        }
        json_object_set_new(obj, key, val);
        free(key);
    }
    rp_conf_tree_scrub(obj);
    return NULL;
}

/* Consumes ev. */
static json_t *y_node(struct yload *y, yaml_event_t *ev, int depth)
{
    json_t *j = NULL;
    yaml_mark_t at = ev->start_mark;
    if (depth > MAX_DEPTH) {
        y_fail(y, &at, "nested too deeply");
        yaml_event_delete(ev);
        return NULL;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length)) {
            y_fail(y, &at, "NUL character in a string");
            break;
        }
        j = y_scalar(ev);
        if (!j)
            y_fail(y, &at, "string is not UTF-8");
        rp_secure_zero(ev->data.scalar.value, ev->data.scalar.length);
        break;
    case YAML_SEQUENCE_START_EVENT:
        yaml_event_delete(ev);
        return y_sequence(y, depth);
    case YAML_MAPPING_START_EVENT:
        yaml_event_delete(ev);
        return y_mapping(y, depth);
    case YAML_ALIAS_EVENT:
        /* Refused rather than expanded: aliases are how a small file becomes a huge tree. */
        y_fail(y, &at, "aliases (*name) are not supported");
        break;
    default:
        y_fail(y, &at, "unexpected YAML event");
        break;
    }
    yaml_event_delete(ev);
    return j;
}

static json_t *yaml_load(const char *text, size_t len, char *why, size_t whylen)
{
    struct yload y = {.why = why, .whylen = whylen};
    yaml_event_t ev;
    json_t *root = NULL;
    if (!yaml_parser_initialize(&y.parser)) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&y.parser, (const unsigned char *)text, len);
    if (!y_next(&y, &ev))
        goto out;
    yaml_event_delete(&ev); /* STREAM-START */
    if (!y_next(&y, &ev))
        goto out;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        snprintf(why, whylen, "empty document");
        goto out;
    }
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if (!y_next(&y, &ev))
        goto out;
    root = y_node(&y, &ev, 0);
    if (!root)
        goto out;
    if (!y_next(&y, &ev))
        goto fail;
    yaml_event_delete(&ev); /* DOCUMENT-END */
    if (!y_next(&y, &ev))
        goto fail;
    bool more = ev.type != YAML_STREAM_END_EVENT;
    yaml_mark_t at = ev.start_mark;
    yaml_event_delete(&ev);
    if (more) {
        y_fail(&y, &at, "more than one document");
        goto fail;
    }
    goto out;
fail:
    rp_conf_tree_scrub(root);
    root = NULL;
out:
    yaml_parser_delete(&y.parser);
    return root;
}

json_t *rp_conf_tree_load(const char *text, size_t len, char *why, size_t whylen)
{
    size_t bom = len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0 ? 3 : 0, i = bom;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
        i++;
    /* jansson skips the leading whitespace itself, so its line and column are the file's;
     * only the byte order mark, which it refuses, is left out. */
    if (i < len && (text[i] == '{' || text[i] == '['))
        return json_load(text + bom, len - bom, why, whylen);
    return yaml_load(text, len, why, whylen);
}

static void wipe_free(void *p)
{
    if (!p)
        return;
    /* jansson does not say the size; the allocator knows it (a glibc extension, which
     * the sanitizers also provide). */
    rp_secure_zero(p, malloc_usable_size(p));
    free(p);
}

void rp_conf_json_wipe_freed(void)
{
    json_set_alloc_funcs(malloc, wipe_free);
}

void rp_conf_json_scrub(json_t *j)
{
    const char *k;
    json_t *v;
    size_t i;
    switch (json_typeof(j)) {
    case JSON_STRING:
        /* jansson keeps a private copy; the cast is the only way to wipe it before free. */
        rp_secure_zero((char *)json_string_value(j), json_string_length(j));
        break;
    case JSON_OBJECT:
        json_object_foreach(j, k, v)
        {
            rp_conf_json_scrub(v);
        }
        break;
    case JSON_ARRAY:
        json_array_foreach(j, i, v)
        {
            rp_conf_json_scrub(v);
        }
        break;
    default:
        break;
    }
}

void rp_conf_tree_scrub(json_t *j)
{
    if (!j)
        return;
    /* Our trees share no nodes, so wiping before the last reference goes is safe. */
    rp_conf_json_scrub(j);
    json_decref(j);
}
