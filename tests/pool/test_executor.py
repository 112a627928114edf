"""The token-call executor (``native/p11exec.c``) on real tokens: a job always finds a thread.

A private executor (not the process's) so that the number of its threads is known; the
shim's hang mode makes one token's calls hold their thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from greenlet import getcurrent
from hsmpool._p11_cffi import ffi, lib

from hsmpool import AsyncHub, Pool
from hsmpool._calls import _Pending
from tests.conftest import pool_toml
from tests.faults import FaultInjector

HANG_MS = 800


@pytest.fixture(scope="module")
def pool(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    cfg = tmp_path_factory.mktemp("exec") / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"executor": [3, 4]}))
    with Pool.open(cfg) as p:
        yield p


@pytest.fixture
def sessions(pool: Pool) -> Iterator[dict[str, tuple[Any, int]]]:
    """Per token: the library handle and a session of the test's own (opened directly, not
    through any executor)."""
    opened = {}
    for token in ("t3", "t4"):
        member = pool.members[token]
        raw = member.module._parent  # type: ignore[attr-defined]
        opened[token] = (raw, raw.open_session(member.slot))
    yield {t: (raw._m, s) for t, (raw, s) in opened.items()}
    for raw, s in opened.values():
        raw.close_session(s)


def _random(ex: Any, handle: Any, session: int, buf: Any) -> Any:
    job = lib.hp11_job_new(ffi.NULL)
    assert lib.hp11_submit_random(ex, job, 0, handle, session, buf, 16) == 0
    return job


def _wait(job: Any, seconds: float) -> int:
    return int(lib.hp11_job_wait(job, 0, int(seconds * 1e6)))


def _deferred_behind_a_hung_call(ex: Any, hung: tuple[Any, int], healthy: tuple[Any, int],
                                 faults: FaultInjector, bufs: tuple[Any, Any],
                                 second: Any, tag: int = 0) -> Any:
    """With the executor's one thread idle: a hung call, then at once ``second`` (a job on
    the healthy token, not waited for). The one wake-up goes to the hung call; the second
    job is left for a woken or busy worker, which none is: it stays queued until a kick.
    Returns the hung call's job. (``tag``: the notifier tag the second job is submitted
    with.)"""
    warm = _random(ex, *healthy, bufs[1])
    assert _wait(warm, 5) == lib.HP11_WAIT_DONE
    lib.hp11_job_free(warm)
    time.sleep(0.05)
    faults.fail("hsmpool-3", "hang", hang_ms=HANG_MS)
    slow = _random(ex, *hung, bufs[0])
    assert lib.hp11_submit_random(ex, second, tag, *healthy, bufs[1], 16) == 0
    return slow


@pytest.mark.parametrize("spin_us", [0, 50])
def test_a_job_submitted_while_the_idle_thread_is_still_waking_gets_a_thread(
        sessions: dict[str, tuple[Any, int]], faults: FaultInjector, spin_us: int) -> None:
    """Two jobs submitted back to back while the executor has one idle thread: the first
    wakes it, and the second must get a thread too (from its waiter's kick, 2 ms on, since
    no thread is on its way: the woken one took the hung call). The executor
    once counted the woken thread as idle until it ran: the second job found "an idle
    thread", signalled nobody, and waited until the first job's call returned (a request on
    a healthy token waited 1.1-1.9 s for an RSA-4096 generation on another tenant's token
    in test_limits, about once in 15 runs)."""
    bufs = (ffi.new("unsigned char[16]"), ffi.new("unsigned char[16]"))
    for _round in range(3):
        ex = lib.hp11_exec_new(8, spin_us)
        assert ex != ffi.NULL
        fast = lib.hp11_job_new(ffi.NULL)
        slow = None
        try:
            slow = _deferred_behind_a_hung_call(ex, sessions["t3"], sessions["t4"], faults,
                                                   bufs, fast)
            t0 = time.monotonic()
            assert _wait(fast, 5) == lib.HP11_WAIT_DONE
            took = time.monotonic() - t0
            assert lib.hp11_job_rv(fast) == 0
            assert _wait(slow, 5) == lib.HP11_WAIT_DONE  # the hang ends
            assert time.monotonic() - t0 >= HANG_MS / 1e3 * 0.9  # it really hung
            assert took < HANG_MS / 1e3 / 4, f"the second job waited {took:.3f} s"
        finally:
            faults.heal()
            assert lib.hp11_exec_stop(ex, 5_000_000) == 1
            lib.hp11_exec_free(ex)
            lib.hp11_job_free(fast)
            if slow is not None:
                lib.hp11_job_free(slow)


def _until_done(job: Any, seconds: float) -> float:
    t0 = time.monotonic()
    while lib.hp11_job_state(job) != lib.HP11_JOB_DONE and time.monotonic() - t0 < seconds:
        time.sleep(0.001)
    return time.monotonic() - t0


ATTEMPTS = 5  # a burst whose second job got a thread at once (the woken one was quick) proves
#              nothing here: another try, each with a new executor


def test_a_queued_job_that_no_thread_will_take_gets_one_when_kicked(
        sessions: dict[str, tuple[Any, int]], faults: FaultInjector) -> None:
    """The deferral itself (no thread made for a job in a burst: the waiter's kick adds one
    if the job waited HP11_KICK_US), and hp11_exec_kick, which the event-loop hub calls."""
    hung, healthy = sessions["t3"], sessions["t4"]
    bufs = (ffi.new("unsigned char[16]"), ffi.new("unsigned char[16]"))
    deferred = 0
    for _attempt in range(ATTEMPTS):
        ex = lib.hp11_exec_new(8, 0)
        fast = lib.hp11_job_new(ffi.NULL)
        try:
            slow = _deferred_behind_a_hung_call(ex, hung, healthy, faults, bufs, fast)
            time.sleep(0.05)
            if lib.hp11_job_state(fast) == lib.HP11_JOB_QUEUED:  # deferred, nobody kicked
                deferred += 1
                lib.hp11_exec_kick(ex)
                took = _until_done(fast, 5)
                assert lib.hp11_job_state(fast) == lib.HP11_JOB_DONE
                assert took < HANG_MS / 1e3 / 4, f"{took:.3f} s after the kick"
            assert lib.hp11_job_rv(fast) == 0
            assert _wait(slow, 5) == lib.HP11_WAIT_DONE
            lib.hp11_job_free(slow)
        finally:
            faults.heal()
            assert lib.hp11_exec_stop(ex, 5_000_000) == 1
            lib.hp11_exec_free(ex)
            lib.hp11_job_free(fast)
        if deferred:
            break
    assert deferred, f"no burst left its second job queued in {ATTEMPTS} tries"


class _OnExecutor:
    """What the hub asks of a member for a call (its executor, and where an abandoned call's
    memory goes): here the test's own executor, over the member's real token."""

    def __init__(self, ex: Any) -> None:
        self.ex = ex

    def executor(self) -> Any:
        return self.ex

    def abandon(self, job: Any, keep: Any) -> None:
        raise AssertionError("no call is abandoned here")


def _hub_burst(ex: Any, hung: tuple[Any, int], healthy: tuple[Any, int],
               faults: FaultInjector) -> tuple[bool, float, bytes]:
    """A request greenlet's call submitted right after a hung one: (whether it was left
    queued, how long until the request greenlet had its answer, what it read)."""
    bufs = (ffi.new("unsigned char[16]"), ffi.new("unsigned char[16]"))
    member = _OnExecutor(ex)

    async def main() -> tuple[bool, float, bytes]:
        hub = AsyncHub(asyncio.get_running_loop())
        try:
            # The call is submitted as Hub.call submits it, but by the test, right after the
            # hung one (as a burst does); then the hub waits for it as for any request's.
            job = lib.hp11_job_new(hub._notifier)
            tag = hub._next
            hub._next += 1
            done = asyncio.get_running_loop().create_future()

            def request() -> None:
                glet = getcurrent()
                hub._pending[tag] = _Pending(glet, job, member, (), None,  # type: ignore[arg-type]
                                             "C_GenerateRandom", 0, time.monotonic() + 5)
                hub._arm()
                assert glet.parent is not None
                glet.parent.switch()
                done.set_result(time.monotonic())

            slow = None
            try:
                slow = _deferred_behind_a_hung_call(ex, hung, healthy, faults, bufs, job,
                                                       tag)
                t0 = time.monotonic()
                time.sleep(0.02)  # (the loop waits too: nothing kicks meanwhile)
                deferred = lib.hp11_job_state(job) == lib.HP11_JOB_QUEUED
                hub.spawn(request, (), 5.0, lambda ok, value: None)
                end = await asyncio.wait_for(done, 5)
                assert lib.hp11_job_rv(job) == 0
                return deferred, end - t0, bytes(ffi.buffer(bufs[1], 16))
            finally:
                if slow is not None:
                    assert _wait(slow, 5) == lib.HP11_WAIT_DONE
                    lib.hp11_job_free(slow)
        finally:
            hub.close()

    return asyncio.run(main())


def test_the_hubs_sweep_kicks_a_queued_call(sessions: dict[str, tuple[Any, int]],
                                             faults: FaultInjector) -> None:
    """A request greenlet's call queued behind a hung one gets a thread from the hub's
    sweep (the hub waits on an eventfd, not in hp11_job_wait, so it kicks itself)."""
    for _attempt in range(ATTEMPTS):
        ex = lib.hp11_exec_new(8, 0)
        try:
            deferred, took, out = _hub_burst(ex, sessions["t3"], sessions["t4"], faults)
        finally:
            faults.heal()
            assert lib.hp11_exec_stop(ex, 5_000_000) == 1
            lib.hp11_exec_free(ex)
        assert took < HANG_MS / 1e3 / 4, f"the queued call waited {took:.3f} s"
        assert out != bytes(16)
        if deferred:
            return
    pytest.fail(f"no burst left its call queued in {ATTEMPTS} tries")
