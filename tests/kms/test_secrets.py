"""The secrets manager through the embedded service: real SoftHSM2 tokens, a real SQLite
store (kms.secrets.manage, kms.secrets.rotation)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kms import Kms, KmsClient
from kms import errors as E
from kms.audit import AuditLog
from kms.secrets.model import CURRENT, PENDING, PREVIOUS
from tests.database import connect, database_of
from tests.kms.conftest import FakeClock
from tests.kms.principals import allow, as_principal, make_principal, unique

TOKEN_A = "a" * 32
TOKEN_B = "b" * 32


def stages(client: KmsClient, name: str) -> dict[str, tuple[str, ...]]:
    _, versions = client.describe_secret(name)
    return {v.version_id: v.stages for v in versions}


def test_create_get_and_stages_follow_current(client: KmsClient) -> None:
    name = unique("app/db")
    rec, v1 = client.create_secret(name, secret_string="one", client_request_token=TOKEN_A)
    assert v1 is not None and v1.version_id == TOKEN_A and v1.stages == (CURRENT,)
    assert rec.arn.startswith(f"arn:aws:secretsmanager:us-east-1:{client._account}:secret:"
                              f"{name}-") and len(rec.arn.rsplit("-", 1)[1]) == 6
    for sid in (name, rec.arn, rec.arn[:-7]):  # name, full ARN, ARN without the suffix
        assert client.get_secret_value(sid).string == "one"
    client.put_secret_value(name, client_request_token=TOKEN_B, secret_string="two")
    assert client.get_secret_value(name).string == "two"
    assert client.get_secret_value(name, version_stage=PREVIOUS).string == "one"
    assert stages(client, name) == {TOKEN_A: (PREVIOUS,), TOKEN_B: (CURRENT,)}
    third = "c" * 32
    client.put_secret_value(name, client_request_token=third, secret_string="three")
    # AWSPREVIOUS followed AWSCURRENT: the first version has no label (deprecated).
    assert stages(client, name) == {TOKEN_B: (PREVIOUS,), third: (CURRENT,)}
    assert client.get_secret_value(name, version_id=TOKEN_A).string == "one"
    _, page, _ = client.list_secret_version_ids(name, include_deprecated=True)
    assert [v.version_id for v in page] == [TOKEN_A, TOKEN_B, third]


def test_binary_values_and_size_limit(client: KmsClient) -> None:
    name = unique("bin")
    client.create_secret(name, secret_binary=bytes(range(256)) * 256)  # 65,536 bytes
    got = client.get_secret_value(name)
    assert got.binary and got.value == bytes(range(256)) * 256 and got.string is None
    with pytest.raises(E.Validation):
        client.put_secret_value(name, secret_binary=b"x" * 65537)
    with pytest.raises(E.Validation):
        client.put_secret_value(name, secret_string="a", secret_binary=b"b")
    assert client.get_secret_value(name).value == bytes(range(256)) * 256  # unchanged


def test_client_request_token_is_idempotent(client: KmsClient) -> None:
    name = unique("idem")
    client.create_secret(name, secret_string="v1", client_request_token=TOKEN_A)
    # The same CreateSecret again answers as the first did; another value is refused.
    rec, v = client.create_secret(name, secret_string="v1", client_request_token=TOKEN_A)
    assert v is not None and v.version_id == TOKEN_A
    with pytest.raises(E.AlreadyExists):
        client.create_secret(name, secret_string="other", client_request_token=TOKEN_A)
    client.put_secret_value(name, client_request_token=TOKEN_B, secret_string="v2")
    _, again = client.put_secret_value(name, client_request_token=TOKEN_B, secret_string="v2")
    assert again.version_id == TOKEN_B
    with pytest.raises(E.AlreadyExists):
        client.put_secret_value(name, client_request_token=TOKEN_B, secret_string="v3")
    assert client.get_secret_value(name).string == "v2"
    assert len(stages(client, name)) == 2


def test_update_version_stage(client: KmsClient) -> None:
    name = unique("stage")
    client.create_secret(name, secret_string="one", client_request_token=TOKEN_A)
    client.put_secret_value(name, client_request_token=TOKEN_B, secret_string="two",
                            version_stages=["test"])
    assert stages(client, name) == {TOKEN_A: (CURRENT,), TOKEN_B: ("test",)}
    with pytest.raises(E.Validation):  # AWSCURRENT is on A: it must be named to move
        client.update_secret_version_stage(name, CURRENT, move_to_version_id=TOKEN_B)
    client.update_secret_version_stage(name, CURRENT, move_to_version_id=TOKEN_B,
                                       remove_from_version_id=TOKEN_A)
    assert stages(client, name) == {TOKEN_A: (PREVIOUS,), TOKEN_B: (CURRENT, "test")}
    assert client.get_secret_value(name).string == "two"
    client.update_secret_version_stage(name, "test", remove_from_version_id=TOKEN_B)
    assert stages(client, name)[TOKEN_B] == (CURRENT,)
    with pytest.raises(E.Validation):
        client.update_secret_version_stage(name, CURRENT, remove_from_version_id=TOKEN_B)


def test_delete_restore_and_purge(kms: Kms, client: KmsClient, clock: FakeClock) -> None:
    name = unique("del")
    client.create_secret(name, secret_string="keep")
    with pytest.raises(E.Validation):
        client.delete_secret(name, recovery_window_in_days=6)
    rec = client.delete_secret(name, recovery_window_in_days=7)
    assert rec.deletion_date == pytest.approx(clock() + 7 * 86400)
    with pytest.raises(E.InvalidState):
        client.get_secret_value(name)
    assert name not in [r.name for r, _ in client.list_secrets().items]
    assert name in [r.name for r, _ in client.list_secrets(include_planned_deletion=True).items]
    client.restore_secret(name)
    assert client.get_secret_value(name).string == "keep"
    client.delete_secret(name, recovery_window_in_days=7)
    clock.advance(6)
    assert kms.run_due()["secrets_deleted"] == []
    clock.advance(1.1)
    assert kms.run_due()["secrets_deleted"] == [rec.arn]
    with pytest.raises(E.NotFound):
        client.describe_secret(name)
    client.create_secret(name, secret_string="new")  # the name is free again
    assert client.get_secret_value(name).string == "new"
    forced = unique("force")
    client.create_secret(forced, secret_string="x")
    client.delete_secret(forced, force_delete_without_recovery=True)
    with pytest.raises(E.NotFound):
        client.get_secret_value(forced)


def test_generic_rotation_keeps_json_keys_and_runs_on_schedule(
        kms: Kms, client: KmsClient, clock: FakeClock) -> None:
    name = unique("rot")
    value = {"username": "app", "password": "old-password", "host": "db"}
    client.create_secret(name, secret_string=json.dumps(value))
    with pytest.raises(E.Validation):  # no rotator named
        client.rotate_secret(name)
    with pytest.raises(E.Validation):
        client.rotate_secret(name, rotation_lambda_arn="arn:hsmpool:rotator:nope")
    rec, version = client.rotate_secret(name, rotation_lambda_arn="arn:hsmpool:rotator:generic",
                                        rotation_rules={"AutomaticallyAfterDays": 1})
    assert version is not None and rec.rotation_enabled and rec.last_rotated == clock()
    new = json.loads(client.get_secret_value(name).string or "")
    assert new["username"] == "app" and new["host"] == "db"
    assert new["password"] != "old-password" and len(new["password"]) == 32
    assert json.loads(client.get_secret_value(name, version_stage=PREVIOUS).string or "") \
        == value
    assert not any(PENDING in s for s in stages(client, name).values())
    clock.advance(1.01)
    assert kms.run_due()["secrets_rotated"] == [rec.arn]
    newer = json.loads(client.get_secret_value(name).string or "")
    assert newer["password"] != new["password"]
    assert kms.run_due()["secrets_rotated"] == []  # not due again until tomorrow
    client.cancel_rotate_secret(name)
    clock.advance(2)
    assert kms.run_due()["secrets_rotated"] == []


def test_rotation_by_tag_and_a_failed_step_keeps_current(client: KmsClient) -> None:
    name = unique("tagrot")
    client.create_secret(name, secret_binary=b"\x00binary", tags=[
        {"Key": "hsmpool:rotator", "Value": "generic"}])
    with pytest.raises(E.InvalidState, match="createSecret"):  # binary: not rotatable
        client.rotate_secret(name)
    rec, _ = client.describe_secret(name)
    assert rec.rotation_error is not None and "createSecret" in rec.rotation_error
    assert client.get_secret_value(name).value == b"\x00binary"


def test_tampered_envelope_fails_closed(kms: Kms, client: KmsClient, tmp_path: Path) -> None:
    name = unique("tamper")
    client.create_secret(name, secret_string="sealed", client_request_token=TOKEN_A)
    assert client.get_secret_value(name).string == "sealed"  # its data key now remembered
    db = connect(database_of(kms.store))
    (blob,) = db.execute("SELECT envelope FROM secret_versions WHERE version_id = ?",
                         (TOKEN_A,)).fetchone()
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with db:
        db.execute("UPDATE secret_versions SET envelope = ? WHERE version_id = ?",
                   (bytes(flipped), TOKEN_A))
    time.sleep(0.1)  # another connection's commit is seen within 50 ms (Kms._fresh)
    with pytest.raises(E.InvalidCiphertext):
        client.get_secret_value(name)
    # Moved to another secret: the envelope is bound to its secret and version.
    other = unique("other")
    client.create_secret(other, secret_string="x", client_request_token=TOKEN_B)
    with db:
        db.execute("UPDATE secret_versions SET envelope = ? WHERE version_id = ?",
                   (blob, TOKEN_B))
    db.close()
    time.sleep(0.1)
    with pytest.raises(E.InvalidCiphertext):
        client.get_secret_value(other)


def test_customer_key_and_its_state(client: KmsClient) -> None:
    key = client.create_key()
    name = unique("cmk")
    rec, _ = client.create_secret(name, secret_string="under my key", kms_key_id=key.key_id)
    assert rec.kms_key_id == key.key_id
    client.disable_key(key.key_id)
    with pytest.raises(E.Disabled):
        client.get_secret_value(name)
    client.enable_key(key.key_id)
    assert client.get_secret_value(name).string == "under my key"
    with pytest.raises(E.NotFound):
        client.create_secret(unique("nokey"), secret_string="x",
                             kms_key_id="alias/does-not-exist")


def test_other_instances_and_principals_cannot_see_secrets(kms: Kms, client: KmsClient,
                                                           client2: KmsClient) -> None:
    name = unique("private")
    rec, _ = client.create_secret(name, secret_string="ours")
    for sid in (name, rec.arn):
        with pytest.raises(E.NotFound):
            client2.get_secret_value(sid)
        with pytest.raises(E.NotFound):
            client2.rotate_secret(sid)
    assert name not in [r.name for r, _ in client2.list_secrets().items]
    reader = make_principal(kms, unique("reader"),
                            allow("secretsmanager:GetSecretValue", rec.arn))
    nobody = make_principal(kms, unique("nobody"), allow("kms:Encrypt", "*"))
    assert as_principal(kms, reader).get_secret_value(name).string == "ours"
    with pytest.raises(E.NotFound):
        as_principal(kms, reader).put_secret_value(name, secret_string="theirs")
    with pytest.raises(E.NotFound):
        as_principal(kms, nobody).get_secret_value(name)
    with pytest.raises(E.AccessDenied):
        as_principal(kms, nobody).list_secrets()
    assert client.get_secret_value(name).string == "ours"


def test_list_filters_and_pages(client: KmsClient) -> None:
    prefix = unique("list")
    for i in range(5):
        client.create_secret(f"{prefix}/s{i}", secret_string="x", description=f"d{i % 2}",
                             tags=[{"Key": "team", "Value": "blue" if i < 2 else "red"}])
    names: list[str] = []
    token = None
    while True:
        page = client.list_secrets(max_results=2, next_token=token,
                                   filters=[{"Key": "name", "Values": [prefix]}])
        names += [r.name for r, _ in page.items]
        token = page.next_token
        if token is None:
            break
    assert names == [f"{prefix}/s{i}" for i in range(5)]
    blue = client.list_secrets(filters=[{"Key": "name", "Values": [prefix]},
                                        {"Key": "tag-value", "Values": ["blue"]}])
    assert [r.name for r, _ in blue.items] == [f"{prefix}/s0", f"{prefix}/s1"]
    not_blue = client.list_secrets(filters=[{"Key": "name", "Values": [prefix]},
                                            {"Key": "tag-value", "Values": ["!blue"]}])
    assert len(not_blue.items) == 3
    with pytest.raises(E.InvalidMarker):
        client.list_secrets(next_token="%%%")
    with pytest.raises(E.Validation):
        client.list_secrets(filters=[{"Key": "nope", "Values": ["x"]}])


def test_random_passwords(client: KmsClient) -> None:
    pw = client.get_random_password()
    assert len(pw) == 32
    assert len(client.get_random_password(4096)) == 4096
    digits = client.get_random_password(20, exclude_punctuation=True, exclude_uppercase=True,
                                        exclude_lowercase=True)
    assert digits.isdigit()
    for bad in (3, 4097):
        with pytest.raises(E.Validation):
            client.get_random_password(bad)


def test_values_never_reach_the_audit_trail(kms: Kms, client: KmsClient,
                                             tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    kms.audit = AuditLog(audit_dir, "secrets", sync=False)
    marker = "MARKER-" + "9f3e1c7a" * 4
    name = unique("hyg")
    client.create_secret(name, secret_string=marker)
    client.get_secret_value(name)
    client.put_secret_value(name, secret_string=marker + "2")
    with pytest.raises(E.AlreadyExists):
        client.create_secret(name, secret_string=marker + "3")
    kms.audit.close()
    kms.audit = None
    text = "".join(p.read_bytes().decode("utf-8", "replace")
                   for p in sorted(audit_dir.rglob("*")) if p.is_file())
    assert "secretsmanager:GetSecretValue" in text and name in text
    assert "MARKER-" not in text


def test_the_default_key_disabled_stops_reads_even_when_warm(client: KmsClient) -> None:
    name = unique("warm")
    client.create_secret(name, secret_string="hot")
    assert client.get_secret_value(name).string == "hot"  # warm: no token call next time
    default = client.describe_key("alias/aws/secretsmanager")
    client.disable_key(default.key_id)
    with pytest.raises(E.Disabled):
        client.get_secret_value(name)
    client.enable_key(default.key_id)
    assert client.get_secret_value(name).string == "hot"


def test_create_is_authorised_on_the_secrets_name(kms: Kms) -> None:
    team = unique("team")
    writer = make_principal(kms, unique("writer"), allow(
        ["secretsmanager:CreateSecret", "secretsmanager:GetSecretValue"],
        f"arn:aws:secretsmanager:*:*:secret:{team}/*"))
    c = as_principal(kms, writer)
    rec, _ = c.create_secret(f"{team}/db", secret_string="mine")
    assert c.get_secret_value(rec.arn).string == "mine"
    with pytest.raises(E.AccessDenied):
        c.create_secret(unique("other") + "/db", secret_string="not mine")
