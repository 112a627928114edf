"""cffi (API mode) build script for the audit trail's writer: ``kms._auditw_cffi``.

``native/auditw.c`` encodes, hash-chains and commits audit records in a thread of its own,
over the system's libsqlite3 and libcrypto, so the service's threads never wait for the
writer's Python (there is none) or its GIL: measured on this project's machine, the Python
writer's encoding and hashing cost about 12 us per record in the server's hot path, most
of it contention for the GIL with the request thread.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


CDEF = """
typedef struct auditw auditw;
auditw *auditw_open(const char *path, const char *segment, uint64_t seq,
                    const unsigned char *hash32, const unsigned char *head_key,
                    size_t head_key_len, int sync, int wake_at, long max_delay_us,
                    char *err, size_t errlen);
int auditw_append(auditw *w, const char *time_repr, const char *instance,
                  size_t instance_len, const char *principal, size_t principal_len,
                  const char *action, size_t action_len, const char *key_id, size_t key_id_len,
                  const char *key_version, size_t key_version_len, const char *result,
                  size_t result_len, const char *request_id, size_t request_id_len,
                  const char *details_json, size_t details_len);
int auditw_flush(auditw *w, long timeout_us);
int auditw_close(auditw *w, char *err, size_t errlen);
void auditw_fail(auditw *w, const char *message);
size_t auditw_pending(auditw *w);
uint64_t auditw_commits(auditw *w);
uint64_t auditw_last_seq(auditw *w);
int auditw_error(auditw *w, char *buf, size_t len);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "kms._auditw_cffi",
    '#include "auditw.h"\n',
    sources=[_rel(HERE / "auditw.c")],
    include_dirs=[_rel(HERE)],
    libraries=["sqlite3", "crypto", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
