/* objects.c - a slot's KMS keys as PKCS#11 objects.
 *
 * Keys are loaded at C_Login and reloaded by C_FindObjectsInit once refresh_seconds have
 * passed: the configured keys (DescribeKey of each reference) and, with discover = true,
 * every key that ListKeys shows (labels from ListAliases). A key the server answers
 * NotFound for (outside the principal's policy, or absent), a key that is not Enabled and
 * an HMAC key are not shown. An asymmetric key is a private key and a public key object
 * (same CKA_ID and CKA_LABEL; the public parts come from GetPublicKey); a symmetric key is
 * one secret key object.
 *
 * Handles never change meaning: (slot index + 1) << 24 | key index << 2 | kind. A key that
 * disappears keeps its entry (marked gone, its handles invalid); entries are freed only at
 * C_Finalize, so readers need no lock.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11m.h"

/* ---- handles ------------------------------------------------------------------------ */

CK_OBJECT_HANDLE obj_handle(const slot_t *s, size_t key_index, int kind)
{
    return (CK_OBJECT_HANDLE)(s->id + 1) << 24 | (CK_OBJECT_HANDLE)key_index << 2 |
           (CK_OBJECT_HANDLE)kind;
}

kmskey_t *obj_lookup(slot_t *s, CK_OBJECT_HANDLE h, int *kind)
{
    if ((h >> 24) != s->id + 1)
        return NULL;
    size_t idx = (h >> 2) & 0x3FFFFF;
    int k = (int)(h & 3);
    size_t n = __atomic_load_n(&s->nkeys, __ATOMIC_ACQUIRE);
    if (idx >= n || (k != OBJ_PRIVATE && k != OBJ_PUBLIC))
        return NULL;
    kmskey_t *key = s->keys[idx];
    if (__atomic_load_n(&key->gone, __ATOMIC_ACQUIRE))
        return NULL;
    if (k == OBJ_PUBLIC && (key->spec == KS_AES || key->spec == KS_SM4))
        return NULL;
    *kind = k;
    return key;
}

/* ---- loading ------------------------------------------------------------------------ */

static int spec_of(const char *name, int *spec)
{
    static const struct { const char *name; int spec; } T[] = {
        {"SYMMETRIC_DEFAULT", KS_AES}, {"SM4", KS_SM4}, {"RSA_2048", KS_RSA},
        {"RSA_3072", KS_RSA}, {"RSA_4096", KS_RSA}, {"ECC_NIST_P256", KS_EC},
        {"ECC_SECG_P256K1", KS_EC}, {"SM2", KS_SM2}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (strcmp(name, T[i].name) == 0) {
            *spec = T[i].spec;
            return 0;
        }
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* CKA_ID: the 16 bytes of the key's UUID (pkcs11-tool --id takes them in hex). */
static void key_id_bytes(const char *key_id, unsigned char id[16])
{
    size_t o = 0;
    memset(id, 0, 16);
    for (const char *p = key_id; *p && o < 32; p++) {
        int v = hexval(*p);
        if (v < 0)
            continue;
        id[o / 2] = (unsigned char)(id[o / 2] | (o % 2 ? v : v << 4));
        o++;
    }
}

static CK_RV body_key(buf_t *b, const char *key_id)
{
    if (buf_adds(b, "{\"KeyId\":") || json_add_str(b, key_id, strlen(key_id)) ||
        buf_adds(b, "}"))
        return CKR_HOST_MEMORY;
    return CKR_OK;
}

/* DescribeKey (+ GetPublicKey) of `ref` into k. CKR_OK with *shown = 0 for a key that is
 * not to be shown. */
static CK_RV describe(slot_t *s, const char *ref, const char *label, kmskey_t *k, int *shown)
{
    buf_t body = {0};
    jdoc d = {0};
    kms_err e;
    *shown = 0;
    memset(k, 0, sizeof *k);
    CK_RV rv = body_key(&body, ref);
    if (rv == CKR_OK)
        rv = kms_call(s, "DescribeKey", &body, &d, &e);
    buf_free(&body);
    if (rv != CKR_OK)
        return e.not_found ? CKR_OK : rv;
    int md = json_get(&d, 0, "KeyMetadata");
    const char *kid = json_str(&d, md, "KeyId", NULL), *arn = json_str(&d, md, "Arn", NULL);
    const char *spec = json_str(&d, md, "KeySpec", NULL);
    const char *usage = json_str(&d, md, "KeyUsage", NULL);
    const char *state = json_str(&d, md, "KeyState", NULL);
    if (kid == NULL || arn == NULL || spec == NULL || usage == NULL || state == NULL ||
        strlen(kid) >= sizeof k->key_id || strlen(arn) >= sizeof k->arn) {
        json_free(&d);
        return CKR_DEVICE_ERROR;
    }
    int ok = strcmp(state, "Enabled") == 0 && spec_of(spec, &k->spec) == 0 &&
             (strcmp(usage, "SIGN_VERIFY") == 0 || strcmp(usage, "ENCRYPT_DECRYPT") == 0);
    snprintf(k->key_id, sizeof k->key_id, "%s", kid);
    snprintf(k->arn, sizeof k->arn, "%s", arn);
    snprintf(k->spec_name, sizeof k->spec_name, "%s", spec);
    snprintf(k->label, sizeof k->label, "%s", label != NULL ? label : kid);
    k->usage = strcmp(usage, "SIGN_VERIFY") == 0 ? KU_SIGN : KU_ENCRYPT;
    key_id_bytes(k->key_id, k->id);
    json_free(&d);
    if (!ok)
        return CKR_OK;
    if (k->spec == KS_AES || k->spec == KS_SM4) {
        *shown = 1;
        return CKR_OK;
    }
    rv = body_key(&body, k->key_id);
    if (rv == CKR_OK)
        rv = kms_call(s, "GetPublicKey", &body, &d, &e);
    buf_free(&body);
    if (rv != CKR_OK)
        return e.not_found ? CKR_OK : rv;
    buf_t spki = {0};
    rv = kms_blob(&d, "PublicKey", &spki);
    json_free(&d);
    if (rv == CKR_OK && spki_parse(spki.p, spki.len, &k->pub) != 0)
        rv = CKR_DEVICE_ERROR;
    if (rv == CKR_OK && ((k->spec == KS_RSA) != (k->pub.kind == PK_RSA)))
        rv = CKR_DEVICE_ERROR;
    if (rv != CKR_OK) {
        buf_free(&spki);
        return rv;
    }
    k->spki = spki.p; /* owned by the key from now on */
    k->spki_len = spki.len;
    *shown = 1;
    return CKR_OK;
}

/* Puts k into the slot (an existing entry of the same key id is reused); its index. */
static CK_RV upsert(slot_t *s, kmskey_t *k, unsigned char *seen, size_t *index)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        if (strcmp(s->keys[i]->key_id, k->key_id) == 0) {
            if (seen[i]) { /* the same key under a second label: show it once */
                free(k->spki);
                *index = i;
                return CKR_OK;
            }
            free(k->spki);
            seen[i] = 1;
            __atomic_store_n(&s->keys[i]->gone, 0, __ATOMIC_RELEASE);
            *index = i;
            return CKR_OK;
        }
    }
    if (s->nkeys >= MAX_KEYS) {
        free(k->spki);
        return CKR_DEVICE_MEMORY;
    }
    kmskey_t *nk = malloc(sizeof *nk);
    if (nk == NULL) {
        free(k->spki);
        return CKR_HOST_MEMORY;
    }
    *nk = *k;
    nk->gone = 0;
    seen[s->nkeys] = 1;
    s->keys[s->nkeys] = nk;
    *index = s->nkeys;
    __atomic_store_n(&s->nkeys, s->nkeys + 1, __ATOMIC_RELEASE);
    return CKR_OK;
}

static CK_RV load_one(slot_t *s, const char *ref, const char *label, unsigned char *seen)
{
    kmskey_t k;
    int shown;
    CK_RV rv = describe(s, ref, label, &k, &shown);
    if (rv != CKR_OK || !shown)
        return rv;
    size_t idx;
    return upsert(s, &k, seen, &idx);
}

/* alias/<name> for each key id (the first alias ListAliases names), for discovered labels. */
static void alias_label(slot_t *s, const char *key_id, char *label, size_t cap)
{
    buf_t body = {0};
    jdoc d = {0};
    kms_err e;
    if (buf_adds(&body, "{\"KeyId\":") || json_add_str(&body, key_id, strlen(key_id)) ||
        buf_adds(&body, ",\"Limit\":10}") || kms_call(s, "ListAliases", &body, &d, &e) != CKR_OK) {
        buf_free(&body);
        return;
    }
    buf_free(&body);
    int arr = json_get(&d, 0, "Aliases");
    if (arr >= 0 && d.nodes[arr].type == J_ARR && d.nodes[arr].first >= 0) {
        const char *name = json_str(&d, d.nodes[arr].first, "AliasName", NULL);
        if (name != NULL && strncmp(name, "alias/", 6) == 0)
            snprintf(label, cap, "%s", name + 6);
    }
    json_free(&d);
}

static CK_RV discover(slot_t *s, unsigned char *seen)
{
    char marker[1024] = "";
    for (int page = 0; page < 1000; page++) {
        buf_t body = {0};
        jdoc d = {0};
        kms_err e;
        int bad = buf_adds(&body, "{\"Limit\":100");
        if (marker[0])
            bad = bad || buf_adds(&body, ",\"Marker\":") ||
                  json_add_str(&body, marker, strlen(marker));
        bad = bad || buf_adds(&body, "}");
        if (bad) {
            buf_free(&body);
            return CKR_HOST_MEMORY;
        }
        CK_RV rv = kms_call(s, "ListKeys", &body, &d, &e);
        buf_free(&body);
        if (rv != CKR_OK)
            return rv == CKR_FUNCTION_REJECTED ? CKR_OK : rv; /* may not list: none */
        int arr = json_get(&d, 0, "Keys");
        for (int it = arr >= 0 ? d.nodes[arr].first : -1; it >= 0; it = d.nodes[it].next) {
            const char *kid = json_str(&d, it, "KeyId", NULL);
            if (kid == NULL)
                continue;
            int have = 0;
            for (size_t i = 0; i < s->nkeys; i++)
                if (seen[i] && strcmp(s->keys[i]->key_id, kid) == 0)
                    have = 1;
            if (have)
                continue;
            char label[256];
            snprintf(label, sizeof label, "%s", kid);
            alias_label(s, kid, label, sizeof label);
            rv = load_one(s, kid, label, seen);
            if (rv != CKR_OK) {
                json_free(&d);
                return rv;
            }
        }
        const char *next = json_str(&d, 0, "NextMarker", NULL);
        int more = json_bool(&d, 0, "Truncated", 0) && next != NULL && strlen(next) < sizeof marker;
        if (more)
            snprintf(marker, sizeof marker, "%s", next);
        json_free(&d);
        if (!more)
            return CKR_OK;
    }
    return CKR_OK;
}

CK_RV objects_load(slot_t *s)
{
    pthread_mutex_lock(&s->keys_lock);
    unsigned char *seen = calloc(MAX_KEYS, 1);
    CK_RV rv = seen == NULL ? CKR_HOST_MEMORY : CKR_OK;
    for (size_t i = 0; rv == CKR_OK && i < s->conf.nkeys; i++)
        rv = load_one(s, s->conf.keys[i].ref, s->conf.keys[i].label, seen);
    if (rv == CKR_OK && s->conf.discover)
        rv = discover(s, seen);
    if (rv == CKR_OK) {
        for (size_t i = 0; i < s->nkeys; i++)
            if (!seen[i] && !s->keys[i]->created_here)
                __atomic_store_n(&s->keys[i]->gone, 1, __ATOMIC_RELEASE);
        s->loaded_at = time(NULL);
    }
    free(seen);
    pthread_mutex_unlock(&s->keys_lock);
    return rv;
}

void objects_hide(slot_t *s)
{
    pthread_mutex_lock(&s->keys_lock);
    for (size_t i = 0; i < s->nkeys; i++) {
        __atomic_store_n(&s->keys[i]->gone, 1, __ATOMIC_RELEASE);
        s->keys[i]->created_here = 0;
    }
    s->loaded_at = 0;
    pthread_mutex_unlock(&s->keys_lock);
}

CK_RV objects_add_created(slot_t *s, const char *key_id, const char *label, size_t *index)
{
    kmskey_t k;
    int shown;
    CK_RV rv = describe(s, key_id, label, &k, &shown);
    if (rv != CKR_OK)
        return rv;
    if (!shown)
        return CKR_DEVICE_ERROR;
    pthread_mutex_lock(&s->keys_lock);
    unsigned char *seen = calloc(MAX_KEYS, 1);
    if (seen == NULL) {
        pthread_mutex_unlock(&s->keys_lock);
        free(k.spki);
        return CKR_HOST_MEMORY;
    }
    k.created_here = 1;
    rv = upsert(s, &k, seen, index);
    free(seen);
    pthread_mutex_unlock(&s->keys_lock);
    return rv;
}

size_t key_sig_len(const kmskey_t *k)
{
    return k->spec == KS_RSA ? k->pub.nlen : 64;
}

/* ---- attributes --------------------------------------------------------------------- */

enum { A_OK, A_INVALID, A_SENSITIVE };

typedef struct {
    const void *p;
    CK_ULONG len;
    CK_ULONG ul;
    CK_BBOOL b;
    CK_ULONG mechs[12];
} aval;

static void set_bool(aval *v, int x)
{
    v->b = x ? CK_TRUE : CK_FALSE;
    v->p = &v->b;
    v->len = sizeof v->b;
}

static void set_ulong(aval *v, CK_ULONG x)
{
    v->ul = x;
    v->p = &v->ul;
    v->len = sizeof v->ul;
}

static size_t allowed_mechs(const kmskey_t *k, int kind, CK_ULONG *m)
{
    size_t n = 0;
    (void)kind;
    switch (k->spec) {
    case KS_RSA:
        if (k->usage == KU_SIGN) {
            CK_ULONG t[] = {CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS,
                            CKM_SHA512_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS,
                            CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS};
            memcpy(m, t, sizeof t);
            n = sizeof t / sizeof t[0];
        } else {
            m[n++] = CKM_RSA_PKCS_OAEP;
        }
        break;
    case KS_EC:
        m[n++] = CKM_ECDSA;
        m[n++] = CKM_ECDSA_SHA256;
        m[n++] = CKM_ECDSA_SHA384;
        m[n++] = CKM_ECDSA_SHA512;
        break;
    case KS_SM2:
        m[n++] = CKM_HSMPOOL_SM2;
        m[n++] = CKM_HSMPOOL_SM3_SM2;
        m[n++] = CKM_HSMPOOL_SM3_SM2_APPID1;
        break;
    case KS_AES:
        m[n++] = CKM_AES_GCM;
        m[n++] = CKM_HSMPOOL_KMS_SYMMETRIC;
        break;
    default:
        m[n++] = CKM_HSMPOOL_KMS_SYMMETRIC;
    }
    return n;
}

static int attr(const kmskey_t *k, int kind, CK_ATTRIBUTE_TYPE t, aval *v, unsigned char *scratch)
{
    int secret = k->spec == KS_AES || k->spec == KS_SM4;
    int pub = kind == OBJ_PUBLIC, priv = kind == OBJ_PRIVATE && !secret;
    int rsa = k->spec == KS_RSA, ec = k->spec == KS_EC || k->spec == KS_SM2;
    int sign = k->usage == KU_SIGN;
    v->p = NULL;
    v->len = 0;
    switch (t) {
    case CKA_CLASS:
        set_ulong(v, secret ? CKO_SECRET_KEY : pub ? CKO_PUBLIC_KEY : CKO_PRIVATE_KEY);
        return A_OK;
    case CKA_TOKEN: set_bool(v, 1); return A_OK;
    case CKA_PRIVATE: set_bool(v, !pub); return A_OK;
    case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_DESTROYABLE: case CKA_DERIVE:
        set_bool(v, 0); return A_OK;
    case CKA_LABEL:
        v->p = k->label;
        v->len = strlen(k->label);
        return A_OK;
    case CKA_ID:
        v->p = k->id;
        v->len = sizeof k->id;
        return A_OK;
    case CKA_KEY_TYPE:
        set_ulong(v, rsa ? CKK_RSA : ec ? CKK_EC : k->spec == KS_AES ? CKK_AES
                                                                     : CKK_HSMPOOL_SM4);
        return A_OK;
    case CKA_START_DATE: case CKA_END_DATE:
        return A_OK; /* empty */
    case CKA_LOCAL: set_bool(v, 1); return A_OK;
    case CKA_KEY_GEN_MECHANISM:
        set_ulong(v, rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : k->spec == KS_EC ? CKM_EC_KEY_PAIR_GEN
                     : k->spec == KS_AES ? CKM_AES_KEY_GEN : CK_UNAVAILABLE_INFORMATION);
        return A_OK;
    case CKA_ALLOWED_MECHANISMS: {
        size_t n = allowed_mechs(k, kind, v->mechs);
        v->p = v->mechs;
        v->len = (CK_ULONG)(n * sizeof(CK_ULONG));
        return A_OK;
    }
    case CKA_ENCRYPT: set_bool(v, (pub || secret) && !sign); return A_OK;
    case CKA_DECRYPT: set_bool(v, (priv || secret) && !sign); return A_OK;
    case CKA_SIGN: set_bool(v, priv && sign); return A_OK;
    case CKA_VERIFY: set_bool(v, pub && sign); return A_OK;
    case CKA_SIGN_RECOVER: case CKA_UNWRAP:
        if (pub) return A_INVALID;
        set_bool(v, 0); return A_OK;
    case CKA_VERIFY_RECOVER:
        if (!pub) return A_INVALID;
        set_bool(v, 0); return A_OK;
    case CKA_WRAP: case CKA_TRUSTED:
        if (priv) return A_INVALID;
        set_bool(v, 0); return A_OK;
    case CKA_SENSITIVE: case CKA_ALWAYS_SENSITIVE: case CKA_NEVER_EXTRACTABLE:
        if (pub) return A_INVALID;
        set_bool(v, 1); return A_OK;
    case CKA_EXTRACTABLE: case CKA_WRAP_WITH_TRUSTED: case CKA_ALWAYS_AUTHENTICATE:
        if (pub) return A_INVALID;
        set_bool(v, 0); return A_OK;
    case CKA_SUBJECT:
        return secret ? A_INVALID : A_OK; /* empty */
    case CKA_PUBLIC_KEY_INFO:
        if (secret) return A_INVALID;
        v->p = k->spki;
        v->len = k->spki_len;
        return A_OK;
    case CKA_MODULUS:
        if (!rsa) return A_INVALID;
        v->p = k->pub.n;
        v->len = k->pub.nlen;
        return A_OK;
    case CKA_MODULUS_BITS:
        if (!rsa) return A_INVALID;
        set_ulong(v, k->pub.nlen * 8);
        return A_OK;
    case CKA_PUBLIC_EXPONENT:
        if (!rsa) return A_INVALID;
        v->p = k->pub.e;
        v->len = k->pub.elen;
        return A_OK;
    case CKA_PRIVATE_EXPONENT: case CKA_PRIME_1: case CKA_PRIME_2: case CKA_EXPONENT_1:
    case CKA_EXPONENT_2: case CKA_COEFFICIENT:
        return rsa && priv ? A_SENSITIVE : A_INVALID;
    case CKA_EC_PARAMS:
        if (!ec) return A_INVALID;
        v->p = k->pub.params;
        v->len = k->pub.plen;
        return A_OK;
    case CKA_EC_POINT: {
        if (!ec) return A_INVALID;
        int n = der_wrap_octets(k->pub.point, k->pub.ptlen, scratch, 256);
        if (n < 0) return A_INVALID;
        v->p = scratch;
        v->len = (CK_ULONG)n;
        return A_OK;
    }
    case CKA_VALUE:
        return priv || secret ? A_SENSITIVE : A_INVALID;
    case CKA_VALUE_LEN:
        if (!secret) return A_INVALID;
        set_ulong(v, k->spec == KS_AES ? 32 : 16);
        return A_OK;
    default:
        return A_INVALID;
    }
}

CK_RV obj_get_attributes(slot_t *s, const kmskey_t *k, int kind, CK_ATTRIBUTE *tpl, CK_ULONG n)
{
    (void)s;
    CK_RV rv = CKR_OK;
    for (CK_ULONG i = 0; i < n; i++) {
        aval v;
        unsigned char scratch[256];
        int r = attr(k, kind, tpl[i].type, &v, scratch);
        if (r != A_OK) {
            tpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL)
                rv = r == A_SENSITIVE ? CKR_ATTRIBUTE_SENSITIVE : CKR_ATTRIBUTE_TYPE_INVALID;
            continue;
        }
        if (tpl[i].pValue == NULL) {
            tpl[i].ulValueLen = v.len;
        } else if (tpl[i].ulValueLen < v.len) {
            tpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK)
                rv = CKR_BUFFER_TOO_SMALL;
        } else {
            if (v.len > 0)
                memcpy(tpl[i].pValue, v.p, v.len);
            tpl[i].ulValueLen = v.len;
        }
    }
    return rv;
}

int obj_matches(slot_t *s, const kmskey_t *k, int kind, const CK_ATTRIBUTE *tpl, CK_ULONG n)
{
    (void)s;
    for (CK_ULONG i = 0; i < n; i++) {
        aval v;
        unsigned char scratch[256];
        if (attr(k, kind, tpl[i].type, &v, scratch) != A_OK || v.len != tpl[i].ulValueLen)
            return 0;
        if (v.len > 0 && (tpl[i].pValue == NULL || memcmp(v.p, tpl[i].pValue, v.len) != 0))
            return 0;
    }
    return 1;
}
