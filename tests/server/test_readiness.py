"""``/livez`` and ``/readyz`` (kms/api/health.py): a node whose PostgreSQL goes away is
alive but not ready, and says so at once; ready again when the store comes back. The store
is the session's real PostgreSQL cluster, reached through a TCP relay the test cuts (the
cluster itself stays up for the other tests)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmpool import Pool
from kms import Kms
from kms.api.app import KmsApp
from kms.config import KmsSettings
from kms.store import open_store
from tests.conftest import pool_toml
from tests.database import database_for
from tests.postgres import PostgresCluster, TcpRelay
from tests.server.conftest import Server, run_server, write_server_config


@pytest.fixture
def relayed_node(token_dir: Path, tmp_path: Path,
                 postgres: PostgresCluster) -> Iterator[tuple[Server, TcpRelay]]:
    """A one-worker node whose store is a fresh database reached through a relay."""
    name = f"ready_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {name}")
    relay = TcpRelay(postgres.host, postgres.port)
    url = f"postgresql://{postgres.user}:{postgres.password}@127.0.0.1:{relay.port}/{name}"
    cfg = write_server_config(tmp_path, token_dir, {"ready": [5]})
    cfg.write_text(re.sub(r'^database = ".*"$', f'database = "{url}"', cfg.read_text(),
                          flags=re.M))
    try:
        with run_server(cfg) as srv:
            yield srv, relay
    finally:
        relay.close()


def _get(srv: Server, path: str) -> tuple[int, dict[str, object], float]:
    t0 = time.monotonic()
    status, _, body = srv.get(path)
    return status, json.loads(body), time.monotonic() - t0


@pytest.mark.own_database  # PostgreSQL behind a relay, on both passes
def test_a_node_without_its_store_is_live_but_not_ready(
        relayed_node: tuple[Server, TcpRelay]) -> None:
    srv, relay = relayed_node
    status, doc, _ = _get(srv, "/readyz")
    assert (status, doc["status"], doc["store"]) == (200, "ready", "ok"), doc
    assert doc["healthy_tokens_per_instance"] == {"ready": 1}
    assert _get(srv, "/livez")[:2] == (200, {"status": "live"})

    relay.cut()  # PostgreSQL is gone, as this node sees it
    # The first check meets a pooled connection that fails at once; the next ones find
    # the pool empty and wait for a connection, at most the store probe's timeout.
    for attempt in (1, 2, 3):
        status, doc, took = _get(srv, "/readyz")
        print(f"/readyz with the store gone, check {attempt}: {status} in "
              f"{took * 1000:.0f} ms: {doc.get('store_error')}")
        assert (status, doc["status"], doc["store"]) == (503, "not ready", "error"), doc
        # Only the kind of failure: the endpoint is unauthenticated (the details are logged)
        assert str(doc["store_error"]).isidentifier(), doc
        assert "instances_without_healthy_tokens" not in doc  # the tokens are fine
    status, doc, took = _get(srv, "/livez")
    print(f"/livez with the store gone: {status} in {took * 1000:.1f} ms")
    assert (status, doc) == (200, {"status": "live"})
    status, doc, _ = _get(srv, "/healthz")  # unchanged: unavailable, store error
    assert (status, doc["status"], doc["store"]) == (503, "unavailable", "error"), doc
    assert f"port {relay.port} failed" in srv.log_text() or "the connection is lost" in \
        srv.log_text()  # the full reason, once: "the store does not answer: ..."
    assert srv.log_text().count("the store does not answer") == 1

    relay.restore()
    t0 = time.monotonic()
    while _get(srv, "/readyz")[0] != 200:
        assert time.monotonic() - t0 < 30, "not ready again 30 s after the store came back"
        time.sleep(0.1)
    print(f"/readyz 200 again {time.monotonic() - t0:.2f} s after the store came back")


def _serve(app: KmsApp, path: str) -> tuple[int, dict[str, object]]:
    """One GET through the application's door, on an event loop (as in a worker)."""

    async def ask() -> tuple[int, bytes]:
        answer: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        app.serve("GET", path, "", {}, b"", "127.0.0.1",
                  lambda status, out, *_: answer.set_result((status, out)))
        return await answer

    status, out = asyncio.run(ask())
    return status, json.loads(out)


def test_an_instance_without_a_healthy_token_is_not_ready(token_dir: Path,
                                                          tmp_path: Path) -> None:
    cfg = tmp_path / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"readya": [6], "readyb": [7]}))
    with Pool.open(cfg) as pool:
        db = database_for(tmp_path / "kms.db")
        kms = Kms(pool, open_store(db), KmsSettings(database=db, audit_dir=None))
        app = KmsApp(kms)
        try:
            assert _serve(app, "/readyz")[0] == 200
            kms.hold_token("t7")  # readyb's only token
            status, doc = _serve(app, "/readyz")
            assert (status, doc["status"], doc["store"]) == (503, "not ready", "ok"), doc
            assert doc["instances_without_healthy_tokens"] == ["readyb"]
            assert doc["healthy_tokens_per_instance"] == {"readya": 1, "readyb": 0}
            assert "store_error" not in doc
            assert _serve(app, "/livez") == (200, {"status": "live"})
            assert _serve(app, "/healthz")[0] == 503
        finally:
            kms.release_token("t7")
            kms.close()
