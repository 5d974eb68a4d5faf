/* SPDX-License-Identifier: Apache-2.0 */
/* verify: `regproxy verify -c FILE`, a scrub of the cache. Content is verified once, as it
 * arrives, and then served as stored; this reads it all again so that damage on disk is
 * found by the admin rather than by every node's failing pull. */
#include "offline.h"

#include "../util/util.h"

#include <stdio.h>

static void on_damage(void *arg, const char *digest, const char *why, bool removed)
{
    (void)arg;
    if (removed)
        printf("damaged %s: %s; removed (the next pull fetches it again; an offline cache "
               "needs it mirrored or imported again)\n",
               digest, why);
    else
        printf("UNREADABLE %s: %s; kept\n", digest, why);
    fflush(stdout);
}

int rp_verify_main(const struct rp_conf *conf)
{
    struct rp_cache *c = rp_offline_open_cache(conf, "verify", 0);
    if (!c)
        return 1;
    struct rp_cache_verify_stats st;
    int rc = rp_cache_verify(c, on_damage, NULL, &st);
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
