/* SM2 signatures and encryption over OpenSSL 3 (see sm2.h). */
#include "sm2.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/encoder.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>

#include "sm3.h"

struct hsm_sm2_key {
    EVP_PKEY *pkey;
    int has_priv;
    uint8_t pub[65]; /* 04 || x || y */
};

/* Curve parameters of the SM2 recommended curve (GB/T 32918.5-2017), as hashed into ZA. */
static const uint8_t SM2_A[32] = {
    0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc};
static const uint8_t SM2_B[32] = {
    0x28, 0xe9, 0xfa, 0x9e, 0x9d, 0x9f, 0x5e, 0x34, 0x4d, 0x5a, 0x9e, 0x4b, 0xcf, 0x65, 0x09, 0xa7,
    0xf3, 0x97, 0x89, 0xf5, 0x15, 0xab, 0x8f, 0x92, 0xdd, 0xbc, 0xbd, 0x41, 0x4d, 0x94, 0x0e, 0x93};
static const uint8_t SM2_GX[32] = {
    0x32, 0xc4, 0xae, 0x2c, 0x1f, 0x19, 0x81, 0x19, 0x5f, 0x99, 0x04, 0x46, 0x6a, 0x39, 0xc9, 0x94,
    0x8f, 0xe3, 0x0b, 0xbf, 0xf2, 0x66, 0x0b, 0xe1, 0x71, 0x5a, 0x45, 0x89, 0x33, 0x4c, 0x74, 0xc7};
static const uint8_t SM2_GY[32] = {
    0xbc, 0x37, 0x36, 0xa2, 0xf4, 0xf6, 0x77, 0x9c, 0x59, 0xbd, 0xce, 0xe3, 0x6b, 0x69, 0x21, 0x53,
    0xd0, 0xa9, 0x87, 0x7c, 0xc6, 0x2a, 0x47, 0x40, 0x02, 0xdf, 0x32, 0xe5, 0x21, 0x39, 0xf0, 0xa0};

static void secure_zero(void *p, size_t n) {
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

/* ------------------------------------------------------------------------------------------ */
/* Minimal strict DER helpers (definite, minimal lengths only).                               */

static size_t der_len_size(size_t n) {
    size_t s = 1;
    if (n >= 0x80)
        for (size_t t = n; t; t >>= 8) s++;
    return s;
}

static uint8_t *der_put_len(uint8_t *p, size_t n) {
    if (n < 0x80) {
        *p++ = (uint8_t)n;
        return p;
    }
    size_t k = der_len_size(n) - 1;
    *p++ = (uint8_t)(0x80 | k);
    for (size_t i = k; i > 0; i--) *p++ = (uint8_t)(n >> (8 * (i - 1)));
    return p;
}

/* Reads a TLV with the given tag at *p; on success *p is moved past it. */
static int der_get(const uint8_t **p, const uint8_t *end, uint8_t tag, const uint8_t **val,
                   size_t *len) {
    const uint8_t *q = *p;
    if (end - q < 2 || q[0] != tag) return 0;
    q++;
    size_t n = *q++;
    if (n & 0x80) {
        size_t k = n & 0x7f;
        if (k == 0 || k > sizeof(size_t) || (size_t)(end - q) < k || q[0] == 0) return 0;
        n = 0;
        for (size_t i = 0; i < k; i++) n = (n << 8) | *q++;
        if (n < 0x80) return 0;
    }
    if ((size_t)(end - q) < n) return 0;
    *val = q;
    *len = n;
    *p = q + n;
    return 1;
}

/* A positive DER INTEGER of at most 32 significant bytes, left-padded into out. */
static int der_get_uint256(const uint8_t **p, const uint8_t *end, uint8_t out[32]) {
    const uint8_t *v;
    size_t n;
    if (!der_get(p, end, 0x02, &v, &n) || n == 0) return 0;
    if (v[0] & 0x80) return 0;                          /* negative */
    if (n > 1 && v[0] == 0 && !(v[1] & 0x80)) return 0; /* not minimal */
    while (n > 0 && v[0] == 0) {
        v++;
        n--;
    }
    if (n > 32) return 0;
    memset(out, 0, 32 - n);
    memcpy(out + 32 - n, v, n);
    return 1;
}

static size_t der_uint256_size(const uint8_t v[32]) {
    size_t i = 0;
    while (i < 31 && v[i] == 0) i++;
    return 2 + (32 - i) + ((v[i] & 0x80) ? 1 : 0);
}

static uint8_t *der_put_uint256(uint8_t *p, const uint8_t v[32]) {
    size_t i = 0;
    while (i < 31 && v[i] == 0) i++;
    size_t n = 32 - i;
    size_t pad = (v[i] & 0x80) ? 1 : 0;
    *p++ = 0x02;
    *p++ = (uint8_t)(n + pad);
    if (pad) *p++ = 0;
    memcpy(p, v + i, n);
    return p + n;
}

/* ------------------------------------------------------------------------------------------ */
/* Key handles.                                                                                */

static int finish_handle(EVP_PKEY *pkey, int has_priv, hsm_sm2_key **out) {
    hsm_sm2_key *k = OPENSSL_zalloc(sizeof *k);
    size_t n = 0;
    if (k == NULL) {
        EVP_PKEY_free(pkey);
        return HSM_SM2_EINTERNAL;
    }
    if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, k->pub, sizeof k->pub,
                                         &n) ||
        n != 65 || k->pub[0] != 0x04) {
        EVP_PKEY_free(pkey);
        OPENSSL_free(k);
        return HSM_SM2_EINTERNAL;
    }
    k->pkey = pkey;
    k->has_priv = has_priv;
    *out = k;
    return HSM_SM2_OK;
}

void hsm_sm2_free(hsm_sm2_key *key) {
    if (key == NULL) return;
    EVP_PKEY_free(key->pkey);
    OPENSSL_clear_free(key, sizeof *key);
}

int hsm_sm2_generate(hsm_sm2_key **out) {
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "SM2", NULL);
    if (ctx == NULL) return HSM_SM2_EINTERNAL;
    int ok = EVP_PKEY_keygen_init(ctx) > 0 && EVP_PKEY_keygen(ctx, &pkey) > 0;
    EVP_PKEY_CTX_free(ctx);
    if (!ok) return HSM_SM2_EINTERNAL;
    return finish_handle(pkey, 1, out);
}

/* Builds an SM2 EVP_PKEY from a private BIGNUM (may be NULL) and an uncompressed point. */
static int build_pkey(const BIGNUM *priv, const uint8_t pub[65], EVP_PKEY **out) {
    int rc = HSM_SM2_EINTERNAL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (bld == NULL) goto done;
    if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "SM2", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, 65))
        goto done;
    if (priv != NULL && !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv)) goto done;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "SM2", NULL);
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0) goto done;
    if (EVP_PKEY_fromdata(ctx, out, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) <= 0)
        goto done;
    rc = HSM_SM2_OK;
done:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params); /* holds a copy of priv: OSSL_PARAM_free does not clear, but the */
    OSSL_PARAM_BLD_free(bld); /* BN copy inside is built by BN_bn2nativepad into this block. */
    return rc;
}

int hsm_sm2_from_private_raw(const uint8_t *d, size_t len, hsm_sm2_key **out) {
    int rc = HSM_SM2_EINVAL;
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    BIGNUM *priv = NULL, *limit = NULL;
    EVP_PKEY *pkey = NULL;
    uint8_t pub[65];
    if (len != 32) return HSM_SM2_EINVAL;
    group = EC_GROUP_new_by_curve_name(NID_sm2);
    priv = BN_secure_new();
    limit = BN_new();
    if (group == NULL || priv == NULL || limit == NULL) {
        rc = HSM_SM2_EINTERNAL;
        goto done;
    }
    BN_set_flags(priv, BN_FLG_CONSTTIME);
    if (BN_bin2bn(d, 32, priv) == NULL || !BN_copy(limit, EC_GROUP_get0_order(group)) ||
        !BN_sub_word(limit, 1)) {
        rc = HSM_SM2_EINTERNAL;
        goto done;
    }
    /* 1 <= d <= n - 2 */
    if (BN_is_zero(priv) || BN_cmp(priv, limit) >= 0) goto done;
    pt = EC_POINT_new(group);
    if (pt == NULL || !EC_POINT_mul(group, pt, priv, NULL, NULL, NULL) ||
        EC_POINT_point2oct(group, pt, POINT_CONVERSION_UNCOMPRESSED, pub, sizeof pub, NULL) !=
            65) {
        rc = HSM_SM2_EINTERNAL;
        goto done;
    }
    rc = build_pkey(priv, pub, &pkey);
    if (rc == HSM_SM2_OK) rc = finish_handle(pkey, 1, out);
done:
    BN_clear_free(priv);
    BN_free(limit);
    EC_POINT_free(pt);
    EC_GROUP_free(group);
    return rc;
}

int hsm_sm2_from_public_raw(const uint8_t *p, size_t len, hsm_sm2_key **out) {
    int rc = HSM_SM2_EINVAL;
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    EVP_PKEY *pkey = NULL;
    if (len != 65 || p[0] != 0x04) return HSM_SM2_EINVAL;
    group = EC_GROUP_new_by_curve_name(NID_sm2);
    pt = group ? EC_POINT_new(group) : NULL;
    if (pt == NULL) {
        rc = HSM_SM2_EINTERNAL;
        goto done;
    }
    /* oct2point rejects coordinates >= p and points off the curve. */
    if (!EC_POINT_oct2point(group, pt, p, len, NULL) || EC_POINT_is_at_infinity(group, pt))
        goto done;
    rc = build_pkey(NULL, p, &pkey);
    if (rc == HSM_SM2_OK) rc = finish_handle(pkey, 0, out);
done:
    EC_POINT_free(pt);
    EC_GROUP_free(group);
    return rc;
}

/* Encrypted PEM keys are not supported: refuse any passphrase request (OpenSSL's default
 * callback would prompt on the terminal). */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

static int is_sm2_group(EVP_PKEY *pkey) {
    char name[32];
    size_t n = 0;
    if (!EVP_PKEY_is_a(pkey, "SM2") && !EVP_PKEY_is_a(pkey, "EC")) return 0;
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &n))
        return 0;
    return strcmp(name, "SM2") == 0;
}

/* Decoded keys are re-imported through the raw loaders, which normalises the key type to SM2
 * (an "EC" key on the SM2 curve would otherwise get ECDSA semantics) and range-checks it. */
int hsm_sm2_from_private_encoded(const uint8_t *data, size_t len, int fmt, hsm_sm2_key **out) {
    EVP_PKEY *pkey = NULL;
    BIGNUM *priv = NULL;
    uint8_t d[32], pub[65];
    size_t n = 0;
    int rc = HSM_SM2_EINVAL;
    if (len > 1u << 20) return HSM_SM2_EINVAL;
    if (fmt == HSM_SM2_FMT_DER) {
        const unsigned char *q = data;
        pkey = d2i_AutoPrivateKey(NULL, &q, (long)len);
        if (pkey != NULL && q != data + len) goto done; /* trailing bytes */
    } else if (fmt == HSM_SM2_FMT_PEM) {
        BIO *bio = BIO_new_mem_buf(data, (int)len);
        if (bio == NULL) return HSM_SM2_EINTERNAL;
        pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
        BIO_free(bio);
    } else {
        return HSM_SM2_EINVAL;
    }
    if (pkey == NULL || !is_sm2_group(pkey)) goto done;
    if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY, &priv) ||
        BN_bn2binpad(priv, d, 32) != 32)
        goto done;
    /* The public point stored beside d (libcrypto derives it when absent) must be d * G:
     * a mismatch means a corrupted or spliced key. */
    if (!EVP_PKEY_set_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                        "uncompressed") ||
        !EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub, &n) ||
        n != 65)
        goto done;
    rc = hsm_sm2_from_private_raw(d, 32, out);
    if (rc == HSM_SM2_OK && memcmp((*out)->pub, pub, 65) != 0) {
        hsm_sm2_free(*out);
        *out = NULL;
        rc = HSM_SM2_EINVAL;
    }
done:
    secure_zero(d, sizeof d);
    BN_clear_free(priv);
    EVP_PKEY_free(pkey);
    return rc;
}

int hsm_sm2_from_public_encoded(const uint8_t *data, size_t len, int fmt, hsm_sm2_key **out) {
    EVP_PKEY *pkey = NULL;
    uint8_t pub[65];
    size_t n = 0;
    int rc = HSM_SM2_EINVAL;
    if (len > 1u << 20) return HSM_SM2_EINVAL;
    if (fmt == HSM_SM2_FMT_DER) {
        const unsigned char *q = data;
        pkey = d2i_PUBKEY(NULL, &q, (long)len);
        if (pkey != NULL && q != data + len) goto done;
    } else if (fmt == HSM_SM2_FMT_PEM) {
        BIO *bio = BIO_new_mem_buf(data, (int)len);
        if (bio == NULL) return HSM_SM2_EINTERNAL;
        pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
        BIO_free(bio);
    } else {
        return HSM_SM2_EINVAL;
    }
    if (pkey == NULL || !is_sm2_group(pkey)) goto done;
    /* Ask for the uncompressed form whatever the encoding carried. */
    if (!EVP_PKEY_set_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                        "uncompressed"))
        goto done;
    if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub, &n) ||
        n != 65)
        goto done;
    rc = hsm_sm2_from_public_raw(pub, 65, out);
done:
    EVP_PKEY_free(pkey);
    return rc;
}

int hsm_sm2_has_private(const hsm_sm2_key *key) { return key->has_priv; }

void hsm_sm2_public_raw(const hsm_sm2_key *key, uint8_t out[65]) { memcpy(out, key->pub, 65); }

int hsm_sm2_public_handle(const hsm_sm2_key *key, hsm_sm2_key **out) {
    return hsm_sm2_from_public_raw(key->pub, 65, out);
}

int hsm_sm2_private_raw(const hsm_sm2_key *key, uint8_t out[32]) {
    BIGNUM *priv = NULL;
    if (!key->has_priv) return HSM_SM2_ENOPRIV;
    if (!EVP_PKEY_get_bn_param(key->pkey, OSSL_PKEY_PARAM_PRIV_KEY, &priv))
        return HSM_SM2_EINTERNAL;
    int ok = BN_bn2binpad(priv, out, 32) == 32;
    BN_clear_free(priv);
    return ok ? HSM_SM2_OK : HSM_SM2_EINTERNAL;
}

int hsm_sm2_export(const hsm_sm2_key *key, int private_part, int fmt, uint8_t *out,
                   size_t *out_len) {
    OSSL_ENCODER_CTX *ectx;
    unsigned char *buf = NULL;
    size_t n = 0;
    int rc = HSM_SM2_EINTERNAL;
    if (private_part && !key->has_priv) return HSM_SM2_ENOPRIV;
    if (fmt != HSM_SM2_FMT_DER && fmt != HSM_SM2_FMT_PEM) return HSM_SM2_EINVAL;
    ectx = OSSL_ENCODER_CTX_new_for_pkey(
        key->pkey, private_part ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY,
        fmt == HSM_SM2_FMT_DER ? "DER" : "PEM",
        private_part ? "PrivateKeyInfo" : "SubjectPublicKeyInfo", NULL);
    if (ectx == NULL || OSSL_ENCODER_CTX_get_num_encoders(ectx) == 0) goto done;
    if (!OSSL_ENCODER_to_data(ectx, &buf, &n)) goto done;
    if (n > *out_len) {
        *out_len = n;
        rc = HSM_SM2_ESPACE;
        goto done;
    }
    memcpy(out, buf, n);
    *out_len = n;
    rc = HSM_SM2_OK;
done:
    if (buf != NULL) OPENSSL_clear_free(buf, n);
    OSSL_ENCODER_CTX_free(ectx);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Signatures.                                                                                 */

int hsm_sm2_compute_z(const hsm_sm2_key *key, const uint8_t *id, size_t id_len,
                      uint8_t out[32]) {
    hsm_sm3_ctx c;
    uint8_t entl[2];
    if (id_len > HSM_SM2_MAX_ID_LEN) return HSM_SM2_EINVAL;
    entl[0] = (uint8_t)((id_len * 8) >> 8);
    entl[1] = (uint8_t)(id_len * 8);
    hsm_sm3_init(&c);
    hsm_sm3_update(&c, entl, 2);
    hsm_sm3_update(&c, id, id_len);
    hsm_sm3_update(&c, SM2_A, 32);
    hsm_sm3_update(&c, SM2_B, 32);
    hsm_sm3_update(&c, SM2_GX, 32);
    hsm_sm3_update(&c, SM2_GY, 32);
    hsm_sm3_update(&c, key->pub + 1, 64);
    hsm_sm3_final(&c, out);
    return HSM_SM2_OK;
}

static int message_digest(const hsm_sm2_key *key, const uint8_t *id, size_t id_len,
                          const uint8_t *msg, size_t msg_len, uint8_t e[32]) {
    hsm_sm3_ctx c;
    uint8_t z[32];
    int rc = hsm_sm2_compute_z(key, id, id_len, z);
    if (rc != HSM_SM2_OK) return rc;
    hsm_sm3_init(&c);
    hsm_sm3_update(&c, z, 32);
    hsm_sm3_update(&c, msg, msg_len);
    hsm_sm3_final(&c, e);
    return HSM_SM2_OK;
}

/* DER ECDSA-Sig-Value <-> r || s, strictly. */
static int sig_der_to_raw(const uint8_t *der, size_t len, uint8_t raw[64]) {
    const uint8_t *p = der, *end = der + len, *v;
    size_t n;
    if (!der_get(&p, end, 0x30, &v, &n) || p != end) return 0;
    p = v;
    end = v + n;
    if (!der_get_uint256(&p, end, raw) || !der_get_uint256(&p, end, raw + 32) || p != end)
        return 0;
    return 1;
}

static size_t sig_raw_to_der(const uint8_t raw[64], uint8_t out[72]) {
    size_t body = der_uint256_size(raw) + der_uint256_size(raw + 32);
    uint8_t *p = out;
    *p++ = 0x30;
    p = der_put_len(p, body);
    p = der_put_uint256(p, raw);
    p = der_put_uint256(p, raw + 32);
    return (size_t)(p - out);
}

int hsm_sm2_sign_digest(const hsm_sm2_key *key, const uint8_t e[32], int fmt, uint8_t *sig,
                        size_t *sig_len) {
    uint8_t der[80];
    size_t der_len = sizeof der;
    int rc = HSM_SM2_EINTERNAL;
    EVP_PKEY_CTX *ctx;
    if (!key->has_priv) return HSM_SM2_ENOPRIV;
    if (fmt != HSM_SM2_FMT_DER && fmt != HSM_SM2_FMT_RAW) return HSM_SM2_EINVAL;
    if (*sig_len < (fmt == HSM_SM2_FMT_DER ? 72u : 64u)) return HSM_SM2_ESPACE;
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->pkey, NULL);
    if (ctx == NULL) return HSM_SM2_EINTERNAL;
    if (EVP_PKEY_sign_init(ctx) <= 0 || EVP_PKEY_sign(ctx, der, &der_len, e, 32) <= 0) goto done;
    if (fmt == HSM_SM2_FMT_DER) {
        memcpy(sig, der, der_len);
        *sig_len = der_len;
    } else {
        if (!sig_der_to_raw(der, der_len, sig)) goto done;
        *sig_len = 64;
    }
    rc = HSM_SM2_OK;
done:
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

int hsm_sm2_sign(const hsm_sm2_key *key, const uint8_t *id, size_t id_len, const uint8_t *msg,
                 size_t msg_len, int fmt, uint8_t *sig, size_t *sig_len) {
    uint8_t e[32];
    if (!key->has_priv) return HSM_SM2_ENOPRIV;
    int rc = message_digest(key, id, id_len, msg, msg_len, e);
    if (rc != HSM_SM2_OK) return rc;
    return hsm_sm2_sign_digest(key, e, fmt, sig, sig_len);
}

int hsm_sm2_verify_digest(const hsm_sm2_key *key, const uint8_t e[32], int fmt,
                          const uint8_t *sig, size_t sig_len) {
    uint8_t raw[64], der[72];
    size_t der_len;
    EVP_PKEY_CTX *ctx;
    /* Both encodings are brought to canonical DER; anything that does not parse is simply an
     * invalid signature. r, s range checks are libcrypto's. */
    if (fmt == HSM_SM2_FMT_DER) {
        if (!sig_der_to_raw(sig, sig_len, raw)) return 0;
    } else if (fmt == HSM_SM2_FMT_RAW) {
        if (sig_len != 64) return 0;
        memcpy(raw, sig, 64);
    } else {
        return HSM_SM2_EINVAL;
    }
    der_len = sig_raw_to_der(raw, der);
    if (fmt == HSM_SM2_FMT_DER && (der_len != sig_len || memcmp(der, sig, der_len) != 0))
        return 0; /* not the canonical encoding */
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->pkey, NULL);
    if (ctx == NULL) return HSM_SM2_EINTERNAL;
    int ok = EVP_PKEY_verify_init(ctx) > 0 && EVP_PKEY_verify(ctx, der, der_len, e, 32) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok ? 1 : 0;
}

int hsm_sm2_verify(const hsm_sm2_key *key, const uint8_t *id, size_t id_len,
                   const uint8_t *msg, size_t msg_len, int fmt, const uint8_t *sig,
                   size_t sig_len) {
    uint8_t e[32];
    int rc = message_digest(key, id, id_len, msg, msg_len, e);
    if (rc != HSM_SM2_OK) return rc;
    return hsm_sm2_verify_digest(key, e, fmt, sig, sig_len);
}

/* ------------------------------------------------------------------------------------------ */
/* Encryption.                                                                                 */

size_t hsm_sm2_ciphertext_size(size_t len, int fmt) {
    if (fmt == HSM_SM2_FMT_RAW) return 97 + len;
    /* SEQUENCE(len up to 9 length bytes) + 2 * INTEGER(35) + OCTET STRING(34) + OCTET STRING */
    return 1 + 9 + 2 * 35 + 34 + 1 + 9 + len;
}

/* DER SM2Cipher -> 04 || x || y || C3 || C2 (out capacity >= len). */
static int ct_der_to_raw(const uint8_t *der, size_t len, uint8_t *out, size_t *out_len) {
    const uint8_t *p = der, *end = der + len, *v, *c3, *c2;
    size_t n, c3_len, c2_len;
    if (!der_get(&p, end, 0x30, &v, &n) || p != end) return 0;
    p = v;
    end = v + n;
    out[0] = 0x04;
    if (!der_get_uint256(&p, end, out + 1) || !der_get_uint256(&p, end, out + 33)) return 0;
    if (!der_get(&p, end, 0x04, &c3, &c3_len) || c3_len != 32) return 0;
    if (!der_get(&p, end, 0x04, &c2, &c2_len) || c2_len == 0 || p != end) return 0;
    if (97 + c2_len > *out_len) return 0;
    memcpy(out + 65, c3, 32);
    memmove(out + 97, c2, c2_len);
    *out_len = 97 + c2_len;
    return 1;
}

/* 04 || x || y || C3 || C2 -> DER SM2Cipher. */
static int ct_raw_to_der(const uint8_t *raw, size_t len, uint8_t *out, size_t *out_len) {
    if (len < 98 || raw[0] != 0x04) return 0;
    size_t c2_len = len - 97;
    size_t body = der_uint256_size(raw + 1) + der_uint256_size(raw + 33) + 2 + 32 + 1 +
                  der_len_size(c2_len) + c2_len;
    size_t total = 1 + der_len_size(body) + body;
    if (total > *out_len) return 0;
    uint8_t *p = out;
    *p++ = 0x30;
    p = der_put_len(p, body);
    p = der_put_uint256(p, raw + 1);
    p = der_put_uint256(p, raw + 33);
    *p++ = 0x04;
    *p++ = 32;
    memcpy(p, raw + 65, 32);
    p += 32;
    *p++ = 0x04;
    p = der_put_len(p, c2_len);
    memcpy(p, raw + 97, c2_len);
    p += c2_len;
    *out_len = (size_t)(p - out);
    return 1;
}

int hsm_sm2_encrypt(const hsm_sm2_key *key, const uint8_t *pt, size_t len, int fmt,
                    uint8_t *out, size_t *out_len) {
    EVP_PKEY_CTX *ctx;
    uint8_t *der = NULL;
    size_t der_len = 0;
    int rc = HSM_SM2_EINTERNAL;
    if (len == 0) return HSM_SM2_EINVAL;
    if (fmt != HSM_SM2_FMT_DER && fmt != HSM_SM2_FMT_RAW) return HSM_SM2_EINVAL;
    if (*out_len < hsm_sm2_ciphertext_size(len, fmt)) return HSM_SM2_ESPACE;
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->pkey, NULL);
    if (ctx == NULL) return HSM_SM2_EINTERNAL;
    if (EVP_PKEY_encrypt_init(ctx) <= 0) goto done;
    if (fmt == HSM_SM2_FMT_DER) {
        /* libcrypto emits GM/T 0009 DER (C1C3C2) directly. */
        if (EVP_PKEY_encrypt(ctx, out, out_len, pt, len) <= 0) goto done;
    } else {
        if (EVP_PKEY_encrypt(ctx, NULL, &der_len, pt, len) <= 0) goto done;
        der = OPENSSL_malloc(der_len);
        if (der == NULL || EVP_PKEY_encrypt(ctx, der, &der_len, pt, len) <= 0) goto done;
        if (!ct_der_to_raw(der, der_len, out, out_len)) goto done;
    }
    rc = HSM_SM2_OK;
done:
    OPENSSL_free(der);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

int hsm_sm2_decrypt(const hsm_sm2_key *key, const uint8_t *ct, size_t ct_len, int fmt,
                    uint8_t *out, size_t *out_len) {
    EVP_PKEY_CTX *ctx = NULL;
    uint8_t *raw = NULL, *der = NULL;
    size_t raw_len, der_len, n;
    int rc = HSM_SM2_EINVAL;
    if (!key->has_priv) return HSM_SM2_ENOPRIV;
    if (ct_len < 98 || ct_len > ((size_t)1 << 40)) return HSM_SM2_EINVAL;
    /* Whatever came in is checked strictly and handed to libcrypto as canonical DER. */
    raw_len = ct_len;
    if (fmt == HSM_SM2_FMT_DER) {
        raw = OPENSSL_malloc(raw_len);
        if (raw == NULL) return HSM_SM2_EINTERNAL;
        if (!ct_der_to_raw(ct, ct_len, raw, &raw_len)) goto done;
    } else if (fmt != HSM_SM2_FMT_RAW) {
        return HSM_SM2_EINVAL;
    }
    {
        const uint8_t *r = raw ? raw : ct;
        size_t rl = raw ? raw_len : ct_len;
        der_len = hsm_sm2_ciphertext_size(rl - 97, HSM_SM2_FMT_DER);
        der = OPENSSL_malloc(der_len);
        if (der == NULL) {
            rc = HSM_SM2_EINTERNAL;
            goto done;
        }
        if (!ct_raw_to_der(r, rl, der, &der_len)) goto done;
        /* C1 must be a point on the curve: checked here so that a bad point is a format error
         * rather than a decryption failure. */
        {
            EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_sm2);
            EC_POINT *pt = g ? EC_POINT_new(g) : NULL;
            int on = pt != NULL && EC_POINT_oct2point(g, pt, r, 65, NULL) == 1;
            EC_POINT_free(pt);
            EC_GROUP_free(g);
            if (!on) goto done;
        }
        if (*out_len < rl - 97) {
            rc = HSM_SM2_ESPACE;
            goto done;
        }
    }
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->pkey, NULL);
    if (ctx == NULL || EVP_PKEY_decrypt_init(ctx) <= 0) {
        rc = HSM_SM2_EINTERNAL;
        goto done;
    }
    n = *out_len;
    if (EVP_PKEY_decrypt(ctx, out, &n, der, der_len) <= 0) {
        secure_zero(out, *out_len);
        rc = HSM_SM2_EDECRYPT;
        goto done;
    }
    *out_len = n;
    rc = HSM_SM2_OK;
done:
    OPENSSL_free(raw);
    OPENSSL_free(der);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}
