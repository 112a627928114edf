"""The request pipeline every front end shares: route -> prepare -> limits -> run -> answer.

A front end (:class:`Frontend`: the AWS KMS JSON protocol, later Secrets Manager and the
Alibaba protocols) knows its wire format; everything else happens here, once:

1. **route**: the first front end that :meth:`~Frontend.accepts` the request gets it;
2. **prepare** (in a request greenlet of the worker's :class:`kms.calls.AsyncHub`: it may
   need a token, e.g. to unwrap an access key's secret on first use): the front end parses
   the request and authenticates its caller, and returns a :class:`Call` (or an answer: a
   refusal in its own dialect);
3. **limits** (:class:`Limits`): per principal, a request rate and a number of blocking
   operations in progress; past them the front end's throttling answer, at once;
4. **run**: a cryptographic or read-only call runs on in the same greenlet (its token calls
   yield to the event loop); a blocking one (it writes state, waits for durable commits, or
   generates keys) runs on the thread pool. Both under the request's deadline: past it, the
   front end's "try again" answer (the token call in progress is abandoned);
5. **answer**: ``respond(status, body, content_type)`` on the loop's thread, and the
   request is counted (metrics).

The pipeline never parses a wire format and never touches a token itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from kms import calls
from kms.api.logs import AccessLog, log_request
from kms.api.netaddr import Network, source_address

if TYPE_CHECKING:
    from kms.api.metrics import Metrics

log = logging.getLogger("hsmpool.server")

#: Response header lines beyond Content-Type and Content-Length: (name, value) pairs, names
#: in lower case. Only front ends that need them (the console's cookies) send any.
Headers = tuple[tuple[bytes, bytes], ...]


class Respond(Protocol):
    """How an answer leaves: ``respond(status, body, content_type[, headers])``."""

    def __call__(self, status: int, body: bytes, content_type: bytes,
                 headers: Headers = (), /) -> None: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """A response, with what metrics and logs say about it."""

    status: int
    body: bytes
    content_type: bytes
    operation: str  # the front end's operation name, "-" if none was recognised
    result: str  # "ok" or the error code sent
    headers: Headers = ()


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; repeated headers joined by ","
    body: bytes
    peer: str | None  # the TCP peer's address
    listener: str = "main"  # which of the server's ports it came in on


@dataclass(slots=True)
class Call:
    """A parsed, authenticated request, ready to run."""

    operation: str
    principal: str  # the caller's principal id (limits)
    blocking: bool
    run: Callable[[], Answer]  # runs the operation and renders its answer (never raises)
    caller: str | None = None  # "instance/principal name", for the access log
    source: str | None = None  # the request's source address as policies saw it


class Frontend(Protocol):
    """One wire protocol. Its methods answer in its own dialect and never raise. A front
    end serves the requests of one listener: its ``listener`` attribute, if it has one,
    else ``"main"``."""

    name: str

    def accepts(self, req: Request) -> bool: ...

    def prepare(self, req: Request) -> Call | Answer: ...

    def throttled(self, operation: str) -> Answer: ...

    def timed_out(self, operation: str) -> Answer: ...

    def internal_error(self, operation: str) -> Answer: ...


class Limits:
    """Per principal: a token bucket of requests per second (``rate`` 0: none) and a cap on
    blocking operations in progress (``blocking``; more wait their turn, in order, within
    their deadline). Thread-safe; O(1) per request."""

    def __init__(self, rate: float, burst: float, blocking: int) -> None:
        self.rate = rate
        self.burst = max(burst, rate)
        self.blocking = blocking
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, when)
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, deque[Callable[[], None]]] = {}

    def admit(self, principal: str) -> bool:
        """Take one request from the principal's bucket; False if it is empty."""
        if not self.rate:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(principal, (self.burst, now))
            tokens = min(self.burst, tokens + (now - when) * self.rate)
            if tokens < 1.0:
                self._buckets[principal] = (tokens, now)
                return False
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            self._buckets[principal] = (tokens - 1.0, now)
            return True

    def begin_blocking(self, principal: str, start: Callable[[], None]) -> None:
        """Run ``start()`` now if the principal has fewer than ``blocking`` operations in
        progress, else when one of them ends (:meth:`end_blocking`): in order, per
        principal, so one principal's backlog never delays another's."""
        with self._lock:
            n = self._busy.get(principal, 0)
            if n >= self.blocking:
                self._waiting.setdefault(principal, deque()).append(start)
                return
            self._busy[principal] = n + 1
        start()

    def end_blocking(self, principal: str) -> None:
        """One of the principal's operations ended: its next waiting one starts."""
        with self._lock:
            queue = self._waiting.get(principal)
            nxt = queue.popleft() if queue else None
            if queue is not None and not queue:
                del self._waiting[principal]
            if nxt is None:
                n = self._busy.get(principal, 1) - 1
                if n:
                    self._busy[principal] = n
                else:
                    self._busy.pop(principal, None)
        if nxt is not None:
            nxt()  # the slot passes on


# No front end took the request: a POST to / is an operation nobody knows (what the AWS SDKs
# expect to hear), anything else a resource that does not exist.
UNKNOWN_OPERATION: Final = Answer(400, b'{"__type":"UnknownOperationException","message":'
                                  b'"unknown operation"}', b"application/x-amz-json-1.1", "-",
                                  "UnknownOperation")
NOT_FOUND: Final = Answer(404, b'{"__type":"UnknownOperationException","message":"no such '
                          b'resource"}', b"application/x-amz-json-1.1", "-", "UnknownOperation")


class Pipeline:
    """The worker's request path over its front ends (see the module docstring)."""

    def __init__(self, frontends: list[Frontend], metrics: Metrics, limits: Limits,
                 request_timeout: float, blocking_threads: int = 16,
                 trusted_proxies: tuple[Network, ...] = (),
                 max_in_progress: int = 1024) -> None:
        self.frontends = frontends
        #: Requests in progress in this worker (from :meth:`serve` to their answer), and the
        #: cap past which a request is refused at once (throttled: the SDKs retry it).
        self.in_progress = 0
        self.max_in_progress = max_in_progress
        self._by_listener: dict[str, list[Frontend]] = {}
        for f in frontends:
            self._by_listener.setdefault(getattr(f, "listener", "main"), []).append(f)
        self.metrics = metrics
        self.limits = limits
        self.request_timeout = request_timeout
        self.trusted_proxies = trusted_proxies
        #: The access log (:class:`kms.api.logs.AccessLog`), or None: off.
        self.access_log: AccessLog | None = None
        self._blocking_threads = blocking_threads
        self._hub: calls.AsyncHub | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        """On the event loop's thread, before the first request."""
        if self._hub is None:
            self._hub = calls.AsyncHub(asyncio.get_running_loop())
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._blocking_threads, thread_name_prefix="kms-blocking")

    def stop(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
        if self._hub is not None:
            self._hub.close()
            self._hub = None

    def serve(self, req: Request, respond: Respond) -> None:
        """Run one request; ``respond`` is called exactly once, now or later, on the
        loop's thread."""
        t0 = time.perf_counter()
        self.in_progress += 1  # every request is answered once, by _answer, which counts it out
        frontend = next((f for f in self._by_listener.get(req.listener, ())
                         if f.accepts(req)), None)
        if frontend is not None and self.in_progress > self.max_in_progress:
            self._answer(frontend.throttled("-"), t0, respond, req, None, frontend.name)
            return
        if frontend is None:
            self._answer(UNKNOWN_OPERATION if req.method == "POST" and req.path == "/"
                         else NOT_FOUND, t0, respond, req, None, "-")
            return
        if self._hub is None:
            self.start()
        assert self._hub is not None
        fe: Frontend = frontend

        def done(ok: bool, value: Any) -> None:
            if ok:
                if value is not None:  # None: handed to the thread pool, answered from there
                    answer, call = value
                    self._answer(answer, t0, respond, req, call, fe.name)
            else:  # the front end answers every error itself: this is a bug of ours
                log.error("internal error in the %s front end", fe.name, exc_info=value)
                self._answer(fe.internal_error("-"), t0, respond, req, None, fe.name)

        self._hub.spawn(self._prepare_and_run, (fe, req, t0, respond), self.request_timeout,
                        done)

    def _prepare_and_run(self, fe: Frontend, req: Request, t0: float, respond: Respond
                         ) -> tuple[Answer, Call | None] | None:
        """In a request greenlet: authenticate, apply the limits, run or hand over."""
        prepared = fe.prepare(req)
        if isinstance(prepared, Answer):
            return prepared, None
        call = prepared
        if not self.limits.admit(call.principal):
            return fe.throttled(call.operation), call
        if not call.blocking:
            return call.run(), call
        self._run_blocking(fe, call, req, t0, respond)
        return None

    def _run_blocking(self, fe: Frontend, call: Call, req: Request, t0: float,
                      respond: Respond) -> None:
        """On the thread pool, under what is left of the request's deadline (its turn among
        the principal's blocking operations first); past it, and a little more for work
        that is not a token call, the client is answered at once."""
        threads = self._threads
        assert threads is not None
        loop = asyncio.get_running_loop()
        answered = False
        deadline = t0 + self.request_timeout

        def finish(answer: Answer) -> None:
            nonlocal answered
            if not answered:
                answered = True
                timer.cancel()
                self._answer(answer, t0, respond, req, call, fe.name)

        def bounded() -> Answer:
            try:
                left = deadline - time.perf_counter()
                if left <= 0 or answered:
                    return fe.timed_out(call.operation)  # waited its whole turn
                with calls.deadline(left):
                    return call.run()
            finally:
                self.limits.end_blocking(call.principal)

        def ran(job: concurrent.futures.Future[Answer]) -> None:
            exc = job.exception()
            if exc is not None:
                log.error("internal error in %s", call.operation, exc_info=exc)
            answer = fe.internal_error(call.operation) if exc is not None else job.result()
            try:
                loop.call_soon_threadsafe(finish, answer)
            except RuntimeError:  # the loop closed meanwhile (shutdown): nobody to answer
                pass

        def start() -> None:
            threads.submit(bounded).add_done_callback(ran)

        timer = loop.call_later(self.request_timeout * 1.1 + 0.1 - (time.perf_counter() - t0),
                                lambda: finish(fe.timed_out(call.operation)))
        self.limits.begin_blocking(call.principal, start)

    def _answer(self, answer: Answer, t0: float, respond: Respond, req: Request,
                call: Call | None, frontend: str) -> None:
        self.in_progress -= 1
        seconds = time.perf_counter() - t0
        self.metrics.observe(answer.operation, answer.result, seconds)
        self.metrics.count(frontend, call.caller if call is not None else None,
                           answer.operation, answer.result)
        if self.access_log is not None or answer.status == 400:  # and failed authentications
            source = call.source if call is not None else source_address(
                req.peer, req.headers.get("x-forwarded-for"), self.trusted_proxies)
            log_request(self.access_log, answer.operation, answer.status, answer.result,
                        seconds, source, call.caller if call is not None else None,
                        req.headers, req.body, answer.body)
        if answer.headers:
            respond(answer.status, answer.body, answer.content_type, answer.headers)
        else:
            respond(answer.status, answer.body, answer.content_type)
