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

struct affected {
    const struct verify_run *v;
    const char *digest; /* the first damaged digest the image reaches */
};

static int find_damaged(void *arg, const char *digest)
{
    struct affected *a = arg;
    char *const *hit = bsearch(&digest, a->v->damaged, a->v->n_damaged, sizeof(char *), cmp_str);
    if (hit)
        a->digest = *hit;
    return hit != NULL;
}

/* A removed digest is fetched again by the next pull, unless its registry is offline: then
 * the image has to be mirrored or imported again, and the admin needs its name, not a
 * digest. Mirrored and imported images are the pins file's; each is walked through the
 * manifests still cached (a removed manifest is reached by its digest, its content no
 * further). */
static void name_affected_images(const struct rp_conf *conf, struct rp_cache *c,
                                 struct verify_run *v)
{
    struct rp_image_ref *imgs = NULL;
    size_t n = 0;
    char err[512];
    if (rp_pins_load(conf, &imgs, &n, err, sizeof(err)) != 0) {
        fprintf(stderr,
                "regproxy verify: cannot tell which mirrored or imported images the "
                "damage touched: %s\n",
                err);
        return;
    }
    qsort(v->damaged, v->n_damaged, sizeof(*v->damaged), cmp_str);
    for (size_t i = 0; i < n; i++) {
        struct affected a = {.v = v};
        if (rp_manifest_walk(c, imgs[i].digest, find_damaged, &a, NULL) == 0)
            continue;
        char name[RP_TARGET_MAX];
        rp_image_ref_format(&imgs[i], name, sizeof(name));
        printf("image %s lost %s: %s\n", name, a.digest,
               imgs[i].reg->offline ? "mirror or import it again"
                                    : "the next pull fetches it again");
    }
    free(imgs);
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
    if (v.n_damaged)
        name_affected_images(conf, c, &v);
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
           "%llu unreadable\n",
           (unsigned long long)st.blobs, st.blobs == 1 ? "" : "s", bytes,
           (unsigned long long)st.manifests, st.manifests == 1 ? "" : "s", conf->cache.dir,
           (unsigned long long)st.damaged, (unsigned long long)st.unreadable);
    return st.damaged || st.unreadable ? 1 : 0;
}
