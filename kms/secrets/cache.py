"""What a process remembers of secrets between requests: records by the id a caller named
them by, and each secret's versions (envelopes, never values).

Cleared whole by every secret write of this process (:meth:`kms.secrets.manage.Secrets
._secret_update` and its siblings) and, like the key caches, when another process has
committed to the store (:meth:`kms.Kms._fresh`). A read that raced a write is not kept
(the generation moved on meanwhile).
"""

from __future__ import annotations

import threading

from kms.secrets.model import SecretRecord, SecretVersion

MAX_ENTRIES = 4096


class SecretCache:
    def __init__(self) -> None:
        self._records: dict[tuple[str, str], SecretRecord] = {}
        self._versions: dict[str, tuple[SecretVersion, ...]] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._records.clear()
            self._versions.clear()

    def record(self, instance: str, secret_id: str) -> SecretRecord | None:
        return self._records.get((instance, secret_id))

    def keep_record(self, instance: str, secret_id: str, rec: SecretRecord,
                    generation: int) -> None:
        with self._lock:
            if generation == self.generation:
                if len(self._records) >= MAX_ENTRIES:
                    self._records.clear()
                self._records[(instance, secret_id)] = rec

    def versions(self, secret_id: str) -> tuple[SecretVersion, ...] | None:
        return self._versions.get(secret_id)

    def keep_versions(self, secret_id: str, versions: tuple[SecretVersion, ...],
                      generation: int) -> None:
        with self._lock:
            if generation == self.generation:
                if len(self._versions) >= MAX_ENTRIES:
                    self._versions.clear()
                self._versions[secret_id] = versions


class DataKeyCache:
    """Data keys of secret versions sealed under the instance's default secrets key, kept
    for ``ttl`` seconds so that a hot GetSecretValue does not go to a token each time (the
    token's key stays in the token; this is the version's own 256-bit data key, as
    GenerateDataKey hands out). Bounded; cleared with the secret cache; never used for a
    secret under a customer's key (its caller's kms:Decrypt is checked every time)."""

    def __init__(self, ttl: float = 300.0, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._keys: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def get(self, secret_id: str, version_id: str, now: float) -> bytes | None:
        hit = self._keys.get((secret_id, version_id))
        if hit is None or now > hit[1]:
            return None
        return hit[0]

    def put(self, secret_id: str, version_id: str, data_key: bytes, now: float) -> None:
        with self._lock:
            if len(self._keys) >= self.max_entries:
                self._keys.clear()
            self._keys[(secret_id, version_id)] = (data_key, now + self.ttl)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
