/* module.c - the PKCS#11 2.40 entry points of libhsmpool-pkcs11.
 *
 * C_Initialize reads $HSMPOOL_PKCS11_CONF: one slot (with its token) per [slot]. The module
 * always uses its own OS locks (CKF_OS_LOCKING_OK; C_Initialize(NULL) is fine, and
 * application-supplied mutex callbacks are not used). Sessions live in a fixed table whose
 * entries are never freed: a handle carries a generation, so a closed session's handle
 * stays invalid, and a session's own mutex serialises its calls (calls on different
 * sessions run in parallel, each KMS request on its own keep-alive connection).
 * Login state is per slot, as PKCS#11 says: C_Login decrypts the slot's credential and
 * loads its keys, C_Logout (or closing the slot's last session) forgets both.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "p11m.h"

#define MAX_SESSIONS 2048

typedef struct {
    pthread_mutex_t lock;
    int in_use;
    uint32_t gen;
    slot_t *slot;
    CK_FLAGS flags;
    op_t ops[OP_KINDS];
    CK_OBJECT_HANDLE *found;
    size_t nfound, fpos;
    int finding;
} session_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_initialized;
static slot_t *g_slots;
static size_t g_nslots;
static slot_conf *g_confs;
static session_t g_sessions[MAX_SESSIONS];
static pthread_once_t g_sessions_once = PTHREAD_ONCE_INIT;
static CK_FUNCTION_LIST g_list;

static void init_session_locks(void)
{
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        pthread_mutex_init(&g_sessions[i].lock, NULL);
}

static int initialized(void)
{
    return __atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE);
}

static void pad(CK_UTF8CHAR *dst, size_t n, const char *src)
{
    memset(dst, ' ', n);
    size_t l = strlen(src);
    memcpy(dst, src, l < n ? l : n);
}

/* ---- general ------------------------------------------------------------------------ */

static void free_slots(void)
{
    for (size_t i = 0; i < g_nslots; i++) {
        slot_t *s = &g_slots[i];
        http_pool_free(&s->http);
        for (size_t j = 0; j < s->nkeys; j++) {
            free(s->keys[j]->spki);
            free(s->keys[j]);
        }
        free(s->keys);
        wipe(&s->cred, sizeof s->cred);
        pthread_mutex_destroy(&s->login_lock);
        pthread_mutex_destroy(&s->keys_lock);
    }
    free(g_slots);
    conf_free(g_confs, g_nslots);
    g_slots = NULL;
    g_confs = NULL;
    g_nslots = 0;
}

P11M_EXPORT CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    pthread_once(&g_sessions_once, init_session_locks);
    if (pInitArgs != NULL) {
        CK_C_INITIALIZE_ARGS *a = pInitArgs;
        if (a->pReserved != NULL)
            return CKR_ARGUMENTS_BAD;
        int some = a->CreateMutex || a->DestroyMutex || a->LockMutex || a->UnlockMutex;
        int all = a->CreateMutex && a->DestroyMutex && a->LockMutex && a->UnlockMutex;
        if (some && !all)
            return CKR_ARGUMENTS_BAD;
        if (all && !(a->flags & CKF_OS_LOCKING_OK))
            return CKR_CANT_LOCK; /* only our own (OS) locks */
    }
    pthread_mutex_lock(&g_lock);
    CK_RV rv = CKR_OK;
    if (g_initialized) {
        rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
        goto out;
    }
    const char *path = getenv("HSMPOOL_PKCS11_CONF");
    char err[256] = "";
    if (path == NULL || *path == 0) {
        p11m_log("HSMPOOL_PKCS11_CONF is not set: it names the module's configuration");
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    size_t n;
    if (conf_load(path, &g_confs, &n, err, sizeof err) != 0) {
        p11m_log("%s: %s", path, err);
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    g_slots = calloc(n, sizeof *g_slots);
    if (g_slots == NULL) {
        conf_free(g_confs, n);
        g_confs = NULL;
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &g_slots[i];
        s->id = i;
        s->conf = g_confs[i];
        pthread_mutex_init(&s->login_lock, NULL);
        pthread_mutex_init(&s->keys_lock, NULL);
        s->keys = calloc(MAX_KEYS, sizeof *s->keys);
        g_nslots = i + 1;
        if (s->keys == NULL || http_pool_init(&s->http, &s->conf, err, sizeof err) != 0) {
            if (err[0])
                p11m_log("%s: %s", path, err);
            free_slots();
            rv = s->keys == NULL ? CKR_HOST_MEMORY : CKR_GENERAL_ERROR;
            goto out;
        }
        unsigned char h[32];
        char text[600];
        snprintf(text, sizeof text, "%s|%s", s->conf.endpoint, s->conf.token_label);
        SHA256((unsigned char *)text, strlen(text), h);
        hex_lower(h, 8, s->serial);
    }
    __atomic_store_n(&g_initialized, 1, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&g_lock);
    return rv;
}

static void session_clear(session_t *se)
{
    for (int k = 0; k < OP_KINDS; k++)
        op_reset(&se->ops[k]);
    free(se->found);
    se->found = NULL;
    se->nfound = se->fpos = 0;
    se->finding = 0;
}

P11M_EXPORT CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    if (pReserved != NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&g_lock);
    if (!g_initialized) {
        pthread_mutex_unlock(&g_lock);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    __atomic_store_n(&g_initialized, 0, __ATOMIC_RELEASE);
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        session_t *se = &g_sessions[i];
        pthread_mutex_lock(&se->lock);
        if (se->in_use) {
            session_clear(se);
            se->in_use = 0;
            se->gen++;
        }
        pthread_mutex_unlock(&se->lock);
    }
    free_slots();
    pthread_mutex_unlock(&g_lock);
    return CKR_OK;
}

P11M_EXPORT CK_RV C_GetInfo(CK_INFO_PTR info)
{
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof *info);
    info->cryptokiVersion.major = 2;
    info->cryptokiVersion.minor = 40;
    pad(info->manufacturerID, sizeof info->manufacturerID, "hsmpool");
    pad(info->libraryDescription, sizeof info->libraryDescription, "hsmpool KMS PKCS#11 module");
    info->libraryVersion.major = 0;
    info->libraryVersion.minor = 1;
    return CKR_OK;
}

static slot_t *slot_of(CK_SLOT_ID id)
{
    return id < g_nslots ? &g_slots[id] : NULL;
}

P11M_EXPORT CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    (void)tokenPresent;
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    if (list == NULL) {
        *count = g_nslots;
        return CKR_OK;
    }
    if (*count < g_nslots) {
        *count = g_nslots;
        return CKR_BUFFER_TOO_SMALL;
    }
    for (size_t i = 0; i < g_nslots; i++)
        list[i] = i;
    *count = g_nslots;
    return CKR_OK;
}

P11M_EXPORT CK_RV C_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info)
{
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    slot_t *s = slot_of(id);
    if (s == NULL)
        return CKR_SLOT_ID_INVALID;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof *info);
    char desc[128];
    snprintf(desc, sizeof desc, "hsmpool KMS %s", s->conf.endpoint);
    pad(info->slotDescription, sizeof info->slotDescription, desc);
    pad(info->manufacturerID, sizeof info->manufacturerID, "hsmpool");
    info->flags = CKF_TOKEN_PRESENT;
    info->hardwareVersion.major = 0;
    info->firmwareVersion.major = 0;
    return CKR_OK;
}

P11M_EXPORT CK_RV C_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info)
{
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    slot_t *s = slot_of(id);
    if (s == NULL)
        return CKR_SLOT_ID_INVALID;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof *info);
    pad(info->label, sizeof info->label, s->conf.token_label);
    pad(info->manufacturerID, sizeof info->manufacturerID, "hsmpool");
    pad(info->model, sizeof info->model, "KMS");
    pad(info->serialNumber, sizeof info->serialNumber, s->serial);
    info->flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED |
                  CKF_TOKEN_INITIALIZED;
    info->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
    info->ulSessionCount = CK_UNAVAILABLE_INFORMATION;
    info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
    info->ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
    info->ulMaxPinLen = 256;
    info->ulMinPinLen = 1;
    info->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
    info->hardwareVersion.major = 0;
    info->firmwareVersion.major = 0;
    info->firmwareVersion.minor = 1;
    pad(info->utcTime, sizeof info->utcTime, "");
    return CKR_OK;
}

/* ---- mechanisms --------------------------------------------------------------------- */

#define EC_FLAGS (CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS)
static const struct {
    CK_MECHANISM_TYPE type;
    CK_ULONG min, max;
    CK_FLAGS flags;
} MECHS[] = {
    {CKM_RSA_PKCS_KEY_PAIR_GEN, 2048, 4096, CKF_HW | CKF_GENERATE_KEY_PAIR},
    {CKM_RSA_PKCS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_SHA256_RSA_PKCS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_SHA384_RSA_PKCS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_SHA512_RSA_PKCS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_RSA_PKCS_PSS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_SHA256_RSA_PKCS_PSS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_SHA384_RSA_PKCS_PSS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_SHA512_RSA_PKCS_PSS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_RSA_PKCS_OAEP, 2048, 4096, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT},
    {CKM_EC_KEY_PAIR_GEN, 256, 256, CKF_HW | CKF_GENERATE_KEY_PAIR | EC_FLAGS},
    {CKM_ECDSA, 256, 256, CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS},
    {CKM_ECDSA_SHA256, 256, 256, CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS},
    {CKM_ECDSA_SHA384, 256, 256, CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS},
    {CKM_ECDSA_SHA512, 256, 256, CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS},
    {CKM_AES_GCM, 32, 32, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT},
    {CKM_SHA_1, 0, 0, CKF_DIGEST},
    {CKM_SHA224, 0, 0, CKF_DIGEST},
    {CKM_SHA256, 0, 0, CKF_DIGEST},
    {CKM_SHA384, 0, 0, CKF_DIGEST},
    {CKM_SHA512, 0, 0, CKF_DIGEST},
    {CKM_HSMPOOL_SM2, 256, 256, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_HSMPOOL_SM3_SM2, 256, 256, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_HSMPOOL_SM3_SM2_APPID1, 256, 256, CKF_HW | CKF_SIGN | CKF_VERIFY},
    {CKM_HSMPOOL_KMS_SYMMETRIC, 16, 32, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT},
};
#define NMECHS (sizeof MECHS / sizeof MECHS[0])

P11M_EXPORT CK_RV C_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (slot_of(id) == NULL)
        return CKR_SLOT_ID_INVALID;
    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    if (list == NULL) {
        *count = NMECHS;
        return CKR_OK;
    }
    if (*count < NMECHS) {
        *count = NMECHS;
        return CKR_BUFFER_TOO_SMALL;
    }
    for (size_t i = 0; i < NMECHS; i++)
        list[i] = MECHS[i].type;
    *count = NMECHS;
    return CKR_OK;
}

P11M_EXPORT CK_RV C_GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (slot_of(id) == NULL)
        return CKR_SLOT_ID_INVALID;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    for (size_t i = 0; i < NMECHS; i++)
        if (MECHS[i].type == type) {
            info->ulMinKeySize = MECHS[i].min;
            info->ulMaxKeySize = MECHS[i].max;
            info->flags = MECHS[i].flags;
            return CKR_OK;
        }
    return CKR_MECHANISM_INVALID;
}

/* ---- sessions ----------------------------------------------------------------------- */

/* The session of handle h, locked; NULL with *rv set. */
static session_t *sess_get(CK_SESSION_HANDLE h, CK_RV *rv)
{
    if (!initialized()) {
        *rv = CKR_CRYPTOKI_NOT_INITIALIZED;
        return NULL;
    }
    size_t idx = (size_t)(h & 0xFFFF);
    if (idx == 0 || idx > MAX_SESSIONS) {
        *rv = CKR_SESSION_HANDLE_INVALID;
        return NULL;
    }
    session_t *se = &g_sessions[idx - 1];
    pthread_mutex_lock(&se->lock);
    if (!se->in_use || se->gen != (uint32_t)(h >> 16)) {
        pthread_mutex_unlock(&se->lock);
        *rv = CKR_SESSION_HANDLE_INVALID;
        return NULL;
    }
    *rv = CKR_OK;
    return se;
}

static void sess_put(session_t *se)
{
    pthread_mutex_unlock(&se->lock);
}

static int logged_in(slot_t *s)
{
    pthread_mutex_lock(&s->login_lock);
    int in = s->logged_in;
    pthread_mutex_unlock(&s->login_lock);
    return in;
}

static void logout(slot_t *s)
{
    pthread_mutex_lock(&s->login_lock);
    s->logged_in = 0;
    wipe(&s->cred, sizeof s->cred);
    pthread_mutex_unlock(&s->login_lock);
    objects_hide(s);
}

P11M_EXPORT CK_RV C_OpenSession(CK_SLOT_ID id, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                           CK_SESSION_HANDLE_PTR ph)
{
    (void)app;
    (void)notify;
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    slot_t *s = slot_of(id);
    if (s == NULL)
        return CKR_SLOT_ID_INVALID;
    if (ph == NULL)
        return CKR_ARGUMENTS_BAD;
    if (!(flags & CKF_SERIAL_SESSION))
        return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        session_t *se = &g_sessions[i];
        if (pthread_mutex_trylock(&se->lock) != 0)
            continue;
        if (!se->in_use) {
            se->in_use = 1;
            se->gen = (se->gen + 1) & 0xFFFFFFFFu;
            se->slot = s;
            se->flags = flags;
            s->nsessions++;
            *ph = (CK_SESSION_HANDLE)se->gen << 16 | (CK_SESSION_HANDLE)(i + 1);
            pthread_mutex_unlock(&se->lock);
            pthread_mutex_unlock(&g_lock);
            return CKR_OK;
        }
        pthread_mutex_unlock(&se->lock);
    }
    pthread_mutex_unlock(&g_lock);
    return CKR_SESSION_COUNT;
}

static CK_RV close_one(session_t *se)
{
    slot_t *s = se->slot;
    session_clear(se);
    se->in_use = 0;
    se->gen++;
    pthread_mutex_unlock(&se->lock);
    pthread_mutex_lock(&g_lock);
    int last = --s->nsessions == 0;
    pthread_mutex_unlock(&g_lock);
    if (last)
        logout(s); /* PKCS#11: closing the last session logs the user out */
    return CKR_OK;
}

P11M_EXPORT CK_RV C_CloseSession(CK_SESSION_HANDLE h)
{
    CK_RV rv;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    return close_one(se);
}

P11M_EXPORT CK_RV C_CloseAllSessions(CK_SLOT_ID id)
{
    if (!initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    slot_t *s = slot_of(id);
    if (s == NULL)
        return CKR_SLOT_ID_INVALID;
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        session_t *se = &g_sessions[i];
        pthread_mutex_lock(&se->lock);
        if (se->in_use && se->slot == s)
            close_one(se);
        else
            pthread_mutex_unlock(&se->lock);
    }
    return CKR_OK;
}

P11M_EXPORT CK_RV C_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info)
{
    CK_RV rv;
    if (info == NULL)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    int rw = (se->flags & CKF_RW_SESSION) != 0, in = logged_in(se->slot);
    info->slotID = se->slot->id;
    info->flags = se->flags;
    info->ulDeviceError = 0;
    info->state = in ? (rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS)
                     : (rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION);
    sess_put(se);
    return CKR_OK;
}

P11M_EXPORT CK_RV C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_RV rv;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    slot_t *s = se->slot;
    sess_put(se);
    if (user == CKU_CONTEXT_SPECIFIC)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (user != CKU_USER)
        return CKR_USER_TYPE_INVALID; /* no security officer: the KMS administers keys */
    if (pin == NULL && len > 0)
        return CKR_ARGUMENTS_BAD;
    if (len == 0 || len > 256)
        return CKR_PIN_LEN_RANGE;
    pthread_mutex_lock(&s->login_lock);
    if (s->logged_in) {
        pthread_mutex_unlock(&s->login_lock);
        return CKR_USER_ALREADY_LOGGED_IN;
    }
    credential c;
    rv = cred_load(s->conf.credential_file, pin, len, &c);
    if (rv == CKR_OK) {
        s->cred = c;
        s->logged_in = 1;
    }
    wipe(&c, sizeof c);
    pthread_mutex_unlock(&s->login_lock);
    if (rv != CKR_OK)
        return rv;
    rv = objects_load(s);
    if (rv != CKR_OK) {
        logout(s);
        /* the server refused the access key itself (unknown, disabled or deleted) */
        return rv == CKR_USER_NOT_LOGGED_IN ? CKR_FUNCTION_REJECTED : rv;
    }
    return CKR_OK;
}

P11M_EXPORT CK_RV C_Logout(CK_SESSION_HANDLE h)
{
    CK_RV rv;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    slot_t *s = se->slot;
    sess_put(se);
    if (!logged_in(s))
        return CKR_USER_NOT_LOGGED_IN;
    logout(s);
    return CKR_OK;
}

/* ---- objects ------------------------------------------------------------------------ */

P11M_EXPORT CK_RV C_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tpl, CK_ULONG n)
{
    CK_RV rv;
    if (tpl == NULL && n > 0)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    slot_t *s = se->slot;
    if (se->finding) {
        sess_put(se);
        return CKR_OPERATION_ACTIVE;
    }
    if (logged_in(s)) {
        time_t now = time(NULL);
        pthread_mutex_lock(&s->keys_lock);
        int stale = s->conf.refresh_s == 0 || now - s->loaded_at >= s->conf.refresh_s;
        pthread_mutex_unlock(&s->keys_lock);
        if (stale && (rv = objects_load(s)) != CKR_OK) {
            sess_put(se);
            return rv;
        }
    }
    size_t nk = __atomic_load_n(&s->nkeys, __ATOMIC_ACQUIRE);
    se->found = calloc(2 * nk + 1, sizeof *se->found);
    if (se->found == NULL) {
        sess_put(se);
        return CKR_HOST_MEMORY;
    }
    se->nfound = se->fpos = 0;
    for (size_t i = 0; i < nk; i++) {
        kmskey_t *k = s->keys[i];
        if (__atomic_load_n(&k->gone, __ATOMIC_ACQUIRE))
            continue;
        int secret = k->spec == KS_AES || k->spec == KS_SM4;
        for (int kind = OBJ_PRIVATE; kind <= (secret ? OBJ_PRIVATE : OBJ_PUBLIC); kind++)
            if (obj_matches(s, k, kind, tpl, n))
                se->found[se->nfound++] = obj_handle(s, i, kind);
    }
    se->finding = 1;
    sess_put(se);
    return CKR_OK;
}

P11M_EXPORT CK_RV C_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max,
                           CK_ULONG_PTR count)
{
    CK_RV rv;
    if (out == NULL || count == NULL)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    if (!se->finding) {
        sess_put(se);
        return CKR_OPERATION_NOT_INITIALIZED;
    }
    CK_ULONG k = 0;
    while (k < max && se->fpos < se->nfound)
        out[k++] = se->found[se->fpos++];
    *count = k;
    sess_put(se);
    return CKR_OK;
}

P11M_EXPORT CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE h)
{
    CK_RV rv;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    if (!se->finding) {
        sess_put(se);
        return CKR_OPERATION_NOT_INITIALIZED;
    }
    free(se->found);
    se->found = NULL;
    se->nfound = se->fpos = 0;
    se->finding = 0;
    sess_put(se);
    return CKR_OK;
}

P11M_EXPORT CK_RV C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tpl,
                                 CK_ULONG n)
{
    CK_RV rv;
    if (tpl == NULL && n > 0)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    int kind;
    kmskey_t *k = obj_lookup(se->slot, obj, &kind);
    rv = k == NULL ? CKR_OBJECT_HANDLE_INVALID : obj_get_attributes(se->slot, k, kind, tpl, n);
    sess_put(se);
    return rv;
}

P11M_EXPORT CK_RV C_GetObjectSize(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size)
{
    CK_RV rv;
    if (size == NULL)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    int kind;
    rv = obj_lookup(se->slot, obj, &kind) == NULL ? CKR_OBJECT_HANDLE_INVALID : CKR_OK;
    *size = CK_UNAVAILABLE_INFORMATION;
    sess_put(se);
    return rv;
}

P11M_EXPORT CK_RV C_SetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
                                 CK_ULONG n)
{
    (void)t;
    (void)n;
    CK_RV rv;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    int kind;
    rv = obj_lookup(se->slot, obj, &kind) == NULL ? CKR_OBJECT_HANDLE_INVALID
                                                  : CKR_ATTRIBUTE_READ_ONLY;
    sess_put(se);
    return rv;
}

P11M_EXPORT CK_RV C_DestroyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj)
{
    CK_RV rv;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    int kind;
    /* KMS keys are deleted by ScheduleKeyDeletion with a waiting period, not here. */
    rv = obj_lookup(se->slot, obj, &kind) == NULL ? CKR_OBJECT_HANDLE_INVALID
                                                  : CKR_ACTION_PROHIBITED;
    sess_put(se);
    return rv;
}

/* ---- cryptographic operations ------------------------------------------------------- */

static CK_RV op_start(CK_SESSION_HANDLE h, int kind, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    CK_RV rv;
    if (m == NULL)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    op_t *op = &se->ops[kind];
    if (op->kind != OP_NONE) {
        sess_put(se);
        return CKR_OPERATION_ACTIVE;
    }
    kmskey_t *k = NULL;
    int objkind = 0;
    if (kind != OP_DIGEST) {
        k = obj_lookup(se->slot, key, &objkind);
        if (k == NULL) {
            sess_put(se);
            return CKR_KEY_HANDLE_INVALID;
        }
        if (!logged_in(se->slot)) {
            sess_put(se);
            return CKR_USER_NOT_LOGGED_IN;
        }
    }
    rv = op_init(se->slot, op, kind, m, k, objkind);
    sess_put(se);
    return rv;
}

static CK_RV op_part(CK_SESSION_HANDLE h, int kind, CK_BYTE_PTR in, CK_ULONG len)
{
    CK_RV rv;
    if (in == NULL && len > 0)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    op_t *op = &se->ops[kind];
    if (op->kind == OP_NONE)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    else if ((rv = op_update(op, in, len)) != CKR_OK)
        op_reset(op);
    sess_put(se);
    return rv;
}

static CK_RV op_finish(CK_SESSION_HANDLE h, int kind, CK_BYTE_PTR in, CK_ULONG in_len,
                       CK_BYTE_PTR out, CK_ULONG_PTR out_len, CK_BYTE_PTR sig, CK_ULONG sig_len)
{
    CK_RV rv;
    if ((in == NULL && in_len > 0) || (kind != OP_VERIFY && out_len == NULL) ||
        (kind == OP_VERIFY && sig == NULL))
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    op_t *op = &se->ops[kind];
    CK_ULONG dummy = 0;
    if (op->kind == OP_NONE)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    else
        rv = op_final(se->slot, op, in, in_len, out, out_len ? out_len : &dummy, sig, sig_len);
    sess_put(se);
    return rv;
}

P11M_EXPORT CK_RV C_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    return op_start(h, OP_SIGN, m, k);
}
P11M_EXPORT CK_RV C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR s, CK_ULONG_PTR sl)
{
    return op_finish(h, OP_SIGN, d, n, s, sl, NULL, 0);
}
P11M_EXPORT CK_RV C_SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n)
{
    return op_part(h, OP_SIGN, d, n);
}
P11M_EXPORT CK_RV C_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR s, CK_ULONG_PTR sl)
{
    return op_finish(h, OP_SIGN, NULL, 0, s, sl, NULL, 0);
}
P11M_EXPORT CK_RV C_VerifyInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    return op_start(h, OP_VERIFY, m, k);
}
P11M_EXPORT CK_RV C_Verify(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR s, CK_ULONG sl)
{
    return op_finish(h, OP_VERIFY, d, n, NULL, NULL, s, sl);
}
P11M_EXPORT CK_RV C_VerifyUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n)
{
    return op_part(h, OP_VERIFY, d, n);
}
P11M_EXPORT CK_RV C_VerifyFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR s, CK_ULONG sl)
{
    return op_finish(h, OP_VERIFY, NULL, 0, NULL, NULL, s, sl);
}
P11M_EXPORT CK_RV C_EncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    return op_start(h, OP_ENCRYPT, m, k);
}
P11M_EXPORT CK_RV C_Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o,
                       CK_ULONG_PTR ol)
{
    return op_finish(h, OP_ENCRYPT, d, n, o, ol, NULL, 0);
}
P11M_EXPORT CK_RV C_EncryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o,
                             CK_ULONG_PTR ol)
{
    (void)o;
    if (ol == NULL)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    CK_RV rv = op_part(h, OP_ENCRYPT, d, n);
    if (rv == CKR_OK)
        *ol = 0; /* the KMS encrypts the whole message at C_EncryptFinal */
    return rv;
}
P11M_EXPORT CK_RV C_EncryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
    return op_finish(h, OP_ENCRYPT, NULL, 0, o, ol, NULL, 0);
}
P11M_EXPORT CK_RV C_DecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    return op_start(h, OP_DECRYPT, m, k);
}
P11M_EXPORT CK_RV C_Decrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o,
                       CK_ULONG_PTR ol)
{
    return op_finish(h, OP_DECRYPT, d, n, o, ol, NULL, 0);
}
P11M_EXPORT CK_RV C_DecryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o,
                             CK_ULONG_PTR ol)
{
    (void)o;
    if (ol == NULL)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    CK_RV rv = op_part(h, OP_DECRYPT, d, n);
    if (rv == CKR_OK)
        *ol = 0;
    return rv;
}
P11M_EXPORT CK_RV C_DecryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
    return op_finish(h, OP_DECRYPT, NULL, 0, o, ol, NULL, 0);
}
P11M_EXPORT CK_RV C_DigestInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m)
{
    return op_start(h, OP_DIGEST, m, CK_INVALID_HANDLE);
}
P11M_EXPORT CK_RV C_Digest(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o,
                      CK_ULONG_PTR ol)
{
    return op_finish(h, OP_DIGEST, d, n, o, ol, NULL, 0);
}
P11M_EXPORT CK_RV C_DigestUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n)
{
    return op_part(h, OP_DIGEST, d, n);
}
P11M_EXPORT CK_RV C_DigestFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
    return op_finish(h, OP_DIGEST, NULL, 0, o, ol, NULL, 0);
}

P11M_EXPORT CK_RV C_GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG n)
{
    CK_RV rv;
    if (out == NULL && n > 0)
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    slot_t *s = se->slot;
    sess_put(se);
    return n == 0 ? CKR_OK : ops_random(s, out, n);
}

P11M_EXPORT CK_RV C_SeedRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR seed, CK_ULONG n)
{
    (void)seed;
    (void)n;
    CK_RV rv;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    sess_put(se);
    return CKR_RANDOM_SEED_NOT_SUPPORTED;
}

P11M_EXPORT CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub,
                               CK_ULONG npub, CK_ATTRIBUTE_PTR priv, CK_ULONG npriv,
                               CK_OBJECT_HANDLE_PTR hpub, CK_OBJECT_HANDLE_PTR hpriv)
{
    CK_RV rv;
    if (m == NULL || hpub == NULL || hpriv == NULL || (pub == NULL && npub > 0) ||
        (priv == NULL && npriv > 0))
        return initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    session_t *se = sess_get(h, &rv);
    if (se == NULL)
        return rv;
    slot_t *s = se->slot;
    int rw = (se->flags & CKF_RW_SESSION) != 0;
    sess_put(se);
    if (!rw)
        return CKR_SESSION_READ_ONLY;
    if (!logged_in(s))
        return CKR_USER_NOT_LOGGED_IN;
    size_t idx;
    rv = ops_generate_key_pair(s, m, pub, npub, priv, npriv, &idx);
    if (rv == CKR_OK) {
        *hpub = obj_handle(s, idx, OBJ_PUBLIC);
        *hpriv = obj_handle(s, idx, OBJ_PRIVATE);
    }
    return rv;
}

/* ---- not supported ------------------------------------------------------------------ */

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define UNSUPPORTED(name, params) \
    P11M_EXPORT CK_RV name params { return initialized() ? CKR_FUNCTION_NOT_SUPPORTED \
                                                    : CKR_CRYPTOKI_NOT_INITIALIZED; }

UNSUPPORTED(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d))
UNSUPPORTED(C_InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c))
UNSUPPORTED(C_SetPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d,
                       CK_ULONG e))
UNSUPPORTED(C_GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_SetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c,
                                  CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e))
UNSUPPORTED(C_CreateObject, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c,
                             CK_OBJECT_HANDLE_PTR d))
UNSUPPORTED(C_CopyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c,
                           CK_ULONG d, CK_OBJECT_HANDLE_PTR e))
UNSUPPORTED(C_DigestKey, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b))
UNSUPPORTED(C_SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                            CK_ULONG_PTR e))
UNSUPPORTED(C_VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                              CK_ULONG_PTR e))
UNSUPPORTED(C_DigestEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c,
                                    CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptDigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c,
                                    CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_SignEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                                  CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c,
                                    CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_GenerateKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c,
                            CK_ULONG d, CK_OBJECT_HANDLE_PTR e))
UNSUPPORTED(C_WrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c,
                        CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f))
UNSUPPORTED(C_UnwrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c,
                          CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g,
                          CK_OBJECT_HANDLE_PTR i))
UNSUPPORTED(C_DeriveKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c,
                          CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f))
UNSUPPORTED(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c))
#pragma GCC diagnostic pop

P11M_EXPORT CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE h)
{
    (void)h;
    return initialized() ? CKR_FUNCTION_NOT_PARALLEL : CKR_CRYPTOKI_NOT_INITIALIZED;
}

P11M_EXPORT CK_RV C_CancelFunction(CK_SESSION_HANDLE h)
{
    (void)h;
    return initialized() ? CKR_FUNCTION_NOT_PARALLEL : CKR_CRYPTOKI_NOT_INITIALIZED;
}

P11M_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp)
{
    if (pp == NULL)
        return CKR_ARGUMENTS_BAD;
    CK_FUNCTION_LIST *l = &g_list;
    l->version.major = 2;
    l->version.minor = 40;
#define F(name) l->name = name
    F(C_Initialize); F(C_Finalize); F(C_GetInfo); F(C_GetFunctionList); F(C_GetSlotList);
    F(C_GetSlotInfo); F(C_GetTokenInfo); F(C_GetMechanismList); F(C_GetMechanismInfo);
    F(C_InitToken); F(C_InitPIN); F(C_SetPIN); F(C_OpenSession); F(C_CloseSession);
    F(C_CloseAllSessions); F(C_GetSessionInfo); F(C_GetOperationState);
    F(C_SetOperationState); F(C_Login); F(C_Logout); F(C_CreateObject); F(C_CopyObject);
    F(C_DestroyObject); F(C_GetObjectSize); F(C_GetAttributeValue); F(C_SetAttributeValue);
    F(C_FindObjectsInit); F(C_FindObjects); F(C_FindObjectsFinal); F(C_EncryptInit);
    F(C_Encrypt); F(C_EncryptUpdate); F(C_EncryptFinal); F(C_DecryptInit); F(C_Decrypt);
    F(C_DecryptUpdate); F(C_DecryptFinal); F(C_DigestInit); F(C_Digest); F(C_DigestUpdate);
    F(C_DigestKey); F(C_DigestFinal); F(C_SignInit); F(C_Sign); F(C_SignUpdate);
    F(C_SignFinal); F(C_SignRecoverInit); F(C_SignRecover); F(C_VerifyInit); F(C_Verify);
    F(C_VerifyUpdate); F(C_VerifyFinal); F(C_VerifyRecoverInit); F(C_VerifyRecover);
    F(C_DigestEncryptUpdate); F(C_DecryptDigestUpdate); F(C_SignEncryptUpdate);
    F(C_DecryptVerifyUpdate); F(C_GenerateKey); F(C_GenerateKeyPair); F(C_WrapKey);
    F(C_UnwrapKey); F(C_DeriveKey); F(C_SeedRandom); F(C_GenerateRandom);
    F(C_GetFunctionStatus); F(C_CancelFunction); F(C_WaitForSlotEvent);
#undef F
    *pp = l;
    return CKR_OK;
}
