"""The nodes of a cluster as the store sees them: heartbeats and ``hsmpool cluster status``.

Every ``hsmpool serve`` (a *node*: one row, whatever its number of workers) writes its row
of the store's ``nodes`` table (:class:`kms.store.NodeRecord`) when it starts, every
:data:`HEARTBEAT_INTERVAL` seconds and whenever its number of serving workers changes, from
a thread of the process that serves (one worker) or supervises (several). A clean stop
writes ``stopped``. The node id is ``<hostname>:<port>``, so a node restarted on the same
address keeps its row. A heartbeat is no metadata change: on PostgreSQL it moves no change
token (no cache is dropped for it); on SQLite every commit is seen by the other processes
of the file, so their caches are refilled once per beat.

:func:`node_status` says of each row: ``up``, ``stale`` (silent for more than
:data:`STALE_BEATS` of its own intervals: killed, frozen, or cut off from the store) or
``stopped``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from kms.store.interface import MetadataStore, NodeRecord
from kms.version import VERSION

log = logging.getLogger("hsmpool.server")

HEARTBEAT_INTERVAL: Final = 5.0  # seconds
STALE_BEATS: Final = 3  # a node silent for more beats than this is stale
_WATCH: Final = 0.2  # seconds: how often the beating thread looks at the worker count


def node_id(port: int, hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{port}"


class Heartbeat:
    """Writes this node's row now and then from a thread (see the module docstring)."""

    def __init__(self, store: MetadataStore, *, port: int, address: str,
                 workers: Callable[[], int], interval: float = HEARTBEAT_INTERVAL,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self._workers = workers
        self._now = now
        t = now()
        self.record = NodeRecord(
            node_id=node_id(port), hostname=socket.gethostname(), address=address,
            version=VERSION, pid=os.getpid(), started=t, heartbeat=t, beat_interval=interval,
            workers=workers())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self, *, stopped: bool = False) -> bool:
        """Write the row now; False (logged once per outage) if the store refused."""
        t = self._now()
        self.record = replace(self.record, heartbeat=t,
                              workers=0 if stopped else self._workers(),
                              stopped=t if stopped else None)
        try:
            self.store.put_node(self.record)
        except Exception as exc:  # noqa: BLE001 - a store outage must not stop the node
            if not self._failing:
                log.warning("node %s: heartbeat not written (%s: %s); retrying",
                            self.record.node_id, type(exc).__name__, exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("node %s: heartbeats written again", self.record.node_id)
        self._failing = False
        return True

    def start(self) -> None:
        """Beat now, then from a thread until :meth:`stop`."""
        self.beat()

        def loop() -> None:
            last = time.monotonic()
            while not self._stop.wait(_WATCH):
                if self._workers() != self.record.workers or \
                        time.monotonic() - last >= self.record.beat_interval:
                    self.beat()
                    last = time.monotonic()

        self._thread = threading.Thread(target=loop, name="kms-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and record a clean stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.beat(stopped=True)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: NodeRecord
    age: float  # seconds since its last heartbeat
    state: str  # "up", "stale" or "stopped"


def node_status(nodes: Sequence[NodeRecord], now: float) -> list[NodeStatus]:
    """Each node's state at ``now`` (see the module docstring)."""
    out = []
    for n in nodes:
        age = max(0.0, now - n.heartbeat)
        if n.stopped is not None:
            state = "stopped"
        elif age > STALE_BEATS * n.beat_interval:
            state = "stale"
        else:
            state = "up"
        out.append(NodeStatus(n, age, state))
    return out
