"""The ASGI application: AWS KMS JSON 1.1 on ``POST /``, ``GET /healthz``, ``GET /metrics``.

Request path: size check -> ``X-Amz-Target`` -> content type -> SigV4 -> JSON -> the
operation -> JSON response. Every failure is a 4xx with ``{"__type", "message"}`` named as
boto3 expects; a 503 ``DependencyTimeoutException`` past the request's deadline
(``[server] request_timeout``); a 500 only for a fault of the server itself.

Where the operation runs:

* cryptographic and read-only operations run on the event loop, in a request greenlet of
  the worker's :class:`hsmpool.AsyncHub`: their token calls run on the tokens' executors
  while the loop serves other connections, so a slow or hung token costs only the requests
  that are on it (the hub abandons a call past its hang budget or deadline; the pool ejects
  the token and retries elsewhere);
* operations that write state or generate keys (:data:`kms.api.aws_kms.BLOCKING`) run on a
  thread pool with the same deadline: they wait for SQLite commits, the audit trail's
  durable commit and key generation, none of which may hold the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson

import hsmpool
from hsmpool.errors import InstanceNotFoundError
from kms import errors as E
from kms.api import aws_kms
from kms.api.logs import AccessLog, log_request
from kms.api.metrics import Metrics
from kms.api.netaddr import source_address
from kms.api.sigv4 import AuthError, Verifier
from kms.credentials import CredentialStore
from kms.service import Kms, KmsClient, pool_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("hsmpool.server")

MAX_BODY: Final = 256 * 1024
JSON_TYPES: Final = frozenset({"application/x-amz-json-1.1", "application/x-amz-json-1.0"})
_JSON_TYPE: Final = b"application/x-amz-json-1.1"
#: How an answer leaves: ``respond(status, body, content_type)``.
Respond = Callable[[int, bytes, bytes], None]
_PREFIX: Final = "TrentService."


def _error(code: str, message: str) -> bytes:
    return json.dumps({"__type": code, "message": message}).encode()


class KmsApp:
    """One worker's application over one :class:`Kms` (its own pool and store handles)."""

    def __init__(self, kms: Kms | Callable[[], Kms], *, regions: tuple[str, ...] | None = None,
                 max_body: int = MAX_BODY) -> None:
        self._factory = kms if callable(kms) and not isinstance(kms, Kms) else None
        self.kms: Kms | None = kms if isinstance(kms, Kms) else None
        self._regions = regions
        self.max_body = max_body
        self.metrics = Metrics()
        #: The access log (``hsmpool serve`` sets it from ``[server] access_log``); None: off.
        self.access_log: AccessLog | None = None
        self._clients: dict[tuple[str, str | None], KmsClient] = {}
        self._hub: hsmpool.AsyncHub | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self.request_timeout = 10.0
        if self.kms is not None:
            self._setup(self.kms)

    def _setup(self, kms: Kms) -> None:
        self.kms = kms
        self.creds = CredentialStore(kms)
        regions = self._regions or (kms.settings.region,)
        self.verifier = Verifier(self.creds.secret_for, regions)
        self.request_timeout = kms.settings.server.request_timeout
        self.trusted_proxies = kms.settings.server.proxy_networks
        self._creds_version = kms.store.data_version()
        self._creds_checked = time.monotonic()

    def _fresh_credentials(self) -> None:
        """Forget cached principals, their clients, the SigV4 signing keys and the
        authorization decisions when another process committed (``credentials create``
        replaces a principal's policies; ``credentials disable|delete`` revokes a key):
        checked at most every 50 ms, as the service checks its key caches."""
        t = time.monotonic()
        if t - self._creds_checked < 0.05:
            return
        self._creds_checked = t
        assert self.kms is not None
        dv = self.kms.store.data_version()
        if dv == self._creds_version:
            return
        self._creds_version = dv
        self.verifier.forget()  # no signing key of a revoked secret outlives the change
        self.creds.forget()
        self._clients.clear()
        authz = self.kms._authorizer
        if authz is not None:
            authz.invalidate()  # after the new principals are what callers get

    # --- ASGI --------------------------------------------------------------------------

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
                    self._start_executors()
                except Exception as exc:  # noqa: BLE001 - reported to the server
                    # uvicorn logs the message only if it is not empty: name the type too.
                    log.error("worker startup failed", exc_info=True)
                    await send({"type": "lifespan.startup.failed",
                                "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self._stop_executors()
                if self.kms is not None:
                    self.kms.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start_executors(self) -> None:
        """The hub of this loop and the thread pool of blocking operations."""
        if self._hub is None:
            self._hub = hsmpool.AsyncHub(asyncio.get_running_loop())
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=16, thread_name_prefix="kms-blocking")

    def _stop_executors(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
        if self._hub is not None:
            self._hub.close()
            self._hub = None

    # --- HTTP, from any front door --------------------------------------------------------

    def serve(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
              peer: str | None, respond: Respond) -> None:
        """Answer one HTTP request (headers: lower-case names, repeated ones joined by ",").

        ``respond(status, body, content_type)`` is called exactly once, on the event loop's
        thread: at once, or later when the request's token calls or its blocking work are
        done. The body size was checked by the caller (``max_body``).
        """
        t0 = time.perf_counter()
        if method == "GET":
            if path == "/healthz":
                status, out = self._health()
                respond(status, out, b"application/json")
                return
            if path == "/metrics":
                text = self.metrics.render(self.kms).encode()
                respond(200, text, b"text/plain; version=0.0.4")
                return
        if self.kms is None:
            respond(503, _error("ServiceUnavailableException", "the service is starting"),
                    _JSON_TYPE)
            return
        if method != "POST" or path != "/":
            respond(404, _error("UnknownOperationException", "no such resource"), _JSON_TYPE)
            return
        if self._hub is None:
            self._start_executors()
        assert self._hub is not None and self._threads is not None
        target = headers.get("x-amz-target", "")
        op = target[len(_PREFIX):] if target.startswith(_PREFIX) else ""
        metrics = self.metrics
        access = self.access_log

        def done(ok: bool, value: Any) -> None:
            if ok:
                status, out, name, result = value
            else:  # _handle answers every error itself: this is a bug of ours
                log.error("internal error in %s", op or "-", exc_info=value)
                status, out, name, result = (500, _error("KMSInternalException",
                                                         "internal error"), op, "Internal")
            elapsed = time.perf_counter() - t0
            metrics.observe(name, result, elapsed)
            if access is not None or status == 400:  # the access log; failed authentications
                log_request(access, self, name, status, result, elapsed, peer, headers, body,
                            out)
            respond(status, out, _JSON_TYPE)

        if op not in aws_kms.BLOCKING:
            self._hub.spawn(self._handle, (path, query, headers, body, peer),
                            self.request_timeout, done)
            return
        self._run_blocking(op, (path, query, headers, body, peer), done)

    def _run_blocking(self, op: str, args: tuple[Any, ...],
                      done: Callable[[bool, Any], None]) -> None:
        """On the thread pool, with the request's deadline; past it (and a little more for
        work that is not a token call) the client gets a retryable 503 at once."""
        assert self._threads is not None
        loop = asyncio.get_running_loop()
        answered = False

        def finish(ok: bool, value: Any) -> None:
            nonlocal answered
            if not answered:
                answered = True
                timer.cancel()
                done(ok, value)

        def late() -> None:
            finish(True, (503, _error(E.DependencyTimeout.code,
                                      "the request did not finish in time; retry"),
                          op or "-", E.DependencyTimeout.code))

        def ran(job: concurrent.futures.Future[Any]) -> None:
            exc = job.exception()
            try:
                loop.call_soon_threadsafe(finish, exc is None, exc if exc else job.result())
            except RuntimeError:  # the loop closed meanwhile (shutdown): nobody to answer
                pass

        timer = loop.call_later(self.request_timeout * 1.1 + 0.1, late)
        self._threads.submit(self._handle_bounded, *args).add_done_callback(ran)

    def _handle_bounded(self, *args: Any) -> tuple[int, bytes, str, str]:
        with hsmpool.deadline(self.request_timeout):
            return self._handle(*args)

    # --- ASGI (uvicorn's own protocol, tests) ------------------------------------------------

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
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int, bytes, bytes]] = loop.create_future()

        def respond(status: int, out: bytes, content_type: bytes) -> None:
            if not answer.done():
                answer.set_result((status, out, content_type))

        if raw is None:
            self.metrics.observe("-", "RequestEntityTooLarge", 0.0)
            respond(413, _error("RequestEntityTooLargeException",
                                f"request body larger than {self.max_body} bytes"), _JSON_TYPE)
        else:
            client = scope.get("client")
            self.serve(scope["method"], scope["path"],
                       scope.get("query_string", b"").decode("latin-1"), headers, raw,
                       client[0] if client else None, respond)
        status, out, ctype = await answer
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    # --- the protocol ------------------------------------------------------------------

    def _handle(self, path: str, query: str, headers: dict[str, str], raw: bytes,
                peer: str | None) -> tuple[int, bytes, str, str]:
        target = headers.get("x-amz-target", "")
        op = target[len(_PREFIX):] if target.startswith(_PREFIX) else ""
        handler = aws_kms.OPERATIONS.get(op)
        if handler is None:
            return 400, _error("UnknownOperationException",
                               "unknown operation"), "-", "UnknownOperation"
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            return 400, _error("SerializationException",
                               "Content-Type must be application/x-amz-json-1.1"), op, \
                "Serialization"
        assert self.kms is not None
        self._fresh_credentials()
        try:
            cred = self.verifier.verify("POST", path, query, headers, raw)
            client = self._client(cred.access_key_id, peer, headers.get("x-forwarded-for"))
        except AuthError as exc:
            return 400, _error(exc.code, exc.message), op, exc.code
        except (E.KmsError, InstanceNotFoundError) as exc:
            # InstanceNotFoundError: the access key's instance is no longer configured.
            return 400, _error("UnrecognizedClientException",
                               "The security token included in the request is invalid."), \
                op, type(exc).__name__
        except hsmpool.HsmPoolError as exc:
            # The access key's secret is unwrapped in a token on first use: no token could
            # do it now (all ejected, or past the deadline). Retryable, like the operation.
            err = pool_error(exc)
            return err.status, _error(err.code, err.message), op, err.code
        try:
            # orjson (about 10x faster than json here) refuses lone surrogates and nesting
            # deeper than 1024 with a JSONDecodeError, a ValueError: both would otherwise fail
            # later, in UTF-8 encoding (SQLite, the ciphertext context), as a 500.
            body = orjson.loads(raw) if raw else {}
        except (ValueError, UnicodeError, RecursionError):
            return 400, _error("SerializationException", "the body is not valid JSON"), op, \
                "Serialization"
        if not isinstance(body, dict):
            return 400, _error("SerializationException", "the body must be a JSON object"), \
                op, "Serialization"
        try:
            out = handler(client, body)
        except E.KmsError as exc:
            return exc.status, _error(exc.code, exc.message), op, exc.code
        except Exception:  # noqa: BLE001 - a bug of ours: log the type, never the data
            log.exception("internal error in %s", op)
            return 500, _error("KMSInternalException", "internal error"), op, "Internal"
        return 200, orjson.dumps(out), op, "ok"

    def _client(self, access_key_id: str, peer: str | None, forwarded_for: str | None
                ) -> KmsClient:
        """The service client of an access key seen from one address (cached per pair)."""
        source_ip = source_address(peer, forwarded_for, self.trusted_proxies)
        key = (access_key_id, source_ip)
        client = self._clients.get(key)
        if client is None:
            assert self.kms is not None
            principal = self.creds.principal_for(access_key_id)
            client = self.kms.client(principal.instance, principal, source_ip)
            if len(self._clients) > 10000:
                self._clients.clear()
            self._clients[key] = client
        return client

    def _health(self) -> tuple[int, bytes]:
        if self.kms is None:
            return 503, json.dumps({"status": "starting"}).encode()
        kms = self.kms
        tokens = {name: s.state for name, s in kms.pool.stats().items()}
        instances = {name: len(inst.healthy_members()) for name, inst in
                     kms.pool.instances.items()}
        try:
            kms.store.data_version()
            store_ok = True
        except Exception:  # noqa: BLE001
            store_ok = False
        missing = kms.pool.missing
        tokens.update((name, "missing") for name in missing)
        ok = store_ok and all(n > 0 for n in instances.values())
        body = {"status": ("ok" if not missing else "degraded") if ok else "unavailable",
                "store": "ok" if store_ok else "error",
                "tokens": tokens, "healthy_tokens_per_instance": instances}
        if missing:  # tokens left out at start (degraded start): which, and why
            body["missing_tokens"] = dict(missing)
        return (200 if ok else 503), json.dumps(body).encode()
