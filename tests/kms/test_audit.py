"""The audit trail: real SQLite segments, real writer threads and processes, raw-SQL tampering."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kms import audit
from kms.audit import AuditError, AuditEvent, AuditLog, chain_hash, verify
from kms.cli import audit as audit_cli

ROOT = Path(__file__).resolve().parents[2]
N_TAMPER = 10  # records in the tampered segments


def event(i: int, **over: object) -> AuditEvent:
    fields: dict[str, object] = dict(
        time=1_700_000_000.0 + i / 8, instance="default", principal=f"user{i % 3}",
        action="kms:Encrypt", key_id=f"key-{i % 5}", key_version=f"{i:032x}", result="ok",
        request_id=f"req-{i}", details={"purpose": f"p{i}", "team": "blue"})
    fields.update(over)
    return AuditEvent(**fields)  # type: ignore[arg-type]


FIELDS = ("v", "time", "instance", "principal", "action", "key_id", "key_version", "result",
          "request_id", "details")


def rows(path: Path) -> list[dict[str, Any]]:
    """The stored rows (seq, record, prev_hash, hash), each with its record's fields decoded."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        stored = db.execute("SELECT * FROM records ORDER BY seq").fetchall()
    finally:
        db.close()
    out = []
    for r in stored:
        row = dict(r)
        row.update(zip(FIELDS, json.loads(r["record"]), strict=True))
        out.append(row)
    return out


def record_text(fields: list[object]) -> str:
    """A record as the format documents it (the tests' independent encoder)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def edit(path: Path, seq: int, name: str, value: object) -> None:
    """Change one field inside a stored record, re-encoded canonically; hashes untouched."""
    r = next(r for r in rows(path) if r["seq"] == seq)
    fields = [value if f == name else r[f] for f in FIELDS]
    sql(path, "UPDATE records SET record = ? WHERE seq = ?", params=(record_text(fields), seq))


def sql(path: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        for s in statements:
            db.execute(s, params if "?" in s else ())
        db.execute("COMMIT")
    finally:
        db.close()


def problems_text(directory: Path) -> str:
    report = verify(directory)
    assert not report.ok
    assert report.problems
    return "\n".join(report.problems)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- writing


def test_threads_append_flush_verify(tmp_path: Path) -> None:
    n_threads, per_thread = 8, 1500
    log = AuditLog(tmp_path, "worker-0", sync=False)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                log.append(event(t * per_thread + i))
                if i % 500 == 499:
                    log.flush()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.flush(timeout=30)
    assert not errors
    total = n_threads * per_thread
    assert log.last_seq == total
    log.close()

    report = verify(tmp_path)
    assert report.ok, report.problems
    assert (report.records, report.segments) == (total, 1)
    stored = rows(tmp_path / "audit-worker-0.db")
    assert [r["seq"] for r in stored] == list(range(1, total + 1))
    assert sorted(r["request_id"] for r in stored) == sorted(f"req-{i}" for i in range(total))
    assert report.heads[0].seq == total
    assert report.heads[0].hash == stored[-1]["hash"].hex()


def test_stored_chain_matches_the_documented_format(tmp_path: Path) -> None:
    with AuditLog(tmp_path, "fmt", sync=False) as log:
        for i in range(3):
            log.append(event(i))
        log.record(1_700_000_000.5, "default", "", "kms:Decrypt", None, None, "ok", "req-r",
                   {"b": "2", "a": "1"})
    stored = rows(tmp_path / "audit-fmt.db")
    assert len(stored) == 4
    prev = audit.genesis("fmt")
    for i, r in enumerate(stored):
        e = event(i) if i < 3 else AuditEvent(1_700_000_000.5, "default", "", "kms:Decrypt",
                                               None, None, "ok", "req-r", {"a": "1", "b": "2"})
        body = record_text([2, e.time, e.instance, e.principal, e.action, e.key_id,
                            e.key_version, e.result, e.request_id, dict(e.details)])
        assert r["record"] == body  # stored exactly as hashed
        record = body.encode("ascii")
        assert record == audit.canonical(e)
        assert r["prev_hash"] == prev
        assert r["hash"] == hashlib.sha256(prev + (i + 1).to_bytes(8, "big") + record).digest()
        assert r["hash"] == chain_hash(prev, i + 1, record)
        prev = r["hash"]
    # The view decodes the records into columns for SQL queries.
    db = sqlite3.connect(tmp_path / "audit-fmt.db")
    try:
        view = db.execute("SELECT seq, v, time, instance, principal, action, key_id, "
                          "key_version, result, request_id, details, hash FROM audit "
                          "ORDER BY seq").fetchall()
    finally:
        db.close()
    assert [v[:10] for v in view] == [(r["seq"], *[r[f] for f in FIELDS[:-1]])
                                      for r in stored]
    assert [json.loads(v[10]) for v in view] == [r["details"] for r in stored]
    assert [v[11] for v in view] == [r["hash"] for r in stored]


@pytest.mark.parametrize("text", [
    "", "plain", "quote\" backslash\\ slash/", "ctl\x00\x01\x1f\x7f\n\t\r",
    "ünïcödé \u2603 \U0001f512", "lone \ud800 surrogate", "</script>&'",
])
@pytest.mark.parametrize("t", [0.0, 1e-7, 1_700_000_000.123456, 5e20, 123456789012345.67])
def test_canonical_equals_json_dumps(text: str, t: float) -> None:
    details = {text: text, "b": "x", "a" + text: "", "é": text}
    e = AuditEvent(t, text, text, "kms:" + text, text or None, None, text, text, details)
    expect = json.dumps([2, t, text, text, "kms:" + text, e.key_id, None, text, text, details],
                        sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert audit.canonical(e) == expect.encode("ascii")
    assert json.loads(expect) == [2, t, text, text, "kms:" + text, e.key_id, None, text, text,
                                  details]


def test_reopen_continues_the_chain_and_segment_is_exclusive(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "worker-1", sync=False)
    with pytest.raises(AuditError, match="in use"):
        AuditLog(tmp_path, "worker-1")
    for i in range(5):
        log.append(event(i))
    log.close()
    log.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        log.append(event(99))
    log.flush()  # nothing pending: returns

    with AuditLog(tmp_path, "other", sync=False) as other, pytest.raises(TypeError):
        other.append({"action": "kms:Encrypt"})  # type: ignore[arg-type]

    with AuditLog(tmp_path, "worker-1", sync=False) as again:
        assert again.last_seq == 5
        for i in range(5, 9):
            again.append(event(i))
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert report.records == 9
    assert [r["request_id"] for r in rows(tmp_path / "audit-worker-1.db")] == [
        f"req-{i}" for i in range(9)]


def test_reopen_after_tail_truncation_keeps_the_gap(tmp_path: Path) -> None:
    with AuditLog(tmp_path, "s", sync=False) as log:
        for i in range(6):
            log.append(event(i))
    sql(tmp_path / "audit-s.db", "DELETE FROM records WHERE seq > 4")
    with AuditLog(tmp_path, "s", sync=False) as log:
        log.append(event(6))
    text = problems_text(tmp_path)
    assert "seq 5..6: missing (records removed)" in text
    assert [r["seq"] for r in rows(tmp_path / "audit-s.db")] == [1, 2, 3, 4, 7]


def test_group_commit_batches_and_lone_events_commit_at_once(tmp_path: Path) -> None:
    with AuditLog(tmp_path, "g", sync=True) as log:
        for i in range(20_000):
            log.append(event(i))
        log.flush()
        assert log.last_seq == 20_000
        # The writer takes everything waiting per transaction: far fewer commits than events.
        assert 1 <= log.commits < 2_000
        # flush() does not wait for the batching delay: it starts a commit at once.
        waits = []
        for i in range(20):
            started = time.perf_counter()
            log.append(event(i))
            log.flush()
            waits.append(time.perf_counter() - started)
        assert sorted(waits)[10] < 0.05
    assert verify(tmp_path).records == 20_020


def wait_for(predicate: Any, timeout: float = 10.0) -> float:
    """Seconds until ``predicate()`` holds (fails after ``timeout``)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.002)
    return time.monotonic() - started


def test_batching_waits_for_wake_at_records_or_max_delay(tmp_path: Path) -> None:
    # A long delay: only the wake_at-th record (or flush, or close) starts a commit.
    with AuditLog(tmp_path, "b", sync=False, wake_at=50, max_delay=60.0) as log:
        for i in range(49):
            log.append(event(i))
        time.sleep(0.3)
        assert (log.last_seq, log.commits, log.pending) == (0, 0, 49)
        log.record(1.0, "default", "", "kms:Sign", None, None, "ok", "req-49", {})
        wait_for(lambda: log.last_seq == 50)
        assert log.commits == 1
        log.append(event(50))
        time.sleep(0.2)
        assert log.last_seq == 50
        log.flush(timeout=10)  # no waiting for the delay
        assert (log.last_seq, log.commits) == (51, 2)
        log.append(event(51))  # committed by close()
    assert verify(tmp_path).records == 52

    # A short delay: a lone record is committed by itself soon after (the durability window).
    with AuditLog(tmp_path, "c", sync=True, wake_at=10_000, max_delay=0.05) as log:
        log.append(event(0))
        took = wait_for(lambda: log.last_seq == 1)
        assert 0.02 < took < 5
        log.append(event(1))
        log.append(event(2))
        wait_for(lambda: log.last_seq == 3)
        assert log.commits == 2
    with pytest.raises(ValueError):
        AuditLog(tmp_path, "e", wake_at=0)
    with pytest.raises(ValueError):
        AuditLog(tmp_path, "e", max_delay=-1)
    assert verify(tmp_path).ok


def test_record_fast_path_stores_what_append_stores(tmp_path: Path) -> None:
    events = [event(i) for i in range(6)] + [
        event(6, key_id=None, key_version=None, details={}, principal=""),
        AuditEvent(7, "inst", "p", "kms:X", "k", None, "ok", "r", {"z": "1", "a": "\u2603"})]
    with AuditLog(tmp_path / "a", "s", sync=False) as a, \
            AuditLog(tmp_path / "r", "s", sync=False) as r:
        for e in events:
            a.append(e)
            r.record(e.time, e.instance, e.principal, e.action, e.key_id, e.key_version,
                     e.result, e.request_id, dict(e.details))
        r.record(8, "inst", "p", "kms:X", "k", None, "ok", "r8", {})  # an int time
        a.append(event(8, time=8, instance="inst", principal="p", action="kms:X",
                       key_id="k", key_version=None, request_id="r8", details={}))
    stored_a, stored_r = rows(tmp_path / "a" / "audit-s.db"), rows(tmp_path / "r" / "audit-s.db")
    assert [x["record"] for x in stored_r[:8]] == [audit.canonical(e).decode() for e in events]
    assert [x["hash"] for x in stored_a[:8]] == [x["hash"] for x in stored_r[:8]]
    assert stored_r[8]["time"] == 8 and stored_a[8]["time"] == 8.0
    assert verify(tmp_path / "a").ok
    assert verify(tmp_path / "r").ok

    # The fast path does not check its values: a wrong type fails the log (closed).
    log = AuditLog(tmp_path / "bad", "s", sync=False)
    log.record(1.0, "inst", "p", "kms:X", 5, None, "ok", "r", {})  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="failed"):
        log.flush(timeout=10)
    with pytest.raises(AuditError):
        log.record(1.0, "inst", "p", "kms:X", "k", None, "ok", "r", {})
    with pytest.raises(AuditError):
        log.close()
    assert verify(tmp_path / "bad").records == 0


def test_format_1_segment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit-old.db"
    sql(path, "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta VALUES ('format', '1'), ('segment', 'old')",
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    with pytest.raises(AuditError, match="format 1"):
        AuditLog(tmp_path, "old")
    assert verify(tmp_path).problems == [
        "segment old: audit format '1'; this version verifies format 2 only (segment not "
        "checked)"]


def test_write_failure_fails_closed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "f", sync=False)
    log.append(event(1))
    log.flush()
    sql(tmp_path / "audit-f.db", "CREATE TRIGGER refuse BEFORE INSERT ON records "
        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    log.append(event(2))
    with pytest.raises(AuditError, match="failed"):
        log.flush(timeout=10)
    with pytest.raises(AuditError, match="disk on fire"):
        log.append(event(3))
    with pytest.raises(AuditError):
        log.close()
    assert [r["request_id"] for r in rows(tmp_path / "audit-f.db")] == ["req-1"]
    assert verify(tmp_path).ok  # the failed batch left nothing behind


def test_bad_segment_name_and_flush_timeout_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditLog(tmp_path, "../escape")
    with AuditLog(tmp_path, sync=False) as log:  # default segment name
        log.append(event(1))
        log.flush(timeout=10)
        assert log.segment in os.path.basename(log.path)
    assert verify(tmp_path).ok


def test_verify_while_writing_sees_a_consistent_snapshot(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "live", sync=False)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            log.append(event(i))
            i += 1
            if i % 100 == 0:
                time.sleep(0.002)

    th = threading.Thread(target=writer)
    th.start()
    try:
        seen = []
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            report = verify(tmp_path)
            assert report.ok, report.problems
            seen.append(report.records)
    finally:
        stop.set()
        th.join()
        log.close()
    assert seen[-1] > seen[0]
    assert verify(tmp_path).ok


_CHILD = textwrap.dedent("""
    import sys, time
    from kms.audit import AuditEvent, AuditLog
    directory, segment, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    log = AuditLog(directory, segment, sync=True)
    i = 0
    def ev(i):
        return AuditEvent(time.time(), "default", "p", "kms:Sign", "k", None, "ok",
                          f"{segment}-{i}", {"n": str(i)})
    while True:
        for _ in range(250):
            log.append(ev(i))
            i += 1
        if mode == "count" and i >= 5000:
            log.close()
            print("done", i, flush=True)
            break
        log.flush()
        print("flushed", i, flush=True)
""")


def test_crash_durability(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), "crash", "forever"],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None
    flushed = 0
    try:
        for line in proc.stdout:
            word, n = line.split()
            assert word == "flushed"
            flushed = int(n)
            if flushed >= 2000:
                break
        time.sleep(0.05)  # let it append (and commit) some more
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert flushed >= 2000
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert report.records >= flushed
    stored = rows(tmp_path / "audit-crash.db")
    assert [r["request_id"] for r in stored[:flushed]] == [f"crash-{i}" for i in range(flushed)]


_WINDOW_CHILD = textwrap.dedent("""
    import sys, time
    from kms.audit import AuditLog
    log = AuditLog(sys.argv[1], "window", sync=True, max_delay=0.005)
    i = seen = 0
    while True:  # no flush: the writer commits on its own, within its delay
        for _ in range(20):
            log.record(time.time(), "default", "p", "kms:Encrypt", "k", "v", "ok",
                       f"window-{i}", {"ctx:n": str(i)})
            i += 1
        time.sleep(0.001)
        if log.last_seq != seen:
            seen = log.last_seq
            print("committed", seen, flush=True)
""")


def test_crash_without_flush_loses_only_the_uncommitted_tail(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WINDOW_CHILD, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None
    committed = 0
    try:
        for line in proc.stdout:
            word, n = line.split()
            assert word == "committed"
            committed = int(n)
            if committed >= 3000:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert committed >= 3000
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert report.records >= committed
    stored = rows(tmp_path / "audit-window.db")
    assert [r["request_id"] for r in stored] == [f"window-{i}" for i in range(len(stored))]
    assert [r["details"] for r in stored[:3]] == [{"ctx:n": str(i)} for i in range(3)]


def test_two_processes_two_segments(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), f"worker-{w}",
                               "count"], stdout=subprocess.PIPE, text=True, env=child_env())
             for w in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all(o.splitlines()[-1] == "done 5000" for o in outs), outs
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert (report.segments, report.records) == (2, 10_000)
    assert sorted(h.segment for h in report.heads) == ["worker-0", "worker-1"]


# --------------------------------------------------------------------------- events


def test_details_are_stored_as_given(tmp_path: Path) -> None:
    details = {"purpose": "backup", "z": "", "ünï": "välue \"quoted\" \n\u2603"}
    given = dict(details)
    e = event(1, details=details)
    details["purpose"] = "changed after construction"
    with AuditLog(tmp_path, "d", sync=False) as log:
        log.append(e)
        log.append(event(2, details={}, key_id=None, key_version=None, principal=""))
    stored = rows(tmp_path / "audit-d.db")
    assert stored[0]["details"] == given
    assert stored[1]["details"] == {}
    assert stored[1]["key_id"] is None and stored[1]["principal"] == ""
    assert verify(tmp_path).ok


@pytest.mark.parametrize("over", [
    {"details": {"k": 1}},
    {"details": {"k": b"bytes"}},
    {"details": {"k": None}},
    {"details": {1: "v"}},
    {"details": [("k", "v")]},
    {"principal": 5},
    {"action": None},
    {"key_id": 7},
    {"key_version": b"v"},
    {"request_id": 1.0},
    {"time": "now"},
    {"time": True},
])
def test_event_rejects_non_str_values(over: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        event(1, **over)


def test_event_rejects_non_finite_time_and_normalises_int_time() -> None:
    with pytest.raises(ValueError):
        event(1, time=float("nan"))
    assert event(1, time=5).time == 5.0
    assert isinstance(event(1, time=5).time, float)
    with pytest.raises(TypeError):
        event(1).details["x"] = "y"  # type: ignore[index]


# --------------------------------------------------------------------------- tampering


@pytest.fixture
def tampered(tmp_path: Path) -> Iterator[Path]:
    """A directory with one verified segment of N_TAMPER records; yields its db path."""
    with AuditLog(tmp_path, "t", sync=False) as log:
        for i in range(N_TAMPER):
            log.append(event(i))
    assert verify(tmp_path).ok
    yield tmp_path / "audit-t.db"


@pytest.mark.parametrize(("column", "value"), [
    ("time", 1.0),
    ("time", 1_700_000_000.625 + 1e-6),
    ("instance", "other"),
    ("principal", "mallory"),
    ("action", "kms:Decrypt"),
    ("key_id", "key-9"),
    ("key_id", None),
    ("key_version", "f" * 32),
    ("result", "AccessDenied"),
    ("request_id", "req-x"),
    ("details", {"purpose": "p5", "team": "red"}),
    ("details", {"purpose": "p5"}),
    ("details", {"purpose": "p5", "team": "blue", "extra": ""}),
    ("prev_hash", b"\0" * 32),
    ("hash", b"\1" * 32),
    ("v", 1),
    ("v", 3),
    ("details", ["purpose", "p5"]),
    ("key_id", 5),
    ("record", "not json"),
    ("record", "[2]"),
    ("record", None),
    # Same fields, other encodings (whitespace, key order, escapes): not the canonical form.
    ("record", "spaced"),
    ("record", "unsorted"),
    ("record", "escaped"),
])
def test_edited_field_is_reported_with_its_seq(tampered: Path, column: str,
                                               value: object) -> None:
    malformed = column in ("v", "record") or column == "details" and isinstance(value, list) \
        or value == 5
    if column in ("prev_hash", "hash"):
        sql(tampered, f"UPDATE records SET {column} = ? WHERE seq = 5", params=(value,))
    elif column == "record":
        r = rows(tampered)[4]
        fields = [r[f] for f in FIELDS]
        text = {"spaced": json.dumps(fields, sort_keys=True, ensure_ascii=True),
                "unsorted": record_text(fields).replace('{"purpose":', '{"team":"blue","purpose":')
                                               .replace(',"team":"blue"}', "}"),
                "escaped": record_text(fields).replace("kms:Encrypt", "kms:\\u0045ncrypt"),
                }.get(str(value), value)
        assert text != r["record"]
        if text is None:  # the column is NOT NULL: a NULL record cannot even be stored
            with pytest.raises(sqlite3.IntegrityError):
                sql(tampered, "UPDATE records SET record = NULL WHERE seq = 5")
            sql(tampered, "UPDATE records SET record = x'00' WHERE seq = 5")
        else:
            sql(tampered, "UPDATE records SET record = ? WHERE seq = 5", params=(text,))
    else:
        edit(tampered, 5, column, value)
    text = problems_text(tampered.parent)
    assert "segment t: seq 5:" in text
    if malformed:
        assert "segment t: seq 5: malformed record" in text
    if column in ("hash", "prev_hash") or malformed:
        return
    assert "seq 5: record edited (hash mismatch)" in text
    assert verify(tampered.parent).problems == [
        "segment t: seq 5: record edited (hash mismatch)"]


def test_removed_middle_record(tampered: Path) -> None:
    sql(tampered, "DELETE FROM records WHERE seq = 5")
    assert verify(tampered.parent).problems == [
        "segment t: seq 5: missing (records removed)"]


def test_removed_middle_records_renumbered(tampered: Path) -> None:
    # Hide the gap: delete seq 4 and move every later record down by one.
    sql(tampered, "DELETE FROM records WHERE seq = 4",
        "UPDATE records SET seq = seq - 1 WHERE seq > 4",
        f"UPDATE head SET seq = {N_TAMPER - 1}")
    text = problems_text(tampered.parent)
    assert "seq 4..9: hold the records written as seq 5..10" in text
    assert "seq 4: does not link to seq 3: the record written as seq 4 is missing" in text


def test_swapped_records(tampered: Path) -> None:
    cols = "record, prev_hash, hash"
    sql(tampered,
        f"CREATE TEMP TABLE a AS SELECT {cols} FROM records WHERE seq = 4",
        f"CREATE TEMP TABLE b AS SELECT {cols} FROM records WHERE seq = 5",
        "DELETE FROM records WHERE seq IN (4, 5)",
        f"INSERT INTO records (seq, {cols}) SELECT 5, * FROM a",
        f"INSERT INTO records (seq, {cols}) SELECT 4, * FROM b")
    assert [r["request_id"] for r in rows(tampered)][3:5] == ["req-4", "req-3"]
    text = problems_text(tampered.parent)
    assert "seq 4: holds the record written as seq 5 (records reordered" in text
    assert "seq 5: holds the record written as seq 4 (records reordered" in text


def test_swapped_contents_keeping_hashes_in_place(tampered: Path) -> None:
    # Swap only the records: every hash and prev_hash stays where it was.
    r4, r5 = rows(tampered)[3:5]
    sql(tampered, "UPDATE records SET record = ? WHERE seq = 4", params=(r5["record"],))
    sql(tampered, "UPDATE records SET record = ? WHERE seq = 5", params=(r4["record"],))
    assert [r["request_id"] for r in rows(tampered)][3:5] == ["req-4", "req-3"]
    report = verify(tampered.parent)
    assert report.problems == ["segment t: seq 4: record edited (hash mismatch)",
                               "segment t: seq 5: record edited (hash mismatch)"]


def test_removed_tail(tampered: Path) -> None:
    sql(tampered, "DELETE FROM records WHERE seq >= 8")
    assert verify(tampered.parent).problems == [
        "segment t: seq 8..10: missing at the end (tail truncated; the head says the last "
        "record is seq 10)"]


def test_removed_everything(tampered: Path) -> None:
    sql(tampered, "DELETE FROM records")
    assert "seq 1..10: missing at the end" in problems_text(tampered.parent)


def test_removed_head(tampered: Path) -> None:
    sql(tampered, "DELETE FROM head")
    assert "head missing" in problems_text(tampered.parent)


def _forge(path: Path, seq: int, prev: bytes, request_id: str) -> tuple[bytes, tuple[object,
                                                                                       ...]]:
    e = event(seq, request_id=request_id, principal="mallory")
    record = audit.canonical(e)
    h = chain_hash(prev, seq, record)
    return h, (seq, record.decode("ascii"), prev, h)


_INSERT = "INSERT INTO records (seq, record, prev_hash, hash) VALUES (?, ?, ?, ?)"


def test_forged_record_inserted_in_the_middle(tampered: Path) -> None:
    # Make room at seq 5 and insert a self-consistent forged record chained to seq 4.
    h4 = rows(tampered)[3]["hash"]
    _, forged = _forge(tampered, 5, h4, "forged")
    sql(tampered, "UPDATE records SET seq = -seq WHERE seq >= 5",
        "UPDATE records SET seq = 1 - seq WHERE seq < 0")
    sql(tampered, _INSERT, params=forged)
    assert [r["request_id"] for r in rows(tampered)][3:6] == ["req-3", "forged", "req-4"]
    text = problems_text(tampered.parent)
    assert "seq 6: links to seq 4, not seq 5" in text
    assert "seq 6..11: hold the records written as seq 5..10" in text
    assert "seq 11: beyond the head" in text


def test_forged_record_replacing_one_with_recomputed_hash(tampered: Path) -> None:
    h4 = rows(tampered)[3]["hash"]
    _, forged = _forge(tampered, 5, h4, "forged")
    sql(tampered, "DELETE FROM records WHERE seq = 5")
    sql(tampered, _INSERT, params=forged)
    assert verify(tampered.parent).problems == [
        "segment t: seq 6: does not link to seq 5 (seq 5 was rewritten with a recomputed "
        "hash, or inserted)"]


def test_full_rewrite_is_only_caught_with_the_head_key(tmp_path: Path) -> None:
    """The documented limit: a consistent rewrite of chain + head passes without the key."""
    key = os.urandom(32)
    with AuditLog(tmp_path, "k", sync=False, head_key=key) as log:
        for i in range(6):
            log.append(event(i))
    assert verify(tmp_path, head_key=key).ok
    assert verify(tmp_path, head_key=b"wrong").problems == [
        "segment k: head MAC invalid at seq 6 (head rewritten, or wrong key)"]
    path = tmp_path / "audit-k.db"
    # Attacker: drop the last two records and move the head back.
    h4 = rows(path)[3]["hash"]
    sql(path, "DELETE FROM records WHERE seq > 4", "UPDATE head SET seq = 4, hash = ?",
        params=(h4,))
    assert verify(tmp_path).ok  # undetectable from the file alone...
    assert not verify(tmp_path, head_key=key).ok  # ...but not with the key
    # Attacker: rewrite seq 3 and re-chain everything after it.
    prev = rows(path)[1]["hash"]
    for seq in (3, 4):
        h, forged = _forge(path, seq, prev, f"rewritten-{seq}")
        sql(path, f"DELETE FROM records WHERE seq = {seq}")
        sql(path, _INSERT, params=forged)
        prev = h
    sql(path, "UPDATE head SET hash = ?", params=(prev,))
    assert verify(tmp_path).ok
    assert verify(tmp_path, head_key=key).problems == [
        "segment k: head MAC invalid at seq 4 (head rewritten, or wrong key)"]


def _rechain(path: Path, segment: str, start: int) -> None:
    """The attacker's full rewrite: recompute every hash from ``start`` on, and the head."""
    stored = rows(path)
    prev = audit.genesis(segment) if start == 1 else stored[start - 2]["hash"]
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        for r in stored[start - 1:]:
            assert isinstance(r["record"], str) and isinstance(r["seq"], int)
            h = chain_hash(prev, r["seq"], r["record"].encode("ascii"))
            db.execute("UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?",
                       (prev, h, r["seq"]))
            prev = h
        db.execute("UPDATE head SET hash = ?", (prev,))
        db.execute("COMMIT")
    finally:
        db.close()


def test_anchors_catch_a_consistent_rewrite_and_a_rollback(tampered: Path) -> None:
    before = verify(tampered.parent)
    anchors = [(h.segment, h.seq, h.hash) for h in before.heads]
    early = ("t", 3, rows(tampered)[2]["hash"].hex())
    assert verify(tampered.parent, anchors=[*anchors, early]).ok
    edit(tampered, 2, "principal", "nobody")
    _rechain(tampered, "t", 2)
    assert verify(tampered.parent).ok  # undetectable from the file alone
    assert verify(tampered.parent, anchors=[*anchors, early]).problems == [
        f"segment t: seq 3: hash differs from the anchor {early[2]} (the chain up to it was "
        "rewritten or rolled back)",
        f"segment t: seq {N_TAMPER}: hash differs from the anchor {anchors[0][2]} (the chain "
        "up to it was rewritten or rolled back)"]
    # Roll back: drop the last records and the head with them.
    h7 = rows(tampered)[6]["hash"]
    sql(tampered, "DELETE FROM records WHERE seq > 7", "UPDATE head SET seq = 7, hash = ?",
        params=(h7,))
    assert verify(tampered.parent).ok
    assert f"seq {N_TAMPER}: anchored record missing" in "\n".join(
        verify(tampered.parent, anchors=anchors).problems)
    # An anchor for a segment that is gone is a problem too.
    assert verify(tampered.parent, anchors=[("worker-9", 0, "00" * 32)]).problems == [
        f"segment worker-9: missing ({tampered.parent / 'audit-worker-9.db'} not found)"]
    with pytest.raises(ValueError):
        audit.parse_anchor("t:x:" + "00" * 32)
    assert audit.parse_anchor("a:b:7:" + "AB" * 32) == ("a:b", 7, "ab" * 32)


def test_segment_file_moved_to_another_name(tampered: Path) -> None:
    shutil.copy(tampered, tampered.parent / "audit-u.db")
    report = verify(tampered.parent)
    assert report.segments == 2
    text = "\n".join(report.problems)
    assert "segment u: seq 1: bad genesis" in text
    assert "segment u: file names segment 'u' but it was created as 't'" in text
    assert not any(p.startswith("segment t:") for p in report.problems)


def test_named_segment_missing(tampered: Path) -> None:
    report = verify(tampered.parent, segments=["t", "worker-7"])
    assert report.problems == [
        f"segment worker-7: missing ({tampered.parent / 'audit-worker-7.db'} not found)"]
    assert not verify(tampered.parent / "nope").ok


# --------------------------------------------------------------------------- CLI


def test_cli_verify(tampered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_cli.main(["verify", "--dir", str(tampered.parent)]) == 0
    out = capsys.readouterr().out
    assert f"segment t: {N_TAMPER} records, head seq {N_TAMPER}, anchor t:{N_TAMPER}:" in out
    assert "1 segments, 10 records, 0 anchors, OK" in out
    anchor = out.split("anchor ")[1].split()[0]

    edit(tampered, 2, "result", "ok!")
    assert audit_cli.main(["verify", "--dir", str(tampered.parent)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: segment t: seq 2: record edited (hash mismatch)" in out
    assert "FAILED (1 problems)" in out

    # Re-chain after the edit (hashes, links and head): only the anchor still sees it.
    _rechain(tampered, "t", 2)
    assert audit_cli.main(["verify", "--dir", str(tampered.parent)]) == 0
    capsys.readouterr()
    anchor_file = tampered.parent.parent / "anchors"
    anchor_file.write_text(f"# taken before the rewrite\n{anchor}\n")
    assert audit_cli.main(["verify", "--dir", str(tampered.parent), "--anchor-file",
                       str(anchor_file)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: segment t: seq {N_TAMPER}: hash differs from the anchor" in out
    assert audit_cli.main(["verify", "--dir", str(tampered.parent), "--anchor", "t:1:zz"]) == 2


def test_cli_as_a_process_and_add_cli(tampered: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    done = subprocess.run([sys.executable, "-m", "kms.cli.audit", "verify", "--dir",
                           str(tampered.parent), "--head-key-file", str(key_file)],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    assert done.returncode == 1  # the segment was written without a head key
    assert "head has no MAC" in done.stdout

    import argparse
    parser = argparse.ArgumentParser()
    audit_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "verify", "--dir", str(tampered.parent)])
    assert args.func(args) == 0


# --------------------------------------------------------------------------- the service


class _AppendOnlyLog:
    """A log with only ``append`` (as test doubles and older callers have)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def append(self, event: AuditEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def test_service_records_calls_with_secret_context_values_redacted(
        svc_pool: Any, tmp_path: Path) -> None:
    from kms import Kms
    from kms import errors as E
    from kms.config import KmsSettings
    from kms.store import open_store
    from tests.database import database_for
    from tests.kms.conftest import T0, FakeClock

    clock = FakeClock()
    db = database_for(tmp_path / "kms.db")
    settings = KmsSettings(database=db, audit_dir=None, secret_context_keys=frozenset(
        {"pin"}))
    log = AuditLog(tmp_path / "audit", "svc-0", sync=False)
    kms = Kms(svc_pool, open_store(db), settings, audit=log, now=clock)
    try:
        c = kms.client("svc")
        key = c.create_key()
        context = {"purpose": "backup", "pin": "1234-secret", "secret:tok": "hunter2-secret"}
        ct = c.encrypt(key.key_id, b"data", context)
        clock.advance(1)
        with pytest.raises(E.NotFound):
            c.encrypt("00000000-0000-4000-8000-000000000000", b"data")
        log.flush(timeout=10)
    finally:
        kms.close()
    stored = rows(tmp_path / "audit" / "audit-svc-0.db")
    by_action = [(r["action"], r["result"]) for r in stored]
    assert by_action == [("kms:CreateKey", "ok"), ("kms:Encrypt", "ok"),
                         ("kms:Encrypt", "NotFound")]
    create, enc, failed = stored
    assert enc["details"] == {"ctx:purpose": "backup", "ctx:pin": "<redacted>",
                              "ctx:secret:tok": "<redacted>"}
    assert (enc["instance"], enc["principal"], enc["key_id"]) == ("svc", "", key.key_id)
    assert enc["key_version"] == key.primary_version and ct.ciphertext_blob
    assert (create["time"], enc["time"], failed["time"]) == (T0, T0, T0 + 86400.0)
    assert (failed["key_id"], failed["details"]) == (None, {})
    assert len({r["request_id"] for r in stored}) == 3
    assert verify(tmp_path / "audit").ok
    for path in (tmp_path / "audit").iterdir():
        data = path.read_bytes()
        assert b"1234-secret" not in data and b"hunter2-secret" not in data

    # A log without the fast path still gets AuditEvents, redacted the same way.
    plain = _AppendOnlyLog()
    kms = Kms(svc_pool, open_store(db), settings, audit=plain, now=clock)
    try:
        kms.client("svc").encrypt(key.key_id, b"data", context)
    finally:
        kms.close()
    [event] = plain.events
    assert (event.action, event.key_id, event.result) == ("kms:Encrypt", key.key_id, "ok")
    assert dict(event.details) == enc["details"]
