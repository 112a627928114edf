"""Application access points and their client keys in the store's SQL
(:class:`kms.store.AccessPointStore`, used by :mod:`kms.access_points`).

A mixin of :class:`kms.store.sql.SqlStore` (its engine's transactions and reads); the tables
are made by SQLite's migration 8 (:data:`MIGRATION`) and PostgreSQL's schema version 2.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from kms.errors import AlreadyExists
from kms.store.interface import AccessPointRecord, ClientKeyRecord

MIGRATION = """
    CREATE TABLE access_points (
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        principal_id TEXT NOT NULL REFERENCES principals (principal_id),
        spec TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (instance, name)
    );
    CREATE TABLE client_keys (
        client_key_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        access_point TEXT NOT NULL,
        public_key BLOB NOT NULL,
        not_before REAL NOT NULL,
        not_after REAL NOT NULL,
        revoked REAL,
        created REAL NOT NULL,
        FOREIGN KEY (instance, access_point) REFERENCES access_points (instance, name)
    );
    CREATE INDEX client_keys_by_point ON client_keys (instance, access_point, created)
"""

_KEY_COLUMNS = ("client_key_id, instance, access_point, public_key, not_before, not_after, "
                "revoked, created")


class SqlAccessPoints:
    """Access points and client keys (see :class:`kms.store.AccessPointStore`)."""

    IntegrityError: ClassVar[type[Exception]]
    transaction: Callable[[], AbstractContextManager[Any]]
    _read: Callable[[Callable[[Any], Any]], Any]

    def put_access_point(self, record: AccessPointRecord) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO access_points VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (instance, name) DO UPDATE SET spec = excluded.spec",
                       (record.instance, record.name, record.principal_id, record.spec,
                        record.created))

    def get_access_point(self, instance: str, name: str) -> AccessPointRecord | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM access_points WHERE instance = ? AND name = ?",
            (instance, name)).fetchone())
        return _point_from(row) if row is not None else None

    def list_access_points(self, instance: str | None = None) -> list[AccessPointRecord]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM access_points WHERE (?1 IS NULL OR instance = ?1) "
            "ORDER BY instance, name", (instance,)).fetchall())
        return [_point_from(r) for r in rows]

    def put_client_key(self, record: ClientKeyRecord) -> None:
        try:
            with self.transaction() as db:
                db.execute(f"INSERT INTO client_keys ({_KEY_COLUMNS}) VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?)",
                           (record.client_key_id, record.instance, record.access_point,
                            record.public_key, record.not_before, record.not_after,
                            record.revoked, record.created))
        except self.IntegrityError:
            raise AlreadyExists(f"client key {record.client_key_id!r} exists, or its access "
                                "point does not") from None

    def get_client_key(self, client_key_id: str) -> ClientKeyRecord | None:
        row = self._read(lambda db: db.execute(
            f"SELECT {_KEY_COLUMNS} FROM client_keys WHERE client_key_id = ?",
            (client_key_id,)).fetchone())
        return _key_from(row) if row is not None else None

    def list_client_keys(self, instance: str | None = None,
                         access_point: str | None = None) -> list[ClientKeyRecord]:
        rows = self._read(lambda db: db.execute(
            f"SELECT {_KEY_COLUMNS} FROM client_keys WHERE (?1 IS NULL OR instance = ?1) AND "
            "(?2 IS NULL OR access_point = ?2) ORDER BY instance, access_point, created, "
            "client_key_id", (instance, access_point)).fetchall())
        return [_key_from(r) for r in rows]

    def revoke_client_key(self, client_key_id: str, when: float) -> bool:
        with self.transaction() as db:
            cur = db.execute("UPDATE client_keys SET revoked = ? WHERE client_key_id = ? AND "
                             "revoked IS NULL", (when, client_key_id))
            return bool(cur.rowcount == 1)


def _point_from(row: Any) -> AccessPointRecord:
    return AccessPointRecord(row["instance"], row["name"], row["principal_id"], row["spec"],
                             float(row["created"]))


def _key_from(row: Any) -> ClientKeyRecord:
    return ClientKeyRecord(row["client_key_id"], row["instance"], row["access_point"],
                           bytes(row["public_key"]), float(row["not_before"]),
                           float(row["not_after"]),
                           None if row["revoked"] is None else float(row["revoked"]),
                           float(row["created"]))
