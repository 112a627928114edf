/*
 * p11shim.c - a PKCS#11 2.40 module that forwards every call to a "real" module.
 *
 * Why it exists
 *   1. One .so can be dlopen'ed only once per process (glibc dedups by inode), but the pool
 *      loads several real modules side by side. The Python loader (hsmpool/_shim.py) copies
 *      this file to <cache>/p11shim-<hash>.so and writes <copy>.target with the absolute path
 *      of the real module. Each copy is a distinct inode, so each copy gets its own globals.
 *   2. python-pkcs11 calls C_Initialize(NULL). SoftHSM2 then runs without any locking and
 *      crashes under concurrent sessions. The shim forwards C_Initialize(NULL) as
 *      C_Initialize({flags = CKF_OS_LOCKING_OK, no mutex callbacks}).
 *   3. Fault injection for tests (HSMPOOL_P11_FAULTS, see below). When the variable is unset
 *      at C_Initialize time, every wrapper is a single predictable branch plus the forward.
 *
 * Real module selection (in C_GetFunctionList, once per copy)
 *   dladdr() on one of our own symbols -> own path P; read P.target (first line, absolute
 *   path); if P.target does not exist fall back to $HSMPOOL_P11_MODULE. The real module is
 *   dlopen'ed with RTLD_NOW | RTLD_LOCAL and never unloaded. Any failure -> CKR_GENERAL_ERROR.
 *
 * Fault rules (file named by $HSMPOOL_P11_FAULTS when C_Initialize succeeds)
 *   One rule per line, '#' starts a comment:
 *       label=<token label> fault=device_error|device_removed|hang [every=N] [hang_ms=M]
 *   A label holding blanks may be written in double quotes: label="my token".
 *   Every wrapped call that concerns a token (takes a slot id, or a session opened on a slot)
 *   consults the rules: the per-token counter is bumped and, when counter % N == 0, the fault
 *   fires: CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, or (hang) sleep M ms then forward normally.
 *   The file is stat'ed once per such call and re-read when its inode, size or mtime (ns)
 *   changes; the per-token counters restart at every re-read. Missing/empty file = no faults.
 *   Calls not tied to a token (C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList,
 *   C_GetSlotList, C_WaitForSlotEvent) are never faulted. Sessions are tracked in a fixed
 *   open-addressing table (no growth); sessions beyond its capacity are simply not faulted.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define SHIM_EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ------------------------------------------------------------------------------------------ */
/* Real module                                                                                */
/* ------------------------------------------------------------------------------------------ */

static pthread_mutex_t g_load_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_real_handle;               /* dlopen handle of the real module, never closed */
static CK_FUNCTION_LIST_PTR g_real;       /* the real module's function list */
static CK_FUNCTION_LIST g_list;           /* ours, filled once by fill_list() */

/* Copies the first line of `path` (without trailing blanks) into out; 0 on success, -1 on a
 * read error with errno set (ENOENT when the file does not exist), -2 when unusable. */
static int read_first_line(const char *path, char *out, size_t outsz)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    if (fgets(out, (int)outsz, f) == NULL) {
        fclose(f);
        return -2;
    }
    fclose(f);
    size_t n = strlen(out);
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ' ||
                     out[n - 1] == '\t'))
        out[--n] = '\0';
    return n > 0 ? 0 : -2;
}

/* Resolves which real module to load: 0 and `out` filled, or -1. */
static int find_target(char *out, size_t outsz)
{
    Dl_info info;
    memset(&info, 0, sizeof info);
    if (dladdr((void *)&g_list, &info) != 0 && info.dli_fname != NULL &&
        info.dli_fname[0] != '\0') {
        char sidecar[PATH_MAX + 16];
        int len = snprintf(sidecar, sizeof sidecar, "%s.target", info.dli_fname);
        if (len > 0 && (size_t)len < sizeof sidecar) {
            int rc = read_first_line(sidecar, out, outsz);
            if (rc == 0)
                return 0;
            if (!(rc == -1 && errno == ENOENT))
                return -1; /* a sidecar exists but is unusable: do not guess */
        }
    }
    const char *env = getenv("HSMPOOL_P11_MODULE");
    if (env == NULL || env[0] == '\0' || strlen(env) >= outsz)
        return -1;
    strcpy(out, env);
    return 0;
}

static void fill_list(void);

/* Lets a shim copy recognise another one (see load_real). */
SHIM_EXPORT const char hsmpool_p11shim_marker[] = "hsmpool p11shim";

/* Loads the real module once; CKR_OK or CKR_GENERAL_ERROR. */
static CK_RV load_real(void)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    pthread_mutex_lock(&g_load_lock);
    if (g_real != NULL) {
        rv = CKR_OK;
        goto out;
    }
    char target[PATH_MAX + 1];
    if (find_target(target, sizeof target) != 0)
        goto out;
    void *h = g_real_handle;
    if (h == NULL) {
        h = dlopen(target, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL)
            goto out;
        g_real_handle = h;
    }
    CK_C_GetFunctionList get = NULL;
    void *sym = dlsym(h, "C_GetFunctionList");
    memcpy(&get, &sym, sizeof get); /* object -> function pointer, the POSIX way */
    /* A target that is a shim copy (or this very file) would recurse: refuse it. */
    if (get == NULL || dlsym(h, "hsmpool_p11shim_marker") != NULL)
        goto out;
    CK_FUNCTION_LIST_PTR real = NULL;
    if (get(&real) != CKR_OK || real == NULL)
        goto out;
    fill_list();
    g_list.version = real->version;
    __atomic_store_n(&g_real, real, __ATOMIC_RELEASE);
    rv = CKR_OK;
out:
    pthread_mutex_unlock(&g_load_lock);
    return rv;
}

/* ------------------------------------------------------------------------------------------ */
/* Fault injection state (touched only when g_faults_on)                                      */
/* ------------------------------------------------------------------------------------------ */

enum fault_kind { FAULT_NONE = 0, FAULT_DEVICE_ERROR, FAULT_DEVICE_REMOVED, FAULT_HANG };

#define MAX_RULES 64
#define MAX_LABEL 64 /* token labels are 32 bytes; longer rule labels simply never match */
#define MAX_SLOTS 256
#define SESSION_BITS 15
#define SESSION_CAP (1u << SESSION_BITS)
#define SESSION_MAX_FILL (SESSION_CAP / 4 * 3)
#define MAX_HANG_MS 600000UL
#define MAX_RULES_FILE 65536

struct rule {
    char label[MAX_LABEL + 1];
    enum fault_kind kind;
    unsigned long every;
    unsigned long hang_ms;
};

struct slot_entry {
    CK_SLOT_ID id;
    int have_label;
    char label[33];
    unsigned long counter; /* calls to this token since the rules were last (re)loaded */
};

struct session_entry {
    CK_SESSION_HANDLE handle; /* 0 (CK_INVALID_HANDLE) marks an empty bucket */
    CK_SLOT_ID slot;
};

static int g_faults_on;                   /* read with relaxed atomics on the fast path */
static pthread_mutex_t g_fault_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_fault_path[PATH_MAX + 1];

/* All below guarded by g_fault_lock. */
static int g_rules_loaded;                /* 0: never stat'ed yet */
static dev_t g_rules_dev;
static ino_t g_rules_ino;
static off_t g_rules_size;
static struct timespec g_rules_mtime;
static int g_rules_exist;
static struct rule g_rules[MAX_RULES];
static size_t g_nrules;
static struct slot_entry g_slots[MAX_SLOTS];
static size_t g_nslots;
static struct session_entry g_sessions[SESSION_CAP];
static size_t g_nsessions;

static size_t session_bucket(CK_SESSION_HANDLE h)
{
    uint64_t x = (uint64_t)h * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(x >> (64 - SESSION_BITS));
}

/* Caller holds g_fault_lock. */
static void session_put(CK_SESSION_HANDLE h, CK_SLOT_ID slot)
{
    if (h == CK_INVALID_HANDLE)
        return;
    size_t i = session_bucket(h);
    for (;;) {
        if (g_sessions[i].handle == h) {
            g_sessions[i].slot = slot;
            return;
        }
        if (g_sessions[i].handle == CK_INVALID_HANDLE)
            break;
        i = (i + 1) & (SESSION_CAP - 1);
    }
    if (g_nsessions >= SESSION_MAX_FILL)
        return; /* full: this session is not tracked, so never faulted */
    g_sessions[i].handle = h;
    g_sessions[i].slot = slot;
    g_nsessions++;
}

/* Caller holds g_fault_lock. Returns 1 and *slot, or 0. */
static int session_get(CK_SESSION_HANDLE h, CK_SLOT_ID *slot)
{
    if (h == CK_INVALID_HANDLE)
        return 0;
    size_t i = session_bucket(h);
    while (g_sessions[i].handle != CK_INVALID_HANDLE) {
        if (g_sessions[i].handle == h) {
            *slot = g_sessions[i].slot;
            return 1;
        }
        i = (i + 1) & (SESSION_CAP - 1);
    }
    return 0;
}

/* Caller holds g_fault_lock. Linear probing with backward-shift deletion: no tombstones, so
 * probe sequences never degrade however many sessions come and go. */
static void session_del(CK_SESSION_HANDLE h)
{
    if (h == CK_INVALID_HANDLE)
        return;
    size_t i = session_bucket(h);
    while (g_sessions[i].handle != h) {
        if (g_sessions[i].handle == CK_INVALID_HANDLE)
            return;
        i = (i + 1) & (SESSION_CAP - 1);
    }
    size_t hole = i;
    size_t j = i;
    for (;;) {
        j = (j + 1) & (SESSION_CAP - 1);
        if (g_sessions[j].handle == CK_INVALID_HANDLE)
            break;
        size_t home = session_bucket(g_sessions[j].handle);
        /* Entry j may move into the hole iff its home is not cyclically in (hole, j]. */
        int home_in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!home_in_range) {
            g_sessions[hole] = g_sessions[j];
            hole = j;
        }
    }
    g_sessions[hole].handle = CK_INVALID_HANDLE;
    g_nsessions--;
}

/* Caller holds g_fault_lock. Drops every session of `slot` (C_CloseAllSessions). */
static void session_del_slot(CK_SLOT_ID slot)
{
    int again = 1;
    while (again) { /* deletion shifts entries, so rescan until a clean pass */
        again = 0;
        for (size_t i = 0; i < SESSION_CAP; i++) {
            if (g_sessions[i].handle != CK_INVALID_HANDLE && g_sessions[i].slot == slot) {
                session_del(g_sessions[i].handle);
                again = 1;
            }
        }
    }
}

/* Caller holds g_fault_lock. */
static struct slot_entry *slot_find(CK_SLOT_ID id)
{
    for (size_t i = 0; i < g_nslots; i++)
        if (g_slots[i].id == id)
            return &g_slots[i];
    return NULL;
}

/* ---- rules file parsing ---- */

static const char *skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\r')
        p++;
    return p;
}

/* Parses one unsigned decimal; 0 on success. */
static int parse_ulong(const char *s, size_t n, unsigned long *out)
{
    if (n == 0 || n > 12)
        return -1;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* Parses one line into r; 1 = rule, 0 = blank/comment/invalid (ignored). */
static int parse_rule(const char *line, struct rule *r)
{
    memset(r, 0, sizeof *r);
    r->every = 1;
    int have_label = 0;
    const char *p = skip_blanks(line);
    while (*p != '\0' && *p != '#' && *p != '\n') {
        const char *key = p;
        while (*p != '=' && *p != ' ' && *p != '\t' && *p != '\0' && *p != '\n')
            p++;
        if (*p != '=')
            return 0;
        size_t klen = (size_t)(p - key);
        p++;
        const char *val;
        size_t vlen;
        if (*p == '"') {
            val = ++p;
            while (*p != '"' && *p != '\0' && *p != '\n')
                p++;
            if (*p != '"')
                return 0;
            vlen = (size_t)(p - val);
            p++;
        } else {
            val = p;
            while (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\0' && *p != '\n' &&
                   *p != '#')
                p++;
            vlen = (size_t)(p - val);
        }
        if (klen == 5 && memcmp(key, "label", 5) == 0) {
            if (vlen == 0 || vlen > MAX_LABEL)
                return 0;
            memcpy(r->label, val, vlen);
            r->label[vlen] = '\0';
            have_label = 1;
        } else if (klen == 5 && memcmp(key, "fault", 5) == 0) {
            if (vlen == 12 && memcmp(val, "device_error", 12) == 0)
                r->kind = FAULT_DEVICE_ERROR;
            else if (vlen == 14 && memcmp(val, "device_removed", 14) == 0)
                r->kind = FAULT_DEVICE_REMOVED;
            else if (vlen == 4 && memcmp(val, "hang", 4) == 0)
                r->kind = FAULT_HANG;
            else
                return 0;
        } else if (klen == 5 && memcmp(key, "every", 5) == 0) {
            if (parse_ulong(val, vlen, &r->every) != 0 || r->every == 0)
                return 0;
        } else if (klen == 7 && memcmp(key, "hang_ms", 7) == 0) {
            if (parse_ulong(val, vlen, &r->hang_ms) != 0)
                return 0;
            if (r->hang_ms > MAX_HANG_MS)
                r->hang_ms = MAX_HANG_MS;
        } else {
            return 0; /* unknown key: ignore the whole line rather than half-apply it */
        }
        p = skip_blanks(p);
    }
    return have_label && r->kind != FAULT_NONE;
}

/* Caller holds g_fault_lock. Replaces the rule set with the file's content. */
static void rules_read(void)
{
    g_nrules = 0;
    FILE *f = fopen(g_fault_path, "re");
    if (f == NULL)
        return;
    static char buf[MAX_RULES_FILE + 1];
    size_t n = fread(buf, 1, MAX_RULES_FILE, f);
    fclose(f);
    buf[n] = '\0';
    char *line = buf;
    while (line != NULL && *line != '\0' && g_nrules < MAX_RULES) {
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        if (parse_rule(line, &g_rules[g_nrules]))
            g_nrules++;
        line = nl != NULL ? nl + 1 : NULL;
    }
}

/* Caller holds g_fault_lock; st/st_ok come from one stat() made by this call. */
static void rules_refresh(const struct stat *st, int st_ok)
{
    if (!st_ok) {
        if (g_rules_loaded && !g_rules_exist)
            return;
        g_rules_loaded = 1;
        g_rules_exist = 0;
        g_nrules = 0;
    } else {
        if (g_rules_loaded && g_rules_exist && st->st_dev == g_rules_dev &&
            st->st_ino == g_rules_ino && st->st_size == g_rules_size &&
            st->st_mtim.tv_sec == g_rules_mtime.tv_sec &&
            st->st_mtim.tv_nsec == g_rules_mtime.tv_nsec)
            return;
        g_rules_loaded = 1;
        g_rules_exist = 1;
        g_rules_dev = st->st_dev;
        g_rules_ino = st->st_ino;
        g_rules_size = st->st_size;
        g_rules_mtime = st->st_mtim;
        rules_read();
    }
    for (size_t i = 0; i < g_nslots; i++)
        g_slots[i].counter = 0;
}

/* Caller holds g_fault_lock. */
static const struct rule *rule_for(const char *label)
{
    const struct rule *found = NULL;
    for (size_t i = 0; i < g_nrules; i++)
        if (strcmp(g_rules[i].label, label) == 0)
            found = &g_rules[i]; /* the last matching line wins */
    return found;
}

static void sleep_ms(unsigned long ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Learns the label of `slot` via the real C_GetTokenInfo. Called without g_fault_lock held
 * (the real call may take a while); a failure (no token yet) is retried on a later call. */
static void slot_learn(CK_SLOT_ID slot)
{
    CK_TOKEN_INFO ti;
    if (g_real->C_GetTokenInfo(slot, &ti) != CKR_OK)
        return;
    char label[33];
    size_t n = sizeof ti.label;
    memcpy(label, ti.label, n);
    while (n > 0 && (label[n - 1] == ' ' || label[n - 1] == '\0'))
        n--;
    label[n] = '\0';
    pthread_mutex_lock(&g_fault_lock);
    struct slot_entry *e = slot_find(slot);
    if (e == NULL && g_nslots < MAX_SLOTS) {
        e = &g_slots[g_nslots++];
        memset(e, 0, sizeof *e);
        e->id = slot;
    }
    if (e != NULL && !e->have_label) {
        memcpy(e->label, label, n + 1);
        e->have_label = 1;
    }
    pthread_mutex_unlock(&g_fault_lock);
}

/* The fault decision for one call on `slot`: CKR_OK to forward (possibly after a hang), or
 * the error to return instead. */
static CK_RV fault_slot(CK_SLOT_ID slot)
{
    struct stat st;
    int st_ok = stat(g_fault_path, &st) == 0 && st.st_size > 0; /* the one stat per call */
    enum fault_kind kind = FAULT_NONE;
    unsigned long hang_ms = 0;
    pthread_mutex_lock(&g_fault_lock);
    rules_refresh(&st, st_ok);
    if (g_nrules > 0) {
        struct slot_entry *e = slot_find(slot);
        if (e == NULL || !e->have_label) {
            pthread_mutex_unlock(&g_fault_lock);
            slot_learn(slot);
            pthread_mutex_lock(&g_fault_lock);
            e = slot_find(slot);
        }
        const struct rule *r = e != NULL && e->have_label ? rule_for(e->label) : NULL;
        if (r != NULL) {
            e->counter++;
            if (e->counter % r->every == 0) {
                kind = r->kind;
                hang_ms = r->hang_ms;
            }
        }
    }
    pthread_mutex_unlock(&g_fault_lock);
    switch (kind) {
    case FAULT_DEVICE_ERROR:
        return CKR_DEVICE_ERROR;
    case FAULT_DEVICE_REMOVED:
        return CKR_DEVICE_REMOVED;
    case FAULT_HANG:
        sleep_ms(hang_ms);
        return CKR_OK;
    default:
        return CKR_OK;
    }
}

static CK_RV fault_session(CK_SESSION_HANDLE h)
{
    CK_SLOT_ID slot;
    pthread_mutex_lock(&g_fault_lock);
    int found = session_get(h, &slot);
    pthread_mutex_unlock(&g_fault_lock);
    return found ? fault_slot(slot) : CKR_OK;
}

static inline int faults_on(void)
{
    return __atomic_load_n(&g_faults_on, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------------------------ */
/* The function table                                                                         */
/* ------------------------------------------------------------------------------------------ */

/*
 * X(kind, name, parameters, arguments) for all 68 PKCS#11 2.40 functions, in CK_FUNCTION_LIST
 * order. kind: SPECIAL (hand-written below), NONE (plain forward, never faulted), SLOT (first
 * parameter `h` is a slot id), SESS (first parameter `h` is a session handle).
 */
#define P11_FUNCTIONS(X)                                                                      \
    X(SPECIAL, C_Initialize, (CK_VOID_PTR a), (a))                                            \
    X(SPECIAL, C_Finalize, (CK_VOID_PTR a), (a))                                              \
    X(SPECIAL, C_GetInfo, (CK_INFO_PTR a), (a))                                               \
    X(SPECIAL, C_GetFunctionList, (CK_FUNCTION_LIST_PTR_PTR a), (a))                          \
    X(NONE, C_GetSlotList, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c))         \
    X(SLOT, C_GetSlotInfo, (CK_SLOT_ID h, CK_SLOT_INFO_PTR a), (h, a))                        \
    X(SLOT, C_GetTokenInfo, (CK_SLOT_ID h, CK_TOKEN_INFO_PTR a), (h, a))                      \
    X(SLOT, C_GetMechanismList, (CK_SLOT_ID h, CK_MECHANISM_TYPE_PTR a, CK_ULONG_PTR b),      \
      (h, a, b))                                                                              \
    X(SLOT, C_GetMechanismInfo, (CK_SLOT_ID h, CK_MECHANISM_TYPE a, CK_MECHANISM_INFO_PTR b), \
      (h, a, b))                                                                              \
    X(SLOT, C_InitToken, (CK_SLOT_ID h, CK_UTF8CHAR_PTR a, CK_ULONG b, CK_UTF8CHAR_PTR c),    \
      (h, a, b, c))                                                                           \
    X(SESS, C_InitPIN, (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR a, CK_ULONG b), (h, a, b))       \
    X(SESS, C_SetPIN,                                                                         \
      (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR a, CK_ULONG b, CK_UTF8CHAR_PTR c, CK_ULONG d),    \
      (h, a, b, c, d))                                                                        \
    X(SPECIAL, C_OpenSession,                                                                 \
      (CK_SLOT_ID h, CK_FLAGS a, CK_VOID_PTR b, CK_NOTIFY c, CK_SESSION_HANDLE_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SPECIAL, C_CloseSession, (CK_SESSION_HANDLE h), (h))                                    \
    X(SPECIAL, C_CloseAllSessions, (CK_SLOT_ID h), (h))                                       \
    X(SESS, C_GetSessionInfo, (CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR a), (h, a))           \
    X(SESS, C_GetOperationState, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG_PTR b),        \
      (h, a, b))                                                                              \
    X(SESS, C_SetOperationState,                                                              \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_OBJECT_HANDLE c,                    \
       CK_OBJECT_HANDLE d),                                                                   \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_Login, (CK_SESSION_HANDLE h, CK_USER_TYPE a, CK_UTF8CHAR_PTR b, CK_ULONG c),    \
      (h, a, b, c))                                                                           \
    X(SESS, C_Logout, (CK_SESSION_HANDLE h), (h))                                             \
    X(SESS, C_CreateObject,                                                                   \
      (CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR a, CK_ULONG b, CK_OBJECT_HANDLE_PTR c),          \
      (h, a, b, c))                                                                           \
    X(SESS, C_CopyObject,                                                                     \
      (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c,               \
       CK_OBJECT_HANDLE_PTR d),                                                               \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_DestroyObject, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE a), (h, a))               \
    X(SESS, C_GetObjectSize, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE a, CK_ULONG_PTR b),       \
      (h, a, b))                                                                              \
    X(SESS, C_GetAttributeValue,                                                              \
      (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (h, a, b, c)) \
    X(SESS, C_SetAttributeValue,                                                              \
      (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (h, a, b, c)) \
    X(SESS, C_FindObjectsInit, (CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR a, CK_ULONG b),         \
      (h, a, b))                                                                              \
    X(SESS, C_FindObjects,                                                                    \
      (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR a, CK_ULONG b, CK_ULONG_PTR c), (h, a, b, c)) \
    X(SESS, C_FindObjectsFinal, (CK_SESSION_HANDLE h), (h))                                   \
    X(SESS, C_EncryptInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b),     \
      (h, a, b))                                                                              \
    X(SESS, C_Encrypt,                                                                        \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_EncryptUpdate,                                                                  \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_EncryptFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG_PTR b), (h, a, b))  \
    X(SESS, C_DecryptInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b),     \
      (h, a, b))                                                                              \
    X(SESS, C_Decrypt,                                                                        \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_DecryptUpdate,                                                                  \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_DecryptFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG_PTR b), (h, a, b))  \
    X(SESS, C_DigestInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a), (h, a))                  \
    X(SESS, C_Digest,                                                                         \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_DigestUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b), (h, a, b))      \
    X(SESS, C_DigestKey, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE a), (h, a))                   \
    X(SESS, C_DigestFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG_PTR b), (h, a, b))   \
    X(SESS, C_SignInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b),        \
      (h, a, b))                                                                              \
    X(SESS, C_Sign,                                                                           \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_SignUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b), (h, a, b))        \
    X(SESS, C_SignFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG_PTR b), (h, a, b))     \
    X(SESS, C_SignRecoverInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), \
      (h, a, b))                                                                              \
    X(SESS, C_SignRecover,                                                                    \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_VerifyInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b),      \
      (h, a, b))                                                                              \
    X(SESS, C_Verify,                                                                         \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG d),            \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_VerifyUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b), (h, a, b))      \
    X(SESS, C_VerifyFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b), (h, a, b))       \
    X(SESS, C_VerifyRecoverInit,                                                              \
      (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (h, a, b))               \
    X(SESS, C_VerifyRecover,                                                                  \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_DigestEncryptUpdate,                                                            \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_DecryptDigestUpdate,                                                            \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_SignEncryptUpdate,                                                              \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_DecryptVerifyUpdate,                                                            \
      (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),        \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_GenerateKey,                                                                    \
      (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_ATTRIBUTE_PTR b, CK_ULONG c,               \
       CK_OBJECT_HANDLE_PTR d),                                                               \
      (h, a, b, c, d))                                                                        \
    X(SESS, C_GenerateKeyPair,                                                                \
      (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_ATTRIBUTE_PTR b, CK_ULONG c,               \
       CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f, CK_OBJECT_HANDLE_PTR g),       \
      (h, a, b, c, d, e, f, g))                                                               \
    X(SESS, C_WrapKey,                                                                        \
      (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_OBJECT_HANDLE c,       \
       CK_BYTE_PTR d, CK_ULONG_PTR e),                                                        \
      (h, a, b, c, d, e))                                                                     \
    X(SESS, C_UnwrapKey,                                                                      \
      (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_BYTE_PTR c,            \
       CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g),                   \
      (h, a, b, c, d, e, f, g))                                                               \
    X(SESS, C_DeriveKey,                                                                      \
      (CK_SESSION_HANDLE h, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c,       \
       CK_ULONG d, CK_OBJECT_HANDLE_PTR e),                                                   \
      (h, a, b, c, d, e))                                                                     \
    X(SESS, C_SeedRandom, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b), (h, a, b))        \
    X(SESS, C_GenerateRandom, (CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b), (h, a, b))    \
    X(SESS, C_GetFunctionStatus, (CK_SESSION_HANDLE h), (h))                                  \
    X(SESS, C_CancelFunction, (CK_SESSION_HANDLE h), (h))                                     \
    X(NONE, C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))

/* Per-kind wrapper generators. SPECIAL generates a prototype only. */
#define WRAP_SPECIAL(name, params, args) static CK_RV shim_##name params;
#define WRAP_NONE(name, params, args)                                                          \
    static CK_RV shim_##name params { return g_real->name args; }
#define WRAP_SLOT(name, params, args)                                                          \
    static CK_RV shim_##name params                                                            \
    {                                                                                          \
        if (UNLIKELY(faults_on())) {                                                           \
            CK_RV frv = fault_slot(h);                                                         \
            if (frv != CKR_OK)                                                                 \
                return frv;                                                                    \
        }                                                                                      \
        return g_real->name args;                                                              \
    }
#define WRAP_SESS(name, params, args)                                                          \
    static CK_RV shim_##name params                                                            \
    {                                                                                          \
        if (UNLIKELY(faults_on())) {                                                           \
            CK_RV frv = fault_session(h);                                                      \
            if (frv != CKR_OK)                                                                 \
                return frv;                                                                    \
        }                                                                                      \
        return g_real->name args;                                                              \
    }
#define WRAP(kind, name, params, args) WRAP_##kind(name, params, args)
P11_FUNCTIONS(WRAP)

#define COUNT_ONE(kind, name, params, args) +1
_Static_assert(0 P11_FUNCTIONS(COUNT_ONE) == 68, "PKCS#11 2.40 has 68 functions");
_Static_assert(offsetof(CK_FUNCTION_LIST, C_WaitForSlotEvent) + sizeof(void *) ==
                   sizeof(CK_FUNCTION_LIST),
               "C_WaitForSlotEvent is the last entry of CK_FUNCTION_LIST");

static void fill_list(void)
{
#define FILL(kind, name, params, args) g_list.name = shim_##name;
    P11_FUNCTIONS(FILL)
#undef FILL
}

/* ---- the special entries ---- */

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (load_real() != CKR_OK)
        return CKR_GENERAL_ERROR;
    *out = &g_list;
    return CKR_OK;
}

SHIM_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    return shim_C_GetFunctionList(out);
}

static void faults_reset(void)
{
    pthread_mutex_lock(&g_fault_lock);
    g_rules_loaded = 0;
    g_rules_exist = 0;
    g_nrules = 0;
    g_nslots = 0;
    if (g_nsessions > 0) /* untouched (and never paged in) unless faults were on */
        memset(g_sessions, 0, sizeof g_sessions);
    g_nsessions = 0;
    pthread_mutex_unlock(&g_fault_lock);
}

static CK_RV shim_C_Initialize(CK_VOID_PTR args)
{
    if (load_real() != CKR_OK)
        return CKR_GENERAL_ERROR;
    CK_RV rv;
    if (args == NULL) {
        /* No mutex callbacks, "OS locking is fine": the module must lock with native
         * primitives (PKCS#11 2.40, 11.4 case 2). */
        CK_C_INITIALIZE_ARGS locking;
        memset(&locking, 0, sizeof locking);
        locking.flags = CKF_OS_LOCKING_OK;
        rv = g_real->C_Initialize(&locking);
    } else {
        rv = g_real->C_Initialize(args);
    }
    if (rv != CKR_OK)
        return rv;
    faults_reset();
    const char *path = getenv("HSMPOOL_P11_FAULTS");
    int on = 0;
    if (path != NULL && path[0] != '\0') {
        if (path[0] == '/') {
            on = strlen(path) < sizeof g_fault_path;
            if (on)
                strcpy(g_fault_path, path);
        } else { /* pin a relative path to the directory current at C_Initialize */
            char cwd[PATH_MAX];
            if (getcwd(cwd, sizeof cwd) != NULL) {
                int len = snprintf(g_fault_path, sizeof g_fault_path, "%s/%s", cwd, path);
                on = len > 0 && (size_t)len < sizeof g_fault_path;
            }
        }
    }
    __atomic_store_n(&g_faults_on, on, __ATOMIC_RELAXED);
    return CKR_OK;
}

static CK_RV shim_C_Finalize(CK_VOID_PTR reserved)
{
    CK_RV rv = g_real->C_Finalize(reserved);
    if (rv == CKR_OK) {
        __atomic_store_n(&g_faults_on, 0, __ATOMIC_RELAXED);
        faults_reset();
    }
    return rv;
}

static CK_RV shim_C_GetInfo(CK_INFO_PTR info)
{
    return g_real->C_GetInfo(info);
}

static CK_RV shim_C_OpenSession(CK_SLOT_ID h, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                                CK_SESSION_HANDLE_PTR out)
{
    if (LIKELY(!faults_on()))
        return g_real->C_OpenSession(h, flags, app, notify, out);
    CK_RV rv = fault_slot(h);
    if (rv != CKR_OK)
        return rv;
    rv = g_real->C_OpenSession(h, flags, app, notify, out);
    if (rv == CKR_OK && out != NULL) {
        pthread_mutex_lock(&g_fault_lock);
        session_put(*out, h);
        pthread_mutex_unlock(&g_fault_lock);
    }
    return rv;
}

static CK_RV shim_C_CloseSession(CK_SESSION_HANDLE h)
{
    if (LIKELY(!faults_on()))
        return g_real->C_CloseSession(h);
    CK_RV rv = fault_session(h);
    if (rv != CKR_OK)
        return rv;
    rv = g_real->C_CloseSession(h);
    if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) {
        pthread_mutex_lock(&g_fault_lock);
        session_del(h);
        pthread_mutex_unlock(&g_fault_lock);
    }
    return rv;
}

static CK_RV shim_C_CloseAllSessions(CK_SLOT_ID h)
{
    if (LIKELY(!faults_on()))
        return g_real->C_CloseAllSessions(h);
    CK_RV rv = fault_slot(h);
    if (rv != CKR_OK)
        return rv;
    rv = g_real->C_CloseAllSessions(h);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&g_fault_lock);
        session_del_slot(h);
        pthread_mutex_unlock(&g_fault_lock);
    }
    return rv;
}
