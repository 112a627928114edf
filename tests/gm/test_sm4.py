"""SM4 modes against cryptography's (OpenSSL's) SM4, on random keys, nonces, lengths and
unaligned buffers; GCM tampering; bad arguments."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hsmpool.gm as gm

from .conftest import BUFFER_KINDS, wrap

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.binary(min_size=16, max_size=16)
blocks16 = st.binary(min_size=16, max_size=16)
data = st.one_of(st.binary(max_size=300), st.binary(min_size=300, max_size=5000))
kinds = st.sampled_from(BUFFER_KINDS)
offsets = st.integers(min_value=0, max_value=15)


def ref(key: bytes, mode: Any, data: bytes, encrypt: bool = True) -> bytes:
    c = Cipher(algorithms.SM4(key), mode)
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def ref_gcm(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    if aad:
        enc.authenticate_additional_data(aad)
    ct = enc.update(data) + enc.finalize()
    return ct + enc.tag


@SETTINGS
@given(key=keys, nblocks=st.integers(0, 300), kind=kinds, off=offsets, seed=blocks16)
def test_ecb_matches_cryptography(
    key: bytes, nblocks: int, kind: str, off: int, seed: bytes
) -> None:
    pt = (seed * nblocks)[: 16 * nblocks]
    pt = bytes(b ^ (i & 0xFF) for i, b in enumerate(pt))
    ct = gm.SM4ECB(key).encrypt(wrap(pt, kind, off))
    assert ct == ref(key, modes.ECB(), pt)
    assert gm.SM4ECB(key).decrypt(wrap(ct, kind, off)) == pt


@SETTINGS
@given(key=keys, iv=blocks16, pt=data, kind=kinds, off=offsets)
def test_cbc_matches_cryptography(key: bytes, iv: bytes, pt: bytes, kind: str, off: int) -> None:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(pt) + padder.finalize()
    ct = gm.SM4CBC(key).encrypt(wrap(iv, kind, off), wrap(pt, kind, off))
    assert ct == ref(key, modes.CBC(iv), padded)
    assert gm.SM4CBC(key).decrypt(iv, wrap(ct, kind, off)) == pt


@SETTINGS
@given(key=keys, nonce=blocks16, pt=data, kind=kinds, off=offsets)
def test_ctr_matches_cryptography(key: bytes, nonce: bytes, pt: bytes, kind: str, off: int) -> None:
    ctr = gm.SM4CTR(key)
    ct = ctr.encrypt(wrap(nonce, kind, off), wrap(pt, kind, off))
    assert ct == ref(key, modes.CTR(nonce), pt)
    assert ctr.decrypt(nonce, ct) == pt


@pytest.mark.parametrize(
    "nonce",
    [
        b"\xff" * 16,  # wraps to zero
        b"\x01" * 8 + b"\xff" * 8,  # carry crosses the 64-bit halves
        b"\x00" * 12 + b"\xff\xff\xff\xf0",  # carry out of the low 32 bits
        b"\x00" * 16,
    ],
    ids=["all-ff", "carry-64", "carry-32", "zero"],
)
@pytest.mark.parametrize("length", [1, 16, 255, 256, 1000, 4099])
def test_ctr_counter_carries(nonce: bytes, length: int) -> None:
    key = os.urandom(16)
    pt = os.urandom(length)
    assert gm.SM4CTR(key).encrypt(nonce, pt) == ref(key, modes.CTR(nonce), pt)


nonces = st.one_of(
    st.binary(min_size=12, max_size=12),
    st.binary(min_size=8, max_size=128),
)


@SETTINGS
@given(
    key=keys,
    nonce=nonces,
    pt=data,
    aad=st.binary(max_size=600),
    kind=kinds,
    off=offsets,
)
def test_gcm_matches_cryptography(
    key: bytes, nonce: bytes, pt: bytes, aad: bytes, kind: str, off: int
) -> None:
    aead = gm.SM4GCM(key)
    out = aead.encrypt(wrap(nonce, kind, off), wrap(pt, kind, off), wrap(aad, kind, off))
    assert out == ref_gcm(key, nonce, pt, aad)
    back = aead.decrypt(wrap(nonce, kind, off), wrap(out, kind, off), wrap(aad, kind, off))
    assert back == pt


@settings(max_examples=100, deadline=None)
@given(
    key=keys,
    nonce=st.binary(min_size=12, max_size=12),
    pt=st.binary(max_size=700),
    aad=st.binary(max_size=64),
    where=st.sampled_from(["ciphertext", "tag", "nonce", "aad"]),
    index=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_gcm_any_flipped_bit_fails(
    key: bytes, nonce: bytes, pt: bytes, aad: bytes, where: str, index: int, bit: int
) -> None:
    aead = gm.SM4GCM(key)
    out = aead.encrypt(nonce, pt, aad)
    parts = {"ciphertext": out[:-16], "tag": out[-16:], "nonce": nonce, "aad": aad}
    target = bytearray(parts[where])
    if not target:
        target = bytearray(b"\0")  # an empty field gains a byte: also a change
    else:
        target[index % len(target)] ^= 1 << bit
    parts[where] = bytes(target)
    with pytest.raises(gm.InvalidTag):
        aead.decrypt(parts["nonce"], parts["ciphertext"] + parts["tag"], parts["aad"])


def test_gcm_aad_none_equals_empty() -> None:
    aead = gm.SM4GCM(gm.SM4GCM.generate_key())
    nonce = os.urandom(12)
    assert aead.encrypt(nonce, b"abc", None) == aead.encrypt(nonce, b"abc", b"")
    assert aead.decrypt(nonce, aead.encrypt(nonce, b"abc", b""), None) == b"abc"


def test_gcm_truncated_input_is_invalid_tag() -> None:
    aead = gm.SM4GCM(os.urandom(16))
    nonce = os.urandom(12)
    ct = aead.encrypt(nonce, b"", None)
    assert len(ct) == 16
    for n in range(16):
        with pytest.raises(gm.InvalidTag):
            aead.decrypt(nonce, ct[:n], None)


def test_cbc_bad_padding() -> None:
    key, iv = os.urandom(16), os.urandom(16)
    ecb = gm.SM4ECB(key)

    def forge(last_plain: bytes) -> bytes:
        # CBC with one block: C = E(P xor IV)
        return ecb.encrypt(bytes(a ^ b for a, b in zip(last_plain, iv, strict=True)))

    cbc = gm.SM4CBC(key)
    for bad in [b"\x00" * 16, b"\x11" * 16, b"A" * 15 + b"\x03", b"A" * 14 + b"\x01\x02"]:
        with pytest.raises(ValueError, match="padding"):
            cbc.decrypt(iv, forge(bad))
    assert cbc.decrypt(iv, forge(b"\x10" * 16)) == b""
    assert cbc.decrypt(iv, forge(b"A" * 13 + b"\x03" * 3)) == b"A" * 13


CIPHERS = [gm.SM4ECB, gm.SM4CBC, gm.SM4CTR, gm.SM4GCM]


@pytest.mark.parametrize("cls", CIPHERS)
@pytest.mark.parametrize("key", [b"", b"k" * 15, b"k" * 17, b"k" * 32])
def test_wrong_key_length(cls: Any, key: bytes) -> None:
    with pytest.raises(ValueError):
        cls(key)


@pytest.mark.parametrize("cls", CIPHERS)
@pytest.mark.parametrize("key", ["0123456789abcdef", None, 12345, [0] * 16])
def test_key_wrong_type(cls: Any, key: Any) -> None:
    with pytest.raises(TypeError):
        cls(key)


def test_bad_arguments() -> None:
    key = os.urandom(16)
    ecb, cbc, ctr, aead = gm.SM4ECB(key), gm.SM4CBC(key), gm.SM4CTR(key), gm.SM4GCM(key)
    with pytest.raises(ValueError):
        ecb.encrypt(b"x" * 17)
    with pytest.raises(ValueError):
        ecb.decrypt(b"x" * 15)
    for bad_iv in [b"", b"x" * 15, b"x" * 17]:
        with pytest.raises(ValueError):
            cbc.encrypt(bad_iv, b"data")
        with pytest.raises(ValueError):
            ctr.encrypt(bad_iv, b"data")
    with pytest.raises(ValueError):
        cbc.decrypt(os.urandom(16), b"")
    with pytest.raises(ValueError):
        cbc.decrypt(os.urandom(16), b"x" * 17)
    for bad_nonce in [b"", b"x" * 7, b"x" * 129]:
        with pytest.raises(ValueError):
            aead.encrypt(bad_nonce, b"data", None)
        with pytest.raises(ValueError):
            aead.decrypt(bad_nonce, b"d" * 32, None)
    for bad in ["text", 42, None, [1, 2, 3]]:
        with pytest.raises(TypeError):
            aead.encrypt(os.urandom(12), bad, None)  # type: ignore[arg-type]
        if bad is not None:  # None is "no associated data"
            with pytest.raises(TypeError):
                aead.encrypt(os.urandom(12), b"", bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ctr.encrypt(bad, b"")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ecb.encrypt(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        aead.encrypt(os.urandom(12), memoryview(b"abcdef")[::2], None)


def test_generate_key() -> None:
    a, b = gm.SM4GCM.generate_key(), gm.SM4CBC.generate_key()
    assert len(a) == len(b) == 16 and a != b


def test_set_implementation_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        gm.set_implementation("sse9")


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 1000])
def test_results_are_fresh_bytes(n: int) -> None:
    # Results are written straight into new bytes objects: they must be independent objects,
    # never a shared constant, and hash like any other bytes.
    key, nonce = os.urandom(16), os.urandom(16)
    ctr = gm.SM4CTR(key)
    pt = b"\x00" * n
    a, b = ctr.encrypt(nonce, pt), ctr.encrypt(nonce, pt)
    assert type(a) is bytes and a == b and a is not b
    assert hash(a) == hash(bytes(bytearray(a)))
    assert {a: 1}[bytes(bytearray(a))] == 1
    other = ctr.encrypt(os.urandom(16), pt)
    assert a == b  # producing another result did not touch earlier ones
    assert other != a or n < 4
    g = gm.SM4GCM(key)
    c1 = g.encrypt(nonce[:12], pt, None)
    assert g.decrypt(nonce[:12], c1, None) == pt and c1 == g.encrypt(nonce[:12], pt, None)


def test_key_schedules_are_wiped_on_release() -> None:
    from hsmpool.gm._binding import ffi

    key = os.urandom(16)
    cases: list[tuple[Any, str, str]] = [
        (gm.SM4CTR(key), "_ks", "hsm_sm4_key"),
        (gm.SM4GCM(key), "_gk", "hsm_sm4_gcm_key"),
    ]
    for obj, attr, typ in cases:
        mem = ffi.buffer(getattr(obj, attr), ffi.sizeof(typ))
        assert any(bytes(mem))
        obj.__del__()  # what the garbage collector calls
        assert not any(bytes(mem))
    h = gm.SM3(b"secret-ish")
    hmem = ffi.buffer(h._ctx, ffi.sizeof("hsm_sm3_ctx"))
    h.__del__()
    assert not any(bytes(hmem))
