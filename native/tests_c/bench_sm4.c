/* Throughput of every SM4 implementation the CPU has (C level, no Python overhead).
 * Reports the best of many timed calls, which filters out noise from other processes.
 *   gcc -O2 -o /tmp/bench_sm4 native/tests_c/bench_sm4.c native/sm4*.c native/gm_cpu.c
 * With -DWITH_OPENSSL ... -lcrypto it also times the system OpenSSL's SM4 (EVP) the same way
 * and prints the ratios.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../gm_cpu.h"
#include "../sm4.h"

#ifdef WITH_OPENSSL
#include <openssl/evp.h>
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum { ECB, CTR, GCM_ENC, GCM_DEC, CBC_ENC, GCM_SETKEY, CBC_DEC };
static const char *names[] = {"ecb", "ctr", "gcm-enc", "gcm-dec", "cbc-enc", "gcm-setkey", "cbc-dec"};

static double best_time(int what, const hsm_sm4_key *ks, const hsm_sm4_gcm_key *gk,
                        const uint8_t *in, uint8_t *out, size_t len, int reps)
{
    uint8_t ctr[16] = {0}, nonce[12] = {1}, tag[16];
    double best = 1e9;
    if (what == GCM_DEC)
        hsm_sm4_gcm_encrypt(gk, nonce, 12, NULL, 0, in, len, out, tag, 16);
    for (int r = 0; r < reps; r++) {
        double t = now();
        for (int i = 0; i < 8; i++) {
            switch (what) {
            case ECB:
                hsm_sm4_ecb_encrypt(ks, in, out, len / 16);
                break;
            case CBC_ENC:
                hsm_sm4_cbc_encrypt(ks, ctr, in, out, len / 16);
                break;
            case CBC_DEC:
                hsm_sm4_cbc_decrypt(ks, ctr, in, out, len / 16);
                break;
            case GCM_SETKEY: {
                static hsm_sm4_gcm_key k2;
                hsm_sm4_gcm_set_key(&k2, in);
                break;
            }
            case CTR:
                hsm_sm4_ctr(ks, ctr, in, out, len);
                break;
            case GCM_ENC:
                hsm_sm4_gcm_encrypt(gk, nonce, 12, NULL, 0, in, len, out, tag, 16);
                break;
            case GCM_DEC:
                if (hsm_sm4_gcm_decrypt(gk, nonce, 12, NULL, 0, out, len, tag, 16, (uint8_t *)in)) {
                    fprintf(stderr, "tag mismatch in benchmark\n");
                    exit(1);
                }
                break;
            }
        }
        t = (now() - t) / 8;
        if (t < best)
            best = t;
    }
    return best;
}

#ifdef WITH_OPENSSL
/* OpenSSL EVP SM4 in mode (ECB/CTR/GCM), new context per call like a per-message API */
static double openssl_time(int what, const uint8_t *key, const uint8_t *in, uint8_t *out,
                           size_t len, int reps)
{
    const char *name = what == ECB ? "SM4-ECB" : what == CTR ? "SM4-CTR" : "SM4-GCM";
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, name, NULL);
    if (!c)
        return 0;
    uint8_t iv[16] = {0}, tag[16];
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t = now();
        for (int i = 0; i < 8; i++) {
            EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
            int n = 0;
            EVP_EncryptInit_ex2(x, c, key, what == ECB ? NULL : iv, NULL);
            EVP_CIPHER_CTX_set_padding(x, 0);
            EVP_EncryptUpdate(x, out, &n, in, (int)len);
            EVP_EncryptFinal_ex(x, out + n, &n);
            if (what == GCM_ENC)
                EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag);
            EVP_CIPHER_CTX_free(x);
        }
        t = (now() - t) / 8;
        if (t < best)
            best = t;
    }
    EVP_CIPHER_free(c);
    return best;
}
#endif

int main(int argc, char **argv)
{
    size_t sizes[] = {16384, 32};
    int reps = argc > 1 ? atoi(argv[1]) : 300;
    static uint8_t in[16384], out[16384], key[16] = {1, 2, 3};
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 31 + 7);
    hsm_sm4_key ks;
    static hsm_sm4_gcm_key gk;
    hsm_sm4_set_key(&ks, key);
    hsm_sm4_gcm_set_key(&gk, key);
#ifdef WITH_OPENSSL
    double ossl[2][4] = {{0}};
    for (size_t si = 0; si < 2; si++) {
        printf("openssl size %5zu:", sizes[si]);
        for (int w = 0; w <= GCM_ENC; w++) {
            ossl[si][w] = openssl_time(w, key, in, out, sizes[si], reps);
            if (ossl[si][w] == 0)
                printf("  %s n/a", names[w]);
            else if (sizes[si] >= 1024)
                printf("  %s %7.1f MB/s", names[w], sizes[si] / ossl[si][w] / 1e6);
            else
                printf("  %s %6.1f ns", names[w], ossl[si][w] * 1e9);
        }
        printf("\n");
    }
#endif
    for (int impl = 0; impl <= HSM_GM_IMPL_AVX2_AESNI; impl++) {
        if (hsm_gm_set_impl(impl) != 0)
            continue;
        for (size_t s = 0; s < 2; s++) {
            printf("impl %d size %5zu:", impl, sizes[s]);
            for (int w = 0; w < 7; w++) {
                if ((w == GCM_DEC && sizes[s] != 16384) || (w == GCM_SETKEY && sizes[s] != 32))
                    continue;
                double t = best_time(w, &ks, &gk, in, out, sizes[s], reps);
                if (sizes[s] >= 1024 && w != GCM_SETKEY)
                    printf("  %s %7.1f MB/s", names[w], sizes[s] / t / 1e6);
                else
                    printf("  %s %6.1f ns", names[w], t * 1e9);
#ifdef WITH_OPENSSL
                if (w <= GCM_ENC && ossl[s][w] > 0)
                    printf(" (%.1fx)", ossl[s][w] / t);
#endif
            }
            printf("\n");
        }
    }
    return 0;
}
