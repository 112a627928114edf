"""BYOK end to end: the test wraps material as a customer would (cryptography's RSA-OAEP and
AES-KWP, hsmpool.gm's SM2 encryption), imports it through the service into real SoftHSM2
tokens (instance "imp" on tokens 6 and 7) with a SQLite store, and proves the imported key is
that material by checking the service's outputs with the customer's own copy of it."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from hsmpool import Pool
from hsmpool.gm import SM4GCM, SM2PrivateKey, SM2PublicKey, hmac_sm3
from kms import KeyRecord, KeyState, Kms, KmsClient, Store
from kms import ciphertext as ctf
from kms import errors as E
from kms.audit import AuditLog
from kms.config import KmsSettings
from kms.keys.importing import ImportParameters
from kms.store import is_url, open_store
from tests.conftest import pool_toml
from tests.database import connect, database_for, dump

INSTANCE = "imp"
DAY = 86400.0
T0 = 1_800_000_000.0
TTL = 3600.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@dataclass
class Svc:
    kms: Kms
    client: KmsClient
    clock: Clock
    db: str  # the store's [kms] database (tests/database.py)
    audit_dir: Path


@pytest.fixture(scope="module")
def imp_pool(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    cfg = tmp_path_factory.mktemp("kms-import") / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {INSTANCE: [6, 7]}))
    with Pool.open(cfg) as pool:
        yield pool


def open_kms(pool: Pool, db: str, audit_dir: Path, clock: Clock, segment: str) -> Kms:
    settings = KmsSettings(database=db, audit_dir=str(audit_dir), import_token_ttl=TTL)
    store = open_store(db) if is_url(db) else Store(db, sync=False)
    return Kms(pool, store, settings,
               audit=AuditLog(audit_dir, segment, sync=False), now=clock)


@pytest.fixture
def svc(imp_pool: Pool, tmp_path: Path) -> Iterator[Svc]:
    clock = Clock()
    db, audit_dir = database_for(tmp_path / "kms.db"), tmp_path / "audit"
    kms = open_kms(imp_pool, db, audit_dir, clock, "w0")
    try:
        yield Svc(kms, kms.client(INSTANCE), clock, db, audit_dir)
    finally:
        kms.close()


# --- the customer's side -----------------------------------------------------------------


def oaep(h: str) -> padding.OAEP:
    alg: hashes.HashAlgorithm = hashes.SHA1() if h == "SHA_1" else hashes.SHA256()
    return padding.OAEP(padding.MGF1(alg), alg, None)


def wrap(params: ImportParameters, algorithm: str, material: bytes) -> bytes:
    """Encrypt material for import, as a customer does with the downloaded public key."""
    if algorithm == "SM2PKE":
        return SM2PublicKey.from_der(params.public_key).encrypt(material)
    pub = serialization.load_der_public_key(params.public_key)
    assert isinstance(pub, rsa.RSAPublicKey)
    if algorithm.startswith("RSAES_OAEP_"):
        return pub.encrypt(material, oaep(algorithm.removeprefix("RSAES_OAEP_")))
    aes = os.urandom(32)
    return (pub.encrypt(aes, oaep(algorithm.removeprefix("RSA_AES_KEY_WRAP_")))
            + aes_key_wrap_with_padding(aes, material))


def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def new_material(spec: str) -> bytes:
    if spec == "SYMMETRIC_DEFAULT":
        return os.urandom(32)
    if spec == "SM4":
        return os.urandom(16)
    if spec in ("HMAC_256", "HMAC_SM3"):
        return os.urandom(32)
    if spec == "HMAC_384":
        return os.urandom(48)
    if spec == "HMAC_512":
        return os.urandom(100)
    if spec.startswith("RSA_"):
        return pkcs8(rsa.generate_private_key(65537, int(spec[4:])))
    if spec == "ECC_NIST_P256":
        return pkcs8(ec.generate_private_key(ec.SECP256R1()))
    if spec == "ECC_SECG_P256K1":
        return pkcs8(ec.generate_private_key(ec.SECP256K1()))
    if spec == "SM2":
        return SM2PrivateKey.generate().to_der()
    raise AssertionError(spec)


def do_import(c: KmsClient, key_id: str, material: bytes, algorithm: str = "RSAES_OAEP_SHA_256",
              wrapping_spec: str = "RSA_2048", valid_to: float | None = None,
              expiration_model: str = "KEY_MATERIAL_DOES_NOT_EXPIRE") -> KeyRecord:
    params = c.get_parameters_for_import(key_id, algorithm, wrapping_spec)
    return c.import_key_material(key_id, params.import_token,
                                 wrap(params, algorithm, material), valid_to, expiration_model)


def check_symmetric(c: KmsClient, key_id: str, spec: str, material: bytes) -> bytes:
    """Encrypt with the service; open the body with the customer's own copy of the key."""
    context = {"purpose": "byok", "n": "1"}
    blob = c.encrypt(key_id, b"imported material works", context).ciphertext_blob
    aad = blob[:ctf.HEADER_LEN] + ctf.canonical_context(context)
    body = blob[ctf.HEADER_LEN:]
    nonce, rest = body[:ctf.NONCE_LEN], body[ctf.NONCE_LEN:]
    if spec == "SYMMETRIC_DEFAULT":
        assert blob[17] == ctf.ALG_AES_GCM
        assert AESGCM(material).decrypt(nonce, rest, aad) == b"imported material works"
    else:
        assert blob[17] == ctf.ALG_SM4_GCM
        assert SM4GCM(material).decrypt(nonce, rest, aad) == b"imported material works"
    # and the other way round: the customer seals, the service opens
    hdr = blob[:ctf.HEADER_LEN]
    n2 = os.urandom(ctf.NONCE_LEN)
    aad2 = hdr + ctf.canonical_context(context)
    sealed = (AESGCM(material).encrypt(n2, b"from outside", aad2) if spec == "SYMMETRIC_DEFAULT"
              else SM4GCM(material).encrypt(n2, b"from outside", aad2))
    assert c.decrypt(hdr + n2 + sealed, context).plaintext == b"from outside"
    return blob


def check_usable(c: KmsClient, key_id: str, spec: str, material: bytes) -> None:
    msg = b"a message to authenticate"
    if spec in ("SYMMETRIC_DEFAULT", "SM4"):
        check_symmetric(c, key_id, spec, material)
    elif spec.startswith("HMAC_"):
        mac, _ = c.generate_mac(key_id, msg, {"HMAC_256": "HMAC_SHA_256",
                                              "HMAC_384": "HMAC_SHA_384",
                                              "HMAC_512": "HMAC_SHA_512",
                                              "HMAC_SM3": "HMAC_SM3"}[spec])
        if spec == "HMAC_SM3":
            assert mac == hmac_sm3(material, msg)
        else:
            assert mac == hmac.new(material, msg, "sha" + spec[5:]).digest()
    elif spec == "SM2":
        priv = SM2PrivateKey.from_der(material)
        sig, _ = c.sign(key_id, msg, "SM2DSA")
        priv.public_key().verify(sig, msg)
        assert c.get_public_key(key_id).public_key == priv.public_key().to_der()
    elif spec.startswith("RSA_"):
        key = serialization.load_der_private_key(material, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        assert c.get_public_key(key_id).public_key == spki(key)
        sig, _ = c.sign(key_id, msg, "RSASSA_PSS_SHA_256")
        key.public_key().verify(sig, msg, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                hashes.SHA256())
        sig, _ = c.sign(key_id, msg, "RSASSA_PKCS1_V1_5_SHA_384")
        key.public_key().verify(sig, msg, padding.PKCS1v15(), hashes.SHA384())
    else:
        key = serialization.load_der_private_key(material, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert c.get_public_key(key_id).public_key == spki(key)
        sig, _ = c.sign(key_id, msg, "ECDSA_SHA_256")
        key.public_key().verify(sig, msg, ec.ECDSA(hashes.SHA256()))


# --- every wrapping algorithm with matching key specs ------------------------------------

CASES = [
    ("RSAES_OAEP_SHA_1", "RSA_2048", "SYMMETRIC_DEFAULT"),
    ("RSAES_OAEP_SHA_256", "RSA_3072", "SYMMETRIC_DEFAULT"),
    ("RSAES_OAEP_SHA_256", "RSA_2048", "HMAC_256"),
    ("RSAES_OAEP_SHA_1", "RSA_2048", "HMAC_384"),
    ("RSAES_OAEP_SHA_256", "RSA_4096", "HMAC_512"),
    ("RSAES_OAEP_SHA_1", "RSA_3072", "SM4"),
    ("RSAES_OAEP_SHA_256", "RSA_2048", "ECC_NIST_P256"),
    ("RSA_AES_KEY_WRAP_SHA_1", "RSA_2048", "RSA_2048"),
    ("RSA_AES_KEY_WRAP_SHA_256", "RSA_4096", "RSA_3072"),
    ("RSA_AES_KEY_WRAP_SHA_256", "RSA_3072", "RSA_4096"),
    ("RSA_AES_KEY_WRAP_SHA_1", "RSA_3072", "ECC_SECG_P256K1"),
    ("RSA_AES_KEY_WRAP_SHA_256", "RSA_2048", "SYMMETRIC_DEFAULT"),
    ("SM2PKE", "SM2", "SM4"),
    ("SM2PKE", "SM2", "SM2"),
    ("SM2PKE", "SM2", "HMAC_SM3"),
    ("SM2PKE", "SM2", "SYMMETRIC_DEFAULT"),
]


@pytest.mark.parametrize(("algorithm", "wrapping_spec", "spec"), CASES,
                         ids=["-".join(c) for c in CASES])
def test_import_every_wrapping_algorithm(svc: Svc, algorithm: str, wrapping_spec: str,
                                         spec: str) -> None:
    c = svc.client
    key = c.create_key(spec, "SIGN_VERIFY" if spec.startswith("RSA_") else None,
                       origin="EXTERNAL")
    assert key.state is KeyState.PENDING_IMPORT
    material = new_material(spec)
    params = c.get_parameters_for_import(key.key_id, algorithm, wrapping_spec)
    assert params.key_id == key.arn
    assert len(params.import_token) == 32
    assert params.parameters_valid_to == T0 + TTL
    if wrapping_spec == "SM2":
        SM2PublicKey.from_der(params.public_key)
    else:
        pub = serialization.load_der_public_key(params.public_key)
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == int(wrapping_spec[4:])
    rec = c.import_key_material(key.key_id, params.import_token,
                                wrap(params, algorithm, material))
    assert rec.state is KeyState.ENABLED
    assert rec.import_valid_to is None
    versions = c.list_key_rotations(key.key_id)
    assert [(v.number, v.imported) for v in versions] == [(1, True)]
    assert rec.primary_version == versions[0].version_id
    check_usable(c, key.key_id, spec, material)
    # the token was consumed
    with pytest.raises(E.InvalidImportToken):
        c.import_key_material(key.key_id, params.import_token, wrap(params, algorithm, material))


def test_sm2_raw_scalar_and_raw_ciphertext(svc: Svc) -> None:
    """SM2 material as the raw 32-byte scalar; SM2PKE ciphertext in the raw C1C3C2 form."""
    c = svc.client
    key = c.create_key("SM2", origin="EXTERNAL")
    priv = SM2PrivateKey.generate()
    params = c.get_parameters_for_import(key.key_id, "SM2PKE", "SM2")
    wrapped = SM2PublicKey.from_der(params.public_key).encrypt(priv.to_bytes(), format="raw")
    c.import_key_material(key.key_id, params.import_token, wrapped)
    check_usable(c, key.key_id, "SM2", priv.to_der())


def test_imported_sm2_key_decrypts(svc: Svc) -> None:
    c = svc.client
    key = c.create_key("SM2", "ENCRYPT_DECRYPT", origin="EXTERNAL")
    priv = SM2PrivateKey.generate()
    do_import(c, key.key_id, priv.to_der(), "SM2PKE", "SM2")
    assert c.get_public_key(key.key_id).public_key == priv.public_key().to_der()
    ct = priv.public_key().encrypt(b"hello SM2")
    out = c.decrypt(ct, key_id=key.key_id, encryption_algorithm="SM2PKE")
    assert out.plaintext == b"hello SM2"


def test_imported_rsa_key_decrypts(svc: Svc) -> None:
    c = svc.client
    key = c.create_key("RSA_2048", "ENCRYPT_DECRYPT", origin="EXTERNAL")
    rsa_key = rsa.generate_private_key(65537, 2048)
    do_import(c, key.key_id, pkcs8(rsa_key), "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
    for h in ("SHA_1", "SHA_256"):
        ct = rsa_key.public_key().encrypt(b"for the imported key", oaep(h))
        out = c.decrypt(ct, key_id=key.key_id, encryption_algorithm="RSAES_OAEP_" + h)
        assert out.plaintext == b"for the imported key"


# --- tokens ----------------------------------------------------------------------------


def test_wrong_and_malformed_tokens(svc: Svc) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    material = os.urandom(32)
    params = c.get_parameters_for_import(key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    wrapped = wrap(params, "RSAES_OAEP_SHA_256", material)
    for bad in (os.urandom(32), params.import_token[:-1], params.import_token + b"\0", b"",
                "not bytes", None):
        with pytest.raises(E.InvalidImportToken):
            c.import_key_material(key.key_id, bad, wrapped)  # type: ignore[arg-type]
    # still usable after the failures
    assert c.import_key_material(key.key_id, params.import_token, wrapped).state is \
        KeyState.ENABLED
    check_symmetric(c, key.key_id, "SYMMETRIC_DEFAULT", material)


def test_token_of_another_key(svc: Svc) -> None:
    c = svc.client
    a = c.create_key(origin="EXTERNAL")
    b = c.create_key(origin="EXTERNAL")
    pa = c.get_parameters_for_import(a.key_id, "RSAES_OAEP_SHA_1", "RSA_2048")
    wrapped = wrap(pa, "RSAES_OAEP_SHA_1", os.urandom(32))
    with pytest.raises(E.InvalidImportToken):
        c.import_key_material(b.key_id, pa.import_token, wrapped)
    assert c.describe_key(b.key_id).state is KeyState.PENDING_IMPORT
    # a token from another instance's view of the same key id is no key at all
    c.import_key_material(a.key_id, pa.import_token, wrapped)


def test_expired_token(svc: Svc) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    params = c.get_parameters_for_import(key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    wrapped = wrap(params, "RSAES_OAEP_SHA_256", os.urandom(32))
    svc.clock.t += TTL  # valid up to, not including, the expiry instant
    with pytest.raises(E.ExpiredImportToken):
        c.import_key_material(key.key_id, params.import_token, wrapped)
    # an expired token is dropped: afterwards it is unknown
    with pytest.raises(E.InvalidImportToken):
        c.import_key_material(key.key_id, params.import_token, wrapped)
    assert c.describe_key(key.key_id).state is KeyState.PENDING_IMPORT


def test_token_just_before_expiry(svc: Svc) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    params = c.get_parameters_for_import(key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    svc.clock.t += TTL - 1
    c.import_key_material(key.key_id, params.import_token,
                          wrap(params, "RSAES_OAEP_SHA_256", os.urandom(32)))


def test_tokens_are_stored_hashed(svc: Svc) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    params = c.get_parameters_for_import(key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    db = connect(svc.db)
    try:
        ids = [r[0] for r in db.execute("SELECT token_id FROM import_tokens")]
    finally:
        db.close()
    assert ids == [hashlib.sha256(params.import_token).hexdigest()]
    assert params.import_token.hex() not in ids


# --- unwrapping failures -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm,wrapping_spec", [
    ("RSAES_OAEP_SHA_1", "RSA_2048"), ("RSAES_OAEP_SHA_256", "RSA_2048"),
    ("RSA_AES_KEY_WRAP_SHA_1", "RSA_2048"), ("RSA_AES_KEY_WRAP_SHA_256", "RSA_3072"),
    ("SM2PKE", "SM2")])
def test_tampered_wrapped_material(svc: Svc, algorithm: str, wrapping_spec: str) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    material = os.urandom(32)
    params = c.get_parameters_for_import(key.key_id, algorithm, wrapping_spec)
    wrapped = wrap(params, algorithm, material)
    spots = [0, len(wrapped) // 2, len(wrapped) - 1]
    if algorithm.startswith("RSA_AES"):
        spots.append(len(wrapped) - 5)  # inside the AES-KWP part
    for i in spots:
        bad = bytearray(wrapped)
        bad[i] ^= 0x01
        with pytest.raises(E.InvalidCiphertext):
            c.import_key_material(key.key_id, params.import_token, bytes(bad))
    with pytest.raises(E.InvalidCiphertext):
        c.import_key_material(key.key_id, params.import_token, wrapped[:-1])
    # wrapped for another wrapping key (a second set of parameters)
    other = c.get_parameters_for_import(key.key_id, algorithm, wrapping_spec)
    with pytest.raises(E.InvalidCiphertext):
        c.import_key_material(key.key_id, params.import_token,
                              wrap(other, algorithm, material))
    # the failures consumed nothing
    c.import_key_material(key.key_id, params.import_token, wrapped)
    check_symmetric(c, key.key_id, "SYMMETRIC_DEFAULT", material)


# --- material checks -------------------------------------------------------------------


def traditional_rsa() -> bytes:
    return rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())


@pytest.mark.parametrize("spec,make", [
    ("SYMMETRIC_DEFAULT", lambda: os.urandom(16)),
    ("SYMMETRIC_DEFAULT", lambda: os.urandom(33)),
    ("SM4", lambda: os.urandom(32)),
    ("HMAC_256", lambda: os.urandom(16)),
    ("HMAC_256", lambda: os.urandom(65)),
    ("HMAC_384", lambda: os.urandom(32)),
    ("HMAC_512", lambda: os.urandom(48)),
    ("HMAC_SM3", lambda: os.urandom(15)),
    ("RSA_2048", lambda: pkcs8(ec.generate_private_key(ec.SECP256R1()))),
    ("RSA_2048", lambda: pkcs8(rsa.generate_private_key(65537, 3072))),
    ("RSA_2048", traditional_rsa),
    ("RSA_2048", lambda: os.urandom(32)),
    ("ECC_NIST_P256", lambda: pkcs8(ec.generate_private_key(ec.SECP256K1()))),
    ("ECC_SECG_P256K1", lambda: pkcs8(ec.generate_private_key(ec.SECP384R1()))),
    ("SM2", lambda: pkcs8(ec.generate_private_key(ec.SECP256R1()))),
    ("SM2", lambda: b"\0" * 32),
    ("SM2", lambda: os.urandom(31)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_material_of_the_wrong_size_or_type(svc: Svc, spec: str, make: object) -> None:
    c = svc.client
    key = c.create_key(spec, origin="EXTERNAL")
    material = make()  # type: ignore[operator]
    alg, ws = (("RSA_AES_KEY_WRAP_SHA_256", "RSA_2048") if len(material) > 150
               else ("RSAES_OAEP_SHA_256", "RSA_2048"))
    with pytest.raises(E.IncorrectKeyMaterial):
        do_import(c, key.key_id, material, alg, ws)
    assert c.describe_key(key.key_id).state is KeyState.PENDING_IMPORT
    assert c.list_key_rotations(key.key_id) == ()


# --- re-import, delete, expiry -----------------------------------------------------------


def test_delete_then_reimport_same_material(svc: Svc) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    c.create_alias("alias/byok-1", key.key_id)
    material = os.urandom(32)
    do_import(c, key.key_id, material)
    ct = c.encrypt("alias/byok-1", b"kept across re-import").ciphertext_blob

    rec = c.delete_imported_key_material(key.key_id)
    assert rec.state is KeyState.PENDING_IMPORT and rec.primary_version is None
    with pytest.raises(E.InvalidState):
        c.decrypt(ct)
    with pytest.raises(E.InvalidState):
        c.encrypt(key.key_id, b"x")
    assert all(v.blob is None for v in svc.kms.store.list_versions(key.key_id))
    # aliases survive (as in AWS)
    assert c.describe_key("alias/byok-1").key_id == key.key_id

    # other material is refused, whatever the wrapping
    with pytest.raises(E.IncorrectKeyMaterial):
        do_import(c, key.key_id, os.urandom(32))
    with pytest.raises(E.IncorrectKeyMaterial):
        do_import(c, key.key_id, os.urandom(32), "SM2PKE", "SM2")
    # the same material, wrapped differently this time
    rec = do_import(c, key.key_id, material, "RSA_AES_KEY_WRAP_SHA_1", "RSA_3072")
    assert rec.state is KeyState.ENABLED
    assert c.decrypt(ct).plaintext == b"kept across re-import"
    assert [v.number for v in c.list_key_rotations(key.key_id)] == [1]
    check_symmetric(c, key.key_id, "SYMMETRIC_DEFAULT", material)


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "SM2", "HMAC_SM3", "SM4"])
def test_reimport_asymmetric_and_software_specs(svc: Svc, spec: str) -> None:
    c = svc.client
    key = c.create_key(spec, origin="EXTERNAL")
    material = new_material(spec)
    do_import(c, key.key_id, material, "SM2PKE", "SM2")
    public = b"" if spec in ("HMAC_SM3", "SM4") else c.get_public_key(key.key_id).public_key
    c.delete_imported_key_material(key.key_id)
    with pytest.raises(E.IncorrectKeyMaterial):
        do_import(c, key.key_id, new_material(spec), "SM2PKE", "SM2")
    if spec == "SM2":  # the same key in the other accepted encoding is the same material
        material = SM2PrivateKey.from_der(material).to_bytes()
    do_import(c, key.key_id, material, "SM2PKE", "SM2")
    if public:
        assert c.get_public_key(key.key_id).public_key == public
    check_usable(c, key.key_id, spec,
                 SM2PrivateKey.from_bytes(material).to_der() if spec == "SM2" else material)


def test_reimport_into_enabled_and_disabled_keys(svc: Svc) -> None:
    c = svc.client
    key = c.create_key("HMAC_256", origin="EXTERNAL")
    material = os.urandom(40)
    do_import(c, key.key_id, material)
    with pytest.raises(E.IncorrectKeyMaterial):
        do_import(c, key.key_id, os.urandom(40))
    # the same material again sets a new expiration; the state stays
    rec = do_import(c, key.key_id, material, valid_to=T0 + 10 * DAY,
                    expiration_model="KEY_MATERIAL_EXPIRES")
    assert rec.state is KeyState.ENABLED
    assert rec.import_valid_to == T0 + 10 * DAY
    c.disable_key(key.key_id)
    rec = do_import(c, key.key_id, material)
    assert rec.state is KeyState.DISABLED
    assert rec.import_valid_to is None
    c.enable_key(key.key_id)
    check_usable(c, key.key_id, "HMAC_256", material)
    assert [v.number for v in c.list_key_rotations(key.key_id)] == [1]


def test_expiry_via_run_due(svc: Svc) -> None:
    c = svc.client
    key = c.create_key("SM4", origin="EXTERNAL")
    material = os.urandom(16)
    rec = do_import(c, key.key_id, material, "SM2PKE", "SM2", valid_to=T0 + 2 * DAY,
                    expiration_model="KEY_MATERIAL_EXPIRES")
    assert rec.import_valid_to == T0 + 2 * DAY
    ct = c.encrypt(key.key_id, b"before expiry").ciphertext_blob
    svc.clock.t = T0 + 2 * DAY - 1
    assert svc.kms.run_due()["expired"] == []
    assert c.decrypt(ct).plaintext == b"before expiry"
    svc.clock.t = T0 + 2 * DAY
    assert svc.kms.run_due()["expired"] == [key.key_id]
    rec2 = c.describe_key(key.key_id)
    assert rec2.state is KeyState.PENDING_IMPORT and rec2.import_valid_to is None
    with pytest.raises(E.InvalidState):
        c.encrypt(key.key_id, b"after expiry")
    with pytest.raises(E.InvalidState):
        c.decrypt(ct)
    # re-import the same material: the old ciphertext opens again
    with pytest.raises(E.IncorrectKeyMaterial):
        do_import(c, key.key_id, os.urandom(16), "SM2PKE", "SM2")
    do_import(c, key.key_id, material, "SM2PKE", "SM2")
    assert c.decrypt(ct).plaintext == b"before expiry"
    check_symmetric(c, key.key_id, "SM4", material)


def test_expiration_arguments(svc: Svc) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    material = os.urandom(32)
    bad: list[tuple[str, float | None]] = [
        ("KEY_MATERIAL_EXPIRES", None),
        ("KEY_MATERIAL_EXPIRES", T0),
        ("KEY_MATERIAL_EXPIRES", T0 - 1),
        ("KEY_MATERIAL_EXPIRES", T0 + 365 * DAY + 1),
        ("KEY_MATERIAL_DOES_NOT_EXPIRE", T0 + DAY),
        ("SOMETIMES", None),
    ]
    for model, valid_to in bad:
        with pytest.raises(E.Validation):
            do_import(c, key.key_id, material, valid_to=valid_to, expiration_model=model)
    rec = do_import(c, key.key_id, material, expiration_model="KEY_MATERIAL_EXPIRES",
                    valid_to=T0 + 365 * DAY)
    assert rec.import_valid_to == T0 + 365 * DAY


# --- key origin, state, arguments ------------------------------------------------------


def test_not_external_and_pending_deletion(svc: Svc) -> None:
    c = svc.client
    own = c.create_key()
    with pytest.raises(E.UnsupportedOperation):
        c.get_parameters_for_import(own.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    with pytest.raises(E.UnsupportedOperation):
        c.delete_imported_key_material(own.key_id)
    ext = c.create_key(origin="EXTERNAL")
    params = c.get_parameters_for_import(ext.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    with pytest.raises(E.UnsupportedOperation):  # a token for an EXTERNAL key cannot help
        c.import_key_material(own.key_id, params.import_token,
                              wrap(params, "RSAES_OAEP_SHA_256", os.urandom(32)))
    material = os.urandom(32)
    c.import_key_material(ext.key_id, params.import_token,
                          wrap(params, "RSAES_OAEP_SHA_256", material))
    ct = c.encrypt(ext.key_id, b"x").ciphertext_blob
    params = c.get_parameters_for_import(ext.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    c.schedule_key_deletion(ext.key_id, 7)
    with pytest.raises(E.InvalidState):
        c.get_parameters_for_import(ext.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    with pytest.raises(E.InvalidState):
        c.import_key_material(ext.key_id, params.import_token,
                              wrap(params, "RSAES_OAEP_SHA_256", material))
    # deleting material of a key pending deletion keeps the state (AWS)
    rec = c.delete_imported_key_material(ext.key_id)
    assert rec.state is KeyState.PENDING_DELETION and rec.primary_version is None
    rec = c.cancel_key_deletion(ext.key_id)
    assert rec.state is KeyState.PENDING_IMPORT
    c.import_key_material(ext.key_id, params.import_token,
                          wrap(params, "RSAES_OAEP_SHA_256", material))
    assert c.decrypt(ct).plaintext == b"x"


@pytest.mark.parametrize("algorithm,wrapping_spec", [
    ("RSAES_OAEP_SHA_256", "SM2"), ("SM2PKE", "RSA_2048"), ("RSAES_PKCS1_V1_5", "RSA_2048"),
    ("RSAES_OAEP_SHA_256", "RSA_1024"), ("RSA_AES_KEY_WRAP_SHA_256", "ECC_NIST_P256")])
def test_bad_wrapping_arguments(svc: Svc, algorithm: str, wrapping_spec: str) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    with pytest.raises(E.Validation):
        c.get_parameters_for_import(key.key_id, algorithm, wrapping_spec)


def test_unknown_key_and_empty_material(svc: Svc) -> None:
    c = svc.client
    with pytest.raises(E.NotFound):
        c.get_parameters_for_import("00000000-0000-4000-8000-000000000000",
                                    "RSAES_OAEP_SHA_256", "RSA_2048")
    key = c.create_key(origin="EXTERNAL")
    params = c.get_parameters_for_import(key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    with pytest.raises(E.Validation):
        c.import_key_material(key.key_id, params.import_token, b"")


# --- persistence and secrecy -----------------------------------------------------------


def test_fingerprint_survives_reopening_and_reveals_nothing(svc: Svc, imp_pool: Pool,
                                                            tmp_path: Path) -> None:
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    material = os.urandom(32)
    do_import(c, key.key_id, material)
    ct = c.encrypt(key.key_id, b"persisted").ciphertext_blob
    c.delete_imported_key_material(key.key_id)
    assert svc.kms.store.schema_version >= 3
    salt, fp = svc.kms.store.material_fingerprint(key.key_id) or (b"", b"")
    assert len(salt) == 32 and len(fp) == 32
    assert fp != hashlib.sha256(material).digest()
    assert fp != hmac.new(salt, material, hashlib.sha256).digest()
    svc.kms.close()

    clock = Clock()
    kms2 = open_kms(imp_pool, svc.db, svc.audit_dir, clock, "w1")
    try:
        c2 = kms2.client(INSTANCE)
        with pytest.raises(E.IncorrectKeyMaterial):
            do_import(c2, key.key_id, os.urandom(32))
        do_import(c2, key.key_id, material, "SM2PKE", "SM2")
        assert c2.decrypt(ct).plaintext == b"persisted"
    finally:
        kms2.close()
    # neither the material nor a token-free copy of it is anywhere on disk, or in the rows
    stored = {str(path): path.read_bytes()
              for path in [*tmp_path.glob("kms.db*"), *svc.audit_dir.rglob("*")]
              if path.is_file()}
    stored["the store's rows"] = dump(svc.db)
    for where, data in stored.items():
        assert material not in data and material.hex().encode() not in data, where
    svc.kms = open_kms(imp_pool, database_for(tmp_path / "spare.db"), tmp_path / "audit2",
                       clock, "w2")


def test_audit_records_imports_without_material(svc: Svc) -> None:
    c = svc.client
    key = c.create_key("HMAC_512", origin="EXTERNAL")
    material = os.urandom(64)
    do_import(c, key.key_id, material)
    c.delete_imported_key_material(key.key_id)
    with pytest.raises(E.IncorrectKeyMaterial):
        do_import(c, key.key_id, os.urandom(64))
    svc.kms.audit.flush()
    db = sqlite3.connect(svc.audit_dir / "audit-w0.db")
    try:
        rows = db.execute("SELECT action, result FROM audit").fetchall()
    finally:
        db.close()
    assert ("kms:GetParametersForImport", "ok") in rows
    assert ("kms:ImportKeyMaterial", "ok") in rows
    assert ("kms:DeleteImportedKeyMaterial", "ok") in rows
    assert ("kms:ImportKeyMaterial", "IncorrectKeyMaterial") in rows
    for path in svc.audit_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert material not in data and material.hex().encode() not in data


def test_concurrent_first_imports_of_different_material(svc: Svc) -> None:
    """Two callers race to import different material into a new key: one wins, the other is
    told its material is not the key's; the key holds the winner's material."""
    c = svc.client
    key = c.create_key(origin="EXTERNAL")
    materials = [os.urandom(32), os.urandom(32)]
    prepared = []
    for m in materials:
        params = c.get_parameters_for_import(key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
        prepared.append((params.import_token, wrap(params, "RSAES_OAEP_SHA_256", m)))
    results: list[object] = [None, None]
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        client = svc.kms.client(INSTANCE)
        barrier.wait()
        try:
            results[i] = client.import_key_material(key.key_id, *prepared[i])
        except E.KmsError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [i for i, r in enumerate(results) if isinstance(r, KeyRecord)]
    lost = [i for i, r in enumerate(results) if isinstance(r, E.IncorrectKeyMaterial)]
    assert len(won) == 1 and len(lost) == 1, results
    assert [v.number for v in c.list_key_rotations(key.key_id)] == [1]
    check_symmetric(c, key.key_id, "SYMMETRIC_DEFAULT", materials[won[0]])
    # the loser's token was not consumed, but its material stays refused
    with pytest.raises(E.IncorrectKeyMaterial):
        c.import_key_material(key.key_id, *prepared[lost[0]])
