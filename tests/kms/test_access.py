"""Authorisation through the service (real SoftHSM2, real SQLite): a key's aliases as its
resource names (issue 16), key policies and their checks, the purge marker, Decrypt's KeyId
and alias management checks (issue 17), one audit record per call, SM4 algorithm names.

Principals are real rows of the store (as ``credentials create`` writes them) with
:class:`kms.policy.Principal` objects built from the same documents.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsmpool import Pool
from kms import Kms, KmsClient, Store
from kms import errors as E
from kms.api.aws_kms import OPERATIONS
from kms.audit import AuditLog
from kms.audit_reader import Filter, read
from kms.config import KmsSettings
from kms.model import KeyState
from kms.store import MIGRATIONS, open_store
from tests.database import database_for, traced
from tests.kms.conftest import FakeClock
from tests.kms.principals import INSTANCE, allow, as_principal, make_principal
from tests.kms.principals import unique as _name

# --- issue 16: a key's aliases are its resource names -------------------------------------


def test_policy_on_an_alias_pattern_covers_every_use_of_the_key(kms: Kms,
                                                               client: KmsClient) -> None:
    key = client.create_key()
    one = "alias/" + _name("app-one")
    client.create_alias(one, key.key_id)
    app = as_principal(kms, make_principal(kms, _name("app"), allow(
        ["kms:Encrypt", "kms:Decrypt"], "arn:aws:kms:*:*:alias/app-*")))
    ct = app.encrypt(one, b"via alias", {"k": "v"}).ciphertext_blob
    assert app.decrypt(ct, {"k": "v"}).plaintext == b"via alias"
    assert app.decrypt(ct, {"k": "v"}, key_id=one).plaintext == b"via alias"
    assert app.decrypt(ct, {"k": "v"}, key_id=key.arn).plaintext == b"via alias"
    by_id = app.encrypt(key.key_id, b"by id").ciphertext_blob
    with pytest.raises(E.NotFound):  # an action the policy does not allow
        app.generate_data_key(one, "AES_256")
    # Alias changes take effect at once (the cached names are evicted).
    client.delete_alias(one)
    with pytest.raises(E.NotFound):
        app.decrypt(by_id)
    two = "alias/" + _name("app-two")
    client.create_alias(two, key.key_id)
    assert app.decrypt(by_id).plaintext == b"by id"
    other = client.create_key()
    client.update_alias(two, other.key_id)
    with pytest.raises(E.NotFound):
        app.decrypt(by_id)
    assert app.encrypt(two, b"x").key_id == other.arn


def test_alias_and_grant_lookups_are_cached(kms: Kms, client: KmsClient) -> None:
    """After the first request, a principal's Encrypt/Decrypt read no aliases or grants
    from the store (the statements it runs, traced)."""
    key = client.create_key()
    alias = "alias/" + _name("app-cache")
    client.create_alias(alias, key.key_id)
    app = as_principal(kms, make_principal(kms, _name("app"), allow(
        ["kms:Encrypt", "kms:Decrypt"], "arn:aws:kms:*:*:alias/app-cache-*")))
    # On PostgreSQL the service's own writes move the store's change counter too, and cost
    # one drop of the caches when it next looks (within 50 ms): have it look first.
    time.sleep(0.06)
    kms.refresh()
    ct = app.encrypt(key.key_id, b"warm").ciphertext_blob
    app.encrypt(alias, b"warm")
    app.decrypt(ct)
    with traced(kms.store) as statements:
        for _ in range(200):
            app.encrypt(key.key_id, b"x")
            app.encrypt(alias, b"x", {"ctx": "1"})
            app.decrypt(ct)
    assert not [s for s in statements if "aliases" in s or "grants" in s or "keys" in s]


# --- issue 17 item 3: key policies ----------------------------------------------------------


def _doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


DENY_ALL = _doc({"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*"})


@pytest.mark.parametrize("policy", [
    "not json at all", "\u0000deleted", "{}", '{"Statement": []}x',
    _doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),  # no Principal
    _doc({"Effect": "Allow", "Principal": {"Service": "logs.amazonaws.com"},
          "Action": "kms:*", "Resource": "*"}),
    _doc({"Effect": "Allow", "NotPrincipal": {"AWS": "*"}, "Action": "kms:*",
          "Resource": "*"}),
    _doc({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/x"},
          "Action": "kms:*", "Resource": "*"}),
    _doc({"Effect": "Allow", "Principal": "*", "Action": "kms:Encrpyt", "Resource": "*"}),
    _doc({"Sid": "tab\there\u0007bell", "Effect": "Allow", "Principal": "*",
          "Action": "kms:*", "Resource": "*"}).replace("\\u0007", "\u0007"),
])
def test_bad_key_policies_are_malformed(client: KmsClient, policy: str) -> None:
    with pytest.raises(E.MalformedPolicyDocument):
        client.create_key(policy=policy)
    key = client.create_key()
    with pytest.raises(E.MalformedPolicyDocument):
        client.put_key_policy(key.key_id, policy)
    assert "key-default-1" in client.get_key_policy(key.key_id)  # unchanged


def test_key_policy_size_limit(client: KmsClient) -> None:
    big = _doc({"Sid": "x" * 40000, "Effect": "Allow", "Principal": "*", "Action": "kms:*",
                "Resource": "*"})
    with pytest.raises(E.LimitExceeded):
        client.create_key(policy=big)


def test_deny_all_key_policy_binds_principals_not_the_embedder(kms: Kms,
                                                               client: KmsClient) -> None:
    admin = as_principal(kms, make_principal(kms, _name("admin"), allow("kms:*", "*")))
    with pytest.raises(E.MalformedPolicyDocument):  # the lockout safety check
        admin.create_key(policy=DENY_ALL)
    key = admin.create_key(policy=DENY_ALL, bypass_policy_lockout_safety_check=True)
    with pytest.raises(E.NotFound):
        admin.encrypt(key.key_id, b"x")
    with pytest.raises(E.NotFound):
        admin.describe_key(key.key_id)
    with pytest.raises(E.NotFound):
        admin.put_key_policy(key.key_id, DENY_ALL, bypass_policy_lockout_safety_check=True)
    # The embedder (and so the command line) is bound by no key policy: the way back.
    ct = client.encrypt(key.key_id, b"embedder").ciphertext_blob
    client.put_key_policy(key.key_id, _doc({"Effect": "Allow", "Principal": {
        "AWS": f"arn:aws:iam::{kms.account(INSTANCE)}:root"}, "Action": "kms:*",
        "Resource": "*"}))
    assert admin.decrypt(ct).plaintext == b"embedder"


def test_key_policy_semantics(kms: Kms, client: KmsClient) -> None:
    account = kms.account(INSTANCE)
    nobody = make_principal(kms, _name("nobody"))  # no permissions of its own
    user = make_principal(kms, _name("user"), allow("kms:*", "*"))
    me = f"arn:aws:iam::{account}:user/{nobody.name}"
    policy = _doc(
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": [me]}, "Action": ["kms:Encrypt",
                                                                  "kms:Decrypt"],
         "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:ScheduleKeyDeletion",
         "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": account}, "Action": "kms:Decrypt",
         "Resource": "*", "Condition": {"StringEquals": {"kms:EncryptionContext:x": "no"}}})
    key = client.create_key(policy=policy)
    assert client.get_key_policy(key.key_id) == policy
    n, u = as_principal(kms, nobody), as_principal(kms, user)
    # Named directly: allowed without any permission of its own, for what it names only.
    ct = n.encrypt(key.key_id, b"n", {"x": "yes"}).ciphertext_blob
    assert n.decrypt(ct, {"x": "yes"}).plaintext == b"n"
    with pytest.raises(E.NotFound):
        n.describe_key(key.key_id)
    # The account root: the principal's own policies decide.
    assert u.describe_key(key.key_id).key_id == key.key_id
    # A Deny for everyone (or for the account) wins over every Allow.
    with pytest.raises(E.NotFound):
        u.schedule_key_deletion(key.key_id)
    bad = u.encrypt(key.key_id, b"u", {"x": "no"}).ciphertext_blob
    for c in (n, u):
        with pytest.raises(E.NotFound):
            c.decrypt(bad, {"x": "no"})
    assert client.decrypt(bad, {"x": "no"}).plaintext == b"u"
    # Without the root statement, the principal's own Allow no longer suffices.
    client.put_key_policy(key.key_id, _doc({"Effect": "Allow", "Principal": {"AWS": me},
                                            "Action": "kms:*", "Resource": "*"}))
    with pytest.raises(E.NotFound):
        u.describe_key(key.key_id)
    assert n.describe_key(key.key_id).key_id == key.key_id


def test_default_key_policy_keeps_principal_policies_deciding(kms: Kms,
                                                               client: KmsClient) -> None:
    key = client.create_key()
    assert json.loads(client.get_key_policy(key.key_id))["Statement"][0]["Principal"] == {
        "AWS": f"arn:aws:iam::{kms.account(INSTANCE)}:root"}
    assert client.list_key_policies(key.key_id) == ("default",)
    p = as_principal(kms, make_principal(kms, _name("enc"), allow("kms:Encrypt", key.arn)))
    p.encrypt(key.key_id, b"x")
    with pytest.raises(E.NotFound):
        p.describe_key(key.key_id)
    with pytest.raises(E.NotFound):
        client.get_key_policy(key.key_id, "AWS_RAM")
    with pytest.raises(E.Validation):
        client.put_key_policy(key.key_id, DENY_ALL, "other")


# --- issue 17 item 6: the purge marker --------------------------------------------------


def test_a_policy_cannot_forge_the_purge_marker(kms: Kms, client: KmsClient,
                                                clock: FakeClock) -> None:
    with pytest.raises(E.MalformedPolicyDocument):
        client.create_key(policy="\x00deleted")
    key = client.create_key()
    client.schedule_key_deletion(key.key_id, 7)
    clock.advance(8)
    assert kms.run_due()["purged"] == [key.key_id]
    assert kms.store.get_key(key.key_id).purged_at == clock.t  # type: ignore[union-attr]
    with pytest.raises(E.NotFound):
        client.describe_key(key.key_id)
    assert kms.run_due()["purged"] == []  # never purged twice


@pytest.mark.sqlite_only(reason="rolls a SQLite file back to its schema 3 and migrates it "
                         "(PostgreSQL's schema starts after those migrations)")
def test_migration_keeps_real_purges_and_unhides_forged_marks(svc_pool: Pool,
                                                              tmp_path: Path) -> None:
    """A store written before the purged_at column: a key purged then (old mark, shredded)
    stays purged; a key whose policy forged the mark becomes visible again."""
    db = tmp_path / "old.db"
    clock = FakeClock()
    service = Kms(svc_pool, Store(db), KmsSettings(database=str(db), audit_dir=None),
                  now=clock)
    try:
        c = service.client(INSTANCE)
        purged, forged = c.create_key(), c.create_key()
        ct = c.encrypt(forged.key_id, b"still here").ciphertext_blob
        c.schedule_key_deletion(purged.key_id, 7)
        clock.advance(8)
        service.run_due()
    finally:
        service.close()
    old = sqlite3.connect(db)  # roll the file back to schema 3 with the old marks
    with old:
        old.execute("UPDATE keys SET policy = char(0) || 'deleted' WHERE key_id IN (?, ?)",
                    (purged.key_id, forged.key_id))
        old.execute("ALTER TABLE keys DROP COLUMN purged_at")
        old.execute("DROP TABLE grants")
        old.execute("DROP TABLE leases")
        old.execute("DROP TABLE secret_versions")
        old.execute("DROP TABLE secrets")
        for table in ("client_keys", "access_points", "sealed_secrets", "audit_segments",
                      "audit_shipped", "audit_shipped_heads"):
            old.execute(f"DROP TABLE {table}")
        old.execute(f"PRAGMA user_version = {3}")
    old.close()
    service = Kms(svc_pool, Store(db), KmsSettings(database=str(db), audit_dir=None),
                  now=clock)
    try:
        assert service.store.schema_version == len(MIGRATIONS)
        c = service.client(INSTANCE)
        with pytest.raises(E.NotFound):
            c.describe_key(purged.key_id)
        assert service.store.get_key(purged.key_id).policy is None  # type: ignore[union-attr]
        assert c.describe_key(forged.key_id).policy is None
        assert c.decrypt(ct).plaintext == b"still here"
        assert service.run_due()["purged"] == []
    finally:
        service.close()


# --- issue 17 items 5 and 6: Decrypt's KeyId, alias management ------------------------------


def test_decrypt_key_id_reveals_nothing_to_a_caller_not_allowed(kms: Kms,
                                                                client: KmsClient) -> None:
    a, b = client.create_key(), client.create_key()
    exists = "alias/" + _name("exists")
    client.create_alias(exists, b.key_id)
    ct = client.encrypt(a.key_id, b"x").ciphertext_blob
    on_b = as_principal(kms, make_principal(kms, _name("b-only"), allow("kms:Decrypt",
                                                                        b.arn)))
    for named in (exists, "alias/" + _name("missing"), b.key_id, str(uuid.uuid4())):
        with pytest.raises(E.NotFound) as info:
            on_b.decrypt(ct, key_id=named)
        assert type(info.value) is E.NotFound
    on_a = as_principal(kms, make_principal(kms, _name("a-only"), allow("kms:Decrypt",
                                                                        a.arn)))
    with pytest.raises(E.IncorrectKey):
        on_a.decrypt(ct, key_id=exists)
    assert on_a.decrypt(ct, key_id=a.key_id).plaintext == b"x"


def test_alias_management_needs_permission_on_the_keys(kms: Kms, client: KmsClient) -> None:
    k1, k2 = client.create_key(), client.create_key()
    name = "alias/" + _name("managed")
    client.create_alias(name, k1.key_id)
    aliases_only = as_principal(kms, make_principal(kms, _name("aliases"), allow(
        ["kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias"], "arn:aws:kms:*:*:alias/*")))
    with pytest.raises(E.NotFound):
        aliases_only.delete_alias(name)
    with pytest.raises(E.NotFound):
        aliases_only.update_alias(name, k2.key_id)
    with pytest.raises(E.NotFound):
        aliases_only.create_alias("alias/" + _name("new"), k1.key_id)
    assert client.describe_key(name).key_id == k1.key_id
    # Allowed on the new key but not the old one: UpdateAlias is still refused.
    on_k2 = as_principal(kms, make_principal(kms, _name("k2"), allow(
        ["kms:UpdateAlias", "kms:DeleteAlias"], ["arn:aws:kms:*:*:alias/*", k2.arn])))
    with pytest.raises(E.NotFound):
        on_k2.update_alias(name, k2.key_id)
    with pytest.raises(E.NotFound):
        on_k2.delete_alias(name)
    # With the alias and both keys: allowed; the same answer for an alias that is not there.
    full = as_principal(kms, make_principal(kms, _name("full"), allow(
        ["kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias"],
        ["arn:aws:kms:*:*:alias/*", k1.arn, k2.arn])))
    full.update_alias(name, k2.key_id)
    assert client.describe_key(name).key_id == k2.key_id
    full.delete_alias(name)
    with pytest.raises(E.NotFound):
        client.describe_key(name)
    with pytest.raises(E.NotFound):
        full.delete_alias(name)
    full.create_alias(name, k1.key_id)


# --- issue 17 item 7: one audit record per call, under its own action ---------------------


@pytest.fixture
def audited(svc_pool: Pool, tmp_path: Path) -> Iterator[tuple[Kms, Path]]:
    db = database_for(tmp_path / "kms.db")
    audit_dir = tmp_path / "audit"
    service = Kms(svc_pool, open_store(db), KmsSettings(database=db, audit_dir=str(audit_dir)),
                  audit=AuditLog(audit_dir, "test"))
    yield service, audit_dir
    service.close()


@pytest.mark.parametrize(("op", "action"), [
    ("ListResourceTags", "kms:ListResourceTags"), ("GetKeyPolicy", "kms:GetKeyPolicy"),
    ("ListKeyPolicies", "kms:ListKeyPolicies"), ("RotateKeyOnDemand", "kms:RotateKeyOnDemand"),
    ("ListKeyRotations", "kms:ListKeyRotations"), ("DescribeKey", "kms:DescribeKey"),
])
def test_each_call_is_audited_once_under_its_action(audited: tuple[Kms, Path], op: str,
                                                    action: str) -> None:
    service, audit_dir = audited
    c = service.client(INSTANCE)
    key = c.create_key()
    OPERATIONS[op](c, {"KeyId": key.key_id})
    service.audit.flush()  # type: ignore[union-attr]
    records = [(r.action, r.result) for r in read(audit_dir, Filter(key_id=key.key_id))]
    assert records == [("kms:CreateKey", "ok"), (action, "ok")]


def test_a_refused_call_is_audited_once_under_its_action(audited: tuple[Kms, Path]) -> None:
    service, audit_dir = audited
    c = service.client(INSTANCE)
    key = c.create_key()
    p = service.client(INSTANCE, make_principal(service, _name("none")), "127.0.0.1")
    since = service.now()
    with pytest.raises(E.NotFound):
        OPERATIONS["ListResourceTags"](p, {"KeyId": key.key_id})
    service.audit.flush()  # type: ignore[union-attr]
    records = [(r.action, r.result) for r in read(audit_dir, Filter(since=since))]
    assert records == [("kms:ListResourceTags", "NotFound")]


# --- issue 16: SM4 algorithm names ---------------------------------------------------------


def test_sm4_keys_accept_sm4_gcm_and_symmetric_default(client: KmsClient) -> None:
    sm4, aes = client.create_key("SM4"), client.create_key()
    r = client.encrypt(sm4.key_id, b"sm4", {"a": "b"}, "SM4_GCM")
    assert r.encryption_algorithm == "SM4_GCM"
    for alg in ("SM4_GCM", "SYMMETRIC_DEFAULT"):
        d = client.decrypt(r.ciphertext_blob, {"a": "b"}, encryption_algorithm=alg)
        assert d.plaintext == b"sm4" and d.encryption_algorithm == alg
    r2 = client.encrypt(sm4.key_id, b"default")
    assert client.decrypt(r2.ciphertext_blob, encryption_algorithm="SM4_GCM").plaintext \
        == b"default"
    with pytest.raises(E.InvalidKeyUsage):
        client.encrypt(aes.key_id, b"x", None, "SM4_GCM")
    aes_ct = client.encrypt(aes.key_id, b"x").ciphertext_blob
    with pytest.raises(E.InvalidKeyUsage):
        client.decrypt(aes_ct, encryption_algorithm="SM4_GCM")


def test_scheduled_deletion_removes_grants_and_aliases(kms: Kms, client: KmsClient,
                                                       clock: FakeClock) -> None:
    key = client.create_key()
    client.create_alias("alias/" + _name("gone"), key.key_id)
    grantee = make_principal(kms, _name("grantee"))
    client.create_grant(key.key_id, f"arn:aws:iam::{kms.account(INSTANCE)}:user/"
                        f"{grantee.name}", ["Encrypt"])
    client.schedule_key_deletion(key.key_id, 7)
    clock.advance(8)
    kms.run_due()
    assert kms.store.grants_of_key(key.key_id) == []
    assert kms.store.alias_names_of_key(INSTANCE, key.key_id) == []
    assert kms.store.get_key(key.key_id).state is KeyState.PENDING_DELETION  # type: ignore
