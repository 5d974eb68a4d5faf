/* SPDX-License-Identifier: Apache-2.0 */
/* syncer: a worker thread for blocking disk work (see syncer.h). The loop learns of finished
 * jobs through an eventfd, so it shares no locks with libevent. */
#include "syncer.h"
#include "../util/util.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct job {
    void (*work)(void *);
    void (*done)(void *);
    void *arg;
    struct job *next;
};

struct queue {
    struct job *head, **tail;
};

struct rp_syncer {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct queue queued, done; /* under mu */
    bool stop;                 /* under mu */
    int efd;
    struct event *ev;
};

static void q_init(struct queue *q)
{
    q->head = NULL;
    q->tail = &q->head;
}

static void q_push(struct queue *q, struct job *j)
{
    j->next = NULL;
    *q->tail = j;
    q->tail = &j->next;
}

static struct job *q_pop(struct queue *q)
{
    struct job *j = q->head;
    if (j) {
        q->head = j->next;
        if (!q->head)
            q->tail = &q->head;
    }
    return j;
}

static void *worker(void *arg)
{
    struct rp_syncer *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct job *j = q_pop(&s->queued);
        if (!j) {
            if (s->stop)
                break;
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        j->work(j->arg);
        pthread_mutex_lock(&s->mu);
        q_push(&s->done, j);
        uint64_t one = 1;
        ssize_t w = write(s->efd, &one, sizeof(one));
        (void)w; /* the counter only saturates; the loop empties the whole queue anyway */
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Runs the done callbacks of every finished job, in order. */
static void drain_done(struct rp_syncer *s)
{
    pthread_mutex_lock(&s->mu);
    struct queue q = s->done;
    q_init(&s->done);
    pthread_mutex_unlock(&s->mu);
    if (!q.head)
        return;
    struct job *j;
    while ((j = q_pop(&q))) {
        j->done(j->arg);
        free(j);
    }
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof(n));
    (void)r;
    drain_done(arg);
}

struct rp_syncer *rp_syncer_new(struct event_base *base)
{
    struct rp_syncer *s = rp_xcalloc(1, sizeof(*s));
    q_init(&s->queued);
    q_init(&s->done);
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0)
        goto fail;
    s->ev = event_new(base, s->efd, EV_READ | EV_PERSIST, wake_cb, s);
    if (!s->ev || event_add(s->ev, NULL) != 0)
        goto fail;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    /* Signals stay with the main thread (libevent's handlers run there). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&s->thread, NULL, worker, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        errno = rc;
        goto fail;
    }
    return s;
fail:
    rp_warn("syncer: %s; fsyncs run on the event loop", strerror(errno));
    if (s->ev)
        event_free(s->ev);
    if (s->efd >= 0)
        close(s->efd);
    free(s);
    return NULL;
}

void rp_syncer_submit(struct rp_syncer *s, void (*work)(void *), void (*done)(void *), void *arg)
{
    if (!s) {
        work(arg);
        done(arg);
        return;
    }
    struct job *j = rp_xmalloc(sizeof(*j));
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&s->mu);
    q_push(&s->queued, j);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void rp_syncer_free(struct rp_syncer *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL); /* it finishes the queue before it stops */
    drain_done(s);
    event_free(s->ev);
    close(s->efd);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
