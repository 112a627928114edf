"""Fixtures of the server tests: a real ``hsmpool serve`` process on a free loopback port,
over real SoftHSM2 tokens and a real SQLite store (a PostgreSQL database of the session's
cluster with ``HSMPOOL_TEST_DATABASE=postgresql``: tests/database.py), driven by the real
boto3 ``kms`` client.

Instances: "srv" on tokens 0, 1, 2 and "srv2" on tokens 3, 4 (the session server), "srvw" on
tokens 5, 6 (the two-worker server of test_workers.py). Names unique to these files.

The server runs in its own process group (``start_new_session``); teardown sends SIGTERM to
that process and, if it has not exited in time, SIGKILL to its group (its uvicorn workers).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from kms.config import load as load_config
from tests.conftest import pool_toml
from tests.database import database_for, database_line

ROOT = Path(__file__).resolve().parents[2]
HSMPOOL = ROOT / ".venv" / "bin" / "hsmpool"
REGION = "us-east-1"
JSON_CT = "application/x-amz-json-1.1"
INSTANCES: dict[str, list[int]] = {"srv": [0, 1, 2], "srv2": [3, 4]}
START_TIMEOUT = 60.0


@contextlib.contextmanager
def raises_code(client: Any, code: str) -> Iterator[pytest.ExceptionInfo[ClientError]]:
    """Expect a ClientError with ``code``: boto3's modeled class for that name when the KMS
    model has one (AccessDeniedException and ValidationException are not modeled: AWS sends
    them too, and boto3 raises a plain ClientError)."""
    modeled: Any = getattr(client.exceptions, code, None) if code in _modeled(client) else None
    with pytest.raises(ClientError) as info:
        yield info
    assert info.value.response["Error"]["Code"] == code, info.value.response["Error"]
    if modeled is not None:
        assert isinstance(info.value, modeled)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500


def _modeled(client: Any) -> set[str]:
    return {c.__name__ for c in client.exceptions._code_to_exception.values()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# RSA key generation (CreateKey, GetParametersForImport) takes up to seconds in SoftHSM2 and
# the pool counts any call slower than slow_call_ms as a failure (three in a row eject a
# token; see test_rsa_key_generation_does_not_eject_tokens): keep it out of these tests.
SERVER_POOL_SETTINGS: dict[str, Any] = {"slow_call_ms": 30_000}


def write_server_config(directory: Path, token_dir: Path,
                        instances: Mapping[str, Sequence[int]],
                        settings: Mapping[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = pool_toml(token_dir, instances, {**SERVER_POOL_SETTINGS, **(settings or {})})
    text += "[kms]\n"
    text += database_line(directory / "kms.db")
    text += f'audit_dir = "{directory / "audit"}"\n'
    text += f'region = "{REGION}"\n'
    path = directory / "pool.toml"
    path.write_text(text)
    return path


def config_database(config: Path) -> str:
    """The ``[kms] database`` :func:`write_server_config` gave ``config``: the SQLite file
    beside it, or on the PostgreSQL pass the database standing for that file."""
    return database_for(config.parent / "kms.db")


def send_once(**config: Any) -> Config:
    """botocore configuration of a client that sends each request once. (Its
    ``retries={"max_attempts": N}`` counts *retries*: ``1`` sends a request twice when the
    first attempt fails, a 5xx or a broken connection; ``total_max_attempts`` counts the
    first one too.)"""
    return Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config)


@dataclass(frozen=True)
class Cred:
    access_key_id: str
    secret: str
    instance: str


def create_credential(config: Path, instance: str, name: str,
                      policy: Mapping[str, Any] | None = None) -> Cred:
    """``hsmpool credentials create`` (the real CLI) -> a new access key."""
    cmd = [str(HSMPOOL), "--config", str(config), "credentials", "create",
           "--instance", instance, "--name", name, "--json"]
    if policy is not None:
        cmd += ["--policy", json.dumps(policy)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    doc = json.loads(out.stdout)
    assert doc["Instance"] == instance and doc["Principal"] == name
    return Cred(doc["AccessKeyId"], doc["SecretAccessKey"], instance)


def cluster_status(config: Path) -> dict[str, Any]:
    """``hsmpool cluster status --json`` (the real CLI)."""
    out = subprocess.run([str(HSMPOOL), "cluster", "status", "--config", str(config),
                          "--json"], check=True, capture_output=True, text=True, timeout=60)
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


@dataclass
class Server:
    config: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    creds: dict[str, Cred] = field(default_factory=dict)
    instance_port: int | None = None  # the KMS-instance API's (HTTPS), if it serves one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, cred: Cred, *, service: str = "kms", **config: Any) -> Any:
        """A boto3 client (``kms`` or ``secretsmanager``) on this server that sends each
        request once (no retries: every answer is seen)."""
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=cred.access_key_id,
                            aws_secret_access_key=cred.secret, config=send_once(**config))

    def credential(self, instance: str, name: str,
                   policy: Mapping[str, Any] | None = None) -> Cred:
        cred = create_credential(self.config, instance, name, policy)
        self.creds[name] = cred
        return cred

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """A GET on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def sign_headers(cred: Cred, port: int, target: str | None, body: bytes,
                 content_type: str | None = JSON_CT, region: str = REGION,
                 service: str = "kms", extra: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
    """The headers boto3 would send, signed by botocore's own SigV4 signer."""
    headers: dict[str, str] = {}
    if target is not None:
        headers["X-Amz-Target"] = target
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(extra or {})
    req = AWSRequest("POST", f"http://127.0.0.1:{port}/", data=body, headers=headers)
    SigV4Auth(Credentials(cred.access_key_id, cred.secret), service, region).add_auth(req)
    return dict(req.headers.items())


def error_code(fn: Callable[[], object]) -> str | None:
    """The AWS error code of the ClientError ``fn()`` raised, or None if it succeeded."""
    try:
        fn()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return None


def until(check: Callable[[], object], limit: float = 1.0, what: str = "the condition",
          step: float = 0.02) -> float:
    """Seconds until ``check()`` is true (a ClientError counts as not yet); AssertionError
    naming ``what`` past ``limit`` seconds."""
    t0 = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - t0
        except ClientError:
            pass
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{what}: not within {limit} s")
        time.sleep(step)


def raw_post(port: int, body: bytes, headers: Mapping[str, str], path: str = "/"
             ) -> tuple[int, dict[str, str], bytes]:
    """One POST on a fresh TCP connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=dict(headers))
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def call(port: int, cred: Cred, op: str, params: Mapping[str, Any] | bytes
         ) -> tuple[int, Any]:
    """A signed KMS operation on a fresh connection -> (status, decoded JSON body)."""
    body = params if isinstance(params, bytes) else json.dumps(params).encode()
    status, _, data = raw_post(port, body,
                               sign_headers(cred, port, "TrentService." + op, body))
    return status, json.loads(data)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    # Workers of a multi-process server are in the group we created for it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def run_server(config: Path, workers: int = 1, *, kms_instance: bool = False
               ) -> Iterator[Server]:
    """Start ``hsmpool serve`` on a free port (and, with ``kms_instance``, the KMS-instance
    API on another) and wait until ``/healthz`` answers 200."""
    instances = set(load_config(config)[0].instances)
    last_log = ""
    for _attempt in range(3):
        port = free_port()
        instance_port = free_port() if kms_instance else None
        log = config.parent / f"server-{port}.log"
        extra = [] if instance_port is None else ["--kms-instance-port", str(instance_port)]
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [str(HSMPOOL), "--config", str(config), "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--workers", str(workers), *extra],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(config, port, proc, log, instance_port=instance_port)
        try:
            if _wait_healthy(server, instances):
                break
        except BaseException:
            _stop(proc)
            raise
        last_log = server.log_text()
        _stop(proc)
    else:
        pytest.fail(f"the server did not start; its log:\n{last_log}")
    try:
        yield server
    finally:
        died = proc.poll()
        _stop(proc)
        # A server that died early, or a fault answered as a 500 (logged with a
        # traceback): show its log.
        text = server.log_text()
        if died is not None or "Traceback" in text:
            print(f"--- server log ({log}, exited early: {died}) ---\n{text}",
                  file=sys.stderr)


def _wait_healthy(server: Server, instances: set[str]) -> bool:
    """Wait for /healthz: 200, and from this server (its instances: the free port may have
    been taken by another process meanwhile, then this server fails to bind and exits)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            status, _, body = server.get("/healthz")
            doc = json.loads(body)
            if status == 200 and doc.get("status") == "ok" \
                    and set(doc.get("healthy_tokens_per_instance", {})) == instances:
                return True
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def server(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server: one worker, instances "srv" and "srv2", the KMS-instance API on
    a port of its own; admin credentials "admin" (srv) and "admin2" (srv2) with the default
    policy (kms:* on *)."""
    config = write_server_config(tmp_path_factory.mktemp("server"), token_dir, INSTANCES)
    admin = create_credential(config, "srv", "admin")
    admin2 = create_credential(config, "srv2", "admin2")
    with run_server(config, workers=1, kms_instance=True) as srv:
        srv.creds.update(admin=admin, admin2=admin2)
        yield srv


@pytest.fixture(scope="session")
def kms(server: Server) -> Any:
    """boto3 ``kms`` client of the "srv" admin."""
    return server.client(server.creds["admin"])


@pytest.fixture(scope="session")
def kms2(server: Server) -> Any:
    """boto3 ``kms`` client of the "srv2" admin."""
    return server.client(server.creds["admin2"])


# --- `hsmpool serve` as a process whose start-up is watched -----------------------------


@dataclass
class ServeRun:
    """An ``hsmpool serve`` process with its stderr (and stdout) in ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def lines(self) -> list[str]:
        return [ln for ln in self.text().splitlines() if ln.strip()]

    def wait_for(self, fragment: str, timeout: float = START_TIMEOUT) -> str:
        """The first log line holding ``fragment``; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if fragment in line:
                    return line
            if self.proc.poll() is not None:
                for line in self.lines():  # a last look: it may have written and exited
                    if fragment in line:
                        return line
                pytest.fail(f"exited ({self.proc.returncode}) before {fragment!r}:\n"
                            f"{self.text()}")
            time.sleep(0.05)
        pytest.fail(f"no {fragment!r} within {timeout} s:\n{self.text()}")

    def finish(self, timeout: float = 60) -> int:
        """Wait for the process to exit by itself; its exit status."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(self.proc)
            pytest.fail(f"still running after {timeout} s:\n{self.text()}")

    def stop(self) -> int | None:
        _stop(self.proc)
        return self.proc.returncode


def start_serve(args: Sequence[str], log: Path, *, config: Path | None = None,
                env: Mapping[str, str] | None = None) -> ServeRun:
    """``hsmpool [--config CONFIG] serve ARGS`` in its own process group."""
    cmd = [str(HSMPOOL)] + (["--config", str(config)] if config is not None else []) + \
        ["serve", *args]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
    return ServeRun(proc, log)


@contextlib.contextmanager
def serving(args: Sequence[str], log: Path, *, config: Path | None = None,
            env: Mapping[str, str] | None = None) -> Iterator[tuple[ServeRun, str]]:
    """A server started with ``args`` (give ``--port 0``: it picks a free one), up once it
    printed its serving line; yields the run and its URL. Stopped (SIGTERM) at the end."""
    run = start_serve(args, log, config=config, env=env)
    try:
        line = run.wait_for("hsmpool: serving AWS KMS on ")
        url = line.split(" on ", 1)[1].split(" (", 1)[0]
        yield run, url
    finally:
        run.stop()


# --- crash tests ------------------------------------------------------------------------


def kill_group(server: Server) -> None:
    """SIGKILL a running server with its workers (its whole process group)."""
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
