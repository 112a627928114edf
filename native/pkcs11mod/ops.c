/* ops.c - the cryptographic operations of a session, each one KMS call at its end.
 *
 * Hashing mechanisms (CKM_SHA*_RSA_PKCS[_PSS], CKM_ECDSA_SHA*, the SM3-with-SM2 vendor
 * mechanisms) hash here, part by part, and send the digest (MessageType DIGEST); the other
 * mechanisms take the digest as their input. A result is computed once: a call with a NULL
 * output learns its size (known beforehand), and a result that does not fit the caller's
 * buffer is kept for the next call (CKR_BUFFER_TOO_SMALL). docs/pkcs11.md lists the
 * mechanisms and the KMS algorithms they map to.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11m.h"

#define MAX_PLAINTEXT 4096 /* the AWS KMS front end's Encrypt limit */
#define KMS_CT_OVERHEAD 46 /* format(1) | version id(16) | algorithm(1) | nonce(12) | tag(16) */

void op_reset(op_t *op)
{
    if (op->md != NULL)
        EVP_MD_CTX_free(op->md);
    buf_free(&op->data);
    buf_free(&op->aad);
    buf_free(&op->result);
    memset(op, 0, sizeof *op);
}

typedef struct {
    CK_MECHANISM_TYPE mech;
    int hashing;           /* hashes its input here */
    const char *hash;      /* KMS hash name */
    size_t hlen;
} mech_hash;

static const mech_hash HASHING[] = {
    {CKM_SHA256_RSA_PKCS, 1, "SHA_256", 32}, {CKM_SHA384_RSA_PKCS, 1, "SHA_384", 48},
    {CKM_SHA512_RSA_PKCS, 1, "SHA_512", 64}, {CKM_SHA256_RSA_PKCS_PSS, 1, "SHA_256", 32},
    {CKM_SHA384_RSA_PKCS_PSS, 1, "SHA_384", 48}, {CKM_SHA512_RSA_PKCS_PSS, 1, "SHA_512", 64},
    {CKM_ECDSA_SHA256, 1, "SHA_256", 32}, {CKM_ECDSA_SHA384, 1, "SHA_384", 48},
    {CKM_ECDSA_SHA512, 1, "SHA_512", 64}, {CKM_HSMPOOL_SM3_SM2, 1, "SM3", 32},
    {CKM_HSMPOOL_SM3_SM2_APPID1, 1, "SM3", 32}, {CKM_SHA_1, 1, "SHA_1", 20},
    {CKM_SHA224, 1, "SHA_224", 28}, {CKM_SHA256, 1, "SHA_256", 32},
    {CKM_SHA384, 1, "SHA_384", 48}, {CKM_SHA512, 1, "SHA_512", 64},
};

static const EVP_MD *md_of(const char *name)
{
    if (strcmp(name, "SHA_1") == 0) return EVP_sha1();
    if (strcmp(name, "SHA_224") == 0) return EVP_sha224();
    if (strcmp(name, "SHA_256") == 0) return EVP_sha256();
    if (strcmp(name, "SHA_384") == 0) return EVP_sha384();
    if (strcmp(name, "SHA_512") == 0) return EVP_sha512();
    if (strcmp(name, "SM3") == 0) return EVP_sm3();
    return NULL;
}

static const mech_hash *hashing_of(CK_MECHANISM_TYPE m)
{
    for (size_t i = 0; i < sizeof HASHING / sizeof HASHING[0]; i++)
        if (HASHING[i].mech == m)
            return &HASHING[i];
    return NULL;
}

static const char *hash_of_ckm(CK_MECHANISM_TYPE h, size_t *hlen, CK_ULONG *mgf)
{
    switch (h) {
    case CKM_SHA_1: *hlen = 20; *mgf = CKG_MGF1_SHA1; return "SHA_1";
    case CKM_SHA256: *hlen = 32; *mgf = CKG_MGF1_SHA256; return "SHA_256";
    case CKM_SHA384: *hlen = 48; *mgf = CKG_MGF1_SHA384; return "SHA_384";
    case CKM_SHA512: *hlen = 64; *mgf = CKG_MGF1_SHA512; return "SHA_512";
    default: return NULL;
    }
}

/* The GB/T 32918 curve constants and default user ID for Z = SM3(ENTL || ID || a || b ||
 * xG || yG || xA || yA). */
static const unsigned char SM2_ABG[128] = {
    0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFC, 0x28, 0xE9, 0xFA, 0x9E, 0x9D, 0x9F, 0x5E, 0x34, 0x4D, 0x5A, 0x9E, 0x4B, 0xCF,
    0x65, 0x09, 0xA7, 0xF3, 0x97, 0x89, 0xF5, 0x15, 0xAB, 0x8F, 0x92, 0xDD, 0xBC, 0xBD, 0x41,
    0x4D, 0x94, 0x0E, 0x93, 0x32, 0xC4, 0xAE, 0x2C, 0x1F, 0x19, 0x81, 0x19, 0x5F, 0x99, 0x04,
    0x46, 0x6A, 0x39, 0xC9, 0x94, 0x8F, 0xE3, 0x0B, 0xBF, 0xF2, 0x66, 0x0B, 0xE1, 0x71, 0x5A,
    0x45, 0x89, 0x33, 0x4C, 0x74, 0xC7, 0xBC, 0x37, 0x36, 0xA2, 0xF4, 0xF6, 0x77, 0x9C, 0x59,
    0xBD, 0xCE, 0xE3, 0x6B, 0x69, 0x21, 0x53, 0xD0, 0xA9, 0x87, 0x7C, 0xC6, 0x2A, 0x47, 0x40,
    0x02, 0xDF, 0x32, 0xE5, 0x21, 0x39, 0xF0, 0xA0};
static const char SM2_DEFAULT_ID[] = "1234567812345678";

static int sm2_z(const kmskey_t *k, unsigned char z[32])
{
    unsigned char entl[2] = {0x00, 0x80}; /* 16 bytes = 128 bits */
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 32;
    int ok = c != NULL && EVP_DigestInit_ex(c, EVP_sm3(), NULL) == 1 &&
             EVP_DigestUpdate(c, entl, 2) == 1 &&
             EVP_DigestUpdate(c, SM2_DEFAULT_ID, 16) == 1 &&
             EVP_DigestUpdate(c, SM2_ABG, sizeof SM2_ABG) == 1 &&
             EVP_DigestUpdate(c, k->pub.point + 1, 64) == 1 &&
             EVP_DigestFinal_ex(c, z, &n) == 1;
    EVP_MD_CTX_free(c);
    return ok ? 0 : -1;
}

static int is_secret(const kmskey_t *k)
{
    return k->spec == KS_AES || k->spec == KS_SM4;
}

static CK_RV check_pss(const CK_MECHANISM *m, op_t *op)
{
    if (m->pParameter == NULL || m->ulParameterLen != sizeof(CK_RSA_PKCS_PSS_PARAMS))
        return CKR_MECHANISM_PARAM_INVALID;
    const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
    size_t hlen;
    CK_ULONG mgf;
    const char *h = hash_of_ckm(p->hashAlg, &hlen, &mgf);
    if (h == NULL || strcmp(h, "SHA_1") == 0 || p->mgf != mgf || p->sLen != hlen)
        return CKR_MECHANISM_PARAM_INVALID; /* the KMS: MGF1 and salt of the same hash */
    if (op->hash_name != NULL && strcmp(op->hash_name, h) != 0)
        return CKR_MECHANISM_PARAM_INVALID;
    op->hash_name = h;
    op->hash_len = hlen;
    return CKR_OK;
}

static CK_RV check_oaep(const CK_MECHANISM *m, op_t *op)
{
    if (m->pParameter == NULL || m->ulParameterLen != sizeof(CK_RSA_PKCS_OAEP_PARAMS))
        return CKR_MECHANISM_PARAM_INVALID;
    const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;
    size_t hlen;
    CK_ULONG mgf;
    const char *h = hash_of_ckm(p->hashAlg, &hlen, &mgf);
    if (h == NULL || (strcmp(h, "SHA_1") != 0 && strcmp(h, "SHA_256") != 0) || p->mgf != mgf)
        return CKR_MECHANISM_PARAM_INVALID;
    if (p->source != 0 && (p->source != CKZ_DATA_SPECIFIED || p->ulSourceDataLen != 0))
        return CKR_MECHANISM_PARAM_INVALID; /* no OAEP label in the KMS */
    op->enc_alg = strcmp(h, "SHA_1") == 0 ? "RSAES_OAEP_SHA_1" : "RSAES_OAEP_SHA_256";
    op->hash_len = hlen;
    return CKR_OK;
}

/* CK_GCM_PARAMS in the 3.0 layout (with ulIvBits) or the older one without it. */
static CK_RV check_gcm(const CK_MECHANISM *m, op_t *op)
{
    const unsigned char *aad = NULL;
    CK_ULONG iv_len, aad_len, tag_bits;
    if (m->pParameter != NULL && m->ulParameterLen == sizeof(CK_GCM_PARAMS)) {
        const CK_GCM_PARAMS *p = m->pParameter;
        iv_len = p->ulIvLen;
        aad = p->pAAD;
        aad_len = p->ulAADLen;
        tag_bits = p->ulTagBits;
    } else if (m->pParameter != NULL && m->ulParameterLen == 5 * sizeof(CK_ULONG)) {
        const struct { unsigned char *iv; CK_ULONG iv_len; unsigned char *aad;
                       CK_ULONG aad_len, tag_bits; } *p = m->pParameter;
        iv_len = p->iv_len;
        aad = p->aad;
        aad_len = p->aad_len;
        tag_bits = p->tag_bits;
    } else {
        return CKR_MECHANISM_PARAM_INVALID;
    }
    /* The KMS chooses the nonce (it is inside its ciphertext): the IV must be empty. */
    if (iv_len != 0 || (tag_bits != 0 && tag_bits != 128) || aad_len > 4096 ||
        (aad_len > 0 && aad == NULL))
        return CKR_MECHANISM_PARAM_INVALID;
    if (aad_len > 0 && buf_add(&op->aad, aad, aad_len) != 0)
        return CKR_HOST_MEMORY;
    return CKR_OK;
}

CK_RV op_init(slot_t *s, op_t *op, int kind, const CK_MECHANISM *m, kmskey_t *k, int objkind)
{
    (void)s;
    op_reset(op);
    op->kind = kind;
    op->mech = m->mechanism;
    op->key = k;
    const mech_hash *mh = hashing_of(m->mechanism);
    CK_RV rv = CKR_MECHANISM_INVALID;
    if (kind == OP_DIGEST) {
        if (m->mechanism != CKM_SHA_1 && m->mechanism != CKM_SHA224 &&
            m->mechanism != CKM_SHA256 && m->mechanism != CKM_SHA384 &&
            m->mechanism != CKM_SHA512)
            goto fail;
        rv = CKR_OK;
    } else if (kind == OP_SIGN || kind == OP_VERIFY) {
        if (is_secret(k) || k->usage != KU_SIGN) {
            rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
            goto fail;
        }
        if (kind == OP_SIGN && objkind != OBJ_PRIVATE) {
            rv = CKR_KEY_TYPE_INCONSISTENT;
            goto fail;
        }
        switch (m->mechanism) {
        case CKM_RSA_PKCS: case CKM_SHA256_RSA_PKCS: case CKM_SHA384_RSA_PKCS:
        case CKM_SHA512_RSA_PKCS:
            rv = k->spec == KS_RSA ? CKR_OK : CKR_KEY_TYPE_INCONSISTENT;
            break;
        case CKM_RSA_PKCS_PSS: case CKM_SHA256_RSA_PKCS_PSS: case CKM_SHA384_RSA_PKCS_PSS:
        case CKM_SHA512_RSA_PKCS_PSS:
            rv = k->spec == KS_RSA ? CKR_OK : CKR_KEY_TYPE_INCONSISTENT;
            if (rv == CKR_OK) {
                if (mh != NULL)
                    op->hash_name = mh->hash;
                rv = check_pss(m, op);
            }
            break;
        case CKM_ECDSA: case CKM_ECDSA_SHA256: case CKM_ECDSA_SHA384: case CKM_ECDSA_SHA512:
            rv = k->spec == KS_EC ? CKR_OK : CKR_KEY_TYPE_INCONSISTENT;
            break;
        case CKM_HSMPOOL_SM2: case CKM_HSMPOOL_SM3_SM2: case CKM_HSMPOOL_SM3_SM2_APPID1:
            rv = k->spec == KS_SM2 ? CKR_OK : CKR_KEY_TYPE_INCONSISTENT;
            break;
        default:
            rv = CKR_MECHANISM_INVALID;
        }
        if (rv != CKR_OK)
            goto fail;
        if (m->mechanism != CKM_RSA_PKCS_PSS && !(m->mechanism >= CKM_SHA256_RSA_PKCS_PSS &&
                                                  m->mechanism <= CKM_SHA512_RSA_PKCS_PSS) &&
            m->pParameter != NULL && m->ulParameterLen != 0) {
            rv = CKR_MECHANISM_PARAM_INVALID;
            goto fail;
        }
    } else { /* encrypt, decrypt */
        if (m->mechanism == CKM_RSA_PKCS_OAEP) {
            if (k->spec != KS_RSA || k->usage != KU_ENCRYPT) {
                rv = k->spec == KS_RSA ? CKR_KEY_FUNCTION_NOT_PERMITTED
                                       : CKR_KEY_TYPE_INCONSISTENT;
                goto fail;
            }
            if (kind == OP_DECRYPT && objkind != OBJ_PRIVATE) {
                rv = CKR_KEY_TYPE_INCONSISTENT;
                goto fail;
            }
            rv = check_oaep(m, op);
        } else if (m->mechanism == CKM_AES_GCM) {
            rv = k->spec == KS_AES ? check_gcm(m, op) : CKR_KEY_TYPE_INCONSISTENT;
        } else if (m->mechanism == CKM_HSMPOOL_KMS_SYMMETRIC) {
            rv = is_secret(k) ? CKR_OK : CKR_KEY_TYPE_INCONSISTENT;
            if (rv == CKR_OK && m->ulParameterLen > 4096)
                rv = CKR_MECHANISM_PARAM_INVALID;
            if (rv == CKR_OK && m->ulParameterLen > 0 &&
                (m->pParameter == NULL ||
                 buf_add(&op->aad, m->pParameter, m->ulParameterLen) != 0))
                rv = m->pParameter == NULL ? CKR_MECHANISM_PARAM_INVALID : CKR_HOST_MEMORY;
        } else {
            rv = CKR_MECHANISM_INVALID;
        }
        if (rv != CKR_OK)
            goto fail;
    }
    if (mh != NULL) {
        op->hash_name = mh->hash;
        op->hash_len = mh->hlen;
        op->md = EVP_MD_CTX_new();
        const EVP_MD *md = md_of(mh->hash);
        if (op->md == NULL || md == NULL || EVP_DigestInit_ex(op->md, md, NULL) != 1) {
            rv = CKR_HOST_MEMORY;
            goto fail;
        }
        if (k != NULL && k->spec == KS_SM2) {
            unsigned char z[32];
            if (sm2_z(k, z) != 0 || EVP_DigestUpdate(op->md, z, 32) != 1) {
                rv = CKR_GENERAL_ERROR;
                goto fail;
            }
        }
    }
    return CKR_OK;
fail:
    op_reset(op);
    return rv;
}

CK_RV op_update(op_t *op, const unsigned char *in, size_t n)
{
    op->updated = 1;
    if (op->md != NULL)
        return EVP_DigestUpdate(op->md, in, n) == 1 ? CKR_OK : CKR_GENERAL_ERROR;
    if (op->data.len + n > 65536)
        return CKR_DATA_LEN_RANGE;
    return buf_add(&op->data, in, n) == 0 ? CKR_OK : CKR_HOST_MEMORY;
}

/* The size of the result, known before the KMS call (for decryption: an upper bound). */
static CK_RV result_size(const op_t *op, size_t in_len, size_t *n)
{
    const kmskey_t *k = op->key;
    size_t total = op->data.len + in_len;
    switch (op->kind) {
    case OP_DIGEST:
        *n = op->hash_len;
        return CKR_OK;
    case OP_SIGN:
        *n = key_sig_len(k);
        return CKR_OK;
    case OP_ENCRYPT:
        if (op->mech == CKM_RSA_PKCS_OAEP) {
            if (total + 2 * op->hash_len + 2 > k->pub.nlen)
                return CKR_DATA_LEN_RANGE;
            *n = k->pub.nlen;
        } else {
            if (total == 0 || total > MAX_PLAINTEXT)
                return CKR_DATA_LEN_RANGE;
            *n = total + KMS_CT_OVERHEAD;
        }
        return CKR_OK;
    case OP_DECRYPT:
        if (op->mech == CKM_RSA_PKCS_OAEP) {
            if (total != k->pub.nlen)
                return CKR_ENCRYPTED_DATA_LEN_RANGE;
            *n = k->pub.nlen - 2 * op->hash_len - 2;
        } else {
            if (total <= KMS_CT_OVERHEAD || total > MAX_PLAINTEXT + 1024)
                return CKR_ENCRYPTED_DATA_LEN_RANGE;
            *n = total - KMS_CT_OVERHEAD;
        }
        return CKR_OK;
    default:
        return CKR_OPERATION_NOT_INITIALIZED;
    }
}

static int add_b64_field(buf_t *b, const char *name, const unsigned char *v, size_t n)
{
    char *enc = malloc(b64_len(n) + 1);
    if (enc == NULL)
        return -1;
    b64_encode(v, n, enc);
    int rc = buf_addf(b, ",\"%s\":\"%s\"", name, enc);
    wipe(enc, b64_len(n));
    free(enc);
    return rc;
}

static int add_context(buf_t *b, const buf_t *aad)
{
    if (aad->len == 0)
        return 0;
    char *enc = malloc(b64_len(aad->len) + 1);
    if (enc == NULL)
        return -1;
    b64_encode(aad->p, aad->len, enc);
    int rc = buf_addf(b, ",\"EncryptionContext\":{\"pkcs11-aad\":\"%s\"}", enc);
    free(enc);
    return rc;
}

/* The digest a signature covers, in the form the KMS Sign/Verify DIGEST wants. */
static CK_RV sign_input(op_t *op, const unsigned char *in, size_t in_len, unsigned char *dg,
                        size_t *dlen, const char **alg, char *algbuf, size_t algcap)
{
    const kmskey_t *k = op->key;
    const unsigned char *data = op->data.len ? op->data.p : in;
    size_t len = op->data.len ? op->data.len : in_len;
    if (op->data.len && in_len) {
        if (buf_add(&op->data, in, in_len) != 0)
            return CKR_HOST_MEMORY;
        data = op->data.p;
        len = op->data.len;
    }
    if (op->md != NULL) {
        unsigned int n = 0;
        if ((in_len > 0 && EVP_DigestUpdate(op->md, in, in_len) != 1) ||
            EVP_DigestFinal_ex(op->md, dg, &n) != 1)
            return CKR_GENERAL_ERROR;
        *dlen = n;
    } else if (op->mech == CKM_RSA_PKCS) {
        const unsigned char *d;
        const char *h = digestinfo_parse(data, len, &d, dlen);
        if (h == NULL)
            return CKR_DATA_INVALID; /* only SHA-256/384/512 DigestInfo can be signed */
        memcpy(dg, d, *dlen);
        op->hash_name = h;
    } else if (k->spec == KS_RSA) { /* PSS on a digest */
        if (len != op->hash_len)
            return CKR_DATA_LEN_RANGE;
        memcpy(dg, data, len);
        *dlen = len;
    } else if (k->spec == KS_SM2) {
        if (len != 32)
            return CKR_DATA_LEN_RANGE;
        memcpy(dg, data, 32);
        *dlen = 32;
    } else { /* ECDSA on a digest: its leftmost 256 bits, as ECDSA itself truncates */
        if (len == 0 || len > 64)
            return CKR_DATA_LEN_RANGE;
        memset(dg, 0, 32);
        if (len >= 32)
            memcpy(dg, data, 32);
        else
            memcpy(dg + 32 - len, data, len);
        *dlen = 32;
    }
    if (k->spec == KS_EC) {
        if (*dlen > 32)
            *dlen = 32; /* ECDSA_SHA384/512 on P-256: the leftmost 256 bits of the hash */
        *alg = "ECDSA_SHA_256";
    } else if (k->spec == KS_SM2) {
        *alg = "SM2DSA";
    } else {
        int pss = op->mech == CKM_RSA_PKCS_PSS ||
                  (op->mech >= CKM_SHA256_RSA_PKCS_PSS && op->mech <= CKM_SHA512_RSA_PKCS_PSS);
        snprintf(algbuf, algcap, "%s_%s", pss ? "RSASSA_PSS" : "RSASSA_PKCS1_V1_5",
                 op->hash_name);
        *alg = algbuf;
    }
    return CKR_OK;
}

static CK_RV do_sign_verify(slot_t *s, op_t *op, const unsigned char *in, size_t in_len,
                            const unsigned char *sig, size_t sig_len, buf_t *out)
{
    unsigned char dg[64];
    size_t dlen = 0;
    const char *alg;
    char algbuf[48];
    const kmskey_t *k = op->key;
    CK_RV rv = sign_input(op, in, in_len, dg, &dlen, &alg, algbuf, sizeof algbuf);
    if (rv != CKR_OK)
        return rv;
    buf_t body = {0}, der = {0};
    jdoc d = {0};
    kms_err e;
    int verify = op->kind == OP_VERIFY;
    if (verify) {
        if (sig_len != key_sig_len(k))
            return CKR_SIGNATURE_LEN_RANGE;
        if (k->spec == KS_RSA)
            rv = buf_add(&der, sig, sig_len) ? CKR_HOST_MEMORY : CKR_OK;
        else
            rv = ecsig_raw_to_der(sig, sig_len, &der) ? CKR_SIGNATURE_INVALID : CKR_OK;
        if (rv != CKR_OK)
            goto out;
    }
    if (buf_adds(&body, "{\"KeyId\":") || json_add_str(&body, k->key_id, strlen(k->key_id)) ||
        buf_addf(&body, ",\"MessageType\":\"DIGEST\",\"SigningAlgorithm\":\"%s\"", alg) ||
        add_b64_field(&body, "Message", dg, dlen) ||
        (verify && add_b64_field(&body, "Signature", der.p, der.len)) || buf_adds(&body, "}")) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    rv = kms_call(s, verify ? "Verify" : "Sign", &body, &d, &e);
    if (rv != CKR_OK || verify) {
        if (rv == CKR_OK && !json_bool(&d, 0, "SignatureValid", 0))
            rv = CKR_SIGNATURE_INVALID;
        goto out;
    }
    buf_t raw = {0};
    rv = kms_blob(&d, "Signature", &raw);
    if (rv == CKR_OK) {
        if (k->spec == KS_RSA) {
            if (raw.len != k->pub.nlen || buf_add(out, raw.p, raw.len) != 0)
                rv = CKR_DEVICE_ERROR;
        } else {
            unsigned char rs[64];
            if (ecsig_der_to_raw(raw.p, raw.len, 32, rs) != 0 || buf_add(out, rs, 64) != 0)
                rv = CKR_DEVICE_ERROR;
        }
    }
    buf_free(&raw);
out:
    wipe(dg, sizeof dg);
    json_free(&d);
    buf_free(&body);
    buf_free(&der);
    return rv;
}

static CK_RV do_crypt(slot_t *s, op_t *op, const unsigned char *in, size_t in_len, buf_t *out)
{
    const kmskey_t *k = op->key;
    if (op->data.len && in_len && buf_add(&op->data, in, in_len) != 0)
        return CKR_HOST_MEMORY;
    const unsigned char *data = op->data.len ? op->data.p : in;
    size_t len = op->data.len ? op->data.len : in_len;
    int enc = op->kind == OP_ENCRYPT, rsa = op->mech == CKM_RSA_PKCS_OAEP;
    buf_t body = {0};
    jdoc d = {0};
    kms_err e;
    CK_RV rv = CKR_HOST_MEMORY;
    if (buf_adds(&body, "{\"KeyId\":") || json_add_str(&body, k->key_id, strlen(k->key_id)) ||
        add_b64_field(&body, enc ? "Plaintext" : "CiphertextBlob", data, len) ||
        (rsa && buf_addf(&body, ",\"EncryptionAlgorithm\":\"%s\"", op->enc_alg)) ||
        (!rsa && add_context(&body, &op->aad)) || buf_adds(&body, "}"))
        goto out;
    rv = kms_call(s, enc ? "Encrypt" : "Decrypt", &body, &d, &e);
    if (rv == CKR_OK)
        rv = kms_blob(&d, enc ? "CiphertextBlob" : "Plaintext", out);
    if (rv == CKR_KEY_HANDLE_INVALID && !enc)
        rv = CKR_ENCRYPTED_DATA_INVALID;
out:
    json_free(&d);
    buf_free(&body);
    return rv;
}

CK_RV op_final(slot_t *s, op_t *op, const unsigned char *in, size_t in_len,
               unsigned char *out, CK_ULONG *out_len, const unsigned char *sig, size_t sig_len)
{
    CK_RV rv;
    if (op->kind == OP_VERIFY) {
        rv = do_sign_verify(s, op, in, in_len, sig, sig_len, NULL);
        op_reset(op);
        return rv;
    }
    if (!op->have_result) {
        size_t need;
        rv = result_size(op, in_len, &need);
        if (rv != CKR_OK) {
            op_reset(op);
            return rv;
        }
        if (out == NULL) {
            *out_len = need;
            return CKR_OK;
        }
        if (op->kind == OP_DIGEST) {
            unsigned char dg[64];
            unsigned int n = 0;
            if (*out_len < need) {
                *out_len = need;
                return CKR_BUFFER_TOO_SMALL;
            }
            if ((in_len && EVP_DigestUpdate(op->md, in, in_len) != 1) ||
                EVP_DigestFinal_ex(op->md, dg, &n) != 1) {
                op_reset(op);
                return CKR_GENERAL_ERROR;
            }
            rv = buf_add(&op->result, dg, n) ? CKR_HOST_MEMORY : CKR_OK;
        } else if (op->kind == OP_SIGN) {
            rv = do_sign_verify(s, op, in, in_len, NULL, 0, &op->result);
        } else {
            rv = do_crypt(s, op, in, in_len, &op->result);
        }
        if (rv != CKR_OK) {
            op_reset(op);
            return rv;
        }
        op->have_result = 1;
    }
    if (out == NULL) {
        *out_len = op->result.len;
        return CKR_OK;
    }
    if (*out_len < op->result.len) {
        *out_len = op->result.len;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (op->result.len > 0)
        memcpy(out, op->result.p, op->result.len);
    *out_len = op->result.len;
    op_reset(op);
    return CKR_OK;
}

CK_RV ops_random(slot_t *s, unsigned char *out, size_t n)
{
    while (n > 0) {
        size_t take = n > 1024 ? 1024 : n;
        buf_t body = {0}, bytes = {0};
        jdoc d = {0};
        kms_err e;
        if (buf_addf(&body, "{\"NumberOfBytes\":%zu}", take) != 0)
            return CKR_HOST_MEMORY;
        CK_RV rv = kms_call(s, "GenerateRandom", &body, &d, &e);
        buf_free(&body);
        if (rv == CKR_OK)
            rv = kms_blob(&d, "Plaintext", &bytes);
        json_free(&d);
        if (rv == CKR_OK && bytes.len != take)
            rv = CKR_DEVICE_ERROR;
        if (rv != CKR_OK) {
            buf_free(&bytes);
            return rv;
        }
        memcpy(out, bytes.p, take);
        buf_free(&bytes);
        out += take;
        n -= take;
    }
    return CKR_OK;
}

static const CK_ATTRIBUTE *find_attr(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

static int attr_true(const CK_ATTRIBUTE *a)
{
    return a != NULL && a->pValue != NULL && a->ulValueLen == sizeof(CK_BBOOL) &&
           *(const CK_BBOOL *)a->pValue;
}

static int valid_alias(const char *label)
{
    if (*label == 0 || strlen(label) > 250 || strncmp(label, "aws", 3) == 0)
        return 0;
    for (const char *p = label; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '/' || *p == '_' || *p == '-'))
            return 0;
    return 1;
}

CK_RV ops_generate_key_pair(slot_t *s, const CK_MECHANISM *m, const CK_ATTRIBUTE *pub,
                            CK_ULONG npub, const CK_ATTRIBUTE *priv, CK_ULONG npriv,
                            size_t *index)
{
    const char *spec;
    if (m->mechanism == CKM_RSA_PKCS_KEY_PAIR_GEN) {
        const CK_ATTRIBUTE *bits = find_attr(pub, npub, CKA_MODULUS_BITS);
        if (bits == NULL || bits->pValue == NULL || bits->ulValueLen != sizeof(CK_ULONG))
            return CKR_TEMPLATE_INCOMPLETE;
        CK_ULONG b = *(const CK_ULONG *)bits->pValue;
        spec = b == 2048 ? "RSA_2048" : b == 3072 ? "RSA_3072" : b == 4096 ? "RSA_4096" : NULL;
        if (spec == NULL)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        const CK_ATTRIBUTE *e = find_attr(pub, npub, CKA_PUBLIC_EXPONENT);
        if (e != NULL) {
            const unsigned char *v = e->pValue;
            size_t n = e->ulValueLen;
            while (n > 0 && v != NULL && *v == 0) {
                v++;
                n--;
            }
            if (v == NULL || n != 3 || v[0] != 1 || v[1] != 0 || v[2] != 1)
                return CKR_ATTRIBUTE_VALUE_INVALID; /* the KMS uses 65537 */
        }
    } else if (m->mechanism == CKM_EC_KEY_PAIR_GEN) {
        const CK_ATTRIBUTE *p = find_attr(pub, npub, CKA_EC_PARAMS);
        if (p == NULL || p->pValue == NULL)
            return CKR_TEMPLATE_INCOMPLETE;
        if (p->ulValueLen == sizeof OID_P256 && memcmp(p->pValue, OID_P256, sizeof OID_P256) == 0)
            spec = "ECC_NIST_P256";
        else if (p->ulValueLen == sizeof OID_SECP256K1 &&
                 memcmp(p->pValue, OID_SECP256K1, sizeof OID_SECP256K1) == 0)
            spec = "ECC_SECG_P256K1";
        else if (p->ulValueLen == sizeof OID_SM2 && memcmp(p->pValue, OID_SM2, sizeof OID_SM2) == 0)
            spec = "SM2";
        else
            return CKR_CURVE_NOT_SUPPORTED;
    } else {
        return CKR_MECHANISM_INVALID;
    }
    int encrypt = attr_true(find_attr(priv, npriv, CKA_DECRYPT)) ||
                  attr_true(find_attr(pub, npub, CKA_ENCRYPT));
    int sign = attr_true(find_attr(priv, npriv, CKA_SIGN)) ||
               attr_true(find_attr(pub, npub, CKA_VERIFY));
    /* A KMS key has one usage: ENCRYPT_DECRYPT only when encryption and not signing is
     * asked for (templates that ask for both, as python-pkcs11's defaults do, sign). */
    if (encrypt && !sign && m->mechanism == CKM_EC_KEY_PAIR_GEN)
        return CKR_TEMPLATE_INCONSISTENT;
    const char *usage = encrypt && !sign ? "ENCRYPT_DECRYPT" : "SIGN_VERIFY";
    char label[256] = "";
    const CK_ATTRIBUTE *la = find_attr(priv, npriv, CKA_LABEL);
    if (la == NULL)
        la = find_attr(pub, npub, CKA_LABEL);
    if (la != NULL && la->pValue != NULL && la->ulValueLen > 0) {
        if (la->ulValueLen >= sizeof label)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        memcpy(label, la->pValue, la->ulValueLen);
        label[la->ulValueLen] = 0;
    }
    buf_t body = {0};
    jdoc d = {0};
    kms_err e;
    CK_RV rv = CKR_HOST_MEMORY;
    if (buf_addf(&body, "{\"KeySpec\":\"%s\",\"KeyUsage\":\"%s\",\"Description\":", spec,
                 usage) ||
        json_add_str(&body, "made by the hsmpool PKCS#11 module", 34) || buf_adds(&body, "}"))
        goto out;
    rv = kms_call(s, "CreateKey", &body, &d, &e);
    if (rv != CKR_OK)
        goto out;
    int md = json_get(&d, 0, "KeyMetadata");
    const char *kid = json_str(&d, md, "KeyId", NULL);
    char key_id[64];
    if (kid == NULL || strlen(kid) >= sizeof key_id) {
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    snprintf(key_id, sizeof key_id, "%s", kid);
    json_free(&d);
    if (label[0] && valid_alias(label)) { /* best effort: the label as alias/<label> */
        buf_free(&body);
        if (buf_adds(&body, "{\"AliasName\":\"alias/") == 0 && buf_adds(&body, label) == 0 &&
            buf_adds(&body, "\",\"TargetKeyId\":") == 0 &&
            json_add_str(&body, key_id, strlen(key_id)) == 0 && buf_adds(&body, "}") == 0 &&
            kms_call(s, "CreateAlias", &body, &d, &e) == CKR_OK)
            json_free(&d);
    }
    rv = objects_add_created(s, key_id, label[0] ? label : key_id, index);
out:
    json_free(&d);
    buf_free(&body);
    return rv;
}
