"""Benchmark hsmpool.gm against cryptography (OpenSSL), gmssl and `openssl speed`.

Run as ``python -m benchmarks.gm`` from the repository root. Prints a table and writes
``bench-results/gm.json``. Not a test: nothing here asserts; the bars are reported.

Method: every cell is timed as repeated batches of calls (each batch about 40 ms), and the
best batch is kept. Per call means what a user pays for one message: for hsmpool the key
object exists already (like cryptography's AESGCM); for cryptography a Cipher/Hash object is
made per message (its SM4 has no reusable AEAD object; the key schedule is not the cost).
SM4-CBC includes PKCS#7 padding on both sides. SM2 ops/s: sign and verify of a 32-byte
message with the default ID, beside ``openssl speed -seconds 3 sm2`` run in the same process
tree, one after the other (this machine has few cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import hsmpool.gm as gm
from benchmarks.plots import write_plots

SIZES = [32, 1024, 16384, 1 << 20]
GMSSL_SIZES = {32, 1024}
ALGS = ["SM4-CTR", "SM4-GCM", "SM4-CBC", "SM3"]

BARS: list[tuple[str, str, float]] = [
    ("SM4-CTR 16 KiB, best vectorised vs cryptography", "ctr16k_best", 25.0),
    ("SM4-GCM 16 KiB, best vectorised vs cryptography", "gcm16k_best", 18.0),
    ("SM3 16 KiB vs cryptography", "sm3_16k", 1.0),
    ("SM4-GCM 32 B per call, best vectorised vs cryptography", "gcm32_best", 3.0),
    ("SM4-CTR 16 KiB, AVX2 path vs cryptography", "ctr16k_avx2", 15.0),
    ("SM4-CTR 16 KiB, portable vs cryptography", "ctr16k_portable", 0.8),
    ("SM2 sign vs openssl speed", "sm2_sign", 0.8),
    ("SM2 verify vs openssl speed", "sm2_verify", 0.8),
]


def best_rate(fn: Callable[[], object], batch_s: float = 0.04, reps: int = 5) -> float:
    """Calls per second: the best of `reps` batches of about batch_s seconds each."""
    fn()
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= batch_s / 4:
            break
        n *= 4
    n = max(1, int(n * batch_s / max(dt, 1e-9)))
    best = dt / max(n, 1) if n == 1 else float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return 1.0 / best


# ---- the operations ---------------------------------------------------------------------


def hsm_ops(key: bytes, nonce16: bytes, nonce12: bytes) -> dict[str, Callable[[bytes], object]]:
    ctr, gcm, cbc = gm.SM4CTR(key), gm.SM4GCM(key), gm.SM4CBC(key)
    return {
        "SM4-CTR": lambda d: ctr.encrypt(nonce16, d),
        "SM4-GCM": lambda d: gcm.encrypt(nonce12, d, None),
        "SM4-CBC": lambda d: cbc.encrypt(nonce16, d),
        "SM3": gm.sm3,
    }


def crypto_ops(key: bytes, nonce16: bytes, nonce12: bytes) -> dict[str, Callable[[bytes], object]]:
    sm4 = algorithms.SM4(key)

    def ctr(d: bytes) -> bytes:
        e = Cipher(sm4, modes.CTR(nonce16)).encryptor()
        return e.update(d) + e.finalize()

    def gcm(d: bytes) -> bytes:
        e = Cipher(sm4, modes.GCM(nonce12)).encryptor()
        out = e.update(d) + e.finalize()
        return out + e.tag

    def cbc(d: bytes) -> bytes:
        p = padding.PKCS7(128).padder()
        e = Cipher(sm4, modes.CBC(nonce16)).encryptor()
        return e.update(p.update(d) + p.finalize()) + e.finalize()

    def sm3(d: bytes) -> bytes:
        h = hashes.Hash(hashes.SM3())
        h.update(d)
        return h.finalize()

    return {"SM4-CTR": ctr, "SM4-GCM": gcm, "SM4-CBC": cbc, "SM3": sm3}


def gmssl_ops(key: bytes, nonce16: bytes) -> dict[str, Callable[[bytes], object]]:
    try:
        from gmssl import sm3 as g_sm3
        from gmssl import sm4 as g_sm4
    except ImportError:
        return {}
    c = g_sm4.CryptSM4()
    c.set_key(key, g_sm4.SM4_ENCRYPT)
    # gmssl has SM4 in ECB and CBC only; its SM3 takes a list of ints.
    return {
        "SM4-CBC": lambda d: c.crypt_cbc(nonce16, d),
        "SM3": lambda d: g_sm3.sm3_hash(list(d)),
    }


# ---- SM2 --------------------------------------------------------------------------------


def openssl_speed_sm2(seconds: int) -> tuple[float, float] | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "speed", "-seconds", str(seconds), "sm2"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        m = re.search(r"SM2.*\s([\d.]+)\s+([\d.]+)\s*$", line)
        if m:
            return float(m.group(1)), float(m.group(2))
    return None


def sm2_rates(passes: int, openssl_seconds: int) -> dict[str, float]:
    """Our sign/verify rates (best of several short batches spread over `passes` rounds) and
    `openssl speed` run between the rounds, so both see the machine in the same state."""
    key = gm.SM2PrivateKey.generate()
    pub = key.public_key()
    msg = os.urandom(32)
    sig = key.sign(msg)
    out: dict[str, float] = {"hsmpool_sign": 0.0, "hsmpool_verify": 0.0}
    for i in range(passes):
        out["hsmpool_sign"] = max(
            out["hsmpool_sign"], best_rate(lambda: key.sign(msg), batch_s=0.2, reps=2)
        )
        out["hsmpool_verify"] = max(
            out["hsmpool_verify"], best_rate(lambda: pub.verify(sig, msg), batch_s=0.2, reps=2)
        )
        if i == passes // 2:
            speed = openssl_speed_sm2(openssl_seconds)
            if speed is not None:
                out["openssl_speed_sign"], out["openssl_speed_verify"] = speed
    try:
        from gmssl.sm2 import CryptSM2
    except ImportError:
        return out
    g = CryptSM2(private_key=key.to_bytes().hex(), public_key="", mode=1)
    g.public_key = pub.to_bytes()[1:].hex()
    gsig = g.sign_with_sm3(msg)
    out["gmssl_sign"] = best_rate(lambda: g.sign_with_sm3(msg), batch_s=0.1, reps=2)
    out["gmssl_verify"] = best_rate(lambda: g.verify_with_sm3(gsig, msg), batch_s=0.1, reps=2)
    return out


# ---- driver -----------------------------------------------------------------------------


def fmt_size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1024 else f"{n} B"


def _bind(op: Callable[[bytes], object], d: bytes) -> Callable[[], object]:
    return lambda: op(d)


def run(args: argparse.Namespace) -> dict[str, Any]:
    key, nonce16, nonce12 = os.urandom(16), os.urandom(16), os.urandom(12)
    impls = list(reversed(gm.available_implementations()))  # best first
    before = gm.implementation()
    bufs = {s: os.urandom(s) for s in SIZES}
    # (alg, size, who, implementation to select or None, call)
    cells: list[tuple[str, int, str, str | None, Callable[[], object]]] = []
    for impl in impls:
        ops = hsm_ops(key, nonce16, nonce12)
        for alg in ALGS:
            for s in SIZES:
                cells.append((alg, s, f"hsmpool-{impl}", impl, _bind(ops[alg], bufs[s])))
    cops = crypto_ops(key, nonce16, nonce12)
    for alg in ALGS:
        for s in SIZES:
            cells.append((alg, s, "cryptography", None, _bind(cops[alg], bufs[s])))
    for alg, op in gmssl_ops(key, nonce16).items():
        for s in sorted(GMSSL_SIZES):
            cells.append((alg, s, "gmssl", None, _bind(op, bufs[s])))
    # results[alg][size][who] = calls per second. The machine may be shared: every cell is
    # measured in several passes spread over the run and the best pass is kept.
    results: dict[str, dict[int, dict[str, float]]] = {a: {s: {} for s in SIZES} for a in ALGS}
    try:
        for _ in range(args.passes):
            for alg, s, name, select, call in cells:
                if select is not None:
                    gm.set_implementation(select)
                slow = name == "gmssl"
                rate = best_rate(call, batch_s=0.05 if slow else 0.03, reps=1 if slow else 2)
                cur = results[alg][s]
                cur[name] = max(cur.get(name, 0.0), rate)
    finally:
        gm.set_implementation(before)

    sm2 = sm2_rates(args.passes, args.openssl_seconds)
    speed = "openssl_speed_sign" in sm2

    who = [f"hsmpool-{i}" for i in impls] + ["cryptography", "gmssl"]
    table: list[dict[str, Any]] = []
    for alg in ALGS:
        for s in SIZES:
            row: dict[str, Any] = {"alg": alg, "size": s}
            r = results[alg][s]
            for w in who:
                if w in r:
                    row[f"{w}_MBps"] = r[w] * s / 1e6
                    row[f"{w}_calls_per_s"] = r[w]
            for w in who[: len(impls)]:
                row[f"{w}_vs_cryptography"] = r[w] / r["cryptography"]
            table.append(row)

    def ratio(alg: str, size: int, impl: str) -> float | None:
        r = results[alg][size]
        k = f"hsmpool-{impl}"
        return r[k] / r["cryptography"] if k in r else None

    best = impls[0]
    measured: dict[str, float | None] = {
        "ctr16k_best": ratio("SM4-CTR", 16384, best),
        "gcm16k_best": ratio("SM4-GCM", 16384, best),
        "sm3_16k": ratio("SM3", 16384, best),
        "gcm32_best": ratio("SM4-GCM", 32, best),
        "ctr16k_avx2": ratio("SM4-CTR", 16384, "avx2"),
        "ctr16k_portable": ratio("SM4-CTR", 16384, "portable"),
        "sm2_sign": sm2["hsmpool_sign"] / sm2["openssl_speed_sign"] if speed else None,
        "sm2_verify": sm2["hsmpool_verify"] / sm2["openssl_speed_verify"] if speed else None,
    }
    bars = [
        {
            "bar": label,
            "target": target,
            "measured": measured[k],
            "met": None if measured[k] is None else bool(measured[k] >= target),  # type: ignore[operator]
        }
        for label, k, target in BARS
    ]
    return {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "implementations": impls,
        },
        "table": table,
        "sm2_ops_per_s": sm2,
        "bars": bars,
    }


def print_report(res: dict[str, Any]) -> None:
    impls: list[str] = res["machine"]["implementations"]
    who = [f"hsmpool-{i}" for i in impls] + ["cryptography", "gmssl"]
    head = f"{'alg':8} {'size':>7} " + " ".join(f"{w.replace('hsmpool-', ''):>12}" for w in who)
    head += "   " + " ".join(f"{'x' + i:>9}" for i in impls)
    print("throughput MB/s (ratio = hsmpool / cryptography, per call)")
    print(head)
    for row in res["table"]:
        cells = []
        for w in who:
            v = row.get(f"{w}_MBps")
            cells.append(f"{v:12.1f}" if v is not None else f"{'-':>12}")
        ratios = " ".join(f"{row[f'hsmpool-{i}_vs_cryptography']:9.2f}" for i in impls)
        print(f"{row['alg']:8} {fmt_size(row['size']):>7} " + " ".join(cells) + "   " + ratios)
    print()
    print("SM2 ops/s")
    for k, v in res["sm2_ops_per_s"].items():
        print(f"  {k:22} {v:10.1f}")
    print()
    print("bars")
    for b in res["bars"]:
        m = b["measured"]
        ms = f"{m:7.2f}x" if m is not None else "    n/a"
        flag = {True: "met", False: "NOT MET", None: "n/a"}[b["met"]]
        print(f"  {b['bar']:58} >= {b['target']:5.1f}x  {ms}  {flag}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", default="bench-results/gm.json", help="where to write results")
    ap.add_argument("--openssl-seconds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3, help="measurement passes over all cells")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args)
    res["wall_seconds"] = time.perf_counter() - t0
    print_report(res)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out} ({res['wall_seconds']:.0f} s)")
    write_plots(out, res, "gm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
