"""One token of the pool: login, bounded sessions, key-handle cache, breaker and stats.

A :class:`Member` keeps one *anchor* session that logged in (login state is per token and
per process in PKCS#11, so the worker sessions share it) and that owns the session objects
made by unwrapping blobs; those handles are valid in every session of the process, and are
kept in an LRU. Worker sessions are leased for exactly one operation and evicted if the
operation raised a device fault.

The breaker: ``failure_threshold`` consecutive failures (a device fault, or a call slower than
``slow_call_ms``) eject the member; so does, at once, a call abandoned because it ran past
its hang budget (``hang_ms``) or its deadline (see :mod:`hsmpool._calls`). The pool's prober
then probes the member with backoff and readmits it when a probe answers quickly. On
readmission the anchor session and the handle cache are rebuilt, since a token that really
went away lost both.

Calls run inline in the caller's thread, or on the process's *executor* (C threads made on
demand) when the caller has a call context (:mod:`hsmpool._calls`). An abandoned call keeps
its buffers alive (:meth:`Member.abandon`) until the token returns; its session is closed
then, never reused.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hsmpool import _calls, _p11
from hsmpool._p11 import CallTimeout, Module, P11Error, TokenInfo
from hsmpool._p11_cffi import lib as _lib
from hsmpool._stats import Histogram
from hsmpool.config import PoolSettings, TokenConfig
from hsmpool.errors import LeaseTimeoutError, LoginError

T = TypeVar("T")


# The login answer seen from SoftHSM2 while a process elsewhere rewrites the token file.
_LOGIN_TRANSIENT = frozenset({_p11.CKR_GENERAL_ERROR})


class MemberState(enum.Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class MemberStats:
    """A snapshot of one member, as returned by ``Pool.stats()``."""

    name: str
    label: str
    serial: str
    instance: str | None
    state: str
    in_flight: int
    ops: int
    errors: int
    ejections: int
    sessions_open: int
    cached_keys: int
    abandoned: int  # calls given up on that the token has not returned yet
    p50_ms: float
    p90_ms: float
    p99_ms: float
    held: bool = False  # ejected by an operator (:meth:`Member.hold`): not probed back in


class Member:
    def __init__(
        self,
        config: TokenConfig,
        module: Module,
        info: TokenInfo,
        settings: PoolSettings,
        instance: str | None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.module = module.bind(self._route)
        self.info = info
        self.slot = info.slot
        self.weight = config.weight
        self.instance = instance
        self.settings = settings
        self.mechanisms = module.mechanisms(info.slot)
        self.state = MemberState.HEALTHY
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)
        self._idle: list[int] = []
        self._waiting = 0
        self._open = 0
        self.in_flight = 0
        self.ops = 0
        self.errors = 0
        self.ejections = 0
        self._consecutive = 0
        self._hist = Histogram()
        self._slow_ns = int(settings.slow_call_ms * 1e6)
        self._hang_s = settings.hang_ms / 1e3
        self._threshold = settings.failure_threshold
        self._abandoned: list[tuple[object, object]] = []  # (job, what keeps its memory)
        self._orphans: list[int] = []  # sessions of abandoned calls, closed once they return
        # Request greenlets waiting for a session, with their hubs.
        self._async_waiters: list[tuple[Any, _calls.Hub]] = []
        self.stuck = False  # an executor thread never came back (see close)
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_size = settings.key_cache_size
        self.on_eject: Callable[[Member], None] | None = None
        #: Ejected by an operator (:meth:`hold`): the prober leaves it out until released.
        self.held = False
        # Serialises use of the anchor session (unwraps, destroys, domain-key work); held
        # across token calls, so a request greenlet waits for it without blocking the loop.
        self.anchor_lock = _calls.Lock()
        self.anchor = self._login()
        # Per-instance domain keys on this token: label -> object handle (set by the pool).
        self.domain_keys: dict[str, int] = {}

    # --- login -----------------------------------------------------------------------

    def _login(self) -> int:
        """Open the anchor session and log in. The processes of this host log in one at a
        time (``hsmpool._hostlock``); a SoftHSM2 token file rewritten by some other program
        may still make a login answer CKR_GENERAL_ERROR, which is retried for about 5 s
        with short pauses. A PIN problem is not retried, nor CKR_USER_PIN_NOT_INITIALIZED:
        SoftHSM2 reads the user PIN once, at C_Initialize, so asking again cannot help."""
        pin = self.config.user_pin()
        attempts = 30
        for attempt in range(attempts):
            session = self.module.open_session(self.slot)
            try:
                self.module.login(session, pin)
                return session
            except P11Error as exc:
                self.module.close_session(session)
                if exc.rv in (_p11.CKR_PIN_INCORRECT, _p11.CKR_PIN_LOCKED, _p11.CKR_PIN_INVALID,
                              _p11.CKR_PIN_LEN_RANGE):
                    raise LoginError(
                        f"token {self.name!r} refused the PIN ({exc.name})") from None
                if exc.rv not in _LOGIN_TRANSIENT or attempt == attempts - 1:
                    raise
                time.sleep(min(0.02 * (attempt + 1), 0.2))
        raise AssertionError("unreachable")

    # --- sessions --------------------------------------------------------------------

    def _lease(self, ctx: _calls.CallContext | None) -> int:
        while True:
            with self._lock:
                if self._idle:
                    self.in_flight += 1
                    return self._idle.pop()
                if self._open < self.settings.sessions_per_token:
                    self._open += 1
                    self.in_flight += 1
                    break
                if ctx is not None and ctx.hub is not None:
                    # A request greenlet: wait without blocking the event loop.
                    from greenlet import getcurrent

                    me = getcurrent()
                    self._async_waiters.append((me, ctx.hub))
                else:
                    me = None
                    timeout = self.settings.lease_timeout
                    if ctx is not None:
                        timeout = min(timeout, ctx.left())
                    self._waiting += 1
                    try:
                        deadline = time.monotonic() + timeout
                        while not self._idle:
                            left = deadline - time.monotonic()
                            if left <= 0 or not self._free.wait(left):
                                if self._idle:
                                    break
                                raise LeaseTimeoutError(
                                    f"token {self.name!r}: no session free within "
                                    f"{timeout:g} s")
                    finally:
                        self._waiting -= 1
                    self.in_flight += 1
                    return self._idle.pop()
            assert ctx is not None and ctx.hub is not None and me is not None
            until = min(ctx.deadline, time.monotonic() + self.settings.lease_timeout)

            def give_up(me: object = me) -> None:
                with self._lock:
                    self._async_waiters = [w for w in self._async_waiters if w[0] is not me]

            try:
                ctx.hub.suspend(until, give_up)  # resumed by _release
            except CallTimeout:
                raise LeaseTimeoutError(f"token {self.name!r}: no session became free in "
                                        "time") from None
        try:
            return self.module.open_session(self.slot)
        except BaseException:
            with self._lock:
                self._open -= 1
                self.in_flight -= 1
            raise

    def _release(self, session: int, elapsed_ns: int, ok: bool, evict: bool,
                 slow_counts: bool = True) -> bool:
        """Return a session; count the call. True if this call ejected the member."""
        eject = False
        with self._lock:
            self.in_flight -= 1
            self.ops += 1
            self._hist.add(elapsed_ns)
            if evict:
                self._open -= 1
            else:
                self._idle.append(session)
                if self._waiting:
                    self._free.notify()
            waiter = self._async_waiters.pop(0) if self._async_waiters else None
            if ok and (elapsed_ns < self._slow_ns or not slow_counts):
                self._consecutive = 0
            else:
                eject = self._failed_locked(error=not ok)
        if waiter is not None:
            self._wake_waiter(waiter)
        if evict:
            self._close_quietly(session)
        return eject

    @staticmethod
    def _wake_waiter(waiter: tuple[Any, _calls.Hub]) -> None:
        waiter[1].wake(waiter[0])

    def _abandoned_session(self, session: int, elapsed_ns: int) -> bool:
        """A call on ``session`` was given up: the session is not reused (it is closed once
        the token returns), the member is ejected. True if this call ejected it."""
        with self._lock:
            self.in_flight -= 1
            self.ops += 1
            self.errors += 1
            self._hist.add(elapsed_ns)
            self._open -= 1
            self._orphans.append(session)
            waiter = self._async_waiters.pop(0) if self._async_waiters else None
            eject = self._eject_locked()
        if waiter is not None:
            self._wake_waiter(waiter)
        return eject

    def _failed_locked(self, error: bool) -> bool:
        """Feed the breaker one failure (an error, or a slow call); True if it ejects."""
        if error:
            self.errors += 1
        self._consecutive += 1
        if self._consecutive >= self._threshold:
            return self._eject_locked()
        return False

    def _eject_locked(self) -> bool:
        if self.state is MemberState.HEALTHY:
            self.state = MemberState.EJECTED
            self.ejections += 1
            return True
        return False

    def _close_quietly(self, *sessions: int) -> None:
        for s in sessions:
            try:
                self.module.close_session(s)
            except P11Error:  # CallTimeout included: the session is gone either way
                pass

    def run(self, fn: Callable[[int], T], slow_is_failure: bool = True,
            hang_budget: bool | None = None) -> T:
        """Run ``fn(session)`` on a leased session; count it; feed the breaker.

        ``slow_is_failure=False`` for operations that are slow by nature (RSA key
        generation takes seconds): only their errors count against the token, and they
        have no hang budget (only the deadline bounds them), unless ``hang_budget=True``:
        then a call that runs past the hang budget is still abandoned as hung (secret key
        generation: its time varies, but it never takes what a hang takes).

        Device faults are re-raised as :class:`P11Error` for the pool to retry elsewhere
        (a :class:`CallTimeout` too, after the member was ejected); any other exception
        (bad input) passes through without counting as a failure.
        """
        ctx = _calls.current()
        outer: float | None = None
        if ctx is not None:
            outer = ctx.budget
            budgeted = slow_is_failure if hang_budget is None else hang_budget
            ctx.budget = self._hang_s if budgeted else None
        try:
            session = self._lease(ctx)
        except CallTimeout:
            if ctx is not None:
                ctx.budget = outer
            with self._lock:
                eject = self._eject_locked()  # opening a session hung
            if eject:
                self._ejected()
            raise
        except BaseException as exc:
            if ctx is not None:
                ctx.budget = outer
            if isinstance(exc, P11Error) and exc.rv in _p11.DEVICE_FAULTS:
                self.record_failure()
            raise
        t0 = time.perf_counter_ns()
        try:
            result = fn(session)
        except CallTimeout:
            if self._abandoned_session(session, time.perf_counter_ns() - t0):
                self._ejected()
            raise
        except P11Error as exc:
            fault = exc.rv in _p11.DEVICE_FAULTS
            if self._release(session, time.perf_counter_ns() - t0, not fault, fault):
                self._ejected()
            raise
        except BaseException:
            if self._release(session, time.perf_counter_ns() - t0, True, False):
                self._ejected()
            raise
        finally:
            if ctx is not None:
                ctx.budget = outer
        elapsed = time.perf_counter_ns() - t0
        if self._release(session, elapsed, True, False, slow_is_failure):
            self._ejected()
        return result

    # --- routing of token calls --------------------------------------------------------

    def _route(self, direct: Callable[..., int], submit: Callable[..., int],
               args: tuple[object, ...], keep: object, function: str) -> int:
        """The router of this member's module view (see hsmpool._calls)."""
        ctx = _calls.current()
        if ctx is None:
            return direct(*args)
        return _calls.run_call(ctx, self, submit, args, keep, function)

    def executor(self) -> object:
        """The executor that runs this member's calls (see hsmpool._calls)."""
        return _calls.executor(self.settings.executor_spin_us)

    def abandon(self, job: object, keep: object) -> None:
        """A call was given up while the token still runs it: keep its memory until then."""
        with self._lock:
            self._abandoned.append((job, keep))

    def reap(self) -> int:
        """Free the abandoned calls the token has returned from, and close their sessions
        once none is left running. Returns how many are still running."""
        with self._lock:
            done = [a for a in self._abandoned
                    if _lib.hp11_job_state(a[0]) == _lib.HP11_JOB_DONE]
            self._abandoned = [a for a in self._abandoned if a not in done]
            running = len(self._abandoned)
            orphans: list[int] = []
            if not running:
                orphans, self._orphans = self._orphans, []
        for job, _ in done:
            _lib.hp11_job_free(job)
        if orphans:
            # Bounded: a token that still hangs must not hold the caller (the prober); a
            # close given up on still runs, and frees the session when the token returns.
            with _calls.deadline(2 * self._hang_s):
                self._close_quietly(*orphans)
        return running

    def _ejected(self) -> None:
        with self._lock:
            self._cache.clear()
        if self.on_eject is not None:
            self.on_eject(self)

    def record_failure(self) -> None:
        """Count a failure observed outside :meth:`run` (e.g. a failed unwrap)."""
        with self._lock:
            eject = self._failed_locked(error=True)
        if eject:
            self._ejected()

    # --- health ----------------------------------------------------------------------

    def probe(self) -> bool:
        """One health check, outside the breaker: a fresh session and a few random draws,
        all of which must answer quickly (a token failing every Nth call stays out)."""
        ctx = _calls.current()
        if ctx is not None:
            ctx.budget = self._hang_s  # a probe call slower than that: still hanging
        t0 = time.perf_counter_ns()
        try:
            session = self.module.open_session(self.slot)
        except P11Error:
            return False
        try:
            for _ in range(self._threshold + 2):
                self.module.random(session, 16)
        except CallTimeout:
            with self._lock:
                self._orphans.append(session)  # still in use by the abandoned call
            return False
        except P11Error:
            self._close_quietly(session)
            return False
        self._close_quietly(session)
        return time.perf_counter_ns() - t0 < self._slow_ns

    def eject(self) -> bool:
        """Eject on outside evidence (another process of the server saw this token fail):
        out of the pool until the prober finds it answering. True if it was healthy."""
        with self._lock:
            ejected = self._eject_locked()
            if ejected:
                self._cache.clear()
        return ejected  # the pool (Pool.eject) tells its prober

    def hold(self) -> bool:
        """An operator's ejection: out of the pool until :meth:`release` (the prober
        leaves a held member alone). True if it was healthy until now."""
        with self._lock:
            self.held = True
            return self._eject_locked()

    def release(self) -> bool:
        """End an operator's hold; the prober then probes the member and readmits it.
        True if it was held."""
        with self._lock:
            was, self.held = self.held, False
            return was

    def readmit(self) -> bool:
        """Rebuild the login and the handle cache after a successful probe, then admit.
        False (still ejected) while an abandoned call has not come back from the token."""
        if self.reap():
            return False
        with self._lock:
            old_idle, self._idle = self._idle, []
            self._open -= len(old_idle)
            self._cache.clear()
        self._close_quietly(*old_idle)
        with self.anchor_lock:
            old_anchor = self.anchor
            self.anchor = self._login()
            self._close_quietly(old_anchor)
        with self._lock:
            if self.held:  # an operator ejected it meanwhile
                return False
            self._consecutive = 0
            self.state = MemberState.HEALTHY
        return True

    # --- unwrapped-key cache ---------------------------------------------------------

    def cached_handle(self, blob: bytes) -> int | None:
        cache = self._cache
        handle = cache.get(blob)
        if handle is not None:
            try:
                cache.move_to_end(blob)
            except KeyError:
                pass
        return handle

    def cache_handle(self, blob: bytes, handle: int) -> int:
        """Remember a handle; returns the handle to use (an existing one wins a race)."""
        evicted: list[int] = []
        with self._lock:
            existing = self._cache.get(blob)
            if existing is not None:
                evicted.append(handle)
                handle = existing
            else:
                self._cache[blob] = handle
                while len(self._cache) > self._cache_size:
                    evicted.append(self._cache.popitem(last=False)[1])
        for h in evicted:
            self._destroy(h)
        return handle

    def invalidate(self, blob: bytes) -> None:
        with self._lock:
            handle = self._cache.pop(blob, None)
        if handle is not None:
            self._destroy(handle)

    def _destroy(self, handle: int) -> None:
        with self.anchor_lock:
            try:
                self.module.destroy_object(self.anchor, handle)
            except P11Error:
                pass

    # --- stats and shutdown ----------------------------------------------------------

    def latency_buckets(self, bounds_s: tuple[float, ...]) -> tuple[list[int], float]:
        """This token's call latencies in coarse buckets (see ``Histogram.coarse``)."""
        with self._lock:
            return self._hist.coarse(bounds_s)

    def stats(self) -> MemberStats:
        with self._lock:
            return MemberStats(
                name=self.name,
                label=self.info.label,
                serial=self.info.serial,
                instance=self.instance,
                state=self.state.value,
                in_flight=self.in_flight,
                ops=self.ops,
                errors=self.errors,
                ejections=self.ejections,
                sessions_open=self._open,
                cached_keys=len(self._cache),
                abandoned=len(self._abandoned),
                p50_ms=self._hist.percentile(0.50) * 1e3,
                p90_ms=self._hist.percentile(0.90) * 1e3,
                p99_ms=self._hist.percentile(0.99) * 1e3,
                held=self.held,
            )

    def close(self) -> None:
        with self._lock:
            self.state = MemberState.CLOSED
            idle, self._idle = self._idle, []
            self._cache.clear()
        self._close_quietly(*idle, self.anchor)
        # A call still inside the token cannot be stopped: then the module is left loaded
        # to the end of the process (see Pool.close).
        self.stuck = self.reap() > 0
