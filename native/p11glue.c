/* See p11glue.h. */
#include "p11glue.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#define HP11_ERR_LOAD 0x80000001UL

struct hp11_module {
    void *dl;
    CK_FUNCTION_LIST *f;
};

hp11_module *hp11_load(const char *path, char *err, unsigned long errlen) {
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        if (err && errlen) { strncpy(err, e ? e : "dlopen failed", errlen - 1); err[errlen - 1] = 0; }
        return NULL;
    }
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    CK_FUNCTION_LIST *f = NULL;
    if (!gfl || gfl(&f) != CKR_OK || !f) {
        if (err && errlen) { strncpy(err, "C_GetFunctionList missing or failed", errlen - 1); err[errlen - 1] = 0; }
        dlclose(dl);
        return NULL;
    }
    hp11_module *m = calloc(1, sizeof *m);
    if (!m) { dlclose(dl); return NULL; }
    m->dl = dl;
    m->f = f;
    return m;
}

unsigned long hp11_initialize(hp11_module *m) {
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    CK_RV rv = m->f->C_Initialize(&args);
    return rv == CKR_CRYPTOKI_ALREADY_INITIALIZED ? CKR_OK : rv;
}

void hp11_unload(hp11_module *m) {
    if (!m) return;
    m->f->C_Finalize(NULL);
    dlclose(m->dl);
    free(m);
}

unsigned long hp11_slot_list(hp11_module *m, unsigned long *slots, unsigned long *count) {
    return m->f->C_GetSlotList(CK_TRUE, slots, count);
}

unsigned long hp11_token_info(hp11_module *m, unsigned long slot, unsigned char *label,
                              unsigned char *manufacturer, unsigned char *model,
                              unsigned char *serial, unsigned long *flags) {
    CK_TOKEN_INFO ti;
    CK_RV rv = m->f->C_GetTokenInfo(slot, &ti);
    if (rv != CKR_OK) return rv;
    memcpy(label, ti.label, 32);
    memcpy(manufacturer, ti.manufacturerID, 32);
    memcpy(model, ti.model, 16);
    memcpy(serial, ti.serialNumber, 16);
    *flags = ti.flags;
    return CKR_OK;
}

unsigned long hp11_mechanisms(hp11_module *m, unsigned long slot, unsigned long *mechs,
                              unsigned long *count) {
    return m->f->C_GetMechanismList(slot, mechs, count);
}

unsigned long hp11_open_session(hp11_module *m, unsigned long slot, unsigned long *session) {
    return m->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, session);
}

unsigned long hp11_close_session(hp11_module *m, unsigned long session) {
    return m->f->C_CloseSession(session);
}

unsigned long hp11_login(hp11_module *m, unsigned long session, unsigned long user_type,
                         const unsigned char *pin, unsigned long pin_len) {
    return m->f->C_Login(session, user_type, (unsigned char *)pin, pin_len);
}

unsigned long hp11_logout(hp11_module *m, unsigned long session) {
    return m->f->C_Logout(session);
}

unsigned long hp11_generate_key(hp11_module *m, unsigned long session, unsigned long mech,
                                CK_ATTRIBUTE *tpl, unsigned long n, unsigned long *key) {
    CK_MECHANISM mm = {mech, NULL, 0};
    return m->f->C_GenerateKey(session, &mm, tpl, n, key);
}

unsigned long hp11_generate_key_pair(hp11_module *m, unsigned long session, unsigned long mech,
                                     CK_ATTRIBUTE *pub, unsigned long npub, CK_ATTRIBUTE *priv,
                                     unsigned long npriv, unsigned long *pub_key,
                                     unsigned long *priv_key) {
    CK_MECHANISM mm = {mech, NULL, 0};
    return m->f->C_GenerateKeyPair(session, &mm, pub, npub, priv, npriv, pub_key, priv_key);
}

unsigned long hp11_create_object(hp11_module *m, unsigned long session, CK_ATTRIBUTE *tpl,
                                 unsigned long n, unsigned long *obj) {
    return m->f->C_CreateObject(session, tpl, n, obj);
}

unsigned long hp11_destroy_object(hp11_module *m, unsigned long session, unsigned long obj) {
    return m->f->C_DestroyObject(session, obj);
}

unsigned long hp11_get_attributes(hp11_module *m, unsigned long session, unsigned long obj,
                                  CK_ATTRIBUTE *tpl, unsigned long n) {
    return m->f->C_GetAttributeValue(session, obj, tpl, n);
}

unsigned long hp11_find(hp11_module *m, unsigned long session, CK_ATTRIBUTE *tpl,
                        unsigned long n, unsigned long *objs, unsigned long max,
                        unsigned long *found) {
    CK_RV rv = m->f->C_FindObjectsInit(session, tpl, n);
    if (rv != CKR_OK) return rv;
    rv = m->f->C_FindObjects(session, objs, max, found);
    CK_RV rv2 = m->f->C_FindObjectsFinal(session);
    return rv != CKR_OK ? rv : rv2;
}

unsigned long hp11_wrap(hp11_module *m, unsigned long session, CK_MECHANISM *mech,
                        unsigned long wrapping_key, unsigned long key, unsigned char *out,
                        unsigned long *out_len) {
    return m->f->C_WrapKey(session, mech, wrapping_key, key, out, out_len);
}

unsigned long hp11_unwrap(hp11_module *m, unsigned long session, CK_MECHANISM *mech,
                          unsigned long unwrapping_key, const unsigned char *wrapped,
                          unsigned long wrapped_len, CK_ATTRIBUTE *tpl, unsigned long n,
                          unsigned long *key) {
    return m->f->C_UnwrapKey(session, mech, unwrapping_key, (unsigned char *)wrapped,
                             wrapped_len, tpl, n, key);
}

unsigned long hp11_random(hp11_module *m, unsigned long session, unsigned char *out,
                          unsigned long len) {
    return m->f->C_GenerateRandom(session, out, len);
}

/* Finish an active single-part operation whose output did not fit, so the session is
 * usable again: ask for the size, then run it into a scratch buffer and wipe that. */
static CK_RV finish_too_small(CK_FUNCTION_LIST *f, int op, CK_SESSION_HANDLE s,
                              const unsigned char *in, unsigned long in_len,
                              unsigned long *need) {
    CK_ULONG n = 0;
    CK_RV rv;
    if (op == HP11_ENCRYPT) rv = f->C_Encrypt(s, (unsigned char *)in, in_len, NULL, &n);
    else if (op == HP11_DECRYPT) rv = f->C_Decrypt(s, (unsigned char *)in, in_len, NULL, &n);
    else rv = f->C_Sign(s, (unsigned char *)in, in_len, NULL, &n);
    if (rv != CKR_OK) return rv;
    *need = n;
    unsigned char *scratch = malloc(n ? n : 1);
    if (!scratch) return CKR_HOST_MEMORY;
    if (op == HP11_ENCRYPT) f->C_Encrypt(s, (unsigned char *)in, in_len, scratch, &n);
    else if (op == HP11_DECRYPT) f->C_Decrypt(s, (unsigned char *)in, in_len, scratch, &n);
    else f->C_Sign(s, (unsigned char *)in, in_len, scratch, &n);
    volatile unsigned char *p = scratch;
    for (CK_ULONG i = 0; i < *need; i++) p[i] = 0;
    free(scratch);
    return CKR_BUFFER_TOO_SMALL;
}

unsigned long hp11_crypt(hp11_module *m, int op, unsigned long session, CK_MECHANISM *mech,
                         unsigned long key, const unsigned char *in, unsigned long in_len,
                         unsigned char *out, unsigned long *out_len) {
    CK_FUNCTION_LIST *f = m->f;
    CK_RV rv;
    CK_ULONG n = *out_len;
    if (op == HP11_ENCRYPT) {
        rv = f->C_EncryptInit(session, mech, key);
        if (rv == CKR_OK) rv = f->C_Encrypt(session, (unsigned char *)in, in_len, out, &n);
    } else if (op == HP11_DECRYPT) {
        rv = f->C_DecryptInit(session, mech, key);
        if (rv == CKR_OK) rv = f->C_Decrypt(session, (unsigned char *)in, in_len, out, &n);
    } else {
        rv = f->C_SignInit(session, mech, key);
        if (rv == CKR_OK) rv = f->C_Sign(session, (unsigned char *)in, in_len, out, &n);
    }
    if (rv == CKR_BUFFER_TOO_SMALL) return finish_too_small(f, op, session, in, in_len, out_len);
    *out_len = n;
    return rv;
}

unsigned long hp11_gcm(hp11_module *m, int op, unsigned long session, unsigned long key,
                       const unsigned char *iv, unsigned long iv_len, const unsigned char *aad,
                       unsigned long aad_len, const unsigned char *in, unsigned long in_len,
                       unsigned char *out, unsigned long *out_len) {
    CK_GCM_PARAMS p;
    p.pIv = (unsigned char *)iv;
    p.ulIvLen = iv_len;
    p.ulIvBits = iv_len * 8;
    p.pAAD = aad_len ? (unsigned char *)aad : NULL;
    p.ulAADLen = aad_len;
    p.ulTagBits = 128;
    CK_MECHANISM mech = {CKM_AES_GCM, &p, sizeof p};
    return hp11_crypt(m, op, session, &mech, key, in, in_len, out, out_len);
}
