/* SPDX-License-Identifier: Apache-2.0 */
/* verify: `regproxy verify -c FILE`, a scrub of the cache. Content is verified once, as it
 * arrives, and then served as stored; this reads it all again so that damage on disk is
 * found by the admin rather than by every node's failing pull. */
#include "offline.h"

#include "../util/util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void on_entry(void *arg, const char *digest, uint64_t size, const char *why, bool removed)
{
    struct rp_progress *p = arg;
    p->done++;
    p->bytes += size;
    if (removed)
        rp_progress_line(p,
                         "damaged %s: %s; removed (the next pull fetches it again; an offline "
                         "cache needs it mirrored or imported again)",
                         digest, why);
    else if (why)
        rp_progress_line(p, "UNREADABLE %s: %s; kept", digest, why);
    else
        rp_progress_update(p, false);
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
    struct rp_progress prog;
    rp_progress_init(&prog, "verifying", (size_t)cs.entries, cs.size);
    prog.noun = "entries";
    struct rp_cache_verify_stats st;
    int rc = rp_cache_verify(c, on_entry, &prog, &st);
    rp_progress_end(&prog);
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
