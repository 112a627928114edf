"""Grants through the service (real SoftHSM2, real SQLite): what a grant allows, its
constraints, tokens, delegation, retiring and revoking, listing, and their checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsmpool import Pool
from kms import Kms, KmsClient
from kms import errors as E
from kms.keys import grants as grants_module
from kms.policy import Principal
from tests.database import database_of
from tests.kms.conftest import FakeClock, make_kms
from tests.kms.principals import INSTANCE, allow, as_principal, make_principal
from tests.kms.principals import principal_arn_of as arn
from tests.kms.principals import unique as _name


@pytest.fixture
def people(kms: Kms) -> dict[str, Principal]:
    """Principals with no permission on keys of their own (only to list retirable
    grants)."""
    listing = allow("kms:ListRetirableGrants", "*")
    return {n: make_principal(kms, _name(n), listing) for n in ("grantee", "retirer", "third")}


def test_a_grant_allows_its_operations_to_its_grantee_only(
        kms: Kms, client: KmsClient, people: dict[str, Principal]) -> None:
    key = client.create_key()
    grantee = as_principal(kms, people["grantee"])
    third = as_principal(kms, people["third"])
    with pytest.raises(E.NotFound):
        grantee.encrypt(key.key_id, b"before")
    g = client.create_grant(key.key_id, arn(kms, people["grantee"]), ["Encrypt", "Decrypt"],
                            retiring_principal=arn(kms, people["retirer"]))
    assert len(g.grant_id) == 64 and g.grant_token.startswith("hsmpool-grant-1.")
    ct = grantee.encrypt(key.key_id, b"granted", {"a": "1"}).ciphertext_blob
    assert grantee.decrypt(ct, {"a": "1"}).plaintext == b"granted"
    assert grantee.encrypt(key.key_id, b"t", grant_tokens=[g.grant_token]).key_id == key.arn
    for op in (lambda: grantee.generate_data_key(key.key_id, "AES_256"),
               lambda: grantee.describe_key(key.key_id),
               lambda: grantee.disable_key(key.key_id),
               lambda: third.encrypt(key.key_id, b"x"),
               lambda: third.encrypt(key.key_id, b"x", grant_tokens=[g.grant_token])):
        with pytest.raises(E.NotFound):
            op()
    other = client.create_key()
    with pytest.raises(E.NotFound):  # a grant is for its key only
        grantee.encrypt(other.key_id, b"x", grant_tokens=[g.grant_token])
    # The retiring principal retires it (by token); then it allows nothing.
    retirer = as_principal(kms, people["retirer"])
    assert [x.grant_id for x in retirer.list_retirable_grants(
        arn(kms, people["retirer"])).items] == [g.grant_id]
    with pytest.raises(E.NotFound):  # nobody else may
        third.retire_grant(g.grant_token)
    retirer.retire_grant(g.grant_token)
    with pytest.raises(E.NotFound):
        grantee.decrypt(ct, {"a": "1"})
    with pytest.raises(E.NotFound):
        retirer.retire_grant(g.grant_token)


def test_an_explicit_deny_beats_a_grant(kms: Kms, client: KmsClient) -> None:
    key = client.create_key()
    denied = make_principal(kms, _name("denied"), {"Effect": "Deny", "Action": "kms:Decrypt",
                                                   "Resource": "*"})
    client.create_grant(key.key_id, arn(kms, denied), ["Encrypt", "Decrypt"])
    c = as_principal(kms, denied)
    ct = c.encrypt(key.key_id, b"x").ciphertext_blob
    with pytest.raises(E.NotFound):
        c.decrypt(ct)
    client.put_key_policy(key.key_id, '{"Statement": [{"Effect": "Deny", "Principal": "*", '
                          '"Action": "kms:Encrypt", "Resource": "*"}]}')
    with pytest.raises(E.NotFound):
        c.encrypt(key.key_id, b"x")


def test_constraints(kms: Kms, client: KmsClient, people: dict[str, Principal]) -> None:
    key = client.create_key()
    p = people["grantee"]
    c = as_principal(kms, p)
    client.create_grant(key.key_id, arn(kms, p), ["Encrypt"],
                        constraints={"EncryptionContextSubset": {"tenant": "blue"}})
    client.create_grant(key.key_id, arn(kms, p), ["GenerateDataKey"],
                        constraints={"EncryptionContextEquals": {"tenant": "blue"}})
    c.encrypt(key.key_id, b"x", {"tenant": "blue"})
    c.encrypt(key.key_id, b"x", {"tenant": "blue", "more": "ok"})
    c.generate_data_key(key.key_id, "AES_256", encryption_context={"tenant": "blue"})
    for ctx in (None, {"tenant": "red"}, {"Tenant": "blue"}, {"tenant": "Blue"}):
        with pytest.raises(E.NotFound):
            c.encrypt(key.key_id, b"x", ctx)
    for ctx2 in (None, {"tenant": "blue", "more": "no"}):
        with pytest.raises(E.NotFound):
            c.generate_data_key(key.key_id, "AES_256", encryption_context=ctx2)
    rsa = client.create_key("ECC_NIST_P256", "SIGN_VERIFY")
    with pytest.raises(E.Validation):  # constraints only on symmetric encryption keys
        client.create_grant(rsa.key_id, arn(kms, p), ["Sign"],
                            constraints={"EncryptionContextSubset": {"a": "b"}})


def test_grants_made_through_a_grant(kms: Kms, client: KmsClient,
                                     people: dict[str, Principal]) -> None:
    key = client.create_key()
    parent_p, child_p = people["grantee"], people["third"]
    client.create_grant(key.key_id, arn(kms, parent_p), ["CreateGrant", "Encrypt", "Decrypt"],
                        constraints={"EncryptionContextSubset": {"app": "a"}})
    parent = as_principal(kms, parent_p)
    child = as_principal(kms, child_p)
    for ops, cons in ((["Encrypt"], None),  # looser constraints
                      (["GenerateDataKey"], {"EncryptionContextSubset": {"app": "a"}}),
                      (["Encrypt"], {"EncryptionContextSubset": {"app": "b"}})):
        with pytest.raises(E.NotFound):
            parent.create_grant(key.key_id, arn(kms, child_p), ops, constraints=cons)
    parent.create_grant(key.key_id, arn(kms, child_p), ["Encrypt"],
                        constraints={"EncryptionContextEquals": {"app": "a", "x": "1"}})
    child.encrypt(key.key_id, b"x", {"app": "a", "x": "1"})
    with pytest.raises(E.NotFound):
        child.encrypt(key.key_id, b"x", {"app": "a"})
    with pytest.raises(E.NotFound):  # the child grant has no CreateGrant
        child.create_grant(key.key_id, arn(kms, child_p), ["Encrypt"],
                           constraints={"EncryptionContextEquals": {"app": "a", "x": "1"}})


def test_revoke_list_and_names(kms: Kms, client: KmsClient,
                               people: dict[str, Principal]) -> None:
    key = client.create_key()
    p = people["grantee"]
    ids = [client.create_grant(key.key_id, arn(kms, p), ["Decrypt"]).grant_id
           for _ in range(5)]
    named = client.create_grant(key.key_id, arn(kms, p), ["Encrypt"], name="retry-me")
    again = client.create_grant(key.key_id, arn(kms, p), ["Encrypt"], name="retry-me")
    assert again.grant_id == named.grant_id  # CreateGrant retried with a Name
    assert client.create_grant(key.key_id, arn(kms, p), ["Decrypt"],
                               name="retry-me").grant_id != named.grant_id
    seen: list[str] = []
    marker = None
    while True:
        page = client.list_grants(key.key_id, 2, marker)
        assert len(page.items) <= 2
        seen += [g.grant_id for g in page.items]
        marker = page.next_marker
        if marker is None:
            break
    assert len(seen) == 7 and set(ids) | {named.grant_id} <= set(seen)
    assert [g.grant_id for g in client.list_grants(key.key_id, grant_id=ids[0]).items] \
        == [ids[0]]
    assert len(client.list_grants(key.key_id, grantee_principal=arn(kms, p)).items) == 7
    assert client.list_grants(key.key_id, grantee_principal=arn(kms, people["third"])
                              ).items == ()
    client.revoke_grant(key.key_id, ids[0])
    with pytest.raises(E.NotFound):
        client.revoke_grant(key.key_id, ids[0])
    with pytest.raises(E.InvalidGrantId):
        client.revoke_grant(key.key_id, "not-a-grant-id")
    # Revoking needs kms:RevokeGrant on the key; a grant cannot give it.
    grantee = as_principal(kms, p)
    with pytest.raises(E.NotFound):
        grantee.revoke_grant(key.key_id, ids[1])
    with pytest.raises(E.InvalidMarker):
        client.list_grants(key.key_id, marker="x")
    with pytest.raises(E.Validation):
        client.list_grants(key.key_id, 101)


def test_grant_arguments_are_checked(kms: Kms, client: KmsClient,
                                     people: dict[str, Principal]) -> None:
    key = client.create_key()
    good = arn(kms, people["grantee"])
    bad: list[tuple[type[E.KmsError], dict[str, Any]]] = [
        (E.InvalidArn, {"grantee_principal": "someone"}),
        (E.InvalidArn, {"grantee_principal": "arn:aws:iam::123456789012:role/r"}),
        (E.Validation, {"grantee_principal": "arn:aws:iam::000000000000:user/x"}),
        (E.Validation, {"grantee_principal": good[: good.rindex("/") + 1] + "nobody-here"}),
        (E.Validation, {"grantee_principal": f"arn:aws:iam::{kms.account(INSTANCE)}:root"}),
        (E.Validation, {"operations": []}),
        (E.Validation, {"operations": ["Encrypt", "DeleteKey"]}),
        (E.Validation, {"operations": ["Sign"]}),  # not for a symmetric key
        (E.Validation, {"name": "spaces are not allowed"}),
        (E.Validation, {"constraints": {"EncryptionContextSubset": {"a": 1}}}),
        (E.Validation, {"constraints": {"SourceArn": "x"}}),
        (E.InvalidGrantToken, {"grant_tokens": ["made-up"]}),
        (E.Validation, {"grant_tokens": ["x"] * 11}),
    ]
    for err, change in bad:
        args: dict[str, Any] = {"grantee_principal": good, "operations": ["Encrypt"], **change}
        with pytest.raises(err):
            client.create_grant(key.key_id, args.pop("grantee_principal"),
                                args.pop("operations"), **args)
    with pytest.raises(E.InvalidGrantToken):
        client.encrypt(key.key_id, b"x", grant_tokens=["hsmpool-grant-1.zz"])


def test_unauthorised_create_grant_is_not_found_whether_or_not_the_key_exists(
        kms: Kms, client: KmsClient, people: dict[str, Principal]) -> None:
    key = client.create_key("ECC_NIST_P256", "SIGN_VERIFY")
    c = as_principal(kms, people["grantee"])
    for key_id in (key.key_id, "11111111-2222-3333-4444-555555555555"):
        with pytest.raises(E.NotFound):  # not a Validation about Encrypt on a signing key
            c.create_grant(key_id, arn(kms, people["third"]), ["Encrypt"])


def test_per_grantee_limit(kms: Kms, client: KmsClient, people: dict[str, Principal],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grants_module, "PER_GRANTEE_LIMIT", 3)
    key = client.create_key()
    for _ in range(3):
        client.create_grant(key.key_id, arn(kms, people["grantee"]), ["Encrypt"])
    with pytest.raises(E.LimitExceeded):
        client.create_grant(key.key_id, arn(kms, people["grantee"]), ["Encrypt"])
    client.create_grant(key.key_id, arn(kms, people["third"]), ["Encrypt"])


def test_a_grant_token_is_effective_before_the_commit_is_seen(
        svc_pool: Pool, kms: Kms, client: KmsClient, people: dict[str, Principal],
        clock: FakeClock, tmp_path: Path) -> None:
    """Another service on the same store (another server worker) makes the grant; this one
    has cached the grantee's refusal, but a request with the token is allowed at once."""
    key = client.create_key()
    grantee = as_principal(kms, people["grantee"])
    with pytest.raises(E.NotFound):
        grantee.encrypt(key.key_id, b"x")  # caches the key's grants and the decision
    other = make_kms(svc_pool, database_of(kms.store), clock)
    try:
        g = other.client(INSTANCE).create_grant(key.key_id, arn(kms, people["grantee"]),
                                                ["Encrypt"])
    finally:
        other.close()
    assert grantee.encrypt(key.key_id, b"now", grant_tokens=[g.grant_token]).key_id == key.arn
