"""Every AWS KMS operation of the server through the real boto3 ``kms`` client: response
shapes (ARNs where AWS returns ARNs, epoch dates parsed as datetimes), pagination, and each
error as boto3's modeled exception class."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from hsmpool.gm import SM2PublicKey
from kms.service import KmsClient
from tests.server.conftest import (
    Server,
    call,
    create_credential,
    raises_code,
    run_server,
    write_server_config,
)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
KEY_ARN_RE = re.compile(r"^arn:aws:kms:us-east-1:(\d{12}):key/([0-9a-f-]{36})$")


def _uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _new_key(kms: Any, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None,
             **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"KeySpec": spec, **kw}
    if usage:
        args["KeyUsage"] = usage
    return kms.create_key(**args)["KeyMetadata"]


def _code(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _assert_recent(d: datetime) -> None:
    """A parsed epoch date: timezone-aware and today-ish (a sanity bound, not timing)."""
    assert isinstance(d, datetime) and d.tzinfo is not None
    assert abs(d - datetime.now(UTC)) < timedelta(days=1)


@pytest.fixture(scope="module")
def account(kms: Any) -> str:
    return str(_new_key(kms)["AWSAccountId"])


@pytest.fixture(scope="module")
def sym(kms: Any) -> dict[str, Any]:
    return _new_key(kms, Description="the module's symmetric key")


@pytest.fixture(scope="module")
def tokens(kms: Any, sym: dict[str, Any], account: str) -> list[str]:
    """Two real grant tokens (grants on ``sym`` to the admin itself): requests may pass
    tokens of any grant; a token of a grant on another key is ignored."""
    return [kms.create_grant(KeyId=sym["KeyId"], Operations=["Encrypt", "Decrypt"],
                             GranteePrincipal=f"arn:aws:iam::{account}:user/admin",
                             )["GrantToken"] for _ in range(2)]


@pytest.fixture(scope="module")
def sym_b(kms: Any) -> dict[str, Any]:
    return _new_key(kms)


@pytest.fixture(scope="module")
def sm4(kms: Any) -> dict[str, Any]:
    return _new_key(kms, "SM4")


@pytest.fixture(scope="module")
def rsa_sign(kms: Any) -> dict[str, Any]:
    return _new_key(kms, "RSA_2048", "SIGN_VERIFY")


@pytest.fixture(scope="module")
def rsa_enc(kms: Any) -> dict[str, Any]:
    return _new_key(kms, "RSA_2048", "ENCRYPT_DECRYPT")


@pytest.fixture(scope="module")
def hmac256(kms: Any) -> dict[str, Any]:
    return _new_key(kms, "HMAC_256", "GENERATE_VERIFY_MAC")


# --- CreateKey / DescribeKey -------------------------------------------------------------

RSA_SIGN = ["RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
            "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384",
            "RSASSA_PKCS1_V1_5_SHA_512"]
RSA_ENC = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]

# (KeySpec, KeyUsage or None for the default, the algorithm field, its value)
SPECS = [
    ("SYMMETRIC_DEFAULT", None, "EncryptionAlgorithms", ["SYMMETRIC_DEFAULT"]),
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", ["SYMMETRIC_DEFAULT"]),
    ("SM4", None, "EncryptionAlgorithms", ["SYMMETRIC_DEFAULT"]),
    ("RSA_2048", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", RSA_ENC),
    ("RSA_2048", "SIGN_VERIFY", "SigningAlgorithms", RSA_SIGN),
    ("RSA_3072", "SIGN_VERIFY", "SigningAlgorithms", RSA_SIGN),
    ("RSA_4096", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", RSA_ENC),
    ("ECC_NIST_P256", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_256"]),
    ("ECC_SECG_P256K1", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_256"]),
    ("SM2", "SIGN_VERIFY", "SigningAlgorithms", ["SM2DSA"]),
    ("SM2", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", ["SM2PKE"]),
    ("HMAC_256", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_256"]),
    ("HMAC_384", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_384"]),
    ("HMAC_512", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_512"]),
    ("HMAC_SM3", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SM3"]),
]


@pytest.mark.parametrize(("spec", "usage", "alg_field", "algs"), SPECS,
                         ids=[f"{s[0]}-{s[1] or 'default'}" for s in SPECS])
def test_create_key_every_spec(kms: Any, account: str, spec: str, usage: str | None,
                               alg_field: str, algs: list[str]) -> None:
    md = _new_key(kms, spec, usage, Description=f"a {spec} key")
    expected_usage = usage or "ENCRYPT_DECRYPT"
    assert UUID_RE.match(md["KeyId"])
    m = KEY_ARN_RE.match(md["Arn"])
    assert m is not None and m.groups() == (account, md["KeyId"])
    assert md["AWSAccountId"] == account
    assert md["KeySpec"] == spec and md["CustomerMasterKeySpec"] == spec
    assert md["KeyUsage"] == expected_usage
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    assert md["Origin"] == "AWS_KMS" and md["KeyManager"] == "CUSTOMER"
    assert md["Description"] == f"a {spec} key"
    assert md["MultiRegion"] is False
    assert md[alg_field] == algs
    for other in {"EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms"} - {alg_field}:
        assert other not in md
    assert "DeletionDate" not in md
    _assert_recent(md["CreationDate"])
    # DescribeKey answers the same metadata, by id and by ARN.
    for ref in (md["KeyId"], md["Arn"]):
        assert kms.describe_key(KeyId=ref)["KeyMetadata"] == md


def test_create_key_with_deprecated_customer_master_key_spec(kms: Any) -> None:
    md = kms.create_key(CustomerMasterKeySpec="ECC_NIST_P256",
                        KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert md["KeySpec"] == "ECC_NIST_P256" and md["KeyUsage"] == "SIGN_VERIFY"


@pytest.mark.parametrize(("spec", "usage"), [
    ("HMAC_256", "ENCRYPT_DECRYPT"), ("ECC_NIST_P256", "ENCRYPT_DECRYPT"),
    ("SYMMETRIC_DEFAULT", "SIGN_VERIFY"), ("NO_SUCH_SPEC", None),
    ("SYMMETRIC_DEFAULT", "NO_SUCH_USAGE"),
])
def test_create_key_invalid_spec_or_usage(kms: Any, spec: str, usage: str | None) -> None:
    args = {"KeySpec": spec} | ({"KeyUsage": usage} if usage else {})
    with raises_code(kms, "ValidationException"):
        kms.create_key(**args)


def test_create_key_with_tags_and_describe_by_alias(kms: Any, account: str) -> None:
    md = _new_key(kms, Tags=[{"TagKey": "team", "TagValue": "red"},
                             {"TagKey": "env", "TagValue": "test"}])
    tags = kms.list_resource_tags(KeyId=md["KeyId"])
    assert sorted((t["TagKey"], t["TagValue"]) for t in tags["Tags"]) == [
        ("env", "test"), ("team", "red")]
    assert tags["Truncated"] is False
    alias = "alias/" + _uniq("describe")
    kms.create_alias(AliasName=alias, TargetKeyId=md["KeyId"])
    alias_arn = f"arn:aws:kms:us-east-1:{account}:{alias}"
    for ref in (alias, alias_arn):
        assert kms.describe_key(KeyId=ref)["KeyMetadata"]["KeyId"] == md["KeyId"]


def test_describe_key_not_found(kms: Any, account: str) -> None:
    missing = str(uuid.uuid4())
    for ref in (missing, f"arn:aws:kms:us-east-1:{account}:key/{missing}",
                "alias/" + _uniq("missing"), "arn:aws:kms:us-east-1:000000000000:key/" + missing,
                "arn:aws:kms:eu-west-1:" + account + ":key/" + missing, "not-a-key-id"):
        with pytest.raises(kms.exceptions.NotFoundException):
            kms.describe_key(KeyId=ref)


def test_key_policy_operations(kms: Any, sym: dict[str, Any]) -> None:
    assert kms.list_key_policies(KeyId=sym["KeyId"])["PolicyNames"] == ["default"]
    doc = kms.get_key_policy(KeyId=sym["KeyId"], PolicyName="default")["Policy"]
    assert '"kms:*"' in doc and sym["AWSAccountId"] in doc


# --- ListKeys ----------------------------------------------------------------------------


def test_list_keys_pagination(kms: Any) -> None:
    mine = {_new_key(kms)["KeyId"] for _ in range(7)}
    seen: list[str] = []
    pages = 0
    marker: str | None = None
    while True:
        args: dict[str, Any] = {"Limit": 3}
        if marker:
            args["Marker"] = marker
        page = kms.list_keys(**args)
        pages += 1
        assert len(page["Keys"]) <= 3
        for k in page["Keys"]:
            m = KEY_ARN_RE.match(k["KeyArn"])
            assert m is not None and m.group(2) == k["KeyId"]
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        assert page["NextMarker"]
        marker = page["NextMarker"]
        assert pages < 1000
    assert pages >= 3  # at least the 7 keys of this test, 3 to a page
    assert len(seen) == len(set(seen))
    assert mine <= set(seen)
    # One big page lists the same keys; so does boto3's own paginator.
    whole = kms.list_keys(Limit=1000)
    assert whole["Truncated"] is False
    assert {k["KeyId"] for k in whole["Keys"]} == set(seen)
    paged = [k["KeyId"] for p in kms.get_paginator("list_keys").paginate(
        PaginationConfig={"PageSize": 4}) for k in p["Keys"]]
    assert sorted(paged) == sorted(seen)


def test_list_keys_bad_marker_and_limit(kms: Any) -> None:
    with raises_code(kms, "ValidationException"):
        kms.list_keys(Limit=1001)
    with raises_code(kms, "InvalidMarkerException"):
        kms.list_keys(Marker="x" * 2000)


# --- lifecycle ---------------------------------------------------------------------------


def test_enable_disable_key(kms: Any) -> None:
    kid = _new_key(kms)["KeyId"]
    ct = kms.encrypt(KeyId=kid, Plaintext=b"before")["CiphertextBlob"]
    kms.disable_key(KeyId=kid)
    kms.disable_key(KeyId=kid)  # idempotent
    md = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert md["KeyState"] == "Disabled" and md["Enabled"] is False
    with pytest.raises(kms.exceptions.DisabledException):
        kms.encrypt(KeyId=kid, Plaintext=b"x")
    with pytest.raises(kms.exceptions.DisabledException):
        kms.decrypt(CiphertextBlob=ct)
    with pytest.raises(kms.exceptions.DisabledException):
        kms.generate_data_key(KeyId=kid, KeySpec="AES_256")
    kms.enable_key(KeyId=kid)
    md = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"before"
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.enable_key(KeyId=str(uuid.uuid4()))


def test_schedule_and_cancel_key_deletion(kms: Any) -> None:
    md = _new_key(kms)
    kid = md["KeyId"]
    ct = kms.encrypt(KeyId=kid, Plaintext=b"keep me")["CiphertextBlob"]
    r = kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    assert r["KeyId"] == md["Arn"]
    assert r["KeyState"] == "PendingDeletion" and r["PendingWindowInDays"] == 7
    assert isinstance(r["DeletionDate"], datetime)
    # The date is 7 days after the request (date arithmetic; a day of slack).
    assert timedelta(days=6) < r["DeletionDate"] - datetime.now(UTC) < timedelta(days=8)
    d = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert d["KeyState"] == "PendingDeletion" and d["Enabled"] is False
    assert d["DeletionDate"] == r["DeletionDate"]
    # Still listed, as in AWS.
    assert kid in {k["KeyId"] for k in kms.list_keys(Limit=1000)["Keys"]}
    for op in (lambda: kms.encrypt(KeyId=kid, Plaintext=b"x"),
               lambda: kms.decrypt(CiphertextBlob=ct),
               lambda: kms.enable_key(KeyId=kid),
               lambda: kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)):
        with pytest.raises(kms.exceptions.KMSInvalidStateException):
            op()
    r = kms.cancel_key_deletion(KeyId=kid)
    assert r["KeyId"] == md["Arn"]
    d = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert d["KeyState"] == "Disabled" and "DeletionDate" not in d  # AWS: Disabled after
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.cancel_key_deletion(KeyId=kid)
    kms.enable_key(KeyId=kid)
    assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"keep me"
    # The default window is 30 days; out-of-range windows are refused.
    r = kms.schedule_key_deletion(KeyId=kid)
    assert r["PendingWindowInDays"] == 30
    kms.cancel_key_deletion(KeyId=kid)
    for days in (3, 31):
        with raises_code(kms, "ValidationException"):
            kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=days)


def test_update_key_description(kms: Any) -> None:
    kid = _new_key(kms, Description="old")["KeyId"]
    kms.update_key_description(KeyId=kid, Description="new — ünïcode ✓")
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "new — ünïcode ✓"
    kms.update_key_description(KeyId=kid, Description="")
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == ""
    with raises_code(kms, "ValidationException"):
        kms.update_key_description(KeyId=kid, Description="d" * 8193)


def test_tag_untag_list_resource_tags(kms: Any) -> None:
    kid = _new_key(kms)["KeyId"]
    assert kms.list_resource_tags(KeyId=kid)["Tags"] == []
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "a", "TagValue": "1"},
                                      {"TagKey": "b", "TagValue": "2"}])
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "a", "TagValue": "one"},
                                      {"TagKey": "c", "TagValue": ""}])
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=kid)["Tags"]}
    assert tags == {"a": "one", "b": "2", "c": ""}
    kms.untag_resource(KeyId=kid, TagKeys=["a", "nope"])
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=kid)["Tags"]}
    assert tags == {"b": "2", "c": ""}
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.tag_resource(KeyId=str(uuid.uuid4()), Tags=[{"TagKey": "a", "TagValue": "1"}])
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.list_resource_tags(KeyId=str(uuid.uuid4()))


# --- aliases -----------------------------------------------------------------------------


def test_alias_lifecycle(kms: Any, account: str) -> None:
    k1 = _new_key(kms)
    k2 = _new_key(kms)
    name = "alias/" + _uniq("life")
    kms.create_alias(AliasName=name, TargetKeyId=k1["Arn"])
    with pytest.raises(kms.exceptions.AlreadyExistsException):
        kms.create_alias(AliasName=name, TargetKeyId=k2["KeyId"])
    listed = kms.list_aliases(KeyId=k1["KeyId"])
    assert listed["Truncated"] is False
    (entry,) = listed["Aliases"]
    assert entry["AliasName"] == name
    assert entry["AliasArn"] == f"arn:aws:kms:us-east-1:{account}:{name}"
    assert entry["TargetKeyId"] == k1["KeyId"]
    _assert_recent(entry["CreationDate"])
    _assert_recent(entry["LastUpdatedDate"])
    ct = kms.encrypt(KeyId=name, Plaintext=b"via alias")
    assert ct["KeyId"] == k1["Arn"]
    kms.update_alias(AliasName=name, TargetKeyId=k2["KeyId"])
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == k2["KeyId"]
    assert kms.encrypt(KeyId=name, Plaintext=b"x")["KeyId"] == k2["Arn"]
    assert kms.list_aliases(KeyId=k1["KeyId"])["Aliases"] == []
    # The old ciphertext still names k1.
    assert kms.decrypt(CiphertextBlob=ct["CiphertextBlob"])["KeyId"] == k1["Arn"]
    kms.delete_alias(AliasName=name)
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId=name)
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.delete_alias(AliasName=name)
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.update_alias(AliasName=name, TargetKeyId=k1["KeyId"])
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.create_alias(AliasName=name, TargetKeyId=str(uuid.uuid4()))


def test_alias_update_to_other_usage_refused(kms: Any, hmac256: dict[str, Any]) -> None:
    k = _new_key(kms)
    name = "alias/" + _uniq("usage")
    kms.create_alias(AliasName=name, TargetKeyId=k["KeyId"])
    with raises_code(kms, "ValidationException"):
        kms.update_alias(AliasName=name, TargetKeyId=hmac256["KeyId"])
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == k["KeyId"]


@pytest.mark.parametrize("name", ["noprefix", "alias/", "alias/aws/reserved", "alias/sp ace",
                                  "alias/semi;colon", "alias/" + "x" * 300])
def test_invalid_alias_names(kms: Any, sym: dict[str, Any], name: str) -> None:
    with pytest.raises(kms.exceptions.InvalidAliasNameException):
        kms.create_alias(AliasName=name, TargetKeyId=sym["KeyId"])


def test_list_aliases_pagination(kms: Any) -> None:
    k = _new_key(kms)
    prefix = _uniq("page")
    names = {f"alias/{prefix}-{i}" for i in range(5)}
    for n in sorted(names):
        kms.create_alias(AliasName=n, TargetKeyId=k["KeyId"])
    # All aliases of the instance, two to a page.
    seen: list[str] = []
    marker: str | None = None
    pages = 0
    while True:
        args: dict[str, Any] = {"Limit": 2} | ({"Marker": marker} if marker else {})
        page = kms.list_aliases(**args)
        pages += 1
        assert len(page["Aliases"]) <= 2
        seen += [a["AliasName"] for a in page["Aliases"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
        assert pages < 1000
    assert pages >= 3 and len(seen) == len(set(seen)) and names <= set(seen)
    # The aliases of one key, paged.
    by_key: list[str] = []
    marker = None
    while True:
        args = {"KeyId": k["KeyId"], "Limit": 2} | ({"Marker": marker} if marker else {})
        page = kms.list_aliases(**args)
        by_key += [a["AliasName"] for a in page["Aliases"]]
        assert all(a["TargetKeyId"] == k["KeyId"] for a in page["Aliases"])
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert sorted(by_key) == sorted(names)
    paged = [a["AliasName"] for p in kms.get_paginator("list_aliases").paginate(
        KeyId=k["KeyId"], PaginationConfig={"PageSize": 3}) for a in p["Aliases"]]
    assert sorted(paged) == sorted(names)


# --- rotation ----------------------------------------------------------------------------


def test_rotation_status_enable_disable(kms: Any) -> None:
    md = _new_key(kms)
    kid = md["KeyId"]
    st = kms.get_key_rotation_status(KeyId=kid)
    assert st["KeyRotationEnabled"] is False and st["KeyId"] == md["Arn"]
    kms.enable_key_rotation(KeyId=kid, RotationPeriodInDays=90)
    st = kms.get_key_rotation_status(KeyId=kid)
    assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 90
    assert timedelta(days=89) < st["NextRotationDate"] - datetime.now(UTC) < timedelta(days=91)
    kms.enable_key_rotation(KeyId=kid)
    assert kms.get_key_rotation_status(KeyId=kid)["RotationPeriodInDays"] == 365
    kms.disable_key_rotation(KeyId=kid)
    st = kms.get_key_rotation_status(KeyId=kid)
    assert st["KeyRotationEnabled"] is False and "NextRotationDate" not in st
    with raises_code(kms, "ValidationException"):  # 90..2560 (boto3 checks the minimum)
        kms.enable_key_rotation(KeyId=kid, RotationPeriodInDays=2561)


def test_rotation_periods_below_aws_minimum_are_refused_on_the_wire(server: Server,
                                                                    kms: Any) -> None:
    """The service keeps 7..2560 days (Alibaba's front end allows 7..730); the AWS front
    end still refuses what AWS refuses (boto3 checks 90 itself, so this goes raw)."""
    kid = _new_key(kms)["KeyId"]
    status, body = call(server.port, server.creds["admin"], "EnableKeyRotation",
                        {"KeyId": kid, "RotationPeriodInDays": 30})
    assert (status, body["__type"]) == (400, "ValidationException")
    assert kms.get_key_rotation_status(KeyId=kid)["KeyRotationEnabled"] is False


def test_rotate_on_demand_and_list_rotations(kms: Any, sm4: dict[str, Any]) -> None:
    for md in (_new_key(kms), sm4):
        kid = md["KeyId"]
        before = kms.list_key_rotations(KeyId=kid)
        old = kms.encrypt(KeyId=kid, Plaintext=b"old", EncryptionContext={"v": "1"})
        r = kms.rotate_key_on_demand(KeyId=kid)
        assert r["KeyId"] in (kid, md["Arn"])
        rot = kms.list_key_rotations(KeyId=kid)
        assert rot["Truncated"] is False
        assert len(rot["Rotations"]) == len(before["Rotations"]) + 1
        last = rot["Rotations"][-1]
        assert last["KeyId"] in (kid, md["Arn"]) and last["RotationType"] == "ON_DEMAND"
        _assert_recent(last["RotationDate"])
        new = kms.encrypt(KeyId=kid, Plaintext=b"new", EncryptionContext={"v": "1"})
        # Old and new ciphertexts both decrypt, each under its own version.
        assert kms.decrypt(CiphertextBlob=old["CiphertextBlob"],
                           EncryptionContext={"v": "1"})["Plaintext"] == b"old"
        assert kms.decrypt(CiphertextBlob=new["CiphertextBlob"],
                           EncryptionContext={"v": "1"})["Plaintext"] == b"new"


def test_rotation_unsupported_for_asymmetric_and_hmac(kms: Any, rsa_sign: dict[str, Any],
                                                      hmac256: dict[str, Any]) -> None:
    for md in (rsa_sign, hmac256):
        with pytest.raises(kms.exceptions.UnsupportedOperationException):
            kms.enable_key_rotation(KeyId=md["KeyId"])
        with pytest.raises(kms.exceptions.UnsupportedOperationException):
            kms.rotate_key_on_demand(KeyId=md["KeyId"])


# --- symmetric cryptography --------------------------------------------------------------


def test_encrypt_decrypt_every_key_reference(kms: Any, sym: dict[str, Any],
                                             account: str, tokens: list[str]) -> None:
    alias = "alias/" + _uniq("refs")
    kms.create_alias(AliasName=alias, TargetKeyId=sym["KeyId"])
    refs = [sym["KeyId"], sym["Arn"], alias, f"arn:aws:kms:us-east-1:{account}:{alias}"]
    ctx = {"purpose": "test", "ünï": "cödé"}
    for ref in refs:
        pt = os.urandom(100)
        r = kms.encrypt(KeyId=ref, Plaintext=pt, EncryptionContext=ctx,
                        GrantTokens=tokens)
        assert r["KeyId"] == sym["Arn"] and r["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=ctx,
                        GrantTokens=tokens[:1])
        assert d["Plaintext"] == pt and d["KeyId"] == sym["Arn"]
        assert d["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        # With the KeyId named, by the same reference.
        d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=ctx, KeyId=ref)
        assert d["Plaintext"] == pt


def test_encrypt_decrypt_sm4_and_limits(kms: Any, sm4: dict[str, Any]) -> None:
    for size in (1, 4096):
        pt = os.urandom(size)
        r = kms.encrypt(KeyId=sm4["KeyId"], Plaintext=pt)
        assert r["KeyId"] == sm4["Arn"]
        assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"])["Plaintext"] == pt
    with raises_code(kms, "ValidationException"):
        kms.encrypt(KeyId=sm4["KeyId"], Plaintext=b"x" * 4097)


def test_decrypt_failures(kms: Any, sym: dict[str, Any], sym_b: dict[str, Any]) -> None:
    ct = kms.encrypt(KeyId=sym["KeyId"], Plaintext=b"secret",
                     EncryptionContext={"a": "b"})["CiphertextBlob"]
    for ctx in ({}, {"a": "c"}, {"a": "b", "extra": "x"}, {"A": "b"}):
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)
    tampered = bytearray(ct)
    tampered[-1] ^= 1
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=bytes(tampered), EncryptionContext={"a": "b"})
    for junk in (b"\x00", b"not a ciphertext at all", os.urandom(200), ct[:20]):
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(CiphertextBlob=junk)
    with pytest.raises(kms.exceptions.IncorrectKeyException):
        kms.decrypt(CiphertextBlob=ct, EncryptionContext={"a": "b"}, KeyId=sym_b["KeyId"])


def test_re_encrypt(kms: Any, sym: dict[str, Any], sm4: dict[str, Any],
                    tokens: list[str]) -> None:
    ct = kms.encrypt(KeyId=sym["KeyId"], Plaintext=b"move me",
                     EncryptionContext={"src": "1"})["CiphertextBlob"]
    r = kms.re_encrypt(CiphertextBlob=ct, SourceEncryptionContext={"src": "1"},
                       DestinationKeyId=sm4["KeyId"], DestinationEncryptionContext={"dst": "2"},
                       GrantTokens=tokens)
    assert r["SourceKeyId"] == sym["Arn"] and r["KeyId"] == sm4["Arn"]
    assert r["SourceEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert r["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"dst": "2"})
    assert d["Plaintext"] == b"move me" and d["KeyId"] == sm4["Arn"]
    # With the source key named, and into the same key.
    r2 = kms.re_encrypt(CiphertextBlob=ct, SourceEncryptionContext={"src": "1"},
                        SourceKeyId=sym["Arn"], DestinationKeyId=sym["KeyId"])
    assert kms.decrypt(CiphertextBlob=r2["CiphertextBlob"])["Plaintext"] == b"move me"
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.re_encrypt(CiphertextBlob=ct, DestinationKeyId=sm4["KeyId"])
    with pytest.raises(kms.exceptions.IncorrectKeyException):
        kms.re_encrypt(CiphertextBlob=ct, SourceEncryptionContext={"src": "1"},
                       SourceKeyId=sm4["KeyId"], DestinationKeyId=sym["KeyId"])
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.re_encrypt(CiphertextBlob=ct, SourceEncryptionContext={"src": "1"},
                       DestinationKeyId=str(uuid.uuid4()))


@pytest.mark.parametrize(("args", "size"), [
    ({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16), ({"NumberOfBytes": 1}, 1),
    ({"NumberOfBytes": 64}, 64), ({"NumberOfBytes": 1024}, 1024)])
def test_generate_data_key(kms: Any, sym: dict[str, Any], sm4: dict[str, Any],
                           args: dict[str, Any], size: int, tokens: list[str]) -> None:
    for key in (sym, sm4):
        ctx = {"dk": "yes"}
        r = kms.generate_data_key(KeyId=key["Arn"], EncryptionContext=ctx, GrantTokens=tokens,
                                  **args)
        assert r["KeyId"] == key["Arn"] and len(r["Plaintext"]) == size
        d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=ctx)
        assert d["Plaintext"] == r["Plaintext"] and d["KeyId"] == key["Arn"]
        w = kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], EncryptionContext=ctx,
                                                    **args)
        assert "Plaintext" not in w and w["KeyId"] == key["Arn"]
        assert len(kms.decrypt(CiphertextBlob=w["CiphertextBlob"],
                               EncryptionContext=ctx)["Plaintext"]) == size


def test_generate_data_key_invalid(kms: Any, sym: dict[str, Any],
                                   rsa_enc: dict[str, Any]) -> None:
    kid = sym["KeyId"]
    for args in ({}, {"KeySpec": "AES_256", "NumberOfBytes": 32}, {"KeySpec": "AES_512"},
                 {"NumberOfBytes": 1025}):
        with raises_code(kms, "ValidationException"):
            kms.generate_data_key(KeyId=kid, **args)
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.generate_data_key(KeyId=rsa_enc["KeyId"], KeySpec="AES_256")


@pytest.mark.parametrize("pair_spec", ["ECC_NIST_P256", "ECC_SECG_P256K1", "RSA_2048"])
def test_generate_data_key_pair(kms: Any, sym: dict[str, Any], pair_spec: str) -> None:
    ctx = {"pair": pair_spec}
    r = kms.generate_data_key_pair(KeyId=sym["KeyId"], KeyPairSpec=pair_spec,
                                   EncryptionContext=ctx)
    assert r["KeyId"] == sym["Arn"] and r["KeyPairSpec"] == pair_spec
    priv = serialization.load_der_private_key(r["PrivateKeyPlaintext"], password=None)
    pub_der = priv.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pub_der == r["PublicKey"]
    if pair_spec.startswith("RSA"):
        assert isinstance(priv, rsa.RSAPrivateKey) and priv.key_size == 2048
    else:
        assert isinstance(priv, ec.EllipticCurvePrivateKey)
    d = kms.decrypt(CiphertextBlob=r["PrivateKeyCiphertextBlob"], EncryptionContext=ctx)
    assert d["Plaintext"] == r["PrivateKeyPlaintext"]
    w = kms.generate_data_key_pair_without_plaintext(KeyId=sym["Arn"], KeyPairSpec=pair_spec,
                                                     EncryptionContext=ctx)
    assert "PrivateKeyPlaintext" not in w and w["KeyPairSpec"] == pair_spec
    priv2 = serialization.load_der_private_key(
        kms.decrypt(CiphertextBlob=w["PrivateKeyCiphertextBlob"],
                    EncryptionContext=ctx)["Plaintext"], password=None)
    assert priv2.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo) == w["PublicKey"]
    assert w["PublicKey"] != r["PublicKey"]


def test_generate_data_key_pair_invalid(kms: Any, sym: dict[str, Any],
                                        rsa_enc: dict[str, Any]) -> None:
    with raises_code(kms, "ValidationException"):
        kms.generate_data_key_pair(KeyId=sym["KeyId"], KeyPairSpec="DSA_1024")
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.generate_data_key_pair(KeyId=rsa_enc["KeyId"], KeyPairSpec="ECC_NIST_P256")


# --- asymmetric cryptography -------------------------------------------------------------

_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


def _local_verify_rsa(pub: rsa.RSAPublicKey, alg: str, sig: bytes, msg: bytes,
                      digest: bool) -> None:
    h = _HASHES[alg[-3:]]
    pad: Any = (padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
                if "PSS" in alg else padding.PKCS1v15())
    pub.verify(sig, msg, pad, utils.Prehashed(h) if digest else h)


@pytest.mark.parametrize("alg", RSA_SIGN)
def test_sign_verify_rsa(kms: Any, rsa_sign: dict[str, Any], alg: str) -> None:
    kid = rsa_sign["KeyId"]
    pub = serialization.load_der_public_key(kms.get_public_key(KeyId=kid)["PublicKey"])
    assert isinstance(pub, rsa.RSAPublicKey)
    msg = b"message to sign " + alg.encode()
    h = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}[alg[-3:]]
    for mtype, data in (("RAW", msg), ("DIGEST", h(msg).digest())):
        r = kms.sign(KeyId=kid, Message=data, MessageType=mtype, SigningAlgorithm=alg)
        assert r["KeyId"] == rsa_sign["Arn"] and r["SigningAlgorithm"] == alg
        assert len(r["Signature"]) == 256
        _local_verify_rsa(pub, alg, r["Signature"], data, mtype == "DIGEST")
        v = kms.verify(KeyId=kid, Message=data, MessageType=mtype, Signature=r["Signature"],
                       SigningAlgorithm=alg)
        assert v["SignatureValid"] is True and v["KeyId"] == rsa_sign["Arn"]
        bad = bytearray(r["Signature"])
        bad[10] ^= 0x40
        with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
            kms.verify(KeyId=kid, Message=data, MessageType=mtype, Signature=bytes(bad),
                       SigningAlgorithm=alg)
    # A signature over one message does not verify another.
    sig = kms.sign(KeyId=kid, Message=msg, SigningAlgorithm=alg)["Signature"]
    with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
        kms.verify(KeyId=kid, Message=msg + b"!", Signature=sig, SigningAlgorithm=alg)


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "ECC_SECG_P256K1"])
def test_sign_verify_ecc(kms: Any, spec: str) -> None:
    md = _new_key(kms, spec, "SIGN_VERIFY")
    kid = md["KeyId"]
    pk = kms.get_public_key(KeyId=kid)
    assert pk["KeySpec"] == spec and pk["KeyUsage"] == "SIGN_VERIFY"
    assert pk["SigningAlgorithms"] == ["ECDSA_SHA_256"] and pk["KeyId"] == md["Arn"]
    pub = serialization.load_der_public_key(pk["PublicKey"])
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    msg = b"ecdsa message"
    for mtype, data in (("RAW", msg), ("DIGEST", hashlib.sha256(msg).digest())):
        sig = kms.sign(KeyId=kid, Message=data, MessageType=mtype,
                       SigningAlgorithm="ECDSA_SHA_256")["Signature"]
        chosen: Any = utils.Prehashed(hashes.SHA256()) if mtype == "DIGEST" else hashes.SHA256()
        pub.verify(sig, data, ec.ECDSA(chosen))  # DER, as AWS returns
        assert kms.verify(KeyId=kid, Message=data, MessageType=mtype, Signature=sig,
                          SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"] is True
        with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
            kms.verify(KeyId=kid, Message=data + b"x" if mtype == "RAW" else data[::-1],
                       MessageType=mtype, Signature=sig, SigningAlgorithm="ECDSA_SHA_256")
    with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
        kms.verify(KeyId=kid, Message=msg, Signature=b"\x30\x03\x02\x01\x01",
                   SigningAlgorithm="ECDSA_SHA_256")
    # A digest of the wrong length; an algorithm the key does not have.
    with raises_code(kms, "ValidationException"):
        kms.sign(KeyId=kid, Message=b"short", MessageType="DIGEST",
                 SigningAlgorithm="ECDSA_SHA_256")
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.sign(KeyId=kid, Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_256")


def test_sign_verify_sm2(kms: Any) -> None:
    md = _new_key(kms, "SM2", "SIGN_VERIFY")
    kid = md["KeyId"]
    pk = kms.get_public_key(KeyId=kid)
    assert pk["KeySpec"] == "SM2" and pk["SigningAlgorithms"] == ["SM2DSA"]
    pub = SM2PublicKey.from_der(pk["PublicKey"])
    msg = b"sm2 message"
    sig = kms.sign(KeyId=kid, Message=msg, SigningAlgorithm="SM2DSA")["Signature"]
    pub.verify(sig, msg)
    assert kms.verify(KeyId=kid, Message=msg, Signature=sig,
                      SigningAlgorithm="SM2DSA")["SignatureValid"] is True
    with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
        kms.verify(KeyId=kid, Message=msg + b".", Signature=sig, SigningAlgorithm="SM2DSA")
    digest = os.urandom(32)
    dsig = kms.sign(KeyId=kid, Message=digest, MessageType="DIGEST",
                    SigningAlgorithm="SM2DSA")["Signature"]
    pub.verify_digest(dsig, digest)
    assert kms.verify(KeyId=kid, Message=digest, MessageType="DIGEST", Signature=dsig,
                      SigningAlgorithm="SM2DSA")["SignatureValid"] is True
    with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
        kms.verify(KeyId=kid, Message=digest, MessageType="DIGEST", Signature=sig,
                   SigningAlgorithm="SM2DSA")


def test_rsa_public_key_encryption(kms: Any, rsa_enc: dict[str, Any]) -> None:
    kid = rsa_enc["KeyId"]
    pk = kms.get_public_key(KeyId=kid)
    assert pk["KeyUsage"] == "ENCRYPT_DECRYPT" and pk["EncryptionAlgorithms"] == RSA_ENC
    assert "SigningAlgorithms" not in pk
    pub = serialization.load_der_public_key(pk["PublicKey"])
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    for alg, h in (("RSAES_OAEP_SHA_256", hashes.SHA256()), ("RSAES_OAEP_SHA_1", hashes.SHA1())):
        # Encrypted locally with the public key, decrypted by the server...
        ct = pub.encrypt(b"to the hsm", padding.OAEP(mgf=padding.MGF1(h), algorithm=h,
                                                     label=None))
        d = kms.decrypt(CiphertextBlob=ct, KeyId=kid, EncryptionAlgorithm=alg)
        assert d["Plaintext"] == b"to the hsm" and d["EncryptionAlgorithm"] == alg
        # ...and encrypted by the server.
        r = kms.encrypt(KeyId=kid, Plaintext=b"round trip", EncryptionAlgorithm=alg)
        assert r["EncryptionAlgorithm"] == alg and len(r["CiphertextBlob"]) == 256
        assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"], KeyId=kid,
                           EncryptionAlgorithm=alg)["Plaintext"] == b"round trip"
    for alg in RSA_ENC:
        # A value below the modulus that is not OAEP padding.
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(CiphertextBlob=b"\0" + os.urandom(255), KeyId=kid,
                        EncryptionAlgorithm=alg)
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.encrypt(KeyId=kid, Plaintext=b"x")  # SYMMETRIC_DEFAULT on an RSA key


@pytest.fixture
def own_server(token_dir: Path, tmp_path: Path) -> Iterator[tuple[Server, Any]]:
    """A server of its own, for a test that may leave its pool degraded."""
    config = write_server_config(tmp_path, token_dir, {"srv": [0, 1, 2]})
    cred = create_credential(config, "srv", "admin")
    with run_server(config) as srv:
        yield srv, srv.client(cred)


def test_rsa_ciphertext_above_modulus_is_invalid_ciphertext(own_server: Any) -> None:
    srv, kms = own_server
    kid = _new_key(kms, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    for alg in RSA_ENC:
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(CiphertextBlob=b"\xff" * 256, KeyId=kid, EncryptionAlgorithm=alg)
    # The pool is still whole: every token healthy.
    status, _, body = srv.get("/healthz")
    assert status == 200
    assert set(json.loads(body)["tokens"].values()) == {"healthy"}


def test_sm2_public_key_encryption(kms: Any) -> None:
    md = _new_key(kms, "SM2", "ENCRYPT_DECRYPT")
    kid = md["KeyId"]
    pk = kms.get_public_key(KeyId=kid)
    assert pk["EncryptionAlgorithms"] == ["SM2PKE"]
    r = kms.encrypt(KeyId=kid, Plaintext=b"sm2 pke", EncryptionAlgorithm="SM2PKE")
    assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"], KeyId=kid,
                       EncryptionAlgorithm="SM2PKE")["Plaintext"] == b"sm2 pke"


def test_get_public_key_of_symmetric_and_hmac_keys(kms: Any, sym: dict[str, Any],
                                                   hmac256: dict[str, Any]) -> None:
    for md in (sym, hmac256):
        with pytest.raises(kms.exceptions.UnsupportedOperationException):
            kms.get_public_key(KeyId=md["KeyId"])


# --- MAC and random ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "alg", "size"), [
    ("HMAC_256", "HMAC_SHA_256", 32), ("HMAC_384", "HMAC_SHA_384", 48),
    ("HMAC_512", "HMAC_SHA_512", 64), ("HMAC_SM3", "HMAC_SM3", 32)])
def test_generate_verify_mac(kms: Any, spec: str, alg: str, size: int,
                             tokens: list[str]) -> None:
    md = _new_key(kms, spec, "GENERATE_VERIFY_MAC")
    kid = md["KeyId"]
    r = kms.generate_mac(KeyId=kid, Message=b"mac me", MacAlgorithm=alg, GrantTokens=tokens)
    assert r["KeyId"] == md["Arn"] and r["MacAlgorithm"] == alg and len(r["Mac"]) == size
    assert kms.generate_mac(KeyId=kid, Message=b"mac me", MacAlgorithm=alg)["Mac"] == r["Mac"]
    v = kms.verify_mac(KeyId=md["Arn"], Message=b"mac me", Mac=r["Mac"], MacAlgorithm=alg)
    assert v["MacValid"] is True and v["KeyId"] == md["Arn"] and v["MacAlgorithm"] == alg
    bad = bytes([r["Mac"][0] ^ 1]) + r["Mac"][1:]
    for mac, msg in ((bad, b"mac me"), (r["Mac"], b"mac me!"), (r["Mac"][:-1], b"mac me")):
        with pytest.raises(kms.exceptions.KMSInvalidMacException):
            kms.verify_mac(KeyId=kid, Message=msg, Mac=mac, MacAlgorithm=alg)
    wrong = "HMAC_SHA_512" if alg != "HMAC_SHA_512" else "HMAC_SHA_256"
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.generate_mac(KeyId=kid, Message=b"m", MacAlgorithm=wrong)


def test_mac_on_wrong_key_usage(kms: Any, sym: dict[str, Any],
                                hmac256: dict[str, Any]) -> None:
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.generate_mac(KeyId=sym["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_256")
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.encrypt(KeyId=hmac256["KeyId"], Plaintext=b"x")
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.sign(KeyId=hmac256["KeyId"], Message=b"x", SigningAlgorithm="ECDSA_SHA_256")


def test_generate_random(kms: Any) -> None:
    for n in (1, 32, 1024):
        assert len(kms.generate_random(NumberOfBytes=n)["Plaintext"]) == n
    a = kms.generate_random(NumberOfBytes=32)["Plaintext"]
    b = kms.generate_random(NumberOfBytes=32)["Plaintext"]
    assert a != b
    with raises_code(kms, "ValidationException"):
        kms.generate_random(NumberOfBytes=1025)


# --- key import (BYOK) -------------------------------------------------------------------

needs_import = pytest.mark.skipif(not hasattr(KmsClient, "import_key_material"),
                                  reason="KmsClient has no import_key_material yet")


def _wrap(public_der: bytes, material: bytes) -> bytes:
    pub = serialization.load_der_public_key(public_der)
    assert isinstance(pub, rsa.RSAPublicKey)
    return pub.encrypt(material, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                              algorithm=hashes.SHA256(), label=None))


@needs_import
def test_import_key_material_lifecycle(kms: Any) -> None:
    md = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]
    kid = md["KeyId"]
    assert md["Origin"] == "EXTERNAL" and md["KeyState"] == "PendingImport"
    assert md["Enabled"] is False
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.encrypt(KeyId=kid, Plaintext=b"x")
    material = os.urandom(32)
    p = kms.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    assert p["KeyId"] in (kid, md["Arn"])
    assert p["ImportToken"] and isinstance(p["ParametersValidTo"], datetime)
    kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                            EncryptedKeyMaterial=_wrap(p["PublicKey"], material),
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    d = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert d["KeyState"] == "Enabled" and d["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    ct = kms.encrypt(KeyId=kid, Plaintext=b"byok")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"byok"
    # A consumed token is refused.
    with pytest.raises(kms.exceptions.InvalidImportTokenException):
        kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                                EncryptedKeyMaterial=_wrap(p["PublicKey"], material),
                                ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    kms.delete_imported_key_material(KeyId=kid)
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.decrypt(CiphertextBlob=ct)
    # Other material is refused; the same material brings the old ciphertexts back.
    p = kms.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    with pytest.raises(kms.exceptions.IncorrectKeyMaterialException):
        kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                                EncryptedKeyMaterial=_wrap(p["PublicKey"], os.urandom(32)),
                                ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    p = kms.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                            EncryptedKeyMaterial=_wrap(p["PublicKey"], material),
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"byok"


@needs_import
def test_import_errors(kms: Any, sym: dict[str, Any]) -> None:
    with pytest.raises(kms.exceptions.UnsupportedOperationException):
        kms.get_parameters_for_import(KeyId=sym["KeyId"],
                                      WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    kid = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    with pytest.raises(kms.exceptions.InvalidImportTokenException):
        kms.import_key_material(KeyId=kid, ImportToken=os.urandom(32),
                                EncryptedKeyMaterial=os.urandom(256),
                                ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    p = kms.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                                EncryptedKeyMaterial=b"\0" + os.urandom(255),
                                ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.get_parameters_for_import(KeyId=str(uuid.uuid4()),
                                      WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")


# --- error mapping -----------------------------------------------------------------------


def test_every_error_is_the_modeled_boto3_exception(kms: Any, sym: dict[str, Any],
                                                    sym_b: dict[str, Any],
                                                    rsa_sign: dict[str, Any],
                                                    hmac256: dict[str, Any]) -> None:
    """One request per error name; each raises boto3's modeled class (not a bare
    ClientError), with the code and a message."""
    disabled = _new_key(kms)["KeyId"]
    kms.disable_key(KeyId=disabled)
    pending = _new_key(kms)["KeyId"]
    kms.schedule_key_deletion(KeyId=pending, PendingWindowInDays=7)
    ct = kms.encrypt(KeyId=sym["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    sig = kms.sign(KeyId=rsa_sign["KeyId"], Message=b"m",
                   SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    taken = "alias/" + _uniq("taken")
    kms.create_alias(AliasName=taken, TargetKeyId=sym["KeyId"])
    cases: list[tuple[str, Any]] = [
        ("NotFoundException", lambda: kms.describe_key(KeyId=str(uuid.uuid4()))),
        ("DisabledException", lambda: kms.encrypt(KeyId=disabled, Plaintext=b"x")),
        ("KMSInvalidStateException", lambda: kms.encrypt(KeyId=pending, Plaintext=b"x")),
        ("InvalidCiphertextException", lambda: kms.decrypt(CiphertextBlob=b"garbage" * 10)),
        ("IncorrectKeyException",
         lambda: kms.decrypt(CiphertextBlob=ct, KeyId=sym_b["KeyId"])),
        ("InvalidKeyUsageException",
         lambda: kms.encrypt(KeyId=rsa_sign["KeyId"], Plaintext=b"x")),
        ("KMSInvalidSignatureException",
         lambda: kms.verify(KeyId=rsa_sign["KeyId"], Message=b"other", Signature=sig,
                            SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("KMSInvalidMacException",
         lambda: kms.verify_mac(KeyId=hmac256["KeyId"], Message=b"m", Mac=b"\0" * 32,
                                MacAlgorithm="HMAC_SHA_256")),
        ("AlreadyExistsException",
         lambda: kms.create_alias(AliasName=taken, TargetKeyId=sym_b["KeyId"])),
        ("InvalidAliasNameException",
         lambda: kms.create_alias(AliasName="alias/aws/mine", TargetKeyId=sym["KeyId"])),
        ("ValidationException", lambda: kms.generate_random(NumberOfBytes=5000)),
        ("UnsupportedOperationException",
         lambda: kms.enable_key_rotation(KeyId=rsa_sign["KeyId"])),
    ]
    for code, op in cases:
        with raises_code(kms, code) as info:
            op()
        assert info.value.response["Error"]["Message"]
        if code != "ValidationException":  # not in boto3's KMS model (a plain ClientError)
            assert type(info.value) is getattr(kms.exceptions, code)


def test_response_blobs_are_base64_on_the_wire(server: Any, sym: dict[str, Any]) -> None:
    """The raw JSON: blobs base64, dates epoch numbers, KeyId an ARN."""
    status, body = call(server.port, server.creds["admin"], "Encrypt",
                        {"KeyId": sym["KeyId"], "Plaintext": base64.b64encode(b"w").decode()})
    assert status == 200 and body["KeyId"] == sym["Arn"]
    base64.b64decode(body["CiphertextBlob"], validate=True)
    status, body = call(server.port, server.creds["admin"], "DescribeKey",
                        {"KeyId": sym["KeyId"]})
    assert status == 200 and isinstance(body["KeyMetadata"]["CreationDate"], int | float)


# --- odds and ends -----------------------------------------------------------------------


def test_empty_context_equals_no_context(kms: Any, sym: dict[str, Any]) -> None:
    a = kms.encrypt(KeyId=sym["KeyId"], Plaintext=b"a")["CiphertextBlob"]
    b = kms.encrypt(KeyId=sym["KeyId"], Plaintext=b"b", EncryptionContext={})["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=a, EncryptionContext={})["Plaintext"] == b"a"
    assert kms.decrypt(CiphertextBlob=b)["Plaintext"] == b"b"


def test_alias_cannot_move_onto_a_key_pending_deletion(kms: Any) -> None:
    k1, k2 = _new_key(kms), _new_key(kms)
    name = "alias/" + _uniq("pending")
    kms.create_alias(AliasName=name, TargetKeyId=k1["KeyId"])
    kms.schedule_key_deletion(KeyId=k2["KeyId"], PendingWindowInDays=7)
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.update_alias(AliasName=name, TargetKeyId=k2["KeyId"])
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.create_alias(AliasName="alias/" + _uniq("pending"), TargetKeyId=k2["KeyId"])
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == k1["KeyId"]


def test_tag_limit(kms: Any) -> None:
    kid = _new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": f"k{i}", "TagValue": "v"} for i in range(50)])
    with pytest.raises(kms.exceptions.LimitExceededException):
        kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "one-more", "TagValue": "v"}])
    assert len(kms.list_resource_tags(KeyId=kid)["Tags"]) == 50


def test_key_policy_given_at_creation(kms: Any) -> None:
    policy = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":'
              '{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}')
    kid = kms.create_key(Policy=policy)["KeyMetadata"]["KeyId"]
    assert kms.get_key_policy(KeyId=kid, PolicyName="default")["Policy"] == policy


def test_re_encrypt_needs_a_symmetric_destination(kms: Any, sym: dict[str, Any],
                                                  rsa_enc: dict[str, Any],
                                                  rsa_sign: dict[str, Any]) -> None:
    ct = kms.encrypt(KeyId=sym["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    for dest in (rsa_enc, rsa_sign):
        with pytest.raises(kms.exceptions.InvalidKeyUsageException):
            kms.re_encrypt(CiphertextBlob=ct, DestinationKeyId=dest["KeyId"])


def test_long_and_odd_key_ids_are_not_found(kms: Any) -> None:
    for ref in ("x" * 2048, "alias/" + "a" * 250, "arn:aws:kms:us-east-1:1:key/x",
                "arn:aws:kms:::", "key/" + str(uuid.uuid4()), str(uuid.uuid4()).upper()):
        with pytest.raises(ClientError) as info:
            kms.describe_key(KeyId=ref)
        assert info.value.response["Error"]["Code"] in ("NotFoundException",
                                                        "ValidationException",
                                                        "InvalidArnException")


@needs_import
def test_import_hmac_material_with_aes_key_wrap_and_expiry(kms: Any) -> None:
    """RSA_AES_KEY_WRAP_SHA_256 into an HMAC_256 key, expiring: the server's MACs are those
    of the imported material (checked locally), and ValidTo (a boto3 datetime, epoch on the
    wire) comes back as given."""
    import hmac as hmac_mod

    from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

    md = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC",
                        Origin="EXTERNAL")["KeyMetadata"]
    kid = md["KeyId"]
    material = os.urandom(32)
    p = kms.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    ephemeral = os.urandom(32)
    wrapped = _wrap(p["PublicKey"], ephemeral) + aes_key_wrap_with_padding(ephemeral, material)
    valid_to = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                            EncryptedKeyMaterial=wrapped, ValidTo=valid_to,
                            ExpirationModel="KEY_MATERIAL_EXPIRES")
    d = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert d["KeyState"] == "Enabled" and d["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert d["ValidTo"] == valid_to
    mac = kms.generate_mac(KeyId=kid, Message=b"imported", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert mac == hmac_mod.new(material, b"imported", hashlib.sha256).digest()
    # ValidTo in the past is refused.
    p = kms.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    with raises_code(kms, "ValidationException"):
        kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                                EncryptedKeyMaterial=_wrap(p["PublicKey"], material),
                                ValidTo=datetime.now(UTC) - timedelta(days=1),
                                ExpirationModel="KEY_MATERIAL_EXPIRES")


def test_rsa_key_generation_does_not_eject_tokens(token_dir: Path, tmp_path: Path) -> None:
    config = write_server_config(tmp_path, token_dir, {"srv": [1]}, {"slow_call_ms": 500})
    cred = create_credential(config, "srv", "admin")
    with run_server(config) as srv:
        kms = srv.client(cred)
        for _ in range(3):
            kms.create_key(KeySpec="RSA_4096", KeyUsage="SIGN_VERIFY")
        status, _, body = srv.get("/healthz")
        assert status == 200, body
        kid = kms.create_key()["KeyMetadata"]["KeyId"]
        assert kms.encrypt(KeyId=kid, Plaintext=b"x")["KeyId"].endswith(kid)


def test_pipelined_requests_are_all_answered_in_order(server: Server, kms: Any) -> None:
    """Requests sent back to back on one connection, before any answer (HTTP/1.1
    pipelining), are each answered, in order. The next one starts when the one before it is
    answered, from inside that request's greenlet; each used to be lost there when the one
    before it had waited for a token (an Encrypt), and the connection hung (found by
    benchmarks.fuzz, which pipelines a replayed Alibaba request)."""
    import socket

    from tests.server.conftest import sign_headers

    cred = server.creds["admin"]
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    raw = b""
    for i in range(4):
        op = "Encrypt" if i % 2 == 0 else "DescribeKey"
        body = json.dumps({"KeyId": key, **({"Plaintext": base64.b64encode(b"p%d" % i)
                                            .decode()} if op == "Encrypt" else {})}).encode()
        headers = sign_headers(cred, server.port, "TrentService." + op, body)
        raw += (f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)
        got = b""
        answers: list[dict[str, Any]] = []
        while len(answers) < 4:
            chunk = s.recv(65536)  # a lost request: the socket's 10 s timeout fails the test
            assert chunk, (answers, got)
            got += chunk
            while b"\r\n\r\n" in got:
                head, rest = got.split(b"\r\n\r\n", 1)
                n = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
                if len(rest) < n:
                    break
                assert head.startswith(b"HTTP/1.1 200"), head
                answers.append(json.loads(rest[:n]))
                got = rest[n:]
    assert ["CiphertextBlob" in a for a in answers] == [True, False, True, False]
    assert all(a.get("KeyId", a.get("KeyMetadata", {}).get("KeyId", "")).endswith(key)
               for a in answers)
