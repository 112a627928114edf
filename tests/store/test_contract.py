"""The metadata store contract (:class:`kms.store.MetadataStore`), run against every engine.

Each engine is a factory that opens a store object on one database; opening it twice gives
two store objects on the same data, as two processes (or two nodes) have. A new engine is
added to :data:`ENGINES` and must pass all of this unchanged.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kms.audit import chain_hash, genesis
from kms.errors import AlreadyExists, LimitExceeded
from kms.model import (
    AliasRecord,
    Grant,
    ImportToken,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
)
from kms.secrets.model import SecretRecord, SecretVersion
from kms.store import (
    AuditHead,
    Conflict,
    MetadataStore,
    NodeRecord,
    ShippedRecord,
    ShippedSegment,
    ShipResult,
    SqliteStore,
)

Opener = Callable[[], MetadataStore]


def _sqlite(tmp_path: Path) -> Opener:
    path = tmp_path / "kms.db"
    return lambda: SqliteStore(path)


def _postgresql(tmp_path: Path, request: pytest.FixtureRequest) -> Opener:
    """A fresh database of the session's throw-away PostgreSQL cluster per test."""
    from kms.store.postgres import PostgresStore

    pg = request.getfixturevalue("postgres")
    name = f"contract_{uuid.uuid4().hex[:12]}"
    pg.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}"
    return lambda: PostgresStore(url)


ENGINES: dict[str, Callable[[Path, pytest.FixtureRequest], Opener]] = {
    "sqlite": lambda tmp_path, _request: _sqlite(tmp_path),
    "postgresql": _postgresql,
}


@pytest.fixture(params=sorted(ENGINES))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[MetadataStore] = []
    make = ENGINES[request.param](tmp_path, request)

    def open_store() -> MetadataStore:
        s = make()
        opened.append(s)
        return s

    yield open_store
    for s in opened:
        s.close()


@pytest.fixture
def store(opener: Opener) -> MetadataStore:
    return opener()


INSTANCE = "inst-a"


def _key(instance: str = INSTANCE, **kw: object) -> KeyRecord:
    key_id = str(uuid.uuid4())
    fields: dict[str, object] = dict(
        key_id=key_id, instance=instance, arn=f"arn:aws:kms:r:1:key/{key_id}",
        spec=KeySpec.SYMMETRIC_DEFAULT, usage=KeyUsage.ENCRYPT_DECRYPT, origin=Origin.AWS_KMS,
        state=KeyState.ENABLED, created=1000.0)
    fields.update(kw)
    return KeyRecord(**fields)  # type: ignore[arg-type]


def _version(key: KeyRecord, number: int, blob: bytes | None = b"wrapped") -> KeyVersion:
    return KeyVersion(uuid.uuid4().hex, key.key_id, number, 1000.0 + number, blob)


def _grant(key: KeyRecord, grantee: str, name: str | None = None,
           ops: tuple[str, ...] = ("Decrypt",)) -> Grant:
    return Grant(grant_id=uuid.uuid4().hex * 2, key_id=key.key_id, instance=key.instance,
                 name=name, grantee_id=grantee, grantee_arn=f"arn:aws:iam::1:user/{grantee}",
                 retiring_id="p-retire", retiring_arn="arn:aws:iam::1:user/retire",
                 operations=ops, subset={"app": "x"}, equals=None, token="tok",
                 issuing_account="1", created=5.0)


# --- keys and versions ---------------------------------------------------------------------


def test_a_key_and_its_versions_read_back_as_written(store: MetadataStore) -> None:
    key = _key(tags=(("a", "1"), ("b", "2")), description="d", rotation_enabled=True,
               next_rotation=50.0, policy='{"x": 1}')
    v1 = _version(key, 1)
    key = replace(key, primary_version=v1.version_id)
    store.insert_key(key, v1)
    assert store.get_key(key.key_id) == key
    assert store.get_version(v1.version_id) == v1
    v2 = _version(key, 2)
    new = replace(key, primary_version=v2.version_id, revision=2)
    store.update_key(key, new, v2)
    assert store.get_key(key.key_id) == new
    assert store.list_versions(key.key_id) == [v1, v2]
    assert store.get_key(str(uuid.uuid4())) is None and store.get_version("0" * 32) is None


def test_update_from_a_stale_revision_is_a_conflict_and_writes_nothing(
        opener: Opener) -> None:
    a, b = opener(), opener()
    key = _key()
    a.insert_key(key, _version(key, 1))
    seen_a, seen_b = a.get_key(key.key_id), b.get_key(key.key_id)
    assert seen_a is not None and seen_b is not None
    a.update_key(seen_a, replace(seen_a, description="by a", revision=2))
    with pytest.raises(Conflict):
        b.update_key(seen_b, replace(seen_b, description="by b", revision=2),
                     _version(key, 2))
    assert b.get_key(key.key_id) == replace(key, description="by a", revision=2)
    assert len(b.list_versions(key.key_id)) == 1  # the version of the refused change: not added
    with pytest.raises(ValueError):  # a change must move the revision on
        a.update_key(replace(key, revision=2), replace(key, revision=2))


def test_concurrent_changes_lose_none(opener: Opener) -> None:
    """Eight threads on two store objects each add 10 to a counter kept in the description,
    by read -> compare-and-swap -> retry: the sum is exact."""
    stores = [opener(), opener()]
    key = _key(description="0")
    stores[0].insert_key(key, None)

    def work(s: MetadataStore) -> None:
        for _ in range(10):
            while True:
                cur = s.get_key(key.key_id)
                assert cur is not None
                try:
                    s.update_key(cur, replace(cur, description=str(int(cur.description) + 1),
                                              revision=cur.revision + 1))
                    break
                except Conflict:
                    continue

    threads = [threading.Thread(target=work, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = stores[1].get_key(key.key_id)
    assert final is not None and final.description == "80" and final.revision == 81


def test_list_keys_pages_by_key_id_within_an_instance(store: MetadataStore) -> None:
    mine = sorted((_key() for _ in range(7)), key=lambda k: k.key_id)
    for k in [*mine, _key("inst-b")]:
        store.insert_key(k, None)
    first = store.list_keys(INSTANCE, "", 4)
    rest = store.list_keys(INSTANCE, first[-1].key_id, 4)
    assert first + rest == mine and len(rest) == 3


def test_keys_due(store: MetadataStore) -> None:
    rotate = _key(rotation_enabled=True, next_rotation=100.0)
    later = _key(rotation_enabled=True, next_rotation=300.0)
    delete = _key(state=KeyState.PENDING_DELETION, deletion_date=150.0)
    expire = _key(state=KeyState.DISABLED, import_valid_to=120.0, origin=Origin.EXTERNAL)
    purged = _key(state=KeyState.PENDING_DELETION, deletion_date=10.0, purged_at=20.0)
    off = _key(state=KeyState.DISABLED, rotation_enabled=True, next_rotation=1.0)
    for k in (rotate, later, delete, expire, purged, off):
        store.insert_key(k, None)
    assert {k.key_id for k in store.keys_due(200.0)} == {rotate.key_id, delete.key_id,
                                                         expire.key_id}


def test_destroy_material_shreds_the_key_and_what_points_at_it(store: MetadataStore) -> None:
    key = _key(state=KeyState.PENDING_DELETION)
    store.insert_key(key, _version(key, 1))
    store.update_key(key, replace(key, revision=2), _version(key, 2))
    key = replace(key, revision=2)
    store.put_alias(AliasRecord(INSTANCE, "alias/gone", key.key_id, 1.0, 1.0), create=True)
    store.put_import_token(ImportToken("t1", key.key_id, "RSA_AES", "RSA_2048", b"w", b"p", 9.0))
    store.create_grant(_grant(key, "p-1"), per_grantee_limit=10)
    other = _key()
    store.insert_key(other, _version(other, 1))
    store.put_alias(AliasRecord(INSTANCE, "alias/stays", other.key_id, 1.0, 1.0), create=True)

    gone = replace(key, state=KeyState.PENDING_DELETION, purged_at=30.0, revision=3)
    with pytest.raises(Conflict):
        store.destroy_material(replace(key, revision=1), gone)
    assert all(v.blob for v in store.list_versions(key.key_id))  # refused: nothing shredded
    store.destroy_material(key, gone)
    assert store.get_key(key.key_id) == gone
    assert [v.blob for v in store.list_versions(key.key_id)] == [None, None]
    assert store.get_alias(INSTANCE, "alias/gone") is None
    assert store.get_import_token("t1") is None and store.grants_of_key(key.key_id) == []
    assert store.get_alias(INSTANCE, "alias/stays") is not None
    assert store.list_versions(other.key_id)[0].blob == b"wrapped"


# --- aliases -------------------------------------------------------------------------------


def test_aliases(store: MetadataStore) -> None:
    a, b = _key(), _key()
    store.insert_key(a, None)
    store.insert_key(b, None)
    for name in ("alias/x", "alias/y", "alias/z"):
        store.put_alias(AliasRecord(INSTANCE, name, a.key_id, 1.0, 1.0), create=True)
    with pytest.raises(AlreadyExists):
        store.put_alias(AliasRecord(INSTANCE, "alias/x", b.key_id, 2.0, 2.0), create=True)
    store.put_alias(AliasRecord(INSTANCE, "alias/y", b.key_id, 1.0, 3.0), create=False)
    assert store.get_alias(INSTANCE, "alias/y") == AliasRecord(INSTANCE, "alias/y", b.key_id,
                                                               1.0, 3.0)
    assert store.get_alias("inst-b", "alias/x") is None
    assert store.alias_names_of_key(INSTANCE, a.key_id) == ["alias/x", "alias/z"]
    assert [r.name for r in store.list_aliases(INSTANCE, None, "alias/x", 10)] == [
        "alias/y", "alias/z"]
    assert [r.name for r in store.list_aliases(INSTANCE, b.key_id, "", 10)] == ["alias/y"]
    assert not store.delete_alias(INSTANCE, "alias/x", key_id=b.key_id)  # points elsewhere
    assert store.delete_alias(INSTANCE, "alias/x", key_id=a.key_id)
    assert not store.delete_alias(INSTANCE, "alias/x")
    assert store.delete_alias(INSTANCE, "alias/z")
    assert store.alias_names_of_key(INSTANCE, a.key_id) == []


# --- grants --------------------------------------------------------------------------------


def test_grants(store: MetadataStore) -> None:
    key = _key()
    store.insert_key(key, None)
    g1 = store.create_grant(_grant(key, "p-1", name="n"), per_grantee_limit=2)
    again = replace(_grant(key, "p-1", name="n"), token="other")
    assert store.create_grant(again, per_grantee_limit=2) == g1  # a retried CreateGrant
    g2 = store.create_grant(_grant(key, "p-1", ops=("Encrypt",)), per_grantee_limit=2)
    with pytest.raises(LimitExceeded):
        store.create_grant(_grant(key, "p-1"), per_grantee_limit=2)
    g3 = store.create_grant(_grant(key, "p-2"), per_grantee_limit=2)
    assert store.get_grant(g1.grant_id) == g1
    assert store.get_grant(g1.grant_id).subset == {"app": "x"}  # type: ignore[union-attr]
    ids = sorted(g.grant_id for g in (g1, g2, g3))
    assert [g.grant_id for g in store.grants_of_key(key.key_id)] == ids
    assert [g.grant_id for g in store.list_grants(key.key_id, ids[0], 1)] == ids[1:2]
    assert [g.grant_id for g in store.list_grants(key.key_id, "", 10, grantee_id="p-2")] == [
        g3.grant_id]
    assert store.list_grants(key.key_id, "", 10, grant_id=g2.grant_id) == [g2]
    assert len(store.list_retirable_grants(INSTANCE, "p-retire", "", 10)) == 3
    assert store.list_retirable_grants("inst-b", "p-retire", "", 10) == []
    assert not store.delete_grant(g1.grant_id, str(uuid.uuid4()))
    assert store.delete_grant(g1.grant_id, key.key_id)
    assert store.get_grant(g1.grant_id) is None


# --- import tokens and imported material ---------------------------------------------------


def test_import_tokens(store: MetadataStore) -> None:
    key = _key(origin=Origin.EXTERNAL, state=KeyState.PENDING_IMPORT)
    store.insert_key(key, None)
    tokens = [ImportToken(f"t{i}", key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048",
                          bytes([i]) * 8, b"pub", 100.0 * i) for i in (1, 2, 3)]
    for t in tokens:
        store.put_import_token(t)
    assert store.get_import_token("t2") == tokens[1]
    assert store.count_import_tokens(key.key_id) == 3
    store.delete_expired_import_tokens(key.key_id, 200.0)
    assert store.count_import_tokens(key.key_id) == 1
    assert store.delete_import_token("t3") and not store.delete_import_token("t3")
    store.put_import_token(tokens[0])
    store.delete_import_tokens(key.key_id)
    assert store.count_import_tokens(key.key_id) == 0


def test_import_material_is_one_transaction(store: MetadataStore) -> None:
    key = _key(origin=Origin.EXTERNAL, state=KeyState.PENDING_IMPORT)
    store.insert_key(key, None)
    for t in ("t1", "t2", "t3"):
        store.put_import_token(ImportToken(t, key.key_id, "A", "RSA_2048", b"w", b"p", 9e9))
    assert store.material_fingerprint(key.key_id) is None
    v1 = _version(key, 1)
    enabled = replace(key, state=KeyState.ENABLED, primary_version=v1.version_id, revision=2)

    with pytest.raises(LookupError):  # a consumed token: nothing changes
        store.import_material(key, enabled, token_id="t9", salt=b"s", material_id=b"m",
                              version=v1)
    with pytest.raises(Conflict):  # a stale record: the token is not consumed either
        store.import_material(replace(key, revision=5), replace(enabled, revision=6),
                              token_id="t1", salt=b"s", material_id=b"m", version=v1)
    assert store.get_import_token("t1") is not None and store.list_versions(key.key_id) == []

    store.import_material(key, enabled, token_id="t1", salt=b"s", material_id=b"m", version=v1)
    assert store.get_key(key.key_id) == enabled and store.get_import_token("t1") is None
    assert store.material_fingerprint(key.key_id) == (b"s", b"m")
    assert store.list_versions(key.key_id) == [v1]

    shredded = replace(enabled, state=KeyState.PENDING_IMPORT, revision=3)
    store.shred_imported_material(enabled, shredded)
    assert store.list_versions(key.key_id)[0].blob is None
    assert store.material_fingerprint(key.key_id) == (b"s", b"m")  # kept: same material only

    back = replace(shredded, state=KeyState.ENABLED, revision=4)
    with pytest.raises(ValueError):  # other material than the first import
        store.import_material(shredded, back, token_id="t2", salt=b"s", material_id=b"other",
                              restore_blob=b"again")
    assert store.get_import_token("t2") is not None  # rolled back with the rest
    store.import_material(shredded, back, token_id="t2", salt=b"s", material_id=b"m",
                          restore_blob=b"again")
    assert [v.blob for v in store.list_versions(key.key_id)] == [b"again"]


# --- principals and access keys ------------------------------------------------------------


def test_principals_and_access_keys(opener: Opener) -> None:
    a, b = opener(), opener()
    a.put_principal("p-1", INSTANCE, "app", "[]")
    a.put_principal("p-1", INSTANCE, "app", '[{"Statement": []}]')  # policies replaced
    a.put_principal("p-2", "inst-b", "app", "[]")
    rec = b.get_principal("p-1")
    assert rec is not None and (rec.instance, rec.name, rec.policies) == (
        INSTANCE, "app", '[{"Statement": []}]')
    assert b.find_principal("inst-b", "app").principal_id == "p-2"  # type: ignore[union-attr]
    assert b.find_principal(INSTANCE, "nobody") is None and b.get_principal("p-9") is None

    a.put_access_key("AK1", "p-1", b"\x00wrapped")
    a.put_access_key("AK2", "p-2", b"other")
    secret = b.get_access_key("AK1")
    assert secret is not None and (secret.principal_id, secret.secret_blob) == (
        "p-1", b"\x00wrapped")
    info = b.find_access_key("AK1")
    assert info is not None and (info.principal_name, info.instance, info.enabled) == (
        "app", INSTANCE, True)
    assert [k.access_key_id for k in b.list_access_keys()] == ["AK1", "AK2"]
    assert [k.access_key_id for k in b.list_access_keys(instance="inst-b")] == ["AK2"]
    assert [k.access_key_id for k in b.list_access_keys(principal_name="app")] == ["AK1",
                                                                                   "AK2"]
    assert a.set_access_key_enabled("AK1", False) and not a.set_access_key_enabled("AK9", True)
    assert b.get_access_key("AK1") is None  # disabled: not for authentication
    assert b.find_access_key("AK1").enabled is False  # type: ignore[union-attr]
    assert a.delete_access_key("AK1") and not a.delete_access_key("AK1")
    assert b.find_access_key("AK1") is None and b.get_principal("p-1") is not None


# --- plumbing ------------------------------------------------------------------------------


def test_instance_account_is_made_once_for_every_store(opener: Opener) -> None:
    a, b = opener(), opener()
    made: list[str] = []

    def make() -> str:
        made.append(str(len(made)))
        return "acct-" + made[-1]

    assert a.instance_account(INSTANCE, make) == "acct-0"
    assert b.instance_account(INSTANCE, make) == "acct-0"
    assert b.instance_account("inst-b", make) == "acct-1" and len(made) == 2


def test_the_change_token_moves_when_another_store_commits(opener: Opener) -> None:
    a, b = opener(), opener()
    before = a.change_token()
    assert a.change_token() == before  # nothing happened
    key = _key()
    b.insert_key(key, None)
    after = a.change_token()
    assert after != before
    assert a.get_key(key.key_id) == key  # and the other store's write is visible


def test_a_store_that_answers_answers_a_ping(store: MetadataStore) -> None:
    store.ping(1.0)
    store.ping(1.0)


def test_nodes_heartbeat_rows_are_one_per_node(opener: Opener) -> None:
    a, b = opener(), opener()
    assert a.list_nodes() == []
    n1 = NodeRecord(node_id="host-a:8080", hostname="host-a", address="http://h:8080",
                    version="1.0", pid=10, started=100.0, heartbeat=100.0, beat_interval=5.0,
                    workers=2)
    n2 = replace(n1, node_id="host-b:8080", hostname="host-b", pid=11)
    a.put_node(n1)
    b.put_node(n2)
    assert a.list_nodes() == [n1, n2] == b.list_nodes()
    beat = replace(n1, heartbeat=105.0, workers=1)
    b.put_node(beat)  # the same node again: its row replaced
    assert a.list_nodes() == [beat, n2]
    gone = replace(beat, heartbeat=107.5, workers=0, stopped=107.5)
    a.put_node(gone)
    assert b.list_nodes()[0] == gone
    with pytest.raises(ValueError):
        replace(n1, beat_interval=0.0)


def test_leases_are_held_by_one_owner_until_they_expire(opener: Opener) -> None:
    a, b = opener(), opener()
    assert a.try_lock("scheduler", "node-a", 60.0)
    assert a.try_lock("scheduler", "node-a", 60.0)  # renewing
    assert not b.try_lock("scheduler", "node-b", 60.0)
    assert b.try_lock("other-job", "node-b", 60.0)  # leases are by name
    b.unlock("scheduler", "node-b")  # not its lease: nothing
    assert not b.try_lock("scheduler", "node-b", 60.0)
    a.unlock("scheduler", "node-a")
    assert b.try_lock("scheduler", "node-b", 0.2)
    assert not a.try_lock("scheduler", "node-a", 60.0)
    time.sleep(0.3)  # node-b stopped renewing: the lease passes on
    assert a.try_lock("scheduler", "node-a", 60.0)
    assert not b.try_lock("scheduler", "node-b", 60.0)


def test_only_one_of_many_contenders_gets_a_lease(opener: Opener) -> None:
    stores = [opener() for _ in range(4)]
    won: list[str] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        if stores[i % 4].try_lock("job", f"owner-{i}", 60.0):
            won.append(f"owner-{i}")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


# --- secrets (kms.store.SecretStore) ----------------------------------------------------


def _secret(name: str = "app/db", instance: str = "i1") -> SecretRecord:
    sid = uuid.uuid4().hex
    return SecretRecord(sid, instance, name, f"arn:aws:secretsmanager:r:1:secret:{name}-"
                        f"{sid[:6]}", 1.0, 1, tags=(("team", "blue"),))


def _sv(rec: SecretRecord, vid: str, *stages: str) -> SecretVersion:
    return SecretVersion(rec.secret_id, vid, time.time(), tuple(sorted(stages)),
                         b"envelope-" + vid.encode(), False)


def test_a_secret_and_its_versions_read_back_as_written(store: MetadataStore) -> None:
    rec = _secret()
    store.insert_secret(rec, [_sv(rec, "v1", "AWSCURRENT")])
    assert store.get_secret(rec.secret_id) == rec
    assert store.find_secret("i1", name="app/db") == rec
    assert store.find_secret("i1", arn=rec.arn) == rec
    assert store.find_secret("i2", name="app/db") is None  # another instance's name
    assert [v.version_id for v in store.secret_versions(rec.secret_id)] == ["v1"]
    got = store.get_secret_version(rec.secret_id, "v1")
    assert got is not None and got.stages == ("AWSCURRENT",) and got.envelope == b"envelope-v1"
    with pytest.raises(AlreadyExists):
        store.insert_secret(_secret())  # the same name in the same instance
    store.insert_secret(_secret(instance="i2"))  # the same name elsewhere


def test_secret_stages_move_in_one_compare_and_swap(opener: Opener) -> None:
    a, b = opener(), opener()
    rec = _secret()
    a.insert_secret(rec, [_sv(rec, "v1", "AWSCURRENT")])
    v1 = a.get_secret_version(rec.secret_id, "v1")
    assert v1 is not None
    new = rec.evolve(last_changed=2.0)
    a.update_secret(rec, new, [v1.with_stages(("AWSPREVIOUS",)), _sv(rec, "v2", "AWSCURRENT")])
    # A writer that read the old revision loses, and writes none of its versions.
    with pytest.raises(Conflict):
        b.update_secret(rec, rec.evolve(), [_sv(rec, "v3", "AWSCURRENT")])
    assert b.get_secret_version(rec.secret_id, "v3") is None
    stages = {v.version_id: v.stages for v in b.secret_versions(rec.secret_id)}
    assert stages == {"v1": ("AWSPREVIOUS",), "v2": ("AWSCURRENT",)}
    b.update_secret(new, new.evolve(), drop_versions=["v1"])
    assert [v.version_id for v in a.secret_versions(rec.secret_id)] == ["v2"]


def test_secrets_list_due_and_purge(store: MetadataStore) -> None:
    recs = [_secret(f"s{i}") for i in range(5)]
    for r in recs:
        store.insert_secret(r, [_sv(r, "v", "AWSCURRENT")])
    page = store.list_secrets("i1", "s1", 2)
    assert [r.name for r in page] == ["s2", "s3"]
    deleting = recs[0].evolve(deletion_date=10.0)
    store.update_secret(recs[0], deleting)
    rotating = recs[1].evolve(rotation_enabled=True, next_rotation=20.0, rotator="generic")
    store.update_secret(recs[1], rotating)
    assert [r.name for r in store.secrets_due(5.0)] == []
    assert sorted(r.name for r in store.secrets_due(30.0)) == ["s0", "s1"]
    with pytest.raises(Conflict):
        store.purge_secret(recs[0])  # a stale revision
    store.purge_secret(deleting)
    assert store.get_secret(recs[0].secret_id) is None
    assert store.secret_versions(recs[0].secret_id) == []
    store.insert_secret(_secret("s0"))  # the name is free again


# --- application access points and client keys --------------------------------------------


def test_access_points_and_client_keys_read_back_and_revoke(opener: Opener) -> None:
    from kms.store import AccessPointRecord, ClientKeyRecord

    a, b = opener(), opener()
    a.put_principal("p-aap", "default", "aap/app", "[]")
    point = AccessPointRecord("default", "app", "p-aap", '{"roles": ["SecretUser"]}', 10.0)
    a.put_access_point(point)
    assert b.get_access_point("default", "app") == point
    a.put_access_point(replace(point, spec='{"roles": []}', created=99.0))  # spec replaced
    again = b.get_access_point("default", "app")
    assert again is not None and again.spec == '{"roles": []}' and again.created == 10.0
    assert b.get_access_point("other", "app") is None
    key = ClientKeyRecord("KAAP.1", "default", "app", b"\x30\x82der", 1.0, 2.0, None, 3.0)
    a.put_client_key(key)
    a.put_client_key(replace(key, client_key_id="KAAP.2", created=4.0))
    with pytest.raises(AlreadyExists):
        a.put_client_key(key)  # the id is taken
    with pytest.raises(AlreadyExists):
        a.put_client_key(replace(key, client_key_id="KAAP.3", access_point="nope"))
    assert b.get_client_key("KAAP.1") == key
    assert [k.client_key_id for k in b.list_client_keys("default", "app")] == ["KAAP.1",
                                                                              "KAAP.2"]
    assert b.list_client_keys("other") == []
    assert a.revoke_client_key("KAAP.1", 50.0) is True
    assert a.revoke_client_key("KAAP.1", 60.0) is False  # already revoked: stays at 50
    assert a.revoke_client_key("KAAP.9", 60.0) is False
    got = b.get_client_key("KAAP.1")
    assert got is not None and got.revoked == 50.0
    assert [p.name for p in b.list_access_points()] == ["app"]


# --- the audit trail's anchors ------------------------------------------------------------


def test_sealed_secret_is_stored_once_and_checkpoints_only_move_forward(opener: Opener) -> None:
    a, b = opener(), opener()
    assert a.get_sealed("audit-head-key") is None
    first = a.seal_once("audit-head-key", "default", b"blob-1", 1.0)
    assert b.get_sealed("audit-head-key") == first
    assert first.blob == b"blob-1" and first.instance == "default"
    second = b.seal_once("audit-head-key", "other", b"blob-2", 2.0)  # lost the race
    assert second == first
    a.checkpoint_audit("worker-1", True, 0, b"g" * 32, 10.0)
    b.checkpoint_audit("worker-1", False, 5, b"h" * 32, 11.0)
    a.checkpoint_audit("worker-1", False, 3, b"x" * 32, 12.0)  # older: ignored
    [cp] = b.audit_checkpoints()
    assert (cp.segment, cp.keyed, cp.seq, cp.hash, cp.created) == ("worker-1", True, 5,
                                                                    b"h" * 32, 10.0)
    a.checkpoint_audit("cli-x", False, 0, b"g" * 32, 13.0, "host-a:/var/audit")
    a.checkpoint_audit("cli-x", False, 4, b"y" * 32, 14.0, "host-a:/srv/audit")  # another
    assert [(c.segment, c.location, c.seq) for c in b.audit_checkpoints()] == [
        ("cli-x", "host-a:/srv/audit", 4), ("cli-x", "host-a:/var/audit", 0),
        ("worker-1", "", 5)]
    b.forget_audit_segment("worker-1")  # has records: kept
    b.forget_audit_segment("cli-x", "host-a:/var/audit")  # never had one: dropped
    assert [(c.segment, c.location) for c in a.audit_checkpoints()] == [
        ("cli-x", "host-a:/srv/audit"), ("worker-1", "")]


def _chain(segment: str, n: int, start: int = 1, prev: bytes | None = None,
           tag: str = "r") -> list[ShippedRecord]:
    """Records ``start``..``start + n - 1`` of a real chain (the store does not check it)."""
    out = []
    prev_hash = genesis(segment) if prev is None else prev
    for seq in range(start, start + n):
        text = f'[2,{seq}.5,"i","p","kms:Encrypt",null,null,"ok","{tag}-{seq}",{{}}]'
        h = chain_hash(prev_hash, seq, text.encode())
        out.append(ShippedRecord(seq, text, prev_hash, h))
        prev_hash = h
    return out


def test_shipped_audit_records_are_kept_as_first_shipped(opener: Opener) -> None:
    a, b = opener(), opener()
    here, there = "host-a:/srv/audit", "host-b:/srv/audit"
    rows = _chain("w-1", 5)
    assert a.shipped_audit_head(here, "w-1") is None
    assert a.shipped_audit_segments() == []
    head3 = AuditHead(3, rows[2].hash, b"m" * 32)
    assert a.ship_audit(here, "w-1", rows[:3], head3, 10.0) == ShipResult(3, (), True)
    assert b.shipped_audit_head(here, "w-1") == head3
    assert b.shipped_audit_records(here, "w-1", 0, 2) == rows[:2]
    assert b.shipped_audit_records(here, "w-1", 2, 10) == rows[2:3]
    # Shipped again (a retry after a lost answer): nothing changes.
    assert b.ship_audit(here, "w-1", rows[:3], head3, 11.0) == ShipResult(0, (), True)
    head5 = AuditHead(5, rows[4].hash, None)
    assert b.ship_audit(here, "w-1", rows[2:5], head5, 12.0) == ShipResult(2, (), True)
    assert a.shipped_audit_records(here, "w-1", 0, 100) == rows

    # A rewrite offered for shipped seqs (another chain from seq 4): refused whole, the
    # stored rows and head stay, the conflict is told.
    forged = _chain("w-1", 3, start=4, prev=rows[2].hash, tag="forged")
    result = a.ship_audit(here, "w-1", forged, AuditHead(6, forged[2].hash), 13.0)
    assert result == ShipResult(0, (4, 5), False)
    assert b.shipped_audit_records(here, "w-1", 3, 100) == rows[3:]
    assert b.shipped_audit_head(here, "w-1") == head5
    # The head moves only forward, and only to a shipped record with its hash.
    assert not a.ship_audit(here, "w-1", [], head3, 14.0).head_shipped
    assert not a.ship_audit(here, "w-1", [], AuditHead(9, rows[4].hash), 14.0).head_shipped
    assert not a.ship_audit(here, "w-1", [], AuditHead(5, b"x" * 32), 14.0).head_shipped
    assert b.shipped_audit_head(here, "w-1") == head5

    # The same segment name at another location is another copy.
    other = _chain("w-1", 2, tag="b")
    b.ship_audit(there, "w-1", other, AuditHead(2, other[1].hash), 15.0)
    assert a.shipped_audit_records(there, "w-1", 0, 10) == other
    assert a.shipped_audit_segments() == [
        ShippedSegment(here, "w-1", head5, 12.0), ShippedSegment(there, "w-1",
                                                                 AuditHead(2, other[1].hash),
                                                                 15.0)]


@pytest.mark.parametrize("bad", [
    "descending", "text-not-ascii", "short-hash", "head-zero", "not-a-record"])
def test_a_malformed_shipment_is_a_value_error_and_stores_nothing(
        store: MetadataStore, bad: str) -> None:
    rows = _chain("w-2", 3)
    head = AuditHead(3, rows[2].hash)
    if bad == "descending":
        rows = [rows[1], rows[0], rows[2]]
    elif bad == "text-not-ascii":
        rows[1] = replace(rows[1], record="[2,\u00e9]")
    elif bad == "short-hash":
        rows[1] = replace(rows[1], hash=b"short")
    elif bad == "head-zero":
        head = AuditHead(0, genesis("w-2"))
    else:
        rows[1] = ("2", "text", b"", b"")  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        store.ship_audit("h:/a", "w-2", rows, head, 1.0)
    assert store.shipped_audit_records("h:/a", "w-2", 0, 10) == []
    assert store.shipped_audit_head("h:/a", "w-2") is None
    for after, limit in ((0, 0), (-1, 10), (0, 10_001)):
        with pytest.raises(ValueError):
            store.shipped_audit_records("h:/a", "w-2", after, limit)
