"""The service's operation pipeline, shared by every domain (keys; secrets to come).

An operation is declared once as an :class:`Op` (its action, the key states it runs in, the
key usage it needs, whether its success must be durably audited) and runs one way:

1. **resolve** the key (key id, key ARN, alias name or alias ARN; :meth:`Caller._resolve`);
2. **authorise** the caller (instance; the principal's policies, the key's policy and
   grants, against the key ARN and the ARNs of its aliases: :mod:`kms.policy`); a caller
   who may not is told the key does not exist, whether it exists or not;
3. **check** the key's state and usage (:meth:`Op.check`);
4. **execute** (the domain module's body: a backend of :mod:`kms.keys.material`, the store);
5. **audit** success under the operation's own action (flushed before the answer for
   state changes), and failure with the error's kind (:meth:`Caller._run`).

:class:`Caller` is one caller's view (an instance and a principal, or the embedding
application); the operations themselves are its methods, written in the domain modules
(:mod:`kms.keys.lifecycle`, :mod:`kms.keys.aliases`, :mod:`kms.keys.crypto`,
:mod:`kms.keys.importing`, :mod:`kms.keys.grants`) and combined in
:class:`kms.service.KmsCaller`.
"""

from __future__ import annotations

import hmac
import itertools
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeGuard, TypeVar

import hsmpool
from kms import errors as E
from kms.audit import AuditEvent as _AuditEvent
from kms.keys.material import VersionCache, pool_error
from kms.model import Grant, KeyRecord, KeyState, KeyUsage, KeyVersion
from kms.policy import Request, key_decision, principal_arn

if TYPE_CHECKING:
    from kms.service import Kms

T = TypeVar("T")

_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ARN_RE: Final = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(key|alias)/(.+)$")
_NO_DETAILS: Final[Mapping[str, str]] = {}
_ENABLED: Final = frozenset({KeyState.ENABLED})
_ANY_STATE: Final = frozenset(KeyState)


@dataclass(frozen=True, slots=True)
class Op:
    """An operation's declaration: what it is authorised and audited as, the key states it
    runs in (others: Disabled, or InvalidState), the key usage it needs, and whether its
    success is acknowledged only once its audit record is on disk (a change of state)."""

    action: str
    states: frozenset[KeyState] = _ENABLED
    usage: KeyUsage | None = None
    durable: bool = False

    def check(self, rec: KeyRecord) -> None:
        state = rec.state
        if state not in self.states:
            if state is KeyState.DISABLED:
                raise E.Disabled(f"key {rec.arn} is disabled")
            raise E.InvalidState(f"key {rec.arn} is {state.value}")
        if self.usage is not None and rec.usage is not self.usage:
            raise E.InvalidKeyUsage(f"key {rec.arn} has usage {rec.usage.value}")


def any_state(action: str, durable: bool = False) -> Op:
    """An operation on a key in whatever state (metadata reads, most changes)."""
    return Op(action, _ANY_STATE, None, durable)


#: Every declared operation, by action (the scheduler's jobs too).
OPS: dict[str, Op] = {}


def declare(*ops: Op) -> None:
    for op in ops:
        OPS[op.action] = op


def durable_actions() -> frozenset[str]:
    """Actions whose success is acknowledged only once their audit record is durable."""
    return frozenset(a for a, op in OPS.items() if op.durable)


@dataclass(frozen=True, slots=True)
class ListPage:
    items: tuple[Any, ...]
    next_marker: str | None


_REQUEST_PREFIX: Final = f"{os.getpid():x}-{secrets.token_hex(4)}-"
_request_counter = itertools.count(1)


def _next_request_id() -> str:
    """Unique per process run: the pid, a random tag, and a counter (cheaper than uuid4)."""
    return _REQUEST_PREFIX + str(next(_request_counter))


def check_bytes(value: object, what: str, *, max_len: int | None = None,
                allow_empty: bool = False) -> bytes:
    """An argument that must be bytes (a bytearray or memoryview is copied)."""
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


def int_in(value: object, lo: int, hi: int) -> TypeGuard[int]:
    """Whether ``value`` is an int in ``lo..hi`` and not a bool (an int to Python, but not a
    number to the service: PostgreSQL refuses one for an integer column)."""
    return type(value) is int and lo <= value <= hi


def check_limit(limit: object) -> int:
    if not int_in(limit, 1, 1000):
        raise E.Validation("Limit must be 1..1000")
    return limit


def has_nul(*texts: str) -> bool:
    """Whether any of ``texts`` holds a NUL (U+0000). The service refuses one in what it
    stores or looks things up by (descriptions, tags, markers, names, stages) on every
    engine alike: PostgreSQL text cannot hold it (psycopg refuses the statement: it was a
    500 there), while SQLite kept it."""
    for t in texts:  # noqa: SIM110 - no generator (377 ns, this 142): per GetSecretValue
        if "\x00" in t:
            return True
    return False


def check_marker(marker: object) -> str:
    if marker is None:
        return ""
    if not isinstance(marker, str) or len(marker) > 1024 or has_nul(marker):
        raise E.InvalidMarker("the marker is not valid")
    return marker


class Caller:
    """One caller's view of the service: an instance, and a principal (None: the embedding
    application, with every permission inside the instance). The operations are methods
    of the domain classes built on this one (see the module docstring).

    Method names and arguments follow the AWS KMS API (snake_case). Key ids may be a key
    id, a key ARN, an alias name (``alias/x``) or an alias ARN.
    """

    def __init__(self, kms: Kms, instance: str, principal: Any, source_ip: str | None, *,
                 audit_name: str | None = None) -> None:
        self.kms = kms
        self._versions_cache: VersionCache = kms.versions
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

    def _key_op(self, op: Op, key_id: object, context: Mapping[str, str] | None = None, *,
                tokens: Sequence[tuple[str, str]] = ()) -> KeyRecord:
        """Steps 1-3 of the pipeline for ``op`` on a key: resolve, authorise, check."""
        rec = self._key_for(op.action, key_id, context, tokens=tokens)
        op.check(rec)
        return rec

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
        op = OPS.get(action)
        if result == "ok" and op is not None and op.durable:
            # A change of state is acknowledged only once its record is on disk (group
            # commit: concurrent changes share the commit); cryptographic operations are not
            # waited for (their records follow within the writer's delay).
            log.flush()

    def _run(self, action: str, fn: Callable[[], T]) -> T:
        """Run an operation body and audit a failure (the body audits its success)."""
        try:
            return fn()
        except E.KmsError as exc:
            self._audit(action, None, None, exc.kind)
            raise
        except hsmpool.HsmPoolError as exc:
            err = pool_error(exc)
            self._audit(action, None, None, err.kind)
            raise err from None

    def _primary(self, rec: KeyRecord) -> KeyVersion:
        v = self.kms._version(rec.primary_version) if rec.primary_version else None
        if v is None or v.blob is None:
            raise E.InvalidState(f"key {rec.arn} has no key material")
        return v

