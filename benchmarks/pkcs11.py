"""C_Sign through ``libhsmpool-pkcs11.so`` beside the server's own Sign req/s, in one run.

    python -m benchmarks.pkcs11 [--seconds S] [--rounds R] [--threads T] [--quick] [--json PATH]

One ``hsmpool serve --workers 2`` on tokens hsmpool-10 and -11 of ``var/bench-tokens``
(instance ``p11bench``; the other benchmarks use hsmpool-0..9), with its own database and
audit directory in a temp dir under ``var/``; one ECC_NIST_P256 signing key. Two loads, each
with the same concurrency (``--threads``, default 4), interleaved in ``--rounds`` rounds so
that other load on this shared machine falls on both alike:

* ``module``: a child process loads the module with python-pkcs11 and runs ``--threads``
  threads, each with its own session, calling C_Sign(CKM_ECDSA) on a 32-byte digest in a
  loop (python-pkcs11 releases the GIL around the call; the module sends one SigV4-signed
  Sign request per call on a keep-alive connection and converts the DER signature to r||s).
* ``http``: wrk replaying pre-signed Sign requests (``MessageType`` DIGEST,
  ``ECDSA_SHA_256``, 256 distinct digests) on ``--threads`` keep-alive connections: the
  server's own rate for the same requests, without a PKCS#11 layer.

Bar (from the issue): module ops/s >= 0.5x the HTTP req/s. Results go to
``bench-results/pkcs11.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.server import (
    _LUA,
    HOST,
    REGION,
    WRK_QUANTILES,
    Server,
    free_port,
    hsmpool_bin,
    run_wrk,
    start,
    tree_cpu,
    wait_ready,
    write_requests,
)

ROOT: Final = Path(__file__).resolve().parent.parent
TOKEN_DIR: Final = ROOT / "var" / "bench-tokens"
N_TOKENS: Final = 12
TOKENS: Final = (10, 11)
INSTANCE: Final = "p11bench"
WORKERS: Final = 2
PIN: Final = "bench-pin"
DEFAULT_JSON: Final = ROOT / "bench-results" / "pkcs11.json"
BAR: Final = 0.5


def write_config(tmp: Path) -> Path:
    lines = ["[pool]", "sessions_per_token = 8", "",
             "[modules.softhsm]", 'path = "/usr/lib/softhsm/libsofthsm2.so"',
             f'env = {{ SOFTHSM2_CONF = "{TOKEN_DIR / "softhsm2.conf"}" }}', ""]
    for i in TOKENS:
        lines += [f"[tokens.t{i}]", 'module = "softhsm"', f'label = "hsmpool-{i}"',
                  f'pin_file = "{TOKEN_DIR / "user.pin"}"',
                  f'so_pin_file = "{TOKEN_DIR / "so.pin"}"', ""]
    lines += [f"[instances.{INSTANCE}]",
              "tokens = [" + ", ".join(f'"t{i}"' for i in TOKENS) + "]", "",
              "[kms]", f'database = "{tmp / "kms.db"}"', f'audit_dir = "{tmp / "audit"}"',
              f'region = "{REGION}"', ""]
    cfg = tmp / "hsmpool.toml"
    cfg.write_text("\n".join(lines))
    return cfg


def sign_requests(ak: str, sk: str, key_id: str, port: int, n: int) -> list[bytes]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = SigV4Auth(Credentials(ak, sk), "kms", REGION)
    host = f"{HOST}:{port}"
    out = []
    for _ in range(n):
        data = json.dumps({"KeyId": key_id, "MessageType": "DIGEST",
                           "SigningAlgorithm": "ECDSA_SHA_256",
                           "Message": base64.b64encode(secrets.token_bytes(32)).decode()}).encode()
        req = AWSRequest(method="POST", url=f"http://{host}/", data=data, headers={
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.Sign",
            "Host": host})
        auth.add_auth(req)
        head = ["POST / HTTP/1.1", *(f"{k}: {v}" for k, v in req.headers.items()),
                f"Content-Length: {len(data)}", "", ""]
        out.append("\r\n".join(head).encode() + data)
    return out


def module_load_main(conf: str, threads: int, seconds: float) -> int:
    """The child process of the ``module`` load: BENCHJSON {"ops", "seconds", "errors"}."""
    import pkcs11
    from pkcs11 import Mechanism, ObjectClass

    from hsmpool import pkcs11_module_path

    os.environ["HSMPOOL_PKCS11_CONF"] = conf
    lib = pkcs11.lib(pkcs11_module_path())
    token = lib.get_token(token_label="bench")
    login = token.open(user_pin=PIN)
    sessions = [token.open() for _ in range(threads)]
    counts = [0] * threads
    errors = [0] * threads
    start_evt = threading.Event()
    stop_at = [0.0]

    def work(k: int) -> None:
        key = sessions[k].get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
        digest = secrets.token_bytes(32)
        key.sign(digest, mechanism=Mechanism.ECDSA)  # warm: the connection
        start_evt.wait()
        while time.monotonic() < stop_at[0]:
            try:
                key.sign(digest, mechanism=Mechanism.ECDSA)
                counts[k] += 1
            except pkcs11.exceptions.PKCS11Error:
                errors[k] += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    stop_at[0] = t0 + seconds
    start_evt.set()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    for s in sessions:
        s.close()
    login.close()
    print("BENCHJSON " + json.dumps({"ops": sum(counts), "seconds": elapsed,
                                     "errors": sum(errors)}), flush=True)
    return 0


def run_module(conf: Path, threads: int, seconds: float) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "benchmarks.pkcs11", "--_module-load",
                          str(conf), "--threads", str(threads), "--seconds", str(seconds)],
                         cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120,
                         env={**os.environ, "HSMPOOL_PKCS11_QUIET": "1"})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"module load failed: {(out.stdout + out.stderr)[-2000:]}")
    doc: dict[str, Any] = json.loads(line[10:])
    return doc, time.monotonic() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pkcs11", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per load (10)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    ap.add_argument("--threads", type=int, default=4, help="threads / connections (4)")
    ap.add_argument("--quick", action="store_true", help="4 s per load in 2 rounds")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--_module-load", dest="module_load", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.module_load:
        return module_load_main(args.module_load, args.threads, args.seconds)
    seconds, rounds = (4.0, 2) if args.quick else (args.seconds, args.rounds)
    if not shutil.which("wrk"):
        ap.error("wrk is not installed (apt-get install wrk)")
    t_start = time.monotonic()
    subprocess.run(["bash", str(ROOT / "softhsm-config" / "make-tokens.sh"), str(TOKEN_DIR),
                    str(N_TOKENS)], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="p11bench-", dir=ROOT / "var"))
    server: Server | None = None
    module_runs: list[dict[str, Any]] = []
    http_runs: list[dict[str, Any]] = []
    try:
        cfg = write_config(tmp)
        done = subprocess.run([hsmpool_bin(), "--config", str(cfg), "credentials", "create",
                               "--instance", INSTANCE, "--name", "bench", "--json"],
                              capture_output=True, text=True, timeout=120, check=True)
        doc = json.loads(done.stdout)
        ak, sk = doc["AccessKeyId"], doc["SecretAccessKey"]
        port = free_port()
        server = start("hsmpool", [hsmpool_bin(), "--config", str(cfg), "serve", "--host",
                                   HOST, "--port", str(port), "--workers", str(WORKERS)],
                       port, tmp)
        wait_ready(server, "/metrics", WORKERS)
        from benchmarks.server import boto_client
        from kms.cli.pkcs11 import encrypt_credential

        kms = boto_client(port, ak, sk)
        key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")[
            "KeyMetadata"]["KeyId"]
        cred = tmp / "module.cred"
        cred.write_text(json.dumps(encrypt_credential(doc, PIN)))
        conf = tmp / "module.conf"
        conf.write_text(f"[slot]\ntoken_label = bench\nendpoint = http://{HOST}:{port}\n"
                        f"credential_file = {cred}\nkey = ec {key_id}\n"
                        "refresh_seconds = 3600\n")
        script = tmp / "cycle.lua"
        script.write_text(_LUA.replace("QUANTILES", str(WRK_QUANTILES)))
        reqfile = tmp / "sign.reqs"
        print(f"setup {time.monotonic() - t_start:.1f} s; {args.threads} threads / "
              f"connections, {rounds} rounds of {seconds / rounds:g} s each", flush=True)
        run_module(conf, args.threads, 1.0)  # warm-up
        write_requests(reqfile, sign_requests(ak, sk, key_id, port, 256))
        run_wrk(port, reqfile, script, args.threads, 1, 1)
        per = max(1, round(seconds / rounds))
        for r in range(rounds):
            order = ["module", "http"] if r % 2 == 0 else ["http", "module"]
            for what in order:
                cpu0 = tree_cpu(server.proc.pid)
                if what == "module":
                    res, _ = run_module(conf, args.threads, float(per))
                    module_runs.append({**res, "server_cpu": tree_cpu(server.proc.pid) - cpu0})
                else:
                    # re-signed each round: the server allows 5 minutes of clock skew
                    write_requests(reqfile, sign_requests(ak, sk, key_id, port, 256))
                    lr = run_wrk(port, reqfile, script, args.threads, 1, per)
                    http_runs.append({"ops": lr.requests, "seconds": lr.seconds,
                                      "errors": lr.errors,
                                      "server_cpu": tree_cpu(server.proc.pid) - cpu0})
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def total(runs: list[dict[str, Any]]) -> dict[str, float]:
        ops = sum(x["ops"] for x in runs)
        secs = sum(x["seconds"] for x in runs)
        return {"ops": ops, "seconds": secs, "ops_per_s": ops / secs if secs else 0.0,
                "errors": sum(x["errors"] for x in runs),
                "server_us_per_op": sum(x["server_cpu"] for x in runs) / max(1, ops) * 1e6}

    mod, http = total(module_runs), total(http_runs)
    ratio = mod["ops_per_s"] / http["ops_per_s"] if http["ops_per_s"] else 0.0
    print()
    print(f"{'load':<32} | {'ops/s':>9} {'errors':>6} {'srv µs/op':>9}")
    print("-" * 62)
    print(f"{'module C_Sign ECDSA P-256':<32} | {mod['ops_per_s']:>9,.0f} {mod['errors']:>6.0f} "
          f"{mod['server_us_per_op']:>9.0f}")
    print(f"{'HTTP Sign (wrk, pre-signed)':<32} | {http['ops_per_s']:>9,.0f} "
          f"{http['errors']:>6.0f} {http['server_us_per_op']:>9.0f}")
    verdict = "PASS" if ratio >= BAR and mod["errors"] == 0 else "MISS"
    print(f"\nbar: module ops/s >= {BAR}x HTTP Sign req/s: {ratio:.2f}x  {verdict}")
    doc_out = {"meta": {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "host": platform.node(), "cpus": os.cpu_count(),
                        "python": platform.python_version(), "threads": args.threads,
                        "rounds": rounds, "seconds_per_round": per, "workers": WORKERS,
                        "tokens": [f"hsmpool-{i}" for i in TOKENS],
                        "total_seconds": time.monotonic() - t_start},
               "module": {**mod, "runs": module_runs}, "http": {**http, "runs": http_runs},
               "ratio": ratio, "bar": {"bar": f"module >= {BAR}x HTTP", "value": ratio,
                                       "verdict": verdict}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc_out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
