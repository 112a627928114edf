"""The audit trail anchored outside its files by default (kms/audit_anchor.py): the head key
sealed in a token, the segment registry and its checkpoints in the store. Through the real
CLI and a real service over SoftHSM2 and the store (tests/database.py); the tampering is done
to the files as an attacker with write access to the audit directory (but not the HSM)
would."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from kms.audit import cli_segment
from kms.service import Kms
from tests.kms.test_cli_audit import INSTANCE, config, run  # noqa: F401 - fixture

__all__ = ["config"]


def _segment(config: Path, name: str) -> Path:
    return config.parent / "audit" / f"audit-{name}.db"


def _drop_last_and_move_head(path: Path) -> None:
    """Delete the last record and set the head to the one before (its old MAC stays: the
    attacker has no head key)."""
    db = sqlite3.connect(path)
    with db:
        (last,) = db.execute("SELECT max(seq) FROM records").fetchone()
        (prev,) = db.execute("SELECT hash FROM records WHERE seq = ?", (last - 1,)).fetchone()
        db.execute("DELETE FROM records WHERE seq = ?", (last,))
        db.execute("UPDATE head SET seq = ?, hash = ? WHERE id = 1", (last - 1, prev))
    db.close()


def test_default_set_up_catches_a_dropped_tail_with_the_head_moved(config: Path) -> None:
    for _ in range(3):
        run(config, "key", "create", "--instance", INSTANCE)
    out = run(config, "audit", "verify").stdout
    assert "head key unsealed" in out and ", OK in" in out
    _drop_last_and_move_head(_segment(config, cli_segment()))
    out = run(config, "audit", "verify", rc=1).stdout
    assert "head MAC invalid" in out  # the head was moved without the key
    assert "anchored record missing" in out  # and the store's checkpoint is gone from it


def test_default_set_up_catches_a_deleted_segment_and_a_rollback(config: Path) -> None:
    kms = Kms.open(config, audit_segment="worker-a")
    client = kms.client(INSTANCE)
    client.create_key()
    kms.checkpoint_audit()
    early = _segment(config, "worker-a").with_suffix(".copy")
    kms.audit.flush()
    shutil.copy(_segment(config, "worker-a"), early)  # an old copy, genuine head MAC
    for _ in range(3):
        client.create_key()
    kms.close()  # the last checkpoint names the later head
    run(config, "key", "list", "--instance", INSTANCE)
    assert ", OK in" in run(config, "audit", "verify").stdout

    shutil.copy(early, _segment(config, "worker-a"))  # rolled back to the old copy
    out = run(config, "audit", "verify", rc=1).stdout
    assert "segment worker-a" in out and "anchored record missing" in out
    assert "head MAC invalid" not in out  # the copy's head is genuine: only the store tells

    _segment(config, "worker-a").unlink()  # deleted whole
    out = run(config, "audit", "verify", rc=1).stdout
    assert "PROBLEM: segment worker-a: missing" in out


def test_metadata_only_commands_are_registered_without_the_key(config: Path) -> None:
    run(config, "key", "create", "--instance", INSTANCE)
    run(config, "credentials", "create", "--instance", INSTANCE, "--name", "app")
    listed = run(config, "credentials", "list", "--json").stdout
    key_id = listed.split('"AccessKeyId": "')[1].split('"')[0]
    run(config, "credentials", "disable", key_id)  # no HSM: its CLI segment has no MAC
    out = run(config, "audit", "verify").stdout
    assert ", OK in" in out, out


def test_each_node_verifies_its_own_segments(config: Path) -> None:
    """Two nodes on one store, each with its own audit folder: the registry holds both
    nodes' segments, and each node's verify checks the ones that live with it (a segment of
    the other node is not reported missing here)."""
    other = config.parent / "node-b.toml"
    other.write_text(config.read_text().replace('audit_dir = "audit"',
                                                'audit_dir = "audit-b"'))
    run(config, "key", "create", "--instance", INSTANCE)
    run(other, "key", "create", "--instance", INSTANCE)
    for cfg in (config, other):
        out = run(cfg, "audit", "verify").stdout
        assert "store: 1 registered segments here" in out and ", OK in" in out, out
