"""The metadata store's SQL, shared by its engines (:class:`SqlStore`).

Every method of :class:`kms.store.MetadataStore` is written once here, in SQL that SQLite and
PostgreSQL both run: parameters are written ``?`` or ``?N`` (the PostgreSQL engine rewrites
them), rows are read by column name. An engine (:mod:`kms.store.sqlite`,
:mod:`kms.store.postgres`) supplies the connection plumbing: :meth:`SqlStore.transaction`
(one write transaction, durable when it returns), :meth:`SqlStore._read`,
:meth:`SqlStore.change_token`, :meth:`SqlStore.close`, its schema migrations, and the
exception its driver raises for a broken uniqueness constraint (``IntegrityError``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

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
from kms.store.interface import (
    AccessKeyInfo,
    AccessKeySecret,
    ChangeWatch,
    Conflict,
    NodeRecord,
    PrincipalRecord,
)
from kms.store.sql_access_points import SqlAccessPoints
from kms.store.sql_audit import SqlAudit
from kms.store.sql_secrets import SqlSecrets

T = TypeVar("T")
#: A connection as the SQL here uses it (``execute(sql, params)`` -> a cursor with
#: ``fetchone``, ``fetchall`` and ``rowcount``; rows indexable by column name).
Db = Any
Row = Any

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


def _key_from(row: Row) -> KeyRecord:
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


def _version_from(row: Row) -> KeyVersion:
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


def _grant_from(row: Row) -> Grant:
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


_NODE_COLUMNS = ("node_id", "hostname", "address", "version", "pid", "started", "heartbeat",
                 "beat_interval", "workers", "stopped")
_NODE_SETS = ", ".join(f"{c} = excluded.{c}" for c in _NODE_COLUMNS[1:])
_KEY_SETS = ", ".join(f"{c} = ?" for c in _KEY_COLUMNS[1:])


def _swap_key(db: Db, old: KeyRecord, new: KeyRecord) -> None:
    """The compare-and-swap of every key change: write ``new`` iff the stored revision is
    still ``old``'s, else :class:`Conflict`."""
    if new.key_id != old.key_id or new.revision <= old.revision:
        raise ValueError("a key change needs a later revision of the same key")
    cur = db.execute(f"UPDATE keys SET {_KEY_SETS} WHERE key_id = ? AND revision = ?",
                     (*_key_row(new)[1:], new.key_id, old.revision))
    if cur.rowcount != 1:
        raise Conflict("the key changed concurrently; retry")



class SqlStore(SqlSecrets, SqlAccessPoints, SqlAudit):
    """The SQL of every store method (see the module docstring); an engine subclasses it."""

    #: The driver's exception for a broken uniqueness constraint.
    IntegrityError: ClassVar[type[Exception]] = Exception

    def transaction(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _read(self, fn: Callable[[Db], T]) -> T:
        raise NotImplementedError

    def change_token(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._quiet_transaction() as db:  # a lease is no metadata: no cache drops
            cur = db.execute(
                "INSERT INTO leases VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET "
                "owner = excluded.owner, expires = excluded.expires "
                "WHERE leases.owner = ?2 OR leases.expires <= ?4",
                (name, owner, now + ttl, now))
            return bool(cur.rowcount == 1)

    def unlock(self, name: str, owner: str) -> None:
        with self._quiet_transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def exclusive(self, name: str) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def watch(self, on_change: Callable[[int | None], None]) -> ChangeWatch | None:
        return None  # the change token is polled

    def _quiet_transaction(self) -> AbstractContextManager[Db]:
        """A write that is no metadata change (leases, heartbeats): the engine may leave its
        change token alone, so that no process drops its caches for it."""
        return self.transaction()

    # --- nodes -------------------------------------------------------------------------

    def put_node(self, node: NodeRecord) -> None:
        with self._quiet_transaction() as db:
            db.execute(f"INSERT INTO nodes ({', '.join(_NODE_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(_NODE_COLUMNS))}) ON CONFLICT (node_id) DO "
                       f"UPDATE SET {_NODE_SETS}",
                       tuple(getattr(node, c) for c in _NODE_COLUMNS))

    def list_nodes(self) -> list[NodeRecord]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM nodes ORDER BY node_id").fetchall())
        return [NodeRecord(**{c: r[c] for c in _NODE_COLUMNS}) for r in rows]

    # --- instances ---------------------------------------------------------------------

    def instance_account(self, name: str, make: Callable[[], str]) -> str:
        def read() -> Any:
            return self._read(lambda db: db.execute(
                "SELECT account FROM instances WHERE name = ?", (name,)).fetchone())

        row = read()
        if row is not None:
            return str(row["account"])
        try:
            with self.transaction() as db:
                row = db.execute("SELECT account FROM instances WHERE name = ?",
                                 (name,)).fetchone()
                if row is not None:
                    return str(row["account"])
                account = make()
                db.execute("INSERT INTO instances VALUES (?, ?, ?)",
                           (name, account, time.time()))
                return account
        except self.IntegrityError:
            # Another node inserted it since our SELECT (PostgreSQL's READ COMMITTED lets
            # two transactions both see no row): theirs is the instance's account.
            row = read()
            if row is None:
                raise
            return str(row["account"])

    # --- keys and versions -------------------------------------------------------------

    def insert_key(self, record: KeyRecord, version: KeyVersion | None) -> None:
        with self.transaction() as db:
            db.execute(f"INSERT INTO keys ({', '.join(_KEY_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(_KEY_COLUMNS))})", _key_row(record))
            if version is not None:
                self._insert_version(db, version)

    @staticmethod
    def _insert_version(db: Db, v: KeyVersion) -> None:
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
                except self.IntegrityError:
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
            return bool(cur.rowcount == 1)

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
            return bool(cur.rowcount == 1)

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
            return bool(cur.rowcount == 1)

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
            return bool(cur.rowcount == 1)

    def delete_access_key(self, access_key_id: str) -> bool:
        """Delete an access key and its wrapped secret; False if there is no such key."""
        with self.transaction() as db:
            cur = db.execute("DELETE FROM access_keys WHERE access_key_id = ?",
                             (access_key_id,))
            return bool(cur.rowcount == 1)


_ACCESS_KEY_INFO = ("SELECT a.access_key_id, a.principal_id, a.created, a.enabled, p.name, "
                    "p.instance FROM access_keys a JOIN principals p "
                    "ON p.principal_id = a.principal_id")


def _principal_from(row: Row) -> PrincipalRecord:
    return PrincipalRecord(row["principal_id"], row["instance"], row["name"], row["policies"],
                           float(row["created"]))


def _access_key_from(row: Row) -> AccessKeyInfo:
    return AccessKeyInfo(row["access_key_id"], row["principal_id"], row["name"],
                         row["instance"], float(row["created"]), bool(row["enabled"]))
