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
