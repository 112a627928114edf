"""python-pkcs11 driving ``libhsmpool-pkcs11.so``: threads, every mechanism family, the
attributes of the objects, and the CKR_ codes of failures (wrong PIN, unreachable server,
a disabled access key, a denied key, bad parameters)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from pkcs11 import MGF, Attribute, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from tests.pkcs11_module.conftest import (
    INSTANCE,
    LISTED,
    PIN,
    P11Env,
    write_credential,
    write_module_conf,
)
from tests.server.conftest import create_credential, free_port


def der_of(raw: bytes) -> bytes:
    return utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                      int.from_bytes(raw[32:], "big"))


def public_key(p11: P11Env, label: str) -> Any:
    return serialization.load_der_public_key(
        p11.admin.get_public_key(KeyId=f"alias/p11-{label}")["PublicKey"])


@pytest.fixture
def session(p11lib: Any) -> Any:
    token = p11lib.get_token(token_label=LISTED)
    with token.open(rw=True) as s:
        yield s


def test_four_threads_sign_and_encrypt_without_a_crash(p11: P11Env, p11lib: Any) -> None:
    token = p11lib.get_token(token_label=LISTED)
    sessions = [token.open() for _ in range(4)]
    pub = public_key(p11, "ec")
    errors: list[BaseException] = []
    results: list[int] = []

    def work(k: int) -> None:
        s = sessions[k]
        try:
            key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
            aes = s.get_key(object_class=ObjectClass.SECRET_KEY, label="aes")
            for i in range(25):
                msg = f"thread {k} message {i}".encode()
                sig = key.sign(msg, mechanism=Mechanism.ECDSA_SHA256)
                pub.verify(der_of(sig), msg, ec.ECDSA(hashes.SHA256()))
                ct = aes.encrypt(msg, mechanism=Mechanism.AES_GCM,
                                 mechanism_param=GCMParams(b"", b"ctx"))
                assert aes.decrypt(ct, mechanism=Mechanism.AES_GCM,
                                   mechanism_param=GCMParams(b"", b"ctx")) == msg
                assert len(s.generate_random(64)) == 8  # python-pkcs11 counts bits
                results.append(1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for s in sessions:
        s.close()
    assert not errors, errors[:3]
    assert len(results) == 100


def test_attributes_are_the_real_public_key(p11: P11Env, session: Any) -> None:
    rsa_pub = public_key(p11, "rsa-sign").public_numbers()
    pub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label="rsa-sign")
    assert int.from_bytes(pub[Attribute.MODULUS], "big") == rsa_pub.n
    assert int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big") == rsa_pub.e
    assert pub[Attribute.MODULUS_BITS] == 2048
    priv = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa-sign")
    assert priv[Attribute.SENSITIVE] is True and priv[Attribute.EXTRACTABLE] is False
    assert priv[Attribute.SIGN] is True and priv[Attribute.DECRYPT] is False
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        priv[Attribute.PRIVATE_EXPONENT]
    ecpub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label="ec")
    nums = public_key(p11, "ec").public_numbers()
    point = b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    assert ecpub[Attribute.EC_POINT] == b"\x04\x41" + point
    assert ecpub[Attribute.EC_PARAMS] == bytes.fromhex("06082a8648ce3d030107")
    assert ecpub[Attribute.ID] == bytes.fromhex(p11.keys["ec"]["KeyId"].replace("-", ""))
    aes = session.get_key(object_class=ObjectClass.SECRET_KEY, label="aes")
    assert aes[Attribute.VALUE_LEN] == 32
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        aes[Attribute.VALUE]


def test_multi_part_ecdsa_and_rsa_pss(p11: P11Env, session: Any) -> None:
    chunks = [os.urandom(1000) for _ in range(7)]
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
    sig = key.sign(iter(chunks), mechanism=Mechanism.ECDSA_SHA256)
    public_key(p11, "ec").verify(der_of(sig), b"".join(chunks), ec.ECDSA(hashes.SHA256()))
    rsa = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa-sign")
    sig = rsa.sign(iter(chunks), mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                   mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32))
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    public_key(p11, "rsa-sign").verify(sig, b"".join(chunks), pss, hashes.SHA256())
    pub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label="rsa-sign")
    assert pub.verify(iter(chunks), sig, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                      mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32))
    assert not pub.verify(b"x", sig, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                          mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32))
    # a salt the KMS does not use is a parameter error, before any request
    with pytest.raises(pkcs11.exceptions.MechanismParamInvalid):
        rsa.sign(b"x", mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                 mechanism_param=(Mechanism.SHA256, MGF.SHA256, 20))


def test_rsa_pkcs1_on_a_digest_info(p11: P11Env, session: Any) -> None:
    digest = hashlib.sha256(b"digest-info").digest()
    info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa-sign")
    sig = key.sign(info, mechanism=Mechanism.RSA_PKCS)
    public_key(p11, "rsa-sign").verify(sig, b"digest-info", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(pkcs11.exceptions.DataInvalid):
        key.sign(b"\x00" * 36, mechanism=Mechanism.RSA_PKCS)  # not a SHA-2 DigestInfo


def test_aes_gcm_carries_the_kms_ciphertext(p11: P11Env, session: Any) -> None:
    aes = session.get_key(object_class=ObjectClass.SECRET_KEY, label="aes")
    ct = aes.encrypt(b"for the database", mechanism=Mechanism.AES_GCM,
                     mechanism_param=GCMParams(b"", b"table=users"))
    assert len(ct) == 16 + 46
    ctx = {"pkcs11-aad": base64.b64encode(b"table=users").decode()}
    assert p11.admin.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)["Plaintext"] == \
        b"for the database"
    with pytest.raises(pkcs11.exceptions.EncryptedDataInvalid):
        aes.decrypt(ct, mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(b"", b"table=other"))
    with pytest.raises(pkcs11.exceptions.EncryptedDataInvalid):
        aes.decrypt(ct[:-1] + bytes([ct[-1] ^ 1]), mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(b"", b"table=users"))
    with pytest.raises(pkcs11.exceptions.MechanismParamInvalid):  # the KMS picks the nonce
        aes.encrypt(b"x", mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(os.urandom(12)))


def test_rsa_oaep_both_ways(p11: P11Env, session: Any) -> None:
    pub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label="rsa-enc")
    priv = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa-enc")
    param = (Mechanism.SHA256, MGF.SHA256, None)
    ct = pub.encrypt(b"oaep", mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param)
    assert priv.decrypt(ct, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param) == b"oaep"
    ct1 = public_key(p11, "rsa-enc").encrypt(
        b"sha1", padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    p1 = (Mechanism.SHA_1, MGF.SHA1, None)
    assert priv.decrypt(ct1, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=p1) == b"sha1"
    with pytest.raises(pkcs11.exceptions.MechanismParamInvalid):  # no OAEP labels
        pub.encrypt(b"x", mechanism=Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=(Mechanism.SHA256, MGF.SHA256, b"label"))


def test_wrong_key_and_mechanism_are_typed_errors(session: Any) -> None:
    ec_key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
    with pytest.raises(pkcs11.exceptions.KeyTypeInconsistent):
        ec_key.sign(b"x", mechanism=Mechanism.SHA256_RSA_PKCS)
    with pytest.raises(pkcs11.exceptions.NoSuchKey):
        session.get_key(label="hidden")
    assert session.digest(b"abc", mechanism=Mechanism.SHA256) == hashlib.sha256(b"abc").digest()


def test_generate_key_pair_rsa(p11: P11Env, session: Any) -> None:
    pub, priv = session.generate_keypair(pkcs11.KeyType.RSA, 2048, label="made-by-python-pkcs11",
                                         store=True)
    md = p11.admin.describe_key(KeyId="alias/made-by-python-pkcs11")["KeyMetadata"]
    assert md["KeySpec"] == "RSA_2048" and md["KeyUsage"] == "SIGN_VERIFY"
    sig = priv.sign(b"new key", mechanism=Mechanism.SHA256_RSA_PKCS)
    pk = serialization.load_der_public_key(p11.admin.get_public_key(KeyId=md["KeyId"])["PublicKey"])
    pk.verify(sig, b"new key", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    assert int.from_bytes(pub[Attribute.MODULUS], "big") == pk.public_numbers().n  # type: ignore[union-attr]


# --- failures, each in a process of its own (C_Initialize reads the configuration) --------

_PROBE = r"""
import sys, pkcs11
lib = pkcs11.lib(sys.argv[1])
tok = lib.get_slots()[0].get_token()
try:
    with tok.open(user_pin=sys.argv[2]) as s:
        s.generate_random(64)
    print("OK")
except pkcs11.exceptions.PKCS11Error as exc:
    print(type(exc).__name__)
"""


def probe(p11: P11Env, conf: Path, pin: str = PIN) -> str:
    out = subprocess.run([sys.executable, "-c", _PROBE, p11.module, pin], capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "HSMPOOL_PKCS11_CONF": str(conf)})
    assert out.returncode == 0, out.stderr
    assert pin not in out.stdout + out.stderr  # the PIN never reaches output
    return out.stdout.strip()


def test_wrong_pin_is_pin_incorrect(p11: P11Env) -> None:
    assert probe(p11, p11.conf) == "OK"
    assert probe(p11, p11.conf, "not-the-pin") == "PinIncorrect"


def test_unreachable_server_is_device_error(p11: P11Env, tmp_path: Path) -> None:
    conf = tmp_path / "down.conf"
    conf.write_text(f"[slot]\nendpoint = http://127.0.0.1:{free_port()}\n"
                    f"credential_file = {p11.cred_file}\nkey = ec alias/p11-ec\n"
                    "timeout_ms = 2000\n")
    assert probe(p11, conf) == "DeviceError"


def test_disabled_access_key_is_refused(p11: P11Env, tmp_path: Path) -> None:
    cred = create_credential(p11.server.config, INSTANCE, "pkcs11-disabled")
    cred_file = tmp_path / "c.cred"
    write_credential(cred_file, cred)
    conf = tmp_path / "m.conf"
    write_module_conf(conf, p11.server, cred_file, p11.hidden["Arn"])
    assert probe(p11, conf) == "OK"
    hsmpool = Path(sys.executable).parent / "hsmpool"
    subprocess.run([str(hsmpool), "--config", str(p11.server.config), "credentials", "disable",
                    cred.access_key_id], check=True, capture_output=True, timeout=60)
    import time

    deadline = time.monotonic() + 10
    while probe(p11, conf) == "OK" and time.monotonic() < deadline:
        time.sleep(0.5)  # every server worker sees it within a second
    assert probe(p11, conf) == "FunctionRejected"


def test_malformed_configuration_fails_initialize(p11: P11Env, tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("[slot]\nendpoint = ftp://x\n")
    out = subprocess.run([sys.executable, "-c", "import sys, pkcs11; pkcs11.lib(sys.argv[1])",
                          p11.module], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HSMPOOL_PKCS11_CONF": str(conf)})
    assert out.returncode != 0 and "GeneralError" in out.stderr
    assert "endpoint must start with http:// or https://" in out.stderr
