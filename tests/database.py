"""The metadata store engine of the service and server tests: SQLite, or PostgreSQL with
``HSMPOOL_TEST_DATABASE=postgresql``.

Every store those tests open (tests/kms, tests/server: the ``kms`` fixture, the session's
``hsmpool serve``, each server a test starts, each ``Kms`` a test builds) is named by
:func:`database_for`: the SQLite file the test gives, or, on the PostgreSQL pass, a fresh
database of the session's throw-away cluster (tests/postgres.py; a copy of one migrated
empty store), which tests/conftest.py starts for the whole run on that pass. Tests about
the SQLite file itself are marked ``@pytest.mark.sqlite_only(reason=...)`` and skipped on
the PostgreSQL pass. Raw reads and writes of a store's tables (a test tampering with a row,
or checking what is stored) go through :func:`connect`, which speaks either engine with
SQLite's ``?`` parameters.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kms.store import is_url
from tests.postgres import PostgresCluster

#: "sqlite" (the default) or "postgresql".
ENGINE = os.environ.get("HSMPOOL_TEST_DATABASE", "sqlite")
if ENGINE not in ("sqlite", "postgresql"):
    raise RuntimeError(f"HSMPOOL_TEST_DATABASE={ENGINE!r}: sqlite or postgresql")
#: Whether this is the PostgreSQL pass.
POSTGRES = ENGINE == "postgresql"

_cluster: PostgresCluster | None = None
_made: dict[str, str] = {}  # SQLite path -> the URL of the database standing for it
_template: str | None = None  # the cluster's database of an empty, migrated store


def attach(pg: PostgresCluster | None) -> None:
    """Use ``pg`` for :func:`database_for` (tests/conftest.py, on the PostgreSQL pass)."""
    global _cluster, _template
    _cluster = pg
    _template = None
    _made.clear()


def cluster() -> PostgresCluster:
    """The session's cluster of the PostgreSQL pass."""
    if _cluster is None:
        raise RuntimeError("no PostgreSQL cluster: HSMPOOL_TEST_DATABASE=postgresql makes "
                           "tests/conftest.py start one for the session")
    return _cluster


def database_for(sqlite_path: Path | str) -> str:
    """The ``[kms] database`` of the store that stands for the SQLite file ``sqlite_path``
    (an absolute path): the path itself; on the PostgreSQL pass, the URL of a database of
    the session's cluster, new on the first call for that path and the same one on the
    next calls (as the same file is the same store: a service reopened on it, or a
    configuration rewritten for it, finds its data)."""
    if not POSTGRES:
        return str(sqlite_path)
    path = Path(sqlite_path)
    if not path.is_absolute():
        raise ValueError(f"database_for({str(sqlite_path)!r}): give an absolute path")
    key = str(path)
    if key not in _made:
        _made[key] = cluster().create_database("t", template=_empty_store())
    return _made[key]


def _empty_store() -> str:
    """The name of a database holding an empty store, migrated once per session (by
    :class:`kms.store.postgres.PostgresStore`, then closed): the stores of the tests are
    copies of it, a fresh store each, without running the migrations every time (about a
    third of making one). Migrating from nothing is the contract tests' (tests/store) and
    the PostgreSQL node tests' (their databases are made empty)."""
    global _template
    if _template is None:
        from kms.store.postgres import PostgresStore

        pg = cluster()
        url = pg.create_database("template")
        PostgresStore(url).close()
        name = url.rsplit("/", 1)[1]
        # A closed connection's server process may still be exiting: a copy needs none.
        deadline = time.monotonic() + 30
        while pg.query("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                       name)[0][0]:
            assert time.monotonic() < deadline, f"sessions still on {name}"
            time.sleep(0.01)
        _template = name
    return _template


def drop_database(database: str) -> None:
    """Drop a database :func:`database_for` made (nothing for a SQLite file)."""
    if is_url(database) and _cluster is not None:
        for key in [k for k, url in _made.items() if url == database]:
            del _made[key]
        _cluster.drop_database(database)


def database_line(sqlite_path: Path | str) -> str:
    """A ``[kms]`` section's ``database = "..."`` line (with its newline) for the store of
    ``sqlite_path`` (:func:`database_for`)."""
    return f'database = "{database_for(sqlite_path)}"\n'


def database_of(store: Any) -> str:
    """The ``[kms] database`` of an open store (a SQLite store's path, a PostgreSQL one's
    URL)."""
    return str(getattr(store, "url", None) or store.path)


class Rows(list[tuple[Any, ...]]):
    """The rows of a statement (tuples), with a cursor's ``fetchone``/``fetchall``."""

    def fetchone(self) -> tuple[Any, ...] | None:
        return self[0] if self else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self)


class Raw:
    """A plain connection to a store's database, for the tests' own SQL, with ``?``
    parameters on either engine (as :class:`sqlite3.Connection`: :meth:`execute`, and as a
    context manager a transaction, committed on success, rolled back on an exception).

    A transaction that wrote is a write of the store by another process as the services
    see it: on PostgreSQL it also bumps the store's change counter and notifies it, as
    every write of :class:`kms.store.postgres.PostgresStore` does (on SQLite any other
    connection's commit is seen), so the services' caches are dropped."""

    def __init__(self, database: str) -> None:
        self.postgres = is_url(database)
        self._wrote = False
        if self.postgres:
            import psycopg

            self._conn: Any = psycopg.connect(database, connect_timeout=10)
        else:
            self._conn = sqlite3.connect(database)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        if self.postgres:
            sql = sql.replace("%", "%%").replace("?", "%s")
        if not sql.lstrip().upper().startswith(("SELECT", "WITH", "PRAGMA")):
            self._wrote = True
        cur = self._conn.execute(sql, tuple(params))
        return Rows(tuple(r) for r in cur.fetchall()) if cur.description is not None \
            else Rows()

    def commit(self) -> None:
        if self.postgres and self._wrote:
            from kms.store.postgres import CHANNEL

            self._conn.execute(
                "WITH c AS (UPDATE store_changes SET n = n + 1 WHERE id = 1 RETURNING n) "
                f"SELECT pg_notify('{CHANNEL}', n::text) FROM c")
        self._wrote = False
        self._conn.commit()

    def rollback(self) -> None:
        self._wrote = False
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.rollback()


@contextlib.contextmanager
def traced(store: Any) -> Iterator[list[str]]:
    """The SQL statements ``store`` runs while the block runs (SQLite's own statement
    tracing; on PostgreSQL, each statement the store's connections are given)."""
    statements: list[str] = []
    if not is_url(database_of(store)):
        store._db.set_trace_callback(statements.append)
        try:
            yield statements
        finally:
            store._db.set_trace_callback(None)
        return
    from kms.store import postgres

    real = postgres._Db.execute

    def execute(db: Any, sql: str, params: Sequence[Any] | None = None) -> Any:
        if db.store is store:
            statements.append(sql)
        return real(db, sql, params)

    postgres._Db.execute = execute  # type: ignore[method-assign]
    try:
        yield statements
    finally:
        postgres._Db.execute = real  # type: ignore[method-assign]


def connect(database: str) -> Raw:
    """A :class:`Raw` connection to ``database`` (a SQLite file or a ``postgresql://`` URL)."""
    return Raw(database)


def dump(database: str) -> bytes:
    """Every value stored in the tables of ``database``, as bytes (text UTF-8, numbers as
    text): what a reader of the store's files or rows can see, for the tests that look for a
    secret that must not be stored in clear."""
    db = connect(database)
    try:
        if db.postgres:
            tables = [r[0] for r in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        else:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = bytearray()
        for table in sorted(tables):
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        out += bytes(value)
                    elif value is not None:
                        out += str(value).encode()
                    out += b"\0"
        return bytes(out)
    finally:
        db.close()
