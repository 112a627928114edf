"""cffi (API mode) build script for the SM algorithms: ``hsmpool._gm_cffi``.

Sources: every ``native/sm4*.c`` plus ``native/gm_cpu.c`` (SM4 and its modes, with run-time
CPU dispatch), ``native/sm3.c`` (SM3, HMAC-SM3) and ``native/sm2.c`` (SM2 over the system
libcrypto). The SM4 files are globbed so new vector paths are picked up without editing this
file. ``HSMPOOL_GM_PORTABLE_ONLY=1`` in the environment builds the portable SM4 path only.
No global ``-m`` flags: the vector code selects its ISA with target attributes.

cffi releases the GIL around every call in API mode, which is what we want: all of these
functions are pure computations on caller-owned buffers.

Build in place with ``python3 setup.py build_ext --inplace`` (or ``pip install -e .``).
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SM4_CDEF = """
#define HSM_GM_IMPL_PORTABLE ...
#define HSM_GM_IMPL_AVX2 ...
#define HSM_GM_IMPL_AVX512 ...
#define HSM_GM_IMPL_AVX2_AESNI ...
int hsm_gm_impl(void);
int hsm_gm_best_impl(void);
int hsm_gm_set_impl(int impl);
int hsm_gm_impl_available(int impl);

typedef struct { ...; } hsm_sm4_key;
void hsm_sm4_set_key(hsm_sm4_key *ks, const uint8_t key[16]);
void hsm_sm4_wipe(hsm_sm4_key *ks);
void hsm_sm4_ecb_encrypt(const hsm_sm4_key *ks, const uint8_t *in, uint8_t *out, size_t nblocks);
void hsm_sm4_ecb_decrypt(const hsm_sm4_key *ks, const uint8_t *in, uint8_t *out, size_t nblocks);
void hsm_sm4_cbc_encrypt(const hsm_sm4_key *ks, uint8_t iv[16], const uint8_t *in, uint8_t *out,
                         size_t nblocks);
void hsm_sm4_cbc_decrypt(const hsm_sm4_key *ks, uint8_t iv[16], const uint8_t *in, uint8_t *out,
                         size_t nblocks);
void hsm_sm4_ctr(const hsm_sm4_key *ks, uint8_t ctr[16], const uint8_t *in, uint8_t *out,
                 size_t len);

typedef struct { ...; } hsm_sm4_gcm_key;
void hsm_sm4_gcm_set_key(hsm_sm4_gcm_key *gk, const uint8_t key[16]);
void hsm_sm4_gcm_wipe(hsm_sm4_gcm_key *gk);
void hsm_sm4_gcm_encrypt(const hsm_sm4_gcm_key *gk, const uint8_t *nonce, size_t nonce_len,
                         const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                         uint8_t *out, uint8_t *tag, size_t tag_len);
int hsm_sm4_gcm_decrypt(const hsm_sm4_gcm_key *gk, const uint8_t *nonce, size_t nonce_len,
                        const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                        const uint8_t *tag, size_t tag_len, uint8_t *out);
"""

SM3_CDEF = """
typedef struct { ...; } hsm_sm3_ctx;
void hsm_sm3_init(hsm_sm3_ctx *ctx);
void hsm_sm3_update(hsm_sm3_ctx *ctx, const uint8_t *data, size_t len);
void hsm_sm3_final(hsm_sm3_ctx *ctx, uint8_t out[32]);
void hsm_sm3(const uint8_t *data, size_t len, uint8_t out[32]);
void hsm_sm3_wipe(hsm_sm3_ctx *ctx);

typedef struct { ...; } hsm_hmac_sm3_ctx;
void hsm_hmac_sm3_init(hsm_hmac_sm3_ctx *ctx, const uint8_t *key, size_t key_len);
void hsm_hmac_sm3_update(hsm_hmac_sm3_ctx *ctx, const uint8_t *data, size_t len);
void hsm_hmac_sm3_final(hsm_hmac_sm3_ctx *ctx, uint8_t out[32]);
void hsm_hmac_sm3(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                  uint8_t out[32]);
void hsm_hmac_sm3_wipe(hsm_hmac_sm3_ctx *ctx);
"""

SM2_CDEF = """
#define HSM_SM2_OK ...
#define HSM_SM2_EINVAL ...
#define HSM_SM2_EDECRYPT ...
#define HSM_SM2_EINTERNAL ...
#define HSM_SM2_ESPACE ...
#define HSM_SM2_ENOPRIV ...
#define HSM_SM2_FMT_DER ...
#define HSM_SM2_FMT_RAW ...
#define HSM_SM2_FMT_PEM ...
#define HSM_SM2_MAX_ID_LEN ...
#define HSM_SM2_MAX_DER_SIG_LEN ...

typedef struct hsm_sm2_key hsm_sm2_key;
int hsm_sm2_generate(hsm_sm2_key **out);
int hsm_sm2_from_private_raw(const uint8_t *d, size_t len, hsm_sm2_key **out);
int hsm_sm2_from_public_raw(const uint8_t *pt, size_t len, hsm_sm2_key **out);
int hsm_sm2_from_private_encoded(const uint8_t *data, size_t len, int fmt, hsm_sm2_key **out);
int hsm_sm2_from_public_encoded(const uint8_t *data, size_t len, int fmt, hsm_sm2_key **out);
void hsm_sm2_free(hsm_sm2_key *key);
int hsm_sm2_has_private(const hsm_sm2_key *key);
int hsm_sm2_private_raw(const hsm_sm2_key *key, uint8_t out[32]);
void hsm_sm2_public_raw(const hsm_sm2_key *key, uint8_t out[65]);
int hsm_sm2_public_handle(const hsm_sm2_key *key, hsm_sm2_key **out);
int hsm_sm2_export(const hsm_sm2_key *key, int private_part, int fmt, uint8_t *out,
                   size_t *out_len);
int hsm_sm2_compute_z(const hsm_sm2_key *key, const uint8_t *id, size_t id_len,
                      uint8_t out[32]);
int hsm_sm2_sign(const hsm_sm2_key *key, const uint8_t *id, size_t id_len, const uint8_t *msg,
                 size_t msg_len, int fmt, uint8_t *sig, size_t *sig_len);
int hsm_sm2_sign_digest(const hsm_sm2_key *key, const uint8_t e[32], int fmt, uint8_t *sig,
                        size_t *sig_len);
int hsm_sm2_verify(const hsm_sm2_key *key, const uint8_t *id, size_t id_len,
                   const uint8_t *msg, size_t msg_len, int fmt, const uint8_t *sig,
                   size_t sig_len);
int hsm_sm2_verify_digest(const hsm_sm2_key *key, const uint8_t e[32], int fmt,
                          const uint8_t *sig, size_t sig_len);
size_t hsm_sm2_ciphertext_size(size_t len, int fmt);
int hsm_sm2_encrypt(const hsm_sm2_key *key, const uint8_t *pt, size_t len, int fmt,
                    uint8_t *out, size_t *out_len);
int hsm_sm2_decrypt(const hsm_sm2_key *key, const uint8_t *ct, size_t ct_len, int fmt,
                    uint8_t *out, size_t *out_len);
"""


def _rel(p: Path) -> str:
    # setuptools wants paths relative to the project root; cffi resolves them from the cwd.
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


sm4_sources = sorted(HERE.glob("sm4*.c"))
gm_cpu = HERE / "gm_cpu.c"
have_sm4 = bool(sm4_sources)

sources = [*sm4_sources]
if have_sm4 and gm_cpu.exists():
    sources.append(gm_cpu)
sources += [HERE / "sm3.c", HERE / "sm2.c"]

cdef = (SM4_CDEF if have_sm4 else "") + SM3_CDEF + SM2_CDEF
headers = ('#include "sm4.h"\n' if have_sm4 else "") + '#include "sm3.h"\n#include "sm2.h"\n'

# HSMPOOL_GM_PORTABLE_ONLY=1 at build time compiles the portable SM4 code only (what a non-x86
# build gets), to test that configuration on an x86 machine.
macros = [("HSM_GM_PORTABLE_ONLY", "1")] if os.environ.get("HSMPOOL_GM_PORTABLE_ONLY") else []

ffibuilder = FFI()
ffibuilder.cdef(cdef)
ffibuilder.set_source(
    "hsmpool._gm_cffi",
    headers,
    sources=[_rel(s) for s in sources],
    include_dirs=[_rel(HERE)],
    define_macros=macros,
    libraries=["crypto"],
    extra_compile_args=["-O3", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
