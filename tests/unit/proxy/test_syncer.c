/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for proxy/syncer.c: work runs off the loop, in order; done runs on the loop,
 * after its work; freeing finishes what was submitted. */
#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include "../unit.h"
#include "../../../proxy/syncer.h"

#define JOBS 50

struct job {
    int index;
    pthread_t work_thread;
    bool worked, done, done_after_work;
    int work_seq, done_seq;
};

static int work_seq, done_seq, n_done;
static struct event_base *base;
static pthread_mutex_t seq_mu = PTHREAD_MUTEX_INITIALIZER;

static void work(void *arg)
{
    struct job *j = arg;
    j->work_thread = pthread_self();
    usleep(200); /* long enough for the loop to run ahead of the worker */
    pthread_mutex_lock(&seq_mu);
    j->work_seq = work_seq++;
    j->worked = true;
    pthread_mutex_unlock(&seq_mu);
}

static void done(void *arg)
{
    struct job *j = arg;
    pthread_mutex_lock(&seq_mu);
    j->done_after_work = j->worked;
    pthread_mutex_unlock(&seq_mu);
    j->done = true;
    j->done_seq = done_seq++;
    if (++n_done == JOBS && base)
        event_base_loopbreak(base);
}

static void reset(void)
{
    work_seq = done_seq = n_done = 0;
}

static void test_jobs_run_off_the_loop_in_order(void)
{
    reset();
    base = event_base_new();
    struct rp_syncer *s = rp_syncer_new(base);
    CHECK(s != NULL);
    static struct job jobs[JOBS];
    memset(jobs, 0, sizeof(jobs));
    for (int i = 0; i < JOBS; i++) {
        jobs[i].index = i;
        rp_syncer_submit(s, work, done, &jobs[i]);
    }
    CHECK(n_done == 0); /* nothing is done before the loop runs */
    struct timeval limit = {10, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    CHECK_INT(n_done, JOBS);
    for (int i = 0; i < JOBS; i++) {
        CHECK(jobs[i].done && jobs[i].done_after_work);
        CHECK(!pthread_equal(jobs[i].work_thread, pthread_self()));
        CHECK_INT(jobs[i].work_seq, i);
        CHECK_INT(jobs[i].done_seq, i);
    }
    rp_syncer_free(s);
    event_base_free(base);
    base = NULL;
}

static void test_free_finishes_pending_jobs(void)
{
    reset();
    base = event_base_new();
    struct rp_syncer *s = rp_syncer_new(base);
    static struct job jobs[JOBS];
    memset(jobs, 0, sizeof(jobs));
    for (int i = 0; i < JOBS; i++)
        rp_syncer_submit(s, work, done, &jobs[i]);
    rp_syncer_free(s); /* the loop never ran: free must do the work and the callbacks */
    CHECK_INT(n_done, JOBS);
    for (int i = 0; i < JOBS; i++)
        CHECK(jobs[i].done && jobs[i].done_after_work && jobs[i].done_seq == i);
    event_base_free(base);
    base = NULL;
}

static void test_without_a_syncer_jobs_run_inline(void)
{
    reset();
    struct job j;
    memset(&j, 0, sizeof(j));
    rp_syncer_submit(NULL, work, done, &j);
    CHECK(j.worked && j.done && j.done_after_work);
    CHECK(pthread_equal(j.work_thread, pthread_self()));
    rp_syncer_free(NULL);
}

int main(void)
{
    RUN(test_jobs_run_off_the_loop_in_order);
    RUN(test_free_finishes_pending_jobs);
    RUN(test_without_a_syncer_jobs_run_inline);
    UNIT_EXIT();
}
