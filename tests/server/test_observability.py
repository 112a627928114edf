"""What an operator sees of a running server: ``/metrics`` summed over every worker, the
access log (JSON lines, never a secret), failed authentications, and the pool's token
ejections and readmissions in the log. Real ``hsmpool serve`` processes, boto3 and raw
HTTP on 127.0.0.1, real SoftHSM2 tokens (faults through the shim).

Instances: "obs" on tokens 3, 4.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.faults import FaultInjector
from tests.server.conftest import (
    REGION,
    Cred,
    call,
    create_credential,
    raw_post,
    send_once,
    serving,
    sign_headers,
    write_server_config,
)

INSTANCE = "obs"
TOKENS = [3, 4]
N = 40
_REQ = re.compile(r'^hsmpool_requests_total\{operation="([^"]*)",result="([^"]*)"\} (\d+)$',
                  re.M)
_PER_WORKER = re.compile(r'^hsmpool_worker_requests_total\{worker="(\d+)"\} (\d+)$', re.M)


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a fresh connection
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        return r.read().decode()
    finally:
        conn.close()


def _counts(text: str) -> Counter[tuple[str, str]]:
    return Counter({(op, res): int(n) for op, res, n in _REQ.findall(text)})


def _per_worker(text: str) -> dict[str, int]:
    return {w: int(n) for w, n in _PER_WORKER.findall(text)}


def test_metrics_of_every_worker_summed_in_every_scrape(token_dir: Path,
                                                        tmp_path: Path) -> None:
    cfg = write_server_config(tmp_path, token_dir, {INSTANCE: TOKENS})
    cred = create_credential(cfg, INSTANCE, "admin")
    with serving(["--port", "0", "--workers", "2"], tmp_path / "m.log", config=cfg) as (_, url):
        port = _port(url)
        deadline = time.monotonic() + 30
        while len(_per_worker(_scrape(port))) < 2:  # both workers published once
            assert time.monotonic() < deadline
            time.sleep(0.2)
        before = _counts(_scrape(port))
        served_before = _per_worker(_scrape(port))

        def one(_: int) -> int:
            return call(port, cred, "GenerateRandom", {"NumberOfBytes": 8})[0]

        with ThreadPoolExecutor(8) as ex:  # fresh connections, concurrently: both workers
            assert set(ex.map(one, range(N))) == {200}
        time.sleep(1.5)  # > the workers' publishing interval (1 s)
        for _ in range(10):
            text = _scrape(port)
            got = _counts(text)[("GenerateRandom", "ok")] - before[("GenerateRandom", "ok")]
            assert got == N, text
            count = re.search(r'^hsmpool_request_seconds_count\{operation="GenerateRandom"\} '
                              r"(\d+)$", text, re.M)
            assert count and int(count.group(1)) == got + before[("GenerateRandom", "ok")]
            served = _per_worker(text)
            assert len(served) == 2 and sum(served.values()) >= sum(served_before.values()) + N
        # Both workers answered some of them (else the sum proves nothing).
        assert all(served[w] > served_before.get(w, 0) for w in served), (served_before, served)
        # The rest: token latency histograms, ops summed, build info, audit backlog,
        # process figures per worker.
        assert re.search(r'^hsmpool_build_info\{version="[^"]+"\} 1$', text, re.M)
        for t in TOKENS:
            assert re.search(rf'^hsmpool_token_seconds_bucket\{{token="t{t}",le="\+Inf"\}} \d+$',
                             text, re.M)
        ops = sum(int(n) for n in re.findall(r'^hsmpool_token_operations_total\{token="t\d"\} '
                                             r"(\d+)$", text, re.M))
        assert ops >= N
        # Sessions open, every worker: each worker that served a call keeps at least one.
        sessions = [int(n) for n in re.findall(r'^hsmpool_token_sessions\{token="t\d"\} (\d+)$',
                                               text, re.M)]
        assert len(sessions) == len(TOKENS) and sum(sessions) >= 2, sessions
        assert re.search(r"^hsmpool_audit_backlog \d+$", text, re.M)
        for metric in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                       "process_open_fds"):
            assert len(re.findall(rf'^{metric}\{{worker="\d+"\}} [0-9.]+$', text, re.M)) == 2
        for line in text.splitlines():
            if line and not line.startswith("#"):
                assert re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$', line), line


SECRET_PT = b"plaintext-never-logged-7f3a"
SECRET_CTX = "context-value-never-logged-91c2"


def test_access_log_lines_and_failed_authentications(token_dir: Path, tmp_path: Path) -> None:
    cfg = write_server_config(tmp_path, token_dir, {INSTANCE: TOKENS})
    cred = create_credential(cfg, INSTANCE, "admin")
    with serving(["--port", "0", "--workers", "1", "--access-log", "json"],
                 tmp_path / "a.log", config=cfg) as (run, url):
        port = _port(url)
        kms = boto3.client("kms", endpoint_url=url, region_name=REGION,
                           aws_access_key_id=cred.access_key_id,
                           aws_secret_access_key=cred.secret,
                           config=send_once())
        key = kms.create_key()["KeyMetadata"]
        ct = kms.encrypt(KeyId=key["KeyId"], Plaintext=SECRET_PT,
                         EncryptionContext={"purpose": SECRET_CTX})["CiphertextBlob"]
        kms.decrypt(CiphertextBlob=ct, EncryptionContext={"purpose": SECRET_CTX})
        with pytest.raises(ClientError):
            kms.describe_key(KeyId="alias/does-not-exist")
        wrong = Cred(cred.access_key_id, "x" * 40, INSTANCE)
        status, _ = call(port, wrong, "ListKeys", {})
        assert status == 400
        unknown = Cred("HSMPUNKNOWN000000000", "y" * 40, INSTANCE)
        assert call(port, unknown, "ListKeys", {})[0] == 400
        body = json.dumps({}).encode()
        headers = sign_headers(cred, port, "TrentService.ListKeys", body)
        signature = headers["Authorization"].rsplit("Signature=", 1)[1]
        headers["X-Amz-Date"] = "20200101T000000Z"  # signed with another date: refused
        assert raw_post(port, body, headers)[0] == 400
        run.wait_for("access key id HSMPUNKNOWN000000000", timeout=10)
        time.sleep(0.3)
        text = run.text()
    records = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    by_op = {r["operation"]: r for r in records if r["status"] == 200}
    for op in ("CreateKey", "Encrypt", "Decrypt"):
        r = by_op[op]
        assert set(r) == {"time", "principal", "access_key_id", "operation", "key_id",
                          "status", "error", "latency_ms", "source", "worker"}
        assert r["principal"] == f"{INSTANCE}/admin"
        assert r["access_key_id"] == cred.access_key_id
        assert r["key_id"] == key["Arn"] and r["error"] is None
        assert r["source"] == "127.0.0.1" and r["latency_ms"] > 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"])
    missing = next(r for r in records if r["operation"] == "DescribeKey")
    assert missing["status"] == 400 and missing["error"] == "NotFoundException"
    assert missing["key_id"] == "alias/does-not-exist"
    refused = [r for r in records if r["error"] in ("InvalidSignatureException",
                                                    "UnrecognizedClientException")]
    assert len(refused) == 3 and all(r["principal"] is None for r in refused)
    auth = [ln for ln in text.splitlines() if "hsmpool.auth: authentication failed" in ln]
    assert len(auth) == 3, text
    assert any(f"access key id {cred.access_key_id} from 127.0.0.1: "
               "InvalidSignatureException" in ln for ln in auth)
    assert any("HSMPUNKNOWN000000000" in ln and "UnrecognizedClientException" in ln
               for ln in auth)
    # Nothing secret anywhere in the server's output.
    for secret in (SECRET_PT.decode(), base64.b64encode(SECRET_PT).decode(), SECRET_CTX,
                   cred.secret, "x" * 40, signature, base64.b64encode(ct).decode()[:24]):
        assert secret not in text, secret


def test_token_ejection_and_readmission_are_logged(token_dir: Path, tmp_path: Path,
                                                   faults: FaultInjector) -> None:
    cfg = write_server_config(tmp_path, token_dir, {INSTANCE: TOKENS},
                              {"probe_interval": 0.1, "probe_max_interval": 0.3})
    cred = create_credential(cfg, INSTANCE, "admin")
    with serving(["--port", "0", "--workers", "1"], tmp_path / "e.log",
                 config=cfg) as (run, url):
        port = _port(url)
        status, out = call(port, cred, "CreateKey", {})
        assert status == 200
        key_id = out["KeyMetadata"]["KeyId"]
        faults.fail(f"hsmpool-{TOKENS[0]}", "device_error")
        for _ in range(20):  # served by the other token meanwhile
            status, _ = call(port, cred, "Encrypt", {"KeyId": key_id, "Plaintext": "eA=="})
            assert status == 200
        line = run.wait_for("ejected", timeout=10)
        assert f"token 't{TOKENS[0]}' (label 'hsmpool-{TOKENS[0]}', instance {INSTANCE}) " \
               "ejected" in line and "WARNING" in line and "hsmpool.pool" in line
        faults.heal()
        back = run.wait_for("readmitted", timeout=20)
        assert re.search(rf"token 't{TOKENS[0]}' \(label 'hsmpool-{TOKENS[0]}'\) readmitted "
                         r"after \d+\.\d s", back), back
        doc: dict[str, Any] = json.loads(_health(port))
        assert doc["tokens"][f"t{TOKENS[0]}"] == "healthy"


def _health(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().read()
    finally:
        conn.close()
