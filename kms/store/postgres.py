"""The PostgreSQL metadata store, for several nodes on one database (``[kms] database =
"postgresql://..."``).

The same SQL as every engine (:class:`kms.store.sql.SqlStore`) over psycopg 3 connections
from a small pool: each write is one transaction, committed (and so durable, with the
server's ``synchronous_commit``) before the method returns. Parameters written ``?``/``?N``
are rewritten to psycopg's, and values are bound on the client side (so a NULL parameter
needs no type). Text columns use the "C" collation, so pages come in the same byte order as
in SQLite whatever the database's locale.

The change token is a counter row bumped by every write transaction (another node's write
moves it; so does this process's own, which only costs a cache refill), and the same
transaction NOTIFYs the new counter on :data:`CHANNEL`: :meth:`PostgresStore.watch` LISTENs
for it, so the other nodes drop their caches within milliseconds of the commit instead of
at their next poll. Schema migrations
are versioned in ``store_schema`` and run under an advisory lock, so nodes starting together
migrate once.

An outage is a typed, bounded error: a connection failure, a connection lost mid-statement
or no pooled connection within :attr:`PostgresStore.connect_wait` (2 s, not the pool's 30 s:
the callers run on a worker's event loop) raises :class:`kms.errors.StoreUnavailable` (kind
DependencyTimeout: a retryable 503 on every front end) from psycopg's error. Once one has
been seen the store is *down*: further calls wait only :data:`DOWN_WAIT` for a connection
(the pool reconnects in the background), so a node cut off from its database answers each
request that needs the store at once instead of freezing its event loop; the first call
that gets a working connection again ends it (logged both ways, once).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

from kms.errors import StoreUnavailable
from kms.store.sql import SqlStore

T = TypeVar("T")
log = logging.getLogger("hsmpool.store")

_T: Final = 'TEXT COLLATE "C"'
_F: Final = "DOUBLE PRECISION"

#: The schema, by version (each entry a list of statements). Version 1 is the SQLite
#: schema after its seven migrations, column for column.
MIGRATIONS: Final[list[list[str]]] = [[
    f"""CREATE TABLE instances (
        name {_T} PRIMARY KEY, account {_T} NOT NULL, created {_F} NOT NULL)""",
    f"""CREATE TABLE keys (
        key_id {_T} PRIMARY KEY, instance {_T} NOT NULL, arn {_T} NOT NULL,
        spec {_T} NOT NULL, usage {_T} NOT NULL, origin {_T} NOT NULL, state {_T} NOT NULL,
        created {_F} NOT NULL, description {_T} NOT NULL DEFAULT '', deletion_date {_F},
        rotation_enabled INTEGER NOT NULL DEFAULT 0,
        rotation_period_days INTEGER NOT NULL DEFAULT 365, next_rotation {_F},
        primary_version {_T}, min_decrypt_version INTEGER NOT NULL DEFAULT 1,
        tags {_T} NOT NULL DEFAULT '[]', policy {_T}, import_valid_to {_F},
        revision BIGINT NOT NULL, material_salt BYTEA, material_id BYTEA, purged_at {_F})""",
    "CREATE INDEX keys_by_instance ON keys (instance, key_id)",
    "CREATE INDEX keys_due ON keys (state, next_rotation)",
    f"""CREATE TABLE key_versions (
        version_id {_T} PRIMARY KEY, key_id {_T} NOT NULL REFERENCES keys (key_id),
        number INTEGER NOT NULL, created {_F} NOT NULL, blob BYTEA,
        public_key BYTEA NOT NULL DEFAULT '\\x'::bytea, imported INTEGER NOT NULL DEFAULT 0,
        UNIQUE (key_id, number))""",
    f"""CREATE TABLE aliases (
        instance {_T} NOT NULL, name {_T} NOT NULL, key_id {_T} NOT NULL REFERENCES keys (key_id),
        created {_F} NOT NULL, updated {_F} NOT NULL, PRIMARY KEY (instance, name))""",
    "CREATE INDEX aliases_by_key ON aliases (key_id)",
    f"""CREATE TABLE import_tokens (
        token_id {_T} PRIMARY KEY, key_id {_T} NOT NULL, wrapping_algorithm {_T} NOT NULL,
        wrapping_key_spec {_T} NOT NULL, wrapping_blob BYTEA NOT NULL,
        public_key BYTEA NOT NULL, expires {_F} NOT NULL)""",
    f"""CREATE TABLE principals (
        principal_id {_T} PRIMARY KEY, instance {_T} NOT NULL, name {_T} NOT NULL,
        policies {_T} NOT NULL DEFAULT '[]', created {_F} NOT NULL, UNIQUE (instance, name))""",
    f"""CREATE TABLE access_keys (
        access_key_id {_T} PRIMARY KEY,
        principal_id {_T} NOT NULL REFERENCES principals (principal_id),
        secret_blob BYTEA NOT NULL, created {_F} NOT NULL, enabled INTEGER NOT NULL DEFAULT 1)""",
    f"""CREATE TABLE grants (
        grant_id {_T} PRIMARY KEY, key_id {_T} NOT NULL REFERENCES keys (key_id),
        instance {_T} NOT NULL, name {_T}, grantee_id {_T} NOT NULL, grantee_arn {_T} NOT NULL,
        retiring_id {_T}, retiring_arn {_T}, operations {_T} NOT NULL, subset {_T},
        equals {_T}, token {_T} NOT NULL, issuing_account {_T} NOT NULL,
        created {_F} NOT NULL)""",
    "CREATE INDEX grants_by_key ON grants (key_id, grant_id)",
    "CREATE INDEX grants_by_retiring ON grants (instance, retiring_id, grant_id)",
    f"""CREATE TABLE leases (
        name {_T} PRIMARY KEY, owner {_T} NOT NULL, expires {_F} NOT NULL)""",
    f"""CREATE TABLE secrets (
        secret_id {_T} PRIMARY KEY, instance {_T} NOT NULL, name {_T} NOT NULL,
        arn {_T} NOT NULL UNIQUE, created {_F} NOT NULL, revision BIGINT NOT NULL,
        description {_T} NOT NULL DEFAULT '', kms_key_id {_T}, tags {_T} NOT NULL DEFAULT '[]',
        last_changed {_F}, deletion_date {_F}, rotator {_T}, rotation_rules {_T},
        rotation_enabled INTEGER NOT NULL DEFAULT 0, last_rotated {_F}, next_rotation {_F},
        rotation_error {_T}, policy {_T}, UNIQUE (instance, name))""",
    f"""CREATE TABLE secret_versions (
        secret_id {_T} NOT NULL REFERENCES secrets (secret_id), version_id {_T} NOT NULL,
        created {_F} NOT NULL, stages {_T} NOT NULL, envelope BYTEA NOT NULL,
        "binary" INTEGER NOT NULL, PRIMARY KEY (secret_id, version_id))""",
    "CREATE TABLE store_changes (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)",
    "INSERT INTO store_changes VALUES (1, 0)",
], [
    # 2: application access points and their client keys (SQLite's migration 8)
    f"""CREATE TABLE access_points (
        instance {_T} NOT NULL, name {_T} NOT NULL,
        principal_id {_T} NOT NULL REFERENCES principals (principal_id), spec {_T} NOT NULL,
        created {_F} NOT NULL, PRIMARY KEY (instance, name))""",
    f"""CREATE TABLE client_keys (
        client_key_id {_T} PRIMARY KEY, instance {_T} NOT NULL, access_point {_T} NOT NULL,
        public_key BYTEA NOT NULL, not_before {_F} NOT NULL, not_after {_F} NOT NULL,
        revoked {_F}, created {_F} NOT NULL,
        FOREIGN KEY (instance, access_point) REFERENCES access_points (instance, name))""",
    "CREATE INDEX client_keys_by_point ON client_keys (instance, access_point, created)",
], [
    # 3: the audit trail's anchors (SQLite's migration 9)
    f"""CREATE TABLE sealed_secrets (
        name {_T} PRIMARY KEY, instance {_T} NOT NULL, blob BYTEA NOT NULL,
        created {_F} NOT NULL)""",
    f"""CREATE TABLE audit_segments (
        segment {_T} PRIMARY KEY, keyed INTEGER NOT NULL, seq BIGINT NOT NULL,
        hash BYTEA NOT NULL, created {_F} NOT NULL, updated {_F} NOT NULL)""",
], [
    # 4: the serving nodes' heartbeats (kms/cluster.py), as SQLite's "nodes" migration
    f"""CREATE TABLE nodes (
        node_id {_T} PRIMARY KEY, hostname {_T} NOT NULL, address {_T} NOT NULL,
        version {_T} NOT NULL, pid INTEGER NOT NULL, started {_F} NOT NULL,
        heartbeat {_F} NOT NULL, beat_interval {_F} NOT NULL, workers INTEGER NOT NULL,
        stopped {_F})""",
], [
    # 5: where each audit segment lives, part of its key (SQLite's migration 11)
    f"ALTER TABLE audit_segments ADD COLUMN location {_T} NOT NULL DEFAULT ''",
    "ALTER TABLE audit_segments DROP CONSTRAINT audit_segments_pkey",
    "ALTER TABLE audit_segments ADD PRIMARY KEY (location, segment)",
], [
    # 6: shipped copies of audit segments (SQLite's migration 12)
    f"""CREATE TABLE audit_shipped (
        location {_T} NOT NULL, segment {_T} NOT NULL, seq BIGINT NOT NULL,
        record TEXT NOT NULL, prev_hash BYTEA NOT NULL, hash BYTEA NOT NULL,
        PRIMARY KEY (location, segment, seq))""",
    f"""CREATE TABLE audit_shipped_heads (
        location {_T} NOT NULL, segment {_T} NOT NULL, seq BIGINT NOT NULL,
        hash BYTEA NOT NULL, mac BYTEA, updated {_F} NOT NULL,
        PRIMARY KEY (location, segment))""",
]]

#: The channel of change notifications: the payload is the new change counter.
CHANNEL: Final = "hsmpool_changes"
_BUMP: Final = ("WITH c AS (UPDATE store_changes SET n = n + 1 WHERE id = 1 RETURNING n) "
                f"SELECT pg_notify('{CHANNEL}', n::text) FROM c")
#: libpq settings of the listening connection: a server that vanished without closing the
#: connection (a host or network gone) is noticed within about 15 s, not TCP's minutes.
_LISTEN_KWARGS: Final[dict[str, Any]] = {"autocommit": True, "connect_timeout": 5, "keepalives": 1,
                         "keepalives_idle": 5, "keepalives_interval": 2,
                         "keepalives_count": 3, "tcp_user_timeout": 10_000}
_NUMBERED: Final = re.compile(r"\?(\d+)")
_PLAIN: Final = re.compile(r"\?")
_MIGRATION_LOCK: Final = 0x68736D706F6F6C  # "hsmpool": the advisory lock of migrations
#: Seconds a call waits for a pooled connection once the store is down (see the module's
#: docstring): long enough to pick up a connection the pool has just made, short enough not
#: to be felt by the other requests of the event loop.
DOWN_WAIT: Final = 0.005
_DOWN_CLASSES: Final = ("08", "57")  # SQLSTATE classes: connection exception, intervention


def _translate(sql: str, params: Sequence[Any] | None) -> tuple[str, Any]:
    """SQLite-style parameters to psycopg's: ``?N`` by name, ``?`` by position."""
    sql = sql.replace("%", "%%")
    if _NUMBERED.search(sql):
        values = {f"p{i + 1}": v for i, v in enumerate(params or ())}
        return _NUMBERED.sub(lambda m: f"%(p{m.group(1)})s", sql), values
    return _PLAIN.sub("%s", sql), tuple(params or ())


class _Row(dict[str, Any]):
    """A row readable by column name (and, as SQLite's rows, by position)."""

    __slots__ = ("_values",)

    def __init__(self, names: Sequence[str], values: Sequence[Any]) -> None:
        super().__init__(zip(names, values, strict=True))
        self._values = tuple(values)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return self._values[key]
        return dict.__getitem__(self, key)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], _Row]:
    names = [c.name for c in (cursor.description or ())]
    return lambda values: _Row(names, values)


class _Db:
    """A connection as :class:`SqlStore`'s SQL uses it (counting statements in its store)."""

    __slots__ = ("conn", "store")

    def __init__(self, conn: Any, store: PostgresStore) -> None:
        self.conn = conn
        self.store = store

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        query, values = _translate(sql, params)
        self.store.statements += 1  # not atomic across threads: a measure, not an account
        cur = self.conn.cursor()
        cur.execute(query, values)
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        """One statement (``?`` parameters, none of them NULL) for each of ``rows``: psycopg
        sends them in a pipeline, one round trip however many rows (counted as one
        statement), with the values bound on the server (the parameters of one statement
        are parsed once, not quoted into each)."""
        query, _ = _translate(sql, None)
        self.store.statements += 1
        cur = self.store._psycopg.Cursor(self.conn)
        cur.executemany(query, [tuple(r) for r in rows])
        return cur


class PostgresStore(SqlStore):
    """Thread-safe access to one PostgreSQL database (:class:`kms.store.MetadataStore`)."""

    def __init__(self, url: str, *, min_connections: int = 1,
                 max_connections: int = 8, connect_wait: float = 2.0) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        #: Seconds a call waits for a pooled connection while the store is up (all busy, or
        #: the pool reconnecting) before :class:`kms.errors.StoreUnavailable`.
        self.connect_wait = connect_wait
        self._down = False
        #: Statements executed by this store's calls (not the listener's): round-trips, for
        #: the benchmarks and tests (``/metrics`` ``hsmpool_store_statements_total``).
        self.statements = 0
        self.IntegrityError = psycopg.errors.IntegrityError  # type: ignore[misc]
        self._psycopg = psycopg

        def configure(conn: Any) -> None:
            conn.cursor_factory = psycopg.ClientCursor
            conn.row_factory = _row_factory

        self._pool = ConnectionPool(url, min_size=min_connections, max_size=max_connections,
                                    kwargs={"autocommit": False, "connect_timeout": 10},
                                    configure=configure, open=True, timeout=30.0)
        self._lock = threading.Lock()
        self._watches: list[_Listener] = []
        self._migrate()

    # --- plumbing ----------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._pool.connection() as conn:
            db = _Db(conn, self)
            db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS store_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM store_schema").fetchone()
            version = int(row[0] or 0)
            for i in range(version, len(MIGRATIONS)):
                for stmt in MIGRATIONS[i]:
                    conn.execute(stmt)
                db.execute("INSERT INTO store_schema VALUES (?)", (i + 1,))
            conn.commit()

    @property
    def schema_version(self) -> int:
        return int(self._read(lambda db: db.execute(
            "SELECT max(version) FROM store_schema").fetchone()[0]))

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._write(changes=True) as db:
            yield db

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection; psycopg's connection failures and pool timeouts, raised
        getting it or by the block, become :class:`kms.errors.StoreUnavailable`."""
        psycopg = self._psycopg
        try:
            with self._pool.connection(timeout=DOWN_WAIT if self._down
                                       else self.connect_wait) as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            state = getattr(exc, "sqlstate", None)
            if (state is None or state[:2] in _DOWN_CLASSES) and not self._down:
                self._down = True
                log.warning("the metadata store is unavailable (%s: %s); failing fast "
                            "until it answers again", type(exc).__name__,
                            " ".join(str(exc).split())[:300])
            raise StoreUnavailable("the metadata store is unavailable; retry") from exc
        if self._down:
            self._down = False
            log.warning("the metadata store answers again")

    @contextmanager
    def _write(self, *, changes: bool) -> Iterator[Any]:
        with self._connection() as conn:
            try:
                yield _Db(conn, self)
                if changes:  # the listeners hear it when (and only if) this commits
                    self.statements += 1
                    conn.execute(_BUMP)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _quiet_transaction(self) -> Any:
        return self._write(changes=False)

    def _read(self, fn: Callable[[Any], T]) -> T:
        with self._connection() as conn:
            try:
                return fn(_Db(conn, self))
            finally:
                conn.rollback()  # a read leaves no transaction open

    def change_token(self) -> int:
        return int(self._read(lambda db: db.execute(
            "SELECT n FROM store_changes WHERE id = 1").fetchone()[0]))

    def ping(self, timeout: float) -> None:
        """``SELECT 1`` on a pooled connection, waiting at most ``timeout`` for one (a
        stopped server fails the query at once, and then fails to hand out a connection
        within ``timeout`` while the pool tries to reconnect)."""
        with self._pool.connection(timeout=timeout) as conn:
            try:
                conn.execute("SELECT 1").fetchone()
            finally:
                conn.rollback()

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A session advisory lock named by ``name`` (hashed to 64 bits), on a pooled
        connection held while the block runs; no transaction stays open meanwhile. A
        connection lost meanwhile releases the lock on the server."""
        lock = int.from_bytes(hashlib.sha256(f"hsmpool:{name}".encode()).digest()[:8], "big",
                              signed=True)
        with self._connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))
                    conn.commit()
                except self._psycopg.Error as exc:  # the lock went with the connection
                    log.warning("advisory lock %r: unlock failed (%s)", name, exc)

    def watch(self, on_change: Callable[[int | None], None]) -> _Listener:
        """LISTEN on :data:`CHANNEL` from a thread with a connection of its own (see
        :class:`_Listener`)."""
        listener = _Listener(self.url, on_change)
        with self._lock:
            self._watches.append(listener)
        return listener

    def close(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.close()
        self._pool.close()


class _Listener:
    """A thread that LISTENs for change notifications on a connection of its own and calls
    ``on_change(counter)`` for each one; ``on_change(None)`` each time it starts listening
    (at first, and after reconnecting: notifications sent meanwhile are lost). While it is
    not connected :attr:`live` is False, and the caller polls the change counter instead.
    It reconnects with a backoff of 0.1 s doubling to 5 s."""

    WAKE: Final = 0.25  # seconds: how often the thread looks at its stop flag

    def __init__(self, url: str, on_change: Callable[[int | None], None]) -> None:
        self._url = url
        self._on_change = on_change
        self._live = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kms-store-listen",
                                        daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        return self._live

    def _run(self) -> None:
        import psycopg

        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, **_LISTEN_KWARGS) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._live = True
                    backoff = 0.1
                    self._tell(None)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=self.WAKE):
                            self._tell(int(note.payload) if note.payload.isdigit() else None)
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                if self._live:
                    log.warning("store change listener: %s: %s; polling until it "
                                "reconnects", type(exc).__name__, " ".join(str(exc).split()))
            finally:
                self._live = False
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _tell(self, counter: int | None) -> None:
        try:
            self._on_change(counter)
        except Exception:  # noqa: BLE001 - the listener must go on
            log.exception("store change listener: the change callback failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
