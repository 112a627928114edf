"""What shipping audit segments into the store costs (kms/audit_ship.py).

    python -m benchmarks.audit_ship [--records N] [--rounds R] [--postgres URL] [--json PATH]

A real segment (the native writer, keyed with a random head key) of ``--records`` records
(default 10,000) shaped as the service writes them (an Encrypt: key id, version, request
id, no details), then, into PostgreSQL (``--postgres URL``, a database this run may fill, or
a throw-away cluster of ``tests/postgres.py``: fsync and synchronous_commit are off there,
so commits cost less than on a production server) and into a SQLite store (WAL,
``synchronous=FULL``), per round:

* **catch-up**: one :meth:`kms.audit_ship.Shipper.run` with an ample budget ships the whole
  segment (transactions of :data:`kms.audit_ship.SHIP_BATCH` records) - the checkpoint after
  ``N`` records were written: its time, records per second, and this process's CPU per
  record (what a worker's scheduler thread spends, the database's own CPU not counted);
* **steady**: 10 s of traffic at 1,000 records/s between checkpoints, i.e. 10,000 new
  records per checkpoint, is the catch-up above; the idle checkpoint (nothing new: one read
  of the file's head) is timed too;
* **verify**: :func:`kms.audit_ship.verify_nodes` of the shipped copy from another location
  (paged out of the store, written to a scratch segment file, the chain recomputed).

Each round ships to a fresh location (a fresh copy), deleted after the round. Results: a
table, and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.postgres import database

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_JSON: Final = ROOT / "bench-results" / "audit_ship.json"


def _segment(directory: Path, n: int, key: bytes) -> Any:
    from kms.audit import AuditLog

    log = AuditLog(directory, "bench-1", head_key=key)
    key_id = str(uuid.uuid4())
    version = uuid.uuid4().hex
    t = time.time()
    for i in range(n):
        log.record(t + i * 1e-3, "default", "app", "kms:Encrypt", key_id, version, "ok",
                   str(uuid.uuid4()), {})
    log.flush()
    return log


def _measure(store: Any, log: Any, key: bytes, rounds: int, scratch: Path
             ) -> dict[str, Any]:
    from kms.audit_ship import Shipper, verify_nodes
    from kms.store import AuditCheckpoint

    catch_up, cpu, idle, verify_s = [], [], [], []
    n = log.last_seq
    statements = []
    stored_bytes = None
    for r in range(rounds):
        shipper = Shipper(log, store)
        shipper.location = f"bench-host:/round-{r}-{uuid.uuid4().hex[:6]}"
        before = getattr(store, "statements", 0)
        t0, c0 = time.perf_counter(), time.process_time()
        shipped = shipper.run(budget=3600.0)
        catch_up.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        statements.append(getattr(store, "statements", 0) - before)
        assert shipped == n, (shipped, n)
        t0 = time.perf_counter()
        assert shipper.run() == 0
        idle.append(time.perf_counter() - t0)
        head = store.shipped_audit_head(shipper.location, log.segment)
        cp = AuditCheckpoint(log.segment, True, head.seq, head.hash, 0.0, 0.0,
                             shipper.location)
        elsewhere = scratch / f"elsewhere-{uuid.uuid4().hex[:8]}"
        elsewhere.mkdir()
        t0 = time.perf_counter()
        report = verify_nodes(store, str(elsewhere), [cp], head_key=key)
        verify_s.append(time.perf_counter() - t0)
        assert report.ok and report.records == n, report.problems
        if r == 0 and hasattr(store, "statements"):  # PostgreSQL: the room the copy takes
            size = store._read(lambda db: db.execute(
                "SELECT pg_total_relation_size('audit_shipped')").fetchone()[0])
            stored_bytes = int(size)
        with store.transaction() as db:  # the next round's verify sees only its own copy
            for table in ("audit_shipped", "audit_shipped_heads"):
                db.execute(f"DELETE FROM {table} WHERE location = ?", (shipper.location,))
    med = statistics.median
    return {"records": n, "catch_up_s": catch_up, "idle_ms": [x * 1e3 for x in idle],
            "cpu_us_per_record": med(cpu) / n * 1e6,
            "verify_s": verify_s, "catch_up_records_per_s": n / med(catch_up),
            "verify_records_per_s": n / med(verify_s),
            "statements_per_catch_up": statements[0] if statements else None,
            "db_bytes_per_record": None if stored_bytes is None else stored_bytes / n,
            "file_bytes_per_record": _file_bytes(log.path) / n}


def _file_bytes(path: str) -> int:
    """The segment's size as a database (its WAL's pages included)."""
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.audit_ship", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--postgres", help="a postgresql:// URL (default: a throw-away cluster)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON,
                    help=f"(default {DEFAULT_JSON})")
    args = ap.parse_args(argv)
    if not 1 <= args.records <= 10_000_000 or not 1 <= args.rounds <= 100:
        ap.error("--records 1..10000000, --rounds 1..100")
    from kms.store import SqliteStore
    from kms.store.postgres import PostgresStore

    key = os.urandom(32)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="shipbench-") as tmp:
        scratch = Path(tmp)
        t0 = time.perf_counter()
        log = _segment(scratch / "audit", args.records, key)
        print(f"segment of {args.records:,} records written in "
              f"{time.perf_counter() - t0:.2f} s", flush=True)
        try:
            with database(args.postgres, "shipbench", "benchmarks.audit_ship") as url:
                for name, store in (("postgresql", PostgresStore(url)),
                                    ("sqlite", SqliteStore(scratch / "kms.db"))):
                    try:
                        results[name] = _measure(store, log, key, args.rounds, scratch)
                    finally:
                        store.close()
        finally:
            log.close()
    print(f"\n{'store':<11} {'catch-up s (median)':>20} {'records/s':>11} {'CPU us/rec':>11} "
          f"{'idle ms':>8} {'verify s':>9} {'verify rec/s':>13}")
    for name, r in results.items():
        print(f"{name:<11} {statistics.median(r['catch_up_s']):>20.3f} "
              f"{r['catch_up_records_per_s']:>11,.0f} {r['cpu_us_per_record']:>11.1f} "
              f"{statistics.median(r['idle_ms']):>8.2f} "
              f"{statistics.median(r['verify_s']):>9.3f} {r['verify_records_per_s']:>13,.0f}")
    pg = results.get("postgresql", {})
    if pg.get("statements_per_catch_up"):
        print(f"PostgreSQL statements per catch-up of {args.records:,} records: "
              f"{pg['statements_per_catch_up']}; the copy takes "
              f"{pg['db_bytes_per_record']:.0f} bytes per record with its index (the segment "
              f"file {pg['file_bytes_per_record']:.0f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"records": args.records, "rounds": args.rounds,
                                     "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
