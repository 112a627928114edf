"""The secrets manager's part of the store's SQL (:class:`kms.store.SecretStore`).

A mixin of :class:`kms.store.sql.SqlStore` (its engine's transactions and reads); the tables
are made by SQLite's migration 7 (:data:`MIGRATION`) and PostgreSQL's schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

from kms.errors import AlreadyExists
from kms.secrets.model import SecretRecord, SecretVersion
from kms.store.interface import Conflict

T = TypeVar("T")

MIGRATION = """
    CREATE TABLE secrets (
        secret_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        arn TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        revision INTEGER NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        kms_key_id TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        last_changed REAL,
        deletion_date REAL,
        rotator TEXT,
        rotation_rules TEXT,
        rotation_enabled INTEGER NOT NULL DEFAULT 0,
        last_rotated REAL,
        next_rotation REAL,
        rotation_error TEXT,
        policy TEXT,
        UNIQUE (instance, name)
    );
    CREATE TABLE secret_versions (
        secret_id TEXT NOT NULL REFERENCES secrets (secret_id),
        version_id TEXT NOT NULL,
        created REAL NOT NULL,
        stages TEXT NOT NULL,
        envelope BLOB NOT NULL,
        binary INTEGER NOT NULL,
        PRIMARY KEY (secret_id, version_id)
    )
"""

_COLUMNS = ("secret_id", "instance", "name", "arn", "created", "revision", "description",
            "kms_key_id", "tags", "last_changed", "deletion_date", "rotator", "rotation_rules",
            "rotation_enabled", "last_rotated", "next_rotation", "rotation_error", "policy")
_SETS = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
_PLACES = ", ".join("?" for _ in _COLUMNS)


def _row(r: SecretRecord) -> tuple[Any, ...]:
    return (r.secret_id, r.instance, r.name, r.arn, r.created, r.revision, r.description,
            r.kms_key_id, json.dumps([list(t) for t in r.tags]), r.last_changed,
            r.deletion_date, r.rotator, r.rotation_rules, int(r.rotation_enabled),
            r.last_rotated, r.next_rotation, r.rotation_error, r.policy)


def _secret_from(row: Any) -> SecretRecord:
    return SecretRecord(
        secret_id=row["secret_id"], instance=row["instance"], name=row["name"],
        arn=row["arn"], created=row["created"], revision=row["revision"],
        description=row["description"], kms_key_id=row["kms_key_id"],
        tags=tuple((k, v) for k, v in json.loads(row["tags"])),
        last_changed=row["last_changed"], deletion_date=row["deletion_date"],
        rotator=row["rotator"], rotation_rules=row["rotation_rules"],
        rotation_enabled=bool(row["rotation_enabled"]), last_rotated=row["last_rotated"],
        next_rotation=row["next_rotation"], rotation_error=row["rotation_error"],
        policy=row["policy"])


def _version_from(row: Any) -> SecretVersion:
    stages = row["stages"]
    return SecretVersion(secret_id=row["secret_id"], version_id=row["version_id"],
                         created=row["created"],
                         stages=tuple(stages.split(",")) if stages else (),
                         envelope=bytes(row["envelope"]), binary=bool(row["binary"]))


def _put_versions(db: Any, secret_id: str,
                  versions: Sequence[SecretVersion]) -> None:
    for v in versions:
        if v.secret_id != secret_id:
            raise ValueError("a version of another secret")
        db.execute("INSERT INTO secret_versions VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (secret_id, version_id) DO UPDATE SET stages = excluded.stages",
                   (v.secret_id, v.version_id, v.created, ",".join(v.stages), v.envelope,
                    int(v.binary)))


class SqlSecrets:
    """Secrets and secret versions (see :class:`kms.store.SecretStore`)."""

    IntegrityError: ClassVar[type[Exception]]
    transaction: Callable[[], AbstractContextManager[Any]]
    _read: Callable[[Callable[[Any], Any]], Any]

    def _swap_secret(self, db: Any, old: SecretRecord,
                     new: SecretRecord) -> None:
        if new.secret_id != old.secret_id or new.revision <= old.revision:
            raise ValueError("a secret change needs a later revision of the same secret")
        cur = db.execute(f"UPDATE secrets SET {_SETS} WHERE secret_id = ? AND revision = ?",
                         (*_row(new)[1:], new.secret_id, old.revision))
        if cur.rowcount != 1:
            raise Conflict("the secret changed concurrently; retry")

    def insert_secret(self, record: SecretRecord,
                      versions: Sequence[SecretVersion] = ()) -> None:
        try:
            with self.transaction() as db:
                db.execute(f"INSERT INTO secrets VALUES ({_PLACES})", _row(record))
                _put_versions(db, record.secret_id, versions)
        except self.IntegrityError:
            raise AlreadyExists(f"a secret named {record.name!r} already exists") from None

    def update_secret(self, old: SecretRecord, new: SecretRecord,
                      versions: Sequence[SecretVersion] = (),
                      drop_versions: Sequence[str] = ()) -> None:
        with self.transaction() as db:
            self._swap_secret(db, old, new)
            _put_versions(db, new.secret_id, versions)
            for version_id in drop_versions:
                db.execute("DELETE FROM secret_versions WHERE secret_id = ? AND version_id = ?",
                           (new.secret_id, version_id))

    def get_secret(self, secret_id: str) -> SecretRecord | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM secrets WHERE secret_id = ?", (secret_id,)).fetchone())
        return _secret_from(row) if row is not None else None

    def find_secret(self, instance: str, *, name: str | None = None,
                    arn: str | None = None) -> SecretRecord | None:
        if (name is None) == (arn is None):
            raise ValueError("give a name or an ARN")
        column, value = ("name", name) if name is not None else ("arn", arn)
        row = self._read(lambda db: db.execute(
            f"SELECT * FROM secrets WHERE instance = ? AND {column} = ?",
            (instance, value)).fetchone())
        return _secret_from(row) if row is not None else None

    def list_secrets(self, instance: str, after: str, limit: int) -> list[SecretRecord]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM secrets WHERE instance = ? AND name > ? ORDER BY name LIMIT ?",
            (instance, after, limit)).fetchall())
        return [_secret_from(r) for r in rows]

    def get_secret_version(self, secret_id: str, version_id: str) -> SecretVersion | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM secret_versions WHERE secret_id = ? AND version_id = ?",
            (secret_id, version_id)).fetchone())
        return _version_from(row) if row is not None else None

    def secret_versions(self, secret_id: str) -> list[SecretVersion]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM secret_versions WHERE secret_id = ? ORDER BY created, version_id",
            (secret_id,)).fetchall())
        return [_version_from(r) for r in rows]

    def secrets_due(self, now: float) -> list[SecretRecord]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM secrets WHERE deletion_date <= ?1 "
            "OR (rotation_enabled = 1 AND next_rotation <= ?1) ORDER BY secret_id",
            (now,)).fetchall())
        return [_secret_from(r) for r in rows]

    def purge_secret(self, old: SecretRecord) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM secret_versions WHERE secret_id = ?", (old.secret_id,))
            cur = db.execute("DELETE FROM secrets WHERE secret_id = ? AND revision = ?",
                             (old.secret_id, old.revision))
            if cur.rowcount != 1:
                raise Conflict("the secret changed concurrently; retry")


