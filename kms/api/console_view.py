"""What the console shows of the server as a whole: tokens, instances, request rates, and
their recent history.

Figures cover every worker: this worker's live state plus the other workers' latest
snapshots (the files :mod:`kms.api.metrics` publishes once a second), added up as
``/metrics`` adds them: counters over every worker that ever wrote, gauges and states over
the workers alive now. A token's state is the worst any live worker sees (each worker's
pool has its own breaker); ``workers_healthy`` says in how many it serves. Latency
percentiles are each worker's since its start: p50 averaged by operations, p99 the largest.

:class:`History` samples those figures once a second (the metrics tick, or the console's own
timer in a one-worker server) and keeps the last :data:`KEEP` samples: operations and
errors per second, ejections and readmissions as events, requests per second by front end
and operation. Each worker keeps its own history of the whole server, so whichever worker
answers the console shows the same picture (from the moment that worker started).

Nothing here holds key material or secrets: token names, labels, states and counts.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kms.api.metrics import STALE_AFTER

if TYPE_CHECKING:
    from kms.api.metrics import Metrics
    from kms.service import Kms

KEEP: Final = 300  # samples (seconds) of history
RATE_WINDOW: Final = 10.0  # seconds over which rates are given
MAX_EVENTS: Final = 200
_WORST: Final = {"missing": 4, "closed": 3, "ejected": 2, "healthy": 0}


@dataclass(slots=True)
class TokenFigures:
    name: str
    label: str
    instances: tuple[str, ...]
    state: str
    held: bool
    workers: int
    workers_healthy: int
    in_flight: int
    ops: int
    errors: int
    ejections: int
    p50_ms: float
    p99_ms: float


@dataclass(slots=True)
class Sample:
    time: float
    tokens: dict[str, tuple[str, int, int, int]]  # name -> (state, ops, errors, ejections)
    calls: dict[tuple[str, str, str], tuple[int, int]]  # (fe, instance, op) -> (ok, failed)


@dataclass(slots=True)
class Event:
    time: float
    token: str
    what: str  # "ejected", "ejected by an operator", "readmitted", "missing"


@dataclass(slots=True)
class ServerState:
    """Every worker's figures at one moment."""

    time: float
    tokens: dict[str, TokenFigures]
    calls: dict[tuple[str, str, str], tuple[int, int]]
    workers: int


class ServerView:
    """Reads the whole server's state (see the module docstring)."""

    def __init__(self, kms: Kms, metrics: Metrics, *, now: Callable[[], float] = time.time
                 ) -> None:
        self.kms = kms
        self.metrics = metrics
        self.now = now
        self._labels = {name: s.label for name, s in kms.token_stats().items()}
        parts = kms.partitions()
        owners: defaultdict[str, list[str]] = defaultdict(list)
        for inst, tokens in parts.items():
            for t in tokens:
                owners[t].append(inst)
        self.partitions = parts
        self._owners = {t: tuple(sorted(i)) for t, i in owners.items()}

    def state(self) -> ServerState:
        now = self.now()
        own = self.metrics.snapshot(self.kms)
        share = self.metrics.share
        peers = share.peers(self.metrics.pid) if share is not None else []
        every = [own, *peers]
        alive = [own, *(p for p in peers if now - float(p.get("time", 0)) <= STALE_AFTER)]
        return ServerState(now, self._tokens(every, alive), _calls(every), len(alive))

    def _tokens(self, every: list[dict[str, Any]], alive: list[dict[str, Any]]
                ) -> dict[str, TokenFigures]:
        names = set(self._owners) | set(self._labels)
        out: dict[str, TokenFigures] = {}
        for name in sorted(names):
            states: list[str] = []
            held = False
            in_flight = 0
            p50_weighted = 0.0
            p99 = 0.0
            live_ops = 0
            for snap in alive:
                t = snap.get("tokens", {}).get(name)
                if t is None:
                    if name in snap.get("missing", ()):
                        states.append("missing")
                    continue
                states.append(str(t.get("state", "closed")))
                held = held or bool(t.get("held", False))
                in_flight += int(t.get("in_flight", 0))
                ops = int(t.get("ops", 0))
                live_ops += ops
                p50_weighted += float(t.get("p50_ms", 0.0)) * ops
                p99 = max(p99, float(t.get("p99_ms", 0.0)))
            ops_total = errors = ejections = 0
            for snap in every:
                t = snap.get("tokens", {}).get(name)
                if t is not None:
                    ops_total += int(t.get("ops", 0))
                    errors += int(t.get("errors", 0))
                    ejections += int(t.get("ejections", 0))
            state = max(states, key=lambda s: _WORST.get(s, 1)) if states else "missing"
            out[name] = TokenFigures(
                name, self._labels.get(name, ""), self._owners.get(name, ()), state, held,
                len(states), states.count("healthy"), in_flight, ops_total, errors, ejections,
                p50_weighted / live_ops if live_ops else 0.0, p99)
        return out


def _calls(snapshots: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], tuple[int, int]]:
    ok: defaultdict[tuple[str, str, str], int] = defaultdict(int)
    failed: defaultdict[tuple[str, str, str], int] = defaultdict(int)
    for snap in snapshots:
        for row in snap.get("calls", ()):
            try:
                fe, inst, op, result, n = row
            except ValueError:
                continue
            key = (str(fe), str(inst), str(op))
            if result == "ok":
                ok[key] += int(n)
            else:
                failed[key] += int(n)
    return {k: (ok.get(k, 0), failed.get(k, 0)) for k in set(ok) | set(failed)}


@dataclass
class History:
    """The last :data:`KEEP` samples of a :class:`ServerView` and the token events."""

    view: ServerView
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=KEEP))
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))

    def sample(self) -> ServerState:
        st = self.view.state()
        tokens = {n: (t.state, t.ops, t.errors, t.ejections) for n, t in st.tokens.items()}
        prev = self.samples[-1] if self.samples else None
        if prev is not None:
            for name, (state, _ops, _err, ejections) in tokens.items():
                was = prev.tokens.get(name)
                if was is None or was[0] == state and was[3] == ejections:
                    continue
                if state == "ejected" or ejections > was[3]:
                    held = st.tokens[name].held
                    self.events.append(Event(st.time, name, "ejected by an operator" if held
                                             else "ejected"))
                elif state == "healthy" and was[0] != "healthy":
                    self.events.append(Event(st.time, name, "readmitted"))
                elif state == "missing":
                    self.events.append(Event(st.time, name, "missing"))
        self.samples.append(Sample(st.time, tokens, st.calls))
        return st

    def _back(self, seconds: float, now: float) -> Sample | None:
        """The oldest sample no older than ``seconds`` before ``now``."""
        for s in self.samples:
            if now - s.time <= seconds + 0.5:
                return s
        return None

    def token_rates(self, st: ServerState) -> dict[str, tuple[float, float]]:
        """Per token over the last :data:`RATE_WINDOW`: (operations/s, error fraction)."""
        base = self._back(RATE_WINDOW, st.time)
        out: dict[str, tuple[float, float]] = {}
        for name, t in st.tokens.items():
            was = base.tokens.get(name) if base is not None else None
            dt = st.time - base.time if base is not None else 0.0
            if was is None or dt <= 0:
                out[name] = (0.0, 0.0)
                continue
            d_ops = max(t.ops - was[1], 0)
            d_err = max(t.errors - was[2], 0)
            out[name] = (d_ops / dt, d_err / d_ops if d_ops else 0.0)
        return out

    def call_rates(self, st: ServerState) -> dict[tuple[str, str, str], tuple[float, float]]:
        """Per (front end, instance, operation) over the last :data:`RATE_WINDOW`:
        (requests/s, failed requests/s)."""
        base = self._back(RATE_WINDOW, st.time)
        dt = st.time - base.time if base is not None else 0.0
        out: dict[tuple[str, str, str], tuple[float, float]] = {}
        for key, (ok, failed) in st.calls.items():
            was = base.calls.get(key, (0, 0)) if base is not None else (ok, failed)
            out[key] = ((ok - was[0]) / dt, (failed - was[1]) / dt) if dt > 0 else (0.0, 0.0)
        return out

    def token_series(self, names: Iterable[str], points: int = 120
                     ) -> dict[str, list[list[float]]]:
        """Per token, ``[seconds ago, operations/s, errors/s, 1 if ejected]`` per sample
        over the last ``points`` samples, oldest first."""
        recent = list(self.samples)[-(points + 1):]
        now = recent[-1].time if recent else 0.0
        out: dict[str, list[list[float]]] = {}
        for name in names:
            rows: list[list[float]] = []
            for a, b in zip(recent, recent[1:], strict=False):
                ta, tb = a.tokens.get(name), b.tokens.get(name)
                dt = b.time - a.time
                if ta is None or tb is None or dt <= 0:
                    continue
                rows.append([round(now - b.time, 1), round(max(tb[1] - ta[1], 0) / dt, 1),
                             round(max(tb[2] - ta[2], 0) / dt, 1),
                             0.0 if tb[0] == "healthy" else 1.0])
            out[name] = rows
        return out
