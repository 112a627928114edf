"""What the service needs of a metadata store: :class:`MetadataStore`, and its records.

Every implementation passes the contract suite ``tests/store/test_contract.py`` (SQLite:
:mod:`kms.store.sqlite`; PostgreSQL to come). The rules an implementation keeps:

* **durable before it returns**: a write's transaction is committed (and on disk) when the
  method returns, so key material and secret values are stored before success is reported;
* **compare-and-swap on records**: a key change names the revision it read
  (``old``) and fails with :class:`Conflict` if the stored record moved on; the caller
  re-reads and retries (:data:`kms.keys.lifecycle.CAS_ATTEMPTS`);
* **a change token** (:meth:`MetadataStore.change_token`) that changes once another process
  (another store object) has committed, so the processes' caches can be dropped; an engine
  may also push changes (:meth:`MetadataStore.watch`: PostgreSQL's LISTEN/NOTIFY);
* **named leases** (:meth:`MetadataStore.try_lock`): one process at a time runs the
  scheduler's jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from kms.errors import Internal
from kms.model import AliasRecord, Grant, ImportToken, KeyRecord, KeyVersion
from kms.secrets.model import SecretRecord, SecretVersion

__all__ = ["AccessKeyInfo", "AccessKeySecret", "AccessPointRecord", "AccessPointStore",
           "AuditAnchorStore", "AuditCheckpoint", "ChangeWatch", "ClientKeyRecord", "Conflict",
           "MetadataStore", "NodeRecord", "PrincipalRecord", "SealedSecret", "SecretStore"]


class Conflict(Internal):
    """A record changed under us (another process committed first); the caller retries."""


@dataclass(frozen=True, slots=True)
class PrincipalRecord:
    """A principal of an instance, with its policies (a JSON array of policy documents)."""

    principal_id: str
    instance: str
    name: str
    policies: str
    created: float


@dataclass(frozen=True, slots=True)
class AccessKeyInfo:
    """What can be known about an access key after its creation: never its secret.

    There is no last-used time: recording one would make every authenticated request a
    metadata write (and make every server worker drop its caches)."""

    access_key_id: str
    principal_id: str
    principal_name: str
    instance: str
    created: float  # epoch seconds
    enabled: bool


@dataclass(frozen=True, slots=True)
class AccessKeySecret:
    """An enabled access key's secret, wrapped by its instance's domain key (for
    authentication only)."""

    access_key_id: str
    principal_id: str
    secret_blob: bytes


@dataclass(frozen=True, slots=True)
class AccessPointRecord:
    """An application access point (:mod:`kms.access_points`): its principal, and its spec
    (a JSON object: roles, resources, networks, description)."""

    instance: str
    name: str
    principal_id: str
    spec: str
    created: float


@dataclass(frozen=True, slots=True)
class ClientKeyRecord:
    """A client key of an access point: only its public key (SubjectPublicKeyInfo, DER) is
    kept; the private key went to the client at creation."""

    client_key_id: str
    instance: str
    access_point: str
    public_key: bytes
    not_before: float
    not_after: float
    revoked: float | None
    created: float


class AccessPointStore(Protocol):
    """Application access points and their client keys."""

    def put_access_point(self, record: AccessPointRecord) -> None:
        """Create an access point, or replace its spec."""
        ...

    def get_access_point(self, instance: str, name: str) -> AccessPointRecord | None: ...

    def list_access_points(self, instance: str | None = None) -> list[AccessPointRecord]:
        """By instance and name."""
        ...

    def put_client_key(self, record: ClientKeyRecord) -> None:
        """A new client key of an existing access point (:class:`kms.errors.AlreadyExists`
        if the id is taken or the access point is missing)."""
        ...

    def get_client_key(self, client_key_id: str) -> ClientKeyRecord | None: ...

    def list_client_keys(self, instance: str | None = None,
                         access_point: str | None = None) -> list[ClientKeyRecord]:
        """By instance, access point and creation time."""
        ...

    def revoke_client_key(self, client_key_id: str, when: float) -> bool:
        """Mark a client key revoked (for good); False if there is none or it already is."""
        ...


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """A secret of the service (not of a tenant), wrapped by ``instance``'s domain key."""

    name: str
    instance: str
    blob: bytes
    created: float


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """An audit segment the store knows of, and the last head of it recorded here."""

    segment: str
    keyed: bool  # its head is MACed with the audit head key
    seq: int
    hash: bytes
    created: float
    updated: float
    location: str = ""  # "<host>:<audit folder>" of its file ("": not recorded)


@dataclass(frozen=True, slots=True)
class AuditHead:
    """An audit segment's head as its ``head`` row has it: the last seq, that record's hash,
    and the head MAC (None: the segment is not keyed)."""

    seq: int
    hash: bytes
    mac: bytes | None = None


@dataclass(frozen=True, slots=True)
class ShippedRecord:
    """One record of an audit segment, exactly as its ``records`` row holds it (the stored
    canonical text and both hashes), as shipped into the store (:mod:`kms.audit_ship`)."""

    seq: int
    record: str
    prev_hash: bytes
    hash: bytes

    def well_formed(self) -> bool:
        """Whether the store takes it: an int seq >= 1, ASCII record text without NUL (a
        canonical record is ASCII), 32-byte hashes."""
        return (type(self.seq) is int and 1 <= self.seq < 1 << 63
                and isinstance(self.record, str) and self.record.isascii()
                and "\0" not in self.record and isinstance(self.prev_hash, bytes)
                and isinstance(self.hash, bytes) and len(self.prev_hash) == len(self.hash) == 32)


@dataclass(frozen=True, slots=True)
class ShippedSegment:
    """An audit segment with a shipped copy in the store, and the head that copy reaches."""

    location: str  # "<host>:<audit folder>" of its file
    segment: str
    head: AuditHead
    updated: float  # epoch seconds of the last shipment that moved the head


@dataclass(frozen=True, slots=True)
class ShipResult:
    """What :meth:`AuditAnchorStore.ship_audit` did."""

    stored: int  # records newly stored
    conflicts: tuple[int, ...] = ()  # seqs already shipped with another row (kept)
    head_shipped: bool = False  # the shipped head is (now) the head offered


class AuditAnchorStore(Protocol):
    """What the audit trail anchors outside its own files (:mod:`kms.audit_anchor`), and the
    shipped copies of segments (:mod:`kms.audit_ship`)."""

    def seal_once(self, name: str, instance: str, blob: bytes, when: float) -> SealedSecret:
        """Store the sealed secret ``name`` unless one is stored already; the stored one
        (so of several processes racing, every one gets the same)."""
        ...

    def get_sealed(self, name: str) -> SealedSecret | None: ...

    def checkpoint_audit(self, segment: str, keyed: bool, seq: int, hash_: bytes,
                         when: float, location: str = "") -> None:
        """Register a segment (at ``location``: a segment is known by both), or move its
        checkpoint forward (never back)."""
        ...

    def forget_audit_segment(self, segment: str, location: str = "") -> None:
        """Drop a segment (at ``location``) that never had a record (its file was
        discarded)."""
        ...

    def audit_checkpoints(self) -> list[AuditCheckpoint]:
        """Every registered segment, by name and location."""
        ...

    def ship_audit(self, location: str, segment: str, records: Sequence[ShippedRecord],
                   head: AuditHead, when: float) -> ShipResult:
        """Store ``records`` (ascending seqs) of the segment at ``location`` and move its
        shipped head forward to ``head``, in one transaction; a quiet write, as a
        checkpoint. Idempotent: a record already shipped with the same row is skipped. A
        shipped record is never changed: if one is offered with another row, the shipment
        stores nothing and moves no head, and the seqs are reported in
        :attr:`ShipResult.conflicts` (evidence of a rewrite of the segment). The head moves
        only forward, and only to a shipped record with the head's hash.
        :class:`ValueError` for malformed input."""
        ...

    def shipped_audit_head(self, location: str, segment: str) -> AuditHead | None:
        """The head the shipped copy of a segment reaches (None: nothing shipped)."""
        ...

    def shipped_audit_records(self, location: str, segment: str, after_seq: int,
                              limit: int) -> list[ShippedRecord]:
        """At most ``limit`` (1..10,000) shipped records of a segment with a seq above
        ``after_seq``, by seq."""
        ...

    def shipped_audit_segments(self) -> list[ShippedSegment]:
        """Every segment with a shipped head, by location and name."""
        ...


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A serving node's heartbeat row (:mod:`kms.cluster`): one per ``hsmpool serve``, not
    per worker."""

    node_id: str  # "<hostname>:<port>"
    hostname: str
    address: str  # the URL it serves on
    version: str  # of hsmpool
    pid: int  # of the process that beats (the supervisor of a multi-worker node)
    started: float  # epoch seconds
    heartbeat: float  # epoch seconds of the last beat
    beat_interval: float  # seconds between beats
    workers: int  # serving now
    stopped: float | None = None  # a clean stop's time

    def __post_init__(self) -> None:
        if self.beat_interval <= 0 or self.workers < 0:
            raise ValueError("a node's beat interval is positive and its workers >= 0")


class ChangeWatch(Protocol):
    """A store's push of changes (:meth:`MetadataStore.watch`)."""

    @property
    def live(self) -> bool:
        """Listening now: every commit from now on is told (else poll the change token)."""
        ...

    def close(self) -> None: ...


class SecretStore(Protocol):
    """The secrets manager's part of the store (:mod:`kms.secrets`): secrets and their
    versions. Every change names the secret revision it read (compare-and-swap) and writes
    the versions it touches in the same transaction."""

    def insert_secret(self, record: SecretRecord,
                      versions: Sequence[SecretVersion] = ()) -> None:
        """A new secret (:class:`kms.errors.AlreadyExists` if its name is taken in the
        instance), with its first versions."""
        ...

    def update_secret(self, old: SecretRecord, new: SecretRecord,
                      versions: Sequence[SecretVersion] = (),
                      drop_versions: Sequence[str] = ()) -> None:
        """Write ``new`` iff the stored record is still ``old`` (:class:`Conflict`), insert
        or replace (stages) each of ``versions``, delete ``drop_versions``: one
        transaction."""
        ...

    def get_secret(self, secret_id: str) -> SecretRecord | None: ...

    def find_secret(self, instance: str, *, name: str | None = None,
                    arn: str | None = None) -> SecretRecord | None:
        """An instance's secret by name or by full ARN."""
        ...

    def list_secrets(self, instance: str, after: str, limit: int) -> list[SecretRecord]:
        """An instance's secrets by name, after ``after``."""
        ...

    def get_secret_version(self, secret_id: str, version_id: str) -> SecretVersion | None: ...

    def secret_versions(self, secret_id: str) -> list[SecretVersion]:
        """A secret's versions, oldest first."""
        ...

    def secrets_due(self, now: float) -> list[SecretRecord]:
        """Secrets whose deletion or rotation is due."""
        ...

    def purge_secret(self, old: SecretRecord) -> None:
        """Delete a secret and every version of it (compare-and-swap as
        :meth:`update_secret`); its name is free again."""
        ...


class MetadataStore(SecretStore, AccessPointStore, AuditAnchorStore, Protocol):
    """The metadata of every instance: keys and versions, aliases, grants, import tokens,
    imported material fingerprints, principals and access keys, secrets (see the module
    docstring for the rules). Thread-safe."""

    # --- plumbing

    def change_token(self) -> int:
        """A number that changes once another process has committed to the store (a
        metadata change: an engine may leave it alone for leases and heartbeats)."""
        ...

    def watch(self, on_change: Callable[[int | None], None]) -> ChangeWatch | None:
        """Call ``on_change`` from a thread of the store's soon after any process commits
        (with the new change token, when known), and with None whenever changes may have
        been missed (listening began or resumed). None: this engine cannot push changes
        (poll :meth:`change_token`). Closed with the store."""
        ...

    def exclusive(self, name: str) -> AbstractContextManager[object]:
        """Held by one process of the whole cluster at a time, while the block runs (the
        first set-up of an instance's domain keys). SQLite's is a no-op: its processes
        share one host, whose own lock serialises them."""
        ...

    def ping(self, timeout: float) -> None:
        """Run the cheapest query there is, waiting at most about ``timeout`` seconds for a
        connection (readiness checks); raises if the store does not answer."""
        ...

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``owner`` for ``ttl`` seconds; False if
        another owner holds an unexpired lease."""
        ...

    def unlock(self, name: str, owner: str) -> None:
        """Give up ``owner``'s lease ``name`` (nothing if another owner holds it)."""
        ...

    def close(self) -> None: ...

    def put_node(self, node: NodeRecord) -> None:
        """Write a node's heartbeat row (insert or replace). Not a change of metadata: it
        moves no change token on PostgreSQL (SQLite's moves with every commit)."""
        ...

    def list_nodes(self) -> list[NodeRecord]:
        """Every node that ever beat, by node id."""
        ...

    def instance_account(self, name: str, make: Callable[[], str]) -> str:
        """The instance's account id, made by ``make`` and stored on first use (every
        process gets the same)."""
        ...

    # --- keys and versions

    def insert_key(self, record: KeyRecord, version: KeyVersion | None) -> None: ...

    def update_key(self, old: KeyRecord, new: KeyRecord,
                   version: KeyVersion | None = None) -> None:
        """Write ``new`` (and add ``version``) iff the stored record is still ``old``
        (:class:`Conflict` otherwise). ``new`` must be a later revision of the same key."""
        ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def list_keys(self, instance: str, after: str, limit: int) -> list[KeyRecord]:
        """An instance's keys by key id, after ``after``."""
        ...

    def keys_due(self, now: float) -> list[KeyRecord]:
        """Keys whose rotation, deletion or imported-material expiry is due (never a
        purged key)."""
        ...

    def get_version(self, version_id: str) -> KeyVersion | None: ...

    def list_versions(self, key_id: str) -> list[KeyVersion]:
        """A key's versions by number."""
        ...

    def destroy_material(self, old: KeyRecord, new: KeyRecord) -> None:
        """Crypto-shred (compare-and-swap as :meth:`update_key`): drop every wrapped blob of
        the key, its aliases, import tokens and grants, and write ``new``."""
        ...

    # --- aliases

    def put_alias(self, alias: AliasRecord, *, create: bool) -> None:
        """Create (:class:`kms.errors.AlreadyExists` if the name is taken) or repoint."""
        ...

    def get_alias(self, instance: str, name: str) -> AliasRecord | None: ...

    def delete_alias(self, instance: str, name: str, *, key_id: str | None = None) -> bool:
        """Delete an alias (only if it still points at ``key_id``, when given)."""
        ...

    def list_aliases(self, instance: str, key_id: str | None, after: str,
                     limit: int) -> list[AliasRecord]: ...

    def alias_names_of_key(self, instance: str, key_id: str) -> list[str]: ...

    # --- grants

    def create_grant(self, grant: Grant, *, per_grantee_limit: int) -> Grant:
        """Store ``grant``, or return the identical grant of the same name (a retried
        CreateGrant); :class:`kms.errors.LimitExceeded` past ``per_grantee_limit``."""
        ...

    def get_grant(self, grant_id: str) -> Grant | None: ...

    def grants_of_key(self, key_id: str) -> list[Grant]: ...

    def list_grants(self, key_id: str, after: str, limit: int, *, grant_id: str | None = None,
                    grantee_id: str | None = None) -> list[Grant]: ...

    def list_retirable_grants(self, instance: str, retiring_id: str, after: str,
                              limit: int) -> list[Grant]: ...

    def delete_grant(self, grant_id: str, key_id: str) -> bool: ...

    # --- import tokens and imported material

    def put_import_token(self, token: ImportToken) -> None: ...

    def get_import_token(self, token_id: str) -> ImportToken | None: ...

    def delete_import_tokens(self, key_id: str) -> None: ...

    def delete_import_token(self, token_id: str) -> bool: ...

    def count_import_tokens(self, key_id: str) -> int: ...

    def delete_expired_import_tokens(self, key_id: str, now: float) -> None: ...

    def material_fingerprint(self, key_id: str) -> tuple[bytes, bytes] | None:
        """(salt, keyed fingerprint) of the material imported into a key, if any."""
        ...

    def import_material(self, old: KeyRecord, new: KeyRecord, *, token_id: str,
                        salt: bytes, material_id: bytes, version: KeyVersion | None = None,
                        restore_blob: bytes | None = None) -> None:
        """One transaction: consume the import token (:class:`LookupError` if gone), write
        ``new`` iff the stored record is ``old`` (:class:`Conflict`), record the material's
        fingerprint or check it is unchanged (:class:`ValueError`), and add ``version`` or
        put ``restore_blob`` back into the key's shredded versions."""
        ...

    def shred_imported_material(self, old: KeyRecord, new: KeyRecord) -> None:
        """Drop every wrapped blob of a key and write ``new`` (compare-and-swap); aliases,
        import tokens and the fingerprint stay."""
        ...

    # --- principals and access keys

    def put_principal(self, principal_id: str, instance: str, name: str,
                      policies_json: str) -> None:
        """Create a principal, or replace its policies."""
        ...

    def get_principal(self, principal_id: str) -> PrincipalRecord | None: ...

    def find_principal(self, instance: str, name: str) -> PrincipalRecord | None: ...

    def put_access_key(self, access_key_id: str, principal_id: str,
                       secret_blob: bytes) -> None: ...

    def get_access_key(self, access_key_id: str) -> AccessKeySecret | None:
        """An *enabled* access key's wrapped secret, for authentication."""
        ...

    def find_access_key(self, access_key_id: str) -> AccessKeyInfo | None:
        """An access key, enabled or not (never its secret)."""
        ...

    def list_access_keys(self, instance: str | None = None,
                         principal_name: str | None = None) -> list[AccessKeyInfo]:
        """By instance, principal name and creation time."""
        ...

    def set_access_key_enabled(self, access_key_id: str, enabled: bool) -> bool: ...

    def delete_access_key(self, access_key_id: str) -> bool: ...
