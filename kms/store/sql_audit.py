"""What the audit trail keeps in the metadata store (:class:`kms.store.AuditAnchorStore`,
used by :mod:`kms.audit_anchor`): sealed service secrets (the audit head key, wrapped by an
instance's domain key), the registry of audit segments with their last checkpoint, and the
shipped copies of segments (:mod:`kms.audit_ship`): their records, exactly as in the segment
files, and the head each copy reaches.

A mixin of :class:`kms.store.sql.SqlStore`; the tables are made by SQLite's migration 9
(:data:`MIGRATION`, 11 for the location, 12 for shipping: :data:`SHIP_MIGRATION`) and
PostgreSQL's schema versions 3, 5 and 6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Final

from kms.store.interface import (
    AuditCheckpoint,
    AuditHead,
    SealedSecret,
    ShippedRecord,
    ShippedSegment,
    ShipResult,
)

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

#: SQLite's migration 12: shipped audit records, and the head each shipped copy reaches.
SHIP_MIGRATION = """
    CREATE TABLE audit_shipped (
        location TEXT NOT NULL,
        segment TEXT NOT NULL,
        seq INTEGER NOT NULL,
        record TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (location, segment, seq)
    );
    CREATE TABLE audit_shipped_heads (
        location TEXT NOT NULL,
        segment TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        mac BLOB,
        updated REAL NOT NULL,
        PRIMARY KEY (location, segment)
    )
"""

#: The most records one :meth:`SqlAudit.shipped_audit_records` page returns.
MAX_PAGE: Final = 10_000
_MAX_SEQ: Final = (1 << 63) - 1


def _checked_shipment(location: str, segment: str, records: Sequence[ShippedRecord],
                      head: AuditHead) -> list[ShippedRecord]:
    """``records`` as a list, or ValueError (never a driver's error) if the shipment is
    malformed: the types, ascending seqs, ASCII record text (a canonical record is ASCII),
    32-byte hashes."""
    if not isinstance(location, str) or not isinstance(segment, str) or not segment:
        raise ValueError("a shipment names its segment and location as text")
    if not isinstance(head, AuditHead) or type(head.seq) is not int \
            or not 1 <= head.seq <= _MAX_SEQ or not isinstance(head.hash, bytes) \
            or len(head.hash) != 32 or not (head.mac is None or (
                isinstance(head.mac, bytes) and len(head.mac) <= 64)):
        raise ValueError("a shipped head is an AuditHead of seq >= 1, a 32-byte hash and a "
                         "MAC of at most 64 bytes or None")
    rows = list(records)
    last = 0
    for r in rows:
        if not isinstance(r, ShippedRecord) or not r.well_formed():
            raise ValueError("a shipped record is a ShippedRecord of a seq >= 1, ASCII "
                             "record text without NUL and 32-byte hashes")
        if r.seq <= last:
            raise ValueError("shipped records are in ascending seq order")
        last = r.seq
    return rows


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

    # --- shipped copies of segments (kms/audit_ship.py)

    def ship_audit(self, location: str, segment: str, records: Sequence[ShippedRecord],
                   head: AuditHead, when: float) -> ShipResult:
        rows = _checked_shipment(location, segment, records, head)
        key = (location, segment)
        # Quiet, as a checkpoint: no cache holds shipped records.
        with self._quiet_transaction() as db:
            stored: dict[int, tuple[str, bytes, bytes]] = {}
            if rows:
                for r in db.execute(
                        "SELECT seq, record, prev_hash, hash FROM audit_shipped WHERE "
                        "location = ? AND segment = ? AND seq >= ? AND seq <= ?",
                        (*key, rows[0].seq, rows[-1].seq)).fetchall():
                    stored[int(r["seq"])] = (r["record"], bytes(r["prev_hash"]),
                                             bytes(r["hash"]))
            conflicts = tuple(r.seq for r in rows if r.seq in stored
                              and stored[r.seq] != (r.record, r.prev_hash, r.hash))
            # A conflicting shipment stores nothing: the copy stays as first shipped.
            new = [] if conflicts else [r for r in rows if r.seq not in stored]
            if new:
                db.executemany("INSERT INTO audit_shipped (location, segment, seq, record, "
                               "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (location, segment, seq) DO NOTHING",
                               [(location, segment, r.seq, r.record, r.prev_hash, r.hash)
                                for r in new])
            if not conflicts:
                at = db.execute("SELECT hash FROM audit_shipped WHERE location = ? AND "
                                "segment = ? AND seq = ?", (*key, head.seq)).fetchone()
                if at is not None and bytes(at["hash"]) == head.hash:
                    db.execute("INSERT INTO audit_shipped_heads (location, segment, seq, hash, "
                               "mac, updated) VALUES (?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (location, segment) DO UPDATE SET "
                               "seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, "
                               "updated = excluded.updated "
                               "WHERE excluded.seq > audit_shipped_heads.seq",
                               (*key, head.seq, head.hash, head.mac, when))
            now = db.execute("SELECT seq, hash, mac FROM audit_shipped_heads WHERE "
                             "location = ? AND segment = ?", key).fetchone()
        return ShipResult(len(new), conflicts, now is not None and _head(now) == head)

    def shipped_audit_head(self, location: str, segment: str) -> AuditHead | None:
        row = self._read(lambda db: db.execute(
            "SELECT seq, hash, mac FROM audit_shipped_heads WHERE location = ? AND "
            "segment = ?", (location, segment)).fetchone())
        return None if row is None else _head(row)

    def shipped_audit_records(self, location: str, segment: str, after_seq: int,
                              limit: int) -> list[ShippedRecord]:
        if type(after_seq) is not int or not 0 <= after_seq <= _MAX_SEQ \
                or type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"a page of shipped records starts at a seq >= 0 and holds "
                             f"1..{MAX_PAGE}")
        rows = self._read(lambda db: db.execute(
            "SELECT seq, record, prev_hash, hash FROM audit_shipped WHERE location = ? AND "
            "segment = ? AND seq > ? ORDER BY seq LIMIT ?",
            (location, segment, after_seq, limit)).fetchall())
        return [ShippedRecord(int(r["seq"]), str(r["record"]), bytes(r["prev_hash"]),
                              bytes(r["hash"])) for r in rows]

    def shipped_audit_segments(self) -> list[ShippedSegment]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM audit_shipped_heads ORDER BY location, segment").fetchall())
        return [ShippedSegment(r["location"], r["segment"], _head(r), float(r["updated"]))
                for r in rows]


def _head(row: Any) -> AuditHead:
    mac = row["mac"]
    return AuditHead(int(row["seq"]), bytes(row["hash"]), None if mac is None else bytes(mac))
