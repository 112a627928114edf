"""The parent of a multi-worker ``hsmpool serve``: starts the workers, watches them, stops
them.

Each worker is a fresh interpreter (``python -m kms.server.worker``, never a fork of the
parent: PKCS#11 libraries are initialised in the worker) handed the listening socket and the
write end of a status pipe. On it the worker says ``ready`` once it serves, or ``failed
<one line>`` if it could not start.

* All workers must be ready within ``start_timeout``; then ``on_ready`` runs (the serving
  line is printed).
* A worker that fails to start — at first, or later as the replacement of one that died —
  stops the whole server: every worker is terminated and :meth:`Supervisor.run` returns
  ``(1, reason)``. A server is never left respawning workers that cannot start.
* A worker that dies after it was ready is replaced, up to ``max_restarts`` within
  ``restart_window`` seconds; one more death in that window stops the server the same way.
* SIGTERM or SIGINT: every worker gets SIGTERM (uvicorn finishes the requests in progress,
  the audit trail is flushed) and, after ``stop_timeout``, SIGKILL; returns ``(0, None)``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

POLL: Final = 0.2


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    status_fd: int
    started: float
    ready: bool = False
    failure: str | None = None
    buf: bytearray = field(default_factory=bytearray)


class Supervisor:
    def __init__(self, argv: Callable[[int, int], Sequence[str]], sock: socket.socket,
                 workers: int, *, start_timeout: float = 180.0, max_restarts: int = 5,
                 restart_window: float = 60.0, stop_timeout: float = 30.0,
                 extra_socks: Sequence[socket.socket] = ()) -> None:
        """``argv(index, status_fd)`` is a worker's command line; the workers inherit
        ``sock`` and ``extra_socks`` (the KMS-instance API's)."""
        self._argv = argv
        self._sock = sock
        self._fds = (sock.fileno(), *(s.fileno() for s in extra_socks))
        self._n = workers
        self._start_timeout = start_timeout
        self._max_restarts = max_restarts
        self._window = restart_window
        self._stop_timeout = stop_timeout
        self._workers: list[_Worker] = []
        self._deaths: deque[float] = deque()
        self._stop_signal: int | None = None
        self._sel = selectors.DefaultSelector()

    # --- processes -----------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(list(self._argv(index, w)),
                                    pass_fds=(*self._fds, w), close_fds=True)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        os.set_blocking(r, False)
        worker = _Worker(index, proc, r, time.monotonic())
        self._sel.register(r, selectors.EVENT_READ, worker)
        return worker

    def _read_status(self, worker: _Worker) -> None:
        try:
            chunk = os.read(worker.status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close_status(worker)
            return
        worker.buf += chunk
        while b"\n" in worker.buf:
            line, _, rest = bytes(worker.buf).partition(b"\n")
            worker.buf = bytearray(rest)
            text = line.decode("utf-8", "replace").strip()
            if text == "ready":
                worker.ready = True
            elif text.startswith("failed"):
                worker.failure = text[len("failed"):].strip() or "unknown reason"

    def _close_status(self, worker: _Worker) -> None:
        if worker.status_fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(worker.status_fd)
            os.close(worker.status_fd)
            worker.status_fd = -1

    def _terminate_all(self) -> None:
        for w in self._workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        for w in self._workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                w.proc.wait()
            self._close_status(w)

    def serving(self) -> int:
        """Workers ready and running now (any thread may ask: the node's heartbeat)."""
        return sum(1 for w in list(self._workers) if w.ready and w.proc.poll() is None)

    # --- the loop ------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    def _pump(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            worker = key.data
            assert isinstance(worker, _Worker)
            self._read_status(worker)

    def _why(self, w: _Worker) -> str:
        if w.failure:
            return w.failure
        rc = w.proc.returncode
        if rc is not None and rc < 0:
            return f"killed by signal {signal.Signals(-rc).name}"
        return f"exited with status {rc}"

    def run(self, on_ready: Callable[[], None]) -> tuple[int, str | None]:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run(on_ready)
        finally:
            self._terminate_all()
            for s, h in old.items():
                signal.signal(s, h)
            self._sel.close()

    def _run(self, on_ready: Callable[[], None]) -> tuple[int, str | None]:
        self._workers = [self._spawn(i) for i in range(self._n)]
        announced = False
        while self._stop_signal is None:
            self._pump(POLL)
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.failure is not None:
                    return 1, f"worker {w.index + 1} (pid {w.proc.pid}) failed to start: " \
                              f"{w.failure}"
                if w.proc.poll() is not None:
                    self._pump(0)  # a last word on the pipe
                    if not w.ready or w.failure is not None:
                        return 1, (f"worker {w.index + 1} (pid {w.proc.pid}) failed to "
                                   f"start: {self._why(w)}")
                    self._close_status(w)
                    self._deaths.append(now)
                    while self._deaths and now - self._deaths[0] > self._window:
                        self._deaths.popleft()
                    if len(self._deaths) > self._max_restarts:
                        return 1, (f"workers keep dying ({len(self._deaths)} in "
                                   f"{self._window:.0f} s; the last, pid {w.proc.pid}, "
                                   f"{self._why(w)}); stopping")
                    print(f"hsmpool: worker {w.index + 1} (pid {w.proc.pid}) "
                          f"{self._why(w)}; starting another", file=sys.stderr, flush=True)
                    self._workers[i] = self._spawn(w.index)
                elif not w.ready and now - w.started > self._start_timeout:
                    return 1, (f"worker {w.index + 1} (pid {w.proc.pid}) did not start "
                               f"within {self._start_timeout:.0f} s")
            if not announced and all(w.ready for w in self._workers):
                announced = True
                on_ready()
        return 0, None
