"""Two worker processes (``--workers 2``) on one SQLite metadata store: every request on a
fresh TCP connection, so either worker may answer it. Keys, aliases, state changes,
rotations and credentials made through one worker are seen by the other; concurrent
writers in both processes neither lose updates nor answer 500s.

The service re-reads the store when another process committed, checking at most every
50 ms (``Kms._fresh``); tests that change state wait out that window (a documented bound,
not a timing assertion) before they read.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import (
    HSMPOOL,
    Cred,
    Server,
    call,
    create_credential,
    raises_code,
    run_server,
    write_server_config,
)

STALENESS = 0.2  # > the service's 50 ms cross-process cache check
_SAMPLE = re.compile(r'^hsmpool_requests_total\{operation="([^"]*)",'
                     r'result="([^"]*)"\} (\d+)$', re.M)
_SERVED = re.compile(r'^hsmpool_worker_requests_total\{worker="(\d+)"\} (\d+)$', re.M)
PUBLISHED = 1.2  # > the interval at which each worker publishes its metrics (1 s)


@pytest.fixture(scope="module")
def wserver(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = write_server_config(tmp_path_factory.mktemp("workers"), token_dir,
                                 {"srvw": [5, 6]})
    admin = create_credential(config, "srvw", "admin")
    with run_server(config, workers=2, kms_instance=True) as srv:
        srv.creds["admin"] = admin
        yield srv


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ok(srv: Server, op: str, params: dict[str, Any], cred: Cred | None = None) -> Any:
    status, body = call(srv.port, cred or srv.creds["admin"], op, params)
    assert status == 200, (op, status, body)
    return body


def _err(srv: Server, op: str, params: dict[str, Any]) -> str:
    status, body = call(srv.port, srv.creds["admin"], op, params)
    assert 400 <= status < 500, (op, status, body)
    return str(body["__type"])


def _metrics(srv: Server, want: int = 2, timeout: float = 30.0
             ) -> tuple[dict[str, int], Counter[tuple[str, str]]]:
    """After the workers' publishing interval: (requests answered per worker pid, requests
    by (operation, result) summed over the workers), from one scrape showing ``want``
    workers. Every worker's counts are in every scrape, whichever worker answers it."""
    time.sleep(PUBLISHED)
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = srv.get("/metrics")
        assert status == 200
        text = body.decode()
        served = {w: int(n) for w, n in _SERVED.findall(text)}
        if len(served) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    counts: Counter[tuple[str, str]] = Counter()
    for op, result, n in _SAMPLE.findall(text):
        counts[(op, result)] += int(n)
    return served, counts


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_two_worker_processes_answer(wserver: Server) -> None:
    seen, _ = _metrics(wserver)
    assert len(seen) == 2, f"only workers {sorted(seen)} in /metrics"
    for pid in map(int, seen):
        assert pid != wserver.proc.pid
        assert _ppid(pid) == wserver.proc.pid  # children of the server process
    status, _, body = wserver.get("/healthz")
    assert status == 200 and json.loads(body)["healthy_tokens_per_instance"] == {"srvw": 2}


def test_keys_made_anywhere_work_everywhere(wserver: Server) -> None:
    before_served, before = _metrics(wserver)
    assert len(before_served) == 2
    keys = [_ok(wserver, "CreateKey", {"Description": f"worker key {i}"})["KeyMetadata"]
            for i in range(20)]
    assert len({k["KeyId"] for k in keys}) == 20
    for i, k in enumerate(keys):
        md = _ok(wserver, "DescribeKey", {"KeyId": k["KeyId"]})["KeyMetadata"]
        assert md["Arn"] == k["Arn"] and md["Description"] == f"worker key {i}"
        pt = f"plaintext {i}".encode()
        ct = _ok(wserver, "Encrypt", {"KeyId": k["Arn"], "Plaintext": _b64(pt),
                                      "EncryptionContext": {"i": str(i)}})
        assert ct["KeyId"] == k["Arn"]
        out = _ok(wserver, "Decrypt", {"CiphertextBlob": ct["CiphertextBlob"],
                                       "EncryptionContext": {"i": str(i)}})
        assert base64.b64decode(out["Plaintext"]) == pt and out["KeyId"] == k["Arn"]
    listed = set()
    marker = None
    while True:
        page = _ok(wserver, "ListKeys", {"Limit": 7} | ({"Marker": marker} if marker else {}))
        listed |= {k["KeyId"] for k in page["Keys"]}
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert {k["KeyId"] for k in keys} <= listed
    # The two workers' counters add up to exactly the requests made, and both served some.
    _spread_until_both_served(wserver, before_served, keys[0]["KeyId"])
    after_served, after = _metrics(wserver)
    assert set(after_served) == set(before_served)
    for op in ("CreateKey", "DescribeKey", "Encrypt", "Decrypt"):
        assert after[(op, "ok")] - before[(op, "ok")] >= 20
    assert after[("CreateKey", "ok")] - before[("CreateKey", "ok")] == 20
    for w in after_served:
        assert after_served[w] > before_served[w], f"worker {w} served nothing"


def _spread_until_both_served(srv: Server, before: dict[str, int], key_id: str,
                              rounds: int = 20) -> None:
    """More requests on fresh connections, concurrently, until each worker served one
    (sequential connections may keep landing on the same worker)."""
    for _ in range(rounds):
        now, _ = _metrics(srv)
        if len(now) == 2 and all(now[w] > before.get(w, 0) for w in now):
            return
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda _: _ok(srv, "DescribeKey", {"KeyId": key_id}), range(32)))


def test_state_changes_seen_by_every_worker(wserver: Server) -> None:
    k = _ok(wserver, "CreateKey", {})["KeyMetadata"]
    k2 = _ok(wserver, "CreateKey", {})["KeyMetadata"]
    enc = {"KeyId": k["KeyId"], "Plaintext": _b64(b"x")}
    for _ in range(10):
        _ok(wserver, "Encrypt", enc)  # warm both workers' caches
    _ok(wserver, "DisableKey", {"KeyId": k["KeyId"]})
    time.sleep(STALENESS)
    assert {_err(wserver, "Encrypt", enc) for _ in range(20)} == {"DisabledException"}
    _ok(wserver, "EnableKey", {"KeyId": k["KeyId"]})
    time.sleep(STALENESS)
    for _ in range(20):
        _ok(wserver, "Encrypt", enc)
    # Aliases: created, moved, deleted.
    name = "alias/w-" + uuid.uuid4().hex[:8]
    _ok(wserver, "CreateAlias", {"AliasName": name, "TargetKeyId": k["KeyId"]})
    for _ in range(10):
        assert _ok(wserver, "DescribeKey", {"KeyId": name})["KeyMetadata"]["KeyId"] == k["KeyId"]
    _ok(wserver, "UpdateAlias", {"AliasName": name, "TargetKeyId": k2["KeyId"]})
    time.sleep(STALENESS)
    for _ in range(20):
        assert _ok(wserver, "Encrypt", {"KeyId": name, "Plaintext": "eA=="})["KeyId"] \
            == k2["Arn"]
    _ok(wserver, "DeleteAlias", {"AliasName": name})
    time.sleep(STALENESS)
    assert {_err(wserver, "DescribeKey", {"KeyId": name}) for _ in range(20)} \
        == {"NotFoundException"}
    # Rotation on one worker: ciphertexts of the new version decrypt on both.
    old = [_ok(wserver, "Encrypt", enc)["CiphertextBlob"] for _ in range(5)]
    _ok(wserver, "RotateKeyOnDemand", {"KeyId": k["KeyId"]})
    time.sleep(STALENESS)
    new = [_ok(wserver, "Encrypt", enc)["CiphertextBlob"] for _ in range(10)]
    headers = {base64.b64decode(c)[:17] for c in new}
    assert len(headers) == 1 and headers.isdisjoint(base64.b64decode(c)[:17] for c in old)
    for blob in old + new:
        out = _ok(wserver, "Decrypt", {"CiphertextBlob": blob})
        assert base64.b64decode(out["Plaintext"]) == b"x"
    # Pending deletion, then cancelled.
    _ok(wserver, "ScheduleKeyDeletion", {"KeyId": k["KeyId"], "PendingWindowInDays": 7})
    time.sleep(STALENESS)
    assert {_err(wserver, "Encrypt", enc) for _ in range(20)} == {"KMSInvalidStateException"}
    assert {_err(wserver, "Decrypt", {"CiphertextBlob": new[0]}) for _ in range(10)} \
        == {"KMSInvalidStateException"}
    _ok(wserver, "CancelKeyDeletion", {"KeyId": k["KeyId"]})
    time.sleep(STALENESS)  # the other worker may decide EnableKey on its cached state
    _ok(wserver, "EnableKey", {"KeyId": k["KeyId"]})
    time.sleep(STALENESS)
    for _ in range(10):
        _ok(wserver, "Decrypt", {"CiphertextBlob": new[0]})


def test_credential_created_while_running(wserver: Server) -> None:
    k = _ok(wserver, "CreateKey", {})["KeyMetadata"]
    cred = wserver.credential("srvw", "late-" + uuid.uuid4().hex[:6], {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"],
                       "Resource": k["Arn"]}]})
    for i in range(20):
        ct = _ok(wserver, "Encrypt", {"KeyId": k["KeyId"], "Plaintext": _b64(b"%d" % i)},
                 cred=cred)
        out = _ok(wserver, "Decrypt", {"CiphertextBlob": ct["CiphertextBlob"]}, cred=cred)
        assert base64.b64decode(out["Plaintext"]) == b"%d" % i
    status, body = call(wserver.port, cred, "CreateKey", {})
    assert status == 400 and body["__type"] == "AccessDeniedException"


def test_concurrent_load_across_workers(wserver: Server) -> None:
    keys = [_ok(wserver, "CreateKey", {"KeySpec": spec})["KeyMetadata"]
            for spec in ("SYMMETRIC_DEFAULT", "SM4") * 3]

    def work(i: int) -> None:
        k = keys[i % len(keys)]
        pt = uuid.uuid4().bytes
        ct = _ok(wserver, "Encrypt", {"KeyId": k["KeyId"], "Plaintext": _b64(pt),
                                      "EncryptionContext": {"n": str(i)}})
        out = _ok(wserver, "Decrypt", {"CiphertextBlob": ct["CiphertextBlob"],
                                       "EncryptionContext": {"n": str(i)}})
        assert base64.b64decode(out["Plaintext"]) == pt
        dk = _ok(wserver, "GenerateDataKey", {"KeyId": k["Arn"], "KeySpec": "AES_256"})
        out = _ok(wserver, "Decrypt", {"CiphertextBlob": dk["CiphertextBlob"]})
        assert out["Plaintext"] == dk["Plaintext"]

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(work, range(120)))


def test_concurrent_writers_lose_nothing(wserver: Server) -> None:
    """Tags written to one key from many connections at once (both processes): every tag
    lands; none of the writers gets a 500."""
    k = _ok(wserver, "CreateKey", {})["KeyMetadata"]

    def tag(i: int) -> None:
        _ok(wserver, "TagResource", {"KeyId": k["KeyId"],
                                     "Tags": [{"TagKey": f"t{i}", "TagValue": str(i)}]})

    with ThreadPoolExecutor(6) as ex:
        list(ex.map(tag, range(24)))
    time.sleep(STALENESS)
    tags = _ok(wserver, "ListResourceTags", {"KeyId": k["KeyId"]})["Tags"]
    assert {t["TagKey"]: t["TagValue"] for t in tags} == {f"t{i}": str(i) for i in range(24)}


def test_concurrent_create_alias_one_winner(wserver: Server) -> None:
    keys = [_ok(wserver, "CreateKey", {})["KeyMetadata"] for _ in range(4)]
    for round_ in range(5):
        name = f"alias/race-{round_}-{uuid.uuid4().hex[:6]}"

        def create(i: int, name: str = name) -> tuple[int, Any]:
            return call(wserver.port, wserver.creds["admin"], "CreateAlias",
                        {"AliasName": name, "TargetKeyId": keys[i % 4]["KeyId"]})

        with ThreadPoolExecutor(8) as ex:
            results = list(ex.map(create, range(8)))
        statuses = Counter(status for status, _ in results)
        assert statuses[200] == 1, results
        assert all(body["__type"] == "AlreadyExistsException"
                   for status, body in results if status != 200), results
        winner = next(i for i, (status, _) in enumerate(results) if status == 200)
        time.sleep(STALENESS)
        for _ in range(6):
            md = _ok(wserver, "DescribeKey", {"KeyId": name})["KeyMetadata"]
            assert md["KeyId"] == keys[winner % 4]["KeyId"]


def test_narrowed_policy_applies_on_every_worker(wserver: Server) -> None:
    k = _ok(wserver, "CreateKey", {})["KeyMetadata"]
    name = "narrow-" + uuid.uuid4().hex[:6]
    wide = {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}
    cred = wserver.credential("srvw", name, wide)
    enc = {"KeyId": k["KeyId"], "Plaintext": "eA=="}
    for _ in range(20):  # both workers cache the principal
        _ok(wserver, "Encrypt", enc, cred=cred)
    wserver.credential("srvw", name, {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kms:DescribeKey", "Resource": "*"}]})
    time.sleep(STALENESS)
    for _ in range(20):
        status, body = call(wserver.port, cred, "Encrypt", enc)
        assert status == 400 and body["__type"] == "NotFoundException", body
        _ok(wserver, "DescribeKey", {"KeyId": k["KeyId"]}, cred=cred)


def test_shutdown_stops_every_worker_and_keeps_the_audit(token_dir: Path,
                                                         tmp_path: Path) -> None:
    """SIGTERM to the server: both workers exit, each having flushed its own audit segment;
    ``hsmpool audit verify`` finds every record of the requests made, chains intact."""
    config = write_server_config(tmp_path, token_dir, {"srvw": [5, 6]})
    cred = create_credential(config, "srvw", "admin")
    with run_server(config, workers=2) as srv:
        pids = set(_metrics(srv)[0])
        assert len(pids) == 2
        k = _ok(srv, "CreateKey", {}, cred=cred)["KeyMetadata"]
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda _: _ok(srv, "Encrypt", {"KeyId": k["KeyId"],
                                                       "Plaintext": "eA=="}, cred=cred),
                        range(40)))
        served = {w for w, n in _metrics(srv)[0].items() if n > 0}
    for pid in map(int, pids):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text().lower(), f"worker {pid} still running"
    out = subprocess.run([str(HSMPOOL), "--config", str(config), "audit", "verify",
                          "--dir", str(tmp_path / "audit")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    records = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"^segment (\S+): (\d+) records", out.stdout, re.M)}
    # One segment per worker that served (named host-pid), holding its records.
    for pid in served:
        assert any(seg.endswith(f"-{pid}") for seg in records), (pid, out.stdout)
    assert sum(records.values()) >= 41, out.stdout


def test_racing_writers_leave_one_state_everywhere(wserver: Server) -> None:
    """Disable/Enable and UpdateAlias racing on both workers: afterwards every worker
    answers the same key state and the same alias target."""
    k = _ok(wserver, "CreateKey", {})["KeyMetadata"]
    targets = [_ok(wserver, "CreateKey", {})["KeyMetadata"]["KeyId"] for _ in range(3)]
    name = "alias/racing-" + uuid.uuid4().hex[:6]
    _ok(wserver, "CreateAlias", {"AliasName": name, "TargetKeyId": targets[0]})

    def write(i: int) -> None:
        _ok(wserver, "DisableKey" if i % 2 else "EnableKey", {"KeyId": k["KeyId"]})
        _ok(wserver, "UpdateAlias", {"AliasName": name, "TargetKeyId": targets[i % 3]})

    with ThreadPoolExecutor(6) as ex:
        list(ex.map(write, range(30)))
    time.sleep(STALENESS)
    states = {_ok(wserver, "DescribeKey", {"KeyId": k["KeyId"]})["KeyMetadata"]["KeyState"]
              for _ in range(20)}
    assert len(states) == 1 and states <= {"Enabled", "Disabled"}, states
    aliased = {_ok(wserver, "DescribeKey", {"KeyId": name})["KeyMetadata"]["KeyId"]
               for _ in range(20)}
    assert len(aliased) == 1 and aliased <= set(targets), aliased
    listed = _ok(wserver, "ListAliases", {"KeyId": next(iter(aliased))})["Aliases"]
    assert name in {a["AliasName"] for a in listed}
    # Encrypt agrees with the state on every worker.
    enc = {"KeyId": k["KeyId"], "Plaintext": "eA=="}
    if states == {"Enabled"}:
        for _ in range(10):
            _ok(wserver, "Encrypt", enc)
    else:
        assert {_err(wserver, "Encrypt", enc) for _ in range(10)} == {"DisabledException"}


# --- credentials revoked through the CLI ----------------------------------------------------

REVOCATION_BOUND = 1.0  # seconds from `credentials disable|enable|delete` to every worker


def _credentials_cli(srv: Server, *args: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(HSMPOOL), "--config", str(srv.config), "credentials", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc, proc.stderr
    return proc


def _burst(srv: Server, cred: Cred, n: int = 64) -> list[str]:
    """``n`` ListKeys on fresh connections, 8 at a time: each answer's result ("ok" or the
    error type)."""
    def one(_: int) -> str:
        status, body = call(srv.port, cred, "ListKeys", {})
        if status == 200:
            return "ok"
        assert status == 400, (status, body)
        return str(body["__type"])

    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(one, range(n)))


def _every_worker_answers(srv: Server, cred: Cred, want: str, since: float) -> None:
    """Poll (bursts of fresh connections) until ``REVOCATION_BOUND`` after ``since``; from
    then on every answer is ``want``, and both workers gave such answers."""
    while time.monotonic() < since + REVOCATION_BOUND:
        _burst(srv, cred, 16)
    served: set[str] = set()
    for _ in range(10):
        before = _metrics(srv)[0]
        results = _burst(srv, cred)
        assert set(results) == {want}, Counter(results)
        # Every answer of the burst was `want`: a worker whose count grew gave some.
        after = _metrics(srv)[0]
        served |= {w for w in after if after[w] > before.get(w, 0)}
        if len(served) == 2:
            return
    pytest.fail(f"only workers {sorted(served)} answered {want}")


def test_disabled_credential_is_refused_by_every_worker(wserver: Server) -> None:
    """``credentials disable`` (another process, the CLI) is seen by both workers within
    1 s, although both hold the key's signing key in their SigV4 cache; ``enable`` makes it
    work again; ``delete`` ends it for good."""
    name = "revoked-" + uuid.uuid4().hex[:6]
    cred = wserver.credential("srvw", name)
    _every_worker_answers(wserver, cred, "ok", since=time.monotonic() - REVOCATION_BOUND)

    doc = json.loads(_credentials_cli(wserver, "disable", cred.access_key_id,
                                      "--json").stdout)
    done = time.monotonic()
    assert doc["AccessKeyId"] == cred.access_key_id and doc["Enabled"] is False
    _every_worker_answers(wserver, cred, "UnrecognizedClientException", since=done)
    boto = wserver.client(cred)
    with raises_code(boto, "UnrecognizedClientException"):
        boto.list_keys()
    admin = wserver.creds["admin"]
    assert set(_burst(wserver, admin, 16)) == {"ok"}  # only that key is refused

    _credentials_cli(wserver, "enable", cred.access_key_id)
    _every_worker_answers(wserver, cred, "ok", since=time.monotonic())
    assert wserver.client(cred).list_keys()["Truncated"] in (True, False)

    _credentials_cli(wserver, "delete", cred.access_key_id)
    _every_worker_answers(wserver, cred, "UnrecognizedClientException",
                          since=time.monotonic())
    err = _credentials_cli(wserver, "enable", cred.access_key_id, rc=1).stderr
    assert err.strip() == (f"hsmpool: NotFound: access key "
                           f"{cred.access_key_id!r} does not exist")
    listed = json.loads(_credentials_cli(wserver, "list", "--name", name, "--json").stdout)
    assert listed == {"AccessKeys": []}
    assert set(_burst(wserver, cred, 16)) == {"UnrecognizedClientException"}


INSTANCE_LOOP = r"""
for i in range(16):  # a new client, so a new connection, each time
    c = Client(cfg)
    e = c.advance_encrypt(m.AdvanceEncryptRequest(key_id=args[0], plaintext=b"%d" % i))
    d = c.advance_decrypt(m.AdvanceDecryptRequest(ciphertext_blob=e.ciphertext_blob))
    out[str(i)] = d.plaintext.decode()
"""


def test_kms_instance_api_served_by_the_workers(wserver: Server, tmp_path: Path) -> None:
    """The KMS-instance port is inherited by both workers like the main one."""
    from tests.sdk.venvs import ALIBABA_KMS_INSTANCE, sdk_python
    from tests.server import test_kms_instance as ki

    kms = wserver.client(wserver.creds["admin"])
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    cmd = [str(ki.HSMPOOL), "--config", str(wserver.config), "aap", "create", "--instance",
           "srvw", "--name", "w", "--role", "CryptoServiceKeyUser", "--resource", "key/*",
           "--network", "127.0.0.1/32", "--out", str(tmp_path), "--json"]
    doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                    timeout=60).stdout)
    key = (doc["ClientKeyId"], Path(doc["KeyFile"]), Path(doc["PasswordFile"]))
    py = sdk_python("alibaba-kms-instance", ALIBABA_KMS_INSTANCE)
    out = ki._run(py, wserver, key, INSTANCE_LOOP, key_id)
    assert out == {str(i): str(i) for i in range(16)}
    seen, _ = _metrics(wserver)
    assert len(seen) == 2
