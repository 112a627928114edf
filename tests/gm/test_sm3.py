"""SM3 and HMAC-SM3 against cryptography (OpenSSL), on random data and split points."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from hypothesis import given, settings
from hypothesis import strategies as st

import hsmpool.gm as gm

from .conftest import BUFFER_KINDS, wrap

SETTINGS = settings(max_examples=200, deadline=None)

data = st.one_of(st.binary(max_size=200), st.binary(min_size=200, max_size=5000))
kinds = st.sampled_from(BUFFER_KINDS)
offsets = st.integers(min_value=0, max_value=15)


def ref_sm3(m: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(m)
    return h.finalize()


def ref_hmac(k: bytes, m: bytes) -> bytes:
    h = c_hmac.HMAC(k, hashes.SM3())
    h.update(m)
    return h.finalize()


@SETTINGS
@given(m=data, kind=kinds, off=offsets)
def test_sm3_matches_cryptography(m: bytes, kind: str, off: int) -> None:
    assert gm.sm3(wrap(m, kind, off)) == ref_sm3(m)


@SETTINGS
@given(m=data, cuts=st.lists(st.integers(min_value=0), max_size=6), kind=kinds, off=offsets)
def test_sm3_incremental_any_split(m: bytes, cuts: list[int], kind: str, off: int) -> None:
    points = sorted({0, len(m), *(c % (len(m) + 1) for c in cuts)})
    h = gm.SM3()
    for a, b in zip(points, points[1:], strict=False):
        h.update(wrap(m[a:b], kind, off))
    assert h.digest() == ref_sm3(m)
    assert h.digest() == ref_sm3(m)  # digest() does not finalise


@SETTINGS
@given(a=data, b=st.binary(max_size=300))
def test_sm3_copy_forks_state(a: bytes, b: bytes) -> None:
    h = gm.SM3(a)
    c = h.copy()
    c.update(b)
    assert h.digest() == ref_sm3(a)
    assert c.digest() == ref_sm3(a + b)
    h.update(b"x")
    assert c.digest() == ref_sm3(a + b)
    assert h.hexdigest() == ref_sm3(a + b"x").hex()


@SETTINGS
@given(
    key=st.one_of(st.binary(max_size=64), st.binary(min_size=65, max_size=300)),
    m=data,
    kind=kinds,
    off=offsets,
)
def test_hmac_matches_cryptography(key: bytes, m: bytes, kind: str, off: int) -> None:
    expected = ref_hmac(key, m)
    assert gm.hmac_sm3(wrap(key, kind, off), wrap(m, kind, off)) == expected
    h = gm.HMACSM3(wrap(key, kind, off))
    half = len(m) // 2
    h.update(m[:half])
    c = h.copy()
    h.update(wrap(m[half:], kind, off))
    assert h.digest() == expected
    h.verify(expected)
    c.update(m[half:])
    assert c.digest() == expected
    bad = bytearray(expected)
    bad[len(m) % 32] ^= 0x40
    with pytest.raises(gm.InvalidSignature):
        h.verify(bytes(bad))
    with pytest.raises(gm.InvalidSignature):
        h.verify(expected[:31])


def test_attributes() -> None:
    assert gm.SM3().digest_size == 32 and gm.SM3().block_size == 64
    assert gm.SM3().name == "sm3"
    assert gm.HMACSM3(b"k").digest_size == 32


@pytest.mark.parametrize("bad", ["abc", 1, None, [1], memoryview(b"abcd")[::2]])
def test_wrong_types(bad: Any) -> None:
    with pytest.raises(TypeError):
        gm.sm3(bad)
    with pytest.raises(TypeError):
        gm.SM3().update(bad)
    with pytest.raises(TypeError):
        gm.hmac_sm3(bad, b"")
    with pytest.raises(TypeError):
        gm.hmac_sm3(b"", bad)
    with pytest.raises(TypeError):
        gm.HMACSM3(b"k").verify(bad)
