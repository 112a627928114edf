/* CPU feature detection and implementation selection for the SM algorithms. */
#include "gm_cpu.h"

#include <stdlib.h>
#include <string.h>

#if defined(HSM_GM_X86)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static unsigned detect_features(void)
{
    unsigned a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    int pclmul = (c >> 1) & 1, aes = (c >> 25) & 1;
    if (!osxsave || !avx)
        return 0; /* no VEX state: nothing we use is available */
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6)
        return 0;
    int zmm_ok = (xcr0 & 0xE6) == 0xE6;
    unsigned b7 = 0, c7 = 0;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b7, c7, d);
    }
    if (pclmul)
        f |= HSM_CPU_PCLMUL;
    if (aes)
        f |= HSM_CPU_AESNI;
    if ((b7 >> 5) & 1)
        f |= HSM_CPU_AVX2;
    if ((c7 >> 8) & 1)
        f |= HSM_CPU_GFNI;
    if ((c7 >> 9) & 1)
        f |= HSM_CPU_VAES;
    if ((c7 >> 10) & 1)
        f |= HSM_CPU_VPCLMUL;
    /* F (16), DQ (17), BW (30), VL (31) */
    if (zmm_ok && ((b7 >> 16) & 1) && ((b7 >> 17) & 1) && ((b7 >> 30) & 1) && ((b7 >> 31) & 1))
        f |= HSM_CPU_AVX512;
    return f;
}
#else
static unsigned detect_features(void) { return 0; }
#endif

static int g_features = -1; /* computed once; the computation is idempotent */
static int g_impl = -1;
static unsigned g_hidden = 0; /* hsm_gm_test_hide_features */

unsigned hsm_gm_cpu_features(void)
{
    int f = __atomic_load_n(&g_features, __ATOMIC_ACQUIRE);
    if (f < 0) {
        f = (int)detect_features();
        __atomic_store_n(&g_features, f, __ATOMIC_RELEASE);
    }
    return (unsigned)f & ~__atomic_load_n(&g_hidden, __ATOMIC_ACQUIRE);
}

void hsm_gm_test_hide_features(unsigned mask)
{
    __atomic_store_n(&g_hidden, mask, __ATOMIC_RELEASE);
    int impl = __atomic_load_n(&g_impl, __ATOMIC_ACQUIRE);
    if (impl >= 0 && !hsm_gm_impl_available(impl))
        __atomic_store_n(&g_impl, HSM_GM_IMPL_PORTABLE, __ATOMIC_RELEASE);
}

int hsm_gm_impl_available(int impl)
{
    unsigned f = hsm_gm_cpu_features();
    const unsigned base = HSM_CPU_AVX2 | HSM_CPU_PCLMUL;
    const unsigned avx512 = base | HSM_CPU_GFNI | HSM_CPU_AVX512 | HSM_CPU_VPCLMUL;
    switch (impl) {
    case HSM_GM_IMPL_PORTABLE:
        return 1;
    case HSM_GM_IMPL_AVX2:
        return (f & base) == base && (f & (HSM_CPU_GFNI | HSM_CPU_AESNI)) != 0;
    case HSM_GM_IMPL_AVX2_AESNI:
        return (f & (base | HSM_CPU_AESNI)) == (base | HSM_CPU_AESNI);
    case HSM_GM_IMPL_AVX512:
        return (f & avx512) == avx512;
    default:
        return 0;
    }
}

int hsm_gm_best_impl(void)
{
    if (hsm_gm_impl_available(HSM_GM_IMPL_AVX512))
        return HSM_GM_IMPL_AVX512;
    if (hsm_gm_impl_available(HSM_GM_IMPL_AVX2))
        return HSM_GM_IMPL_AVX2;
    return HSM_GM_IMPL_PORTABLE;
}

static int env_forces_portable(void)
{
    const char *v = getenv("HSMPOOL_GM_PORTABLE");
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

int hsm_gm_impl(void)
{
    int impl = __atomic_load_n(&g_impl, __ATOMIC_ACQUIRE);
    if (impl >= 0)
        return impl;
    int chosen = env_forces_portable() ? HSM_GM_IMPL_PORTABLE : hsm_gm_best_impl();
    int expected = -1;
    /* First caller wins; a concurrent hsm_gm_set_impl is never overwritten. */
    if (__atomic_compare_exchange_n(&g_impl, &expected, chosen, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        return chosen;
    return expected;
}

int hsm_gm_set_impl(int impl)
{
    if (!hsm_gm_impl_available(impl))
        return -1;
    __atomic_store_n(&g_impl, impl, __ATOMIC_RELEASE);
    return 0;
}
