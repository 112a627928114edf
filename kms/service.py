"""The KMS service: :class:`Kms` (shared by a process's callers) and :class:`KmsClient`.

:class:`Kms` holds what every caller shares: the pool, the metadata store, the audit log,
the caches (key records, aliases, resource names, grants, parsed key policies, versions and
their material), the scheduler (rotation, purge, expiry of imported material).

:class:`KmsClient` is one caller (an instance and a principal): the operations of every
domain (:mod:`kms.keys.lifecycle`, :mod:`kms.keys.aliases`, :mod:`kms.keys.crypto`,
:mod:`kms.keys.importing`, :mod:`kms.keys.grants`), each running the pipeline of
:mod:`kms.caller`.

Key records are immutable; a change builds the new record, the store writes it in one
transaction (compare-and-swap on the revision), and then the cached record is evicted.
Caches are dropped when another process commits to the store: at once where the store
pushes changes (:meth:`Kms.start_watching`; PostgreSQL's LISTEN/NOTIFY), and by its change
token, checked at most every 50 ms (every 5 s while changes are pushed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import hsmpool
from hsmpool import Pool
from hsmpool.instance import Instance
from kms import errors as E
from kms.caller import Caller, ListPage, durable_actions
from kms.config import KmsSettings
from kms.keys.aliases import Aliases
from kms.keys.crypto import (
    DataKey,
    DataKeyPair,
    DecryptResult,
    EncryptResult,
    KeyCrypto,
    PublicKeyInfo,
)
from kms.keys.export import DataKeyExport
from kms.keys.grants import Grants
from kms.keys.importing import KeyImport
from kms.keys.lifecycle import DAY, KeyLifecycle, check_key_policy, default_key_policy
from kms.keys.material import VersionCache, backend, pool_error
from kms.model import Grant, KeyRecord, KeyState, KeyVersion
from kms.policy import Authorizer, KeyPolicy, PolicyError
from kms.secrets.cache import DataKeyCache, SecretCache
from kms.secrets.manage import Secrets
from kms.store import ChangeWatch, Conflict, MetadataStore, open_store

if TYPE_CHECKING:
    from kms.audit_ship import Shipper

__all__ = [
    "DURABLE_ACTIONS", "DataKey", "DataKeyPair", "DecryptResult", "EncryptResult", "Kms",
    "KmsClient", "ListPage", "PublicKeyInfo", "ServiceHealth", "TokenStats",
    "check_key_policy", "default_key_policy", "pool_error",
]

log = logging.getLogger(__name__)

SCHEDULER_PRINCIPAL: Final = "hsmpool:scheduler"  # the audit trail's name for scheduled jobs
SCHEDULER_LEASE: Final = "scheduler"  # the store lease of the process running due jobs
SCHEDULER_LEASE_TTL: Final = 120.0  # seconds; renewed before each job
_NOBODY: Final = KeyPolicy(())  # a key policy that allows no principal


def domain_key_lock(store: MetadataStore) -> Callable[[str], AbstractContextManager[object]]:
    """The pool's cluster-wide lock around an instance's domain-key set-up
    (:class:`hsmpool.Pool`'s ``setup_lock``): the store's, named per instance."""
    return lambda instance: store.exclusive(f"domain-keys:{instance}")


class _Unchecked:
    """The default of :meth:`Kms.health`: the store not asked yet."""


UNCHECKED: Final = _Unchecked()

#: A token's statistics, as the pool reports them (``Kms.token_stats``).
TokenStats = hsmpool.MemberStats


#: Seconds between polls of the store's change token (the cache check of every operation).
POLL_INTERVAL: Final = 0.05
#: The same while the store pushes changes (Kms.start_watching): only a safety net then.
WATCHED_POLL_INTERVAL: Final = 5.0
#: Seconds a health check waits for the store (a connection, then ``SELECT 1``).
STORE_PING_TIMEOUT: Final = 1.0


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    store_ok: bool
    tokens: Mapping[str, str]  # token name -> state ("healthy", "ejected", ...)
    healthy_per_instance: Mapping[str, int]  # healthy tokens that hold its domain keys
    missing: Mapping[str, str] = field(default_factory=dict)  # left out at start: why
    store_error: str | None = None  # why the store is not ok

    @property
    def ok(self) -> bool:
        return self.store_ok and not self.instances_without_tokens

    @property
    def instances_without_tokens(self) -> list[str]:
        """Instances none of whose tokens is healthy now and holds their domain keys."""
        return sorted(name for name, n in self.healthy_per_instance.items() if n <= 0)


class Kms:
    """The service over a pool and a metadata store. Thread-safe; share one per process.

    ``now`` (seconds since the epoch) and ``rng`` are injectable so rotation, expiry and
    deletion windows can be tested without sleeping.
    """

    def __init__(
        self,
        pool: Pool,
        store: MetadataStore,
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
        self._headers: dict[str, bytes] = {}  # version id -> ciphertext header
        #: Parsed blobs and software key objects, by version id.
        self.versions = VersionCache()
        self._accounts: dict[str, str] = {}
        #: Per instance, the key id of its default secrets key (kms.secrets.manage).
        self.default_secret_keys: dict[str, str] = {}
        self.secret_cache = SecretCache()
        self.data_keys = DataKeyCache()
        self._cache_lock = threading.Lock()
        # Read-modify-write of key records: one at a time in this process, so that threads
        # do not exhaust each other's compare-and-swap retries (left for other processes).
        self._write_lock = threading.RLock()
        self._change_token = store.change_token()
        self._generation = 0  # bumped by every write and drop (see _key)
        self._drops = 0  # bumped by every drop of the caches (see refresh)
        self._checked = time.monotonic()
        self._confirmed = self._checked  # the last time the store told us its change token
        self._cut_off = False  # the store did not answer past the grace: serve nothing
        #: Seconds after :attr:`_confirmed` that caches are still served while the store does
        #: not answer (``[kms] store_grace``; see :meth:`_fresh`).
        self.store_grace = settings.store_grace
        self._watch: ChangeWatch | None = None  # the store's push of changes, if started
        #: Seconds between polls of the change token while the store pushes changes (a
        #: safety net; without a push: :data:`POLL_INTERVAL`).
        self.watched_poll_interval = WATCHED_POLL_INTERVAL
        self._scheduler: threading.Thread | None = None
        self._lease_owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stop = threading.Event()
        #: Ships the audit segment into the store at each checkpoint (``[kms] audit_ship``).
        self.audit_shipper: Shipper | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        if audit is not None and hasattr(audit, "head"):
            if settings.audit_ship:
                from kms.audit_ship import Shipper

                self.audit_shipper = Shipper(audit, store)
            self.checkpoint_audit()  # registered in the store from the start (kms/audit_anchor)

    # --- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, config_path: str | os.PathLike[str], *, now: Callable[[], float] = time.time,
             audit_segment: str | None = None) -> Kms:
        from kms.config import load

        pool_cfg, settings = load(config_path)
        store = open_store(settings.database)  # first: its lock covers domain-key set-up
        try:
            pool = Pool(pool_cfg, setup_lock=domain_key_lock(store))
        except BaseException:
            store.close()
            raise
        try:
            audit = None
            if settings.audit_dir is not None:
                from kms.audit_anchor import open_log

                audit = open_log(pool, store, settings.audit_dir, audit_segment)
            return cls(pool, store, settings, audit=audit, now=now, owns_pool=True)
        except BaseException:
            pool.close()
            store.close()
            raise

    def change_token(self) -> int:
        """A number that changes whenever another process committed to the metadata store
        (callers drop what they cache when it does)."""
        return self.store.change_token()

    def token_stats(self) -> dict[str, TokenStats]:
        """Per token of the pool: state, in-flight, ops, errors, latency percentiles."""
        return self.pool.stats()

    def health(self, store_error: str | None | _Unchecked = UNCHECKED) -> ServiceHealth:
        """The tokens' states, the healthy tokens per instance, whether the store answers.

        By default the store is asked now (:meth:`store_error`, which waits up to
        :data:`STORE_PING_TIMEOUT`); a caller that asked it elsewhere (off the event loop:
        :mod:`kms.api.health`) passes what it found, None for ok."""
        if isinstance(store_error, _Unchecked):
            store_error = self.store_error()
        return ServiceHealth(
            store_error is None,
            {name: s.state for name, s in self.pool.stats().items()},
            {name: len(inst.serving_members()) for name, inst in self.pool.instances.items()},
            dict(self.pool.missing), store_error)

    def missing_tokens(self) -> dict[str, str]:
        """Tokens left out of the pool at start, and why (no store access)."""
        return dict(self.pool.missing)

    def store_error(self, timeout: float = STORE_PING_TIMEOUT) -> str | None:
        """None if the store answers a trivial query within about ``timeout`` seconds,
        else why not (one line)."""
        try:
            self.store.ping(timeout)
        except Exception as exc:  # noqa: BLE001 - any failure of the store is "not ok"
            text = " ".join(str(exc).split()) or "no detail"
            return f"{type(exc).__name__}: {text[:300]}"
        return None

    def token_latency(self, token: str, bounds_s: tuple[float, ...]) -> tuple[list[int], float]:
        """A token's call latencies in buckets up to each bound (and one more), and their
        approximate sum in seconds (Prometheus histograms)."""
        return self.pool.members[token].latency_buckets(bounds_s)

    def store_statements(self) -> int | None:
        """SQL statements the store has run for this process (PostgreSQL's round trips to
        the database; None for a store that does not count them)."""
        n = getattr(self.store, "statements", None)
        return int(n) if n is not None else None

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

    def checkpoint_audit(self, *, ship_budget: float | None = None) -> None:
        """Record the audit segment's head in the store (:mod:`kms.audit_anchor`): at open,
        every few seconds from the scheduler, and at close; with ``[kms] audit_ship``, then
        ship what the segment committed since (:mod:`kms.audit_ship`; for at most
        ``ship_budget`` seconds, default :data:`kms.audit_ship.SHIP_BUDGET`; a shipping
        failure is logged, never raised)."""
        from kms.audit_anchor import checkpoint

        if self.audit is not None:
            checkpoint(self.audit, self.store)
            if self.audit_shipper is not None:
                from kms.audit_ship import SHIP_BUDGET

                self.audit_shipper.run(SHIP_BUDGET if ship_budget is None else ship_budget)

    def close(self) -> None:
        """Stop the scheduler, close the audit log (with a last checkpoint), the store and an
        owned pool. Once: later calls do nothing (a server worker closes its service when
        the app's lifespan ends and again on its way out; a second checkpoint on the closed
        PostgreSQL store logged a store outage at every stop)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)
        if self.audit is not None:
            try:
                self.audit.close()
            finally:
                from kms.audit_ship import CLOSE_BUDGET

                with contextlib.suppress(Exception):  # the store may be what failed
                    self.checkpoint_audit(ship_budget=CLOSE_BUDGET)
        self.store.close()
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> Kms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- caches ------------------------------------------------------------------------

    def start_watching(self) -> bool:
        """Have the store push changes, where it can (PostgreSQL: LISTEN/NOTIFY, a thread
        and a connection per process): caches are then dropped as soon as another process
        commits, and the change token is polled only every :attr:`watched_poll_interval`
        seconds while the listener is connected. False if the store cannot push (it is
        polled every :data:`POLL_INTERVAL`, as before)."""
        if self._watch is None:
            self._watch = self.store.watch(self._changed)
        return self._watch is not None

    def _changed(self, token: int | None) -> None:
        """From the store's listener: a commit (its change token), or None: changes may
        have been missed."""
        if token is not None:
            self._change_token = max(self._change_token, token)
        self._confirmed = time.monotonic()
        self._cut_off = False
        self._drop_caches()

    def _fresh(self) -> None:
        """Drop caches if another process committed since we last looked.

        While the store does not answer (:class:`kms.errors.StoreUnavailable`), what is
        cached is served for :attr:`store_grace` seconds after the store was last heard
        from (a poll answered, or the change listener still connected; a key disabled on
        another node meanwhile stays usable here that long);
        past it, every request fails with the store's error until it answers again. A cache
        miss needs the store and fails at once whatever the grace."""
        t = time.monotonic()
        watch = self._watch
        if watch is not None and watch.live:  # connected: a commit would have been pushed
            self._confirmed = t
            period = self.watched_poll_interval
        else:
            period = POLL_INTERVAL
        if t - self._checked < period:
            if self._cut_off:  # past the grace: no cache is served between polls either
                raise E.StoreUnavailable("the metadata store is unavailable; retry")
            return
        self._checked = t
        try:
            token = self.store.change_token()
        except E.StoreUnavailable:
            if t - self._confirmed >= self.store_grace:
                self._cut_off = True
                raise
            return
        self._cut_off = False
        self._confirmed = t
        if token != self._change_token:
            self._change_token = token
            self._drop_caches()

    def refresh(self) -> int:
        """Look for other processes' commits as requests do (:meth:`_fresh`: at most every
        50 ms, or every few seconds while the store pushes changes; the store's outage
        policy included) and return how many times the caches have been dropped so far:
        the front ends drop theirs when it moves (:class:`kms.api.auth.Authenticator`)."""
        self._fresh()
        return self._drops

    def _drop_caches(self) -> None:
        with self._cache_lock:
            self._drops += 1
            self._generation += 1
            self._keys.clear()
            self._aliases.clear()
            self._names.clear()
            self._grants.clear()
            self._versions.clear()  # blobs can be shredded or restored by another process
        self.secret_cache.clear()
        self.data_keys.clear()
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

    def _evict_key(self, rec: KeyRecord) -> None:
        """After a write: forget the cached record; the next use reads the store. (Caching
        ``rec`` could go back in time: a slower writer's older revision would replace a newer
        one, and e.g. a key disabled meanwhile would stay usable in this process.)"""
        with self._cache_lock:
            self._generation += 1
            self._keys.pop(rec.key_id, None)

    def _forget_alias(self, instance: str, name: str, *key_ids: str) -> None:
        """After an alias write: evict it and the resource names of the keys it pointed at
        and points at (as :meth:`_evict_key` does for keys)."""
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

    def _forget_versions(self, versions: Sequence[KeyVersion], instance: Instance) -> None:
        for v in versions:
            self._versions.pop(v.version_id, None)
        self.versions.forget(versions, instance)

    # --- scheduler ---------------------------------------------------------------------

    def run_due(self, now: float | None = None) -> dict[str, list[str]]:
        """Run due rotations, purge keys past their deletion window, and expire imported
        material. Returns the key ids handled, by kind."""
        t = self.now() if now is None else now
        done: dict[str, list[str]] = {"rotated": [], "purged": [], "expired": [],
                                      "secrets_rotated": [], "secrets_deleted": []}
        # One process at a time (the lease); a job that races a request anyway loses its
        # compare-and-swap and is left for the next run.
        if not self.store.try_lock(SCHEDULER_LEASE, self._lease_owner, SCHEDULER_LEASE_TTL):
            return done
        try:
            self._run_due(t, done)
            self._run_due_secrets(t, done)
        finally:
            self.store.unlock(SCHEDULER_LEASE, self._lease_owner)
        if any(done.values()):
            self._drop_caches()
        return done

    def _run_due(self, t: float, done: dict[str, list[str]]) -> None:
        for rec in self.store.keys_due(t):
            if rec.purged:
                continue  # purged already: its row stays (PendingDeletion) for the audit trail
            if not self.store.try_lock(SCHEDULER_LEASE, self._lease_owner, SCHEDULER_LEASE_TTL):
                return  # the lease expired and another process took it over
            inst = self.pool.instance(rec.instance)
            job = Caller(self, rec.instance, None, None, audit_name=SCHEDULER_PRINCIPAL)
            try:
                # Bounded like a request: a hung token costs this job, not the scheduler.
                with hsmpool.deadline(self.pool.settings.operation_timeout):
                    self._run_job(job, inst, rec, t, done)
            except Conflict:
                continue  # a request changed the key first

    def _run_due_secrets(self, t: float, done: dict[str, list[str]]) -> None:
        """Purge secrets past their recovery window; rotate secrets whose rotation is due
        (a failure is recorded on the secret and retried at the next run)."""
        for rec in self.store.secrets_due(t):
            if not self.store.try_lock(SCHEDULER_LEASE, self._lease_owner, SCHEDULER_LEASE_TTL):
                return
            job = KmsClient(self, rec.instance, None, None, audit_name=SCHEDULER_PRINCIPAL)
            try:
                with hsmpool.deadline(self.pool.settings.operation_timeout):
                    if rec.deletion_date is not None:
                        if rec.deletion_date <= t:
                            self.store.purge_secret(rec)
                            self.secret_cache.clear()
                            done["secrets_deleted"].append(rec.arn)
                            job._audit_secret("DeleteSecret", rec)
                    elif rec.rotator is not None:
                        job.rotate_secret(rec.arn)
                        done["secrets_rotated"].append(rec.arn)
            except (Conflict, E.KmsError, hsmpool.HsmPoolError):
                continue  # changed meanwhile, or the rotation failed (recorded on it)

    def _run_job(self, job: Caller, inst: Instance, rec: KeyRecord, t: float,
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
        """Run the due jobs every ``interval`` seconds, and checkpoint the audit segment
        every :data:`kms.audit_anchor.CHECKPOINT_INTERVAL` seconds, in a thread."""
        from kms.audit_anchor import CHECKPOINT_INTERVAL

        def loop() -> None:
            tick = min(interval, CHECKPOINT_INTERVAL)
            next_jobs = time.monotonic() + interval
            while not self._stop.wait(tick):
                with contextlib.suppress(Exception):  # a store outage: the next tick retries
                    self.checkpoint_audit()
                if time.monotonic() < next_jobs:
                    continue
                next_jobs = time.monotonic() + interval
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
        v = backend(rec.spec).new_version(inst, rec.key_id, number, now)
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
        self._evict_key(new)
        return v

    def _purge(self, inst: Instance, rec: KeyRecord) -> None:
        versions = self.store.list_versions(rec.key_id)
        new = rec.evolve(state=KeyState.PENDING_DELETION, primary_version=None,
                         purged_at=self.now())
        self.store.destroy_material(rec, new)
        self._forget_versions(versions, inst)
        self._evict_key(new)

    def _expire_import(self, inst: Instance, rec: KeyRecord) -> None:
        versions = self.store.list_versions(rec.key_id)
        new = rec.evolve(state=KeyState.PENDING_IMPORT, primary_version=None,
                         import_valid_to=None)
        # Like DeleteImportedKeyMaterial: aliases and the material fingerprint stay, so the
        # same material can be imported again.
        self.store.shred_imported_material(rec, new)
        self._forget_versions(versions, inst)
        self._evict_key(new)

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

    def release_token(self, token: str) -> bool:
        """End an operator's hold: the prober probes the token and readmits it when it
        answers. True if it was held. :class:`kms.errors.NotFound` as for :meth:`hold_token`."""
        try:
            return self.pool.release(token)
        except KeyError:
            raise E.NotFound(f"token {token!r} is not in the pool") from None


class KmsClient(KeyLifecycle, Aliases, Secrets, DataKeyExport, KeyCrypto, KeyImport, Grants):
    """The operations of the service, as one caller (instance + principal) sees them, in
    this process (not a network client: the front ends hold one per request).

    Method names and arguments follow the AWS KMS API (snake_case). Key ids may be a key
    id, a key ARN, an alias name (``alias/x``) or an alias ARN. Each method is written in
    the module of its domain (see the module docstring).
    """


#: Actions that change state: their success is acknowledged only after the audit record is
#: durable (:meth:`kms.caller.Caller._audit` flushes the log).
DURABLE_ACTIONS: Final = durable_actions()
