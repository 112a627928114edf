/* SM4 and GHASH kernels for x86-64, selected at run time (see gm_cpu.c).
 *
 * Built with the project's plain CFLAGS: every function carries its own
 * __attribute__((target(...))), and nothing here runs unless the CPU reported the features.
 *
 * SM4 S-box with GFNI: S(x) = A*inv(A*x + c) + c over GF(2)[t]/(0x1F5). GF2P8AFFINEINVQB inverts
 * over the AES polynomial 0x11B, so the matrices absorb a field isomorphism; all matrices come
 * from native/tools/gen_sm4_tables.py, which checks them on all 256 inputs by emulating the
 * instructions (native/tests_c/sbox_selftest.c re-checks them on the real instructions).
 * Two refinements of the round (both derived and checked in the generator):
 *  - L is folded into the inversion step: L(S(x)) = P0 ^ rol8(P1) ^ rol16(P1) ^ rol24(P3) with
 *    three GF2P8AFFINEINVQB of the same input, so only byte rotates remain (no 2-bit rotate);
 *  - the state is kept in the S-box's pre-affine domain D (byte-local, so it commutes with the
 *    byte rotates): the round keys are mapped once per call, D on input and D^-1 on output,
 *    and a round is XOR -> 3 x GF2P8AFFINEINVQB -> rotates/XOR.
 * Without GFNI the AVX2 kernels use AESENCLAST for the inversion with nibble-table affine maps.
 *
 * Data layout: 16 (AVX-512) or 8 (AVX2) blocks are loaded, byte-swapped to host-order words and
 * transposed (4x4 within each 128-bit lane) so that vector j holds word j of every block; a
 * round is then lane-parallel. Eight such groups are in flight (128 or 64 blocks) to hide the
 * latency of the round chain. In counter mode the transposed counter words are generated
 * directly (word 3 = c3 + lane offset), so only the output is transposed.
 *
 * GHASH with (V)PCLMULQDQ works on byte-reversed blocks ("bit-reflected" 128-bit integers,
 * bit i = coefficient of x^(127-i)). A carry-less product of two such values represents
 * x*a*b, so htab holds H^k * x^-1; products of up to 32 (VPCLMULQDQ) or 16 (PCLMULQDQ) blocks
 * are summed unreduced (Karatsuba) and reduced once (two multiplications by 0xC2 << 56).
 *
 * Nothing here branches on or indexes memory with secret data.
 */
#include "gm_cpu.h"

#if defined(HSM_GM_X86)
#include <immintrin.h>
#include <string.h>

#define SM4_GFNI_PRE_MATRIX 0x4c287db91a22505dLL
#define SM4_GFNI_PRE_CONST 0x3e
#define SM4_GFNI_POST_MATRIX 0xf3ab34a974a6b589ULL
#define SM4_GFNI_POST_CONST 0xd3
#define SM4_GFNI_DOMAIN_MATRIX 0x4c287db91a22505dULL
#define SM4_GFNI_DOMAIN_INV_MATRIX 0xb3a4f5863284728bULL
#define SM4_GFNI_POST_D0_MATRIX 0x040db891e9a481b7ULL
#define SM4_GFNI_POST_D0_CONST 0x72
#define SM4_GFNI_POST_D1_MATRIX 0x2c020425162040adULL
#define SM4_GFNI_POST_D1_CONST 0x63
#define SM4_GFNI_POST_D3_MATRIX 0x280fbcb4ff84c11aULL
#define SM4_GFNI_POST_D3_CONST 0x11

#define SM4_AESNI_DOM_LO 0x00, 0x8c, 0x30, 0xbc, 0x85, 0x09, 0xb5, 0x39, 0x9f, 0x13, 0xaf, 0x23, 0x1a, 0x96, 0x2a, 0xa6
#define SM4_AESNI_DOM_HI 0x00, 0xdc, 0x2e, 0xf2, 0xc5, 0x19, 0xeb, 0x37, 0x08, 0xd4, 0x26, 0xfa, 0xcd, 0x11, 0xe3, 0x3f
#define SM4_AESNI_DOM_INV_LO 0x00, 0x85, 0xd9, 0x5c, 0x2e, 0xab, 0xf7, 0x72, 0x80, 0x05, 0x59, 0xdc, 0xae, 0x2b, 0x77, 0xf2
#define SM4_AESNI_DOM_INV_HI 0x00, 0x55, 0x57, 0x02, 0x44, 0x11, 0x13, 0x46, 0xaf, 0xfa, 0xf8, 0xad, 0xeb, 0xbe, 0xbc, 0xe9
#define SM4_AESNI_KEY_LO 0x3e, 0xb2, 0x0e, 0x82, 0xbb, 0x37, 0x8b, 0x07, 0xa1, 0x2d, 0x91, 0x1d, 0x24, 0xa8, 0x14, 0x98
#define SM4_AESNI_KEY_HI 0x00, 0xdc, 0x2e, 0xf2, 0xc5, 0x19, 0xeb, 0x37, 0x08, 0xd4, 0x26, 0xfa, 0xcd, 0x11, 0xe3, 0x3f
#define SM4_AESNI_R0_LO 0x0b, 0x8d, 0xd8, 0x5e, 0x73, 0xf5, 0xa0, 0x26, 0x17, 0x91, 0xc4, 0x42, 0x6f, 0xe9, 0xbc, 0x3a
#define SM4_AESNI_R0_HI 0x00, 0xeb, 0xdc, 0x37, 0xf0, 0x1b, 0x2c, 0xc7, 0xcd, 0x26, 0x11, 0xfa, 0x3d, 0xd6, 0xe1, 0x0a
#define SM4_AESNI_R1_LO 0x76, 0xa5, 0x7b, 0xa8, 0xd6, 0x05, 0xdb, 0x08, 0x34, 0xe7, 0x39, 0xea, 0x94, 0x47, 0x99, 0x4a
#define SM4_AESNI_R1_HI 0x00, 0xb4, 0x49, 0xfd, 0x82, 0x36, 0xcb, 0x7f, 0xbc, 0x08, 0xf5, 0x41, 0x3e, 0x8a, 0x77, 0xc3
#define SM4_AESNI_R3_LO 0x7d, 0x28, 0xa3, 0xf6, 0xa5, 0xf0, 0x7b, 0x2e, 0x23, 0x76, 0xfd, 0xa8, 0xfb, 0xae, 0x25, 0x70
#define SM4_AESNI_R3_HI 0x00, 0x5f, 0x95, 0xca, 0x72, 0x2d, 0xe7, 0xb8, 0x71, 0x2e, 0xe4, 0xbb, 0x03, 0x5c, 0x96, 0xc9
#define SM4_AESNI_PRE_LO 0x3e, 0xb2, 0x0e, 0x82, 0xbb, 0x37, 0x8b, 0x07, 0xa1, 0x2d, 0x91, 0x1d, 0x24, 0xa8, 0x14, 0x98
#define SM4_AESNI_PRE_HI 0x00, 0xdc, 0x2e, 0xf2, 0xc5, 0x19, 0xeb, 0x37, 0x08, 0xd4, 0x26, 0xfa, 0xcd, 0x11, 0xe3, 0x3f
#define SM4_AESNI_POST_LO 0x6c, 0xd4, 0xa6, 0x1e, 0x52, 0xea, 0x98, 0x20, 0x0b, 0xb3, 0xc1, 0x79, 0x35, 0x8d, 0xff, 0x47
#define SM4_AESNI_POST_HI 0x00, 0xe0, 0x50, 0xb0, 0x9d, 0x7d, 0xcd, 0x2d, 0xc0, 0x20, 0x90, 0x70, 0x5d, 0xbd, 0x0d, 0xed

#define TGT_CLMUL __attribute__((target("sse4.1,pclmul")))
#define TGT_AVX2 __attribute__((target("avx2,gfni,pclmul")))
#define TGT_AVX2_AESNI __attribute__((target("avx2,aes,pclmul")))
#define TGT_AVX2_VAES __attribute__((target("avx2,aes,pclmul,vaes")))
#define TGT_AVX512                                                                                \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,gfni,vpclmulqdq,avx2,pclmul")))
#define INLINE static inline __attribute__((always_inline))

static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ================================================================ GHASH, PCLMULQDQ (xmm) */

#define BSWAP128_MASK 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0

TGT_CLMUL INLINE __m128i x_bswap(__m128i v)
{
    return _mm_shuffle_epi8(v, _mm_setr_epi8(BSWAP128_MASK));
}

/* 256-bit (hi:lo) -> 128-bit reduction modulo x^128 + x^7 + x^2 + x + 1 (reflected). */
TGT_CLMUL INLINE __m128i x_reduce(__m128i lo, __m128i hi)
{
    const __m128i k = _mm_set_epi64x(0, (long long)0xc200000000000000ULL);
    __m128i t = _mm_clmulepi64_si128(lo, k, 0x00);
    lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), t);
    t = _mm_clmulepi64_si128(lo, k, 0x00);
    lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), t);
    return _mm_xor_si128(hi, lo);
}

/* Accumulate a*b (unreduced) into lo/mid/hi. */
#define X_MUL_ACC(a, b, lo, mid, hi)                                                              \
    do {                                                                                          \
        lo = _mm_xor_si128(lo, _mm_clmulepi64_si128(a, b, 0x00));                                 \
        hi = _mm_xor_si128(hi, _mm_clmulepi64_si128(a, b, 0x11));                                 \
        mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(a, b, 0x01));                               \
        mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(a, b, 0x10));                               \
    } while (0)

TGT_CLMUL INLINE __m128i x_fold(__m128i lo, __m128i mid, __m128i hi)
{
    lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
    hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
    return x_reduce(lo, hi);
}

TGT_CLMUL static __m128i x_mul(__m128i a, __m128i b)
{
    __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
    X_MUL_ACC(a, b, lo, mid, hi);
    return x_fold(lo, mid, hi);
}

TGT_CLMUL void hsm_ghash_clmul_init(uint8_t *htab, const uint8_t h[16])
{
    /* reflected H, then times x^-1 = x^127 + x^6 + x + 1: shift left by one, and fold the bit
     * shifted out (x^0 * x^-1) back in as 0xC2..01 */
    __m128i hr = x_bswap(_mm_loadu_si128((const __m128i *)h));
    uint64_t lo = (uint64_t)_mm_cvtsi128_si64(hr), hi = (uint64_t)_mm_extract_epi64(hr, 1);
    uint64_t carry = hi >> 63;
    hi = (hi << 1) | (lo >> 63);
    lo <<= 1;
    hi ^= 0xc200000000000000ULL & (0 - carry);
    lo ^= carry;
    __m128i p1 = _mm_set_epi64x((long long)hi, (long long)lo), p = p1;
    __m128i *tab = (__m128i *)(htab + HSM_HTAB_CLMUL);
    for (int k = 1; k <= HSM_HTAB_CLMUL_POWERS; k++) {
        _mm_storeu_si128(tab + (HSM_HTAB_CLMUL_POWERS - k), p); /* H^32 first, H^1 last */
        p = x_mul(p, p1);
    }
}

/* AVX2-tier GHASH: xmm PCLMULQDQ, Karatsuba (3 multiplications per block), 16 blocks per
 * reduction. */
#define X_KARA(a) _mm_xor_si128(a, _mm_shuffle_epi32(a, 0x4e))

TGT_CLMUL static void ghash_clmul(const uint8_t *htab, uint8_t y[16], const uint8_t *in,
                                  size_t nblocks)
{
    const __m128i *tab = (const __m128i *)(htab + HSM_HTAB_CLMUL);
    __m128i acc = x_bswap(_mm_loadu_si128((const __m128i *)y));
    while (nblocks) {
        size_t n = nblocks < 16 ? nblocks : 16;
        const __m128i *pw = tab + (HSM_HTAB_CLMUL_POWERS - n); /* block i pairs with H^(n-i) */
        __m128i x = _mm_xor_si128(acc, x_bswap(_mm_loadu_si128((const __m128i *)in)));
        __m128i hp = _mm_loadu_si128(pw);
        __m128i lo = _mm_clmulepi64_si128(x, hp, 0x00), hi = _mm_clmulepi64_si128(x, hp, 0x11);
        __m128i mid = _mm_clmulepi64_si128(X_KARA(x), X_KARA(hp), 0x00);
        for (size_t i = 1; i < n; i++) {
            x = x_bswap(_mm_loadu_si128((const __m128i *)(in + 16 * i)));
            hp = _mm_loadu_si128(pw + i);
            lo = _mm_xor_si128(lo, _mm_clmulepi64_si128(x, hp, 0x00));
            hi = _mm_xor_si128(hi, _mm_clmulepi64_si128(x, hp, 0x11));
            mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(X_KARA(x), X_KARA(hp), 0x00));
        }
        mid = _mm_xor_si128(mid, _mm_xor_si128(lo, hi));
        acc = x_fold(lo, mid, hi);
        in += 16 * n;
        nblocks -= n;
    }
    _mm_storeu_si128((__m128i *)y, x_bswap(acc));
}

/* ================================================================ GHASH, VPCLMULQDQ (ymm) */
/* For AVX2-tier CPUs that have VEX VPCLMULQDQ (no AVX-512): two blocks per vector, 16 blocks
 * per reduction (H^16..H^1), schoolbook products with the powers as memory operands. */

#define TGT_VPCL256 __attribute__((target("avx2,vpclmulqdq,pclmul")))

#define Y_MUL_ACC(a, b, lo, mid, hi)                                                          \
    do {                                                                                      \
        lo = _mm256_xor_si256(lo, _mm256_clmulepi64_epi128(a, b, 0x00));                      \
        hi = _mm256_xor_si256(hi, _mm256_clmulepi64_epi128(a, b, 0x11));                      \
        mid = _mm256_xor_si256(mid, _mm256_xor_si256(_mm256_clmulepi64_epi128(a, b, 0x01),    \
                                                     _mm256_clmulepi64_epi128(a, b, 0x10)));  \
    } while (0)

TGT_VPCL256 INLINE __m128i y_hxor(__m256i v)
{
    return _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

TGT_VPCL256 static void ghash_vpclmul256(const uint8_t *htab, uint8_t y[16], const uint8_t *in,
                                         size_t nblocks)
{
    const uint8_t *hp = htab + HSM_HTAB_CLMUL + 16 * (HSM_HTAB_CLMUL_POWERS - 16);
    const __m256i bs = _mm256_broadcastsi128_si256(_mm_setr_epi8(BSWAP128_MASK));
    __m128i acc = x_bswap(_mm_loadu_si128((const __m128i *)y));
    for (; nblocks >= 16; nblocks -= 16, in += 256) {
        __m256i lo = _mm256_setzero_si256(), mid = lo, hi = lo;
        for (int k = 0; k < 8; k++) {
            __m256i d = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(in + 32 * k)), bs);
            if (k == 0)
                d = _mm256_xor_si256(d, _mm256_zextsi128_si256(acc));
            __m256i h = _mm256_loadu_si256((const __m256i *)(hp + 32 * k));
            Y_MUL_ACC(d, h, lo, mid, hi);
        }
        acc = x_fold(y_hxor(lo), y_hxor(mid), y_hxor(hi));
    }
    _mm_storeu_si128((__m128i *)y, x_bswap(acc));
    if (nblocks)
        ghash_clmul(htab, y, in, nblocks);
}

/* ================================================================ GHASH, VPCLMULQDQ (zmm) */

TGT_AVX512 INLINE __m512i z_bswap128(__m512i v)
{
    return _mm512_shuffle_epi8(v, _mm512_broadcast_i32x4(_mm_setr_epi8(BSWAP128_MASK)));
}

TGT_AVX512 INLINE __m128i z_hxor(__m512i v)
{
    __m256i t = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    return _mm_xor_si128(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

#define Z_MUL_ACC(a, b, lo, mid, hi)                                                              \
    do {                                                                                          \
        lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(a, b, 0x00));                          \
        hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(a, b, 0x11));                          \
        mid = _mm512_ternarylogic_epi64(mid, _mm512_clmulepi64_epi128(a, b, 0x01),                \
                                        _mm512_clmulepi64_epi128(a, b, 0x10), 0x96);              \
    } while (0)

/* (a.lo ^ a.hi) in the low qword of every lane */
#define Z_KARA(a) _mm512_xor_si512(a, _mm512_shuffle_epi32(a, _MM_PERM_BADC))

#define Z_KMUL_ACC(a, b, bk, lo, mid, hi)                                                         \
    do {                                                                                          \
        lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(a, b, 0x00));                          \
        hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(a, b, 0x11));                          \
        mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128(Z_KARA(a), bk, 0x00));               \
    } while (0)

/* 32 blocks per reduction; a short last piece uses masked loads and H^n..H^1. */
TGT_AVX512 static void ghash_vpclmul(const uint8_t *htab, uint8_t y[16], const uint8_t *in,
                                     size_t nblocks)
{
    const uint8_t *tab = htab + HSM_HTAB_CLMUL;
    __m128i acc = x_bswap(_mm_loadu_si128((const __m128i *)y));
    if (nblocks >= 32) {
        /* Karatsuba: lo = a.lo*b.lo, hi = a.hi*b.hi, mid = (a.lo^a.hi)*(b.lo^b.hi) ^ lo ^ hi;
         * the (b.lo^b.hi) of the powers are computed once per call */
        const __m512i h0 = _mm512_loadu_si512(tab), h1 = _mm512_loadu_si512(tab + 64),
                      h2 = _mm512_loadu_si512(tab + 128), h3 = _mm512_loadu_si512(tab + 192),
                      h4 = _mm512_loadu_si512(tab + 256), h5 = _mm512_loadu_si512(tab + 320),
                      h6 = _mm512_loadu_si512(tab + 384), h7 = _mm512_loadu_si512(tab + 448);
        const __m512i k0 = Z_KARA(h0), k1 = Z_KARA(h1), k2 = Z_KARA(h2), k3 = Z_KARA(h3),
                      k4 = Z_KARA(h4), k5 = Z_KARA(h5), k6 = Z_KARA(h6), k7 = Z_KARA(h7);
        for (; nblocks >= 32; nblocks -= 32, in += 512) {
            __m512i d0 = z_bswap128(_mm512_loadu_si512(in));
            __m512i d1 = z_bswap128(_mm512_loadu_si512(in + 64));
            __m512i d2 = z_bswap128(_mm512_loadu_si512(in + 128));
            __m512i d3 = z_bswap128(_mm512_loadu_si512(in + 192));
            __m512i d4 = z_bswap128(_mm512_loadu_si512(in + 256));
            __m512i d5 = z_bswap128(_mm512_loadu_si512(in + 320));
            __m512i d6 = z_bswap128(_mm512_loadu_si512(in + 384));
            __m512i d7 = z_bswap128(_mm512_loadu_si512(in + 448));
            d0 = _mm512_xor_si512(d0, _mm512_zextsi128_si512(acc));
            __m512i lo = _mm512_setzero_si512(), mid = lo, hi = lo;
            Z_KMUL_ACC(d0, h0, k0, lo, mid, hi);
            Z_KMUL_ACC(d1, h1, k1, lo, mid, hi);
            Z_KMUL_ACC(d2, h2, k2, lo, mid, hi);
            Z_KMUL_ACC(d3, h3, k3, lo, mid, hi);
            Z_KMUL_ACC(d4, h4, k4, lo, mid, hi);
            Z_KMUL_ACC(d5, h5, k5, lo, mid, hi);
            Z_KMUL_ACC(d6, h6, k6, lo, mid, hi);
            Z_KMUL_ACC(d7, h7, k7, lo, mid, hi);
            mid = _mm512_ternarylogic_epi64(mid, lo, hi, 0x96);
            acc = x_fold(z_hxor(lo), z_hxor(mid), z_hxor(hi));
        }
    }
    if (nblocks) {
        size_t bytes = 16 * nblocks;
        const uint8_t *pw = tab + 16 * (HSM_HTAB_CLMUL_POWERS - nblocks);
        __m512i lo = _mm512_setzero_si512(), mid = lo, hi = lo;
        for (size_t off = 0; off < bytes; off += 64) {
            size_t r = bytes - off;
            __mmask64 m = r >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << r) - 1);
            __m512i d = z_bswap128(_mm512_maskz_loadu_epi8(m, in + off));
            if (off == 0)
                d = _mm512_xor_si512(d, _mm512_zextsi128_si512(acc));
            __m512i hp = _mm512_maskz_loadu_epi8(m, pw + off);
            Z_MUL_ACC(d, hp, lo, mid, hi);
        }
        acc = x_fold(z_hxor(lo), z_hxor(mid), z_hxor(hi));
    }
    _mm_storeu_si128((__m128i *)y, x_bswap(acc));
}

/* Round keys in the pre-affine domain: D(rk) ^ 0x3e in every byte (D byte-local, see
 * gen_sm4_tables.py), so that X1^X2^X3^K' in the domain is the S-box's pre-affine output. */
__attribute__((target("avx2,gfni"))) static void dom_keys(const uint32_t rk[32], uint32_t out[32])
{
    const __m256i m = _mm256_set1_epi64x((long long)SM4_GFNI_PRE_MATRIX);
    for (int i = 0; i < 32; i += 8) {
        __m256i k = _mm256_loadu_si256((const __m256i *)(rk + i));
        k = _mm256_gf2p8affine_epi64_epi8(k, m, SM4_GFNI_PRE_CONST);
        _mm256_storeu_si256((__m256i *)(out + i), k);
    }
}

static void wipe_keys(uint32_t k[32])
{
    memset(k, 0, 32 * sizeof k[0]);
    __asm__ volatile("" : : "r"(k) : "memory");
}

/* Counter-mode drivers around the kernels, which count in the low word only. */
typedef void (*ctr_words_fn)(const uint32_t rk[32], uint32_t c[4], const uint8_t *in,
                             uint8_t *out, size_t len);

static void ctr32(ctr_words_fn f, const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,
                  uint8_t *out, size_t len)
{
    uint32_t c[4] = {be32(ctr), be32(ctr + 4), be32(ctr + 8), be32(ctr + 12)};
    f(rk, c, in, out, len);
    put_be32(ctr + 12, c[3]);
}

/* 128-bit counter: split the request where the low word wraps and carry by hand. */
static void ctr128(ctr_words_fn f, const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,
                   uint8_t *out, size_t len)
{
    uint32_t c[4] = {be32(ctr), be32(ctr + 4), be32(ctr + 8), be32(ctr + 12)};
    while (len) {
        uint64_t room = (uint64_t)1 << 32;
        room -= c[3]; /* blocks before the low word wraps */
        size_t nb = (len + 15) / 16;
        size_t take = len;
        if ((uint64_t)nb > room)
            take = (size_t)room * 16;
        f(rk, c, in, out, take);
        if (c[3] == 0 && take > 0) { /* wrapped exactly at the end of this piece */
            if (++c[2] == 0 && ++c[1] == 0)
                ++c[0];
        }
        in += take, out += take, len -= take;
    }
    for (int i = 0; i < 4; i++)
        put_be32(ctr + 4 * i, c[i]);
}

/* ================================================================ SM4, AVX-512 + GFNI */

/* byte-swap every 32-bit word */
#define WBSWAP_MASK 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12

#define Z_CONSTS                                                                                  \
    const __m512i zdom = _mm512_set1_epi64((long long)SM4_GFNI_DOMAIN_MATRIX);                    \
    const __m512i zdinv = _mm512_set1_epi64((long long)SM4_GFNI_DOMAIN_INV_MATRIX);               \
    const __m512i zd0 = _mm512_set1_epi64((long long)SM4_GFNI_POST_D0_MATRIX);                    \
    const __m512i zd1 = _mm512_set1_epi64((long long)SM4_GFNI_POST_D1_MATRIX);                    \
    const __m512i zd3 = _mm512_set1_epi64((long long)SM4_GFNI_POST_D3_MATRIX);                    \
    const __m512i zwbs = _mm512_broadcast_i32x4(_mm_setr_epi8(WBSWAP_MASK))

/* into / out of the pre-affine domain (see dom_keys) */
#define ZD(v) _mm512_gf2p8affine_epi64_epi8(v, zdom, 0)
#define ZDI(v) _mm512_gf2p8affine_epi64_epi8(v, zdinv, 0)

/* One round on 16 blocks, state and round key in the pre-affine domain (dom_keys): the S-box
 * input needs no affine step, and the three post-inversion matrices fold in both the way back
 * and the 2-bit rotate of L: L(S(x)) = P0 ^ rol8(P1) ^ rol16(P1) ^ rol24(P3). */
#define Z_ROUND(X0, X1, X2, X3, K)                                                                \
    do {                                                                                          \
        __m512i t_ = _mm512_xor_si512(_mm512_ternarylogic_epi32(X1, X2, X3, 0x96), K);            \
        __m512i p0_ = _mm512_gf2p8affineinv_epi64_epi8(t_, zd0, SM4_GFNI_POST_D0_CONST);          \
        __m512i p1_ = _mm512_gf2p8affineinv_epi64_epi8(t_, zd1, SM4_GFNI_POST_D1_CONST);          \
        __m512i p3_ = _mm512_gf2p8affineinv_epi64_epi8(t_, zd3, SM4_GFNI_POST_D3_CONST);          \
        X0 = _mm512_ternarylogic_epi32(X0, p0_, _mm512_rol_epi32(p1_, 8), 0x96);                  \
        X0 = _mm512_ternarylogic_epi32(X0, _mm512_rol_epi32(p1_, 16),                             \
                                       _mm512_rol_epi32(p3_, 24), 0x96);                          \
    } while (0)

/* 4x4 transpose of 32-bit words inside each 128-bit lane (an involution) */
#define Z_TRANSPOSE(A, B, C, D)                                                                   \
    do {                                                                                          \
        __m512i t0_ = _mm512_unpacklo_epi32(A, B), t1_ = _mm512_unpackhi_epi32(A, B);             \
        __m512i t2_ = _mm512_unpacklo_epi32(C, D), t3_ = _mm512_unpackhi_epi32(C, D);             \
        A = _mm512_unpacklo_epi64(t0_, t2_);                                                      \
        B = _mm512_unpackhi_epi64(t0_, t2_);                                                      \
        C = _mm512_unpacklo_epi64(t1_, t3_);                                                      \
        D = _mm512_unpackhi_epi64(t1_, t3_);                                                      \
    } while (0)

/* Load 16 blocks (m: byte masks for a short group) into transposed words X0..X3. */
#define Z_LOAD(p, X0, X1, X2, X3, m0, m1, m2, m3)                                                 \
    do {                                                                                          \
        X0 = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(m0, (p)), zwbs);                         \
        X1 = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(m1, (p) + 64), zwbs);                    \
        X2 = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(m2, (p) + 128), zwbs);                   \
        X3 = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(m3, (p) + 192), zwbs);                   \
        Z_TRANSPOSE(X0, X1, X2, X3);                                                              \
        X0 = ZD(X0), X1 = ZD(X1), X2 = ZD(X2), X3 = ZD(X3);                                       \
    } while (0)

/* Untranspose the round output (words in reverse order) and store, optionally xored with in. */
#define Z_STORE(out, in, X0, X1, X2, X3, m0, m1, m2, m3, XORIN)                                   \
    do {                                                                                          \
        X0 = ZDI(X0), X1 = ZDI(X1), X2 = ZDI(X2), X3 = ZDI(X3);                                   \
        Z_TRANSPOSE(X3, X2, X1, X0);                                                              \
        X3 = _mm512_shuffle_epi8(X3, zwbs);                                                       \
        X2 = _mm512_shuffle_epi8(X2, zwbs);                                                       \
        X1 = _mm512_shuffle_epi8(X1, zwbs);                                                       \
        X0 = _mm512_shuffle_epi8(X0, zwbs);                                                       \
        if (XORIN) {                                                                              \
            X3 = _mm512_xor_si512(X3, _mm512_maskz_loadu_epi8(m0, (in)));                         \
            X2 = _mm512_xor_si512(X2, _mm512_maskz_loadu_epi8(m1, (in) + 64));                    \
            X1 = _mm512_xor_si512(X1, _mm512_maskz_loadu_epi8(m2, (in) + 128));                   \
            X0 = _mm512_xor_si512(X0, _mm512_maskz_loadu_epi8(m3, (in) + 192));                   \
        }                                                                                         \
        _mm512_mask_storeu_epi8((out), m0, X3);                                                   \
        _mm512_mask_storeu_epi8((out) + 64, m1, X2);                                              \
        _mm512_mask_storeu_epi8((out) + 128, m2, X1);                                             \
        _mm512_mask_storeu_epi8((out) + 192, m3, X0);                                             \
    } while (0)

#define ALL64 (~(__mmask64)0)

TGT_AVX512 INLINE __mmask64 z_mask(size_t bytes, size_t off)
{
    if (bytes >= off + 64)
        return ALL64;
    if (bytes <= off)
        return 0;
    return ((__mmask64)1 << (bytes - off)) - 1;
}

/* 32 rounds on four groups of 16 blocks */
#define Z_ROUNDS4(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        __m512i k_ = _mm512_set1_epi32((int)(rk)[r_]);                                            \
        Z_ROUND(a0, a1, a2, a3, k_);                                                              \
        Z_ROUND(b0, b1, b2, b3, k_);                                                              \
        Z_ROUND(c0, c1, c2, c3, k_);                                                              \
        Z_ROUND(d0, d1, d2, d3, k_);                                                              \
        k_ = _mm512_set1_epi32((int)(rk)[r_ + 1]);                                                \
        Z_ROUND(a1, a2, a3, a0, k_);                                                              \
        Z_ROUND(b1, b2, b3, b0, k_);                                                              \
        Z_ROUND(c1, c2, c3, c0, k_);                                                              \
        Z_ROUND(d1, d2, d3, d0, k_);                                                              \
        k_ = _mm512_set1_epi32((int)(rk)[r_ + 2]);                                                \
        Z_ROUND(a2, a3, a0, a1, k_);                                                              \
        Z_ROUND(b2, b3, b0, b1, k_);                                                              \
        Z_ROUND(c2, c3, c0, c1, k_);                                                              \
        Z_ROUND(d2, d3, d0, d1, k_);                                                              \
        k_ = _mm512_set1_epi32((int)(rk)[r_ + 3]);                                                \
        Z_ROUND(a3, a0, a1, a2, k_);                                                              \
        Z_ROUND(b3, b0, b1, b2, k_);                                                              \
        Z_ROUND(c3, c0, c1, c2, k_);                                                              \
        Z_ROUND(d3, d0, d1, d2, k_);                                                              \
    }

#define Z_ROUNDS8(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        __m512i k_ = _mm512_set1_epi32((int)(rk)[r_ + 0]);                                        \
        Z_ROUND(a0, a1, a2, a3, k_);                                                              \
        Z_ROUND(b0, b1, b2, b3, k_);                                                              \
        Z_ROUND(c0, c1, c2, c3, k_);                                                              \
        Z_ROUND(d0, d1, d2, d3, k_);                                                              \
        Z_ROUND(e0, e1, e2, e3, k_);                                                              \
        Z_ROUND(f0, f1, f2, f3, k_);                                                              \
        Z_ROUND(g0, g1, g2, g3, k_);                                                              \
        Z_ROUND(h0, h1, h2, h3, k_);                                                              \
        k_ = _mm512_set1_epi32((int)(rk)[r_ + 1]);                                                \
        Z_ROUND(a1, a2, a3, a0, k_);                                                              \
        Z_ROUND(b1, b2, b3, b0, k_);                                                              \
        Z_ROUND(c1, c2, c3, c0, k_);                                                              \
        Z_ROUND(d1, d2, d3, d0, k_);                                                              \
        Z_ROUND(e1, e2, e3, e0, k_);                                                              \
        Z_ROUND(f1, f2, f3, f0, k_);                                                              \
        Z_ROUND(g1, g2, g3, g0, k_);                                                              \
        Z_ROUND(h1, h2, h3, h0, k_);                                                              \
        k_ = _mm512_set1_epi32((int)(rk)[r_ + 2]);                                                \
        Z_ROUND(a2, a3, a0, a1, k_);                                                              \
        Z_ROUND(b2, b3, b0, b1, k_);                                                              \
        Z_ROUND(c2, c3, c0, c1, k_);                                                              \
        Z_ROUND(d2, d3, d0, d1, k_);                                                              \
        Z_ROUND(e2, e3, e0, e1, k_);                                                              \
        Z_ROUND(f2, f3, f0, f1, k_);                                                              \
        Z_ROUND(g2, g3, g0, g1, k_);                                                              \
        Z_ROUND(h2, h3, h0, h1, k_);                                                              \
        k_ = _mm512_set1_epi32((int)(rk)[r_ + 3]);                                                \
        Z_ROUND(a3, a0, a1, a2, k_);                                                              \
        Z_ROUND(b3, b0, b1, b2, k_);                                                              \
        Z_ROUND(c3, c0, c1, c2, k_);                                                              \
        Z_ROUND(d3, d0, d1, d2, k_);                                                              \
        Z_ROUND(e3, e0, e1, e2, k_);                                                              \
        Z_ROUND(f3, f0, f1, f2, k_);                                                              \
        Z_ROUND(g3, g0, g1, g2, k_);                                                              \
        Z_ROUND(h3, h0, h1, h2, k_);                                                              \
    }

#define Z_ROUNDS1(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        Z_ROUND(a0, a1, a2, a3, _mm512_set1_epi32((int)(rk)[r_]));                                \
        Z_ROUND(a1, a2, a3, a0, _mm512_set1_epi32((int)(rk)[r_ + 1]));                            \
        Z_ROUND(a2, a3, a0, a1, _mm512_set1_epi32((int)(rk)[r_ + 2]));                            \
        Z_ROUND(a3, a0, a1, a2, _mm512_set1_epi32((int)(rk)[r_ + 3]));                            \
    }

TGT_AVX512 static void z_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out,
                             size_t nblocks)
{
    Z_CONSTS;
    uint32_t rkd[32];
    dom_keys(rk, rkd);
    for (; nblocks >= 128; nblocks -= 128, in += 2048, out += 2048) {
        __m512i a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3;
        __m512i e0, e1, e2, e3, f0, f1, f2, f3, g0, g1, g2, g3, h0, h1, h2, h3;
        Z_LOAD(in + 0, a0, a1, a2, a3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 256, b0, b1, b2, b3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 512, c0, c1, c2, c3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 768, d0, d1, d2, d3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 1024, e0, e1, e2, e3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 1280, f0, f1, f2, f3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 1536, g0, g1, g2, g3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 1792, h0, h1, h2, h3, ALL64, ALL64, ALL64, ALL64);
        Z_ROUNDS8(rkd);
        Z_STORE(out + 0, in, a0, a1, a2, a3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 256, in, b0, b1, b2, b3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 512, in, c0, c1, c2, c3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 768, in, d0, d1, d2, d3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 1024, in, e0, e1, e2, e3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 1280, in, f0, f1, f2, f3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 1536, in, g0, g1, g2, g3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 1792, in, h0, h1, h2, h3, ALL64, ALL64, ALL64, ALL64, 0);
    }
    for (; nblocks >= 64; nblocks -= 64, in += 1024, out += 1024) {
        __m512i a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3;
        Z_LOAD(in, a0, a1, a2, a3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 256, b0, b1, b2, b3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 512, c0, c1, c2, c3, ALL64, ALL64, ALL64, ALL64);
        Z_LOAD(in + 768, d0, d1, d2, d3, ALL64, ALL64, ALL64, ALL64);
        Z_ROUNDS4(rkd);
        Z_STORE(out, in, a0, a1, a2, a3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 256, in, b0, b1, b2, b3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 512, in, c0, c1, c2, c3, ALL64, ALL64, ALL64, ALL64, 0);
        Z_STORE(out + 768, in, d0, d1, d2, d3, ALL64, ALL64, ALL64, ALL64, 0);
    }
    while (nblocks) {
        size_t n = nblocks < 16 ? nblocks : 16, bytes = 16 * n;
        __mmask64 m0 = z_mask(bytes, 0), m1 = z_mask(bytes, 64), m2 = z_mask(bytes, 128),
                  m3 = z_mask(bytes, 192);
        __m512i a0, a1, a2, a3;
        Z_LOAD(in, a0, a1, a2, a3, m0, m1, m2, m3);
        Z_ROUNDS1(rkd);
        Z_STORE(out, in, a0, a1, a2, a3, m0, m1, m2, m3, 0);
        in += bytes, out += bytes, nblocks -= n;
    }
    wipe_keys(rkd);
}

/* Counter mode with only the low word counting (wraps mod 2^32); c: host-order words. */
TGT_AVX512 static void z_ctr32_words(const uint32_t rk[32], uint32_t c[4], const uint8_t *in,
                                     uint8_t *out, size_t len)
{
    Z_CONSTS;
    uint32_t rkd[32];
    dom_keys(rk, rkd);
    /* element e = 4L + k of a transposed vector is block 4k + L */
    const __m512i iota = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i w0 = ZD(_mm512_set1_epi32((int)c[0])), w1 = ZD(_mm512_set1_epi32((int)c[1])),
                  w2 = ZD(_mm512_set1_epi32((int)c[2]));
    __m512i w3 = _mm512_add_epi32(_mm512_set1_epi32((int)c[3]), iota);
    const __m512i sixteen = _mm512_set1_epi32(16);
    uint32_t used = (uint32_t)((len + 15) / 16);
    for (; len >= 2048; len -= 2048, in += 2048, out += 2048) {
        __m512i a0 = w0, a1 = w1, a2 = w2, a3 = w3;
        __m512i b0 = w0, b1 = w1, b2 = w2, b3 = _mm512_add_epi32(w3, sixteen);
        __m512i c0 = w0, c1 = w1, c2 = w2, c3 = _mm512_add_epi32(b3, sixteen);
        __m512i d0 = w0, d1 = w1, d2 = w2, d3 = _mm512_add_epi32(c3, sixteen);
        __m512i e0 = w0, e1 = w1, e2 = w2, e3 = _mm512_add_epi32(d3, sixteen);
        __m512i f0 = w0, f1 = w1, f2 = w2, f3 = _mm512_add_epi32(e3, sixteen);
        __m512i g0 = w0, g1 = w1, g2 = w2, g3 = _mm512_add_epi32(f3, sixteen);
        __m512i h0 = w0, h1 = w1, h2 = w2, h3 = _mm512_add_epi32(g3, sixteen);
        w3 = _mm512_add_epi32(h3, sixteen);
        a3 = ZD(a3), b3 = ZD(b3), c3 = ZD(c3), d3 = ZD(d3);
        e3 = ZD(e3), f3 = ZD(f3), g3 = ZD(g3), h3 = ZD(h3);
        Z_ROUNDS8(rkd);
        Z_STORE(out, in, a0, a1, a2, a3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 256, in + 256, b0, b1, b2, b3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 512, in + 512, c0, c1, c2, c3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 768, in + 768, d0, d1, d2, d3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 1024, in + 1024, e0, e1, e2, e3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 1280, in + 1280, f0, f1, f2, f3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 1536, in + 1536, g0, g1, g2, g3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 1792, in + 1792, h0, h1, h2, h3, ALL64, ALL64, ALL64, ALL64, 1);
    }
    for (; len >= 1024; len -= 1024, in += 1024, out += 1024) {
        __m512i a0 = w0, a1 = w1, a2 = w2, a3 = w3;
        __m512i b0 = w0, b1 = w1, b2 = w2, b3 = _mm512_add_epi32(w3, sixteen);
        __m512i c0 = w0, c1 = w1, c2 = w2, c3 = _mm512_add_epi32(b3, sixteen);
        __m512i d0 = w0, d1 = w1, d2 = w2, d3 = _mm512_add_epi32(c3, sixteen);
        w3 = _mm512_add_epi32(d3, sixteen);
        a3 = ZD(a3), b3 = ZD(b3), c3 = ZD(c3), d3 = ZD(d3);
        Z_ROUNDS4(rkd);
        Z_STORE(out, in, a0, a1, a2, a3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 256, in + 256, b0, b1, b2, b3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 512, in + 512, c0, c1, c2, c3, ALL64, ALL64, ALL64, ALL64, 1);
        Z_STORE(out + 768, in + 768, d0, d1, d2, d3, ALL64, ALL64, ALL64, ALL64, 1);
    }
    while (len) {
        size_t bytes = len < 256 ? len : 256;
        __mmask64 m0 = z_mask(bytes, 0), m1 = z_mask(bytes, 64), m2 = z_mask(bytes, 128),
                  m3 = z_mask(bytes, 192);
        __m512i a0 = w0, a1 = w1, a2 = w2, a3 = w3;
        w3 = _mm512_add_epi32(w3, sixteen);
        a3 = ZD(a3);
        Z_ROUNDS1(rkd);
        Z_STORE(out, in, a0, a1, a2, a3, m0, m1, m2, m3, 1);
        in += bytes, out += bytes, len -= bytes;
    }
    c[3] += used;
    wipe_keys(rkd);
}

/* ================================================================ SM4, AVX2 + GFNI */

#define Y_CONSTS                                                                                  \
    const __m256i ydom = _mm256_set1_epi64x((long long)SM4_GFNI_DOMAIN_MATRIX);                   \
    const __m256i ydinv = _mm256_set1_epi64x((long long)SM4_GFNI_DOMAIN_INV_MATRIX);              \
    const __m256i yd0 = _mm256_set1_epi64x((long long)SM4_GFNI_POST_D0_MATRIX);                   \
    const __m256i yd1 = _mm256_set1_epi64x((long long)SM4_GFNI_POST_D1_MATRIX);                   \
    const __m256i yd3 = _mm256_set1_epi64x((long long)SM4_GFNI_POST_D3_MATRIX);                   \
    const __m256i ywbs = _mm256_broadcastsi128_si256(_mm_setr_epi8(WBSWAP_MASK));                 \
    const __m256i yr8 = _mm256_broadcastsi128_si256(                                              \
        _mm_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14));                     \
    const __m256i yr16 = _mm256_broadcastsi128_si256(                                             \
        _mm_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));                     \
    const __m256i yr24 = _mm256_broadcastsi128_si256(                                             \
        _mm_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12))

#define YD(v) _mm256_gf2p8affine_epi64_epi8(v, ydom, 0)
#define YDI(v) _mm256_gf2p8affine_epi64_epi8(v, ydinv, 0)

/* As Z_ROUND (pre-affine domain, L folded into the post matrices); byte rotates are single
 * shuffles, so AVX2 needs no shift/or rotates. */
#define Y_ROUND(X0, X1, X2, X3, K)                                                                \
    do {                                                                                          \
        __m256i t_ = _mm256_xor_si256(_mm256_xor_si256(X1, X2), _mm256_xor_si256(X3, K));         \
        __m256i p0_ = _mm256_gf2p8affineinv_epi64_epi8(t_, yd0, SM4_GFNI_POST_D0_CONST);          \
        __m256i p1_ = _mm256_gf2p8affineinv_epi64_epi8(t_, yd1, SM4_GFNI_POST_D1_CONST);          \
        __m256i p3_ = _mm256_gf2p8affineinv_epi64_epi8(t_, yd3, SM4_GFNI_POST_D3_CONST);          \
        p0_ = _mm256_xor_si256(p0_, _mm256_shuffle_epi8(p1_, yr8));                               \
        p1_ = _mm256_xor_si256(_mm256_shuffle_epi8(p1_, yr16), _mm256_shuffle_epi8(p3_, yr24));   \
        X0 = _mm256_xor_si256(X0, _mm256_xor_si256(p0_, p1_));                                    \
    } while (0)

#define Y_TRANSPOSE(A, B, C, D)                                                                   \
    do {                                                                                          \
        __m256i t0_ = _mm256_unpacklo_epi32(A, B), t1_ = _mm256_unpackhi_epi32(A, B);             \
        __m256i t2_ = _mm256_unpacklo_epi32(C, D), t3_ = _mm256_unpackhi_epi32(C, D);             \
        A = _mm256_unpacklo_epi64(t0_, t2_);                                                      \
        B = _mm256_unpackhi_epi64(t0_, t2_);                                                      \
        C = _mm256_unpacklo_epi64(t1_, t3_);                                                      \
        D = _mm256_unpackhi_epi64(t1_, t3_);                                                      \
    } while (0)

#define Y_LOAD(p, X0, X1, X2, X3)                                                                 \
    do {                                                                                          \
        X0 = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(p)), ywbs);                 \
        X1 = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)((p) + 32)), ywbs);          \
        X2 = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)((p) + 64)), ywbs);          \
        X3 = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)((p) + 96)), ywbs);          \
        Y_TRANSPOSE(X0, X1, X2, X3);                                                              \
    } while (0)

#define Y_STORE(out, in, X0, X1, X2, X3, XORIN)                                                   \
    do {                                                                                          \
        Y_TRANSPOSE(X3, X2, X1, X0);                                                              \
        X3 = _mm256_shuffle_epi8(X3, ywbs);                                                       \
        X2 = _mm256_shuffle_epi8(X2, ywbs);                                                       \
        X1 = _mm256_shuffle_epi8(X1, ywbs);                                                       \
        X0 = _mm256_shuffle_epi8(X0, ywbs);                                                       \
        if (XORIN) {                                                                              \
            X3 = _mm256_xor_si256(X3, _mm256_loadu_si256((const __m256i *)(in)));                 \
            X2 = _mm256_xor_si256(X2, _mm256_loadu_si256((const __m256i *)((in) + 32)));          \
            X1 = _mm256_xor_si256(X1, _mm256_loadu_si256((const __m256i *)((in) + 64)));          \
            X0 = _mm256_xor_si256(X0, _mm256_loadu_si256((const __m256i *)((in) + 96)));          \
        }                                                                                         \
        _mm256_storeu_si256((__m256i *)(out), X3);                                                \
        _mm256_storeu_si256((__m256i *)((out) + 32), X2);                                         \
        _mm256_storeu_si256((__m256i *)((out) + 64), X1);                                         \
        _mm256_storeu_si256((__m256i *)((out) + 96), X0);                                         \
    } while (0)

#define Y_LOADD(p, X0, X1, X2, X3)                                                                \
    do {                                                                                          \
        Y_LOAD(p, X0, X1, X2, X3);                                                                \
        X0 = YD(X0), X1 = YD(X1), X2 = YD(X2), X3 = YD(X3);                                       \
    } while (0)

#define Y_STORED(out, in, X0, X1, X2, X3, XORIN)                                                  \
    do {                                                                                          \
        X0 = YDI(X0), X1 = YDI(X1), X2 = YDI(X2), X3 = YDI(X3);                                   \
        Y_STORE(out, in, X0, X1, X2, X3, XORIN);                                                  \
    } while (0)

#define Y_ROUNDS2(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        __m256i k_ = _mm256_set1_epi32((int)(rk)[r_]);                                            \
        Y_ROUND(a0, a1, a2, a3, k_);                                                              \
        Y_ROUND(b0, b1, b2, b3, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 1]);                                                \
        Y_ROUND(a1, a2, a3, a0, k_);                                                              \
        Y_ROUND(b1, b2, b3, b0, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 2]);                                                \
        Y_ROUND(a2, a3, a0, a1, k_);                                                              \
        Y_ROUND(b2, b3, b0, b1, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 3]);                                                \
        Y_ROUND(a3, a0, a1, a2, k_);                                                              \
        Y_ROUND(b3, b0, b1, b2, k_);                                                              \
    }

#define Y_ROUNDS4(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        __m256i k_ = _mm256_set1_epi32((int)(rk)[r_]);                                            \
        Y_ROUND(a0, a1, a2, a3, k_);                                                              \
        Y_ROUND(b0, b1, b2, b3, k_);                                                              \
        Y_ROUND(c0, c1, c2, c3, k_);                                                              \
        Y_ROUND(d0, d1, d2, d3, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 1]);                                                \
        Y_ROUND(a1, a2, a3, a0, k_);                                                              \
        Y_ROUND(b1, b2, b3, b0, k_);                                                              \
        Y_ROUND(c1, c2, c3, c0, k_);                                                              \
        Y_ROUND(d1, d2, d3, d0, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 2]);                                                \
        Y_ROUND(a2, a3, a0, a1, k_);                                                              \
        Y_ROUND(b2, b3, b0, b1, k_);                                                              \
        Y_ROUND(c2, c3, c0, c1, k_);                                                              \
        Y_ROUND(d2, d3, d0, d1, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 3]);                                                \
        Y_ROUND(a3, a0, a1, a2, k_);                                                              \
        Y_ROUND(b3, b0, b1, b2, k_);                                                              \
        Y_ROUND(c3, c0, c1, c2, k_);                                                              \
        Y_ROUND(d3, d0, d1, d2, k_);                                                              \
    }

#define Y_ROUNDS8(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        __m256i k_ = _mm256_set1_epi32((int)(rk)[r_ + 0]);                                        \
        Y_ROUND(a0, a1, a2, a3, k_);                                                              \
        Y_ROUND(b0, b1, b2, b3, k_);                                                              \
        Y_ROUND(c0, c1, c2, c3, k_);                                                              \
        Y_ROUND(d0, d1, d2, d3, k_);                                                              \
        Y_ROUND(e0, e1, e2, e3, k_);                                                              \
        Y_ROUND(f0, f1, f2, f3, k_);                                                              \
        Y_ROUND(g0, g1, g2, g3, k_);                                                              \
        Y_ROUND(h0, h1, h2, h3, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 1]);                                                \
        Y_ROUND(a1, a2, a3, a0, k_);                                                              \
        Y_ROUND(b1, b2, b3, b0, k_);                                                              \
        Y_ROUND(c1, c2, c3, c0, k_);                                                              \
        Y_ROUND(d1, d2, d3, d0, k_);                                                              \
        Y_ROUND(e1, e2, e3, e0, k_);                                                              \
        Y_ROUND(f1, f2, f3, f0, k_);                                                              \
        Y_ROUND(g1, g2, g3, g0, k_);                                                              \
        Y_ROUND(h1, h2, h3, h0, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 2]);                                                \
        Y_ROUND(a2, a3, a0, a1, k_);                                                              \
        Y_ROUND(b2, b3, b0, b1, k_);                                                              \
        Y_ROUND(c2, c3, c0, c1, k_);                                                              \
        Y_ROUND(d2, d3, d0, d1, k_);                                                              \
        Y_ROUND(e2, e3, e0, e1, k_);                                                              \
        Y_ROUND(f2, f3, f0, f1, k_);                                                              \
        Y_ROUND(g2, g3, g0, g1, k_);                                                              \
        Y_ROUND(h2, h3, h0, h1, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 3]);                                                \
        Y_ROUND(a3, a0, a1, a2, k_);                                                              \
        Y_ROUND(b3, b0, b1, b2, k_);                                                              \
        Y_ROUND(c3, c0, c1, c2, k_);                                                              \
        Y_ROUND(d3, d0, d1, d2, k_);                                                              \
        Y_ROUND(e3, e0, e1, e2, k_);                                                              \
        Y_ROUND(f3, f0, f1, f2, k_);                                                              \
        Y_ROUND(g3, g0, g1, g2, k_);                                                              \
        Y_ROUND(h3, h0, h1, h2, k_);                                                              \
    }

#define Y_ROUNDS1(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        Y_ROUND(a0, a1, a2, a3, _mm256_set1_epi32((int)(rk)[r_]));                                \
        Y_ROUND(a1, a2, a3, a0, _mm256_set1_epi32((int)(rk)[r_ + 1]));                            \
        Y_ROUND(a2, a3, a0, a1, _mm256_set1_epi32((int)(rk)[r_ + 2]));                            \
        Y_ROUND(a3, a0, a1, a2, _mm256_set1_epi32((int)(rk)[r_ + 3]));                            \
    }

TGT_AVX2 static void y_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out,
                           size_t nblocks)
{
    Y_CONSTS;
    uint32_t rkd[32];
    dom_keys(rk, rkd);
    for (; nblocks >= 64; nblocks -= 64, in += 1024, out += 1024) {
        __m256i a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3;
        __m256i e0, e1, e2, e3, f0, f1, f2, f3, g0, g1, g2, g3, h0, h1, h2, h3;
        Y_LOADD(in + 0, a0, a1, a2, a3);
        Y_LOADD(in + 128, b0, b1, b2, b3);
        Y_LOADD(in + 256, c0, c1, c2, c3);
        Y_LOADD(in + 384, d0, d1, d2, d3);
        Y_LOADD(in + 512, e0, e1, e2, e3);
        Y_LOADD(in + 640, f0, f1, f2, f3);
        Y_LOADD(in + 768, g0, g1, g2, g3);
        Y_LOADD(in + 896, h0, h1, h2, h3);
        Y_ROUNDS8(rkd);
        Y_STORED(out + 0, in, a0, a1, a2, a3, 0);
        Y_STORED(out + 128, in, b0, b1, b2, b3, 0);
        Y_STORED(out + 256, in, c0, c1, c2, c3, 0);
        Y_STORED(out + 384, in, d0, d1, d2, d3, 0);
        Y_STORED(out + 512, in, e0, e1, e2, e3, 0);
        Y_STORED(out + 640, in, f0, f1, f2, f3, 0);
        Y_STORED(out + 768, in, g0, g1, g2, g3, 0);
        Y_STORED(out + 896, in, h0, h1, h2, h3, 0);
    }
    for (; nblocks >= 32; nblocks -= 32, in += 512, out += 512) {
        __m256i a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3;
        Y_LOADD(in, a0, a1, a2, a3);
        Y_LOADD(in + 128, b0, b1, b2, b3);
        Y_LOADD(in + 256, c0, c1, c2, c3);
        Y_LOADD(in + 384, d0, d1, d2, d3);
        Y_ROUNDS4(rkd);
        Y_STORED(out, in, a0, a1, a2, a3, 0);
        Y_STORED(out + 128, in, b0, b1, b2, b3, 0);
        Y_STORED(out + 256, in, c0, c1, c2, c3, 0);
        Y_STORED(out + 384, in, d0, d1, d2, d3, 0);
    }
    for (; nblocks >= 16; nblocks -= 16, in += 256, out += 256) {
        __m256i a0, a1, a2, a3, b0, b1, b2, b3;
        Y_LOADD(in, a0, a1, a2, a3);
        Y_LOADD(in + 128, b0, b1, b2, b3);
        Y_ROUNDS2(rkd);
        Y_STORED(out, in, a0, a1, a2, a3, 0);
        Y_STORED(out + 128, in, b0, b1, b2, b3, 0);
    }
    while (nblocks) {
        size_t n = nblocks < 8 ? nblocks : 8;
        uint8_t buf[128];
        const uint8_t *src = in;
        uint8_t *dst = out;
        if (n < 8) {
            memset(buf, 0, sizeof buf);
            memcpy(buf, in, 16 * n);
            src = dst = buf;
        }
        __m256i a0, a1, a2, a3;
        Y_LOADD(src, a0, a1, a2, a3);
        Y_ROUNDS1(rkd);
        Y_STORED(dst, src, a0, a1, a2, a3, 0);
        if (n < 8) {
            memcpy(out, buf, 16 * n);
            memset(buf, 0, sizeof buf);
            __asm__ volatile("" : : "r"(buf) : "memory");
        }
        in += 16 * n, out += 16 * n, nblocks -= n;
    }
    wipe_keys(rkd);
}

TGT_AVX2 static void y_ctr32_words(const uint32_t rk[32], uint32_t c[4], const uint8_t *in,
                                   uint8_t *out, size_t len)
{
    Y_CONSTS;
    uint32_t rkd[32];
    dom_keys(rk, rkd);
    /* element e = 4L + k is block 2k + L */
    const __m256i iota = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i w0 = YD(_mm256_set1_epi32((int)c[0])), w1 = YD(_mm256_set1_epi32((int)c[1])),
                  w2 = YD(_mm256_set1_epi32((int)c[2]));
    const __m256i eight = _mm256_set1_epi32(8);
    __m256i w3 = _mm256_add_epi32(_mm256_set1_epi32((int)c[3]), iota);
    uint32_t used = (uint32_t)((len + 15) / 16);
    for (; len >= 1024; len -= 1024, in += 1024, out += 1024) {
        __m256i a0 = w0, a1 = w1, a2 = w2, a3 = w3;
        __m256i b0 = w0, b1 = w1, b2 = w2, b3 = _mm256_add_epi32(w3, eight);
        __m256i c0 = w0, c1 = w1, c2 = w2, c3 = _mm256_add_epi32(b3, eight);
        __m256i d0 = w0, d1 = w1, d2 = w2, d3 = _mm256_add_epi32(c3, eight);
        __m256i e0 = w0, e1 = w1, e2 = w2, e3 = _mm256_add_epi32(d3, eight);
        __m256i f0 = w0, f1 = w1, f2 = w2, f3 = _mm256_add_epi32(e3, eight);
        __m256i g0 = w0, g1 = w1, g2 = w2, g3 = _mm256_add_epi32(f3, eight);
        __m256i h0 = w0, h1 = w1, h2 = w2, h3 = _mm256_add_epi32(g3, eight);
        w3 = _mm256_add_epi32(h3, eight);
        a3 = YD(a3), b3 = YD(b3), c3 = YD(c3), d3 = YD(d3);
        e3 = YD(e3), f3 = YD(f3), g3 = YD(g3), h3 = YD(h3);
        Y_ROUNDS8(rkd);
        Y_STORED(out, in, a0, a1, a2, a3, 1);
        Y_STORED(out + 128, in + 128, b0, b1, b2, b3, 1);
        Y_STORED(out + 256, in + 256, c0, c1, c2, c3, 1);
        Y_STORED(out + 384, in + 384, d0, d1, d2, d3, 1);
        Y_STORED(out + 512, in + 512, e0, e1, e2, e3, 1);
        Y_STORED(out + 640, in + 640, f0, f1, f2, f3, 1);
        Y_STORED(out + 768, in + 768, g0, g1, g2, g3, 1);
        Y_STORED(out + 896, in + 896, h0, h1, h2, h3, 1);
    }
    for (; len >= 512; len -= 512, in += 512, out += 512) {
        __m256i a0 = w0, a1 = w1, a2 = w2, a3 = w3;
        __m256i b0 = w0, b1 = w1, b2 = w2, b3 = _mm256_add_epi32(w3, eight);
        __m256i c0 = w0, c1 = w1, c2 = w2, c3 = _mm256_add_epi32(b3, eight);
        __m256i d0 = w0, d1 = w1, d2 = w2, d3 = _mm256_add_epi32(c3, eight);
        w3 = _mm256_add_epi32(d3, eight);
        a3 = YD(a3), b3 = YD(b3), c3 = YD(c3), d3 = YD(d3);
        Y_ROUNDS4(rkd);
        Y_STORED(out, in, a0, a1, a2, a3, 1);
        Y_STORED(out + 128, in + 128, b0, b1, b2, b3, 1);
        Y_STORED(out + 256, in + 256, c0, c1, c2, c3, 1);
        Y_STORED(out + 384, in + 384, d0, d1, d2, d3, 1);
    }
    for (; len >= 256; len -= 256, in += 256, out += 256) {
        __m256i a0 = w0, a1 = w1, a2 = w2, a3 = w3;
        __m256i b0 = w0, b1 = w1, b2 = w2, b3 = _mm256_add_epi32(w3, eight);
        w3 = _mm256_add_epi32(b3, eight);
        a3 = YD(a3), b3 = YD(b3);
        Y_ROUNDS2(rkd);
        Y_STORED(out, in, a0, a1, a2, a3, 1);
        Y_STORED(out + 128, in + 128, b0, b1, b2, b3, 1);
    }
    while (len) {
        size_t n = len < 128 ? len : 128;
        uint8_t buf[128];
        const uint8_t *src = in;
        uint8_t *dst = out;
        if (n < 128) {
            memset(buf, 0, sizeof buf);
            memcpy(buf, in, n);
            src = dst = buf;
        }
        __m256i a0 = w0, a1 = w1, a2 = w2, a3 = w3;
        w3 = _mm256_add_epi32(w3, eight);
        a3 = YD(a3);
        Y_ROUNDS1(rkd);
        Y_STORED(dst, src, a0, a1, a2, a3, 1);
        if (n < 128) {
            memcpy(out, buf, n);
            memset(buf, 0, sizeof buf);
            __asm__ volatile("" : : "r"(buf) : "memory");
        }
        in += n, out += n, len -= n;
    }
    c[3] += used;
    wipe_keys(rkd);
}

/* ================================================================ SM4, AVX2 + AES-NI S-box */
/* For AVX2 CPUs without GFNI. S(x) = post(SubBytes_aes(pre(x))) with pre/post affine maps
 * evaluated by nibble lookups (tables from gen_sm4_tables.py). AESENCLAST with a zero round key
 * computes ShiftRows(SubBytes(v)), so its input is pre-permuted by InvShiftRows. Without VAES
 * the 256-bit vector goes through two 128-bit AESENCLAST. */

#define A_TAB(name) _mm256_broadcastsi128_si256(_mm_setr_epi8(name))

#define A_CONSTS                                                                                  \
    const __m256i ywbs = _mm256_broadcastsi128_si256(_mm_setr_epi8(WBSWAP_MASK));                 \
    const __m256i yr8 = _mm256_broadcastsi128_si256(                                              \
        _mm_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14));                     \
    const __m256i yr16 = _mm256_broadcastsi128_si256(                                             \
        _mm_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));                     \
    const __m256i yr24 = _mm256_broadcastsi128_si256(                                             \
        _mm_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12));                     \
    const __m256i ainvsr = _mm256_broadcastsi128_si256(                                           \
        _mm_setr_epi8(0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3));                     \
    const __m256i a0f = _mm256_set1_epi8(0x0f);                                                   \
    const __m256i ar0lo = A_TAB(SM4_AESNI_R0_LO), ar0hi = A_TAB(SM4_AESNI_R0_HI);                 \
    const __m256i ar1lo = A_TAB(SM4_AESNI_R1_LO), ar1hi = A_TAB(SM4_AESNI_R1_HI);                 \
    const __m256i ar3lo = A_TAB(SM4_AESNI_R3_LO), ar3hi = A_TAB(SM4_AESNI_R3_HI);                 \
    const __m256i adlo = A_TAB(SM4_AESNI_DOM_LO), adhi = A_TAB(SM4_AESNI_DOM_HI);                 \
    const __m256i adilo = A_TAB(SM4_AESNI_DOM_INV_LO), adihi = A_TAB(SM4_AESNI_DOM_INV_HI)

/* a byte-wise affine map by two 16-entry lookups */
#define A_AFFINE(v, lo, hi)                                                                       \
    _mm256_xor_si256(_mm256_shuffle_epi8(lo, _mm256_and_si256(v, a0f)),                           \
                     _mm256_shuffle_epi8(hi, _mm256_and_si256(_mm256_srli_epi16(v, 4), a0f)))

#define AD(v) A_AFFINE(v, adlo, adhi)
#define ADI(v) A_AFFINE(v, adilo, adihi)

/* SubBytes of every byte: AESENCLAST (zero key) after InvShiftRows, two 128-bit halves */
TGT_AVX2_AESNI INLINE __m256i a_subbytes(__m256i v, __m256i ainvsr)
{
    v = _mm256_shuffle_epi8(v, ainvsr);
    __m128i lo = _mm_aesenclast_si128(_mm256_castsi256_si128(v), _mm_setzero_si128());
    __m128i hi = _mm_aesenclast_si128(_mm256_extracti128_si256(v, 1), _mm_setzero_si128());
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

TGT_AVX2_VAES INLINE __m256i a_subbytes_vaes(__m256i v, __m256i ainvsr)
{
    return _mm256_aesenclast_epi128(_mm256_shuffle_epi8(v, ainvsr), _mm256_setzero_si256());
}

/* the SubBytes the A_ROUND macros expand to (switched between the two kernel instantiations) */
#define A_SUBBYTES a_subbytes

/* Pre-affine domain as in the GFNI kernels (see derive_aesni_domain in gen_sm4_tables.py):
 * the SubBytes input needs no affine step; R0/R1/R3 map its output back and fold in L. */
#define A_ROUND(X0, X1, X2, X3, K)                                                                \
    do {                                                                                          \
        __m256i z_ = A_SUBBYTES(                                                                  \
            _mm256_xor_si256(_mm256_xor_si256(X1, X2), _mm256_xor_si256(X3, K)), ainvsr);         \
        __m256i l_ = _mm256_and_si256(z_, a0f);                                                   \
        __m256i h_ = _mm256_and_si256(_mm256_srli_epi16(z_, 4), a0f);                             \
        __m256i p0_ = _mm256_xor_si256(_mm256_shuffle_epi8(ar0lo, l_),                            \
                                       _mm256_shuffle_epi8(ar0hi, h_));                           \
        __m256i p1_ = _mm256_xor_si256(_mm256_shuffle_epi8(ar1lo, l_),                            \
                                       _mm256_shuffle_epi8(ar1hi, h_));                           \
        __m256i p3_ = _mm256_xor_si256(_mm256_shuffle_epi8(ar3lo, l_),                            \
                                       _mm256_shuffle_epi8(ar3hi, h_));                           \
        p0_ = _mm256_xor_si256(p0_, _mm256_shuffle_epi8(p1_, yr8));                               \
        p1_ = _mm256_xor_si256(_mm256_shuffle_epi8(p1_, yr16), _mm256_shuffle_epi8(p3_, yr24));   \
        X0 = _mm256_xor_si256(X0, _mm256_xor_si256(p0_, p1_));                                    \
    } while (0)

#define A_LOADD(p, X0, X1, X2, X3)                                                                \
    do {                                                                                          \
        Y_LOAD(p, X0, X1, X2, X3);                                                                \
        X0 = AD(X0), X1 = AD(X1), X2 = AD(X2), X3 = AD(X3);                                       \
    } while (0)

#define A_STORED(out, in, X0, X1, X2, X3, XORIN)                                                  \
    do {                                                                                          \
        X0 = ADI(X0), X1 = ADI(X1), X2 = ADI(X2), X3 = ADI(X3);                                   \
        Y_STORE(out, in, X0, X1, X2, X3, XORIN);                                                  \
    } while (0)

/* round keys in the domain: D(rk) ^ 0x3e per byte (table-free) */
TGT_AVX2_AESNI static void a_dom_keys(const uint32_t rk[32], uint32_t out[32])
{
    const __m256i a0f = _mm256_set1_epi8(0x0f);
    const __m256i klo = A_TAB(SM4_AESNI_KEY_LO), khi = A_TAB(SM4_AESNI_KEY_HI);
    for (int i = 0; i < 32; i += 8) {
        __m256i k = _mm256_loadu_si256((const __m256i *)(rk + i));
        _mm256_storeu_si256((__m256i *)(out + i), A_AFFINE(k, klo, khi));
    }
}

#define A_ROUNDS4(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        __m256i k_ = _mm256_set1_epi32((int)(rk)[r_ + 0]);                                        \
        A_ROUND(a0, a1, a2, a3, k_);                                                              \
        A_ROUND(b0, b1, b2, b3, k_);                                                              \
        A_ROUND(c0, c1, c2, c3, k_);                                                              \
        A_ROUND(d0, d1, d2, d3, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 1]);                                                \
        A_ROUND(a1, a2, a3, a0, k_);                                                              \
        A_ROUND(b1, b2, b3, b0, k_);                                                              \
        A_ROUND(c1, c2, c3, c0, k_);                                                              \
        A_ROUND(d1, d2, d3, d0, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 2]);                                                \
        A_ROUND(a2, a3, a0, a1, k_);                                                              \
        A_ROUND(b2, b3, b0, b1, k_);                                                              \
        A_ROUND(c2, c3, c0, c1, k_);                                                              \
        A_ROUND(d2, d3, d0, d1, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 3]);                                                \
        A_ROUND(a3, a0, a1, a2, k_);                                                              \
        A_ROUND(b3, b0, b1, b2, k_);                                                              \
        A_ROUND(c3, c0, c1, c2, k_);                                                              \
        A_ROUND(d3, d0, d1, d2, k_);                                                              \
    }

#define A_ROUNDS8(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        __m256i k_ = _mm256_set1_epi32((int)(rk)[r_ + 0]);                                        \
        A_ROUND(a0, a1, a2, a3, k_);                                                              \
        A_ROUND(b0, b1, b2, b3, k_);                                                              \
        A_ROUND(c0, c1, c2, c3, k_);                                                              \
        A_ROUND(d0, d1, d2, d3, k_);                                                              \
        A_ROUND(e0, e1, e2, e3, k_);                                                              \
        A_ROUND(f0, f1, f2, f3, k_);                                                              \
        A_ROUND(g0, g1, g2, g3, k_);                                                              \
        A_ROUND(h0, h1, h2, h3, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 1]);                                                \
        A_ROUND(a1, a2, a3, a0, k_);                                                              \
        A_ROUND(b1, b2, b3, b0, k_);                                                              \
        A_ROUND(c1, c2, c3, c0, k_);                                                              \
        A_ROUND(d1, d2, d3, d0, k_);                                                              \
        A_ROUND(e1, e2, e3, e0, k_);                                                              \
        A_ROUND(f1, f2, f3, f0, k_);                                                              \
        A_ROUND(g1, g2, g3, g0, k_);                                                              \
        A_ROUND(h1, h2, h3, h0, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 2]);                                                \
        A_ROUND(a2, a3, a0, a1, k_);                                                              \
        A_ROUND(b2, b3, b0, b1, k_);                                                              \
        A_ROUND(c2, c3, c0, c1, k_);                                                              \
        A_ROUND(d2, d3, d0, d1, k_);                                                              \
        A_ROUND(e2, e3, e0, e1, k_);                                                              \
        A_ROUND(f2, f3, f0, f1, k_);                                                              \
        A_ROUND(g2, g3, g0, g1, k_);                                                              \
        A_ROUND(h2, h3, h0, h1, k_);                                                              \
        k_ = _mm256_set1_epi32((int)(rk)[r_ + 3]);                                                \
        A_ROUND(a3, a0, a1, a2, k_);                                                              \
        A_ROUND(b3, b0, b1, b2, k_);                                                              \
        A_ROUND(c3, c0, c1, c2, k_);                                                              \
        A_ROUND(d3, d0, d1, d2, k_);                                                              \
        A_ROUND(e3, e0, e1, e2, k_);                                                              \
        A_ROUND(f3, f0, f1, f2, k_);                                                              \
        A_ROUND(g3, g0, g1, g2, k_);                                                              \
        A_ROUND(h3, h0, h1, h2, k_);                                                              \
    }

#define A_ROUNDS1(rk)                                                                             \
    for (int r_ = 0; r_ < 32; r_ += 4) {                                                          \
        A_ROUND(a0, a1, a2, a3, _mm256_set1_epi32((int)(rk)[r_]));                                \
        A_ROUND(a1, a2, a3, a0, _mm256_set1_epi32((int)(rk)[r_ + 1]));                            \
        A_ROUND(a2, a3, a0, a1, _mm256_set1_epi32((int)(rk)[r_ + 2]));                            \
        A_ROUND(a3, a0, a1, a2, _mm256_set1_epi32((int)(rk)[r_ + 3]));                            \
    }

/* The AES-NI kernels, instantiated twice: 128-bit AESENCLAST and VAES (256-bit). */
#define A_KERNELS(SFX, TGT)                                                                       \
TGT static void a##SFX##_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out,              \
                                 size_t nblocks)                                                  \
{                                                                                                 \
    A_CONSTS;                                                                                     \
    uint32_t rkd[32];                                                                             \
    a_dom_keys(rk, rkd);                                                                          \
    for (; nblocks >= 64; nblocks -= 64, in += 1024, out += 1024) {                               \
        __m256i a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3;                   \
        __m256i e0, e1, e2, e3, f0, f1, f2, f3, g0, g1, g2, g3, h0, h1, h2, h3;                   \
        A_LOADD(in + 0, a0, a1, a2, a3);                                                          \
        A_LOADD(in + 128, b0, b1, b2, b3);                                                        \
        A_LOADD(in + 256, c0, c1, c2, c3);                                                        \
        A_LOADD(in + 384, d0, d1, d2, d3);                                                        \
        A_LOADD(in + 512, e0, e1, e2, e3);                                                        \
        A_LOADD(in + 640, f0, f1, f2, f3);                                                        \
        A_LOADD(in + 768, g0, g1, g2, g3);                                                        \
        A_LOADD(in + 896, h0, h1, h2, h3);                                                        \
        A_ROUNDS8(rkd);                                                                           \
        A_STORED(out + 0, in, a0, a1, a2, a3, 0);                                                 \
        A_STORED(out + 128, in, b0, b1, b2, b3, 0);                                               \
        A_STORED(out + 256, in, c0, c1, c2, c3, 0);                                               \
        A_STORED(out + 384, in, d0, d1, d2, d3, 0);                                               \
        A_STORED(out + 512, in, e0, e1, e2, e3, 0);                                               \
        A_STORED(out + 640, in, f0, f1, f2, f3, 0);                                               \
        A_STORED(out + 768, in, g0, g1, g2, g3, 0);                                               \
        A_STORED(out + 896, in, h0, h1, h2, h3, 0);                                               \
    }                                                                                             \
    for (; nblocks >= 32; nblocks -= 32, in += 512, out += 512) {                                 \
        __m256i a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3;                   \
        A_LOADD(in, a0, a1, a2, a3);                                                              \
        A_LOADD(in + 128, b0, b1, b2, b3);                                                        \
        A_LOADD(in + 256, c0, c1, c2, c3);                                                        \
        A_LOADD(in + 384, d0, d1, d2, d3);                                                        \
        A_ROUNDS4(rkd);                                                                           \
        A_STORED(out, in, a0, a1, a2, a3, 0);                                                     \
        A_STORED(out + 128, in, b0, b1, b2, b3, 0);                                               \
        A_STORED(out + 256, in, c0, c1, c2, c3, 0);                                               \
        A_STORED(out + 384, in, d0, d1, d2, d3, 0);                                               \
    }                                                                                             \
    while (nblocks) {                                                                             \
        size_t n = nblocks < 8 ? nblocks : 8;                                                     \
        uint8_t buf[128];                                                                         \
        const uint8_t *src = in;                                                                  \
        uint8_t *dst = out;                                                                       \
        if (n < 8) {                                                                              \
            memset(buf, 0, sizeof buf);                                                           \
            memcpy(buf, in, 16 * n);                                                              \
            src = dst = buf;                                                                      \
        }                                                                                         \
        __m256i a0, a1, a2, a3;                                                                   \
        A_LOADD(src, a0, a1, a2, a3);                                                             \
        A_ROUNDS1(rkd);                                                                           \
        A_STORED(dst, src, a0, a1, a2, a3, 0);                                                    \
        if (n < 8) {                                                                              \
            memcpy(out, buf, 16 * n);                                                             \
            memset(buf, 0, sizeof buf);                                                           \
            __asm__ volatile("" : : "r"(buf) : "memory");                                         \
        }                                                                                         \
        in += 16 * n, out += 16 * n, nblocks -= n;                                                \
    }                                                                                             \
    wipe_keys(rkd);                                                                               \
}                                                                                                 \
                                                                                                  \
TGT static void a##SFX##_ctr32_words(const uint32_t rk[32], uint32_t c[4], const uint8_t *in,     \
                                         uint8_t *out, size_t len)                                \
{                                                                                                 \
    A_CONSTS;                                                                                     \
    uint32_t rkd[32];                                                                             \
    a_dom_keys(rk, rkd);                                                                          \
    const __m256i iota = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);                               \
    const __m256i w0 = AD(_mm256_set1_epi32((int)c[0])), w1 = AD(_mm256_set1_epi32((int)c[1])),   \
                  w2 = AD(_mm256_set1_epi32((int)c[2]));                                          \
    const __m256i eight = _mm256_set1_epi32(8);                                                   \
    __m256i w3 = _mm256_add_epi32(_mm256_set1_epi32((int)c[3]), iota);                            \
    uint32_t used = (uint32_t)((len + 15) / 16);                                                  \
    for (; len >= 1024; len -= 1024, in += 1024, out += 1024) {                                   \
        __m256i a0 = w0, a1 = w1, a2 = w2, a3 = w3;                                               \
        __m256i b0 = w0, b1 = w1, b2 = w2, b3 = _mm256_add_epi32(w3, eight);                      \
        __m256i c0 = w0, c1 = w1, c2 = w2, c3 = _mm256_add_epi32(b3, eight);                      \
        __m256i d0 = w0, d1 = w1, d2 = w2, d3 = _mm256_add_epi32(c3, eight);                      \
        __m256i e0 = w0, e1 = w1, e2 = w2, e3 = _mm256_add_epi32(d3, eight);                      \
        __m256i f0 = w0, f1 = w1, f2 = w2, f3 = _mm256_add_epi32(e3, eight);                      \
        __m256i g0 = w0, g1 = w1, g2 = w2, g3 = _mm256_add_epi32(f3, eight);                      \
        __m256i h0 = w0, h1 = w1, h2 = w2, h3 = _mm256_add_epi32(g3, eight);                      \
        w3 = _mm256_add_epi32(h3, eight);                                                         \
        a3 = AD(a3), b3 = AD(b3), c3 = AD(c3), d3 = AD(d3);                                       \
        e3 = AD(e3), f3 = AD(f3), g3 = AD(g3), h3 = AD(h3);                                       \
        A_ROUNDS8(rkd);                                                                           \
        A_STORED(out, in, a0, a1, a2, a3, 1);                                                     \
        A_STORED(out + 128, in + 128, b0, b1, b2, b3, 1);                                         \
        A_STORED(out + 256, in + 256, c0, c1, c2, c3, 1);                                         \
        A_STORED(out + 384, in + 384, d0, d1, d2, d3, 1);                                         \
        A_STORED(out + 512, in + 512, e0, e1, e2, e3, 1);                                         \
        A_STORED(out + 640, in + 640, f0, f1, f2, f3, 1);                                         \
        A_STORED(out + 768, in + 768, g0, g1, g2, g3, 1);                                         \
        A_STORED(out + 896, in + 896, h0, h1, h2, h3, 1);                                         \
    }                                                                                             \
    for (; len >= 512; len -= 512, in += 512, out += 512) {                                       \
        __m256i a0 = w0, a1 = w1, a2 = w2, a3 = w3;                                               \
        __m256i b0 = w0, b1 = w1, b2 = w2, b3 = _mm256_add_epi32(w3, eight);                      \
        __m256i c0 = w0, c1 = w1, c2 = w2, c3 = _mm256_add_epi32(b3, eight);                      \
        __m256i d0 = w0, d1 = w1, d2 = w2, d3 = _mm256_add_epi32(c3, eight);                      \
        w3 = _mm256_add_epi32(d3, eight);                                                         \
        a3 = AD(a3), b3 = AD(b3), c3 = AD(c3), d3 = AD(d3);                                       \
        A_ROUNDS4(rkd);                                                                           \
        A_STORED(out, in, a0, a1, a2, a3, 1);                                                     \
        A_STORED(out + 128, in + 128, b0, b1, b2, b3, 1);                                         \
        A_STORED(out + 256, in + 256, c0, c1, c2, c3, 1);                                         \
        A_STORED(out + 384, in + 384, d0, d1, d2, d3, 1);                                         \
    }                                                                                             \
    while (len) {                                                                                 \
        size_t n = len < 128 ? len : 128;                                                         \
        uint8_t buf[128];                                                                         \
        const uint8_t *src = in;                                                                  \
        uint8_t *dst = out;                                                                       \
        if (n < 128) {                                                                            \
            memset(buf, 0, sizeof buf);                                                           \
            memcpy(buf, in, n);                                                                   \
            src = dst = buf;                                                                      \
        }                                                                                         \
        __m256i a0 = w0, a1 = w1, a2 = w2, a3 = w3;                                               \
        w3 = _mm256_add_epi32(w3, eight);                                                         \
        a3 = AD(a3);                                                                              \
        A_ROUNDS1(rkd);                                                                           \
        A_STORED(dst, src, a0, a1, a2, a3, 1);                                                    \
        if (n < 128) {                                                                            \
            memcpy(out, buf, n);                                                                  \
            memset(buf, 0, sizeof buf);                                                           \
            __asm__ volatile("" : : "r"(buf) : "memory");                                         \
        }                                                                                         \
        in += n, out += n, len -= n;                                                              \
    }                                                                                             \
    c[3] += used;                                                                                 \
    wipe_keys(rkd);                                                                               \
}                                                                                                 \
                                                                                                  \
TGT static void a##SFX##_ctr128(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,        \
                                uint8_t *out, size_t len)                                         \
{                                                                                                 \
    ctr128(a##SFX##_ctr32_words, rk, ctr, in, out, len);                                          \
}                                                                                                 \
                                                                                                  \
TGT static void a##SFX##_ctr32(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,         \
                               uint8_t *out, size_t len)                                          \
{                                                                                                 \
    ctr32(a##SFX##_ctr32_words, rk, ctr, in, out, len);                                           \
}

/* CBC encryption, one block at a time, with the AES-NI domain round: each vector holds the
 * same word in every lane, so only the low 128 bits go through AESENCLAST and ShiftRows needs no
 * compensation (the shuffle in A_ROUND is then a no-op on identical columns). */
TGT_AVX2_AESNI INLINE __m256i a_subbytes_lo(__m256i v, __m256i ainvsr)
{
    (void)ainvsr;
    return _mm256_castsi128_si256(
        _mm_aesenclast_si128(_mm256_castsi256_si128(v), _mm_setzero_si128()));
}

/* as A_ROUND, ordered for latency (see G1_ROUND) */
#define A1_ROUND(X0, X1, X2, X3, K)                                                           \
    do {                                                                                      \
        __m256i u_ = _mm256_xor_si256(_mm256_xor_si256(X1, X2), K);                           \
        __asm__("" : "+x"(u_));                                                               \
        __m256i z_ = a_subbytes_lo(_mm256_xor_si256(u_, X3), ainvsr);                         \
        __m256i l_ = _mm256_and_si256(z_, a0f);                                               \
        __m256i h_ = _mm256_and_si256(_mm256_srli_epi16(z_, 4), a0f);                         \
        __m256i p0_ = _mm256_xor_si256(_mm256_shuffle_epi8(ar0lo, l_),                        \
                                       _mm256_shuffle_epi8(ar0hi, h_));                       \
        __m256i p1_ = _mm256_xor_si256(_mm256_shuffle_epi8(ar1lo, l_),                        \
                                       _mm256_shuffle_epi8(ar1hi, h_));                       \
        __m256i p3_ = _mm256_xor_si256(_mm256_shuffle_epi8(ar3lo, l_),                        \
                                       _mm256_shuffle_epi8(ar3hi, h_));                       \
        __m256i q_ = _mm256_xor_si256(X0, p0_);                                               \
        __asm__("" : "+x"(q_));                                                               \
        __m256i r_ = _mm256_xor_si256(_mm256_shuffle_epi8(p1_, yr16),                         \
                                      _mm256_shuffle_epi8(p3_, yr24));                        \
        __asm__("" : "+x"(r_));                                                               \
        X0 = _mm256_xor_si256(_mm256_xor_si256(q_, _mm256_shuffle_epi8(p1_, yr8)), r_);       \
    } while (0)

TGT_AVX2_AESNI static void a1_cbc_enc(const uint32_t rk[32], uint8_t iv[16], const uint8_t *in,
                                      uint8_t *out, size_t nblocks)
{
    /* chaining value kept in the domain, as in g1_cbc_enc */
    A_CONSTS;
    (void)ywbs;
    uint32_t rkd[32];
    a_dom_keys(rk, rkd);
    __m256i s0 = AD(_mm256_set1_epi32((int)be32(iv)));
    __m256i s1 = AD(_mm256_set1_epi32((int)be32(iv + 4)));
    __m256i s2 = AD(_mm256_set1_epi32((int)be32(iv + 8)));
    __m256i s3 = AD(_mm256_set1_epi32((int)be32(iv + 12)));
    for (; nblocks; nblocks--, in += 16, out += 16) {
        __m256i x0 = _mm256_xor_si256(s0, AD(_mm256_set1_epi32((int)be32(in))));
        __m256i x1 = _mm256_xor_si256(s1, AD(_mm256_set1_epi32((int)be32(in + 4))));
        __m256i x2 = _mm256_xor_si256(s2, AD(_mm256_set1_epi32((int)be32(in + 8))));
        __m256i x3 = _mm256_xor_si256(s3, AD(_mm256_set1_epi32((int)be32(in + 12))));
        for (int r = 0; r < 32; r += 4) {
            A1_ROUND(x0, x1, x2, x3, _mm256_set1_epi32((int)rkd[r]));
            A1_ROUND(x1, x2, x3, x0, _mm256_set1_epi32((int)rkd[r + 1]));
            A1_ROUND(x2, x3, x0, x1, _mm256_set1_epi32((int)rkd[r + 2]));
            A1_ROUND(x3, x0, x1, x2, _mm256_set1_epi32((int)rkd[r + 3]));
        }
        s0 = x3, s1 = x2, s2 = x1, s3 = x0;
        put_be32(out, (uint32_t)_mm256_cvtsi256_si32(ADI(s0)));
        put_be32(out + 4, (uint32_t)_mm256_cvtsi256_si32(ADI(s1)));
        put_be32(out + 8, (uint32_t)_mm256_cvtsi256_si32(ADI(s2)));
        put_be32(out + 12, (uint32_t)_mm256_cvtsi256_si32(ADI(s3)));
    }
    put_be32(iv, (uint32_t)_mm256_cvtsi256_si32(ADI(s0)));
    put_be32(iv + 4, (uint32_t)_mm256_cvtsi256_si32(ADI(s1)));
    put_be32(iv + 8, (uint32_t)_mm256_cvtsi256_si32(ADI(s2)));
    put_be32(iv + 12, (uint32_t)_mm256_cvtsi256_si32(ADI(s3)));
    wipe_keys(rkd);
}

A_KERNELS(x, TGT_AVX2_AESNI)
#undef A_SUBBYTES
#define A_SUBBYTES a_subbytes_vaes
A_KERNELS(v, TGT_AVX2_VAES)
#undef A_SUBBYTES
#define A_SUBBYTES a_subbytes

/* ================================================================ single blocks */
/* CBC encryption and the key schedule are serial; these run one block (or word) at a time with
 * the vector S-boxes so that no table is indexed by key- or data-dependent values. Every lane
 * holds the same word (so AESENCLAST's ShiftRows, which only moves bytes between the
 * identical columns, needs no compensation). */

#define TGT_GFNI1 __attribute__((target("gfni,avx2")))
#define TGT_AESNI1 __attribute__((target("aes,avx2")))

#define X_CONSTS1                                                                                 \
    const __m128i r8 = _mm_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);       \
    const __m128i r16 = _mm_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);      \
    const __m128i r24 = _mm_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12)

TGT_GFNI1 INLINE __m128i g1_dom(__m128i v, long long m)
{
    return _mm_gf2p8affine_epi64_epi8(v, _mm_set1_epi64x(m), 0);
}

/* pre-affine domain, as Z_ROUND */
/* pre-affine domain, as Z_ROUND; ordered for latency (CBC encryption is one serial chain):
 * only the newest word X3 and the inversion outputs are on the critical path (the empty asm
 * statements keep the compiler from reassociating the XORs) */
#define G1_ROUND(X0, X1, X2, X3, K)                                                           \
    do {                                                                                      \
        __m128i u_ = _mm_xor_si128(_mm_xor_si128(X1, X2), K);                                 \
        __asm__("" : "+x"(u_));                                                               \
        __m128i t_ = _mm_xor_si128(u_, X3);                                                   \
        __m128i p0_ = _mm_gf2p8affineinv_epi64_epi8(                                          \
            t_, _mm_set1_epi64x((long long)SM4_GFNI_POST_D0_MATRIX), SM4_GFNI_POST_D0_CONST); \
        __m128i p1_ = _mm_gf2p8affineinv_epi64_epi8(                                          \
            t_, _mm_set1_epi64x((long long)SM4_GFNI_POST_D1_MATRIX), SM4_GFNI_POST_D1_CONST); \
        __m128i p3_ = _mm_gf2p8affineinv_epi64_epi8(                                          \
            t_, _mm_set1_epi64x((long long)SM4_GFNI_POST_D3_MATRIX), SM4_GFNI_POST_D3_CONST); \
        __m128i q_ = _mm_xor_si128(X0, p0_);                                                  \
        __asm__("" : "+x"(q_));                                                               \
        __m128i r_ = _mm_xor_si128(_mm_shuffle_epi8(p1_, r16), _mm_shuffle_epi8(p3_, r24));   \
        __asm__("" : "+x"(r_));                                                               \
        X0 = _mm_xor_si128(_mm_xor_si128(q_, _mm_shuffle_epi8(p1_, r8)), r_);                 \
    } while (0)

TGT_AESNI1 INLINE __m128i a1_affine(__m128i v, __m128i lo, __m128i hi)
{
    const __m128i m = _mm_set1_epi8(0x0f);
    return _mm_xor_si128(_mm_shuffle_epi8(lo, _mm_and_si128(v, m)),
                         _mm_shuffle_epi8(hi, _mm_and_si128(_mm_srli_epi16(v, 4), m)));
}

TGT_AESNI1 INLINE __m128i a1_sbox(__m128i v)
{
    v = a1_affine(v, _mm_setr_epi8(SM4_AESNI_PRE_LO), _mm_setr_epi8(SM4_AESNI_PRE_HI));
    v = _mm_aesenclast_si128(v, _mm_setzero_si128());
    return a1_affine(v, _mm_setr_epi8(SM4_AESNI_POST_LO), _mm_setr_epi8(SM4_AESNI_POST_HI));
}


#define G1_TO(v) g1_dom(v, (long long)SM4_GFNI_DOMAIN_MATRIX)
#define G1_FROM(v) g1_dom(v, (long long)SM4_GFNI_DOMAIN_INV_MATRIX)

TGT_GFNI1 static void g1_cbc_enc(const uint32_t rk[32], uint8_t iv[16], const uint8_t *in,
                                 uint8_t *out, size_t nblocks)
{
    /* The chaining value stays in the domain: D(P ^ C) = D(P) ^ D(C), and D(C) is the cipher
     * state itself, so the only work between two blocks is one XOR per word. */
    X_CONSTS1;
    uint32_t rkd[32];
    dom_keys(rk, rkd);
    __m128i s0 = G1_TO(_mm_set1_epi32((int)be32(iv)));
    __m128i s1 = G1_TO(_mm_set1_epi32((int)be32(iv + 4)));
    __m128i s2 = G1_TO(_mm_set1_epi32((int)be32(iv + 8)));
    __m128i s3 = G1_TO(_mm_set1_epi32((int)be32(iv + 12)));
    for (; nblocks; nblocks--, in += 16, out += 16) {
        __m128i x0 = _mm_xor_si128(s0, G1_TO(_mm_set1_epi32((int)be32(in))));
        __m128i x1 = _mm_xor_si128(s1, G1_TO(_mm_set1_epi32((int)be32(in + 4))));
        __m128i x2 = _mm_xor_si128(s2, G1_TO(_mm_set1_epi32((int)be32(in + 8))));
        __m128i x3 = _mm_xor_si128(s3, G1_TO(_mm_set1_epi32((int)be32(in + 12))));
        for (int r = 0; r < 32; r += 4) {
            G1_ROUND(x0, x1, x2, x3, _mm_set1_epi32((int)rkd[r]));
            G1_ROUND(x1, x2, x3, x0, _mm_set1_epi32((int)rkd[r + 1]));
            G1_ROUND(x2, x3, x0, x1, _mm_set1_epi32((int)rkd[r + 2]));
            G1_ROUND(x3, x0, x1, x2, _mm_set1_epi32((int)rkd[r + 3]));
        }
        s0 = x3, s1 = x2, s2 = x1, s3 = x0;
        put_be32(out, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s0)));
        put_be32(out + 4, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s1)));
        put_be32(out + 8, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s2)));
        put_be32(out + 12, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s3)));
    }
    put_be32(iv, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s0)));
    put_be32(iv + 4, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s1)));
    put_be32(iv + 8, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s2)));
    put_be32(iv + 12, (uint32_t)_mm_cvtsi128_si32(G1_FROM(s3)));
    wipe_keys(rkd);
}


TGT_GFNI1 static uint32_t g1_tau(uint32_t x)
{
    __m128i v = _mm_gf2p8affine_epi64_epi8(_mm_cvtsi32_si128((int)x),
                                           _mm_set1_epi64x(SM4_GFNI_PRE_MATRIX),
                                           SM4_GFNI_PRE_CONST);
    v = _mm_gf2p8affineinv_epi64_epi8(v, _mm_set1_epi64x((long long)SM4_GFNI_POST_MATRIX),
                                      SM4_GFNI_POST_CONST);
    return (uint32_t)_mm_cvtsi128_si32(v);
}

TGT_AESNI1 static uint32_t a1_tau(uint32_t x)
{
    return (uint32_t)_mm_cvtsi128_si32(a1_sbox(_mm_set1_epi32((int)x)));
}

int hsm_sm4_x86_tau(uint32_t in, uint32_t *out)
{
    unsigned f = hsm_gm_cpu_features();
    if ((f & (HSM_CPU_GFNI | HSM_CPU_AVX2)) == (HSM_CPU_GFNI | HSM_CPU_AVX2)) {
        *out = g1_tau(in);
        return 0;
    }
    if ((f & (HSM_CPU_AESNI | HSM_CPU_AVX2)) == (HSM_CPU_AESNI | HSM_CPU_AVX2)) {
        *out = a1_tau(in);
        return 0;
    }
    return -1;
}

/* ================================================================ self-test */

static void selftest_words(uint32_t w[256])
{
    for (uint32_t i = 0; i < 256; i++)
        w[i] = (i << 24) | (((i + 1) & 255) << 16) | (((i + 7) & 255) << 8) | ((i + 100) & 255);
}

/* T(x) through a domain round: X1 = D(x), others zero, key D(0) ^ 0x3e (dom_keys of 0) */
TGT_AVX512 static int selftest_avx512(void)
{
    Z_CONSTS;
    (void)zwbs;
    uint32_t w[256], got[256], zk[32] = {0}, kd[32];
    dom_keys(zk, kd);
    selftest_words(w);
    for (int i = 0; i < 256; i += 16) {
        __m512i x0 = _mm512_setzero_si512(), x1 = ZD(_mm512_loadu_si512(w + i)), x2 = x0, x3 = x0;
        Z_ROUND(x0, x1, x2, x3, _mm512_set1_epi32((int)kd[0]));
        _mm512_storeu_si512(got + i, ZDI(x0));
    }
    for (int i = 0; i < 256; i++)
        if (got[i] != hsm_sm4_portable_t(w[i]))
            return 1;
    return 0;
}

TGT_AVX2 static int selftest_avx2(void)
{
    Y_CONSTS;
    (void)ywbs;
    uint32_t w[256], got[256], zk[32] = {0}, kd[32];
    dom_keys(zk, kd);
    selftest_words(w);
    for (int i = 0; i < 256; i += 8) {
        __m256i x0 = _mm256_setzero_si256();
        __m256i x1 = YD(_mm256_loadu_si256((const __m256i *)(w + i)));
        __m256i x2 = x0, x3 = x0;
        Y_ROUND(x0, x1, x2, x3, _mm256_set1_epi32((int)kd[0]));
        _mm256_storeu_si256((__m256i *)(got + i), YDI(x0));
    }
    for (int i = 0; i < 256; i++)
        if (got[i] != hsm_sm4_portable_t(w[i]))
            return 1;
    return 0;
}

TGT_AVX2_AESNI static int selftest_aesni(void)
{
    A_CONSTS;
    (void)ywbs;
    uint32_t w[256], got[256], zk[32] = {0}, kd[32];
    a_dom_keys(zk, kd);
    selftest_words(w);
    for (int i = 0; i < 256; i += 8) {
        __m256i x0 = _mm256_setzero_si256();
        __m256i x1 = AD(_mm256_loadu_si256((const __m256i *)(w + i)));
        __m256i x2 = x0, x3 = x0;
        A_ROUND(x0, x1, x2, x3, _mm256_set1_epi32((int)kd[0]));
        _mm256_storeu_si256((__m256i *)(got + i), ADI(x0));
    }
    for (int i = 0; i < 256; i++)
        if (got[i] != hsm_sm4_portable_t(w[i]))
            return 1;
    return 0;
}

TGT_AVX2_VAES static int selftest_vaes(void)
{
#undef A_SUBBYTES
#define A_SUBBYTES a_subbytes_vaes
    A_CONSTS;
    (void)ywbs;
    uint32_t w[256], got[256], zk[32] = {0}, kd[32];
    a_dom_keys(zk, kd);
    selftest_words(w);
    for (int i = 0; i < 256; i += 8) {
        __m256i x0 = _mm256_setzero_si256();
        __m256i x1 = AD(_mm256_loadu_si256((const __m256i *)(w + i)));
        __m256i x2 = x0, x3 = x0;
        A_ROUND(x0, x1, x2, x3, _mm256_set1_epi32((int)kd[0]));
        _mm256_storeu_si256((__m256i *)(got + i), ADI(x0));
    }
    for (int i = 0; i < 256; i++)
        if (got[i] != hsm_sm4_portable_t(w[i]))
            return 1;
    return 0;
}
#undef A_SUBBYTES
#define A_SUBBYTES a_subbytes

int hsm_sm4_x86_selftest(void)
{
    int fail = 0;
    if (hsm_gm_impl_available(HSM_GM_IMPL_AVX512) && selftest_avx512())
        fail |= 1;
    if ((hsm_gm_cpu_features() & (HSM_CPU_AVX2 | HSM_CPU_GFNI)) == (HSM_CPU_AVX2 | HSM_CPU_GFNI) &&
        selftest_avx2())
        fail |= 2;
    unsigned f = hsm_gm_cpu_features();
    if (hsm_gm_impl_available(HSM_GM_IMPL_AVX2_AESNI) && selftest_aesni())
        fail |= 4;
    if (hsm_gm_impl_available(HSM_GM_IMPL_AVX2_AESNI) && (f & HSM_CPU_VAES) && selftest_vaes())
        fail |= 32;
    uint32_t w[256];
    selftest_words(w);
    for (int i = 0; i < 256; i++) {
        uint32_t want = hsm_sm4_portable_tau(w[i]);
        if ((f & (HSM_CPU_GFNI | HSM_CPU_AVX2)) == (HSM_CPU_GFNI | HSM_CPU_AVX2) &&
            g1_tau(w[i]) != want)
            fail |= 8;
        if ((f & (HSM_CPU_AESNI | HSM_CPU_AVX2)) == (HSM_CPU_AESNI | HSM_CPU_AVX2) &&
            a1_tau(w[i]) != want)
            fail |= 16;
    }
    return fail;
}

/* ================================================================ counter wrappers */


TGT_AVX512 static void z_ctr128(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,
                                uint8_t *out, size_t len)
{
    ctr128(z_ctr32_words, rk, ctr, in, out, len);
}
TGT_AVX512 static void z_ctr32(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,
                               uint8_t *out, size_t len)
{
    ctr32(z_ctr32_words, rk, ctr, in, out, len);
}
TGT_AVX2 static void y_ctr128(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,
                              uint8_t *out, size_t len)
{
    ctr128(y_ctr32_words, rk, ctr, in, out, len);
}
TGT_AVX2 static void y_ctr32(const uint32_t rk[32], uint8_t ctr[16], const uint8_t *in,
                             uint8_t *out, size_t len)
{
    ctr32(y_ctr32_words, rk, ctr, in, out, len);
}


const hsm_sm4_impl_ops hsm_sm4_avx2_aesni_ops = {ax_ecb, ax_ctr128, ax_ctr32, ghash_clmul,
                                                  a1_cbc_enc};
const hsm_sm4_impl_ops hsm_sm4_avx2_vaes_ops = {av_ecb, av_ctr128, av_ctr32, ghash_vpclmul256,
                                                a1_cbc_enc};
const hsm_sm4_impl_ops hsm_sm4_avx2_ops = {y_ecb, y_ctr128, y_ctr32, ghash_clmul, g1_cbc_enc};
const hsm_sm4_impl_ops hsm_sm4_avx2_vpclmul_ops = {y_ecb, y_ctr128, y_ctr32, ghash_vpclmul256,
                                                   g1_cbc_enc};
const hsm_sm4_impl_ops hsm_sm4_avx512_ops = {z_ecb, z_ctr128, z_ctr32, ghash_vpclmul,
                                             g1_cbc_enc};

#else
typedef int hsm_sm4_x86_unused;
#endif
