"""Tokens another worker of the server ejected are ejected in this worker too.

Each worker has its own pool and judges tokens by its own calls, so without this a hung
token costs every worker its first abandoned call, and ``/healthz`` answers "healthy" or
"ejected" depending on which worker took the connection. At each metrics tick (about once
a second) a worker reads its peers' published snapshots (:class:`kms.api.metrics
.MetricsShare`): a token that a live peer reports ``ejected`` after a new ejection (its
ejection count went up since this worker last acted on it) is ejected here as well
(:meth:`hsmpool.Pool.eject`). This worker's prober then probes it and readmits it once it
answers, exactly as after failures seen here; the peer's next ejection is acted on again.
Operators' holds travel separately (:mod:`kms.api.console_holds`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from kms.api.metrics import Metrics
    from kms.service import Kms

log = logging.getLogger("hsmpool.server")
STALE: Final = 5.0  # seconds: an older snapshot is a worker that has stopped


class PeerEjections:
    def __init__(self, kms: Kms, metrics: Metrics) -> None:
        self.kms = kms
        self.metrics = metrics
        self._acted: dict[tuple[int, str], int] = {}  # (peer pid, token) -> ejections

    def tick(self) -> None:
        share = self.metrics.share
        if share is None:
            return
        now = time.time()
        pool = self.kms.pool
        for peer in share.peers(self.metrics.pid):
            if now - float(peer.get("time", 0)) > STALE:
                continue
            tokens = peer.get("tokens")
            if not isinstance(tokens, dict):
                continue
            for name, t in tokens.items():
                if not isinstance(t, dict) or t.get("state") != "ejected" or t.get("held"):
                    continue
                n = t.get("ejections")
                key = (int(peer["pid"]), name)
                if not isinstance(n, int) or n <= self._acted.get(key, 0):
                    continue
                self._acted[key] = n
                if name in pool.members:
                    pool.eject(name, f"ejected: worker {key[0]} saw it fail")
