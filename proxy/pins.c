/* SPDX-License-Identifier: Apache-2.0 */
/* pins: where pins come from. The pins file (<cache dir>/pins) lists mirrored and imported
 * images, whose every digest the manifest walk pins; the `pin` patterns pin every digest
 * linked for a matching repository. The cache keeps no pins across an open, so these two are
 * the only source: applied at every start and on a reload that changes either. */
#include "offline.h"

#include "../util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PINS_FILE_MAX ((size_t)64 << 20)
/* An index of indexes is legal but rare; deeper nesting is not an image. */
#define WALK_DEPTH_MAX 4

static char *pins_path(const char *cache_dir)
{
    return rp_xasprintf("%s/%s", cache_dir, RP_PINS_FILE);
}

/* Reads the file (missing: empty). 0, or -1 with the reason in why (path not included). It
 * lives in the cache directory, where others may be able to write: a symlink in its place is
 * refused, else a rewrite would copy what it names into the pins file; a FIFO is not waited
 * on. A read error fails the whole read: a list cut short would silently unpin (and, for
 * verify, leave unchecked) every image after the cut. */
static int read_all(const char *path, char **out, size_t *len, char *why, size_t whylen)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(why, whylen, "%s",
                 errno == ELOOP ? "a symbolic link, which is refused" : strerror(errno));
        return -1;
    }
    int rc = rp_read_fd_whole(fd, PINS_FILE_MAX, out, len, why, whylen);
    close(fd);
    return rc;
}

/* The lines of a growing buffer, as a set: one scan of the buffer per line added was
 * quadratic (an import of 50,000 images spent 21 s here, found on review). */
struct line_set {
    struct {
        size_t off, len;
    } * v; /* len 0: empty (the empty line is never looked up) */
    size_t mask;
};

static size_t line_slot(const struct line_set *ls, const char *buf, const char *line, size_t n)
{
    size_t k = (size_t)rp_mem_hash(line, n) & ls->mask;
    while (ls->v[k].len && !(ls->v[k].len == n && memcmp(buf + ls->v[k].off, line, n) == 0))
        k = (k + 1) & ls->mask;
    return k;
}

/* The set of buf's lines, with room for `more` to be added. */
static void line_set_init(struct line_set *ls, const char *buf, size_t len, size_t more)
{
    size_t lines = more;
    for (size_t i = 0; i < len; i++)
        lines += buf[i] == '\n';
    size_t cap = 16;
    while (cap < 2 * lines + 2)
        cap *= 2;
    ls->v = rp_xcalloc(cap, sizeof(*ls->v));
    ls->mask = cap - 1;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - (buf + pos)) : len - pos;
        if (l) {
            size_t k = line_slot(ls, buf, buf + pos, l);
            ls->v[k].off = pos;
            ls->v[k].len = l;
        }
        pos += l + 1;
    }
}

char *rp_pins_line(const char *registry, const char *repo, const char *tag, const char *digest)
{
    return rp_xasprintf("%s/%s%s%s@%s", registry, repo, tag && tag[0] ? ":" : "", tag ? tag : "",
                        digest);
}

int rp_pins_add_lines(const char *cache_dir, char *const *lines, size_t n)
{
    char *path = pins_path(cache_dir);
    char *tmp = rp_xasprintf("%s.tmp", path);
    char *buf = NULL;
    size_t len = 0, added = 0;
    int rc = -1, fd = -1;
    struct rp_buf b;
    rp_buf_init(&b, PINS_FILE_MAX + 4096);
    char why[128];
    if (read_all(path, &buf, &len, why, sizeof(why)) != 0) {
        rp_error("pins: reading %s: %s", path, why);
        goto out;
    }
    if ((len && rp_buf_add(&b, buf, len) < 0) ||
        (len && buf[len - 1] != '\n' && rp_buf_add(&b, "\n", 1) < 0))
        goto too_big;
    struct line_set ls;
    line_set_init(&ls, b.data, b.len, n);
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(lines[i]);
        size_t k = l ? line_slot(&ls, b.data, lines[i], l) : 0;
        if (!l || ls.v[k].len)
            continue; /* there already */
        size_t off = b.len;
        if (rp_buf_addf(&b, "%s\n", lines[i]) < 0) {
            free(ls.v);
            goto too_big;
        }
        ls.v[k].off = off;
        ls.v[k].len = l;
        added++;
    }
    free(ls.v);
    if (added == 0) {
        rc = 0;
        goto out;
    }
    /* Rewritten whole and renamed: a crash leaves the old list or the new, never a torn
     * line (the lock on the cache makes us its only writer). A new file each time, never one
     * opened: a symlink planted as the temp name is removed, not written through. */
    if (unlink(tmp) != 0 && errno != ENOENT)
        goto fail;
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        goto fail;
    size_t off = 0;
    while (off < b.len) {
        ssize_t w = write(fd, b.data + off, b.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto fail;
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto fail;
    int dfd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    rc = 0;
    goto out;
too_big:
    errno = EFBIG;
fail:
    rp_error("pins: writing %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
out:
    rp_buf_free(&b);
    free(buf);
    free(tmp);
    free(path);
    return rc;
}

int rp_pins_add(const char *cache_dir, const char *registry, const char *repo, const char *tag,
                const char *digest)
{
    char *line = rp_pins_line(registry, repo, tag, digest);
    int rc = rp_pins_add_lines(cache_dir, &line, 1);
    free(line);
    return rc;
}

int rp_pins_load(const struct rp_conf *conf, struct rp_image_ref **out, size_t *n, char *err,
                 size_t errlen)
{
    *out = NULL;
    *n = 0;
    char *path = pins_path(conf->cache.dir);
    char *buf = NULL;
    size_t len = 0;
    char rwhy[128];
    if (read_all(path, &buf, &len, rwhy, sizeof(rwhy)) != 0) {
        snprintf(err, errlen, "%s: %s", path, rwhy);
        free(path);
        return -1;
    }
    struct rp_image_ref *v = NULL;
    size_t cnt = 0, alloc = 0;
    unsigned lineno = 0;
    for (size_t pos = 0; pos < len;) {
        lineno++;
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - s) : len - pos;
        pos += l + 1;
        /* The file is ours, but admins edit it (to unpin an image): an editor's CRLF or
         * indentation must not unpin the lines around their edit. */
        while (l > 0 && (s[0] == ' ' || s[0] == '\t')) {
            s++;
            l--;
        }
        while (l > 0 && (s[l - 1] == '\r' || s[l - 1] == ' ' || s[l - 1] == '\t'))
            l--;
        if (l == 0 || s[0] == '#')
            continue;
        if (cnt == alloc) {
            alloc = alloc ? alloc * 2 : 16;
            v = rp_xrealloc(v, alloc * sizeof(*v));
        }
        const char *why = NULL;
        if (rp_image_ref_parse(conf, s, l, &v[cnt], &why) != 0 || !v[cnt].digest[0]) {
            /* A registry removed from the configuration: its content is not served
             * anyway, so unpinned is right. */
            rp_warn("pins: %s:%u: skipped: %s", path, lineno, why ? why : "no digest");
            continue;
        }
        cnt++;
    }
    free(buf);
    free(path);
    *out = v;
    *n = cnt;
    return 0;
}

/* The digests one walk has pinned, each with the least depth it was reached at. Children
 * may repeat (an index listing one manifest many times, indexes sharing children): walking
 * every path instead of every digest took refs^depth steps, which a crafted bundle made
 * hang import and then every start. A digest is walked again only from a shallower depth,
 * as past WALK_DEPTH_MAX nothing is expanded: at most WALK_DEPTH_MAX + 2 times. */
struct seen_slot {
    char *digest;
    int depth;
};

struct seen {
    struct seen_slot *slots;
    size_t mask, n;
};

/* Records digest reached at depth; false when it was reached before at depth or less. */
static bool seen_visit(struct seen *s, const char *digest, int depth)
{
    if ((s->n + 1) * 2 > s->mask + 1) {
        size_t cap = s->slots ? (s->mask + 1) * 2 : 64;
        struct seen_slot *old = s->slots;
        size_t old_cap = old ? s->mask + 1 : 0;
        s->slots = rp_xcalloc(cap, sizeof(*s->slots));
        s->mask = cap - 1;
        for (size_t i = 0; i < old_cap; i++) {
            if (!old[i].digest)
                continue;
            size_t k = rp_str_hash(old[i].digest) & s->mask;
            while (s->slots[k].digest)
                k = (k + 1) & s->mask;
            s->slots[k] = old[i];
        }
        free(old);
    }
    size_t k = rp_str_hash(digest) & s->mask;
    for (; s->slots[k].digest; k = (k + 1) & s->mask)
        if (strcmp(s->slots[k].digest, digest) == 0) {
            if (s->slots[k].depth <= depth)
                return false;
            s->slots[k].depth = depth;
            return true;
        }
    s->slots[k].digest = rp_xstrdup(digest);
    s->slots[k].depth = depth;
    s->n++;
    return true;
}

static void seen_free(struct seen *s)
{
    for (size_t i = 0; s->slots && i <= s->mask; i++)
        free(s->slots[i].digest);
    free(s->slots);
}

struct walker {
    struct rp_cache *c;
    struct seen s;
    int (*visit)(void *arg, const char *digest);
    void *arg;
    int rc; /* the first visit's failure: the walk stops */
};

static void walk(struct walker *w, const char *digest, int depth)
{
    if (w->rc || !seen_visit(&w->s, digest, depth) || (w->rc = w->visit(w->arg, digest)) != 0)
        return;
    struct rp_cache_manifest m;
    if (depth > WALK_DEPTH_MAX || rp_cache_manifest_get(w->c, digest, &m) != RP_CACHE_OK)
        return;
    struct rp_manifest_refs refs;
    char err[256];
    if (rp_manifest_refs(m.data, m.len, &refs, err, sizeof(err)) == 0) {
        for (size_t i = 0; i < refs.n && !w->rc; i++) {
            if (refs.v[i].kind == RP_REF_CHILD)
                walk(w, refs.v[i].digest, depth + 1);
            else if (seen_visit(&w->s, refs.v[i].digest, 0)) /* a blob: nothing below it */
                w->rc = w->visit(w->arg, refs.v[i].digest);
        }
        rp_manifest_refs_free(&refs);
    }
    rp_cache_manifest_free(&m);
}

int rp_manifest_walk(struct rp_cache *c, const char *digest,
                     int (*visit)(void *arg, const char *digest), void *arg, size_t *n)
{
    struct walker w = {.c = c, .visit = visit, .arg = arg};
    walk(&w, digest, 0);
    if (n)
        *n = w.s.n;
    seen_free(&w.s);
    return w.rc;
}

static int pin_visit(void *arg, const char *digest)
{
    rp_cache_pin(arg, digest);
    return 0;
}

size_t rp_pin_walk(struct rp_cache *c, const char *digest)
{
    size_t n = 0;
    rp_manifest_walk(c, digest, pin_visit, c, &n);
    return n;
}

void rp_pins_stamp(const char *cache_dir, struct rp_pins_stamp *out)
{
    memset(out, 0, sizeof(*out));
    char *path = pins_path(cache_dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        out->dev = (uint64_t)st.st_dev;
        out->ino = (uint64_t)st.st_ino;
        out->size = (uint64_t)st.st_size;
        out->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    }
    free(path);
}

bool rp_pin_pattern_match(const struct rp_conf *conf, const char *registry, const char *repo)
{
    const struct rp_conf_cache *cc = &conf->cache;
    if (cc->n_pins == 0)
        return false;
    /* By the registry's section name or by its host[:port], as LIST lines and the pins file
     * take either: a pattern written with the host must not pin nothing when the section
     * is named otherwise. Docker Hub also by "docker.io", the name its clients use, and
     * with official images' short names ("docker.io/nginx" for library/nginx), as `repos`
     * takes them: routing added the "library/" the operator did not write. */
    const struct rp_conf_registry *reg = rp_conf_find_registry(conf, registry, strlen(registry));
    const char *hosts[3] = {registry, NULL, NULL};
    if (reg && strcmp(reg->hostport, registry) != 0)
        hosts[1] = reg->hostport;
    const char *repos[2] = {repo, NULL};
    if (reg && reg->dockerhub) {
        if (strcmp(registry, "docker.io") != 0 && strcmp(reg->hostport, "docker.io") != 0)
            hosts[2] = "docker.io";
        if (strncmp(repo, "library/", 8) == 0 && !strchr(repo + 8, '/'))
            repos[1] = repo + 8;
    }
    bool hit = false;
    for (size_t h = 0; h < 3 && !hit; h++)
        for (size_t r = 0; r < 2 && !hit && hosts[h]; r++) {
            if (!repos[r])
                continue;
            char *image = rp_xasprintf("%s/%s", hosts[h], repos[r]);
            for (size_t i = 0; i < cc->n_pins && !hit; i++)
                hit = fnmatch(cc->pins[i], image, 0) == 0;
            free(image);
        }
    return hit;
}

struct pattern_pins {
    struct rp_cache *c;
    const struct rp_conf *conf;
    size_t pinned;
};

static void pin_if_matched(void *arg, const char *registry, const char *repo, const char *digest)
{
    struct pattern_pins *pp = arg;
    if (rp_pin_pattern_match(pp->conf, registry, repo)) {
        rp_cache_pin(pp->c, digest);
        pp->pinned++;
    }
}

static void pin_images(struct rp_cache *c, const struct rp_image_ref *v, size_t n)
{
    size_t digests = 0;
    for (size_t i = 0; i < n; i++)
        digests += rp_pin_walk(c, v[i].digest);
    if (n)
        rp_info("pins: %zu mirrored or imported images pinned (%zu digests)", n, digests);
}

static void pin_by_patterns(struct rp_cache *c, const struct rp_conf *conf)
{
    if (conf->cache.n_pins) {
        struct pattern_pins pp = {.c = c, .conf = conf};
        size_t links = rp_cache_links_each(c, pin_if_matched, &pp);
        rp_info("pins: %zu cached digests pinned by the pin patterns (of %zu repository "
                "links)",
                pp.pinned, links);
    }
}

void rp_pins_apply(struct rp_cache *c, const struct rp_conf *conf)
{
    struct rp_image_ref *v = NULL;
    size_t n = 0;
    char err[512];
    if (rp_pins_load(conf, &v, &n, err, sizeof(err)) != 0) {
        rp_warn("pins: %s; mirrored images are not pinned", err);
    } else {
        pin_images(c, v, n);
        free(v);
    }
    pin_by_patterns(c, conf);
}

int rp_pins_reapply(struct rp_cache *c, const struct rp_conf *conf)
{
    struct rp_image_ref *v = NULL;
    size_t n = 0;
    char err[512];
    if (rp_pins_load(conf, &v, &n, err, sizeof(err)) != 0) {
        rp_warn("pins: %s; the pins in force are kept (a pin pattern added applies, the file "
                "is read again at the next reload)",
                err);
        pin_by_patterns(c, conf);
        return -1;
    }
    rp_cache_unpin_all(c);
    pin_images(c, v, n);
    free(v);
    pin_by_patterns(c, conf);
    return 0;
}
