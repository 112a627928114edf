/* Checks the vectorised SM4 S-box + L of every kernel family this CPU can run on all 256 byte
 * values in every byte position (real GFNI / AES-NI instructions, not an emulation) against
 * the portable T-tables, and spot-checks the T-tables against S-box entries of the standard.
 *   gcc -O2 -o /tmp/sbox_selftest native/tests_c/sbox_selftest.c native/sm4*.c native/gm_cpu.c
 */
#include <stdio.h>

#include "../gm_cpu.h"

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

int main(void)
{
    /* S-box spot values from GB/T 32907 table (row 0 and the last entry) */
    static const uint8_t s0[4] = {0xd6, 0x90, 0xe9, 0xfe};
    int fail = 0;
    for (int b = 0; b < 4; b++) {
        uint32_t s = ((uint32_t)s0[b] << 24) | 0x00d6d6d6u; /* S(0) = 0xd6 in the other bytes */
        uint32_t l = s ^ rol(s, 2) ^ rol(s, 10) ^ rol(s, 18) ^ rol(s, 24);
        if (hsm_sm4_portable_t((uint32_t)b << 24) != l)
            fail = 1;
    }
    {
        uint32_t s = (0x48u << 24) | 0x00d6d6d6u;
        if (hsm_sm4_portable_t(0xffu << 24) != (s ^ rol(s, 2) ^ rol(s, 10) ^ rol(s, 18) ^ rol(s, 24)))
            fail = 1;
    }
    printf("portable T-table spot check: %s\n", fail ? "FAIL" : "ok");
#if defined(HSM_GM_X86)
    int v = hsm_sm4_x86_selftest();
    printf("vector S-box families (AVX-512 GFNI / AVX2 GFNI / AVX2 AES-NI; only those the CPU "
           "has are run): %s (mask %d)\n",
           v ? "FAIL" : "ok", v);
    fail |= v;
#endif
    return fail ? 1 : 0;
}
