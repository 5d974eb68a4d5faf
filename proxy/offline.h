/* SPDX-License-Identifier: Apache-2.0 */
/* offline: disconnected clusters. `regproxy mirror` fills the cache with listed images
 * through the proxy itself, `export` writes cached images into a bundle (or an OCI layout)
 * for removable media, `import` verifies a bundle completely and then publishes it into a
 * cache served with `offline = yes`. This header is internal to proxy/: manifest.c (pure
 * parsing: manifest references, platforms, image references), pins.c (the pins file that
 * makes mirrored pins survive restarts), progress.c, mirror.c, bundle.c, and verify.c
 * (`regproxy verify`: every cached digest checked again). */
#ifndef RP_OFFLINE_H
#define RP_OFFLINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../cache/cache.h"
#include "../conf/conf.h"
#include "route.h"

/* ---------------------------------------------------------------------- manifest.c */

/* The four manifest media types the mirror asks for (Accept) and the bundle accepts. */
#define RP_MEDIA_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define RP_MEDIA_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define RP_MEDIA_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define RP_MEDIA_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define RP_MANIFEST_ACCEPT                                                                         \
    RP_MEDIA_OCI_INDEX ", " RP_MEDIA_OCI_MANIFEST ", " RP_MEDIA_DOCKER_LIST                        \
                       ", " RP_MEDIA_DOCKER_MANIFEST

/* Whether an Accept list names media_type itself (not through a wildcard, nor with q=0;
 * parameters and spaces around the list's commas allowed). NULL or empty: no. */
bool rp_accept_names(const char *accept, const char *media_type);
/* Whether the manifest a registry answered to a tag with this Accept list is what the tag
 * names for everyone, so that the proxy may record tag -> its digest. Registries narrow
 * their answer to what a client accepts: a Docker manifest list becomes its linux/amd64
 * image for a client that does not name lists (distribution, Docker Hub, Quay), an image
 * becomes signed schema 1 for one that names neither schema 2 nor lists. So an image
 * manifest counts only when both list types (Docker lists, OCI indexes) were named, as
 * docker, containerd, CRI-O, podman and skopeo do; schema 1 never (its digest is not even
 * of its bytes); indexes, lists and other types always. */
bool rp_manifest_tag_canonical(const char *accept, const char *media_type);
/* A manifest's Content-Type as its media type alone, in place: parameters cut (quay, pulp and
 * Satellite add "; charset=utf-8"), lower case, so that it compares with the types clients
 * name and manifests declare. */
void rp_media_type_normalize(char *content_type);

/* Bounds on what a manifest may reference: far above real images (an index of a few dozen
 * platforms, a few hundred layers), low enough that a hostile document stays cheap. */
#define RP_MANIFEST_REFS_MAX 4096
#define RP_MEDIA_TYPE_MAX 255
#define RP_PLATFORM_PART_MAX 64

enum rp_ref_kind {
    RP_REF_CHILD,  /* a manifest of an index / manifest list */
    RP_REF_CONFIG, /* an image manifest's config blob */
    RP_REF_LAYER,  /* an image manifest's layer blob */
};

struct rp_manifest_ref {
    enum rp_ref_kind kind;
    char digest[RP_CACHE_DIGEST_BUF];
    char media_type[RP_MEDIA_TYPE_MAX + 1]; /* "" when absent */
    int64_t size;                           /* as declared; >= 0 */
    /* RP_REF_CHILD: platform.os, .architecture, .variant ("" when absent) */
    char os[RP_PLATFORM_PART_MAX + 1], arch[RP_PLATFORM_PART_MAX + 1],
        variant[RP_PLATFORM_PART_MAX + 1];
    bool has_platform; /* RP_REF_CHILD: the descriptor has a "platform" object */
};

struct rp_manifest_refs {
    bool is_index; /* "manifests" (index, manifest list) rather than config + layers */
    struct rp_manifest_ref *v;
    size_t n;
};

/* What a manifest references, from its JSON (at most RP_CACHE_MANIFEST_MAX bytes): the
 * children of an index or manifest list, or the config and layers of an image manifest
 * (OCI or Docker schema 2). Non-distributable ("foreign") layers are left out: they are
 * not in the registry. Every digest is checked against the digest grammar and every size
 * must be a non-negative integer. Returns 0 and fills *out (free with
 * rp_manifest_refs_free), or -1 with a one-line reason in err (schema 1, not JSON, a
 * missing or mistyped field, too many references). Pure: no I/O. */
int rp_manifest_refs(const char *json, size_t len, struct rp_manifest_refs *out, char *err,
                     size_t errlen);
void rp_manifest_refs_free(struct rp_manifest_refs *r); /* accepts NULL */
/* Calls of rp_manifest_refs so far in this process (the loop's thread only): lets tests
 * bound the work of a walk over manifests by a count rather than a time. */
extern unsigned long rp_manifest_refs_calls;

/* A --platform filter: "os/arch[/variant]" items separated by commas. */
struct rp_platforms;
/* NULL s: no filter (every platform). Returns 0, or -1 with a reason in err. */
int rp_platforms_parse(const char *s, struct rp_platforms **out, char *err, size_t errlen);
/* Whether an index child is wanted: every child when p is NULL, and one whose descriptor
 * names no platform (it is for every platform, as containerd's pulls take it); otherwise
 * os and arch equal and, when the filter item names a variant, the variant too. */
bool rp_platforms_match(const struct rp_platforms *p, const struct rp_manifest_ref *child);
void rp_platforms_free(struct rp_platforms *p);

/* An image as the mirror list, the pins file and bundles name it:
 * REGISTRY/REPO[:TAG][@DIGEST]. REGISTRY is the first component: a configured registry's
 * name, host or host:port, as in the proxy's prefix routing. */
struct rp_image_ref {
    const struct rp_conf_registry *reg;
    char repo[RP_NAME_MAX + 1];     /* as the registry knows it ("library/" added for Hub) */
    char tag[RP_TAG_MAX + 1];       /* "" when none */
    char digest[RP_DIGEST_MAX + 1]; /* "" when none */
};
/* Parses and resolves s against conf's registries. A reference with neither tag nor
 * digest means :latest. Returns 0, or -1 with *why a static reason. */
int rp_image_ref_parse(const struct rp_conf *conf, const char *s, size_t len,
                       struct rp_image_ref *out, const char **why);
/* "registry/repo:tag@digest" (parts present only) into buf. */
void rp_image_ref_format(const struct rp_image_ref *r, char *buf, size_t len);

/* Reads an image list (one reference a line, '#' comments, blank lines ignored, CRLF and a
 * leading UTF-8 byte order mark accepted, UTF-16 refused; at most 16 MiB and 100000 images).
 * Returns 0 and an array (free()), or -1 with "FILE:LINE: reason" in err. */
int rp_image_list_load(const struct rp_conf *conf, const char *path, struct rp_image_ref **out,
                       size_t *n, char *err, size_t errlen);

/* The lowercase "sha256:<hex>" (or sha512) digest of data, for manifests in memory. algo
 * is taken from `like` (a digest whose algorithm to use; NULL: sha256). */
void rp_digest_of(const char *like, const void *data, size_t len, char out[RP_CACHE_DIGEST_BUF]);
/* Whether digest names the empty blob (of its algorithm). */
bool rp_digest_is_empty(const char *digest);

/* -------------------------------------------------------------------------- pins.c */
/* <cache dir>/pins lists every image mirrored or imported into the cache, one
 * "REGISTRY/REPO[:TAG]@DIGEST" per line (REGISTRY: the configured name). The cache keeps
 * no pins across an open; the proxy re-pins from this file at every start (and on a reload
 * after the file changed) by walking each listed manifest in the cache, so mirrored content
 * is never evicted, even after a crash. Lines are never removed by regproxy: an operator
 * who wants an image evictable again deletes its line and reloads. Written only while the
 * cache's lock is held (by the process that has the cache open), replaced atomically. */
#define RP_PINS_FILE "pins"

/* Adds the image (registry name, repo, tag or NULL, manifest digest) to the pins file
 * under cache_dir unless it is listed already. 0, or -1 (logged). */
int rp_pins_add(const char *cache_dir, const char *registry, const char *repo, const char *tag,
                const char *digest);
/* The line rp_pins_add writes for an image (owned by the caller). */
char *rp_pins_line(const char *registry, const char *repo, const char *tag, const char *digest);
/* Adds n lines at once, each unless listed already: one rewrite of the file, where one
 * rp_pins_add per image of a large import rewrote and fsynced it once per image. */
int rp_pins_add_lines(const char *cache_dir, char *const *lines, size_t n);
/* The images of the pins file, resolved against conf (lines naming a registry conf does not
 * have are skipped with a warning). No file: 0 images. 0, or -1 with a reason in err. */
int rp_pins_load(const struct rp_conf *conf, struct rp_image_ref **out, size_t *n, char *err,
                 size_t errlen);
/* Calls visit for digest and, when it is a cached manifest, for everything it references
 * (children of an index, config and layers), whether present yet or not. Each digest is
 * walked once however often manifests repeat it (again only when a shorter path reaches
 * it). Stops at the first visit that returns non-zero, and returns that (0 when none did);
 * *n (when n is not NULL) gets the number of distinct digests reached. */
int rp_manifest_walk(struct rp_cache *c, const char *digest,
                     int (*visit)(void *arg, const char *digest), void *arg, size_t *n);
/* rp_manifest_walk pinning each digest. Returns the number of distinct digests pinned. */
size_t rp_pin_walk(struct rp_cache *c, const char *digest);
/* Tells one version of the pins file from another (all zero when there is none). */
struct rp_pins_stamp {
    uint64_t dev, ino, size;
    int64_t mtime_ns;
};
void rp_pins_stamp(const char *cache_dir, struct rp_pins_stamp *out);
/* Whether registry/repo matches one of conf's `pin` patterns (shell wildcards), tried with
 * the registry's section name and its host[:port] (for Docker Hub also "docker.io", and an
 * official image's short name without "library/"). */
bool rp_pin_pattern_match(const struct rp_conf *conf, const char *registry, const char *repo);
/* Pins what conf and the pins file say must stay, the only sources of pins (the cache keeps
 * none across an open): rp_pin_walk for every image of the pins file, and every digest linked
 * for a repository that a `pin` pattern matches (read from the cache's link files, so what
 * was pulled before a restart stays pinned without a new pull). Logs how many. Called by
 * whoever opens the cache, before anything can evict (the server at start; import, which
 * publishes). Export only reads and needs none. */
void rp_pins_apply(struct rp_cache *c, const struct rp_conf *conf);
/* A reload's rp_pins_apply: rp_cache_unpin_all, then as rp_pins_apply, once the pins file
 * was read. One that cannot be read (a symbolic link or a directory in its place, a read
 * error) keeps every pin in force, adds those of the patterns, and returns -1: unpinned, the
 * mirrored images it names would be evicted, and an offline cache cannot fetch them again. */
int rp_pins_reapply(struct rp_cache *c, const struct rp_conf *conf);

/* ---------------------------------------------------------------------- progress.c */
/* Progress of mirror, export and import: on a terminal one line on stderr, rewritten at
 * most every 200 ms (bytes, rate, items done/total); otherwise nothing but the plain lines
 * each command prints per image. */
struct rp_progress {
    bool tty;
    const char *verb; /* "mirroring", "exporting", "importing", "verifying" */
    const char *noun; /* what done/total count; NULL: "images" */
    int64_t start_ms, last_ms;
    uint64_t bytes, total_bytes; /* total_bytes 0: unknown */
    size_t done, total;
    bool shown; /* the status line is on screen */
};
void rp_progress_init(struct rp_progress *p, const char *verb, size_t total, uint64_t total_bytes);
/* Redraws the status line (at most every 200 ms unless force). */
void rp_progress_update(struct rp_progress *p, bool force);
/* Prints a line to stdout (the status line is cleared first and redrawn after). */
void rp_progress_line(struct rp_progress *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Clears the status line for good. */
void rp_progress_end(struct rp_progress *p);
/* "12.3 MB" style (decimal units, as rates are usually given). */
void rp_format_bytes(uint64_t n, char *buf, size_t len);
/* MB/s since p->start_ms. */
double rp_progress_rate(const struct rp_progress *p);

/* ------------------------------------------------------------------------ mirror.c */
struct rp_mirror_opts {
    const char *list;      /* the image list file */
    const char *platforms; /* --platform, or NULL for every platform */
    int jobs;              /* blobs fetched at once (-j), >= 1 */
};
/* `regproxy mirror`: runs the proxy in-process on an internal 127.0.0.1 listener and pulls
 * every listed image through it (manifests, the selected children of indexes, configs and
 * layers), checking each digest, pinning everything and recording the images in the pins
 * file. Exit status: 0 when every image succeeded, 1 otherwise (each failure reported with
 * the proxy's error), 2 for usage errors. */
int rp_mirror_main(struct rp_conf *conf, const struct rp_mirror_opts *o);

/* ------------------------------------------------------------------------ bundle.c */
/*
 * Bundle format, version 1 (all integers big-endian):
 *
 *   header   "RPBUNDLE" u32 version u32 flags(0) u64 total_length u64 part_size
 *   record*  u8 type, u8[3] zero, u32 name_length, u64 data_length, name, data
 *
 * total_length counts every byte of the stream (header to the end of the trailer);
 * part_size is 0 for one file, else the size of every part file but the last
 * (BUNDLE.000, BUNDLE.001, ...). Records, in this order:
 *   'M' once: an LZ4 frame of the metadata JSON: {"format": "regproxy-bundle",
 *       "version": 1, "images": [{"registry", "repo", "tag"?, "digest", "tag_time"?}],
 *       "manifests": [{"digest", "media_type", "size", "repos": [[registry, repo], ...]}],
 *       "blobs": [{"digest", "size", "repos": [...]}]}
 *   'm' one per metadata manifest, in its order: name = digest, data = an LZ4 frame of
 *       the manifest bytes
 *   'b' one per metadata blob, in its order: name = digest, data = the blob bytes
 *   'T' last: data = sha256 of every byte before this record
 * A reader accepts nothing else: every record is checked against the metadata (digest,
 * size after decompression, sha256 of the content), nothing may be missing, added or
 * reordered, and nothing may follow the trailer.
 */
#define RP_BUNDLE_MAGIC "RPBUNDLE"
#define RP_BUNDLE_VERSION 1
#define RP_BUNDLE_HEADER_LEN 32
#define RP_BUNDLE_RECORD_HEAD 16
#define RP_BUNDLE_META_MAX ((size_t)64 << 20) /* decompressed metadata JSON */

/* Where a bundle reader gets its bytes: read returns up to n bytes (0 at the end, -1 on an
 * error with a reason written through why). */
struct rp_bundle_src {
    long (*read)(void *arg, void *buf, size_t n, const char **why);
    /* Optional: moves n bytes ahead without reading them (RP_BUNDLE_F_TRUSTED only). */
    int (*skip)(void *arg, uint64_t n, const char **why);
    /* Optional: names the files that hold stream bytes [from, to) ("part b.rpb.003"), or
     * writes "" when that says nothing (one file); a failed read ends its message with it,
     * so that the part to copy again is known. */
    void (*where)(void *arg, uint64_t from, uint64_t to, char *buf, size_t len);
    void *arg;
};

struct rp_bundle_meta; /* the parsed metadata */

/* What a reader calls as records pass verification; any may be NULL. A callback returning
 * -1 stops the read (its message in err). Blob data arrives in pieces before the blob's
 * digest is known to match: only blob_end says it did. */
struct rp_bundle_sink {
    int (*meta)(void *arg, const struct rp_bundle_meta *m, char *err, size_t errlen);
    int (*manifest)(void *arg, const char *digest, const char *media_type, const char *data,
                    size_t len, char *err, size_t errlen);
    /* Returns 0 to receive the data, 1 when the blob is not wanted (already cached): its
     * data is then still read and verified, or skipped unread under RP_BUNDLE_F_TRUSTED. */
    int (*blob_begin)(void *arg, const char *digest, uint64_t size, char *err, size_t errlen);
    int (*blob_data)(void *arg, const void *p, size_t n, char *err, size_t errlen);
    int (*blob_end)(void *arg, char *err, size_t errlen);
};

/* Reads and verifies a whole bundle stream (header, version, records against the
 * metadata, digests, trailer checksum, nothing after it). Returns 0, or -1 with a one-line
 * reason in err (a newer format version is named as such). The metadata stays available
 * through *meta when meta is not NULL (free with rp_bundle_meta_free). */
/* A second pass over a bundle that one without this flag verified completely: blobs a
 * sink does not want are skipped unread and the trailer is not checked (what is published
 * is still verified: the cache checks every digest). */
#define RP_BUNDLE_F_TRUSTED 1u
int rp_bundle_read(const struct rp_bundle_src *src, unsigned flags,
                   const struct rp_bundle_sink *sink, void *arg, struct rp_bundle_meta **meta,
                   char *err, size_t errlen);
void rp_bundle_meta_free(struct rp_bundle_meta *m);

struct rp_export_opts {
    const char *list;   /* image list, or NULL for every image of the pins file */
    const char *output; /* bundle path (or prefix of its parts) */
    uint64_t split;     /* 0: one file; else the largest part */
    const char *oci;    /* write an OCI image layout into this directory instead */
};
/* `regproxy export`: 0 when the bundle (or layout) was written, 1 otherwise. */
int rp_export_main(struct rp_conf *conf, const struct rp_export_opts *o);
/* Opens the configuration's cache for a command (`cmd` names it in messages) that must be
 * its only owner, saying on stderr when a running serve or mirror holds it. max_size: the
 * configured one to publish into (import), 0 to only read (export, verify): eviction runs
 * whenever the last reader releases a blob while the store is over max_size, which it may
 * rightly be (pins are kept past it), and would take the very images being read. */
struct rp_cache *rp_offline_open_cache(const struct rp_conf *conf, const char *cmd,
                                       uint64_t max_size);
/* `regproxy import`: verifies the whole bundle first (touching nothing), then publishes it.
 * 0 when imported, 1 otherwise. */
int rp_import_main(struct rp_conf *conf, const char *bundle);

/* ------------------------------------------------------------------------ verify.c */

/* `regproxy verify`: rp_cache_verify over the configuration's cache, a line per damaged or
 * unreadable entry, one per mirrored or imported image that lost something, and a summary
 * on stdout. 0 when everything matched its digest and every such image is whole, else 1
 * (also when the pins file could not be read, which leaves those images unchecked). */
int rp_verify_main(const struct rp_conf *conf);

#endif
