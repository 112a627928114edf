"""hsmpool.AsyncHub (hsmpool/_calls.py) without tokens: request greenlets on a real asyncio
loop, and a request started from the completion of another."""

from __future__ import annotations

import asyncio
from typing import Any

from hsmpool import AsyncHub


def _run(body: Any) -> Any:
    async def main() -> Any:
        hub = AsyncHub(asyncio.get_running_loop())
        try:
            return await body(hub)
        finally:
            hub.close()

    return asyncio.run(main())


def test_a_request_spawned_by_the_completion_of_another_runs() -> None:
    """An HTTP connection's next pipelined request is started from the ``done`` callback of
    the one before it, which runs in that request's greenlet. The hub once had that greenlet
    on its idle list already and handed it the new task while it was still running: the
    switch to itself returned at once and the request was never run (a pipelined request
    went unanswered until the client gave up; found by benchmarks.fuzz)."""

    async def body(hub: Any) -> list[Any]:
        loop = asyncio.get_running_loop()
        results: list[Any] = []
        finished = loop.create_future()

        def chain(k: int, waits: bool) -> None:
            def fn() -> int:
                if waits:
                    hub.sleep(0.001)  # yield to the loop, as a token call does
                return k

            def done(ok: bool, value: Any) -> None:
                results.append((ok, value))
                if k < 5:
                    hub.spawn(lambda: None, (), 5.0, lambda ok, v: None)  # an unrelated one
                    chain(k + 1, not waits)
                elif not finished.done():
                    finished.set_result(None)

            hub.spawn(fn, (), 5.0, done)

        chain(0, True)
        await asyncio.wait_for(finished, 5)
        return results

    assert _run(body) == [(True, k) for k in range(6)]


def test_results_and_errors_reach_done() -> None:
    async def body(hub: Any) -> list[Any]:
        def fails() -> None:
            raise ValueError("no")

        ok = await hub.run(lambda a, b: a + b, 2, 3, timeout=5.0)
        try:
            await hub.run(fails, timeout=5.0)
        except ValueError as exc:
            return [ok, str(exc)]
        return [ok, None]

    assert _run(body) == [5, "no"]
