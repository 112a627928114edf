"""The secrets manager's operations, on the service's pipeline (:mod:`kms.caller`).

Every operation resolves the secret (name, full ARN, or ARN without its 6-character
suffix), authorises the caller on the secret ARN under the AWS Secrets Manager action
(``secretsmanager:GetSecretValue`` ...: the same policies as keys), runs, and audits under
that action with the secret's ARN (never a value); writes are acknowledged once both the
store transaction and the audit record are durable. A caller who may not use a secret, or
a secret of another instance, is told it does not exist.

Values are sealed per version under the secret's KMS key (:mod:`kms.secrets.envelope`):
a key the caller named is used with the caller's own permissions (``kms:GenerateDataKey``,
``kms:Decrypt``, audited as such); the instance's default secrets key
(``alias/aws/secretsmanager``, made on first use) by the service itself.

Stages (:mod:`kms.secrets.model`): writing a version with ``AWSCURRENT`` moves the label,
and ``AWSPREVIOUS`` follows it to the version that had it; every other label is on at most
one version. Deprecated versions (no label) beyond :data:`MAX_VERSIONS` are dropped.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets as _random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kms import errors as E
from kms.caller import any_state, declare, has_nul, int_in
from kms.keys.crypto import DecryptResult, KeyCrypto
from kms.model import AliasRecord, KeyState
from kms.secrets import envelope
from kms.secrets.model import CURRENT, PENDING, PREVIOUS, SecretRecord, SecretVersion
from kms.secrets.passwords import PasswordError, random_password
from kms.secrets.schedule import ScheduleError, parse_rules
from kms.store import Conflict

MAX_VALUE: Final = 65536
MAX_VERSIONS: Final = 100
DEFAULT_KEY_ALIAS: Final = "alias/aws/secretsmanager"
CAS_ATTEMPTS: Final = 8
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
_ARN_RE: Final = re.compile(r"^arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):(\d{12}):secret:(.+)$")
_SUFFIX_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

_ACTIONS: Final = ("CreateSecret", "GetSecretValue", "BatchGetSecretValue", "PutSecretValue",
                   "DescribeSecret", "ListSecrets", "ListSecretVersionIds", "UpdateSecret",
                   "UpdateSecretVersionStage", "RotateSecret", "CancelRotateSecret",
                   "DeleteSecret", "RestoreSecret", "GetRandomPassword", "TagResource",
                   "UntagResource", "GetResourcePolicy", "PutResourcePolicy",
                   "DeleteResourcePolicy")
_READS: Final = frozenset({"GetSecretValue", "BatchGetSecretValue", "DescribeSecret",
                           "ListSecrets", "ListSecretVersionIds", "GetRandomPassword",
                           "GetResourcePolicy"})
declare(*(any_state(f"secretsmanager:{a}", durable=a not in _READS) for a in _ACTIONS))


_ACTION_NAMES: Final = {a: f"secretsmanager:{a}" for a in _ACTIONS}


def action(name: str) -> str:
    """The policy action of an operation (``secretsmanager:<name>``)."""
    return _ACTION_NAMES[name]


@dataclass(frozen=True, slots=True)
class SecretValue:
    secret: SecretRecord
    version: SecretVersion
    value: bytes
    binary: bool

    @property
    def string(self) -> str | None:
        return None if self.binary else self.value.decode()


@dataclass(frozen=True, slots=True)
class SecretPage:
    items: tuple[tuple[SecretRecord, tuple[SecretVersion, ...]], ...]
    next_token: str | None


def _value(secret_string: object, secret_binary: object, *,
           required: bool) -> tuple[bytes, bool] | None:
    """(value, binary) from exactly one of SecretString and SecretBinary."""
    if secret_string is not None and secret_binary is not None:
        raise E.Validation("give either SecretString or SecretBinary, not both")
    if secret_string is None and secret_binary is None:
        if required:
            raise E.Validation("give SecretString or SecretBinary")
        return None
    if secret_string is not None:
        if not isinstance(secret_string, str):
            raise E.Validation("SecretString must be a string")
        try:
            data = secret_string.encode()
        except UnicodeEncodeError:
            raise E.Validation("SecretString must be valid Unicode") from None
        binary = False
    else:
        if not isinstance(secret_binary, bytes | bytearray | memoryview):
            raise E.Validation("SecretBinary must be bytes")
        data, binary = bytes(secret_binary), True
        if not data:
            raise E.Validation("SecretBinary must not be empty")
    if len(data) > MAX_VALUE:
        raise E.Validation(f"a secret value is at most {MAX_VALUE} bytes")
    return data, binary


def _token(token: object) -> str:
    if token is None:
        return str(uuid.uuid4())
    if not isinstance(token, str) or not 32 <= len(token) <= 64 \
            or not token.isascii() or not token.isprintable():
        raise E.Validation("ClientRequestToken must be 32..64 printable ASCII characters")
    return token


def _stages(stages: object, default: tuple[str, ...]) -> tuple[str, ...]:
    if stages is None:
        return default
    if not isinstance(stages, list | tuple) or not 1 <= len(stages) <= 20 or not all(
            isinstance(s, str) and 1 <= len(s) <= 256 and "," not in s and not has_nul(s)
            for s in stages):
        raise E.Validation("VersionStages must be 1..20 labels of 1..256 characters")
    return tuple(sorted(set(stages)))


def _check_tags(tags: object) -> tuple[tuple[str, str], ...]:
    if tags is None:
        return ()
    if not isinstance(tags, list | tuple):
        raise E.Validation("Tags must be a list of {Key, Value}")
    out: dict[str, str] = {}
    for t in tags:
        if isinstance(t, Mapping):
            k, v = t.get("Key"), t.get("Value", "")
        elif isinstance(t, tuple | list) and len(t) == 2:
            k, v = t
        else:
            raise E.Validation("Tags must be a list of {Key, Value}")
        if not isinstance(k, str) or not 1 <= len(k) <= 128 or not isinstance(v, str) \
                or len(v) > 256 or has_nul(k, v):
            raise E.Validation("a tag key is 1..128 characters, a value at most 256 (no NUL)")
        out[k] = v
    return tuple(sorted(out.items()))


def move_stages(versions: Sequence[SecretVersion], target: str,
                stages: Sequence[str]) -> list[SecretVersion]:
    """The versions whose labels change when ``stages`` go onto version ``target``: each
    label leaves the version that had it, and AWSPREVIOUS follows AWSCURRENT off the version
    that had it (target included when it is among ``versions``)."""
    staged = set(stages)
    had_current = next((v.version_id for v in versions if CURRENT in v.stages), None)
    moving_current = CURRENT in staged and had_current != target
    changed: list[SecretVersion] = []
    for v in versions:
        labels = set(v.stages)
        if v.version_id == target:
            labels |= staged
            if moving_current:
                labels.discard(PREVIOUS)
        else:
            labels -= staged
            if moving_current:
                if v.version_id == had_current:
                    labels.add(PREVIOUS)
                else:
                    labels.discard(PREVIOUS)
        if tuple(sorted(labels)) != v.stages:
            changed.append(v.with_stages(tuple(labels)))
    return changed


def _prune(versions: Sequence[SecretVersion], changed: Sequence[SecretVersion]) -> list[str]:
    """Deprecated versions (no label) to drop, oldest first, beyond MAX_VERSIONS."""
    now = {v.version_id: v for v in versions}
    now.update((v.version_id, v) for v in changed)
    if len(now) <= MAX_VERSIONS:
        return []
    deprecated = [v for v in now.values() if not v.stages]
    deprecated.sort(key=lambda v: (v.created, v.version_id))
    return [v.version_id for v in deprecated[:len(now) - MAX_VERSIONS]]


class Secrets(KeyCrypto):
    """The secrets manager's operations (see the module docstring). Method names and
    arguments follow AWS Secrets Manager's (snake_case); ``secret_id`` is a name, an ARN
    or an ARN without its suffix."""

    # --- pipeline --------------------------------------------------------------------

    def _secret_arn(self, name: str) -> str:
        suffix = "".join(_random.choice(_SUFFIX_CHARS) for _ in range(6))
        return (f"arn:aws:secretsmanager:{self.kms.settings.region}:{self._account}:"
                f"secret:{name}-{suffix}")

    def _secret_insert(self, rec: SecretRecord, versions: Sequence[SecretVersion]) -> None:
        self._store.insert_secret(rec, versions)
        self.kms.secret_cache.clear()

    def _secret_update(self, old: SecretRecord, new: SecretRecord,
                       versions: Sequence[SecretVersion] = (),
                       drop_versions: Sequence[str] = ()) -> None:
        try:
            self._store.update_secret(old, new, versions, drop_versions)
        finally:  # a conflict too: what we remember is stale
            self.kms.secret_cache.clear()

    def _secret_purge(self, old: SecretRecord) -> None:
        try:
            self._store.purge_secret(old)
        finally:
            self.kms.secret_cache.clear()

    def _secret_find(self, secret_id: object) -> SecretRecord:
        if not isinstance(secret_id, str) or not 1 <= len(secret_id) <= 2048:
            raise E.Validation("SecretId must be a name or an ARN")
        if has_nul(secret_id):  # no name or ARN holds one (nor can the store look it up)
            raise E.NotFound("Secrets Manager can't find the specified secret.")
        self.kms._fresh()
        cache = self.kms.secret_cache
        hit = cache.record(self.instance_name, secret_id)
        if hit is not None:
            return hit
        generation = cache.generation
        rec = self._secret_lookup(secret_id)
        cache.keep_record(self.instance_name, secret_id, rec, generation)
        return rec

    def _secret_lookup(self, secret_id: str) -> SecretRecord:
        store, inst = self._store, self.instance_name
        rec: SecretRecord | None
        if secret_id.startswith("arn:"):
            m = _ARN_RE.fullmatch(secret_id)
            if m is None or m.group(1) != self.kms.settings.region \
                    or m.group(2) != self._account:
                raise E.NotFound("Secrets Manager can't find the specified secret.")
            rec = store.find_secret(inst, arn=secret_id) or store.find_secret(
                inst, name=m.group(3))
        else:
            rec = store.find_secret(inst, name=secret_id)
        if rec is None:
            raise E.NotFound("Secrets Manager can't find the specified secret.")
        return rec

    def _secret_for(self, name: str, secret_id: object) -> SecretRecord:
        """Resolve and authorise (NotFound for a caller who may not)."""
        rec = self._secret_find(secret_id)
        if self.principal is not None and not self._allow(action(name), (rec.arn,)):
            raise E.NotFound("Secrets Manager can't find the specified secret.")
        return rec

    def _secret_live(self, rec: SecretRecord) -> None:
        if rec.deletion_date is not None:
            raise E.InvalidState("You can't perform this operation on the secret because it "
                                 "was marked for deletion.")

    def _audit_secret(self, name: str, rec: SecretRecord | None, result: str = "ok",
                      version: str | None = None) -> None:
        extra = {"secret": rec.arn} if rec is not None else {}
        if version is not None:
            extra["secret_version"] = version
        self._audit(action(name), None, None, result, extra=extra)

    def _secret_op(self, name: str, fn: Callable[[], Any]) -> Any:
        return self._run(action(name), fn)

    def _secret_change(self, rec: SecretRecord, fn: Callable[[SecretRecord], SecretRecord]
                ) -> SecretRecord:
        """Compare-and-swap a secret's record (its versions untouched), re-reading on a
        conflict."""
        for _ in range(CAS_ATTEMPTS):
            new = fn(rec)
            try:
                self._secret_update(rec, new)
                return new
            except Conflict:
                rec = self._secret_reread(rec)
        raise E.Internal("the secret is changing too fast; retry")

    def _secret_reread(self, rec: SecretRecord) -> SecretRecord:
        """The stored record after a lost compare-and-swap (NotFound if it went)."""
        fresh = self._store.get_secret(rec.secret_id)
        if fresh is None:
            raise E.NotFound("Secrets Manager can't find the specified secret.")
        return fresh

    def _secret_edit(self, name: str, secret_id: str,
                     fn: Callable[[SecretRecord], SecretRecord],
                     check: Callable[[], object] | None = None) -> SecretRecord:
        """An operation that only changes a secret's record: check its arguments, resolve
        and authorise, compare-and-swap ``fn``'s change, audit (a failure too)."""

        def body() -> SecretRecord:
            if check is not None:
                check()
            out = self._secret_change(self._secret_for(name, secret_id), fn)
            self._audit_secret(name, out)
            return out

        result: SecretRecord = self._secret_op(name, body)
        return result

    # --- keys --------------------------------------------------------------------------

    def _secret_keys(self, rec: SecretRecord) -> tuple[Any, str]:
        """Who runs the key operations of ``rec``'s envelopes, and the key id."""
        if rec.kms_key_id is None:
            return self._service_client(), self._default_secret_key()
        return self, rec.kms_key_id

    def _service_client(self) -> Any:
        """The service itself, for the default key (made once per caller)."""
        client = self.__dict__.get("_secrets_service_client")
        if client is None:
            client = self.kms.client(self.instance_name, None, self.source_ip,
                                     audit_name=f"secretsmanager:{self._principal_name}")
            self.__dict__["_secrets_service_client"] = client
        return client

    def _default_secret_key(self) -> str:
        cache = self.kms.default_secret_keys
        key_id = cache.get(self.instance_name)
        if key_id is not None:
            return key_id
        alias = self._store.get_alias(self.instance_name, DEFAULT_KEY_ALIAS)
        if alias is None:
            admin = self._service_client()
            rec = admin.create_key(description="The default key of the secrets manager")
            now = self.kms.now()
            try:
                self._store.put_alias(AliasRecord(self.instance_name, DEFAULT_KEY_ALIAS,
                                                  rec.key_id, now, now), create=True)
            except E.AlreadyExists:  # another process made it first: ours is not needed
                admin.schedule_key_deletion(rec.key_id, 7)
            alias = self._store.get_alias(self.instance_name, DEFAULT_KEY_ALIAS)
            if alias is None:
                raise E.Internal("the default secrets key could not be made")
        cache[self.instance_name] = alias.key_id
        return alias.key_id

    def _seal_value(self, rec: SecretRecord, version_id: str, value: bytes) -> bytes:
        keys, key_id = self._secret_keys(rec)
        try:
            return envelope.seal(keys, key_id, rec.arn, version_id, value)
        except E.NotFound:
            raise E.Validation(f"the KMS key {key_id!r} does not exist or may not be "
                               "used") from None

    def _reveal_value(self, rec: SecretRecord, v: SecretVersion) -> bytes:
        if rec.kms_key_id is not None:
            return envelope.open_(self, rec.arn, v.version_id, v.envelope)
        # The default key is the service's own: its data key is opened without a second
        # audit record (the secret operation's record names the secret and version), and
        # remembered for a while (kms.secrets.cache.DataKeyCache) while that key is enabled.
        kms = self.kms
        key = kms._key(self._default_secret_key())
        if key is None or key.state is not KeyState.ENABLED:
            return envelope.open_(_ServiceDecrypt(self._service_client()), rec.arn,
                                  v.version_id, v.envelope)  # fails with the key's reason
        now = time.monotonic()
        known = kms.data_keys.get(rec.secret_id, v.version_id, now)
        value, data_key = envelope.open_with_key(
            None if known is not None else _ServiceDecrypt(self._service_client()),
            rec.arn, v.version_id, v.envelope, known)
        if known is None:
            kms.data_keys.put(rec.secret_id, v.version_id, data_key, now)
        return value

    def _secret_key_check(self, kms_key_id: object) -> str | None:
        if kms_key_id is None or kms_key_id == "":
            return None
        if not isinstance(kms_key_id, str) or len(kms_key_id) > 2048:
            raise E.Validation("KmsKeyId must be a key id, key ARN, alias name or alias ARN")
        if kms_key_id == DEFAULT_KEY_ALIAS:
            return None
        rec = self._key_for("kms:GenerateDataKey", kms_key_id)
        if not rec.info.symmetric:
            raise E.Validation("a secret's KMS key must be a symmetric encryption key")
        return kms_key_id

    # --- versions ----------------------------------------------------------------------

    def _add_secret_version(self, rec: SecretRecord, token: str, data: bytes, binary: bool,
                     stages: tuple[str, ...]) -> tuple[SecretRecord, SecretVersion]:
        """Write a new version (idempotent by ``token``); returns the record and version."""
        sealed: bytes | None = None  # made once: a lost compare-and-swap does not re-seal
        for _ in range(CAS_ATTEMPTS):
            versions = self._store.secret_versions(rec.secret_id)
            same = next((v for v in versions if v.version_id == token), None)
            if same is not None:
                old = self._reveal_value(rec, same)
                if same.binary == binary and hmac.compare_digest(old, data):
                    return rec, same  # a retried request: already done
                raise E.AlreadyExists("a version with this ClientRequestToken exists with "
                                      "another value")
            if sealed is None:
                sealed = self._seal_value(rec, token, data)
            v = SecretVersion(rec.secret_id, token, self.kms.now(), stages, sealed, binary)
            changed = [c for c in move_stages(versions, token, stages)
                       if c.version_id != token]
            new = rec.evolve(last_changed=self.kms.now())
            try:
                self._secret_update(rec, new, [*changed, v],
                                          _prune([*versions, v], changed))
                return new, v
            except Conflict:
                rec = self._secret_reread(rec)
        raise E.Internal("the secret is changing too fast; retry")

    def _secret_version(self, rec: SecretRecord, version_id: object, stage: object
                 ) -> SecretVersion:
        if version_id is not None and not isinstance(version_id, str):
            raise E.Validation("VersionId must be a string")
        if stage is not None and not isinstance(stage, str):
            raise E.Validation("VersionStage must be a string")
        if version_id is not None:
            # No version id holds a NUL (they are printable ASCII), nor can the store look
            # one up.
            v = None if has_nul(version_id) else self._store.get_secret_version(
                rec.secret_id, version_id)
            if v is None or (stage is not None and stage not in v.stages):
                raise E.NotFound("Secrets Manager can't find the specified secret value for "
                                 "VersionId" + (" and VersionStage" if stage else ""))
            return v
        label = CURRENT if stage is None else stage
        cache = self.kms.secret_cache
        versions = cache.versions(rec.secret_id)
        if versions is None:
            generation = cache.generation
            versions = tuple(self._store.secret_versions(rec.secret_id))
            cache.keep_versions(rec.secret_id, versions, generation)
        for v in versions:
            if label in v.stages:
                return v
        raise E.NotFound(f"Secrets Manager can't find the specified secret value for staging "
                         f"label: {label}")

    # --- operations --------------------------------------------------------------------

    def create_secret(self, name: str, *, secret_string: str | None = None,
                      secret_binary: bytes | None = None, description: str = "",
                      kms_key_id: str | None = None,
                      tags: Sequence[Any] | None = None,
                      client_request_token: str | None = None
                      ) -> tuple[SecretRecord, SecretVersion | None]:
        def body() -> tuple[SecretRecord, SecretVersion | None]:
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise E.Validation("a secret name is 1..512 of A-Z a-z 0-9 /_+=.@-")
            if not isinstance(description, str) or len(description) > 2048 \
                    or has_nul(description):
                raise E.Validation("Description must be at most 2048 characters (no NUL)")
            # Authorised on the secret's ARN without its random suffix (what a policy's
            # "secret:app/*" pattern matches; "*" matches it too).
            partial = (f"arn:aws:secretsmanager:{self.kms.settings.region}:{self._account}:"
                       f"secret:{name}")
            if self.principal is not None and not self._allow(action("CreateSecret"),
                                                              (partial,)):
                raise E.AccessDenied("not allowed to create this secret")
            value = _value(secret_string, secret_binary, required=False)
            token = _token(client_request_token)
            key = self._secret_key_check(kms_key_id)
            tag_pairs = _check_tags(tags)
            existing = self._store.find_secret(self.instance_name, name=name)
            if existing is not None:
                return self._create_retried(existing, token, value)
            now = self.kms.now()
            rec = SecretRecord(uuid.uuid4().hex, self.instance_name, name,
                               self._secret_arn(name), now, 1, description=description,
                               kms_key_id=key, tags=tag_pairs, last_changed=now,
                               rotator=dict(tag_pairs).get("hsmpool:rotator"))
            versions: list[SecretVersion] = []
            if value is not None:
                versions.append(SecretVersion(rec.secret_id, token, now, (CURRENT,),
                                              self._seal_value(rec, token, value[0]), value[1]))
            try:
                self._secret_insert(rec, versions)
            except E.AlreadyExists:
                found = self._store.find_secret(self.instance_name, name=name)
                if found is None:
                    raise
                return self._create_retried(found, token, value)
            self._audit_secret("CreateSecret", rec, version=token if versions else None)
            return rec, versions[0] if versions else None

        result: tuple[SecretRecord, SecretVersion | None] = self._secret_op("CreateSecret", body)
        return result

    def _create_retried(self, rec: SecretRecord, token: str, value: tuple[bytes, bool] | None
                        ) -> tuple[SecretRecord, SecretVersion | None]:
        """CreateSecret of a name that exists: the same request again (same token, same
        value) answers as the first did; anything else is AlreadyExists."""
        taken = E.AlreadyExists(f"the secret {rec.name} already exists")
        if rec.deletion_date is not None:
            raise E.InvalidState(f"the secret {rec.name} is scheduled for deletion")
        v = self._store.get_secret_version(rec.secret_id, token)
        if v is None or value is None or (self.principal is not None and not self._allow(
                action("CreateSecret"), (rec.arn,))):
            raise taken
        old = self._reveal_value(rec, v)
        if v.binary != value[1] or not hmac.compare_digest(old, value[0]):
            raise taken
        return rec, v

    def get_secret_value(self, secret_id: str, version_id: str | None = None,
                         version_stage: str | None = None) -> SecretValue:
        def body() -> SecretValue:
            rec = self._secret_for("GetSecretValue", secret_id)
            self._secret_live(rec)
            v = self._secret_version(rec, version_id, version_stage)
            value = self._reveal_value(rec, v)
            self._audit_secret("GetSecretValue", rec, version=v.version_id)
            return SecretValue(rec, v, value, v.binary)

        result: SecretValue = self._secret_op("GetSecretValue", body)
        return result

    def put_secret_value(self, secret_id: str, *, client_request_token: str | None = None,
                         secret_string: str | None = None, secret_binary: bytes | None = None,
                         version_stages: Sequence[str] | None = None
                         ) -> tuple[SecretRecord, SecretVersion]:
        def body() -> tuple[SecretRecord, SecretVersion]:
            rec = self._secret_for("PutSecretValue", secret_id)
            self._secret_live(rec)
            value = _value(secret_string, secret_binary, required=True)
            assert value is not None
            new, v = self._add_secret_version(rec, _token(client_request_token), value[0], value[1],
                                       _stages(version_stages, (CURRENT,)))
            self._audit_secret("PutSecretValue", new, version=v.version_id)
            return new, v

        result: tuple[SecretRecord, SecretVersion] = self._secret_op("PutSecretValue", body)
        return result

    def describe_secret(self, secret_id: str
                        ) -> tuple[SecretRecord, tuple[SecretVersion, ...]]:
        def body() -> tuple[SecretRecord, tuple[SecretVersion, ...]]:
            rec = self._secret_for("DescribeSecret", secret_id)
            versions = tuple(v for v in self._store.secret_versions(rec.secret_id) if v.stages)
            self._audit_secret("DescribeSecret", rec)
            return rec, versions

        result: tuple[SecretRecord, tuple[SecretVersion, ...]] = self._secret_op("DescribeSecret",
                                                                          body)
        return result

    def list_secrets(self, max_results: int | None = None, next_token: str | None = None,
                     filters: Sequence[Mapping[str, Any]] | None = None,
                     include_planned_deletion: bool = False,
                     sort_order: str = "asc") -> SecretPage:
        def body() -> SecretPage:
            if self.principal is not None and not self._allow(action("ListSecrets"), ()):
                raise E.AccessDenied("not allowed to list secrets")
            limit = _max_results(max_results, 100)
            after = _decode_token(next_token)
            match = _filter(filters)
            if sort_order not in ("asc", "desc"):
                raise E.Validation("SortOrder must be asc or desc")
            out: list[tuple[SecretRecord, tuple[SecretVersion, ...]]] = []
            more = False
            cursor = after
            while not more:
                rows = self._store.list_secrets(self.instance_name, cursor, 200)
                if not rows:
                    break
                for rec in rows:
                    cursor = rec.name
                    if rec.deletion_date is not None and not include_planned_deletion:
                        continue
                    if not match(rec):
                        continue
                    if len(out) == limit:
                        more = True
                        break
                    out.append((rec, tuple(v for v in self._store.secret_versions(
                        rec.secret_id) if v.stages)))
            if sort_order == "desc":
                out.reverse()
            self._audit_secret("ListSecrets", None)
            return SecretPage(tuple(out), _encode_token(out[-1][0].name)
                              if more and out else None)

        result: SecretPage = self._secret_op("ListSecrets", body)
        return result

    def list_secret_version_ids(self, secret_id: str, max_results: int | None = None,
                                next_token: str | None = None,
                                include_deprecated: bool = False
                                ) -> tuple[SecretRecord, tuple[SecretVersion, ...],
                                           str | None]:
        def body() -> tuple[SecretRecord, tuple[SecretVersion, ...], str | None]:
            rec = self._secret_for("ListSecretVersionIds", secret_id)
            limit = _max_results(max_results, 100)
            start = int(_decode_token(next_token) or "0") if next_token else 0
            versions = [v for v in self._store.secret_versions(rec.secret_id)
                        if include_deprecated or v.stages]
            page = tuple(versions[start:start + limit])
            nxt = _encode_token(str(start + limit)) if start + limit < len(versions) else None
            self._audit_secret("ListSecretVersionIds", rec)
            return rec, page, nxt

        result: tuple[SecretRecord, tuple[SecretVersion, ...], str | None] = self._secret_op(
            "ListSecretVersionIds", body)
        return result

    def update_secret(self, secret_id: str, *, client_request_token: str | None = None,
                      description: str | None = None, kms_key_id: str | None = None,
                      secret_string: str | None = None, secret_binary: bytes | None = None
                      ) -> tuple[SecretRecord, SecretVersion | None]:
        def body() -> tuple[SecretRecord, SecretVersion | None]:
            rec = self._secret_for("UpdateSecret", secret_id)
            self._secret_live(rec)
            if description is not None and (not isinstance(description, str)
                                            or len(description) > 2048
                                            or has_nul(description)):
                raise E.Validation("Description must be at most 2048 characters (no NUL)")
            value = _value(secret_string, secret_binary, required=False)
            changes: dict[str, object] = {}
            if description is not None:
                changes["description"] = description
            if kms_key_id is not None:
                changes["kms_key_id"] = self._secret_key_check(kms_key_id)
            if changes:
                rec = self._secret_change(rec, lambda r: r.evolve(**changes,
                                                           last_changed=self.kms.now()))
            v = None
            if value is not None:
                rec, v = self._add_secret_version(rec, _token(client_request_token), value[0],
                                           value[1], (CURRENT,))
            self._audit_secret("UpdateSecret", rec,
                               version=v.version_id if v is not None else None)
            return rec, v

        result: tuple[SecretRecord, SecretVersion | None] = self._secret_op("UpdateSecret", body)
        return result

    def update_secret_version_stage(self, secret_id: str, version_stage: str, *,
                                    remove_from_version_id: str | None = None,
                                    move_to_version_id: str | None = None) -> SecretRecord:
        def body() -> SecretRecord:
            if not isinstance(version_stage, str) or not 1 <= len(version_stage) <= 256 \
                    or "," in version_stage:
                raise E.Validation("VersionStage must be 1..256 characters")
            for x in (remove_from_version_id, move_to_version_id):
                if x is not None and not isinstance(x, str):
                    raise E.Validation("version ids are strings")
            rec = self._secret_for("UpdateSecretVersionStage", secret_id)
            for _ in range(CAS_ATTEMPTS):
                versions = self._store.secret_versions(rec.secret_id)
                by_id = {v.version_id: v for v in versions}
                holder = next((v for v in versions if version_stage in v.stages), None)
                if move_to_version_id is not None and move_to_version_id not in by_id:
                    raise E.NotFound(f"version {move_to_version_id} does not exist")
                if remove_from_version_id is not None and (
                        holder is None or holder.version_id != remove_from_version_id):
                    raise E.Validation(f"the label {version_stage} is not on version "
                                       f"{remove_from_version_id}")
                if holder is not None and move_to_version_id is not None \
                        and holder.version_id != move_to_version_id \
                        and remove_from_version_id is None:
                    raise E.Validation(f"the label {version_stage} is on version "
                                       f"{holder.version_id}: give RemoveFromVersionId")
                if move_to_version_id is None:
                    if version_stage == CURRENT:
                        raise E.Validation("AWSCURRENT can only be moved to another version")
                    changed = [holder.with_stages(tuple(s for s in holder.stages
                                                        if s != version_stage))] \
                        if holder is not None else []
                else:
                    changed = move_stages(versions, move_to_version_id, (version_stage,))
                new = rec.evolve(last_changed=self.kms.now())
                try:
                    self._secret_update(rec, new, changed)
                except Conflict:
                    rec = self._secret_reread(rec)
                    continue
                self._audit_secret("UpdateSecretVersionStage", new)
                return new
            raise E.Internal("the secret is changing too fast; retry")

        result: SecretRecord = self._secret_op("UpdateSecretVersionStage", body)
        return result

    def delete_secret(self, secret_id: str, *, recovery_window_in_days: int | None = None,
                      force_delete_without_recovery: bool = False) -> SecretRecord:
        def body() -> SecretRecord:
            if recovery_window_in_days is not None and force_delete_without_recovery:
                raise E.Validation("give RecoveryWindowInDays or ForceDeleteWithoutRecovery, "
                                   "not both")
            days = 30 if recovery_window_in_days is None else recovery_window_in_days
            if not int_in(days, 7, 30):
                raise E.Validation("RecoveryWindowInDays must be 7..30")
            rec = self._secret_for("DeleteSecret", secret_id)
            now = self.kms.now()
            if force_delete_without_recovery:
                for _ in range(CAS_ATTEMPTS):
                    try:
                        self._secret_purge(rec)
                        break
                    except Conflict:
                        rec = self._secret_find(secret_id)
                else:
                    raise E.Internal("the secret is changing too fast; retry")
                out = rec.evolve(deletion_date=now)
            else:
                if rec.deletion_date is not None:
                    raise E.InvalidState("the secret is already scheduled for deletion")
                due = now + days * 86400.0
                out = self._secret_change(rec, lambda r: r.evolve(deletion_date=due))
            self._audit_secret("DeleteSecret", out)
            return out

        result: SecretRecord = self._secret_op("DeleteSecret", body)
        return result

    def restore_secret(self, secret_id: str) -> SecretRecord:
        return self._secret_edit("RestoreSecret", secret_id,
                                 lambda r: r.evolve(deletion_date=None))

    def get_random_password(self, password_length: int = 32, *,
                            exclude_characters: str = "", exclude_numbers: bool = False,
                            exclude_punctuation: bool = False,
                            exclude_uppercase: bool = False, exclude_lowercase: bool = False,
                            include_space: bool = False,
                            require_each_included_type: bool = True) -> str:
        def body() -> str:
            if self.principal is not None and not self._allow(action("GetRandomPassword"),
                                                              ()):
                raise E.AccessDenied("not allowed to make random passwords")
            for flag in (exclude_numbers, exclude_punctuation, exclude_uppercase,
                         exclude_lowercase, include_space, require_each_included_type):
                if not isinstance(flag, bool):
                    raise E.Validation("the Exclude*/Include*/Require* fields are booleans")
            try:
                pw = random_password(
                    password_length, exclude_characters=exclude_characters,
                    exclude_numbers=exclude_numbers, exclude_punctuation=exclude_punctuation,
                    exclude_uppercase=exclude_uppercase, exclude_lowercase=exclude_lowercase,
                    include_space=include_space,
                    require_each_included_type=require_each_included_type)
            except PasswordError as exc:
                raise E.Validation(str(exc)) from None
            self._audit_secret("GetRandomPassword", None)
            return pw

        result: str = self._secret_op("GetRandomPassword", body)
        return result

    def tag_secret(self, secret_id: str, tags: Sequence[Any]) -> SecretRecord:
        def fn(r: SecretRecord) -> SecretRecord:
            merged = {**dict(r.tags), **dict(_check_tags(tags))}
            if len(merged) > 50:
                raise E.LimitExceeded("a secret has at most 50 tags")
            rotator = merged.get("hsmpool:rotator", r.rotator)
            return r.evolve(tags=tuple(sorted(merged.items())), rotator=rotator)

        return self._secret_edit("TagResource", secret_id, fn, lambda: _check_tags(tags))

    def untag_secret(self, secret_id: str, tag_keys: Sequence[str]) -> SecretRecord:
        def check() -> None:
            if not isinstance(tag_keys, list | tuple) or not all(
                    isinstance(k, str) for k in tag_keys):
                raise E.Validation("TagKeys must be a list of strings")

        def fn(r: SecretRecord) -> SecretRecord:
            drop = set(tag_keys)
            return r.evolve(tags=tuple(t for t in r.tags if t[0] not in drop))

        return self._secret_edit("UntagResource", secret_id, fn, check)

    def get_secret_policy(self, secret_id: str) -> SecretRecord:
        def body() -> SecretRecord:
            rec = self._secret_for("GetResourcePolicy", secret_id)
            self._audit_secret("GetResourcePolicy", rec)
            return rec

        result: SecretRecord = self._secret_op("GetResourcePolicy", body)
        return result

    def put_secret_policy(self, secret_id: str, policy: str) -> SecretRecord:
        return self._secret_edit("PutResourcePolicy", secret_id,
                                 lambda r: r.evolve(policy=policy),
                                 lambda: _check_policy(policy))

    def delete_secret_policy(self, secret_id: str) -> SecretRecord:
        return self._secret_edit("DeleteResourcePolicy", secret_id,
                                 lambda r: r.evolve(policy=None))

    # --- rotation (the steps: kms.secrets.rotation) ----------------------------------

    def rotate_secret(self, secret_id: str, *, client_request_token: str | None = None,
                      rotation_lambda_arn: str | None = None,
                      rotation_rules: Mapping[str, Any] | None = None,
                      rotate_immediately: bool = True) -> tuple[SecretRecord, str | None]:
        from kms.secrets.rotation import rotator_named, run_rotation

        def body() -> tuple[SecretRecord, str | None]:
            rec = self._secret_for("RotateSecret", secret_id)
            self._secret_live(rec)
            if not isinstance(rotate_immediately, bool):
                raise E.Validation("RotateImmediately must be a boolean")
            rotator = rec.rotator
            if rotation_lambda_arn is not None:
                rotator = rotator_named(rotation_lambda_arn).name
            if rotator is None:
                raise E.Validation("no rotator: give RotationLambdaARN "
                                   "arn:hsmpool:rotator:<name> or tag hsmpool:rotator")
            rotator_named(rotator)
            changes: dict[str, object] = {"rotator": rotator}
            if rotation_rules is not None:
                try:
                    rules = parse_rules(rotation_rules)
                except ScheduleError as exc:
                    raise E.Validation(str(exc)) from None
                changes.update(rotation_enabled=True,
                               rotation_rules=json.dumps(rules.to_wire(), sort_keys=True),
                               next_rotation=self.kms.now() + rules.interval)
            elif rec.rotation_rules is not None:
                changes["rotation_enabled"] = True
            rec = self._secret_change(rec, lambda r: r.evolve(**changes))
            version = None
            if rotate_immediately:
                rec, version = run_rotation(self, rec, _token(client_request_token))
            self._audit_secret("RotateSecret", rec, version=version)
            return rec, version

        result: tuple[SecretRecord, str | None] = self._secret_op("RotateSecret", body)
        return result

    def cancel_rotate_secret(self, secret_id: str) -> tuple[SecretRecord, str | None]:
        def body() -> tuple[SecretRecord, str | None]:
            rec = self._secret_for("CancelRotateSecret", secret_id)
            self._secret_live(rec)
            pending = next((v for v in self._store.secret_versions(rec.secret_id)
                            if PENDING in v.stages), None)
            new = rec.evolve(rotation_enabled=False, next_rotation=None)
            changed = [pending.with_stages(tuple(s for s in pending.stages if s != PENDING))] \
                if pending is not None else []
            self._secret_update(rec, new, changed)
            self._audit_secret("CancelRotateSecret", new)
            return new, pending.version_id if pending is not None else None

        result: tuple[SecretRecord, str | None] = self._secret_op("CancelRotateSecret", body)
        return result


# --- helpers ----------------------------------------------------------------------------


class _ServiceDecrypt:
    """Decrypt of a data key under the default secrets key, as the service (no principal,
    so no policy decision) and without an audit record of its own."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def decrypt(self, ciphertext_blob: bytes,
                encryption_context: Mapping[str, str] | None = None) -> DecryptResult:
        rec, v, plaintext = self.service._open(ciphertext_blob, encryption_context,
                                               "kms:Decrypt", None)
        return DecryptResult(plaintext, rec.arn, "SYMMETRIC_DEFAULT", v.version_id)


def _check_policy(policy: object) -> None:
    if not isinstance(policy, str) or not 1 <= len(policy) <= 20480:
        raise E.MalformedPolicyDocument("ResourcePolicy must be a JSON document of at most "
                                        "20480 characters")
    try:
        doc = json.loads(policy)
    except ValueError:
        raise E.MalformedPolicyDocument("the policy is not valid JSON") from None
    if not isinstance(doc, dict) or "Statement" not in doc:
        raise E.MalformedPolicyDocument("a policy document has a Statement")


def _max_results(value: object, cap: int) -> int:
    if value is None:
        return cap
    if not int_in(value, 1, cap):
        raise E.Validation(f"MaxResults must be 1..{cap}")
    return value


def _encode_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_token(token: object) -> str:
    if token is None:
        return ""
    if not isinstance(token, str) or len(token) > 4096:
        raise E.InvalidMarker("the NextToken is not valid")
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        raise E.InvalidMarker("the NextToken is not valid") from None


_FILTER_KEYS: Final = frozenset({"description", "name", "tag-key", "tag-value", "all",
                                 "primary-region", "owning-service"})


def _filter(filters: object) -> Callable[[SecretRecord], bool]:
    """ListSecrets' filters: each key's values match by prefix (a leading ``!`` negates);
    all keys must match."""
    if filters is None:
        return lambda rec: True
    if not isinstance(filters, list | tuple) or len(filters) > 10:
        raise E.Validation("Filters must be a list of at most 10 {Key, Values}")
    tests: list[Callable[[SecretRecord], bool]] = []
    for f in filters:
        key = f.get("Key") if isinstance(f, Mapping) else None
        if not isinstance(key, str) or key not in _FILTER_KEYS:  # (a list is unhashable)
            raise E.Validation(f"filter keys are {sorted(_FILTER_KEYS)}")
        values = f.get("Values")
        if not isinstance(values, list | tuple) or not values or not all(
                isinstance(v, str) and 1 <= len(v) <= 512 for v in values):
            raise E.Validation("a filter has 1..10 Values of 1..512 characters")

        def fields(rec: SecretRecord, key: str = key) -> list[str]:
            if key == "name":
                return [rec.name]
            if key == "description":
                return [rec.description]
            if key == "tag-key":
                return [k for k, _ in rec.tags]
            if key == "tag-value":
                return [v for _, v in rec.tags]
            if key == "all":
                return [rec.name, rec.description, *(x for t in rec.tags for x in t)]
            return []

        def one(rec: SecretRecord, values: Sequence[str] = tuple(values),
                fields: Callable[[SecretRecord], list[str]] = fields) -> bool:
            got = [x.lower() for x in fields(rec)]
            for v in values:
                neg = v.startswith("!")
                want = (v[1:] if neg else v).lower()
                hit = any(g.startswith(want) for g in got)
                if hit != neg:
                    return True
            return False

        tests.append(one)
    return lambda rec: all(t(rec) for t in tests)
