"""GetSecretValue req/s of ``hsmpool serve`` beside moto (server mode) and our own Decrypt.

    python -m benchmarks.secrets [--seconds S] [--warmup W] [--rounds R] [--quick]
                                 [--loadgen boto3|python|wrk ...] [--connections C]
                                 [--processes P] [--json PATH]
    python -m benchmarks.secrets --profile [--profile-op Decrypt] [--seconds S]  # cProfile

Three loads, all started by this run on this machine, at the same client concurrency:

* ``hsmpool GetSecretValue``: ``hsmpool --config CFG serve --workers 2`` on tokens
  hsmpool-12 and -13 of ``var/bench-tokens`` (instance ``secretsbench``; the other benchmarks
  use hsmpool-0..11), with its own ``[kms]`` database and audit directory in a temp dir under
  ``var/`` (deleted afterwards); audit records and metrics on, as in production. One secret,
  a 100-byte ``SecretString`` made by ``create_secret`` (under the instance's default
  secrets key), read by ``get_secret_value(SecretId=name)``: a store lookup, one KMS Decrypt
  of the version's data key (with its encryption context and audit record), AES-GCM, and the
  secret's own audit record. The caller is an access key made by ``hsmpool credentials
  create`` (an admin policy, ``kms:*`` and ``secretsmanager:*``), so every request is SigV4
  verified and authorised by policy.
* ``moto GetSecretValue``: ``python -m moto.server`` (werkzeug, threaded, one process), the
  same 100-byte secret.
* ``hsmpool Decrypt``: the same hsmpool server, AWS KMS ``Decrypt`` (no ``KeyId``, no
  context) of 16 ciphertexts of 32-byte plaintexts made by ``Encrypt`` under a
  ``SYMMETRIC_DEFAULT`` key: the KMS operation a GetSecretValue rests on.

Load generators (``--loadgen``, default ``boto3`` and then ``wrk`` if installed, else
``python``; every load generator runs all three loads):

* ``boto3``: unmodified boto3 clients (``secretsmanager``, ``kms``; retries off) in
  ``--processes`` (2) child processes of this module (``--_boto3-load``), ``--connections``
  (8) threads in all, one client per thread and one call in flight per thread (so one
  keep-alive connection each); every call is timed. The children are started, make their
  clients and one untimed call each, and only then are all told to go, so their imports and
  start-up fall outside the timed part. On a 2-core machine the clients' own CPU (boto3
  builds, signs and parses every request in Python) shares the cores with the server: these
  rows are what a Python application sees, bounded by the client.
* ``wrk`` / ``python``: replaying raw requests signed up front with botocore's ``SigV4Auth``
  (256 per load, re-signed every round; the GetSecretValue bodies are all alike, so they
  differ where their signing second does) on ``--connections`` keep-alive connections: the
  servers' own rates, with little client CPU. ``wrk`` is ``benchmarks.server``'s (its Lua
  script); ``python`` is ``benchmarks.server``'s asyncio + uvloop generator, which opens a
  connection again when the server closes it, as wrk does (moto's werkzeug answers every
  request with ``Connection: close``).

Every load first gets ``--warmup`` (2 s), then the timed ``--seconds`` (10 s) are split
into ``--rounds`` (5) rounds, and in each round every load of every load generator runs in
turn (the order rotates), so load from elsewhere on this shared machine falls on all of them
alike; a row's req/s is its requests over its summed timed seconds, p50/p99 come from its
merged latency distribution. The cpu columns are as in ``benchmarks.server``: the load
generator's CPU time over the wall time (for ``boto3``, the children's CPU during their
timed part only), the server's process tree's, and ``other`` (the machine's busy time that
was neither; a row is flagged when it is above 15 % of a core).

Ratios (from the issue; a report, not a test), each within one load generator, so measured
in the same rounds: hsmpool GetSecretValue / moto GetSecretValue (bar >= 25x) and hsmpool
GetSecretValue / hsmpool Decrypt (bar >= 0.8x). Results go to ``bench-results/secrets.json``
(plots beside it, ``benchmarks.plots``' server kind).

``--profile`` starts a one-worker hsmpool server under cProfile (as ``benchmarks.server
--profile`` does), loads it with pre-signed GetSecretValue (or ``--profile-op Decrypt``)
requests for ``--seconds`` and prints the top functions by own time and the own CPU time
per request by area (SigV4, store, audit, ...: own time, since a request's greenlet yields
while its token call runs and cProfile's inclusive times then include other requests; the
profiler inflates call-heavy Python code, read the shares, not the microseconds).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks.server import (
    MOTO_ENV,
    OTHER_CPU_WARN,
    Acc,
    Cell,
    LoadResult,
    Server,
    Target,
    add_timing_args,
    audit_summary,
    begin,
    boto_client,
    check_replies,
    configure,
    hsmpool_argv,
    mark,
    meta_head,
    meta_tail,
    moto_argv,
    prepare_target,
    print_report,
    profiled_server,
    read_profile,
    run_loadgen,
    sign_raw,
    sign_requests,
    start_ready,
    table,
    teardown,
    timing,
    tree_cpu,
    verdict,
    versions,
    write_lua,
    write_requests,
    write_results,
)

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_JSON: Final = ROOT / "bench-results" / "secrets.json"
N_TOKENS: Final = 14  # make-tokens.sh is idempotent; the other benchmarks use 0..11
TOKENS: Final = (12, 13)
INSTANCE: Final = "secretsbench"
WORKERS: Final = 2
SERVER_PROCESSES: Final = {"hsmpool": WORKERS, "moto": 1}

SECRET_NAME: Final = "bench/secret"
SECRET_BYTES: Final = 100
N_CIPHERTEXTS: Final = 16
LOADS: Final = (("hsmpool", "GetSecretValue"), ("moto", "GetSecretValue"),
                ("hsmpool", "Decrypt"))
LOADGENS: Final = ("boto3", "wrk", "python")

BAR_VS_MOTO: Final = 25.0
BAR_VS_DECRYPT: Final = 0.8


# --- setup -------------------------------------------------------------------------------


@dataclass
class Prepared:
    """What the loads of one server need: credentials, the secret, Decrypt's ciphertexts."""

    name: str
    port: int
    ak: str
    sk: str
    secret_value: str
    key_id: str = ""
    ciphertexts: tuple[bytes, ...] = ()


def prepare(name: str, port: int, ak: str, sk: str, decrypt: bool) -> Prepared:
    sm = boto_client(port, ak, sk, "secretsmanager")
    value = secrets.token_hex(SECRET_BYTES // 2)
    sm.create_secret(Name=SECRET_NAME, SecretString=value,
                     Description=f"benchmarks.secrets {name}")
    got = sm.get_secret_value(SecretId=SECRET_NAME)
    if got["SecretString"] != value:
        raise RuntimeError(f"{name}: GetSecretValue returned another value")
    sm.close()
    out = Prepared(name, port, ak, sk, value)
    if decrypt:
        t = prepare_target(name, port, ak, sk, N_CIPHERTEXTS)  # 32-byte plaintexts
        out.key_id, out.ciphertexts = t.key_id, tuple(t.ciphertexts)
    return out


# --- the boto3 load generator ------------------------------------------------------------


def boto3_load_main(spec_path: Path) -> int:
    """A child process of the ``boto3`` load: ``threads`` threads, one boto3 client each,
    calling the operation in a loop; READY on stdout once every client has made one call,
    then the timed part starts at a line on stdin. BENCHJSON {requests, seconds, errors,
    cpu_s, hist}."""
    spec = json.loads(spec_path.read_text())
    op: str = spec["op"]
    threads: int = spec["threads"]
    service, method = (("secretsmanager", "get_secret_value") if op == "GetSecretValue"
                       else ("kms", "decrypt"))
    if op == "GetSecretValue":
        calls = [{"SecretId": spec["secret_id"]}]
    else:
        calls = [{"CiphertextBlob": base64.b64decode(c)} for c in spec["ciphertexts"]]
    clients = [boto_client(spec["port"], spec["ak"], spec["sk"], service)
               for _ in range(threads)]
    for k, c in enumerate(clients):  # one untimed call each: the connection, the caches
        got = getattr(c, method)(**calls[k % len(calls)])
        if op == "GetSecretValue" and got.get("SecretString") != spec["expect"]:
            raise RuntimeError(f"GetSecretValue returned {got!r}")
        if op == "Decrypt" and len(got.get("Plaintext", b"")) != 32:
            raise RuntimeError(f"Decrypt returned {got!r}")
    lats = [array("q") for _ in range(threads)]
    errors = [0] * threads
    go = threading.Event()
    stop_at = [0]
    ns = time.perf_counter_ns

    def work(k: int) -> None:
        call = getattr(clients[k], method)
        lat = lats[k]
        n = len(calls)
        i = k % n
        go.wait()
        t_stop = stop_at[0]
        while True:
            t0 = ns()
            if t0 >= t_stop:
                break
            try:
                call(**calls[i])
            except Exception:  # noqa: BLE001 - counted: ClientError, connection errors
                errors[k] += 1
            lat.append(ns() - t0)
            i = i + 1 if i + 1 < n else 0

    ts = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    print("READY", flush=True)
    if not sys.stdin.readline():
        return 1
    cpu0 = time.process_time()
    t0 = ns()
    stop_at[0] = t0 + int(spec["seconds"] * 1e9)
    go.set()
    for t in ts:
        t.join()
    elapsed = (ns() - t0) / 1e9
    cpu = time.process_time() - cpu0
    hist = Counter(v // 1000 for lat in lats for v in lat)
    print("BENCHJSON " + json.dumps({
        "requests": sum(len(lat) for lat in lats), "seconds": elapsed,
        "errors": sum(errors), "cpu_s": cpu, "hist": sorted(hist.items())}), flush=True)
    for c in clients:
        c.close()
    return 0


def run_boto3(spec: dict[str, Any], work: Path, connections: int, processes: int,
              seconds: float, on_go: Callable[[], None] | None = None) -> LoadResult:
    """``processes`` children with ``connections`` threads in all; one LoadResult (requests
    summed, seconds the longest child's timed part, CPU of their timed parts)."""
    per = [connections // processes + (1 if k < connections % processes else 0)
           for k in range(processes)]
    procs = []
    try:
        for k, threads in enumerate(p for p in per if p > 0):
            path = work / f"boto3-load-{k}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # credentials
            with os.fdopen(fd, "w") as fh:
                json.dump({**spec, "threads": threads, "seconds": seconds}, fh)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.secrets", "--_boto3-load", str(path)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT))
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != b"READY":
                rest = line + p.stdout.read()
                raise RuntimeError(f"boto3 load generator failed: {rest.decode()[-2000:]}")
        if on_go is not None:
            on_go()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()

        def finish(p: subprocess.Popen[bytes]) -> str:
            assert p.stdout is not None
            text = p.stdout.read().decode(errors="replace")
            p.wait(seconds + 60)
            return text

        with ThreadPoolExecutor(len(procs)) as ex:
            texts = list(ex.map(finish, procs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    requests = errors = 0
    secs = cpu = 0.0
    hist: dict[int, float] = {}
    for p, text in zip(procs, texts, strict=True):
        doc_line = next((ln for ln in text.splitlines() if ln.startswith("BENCHJSON ")), None)
        if p.returncode != 0 or doc_line is None:
            raise RuntimeError(f"boto3 load generator failed ({p.returncode}): {text[-2000:]}")
        doc = json.loads(doc_line[len("BENCHJSON "):])
        requests += doc["requests"]
        errors += doc["errors"]
        secs = max(secs, doc["seconds"])
        cpu += doc["cpu_s"]
        for v, c in doc["hist"]:
            hist[int(v)] = hist.get(int(v), 0.0) + float(c)
    return LoadResult(requests, secs, errors, hist, cpu)


# --- pre-signed requests (wrk / python) -------------------------------------------------


def sign_gsv(p: Prepared, n: int) -> list[bytes]:
    """``n`` raw GetSecretValue requests, SigV4-signed now (service secretsmanager)."""
    data = json.dumps({"SecretId": SECRET_NAME}).encode()
    return sign_raw(p.ak, p.sk, "secretsmanager", "secretsmanager.GetSecretValue", p.port,
                    [data] * n)


def signed(p: Prepared, op: str, n: int) -> list[bytes]:
    if op == "GetSecretValue":
        return sign_gsv(p, n)
    return sign_requests("Decrypt", Target(p.name, p.port, p.ak, p.sk, p.key_id,
                                           list(p.ciphertexts)), p.port, n)


def check_signed(p: Prepared, op: str, reqs: Sequence[bytes], k: int = 4) -> None:
    """Send a few of the requests once (not measured): they must succeed."""
    want = p.secret_value.encode() if op == "GetSecretValue" else b"Plaintext"
    check_replies(f"{p.name} {op}", p.port, reqs, want, k)


# --- the run -----------------------------------------------------------------------------


@dataclass
class Row(Cell):
    loadgen: str = ""


@dataclass
class Load:
    loadgen: str
    target: str
    op: str
    server: Server
    prepared: Prepared

    @property
    def label(self) -> str:
        return f"{self.loadgen} {self.target} {self.op}"


def run_loads(loads: Sequence[Load], work: Path, connections: int, processes: int,
              wrk_threads: int, warmup: float, seconds: float, rounds: int,
              distinct: int) -> list[Row]:
    """A warm-up for every load, then ``rounds`` rounds in which every load runs
    ``seconds / rounds`` in turn (the order rotates)."""
    script = write_lua(work)

    def once(ld: Load, secs: float, a: Acc | None) -> None:
        pid = ld.server.proc.pid
        # the server's and the machine's CPU are counted from the go (boto3: once every
        # child is ready) or from the replay generator's start
        since: list[tuple[float, float, float]] = []

        def go() -> None:
            since[:] = [mark(pid)]

        if ld.loadgen == "boto3":
            p = ld.prepared
            spec = {"op": ld.op, "port": p.port, "ak": p.ak, "sk": p.sk,
                    "secret_id": SECRET_NAME, "expect": p.secret_value,
                    "ciphertexts": [base64.b64encode(c).decode() for c in p.ciphertexts]}
            res = run_boto3(spec, work, connections, processes, secs, go)
        else:
            reqfile = work / f"{ld.target}-{ld.op}.reqs"
            reqs = signed(ld.prepared, ld.op, distinct)  # re-signed every run: 5 min of skew
            write_requests(reqfile, reqs)
            go()
            res = run_loadgen(ld.loadgen, ld.prepared.port, reqfile, script, connections,
                              wrk_threads, secs)
            reqfile.unlink(missing_ok=True)
        if a is not None:
            a.add(res, pid, since[0])

    for ld in loads:
        p = ld.prepared
        if ld.loadgen != "boto3":
            check_signed(p, ld.op, signed(p, ld.op, 8))
        if warmup > 0:
            once(ld, warmup, None)
    acc = {ld.label: Acc() for ld in loads}
    per_round = seconds / rounds
    for r in range(rounds):
        k = r % len(loads)
        for ld in [*loads[k:], *loads[:k]]:
            once(ld, per_round, acc[ld.label])
        print(f"  round {r + 1}/{rounds} done", flush=True)
    return [acc[ld.label].cell(Row, ld.target, ld.op, SERVER_PROCESSES[ld.target],
                               loadgen=ld.loadgen) for ld in loads]


def find(rows: Sequence[Row], loadgen: str, target: str, op: str) -> Row | None:
    return next((r for r in rows if (r.loadgen, r.target, r.op) == (loadgen, target, op)),
                None)


def report(rows: Sequence[Row], loadgens: Sequence[str], connections: int,
           processes: int) -> tuple[str, dict[str, Any]]:
    out = table(f"{'loadgen':<7} {'target':<8} {'op':<15}",
                ((f"{c.loadgen:<7} {c.target:<8} {c.op:<15}", c) for c in rows))
    out.append(f"client concurrency {connections} (boto3: threads over {processes} "
               f"process{'es' if processes > 1 else ''}, one client each; wrk/python: "
               "keep-alive connections of pre-signed requests)")
    out.append(f"cpu columns: CPU time / wall time (100% = one core of {os.cpu_count()}); "
               "other = machine busy time not ours; µs/req = CPU time per request;")
    out.append("cap req/s = a projection, not a measurement: the req/s this CPU per request "
               "(server + load generator) allows on the whole machine, at most one core per "
               "server process (moto: one)")
    out.append("")
    ratios: dict[str, dict[str, float]] = {"gsv_hsmpool_vs_moto": {},
                                           "gsv_vs_decrypt_hsmpool": {}}
    proj: dict[str, dict[str, float]] = {"gsv_hsmpool_vs_moto": {},
                                         "gsv_vs_decrypt_hsmpool": {}}
    for lg in loadgens:
        h, m, d = (find(rows, lg, t, op) for t, op in LOADS)
        if h is None:
            continue
        parts = []
        if m is not None and m.req_per_s > 0:
            ratios["gsv_hsmpool_vs_moto"][lg] = h.req_per_s / m.req_per_s
            proj["gsv_hsmpool_vs_moto"][lg] = h.capacity_req_per_s / m.capacity_req_per_s
            parts.append(f"{h.req_per_s / m.req_per_s:6.1f}x moto GetSecretValue "
                         f"(projected {proj['gsv_hsmpool_vs_moto'][lg]:.1f}x)")
        if d is not None and d.req_per_s > 0:
            ratios["gsv_vs_decrypt_hsmpool"][lg] = h.req_per_s / d.req_per_s
            proj["gsv_vs_decrypt_hsmpool"][lg] = h.capacity_req_per_s / d.capacity_req_per_s
            parts.append(f"{h.req_per_s / d.req_per_s:5.2f}x hsmpool Decrypt "
                         f"(projected {proj['gsv_vs_decrypt_hsmpool'][lg]:.2f}x)")
        out.append(f"ratio, {lg:<6}: hsmpool GetSecretValue = " + ", ".join(parts))
    out.append("")
    bars: list[dict[str, Any]] = []
    for lg in loadgens:
        for key, bar_value, what in (
                ("gsv_hsmpool_vs_moto", BAR_VS_MOTO, "moto GetSecretValue"),
                ("gsv_vs_decrypt_hsmpool", BAR_VS_DECRYPT, "hsmpool Decrypt")):
            r = ratios[key].get(lg)
            if r is None:
                continue
            vd = verdict(r >= bar_value)
            name = f"{lg}: hsmpool GetSecretValue >= {bar_value:g}x {what}"
            bars.append({"bar": name, "loadgen": lg, "value": r, "verdict": vd})
            out.append(f"bar: {name:<58} {r:>7.2f}x  {vd}")
    errs = sum(c.errors for c in rows if c.target == "hsmpool")
    vd = verdict(errs == 0)
    bars.append({"bar": "hsmpool rows have 0 errors", "value": float(errs), "verdict": vd})
    out.append(f"bar: {'hsmpool rows have 0 errors':<58} {errs:>8}  {vd}")
    if "boto3" in loadgens:
        out.append("(boto3 rows: bounded by the Python clients' own CPU on the same cores; "
                   "wrk/python rows: the servers' rates)")
    busy = [c for c in rows if c.other_cpu > OTHER_CPU_WARN]
    if busy:
        out.append(f"WARNING: {len(busy)} of {len(rows)} rows saw > {OTHER_CPU_WARN:.0%} of a "
                   "core of other load on the machine; treat those figures with care.")
    return "\n".join(out), {"ratios": ratios, "projected_ratios": proj, "bars": bars}


# --- profiling ---------------------------------------------------------------------------

# (area, test on (file, function)) in order, first match wins: the profiled thread's own
# (exclusive) CPU time, summed by area. Inclusive times mislead here: a request's greenlet
# yields to the event loop while its token call runs, and cProfile charges the other
# requests run meanwhile to the frames it left.
_AREAS: Final[tuple[tuple[str, Callable[[str, str], bool]], ...]] = (
    ("SigV4 (kms/api/sigv4.py, hmac, hashlib)",
     lambda f, fn: f.endswith(("kms/api/sigv4.py", "/hmac.py")) or "_hashlib" in fn
     or "hmac_digest" in fn),
    ("SQLite store (kms/store, sqlite3)",
     lambda f, fn: "/kms/store/" in f or "sqlite3" in fn),
    ("audit records (kms/audit.py, its writer)",
     lambda f, fn: f.endswith(("kms/audit.py", "kms/caller.py")) and fn.startswith("_audit")
     or f.endswith("kms/audit.py") or "_auditw" in fn),
    ("secrets service (kms/secrets)", lambda f, fn: "/kms/secrets/" in f),
    ("KMS service (kms/*.py: caller, service, ciphertext, policy)",
     lambda f, fn: "/kms/" in f and "/kms/api/" not in f),
    ("front end (kms/api: app, pipeline, aws_*, metrics)", lambda f, fn: "/kms/api/" in f),
    ("pool and calls (hsmpool/, PKCS#11 C calls, greenlet)",
     lambda f, fn: "/hsmpool/" in f or "hp11" in fn or "greenlet" in fn),
    ("HTTP (uvicorn, httptools, uvloop)",
     lambda f, fn: "uvicorn" in f or "httptools" in f or "uvloop" in fn or "asyncio" in f),
    ("json", lambda f, fn: "/json/" in f or "_json" in fn),
    ("cryptography (AES-GCM)", lambda f, fn: "cryptography" in f or "AESGCM" in fn),
    ("start-up (compile, import)",
     lambda f, fn: "importlib" in f or fn in ("<built-in method builtins.compile>",
                                              "<built-in method marshal.loads>")),
)


def run_profile(cfg: Path, p: Prepared, op: str, tmp: Path, seconds: float, conns: int,
                loadgen: str, wrk_threads: int) -> None:
    with profiled_server(cfg, tmp) as srv:
        p = Prepared(p.name, srv.port, p.ak, p.sk, p.secret_value, p.key_id, p.ciphertexts)
        reqs = signed(p, op, 256)
        check_signed(p, op, reqs)
        reqfile = tmp / "profile.reqs"
        write_requests(reqfile, reqs)
        script = write_lua(tmp)
        cpu0, t0 = tree_cpu(srv.proc.pid), time.monotonic()
        res = run_loadgen(loadgen, srv.port, reqfile, script, conns, wrk_threads, seconds)
        cpu = (tree_cpu(srv.proc.pid) - cpu0) / (time.monotonic() - t0)
        print(f"one worker under cProfile: {res.requests / res.seconds:,.0f} {op} req/s, "
              f"{res.errors} errors, worker CPU {cpu:.0%} (the profiler inflates cheap "
              "calls)")
    print_areas(read_profile(srv, tmp), op)


def print_areas(st: Any, op: str) -> None:
    """Own CPU time per request of the profiled thread, by area (µs, under the profiler)."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats
    handler = ("kms/api/aws_secrets.py", "get_secret_value") if op == "GetSecretValue" \
        else ("kms/api/aws_kms.py", "decrypt")
    n = sum(v[1] for k, v in stats.items() if k[0].endswith(handler[0]) and k[2] == handler[1])
    if not n:
        return
    total = sum(v[2] for v in stats.values())

    def area_of(f: str, fn: str) -> str:
        return next((a for a, test in _AREAS if test(f, fn)), "other")

    by: dict[str, float] = {}
    for (f, _, fn), v in stats.items():
        area = area_of(f, fn)
        if area == "other" and f == "~" and v[4]:
            # a builtin (dict.get, len, str.encode, ...): its time goes to its callers' areas
            for (cf, _, cfn), cv in v[4].items():
                a = area_of(cf, cfn)
                by[a] = by.get(a, 0.0) + cv[2]
            continue
        by[area] = by.get(area, 0.0) + v[2]
    print(f"profiled thread: {total / n * 1e6:.0f} µs CPU per {op} ({n} requests, profiler "
          "and start-up included); own time by area (a builtin's to its callers' areas):")
    for area, t in sorted(by.items(), key=lambda x: -x[1]):
        print(f"  {area:<62} {t / n * 1e6:7.1f} µs  {t / total:6.1%}")
    calls = {"sqlite3 execute": "<method 'execute' of 'sqlite3.Connection' objects>",
             "audit records": "record"}
    for label, fn in calls.items():
        c = sum(v[1] for k, v in stats.items() if k[2] == fn
                and (label != "audit records" or k[0].endswith("kms/audit.py")))
        print(f"  {label}: {c / n:.2f} per request")


# --- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.secrets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(ap, "load", "")
    ap.add_argument("--connections", type=int, default=8,
                    help="client concurrency: boto3 threads in all, or keep-alive connections "
                    "(8)")
    ap.add_argument("--processes", type=int, default=2,
                    help="boto3 client processes the threads are spread over (2)")
    ap.add_argument("--loadgen", nargs="+", choices=LOADGENS, default=None,
                    help="(default: boto3, then wrk if installed, else python)")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--distinct", type=int, default=256, help="pre-signed requests per load")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile a one-worker hsmpool server under GetSecretValue load "
                    "instead")
    ap.add_argument("--profile-op", choices=("GetSecretValue", "Decrypt"),
                    default="GetSecretValue", help="the operation --profile loads (GetSecretValue)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, audit)")
    ap.add_argument("--_boto3-load", dest="boto3_load", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.boto3_load is not None:
        return boto3_load_main(args.boto3_load)
    seconds, warmup, rounds = timing(ap, args)
    if not 1 <= args.processes <= args.connections:
        ap.error("--processes must be in [1, connections]")
    replay = "wrk" if shutil.which("wrk") else "python"
    loadgens = list(dict.fromkeys(args.loadgen or ["boto3", replay]))
    if "wrk" in loadgens and not shutil.which("wrk"):
        ap.error("wrk is not installed (apt-get install wrk), use --loadgen boto3 python")

    t_start = time.monotonic()
    tmp = begin(N_TOKENS, "secretsbench-")
    servers: list[Server] = []
    notes: list[str] = []
    try:
        cfg, ak, sk = configure(tmp, TOKENS, INSTANCE)
        if args.profile:
            setup = start_ready("hsmpool-setup", hsmpool_argv(cfg, 1), "/healthz", 1, tmp,
                                notes)
            servers.append(setup)
            ours = prepare("hsmpool", setup.port, ak, sk, decrypt=True)
            setup.stop()
            servers.clear()
            run_profile(cfg, ours, args.profile_op, tmp, seconds, args.connections, replay,
                        args.wrk_threads)
            return 0
        hs = start_ready("hsmpool", hsmpool_argv(cfg, WORKERS), "/metrics", WORKERS, tmp,
                         notes)
        servers.append(hs)
        moto = start_ready("moto", moto_argv, "/moto-api/", 1, tmp, notes, MOTO_ENV)
        servers.append(moto)
        ours = prepare("hsmpool", hs.port, ak, sk, decrypt=True)
        theirs = prepare("moto", moto.port, "testing", "testing", decrypt=False)
        t_setup = time.monotonic() - t_start
        print(f"setup {t_setup:.1f} s; {', '.join(loadgens)}; concurrency "
              f"{args.connections} (boto3 in {args.processes} processes); {warmup:g} s "
              f"warm-up + {seconds:g} s per load in {rounds} rounds", flush=True)
        by = {"hsmpool": (hs, ours), "moto": (moto, theirs)}
        loads = [Load(lg, t, op, *by[t]) for lg in loadgens for t, op in LOADS]
        rows = run_loads(loads, tmp, args.connections, args.processes, args.wrk_threads,
                         warmup, seconds, rounds, args.distinct)
        for srv in servers:
            if srv.proc.poll() is not None:
                raise RuntimeError(f"{srv.name} exited; log:\n{srv.log.read_text()[-2000:]}")
        audit = audit_summary(tmp)
    finally:
        teardown(servers, tmp, args.keep)
    text, summary = report(rows, loadgens, args.connections, args.processes)
    total = print_report(text, audit, t_setup, t_start)
    doc = {"meta": {
        **meta_head(), "loadgens": loadgens,
        "wrk_threads": args.wrk_threads if "wrk" in loadgens else None,
        "connections": args.connections, "boto3_processes": args.processes,
        "seconds_per_load": seconds, "warmup_seconds": warmup, "rounds": rounds,
        "distinct_requests": args.distinct, "workers": WORKERS, "instance": INSTANCE,
        "tokens": [f"hsmpool-{i}" for i in TOKENS], "secret_bytes": SECRET_BYTES,
        "decrypt_plaintext_bytes": 32, "decrypt_ciphertexts": N_CIPHERTEXTS,
        **meta_tail(audit, versions(("boto3",)), t_setup, total, notes)},
        "cells": [asdict(c) for c in rows], **summary}
    # The server benchmark's plots: one bar per load generator and target, per operation.
    write_results(args.json, doc, {**doc, "cells": [
        {**asdict(c), "target": f"{c.target} ({c.loadgen})"} for c in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
