"""Prometheus metrics of the whole server, whichever worker answers the scrape.

Each worker counts its own requests (by operation and result, with latency histograms) in
plain dicts on its event loop: :meth:`Metrics.observe` is the only per-request cost (no
I/O, no lock). Once a second (:meth:`Metrics.start_publishing`) a worker of a multi-worker
server writes a snapshot of its counters, its pool's per-token counters and latency
histograms, its audit backlog and its process figures to ``worker-<pid>.json`` in the
server's state folder (0700; files 0600, replaced atomically; see
:class:`MetricsShare`). The worker answering ``/metrics`` renders its own live counters plus
every other worker's latest snapshot, summed:

* counters and histograms (requests, request latency, token operations, errors,
  ejections, token latency) are summed over every worker that ever wrote a snapshot, so a
  worker that died and was replaced keeps its counts in the totals (a counter never goes
  down while the server runs);
* gauges (token in-flight, audit backlog) are summed over the workers alive now (a
  snapshot newer than :data:`STALE_AFTER` seconds);
* per-worker series, labelled ``worker="<pid>"``: the token state as each worker's pool
  sees it, requests served, and the process figures (``process_resident_memory_bytes``,
  ``process_cpu_seconds_total``, ``process_open_fds``).

Another worker's counts are thus at most about a second old. A one-worker server renders its
own live state only.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from kms.version import VERSION

if TYPE_CHECKING:
    from kms.service import Kms

log = logging.getLogger("hsmpool.server")

BUCKETS: Final = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                  1.0, 2.5)
_STATES: Final = ("healthy", "ejected", "closed", "missing")
PUBLISH_INTERVAL: Final = 1.0
STALE_AFTER: Final = 5.0  # seconds: a snapshot older than this is from a worker gone


def process_figures() -> dict[str, float]:
    """This process's resident memory (bytes), CPU time (seconds) and open descriptors."""
    figures: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as fh:
            figures["rss"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    figures["cpu"] = t.user + t.system
    with contextlib.suppress(OSError):
        figures["fds"] = len(os.listdir("/proc/self/fd"))
    return figures


class MetricsShare:
    """The state folder of one running server: one snapshot file per worker."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def publish(self, pid: int, snapshot: Mapping[str, Any]) -> None:
        path = self.directory / f"worker-{pid}.json"
        tmp = self.directory / f".worker-{pid}.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(snapshot, separators=(",", ":")).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def peers(self, own_pid: int) -> list[dict[str, Any]]:
        """Every other worker's latest snapshot (unreadable files are skipped)."""
        out: list[dict[str, Any]] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return out
        for name in names:
            if not (name.startswith("worker-") and name.endswith(".json")) \
                    or name == f"worker-{own_pid}.json":
                continue
            try:
                doc = json.loads((self.directory / name).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("pid"), int):
                out.append(doc)
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = {}
        self.sums: defaultdict[str, float] = defaultdict(float)
        #: Requests by (front end, caller's instance or "-", operation, result): the
        #: console's request rates (not rendered in ``/metrics``).
        self.calls: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        #: Called on the event loop after each snapshot is published (the console's token
        #: history and operator holds), or by the console's own timer in a one-worker server.
        self.tick_hooks: list[Callable[[], None]] = []
        self.pid = os.getpid()
        #: The server's state folder (a multi-worker server); None: this worker alone.
        self.share: MetricsShare | None = None
        self._timer: asyncio.TimerHandle | None = None

    def observe(self, operation: str, result: str, seconds: float) -> None:
        self.requests[(operation, result)] += 1
        h = self.hist.get(operation)
        if h is None:
            h = self.hist[operation] = [0] * (len(BUCKETS) + 1)
        h[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[operation] += seconds

    def count(self, frontend: str, caller: str | None, operation: str, result: str) -> None:
        """One answered request, by front end and the instance of its caller
        (``"instance/name"``; None before authentication)."""
        instance = caller.partition("/")[0] if caller else "-"
        self.calls[(frontend, instance, operation, result)] += 1

    # --- snapshots ---------------------------------------------------------------------

    def snapshot(self, kms: Kms | None) -> dict[str, Any]:
        """This worker's state, as plain JSON data."""
        tokens: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        pending = 0
        statements: int | None = None
        if kms is not None:
            for name, s in kms.token_stats().items():
                hist, total = kms.token_latency(name, BUCKETS)
                tokens[name] = {"state": s.state, "in_flight": s.in_flight, "ops": s.ops,
                                "errors": s.errors, "ejections": s.ejections, "hist": hist,
                                "sum": total, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
                                "held": s.held, "sessions": s.sessions_open}
            missing = sorted(kms.missing_tokens())  # never the store: on the loop
            pending = kms.audit_backlog()
            statements = kms.store_statements()
        return {"pid": self.pid, "time": time.time(),
                "requests": [[op, res, n] for (op, res), n in self.requests.items()],
                "hist": dict(self.hist), "sums": dict(self.sums), "tokens": tokens,
                "calls": [[*k, n] for k, n in self.calls.items()],
                "missing": missing, "audit_pending": pending, "process": process_figures(),
                "store_statements": statements}

    def publish(self, kms: Kms | None) -> None:
        if self.share is not None:
            with contextlib.suppress(OSError):
                self.share.publish(self.pid, self.snapshot(kms))

    def start_publishing(self, loop: asyncio.AbstractEventLoop, kms: Kms | None,
                         interval: float = PUBLISH_INTERVAL) -> None:
        """Publish a snapshot now and every ``interval`` seconds, on ``loop`` (the thread
        that counts: no lock needed)."""
        def tick() -> None:
            self.publish(kms)
            self.run_tick_hooks()
            self._timer = loop.call_later(interval, tick)

        tick()

    @property
    def publishing(self) -> bool:
        return self._timer is not None

    def run_tick_hooks(self) -> None:
        for hook in self.tick_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 - a hook must not stop the publishing
                log.exception("metrics tick hook failed")

    def stop_publishing(self, kms: Kms | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.publish(kms)  # the final counts stay in the totals

    # --- rendering ---------------------------------------------------------------------

    def render(self, kms: Kms | None) -> str:
        own = self.snapshot(kms)
        peers = self.share.peers(self.pid) if self.share is not None else []
        return render(own, peers)


def render(own: Mapping[str, Any], peers: Iterable[Mapping[str, Any]]) -> str:
    """The Prometheus text of the whole server: ``own`` (live) and the other workers'."""
    now = time.time()
    every = [own, *peers]
    alive = [s for s in every if s is own or now - float(s.get("time", 0)) <= STALE_AFTER]
    requests: defaultdict[tuple[str, str], int] = defaultdict(int)
    hist: dict[str, list[int]] = {}
    sums: defaultdict[str, float] = defaultdict(float)
    tok_counts: dict[str, defaultdict[str, int]] = {}
    tok_hist: dict[str, list[int]] = {}
    tok_sums: defaultdict[str, float] = defaultdict(float)
    for snap in every:
        for op, res, n in snap.get("requests", []):
            requests[(op, res)] += int(n)
        for op, counts in snap.get("hist", {}).items():
            _add(hist.setdefault(op, [0] * (len(BUCKETS) + 1)), counts)
        for op, v in snap.get("sums", {}).items():
            sums[op] += float(v)
        for name, t in snap.get("tokens", {}).items():
            c = tok_counts.setdefault(name, defaultdict(int))
            for k in ("ops", "errors", "ejections"):
                c[k] += int(t.get(k, 0))
            if "hist" in t:
                _add(tok_hist.setdefault(name, [0] * (len(BUCKETS) + 1)), t["hist"])
                tok_sums[name] += float(t.get("sum", 0.0))

    out = ["# HELP hsmpool_build_info The running version of hsmpool.",
           "# TYPE hsmpool_build_info gauge",
           f'hsmpool_build_info{{version="{VERSION}"}} 1',
           "# HELP hsmpool_workers Worker processes reporting.",
           "# TYPE hsmpool_workers gauge", f"hsmpool_workers {len(alive)}",
           "# HELP hsmpool_requests_total Requests by operation and result, every worker.",
           "# TYPE hsmpool_requests_total counter"]
    for (op, res), n in sorted(requests.items()):
        out.append(f'hsmpool_requests_total{{operation="{op}",result="{res}"}} {n}')
    out += ["# HELP hsmpool_request_seconds Request latency by operation, every worker.",
            "# TYPE hsmpool_request_seconds histogram"]
    for op, h in sorted(hist.items()):
        out += _histogram("hsmpool_request_seconds", f'operation="{op}"', h, sums[op])
    out += ["# HELP hsmpool_worker_requests_total Requests answered by each worker.",
            "# TYPE hsmpool_worker_requests_total counter"]
    for snap in sorted(every, key=lambda s: int(s["pid"])):
        n = sum(int(x[2]) for x in snap.get("requests", []))
        out.append(f'hsmpool_worker_requests_total{{worker="{snap["pid"]}"}} {n}')

    out += ["# HELP hsmpool_token_state 1 for the token's current state, as each worker "
            "sees it.", "# TYPE hsmpool_token_state gauge"]
    for snap in sorted(alive, key=lambda s: int(s["pid"])):
        states = {name: t.get("state") for name, t in snap.get("tokens", {}).items()}
        states.update((name, "missing") for name in snap.get("missing", []))
        for name, state in sorted(states.items()):
            for st in _STATES:
                out.append(f'hsmpool_token_state{{worker="{snap["pid"]}",token="{name}",'
                           f'state="{st}"}} {int(state == st)}')
    in_flight: defaultdict[str, int] = defaultdict(int)
    sessions: defaultdict[str, int] = defaultdict(int)
    for snap in alive:
        for name, t in snap.get("tokens", {}).items():
            in_flight[name] += int(t.get("in_flight", 0))
            sessions[name] += int(t.get("sessions", 0))
    out += ["# HELP hsmpool_token_in_flight Operations in flight, every worker.",
            "# TYPE hsmpool_token_in_flight gauge"]
    out += [f'hsmpool_token_in_flight{{token="{name}"}} {n}'
            for name, n in sorted(in_flight.items())]
    out += ["# HELP hsmpool_token_sessions PKCS#11 sessions open on the token, every worker.",
            "# TYPE hsmpool_token_sessions gauge"]
    out += [f'hsmpool_token_sessions{{token="{name}"}} {n}'
            for name, n in sorted(sessions.items())]
    for metric, help_text, key in (
            ("hsmpool_token_operations_total", "Operations run.", "ops"),
            ("hsmpool_token_errors_total", "Operations failed.", "errors"),
            ("hsmpool_token_ejections_total", "Times ejected.", "ejections")):
        out += [f"# HELP {metric} {help_text} Every worker.", f"# TYPE {metric} counter"]
        out += [f'{metric}{{token="{name}"}} {c[key]}' for name, c in sorted(tok_counts.items())]
    out += ["# HELP hsmpool_token_seconds Latency of token calls, every worker (the sum is "
            "estimated from the pool's histogram, within about 10 %).",
            "# TYPE hsmpool_token_seconds histogram"]
    for name, h in sorted(tok_hist.items()):
        out += _histogram("hsmpool_token_seconds", f'token="{name}"', h, tok_sums[name])
    out += ["# HELP hsmpool_audit_backlog Audit records queued, not yet taken by the writer.",
            "# TYPE hsmpool_audit_backlog gauge",
            f"hsmpool_audit_backlog {sum(int(s.get('audit_pending', 0)) for s in alive)}"]
    counted = [snap for snap in alive if snap.get("store_statements") is not None]
    if counted:  # the stores that count their statements (PostgreSQL)
        out += ["# HELP hsmpool_store_statements_total SQL statements the service's store "
                "ran (round trips to the database), each worker.",
                "# TYPE hsmpool_store_statements_total counter"]
        out += [f'hsmpool_store_statements_total{{worker="{snap["pid"]}"}} '
                f'{int(snap["store_statements"])}'
                for snap in sorted(counted, key=lambda s: int(s["pid"]))]
    for metric, help_text, key, kind in (
            ("process_resident_memory_bytes", "Resident memory of each worker.", "rss",
             "gauge"),
            ("process_cpu_seconds_total", "CPU time (user and system) of each worker.",
             "cpu", "counter"),
            ("process_open_fds", "Open file descriptors of each worker.", "fds", "gauge")):
        out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for snap in sorted(alive, key=lambda s: int(s["pid"])):
            v = snap.get("process", {}).get(key)
            if v is not None:
                out.append(f'{metric}{{worker="{snap["pid"]}"}} {_num(v)}')
    return "\n".join(out) + "\n"


def _add(into: list[int], counts: Iterable[int]) -> None:
    for i, n in enumerate(counts):
        if i < len(into):
            into[i] += int(n)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6f}"


def _histogram(metric: str, label: str, counts: list[int], total: float) -> list[str]:
    lines = []
    cum = 0
    for le, n in zip((*BUCKETS, float("inf")), counts, strict=True):
        cum += n
        le_s = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'{metric}_bucket{{{label},le="{le_s}"}} {cum}')
    lines.append(f"{metric}_sum{{{label}}} {total:.6f}")
    lines.append(f"{metric}_count{{{label}}} {cum}")
    return lines
