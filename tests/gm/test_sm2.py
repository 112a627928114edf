"""SM2: round trips, interoperability with gmssl (an independent pure-Python implementation)
and the openssl command line, and malformed input that must fail cleanly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from gmssl.sm2 import CryptSM2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import hsmpool.gm as gm

N = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
P = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF", 16)

# gmssl is pure Python (milliseconds per operation): keep its example counts small.
INTEROP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOCAL = settings(max_examples=60, deadline=None)

scalars = st.integers(min_value=1, max_value=N - 2).map(lambda d: d.to_bytes(32, "big"))
messages = st.binary(max_size=600)
plaintexts = st.binary(min_size=1, max_size=600)

_KEY = gm.SM2PrivateKey.generate()


def gmssl_for(pub: gm.SM2PublicKey, priv: gm.SM2PrivateKey | None = None) -> CryptSM2:
    c = CryptSM2(private_key=priv.to_bytes().hex() if priv else "", public_key="", mode=1)
    # Set after construction: gmssl's constructor lstrip("04")s the key, eating digits of x.
    c.public_key = pub.to_bytes()[1:].hex()
    return c


@LOCAL
@given(d=scalars, m=messages, uid=st.binary(max_size=40), fmt=st.sampled_from(["der", "raw"]))
def test_sign_verify_roundtrip(d: bytes, m: bytes, uid: bytes, fmt: Any) -> None:
    priv = gm.SM2PrivateKey.from_bytes(d)
    pub = priv.public_key()
    sig = priv.sign(m, uid, format=fmt)
    if fmt == "raw":
        assert len(sig) == 64
    else:
        assert sig[0] == 0x30 and len(sig) <= 72
    pub.verify(sig, m, uid, format=fmt)
    with pytest.raises(gm.InvalidSignature):
        pub.verify(sig, m + b"\0", uid, format=fmt)
    with pytest.raises(gm.InvalidSignature):
        pub.verify(sig, m, uid + b"x", format=fmt)
    e = pub.message_digest(m, uid)
    pub.verify_digest(sig, e, format=fmt)
    sig2 = priv.sign_digest(e, format=fmt)
    pub.verify(sig2, m, uid, format=fmt)


@INTEROP
@given(d=scalars, m=messages)
def test_our_signatures_verify_in_gmssl(d: bytes, m: bytes) -> None:
    priv = gm.SM2PrivateKey.from_bytes(d)
    sig = priv.sign(m, format="raw")  # gmssl hard-codes the default uid
    assert gmssl_for(priv.public_key()).verify_with_sm3(sig.hex(), m)
    bad = bytearray(sig)
    bad[5] ^= 1
    assert not gmssl_for(priv.public_key()).verify_with_sm3(bytes(bad).hex(), m)


@INTEROP
@given(d=scalars, m=messages)
def test_gmssl_signatures_verify_here(d: bytes, m: bytes) -> None:
    priv = gm.SM2PrivateKey.from_bytes(d)
    sig_hex = gmssl_for(priv.public_key(), priv).sign_with_sm3(m)
    if sig_hex is None:  # gmssl's own rare retry case
        return
    priv.public_key().verify(bytes.fromhex(sig_hex), m, format="raw")
    priv.public_key().verify(bytes.fromhex(sig_hex), m, gm.DEFAULT_UID, format="raw")


@INTEROP
@given(d=scalars, pt=plaintexts)
def test_encrypt_here_decrypt_in_gmssl(d: bytes, pt: bytes) -> None:
    priv = gm.SM2PrivateKey.from_bytes(d)
    ct = priv.public_key().encrypt(pt, format="raw")
    assert len(ct) == 97 + len(pt) and ct[0] == 4
    # gmssl's C1C3C2 (mode=1) is x || y || C3 || C2 without the 04 prefix.
    assert gmssl_for(priv.public_key(), priv).decrypt(ct[1:]) == pt
    assert priv.decrypt(ct, format="raw") == pt


@INTEROP
@given(d=scalars, pt=plaintexts)
def test_encrypt_in_gmssl_decrypt_here(d: bytes, pt: bytes) -> None:
    priv = gm.SM2PrivateKey.from_bytes(d)
    ct = gmssl_for(priv.public_key()).encrypt(pt)
    assume(ct is not None)  # gmssl gives up when the KDF output is all zero (short messages)
    assert priv.decrypt(b"\x04" + ct, format="raw") == pt


@LOCAL
@given(pt=plaintexts)
def test_der_and_raw_ciphertexts(pt: bytes) -> None:
    pub = _KEY.public_key()
    der = pub.encrypt(pt)
    assert der[0] == 0x30
    assert _KEY.decrypt(der) == pt
    assert _KEY.decrypt(pub.encrypt(pt, format="raw"), format="raw") == pt


def test_key_serialisation_round_trips() -> None:
    priv = gm.SM2PrivateKey.generate()
    pub = priv.public_key()
    assert len(priv.to_bytes()) == 32 and len(pub.to_bytes()) == 65
    for again in [
        gm.SM2PrivateKey.from_bytes(priv.to_bytes()),
        gm.SM2PrivateKey.from_der(priv.to_der()),
        gm.SM2PrivateKey.from_pem(priv.to_pem()),
        gm.SM2PrivateKey.from_pem(priv.to_pem().decode()),
    ]:
        assert again.to_bytes() == priv.to_bytes()
        assert again.public_key() == pub
    assert priv.to_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.to_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    for again_pub in [
        gm.SM2PublicKey.from_bytes(pub.to_bytes()),
        gm.SM2PublicKey.from_der(pub.to_der()),
        gm.SM2PublicKey.from_pem(pub.to_pem()),
    ]:
        assert again_pub == pub and hash(again_pub) == hash(pub)
        again_pub.verify(priv.sign(b"m"), b"m")
    assert priv.to_bytes().hex() not in repr(priv)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_openssl_cli_interop(tmp_path: Path) -> None:
    # A key made by the openssl command loads here, in PKCS#8 and in SEC1 form, and our
    # public PEM is what openssl derives from it.
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "SM2", "-out", str(key)], check=True)
    priv = gm.SM2PrivateKey.from_pem(key.read_bytes())
    pub_pem = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout"], check=True, capture_output=True
    ).stdout
    assert gm.SM2PublicKey.from_pem(pub_pem) == priv.public_key()
    sec1 = subprocess.run(
        ["openssl", "ec", "-in", str(key)], check=True, capture_output=True
    ).stdout
    assert b"-----BEGIN PRIVATE KEY-----" not in sec1  # SEC1 ("SM2 PRIVATE KEY")
    assert gm.SM2PrivateKey.from_pem(sec1).to_bytes() == priv.to_bytes()
    # And the other way: openssl reads what we write.
    ours = tmp_path / "ours.pem"
    ours.write_bytes(priv.to_pem())
    text = subprocess.run(
        ["openssl", "pkey", "-in", str(ours), "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "SM2" in text
    # An encrypted PEM is refused (ValueError), never a passphrase prompt.
    enc = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret"],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    assert b"ENCRYPTED" in enc
    with pytest.raises(ValueError):
        gm.SM2PrivateKey.from_pem(enc)


# ---- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "d",
    [
        b"",
        b"\x01" * 31,
        b"\x01" * 33,
        b"\0" * 32,
        (N - 1).to_bytes(32, "big"),
        N.to_bytes(32, "big"),
        (N + 5).to_bytes(32, "big"),
        b"\xff" * 32,
    ],
    ids=["empty", "31", "33", "zero", "n-1", "n", "n+5", "max"],
)
def test_bad_private_scalar(d: bytes) -> None:
    with pytest.raises(ValueError) as exc:
        gm.SM2PrivateKey.from_bytes(d)
    assert d.hex() not in str(exc.value) or not d


def test_boundary_private_scalars_accepted() -> None:
    for d in (1, 2, N - 2):
        k = gm.SM2PrivateKey.from_bytes(d.to_bytes(32, "big"))
        k.public_key().verify(k.sign(b"x"), b"x")


def _bad_points() -> list[bytes]:
    good = _KEY.public_key().to_bytes()
    x, y = good[1:33], good[33:]
    y_bad = (int.from_bytes(y, "big") ^ 1).to_bytes(32, "big")
    return [
        b"",
        good[:64],
        good + b"\0",
        b"\x02" + x + y,
        b"\x05" + x + y,
        b"\x04" + x + y_bad,  # off the curve
        b"\x04" + P.to_bytes(32, "big") + y,  # x >= p
        b"\x04" + b"\0" * 64,
        b"\x02" + x,  # compressed is not accepted by from_bytes
    ]


@pytest.mark.parametrize("pt", _bad_points())
def test_bad_public_point(pt: bytes) -> None:
    with pytest.raises(ValueError):
        gm.SM2PublicKey.from_bytes(pt)


@LOCAL
@given(junk=st.binary(max_size=300))
def test_junk_keys_rejected(junk: bytes) -> None:
    for loader in (
        gm.SM2PrivateKey.from_der,
        gm.SM2PrivateKey.from_pem,
        gm.SM2PublicKey.from_der,
        gm.SM2PublicKey.from_pem,
        gm.SM2PublicKey.from_bytes,
    ):
        with pytest.raises(ValueError):
            loader(junk)


def test_encoded_keys_wrong_kind_curve_or_framing() -> None:
    priv = gm.SM2PrivateKey.generate()
    der, pub_der = priv.to_der(), priv.public_key().to_der()
    for bad in [der[:-1], der + b"\0", der[: len(der) // 2], pub_der]:
        with pytest.raises(ValueError):
            gm.SM2PrivateKey.from_der(bad)
    for bad in [pub_der[:-1], pub_der + b"\0", der]:
        with pytest.raises(ValueError):
            gm.SM2PublicKey.from_der(bad)
    with pytest.raises(ValueError):
        gm.SM2PublicKey.from_pem(priv.to_pem())
    # PKCS#8 whose stored public point (the DER's last 65 bytes here) is not d * G.
    other = gm.SM2PrivateKey.generate().public_key().to_bytes()
    assert der.endswith(priv.public_key().to_bytes())
    with pytest.raises(ValueError):
        gm.SM2PrivateKey.from_der(der[:-65] + other)
    # A NIST P-256 key is not an SM2 key.
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256_der = p256.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    p256_pub = p256.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError):
        gm.SM2PrivateKey.from_der(p256_der)
    with pytest.raises(ValueError):
        gm.SM2PublicKey.from_der(p256_pub)
    with pytest.raises(TypeError):
        gm.SM2PrivateKey.from_der("not bytes")  # type: ignore[arg-type]


def _der_sig(r: bytes, s: bytes) -> bytes:
    def i(v: bytes) -> bytes:
        return b"\x02" + bytes([len(v)]) + v

    body = i(r) + i(s)
    return b"\x30" + bytes([len(body)]) + body


def test_bad_signatures() -> None:
    pub = _KEY.public_key()
    m = b"message"
    der = _KEY.sign(m)
    raw = _KEY.sign(m, format="raw")
    r, s = raw[:32], raw[32:]
    n = N.to_bytes(32, "big")
    bad_der = [
        b"",
        der[:-1],
        der + b"\0",
        b"\x31" + der[1:],
        _der_sig(b"\0" + r, s) if r[0] < 0x80 else _der_sig(b"\0\0" + r, s),  # not minimal
        _der_sig(b"\0", s),  # r = 0
        _der_sig(b"\0" + n, s),  # r = n
        _der_sig(r if r[0] < 0x80 else b"\0" + r, b"\0"),  # s = 0
    ]
    for sig in bad_der:
        with pytest.raises(gm.InvalidSignature):
            pub.verify(sig, m)
    for sig in [b"", raw[:63], raw + b"\0", b"\0" * 64, n + s, r + n]:
        with pytest.raises(gm.InvalidSignature):
            pub.verify(sig, m, format="raw")
    with pytest.raises(ValueError):
        pub.verify(der, m, format="pem")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pub.verify("sig", m)  # type: ignore[arg-type]


@LOCAL
@given(junk=st.binary(max_size=120), fmt=st.sampled_from(["der", "raw"]))
def test_junk_signatures_rejected(junk: bytes, fmt: Any) -> None:
    with pytest.raises(gm.InvalidSignature):
        _KEY.public_key().verify(junk, b"m", format=fmt)


def test_bad_ciphertexts() -> None:
    pub = _KEY.public_key()
    pt = b"attack at dawn"
    raw = pub.encrypt(pt, format="raw")
    der = pub.encrypt(pt)
    # Framing errors and C1 off the curve are plain ValueErrors, not decryption failures.
    y_bad = (int.from_bytes(raw[33:65], "big") ^ 1).to_bytes(32, "big")
    for bad in [b"", raw[:97], b"\x02" + raw[1:], raw[:33] + y_bad + raw[65:]]:
        with pytest.raises(ValueError) as exc:
            _KEY.decrypt(bad, format="raw")
        assert not isinstance(exc.value, gm.DecryptionError)
    for bad in [b"", der[:-1], der + b"\0", b"\x31" + der[1:], raw]:
        with pytest.raises(ValueError):
            _KEY.decrypt(bad)
    # Well-formed but tampered, or the wrong key: DecryptionError.
    for i in (70, 96, 97, len(raw) - 1):
        t = bytearray(raw)
        t[i] ^= 0x80
        with pytest.raises(gm.DecryptionError):
            _KEY.decrypt(bytes(t), format="raw")
    with pytest.raises(gm.DecryptionError):
        gm.SM2PrivateKey.generate().decrypt(der)
    with pytest.raises(ValueError, match="empty"):
        pub.encrypt(b"")
    with pytest.raises(TypeError):
        pub.encrypt("text")  # type: ignore[arg-type]


@LOCAL
@given(junk=st.binary(max_size=400), fmt=st.sampled_from(["der", "raw"]))
def test_junk_ciphertexts_rejected(junk: bytes, fmt: Any) -> None:
    with pytest.raises(ValueError):
        _KEY.decrypt(junk, format=fmt)
    with pytest.raises(ValueError):
        _KEY.decrypt(b"\x04" + junk, format=fmt)


def test_bad_uid_and_digest() -> None:
    with pytest.raises(ValueError):
        _KEY.sign(b"m", b"u" * 8192)
    _KEY.public_key().verify(_KEY.sign(b"m", b"u" * 8191), b"m", b"u" * 8191)
    with pytest.raises(TypeError):
        _KEY.sign(b"m", "1234567812345678")  # type: ignore[arg-type]
    for e in [b"", b"e" * 31, b"e" * 33]:
        with pytest.raises(ValueError):
            _KEY.sign_digest(e)
        with pytest.raises(ValueError):
            _KEY.public_key().verify_digest(b"\x30\x00", e)


def test_many_keys_are_distinct() -> None:
    keys = {gm.SM2PrivateKey.generate().to_bytes() for _ in range(20)}
    assert len(keys) == 20
