"""KMS operations beside the pool operations underneath them, in one process.

    python -m benchmarks.kms [--seconds S | --quick] [--no-files] [--rows ROW ...]
                             [--json PATH] [--profile ROW [--profile-target TARGET]]

Rows (each a KMS call through ``KmsClient`` and the raw operation it rests on):

=====================  ===========================================  ===========================
row                    KMS call                                     raw operation
=====================  ===========================================  ===========================
encrypt_aes            Encrypt 32 B, SYMMETRIC_DEFAULT, no context  ``inst.encrypt`` (AAD 18 B)
encrypt_aes_ctx        the same with a two-entry context            ``inst.encrypt`` (same AAD)
decrypt_aes            Decrypt of the first row's ciphertext        ``inst.decrypt``
datakey_aes            GenerateDataKey AES_256, AES CMK             ``inst.random(32)`` +
                                                                    ``inst.encrypt``
encrypt_sm4            Encrypt 32 B, SM4 CMK                        SM4GCM.encrypt + urandom
datakey_sm4            GenerateDataKey AES_256, SM4 CMK             ``inst.random(32)`` +
                                                                    SM4GCM.encrypt + urandom
sign_ecdsa             Sign 32 B, ECC_NIST_P256, ECDSA_SHA_256      ``inst.sign`` ECDSA
sign_rsa_pss           Sign 32 B, RSA_2048, RSASSA_PSS_SHA_256      ``inst.sign`` RSA-PSS
sign_rsa_pkcs1         Sign 32 B, RSA_2048, RSASSA_PKCS1_V1_5_...   ``inst.sign`` PKCS#1 v1.5
sign_sm2               Sign 32 B, SM2, SM2DSA                       ``SM2PrivateKey.sign``
=====================  ===========================================  ===========================

The raw operations get what the service hands the pool: the parsed ``KeyBlob`` the service
caches (``Kms.versions``), an AAD of the same length as the service's (18-byte ciphertext header
plus the canonical context), the same SM4/SM2 key material. So ``kms / raw`` is the cost of
the service's own layers (resolve, authorise, state checks, ciphertext format, result
objects, audit) over the work that has to be done anyway.

Three targets per row, all in this one process, on the instance ``kmsbench`` (one SoftHSM2
token, ``hsmpool-6`` in ``var/bench-tokens``; ``benchmarks.pool`` uses hsmpool-0..5 there):
``raw``, ``kms`` (audit off) and ``kms+audit`` (a ``kms.audit.AuditLog`` segment in a temp
dir, ``sync=True`` as ``Kms.open`` makes it; skipped if ``kms.audit`` cannot be imported).
Both services share one pool and one metadata store (a temp SQLite file under ``var/``); the
keys are created once. The caller is the embedder (principal None), so no policy is
evaluated.

Interleaved rounds: a row's time is split into rounds of about half a second, and in each
round every target of the row runs in turn (rotating the order), so load from elsewhere on
the machine falls on all alike. Every op is timed (``perf_counter_ns``) for p50/p99. The
audit writer runs as a thread of this process, so its cost shows as GIL and CPU contention;
at the end of each timed slice the ``kms+audit`` target waits for ``AuditLog.flush()`` and
that wait counts in its elapsed time, so the records of a slice are paid for in the slice
(their commits, not their latency: p50/p99 are per call). ``cpu`` is process CPU time
(all threads) over wall time; well below 100 % means other load on the machine took the
CPU, which is why every ratio is also given per CPU-second (ops per CPU-second over raw's;
for ``kms+audit`` that CPU includes the writer thread, the real cost of the audit).

File encryption (if ``kms.fileenc`` exists): ``encrypt_file`` / ``decrypt_file`` of a 1 GiB
file of random bytes (256 MiB with ``--quick``) under an SM4 CMK (SM4-GCM data cipher) and an
AES CMK (AES-GCM), in a temp dir under ``var/`` that is deleted afterwards; timed up to a
flushed output, with an untimed fsync after every phase so that one phase's dirty pages do
not slow the next; best of two passes (writes into fresh page-cache pages vary a lot on a
VM). Beside them, measured in the same run: the cipher alone in memory over
1 MiB chunks (SM4GCM; cryptography's AESGCM), and a plain copy of the file.

``--profile ROW`` (e.g. ``encrypt_aes``) instead splits one row into layers, interleaved, in
CPU time per op: raw, KMS with the audit off, KMS handing its events to a log that drops them
(the caller's share of auditing), KMS with the real AuditLog (its writer thread included);
then a cProfile of ``--profile-target`` (default ``kms``).

Results go to ``bench-results/kms.json``. The bar printed at the end (symmetric Encrypt >= 0.5x
the raw pool encrypt) comes from the issue; it is a report, not a test.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final

ROOT: Final = Path(__file__).resolve().parent.parent
TOKEN_DIR: Final = ROOT / "var" / "bench-tokens"
CONFIG: Final = TOKEN_DIR / "bench-kms.toml"
DEFAULT_JSON: Final = ROOT / "bench-results" / "kms.json"
SOFTHSM_LIB: Final = "/usr/lib/softhsm/libsofthsm2.so"
N_TOKENS: Final = 7  # make-tokens.sh is idempotent: this adds hsmpool-6 beside pool.py's 0..5
TOKEN_LABEL: Final = "hsmpool-6"
INSTANCE: Final = "kmsbench"

PLAINTEXT: Final = bytes(range(32))
MESSAGE: Final = bytes(range(200, 232))
CONTEXT: Final = {"purpose": "benchmark", "tenant": "t-000042"}
HEADER_LEN: Final = 18  # kms.ciphertext.HEADER_LEN: format, version id, algorithm

BAR_ENCRYPT: Final = 0.5  # KMS Encrypt ops/s over the raw pool encrypt
BAR_ROWS: Final = ("encrypt_aes",)
TARGETS: Final = ("raw", "kms", "kms+audit")
SLICE_S: Final = 0.5  # about this long per target per round
FILE_REPS: Final = 2  # file phases: best of (writes into fresh page-cache pages vary a lot)

Op = Callable[[], object]


# --- setup -------------------------------------------------------------------------------


def make_tokens() -> None:
    script = ROOT / "softhsm-config" / "make-tokens.sh"
    subprocess.run(["bash", str(script), str(TOKEN_DIR), str(N_TOKENS)], check=True)


def write_config() -> None:
    CONFIG.write_text("\n".join([
        "[pool]",
        "sessions_per_token = 4",
        "",
        "[modules.softhsm]",
        f'path = "{SOFTHSM_LIB}"',
        f'env = {{ SOFTHSM2_CONF = "{TOKEN_DIR / "softhsm2.conf"}" }}',
        "",
        "[tokens.t6]",
        'module = "softhsm"',
        f'label = "{TOKEN_LABEL}"',
        f'pin_file = "{TOKEN_DIR / "user.pin"}"',
        f'so_pin_file = "{TOKEN_DIR / "so.pin"}"',
        "",
        f"[instances.{INSTANCE}]",
        'tokens = ["t6"]',
        "",
    ]))


@dataclass
class Row:
    name: str
    title: str
    raw_title: str
    raw: Op
    call: Callable[[Any], Op]  # KmsClient -> the KMS op through that client
    ops: dict[str, Op] = field(default_factory=dict)  # target -> op


@dataclass
class Setup:
    """The services, keys and rows of one run; ``close`` releases everything."""

    rows: list[Row]
    kms_plain: Any
    kms_audit: Any | None
    audit_note: str
    client: Any  # the audit-off client (file encryption uses it)
    keys: dict[str, str]  # role -> key id
    tmp: Path
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.closers):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                print(f"  (cleanup: {exc!r})", file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)


def setup(tmp: Path) -> Setup:
    from hsmpool import Pool, SignAlgorithm
    from hsmpool.gm import SM4GCM, SM2PrivateKey
    from kms import Kms, Store
    from kms.config import KmsSettings

    pool = Pool.open(CONFIG)
    closers: list[Callable[[], None]] = [pool.close]
    s = Setup([], None, None, "", None, {}, tmp, closers)
    try:
        store = Store(tmp / "kms.db")
        closers.append(store.close)
        settings = KmsSettings(database=str(tmp / "kms.db"), audit_dir=None)
        kms = Kms(pool, store, settings, audit=None)
        s.kms_plain = kms
        try:
            from kms.audit import AuditLog
        except Exception as exc:  # noqa: BLE001 - written concurrently; report, don't fail
            s.audit_note = f"kms+audit skipped: importing kms.audit failed ({exc!r})"
        else:
            try:
                log = AuditLog(tmp / "audit", "kmsbench")
            except Exception as exc:  # noqa: BLE001 - as above
                s.audit_note = f"kms+audit skipped: AuditLog(dir, segment) failed ({exc!r})"
            else:
                closers.append(log.close)
                s.kms_audit = Kms(pool, store, settings, audit=log)
                s.audit_note = ("kms+audit: AuditLog(sync=True) segment in a temp dir; flush() "
                                "at the end of every timed slice counts in the slice")
        client = kms.client(INSTANCE)
        s.client = client
        aclient = s.kms_audit.client(INSTANCE) if s.kms_audit is not None else None
        inst = client.inst

        specs = {"aes": ("SYMMETRIC_DEFAULT", None), "sm4": ("SM4", None),
                 "ecdsa": ("ECC_NIST_P256", "SIGN_VERIFY"),
                 "rsa": ("RSA_2048", "SIGN_VERIFY"), "sm2": ("SM2", "SIGN_VERIFY")}
        versions = {}
        for role, (spec, usage) in specs.items():
            rec = client.create_key(spec, usage, description=f"benchmarks.kms {role}")
            s.keys[role] = rec.key_id
            v = kms._version(rec.primary_version or "")
            if v is None:
                raise RuntimeError(f"{role} key has no primary version")
            versions[role] = v
        material = kms.versions  # the service's parsed blobs and software secrets
        aes_kb = material.blob(versions["aes"])
        ec_kb, rsa_kb = material.blob(versions["ecdsa"]), material.blob(versions["rsa"])
        sm4 = SM4GCM(material.secret(inst, versions["sm4"]))
        sm2 = SM2PrivateKey.from_bytes(material.secret(inst, versions["sm2"]))
        from kms.ciphertext import canonical_context

        aad = bytes(HEADER_LEN)
        aad_ctx = bytes(HEADER_LEN + len(canonical_context(CONTEXT)))
        aes_id, sm4_id = s.keys["aes"], s.keys["sm4"]
        ec_id, rsa_id, sm2_id = s.keys["ecdsa"], s.keys["rsa"], s.keys["sm2"]

        # Sanity, once (not measured): round trips and signatures through the service.
        ct = client.encrypt(aes_id, PLAINTEXT).ciphertext_blob
        ct_ctx = client.encrypt(aes_id, PLAINTEXT, CONTEXT).ciphertext_blob
        raw_ct = inst.encrypt(aes_kb, PLAINTEXT, aad)
        if (client.decrypt(ct).plaintext != PLAINTEXT
                or client.decrypt(ct_ctx, CONTEXT).plaintext != PLAINTEXT
                or inst.decrypt(aes_kb, raw_ct, aad) != PLAINTEXT
                or client.decrypt(client.encrypt(sm4_id, PLAINTEXT).ciphertext_blob).plaintext
                != PLAINTEXT):
            raise RuntimeError("encrypt/decrypt round trip failed")
        for kid, alg in ((ec_id, "ECDSA_SHA_256"), (rsa_id, "RSASSA_PSS_SHA_256"),
                         (rsa_id, "RSASSA_PKCS1_V1_5_SHA_256"), (sm2_id, "SM2DSA")):
            sig, _ = client.sign(kid, MESSAGE, alg)
            client.verify(kid, MESSAGE, sig, alg)  # raises if the signature is wrong

        urandom, ecdsa = os.urandom, SignAlgorithm.ECDSA_SHA256
        pss, pkcs1 = SignAlgorithm.RSA_PSS_SHA256, SignAlgorithm.RSA_PKCS1_SHA256

        def raw_sm4_datakey() -> bytes:
            nonce = urandom(12)
            return nonce + sm4.encrypt(nonce, inst.random(32), aad)

        def raw_sm4_encrypt() -> bytes:
            nonce = urandom(12)
            return nonce + sm4.encrypt(nonce, PLAINTEXT, aad)

        s.rows = [
            Row("encrypt_aes", "Encrypt 32 B AES", "inst.encrypt, AAD 18 B",
                lambda: inst.encrypt(aes_kb, PLAINTEXT, aad),
                lambda c: lambda: c.encrypt(aes_id, PLAINTEXT)),
            Row("encrypt_aes_ctx", "Encrypt 32 B AES +ctx",
                f"inst.encrypt, AAD {len(aad_ctx)} B",
                lambda: inst.encrypt(aes_kb, PLAINTEXT, aad_ctx),
                lambda c: lambda: c.encrypt(aes_id, PLAINTEXT, CONTEXT)),
            Row("decrypt_aes", "Decrypt 32 B AES", "inst.decrypt, AAD 18 B",
                lambda: inst.decrypt(aes_kb, raw_ct, aad),
                lambda c: lambda: c.decrypt(ct)),
            Row("datakey_aes", "GenDataKey AES CMK", "inst.random(32) + inst.encrypt",
                lambda: inst.encrypt(aes_kb, inst.random(32), aad),
                lambda c: lambda: c.generate_data_key(aes_id, "AES_256")),
            Row("encrypt_sm4", "Encrypt 32 B SM4", "SM4GCM.encrypt + urandom(12)",
                raw_sm4_encrypt,
                lambda c: lambda: c.encrypt(sm4_id, PLAINTEXT)),
            Row("datakey_sm4", "GenDataKey SM4 CMK", "inst.random(32) + SM4GCM.encrypt",
                raw_sm4_datakey,
                lambda c: lambda: c.generate_data_key(sm4_id, "AES_256")),
            Row("sign_ecdsa", "Sign ECDSA P-256", "inst.sign ECDSA_SHA256",
                lambda: inst.sign(ec_kb, MESSAGE, ecdsa),
                lambda c: lambda: c.sign(ec_id, MESSAGE, "ECDSA_SHA_256")),
            Row("sign_rsa_pss", "Sign RSA-2048 PSS", "inst.sign RSA_PSS_SHA256",
                lambda: inst.sign(rsa_kb, MESSAGE, pss),
                lambda c: lambda: c.sign(rsa_id, MESSAGE, "RSASSA_PSS_SHA_256")),
            Row("sign_rsa_pkcs1", "Sign RSA-2048 PKCS1", "inst.sign RSA_PKCS1_SHA256",
                lambda: inst.sign(rsa_kb, MESSAGE, pkcs1),
                lambda c: lambda: c.sign(rsa_id, MESSAGE, "RSASSA_PKCS1_V1_5_SHA_256")),
            Row("sign_sm2", "Sign SM2", "SM2PrivateKey.sign",
                lambda: sm2.sign(MESSAGE),
                lambda c: lambda: c.sign(sm2_id, MESSAGE, "SM2DSA")),
        ]
        for row in s.rows:
            row.ops = {"raw": row.raw, "kms": row.call(client)}
            if aclient is not None:
                row.ops["kms+audit"] = row.call(aclient)
        # Close order (reversed): the services first (scheduler, audit), then store, pool.
        closers.append(lambda: s.kms_audit.close() if s.kms_audit is not None else None)
        return s
    except BaseException:
        s.close()
        raise


# --- measuring ---------------------------------------------------------------------------


def timed_loop(op: Op, seconds: float, finish: Callable[[], object] | None = None
               ) -> tuple[int, int, array[int]]:
    """Run ``op`` back to back for ``seconds``, then ``finish`` (inside the timing).
    Returns elapsed ns, process CPU ns and one latency sample (ns) per op."""
    ns = time.perf_counter_ns
    lat: array[int] = array("q")
    add = lat.append
    cpu0 = time.process_time_ns()
    start = t0 = ns()
    end = start + int(seconds * 1e9)
    while True:
        op()
        t1 = ns()
        add(t1 - t0)
        if t1 >= end:
            break
        t0 = t1
    if finish is not None:
        finish()
    t2 = ns()
    return t2 - start, time.process_time_ns() - cpu0, lat


def warm_up(op: Op, seconds: float) -> None:
    end = time.perf_counter() + seconds
    n = 0
    while n < 20 or time.perf_counter() < end:
        op()
        n += 1


@dataclass
class Cell:
    row: str
    target: str
    ops_per_s: float
    ops_per_cpu_s: float  # per CPU-second of the process (all threads)
    p50_us: float
    p99_us: float
    samples: int
    cpu_share: float  # process CPU (all threads) / wall time of the timed slices
    voluntary_ctx_switches: int
    involuntary_ctx_switches: int
    audit_commits: int | None = None  # group commits of the audit writer in the slices


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    if not sorted_ns:
        return float("nan")
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e3


def run_rows(s: Setup, seconds: float, warmup: float,
             only: Sequence[str] | None = None) -> list[Cell]:
    rounds = max(2, round(seconds / SLICE_S))
    slice_s = seconds / rounds
    log = s.kms_audit.audit if s.kms_audit is not None else None
    cells: list[Cell] = []
    for row in s.rows:
        if only and row.name not in only:
            continue
        targets = [t for t in TARGETS if t in row.ops]
        print(f"  {row.title}: {rounds} rounds x {len(targets)} targets x {slice_s:.2f} s",
              flush=True)
        for t in targets:
            warm_up(row.ops[t], warmup)
        if log is not None:
            log.flush()
        count = dict.fromkeys(targets, 0)
        elapsed = dict.fromkeys(targets, 0)
        cpu = dict.fromkeys(targets, 0)
        vcsw = dict.fromkeys(targets, 0)
        ivcsw = dict.fromkeys(targets, 0)
        commits = dict.fromkeys(targets, 0)
        lat = {t: array("q") for t in targets}
        for r in range(rounds):
            k = r % len(targets)
            for t in targets[k:] + targets[:k]:
                finish = log.flush if (t == "kms+audit" and log is not None) else None
                c0 = log.commits if log is not None else 0
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
                e, u, samples = timed_loop(row.ops[t], slice_s, finish)
                ru1 = resource.getrusage(resource.RUSAGE_SELF)
                commits[t] += (log.commits if log is not None else 0) - c0
                count[t] += len(samples)
                elapsed[t] += e
                cpu[t] += u
                vcsw[t] += ru1.ru_nvcsw - ru0.ru_nvcsw
                ivcsw[t] += ru1.ru_nivcsw - ru0.ru_nivcsw
                lat[t].extend(samples)
        for t in targets:
            ordered = sorted(lat[t])
            cells.append(Cell(row.name, t, count[t] / (elapsed[t] / 1e9),
                              count[t] / (cpu[t] / 1e9), percentile(ordered, 0.50),
                              percentile(ordered, 0.99),
                              len(ordered), cpu[t] / elapsed[t], vcsw[t], ivcsw[t],
                              commits[t] if t == "kms+audit" else None))
        gc.collect()
    return cells


# --- file encryption ---------------------------------------------------------------------


def run_files(s: Setup, size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """encrypt_file / decrypt_file throughput, beside the in-memory cipher and a plain copy."""
    try:
        from kms import fileenc
    except Exception as exc:  # noqa: BLE001 - written concurrently; report, don't fail
        return [], [f"file encryption skipped: kms.fileenc not importable ({exc!r})"]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from hsmpool.gm import SM4GCM

    enc = getattr(fileenc, "encrypt_file", None)
    dec = getattr(fileenc, "decrypt_file", None)
    if enc is None or dec is None:
        return [], ["file encryption skipped: kms.fileenc has no encrypt_file/decrypt_file"]
    notes: list[str] = []
    d = Path(tempfile.mkdtemp(prefix="files-", dir=s.tmp))
    results: list[dict[str, Any]] = []
    mib = 1 << 20
    try:
        src, dst, back = d / "plain.bin", d / "sealed.bin", d / "opened.bin"
        h = hashlib.sha256()
        with src.open("wb") as fh:
            left = size
            while left:
                b = os.urandom(min(16 * mib, left))
                h.update(b)
                fh.write(b)
                left -= len(b)
            fh.flush()
            os.fsync(fh.fileno())
        want = h.hexdigest()

        def timed(fn: Callable[[BinaryIO, BinaryIO], object], fin_path: Path,
                  fout_path: Path) -> tuple[float, object]:
            """Seconds for ``fn(fin, fout)`` up to a flushed ``fout``; the fsync after it
            is not timed but keeps one phase's dirty pages from slowing the next."""
            with fin_path.open("rb") as fin, fout_path.open("wb") as fout:
                t0 = time.perf_counter()
                res = fn(fin, fout)
                fout.flush()
                dt = time.perf_counter() - t0
                os.fsync(fout.fileno())
            return dt, res

        def copy(fin: BinaryIO, fout: BinaryIO) -> None:
            while chunk := fin.read(mib):
                fout.write(chunk)

        block, nonce, aad = os.urandom(mib), bytes(12), bytes(45)
        sm4, aes = SM4GCM(os.urandom(16)), AESGCM(os.urandom(32))
        ciphers: dict[str, Any] = {"sm4": sm4, "aes": aes}
        for role, label in (("sm4", "SM4 CMK"), ("aes", "AES CMK")):
            key_id = s.keys[role]
            # The cipher alone over 1 MiB chunks (fileenc's default), as many as the file.
            aead = ciphers[role]
            sealed = aead.encrypt(nonce, block, aad)
            mem = {}
            for what, fn, data in (("enc", aead.encrypt, block), ("dec", aead.decrypt, sealed)):
                t0 = time.perf_counter()
                for _ in range(size // mib):
                    fn(nonce, data, aad)
                mem[what] = size / mib / (time.perf_counter() - t0)
            times: dict[str, list[float]] = {"copy": [], "enc": [], "dec": []}
            ok, cipher = True, "?"
            try:
                for _ in range(FILE_REPS):
                    # Plain copy (read + write in 1 MiB chunks): the I/O by itself.
                    times["copy"].append(timed(copy, src, dst)[0])
                    dst.unlink()
                    t_enc, res = timed(partial(enc, s.client, key_id), src, dst)
                    t_dec, _ = timed(partial(dec, s.client), dst, back)
                    times["enc"].append(t_enc)
                    times["dec"].append(t_dec)
                    cipher = str(getattr(res, "cipher", "?"))
                    with back.open("rb") as fin:
                        ok = ok and hashlib.file_digest(fin, "sha256").hexdigest() == want
                    sealed_bytes = dst.stat().st_size
                    dst.unlink()
                    back.unlink()
            except Exception as exc:  # noqa: BLE001 - the API is new; report what happened
                notes.append(f"file encryption under the {label} failed: {exc!r}")
                continue
            mbs = {k: [size / mib / t for t in v] for k, v in times.items()}
            results.append({
                "cmk": label, "cipher": cipher, "bytes": size, "sealed_bytes": sealed_bytes,
                "encrypt_mb_s": max(mbs["enc"]), "decrypt_mb_s": max(mbs["dec"]),
                "copy_mb_s": max(mbs["copy"]), "memory_encrypt_mb_s": mem["enc"],
                "memory_decrypt_mb_s": mem["dec"], "all_mb_s": mbs, "round_trip_ok": ok})
    finally:
        shutil.rmtree(d, ignore_errors=True)
    notes.append(f"file encryption: encrypt_file/decrypt_file on open files in var/, best of "
                 f"{FILE_REPS}, timed up to a flushed output (the fsync after is not timed); "
                 "mem = the cipher alone over 1 MiB chunks in memory; copy = read + write "
                 "of the file in 1 MiB chunks; MB = MiB")
    return results, notes


# --- report ------------------------------------------------------------------------------


def find(cells: Sequence[Cell], row: str, target: str) -> Cell | None:
    for c in cells:
        if (c.row, c.target) == (row, target):
            return c
    return None


def verdict(value: float, bar: float) -> str:
    return "PASS" if value >= bar else "MISS"


def report(s: Setup, cells: Sequence[Cell], files: list[dict[str, Any]], notes: list[str]
           ) -> tuple[str, dict[str, Any]]:
    out: list[str] = []
    head = (f"{'operation':<21} | {'raw ops/s':>9} {'p50':>7} {'p99':>7} {'cpu':>4} | "
            f"{'kms ops/s':>9} {'p50':>7} {'p99':>7} {'cpu':>4} {'ratio (cpu)':>11} | "
            f"{'+audit ops/s':>12} {'p50':>7} {'p99':>7} {'cpu':>4} {'ratio (cpu)':>11}")
    out += [head, "-" * len(head)]
    ratios: dict[str, dict[str, float]] = {
        "kms_vs_raw": {}, "kms_audit_vs_raw": {}, "kms_audit_vs_kms": {},
        "kms_vs_raw_per_cpu_s": {}, "kms_audit_vs_raw_per_cpu_s": {}}
    for row in s.rows:
        raw, kms, aud = (find(cells, row.name, t) for t in TARGETS)
        if raw is None or kms is None:
            continue
        r = kms.ops_per_s / raw.ops_per_s
        rc = kms.ops_per_cpu_s / raw.ops_per_cpu_s
        ratios["kms_vs_raw"][row.name] = r
        ratios["kms_vs_raw_per_cpu_s"][row.name] = rc
        line = (f"{row.title:<21} | {raw.ops_per_s:>9,.0f} {raw.p50_us:>7.1f} "
                f"{raw.p99_us:>7.1f} {raw.cpu_share:>4.0%} | {kms.ops_per_s:>9,.0f} "
                f"{kms.p50_us:>7.1f} {kms.p99_us:>7.1f} {kms.cpu_share:>4.0%} "
                f"{r:>4.2f} ({rc:4.2f}) | ")
        if aud is not None:
            ra = aud.ops_per_s / raw.ops_per_s
            rac = aud.ops_per_cpu_s / raw.ops_per_cpu_s
            ratios["kms_audit_vs_raw"][row.name] = ra
            ratios["kms_audit_vs_raw_per_cpu_s"][row.name] = rac
            ratios["kms_audit_vs_kms"][row.name] = aud.ops_per_s / kms.ops_per_s
            line += (f"{aud.ops_per_s:>12,.0f} {aud.p50_us:>7.1f} {aud.p99_us:>7.1f} "
                     f"{aud.cpu_share:>4.0%} {ra:>4.2f} ({rac:4.2f})")
        else:
            line += f"{'-':>12}"
        out.append(line)
    out.append("p50/p99 in µs per call; ratio = ops/s over raw (in parentheses: ops per "
               "CPU-second over raw's); cpu = process CPU (all threads) / wall time.")
    out.append("raw operations: " + "; ".join(f"{row.title}: {row.raw_title}"
                                              for row in s.rows))
    out.append("")
    bars: list[dict[str, Any]] = []
    for name in BAR_ROWS:
        for variant, key in (("kms", "kms_vs_raw"), ("kms+audit", "kms_audit_vs_raw")):
            if name not in ratios[key]:
                continue
            v = ratios[key][name]
            vc = ratios[key + "_per_cpu_s"][name]
            vd = verdict(v, BAR_ENCRYPT)
            bars.append({"bar": f"{variant} {name} >= {BAR_ENCRYPT}x raw pool encrypt",
                         "value": v, "value_per_cpu_s": vc, "verdict": vd})
            out.append(f"bar: {variant:<9} Encrypt (AES) / raw inst.encrypt = {v:4.2f}x "
                       f"(>= {BAR_ENCRYPT}) {vd}   [per CPU-second {vc:4.2f}x]")
    aud_cells = [c for c in cells if c.target == "kms+audit" and c.audit_commits]
    if aud_cells:
        recs = sum(c.samples for c in aud_cells)
        commits = sum(c.audit_commits or 0 for c in aud_cells)
        out.append(f"audit: {recs:,} records in {commits:,} group commits "
                   f"({recs / commits:,.0f} records per commit)")
    starved = [c for c in cells if c.cpu_share < 0.9]
    if starved:
        out.append(f"WARNING: {len(starved)} of {len(cells)} cells got < 90% of a CPU "
                   "(other load on the machine, or waiting); treat those ratios with care.")
    if files:
        out += ["", f"{'file encryption':<15} | {'cipher':<11} {'size':>8} | "
                f"{'enc MB/s':>8} {'mem':>6} {'/mem':>4} | {'dec MB/s':>8} {'mem':>6} "
                f"{'/mem':>4} | {'copy':>5} | ok"]
        for f in files:
            out.append(
                f"{f['cmk']:<15} | {f['cipher']:<11} {f['bytes'] / (1 << 20):>4.0f} MiB | "
                f"{f['encrypt_mb_s']:>8,.0f} {f['memory_encrypt_mb_s']:>6,.0f} "
                f"{f['encrypt_mb_s'] / f['memory_encrypt_mb_s']:>4.2f} | "
                f"{f['decrypt_mb_s']:>8,.0f} {f['memory_decrypt_mb_s']:>6,.0f} "
                f"{f['decrypt_mb_s'] / f['memory_decrypt_mb_s']:>4.2f} | "
                f"{f['copy_mb_s']:>5,.0f} | {'yes' if f['round_trip_ok'] else 'NO'}")
    all_notes = [s.audit_note, *notes]
    out += ["", *[f"note: {n}" for n in all_notes if n]]
    return "\n".join(out), {"ratios": ratios, "bars": bars, "notes": all_notes}


def meta(seconds: float, warmup: float) -> dict[str, Any]:
    import hsmpool.gm as gm

    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "module": SOFTHSM_LIB, "token": TOKEN_LABEL,
        "instance": INSTANCE, "seconds_per_cell": seconds, "warmup_seconds": warmup,
        "slice_seconds": SLICE_S, "plaintext_bytes": len(PLAINTEXT),
        "message_bytes": len(MESSAGE), "context": CONTEXT, "sm4_implementation":
        gm.implementation(),
        "softhsm2": _command(["softhsm2-util", "--version"]),
        "git_commit": _command(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "modified": _command(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                              "hsmpool", "kms", "native"]).splitlines(),
    }


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


# --- profiling ---------------------------------------------------------------------------


class _NullLog:
    """An audit log that drops events: the caller-side cost of auditing, without the
    writer thread."""

    commits = 0

    def append(self, event: object) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def profile(s: Setup, row_name: str, seconds: float, target: str) -> None:
    """Where one row's time goes.

    1. Layers, interleaved in rounds, in ops per CPU-second of this process (all threads;
       less sensitive to other load than ops/s): the raw op, the KMS call with the audit
       off, with events handed to a log that drops them (the caller's share of auditing),
       and with the real AuditLog (plus its writer thread).
    2. cProfile of ``target`` (main thread only; the profiler inflates cheap calls).
    """
    import cProfile
    import pstats

    from kms import Kms

    row = next(r for r in s.rows if r.name == row_name)
    if target not in row.ops:
        raise SystemExit(f"{target} is not available here ({s.audit_note})")
    k = s.kms_plain
    null = Kms(k.pool, k.store, k.settings, audit=_NullLog())
    layers = {"raw": row.ops["raw"], "kms, audit off": row.ops["kms"],
              "kms, audit to a null log": row.call(null.client(INSTANCE))}
    log = s.kms_audit.audit if s.kms_audit is not None else None
    if "kms+audit" in row.ops:
        layers["kms, AuditLog"] = row.ops["kms+audit"]
    rounds = 6
    slice_s = max(0.2, seconds / rounds)
    count, cpu = dict.fromkeys(layers, 0), dict.fromkeys(layers, 0)
    for fn in layers.values():
        warm_up(fn, 0.2)
    for r in range(rounds):
        names = list(layers)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            finish = log.flush if (name == "kms, AuditLog" and log is not None) else None
            _, u, lat = timed_loop(layers[name], slice_s, finish)
            count[name] += len(lat)
            cpu[name] += u
    print(f"{row.title}, {rounds} interleaved rounds of {slice_s:.2f} s per layer:")
    print(f"  {'':<26} {'ops/CPU-s':>10} {'µs CPU/op':>10} {'/raw':>5} {'+µs':>6}")
    raw_us = cpu["raw"] / 1e3 / count["raw"]
    prev = raw_us
    for name in layers:
        us = cpu[name] / 1e3 / count[name]
        print(f"  {name:<26} {1e6 / us:>10,.0f} {us:>10.2f} {raw_us / us:>5.2f} "
              f"{us - prev:>+6.2f}")
        prev = us
    print("  (+µs: over the line above; CPU of all threads, so the AuditLog line includes "
          "its writer)")

    op = row.ops[target]
    prof = cProfile.Profile()
    prof.enable()
    elapsed, _, lat = timed_loop(op, seconds)
    prof.disable()
    print(f"\ncProfile of {target} {row.title}: {len(lat) / (elapsed / 1e9):,.0f} ops/s "
          "with the profiler")
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


# --- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kms", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell (3)")
    ap.add_argument("--quick", action="store_true",
                    help="1-second cells and a 256 MiB file")
    ap.add_argument("--no-files", action="store_true", help="skip file encryption")
    ap.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    ap.add_argument("--profile", metavar="ROW", help="cProfile one row instead of the "
                    "benchmark (e.g. encrypt_aes)")
    ap.add_argument("--profile-target", choices=TARGETS, default="kms")
    args = ap.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    if seconds <= 0:
        ap.error("--seconds must be positive")
    warmup = min(0.5, max(0.1, seconds / 4))
    file_size = (256 if args.quick else 1024) << 20

    t_start = time.monotonic()
    make_tokens()
    write_config()
    tmp = Path(tempfile.mkdtemp(prefix="kmsbench-", dir=ROOT / "var"))
    print(f"setting up keys on {TOKEN_LABEL} (instance {INSTANCE}, metadata in {tmp}) ...",
          flush=True)
    s = setup(tmp)
    try:
        names = [r.name for r in s.rows]
        for n in [*(args.rows or []), *([args.profile] if args.profile else [])]:
            if n not in names:
                ap.error(f"unknown row {n!r}; rows: {', '.join(names)}")
        if args.profile:
            profile(s, args.profile, seconds, args.profile_target)
            return 0
        t_setup = time.monotonic() - t_start
        cells = run_rows(s, seconds, warmup, args.rows)
        files: list[dict[str, Any]] = []
        notes: list[str] = []
        if args.no_files:
            notes.append("file encryption skipped (--no-files)")
        else:
            print(f"  file encryption, {file_size >> 20} MiB ...", flush=True)
            files, notes = run_files(s, file_size)
        text, summary = report(s, cells, files, notes)
    finally:
        s.close()
    print()
    print(text)
    total = time.monotonic() - t_start
    print(f"\nsetup {t_setup:.1f} s, total {total:.1f} s")
    doc = {"meta": meta(seconds, warmup) | {"setup_seconds": t_setup, "total_seconds": total},
           "cells": [asdict(c) for c in cells], "files": files, **summary}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
