"""Reading the audit trail: the records of every segment of an audit directory, merged by
time, for people (``hsmpool audit tail|show|export``) and for programs.

::

    from kms.audit_reader import Filter, read, tail, find, follow

    for rec in read("var/audit", Filter(since=t0, action="kms:Decrypt")):
        print(rec.when, rec.principal, rec.key_id)
    last = tail("var/audit", 20)              # the last 20 records, oldest first
    find("var/audit", "w0:42")                # seq 42 of segment w0 ("42": of every segment)
    find("var/audit", request_id)             # by request id

Reading is not verifying: ``hsmpool audit verify`` checks the hash chains. A row that is not
a well-formed record (damaged or edited) is skipped and counted in
:attr:`Reader.skipped`, so what is left of a damaged segment can still be read.

Order: segments are merged by record time; within a segment records keep their seq order
(a writer takes the time just before it queues the record, so threads of one process may
leave neighbours out of time order by microseconds). Reading holds at most one segment
open at a time, a page of records per segment in memory.

Records hold no plaintext, key material or secret context values (the writer redacts
them); a reader redacts again the context values of keys marked secret now
(``secret_context_keys``, or a ``secret:`` prefix), for records written before they were.
"""

from __future__ import annotations

import heapq
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kms.audit import FORMAT_VERSION, AuditError, segment_files

__all__ = ["AuditRecord", "Filter", "Reader", "find", "follow", "parse_time", "read",
           "tail"]

PAGE = 256  # records read from a segment at a time
_YEAR_10000 = 253_402_300_800.0  # a record time past it (or NaN) is malformed
REDACTED = "<redacted>"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record of one segment, decoded."""

    segment: str
    seq: int
    time: float
    instance: str
    principal: str
    action: str
    key_id: str | None
    key_version: str | None
    result: str
    request_id: str
    details: Mapping[str, str]
    hash: str  # hex: with segment and seq, an anchor for ``audit verify --anchor``

    @property
    def when(self) -> str:
        """The time as ISO 8601 UTC with milliseconds."""
        t = datetime.fromtimestamp(self.time, UTC)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"

    def to_json(self) -> dict[str, Any]:
        return {"Time": self.when, "Epoch": self.time, "Segment": self.segment,
                "Seq": self.seq, "Instance": self.instance, "Principal": self.principal,
                "Action": self.action, "KeyId": self.key_id, "KeyVersion": self.key_version,
                "Result": self.result, "RequestId": self.request_id,
                "Details": dict(self.details), "Hash": self.hash}


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records to read: all of the given conditions hold. ``action`` without a
    service prefix (``Decrypt``) matches it in any service (``kms:Decrypt``)."""

    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, inclusive
    action: str | None = None
    key_id: str | None = None
    request_id: str | None = None
    seq: int | None = None
    segment: str | None = None
    instance: str | None = None
    principal: str | None = None

    def accepts(self, rec: AuditRecord) -> bool:
        if self.instance is not None and rec.instance != self.instance:
            return False
        if self.principal is not None and rec.principal != self.principal:
            return False
        if self.since is not None and rec.time < self.since:
            return False
        if self.until is not None and rec.time > self.until:
            return False
        if self.action is not None and rec.action != self.action and (
                ":" in self.action or rec.action.partition(":")[2] != self.action):
            return False
        if self.key_id is not None and rec.key_id != self.key_id:
            return False
        return self.request_id is None or rec.request_id == self.request_id

    def needle(self) -> str | None:
        """A string every matching record's text contains (a cheap SQL pre-filter)."""
        for value in (self.request_id, self.key_id, self.action):
            if value is not None:
                return json.dumps(value)[1:-1]
        return None


def parse_time(text: str, *, now: Callable[[], float] = time.time) -> float:
    """Epoch seconds from ``1796415323[.5]``, ISO 8601 (``2026-12-04``,
    ``2026-12-04T20:15:23Z``, ``...+08:00``; UTC if no offset) or an age (``90s``,
    ``15m``, ``2h``, ``7d``: that long ago). ValueError otherwise."""
    t = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(t) > 1 and t[-1] in units and t[:-1].isdigit():
        return now() - int(t[:-1]) * units[t[-1]]
    try:
        return float(t) if t.replace(".", "", 1).isdigit() else _iso(t)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (e.g. 2026-12-04T20:15:00Z, "
                         "1796415300, 15m, 2h, 7d)") from None


def _iso(text: str) -> float:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class Reader:
    """The records of an audit directory. ``skipped`` counts malformed rows passed over
    (per segment); ``secret_context_keys`` are redacted in what is returned."""

    def __init__(self, directory: str | os.PathLike[str], *,
                 secret_context_keys: Iterable[str] = ()) -> None:
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise AuditError(f"{self.directory}: no such audit directory")
        self.secret = frozenset(secret_context_keys)
        self.skipped: dict[str, int] = {}

    # --- per segment

    def _query(self, path: str, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """Rows of one read-only query; [] if the segment is gone or not yet set up."""
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error:
            return []  # deleted meanwhile (an empty segment discarded by its writer)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # a writer is creating it
            raise AuditError(f"{path}: unreadable: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"{path}: unreadable: {exc}") from None
        finally:
            db.close()

    def _decode(self, segment: str, seq: Any, text: Any, hash_: Any) -> AuditRecord | None:
        try:
            f = json.loads(text)
            if not (isinstance(f, list) and len(f) == 10 and f[0] == FORMAT_VERSION
                    and isinstance(f[1], int | float) and not isinstance(f[1], bool)
                    and 0 <= f[1] < _YEAR_10000
                    and all(isinstance(x, str) for x in (f[2], f[3], f[4], f[7], f[8]))
                    and all(x is None or isinstance(x, str) for x in (f[5], f[6]))
                    and isinstance(f[9], dict)
                    and all(isinstance(v, str) for v in f[9].values())
                    and isinstance(seq, int) and isinstance(hash_, bytes)):
                raise ValueError("not a record")
        except (ValueError, TypeError, RecursionError):  # (RecursionError: nested too deep)
            self.skipped[segment] = self.skipped.get(segment, 0) + 1
            return None
        return AuditRecord(segment, seq, float(f[1]), f[2], f[3], f[4], f[5], f[6], f[7],
                           f[8], self._redact(f[9]), hash_.hex())

    def _redact(self, details: dict[str, str]) -> dict[str, str]:
        out = {}
        for k, v in details.items():
            ctx = k.removeprefix("ctx:")
            secret = k.startswith("ctx:") and (ctx in self.secret or ctx.startswith("secret:"))
            out[k] = REDACTED if secret else v
        return out

    def _page(self, segment: str, path: str, flt: Filter, after: int | None,
              before: int | None, limit: int) -> tuple[list[AuditRecord], int | None]:
        """Up to ``limit`` rows after seq ``after`` (ascending) or before ``before``
        (descending), decoded and filtered; and the last seq scanned (None: no rows)."""
        where: list[str] = []
        args: list[int | str] = []
        if after is not None:
            where.append("seq > ?")
            args.append(after)
        if before is not None:
            where.append("seq < ?")
            args.append(before)
        if flt.seq is not None:
            where.append("seq = ?")
            args.append(flt.seq)
        needle = flt.needle()
        if needle is not None:
            where.append("instr(record, ?) > 0")
            args.append(needle)
        sql = ("SELECT seq, record, hash FROM records"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY seq {'DESC' if before is not None else 'ASC'} LIMIT ?")
        rows = self._query(path, sql, (*args, limit))
        out = [r for r in (self._decode(segment, *row) for row in rows)
               if r is not None and flt.accepts(r)]
        return out, (rows[-1][0] if rows else None)

    def _forward(self, segment: str, path: str, flt: Filter, after: int = 0
                 ) -> Iterator[AuditRecord]:
        while True:
            page, last = self._page(segment, path, flt, after, None, PAGE)
            yield from page
            if last is None or flt.seq is not None:
                return
            after = last

    def _segments(self, flt: Filter) -> list[tuple[str, str]]:
        return [(s, p) for s, p in segment_files(self.directory)
                if flt.segment is None or s == flt.segment]

    # --- the directory

    def read(self, flt: Filter = Filter()) -> Iterator[AuditRecord]:
        """Every matching record, merged by time."""
        streams = [self._forward(s, p, flt) for s, p in self._segments(flt)]
        return heapq.merge(*streams, key=lambda r: (r.time, r.segment, r.seq))

    def tail(self, n: int, flt: Filter = Filter()) -> list[AuditRecord]:
        """The last ``n`` matching records (by time), oldest first."""
        found: list[AuditRecord] = []
        for segment, path in self._segments(flt):
            mine: list[AuditRecord] = []
            before: int | None = 1 << 62
            while len(mine) < n and before is not None:
                page, before = self._page(segment, path, flt, None, before, max(n, PAGE))
                mine.extend(page[:n - len(mine)])
            found.extend(mine)
        found.sort(key=lambda r: (r.time, r.segment, r.seq))
        return found[-n:] if n else []

    def heads(self) -> dict[str, int]:
        """Each segment's last seq now (0 for an empty one)."""
        out = {}
        for segment, path in segment_files(self.directory):
            rows = self._query(path, "SELECT max(seq) FROM records", ())
            out[segment] = int(rows[0][0] or 0) if rows else 0
        return out

    def new_since(self, seen: dict[str, int], flt: Filter = Filter()) -> list[AuditRecord]:
        """Records committed after ``seen`` (segment -> last seq read; a segment not in it
        is read from its start), by time; updates ``seen``."""
        out: list[AuditRecord] = []
        for segment, path in self._segments(flt):
            after = seen.get(segment, 0)
            while True:
                page, last = self._page(segment, path, Filter(), after, None, PAGE)
                if last is None:
                    break
                out.extend(r for r in page if flt.accepts(r))
                after = last
            seen[segment] = after
        out.sort(key=lambda r: (r.time, r.segment, r.seq))
        return out


def read(directory: str | os.PathLike[str], flt: Filter = Filter()) -> Iterator[AuditRecord]:
    return Reader(directory).read(flt)


def tail(directory: str | os.PathLike[str], n: int, flt: Filter = Filter()
         ) -> list[AuditRecord]:
    return Reader(directory).tail(n, flt)


def find(directory: str | os.PathLike[str], ref: str) -> list[AuditRecord]:
    """Records by ``SEQ`` (in every segment), ``SEGMENT:SEQ`` or request id."""
    return list(Reader(directory).read(ref_filter(ref)))


def ref_filter(ref: str) -> Filter:
    """The filter of a ``show`` argument: ``SEQ``, ``SEGMENT:SEQ`` or a request id."""
    segment, sep, seq = ref.rpartition(":")
    if seq.isdigit() and (not sep or segment):
        return Filter(seq=int(seq), segment=segment if sep else None)
    return Filter(request_id=ref)


def follow(reader: Reader, flt: Filter, emit: Callable[[AuditRecord], None], *,
           interval: float = 0.5, seen: dict[str, int] | None = None,
           stop: Callable[[], bool] = lambda: False) -> None:
    """Call ``emit`` for every record committed from now on (after ``seen``, default: the
    current heads), polling every ``interval`` seconds, until ``stop()``."""
    last = reader.heads() if seen is None else seen
    while not stop():
        for rec in reader.new_since(last, flt):
            emit(rec)
        time.sleep(interval)
