/* The audit trail's writer (kms/audit.py): a thread that encodes, hash-chains and commits
 * audit records to one SQLite segment in batches ("group commit"), without Python.
 *
 * The segment's schema and head are set up by Python first (kms/audit.py); the writer gets
 * the head (last seq and hash) and owns the file from then on. A record is appended as its
 * fields, already UTF-8 (lone surrogates as "surrogatepass" sequences), the time already
 * written as Python's repr(float) and the details as canonical JSON; the writer builds the
 * canonical record text exactly as ``json.dumps([2, time, ...], sort_keys=True,
 * separators=(",", ":"), ensure_ascii=True)`` would, then
 *
 *     hash = SHA-256(prev_hash || seq as 8-byte big-endian || record)
 *
 * and commits a batch (rows, then the head and its optional HMAC) in one transaction.
 *
 * Batching: the writer sleeps until wake_at records are queued, max_delay_us passed since
 * it saw the first one, or a flush or close asks. A failed write fails the writer closed:
 * every later append, flush and close reports the error (auditw_error).
 */
#ifndef HSMPOOL_AUDITW_H
#define HSMPOOL_AUDITW_H
#include <stddef.h>
#include <stdint.h>

typedef struct auditw auditw;

/* NULL on failure, with a message in err. head_key may be NULL (no head MAC). */
auditw *auditw_open(const char *path, const char *segment, uint64_t seq,
                    const unsigned char *hash32, const unsigned char *head_key,
                    size_t head_key_len, int sync, int wake_at, long max_delay_us,
                    char *err, size_t errlen);
/* Build and queue one record. 0, or -1 if the writer failed or is closed. key_id and
 * key_version may be NULL (JSON null). */
int auditw_append(auditw *w, const char *time_repr, const char *instance,
                  size_t instance_len, const char *principal, size_t principal_len,
                  const char *action, size_t action_len, const char *key_id, size_t key_id_len,
                  const char *key_version, size_t key_version_len, const char *result,
                  size_t result_len, const char *request_id, size_t request_id_len,
                  const char *details_json, size_t details_len);
/* Wait until everything appended before the call is committed. 0 done, 1 timeout (a
 * negative timeout waits for ever), -1 failed. */
int auditw_flush(auditw *w, long timeout_us);
/* Commit what is queued, stop the thread, close the file and free w. 0, or -1 if the writer
 * had failed (the message is copied to err). */
int auditw_close(auditw *w, char *err, size_t errlen);
/* Fail the writer (a caller could not build a record): later calls report message. */
void auditw_fail(auditw *w, const char *message);
size_t auditw_pending(auditw *w);
uint64_t auditw_commits(auditw *w);
uint64_t auditw_last_seq(auditw *w);
/* Copies the failure message (empty if none) into buf; 1 if the writer failed. */
int auditw_error(auditw *w, char *buf, size_t len);
#endif
