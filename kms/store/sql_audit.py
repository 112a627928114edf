"""What the audit trail keeps in the metadata store (:class:`kms.store.AuditAnchorStore`,
used by :mod:`kms.audit_anchor`): sealed service secrets (the audit head key, wrapped by an
instance's domain key) and the registry of audit segments with their last checkpoint.

A mixin of :class:`kms.store.sql.SqlStore`; the tables are made by SQLite's migration 9
(:data:`MIGRATION`, and 11 for the location) and PostgreSQL's schema versions 3 and 5.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from kms.store.interface import AuditCheckpoint, SealedSecret

MIGRATION = """
    CREATE TABLE sealed_secrets (
        name TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        blob BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE audit_segments (
        segment TEXT PRIMARY KEY,
        keyed INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    )
"""


class SqlAudit:
    """Sealed secrets and audit checkpoints (see :class:`kms.store.AuditAnchorStore`)."""

    IntegrityError: ClassVar[type[Exception]]
    transaction: Callable[[], AbstractContextManager[Any]]
    _quiet_transaction: Callable[[], AbstractContextManager[Any]]
    _read: Callable[[Callable[[Any], Any]], Any]

    def seal_once(self, name: str, instance: str, blob: bytes, when: float) -> SealedSecret:
        with self.transaction() as db:
            db.execute("INSERT INTO sealed_secrets VALUES (?, ?, ?, ?) ON CONFLICT (name) "
                       "DO NOTHING", (name, instance, blob, when))
            row = db.execute("SELECT * FROM sealed_secrets WHERE name = ?",
                             (name,)).fetchone()
        return SealedSecret(row["name"], row["instance"], bytes(row["blob"]),
                            float(row["created"]))

    def get_sealed(self, name: str) -> SealedSecret | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM sealed_secrets WHERE name = ?", (name,)).fetchone())
        return None if row is None else SealedSecret(row["name"], row["instance"],
                                                     bytes(row["blob"]), float(row["created"]))

    def checkpoint_audit(self, segment: str, keyed: bool, seq: int, hash_: bytes,
                         when: float, location: str = "") -> None:
        # No metadata change (no cache holds it): on PostgreSQL it moves no change counter,
        # else every worker of every node would drop its caches at each one's checkpoint.
        with self._quiet_transaction() as db:
            db.execute("INSERT INTO audit_segments (segment, keyed, seq, hash, created, "
                       "updated, location) VALUES (?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT (location, segment) DO UPDATE SET seq = excluded.seq, "
                       "hash = excluded.hash, updated = excluded.updated, "
                       "keyed = CASE WHEN excluded.keyed > audit_segments.keyed "
                       "THEN excluded.keyed ELSE audit_segments.keyed END "
                       "WHERE excluded.seq >= audit_segments.seq",
                       (segment, int(keyed), seq, hash_, when, when, location))

    def forget_audit_segment(self, segment: str, location: str = "") -> None:
        with self._quiet_transaction() as db:
            db.execute("DELETE FROM audit_segments WHERE segment = ? AND location = ? AND "
                       "seq = 0", (segment, location))

    def audit_checkpoints(self) -> list[AuditCheckpoint]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM audit_segments ORDER BY segment, location").fetchall())
        return [AuditCheckpoint(r["segment"], bool(r["keyed"]), int(r["seq"]), bytes(r["hash"]),
                                float(r["created"]), float(r["updated"]), r["location"])
                for r in rows]
