/* SPDX-License-Identifier: Apache-2.0 */
/* scrub: [cache] scrub_interval. While serving, a worker thread re-reads every cached blob at
 * most scrub_rate bytes per second and checks it against its digest; the loop then removes
 * each damaged one (if its file is still the one checked), so the next pull fetches it again.
 * Blobs are verified as they arrive and then served as stored: without this, damage on disk
 * that keeps a file's size (a flipped bit, zeros after a crash) reaches every client, each
 * failing its own check and retrying into the same bytes. `regproxy verify` is the same check
 * with the proxy stopped. */
#ifndef RP_SCRUB_H
#define RP_SCRUB_H

struct rp_server;
struct rp_scrub;

/* Starts the schedule from srv->conf->cache (nothing runs while scrub_interval is 0). NULL
 * when the worker thread cannot be made (logged: no scrub then). */
struct rp_scrub *rp_scrub_new(struct rp_server *srv);
/* A reload changed scrub_interval: an idle scrub waits anew from now; a pass under way
 * finishes first, unless the scrub was turned off (0): then it ends at once, the blob being
 * read given up. scrub_rate is read for every blob, so it needs no call. */
void rp_scrub_reconfigured(struct rp_scrub *s);
/* Stops a pass under way within about 100 ms, waits for the worker and frees s. Before the
 * cache is closed. Accepts NULL. */
void rp_scrub_free(struct rp_scrub *s);

#endif
