"""How a member's PKCS#11 calls run: inline, bounded on the token's executor, or on the
token's executor while an event loop goes on.

Every call a :class:`~hsmpool.member.Member` makes to its token goes through the member's
router, which looks at the *call context* of the current greenlet (every thread has a main
greenlet, so this works for plain threads too):

* **no context** (a library caller that set no deadline): the call runs inline in the
  caller's thread. Fastest: no hand-off. A hung token holds that thread until the call
  returns; the breaker ejects the token after ``failure_threshold`` slow calls.
* **a deadline** (:func:`deadline`; the server's worker threads; the pool's prober): the
  call runs on the member's executor (C threads, ``native/p11exec.c``) and the caller
  sleeps in C until it is done, it has *run* for the hang budget (``hang_ms``; key pair
  generation has none), or the deadline passes. Then the call is abandoned:
  :class:`~hsmpool._p11.CallTimeout` is raised, the member is ejected at once, its session
  is never used again (it is closed once the call returns), and the pool retries the
  operation on another member while time is left.
* **a hub** (a request greenlet on the server's event loop, :meth:`Hub.run`): the same, but
  the greenlet yields to the loop while the call runs, so other requests, ``/healthz`` and
  ``/metrics`` go on; the executor reports completion through an eventfd the loop watches,
  and a sweep every few milliseconds throws ``CallTimeout`` into calls past their time (and
  sees that a call still queued gets a thread: ``hp11_exec_kick``).

A lock held across token calls (the anchor session's) must be a :class:`Lock` from here: a
request greenlet that waits for it yields to the loop instead of blocking it (the holder
may be another greenlet of the same loop, suspended in a call).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet

from hsmpool._p11 import CKR_DEVICE_ERROR, CallTimeout, P11Error
from hsmpool._p11_cffi import ffi, lib

if TYPE_CHECKING:
    from hsmpool.member import Member

T = TypeVar("T")

__all__ = ["CallContext", "Hub", "Lock", "current", "deadline", "pause"]

_ATTR: Final = "_hsmpool_call"
SWEEP_INTERVAL: Final = 0.005  # seconds between the hub's checks of calls past their time
IDLE_GREENLETS: Final = 256  # request greenlets a hub keeps for reuse


class CallContext:
    """The time limits of the calls made by one greenlet (a request, a probe)."""

    __slots__ = ("budget", "deadline", "hub")

    def __init__(self, deadline: float, hub: Hub | None = None) -> None:
        self.deadline = deadline  # time.monotonic() seconds
        self.hub = hub
        self.budget: float | None = None  # the current member call's hang budget (seconds)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def current() -> CallContext | None:
    """The call context of the running greenlet, or None (calls run inline)."""
    ctx: CallContext | None = getattr(getcurrent(), _ATTR, None)
    return ctx


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[CallContext]:
    """Bound every token call made inside the block (in this thread/greenlet) by
    ``seconds`` from now, and by the pool's hang budget per call (see the module doc)."""
    g = getcurrent()
    prev = getattr(g, _ATTR, None)
    ctx = CallContext(time.monotonic() + seconds, prev.hub if prev is not None else None)
    if prev is not None and prev.deadline < ctx.deadline:
        ctx.deadline = prev.deadline  # an inner block never extends an outer deadline
    setattr(g, _ATTR, ctx)
    try:
        yield ctx
    finally:
        setattr(g, _ATTR, prev)


class Lock:
    """A mutex for threads and request greenlets alike: a greenlet waiting for it yields to
    its event loop (polling every half millisecond: these locks are rarely contended)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        if self._lock.acquire(blocking=False):
            return
        ctx = current()
        if ctx is None or ctx.hub is None:
            self._lock.acquire()
            return
        while not self._lock.acquire(blocking=False):
            ctx.hub.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def pause(seconds: float) -> None:
    """Sleep without blocking the event loop when called from a request greenlet."""
    ctx = current()
    if ctx is not None and ctx.hub is not None:
        ctx.hub.sleep(seconds)
    else:
        time.sleep(seconds)


# --- the executor -------------------------------------------------------------------------

#: Threads the executor may run at once. Calls of every token share them (one warm pool of
#: threads answers faster than one per token: measured 15-25 % more HTTP Encrypts per second
#: on this project's machine); a hung token holds only the threads of the calls that were on
#: it when it hung (after that it is ejected, and probed again only once they returned).
EXECUTOR_THREADS: Final = 64
_executor: Any = None
_executor_lock = threading.Lock()


def executor(spin_us: int) -> Any:
    """The process's executor (made on first use; it lives as long as the process)."""
    global _executor
    ex = _executor
    if ex is None:
        with _executor_lock:
            ex = _executor
            if ex is None:
                ex = lib.hp11_exec_new(EXECUTOR_THREADS, spin_us)
                if ex == ffi.NULL:
                    raise MemoryError("cannot allocate the token-call executor")
                _executor = ex
    return ex


# --- bounded calls ------------------------------------------------------------------------

_tls = threading.local()


def _sync_job() -> Any:
    jobs: list[Any] | None = getattr(_tls, "jobs", None)
    if jobs is None:
        jobs = _tls.jobs = []
    return jobs.pop() if jobs else lib.hp11_job_new(ffi.NULL)


def _recycle_sync(job: Any) -> None:
    jobs: list[Any] = _tls.jobs
    if len(jobs) < 8:
        jobs.append(job)
    else:
        lib.hp11_job_free(job)


def run_call(ctx: CallContext, member: Member, submit: Any, args: tuple[Any, ...],
             keep: Any, function: str) -> int:
    """Run one glue call of ``member`` under ``ctx`` (bounded, or async); its CK_RV."""
    left = ctx.deadline - time.monotonic()
    if left <= 0:
        raise CallTimeout(function, True)
    budget = ctx.budget
    hub = ctx.hub
    if hub is not None:
        return hub.call(member, submit, args, keep, function, budget)
    job = _sync_job()
    if submit(member.executor(), job, 0, *args):
        _recycle_sync(job)
        raise P11Error(CKR_DEVICE_ERROR, function)  # the executor is shutting down
    hang_us = int(budget * 1e6) if budget is not None else 0
    waited = lib.hp11_job_wait(job, hang_us, int(left * 1e6))
    if waited == lib.HP11_WAIT_DONE:
        rv = int(lib.hp11_job_rv(job))
        _recycle_sync(job)
        return rv
    member.abandon(job, (args, keep))
    raise CallTimeout(function, waited == lib.HP11_WAIT_DEADLINE)


# --- the event-loop hub -------------------------------------------------------------------


class _Pending:
    __slots__ = ("args", "deadline", "function", "glet", "hang_us", "job", "keep", "member")

    def __init__(self, glet: greenlet, job: Any, member: Member, args: tuple[Any, ...],
                 keep: Any, function: str, hang_us: int, deadline: float) -> None:
        self.glet = glet
        self.job = job
        self.member = member
        self.args = args
        self.keep = keep
        self.function = function
        self.hang_us = hang_us
        self.deadline = deadline


class _Sleeper:
    __slots__ = ("deadline", "glet", "on_timeout")

    def __init__(self, glet: greenlet, deadline: float,
                 on_timeout: Callable[[], None] | None) -> None:
        self.glet = glet
        self.deadline = deadline
        self.on_timeout = on_timeout


class Hub:
    """Runs request functions in greenlets on one asyncio event loop; their token calls
    run on the members' executors while the loop serves other requests.

    Create it on the loop's thread (``Hub(asyncio.get_running_loop())``); use
    ``await hub.run(fn, *args, timeout=...)``; :meth:`close` when the loop stops.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.get_ident()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._notifier = lib.hp11_notifier_new(self._fd)
        if self._notifier == ffi.NULL:
            os.close(self._fd)
            raise MemoryError("cannot allocate the executor notifier")
        self._pending: dict[int, _Pending] = {}
        self._sleepers: dict[greenlet, _Sleeper] = {}
        self._jobs: list[Any] = []
        self._tags = ffi.new("uint64_t[256]")
        self._next = 1
        self._sweeping: asyncio.TimerHandle | None = None
        self._idle: list[greenlet] = []  # request greenlets waiting for a task
        root = getcurrent()
        while root.parent is not None:
            root = root.parent
        self._root = root  # the loop thread's main greenlet: where requests start from
        self._closed = False
        loop.add_reader(self._fd, self._ready)

    # --- request greenlets ---------------------------------------------------------------

    def spawn(self, fn: Callable[..., T], args: tuple[Any, ...], timeout: float,
              done: Callable[[bool, Any], None]) -> None:
        """Start ``fn(*args)`` in a request greenlet whose token calls end within
        ``timeout`` seconds; ``done(True, result)`` or ``done(False, exception)`` is called
        when it ends, on the loop's thread: before ``spawn`` returns if ``fn`` made no call
        that had to wait, else later.

        Request greenlets are reused (making one costs about 8 us, switching into an idle
        one well under 1 us).

        Called from inside a request greenlet (a ``done`` callback that starts the next
        request: an HTTP connection's next pipelined request), the start is put off to the
        loop's next turn: a greenlet made or resumed from there would have the running
        request greenlet for its parent and switch back into it at its first wait."""
        if getcurrent() is not self._root:
            self.loop.call_soon(self.spawn, fn, args, timeout, done)
            return
        glet = self._idle.pop() if self._idle else self._new_worker()
        glet.switch((fn, args, CallContext(time.monotonic() + timeout, self), done))

    def _new_worker(self) -> greenlet:
        glet = greenlet(self._worker)
        glet.switch()  # runs up to its first wait for a task
        return glet

    def _worker(self) -> None:
        """A request greenlet's life: run a task, go idle, wait for the next one."""
        me = getcurrent()
        parent = me.parent
        assert parent is not None
        task = parent.switch()
        while True:
            fn, args, ctx, done = task
            setattr(me, _ATTR, ctx)
            try:
                value: Any = fn(*args)
                ok = True
            except BaseException as exc:  # noqa: BLE001 - handed to done()
                if isinstance(exc, GreenletExit):
                    raise
                value, ok = exc, False
            setattr(me, _ATTR, None)
            try:
                done(ok, value)
            except Exception:  # noqa: BLE001 - never into the loop's callback
                import logging

                logging.getLogger("hsmpool").exception("request completion failed")
            del task, fn, args, ctx, done, value
            # Idle only now: ``done`` may spawn the next request (an HTTP connection's next
            # pipelined request starts when this one is answered), and a greenlet already
            # on the idle list would be handed that task while it is still the one running:
            # switching to itself, the task was lost and the request never answered.
            if len(self._idle) >= IDLE_GREENLETS or self._closed:
                return  # this greenlet ends; the next request gets another
            self._idle.append(me)
            task = parent.switch()

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """``await`` form of :meth:`spawn`: the result, or the exception raised."""
        fut: asyncio.Future[T] = self.loop.create_future()

        def done(ok: bool, value: Any) -> None:
            if fut.cancelled():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        self.spawn(fn, args, timeout, done)
        return await fut

    # --- calls from inside a request greenlet ----------------------------------------------

    def call(self, member: Member, submit: Any, args: tuple[Any, ...], keep: Any,
             function: str, budget: float | None) -> int:
        glet = getcurrent()
        ctx: CallContext = getattr(glet, _ATTR)
        job = self._jobs.pop() if self._jobs else lib.hp11_job_new(self._notifier)
        tag = self._next
        self._next = tag + 1
        if submit(member.executor(), job, tag, *args):
            self._jobs.append(job)
            raise P11Error(CKR_DEVICE_ERROR, function)
        hang_us = int(budget * 1e6) if budget is not None else 0
        self._pending[tag] = _Pending(glet, job, member, args, keep, function, hang_us,
                                      ctx.deadline)
        self._arm()
        parent = glet.parent
        assert parent is not None
        parent.switch()  # resumed by _ready (done) or by the sweep (CallTimeout thrown in)
        rv = int(lib.hp11_job_rv(job))
        self._jobs.append(job)
        return rv

    def sleep(self, seconds: float) -> None:
        glet = getcurrent()
        self.loop.call_later(seconds, glet.switch)
        parent = glet.parent
        assert parent is not None
        parent.switch()

    def suspend(self, until: float, on_timeout: Callable[[], None] | None = None) -> None:
        """Yield until :meth:`wake` (from any thread) or ``until`` (monotonic), when
        ``on_timeout()`` runs and :class:`CallTimeout` is raised here."""
        glet = getcurrent()
        self._sleepers[glet] = _Sleeper(glet, until, on_timeout)
        self._arm()
        parent = glet.parent
        assert parent is not None
        parent.switch()

    def wake(self, glet: greenlet) -> None:
        if threading.get_ident() == self._thread:
            self.loop.call_soon(self._resume, glet)
        else:
            self.loop.call_soon_threadsafe(self._resume, glet)

    def _resume(self, glet: greenlet) -> None:
        if self._sleepers.pop(glet, None) is not None and not glet.dead:
            glet.switch()

    # --- loop side ---------------------------------------------------------------------

    def _ready(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass
        tags, pending = self._tags, self._pending
        while True:
            n = lib.hp11_notifier_take(self._notifier, tags, 256)
            for i in range(n):
                p = pending.pop(tags[i], None)
                if p is not None:
                    p.glet.switch()
            if n < 256:
                return

    def _arm(self) -> None:
        if self._sweeping is None and not self._closed:
            self._sweeping = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        """Throw CallTimeout into calls that ran past their hang budget or deadline."""
        self._sweeping = None
        now = time.monotonic()
        late: list[tuple[int, _Pending, bool]] = []
        queued: Any = None
        for tag, p in self._pending.items():
            state = lib.hp11_job_state(p.job)
            if state == lib.HP11_JOB_DONE:
                continue  # its notification is on the way
            if state == lib.HP11_JOB_QUEUED:
                queued = p.member
            if now >= p.deadline:
                late.append((tag, p, True))
            elif (p.hang_us and state == lib.HP11_JOB_RUNNING
                  and lib.hp11_job_running_us(p.job) >= p.hang_us):
                late.append((tag, p, False))
        if queued is not None:
            # A call still waits for a thread: if no thread is on its way (all inside slow
            # calls), the executor adds one (native/p11exec.c, submit). The members of a
            # process share one executor (hsmpool._calls.executor).
            lib.hp11_exec_kick(queued.executor())
        for tag, p, deadline_passed in late:
            if self._pending.pop(tag, None) is None:
                continue
            p.member.abandon(p.job, (p.args, p.keep))
            p.glet.throw(CallTimeout(p.function, deadline_passed))
        for glet, s in list(self._sleepers.items()):
            if now >= s.deadline and self._sleepers.pop(glet, None) is not None:
                if s.on_timeout is not None:
                    s.on_timeout()
                glet.throw(CallTimeout("waiting for a session", True))
        if self._pending or self._sleepers:
            self._arm()

    def close(self) -> None:
        """Stop watching the executors; calls still pending are abandoned."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self._fd)
        if self._sweeping is not None:
            self._sweeping.cancel()
        for p in self._pending.values():
            p.member.abandon(p.job, (p.args, p.keep))
        self._pending.clear()
        for job in self._jobs:
            lib.hp11_job_free(job)
        self._jobs.clear()
        for glet in self._idle:
            glet.throw(GreenletExit)  # ends its wait for a task
        self._idle.clear()
        # The notifier stays allocated (abandoned jobs still point at it) but writes no more.
        lib.hp11_notifier_detach(self._notifier)
        os.close(self._fd)
