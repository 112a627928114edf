/* Differential test of every SM4 implementation the CPU has against the portable one, on
 * exact-size, misaligned heap buffers (AddressSanitizer catches any access past the end),
 * out of place and in place, for all lengths 0..600 and some large ones; and again with CPU
 * features hidden (hsm_gm_test_hide_features) so the fallback kernels run too (AES-NI S-box
 * with and without VAES, key schedule S-box via GFNI, AES-NI or tables).
 *   gcc -O1 -g -fsanitize=address,undefined -o /tmp/diff_sm4 native/tests_c/diff_sm4.c \
 *       native/sm4*.c native/gm_cpu.c && /tmp/diff_sm4
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gm_cpu.h"
#include "../sm4.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint8_t rnd8(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint8_t)(rng >> 24);
}
static void fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = rnd8();
}

/* run one operation with implementation impl on a fresh exact-size copy of src */
enum { ECB_E, ECB_D, CBC_E, CBC_D, CTR, GCM_E, GCM_D, NOPS };
static const char *opname[] = {"ecb-enc", "ecb-dec", "cbc-enc", "cbc-dec", "ctr", "gcm-enc",
                               "gcm-dec"};

static int run(int impl, int op, int inplace, const hsm_sm4_key *ks, const hsm_sm4_gcm_key *gk,
               const uint8_t *src, size_t len, const uint8_t iv[16], uint8_t *result,
               uint8_t state[16])
{
    hsm_gm_set_impl(impl);
    /* misaligned by 0..3 bytes; the buffers still end exactly at the end of the allocation */
    size_t off = len % 4;
    uint8_t *in_base = malloc(len + off + 1), *out_base = inplace ? in_base : malloc(len + off + 1);
    uint8_t *in = in_base + off + (len == 0), *out = out_base + off + (len == 0);
    memcpy(in, src, len);
    uint8_t st[16];
    memcpy(st, iv, 16);
    int rc = 0;
    size_t nb = len / 16;
    switch (op) {
    case ECB_E:
        hsm_sm4_ecb_encrypt(ks, in, out, nb);
        break;
    case ECB_D:
        hsm_sm4_ecb_decrypt(ks, in, out, nb);
        break;
    case CBC_E:
        hsm_sm4_cbc_encrypt(ks, st, in, out, nb);
        break;
    case CBC_D:
        hsm_sm4_cbc_decrypt(ks, st, in, out, nb);
        break;
    case CTR:
        hsm_sm4_ctr(ks, st, in, out, len);
        break;
    case GCM_E: {
        uint8_t *aad = malloc(len % 37 + 1);
        for (size_t i = 0; i < len % 37; i++)
            aad[i] = (uint8_t)(i * 7 + len);
        hsm_sm4_gcm_encrypt(gk, iv, 12, aad, len % 37, in, len, out, st, 16);
        free(aad);
        break;
    }
    case GCM_D: {
        /* decrypt with a tag made by the portable encryption of this exact input */
        uint8_t tag[16], *tmp = malloc(len ? len : 1);
        hsm_gm_set_impl(HSM_GM_IMPL_PORTABLE);
        hsm_sm4_gcm_encrypt(gk, iv, 12, NULL, 0, src, len, tmp, tag, 16);
        hsm_gm_set_impl(impl);
        memcpy(in, tmp, len);
        rc = hsm_sm4_gcm_decrypt(gk, iv, 12, NULL, 0, in, len, tag, 16, out);
        memcpy(st, tag, 16);
        free(tmp);
        break;
    }
    }
    if (op == ECB_E || op == ECB_D || op == CBC_E || op == CBC_D)
        len = nb * 16;
    memcpy(result, out, len);
    memcpy(state, st, 16);
    if (!inplace)
        free(out_base);
    free(in_base);
    return rc;
}

static int one_config(unsigned hide)
{
    uint8_t key[16];
    rng = 0x9e3779b97f4a7c15ull;
    fill(key, 16);
    hsm_gm_test_hide_features(hide);
    hsm_sm4_key ks;
    static hsm_sm4_gcm_key gk;
    hsm_sm4_set_key(&ks, key);
    hsm_sm4_gcm_set_key(&gk, key);
    size_t lens[700], nl = 0;
    for (size_t l = 0; l <= 600; l++)
        lens[nl++] = l;
    size_t big[] = {1023, 1024, 1025, 2047, 2048, 2049, 4096 + 15, 16384, 16384 + 255, 33000};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        lens[nl++] = big[i];
    int failures = 0, impls = 0;
    for (size_t li = 0; li < nl; li++) {
        size_t len = lens[li];
        uint8_t *src = malloc(len ? len : 1), *ref = malloc(len + 16), *got = malloc(len + 16);
        fill(src, len);
        uint8_t iv[16], rs[16], gs[16];
        fill(iv, 16);
        if (len % 3 == 0)
            memset(iv + 12, 0xff, 4); /* counter wraps inside the message */
        for (int op = 0; op < NOPS; op++) {
            int rrc = run(HSM_GM_IMPL_PORTABLE, op, 0, &ks, &gk, src, len, iv, ref, rs);
            impls = 0;
            for (int impl = 1; impl <= HSM_GM_IMPL_AVX2_AESNI; impl++) {
                if (!hsm_gm_impl_available(impl))
                    continue;
                impls++;
                for (int inplace = 0; inplace < 2; inplace++) {
                    int grc = run(impl, op, inplace, &ks, &gk, src, len, iv, got, gs);
                    size_t cmp = (op <= CBC_D) ? len / 16 * 16 : len;
                    if (grc != rrc || memcmp(ref, got, cmp) || memcmp(rs, gs, 16)) {
                        if (failures++ < 20)
                            printf("FAIL %s impl %d len %zu inplace %d hidden %#x\n", opname[op],
                                   impl, len, inplace, hide);
                    }
                }
            }
        }
        free(src), free(ref), free(got);
    }
    printf("hidden features %#04x: %d vector implementations x %zu lengths x %d operations: %s\n",
           hide, impls, nl, NOPS, failures ? "FAILED" : "agree with portable");
    return failures;
}

int main(void)
{
    /* the key schedule must not depend on which S-box computed it */
    uint8_t key[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                       0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10};
    hsm_sm4_key k_all, k_aes, k_tab;
    hsm_sm4_set_key(&k_all, key);
    hsm_gm_test_hide_features(HSM_CPU_GFNI);
    hsm_sm4_set_key(&k_aes, key);
    hsm_gm_test_hide_features(~0u);
    hsm_sm4_set_key(&k_tab, key);
    int failures = memcmp(&k_all, &k_tab, sizeof k_all) || memcmp(&k_aes, &k_tab, sizeof k_aes);
    printf("key schedule (GFNI / AES-NI / table S-box): %s\n", failures ? "FAILED" : "same");
    const unsigned hide[] = {0,
                             HSM_CPU_VAES,
                             HSM_CPU_VPCLMUL,
                             HSM_CPU_GFNI,
                             HSM_CPU_GFNI | HSM_CPU_VAES,
                             HSM_CPU_AVX512,
                             HSM_CPU_AVX512 | HSM_CPU_GFNI | HSM_CPU_VAES | HSM_CPU_VPCLMUL};
    for (size_t i = 0; i < sizeof hide / sizeof hide[0]; i++)
        failures += one_config(hide[i]);
    hsm_gm_test_hide_features(0);
    printf("%s\n", failures ? "FAILED" : "all ok");
    return failures != 0;
}
