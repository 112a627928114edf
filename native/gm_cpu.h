/* CPU feature detection and the internal dispatch interface between sm4.c (portable code and
 * the public entry points) and sm4_x86.c (vectorised kernels). Not part of the cffi interface.
 */
#ifndef HSMPOOL_GM_CPU_H
#define HSMPOOL_GM_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "sm4.h"

/* The x86-64 kernels (sm4_x86.c) and CPUID detection are built on x86-64 with GCC or clang,
 * unless HSM_GM_PORTABLE_ONLY is defined (used to test the portable-only build). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) &&                     \
    !defined(HSM_GM_PORTABLE_ONLY)
#define HSM_GM_X86 1
#endif

/* CPU feature bits reported by hsm_gm_cpu_features() (x86-64 only; 0 elsewhere). Each bit is
 * set only if the OS also saves the register state the feature needs (XGETBV). */
#define HSM_CPU_AVX2 (1u << 0)
#define HSM_CPU_AESNI (1u << 1)
#define HSM_CPU_PCLMUL (1u << 2)
#define HSM_CPU_GFNI (1u << 3)      /* usable with VEX (ymm) encoding */
#define HSM_CPU_VPCLMUL (1u << 4)   /* VEX/EVEX ymm/zmm carry-less multiply */
#define HSM_CPU_AVX512 (1u << 5)    /* F + BW + VL + DQ with zmm state enabled */
#define HSM_CPU_VAES (1u << 6)

unsigned hsm_gm_cpu_features(void);

/* Testing only: hide CPU features (HSM_CPU_* bits) from hsm_gm_cpu_features() so that the
 * fallbacks a CPU would pick without them (AES-NI instead of GFNI, 128-bit AESENCLAST instead
 * of VAES, ...) run on this machine too. Not thread-safe with concurrent SM4 calls; call it
 * before hsm_gm_set_impl. 0 restores the real features. */
void hsm_gm_test_hide_features(unsigned mask);

/* Layout of hsm_sm4_gcm_key.htab (the first bytes are shared by all implementations, so
 * hsm_gm_set_impl may switch implementations between set_key and use):
 *   [0, 256)    16 x (hi, lo) uint64: the 4-bit (Shoup) table of the portable GHASH
 *   [256, 768)  H^32 .. H^1 in bit-reflected form times x^-1, for (V)PCLMULQDQ GHASH
 *               (only filled when the CPU has PCLMULQDQ) */
#define HSM_HTAB_4BIT 0
#define HSM_HTAB_CLMUL 256
#define HSM_HTAB_CLMUL_POWERS 32

/* Implementation function tables. ctr32: GCM-style counter (the low 32 bits of ctr wrap);
 * ctr128: the whole 16-byte block is one big-endian counter. Both advance ctr by
 * ceil(len / 16) and accept any byte count. ghash: y = GHASH_H(y, in[0..16*nblocks)). */
typedef struct {
    void (*ecb)(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t nblocks);
    void (*ctr128)(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in, uint8_t *out,
                   size_t len);
    void (*ctr32)(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in, uint8_t *out,
                  size_t len);
    void (*ghash)(const uint8_t *htab, uint8_t y[16], const uint8_t *in, size_t nblocks);
    /* CBC encryption is serial: one block at a time (vector S-box: constant time) */
    void (*cbc_enc)(const uint32_t rk[32], uint8_t iv[16], const uint8_t *in, uint8_t *out,
                    size_t nblocks);
} hsm_sm4_impl_ops;

extern const hsm_sm4_impl_ops hsm_sm4_portable_ops;
#if defined(HSM_GM_X86)
extern const hsm_sm4_impl_ops hsm_sm4_avx2_ops;         /* GFNI, PCLMULQDQ */
extern const hsm_sm4_impl_ops hsm_sm4_avx2_vpclmul_ops; /* GFNI, VPCLMULQDQ (ymm) */
extern const hsm_sm4_impl_ops hsm_sm4_avx512_ops;
extern const hsm_sm4_impl_ops hsm_sm4_avx2_aesni_ops; /* AES-NI S-box, 128-bit AESENCLAST */
extern const hsm_sm4_impl_ops hsm_sm4_avx2_vaes_ops;  /* AES-NI S-box, VAES, VPCLMULQDQ */
/* Fill htab[HSM_HTAB_CLMUL...] from h (needs PCLMULQDQ). */
void hsm_ghash_clmul_init(uint8_t *htab, const uint8_t h[16]);
#endif

#if defined(HSM_GM_X86)
/* Self-test of the vector S-box + linear transform of every kernel family the CPU can run:
 * the round function T (x -> L(S(x))) on 256 words that put every byte value in every byte
 * position, against the portable tables, and the single-block/key-schedule S-boxes. Returns 0,
 * or a bitmask of failing families (1: AVX-512 GFNI, 2: AVX2 GFNI, 4: AVX2 AES-NI,
 * 8: single-word GFNI, 16: single-word AES-NI, 32: AVX2 VAES). */
int hsm_sm4_x86_selftest(void);

/* The S-box on the four bytes of a word without table lookups (for the key schedule):
 * GFNI if the CPU has it, else AES-NI; returns 0 and sets *out, or -1 if neither exists. */
int hsm_sm4_x86_tau(uint32_t in, uint32_t *out);
#endif

/* The portable round function T(x) = L(S(x)) (T-tables) and S-box on a word (table). */
uint32_t hsm_sm4_portable_t(uint32_t x);
uint32_t hsm_sm4_portable_tau(uint32_t x);

/* Portable single-block helpers shared with sm4_x86.c. */
void hsm_sm4_portable_block(const uint32_t rk[32], const uint8_t in[16], uint8_t out[16]);

#endif
