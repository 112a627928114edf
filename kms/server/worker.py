"""One worker process of a multi-worker ``hsmpool serve`` (started by
:mod:`kms.server.supervisor`, never by hand)::

    python -m kms.server.worker --config CFG --overrides JSON --fd N --status-fd M
                             --state-dir DIR --index I [--listener NAME=K ...]

It opens its own service (pool, store, audit segment ``<host>-<pid>``), serves on the
inherited listening socket ``N`` (and the other listeners, by name) and writes ``ready``
to the status pipe ``M`` once it serves, or ``failed <one line>`` if it cannot start (and
exits with status 3). It prints no traceback of its own and dies with its parent
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence

from kms.api import logs
from kms.server import startup
from kms.server.startup import StartupError

STARTUP_FAILED = 3


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kms.server.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--listener", action="append", default=[], metavar="NAME=FD",
                        help="another inherited listening socket (kms-instance, ops)")
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--state-dir")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    status = args.status_fd
    try:
        pool_cfg, settings = startup.load_settings(args.config, json.loads(args.overrides))
        server = settings.server
        logs.configure(server.log_level)
        segment = f"{socket.gethostname()}-{os.getpid()}"
        kms = startup.open_service(pool_cfg, settings, segment=segment)
    except StartupError as exc:
        _report(status, f"failed {exc.message}")
        return STARTUP_FAILED
    except Exception as exc:  # noqa: BLE001 - one line to the parent, never a traceback
        _report(status, f"failed {type(exc).__name__}: {exc}")
        return STARTUP_FAILED
    from kms.server.run import run_app, setup_app

    kms.start_scheduler(60.0)
    kms.start_watching()  # PostgreSQL: other nodes' changes are pushed (LISTEN/NOTIFY)
    app = setup_app(kms, server, args.state_dir)
    sock = socket.socket(fileno=args.fd)
    extra = {name: socket.socket(fileno=int(fd))
             for name, fd in (spec.split("=", 1) for spec in args.listener)}
    try:
        started = run_app(app, sock, server, lambda: _report(status, "ready"), extra=extra)
    finally:
        kms.close()
    if not started:
        _report(status, "failed the HTTP server did not start (see the log above)")
        return STARTUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
