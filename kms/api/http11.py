"""A lean HTTP/1.1 protocol for ``hsmpool serve``, in place of uvicorn's ASGI one.

uvicorn still runs the server (sockets, TLS, worker processes, signals, the ASGI lifespan
that builds each worker's service); this protocol class, given to it as ``http=``, parses
requests with httptools and hands each to :meth:`kms.api.app.KmsApp.serve` directly, without
building ASGI scope and message dicts, and writes each response with one ``write``. Measured
on this project's 2-core machine: the per-request cost of uvicorn's protocol and ASGI
plumbing was the largest single item after the service itself.

What it does (RFC 9112 as far as the SDKs need it):

* keep-alive (HTTP/1.1 default; ``Connection: close``; HTTP/1.0 closes unless keep-alive);
* pipelined requests are answered in order, one at a time per connection; reading pauses
  while more than a few are queued;
* ``Content-Length`` and chunked request bodies (httptools decodes them); ``Expect:
  100-continue`` is answered before the body is read;
* limits: request line and headers 16 KiB (431), body ``KmsApp.max_body`` (413, before the
  body is read when it is declared), malformed requests (400); each answered, then closed;
* time: a connection must deliver each complete request within ``timeout_keep_alive``
  seconds of the previous response (or of connecting): a slow sender is disconnected, not
  waited for; shutdown closes idle connections at once and busy ones after their response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Final

import httptools

log = logging.getLogger("hsmpool.server")

MAX_HEAD: Final = 16 * 1024
MAX_QUEUED: Final = 8  # pipelined requests waiting behind the one being answered

_REASONS: Final = {200: b"OK", 204: b"No Content", 303: b"See Other",
                   304: b"Not Modified", 400: b"Bad Request", 401: b"Unauthorized",
                   403: b"Forbidden", 404: b"Not Found", 409: b"Conflict",
                   415: b"Unsupported Media Type", 429: b"Too Many Requests",
                   405: b"Method Not Allowed", 408: b"Request Timeout",
                   413: b"Payload Too Large", 414: b"URI Too Long",
                   431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
                   503: b"Service Unavailable"}
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (
            status, _REASONS.get(status, b"Status"))
    return line


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "url")

    def __init__(self, method: str, url: bytes, headers: dict[str, str], body: bytes,
                 keep_alive: bool) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class KmsHttpProtocol(asyncio.Protocol):
    """One client connection. Constructed by uvicorn: ``(config, server_state, app_state,
    _loop)``; the application is ``config.loaded_app`` (a :class:`KmsApp`, possibly wrapped
    by uvicorn's middleware, which is looked through)."""

    def __init__(self, config: Any, server_state: Any, app_state: Any = None,
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 listener: str = "main") -> None:
        if not config.loaded:
            config.load()
        app = config.loaded_app
        while not hasattr(app, "serve") and hasattr(app, "app"):
            app = app.app
        self.app = app
        self.listener = listener  # which port: KmsApp.serve routes by it
        self.max_body: int = app.max_body
        self.loop = _loop or asyncio.get_event_loop()
        self.connections: set[Any] = server_state.connections
        self.idle_timeout: float = float(config.timeout_keep_alive)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: str | None = None
        self.scheme = "http"
        self.queue: deque[_Request] = deque()
        self.busy = False
        self.closing = False
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None
        # the request being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: not a subclass
        self.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.closing = True
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"protocol upgrades are not supported")
        except httptools.HttpParserCallbackError as exc:
            why = exc.__context__
            if isinstance(why, _Refused):
                self._fail(why.status, why.message)
            else:
                log.error("internal error in the HTTP protocol", exc_info=why)
                self._fail(500, b"internal error")
        except httptools.HttpParserError:
            self._fail(400, b"malformed HTTP request")

    def eof_received(self) -> bool | None:
        # The client finished sending: answer what is queued, then close.
        self.closing = True
        if not self.busy and not self.queue:
            self._close()
        # Keep the transport open for the responses in progress. Not over TLS: a TLS
        # transport closes at the client's close_notify whatever this says, and logs a
        # warning ("returning true from eof_received() has no effect when using ssl") for
        # every such client if it is told to stay open.
        return self.scheme != "https"

    def pause_writing(self) -> None:  # the client reads slowly: stop reading from it too
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._maybe_resume()

    # --- uvicorn's shutdown ------------------------------------------------------------

    def shutdown(self) -> None:
        self.closing = True
        if not self.busy and not self.queue:
            # An idle TLS connection is dropped, not closed: a TLS close waits for the
            # client's close_notify (up to the loop's 30 s), which an idle keep-alive client
            # never sends, and the server's shutdown would wait for it.
            self._close(abort=self.scheme == "https")

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD:
            raise _Refused(414, b"request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD:
            raise _Refused(431, b"request headers too large")
        key = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        headers = self._headers
        headers[key] = headers[key] + "," + v if key in headers else v

    def on_headers_complete(self) -> None:
        declared = self._headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _Refused(400, b"bad Content-Length") from None
            if size > self.max_body:
                raise _Refused(413, b"request body larger than %d bytes" % self.max_body)
        if self._headers.get("expect", "").lower() == "100-continue" \
                and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body:
            raise _Refused(413, b"request body larger than %d bytes" % self.max_body)
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        req = _Request(self.parser.get_method().decode("latin-1"), self._url, self._headers,
                       body, self.parser.should_keep_alive())
        self._body = []
        if self.busy:
            self.queue.append(req)
            if len(self.queue) >= MAX_QUEUED and self.transport is not None \
                    and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        self._start(req)

    # --- requests ----------------------------------------------------------------------

    def _start(self, req: _Request) -> None:
        self.busy = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        url = req.url
        q = url.find(b"?")
        path, query = (url, "") if q < 0 else (url[:q], url[q + 1:].decode("latin-1"))
        keep_alive = req.keep_alive

        def respond(status: int, body: bytes, content_type: bytes,
                    headers: tuple[tuple[bytes, bytes], ...] = (), /) -> None:
            self._respond(status, body, content_type, keep_alive, headers)

        try:
            self.app.serve(req.method, path.decode("latin-1"), query, req.headers, req.body,
                           self.peer, respond, self.listener)
        except Exception:  # noqa: BLE001 - a bug of the application: answer, keep serving
            log.exception("internal error")
            self._respond(500, b'{"__type":"InternalFailure","message":"internal error"}',
                          b"application/json", False)

    def _respond(self, status: int, body: bytes, content_type: bytes,
                 keep_alive: bool, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away meanwhile
        close = self.closing or not keep_alive
        extra = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers
                         if b"\r" not in value and b"\n" not in value) if headers else b""
        head = b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n" % (
            _status_line(status), content_type, len(body), extra,
            b"connection: close\r\n" if close else b"")
        transport.write(head + body)
        self.busy = False
        if close:
            self._close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self._maybe_resume()
            self._start(nxt)
        else:
            self._arm_timer()

    def _fail(self, status: int, message: bytes) -> None:
        """A request we refuse before it reaches the application: answer and close."""
        if self.busy:
            self.closing = True  # the answer in progress goes first; then close
            self.queue.clear()
            return
        body = b'{"__type":"%s","message":"%s"}' % (
            b"RequestEntityTooLargeException" if status == 413 else b"InvalidRequest",
            message)
        self.closing = True
        self._respond(status, body, b"application/x-amz-json-1.1", False)

    # --- connection management ---------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.idle_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.busy:
            self._close()

    def _maybe_resume(self) -> None:
        if self.paused and self.transport is not None and len(self.queue) < MAX_QUEUED // 2:
            self.paused = False
            self.transport.resume_reading()

    def _close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                if abort:
                    self.transport.abort()
                else:
                    self.transport.close()


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.message = message
