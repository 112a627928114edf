"""A node whose PostgreSQL goes away (kms/store/postgres.py, ``Kms._fresh``): every request
that needs the store fails at once with a retryable 503 (AWS KMS: DependencyTimeoutException;
Secrets Manager: InternalServiceError; Alibaba: ServiceUnavailable), never a 500; what the
node has cached is served for ``[kms] store_grace`` seconds and then refused the same way;
once the store is back the node serves everything again without a restart. The store is the
session's real cluster, reached through a TCP relay the test cuts and restores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.console.conftest import ConsoleClient
from tests.postgres import PostgresCluster, TcpRelay
from tests.sdk.venvs import ALIBABA_OPENAPI, run_sdk, sdk_python
from tests.server.conftest import Server, create_credential, run_server, write_server_config
from tests.server.test_alibaba import PRELUDE

# Its store is a PostgreSQL database of its own whatever HSMPOOL_TEST_DATABASE says:
# the same test on both passes (scripts/test.sh runs it in the main one).
pytestmark = pytest.mark.own_database

GRACE = 4  # [kms] store_grace of the node under test, seconds


@pytest.fixture
def cut_node(token_dir: Path, tmp_path: Path,
             postgres: PostgresCluster) -> Iterator[tuple[Server, TcpRelay]]:
    """A one-worker node on a fresh database reached through a relay, with an admin."""
    name = f"outage_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {name}")
    relay = TcpRelay(postgres.host, postgres.port)
    url = f"postgresql://{postgres.user}:{postgres.password}@127.0.0.1:{relay.port}/{name}"
    cfg = write_server_config(tmp_path, token_dir, {"outage": [6]})
    text = cfg.read_text()
    start = text.index("[kms]\n")
    kms_section = "".join(
        f'database = "{url}"\n' if line.startswith("database = ") else line + "\n"
        for line in text[start:].splitlines())
    cfg.write_text(text[:start] + kms_section + f"store_grace = {GRACE}\n")
    admin = create_credential(cfg, "outage", "admin")
    try:
        with run_server(cfg) as srv:
            srv.creds["admin"] = admin
            yield srv, relay
    finally:
        relay.close()


def _outcome(fn: Callable[[], Any]) -> tuple[str, int, float]:
    """("ok", 200, seconds) or the error code and HTTP status, and how long it took."""
    t0 = time.monotonic()
    try:
        out = fn()
    except ClientError as exc:
        return (exc.response["Error"]["Code"],
                exc.response["ResponseMetadata"]["HTTPStatusCode"], time.monotonic() - t0)
    return "ok", int(out["ResponseMetadata"]["HTTPStatusCode"]), time.monotonic() - t0


ALIBABA_CALLS = PRELUDE + r'''
out["create_key"] = code_of(lambda: c.create_key(m.CreateKeyRequest(key_spec="Aliyun_AES_256")))
out["describe_missing"] = code_of(lambda: c.describe_key(
    m.DescribeKeyRequest(key_id=str(__import__("uuid").uuid4()))))
print(json.dumps(out))
'''


def test_a_store_outage_is_a_fast_retryable_error_and_the_node_recovers(
        cut_node: tuple[Server, TcpRelay]) -> None:
    srv, relay = cut_node
    admin = srv.creds["admin"]
    kms, sm = srv.client(admin), srv.client(admin, service="secretsmanager")
    key = kms.create_key(Description="cached")["KeyMetadata"]["KeyId"]
    sm.create_secret(Name="outage/before", SecretString="s")
    # This node's own commits drop its caches too, when their notification comes back
    # (within milliseconds): let it come, then fill the caches the cut will find.
    time.sleep(0.5)
    blob = kms.encrypt(KeyId=key, Plaintext=b"before the cut")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before the cut"

    relay.cut()
    cut_at = time.monotonic()
    # Served from the worker's caches within the grace (the key, its version, the caller).
    cached = {
        "Encrypt": _outcome(lambda: kms.encrypt(KeyId=key, Plaintext=b"during the cut")),
        "Decrypt": _outcome(lambda: kms.decrypt(CiphertextBlob=blob)),
    }
    # Needing the store: refused at once, retryably.
    needs_store = {
        "CreateKey": _outcome(lambda: kms.create_key()),
        "ListKeys": _outcome(lambda: kms.list_keys()),
        "DescribeKey(unseen)": _outcome(lambda: kms.describe_key(KeyId=str(uuid.uuid4()))),
        "CreateAlias": _outcome(lambda: kms.create_alias(AliasName="alias/cut",
                                                          TargetKeyId=key)),
        "secretsmanager CreateSecret": _outcome(
            lambda: sm.create_secret(Name="outage/during", SecretString="s")),
        "secretsmanager ListSecrets": _outcome(lambda: sm.list_secrets()),
    }
    for name, (code, status, took) in {**cached, **needs_store}.items():
        print(f"store cut, {name}: {code} {status} in {took * 1000:.0f} ms")
    assert {n: o[:2] for n, o in cached.items()} == {n: ("ok", 200) for n in cached}
    expected = {n: ("DependencyTimeoutException", 503) for n in needs_store}
    expected["secretsmanager CreateSecret"] = ("InternalServiceError", 503)
    expected["secretsmanager ListSecrets"] = ("InternalServiceError", 503)
    assert {n: o[:2] for n, o in needs_store.items()} == expected

    ali = run_sdk(sdk_python("alibaba-openapi", ALIBABA_OPENAPI), ALIBABA_CALLS,
                  str(srv.port), admin.access_key_id, admin.secret, "acs3")
    print(f"store cut, Alibaba: {ali}")
    assert ali == {"create_key": ["ServiceUnavailable", 503],
                   "describe_missing": ["ServiceUnavailable", 503]}

    # Past the grace, what is cached is refused too: a key disabled on another node
    # meanwhile is not served longer than that.
    t0 = time.monotonic()
    while (got := _outcome(lambda: kms.encrypt(KeyId=key, Plaintext=b"x")))[0] == "ok":
        assert time.monotonic() - cut_at < GRACE + 30, "cached keys served long past the grace"
        time.sleep(0.2)
    print(f"cached Encrypt refused {time.monotonic() - cut_at:.1f} s after the cut "
          f"(grace {GRACE} s): {got[0]} {got[1]} in {got[2] * 1000:.0f} ms")
    assert got[:2] == ("DependencyTimeoutException", 503)
    assert _outcome(lambda: sm.get_secret_value(SecretId="outage/before"))[:2] == \
        ("InternalServiceError", 503)
    status, doc = ConsoleClient(srv.port).request(
        "POST", "/console/api/session",
        {"access_key_id": admin.access_key_id, "secret_access_key": admin.secret})
    print(f"store cut, console sign-in: {status} {doc}")
    assert status == 503, doc

    relay.restore()
    t0 = time.monotonic()
    while _outcome(lambda: kms.list_keys())[0] != "ok":
        assert time.monotonic() - t0 < 60, "the node did not recover within 60 s"
        time.sleep(0.2)
    print(f"ListKeys answered again {time.monotonic() - t0:.2f} s after the store came back")
    new = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/after-the-cut", TargetKeyId=new)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before the cut"
    assert kms.encrypt(KeyId="alias/after-the-cut", Plaintext=b"y")["KeyId"].endswith(new)
    assert sm.get_secret_value(SecretId="outage/before")["SecretString"] == "s"
    log = srv.log_text()
    assert "Traceback" not in log and "internal error" not in log, log
    # Said once per store (the service's, and the heartbeat's connection of its own), not
    # once per refused request; and the service's said it was back.
    assert 1 <= log.count("the metadata store is unavailable (") <= 2, log
    assert log.count("the metadata store answers again") >= 1, log
