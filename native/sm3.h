/* SM3 hash (GB/T 32905-2016) and HMAC-SM3 (RFC 2104 construction): the C interface used by
 * build_gm.py.
 *
 * The state structs are plain data: copying one (struct assignment or memcpy) forks the
 * computation, which is how the Python layer implements digest() without finalising.
 * Nothing here allocates. Buffers may be unaligned.
 */
#ifndef HSMPOOL_SM3_H
#define HSMPOOL_SM3_H

#include <stddef.h>
#include <stdint.h>

#define HSM_SM3_DIGEST_LEN 32
#define HSM_SM3_BLOCK_LEN 64

typedef struct {
    uint32_t h[8];     /* chaining value */
    uint64_t nblocks;  /* compressed 64-byte blocks so far */
    uint8_t buf[64];   /* pending bytes */
    uint32_t buflen;   /* number of pending bytes, 0..63 */
} hsm_sm3_ctx;

void hsm_sm3_init(hsm_sm3_ctx *ctx);
void hsm_sm3_update(hsm_sm3_ctx *ctx, const uint8_t *data, size_t len);
/* Writes the digest; ctx is wiped afterwards (copy it first to keep going). */
void hsm_sm3_final(hsm_sm3_ctx *ctx, uint8_t out[32]);
/* One-shot. */
void hsm_sm3(const uint8_t *data, size_t len, uint8_t out[32]);
/* Overwrite with zeros in a way the compiler cannot elide. */
void hsm_sm3_wipe(hsm_sm3_ctx *ctx);

/* The compression function over nblocks consecutive 64-byte blocks. */
void hsm_sm3_compress(uint32_t h[8], const uint8_t *blocks, size_t nblocks);

typedef struct {
    hsm_sm3_ctx inner; /* keyed with K ^ ipad, then the message */
    hsm_sm3_ctx outer; /* keyed with K ^ opad */
} hsm_hmac_sm3_ctx;

/* Any key length (longer than 64 bytes is hashed first, per RFC 2104). */
void hsm_hmac_sm3_init(hsm_hmac_sm3_ctx *ctx, const uint8_t *key, size_t key_len);
void hsm_hmac_sm3_update(hsm_hmac_sm3_ctx *ctx, const uint8_t *data, size_t len);
/* Writes the 32-byte tag; ctx is wiped afterwards. */
void hsm_hmac_sm3_final(hsm_hmac_sm3_ctx *ctx, uint8_t out[32]);
void hsm_hmac_sm3(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                  uint8_t out[32]);
void hsm_hmac_sm3_wipe(hsm_hmac_sm3_ctx *ctx);

#endif
