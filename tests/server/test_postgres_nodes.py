"""Several ``hsmpool serve`` nodes on one PostgreSQL database (kms/store/postgres.py), against
the session's throw-away cluster: the server works on PostgreSQL as on SQLite, and what one
node does is seen by the others within a second."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmpool import Pool
from kms.cluster import VERSION
from kms.config import load as load_config
from tests.faults import FaultInjector
from tests.postgres import PostgresCluster
from tests.server.conftest import (
    Server,
    cluster_status,
    create_credential,
    error_code,
    run_server,
    start_serve,
    until,
    write_server_config,
)

# Its store is a PostgreSQL database of its own whatever HSMPOOL_TEST_DATABASE says:
# the same test on both passes (scripts/test.sh runs it in the main one).
pytestmark = pytest.mark.own_database


@pytest.fixture(scope="module")
def pg_config(token_dir: Path, tmp_path_factory: pytest.TempPathFactory,
              postgres: PostgresCluster) -> Path:
    name = f"nodes_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/{name}"
    cfg = write_server_config(tmp_path_factory.mktemp("pgnodes"), token_dir, {"pg": [3, 4]})
    text = re.sub(r'^database = ".*"$', f'database = "{url}"', cfg.read_text(), flags=re.M)
    cfg.write_text(text)
    return cfg


@pytest.fixture(scope="module")
def nodes(pg_config: Path) -> Iterator[list[Server]]:
    admin = create_credential(pg_config, "pg", "admin")
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(run_server(pg_config, workers=w)) for w in (1, 2)]
        for srv in servers:
            srv.creds["admin"] = admin
        yield servers



def test_a_key_made_on_one_node_works_on_the_other(nodes: list[Server]) -> None:
    a, b = (srv.client(srv.creds["admin"]) for srv in nodes)
    key = a.create_key(Description="on node a")["KeyMetadata"]["KeyId"]
    blob = a.encrypt(KeyId=key, Plaintext=b"across nodes")["CiphertextBlob"]
    until(lambda: b.decrypt(CiphertextBlob=blob)["Plaintext"] == b"across nodes")
    a.create_alias(AliasName=f"alias/pg-{uuid.uuid4().hex[:8]}", TargetKeyId=key)
    a.disable_key(KeyId=key)
    seen = until(lambda: error_code(lambda: b.encrypt(KeyId=key, Plaintext=b"x"))
                  == "DisabledException")
    assert seen < 1.0
    a.enable_key(KeyId=key)
    until(lambda: b.encrypt(KeyId=key, Plaintext=b"x")["KeyId"].endswith(key))
    v = b.rotate_key_on_demand(KeyId=key)
    assert v["KeyId"] == key
    rotations = a.list_key_rotations(KeyId=key)["Rotations"]
    assert len(rotations) == 1
    a.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    until(lambda: b.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion")


def test_secrets_and_credentials_across_nodes(nodes: list[Server], pg_config: Path) -> None:
    a, b = (srv.client(srv.creds["admin"], service="secretsmanager") for srv in nodes)
    name = f"pg/{uuid.uuid4().hex[:8]}"
    a.create_secret(Name=name, SecretString="one")
    until(lambda: b.get_secret_value(SecretId=name)["SecretString"] == "one")
    b.put_secret_value(SecretId=name, SecretString="two")
    until(lambda: a.get_secret_value(SecretId=name)["SecretString"] == "two")
    # A credential made now (another process) is honoured by both nodes.
    cred = create_credential(pg_config, "pg", f"late-{uuid.uuid4().hex[:6]}")
    for srv in nodes:
        c = srv.client(cred, service="secretsmanager")
        until(lambda c=c: c.get_secret_value(SecretId=name)["SecretString"] == "two")


def test_a_key_disabled_on_one_node_is_refused_by_the_other_at_once(
        nodes: list[Server]) -> None:
    """Pushed by LISTEN/NOTIFY: measured (printed), bounded at 3 s per round (the fallback
    poll would take up to 5 s)."""
    a, b = (srv.client(srv.creds["admin"]) for srv in nodes)
    key = a.create_key(Description="notify")["KeyMetadata"]["KeyId"]
    until(lambda: b.encrypt(KeyId=key, Plaintext=b"x")["KeyId"].endswith(key), 3.0)
    seen = []
    for _ in range(5):
        a.disable_key(KeyId=key)
        seen.append(until(lambda: error_code(lambda: b.encrypt(KeyId=key, Plaintext=b"x"))
                           == "DisabledException", 3.0))
        a.enable_key(KeyId=key)
        until(lambda: b.encrypt(KeyId=key, Plaintext=b"x")["KeyId"].endswith(key), 3.0)
    ms = sorted(round(t * 1000, 1) for t in seen)
    print(f"node b refused Encrypt after node a's DisableKey returned, ms: {ms}")


def test_cluster_status_shows_both_nodes(nodes: list[Server], pg_config: Path) -> None:
    doc = cluster_status(pg_config)
    by_port = {int(n["NodeId"].rsplit(":", 1)[1]): n for n in doc["Nodes"]}
    assert set(by_port) >= {srv.port for srv in nodes}
    for srv, workers in zip(nodes, (1, 2), strict=True):
        node = by_port[srv.port]
        assert (node["Address"], node["State"], node["Workers"], node["Version"]) == (
            srv.url, "up", workers, VERSION), node
        assert node["HeartbeatAgeSeconds"] <= 3 * node["HeartbeatIntervalSeconds"]



def test_two_nodes_started_at_once_make_one_domain_key(
        token_dir: Path, tmp_path: Path, postgres: PostgresCluster,
        faults: FaultInjector) -> None:
    """A new instance, two nodes starting together as if on two hosts (each its own
    TMPDIR, so the host-local lock does not serialise them), every call to the instance's
    token slowed so that their domain-key set-ups overlap: the store's advisory lock lets
    one make the keys and the other find them."""
    db = f"dk_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {db}")
    url = f"postgresql://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/{db}"
    instance = f"dk{uuid.uuid4().hex[:8]}"
    cfg = write_server_config(tmp_path, token_dir, {instance: [7]})
    cfg.write_text(re.sub(r'^database = ".*"$', f'database = "{url}"', cfg.read_text(),
                          flags=re.M))
    faults.fail("hsmpool-7", "hang", hang_ms=40)
    runs = []
    try:
        for host in ("a", "b"):
            tmp = tmp_path / f"host-{host}"
            tmp.mkdir()
            runs.append(start_serve(["--port", "0", "--workers", "1"],
                                    tmp_path / f"node-{host}.log", config=cfg,
                                    env={"TMPDIR": str(tmp)}))
        for run in runs:
            run.wait_for("hsmpool: serving AWS KMS on ")
    finally:
        faults.heal()
        for run in runs:
            run.stop()
    with Pool.open(load_config(cfg)[0]) as pool:  # several keys on the token: ConfigError
        assert set(pool.instance(instance).kek_ids) == {"kek", "swkek"}


def _store_statements(srv: Server) -> int:
    status, _, body = srv.get("/metrics")
    assert status == 200
    return sum(int(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("hsmpool_store_statements_total{"))


def test_a_warm_encrypt_asks_the_store_nothing(nodes: list[Server]) -> None:
    """Round trips to PostgreSQL per Encrypt on a warm cache (the store's statement counter,
    in /metrics): none; the few seen over the run are the 5 s safety poll and the audit
    checkpoints of the scheduler."""
    srv = nodes[0]  # one worker: its /metrics counts are live
    kms = srv.client(srv.creds["admin"])
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    time.sleep(0.3)  # the notification of our own commit drops the caches: let it come
    kms.encrypt(KeyId=key, Plaintext=b"warm")
    n = 200
    before = _store_statements(srv)
    for _ in range(n):
        kms.encrypt(KeyId=key, Plaintext=b"x")
    spent = _store_statements(srv) - before
    print(f"{spent} store statements during {n} warm Encrypts ({spent / n:.3f} per request)")
    assert spent < n / 10, spent
