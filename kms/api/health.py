"""``/livez``, ``/readyz`` and ``/healthz``: is this worker alive, may it take traffic.

* ``GET /livez``: 200 while the event loop runs (answered on the loop, touching nothing).
* ``GET /readyz``: 200 only if the store answers a trivial query and every instance has at
  least one healthy token; else 503 and a JSON body saying which part is not (of the store's
  failure only its kind, e.g. ``OperationalError``: the endpoint is unauthenticated, and
  the full reason, which may name hosts and users, is logged when an outage starts).
* ``GET /healthz``: as before (``ok``/``degraded``/``unavailable``, tokens, store).

The store is asked off the event loop, in a thread, by one probe at a time
(:class:`StoreProbe`): a check arriving while a probe runs waits for that probe. The answer
is bounded: the probe waits at most :data:`kms.service.STORE_PING_TIMEOUT` for a connection,
and a probe that hangs anyway (a server that stopped answering on an open connection) is
answered "no answer" after :data:`ANSWER_BOUND` seconds, while it goes on in its thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from kms.service import STORE_PING_TIMEOUT

if TYPE_CHECKING:
    from kms.service import Kms, ServiceHealth

#: Seconds after which a store check that has not answered counts as a failed one.
ANSWER_BOUND: Final = STORE_PING_TIMEOUT + 0.5

log = logging.getLogger("hsmpool.server")

Done = Callable[[str | None], None]


class StoreProbe:
    """The store check of one worker's health answers: one probe thread at a time."""

    def __init__(self, kms: Kms) -> None:
        self.kms = kms
        self._lock = threading.Lock()
        self._waiting: list[Done] | None = None  # the callers of the probe in flight
        self._last: str | None = None  # what the last probe found

    def check(self, loop: asyncio.AbstractEventLoop, done: Done) -> None:
        """Call ``done(None)`` (the store answered) or ``done(why not)`` on the loop's
        thread, within about :data:`ANSWER_BOUND` seconds."""
        answered = False

        def finish(error: str | None) -> None:
            nonlocal answered
            if not answered:
                answered = True
                timer.cancel()
                done(error)

        def from_probe(error: str | None) -> None:
            try:
                loop.call_soon_threadsafe(finish, error)
            except RuntimeError:  # the loop closed meanwhile (shutdown): nobody to answer
                pass

        timer = loop.call_later(ANSWER_BOUND, finish,
                                f"NoAnswer: the store gave none within {ANSWER_BOUND:g} s")
        with self._lock:
            start = self._waiting is None
            if self._waiting is None:
                self._waiting = []
            self._waiting.append(from_probe)
        if start:
            threading.Thread(target=self._probe, name="kms-store-probe", daemon=True).start()

    def _probe(self) -> None:
        error = self.kms.store_error()
        if (error is None) != (self._last is None):  # the start and the end of an outage
            if error is None:
                log.warning("the store answers again")
            else:
                log.warning("the store does not answer: %s", error)
        self._last = error
        with self._lock:
            waiting, self._waiting = self._waiting or [], None
        for tell in waiting:
            tell(error)


def healthz(h: ServiceHealth) -> tuple[int, bytes]:
    """``/healthz`` (unchanged): ok, degraded (a token left out at start) or unavailable."""
    tokens = dict(h.tokens)
    tokens.update((name, "missing") for name in h.missing)
    body: dict[str, object] = {
        "status": ("ok" if not h.missing else "degraded") if h.ok else "unavailable",
        "store": "ok" if h.store_ok else "error", "tokens": tokens,
        "healthy_tokens_per_instance": dict(h.healthy_per_instance)}
    if h.missing:  # tokens left out at start (degraded start): which, and why
        body["missing_tokens"] = dict(h.missing)
    return (200 if h.ok else 503), json.dumps(body).encode()


def readyz(h: ServiceHealth) -> tuple[int, bytes]:
    """``/readyz``: ready (200), or not ready (503) with what is wrong."""
    body: dict[str, object] = {
        "status": "ready" if h.ok else "not ready",
        "store": "ok" if h.store_ok else "error",
        "healthy_tokens_per_instance": dict(h.healthy_per_instance)}
    if h.store_error is not None:  # the kind only: the details (hosts, users) are logged
        body["store_error"] = h.store_error.split(":", 1)[0]
    if h.instances_without_tokens:
        body["instances_without_healthy_tokens"] = h.instances_without_tokens
    return (200 if h.ok else 503), json.dumps(body).encode()


def status_only(body: bytes) -> bytes:
    """A health answer without its details (token, instance and store names): what a caller
    outside ``[server] ops_networks`` is told."""
    return json.dumps({"status": json.loads(body)["status"]}).encode()


LIVE: Final = b'{"status":"live"}'
STARTING: Final = b'{"status":"starting"}'
