"""The audit trail: one hash-chained record per KMS call, in per-process SQLite segments.

The full description (record format, chaining, segments, durability, verification):
``docs/audit.md``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import pwd
import re
import socket
import sqlite3
import struct
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kms._auditw_cffi import ffi as _ffi
from kms._auditw_cffi import lib as _lib
from kms.private_files import private_dir, private_file

__all__ = [
    "FORMAT_VERSION",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "SegmentInUse",
    "VerifyReport",
    "canonical",
    "chain_hash",
    "cli_segment",
    "genesis",
    "local_user",
    "open_cli_log",
    "parse_anchor",
    "segment_files",
    "segment_path",
    "seq_span",
    "verify",
    "verify_segment_file",
    "write_segment_file",
]

FORMAT_VERSION = 2
_GENESIS_TAG = b"hsmpool-audit-genesis/1\0"
_HEAD_TAG = b"hsmpool-audit-head/1\0"
_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE_RE = re.compile(r"audit-(.+)\.db")
WAKE_AT = 256  # queued records that wake the writer before its delay is up
MAX_DELAY = 0.01  # seconds a queued record waits for company before the writer takes it
DEFAULT_DIR = "var/audit"


class AuditError(Exception):
    """The audit log cannot record (write failure, closed log, segment in use)."""


class SegmentInUse(AuditError):
    """Another :class:`AuditLog` (in this or another process) holds the segment."""


# --------------------------------------------------------------------------- events

_STR_FIELDS = ("instance", "principal", "action", "result", "request_id")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One KMS call. Holds only what it is given; ``details`` is copied and read-only."""

    time: float  # epoch seconds
    instance: str
    principal: str  # principal id/name, "" for the embedded caller
    action: str  # e.g. "kms:Encrypt"
    key_id: str | None
    key_version: str | None  # version id (uuid hex) or None
    result: str  # "ok" or the error code, e.g. "NotFoundException"
    request_id: str
    details: Mapping[str, str] = field(default_factory=dict)  # non-secret extras

    def __post_init__(self) -> None:
        t = self.time
        if type(t) is not float:
            if isinstance(t, bool) or not isinstance(t, int | float):
                raise TypeError(f"AuditEvent.time must be a number, not {type(t).__name__}")
            try:
                t = float(t)
            except OverflowError:  # an int past any float (a damaged record's time)
                t = math.inf
            object.__setattr__(self, "time", t)
        if not math.isfinite(t):
            raise ValueError("AuditEvent.time must be finite")
        kid, kver = self.key_id, self.key_version
        if not (isinstance(self.instance, str) and isinstance(self.principal, str)
                and isinstance(self.action, str) and isinstance(self.result, str)
                and isinstance(self.request_id, str)
                and (kid is None or isinstance(kid, str))
                and (kver is None or isinstance(kver, str))):
            self._type_error()
        details = self.details
        if not isinstance(details, Mapping):
            raise TypeError(
                f"AuditEvent.details must be a mapping, not {type(details).__name__}")
        # A private, read-only copy: the record is encoded later, on the writer thread.
        copy = dict(details)
        for k, v in copy.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("AuditEvent.details keys and values must be str, not "
                                f"{type(k).__name__}: {type(v).__name__}")
        object.__setattr__(self, "details", types.MappingProxyType(copy))

    def _type_error(self) -> None:
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"AuditEvent.{name} must be str, not {type(value).__name__}")
        for name in ("key_id", "key_version"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"AuditEvent.{name} must be str or None, not {type(value).__name__}")


_enc = json.encoder.encode_basestring_ascii  # the C string encoder json.dumps uses

# The record of format 2: a JSON array (see docs/audit.md). "%r" of a float is
# float.__repr__, the shortest round-trip form json.dumps writes too.
_FMT = "[2,%r,%s,%s,%s,%s,%s,%s,%s,%s]"


def _details_json(details: Mapping[str, str]) -> str:
    """``json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``
    for a str -> str mapping, built directly (it runs once per record)."""
    if not details:
        return "{}"
    return "{" + ",".join([_enc(k) + ":" + _enc(v) for k, v in sorted(details.items())]) + "}"


def _record(time_: float, instance: str, principal: str, action: str, key_id: str | None,
            key_version: str | None, result: str, request_id: str,
            details: Mapping[str, str]) -> str:
    # Exactly json.dumps([2, time, ...], sort_keys=True, separators=(",", ":"),
    # ensure_ascii=True) (the tests check the two agree). The writer inlines this.
    return _FMT % (time_, _enc(instance), _enc(principal), _enc(action),
                   "null" if key_id is None else _enc(key_id),
                   "null" if key_version is None else _enc(key_version), _enc(result),
                   _enc(request_id), _details_json(details) if details else "{}")


def canonical(event: AuditEvent) -> bytes:
    """The versioned, deterministic encoding of ``event`` that is stored and hashed."""
    return _record(event.time, event.instance, event.principal, event.action, event.key_id,
                   event.key_version, event.result, event.request_id,
                   event.details).encode("ascii")


_SEQ = struct.Struct(">Q")


def chain_hash(prev_hash: bytes, seq: int, canonical_record: bytes) -> bytes:
    """SHA-256(prev_hash || seq (8 bytes, big-endian) || canonical record)."""
    return hashlib.sha256(prev_hash + _SEQ.pack(seq) + canonical_record).digest()


def genesis(segment: str) -> bytes:
    """The ``prev_hash`` of a segment's first record."""
    return hashlib.sha256(_GENESIS_TAG + segment.encode("utf-8")).digest()


def _head_mac(key: bytes, segment: str, seq: int, hash_: bytes) -> bytes:
    msg = _HEAD_TAG + segment.encode("utf-8") + b"\0" + seq.to_bytes(8, "big") + hash_
    return hmac.new(key, msg, hashlib.sha256).digest()


def segment_path(directory: str | os.PathLike[str], segment: str) -> str:
    return os.path.join(os.fspath(directory), f"audit-{segment}.db")


def _name_part(text: str, limit: int = 48) -> str:
    """``text`` made safe for a segment name (letters, digits, '._-'), at most ``limit``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:limit]


def _default_segment() -> str:
    host = _name_part(socket.gethostname(), 100) or "host"
    return f"{host}-{os.getpid()}"


def local_user() -> str:
    """The name of this process's effective OS user (``uid<N>`` if it has no name)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name or f"uid{uid}"
    except KeyError:
        return f"uid{uid}"


def cli_segment() -> str:
    """The segment the command-line runs of this host and OS user share:
    ``cli-<host>-<user>``."""
    host = _name_part(socket.gethostname()) or "host"
    return f"cli-{host}-{_name_part(local_user()) or 'user'}"


def open_cli_log(directory: str | os.PathLike[str], *, sync: bool = True,
                 head_key: bytes | None = None) -> AuditLog:
    """The audit log of one command-line run: the shared segment :func:`cli_segment`,
    continued across runs, or, while a concurrent run holds it, a segment of this process
    (``cli-<host>-<user>-<pid>``). Either is deleted at close if it holds no records. Runs
    without the ``head_key`` (metadata-only commands, no HSM) write ``cli-<host>-<user>-plain``
    instead, so a segment's heads are either all MACed or none."""
    shared = cli_segment() if head_key is not None else cli_segment() + "-plain"
    try:
        return AuditLog(directory, shared, sync=sync, discard_if_empty=True,
                        head_key=head_key)
    except SegmentInUse:
        return AuditLog(directory, f"{shared}-{os.getpid()}", sync=sync,
                        discard_if_empty=True, head_key=head_key)


# --------------------------------------------------------------------------- schema

_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    record TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    mac BLOB
);
CREATE VIEW IF NOT EXISTS audit AS SELECT
    seq,
    json_extract(record, '$[0]') AS v,
    json_extract(record, '$[1]') AS time,
    json_extract(record, '$[2]') AS instance,
    json_extract(record, '$[3]') AS principal,
    json_extract(record, '$[4]') AS action,
    json_extract(record, '$[5]') AS key_id,
    json_extract(record, '$[6]') AS key_version,
    json_extract(record, '$[7]') AS result,
    json_extract(record, '$[8]') AS request_id,
    json_extract(record, '$[9]') AS details,
    prev_hash,
    hash
FROM records;
"""


# --------------------------------------------------------------------------- writer


def _lock_segment(lock_path: str, segment: str) -> int:
    """An exclusive ``flock`` on the segment's lock file, as an open descriptor. A lock
    file deleted by its last holder (an empty, discarded segment) between our open and our
    lock is no longer the segment's lock: open the new one and try again."""
    for _ in range(100):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SegmentInUse(f"audit segment {segment!r} is in use by another writer") \
                from exc
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev,
                                                                         held.st_ino):
            return fd
        os.close(fd)
    raise AuditError(f"audit segment {segment!r}: its lock file keeps being replaced")

class AuditLog:
    """An append-only, hash-chained audit segment with a background group-commit writer.

    Create it in the process that uses it (after any fork): the writer thread does not
    survive ``fork``. ``wake_at`` and ``max_delay`` set the batching (docs/audit.md).
    With ``discard_if_empty``, a segment that holds no records when the log closes is
    deleted (its database and lock files), so short-lived writers leave nothing behind.
    Raises :class:`SegmentInUse` if another log holds the segment.
    """

    def __init__(self, directory: str | os.PathLike[str], segment: str | None = None, *,
                 sync: bool = True, head_key: bytes | None = None, wake_at: int = WAKE_AT,
                 max_delay: float = MAX_DELAY, discard_if_empty: bool = False) -> None:
        seg = _default_segment() if segment is None else segment
        if not _SEGMENT_RE.fullmatch(seg):
            raise ValueError(f"bad audit segment name {seg!r} (letters, digits, '._-')")
        if wake_at < 1 or not max_delay >= 0:
            raise ValueError("AuditLog needs wake_at >= 1 and max_delay >= 0")
        self.segment = seg
        self.directory = os.fspath(directory)
        self.path = segment_path(self.directory, seg)
        self.sync = sync
        self.wake_at = wake_at
        self.max_delay = float(max_delay)
        self._head_key = head_key
        self.discard_if_empty = discard_if_empty
        private_dir(self.directory)

        self._lock_path = os.path.join(self.directory, f"audit-{seg}.lock")
        self._lock_fd = _lock_segment(self._lock_path, seg)
        try:
            self._db = self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

        self._closed = False
        self._error: str | None = None  # why the log failed (closed)
        self._writer = self._start_writer()

    def _open(self) -> sqlite3.Connection:
        private_file(self.path)  # 0600 before SQLite makes it, and its -wal and -shm
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AuditError(f"{self.path}: cannot use WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {'FULL' if self.sync else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            db.execute(_META)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
            fmt = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()[0]
            if fmt != str(FORMAT_VERSION):
                raise AuditError(f"{self.path}: audit format {fmt}; this version writes and "
                                 f"verifies format {FORMAT_VERSION} only")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('segment', ?)", (self.segment,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
            if row is None:
                # A head lost with records still present: continue after the last record
                # (verify reports the missing head's history as it finds it).
                last = db.execute(
                    "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                seq, hash_ = (0, genesis(self.segment)) if last is None else last
                db.execute("INSERT INTO head (id, seq, hash, mac) VALUES (1, ?, ?, ?)",
                           (seq, hash_, self._mac(seq, hash_)))
            else:
                # Continue from the head, never from the last row: a truncated tail stays
                # a visible gap instead of being papered over.
                seq, hash_ = row
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        if not isinstance(seq, int) or not isinstance(hash_, bytes):
            db.close()
            raise AuditError(f"{self.path}: corrupt audit head")
        self._seq: int = seq
        self._hash: bytes = hash_
        self._commits = 0
        return db

    def _mac(self, seq: int, hash_: bytes) -> bytes | None:
        if self._head_key is None:
            return None
        return _head_mac(self._head_key, self.segment, seq, hash_)

    def _start_writer(self) -> Any:
        """Hand the segment to the native writer (native/auditw.c): from here on it owns
        the file; the Python connection that set it up closes."""
        self._db.close()
        err = _ffi.new("char[512]")
        key = self._head_key
        writer = _lib.auditw_open(
            self.path.encode(), self.segment.encode(), self._seq, self._hash,
            key if key is not None else _ffi.NULL, len(key) if key is not None else 0,
            int(self.sync), self.wake_at, int(self.max_delay * 1e6), err, 512)
        if writer == _ffi.NULL:
            os.close(self._lock_fd)
            raise AuditError(_ffi.string(err).decode("utf-8", "replace"))
        return writer

    # ---- caller side

    def append(self, event: AuditEvent) -> None:
        """Queue ``event``; the writer thread encodes, hashes and commits it. Thread-safe."""
        if not isinstance(event, AuditEvent):
            raise TypeError(f"AuditLog.append takes an AuditEvent, not {type(event).__name__}")
        self.record(event.time, event.instance, event.principal, event.action, event.key_id,
                    event.key_version, event.result, event.request_id, event.details)

    def record(self, time_: float, instance: str, principal: str, action: str,
               key_id: str | None, key_version: str | None, result: str, request_id: str,
               details: Mapping[str, str]) -> None:
        """Queue an event given as the fields of an :class:`AuditEvent`, unchecked: the
        trusted fast path for a caller that builds the values itself (the KMS service).

        ``time_`` must be a finite float (or int), the other fields str (``key_id`` and
        ``key_version`` may be None), ``details`` a str -> str mapping. A value of another
        type fails the log (closed) instead of being recorded. Thread-safe.
        """
        w = self._writer
        if self._closed or self._error is not None:
            raise AuditError(self._why_closed())
        try:
            kid = _ffi.NULL if key_id is None else key_id.encode("utf-8", "surrogatepass")
            kver = _ffi.NULL if key_version is None else key_version.encode("utf-8",
                                                                            "surrogatepass")
            inst = instance.encode("utf-8", "surrogatepass")
            prin = principal.encode("utf-8", "surrogatepass")
            act = action.encode("utf-8", "surrogatepass")
            res = result.encode("utf-8", "surrogatepass")
            rid = request_id.encode("utf-8", "surrogatepass")
            det = _details_json(details).encode("ascii") if details else b"{}"
            when = _time_text(time_)
        except (AttributeError, TypeError, ValueError) as exc:
            self._fail(f"a record could not be encoded: {exc!r}")
            return
        rc = _lib.auditw_append(w, when, inst, len(inst), prin, len(prin), act, len(act), kid,
                                0 if key_id is None else len(kid), kver,
                                0 if key_version is None else len(kver), res, len(res), rid,
                                len(rid), det, len(det))
        if rc:
            self._refresh_error()
            if self._error is None:
                self._fail("a record could not be encoded (invalid text)")
            raise AuditError(self._why_closed())

    @property
    def keyed(self) -> bool:
        """Whether the segment's head is MACed with a head key."""
        return self._head_key is not None

    def head_mac(self, seq: int, hash_: bytes) -> bytes | None:
        """The MAC this log's writer gives a head at (``seq``, ``hash_``); None if the log
        is not keyed (the shipper seals the heads of partial shipments with it:
        :mod:`kms.audit_ship`)."""
        return self._mac(seq, hash_)

    def head(self) -> tuple[int, bytes] | None:
        """The committed head (last seq, its hash) as the file says now; None if the file
        is gone (discarded at close, being empty)."""
        if not os.path.exists(self.path):
            return None
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            row = db.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
        finally:
            db.close()
        if row is None or not isinstance(row[0], int) or not isinstance(row[1], bytes):
            raise AuditError(f"{self.path}: corrupt audit head")
        return row[0], row[1]

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event recorded before this call is committed (and fsync'd
        when ``sync=True``); the writer starts on it at once, without its delay. Raises
        ``TimeoutError`` or :class:`AuditError`."""
        if self._closed:
            if self._error is not None:
                raise AuditError(self._why_closed())
            return  # close() committed everything recorded before it
        rc = _lib.auditw_flush(self._writer, -1 if timeout is None else int(timeout * 1e6))
        if rc == 1:
            raise TimeoutError(f"audit flush did not finish within {timeout} s")
        if rc:
            self._refresh_error()
            raise AuditError(self._why_closed())

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the segment. Idempotent."""
        if self._closed:
            return
        self._closed = True
        err = _ffi.new("char[512]")
        _lib.auditw_flush(self._writer, -1)  # commit what is queued; its outcome is below
        self._seq_at_close = int(_lib.auditw_last_seq(self._writer))
        self._commits_at_close = int(_lib.auditw_commits(self._writer))
        if _lib.auditw_close(self._writer, err, 512) and self._error is None:
            self._error = _ffi.string(err).decode("utf-8", "replace")
        self._writer = None
        if self.discard_if_empty and self._error is None and self._seq_at_close == 0:
            self._discard()  # still under the lock: nobody else can be writing it
        os.close(self._lock_fd)
        if self._error is not None:
            raise AuditError(self._why_closed())

    def _fail(self, why: str) -> None:
        if self._error is None:
            self._error = why
        _lib.auditw_fail(self._writer, why.encode("utf-8", "replace"))

    def _refresh_error(self) -> None:
        if self._writer is not None and self._error is None:
            buf = _ffi.new("char[512]")
            if _lib.auditw_error(self._writer, buf, 512):
                self._error = _ffi.string(buf).decode("utf-8", "replace")

    def _discard(self) -> None:
        """Delete the (empty) segment: database, WAL, shared memory, then the lock file,
        which a waiting writer notices (see :func:`_lock_segment`)."""
        for path in (self.path, self.path + "-wal", self.path + "-shm", self._lock_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Events queued but not yet taken by the writer."""
        return 0 if self._writer is None else int(_lib.auditw_pending(self._writer))

    @property
    def commits(self) -> int:
        """Transactions committed by this writer (each holds one or more records)."""
        if self._writer is None:
            return self._commits_at_close
        return int(_lib.auditw_commits(self._writer))

    @property
    def last_seq(self) -> int:
        """The seq of the last committed record."""
        if self._writer is None:
            return self._seq_at_close
        return int(_lib.auditw_last_seq(self._writer))

    def _why_closed(self) -> str:
        self._refresh_error()
        if self._error is not None:
            return f"audit segment {self.segment!r} failed: {self._error}"
        return f"audit segment {self.segment!r} is closed"


def _time_text(t: float) -> bytes:
    """The record's time as Python writes it in JSON: repr of a finite float (an int stays
    an int, as json.dumps writes it)."""
    if type(t) is float:
        if t != t or t in (_INF, -_INF):
            raise ValueError("time must be finite")
        return repr(t).encode("ascii")
    if type(t) is int:
        return str(t).encode("ascii")
    raise TypeError(f"time must be a number, not {type(t).__name__}")


_INF = float("inf")


# --------------------------------------------------------------------------- verify

@dataclass(slots=True)
class SegmentHead:
    segment: str
    records: int
    seq: int
    hash: str  # hex
    source: str = "file"  # what was verified: "file", or "shipped from <location>"


@dataclass(slots=True)
class VerifyReport:
    ok: bool = True
    records: int = 0
    segments: int = 0
    problems: list[str] = field(default_factory=list)
    heads: list[SegmentHead] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


def seq_span(lo: int, hi: int) -> str:
    """``seq N`` or ``seq LO..HI``, as problems name records."""
    return f"seq {lo}" if lo == hi else f"seq {lo}..{hi}"


@dataclass(slots=True)
class _Anomaly:
    seq: int
    prev_hash: bytes
    hash: bytes
    record: bytes | None  # None: malformed row
    hash_ok: bool
    link_ok: bool  # prev_hash equals the stored hash of the previous row (or genesis)
    gap: bool  # records are missing right before this row
    why: str = ""


_MAX_DIAGNOSED = 10_000
_SEARCH_WINDOW = 256
_SEARCH_BUDGET = 2_000_000


def _row_record(text: object) -> bytes:
    """The hashed bytes of a stored record; ValueError/TypeError unless it is a well-formed
    record of this format in its canonical encoding (so each record has one reading)."""
    if not isinstance(text, str):
        raise TypeError("record is not text")
    try:
        fields = json.loads(text)
    except RecursionError:  # (json.loads's own limit on nesting)
        raise ValueError("record is nested too deep to be one") from None
    if not isinstance(fields, list) or len(fields) != 10:
        raise ValueError("record is not a list of 10 fields")
    if type(fields[0]) is not int or fields[0] != FORMAT_VERSION:
        raise ValueError(f"unknown record format {fields[0]!r}")
    details = fields[9]
    if not isinstance(details, dict):
        raise TypeError("details is not a JSON object")
    f = fields
    AuditEvent(f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], details)  # its type checks
    if _record(f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], details) != text:
        raise ValueError("record is not in the canonical encoding")
    return text.encode("ascii")


def verify_segment_file(path: str, segment: str, report: VerifyReport, *,
                        head_key: bytes | None = None,
                        anchors: Sequence[tuple[int, str]] = (), where: str | None = None,
                        source: str = "file") -> None:
    """Check one segment file (chain, head, head MAC with ``head_key``, the (seq, hash hex)
    ``anchors``) into ``report``, as :func:`verify` does for each file of a directory.
    ``where`` prefixes its problems (default ``segment NAME``); ``source`` is the
    :attr:`SegmentHead.source` of its head (:mod:`kms.audit_ship` verifies shipped copies
    with it, materialised in the segment format)."""
    _verify_segment(path, segment, report, head_key, anchors, where, source)


def _verify_segment(path: str, segment: str, report: VerifyReport,
                    head_key: bytes | None, anchors: Sequence[tuple[int, str]],
                    where: str | None = None, source: str = "file") -> None:
    where = where or f"segment {segment}"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        report.problem(f"{where}: cannot open {path}: {exc}")
        return
    first = len(report.problems)
    try:
        db.execute("BEGIN")  # one snapshot for rows and head, even while a writer runs
        try:
            _check_segment(db, segment, where, report, head_key, anchors, source)
        finally:
            db.execute("COMMIT")
    except sqlite3.Error as exc:
        report.problem(f"{where}: unreadable: {exc}")
    finally:
        db.close()
    report.problems[first:] = sorted(report.problems[first:], key=_problem_order)


_SEQ_RE = re.compile(r": seq (-?\d+)")


def _problem_order(text: str) -> int:
    """Sort a segment's problems by the first seq they name (segment-wide ones first)."""
    m = _SEQ_RE.search(text)
    return -(1 << 62) if m is None else int(m.group(1))


def _check_segment(db: sqlite3.Connection, segment: str, where: str, report: VerifyReport,
                   head_key: bytes | None, anchors: Sequence[tuple[int, str]],
                   source: str = "file") -> None:
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    if meta.get("segment") != segment:
        report.problem(f"{where}: file names segment {segment!r} but it was created as "
                       f"{meta.get('segment')!r} (file renamed or copied)")
    if meta.get("format") != str(FORMAT_VERSION):
        report.problem(f"{where}: audit format {meta.get('format')!r}; this version verifies "
                       f"format {FORMAT_VERSION} only (segment not checked)")
        return
    gen = genesis(segment)
    anomalies: list[_Anomaly] = []
    undiagnosed = 0
    count = 0
    last_seq = 0
    last_hash = gen
    for seq, text, prev_hash, hash_ in db.execute(
            "SELECT seq, record, prev_hash, hash FROM records ORDER BY seq"):
        count += 1
        why = ""
        record: bytes | None
        try:
            record = _row_record(text)
            if not isinstance(prev_hash, bytes) or not isinstance(hash_, bytes):
                raise TypeError("prev_hash/hash are not blobs")
        except (ValueError, TypeError) as exc:
            record, why = None, str(exc)
        if seq < 1:
            report.problem(f"{where}: seq {seq}: not a valid sequence number")
            continue
        gap = seq != last_seq + 1
        if gap:
            report.problem(f"{where}: {seq_span(last_seq + 1, seq - 1)}: missing "
                           "(records removed)")
        if record is None:
            report.problem(f"{where}: seq {seq}: malformed record: {why}")
            last_seq = seq
            last_hash = hash_ if isinstance(hash_, bytes) else b""
            continue
        hash_ok = chain_hash(prev_hash, seq, record) == hash_
        link_ok = prev_hash == last_hash
        if not hash_ok or (not link_ok and not gap):
            if len(anomalies) < _MAX_DIAGNOSED:
                anomalies.append(_Anomaly(seq, prev_hash, hash_, record, hash_ok, link_ok,
                                          gap))
            else:
                undiagnosed += 1
        last_seq, last_hash = seq, hash_
    report.records += count
    if anomalies:
        _diagnose(db, where, gen, anomalies, report)
    if undiagnosed:
        report.problem(f"{where}: {undiagnosed} more records fail the chain (not itemised)")
    _check_head(db, segment, where, gen, last_seq, last_hash, report, head_key, count, source)
    for seq, hex_hash in anchors:
        if seq == 0:
            stored: Any = (gen,)
        else:
            stored = db.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()
        if stored is None:
            report.problem(f"{where}: seq {seq}: anchored record missing")
        elif not isinstance(stored[0], bytes) or stored[0].hex() != hex_hash.lower():
            report.problem(f"{where}: seq {seq}: hash differs from the anchor {hex_hash} "
                           "(the chain up to it was rewritten or rolled back)")


def _diagnose(db: sqlite3.Connection, where: str, gen: bytes, anomalies: list[_Anomaly],
              report: VerifyReport) -> None:
    # Where does each broken row's prev_hash point? (one more scan, memory O(anomalies))
    wanted = {a.prev_hash for a in anomalies}
    owner: dict[bytes, int] = {}
    for seq, h in db.execute("SELECT seq, hash FROM records"):
        if h in wanted:
            owner.setdefault(h, seq)
    budget = _SEARCH_BUDGET
    offset = 0
    moved: list[tuple[int, int]] = []  # (seq now, seq written as), collapsed into runs
    out: list[tuple[int, str]] = []

    def flush_moved() -> None:
        i = 0
        while i < len(moved):
            j = i
            while (j + 1 < len(moved) and moved[j + 1][0] == moved[j][0] + 1
                   and moved[j + 1][1] == moved[j][1] + 1):
                j += 1
            (s0, t0), (s1, t1) = moved[i], moved[j]
            if s0 == s1:
                out.append((s0, f"{where}: seq {s0}: holds the record written as seq {t0} "
                                "(records reordered or renumbered)"))
            else:
                out.append((s0, f"{where}: {seq_span(s0, s1)}: hold the records written as "
                                f"seq {t0}..{t1} (records renumbered; shifted by "
                                f"{s0 - t0:+d})"))
            i = j + 1
        moved.clear()

    for a in anomalies:
        assert a.record is not None
        s = a.seq
        found: int | None = None
        if not a.hash_ok:
            candidates: list[int] = []
            if offset:
                candidates.append(s - offset)
            o = owner.get(a.prev_hash)
            if o is not None:
                candidates.append(o + 1)
            if a.prev_hash == gen:
                candidates.append(1)
            for d in range(1, _SEARCH_WINDOW + 1):
                candidates.extend((s - d, s + d))
            for t in candidates:
                if t < 1 or t == s or budget <= 0:
                    continue
                budget -= 1
                if chain_hash(a.prev_hash, t, a.record) == a.hash:
                    found = t
                    break
        if found is not None:
            offset = s - found
            if moved and moved[-1][0] != s - 1:
                flush_moved()
            moved.append((s, found))
        else:
            if not a.hash_ok:
                flush_moved()
                tail = "" if a.link_ok or a.gap else " and does not link to seq " \
                    f"{s - 1}"
                out.append((s, f"{where}: seq {s}: record edited (hash mismatch){tail}"))
        if a.link_ok or a.gap:
            continue
        o = owner.get(a.prev_hash)
        if found is not None and o is None and a.prev_hash != gen:
            after = "does not start from the genesis" if s == 1 else \
                f"does not link to seq {s - 1}"
            out.append((s, f"{where}: seq {s}: {after}: the record written as seq "
                           f"{found - 1} is missing (removed)"))
        elif s == 1:
            out.append((s, f"{where}: seq 1: bad genesis (the chain does not start from "
                           "this segment's genesis: moved from another segment or rewritten)"))
        elif a.prev_hash == gen:
            out.append((s, f"{where}: seq {s}: links to the genesis: seq 1..{s - 1} are "
                           "not part of the original chain (inserted or replaced)"))
        elif o is not None:
            out.append((s, f"{where}: seq {s}: links to seq {o}, not seq {s - 1} (records "
                           "inserted, removed or reordered in between)"))
        elif a.hash_ok:
            out.append((s, f"{where}: seq {s}: does not link to seq {s - 1} (seq {s - 1} was "
                           "rewritten with a recomputed hash, or inserted)"))
    flush_moved()
    out.sort(key=lambda item: item[0])  # stable: a row's own problem before its link's
    for _, text in out:
        report.problem(text)


def _check_head(db: sqlite3.Connection, segment: str, where: str, gen: bytes, last_seq: int,
                last_hash: bytes, report: VerifyReport, head_key: bytes | None,
                count: int, source: str = "file") -> None:
    head = db.execute("SELECT seq, hash, mac FROM head WHERE id = 1").fetchone()
    if head is None:
        report.problem(f"{where}: head missing (cannot tell whether the tail was removed)")
        return
    hseq, hhash, mac = head
    if not isinstance(hseq, int) or not 0 <= hseq < 1 << 63 or not isinstance(hhash, bytes):
        report.problem(f"{where}: head malformed")
        return
    report.heads.append(SegmentHead(segment, count, hseq, hhash.hex(), source))
    if hseq > last_seq:
        report.problem(f"{where}: {seq_span(last_seq + 1, hseq)}: missing at the end (tail "
                       f"truncated; the head says the last record is seq {hseq})")
    elif hseq < last_seq:
        report.problem(f"{where}: {seq_span(hseq + 1, last_seq)}: beyond the head (seq {hseq}); "
                       "records added outside the writer")
        stored = db.execute("SELECT hash FROM records WHERE seq = ?", (hseq,)).fetchone()
        expect = gen if hseq == 0 else (stored[0] if stored else None)
        if expect != hhash:
            report.problem(f"{where}: seq {hseq}: hash differs from the head")
    elif hhash != last_hash:
        what = "the genesis" if hseq == 0 else f"seq {hseq}"
        report.problem(f"{where}: {what}: hash differs from the head (tail rewritten)")
    if head_key is not None:
        if mac is None:
            report.problem(f"{where}: head has no MAC (written without the head key, or "
                           "the MAC was removed)")
        elif not isinstance(mac, bytes) or not hmac.compare_digest(
                mac, _head_mac(head_key, segment, hseq, hhash)):
            report.problem(f"{where}: head MAC invalid at seq {hseq} (head rewritten, or "
                           "wrong key)")


def write_segment_file(path: str, segment: str,
                       rows: Iterable[Sequence[tuple[int, str, bytes, bytes]]],
                       head: tuple[int, bytes, bytes | None]) -> None:
    """Write a new segment file at ``path`` in this format from rows given elsewhere (pages
    of (seq, record text, prev_hash, hash)) and a head (seq, hash, MAC): a shipped copy, to be
    checked by :func:`verify_segment_file` exactly as a file of the writer is. Nothing is
    checked here; the file is not durable (it is a scratch copy)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        db.execute(_META)
        db.executemany("INSERT INTO meta VALUES (?, ?)",
                       (("format", str(FORMAT_VERSION)), ("segment", segment)))
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        for page in rows:
            db.executemany("INSERT INTO records (seq, record, prev_hash, hash) VALUES "
                           "(?, ?, ?, ?)", page)
        db.execute("INSERT INTO head (id, seq, hash, mac) VALUES (1, ?, ?, ?)", head)
        db.execute("COMMIT")
    finally:
        db.close()


def segment_files(directory: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(segment, path) of every segment file in ``directory``, by name."""
    d = os.fspath(directory)
    out = []
    for name in sorted(os.listdir(d)):
        m = _FILE_RE.fullmatch(name)
        if m:
            out.append((m.group(1), os.path.join(d, name)))
    return out


def parse_anchor(text: str) -> tuple[str, int, str]:
    """``SEGMENT:SEQ:HASH`` (as ``audit verify`` prints it) -> (segment, seq, hash hex)."""
    parts = text.strip().rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not re.fullmatch(r"[0-9a-fA-F]{64}",
                                                                        parts[2]):
        raise ValueError(f"bad anchor {text!r} (want SEGMENT:SEQ:SHA256HEX)")
    return parts[0], int(parts[1]), parts[2].lower()


def verify(directory: str | os.PathLike[str], *, head_key: bytes | None = None,
           segments: Iterable[str] | None = None,
           anchors: Iterable[tuple[str, int, str]] = (),
           keyed: Iterable[str] | None = None) -> VerifyReport:
    """Check every segment (or the named ones) in ``directory``.

    ``anchors`` are (segment, seq, hash hex) triples recorded earlier, e.g. from a previous
    report's ``heads`` or the store's checkpoints (:mod:`kms.audit_anchor`), and kept outside
    the audit directory: each must still be in its chain, and its segment must exist.
    ``head_key`` checks the heads' MACs: of every segment, or only of those in ``keyed``.
    """
    keyed_set = None if keyed is None else set(keyed)
    report = VerifyReport()
    d = os.fspath(directory)
    if not os.path.isdir(d):
        report.problem(f"{d}: no such audit directory")
        return report
    by_segment: dict[str, list[tuple[int, str]]] = {}
    for seg, seq, hex_hash in anchors:
        by_segment.setdefault(seg, []).append((seq, hex_hash))
    wanted = None if segments is None else set(segments)
    found = set()
    for segment, path in segment_files(d):
        if wanted is not None and segment not in wanted:
            continue
        found.add(segment)
        report.segments += 1
        key = head_key if keyed_set is None or segment in keyed_set else None
        _verify_segment(path, segment, report, key, by_segment.get(segment, []))
    required = (wanted or set()) | (set(by_segment) if wanted is None else set())
    for missing in sorted(required - found):
        report.problem(f"segment {missing}: missing ({segment_path(d, missing)} not found)")
    return report
