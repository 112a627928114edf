"""Known-answer tests from the standards (data in tests/gm/vectors/)."""

from __future__ import annotations

from typing import Any

import pytest

import hsmpool.gm as gm

from ._vectors import h, params


@pytest.mark.parametrize("case", params("sm4_gbt32907.json", slow_if="iterations"))
def test_sm4_block(case: dict[str, Any]) -> None:
    ecb = gm.SM4ECB(h(case["key"]))
    block = h(case["plaintext"])
    for _ in range(case["iterations"]):
        block = ecb.encrypt(block)
    assert block == h(case["ciphertext"])
    for _ in range(case["iterations"]):
        block = ecb.decrypt(block)
    assert block == h(case["plaintext"])


@pytest.mark.parametrize(
    "case", params("sm4_gbt32907.json", where=lambda c: int(c["iterations"]) == 1)
)
def test_sm4_block_in_a_long_ecb_buffer(case: dict[str, Any]) -> None:
    # The single-block answer, at every position of a buffer long enough for the wide paths.
    pt, ct = h(case["plaintext"]), h(case["ciphertext"])
    out = gm.SM4ECB(h(case["key"])).encrypt(pt * 67)
    assert out == ct * 67


@pytest.mark.parametrize("case", params("sm3_gbt32905.json"))
def test_sm3(case: dict[str, Any]) -> None:
    msg, digest = h(case["message"]), h(case["digest"])
    assert gm.sm3(msg) == digest
    inc = gm.SM3()
    for i in range(len(msg)):
        inc.update(msg[i : i + 1])
    assert inc.digest() == digest
    assert inc.hexdigest() == case["digest"]


@pytest.mark.parametrize("case", params("sm4_gcm_rfc8998.json"))
def test_sm4_gcm_rfc8998(case: dict[str, Any]) -> None:
    aead = gm.SM4GCM(h(case["key"]))
    expected = h(case["ciphertext"]) + h(case["tag"])
    assert aead.encrypt(h(case["nonce"]), h(case["plaintext"]), h(case["aad"])) == expected
    assert aead.decrypt(h(case["nonce"]), expected, h(case["aad"])) == h(case["plaintext"])
    bad = bytearray(expected)
    bad[-1] ^= 1
    with pytest.raises(gm.InvalidTag):
        aead.decrypt(h(case["nonce"]), bytes(bad), h(case["aad"]))


@pytest.mark.parametrize("case", params("sm2_gmt0003.json", "signature"))
def test_sm2_signature_example(case: dict[str, Any]) -> None:
    priv = gm.SM2PrivateKey.from_bytes(h(case["private_key"]))
    pub = priv.public_key()
    assert pub.to_bytes() == h(case["public_key"])
    assert pub.compute_z(h(case["uid"])) == h(case["za"])
    assert pub.message_digest(h(case["message"]), h(case["uid"])) == h(case["e"])
    raw = h(case["r"]) + h(case["s"])
    pub.verify(raw, h(case["message"]), h(case["uid"]), format="raw")
    pub.verify_digest(raw, h(case["e"]), format="raw")
    with pytest.raises(gm.InvalidSignature):
        pub.verify(raw, h(case["message"]) + b"!", h(case["uid"]), format="raw")
    with pytest.raises(gm.InvalidSignature):
        pub.verify(raw, h(case["message"]), b"ALICE123@YAHOO.COM", format="raw")
    # A fresh (random-k) signature of ours verifies under the published key too.
    sig = priv.sign(h(case["message"]), h(case["uid"]))
    pub.verify(sig, h(case["message"]), h(case["uid"]))


def _der_int(v: bytes) -> bytes:
    v = v.lstrip(b"\0") or b"\0"
    if v[0] & 0x80:
        v = b"\0" + v
    return b"\x02" + bytes([len(v)]) + v


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + body


@pytest.mark.parametrize("case", params("sm2_gmt0003.json", "encryption"))
def test_sm2_encryption_example(case: dict[str, Any]) -> None:
    priv = gm.SM2PrivateKey.from_bytes(h(case["private_key"]))
    c1, c3, c2 = h(case["c1"]), h(case["c3"]), h(case["c2"])
    assert priv.decrypt(c1 + c3 + c2, format="raw") == h(case["plaintext"])
    der = _der(0x30, _der_int(c1[1:33]) + _der_int(c1[33:65]) + _der(0x04, c3) + _der(0x04, c2))
    assert priv.decrypt(der) == h(case["plaintext"])
    with pytest.raises(gm.DecryptionError):
        priv.decrypt(c1 + c3 + c2[:-1] + bytes([c2[-1] ^ 1]), format="raw")
