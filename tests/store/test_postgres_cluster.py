"""What PostgreSQL gives a cluster beyond the store contract (kms/store/postgres.py), on the
session's real PostgreSQL cluster: the push of changes (NOTIFY in each write transaction, a
LISTEN thread per store) and its use by the service (``Kms.start_watching``), with the
listener's outage through a TCP relay the test cuts; and the cluster-wide lock
(``exclusive``). Every wait is a bounded loop that fails if the awaited thing never comes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hsmpool import Pool
from kms import Kms
from kms.config import KmsSettings
from kms.errors import Disabled
from kms.store import AuditHead, NodeRecord
from kms.store.postgres import PostgresStore
from tests.conftest import pool_toml
from tests.postgres import PostgresCluster, TcpRelay
from tests.store.test_contract import _chain, _key

LIMIT = 10.0  # seconds: what "never" means here


def _until(check: Callable[[], bool], what: str) -> float:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < LIMIT, f"{what}: not within {LIMIT} s"
        time.sleep(0.01)
    return time.monotonic() - t0


def _database(pg: PostgresCluster, port: int | None = None) -> str:
    name = f"changes_{uuid.uuid4().hex[:12]}"
    pg.execute(f"CREATE DATABASE {name}")
    return f"postgresql://{pg.user}:{pg.password}@127.0.0.1:{port or pg.port}/{name}"


class Heard:
    """The calls of a watch's ``on_change``."""

    def __init__(self) -> None:
        self.calls: list[int | None] = []
        self.lock = threading.Lock()

    def __call__(self, token: int | None) -> None:
        with self.lock:
            self.calls.append(token)

    def since(self, n: int) -> list[int | None]:
        with self.lock:
            return self.calls[n:]


@pytest.fixture
def url(postgres: PostgresCluster) -> str:
    return _database(postgres)


def test_a_commit_elsewhere_is_pushed_with_its_change_token(url: str) -> None:
    writer, watcher = PostgresStore(url), PostgresStore(url)
    try:
        heard = Heard()
        watch = watcher.watch(heard)
        _until(lambda: watch.live and heard.since(0) == [None], "listening")
        t0 = time.monotonic()
        writer.insert_key(_key(), None)
        token = writer.change_token()
        _until(lambda: token in heard.since(1), "the commit's notification")
        print(f"a commit on another store object was heard {time.monotonic() - t0:.4f} s "
              "after the write began")
        # Heartbeats, leases, audit checkpoints and shipments are no change: no counter
        # moves (nobody drops a cache; every worker checkpoints its audit segment every 10 s).
        writer.put_node(NodeRecord(node_id="n:1", hostname="n", address="a", version="v",
                                   pid=1, started=1.0, heartbeat=1.0, beat_interval=5.0,
                                   workers=1))
        assert writer.try_lock("scheduler", "n:1", 60.0)
        writer.unlock("scheduler", "n:1")
        writer.checkpoint_audit("segment-1", False, 3, b"h" * 32, 1.0)
        writer.forget_audit_segment("segment-2")
        [rec] = _chain("segment-1", 1)
        assert writer.ship_audit("h:/a", "segment-1", [rec], AuditHead(1, rec.hash),
                                 1.0).head_shipped
        assert watcher.change_token() == token
        # A rolled-back transaction notifies nobody; the next commit is heard in order.
        with pytest.raises(RuntimeError), writer.transaction() as db:
            db.execute("DELETE FROM keys")
            raise RuntimeError("roll back")
        writer.insert_key(_key(), None)
        _until(lambda: token + 1 in heard.since(1), "the next commit")
        assert heard.since(1) == [token, token + 1]
    finally:
        writer.close()
        watcher.close()
    assert not watch.live


def test_the_listener_reconnects_and_says_changes_may_be_missed(
        postgres: PostgresCluster) -> None:
    relay = TcpRelay(postgres.host, postgres.port)
    url = _database(postgres, relay.port)
    direct = url.replace(f":{relay.port}/", f":{postgres.port}/")
    writer, watcher = PostgresStore(direct), PostgresStore(url)
    try:
        heard = Heard()
        watch = watcher.watch(heard)
        _until(lambda: watch.live, "listening")
        relay.cut()
        _until(lambda: not watch.live, "the listener noticing it lost the server")
        n = len(heard.since(0))
        writer.insert_key(_key(), None)  # while nobody listens: this one is not pushed
        relay.restore()
        took = _until(lambda: watch.live and None in heard.since(n), "listening again")
        print(f"the listener was listening again {took:.2f} s after the server came back")
        writer.insert_key(_key(), None)
        token = writer.change_token()
        _until(lambda: token in heard.since(n), "a commit after the reconnection")
    finally:
        writer.close()
        watcher.close()
        relay.close()


@pytest.fixture(scope="module")
def watch_pool(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    cfg = tmp_path_factory.mktemp("watch") / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"watch": [6]}))
    with Pool.open(cfg) as pool:
        yield pool


def test_a_service_drops_its_cache_when_another_node_disables_a_key(
        watch_pool: Pool, url: str) -> None:
    settings = KmsSettings(database=url, audit_dir=None)
    a = Kms(watch_pool, PostgresStore(url), settings)
    b = Kms(watch_pool, PostgresStore(url), settings)
    try:
        # b polls the change token only once an hour: only the push can tell it.
        b.watched_poll_interval = 3600.0
        assert b.start_watching()
        assert b._watch is not None
        _until(lambda: b._watch is not None and b._watch.live, "b listening")
        key = a.client("watch").create_key().key_id
        _until(lambda: _encrypts(b, key), "b using the new key")  # cached in b now
        a.client("watch").disable_key(key)
        took = _until(lambda: not _encrypts(b, key), "b refusing the disabled key")
        print(f"b refused Encrypt {took * 1000:.1f} ms after a's DisableKey returned")
    finally:
        a.close()
        b.close()


def _encrypts(kms: Kms, key: str) -> bool:
    try:
        kms.client("watch").encrypt(key, b"x")
    except Disabled:
        return False
    return True


def test_the_cluster_lock_is_held_by_one_store_at_a_time(url: str) -> None:
    a, b = PostgresStore(url), PostgresStore(url)
    try:
        inside = threading.Event()
        leave = threading.Event()

        def hold_on_b() -> None:
            with b.exclusive("domain-keys:x"):
                inside.set()
                leave.wait(LIMIT)

        with a.exclusive("domain-keys:x"):
            with b.exclusive("domain-keys:y"):  # another name: not blocked
                pass
            t = threading.Thread(target=hold_on_b)
            t.start()
            assert not inside.wait(0.5)  # b waits while a holds it
        assert inside.wait(LIMIT)  # and gets it once a let go
        leave.set()
        t.join(LIMIT)
        with a.exclusive("domain-keys:x"):  # released by b in turn
            pass
    finally:
        a.close()
        b.close()
