"""Every acknowledged change of state has its audit record, even across SIGKILL.

A real two-worker ``hsmpool serve`` under a concurrent boto3 load of CreateKey,
CreateAlias, RotateKeyOnDemand, DisableKey/EnableKey and TagResource is killed (SIGKILL to
its whole process group) at a random moment, five times, and restarted on the same store
and audit directory. Afterwards every acknowledged call has its record (action, key, "ok")
in some worker's audit segment, and ``hsmpool audit verify`` passes.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from tests.server.conftest import (
    HSMPOOL,
    Server,
    create_credential,
    kill_group,
    run_server,
)

CRASHES = 5
THREADS = 4


def _audit_rows(audit_dir: Path) -> list[tuple[str, str | None, str | None, str]]:
    rows = []
    for db in sorted(audit_dir.glob("audit-*.db")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows += con.execute(
                "SELECT action, key_id, key_version, result FROM audit").fetchall()
        finally:
            con.close()
    return rows


class Loader:
    def __init__(self, server: Server, seed: int) -> None:
        cred = server.creds["admin"]
        self.client = server.client(cred, read_timeout=20, connect_timeout=5,
                                    max_pool_connections=THREADS + 2)
        self.rng = random.Random(seed)
        self.acks: list[tuple[str, str]] = []  # (action, key id) acknowledged by the server
        self.keys: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def ack(self, action: str, key_id: str) -> None:
        with self.lock:
            self.acks.append((action, key_id))

    def step(self, i: int) -> None:
        c = self.client
        with self.lock:
            keys = list(self.keys)
        kind = i % 5 if keys else 0
        if kind == 0:
            kid = c.create_key(Description=f"crash-{i}")["KeyMetadata"]["KeyId"]
            self.ack("kms:CreateKey", kid)
            with self.lock:
                self.keys.append(kid)
            return
        kid = keys[self.rng.randrange(len(keys))]
        if kind == 1:
            c.create_alias(AliasName=f"alias/crash-{os.getpid()}-{i}-{self.rng.random():.6f}",
                           TargetKeyId=kid)
            self.ack("kms:CreateAlias", kid)
        elif kind == 2:
            c.rotate_key_on_demand(KeyId=kid)
            self.ack("kms:RotateKeyOnDemand", kid)
        elif kind == 3:
            c.disable_key(KeyId=kid)
            self.ack("kms:DisableKey", kid)
            c.enable_key(KeyId=kid)
            self.ack("kms:EnableKey", kid)
        else:
            c.tag_resource(KeyId=kid, Tags=[{"TagKey": "n", "TagValue": str(i)}])
            self.ack("kms:TagResource", kid)

    def run(self, k: int) -> None:
        i = k
        while not self.stop.is_set():
            try:
                self.step(i)
            except (ClientError, BotoCoreError):
                # The server died under the request, or answered "not yet" while it was
                # restarting: not acknowledged, nothing is claimed.
                time.sleep(0.05)
            i += THREADS



def test_sigkill_keeps_the_audit_record_of_every_acknowledged_change(
        crash_config: Path) -> None:
    admin = create_credential(crash_config, "crash", "admin")
    audit_dir = crash_config.parent / "audit"
    rng = random.Random(20261204)
    all_acks: list[tuple[str, str]] = []
    for crash in range(CRASHES):
        with run_server(crash_config, workers=2) as srv:
            srv.creds["admin"] = admin
            loader = Loader(srv, crash)
            with ThreadPoolExecutor(THREADS) as pool:
                futures = [pool.submit(loader.run, k) for k in range(THREADS)]
                time.sleep(1.0 + 2.0 * rng.random())
                kill_group(srv)  # mid-load, the workers with it
                loader.stop.set()
                for f in futures:
                    f.result(timeout=120)
            all_acks += loader.acks
    assert len(all_acks) > 50, len(all_acks)  # the load really ran

    rows = _audit_rows(audit_dir)
    recorded: Counter[tuple[str, str | None]] = Counter(
        (action, key_id) for action, key_id, _, result in rows if result == "ok")
    acked: Counter[tuple[str, str]] = Counter(all_acks)
    missing = {k: n - recorded[k] for k, n in acked.items() if recorded[k] < n}
    assert not missing, f"{sum(missing.values())} acknowledged changes without a record: " \
        f"{list(missing.items())[:5]}"

    out = subprocess.run([str(HSMPOOL), "audit", "verify", "--dir", str(audit_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def test_durable_actions_run_off_the_event_loop() -> None:
    """A change of state waits for the audit trail's durable commit (and the store's):
    the server must run it on its thread pool, never on the event loop."""
    from kms.api.aws_kms import BLOCKING, OPERATIONS
    from kms.service import DURABLE_ACTIONS

    served = {"kms:" + op for op in OPERATIONS}
    durable_ops = {a[len("kms:"):] for a in DURABLE_ACTIONS & served}
    assert durable_ops, DURABLE_ACTIONS
    assert durable_ops <= BLOCKING, durable_ops - BLOCKING
