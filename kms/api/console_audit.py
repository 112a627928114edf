"""The console's audit panel: the tail of the trail and the state of its hash chains.

The tail is read with :mod:`kms.audit_reader` (records hold no plaintext, key material or
secret context values); the console shows when, who, what, which key and version, the
result and the request id, and leaves the encryption-context details out.

Verification (:func:`kms.audit.verify`, every record of every segment) runs on a background
thread at most once a minute while someone looks (or when an administrator asks), and the
last report is what the panel shows: whether every chain verified, when, and for
administrators the number of records and segments and the first problems found.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from kms.audit import AuditError, verify
from kms.audit_reader import Filter, Reader

VERIFY_EVERY: Final = 60.0
MAX_TAIL: Final = 500


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: float
    seconds: float
    records: int
    segments: int
    problems: tuple[str, ...]


class AuditView:
    def __init__(self, directory: str | None, secret_context_keys: Iterable[str] = (), *,
                 now: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.secret = tuple(secret_context_keys)
        self.now = now
        self._last: Verification | None = None
        self._running = False
        self._lock = threading.Lock()

    def tail(self, n: int, instance: str | None, principal: str | None = None
             ) -> list[dict[str, Any]]:
        """The last ``n`` records of ``instance`` (None: every instance), of ``principal``
        only if given; newest last."""
        if self.directory is None:
            return []
        try:
            reader = Reader(self.directory, secret_context_keys=self.secret)
            recs = reader.tail(max(1, min(n, MAX_TAIL)),
                               Filter(instance=instance, principal=principal))
        except AuditError:
            return []
        return [{"time": r.time, "instance": r.instance, "principal": r.principal,
                 "action": r.action, "key": r.key_id, "version": r.key_version,
                 "result": r.result, "request": r.request_id, "segment": r.segment,
                 "seq": r.seq} for r in recs]

    def verification(self, *, force: bool = False) -> Verification | None:
        """The last report; starts a new verification if it is older than a minute (or
        ``force``) and none is running."""
        last = self._last
        if self.directory is not None and (
                force or last is None or self.now() - last.checked > VERIFY_EVERY):
            self._start()
        return last

    def _start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._verify, name="console-audit-verify", daemon=True).start()

    def _verify(self) -> None:
        try:
            assert self.directory is not None
            t0 = time.perf_counter()
            report = verify(self.directory)
            self._last = Verification(report.ok, self.now(), time.perf_counter() - t0,
                                      report.records, report.segments,
                                      tuple(report.problems[:20]))
        finally:
            with self._lock:
                self._running = False

    def wait(self, timeout: float = 30.0) -> Verification | None:
        """The report once no verification is running (tests, tools)."""
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._last
