"""Grants through the real server and the real boto3 client: CreateGrant to a second
credential, what it allows before and after, tokens, constraints, ListGrants pagination,
ListRetirableGrants, RetireGrant, RevokeGrant, and the retried-with-a-Name flow that
Terraform's aws_kms_grant and EBS-style callers rely on."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.server.conftest import Server, raises_code

#: What the second credential may do by its own policies: nothing on keys.
ONLY_LIST_RETIRABLE = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kms:ListRetirableGrants", "Resource": "*"}]}


def _user(server: Server, prefix: str) -> tuple[str, Any]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return name, server.client(server.credential("srv", name, ONLY_LIST_RETIRABLE))


@pytest.fixture(scope="module")
def account(kms: Any) -> str:
    return str(kms.create_key()["KeyMetadata"]["AWSAccountId"])


def _arn(account: str, name: str) -> str:
    return f"arn:aws:iam::{account}:user/{name}"


def test_grant_lets_a_second_credential_encrypt(server: Server, kms: Any,
                                                account: str) -> None:
    key = kms.create_key()["KeyMetadata"]
    name, user = _user(server, "grantee")
    with raises_code(user, "NotFoundException"):
        user.encrypt(KeyId=key["KeyId"], Plaintext=b"before")
    g = kms.create_grant(KeyId=key["Arn"], GranteePrincipal=_arn(account, name),
                         RetiringPrincipal=_arn(account, name),
                         Operations=["Encrypt", "Decrypt", "DescribeKey"])
    token = g["GrantToken"]
    r = user.encrypt(KeyId=key["KeyId"], Plaintext=b"granted", GrantTokens=[token],
                     EncryptionContext={"vol": "1"})
    assert r["KeyId"] == key["Arn"]
    assert user.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"vol": "1"},
                        GrantTokens=[token])["Plaintext"] == b"granted"
    assert user.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyId"] == key["KeyId"]
    with raises_code(user, "NotFoundException"):
        user.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")
    # The grantee sees the grant among those it may retire, and retires it.
    mine = user.list_retirable_grants(RetiringPrincipal=_arn(account, name))["Grants"]
    assert [x["GrantId"] for x in mine] == [g["GrantId"]]
    entry = mine[0]
    assert entry["KeyId"] == key["Arn"] and entry["GranteePrincipal"] == _arn(account, name)
    assert entry["IssuingAccount"] == f"arn:aws:iam::{account}:root"
    assert sorted(entry["Operations"]) == ["Decrypt", "DescribeKey", "Encrypt"]
    user.retire_grant(GrantToken=token)
    with raises_code(user, "NotFoundException"):
        user.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"vol": "1"})
    assert kms.list_grants(KeyId=key["KeyId"])["Grants"] == []


def test_revoke_and_retire_by_key_and_id(server: Server, kms: Any, account: str) -> None:
    key = kms.create_key()["KeyMetadata"]
    name, user = _user(server, "revoked")
    _, other = _user(server, "other")
    g1 = kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=_arn(account, name),
                          Operations=["Encrypt"])
    g2 = kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=_arn(account, name),
                          Operations=["Encrypt", "RetireGrant"])
    user.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    with raises_code(other, "NotFoundException"):  # neither grantee nor retiring principal
        other.retire_grant(KeyId=key["Arn"], GrantId=g1["GrantId"])
    with raises_code(user, "NotFoundException"):  # g1 does not allow RetireGrant
        user.retire_grant(KeyId=key["Arn"], GrantId=g1["GrantId"])
    user.retire_grant(KeyId=key["Arn"], GrantId=g2["GrantId"])  # g2 does
    with raises_code(user, "NotFoundException"):  # a grant cannot give RevokeGrant
        user.revoke_grant(KeyId=key["KeyId"], GrantId=g1["GrantId"])
    user.encrypt(KeyId=key["KeyId"], Plaintext=b"x")  # g1 still there
    kms.revoke_grant(KeyId=key["KeyId"], GrantId=g1["GrantId"])
    with raises_code(user, "NotFoundException"):
        user.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    with raises_code(kms, "NotFoundException"):
        kms.revoke_grant(KeyId=key["KeyId"], GrantId=g1["GrantId"])
    with raises_code(kms, "InvalidGrantIdException"):
        kms.revoke_grant(KeyId=key["KeyId"], GrantId="nope")


def test_constraints_are_enforced(server: Server, kms: Any, account: str) -> None:
    key = kms.create_key()["KeyMetadata"]
    name, user = _user(server, "constrained")
    kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=_arn(account, name),
                     Operations=["Encrypt", "Decrypt", "GenerateDataKey"],
                     Constraints={"EncryptionContextSubset": {"aws:ebs:id": "vol-1"}})
    dk = user.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256",
                                EncryptionContext={"aws:ebs:id": "vol-1", "x": "y"})
    assert user.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={
        "aws:ebs:id": "vol-1", "x": "y"})["Plaintext"] == dk["Plaintext"]
    for ctx in ({}, {"aws:ebs:id": "vol-2"}):
        with raises_code(user, "NotFoundException"):
            user.encrypt(KeyId=key["KeyId"], Plaintext=b"x", EncryptionContext=ctx)
    listed = kms.list_grants(KeyId=key["KeyId"])["Grants"][0]
    assert listed["Constraints"] == {"EncryptionContextSubset": {"aws:ebs:id": "vol-1"}}


def test_list_grants_pagination_and_filters(server: Server, kms: Any, account: str) -> None:
    key = kms.create_key()["KeyMetadata"]
    a, _ = _user(server, "page-a")
    b, _ = _user(server, "page-b")
    made = {kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=_arn(account, who),
                             Operations=["Decrypt"], Name=f"g-{i}")["GrantId"]
            for i, who in enumerate([a, a, a, b, b])}
    seen: list[str] = []
    marker: str | None = None
    pages = 0
    while True:
        page = kms.list_grants(KeyId=key["KeyId"], Limit=2,
                               **({"Marker": marker} if marker else {}))
        pages += 1
        assert len(page["Grants"]) <= 2
        seen += [g["GrantId"] for g in page["Grants"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert pages == 3 and set(seen) == made and len(seen) == 5
    paged = [g["GrantId"] for p in kms.get_paginator("list_grants").paginate(
        KeyId=key["KeyId"], PaginationConfig={"PageSize": 3}) for g in p["Grants"]]
    assert sorted(paged) == sorted(made)
    only_b = kms.list_grants(KeyId=key["KeyId"], GranteePrincipal=_arn(account, b))["Grants"]
    assert len(only_b) == 2 and {g["Name"] for g in only_b} == {"g-3", "g-4"}
    one = sorted(made)[0]
    assert [g["GrantId"] for g in kms.list_grants(KeyId=key["KeyId"], GrantId=one)["Grants"]] \
        == [one]
    with raises_code(kms, "ValidationException"):
        kms.list_grants(KeyId=key["KeyId"], Limit=101)
    with raises_code(kms, "InvalidMarkerException"):
        kms.list_grants(KeyId=key["KeyId"], Marker="not-a-marker")


def test_a_retried_create_grant_with_a_name_is_one_grant(server: Server, kms: Any,
                                                          account: str) -> None:
    """Terraform's aws_kms_grant retries CreateGrant with the same Name."""
    key = kms.create_key()["KeyMetadata"]
    name, user = _user(server, "terraform")
    args = {"KeyId": key["KeyId"], "GranteePrincipal": _arn(account, name),
            "Operations": ["Encrypt", "Decrypt"], "Name": "tf-grant",
            "Constraints": {"EncryptionContextEquals": {"app": "tf"}}}
    first = kms.create_grant(**args)
    again = kms.create_grant(**args)
    assert again["GrantId"] == first["GrantId"]
    assert len(kms.list_grants(KeyId=key["KeyId"])["Grants"]) == 1
    user.encrypt(KeyId=key["KeyId"], Plaintext=b"x", EncryptionContext={"app": "tf"},
                 GrantTokens=[again["GrantToken"]])


def test_grant_errors(server: Server, kms: Any, account: str) -> None:
    key = kms.create_key()["KeyMetadata"]
    name, user = _user(server, "errors")
    me = _arn(account, name)
    with raises_code(kms, "InvalidArnException"):
        kms.create_grant(KeyId=key["KeyId"], GranteePrincipal="nobody", Operations=["Encrypt"])
    with raises_code(kms, "ValidationException"):
        kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=_arn(account, "no-such-user"),
                         Operations=["Encrypt"])
    with raises_code(kms, "ValidationException"):
        kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=me, Operations=["Sign"])
    with raises_code(kms, "NotFoundException"):
        kms.create_grant(KeyId=str(uuid.uuid4()), GranteePrincipal=me, Operations=["Encrypt"])
    with raises_code(user, "NotFoundException"):  # not allowed: as if the key did not exist
        user.create_grant(KeyId=key["KeyId"], GranteePrincipal=me, Operations=["Encrypt"])
    with raises_code(kms, "InvalidGrantTokenException"):
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x", GrantTokens=["token-1"])
    with raises_code(kms, "InvalidGrantTokenException"):
        kms.retire_grant(GrantToken="token-1")
    with raises_code(kms, "ValidationException"):
        kms.retire_grant(GrantId="0" * 64)
