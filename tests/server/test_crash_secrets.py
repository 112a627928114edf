"""SIGKILL during PutSecretValue and during rotation loses no acknowledged version and
leaves the stages consistent.

A real two-worker ``hsmpool serve`` under a concurrent boto3 load of PutSecretValue (each
with its own ClientRequestToken and value) and RotateSecret (generic rotator) on a few
secrets is killed (SIGKILL to its process group) at a random moment, four times, and
restarted on the same store. Afterwards every acknowledged version exists and holds the
value it was written with; each secret has exactly one AWSCURRENT, at most one AWSPREVIOUS
and at most one AWSPENDING (a rotation cut off), and a new rotation finishes.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tests.server.conftest import Server, create_credential, kill_group, run_server

CRASHES = 4
THREADS = 4
# Paced (PACE per step and thread) over enough secrets that none gets 100 versions, beyond
# which deprecated versions are pruned by design: at most 4 / 0.03 s * 3.5 s * 4 runs / 24.
SECRETS = 24
PACE = 0.03


class Loader:
    def __init__(self, server: Server, names: list[str], seed: int) -> None:
        self.sm = server.client(server.creds["admin"], service="secretsmanager",
                                read_timeout=20, connect_timeout=5,
                                max_pool_connections=THREADS + 2)
        self.names = names
        self.rng = random.Random(seed)
        self.puts: list[tuple[str, str, str]] = []  # (secret, version, value) acknowledged
        self.rotations: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def step(self, i: int) -> None:
        name = self.names[i % len(self.names)]
        if i % 4 == 3:
            out = self.sm.rotate_secret(SecretId=name)
            with self.lock:
                self.rotations.append((name, out["VersionId"]))
            return
        token, value = uuid.uuid4().hex, f"value-{i}-{self.rng.random():.9f}"
        out = self.sm.put_secret_value(SecretId=name, ClientRequestToken=token,
                                       SecretString=value)
        assert out["VersionId"] == token
        with self.lock:
            self.puts.append((name, token, value))

    def run(self, k: int) -> None:
        i = k
        while not self.stop.is_set():
            try:
                self.step(i)
            except (ClientError, BotoCoreError):
                time.sleep(0.05)  # killed under the request, or restarting: not acknowledged
            time.sleep(PACE)
            i += THREADS



def _consistent(sm: Any, name: str) -> dict[str, list[str]]:
    stages = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
    labels = [s for v in stages.values() for s in v]
    assert labels.count("AWSCURRENT") == 1, stages
    assert labels.count("AWSPREVIOUS") <= 1, stages
    assert labels.count("AWSPENDING") <= 1, stages
    assert not any("AWSCURRENT" in v and "AWSPREVIOUS" in v for v in stages.values()), stages
    return dict(stages)


def test_sigkill_during_puts_and_rotations_loses_no_acknowledged_version(
        crash_config: Path) -> None:
    admin = create_credential(crash_config, "crash", "admin")
    rng = random.Random(20261206)
    names = [f"crash/{i}-{uuid.uuid4().hex[:6]}" for i in range(SECRETS)]
    puts: list[tuple[str, str, str]] = []
    rotations: list[tuple[str, str]] = []
    for crash in range(CRASHES):
        with run_server(crash_config, workers=2) as srv:
            srv.creds["admin"] = admin
            if crash == 0:
                sm = srv.client(admin, service="secretsmanager")
                for n in names:
                    sm.create_secret(Name=n, SecretString="initial", Tags=[
                        {"Key": "hsmpool:rotator", "Value": "generic"}])
            loader = Loader(srv, names, crash)
            with ThreadPoolExecutor(THREADS) as pool:
                futures = [pool.submit(loader.run, k) for k in range(THREADS)]
                time.sleep(1.5 + 2.0 * rng.random())
                kill_group(srv)
                loader.stop.set()
                for f in futures:
                    f.result(timeout=120)
            puts += loader.puts
            rotations += loader.rotations
    assert len(puts) > 40 and len(rotations) > 5, (len(puts), len(rotations))

    with run_server(crash_config, workers=1) as srv:
        sm = srv.client(admin, service="secretsmanager")
        for name, version, value in puts:
            got = sm.get_secret_value(SecretId=name, VersionId=version)
            assert got["SecretString"] == value, (name, version)
        for name, version in rotations:
            sm.get_secret_value(SecretId=name, VersionId=version)  # exists
        for name in names:
            _consistent(sm, name)
            new = sm.rotate_secret(SecretId=name)["VersionId"]  # a cut-off rotation resumes
            stages = _consistent(sm, name)
            assert stages[new] == ["AWSCURRENT"]
            assert "AWSPENDING" not in [s for v in stages.values() for s in v]
