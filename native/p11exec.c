/* See p11exec.h. */
#define _GNU_SOURCE
#include "p11exec.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { JOB_QUEUED = HP11_JOB_QUEUED, JOB_RUNNING = HP11_JOB_RUNNING, JOB_DONE = HP11_JOB_DONE };

enum {
    FN_GCM = 1, FN_CRYPT, FN_UNWRAP, FN_WRAP, FN_RANDOM, FN_GENERATE_KEY,
    FN_GENERATE_KEY_PAIR, FN_CREATE_OBJECT, FN_DESTROY_OBJECT, FN_GET_ATTRIBUTES, FN_FIND,
    FN_OPEN_SESSION, FN_CLOSE_SESSION, FN_LOGIN,
};

struct hp11_job {
    int fn;
    uintptr_t a[HP11_JOB_ARGS];
    unsigned long rv;
    uint64_t tag;
    atomic_int state;
    struct timespec queued_at; /* when it was submitted */
    struct timespec started;  /* when a worker took it */
    int waiting;              /* a caller sleeps in hp11_job_wait (under the exec lock) */
    struct hp11_job *next;    /* queue link */
    hp11_exec *owner;
    hp11_notifier *notifier;  /* told of tagged jobs */
};

struct hp11_notifier {
    pthread_mutex_t mu;
    int fd;                   /* written (8 bytes, eventfd semantics) when the list turns non-empty */
    uint64_t *tags;
    size_t n, cap;
    int pending_signal;
};

struct hp11_exec {
    pthread_mutex_t mu;
    pthread_cond_t work;      /* workers wait here for jobs */
    pthread_cond_t done;      /* hp11_job_wait callers wait here */
    hp11_job *head, *tail;
    int threads, idle, busy, spinning, queued, max_threads;
    int signalled;            /* idle threads woken for a job that have not run yet */
    int stopping;
    long spin_us;             /* a worker polls this long for more work before sleeping */
};

static unsigned long run(hp11_job *j) {
    uintptr_t *a = j->a;
    hp11_module *m = (hp11_module *)a[0];
    switch (j->fn) {
    case FN_GCM:
        return hp11_gcm(m, (int)a[1], a[2], a[3], (const unsigned char *)a[4], a[5],
                        (const unsigned char *)a[6], a[7], (const unsigned char *)a[8], a[9],
                        (unsigned char *)a[10], (unsigned long *)a[11]);
    case FN_CRYPT:
        return hp11_crypt(m, (int)a[1], a[2], (CK_MECHANISM *)a[3], a[4],
                          (const unsigned char *)a[5], a[6], (unsigned char *)a[7],
                          (unsigned long *)a[8]);
    case FN_UNWRAP:
        return hp11_unwrap(m, a[1], (CK_MECHANISM *)a[2], a[3], (const unsigned char *)a[4],
                           a[5], (CK_ATTRIBUTE *)a[6], a[7], (unsigned long *)a[8]);
    case FN_WRAP:
        return hp11_wrap(m, a[1], (CK_MECHANISM *)a[2], a[3], a[4], (unsigned char *)a[5],
                         (unsigned long *)a[6]);
    case FN_RANDOM:
        return hp11_random(m, a[1], (unsigned char *)a[2], a[3]);
    case FN_GENERATE_KEY:
        return hp11_generate_key(m, a[1], a[2], (CK_ATTRIBUTE *)a[3], a[4],
                                 (unsigned long *)a[5]);
    case FN_GENERATE_KEY_PAIR:
        return hp11_generate_key_pair(m, a[1], a[2], (CK_ATTRIBUTE *)a[3], a[4],
                                      (CK_ATTRIBUTE *)a[5], a[6], (unsigned long *)a[7],
                                      (unsigned long *)a[8]);
    case FN_CREATE_OBJECT:
        return hp11_create_object(m, a[1], (CK_ATTRIBUTE *)a[2], a[3], (unsigned long *)a[4]);
    case FN_DESTROY_OBJECT:
        return hp11_destroy_object(m, a[1], a[2]);
    case FN_GET_ATTRIBUTES:
        return hp11_get_attributes(m, a[1], a[2], (CK_ATTRIBUTE *)a[3], a[4]);
    case FN_FIND:
        return hp11_find(m, a[1], (CK_ATTRIBUTE *)a[2], a[3], (unsigned long *)a[4], a[5],
                         (unsigned long *)a[6]);
    case FN_OPEN_SESSION:
        return hp11_open_session(m, a[1], (unsigned long *)a[2]);
    case FN_CLOSE_SESSION:
        return hp11_close_session(m, a[1]);
    case FN_LOGIN:
        return hp11_login(m, a[1], a[2], (const unsigned char *)a[3], a[4]);
    default:
        return HP11_ERR_BAD_JOB;
    }
}

/* --- notifier ------------------------------------------------------------------------ */

hp11_notifier *hp11_notifier_new(int fd) {
    hp11_notifier *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    pthread_mutex_init(&n->mu, NULL);
    n->fd = fd;
    return n;
}

void hp11_notifier_detach(hp11_notifier *n) {
    pthread_mutex_lock(&n->mu);
    n->fd = -1;
    pthread_mutex_unlock(&n->mu);
}

void hp11_notifier_free(hp11_notifier *n) {
    if (!n) return;
    pthread_mutex_destroy(&n->mu);
    free(n->tags);
    free(n);
}

static void notify(hp11_notifier *n, uint64_t tag) {
    pthread_mutex_lock(&n->mu);
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 64;
        uint64_t *t = realloc(n->tags, cap * sizeof *t);
        if (!t) { pthread_mutex_unlock(&n->mu); return; } /* the waiter's timer still fires */
        n->tags = t;
        n->cap = cap;
    }
    n->tags[n->n++] = tag;
    if (!n->pending_signal && n->fd >= 0) {
        /* Written under the lock, so that hp11_notifier_detach() and a close of the fd
         * after it cannot race with this write. */
        uint64_t one = 1;
        n->pending_signal = 1;
        ssize_t w = write(n->fd, &one, sizeof one);
        (void)w;
    }
    pthread_mutex_unlock(&n->mu);
}

size_t hp11_notifier_take(hp11_notifier *n, uint64_t *tags, size_t max) {
    pthread_mutex_lock(&n->mu);
    size_t k = n->n < max ? n->n : max;
    memcpy(tags, n->tags, k * sizeof *tags);
    memmove(n->tags, n->tags + k, (n->n - k) * sizeof *tags);
    n->n -= k;
    if (n->n == 0) n->pending_signal = 0;
    pthread_mutex_unlock(&n->mu);
    return k;
}

/* --- executor ------------------------------------------------------------------------ */

static void *worker(void *arg);

hp11_exec *hp11_exec_new(int max_threads, long spin_us) {
    if (max_threads < 1) return NULL;
    hp11_exec *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->work, &ca);
    pthread_cond_init(&e->done, &ca);
    pthread_condattr_destroy(&ca);
    e->max_threads = max_threads;
    e->spin_us = spin_us;
    return e;
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void *worker(void *arg) {
    hp11_exec *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        if (!e->head && e->spin_us > 0 && !e->stopping) {
            /* Poll briefly for more work: a sleeping thread takes tens of microseconds to
             * wake on a virtual machine, longer than the call it would run. */
            double until = now_us() + e->spin_us;
            e->spinning++;
            pthread_mutex_unlock(&e->mu);
            while (now_us() < until) {
                if (__atomic_load_n(&e->head, __ATOMIC_RELAXED)) break;
                sched_yield();
            }
            pthread_mutex_lock(&e->mu);
            e->spinning--;
        }
        while (!e->head && !e->stopping) {
            e->idle++;
            pthread_cond_wait(&e->work, &e->mu);
            e->idle--;
            if (e->signalled > 0) e->signalled--;  /* (or a spurious wake-up: harmless) */
        }
        if (!e->head && e->stopping) break;
        hp11_job *j = e->head;
        e->head = j->next;
        if (!e->head) e->tail = NULL;
        e->queued--;
        e->busy++;
        clock_gettime(CLOCK_MONOTONIC, &j->started);
        atomic_store(&j->state, JOB_RUNNING);
        pthread_mutex_unlock(&e->mu);

        unsigned long rv = run(j);

        pthread_mutex_lock(&e->mu);
        e->busy--;
        j->rv = rv;
        atomic_store(&j->state, JOB_DONE);
        int wake_waiter = j->waiting;
        uint64_t tag = j->tag;
        hp11_notifier *n = j->tag ? j->notifier : NULL;
        if (wake_waiter) pthread_cond_broadcast(&e->done);
        if (n) {
            pthread_mutex_unlock(&e->mu);
            notify(n, tag);
            pthread_mutex_lock(&e->mu);
        }
    }
    e->threads--;
    pthread_cond_broadcast(&e->done);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

hp11_job *hp11_job_new(hp11_notifier *notifier) {
    hp11_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    atomic_store(&j->state, JOB_DONE);
    j->notifier = notifier;
    return j;
}

void hp11_job_free(hp11_job *j) { free(j); }

/* Under e->mu: one more thread for the queue, an idle one woken or a new one. */
static void add_taker(hp11_exec *e) {
    if (e->idle > e->signalled) {
        e->signalled++;
        pthread_cond_signal(&e->work);
    } else if (e->threads < e->max_threads) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 256 * 1024);
        if (pthread_create(&t, &at, worker, e) == 0) e->threads++;
        pthread_attr_destroy(&at);
    }
}

static long long elapsed_us(const struct timespec *since, const struct timespec *now) {
    return (long long)(now->tv_sec - since->tv_sec) * 1000000LL
           + (now->tv_nsec - since->tv_nsec) / 1000LL;
}

/* Under e->mu: the oldest queued job has waited KICK_US or more, and no taker is on its
 * way (every thread is inside a call, or was woken for an earlier job): one more. */
static void kick(hp11_exec *e) {
    if (e->stopping || !e->head || e->queued <= e->spinning + e->signalled) return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (elapsed_us(&e->head->queued_at, &now) >= HP11_KICK_US) add_taker(e);
}

void hp11_exec_kick(hp11_exec *e) {
    pthread_mutex_lock(&e->mu);
    kick(e);
    pthread_mutex_unlock(&e->mu);
}

static int submit(hp11_exec *e, hp11_job *j, int fn, const uintptr_t *args, int nargs,
                  uint64_t tag) {
    j->fn = fn;
    memcpy(j->a, args, (size_t)nargs * sizeof *args);
    j->rv = 0;
    j->tag = tag;
    j->waiting = 0;
    j->next = NULL;
    j->owner = e;
    atomic_store(&j->state, JOB_QUEUED);
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        atomic_store(&j->state, JOB_DONE);
        return -1;
    }
    if (e->tail) e->tail->next = j; else e->head = j;
    e->tail = j;
    e->queued++;
    clock_gettime(CLOCK_MONOTONIC, &j->queued_at);
    /* A queued job needs a taker: a polling worker, an idle one woken for it, or, when
     * every thread is inside a call, a new one. When every idle thread has already been
     * woken (for earlier jobs of a burst), none is added now: a woken or a busy worker
     * takes it when it is done (calls take microseconds; a version that woke or made a
     * thread for every job served about 7 % fewer HTTP Encrypts per second on two cores:
     * docs/decisions.md). If none has after HP11_KICK_US (they are inside slow calls: a
     * key pair generation, a hung token), the job's waiter adds one (kick: hp11_job_wait,
     * and the event-loop hub's sweep through hp11_exec_kick). */
    if (e->queued <= e->spinning + e->signalled) {
        /* a polling or a woken worker takes it */
    } else if (e->idle > e->signalled || e->idle == 0) {
        add_taker(e);
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static void add_us(struct timespec *t, long long us) {
    long long ns = (long long)t->tv_nsec + us * 1000LL;
    t->tv_sec += ns / 1000000000LL;
    t->tv_nsec = ns % 1000000000LL;
}

static int before(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

int hp11_job_wait(hp11_job *j, long hang_us, long deadline_us) {
    if (atomic_load(&j->state) == JOB_DONE) return HP11_WAIT_DONE;
    hp11_exec *e = j->owner;
    struct timespec now, deadline;
    clock_gettime(CLOCK_MONOTONIC, &now);
    deadline = now;
    add_us(&deadline, deadline_us);
    int result = HP11_WAIT_DONE;
    pthread_mutex_lock(&e->mu);
    j->waiting = 1;
    for (;;) {
        int st = atomic_load(&j->state);
        if (st == JOB_DONE) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!before(&now, &deadline)) { result = HP11_WAIT_DEADLINE; break; }
        if (st == JOB_QUEUED) kick(e);
        /* Wake at the deadline, or when the call has run for hang_us (a queued job is
         * looked at again every hang_us: the queue is not the token's fault). */
        struct timespec until = now;
        if (hang_us > 0) {
            if (st == JOB_RUNNING) {
                until = j->started;
                add_us(&until, hang_us);
                if (!before(&now, &until)) { result = HP11_WAIT_HUNG; break; }
            } else {
                add_us(&until, hang_us);
            }
            if (before(&deadline, &until)) until = deadline;
        } else {
            until = deadline;
        }
        if (st == JOB_QUEUED) {  /* look again (and kick) every HP11_KICK_US while queued */
            struct timespec next = now;
            add_us(&next, HP11_KICK_US);
            if (before(&next, &until)) until = next;
        }
        pthread_cond_timedwait(&e->done, &e->mu, &until);
    }
    j->waiting = 0;
    pthread_mutex_unlock(&e->mu);
    return result;
}

int hp11_job_state(const hp11_job *j) { return atomic_load(&j->state); }

long hp11_job_running_us(const hp11_job *j) {
    if (atomic_load(&j->state) == JOB_QUEUED) return 0;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)((t.tv_sec - j->started.tv_sec) * 1000000L
                  + (t.tv_nsec - j->started.tv_nsec) / 1000L);
}
unsigned long hp11_job_rv(const hp11_job *j) { return j->rv; }

void hp11_exec_stats(hp11_exec *e, int *threads, int *idle, int *busy, int *queued) {
    pthread_mutex_lock(&e->mu);
    *threads = e->threads;
    *idle = e->idle;
    *busy = e->busy;
    *queued = e->queued;
    pthread_mutex_unlock(&e->mu);
}

int hp11_exec_stop(hp11_exec *e, long timeout_us) {
    /* Ask the threads to finish; wait up to timeout_us for them. 1 if none is left (then
     * hp11_exec_free may be called), 0 if some are still inside a call. */
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long long ns = (long long)until.tv_nsec + (long long)timeout_us * 1000LL;
    until.tv_sec += ns / 1000000000LL;
    until.tv_nsec = ns % 1000000000LL;
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_cond_broadcast(&e->work);
    while (e->threads > 0) {
        if (pthread_cond_timedwait(&e->done, &e->mu, &until) == ETIMEDOUT) break;
    }
    int left = e->threads;
    pthread_mutex_unlock(&e->mu);
    return left == 0;
}

void hp11_exec_free(hp11_exec *e) {
    if (!e) return;
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->work);
    pthread_cond_destroy(&e->done);
    free(e);
}

/* --- typed submission ------------------------------------------------------------------ */

#define W(x) ((uintptr_t)(x))
#define SUBMIT(fn, ...) do { \
        const uintptr_t a_[] = {__VA_ARGS__}; \
        return submit(e, j, fn, a_, (int)(sizeof a_ / sizeof a_[0]), tag); \
    } while (0)

int hp11_submit_gcm(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m, int op,
                    unsigned long session, unsigned long key, const unsigned char *iv,
                    unsigned long iv_len, const unsigned char *aad, unsigned long aad_len,
                    const unsigned char *in, unsigned long in_len, unsigned char *out,
                    unsigned long *out_len) {
    SUBMIT(FN_GCM, W(m), W(op), session, key, W(iv), iv_len, W(aad), aad_len, W(in), in_len,
           W(out), W(out_len));
}

int hp11_submit_crypt(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m, int op,
                      unsigned long session, CK_MECHANISM *mech, unsigned long key,
                      const unsigned char *in, unsigned long in_len, unsigned char *out,
                      unsigned long *out_len) {
    SUBMIT(FN_CRYPT, W(m), W(op), session, W(mech), key, W(in), in_len, W(out), W(out_len));
}

int hp11_submit_unwrap(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                       unsigned long session, CK_MECHANISM *mech, unsigned long unwrapping_key,
                       const unsigned char *wrapped, unsigned long wrapped_len,
                       CK_ATTRIBUTE *tpl, unsigned long n, unsigned long *key) {
    SUBMIT(FN_UNWRAP, W(m), session, W(mech), unwrapping_key, W(wrapped), wrapped_len, W(tpl),
           n, W(key));
}

int hp11_submit_wrap(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                     unsigned long session, CK_MECHANISM *mech, unsigned long wrapping_key,
                     unsigned long key, unsigned char *out, unsigned long *out_len) {
    SUBMIT(FN_WRAP, W(m), session, W(mech), wrapping_key, key, W(out), W(out_len));
}

int hp11_submit_random(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                       unsigned long session, unsigned char *out, unsigned long len) {
    SUBMIT(FN_RANDOM, W(m), session, W(out), len);
}

int hp11_submit_generate_key(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                             unsigned long session, unsigned long mech, CK_ATTRIBUTE *tpl,
                             unsigned long n, unsigned long *key) {
    SUBMIT(FN_GENERATE_KEY, W(m), session, mech, W(tpl), n, W(key));
}

int hp11_submit_generate_key_pair(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                                  unsigned long session, unsigned long mech, CK_ATTRIBUTE *pub,
                                  unsigned long npub, CK_ATTRIBUTE *priv, unsigned long npriv,
                                  unsigned long *pub_key, unsigned long *priv_key) {
    SUBMIT(FN_GENERATE_KEY_PAIR, W(m), session, mech, W(pub), npub, W(priv), npriv,
           W(pub_key), W(priv_key));
}

int hp11_submit_create_object(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                              unsigned long session, CK_ATTRIBUTE *tpl, unsigned long n,
                              unsigned long *obj) {
    SUBMIT(FN_CREATE_OBJECT, W(m), session, W(tpl), n, W(obj));
}

int hp11_submit_destroy_object(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                               unsigned long session, unsigned long obj) {
    SUBMIT(FN_DESTROY_OBJECT, W(m), session, obj);
}

int hp11_submit_get_attributes(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                               unsigned long session, unsigned long obj, CK_ATTRIBUTE *tpl,
                               unsigned long n) {
    SUBMIT(FN_GET_ATTRIBUTES, W(m), session, obj, W(tpl), n);
}

int hp11_submit_find(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                     unsigned long session, CK_ATTRIBUTE *tpl, unsigned long n,
                     unsigned long *objs, unsigned long max, unsigned long *found) {
    SUBMIT(FN_FIND, W(m), session, W(tpl), n, W(objs), max, W(found));
}

int hp11_submit_open_session(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                             unsigned long slot, unsigned long *session) {
    SUBMIT(FN_OPEN_SESSION, W(m), slot, W(session));
}

int hp11_submit_close_session(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                              unsigned long session) {
    SUBMIT(FN_CLOSE_SESSION, W(m), session);
}

int hp11_submit_login(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
                      unsigned long session, unsigned long user_type, const unsigned char *pin,
                      unsigned long pin_len) {
    SUBMIT(FN_LOGIN, W(m), session, user_type, W(pin), pin_len);
}
