"""Node heartbeats (kms/cluster.py) on a real store (tests/database.py), and the stale rule,
with an injected clock."""

from __future__ import annotations

import time
from pathlib import Path

from kms.cluster import STALE_BEATS, VERSION, Heartbeat, node_status
from kms.store import open_store
from tests.database import database_for


def test_a_heartbeat_writes_one_row_follows_the_workers_and_records_a_stop(
        tmp_path: Path) -> None:
    store = open_store(database_for(tmp_path / "kms.db"))
    workers = [0]
    clock = [1000.0]
    beat = Heartbeat(store, port=8443, address="http://127.0.0.1:8443",
                     workers=lambda: workers[0], now=lambda: clock[0])
    try:
        beat.start()
        (row,) = store.list_nodes()
        assert (row.node_id.endswith(":8443"), row.address, row.version, row.workers,
                row.started, row.heartbeat, row.stopped) == (
            True, "http://127.0.0.1:8443", VERSION, 0, 1000.0, 1000.0, None)
        clock[0] = 1001.0
        workers[0] = 2  # the workers are ready: a beat follows without waiting an interval
        t0 = time.monotonic()
        while store.list_nodes()[0].workers != 2:
            assert time.monotonic() - t0 < 10, "the worker count was never written"
            time.sleep(0.05)
        (row,) = store.list_nodes()
        assert (row.heartbeat, row.started) == (1001.0, 1000.0)
        clock[0] = 1002.0
    finally:
        beat.stop()
    (row,) = store.list_nodes()
    assert (row.workers, row.stopped, row.heartbeat) == (0, 1002.0, 1002.0)
    assert [s.state for s in node_status([row], 5000.0)] == ["stopped"]
    store.close()


def test_a_node_silent_for_more_than_three_beats_is_stale(tmp_path: Path) -> None:
    store = open_store(database_for(tmp_path / "kms.db"))
    beat = Heartbeat(store, port=1, address="a", workers=lambda: 1, interval=5.0,
                     now=lambda: 100.0)
    beat.beat()
    (row,) = store.list_nodes()
    limit = 100.0 + STALE_BEATS * 5.0
    states = [s.state for t in (100.0, limit, limit + 0.1) for s in node_status([row], t)]
    assert states == ["up", "up", "stale"]
    assert node_status([row], 90.0)[0].age == 0.0  # a clock behind the beat: no negative age
    store.close()
