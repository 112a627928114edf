"""The KMS service: :class:`Kms` (shared, thread-safe) and :class:`KmsClient` (a caller).

Every operation runs one pipeline: resolve the key (id, ARN, alias or alias ARN) ->
authorise (instance; the principal's policies, the key's policy and grants, against the key
ARN and its aliases' ARNs: see :mod:`kms.policy`; a caller not allowed is told the key does
not exist) -> check state and usage -> the pool or software operation -> audit (once, under
the operation's own action).

Key records are immutable; a change builds the new record, the store writes it in one
transaction (compare-and-swap on the revision), and only then is it swapped into the cache.
Caches are dropped when another process commits to the store (``PRAGMA data_version``,
checked at most every 50 ms).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import hsmpool
from hsmpool import KeyBlob, Pool
from hsmpool.gm import SM4GCM, SM2PrivateKey, SM2PublicKey, hmac_sm3
from hsmpool.gm import DecryptionError as GmDecryptionError
from hsmpool.gm import InvalidSignature as GmInvalidSignature
from hsmpool.gm import InvalidTag as GmInvalidTag
from hsmpool.instance import Instance, SignAlgorithm
from kms import ciphertext as ctf
from kms import errors as E
from kms import grants as _grants
from kms import importing as _importing
from kms.audit import AuditEvent as _AuditEvent
from kms.config import KmsSettings
from kms.model import (
    SPECS,
    AliasRecord,
    Grant,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    ProtectionLevel,
)
from kms.policy import (
    Authorizer,
    KeyPolicy,
    PolicyError,
    Request,
    identity_effect,
    key_decision,
    principal_arn,
)
from kms.store import ConcurrentUpdate, Store

T = TypeVar("T")
log = logging.getLogger(__name__)

DAY: Final = 86400.0
_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ALIAS_RE: Final = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
_ARN_RE: Final = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(key|alias)/(.+)$")
_DATA_KEY_SPECS: Final = {"AES_256": 32, "AES_128": 16, "SM4": 16}
_PAIR_SPECS: Final = ("RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
                      "ECC_NIST_P521", "ECC_SECG_P256K1", "SM2")
_SIGN_ALG: Final = {a.value: a for a in SignAlgorithm}
_HASH_OBJ: Final[dict[str, hashes.HashAlgorithm]] = {
    "SHA_1": hashes.SHA1(), "SHA_256": hashes.SHA256(), "SHA_384": hashes.SHA384(),
    "SHA_512": hashes.SHA512()}
_MAC_HASH: Final = {"HMAC_SHA_256": "sha256", "HMAC_SHA_384": "sha384",
                    "HMAC_SHA_512": "sha512"}
_SYMMETRIC_NAMES: Final = frozenset({"SYMMETRIC_DEFAULT", "SM4_GCM"})
MAX_MESSAGE: Final = 4096
CAS_ATTEMPTS: Final = 20  # compare-and-swap attempts of a key change before giving up


def _conflict_pause(attempt: int) -> None:
    """After a lost compare-and-swap (another process changed the key first): a short random
    pause that grows with the attempt, so that two writers do not keep colliding."""
    time.sleep(random.random() * 0.001 * (attempt + 1))


#: A token's statistics, as the pool reports them (``Kms.token_stats``).
TokenStats = hsmpool.MemberStats


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    store_ok: bool
    tokens: Mapping[str, str]  # token name -> state ("healthy", "ejected", ...)
    healthy_per_instance: Mapping[str, int]
    missing: Mapping[str, str] = field(default_factory=dict)  # left out at start: why

    @property
    def ok(self) -> bool:
        return self.store_ok and all(n > 0 for n in self.healthy_per_instance.values())


@dataclass(frozen=True, slots=True)
class EncryptResult:
    ciphertext_blob: bytes
    key_id: str  # ARN
    encryption_algorithm: str


@dataclass(frozen=True, slots=True)
class DecryptResult:
    plaintext: bytes
    key_id: str  # ARN
    encryption_algorithm: str
    key_version: str


@dataclass(frozen=True, slots=True)
class DataKey:
    plaintext: bytes | None
    ciphertext_blob: bytes
    key_id: str


@dataclass(frozen=True, slots=True)
class DataKeyPair:
    private_key_plaintext: bytes | None
    private_key_ciphertext_blob: bytes
    public_key: bytes
    key_id: str
    key_pair_spec: str


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    key_id: str
    public_key: bytes
    key_spec: str
    key_usage: str
    encryption_algorithms: tuple[str, ...]
    signing_algorithms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListPage:
    items: tuple[Any, ...]
    next_marker: str | None


def _bytes(value: object, what: str, *, max_len: int | None = None,
           allow_empty: bool = False) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, bytearray | memoryview):
        data = bytes(value)
    else:
        raise E.Validation(f"{what} must be bytes")
    if not data and not allow_empty:
        raise E.Validation(f"{what} must not be empty")
    if max_len is not None and len(data) > max_len:
        raise E.Validation(f"{what} must be at most {max_len} bytes")
    return data


class _Material:
    """Per-version SOFTWARE key objects (SM4-GCM, SM2, HMAC-SM3 keys), LRU-cached."""

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, version_id: str, make: Callable[[], T]) -> T:
        obj = self._items.get(version_id)
        if obj is None:
            obj = make()
            with self._lock:
                self._items[version_id] = obj
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
        return obj

    def drop(self, version_ids: Sequence[str]) -> None:
        with self._lock:
            for v in version_ids:
                self._items.pop(v, None)


class Kms:
    """The service over a pool and a metadata store. Thread-safe; share one per process.

    ``now`` (seconds since the epoch) and ``rng`` are injectable so rotation, expiry and
    deletion windows can be tested without sleeping.
    """

    def __init__(
        self,
        pool: Pool,
        store: Store,
        settings: KmsSettings,
        *,
        audit: Any = None,
        now: Callable[[], float] = time.time,
        authorizer: Any = None,
        owns_pool: bool = False,
    ) -> None:
        self.pool = pool
        self.store = store
        self.settings = settings
        self.audit = audit
        self.now = now
        self._owns_pool = owns_pool
        self._authorizer: Authorizer | None = authorizer
        self._keys: dict[str, KeyRecord] = {}
        self._aliases: dict[tuple[str, str], str | None] = {}
        # Per key: its resource names (key ARN, then the ARNs of its aliases) and its grants
        # by grantee principal id; key policies parsed, by document text.
        self._names: dict[str, tuple[str, ...]] = {}
        self._grants: dict[str, Mapping[str, tuple[Grant, ...]]] = {}
        self._key_policies: dict[str, KeyPolicy] = {}
        self._versions: dict[str, KeyVersion] = {}
        self._blobs: dict[str, KeyBlob] = {}
        self._headers: dict[str, bytes] = {}  # version id -> ciphertext header
        self._material = _Material()
        self._accounts: dict[str, str] = {}
        self._cache_lock = threading.Lock()
        # Read-modify-write of key records: one at a time in this process, so that threads
        # do not exhaust each other's compare-and-swap retries (left for other processes).
        self._write_lock = threading.RLock()
        self._data_version = store.data_version()
        self._generation = 0  # bumped by every write and drop (see _key)
        self._checked = time.monotonic()
        self._scheduler: threading.Thread | None = None
        self._stop = threading.Event()

    # --- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, config_path: str | os.PathLike[str], *, now: Callable[[], float] = time.time,
             audit_segment: str | None = None) -> Kms:
        from kms.config import load

        pool_cfg, settings = load(config_path)
        pool = Pool(pool_cfg)
        try:
            store = Store(settings.database)
            audit = None
            if settings.audit_dir is not None:
                from kms.audit import AuditLog

                audit = AuditLog(settings.audit_dir, audit_segment)
            return cls(pool, store, settings, audit=audit, now=now, owns_pool=True)
        except BaseException:
            pool.close()
            raise

    def change_token(self) -> int:
        """A number that changes whenever another process committed to the metadata store
        (callers drop what they cache when it does)."""
        return self.store.data_version()

    def token_stats(self) -> dict[str, TokenStats]:
        """Per token of the pool: state, in-flight, ops, errors, latency percentiles."""
        return self.pool.stats()

    def health(self) -> ServiceHealth:
        """The tokens' states, the healthy tokens per instance, whether the store answers."""
        try:
            self.store.data_version()
            store_ok = True
        except Exception:  # noqa: BLE001 - any failure of the store is "not ok"
            store_ok = False
        return ServiceHealth(
            store_ok,
            {name: s.state for name, s in self.pool.stats().items()},
            {name: len(inst.healthy_members()) for name, inst in self.pool.instances.items()},
            dict(self.pool.missing))

    def token_latency(self, token: str, bounds_s: tuple[float, ...]) -> tuple[list[int], float]:
        """A token's call latencies in buckets up to each bound (and one more), and their
        approximate sum in seconds (Prometheus histograms)."""
        return self.pool.members[token].latency_buckets(bounds_s)

    def audit_backlog(self) -> int:
        """Audit records waiting for the writer."""
        return self.audit.pending if self.audit is not None else 0

    def forget_authorizations(self) -> None:
        """Drop remembered authorization decisions (principals or policies changed)."""
        if self._authorizer is not None:
            self._authorizer.invalidate()

    def client(self, instance: str = "default", principal: Any = None,
               source_ip: str | None = None, *, audit_name: str | None = None) -> KmsClient:
        """A caller of the service: an instance, and a principal (None: the embedding
        application itself, with every permission inside the instance). ``audit_name`` is
        the principal recorded in the audit trail (default: the principal's name, "" for
        the embedder; the CLI names the OS user). Raises
        :class:`kms.errors.InstanceNotFound` for an instance the pool does not have."""
        try:
            self.pool.instance(instance)
        except hsmpool.InstanceNotFoundError:
            raise E.InstanceNotFound(f"instance {instance!r} is not configured in the pool") \
                from None
        return KmsClient(self, instance, principal, source_ip, audit_name=audit_name)

    def close(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)
        if self.audit is not None:
            self.audit.close()
        self.store.close()
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> Kms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- caches ------------------------------------------------------------------------

    def _fresh(self) -> None:
        """Drop caches if another process committed since we last looked."""
        t = time.monotonic()
        if t - self._checked < 0.05:
            return
        self._checked = t
        dv = self.store.data_version()
        if dv != self._data_version:
            self._data_version = dv
            self._drop_caches()

    def _drop_caches(self) -> None:
        with self._cache_lock:
            self._generation += 1
            self._keys.clear()
            self._aliases.clear()
            self._names.clear()
            self._grants.clear()
            self._versions.clear()  # blobs can be shredded or restored by another process
        self._forget_decisions()  # key policies, aliases or grants may have changed

    @property
    def authorizer(self) -> Authorizer:
        """The decision cache of this service's callers (made on first use)."""
        authz = self._authorizer
        if authz is None:
            authz = self._authorizer = Authorizer()
        return authz

    def _forget_decisions(self) -> None:
        if self._authorizer is not None:
            self._authorizer.invalidate()

    def account(self, instance: str) -> str:
        acct = self._accounts.get(instance)
        if acct is None:
            acct = self.settings.accounts.get(instance) or self.store.instance_account(
                instance, lambda: "".join(secrets.choice("0123456789") for _ in range(12)))
            self._accounts[instance] = acct
        return acct

    def key_arn(self, instance: str, key_id: str) -> str:
        return f"arn:aws:kms:{self.settings.region}:{self.account(instance)}:key/{key_id}"

    def alias_arn(self, instance: str, name: str) -> str:
        return f"arn:aws:kms:{self.settings.region}:{self.account(instance)}:{name}"

    def _key(self, key_id: str) -> KeyRecord | None:
        rec = self._keys.get(key_id)
        if rec is None:
            generation = self._generation
            rec = self.store.get_key(key_id)
            if rec is not None:
                with self._cache_lock:
                    if generation == self._generation:  # no write or drop since the read
                        self._keys[key_id] = rec
        return rec

    def _swap(self, rec: KeyRecord) -> None:
        """After a write: forget the cached record; the next use reads the store. (Caching
        ``rec`` could go back in time: a slower writer's older revision would replace a newer
        one, and e.g. a key disabled meanwhile would stay usable in this process.)"""
        with self._cache_lock:
            self._generation += 1
            self._keys.pop(rec.key_id, None)

    def _forget_alias(self, instance: str, name: str, *key_ids: str) -> None:
        """After an alias write: evict it and the resource names of the keys it pointed at
        and points at (as :meth:`_swap` does for keys)."""
        with self._cache_lock:
            self._generation += 1
            self._aliases.pop((instance, name), None)
            for key_id in key_ids:
                self._names.pop(key_id, None)

    def resource_names(self, rec: KeyRecord) -> tuple[str, ...]:
        """The names a policy sees a key by: its ARN and the ARNs of every alias pointing at
        it now (AWS's kms:ResourceAliases). Cached; alias writes and other processes'
        commits evict them."""
        names = self._names.get(rec.key_id)
        if names is None:
            generation = self._generation
            aliases = self.store.alias_names_of_key(rec.instance, rec.key_id)
            names = (rec.arn, *(self.alias_arn(rec.instance, a) for a in aliases))
            with self._cache_lock:
                if generation == self._generation:
                    self._names[rec.key_id] = names
        return names

    def grants_for(self, key_id: str) -> Mapping[str, tuple[Grant, ...]]:
        """A key's grants by grantee principal id. Cached; grant writes and other
        processes' commits evict them."""
        by_grantee = self._grants.get(key_id)
        if by_grantee is None:
            generation = self._generation
            index: dict[str, list[Grant]] = {}
            for g in self.store.grants_of_key(key_id):
                index.setdefault(g.grantee_id, []).append(g)
            by_grantee = {pid: tuple(gs) for pid, gs in index.items()}
            with self._cache_lock:
                if generation == self._generation:
                    self._grants[key_id] = by_grantee
        return by_grantee

    def forget_grants(self, key_id: str) -> None:
        """After a grant write: evict the key's grants and every cached decision."""
        with self._cache_lock:
            self._generation += 1
            self._grants.pop(key_id, None)
        self._forget_decisions()

    def key_policy(self, rec: KeyRecord) -> KeyPolicy | None:
        """A key's policy, parsed (None: the default policy, which defers to the
        principals' own policies). A stored document that does not parse (written before
        key policies were checked) allows nobody: only grants then give access."""
        text = rec.policy
        if text is None:
            return None
        kp = self._key_policies.get(text)
        if kp is None:
            try:
                kp = KeyPolicy.from_json(text)
            except PolicyError:
                log.warning("key %s: its stored key policy does not parse; it allows no "
                            "principal until replaced (PutKeyPolicy)", rec.key_id)
                kp = _NOBODY
            if len(self._key_policies) > 4096:
                self._key_policies.clear()
            self._key_policies[text] = kp
        return kp

    def _version(self, version_id: str) -> KeyVersion | None:
        v = self._versions.get(version_id)
        if v is None:
            v = self.store.get_version(version_id)
            if v is not None and v.blob is not None:
                self._versions[version_id] = v
        return v

    def _blob(self, v: KeyVersion) -> KeyBlob:
        kb = self._blobs.get(v.version_id)
        if kb is None:
            if v.blob is None:
                raise E.KMSInvalidState("the key material of this key has been deleted")
            kb = KeyBlob.parse(v.blob)
            self._blobs[v.version_id] = kb
        return kb

    def _forget_versions(self, versions: Sequence[KeyVersion], instance: Instance) -> None:
        ids = [v.version_id for v in versions]
        for v in versions:
            self._versions.pop(v.version_id, None)
            kb = self._blobs.pop(v.version_id, None)
            if kb is not None:
                instance.invalidate(kb)
        self._material.drop(ids)

    # --- material ----------------------------------------------------------------------

    def new_version(self, inst: Instance, key_id: str, spec: KeySpec, number: int,
                    now: float) -> KeyVersion:
        """Generate fresh material for a key in the pool."""
        info = SPECS[spec]
        try:
            if spec is KeySpec.SM2:
                priv = SM2PrivateKey.generate()
                blob = inst.import_secret(priv.to_bytes())
                public = priv.public_key().to_der()
            elif info.protection is ProtectionLevel.SOFTWARE:
                blob = inst.generate_secret(info.secret_len)
                public = b""
            else:
                blob = inst.generate(info.pool_spec)
                public = blob.public_key
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None
        return KeyVersion(uuid.uuid4().hex, key_id, number, now, bytes(blob), public)

    def software_secret(self, inst: Instance, v: KeyVersion) -> bytes:
        try:
            return inst.export_secret(self._blob(v))
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None

    def sm4(self, inst: Instance, v: KeyVersion) -> SM4GCM:
        return self._material.get(v.version_id, lambda: SM4GCM(self.software_secret(inst, v)))

    def sm2(self, inst: Instance, v: KeyVersion) -> SM2PrivateKey:
        return self._material.get(
            v.version_id, lambda: SM2PrivateKey.from_bytes(self.software_secret(inst, v)))

    # --- scheduler ---------------------------------------------------------------------

    def run_due(self, now: float | None = None) -> dict[str, list[str]]:
        """Run due rotations, purge keys past their deletion window, and expire imported
        material. Returns the key ids handled, by kind."""
        t = self.now() if now is None else now
        done: dict[str, list[str]] = {"rotated": [], "purged": [], "expired": []}
        for rec in self.store.keys_due(t):
            if rec.purged:
                continue  # purged already: its row stays (PendingDeletion) for the audit trail
            inst = self.pool.instance(rec.instance)
            job = KmsClient(self, rec.instance, None, None, audit_name=SCHEDULER_PRINCIPAL)
            try:
                # Bounded like a request: a hung token costs this job, not the scheduler.
                with hsmpool.deadline(self.pool.settings.operation_timeout):
                    self._run_job(job, inst, rec, t, done)
            except ConcurrentUpdate:
                continue  # another worker got there first
        if any(done.values()):
            self._drop_caches()
        return done

    def _run_job(self, job: KmsClient, inst: Instance, rec: KeyRecord, t: float,
                 done: dict[str, list[str]]) -> None:
        if rec.state is KeyState.PENDING_DELETION:
            self._purge(inst, rec)
            done["purged"].append(rec.key_id)
            job._audit("kms:DeleteKey", rec, None, "ok")
        elif rec.import_valid_to is not None and rec.import_valid_to <= t:
            self._expire_import(inst, rec)
            done["expired"].append(rec.key_id)
            job._audit("kms:ExpireKeyMaterial", rec, None, "ok")
        elif rec.rotation_enabled and rec.next_rotation is not None:
            v = self.rotate(inst, rec, t, scheduled=True)
            done["rotated"].append(rec.key_id)
            job._audit("kms:RotateKey", rec, v.version_id, "ok")

    def start_scheduler(self, interval: float = 60.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.run_due()
                except Exception:  # noqa: BLE001 - the scheduler must keep running
                    continue

        self._scheduler = threading.Thread(target=loop, name="kms-scheduler", daemon=True)
        self._scheduler.start()

    def rotate(self, inst: Instance, rec: KeyRecord, now: float, *,
               scheduled: bool = False) -> KeyVersion:
        versions = self.store.list_versions(rec.key_id)
        number = (versions[-1].number if versions else 0) + 1
        v = self.new_version(inst, rec.key_id, rec.spec, number, now)
        changes: dict[str, object] = {"primary_version": v.version_id}
        if rec.rotation_enabled and scheduled:
            # on-demand rotations leave the automatic schedule alone (as in AWS KMS)
            base = rec.next_rotation or now
            nxt = base + rec.rotation_period_days * DAY
            while nxt <= now:
                nxt += rec.rotation_period_days * DAY
            changes["next_rotation"] = nxt
        new = rec.evolve(**changes)
        self.store.update_key(rec, new, v)
        self._swap(new)
        return v

    def _purge(self, inst: Instance, rec: KeyRecord) -> None:
        versions = self.store.list_versions(rec.key_id)
        new = rec.evolve(state=KeyState.PENDING_DELETION, primary_version=None,
                         purged_at=self.now())
        self.store.destroy_material(rec, new)
        self._forget_versions(versions, inst)
        self._swap(new)

    def _expire_import(self, inst: Instance, rec: KeyRecord) -> None:
        versions = self.store.list_versions(rec.key_id)
        new = rec.evolve(state=KeyState.PENDING_IMPORT, primary_version=None,
                         import_valid_to=None)
        # Like DeleteImportedKeyMaterial: aliases and the material fingerprint stay, so the
        # same material can be imported again.
        self.store.shred_imported_material(rec, new)
        self._forget_versions(versions, inst)
        self._swap(new)

    # --- the operators' console (kms/api/console.py) -------------------------------------

    def partitions(self) -> dict[str, tuple[str, ...]]:
        """Per instance, the names of the tokens of its partition as configured (tokens
        left out at start included: see :meth:`health`)."""
        return {name: tuple(inst.tokens) for name, inst in self.pool.config.instances.items()}

    def hold_token(self, token: str) -> bool:
        """An operator's ejection of a token from this process's pool, until
        :meth:`release_token` (the prober leaves it out meanwhile). True if it was serving.
        :class:`kms.errors.NotFound` for a token the pool does not have."""
        try:
            return self.pool.hold(token)
        except KeyError:
            raise E.NotFound(f"token {token!r} is not in the pool") from None

    def describable(self, client: KmsClient, records: Sequence[KeyRecord]) -> list[KeyRecord]:
        """The records among ``records`` that ``client`` may DescribeKey (its policies, the
        keys' policies and grants), decided without writing audit records: what an
        operators' console shows of a ListKeys page (AWS lists every key id to a caller
        allowed ListKeys; their metadata is DescribeKey's)."""
        if client.principal is None:
            return list(records)
        return [r for r in records
                if client._allow("kms:DescribeKey", client._names(r), key=r)]

    def release_token(self, token: str) -> bool:
        """End an operator's hold: the prober probes the token and readmits it when it
        answers. True if it was held. :class:`kms.errors.NotFound` as for :meth:`hold_token`."""
        try:
            return self.pool.release(token)
        except KeyError:
            raise E.NotFound(f"token {token!r} is not in the pool") from None


_NO_DETAILS: Final[Mapping[str, str]] = {}
SCHEDULER_PRINCIPAL: Final = "hsmpool:scheduler"  # the audit trail's name for scheduled jobs

#: Actions that change state: their success is acknowledged only after the audit record is
#: durable (KmsClient._audit flushes the log).
DURABLE_ACTIONS: Final = frozenset({
    "kms:CreateKey", "kms:EnableKey", "kms:DisableKey", "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion", "kms:UpdateKeyDescription", "kms:TagResource",
    "kms:UntagResource", "kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias",
    "kms:EnableKeyRotation", "kms:DisableKeyRotation", "kms:RotateKeyOnDemand",
    "kms:GetParametersForImport", "kms:ImportKeyMaterial", "kms:DeleteImportedKeyMaterial",
    "kms:PutKeyPolicy", "kms:CreateGrant", "kms:RetireGrant", "kms:RevokeGrant",
    "kms:RotateKey", "kms:DeleteKey", "kms:ExpireKeyMaterial",
})
_REQUEST_PREFIX: Final = f"{os.getpid():x}-{secrets.token_hex(4)}-"
_request_counter = itertools.count(1)


def _next_request_id() -> str:
    """Unique per process run: the pid, a random tag, and a counter (cheaper than uuid4)."""
    return _REQUEST_PREFIX + str(next(_request_counter))


_NOBODY: Final = KeyPolicy(())  # a key policy that allows no principal


def pool_error(exc: hsmpool.HsmPoolError) -> E.KmsError:
    """The service's error for a failure of the pool (never its message: it names tokens)."""
    if isinstance(exc, hsmpool.InvalidTagError):
        return E.InvalidCiphertext("the ciphertext is not valid")
    if isinstance(exc, hsmpool.InvalidBlobError):
        return E.KMSInternal("stored key material could not be used")
    if isinstance(exc, hsmpool.DecryptionError):
        return E.InvalidCiphertext("the ciphertext could not be decrypted")
    if isinstance(exc, hsmpool.DeadlineExceededError):
        return E.DependencyTimeout("the HSMs did not answer in time; retry")
    if isinstance(exc, hsmpool.UnsupportedOperationError | hsmpool.PoolUnavailableError):
        return E.KeyUnavailable("no HSM is available to serve the request")
    return E.KMSInternal("the HSM pool failed")


class KmsClient:
    """The operations of the service, as one caller (instance + principal) sees them.

    Method names and arguments follow the AWS KMS API (snake_case). Key ids may be a key
    id, a key ARN, an alias name (``alias/x``) or an alias ARN.
    """

    def __init__(self, kms: Kms, instance: str, principal: Any, source_ip: str | None, *,
                 audit_name: str | None = None) -> None:
        self.kms = kms
        self.instance_name = instance
        self.inst = kms.pool.instance(instance)
        self.principal = principal
        self.principal_id = "" if principal is None else str(getattr(principal, "id", ""))
        # The name the audit trail records: the principal's, or for the embedder (principal
        # None) the given name ("" by default).
        self._principal_name = audit_name if audit_name is not None else (
            "" if principal is None else str(getattr(principal, "name", "")))
        self.source_ip = source_ip
        self._store = kms.store
        self._account = kms.account(instance)
        #: The caller's principal ARN (grants and key policies name principals by it);
        #: None for the embedder.
        self.principal_arn = None if principal is None else principal_arn(self._account,
                                                                          principal.name)
        self._decisions: dict[tuple[str, tuple[str, ...]], tuple[int, bool]] = {}
        # Decisions of principals whose policies look at the encryption context are never
        # remembered (the Authorizer does not cache them either).
        self._principal_has_conditions = principal is not None and any(
            st.encryption_context for pol in principal.policies for st in pol.statements)

    # --- pipeline ----------------------------------------------------------------------

    def _resolve(self, key_id: object) -> tuple[KeyRecord, str | None]:
        """The key record, and the alias it was named by (None: by key id or key ARN)."""
        kms = self.kms
        kms._fresh()
        if type(key_id) is str:
            hit = kms._keys.get(key_id)
            if hit is not None and hit.instance == self.instance_name and hit.purged_at is None:
                return hit, None
        if not isinstance(key_id, str) or not key_id:
            raise E.Validation("KeyId must be a non-empty string")
        target = key_id
        alias: str | None = None
        if key_id.startswith("arn:"):
            m = _ARN_RE.fullmatch(key_id)
            if m is None:
                raise E.NotFound(f"key {key_id!r} does not exist")
            region, account, kind, rest = m.groups()
            if region != kms.settings.region or account != self._account:
                raise E.NotFound(f"key {key_id!r} does not exist")
            if kind == "alias":
                alias = "alias/" + rest
            else:
                target = rest
        elif key_id.startswith("alias/"):
            alias = key_id
        if alias is not None:
            target = self._alias_target(alias)
        rec = kms._key(target) if _UUID_RE.match(target) else None
        if rec is None or rec.instance != self.instance_name or rec.purged:
            raise E.NotFound(f"key {key_id!r} does not exist")
        return rec, alias

    def _alias_target(self, alias: str) -> str:
        kms = self.kms
        cache_key = (self.instance_name, alias)
        target_id = kms._aliases.get(cache_key)
        if target_id is None:
            generation = kms._generation
            rec_a = self._store.get_alias(self.instance_name, alias)
            if rec_a is None:
                raise E.NotFound(f"alias {alias!r} does not exist")
            target_id = rec_a.key_id
            with kms._cache_lock:
                if generation == kms._generation:  # no write or drop since the read
                    kms._aliases[cache_key] = target_id
        return target_id

    def _names(self, rec: KeyRecord, alias: str | None = None) -> tuple[str, ...]:
        """The resource names a key operation is authorised against: the key ARN and the
        ARNs of the key's aliases (kms:ResourceAliases), with the alias the caller named it
        by (kms:RequestAlias) among them."""
        names = self.kms.resource_names(rec)
        if alias is not None:
            arn = self.kms.alias_arn(self.instance_name, alias)
            if arn not in names:
                names = (*names, arn)
        return names

    def _allow(self, action: str, resources: tuple[str, ...],
               context: Mapping[str, str] | None = None, *, key: KeyRecord | None = None,
               tokens: Sequence[tuple[str, str]] = (),
               grant_ok: Callable[[Grant], bool] | None = None) -> bool:
        """The decision for the caller: its own policies and, for an operation on ``key``,
        the key's policy and grants (those of ``tokens`` too; ``grant_ok`` replaces the
        usual grant rule for CreateGrant). See :mod:`kms.policy`."""
        principal = self.principal
        if principal is None:
            return True
        # A client is one principal from one address: without an encryption context, grant
        # tokens or a special grant rule, the answer depends only on (action, resources), so
        # it is remembered here and a policy Request is built only on a miss (the
        # Authorizer's generation voids old answers: policy, key policy or grant changes).
        authz = self.kms.authorizer
        generation = authz.generation
        dkey = (action, resources)
        cacheable = not context and not tokens and grant_ok is None
        if cacheable:
            hit = self._decisions.get(dkey)
            if hit is not None and hit[0] == generation:
                return hit[1]
        req = Request(action=action, resources=resources, instance=self.instance_name,
                      source_ip=self.source_ip, encryption_context=context or {})
        identity = authz.effect(principal, req)
        if key is None:
            allowed = identity == "Allow"
        else:
            decision = key_decision(identity, self.kms.key_policy(key), req, self._account,
                                    principal.name)
            allowed = decision == "Allow" if decision is not None else self._granted(
                key, action, context, tokens, grant_ok)
        if cacheable and not self._principal_has_conditions:
            if len(self._decisions) > 4096:
                self._decisions.clear()
            self._decisions[dkey] = (generation, allowed)
        return allowed

    def _granted(self, rec: KeyRecord, action: str, context: Mapping[str, str] | None,
                 tokens: Sequence[tuple[str, str]],
                 grant_ok: Callable[[Grant], bool] | None) -> bool:
        """Whether a grant on the key to the caller allows the action: a grant of the key's
        (cached), or one named by a grant token (looked up at once: effective even before
        this process has seen the commit)."""
        pid = self.principal.id
        ok = grant_ok if grant_ok is not None else (lambda g: g.allows(action, context))
        mine = self.kms.grants_for(rec.key_id).get(pid, ())
        if any(ok(g) for g in mine):
            return True
        for grant_id, token in tokens:
            g = next((g for g in mine if g.grant_id == grant_id), None)
            if g is None:
                g = self._store.get_grant(grant_id)
            if g is not None and g.key_id == rec.key_id and g.grantee_id == pid \
                    and hmac.compare_digest(g.token, token) and ok(g):
                return True
        return False

    def _key_for(self, action: str, key_id: object,
                 context: Mapping[str, str] | None = None, *,
                 tokens: Sequence[tuple[str, str]] = (), key_arn_only: bool = False,
                 grant_ok: Callable[[Grant], bool] | None = None) -> KeyRecord:
        """Resolve and authorise; NotFound for a caller who may not (whether or not the key
        exists). ``key_arn_only``: authorise against the key ARN alone (alias management:
        the aliases are the subject of the operation, not a name of the key)."""
        rec, alias = self._resolve(key_id)
        if self.principal is None:
            return rec
        names = (rec.arn,) if key_arn_only else self._names(rec, alias)
        if not self._allow(action, names, context, key=rec, tokens=tokens, grant_ok=grant_ok):
            raise E.NotFound(f"key {key_id!r} does not exist")
        return rec

    def _audit(self, action: str, key: KeyRecord | None, version: str | None, result: str,
               context: Mapping[str, str] | None = None,
               extra: Mapping[str, str] | None = None) -> None:
        log = self.kms.audit
        if log is None:
            return
        # The details of a record are the encryption context, as "ctx:<key>" entries, with the
        # values of keys marked secret (settings.secret_context_keys, or a "secret:" prefix)
        # replaced; serialised on the audit writer's thread, not here.
        details: Mapping[str, str] = _NO_DETAILS
        if context:
            secret = self.kms.settings.secret_context_keys
            details = {"ctx:" + k: ("<redacted>" if k in secret or k.startswith("secret:")
                                    else v) for k, v in context.items()}
        if extra:
            details = {**details, **extra}
        try:
            record = log.record  # AuditLog's unchecked fast path: the values are built here
        except AttributeError:  # a log with only append(AuditEvent), e.g. a test double
            log.append(_AuditEvent(self.kms.now(), self.instance_name, self._principal_name,
                                   action, key.key_id if key else None, version, result,
                                   _next_request_id(), details))
        else:
            record(self.kms.now(), self.instance_name, self._principal_name, action,
                   key.key_id if key else None, version, result, _next_request_id(), details)
        if result == "ok" and action in DURABLE_ACTIONS:
            # A change of state is acknowledged only once its record is on disk (group
            # commit: concurrent changes share the commit); cryptographic operations are not
            # waited for (their records follow within the writer's delay).
            log.flush()

    def _run(self, action: str, fn: Callable[[], T]) -> T:
        """Run an operation body and audit a failure (the body audits its success)."""
        try:
            return fn()
        except E.KmsError as exc:
            self._audit(action, None, None, exc.code)
            raise
        except hsmpool.HsmPoolError as exc:
            err = pool_error(exc)
            self._audit(action, None, None, err.code)
            raise err from None

    @staticmethod
    def _check_state(rec: KeyRecord) -> None:
        state = rec.state
        if state is KeyState.ENABLED:
            return
        if state is KeyState.DISABLED:
            raise E.Disabled(f"key {rec.arn} is disabled")
        raise E.KMSInvalidState(f"key {rec.arn} is {state.value}")

    @staticmethod
    def _check_usage(rec: KeyRecord, usage: KeyUsage) -> None:
        if rec.usage is not usage:
            raise E.InvalidKeyUsage(f"key {rec.arn} has usage {rec.usage.value}")

    def _primary(self, rec: KeyRecord) -> KeyVersion:
        v = self.kms._version(rec.primary_version) if rec.primary_version else None
        if v is None or v.blob is None:
            raise E.KMSInvalidState(f"key {rec.arn} has no key material")
        return v

    # --- key lifecycle -----------------------------------------------------------------

    def create_key(self, key_spec: str = "SYMMETRIC_DEFAULT", key_usage: str | None = None,
                   description: str = "", origin: str = "AWS_KMS",
                   tags: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
                   policy: str | None = None, *,
                   bypass_policy_lockout_safety_check: bool = False) -> KeyRecord:
        """A new key. ``policy``: its key policy document (default: the default key policy,
        under which the principals' own policies decide); it must let the caller change it
        later (PutKeyPolicy) unless ``bypass_policy_lockout_safety_check``."""

        def body() -> KeyRecord:
            if not self._allow("kms:CreateKey", ()):
                raise E.AccessDenied("not allowed to create keys")
            key_policy = None if policy is None else check_key_policy(policy)
            try:
                spec = KeySpec(key_spec)
            except ValueError:
                raise E.Validation(f"unknown KeySpec {key_spec!r}") from None
            info = SPECS[spec]
            try:
                usage = KeyUsage(key_usage) if key_usage else info.usages[0]
                org = Origin(origin)
            except ValueError:
                raise E.Validation("invalid KeyUsage or Origin") from None
            if usage not in info.usages:
                raise E.Validation(f"{spec.value} keys cannot have usage {usage.value}")
            if not isinstance(description, str) or len(description) > 8192:
                raise E.Validation("Description must be a string of at most 8192 characters")
            if org is Origin.EXTERNAL and not info.symmetric and spec not in (
                    KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096, KeySpec.ECC_NIST_P256,
                    KeySpec.ECC_SECG_P256K1, KeySpec.HMAC_256, KeySpec.HMAC_384,
                    KeySpec.HMAC_512, KeySpec.SM2, KeySpec.HMAC_SM3):
                raise E.UnsupportedOperation(f"{spec.value} keys cannot be imported")
            tag_pairs = _tags(tags)
            now = self.kms.now()
            key_id = str(uuid.uuid4())
            arn = self.kms.key_arn(self.instance_name, key_id)
            if key_policy is not None and not bypass_policy_lockout_safety_check:
                self._check_lockout(key_policy, lambda: (arn,))
            version = None
            if org is Origin.AWS_KMS:
                version = self.kms.new_version(self.inst, key_id, spec, 1, now)
            rec = KeyRecord(
                key_id=key_id, instance=self.instance_name, arn=arn, spec=spec, usage=usage,
                origin=org,
                state=KeyState.ENABLED if version else KeyState.PENDING_IMPORT, created=now,
                description=description,
                primary_version=version.version_id if version else None, tags=tag_pairs,
                policy=policy)
            self._store.insert_key(rec, version)
            self.kms._swap(rec)
            self._audit("kms:CreateKey", rec, version.version_id if version else None, "ok")
            return rec

        return self._run("kms:CreateKey", body)

    def describe_key(self, key_id: str, *, grant_tokens: Sequence[str] = ()) -> KeyRecord:
        def body() -> KeyRecord:
            rec = self._key_for("kms:DescribeKey", key_id,
                                tokens=_grants.parse_tokens(grant_tokens))
            self._audit("kms:DescribeKey", rec, None, "ok")
            return rec

        return self._run("kms:DescribeKey", body)

    def list_keys(self, limit: int = 100, marker: str | None = None) -> ListPage:
        def body() -> ListPage:
            if not self._allow("kms:ListKeys", ()):
                raise E.AccessDenied("not allowed to list keys")
            lim = _limit(limit)
            after = _marker(marker)
            recs = [r for r in self._store.list_keys(self.instance_name, after, lim + 1)]
            more = len(recs) > lim
            recs = recs[:lim]
            items = tuple(r for r in recs if not r.purged)
            nxt = recs[-1].key_id if more and recs else None
            self._audit("kms:ListKeys", None, None, "ok")
            return ListPage(items, nxt)

        return self._run("kms:ListKeys", body)

    def _change(self, action: str, key_id: str,
                fn: Callable[[KeyRecord], KeyRecord | None]) -> KeyRecord:
        """Apply ``fn`` to the current record and store the result (retrying on a
        concurrent update); ``fn`` returns None for "no change"."""

        def body() -> KeyRecord:
            with self.kms._write_lock:
                for attempt in range(CAS_ATTEMPTS):
                    rec = self._key_for(action, key_id)
                    new = fn(rec)
                    if new is None:
                        self._audit(action, rec, None, "ok")
                        return rec
                    try:
                        self._store.update_key(rec, new)
                    except ConcurrentUpdate:
                        self.kms._drop_caches()
                        _conflict_pause(attempt)
                        continue
                    self.kms._swap(new)
                    self._audit(action, new, None, "ok")
                    return new
            raise E.KMSInternal("the key is changing too fast; retry")

        return self._run(action, body)

    def enable_key(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is KeyState.ENABLED:
                return None
            if rec.state is not KeyState.DISABLED:
                raise E.KMSInvalidState(f"key {rec.arn} is {rec.state.value}")
            return rec.evolve(state=KeyState.ENABLED)

        return self._change("kms:EnableKey", key_id, fn)

    def disable_key(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is KeyState.DISABLED:
                return None
            if rec.state is not KeyState.ENABLED:
                raise E.KMSInvalidState(f"key {rec.arn} is {rec.state.value}")
            return rec.evolve(state=KeyState.DISABLED)

        return self._change("kms:DisableKey", key_id, fn)

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 30) -> KeyRecord:
        if not isinstance(pending_window_days, int) or not 7 <= pending_window_days <= 30:
            raise E.Validation("PendingWindowInDays must be 7..30")

        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is KeyState.PENDING_DELETION:
                raise E.KMSInvalidState(f"key {rec.arn} is already pending deletion")
            return rec.evolve(state=KeyState.PENDING_DELETION,
                              deletion_date=self.kms.now() + pending_window_days * DAY)

        return self._change("kms:ScheduleKeyDeletion", key_id, fn)

    def cancel_key_deletion(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is not KeyState.PENDING_DELETION:
                raise E.KMSInvalidState(f"key {rec.arn} is not pending deletion")
            state = KeyState.DISABLED if rec.primary_version else KeyState.PENDING_IMPORT
            return rec.evolve(state=state, deletion_date=None)

        return self._change("kms:CancelKeyDeletion", key_id, fn)

    def update_key_description(self, key_id: str, description: str) -> KeyRecord:
        if not isinstance(description, str) or len(description) > 8192:
            raise E.Validation("Description must be a string of at most 8192 characters")
        return self._change("kms:UpdateKeyDescription", key_id,
                            lambda rec: rec.evolve(description=description))

    def tag_resource(self, key_id: str, tags: Mapping[str, str] | Sequence[tuple[str, str]]
                     ) -> KeyRecord:
        new_tags = dict(_tags(tags))

        def fn(rec: KeyRecord) -> KeyRecord | None:
            merged = dict(rec.tags)
            merged.update(new_tags)
            if len(merged) > 50:
                raise E.LimitExceeded("a key has at most 50 tags")
            return rec.evolve(tags=tuple(sorted(merged.items())))

        return self._change("kms:TagResource", key_id, fn)

    def untag_resource(self, key_id: str, tag_keys: Sequence[str]) -> KeyRecord:
        if not isinstance(tag_keys, list | tuple) or not all(
                isinstance(k, str) for k in tag_keys):
            raise E.Validation("TagKeys must be a list of strings")
        drop = set(tag_keys)
        return self._change("kms:UntagResource", key_id, lambda rec: rec.evolve(
            tags=tuple((k, v) for k, v in rec.tags if k not in drop)))

    def list_resource_tags(self, key_id: str) -> tuple[tuple[str, str], ...]:
        def body() -> tuple[tuple[str, str], ...]:
            rec = self._key_for("kms:ListResourceTags", key_id)
            self._audit("kms:ListResourceTags", rec, None, "ok")
            return rec.tags

        return self._run("kms:ListResourceTags", body)

    # --- key policies --------------------------------------------------------------------

    def get_key_policy(self, key_id: str, policy_name: str = "default") -> str:
        """The key policy document: as given (CreateKey, PutKeyPolicy), or the default
        (the account root may use the key: the principals' own policies decide)."""

        def body() -> str:
            rec = self._key_for("kms:GetKeyPolicy", key_id)
            if policy_name != "default":
                raise E.NotFound(f"key {rec.arn} has no key policy named {policy_name!r}")
            self._audit("kms:GetKeyPolicy", rec, None, "ok")
            return rec.policy if rec.policy is not None else default_key_policy(self._account)

        return self._run("kms:GetKeyPolicy", body)

    def list_key_policies(self, key_id: str) -> tuple[str, ...]:
        def body() -> tuple[str, ...]:
            rec = self._key_for("kms:ListKeyPolicies", key_id)
            self._audit("kms:ListKeyPolicies", rec, None, "ok")
            return ("default",)

        return self._run("kms:ListKeyPolicies", body)

    def put_key_policy(self, key_id: str, policy: str, policy_name: str = "default", *,
                       bypass_policy_lockout_safety_check: bool = False) -> KeyRecord:
        """Replace the key policy (checked as in :meth:`create_key`); it applies to the
        next request of every caller."""
        if policy_name != "default":
            raise E.Validation("only the key policy named 'default' can be set")
        key_policy = check_key_policy(policy)

        def fn(rec: KeyRecord) -> KeyRecord | None:
            if not bypass_policy_lockout_safety_check:
                self._check_lockout(key_policy, lambda: self._names(rec))
            return rec.evolve(policy=policy)

        try:
            return self._change("kms:PutKeyPolicy", key_id, fn)
        finally:
            self.kms._forget_decisions()

    def _check_lockout(self, key_policy: KeyPolicy,
                       names: Callable[[], tuple[str, ...]]) -> None:
        """AWS's lockout safety check: the new key policy must let the caller (a principal)
        run PutKeyPolicy on the key (known by ``names()``)."""
        principal = self.principal
        if principal is None:
            return  # the embedder is bound by no key policy
        req = Request(action="kms:PutKeyPolicy", resources=names(),
                      instance=self.instance_name, source_ip=self.source_ip)
        decision = key_decision(identity_effect(principal, req), key_policy, req,
                                self._account, principal.name)
        if decision != "Allow":
            raise E.MalformedPolicyDocument(
                "the new key policy would not allow you to update the key policy in the "
                "future (set BypassPolicyLockoutSafetyCheck to set it anyway)")

    # --- rotation ----------------------------------------------------------------------

    def enable_key_rotation(self, key_id: str, rotation_period_days: int = 365) -> KeyRecord:
        if not isinstance(rotation_period_days, int) or not 90 <= rotation_period_days <= 2560:
            raise E.Validation("RotationPeriodInDays must be 90..2560")

        def fn(rec: KeyRecord) -> KeyRecord | None:
            if not rec.info.rotatable or rec.origin is Origin.EXTERNAL:
                raise E.UnsupportedOperation(f"{rec.spec.value} keys do not rotate")
            self._check_state(rec)
            return rec.evolve(rotation_enabled=True, rotation_period_days=rotation_period_days,
                              next_rotation=self.kms.now() + rotation_period_days * DAY)

        return self._change("kms:EnableKeyRotation", key_id, fn)

    def disable_key_rotation(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if not rec.info.rotatable or rec.origin is Origin.EXTERNAL:
                raise E.UnsupportedOperation(f"{rec.spec.value} keys do not rotate")
            return rec.evolve(rotation_enabled=False, next_rotation=None)

        return self._change("kms:DisableKeyRotation", key_id, fn)

    def get_key_rotation_status(self, key_id: str) -> KeyRecord:
        def body() -> KeyRecord:
            rec = self._key_for("kms:GetKeyRotationStatus", key_id)
            self._audit("kms:GetKeyRotationStatus", rec, None, "ok")
            return rec

        return self._run("kms:GetKeyRotationStatus", body)

    def rotate_key_on_demand(self, key_id: str) -> KeyVersion:
        def body() -> KeyVersion:
            with self.kms._write_lock:
                for attempt in range(CAS_ATTEMPTS):
                    rec = self._key_for("kms:RotateKeyOnDemand", key_id)
                    if not rec.info.rotatable or rec.origin is Origin.EXTERNAL:
                        raise E.UnsupportedOperation(f"{rec.spec.value} keys do not rotate")
                    self._check_state(rec)
                    try:
                        v = self.kms.rotate(self.inst, rec, self.kms.now())
                    except ConcurrentUpdate:
                        self.kms._drop_caches()
                        _conflict_pause(attempt)
                        continue
                    self._audit("kms:RotateKeyOnDemand", rec, v.version_id, "ok")
                    return v
            raise E.KMSInternal("the key is changing too fast; retry")

        return self._run("kms:RotateKeyOnDemand", body)

    def list_key_rotations(self, key_id: str) -> tuple[KeyVersion, ...]:
        """Every version of a key, oldest first (blobs stripped)."""

        def body() -> tuple[KeyVersion, ...]:
            rec = self._key_for("kms:ListKeyRotations", key_id)
            out = tuple(KeyVersion(v.version_id, v.key_id, v.number, v.created, None,
                                   v.public_key, v.imported)
                        for v in self._store.list_versions(rec.key_id))
            self._audit("kms:ListKeyRotations", rec, None, "ok")
            return out

        return self._run("kms:ListKeyRotations", body)

    def set_min_decryption_version(self, key_id: str, number: int) -> KeyRecord:
        """Refuse ciphertexts made with versions older than ``number`` (Vault's
        min_decryption_version). It may not exceed the primary version."""

        def fn(rec: KeyRecord) -> KeyRecord | None:
            primary = self._primary(rec)
            if not isinstance(number, int) or not 1 <= number <= primary.number:
                raise E.Validation(f"minimum decryption version must be 1..{primary.number}")
            return rec.evolve(min_decrypt_version=number)

        return self._change("kms:UpdateKeyDescription", key_id, fn)

    # --- aliases -----------------------------------------------------------------------

    def _check_alias(self, name: object) -> str:
        if not isinstance(name, str) or not _ALIAS_RE.fullmatch(name):
            raise E.InvalidAliasName("alias names look like alias/[a-zA-Z0-9/_-]+")
        if name.startswith("alias/aws/"):
            raise E.InvalidAliasName("the alias/aws/ prefix is reserved")
        return name

    def _alias_arn(self, name: str) -> tuple[str, ...]:
        return (self.kms.alias_arn(self.instance_name, name),)

    def _allow_on_key(self, action: str, rec: KeyRecord) -> bool:
        """Alias management's check on a key: the action on the key ARN alone."""
        return self._allow(action, (rec.arn,), key=rec)

    def create_alias(self, alias_name: str, target_key_id: str) -> AliasRecord:
        """kms:CreateAlias on the alias and on the key (as in AWS)."""

        def body() -> AliasRecord:
            name = self._check_alias(alias_name)
            rec = self._key_for("kms:CreateAlias", target_key_id, key_arn_only=True)
            if not self._allow("kms:CreateAlias", self._alias_arn(name)):
                raise E.AccessDenied(f"not allowed to create alias {name}")
            if rec.state is KeyState.PENDING_DELETION:
                raise E.KMSInvalidState(f"key {rec.arn} is pending deletion")
            now = self.kms.now()
            alias = AliasRecord(self.instance_name, name, rec.key_id, now, now)
            self._store.put_alias(alias, create=True)
            self.kms._forget_alias(self.instance_name, name, rec.key_id)
            self._audit("kms:CreateAlias", rec, None, "ok")
            return alias

        return self._run("kms:CreateAlias", body)

    def _current_alias(self, action: str, name: str) -> tuple[AliasRecord, KeyRecord]:
        """The alias and the key it points at, if the caller may run ``action`` on both;
        NotFound otherwise, whether or not the alias exists."""
        if not self._allow(action, self._alias_arn(name)):
            raise E.NotFound(f"alias {name} does not exist")
        self.kms._fresh()
        old = self._store.get_alias(self.instance_name, name)
        key = self.kms._key(old.key_id) if old is not None else None
        if old is None or key is None or not self._allow_on_key(action, key):
            raise E.NotFound(f"alias {name} does not exist")
        return old, key

    def update_alias(self, alias_name: str, target_key_id: str) -> AliasRecord:
        """kms:UpdateAlias on the alias, on the key it points at and on the new key."""

        def body() -> AliasRecord:
            name = self._check_alias(alias_name)
            old, old_key = self._current_alias("kms:UpdateAlias", name)
            rec = self._key_for("kms:UpdateAlias", target_key_id, key_arn_only=True)
            if rec.state is KeyState.PENDING_DELETION:
                raise E.KMSInvalidState(f"key {rec.arn} is pending deletion")
            if old_key.usage is not rec.usage:
                raise E.Validation("an alias can only move to a key with the same usage")
            alias = AliasRecord(self.instance_name, name, rec.key_id, old.created,
                                self.kms.now())
            self._store.put_alias(alias, create=False)
            self.kms._forget_alias(self.instance_name, name, old.key_id, rec.key_id)
            self._audit("kms:UpdateAlias", rec, None, "ok")
            return alias

        return self._run("kms:UpdateAlias", body)

    def delete_alias(self, alias_name: str) -> None:
        """kms:DeleteAlias on the alias and on the key it points at."""

        def body() -> None:
            name = self._check_alias(alias_name)
            for _attempt in range(CAS_ATTEMPTS):
                old, key = self._current_alias("kms:DeleteAlias", name)
                if self._store.delete_alias(self.instance_name, name, key_id=old.key_id):
                    self.kms._forget_alias(self.instance_name, name, old.key_id)
                    self._audit("kms:DeleteAlias", key, None, "ok")
                    return
                self.kms._forget_alias(self.instance_name, name, old.key_id)  # moved meanwhile
            raise E.KMSInternal("the alias is changing too fast; retry")

        self._run("kms:DeleteAlias", body)

    def list_aliases(self, key_id: str | None = None, limit: int = 100,
                     marker: str | None = None) -> ListPage:
        def body() -> ListPage:
            target = None
            if key_id is not None:
                target = self._key_for("kms:ListAliases", key_id).key_id
            elif not self._allow("kms:ListAliases", ()):
                raise E.AccessDenied("not allowed to list aliases")
            lim = _limit(limit)
            rows = self._store.list_aliases(self.instance_name, target, _marker(marker),
                                            lim + 1)
            more = len(rows) > lim
            rows = rows[:lim]
            self._audit("kms:ListAliases", None, None, "ok")
            return ListPage(tuple(rows), rows[-1].name if more and rows else None)

        return self._run("kms:ListAliases", body)

    # --- symmetric encryption ----------------------------------------------------------

    def _seal(self, rec: KeyRecord, plaintext: bytes, context: Mapping[str, str] | None
              ) -> tuple[bytes, KeyVersion]:
        v = self._primary(rec)
        headers = self.kms._headers
        hdr = headers.get(v.version_id)
        if hdr is None:
            alg = ctf.ALG_AES_GCM if rec.spec is KeySpec.SYMMETRIC_DEFAULT else ctf.ALG_SM4_GCM
            hdr = headers[v.version_id] = ctf.header(v.version_bytes, alg)
        aad = hdr + ctf.canonical_context(context) if context else hdr
        if rec.spec is KeySpec.SYMMETRIC_DEFAULT:
            return hdr + self.inst.encrypt(self.kms._blob(v), plaintext, aad), v
        nonce = os.urandom(ctf.NONCE_LEN)
        return hdr + nonce + self.kms.sm4(self.inst, v).encrypt(nonce, plaintext, aad), v

    def _open(self, blob: object, context: Mapping[str, str] | None, action: str,
              expect_key: str | None, tokens: Sequence[tuple[str, str]] = ()
              ) -> tuple[KeyRecord, KeyVersion, bytes]:
        parsed = ctf.parse(blob)  # type: ignore[arg-type]
        self.kms._fresh()
        v = self.kms._version(parsed.version_id)
        if v is None:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        rec = self.kms._key(v.key_id)
        if rec is None or rec.instance != self.instance_name or rec.purged:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        # Authorised on the ciphertext's key first: a caller who may not use it learns
        # nothing about the KeyId it named (whether that alias or key exists).
        if self.principal is not None and not self._allow(
                action, self._names(rec), context, key=rec, tokens=tokens):
            raise E.NotFound("key does not exist")
        if expect_key is not None:
            self._expect_key(rec, expect_key)
        self._check_state(rec)
        self._check_usage(rec, KeyUsage.ENCRYPT_DECRYPT)
        if not rec.info.symmetric:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        if v.number < rec.min_decrypt_version:
            raise E.InvalidCiphertext(
                f"the ciphertext was made with version {v.number}, below the key's minimum "
                f"decryption version {rec.min_decrypt_version}")
        if v.blob is None:
            raise E.InvalidCiphertext("the key material of this ciphertext has been deleted")
        aad = parsed.header + ctf.canonical_context(context)
        body = parsed.body
        try:
            if parsed.algorithm == ctf.ALG_AES_GCM and rec.spec is KeySpec.SYMMETRIC_DEFAULT:
                plaintext = self.inst.decrypt(self.kms._blob(v), body, aad)
            elif parsed.algorithm == ctf.ALG_SM4_GCM and rec.spec is KeySpec.SM4:
                plaintext = self.kms.sm4(self.inst, v).decrypt(body[:ctf.NONCE_LEN],
                                                               body[ctf.NONCE_LEN:], aad)
            else:
                raise E.InvalidCiphertext("the ciphertext is not valid")
        except (hsmpool.InvalidTagError, GmInvalidTag):
            raise E.InvalidCiphertext("the ciphertext is not valid or the encryption "
                                      "context does not match") from None
        return rec, v, plaintext

    def _expect_key(self, rec: KeyRecord, expect_key: str) -> None:
        """Decrypt's KeyId must name the ciphertext's key (IncorrectKey if it names another;
        NotFound if it names none). Checked only once the caller may use that key."""
        wanted, _ = self._resolve(expect_key)
        if wanted.key_id != rec.key_id:
            raise E.IncorrectKey("the ciphertext was not made with the given key")

    def encrypt(self, key_id: str, plaintext: bytes,
                encryption_context: Mapping[str, str] | None = None,
                encryption_algorithm: str = "SYMMETRIC_DEFAULT", *,
                grant_tokens: Sequence[str] = ()) -> EncryptResult:
        """Encrypt under a key. For SM4 keys ``encryption_algorithm`` may also be
        ``"SM4_GCM"`` (a name for their SYMMETRIC_DEFAULT); the result names the algorithm
        as asked."""

        def body() -> EncryptResult:
            data = _bytes(plaintext, "Plaintext", max_len=self.kms.settings.max_plaintext)
            rec = self._key_for("kms:Encrypt", key_id, encryption_context,
                                tokens=_grants.parse_tokens(grant_tokens) if grant_tokens
                                else ())
            self._check_state(rec)
            self._check_usage(rec, KeyUsage.ENCRYPT_DECRYPT)
            info = rec.info
            if encryption_algorithm not in info.encryption_algorithms and \
                    encryption_algorithm not in info.encryption_aliases:
                raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support "
                                        f"{encryption_algorithm}")
            if info.symmetric:
                blob, v = self._seal(rec, data, encryption_context)
            else:
                if encryption_context:
                    raise E.Validation("asymmetric encryption takes no EncryptionContext")
                v = self._primary(rec)
                blob = _asym_encrypt(rec, v, data, encryption_algorithm)
            self._audit("kms:Encrypt", rec, v.version_id, "ok", encryption_context)
            return EncryptResult(blob, rec.arn, encryption_algorithm)

        return self._run("kms:Encrypt", body)

    def decrypt(self, ciphertext_blob: bytes,
                encryption_context: Mapping[str, str] | None = None,
                key_id: str | None = None,
                encryption_algorithm: str = "SYMMETRIC_DEFAULT", *,
                grant_tokens: Sequence[str] = ()) -> DecryptResult:
        def body() -> DecryptResult:
            tokens = _grants.parse_tokens(grant_tokens) if grant_tokens else ()
            if not isinstance(encryption_algorithm, str):
                raise E.Validation("EncryptionAlgorithm must be a string")
            if encryption_algorithm not in _SYMMETRIC_NAMES:
                if key_id is None:
                    raise E.Validation("KeyId is required for asymmetric decryption")
                return self._asym_decrypt(key_id, ciphertext_blob, encryption_algorithm,
                                          tokens)
            rec, v, plaintext = self._open(ciphertext_blob, encryption_context, "kms:Decrypt",
                                           key_id, tokens)
            if encryption_algorithm != "SYMMETRIC_DEFAULT" and \
                    not rec.info.offers_encryption(encryption_algorithm):
                raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support "
                                        f"{encryption_algorithm}")
            self._audit("kms:Decrypt", rec, v.version_id, "ok", encryption_context)
            return DecryptResult(plaintext, rec.arn, encryption_algorithm, v.version_id)

        return self._run("kms:Decrypt", body)

    def _asym_decrypt(self, key_id: str, blob: bytes, algorithm: str,
                      tokens: Sequence[tuple[str, str]]) -> DecryptResult:
        rec = self._key_for("kms:Decrypt", key_id, tokens=tokens)
        self._check_state(rec)
        self._check_usage(rec, KeyUsage.ENCRYPT_DECRYPT)
        if algorithm not in rec.info.encryption_algorithms:
            raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support {algorithm}")
        data = _bytes(blob, "CiphertextBlob", max_len=6144)
        v = self._primary(rec)
        try:
            if rec.spec is KeySpec.SM2:
                plaintext = self.kms.sm2(self.inst, v).decrypt(data)
            else:
                plaintext = self.inst.rsa_decrypt(
                    self.kms._blob(v), data, "sha1" if algorithm.endswith("SHA_1") else "sha256")
        except (hsmpool.DecryptionError, GmDecryptionError, ValueError):
            raise E.InvalidCiphertext("the ciphertext could not be decrypted") from None
        self._audit("kms:Decrypt", rec, v.version_id, "ok")
        return DecryptResult(plaintext, rec.arn, algorithm, v.version_id)

    def re_encrypt(self, ciphertext_blob: bytes, destination_key_id: str,
                   source_encryption_context: Mapping[str, str] | None = None,
                   destination_encryption_context: Mapping[str, str] | None = None,
                   source_key_id: str | None = None, *,
                   grant_tokens: Sequence[str] = ()) -> tuple[EncryptResult, str]:
        """Decrypt under the source key, encrypt under the destination (any symmetric key).
        Returns the new ciphertext and the source key ARN."""

        def body() -> tuple[EncryptResult, str]:
            tokens = _grants.parse_tokens(grant_tokens)
            src, v, plaintext = self._open(ciphertext_blob, source_encryption_context,
                                           "kms:ReEncryptFrom", source_key_id, tokens)
            dst = self._key_for("kms:ReEncryptTo", destination_key_id,
                                destination_encryption_context, tokens=tokens)
            self._check_state(dst)
            self._check_usage(dst, KeyUsage.ENCRYPT_DECRYPT)
            if not dst.info.symmetric:
                raise E.InvalidKeyUsage("ReEncrypt needs a symmetric destination key")
            blob, dv = self._seal(dst, plaintext, destination_encryption_context)
            self._audit("kms:ReEncrypt", dst, dv.version_id, "ok",
                        destination_encryption_context)
            return EncryptResult(blob, dst.arn, "SYMMETRIC_DEFAULT"), src.arn

        return self._run("kms:ReEncrypt", body)

    def generate_data_key(self, key_id: str, key_spec: str | None = None,
                          number_of_bytes: int | None = None,
                          encryption_context: Mapping[str, str] | None = None,
                          *, with_plaintext: bool = True,
                          grant_tokens: Sequence[str] = ()) -> DataKey:
        action = "kms:GenerateDataKey" + ("" if with_plaintext else "WithoutPlaintext")

        def body() -> DataKey:
            # Either KeySpec or NumberOfBytes; neither means AES_256.
            if key_spec is not None and number_of_bytes is not None:
                raise E.Validation("give either KeySpec or NumberOfBytes, not both")
            if number_of_bytes is None:
                spec = "AES_256" if key_spec is None else key_spec
                n = _DATA_KEY_SPECS.get(spec) if isinstance(spec, str) else None
                if n is None:
                    raise E.Validation(f"unknown data key spec {key_spec!r}")
            else:
                n = number_of_bytes
                if not isinstance(n, int) or not 1 <= n <= 1024:
                    raise E.Validation("NumberOfBytes must be 1..1024")
            rec = self._key_for(action, key_id, encryption_context,
                                tokens=_grants.parse_tokens(grant_tokens) if grant_tokens
                                else ())
            self._check_state(rec)
            self._check_usage(rec, KeyUsage.ENCRYPT_DECRYPT)
            if not rec.info.symmetric:
                raise E.InvalidKeyUsage("data keys need a symmetric key")
            plaintext = self.inst.random(n)
            blob, v = self._seal(rec, plaintext, encryption_context)
            self._audit(action, rec, v.version_id, "ok", encryption_context)
            return DataKey(plaintext if with_plaintext else None, blob, rec.arn)

        return self._run(action, body)

    def generate_data_key_without_plaintext(self, key_id: str, key_spec: str | None = None,
                                            number_of_bytes: int | None = None,
                                            encryption_context: Mapping[str, str] | None = None,
                                            *, grant_tokens: Sequence[str] = ()) -> DataKey:
        return self.generate_data_key(key_id, key_spec, number_of_bytes, encryption_context,
                                      with_plaintext=False, grant_tokens=grant_tokens)

    def generate_data_key_pair(self, key_id: str, key_pair_spec: str,
                               encryption_context: Mapping[str, str] | None = None,
                               *, with_plaintext: bool = True,
                               grant_tokens: Sequence[str] = ()) -> DataKeyPair:
        action = "kms:GenerateDataKeyPair" + ("" if with_plaintext else "WithoutPlaintext")

        def body() -> DataKeyPair:
            if key_pair_spec not in _PAIR_SPECS:
                raise E.Validation(f"unknown KeyPairSpec {key_pair_spec!r}")
            rec = self._key_for(action, key_id, encryption_context,
                                tokens=_grants.parse_tokens(grant_tokens))
            self._check_state(rec)
            self._check_usage(rec, KeyUsage.ENCRYPT_DECRYPT)
            if not rec.info.symmetric:
                raise E.InvalidKeyUsage("data key pairs need a symmetric key")
            private_der, public_der = _make_pair(key_pair_spec)
            blob, v = self._seal(rec, private_der, encryption_context)
            self._audit(action, rec, v.version_id, "ok", encryption_context)
            return DataKeyPair(private_der if with_plaintext else None, blob, public_der,
                               rec.arn, key_pair_spec)

        return self._run(action, body)

    def generate_data_key_pair_without_plaintext(
            self, key_id: str, key_pair_spec: str,
            encryption_context: Mapping[str, str] | None = None, *,
            grant_tokens: Sequence[str] = ()) -> DataKeyPair:
        return self.generate_data_key_pair(key_id, key_pair_spec, encryption_context,
                                           with_plaintext=False, grant_tokens=grant_tokens)

    # --- signing and MAC ---------------------------------------------------------------

    def sign(self, key_id: str, message: bytes, signing_algorithm: str,
             message_type: str = "RAW", *, grant_tokens: Sequence[str] = ()
             ) -> tuple[bytes, str]:
        """Returns (signature, key ARN). ECDSA and SM2 signatures are DER."""

        def body() -> tuple[bytes, str]:
            data = _bytes(message, "Message", max_len=MAX_MESSAGE)
            rec = self._key_for("kms:Sign", key_id, tokens=_grants.parse_tokens(grant_tokens))
            self._check_state(rec)
            self._check_usage(rec, KeyUsage.SIGN_VERIFY)
            _check_sign_args(rec, signing_algorithm, message_type, data)
            v = self._primary(rec)
            if rec.spec is KeySpec.SM2:
                key = self.kms.sm2(self.inst, v)
                sig = key.sign_digest(data) if message_type == "DIGEST" else key.sign(data)
            else:
                alg = _SIGN_ALG[signing_algorithm]
                if message_type == "DIGEST":
                    sig = self.inst.sign_digest(self.kms._blob(v), data, alg)
                else:
                    sig = self.inst.sign(self.kms._blob(v), data, alg)
            self._audit("kms:Sign", rec, v.version_id, "ok")
            return sig, rec.arn

        return self._run("kms:Sign", body)

    def verify(self, key_id: str, message: bytes, signature: bytes, signing_algorithm: str,
               message_type: str = "RAW", *, grant_tokens: Sequence[str] = ()) -> str:
        """Returns the key ARN; raises KMSInvalidSignature if the signature is wrong."""

        def body() -> str:
            data = _bytes(message, "Message", max_len=MAX_MESSAGE)
            sig = _bytes(signature, "Signature", max_len=6144)
            rec = self._key_for("kms:Verify", key_id,
                                tokens=_grants.parse_tokens(grant_tokens))
            self._check_state(rec)
            self._check_usage(rec, KeyUsage.SIGN_VERIFY)
            _check_sign_args(rec, signing_algorithm, message_type, data)
            v = self._primary(rec)
            if not _verify_with_public(rec, v, data, sig, signing_algorithm, message_type):
                self._audit("kms:Verify", rec, v.version_id, E.KMSInvalidSignature.code)
                raise E.KMSInvalidSignature("the signature is not valid")
            self._audit("kms:Verify", rec, v.version_id, "ok")
            return rec.arn

        return self._run("kms:Verify", body)

    def get_public_key(self, key_id: str, *, grant_tokens: Sequence[str] = ()
                       ) -> PublicKeyInfo:
        def body() -> PublicKeyInfo:
            rec = self._key_for("kms:GetPublicKey", key_id,
                                tokens=_grants.parse_tokens(grant_tokens))
            self._check_state(rec)
            if rec.info.symmetric or rec.usage is KeyUsage.GENERATE_VERIFY_MAC:
                raise E.UnsupportedOperation("only asymmetric keys have a public key")
            v = self._primary(rec)
            self._audit("kms:GetPublicKey", rec, v.version_id, "ok")
            info = rec.info
            return PublicKeyInfo(
                rec.arn, v.public_key, rec.spec.value, rec.usage.value,
                info.encryption_algorithms if rec.usage is KeyUsage.ENCRYPT_DECRYPT else (),
                info.signing_algorithms if rec.usage is KeyUsage.SIGN_VERIFY else ())

        return self._run("kms:GetPublicKey", body)

    def _mac(self, action: str, key_id: str, message: bytes, algorithm: str,
             grant_tokens: Sequence[str]) -> tuple[KeyRecord, KeyVersion, bytes]:
        data = _bytes(message, "Message", max_len=MAX_MESSAGE)
        rec = self._key_for(action, key_id, tokens=_grants.parse_tokens(grant_tokens))
        self._check_state(rec)
        self._check_usage(rec, KeyUsage.GENERATE_VERIFY_MAC)
        if algorithm not in rec.info.mac_algorithms:
            raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support {algorithm}")
        v = self._primary(rec)
        if rec.spec is KeySpec.HMAC_SM3:
            key = self.kms._material.get(v.version_id,
                                         lambda: self.kms.software_secret(self.inst, v))
            mac = hmac_sm3(key, data)
        else:
            mac = self.inst.hmac(self.kms._blob(v), data)
        return rec, v, mac

    def generate_mac(self, key_id: str, message: bytes, mac_algorithm: str, *,
                     grant_tokens: Sequence[str] = ()) -> tuple[bytes, str]:
        def body() -> tuple[bytes, str]:
            rec, v, mac = self._mac("kms:GenerateMac", key_id, message, mac_algorithm,
                                    grant_tokens)
            self._audit("kms:GenerateMac", rec, v.version_id, "ok")
            return mac, rec.arn

        return self._run("kms:GenerateMac", body)

    def verify_mac(self, key_id: str, message: bytes, mac: bytes, mac_algorithm: str, *,
                   grant_tokens: Sequence[str] = ()) -> str:
        def body() -> str:
            given = _bytes(mac, "Mac", max_len=128)
            rec, v, expected = self._mac("kms:VerifyMac", key_id, message, mac_algorithm,
                                         grant_tokens)
            if not hmac.compare_digest(expected, given):
                self._audit("kms:VerifyMac", rec, v.version_id, E.KMSInvalidMac.code)
                raise E.KMSInvalidMac("the MAC is not valid")
            self._audit("kms:VerifyMac", rec, v.version_id, "ok")
            return rec.arn

        return self._run("kms:VerifyMac", body)

    def generate_random(self, number_of_bytes: int) -> bytes:
        def body() -> bytes:
            if not isinstance(number_of_bytes, int) or not 1 <= number_of_bytes <= 1024:
                raise E.Validation("NumberOfBytes must be 1..1024")
            if not self._allow("kms:GenerateRandom", ()):
                raise E.AccessDenied("not allowed to generate random bytes")
            out = self.inst.random(number_of_bytes)
            self._audit("kms:GenerateRandom", None, None, "ok")
            return out

        return self._run("kms:GenerateRandom", body)

    # --- importing key material (BYOK; see kms/importing.py) ----------------------------

    def get_parameters_for_import(self, key_id: str, wrapping_algorithm: str,
                                  wrapping_key_spec: str) -> _importing.ImportParameters:
        """A wrapping public key and an import token for an EXTERNAL key."""
        return self._run("kms:GetParametersForImport",
                         lambda: _importing.get_parameters_for_import(
                             self, key_id, wrapping_algorithm, wrapping_key_spec))

    def import_key_material(self, key_id: str, import_token: bytes,
                            encrypted_key_material: bytes, valid_to: float | None = None,
                            expiration_model: str = "KEY_MATERIAL_DOES_NOT_EXPIRE"
                            ) -> KeyRecord:
        """Import wrapped key material (or the same material again) into an EXTERNAL key."""
        return self._run("kms:ImportKeyMaterial", lambda: _importing.import_key_material(
            self, key_id, import_token, encrypted_key_material, valid_to, expiration_model))

    def delete_imported_key_material(self, key_id: str) -> KeyRecord:
        """Shred an EXTERNAL key's material (state PendingImport, unless pending deletion);
        the same material can be imported again."""
        return self._run("kms:DeleteImportedKeyMaterial",
                         lambda: _importing.delete_imported_key_material(self, key_id))

    # --- grants (see kms/grants.py) ------------------------------------------------------

    def create_grant(self, key_id: str, grantee_principal: str, operations: Sequence[str], *,
                     retiring_principal: str | None = None,
                     constraints: Mapping[str, Mapping[str, str]] | None = None,
                     name: str | None = None,
                     grant_tokens: Sequence[str] = ()) -> _grants.NewGrant:
        """Let ``grantee_principal`` (a principal ARN) run ``operations`` (AWS names:
        ``["Encrypt", "Decrypt"]``) on the key; returns the grant id and token."""
        return self._run("kms:CreateGrant", lambda: _grants.create_grant(
            self, key_id, grantee_principal, operations, retiring_principal, constraints,
            name, grant_tokens))

    def list_grants(self, key_id: str, limit: int = 50, marker: str | None = None, *,
                    grant_id: str | None = None,
                    grantee_principal: str | None = None) -> ListPage:
        """A key's grants (:class:`kms.model.Grant`), by grant id."""
        return self._run("kms:ListGrants", lambda: _grants.list_grants(
            self, key_id, limit, marker, grant_id, grantee_principal))

    def list_retirable_grants(self, retiring_principal: str, limit: int = 50,
                              marker: str | None = None) -> ListPage:
        """The instance's grants whose retiring principal is ``retiring_principal``."""
        return self._run("kms:ListRetirableGrants", lambda: _grants.list_retirable_grants(
            self, retiring_principal, limit, marker))

    def retire_grant(self, grant_token: str | None = None, key_id: str | None = None,
                     grant_id: str | None = None) -> None:
        """Delete a grant named by its token, or by key and grant id: its retiring
        principal, its grantee (if it allows RetireGrant), or a caller allowed
        kms:RetireGrant on the key may."""
        self._run("kms:RetireGrant", lambda: _grants.retire_grant(
            self, grant_token, key_id, grant_id))

    def revoke_grant(self, key_id: str, grant_id: str) -> None:
        """Delete a grant (kms:RevokeGrant on the key)."""
        self._run("kms:RevokeGrant", lambda: _grants.revoke_grant(self, key_id, grant_id))


# --- helpers -----------------------------------------------------------------------------

MAX_KEY_POLICY_BYTES: Final = 32768  # AWS's key policy document size quota
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_key_policy(text: object) -> KeyPolicy:
    """A key policy document, checked: a string of at most 32 KiB of UTF-8 without control
    characters (tab, CR and LF allowed), in the supported key policy format (see
    :mod:`kms.policy`). MalformedPolicyDocument or LimitExceeded otherwise."""
    if not isinstance(text, str) or not text:
        raise E.MalformedPolicyDocument("the key policy must be a non-empty string")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_KEY_POLICY_BYTES:
        raise E.LimitExceeded(f"a key policy is at most {MAX_KEY_POLICY_BYTES} bytes")
    if _CONTROL_RE.search(text):
        raise E.MalformedPolicyDocument("the key policy contains control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise E.MalformedPolicyDocument("the key policy is not valid Unicode") from None
    try:
        return KeyPolicy.from_json(text)
    except PolicyError as exc:
        raise E.MalformedPolicyDocument(f"the key policy is not valid: {exc}") from None


def default_key_policy(account: str) -> str:
    """What GetKeyPolicy answers for a key given no policy: the account root may do
    everything, i.e. the principals' own policies decide (AWS's default key policy)."""
    return ('{"Version":"2012-10-17","Id":"key-default-1","Statement":[{"Sid":"Enable IAM '
            'User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::' + account
            + ':root"},"Action":"kms:*","Resource":"*"}]}')



def _limit(limit: object) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise E.Validation("Limit must be 1..1000")
    return limit


def _marker(marker: object) -> str:
    if marker is None:
        return ""
    if not isinstance(marker, str) or len(marker) > 1024:
        raise E.InvalidMarker("the marker is not valid")
    return marker


def _tags(tags: Mapping[str, str] | Sequence[tuple[str, str]] | None
          ) -> tuple[tuple[str, str], ...]:
    if tags is None:
        return ()
    if not isinstance(tags, Mapping | list | tuple):
        raise E.Tag("tags are a map or a list of (key, value) pairs")
    if not tags:
        return ()
    pairs = list(tags.items()) if isinstance(tags, Mapping) else list(tags)
    out = {}
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise E.Tag("tags are (key, value) pairs")
        k, v = pair
        if not isinstance(k, str) or not isinstance(v, str) or not 1 <= len(k) <= 128 \
                or len(v) > 256 or k.startswith("aws:"):
            raise E.Tag("tag keys are 1..128 characters (not aws:...), values up to 256")
        out[k] = v
    if len(out) > 50:
        raise E.LimitExceeded("a key has at most 50 tags")
    return tuple(sorted(out.items()))


def _check_sign_args(rec: KeyRecord, algorithm: str, message_type: str, data: bytes) -> None:
    if message_type not in ("RAW", "DIGEST"):
        raise E.Validation("MessageType must be RAW or DIGEST")
    if algorithm not in rec.info.signing_algorithms:
        raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support {algorithm}")
    if message_type == "DIGEST":
        size = 32 if rec.spec is KeySpec.SM2 else _HASH_OBJ["SHA_" + algorithm[-3:]].digest_size
        if len(data) != size:
            raise E.Validation(f"a {algorithm} digest is {size} bytes")


def _verify_with_public(rec: KeyRecord, v: KeyVersion, data: bytes, sig: bytes,
                        algorithm: str, message_type: str) -> bool:
    if rec.spec is KeySpec.SM2:
        pub = SM2PublicKey.from_der(v.public_key)
        try:
            if message_type == "DIGEST":
                pub.verify_digest(sig, data)
            else:
                pub.verify(sig, data)
        except (GmInvalidSignature, ValueError):
            return False
        return True
    pk = serialization.load_der_public_key(v.public_key)
    h = _HASH_OBJ["SHA_" + algorithm[-3:]]
    chosen: Any = utils.Prehashed(h) if message_type == "DIGEST" else h
    if message_type == "DIGEST" and len(data) != h.digest_size:
        raise E.Validation(f"a {algorithm} digest is {h.digest_size} bytes")
    from cryptography.exceptions import InvalidSignature

    try:
        if isinstance(pk, rsa.RSAPublicKey):
            pad: Any = (padding.PSS(padding.MGF1(h), h.digest_size) if "PSS" in algorithm
                        else padding.PKCS1v15())
            pk.verify(sig, data, pad, chosen)
        elif isinstance(pk, ec.EllipticCurvePublicKey):
            pk.verify(sig, data, ec.ECDSA(chosen))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _asym_encrypt(rec: KeyRecord, v: KeyVersion, data: bytes, algorithm: str) -> bytes:
    if rec.spec is KeySpec.SM2:
        try:
            return SM2PublicKey.from_der(v.public_key).encrypt(data)
        except ValueError:
            raise E.Validation("the plaintext cannot be encrypted with SM2") from None
    pk = serialization.load_der_public_key(v.public_key)
    assert isinstance(pk, rsa.RSAPublicKey)
    h = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    max_len = pk.key_size // 8 - 2 * h.digest_size - 2
    if len(data) > max_len:
        raise E.Validation(f"the plaintext must be at most {max_len} bytes for this key")
    return pk.encrypt(data, padding.OAEP(padding.MGF1(h), h, None))


def _make_pair(spec: str) -> tuple[bytes, bytes]:
    """A data key pair made in process memory: (PKCS#8 DER private, SPKI DER public)."""
    if spec == "SM2":
        sm2 = SM2PrivateKey.generate()
        return sm2.to_der(), sm2.public_key().to_der()
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if spec.startswith("RSA_"):
        key = rsa.generate_private_key(65537, int(spec[4:]))
    else:
        curve = {"ECC_NIST_P256": ec.SECP256R1(), "ECC_NIST_P384": ec.SECP384R1(),
                 "ECC_NIST_P521": ec.SECP521R1(), "ECC_SECG_P256K1": ec.SECP256K1()}[spec]
        key = ec.generate_private_key(curve)
    private = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


_ = hashlib  # kept for callers computing digests alongside this module
