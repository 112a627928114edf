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
import threading
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
        self.up()

    def up(self) -> None:
        """``pg_ctl start`` on the existing data folder, waiting until it accepts connections
        (after a :meth:`down` in ``immediate`` mode, once it has replayed its WAL)."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.directory / "log"), "-w", "-t", "60", "start")
        self._started = True

    def down(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``, waiting until the server has exited: ``fast`` ends the
        sessions (their transactions rolled back) and checkpoints; ``immediate`` kills
        every process at once, a crash of the database. The data stays for :meth:`up`."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode,
                          "-w", "-t", "60", "stop")
        self._started = False

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

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return [tuple(r) for r in conn.execute(sql, args or None).fetchall()]

    def url(self, dbname: str) -> str:
        """The ``postgresql://`` URL of database ``dbname`` (as the superuser)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t", template: str | None = None) -> str:
        """A new database named ``PREFIX_<random>`` (empty, or a copy of the database
        ``template``, which nothing may be connected to); its URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.execute(f"CREATE DATABASE {name}"
                     + ("" if template is None else f" TEMPLATE {template}"))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (made by :meth:`create_database`), ending any
        session still connected to it."""
        name = url.rsplit("/", 1)[1]
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

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


class TcpRelay:
    """A TCP relay from a loopback port to a PostgreSQL cluster, for a node that loses its
    store without stopping the cluster other tests share: :meth:`cut` is the server going
    away as its clients see it (open connections closed, new ones refused), :meth:`restore`
    its return on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = _free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    close = cut
