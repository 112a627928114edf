"""OpenSC's ``pkcs11-tool`` against ``libhsmpool-pkcs11.so`` and a running ``hsmpool serve``:
-L, -O, --sign, --verify, --decrypt, --generate-random and --keypairgen, with every result
checked independently (signatures with the public key that GetPublicKey exports, through
``cryptography``) and every use found in the KMS audit trail under the module's principal."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.pkcs11_module.conftest import DISCOVER, LISTED, PIN, P11Env, need_tool


def tool(p11: P11Env, *args: str, token: str = LISTED, login: bool = True,
         check: bool = True) -> subprocess.CompletedProcess[bytes]:
    argv = [need_tool("pkcs11-tool"), "--module", p11.module, "--token-label", token]
    if login:
        argv += ["--login", "--pin", PIN]
    done = subprocess.run([*argv, *args], env=p11.env(), capture_output=True, timeout=120)
    if check:
        assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    return done


def key_id(p11: P11Env, label: str) -> str:
    """The CKA_ID of a key in hex (pkcs11-tool 0.23 signs with the first private key when
    given --label alone, so operations name keys by --id)."""
    return str(p11.keys[label]["KeyId"]).replace("-", "")


def public_key(p11: P11Env, label: str) -> Any:
    der = p11.admin.get_public_key(KeyId=f"alias/p11-{label}")["PublicKey"]
    return serialization.load_der_public_key(der)


def test_list_slots_shows_both_tokens(p11: P11Env) -> None:
    out = tool(p11, "-L", login=False).stdout.decode()
    assert f"token label        : {LISTED}" in out and f"token label        : {DISCOVER}" in out
    assert "login required" in out and "rng" in out


def test_objects_are_the_policys_keys_and_nothing_else(p11: P11Env) -> None:
    out = tool(p11, "-O").stdout.decode()
    for label in ("rsa-sign", "rsa-enc", "ec", "sm2", "aes"):
        assert f"label:      {label}\n" in out
    assert "hidden" not in out
    assert p11.hidden["KeyId"].replace("-", "") not in out
    assert out.count("Private Key Object") == 4 and out.count("Public Key Object") == 4
    assert "Secret Key Object; AES length 32" in out
    assert "never extractable" in out and "sensitive" in out
    # the ID is the key's UUID
    assert p11.keys["ec"]["KeyId"].replace("-", "") in out


def test_discovering_slot_lists_every_allowed_key_by_alias(p11: P11Env) -> None:
    out = tool(p11, "-O", token=DISCOVER).stdout.decode()
    for label in ("rsa-sign", "rsa-enc", "ec", "sm2", "aes"):
        assert f"label:      p11-{label}\n" in out
    assert "p11-hidden" not in out and p11.hidden["KeyId"].replace("-", "") not in out


def test_without_login_no_private_object_is_visible(p11: P11Env) -> None:
    out = tool(p11, "-O", login=False).stdout.decode()
    assert "Private Key Object" not in out and "Secret Key Object" not in out


def test_ecdsa_sign_and_verify(p11: P11Env, tmp_path: Path) -> None:
    msg = tmp_path / "msg"
    msg.write_bytes(b"signed through PKCS#11 " * 50)
    sig = tmp_path / "sig"
    tool(p11, "--sign", "-m", "ECDSA-SHA256", "--id", key_id(p11, "ec"), "-i", str(msg), "-o",
         str(sig))
    raw = sig.read_bytes()
    assert len(raw) == 64
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                     int.from_bytes(raw[32:], "big"))
    public_key(p11, "ec").verify(der, msg.read_bytes(), ec.ECDSA(hashes.SHA256()))
    ok = tool(p11, "--verify", "-m", "ECDSA-SHA256", "--id", key_id(p11, "ec"), "-i", str(msg),
              "--signature-file", str(sig))
    assert b"Signature is valid" in ok.stdout
    msg.write_bytes(b"another message")
    bad = tool(p11, "--verify", "-m", "ECDSA-SHA256", "--id", key_id(p11, "ec"), "-i", str(msg),
               "--signature-file", str(sig), check=False)
    assert b"Invalid signature" in bad.stdout and b"Signature is valid" not in bad.stdout


def test_ecdsa_on_a_digest(p11: P11Env, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"digest me").digest()
    (tmp_path / "d").write_bytes(digest)
    tool(p11, "--sign", "-m", "ECDSA", "--id", key_id(p11, "ec"), "-i", str(tmp_path / "d"), "-o",
         str(tmp_path / "s"))
    raw = (tmp_path / "s").read_bytes()
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                     int.from_bytes(raw[32:], "big"))
    public_key(p11, "ec").verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


@pytest.mark.parametrize("mech", ["SHA256-RSA-PKCS", "SHA256-RSA-PKCS-PSS"])
def test_rsa_sign(p11: P11Env, tmp_path: Path, mech: str) -> None:
    msg = tmp_path / "msg"
    msg.write_bytes(b"an RSA signature over the KMS")
    sig = tmp_path / "sig"
    extra = ["--mgf", "MGF1-SHA256", "--salt-len", "32"] if "PSS" in mech else []
    tool(p11, "--sign", "-m", mech, *extra, "--id", key_id(p11, "rsa-sign"), "-i", str(msg), "-o",
         str(sig))
    pk = public_key(p11, "rsa-sign")
    assert isinstance(pk, rsa.RSAPublicKey)
    pad: Any = (padding.PSS(padding.MGF1(hashes.SHA256()), 32) if "PSS" in mech
                else padding.PKCS1v15())
    pk.verify(sig.read_bytes(), msg.read_bytes(), pad, hashes.SHA256())
    with pytest.raises(InvalidSignature):
        pk.verify(sig.read_bytes(), b"other", pad, hashes.SHA256())
    ok = tool(p11, "--verify", "-m", mech, *extra, "--id", key_id(p11, "rsa-sign"), "-i", str(msg),
              "--signature-file", str(sig))
    assert b"Signature is valid" in ok.stdout


def test_rsa_oaep_decrypt(p11: P11Env, tmp_path: Path) -> None:
    pk = public_key(p11, "rsa-enc")
    ct = pk.encrypt(b"sealed for the KMS key", padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                            hashes.SHA256(), None))
    (tmp_path / "ct").write_bytes(ct)
    tool(p11, "--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm", "SHA256", "--mgf",
         "MGF1-SHA256", "--id", key_id(p11, "rsa-enc"), "-i", str(tmp_path / "ct"), "-o",
         str(tmp_path / "pt"))
    assert (tmp_path / "pt").read_bytes() == b"sealed for the KMS key"
    (tmp_path / "ct").write_bytes(bytes([ct[0] ^ 1]) + ct[1:])
    bad = tool(p11, "--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm", "SHA256", "--mgf",
               "MGF1-SHA256", "--id", key_id(p11, "rsa-enc"), "-i", str(tmp_path / "ct"), "-o",
               str(tmp_path / "pt2"), check=False)
    assert bad.returncode != 0 and b"CKR_ENCRYPTED_DATA_INVALID" in bad.stderr + bad.stdout


def test_generate_random(p11: P11Env, tmp_path: Path) -> None:
    a = tool(p11, "--generate-random", "1500").stdout
    b = tool(p11, "--generate-random", "1500").stdout
    assert len(a) == len(b) == 1500 and a != b


def test_keypairgen_creates_a_kms_key(p11: P11Env) -> None:
    out = tool(p11, "--keypairgen", "--key-type", "EC:prime256v1", "--label",
               "made-by-pkcs11-tool").stdout.decode()
    assert "made-by-pkcs11-tool" in out
    md = p11.admin.describe_key(KeyId="alias/made-by-pkcs11-tool")["KeyMetadata"]
    assert md["KeySpec"] == "ECC_NIST_P256" and md["KeyUsage"] == "SIGN_VERIFY"
    # a new process shows it on the discovering slot (the other lists configured keys only)
    listed = tool(p11, "-O", token=DISCOVER).stdout.decode()
    assert md["KeyId"].replace("-", "") in listed and "made-by-pkcs11-tool" in listed


def test_every_use_is_audited_under_the_module_principal(p11: P11Env, tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"audited")
    tool(p11, "--generate-random", "8")
    tool(p11, "--sign", "-m", "ECDSA-SHA256", "--id", key_id(p11, "ec"), "-i", str(tmp_path / "m"),
         "-o", str(tmp_path / "s"))
    records = p11.audit()
    mine = [r for r in records if r["Principal"] == p11.principal]
    actions = {r["Action"] for r in mine if r["Result"] == "ok"}
    assert {"kms:Sign", "kms:DescribeKey", "kms:GetPublicKey", "kms:GenerateRandom"} <= actions
    assert records[-1]["Principal"] == p11.principal and records[-1]["Action"] == "kms:Sign"
    assert records[-1]["KeyId"] == p11.keys["ec"]["KeyId"] and records[-1]["Result"] == "ok"
    # the denied key was never used: every request naming it was refused
    assert not any(r["KeyId"] == p11.hidden["KeyId"] for r in mine)
    refused = [r for r in mine if r["Action"] == "kms:DescribeKey"
               and r["Result"] == "NotFound"]
    assert refused


def test_sm2_vendor_mechanisms_match_the_kms(p11: P11Env, tmp_path: Path) -> None:
    """CKM_VENDOR_DEFINED + 0x8100 (SM3 with Z of the default ID, then SM2) over a message
    and + 0x8000 (SM2 over a 32-byte e): the KMS verifies both as SM2DSA (docs/pkcs11.md)."""
    msg = tmp_path / "msg"
    msg.write_bytes(b"SM2 through PKCS#11")
    sig = tmp_path / "sig"
    tool(p11, "--sign", "-m", "0x80008100", "--id", key_id(p11, "sm2"), "-i", str(msg), "-o",
         str(sig))
    raw = sig.read_bytes()
    assert len(raw) == 64
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                     int.from_bytes(raw[32:], "big"))
    r = p11.admin.verify(KeyId="alias/p11-sm2", Message=msg.read_bytes(), Signature=der,
                         SigningAlgorithm="SM2DSA")
    assert r["SignatureValid"]
    ok = tool(p11, "--verify", "-m", "0x80008100", "--id", key_id(p11, "sm2"), "-i", str(msg),
              "--signature-file", str(sig))
    assert b"Signature is valid" in ok.stdout
    e = tmp_path / "e"
    e.write_bytes(hashlib.sha256(b"any 32 bytes").digest())
    tool(p11, "--sign", "-m", "0x80008000", "--id", key_id(p11, "sm2"), "-i", str(e), "-o",
         str(sig))
    raw = sig.read_bytes()
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                     int.from_bytes(raw[32:], "big"))
    r = p11.admin.verify(KeyId="alias/p11-sm2", Message=e.read_bytes(), Signature=der,
                         SigningAlgorithm="SM2DSA", MessageType="DIGEST")
    assert r["SignatureValid"]


def test_a_key_of_another_usage_is_refused(p11: P11Env, tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"x")
    bad = tool(p11, "--sign", "-m", "SHA256-RSA-PKCS", "--id", key_id(p11, "rsa-enc"), "-i",
               str(tmp_path / "m"), "-o", str(tmp_path / "s"), check=False)
    assert bad.returncode != 0 and b"CKR_KEY_FUNCTION_NOT_PERMITTED" in bad.stdout + bad.stderr
