"""``hsmpool serve --dev`` (no configuration, nothing left on disk) and seed files (keys and
aliases with fixed ids, imported material, idempotent across restarts and two workers).
Real ``hsmpool serve`` processes, boto3 on 127.0.0.1, real SoftHSM2 tokens.

Instance: "seeded" on tokens 1, 2.
"""

from __future__ import annotations

import base64
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.server.conftest import (
    REGION,
    create_credential,
    send_once,
    serving,
    start_serve,
    write_server_config,
)

INSTANCE = "seeded"
TOKENS = [1, 2]
AES_ID = "0a1b2c3d-0000-4000-8000-000000000a01"
GEN_ID = "0a1b2c3d-0000-4000-8000-000000000a02"
RSA_ID = "0a1b2c3d-0000-4000-8000-000000000a03"
EC_ID = "0a1b2c3d-0000-4000-8000-000000000a04"


def _client(url: str, akid: str, secret: str) -> Any:
    return boto3.client("kms", endpoint_url=url, region_name=REGION,
                        aws_access_key_id=akid, aws_secret_access_key=secret,
                        config=send_once())


# --- --dev -----------------------------------------------------------------------------------


def test_dev_mode_serves_with_the_printed_credential_and_leaves_nothing(tmp_path: Path
                                                                         ) -> None:
    before = set(Path(tempfile.gettempdir()).glob("hsmpool-dev-*"))
    with serving(["--dev", "--port", "0"], tmp_path / "dev.log",
                 env={"HSMPOOL_CONFIG": str(tmp_path / "none.toml")}) as (run, url):
        line = run.wait_for("dev credential:")
        m = re.search(r"AccessKeyId=(\S+) SecretAccessKey=(\S+)", line)
        assert m, line
        assert run.lines()[-1] == f"hsmpool: serving AWS KMS on {url} (1 worker)"
        made = set(Path(tempfile.gettempdir()).glob("hsmpool-dev-*")) - before
        assert len(made) == 1
        (root,) = made
        assert (root.stat().st_mode & 0o777) == 0o700
        assert not any(p.name.endswith(".db") and "kms" in p.name for p in root.rglob("*"))
        kms = _client(url, m.group(1), m.group(2))
        key = kms.create_key(Description="dev")["KeyMetadata"]
        ct = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"dev mode")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"dev mode"
        assert [k["KeyId"] for k in kms.list_keys()["Keys"]] == [key["KeyId"]]
    assert run.proc.returncode == 0, run.text()
    assert not root.exists()
    assert set(Path(tempfile.gettempdir()).glob("hsmpool-dev-*")) == before
    assert "Traceback" not in run.text()


def test_dev_mode_refuses_a_configuration_and_workers(tmp_path: Path) -> None:
    run = start_serve(["--dev", "--workers", "2"], tmp_path / "w.log")
    assert run.finish() == 2 and "drop --workers" in run.text()
    run = start_serve(["--dev"], tmp_path / "c.log", config=tmp_path / "x.toml")
    assert run.finish() == 2 and "drop --config" in run.text()


# --- seed files ------------------------------------------------------------------------------


def _seed(tmp: Path, aes: bytes) -> Path:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp / "rsa.pem").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))  # PKCS#1 PEM: converted to PKCS#8 by the seed
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp / "ec.der").write_bytes(ec_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path = tmp / "seed.toml"
    path.write_text(f"""
[[keys]]
id = "{AES_ID}"
instance = "{INSTANCE}"
description = "imported AES"
material = "{base64.b64encode(aes).decode()}"
aliases = ["alias/orders"]
tags = {{ team = "shop" }}

[[keys]]
id = "{GEN_ID}"
instance = "{INSTANCE}"
spec = "SM4"

[[keys]]
id = "{RSA_ID}"
instance = "{INSTANCE}"
spec = "RSA_2048"
usage = "SIGN_VERIFY"
material_file = "rsa.pem"

[[keys]]
id = "{EC_ID}"
instance = "{INSTANCE}"
spec = "ECC_NIST_P256"
usage = "SIGN_VERIFY"
material_file = "ec.der"

[[aliases]]
name = "alias/sm4"
key = "{GEN_ID}"
instance = "{INSTANCE}"
""")
    return path


def test_seed_makes_keys_with_fixed_ids_and_imported_material(token_dir: Path,
                                                              tmp_path: Path) -> None:
    aes = secrets.token_bytes(32)
    _seed(tmp_path, aes)
    cfg = write_server_config(tmp_path, token_dir, {INSTANCE: TOKENS})
    cfg.write_text(cfg.read_text() + '[server]\nseed = "seed.toml"\n')  # relative to cfg
    cred = create_credential(cfg, INSTANCE, "admin")
    with serving(["--port", "0", "--workers", "2"], tmp_path / "s1.log",
                 config=cfg) as (run, url):
        created = [ln for ln in run.lines() if "seed: created" in ln]
        assert len(created) == 6, run.text()  # 4 keys, 2 aliases
        kms = _client(url, cred.access_key_id, cred.secret)
        md = kms.describe_key(KeyId="alias/orders")["KeyMetadata"]
        assert md["KeyId"] == AES_ID and md["Origin"] == "EXTERNAL"
        assert md["KeyState"] == "Enabled" and md["Description"] == "imported AES"
        assert kms.list_resource_tags(KeyId=AES_ID)["Tags"] == [
            {"TagKey": "team", "TagValue": "shop"}]
        # The material is the seed's: the ciphertext opens with it, outside the server.
        blob = kms.encrypt(KeyId=AES_ID, Plaintext=b"seeded",
                           EncryptionContext={"k": "v"})["CiphertextBlob"]
        ctx = b"\0\0\0\1k\0\0\0\1v"
        assert AESGCM(aes).decrypt(blob[18:30], blob[30:], blob[:18] + ctx) == b"seeded"
        assert kms.describe_key(KeyId="alias/sm4")["KeyMetadata"]["KeySpec"] == "SM4"
        # Signatures verify under the seed's own public keys.
        sig = kms.sign(KeyId=RSA_ID, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256"
                       )["Signature"]
        rsa_pub = serialization.load_pem_private_key(
            (tmp_path / "rsa.pem").read_bytes(), None).public_key()
        assert isinstance(rsa_pub, rsa.RSAPublicKey)
        rsa_pub.verify(sig, b"m", padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                              salt_length=32), hashes.SHA256())
        sig = kms.sign(KeyId=EC_ID, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
        ec_pub = serialization.load_der_private_key((tmp_path / "ec.der").read_bytes(),
                                                    None).public_key()
        assert isinstance(ec_pub, ec.EllipticCurvePublicKey)
        ec_pub.verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
    # Again (two workers), and once more with one: nothing new, the same keys.
    for workers in ("2", "1"):
        with serving(["--port", "0", "--workers", workers], tmp_path / f"s-{workers}.log",
                     config=cfg) as (run, url):
            assert not [ln for ln in run.lines() if "seed:" in ln], run.text()
            kms = _client(url, cred.access_key_id, cred.secret)
            ids = {k["KeyId"] for k in kms.list_keys()["Keys"]}
            assert ids == {AES_ID, GEN_ID, RSA_ID, EC_ID}
            assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"k": "v"}
                               )["Plaintext"] == b"seeded"
    # The material never reached the server's output.
    for log in tmp_path.glob("s*.log"):
        assert base64.b64encode(aes).decode() not in log.read_text()


@pytest.mark.parametrize(("entry", "fragment"), [
    ('id = "not-a-uuid"', "is not a key id"),
    ('id = "0a1b2c3d-0000-4000-8000-0000000000ff"\nspec = "AES_512"', "unknown spec"),
    ('id = "0a1b2c3d-0000-4000-8000-0000000000ff"\nmaterial = "***"', "not valid base64"),
    ('id = "0a1b2c3d-0000-4000-8000-0000000000ff"\nspec = "RSA_2048"\nmaterial = "AAAA"',
     "comes as a private key file"),
    ('id = "0a1b2c3d-0000-4000-8000-0000000000ff"\nspec = "RSA_2048"\n'
     'material_file = "nope.pem"', "cannot read material_file"),
    ('id = "0a1b2c3d-0000-4000-8000-0000000000ff"\ncolour = "red"', "unknown field"),
    ('id = "0a1b2c3d-0000-4000-8000-0000000000ff"\nmaterial = "AAAA"',
     "IncorrectKeyMaterial: "),
])
def test_a_bad_seed_file_is_one_line(token_dir: Path, tmp_path: Path, entry: str,
                                     fragment: str) -> None:
    cfg = write_server_config(tmp_path, token_dir, {INSTANCE: TOKENS})
    (tmp_path / "bad.toml").write_text(f"[[keys]]\ninstance = \"{INSTANCE}\"\n{entry}\n")
    run = start_serve(["--port", "0", "--seed", str(tmp_path / "bad.toml")],
                      tmp_path / "bad.log", config=cfg)
    assert run.finish() == 2, run.text()
    lines = [ln for ln in run.lines() if "left out of the pool" not in ln]
    assert len(lines) == 1 and fragment in lines[0] and "seed file" in lines[0], run.text()
    assert "AAAA" not in run.text()
