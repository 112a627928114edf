/* SM4 block cipher (GB/T 32907-2016) and its modes: the C interface used by build_gm.py.
 *
 * Every function here dispatches at run time to the fastest path the CPU offers
 * (AVX-512 + GFNI, AVX2 + GFNI or AES-NI, (V)PCLMULQDQ for GHASH) or to the portable C path,
 * which is always built. Setting the environment variable HSMPOOL_GM_PORTABLE=1 before the
 * first call (or calling hsm_gm_set_impl) forces the portable path so tests cover both.
 *
 * Buffers may be unaligned and may alias exactly (in == out); partial overlap is not allowed.
 * Nothing here allocates; nothing here reads the environment after the first call.
 * The vector paths (and on x86-64 with GFNI or AES-NI also the key schedule and CBC
 * encryption) do not index memory or branch with secret data; the portable path uses
 * table lookups (T-tables, 4-bit GHASH tables) and is not cache-timing safe.
 */
#ifndef HSMPOOL_SM4_H
#define HSMPOOL_SM4_H

#include <stddef.h>
#include <stdint.h>

/* Implementation ids, in order of preference. */
#define HSM_GM_IMPL_PORTABLE 0
#define HSM_GM_IMPL_AVX2 1   /* AVX2, GFNI (or AES-NI) S-box, (VEX V)PCLMULQDQ GHASH */
#define HSM_GM_IMPL_AVX512 2 /* AVX-512 with GFNI, VPCLMULQDQ GHASH */
/* Not a preference level: the AVX2 implementation with the AES-NI S-box, which
 * HSM_GM_IMPL_AVX2 uses by itself on CPUs without GFNI. hsm_gm_set_impl accepts it on any CPU
 * with AVX2 + AES-NI + PCLMULQDQ so that tests can cover it on GFNI machines too. */
#define HSM_GM_IMPL_AVX2_AESNI 3

/* The implementation in use (after the env var and the CPU have been consulted). */
int hsm_gm_impl(void);
/* The best implementation this CPU supports (ignores the env var). */
int hsm_gm_best_impl(void);
/* Force an implementation (for tests and benchmarks). Returns 0, or -1 if the CPU lacks it. */
int hsm_gm_set_impl(int impl);
/* 1 if this CPU can run implementation impl (any of the ids above), else 0. */
int hsm_gm_impl_available(int impl);

typedef struct {
    uint32_t rk_enc[32];
    uint32_t rk_dec[32];
} hsm_sm4_key;

void hsm_sm4_set_key(hsm_sm4_key *ks, const uint8_t key[16]);
/* Overwrite a key schedule with zeros in a way the compiler cannot elide. */
void hsm_sm4_wipe(hsm_sm4_key *ks);

/* ECB over nblocks 16-byte blocks. */
void hsm_sm4_ecb_encrypt(const hsm_sm4_key *ks, const uint8_t *in, uint8_t *out, size_t nblocks);
void hsm_sm4_ecb_decrypt(const hsm_sm4_key *ks, const uint8_t *in, uint8_t *out, size_t nblocks);

/* CBC over nblocks 16-byte blocks, no padding (PKCS#7 is done by the caller).
 * iv is updated in place to the last ciphertext block, so calls can be chained. */
void hsm_sm4_cbc_encrypt(const hsm_sm4_key *ks, uint8_t iv[16], const uint8_t *in, uint8_t *out,
                         size_t nblocks);
void hsm_sm4_cbc_decrypt(const hsm_sm4_key *ks, uint8_t iv[16], const uint8_t *in, uint8_t *out,
                         size_t nblocks);

/* CTR with a 128-bit big-endian counter block (carries across all 128 bits, like
 * cryptography's modes.CTR). len is any byte count. ctr is advanced by ceil(len/16) blocks;
 * a call with len not a multiple of 16 ends the stream (the tail of the last keystream block
 * is discarded). */
void hsm_sm4_ctr(const hsm_sm4_key *ks, uint8_t ctr[16], const uint8_t *in, uint8_t *out,
                 size_t len);

/* GCM (NIST SP 800-38D with SM4 as the block cipher; RFC 8998). Any nonce length >= 1
 * (96 bits is the fast path), tag 16 bytes (tag_len 4..16 allowed, truncation).
 * The counter wraps in its low 32 bits, as GCM requires.
 * decrypt returns 0 on success, -1 if the tag does not match (compared in constant time;
 * out is zeroed on failure). */
typedef struct {
    hsm_sm4_key ks;
    uint8_t h[16];        /* E_K(0^128) */
    /* implementation-private GHASH tables (powers of H, 4-bit tables, ...): 1 KiB */
    uint8_t htab[1024] __attribute__((aligned(64)));
} hsm_sm4_gcm_key;

void hsm_sm4_gcm_set_key(hsm_sm4_gcm_key *gk, const uint8_t key[16]);
void hsm_sm4_gcm_wipe(hsm_sm4_gcm_key *gk);
void hsm_sm4_gcm_encrypt(const hsm_sm4_gcm_key *gk, const uint8_t *nonce, size_t nonce_len,
                         const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                         uint8_t *out, uint8_t *tag, size_t tag_len);
int hsm_sm4_gcm_decrypt(const hsm_sm4_gcm_key *gk, const uint8_t *nonce, size_t nonce_len,
                        const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                        const uint8_t *tag, size_t tag_len, uint8_t *out);

#endif
