"""The embedded metadata store: one SQLite file (WAL, synchronous=FULL), versioned migrations.

Implements :class:`kms.store.MetadataStore`. A write returns only after its transaction is
durable. Several processes may open the same file (the server's workers): SQLite serialises
writers; readers see committed data; the change token is ``PRAGMA data_version`` (it
changes when another connection commits).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kms.errors import AlreadyExists, LimitExceeded
from kms.model import (
    AliasRecord,
    Grant,
    ImportToken,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
)
from kms.private_files import private_dir, private_file
from kms.store.interface import AccessKeyInfo, AccessKeySecret, Conflict, PrincipalRecord
from kms.store.sqlite_secrets import MIGRATION as SECRETS_MIGRATION
from kms.store.sqlite_secrets import SqliteSecrets

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: keys, versions, aliases, instances, import tokens
    """
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        arn TEXT NOT NULL,
        spec TEXT NOT NULL,
        usage TEXT NOT NULL,
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        deletion_date REAL,
        rotation_enabled INTEGER NOT NULL DEFAULT 0,
        rotation_period_days INTEGER NOT NULL DEFAULT 365,
        next_rotation REAL,
        primary_version TEXT,
        min_decrypt_version INTEGER NOT NULL DEFAULT 1,
        tags TEXT NOT NULL DEFAULT '[]',
        policy TEXT,
        import_valid_to REAL,
        revision INTEGER NOT NULL
    );
    CREATE INDEX keys_by_instance ON keys (instance, key_id);
    CREATE INDEX keys_due ON keys (state, next_rotation);
    CREATE TABLE key_versions (
        version_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        number INTEGER NOT NULL,
        created REAL NOT NULL,
        blob BLOB,
        public_key BLOB NOT NULL DEFAULT x'',
        imported INTEGER NOT NULL DEFAULT 0,
        UNIQUE (key_id, number)
    );
    CREATE TABLE aliases (
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        created REAL NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (instance, name)
    );
    CREATE INDEX aliases_by_key ON aliases (key_id);
    CREATE TABLE import_tokens (
        token_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        wrapping_algorithm TEXT NOT NULL,
        wrapping_key_spec TEXT NOT NULL,
        wrapping_blob BLOB NOT NULL,
        public_key BLOB NOT NULL,
        expires REAL NOT NULL
    );
    """,
    # 2: principals and their access keys (for the servers' authentication)
    """
    CREATE TABLE principals (
        principal_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        policies TEXT NOT NULL DEFAULT '[]',
        created REAL NOT NULL,
        UNIQUE (instance, name)
    );
    CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        principal_id TEXT NOT NULL REFERENCES principals (principal_id),
        secret_blob BLOB NOT NULL,
        created REAL NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1
    );
    """,
    # 3: imported key material's keyed fingerprint (HMAC-SHA256 under a per-key random
    # salt), so a re-import can be checked to be the same material (kms/keys/importing.py)
    """
    ALTER TABLE keys ADD COLUMN material_salt BLOB;
    ALTER TABLE keys ADD COLUMN material_id BLOB
    """,
    # 4: a purged key is marked by its own column (it used to be a policy text, which a
    # caller could forge with CreateKey). Keys carrying the old mark that were purged (pending
    # deletion, every blob shredded) keep that status; any other key carrying it had it
    # forged: it becomes visible again, with the default key policy.
    """
    ALTER TABLE keys ADD COLUMN purged_at REAL;
    UPDATE keys SET purged_at = COALESCE(deletion_date, created)
        WHERE policy = char(0) || 'deleted' AND state = 'PendingDeletion'
        AND NOT EXISTS (SELECT 1 FROM key_versions v
                        WHERE v.key_id = keys.key_id AND v.blob IS NOT NULL);
    UPDATE keys SET policy = NULL WHERE policy = char(0) || 'deleted'
    """,
    # 5: grants (kms/keys/grants.py); principals by id, shown by ARN; operations and constraints
    # as JSON
    """
    CREATE TABLE grants (
        grant_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        instance TEXT NOT NULL,
        name TEXT,
        grantee_id TEXT NOT NULL,
        grantee_arn TEXT NOT NULL,
        retiring_id TEXT,
        retiring_arn TEXT,
        operations TEXT NOT NULL,
        subset TEXT,
        equals TEXT,
        token TEXT NOT NULL,
        issuing_account TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX grants_by_key ON grants (key_id, grant_id);
    CREATE INDEX grants_by_retiring ON grants (instance, retiring_id, grant_id)
    """,
    # 6: named leases (the scheduler's: one process at a time runs due jobs)
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires REAL NOT NULL
    )
    """,
    # 7: the secrets manager (kms/secrets): secrets and their versions
    SECRETS_MIGRATION,
]

_KEY_COLUMNS = ("key_id", "instance", "arn", "spec", "usage", "origin", "state", "created",
                "description", "deletion_date", "rotation_enabled", "rotation_period_days",
                "next_rotation", "primary_version", "min_decrypt_version", "tags", "policy",
                "import_valid_to", "revision", "purged_at")


def _key_row(r: KeyRecord) -> tuple[Any, ...]:
    return (r.key_id, r.instance, r.arn, r.spec.value, r.usage.value, r.origin.value,
            r.state.value, r.created, r.description, r.deletion_date, int(r.rotation_enabled),
            r.rotation_period_days, r.next_rotation, r.primary_version, r.min_decrypt_version,
            json.dumps([list(t) for t in r.tags]), r.policy, r.import_valid_to, r.revision,
            r.purged_at)


def _key_from(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"], instance=row["instance"], arn=row["arn"],
        spec=KeySpec(row["spec"]), usage=KeyUsage(row["usage"]), origin=Origin(row["origin"]),
        state=KeyState(row["state"]), created=row["created"], description=row["description"],
        deletion_date=row["deletion_date"], rotation_enabled=bool(row["rotation_enabled"]),
        rotation_period_days=row["rotation_period_days"], next_rotation=row["next_rotation"],
        primary_version=row["primary_version"], min_decrypt_version=row["min_decrypt_version"],
        tags=tuple((k, v) for k, v in json.loads(row["tags"])), policy=row["policy"],
        import_valid_to=row["import_valid_to"], revision=row["revision"],
        purged_at=row["purged_at"],
    )


def _version_from(row: sqlite3.Row) -> KeyVersion:
    blob = row["blob"]
    return KeyVersion(version_id=row["version_id"], key_id=row["key_id"], number=row["number"],
                      created=row["created"], blob=bytes(blob) if blob is not None else None,
                      public_key=bytes(row["public_key"]), imported=bool(row["imported"]))


_GRANT_COLUMNS = ("grant_id", "key_id", "instance", "name", "grantee_id", "grantee_arn",
                  "retiring_id", "retiring_arn", "operations", "subset", "equals", "token",
                  "issuing_account", "created")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _grant_row(g: Grant) -> tuple[Any, ...]:
    return (g.grant_id, g.key_id, g.instance, g.name, g.grantee_id, g.grantee_arn,
            g.retiring_id, g.retiring_arn, json.dumps(list(g.operations)),
            _json_or_none(None if g.subset is None else dict(g.subset)),
            _json_or_none(None if g.equals is None else dict(g.equals)), g.token,
            g.issuing_account, g.created)


def _grant_from(row: sqlite3.Row) -> Grant:
    subset, equals = row["subset"], row["equals"]
    return Grant(grant_id=row["grant_id"], key_id=row["key_id"], instance=row["instance"],
                 name=row["name"], grantee_id=row["grantee_id"],
                 grantee_arn=row["grantee_arn"], retiring_id=row["retiring_id"],
                 retiring_arn=row["retiring_arn"],
                 operations=tuple(json.loads(row["operations"])),
                 subset=None if subset is None else json.loads(subset),
                 equals=None if equals is None else json.loads(equals), token=row["token"],
                 issuing_account=row["issuing_account"], created=row["created"])


def _same_grant(a: Grant, b: Grant) -> bool:
    """Same key, name, principals, operations and constraints (CreateGrant's retry rule)."""
    return (a.key_id, a.name, a.grantee_id, a.retiring_id, sorted(a.operations),
            a.subset and dict(a.subset), a.equals and dict(a.equals)) == (
        b.key_id, b.name, b.grantee_id, b.retiring_id, sorted(b.operations),
        b.subset and dict(b.subset), b.equals and dict(b.equals))


_KEY_SETS = ", ".join(f"{c} = ?" for c in _KEY_COLUMNS[1:])


def _swap_key(db: sqlite3.Connection, old: KeyRecord, new: KeyRecord) -> None:
    """The compare-and-swap of every key change: write ``new`` iff the stored revision is
    still ``old``'s, else :class:`Conflict`."""
    if new.key_id != old.key_id or new.revision <= old.revision:
        raise ValueError("a key change needs a later revision of the same key")
    cur = db.execute(f"UPDATE keys SET {_KEY_SETS} WHERE key_id = ? AND revision = ?",
                     (*_key_row(new)[1:], new.key_id, old.revision))
    if cur.rowcount != 1:
        raise Conflict("the key changed concurrently; retry")


class SqliteStore(SqliteSecrets):
    """Thread-safe access to one SQLite metadata file (:class:`kms.store.MetadataStore`)."""

    def __init__(self, path: str | os.PathLike[str], *, sync: bool = True) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            private_dir(Path(self.path).parent)
            private_file(self.path)  # 0600 before SQLite makes it, and its -wal and -shm
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    # --- plumbing ----------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for i in range(version, len(MIGRATIONS)):
                # executescript() would commit; run the statements inside our transaction.
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            if version < len(MIGRATIONS):
                self._db.execute(f"PRAGMA user_version={len(MIGRATIONS)}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._db)

    def change_token(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version)."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO leases VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET "
                "owner = excluded.owner, expires = excluded.expires "
                "WHERE leases.owner = ?2 OR leases.expires <= ?4",
                (name, owner, now + ttl, now))
            return cur.rowcount == 1

    def unlock(self, name: str, owner: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- instances ---------------------------------------------------------------------

    def instance_account(self, name: str, make: Callable[[], str]) -> str:
        row = self._read(lambda db: db.execute(
            "SELECT account FROM instances WHERE name = ?", (name,)).fetchone())
        if row is not None:
            return str(row["account"])
        with self.transaction() as db:
            row = db.execute("SELECT account FROM instances WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return str(row["account"])
            account = make()
            db.execute("INSERT INTO instances VALUES (?, ?, ?)", (name, account, time.time()))
            return account

    # --- keys and versions -------------------------------------------------------------

    def insert_key(self, record: KeyRecord, version: KeyVersion | None) -> None:
        with self.transaction() as db:
            db.execute(f"INSERT INTO keys ({', '.join(_KEY_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(_KEY_COLUMNS))})", _key_row(record))
            if version is not None:
                self._insert_version(db, version)

    @staticmethod
    def _insert_version(db: sqlite3.Connection, v: KeyVersion) -> None:
        db.execute("INSERT INTO key_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (v.version_id, v.key_id, v.number, v.created, v.blob, v.public_key,
                    int(v.imported)))

    def update_key(self, old: KeyRecord, new: KeyRecord,
                   version: KeyVersion | None = None) -> None:
        """Write ``new`` (and a new version) iff the stored record is still ``old``."""
        with self.transaction() as db:
            _swap_key(db, old, new)
            if version is not None:
                self._insert_version(db, version)

    def get_key(self, key_id: str) -> KeyRecord | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM keys WHERE key_id = ?", (key_id,)).fetchone())
        return _key_from(row) if row is not None else None

    def list_keys(self, instance: str, after: str, limit: int) -> list[KeyRecord]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM keys WHERE instance = ? AND key_id > ? ORDER BY key_id LIMIT ?",
            (instance, after, limit)).fetchall())
        return [_key_from(r) for r in rows]

    def keys_due(self, now: float) -> list[KeyRecord]:
        """Keys whose rotation or deletion is due (never a purged key)."""
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM keys WHERE purged_at IS NULL AND ((state = 'Enabled' AND "
            "rotation_enabled = 1 AND next_rotation <= ?) OR (state = 'PendingDeletion' AND "
            "deletion_date <= ?) OR (import_valid_to IS NOT NULL AND import_valid_to <= ? "
            "AND state IN ('Enabled', 'Disabled')))",
            (now, now, now)).fetchall())
        return [_key_from(r) for r in rows]

    def get_version(self, version_id: str) -> KeyVersion | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM key_versions WHERE version_id = ?", (version_id,)).fetchone())
        return _version_from(row) if row is not None else None

    def list_versions(self, key_id: str) -> list[KeyVersion]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM key_versions WHERE key_id = ? ORDER BY number", (key_id,)).fetchall())
        return [_version_from(r) for r in rows]

    def destroy_material(self, old: KeyRecord, new: KeyRecord) -> None:
        """Crypto-shred: drop every wrapped blob of a key and write its new record."""
        with self.transaction() as db:
            _swap_key(db, old, new)
            db.execute("UPDATE key_versions SET blob = NULL WHERE key_id = ?", (new.key_id,))
            db.execute("DELETE FROM aliases WHERE key_id = ?", (new.key_id,))
            db.execute("DELETE FROM import_tokens WHERE key_id = ?", (new.key_id,))
            db.execute("DELETE FROM grants WHERE key_id = ?", (new.key_id,))

    # --- aliases -----------------------------------------------------------------------

    def put_alias(self, alias: AliasRecord, *, create: bool) -> None:
        with self.transaction() as db:
            if create:
                try:
                    db.execute("INSERT INTO aliases VALUES (?, ?, ?, ?, ?)",
                               (alias.instance, alias.name, alias.key_id, alias.created,
                                alias.updated))
                except sqlite3.IntegrityError:
                    raise AlreadyExists(f"alias {alias.name} already exists") from None
            else:
                db.execute("UPDATE aliases SET key_id = ?, updated = ? WHERE instance = ? AND "
                           "name = ?", (alias.key_id, alias.updated, alias.instance, alias.name))

    def get_alias(self, instance: str, name: str) -> AliasRecord | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM aliases WHERE instance = ? AND name = ?", (instance, name)).fetchone())
        return AliasRecord(**dict(row)) if row is not None else None

    def delete_alias(self, instance: str, name: str, *, key_id: str | None = None) -> bool:
        """Delete an alias (only if it still points at ``key_id``, when given)."""
        with self.transaction() as db:
            cur = db.execute("DELETE FROM aliases WHERE instance = ?1 AND name = ?2 AND "
                             "(?3 IS NULL OR key_id = ?3)", (instance, name, key_id))
            return cur.rowcount == 1

    def list_aliases(self, instance: str, key_id: str | None, after: str,
                     limit: int) -> list[AliasRecord]:
        args: tuple[object, ...]
        if key_id is None:
            sql, args = ("SELECT * FROM aliases WHERE instance = ? AND name > ? ORDER BY name "
                         "LIMIT ?", (instance, after, limit))
        else:
            sql, args = ("SELECT * FROM aliases WHERE instance = ? AND key_id = ? AND name > ? "
                         "ORDER BY name LIMIT ?", (instance, key_id, after, limit))
        rows = self._read(lambda db: db.execute(sql, args).fetchall())
        return [AliasRecord(**dict(r)) for r in rows]

    def alias_names_of_key(self, instance: str, key_id: str) -> list[str]:
        """Every alias of a key, by name."""
        rows = self._read(lambda db: db.execute(
            "SELECT name FROM aliases WHERE instance = ? AND key_id = ? ORDER BY name",
            (instance, key_id)).fetchall())
        return [str(r["name"]) for r in rows]

    # --- grants ------------------------------------------------------------------------

    def create_grant(self, grant: Grant, *, per_grantee_limit: int) -> Grant:
        """Store ``grant`` and return it; or, if it has a name and an identical grant of that
        name exists on the key (a retried CreateGrant), return that one instead. Raises
        :class:`LimitExceeded` when the grantee has ``per_grantee_limit`` grants on the key."""
        with self.transaction() as db:
            if grant.name is not None:
                for row in db.execute("SELECT * FROM grants WHERE key_id = ? AND name = ?",
                                      (grant.key_id, grant.name)).fetchall():
                    old = _grant_from(row)
                    if _same_grant(old, grant):
                        return old
            n = db.execute("SELECT count(*) FROM grants WHERE key_id = ? AND grantee_id = ?",
                           (grant.key_id, grant.grantee_id)).fetchone()[0]
            if n >= per_grantee_limit:
                raise LimitExceeded(f"a principal has at most {per_grantee_limit} grants "
                                    "on a key")
            db.execute(f"INSERT INTO grants ({', '.join(_GRANT_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(_GRANT_COLUMNS))})", _grant_row(grant))
            return grant

    def get_grant(self, grant_id: str) -> Grant | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM grants WHERE grant_id = ?", (grant_id,)).fetchone())
        return _grant_from(row) if row is not None else None

    def grants_of_key(self, key_id: str) -> list[Grant]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM grants WHERE key_id = ? ORDER BY grant_id", (key_id,)).fetchall())
        return [_grant_from(r) for r in rows]

    def list_grants(self, key_id: str, after: str, limit: int, *, grant_id: str | None = None,
                    grantee_id: str | None = None) -> list[Grant]:
        """A key's grants by grant id after ``after``, optionally only one grant id or one
        grantee's."""
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM grants WHERE key_id = ?1 AND grant_id > ?2 AND "
            "(?3 IS NULL OR grant_id = ?3) AND (?4 IS NULL OR grantee_id = ?4) "
            "ORDER BY grant_id LIMIT ?5",
            (key_id, after, grant_id, grantee_id, limit)).fetchall())
        return [_grant_from(r) for r in rows]

    def list_retirable_grants(self, instance: str, retiring_id: str, after: str,
                              limit: int) -> list[Grant]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM grants WHERE instance = ? AND retiring_id = ? AND grant_id > ? "
            "ORDER BY grant_id LIMIT ?", (instance, retiring_id, after, limit)).fetchall())
        return [_grant_from(r) for r in rows]

    def delete_grant(self, grant_id: str, key_id: str) -> bool:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM grants WHERE grant_id = ? AND key_id = ?",
                             (grant_id, key_id))
            return cur.rowcount == 1

    # --- import tokens -----------------------------------------------------------------

    def put_import_token(self, token: ImportToken) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO import_tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (token.token_id, token.key_id, token.wrapping_algorithm,
                        token.wrapping_key_spec, token.wrapping_blob, token.public_key,
                        token.expires))

    def get_import_token(self, token_id: str) -> ImportToken | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM import_tokens WHERE token_id = ?", (token_id,)).fetchone())
        if row is None:
            return None
        d = dict(row)
        d["wrapping_blob"] = bytes(d["wrapping_blob"])
        d["public_key"] = bytes(d["public_key"])
        return ImportToken(**d)

    def delete_import_tokens(self, key_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM import_tokens WHERE key_id = ?", (key_id,))

    def delete_import_token(self, token_id: str) -> bool:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM import_tokens WHERE token_id = ?", (token_id,))
            return cur.rowcount == 1

    def count_import_tokens(self, key_id: str) -> int:
        row = self._read(lambda db: db.execute(
            "SELECT COUNT(*) AS n FROM import_tokens WHERE key_id = ?", (key_id,)).fetchone())
        return int(row["n"])

    def delete_expired_import_tokens(self, key_id: str, now: float) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM import_tokens WHERE key_id = ? AND expires <= ?",
                       (key_id, now))

    # --- imported key material ---------------------------------------------------------

    def material_fingerprint(self, key_id: str) -> tuple[bytes, bytes] | None:
        """(salt, keyed fingerprint) of the material imported into a key, if any."""
        row = self._read(lambda db: db.execute(
            "SELECT material_salt, material_id FROM keys WHERE key_id = ?",
            (key_id,)).fetchone())
        if row is None or row["material_id"] is None:
            return None
        return bytes(row["material_salt"]), bytes(row["material_id"])

    def import_material(self, old: KeyRecord, new: KeyRecord, *, token_id: str,
                        salt: bytes, material_id: bytes, version: KeyVersion | None = None,
                        restore_blob: bytes | None = None) -> None:
        """One transaction: consume the import token, write ``new`` iff the stored record is
        still ``old``, record the material's fingerprint (or check it is unchanged), and
        either add ``version`` or put ``restore_blob`` back into the key's shredded versions.

        Raises :class:`Conflict` if the key changed, :class:`LookupError` if the token was
        consumed meanwhile, :class:`ValueError` if a different fingerprint was recorded
        meanwhile.
        """
        with self.transaction() as db:
            cur = db.execute("DELETE FROM import_tokens WHERE token_id = ? AND key_id = ?",
                             (token_id, new.key_id))
            if cur.rowcount != 1:
                raise LookupError("the import token is no longer valid")
            _swap_key(db, old, new)
            row = db.execute("SELECT material_salt, material_id FROM keys WHERE key_id = ?",
                             (new.key_id,)).fetchone()
            if row["material_id"] is None:
                db.execute("UPDATE keys SET material_salt = ?, material_id = ? "
                           "WHERE key_id = ?", (salt, material_id, new.key_id))
            elif bytes(row["material_salt"]) != salt or bytes(row["material_id"]) != material_id:
                raise ValueError("different key material was imported meanwhile")
            if version is not None:
                self._insert_version(db, version)
            if restore_blob is not None:
                db.execute("UPDATE key_versions SET blob = ? WHERE key_id = ?",
                           (restore_blob, new.key_id))

    def shred_imported_material(self, old: KeyRecord, new: KeyRecord) -> None:
        """Drop every wrapped blob of a key and write its new record; unlike
        :meth:`destroy_material`, aliases, import tokens and the fingerprint stay (the same
        material may be imported again)."""
        with self.transaction() as db:
            _swap_key(db, old, new)
            db.execute("UPDATE key_versions SET blob = NULL WHERE key_id = ?", (new.key_id,))

    # --- principals --------------------------------------------------------------------

    def put_principal(self, principal_id: str, instance: str, name: str,
                      policies_json: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO principals VALUES (?, ?, ?, ?, ?) ON CONFLICT (principal_id) "
                       "DO UPDATE SET policies = excluded.policies",
                       (principal_id, instance, name, policies_json, time.time()))

    def get_principal(self, principal_id: str) -> PrincipalRecord | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM principals WHERE principal_id = ?", (principal_id,)).fetchone())
        return _principal_from(row) if row is not None else None

    def find_principal(self, instance: str, name: str) -> PrincipalRecord | None:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM principals WHERE instance = ? AND name = ?",
            (instance, name)).fetchone())
        return _principal_from(row) if row is not None else None

    def put_access_key(self, access_key_id: str, principal_id: str, secret_blob: bytes) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO access_keys VALUES (?, ?, ?, ?, 1)",
                       (access_key_id, principal_id, secret_blob, time.time()))

    def get_access_key(self, access_key_id: str) -> AccessKeySecret | None:
        """An *enabled* access key's wrapped secret, for authentication."""
        row = self._read(lambda db: db.execute(
            "SELECT access_key_id, principal_id, secret_blob FROM access_keys "
            "WHERE access_key_id = ? AND enabled = 1", (access_key_id,)).fetchone())
        if row is None:
            return None
        return AccessKeySecret(row["access_key_id"], row["principal_id"],
                               bytes(row["secret_blob"]))

    def find_access_key(self, access_key_id: str) -> AccessKeyInfo | None:
        """An access key, enabled or not, with its principal's name and instance (never its
        secret)."""
        row = self._read(lambda db: db.execute(
            _ACCESS_KEY_INFO + " WHERE a.access_key_id = ?", (access_key_id,)).fetchone())
        return _access_key_from(row) if row is not None else None

    def list_access_keys(self, instance: str | None = None,
                         principal_name: str | None = None) -> list[AccessKeyInfo]:
        """Access keys (never their secrets) by instance, principal name and creation time."""
        rows = self._read(lambda db: db.execute(
            _ACCESS_KEY_INFO + " WHERE (?1 IS NULL OR p.instance = ?1) AND "
            "(?2 IS NULL OR p.name = ?2) ORDER BY p.instance, p.name, a.created, "
            "a.access_key_id", (instance, principal_name)).fetchall())
        return [_access_key_from(r) for r in rows]

    def set_access_key_enabled(self, access_key_id: str, enabled: bool) -> bool:
        """Enable or disable an access key; False if there is no such key."""
        with self.transaction() as db:
            cur = db.execute("UPDATE access_keys SET enabled = ? WHERE access_key_id = ?",
                             (int(enabled), access_key_id))
            return cur.rowcount == 1

    def delete_access_key(self, access_key_id: str) -> bool:
        """Delete an access key and its wrapped secret; False if there is no such key."""
        with self.transaction() as db:
            cur = db.execute("DELETE FROM access_keys WHERE access_key_id = ?",
                             (access_key_id,))
            return cur.rowcount == 1


_ACCESS_KEY_INFO = ("SELECT a.access_key_id, a.principal_id, a.created, a.enabled, p.name, "
                    "p.instance FROM access_keys a JOIN principals p "
                    "ON p.principal_id = a.principal_id")


def _principal_from(row: sqlite3.Row) -> PrincipalRecord:
    return PrincipalRecord(row["principal_id"], row["instance"], row["name"], row["policies"],
                           float(row["created"]))


def _access_key_from(row: sqlite3.Row) -> AccessKeyInfo:
    return AccessKeyInfo(row["access_key_id"], row["principal_id"], row["name"],
                         row["instance"], float(row["created"]), bool(row["enabled"]))
