"""Choosing a member for an operation, and failing over: least in-flight, weighted.

:meth:`Balancer.execute` runs ``fn(member, session)`` on the least-loaded healthy member of
the ones given (ties go round-robin), and moves the operation to another member on a device
fault or an abandoned call (a hang). With a call context (``hsmpool.deadline``, the
server's requests) the operation's deadline bounds the retries and each call while it runs;
without one, the retry rounds go on for ``operation_timeout`` after the first full round.
Members are chosen among those the caller passes: the instance layer passes the members of
its partition that offer the mechanisms the operation needs.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from typing import TypeVar

from hsmpool import _calls, _p11
from hsmpool._p11 import CallTimeout, P11Error
from hsmpool.config import PoolSettings
from hsmpool.errors import DeadlineExceededError, PoolUnavailableError, UnsupportedOperationError
from hsmpool.member import Member, MemberState

T = TypeVar("T")

__all__ = ["Balancer"]


class Balancer:
    """Member choice and failover for every instance of one pool. Thread-safe."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self._rr = itertools.count()

    def execute(self, members: tuple[Member, ...], fn: Callable[[Member, int], T],
                what: str, *, slow_is_failure: bool = True,
                hang_budget: bool | None = None) -> T:
        """Run ``fn(member, session)`` on the least-loaded healthy member; fail over.

        Device faults (and abandoned calls) move the operation to another member; when every
        capable member has failed once, the round starts again. Without a call context the
        rounds go on for ``operation_timeout`` after the first full round; with one, until
        its deadline, which also bounds each call while it runs.
        """
        if not members:
            raise UnsupportedOperationError(f"no token of this partition supports {what}")
        ctx = _calls.current()
        tried: list[Member] = []
        deadline = 0.0 if ctx is None else ctx.deadline
        last: P11Error | None = None
        n = len(members)
        while True:
            if ctx is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"{what}: no token answered in time"
                    + (f" (last error {last.name})" if last else ""))
            best = None
            best_load = 0.0
            # Ties go round-robin (a rotating start), so idle members share the work.
            start = next(self._rr) % n if n > 1 else 0
            for i in range(n):
                m = members[(start + i) % n]
                if m.state is MemberState.HEALTHY and m not in tried:
                    load = (m.in_flight + 1) / m.weight
                    if best is None or load < best_load:
                        best, best_load = m, load
            if best is None:
                if not any(m.state is MemberState.HEALTHY for m in members):
                    raise PoolUnavailableError(
                        f"{what}: no healthy token in the partition"
                        + (f" (last error {last.name})" if last else "")
                    )
                if deadline == 0.0:
                    deadline = time.monotonic() + self.settings.operation_timeout
                elif time.monotonic() > deadline:
                    raise PoolUnavailableError(
                        f"{what}: every token failed"
                        + (f" (last error {last.name})" if last else "")
                    )
                tried.clear()
                _calls.pause(0.001)
                continue
            member = best
            try:
                return member.run(functools.partial(fn, member), slow_is_failure,
                                  hang_budget)
            except CallTimeout as exc:
                if exc.deadline_passed:
                    raise DeadlineExceededError(f"{what}: no token answered in time "
                                                f"(token {member.name!r} did not return)"
                                                ) from None
                last = exc
                tried.append(member)
            except P11Error as exc:
                if exc.rv not in _p11.DEVICE_FAULTS:
                    raise
                last = exc
                tried.append(member)
