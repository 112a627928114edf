"""Encrypt req/s of ``hsmpool serve`` on SQLite and on PostgreSQL, one node and two.

    python -m benchmarks.cluster [--seconds S] [--warmup W] [--rounds R] [--quick]
                                 [--connections C] [--postgres URL] [--json PATH]

Three targets, all started by this run on this machine and measured in the same run:

* ``sqlite 1x2``: one ``hsmpool serve --workers 2`` on a SQLite ``[kms] database``;
* ``pg 1x2``: one ``hsmpool serve --workers 2`` on a PostgreSQL database;
* ``pg 2x1``: two ``hsmpool serve --workers 1`` nodes on that same database (as two
  machines would be, on one machine), the load split evenly between them.

All on tokens hsmpool-14 and -15 of ``var/bench-tokens`` (instance ``clusterbench``; the
other benchmarks use hsmpool-0..13), audit records and metrics on, as in production. The
PostgreSQL database is ``--postgres URL`` (a database that this run may fill) or, by
default, a throw-away cluster made by ``tests/postgres.py`` (the tests' own: initdb as the
``postgres`` user, so it needs root and Debian's ``postgresql`` package).

The machinery is ``benchmarks.server``'s: the same signed-request replay with wrk
(``--connections`` keep-alive connections, 8 by default: for ``pg 2x1`` half on each node,
one wrk each, run at once), the same warm-up, interleaved rounds (the order rotates, so load
from elsewhere on this shared machine falls on all targets alike) and CPU accounting (a
two-node target's server CPU is both nodes'). Encrypt is 32 random bytes under one
``SYMMETRIC_DEFAULT`` key per target, no context.

Store round trips: PostgreSQL's store counts the statements it runs
(``hsmpool_store_statements_total`` in ``/metrics``, per worker); the report gives their
number per Encrypt over the timed rounds (a warm cache: target 0; what remains is the 5 s
change-counter poll and the 10 s audit checkpoint of each worker).

Bars (from issue 10; a report, not a test): ``pg 1x2`` >= 0.9x ``sqlite 1x2``;
``pg 2x1`` >= 0.9x ``pg 1x2``. Results: a table on stdout and ``bench-results/cluster.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.postgres import database
from benchmarks.server import (
    HOST,
    ROOT,
    Acc,
    Cell,
    LoadResult,
    Server,
    add_timing_args,
    audit_summary,
    begin,
    check_requests,
    create_credentials,
    hsmpool_argv,
    mark,
    meta_head,
    meta_tail,
    prepare_target,
    print_report,
    raw_call,
    run_loadgen,
    sign_requests,
    start_ready,
    table,
    teardown,
    timing,
    tree_cpu,
    verdict,
    versions,
    write_config,
    write_lua,
    write_requests,
)

DEFAULT_JSON: Final = ROOT / "bench-results" / "cluster.json"
N_TOKENS: Final = 16  # make-tokens.sh is idempotent; the other benchmarks use 0..13
TOKENS: Final = (14, 15)
INSTANCE: Final = "clusterbench"
TARGETS: Final = ("sqlite 1x2", "pg 1x2", "pg 2x1")
BAR_PG_VS_SQLITE: Final = 0.9
BAR_TWO_NODES: Final = 0.9
DISTINCT: Final = 256  # pre-signed requests per node


@dataclasses.dataclass
class Nodes:
    """A target: one or more servers that share its load."""

    name: str
    servers: list[Server]
    workers: int  # per server
    postgres: bool


def _statements(srv: Server) -> int:
    """The server's ``hsmpool_store_statements_total``, summed over its workers."""
    req = f"GET /metrics HTTP/1.1\r\nHost: {HOST}:{srv.port}\r\n\r\n".encode()
    status, body = raw_call(srv.port, req)
    if status != 200:
        raise RuntimeError(f"{srv.name}: /metrics answered {status}")
    return sum(int(line.rsplit(b" ", 1)[1]) for line in body.splitlines()
               if line.startswith(b"hsmpool_store_statements_total{"))


def _merge(results: Sequence[LoadResult]) -> LoadResult:
    """Load generators run at once on the nodes of a target, as one run."""
    hist: dict[int, float] = {}
    for r in results:
        for v, c in r.hist.items():
            hist[v] = hist.get(v, 0.0) + c
    return LoadResult(sum(r.requests for r in results), max(r.seconds for r in results),
                      sum(r.errors for r in results), hist, sum(r.cpu_s for r in results))


def _run(target: Nodes, files: Sequence[Path], script: Path, conns: int, secs: float,
         into: Acc | None) -> None:
    """One load on every node of the target at once (``conns`` split among them)."""
    servers = target.servers
    share = max(1, conns // len(servers))
    since = mark(servers[0].proc.pid)
    others = [tree_cpu(s.proc.pid) for s in servers[1:]]
    results: list[LoadResult | None] = [None] * len(servers)
    failed: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = run_loadgen("wrk", servers[i].port, files[i], script, share, 1,
                                     secs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failed.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    if into is not None:
        into.add(_merge([r for r in results if r is not None]), servers[0].proc.pid, since)
        into.srv_cpu += sum(tree_cpu(s.proc.pid) - c
                            for s, c in zip(servers[1:], others, strict=True))


def measure(targets: Sequence[Nodes], requests: dict[str, list[list[bytes]]], work: Path,
            conns: int, warmup: float, seconds: float, rounds: int
            ) -> tuple[list[Cell], dict[str, int]]:
    """Every target's Encrypt (a warm-up each, then interleaved rounds) and, for the
    PostgreSQL ones, the store statements their servers ran over the timed rounds."""
    script = write_lua(work)
    files: dict[str, list[Path]] = {}
    for t in targets:
        files[t.name] = []
        for i, reqs in enumerate(requests[t.name]):
            path = work / f"{t.name.replace(' ', '-')}-{i}.reqs"
            write_requests(path, reqs)
            files[t.name].append(path)
    for t in targets:
        _run(t, files[t.name], script, conns, warmup, None)
    time.sleep(1.2)  # the workers' metrics files are published once a second
    before = {t.name: sum(_statements(s) for s in t.servers) for t in targets if t.postgres}
    acc = {t.name: Acc() for t in targets}
    for r in range(rounds):
        k = r % len(targets)
        for t in [*targets[k:], *targets[:k]]:
            _run(t, files[t.name], script, conns, seconds / rounds, acc[t.name])
    time.sleep(1.2)
    spent = {name: sum(_statements(s) for s in t.servers) - before[name]
             for t in targets if t.postgres for name in [t.name]}
    cells = [acc[t.name].cell(Cell, t.name, "Encrypt", t.workers * len(t.servers))
             for t in targets]
    return cells, spent


def report(cells: Sequence[Cell], spent: dict[str, int]) -> tuple[str, dict[str, Any]]:
    by = {c.target: c for c in cells}
    lines = ["Encrypt, wrk, the same run (" + ", ".join(f"{c.target}: {c.rounds} rounds"
                                                     for c in cells) + ")", ""]
    lines += table(f"{'target':<12}", [(f"{c.target:<12}", c) for c in cells])
    lines.append("")
    per_req = {name: n / max(1, by[name].requests) for name, n in spent.items()}
    for name, n in spent.items():
        lines.append(f"store statements during {name}'s timed rounds: {n} for "
                     f"{by[name].requests:,} Encrypts = {per_req[name]:.5f} per request "
                     "(target 0)")
    sq, p12, p21 = by["sqlite 1x2"], by["pg 1x2"], by["pg 2x1"]
    r1 = p12.req_per_s / sq.req_per_s
    r2 = p21.req_per_s / p12.req_per_s
    lines += ["",
              f"bar pg 1x2 >= {BAR_PG_VS_SQLITE}x sqlite 1x2: {r1:.2f}x  "
              f"{verdict(r1 >= BAR_PG_VS_SQLITE)}",
              f"bar pg 2x1 >= {BAR_TWO_NODES}x pg 1x2:     {r2:.2f}x  "
              f"{verdict(r2 >= BAR_TWO_NODES)}"]
    # What N machines would give: each node serves from its own caches and tokens, and a
    # warm Encrypt asks the database nothing, so nodes add up until the database or the
    # network is the limit; per machine, what its cores allow at this CPU per request.
    us = p21.server_us_per_req
    per_core = 1e6 / us if us > 0 else float("nan")
    polls = 1 / 5 + 1 / 10  # statements/s per worker: the 5 s poll, the 10 s checkpoint
    lines += ["",
              f"N machines: pg 2x1 spent {us:.0f} µs of server CPU per Encrypt, so one core "
              f"serves about {per_core:,.0f} Encrypt/s and a machine of C cores about "
              f"C x {per_core:,.0f} (here the load generator shares the 2 cores); with "
              "0 statements per warm Encrypt, N such machines give about "
              f"N x C x {per_core:,.0f} req/s, while the database sees only each worker's "
              f"background statements (~{polls:.1f}/s per worker, plus its own writes: "
              f"{polls * 8 * 10:.0f}/s for 10 machines of 8 workers)."]
    doc = {"cells": [dataclasses.asdict(c) for c in cells],
           "store_statements": spent, "store_statements_per_encrypt": per_req,
           "bars": {"pg_vs_sqlite": {"ratio": r1, "bar": BAR_PG_VS_SQLITE,
                                     "ok": r1 >= BAR_PG_VS_SQLITE},
                    "two_nodes_vs_one": {"ratio": r2, "bar": BAR_TWO_NODES,
                                         "ok": r2 >= BAR_TWO_NODES}},
           "server_us_per_encrypt_2x1": us, "encrypt_per_core": per_core}
    return "\n".join(lines), doc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(ap, "target", " of every target")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--postgres", help="a postgresql:// URL (default: a throw-away cluster)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, audit)")
    args = ap.parse_args(argv)
    seconds, warmup, rounds = timing(ap, args)
    if not shutil.which("wrk"):
        ap.error("wrk is not installed (apt-get install wrk)")

    t_start = time.monotonic()
    tmp = begin(N_TOKENS, "clusterbench-")
    servers: list[Server] = []
    notes: list[str] = []
    try:
        with database(args.postgres, "clusterbench", "benchmarks.cluster") as url:
            cfgs: dict[str, Path] = {}
            for kind in ("sqlite", "pg"):
                (tmp / kind).mkdir()
                cfgs[kind] = write_config(tmp / kind, TOKENS, INSTANCE)
            text = cfgs["pg"].read_text()
            cfgs["pg"].write_text(re.sub(r'^database = ".*"$', f'database = "{url}"', text,
                                         flags=re.M))
            print(f"setting up (tokens hsmpool-{TOKENS[0]}..{TOKENS[-1]}, temp dir {tmp}, "
                  f"PostgreSQL {'given' if args.postgres else 'throw-away'}) ...", flush=True)
            creds = {kind: create_credentials(cfg, INSTANCE) for kind, cfg in cfgs.items()}
            layout = {"sqlite 1x2": ("sqlite", 1, 2), "pg 1x2": ("pg", 1, 2),
                      "pg 2x1": ("pg", 2, 1)}
            targets: list[Nodes] = []
            for name, (kind, n, workers) in layout.items():
                nodes = []
                for i in range(n):
                    srv = start_ready(f"{name.replace(' ', '-')}-{i}",
                                      hsmpool_argv(cfgs[kind], workers), "/metrics", workers,
                                      tmp, notes)
                    servers.append(srv)
                    nodes.append(srv)
                targets.append(Nodes(name, nodes, workers, kind == "pg"))
            requests: dict[str, list[list[bytes]]] = {}
            for t in targets:
                ak, sk = creds["pg" if t.postgres else "sqlite"]
                prepared = prepare_target(t.name, t.servers[0].port, ak, sk, 0)
                requests[t.name] = []
                for srv in t.servers:
                    reqs = sign_requests("Encrypt", prepared, srv.port, DISTINCT)
                    check_requests(t.name, "Encrypt", srv.port, reqs)
                    requests[t.name].append(reqs)
            t_setup = time.monotonic() - t_start
            print(f"measuring: {warmup:.0f} s warm-up and {seconds:.0f} s in {rounds} "
                  "rounds per target ...", flush=True)
            cells, spent = measure(targets, requests, tmp, args.connections, warmup,
                                   seconds, rounds)
            text, doc = report(cells, spent)
            audit = audit_summary(tmp / "pg")
            total = print_report(text, audit, t_setup, t_start)
            doc["meta"] = {**meta_head(), "connections": args.connections,
                           "seconds": seconds, "warmup": warmup, "rounds": rounds,
                           "postgres": "given" if args.postgres else "throw-away",
                           **meta_tail(audit, versions(("psycopg", "psycopg-pool")),
                                       t_setup, total, notes)}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {args.json}")
            teardown(servers, tmp, args.keep)
            servers.clear()
    finally:
        if servers:
            teardown(servers, tmp, args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
