"""Key policies through the real server and boto3 (issue 17 item 3) and the purge marker
(item 6): CreateKey and PutKeyPolicy check the document (MalformedPolicyDocumentException),
GetKeyPolicy/ListKeyPolicies answer it, and it is evaluated with the principal's own
policies: an explicit Deny in either wins, a statement naming the principal allows it, one
naming the account root defers to the principal's policies."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.server.conftest import Server, raises_code


def _doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


DENY_ALL = _doc({"Sid": "nobody", "Effect": "Deny", "Principal": "*", "Action": "kms:*",
                 "Resource": "*"})


@pytest.fixture(scope="module")
def account(kms: Any) -> str:
    return str(kms.create_key()["KeyMetadata"]["AWSAccountId"])


@pytest.mark.parametrize("policy", ["not json at all", "\u0000deleted", "{}",
                                    _doc({"Effect": "Allow", "Action": "kms:*",
                                          "Resource": "*"})])
def test_create_key_refuses_bad_policies(kms: Any, policy: str) -> None:
    with raises_code(kms, "MalformedPolicyDocumentException"):
        kms.create_key(Policy=policy)


def test_deny_all_key_policy_is_enforced(kms: Any) -> None:
    with raises_code(kms, "MalformedPolicyDocumentException"):  # lockout safety check
        kms.create_key(Policy=DENY_ALL)
    kid = kms.create_key(Policy=DENY_ALL, BypassPolicyLockoutSafetyCheck=True
                         )["KeyMetadata"]["KeyId"]
    for op in (lambda: kms.encrypt(KeyId=kid, Plaintext=b"x"),
               lambda: kms.describe_key(KeyId=kid),
               lambda: kms.get_key_policy(KeyId=kid, PolicyName="default"),
               lambda: kms.put_key_policy(KeyId=kid, PolicyName="default", Policy=DENY_ALL,
                                          BypassPolicyLockoutSafetyCheck=True)):
        with raises_code(kms, "NotFoundException"):
            op()


def test_purge_marker_cannot_be_forged(kms: Any) -> None:
    """A policy of "\\0deleted" used to make a key invisible and never purged."""
    with raises_code(kms, "MalformedPolicyDocumentException"):
        kms.create_key(Policy="\x00deleted")
    listed = {k["KeyId"] for k in kms.list_keys(Limit=1000)["Keys"]}
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    with raises_code(kms, "MalformedPolicyDocumentException"):
        kms.put_key_policy(KeyId=kid, PolicyName="default", Policy="\x00deleted")
    assert kid in {k["KeyId"] for k in kms.list_keys(Limit=1000)["Keys"]} - listed
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Enabled"


def test_put_get_list_key_policies(server: Server, kms: Any, account: str) -> None:
    name = "kp-" + uuid.uuid4().hex[:8]
    user = server.client(server.credential("srv", name, {"Version": "2012-10-17",
                         "Statement": [{"Effect": "Allow", "Action": "kms:ListKeys",
                                        "Resource": "*"}]}))
    me = f"arn:aws:iam::{account}:user/{name}"
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    assert kms.list_key_policies(KeyId=kid)["PolicyNames"] == ["default"]
    default = json.loads(kms.get_key_policy(KeyId=kid, PolicyName="default")["Policy"])
    assert default["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{account}:root"}
    with raises_code(user, "NotFoundException"):  # its own policies give it nothing
        user.encrypt(KeyId=kid, Plaintext=b"x")
    policy = _doc({"Sid": "admins", "Effect": "Allow",
                   "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*",
                   "Resource": "*"},
                  {"Sid": "app", "Effect": "Allow", "Principal": {"AWS": [me]},
                   "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"},
                  {"Sid": "no-red", "Effect": "Deny", "Principal": "*",
                   "Action": "kms:Decrypt", "Resource": "*",
                   "Condition": {"StringEquals": {"kms:EncryptionContext:colour": "red"}}})
    kms.put_key_policy(KeyId=kid, PolicyName="default", Policy=policy)
    assert kms.get_key_policy(KeyId=kid)["Policy"] == policy
    blue = user.encrypt(KeyId=kid, Plaintext=b"b", EncryptionContext={"colour": "blue"})
    assert user.decrypt(CiphertextBlob=blue["CiphertextBlob"],
                        EncryptionContext={"colour": "blue"})["Plaintext"] == b"b"
    red = user.encrypt(KeyId=kid, Plaintext=b"r", EncryptionContext={"colour": "red"})
    for c in (user, kms):  # the Deny binds the admin too
        with raises_code(c, "NotFoundException"):
            c.decrypt(CiphertextBlob=red["CiphertextBlob"], EncryptionContext={"colour": "red"})
    with raises_code(user, "NotFoundException"):
        user.describe_key(KeyId=kid)
    with raises_code(kms, "MalformedPolicyDocumentException"):
        kms.put_key_policy(KeyId=kid, PolicyName="default", Policy="[1, 2]")
    with raises_code(kms, "ValidationException"):
        kms.put_key_policy(KeyId=kid, PolicyName="AWS_RAM", Policy=policy)
    # Without the account root statement, the admin's own kms:* no longer applies.
    kms.put_key_policy(KeyId=kid, PolicyName="default", BypassPolicyLockoutSafetyCheck=True,
                       Policy=_doc({"Effect": "Allow", "Principal": {"AWS": me},
                                    "Action": "kms:*", "Resource": "*"}))
    with raises_code(kms, "NotFoundException"):
        kms.describe_key(KeyId=kid)
    assert user.describe_key(KeyId=kid)["KeyMetadata"]["KeyId"] == kid
