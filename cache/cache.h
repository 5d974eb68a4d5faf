/* SPDX-License-Identifier: Apache-2.0 */
/* cache: the on-disk store of verified blobs and manifests, tag freshness, repository
 * links (which repository of which registry references which digest), the LRU index and
 * eviction to max_size. Plain C with a synchronous API; proxy/ drives it from events and
 * moves the bytes. Nothing becomes visible to readers until its digest (and size, when
 * known) matched: fills go to a temp file on the same filesystem, then fsync, rename,
 * fsync of the directory (the last two later, on the owner's thread, with a sync hook: see
 * rp_cache_set_sync_hook). File names come only from validated digests and from hashes of
 * (registry, repository, tag) keys, never from request text. No path below the directory is
 * resolved through a symlink: one planted there makes what it stands for damaged (removed,
 * the symlink only, and fetched again), never read, written or removed outside. */
#ifndef RP_CACHE_H
#define RP_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rp_cache;
struct rp_cache_fill;

/* Largest manifest the store accepts (rp_cache_manifest_put answers E_INVALID above it): the
 * limit distribution and most registries apply, so a bigger one is not a real manifest. */
#define RP_CACHE_MANIFEST_MAX ((size_t)4 * 1024 * 1024)
/* Buffer size that holds any valid digest string with its NUL ("sha512:" + 128 hex). */
#define RP_CACHE_DIGEST_BUF 136

enum rp_cache_err {
    RP_CACHE_OK = 0,
    RP_CACHE_E_NOENT = -1,   /* not cached */
    RP_CACHE_E_IO = -2,      /* a system call failed (errno kept in the message) */
    RP_CACHE_E_DIGEST = -3,  /* content does not match its digest */
    RP_CACHE_E_SIZE = -4,    /* content does not match the expected size */
    RP_CACHE_E_INVALID = -5, /* bad argument (digest grammar, oversized manifest ...) */
    RP_CACHE_E_CORRUPT = -6, /* a stored file is damaged (it is removed) */
    RP_CACHE_E_NOSPACE = -7, /* the file system is full and nothing more can be evicted */
};
const char *rp_cache_strerror(int err);

enum rp_cache_kind { RP_CACHE_BLOB, RP_CACHE_MANIFEST };

struct rp_cache_stats {
    uint64_t size;    /* bytes of published entries */
    uint64_t entries; /* published blobs + manifests */
    uint64_t evictions;
    uint64_t evicted_bytes;
    uint64_t disk_full; /* writes given up for lack of room that no eviction could make */
};

/* Opens (creating as needed) the store under dir. Removes leftovers of unfinished fills.
 * Loads the index snapshot if present and consistent, else rebuilds it from the files.
 * It evicts nothing: after a crash the rebuilt index has no pins, so the owner pins again,
 * then calls rp_cache_evict.
 * max_size 0 = unbounded. On failure returns NULL with a message in err; that includes a dir
 * another open cache (any process) holds: one store, one owner. */
struct rp_cache *rp_cache_open(const char *dir, uint64_t max_size, char *err, size_t errlen);
/* Writes the index snapshot (best effort) and frees. Accepts NULL. Fills still open are
 * cut off (temp file removed): their writes and commit then fail with E_IO, and the caller
 * still frees them with rp_cache_fill_commit or rp_cache_fill_abort. */
void rp_cache_close(struct rp_cache *c);
void rp_cache_stats(const struct rp_cache *c, struct rp_cache_stats *out);
/* Whether a fill could start now (creates, writes and removes a file in tmp/): for
 * readiness probes. On a full file system it makes room as a fill would. RP_CACHE_OK,
 * E_NOSPACE or E_IO. */
int rp_cache_probe_writable(struct rp_cache *c);

/* --- reading published content --- */
struct rp_cache_blob {
    int fd; /* open for reading; the caller closes it */
    uint64_t size;
};
/* Opens a published blob. One whose file no longer has the indexed size (damaged, changed
 * behind the cache's back: it cannot match its digest) is removed: E_CORRUPT. Marks it in
 * use until rp_cache_release(digest) is called the same number of times (in-use entries are
 * never evicted; an open fd stays valid anyway, but the accounting must not count it as
 * freed while it is served). */
int rp_cache_blob_open(struct rp_cache *c, const char *digest, struct rp_cache_blob *out);
void rp_cache_release(struct rp_cache *c, const char *digest);
/* Marks the blob in use as rp_cache_blob_open does, published or not yet: a fill's readers
 * read the temp file that becomes the blob, and still send from it after the publish. Undone
 * by rp_cache_release. */
void rp_cache_hold(struct rp_cache *c, const char *digest);

/* Whether the blob is published, as far as the index knows (no system call, not counted as
 * use): for deciding whether to fetch it. A file deleted or damaged behind the cache's back
 * still counts until rp_cache_blob_open finds it so. */
bool rp_cache_blob_present(struct rp_cache *c, const char *digest);

struct rp_cache_manifest {
    char *data; /* exact bytes as published (owned; free()) */
    size_t len;
    char *media_type; /* owned; free() */
};
/* Reads a published manifest (small: at most the configured manifest limit). */
int rp_cache_manifest_get(struct rp_cache *c, const char *digest, struct rp_cache_manifest *out);
void rp_cache_manifest_free(struct rp_cache_manifest *m);
/* Zero-copy variant of rp_cache_manifest_get for the hot path: on OK, *data (NUL-terminated,
 * the terminator not counted in *len) and *media_type point into memory the cache owns. They
 * stay valid until the next call of rp_cache_manifest_get, rp_cache_manifest_peek,
 * rp_cache_manifest_put, rp_cache_fill_commit, rp_cache_release, rp_cache_evict,
 * rp_cache_set_memory or rp_cache_close on the same cache (the calls that can read, publish,
 * evict or forget manifests); the tag, link, pin, stats, blob_open and other fill calls leave
 * them alone. Counts as use like rp_cache_manifest_get; same errors. */
int rp_cache_manifest_peek(struct rp_cache *c, const char *digest, const char **data, size_t *len,
                           const char **media_type);
/* Publishes a manifest whose bytes are in memory: verified against digest, then stored
 * atomically with its media type. Idempotent. */
int rp_cache_manifest_put(struct rp_cache *c, const char *digest, const char *media_type,
                          const char *data, size_t len);

/* --- filling a blob from upstream --- */
/* Starts a fill for digest; expected_size -1 when unknown. The temp file lives under the
 * cache dir; readers may open it by rp_cache_fill_path while it grows. A known size is
 * allocated on disk now (fallocate), so a full disk shows here, before any reader has a
 * byte, and not midway. Full disk: see "--- size bound ---" below; E_NOSPACE when even that
 * cannot make room. */
struct rp_cache_fill *rp_cache_fill_begin(struct rp_cache *c, const char *digest,
                                          int64_t expected_size, int *err);
/* Appends bytes (hashed now, gathered into writes of a few hundred KiB). Returns 0 or an
 * error (E_IO, E_NOSPACE, E_SIZE when more than expected_size arrives). */
int rp_cache_fill_write(struct rp_cache_fill *f, const void *p, size_t n);
/* Writes out what rp_cache_fill_write gathered, so readers of the temp file see it. */
int rp_cache_fill_flush(struct rp_cache_fill *f);
uint64_t rp_cache_fill_written(const struct rp_cache_fill *f);
/* Bytes in the temp file (readers may read this far). */
uint64_t rp_cache_fill_flushed(const struct rp_cache_fill *f);
/* Path of the temp file, for messages. */
const char *rp_cache_fill_path(const struct rp_cache_fill *f);
/* A new descriptor of the temp file, for reading while it grows (each reader its own):
 * opened through the cache's own descriptor of tmp/, never by path, so nothing planted in
 * the cache directory since it was opened can stand in for it. -1 with errno set. */
int rp_cache_fill_open_reader(const struct rp_cache_fill *f);
/* Flushes, then checks size and digest of what was written (once: later calls return the
 * same verdict) without publishing anything: RP_CACHE_OK, E_SIZE, E_DIGEST or E_IO. Lets a
 * caller release verified bytes to readers before the slower durable publish. */
int rp_cache_fill_verify(struct rp_cache_fill *f);
/* fsyncs the temp file, the slow part of a commit, on its own: it touches nothing but the
 * fill's descriptor, so it may run on another thread while the caller leaves f alone (but
 * for rp_cache_fill_path). Returns 0 or -1 (errno set); commit then skips its own fsync
 * and fails if this did. */
int rp_cache_fill_sync(struct rp_cache_fill *f);
/* Verifies digest and size, fsyncs, renames into place, fsyncs the directory (with a sync
 * hook: left to rp_cache_sync), indexes.
 * On mismatch the temp file is removed and E_DIGEST / E_SIZE returned. Frees f always. */
int rp_cache_fill_commit(struct rp_cache_fill *f);
/* Removes the temp file and frees f. Accepts NULL. */
void rp_cache_fill_abort(struct rp_cache_fill *f);

/* --- repository links: content is served for (registry, repo) only when linked --- */
int rp_cache_link(struct rp_cache *c, const char *registry, const char *repo, const char *digest);
bool rp_cache_linked(struct rp_cache *c, const char *registry, const char *repo,
                     const char *digest);

/* --- tags --- */
/* Records tag -> digest, fetched at wall-clock time `now_s` (seconds), with the media type
 * of the tag's manifest (NULL or "": not known; printable ASCII of at most 255 bytes, else
 * E_INVALID): the type a revalidation must name when the manifest itself has left the
 * cache. Atomic replace (a type not given is not kept from the record replaced). */
int rp_cache_tag_set(struct rp_cache *c, const char *registry, const char *repo, const char *tag,
                     const char *digest, const char *media_type, int64_t now_s);
/* Forgets a tag (upstream said it is gone): a later lookup is E_NOENT, so nothing serves it
 * stale. OK also when there was none. Not made durable: after a crash it may be back, and
 * is checked with upstream again like any expired tag. */
int rp_cache_tag_delete(struct rp_cache *c, const char *registry, const char *repo,
                        const char *tag);
/* Looks a tag up: digest (buffer of at least 136 bytes) and when it was last confirmed. */
int rp_cache_tag_get(struct rp_cache *c, const char *registry, const char *repo, const char *tag,
                     char *digest, size_t digest_len, int64_t *fetched_s);
/* The media type recorded with a tag, into buf: E_NOENT when the tag is unknown or was
 * recorded without one, E_INVALID when it does not fit len (256 always does). */
int rp_cache_tag_type(struct rp_cache *c, const char *registry, const char *repo, const char *tag,
                      char *buf, size_t len);

/* --- memory in front of the files ---
 * Tags, links and verified manifests that were written or read once are answered from
 * memory afterwards, with no system call and no hashing of content. Each is bounded (least
 * recently used goes first) and kept coherent with this process's writes and evictions; the
 * lock makes this process the only writer. Files changed or deleted behind the cache's back
 * are noticed only once their memory entry is gone (pushed out, evicted, or a restart). */
#define RP_CACHE_MEM_MANIFEST_BYTES ((size_t)64 * 1024 * 1024)
#define RP_CACHE_MEM_TAGS ((size_t)65536)
#define RP_CACHE_MEM_LINKS ((size_t)65536)
/* Sets the bounds (bytes of manifests, number of tags, number of links; 0 turns one off) and
 * empties the three memories. rp_cache_open starts with the RP_CACHE_MEM_* defaults. */
void rp_cache_set_memory(struct rp_cache *c, size_t manifest_bytes, size_t tags, size_t links);

/* --- durability off the caller's thread ---
 * By default every publish fsyncs what it wrote and the directory it renamed it into before
 * it returns: an event loop calling it waits for the disk (milliseconds each, tens of them
 * while fills are being written back), with every client behind it. With a sync hook, only
 * what is trusted without a check when read is made durable before its rename: a blob's
 * bytes (rp_cache_fill_sync). Manifests, tags and links are renamed into place unsynced,
 * and no directory is fsynced after a rename or mkdir: each of those files is checked when
 * read (manifests by digest, tags by checksum, links by existence under a name only the
 * cache writes), so a power loss can lose one, or leave one torn, never make one serve
 * wrong content; a lost or torn one is a miss, fetched again. After each such write the
 * cache calls request(arg), on the caller's thread; the owner then runs rp_cache_sync on
 * a thread of its own (coalescing requests as it likes), which makes everything written
 * before it began durable. rp_cache_close syncs what may still be pending. NULL request:
 * back to the default. */
void rp_cache_set_sync_hook(struct rp_cache *c, void (*request)(void *arg), void *arg);
/* syncfs of the cache's file system. Touches only the cache's directory descriptor, fixed
 * from open to close, so it may run on another thread while the cache is in use. 0 or -1
 * (errno set). */
int rp_cache_sync(struct rp_cache *c);

/* --- size bound --- */
/* Pins a digest (mirrored or matched by a `pin` pattern): never evicted. Works before the
 * content arrives. Pins live in memory only, never in the index snapshot: the owner derives
 * them from its configuration and the pins file at every open (and again on reload), so an
 * image that no longer qualifies becomes evictable, after a clean restart as after a crash. */
void rp_cache_pin(struct rp_cache *c, const char *digest);
/* Drops every pin (before pinning anew from a changed configuration). Unpinned content
 * becomes most recently used; nothing is evicted here (rp_cache_evict does that). */
void rp_cache_unpin_all(struct rp_cache *c);
/* Calls fn for every repository link on disk (see rp_cache_link): registry, repo and digest
 * as they were linked, read back from the link files. Files that are damaged or not where
 * their key puts them are skipped. Returns the number of links passed to fn. Reads every
 * link file: meant for start and reload, not for requests. */
typedef void (*rp_cache_link_fn)(void *arg, const char *registry, const char *repo,
                                 const char *digest);
size_t rp_cache_links_each(struct rp_cache *c, rp_cache_link_fn fn, void *arg);
/* --- scrub --- */
struct rp_cache_verify_stats {
    uint64_t blobs, blob_bytes, manifests; /* checked */
    uint64_t damaged;                      /* removed: they did not match their digest */
    uint64_t unreadable;                   /* kept: reading them failed (EIO ...) */
};
/* Told about each entry once it is checked: its digest and size on disk; for a damaged or
 * unreadable one what was wrong (why NULL: it matched) and whether it was removed. The
 * entries to expect are those rp_cache_stats counts. */
typedef void (*rp_cache_verify_fn)(void *arg, const char *digest, uint64_t size, const char *why,
                                   bool removed);
/* Reads every published blob and manifest and checks it against its digest. Blobs are
 * verified when they are fetched and are then served without reading them again, so damage
 * on disk that keeps a blob's size (a flipped bit, a block of zeros from a crash or a bad
 * sector) would be served to every client, each failing its check and retrying into the
 * same bytes. Each damaged entry is removed, as a damaged blob found at open is, so the next
 * request fetches it again; pinned ones stay pinned, as placeholders. A file that cannot be
 * read is kept and reported. Reads every byte of the cache, synchronously (and asks the
 * kernel not to keep what it read): for `regproxy verify`, with no other owner of the cache.
 * Returns RP_CACHE_OK or E_INVALID. */
int rp_cache_verify(struct rp_cache *c, rp_cache_verify_fn fn, void *arg,
                    struct rp_cache_verify_stats *out);

/* --- online scrub (proxy/scrub.c): the loop lists, a worker thread checks, the loop drops --- */
/* Calls fn for every published blob: its digest and size. Returns how many. */
typedef void (*rp_cache_blob_fn)(void *arg, const char *digest, uint64_t size);
size_t rp_cache_blobs_each(struct rp_cache *c, rp_cache_blob_fn fn, void *arg);
/* The absolute path of a blob's file, published or not (NULL for an invalid digest); the
 * caller frees it. For messages: open it with rp_cache_blob_fd. */
char *rp_cache_blob_path(const struct rp_cache *c, const char *digest);
/* Opens a blob's file for reading, published or not, following no symlink anywhere below
 * the cache directory. The fd (the caller closes it), or -1 with errno: ENOENT when there is
 * none, ELOOP or ENOTDIR when something planted (a symlink) stands in its path, EINVAL for an
 * invalid digest. Touches only the cache's directory descriptor, fixed from open to close:
 * a worker thread may call it while the owner uses the cache. */
int rp_cache_blob_fd(const struct rp_cache *c, const char *digest);
/* The owner's second look at a blob a checker found something wrong with (the scrub's
 * worker found a symlink in its path): opens it as rp_cache_blob_open does, removing it
 * when something planted stands in its path or its size is wrong (E_CORRUPT), forgetting
 * it when its file is gone (E_NOENT), but counts no use: a check is not a read, and the
 * blob keeps its place in the eviction order (nor is it marked in use: nothing to
 * release). RP_CACHE_OK when its file is sound (fetched again since, say). */
int rp_cache_blob_recheck(struct rp_cache *c, const char *digest);
/* Reads fd to its end and checks what it holds against digest and size: RP_CACHE_OK,
 * E_DIGEST or E_SIZE (why says what it holds), E_IO (why says which call failed), or
 * E_INVALID for a bad digest. bytes_per_s > 0 paces the reads to that rate; *stop, when set
 * by another thread, ends the check early with E_IO. Touches no cache: any thread may call
 * it. */
int rp_cache_check_fd(int fd, const char *digest, uint64_t size, uint64_t bytes_per_s,
                      const atomic_bool *stop, char *why, size_t whylen);
/* Removes a published blob found damaged by such a check, if its file is still the one that
 * was checked (same device and inode: it may have been evicted and fetched again since; the
 * checker keeps its descriptor open until this returns, so that the inode is not reused).
 * Readers holding the file keep their descriptor. RP_CACHE_OK when removed, E_NOENT when
 * there was nothing (or something newer) to remove. */
int rp_cache_blob_drop(struct rp_cache *c, const char *digest, uint64_t dev, uint64_t ino);

/* Evicts least recently used, unpinned, unused entries until the store is at most
 * max_size. Returns how many were evicted. Called after each commit and manifest publish by
 * the cache itself (which spares what it just published, unless that does not fit beside the pins:
 * left over max_size by what is in use, the store shrinks as it is released); exposed for
 * tests.
 *
 * The file system may fill before max_size is reached (the default max_size is larger than
 * many nodes' disks, and other files share the disk). Whenever a write, an allocation or a
 * new name fails with ENOSPC or EDQUOT, the cache evicts least recently used, unpinned,
 * unused blobs (at least one, then until their sizes cover what was being written
 * beyond what was free) and tries again, once; only when none is left does the call fail, with
 * E_NOSPACE. Manifests are not evicted for room: they are small, and this keeps the promise above
 * that tag, link and fill calls leave peeked manifests alone. */
size_t rp_cache_evict(struct rp_cache *c);
/* A new max_size (0 = unbounded), as on a reload; the caller runs rp_cache_evict. */
void rp_cache_set_max_size(struct rp_cache *c, uint64_t max_size);
/* Whether the blob digest of size bytes may be kept at all: not when it exceeds what pinned
 * content leaves of max_size, as publishing it would evict every other unpinned entry and
 * then itself, unless it is pinned (pins are kept past max_size). */
bool rp_cache_can_hold(struct rp_cache *c, const char *digest, uint64_t size);
/* The largest size rp_cache_can_hold says yes to for digest (UINT64_MAX: any; 0 for an
 * invalid digest, or none). A walk of the index: for a caller asking again and again about a
 * blob whose size is not known yet, which asks this once and compares. */
uint64_t rp_cache_room_for(struct rp_cache *c, const char *digest);

#endif
