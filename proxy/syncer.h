/* SPDX-License-Identifier: Apache-2.0 */
/* syncer: runs blocking work (fsync of a finished fill) on one worker thread, so the event
 * loop never waits for the disk while clients wait for it. Jobs run in submission order;
 * each job's done callback runs back on the loop, after its work. */
#ifndef RP_SYNCER_H
#define RP_SYNCER_H

struct event_base;
struct rp_syncer;

/* NULL if the thread or its wake-up descriptor cannot be made. */
struct rp_syncer *rp_syncer_new(struct event_base *base);
/* work(arg) runs on the worker thread and must touch nothing the loop uses meanwhile;
 * done(arg) runs on the loop afterwards. Without a syncer (s NULL) both run now, inline. */
void rp_syncer_submit(struct rp_syncer *s, void (*work)(void *), void (*done)(void *), void *arg);
/* Finishes every submitted job (work, then done, on this thread), stops the worker and
 * frees s. Accepts NULL. */
void rp_syncer_free(struct rp_syncer *s);

#endif
