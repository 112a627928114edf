"""The records of the secrets manager: a secret, and its versions with their stages.

A secret belongs to an instance and has a name unique in it (while it exists: a purged
secret's name can be taken again), an ARN ending in ``-`` and six random characters, the
KMS key that envelope-encrypts its versions (None: the instance's default secrets key), and
a revision: every change to the secret *or to its versions' stages* writes a later revision,
compare-and-swap, in one transaction with the versions it touches
(:meth:`kms.store.SecretStore.update_secret`). So stages are always consistent: exactly one
version is ``AWSCURRENT`` once there is a value, ``AWSPREVIOUS`` is on at most one version,
and a version with no stage is deprecated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

__all__ = ["CURRENT", "PENDING", "PREVIOUS", "SecretRecord", "SecretVersion"]

CURRENT: Final = "AWSCURRENT"
PENDING: Final = "AWSPENDING"
PREVIOUS: Final = "AWSPREVIOUS"


@dataclass(frozen=True, slots=True)
class SecretRecord:
    secret_id: str  # internal, stable (32 hex digits)
    instance: str
    name: str
    arn: str
    created: float
    revision: int
    description: str = ""
    kms_key_id: str | None = None  # as the caller named it; None: the default secrets key
    tags: tuple[tuple[str, str], ...] = ()
    last_changed: float | None = None
    deletion_date: float | None = None  # set: scheduled for deletion (purged at that time)
    rotator: str | None = None  # the built-in rotator's name (kms.secrets.rotation)
    rotation_rules: str | None = None  # the RotationRules, as JSON
    rotation_enabled: bool = False
    last_rotated: float | None = None
    next_rotation: float | None = None
    rotation_error: str | None = None  # why the last rotation failed (never a value)
    policy: str | None = None  # the resource policy document

    def evolve(self, **changes: object) -> SecretRecord:
        return replace(self, revision=self.revision + 1, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SecretVersion:
    """One value of a secret: the envelope (:mod:`kms.secrets.envelope`), never the value."""

    secret_id: str
    version_id: str  # the ClientRequestToken that made it
    created: float
    stages: tuple[str, ...]
    envelope: bytes
    binary: bool  # SecretBinary (else SecretString)

    def with_stages(self, stages: tuple[str, ...]) -> SecretVersion:
        return replace(self, stages=tuple(sorted(set(stages))))
