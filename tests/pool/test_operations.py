"""Round trips of every pool operation on a three-token SoftHSM2 partition."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from hsmpool import (
    DecryptionError,
    InvalidBlobError,
    InvalidTagError,
    KeyBlob,
    KeySpec,
    Pool,
    SignAlgorithm,
)
from hsmpool.instance import Instance
from tests.conftest import pool_toml

MEMBERS = ("t0", "t1", "t2")


@pytest.fixture(scope="module")
def pool(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    cfg = tmp_path_factory.mktemp("ops") / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"a": [0, 1, 2]}))
    with Pool.open(cfg) as p:
        yield p


@pytest.fixture(scope="module")
def inst(pool: Pool) -> Instance:
    return pool.instance("a")


def test_every_member_holds_the_domain_keys(inst: Instance) -> None:
    assert [m.name for m in inst.members] == list(MEMBERS)
    for m in inst.members:
        assert set(m.domain_keys) == {"kek", "swkek"}


@pytest.mark.parametrize("size", [0, 1, 32, 4096, 65536])
def test_aes_gcm_round_trip_on_every_member(inst: Instance, size: int) -> None:
    key = inst.generate(KeySpec.AES_256)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for maker in MEMBERS:
        ct = inst.only(maker).encrypt(key, data, b"ctx")
        assert len(ct) == 12 + size + 16
        for user in MEMBERS:
            assert inst.only(user).decrypt(key, ct, b"ctx") == data


def test_fresh_nonces_and_aad_binding(inst: Instance) -> None:
    """Two encryptions of the same plaintext differ (fresh nonces); the tag covers the AAD."""
    key = inst.generate(KeySpec.AES_256)
    a, b = inst.encrypt(key, b"same", b""), inst.encrypt(key, b"same", b"")
    assert a[:12] != b[:12] and a != b
    with pytest.raises(InvalidTagError):
        inst.decrypt(key, a, b"x")


@pytest.mark.parametrize("index", [0, 5, 12, 20, -1])
def test_tampered_gcm_ciphertext_fails(inst: Instance, index: int) -> None:
    key = inst.generate(KeySpec.AES_256)
    ct = bytearray(inst.encrypt(key, b"attack at dawn", b"aad"))
    ct[index] ^= 0x01
    with pytest.raises(InvalidTagError):
        inst.decrypt(key, bytes(ct), b"aad")


def test_blob_survives_serialisation(inst: Instance) -> None:
    key = inst.generate(KeySpec.AES_256)
    raw = bytes(key)
    assert KeyBlob.parse(raw) == key
    ct = inst.encrypt(raw, b"x")
    assert inst.decrypt(key, ct) == b"x"


@pytest.mark.parametrize("spec", [KeySpec.RSA_2048, KeySpec.EC_P256, KeySpec.EC_SECP256K1])
def test_signatures_verify_with_cryptography(inst: Instance, spec: KeySpec) -> None:
    key = inst.generate(spec)
    pub = serialization.load_der_public_key(inst.public_key(key))
    algs = [a for a in SignAlgorithm if a.family.startswith("RSA") == spec.is_rsa]
    for member in MEMBERS:
        for alg in algs:
            msg = f"message for {alg.value} on {member}".encode()
            sig = inst.only(member).sign(key, msg, alg)
            h = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                 "sha512": hashes.SHA512()}[alg.hash_name]
            if isinstance(pub, rsa.RSAPublicKey):
                pad = (padding.PKCS1v15() if alg.family == "RSA"
                       else padding.PSS(padding.MGF1(h), h.digest_size))
                pub.verify(sig, msg, pad, h)
            else:
                assert isinstance(pub, ec.EllipticCurvePublicKey)
                pub.verify(sig, msg, ec.ECDSA(h))
            assert inst.verify(key, msg, sig, alg)
            assert not inst.verify(key, msg + b"!", sig, alg)


def test_sign_digest_equals_sign_message(inst: Instance) -> None:
    key = inst.generate(KeySpec.EC_P256)
    digest = hashlib.sha256(b"hello").digest()
    sig = inst.sign_digest(key, digest, SignAlgorithm.ECDSA_SHA256)
    assert inst.verify(key, b"hello", sig, SignAlgorithm.ECDSA_SHA256)
    assert inst.verify(key, digest, sig, SignAlgorithm.ECDSA_SHA256, is_digest=True)
    pub = serialization.load_der_public_key(inst.public_key(key))
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    with pytest.raises(ValueError):
        inst.sign_digest(key, digest[:-1], SignAlgorithm.ECDSA_SHA256)


@pytest.mark.parametrize("spec", [KeySpec.RSA_3072, KeySpec.RSA_4096])
def test_large_rsa_keys(inst: Instance, spec: KeySpec) -> None:
    key = inst.generate(spec)
    pub = serialization.load_der_public_key(inst.public_key(key))
    assert isinstance(pub, rsa.RSAPublicKey)
    assert pub.key_size == {KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}[spec]
    sig = inst.sign(key, b"m", SignAlgorithm.RSA_PSS_SHA512)
    assert inst.verify(key, b"m", sig, SignAlgorithm.RSA_PSS_SHA512)


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_rsa_oaep_decrypt(inst: Instance, hash_name: str) -> None:
    key = inst.generate(KeySpec.RSA_2048)
    pub = serialization.load_der_public_key(inst.public_key(key))
    assert isinstance(pub, rsa.RSAPublicKey)
    h = hashes.SHA1() if hash_name == "sha1" else hashes.SHA256()
    for msg in (b"", b"k" * 32, b"m" * (256 - 2 * h.digest_size - 2)):
        ct = pub.encrypt(msg, padding.OAEP(padding.MGF1(h), h, None))
        for member in MEMBERS:
            assert inst.only(member).rsa_decrypt(key, ct, hash_name) == msg
    other = inst.generate(KeySpec.RSA_2048)
    ct = pub.encrypt(b"secret", padding.OAEP(padding.MGF1(h), h, None))
    with pytest.raises(DecryptionError):
        inst.rsa_decrypt(other, ct, hash_name)
    wrong = hashes.SHA256() if hash_name == "sha1" else hashes.SHA1()
    ct = pub.encrypt(b"secret", padding.OAEP(padding.MGF1(wrong), wrong, None))
    with pytest.raises(DecryptionError):
        inst.rsa_decrypt(key, ct, hash_name)


@pytest.mark.parametrize("spec", [KeySpec.HMAC_SHA256, KeySpec.HMAC_SHA384, KeySpec.HMAC_SHA512])
def test_hmac(inst: Instance, spec: KeySpec) -> None:
    key = inst.generate(spec)
    macs = {inst.only(m).hmac(key, b"data") for m in MEMBERS}
    assert len(macs) == 1
    mac = macs.pop()
    assert len(mac) == {KeySpec.HMAC_SHA256: 32, KeySpec.HMAC_SHA384: 48,
                        KeySpec.HMAC_SHA512: 64}[spec]
    assert inst.verify_hmac(key, b"data", mac)
    assert not inst.verify_hmac(key, b"datb", mac)
    assert not inst.verify_hmac(key, b"data", mac[:-1])
    assert inst.hmac(inst.generate(spec), b"data") != mac


def test_software_secret_round_trip(inst: Instance) -> None:
    material = bytes(range(16))
    blob = inst.import_secret(material)
    for member in MEMBERS:
        assert inst.only(member).export_secret(blob) == material
    gen = inst.generate_secret(32)
    assert len(inst.export_secret(gen)) == 32
    assert inst.export_secret(gen) != inst.export_secret(inst.generate_secret(32))


def test_hsm_key_material_never_exported(inst: Instance) -> None:
    key = inst.generate(KeySpec.AES_256)
    with pytest.raises(InvalidBlobError):
        inst.export_secret(key)
    # Relabelling the blob as SECRET does not help: it is wrapped under the other domain key.
    forged = KeyBlob.build(KeySpec.SECRET, inst.kek_ids["swkek"], b"", key.wrapped)
    with pytest.raises(InvalidBlobError):
        inst.export_secret(forged)


def test_random(inst: Instance) -> None:
    a, b = inst.random(64), inst.random(64)
    assert len(a) == 64 and a != b
    assert inst.random(0) == b""
    with pytest.raises(ValueError):
        inst.random(-1)


def test_public_key_export_is_spki(inst: Instance) -> None:
    for spec in (KeySpec.EC_P256, KeySpec.RSA_2048):
        der = inst.public_key(inst.generate(spec))
        assert der[0] == 0x30
        serialization.load_der_public_key(der)
    with pytest.raises(InvalidBlobError):
        inst.public_key(inst.generate(KeySpec.AES_256))


def test_invalidate_drops_cached_handles(inst: Instance) -> None:
    key = inst.generate(KeySpec.AES_256)
    ct = inst.only("t0").encrypt(key, b"x")
    m0 = inst.members[0]
    assert m0.cached_handle(key.raw) is not None
    inst.invalidate(key)
    assert m0.cached_handle(key.raw) is None
    assert inst.only("t0").decrypt(key, ct) == b"x"


def test_stats_count_operations(pool: Pool, inst: Instance) -> None:
    before = pool.stats()["t1"].ops
    key = inst.generate(KeySpec.AES_256)
    for _ in range(10):
        inst.only("t1").encrypt(key, b"x")
    st = pool.stats()["t1"]
    assert st.ops >= before + 10
    assert st.state == "healthy" and st.in_flight == 0
    assert 0 < st.p50_ms <= st.p99_ms


def test_import_key_material(inst: Instance) -> None:
    """BYOK: imported keys behave like the same key outside (checked with cryptography)."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = os.urandom(32)
    aes = inst.import_key(KeySpec.AES_256, raw)
    ct = inst.encrypt(aes, b"imported", b"aad")
    assert AESGCM(raw).decrypt(ct[:12], ct[12:], b"aad") == b"imported"
    nonce = os.urandom(12)
    assert inst.decrypt(aes, nonce + AESGCM(raw).encrypt(nonce, b"x", b""), b"") == b"x"

    import hmac as std_hmac
    mac_key = os.urandom(32)
    blob = inst.import_key(KeySpec.HMAC_SHA256, mac_key)
    assert inst.hmac(blob, b"m") == std_hmac.new(mac_key, b"m", hashlib.sha256).digest()

    for spec, private in ((KeySpec.RSA_2048, rsa.generate_private_key(65537, 2048)),
                          (KeySpec.EC_P256, ec.generate_private_key(ec.SECP256R1())),
                          (KeySpec.EC_SECP256K1, ec.generate_private_key(ec.SECP256K1()))):
        der = private.private_bytes(serialization.Encoding.DER,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        blob = inst.import_key(spec, der)
        alg = SignAlgorithm.RSA_PSS_SHA256 if spec.is_rsa else SignAlgorithm.ECDSA_SHA256
        sig = inst.sign(blob, b"msg", alg)
        pub = private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, b"msg", padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                       hashes.SHA256())
        else:
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            pub.verify(sig, b"msg", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ValueError):
        inst.import_key(KeySpec.AES_256, b"short")
    with pytest.raises(ValueError):
        inst.import_key(KeySpec.RSA_2048, b"not der")
    with pytest.raises(ValueError):
        inst.import_key(KeySpec.RSA_3072, der)  # an EC key is not an RSA_3072 key
