/* SM4 vectorised kernels for x86-64 (placeholder: forwards to the portable code). */
#if defined(__x86_64__)
#include "gm_cpu.h"

void hsm_ghash_clmul_init(uint8_t *htab, const uint8_t h[16])
{
    (void)htab;
    (void)h;
}

static void fwd_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t n)
{
    hsm_sm4_portable_ops.ecb(rk, in, out, n);
}
static void fwd_ctr128(const uint32_t rk[32], uint8_t c[16], const uint8_t *in, uint8_t *out,
                       size_t len)
{
    hsm_sm4_portable_ops.ctr128(rk, c, in, out, len);
}
static void fwd_ctr32(const uint32_t rk[32], uint8_t c[16], const uint8_t *in, uint8_t *out,
                      size_t len)
{
    hsm_sm4_portable_ops.ctr32(rk, c, in, out, len);
}
static void fwd_ghash(const uint8_t *htab, uint8_t y[16], const uint8_t *in, size_t n)
{
    hsm_sm4_portable_ops.ghash(htab, y, in, n);
}
const hsm_sm4_impl_ops hsm_sm4_avx2_ops = {fwd_ecb, fwd_ctr128, fwd_ctr32, fwd_ghash};
const hsm_sm4_impl_ops hsm_sm4_avx512_ops = {fwd_ecb, fwd_ctr128, fwd_ctr32, fwd_ghash};
#else
typedef int hsm_sm4_x86_unused;
#endif
