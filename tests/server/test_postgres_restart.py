"""PostgreSQL itself restarted under load: two ``hsmpool serve`` nodes (one worker each) on
one throw-away cluster of their own (the session's is shared by other tests), a boto3 load
of CreateKey, CreateAlias, Encrypt, Decrypt and DisableKey/EnableKey on both, and the
database stopped in the middle of it, held down :data:`DOWN` seconds and started again:
first ``pg_ctl stop -m fast`` (sessions ended, a checkpoint), then ``-m immediate`` (a
crash: the start replays the WAL). ``pg_ctl restart`` is that stop and start; the hold
gives a window in which the database is certainly down.

Checked: every failed request is a retryable 503 DependencyTimeoutException (the load
retries those, counted) and none takes longer than ``request_timeout`` + 10 %; a key each
node has cached is served (Encrypt and Decrypt) throughout the outage, within
``store_grace``; both nodes serve requests that need the store again within
:data:`RECOVERY_BOUND` of the start, without a restart of theirs, and their change
listeners are back on the database; a key disabled on node a is refused by node b within
:data:`VISIBLE_BOUND`; everything acknowledged is there afterwards on both nodes (keys in
their last acknowledged state, aliases, ciphertexts that decrypt); ``hsmpool audit verify``
passes for each node's trail.

The load holds its writes for :data:`QUIET` seconds before each stop (reads go on): a
commit's notification drops a node's whole cache, and a key not cached when the store goes
away is a 503 by design, so the cached keys are only those the nodes hold at that moment."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.postgres import PostgresCluster, available
from tests.postgres import cluster as postgres_cluster
from tests.server.conftest import (
    HSMPOOL,
    Cred,
    Server,
    create_credential,
    error_code,
    run_server,
    until,
    write_server_config,
)

# Its store is a PostgreSQL database of its own whatever HSMPOOL_TEST_DATABASE says:
# the same test on both passes (scripts/test.sh runs it in the main one).
pytestmark = pytest.mark.own_database

REQUEST_TIMEOUT = 3.0  # [server] request_timeout of both nodes, seconds
LATENCY_BOUND = REQUEST_TIMEOUT * 1.1
GRACE = 20  # [kms] store_grace, seconds: longer than an outage here
DOWN = 2.0  # seconds the database stays stopped in each phase
QUIET = 0.5  # seconds the load's writes pause before each stop
RECOVERY_BOUND = 10.0  # seconds from the database's start to each node serving again
VISIBLE_BOUND = 3.0  # seconds from node a's DisableKey to node b refusing the key
RETRY_FOR = 30.0  # seconds the load retries one request answered 503
THREADS_PER_NODE = 2
INSTANCE = "pgrestart"
RETRYABLE = ("DependencyTimeoutException", 503)


@dataclass
class _Attempt:
    start: float  # time.monotonic()
    took: float
    node: str
    op: str
    outcome: tuple[str, int]  # ("ok", 200), or the error code and HTTP status
    probe: bool = False  # a probe's, on its node's cached key


@dataclass
class _Record:
    """What the load and the probes saw, and what was acknowledged to them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    attempts: list[_Attempt] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retries: int = 0
    states: dict[str, str] = field(default_factory=dict)  # key -> last acknowledged state
    aliases: dict[str, str] = field(default_factory=dict)
    ciphertexts: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # key, blob, pt

    def note(self, attempt: _Attempt) -> None:
        with self.lock:
            self.attempts.append(attempt)


def _outcome(exc: ClientError) -> tuple[str, int]:
    return (str(exc.response["Error"]["Code"]),
            int(exc.response["ResponseMetadata"]["HTTPStatusCode"]))


def _once(rec: _Record, node: str, client: Any, op: str, *, probe: bool = False,
          **params: Any) -> Any:
    """One request, recorded (a ClientError or a transport error is raised)."""
    t0 = time.monotonic()
    try:
        out = getattr(client, op)(**params)
    except ClientError as exc:
        rec.note(_Attempt(t0, time.monotonic() - t0, node, op, _outcome(exc), probe))
        raise
    except BotoCoreError as exc:  # a refused connection, or no answer within read_timeout
        rec.note(_Attempt(t0, time.monotonic() - t0, node, op, (type(exc).__name__, 0),
                          probe))
        raise
    rec.note(_Attempt(t0, time.monotonic() - t0, node, op, ("ok", 200), probe))
    return out


def _retrying(rec: _Record, node: str, client: Any, op: str, **params: Any) -> Any:
    """A request sent again (after 0.1 s) while it is answered a retryable 503."""
    first = time.monotonic()
    while True:
        try:
            return _once(rec, node, client, op, **params)
        except ClientError as exc:
            if _outcome(exc) != RETRYABLE or time.monotonic() - first > RETRY_FOR:
                raise
            with rec.lock:
                rec.retries += 1
        time.sleep(0.1)


def _load(rec: _Record, node: str, client: Any, tag: str, stop: threading.Event,
          writes: threading.Event) -> None:
    """Cycles of CreateKey, CreateAlias, Encrypt, Decrypt, DisableKey (and, every other
    cycle, EnableKey) on the thread's own new key, until ``stop``. A write waits while
    ``writes`` is clear."""

    def write(op: str, **params: Any) -> Any:
        writes.wait()
        return _retrying(rec, node, client, op, **params)

    i = 0
    while not stop.is_set():
        i += 1
        try:
            key = write("create_key", Description=f"{tag} {i}")["KeyMetadata"]["KeyId"]
            rec.states[key] = "Enabled"
            alias = f"alias/restart-{tag}-{i}"
            try:
                write("create_alias", AliasName=alias, TargetKeyId=key)
            except ClientError as exc:
                # Sent again after a 503 whose attempt had committed: ours if it names our key.
                if _outcome(exc)[0] != "AlreadyExistsException":
                    raise
                got = _retrying(rec, node, client, "describe_key", KeyId=alias)
                assert got["KeyMetadata"]["KeyId"] == key, alias
            rec.aliases[alias] = key
            pt = f"{tag} {i}".encode()
            blob = _retrying(rec, node, client, "encrypt", KeyId=key,
                             Plaintext=pt)["CiphertextBlob"]
            rec.ciphertexts.append((key, blob, pt))
            got_pt = _retrying(rec, node, client, "decrypt", CiphertextBlob=blob)["Plaintext"]
            assert got_pt == pt, (tag, i)
            write("disable_key", KeyId=key)
            rec.states[key] = "Disabled"
            if i % 2:
                write("enable_key", KeyId=key)
                rec.states[key] = "Enabled"
        except (BotoCoreError, ClientError, AssertionError) as exc:
            rec.failures.append(f"{node} {tag}: {type(exc).__name__}: {exc}")
            time.sleep(0.1)


def _probe(rec: _Record, node: str, client: Any, key: str, blob: bytes,
           stop: threading.Event) -> None:
    """Encrypt and Decrypt of a key the node has cached, sent once each, until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(BotoCoreError, ClientError):
            _once(rec, node, client, "encrypt", KeyId=key, Plaintext=b"probe", probe=True)
        with contextlib.suppress(BotoCoreError, ClientError):
            _once(rec, node, client, "decrypt", CiphertextBlob=blob, probe=True)
        time.sleep(0.02)




def _listeners(pg: PostgresCluster, db: str) -> int:
    """Sessions on ``db`` whose last statement was the change listener's LISTEN."""
    with pg.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND query LIKE 'LISTEN hsmpool_changes%%'", (db,)).fetchone()
    return int(row[0])


@dataclass
class _Setup:
    pg: PostgresCluster
    db: str
    configs: list[Path]
    admin: Cred


@pytest.fixture
def setup(token_dir: Path, tmp_path: Path) -> Iterator[_Setup]:
    why = available()
    if why is not None:
        pytest.skip(why)
    with postgres_cluster() as pg:
        db = f"restart_{uuid.uuid4().hex[:10]}"
        pg.execute(f"CREATE DATABASE {db}")
        url = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{db}"
        configs = []
        for node in ("a", "b"):  # a configuration each: an audit trail each
            cfg = write_server_config(tmp_path / node, token_dir, {INSTANCE: [6]})
            text = re.sub(r'^database = ".*"$', f'database = "{url}"', cfg.read_text(),
                          flags=re.M)
            cfg.write_text(text + f"store_grace = {GRACE}\n"
                           f"[server]\nrequest_timeout = {REQUEST_TIMEOUT}\n")
            configs.append(cfg)
        yield _Setup(pg, db, configs, create_credential(configs[0], INSTANCE, "admin"))


def _client(srv: Server, cred: Cred) -> Any:
    return srv.client(cred, connect_timeout=2, read_timeout=LATENCY_BOUND + 2)


def test_postgres_restarted_under_load(setup: _Setup) -> None:
    pg, admin = setup.pg, setup.admin
    t_begin = time.monotonic()
    rec = _Record()
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(run_server(cfg)) for cfg in setup.configs]
        names = ["a", "b"]
        clients = [_client(srv, admin) for srv in nodes]
        # A key per node for the probes, cached there (Encrypt and Decrypt once the
        # notifications of the set-up's commits have come).
        warm = []
        for name, kms in zip(names, clients, strict=True):
            key = kms.create_key(Description=f"probe {name}")["KeyMetadata"]["KeyId"]
            warm.append((key, kms.encrypt(KeyId=key, Plaintext=b"probe")["CiphertextBlob"]))
        baseline = _listeners(pg, setup.db)
        assert baseline >= 2, baseline

        stop, writes, stop_probes = threading.Event(), threading.Event(), threading.Event()
        writes.set()
        threads = [threading.Thread(target=_load, args=(rec, name, _client(srv, admin),
                                                        f"{name}{t}", stop, writes))
                   for name, srv in zip(names, nodes, strict=True)
                   for t in range(THREADS_PER_NODE)]
        threads += [threading.Thread(target=_probe, args=(rec, name, _client(srv, admin),
                                                          key, blob, stop_probes))
                    for name, srv, (key, blob) in zip(names, nodes, warm, strict=True)]
        for t in threads:
            t.start()
        phases: list[dict[str, Any]] = []
        try:
            time.sleep(1.5)
            for mode in ("fast", "immediate"):
                writes.clear()
                time.sleep(QUIET)
                t_stop = time.monotonic()
                pg.down(mode)
                t_down = time.monotonic()
                writes.set()  # writes during the outage: 503s, sent again
                time.sleep(DOWN)
                t_start = time.monotonic()
                pg.up()
                t_up = time.monotonic()
                # Each node serves a request that needs the store again (ListKeys).
                recovered: dict[str, float] = {}
                while len(recovered) < len(nodes):
                    for name, kms in zip(names, clients, strict=True):
                        if name not in recovered and error_code(lambda n=name, k=kms: _once(
                                rec, n, k, "list_keys", Limit=1)) is None:
                            recovered[name] = time.monotonic() - t_up
                    assert time.monotonic() - t_up < RECOVERY_BOUND, \
                        f"{mode}: not serving again within {RECOVERY_BOUND} s: {recovered}"
                    time.sleep(0.05)
                until(lambda: _listeners(pg, setup.db) >= baseline,
                       RECOVERY_BOUND - (time.monotonic() - t_up),
                       f"{mode}: the change listeners back on the database")
                listen_at = time.monotonic() - t_up
                # Cross-node: a key node b has cached, disabled on node a (writes held, so
                # no other commit drops b's cache for it).
                writes.clear()
                a, b = clients
                key = a.create_key(Description=f"visible {mode}")["KeyMetadata"]["KeyId"]
                until(lambda k=key, c=b: c.encrypt(KeyId=k, Plaintext=b"x")["KeyId"]
                       .endswith(k), VISIBLE_BOUND, f"{mode}: node b using a new key")
                time.sleep(0.2)
                b.encrypt(KeyId=key, Plaintext=b"x")
                a.disable_key(KeyId=key)
                visible = until(lambda k=key, c=b: error_code(lambda: c.encrypt(
                    KeyId=k, Plaintext=b"x")) == "DisabledException",
                    VISIBLE_BOUND, f"{mode}: node a's DisableKey on node b")
                rec.states[key] = "Disabled"
                writes.set()
                phases.append({"mode": mode, "stop": t_stop, "down": t_down,
                               "start": t_start, "up": t_up, "recovered": recovered,
                               "listeners": listen_at, "visible": visible})
                time.sleep(1.0)  # load on the recovered nodes before the next phase
        finally:
            stop.set()
            writes.set()
            for t in threads[:-2]:
                t.join(timeout=RETRY_FOR + 10)
            stop_probes.set()
            for t in threads[-2:]:
                t.join(timeout=10)
        t_load = time.monotonic()

        # --- what was seen ------------------------------------------------------------
        attempts = rec.attempts
        failed = [x for x in attempts if x.outcome[0] != "ok"]
        for ph in phases:
            window = [x for x in attempts if ph["stop"] <= x.start < ph["up"]
                      + max(ph["recovered"].values())]
            worst = max((x.took for x in window), default=0.0)
            n503 = sum(x.outcome == RETRYABLE for x in window)
            probes = [x for x in attempts if x.probe and ph["down"] <= x.start
                      and x.start + x.took < ph["start"]]
            print(f"-m {ph['mode']}: stop took {ph['down'] - ph['stop']:.2f} s, start "
                  f"{ph['up'] - ph['start']:.2f} s; {len(window)} requests from the stop to "
                  f"recovery, {n503} of them 503, slowest {worst * 1000:.0f} ms; serving "
                  f"again after the start: " + ", ".join(
                      f"{n} {s:.2f} s" for n, s in ph["recovered"].items())
                  + f"; listeners back by {ph['listeners']:.2f} s; node a's DisableKey "
                  f"refused on node b after {ph['visible'] * 1000:.0f} ms; "
                  f"{len(probes)} Encrypt/Decrypt while down")
            assert n503 > 0, f"{ph['mode']}: the load never met the outage"
            ph["probes"] = probes
        print(f"{len(attempts)} requests, {len(failed)} failed "
              f"({sum(x.outcome == RETRYABLE for x in failed)} retryable 503s, {rec.retries} "
              f"sent again), slowest {max(x.took for x in attempts) * 1000:.0f} ms; "
              f"{len(rec.states)} keys, {len(rec.aliases)} aliases, "
              f"{len(rec.ciphertexts)} ciphertexts acknowledged")
        assert rec.failures == []
        # Failed requests: retryable 503s only (an alias sent again after a 503 that had
        # committed is AlreadyExists, checked by the load), none slower than the timeout.
        others = [x for x in failed if x.outcome != RETRYABLE
                  and x.outcome != ("AlreadyExistsException", 400)]
        assert others == []
        slow = [x for x in attempts if x.took > LATENCY_BOUND]
        assert slow == []
        # The probes' cached keys: served throughout each outage.
        for ph in phases:
            probes = ph["probes"]
            assert {x.node for x in probes} == set(names), ph["mode"]
            bad = [x for x in probes if x.outcome[0] != "ok"]
            assert bad == [], ph["mode"]

        # --- what was acknowledged ----------------------------------------------------
        t_check = time.monotonic()
        for name, kms in zip(names, clients, strict=True):
            listed: set[str] = set()
            for page in kms.get_paginator("list_keys").paginate():
                listed |= {k["KeyId"] for k in page["Keys"]}
            assert set(rec.states) <= listed, name
            for key, state in rec.states.items():
                got = kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"]
                assert got == state, (name, key)
            aliases: dict[str, Any] = {}
            for page in kms.get_paginator("list_aliases").paginate():
                aliases |= {x["AliasName"]: x.get("TargetKeyId") for x in page["Aliases"]}
            assert {x: aliases.get(x) for x in rec.aliases} == rec.aliases, name
            for key, blob, pt in rec.ciphertexts:
                if rec.states[key] == "Enabled":
                    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == pt, name
                else:
                    assert error_code(lambda bl=blob, c=kms: c.decrypt(CiphertextBlob=bl)) == \
                        "DisabledException", name
        a, b = clients
        disabled = {k for k, s in rec.states.items() if s == "Disabled"}
        for key in disabled:
            a.enable_key(KeyId=key)
        for key, blob, pt in rec.ciphertexts:
            if key in disabled:
                got = until(lambda bl=blob, p=pt: b.decrypt(CiphertextBlob=bl)["Plaintext"]
                             == p, VISIBLE_BOUND, "a key enabled on node a, on node b")
                assert got < VISIBLE_BOUND
        print(f"checked {len(rec.states)} keys, {len(rec.aliases)} aliases and "
              f"{len(rec.ciphertexts)} ciphertexts on both nodes in "
              f"{time.monotonic() - t_check:.1f} s")
        for srv in nodes:
            log = srv.log_text()
            assert "Traceback" not in log and "internal error" not in log, log
            assert "the metadata store answers again" in log, log
    for cfg in setup.configs:  # the nodes stopped: their trails closed
        out = subprocess.run([str(HSMPOOL), "--config", str(cfg), "audit", "verify"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        print(out.stdout.strip().splitlines()[-1])
    print(f"load {t_load - t_begin:.1f} s, whole test {time.monotonic() - t_begin:.1f} s")
