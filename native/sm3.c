/* SM3 (GB/T 32905-2016) and HMAC-SM3.
 *
 * The compression function is fully unrolled: the eight working variables are renamed from
 * round to round instead of being shifted, and the 68-word message expansion is computed on
 * the fly in a 16-word ring (W[j+4] is produced just before round j needs it).
 */
#include "sm3.h"

#include <string.h>

#define ROTL(x, n) (((x) << ((n) & 31)) | ((x) >> ((32 - ((n) & 31)) & 31)))

#define P0(x) ((x) ^ ROTL((x), 9) ^ ROTL((x), 17))
#define P1(x) ((x) ^ ROTL((x), 15) ^ ROTL((x), 23))

#define FF0(x, y, z) ((x) ^ (y) ^ (z))
#define GG0(x, y, z) ((x) ^ (y) ^ (z))
#define FF1(x, y, z) (((x) & (y)) | (((x) | (y)) & (z)))
#define GG1(x, y, z) ((((y) ^ (z)) & (x)) ^ (z))

#define T0 0x79cc4519u
#define T1 0x7a879d8au

static inline uint32_t load_be32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

static inline void store_be32(uint8_t *p, uint32_t v) {
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
}

/* W[i] for i >= 16, written over W[i - 16] in the ring. */
#define EXPAND(i)                                                                       \
    (w[(i) & 15] = P1(w[(i) & 15] ^ w[((i) - 9) & 15] ^ ROTL(w[((i) - 3) & 15], 15)) ^ \
                   ROTL(w[((i) - 13) & 15], 7) ^ w[((i) - 6) & 15])

/* One round j. On return D holds the new A, H the new E, B and F are rotated in place; the
 * caller renames (A,B,C,D,E,F,G,H) -> (D,A,B,C,H,E,F,G) for the next round. */
#define ROUND(FF, GG, T, j, A, B, C, D, E, F, G, H, wj, wj4)     \
    do {                                                         \
        uint32_t a12 = ROTL(A, 12);                              \
        uint32_t ss1 = ROTL(a12 + E + ROTL(T, (j) % 32), 7);     \
        uint32_t ss2 = ss1 ^ a12;                                \
        uint32_t tt1 = FF(A, B, C) + D + ss2 + ((wj) ^ (wj4));   \
        uint32_t tt2 = GG(E, F, G) + H + ss1 + (wj);             \
        B = ROTL(B, 9);                                          \
        F = ROTL(F, 19);                                         \
        D = tt1;                                                 \
        H = P0(tt2);                                             \
    } while (0)

/* Rounds 0..11: W[j+4] is one of the loaded words. */
#define RA(j, A, B, C, D, E, F, G, H) \
    ROUND(FF0, GG0, T0, j, A, B, C, D, E, F, G, H, w[(j) & 15], w[((j) + 4) & 15])
/* Rounds 12..15: expand W[j+4] first. */
#define RB(j, A, B, C, D, E, F, G, H)                                                    \
    do {                                                                                 \
        EXPAND((j) + 4);                                                                 \
        ROUND(FF0, GG0, T0, j, A, B, C, D, E, F, G, H, w[(j) & 15], w[((j) + 4) & 15]); \
    } while (0)
/* Rounds 16..63. */
#define RC(j, A, B, C, D, E, F, G, H)                                                    \
    do {                                                                                 \
        EXPAND((j) + 4);                                                                 \
        ROUND(FF1, GG1, T1, j, A, B, C, D, E, F, G, H, w[(j) & 15], w[((j) + 4) & 15]); \
    } while (0)

#define R4(R, j)                           \
    R((j) + 0, a, b, c, d, e, f, g, h);    \
    R((j) + 1, d, a, b, c, h, e, f, g);    \
    R((j) + 2, c, d, a, b, g, h, e, f);    \
    R((j) + 3, b, c, d, a, f, g, h, e)

void hsm_sm3_compress(uint32_t st[8], const uint8_t *p, size_t nblocks) {
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    uint32_t e = st[4], f = st[5], g = st[6], h = st[7];
    while (nblocks--) {
        uint32_t w[16];
        for (int i = 0; i < 16; i++) w[i] = load_be32(p + 4 * i);

        R4(RA, 0);
        R4(RA, 4);
        R4(RA, 8);
        R4(RB, 12);
        R4(RC, 16);
        R4(RC, 20);
        R4(RC, 24);
        R4(RC, 28);
        R4(RC, 32);
        R4(RC, 36);
        R4(RC, 40);
        R4(RC, 44);
        R4(RC, 48);
        R4(RC, 52);
        R4(RC, 56);
        R4(RC, 60);

        a = st[0] ^= a;
        b = st[1] ^= b;
        c = st[2] ^= c;
        d = st[3] ^= d;
        e = st[4] ^= e;
        f = st[5] ^= f;
        g = st[6] ^= g;
        h = st[7] ^= h;
        p += 64;
    }
}

static void secure_zero(void *p, size_t n) {
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

void hsm_sm3_init(hsm_sm3_ctx *ctx) {
    static const uint32_t iv[8] = {0x7380166fu, 0x4914b2b9u, 0x172442d7u, 0xda8a0600u,
                                   0xa96f30bcu, 0x163138aau, 0xe38dee4du, 0xb0fb0e4eu};
    memcpy(ctx->h, iv, sizeof iv);
    ctx->nblocks = 0;
    ctx->buflen = 0;
}

void hsm_sm3_update(hsm_sm3_ctx *ctx, const uint8_t *data, size_t len) {
    if (len == 0) return;
    if (ctx->buflen) {
        size_t take = 64 - ctx->buflen;
        if (take > len) take = len;
        memcpy(ctx->buf + ctx->buflen, data, take);
        ctx->buflen += (uint32_t)take;
        data += take;
        len -= take;
        if (ctx->buflen < 64) return;
        hsm_sm3_compress(ctx->h, ctx->buf, 1);
        ctx->nblocks++;
        ctx->buflen = 0;
    }
    size_t n = len / 64;
    if (n) {
        hsm_sm3_compress(ctx->h, data, n);
        ctx->nblocks += n;
        data += 64 * n;
        len -= 64 * n;
    }
    if (len) {
        memcpy(ctx->buf, data, len);
        ctx->buflen = (uint32_t)len;
    }
}

void hsm_sm3_final(hsm_sm3_ctx *ctx, uint8_t out[32]) {
    uint64_t bits = (ctx->nblocks * 64 + ctx->buflen) * 8;
    size_t n = ctx->buflen;
    ctx->buf[n++] = 0x80;
    if (n > 56) {
        memset(ctx->buf + n, 0, 64 - n);
        hsm_sm3_compress(ctx->h, ctx->buf, 1);
        n = 0;
    }
    memset(ctx->buf + n, 0, 56 - n);
    store_be32(ctx->buf + 56, (uint32_t)(bits >> 32));
    store_be32(ctx->buf + 60, (uint32_t)bits);
    hsm_sm3_compress(ctx->h, ctx->buf, 1);
    for (int i = 0; i < 8; i++) store_be32(out + 4 * i, ctx->h[i]);
    hsm_sm3_wipe(ctx);
}

void hsm_sm3(const uint8_t *data, size_t len, uint8_t out[32]) {
    hsm_sm3_ctx ctx;
    hsm_sm3_init(&ctx);
    hsm_sm3_update(&ctx, data, len);
    hsm_sm3_final(&ctx, out);
}

void hsm_sm3_wipe(hsm_sm3_ctx *ctx) { secure_zero(ctx, sizeof *ctx); }

void hsm_hmac_sm3_init(hsm_hmac_sm3_ctx *ctx, const uint8_t *key, size_t key_len) {
    uint8_t k[64];
    memset(k, 0, sizeof k);
    if (key_len > 64) {
        hsm_sm3(key, key_len, k);
    } else if (key_len) {
        memcpy(k, key, key_len);
    }
    for (int i = 0; i < 64; i++) k[i] ^= 0x36;
    hsm_sm3_init(&ctx->inner);
    hsm_sm3_update(&ctx->inner, k, 64);
    for (int i = 0; i < 64; i++) k[i] ^= 0x36 ^ 0x5c;
    hsm_sm3_init(&ctx->outer);
    hsm_sm3_update(&ctx->outer, k, 64);
    secure_zero(k, sizeof k);
}

void hsm_hmac_sm3_update(hsm_hmac_sm3_ctx *ctx, const uint8_t *data, size_t len) {
    hsm_sm3_update(&ctx->inner, data, len);
}

void hsm_hmac_sm3_final(hsm_hmac_sm3_ctx *ctx, uint8_t out[32]) {
    uint8_t ih[32];
    hsm_sm3_final(&ctx->inner, ih);
    hsm_sm3_update(&ctx->outer, ih, 32);
    hsm_sm3_final(&ctx->outer, out);
    secure_zero(ih, sizeof ih);
    hsm_hmac_sm3_wipe(ctx);
}

void hsm_hmac_sm3(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                  uint8_t out[32]) {
    hsm_hmac_sm3_ctx ctx;
    hsm_hmac_sm3_init(&ctx, key, key_len);
    hsm_hmac_sm3_update(&ctx, data, len);
    hsm_hmac_sm3_final(&ctx, out);
}

void hsm_hmac_sm3_wipe(hsm_hmac_sm3_ctx *ctx) { secure_zero(ctx, sizeof *ctx); }
