"""A node killed with SIGKILL under load (issue 10): three ``hsmpool serve`` nodes, one worker
each, on one PostgreSQL database; a few boto3 threads send Encrypt, Decrypt,
GenerateDataKey, CreateKey and CreateAlias round-robin over the nodes, failing over to the
next node when a connection fails (as a client behind a load balancer would); one node is
killed mid-run. No request fails once retried, and everything acknowledged (keys, aliases,
ciphertexts, data keys) is there on both surviving nodes afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.postgres import PostgresCluster
from tests.server.conftest import Cred, Server, create_credential, run_server, write_server_config

# Its store is a PostgreSQL database of its own whatever HSMPOOL_TEST_DATABASE says:
# the same test on both passes (scripts/test.sh runs it in the main one).
pytestmark = pytest.mark.own_database

THREADS = 4
BEFORE_KILL = 2.5  # seconds of load before the kill, and after it
AFTER_KILL = 3.0


@pytest.fixture
def three_nodes(token_dir: Path, tmp_path: Path,
                postgres: PostgresCluster) -> Iterator[tuple[list[Server], Cred]]:
    name = f"kill_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/{name}"
    cfg = write_server_config(tmp_path, token_dir, {"kill": [5]})
    cfg.write_text(re.sub(r'^database = ".*"$', f'database = "{url}"', cfg.read_text(),
                          flags=re.M))
    admin = create_credential(cfg, "kill", "admin")
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_server(cfg)) for _ in range(3)], admin


class _Failover:
    """One client per node (no retries of botocore's own); a call goes to the next node in
    turn and, if its connection fails or it answers a retryable 503, to the one after."""

    def __init__(self, nodes: list[Server], cred: Cred, start: int) -> None:
        self.clients = [srv.client(cred, connect_timeout=2, read_timeout=15) for srv in nodes]
        self.turn = start
        self.failovers = 0

    def call(self, op: str, **params: Any) -> tuple[dict[str, Any], int]:
        """The answer and how many attempts it took (at most one per node)."""
        last: Exception | None = None
        for attempt in range(len(self.clients)):
            client = self.clients[self.turn % len(self.clients)]
            self.turn += 1
            try:
                return getattr(client, op)(**params), attempt + 1
            except BotoCoreError as exc:  # connection refused, reset, timed out
                last = exc
            except ClientError as exc:
                if exc.response["ResponseMetadata"]["HTTPStatusCode"] != 503:
                    raise
                last = exc
            self.failovers += 1
        assert last is not None
        raise last


@dataclass
class _Acked:
    keys: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    ciphertexts: list[tuple[bytes, bytes]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)


def _load(client: _Failover, acked: _Acked, stop: threading.Event, tag: str) -> None:
    """CreateKey, CreateAlias, Encrypt, Decrypt, GenerateDataKey in turn until ``stop``."""
    mine: list[str] = []
    i = 0
    while not stop.is_set():
        i += 1
        step = i % 5
        try:
            if step == 1 or not mine:
                key = client.call("create_key")[0]["KeyMetadata"]["KeyId"]
                mine.append(key)
                acked.keys.append(key)
                op = "CreateKey"
            elif step == 2:
                op = "CreateAlias"
                alias = f"alias/kill-{tag}-{i}"
                try:
                    _, attempts = client.call("create_alias", AliasName=alias,
                                              TargetKeyId=mine[-1])
                except ClientError as exc:
                    # A retry after a connection lost once the first attempt committed: the
                    # alias is ours if it names our key.
                    if exc.response["Error"]["Code"] != "AlreadyExistsException":
                        raise
                    got = client.call("describe_key", KeyId=alias)[0]
                    assert got["KeyMetadata"]["KeyId"] == mine[-1], alias
                acked.aliases[alias] = mine[-1]
            elif step == 3:
                op = "Encrypt"
                pt = f"{tag} {i}".encode()
                blob = client.call("encrypt", KeyId=mine[-1], Plaintext=pt)[0]
                acked.ciphertexts.append((blob["CiphertextBlob"], pt))
            elif step == 4:
                op = "Decrypt"
                blob, pt = acked.ciphertexts[-1] if acked.ciphertexts else (b"", b"")
                if blob:
                    got_pt = client.call("decrypt", CiphertextBlob=blob)[0]["Plaintext"]
                    assert got_pt == pt
            else:
                op = "GenerateDataKey"
                dk = client.call("generate_data_key", KeyId=mine[-1], KeySpec="AES_256")[0]
                acked.ciphertexts.append((dk["CiphertextBlob"], dk["Plaintext"]))
            acked.ops[op] = acked.ops.get(op, 0) + 1
        except (BotoCoreError, ClientError, AssertionError) as exc:
            acked.failures.append(f"{type(exc).__name__}: {exc}")


def _all(nodes: list[Server], cred: Cred, check: Callable[[Any], None]) -> None:
    for srv in nodes:
        check(srv.client(cred))


def test_a_node_killed_under_load_loses_nothing_acknowledged(
        three_nodes: tuple[list[Server], Cred]) -> None:
    nodes, admin = three_nodes
    acked = _Acked()
    stop = threading.Event()
    clients = [_Failover(nodes, admin, start=t) for t in range(THREADS)]
    threads = [threading.Thread(target=_load, args=(c, acked, stop, f"t{n}"))
               for n, c in enumerate(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(BEFORE_KILL)
    victim = nodes[1]
    before = sum(acked.ops.values())
    os.kill(victim.proc.pid, signal.SIGKILL)  # one worker: the process that serves
    victim.proc.wait(timeout=30)
    time.sleep(AFTER_KILL)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    took = time.monotonic() - t0
    total = sum(acked.ops.values())
    failovers = sum(c.failovers for c in clients)
    print(f"{total} requests in {took:.1f} s over 3 nodes ({before} before the kill), "
          f"{failovers} failed over to another node; by operation: {acked.ops}")
    assert acked.failures == []
    assert total > before and acked.keys and acked.aliases and acked.ciphertexts
    assert failovers > 0  # the victim was in the rotation after its death

    survivors = [srv for srv in nodes if srv is not victim]
    t0 = time.monotonic()

    def check(kms: Any) -> None:
        listed = set()
        for page in kms.get_paginator("list_keys").paginate():
            listed |= {k["KeyId"] for k in page["Keys"]}
        assert set(acked.keys) <= listed
        aliases = {}
        for page in kms.get_paginator("list_aliases").paginate():
            aliases |= {a["AliasName"]: a.get("TargetKeyId") for a in page["Aliases"]}
        assert {a: aliases.get(a) for a in acked.aliases} == acked.aliases
        for blob, pt in acked.ciphertexts:
            assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == pt

    _all(survivors, admin, check)
    print(f"checked {len(acked.keys)} keys, {len(acked.aliases)} aliases and "
          f"{len(acked.ciphertexts)} ciphertexts on both survivors in "
          f"{time.monotonic() - t0:.1f} s")
    for srv in nodes:  # the victim's log too, up to its death: no request was a 500
        assert "Traceback" not in srv.log_text(), srv.log_text()
