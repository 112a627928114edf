"""Principals and their access keys (for the servers' request signatures).

A principal belongs to one instance and carries policies (:mod:`kms.policy`). An access key
is an id and a secret; the secret is needed in clear to check HMAC signatures, so it is
stored wrapped by the instance's pool domain key (``Instance.import_secret``) and unwrapped
in a token when a server first sees the access key. Secrets are shown once, at creation.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from kms.errors import MalformedPolicyDocument, NotFound
from kms.service import Kms

_ID_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True, slots=True)
class AccessKey:
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


def create_access_key(kms: Kms, instance: str, name: str, policies: list[Any]) -> AccessKey:
    """Create (or update the policies of) principal ``name`` in ``instance`` and give it a
    new access key. ``policies`` are AWS-style policy documents (dicts or JSON strings)."""
    kms.pool.instance(instance)
    parsed = _policy_objects(policies)
    docs = json.dumps([json.loads(p.to_json()) for p in parsed])
    row = kms.store.find_principal(instance, name)
    principal_id = row["principal_id"] if row else "p-" + uuid.uuid4().hex[:20]
    kms.store.put_principal(principal_id, instance, name, docs)
    access_key_id = "HSMP" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))
    secret = secrets.token_urlsafe(30)[:40]
    blob = kms.pool.instance(instance).import_secret(secret.encode())
    kms.store.put_access_key(access_key_id, principal_id, bytes(blob))
    return AccessKey(access_key_id, secret, principal_id, name, instance)


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
        principal = self._load_principal(row["principal_id"])
        if principal is None:
            return None
        secret = self.kms.pool.instance(principal.instance).export_secret(
            bytes(row["secret_blob"])).decode()
        with self._lock:
            self._secrets[access_key_id] = secret
            self._owner[access_key_id] = row["principal_id"]
        return secret

    def principal_for(self, access_key_id: str) -> Any:
        pid = self._owner.get(access_key_id)
        if pid is None:
            if self.secret_for(access_key_id) is None:
                raise NotFound("unknown access key")
            pid = self._owner[access_key_id]
        principal = self._principals.get(pid)
        if principal is None:
            principal = self._load_principal(pid)
            if principal is None:
                raise NotFound("unknown principal")
        return principal

    def _load_principal(self, principal_id: str) -> Any:
        from kms.policy import Principal

        row = self.kms.store.get_principal(principal_id)
        if row is None:
            return None
        policies = _policy_objects(json.loads(row["policies"]))
        principal = Principal(id=row["principal_id"], name=row["name"],
                              instance=row["instance"], policies=policies)
        self._principals[principal_id] = principal
        return principal

    def forget(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._principals.clear()
            self._owner.clear()
