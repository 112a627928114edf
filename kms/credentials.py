"""Principals and their access keys (for the servers' request signatures).

A principal belongs to one instance and carries policies (:mod:`kms.policy`). An access key
is an id and a secret; the secret is needed in clear to check HMAC signatures, so it is
stored wrapped by the instance's pool domain key (``Instance.import_secret``) and unwrapped
in a token when a server first sees the access key. Secrets are shown once, at creation
(:func:`create_access_key`, :func:`rotate_access_key`); nothing lists them.

The life of an access key::

    key = create_access_key(kms, "default", "app", [policy])     # AccessKey, with secret
    new = rotate_access_key(kms, key.access_key_id, disable_old=True)
    list_access_keys(kms.store, instance="default")              # [AccessKeyInfo], no secrets
    disable_access_key(kms.store, new.access_key_id)             # refused by every server
    enable_access_key(kms.store, new.access_key_id)              #   worker within a second
    delete_access_key(kms.store, key.access_key_id)              # gone for good

Listing, enabling, disabling and deleting touch only the metadata store (no HSM). Each
change is recorded in ``audit`` (if given; :func:`create_access_key` and
:func:`rotate_access_key` use the service's) as action ``credentials:<Operation>`` by
principal ``actor``, with the access key id and principal name as details. Unknown access
keys raise :class:`kms.errors.NotFound`, an instance the pool lacks
:class:`kms.errors.InstanceNotFound`.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hsmpool import HsmPoolError, Instance, InstanceNotFoundError
from kms.errors import InstanceNotFound, MalformedPolicyDocument, NotFound
from kms.service import Kms, pool_error
from kms.store import AccessKeyInfo

if TYPE_CHECKING:
    from kms.audit import AuditLog
    from kms.store import MetadataStore

__all__ = ["AccessKey", "AccessKeyInfo", "CredentialStore", "create_access_key",
           "delete_access_key", "describe_access_key", "disable_access_key",
           "enable_access_key", "list_access_keys", "rotate_access_key"]

_ID_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True, slots=True)
class AccessKey:
    """A new access key, with its secret (shown once)."""

    access_key_id: str
    secret_access_key: str
    principal_id: str
    principal_name: str
    instance: str


def _policy_objects(policies: list[Any]) -> tuple[Any, ...]:
    from kms.policy import Policy, PolicyError

    try:
        return tuple(Policy.from_json(p) for p in policies)
    except PolicyError as exc:
        raise MalformedPolicyDocument(str(exc)) from None


def _instance(kms: Kms, name: str) -> Instance:
    try:
        return kms.pool.instance(name)
    except InstanceNotFoundError:
        raise InstanceNotFound(f"instance {name!r} is not configured in the pool") from None


def _record(audit: AuditLog | None, actor: str, operation: str, key: AccessKeyInfo,
            **extra: str) -> None:
    if audit is not None:
        audit.record(time.time(), key.instance, actor, "credentials:" + operation, None, None,
                     "ok", "cred-" + uuid.uuid4().hex,
                     {"access_key_id": key.access_key_id, "principal": key.principal_name,
                      **extra})


def _new_key(kms: Kms, inst: Instance, instance: str, principal_id: str,
             name: str) -> AccessKey:
    access_key_id = "HSMP" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))
    secret = secrets.token_urlsafe(30)[:40]
    blob = inst.import_secret(secret.encode())
    kms.store.put_access_key(access_key_id, principal_id, bytes(blob))
    return AccessKey(access_key_id, secret, principal_id, name, instance)


def create_access_key(kms: Kms, instance: str, name: str, policies: list[Any], *,
                      actor: str = "") -> AccessKey:
    """Create (or update the policies of) principal ``name`` in ``instance`` and give it a
    new access key. ``policies`` are AWS-style policy documents (dicts or JSON strings)."""
    inst = _instance(kms, instance)
    parsed = _policy_objects(policies)
    docs = json.dumps([json.loads(p.to_json()) for p in parsed])
    row = kms.store.find_principal(instance, name)
    principal_id = row.principal_id if row else "p-" + uuid.uuid4().hex[:20]
    kms.store.put_principal(principal_id, instance, name, docs)
    key = _new_key(kms, inst, instance, principal_id, name)
    _record(kms.audit, actor, "CreateAccessKey", describe_access_key(kms.store,
                                                                     key.access_key_id))
    return key


def rotate_access_key(kms: Kms, access_key_id: str, *, disable_old: bool = False,
                      actor: str = "") -> AccessKey:
    """A new access key for the principal of ``access_key_id`` (same instance, same
    policies); with ``disable_old`` the old key is disabled once the new one is stored."""
    old = describe_access_key(kms.store, access_key_id)
    inst = _instance(kms, old.instance)
    key = _new_key(kms, inst, old.instance, old.principal_id, old.principal_name)
    _record(kms.audit, actor, "RotateAccessKey",
            describe_access_key(kms.store, key.access_key_id), replaces=access_key_id)
    if disable_old:
        disable_access_key(kms.store, access_key_id, audit=kms.audit, actor=actor)
    return key


def list_access_keys(store: MetadataStore, *, instance: str | None = None,
                     principal: str | None = None) -> list[AccessKeyInfo]:
    """Every access key (of ``instance``, of principal name ``principal``), enabled or not,
    ordered by instance, principal and creation."""
    return store.list_access_keys(instance, principal)


def describe_access_key(store: MetadataStore, access_key_id: str) -> AccessKeyInfo:
    row = store.find_access_key(access_key_id) if isinstance(access_key_id, str) else None
    if row is None:
        raise NotFound(f"access key {access_key_id!r} does not exist")
    return row


def _set_enabled(store: MetadataStore, access_key_id: str, enabled: bool, audit: AuditLog | None,
                 actor: str) -> AccessKeyInfo:
    if not isinstance(access_key_id, str) or not store.set_access_key_enabled(access_key_id,
                                                                             enabled):
        raise NotFound(f"access key {access_key_id!r} does not exist")
    info = describe_access_key(store, access_key_id)
    _record(audit, actor, "EnableAccessKey" if enabled else "DisableAccessKey", info)
    return info


def disable_access_key(store: MetadataStore, access_key_id: str, *, audit: AuditLog | None = None,
                       actor: str = "") -> AccessKeyInfo:
    """Refuse the access key from now on (servers notice within about 50 ms); reversible."""
    return _set_enabled(store, access_key_id, False, audit, actor)


def enable_access_key(store: MetadataStore, access_key_id: str, *, audit: AuditLog | None = None,
                      actor: str = "") -> AccessKeyInfo:
    """Accept a disabled access key again."""
    return _set_enabled(store, access_key_id, True, audit, actor)


def delete_access_key(store: MetadataStore, access_key_id: str, *, audit: AuditLog | None = None,
                      actor: str = "") -> AccessKeyInfo:
    """Delete the access key and its wrapped secret for good (the principal and its policies
    stay); returns what it was."""
    info = describe_access_key(store, access_key_id)
    if not store.delete_access_key(access_key_id):  # deleted meanwhile
        raise NotFound(f"access key {access_key_id!r} does not exist")
    _record(audit, actor, "DeleteAccessKey", info)
    return info


class CredentialStore:
    """Per-process lookups of access keys -> (secret, principal), cached."""

    def __init__(self, kms: Kms) -> None:
        self.kms = kms
        self._secrets: dict[str, str] = {}
        self._principals: dict[str, Any] = {}
        self._owner: dict[str, str] = {}
        self._lock = threading.Lock()

    def secret_for(self, access_key_id: str) -> str | None:
        hit = self._secrets.get(access_key_id)
        if hit is not None:
            return hit
        row = self.kms.store.get_access_key(access_key_id)
        if row is None:
            return None
        principal = self.load_principal(row.principal_id)
        if principal is None:
            return None
        try:
            inst = self.kms.pool.instance(principal.instance)
        except InstanceNotFoundError:  # the instance is no longer configured
            return None
        try:
            secret = inst.export_secret(row.secret_blob).decode()
        except HsmPoolError as exc:  # no token could unwrap it now: retryable
            raise pool_error(exc) from None
        with self._lock:
            self._secrets[access_key_id] = secret
            self._owner[access_key_id] = row.principal_id
        return secret

    def principal_for(self, access_key_id: str) -> Any:
        pid = self._owner.get(access_key_id)
        if pid is None:
            if self.secret_for(access_key_id) is None:
                raise NotFound("unknown access key")
            pid = self._owner[access_key_id]
        principal = self._principals.get(pid)
        if principal is None:
            principal = self.load_principal(pid)
            if principal is None:
                raise NotFound("unknown principal")
        return principal

    def load_principal(self, principal_id: str) -> Any:
        from kms.policy import Principal

        row = self.kms.store.get_principal(principal_id)
        if row is None:
            return None
        policies = _policy_objects(json.loads(row.policies))
        principal = Principal(id=row.principal_id, name=row.name,
                              instance=row.instance, policies=policies)
        self._principals[principal_id] = principal
        return principal

    def forget(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._principals.clear()
            self._owner.clear()
