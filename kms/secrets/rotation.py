"""Rotation: AWS's four steps, run by built-in rotators.

A rotator is named by ``RotationLambdaARN = arn:hsmpool:rotator:<name>`` or by the tag
``hsmpool:rotator=<name>`` on the secret. :func:`run_rotation` runs the steps as AWS's
rotation functions do:

1. **createSecret**: a new value under ``AWSPENDING`` (the version id is the rotation's
   ClientRequestToken; a pending version left by a failed rotation is reused, so a retry
   sets the same value);
2. **setSecret**: the rotator makes the new value valid where it is used (a database);
3. **testSecret**: the rotator checks it works;
4. **finishSecret**: ``AWSCURRENT`` moves to the new version (``AWSPREVIOUS`` follows) and
   ``AWSPENDING`` is removed.

A failed step leaves ``AWSCURRENT`` untouched and ``AWSPENDING`` in place for a retry; the
secret records which step failed and why (``rotation_error``; never a value), and the
caller gets :class:`kms.errors.InvalidState` with the same reason.

Rotators here: ``generic`` (a new random password; a JSON object keeps its other keys and
gets a new ``password``), ``postgresql`` and ``postgresql-dual`` (a real PostgreSQL role's
password, changed with ``ALTER ROLE``: :mod:`kms.secrets.pgrotators`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from kms import errors as E
from kms.secrets import pgrotators as pg
from kms.secrets.model import CURRENT, PENDING, SecretRecord
from kms.secrets.passwords import random_password
from kms.secrets.schedule import parse_rules

if TYPE_CHECKING:
    from kms.secrets.manage import Secrets

ARN_PREFIX: Final = "arn:hsmpool:rotator:"
STEPS: Final = ("createSecret", "setSecret", "testSecret", "finishSecret")


class RotationError(Exception):
    """A rotator's step failed; the message says why (never a secret value)."""


class RotationContext(Protocol):
    """What a rotator may use beyond the values: other secrets (a database secret's
    ``masterarn``), read with the rotating caller's permissions."""

    def secret_string(self, secret_id: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Rotator:
    name: str
    #: createSecret: the new value, from the current one (None: the secret has none yet).
    create: Callable[[str | None], str]
    #: setSecret(ctx, current, pending) and testSecret(ctx, pending): RotationError to fail.
    set: Callable[[RotationContext, str | None, str], None]
    test: Callable[[RotationContext, str], None]


def new_password() -> str:
    """A rotator's new password: 32 characters, none that need quoting in a URL or shell."""
    return random_password(32, exclude_characters="\"'\\/@:`")


def _generic_create(current: str | None) -> str:
    if current is not None:
        try:
            doc = json.loads(current)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            doc["password"] = new_password()
            return json.dumps(doc)
    return new_password()


def _nothing(*_: object) -> None:
    return None


ROTATORS: Final[dict[str, Rotator]] = {
    "generic": Rotator("generic", _generic_create, _nothing, _nothing),
    "postgresql": Rotator("postgresql", pg.single_create, pg.single_set, pg.test),
    "postgresql-dual": Rotator("postgresql-dual", pg.dual_create, pg.dual_set, pg.test),
}


def rotator_named(name: object) -> Rotator:
    """A rotator by name or by ``arn:hsmpool:rotator:<name>``; Validation if unknown."""
    if not isinstance(name, str):
        raise E.Validation("RotationLambdaARN must be a string")
    short = name[len(ARN_PREFIX):] if name.startswith(ARN_PREFIX) else name
    rotator = ROTATORS.get(short)
    if rotator is None:
        raise E.Validation(f"no built-in rotator {short!r} (rotators: {sorted(ROTATORS)}; "
                           f"name one as {ARN_PREFIX}<name>)")
    return rotator


def run_rotation(sm: Secrets, rec: SecretRecord, token: str) -> tuple[SecretRecord, str]:
    """Run the four steps on ``rec`` as caller ``sm``; returns the secret and the new
    version id. Raises InvalidState (after recording why) if a step fails."""
    assert rec.rotator is not None
    rotator = rotator_named(rec.rotator)
    store = sm._store
    step = STEPS[0]
    try:
        versions = store.secret_versions(rec.secret_id)
        current = next((v for v in versions if CURRENT in v.stages), None)
        current_value = None
        if current is not None:
            data = sm._reveal_value(rec, current)
            current_value = None if current.binary else data.decode()
            if current.binary:
                raise RotationError("a binary secret cannot be rotated by a built-in rotator")
        pending = next((v for v in versions if PENDING in v.stages), None)
        if pending is not None and pending.version_id != token:
            token = pending.version_id  # a retry of a failed rotation: same new value
        if pending is None:
            rec, pending = sm._add_secret_version(rec, token, rotator.create(
                current_value).encode(), False, (PENDING,))
        pending_value = sm._reveal_value(rec, pending).decode()
        ctx = _Context(sm)
        step = STEPS[1]
        rotator.set(ctx, current_value, pending_value)
        step = STEPS[2]
        rotator.test(ctx, pending_value)
        step = STEPS[3]
        rec = _finish(sm, rec, pending.version_id)
        return rec, pending.version_id
    except (RotationError, E.KmsError, OSError, ValueError) as exc:
        reason = f"{step}: {exc}" if isinstance(exc, RotationError | E.KmsError) \
            else f"{step}: {type(exc).__name__}"
        _record_failure(sm, rec, reason)
        raise E.InvalidState(f"rotation failed at {reason}") from None


class _Context:
    def __init__(self, sm: Secrets) -> None:
        self.sm = sm

    def secret_string(self, secret_id: str) -> str:
        value = self.sm.get_secret_value(secret_id).string
        if value is None:
            raise RotationError(f"the secret {secret_id} is binary")
        return value


def _finish(sm: Secrets, rec: SecretRecord, version_id: str) -> SecretRecord:
    from kms.secrets.manage import CAS_ATTEMPTS, move_stages
    from kms.store import Conflict

    store = sm._store
    for _ in range(CAS_ATTEMPTS):
        versions = store.secret_versions(rec.secret_id)
        changed = {v.version_id: v for v in move_stages(versions, version_id, (CURRENT,))}
        target = changed.get(version_id) or next(v for v in versions
                                                 if v.version_id == version_id)
        changed[version_id] = target.with_stages(tuple(s for s in target.stages
                                                       if s != PENDING))
        now = sm.kms.now()
        nxt = None
        if rec.rotation_enabled and rec.rotation_rules is not None:
            nxt = now + parse_rules(json.loads(rec.rotation_rules)).interval
        new = rec.evolve(last_rotated=now, last_changed=now, rotation_error=None,
                         next_rotation=nxt)
        try:
            sm._secret_update(rec, new, list(changed.values()))
            return new
        except Conflict:
            rec = sm._secret_reread(rec)
    raise E.Internal("the secret is changing too fast; retry")


def _record_failure(sm: Secrets, rec: SecretRecord, reason: str) -> None:
    try:
        sm._secret_change(sm._secret_reread(rec),
                          lambda r: r.evolve(rotation_error=reason[:1024]))
    except (E.NotFound, E.Internal):
        pass  # deleted meanwhile, or changing too fast: the caller still gets the reason
