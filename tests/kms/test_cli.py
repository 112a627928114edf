"""The ``hsmpool`` command run as a real subprocess (the installed console script) against a
configuration of its own: instance "files" on SoftHSM2 token 6, SQLite store and audit trail
under a temporary folder.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import io
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kms import fileenc as fe
from tests.conftest import ROOT, pool_toml
from tests.database import database_for, database_line, dump

HSMPOOL = str(Path(sys.executable).parent / "hsmpool")
if not os.path.exists(HSMPOOL):
    HSMPOOL = str(ROOT / ".venv" / "bin" / "hsmpool")
INSTANCE = "files"


@pytest.fixture(scope="module")
def config(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "hsmpool.toml"
    cfg.write_text(pool_toml(token_dir, {INSTANCE: [6]})
                   + '[kms]\n' + database_line(d / "kms.db") + 'audit_dir = "audit"\n')
    return cfg


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config

    def run(self, *args: str, rc: int = 0, stdin: bytes | None = None,
            instance: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = [HSMPOOL, "--config", str(self.config), *args]
        if instance:
            argv += ["--instance", INSTANCE]
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120)
        assert b"Traceback" not in proc.stderr, proc.stderr.decode()
        assert proc.returncode == rc, (args, proc.returncode, proc.stderr.decode())
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def fail(self, *args: str, rc: int = 1, instance: bool = True) -> str:
        """Run a failing command: its stderr is exactly one line."""
        proc = self.run(*args, rc=rc, instance=instance)
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("hsmpool")
        return lines[0]


@pytest.fixture
def cli(config: Path) -> Cli:
    return Cli(config)


def fields(text: bytes) -> dict[str, str]:
    """The ``Field  value`` lines of a human-readable record."""
    out = {}
    for line in text.decode().splitlines():
        k, _, v = line.partition(" ")
        out[k] = v.strip()
    return out


# --- keys -------------------------------------------------------------------------------


def test_key_lifecycle(cli: Cli) -> None:
    human = fields(cli.run("key", "create", "--description", "cli test key").stdout)
    key_id = human["KeyId"]
    assert human["KeySpec"] == "SYMMETRIC_DEFAULT" and human["KeyState"] == "Enabled"
    assert human["Description"] == "cli test key"
    sm4 = cli.json("key", "create", "--spec", "SM4")
    assert sm4["KeySpec"] == "SM4" and sm4["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert sm4["Arn"].endswith("key/" + sm4["KeyId"])

    listed = {k["KeyId"]: k for k in cli.json("key", "list")["Keys"]}
    assert listed[key_id]["Description"] == "cli test key"
    assert listed[sm4["KeyId"]]["KeySpec"] == "SM4"
    table = cli.run("key", "list").stdout.decode().splitlines()
    assert table[0].split()[:4] == ["KeyId", "KeySpec", "KeyUsage", "KeyState"]
    row = next(line for line in table if line.startswith(key_id))
    assert row.split()[1:4] == ["SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled"]

    d = cli.json("key", "describe", key_id)
    assert d["KeyId"] == key_id and d["KeyState"] == "Enabled"
    first = d["PrimaryVersion"]
    r = cli.json("key", "rotate", key_id)
    assert r["VersionNumber"] == 2 and r["KeyVersion"] != first
    assert cli.json("key", "describe", key_id)["PrimaryVersion"] == r["KeyVersion"]

    assert cli.json("key", "disable", key_id)["KeyState"] == "Disabled"
    assert cli.json("key", "enable", key_id)["KeyState"] == "Enabled"
    before = time.time()
    s = cli.json("key", "schedule-deletion", key_id, "--days", "7")
    assert s["KeyState"] == "PendingDeletion"
    when = calendar.timegm(time.strptime(s["DeletionDate"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(when - (before + 7 * 86400)) < 120
    assert "InvalidState" in cli.fail("key", "rotate", key_id)
    c = cli.json("key", "cancel-deletion", key_id)
    assert c["KeyState"] == "Disabled" and c["DeletionDate"] is None
    assert fields(cli.run("key", "describe", key_id).stdout)["KeyState"] == "Disabled"


def test_sign_key_spec_and_usage(cli: Cli) -> None:
    k = cli.json("key", "create", "--spec", "RSA_2048", "--usage", "SIGN_VERIFY")
    assert (k["KeySpec"], k["KeyUsage"]) == ("RSA_2048", "SIGN_VERIFY")
    assert "UnsupportedOperation" in cli.fail("key", "rotate", k["KeyId"])


def test_key_rotation_settings(cli: Cli) -> None:
    key_id = cli.json("key", "create")["KeyId"]
    off = cli.json("key", "rotation-status", key_id)
    assert off == {"KeyId": key_id, "KeyRotationEnabled": False, "RotationPeriodInDays": None,
                   "NextRotationDate": None}
    before = time.time()
    on = cli.json("key", "enable-rotation", key_id, "--days", "90")
    assert on["KeyRotationEnabled"] is True and on["RotationPeriodInDays"] == 90
    when = calendar.timegm(time.strptime(on["NextRotationDate"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(when - (before + 90 * 86400)) < 120
    assert cli.json("key", "rotation-status", key_id) == on
    assert cli.json("key", "describe", key_id)["RotationPeriodInDays"] == 90
    assert fields(cli.run("key", "enable-rotation", key_id).stdout)[
        "RotationPeriodInDays"] == "365"  # the default period
    assert cli.json("key", "disable-rotation", key_id)["KeyRotationEnabled"] is False
    assert "Validation" in cli.fail("key", "enable-rotation", key_id, "--days", "6")
    ec = cli.json("key", "create", "--spec", "ECC_NIST_P256")["KeyId"]
    assert "UnsupportedOperation" in cli.fail("key", "enable-rotation", ec)


def test_key_tags_and_policy(cli: Cli) -> None:
    key_id = cli.json("key", "create")["KeyId"]
    tagged = cli.json("key", "tag", key_id, "team=blue", "env=prod", "note=a=b")
    assert tagged == {"KeyId": key_id, "Tags": [{"TagKey": "env", "TagValue": "prod"},
                                                {"TagKey": "note", "TagValue": "a=b"},
                                                {"TagKey": "team", "TagValue": "blue"}]}
    cli.run("key", "tag", key_id, "team=red")
    left = cli.json("key", "untag", key_id, "env", "note")
    assert left["Tags"] == [{"TagKey": "team", "TagValue": "red"}]
    table = cli.run("key", "tags", key_id).stdout.decode().splitlines()
    assert [line.split() for line in table] == [["TagKey", "TagValue"], ["team", "red"]]
    assert cli.json("key", "describe", key_id)["Tags"] == {"team": "red"}
    assert "KEY=VALUE" in cli.fail("key", "tag", key_id, "novalue", rc=2)
    assert "required" in cli.fail("key", "untag", key_id, rc=2)

    policy = json.loads(cli.run("key", "policy", key_id).stdout)
    assert policy["Version"] == "2012-10-17" and policy["Statement"][0]["Action"] == "kms:*"
    doc = cli.json("key", "policy", key_id)
    assert doc["PolicyName"] == "default" and json.loads(doc["Policy"]) == policy
    assert "NotFound" in cli.fail("key", "policy", "alias/none")


def _spki(der: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_public_key(der)


def test_sign_verify_and_public_key(cli: Cli, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key_id = cli.json("key", "create", "--spec", "ECC_NIST_P256")["KeyId"]
    msg = tmp_path / "msg"
    msg.write_bytes(b"release 1.2.3 checksum " + os.urandom(16))
    digest = tmp_path / "digest"
    digest.write_bytes(hashlib.sha256(msg.read_bytes()).digest())
    pub = cli.json("key", "public-key", key_id, "--out", str(tmp_path / "pub.der"))
    assert pub["KeySpec"] == "ECC_NIST_P256" and pub["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    der = (tmp_path / "pub.der").read_bytes()
    assert base64.b64decode(pub["PublicKey"]) == der
    public = _spki(der)

    signed = cli.json("key", "sign", key_id, "--algorithm", "ECDSA_SHA_256", "--message-file",
                      str(msg), "--out", str(tmp_path / "sig"))
    assert signed["MessageType"] == "RAW" and signed["KeyId"].endswith(key_id)
    sig = (tmp_path / "sig").read_bytes()
    assert base64.b64decode(signed["Signature"]) == sig
    public.verify(sig, msg.read_bytes(), ec.ECDSA(hashes.SHA256()))  # anyone can check it
    of_digest = cli.json("key", "sign", key_id, "--algorithm", "ECDSA_SHA_256",
                         "--digest-file", str(digest))
    assert of_digest["MessageType"] == "DIGEST"
    public.verify(base64.b64decode(of_digest["Signature"]), msg.read_bytes(),
                  ec.ECDSA(hashes.SHA256()))

    ok = cli.json("key", "verify", key_id, "--algorithm", "ECDSA_SHA_256", "--message-file",
                  str(msg), "--signature-file", str(tmp_path / "sig"))
    assert ok["SignatureValid"] is True
    assert cli.json("key", "verify", key_id, "--algorithm", "ECDSA_SHA_256", "--digest-file",
                    str(digest), "--signature", of_digest["Signature"])["SignatureValid"]
    (tmp_path / "other").write_bytes(b"not the message")
    assert "InvalidSignature" in cli.fail(
        "key", "verify", key_id, "--algorithm", "ECDSA_SHA_256", "--message-file",
        str(tmp_path / "other"), "--signature-file", str(tmp_path / "sig"))
    # Refusals: an existing --out, bad base64, a wrong-size digest, another algorithm.
    assert "exists" in cli.fail("key", "sign", key_id, "--algorithm", "ECDSA_SHA_256",
                                "--message-file", str(msg), "--out", str(tmp_path / "sig"),
                                rc=2)
    assert (tmp_path / "sig").read_bytes() == sig
    assert "base64" in cli.fail("key", "verify", key_id, "--algorithm", "ECDSA_SHA_256",
                                "--message-file", str(msg), "--signature", "%%%", rc=2)
    assert "Validation" in cli.fail("key", "sign", key_id, "--algorithm",
                                             "ECDSA_SHA_256", "--digest-file", str(msg))
    assert "InvalidKeyUsage" in cli.fail("key", "sign", key_id, "--algorithm",
                                                  "SM2DSA", "--message-file", str(msg))
    assert "one of the arguments" in cli.fail("key", "sign", key_id, "--algorithm",
                                              "ECDSA_SHA_256", rc=2)
    assert "invalid choice" in cli.fail("key", "sign", key_id, "--algorithm", "MD5",
                                        "--message-file", str(msg), rc=2)


def test_generate_data_key(cli: Cli, config: Path) -> None:
    from kms import Kms

    key_id = cli.json("key", "create")["KeyId"]
    quiet = cli.run("key", "generate-data-key", key_id, "--json")
    doc = json.loads(quiet.stdout)
    assert set(doc) == {"KeyId", "CiphertextBlob"} and quiet.stderr == b""
    loud = cli.run("key", "generate-data-key", key_id, "--spec", "AES_128", "--context",
                   "app=cli", "--plaintext", "--json")
    assert b"secret" in loud.stderr and len(loud.stderr.splitlines()) == 1
    made = json.loads(loud.stdout)
    plaintext = base64.b64decode(made["Plaintext"])
    assert len(plaintext) == 16
    with Kms.open(config) as service:  # the blob opens to that plaintext, in its context
        client = service.client(INSTANCE)
        blob = base64.b64decode(made["CiphertextBlob"])
        assert client.decrypt(blob, {"app": "cli"}).plaintext == plaintext
        assert len(client.decrypt(base64.b64decode(doc["CiphertextBlob"])).plaintext) == 32
    audit = b"".join(p.read_bytes() for p in (config.parent / "audit").iterdir())
    assert plaintext not in audit and made["Plaintext"].encode() not in audit
    assert "invalid choice" in cli.fail("key", "generate-data-key", key_id, "--spec", "DES",
                                        rc=2)


def test_import_key_material(cli: Cli, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = cli.json("key", "create", "--spec", "ECC_NIST_P256", "--origin", "EXTERNAL")
    assert (key["Origin"], key["KeyState"]) == ("EXTERNAL", "PendingImport")
    params = cli.json("key", "get-parameters-for-import", key["KeyId"], "--public-key-out",
                      str(tmp_path / "wrap.der"), "--token-out", str(tmp_path / "token"))
    assert params["WrappingAlgorithm"] == "RSAES_OAEP_SHA_256"
    assert params["WrappingKeySpec"] == "RSA_2048" and params["ParametersValidTo"]
    wrapping = _spki((tmp_path / "wrap.der").read_bytes())
    assert isinstance(wrapping, rsa.RSAPublicKey) and wrapping.key_size == 2048
    assert "exists" in cli.fail("key", "get-parameters-for-import", key["KeyId"],
                                "--public-key-out", str(tmp_path / "wrap.der"), "--token-out",
                                str(tmp_path / "t2"), rc=2)

    mine = ec.generate_private_key(ec.SECP256R1())  # the customer's own key
    pkcs8 = mine.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    sha256 = hashes.SHA256()
    (tmp_path / "material").write_bytes(
        wrapping.encrypt(pkcs8, padding.OAEP(padding.MGF1(sha256), sha256, None)))
    imported = cli.json("key", "import-key-material", key["KeyId"], "--token-file",
                        str(tmp_path / "token"), "--material-file", str(tmp_path / "material"))
    assert imported["KeyState"] == "Enabled"
    (tmp_path / "msg").write_bytes(b"signed with imported material")
    sig = cli.json("key", "sign", key["KeyId"], "--algorithm", "ECDSA_SHA_256",
                   "--message-file", str(tmp_path / "msg"))["Signature"]
    mine.public_key().verify(base64.b64decode(sig), b"signed with imported material",
                             ec.ECDSA(hashes.SHA256()))
    assert "InvalidImportToken" in cli.fail(  # a token is good for one import
        "key", "import-key-material", key["KeyId"], "--token-file", str(tmp_path / "token"),
        "--material-file", str(tmp_path / "material"))
    assert "not a time" in cli.fail("key", "import-key-material", key["KeyId"],
                                    "--token-file", "t", "--material-file", "m",
                                    "--valid-to", "soon", rc=2)


# --- credentials --------------------------------------------------------------------------


def test_credentials_lifecycle(cli: Cli, config: Path) -> None:
    def cred(*args: str, rc: int = 0) -> Any:
        return json.loads(cli.run("credentials", *args, "--json", rc=rc, instance=False).stdout)

    first = cli.json("credentials", "create", "--name", "cli-app")
    other = cli.json("credentials", "create", "--name", "cli-other")
    assert first["Instance"] == INSTANCE and first["Principal"] == "cli-app"
    secrets = {first["SecretAccessKey"], other["SecretAccessKey"]}
    mine = cred("list", "--instance", INSTANCE, "--name", "cli-app")["AccessKeys"]
    assert [k["AccessKeyId"] for k in mine] == [first["AccessKeyId"]]
    assert set(mine[0]) == {"AccessKeyId", "Instance", "Principal", "PrincipalId",
                            "CreateDate", "Enabled"}
    assert mine[0]["Enabled"] is True and mine[0]["CreateDate"].endswith("Z")
    listed = {k["AccessKeyId"]: k for k in cred("list")["AccessKeys"]}
    assert {first["AccessKeyId"], other["AccessKeyId"]} <= set(listed)
    table = cli.run("credentials", "list", instance=False).stdout.decode()
    assert table.splitlines()[0].split() == ["AccessKeyId", "Instance", "Principal",
                                             "CreateDate", "State"]
    row = next(line for line in table.splitlines() if line.startswith(first["AccessKeyId"]))
    assert row.split()[1:3] == [INSTANCE, "cli-app"] and row.split()[-1] == "enabled"

    assert cred("disable", first["AccessKeyId"])["Enabled"] is False
    assert cred("list", "--name", "cli-app")["AccessKeys"][0]["Enabled"] is False
    shown = fields(cli.run("credentials", "enable", first["AccessKeyId"],
                           instance=False).stdout)
    assert shown["AccessKeyId"] == first["AccessKeyId"] and shown["Enabled"] == "True"

    rotated = cred("rotate", first["AccessKeyId"], "--disable-old")
    assert rotated["Principal"] == "cli-app" and rotated["Instance"] == INSTANCE
    assert rotated["OldAccessKeyId"] == first["AccessKeyId"]
    assert rotated["OldAccessKeyEnabled"] is False
    secrets.add(rotated["SecretAccessKey"])
    assert len(secrets) == 3
    kept = cli.run("credentials", "rotate", rotated["AccessKeyId"], instance=False)
    lines = kept.stdout.decode().splitlines()
    assert lines[0].startswith("AccessKeyId=HSMP") and lines[1].startswith("SecretAccessKey=")
    assert b"is enabled" in kept.stderr  # without --disable-old the old key stays
    secrets.add(lines[1].partition("=")[2])
    states = {k["AccessKeyId"]: k["Enabled"]
              for k in cred("list", "--name", "cli-app")["AccessKeys"]}
    assert states == {first["AccessKeyId"]: False, rotated["AccessKeyId"]: True,
                      lines[0].partition("=")[2]: True}

    gone = cred("delete", first["AccessKeyId"])
    assert gone["Deleted"] is True and gone["AccessKeyId"] == first["AccessKeyId"]
    assert first["AccessKeyId"] not in {k["AccessKeyId"] for k in cred("list")["AccessKeys"]}
    for verb in ("delete", "enable", "disable", "rotate"):
        msg = cli.fail("credentials", verb, first["AccessKeyId"], instance=False)
        assert msg == (f"hsmpool: NotFound: access key {first['AccessKeyId']!r} "
                       "does not exist")
    assert "instance 'nope' is not configured" in cli.fail(
        "credentials", "create", "--instance", "nope", instance=False)
    assert "required" in cli.fail("credentials", "disable", rc=2, instance=False)

    # Secrets were shown at creation and rotation only: not listed, not stored in clear.
    every_listing = cli.run("credentials", "list", "--json", instance=False).stdout
    every_listing += cli.run("credentials", "list", instance=False).stdout
    stored = b"".join(p.read_bytes() for p in config.parent.rglob("*") if p.is_file())
    stored += dump(database_for(config.parent / "kms.db"))  # the store's rows, either engine
    for secret in secrets:
        assert secret.encode() not in every_listing and secret.encode() not in stored


# --- aliases ----------------------------------------------------------------------------


def test_alias_operations(cli: Cli) -> None:
    a = cli.json("key", "create")["KeyId"]
    b = cli.json("key", "create")["KeyId"]
    made = cli.json("alias", "create", "cli-alias", a)  # the alias/ prefix is optional
    assert made["AliasName"] == "alias/cli-alias" and made["TargetKeyId"] == a
    assert made["AliasArn"].endswith(":alias/cli-alias")
    assert "AlreadyExists" in cli.fail("alias", "create", "alias/cli-alias", b)
    listed = {x["AliasName"]: x["TargetKeyId"] for x in cli.json("alias", "list")["Aliases"]}
    assert listed["alias/cli-alias"] == a
    assert cli.json("key", "describe", "alias/cli-alias")["KeyId"] == a
    assert "alias/cli-alias" in cli.json("key", "describe", a)["Aliases"]
    assert cli.json("alias", "update", "alias/cli-alias", b)["TargetKeyId"] == b
    assert cli.json("key", "describe", "alias/cli-alias")["KeyId"] == b
    only_b = cli.json("alias", "list", "--key", b)["Aliases"]
    assert [x["AliasName"] for x in only_b] == ["alias/cli-alias"]
    table = cli.run("alias", "list").stdout.decode()
    assert "alias/cli-alias" in table and b in table
    assert cli.run("alias", "delete", "cli-alias").stdout == b"deleted alias/cli-alias\n"
    assert "alias/cli-alias" not in cli.run("alias", "list").stdout.decode()
    assert "NotFound" in cli.fail("key", "describe", "alias/cli-alias")
    assert "NotFound" in cli.fail("alias", "delete", "cli-alias")
    assert "InvalidAliasName" in cli.fail("alias", "create", "bad name!", a)


# --- files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_keys(config: Path) -> dict[str, str]:
    c = Cli(config)
    out = {}
    for spec in ("SYMMETRIC_DEFAULT", "SM4"):
        key_id = c.json("key", "create", "--spec", spec)["KeyId"]
        c.run("alias", "create", f"cli-files-{spec.lower()}", key_id)
        out[spec] = f"alias/cli-files-{spec.lower()}"
    return out


@pytest.mark.parametrize("spec, cipher", [("SYMMETRIC_DEFAULT", "AES_256_GCM"),
                                          ("SM4", "SM4_GCM")])
def test_encrypt_decrypt_round_trip(cli: Cli, file_keys: dict[str, str], tmp_path: Path,
                                    spec: str, cipher: str) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    src, ct, out = tmp_path / "plain.bin", tmp_path / "plain.bin.enc", tmp_path / "back.bin"
    src.write_bytes(data)
    res = cli.json("encrypt", "--key", file_keys[spec], "--context", "app=cli",
                   "--context", "team=blue", str(src), str(ct))
    assert res["Cipher"] == cipher and res["Chunks"] == 4
    assert res["PlaintextBytes"] == len(data) and res["CiphertextBytes"] == ct.stat().st_size
    assert res["EncryptionContext"] == {"app": "cli", "team": "blue"}
    with ct.open("rb") as fh:
        header = fe.read_header(fh)
    assert header.context == {"app": "cli", "team": "blue"}
    assert header.cipher_name == cipher and header.chunk_size == 1 << 20
    assert data[:4096] not in ct.read_bytes()

    line = cli.run("decrypt", str(ct), str(out)).stdout.decode()
    assert line.startswith(f"decrypted {ct} -> {out}: {len(data)} bytes, {cipher}")
    assert out.read_bytes() == data
    out.unlink()
    dres = cli.json("decrypt", "--context", "team=blue", "--context", "app=cli", str(ct),
                    str(out))
    assert dres["KeyId"] == res["KeyId"] and out.read_bytes() == data
    out.unlink()

    msg = cli.fail("decrypt", "--context", "app=other", "--context", "team=blue", str(ct),
                   str(out))
    assert "InvalidCiphertext" in msg and "other" not in msg
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.bin", "plain.bin.enc"]


def test_chunk_size_option(cli: Cli, file_keys: dict[str, str], tmp_path: Path) -> None:
    data = os.urandom(200_000)
    (tmp_path / "in").write_bytes(data)
    res = cli.json("encrypt", "--key", file_keys["SM4"], "--chunk-size", "64K",
                   str(tmp_path / "in"), str(tmp_path / "ct"))
    assert res["ChunkSize"] == 65536 and res["Chunks"] == 4
    cli.run("decrypt", "-q", str(tmp_path / "ct"), str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == data
    assert "chunk size" in cli.fail("encrypt", "--key", file_keys["SM4"], "--chunk-size", "8",
                                    str(tmp_path / "in"), str(tmp_path / "ct2"))
    assert not (tmp_path / "ct2").exists()


def test_stdin_and_stdout(cli: Cli, file_keys: dict[str, str]) -> None:
    data = os.urandom(1_500_000)
    enc = cli.run("encrypt", "-q", "--key", file_keys["SYMMETRIC_DEFAULT"], "-", "-",
                  stdin=data)
    assert enc.stderr == b"" and fe.read_header(io.BytesIO(enc.stdout)).chunk_size == 1 << 20
    dec = cli.run("decrypt", "-", "-", stdin=enc.stdout)
    assert dec.stdout == data
    assert b"decrypted - -> -" in dec.stderr  # the summary moves to stderr
    bad = bytearray(enc.stdout)
    bad[-1] ^= 1
    proc = cli.run("decrypt", "-", "-", stdin=bytes(bad), rc=1)
    assert proc.stdout == b""  # nothing unverified reaches stdout


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_tampered_file(cli: Cli, file_keys: dict[str, str], tmp_path: Path,
                       damage: str) -> None:
    data = os.urandom(2 * (1 << 20) + 100)
    (tmp_path / "in").write_bytes(data)
    cli.run("encrypt", "-q", "--key", file_keys["SM4"], str(tmp_path / "in"),
            str(tmp_path / "ct"))
    blob = bytearray((tmp_path / "ct").read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x80
    elif damage == "truncate":
        del blob[-(100 + fe.TAG_LEN):]
    else:
        blob += b"\0"
    (tmp_path / "ct").write_bytes(bytes(blob))
    (tmp_path / "out").write_bytes(b"keep me")
    msg = cli.fail("decrypt", "--force", str(tmp_path / "ct"), str(tmp_path / "out"))
    assert msg.startswith("hsmpool: InvalidCiphertext: chunk ")
    assert (tmp_path / "out").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "in", "out"]


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_existing_output_is_refused_without_force(cli: Cli, file_keys: dict[str, str],
                                                  tmp_path: Path, command: str) -> None:
    data = os.urandom(70_000)
    (tmp_path / "in").write_bytes(data)
    cli.run("encrypt", "-q", "--key", file_keys["SM4"], str(tmp_path / "in"),
            str(tmp_path / "ct"))
    src = tmp_path / ("in" if command == "encrypt" else "ct")
    key = ["--key", file_keys["SM4"]] if command == "encrypt" else []
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    msg = cli.fail(command, *key, str(src), str(out), rc=2)
    assert "exists" in msg and "--force" in msg and str(out) in msg
    assert out.read_bytes() == b"precious"
    os.chmod(out, 0o644)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")  # a dangling symlink is an existing name too
    assert "exists" in cli.fail(command, *key, str(src), str(link), rc=2)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "in", "link", "out"]

    cli.run(command, "-q", "--force", *key, str(src), str(out))
    if command == "encrypt":
        cli.run("decrypt", "-q", "-f", str(out), str(tmp_path / "back"))
        assert (tmp_path / "back").read_bytes() == data
    else:
        assert out.read_bytes() == data
    assert out.stat().st_mode & 0o777 == 0o600
    # stdout is never refused
    assert cli.run(command, "-q", *key, str(src), "-").stdout


def test_progress_and_quiet(cli: Cli, file_keys: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(os.urandom(3 << 20))
    p = cli.run("encrypt", "--progress", "--key", file_keys["SM4"], str(tmp_path / "in"),
                str(tmp_path / "ct"))
    assert b"100.0%" in p.stderr and b"MB/s" in p.stderr and p.stderr.endswith(b"\n")
    assert p.stdout.startswith(b"encrypted ")
    q = cli.run("decrypt", "--quiet", str(tmp_path / "ct"), str(tmp_path / "out"))
    assert q.stdout == b"" and q.stderr == b""  # stderr is a pipe: no bar without --progress
    cli.fail("decrypt", "--quiet", "--progress", str(tmp_path / "ct"), str(tmp_path / "o2"),
             rc=2)


def test_progress_bar_when_stderr_is_a_terminal(config: Path, file_keys: dict[str, str],
                                                tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(os.urandom(2 << 20))
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [HSMPOOL, "--config", str(config), "encrypt", "--instance", INSTANCE, "--key",
             file_keys["SM4"], str(tmp_path / "in"), str(tmp_path / "ct")],
            stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)  # read while it runs: a full terminal buffer would block the child
        shown = b""
        while True:
            try:
                block = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed and drained
                break
            if not block:
                break
            shown += block
    finally:
        os.close(master)
    assert proc.wait(timeout=120) == 0
    assert shown.startswith(b"\rencrypt ") and b"100.0%" in shown and b"2.0/2.0 MiB" in shown
    q = subprocess.run([HSMPOOL, "--config", str(config), "decrypt", "--instance", INSTANCE,
                        "--quiet", str(tmp_path / "ct"), str(tmp_path / "out")],
                       capture_output=True, timeout=120)
    assert q.returncode == 0 and q.stderr == b""


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, rc, fragment", [
    (["key", "describe", "00000000-0000-0000-0000-000000000000"], 1, "NotFound"),
    (["key", "describe", "alias/none"], 1, "NotFound"),
    (["key", "schedule-deletion", "alias/none", "--days", "3"], 1, "Validation"),
    (["key", "create", "--spec", "DES"], 2, "invalid choice"),
    (["key", "frobnicate"], 2, "invalid choice"),
    (["key"], 2, "COMMAND"),
    (["alias", "create", "x"], 2, "required"),
    (["encrypt", "in", "out"], 2, "--key"),
    (["encrypt", "--key", "k", "--context", "novalue", "in", "out"], 2, "KEY=VALUE"),
    (["encrypt", "--key", "k", "--context", "a=1", "--context", "a=2", "in", "out"], 2,
     "given twice"),
    (["encrypt", "--key", "alias/none", "/nonexistent/in", "out"], 1, "No such file"),
    (["decrypt", "/nonexistent/in", "out"], 1, "No such file"),
    (["encrypt", "--key", "alias/none", "/etc/hostname", "/nonexistent/dir/out"], 1,
     "No such file or directory: '/nonexistent/dir/out'"),
    (["decrypt", "/etc/hostname", "out"], 1, "InvalidCiphertext"),
])
def test_errors_are_one_line(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             args: list[str], rc: int, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert fragment in cli.fail(*args, rc=rc)
    assert not (tmp_path / "out").exists()


def test_serve_usage_errors(cli: Cli) -> None:
    """A bad --log-level (it used to reach uvicorn: a KeyError traceback), port or worker
    count is a one-line usage error."""
    for args in (["--log-level", "loud"], ["--log-level", "WARNING"]):
        msg = cli.fail("serve", *args, rc=2, instance=False)
        assert "invalid choice" in msg and "trace" in msg
    assert "0..65535" in cli.fail("serve", "--port", "70000", rc=2, instance=False)
    assert "1..256" in cli.fail("serve", "--workers", "0", rc=2, instance=False)
    assert "not an integer" in cli.fail("serve", "--port", "http", rc=2, instance=False)
    text = cli.run("serve", "--help", instance=False).stdout.decode()
    assert "critical,error,warning,info,debug,trace" in text and "(default warning)" in text
    assert "(default 8080)" in text and "(default 127.0.0.1)" in text


def test_config_and_instance_errors(cli: Cli, tmp_path: Path) -> None:
    missing = Cli(tmp_path / "missing.toml")
    assert "configuration" in missing.fail("key", "list", rc=2)
    bad = tmp_path / "bad.toml"
    bad.write_text("[kms]\nnot valid toml = = =\n")
    assert "configuration" in Cli(bad).fail("key", "list", rc=2)
    msg = cli.fail("key", "list", "--instance", "nope", instance=False)
    assert msg == "hsmpool: NotFound: instance 'nope' is not configured in the pool"


def test_error_messages_hold_no_context_values(cli: Cli, file_keys: dict[str, str],
                                              tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"payload-bytes " * 100)
    msg = cli.fail("encrypt", "--key", file_keys["SM4"], "--context", "secret:pw=hunter2",
                   str(tmp_path / "in"), str(tmp_path / "ct"))
    assert "Validation" in msg and "hunter2" not in msg
    cli.run("encrypt", "-q", "--key", file_keys["SM4"], "--context", "who=alice-42",
            str(tmp_path / "in"), str(tmp_path / "ct"))
    msg = cli.fail("decrypt", "--context", "who=mallory-13", str(tmp_path / "ct"),
                   str(tmp_path / "out"))
    assert "alice-42" not in msg and "mallory-13" not in msg and "payload" not in msg


# --- a large file in constant memory ----------------------------------------------------


def _run_measured(argv: list[str], out: Path) -> tuple[int, int, float]:
    """Run ``argv`` with stdout and stderr to ``out``; (exit status, peak RSS in KiB of
    that process alone, seconds).

    The command is started by a small launcher process, not by pytest: Linux carries the
    peak RSS of the address space a process came from across ``exec`` (``ru_maxrss`` of a
    child spawned from a 200 MiB pytest reads at least 200 MiB), so the launcher, a bare
    interpreter of a few MiB, is the process the command's figure inherits from."""
    launcher = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
        "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], dict(os.environ), file_actions=[\n"
        "    (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)])\n"
        "_, status, usage = os.wait4(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-S", "-c", launcher, str(out), *argv],
                          capture_output=True, text=True, check=True)
    rc, rss = (int(v) for v in done.stdout.split())
    return rc, rss, time.perf_counter() - t0


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.mark.slow
def test_one_gib_round_trip_in_flat_memory(config: Path, file_keys: dict[str, str],
                                           tmp_path: Path) -> None:
    size = 1 << 30
    src, ct, back = tmp_path / "big", tmp_path / "big.enc", tmp_path / "big.out"
    with src.open("wb") as fh:  # sparse: zeros that take no disk
        fh.truncate(size)
    small = tmp_path / "small"
    small.write_bytes(b"s" * 1000)
    base = [HSMPOOL, "--config", str(config)]
    common = ["--instance", INSTANCE, "--quiet"]
    log = tmp_path / "log"

    rc, rss_small, _ = _run_measured(
        base + ["encrypt", "--key", file_keys["SM4"], *common, str(small), str(tmp_path / "s.enc")],
        log)
    assert rc == 0, log.read_text()
    rc, rss_enc, t_enc = _run_measured(
        base + ["encrypt", "--key", file_keys["SM4"], *common, str(src), str(ct)], log)
    assert rc == 0, log.read_text()
    assert ct.stat().st_size == size + (size >> 20) * fe.TAG_LEN + len(
        fe.read_header(ct.open("rb")))
    rc, rss_dec, t_dec = _run_measured(base + ["decrypt", *common, str(ct), str(back)], log)
    assert rc == 0, log.read_text()

    print(f"1 GiB SM4-GCM via the CLI: encrypt {size / t_enc / 1e6:.0f} MB/s, "
          f"decrypt {size / t_dec / 1e6:.0f} MB/s; peak RSS {rss_small // 1024} MiB "
          f"(1 KB file), {rss_enc // 1024} / {rss_dec // 1024} MiB (1 GiB)")
    assert rss_enc < 200 * 1024 and rss_dec < 200 * 1024
    assert rss_enc - rss_small < 48 * 1024 and rss_dec - rss_small < 48 * 1024  # flat

    assert back.stat().st_size == size
    zeros = hashlib.sha256()
    block = bytes(4 << 20)
    for _ in range(size // len(block)):
        zeros.update(block)
    assert _sha256_file(back) == zeros.hexdigest()


# --- secrets ----------------------------------------------------------------------------


def test_secret_commands(cli: Cli, tmp_path: Path) -> None:
    name = f"cli/db-{os.getpid()}"
    value = json.dumps({"username": "app", "password": "pw-1"})
    proc = cli.run("secret", "create", name, "--value-file", "-", "--tag", "team=blue",
                   "--json", stdin=value.encode())
    made = json.loads(proc.stdout)
    assert made["Name"] == name and made["ARN"].startswith("arn:aws:secretsmanager:")
    assert cli.run("secret", "get", name).stdout.decode() == value
    assert cli.run("secret", "get", name, "--field", "username").stdout == b"app"
    cli.run("secret", "put", name, "--value", "second")
    assert cli.run("secret", "get", name).stdout == b"second"
    assert cli.run("secret", "get", name, "--stage", "AWSPREVIOUS").stdout.decode() == value
    desc = cli.json("secret", "describe", made["ARN"])
    assert sorted(map(tuple, desc["Versions"].values())) == [("AWSCURRENT",), ("AWSPREVIOUS",)]
    assert "pw-1" not in json.dumps(desc) and desc["Tags"] == {"team": "blue"}
    rotated = cli.json("secret", "rotate", name, "--rotator", "generic", "--every-days", "30")
    assert rotated["NextRotationDate"] is not None
    new = cli.run("secret", "get", name).stdout.decode()
    assert new not in ("second", value) and len(new) == 32
    assert name in [s["Name"] for s in cli.json("secret", "list")]
    cli.run("secret", "delete", name, "--days", "7")
    assert "marked for deletion" in cli.fail("secret", "get", name)
    cli.run("secret", "restore", name)
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)))
    cli.run("secret", "create", name + "-bin", "--binary-file", str(blob))
    out = tmp_path / "out"
    cli.run("secret", "get", name + "-bin", "--out", str(out))
    assert out.read_bytes() == bytes(range(256))
    cli.run("secret", "delete", name + "-bin", "--force")
    assert "NotFound" in cli.fail("secret", "describe", name + "-bin")
