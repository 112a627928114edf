"""Audit in a cluster: each node's segments shipped into the metadata store, and every node's
segments verified from one place (docs/audit.md, "Several nodes").

Every node keeps its own hash-chained segments (one per service process) in its own audit
folder; the store's registry knows each segment by its location (``<host>:<folder>``,
:func:`kms.audit_anchor.location`) with a checkpoint of its head.

**Shipping** (``[kms] audit_ship = true``, off by default): a service process's
:class:`Shipper` copies its own segment into the store at every checkpoint
(:meth:`kms.service.Kms.checkpoint_audit`: at open, every 10 s from the scheduler, at close):
the records committed since the shipped head, read through a read-only SQLite connection of
its own (the native writer is not disturbed: WAL lets readers run beside it), exactly as
their rows are in the file (stored text, ``prev_hash``, ``hash``), in transactions of
:data:`SHIP_BATCH` records, for at most :data:`SHIP_BUDGET` seconds per checkpoint (a
backlog is caught up over the following checkpoints). Each transaction also moves the
shipped head: to the file's ``head`` row (seq, hash and head MAC, as read before the
records) when the records reach it, else to the batch's last record, sealed with the MAC
the writer would give that head. So the shipped copy is at every moment a prefix of the
chain with a genuine head MAC: it can be verified as a segment file is. Shipping is a
quiet write (no cache drops anywhere) and never fails a request or the scheduler: a
failure is logged in one line without record content, and retried at the next checkpoint.

**Verifying every node** (:func:`verify_all_nodes`, ``hsmpool audit verify --all-nodes``):
the segments whose files live here (this host and audit folder) are verified from their
files, with their checkpoints and shipped heads as anchors, and every shipped record must
still be in the file with its shipped hash (a rewrite after shipping is caught, recomputed
chain or not). Every segment registered at another location is verified from its shipped
copy: the rows are written into a scratch file in the segment format and checked by the
same checker as a file (:func:`kms.audit.verify_segment_file`: chain from the genesis, head,
head MAC with the head key), and its checkpoint must be in that chain. A segment of
another location with no shipped copy, or one whose copy stops before its checkpoint, is a
problem ("not shipped: verify it on <host>"): OK means every node's segments were checked
(except a segment registered at seq 0, without records: nothing to ship or to check).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kms.audit import (
    SegmentHead,
    VerifyReport,
    genesis,
    segment_files,
    segment_path,
    seq_span,
    verify,
    verify_segment_file,
    write_segment_file,
)
from kms.audit_anchor import location
from kms.errors import KmsError
from kms.store.interface import AuditHead, ShippedRecord

if TYPE_CHECKING:
    from kms.audit import AuditLog
    from kms.store.interface import AuditAnchorStore, AuditCheckpoint, ShippedSegment

__all__ = ["CLOSE_BUDGET", "SHIP_BATCH", "SHIP_BUDGET", "NodesReport", "Shipper",
           "verify_all_nodes", "verify_nodes"]

#: Records per shipping transaction.
SHIP_BATCH: Final = 2_000
#: Seconds a checkpoint of the scheduler ships for at most (then the next one goes on).
SHIP_BUDGET: Final = 2.0
#: Seconds the checkpoint at close ships for at most (a worker's stop waits 30 s for it).
CLOSE_BUDGET: Final = 10.0
#: Shipped records read per page when verifying.
_PAGE: Final = 5_000
#: Differing ranges itemised per segment when a file is compared with its shipped copy.
_MAX_RANGES: Final = 20

log = logging.getLogger("hsmpool.audit")


def _why(exc: BaseException) -> str:
    """One line about a failure, without anything the failure may quote: a driver's
    message can hold a statement's values (record text), so only our own errors, SQLite's
    and the OS's say more than their type."""
    if isinstance(exc, KmsError | sqlite3.Error | OSError | ValueError):
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    state = getattr(exc, "sqlstate", None)
    return type(exc).__name__ + (f" (SQLSTATE {state})" if isinstance(state, str) else "")


class Shipper:
    """Ships one :class:`kms.audit.AuditLog`'s segment into the store (see the module
    docstring). One per service process; thread-safe (runs one at a time)."""

    def __init__(self, audit: AuditLog, store: AuditAnchorStore, *,
                 batch: int = SHIP_BATCH) -> None:
        if not 1 <= batch <= 10_000:
            raise ValueError("a shipping batch holds 1..10000 records")
        self.audit = audit
        self.store = store
        self.segment = audit.segment
        self.location = location(audit.directory)
        self.batch = batch
        #: Records shipped by this shipper; checkpoints whose shipping failed.
        self.shipped = 0
        self.failures = 0
        self._head: AuditHead | None = None  # the store's shipped head, once read
        self._failing = False
        self._stopped: str | None = None  # why shipping stopped for good (a divergence)
        self._lock = threading.Lock()

    @property
    def shipped_head(self) -> AuditHead | None:
        """The shipped head as this shipper last saw it (None before the first run)."""
        return self._head

    @property
    def stopped(self) -> str | None:
        """Why this shipper ships no more (the file no longer continues the shipped copy),
        or None."""
        return self._stopped

    def run(self, budget: float = SHIP_BUDGET) -> int:
        """Ship what was committed since the shipped head, for about ``budget`` seconds at
        most; the records shipped. Never raises: a failure (the store down) is logged once
        per streak of failures, without record content, and retried at the next run."""
        with self._lock:
            try:
                n = self._ship(budget)
            except Exception as exc:  # noqa: BLE001 - must not fail the caller
                self.failures += 1
                if not self._failing:
                    self._failing = True
                    log.warning("audit segment %s: shipping into the store failed (%s); "
                                "retried at the next checkpoint", self.segment, _why(exc))
                return 0
            if self._failing:
                self._failing = False
                log.warning("audit segment %s: shipping into the store resumed",
                            self.segment)
            return n

    def _stop(self, why: str) -> None:
        self._stopped = why
        log.warning("audit segment %s: not shipped further: %s (run hsmpool audit verify)",
                    self.segment, why)

    def _ship(self, budget: float) -> int:
        if self._stopped is not None:
            return 0
        deadline = time.monotonic() + budget
        if self._head is None:
            self._head = (self.store.shipped_audit_head(self.location, self.segment)
                          or AuditHead(0, genesis(self.segment)))
        path = self.audit.path
        if not os.path.exists(path):
            return 0  # discarded at close, being empty: nothing to ship
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                             check_same_thread=False)
        try:
            return self._ship_from(db, deadline)
        finally:
            db.close()

    def _ship_from(self, db: sqlite3.Connection, deadline: float) -> int:
        shipped = self._head
        assert shipped is not None
        row = db.execute("SELECT seq, hash, mac FROM head WHERE id = 1").fetchone()
        if row is None or type(row[0]) is not int or not isinstance(row[1], bytes) \
                or not (row[2] is None or isinstance(row[2], bytes)):
            self._stop("the segment's head is missing or malformed")
            return 0
        head = AuditHead(row[0], row[1], row[2])
        if head.seq < shipped.seq:
            self._stop(f"the file's head (seq {head.seq}) is behind the shipped head (seq "
                       f"{shipped.seq}): rolled back or replaced")
            return 0
        if head.seq == shipped.seq:
            if head.hash != shipped.hash:
                self._stop(f"the file's head differs from the shipped head at seq {head.seq}")
            return 0
        total = 0
        while shipped.seq < head.seq:
            rows = db.execute(
                "SELECT seq, record, prev_hash, hash FROM records WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?", (shipped.seq, head.seq, self.batch)).fetchall()
            records = _shippable(rows)
            if not records:
                what = "malformed" if rows else "missing"
                self._stop(f"seq {shipped.seq + 1} is {what} in the file")
                break
            first = records[0]
            if first.seq != shipped.seq + 1 or first.prev_hash != shipped.hash:
                self._stop(f"seq {first.seq} does not continue the shipped copy (shipped up "
                           f"to seq {shipped.seq})")
                break
            last = records[-1]
            top = head if last.seq == head.seq else AuditHead(
                last.seq, last.hash, self.audit.head_mac(last.seq, last.hash))
            result = self.store.ship_audit(self.location, self.segment, records, top,
                                           time.time())
            if result.conflicts:
                self._stop(f"{len(result.conflicts)} records were shipped before with other "
                           f"contents (seq {result.conflicts[0]} first): the segment was "
                           "rewritten after shipping; the store keeps the first copy")
                break
            if not result.head_shipped:
                self._stop(f"the head at seq {top.seq} does not name the record shipped "
                           "there (the file's head differs from its records)")
                break
            self._head = shipped = top
            total += len(records)
            self.shipped += len(records)
            if len(records) < len(rows):
                self._stop(f"seq {last.seq + 1} is malformed in the file")
                break
            if time.monotonic() >= deadline:
                break
        return total


def _shippable(rows: Sequence[Any]) -> list[ShippedRecord]:
    """The rows as records, up to the first one the store would refuse (a damaged file:
    its own verify names it)."""
    out = []
    for row in rows:
        record = ShippedRecord(*row)
        if not record.well_formed():
            break
        out.append(record)
    return out


# --- verify every node's segments --------------------------------------------------------


@dataclass(slots=True)
class NodesReport(VerifyReport):
    """A :class:`kms.audit.VerifyReport` of every node's segments: ``from_files`` were
    verified from their files here, ``from_shipped`` from their copies in the store;
    ``locations`` are the other nodes' (``<host>:<folder>``)."""

    from_files: int = 0
    from_shipped: int = 0
    empty: int = 0  # of another location, registered at seq 0 and never shipped: no records
    locations: list[str] = field(default_factory=list)
    registered: int = 0  # segments in the store's registry (every location)
    note: str = ""  # where the head key came from


def _host(loc: str) -> str:
    return loc.split(":", 1)[0] or loc


def verify_all_nodes(config: str, directory: str, *, head_key: bytes | None = None,
                     anchors: Iterable[tuple[str, int, str]] = (),
                     segments: Iterable[str] | None = None) -> NodesReport:
    """Verify every node's segments of the deployment of ``config`` (see the module
    docstring): ``directory``'s from its files, the other locations' from their shipped
    copies. The head key is the store's (unsealed in a token) unless ``head_key`` is given
    (then every head's MAC is checked with it). ``anchors`` (segment, seq, hash hex) and
    ``segments`` are as for :func:`kms.audit.verify`, over every location."""
    from kms.audit_anchor import anchors_in
    from kms.config import load
    from kms.store import open_store

    pool_cfg, settings = load(config)
    store = open_store(settings.database)
    try:
        found = anchors_in(store, pool_cfg)
        report = verify_nodes(store, directory, found.checkpoints,
                              head_key=head_key if head_key is not None else found.head_key,
                              every_mac=head_key is not None, anchors=anchors,
                              segments=segments)
        report.note = "given" if head_key is not None else found.note
        return report
    finally:
        store.close()


def verify_nodes(store: AuditAnchorStore, directory: str,
                 checkpoints: Sequence[AuditCheckpoint], *, head_key: bytes | None,
                 every_mac: bool = False, anchors: Iterable[tuple[str, int, str]] = (),
                 segments: Iterable[str] | None = None) -> NodesReport:
    """:func:`verify_all_nodes` on an open store, with the registry's ``checkpoints`` (of
    every location). With ``head_key``, the heads of the segments registered as keyed are
    MAC-checked (every head's, with ``every_mac``)."""
    here = location(directory)
    wanted = None if segments is None else set(segments)
    shipped = store.shipped_audit_segments()
    local_cps = [c for c in checkpoints if c.location in ("", here)]
    remote_cps = {(c.location, c.segment): c for c in checkpoints
                  if c.location not in ("", here)}
    local_shipped = [s for s in shipped if s.location == here
                     and (wanted is None or s.segment in wanted)]
    remote_shipped = {(s.location, s.segment): s for s in shipped if s.location != here}
    remote_keys = sorted(k for k in {*remote_cps, *remote_shipped}
                         if wanted is None or k[1] in wanted)
    remote_names = {seg for _, seg in remote_keys}
    local_names = {seg for seg, _ in segment_files(directory)} \
        if os.path.isdir(directory) else set()
    given = list(anchors)
    # An anchor names a segment, not a location: it applies to the copies of another
    # location only if no file here has that name.
    remote_given = [a for a in given if a[0] in remote_names and a[0] not in local_names]
    local_given = [a for a in given if a not in remote_given]

    local_anchors = [*local_given, *((c.segment, c.seq, c.hash.hex()) for c in local_cps),
                     *((s.segment, s.head.seq, s.head.hash.hex()) for s in local_shipped)]
    keyed = None if every_mac else {c.segment for c in local_cps if c.keyed}
    local_wanted = None if wanted is None else {
        s for s in wanted if s in local_names or s not in remote_names}
    base = verify(directory, head_key=head_key, segments=local_wanted, anchors=local_anchors,
                  keyed=keyed if head_key is not None else None)
    report = NodesReport(base.ok, base.records, base.segments, base.problems, base.heads)
    report.from_files = base.segments
    report.registered = len(checkpoints)
    for s in local_shipped:
        path = segment_path(directory, s.segment)
        if os.path.exists(path):  # (else reported missing through its anchor)
            _compare_with_shipped(store, path, s, report)

    report.locations = sorted({loc for loc, _ in remote_keys})
    with tempfile.TemporaryDirectory(prefix="hsmpool-audit-verify-") as scratch:
        for key in remote_keys:
            loc, seg = key
            cp = remote_cps.get(key)
            copy = remote_shipped.get(key)
            where = f"segment {seg} of {loc}"
            if copy is None and cp is not None and cp.seq == 0:
                # Registered without a record (a worker that served nothing): there is
                # nothing to ship, and nothing its checkpoint could be checked against.
                report.heads.append(SegmentHead(seg, 0, 0, cp.hash.hex(),
                                                f"registered at {loc} without records"))
                report.segments += 1
                report.empty += 1
                continue
            if copy is None:
                report.problem(f"{where}: not shipped: verify it on {_host(loc)}")
                continue
            if cp is None:
                report.problem(f"{where}: shipped up to seq {copy.head.seq} but not "
                               "registered in the store (its registry row was removed)")
            seg_anchors = [(seq, h) for name, seq, h in remote_given if name == seg]
            if cp is not None and cp.seq <= copy.head.seq:
                seg_anchors.append((cp.seq, cp.hash.hex()))
            elif cp is not None:
                report.problem(f"{where}: the shipped copy stops at seq {copy.head.seq}, "
                               f"before its checkpoint (seq {cp.seq}): not shipped: verify "
                               f"it on {_host(loc)}")
            use_key = every_mac or (cp.keyed if cp is not None else copy.head.mac is not None)
            path = os.path.join(scratch, "copy.db")
            write_segment_file(path, seg, _pages(store, loc, seg),
                               (copy.head.seq, copy.head.hash, copy.head.mac))
            try:
                verify_segment_file(path, seg, report,
                                    head_key=head_key if use_key else None,
                                    anchors=seg_anchors, where=where,
                                    source=f"shipped from {loc}")
            finally:
                os.unlink(path)
            report.segments += 1
            report.from_shipped += 1
    return report


def _pages(store: AuditAnchorStore, loc: str, segment: str
           ) -> Iterator[list[tuple[int, str, bytes, bytes]]]:
    after = 0
    while True:
        page = store.shipped_audit_records(loc, segment, after, _PAGE)
        if not page:
            return
        yield [(r.seq, r.record, r.prev_hash, r.hash) for r in page]
        after = page[-1].seq


def _compare_with_shipped(store: AuditAnchorStore, path: str, copy: ShippedSegment,
                          report: NodesReport) -> None:
    """Every shipped record of a local segment must still be in its file with the shipped
    hash: problems name the ranges that differ or are gone."""
    where = f"segment {copy.segment}"
    differ: list[int] = []
    gone: list[int] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return  # (verify reported it unreadable)
    try:
        db.execute("BEGIN")
        for page in _pages(store, copy.location, copy.segment):
            lo, hi = page[0][0], page[-1][0]
            try:
                here = dict(db.execute("SELECT seq, hash FROM records WHERE seq >= ? AND "
                                       "seq <= ?", (lo, hi)).fetchall())
            except sqlite3.Error:
                return
            for seq, _, _, h in page:
                mine = here.get(seq)
                if mine is None:
                    gone.append(seq)
                elif mine != h:
                    differ.append(seq)
        db.execute("COMMIT")
    finally:
        db.close()
    for seqs, what in ((differ, "differs from the copy shipped to the store (rewritten "
                                "after shipping)"),
                       (gone, "shipped to the store, but missing from the file (removed "
                              "after shipping)")):
        ranges = _ranges(seqs)
        for lo, hi in ranges[:_MAX_RANGES]:
            report.problem(f"{where}: {seq_span(lo, hi)}: {what}")
        if len(ranges) > _MAX_RANGES:
            report.problem(f"{where}: {len(ranges) - _MAX_RANGES} more such ranges "
                           "(not itemised)")


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
