/* SM2 (GB/T 32918-2016 on the recommended 256-bit curve) over the system libcrypto
 * (OpenSSL 3 EVP API): the C interface used by build_gm.py.
 *
 * A key lives in an opaque handle holding the parsed EVP_PKEY and the raw public point, so
 * hot paths never re-parse. Handles are immutable after creation and may be shared between
 * threads (every operation makes its own short-lived EVP_PKEY_CTX).
 *
 * Signatures: ZA = SM3(ENTL || ID || a || b || xG || yG || xA || yA) is computed here with the
 * distinguishing ID always explicit (GB/T 32918 / GM/T 0009 default "1234567812345678"; note
 * OpenSSL 3.0's own default is an empty ID), then e = SM3(ZA || M) is signed. Signature
 * encodings: DER (SEQUENCE of two INTEGERs) or raw r || s (64 bytes).
 *
 * Encryption: C1C3C2, as DER (GM/T 0009 SM2Cipher: SEQUENCE { INTEGER x, INTEGER y,
 * OCTET STRING C3, OCTET STRING C2 }) or raw 04 || x || y || C3 || C2.
 *
 * Every function returns one of the HSM_SM2_* codes below (verify: 1 valid, 0 invalid,
 * or a negative code). Output lengths are in/out: capacity in, bytes written out.
 */
#ifndef HSMPOOL_SM2_H
#define HSMPOOL_SM2_H

#include <stddef.h>
#include <stdint.h>

#define HSM_SM2_OK 0
#define HSM_SM2_EINVAL (-1)   /* malformed or out-of-range input (key, encoding, length) */
#define HSM_SM2_EDECRYPT (-2) /* ciphertext well-formed but does not decrypt (C3 mismatch, ...) */
#define HSM_SM2_EINTERNAL (-3) /* libcrypto failure (allocation, ...) */
#define HSM_SM2_ESPACE (-4)   /* output buffer too small */
#define HSM_SM2_ENOPRIV (-5)  /* operation needs a private key */

#define HSM_SM2_FMT_DER 0
#define HSM_SM2_FMT_RAW 1
#define HSM_SM2_FMT_PEM 2

#define HSM_SM2_MAX_ID_LEN 8191 /* ENTL is a 16-bit count of bits */
#define HSM_SM2_MAX_DER_SIG_LEN 72

typedef struct hsm_sm2_key hsm_sm2_key;

int hsm_sm2_generate(hsm_sm2_key **out);
/* Private scalar d, 32 bytes big-endian, 1 <= d <= n - 2. */
int hsm_sm2_from_private_raw(const uint8_t *d, size_t len, hsm_sm2_key **out);
/* Uncompressed point 04 || x || y (65 bytes), checked to be on the curve. */
int hsm_sm2_from_public_raw(const uint8_t *pt, size_t len, hsm_sm2_key **out);
/* fmt: HSM_SM2_FMT_DER or HSM_SM2_FMT_PEM. Private: PKCS#8 (or RFC 5915 EC private key);
 * public: SubjectPublicKeyInfo. The curve must be SM2. */
int hsm_sm2_from_private_encoded(const uint8_t *data, size_t len, int fmt, hsm_sm2_key **out);
int hsm_sm2_from_public_encoded(const uint8_t *data, size_t len, int fmt, hsm_sm2_key **out);
void hsm_sm2_free(hsm_sm2_key *key);

int hsm_sm2_has_private(const hsm_sm2_key *key);
int hsm_sm2_private_raw(const hsm_sm2_key *key, uint8_t out[32]);
void hsm_sm2_public_raw(const hsm_sm2_key *key, uint8_t out[65]);
/* A handle holding only the public half of key. */
int hsm_sm2_public_handle(const hsm_sm2_key *key, hsm_sm2_key **out);
/* fmt DER or PEM; private = PKCS#8 PrivateKeyInfo, public = SubjectPublicKeyInfo. */
int hsm_sm2_export(const hsm_sm2_key *key, int private_part, int fmt, uint8_t *out,
                   size_t *out_len);

/* ZA for this public key and distinguishing ID. */
int hsm_sm2_compute_z(const hsm_sm2_key *key, const uint8_t *id, size_t id_len,
                      uint8_t out[32]);

/* fmt DER (out capacity >= 72) or RAW (>= 64). */
int hsm_sm2_sign(const hsm_sm2_key *key, const uint8_t *id, size_t id_len, const uint8_t *msg,
                 size_t msg_len, int fmt, uint8_t *sig, size_t *sig_len);
/* Sign e = SM3(ZA || M) computed by the caller. */
int hsm_sm2_sign_digest(const hsm_sm2_key *key, const uint8_t e[32], int fmt, uint8_t *sig,
                        size_t *sig_len);
int hsm_sm2_verify(const hsm_sm2_key *key, const uint8_t *id, size_t id_len,
                   const uint8_t *msg, size_t msg_len, int fmt, const uint8_t *sig,
                   size_t sig_len);
int hsm_sm2_verify_digest(const hsm_sm2_key *key, const uint8_t e[32], int fmt,
                          const uint8_t *sig, size_t sig_len);

/* Upper bound of the ciphertext size for a plaintext of len bytes. */
size_t hsm_sm2_ciphertext_size(size_t len, int fmt);
/* len >= 1. */
int hsm_sm2_encrypt(const hsm_sm2_key *key, const uint8_t *pt, size_t len, int fmt,
                    uint8_t *out, size_t *out_len);
/* out capacity >= ct_len is always enough. */
int hsm_sm2_decrypt(const hsm_sm2_key *key, const uint8_t *ct, size_t ct_len, int fmt,
                    uint8_t *out, size_t *out_len);

#endif
