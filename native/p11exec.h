/* Executors: worker threads that run PKCS#11 calls off the caller's thread, so that a
 * caller can stop waiting for a token that hangs, and an event loop never blocks on one.
 *
 * An hp11_exec (hsmpool makes one per process, shared by every token's calls): up to
 * max_threads threads, started on demand, take jobs from a FIFO queue; every queued job
 * gets a thread, at once or, in a burst, when a kick finds it queued HP11_KICK_US (see
 * submit in p11exec.c). A job is one glue call (an hp11_* function of p11glue.h with its
 * arguments), queued by the typed hp11_submit_* function of that call. Every pointer
 * argument must stay valid until the job is done: the caller keeps its buffers until
 * hp11_job_state() says HP11_JOB_DONE, even after it stopped waiting (an abandoned job).
 *
 * A caller learns of completion in one of two ways:
 *   - it waits: hp11_job_wait(job, timeout_us) sleeps in C (the GIL is released by cffi)
 *     until the job is done or the timeout passes;
 *   - it gives the job a non-zero tag and is told through a notifier: the worker appends
 *     the tag to the notifier's list and, when the list turns non-empty, writes 8 bytes to
 *     the notifier's fd (an eventfd that an event loop watches); hp11_notifier_take()
 *     drains the list.
 *
 * The worker threads never touch Python. An idle worker polls for work for spin_us before
 * it sleeps (a sleeping thread costs tens of microseconds to wake on a virtual machine).
 */
#ifndef HSMPOOL_P11EXEC_H
#define HSMPOOL_P11EXEC_H
#include <stddef.h>
#include <stdint.h>

#include "p11glue.h"

#define HP11_JOB_ARGS 12
#define HP11_ERR_BAD_JOB 0x80000010UL

enum { HP11_JOB_QUEUED = 0, HP11_JOB_RUNNING = 1, HP11_JOB_DONE = 2 };
enum { HP11_WAIT_DONE = 0, HP11_WAIT_HUNG = 1, HP11_WAIT_DEADLINE = 2 };

typedef struct hp11_exec hp11_exec;
typedef struct hp11_job hp11_job;
typedef struct hp11_notifier hp11_notifier;

hp11_notifier *hp11_notifier_new(int fd);
void hp11_notifier_detach(hp11_notifier *n);
void hp11_notifier_free(hp11_notifier *n);
/* Move up to max finished tags into tags; returns how many. */
size_t hp11_notifier_take(hp11_notifier *n, uint64_t *tags, size_t max);

hp11_exec *hp11_exec_new(int max_threads, long spin_us);
/* Ask the threads to finish once the queue is empty and wait up to timeout_us: 1 if every
 * thread has finished (hp11_exec_free may follow), 0 if some are still inside a call. */
int hp11_exec_stop(hp11_exec *e, long timeout_us);
void hp11_exec_free(hp11_exec *e);
void hp11_exec_stats(hp11_exec *e, int *threads, int *idle, int *busy, int *queued);
/* A job queued this long with no thread on its way gets one (see submit in p11exec.c):
 * hp11_job_wait sees to it for its job; a caller told through a notifier calls
 * hp11_exec_kick about as often while its jobs are queued. */
#define HP11_KICK_US 2000
void hp11_exec_kick(hp11_exec *e);

/* A job; its tagged completions go to notifier (may be NULL for jobs that are waited for).
 * A job is reusable once done; free it only when done (or never submitted). */
hp11_job *hp11_job_new(hp11_notifier *notifier);
void hp11_job_free(hp11_job *j);
/* Wait until the job is done (HP11_WAIT_DONE), it has been running for hang_us
 * (HP11_WAIT_HUNG; hang_us <= 0: no such limit), or deadline_us have passed
 * (HP11_WAIT_DEADLINE). Time spent queued counts only against the deadline. */
int hp11_job_wait(hp11_job *j, long hang_us, long deadline_us);
int hp11_job_state(const hp11_job *j);
/* Microseconds since a worker took the job (0 while it is queued). */
long hp11_job_running_us(const hp11_job *j);
unsigned long hp11_job_rv(const hp11_job *j);

/* Queue one call; 0 on success, -1 if the executor is stopping or out of threads. */
int hp11_submit_gcm(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m, int op,
    unsigned long session, unsigned long key, const unsigned char *iv, unsigned long iv_len,
    const unsigned char *aad, unsigned long aad_len, const unsigned char *in,
    unsigned long in_len, unsigned char *out, unsigned long *out_len);
int hp11_submit_crypt(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m, int op,
    unsigned long session, CK_MECHANISM *mech, unsigned long key, const unsigned char *in,
    unsigned long in_len, unsigned char *out, unsigned long *out_len);
int hp11_submit_unwrap(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, CK_MECHANISM *mech, unsigned long unwrapping_key,
    const unsigned char *wrapped, unsigned long wrapped_len, CK_ATTRIBUTE *tpl,
    unsigned long n, unsigned long *key);
int hp11_submit_wrap(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, CK_MECHANISM *mech, unsigned long wrapping_key, unsigned long key,
    unsigned char *out, unsigned long *out_len);
int hp11_submit_random(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, unsigned char *out, unsigned long len);
int hp11_submit_generate_key(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, unsigned long mech, CK_ATTRIBUTE *tpl, unsigned long n,
    unsigned long *key);
int hp11_submit_generate_key_pair(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, unsigned long mech, CK_ATTRIBUTE *pub, unsigned long npub,
    CK_ATTRIBUTE *priv, unsigned long npriv, unsigned long *pub_key, unsigned long *priv_key);
int hp11_submit_create_object(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, CK_ATTRIBUTE *tpl, unsigned long n, unsigned long *obj);
int hp11_submit_destroy_object(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, unsigned long obj);
int hp11_submit_get_attributes(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, unsigned long obj, CK_ATTRIBUTE *tpl, unsigned long n);
int hp11_submit_find(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, CK_ATTRIBUTE *tpl, unsigned long n, unsigned long *objs,
    unsigned long max, unsigned long *found);
int hp11_submit_open_session(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long slot, unsigned long *session);
int hp11_submit_close_session(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session);
int hp11_submit_login(hp11_exec *e, hp11_job *j, uint64_t tag, hp11_module *m,
    unsigned long session, unsigned long user_type, const unsigned char *pin,
    unsigned long pin_len);
#endif
