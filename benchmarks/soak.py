"""Soak: a long mixed boto3 load on a real ``hsmpool serve`` with a token fault every so often.

    python -m benchmarks.soak [--minutes M] [--workers W] [--threads T]
                              [--fault-every S] [--fault-seconds S] [--verify N]
                              [--no-create-key] [--json PATH]

The long version of ``tests/reliability/test_token_faults_http.py``: a real server (``W``
workers) on three SoftHSM2 tokens behind the PKCS#11 fault shim, ``T`` threads of Encrypt,
Decrypt, GenerateDataKey, Sign (ECC and RSA) and CreateKey (``tests/reliability/load.py``).
Time is cut into cycles of ``--fault-every`` seconds: a quiet phase, then a fault phase of
``--fault-seconds`` in which one token (the next one each cycle) fails with the next fault
kind (device_error, device_removed, a 2 s hang), then heals, and a recovery phase lasts until
every worker sees the token healthy again. Per phase it prints and records
the requests, failures (by error code), latency p50/p99/max, the ejections ``/metrics``
counted, how long the healed token took to be readmitted, and the workers' RSS, open file
descriptors and PKCS#11 sessions (``/metrics``). At the end a sample of the ciphertexts made
is decrypted, signatures are verified and created keys described. Results:
``bench-results/soak.json``.

Tokens live in ``var/soak-tokens`` (git-ignored; made by ``softhsm-config/make-tokens.sh``);
the server's store, audit trail and log in a fresh ``var/soak/<time>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import boto3
from botocore.config import Config

from tests.faults import FaultInjector, FaultKind
from tests.reliability.load import (
    MIX,
    Load,
    TokenMetrics,
    make_keys,
    metrics,
    percentile,
    verify_products,
)

ROOT: Final = Path(__file__).resolve().parent.parent
HSMPOOL: Final = ROOT / ".venv" / "bin" / "hsmpool"
TOKEN_DIR: Final = ROOT / "var" / "soak-tokens"
DEFAULT_JSON: Final = ROOT / "bench-results" / "soak.json"
SOFTHSM_LIB: Final = "/usr/lib/softhsm/libsofthsm2.so"
TOKENS: Final = ("t0", "t1", "t2")
LABELS: Final = ("soak-0", "soak-1", "soak-2")
KINDS: Final[tuple[FaultKind, ...]] = ("device_error", "device_removed", "hang")
HANG_MS: Final = 2000
HANG_BUDGET_MS: Final = 250
REQUEST_TIMEOUT: Final = 3.0
REGION: Final = "us-east-1"


@dataclass
class Phase:
    name: str
    fault: str | None
    token: str | None
    start_s: float = 0.0
    seconds: float = 0.0
    requests: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    slowest: str = ""  # the operation of the slowest request
    ejections: int = 0
    readmitted_s: float | None = None
    rss_mb: float = 0.0  # summed over the workers, at the end of the phase
    open_fds: int = 0
    sessions: int = 0  # PKCS#11 sessions open, every token and worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tokens() -> None:
    subprocess.run(["bash", str(ROOT / "softhsm-config" / "make-tokens.sh"), str(TOKEN_DIR),
                    str(len(TOKENS)), "soak"], check=True)


def write_config(directory: Path) -> Path:
    lines = ["[pool]", "failure_threshold = 3", "slow_call_ms = 30000",
             f"hang_ms = {HANG_BUDGET_MS}", "probe_interval = 0.1", "probe_max_interval = 0.5",
             "[modules.softhsm]", f'path = "{SOFTHSM_LIB}"',
             f'env = {{ SOFTHSM2_CONF = "{TOKEN_DIR / "softhsm2.conf"}" }}']
    for name, label in zip(TOKENS, LABELS, strict=True):
        lines += [f"[tokens.{name}]", 'module = "softhsm"', f'label = "{label}"',
                  f'pin_file = "{TOKEN_DIR / "user.pin"}"',
                  # the SO PIN lets the server copy the instance's domain keys to every token
                  f'so_pin_file = "{TOKEN_DIR / "so.pin"}"']
    lines += ["[instances.soak]", "tokens = [" + ", ".join(f'"{t}"' for t in TOKENS) + "]",
              "[kms]", f'database = "{directory / "kms.db"}"',
              f'audit_dir = "{directory / "audit"}"', f'region = "{REGION}"',
              "[server]", f"request_timeout = {REQUEST_TIMEOUT}"]
    path = directory / "pool.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


@contextlib.contextmanager
def serve(config: Path, workers: int, env: dict[str, str]) -> Iterator[int]:
    port = _free_port()
    log = config.parent / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([str(HSMPOOL), "--config", str(config), "serve", "--host",
                                 "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited; its log:\n{log.read_text()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if _healthz(port) == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; its log:\n{log.read_text()}")
            time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


_PROC = re.compile(r'^(process_resident_memory_bytes|process_open_fds|hsmpool_token_sessions)'
                   r'\{[^}]*\} (\S+)$')


def _process(port: int) -> tuple[float, int, int]:
    """(RSS in MB, open fds, PKCS#11 sessions), summed over the workers (and tokens)."""
    rss, fds, sessions = 0.0, 0, 0
    for line in metrics(port).splitlines():
        m = _PROC.match(line)
        if m is None:
            continue
        if m.group(1) == "process_resident_memory_bytes":
            rss += float(m.group(2)) / 2**20
        elif m.group(1) == "process_open_fds":
            fds += int(float(m.group(2)))
        else:
            sessions += int(float(m.group(2)))
    return rss, fds, sessions


def _close(phase: Phase, load: Load, t0: float, t1: float, origin: float) -> None:
    outs = load.between(t0, t1)
    secs = [o.seconds for o in outs]
    phase.start_s, phase.seconds = round(t0 - origin, 2), round(t1 - t0, 2)
    phase.requests = len(outs)
    phase.errors = dict(Counter(o.error for o in outs if o.error is not None))
    phase.failed = sum(phase.errors.values())
    phase.p50_ms = round(percentile(secs, 0.5) * 1e3, 2)
    phase.p99_ms = round(percentile(secs, 0.99) * 1e3, 2)
    phase.max_ms = round(max(secs, default=0.0) * 1e3, 2)
    phase.slowest = max(outs, key=lambda o: o.seconds).op if outs else ""


def _print(p: Phase) -> None:
    what = f"{p.fault} on {p.token}" if p.fault else p.name.split(".", 1)[1]
    readmit = "" if p.readmitted_s is None else f", readmitted after {p.readmitted_s:.2f} s"
    print(f"{p.name:>9} {what:<22} {p.requests:6d} req, {p.failed} failed {p.errors or ''}, "
          f"p50 {p.p50_ms:6.1f} p99 {p.p99_ms:6.1f} max {p.max_ms:7.1f} ms ({p.slowest}), "
          f"ejections {p.ejections}{readmit}, RSS {p.rss_mb:.1f} MB, fds {p.open_fds}, "
          f"sessions {p.sessions}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--fault-every", type=float, default=30.0, help="seconds per cycle")
    ap.add_argument("--fault-seconds", type=float, default=5.0)
    ap.add_argument("--verify", type=int, default=3000,
                    help="ciphertexts (and as many signatures) checked at the end")
    ap.add_argument("--no-create-key", action="store_true",
                    help="Encrypt in place of CreateKey (the store and its caches then stay "
                         "the same size: memory growth is not the keys')")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)
    if not 0 < args.fault_seconds < args.fault_every:
        ap.error("--fault-seconds must be below --fault-every")

    make_tokens()
    run_dir = ROOT / "var" / "soak" / time.strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True)
    config = write_config(run_dir)
    faults = FaultInjector(run_dir / "faults")
    cred = json.loads(subprocess.run(
        [str(HSMPOOL), "--config", str(config), "credentials", "create", "--instance", "soak",
         "--name", "soak", "--json"], check=True, capture_output=True, text=True).stdout)
    phases: list[Phase] = []
    with serve(config, args.workers, faults.env()) as port:
        client = boto3.client(
            "kms", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
            aws_access_key_id=cred["AccessKeyId"], aws_secret_access_key=cred["SecretAccessKey"],
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                          read_timeout=30,
                          connect_timeout=10, max_pool_connections=args.threads * 2 + 2))
        keys = make_keys(client)
        start_rss, start_fds, start_sessions = _process(port)
        print(f"soak: {args.minutes} min, {args.workers} workers, {args.threads} threads, "
              f"a {args.fault_seconds} s fault every {args.fault_every} s; "
              f"server on port {port}, run dir {run_dir}", flush=True)
        origin = time.monotonic()
        end = origin + args.minutes * 60
        cycle = 0
        mix = tuple("Encrypt" if op == "CreateKey" else op for op in MIX) \
            if args.no_create_key else MIX
        with Load(client, keys, threads=args.threads, mix=mix) as load:
            while time.monotonic() < end:
                quiet = Phase(f"{cycle}.quiet", None, None)
                t0 = time.monotonic()  # (phases are contiguous: every request is in one)
                time.sleep(max(0.0, min(args.fault_every - args.fault_seconds,
                                        end - time.monotonic())))
                t1 = time.monotonic()
                _close(quiet, load, t0, t1, origin)
                quiet.rss_mb, quiet.open_fds, quiet.sessions = _process(port)
                phases.append(quiet)
                _print(quiet)
                if t1 >= end:
                    break
                kind, index = KINDS[cycle % len(KINDS)], cycle % len(TOKENS)
                fault = Phase(f"{cycle}.fault", kind, TOKENS[index])
                before = TokenMetrics.read(port).ejections.get(TOKENS[index], 0)
                faults.fail(LABELS[index], kind, hang_ms=HANG_MS if kind == "hang" else 0)
                time.sleep(args.fault_seconds)
                faults.heal()
                t2 = time.monotonic()
                _close(fault, load, t1, t2, origin)
                # Recovery: from healing until every worker sees every token healthy.
                recovery = Phase(f"{cycle}.recovery", None, TOKENS[index])
                while time.monotonic() - t2 < 30:
                    if TokenMetrics.read(port).all_healthy(TOKENS):
                        recovery.readmitted_s = round(time.monotonic() - t2, 2)
                        break
                    time.sleep(0.1)
                t3 = time.monotonic()
                fault.ejections = TokenMetrics.read(port).ejections.get(TOKENS[index], 0) \
                    - before
                _close(recovery, load, t2, t3, origin)
                for ph in (fault, recovery):
                    ph.rss_mb, ph.open_fds, ph.sessions = _process(port)
                    phases.append(ph)
                    _print(ph)
                cycle += 1
        end_rss, end_fds, end_sessions = _process(port)
        rng = random.Random(11)
        sample = Load(client, keys)
        sample.ciphertexts = rng.sample(load.ciphertexts, min(args.verify, len(load.ciphertexts)))
        sample.signatures = rng.sample(load.signatures, min(args.verify, len(load.signatures)))
        sample.created = rng.sample(load.created, min(args.verify // 10, len(load.created)))
        problems = verify_products(client, sample)
        alive = _healthz(port) == 200

    secs = [o.seconds for o in load.outcomes]
    total_failed = sum(p.failed for p in phases)
    summary: dict[str, Any] = {
        "minutes": args.minutes, "workers": args.workers, "threads": args.threads,
        "mix": list(mix),
        "fault_every_s": args.fault_every, "fault_seconds": args.fault_seconds,
        "hang_ms": HANG_MS, "hang_budget_ms": HANG_BUDGET_MS,
        "requests": len(load.outcomes), "failed": total_failed,
        "faults_injected": dict(Counter(p.fault for p in phases if p.fault)),
        "p50_ms": round(percentile(secs, 0.5) * 1e3, 2),
        "p99_ms": round(percentile(secs, 0.99) * 1e3, 2),
        "max_ms": round(max(secs, default=0.0) * 1e3, 2),
        "rss_mb": {"start": round(start_rss, 1), "end": round(end_rss, 1)},
        "open_fds": {"start": start_fds, "end": end_fds},
        "sessions": {"start": start_sessions, "end": end_sessions},
        "verified": {"ciphertexts": len(sample.ciphertexts),
                     "signatures": len(sample.signatures), "created_keys": len(sample.created),
                     "problems": problems[:20]},
        "server_up_at_end": alive,
        "phases": [asdict(p) for p in phases],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"soak: {summary['requests']} requests, {total_failed} failed, p50 "
          f"{summary['p50_ms']} p99 {summary['p99_ms']} max {summary['max_ms']} ms; faults "
          f"{summary['faults_injected']}; RSS {start_rss:.1f} -> {end_rss:.1f} MB, fds "
          f"{start_fds} -> {end_fds}, sessions {start_sessions} -> {end_sessions}; verified "
          f"{len(sample.ciphertexts)} ciphertexts, "
          f"{len(sample.signatures)} signatures, {len(sample.created)} keys: "
          f"{len(problems)} problems; results in {args.json}")
    return 0 if total_failed == 0 and not problems and alive else 1


if __name__ == "__main__":
    sys.exit(main())
