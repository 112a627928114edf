"""The files a fresh ``Kms.open`` makes are private to their owner: the SQLite metadata
store and its -wal/-shm, the audit segment, its -wal/-shm and its lock file (0600), and the
folders it creates for them (0700), whatever the (usual) umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms import Kms
from tests.conftest import pool_toml
from tests.database import POSTGRES, database_line

INSTANCE = "modes"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the common default, which makes 0644 files
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_kms_makes_private_files(token_dir: Path, tmp_path: Path,
                                         umask_022: None) -> None:
    state = tmp_path / "state" / "deeper"
    cfg = tmp_path / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {INSTANCE: [7]})
                   + "[kms]\n" + database_line(state / "kms.db")
                   + f'audit_dir = "{state / "audit"}"\n')
    with Kms.open(cfg, audit_segment="modes-0") as kms:
        client = kms.client(INSTANCE)
        key = client.create_key()
        client.encrypt(key.key_id, b"written")
        assert kms.audit is not None
        kms.audit.flush()
        files = [state / "audit" / "audit-modes-0.db", state / "audit" / "audit-modes-0.db-wal",
                 state / "audit" / "audit-modes-0.db-shm",
                 state / "audit" / "audit-modes-0.lock"]
        if not POSTGRES:  # the SQLite store's files
            files += [state / "kms.db", state / "kms.db-wal", state / "kms.db-shm"]
        modes = {p.name: oct(_mode(p)) for p in files}
        assert modes == {p.name: oct(0o600) for p in files}
        dirs = [tmp_path / "state", state, state / "audit"]
        assert {str(d): oct(_mode(d)) for d in dirs} == {str(d): oct(0o700) for d in dirs}


def test_existing_files_and_folders_keep_their_modes(tmp_path: Path, umask_022: None) -> None:
    from kms.private_files import private_dir, private_file

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    db = shared / "kms.db"
    db.write_bytes(b"")
    os.chmod(db, 0o640)
    private_dir(shared)
    private_file(db)
    assert _mode(shared) == 0o750 and _mode(db) == 0o640
