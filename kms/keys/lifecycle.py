"""The life of keys: create, describe, list; enable, disable, schedule and cancel deletion;
descriptions, tags and key policies; rotation settings, on-demand rotation, versions.

Every operation is declared below as an :class:`~kms.caller.Op` and runs the pipeline of
:mod:`kms.caller`. A change builds the new (immutable) key record and writes it with a
compare-and-swap on its revision (:meth:`KeyLifecycle._change`): a lost race with another
process is retried after a short random pause; only then is the cache told.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from kms import errors as E
from kms.caller import (
    Caller,
    ListPage,
    Op,
    any_state,
    check_limit,
    check_marker,
    declare,
    has_nul,
    int_in,
)
from kms.keys import grants as _grants
from kms.keys.material import backend
from kms.model import (
    MAX_ROTATION_DAYS,
    MIN_ROTATION_DAYS,
    SPECS,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
)
from kms.policy import KeyPolicy, PolicyError, Request, identity_effect, key_decision
from kms.store import Conflict

DAY: Final = 86400.0
CAS_ATTEMPTS: Final = 20  # compare-and-swap attempts of a key change before giving up

CREATE_KEY: Final = Op("kms:CreateKey", durable=True)
DESCRIBE_KEY: Final = any_state("kms:DescribeKey")
LIST_KEYS: Final = Op("kms:ListKeys")
ENABLE_KEY: Final = any_state("kms:EnableKey", durable=True)
DISABLE_KEY: Final = any_state("kms:DisableKey", durable=True)
SCHEDULE_KEY_DELETION: Final = any_state("kms:ScheduleKeyDeletion", durable=True)
CANCEL_KEY_DELETION: Final = any_state("kms:CancelKeyDeletion", durable=True)
UPDATE_KEY_DESCRIPTION: Final = any_state("kms:UpdateKeyDescription", durable=True)
TAG_RESOURCE: Final = any_state("kms:TagResource", durable=True)
UNTAG_RESOURCE: Final = any_state("kms:UntagResource", durable=True)
LIST_RESOURCE_TAGS: Final = any_state("kms:ListResourceTags")
GET_KEY_POLICY: Final = any_state("kms:GetKeyPolicy")
LIST_KEY_POLICIES: Final = any_state("kms:ListKeyPolicies")
PUT_KEY_POLICY: Final = any_state("kms:PutKeyPolicy", durable=True)
ENABLE_KEY_ROTATION: Final = Op("kms:EnableKeyRotation", durable=True)
DISABLE_KEY_ROTATION: Final = any_state("kms:DisableKeyRotation", durable=True)
GET_KEY_ROTATION_STATUS: Final = any_state("kms:GetKeyRotationStatus")
ROTATE_KEY_ON_DEMAND: Final = Op("kms:RotateKeyOnDemand", durable=True)
LIST_KEY_ROTATIONS: Final = any_state("kms:ListKeyRotations")
#: No AWS action exists for Vault's min_decryption_version: it is authorised as a change of
#: the key's metadata.
SET_MIN_DECRYPTION_VERSION: Final = any_state("kms:UpdateKeyDescription", durable=True)
# The scheduler's jobs (audited as the scheduler principal).
ROTATE_KEY: Final = Op("kms:RotateKey", durable=True)
DELETE_KEY: Final = any_state("kms:DeleteKey", durable=True)
EXPIRE_KEY_MATERIAL: Final = any_state("kms:ExpireKeyMaterial", durable=True)
declare(CREATE_KEY, DESCRIBE_KEY, LIST_KEYS, ENABLE_KEY, DISABLE_KEY, SCHEDULE_KEY_DELETION,
        CANCEL_KEY_DELETION, UPDATE_KEY_DESCRIPTION, TAG_RESOURCE, UNTAG_RESOURCE,
        LIST_RESOURCE_TAGS, GET_KEY_POLICY, LIST_KEY_POLICIES, PUT_KEY_POLICY,
        ENABLE_KEY_ROTATION, DISABLE_KEY_ROTATION, GET_KEY_ROTATION_STATUS,
        ROTATE_KEY_ON_DEMAND, LIST_KEY_ROTATIONS, ROTATE_KEY, DELETE_KEY, EXPIRE_KEY_MATERIAL)

#: Key specs whose material can be imported (BYOK).
_IMPORTABLE: Final = frozenset({
    KeySpec.SYMMETRIC_DEFAULT, KeySpec.SM4, KeySpec.RSA_2048, KeySpec.RSA_3072,
    KeySpec.RSA_4096, KeySpec.ECC_NIST_P256, KeySpec.ECC_SECG_P256K1, KeySpec.HMAC_256,
    KeySpec.HMAC_384, KeySpec.HMAC_512, KeySpec.SM2, KeySpec.HMAC_SM3})


def conflict_pause(attempt: int) -> None:
    """After a lost compare-and-swap (another process changed the key first): a short random
    pause that grows with the attempt, so that two writers do not keep colliding."""
    time.sleep(random.random() * 0.001 * (attempt + 1))


class KeyLifecycle(Caller):
    """The life of keys (see the module docstring)."""

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
            if not isinstance(description, str) or len(description) > 8192 \
                    or has_nul(description):
                raise E.Validation("Description must be a string of at most 8192 characters "
                                   "(no NUL)")
            if org is Origin.EXTERNAL and spec not in _IMPORTABLE:
                raise E.UnsupportedOperation(f"{spec.value} keys cannot be imported")
            tag_pairs = _tags(tags)
            now = self.kms.now()
            key_id = str(uuid.uuid4())
            arn = self.kms.key_arn(self.instance_name, key_id)
            if key_policy is not None and not bypass_policy_lockout_safety_check:
                self._check_lockout(key_policy, lambda: (arn,))
            version = None
            if org is Origin.AWS_KMS:
                version = backend(spec).new_version(self.inst, key_id, 1, now)
            rec = KeyRecord(
                key_id=key_id, instance=self.instance_name, arn=arn, spec=spec, usage=usage,
                origin=org,
                state=KeyState.ENABLED if version else KeyState.PENDING_IMPORT, created=now,
                description=description,
                primary_version=version.version_id if version else None, tags=tag_pairs,
                policy=policy)
            self._store.insert_key(rec, version)
            self.kms._evict_key(rec)
            self._audit("kms:CreateKey", rec, version.version_id if version else None, "ok")
            return rec

        return self._run("kms:CreateKey", body)

    def describe_key(self, key_id: str, *, grant_tokens: Sequence[str] = ()) -> KeyRecord:
        def body() -> KeyRecord:
            rec = self._key_op(DESCRIBE_KEY, key_id,
                                tokens=_grants.parse_tokens(grant_tokens))
            self._audit("kms:DescribeKey", rec, None, "ok")
            return rec

        return self._run("kms:DescribeKey", body)

    def describable(self, records: Sequence[KeyRecord]) -> list[KeyRecord]:
        """The records among ``records`` this caller may DescribeKey (its policies, the
        keys' policies and grants), decided without writing audit records: what an
        operators' console shows of a ListKeys page (AWS lists every key id to a caller
        allowed ListKeys; their metadata is DescribeKey's)."""
        if self.principal is None:
            return list(records)
        return [r for r in records
                if self._allow(DESCRIBE_KEY.action, self._names(r), key=r)]

    def list_keys(self, limit: int = 100, marker: str | None = None) -> ListPage:
        def body() -> ListPage:
            if not self._allow("kms:ListKeys", ()):
                raise E.AccessDenied("not allowed to list keys")
            lim = check_limit(limit)
            after = check_marker(marker)
            recs = [r for r in self._store.list_keys(self.instance_name, after, lim + 1)]
            more = len(recs) > lim
            recs = recs[:lim]
            items = tuple(r for r in recs if not r.purged)
            nxt = recs[-1].key_id if more and recs else None
            self._audit("kms:ListKeys", None, None, "ok")
            return ListPage(items, nxt)

        return self._run("kms:ListKeys", body)

    def _change(self, op: Op, key_id: str,
                fn: Callable[[KeyRecord], KeyRecord | None]) -> KeyRecord:
        """Apply ``fn`` to the current record and store the result (retrying on a
        concurrent update); ``fn`` returns None for "no change"."""
        action = op.action

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
                    except Conflict:
                        self.kms._drop_caches()
                        conflict_pause(attempt)
                        continue
                    self.kms._evict_key(new)
                    self._audit(action, new, None, "ok")
                    return new
            raise E.Internal("the key is changing too fast; retry")

        return self._run(action, body)

    def enable_key(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is KeyState.ENABLED:
                return None
            if rec.state is not KeyState.DISABLED:
                raise E.InvalidState(f"key {rec.arn} is {rec.state.value}")
            return rec.evolve(state=KeyState.ENABLED)

        return self._change(ENABLE_KEY, key_id, fn)

    def disable_key(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is KeyState.DISABLED:
                return None
            if rec.state is not KeyState.ENABLED:
                raise E.InvalidState(f"key {rec.arn} is {rec.state.value}")
            return rec.evolve(state=KeyState.DISABLED)

        return self._change(DISABLE_KEY, key_id, fn)

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 30) -> KeyRecord:
        if not int_in(pending_window_days, 7, 30):
            raise E.Validation("PendingWindowInDays must be 7..30")

        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is KeyState.PENDING_DELETION:
                raise E.InvalidState(f"key {rec.arn} is already pending deletion")
            return rec.evolve(state=KeyState.PENDING_DELETION,
                              deletion_date=self.kms.now() + pending_window_days * DAY)

        return self._change(SCHEDULE_KEY_DELETION, key_id, fn)

    def cancel_key_deletion(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if rec.state is not KeyState.PENDING_DELETION:
                raise E.InvalidState(f"key {rec.arn} is not pending deletion")
            state = KeyState.DISABLED if rec.primary_version else KeyState.PENDING_IMPORT
            return rec.evolve(state=state, deletion_date=None)

        return self._change(CANCEL_KEY_DELETION, key_id, fn)

    def update_key_description(self, key_id: str, description: str) -> KeyRecord:
        if not isinstance(description, str) or len(description) > 8192 \
                or has_nul(description):
            raise E.Validation("Description must be a string of at most 8192 characters "
                               "(no NUL)")
        return self._change(UPDATE_KEY_DESCRIPTION, key_id,
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

        return self._change(TAG_RESOURCE, key_id, fn)

    def untag_resource(self, key_id: str, tag_keys: Sequence[str]) -> KeyRecord:
        if not isinstance(tag_keys, list | tuple) or not all(
                isinstance(k, str) for k in tag_keys):
            raise E.Validation("TagKeys must be a list of strings")
        drop = set(tag_keys)
        return self._change(UNTAG_RESOURCE, key_id, lambda rec: rec.evolve(
            tags=tuple((k, v) for k, v in rec.tags if k not in drop)))

    def list_resource_tags(self, key_id: str) -> tuple[tuple[str, str], ...]:
        def body() -> tuple[tuple[str, str], ...]:
            rec = self._key_op(LIST_RESOURCE_TAGS, key_id)
            self._audit("kms:ListResourceTags", rec, None, "ok")
            return rec.tags

        return self._run("kms:ListResourceTags", body)

    # --- key policies --------------------------------------------------------------------

    def get_key_policy(self, key_id: str, policy_name: str = "default") -> str:
        """The key policy document: as given (CreateKey, PutKeyPolicy), or the default
        (the account root may use the key: the principals' own policies decide)."""

        def body() -> str:
            rec = self._key_op(GET_KEY_POLICY, key_id)
            if policy_name != "default":
                raise E.NotFound(f"key {rec.arn} has no key policy named {policy_name!r}")
            self._audit("kms:GetKeyPolicy", rec, None, "ok")
            return rec.policy if rec.policy is not None else default_key_policy(self._account)

        return self._run("kms:GetKeyPolicy", body)

    def list_key_policies(self, key_id: str) -> tuple[str, ...]:
        def body() -> tuple[str, ...]:
            rec = self._key_op(LIST_KEY_POLICIES, key_id)
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
            return self._change(PUT_KEY_POLICY, key_id, fn)
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
        """Rotate every ``rotation_period_days`` (7..2560: AWS KMS's front end allows
        90..2560, Alibaba's 7..730)."""
        if not int_in(rotation_period_days, MIN_ROTATION_DAYS, MAX_ROTATION_DAYS):
            raise E.Validation(f"the rotation period must be {MIN_ROTATION_DAYS}.."
                               f"{MAX_ROTATION_DAYS} days")

        def fn(rec: KeyRecord) -> KeyRecord | None:
            if not rec.info.rotatable or rec.origin is Origin.EXTERNAL:
                raise E.UnsupportedOperation(f"{rec.spec.value} keys do not rotate")
            ENABLE_KEY_ROTATION.check(rec)
            return rec.evolve(rotation_enabled=True, rotation_period_days=rotation_period_days,
                              next_rotation=self.kms.now() + rotation_period_days * DAY)

        return self._change(ENABLE_KEY_ROTATION, key_id, fn)

    def disable_key_rotation(self, key_id: str) -> KeyRecord:
        def fn(rec: KeyRecord) -> KeyRecord | None:
            if not rec.info.rotatable or rec.origin is Origin.EXTERNAL:
                raise E.UnsupportedOperation(f"{rec.spec.value} keys do not rotate")
            return rec.evolve(rotation_enabled=False, next_rotation=None)

        return self._change(DISABLE_KEY_ROTATION, key_id, fn)

    def get_key_rotation_status(self, key_id: str) -> KeyRecord:
        def body() -> KeyRecord:
            rec = self._key_op(GET_KEY_ROTATION_STATUS, key_id)
            self._audit("kms:GetKeyRotationStatus", rec, None, "ok")
            return rec

        return self._run("kms:GetKeyRotationStatus", body)

    def rotate_key_on_demand(self, key_id: str) -> KeyVersion:
        def body() -> KeyVersion:
            with self.kms._write_lock:
                for attempt in range(CAS_ATTEMPTS):
                    rec = self._key_for(ROTATE_KEY_ON_DEMAND.action, key_id)
                    if not rec.info.rotatable or rec.origin is Origin.EXTERNAL:
                        raise E.UnsupportedOperation(f"{rec.spec.value} keys do not rotate")
                    ROTATE_KEY_ON_DEMAND.check(rec)
                    try:
                        v = self.kms.rotate(self.inst, rec, self.kms.now())
                    except Conflict:
                        self.kms._drop_caches()
                        conflict_pause(attempt)
                        continue
                    self._audit("kms:RotateKeyOnDemand", rec, v.version_id, "ok")
                    return v
            raise E.Internal("the key is changing too fast; retry")

        return self._run("kms:RotateKeyOnDemand", body)

    def list_key_rotations(self, key_id: str) -> tuple[KeyVersion, ...]:
        """Every version of a key, oldest first (blobs stripped)."""

        def body() -> tuple[KeyVersion, ...]:
            rec = self._key_op(LIST_KEY_ROTATIONS, key_id)
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
            if not int_in(number, 1, primary.number):
                raise E.Validation(f"minimum decryption version must be 1..{primary.number}")
            return rec.evolve(min_decrypt_version=number)

        return self._change(SET_MIN_DECRYPTION_VERSION, key_id, fn)


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


def _tags(tags: Mapping[str, str] | Sequence[tuple[str, str]] | None
          ) -> tuple[tuple[str, str], ...]:
    if tags is None:
        return ()
    if not isinstance(tags, Mapping | list | tuple):
        raise E.InvalidTag("tags are a map or a list of (key, value) pairs")
    if not tags:
        return ()
    pairs = list(tags.items()) if isinstance(tags, Mapping) else list(tags)
    out = {}
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise E.InvalidTag("tags are (key, value) pairs")
        k, v = pair
        if not isinstance(k, str) or not isinstance(v, str) or not 1 <= len(k) <= 128 \
                or len(v) > 256 or k.startswith("aws:") or has_nul(k, v):
            raise E.InvalidTag("tag keys are 1..128 characters (not aws:...), values up to "
                               "256 (no NUL)")
        out[k] = v
    if len(out) > 50:
        raise E.LimitExceeded("a key has at most 50 tags")
    return tuple(sorted(out.items()))
