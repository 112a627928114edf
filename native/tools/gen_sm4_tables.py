#!/usr/bin/env python3
"""Derive the constant tables used by native/sm4*.c and print them as C.

Everything is computed from the SM4 S-box of GB/T 32907-2016 (below), so the tables in the C
sources can be regenerated and re-checked:

  * the four 256-entry T-tables of the portable path: T_j[x] = L(S[x] << (24 - 8j)),
  * the two GFNI affine matrices for the vectorised S-box.  The SM4 S-box factors as
        S(x) = A * inv_F(A*x + c) + c,   A = circulant(0xA7) (row i = rol8(0xA7, i)), c = 0xD3,
    with inv_F the inversion in GF(2^8) = GF(2)[t]/(t^8+t^7+t^6+t^5+t^4+t^2+1) (0x1F5).
    GF2P8AFFINEINVQB inverts in the AES field GF(2)[t]/(0x11B) instead, so a field isomorphism
    phi: F -> F_aes is folded into the matrices:
        S(x) = (A * phi^-1) * inv_aes( (phi * A) * x + phi(c) ) + c,
    i.e. pre = gf2p8affine(x, phi*A, phi(c)); S = gf2p8affineinv(pre, A*phi^-1, c).
  * the 16-entry reduction table of the 4-bit (Shoup) portable GHASH.

The script checks every derived object against the S-box on all 256 inputs (emulating the exact
GFNI instruction semantics, where output bit i is the parity of matrix byte 7-i AND the input).

Usage: python3 native/tools/gen_sm4_tables.py > /tmp/tables.inc
       python3 native/tools/gen_sm4_tables.py --check   (the C sources hold exactly these values)
"""

from __future__ import annotations

import functools

SBOX_HEX = """
d6 90 e9 fe cc e1 3d b7 16 b6 14 c2 28 fb 2c 05 2b 67 9a 76 2a be 04 c3 aa 44 13 26 49 86 06 99
9c 42 50 f4 91 ef 98 7a 33 54 0b 43 ed cf ac 62 e4 b3 1c a9 c9 08 e8 95 80 df 94 fa 75 8f 3f a6
47 07 a7 fc f3 73 17 ba 83 59 3c 19 e6 85 4f a8 68 6b 81 b2 71 64 da 8b f8 eb 0f 4b 70 56 9d 35
1e 24 0e 5e 63 58 d1 a2 25 22 7c 3b 01 21 78 87 d4 00 46 57 9f d3 27 52 4c 36 02 e7 a0 c4 c8 9e
ea bf 8a d2 40 c7 38 b5 a3 f7 f2 ce f9 61 15 a1 e0 ae 5d a4 9b 34 1a 55 ad 93 32 30 f5 8c b1 e3
1d f6 e2 2e 82 66 ca 60 c0 29 23 ab 0d 53 4e 6f d5 db 37 45 de fd 8e 2f 03 ff 6a 72 6d 6c 5b 51
8d 1b af 92 bb dd bc 7f 11 d9 5c 41 1f 10 5a d8 0a c1 31 88 a5 cd 7b bd 2d 74 d0 12 b8 e5 b4 b0
89 69 97 4a 0c 96 77 7e 65 b9 f1 09 c5 6e c6 84 18 f0 7d ec 3a dc 4d 20 79 ee 5f 3e d7 cb 39 48
"""
SBOX = [int(v, 16) for v in SBOX_HEX.split()]
POLY_SM4 = 0x1F5
POLY_AES = 0x11B


def gf_mul(a: int, b: int, poly: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a & 0x100:
            a ^= poly
    return r


@functools.cache  # 256 values per field, asked for ~80,000 times
def gf_inv(a: int, poly: int) -> int:
    if a == 0:
        return 0
    r = 1
    for _ in range(254):  # a^254 = a^-1
        r = gf_mul(r, a, poly)
    return r


# 8x8 bit matrices as a list of 8 row masks: output bit i = parity(row[i] & x)
def mat_apply(rows: list[int], x: int) -> int:
    return sum(((bin(rows[i] & x).count("1") & 1) << i) for i in range(8))


def mat_from_columns(cols: list[int]) -> list[int]:
    return [sum(((cols[j] >> i) & 1) << j for j in range(8)) for i in range(8)]


def mat_from_function(f) -> list[int]:
    return mat_from_columns([f(1 << j) for j in range(8)])


def mat_mul(a: list[int], b: list[int]) -> list[int]:
    return mat_from_function(lambda x: mat_apply(a, mat_apply(b, x)))


def mat_to_gfni(rows: list[int]) -> int:
    """The 64-bit GFNI operand: byte 7-i holds row i."""
    return sum(rows[i] << (8 * (7 - i)) for i in range(8))


def gfni_affine(x: int, m: int, imm: int) -> int:
    out = 0
    for i in range(8):
        row = (m >> (8 * (7 - i))) & 0xFF
        out |= (bin(row & x).count("1") & 1) << i
    return out ^ imm


def gfni_affineinv(x: int, m: int, imm: int) -> int:
    return gfni_affine(gf_inv(x, POLY_AES), m, imm)


def rol32(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF


def lin(b: int) -> int:
    return b ^ rol32(b, 2) ^ rol32(b, 10) ^ rol32(b, 18) ^ rol32(b, 24)


def derive_gfni() -> tuple[int, int, int, int]:
    a_rows = [((0xA7 << i) | (0xA7 >> (8 - i))) & 0xFF for i in range(8)]
    c = 0xD3
    inv_sm4 = [gf_inv(v, POLY_SM4) for v in range(256)]
    for x in range(256):
        assert mat_apply(a_rows, inv_sm4[mat_apply(a_rows, x) ^ c]) ^ c == SBOX[x]
    # beta: a root in the AES field of the SM4 field polynomial; phi(t^i) = beta^i
    beta = next(b for b in range(2, 256) if _eval_poly(POLY_SM4, b) == 0)
    cols, p = [], 1
    for _ in range(8):
        cols.append(p)
        p = gf_mul(p, beta, POLY_AES)
    phi = mat_from_columns(cols)
    phi_inv_tab = {mat_apply(phi, v): v for v in range(256)}
    assert len(phi_inv_tab) == 256
    phi_inv = mat_from_function(lambda y: phi_inv_tab[y])
    # phi is a field isomorphism
    for u in range(256):
        for v in (3, 0x53, 0xA7, u):
            assert mat_apply(phi, gf_mul(u, v, POLY_SM4)) == gf_mul(
                mat_apply(phi, u), mat_apply(phi, v), POLY_AES
            )
    pre = mat_mul(phi, a_rows)
    pre_c = mat_apply(phi, c)
    post = mat_mul(a_rows, phi_inv)
    post_c = c
    m_pre, m_post = mat_to_gfni(pre), mat_to_gfni(post)
    for x in range(256):
        assert gfni_affineinv(gfni_affine(x, m_pre, pre_c), m_post, post_c) == SBOX[x]
    return m_pre, pre_c, m_post, post_c


def _eval_poly(poly: int, b: int) -> int:
    r = 0
    for i in range(8, -1, -1):
        r = gf_mul(r, b, POLY_AES)
        if (poly >> i) & 1:
            r ^= 1
    return r


def ghash_r4() -> list[int]:
    # bit b of r is the coefficient of t^(127-b) before a 4-bit right shift; afterwards it is
    # t^(128+3-b) = t^(3-b) * (1 + t + t^2 + t^7): 0xE1 << 56 in the high word, shifted by 3-b
    out = []
    for r in range(16):
        v = 0
        for b in range(4):
            if (r >> b) & 1:
                v ^= 0xE100000000000000 >> (3 - b)
        out.append(v)
    return out


def derive_gfni_split_l(m_post: int, post_c: int) -> list[tuple[int, int]]:
    """Post matrices that fold parts of L into the S-box output (used by the AVX2 path).

    With byte-local maps M2(b) = b << 2, M6(b) = b >> 6 and R2(b) = rol8(b, 2):
        L(s) = (s ^ M2 s) ^ rol32(R2 s, 8) ^ rol32(R2 s, 16) ^ rol32(s ^ M6 s, 24)
    so three GF2P8AFFINEINVQB with matrices N*post (N = I^M2, R2, I^M6) replace the 2-bit
    rotate of L. Returns [(matrix, const)] for N = I^M2, R2, I^M6.
    """
    post_rows = [(m_post >> (8 * (7 - i))) & 0xFF for i in range(8)]
    maps = [
        lambda b: b ^ ((b << 2) & 0xFF),
        lambda b: ((b << 2) | (b >> 6)) & 0xFF,
        lambda b: b ^ (b >> 6),
    ]
    out = []
    for f in maps:
        n = mat_from_function(f)
        out.append((mat_to_gfni(mat_mul(n, post_rows)), mat_apply(n, post_c)))
    # check the whole round function against the T-table formulation on many words
    import random

    rng = random.Random(1)
    pre = derive_gfni()
    for _ in range(2000):
        x = rng.getrandbits(32)
        bs = [(x >> (8 * i)) & 0xFF for i in range(4)]
        u = [gfni_affine(b, pre[0], pre[1]) for b in bs]
        parts = []
        for m, c in out:
            parts.append(sum(gfni_affineinv(u[i], m, c) << (8 * i) for i in range(4)))
        got = parts[0] ^ rol32(parts[1], 8) ^ rol32(parts[1], 16) ^ rol32(parts[2], 24)
        sx = sum(SBOX[bs[i]] << (8 * i) for i in range(4))
        assert got == lin(sx)
    return out


def aes_sbox(x: int) -> int:
    b = gf_inv(x, POLY_AES)
    r = 0x63
    for i in range(8):
        bit = 0
        for k in (0, 4, 5, 6, 7):
            bit ^= (b >> ((i + k) % 8)) & 1
        r ^= bit << i
    return r


def derive_aesni() -> tuple[list[int], list[int], list[int], list[int]]:
    """Nibble tables for an S-box built on AESENCLAST (for CPUs without GFNI).

    S(x) = post(SubBytes_aes(pre(x))) with pre(x) = (phi*A)*x + phi(c) and
    post(z) = (A*phi^-1*Aff_aes^-1)*z + (A*phi^-1*Aff_aes^-1)(0x63) + c; each affine map is
    evaluated with two 16-entry byte lookups (low and high nibble). Returns
    (pre_lo, pre_hi, post_lo, post_hi); the constants live in the *_lo tables.
    """
    assert aes_sbox(0) == 0x63 and aes_sbox(1) == 0x7C and aes_sbox(0x53) == 0xED
    m_pre, pre_c, m_post, post_c = derive_gfni()
    pre_rows = [(m_pre >> (8 * (7 - i))) & 0xFF for i in range(8)]
    post_rows = [(m_post >> (8 * (7 - i))) & 0xFF for i in range(8)]
    # Aff_aes: z = Aff(inv) ^ 0x63
    aff = mat_from_function(lambda v: aes_sbox(gf_inv(v, POLY_AES)) ^ 0x63)
    aff_inv_tab = {mat_apply(aff, v): v for v in range(256)}
    aff_inv = mat_from_function(lambda z: aff_inv_tab[z])
    q = mat_mul(post_rows, aff_inv)
    qc = mat_apply(q, 0x63) ^ post_c
    pre_lo = [mat_apply(pre_rows, n) ^ pre_c for n in range(16)]
    pre_hi = [mat_apply(pre_rows, n << 4) for n in range(16)]
    post_lo = [mat_apply(q, n) ^ qc for n in range(16)]
    post_hi = [mat_apply(q, n << 4) for n in range(16)]
    for x in range(256):
        y = pre_lo[x & 15] ^ pre_hi[x >> 4]
        z = aes_sbox(y)
        assert post_lo[z & 15] ^ post_hi[z >> 4] == SBOX[x]
    return pre_lo, pre_hi, post_lo, post_hi


def derive_aesni_domain() -> dict[str, list[int]]:
    """Nibble tables for the AES-NI kernels working in the pre-affine domain D (as the GFNI
    kernels do, see derive_domain): with u = D(X1)^D(X2)^D(X3)^(D(K)^0x3e) the S-box is
    post(SubBytes_aes(u)), and
        D(X0 ^ L(S)) = D(X0) ^ R0(z) ^ rol8(R1(z)) ^ rol16(R1(z)) ^ rol24(R3(z)),
    z = SubBytes_aes(u), R_j = D * N_j * post (affine, nibble tables). Returns the tables of
    D, D^-1 (linear), the key map (D(k) ^ 0x3e) and R0, R1, R3 ("*_LO" hold the constants).
    """
    m_pre, pre_c, m_post, post_c = derive_gfni()
    d = gfni_rows(m_pre)
    d_tab = {mat_apply(d, v): v for v in range(256)}
    d_inv = mat_from_function(lambda y: d_tab[y])
    aff = mat_from_function(lambda v: aes_sbox(gf_inv(v, POLY_AES)) ^ 0x63)
    aff_inv_tab = {mat_apply(aff, v): v for v in range(256)}
    aff_inv = mat_from_function(lambda z: aff_inv_tab[z])
    q = mat_mul(gfni_rows(m_post), aff_inv)
    qc = mat_apply(q, 0x63) ^ post_c
    maps = [
        lambda b: b ^ ((b << 2) & 0xFF),
        lambda b: ((b << 2) | (b >> 6)) & 0xFF,
        lambda b: b ^ (b >> 6),
    ]
    out: dict[str, list[int]] = {}

    def tables(name: str, rows: list[int], const: int) -> None:
        out[name + "_LO"] = [mat_apply(rows, n) ^ const for n in range(16)]
        out[name + "_HI"] = [mat_apply(rows, n << 4) for n in range(16)]

    tables("DOM", d, 0)
    tables("DOM_INV", d_inv, 0)
    tables("KEY", d, pre_c)
    for name, f in zip(("R0", "R1", "R3"), maps, strict=True):
        n = mat_from_function(f)
        tables(name, mat_mul(d, mat_mul(n, q)), mat_apply(d, mat_apply(n, qc)))

    def look(name: str, b: int) -> int:
        return out[name + "_LO"][b & 15] ^ out[name + "_HI"][b >> 4]

    def word(name: str, x: int) -> int:
        return sum(look(name, (x >> (8 * i)) & 0xFF) << (8 * i) for i in range(4))

    import random

    rng = random.Random(3)
    for _ in range(2000):
        x0, x1, x2, x3, k = (rng.getrandbits(32) for _ in range(5))
        t = x1 ^ x2 ^ x3 ^ k
        sx = sum(SBOX[(t >> (8 * i)) & 0xFF] << (8 * i) for i in range(4))
        want = word("DOM", x0 ^ lin(sx))
        u = word("DOM", x1) ^ word("DOM", x2) ^ word("DOM", x3) ^ word("KEY", k)
        z = sum(aes_sbox((u >> (8 * i)) & 0xFF) << (8 * i) for i in range(4))
        r = [word(nm, z) for nm in ("R0", "R1", "R3")]
        got = word("DOM", x0) ^ r[0] ^ rol32(r[1], 8) ^ rol32(r[1], 16) ^ rol32(r[2], 24)
        assert got == want
        assert word("DOM_INV", word("DOM", x0)) == x0
    return out


def gfni_rows(m: int) -> list[int]:
    return [(m >> (8 * (7 - i))) & 0xFF for i in range(8)]


def derive_domain() -> tuple[int, int, list[tuple[int, int]]]:
    """Round function in the 'pre-affine domain' (used by the GFNI kernels).

    With D = the linear part of the pre-affine map (phi*A, applied to each byte) the state words
    are kept as D(X). Since D is byte-local it commutes with rotations by multiples of 8, so
        D(X0 ^ L(S(X1^X2^X3^K))) = D(X0) ^ Q0(u) ^ rol8(Q1(u)) ^ rol16(Q1(u)) ^ rol24(Q3(u)),
        u = D(X1) ^ D(X2) ^ D(X3) ^ (D(K) ^ 0x3e..)   (the pre-affine output, no extra op),
    where Q_j = GF2P8AFFINEINVQB with matrix D*N_j*post. One GFNI op per round less; D is
    applied once on input and D^-1 once on output. Returns (D, D^-1, [(matrix, const)] * 3).
    """
    m_pre, pre_c, m_post, post_c = derive_gfni()
    d = gfni_rows(m_pre)
    d_tab = {mat_apply(d, v): v for v in range(256)}
    d_inv = mat_from_function(lambda y: d_tab[y])
    posts = []
    for m, c in derive_gfni_split_l(m_post, post_c):
        posts.append((mat_to_gfni(mat_mul(d, gfni_rows(m))), mat_apply(d, c)))
    # check one round on random words
    import random

    rng = random.Random(2)

    def dw(x: int, rows: list[int]) -> int:
        return sum(mat_apply(rows, (x >> (8 * i)) & 0xFF) << (8 * i) for i in range(4))

    for _ in range(2000):
        x0, x1, x2, x3, k = (rng.getrandbits(32) for _ in range(5))
        t = x1 ^ x2 ^ x3 ^ k
        sx = sum(SBOX[(t >> (8 * i)) & 0xFF] << (8 * i) for i in range(4))
        want = dw(x0 ^ lin(sx), d)
        kd = dw(k, d) ^ (pre_c * 0x01010101)
        u = dw(x1, d) ^ dw(x2, d) ^ dw(x3, d) ^ kd
        q = [
            sum(gfni_affineinv((u >> (8 * i)) & 0xFF, m, c) << (8 * i) for i in range(4))
            for m, c in posts
        ]
        got = dw(x0, d) ^ q[0] ^ rol32(q[1], 8) ^ rol32(q[1], 16) ^ rol32(q[2], 24)
        assert got == want
        assert dw(dw(x0, d), d_inv) == x0
    return m_pre, mat_to_gfni(d_inv), posts


def main() -> None:
    assert sorted(SBOX) == list(range(256))
    t0 = [lin(s << 24) for s in SBOX]
    print("/* generated by native/tools/gen_sm4_tables.py */")
    print("static const uint8_t SM4_SBOX[256] = {")
    for i in range(0, 256, 16):
        print("    " + ", ".join(f"0x{v:02x}" for v in SBOX[i : i + 16]) + ",")
    print("};")
    for j in range(4):
        tab = [((v >> (8 * j)) | (v << (32 - 8 * j))) & 0xFFFFFFFF for v in t0]
        print(f"static const uint32_t SM4_T{j}[256] = {{")
        for i in range(0, 256, 6):
            print("    " + ", ".join(f"0x{v:08x}u" for v in tab[i : i + 6]) + ",")
        print("};")
    m_pre, pre_c, m_post, post_c = derive_gfni()
    print(f"#define SM4_GFNI_PRE_MATRIX 0x{m_pre:016x}ULL")
    print(f"#define SM4_GFNI_PRE_CONST 0x{pre_c:02x}")
    print(f"#define SM4_GFNI_POST_MATRIX 0x{m_post:016x}ULL")
    print(f"#define SM4_GFNI_POST_CONST 0x{post_c:02x}")
    for name, (m, c) in zip(("L0", "L1", "L3"), derive_gfni_split_l(m_post, post_c), strict=True):
        print(f"#define SM4_GFNI_POST_{name}_MATRIX 0x{m:016x}ULL")
        print(f"#define SM4_GFNI_POST_{name}_CONST 0x{c:02x}")
    dom, dom_inv, dposts = derive_domain()
    print(f"#define SM4_GFNI_DOMAIN_MATRIX 0x{dom:016x}ULL")
    print(f"#define SM4_GFNI_DOMAIN_INV_MATRIX 0x{dom_inv:016x}ULL")
    for name, (m, c) in zip(("D0", "D1", "D3"), dposts, strict=True):
        print(f"#define SM4_GFNI_POST_{name}_MATRIX 0x{m:016x}ULL")
        print(f"#define SM4_GFNI_POST_{name}_CONST 0x{c:02x}")
    for name, tab in zip(("PRE_LO", "PRE_HI", "POST_LO", "POST_HI"), derive_aesni(), strict=True):
        vals = ", ".join(f"0x{v:02x}" for v in tab)
        print(f"#define SM4_AESNI_{name} {vals}")
    for name, tab in derive_aesni_domain().items():
        vals = ", ".join(f"0x{v:02x}" for v in tab)
        print(f"#define SM4_AESNI_{name} {vals}")
    print("static const uint64_t GHASH_R4[16] = {")
    r4 = ghash_r4()
    for i in range(0, 16, 4):
        print("    " + ", ".join(f"0x{v:016x}ULL" for v in r4[i : i + 4]) + ",")
    print("};")


def check_sources() -> int:
    """Compare every table/#define this script prints with the copy in native/sm4*.c."""
    import contextlib
    import io
    import pathlib
    import re

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main()
    gen = buf.getvalue()
    here = pathlib.Path(__file__).resolve().parent.parent
    src = "".join(p.read_text() for p in sorted(here.glob("sm4*.c")))

    def nums(text: str) -> list[int]:
        return [int(v, 16) for v in re.findall(r"0x([0-9a-fA-F]+)", text)]

    bad = checked = 0
    for m in re.finditer(r"#define (\w+) (.*)", gen):
        name, val = m.group(1), m.group(2)
        found = re.findall(rf"#define {name} (.*)", src)
        for f in found:
            checked += 1
            if nums(f) != nums(val):
                bad += 1
                print("MISMATCH", name)
    for m in re.finditer(r"static const \w+ (\w+)\[\d+\] = \{(.*?)\};", gen, re.S):
        name, body = m.group(1), m.group(2)
        f = re.search(rf"static const \w+ {name}\[\d+\] = \{{(.*?)\}};", src, re.S)
        if f:
            checked += 1
            if nums(f.group(1)) != nums(body):
                bad += 1
                print("MISMATCH", name)
    print(f"{checked} constants checked against native/sm4*.c, {bad} mismatches")
    return 1 if bad or not checked else 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--check"]:
        sys.exit(check_sources())
    main()
