"""HTTP throughput of ``hsmpool serve`` beside moto (server mode) and a trivial ASGI app.

    python -m benchmarks.server [--seconds S] [--warmup W] [--rounds R] [--quick]
                                [--loadgen wrk|python] [--connections C] [--ops OP ...]
                                [--targets T ...] [--json PATH]
    python -m benchmarks.server --profile [--seconds S] [--targets alibaba]
                                          # cProfile of a one-worker server (AWS or ACS3)

Operations: ``Encrypt`` (32 random bytes, no context), ``Decrypt`` (of ciphertexts made by
Encrypt of distinct plaintexts, no ``KeyId``) and ``GenerateDataKey`` (``KeySpec`` AES_256),
all under a ``SYMMETRIC_DEFAULT`` key, over HTTP/1.1 keep-alive on 127.0.0.1.

Targets, all started by this run on this machine (one target loaded at a time, in
interleaved rounds, see below):

* ``hsmpool``: ``hsmpool --config CFG serve --workers 2`` (uvicorn, httptools, uvloop), on
  tokens hsmpool-7..9 in ``var/bench-tokens`` (one instance ``serverbench`` of three tokens;
  ``benchmarks.pool`` uses hsmpool-0..5, ``benchmarks.kms`` hsmpool-6), with its own
  ``[kms]`` database and audit directory in a temp dir under ``var/`` (deleted afterwards).
  Audit records and metrics are on, as in production. The caller is an access key made by
  ``hsmpool credentials create`` (an admin policy ``kms:*``), so every request is SigV4
  verified and authorised by policy.
* ``moto``: ``python -m moto.server`` (werkzeug, threaded) on its own key.
* ``alibaba``: the same ``hsmpool`` server, sent Alibaba Cloud OpenAPI Encrypt requests
  (RPC style, ``KeyId`` and ``Plaintext`` in the query as the ``alibabacloud-kms20160120``
  SDK sends them, ACS3-HMAC-SHA256 signed by :func:`sign_acs3`) under the same key: the row
  "Alibaba Encrypt (ACS3)", measured in the same rounds as the AWS Encrypt row. An ACS3
  request carries ``x-acs-signature-nonce``, which a worker refuses to see twice, so these
  requests are never replayed: every load-generator run gets its own, signed just before it
  (:class:`FreshRequests`), as many as 3x the fastest rate seen so far allows (the warm-up's
  are made for 40,000 req/s); a run that comes within ``--connections`` of using them up is
  an error, not a figure.
* ``kms-instance``: the same ``hsmpool`` server on its KMS-instance port (HTTPS, its own CA),
  sent Alibaba KMS-instance (dkms-gcs protocol) Encrypt requests under the same key, each
  with a protobuf body and an RSA-2048 client-key signature (:mod:`benchmarks.instance_load`;
  the client key made by ``hsmpool aap create``). The server refuses a signed request seen
  more than 2 s earlier, so these are :class:`FreshRequests` too (signing costs about 1 ms of
  CPU each, before each run's clock starts). The report names what one RSA signature check
  costs, measured in the same run. wrk only (the python load generator has no TLS).
* ``trivial``: :func:`trivial_app` on the same stack as ``hsmpool serve`` (uvicorn with
  httptools, uvloop, 2 workers, no access log): it reads the body, parses the JSON and answers
  a fixed JSON of the size of an Encrypt response. It is the ceiling of the stack; it is sent
  the same pre-signed requests as hsmpool (and ignores the signature).

The load comes from a separate process. For every target and operation, ``--distinct``
requests (default 256) are signed up front with botocore's ``SigV4Auth`` for the current
time (the server accepts 5 minutes of skew; they are signed just before each cell), and
their raw bytes are replayed round-robin on ``--connections`` (8) keep-alive connections,
one request in flight per connection. GenerateDataKey bodies are all alike, so those
requests differ only where their signing second does. Load generators:

* ``wrk`` (default, if installed): one thread (``--wrk-threads``), a Lua script that cycles
  through the requests, written to a temp dir at run time; wrk counts status >= 400 as
  errors (the servers here send no 1xx/3xx). Latency percentiles are wrk's.
* ``python``: ``asyncio`` + ``uvloop`` raw streams in a child process (this module,
  ``--_loadgen``), parsing ``Content-Length``; non-2xx are errors; every request is timed.
  A connection the server closes is opened again, as wrk does: after a response with
  ``Connection: close`` (moto's werkzeug answers every request so) or when the socket closes
  under a request (an error); the reconnect counts in the next request's latency.

For each operation, every target first gets ``--warmup`` (2 s) of load, then the timed
``--seconds`` (10 s) are split into ``--rounds`` (5) rounds, and each round runs every
target in turn (the order rotates), so load from elsewhere on this shared machine falls on
all targets alike; a cell's req/s is its requests over its summed timed seconds, and its
p50/p99 come from the merged latency distribution of its rounds (wrk: 400 evenly spaced
quantiles per run, each standing for an equal share of that run's requests; python: every
request). Every load loop stops at its deadline or at a request cap, whichever comes first.
The ``lg cpu`` column is the load generator's CPU time (user+sys, from ``wait4``) over the
wall time of its runs (100 % = one core); ``srv cpu`` the same for the target's process tree
(from ``/proc``); ``other`` is the machine's busy CPU time that was neither (other load on
this shared machine; a cell is flagged when it is above 15 % of a core). The machine has 2
cores and the load generator shares them with the server, as the issue asks. ``srv µs/req``
and ``lg µs/req`` are CPU time per request, which other load on the machine disturbs much
less than req/s; ``cap req/s`` is a projection from them (not a measurement): the req/s the
server's plus the load generator's CPU per request would allow on all cores, with at most
one core per server process (moto is one process under one GIL).

Bars (from the issue; a report, not a test): hsmpool Encrypt >= 25x moto's Encrypt req/s,
>= 0.3x the trivial app's req/s, >= 10,000 req/s absolute; Alibaba Encrypt (ACS3) >= 0.8x
hsmpool's (AWS) Encrypt req/s; KMS-instance Encrypt >= 0.5x AWS Encrypt; hsmpool, alibaba
and kms-instance rows have 0 errors.
Results go to ``bench-results/server.json``.

``--profile`` starts a one-worker hsmpool server under cProfile (the worker runs
``cProfile`` around uvicorn, timed by the thread's CPU clock; the profile is written at
shutdown), loads it with Encrypt for ``--seconds`` and prints the top functions by own time
and the inclusive CPU per request of the main layers (the profiler inflates call-heavy
Python code; read the shares, not the microseconds).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

from benchmarks.plots import write_plots

ROOT: Final = Path(__file__).resolve().parent.parent
TOKEN_DIR: Final = ROOT / "var" / "bench-tokens"
DEFAULT_JSON: Final = ROOT / "bench-results" / "server.json"
SOFTHSM_LIB: Final = "/usr/lib/softhsm/libsofthsm2.so"
N_TOKENS: Final = 10  # make-tokens.sh is idempotent; pool.py uses 0..5, kms.py 6, we use 7..9
TOKENS: Final = (7, 8, 9)
INSTANCE: Final = "serverbench"
REGION: Final = "us-east-1"
HOST: Final = "127.0.0.1"

OPS: Final = ("Encrypt", "Decrypt", "GenerateDataKey")
TARGETS: Final = ("hsmpool", "trivial", "moto", "alibaba", "kms-instance")
WORKERS: Final = 2
SERVER_PROCESSES: Final = {"hsmpool": WORKERS, "alibaba": WORKERS, "kms-instance": WORKERS,
                           "trivial": WORKERS, "moto": 1, "hsmpool-profiled": 1}
INSTANCE_OPS: Final = ("Encrypt",)  # the operations the kms-instance target is measured on
ALIBABA_OPS: Final = ("Encrypt",)  # the operations the alibaba target is measured on
PLAINTEXT_BYTES: Final = 32

BAR_VS_MOTO: Final = 25.0
BAR_VS_TRIVIAL: Final = 0.3
BAR_ABSOLUTE: Final = 10_000.0
BAR_ALIBABA_VS_AWS: Final = 0.8
BAR_INSTANCE_VS_AWS: Final = 0.5
MAX_REQUESTS: Final = 2_000_000  # per load-generator run, besides the time limit
OTHER_CPU_WARN: Final = 0.15
WRK_QUANTILES: Final = 400  # quantiles wrk reports per run (0.125 %, 0.375 %, ... 99.875 %)

# A fixed answer of the size of an Encrypt response (base64 of a 94-byte blob, a key ARN).
_TRIVIAL_BODY: Final = json.dumps({
    "CiphertextBlob": base64.b64encode(bytes(94)).decode(),
    "KeyId": "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000",
    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}).encode()
_TRIVIAL_HEADERS: Final = [(b"content-type", b"application/x-amz-json-1.1"),
                           (b"content-length", str(len(_TRIVIAL_BODY)).encode())]
_TRIVIAL_400: Final = b'{"__type":"SerializationException","message":"bad body"}'


async def trivial_app(scope: Any, receive: Any, send: Any) -> None:
    """The stack's ceiling: read the body, parse the JSON, answer a fixed JSON."""
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    raw = b"".join(chunks)
    ok = True
    if scope["method"] == "POST":
        try:
            ok = isinstance(json.loads(raw), dict)
        except ValueError:
            ok = False
    if ok:
        await send({"type": "http.response.start", "status": 200, "headers": _TRIVIAL_HEADERS})
        await send({"type": "http.response.body", "body": _TRIVIAL_BODY})
    else:
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-length", str(len(_TRIVIAL_400)).encode())]})
        await send({"type": "http.response.body", "body": _TRIVIAL_400})


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


_TICK: Final = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user+sys) of a live process tree."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / _TICK


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    scheme: str = "http"  # the KMS-instance port's is https

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the session this run started
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start(name: str, argv: list[str], port: int, tmp: Path,
          env: dict[str, str] | None = None) -> Server:
    log = tmp / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    return Server(name, proc, port, log)


def raw_call(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = max(0, _framing(head)[0])
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body[:length]


def _framing(head: bytes) -> tuple[int, bool]:
    """A response head's ``Content-Length`` (-1 if it has none) and whether the server closes
    the connection after the response (``Connection: close``, or HTTP/1.0 without
    ``keep-alive``)."""
    low = head.lower()
    i = low.find(b"\r\ncontent-length:")
    if i < 0:
        length = -1
    else:
        j = low.find(b"\r\n", i + 2)
        length = int(low[i + 17:j if j >= 0 else len(low)])
    i = low.find(b"\r\nconnection:")
    if i < 0:
        return length, low.startswith(b"http/1.0")
    j = low.find(b"\r\n", i + 2)
    value = low[i + 13:j if j >= 0 else len(low)]
    return length, b"close" in value or (low.startswith(b"http/1.0")
                                         and b"keep-alive" not in value)


def wait_ready(server: Server, path: str, want_workers: int = 1, limit: float = 90.0) -> None:
    """Poll GET path on fresh connections until 200 (and, for hsmpool, until /metrics has
    shown ``want_workers`` distinct worker pids, i.e. every worker finished its startup)."""
    deadline = time.monotonic() + limit
    seen: set[bytes] = set()
    req = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n\r\n".encode()
    for _ in range(100_000):
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}); "
                               f"log:\n{server.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} not ready in {limit:.0f} s; log:\n"
                               f"{server.log.read_text()[-3000:]}")
        try:
            status, body = raw_call(server.port, req, 5.0)
        except OSError:
            time.sleep(0.2)
            continue
        if status == 200:
            if want_workers <= 1:
                return
            for line in body.splitlines():
                if line.startswith(b"# ") or b'worker="' not in line:
                    continue
                seen.add(line.split(b'worker="', 1)[1].split(b'"', 1)[0])
            if len(seen) >= want_workers:
                return
        time.sleep(0.05)


def start_free(name: str, argv: Callable[[int], list[str]], tmp: Path,
               env: dict[str, str] | None = None) -> Server:
    """Start a server on a free port (``argv(port)``)."""
    port = free_port()
    return start(name, argv(port), port, tmp, env)


def ensure_ready(srv: Server, argv: Callable[[int], list[str]], path: str, want: int,
                 tmp: Path, notes: list[str], env: dict[str, str] | None = None) -> Server:
    """Wait until a server started by :func:`start_free` answers; if it does not, it is
    started again once on another port (seen on this shared machine: a worker's startup
    failing on the SoftHSM tokens, TokenNotFoundError or C_Login CKR_GENERAL_ERROR, while
    other processes use the token directory). A retry is reported in the notes; the server
    that answers is returned, and one that does not is stopped."""
    try:
        wait_ready(srv, path, want)
        return srv
    except RuntimeError as exc:
        note = (f"{srv.name} failed to start, retried once: "
                f"{' | '.join(str(exc).splitlines()[-3:])}")
        notes.append(note)
        print(f"WARNING: {note}", flush=True)
        srv.stop()
    srv = start_free(srv.name, argv, tmp, env)
    try:
        wait_ready(srv, path, want)
    except BaseException:
        srv.stop()
        raise
    return srv


def start_ready(name: str, argv: Callable[[int], list[str]], path: str, want: int, tmp: Path,
                notes: list[str], env: dict[str, str] | None = None) -> Server:
    """Start a server on a free port and wait until it answers (retried once)."""
    return ensure_ready(start_free(name, argv, tmp, env), argv, path, want, tmp, notes, env)


def hsmpool_argv(cfg: Path, workers: int, instance_port: int | None = None
                 ) -> Callable[[int], list[str]]:
    extra = [] if instance_port is None else ["--kms-instance-port", str(instance_port)]
    return lambda port: [hsmpool_bin(), "--config", str(cfg), "serve", "--host", HOST,
                         "--port", str(port), "--workers", str(workers), *extra]


def moto_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]


MOTO_ENV: Final = {"AWS_DEFAULT_REGION": REGION}


def trivial_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "benchmarks.server:trivial_app", "--host", HOST,
            "--port", str(port), "--workers", str(WORKERS), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning",
            "--lifespan", "off", "--timeout-keep-alive", "30", "--backlog", "2048",
            # the same uvicorn settings as `hsmpool serve` (kms/server/run.py)
            "--no-server-header", "--no-date-header"]


# --- setup -------------------------------------------------------------------------------


def make_tokens(n: int = N_TOKENS) -> None:
    """Tokens hsmpool-0..n-1 in ``TOKEN_DIR`` (make-tokens.sh is idempotent)."""
    script = ROOT / "softhsm-config" / "make-tokens.sh"
    subprocess.run(["bash", str(script), str(TOKEN_DIR), str(n)], check=True)


def write_config(tmp: Path, tokens: Sequence[int] = TOKENS, instance: str = INSTANCE, *,
                 token_dir: Path = TOKEN_DIR, label: str = "hsmpool") -> Path:
    """A config of one instance on ``tokens`` (``label``-N in ``token_dir``), its ``[kms]``
    database and audit in tmp."""
    lines = ["[pool]", "sessions_per_token = 8", "",
             "[modules.softhsm]", f'path = "{SOFTHSM_LIB}"',
             f'env = {{ SOFTHSM2_CONF = "{token_dir / "softhsm2.conf"}" }}', ""]
    for i in tokens:
        lines += [f"[tokens.t{i}]", 'module = "softhsm"', f'label = "{label}-{i}"',
                  f'pin_file = "{token_dir / "user.pin"}"',
                  f'so_pin_file = "{token_dir / "so.pin"}"', ""]
    names = ", ".join(f'"t{i}"' for i in tokens)
    lines += [f"[instances.{instance}]", f"tokens = [{names}]", "",
              "[kms]", f'database = "{tmp / "kms.db"}"', f'audit_dir = "{tmp / "audit"}"',
              f'region = "{REGION}"', ""]
    cfg = tmp / "hsmpool.toml"
    cfg.write_text("\n".join(lines))
    return cfg


def hsmpool_bin() -> str:
    cand = Path(sys.executable).parent / "hsmpool"
    return str(cand) if cand.exists() else "hsmpool"


def create_credentials(cfg: Path, instance: str = INSTANCE) -> tuple[str, str]:
    done = subprocess.run([hsmpool_bin(), "--config", str(cfg), "credentials", "create",
                           "--instance", instance, "--name", "bench", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"credentials create failed: {done.stderr.strip()}")
    doc = json.loads(done.stdout)
    return doc["AccessKeyId"], doc["SecretAccessKey"]


def boto_client(port: int, ak: str, sk: str, service: str = "kms") -> Any:
    """An unmodified boto3 client for ``service`` on 127.0.0.1:port (retries off)."""
    import boto3
    from botocore.config import Config

    return boto3.client(service, endpoint_url=f"http://{HOST}:{port}", region_name=REGION,
                        aws_access_key_id=ak, aws_secret_access_key=sk,
                        config=Config(retries={"total_max_attempts": 1}))


@dataclass
class Target:
    name: str
    port: int
    ak: str
    sk: str
    key_id: str
    ciphertexts: list[bytes]


def prepare_target(name: str, port: int, ak: str, sk: str, n: int) -> Target:
    """Create a key (with boto3) and ``n`` ciphertexts of distinct plaintexts for Decrypt."""
    c = boto_client(port, ak, sk)
    key_id = c.create_key(Description=f"benchmarks.server {name}")["KeyMetadata"]["KeyId"]
    cts: list[bytes] = []
    for _ in range(n):
        pt = secrets.token_bytes(PLAINTEXT_BYTES)
        ct = c.encrypt(KeyId=key_id, Plaintext=pt)["CiphertextBlob"]
        if c.decrypt(CiphertextBlob=ct)["Plaintext"] != pt if len(cts) < 4 else False:
            raise RuntimeError(f"{name}: Encrypt/Decrypt round trip failed")
        cts.append(ct)
    c.close()
    return Target(name, port, ak, sk, key_id, cts)


def sign_raw(ak: str, sk: str, service: str, amz_target: str | None, port: int,
             bodies: Iterable[bytes], *,
             content_type: str | None = "application/x-amz-json-1.1",
             region: str = REGION) -> list[bytes]:
    """Raw HTTP/1.1 JSON POSTs of ``bodies`` for ``port``, SigV4-signed now with botocore
    (``X-Amz-Target: amz_target``; None: no such header; ``content_type`` None: none)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = SigV4Auth(Credentials(ak, sk), service, region)
    host = f"{HOST}:{port}"
    fixed = {"Host": host}
    if content_type is not None:
        fixed["Content-Type"] = content_type
    if amz_target is not None:
        fixed["X-Amz-Target"] = amz_target
    out = []
    for data in bodies:
        req = AWSRequest(method="POST", url=f"http://{host}/", data=data, headers=dict(fixed))
        auth.add_auth(req)
        lines = ["POST / HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in req.headers.items()]
        lines += [f"Content-Length: {len(data)}", "", ""]
        out.append("\r\n".join(lines).encode() + data)
    return out


def sign_requests(op: str, t: Target, port: int, n: int) -> list[bytes]:
    """``n`` raw HTTP/1.1 requests, SigV4-signed now with botocore, for ``port``."""
    def body(i: int) -> dict[str, str]:
        if op == "Encrypt":
            return {"KeyId": t.key_id,
                    "Plaintext": base64.b64encode(secrets.token_bytes(PLAINTEXT_BYTES)).decode()}
        if op == "Decrypt":
            return {"CiphertextBlob": base64.b64encode(t.ciphertexts[i % len(t.ciphertexts)])
                    .decode()}
        return {"KeyId": t.key_id, "KeySpec": "AES_256"}

    return sign_raw(t.ak, t.sk, "kms", f"TrentService.{op}", port,
                    (json.dumps(body(i)).encode() for i in range(n)))


ACS3: Final = "ACS3-HMAC-SHA256"
ACS_VERSION: Final = "2016-01-20"
ACS_USER_AGENT: Final = "benchmarks.server (ACS3)"
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()


def _acs_enc(text: str) -> str:
    """RFC 3986 percent-encoding (``~`` kept, space as %20), as ACS3 wants."""
    return quote(text, safe="~")


def sign_acs3(ak: str, sk: str, port: int, action: str,
              params: Iterable[Mapping[str, str]], *, body: bytes = b"",
              content_type: str | None = None, version: str = ACS_VERSION,
              date: str | None = None) -> list[bytes]:
    """Raw HTTP/1.1 POSTs of Alibaba Cloud OpenAPI RPC requests (``params`` in the query;
    ``body``, of ``content_type``, the same for each: empty by default), ACS3-HMAC-SHA256
    signed now (``x-acs-date`` now, or ``date``), each with its own random
    ``x-acs-signature-nonce``: each may be sent once."""
    host = f"{HOST}:{port}"
    date = date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    key = sk.encode()
    payload = _EMPTY_SHA256 if not body else hashlib.sha256(body).hexdigest()
    out = []
    for p in params:
        query = "&".join(f"{k}={_acs_enc(v)}" for k, v in sorted(p.items()))
        headers = {"accept": "application/json", "host": host, "user-agent": ACS_USER_AGENT,
                   "x-acs-action": action, "x-acs-content-sha256": payload,
                   "x-acs-date": date, "x-acs-signature-nonce": secrets.token_hex(16),
                   "x-acs-version": version}
        if content_type is not None:
            headers["content-type"] = content_type
        names = sorted(headers)
        signed = ";".join(names)
        canonical_headers = "".join(f"{n}:{headers[n]}\n" for n in names)
        canonical = f"POST\n/\n{query}\n{canonical_headers}\n{signed}\n{payload}"
        to_sign = f"{ACS3}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        lines = [f"POST /?{query} HTTP/1.1", *(f"{n}: {headers[n]}" for n in names),
                 f"Authorization: {ACS3} Credential={ak},SignedHeaders={signed},"
                 f"Signature={signature}", f"Content-Length: {len(body)}", "", ""]
        out.append("\r\n".join(lines).encode() + body)
    return out


def sign_acs3_requests(op: str, t: Target, port: int, n: int) -> list[bytes]:
    """``n`` Alibaba OpenAPI requests for ``op`` (Encrypt: 32 random bytes, no context,
    as :func:`sign_requests`' AWS ones), ACS3-signed now."""
    if op != "Encrypt":
        raise ValueError(f"no Alibaba requests for {op}")
    return sign_acs3(t.ak, t.sk, port, op, (
        {"KeyId": t.key_id,
         "Plaintext": base64.b64encode(secrets.token_bytes(PLAINTEXT_BYTES)).decode()}
        for _ in range(n)))


ACS3_FIRST_RATE: Final = 40_000.0  # req/s the first run's (the warm-up's) requests are made for
ACS3_HEADROOM: Final = 3.0  # later runs: this times the fastest rate seen so far
ACS3_MIN_REQUESTS: Final = 2_000


@dataclass
class FreshRequests:
    """Requests that may each be sent once (ACS3: the server refuses a nonce it has seen),
    made anew (``make(n)``) for every load-generator run of ``seconds``: enough for
    ``rate`` req/s, a generous guess for the first run, then :data:`ACS3_HEADROOM` times
    the fastest run so far (fewer to sign and for the load generator to load)."""

    make: Callable[[int], list[bytes]]
    rate: float = ACS3_FIRST_RATE
    fastest: float = 0.0
    headroom: float = ACS3_HEADROOM

    def count(self, seconds: float) -> int:
        return min(MAX_REQUESTS, max(ACS3_MIN_REQUESTS, math.ceil(self.rate * seconds)))

    def ran(self, res: LoadResult, made: int, conns: int) -> None:
        """Check a run did not come near the end of its ``made`` requests (a load generator
        would have cycled back to ones already sent); learn its rate."""
        if res.requests >= made - conns:
            raise RuntimeError(f"a run used {res.requests} of its {made} distinct ACS3 "
                               "requests: raise ACS3_FIRST_RATE / ACS3_HEADROOM")
        if res.seconds > 0 and res.requests > 0:
            self.fastest = max(self.fastest, res.requests / res.seconds)
            self.rate = self.headroom * self.fastest


def check_replies(what: str, port: int, reqs: Sequence[bytes], want: bytes, k: int) -> None:
    """Send about ``k`` of the requests once (not measured): they must succeed, with
    ``want`` in the body."""
    for r in reqs[:: max(1, len(reqs) // k)]:
        status, body = raw_call(port, r)
        if status != 200 or want not in body:
            raise RuntimeError(f"{what}: sanity request failed: {status} {body[:300]!r}")


def check_requests(name: str, op: str, port: int, reqs: Sequence[bytes], k: int = 8) -> None:
    """Send a few of the requests once (not measured): they must succeed."""
    want = {"Encrypt": b"CiphertextBlob", "Decrypt": b"Plaintext",
            "GenerateDataKey": b"CiphertextBlob"}[op]
    check_replies(f"{name} {op}", port, reqs, want, k)


# --- load generators ---------------------------------------------------------------------

_LUA: Final = r"""
local reqs = {}
local n = 0
local idx = 0
local sent = 0
local cap = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  cap = tonumber(args[2])
  local pos = 1
  while pos <= #data do
    local nl = string.find(data, "\n", pos, true)
    local len = tonumber(string.sub(data, pos, nl - 1))
    n = n + 1
    reqs[n] = string.sub(data, nl + 1, nl + len)
    pos = nl + len + 1
  end
  idx = math.random(n) - 1
end

function request()
  sent = sent + 1
  if sent > cap then
    wrk.thread:stop()
  end
  idx = idx % n + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  -- (this wrk cannot index its histogram from Lua: send QUANTILES evenly spaced quantiles)
  local e = summary.errors
  local q = {}
  local k = QUANTILES
  for i = 1, k do
    q[i] = string.format("%d", latency:percentile((i - 0.5) * 100.0 / k))
  end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"quantiles":[%s]}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, table.concat(q, ",")))
end
"""


def write_requests(path: Path, reqs: Sequence[bytes]) -> None:
    with path.open("wb") as fh:
        for r in reqs:
            fh.write(b"%d\n" % len(r) + r)


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        n = int(data[pos:nl])
        out.append(data[nl + 1:nl + 1 + n])
        pos = nl + 1 + n
    return out


@dataclass
class LoadResult:
    requests: int
    seconds: float  # the generator's own measured wall time of its timed part
    errors: int
    hist: dict[int, float]  # latency in µs -> count (wrk: weights of its quantiles)
    cpu_s: float  # the generator's CPU time (user+sys) over its whole run


def _run_child(argv: list[str], limit: float) -> tuple[str, float]:
    """Run a load generator; its stdout and its CPU seconds (wait4 rusage)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + limit
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, ru = os.wait4(proc.pid, 0)
                proc.returncode = -9
                break
            time.sleep(0.02)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {text[-2000:]}")
    return text, ru.ru_utime + ru.ru_stime


def _result_line(text: str, what: str) -> dict[str, Any]:
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"{what} printed no result: {text[-2000:]}")
    doc: dict[str, Any] = json.loads(line[len("BENCHJSON "):])
    return doc


def run_wrk(port: int, reqfile: Path, script: Path, conns: int, threads: int,
            seconds: int, scheme: str = "http") -> LoadResult:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(script), f"{scheme}://{HOST}:{port}/", "--", str(reqfile),
            str(MAX_REQUESTS)]
    text, cpu = _run_child(argv, seconds + 30)
    doc = _result_line(text, "wrk")
    errors = doc["connect"] + doc["read"] + doc["write"] + doc["status"] + doc["timeout"]
    # Evenly spaced quantiles stand for equal shares of the requests, so rounds merge.
    hist: dict[int, float] = {}
    w = doc["requests"] / max(1, len(doc["quantiles"]))
    for v in doc["quantiles"]:
        hist[int(v)] = hist.get(int(v), 0.0) + w
    return LoadResult(doc["requests"], doc["duration_us"] / 1e6, errors, hist, cpu)


def write_lua(work: Path) -> Path:
    """wrk's script (:data:`_LUA`), written to ``work/cycle.lua``."""
    script = work / "cycle.lua"
    script.write_text(_LUA.replace("QUANTILES", str(WRK_QUANTILES)))
    return script


def run_loadgen(loadgen: str, port: int, reqfile: Path, script: Path, conns: int,
                threads: int, seconds: float, scheme: str = "http") -> LoadResult:
    """One run of the ``wrk`` (whole seconds) or ``python`` load generator (plain HTTP
    only: an https target needs wrk)."""
    if loadgen == "wrk":
        return run_wrk(port, reqfile, script, conns, threads, max(1, round(seconds)), scheme)
    if scheme != "http":
        raise RuntimeError("the python load generator speaks plain HTTP: use wrk")
    return run_python(port, reqfile, conns, seconds)


def run_python(port: int, reqfile: Path, conns: int, seconds: float) -> LoadResult:
    argv = [sys.executable, "-m", "benchmarks.server", "--_loadgen", str(reqfile),
            "--port", str(port), "--connections", str(conns), "--seconds", str(seconds)]
    text, cpu = _run_child(argv, seconds + 60)
    doc = _result_line(text, "python load generator")
    return LoadResult(doc["requests"], doc["seconds"], doc["errors"],
                      {int(v): float(c) for v, c in doc["hist"]}, cpu)


STALL_SECONDS: Final = 5.0  # the python load generator gives up on a connection this late


def loadgen_main(reqfile: Path, port: int, conns: int, seconds: float) -> int:
    """The Python load generator (a child process): asyncio + uvloop raw streams, one
    request in flight per connection, kept alive; every request timed. A connection the
    server closes is opened again, as wrk does: after a response with ``Connection: close``
    (moto's werkzeug sends it on every response, and then leaves a request sent on that
    connection unanswered) or when the socket closes under a request (an error, the request
    unanswered); the reconnect counts in the next request's latency. A connection still
    waiting ``STALL_SECONDS`` after the deadline is given up (an error)."""
    import asyncio
    from collections import Counter

    import uvloop

    reqs = read_requests(reqfile)
    n = len(reqs)
    lat = array("q")
    state = {"errors": 0, "broken": 0, "reconnects": 0, "stalled": 0}
    ns = time.perf_counter_ns

    async def conn(k: int, t_stop: int, cap: int) -> None:
        reader: Any
        writer: Any
        reader, writer = await asyncio.open_connection(HOST, port)
        i = (k * n) // conns
        try:
            for _ in range(cap):
                t0 = ns()
                if t0 >= t_stop:
                    break
                if writer is None:
                    try:
                        reader, writer = await asyncio.open_connection(HOST, port)
                    except OSError:  # the server is gone
                        state["broken"] += 1
                        break
                    state["reconnects"] += 1
                writer.write(reqs[i])
                i = i + 1 if i + 1 < n else 0
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length, close = _framing(head)
                    if length > 0:
                        await reader.readexactly(length)
                    elif length < 0 and close:
                        await reader.read()  # the body ends with the connection
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    state["broken"] += 1  # unanswered: open the connection again
                    writer.close()
                    writer = None
                    continue
                lat.append(ns() - t0)
                if head[9:10] != b"2":
                    state["errors"] += 1
                if close:
                    writer.close()
                    writer = None
        finally:
            if writer is not None:
                writer.close()

    async def guarded(k: int, t_stop: int, cap: int) -> None:
        try:
            async with asyncio.timeout(seconds + STALL_SECONDS):
                await conn(k, t_stop, cap)
        except TimeoutError:
            state["stalled"] += 1

    async def main() -> float:
        t0 = ns()
        await asyncio.gather(*(guarded(k, t0 + int(seconds * 1e9), MAX_REQUESTS // conns)
                               for k in range(conns)))
        return (ns() - t0) / 1e9

    elapsed = uvloop.run(main())
    hist = Counter(v // 1000 for v in lat)
    print("BENCHJSON " + json.dumps({
        "requests": len(lat), "seconds": elapsed,
        "errors": state["errors"] + state["broken"] + state["stalled"],
        "broken_connections": state["broken"], "reconnects": state["reconnects"],
        "stalled_connections": state["stalled"], "hist": sorted(hist.items())}), flush=True)
    return 0


def hist_pct(hist: dict[int, float], q: float) -> float:
    """The q-quantile (in µs) of a latency histogram."""
    total = sum(hist.values())
    if not total:
        return math.nan
    rank = q * total
    seen = 0.0
    for v in sorted(hist):
        seen += hist[v]
        if seen >= rank:
            return float(v)
    return float(max(hist))


# --- the run -----------------------------------------------------------------------------


@dataclass
class Cell:
    target: str
    op: str
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    seconds: float
    rounds: int
    loadgen_cpu: float  # CPU time / wall time, 1.0 = one core
    server_cpu: float
    other_cpu: float  # the machine's busy time that was neither
    server_us_per_req: float  # server CPU time per request (all its processes)
    loadgen_us_per_req: float
    # A projection, not a measurement: req/s if the whole machine were this run's, from the
    # CPU per request (server + load generator over the machine's cores, and at most one
    # core per server process, moto being one process under one GIL).
    capacity_req_per_s: float


C = TypeVar("C", bound=Cell)


@dataclass
class Acc:
    requests: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    errors: int = 0
    lg_cpu: float = 0.0
    srv_cpu: float = 0.0
    busy: float = 0.0
    rounds: int = 0

    def __post_init__(self) -> None:
        self.hist: dict[int, float] = {}

    def add(self, res: LoadResult, pid: int, since: tuple[float, float, float]) -> None:
        """Count one timed run of a load generator on the server ``pid``; ``since`` is
        :func:`mark` just before it."""
        srv0, busy0, t0 = since
        wall = time.monotonic() - t0
        self.srv_cpu += tree_cpu(pid) - srv0
        self.busy += machine_busy() - busy0
        self.wall += wall
        self.requests += res.requests
        self.seconds += res.seconds
        self.errors += res.errors
        self.lg_cpu += res.cpu_s
        self.rounds += 1
        for v, c in res.hist.items():
            self.hist[v] = self.hist.get(v, 0) + c

    def cell(self, cls: type[C], target: str, op: str, processes: int, **extra: Any) -> C:
        """The row of what was counted (``cls``: :class:`Cell` or a subclass, ``extra`` its
        own fields)."""
        # CPU shares are over the bracketing wall time (it includes the generator's start).
        return cls(target, op, self.requests / self.seconds, hist_pct(self.hist, 0.50) / 1e3,
                   hist_pct(self.hist, 0.99) / 1e3, self.errors, self.requests, self.seconds,
                   self.rounds, self.lg_cpu / self.wall, self.srv_cpu / self.wall,
                   max(0.0, (self.busy - self.srv_cpu - self.lg_cpu) / self.wall),
                   self.srv_cpu / max(1, self.requests) * 1e6,
                   self.lg_cpu / max(1, self.requests) * 1e6,
                   capacity(self.srv_cpu, self.lg_cpu, self.requests, processes), **extra)


def mark(pid: int) -> tuple[float, float, float]:
    """The CPU time of the server ``pid``'s tree, the machine's busy time and the clock."""
    return tree_cpu(pid), machine_busy(), time.monotonic()


def run_op(loadgen: str, op: str,
           plan: Sequence[tuple[str, Server, Sequence[bytes] | FreshRequests]],
           work: Path, conns: int, threads: int, warmup: float, seconds: float, rounds: int
           ) -> list[Cell]:
    """One operation on every target: a warm-up each, then ``rounds`` rounds in which every
    target runs ``seconds / rounds`` in turn (the order rotates), so load from elsewhere on
    this shared machine falls on all targets alike. A target's requests are replayed
    round-robin, or, for :class:`FreshRequests`, made anew for each run (before its timing
    starts)."""
    script = write_lua(work)
    files = {}
    fresh = {name: reqs for name, _, reqs in plan if isinstance(reqs, FreshRequests)}
    for name, _, reqs in plan:
        files[name] = work / f"{name}-{op}.reqs"
        if not isinstance(reqs, FreshRequests):
            write_requests(files[name], reqs)

    def once(name: str, srv: Server, secs: float, into: Acc | None = None) -> None:
        """One run of ``secs``, counted ``into`` an accumulator (none: a warm-up); fresh
        requests are signed before the clock (and the CPU accounting) starts."""
        made = 0
        if name in fresh:
            made = fresh[name].count(max(1, round(secs)) if loadgen == "wrk" else secs)
            write_requests(files[name], fresh[name].make(made))
        since = mark(srv.proc.pid)
        res = run_loadgen(loadgen, srv.port, files[name], script, conns, threads, secs,
                          srv.scheme)
        if into is not None:
            into.add(res, srv.proc.pid, since)
        if name in fresh:
            fresh[name].ran(res, made, conns)

    if warmup > 0:
        for name, srv, _ in plan:
            once(name, srv, warmup)
    acc = {name: Acc() for name, _, _ in plan}
    per_round = seconds / rounds
    for r in range(rounds):
        k = r % len(plan)
        for name, srv, _ in [*plan[k:], *plan[:k]]:
            once(name, srv, per_round, acc[name])
    for f in files.values():
        f.unlink(missing_ok=True)
    return [acc[name].cell(Cell, name, op, SERVER_PROCESSES.get(name, WORKERS))
            for name, _, _ in plan]


def capacity(srv_cpu: float, lg_cpu: float, requests: int, processes: int) -> float:
    if requests <= 0 or srv_cpu <= 0:
        return math.nan
    cores = os.cpu_count() or 1
    return min(cores * requests / (srv_cpu + lg_cpu), processes * requests / srv_cpu)


def find(cells: Sequence[Cell], target: str, op: str) -> Cell | None:
    return next((c for c in cells if (c.target, c.op) == (target, op)), None)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(label_head: str, rows: Iterable[tuple[str, Cell]]) -> list[str]:
    """A report's table: the label columns (``label_head``, each row's label), then the
    measured columns of its cell; a cell with other load on the machine is flagged."""
    head = (f"{label_head} | {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'errors':>6} | {'lg cpu':>6} {'srv cpu':>7} {'other':>5} | {'srv µs/req':>10} "
            f"{'lg µs/req':>9} {'cap req/s':>9}")
    out = [head, "-" * len(head)]
    for label, c in rows:
        flag = "  <- other load" if c.other_cpu > OTHER_CPU_WARN else ""
        out.append(f"{label} | {c.req_per_s:>9,.0f} {c.p50_ms:>7.2f} "
                   f"{c.p99_ms:>7.2f} {c.errors:>6} | {c.loadgen_cpu:>6.0%} "
                   f"{c.server_cpu:>7.0%} {c.other_cpu:>5.0%} | {c.server_us_per_req:>10.0f} "
                   f"{c.loadgen_us_per_req:>9.0f} {c.capacity_req_per_s:>9,.0f}{flag}")
    return out


def _label(c: Cell) -> str:
    """A row's name: the target and the operation (Alibaba's: "alibaba Encrypt (ACS3)")."""
    op = f"{c.op} (ACS3)" if c.target == "alibaba" else c.op
    return f"{c.target:<12} {op:<16}"


def report(cells: Sequence[Cell], loadgen: str, verify_us: float | None = None
           ) -> tuple[str, dict[str, Any]]:
    out = table(f"{'target':<12} {'op':<16}", ((_label(c), c) for c in cells))
    out.append(f"load generator: {loadgen}; cpu columns: CPU time / wall time (100% = one "
               f"core of {os.cpu_count()}); other = machine busy time not ours; µs/req = CPU "
               "time per request;")
    out.append("cap req/s = a projection, not a measurement: the req/s this CPU per request "
               "(server + load generator) allows on the whole machine, with at most one core "
               "per server process (moto: one)")
    out.append("")
    proj: dict[str, dict[str, float]] = {"hsmpool_vs_moto": {}, "hsmpool_vs_trivial": {}}
    for op in OPS:
        h, m, t = (find(cells, x, op) for x in ("hsmpool", "moto", "trivial"))
        if h is None:
            continue
        if m is not None:
            proj["hsmpool_vs_moto"][op] = h.capacity_req_per_s / m.capacity_req_per_s
        if t is not None:
            proj["hsmpool_vs_trivial"][op] = h.capacity_req_per_s / t.capacity_req_per_s
    ratios: dict[str, dict[str, float]] = {"hsmpool_vs_moto": {}, "hsmpool_vs_trivial": {}}
    for op in OPS:
        h, m, t = (find(cells, x, op) for x in TARGETS[:1] + ("moto", "trivial"))
        if h is None:
            continue
        parts = []
        if m is not None and m.req_per_s > 0:
            ratios["hsmpool_vs_moto"][op] = h.req_per_s / m.req_per_s
            parts.append(f"{h.req_per_s / m.req_per_s:6.1f}x moto")
        if t is not None and t.req_per_s > 0:
            ratios["hsmpool_vs_trivial"][op] = h.req_per_s / t.req_per_s
            parts.append(f"{h.req_per_s / t.req_per_s:5.2f}x trivial")
        pm = proj["hsmpool_vs_moto"].get(op, math.nan)
        pt = proj["hsmpool_vs_trivial"].get(op, math.nan)
        out.append(f"ratio {op:<16}: hsmpool = " + ", ".join(parts)
                   + f"   (projected from cap: {pm:.1f}x moto, {pt:.2f}x trivial)")
    ratios["alibaba_vs_aws"], proj["alibaba_vs_aws"] = {}, {}
    for op in ALIBABA_OPS:
        a, h = find(cells, "alibaba", op), find(cells, "hsmpool", op)
        if a is None or h is None or h.req_per_s <= 0:
            continue
        ratios["alibaba_vs_aws"][op] = a.req_per_s / h.req_per_s
        proj["alibaba_vs_aws"][op] = a.capacity_req_per_s / h.capacity_req_per_s
        out.append(f"ratio Alibaba {op} (ACS3): {a.req_per_s / h.req_per_s:.2f}x AWS {op} "
                   f"(same server, same rounds; srv µs/req {a.server_us_per_req:.0f} vs "
                   f"{h.server_us_per_req:.0f}; projected from cap: "
                   f"{proj['alibaba_vs_aws'][op]:.2f}x)")
    ratios["kms_instance_vs_aws"], proj["kms_instance_vs_aws"] = {}, {}
    for op in INSTANCE_OPS:
        a, h = find(cells, "kms-instance", op), find(cells, "hsmpool", op)
        if a is None or h is None or h.req_per_s <= 0:
            continue
        ratios["kms_instance_vs_aws"][op] = a.req_per_s / h.req_per_s
        proj["kms_instance_vs_aws"][op] = a.capacity_req_per_s / h.capacity_req_per_s
        cost = "" if verify_us is None else (
            f"; one RSA-2048 signature check costs {verify_us:.0f} µs here")
        out.append(f"ratio KMS-instance {op}: {a.req_per_s / h.req_per_s:.2f}x AWS {op} (same "
                   f"server, HTTPS vs HTTP; srv µs/req {a.server_us_per_req:.0f} vs "
                   f"{h.server_us_per_req:.0f}{cost}; projected from cap: "
                   f"{proj['kms_instance_vs_aws'][op]:.2f}x)")
    out.append("")
    bars: list[dict[str, Any]] = []

    def bar(name: str, value: float | None, ok: bool | None, shown: str, note: str = "") -> None:
        vd = "n/a" if ok is None else verdict(ok)
        bars.append({"bar": name, "value": value, "verdict": vd})
        out.append(f"bar: {name:<46} {shown:>9}  {vd}" + (f"   ({note})" if note else ""))

    r = ratios["hsmpool_vs_moto"].get("Encrypt")
    bar(f"hsmpool Encrypt >= {BAR_VS_MOTO:.0f}x moto", r, None if r is None else r >= BAR_VS_MOTO,
        "-" if r is None else f"{r:.1f}x")
    r = ratios["hsmpool_vs_trivial"].get("Encrypt")
    bar(f"hsmpool Encrypt >= {BAR_VS_TRIVIAL}x trivial ASGI app", r,
        None if r is None else r >= BAR_VS_TRIVIAL, "-" if r is None else f"{r:.2f}x")
    for op in OPS:
        c = find(cells, "hsmpool", op)
        if c is not None:
            bar(f"hsmpool {op} >= {BAR_ABSOLUTE:,.0f} req/s (target)", c.req_per_s,
                c.req_per_s >= BAR_ABSOLUTE, f"{c.req_per_s:,.0f}/s",
                f"projected cap {c.capacity_req_per_s:,.0f}/s")
    r = ratios["alibaba_vs_aws"].get("Encrypt")
    bar(f"Alibaba Encrypt (ACS3) >= {BAR_ALIBABA_VS_AWS}x AWS Encrypt", r,
        None if r is None else r >= BAR_ALIBABA_VS_AWS, "-" if r is None else f"{r:.2f}x")
    r = ratios["kms_instance_vs_aws"].get("Encrypt")
    bar(f"KMS-instance Encrypt >= {BAR_INSTANCE_VS_AWS}x AWS Encrypt", r,
        None if r is None else r >= BAR_INSTANCE_VS_AWS, "-" if r is None else f"{r:.2f}x")
    errs = sum(c.errors for c in cells if c.target in ("hsmpool", "alibaba", "kms-instance"))
    bar("hsmpool, alibaba and kms-instance rows have 0 errors", float(errs), errs == 0,
        f"{errs}")
    busy = [c for c in cells if c.other_cpu > OTHER_CPU_WARN]
    if busy:
        out.append(f"WARNING: {len(busy)} of {len(cells)} cells saw > {OTHER_CPU_WARN:.0%} of "
                   "a core of other load on the machine; treat those figures with care.")
    out.append("(bars are judged on the measured req/s; the projections are for context)")
    return "\n".join(out), {"ratios": ratios, "projected_ratios": proj, "bars": bars}


def versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Versions of the stack, of wrk, then of the ``extra`` packages ("" if missing)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return ""

    out = {pkg: of(pkg) for pkg in ("uvicorn", "httptools", "uvloop", "moto", "werkzeug",
                                    "flask", "botocore")}
    out["wrk"] = _command(["wrk", "--version"]).splitlines()[0] if shutil.which("wrk") else ""
    out.update((pkg, of(pkg)) for pkg in extra)
    return out


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return (done.stdout or done.stderr).strip()


# --- profiling ---------------------------------------------------------------------------

_PROFILE_RUNNER: Final = r"""
import cProfile, os, signal, sys, time, uvicorn
os.environ["HSMPOOL_CONFIG"] = sys.argv[1]
# CPU time of the event-loop thread, not wall time: on a shared machine a starved worker
# would otherwise charge its waits for a core to whichever call it was preempted in.
prof = cProfile.Profile(time.thread_time)
config = uvicorn.Config("kms.server.run:make_app", factory=True, host="127.0.0.1",
                        port=int(sys.argv[2]), loop="uvloop", http="httptools",
                        lifespan="on", access_log=False, log_level="warning")
server = uvicorn.Server(config)
prof.enable()
try:
    server.run()
finally:
    prof.disable()
    prof.dump_stats(sys.argv[3])
"""


@contextlib.contextmanager
def profiled_server(cfg: Path, tmp: Path) -> Iterator[Server]:
    """A one-worker hsmpool server under cProfile (:data:`_PROFILE_RUNNER`), ready; at the
    end it is stopped with SIGINT, so that it writes its profile (:func:`read_profile`)."""
    port = free_port()
    runner = tmp / "profile_runner.py"
    runner.write_text(_PROFILE_RUNNER)
    srv = start("hsmpool-profiled", [sys.executable, str(runner), str(cfg), str(port),
                                     str(tmp / "worker.prof")], port, tmp)
    try:
        wait_ready(srv, "/healthz")
        yield srv
    finally:
        srv.proc.send_signal(signal.SIGINT)
        try:
            srv.proc.wait(20)
        except subprocess.TimeoutExpired:
            srv.stop()


def read_profile(srv: Server, tmp: Path) -> Any:
    """The profile :func:`profiled_server` ``srv`` wrote (pstats), its top 30 functions by
    own time printed."""
    import pstats

    out = tmp / "worker.prof"
    if not out.exists():
        raise RuntimeError(f"no profile written; log:\n{srv.log.read_text()[-2000:]}")
    st = pstats.Stats(str(out))
    st.sort_stats("tottime").print_stats(30)
    return st


def run_profile(cfg: Path, target: Target, tmp: Path, seconds: float,
                conns: int, threads: int, alibaba: bool = False) -> None:
    """cProfile of a one-worker server under Encrypt load: AWS's (SigV4), or with
    ``alibaba`` the Alibaba OpenAPI's (ACS3, fresh requests per run)."""
    with profiled_server(cfg, tmp) as srv:
        reqs: Sequence[bytes] | FreshRequests
        if alibaba:
            check_requests("hsmpool-profiled", "Encrypt", srv.port,
                           sign_acs3_requests("Encrypt", target, srv.port, 8))
            reqs = FreshRequests(functools.partial(sign_acs3_requests, "Encrypt", target,
                                                   srv.port))
        else:
            reqs = sign_requests("Encrypt", target, srv.port, 256)
            check_requests("hsmpool-profiled", "Encrypt", srv.port, reqs)
        [c] = run_op("wrk", "Encrypt", [("hsmpool-profiled", srv, reqs)], tmp, conns,
                     threads, 1.0, seconds, 1)
        print(f"one worker under cProfile: {c.req_per_s:,.0f} {'Alibaba ' * alibaba}Encrypt "
              f"req/s, {c.errors} errors, worker CPU {c.server_cpu:.0%} (the profiler "
              "inflates cheap calls)")
    print_layers(read_profile(srv, tmp))


# (label, file suffix, function name): inclusive CPU time of the profiled thread
_LAYERS: Final = (
    ("KmsApp._http (the whole app)", "kms/api/app.py", "_http"),
    ("  KmsApp._handle", "kms/api/app.py", "_handle"),
    ("    sigv4 Verifier.verify", "kms/api/sigv4.py", "verify"),
    ("    json.loads", "json/__init__.py", "loads"),
    ("    json.dumps", "json/__init__.py", "dumps"),
    ("    aws_kms.encrypt (handler)", "kms/api/aws_kms.py", "encrypt"),
    ("    AlibabaFrontend.prepare", "kms/api/alibaba.py", "prepare"),
    ("      parse_qsl", "urllib/parse.py", "parse_qsl"),
    ("      AcsVerifier.verify_acs3", "kms/api/acs_sign.py", "verify_acs3"),
    ("        quote (canonical query)", "urllib/parse.py", "quote"),
    ("        NonceCache.fresh", "kms/api/acs_sign.py", "fresh"),
    ("    alibaba.encrypt (handler)", "kms/api/alibaba.py", "encrypt"),
    ("    uuid4 (RequestId)", "uuid.py", "uuid4"),
    ("      KmsClient.encrypt (service)", "kms/service.py", "encrypt"),
    ("        KmsClient._key_for (resolve+policy)", "kms/service.py", "_key_for"),
    ("        KmsClient._seal", "kms/service.py", "_seal"),
    ("          Pool.execute", "hsmpool/pool.py", "execute"),
    ("            hp11_gcm (PKCS#11 C call)", "~", "<built-in method hsmpool._p11_cffi.hp11_gcm>"),
    ("            os.urandom", "~", "<built-in method posix.urandom>"),
    ("        KmsClient._audit (append)", "kms/service.py", "_audit"),
    ("  KmsApp._respond (uvicorn send)", "kms/api/app.py", "_respond"),
    ("  Metrics.observe", "kms/api/metrics.py", "observe"),
    ("uvicorn data_received (parse)", "httptools_impl.py", "data_received"),
)


def print_layers(st: Any) -> None:
    """Inclusive CPU per request of the main layers (µs, under the profiler)."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats
    total = sum(v[2] for v in stats.values())
    reqs = max((v[1] for k, v in stats.items()
                if k[0].endswith("kms/api/app.py") and k[2] == "_http"), default=0)
    if not reqs:
        return
    print(f"profiled thread: {total / reqs * 1e6:.0f} µs CPU per request ({reqs} requests, "
          "profiler included); inclusive per layer:")
    for label, suffix, func in _LAYERS:
        ct = sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == func)
        print(f"  {label:<46} {ct / reqs * 1e6:7.1f} µs  {ct / total:6.1%}")


# --- the command line (shared with benchmarks.secrets) -----------------------------------

MAX_SECONDS: Final = 120  # --seconds at most


def add_timing_args(ap: argparse.ArgumentParser, unit: str, rounds_of: str) -> None:
    """--seconds, --warmup, --rounds and --quick; ``unit`` is what one timed run loads
    ("cell", "load"), ``rounds_of`` what the rounds are of (" per cell", "")."""
    ap.add_argument("--seconds", type=float, default=10.0, help=f"timed seconds per {unit} (10)")
    ap.add_argument("--warmup", type=float, default=2.0, help=f"warm-up seconds per {unit} (2)")
    ap.add_argument("--rounds", type=int, default=5,
                    help=f"interleaved rounds{rounds_of} (5; with wrk, seconds/rounds is rounded "
                    "to whole seconds)")
    ap.add_argument("--quick", action="store_true",
                    help=f"3-second {unit}s in one round, 1 s warm-up")


def timing(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[float, float, int]:
    """(seconds, warm-up seconds, rounds) of :func:`add_timing_args`' arguments, checked."""
    seconds, warmup = (3.0, 1.0) if args.quick else (args.seconds, args.warmup)
    rounds = 1 if args.quick else args.rounds
    if not 0 < seconds <= MAX_SECONDS or not 0 <= warmup <= 30 or not 1 <= rounds <= seconds:
        ap.error("--seconds must be in (0, 120], --warmup in [0, 30], --rounds in "
                 "[1, seconds]")
    return seconds, warmup, rounds


def begin(n_tokens: int, prefix: str) -> Path:
    """Make the tokens; a new temp dir under ``var/``."""
    make_tokens(n_tokens)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=ROOT / "var"))


def configure(tmp: Path, tokens: Sequence[int], instance: str) -> tuple[Path, str, str]:
    """The config of :func:`write_config` and an access key of the instance's."""
    cfg = write_config(tmp, tokens, instance)
    print(f"setting up (tokens hsmpool-{tokens[0]}..{tokens[-1]}, temp dir {tmp}) ...",
          flush=True)
    return (cfg, *create_credentials(cfg, instance))


def audit_summary(tmp: Path) -> tuple[list[str], int]:
    """The names of the files in tmp/audit and the bytes below it."""
    audit = tmp / "audit"
    if not audit.exists():
        return [], 0
    return (sorted(p.name for p in audit.glob("*")),
            sum(p.stat().st_size for p in audit.rglob("*") if p.is_file()))


def teardown(servers: Sequence[Server], tmp: Path, keep: bool) -> None:
    """Stop the servers; delete the temp dir unless kept."""
    for s in reversed(servers):
        s.stop()
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def print_report(text: str, audit: tuple[list[str], int], t_setup: float,
                 t_start: float) -> float:
    """Print a report and the audit summary; the total seconds since ``t_start``."""
    print()
    print(text)
    print(f"audit: {len(audit[0])} files, {audit[1] / 1e6:.1f} MB written by the "
          "hsmpool workers during the run")
    total = time.monotonic() - t_start
    print(f"\nsetup {t_setup:.1f} s, total {total:.1f} s")
    return total


def meta_head() -> dict[str, Any]:
    """The first fields of a result's meta: when and where."""
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}


def meta_tail(audit: tuple[list[str], int], vers: dict[str, str], t_setup: float,
              total: float, notes: list[str]) -> dict[str, Any]:
    """The last fields of a result's meta: the audit, versions, the commit, the times."""
    return {"audit_files": audit[0], "audit_bytes": audit[1], "versions": vers,
            "git_commit": _command(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
            "modified": _command(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                  "hsmpool", "kms", "native"]).splitlines(),
            "setup_seconds": t_setup, "total_seconds": total, "notes": notes}


def write_results(path: Path, doc: dict[str, Any], plot_doc: dict[str, Any] | None = None
                  ) -> None:
    """The JSON at ``path``, and the plots (of ``plot_doc``, else of ``doc``) beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    write_plots(path, doc if plot_doc is None else plot_doc, "server")


# --- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(ap, "cell", " per cell")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--loadgen", choices=("wrk", "python"), default=None,
                    help="(default: wrk if installed, else python)")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--distinct", type=int, default=256, help="pre-signed requests per cell")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile a one-worker hsmpool server under Encrypt load instead "
                    "(Alibaba's, ACS3, with --targets alibaba)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, audit)")
    ap.add_argument("--_loadgen", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._loadgen is not None:
        return loadgen_main(args._loadgen, args.port, args.connections, args.seconds)
    seconds, warmup, rounds = timing(ap, args)
    loadgen = args.loadgen or ("wrk" if shutil.which("wrk") else "python")
    if (loadgen == "wrk" or args.profile) and not shutil.which("wrk"):
        ap.error("wrk is not installed (apt-get install wrk), use --loadgen python")

    t_start = time.monotonic()
    tmp = begin(N_TOKENS, "serverbench-")
    servers: list[Server] = []
    cells: list[Cell] = []
    verify_us: float | None = None
    notes: list[str] = []
    try:
        cfg, ak, sk = configure(tmp, TOKENS, INSTANCE)
        targets = set(args.targets) | ({"hsmpool"} if args.profile else set())
        if args.profile:
            setup = start_ready("hsmpool-setup", hsmpool_argv(cfg, 1), "/healthz", 1, tmp,
                                notes)
            servers.append(setup)
            target = prepare_target("hsmpool", setup.port, ak, sk, 4)
            setup.stop()
            servers.clear()
            run_profile(cfg, target, tmp, seconds, args.connections, args.wrk_threads,
                        alibaba=args.targets == ["alibaba"])
            return 0
        order = [t for t in ("hsmpool", "alibaba", "kms-instance", "trivial", "moto")
                 if t in targets]
        # The alibaba and kms-instance targets are the hsmpool server, spoken to in
        # Alibaba's protocols (the latter on its KMS-instance port).
        started = [t for t in ("hsmpool", "trivial", "moto")
                   if t in targets or (t == "hsmpool" and targets & {"alibaba",
                                                                     "kms-instance"})]
        instance_port = free_port() if "kms-instance" in targets else None
        argvs = {"hsmpool": hsmpool_argv(cfg, WORKERS, instance_port),
                 "trivial": trivial_argv, "moto": moto_argv}
        envs = {"moto": MOTO_ENV}
        for name in started:  # all started, then waited for
            servers.append(start_free(name, argvs[name], tmp, envs.get(name)))
        for i, s in enumerate(servers):
            path = {"hsmpool": "/metrics", "trivial": "/", "moto": "/moto-api/"}[s.name]
            want = WORKERS if s.name == "hsmpool" else 1
            servers[i] = ensure_ready(s, argvs[s.name], path, want, tmp, notes,
                                      envs.get(s.name))
        by_name = {s.name: s for s in servers}
        prepared: dict[str, Target] = {}
        if "hsmpool" in by_name:
            prepared["hsmpool"] = prepare_target("hsmpool", by_name["hsmpool"].port, ak, sk,
                                                 args.distinct)
        if "moto" in targets:
            prepared["moto"] = prepare_target("moto", by_name["moto"].port, "testing",
                                              "testing", args.distinct)
        client_key = None
        if instance_port is not None:
            from benchmarks import instance_load

            client_key = instance_load.make_client_key(hsmpool_bin(), cfg, INSTANCE, tmp / "aap")
            hs = by_name["hsmpool"]
            by_name["kms-instance"] = Server("kms-instance", hs.proc, instance_port, hs.log,
                                             scheme="https")
            verify_us = instance_load.verify_cost(client_key)
        # The trivial app is sent hsmpool's requests (signed for its own Host).
        source = prepared.get("hsmpool") or Target("trivial", 0, ak, sk, "k", [bytes(94)])
        t_setup = time.monotonic() - t_start
        print(f"setup {t_setup:.1f} s; {loadgen}, {args.connections} connections, "
              f"{warmup:g} s warm-up + {seconds:g} s per cell", flush=True)
        for op in args.ops:
            plan: list[tuple[str, Server, Sequence[bytes] | FreshRequests]] = []
            for name in order:
                if name == "alibaba":
                    if op not in ALIBABA_OPS:
                        continue
                    srv, t = by_name["hsmpool"], prepared["hsmpool"]
                    check_requests("alibaba", op, srv.port,  # its own: each is sent once
                                   sign_acs3_requests(op, t, srv.port, 8))
                    plan.append((name, srv, FreshRequests(
                        functools.partial(sign_acs3_requests, op, t, srv.port))))
                    continue
                if name == "kms-instance":
                    if op not in INSTANCE_OPS or client_key is None:
                        continue
                    srv, key_id = by_name[name], prepared["hsmpool"].key_id
                    instance_load.check(client_key, srv.port, key_id)
                    plan.append((name, srv, FreshRequests(
                        functools.partial(instance_load.sign_encrypts, client_key, srv.port,
                                          key_id),
                        rate=instance_load.FIRST_RATE, headroom=instance_load.HEADROOM)))
                    continue
                srv = by_name[name]
                t = source if name == "trivial" else prepared[name]
                reqs = sign_requests(op, t, srv.port, args.distinct)
                if name != "trivial":
                    check_requests(name, op, srv.port, reqs)
                plan.append((name, srv, reqs))
            for c in run_op(loadgen, op, plan, tmp, args.connections, args.wrk_threads,
                            warmup, seconds, rounds):
                print(f"  {c.target:<12} {op:<16} {c.req_per_s:>9,.0f} req/s  p50 "
                      f"{c.p50_ms:.2f} ms  p99 {c.p99_ms:.2f} ms  errors {c.errors}  lg cpu "
                      f"{c.loadgen_cpu:.0%}  srv cpu {c.server_cpu:.0%}  other "
                      f"{c.other_cpu:.0%}", flush=True)
                cells.append(c)
            for srv in by_name.values():
                if srv.proc.poll() is not None:
                    raise RuntimeError(f"{srv.name} exited; log:\n"
                                       f"{srv.log.read_text()[-2000:]}")
        audit = audit_summary(tmp)
    finally:
        teardown(servers, tmp, args.keep)
    text, summary = report(cells, loadgen, verify_us)
    total = print_report(text, audit, t_setup, t_start)
    doc = {"meta": {
        **meta_head(), "loadgen": loadgen,
        "wrk_threads": args.wrk_threads if loadgen == "wrk" else None,
        "connections": args.connections, "seconds_per_cell": seconds, "warmup_seconds": warmup,
        "rounds": rounds,
        "distinct_requests": args.distinct, "workers": WORKERS, "instance": INSTANCE,
        "tokens": [f"hsmpool-{i}" for i in TOKENS], "plaintext_bytes": PLAINTEXT_BYTES,
        **meta_tail(audit, versions(), t_setup, total, notes)},
        "cells": [asdict(c) for c in cells], **summary}
    write_results(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
