/* See auditw.h. */
#define _GNU_SOURCE
#include "auditw.h"

#include <errno.h>
#include <stddef.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BATCH 8192   /* records per transaction at most */
#define INSERT_MAX 64    /* rows per INSERT statement at most (powers of two up to this) */
#define N_INSERTS 7      /* statements for 1, 2, 4, ... 64 rows */

static const char HEAD_TAG[] = "hsmpool-audit-head/1";  /* followed by a NUL in the MAC */

struct item {
    struct item *next;
    size_t len;
    char text[];
};

enum { W_RUNNING = 0, W_EMPTY = 1, W_FILLING = 2 };

struct auditw {
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* the writer waits here */
    pthread_cond_t done;      /* flushers wait here */
    pthread_t thread;
    sqlite3 *db;
    sqlite3_stmt *ins[N_INSERTS];
    sqlite3_stmt *head;
    char *segment;
    unsigned char key[128];
    size_t keylen;
    int has_key;
    /* committed state (the writer's; read under mu) */
    uint64_t seq;
    unsigned char hash[32];
    uint64_t commits;
    uint64_t committed;       /* appended records that are committed */
    /* queue */
    struct item *qhead, *qtail;
    size_t queued;
    uint64_t appended;
    struct timespec first_at; /* when the oldest queued record arrived */
    int wstate, urgent, closing, failed;
    char err[512];
    int wake_at;
    long max_delay_us;
};

/* --- the record text ------------------------------------------------------------------- */

typedef struct { char *p; size_t n, cap; } buf_t;

static int grow(buf_t *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int put(buf_t *b, const char *s, size_t n) {
    if (grow(b, n)) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

static int put_u(buf_t *b, unsigned cp) {
    char e[6] = {'\\', 'u', HEX[(cp >> 12) & 15], HEX[(cp >> 8) & 15], HEX[(cp >> 4) & 15],
                 HEX[cp & 15]};
    return put(b, e, 6);
}

/* A JSON string as Python's json.encoder.encode_basestring_ascii writes it, from UTF-8 (with
 * surrogates allowed, as "surrogatepass" encodes them). -1 on bad UTF-8 or no memory. */
static int put_json_string(buf_t *b, const unsigned char *s, size_t n) {
    if (grow(b, n + 2)) return -1;
    b->p[b->n++] = '"';
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        unsigned cp;
        if (c < 0x80) {
            i += 1;
            if (c >= 0x20 && c <= 0x7e && c != '"' && c != '\\') {
                if (grow(b, 1)) return -1;
                b->p[b->n++] = (char)c;
                continue;
            }
            const char *esc = NULL;
            switch (c) {
            case '"': esc = "\\\""; break;
            case '\\': esc = "\\\\"; break;
            case '\n': esc = "\\n"; break;
            case '\r': esc = "\\r"; break;
            case '\t': esc = "\\t"; break;
            case '\b': esc = "\\b"; break;
            case '\f': esc = "\\f"; break;
            default: break;
            }
            if (esc ? put(b, esc, 2) : put_u(b, c)) return -1;
            continue;
        }
        if ((c & 0xE0) == 0xC0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
            cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
            if (cp < 0x80) return -1;
            i += 2;
        } else if ((c & 0xF0) == 0xE0 && i + 2 < n && (s[i + 1] & 0xC0) == 0x80
                   && (s[i + 2] & 0xC0) == 0x80) {
            cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
            if (cp < 0x800) return -1;
            i += 3;
        } else if ((c & 0xF8) == 0xF0 && i + 3 < n && (s[i + 1] & 0xC0) == 0x80
                   && (s[i + 2] & 0xC0) == 0x80 && (s[i + 3] & 0xC0) == 0x80) {
            cp = ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6)
                 | (s[i + 3] & 0x3F);
            if (cp < 0x10000 || cp > 0x10FFFF) return -1;
            i += 4;
        } else {
            return -1;
        }
        if (cp >= 0x10000) {
            cp -= 0x10000;
            if (put_u(b, 0xD800 | (cp >> 10)) || put_u(b, 0xDC00 | (cp & 0x3FF))) return -1;
        } else if (put_u(b, cp)) {
            return -1;
        }
    }
    if (grow(b, 1)) return -1;
    b->p[b->n++] = '"';
    return 0;
}

static int put_opt(buf_t *b, const char *s, size_t n) {
    return s ? put_json_string(b, (const unsigned char *)s, n) : put(b, "null", 4);
}

/* --- SQLite ---------------------------------------------------------------------------- */

static void set_err(auditw *w, const char *what, const char *detail) {
    snprintf(w->err, sizeof w->err, "%s: %s", what, detail ? detail : "");
}

static int prepare(auditw *w) {
    char sql[64 * 24 + 128];
    for (int k = 0; k < N_INSERTS; k++) {
        int rows = 1 << k;
        size_t n = (size_t)snprintf(sql, sizeof sql,
                                    "INSERT INTO records (seq, record, prev_hash, hash) VALUES ");
        for (int r = 0; r < rows; r++) n += (size_t)snprintf(sql + n, sizeof sql - n, "%s(?,?,?,?)",
                                                             r ? "," : "");
        if (sqlite3_prepare_v2(w->db, sql, -1, &w->ins[k], NULL) != SQLITE_OK) return -1;
    }
    return sqlite3_prepare_v2(w->db, "UPDATE head SET seq = ?, hash = ?, mac = ? WHERE id = 1",
                              -1, &w->head, NULL) == SQLITE_OK ? 0 : -1;
}

static int exec(auditw *w, const char *sql) {
    return sqlite3_exec(w->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static void head_mac(const auditw *w, uint64_t seq, const unsigned char *hash,
                     unsigned char *mac) {
    size_t sl = strlen(w->segment);
    size_t n = sizeof HEAD_TAG + sl + 1 + 8 + 32;
    unsigned char *msg = malloc(n);
    unsigned int maclen = 32;
    if (!msg) { memset(mac, 0, 32); return; }
    size_t o = 0;
    memcpy(msg, HEAD_TAG, sizeof HEAD_TAG);  /* includes the NUL */
    o += sizeof HEAD_TAG;
    memcpy(msg + o, w->segment, sl);
    o += sl;
    msg[o++] = 0;
    for (int i = 7; i >= 0; i--) msg[o++] = (unsigned char)(seq >> (8 * i));
    memcpy(msg + o, hash, 32);
    HMAC(EVP_sha256(), w->key, (int)w->keylen, msg, n, mac, &maclen);
    free(msg);
}

/* Write one batch in one transaction. 0, or -1 with w->err set (the transaction rolled
 * back: nothing of the batch is stored). Runs without the lock. */
static int write_batch(auditw *w, struct item *batch, size_t count, uint64_t *seq_io,
                       unsigned char *hash_io) {
    uint64_t seq = *seq_io;
    unsigned char prev[32], h[32];
    memcpy(prev, hash_io, 32);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md) { set_err(w, "audit write failed", "out of memory"); return -1; }
    if (exec(w, "BEGIN IMMEDIATE")) {
        set_err(w, "audit write failed", sqlite3_errmsg(w->db));
        EVP_MD_CTX_free(md);
        return -1;
    }
    /* rows are bound in groups of 2^k; hashes need each previous one: keep a small ring */
    unsigned char (*hashes)[32] = malloc(INSERT_MAX * 64);
    if (!hashes) goto fail_mem;
    struct item *it = batch;
    size_t left = count;
    while (left) {
        int k = N_INSERTS - 1;
        while ((size_t)(1 << k) > left) k--;
        int rows = 1 << k;
        sqlite3_stmt *st = w->ins[k];
        for (int r = 0; r < rows; r++, it = it->next) {
            unsigned char be[8];
            seq++;
            for (int i = 7; i >= 0; i--) be[7 - i] = (unsigned char)(seq >> (8 * i));
            unsigned int hl = 32;
            if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL) || !EVP_DigestUpdate(md, prev, 32)
                || !EVP_DigestUpdate(md, be, 8) || !EVP_DigestUpdate(md, it->text, it->len)
                || !EVP_DigestFinal_ex(md, h, &hl)) {
                set_err(w, "audit write failed", "SHA-256 failed");
                goto fail;
            }
            memcpy(hashes[2 * r], prev, 32);
            memcpy(hashes[2 * r + 1], h, 32);
            sqlite3_bind_int64(st, 4 * r + 1, (sqlite3_int64)seq);
            sqlite3_bind_text(st, 4 * r + 2, it->text, (int)it->len, SQLITE_STATIC);
            sqlite3_bind_blob(st, 4 * r + 3, hashes[2 * r], 32, SQLITE_STATIC);
            sqlite3_bind_blob(st, 4 * r + 4, hashes[2 * r + 1], 32, SQLITE_STATIC);
            memcpy(prev, h, 32);
        }
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_DONE) {
            set_err(w, "audit write failed", sqlite3_errmsg(w->db));
            goto fail;
        }
        left -= (size_t)rows;
    }
    unsigned char mac[32];
    sqlite3_bind_int64(w->head, 1, (sqlite3_int64)seq);
    sqlite3_bind_blob(w->head, 2, prev, 32, SQLITE_STATIC);
    if (w->has_key) {
        head_mac(w, seq, prev, mac);
        sqlite3_bind_blob(w->head, 3, mac, 32, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(w->head, 3);
    }
    int rc = sqlite3_step(w->head);
    sqlite3_reset(w->head);
    sqlite3_clear_bindings(w->head);
    if (rc != SQLITE_DONE || exec(w, "COMMIT")) {
        set_err(w, "audit write failed", sqlite3_errmsg(w->db));
        goto fail;
    }
    free(hashes);
    EVP_MD_CTX_free(md);
    *seq_io = seq;
    memcpy(hash_io, prev, 32);
    return 0;
fail_mem:
    set_err(w, "audit write failed", "out of memory");
fail:
    exec(w, "ROLLBACK");
    free(hashes);
    EVP_MD_CTX_free(md);
    return -1;
}

/* --- the writer thread ------------------------------------------------------------------ */

static void free_items(struct item *it) {
    while (it) {
        struct item *next = it->next;
        free(it);
        it = next;
    }
}

static void *run(void *arg) {
    auditw *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->queued && !w->closing) {
            w->wstate = W_EMPTY;
            pthread_cond_wait(&w->wake, &w->mu);
        }
        w->wstate = W_RUNNING;
        if (!w->queued && w->closing) break;
        if (w->queued < (size_t)w->wake_at && !w->urgent && !w->closing && w->max_delay_us > 0) {
            struct timespec until = w->first_at;
            long long ns = until.tv_nsec + (long long)w->max_delay_us * 1000LL;
            until.tv_sec += ns / 1000000000LL;
            until.tv_nsec = ns % 1000000000LL;
            w->wstate = W_FILLING;
            while (w->queued < (size_t)w->wake_at && !w->urgent && !w->closing) {
                if (pthread_cond_timedwait(&w->wake, &w->mu, &until) == ETIMEDOUT) break;
            }
            w->wstate = W_RUNNING;
        }
        /* take up to a transaction's worth */
        size_t n = w->queued < MAX_BATCH ? w->queued : MAX_BATCH;
        struct item *batch = w->qhead, *last = batch;
        for (size_t i = 1; i < n; i++) last = last->next;
        w->qhead = last->next;
        last->next = NULL;
        if (!w->qhead) w->qtail = NULL;
        w->queued -= n;
        if (w->queued) clock_gettime(CLOCK_MONOTONIC, &w->first_at);
        else w->urgent = 0;
        uint64_t seq = w->seq;
        unsigned char hash[32];
        memcpy(hash, w->hash, 32);
        pthread_mutex_unlock(&w->mu);

        int rc = write_batch(w, batch, n, &seq, hash);
        free_items(batch);

        pthread_mutex_lock(&w->mu);
        if (rc) {
            w->failed = 1;
            free_items(w->qhead);  /* fail closed: nothing after a failed batch is written */
            w->qhead = w->qtail = NULL;
            w->queued = 0;
            pthread_cond_broadcast(&w->done);
            break;
        }
        w->seq = seq;
        memcpy(w->hash, hash, 32);
        w->committed += n;
        w->commits++;
        pthread_cond_broadcast(&w->done);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* --- API ------------------------------------------------------------------------------- */

auditw *auditw_open(const char *path, const char *segment, uint64_t seq,
                    const unsigned char *hash32, const unsigned char *head_key,
                    size_t head_key_len, int sync, int wake_at, long max_delay_us,
                    char *err, size_t errlen) {
    auditw *w = calloc(1, sizeof *w);
    if (!w || head_key_len > sizeof w->key) {
        snprintf(err, errlen, "cannot start the audit writer");
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_cond_init(&w->done, &ca);
    pthread_condattr_destroy(&ca);
    w->segment = strdup(segment);
    w->seq = seq;
    memcpy(w->hash, hash32, 32);
    if (head_key) {
        memcpy(w->key, head_key, head_key_len);
        w->keylen = head_key_len;
        w->has_key = 1;
    }
    w->wake_at = wake_at > 0 ? wake_at : 1;
    w->max_delay_us = max_delay_us;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
    if (!w->segment || sqlite3_open_v2(path, &w->db, flags, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, w->db ? sqlite3_errmsg(w->db) : "no memory");
        goto fail;
    }
    sqlite3_busy_timeout(w->db, 5000);
    if (exec(w, "PRAGMA journal_mode = WAL")
        || exec(w, sync ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL")
        || prepare(w)) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(w->db));
        goto fail;
    }
    if (pthread_create(&w->thread, NULL, run, w) != 0) {
        snprintf(err, errlen, "cannot start the audit writer thread");
        goto fail;
    }
    return w;
fail:
    for (int k = 0; k < N_INSERTS; k++) sqlite3_finalize(w->ins[k]);
    sqlite3_finalize(w->head);
    sqlite3_close(w->db);
    free(w->segment);
    free(w);
    return NULL;
}

int auditw_append(auditw *w, const char *time_repr, const char *instance,
                  size_t instance_len, const char *principal, size_t principal_len,
                  const char *action, size_t action_len, const char *key_id, size_t key_id_len,
                  const char *key_version, size_t key_version_len, const char *result,
                  size_t result_len, const char *request_id, size_t request_id_len,
                  const char *details_json, size_t details_len) {
    buf_t b = {0};
    if (grow(&b, offsetof(struct item, text) + 160 + instance_len + principal_len + action_len
                 + key_id_len + key_version_len + result_len + request_id_len + details_len)) {
        return -1;
    }
    b.n = offsetof(struct item, text);  /* the text follows the item header, one allocation */
    int bad = put(&b, "[2,", 3) || put(&b, time_repr, strlen(time_repr)) || put(&b, ",", 1)
              || put_json_string(&b, (const unsigned char *)instance, instance_len)
              || put(&b, ",", 1)
              || put_json_string(&b, (const unsigned char *)principal, principal_len)
              || put(&b, ",", 1)
              || put_json_string(&b, (const unsigned char *)action, action_len)
              || put(&b, ",", 1) || put_opt(&b, key_id, key_id_len) || put(&b, ",", 1)
              || put_opt(&b, key_version, key_version_len) || put(&b, ",", 1)
              || put_json_string(&b, (const unsigned char *)result, result_len)
              || put(&b, ",", 1)
              || put_json_string(&b, (const unsigned char *)request_id, request_id_len)
              || put(&b, ",", 1) || put(&b, details_json, details_len) || put(&b, "]", 1);
    if (bad) {
        free(b.p);
        return -2;
    }
    struct item *it = (struct item *)b.p;
    it->next = NULL;
    it->len = b.n - offsetof(struct item, text);
    pthread_mutex_lock(&w->mu);
    if (w->failed || w->closing) {
        pthread_mutex_unlock(&w->mu);
        free(it);
        return -1;
    }
    if (w->qtail) w->qtail->next = it; else w->qhead = it;
    w->qtail = it;
    if (w->queued++ == 0) clock_gettime(CLOCK_MONOTONIC, &w->first_at);
    w->appended++;
    if (w->wstate == W_EMPTY || (w->wstate == W_FILLING && w->queued >= (size_t)w->wake_at)) {
        w->wstate = W_RUNNING;
        pthread_cond_signal(&w->wake);
    }
    pthread_mutex_unlock(&w->mu);
    return 0;
}

int auditw_flush(auditw *w, long timeout_us) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long long ns = until.tv_nsec + (long long)(timeout_us > 0 ? timeout_us : 0) * 1000LL;
    until.tv_sec += ns / 1000000000LL;
    until.tv_nsec = ns % 1000000000LL;
    pthread_mutex_lock(&w->mu);
    uint64_t target = w->appended;
    if (w->committed < target && !w->failed) {
        w->urgent = 1;
        pthread_cond_signal(&w->wake);
    }
    int rc = 0;
    while (w->committed < target && !w->failed) {
        if (timeout_us < 0) {
            pthread_cond_wait(&w->done, &w->mu);
        } else if (pthread_cond_timedwait(&w->done, &w->mu, &until) == ETIMEDOUT) {
            rc = w->committed < target && !w->failed ? 1 : 0;
            break;
        }
    }
    if (w->failed) rc = -1;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void auditw_fail(auditw *w, const char *message) {
    pthread_mutex_lock(&w->mu);
    if (!w->failed) {
        w->failed = 1;
        snprintf(w->err, sizeof w->err, "%s", message);
        free_items(w->qhead);
        w->qhead = w->qtail = NULL;
        w->queued = 0;
        pthread_cond_signal(&w->wake);
        pthread_cond_broadcast(&w->done);
    }
    pthread_mutex_unlock(&w->mu);
}

int auditw_close(auditw *w, char *err, size_t errlen) {
    pthread_mutex_lock(&w->mu);
    w->closing = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    int failed = w->failed;
    if (err && errlen) snprintf(err, errlen, "%s", failed ? w->err : "");
    free_items(w->qhead);
    for (int k = 0; k < N_INSERTS; k++) sqlite3_finalize(w->ins[k]);
    sqlite3_finalize(w->head);
    sqlite3_close(w->db);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->wake);
    pthread_cond_destroy(&w->done);
    OPENSSL_cleanse(w->key, sizeof w->key);
    free(w->segment);
    free(w);
    return failed ? -1 : 0;
}

size_t auditw_pending(auditw *w) {
    pthread_mutex_lock(&w->mu);
    size_t n = w->queued;
    pthread_mutex_unlock(&w->mu);
    return n;
}

uint64_t auditw_commits(auditw *w) {
    pthread_mutex_lock(&w->mu);
    uint64_t n = w->commits;
    pthread_mutex_unlock(&w->mu);
    return n;
}

uint64_t auditw_last_seq(auditw *w) {
    pthread_mutex_lock(&w->mu);
    uint64_t n = w->seq;
    pthread_mutex_unlock(&w->mu);
    return n;
}

int auditw_error(auditw *w, char *buf, size_t len) {
    pthread_mutex_lock(&w->mu);
    int failed = w->failed;
    snprintf(buf, len, "%s", failed ? w->err : "");
    pthread_mutex_unlock(&w->mu);
    return failed;
}
