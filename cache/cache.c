/* SPDX-License-Identifier: Apache-2.0 */
/* cache/cache.c: the on-disk store behind cache.h: layout and atomic publishing, digest
 * verification of fills and manifests, tags and repository links, the in-memory index with
 * its LRU list, the index snapshot, and eviction to max_size or for room on a full disk. */

/*
 * Layout under dir (every name below comes from a validated digest or from a hash):
 *
 *   lock                                  flock()ed while open: one process per store
 *   blobs/{sha256,sha512}/<hh>/<hex>      blob bytes, exactly as upstream sent them
 *   manifests/{sha256,sha512}/<hh>/<hex>  manifest file (below)
 *   tags/<hh>/<sha256 hex of registry\0repo\0tag>     tag file (below)
 *   links/<hh>/<sha256 hex of registry\0repo\0digest> link file (below)
 *   tmp/                                  fills and other temp files; emptied at open
 *   index                                 snapshot of the index (below); disposable
 *
 * <hh> is the first two hex digits of the name, so no directory grows past ~1/256 of the
 * store. Subdirectories are created on first use.
 *
 * Publishing. Every published file is written under tmp/ (same file system), fsynced, renamed to
 * its name, and the parent directory is fsynced. rename is the only operation that makes a name
 * appear, and it happens only after the content was verified (blobs and manifests: digest,
 * and size when known) and is durable. So a kill -9 or power loss at any point leaves either
 * no file or a complete, verified one under each name; half-written files exist only under
 * tmp/, which open empties. A tag update is an atomic replace of its file.
 *
 * With a sync hook (cache.h), manifests, tags, links and directory entries are renamed or made
 * unsynced and made durable later by rp_cache_sync on the owner's thread; only blob bytes,
 * which reads do not verify, are still fsynced before their rename. Reads check the rest, so
 * a power loss costs at most the unsynced files, never correctness.
 *
 * Manifest file: one header line, then the payload:
 *   "RPMF 1 <raw|lz4> <length> <media type>\n" <payload>
 * length is the manifest's byte count. raw: the payload is the manifest. lz4: the payload is
 * one LZ4 block (HC level MANIFEST_LZ4_LEVEL) decoding to exactly length bytes; used when the
 * manifest is at least MANIFEST_LZ4_MIN bytes and the block is smaller. Reads check the header,
 * the length, the decode, and the digest (cheap at manifest sizes, and a manifest is what
 * clients verify first); any failure removes the file and answers E_CORRUPT.
 *
 * Tag file: "RPTAG 1 <fetched_s> <digest> <len(registry)> <len(repo)> <len(tag)>\n"
 * registry repo tag "\n" <sha256 hex of everything before> "\n"; a tag recorded with its
 * manifest's media type is "RPTAG 2 ... <len(tag)> <len(type)>\n" registry repo tag type
 * "\n" and the sum (version 1 stays what a tag without one is written as, and is read as
 * before). The stored key detects the (theoretical) hash collision; the checksum detects
 * damage (E_CORRUPT, file removed).
 * Link file: "RPLINK 1 <digest> <len(registry)> <len(repo)>\n" registry repo "\n"; serving
 * checks only its existence; rp_cache_links_each reads the content back (the proxy derives
 * the pins of `pin` patterns from it).
 *
 * Index. In memory: a chained hash table keyed by (kind, algorithm, raw digest) and an LRU
 * list of the evictable entries. Invariants: an entry is in the LRU list iff it is present and
 * not pinned; an entry that is not present exists only because it is pinned (a pin may come
 * before the content). Pins are never persisted: the owner pins again at every open.
 * stats.size/entries sum the present entries; size is bytes on disk (for manifests: header +
 * possibly compressed payload). Tags and links are not indexed: they are looked up by name
 * (the proxy treats a missing blob as a miss) and not counted in max_size. They go with their
 * content: once entries were forgotten (evicted, damaged, vanished), the writes of tag and
 * link files are counted, and after as many as the sweep before kept (KEY_SWEEP_MIN at
 * least) one pass removes every tag and link file whose digest has no index entry (neither
 * present, pinned nor in use). Without it every tag and repository ever pulled left a file
 * for good, whatever max_size said. Amortized, a pass costs a read of a file or two per
 * tag or link written; it runs on the caller's thread (the loop, for serve).
 *
 * Snapshot ("index"), little-endian:
 *   "RPCINDEX" u32 version=1 u32 0 u64 count u64 total_size
 *   count x { u8 flags (bit0 manifest, bit1 sha512, bit2 present, bit3 pinned), u64 size,
 *             raw digest (32 or 64 bytes) }
 *   sha256 of all preceding bytes
 * Records come in LRU order (least recent first), pinned ones last. Only present entries are
 * written, and without bit3: pins come from the owner's configuration, so a snapshot must not
 * keep pinning what the configuration no longer names. Loading accepts bit3 and records of
 * absent pinned entries (older snapshots) and ignores both. The snapshot is written at
 * close and removed right after open has read it, so one that exists always describes the
 * files as a clean close left them: after a crash there is none and open rebuilds the index
 * from the directories (size from stat, LRU order from mtime). A snapshot that fails any check
 * (short, garbage, checksum, duplicate, totals) is ignored the same way. Files an operator deletes
 * behind our back are dropped from the index when blob_open/manifest_get find them gone, and
 * so are blobs whose size is no longer the indexed one (removed as damaged); files
 * added behind our back while a snapshot exists stay invisible and unaccounted until a rebuild
 * (delete `index` to force one). A pin applies to the digest as a blob and as a manifest (same
 * bytes either way).
 *
 * Eviction runs after every publish and when the last user releases a blob: while size >
 * max_size, unlink the least recently used entry that is neither pinned nor in use, nor the blob
 * or manifest just published (evict_published). Use means blob_open or hold (until release) or
 * manifest_get/peek.
 *
 * Memory. Three bounded caches in front of the files make a warm "manifest by tag" request
 * cost no system call and no hashing of content:
 *   - tags: registry\0repo\0tag\0 -> digest, media type and fetched_s, filled by tag_set and
 *     by a tag file that passed its checksum; tag_set replaces the entry (it drops it if the
 *     write failed).
 *   - links: registry\0repo\0digest\0, filled by link and by a positive stat. Negative answers
 *     are not remembered: link would have to invalidate them (easy, it is the only writer),
 *     but any client can ask for any digest, and remembering those misses would push out the
 *     links that serve real traffic; a miss costs one stat, as before.
 *   - manifests: the exact verified bytes and media type, hung off the index entry (e->mem)
 *     and on a byte-bounded LRU list of their own. Filled by manifest_put (the bytes matched
 *     the digest) and by a disk read that passed every check, so a damaged file is still
 *     caught on its first read, and nothing unverified ever reaches memory. index_forget drops
 *     the memory copy with the entry, so eviction, damage and vanished files invalidate it.
 *     A hit still touches the index entry: the store's LRU order is the same as without it.
 * Tags and links are keyed by a seeded SipHash of the key text, which comes from requests.
 * Only upstream-confirmed or written keys get in, and the bounds cap the rest; least recently
 * used goes first. Memory answers are exactly what the disk said or was told last by this
 * process (the only writer, by the lock); an operator's edits behind our back are seen once
 * the entry is gone from memory.
 */
#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <lz4.h>
#include <lz4hc.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../util/util.h"

#define MANIFEST_MAGIC "RPMF"
#define MANIFEST_VERSION "1"
/* Generous for "RPMF 1 lz4 4194304 " plus the longest media type we accept. */
#define MANIFEST_HDR_MAX 320
#define MEDIA_TYPE_MAX 255
/* Below this, LZ4 saves a few dozen bytes at best: not worth a decode on every read. */
#define MANIFEST_LZ4_MIN 512
/* HC compresses once and decodes as fast as the fast mode; manifests are read far more
 * often than written. Level 9 is liblz4's HC default. */
#define MANIFEST_LZ4_LEVEL 9
#define MANIFEST_FILE_MAX                                                                          \
    ((size_t)MANIFEST_HDR_MAX + (size_t)LZ4_COMPRESSBOUND(RP_CACHE_MANIFEST_MAX))

#define TAG_MAGIC "RPTAG"
#define LINK_MAGIC "RPLINK"
/* Registry names, repositories (distribution caps them at 255) and tags (128) fit easily. */
#define KEY_PART_MAX 1024
/* Tag and link files written (once entries were forgotten) before the first sweep of those
 * whose content is gone; later sweeps wait for as many as the one before kept. */
#define KEY_SWEEP_MIN 1024
/* A sweep goes one <hh> shard of tags/, then of links/, per tag or link file written: each
 * step reads 1/512 of those files, so no write waits for a pass over all of them (a large
 * cache holds some 100,000, and the loop would stall for a second or more). */
#define KEY_SWEEP_SHARDS 512
#define TAG_HDR_MAX 256
#define TAG_FILE_MAX (TAG_HDR_MAX + 3 * KEY_PART_MAX + MEDIA_TYPE_MAX + 1 + 65)
/* A memory key: three parts of at most KEY_PART_MAX, each followed by a NUL. */
#define MEMO_KEY_MAX (3 * (KEY_PART_MAX + 1))

#define INDEX_NAME "index"
#define INDEX_MAGIC "RPCINDEX"
#define INDEX_VERSION 1
#define INDEX_HDR_LEN 32
#define INDEX_SUM_LEN 32
#define INDEX_REC_FIXED 9 /* flags + size */
/* A snapshot of 10 M entries is ~0.5 GB; anything bigger is not ours. */
#define INDEX_FILE_MAX ((size_t)1 << 30)
#define IDX_F_MANIFEST 0x1u
#define IDX_F_SHA512 0x2u
#define IDX_F_PRESENT 0x4u
#define IDX_F_PINNED 0x8u

#define REL_MAX 200 /* longest relative path: "manifests/sha512/hh/" + 128 hex */

enum { ALGO_SHA256, ALGO_SHA512, ALGO_N };
static const struct {
    const char *name;
    size_t hexlen, rawlen;
} algos[ALGO_N] = {{"sha256", 64, 32}, {"sha512", 128, 64}};

static const EVP_MD *algo_md(int algo)
{
    return algo == ALGO_SHA512 ? EVP_sha512() : EVP_sha256();
}

/* A digest that passed parse_digest: the only kind that may name a file. */
struct digest {
    int algo;
    unsigned char raw[64];
    char str[RP_CACHE_DIGEST_BUF]; /* "sha256:<hex>" */
};

static const char *dhex(const struct digest *d)
{
    return d->str + strlen(algos[d->algo].name) + 1;
}

struct mem_manifest;

struct entry {
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* LRU list; both NULL when not in it */
    struct mem_manifest *mem;  /* verified copy in memory (manifests only), or NULL */
    uint64_t size;             /* bytes on disk; 0 when not present */
    uint32_t in_use;
    uint8_t kind, algo;
    bool present, pinned;
    unsigned char raw[64];
};

/* A verified manifest held in memory (see "Memory" at the top). */
struct mem_manifest {
    struct mem_manifest *prev, *next; /* memory LRU: c->mm_head is the least recently used */
    struct entry *owner;              /* NULL for the spare (too big to keep) */
    size_t len, cost;
    const char *media_type; /* inside data[], after the manifest's NUL */
    char data[];            /* len bytes, NUL, media type, NUL */
};

/* A remembered tag or link. */
struct memo_ent {
    struct memo_ent *hnext;       /* hash chain */
    struct memo_ent *prev, *next; /* use order: memo.head is the least recently used */
    uint64_t hash;
    int64_t when;  /* tags: fetched_s */
    uint32_t klen; /* key bytes (parts and their NULs) */
    uint32_t vlen; /* value bytes after the key (tags: digest, NUL, media type, NUL) */
    char kv[];
};

struct memo {
    struct memo_ent **b; /* allocated on first insert */
    size_t nb, n, max;   /* max 0: off */
    struct memo_ent *head, *tail;
};

struct rp_cache {
    char *dir; /* absolute, so fill paths stay valid whatever the cwd */
    int dirfd, tmpfd, lockfd;
    uint64_t max_size;
    struct entry **buckets;
    size_t nbuckets, nentries; /* nentries counts placeholders too */
    struct entry lru;          /* sentinel: lru.next is the least recently used */
    struct rp_cache_stats st;
    uint64_t tmp_seq;
    struct rp_cache_fill *fills; /* outstanding fills, detached at close */
    bool ready;                  /* open completed: close may write the snapshot */
    bool no_room;                /* writing the snapshot: make_room must not evict */
    uint64_t hkey[2];            /* SipHash key of the memo tables */
    struct memo tags, links;
    struct mem_manifest *mm_head, *mm_tail;
    size_t mm_bytes, mm_max;
    struct mem_manifest *mm_spare;   /* last peeked manifest too big for the memory bound */
    void (*sync_request)(void *arg); /* rp_cache_set_sync_hook */
    void *sync_arg;
    bool unsynced;            /* a write was left to rp_cache_sync: close syncs once more */
    uint64_t forgets;         /* present entries forgotten, ever (index_forget) */
    uint64_t forgets_swept;   /* forgets as of the last key sweep's start */
    uint64_t key_writes;      /* tag and link files written since the last key sweep */
    uint64_t key_sweep_after; /* key_writes that make the next sweep due */
    int key_sweep_pos;        /* the sweep's next shard (KEY_SWEEP_SHARDS), or -1: none */
    size_t key_swept_kept, key_swept_removed; /* by the sweep under way */
};

struct rp_cache_fill {
    struct rp_cache *c; /* NULL once the cache was closed under it */
    struct rp_cache_fill *prev, *next;
    struct digest d;
    int fd;
    int err; /* sticky: once a write failed, commit fails the same way */
    int64_t expected;
    uint64_t written;
    EVP_MD_CTX *md;
    bool verified; /* rp_cache_fill_verify ran: verify_rc holds its verdict */
    int verify_rc;
    char *wbuf; /* bytes written and hashed but not yet in the file (FILL_WBUF at most) */
    size_t wlen;
    bool synced; /* rp_cache_fill_sync ran: sync_errno holds its outcome */
    int sync_errno;
    char *path;
    char name[32]; /* under tmp/ */
};

const char *rp_cache_strerror(int err)
{
    switch (err) {
    case RP_CACHE_OK:
        return "ok";
    case RP_CACHE_E_NOENT:
        return "not cached";
    case RP_CACHE_E_IO:
        return "cache I/O error";
    case RP_CACHE_E_DIGEST:
        return "content does not match its digest";
    case RP_CACHE_E_SIZE:
        return "content does not match its size";
    case RP_CACHE_E_INVALID:
        return "invalid argument";
    case RP_CACHE_E_CORRUPT:
        return "stored file damaged";
    case RP_CACHE_E_NOSPACE:
        return "cache disk full";
    }
    return "unknown cache error";
}

/* ---------------------------------------------------------------- small helpers --- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1; /* upper case too: one spelling per content, one file name per digest */
}

/* "sha256:" + 64 lower hex or "sha512:" + 128 lower hex, nothing after. */
static int parse_digest(const char *s, struct digest *d)
{
    if (!s)
        return RP_CACHE_E_INVALID;
    for (int a = 0; a < ALGO_N; a++) {
        size_t nl = strlen(algos[a].name);
        if (strncmp(s, algos[a].name, nl) != 0 || s[nl] != ':')
            continue;
        const char *h = s + nl + 1;
        size_t hl = algos[a].hexlen;
        if (strnlen(h, hl + 1) != hl)
            return RP_CACHE_E_INVALID;
        for (size_t i = 0; i < hl; i += 2) {
            int hi = hexval(h[i]), lo = hexval(h[i + 1]);
            if (hi < 0 || lo < 0)
                return RP_CACHE_E_INVALID;
            d->raw[i / 2] = (unsigned char)(hi << 4 | lo);
        }
        d->algo = a;
        memcpy(d->str, s, nl + 1 + hl);
        d->str[nl + 1 + hl] = '\0';
        return RP_CACHE_OK;
    }
    return RP_CACHE_E_INVALID;
}

static void digest_from_raw(int algo, const unsigned char *raw, struct digest *d)
{
    size_t nl = strlen(algos[algo].name);
    d->algo = algo;
    memcpy(d->raw, raw, algos[algo].rawlen);
    memcpy(d->str, algos[algo].name, nl);
    d->str[nl] = ':';
    rp_hex_encode(raw, algos[algo].rawlen, d->str + nl + 1);
}

/* Names of tag and link files: sha256 over the parts, each followed by a NUL. The parts are
 * C strings, so the encoding is unambiguous, and none of their text reaches a path. */
static void key_hex(const char *a, const char *b, const char *c3, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, a, strlen(a) + 1) != 1 ||
        EVP_DigestUpdate(ctx, b, strlen(b) + 1) != 1 ||
        EVP_DigestUpdate(ctx, c3, strlen(c3) + 1) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1) {
        rp_error("cache: sha256 unavailable");
        abort(); /* as for allocation failure: nothing sensible to continue with */
    }
    EVP_MD_CTX_free(ctx);
    rp_hex_encode(md, 32, out);
}

static bool sha_ok(int algo, const void *p, size_t n, unsigned char *out)
{
    unsigned int len = 0;
    return EVP_Digest(p, n, out, &len, algo_md(algo), NULL) == 1;
}

static void entry_rel(char *buf, size_t n, int kind, int algo, const char *hex)
{
    snprintf(buf, n, "%s/%s/%.2s/%s", kind == RP_CACHE_MANIFEST ? "manifests" : "blobs",
             algos[algo].name, hex, hex);
}

static void key_rel(char *buf, size_t n, const char *top, const char *hex)
{
    snprintf(buf, n, "%s/%.2s/%s", top, hex, hex);
}

static bool key_part_ok(const char *s)
{
    return s && s[0] && strnlen(s, KEY_PART_MAX + 1) <= KEY_PART_MAX;
}

/* Media types go into a header line and back out to HTTP: printable ASCII only. */
static bool media_type_ok(const char *s)
{
    if (!s)
        return false;
    size_t n = strnlen(s, MEDIA_TYPE_MAX + 1);
    if (n > MEDIA_TYPE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

/* fsync, except in the fuzz build, where thousands of runs a second must not hit the disk. */
static int sync_fd(int fd)
{
#ifdef RP_FUZZ
    (void)fd;
    return 0;
#else
    return fsync(fd);
#endif
}

/* syncfs, likewise. */
static int sync_fs(int fd)
{
#ifdef RP_FUZZ
    (void)fd;
    return 0;
#else
    return syncfs(fd);
#endif
}

/* With a sync hook, the fsync the caller was about to make is left to rp_cache_sync: true.
 * Only for what reads check (see rp_cache_set_sync_hook), never for blob bytes. */
static bool sync_deferred(struct rp_cache *c)
{
    if (!c->sync_request)
        return false;
    c->unsynced = true;
    c->sync_request(c->sync_arg);
    return true;
}

static bool disk_full(int e)
{
    return e == ENOSPC || e == EDQUOT;
}

static size_t make_room(struct rp_cache *c, uint64_t need);
static void key_written(struct rp_cache *c);

/* Writes all of p to fd. With a cache, a full file system gets one round of make_room for
 * `need` bytes (at least n) before the write fails. */
static int write_all(struct rp_cache *c, int fd, const void *p, size_t n, uint64_t need)
{
    const char *s = p;
    bool made_room = false;
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (c && !made_room && disk_full(errno) && make_room(c, need > n ? need : n)) {
                made_room = true;
                continue;
            }
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ------------------------------------------------ paths below the cache directory ---
 * Whoever can write into the cache directory (a shared volume, a less privileged user) must
 * not be able to make the proxy read, write or remove anything outside it by planting a
 * symlink: a blob served from a symlinked <hh> directory goes out with sendfile, unverified.
 * So no path below dir is ever resolved through a symlink, at any component: every open goes
 * through open_beneath, and every other call (rename, unlink, mkdir, stat) acts on a name
 * inside a directory opened by it. What a planted symlink stands in front of is treated as
 * damaged: not served, removed (the symlink only, never what it points to), fetched again. */

/* Whether openat2(2) works: -1 not known yet, 1 yes, 0 no (ENOSYS before Linux 5.6; EPERM
 * from a seccomp filter that does not know it). The scrub worker asks too. */
static atomic_int have_openat2 = -1;

/* open_beneath's fallback: one component at a time, each directory opened with O_NOFOLLOW
 * from the one before it, so no symlink is followed and ".." is refused. */
static int open_walk(int dirfd, const char *rel, int flags, mode_t mode)
{
    int fd = dirfd;
    for (const char *p = rel;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        char comp[256];
        int next = -1;
        if (n == 0 || n >= sizeof(comp) || (n == 2 && p[0] == '.' && p[1] == '.')) {
            errno = EXDEV; /* what openat2 says of a path that leaves the directory */
        } else {
            memcpy(comp, p, n);
            comp[n] = '\0';
            next = slash ? openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                         : openat(fd, comp, flags, mode);
        }
        int e = errno;
        if (fd != dirfd)
            close(fd);
        errno = e;
        if (next < 0 || !slash)
            return next;
        fd = next;
        p = slash + 1;
    }
}

/* Opens rel (a path this file made: relative, no "..") below dirfd without following a
 * symlink at any component, the last included (O_NOFOLLOW and O_CLOEXEC are added). The fd,
 * or -1 with errno: ELOOP (or ENOTDIR from the fallback) when a symlink is in the way. One
 * system call when openat2 works, as many as rel has components when not. Thread-safe. */
static int open_beneath(int dirfd, const char *rel, int flags, mode_t mode)
{
    flags |= O_NOFOLLOW | O_CLOEXEC;
    int have = atomic_load_explicit(&have_openat2, memory_order_relaxed);
    if (have != 0) {
        struct open_how how = {
            .flags = (uint64_t)flags,
            .mode = (flags & O_CREAT) ? (uint64_t)mode : 0,
            .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        };
        long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
        if (fd >= 0) {
            if (have < 0)
                atomic_store_explicit(&have_openat2, 1, memory_order_relaxed);
            return (int)fd;
        }
        int e = errno;
        if (e != ENOSYS && e != EPERM)
            return -1;
        /* EPERM may also be the file's own answer: the fallback then gets it too. Only
         * when the fallback succeeds was it a filter refusing the call. */
        int fd2 = open_walk(dirfd, rel, flags, mode);
        if (e == ENOSYS || fd2 >= 0)
            atomic_store_explicit(&have_openat2, 0, memory_order_relaxed);
        return fd2;
    }
    return open_walk(dirfd, rel, flags, mode);
}

/* An errno that means something other than what the cache made sits in a path: a symlink
 * (ELOOP), a file where a directory belongs (ENOTDIR), a way out (EXDEV). */
static bool planted(int e)
{
    return e == ELOOP || e == ENOTDIR || e == EXDEV;
}

static void parent_of(const char *rel, char *out, size_t n)
{
    const char *slash = strrchr(rel, '/');
    if (!slash)
        snprintf(out, n, ".");
    else
        snprintf(out, n, "%.*s", (int)(slash - rel), rel);
}

/* Opens the directory holding rel (as open_beneath does) and points *base at rel's last
 * component: what rename, unlink, mkdir and stat then act on. The fd, or -1 (errno set). */
static int open_parent(struct rp_cache *c, const char *rel, const char **base)
{
    char parent[REL_MAX];
    parent_of(rel, parent, sizeof(parent));
    const char *slash = strrchr(rel, '/');
    *base = slash ? slash + 1 : rel;
    return open_beneath(c->dirfd, parent, O_RDONLY | O_DIRECTORY, 0);
}

/* stat of rel without following a symlink: one at its end is reported as such (S_ISLNK),
 * one on the way is ELOOP or ENOTDIR. 0 or -1 (errno set). */
static int stat_beneath(struct rp_cache *c, const char *rel, struct stat *st)
{
    int fd = open_beneath(c->dirfd, rel, O_PATH, 0);
    if (fd < 0)
        return -1;
    int rc = fstat(fd, st);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Removes the first symlink on rel's path (the symlink, never what it points to), so the
 * cache's own layout can be made again there. 0 when one was removed, else -1. */
static int unplant(struct rp_cache *c, const char *rel)
{
    char path[REL_MAX];
    for (const char *end = strchr(rel, '/');; end = strchr(end + 1, '/')) {
        snprintf(path, sizeof(path), "%.*s", end ? (int)(end - rel) : (int)strlen(rel), rel);
        const char *base;
        int pfd = open_parent(c, path, &base);
        if (pfd < 0)
            return -1;
        struct stat st;
        bool lnk = fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
        int rc = lnk ? unlinkat(pfd, base, 0) : -1;
        close(pfd);
        if (lnk) {
            if (rc == 0)
                rp_warn("cache: %s/%s is a symlink, planted in the cache directory: not "
                        "followed, removed",
                        c->dir, path);
            return rc;
        }
        if (!end)
            return -1;
    }
}

/* unlink of rel, through no symlink. A symlink in its path is removed instead: whatever rel
 * named is then gone from the cache's view, as an unlink would have made it. 0, or -1 with
 * errno (ENOENT: nothing there). */
static int unlink_beneath(struct rp_cache *c, const char *rel)
{
    const char *base;
    int pfd = open_parent(c, rel, &base);
    if (pfd < 0)
        return planted(errno) && unplant(c, rel) == 0 ? 0 : -1;
    int rc = unlinkat(pfd, base, 0);
    int e = errno;
    close(pfd);
    errno = e;
    return rc;
}

/* fsyncs an open directory, unless that is left to rp_cache_sync. */
static int fsync_dir_fd(struct rp_cache *c, int fd)
{
    return sync_deferred(c) ? 0 : sync_fd(fd);
}

static int fsync_dir(struct rp_cache *c, const char *rel)
{
    if (sync_deferred(c))
        return 0;
    int fd = open_beneath(c->dirfd, rel, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return -1;
    int rc = sync_fd(fd);
    close(fd);
    return rc;
}

/* Creates the missing directories leading to rel, fsyncing each new one's parent so the
 * directory entries are as durable as the files renamed into them. A symlink found where
 * one of them belongs is removed and the directory made. */
static int make_parents(struct rp_cache *c, const char *rel)
{
    char path[REL_MAX];
    for (const char *p = strchr(rel, '/'); p; p = strchr(p + 1, '/')) {
        snprintf(path, sizeof(path), "%.*s", (int)(p - rel), rel);
        const char *base;
        int pfd = open_parent(c, path, &base);
        if (pfd < 0)
            return -1;
        int rc = mkdirat(pfd, base, 0755);
        struct stat st;
        if (rc != 0 && errno == EEXIST && fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            errno = EEXIST;
            if (S_ISLNK(st.st_mode) && unplant(c, path) == 0)
                rc = mkdirat(pfd, base, 0755);
        }
        if (rc == 0)
            rc = fsync_dir_fd(c, pfd);
        else if (errno == EEXIST)
            rc = 0;
        int e = errno;
        close(pfd);
        errno = e;
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* Opens a new temp file under tmp/. Names need only be unique within this process's life:
 * the lock makes us the only writer and open empties tmp/. A full file system (no inode, or
 * no block for tmp/ to grow) gets one round of make_room. */
static int tmp_open(struct rp_cache *c, const char *prefix, char *name, size_t namelen)
{
    bool made_room = false;
    for (int tries = 0; tries < 64; tries++) {
        snprintf(name, namelen, "%s.%llx", prefix, (unsigned long long)++c->tmp_seq);
        int fd = openat(c->tmpfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0)
            return fd;
        if (!made_room && disk_full(errno) && make_room(c, 0)) {
            made_room = true;
            continue;
        }
        if (errno != EEXIST)
            return -1;
    }
    errno = EEXIST;
    return -1;
}

/* Renames tmp/<name> to rel: the directory it went into, open (for its fsync), or -1. */
static int rename_in(struct rp_cache *c, const char *name, const char *rel)
{
    const char *base;
    int pfd = open_parent(c, rel, &base);
    if (pfd < 0 && (errno == ENOENT || planted(errno)) && make_parents(c, rel) == 0)
        pfd = open_parent(c, rel, &base);
    if (pfd < 0)
        return -1;
    if (renameat(c->tmpfd, name, pfd, base) != 0) {
        int e = errno;
        close(pfd);
        errno = e;
        return -1;
    }
    return pfd;
}

/* Renames tmp/<name> (already written and fsynced by the caller) to rel and fsyncs rel's
 * directory. On failure the temp file is removed. A new name may need a directory block: a
 * full file system gets one round of make_room. */
static int publish(struct rp_cache *c, const char *name, const char *rel)
{
    int pfd = rename_in(c, name, rel);
    if (pfd < 0 && disk_full(errno) && make_room(c, 0))
        pfd = rename_in(c, name, rel);
    if (pfd < 0) {
        int e = errno;
        rp_warn("cache: publishing %s: %s", rel, strerror(e));
        unlinkat(c->tmpfd, name, 0);
        return disk_full(e) ? RP_CACHE_E_NOSPACE : RP_CACHE_E_IO;
    }
    /* The file is complete and verified whatever happens now; a failed directory fsync only
     * risks losing the name on power loss, so it is reported but does not undo the publish. */
    if (fsync_dir_fd(c, pfd) != 0) {
        char parent[REL_MAX];
        parent_of(rel, parent, sizeof(parent));
        rp_warn("cache: fsync of %s: %s", parent, strerror(errno));
    }
    close(pfd);
    return RP_CACHE_OK;
}

/* Writes the pieces to a temp file, fsyncs (or leaves that to rp_cache_sync), publishes as
 * rel. Only for files that reads check. */
static int atomic_write(struct rp_cache *c, const char *prefix, const char *rel, const void *a,
                        size_t alen, const void *b, size_t blen)
{
    char name[32];
    int fd = tmp_open(c, prefix, name, sizeof(name));
    if (fd < 0) {
        int e = errno;
        rp_warn("cache: creating a temp file for %s: %s", rel, strerror(e));
        return disk_full(e) ? RP_CACHE_E_NOSPACE : RP_CACHE_E_IO;
    }
    bool ok = write_all(c, fd, a, alen, alen + blen) == 0 && write_all(c, fd, b, blen, blen) == 0 &&
              (sync_deferred(c) || sync_fd(fd) == 0);
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        rp_warn("cache: writing %s: %s", rel, strerror(e));
        unlinkat(c->tmpfd, name, 0);
        return disk_full(e) ? RP_CACHE_E_NOSPACE : RP_CACHE_E_IO;
    }
    return publish(c, name, rel);
}

/* Reads a whole file of at most cap bytes. Returns OK, E_NOENT, E_IO, or E_CORRUPT when
 * it is larger than cap, not a regular file, shorter than fstat said, or behind a symlink. *out
 * gets a trailing NUL not counted in *outlen. */
static int read_file(struct rp_cache *c, const char *rel, size_t cap, char **out, size_t *outlen)
{
    int rc = RP_CACHE_E_IO;
    char *buf = NULL;
    int fd = open_beneath(c->dirfd, rel, O_RDONLY, 0);
    if (fd < 0) {
        /* A symlink in the way: whatever is behind it is not ours, and what the caller wanted
         * is as good as damaged (removed, which removes the symlink). */
        rc = RP_CACHE_E_IO;
        if (errno == ENOENT)
            rc = RP_CACHE_E_NOENT;
        else if (planted(errno)) {
            rp_warn("cache: %s: %s in its path; not followed", rel, strerror(errno));
            rc = RP_CACHE_E_CORRUPT;
        }
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) != 0)
        goto out;
    if (!S_ISREG(st.st_mode) || st.st_size < 0 || (uint64_t)st.st_size > cap) {
        rc = RP_CACHE_E_CORRUPT;
        goto out;
    }
    size_t n = (size_t)st.st_size, got = 0;
    buf = rp_xmalloc(n + 1);
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out;
        if (r == 0) {
            rc = RP_CACHE_E_CORRUPT;
            goto out;
        }
        got += (size_t)r;
    }
    buf[n] = '\0';
    *out = buf;
    *outlen = n;
    buf = NULL;
    rc = RP_CACHE_OK;
out:
    if (rc == RP_CACHE_E_IO)
        rp_warn("cache: reading %s: %s", rel, strerror(errno));
    free(buf);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Splits off the next space-terminated token of [*p, end). */
static bool next_token(const char **p, const char *end, const char **tok, size_t *len)
{
    const char *s = *p;
    const char *sp = memchr(s, ' ', (size_t)(end - s));
    if (!sp || sp == s)
        return false;
    *tok = s;
    *len = (size_t)(sp - s);
    *p = sp + 1;
    return true;
}

static bool token_is(const char *tok, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(tok, want, len) == 0;
}

/* ---------------------------------------------------------------- memory --- */

/* The memo tables' SipHash key is random per open: memo keys are request text, and the
 * tables must not be floodable by anyone who knows the hash function. */
static void hkey_init(struct rp_cache *c)
{
    rp_random_key(c->hkey);
}

/* Joins the parts, each followed by its NUL (as key_hex hashes them). The caller checked
 * each part's length, so buf (MEMO_KEY_MAX) always holds them. */
static size_t memo_key(char *buf, const char *a, const char *b, const char *c3)
{
    size_t n = 0;
    const char *parts[3] = {a, b, c3};
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(parts[i]) + 1;
        memcpy(buf + n, parts[i], l);
        n += l;
    }
    return n;
}

static void memo_unlink_use(struct memo *m, struct memo_ent *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        m->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        m->tail = e->prev;
    e->prev = e->next = NULL;
}

static void memo_append_use(struct memo *m, struct memo_ent *e)
{
    e->prev = m->tail;
    e->next = NULL;
    if (m->tail)
        m->tail->next = e;
    else
        m->head = e;
    m->tail = e;
}

/* Finds a key and marks it most recently used. */
static struct memo_ent *memo_find(struct rp_cache *c, struct memo *m, const char *key, size_t klen)
{
    if (!m->n)
        return NULL;
    uint64_t h = rp_siphash(c->hkey, key, klen);
    for (struct memo_ent *e = m->b[h & (m->nb - 1)]; e; e = e->hnext)
        if (e->hash == h && e->klen == klen && memcmp(e->kv, key, klen) == 0) {
            if (e != m->tail) {
                memo_unlink_use(m, e);
                memo_append_use(m, e);
            }
            return e;
        }
    return NULL;
}

static void memo_remove(struct memo *m, struct memo_ent *e)
{
    struct memo_ent **pp = &m->b[e->hash & (m->nb - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    memo_unlink_use(m, e);
    m->n--;
    free(e);
}

static void memo_del(struct rp_cache *c, struct memo *m, const char *key, size_t klen)
{
    struct memo_ent *e = memo_find(c, m, key, klen);
    if (e)
        memo_remove(m, e);
}

/* Inserts or replaces key -> (val, when) as the most recently used, pushing out the least
 * recently used beyond the bound. */
static void memo_put(struct rp_cache *c, struct memo *m, const char *key, size_t klen,
                     const char *val, size_t vlen, int64_t when)
{
    if (!m->max)
        return;
    if (!m->b) {
        m->nb = 16;
        while (m->nb < m->max && m->nb < ((size_t)1 << 24))
            m->nb *= 2;
        m->b = rp_xcalloc(m->nb, sizeof(*m->b));
    }
    memo_del(c, m, key, klen);
    while (m->n >= m->max && m->head)
        memo_remove(m, m->head);
    struct memo_ent *e = rp_xmalloc(sizeof(*e) + klen + vlen);
    e->hash = rp_siphash(c->hkey, key, klen);
    e->when = when;
    e->klen = (uint32_t)klen;
    e->vlen = (uint32_t)vlen;
    memcpy(e->kv, key, klen);
    if (vlen)
        memcpy(e->kv + klen, val, vlen);
    size_t i = e->hash & (m->nb - 1);
    e->hnext = m->b[i];
    m->b[i] = e;
    memo_append_use(m, e);
    m->n++;
}

static void memo_clear(struct memo *m)
{
    while (m->head) {
        struct memo_ent *e = m->head;
        m->head = e->next;
        free(e);
    }
    free(m->b);
    m->b = NULL;
    m->nb = m->n = 0;
    m->head = m->tail = NULL;
}

static void mm_unlink(struct rp_cache *c, struct mem_manifest *mm)
{
    if (mm->prev)
        mm->prev->next = mm->next;
    else
        c->mm_head = mm->next;
    if (mm->next)
        mm->next->prev = mm->prev;
    else
        c->mm_tail = mm->prev;
    mm->prev = mm->next = NULL;
}

static void mm_append(struct rp_cache *c, struct mem_manifest *mm)
{
    mm->prev = c->mm_tail;
    mm->next = NULL;
    if (c->mm_tail)
        c->mm_tail->next = mm;
    else
        c->mm_head = mm;
    c->mm_tail = mm;
}

/* Frees a manifest's memory copy (the file and the index entry are not affected). */
static void mm_drop(struct rp_cache *c, struct mem_manifest *mm)
{
    mm_unlink(c, mm);
    mm->owner->mem = NULL;
    c->mm_bytes -= mm->cost;
    free(mm);
}

static void mm_clear(struct rp_cache *c)
{
    while (c->mm_head)
        mm_drop(c, c->mm_head);
    free(c->mm_spare);
    c->mm_spare = NULL;
}

/* Keeps verified bytes of e's manifest in memory, replacing any older copy, and pushes out the
 * least recently used copies beyond the bound. What does not fit the bound at all becomes the
 * spare, which lives until the next one (peek's lifetime rule covers it). Returns the copy. */
static struct mem_manifest *mm_store(struct rp_cache *c, struct entry *e, const char *data,
                                     size_t len, const char *media_type)
{
    size_t mtlen = strlen(media_type);
    size_t cost = sizeof(struct mem_manifest) + len + 1 + mtlen + 1;
    struct mem_manifest *mm = rp_xmalloc(cost);
    memset(mm, 0, sizeof(*mm));
    mm->len = len;
    mm->cost = cost;
    if (len)
        memcpy(mm->data, data, len);
    mm->data[len] = '\0';
    memcpy(mm->data + len + 1, media_type, mtlen + 1);
    mm->media_type = mm->data + len + 1;
    if (e->mem)
        mm_drop(c, e->mem);
    if (cost > c->mm_max) {
        free(c->mm_spare);
        c->mm_spare = mm;
        return mm;
    }
    while (c->mm_bytes + cost > c->mm_max && c->mm_head)
        mm_drop(c, c->mm_head);
    mm->owner = e;
    e->mem = mm;
    c->mm_bytes += cost;
    mm_append(c, mm);
    return mm;
}

void rp_cache_set_memory(struct rp_cache *c, size_t manifest_bytes, size_t tags, size_t links)
{
    if (!c)
        return;
    mm_clear(c);
    memo_clear(&c->tags);
    memo_clear(&c->links);
    c->mm_max = manifest_bytes;
    c->tags.max = tags;
    c->links.max = links;
}

/* ---------------------------------------------------------------- index --- */

static uint64_t entry_hash(int kind, int algo, const unsigned char *raw)
{
    /* The raw bytes are a cryptographic hash of content we verified (or a pinned digest),
     * so their first bytes are already uniform: no further mixing needed. */
    uint64_t h;
    memcpy(&h, raw, sizeof(h));
    return h ^ ((uint64_t)(kind * ALGO_N + algo) * 0x9e3779b97f4a7c15ull);
}

static struct entry *index_find(struct rp_cache *c, int kind, int algo, const unsigned char *raw)
{
    struct entry *e = c->buckets[entry_hash(kind, algo, raw) & (c->nbuckets - 1)];
    for (; e; e = e->hnext)
        if (e->kind == kind && e->algo == algo && memcmp(e->raw, raw, algos[algo].rawlen) == 0)
            return e;
    return NULL;
}

static void index_grow(struct rp_cache *c)
{
    size_t nb = c->nbuckets * 2;
    struct entry **b = rp_xcalloc(nb, sizeof(*b));
    for (size_t i = 0; i < c->nbuckets; i++) {
        struct entry *e = c->buckets[i], *next;
        for (; e; e = next) {
            next = e->hnext;
            size_t h = entry_hash(e->kind, e->algo, e->raw) & (nb - 1);
            e->hnext = b[h];
            b[h] = e;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

/* Finds or creates the entry (created: not present, not pinned, in no list). */
static struct entry *index_get(struct rp_cache *c, int kind, int algo, const unsigned char *raw)
{
    struct entry *e = index_find(c, kind, algo, raw);
    if (e)
        return e;
    if (c->nentries >= c->nbuckets)
        index_grow(c);
    e = rp_xcalloc(1, sizeof(*e));
    e->kind = (uint8_t)kind;
    e->algo = (uint8_t)algo;
    memcpy(e->raw, raw, algos[algo].rawlen);
    size_t h = entry_hash(kind, algo, raw) & (c->nbuckets - 1);
    e->hnext = c->buckets[h];
    c->buckets[h] = e;
    c->nentries++;
    return e;
}

static void lru_unlink(struct entry *e)
{
    if (!e->prev)
        return;
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = NULL;
}

static void lru_append(struct rp_cache *c, struct entry *e)
{
    e->prev = c->lru.prev;
    e->next = &c->lru;
    c->lru.prev->next = e;
    c->lru.prev = e;
}

static void touch(struct rp_cache *c, struct entry *e)
{
    if (!e->present || e->pinned)
        return;
    lru_unlink(e);
    lru_append(c, e);
}

static void index_free_entry(struct rp_cache *c, struct entry *e)
{
    struct entry **pp = &c->buckets[entry_hash(e->kind, e->algo, e->raw) & (c->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    c->nentries--;
    free(e);
}

/* Records that the file of (kind, digest) exists with size bytes, as most recently used. */
static void index_publish(struct rp_cache *c, int kind, int algo, const unsigned char *raw,
                          uint64_t size)
{
    struct entry *e = index_get(c, kind, algo, raw);
    if (e->present) {
        c->st.size -= e->size;
    } else {
        e->present = true;
        c->st.entries++;
    }
    e->size = size;
    c->st.size += size;
    touch(c, e);
}

/* The file is gone (evicted, damaged, deleted behind our back): forget it. Pinned entries
 * stay as placeholders so the pin holds when the content comes back. */
static void index_forget(struct rp_cache *c, struct entry *e)
{
    if (e->mem)
        mm_drop(c, e->mem);
    lru_unlink(e);
    if (e->present) {
        c->st.size -= e->size;
        c->st.entries--;
        c->forgets++;
    }
    e->present = false;
    e->size = 0;
    /* A pin outlives its content; so does an in-use count (a reader of the vanished file
     * still holds its descriptor): freed here, a new fill's entry would start from 0, and
     * the old reader's release would take the new reader's mark. */
    if (!e->pinned && e->in_use == 0)
        index_free_entry(c, e);
}

/* Removes an entry's file and forgets it (why: "removing" a damaged or replaced one,
 * "evicting"). A file that will not go is still forgotten: served, a damaged one would fail
 * every client's check, and eviction would retry it forever. Not finding it is fine. */
static void remove_entry_file(struct rp_cache *c, struct entry *e, const char *why)
{
    struct digest d;
    char rel[REL_MAX];
    digest_from_raw(e->algo, e->raw, &d);
    entry_rel(rel, sizeof(rel), e->kind, e->algo, dhex(&d));
    if (unlink_beneath(c, rel) != 0 && errno != ENOENT)
        rp_warn("cache: %s %s: %s", why, rel, strerror(errno));
    index_forget(c, e);
}

static void index_clear(struct rp_cache *c)
{
    mm_clear(c); /* before the entries its copies point back to */
    for (size_t i = 0; i < c->nbuckets; i++) {
        struct entry *e = c->buckets[i], *next;
        for (; e; e = next) {
            next = e->hnext;
            free(e);
        }
        c->buckets[i] = NULL;
    }
    c->nentries = 0;
    c->lru.next = c->lru.prev = &c->lru;
    c->st.size = c->st.entries = 0;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static size_t index_put_record(unsigned char *p, const struct entry *e)
{
    unsigned flags = (e->kind == RP_CACHE_MANIFEST ? IDX_F_MANIFEST : 0) |
                     (e->algo == ALGO_SHA512 ? IDX_F_SHA512 : 0) | IDX_F_PRESENT;
    p[0] = (unsigned char)flags;
    put_u64(p + 1, e->size);
    memcpy(p + INDEX_REC_FIXED, e->raw, algos[e->algo].rawlen);
    return INDEX_REC_FIXED + algos[e->algo].rawlen;
}

static int index_save(struct rp_cache *c)
{
    size_t cap = INDEX_HDR_LEN + c->nentries * (INDEX_REC_FIXED + 64) + INDEX_SUM_LEN;
    unsigned char *buf = rp_xmalloc(cap);
    size_t off = INDEX_HDR_LEN;
    uint64_t count = 0;
    for (struct entry *e = c->lru.next; e != &c->lru; e = e->next, count++)
        off += index_put_record(buf + off, e);
    for (size_t i = 0; i < c->nbuckets; i++)
        for (struct entry *e = c->buckets[i]; e; e = e->hnext)
            if (e->pinned && e->present) {
                off += index_put_record(buf + off, e);
                count++;
            }
    memcpy(buf, INDEX_MAGIC, 8);
    put_u32(buf + 8, INDEX_VERSION);
    put_u32(buf + 12, 0);
    put_u64(buf + 16, count);
    put_u64(buf + 24, c->st.size);
    int rc = RP_CACHE_E_IO;
    /* It lists what is in the index now: making room for it would evict blobs it names.
     * On a full disk it is not written, and the next start rebuilds the index. */
    c->no_room = true;
    if (sha_ok(ALGO_SHA256, buf, off, buf + off))
        rc = atomic_write(c, "index", INDEX_NAME, buf, off + INDEX_SUM_LEN, NULL, 0);
    c->no_room = false;
    free(buf);
    return rc;
}

/* Loads a snapshot into an empty index. On any inconsistency returns -1 with the index
 * possibly half filled (the caller clears it). The structure is checked before the checksum
 * so the fuzzer reaches the parser; both must pass. */
static int index_parse(struct rp_cache *c, const unsigned char *p, size_t n)
{
    if (n < INDEX_HDR_LEN + INDEX_SUM_LEN || memcmp(p, INDEX_MAGIC, 8) != 0 ||
        get_u32(p + 8) != INDEX_VERSION || get_u32(p + 12) != 0)
        return -1;
    uint64_t count = get_u64(p + 16), total = get_u64(p + 24), sum = 0;
    size_t off = INDEX_HDR_LEN, end = n - INDEX_SUM_LEN;
    if (count > (end - off) / (INDEX_REC_FIXED + 32))
        return -1;
    for (uint64_t i = 0; i < count; i++) {
        if (end - off < INDEX_REC_FIXED)
            return -1;
        unsigned flags = p[off];
        uint64_t size = get_u64(p + off + 1);
        int kind = flags & IDX_F_MANIFEST ? RP_CACHE_MANIFEST : RP_CACHE_BLOB;
        int algo = flags & IDX_F_SHA512 ? ALGO_SHA512 : ALGO_SHA256;
        bool present = flags & IDX_F_PRESENT, pinned = flags & IDX_F_PINNED;
        size_t rawlen = algos[algo].rawlen;
        if (flags & ~0xfu || (!present && (!pinned || size)) ||
            end - off - INDEX_REC_FIXED < rawlen)
            return -1;
        const unsigned char *raw = p + off + INDEX_REC_FIXED;
        if (index_find(c, kind, algo, raw) || size > UINT64_MAX - sum)
            return -1;
        if (present) { /* the pin, if any, is not taken over (see Snapshot above) */
            struct entry *e = index_get(c, kind, algo, raw);
            e->present = true;
            e->size = size;
            sum += size;
            c->st.entries++;
            lru_append(c, e);
        }
        off += INDEX_REC_FIXED + rawlen;
    }
    c->st.size = sum;
    unsigned char md[EVP_MAX_MD_SIZE];
    if (off != end || sum != total || !sha_ok(ALGO_SHA256, p, end, md) ||
        memcmp(md, p + end, INDEX_SUM_LEN) != 0)
        return -1;
    return 0;
}

/* Returns 0 when a snapshot was loaded (and removed), -1 when the index must be rebuilt. */
static int index_load(struct rp_cache *c)
{
    char *buf = NULL;
    size_t n = 0;
    int rc = read_file(c, INDEX_NAME, INDEX_FILE_MAX, &buf, &n);
    if (rc == RP_CACHE_E_NOENT)
        return -1;
    if (rc == RP_CACHE_OK && index_parse(c, (const unsigned char *)buf, n) == 0) {
        free(buf);
        /* From here on the snapshot goes stale: remove it so a crash leads to a rebuild
         * rather than to a snapshot that misses new files or lists evicted ones. */
        if (unlinkat(c->dirfd, INDEX_NAME, 0) != 0 || fsync_dir(c, ".") != 0)
            rp_warn("cache: removing the loaded index snapshot: %s", strerror(errno));
        return 0;
    }
    free(buf);
    rp_warn("cache: index snapshot in %s is damaged; rebuilding from the files", c->dir);
    index_clear(c);
    if (unlinkat(c->dirfd, INDEX_NAME, 0) != 0 && errno != ENOENT)
        rp_warn("cache: removing the damaged index snapshot: %s", strerror(errno));
    return -1;
}

struct found {
    int64_t mtime_ns;
    uint64_t size;
    uint8_t kind, algo;
    unsigned char raw[64];
};

static int found_cmp(const void *a, const void *b)
{
    const struct found *x = a, *y = b;
    if (x->mtime_ns != y->mtime_ns)
        return x->mtime_ns < y->mtime_ns ? -1 : 1;
    return memcmp(x->raw, y->raw, sizeof(x->raw));
}

/* Parses a file name that must be the hex digest of algo and start with prefix (the <hh>
 * directory). Anything else under our directories is ignored, not deleted: it is not ours
 * to judge. */
static bool name_to_raw(const char *name, int algo, const char *prefix, unsigned char *raw)
{
    size_t hl = algos[algo].hexlen;
    if (strlen(name) != hl || memcmp(name, prefix, 2) != 0)
        return false;
    for (size_t i = 0; i < hl; i += 2) {
        int hi = hexval(name[i]), lo = hexval(name[i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        raw[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

/* Opens the top-level directory rel (blobs/sha256, links...): 0 with *out NULL when it does
 * not exist yet, -1 (errno set) when it cannot be read. */
static int open_top(struct rp_cache *c, const char *rel, DIR **out)
{
    *out = NULL;
    int fd = open_beneath(c->dirfd, rel, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    *out = fdopendir(fd);
    if (!*out) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return 0;
}

/* Opens the subdirectory hh of d (the directory top) when hh is a two hex digit <hh> name,
 * else NULL. One that is a symlink is reported and not followed: its entries stay unknown,
 * and the first publish under it replaces it with a directory. */
static DIR *open_hh(struct rp_cache *c, DIR *d, const char *top, const char *hh)
{
    if (strlen(hh) != 2 || hexval(hh[0]) < 0 || hexval(hh[1]) < 0)
        return NULL;
    int sfd = openat(dirfd(d), hh, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0 && planted(errno))
        rp_warn("cache: %s/%s/%s is not a directory (a symlink?); not followed, what it holds "
                "is not served",
                c->dir, top, hh);
    DIR *sd = sfd >= 0 ? fdopendir(sfd) : NULL;
    if (!sd && sfd >= 0)
        close(sfd);
    return sd;
}

static int scan_dir(struct rp_cache *c, int kind, int algo, struct found **v, size_t *n,
                    size_t *cap)
{
    char top[32];
    snprintf(top, sizeof(top), "%s/%s", kind == RP_CACHE_MANIFEST ? "manifests" : "blobs",
             algos[algo].name);
    DIR *d;
    if (open_top(c, top, &d) != 0)
        return -1;
    if (!d)
        return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *hh = de->d_name;
        DIR *sd = open_hh(c, d, top, hh);
        if (!sd)
            continue;
        struct dirent *fe;
        while ((fe = readdir(sd)) != NULL) {
            struct found f;
            struct stat st;
            if (fe->d_type != DT_REG && fe->d_type != DT_LNK && fe->d_type != DT_UNKNOWN)
                continue;
            if (!name_to_raw(fe->d_name, algo, hh, f.raw))
                continue;
            if (fstatat(dirfd(sd), fe->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
                continue;
            if (!S_ISREG(st.st_mode)) {
                if (S_ISLNK(st.st_mode))
                    rp_warn("cache: %s/%s/%s/%s is a symlink; not followed, not served", c->dir,
                            top, hh, fe->d_name);
                continue;
            }
            memset(f.raw + algos[algo].rawlen, 0, sizeof(f.raw) - algos[algo].rawlen);
            f.kind = (uint8_t)kind;
            f.algo = (uint8_t)algo;
            f.size = (uint64_t)st.st_size;
            f.mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
            if (*n == *cap) {
                *cap = *cap ? *cap * 2 : 1024;
                *v = rp_xrealloc(*v, *cap * sizeof(**v));
            }
            (*v)[(*n)++] = f;
        }
        closedir(sd);
    }
    closedir(d);
    return 0;
}

/* Rebuilds the index from the files: sizes from stat, LRU order from mtime (the publish
 * time: an approximation of use that errs towards keeping what arrived last). */
static int index_rebuild(struct rp_cache *c)
{
    struct found *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int kind = RP_CACHE_BLOB; kind <= RP_CACHE_MANIFEST && rc == 0; kind++)
        for (int algo = 0; algo < ALGO_N && rc == 0; algo++)
            rc = scan_dir(c, kind, algo, &v, &n, &cap);
    if (rc == 0) {
        if (n > 1)
            qsort(v, n, sizeof(*v), found_cmp);
        for (size_t i = 0; i < n; i++)
            index_publish(c, v[i].kind, v[i].algo, v[i].raw, v[i].size);
    }
    free(v);
    return rc;
}

/* ---------------------------------------------------------------- open / close --- */

static int mkdir_p(const char *dir)
{
    char *p = rp_xstrdup(dir);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -1;
            break;
        }
        *s = saved;
        if (!saved)
            break;
    }
    free(p);
    return rc;
}

static void clear_tmp(struct rp_cache *c)
{
    int fd = openat(c->tmpfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        rp_warn("cache: listing %s/tmp: %s", c->dir, strerror(errno));
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (unlinkat(c->tmpfd, de->d_name, 0) != 0 &&
            unlinkat(c->tmpfd, de->d_name, AT_REMOVEDIR) != 0)
            rp_warn("cache: removing %s/tmp/%s: %s", c->dir, de->d_name, strerror(errno));
    }
    closedir(d);
}

struct rp_cache *rp_cache_open(const char *dir, uint64_t max_size, char *err, size_t errlen)
{
    static const char *const subdirs[] = {
        "blobs",
        "blobs/sha256",
        "blobs/sha512",
        "manifests",
        "manifests/sha256",
        "manifests/sha512",
        "tags",
        "links",
        "tmp",
    };
    struct rp_cache *c = NULL;
    const char *what = NULL;
    const char *sub = ""; /* the path below dir that failed: the message names it */
    if (err && errlen)
        err[0] = '\0';
    if (!dir || !dir[0]) {
        if (err)
            snprintf(err, errlen, "cache: no directory given");
        return NULL;
    }
    c = rp_xcalloc(1, sizeof(*c));
    c->dirfd = c->tmpfd = c->lockfd = -1;
    c->max_size = max_size;
    c->nbuckets = 1024;
    c->buckets = rp_xcalloc(c->nbuckets, sizeof(*c->buckets));
    c->lru.next = c->lru.prev = &c->lru;
    hkey_init(c);
    rp_cache_set_memory(c, RP_CACHE_MEM_MANIFEST_BYTES, RP_CACHE_MEM_TAGS, RP_CACHE_MEM_LINKS);
    c->key_sweep_after = KEY_SWEEP_MIN;
    c->key_sweep_pos = -1;

    what = "creating";
    if (mkdir_p(dir) != 0)
        goto fail;
    what = "resolving";
    c->dir = realpath(dir, NULL);
    if (!c->dir)
        goto fail;
    what = "opening";
    c->dirfd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c->dirfd < 0)
        goto fail;
    /* No symlink is followed below dir: one planted there would have us create, write or
     * (emptying tmp/) delete files outside the store, as whatever user runs the proxy. */
    sub = "/lock"; /* e.g. root's, left by a command run as root: not dir's fault */
    c->lockfd = openat(c->dirfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (c->lockfd < 0)
        goto fail;
    sub = "";
    what = "locking (is another regproxy using it?)";
    if (flock(c->lockfd, LOCK_EX | LOCK_NB) != 0)
        goto fail;
    what = "creating";
    char subdir[32];
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        struct stat st;
        const char *base;
        snprintf(subdir, sizeof(subdir), "/%s", subdirs[i]);
        sub = subdir;
        int pfd = open_parent(c, subdirs[i], &base);
        if (pfd < 0)
            goto fail;
        int rc = mkdirat(pfd, base, 0755) != 0 && errno != EEXIST
                     ? -1
                     : fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW);
        int e = errno;
        close(pfd);
        errno = e;
        if (rc != 0)
            goto fail;
        if (!S_ISDIR(st.st_mode)) { /* a symlink: publishing and eviction would go through it */
            errno = ENOTDIR;
            goto fail;
        }
    }
    what = "opening";
    sub = "/tmp";
    c->tmpfd = openat(c->dirfd, "tmp", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (c->tmpfd < 0)
        goto fail;
    sub = "";
    clear_tmp(c);
    if (index_load(c) != 0) {
        what = "scanning";
        if (index_rebuild(c) != 0)
            goto fail;
    }
    /* No eviction here: after a crash the rebuilt index has no pins yet. The owner pins,
     * then evicts (rp_cache_evict). */
    c->ready = true;
    return c;
fail:
    if (err)
        snprintf(err, errlen, "cache: %s %s%s: %s", what, dir, sub, strerror(errno));
    rp_cache_close(c); /* not ready: no snapshot of a half-built index is written */
    return NULL;
}

static void fill_detach(struct rp_cache_fill *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (f->c) {
        unlinkat(f->c->tmpfd, f->name, 0);
        if (f->prev)
            f->prev->next = f->next;
        else
            f->c->fills = f->next;
        if (f->next)
            f->next->prev = f->prev;
    }
    f->c = NULL;
    f->prev = f->next = NULL;
}

void rp_cache_close(struct rp_cache *c)
{
    if (!c)
        return;
    while (c->fills) {
        c->fills->err = RP_CACHE_E_IO;
        fill_detach(c->fills);
    }
    /* What was left to rp_cache_sync is made durable before the snapshot describes it; the
     * snapshot itself is written the synchronous way. */
    c->sync_request = NULL;
    if (c->unsynced && sync_fs(c->dirfd) != 0)
        rp_warn("cache: syncfs: %s", strerror(errno));
    if (c->ready && index_save(c) != 0)
        rp_warn("cache: could not write the index snapshot; the next start rebuilds it");
    index_clear(c);
    memo_clear(&c->tags);
    memo_clear(&c->links);
    free(c->buckets);
    if (c->tmpfd >= 0)
        close(c->tmpfd);
    if (c->dirfd >= 0)
        close(c->dirfd);
    if (c->lockfd >= 0)
        close(c->lockfd); /* releases the flock */
    free(c->dir);
    free(c);
}

void rp_cache_set_sync_hook(struct rp_cache *c, void (*request)(void *arg), void *arg)
{
    c->sync_request = request;
    c->sync_arg = arg;
}

int rp_cache_sync(struct rp_cache *c)
{
    return sync_fs(c->dirfd);
}

void rp_cache_stats(const struct rp_cache *c, struct rp_cache_stats *out)
{
    if (c)
        *out = c->st;
    else
        memset(out, 0, sizeof(*out));
}

/* ---------------------------------------------------------------- eviction --- */

static void evict_entry(struct rp_cache *c, struct entry *e)
{
    c->st.evictions++;
    c->st.evicted_bytes += e->size;
    remove_entry_file(c, e, "evicting");
}

void rp_cache_set_max_size(struct rp_cache *c, uint64_t max_size)
{
    c->max_size = max_size;
}

/* Least recently used first, never what is in use nor `keep`: the entry a publish just
 * made. Over max_size only because of in-use entries, the walk would otherwise go on to
 * it and take it too, though it just crossed the network and the bytes the readers hold
 * are freed by no eviction; rp_cache_release evicts again once they let go. */
static size_t evict_sparing(struct rp_cache *c, const struct entry *keep)
{
    size_t n = 0;
    if (!c || !c->max_size)
        return 0;
    struct entry *e = c->lru.next;
    while (c->st.size > c->max_size && e != &c->lru) {
        struct entry *next = e->next;
        if (e->in_use == 0 && e != keep) {
            evict_entry(c, e);
            n++;
        }
        e = next;
    }
    return n;
}

size_t rp_cache_evict(struct rp_cache *c)
{
    return evict_sparing(c, NULL);
}

/* Bytes of pinned content present: room max_size cannot give to anything else. A walk of
 * the index, for the rare callers (a fill about to start). */
static uint64_t pinned_bytes(const struct rp_cache *c)
{
    uint64_t n = 0;
    for (size_t i = 0; i < c->nbuckets; i++)
        for (const struct entry *e = c->buckets[i]; e; e = e->hnext)
            if (e->pinned && e->present)
                n += e->size;
    return n;
}

bool rp_cache_can_hold(struct rp_cache *c, const char *digest, uint64_t size)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return false;
    if (!c->max_size)
        return true;
    const struct entry *e = index_find(c, RP_CACHE_BLOB, d.algo, d.raw);
    if (e && e->pinned)
        return true;
    /* Pinned bytes are part of the size held: with room beside everything held, no walk
     * (this runs for every range passed through). */
    if (size <= c->max_size && c->st.size <= c->max_size - size)
        return true;
    /* Beside the pins, what is left of max_size: a blob bigger than that would evict every
     * other unpinned entry and then itself. */
    uint64_t pinned = pinned_bytes(c);
    return pinned < c->max_size && size <= c->max_size - pinned;
}

uint64_t rp_cache_room_for(struct rp_cache *c, const char *digest)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return 0;
    if (!c->max_size)
        return UINT64_MAX;
    const struct entry *e = index_find(c, RP_CACHE_BLOB, d.algo, d.raw);
    if (e && e->pinned)
        return UINT64_MAX;
    /* rp_cache_can_hold's quick yes (room beside all held) implies this one: pinned bytes
     * are part of what is held. */
    uint64_t pinned = pinned_bytes(c);
    return pinned < c->max_size ? c->max_size - pinned : 0;
}

/* Eviction after publishing e: e goes only when it does not fit beside the pins (as
 * rp_cache_can_hold would have said); left over max_size beside them, it is because of
 * what is in use. */
static void evict_published(struct rp_cache *c, struct entry *e)
{
    evict_sparing(c, e);
    if (!c->max_size || c->st.size <= c->max_size || !e || e->pinned || e->in_use)
        return;
    uint64_t pinned = pinned_bytes(c);
    if (pinned >= c->max_size || e->size > c->max_size - pinned)
        evict_entry(c, e);
}

/* Directories, the index snapshot and file system overhead want some room besides the
 * bytes asked for. */
#define ROOM_SLACK ((uint64_t)1024 * 1024)

static uint64_t fs_available(struct rp_cache *c)
{
    struct statvfs sv;
    if (fstatvfs(c->dirfd, &sv) != 0)
        return 0;
    return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* The file system said ENOSPC or EDQUOT: evicts least recently used, unpinned, unused blobs,
 * at least one (the space may be short in a way statvfs does not show: inodes, quota),
 * then until what they add up to covers `need` and the slack beyond what is available
 * (callers give it one round, so it never runs away). When even evicting all of them
 * could not make `need` fit, evicts none: a blob bigger than the disk must not empty the
 * cache on its way to failing. Returns how many went: 0 means the caller fails. */
static size_t make_room(struct rp_cache *c, uint64_t need)
{
    if (c->no_room)
        return 0;
    size_t n = 0;
    uint64_t bytes = 0, avail = fs_available(c);
    struct entry *e;
    for (e = c->lru.next; e != &c->lru && avail + bytes < need; e = e->next)
        if (e->kind == RP_CACHE_BLOB && e->in_use == 0)
            bytes += e->size;
    if (avail + bytes < need) {
        c->st.disk_full++;
        rp_warn("cache: file system full: no room for %llu bytes (%llu available, %llu in "
                "blobs that could be evicted)",
                (unsigned long long)need, (unsigned long long)avail, (unsigned long long)bytes);
        return 0;
    }
    /* Counted by the sizes evicted, not by asking statvfs again: a blob still being sent
     * frees its blocks only when its last descriptor closes, and root's statvfs hides the
     * blocks reserved for root. Asking again evicted the whole cache in both cases. */
    uint64_t want = need + ROOM_SLACK > avail ? need + ROOM_SLACK - avail : 0;
    bytes = 0;
    e = c->lru.next;
    while (e != &c->lru && (n == 0 || bytes < want)) {
        struct entry *next = e->next;
        if (e->kind == RP_CACHE_BLOB && e->in_use == 0) {
            bytes += e->size;
            evict_entry(c, e);
            n++;
        }
        e = next;
    }
    if (n)
        rp_warn("cache: file system full: evicted %zu blobs (%llu bytes) to make room for %llu "
                "bytes; %llu bytes available now",
                n, (unsigned long long)bytes, (unsigned long long)need,
                (unsigned long long)fs_available(c));
    else {
        c->st.disk_full++;
        rp_warn("cache: file system full and nothing left to evict (%llu bytes wanted)",
                (unsigned long long)need);
    }
    return n;
}

void rp_cache_pin(struct rp_cache *c, const char *digest)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0) {
        rp_warn("cache: not pinning invalid digest");
        return;
    }
    /* A digest names the same bytes whether fetched as a blob or a manifest: pin both. */
    for (int kind = RP_CACHE_BLOB; kind <= RP_CACHE_MANIFEST; kind++) {
        struct entry *e = index_get(c, kind, d.algo, d.raw);
        e->pinned = true;
        lru_unlink(e);
    }
}

void rp_cache_unpin_all(struct rp_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nbuckets; i++) {
        struct entry *e = c->buckets[i], *next;
        for (; e; e = next) {
            next = e->hnext;
            if (!e->pinned)
                continue;
            e->pinned = false;
            if (e->present)
                lru_append(c, e);
            else if (e->in_use == 0)
                index_free_entry(c, e); /* a placeholder for content that never came */
            /* else a fill's reader holds it before the publish (rp_cache_hold): it stays,
             * unpinned, until rp_cache_release frees it or the publish makes it present. */
        }
    }
}

/* ---------------------------------------------------------------- blobs --- */

/* Opens a published blob's file (its path, REL_MAX bytes, into rel) and stats it: the fd,
 * or -1 with errno set. */
static int blob_file_open(struct rp_cache *c, const struct digest *d, char *rel, struct stat *st)
{
    entry_rel(rel, REL_MAX, RP_CACHE_BLOB, d->algo, dhex(d));
    int fd = open_beneath(c->dirfd, rel, O_RDONLY, 0);
    if (fd >= 0 && fstat(fd, st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        fd = -1;
    }
    return fd;
}

bool rp_cache_blob_present(struct rp_cache *c, const char *digest)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return false;
    const struct entry *e = index_find(c, RP_CACHE_BLOB, d.algo, d.raw);
    return e && e->present;
}

/* rp_cache_blob_open, or with use false rp_cache_blob_recheck: the same checks and
 * removals, but no use counted (the LRU order and the in-use mark untouched, no fd). */
static int blob_open(struct rp_cache *c, const char *digest, struct rp_cache_blob *out, bool use)
{
    struct digest d;
    out->fd = -1;
    out->size = 0;
    if (!c || parse_digest(digest, &d) != 0)
        return RP_CACHE_E_INVALID;
    struct entry *e = index_find(c, RP_CACHE_BLOB, d.algo, d.raw);
    if (!e || !e->present)
        return RP_CACHE_E_NOENT;
    char rel[REL_MAX];
    struct stat st;
    int fd = blob_file_open(c, &d, rel, &st);
    if (fd < 0) {
        int e2 = errno;
        if (e2 == ENOENT) {
            index_forget(c, e);
            return RP_CACHE_E_NOENT;
        }
        if (planted(e2)) {
            /* Served, whatever a planted symlink points to would go out unverified. */
            rp_warn("cache: %s: %s in its path; not followed, treated as damaged", rel,
                    strerror(e2));
            remove_entry_file(c, e, "removing");
            return RP_CACHE_E_CORRUPT;
        }
        rp_warn("cache: opening %s: %s", rel, strerror(e2));
        return RP_CACHE_E_IO;
    }
    if ((uint64_t)st.st_size != e->size) {
        /* The size was verified with the digest (or read from the file at a rebuild): a file
         * cut short or grown since cannot match its digest. Served, every client would fail
         * its check and retry into the same bytes; removed, the next request fetches it. */
        close(fd);
        rp_warn("cache: %s is damaged (%llu bytes, %llu expected); removed", rel,
                (unsigned long long)st.st_size, (unsigned long long)e->size);
        remove_entry_file(c, e, "removing");
        return RP_CACHE_E_CORRUPT;
    }
    if (!use) {
        close(fd);
        return RP_CACHE_OK;
    }
    touch(c, e);
    e->in_use++;
    out->fd = fd;
    out->size = (uint64_t)st.st_size;
    return RP_CACHE_OK;
}

int rp_cache_blob_open(struct rp_cache *c, const char *digest, struct rp_cache_blob *out)
{
    return blob_open(c, digest, out, true);
}

int rp_cache_blob_recheck(struct rp_cache *c, const char *digest)
{
    struct rp_cache_blob b;
    return blob_open(c, digest, &b, false);
}

void rp_cache_hold(struct rp_cache *c, const char *digest)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return;
    /* Not published yet, the entry is made now: the publish finds it in use, and a release
     * before any publish forgets it again. */
    index_get(c, RP_CACHE_BLOB, d.algo, d.raw)->in_use++;
}

void rp_cache_release(struct rp_cache *c, const char *digest)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return;
    struct entry *e = index_find(c, RP_CACHE_BLOB, d.algo, d.raw);
    if (!e || e->in_use == 0)
        return;
    if (--e->in_use > 0)
        return;
    if (!e->present && !e->pinned) {
        index_free_entry(c, e); /* forgotten while it was read (index_forget) */
        return;
    }
    /* Entries that stayed only because they were served may go now. */
    if (c->max_size && c->st.size > c->max_size)
        rp_cache_evict(c);
}

static void fill_free(struct rp_cache_fill *f)
{
    fill_detach(f);
    EVP_MD_CTX_free(f->md);
    free(f->wbuf);
    free(f->path);
    free(f);
}

#define FILL_WBUF (256 * 1024)

/* Allocates the blob's blocks before its first byte, so that a full disk is found (and
 * room made) before any reader has a response head, not midway through a download. File
 * systems without fallocate(2) are fine: their writes make room as they go. -1: no room
 * even after evicting all that could go. */
static int reserve(struct rp_cache *c, int fd, uint64_t n)
{
#ifdef RP_FUZZ
    (void)c;
    (void)fd;
    (void)n;
    return 0;
#else
    for (int rounds = 0;;) {
        if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)n) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (!disk_full(errno))
            return 0;
        /* One round, as for every write: if what it evicted did not free its blocks
         * (blobs still being sent hold them until their descriptors close), there is no
         * room now and a later fill tries again, rather than evicting the rest of the
         * cache in vain. */
        if (rounds++ == 1 || make_room(c, n) == 0)
            return -1;
    }
#endif
}

struct rp_cache_fill *rp_cache_fill_begin(struct rp_cache *c, const char *digest,
                                          int64_t expected_size, int *err)
{
    int rc = RP_CACHE_E_INVALID;
    struct rp_cache_fill *f = NULL;
    struct digest d;
    if (!c || expected_size < -1 || parse_digest(digest, &d) != 0)
        goto out;
    f = rp_xcalloc(1, sizeof(*f));
    f->fd = -1;
    f->d = d;
    f->expected = expected_size;
    rc = RP_CACHE_E_IO;
    f->md = EVP_MD_CTX_new();
    if (!f->md || EVP_DigestInit_ex(f->md, algo_md(d.algo), NULL) != 1)
        goto out;
    f->fd = tmp_open(c, "fill", f->name, sizeof(f->name));
    if (f->fd < 0) {
        int e = errno;
        rp_warn("cache: creating a temp file in %s/tmp: %s", c->dir, strerror(e));
        if (disk_full(e))
            rc = RP_CACHE_E_NOSPACE;
        goto out;
    }
    if (expected_size > 0 && reserve(c, f->fd, (uint64_t)expected_size) != 0) {
        rp_warn("cache: no room for %s (%lld bytes) in %s", digest, (long long)expected_size,
                c->dir);
        rc = RP_CACHE_E_NOSPACE;
        goto out;
    }
    f->path = rp_xasprintf("%s/tmp/%s", c->dir, f->name);
    f->c = c;
    f->next = c->fills;
    if (c->fills)
        c->fills->prev = f;
    c->fills = f;
    rc = RP_CACHE_OK;
out:
    if (rc != RP_CACHE_OK && f) {
        if (f->fd >= 0) {
            close(f->fd);
            f->fd = -1;
            unlinkat(c->tmpfd, f->name, 0);
        }
        fill_free(f);
        f = NULL;
    }
    if (err)
        *err = rc;
    return f;
}

/* Bytes of the fill not yet in the file, as far as known: what make_room is asked for. */
static uint64_t fill_left(const struct rp_cache_fill *f)
{
    uint64_t in_file = f->written - f->wlen;
    return f->expected >= 0 && (uint64_t)f->expected > in_file ? (uint64_t)f->expected - in_file
                                                               : f->wlen;
}

int rp_cache_fill_write(struct rp_cache_fill *f, const void *p, size_t n)
{
    if (!f)
        return RP_CACHE_E_INVALID;
    if (f->err)
        return f->err;
    if (!f->c)
        return f->err = RP_CACHE_E_IO;
    /* The verdict covers the bytes it saw: one more would be published unchecked. */
    if (f->verified)
        return f->err = RP_CACHE_E_INVALID;
    if (f->expected >= 0 && n > (uint64_t)f->expected - f->written)
        return f->err = RP_CACHE_E_SIZE;
    if (n == 0)
        return RP_CACHE_OK;
    if (EVP_DigestUpdate(f->md, p, n) != 1)
        return f->err = RP_CACHE_E_IO;
    /* Upstream data comes a TLS record (16 KiB) at a time: gathered, it costs one write
     * per FILL_WBUF instead of one per record. */
    if (f->wlen + n > FILL_WBUF && rp_cache_fill_flush(f) != RP_CACHE_OK)
        return f->err;
    if (n >= FILL_WBUF) {
        if (write_all(f->c, f->fd, p, n, fill_left(f)) != 0) {
            int e = errno;
            rp_warn("cache: writing %s: %s", f->path, strerror(e));
            return f->err = disk_full(e) ? RP_CACHE_E_NOSPACE : RP_CACHE_E_IO;
        }
    } else {
        if (!f->wbuf)
            f->wbuf = rp_xmalloc(FILL_WBUF);
        memcpy(f->wbuf + f->wlen, p, n);
        f->wlen += n;
    }
    f->written += n;
    return RP_CACHE_OK;
}

int rp_cache_fill_flush(struct rp_cache_fill *f)
{
    if (!f)
        return RP_CACHE_E_INVALID;
    if (f->err)
        return f->err;
    if (f->wlen && write_all(f->c, f->fd, f->wbuf, f->wlen, fill_left(f)) != 0) {
        int e = errno;
        rp_warn("cache: writing %s: %s", f->path, strerror(e));
        return f->err = disk_full(e) ? RP_CACHE_E_NOSPACE : RP_CACHE_E_IO;
    }
    f->wlen = 0;
    return RP_CACHE_OK;
}

uint64_t rp_cache_fill_flushed(const struct rp_cache_fill *f)
{
    return f ? f->written - f->wlen : 0;
}

uint64_t rp_cache_fill_written(const struct rp_cache_fill *f)
{
    return f ? f->written : 0;
}

const char *rp_cache_fill_path(const struct rp_cache_fill *f)
{
    return f ? f->path : NULL;
}

int rp_cache_fill_open_reader(const struct rp_cache_fill *f)
{
    if (!f || !f->c) {
        errno = ENOENT;
        return -1;
    }
    /* Through the descriptor of tmp/ taken at open, not the path: a tmp/ renamed away and
     * replaced by a symlink since must not hand readers a file from elsewhere. */
    return openat(f->c->tmpfd, f->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
}

int rp_cache_fill_verify(struct rp_cache_fill *f)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!f)
        return RP_CACHE_E_INVALID;
    if (f->verified)
        return f->verify_rc;
    if (f->c)
        rp_cache_fill_flush(f); /* a failure is sticky in f->err */
    int rc = f->err ? f->err : RP_CACHE_E_IO;
    if (f->err || !f->c)
        goto out;
    rc = RP_CACHE_E_SIZE;
    if (f->expected >= 0 && f->written != (uint64_t)f->expected)
        goto out;
    rc = RP_CACHE_E_IO;
    if (EVP_DigestFinal_ex(f->md, md, &mdlen) != 1)
        goto out;
    rc = RP_CACHE_E_DIGEST;
    if (mdlen != algos[f->d.algo].rawlen || memcmp(md, f->d.raw, mdlen) != 0)
        goto out;
    rc = RP_CACHE_OK;
out:
    /* The digest context is final now: the verdict is kept, not recomputed. */
    f->verified = true;
    f->verify_rc = rc;
    return rc;
}

int rp_cache_fill_sync(struct rp_cache_fill *f)
{
    f->synced = true;
    f->sync_errno = f->fd < 0 ? EBADF : sync_fd(f->fd) != 0 ? errno : 0;
    if (f->sync_errno)
        errno = f->sync_errno;
    return f->sync_errno ? -1 : 0;
}

int rp_cache_fill_commit(struct rp_cache_fill *f)
{
    int rc;
    if (!f)
        return RP_CACHE_E_INVALID;
    struct rp_cache *c = f->c;
    rc = rp_cache_fill_verify(f);
    if (rc == RP_CACHE_OK && f->err)
        rc = f->err; /* a call after the verdict failed: errors stick, commit included */
    if (rc != RP_CACHE_OK)
        goto out;
    /* Verified: make the bytes durable before the name can point at them. */
    rc = RP_CACHE_E_IO;
    if (!c)
        goto out;
    int fd = f->fd;
    f->fd = -1;
    if (f->synced && f->sync_errno) {
        close(fd);
        rp_warn("cache: writing %s: %s", f->path, strerror(f->sync_errno));
        if (disk_full(f->sync_errno))
            rc = RP_CACHE_E_NOSPACE;
        goto out;
    }
    if ((!f->synced && sync_fd(fd) != 0) || close(fd) != 0) {
        int e = errno;
        rp_warn("cache: writing %s: %s", f->path, strerror(e));
        if (disk_full(e))
            rc = RP_CACHE_E_NOSPACE;
        goto out;
    }
    char rel[REL_MAX];
    entry_rel(rel, sizeof(rel), RP_CACHE_BLOB, f->d.algo, dhex(&f->d));
    rc = publish(c, f->name, rel);
    if (rc == RP_CACHE_OK) {
        index_publish(c, RP_CACHE_BLOB, f->d.algo, f->d.raw, f->written);
        evict_published(c, index_find(c, RP_CACHE_BLOB, f->d.algo, f->d.raw));
    }
out:
    fill_free(f); /* removes the temp file unless it was renamed away */
    return rc;
}

void rp_cache_fill_abort(struct rp_cache_fill *f)
{
    if (f)
        fill_free(f);
}

/* ---------------------------------------------------------------- manifests --- */

/* Decodes a manifest file and checks it against d. OK or E_CORRUPT. */
static int manifest_decode(const char *buf, size_t n, const struct digest *d,
                           struct rp_cache_manifest *out)
{
    const char *nl = memchr(buf, '\n', n < MANIFEST_HDR_MAX ? n : MANIFEST_HDR_MAX);
    if (!nl)
        return RP_CACHE_E_CORRUPT;
    const char *p = buf, *tok;
    size_t toklen;
    uint64_t len;
    bool lz4;
    if (!next_token(&p, nl, &tok, &toklen) || !token_is(tok, toklen, MANIFEST_MAGIC) ||
        !next_token(&p, nl, &tok, &toklen) || !token_is(tok, toklen, MANIFEST_VERSION) ||
        !next_token(&p, nl, &tok, &toklen))
        return RP_CACHE_E_CORRUPT;
    if (token_is(tok, toklen, "lz4"))
        lz4 = true;
    else if (token_is(tok, toklen, "raw"))
        lz4 = false;
    else
        return RP_CACHE_E_CORRUPT;
    if (!next_token(&p, nl, &tok, &toklen) || rp_parse_u64(tok, toklen, &len) != 0 ||
        len > RP_CACHE_MANIFEST_MAX)
        return RP_CACHE_E_CORRUPT;
    size_t mtlen = (size_t)(nl - p);
    for (size_t i = 0; i < mtlen; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return RP_CACHE_E_CORRUPT;
    const char *payload = nl + 1;
    size_t plen = n - (size_t)(payload - buf);
    char *data = rp_xmalloc((size_t)len + 1);
    if (lz4) {
        if (plen == 0 || plen > (size_t)LZ4_COMPRESSBOUND(RP_CACHE_MANIFEST_MAX) ||
            LZ4_decompress_safe(payload, data, (int)plen, (int)len) != (int)len)
            goto corrupt;
    } else {
        if (plen != len)
            goto corrupt;
        memcpy(data, payload, plen);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    if (!sha_ok(d->algo, data, (size_t)len, md) || memcmp(md, d->raw, algos[d->algo].rawlen) != 0)
        goto corrupt;
    data[len] = '\0';
    out->data = data;
    out->len = (size_t)len;
    out->media_type = rp_xstrndup(p, mtlen);
    return RP_CACHE_OK;
corrupt:
    free(data);
    return RP_CACHE_E_CORRUPT;
}

static int manifest_read(struct rp_cache *c, struct entry *e, const struct digest *d,
                         struct rp_cache_manifest *out)
{
    char rel[REL_MAX];
    char *buf = NULL;
    size_t n = 0;
    entry_rel(rel, sizeof(rel), RP_CACHE_MANIFEST, d->algo, dhex(d));
    int rc = read_file(c, rel, MANIFEST_FILE_MAX, &buf, &n);
    if (rc == RP_CACHE_OK)
        rc = manifest_decode(buf, n, d, out);
    free(buf);
    if (rc == RP_CACHE_E_NOENT) {
        index_forget(c, e);
    } else if (rc == RP_CACHE_E_CORRUPT) {
        rp_warn("cache: %s is damaged; removed", rel);
        remove_entry_file(c, e, "removing");
    } else if (rc == RP_CACHE_OK) {
        touch(c, e);
    }
    return rc;
}

/* The verified manifest of digest, from memory or else from its file (which then goes to
 * memory). Either way it counts as use of the index entry. */
static int manifest_load(struct rp_cache *c, const char *digest, struct mem_manifest **out)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return RP_CACHE_E_INVALID;
    struct entry *e = index_find(c, RP_CACHE_MANIFEST, d.algo, d.raw);
    if (!e || !e->present)
        return RP_CACHE_E_NOENT;
    if (e->mem) {
        touch(c, e);
        if (e->mem != c->mm_tail) {
            mm_unlink(c, e->mem);
            mm_append(c, e->mem);
        }
        *out = e->mem;
        return RP_CACHE_OK;
    }
    struct rp_cache_manifest m;
    int rc = manifest_read(c, e, &d, &m);
    if (rc == RP_CACHE_OK) {
        *out = mm_store(c, e, m.data, m.len, m.media_type);
        rp_cache_manifest_free(&m);
    }
    return rc;
}

int rp_cache_manifest_get(struct rp_cache *c, const char *digest, struct rp_cache_manifest *out)
{
    memset(out, 0, sizeof(*out));
    struct mem_manifest *mm;
    int rc = manifest_load(c, digest, &mm);
    if (rc != RP_CACHE_OK)
        return rc;
    out->data = rp_xmalloc(mm->len + 1);
    memcpy(out->data, mm->data, mm->len + 1);
    out->len = mm->len;
    out->media_type = rp_xstrdup(mm->media_type);
    return RP_CACHE_OK;
}

int rp_cache_manifest_peek(struct rp_cache *c, const char *digest, const char **data, size_t *len,
                           const char **media_type)
{
    struct mem_manifest *mm;
    *data = *media_type = NULL;
    *len = 0;
    int rc = manifest_load(c, digest, &mm);
    if (rc != RP_CACHE_OK)
        return rc;
    *data = mm->data;
    *len = mm->len;
    *media_type = mm->media_type;
    return RP_CACHE_OK;
}

void rp_cache_manifest_free(struct rp_cache_manifest *m)
{
    if (!m)
        return;
    free(m->data);
    free(m->media_type);
    m->data = m->media_type = NULL;
    m->len = 0;
}

int rp_cache_manifest_put(struct rp_cache *c, const char *digest, const char *media_type,
                          const char *data, size_t len)
{
    struct digest d;
    unsigned char md[EVP_MAX_MD_SIZE];
    if (!c || !media_type || !media_type_ok(media_type) || parse_digest(digest, &d) != 0 ||
        len > RP_CACHE_MANIFEST_MAX || (!data && len))
        return RP_CACHE_E_INVALID;
    if (!data)
        data = "";
    char *lz = NULL;
    int rc = RP_CACHE_E_IO;
    if (!sha_ok(d.algo, data, len, md))
        goto out;
    rc = RP_CACHE_E_DIGEST;
    if (memcmp(md, d.raw, algos[d.algo].rawlen) != 0)
        goto out;

    /* Already there with the same media type: nothing to write (saves two fsyncs). */
    struct entry *e = index_find(c, RP_CACHE_MANIFEST, d.algo, d.raw);
    if (e && e->present) {
        bool same;
        if (e->mem) {
            same = strcmp(e->mem->media_type, media_type) == 0;
            touch(c, e); /* as the read below would */
        } else {
            struct rp_cache_manifest old = {0};
            /* A failed read forgets e (and may free it): only use it when this succeeded. */
            same = manifest_read(c, e, &d, &old) == RP_CACHE_OK &&
                   strcmp(old.media_type, media_type) == 0;
            rp_cache_manifest_free(&old);
        }
        if (same) {
            if (!e->mem) /* the bytes just matched the digest: as good as a verified read */
                mm_store(c, e, data, len, media_type);
            rc = RP_CACHE_OK;
            goto out;
        }
    }

    const char *payload = data;
    size_t plen = len;
    const char *enc = "raw";
    if (len >= MANIFEST_LZ4_MIN) {
        int bound = LZ4_compressBound((int)len);
        lz = rp_xmalloc((size_t)bound);
        int n = LZ4_compress_HC(data, lz, (int)len, bound, MANIFEST_LZ4_LEVEL);
        if (n > 0 && (size_t)n < len) {
            payload = lz;
            plen = (size_t)n;
            enc = "lz4";
        }
    }
    char hdr[MANIFEST_HDR_MAX];
    int hl = snprintf(hdr, sizeof(hdr), "%s %s %s %zu %s\n", MANIFEST_MAGIC, MANIFEST_VERSION, enc,
                      len, media_type);
    rc = RP_CACHE_E_INVALID;
    if (hl < 0 || (size_t)hl >= sizeof(hdr))
        goto out;
    char rel[REL_MAX];
    entry_rel(rel, sizeof(rel), RP_CACHE_MANIFEST, d.algo, dhex(&d));
    rc = atomic_write(c, "manifest", rel, hdr, (size_t)hl, payload, plen);
    if (rc == RP_CACHE_OK) {
        index_publish(c, RP_CACHE_MANIFEST, d.algo, d.raw, (uint64_t)hl + plen);
        /* Replaces a copy with another media type; eviction right after drops it again if
         * the new file itself does not fit beside the pins, but not because what is in use
         * keeps the store over max_size (as for a blob's publish). */
        struct entry *ne = index_find(c, RP_CACHE_MANIFEST, d.algo, d.raw);
        mm_store(c, ne, data, len, media_type);
        evict_published(c, ne);
    }
out:
    free(lz);
    return rc;
}

/* ---------------------------------------------------------------- links --- */

int rp_cache_link(struct rp_cache *c, const char *registry, const char *repo, const char *digest)
{
    struct digest d;
    if (!c || !key_part_ok(registry) || !key_part_ok(repo) || parse_digest(digest, &d) != 0)
        return RP_CACHE_E_INVALID;
    char key[MEMO_KEY_MAX];
    size_t klen = memo_key(key, registry, repo, d.str);
    if (memo_find(c, &c->links, key, klen))
        return RP_CACHE_OK;
    char hex[65], rel[REL_MAX];
    key_hex(registry, repo, d.str, hex);
    key_rel(rel, sizeof(rel), "links", hex);
    struct stat st;
    int rc = RP_CACHE_OK;
    bool wrote = false;
    if (stat_beneath(c, rel, &st) != 0 || !S_ISREG(st.st_mode)) {
        char hdr[TAG_HDR_MAX];
        snprintf(hdr, sizeof(hdr), "%s 1 %s %zu %zu\n", LINK_MAGIC, d.str, strlen(registry),
                 strlen(repo));
        char *body = rp_xasprintf("%s%s\n", registry, repo);
        rc = atomic_write(c, "link", rel, hdr, strlen(hdr), body, strlen(body));
        free(body);
        wrote = rc == RP_CACHE_OK;
    }
    if (rc == RP_CACHE_OK)
        memo_put(c, &c->links, key, klen, NULL, 0, 0);
    /* Last: a sweep may take this very file (a blob confirmed upstream but not cached), and
     * its memory entry with it. */
    if (wrote)
        key_written(c);
    return rc;
}

/* ---- scrub ---- */

int rp_cache_check_fd(int fd, const char *digest, uint64_t size, uint64_t bytes_per_s,
                      const atomic_bool *stop, char *why, size_t whylen)
{
    struct digest d;
    if (parse_digest(digest, &d) != 0)
        return RP_CACHE_E_INVALID;
    why[0] = '\0';
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = md && EVP_DigestInit_ex(md, algo_md(d.algo), NULL) == 1 ? RP_CACHE_OK : RP_CACHE_E_IO;
    enum { CHUNK = 1 << 20 };
    char *buf = rp_xmalloc(CHUNK);
    uint64_t total = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (rc == RP_CACHE_OK) {
        if (stop && atomic_load(stop)) {
            snprintf(why, whylen, "stopped");
            rc = RP_CACHE_E_IO;
            break;
        }
        ssize_t n = read(fd, buf, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, whylen, "reading: %s", strerror(errno));
            rc = RP_CACHE_E_IO;
        } else if (n == 0) {
            break;
        } else if (EVP_DigestUpdate(md, buf, (size_t)n) != 1) {
            rc = RP_CACHE_E_IO;
        } else {
            total += (uint64_t)n;
        }
        if (rc == RP_CACHE_OK && bytes_per_s) {
            /* Ahead of the rate: sleep off the difference, in slices short enough that a
             * stop is noticed. */
            double due = (double)total / (double)bytes_per_s;
            for (;;) {
                struct timespec now;
                clock_gettime(CLOCK_MONOTONIC, &now);
                double spent =
                    (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
                if (spent >= due || (stop && atomic_load(stop)))
                    break;
                double nap = due - spent < 0.1 ? due - spent : 0.1;
                struct timespec ts = {0, (long)(nap * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int outlen = 0;
    if (rc == RP_CACHE_OK && total != size) {
        snprintf(why, whylen, "%llu bytes, %llu expected", (unsigned long long)total,
                 (unsigned long long)size);
        rc = RP_CACHE_E_SIZE;
    } else if (rc == RP_CACHE_OK && EVP_DigestFinal_ex(md, out, &outlen) != 1) {
        rc = RP_CACHE_E_IO;
    } else if (rc == RP_CACHE_OK &&
               (outlen != algos[d.algo].rawlen || memcmp(out, d.raw, outlen) != 0)) {
        struct digest got;
        digest_from_raw(d.algo, out, &got);
        snprintf(why, whylen, "its %llu bytes hash to %s", (unsigned long long)total, got.str);
        rc = RP_CACHE_E_DIGEST;
    }
    if (rc == RP_CACHE_E_IO && !why[0])
        snprintf(why, whylen, "hashing failed");
    free(buf);
    EVP_MD_CTX_free(md);
    return rc;
}

/* Hashes the blob file of e; RP_CACHE_OK, E_DIGEST or E_SIZE with *why set, E_CORRUPT when
 * a symlink stands in its path, or E_IO with errno's text in *why. */
static int blob_check(struct rp_cache *c, const struct entry *e, const struct digest *d, char *why,
                      size_t whylen)
{
    char rel[REL_MAX];
    struct stat st;
    int fd = blob_file_open(c, d, rel, &st);
    if (fd < 0) {
        int e2 = errno;
        if (planted(e2)) {
            snprintf(why, whylen, "%s: %s in its path (not followed)", rel, strerror(e2));
            return RP_CACHE_E_CORRUPT;
        }
        snprintf(why, whylen, "%s: %s", rel, strerror(e2));
        return e2 == ENOENT ? RP_CACHE_E_NOENT : RP_CACHE_E_IO;
    }
    int rc = rp_cache_check_fd(fd, d->str, e->size, 0, NULL, why, whylen);
    /* A scrub of a cache larger than memory would otherwise push out what serving needs. */
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return rc;
}

size_t rp_cache_blobs_each(struct rp_cache *c, rp_cache_blob_fn fn, void *arg)
{
    size_t n = 0;
    for (size_t i = 0; c && i < c->nbuckets; i++)
        for (struct entry *e = c->buckets[i]; e; e = e->hnext)
            if (e->present && e->kind == RP_CACHE_BLOB) {
                struct digest d;
                digest_from_raw(e->algo, e->raw, &d);
                fn(arg, d.str, e->size);
                n++;
            }
    return n;
}

char *rp_cache_blob_path(const struct rp_cache *c, const char *digest)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return NULL;
    char rel[REL_MAX];
    entry_rel(rel, sizeof(rel), RP_CACHE_BLOB, d.algo, dhex(&d));
    return rp_xasprintf("%s/%s", c->dir, rel);
}

int rp_cache_blob_fd(const struct rp_cache *c, const char *digest)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0) {
        errno = EINVAL;
        return -1;
    }
    char rel[REL_MAX];
    entry_rel(rel, sizeof(rel), RP_CACHE_BLOB, d.algo, dhex(&d));
    return open_beneath(c->dirfd, rel, O_RDONLY, 0);
}

int rp_cache_blob_drop(struct rp_cache *c, const char *digest, uint64_t dev, uint64_t ino)
{
    struct digest d;
    if (!c || parse_digest(digest, &d) != 0)
        return RP_CACHE_E_INVALID;
    struct entry *e = index_find(c, RP_CACHE_BLOB, d.algo, d.raw);
    if (!e || !e->present)
        return RP_CACHE_E_NOENT;
    char rel[REL_MAX];
    entry_rel(rel, sizeof(rel), RP_CACHE_BLOB, d.algo, dhex(&d));
    struct stat st;
    if (stat_beneath(c, rel, &st) != 0 || (uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino)
        return RP_CACHE_E_NOENT;
    remove_entry_file(c, e, "removing");
    return RP_CACHE_OK;
}

int rp_cache_verify(struct rp_cache *c, rp_cache_verify_fn fn, void *arg,
                    struct rp_cache_verify_stats *out)
{
    struct rp_cache_verify_stats st = {0};
    if (out)
        *out = st;
    if (!c)
        return RP_CACHE_E_INVALID;
    /* The digests first: removing entries while walking the buckets would unlink them
     * under the walk. */
    size_t n = 0, cap = 0;
    struct digest *v = NULL;
    uint8_t *kinds = NULL;
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (struct entry *e = c->buckets[i]; e; e = e->hnext) {
            if (!e->present)
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 256;
                v = rp_xrealloc(v, cap * sizeof(*v));
                kinds = rp_xrealloc(kinds, cap);
            }
            digest_from_raw(e->algo, e->raw, &v[n]);
            kinds[n++] = e->kind;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct digest *d = &v[i];
        struct entry *e = index_find(c, kinds[i], d->algo, d->raw);
        if (!e || !e->present)
            continue;
        char why[REL_MAX + 128] = "";
        uint64_t size = e->size;
        int rc;
        if (kinds[i] == RP_CACHE_MANIFEST) {
            st.manifests++;
            struct rp_cache_manifest m;
            /* Decoding checks the digest, and removes a damaged file. */
            rc = manifest_read(c, e, d, &m);
            if (rc == RP_CACHE_OK)
                rp_cache_manifest_free(&m);
            else if (rc == RP_CACHE_E_CORRUPT)
                snprintf(why, sizeof(why), "manifest damaged (header, compression or digest)");
            else if (rc == RP_CACHE_E_IO)
                snprintf(why, sizeof(why), "manifest unreadable");
        } else {
            st.blobs++;
            st.blob_bytes += e->size;
            rc = blob_check(c, e, d, why, sizeof(why));
            if (rc == RP_CACHE_E_DIGEST || rc == RP_CACHE_E_SIZE || rc == RP_CACHE_E_CORRUPT) {
                remove_entry_file(c, e, "removing");
                rc = RP_CACHE_E_CORRUPT;
            } else if (rc == RP_CACHE_E_NOENT) {
                index_forget(c, e); /* deleted behind our back: nothing to serve, nor to report */
            }
        }
        if (rc == RP_CACHE_E_CORRUPT)
            st.damaged++;
        else if (rc == RP_CACHE_E_IO)
            st.unreadable++;
        if (fn && rc != RP_CACHE_E_NOENT)
            fn(arg, d->str, size, rc == RP_CACHE_E_CORRUPT || rc == RP_CACHE_E_IO ? why : NULL,
               rc == RP_CACHE_E_CORRUPT);
    }
    free(v);
    free(kinds);
    if (out)
        *out = st;
    return RP_CACHE_OK;
}

/* Splits a link file into its registry, repository (NUL-terminated, each of at most
 * KEY_PART_MAX bytes) and digest. RP_CACHE_OK or E_CORRUPT. */
static int link_decode(const char *buf, size_t n, char *registry, char *repo, struct digest *d)
{
    const char *nl = memchr(buf, '\n', n < TAG_HDR_MAX ? n : TAG_HDR_MAX);
    if (!nl)
        return RP_CACHE_E_CORRUPT;
    const char *p = buf, *tok;
    size_t toklen;
    uint64_t lens[2];
    char dstr[RP_CACHE_DIGEST_BUF];
    if (!next_token(&p, nl, &tok, &toklen) || !token_is(tok, toklen, LINK_MAGIC) ||
        !next_token(&p, nl, &tok, &toklen) || !token_is(tok, toklen, "1") ||
        !next_token(&p, nl, &tok, &toklen) || toklen >= sizeof(dstr))
        return RP_CACHE_E_CORRUPT;
    memcpy(dstr, tok, toklen);
    dstr[toklen] = '\0';
    if (parse_digest(dstr, d) != 0 || strcmp(d->str, dstr) != 0 ||
        !next_token(&p, nl, &tok, &toklen) || rp_parse_u64(tok, toklen, &lens[0]) != 0 ||
        rp_parse_u64(p, (size_t)(nl - p), &lens[1]) != 0)
        return RP_CACHE_E_CORRUPT;
    for (int i = 0; i < 2; i++)
        if (lens[i] == 0 || lens[i] > KEY_PART_MAX)
            return RP_CACHE_E_CORRUPT;
    const char *key = nl + 1;
    size_t klen = (size_t)(lens[0] + lens[1]);
    if ((size_t)(key - buf) + klen + 1 != n || key[klen] != '\n' || memchr(key, '\0', klen))
        return RP_CACHE_E_CORRUPT;
    memcpy(registry, key, (size_t)lens[0]);
    registry[lens[0]] = '\0';
    memcpy(repo, key + lens[0], (size_t)lens[1]);
    repo[lens[1]] = '\0';
    if (!key_part_ok(registry) || !key_part_ok(repo))
        return RP_CACHE_E_CORRUPT;
    return RP_CACHE_OK;
}

/* Whether name is 64 lowercase hex digits starting with the directory's hh. */
static bool key_name_ok(const char *name, const char *hh)
{
    if (strlen(name) != 64 || name[0] != hh[0] || name[1] != hh[1])
        return false;
    for (int i = 0; i < 64; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return false;
    return true;
}

size_t rp_cache_links_each(struct rp_cache *c, rp_cache_link_fn fn, void *arg)
{
    if (!c)
        return 0;
    DIR *d;
    if (open_top(c, "links", &d) != 0)
        rp_warn("cache: reading %s/links: %s", c->dir, strerror(errno));
    if (!d)
        return 0;
    size_t n = 0, bad = 0;
    char *registry = rp_xmalloc(KEY_PART_MAX + 1), *repo = rp_xmalloc(KEY_PART_MAX + 1);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *hh = de->d_name;
        DIR *sd = open_hh(c, d, "links", hh);
        if (!sd)
            continue;
        struct dirent *fe;
        while ((fe = readdir(sd)) != NULL) {
            if (!key_name_ok(fe->d_name, hh))
                continue;
            char rel[REL_MAX], *buf = NULL, hex[65], name[65];
            size_t len = 0;
            struct digest dg;
            memcpy(name, fe->d_name, sizeof(name)); /* 64 characters and the NUL */
            key_rel(rel, sizeof(rel), "links", name);
            if (read_file(c, rel, TAG_FILE_MAX, &buf, &len) != RP_CACHE_OK) {
                bad++;
                continue;
            }
            int rc = link_decode(buf, len, registry, repo, &dg);
            free(buf);
            if (rc == RP_CACHE_OK)
                key_hex(registry, repo, dg.str, hex);
            /* A file under another key's name would link what its name does not say. */
            if (rc != RP_CACHE_OK || strcmp(hex, name) != 0) {
                bad++;
                continue;
            }
            fn(arg, registry, repo, dg.str);
            n++;
        }
        closedir(sd);
    }
    closedir(d);
    free(registry);
    free(repo);
    if (bad)
        rp_warn("cache: %zu damaged or misplaced link files in %s/links skipped", bad, c->dir);
    return n;
}

/* The digest a tag file's first line names ("RPTAG <v> <fetched_s> <digest> ..."): 0, or -1
 * for a file that does not parse (left alone: a lookup removes a damaged one). */
static int tag_file_digest(const char *buf, size_t n, struct digest *d)
{
    const char *nl = memchr(buf, '\n', n < TAG_HDR_MAX ? n : TAG_HDR_MAX);
    const char *p = buf, *tok;
    size_t toklen;
    char dstr[RP_CACHE_DIGEST_BUF];
    if (!nl || !next_token(&p, nl, &tok, &toklen) || !token_is(tok, toklen, TAG_MAGIC) ||
        !next_token(&p, nl, &tok, &toklen) || !next_token(&p, nl, &tok, &toklen) ||
        !next_token(&p, nl, &tok, &toklen) || toklen >= sizeof(dstr))
        return -1;
    memcpy(dstr, tok, toklen);
    dstr[toklen] = '\0';
    return parse_digest(dstr, d);
}

/* Whether a fill of d is under way (begun, not yet committed or aborted): its blob has no
 * index entry yet, but a repository confirmed upstream to have it is linked to it already. */
static bool fill_under_way(const struct rp_cache *c, const struct digest *d)
{
    for (const struct rp_cache_fill *f = c->fills; f; f = f->next)
        if (f->d.algo == d->algo && memcmp(f->d.raw, d->raw, algos[d->algo].rawlen) == 0)
            return true;
    return false;
}

/* Removes the files of one <hh> shard of top ("tags" or "links") whose digest has no index
 * entry: its content was evicted or lost, and is neither pinned nor being read or filled. A
 * tag then answers nothing (its manifest would be fetched anyway) and a link vouches for
 * nothing cached (the next fetch for the repository writes it again, which its memory entry,
 * removed with it, would skip). A tag's memory entry may stay: it names a digest that is
 * looked up, as after any eviction, and the next fetch writes the tag again. */
static void key_sweep_shard(struct rp_cache *c, const char *top, unsigned shard)
{
    char rel[REL_MAX], hh[3];
    snprintf(hh, sizeof(hh), "%02x", shard);
    snprintf(rel, sizeof(rel), "%s/%s", top, hh);
    int fd = open_beneath(c->dirfd, rel, O_RDONLY | O_DIRECTORY, 0);
    DIR *sd = fd >= 0 ? fdopendir(fd) : NULL;
    if (!sd) {
        if (fd >= 0)
            close(fd);
        return;
    }
    bool links = strcmp(top, "links") == 0;
    char *registry = rp_xmalloc(KEY_PART_MAX + 1), *repo = rp_xmalloc(KEY_PART_MAX + 1);
    struct dirent *fe;
    while ((fe = readdir(sd)) != NULL) {
        if (!key_name_ok(fe->d_name, hh))
            continue;
        char *buf = NULL;
        size_t len = 0;
        struct digest dg;
        key_rel(rel, sizeof(rel), top, fe->d_name);
        if (read_file(c, rel, TAG_FILE_MAX, &buf, &len) != RP_CACHE_OK)
            continue;
        int rc = links ? link_decode(buf, len, registry, repo, &dg)
                       : (tag_file_digest(buf, len, &dg) == 0 ? RP_CACHE_OK : -1);
        free(buf);
        if (rc != RP_CACHE_OK || index_find(c, RP_CACHE_BLOB, dg.algo, dg.raw) ||
            index_find(c, RP_CACHE_MANIFEST, dg.algo, dg.raw) || fill_under_way(c, &dg)) {
            c->key_swept_kept++;
            continue;
        }
        if (unlinkat(dirfd(sd), fe->d_name, 0) != 0) {
            if (errno != ENOENT)
                c->key_swept_kept++;
            continue;
        }
        c->key_swept_removed++;
        if (links) {
            char key[MEMO_KEY_MAX];
            memo_del(c, &c->links, key, memo_key(key, registry, repo, dg.str));
        }
    }
    closedir(sd);
    free(registry);
    free(repo);
}

/* Counts a tag or link file written; once enough were since the last sweep, and entries
 * were forgotten meanwhile, starts a sweep, which then goes a shard per call. */
static void key_written(struct rp_cache *c)
{
    if (c->key_sweep_pos < 0) {
        if (++c->key_writes < c->key_sweep_after || c->forgets == c->forgets_swept)
            return;
        c->key_sweep_pos = 0;
        c->key_swept_kept = c->key_swept_removed = 0;
        c->forgets_swept = c->forgets;
    }
    unsigned pos = (unsigned)c->key_sweep_pos++;
    key_sweep_shard(c, pos < KEY_SWEEP_SHARDS / 2 ? "tags" : "links", pos % (KEY_SWEEP_SHARDS / 2));
    if (c->key_sweep_pos < KEY_SWEEP_SHARDS)
        return;
    size_t kept = c->key_swept_kept;
    c->key_sweep_pos = -1;
    c->key_writes = 0;
    c->key_sweep_after = kept > KEY_SWEEP_MIN ? kept : KEY_SWEEP_MIN;
    rp_info("cache: %zu tag and link files of content no longer cached removed, %zu kept",
            c->key_swept_removed, kept);
}

bool rp_cache_linked(struct rp_cache *c, const char *registry, const char *repo, const char *digest)
{
    struct digest d;
    if (!c || !key_part_ok(registry) || !key_part_ok(repo) || !digest ||
        strnlen(digest, RP_CACHE_DIGEST_BUF) >= RP_CACHE_DIGEST_BUF)
        return false;
    /* Only validated digests get into the table, so an exact match needs no parse. */
    char key[MEMO_KEY_MAX];
    size_t klen = memo_key(key, registry, repo, digest);
    if (memo_find(c, &c->links, key, klen))
        return true;
    if (parse_digest(digest, &d) != 0)
        return false;
    char hex[65], rel[REL_MAX];
    key_hex(registry, repo, d.str, hex);
    key_rel(rel, sizeof(rel), "links", hex);
    struct stat st;
    if (stat_beneath(c, rel, &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    memo_put(c, &c->links, key, klen, NULL, 0, 0);
    return true;
}

/* ---------------------------------------------------------------- tags --- */

/* A tag's memory value: digest, NUL, media type ("" when unknown), NUL. */
#define TAG_VALUE_MAX (RP_CACHE_DIGEST_BUF + MEDIA_TYPE_MAX + 1)
static size_t tag_value(char *buf, const char *digest, const char *media_type)
{
    size_t dn = strlen(digest) + 1, tn = strlen(media_type) + 1;
    memcpy(buf, digest, dn);
    memcpy(buf + dn, media_type, tn);
    return dn + tn;
}

int rp_cache_tag_set(struct rp_cache *c, const char *registry, const char *repo, const char *tag,
                     const char *digest, const char *media_type, int64_t now_s)
{
    struct digest d;
    if (!media_type)
        media_type = "";
    if (!c || !key_part_ok(registry) || !key_part_ok(repo) || !key_part_ok(tag) || now_s < 0 ||
        parse_digest(digest, &d) != 0 || !media_type_ok(media_type))
        return RP_CACHE_E_INVALID;
    char hex[65], rel[REL_MAX];
    key_hex(registry, repo, tag, hex);
    key_rel(rel, sizeof(rel), "tags", hex);
    char *body =
        media_type[0]
            ? rp_xasprintf("%s 2 %lld %s %zu %zu %zu %zu\n%s%s%s%s\n", TAG_MAGIC, (long long)now_s,
                           d.str, strlen(registry), strlen(repo), strlen(tag), strlen(media_type),
                           registry, repo, tag, media_type)
            : rp_xasprintf("%s 1 %lld %s %zu %zu %zu\n%s%s%s\n", TAG_MAGIC, (long long)now_s, d.str,
                           strlen(registry), strlen(repo), strlen(tag), registry, repo, tag);
    unsigned char md[EVP_MAX_MD_SIZE];
    char sum[66];
    int rc = RP_CACHE_E_IO;
    if (sha_ok(ALGO_SHA256, body, strlen(body), md)) {
        rp_hex_encode(md, 32, sum);
        sum[64] = '\n';
        rc = atomic_write(c, "tag", rel, body, strlen(body), sum, 65);
    }
    free(body);
    char key[MEMO_KEY_MAX];
    size_t klen = memo_key(key, registry, repo, tag);
    char val[TAG_VALUE_MAX];
    if (rc == RP_CACHE_OK)
        memo_put(c, &c->tags, key, klen, val, tag_value(val, d.str, media_type), now_s);
    else /* the file still says what it said; let the next get read it */
        memo_del(c, &c->tags, key, klen);
    if (rc == RP_CACHE_OK) /* last, as in rp_cache_link */
        key_written(c);
    return rc;
}

int rp_cache_tag_delete(struct rp_cache *c, const char *registry, const char *repo, const char *tag)
{
    if (!c || !key_part_ok(registry) || !key_part_ok(repo) || !key_part_ok(tag))
        return RP_CACHE_E_INVALID;
    char hex[65], rel[REL_MAX], key[MEMO_KEY_MAX];
    key_hex(registry, repo, tag, hex);
    key_rel(rel, sizeof(rel), "tags", hex);
    memo_del(c, &c->tags, key, memo_key(key, registry, repo, tag));
    if (unlink_beneath(c, rel) != 0 && errno != ENOENT)
        return RP_CACHE_E_IO;
    return RP_CACHE_OK;
}

/* Parses a tag file. OK (and the key matches), E_NOENT (another key: a hash collision),
 * E_CORRUPT. type (MEDIA_TYPE_MAX + 1 bytes) gets the media type, "" in a version 1 file. */
static int tag_decode(const char *buf, size_t n, const char *registry, const char *repo,
                      const char *tag, struct digest *d, int64_t *fetched_s, char *type)
{
    if (n < 65 || buf[n - 1] != '\n')
        return RP_CACHE_E_CORRUPT;
    size_t blen = n - 65;
    const char *nl = memchr(buf, '\n', blen < TAG_HDR_MAX ? blen : TAG_HDR_MAX);
    if (!nl)
        return RP_CACHE_E_CORRUPT;
    const char *p = buf, *tok;
    size_t toklen;
    uint64_t when, lens[4] = {0, 0, 0, 0};
    char dstr[RP_CACHE_DIGEST_BUF];
    if (!next_token(&p, nl, &tok, &toklen) || !token_is(tok, toklen, TAG_MAGIC) ||
        !next_token(&p, nl, &tok, &toklen) ||
        (!token_is(tok, toklen, "1") && !token_is(tok, toklen, "2")))
        return RP_CACHE_E_CORRUPT;
    int nlens = token_is(tok, toklen, "2") ? 4 : 3;
    if (!next_token(&p, nl, &tok, &toklen) || rp_parse_u64(tok, toklen, &when) != 0 ||
        when > INT64_MAX || !next_token(&p, nl, &tok, &toklen) || toklen >= sizeof(dstr))
        return RP_CACHE_E_CORRUPT;
    memcpy(dstr, tok, toklen);
    dstr[toklen] = '\0';
    if (parse_digest(dstr, d) != 0)
        return RP_CACHE_E_CORRUPT;
    for (int i = 0; i < nlens; i++) {
        if (i < nlens - 1) {
            if (!next_token(&p, nl, &tok, &toklen))
                return RP_CACHE_E_CORRUPT;
        } else { /* the last one runs to the end of the line */
            tok = p;
            toklen = (size_t)(nl - p);
        }
        if (rp_parse_u64(tok, toklen, &lens[i]) != 0 || lens[i] == 0 ||
            lens[i] > (i == 3 ? MEDIA_TYPE_MAX : KEY_PART_MAX))
            return RP_CACHE_E_CORRUPT;
    }
    const char *key = nl + 1;
    size_t klen = (size_t)(lens[0] + lens[1] + lens[2]);
    if ((size_t)(key - buf) + klen + (size_t)lens[3] + 1 != blen || key[klen + lens[3]] != '\n')
        return RP_CACHE_E_CORRUPT;
    unsigned char md[EVP_MAX_MD_SIZE];
    char sum[65];
    if (!sha_ok(ALGO_SHA256, buf, blen, md))
        return RP_CACHE_E_CORRUPT;
    rp_hex_encode(md, 32, sum);
    if (memcmp(sum, buf + blen, 64) != 0)
        return RP_CACHE_E_CORRUPT;
    const char *parts[3] = {registry, repo, tag};
    for (int i = 0; i < 3; i++) {
        if (strlen(parts[i]) != lens[i] || memcmp(key, parts[i], (size_t)lens[i]) != 0)
            return RP_CACHE_E_NOENT;
        key += lens[i];
    }
    memcpy(type, key, (size_t)lens[3]);
    type[lens[3]] = '\0';
    if (!media_type_ok(type))
        return RP_CACHE_E_CORRUPT;
    *fetched_s = (int64_t)when;
    return RP_CACHE_OK;
}

/* A tag's value (tag_value's layout: digest, NUL, media type, NUL) from memory or its
 * file: *val points into the memory cache (good until its next change), or, read from the
 * file, into scratch. A warm "manifest by tag" copies only what its caller wants of it. */
static int tag_lookup(struct rp_cache *c, const char *registry, const char *repo, const char *tag,
                      char scratch[TAG_VALUE_MAX], const char **val, int64_t *fetched_s)
{
    char key[MEMO_KEY_MAX];
    size_t klen = memo_key(key, registry, repo, tag);
    struct memo_ent *me = memo_find(c, &c->tags, key, klen);
    if (!me) {
        char hex[65], rel[REL_MAX];
        key_hex(registry, repo, tag, hex);
        key_rel(rel, sizeof(rel), "tags", hex);
        char *buf = NULL;
        size_t n = 0;
        struct digest d;
        int64_t when = 0;
        char type[MEDIA_TYPE_MAX + 1] = "";
        int rc = read_file(c, rel, TAG_FILE_MAX, &buf, &n);
        if (rc == RP_CACHE_OK)
            rc = tag_decode(buf, n, registry, repo, tag, &d, &when, type);
        free(buf);
        if (rc == RP_CACHE_E_CORRUPT) {
            rp_warn("cache: %s is damaged; removed", rel);
            if (unlink_beneath(c, rel) != 0 && errno != ENOENT)
                rp_warn("cache: removing %s: %s", rel, strerror(errno));
        }
        if (rc != RP_CACHE_OK)
            return rc;
        memo_put(c, &c->tags, key, klen, scratch, tag_value(scratch, d.str, type), when);
        *val = scratch;
        *fetched_s = when;
        return RP_CACHE_OK;
    }
    *val = me->kv + me->klen;
    *fetched_s = me->when;
    return RP_CACHE_OK;
}

int rp_cache_tag_get(struct rp_cache *c, const char *registry, const char *repo, const char *tag,
                     char *digest, size_t digest_len, int64_t *fetched_s)
{
    if (digest && digest_len)
        digest[0] = '\0';
    if (!c || !key_part_ok(registry) || !key_part_ok(repo) || !key_part_ok(tag) || !digest ||
        digest_len < RP_CACHE_DIGEST_BUF || !fetched_s)
        return RP_CACHE_E_INVALID;
    char scratch[TAG_VALUE_MAX];
    const char *val;
    int rc = tag_lookup(c, registry, repo, tag, scratch, &val, fetched_s);
    if (rc == RP_CACHE_OK)
        memcpy(digest, val, strlen(val) + 1); /* a parsed digest: fits RP_CACHE_DIGEST_BUF */
    return rc;
}

int rp_cache_tag_type(struct rp_cache *c, const char *registry, const char *repo, const char *tag,
                      char *buf, size_t len)
{
    if (buf && len)
        buf[0] = '\0';
    if (!c || !key_part_ok(registry) || !key_part_ok(repo) || !key_part_ok(tag) || !buf || !len)
        return RP_CACHE_E_INVALID;
    char scratch[TAG_VALUE_MAX];
    const char *val;
    int64_t when;
    int rc = tag_lookup(c, registry, repo, tag, scratch, &val, &when);
    if (rc != RP_CACHE_OK)
        return rc;
    const char *type = val + strlen(val) + 1;
    size_t tn = strlen(type);
    if (!tn)
        return RP_CACHE_E_NOENT;
    if (tn >= len)
        return RP_CACHE_E_INVALID;
    memcpy(buf, type, tn + 1);
    return RP_CACHE_OK;
}

/* What a fill does first: create a file in tmp/ and write to it. 0 or an errno. The name
 * is predictable: whatever holds it goes first, and a new file is made, never one opened. */
static int probe_once(struct rp_cache *c, const char *name)
{
    unlinkat(c->tmpfd, name, 0);
    int fd = openat(c->tmpfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int e = fd < 0 ? errno : write(fd, "x", 1) == 1 ? 0 : errno ? errno : EIO;
    if (fd >= 0) {
        close(fd);
        unlinkat(c->tmpfd, name, 0);
    }
    return e;
}

int rp_cache_probe_writable(struct rp_cache *c)
{
    char name[64];
    snprintf(name, sizeof(name), "probe.%ld", (long)getpid());
    /* A full file system with blobs left to evict is writable: the fill would make room, so
     * room is made here too (else a readiness probe would take the proxy out of service,
     * and no fill would ever come to evict anything). */
    int e = probe_once(c, name);
    if (e && disk_full(e) && make_room(c, 0))
        e = probe_once(c, name);
    return !e ? RP_CACHE_OK : disk_full(e) ? RP_CACHE_E_NOSPACE : RP_CACHE_E_IO;
}
