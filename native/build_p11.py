"""cffi build script for the pool's own PKCS#11 binding (native/p11glue.c).

The pool talks to PKCS#11 modules through this thin glue rather than python-pkcs11: one
C call per operation (Init and the single-part call together), no per-object Python
classes, and C_Initialize always with CKF_OS_LOCKING_OK.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _rel(p: Path) -> str:
    # setuptools wants paths relative to the project root; cffi resolves them from the cwd.
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


CDEF = """
typedef struct { unsigned long type; void *pValue; unsigned long ulValueLen; } CK_ATTRIBUTE;
typedef struct { unsigned long mechanism; void *pParameter; unsigned long ulParameterLen; }
    CK_MECHANISM;
typedef struct { unsigned long hashAlg; unsigned long mgf; unsigned long sLen; }
    CK_RSA_PKCS_PSS_PARAMS;
typedef struct {
    unsigned long hashAlg; unsigned long mgf; unsigned long source;
    void *pSourceData; unsigned long ulSourceDataLen;
} CK_RSA_PKCS_OAEP_PARAMS;
typedef struct hp11_module hp11_module;

hp11_module *hp11_load(const char *path, char *err, unsigned long errlen);
unsigned long hp11_initialize(hp11_module *m);
void hp11_unload(hp11_module *m);
unsigned long hp11_slot_list(hp11_module *m, unsigned long *slots, unsigned long *count);
unsigned long hp11_token_info(hp11_module *m, unsigned long slot, unsigned char *label,
    unsigned char *manufacturer, unsigned char *model, unsigned char *serial,
    unsigned long *flags);
unsigned long hp11_mechanisms(hp11_module *m, unsigned long slot, unsigned long *mechs,
    unsigned long *count);
unsigned long hp11_open_session(hp11_module *m, unsigned long slot, unsigned long *session);
unsigned long hp11_close_session(hp11_module *m, unsigned long session);
unsigned long hp11_login(hp11_module *m, unsigned long session, unsigned long user_type,
    const unsigned char *pin, unsigned long pin_len);
unsigned long hp11_logout(hp11_module *m, unsigned long session);
unsigned long hp11_generate_key(hp11_module *m, unsigned long session, unsigned long mech,
    CK_ATTRIBUTE *tpl, unsigned long n, unsigned long *key);
unsigned long hp11_generate_key_pair(hp11_module *m, unsigned long session, unsigned long mech,
    CK_ATTRIBUTE *pub, unsigned long npub, CK_ATTRIBUTE *priv, unsigned long npriv,
    unsigned long *pub_key, unsigned long *priv_key);
unsigned long hp11_create_object(hp11_module *m, unsigned long session, CK_ATTRIBUTE *tpl,
    unsigned long n, unsigned long *obj);
unsigned long hp11_destroy_object(hp11_module *m, unsigned long session, unsigned long obj);
unsigned long hp11_get_attributes(hp11_module *m, unsigned long session, unsigned long obj,
    CK_ATTRIBUTE *tpl, unsigned long n);
unsigned long hp11_find(hp11_module *m, unsigned long session, CK_ATTRIBUTE *tpl,
    unsigned long n, unsigned long *objs, unsigned long max, unsigned long *found);
unsigned long hp11_wrap(hp11_module *m, unsigned long session, CK_MECHANISM *mech,
    unsigned long wrapping_key, unsigned long key, unsigned char *out, unsigned long *out_len);
unsigned long hp11_unwrap(hp11_module *m, unsigned long session, CK_MECHANISM *mech,
    unsigned long unwrapping_key, const unsigned char *wrapped, unsigned long wrapped_len,
    CK_ATTRIBUTE *tpl, unsigned long n, unsigned long *key);
unsigned long hp11_random(hp11_module *m, unsigned long session, unsigned char *out,
    unsigned long len);
unsigned long hp11_crypt(hp11_module *m, int op, unsigned long session, CK_MECHANISM *mech,
    unsigned long key, const unsigned char *in, unsigned long in_len, unsigned char *out,
    unsigned long *out_len);
unsigned long hp11_gcm(hp11_module *m, int op, unsigned long session, unsigned long key,
    const unsigned char *iv, unsigned long iv_len, const unsigned char *aad,
    unsigned long aad_len, const unsigned char *in, unsigned long in_len, unsigned char *out,
    unsigned long *out_len);

#define HP11_JOB_QUEUED 0
#define HP11_JOB_RUNNING 1
#define HP11_JOB_DONE 2
#define HP11_WAIT_DONE 0
#define HP11_WAIT_HUNG 1
#define HP11_WAIT_DEADLINE 2
typedef struct hp11_exec hp11_exec;
typedef struct hp11_job hp11_job;
typedef struct hp11_notifier hp11_notifier;

hp11_notifier *hp11_notifier_new(int fd);
void hp11_notifier_detach(hp11_notifier *n);
void hp11_notifier_free(hp11_notifier *n);
size_t hp11_notifier_take(hp11_notifier *n, uint64_t *tags, size_t max);

hp11_exec *hp11_exec_new(int max_threads, long spin_us);
int hp11_exec_stop(hp11_exec *e, long timeout_us);
void hp11_exec_free(hp11_exec *e);
void hp11_exec_stats(hp11_exec *e, int *threads, int *idle, int *busy, int *queued);
#define HP11_KICK_US 2000
void hp11_exec_kick(hp11_exec *e);

hp11_job *hp11_job_new(hp11_notifier *notifier);
void hp11_job_free(hp11_job *j);
int hp11_job_wait(hp11_job *j, long hang_us, long deadline_us);
int hp11_job_state(const hp11_job *j);
long hp11_job_running_us(const hp11_job *j);
unsigned long hp11_job_rv(const hp11_job *j);

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
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "hsmpool._p11_cffi",
    '#include "p11glue.h"\n#include "p11exec.h"\n',
    sources=[_rel(HERE / "p11glue.c"), _rel(HERE / "p11exec.c")],
    include_dirs=[_rel(HERE), "/usr/include/p11-kit-1"],
    libraries=["dl", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
