"""``hsmpool serve``: uvicorn (httptools, uvloop) on a socket bound by the parent, one
worker process per core by default.

Start-up, in the parent, before any worker exists (:mod:`kms.server.startup`): the
configuration is validated (``[server]`` with the command line's overrides), the TLS
certificate and key are loaded, the seed file is parsed, the socket is bound, and the
service is opened once — every token found and logged in (a token missing or refusing login
is left out and reported, see ``[pool] require_all_tokens``), the domain keys checked, the
store migrated — the seed applied and the startup summary printed. Any failure is one line
on stderr and a non-zero exit (2 for configuration, 1 for tokens, the store or the address).

* One worker: the parent serves, with the service it opened.
* N workers: the parent closes its service (the pool's PKCS#11 libraries are finalised
  there) and starts N fresh interpreters (:mod:`kms.server.worker`, supervised by
  :mod:`kms.server.supervisor`), each opening its own service and audit segment and serving on
  the parent's socket; each publishes its metrics once a second to the server's state
  folder (:mod:`kms.api.metrics`).

"hsmpool: serving AWS KMS on URL (N workers)" is printed once every worker serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from kms.api import logs
from kms.api.app import KmsApp
from kms.api.http11 import KmsHttpProtocol
from kms.server import startup
from kms.server.startup import StartupError

if TYPE_CHECKING:
    import uvicorn

    from kms.config import ServerSettings
    from kms.service import Kms

CONFIG_ENV = "HSMPOOL_CONFIG"


def make_app() -> KmsApp:
    """A uvicorn factory (``kms.server.run:make_app``; benchmarks' profiler): the
    configuration path comes from ``$HSMPOOL_CONFIG``."""
    from kms.service import Kms

    config = os.environ.get(CONFIG_ENV, "var/hsmpool.toml")

    def build() -> Kms:
        segment = f"{socket.gethostname()}-{os.getpid()}"
        kms = Kms.open(config, audit_segment=segment)
        kms.start_scheduler(60.0)
        kms.start_watching()
        return kms

    return KmsApp(build)


def say(line: str) -> None:
    print(f"hsmpool: {line}", file=sys.stderr, flush=True)


def _workers_text(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


# --- uvicorn -----------------------------------------------------------------------------


#: The server's other listeners, by name (the application routes by it): the KMS-instance
#: API's (HTTPS with its own TLS folder) and the operators' (plain HTTP: /metrics, health).
INSTANCE: Final = "kms-instance"
OPS: Final = "ops"
Extra = Mapping[str, socket.socket]


def _listener_tls(name: str, server: ServerSettings) -> ssl.SSLContext | None:
    if name == INSTANCE:
        from kms.server import instance_tls

        return instance_tls.context(server.kms_instance_tls_dir)
    return None


def _uvicorn_server(app: KmsApp, server: ServerSettings, on_ready: Callable[[], None],
                    extra: Extra) -> uvicorn.Server:
    import uvicorn

    class ReadyServer(uvicorn.Server):
        extra_servers: list[asyncio.AbstractServer] = []

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                # Each other listener: our protocol on its own socket (and TLS context),
                # answered by the same application, which routes by the listener's name.
                loop = asyncio.get_running_loop()
                config, state = self.config, self.server_state
                self.extra_servers = []
                for name, sock in extra.items():
                    self.extra_servers.append(await loop.create_server(
                        functools.partial(KmsHttpProtocol, config, state, None, loop,
                                          listener=name),
                        sock=sock, ssl=_listener_tls(name, server), backlog=2048))
                on_ready()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.metrics.stop_publishing(app.kms)
            for listening in self.extra_servers:
                listening.close()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        lambda: app,
        factory=True,
        loop="uvloop",
        http=KmsHttpProtocol,  # our lean HTTP/1.1 protocol (kms/api/http11.py)
        ws="none",
        lifespan="on",
        access_log=False,  # ours is kms/api/logs.py
        # The source address of a request is the TCP peer unless it is one of the
        # [server] trusted_proxies (kms/api/netaddr.py); uvicorn's own proxy handling would
        # believe X-Forwarded-For from 127.0.0.1, which any local client can send.
        proxy_headers=False,
        log_level=server.log_level,
        ssl_certfile=server.tls_cert,
        ssl_keyfile=server.tls_key,
        timeout_keep_alive=30,
        backlog=2048,
        # No Server/Date headers: the SDKs do not read them, and uvicorn validates every
        # header it writes (a measurable share of a ~90 µs request).
        server_header=False,
        date_header=False,
    )
    return ReadyServer(config)


def _ignore(_signum: int, _frame: object) -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down: with this as the
    handler it then returns, and the process exits normally (cleanup runs)."""


def run_app(app: KmsApp, sock: socket.socket, server: ServerSettings,
            on_ready: Callable[[], None], *, extra: Extra | None = None) -> bool:
    """Serve ``app`` on ``sock`` (and on the ``extra`` listeners) until SIGTERM/SIGINT;
    False if uvicorn did not start."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _ignore)

    def ready() -> None:
        if app.metrics.share is not None:
            app.metrics.start_publishing(asyncio.get_running_loop(), app.kms)
        on_ready()

    uv = _uvicorn_server(app, server, ready, extra or {})
    try:
        uv.run(sockets=[sock])
    except SystemExit:  # uvicorn's way of saying its startup failed
        return False
    return bool(uv.started)


def setup_app(kms: Kms, server: ServerSettings, state_dir: str | None = None) -> KmsApp:
    """The application of one worker over its service."""
    from kms.api.logs import AccessLog
    from kms.api.metrics import MetricsShare

    app = KmsApp(kms)
    if server.access_log != "off":
        app.access_log = AccessLog(server.access_log)
    if state_dir is not None:
        app.metrics.share = MetricsShare(state_dir)
    return app


# --- the state folder ------------------------------------------------------------------


def _make_state_dir(base: str) -> Path:
    """``<state_dir>/server-<pid>`` (0700), after removing those of servers gone."""
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in root.glob("server-*"):
        try:
            pid = int(old.name.split("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass
    d = root / f"server-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    return d


# --- serve -------------------------------------------------------------------------------


def serve(config: str, overrides: Mapping[str, Any] | None = None, *,
          prepare: Callable[[Kms], list[str]] | None = None) -> int:
    """Run ``hsmpool serve``; returns the exit status. ``overrides`` are ``[server]``
    values from the command line; ``prepare(kms)`` runs after the seed (``--dev`` makes its
    credential there) and returns lines to print."""
    try:
        pool_cfg, settings = startup.load_settings(config, overrides)
        server = settings.server
        logs.configure(server.log_level)
        startup.check_tls(server)
        seed = None
        if server.seed is not None:
            from kms.server.seed import SeedError, load_seed

            try:
                seed = load_seed(server.seed)
            except SeedError as exc:
                raise StartupError(f"seed file: {exc}", startup.EXIT_CONFIG) from None
        workers = server.worker_count
        instance_tls_dir = startup.check_instance_tls(server)
        sock = startup.bind(server.host, server.port)
    except StartupError as exc:
        say(exc.message)
        return exc.exit_code
    extra: dict[str, socket.socket] = {}
    wanted = ([(INSTANCE, server.host, server.kms_instance_port, "KMS-instance API")]
              if instance_tls_dir is not None else [])
    if server.ops_port >= 0:
        wanted.append((OPS, server.ops_host, server.ops_port, "operators' listener"))
    for name, host, port, what in wanted:
        try:
            extra[name] = startup.bind(host, port)
        except StartupError as exc:
            for s_ in [sock, *extra.values()]:
                s_.close()
            say(f"{what}: {exc.message}")
            return exc.exit_code
    url = startup.listen_url(sock, server.host, server.tls_cert is not None)
    segment = f"{socket.gethostname()}-{os.getpid()}"
    socks = [sock, *extra.values()]
    try:
        kms = startup.open_service(pool_cfg, settings, segment=segment,
                                   discard_if_empty=workers > 1)
    except StartupError as exc:
        for s_ in socks:
            s_.close()
        say(exc.message)
        return exc.exit_code
    try:
        lines = []
        if seed is not None:
            from kms.server.seed import SeedError, apply_seed

            try:
                lines += apply_seed(kms, seed)
            except SeedError as exc:
                raise StartupError(f"seed file {server.seed}: {exc}",
                                   startup.EXIT_CONFIG) from None
        if prepare is not None:
            lines += prepare(kms)
        lines += startup.summary(kms, workers, url)
        if INSTANCE in extra and instance_tls_dir is not None:
            lines.append(f"KMS-instance API on "
                         f"{startup.listen_url(extra[INSTANCE], server.host, True)} "
                         f"(CA file {instance_tls_dir / 'ca.pem'})")
        if OPS in extra:
            lines.append(f"operators' listener (/metrics, /healthz, /readyz, /livez) on "
                         f"{startup.listen_url(extra[OPS], server.ops_host, False)}")
    except StartupError as exc:
        kms.close()
        for s_ in socks:
            s_.close()
        say(exc.message)
        return exc.exit_code
    except BaseException:
        kms.close()
        for s_ in socks:
            s_.close()
        raise
    for line in lines:
        say(line)
    serving = f"serving AWS KMS on {url} ({_workers_text(workers)})"
    node = _Node(settings.database, sock.getsockname()[1], url)
    try:
        if workers == 1:
            return _serve_here(kms, sock, server, serving, node, extra)
        kms.close()  # the workers open their own pools; nothing PKCS#11 crosses a process
        return _serve_workers(config, overrides or {}, sock, server, workers, serving, node,
                              extra)
    finally:
        node.close()


class _Node:
    """This node's heartbeat (kms/cluster.py), on a store connection of its own (the
    service's is closed by the lifespan, or in the parent of workers before they start)."""

    def __init__(self, database: str, port: int, url: str) -> None:
        self._database, self._port, self._url = database, port, url
        self._store: Any = None
        self._beat: Any = None

    def start(self, workers: Callable[[], int]) -> None:
        if self._database == ":memory:":  # serve --dev: nobody else can see its store
            return
        from kms.cluster import Heartbeat
        from kms.store import open_store

        try:
            self._store = open_store(self._database)
        except Exception as exc:  # noqa: BLE001 - the node serves without heartbeats
            say(f"no heartbeats for this node (the store: {type(exc).__name__}: {exc})")
            return
        self._beat = Heartbeat(self._store, port=self._port, address=self._url,
                               workers=workers)
        self._beat.start()

    def close(self) -> None:
        if self._beat is not None:
            self._beat.stop()
            self._beat = None
        if self._store is not None:
            self._store.close()
            self._store = None


def _serve_here(kms: Kms, sock: socket.socket, server: ServerSettings, serving: str,
                node: _Node, extra: Extra) -> int:
    kms.start_scheduler(60.0)
    kms.start_watching()  # PostgreSQL: other nodes' changes are pushed (LISTEN/NOTIFY)
    app = setup_app(kms, server)
    node.start(lambda: 1)
    try:
        started = run_app(app, sock, server, lambda: say(serving), extra=extra)
    finally:
        for s_ in [sock, *extra.values()]:
            s_.close()
        if app.kms is not None:
            app.kms.close()  # idempotent after the lifespan's close
    if not started:
        say("the server did not start (see the lines above)")
        return 1
    return 0


def _serve_workers(config: str, overrides: Mapping[str, Any], sock: socket.socket,
                   server: ServerSettings, workers: int, serving: str, node: _Node,
                   extra: Extra) -> int:
    from kms.server.supervisor import Supervisor

    try:
        state = _make_state_dir(server.state_dir)
    except OSError as exc:
        sock.close()
        say(f"cannot make the state folder under {server.state_dir!r}: {exc.strerror}")
        return 1
    settings_json = json.dumps(dict(overrides))

    def argv(index: int, status_fd: int) -> list[str]:
        return [sys.executable, "-m", "kms.server.worker", "--config", os.path.abspath(config),
                "--overrides", settings_json, "--fd", str(sock.fileno()),
                "--status-fd", str(status_fd), "--state-dir", str(state),
                "--index", str(index),
                *(a for name, s_ in extra.items()
                  for a in ("--listener", f"{name}={s_.fileno()}"))]

    supervisor = Supervisor(argv, sock, workers, extra_socks=tuple(extra.values()))
    node.start(supervisor.serving)
    try:
        code, why = supervisor.run(lambda: say(serving))
    finally:
        for s_ in [sock, *extra.values()]:
            s_.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(state)
    if why:
        say(why)
    return code
