"""``hsmpool serve``: uvicorn (httptools, uvloop), one worker process per core by default.

Each worker builds its own :class:`~kms.Kms` in the lifespan startup, after the process
started, so PKCS#11 libraries are initialised in the worker (never inherited across fork),
and writes its own audit segment. Workers share the SQLite metadata store.
"""

from __future__ import annotations

import os
import socket

from kms.api.app import KmsApp
from kms.api.http11 import KmsHttpProtocol

CONFIG_ENV = "HSMPOOL_CONFIG"


def make_app() -> KmsApp:
    """The uvicorn factory: the configuration path comes from ``$HSMPOOL_CONFIG``."""
    from kms.service import Kms

    config = os.environ.get(CONFIG_ENV, "var/hsmpool.toml")

    def build() -> Kms:
        segment = f"{socket.gethostname()}-{os.getpid()}"
        kms = Kms.open(config, audit_segment=segment)
        kms.start_scheduler(60.0)
        return kms

    return KmsApp(build)


def serve(config: str, host: str = "127.0.0.1", port: int = 8080, workers: int | None = None,
          tls_cert: str | None = None, tls_key: str | None = None,
          log_level: str = "warning") -> None:
    import uvicorn

    os.environ[CONFIG_ENV] = os.path.abspath(config)
    n = workers if workers is not None else (os.cpu_count() or 1)
    uvicorn.run(
        "kms.api.server:make_app",
        factory=True,
        host=host,
        port=port,
        workers=n if n > 1 else None,
        loop="uvloop",
        http=KmsHttpProtocol,  # our lean HTTP/1.1 protocol (kms/api/http11.py)
        lifespan="on",
        access_log=False,
        # The source address of a request is the TCP peer unless it is one of the
        # [server] trusted_proxies (kms/api/netaddr.py); uvicorn's own proxy handling would
        # believe X-Forwarded-For from 127.0.0.1, which any local client can send.
        proxy_headers=False,
        log_level=log_level,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        timeout_keep_alive=30,
        backlog=2048,
        # No Server/Date headers: the SDKs do not read them, and uvicorn validates every
        # header it writes (a measurable share of a ~90 µs request).
        server_header=False,
        date_header=False,
    )
