"""Access control inside the KMS service: policies, principals, and the allow/deny decision.

The full reference (rules, patterns, conditions, what is refused): ``docs/policy.md``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

__all__ = [
    "ACTIONS",
    "ADMIN",
    "Authorizer",
    "KeyPolicy",
    "KeyStatement",
    "Policy",
    "PolicyError",
    "Principal",
    "Request",
    "Statement",
    "account_root_arn",
    "identity_effect",
    "is_allowed",
    "key_decision",
    "parse_principal_arn",
    "principal_arn",
]


class PolicyError(ValueError):
    """A policy document or statement is malformed or uses something unsupported."""


ACTIONS: Final[frozenset[str]] = frozenset(
    {
        "kms:CreateKey",
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPair",
        "kms:GenerateDataKeyPairWithoutPlaintext",
        "kms:Sign",
        "kms:Verify",
        "kms:GetPublicKey",
        "kms:GenerateMac",
        "kms:VerifyMac",
        "kms:GenerateRandom",
        "kms:DescribeKey",
        "kms:ListKeys",
        "kms:ListAliases",
        "kms:CreateAlias",
        "kms:UpdateAlias",
        "kms:DeleteAlias",
        "kms:EnableKey",
        "kms:DisableKey",
        "kms:ScheduleKeyDeletion",
        "kms:CancelKeyDeletion",
        "kms:EnableKeyRotation",
        "kms:DisableKeyRotation",
        "kms:GetKeyRotationStatus",
        "kms:RotateKeyOnDemand",
        "kms:ListKeyRotations",
        "kms:GetParametersForImport",
        "kms:ImportKeyMaterial",
        "kms:DeleteImportedKeyMaterial",
        "kms:TagResource",
        "kms:UntagResource",
        "kms:ListResourceTags",
        "kms:UpdateKeyDescription",
        "kms:GetKeyPolicy",
        "kms:PutKeyPolicy",
        "kms:ListKeyPolicies",
        "kms:CreateGrant",
        "kms:ListGrants",
        "kms:ListRetirableGrants",
        "kms:RetireGrant",
        "kms:RevokeGrant",
        # the secrets manager (kms/secrets), as AWS Secrets Manager names its actions
        "secretsmanager:CreateSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:BatchGetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:DescribeSecret",
        "secretsmanager:ListSecrets",
        "secretsmanager:ListSecretVersionIds",
        "secretsmanager:UpdateSecret",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:RotateSecret",
        "secretsmanager:CancelRotateSecret",
        "secretsmanager:DeleteSecret",
        "secretsmanager:RestoreSecret",
        "secretsmanager:GetRandomPassword",
        "secretsmanager:TagResource",
        "secretsmanager:UntagResource",
        "secretsmanager:GetResourcePolicy",
        "secretsmanager:PutResourcePolicy",
        "secretsmanager:DeleteResourcePolicy",
    }
)
"""The action names a policy can grant (AWS KMS's and AWS Secrets Manager's), in their
canonical spelling."""

_CANONICAL: Final[Mapping[str, str]] = MappingProxyType({a.lower(): a for a in ACTIONS})
_VERSIONS: Final = ("2012-10-17", "2008-10-17")
_EFFECTS: Final = ("Allow", "Deny")
_EC_PREFIX: Final = "kms:encryptioncontext:"
_SOURCE_IP: Final = "aws:sourceip"
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# --------------------------------------------------------------------------- wildcard patterns


def _glob_regex(pattern: str) -> str:
    """Regex source (no anchors) for an IAM wildcard pattern: ``*`` any run, ``?`` one char.

    Segments between stars have a fixed length, so matching each middle segment at its leftmost
    position is optimal; atomic groups commit to that choice, which keeps matching polynomial
    (no exponential backtracking on patterns with many stars).
    """
    segments = [
        "".join("." if c == "?" else re.escape(c) for c in seg) for seg in pattern.split("*")
    ]
    if len(segments) == 1:
        return segments[0]
    first, *middle, last = segments
    body = first + "".join(f"(?>.*?{seg})" for seg in middle if seg)
    return body + ".*" + last


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def _action_set(patterns: tuple[str, ...]) -> frozenset[str]:
    """The canonical action names matched by the patterns; PolicyError on a useless pattern."""
    matched: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise PolicyError(f"Action {pattern!r} must be a non-empty string")
        rx = re.compile(_glob_regex(pattern) + r"\Z", re.IGNORECASE | re.DOTALL)
        hits = {a for a in ACTIONS if rx.match(a)}
        if not hits:
            close = difflib.get_close_matches(pattern.lower(), _CANONICAL, n=1, cutoff=0.75)
            hint = f" (did you mean {_CANONICAL[close[0]]!r}?)" if close else ""
            raise PolicyError(f"Action {pattern!r} matches no KMS or Secrets Manager "
                              f"action{hint}")
        matched |= hits
    return frozenset(matched)


_ARN_FIELDS: Final = r"arn:[^:]*:kms:[^:]*:[^:]*:"


def _check_arn_pattern(pattern: str) -> None:
    parts = pattern.split(":", 5)
    wild = _has_wildcard(pattern)
    if len(parts) == 6 and parts[2] == "secretsmanager":
        # arn:<partition>:secretsmanager:<region>:<account>:secret:<name>-<6 characters>
        if not (parts[5].startswith("secret:") or (wild and parts[5].startswith("*"))):
            raise PolicyError(f"Resource {pattern!r} is not a secret ARN "
                              "(arn:<partition>:secretsmanager:<region>:<account>:secret:...)")
        return
    if not wild:
        ok = (
            len(parts) == 6
            and parts[2] == "kms"
            and all(parts[i] for i in (1, 3, 4))
            and "/" in parts[5]
        )
        if not ok:
            raise PolicyError(
                f"Resource {pattern!r} is not a KMS ARN "
                "(arn:<partition>:kms:<region>:<account>:key/<id> or ...:alias/<name>)"
            )
    elif len(parts) == 6 and not _has_wildcard(parts[2]) and parts[2] != "kms":
        raise PolicyError(f"Resource {pattern!r} names service {parts[2]!r}, not 'kms' "
                          "or 'secretsmanager'")
    # The text after the last colon of a KMS ARN is 'key/...' or 'alias/...'.
    tail = pattern.rsplit(":", 1)[-1]
    literal = re.split(r"[*?]", tail, maxsplit=1)[0]
    if "/" in literal or not wild:
        kind = literal.split("/", 1)[0]
        if kind not in ("key", "alias"):
            raise PolicyError(
                f"Resource {pattern!r}: resource type {kind!r} is neither 'key' nor 'alias'"
            )


def _resource_regex(pattern: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise PolicyError(f"Resource {pattern!r} must be a non-empty string")
    if pattern.startswith("arn:"):
        _check_arn_pattern(pattern)
        return _glob_regex(pattern)
    if ":" in pattern and pattern.strip("*"):
        raise PolicyError(
            f"Resource {pattern!r} is neither '*', an ARN ('arn:...'), 'alias/<name>', "
            "'key/<id>' nor a key id"
        )
    if pattern.strip("*") == "":
        return ".*"
    if pattern.startswith(("alias/", "key/")):
        return _ARN_FIELDS + _glob_regex(pattern)
    if "/" in pattern.split("*", 1)[0].split("?", 1)[0]:
        raise PolicyError(
            f"Resource {pattern!r}: a short form must be 'alias/<name>', 'key/<id>' or a key id"
        )
    return _ARN_FIELDS + "key/" + _glob_regex(pattern)


def _networks(cidrs: tuple[str, ...], what: str) -> tuple[_Network, ...]:
    if not isinstance(cidrs, tuple):
        raise PolicyError(f"{what} must be a tuple of CIDR strings, not {type(cidrs).__name__}")
    nets: list[_Network] = []
    for cidr in cidrs:
        if not isinstance(cidr, str):
            raise PolicyError(f"{what}: {cidr!r} is not a string")
        try:
            nets.append(ipaddress.ip_network(cidr, strict=True))
        except ValueError as exc:
            raise PolicyError(f"{what}: {cidr!r} is not a valid CIDR ({exc})") from None
    return tuple(nets)


def _pack_ip(ip: str) -> bytes:
    """The 4 or 16 bytes of a textual IPv4 or IPv6 address; ValueError if it is neither.

    ``inet_pton`` is about 30 times cheaper than :func:`ipaddress.ip_address`; the address
    object is built only when a statement with an IP condition needs it.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, ip)
        except OSError:
            pass
    raise ValueError(f"Request.source_ip {ip!r} is not an IPv4 or IPv6 address")


def _unpack_ip(packed: bytes) -> _Address:
    if len(packed) == 4:
        return ipaddress.IPv4Address(packed)
    addr = ipaddress.IPv6Address(packed)
    return addr.ipv4_mapped or addr


def _str_tuple(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, tuple):
        raise PolicyError(f"{what} must be a tuple of strings, not {type(value).__name__}")
    if not value:
        raise PolicyError(f"{what} must not be empty")
    for item in value:
        if not isinstance(item, str):
            raise PolicyError(f"{what}: {item!r} is not a string")
    return value


# --------------------------------------------------------------------------------- documents


@dataclass(frozen=True, slots=True)
class Statement:
    """One Allow or Deny rule.  See docs/policy.md for the pattern and condition rules.

    ``encryption_context`` maps an encryption-context key to the values it may have (any of
    them); it is the ``StringEquals`` / ``kms:EncryptionContext:<key>`` condition.
    """

    effect: Literal["Allow", "Deny"]
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    source_cidrs: tuple[str, ...] = ()
    not_source_cidrs: tuple[str, ...] = ()
    encryption_context: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: _EMPTY, hash=False
    )
    sid: str | None = None

    _actions: frozenset[str] = field(init=False, repr=False, compare=False)
    _resources: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _all_resources: bool = field(init=False, repr=False, compare=False)
    _nets: tuple[_Network, ...] = field(init=False, repr=False, compare=False)
    _not_nets: tuple[_Network, ...] = field(init=False, repr=False, compare=False)
    _context: tuple[tuple[str, frozenset[str]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.effect not in _EFFECTS:
            raise PolicyError(f"Effect {self.effect!r} must be 'Allow' or 'Deny'")
        if self.sid is not None and not isinstance(self.sid, str):
            raise PolicyError(f"Sid {self.sid!r} must be a string")
        actions = _action_set(_str_tuple(self.actions, "Action"))
        regexes = [_resource_regex(r) for r in _str_tuple(self.resources, "Resource")]
        unique = list(dict.fromkeys(regexes))
        rx = re.compile("|".join(f"(?:{r})\\Z" for r in unique), re.DOTALL)
        all_resources = any(r.strip("*") == "" for r in self.resources)
        nets = _networks(self.source_cidrs, "IpAddress aws:SourceIp")
        not_nets = _networks(self.not_source_cidrs, "NotIpAddress aws:SourceIp")
        if not isinstance(self.encryption_context, Mapping):
            raise PolicyError("encryption_context must be a mapping of key -> tuple of values")
        context: dict[str, tuple[str, ...]] = {}
        lowered: dict[str, frozenset[str]] = {}
        for key, values in self.encryption_context.items():
            if not isinstance(key, str) or not key:
                raise PolicyError(f"encryption context key {key!r} must be a non-empty string")
            what = f"StringEquals kms:EncryptionContext:{key}"
            values = _str_tuple(values, what)
            if key.lower() in lowered:
                raise PolicyError(f"{what}: the key is given twice (keys are case-insensitive)")
            context[key] = values
            lowered[key.lower()] = frozenset(values)
        set_ = object.__setattr__
        set_(self, "encryption_context", MappingProxyType(context) if context else _EMPTY)
        set_(self, "_actions", actions)
        set_(self, "_resources", rx)
        set_(self, "_all_resources", all_resources)
        set_(self, "_nets", nets)
        set_(self, "_not_nets", not_nets)
        set_(self, "_context", tuple(lowered.items()))

    def applies(self, request: Request) -> bool:
        """Whether this statement covers the request (action, resources and conditions)."""
        if request.action not in self._actions:
            return False
        if request.resources:
            match = self._resources.match
            if not any(match(name) for name in request.resources):
                return False
        elif not self._all_resources:
            return False
        deny = self.effect == "Deny"
        if self._nets or self._not_nets:
            addr = request.address
            if addr is None:
                if not deny:
                    return False
            else:
                if self._nets and not any(addr in net for net in self._nets):
                    return False
                if any(addr in net for net in self._not_nets):
                    return False
        if self._context:
            ctx = request._context_lower
            for key, allowed in self._context:
                values = ctx.get(key)
                if values is None:
                    return False
                hit = (any if deny else all)(v in allowed for v in values)
                if not hit:
                    return False
        return True

    def to_obj(self) -> dict[str, Any]:
        """The AWS JSON form of the statement (lists for every multi-valued element)."""
        obj: dict[str, Any] = {}
        if self.sid is not None:
            obj["Sid"] = self.sid
        obj["Effect"] = self.effect
        obj["Action"] = list(self.actions)
        obj["Resource"] = list(self.resources)
        cond: dict[str, Any] = {}
        if self.source_cidrs:
            cond["IpAddress"] = {"aws:SourceIp": list(self.source_cidrs)}
        if self.not_source_cidrs:
            cond["NotIpAddress"] = {"aws:SourceIp": list(self.not_source_cidrs)}
        if self.encryption_context:
            cond["StringEquals"] = {
                f"kms:EncryptionContext:{k}": list(v) for k, v in self.encryption_context.items()
            }
        if cond:
            obj["Condition"] = cond
        return obj


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PolicyError(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def _strings(value: object, what: str) -> tuple[str, ...]:
    """A JSON string-or-list-of-strings element as a tuple."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        if not value:
            raise PolicyError(f"{what} must not be an empty list")
        for item in value:
            if not isinstance(item, str):
                raise PolicyError(f"{what}: {item!r} is not a string")
        return tuple(value)
    raise PolicyError(f"{what} must be a string or a list of strings, not {type(value).__name__}")


def _parse_condition(cond: object) -> dict[str, Any]:
    if not isinstance(cond, dict):
        raise PolicyError(f"Condition must be an object, not {type(cond).__name__}")
    out: dict[str, Any] = {}
    for op, body in cond.items():
        if not isinstance(body, dict) or not body:
            raise PolicyError(f"Condition {op}: must be a non-empty object of key -> values")
        if op in ("IpAddress", "NotIpAddress"):
            for key, values in body.items():
                if not isinstance(key, str) or key.lower() != _SOURCE_IP:
                    raise PolicyError(
                        f"Condition {op}: unsupported condition key {key!r} "
                        "(only aws:SourceIp is supported)"
                    )
                field_name = "source_cidrs" if op == "IpAddress" else "not_source_cidrs"
                out[field_name] = _strings(values, f"Condition {op} {key}")
        elif op == "StringEquals":
            context: dict[str, tuple[str, ...]] = {}
            for key, values in body.items():
                if (
                    not isinstance(key, str)
                    or not key.lower().startswith(_EC_PREFIX)
                    or len(key) == len(_EC_PREFIX)
                ):
                    raise PolicyError(
                        f"Condition StringEquals: unsupported condition key {key!r} "
                        "(only kms:EncryptionContext:<key> is supported)"
                    )
                context[key[len(_EC_PREFIX):]] = _strings(values, f"Condition {op} {key}")
            out["encryption_context"] = context
        else:
            raise PolicyError(
                f"Condition operator {op!r} is not supported "
                "(supported: IpAddress, NotIpAddress, StringEquals)"
            )
    return out


_STATEMENT_KEYS: Final = frozenset({"Sid", "Effect", "Action", "Resource", "Condition"})
_REFUSED_KEYS: Final = {
    "Principal": "policies here are attached to a principal; Principal is not supported",
    "NotPrincipal": "NotPrincipal is not supported",
    "NotAction": "NotAction is not supported; list the actions to allow or deny",
    "NotResource": "NotResource is not supported; list the resources",
}


def _parse_statement(obj: object) -> Statement:
    if not isinstance(obj, dict):
        raise PolicyError(f"must be an object, not {type(obj).__name__}")
    for key in obj:
        if key in _REFUSED_KEYS:
            raise PolicyError(_REFUSED_KEYS[key])
        if key not in _STATEMENT_KEYS:
            raise PolicyError(f"unknown element {key!r}")
    for key in ("Effect", "Action", "Resource"):
        if key not in obj:
            raise PolicyError(f"missing {key}")
    effect = obj["Effect"]
    if effect not in _EFFECTS:
        raise PolicyError(f"Effect {effect!r} must be 'Allow' or 'Deny'")
    sid = obj.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise PolicyError(f"Sid {sid!r} must be a string")
    extra = _parse_condition(obj["Condition"]) if "Condition" in obj else {}
    return Statement(
        effect=effect,
        actions=_strings(obj["Action"], "Action"),
        resources=_strings(obj["Resource"], "Resource"),
        sid=sid,
        **extra,
    )


def _load_document(document: str | bytes | Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The Version and the raw statements of a policy document (JSON text or decoded)."""
    if isinstance(document, str | bytes | bytearray):
        try:
            obj: Any = json.loads(document, object_pairs_hook=_no_duplicates)
        except PolicyError as exc:
            raise PolicyError(f"policy document: {exc}") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise PolicyError(f"policy document is not valid JSON: {exc}") from None
    else:
        obj = document
    if not isinstance(obj, Mapping):
        raise PolicyError(f"policy document must be a JSON object, not {type(obj).__name__}")
    for key in obj:
        if key not in ("Version", "Id", "Statement"):
            raise PolicyError(f"policy document: unknown element {key!r}")
    version = obj.get("Version", "2012-10-17")
    if not isinstance(version, str) or version not in _VERSIONS:
        raise PolicyError(f"Version {version!r} must be one of {', '.join(_VERSIONS)}")
    if "Statement" not in obj:
        raise PolicyError("policy document: missing Statement")
    raw = obj["Statement"]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise PolicyError(
            f"Statement must be an object or a list of objects, not {type(raw).__name__}"
        )
    return version, raw


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy document: statements, evaluated together with every other policy of a principal."""

    statements: tuple[Statement, ...]
    version: str = "2012-10-17"

    _uses_context: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.statements, tuple):
            raise PolicyError(
                f"statements must be a tuple of Statement, not {type(self.statements).__name__}"
            )
        for st in self.statements:
            if not isinstance(st, Statement):
                raise PolicyError(f"statements: {st!r} is not a Statement")
        if self.version not in _VERSIONS:
            raise PolicyError(f"Version {self.version!r} must be one of {', '.join(_VERSIONS)}")
        uses = any(st.encryption_context for st in self.statements)
        object.__setattr__(self, "_uses_context", uses)

    @classmethod
    def from_json(cls, document: str | bytes | Mapping[str, Any]) -> Policy:
        """Parse an AWS-style policy document (JSON text, or the already-decoded object)."""
        version, raw = _load_document(document)
        statements = []
        for i, item in enumerate(raw):
            try:
                statements.append(_parse_statement(item))
            except PolicyError as exc:
                raise PolicyError(f"Statement[{i}]: {exc}") from None
        return cls(statements=tuple(statements), version=version)

    def to_obj(self) -> dict[str, Any]:
        return {"Version": self.version, "Statement": [st.to_obj() for st in self.statements]}

    def to_json(self) -> str:
        return json.dumps(self.to_obj(), indent=2)


ADMIN: Final[Policy] = Policy((Statement("Allow", ("kms:*", "secretsmanager:*"), ("*",),
                                         sid="Admin"),))
"""Everything on everything: what the embedded caller (no principal) gets."""


# ------------------------------------------------------------------------ principals, requests


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller: an opaque id, a display name, its instance, and its policies."""

    id: str
    name: str
    instance: str
    policies: tuple[Policy, ...]

    _statements: tuple[Statement, ...] = field(init=False, repr=False, compare=False)
    _uses_context: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("id", "name", "instance"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Principal.{name} must be a non-empty string, not {value!r}")
        if not isinstance(self.policies, tuple) or not all(
            isinstance(p, Policy) for p in self.policies
        ):
            raise ValueError("Principal.policies must be a tuple of Policy")
        statements = tuple(st for p in self.policies for st in p.statements)
        object.__setattr__(self, "_statements", statements)
        object.__setattr__(self, "_uses_context", any(p._uses_context for p in self.policies))


@dataclass(frozen=True, slots=True)
class Request:
    """What a caller asks to do.

    ``action`` must be one of :data:`ACTIONS` (any case; it is stored in canonical spelling).
    ``resources`` holds every name of the target: its key ARN and the ARNs of its aliases (see
    "Resource names of a key"); ``()`` for account-level actions.  ``source_ip`` is the caller's
    address when known.  Invalid values raise ``ValueError``.
    """

    action: str
    resources: tuple[str, ...]
    instance: str
    source_ip: str | None = None
    encryption_context: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    _packed: bytes | None = field(init=False, repr=False, compare=False)
    _address: _Address | None = field(init=False, repr=False, compare=False)
    _context_lower: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _cache_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        action = _CANONICAL.get(self.action.lower()) if isinstance(self.action, str) else None
        if action is None:
            raise ValueError(f"Request.action {self.action!r} is not a known KMS action")
        set_(self, "action", action)
        if not isinstance(self.resources, tuple):
            raise ValueError("Request.resources must be a tuple of strings")
        for name in self.resources:
            if not isinstance(name, str) or not name or "\0" in name:
                raise ValueError(f"Request.resources: {name!r} is not a resource name")
        if not isinstance(self.instance, str) or not self.instance or "\0" in self.instance:
            raise ValueError(f"Request.instance {self.instance!r} must be a non-empty string")
        set_(self, "_address", None)
        if self.source_ip is None:
            set_(self, "_packed", None)
        else:
            if not isinstance(self.source_ip, str):
                raise ValueError(f"Request.source_ip {self.source_ip!r} must be a string")
            set_(self, "_packed", _pack_ip(self.source_ip))
        ctx = self.encryption_context
        if ctx:
            lowered: dict[str, list[str]] = {}
            for key, value in ctx.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise ValueError("Request.encryption_context must map str to str")
                lowered.setdefault(key.lower(), []).append(value)
            set_(self, "encryption_context", MappingProxyType(dict(ctx)))
            set_(self, "_context_lower", {k: tuple(v) for k, v in lowered.items()})
        else:
            set_(self, "encryption_context", _EMPTY)
            set_(self, "_context_lower", _EMPTY)
        # One string, so that its hash is computed once and cached by the str object.  NUL
        # cannot occur in the parts; a missing source IP is '' (never a valid address).
        set_(
            self,
            "_cache_key",
            "\0".join((action, self.instance, self.source_ip or "", *self.resources)),
        )


    @property
    def address(self) -> _Address | None:
        """``source_ip`` as an address object (IPv4-mapped IPv6 as IPv4), or None."""
        addr = self._address
        if addr is None and self._packed is not None:
            addr = _unpack_ip(self._packed)
            object.__setattr__(self, "_address", addr)
        return addr


# ------------------------------------------------------------------- principal ARNs, key policies

_PRINCIPAL_ARN_RE: Final = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):(?:(root)|user/(.+))\Z",
                                      re.DOTALL)
_ACCOUNT_RE: Final = re.compile(r"\d{12}\Z")


def principal_arn(account: str, name: str) -> str:
    """The ARN naming principal ``name`` of the instance whose account is ``account``."""
    return f"arn:aws:iam::{account}:user/{name}"


def account_root_arn(account: str) -> str:
    """The account principal: in a key policy, "defer to the principals' own policies"."""
    return f"arn:aws:iam::{account}:root"


def parse_principal_arn(text: object) -> tuple[str, str | None]:
    """``(account, principal name)`` of a principal ARN, ``(account, None)`` for the account
    root; PolicyError for anything else (roles, services, other formats)."""
    m = _PRINCIPAL_ARN_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise PolicyError(
            f"principal {text!r} is neither arn:aws:iam::<account>:user/<name> nor "
            "arn:aws:iam::<account>:root"
        )
    account, root, name = m.groups()
    return account, (None if root else name)


@dataclass(frozen=True, slots=True)
class KeyStatement:
    """A key policy statement: whom it is about (``principals``, as written: ``"*"``, an
    account id, an account root ARN or a principal ARN) and the rule itself."""

    principals: tuple[str, ...]
    statement: Statement

    _anyone: bool = field(init=False, repr=False, compare=False)
    _accounts: frozenset[str] = field(init=False, repr=False, compare=False)
    _users: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.statement, Statement):
            raise PolicyError("KeyStatement.statement must be a Statement")
        anyone = False
        accounts: set[str] = set()
        users: set[tuple[str, str]] = set()
        for p in _str_tuple(self.principals, "Principal"):
            if p == "*":
                anyone = True
            elif _ACCOUNT_RE.match(p):
                accounts.add(p)
            else:
                account, name = parse_principal_arn(p)
                if name is None:
                    accounts.add(account)
                else:
                    users.add((account, name))
        set_ = object.__setattr__
        set_(self, "_anyone", anyone)
        set_(self, "_accounts", frozenset(accounts))
        set_(self, "_users", frozenset(users))

    def about(self, account: str, name: str) -> Literal["direct", "account"] | None:
        """How the statement names principal ``name`` of ``account``: itself or everyone
        (``"direct"``), its account (``"account"``), or not at all."""
        if self._anyone or (account, name) in self._users:
            return "direct"
        return "account" if account in self._accounts else None


KeyPolicyEffect = Literal["Deny", "Allow", "Identity"]


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """A key policy document: statements with a ``Principal`` (see docs/policy.md)."""

    statements: tuple[KeyStatement, ...]
    version: str = "2012-10-17"

    def __post_init__(self) -> None:
        if not isinstance(self.statements, tuple) or not all(
            isinstance(st, KeyStatement) for st in self.statements
        ):
            raise PolicyError("KeyPolicy.statements must be a tuple of KeyStatement")
        if self.version not in _VERSIONS:
            raise PolicyError(f"Version {self.version!r} must be one of {', '.join(_VERSIONS)}")

    @classmethod
    def from_json(cls, document: str | bytes | Mapping[str, Any]) -> KeyPolicy:
        """Parse a key policy document: a policy document whose every statement names its
        principals (``Principal``: ``"*"`` or ``{"AWS": <principal or list>}``)."""
        version, raw = _load_document(document)
        statements = []
        for i, item in enumerate(raw):
            try:
                statements.append(_parse_key_statement(item))
            except PolicyError as exc:
                raise PolicyError(f"Statement[{i}]: {exc}") from None
        return cls(statements=tuple(statements), version=version)

    def evaluate(self, request: Request, account: str, name: str) -> KeyPolicyEffect | None:
        """For principal ``name`` of ``account``: ``"Deny"`` (an applicable Deny naming it,
        everyone or its account), ``"Allow"`` (an applicable Allow naming it or everyone),
        ``"Identity"`` (only an Allow naming its account: its own policies decide), or None."""
        result: KeyPolicyEffect | None = None
        for kst in self.statements:
            about = kst.about(account, name)
            if about is None or not kst.statement.applies(request):
                continue
            if kst.statement.effect == "Deny":
                return "Deny"
            if about == "direct":
                result = "Allow"
            elif result is None:
                result = "Identity"
        return result


def _principals(value: object) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or not value:
        raise PolicyError('Principal must be "*" or an object such as {"AWS": "<ARN>"}')
    for key in value:
        if key != "AWS":
            raise PolicyError(f"Principal {key!r} is not supported (only AWS principals)")
    return _strings(value["AWS"], "Principal AWS")


def _parse_key_statement(obj: object) -> KeyStatement:
    if not isinstance(obj, dict):
        raise PolicyError(f"must be an object, not {type(obj).__name__}")
    if "NotPrincipal" in obj:
        raise PolicyError(_REFUSED_KEYS["NotPrincipal"])
    if "Principal" not in obj:
        raise PolicyError("missing Principal (every key policy statement names principals)")
    rest = {k: v for k, v in obj.items() if k != "Principal"}
    return KeyStatement(_principals(obj["Principal"]), _parse_statement(rest))


def key_decision(identity: Effect | None, key_policy: KeyPolicy | None, request: Request,
                 account: str, name: str) -> Effect | None:
    """The decision on a key from the principal's own policies (``identity``, from
    :func:`identity_effect`) and the key's policy (None: the default key policy, which defers
    to the principal's policies): ``"Deny"``, ``"Allow"``, or None (not allowed by policy; a
    grant may still allow it)."""
    if identity == "Deny":
        return "Deny"
    if key_policy is None:
        return identity
    kp = key_policy.evaluate(request, account, name)
    if kp == "Deny":
        return "Deny"
    if kp == "Allow" or (kp == "Identity" and identity == "Allow"):
        return "Allow"
    return None


# ----------------------------------------------------------------------------------- decision


Effect = Literal["Allow", "Deny"]


def identity_effect(principal: Principal, request: Request) -> Effect | None:
    """What the principal's own policies say: ``"Deny"`` (an applicable Deny, or another
    instance), ``"Allow"`` (an applicable Allow and no Deny), or None (nothing applies)."""
    if principal.instance != request.instance:
        return "Deny"
    allowed = False
    for st in principal._statements:
        if st.applies(request):
            if st.effect == "Deny":
                return "Deny"
            allowed = True
    return "Allow" if allowed else None


def is_allowed(principal: Principal, request: Request) -> bool:
    """The decision: same instance, no applicable Deny, at least one applicable Allow."""
    return identity_effect(principal, request) == "Allow"


_MISSING: Final = object()


class Authorizer:
    """:func:`identity_effect` with a bounded decision cache (cleared whole when full).

    The cached path is one tuple and one dict lookup.  Thread-safe under the GIL: dict reads and
    writes are atomic, :meth:`invalidate` swaps in a fresh dict, and a decision computed across
    an invalidation is not stored.
    """

    __slots__ = ("_cache", "_generation", "_max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._generation = 0
        self._cache: dict[tuple[str, str], Effect | None] = {}

    def check(self, principal: Principal, request: Request) -> bool:
        return self.effect(principal, request) == "Allow"

    def effect(self, principal: Principal, request: Request) -> Effect | None:
        """:func:`identity_effect`, cached."""
        if principal._uses_context:
            return identity_effect(principal, request)
        key = (principal.id, request._cache_key)
        cache = self._cache
        hit = cache.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        generation = self._generation
        decision = identity_effect(principal, request)
        if generation == self._generation:
            if len(cache) >= self._max_entries:
                cache.clear()
            cache[key] = decision
        return decision

    def invalidate(self) -> None:
        """Forget every decision; call it whenever any principal's policies change."""
        self._generation += 1
        self._cache = {}

    @property
    def generation(self) -> int:
        """How many times :meth:`invalidate` has been called."""
        return self._generation

    def __len__(self) -> int:
        return len(self._cache)
