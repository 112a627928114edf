"""Audit in a cluster (kms/audit_ship.py): each service process ships its own segment into
the store at its checkpoints (``[kms] audit_ship``), and ``audit verify --all-nodes`` checks
every node's segments from one place: this folder's from its files, the others' from their
shipped copies. Real parts: SoftHSM2 (the head key is sealed in a token), the segments'
native writer, SQLite and the session's throw-away PostgreSQL cluster, two "nodes" being two
audit folders on one PostgreSQL database (a segment's location is host and folder). The
tampering is done as an attacker would: to the store's rows, or to a node's files."""

from __future__ import annotations

import logging
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hsmpool.errors import ConfigError
from kms.audit import AuditLog, chain_hash, verify
from kms.audit_anchor import location
from kms.audit_ship import Shipper, verify_all_nodes, verify_nodes
from kms.config import parse_kms_settings
from kms.service import Kms
from kms.store import AuditCheckpoint, AuditHead, ShippedRecord, SqliteStore
from kms.store.postgres import PostgresStore
from tests.conftest import pool_toml
from tests.kms.test_cli_audit import INSTANCE, T0, config, run, write_config  # noqa: F401
from tests.postgres import PostgresCluster, TcpRelay

__all__ = ["config"]  # a fixture

HOST = socket.gethostname()
MARK = "marker-7f3a"  # in every test record's request id: it must never reach a log line


def _file(path: Path) -> tuple[list[ShippedRecord], AuditHead]:
    """A segment file's records and head row, as they are."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [ShippedRecord(*r) for r in db.execute(
            "SELECT seq, record, prev_hash, hash FROM records ORDER BY seq")]
        seq, hash_, mac = db.execute("SELECT seq, hash, mac FROM head").fetchone()
    finally:
        db.close()
    return rows, AuditHead(seq, hash_, mac)


def _use(kms: Kms, n: int) -> None:
    """``n`` audited calls (a key made, then Encrypts), committed."""
    client = kms.client(INSTANCE)
    key = client.create_key()
    for _ in range(n - 1):
        client.encrypt(key.key_id, b"x")
    assert kms.audit is not None
    kms.audit.flush()


# --- shipping ----------------------------------------------------------------------------


def test_each_checkpoint_ships_what_was_committed_since_the_last(token_dir: Path,
                                                                 tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg", token_dir, "audit_ship = true\n")
    path = cfg.parent / "audit" / "audit-w-a.db"
    here = location(str(cfg.parent / "audit"))
    kms = Kms.open(cfg, audit_segment="w-a")
    try:
        shipper = kms.audit_shipper
        assert shipper is not None
        _use(kms, 4)
        kms.checkpoint_audit()
        rows, head = _file(path)
        assert len(rows) == 4 and head.mac is not None
        # Exactly the file's rows, and its head row with the head MAC.
        assert kms.store.shipped_audit_records(here, "w-a", 0, 100) == rows
        assert kms.store.shipped_audit_head(here, "w-a") == head
        assert shipper.shipped == 4
        _use(kms, 3)
        kms.checkpoint_audit()
        assert shipper.shipped == 7  # the next checkpoint shipped only the 3 new ones
        rows, head = _file(path)
        assert kms.store.shipped_audit_records(here, "w-a", 0, 100) == rows
        assert kms.store.shipped_audit_head(here, "w-a") == head
        kms.checkpoint_audit()  # nothing new: nothing shipped
        assert shipper.shipped == 7
    finally:
        kms.close()


def test_shipping_is_off_by_default(config: Path) -> None:
    kms = Kms.open(config, audit_segment="w-off")
    try:
        assert kms.audit_shipper is None
        _use(kms, 2)
        kms.checkpoint_audit()
        assert kms.store.shipped_audit_segments() == []
        assert [c.seq for c in kms.store.audit_checkpoints()] == [2]  # checkpoints as ever
    finally:
        kms.close()


def test_audit_ship_is_a_boolean_of_kms(tmp_path: Path) -> None:
    assert not parse_kms_settings({}, tmp_path).audit_ship
    assert parse_kms_settings({"kms": {"audit_ship": True}}, tmp_path).audit_ship
    for bad in ("yes", 1, 0):
        with pytest.raises(ConfigError, match="kms.audit_ship must be true or false"):
            parse_kms_settings({"kms": {"audit_ship": bad}}, tmp_path)


def _records(log: AuditLog, n: int) -> None:
    for _ in range(n):
        log.record(T0, "i", "p", "kms:Encrypt", None, None, "ok",
                   f"{MARK}-{uuid.uuid4().hex[:8]}", {})
    log.flush()


def test_a_backlog_is_shipped_in_sealed_batches_over_several_checkpoints(
        tmp_path: Path) -> None:
    """With a budget spent after one batch, each run ships one; the copy is at every step a
    prefix with a genuine head MAC (verified as another node's copy), and the last batch
    carries the file's own head row."""
    key = b"k" * 32
    log = AuditLog(tmp_path / "audit", "w-b", head_key=key)
    store = SqliteStore(tmp_path / "kms.db")
    try:
        _records(log, 10)
        shipper = Shipper(log, store, batch=4)
        here = shipper.location
        elsewhere = tmp_path / "elsewhere"  # verifies from another location: the copy only
        elsewhere.mkdir()
        for seq, shipped in ((4, 4), (8, 4), (10, 2)):
            assert shipper.run(budget=0) == shipped
            head = store.shipped_audit_head(here, "w-b")
            assert head is not None and head.seq == seq
            checkpoint = AuditCheckpoint("w-b", True, seq, head.hash, 1.0, 1.0, here)
            report = verify_nodes(store, str(elsewhere), [checkpoint], head_key=key)
            assert report.ok and report.from_shipped == 1 and report.records == seq, \
                report.problems
            [verified] = report.heads
            assert verified.seq == seq and verified.source == f"shipped from {here}"
        assert store.shipped_audit_head(here, "w-b") == _file(Path(log.path))[1]
        assert shipper.run() == 0
    finally:
        log.close()
        store.close()


@pytest.mark.own_database
def test_a_store_outage_is_logged_once_without_content_and_shipping_resumes(
        tmp_path: Path, postgres: PostgresCluster, caplog: pytest.LogCaptureFixture) -> None:
    name = f"ship_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {name}")
    relay = TcpRelay(postgres.host, postgres.port)
    url = f"postgresql://{postgres.user}:{postgres.password}@127.0.0.1:{relay.port}/{name}"
    log = AuditLog(tmp_path / "audit", "w-c", head_key=b"k" * 32)
    store = PostgresStore(url)
    caplog.set_level(logging.WARNING, logger="hsmpool")
    try:
        shipper = Shipper(log, store)
        _records(log, 3)
        assert shipper.run() == 3
        _records(log, 2)
        relay.cut()
        assert shipper.run() == 0 and shipper.run() == 0  # never raises
        failed = [r.getMessage() for r in caplog.records if r.name == "hsmpool.audit"]
        assert len(failed) == 1 and "shipping into the store failed" in failed[0], failed
        assert "StoreUnavailable" in failed[0] and shipper.failures == 2
        relay.restore()
        for _ in range(100):  # the pool reconnects with its backoff
            if shipper.run() == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("shipping did not resume")
        assert store.shipped_audit_head(shipper.location, "w-c") == _file(Path(log.path))[1]
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("hsmpool")]
        assert any("shipping into the store resumed" in m for m in lines)
        assert not any(MARK in m for m in lines), lines
    finally:
        log.close()
        store.close()
        relay.close()


def test_a_file_that_no_longer_continues_its_shipped_copy_is_not_shipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A segment rolled back to an older copy after shipping, then written on: its new
    records would not link to the shipped ones; the shipper stops, says so once, and the
    store keeps what was shipped."""
    audit = tmp_path / "audit"
    store = SqliteStore(tmp_path / "kms.db")
    log = AuditLog(audit, "w-d")
    try:
        _records(log, 3)
        early = tmp_path / "early.db"
        live, copy = sqlite3.connect(log.path), sqlite3.connect(early)
        live.backup(copy)  # (with what the WAL holds)
        live.close()
        copy.close()
        _records(log, 2)
        assert Shipper(log, store).run() == 5
    finally:
        log.close()
    for stale in ("audit-w-d.db-wal", "audit-w-d.db-shm"):
        (audit / stale).unlink(missing_ok=True)
    shutil.copy(early, audit / "audit-w-d.db")  # rolled back; then written on
    log = AuditLog(audit, "w-d")
    try:
        _records(log, 4)
        caplog.set_level(logging.WARNING, logger="hsmpool.audit")
        shipper = Shipper(log, store)
        assert shipper.run() == 0 and shipper.run() == 0
        assert shipper.stopped is not None and "does not continue the shipped copy" in \
            shipper.stopped
        assert len([r for r in caplog.records if r.name == "hsmpool.audit"]) == 1
        head = store.shipped_audit_head(shipper.location, "w-d")
        assert head is not None and head.seq == 5
    finally:
        log.close()
        store.close()


# --- verify --all-nodes: two nodes (two audit folders) on one PostgreSQL database ---------


@dataclass
class Deployment:
    configs: dict[str, Path]  # node name -> its configuration
    url: str
    postgres: PostgresCluster
    dbname: str

    def audit(self, node: str) -> Path:
        return self.configs[node].parent / "audit"

    def location(self, node: str) -> str:
        return location(str(self.audit(node)))

    def sql(self, statement: str, *args: Any) -> Any:
        with self.postgres.connect(dbname=self.dbname) as conn:
            return conn.execute(statement, args or None).fetchall() if \
                statement.lstrip().upper().startswith("SELECT") else \
                conn.execute(statement, args or None)

    def verify(self, node: str = "a") -> Any:
        return verify_all_nodes(str(self.configs[node]), str(self.audit(node)))


def _node_config(directory: Path, token_dir: Path, url: str, ship: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "hsmpool.toml"
    cfg.write_text(pool_toml(token_dir, {INSTANCE: [7]})
                   + f'[kms]\ndatabase = "{url}"\naudit_dir = "audit"\n'
                   f"audit_ship = {'true' if ship else 'false'}\n")
    return cfg


@pytest.fixture(scope="module")
def nodes(token_dir: Path, tmp_path_factory: pytest.TempPathFactory,
          postgres: PostgresCluster) -> Iterator[Deployment]:
    """Nodes "a" and "b" (each an audit folder of its own, shipping on) with a few records
    each, then closed (their last checkpoints shipped)."""
    name = f"nodes_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/{name}"
    root = tmp_path_factory.mktemp("ship-nodes")
    configs = {n: _node_config(root / n, token_dir, url, True) for n in ("a", "b")}
    for node, n in (("a", 3), ("b", 5)):
        kms = Kms.open(configs[node], audit_segment=f"node-{node}")
        try:
            _use(kms, n)
        finally:
            kms.close()
    yield Deployment(configs, url, postgres, name)


@pytest.mark.own_database
def test_verify_all_nodes_checks_this_folder_from_files_and_the_other_from_its_copy(
        nodes: Deployment) -> None:
    report = nodes.verify("a")
    assert report.ok, report.problems
    assert (report.from_files, report.from_shipped) == (1, 1)
    assert report.locations == [nodes.location("b")]
    assert {(h.segment, h.records, h.source) for h in report.heads} == {
        ("node-a", 3, "file"), ("node-b", 5, f"shipped from {nodes.location('b')}")}
    # From node b the other way round; through the command line as an operator runs it.
    out = run(nodes.configs["b"], "audit", "verify", "--all-nodes").stdout
    assert "segment node-a: 3 records, head seq 3, anchor node-a:3:" in out
    assert f"(verified from its copy shipped from {nodes.location('a')})" in out
    assert "segment node-b: 5 records" in out and "(verified from its file)" in out
    assert "2 segments (1 from the files of" in out and ", OK in" in out, out
    # Without --all-nodes: as before, this folder only.
    out = run(nodes.configs["b"], "audit", "verify").stdout
    assert "store: 1 registered segments here" in out and ", OK in" in out, out


@pytest.mark.own_database
def test_a_shipped_record_changed_in_the_store_is_caught(nodes: Deployment) -> None:
    loc = nodes.location("b")
    [(text,)] = nodes.sql("SELECT record FROM audit_shipped WHERE location = %s AND "
                          "segment = 'node-b' AND seq = 2", loc)
    changed = text.replace('"ok"', '"AccessDeniedException"')
    assert changed != text
    nodes.sql("UPDATE audit_shipped SET record = %s WHERE location = %s AND "
              "segment = 'node-b' AND seq = 2", changed, loc)
    try:
        report = nodes.verify("a")
        assert report.problems == [
            f"segment node-b of {loc}: seq 2: record edited (hash mismatch)"]
    finally:
        nodes.sql("UPDATE audit_shipped SET record = %s WHERE location = %s AND "
                  "segment = 'node-b' AND seq = 2", text, loc)
    assert nodes.verify("a").ok


@pytest.mark.own_database
def test_a_shipped_record_deleted_from_the_middle_is_caught(nodes: Deployment) -> None:
    loc = nodes.location("b")
    [row] = nodes.sql("SELECT location, segment, seq, record, prev_hash, hash FROM "
                      "audit_shipped WHERE location = %s AND segment = 'node-b' AND "
                      "seq = 3", loc)
    nodes.sql("DELETE FROM audit_shipped WHERE location = %s AND segment = 'node-b' AND "
              "seq = 3", loc)
    try:
        report = nodes.verify("a")
        assert report.problems == [f"segment node-b of {loc}: seq 3: missing (records "
                                   "removed)"], report.problems
    finally:
        nodes.sql("INSERT INTO audit_shipped VALUES (%s, %s, %s, %s, %s, %s)", *row)
    assert nodes.verify("a").ok


def _rewrite_from(path: Path, seq: int) -> None:
    """Change record ``seq``'s result and recompute the chain after it and the head's hash
    (the head MAC stays: the attacker has no head key)."""
    db = sqlite3.connect(path)
    with db:
        rows = db.execute("SELECT seq, record, prev_hash FROM records WHERE seq >= ? "
                          "ORDER BY seq", (seq,)).fetchall()
        prev = rows[0][2]
        for s, text, _ in rows:
            if s == seq:
                text = text.replace('"ok"', '"AccessDeniedException"')
            h = chain_hash(prev, s, text.encode())
            db.execute("UPDATE records SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (text, prev, h, s))
            prev = h
        db.execute("UPDATE head SET hash = ?", (prev,))
    db.close()


@pytest.mark.own_database
def test_a_local_file_rewritten_after_shipping_is_caught(nodes: Deployment) -> None:
    path = nodes.audit("a") / "audit-node-a.db"
    saved = path.with_suffix(".saved")
    shutil.copy(path, saved)
    try:
        _rewrite_from(path, 2)
        assert verify(path.parent).ok  # the chain alone is consistent
        report = nodes.verify("a")
        assert "segment node-a: seq 2..3: differs from the copy shipped to the store " \
            "(rewritten after shipping)" in report.problems, report.problems
        assert any("hash differs from the anchor" in p for p in report.problems)
        assert all(p.startswith("segment node-a:") for p in report.problems)
    finally:
        shutil.copy(saved, path)
    assert nodes.verify("a").ok


@pytest.mark.own_database
def test_a_node_that_did_not_ship_is_a_problem_naming_its_host(nodes: Deployment,
                                                               token_dir: Path) -> None:
    """A third node that never shipped; and node b reopened with shipping off, so its
    registry checkpoint moves past its shipped copy. (A fourth that ships but never had a
    record has nothing to ship: no problem.)"""
    root = nodes.configs["a"].parent.parent
    idle = Kms.open(_node_config(root / "d", token_dir, nodes.url, True), audit_segment="node-d")
    idle.close()
    quiet_c = _node_config(root / "c", token_dir, nodes.url, False)
    quiet_b = _node_config(root / "b-quiet", token_dir, nodes.url, False)
    quiet_b.parent.joinpath("audit").symlink_to(nodes.audit("b"))  # b's folder, unshipped
    for cfg, segment in ((quiet_c, "node-c"), (quiet_b, "node-b")):
        kms = Kms.open(cfg, audit_segment=segment)
        try:
            _use(kms, 2)
        finally:
            kms.close()
    loc_b, loc_c = nodes.location("b"), location(str(quiet_c.parent / "audit"))
    assert location(str(quiet_b.parent / "audit")) == loc_b  # (the real path: the same)
    report = nodes.verify("a")
    assert report.problems == [
        f"segment node-b of {loc_b}: the shipped copy stops at seq 5, before its "
        f"checkpoint (seq 7): not shipped: verify it on {HOST}",
        f"segment node-c of {loc_c}: not shipped: verify it on {HOST}"], report.problems
    assert (report.from_files, report.from_shipped, report.empty) == (1, 1, 1)
    out = run(nodes.configs["a"], "audit", "verify", "--all-nodes", rc=1).stdout
    assert f"PROBLEM: segment node-c of {loc_c}: not shipped: verify it on {HOST}" in out
