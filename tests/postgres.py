"""A throw-away PostgreSQL cluster for the tests (Debian's ``postgresql`` package).

``initdb`` into a temporary folder owned by the ``postgres`` user (PostgreSQL refuses to run
as root), listening on 127.0.0.1 at a free port with scram-sha-256 password authentication
(so a wrong password is refused as in production), and on a Unix socket in the folder.
The superuser ``postgres`` has a random password (:attr:`PostgresCluster.password`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> str | None:
    """None if a cluster can be made here, else why not."""
    if _bindir() is None:
        return "PostgreSQL is not installed (scripts/setup.sh --test installs it)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    if os.geteuid() != 0:
        return "making a cluster as the postgres user needs root"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


class PostgresCluster:
    def __init__(self, directory: Path) -> None:
        bindir = _bindir()
        assert bindir is not None
        self.bindir = bindir
        self.directory = directory
        self.data = directory / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.password = secrets.token_urlsafe(18)
        self._started = False

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.directory, "postgres", "postgres")
        os.chmod(self.directory, 0o700)
        pwfile = self.directory / "pw"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        self._as_postgres(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "--pwfile", str(pwfile), "--auth-local=trust",
                          "--auth-host=scram-sha-256", "-E", "UTF8")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                     f"unix_socket_directories = '{self.directory}'\n"
                     "fsync = off\nsynchronous_commit = off\nmax_connections = 200\n")
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.directory / "log"), "-w", "-t", "60", "start")
        self._started = True

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                                  "immediate", "-w", "stop")
            self._started = False

    def connect(self, **kw: Any) -> Any:
        """A superuser connection (autocommit)."""
        import psycopg

        params = {"host": self.host, "port": self.port, "user": self.user,
                  "password": self.password, "dbname": "postgres", "connect_timeout": 10,
                  "autocommit": True, **kw}
        return psycopg.connect(**params)

    def execute(self, sql: str, *args: Any) -> None:
        with self.connect() as conn:
            conn.execute(sql, args or None)

    def wait_ready(self, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while True:
            try:
                with self.connect():
                    return
            except Exception:
                if time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.2)


@contextlib.contextmanager
def cluster() -> Iterator[PostgresCluster]:
    """A started cluster in a fresh folder under /tmp (the postgres user must reach it: the
    test run's own folders are private to root), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="hsmpool-pg-"))
    pg = PostgresCluster(directory)
    try:
        pg.start()
        pg.wait_ready()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(directory, ignore_errors=True)
