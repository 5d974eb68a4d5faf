/* SPDX-License-Identifier: Apache-2.0 */
/* verify: `regproxy verify -c FILE`, a scrub of the cache. Content is verified once, as it
 * arrives, and then served as stored; this reads it all again so that damage on disk is
 * found by the admin rather than by every node's failing pull. */
#include "offline.h"

#include "../util/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct verify_run {
    struct rp_progress prog;
    char **damaged; /* removed digests, sorted after the pass for lookups */
    size_t n_damaged, alloc;
};

static void on_entry(void *arg, const char *digest, uint64_t size, const char *why, bool removed)
{
    struct verify_run *v = arg;
    struct rp_progress *p = &v->prog;
    p->done++;
    p->bytes += size;
    if (removed) {
        if (v->n_damaged == v->alloc) {
            v->alloc = v->alloc ? v->alloc * 2 : 16;
            v->damaged = rp_xrealloc(v->damaged, v->alloc * sizeof(*v->damaged));
        }
        v->damaged[v->n_damaged++] = rp_xstrdup(digest);
        rp_progress_line(p,
                         "damaged %s: %s; removed (the next pull fetches it again; an offline "
                         "cache needs it mirrored or imported again)",
                         digest, why);
    } else if (why) {
        rp_progress_line(p, "UNREADABLE %s: %s; kept", digest, why);
    } else {
        rp_progress_update(p, false);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool was_removed(const struct verify_run *v, const char *digest)
{
    return v->n_damaged &&
           bsearch(&digest, v->damaged, v->n_damaged, sizeof(char *), cmp_str) != NULL;
}

#define LOST_DEPTH_MAX 3 /* an image, an index, an index inside it (as mirror follows) */

/* Whether the image whose manifest is digest lost something: a manifest or blob this pass
 * removed, or one whose file is gone (fsck after a disk error moves damaged files to
 * lost+found, and a cache opened after an unclean shutdown never learns they were there). A
 * child of an index that is not cached was left out by mirror --platform or by export, and
 * is not lost unless this pass removed it; an index needs one child (with none, the index
 * is named). Returns 1 with the digest lost in lost, 0 when whole, -1 for a manifest not
 * required and not cached. */
static int image_lost(struct rp_cache *c, const struct verify_run *v, const char *digest,
                      bool required, int depth, char *lost, size_t lostlen)
{
    struct rp_cache_manifest m;
    bool removed = was_removed(v, digest);
    if (removed || rp_cache_manifest_get(c, digest, &m) != RP_CACHE_OK) {
        if (!removed && !required)
            return -1;
        snprintf(lost, lostlen, "%s", digest);
        return 1;
    }
    struct rp_manifest_refs refs;
    char err[256];
    int pe = rp_manifest_refs(m.data, m.len, &refs, err, sizeof(err));
    rp_cache_manifest_free(&m);
    if (pe != 0)
        return 0; /* verified as it arrived: nothing of ours to name */
    int rc = 0;
    size_t children = 0;
    for (size_t i = 0; i < refs.n && rc == 0; i++) {
        const char *d = refs.v[i].digest;
        if (refs.v[i].kind == RP_REF_CHILD) {
            if (depth + 1 >= LOST_DEPTH_MAX) {
                children++; /* not followed, as mirror does not */
                continue;
            }
            int e = image_lost(c, v, d, false, depth + 1, lost, lostlen);
            if (e > 0)
                rc = 1;
            else if (e == 0)
                children++;
        } else if (was_removed(v, d) || !rp_cache_blob_present(c, d)) {
            snprintf(lost, lostlen, "%s", d);
            rc = 1;
        }
    }
    if (rc == 0 && refs.is_index && refs.n && !children) {
        /* Which child went is not known (the others were never mirrored): the index is
         * what no longer serves any platform. */
        snprintf(lost, lostlen, "%s", digest);
        rc = 1;
    }
    rp_manifest_refs_free(&refs);
    return rc;
}

/* A removed digest is fetched again by the next pull, unless its registry is offline: then
 * the image has to be mirrored or imported again, and the admin needs its name, not a
 * digest. Mirrored and imported images are the pins file's; each is walked through the
 * manifests still cached. Returns how many of them lost something, or -1 when the pins file
 * could not be read: then none was checked, which must not pass for all of them whole. */
static long name_affected_images(const struct rp_conf *conf, struct rp_cache *c,
                                 struct verify_run *v)
{
    struct rp_image_ref *imgs = NULL;
    size_t n = 0;
    long affected = 0;
    char err[512];
    if (rp_pins_load(conf, &imgs, &n, err, sizeof(err)) != 0) {
        fprintf(stderr,
                "regproxy verify: cannot read the pins file %s; the mirrored and imported "
                "images it lists were not checked\n",
                err);
        return -1;
    }
    if (v->n_damaged)
        qsort(v->damaged, v->n_damaged, sizeof(*v->damaged), cmp_str);
    for (size_t i = 0; i < n; i++) {
        char lost[RP_CACHE_DIGEST_BUF];
        if (image_lost(c, v, imgs[i].digest, true, 0, lost, sizeof(lost)) <= 0)
            continue;
        affected++;
        char name[RP_TARGET_MAX];
        rp_image_ref_format(&imgs[i], name, sizeof(name));
        printf("image %s lost %s: %s\n", name, lost,
               imgs[i].reg->offline ? "mirror or import it again"
                                    : "the next pull fetches it again");
    }
    free(imgs);
    return affected;
}

int rp_verify_main(const struct rp_conf *conf)
{
    /* Opening creates a missing cache: a mistyped dir would be "verified", empty. */
    struct stat sb;
    if (stat(conf->cache.dir, &sb) != 0) {
        fprintf(stderr, "regproxy verify: no cache at %s: %s\n", conf->cache.dir, strerror(errno));
        return 1;
    }
    struct rp_cache *c = rp_offline_open_cache(conf, "verify", 0);
    if (!c)
        return 1;
    struct rp_cache_stats cs;
    rp_cache_stats(c, &cs);
    struct verify_run v = {0};
    rp_progress_init(&v.prog, "verifying", (size_t)cs.entries, cs.size);
    v.prog.noun = "entries";
    struct rp_cache_verify_stats st;
    int rc = rp_cache_verify(c, on_entry, &v, &st);
    rp_progress_end(&v.prog);
    /* Every time, not only after damage: a file gone from under the cache is no entry to
     * check, and only the images that needed it tell. */
    long incomplete = rc == RP_CACHE_OK ? name_affected_images(conf, c, &v) : 0;
    for (size_t i = 0; i < v.n_damaged; i++)
        free(v.damaged[i]);
    free(v.damaged);
    rp_cache_close(c);
    if (rc != RP_CACHE_OK) {
        fprintf(stderr, "regproxy verify: %s\n", rp_cache_strerror(rc));
        return 1;
    }
    char bytes[32];
    rp_format_bytes(st.blob_bytes, bytes, sizeof(bytes));
    printf("verified %llu blob%s (%s) and %llu manifest%s in %s: %llu damaged and removed, "
           "%llu unreadable",
           (unsigned long long)st.blobs, st.blobs == 1 ? "" : "s", bytes,
           (unsigned long long)st.manifests, st.manifests == 1 ? "" : "s", conf->cache.dir,
           (unsigned long long)st.damaged, (unsigned long long)st.unreadable);
    if (incomplete < 0)
        printf("; pins file unreadable: mirrored and imported images not checked");
    else if (incomplete)
        printf("; %ld mirrored or imported image%s incomplete", incomplete,
               incomplete == 1 ? "" : "s");
    printf("\n");
    return st.damaged || st.unreadable || incomplete ? 1 : 0;
}
