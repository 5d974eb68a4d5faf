/* SPDX-License-Identifier: Apache-2.0 */
/* conf/internal.h: helpers shared by conf/'s source files (capped file reading, JSON and
 * YAML into one jansson tree, the inventory parser's steps). Not part of the contract. */
#ifndef RP_CONF_INTERNAL_H
#define RP_CONF_INTERNAL_H

#include "../util/util.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

/* Credential files and inventories: far larger than any real one, small enough to read. */
#define RP_CONF_MAX_DOC ((size_t)1 << 20)

/* Opens a regular file for reading without blocking on FIFOs or devices; fills *st.
 * Returns the fd, or -1 with a static reason (strerror or "not a regular file"). */
int rp_conf_open_regular(const char *path, struct stat *st, const char **why);

/* Reads at most `cap` bytes of fd into a new NUL-terminated buffer. A file whose st_size
 * already exceeds cap is refused before anything is read, so a huge file costs nothing;
 * one that grows past cap while read is refused too. On failure *why is `too_big` or
 * strerror. The caller zeroes the buffer if it may hold a secret. */
int rp_conf_read_fd(int fd, const struct stat *st, size_t cap, const char *too_big, char **buf,
                    size_t *len, const char **why);

/* NUL bytes, or bytes that are not UTF-8: not a text document. */
bool rp_conf_is_binary(const char *text, size_t len);
/* Cuts a jansson error message (json_error_t.text) before any part that quotes the input:
 * "near '<token>'", "control character 0x9", "invalid Unicode escape '\u12G4'". The input
 * may be a credential file, whose strings are secrets. */
void rp_conf_json_error_scrub(char *text);

/* Parses JSON (first non-space byte '{' or '[') or else YAML into a jansson tree. YAML:
 * one document only, no aliases, mapping keys must be scalars and unique; plain scalars
 * null, ~ and the YAML 1.1 booleans (true/yes/on/false/no/off in their three spellings)
 * become null and booleans, every other scalar a string (numbers too: a password of digits
 * stays as written). JSON: duplicate keys and NUL are refused. On failure returns NULL and
 * writes the reason with line and column to why; parser messages never quote the input,
 * which may hold a secret. */
json_t *rp_conf_tree_load(const char *text, size_t len, char *why, size_t whylen);

/* Overwrites every string value in the tree (they may be secrets) and drops the caller's
 * reference. Accepts NULL. */
void rp_conf_tree_scrub(json_t *j);

/* Appends s to b for a message: at most 80 bytes, control and non-ASCII bytes as '?', so a
 * hostile key cannot forge lines or flood the log. */
void rp_conf_buf_add_safe(struct rp_buf *b, const char *s);

/* The inventory importer in two steps, so the fuzz target can drive the parser without
 * touching the filesystem. */
struct rp_conf_inventory;
/* Parses inventory text (INI or YAML, see rp_conf_import_inventory). Returns 0 and *out, or
 * -1 with "SOURCE[:LINE]: reason" in err. */
int rp_conf_inventory_parse(const char *text, size_t len, const char *source,
                            struct rp_conf_inventory **out, char *err, size_t errlen);
/* Renders the configuration into b; it writes no file. With pw_dir (absolute), each
 * registry with a password gets password_file = "<pw_dir>/<host>.password", which the
 * caller writes; with pw_dir NULL such registries get a comment instead. Returns 0, or -1
 * with a reason in err. */
int rp_conf_inventory_render(const struct rp_conf_inventory *inv, const char *pw_dir,
                             const char *proxy_hostport, struct rp_buf *b, char *err,
                             size_t errlen);
void rp_conf_inventory_free(struct rp_conf_inventory *inv);

#endif
