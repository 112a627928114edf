"""Throughput and latency of the pool against raw python-pkcs11 on SoftHSM2.

    python -m benchmarks.pool [--seconds S | --quick] [--json PATH] [--profile OP]

Operations: AES-256-GCM encrypt of 32 bytes with a 16-byte AAD, ECDSA P-256 sign of a 32-byte
message (SHA-256), RSA-2048 PKCS#1 v1.5 SHA-256 sign.

Targets: the pool over partitions of 1, 2 and 3 tokens (one instance per partition size, each
in its own config), and raw python-pkcs11 on one token. Each target runs in 1 and in 2
processes (spawned with the 'spawn' method; one thread each, in a closed loop after a
warm-up; the processes of a cell start each timed loop together at a barrier). The
2-process ops/s is the sum over both processes; latency percentiles come from per-op
``perf_counter_ns`` samples of every process of the cell.

All cells run interleaved: every group of processes is started up front, a cell's time is
split into rounds of about a second, and each round runs every cell in turn (rotating the
order), so load from elsewhere on the machine drifting over the run falls on all alike. The
``cpu`` column is CPU time over wall time of the timed loops; well below 100 % means the
processes were preempted and the ops/s figures are low, which is why the ratios are also
given per CPU-second.

Raw python-pkcs11 always runs in processes of its own: it loads libsofthsm2.so directly and
calls ``C_Initialize(NULL)``, which must not meet the pool's shim in one process. It does the
same work per operation as the pool where the work is not the pool's own: a fresh nonce per
GCM call, and the SHA-256 of the message computed in Python before the raw ECDSA sign
(SoftHSM2 offers raw ECDSA only).

Tokens live in ``var/bench-tokens`` (git-ignored), made by ``softhsm-config/make-tokens.sh``;
hsmpool-0 is the 1-token partition and also the raw token. Keys are generated once in the
parent and handed to the pool processes as blob bytes, and every pool call is given those
bytes (so parsing the blob is part of each call, as in a KMS front end); raw processes make
their own session keys. Results go to ``bench-results/pool.json``. The bars printed at the
end come from the issue; they are a report, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from benchmarks.plots import write_plots

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier, Lock

ROOT: Final = Path(__file__).resolve().parent.parent
TOKEN_DIR: Final = ROOT / "var" / "bench-tokens"
DEFAULT_JSON: Final = ROOT / "bench-results" / "pool.json"
SOFTHSM_LIB: Final = "/usr/lib/softhsm/libsofthsm2.so"
N_TOKENS: Final = 6
# Partition size -> token indices (labels hsmpool-<i>); no token is in two partitions.
PARTITIONS: Final[dict[int, tuple[int, ...]]] = {1: (0,), 2: (1, 2), 3: (3, 4, 5)}
RAW_TOKEN: Final = 0

OPS: Final = ("aes_gcm_32", "ecdsa_p256", "rsa2048_pkcs1")
OP_TITLES: Final = {
    "aes_gcm_32": "AES-GCM enc 32 B",
    "ecdsa_p256": "ECDSA P-256 sign",
    "rsa2048_pkcs1": "RSA-2048 sign",
}
PLAINTEXT: Final = bytes(range(32))
AAD: Final = bytes(range(100, 116))
MESSAGE: Final = bytes(range(200, 232))

BAR_POOL_VS_RAW: Final = 0.7  # pool AES-GCM ops/s over raw, one process
BAR_TWO_VS_ONE: Final = 1.7  # pool ops/s in two processes over one


# --- setup (parent) --------------------------------------------------------------------


def make_tokens() -> None:
    script = ROOT / "softhsm-config" / "make-tokens.sh"
    subprocess.run(["bash", str(script), str(TOKEN_DIR), str(N_TOKENS)], check=True)


def config_path(size: int) -> Path:
    return TOKEN_DIR / f"bench-p{size}.toml"


def instance_name(size: int) -> str:
    return f"bench{size}"


def write_configs() -> None:
    """One config per partition, so a worker opens only the tokens it uses."""
    for size, indices in PARTITIONS.items():
        lines = [
            "[pool]",
            "sessions_per_token = 4",
            "",
            "[modules.softhsm]",
            f'path = "{SOFTHSM_LIB}"',
            f'env = {{ SOFTHSM2_CONF = "{TOKEN_DIR / "softhsm2.conf"}" }}',
            "",
        ]
        for i in indices:
            lines += [
                f"[tokens.t{i}]",
                'module = "softhsm"',
                f'label = "hsmpool-{i}"',
                f'pin_file = "{TOKEN_DIR / "user.pin"}"',
                f'so_pin_file = "{TOKEN_DIR / "so.pin"}"',
                "",
            ]
        names = ", ".join(f'"t{i}"' for i in indices)
        lines += [f"[instances.{instance_name(size)}]", f"tokens = [{names}]", ""]
        config_path(size).write_text("\n".join(lines))


def make_keys() -> dict[int, dict[str, bytes]]:
    """Open every partition once (which copies its domain keys) and make one key per op."""
    from hsmpool import KeySpec, Pool, SignAlgorithm

    keys: dict[int, dict[str, bytes]] = {}
    for size in PARTITIONS:
        with Pool.open(config_path(size)) as pool:
            inst = pool.instance(instance_name(size))
            aes = inst.generate(KeySpec.AES_256)
            ec = inst.generate(KeySpec.EC_P256)
            rsa = inst.generate(KeySpec.RSA_2048)
            # Sanity, once: the keys work (not part of any measurement).
            ct = inst.encrypt(aes, PLAINTEXT, AAD)
            if inst.decrypt(aes, ct, AAD) != PLAINTEXT:
                raise RuntimeError("AES-GCM round trip failed")
            for blob, alg in ((ec, SignAlgorithm.ECDSA_SHA256),
                              (rsa, SignAlgorithm.RSA_PKCS1_SHA256)):
                if not inst.verify(blob, MESSAGE, inst.sign(blob, MESSAGE, alg), alg):
                    raise RuntimeError(f"{alg.value} signature does not verify")
            keys[size] = {"aes_gcm_32": bytes(aes), "ecdsa_p256": bytes(ec),
                          "rsa2048_pkcs1": bytes(rsa)}
    return keys


# --- operations (workers) ----------------------------------------------------------------

Op = Callable[[], object]


def pool_ops(size: int, blobs: dict[str, bytes]
             ) -> tuple[dict[str, Op], Callable[[], dict[str, int]], Callable[[], None]]:
    """The pool's operations, a per-member op counter and a closer (worker side)."""
    from hsmpool import Pool, SignAlgorithm

    pool = Pool.open(config_path(size))
    inst = pool.instance(instance_name(size))
    aes, ec, rsa = blobs["aes_gcm_32"], blobs["ecdsa_p256"], blobs["rsa2048_pkcs1"]
    ecdsa, pkcs1 = SignAlgorithm.ECDSA_SHA256, SignAlgorithm.RSA_PKCS1_SHA256
    ops: dict[str, Op] = {
        "aes_gcm_32": lambda: inst.encrypt(aes, PLAINTEXT, AAD),
        "ecdsa_p256": lambda: inst.sign(ec, MESSAGE, ecdsa),
        "rsa2048_pkcs1": lambda: inst.sign(rsa, MESSAGE, pkcs1),
    }

    def member_ops() -> dict[str, int]:
        return {name: s.ops for name, s in pool.stats().items()}

    return ops, member_ops, pool.close


def raw_ops() -> tuple[dict[str, Op], Callable[[], None]]:
    """Raw python-pkcs11 on one token, with session keys made here (worker side)."""
    os.environ["SOFTHSM2_CONF"] = str(TOKEN_DIR / "softhsm2.conf")
    import pkcs11
    from pkcs11 import Attribute, GCMParams, KeyType, Mechanism
    from pkcs11.types import EncryptMixin, SignMixin
    from pkcs11.util.ec import encode_named_curve_parameters

    lib = pkcs11.lib(SOFTHSM_LIB)
    token = lib.get_token(token_label=f"hsmpool-{RAW_TOKEN}")
    pin = (TOKEN_DIR / "user.pin").read_text().strip()
    session = token.open(user_pin=pin, rw=True)
    aes = session.generate_key(KeyType.AES, 256, store=False, template={
        Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    _, ec_key = session.generate_keypair(
        KeyType.EC, store=False,
        public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
        private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    _, rsa_key = session.generate_keypair(
        KeyType.RSA, 2048, store=False,
        private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    # The concrete key classes have these capabilities; the stubs type them as mixins.
    if not (isinstance(aes, EncryptMixin) and isinstance(ec_key, SignMixin)
            and isinstance(rsa_key, SignMixin)):
        raise RuntimeError("python-pkcs11 keys without encrypt/sign")
    ec, rsa = ec_key, rsa_key
    gcm, ecdsa, pkcs1 = Mechanism.AES_GCM, Mechanism.ECDSA, Mechanism.SHA256_RSA_PKCS
    urandom, sha256 = os.urandom, hashlib.sha256

    ops: dict[str, Op] = {
        "aes_gcm_32": lambda: aes.encrypt(PLAINTEXT, mechanism=gcm,
                                          mechanism_param=GCMParams(urandom(12), AAD, 128)),
        "ecdsa_p256": lambda: ec.sign(sha256(MESSAGE).digest(), mechanism=ecdsa),
        "rsa2048_pkcs1": lambda: rsa.sign(MESSAGE, mechanism=pkcs1),
    }
    return ops, session.close


def timed_loop(op: Op, seconds: float) -> tuple[int, array[int]]:
    """Run ``op`` back to back for ``seconds``; elapsed ns and one latency sample per op."""
    ns = time.perf_counter_ns
    lat: array[int] = array("q")
    add = lat.append
    start = t0 = ns()
    end = start + int(seconds * 1e9)
    while True:
        op()
        t1 = ns()
        add(t1 - t0)
        if t1 >= end:
            return t1 - start, lat
        t0 = t1


def warm_up(op: Op, seconds: float) -> None:
    end = time.perf_counter() + seconds
    n = 0
    while n < 20 or time.perf_counter() < end:
        op()
        n += 1


def worker(target: str, size: int, blobs: dict[str, bytes], barrier: Barrier,
           setup_lock: Lock, conn: Connection) -> None:
    """One benchmark process. Commands from the parent, answered one by one:

    ``("run", op, seconds, warmup)``: warm up, meet the other processes of the group at the
    barrier, run the closed loop, report; ``("stop",)``: close and exit.

    Opening and closing are serialised between the processes of a group: SoftHSM2 rewrites
    a token's file on login, and a concurrent C_GetTokenInfo in another process can then
    fail with CKR_GENERAL_ERROR.
    """
    try:
        member_ops: Callable[[], dict[str, int]] | None = None
        with setup_lock:
            if target == "pool":
                table, member_ops, close = pool_ops(size, blobs)
            else:
                table, close = raw_ops()
        conn.send({"ready": True})
        try:
            while True:
                cmd = conn.recv()
                if cmd[0] == "stop":
                    break
                _, name, seconds, warmup = cmd
                op = table[name]
                warm_up(op, warmup)
                before = member_ops() if member_ops else {}
                barrier.wait(timeout=120)
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
                cpu0 = time.process_time_ns()
                elapsed, lat = timed_loop(op, seconds)
                cpu = time.process_time_ns() - cpu0
                ru1 = resource.getrusage(resource.RUSAGE_SELF)
                after = member_ops() if member_ops else {}
                conn.send({"op": name, "count": len(lat), "elapsed_ns": elapsed, "cpu_ns": cpu,
                           "vcsw": ru1.ru_nvcsw - ru0.ru_nvcsw,
                           "ivcsw": ru1.ru_nivcsw - ru0.ru_nivcsw,
                           "lat": lat.tobytes(),
                           "member_ops": {k: after[k] - before.get(k, 0) for k in after}})
        finally:
            with setup_lock:
                close()
    except BaseException:
        barrier.abort()
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


# --- running cells (parent) --------------------------------------------------------------


@dataclass
class Cell:
    op: str
    target: str  # "raw" or "pool"
    tokens: int
    procs: int
    ops_per_s: float  # sum over the processes
    per_process_ops_per_s: list[float]
    ops_per_cpu_s: float  # ops per CPU-second of the loop, summed over the processes
    p50_us: float
    p99_us: float
    samples: int
    cpu_share: float  # CPU time / wall time of the timed loops, mean over the processes
    # Context switches in the timed loops, summed over the processes: voluntary ones mean
    # waiting (locks, I/O), involuntary ones preemption by other load.
    voluntary_ctx_switches: int
    involuntary_ctx_switches: int
    member_ops: dict[str, int] = field(default_factory=dict)


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    if not sorted_ns:
        return float("nan")
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e3


@dataclass
class _Tally:
    """What the processes of one group reported for one op, over the rounds."""

    count: list[int]
    elapsed_ns: list[int]
    cpu_ns: list[int]
    vcsw: int = 0
    ivcsw: int = 0
    lat: array[int] = field(default_factory=lambda: array("q"))
    members: dict[str, int] = field(default_factory=dict)


class Group:
    """``procs`` spawned worker processes of one target, driven in step."""

    def __init__(self, target: str, size: int, procs: int, blobs: dict[str, bytes]) -> None:
        ctx = mp.get_context("spawn")
        self.target, self.size, self.procs = target, size, procs
        self.barrier = ctx.Barrier(procs)
        # Kept referenced: a spawned child unpickles these after __init__ returns.
        self.setup_lock = ctx.Lock()
        self.workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        for _ in range(procs):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(target, size, blobs, self.barrier,
                                                    self.setup_lock, there), daemon=True)
            proc.start()
            there.close()
            self.workers.append((proc, here))
        self.tallies: dict[str, _Tally] = {}

    def _collect(self) -> list[dict[str, Any]]:
        reports = []
        for _, conn in self.workers:
            try:
                reports.append(conn.recv())
            except EOFError:
                reports.append({"error": "worker exited without a report"})
        errors = [m["error"] for m in reports if "error" in m]
        if errors:
            # A worker that failed broke the barrier of the others: show its error first.
            errors.sort(key=lambda e: "BrokenBarrierError" in e)
            raise RuntimeError(f"{self.target} worker failed:\n{errors[0]}")
        return reports

    def ready(self) -> None:
        self._collect()

    def run(self, op: str, seconds: float, warmup: float) -> None:
        for _, conn in self.workers:
            conn.send(("run", op, seconds, warmup))
        reports = self._collect()
        t = self.tallies.setdefault(op, _Tally([0] * self.procs, [0] * self.procs,
                                               [0] * self.procs))
        for i, m in enumerate(reports):
            t.count[i] += m["count"]
            t.elapsed_ns[i] += m["elapsed_ns"]
            t.cpu_ns[i] += m["cpu_ns"]
            t.vcsw += m["vcsw"]
            t.ivcsw += m["ivcsw"]
            t.lat.frombytes(m["lat"])
            for k, v in m["member_ops"].items():
                t.members[k] = t.members.get(k, 0) + v

    def cells(self) -> list[Cell]:
        out = []
        for op, t in self.tallies.items():
            rates = [c / (e / 1e9) for c, e in zip(t.count, t.elapsed_ns, strict=True)]
            per_cpu = sum(c / (u / 1e9) for c, u in zip(t.count, t.cpu_ns, strict=True) if u)
            share = sum(u / e for u, e in zip(t.cpu_ns, t.elapsed_ns, strict=True)) / self.procs
            ordered = sorted(t.lat)
            out.append(Cell(op, self.target, self.size, self.procs, sum(rates), rates, per_cpu,
                            percentile(ordered, 0.50), percentile(ordered, 0.99),
                            len(ordered), share, t.vcsw, t.ivcsw, dict(t.members)))
        return out

    def close(self) -> None:
        for _, conn in self.workers:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc, conn in self.workers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
            conn.close()


def run_cells(keys: dict[int, dict[str, bytes]], seconds: float, warmup: float) -> list[Cell]:
    """Every (target, processes, op) cell, in interleaved rounds.

    All groups (raw and the three pools, in 1 and in 2 processes) are started up front; the
    idle ones wait on their pipes. A cell's time is split into rounds of about a second,
    and in each round every group runs the op in turn, the order rotating between rounds,
    so load from outside the benchmark that drifts over the run falls on every cell alike.
    """
    rounds = max(2, round(seconds))
    targets: list[tuple[str, int]] = [("raw", RAW_TOKEN + 1)] + [("pool", s) for s in PARTITIONS]
    print(f"  starting {2 * len(targets)} groups of 1 and 2 processes ...", flush=True)
    groups = [Group(t, s, procs, keys[s] if t == "pool" else {})
              for procs in (1, 2) for t, s in targets]
    try:
        for g in groups:
            g.ready()
        for op in OPS:
            print(f"  {OP_TITLES[op]}: {rounds} rounds x {len(groups)} cells x "
                  f"{seconds / rounds:.2f} s", flush=True)
            for r in range(rounds):
                k = r * 3 % len(groups)
                for g in groups[k:] + groups[:k]:
                    g.run(op, seconds / rounds, warmup if r == 0 else min(warmup, 0.1))
        return [c for g in groups for c in g.cells()]
    finally:
        for g in groups:
            g.close()


# --- report --------------------------------------------------------------------------------


def find(cells: Sequence[Cell], op: str, target: str, tokens: int, procs: int) -> Cell:
    for c in cells:
        if (c.op, c.target, c.tokens, c.procs) == (op, target, tokens, procs):
            return c
    raise KeyError((op, target, tokens, procs))


def verdict(value: float, bar: float) -> str:
    return "PASS" if value >= bar else "MISS"


def report(cells: Sequence[Cell]) -> tuple[str, dict[str, Any]]:
    """The printed table and ratios, and the summary that goes into the JSON."""
    out: list[str] = []
    head = (f"{'operation':<17} {'target':<12}| {'1 proc ops/s':>12} {'p50 µs':>8} "
            f"{'p99 µs':>8} {'cpu':>4} | {'2 procs ops/s':>13} {'p50 µs':>8} {'p99 µs':>8} "
            f"{'cpu':>4} | {'2p/1p':>5}")
    out += [head, "-" * len(head)]
    targets = [("raw", RAW_TOKEN + 1)] + [("pool", s) for s in PARTITIONS]
    for op in OPS:
        for i, (target, size) in enumerate(targets):
            one, two = find(cells, op, target, size, 1), find(cells, op, target, size, 2)
            label = "raw p11" if target == "raw" else f"pool {size} tok"
            out.append(
                f"{OP_TITLES[op] if i == 0 else '':<17} {label:<12}| "
                f"{one.ops_per_s:>12,.0f} {one.p50_us:>8.1f} {one.p99_us:>8.1f} "
                f"{one.cpu_share:>4.0%} | "
                f"{two.ops_per_s:>13,.0f} {two.p50_us:>8.1f} {two.p99_us:>8.1f} "
                f"{two.cpu_share:>4.0%} | {two.ops_per_s / one.ops_per_s:>5.2f}")
        out.append("")
    out.append("cpu: CPU time / wall time of each benchmark process during its timed loops "
               "(below ~95%: something else ran on the machine).")
    out.append("")

    ratios: dict[str, Any] = {"pool_vs_raw_1proc": {}, "pool_vs_raw_1proc_per_cpu_s": {},
                              "two_vs_one_proc": {}, "two_vs_one_proc_per_cpu_s": {}}
    bars: list[dict[str, Any]] = []
    out.append("pool / raw python-pkcs11, 1 process, ops/s (and ops per CPU-second)")
    for op in OPS:
        raw = find(cells, op, "raw", 1, 1)
        parts = []
        for size in (1, 3):
            pool = find(cells, op, "pool", size, 1)
            r = pool.ops_per_s / raw.ops_per_s
            r_cpu = pool.ops_per_cpu_s / raw.ops_per_cpu_s
            ratios["pool_vs_raw_1proc"][f"{op}/{size}tok"] = r
            ratios["pool_vs_raw_1proc_per_cpu_s"][f"{op}/{size}tok"] = r_cpu
            text = f"{size} tok {r:4.2f}x ({r_cpu:4.2f}x)"
            if op == "aes_gcm_32":
                v = verdict(r, BAR_POOL_VS_RAW)
                bars.append({"bar": f"pool/raw {op} 1 proc {size} tok >= {BAR_POOL_VS_RAW}",
                             "value": r, "verdict": v})
                text += f" {v}"
            parts.append(text)
        out.append(f"  {OP_TITLES[op]:<17} " + "   ".join(parts))
    out.append(f"  bar: pool AES-GCM >= {BAR_POOL_VS_RAW}x raw in one process")
    out.append("")
    out.append(f"2 processes / 1 process, ops/s (bar for the pool: >= {BAR_TWO_VS_ONE}x); in "
               "parentheses the same per CPU-second")
    out.append("(per CPU-second ~1.0 = no contention between the processes; the rest is cores)")
    for op in OPS:
        parts = []
        for target, size in targets:
            one, two = find(cells, op, target, size, 1), find(cells, op, target, size, 2)
            r = two.ops_per_s / one.ops_per_s
            r_cpu = (two.ops_per_cpu_s / 2) / one.ops_per_cpu_s
            key = f"{target}/{op}" + (f"/{size}tok" if target == "pool" else "")
            ratios["two_vs_one_proc"][key] = r
            ratios["two_vs_one_proc_per_cpu_s"][key] = r_cpu
            if target == "raw":
                parts.append(f"raw {r:4.2f}x ({r_cpu:4.2f})")
                continue
            v = verdict(r, BAR_TWO_VS_ONE)
            bars.append({"bar": f"pool 2p/1p {op} {size} tok >= {BAR_TWO_VS_ONE}",
                         "value": r, "verdict": v})
            parts.append(f"pool {size} tok {r:4.2f}x ({r_cpu:4.2f}) {v}")
        out.append(f"  {OP_TITLES[op]:<17} " + "  ".join(parts))
    starved = sum(1 for c in cells if c.cpu_share < 0.9)
    if starved:
        waits = sum(c.voluntary_ctx_switches for c in cells)
        preempt = sum(c.involuntary_ctx_switches for c in cells)
        out += ["", f"WARNING: in {starved} of {len(cells)} cells the benchmark processes got "
                "< 90% of a CPU.",
                f"  Context switches in all timed loops: {waits:,} voluntary (waiting on locks "
                f"or I/O), {preempt:,} involuntary",
                "  (preempted by other load on the machine). Treat ops/s ratios with care; the "
                "per-CPU-second ones are less sensitive."]
    out += ["", "pool ops per token in the timed loops (one thread per process):"]
    out += [f"  {OP_TITLES[c.op]:<17} {c.tokens} tok {c.procs}p: "
            + ", ".join(f"{k} {v:,}" for k, v in c.member_ops.items())
            for c in cells if c.target == "pool" and c.tokens > 1]
    return "\n".join(out), {"ratios": ratios, "bars": bars}


def meta(seconds: float, warmup: float) -> dict[str, Any]:
    import pkcs11  # version only; nothing is loaded here

    version = getattr(pkcs11, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version("python-pkcs11")
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "python_pkcs11": version, "module": SOFTHSM_LIB,
        "seconds_per_cell": seconds, "warmup_seconds": warmup,
        "plaintext_bytes": len(PLAINTEXT), "aad_bytes": len(AAD),
        "message_bytes": len(MESSAGE), "partitions": {str(k): [f"hsmpool-{i}" for i in v]
                                                      for k, v in PARTITIONS.items()},
        "raw_token": f"hsmpool-{RAW_TOKEN}",
        "softhsm2": _command(["softhsm2-util", "--version"]),
        "git_commit": _command(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "hsmpool_modified": bool(_command(["git", "-C", str(ROOT), "status", "--porcelain",
                                           "--", "hsmpool", "native"])),
    }


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


# --- profiling -------------------------------------------------------------------------------


def _layers(op: str, size: int, blob: bytes) -> tuple[dict[str, Op], Callable[[], None]]:
    """The op through the public API, with a pre-parsed blob, and through the pool's own
    binding alone (one leased session, the cached key handle; private API, tooling only)."""
    from hsmpool import KeyBlob, Pool, SignAlgorithm
    from hsmpool import _p11 as p

    pool = Pool.open(config_path(size))
    inst = pool.instance(instance_name(size))
    kb = KeyBlob.parse(blob)
    member = inst.members[0]
    session = member.module.open_session(member.slot)
    handle = inst._handle(member, kb)
    mod, urandom, sha256 = member.module, os.urandom, hashlib.sha256
    layers: dict[str, Op]
    if op == "aes_gcm_32":
        def binding() -> bytes:
            nonce = urandom(12)
            return nonce + mod.gcm(p.ENCRYPT, session, handle, nonce, AAD, PLAINTEXT)
        layers = {"inst.encrypt(blob bytes)": lambda: inst.encrypt(blob, PLAINTEXT, AAD),
                  "inst.encrypt(KeyBlob)": lambda: inst.encrypt(kb, PLAINTEXT, AAD)}
    else:
        alg = (SignAlgorithm.ECDSA_SHA256 if op == "ecdsa_p256"
               else SignAlgorithm.RSA_PKCS1_SHA256)
        if op == "ecdsa_p256":
            mech, prefix, size_out = p.Mechanism.plain(p.CKM_ECDSA), b"", 132
        else:
            mech, size_out = p.Mechanism.plain(p.CKM_RSA_PKCS), 512
            prefix = bytes.fromhex("3031300d060960864801650304020105000420")

        def binding() -> bytes:
            return mod.crypt(p.SIGN, session, mech, handle,
                             prefix + sha256(MESSAGE).digest(), size_out)
        layers = {"inst.sign(blob bytes)": lambda: inst.sign(blob, MESSAGE, alg),
                  "inst.sign(KeyBlob)": lambda: inst.sign(kb, MESSAGE, alg)}
    layers["binding only (_p11.Module)"] = binding

    def close() -> None:
        mod.close_session(session)
        pool.close()

    return layers, close


def profile(op: str, seconds: float, size: int = 1) -> None:
    """Where a single-process pool loop of one op spends its time.

    1. Layers, interleaved in rounds with raw python-pkcs11 in a spawned process: the public
       call, the call with a pre-parsed blob, and the pool's binding alone; ops per
       CPU-second, so load from elsewhere on the machine counts less.
    2. cProfile of the public call (the profiler inflates cheap Python functions).
    """
    import cProfile
    import pstats

    make_tokens()
    write_configs()
    blob = make_keys()[size][op]
    raw = Group("raw", 1, 1, {})
    layers, close = _layers(op, size, blob)
    counts = dict.fromkeys(layers, 0)
    cpu = dict.fromkeys(layers, 0)
    rounds, slice_s = 6, max(0.2, seconds / 6)
    try:
        raw.ready()
        for fn in layers.values():
            warm_up(fn, 0.3)
        for _ in range(rounds):
            raw.run(op, slice_s, 0.05)
            for name, fn in layers.items():
                c0 = time.process_time_ns()
                _, lat = timed_loop(fn, slice_s)
                cpu[name] += time.process_time_ns() - c0
                counts[name] += len(lat)
        raw_cell = raw.cells()[0]
        full = next(iter(layers))
        print(f"{OP_TITLES[op]}, one process, {rounds} interleaved rounds of {slice_s:.2f} s:")
        print(f"  {'':<30} {'ops/CPU-s':>10} {'µs/op':>7} {'/raw':>6}")
        print(f"  {'raw python-pkcs11 (own proc)':<30} {raw_cell.ops_per_cpu_s:>10,.0f} "
              f"{1e6 / raw_cell.ops_per_cpu_s:>7.2f} {1:>6.2f}")
        for name in layers:
            rate = counts[name] / (cpu[name] / 1e9)
            print(f"  {name:<30} {rate:>10,.0f} {1e6 / rate:>7.2f} "
                  f"{rate / raw_cell.ops_per_cpu_s:>6.2f}")
        us_full = cpu[full] / 1e3 / counts[full]
        us_bind = cpu["binding only (_p11.Module)"] / 1e3 / counts["binding only (_p11.Module)"]
        print(f"  pool layers above the binding: {us_full - us_bind:.2f} µs per op")

        fn = layers[full]
        prof = cProfile.Profile()
        prof.enable()
        elapsed, lat = timed_loop(fn, seconds)
        prof.disable()
    finally:
        close()
        raw.close()
    print(f"\ncProfile of {full}: {len(lat) / (elapsed / 1e9):,.0f} ops/s with the profiler")
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pool", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell (3)")
    ap.add_argument("--quick", action="store_true", help="1-second cells")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    ap.add_argument("--profile", choices=OPS, help="cProfile one single-process pool loop "
                    "of this op instead of running the benchmark")
    args = ap.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    if seconds <= 0:
        ap.error("--seconds must be positive")
    warmup = min(0.5, max(0.1, seconds / 4))
    if args.profile:
        profile(args.profile, seconds)
        return 0

    t_start = time.monotonic()
    make_tokens()
    write_configs()
    print("setting up keys (first open copies domain keys between tokens) ...", flush=True)
    keys = make_keys()
    t_setup = time.monotonic() - t_start
    cells = run_cells(keys, seconds, warmup)
    text, summary = report(cells)
    print()
    print(text)
    total = time.monotonic() - t_start
    print(f"\nsetup {t_setup:.1f} s, total {total:.1f} s")
    doc = {"meta": meta(seconds, warmup) | {"setup_seconds": t_setup, "total_seconds": total},
           "cells": [asdict(c) for c in cells], **summary}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    write_plots(args.json, doc, "pool")
    return 0


if __name__ == "__main__":
    sys.exit(main())
