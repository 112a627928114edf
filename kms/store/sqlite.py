"""The embedded metadata store: one SQLite file (WAL, synchronous=FULL), versioned migrations.

Implements :class:`kms.store.MetadataStore`. A write returns only after its transaction is
durable. Several processes may open the same file (the server's workers): SQLite serialises
writers; readers see committed data; the change token is ``PRAGMA data_version`` (it
changes when another connection commits).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from kms.private_files import private_dir, private_file
from kms.store.sql import SqlStore
from kms.store.sql_access_points import MIGRATION as ACCESS_POINTS_MIGRATION
from kms.store.sql_audit import MIGRATION as AUDIT_MIGRATION
from kms.store.sql_audit import SHIP_MIGRATION as AUDIT_SHIP_MIGRATION
from kms.store.sql_secrets import MIGRATION as SECRETS_MIGRATION

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: keys, versions, aliases, instances, import tokens
    """
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        arn TEXT NOT NULL,
        spec TEXT NOT NULL,
        usage TEXT NOT NULL,
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        deletion_date REAL,
        rotation_enabled INTEGER NOT NULL DEFAULT 0,
        rotation_period_days INTEGER NOT NULL DEFAULT 365,
        next_rotation REAL,
        primary_version TEXT,
        min_decrypt_version INTEGER NOT NULL DEFAULT 1,
        tags TEXT NOT NULL DEFAULT '[]',
        policy TEXT,
        import_valid_to REAL,
        revision INTEGER NOT NULL
    );
    CREATE INDEX keys_by_instance ON keys (instance, key_id);
    CREATE INDEX keys_due ON keys (state, next_rotation);
    CREATE TABLE key_versions (
        version_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        number INTEGER NOT NULL,
        created REAL NOT NULL,
        blob BLOB,
        public_key BLOB NOT NULL DEFAULT x'',
        imported INTEGER NOT NULL DEFAULT 0,
        UNIQUE (key_id, number)
    );
    CREATE TABLE aliases (
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        created REAL NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (instance, name)
    );
    CREATE INDEX aliases_by_key ON aliases (key_id);
    CREATE TABLE import_tokens (
        token_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        wrapping_algorithm TEXT NOT NULL,
        wrapping_key_spec TEXT NOT NULL,
        wrapping_blob BLOB NOT NULL,
        public_key BLOB NOT NULL,
        expires REAL NOT NULL
    );
    """,
    # 2: principals and their access keys (for the servers' authentication)
    """
    CREATE TABLE principals (
        principal_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        policies TEXT NOT NULL DEFAULT '[]',
        created REAL NOT NULL,
        UNIQUE (instance, name)
    );
    CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        principal_id TEXT NOT NULL REFERENCES principals (principal_id),
        secret_blob BLOB NOT NULL,
        created REAL NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1
    );
    """,
    # 3: imported key material's keyed fingerprint (HMAC-SHA256 under a per-key random
    # salt), so a re-import can be checked to be the same material (kms/keys/importing.py)
    """
    ALTER TABLE keys ADD COLUMN material_salt BLOB;
    ALTER TABLE keys ADD COLUMN material_id BLOB
    """,
    # 4: a purged key is marked by its own column (it used to be a policy text, which a
    # caller could forge with CreateKey). Keys carrying the old mark that were purged (pending
    # deletion, every blob shredded) keep that status; any other key carrying it had it
    # forged: it becomes visible again, with the default key policy.
    """
    ALTER TABLE keys ADD COLUMN purged_at REAL;
    UPDATE keys SET purged_at = COALESCE(deletion_date, created)
        WHERE policy = char(0) || 'deleted' AND state = 'PendingDeletion'
        AND NOT EXISTS (SELECT 1 FROM key_versions v
                        WHERE v.key_id = keys.key_id AND v.blob IS NOT NULL);
    UPDATE keys SET policy = NULL WHERE policy = char(0) || 'deleted'
    """,
    # 5: grants (kms/keys/grants.py); principals by id, shown by ARN; operations and constraints
    # as JSON
    """
    CREATE TABLE grants (
        grant_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        instance TEXT NOT NULL,
        name TEXT,
        grantee_id TEXT NOT NULL,
        grantee_arn TEXT NOT NULL,
        retiring_id TEXT,
        retiring_arn TEXT,
        operations TEXT NOT NULL,
        subset TEXT,
        equals TEXT,
        token TEXT NOT NULL,
        issuing_account TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX grants_by_key ON grants (key_id, grant_id);
    CREATE INDEX grants_by_retiring ON grants (instance, retiring_id, grant_id)
    """,
    # 6: named leases (the scheduler's: one process at a time runs due jobs)
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires REAL NOT NULL
    )
    """,
    # 7: the secrets manager (kms/secrets): secrets and their versions
    SECRETS_MIGRATION,
    # 8: application access points and their client keys (kms/access_points.py)
    ACCESS_POINTS_MIGRATION,
    # 9: the audit trail's anchors: the sealed head key, the segments and their checkpoints
    AUDIT_MIGRATION,
    # 10: the serving nodes' heartbeats (kms/cluster.py, hsmpool cluster status); one row
    # per node
    """
    CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        address TEXT NOT NULL,
        version TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started REAL NOT NULL,
        heartbeat REAL NOT NULL,
        beat_interval REAL NOT NULL,
        workers INTEGER NOT NULL,
        stopped REAL
    )
    """,
    # 11: where each audit segment lives (host and folder; a node verifies its own), part
    # of its key: two folders on one host may hold segments of the same name
    """
    CREATE TABLE audit_segments_11 (
        location TEXT NOT NULL,
        segment TEXT NOT NULL,
        keyed INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (location, segment)
    );
    INSERT INTO audit_segments_11 SELECT '', segment, keyed, seq, hash, created, updated
        FROM audit_segments;
    DROP TABLE audit_segments;
    ALTER TABLE audit_segments_11 RENAME TO audit_segments
    """,
    # 12: shipped copies of audit segments (kms/audit_ship.py): each node's records as in its
    # segment files, and the head each copy reaches
    AUDIT_SHIP_MIGRATION,
]


class SqliteStore(SqlStore):
    """Thread-safe access to one SQLite metadata file (:class:`kms.store.MetadataStore`)."""

    IntegrityError = sqlite3.IntegrityError

    def __init__(self, path: str | os.PathLike[str], *, sync: bool = True) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            private_dir(Path(self.path).parent)
            private_file(self.path)  # 0600 before SQLite makes it, and its -wal and -shm
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    # --- plumbing ----------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for i in range(version, len(MIGRATIONS)):
                # executescript() would commit; run the statements inside our transaction.
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            if version < len(MIGRATIONS):
                self._db.execute(f"PRAGMA user_version={len(MIGRATIONS)}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._db)

    def change_token(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version)."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def ping(self, timeout: float) -> None:
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError(f"the store is busy (no turn within {timeout:g} s)")
        try:
            self._db.execute("SELECT 1").fetchone()
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._db.close()

