"""The token-call executor (``native/p11exec.c``) on real tokens: a job always finds a thread.

A private executor (not the process's) so that the number of its threads is known; the
shim's hang mode makes one token's calls hold their thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hsmpool._p11_cffi import ffi, lib

from hsmpool import Pool
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


@pytest.mark.parametrize("spin_us", [0, 50])
def test_a_job_submitted_while_the_idle_thread_is_still_waking_gets_a_thread(
        sessions: dict[str, tuple[Any, int]], faults: FaultInjector, spin_us: int) -> None:
    """Two jobs submitted back to back while the executor has one idle thread: the first
    wakes it, and the second must get a thread too (the executor makes one). The executor
    once counted the woken thread as idle until it ran: the second job found "an idle
    thread", signalled nobody, and waited until the first job's call returned (a request on
    a healthy token waited 1.1-1.9 s for an RSA-4096 generation on another tenant's token
    in test_limits, about once in 15 runs)."""
    hung, healthy = sessions["t3"], sessions["t4"]
    buf_a, buf_b = ffi.new("unsigned char[16]"), ffi.new("unsigned char[16]")
    for _round in range(3):
        ex = lib.hp11_exec_new(8, spin_us)
        assert ex != ffi.NULL
        try:
            warm = _random(ex, *healthy, buf_b)  # the executor's one thread
            assert _wait(warm, 5) == lib.HP11_WAIT_DONE
            time.sleep(0.05)  # it is idle (done spinning) now
            faults.fail("hsmpool-3", "hang", hang_ms=HANG_MS)
            slow = _random(ex, *hung, buf_a)
            t0 = time.monotonic()
            fast = _random(ex, *healthy, buf_b)
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
        for job in (warm, slow, fast):
            lib.hp11_job_free(job)
