"""Authorisation rules through the real server and boto3: the README's credential example
(a policy on ``alias/app-*`` allows Encrypt *and* Decrypt, issue 16), Decrypt's KeyId to a
caller not allowed (issue 17 item 7), alias management's checks on the keys (item 12), one
audit record per request under its own action (item 7b), SM4 algorithm names (issue 16)."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kms.audit_reader import Filter, read
from tests.server.conftest import (
    ROOT,
    Cred,
    Server,
    create_credential,
    raises_code,
    run_server,
    write_server_config,
)


def _uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _user(server: Server, *statements: dict[str, Any]) -> Any:
    return server.client(server.credential("srv", _uniq("u"), {
        "Version": "2012-10-17", "Statement": list(statements)}))


# --- the README example --------------------------------------------------------------------


def readme_credentials_command() -> str:
    """The README's ``credentials create`` example, as written (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    (block,) = [b for b in blocks if "credentials create --instance default" in b]
    lines = block.replace("\\\n", " ").splitlines()
    (command,) = [line for line in lines if "credentials create --instance default" in line]
    return command.strip()


@pytest.fixture(scope="module")
def readme_server(token_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[Server, Any]]:
    """A server with the README's instance name, "default", and its admin."""
    config = write_server_config(tmp_path_factory.mktemp("readme"), token_dir,
                                 {"default": [5]})
    admin = create_credential(config, "default", "admin")
    with run_server(config) as srv:
        yield srv, srv.client(admin)


def test_readme_alias_policy_example_encrypts_and_decrypts(
        readme_server: tuple[Server, Any]) -> None:
    srv, admin = readme_server
    command = readme_credentials_command()
    assert "alias/app-*" in command and command.startswith(".venv/bin/hsmpool ")
    out = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HSMPOOL_CONFIG": str(srv.config)},
                         check=True).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    app = srv.client(Cred(fields["AccessKeyId"], fields["SecretAccessKey"], "default"))
    key = admin.create_key()["KeyMetadata"]
    admin.create_alias(AliasName="alias/app-one", TargetKeyId=key["KeyId"])
    ct = app.encrypt(KeyId="alias/app-one", Plaintext=b"readme",
                     EncryptionContext={"app": "demo"})["CiphertextBlob"]
    for extra in ({}, {"KeyId": "alias/app-one"}):
        d = app.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "demo"}, **extra)
        assert d["Plaintext"] == b"readme" and d["KeyId"] == key["Arn"]
    # A key without an app-* alias does not exist for it.
    other = admin.create_key()["KeyMetadata"]
    admin.create_alias(AliasName="alias/other-one", TargetKeyId=other["KeyId"])
    other_ct = admin.encrypt(KeyId=other["KeyId"], Plaintext=b"no")["CiphertextBlob"]
    with raises_code(app, "NotFoundException"):
        app.encrypt(KeyId="alias/other-one", Plaintext=b"x")
    with raises_code(app, "NotFoundException"):
        app.decrypt(CiphertextBlob=other_ct)


# --- Decrypt's KeyId, alias management -----------------------------------------------------


def test_decrypt_key_id_answers_the_same_whether_or_not_the_alias_exists(
        server: Server, kms: Any) -> None:
    a, b = kms.create_key()["KeyMetadata"], kms.create_key()["KeyMetadata"]
    exists = "alias/" + _uniq("exists")
    kms.create_alias(AliasName=exists, TargetKeyId=b["KeyId"])
    ct = kms.encrypt(KeyId=a["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    b_only = _user(server, {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": b["Arn"]})
    answers = set()
    for named in (exists, "alias/" + _uniq("missing")):
        with raises_code(b_only, "NotFoundException") as info:
            b_only.decrypt(CiphertextBlob=ct, KeyId=named)
        answers.add((info.value.response["Error"]["Code"],
                     info.value.response["ResponseMetadata"]["HTTPStatusCode"]))
    assert len(answers) == 1
    with raises_code(kms, "IncorrectKeyException"):  # allowed on the key: told the truth
        kms.decrypt(CiphertextBlob=ct, KeyId=exists)


def test_delete_and_update_alias_need_the_key_too(server: Server, kms: Any) -> None:
    k1, k2 = kms.create_key()["KeyMetadata"], kms.create_key()["KeyMetadata"]
    name = "alias/" + _uniq("guarded")
    kms.create_alias(AliasName=name, TargetKeyId=k1["KeyId"])
    on_aliases = {"Effect": "Allow", "Action": ["kms:DeleteAlias", "kms:UpdateAlias",
                                                "kms:CreateAlias"],
                  "Resource": "arn:aws:kms:*:*:alias/*"}
    aliases_only = _user(server, on_aliases)
    with raises_code(aliases_only, "NotFoundException"):
        aliases_only.delete_alias(AliasName=name)
    with raises_code(aliases_only, "NotFoundException"):
        aliases_only.update_alias(AliasName=name, TargetKeyId=k2["KeyId"])
    with raises_code(aliases_only, "NotFoundException"):
        aliases_only.create_alias(AliasName="alias/" + _uniq("new"), TargetKeyId=k1["KeyId"])
    new_key_only = _user(server, on_aliases, {"Effect": "Allow", "Action": "kms:UpdateAlias",
                                              "Resource": k2["Arn"]})
    with raises_code(new_key_only, "NotFoundException"):
        new_key_only.update_alias(AliasName=name, TargetKeyId=k2["KeyId"])
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == k1["KeyId"]
    both = _user(server, on_aliases, {"Effect": "Allow", "Action": ["kms:DeleteAlias",
                                                                    "kms:UpdateAlias"],
                                      "Resource": [k1["Arn"], k2["Arn"]]})
    both.update_alias(AliasName=name, TargetKeyId=k2["KeyId"])
    both.delete_alias(AliasName=name)
    with raises_code(kms, "NotFoundException"):
        kms.describe_key(KeyId=name)


# --- one audit record per request ----------------------------------------------------------


def _audit_barrier(kms: Any) -> None:
    """A durable change: its answer waits for the audit commit, which carries every record
    queued before it (the server's requests are answered in order here)."""
    kms.tag_resource(KeyId=kms.create_key()["KeyMetadata"]["KeyId"],
                     Tags=[{"TagKey": "barrier", "TagValue": "1"}])


@pytest.mark.parametrize(("op", "args", "action"), [
    ("list_resource_tags", {}, "kms:ListResourceTags"),
    ("get_key_policy", {"PolicyName": "default"}, "kms:GetKeyPolicy"),
    ("list_key_policies", {}, "kms:ListKeyPolicies"),
    ("rotate_key_on_demand", {}, "kms:RotateKeyOnDemand"),
    ("list_key_rotations", {}, "kms:ListKeyRotations"),
    ("describe_key", {}, "kms:DescribeKey"),
    ("list_grants", {}, "kms:ListGrants"),
])
def test_each_request_is_audited_once_under_its_own_action(
        server: Server, kms: Any, op: str, args: dict[str, Any], action: str) -> None:
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    getattr(kms, op)(KeyId=kid, **args)
    getattr(kms, op)(KeyId=kid, **args)
    _audit_barrier(kms)
    records = [r.action for r in read(server.config.parent / "audit", Filter(key_id=kid))]
    assert records == ["kms:CreateKey", action, action]


# --- SM4 names -----------------------------------------------------------------------------


def test_sm4_keys_take_sm4_gcm(kms: Any) -> None:
    sm4 = kms.create_key(KeySpec="SM4")["KeyMetadata"]
    assert sm4["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    r = kms.encrypt(KeyId=sm4["KeyId"], Plaintext=b"sm4", EncryptionAlgorithm="SM4_GCM")
    assert r["EncryptionAlgorithm"] == "SM4_GCM"
    for alg in ("SM4_GCM", "SYMMETRIC_DEFAULT"):
        d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionAlgorithm=alg)
        assert d["Plaintext"] == b"sm4" and d["EncryptionAlgorithm"] == alg
    aes = kms.create_key()["KeyMetadata"]
    with raises_code(kms, "InvalidKeyUsageException"):
        kms.encrypt(KeyId=aes["KeyId"], Plaintext=b"x", EncryptionAlgorithm="SM4_GCM")
