#!/usr/bin/env python3
"""Cross-check the SM4 C code (every implementation the CPU has) against `cryptography`.

Builds nothing itself: pass the path of a shared library built from the SM4 sources, e.g.
    gcc -O2 -fPIC -shared -o /tmp/libsm4.so native/sm4*.c native/gm_cpu.c
    python3 native/tests_c/check_sm4.py /tmp/libsm4.so
"""

from __future__ import annotations

import os
import random
import sys

from cffi import FFI
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401  (import check)

CDEF = """
int hsm_gm_impl(void); int hsm_gm_best_impl(void); int hsm_gm_set_impl(int impl);
int hsm_gm_impl_available(int impl);
typedef struct { uint32_t rk_enc[32]; uint32_t rk_dec[32]; } hsm_sm4_key;
void hsm_sm4_set_key(hsm_sm4_key *ks, const uint8_t key[16]);
void hsm_sm4_wipe(hsm_sm4_key *ks);
void hsm_sm4_ecb_encrypt(const hsm_sm4_key *ks, const uint8_t *in, uint8_t *out, size_t n);
void hsm_sm4_ecb_decrypt(const hsm_sm4_key *ks, const uint8_t *in, uint8_t *out, size_t n);
void hsm_sm4_cbc_encrypt(const hsm_sm4_key *ks, uint8_t iv[16], const uint8_t *in, uint8_t *out,
                         size_t n);
void hsm_sm4_cbc_decrypt(const hsm_sm4_key *ks, uint8_t iv[16], const uint8_t *in, uint8_t *out,
                         size_t n);
void hsm_sm4_ctr(const hsm_sm4_key *ks, uint8_t ctr[16], const uint8_t *in, uint8_t *out,
                 size_t len);
typedef struct { hsm_sm4_key ks; uint8_t h[16]; uint8_t htab[1024]; ...; } hsm_sm4_gcm_key;
void hsm_sm4_gcm_set_key(hsm_sm4_gcm_key *gk, const uint8_t key[16]);
void hsm_sm4_gcm_encrypt(const hsm_sm4_gcm_key *gk, const uint8_t *nonce, size_t nonce_len,
                         const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                         uint8_t *out, uint8_t *tag, size_t tag_len);
int hsm_sm4_gcm_decrypt(const hsm_sm4_gcm_key *gk, const uint8_t *nonce, size_t nonce_len,
                        const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                        const uint8_t *tag, size_t tag_len, uint8_t *out);
"""

ffi = FFI()
# ABI mode cannot use "...;": the struct is fully specified here (htab is 64-byte aligned).
ffi.cdef(CDEF.replace("uint8_t htab[1024]; ...;", "uint8_t _pad[48]; uint8_t htab[1024];"))


BLOCK_COUNTS = [0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255]
BLOCK_COUNTS += [256, 300, 1024, 1030]


def ref(mode, key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    c = Cipher(algorithms.SM4(key), mode)
    x = c.decryptor() if decrypt else c.encryptor()
    return x.update(data) + x.finalize()


def ref_gcm(key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> tuple[bytes, bytes]:
    e = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    e.authenticate_additional_data(aad)
    ct = e.update(pt) + e.finalize()
    return ct, e.tag


def main() -> int:
    lib = ffi.dlopen(sys.argv[1])
    assert ffi.sizeof("hsm_sm4_gcm_key") == 256 + 16 + 48 + 1024, ffi.sizeof("hsm_sm4_gcm_key")
    rnd = random.Random(int.from_bytes(os.urandom(8), "little"))
    best = lib.hsm_gm_best_impl()
    print("best impl", best, "current", lib.hsm_gm_impl())
    failures = 0

    def check(cond: bool, what: str) -> None:
        nonlocal failures
        if not cond:
            failures += 1
            print("FAIL", what)

    for impl in range(4):
        if not lib.hsm_gm_impl_available(impl):
            check(lib.hsm_gm_set_impl(impl) == -1, f"{impl} refused")
            continue
        assert lib.hsm_gm_set_impl(impl) == 0 and lib.hsm_gm_impl() == impl
        ks = ffi.new("hsm_sm4_key *")
        # GB/T 32907 example
        k = bytes.fromhex("0123456789abcdeffedcba9876543210")
        lib.hsm_sm4_set_key(ks, k)
        out = ffi.new("uint8_t[16]")
        lib.hsm_sm4_ecb_encrypt(ks, k, out, 1)
        check(bytes(out) == bytes.fromhex("681edf34d206965e86b3e94f536e4246"), f"{impl} GB/T")
        # one million encryptions example (A.2): only a 1000-fold here to stay quick
        buf = ffi.new("uint8_t[16]", k)
        for _ in range(1000):
            lib.hsm_sm4_ecb_encrypt(ks, buf, buf, 1)
        exp = k
        for _ in range(1000):
            exp = ref(modes.ECB(), k, exp)
        check(bytes(buf) == exp, f"{impl} iterated")
        # RFC 8998 A.1 SM4-GCM
        gk = ffi.new("hsm_sm4_gcm_key *")
        key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
        nonce = bytes.fromhex("00001234567800000000ABCD")
        aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
        pt = bytes.fromhex(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
            "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
        )
        ct_exp = bytes.fromhex(
            "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
            "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        )
        tag_exp = bytes.fromhex("83DE3541E4C2B58177E065A9BF7B62EC")
        lib.hsm_sm4_gcm_set_key(gk, key)
        o = ffi.new("uint8_t[]", len(pt))
        t = ffi.new("uint8_t[16]")
        lib.hsm_sm4_gcm_encrypt(gk, nonce, 12, aad, len(aad), pt, len(pt), o, t, 16)
        check(bytes(o) == ct_exp and bytes(t) == tag_exp, f"{impl} RFC 8998 A.1")

        for _trial in range(300):
            key = rnd.randbytes(16)
            lib.hsm_sm4_set_key(ks, key)
            nb = rnd.choice(BLOCK_COUNTS)
            data = rnd.randbytes(16 * nb)
            inb = ffi.new("uint8_t[]", data)
            outb = ffi.new("uint8_t[]", max(1, len(data)))
            lib.hsm_sm4_ecb_encrypt(ks, inb, outb, nb)
            check(bytes(outb)[: len(data)] == ref(modes.ECB(), key, data), f"{impl} ecb {nb}")
            lib.hsm_sm4_ecb_decrypt(ks, outb, outb, nb)
            check(bytes(outb)[: len(data)] == data, f"{impl} ecb dec {nb}")
            iv = rnd.randbytes(16)
            ivb = ffi.new("uint8_t[16]", iv)
            lib.hsm_sm4_cbc_encrypt(ks, ivb, inb, outb, nb)
            exp = ref(modes.CBC(iv), key, data)
            check(bytes(outb)[: len(data)] == exp, f"{impl} cbc {nb}")
            if nb:
                check(bytes(ivb) == exp[-16:], f"{impl} cbc iv")
            ivb = ffi.new("uint8_t[16]", iv)
            lib.hsm_sm4_cbc_decrypt(ks, ivb, outb, outb, nb)  # in place
            check(bytes(outb)[: len(data)] == data, f"{impl} cbc dec {nb}")
            if nb:
                check(bytes(ivb) == exp[-16:], f"{impl} cbc dec iv")
            # CTR, counters near the 32/64/128-bit wrap points, split into calls
            ln = rnd.choice([0, 1, 15, 16, 17, 100, 255, 256, 1000, 1024, 4096, 5000, 16384])
            data = rnd.randbytes(ln)
            ctr = bytearray(rnd.randbytes(16))
            w = rnd.choice([0, 1, 2, 3])
            if w == 1:
                ctr[12:] = b"\xff\xff\xff\xf0"
            elif w == 2:
                ctr[8:] = b"\xff" * 7 + b"\xc3"
            elif w == 3:
                ctr[:] = b"\xff" * 15 + b"\xfe"
            ctr = bytes(ctr)
            exp = ref(modes.CTR(ctr), key, data)
            cb = ffi.new("uint8_t[16]", ctr)
            inb = ffi.new("uint8_t[]", max(1, ln))
            ffi.memmove(inb, data, ln)
            outb = ffi.new("uint8_t[]", max(1, ln))
            cut = (rnd.randrange(ln + 1) // 16) * 16 if ln else 0
            lib.hsm_sm4_ctr(ks, cb, inb, outb, cut)
            lib.hsm_sm4_ctr(ks, cb, inb + cut, outb + cut, ln - cut)
            check(bytes(outb)[:ln] == exp, f"{impl} ctr {ln} w{w} cut {cut}")
            nexp = (int.from_bytes(ctr, "big") + (ln + 15) // 16) % (1 << 128)
            check(int.from_bytes(bytes(cb), "big") == nexp, f"{impl} ctr advance")
            # GCM
            nlen = rnd.choice([12, 12, 12, 8, 16, 20, 64])
            nonce = rnd.randbytes(nlen)
            if nlen == 12 and rnd.random() < 0.3:
                nonce = nonce[:8] + b"\xff\xff\xff" + bytes([rnd.randrange(0xF0, 0x100)])
            aad = rnd.randbytes(rnd.choice([0, 0, 1, 13, 16, 20, 32, 100]))
            ln = rnd.choice(
                [0, 1, 15, 16, 17, 32, 64, 100, 240, 256, 1000, 1024, 1025, 4096, 16384, 16400]
            )
            pt = rnd.randbytes(ln)
            ct, tag = ref_gcm(key, nonce, aad, pt)
            lib.hsm_sm4_gcm_set_key(gk, key)
            o = ffi.new("uint8_t[]", max(1, ln))
            t = ffi.new("uint8_t[16]")
            lib.hsm_sm4_gcm_encrypt(gk, nonce, nlen, aad, len(aad), pt, ln, o, t, 16)
            check(bytes(o)[:ln] == ct and bytes(t) == tag, f"{impl} gcm enc ln={ln} n={nlen}")
            d = ffi.new("uint8_t[]", ct if ln else b"\0")
            r = lib.hsm_sm4_gcm_decrypt(gk, nonce, nlen, aad, len(aad), d, ln, tag, 16, d)
            check(r == 0 and bytes(d)[:ln] == pt, f"{impl} gcm dec ln={ln}")
            tl = rnd.choice([4, 8, 12, 16])
            r = lib.hsm_sm4_gcm_decrypt(gk, nonce, nlen, aad, len(aad), ct, ln, tag[:tl], tl, o)
            check(r == 0 and bytes(o)[:ln] == pt, f"{impl} gcm dec trunc {tl}")
            bad = bytearray(tag)
            bad[rnd.randrange(tl)] ^= 1 << rnd.randrange(8)
            r = lib.hsm_sm4_gcm_decrypt(gk, nonce, nlen, aad, len(aad), ct, ln, bytes(bad), tl, o)
            check(r == -1 and bytes(o)[:ln] == bytes(ln), f"{impl} gcm bad tag")
            if ln:
                badc = bytearray(ct)
                badc[rnd.randrange(ln)] ^= 0x80
                r = lib.hsm_sm4_gcm_decrypt(
                    gk, nonce, nlen, aad, len(aad), bytes(badc), ln, tag, 16, o
                )
                check(r == -1 and bytes(o)[:ln] == bytes(ln), f"{impl} gcm bad ct")
        print("impl", impl, "done, failures so far", failures)
    print("FAILURES" if failures else "all ok", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
