"""One server worker's application: its service, its front ends, health and ``/metrics``.

``KmsApp.serve`` is the door every HTTP request comes through (from our own HTTP/1.1
protocol, :mod:`kms.api.http11`, or from ASGI): ``GET /livez``, ``/readyz``, ``/healthz``
(:mod:`kms.api.health`) and ``GET /metrics`` are answered here; everything else goes through
the shared request pipeline (:mod:`kms.api.pipeline`) to the front end that speaks its
protocol (the AWS KMS JSON protocol, :class:`kms.api.aws_kms.AwsKmsFrontend`; Secrets
Manager; Alibaba's OpenAPI; the operators' console under ``/console``,
:class:`kms.api.console.ConsoleFrontend`; and, on its own port, Alibaba's KMS-instance API,
:class:`kms.api.kms_instance.KmsInstanceFrontend`).

Where an operation runs (see the pipeline): cryptographic and read-only operations run on
the event loop in a request greenlet of the worker's :class:`kms.calls.AsyncHub`, their token
calls on the tokens' executor while the loop serves other connections, so a slow or hung
token costs only the requests that are on it; operations that write state or generate keys
run on a thread pool. All under the request's deadline (``[server] request_timeout``).

The worker's :class:`~kms.Kms` is built in the ASGI lifespan startup (after uvicorn forked
the worker), so PKCS#11 libraries are initialised in the worker, never across fork.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from kms.api import health
from kms.api.alibaba import AlibabaFrontend
from kms.api.auth import Authenticator
from kms.api.aws_kms import AwsKmsFrontend
from kms.api.aws_secrets import AwsSecretsFrontend
from kms.api.console import ConsoleFrontend
from kms.api.kms_instance import KmsInstanceFrontend
from kms.api.logs import AccessLog
from kms.api.metrics import Metrics
from kms.api.netaddr import Network, source_address
from kms.api.peer_health import PeerEjections
from kms.api.pipeline import Headers, Limits, Pipeline, Request, Respond
from kms.service import Kms

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("hsmpool.server")

MAX_BODY: Final = 256 * 1024
_JSON: Final = b"application/json"
_OPS_PATHS: Final = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
_NO_SUCH: Final = b'{"__type":"UnknownOperationException","message":"no such resource"}'
_STARTING: Final = (b'{"__type":"ServiceUnavailableException","message":"the service is '
                    b'starting"}')


class KmsApp:
    """One worker's application over one :class:`Kms` (its own pool and store handles)."""

    def __init__(self, kms: Kms | Callable[[], Kms], *, regions: tuple[str, ...] | None = None,
                 max_body: int | None = None) -> None:
        self._factory = kms if callable(kms) and not isinstance(kms, Kms) else None
        self.kms: Kms | None = kms if isinstance(kms, Kms) else None
        self._regions = regions
        # The body limit: the argument, else ``[server] max_body`` once the service is known.
        self._max_body_arg = max_body
        self.max_body = max_body if max_body is not None else MAX_BODY
        self.metrics = Metrics()
        self.pipeline: Pipeline | None = None
        self.console: ConsoleFrontend | None = None
        self._access_log: AccessLog | None = None
        self._probe: health.StoreProbe | None = None
        if self.kms is not None:
            self._setup(self.kms)

    def _setup(self, kms: Kms) -> None:
        self.kms = kms
        server = kms.settings.server
        self.auth = Authenticator(kms, self._regions or (kms.settings.region,),
                                  server.proxy_networks)
        self.request_timeout = server.request_timeout
        if self._max_body_arg is None:
            self.max_body = server.max_body
        self.console = ConsoleFrontend(kms, self.auth, self.metrics)
        self.metrics.tick_hooks.append(PeerEjections(kms, self.metrics).tick)
        self.pipeline = Pipeline(
            [AwsKmsFrontend(self.auth), AwsSecretsFrontend(self.auth),
             AlibabaFrontend(self.auth), self.console, KmsInstanceFrontend(self.auth)],
            self.metrics,
            Limits(server.rate_limit, server.rate_burst, server.max_blocking_per_principal),
            server.request_timeout, trusted_proxies=server.proxy_networks,
            max_in_progress=server.max_requests_in_progress)
        self.pipeline.access_log = self._access_log

    @property
    def access_log(self) -> AccessLog | None:
        """The access log (``hsmpool serve`` sets it from ``[server] access_log``); None:
        off (failed authentications are logged either way)."""
        return self._access_log

    @access_log.setter
    def access_log(self, log: AccessLog | None) -> None:
        self._access_log = log
        if self.pipeline is not None:
            self.pipeline.access_log = log

    # --- ASGI (uvicorn's lifespan; tests and tools that speak ASGI) ------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    if self.kms is None and self._factory is not None:
                        self._setup(self._factory())
                    if self.pipeline is not None:
                        self.pipeline.start()
                    if self.console is not None:
                        self.console.start(asyncio.get_running_loop())
                except Exception as exc:  # noqa: BLE001 - reported to the server
                    # uvicorn logs the message only if it is not empty: name the type too.
                    log.error("worker startup failed", exc_info=True)
                    await send({"type": "lifespan.startup.failed",
                                "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.console is not None:
                    self.console.stop()
                if self.pipeline is not None:
                    self.pipeline.stop()
                if self.kms is not None:
                    self.kms.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive, declared: int | None) -> bytes | None:
        if declared is not None and declared > self.max_body:
            return None
        chunks = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b""
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1")
            v = value.decode("latin-1")
            headers[key] = headers[key] + "," + v if key in headers else v
        try:
            declared = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError:
            declared = None
        raw = await self._read_body(receive, declared)
        answer: asyncio.Future[tuple[int, bytes, bytes, Headers]] = \
            asyncio.get_running_loop().create_future()

        def respond(status: int, out: bytes, content_type: bytes, extra: Headers = (), /
                    ) -> None:
            if not answer.done():
                answer.set_result((status, out, content_type, extra))

        if raw is None:
            self.metrics.observe("-", "RequestEntityTooLarge", 0.0)
            respond(413, json.dumps({
                "__type": "RequestEntityTooLargeException",
                "message": f"request body larger than {self.max_body} bytes"}).encode(),
                b"application/x-amz-json-1.1")
        else:
            client = scope.get("client")
            self.serve(scope["method"], scope["path"],
                       scope.get("query_string", b"").decode("latin-1"), headers, raw,
                       client[0] if client else None, respond)
        status, out, ctype, extra = await answer
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(out)).encode()), *extra]})
        await send({"type": "http.response.body", "body": out})

    # --- every request -----------------------------------------------------------------

    def serve(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
              peer: str | None, respond: Respond, listener: str = "main") -> None:
        """Answer one HTTP request (headers: lower-case names, repeated ones joined by ",")
        that came in on ``listener`` (``"main"``, or ``"kms-instance"``: the KMS-instance
        API's port).

        ``respond(status, body, content_type)`` is called exactly once, on the event loop's
        thread: at once, or later when the request's token calls or its blocking work are
        done. The body size was checked by the caller (``max_body``).
        """
        if method == "GET" and path in _OPS_PATHS:
            detail = listener == "ops" or self._ops_caller(peer, headers)
            if path == "/livez":
                respond(200, health.LIVE, _JSON)
            elif path != "/metrics":
                self._health(path, respond, detail)
            elif detail:
                text = self.metrics.render(self.kms).encode()
                respond(200, text, b"text/plain; version=0.0.4")
            else:
                respond(404, _NO_SUCH, _JSON)
            return
        if listener == "ops":  # the operators' listener serves nothing else
            respond(404, _NO_SUCH, _JSON)
            return
        if self.pipeline is None:
            respond(503, _STARTING, b"application/x-amz-json-1.1")
            return
        self.pipeline.serve(Request(method, path, query, headers, body, peer, listener),
                            respond)

    def _ops_caller(self, peer: str | None, headers: dict[str, str]) -> bool:
        """Whether a request on an API port may see /metrics and health details: its source
        is in ``[server] ops_networks``, and it did not come through a proxy that is not a
        trusted one (a local reverse proxy would make every client look local)."""
        server = self.kms.settings.server if self.kms is not None else None
        if server is None or peer is None:
            return False
        proxied = "x-forwarded-for" in headers or "forwarded" in headers
        if proxied and not self._trusted_peer(peer, server.proxy_networks):
            return False
        source = source_address(peer, headers.get("x-forwarded-for"), server.proxy_networks)
        try:
            addr = ipaddress.ip_address(source or "")
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in server.ops_nets)

    @staticmethod
    def _trusted_peer(peer: str, trusted: tuple[Network, ...]) -> bool:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in trusted)

    def _health(self, path: str, respond: Respond, detail: bool = True) -> None:
        """``/healthz`` or ``/readyz``: the store asked off the loop (kms/api/health.py);
        without ``detail`` only the status (no token, instance or store names)."""
        kms = self.kms
        if kms is None:
            respond(503, health.STARTING, _JSON)
            return
        answer = health.readyz if path == "/readyz" else health.healthz

        def done(store_error: str | None) -> None:
            status, out = answer(kms.health(store_error))
            respond(status, out if detail else health.status_only(out), _JSON)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop: ask the store here
            done(kms.store_error())
            return
        if self._probe is None:
            self._probe = health.StoreProbe(kms)
        self._probe.check(loop, done)
