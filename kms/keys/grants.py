"""Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant, as in
AWS KMS, for the single account of an instance.

The :class:`~kms.service.Caller` methods of the same names are thin wrappers over the
functions here; the record is :class:`kms.model.Grant`, stored in the ``grants`` table.

Principals. Grants name principals by ARN, ``arn:aws:iam::<account>:user/<principal name>``
(:func:`kms.policy.principal_arn`; the account is the instance's, as in its key ARNs). A
grantee or retiring principal must be a principal of the caller's instance when the grant is
made; the grant holds its id, so a principal is matched by identity, not by name.

What a grant allows. Its grantee may run its operations on its key (see
:mod:`kms.policy` for how grants combine with policies: a grant allows, an explicit Deny of
any policy still refuses). Operations, per key: symmetric encryption keys Encrypt, Decrypt,
GenerateDataKey[WithoutPlaintext], GenerateDataKeyPair[WithoutPlaintext], ReEncryptFrom,
ReEncryptTo; asymmetric encryption keys Encrypt, Decrypt, ReEncryptFrom, ReEncryptTo,
GetPublicKey; signing keys Sign, Verify, GetPublicKey; HMAC keys GenerateMac, VerifyMac; and
on every key DescribeKey, CreateGrant and RetireGrant. Anything else is a ValidationException.

Constraints (symmetric encryption keys only, as in AWS): ``EncryptionContextSubset`` (the
request's context includes these pairs) and ``EncryptionContextEquals`` (it is exactly this);
keys and values compare exactly. Both may be given: both must hold. They do not apply to
DescribeKey and RetireGrant.

CreateGrant through a grant. A grantee whose grant includes CreateGrant may create grants on
the key whose operations are among its grant's and whose constraints are at least as strict
(every context they allow, its grant allows too).

Retiring and revoking. RetireGrant (by grant token, or by key and grant id) may be called by
the grant's retiring principal, by its grantee if the grant includes RetireGrant, or by a
caller whose policies allow kms:RetireGrant on the key. RevokeGrant needs kms:RevokeGrant on
the key. A caller who may not, or a grant that does not exist: NotFoundException either way.

Grant tokens. CreateGrant returns a token ``hsmpool-grant-1.<grant id>.<random>``. A request
that passes it in ``GrantTokens`` is authorised with that grant even before this process has
seen the commit (another server worker made the grant): the grant is read from the store at
once. A token authorises nothing by itself (the caller must be the grantee). A malformed token
is an InvalidGrantTokenException; a well-formed one of a grant that no longer exists is
ignored. At most 10 tokens per request.

Names. CreateGrant with a ``Name`` is idempotent: an identical grant (same key, name,
principals, operations, constraints) is returned instead of a new one.

Limits: 500 grants per grantee per key (LimitExceededException); ListGrants and
ListRetirableGrants pages of 1..100 (default 50).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from kms import errors as E
from kms.caller import Caller, ListPage, any_state, declare
from kms.model import Grant, KeyRecord, KeyState, KeyUsage
from kms.policy import PolicyError, account_root_arn, parse_principal_arn, principal_arn

CREATE_GRANT: Final = any_state("kms:CreateGrant", durable=True)
LIST_GRANTS: Final = any_state("kms:ListGrants")
LIST_RETIRABLE_GRANTS: Final = any_state("kms:ListRetirableGrants")
RETIRE_GRANT: Final = any_state("kms:RetireGrant", durable=True)
REVOKE_GRANT: Final = any_state("kms:RevokeGrant", durable=True)
declare(CREATE_GRANT, LIST_GRANTS, LIST_RETIRABLE_GRANTS, RETIRE_GRANT, REVOKE_GRANT)

PER_GRANTEE_LIMIT: Final = 500
MAX_TOKENS: Final = 10
TOKEN_PREFIX: Final = "hsmpool-grant-1."
_GRANT_ID_RE: Final = re.compile(r"[0-9a-f]{64}\Z")
_TOKEN_RE: Final = re.compile(r"hsmpool-grant-1\.([0-9a-f]{64})\.([A-Za-z0-9_-]{20,100})\Z")
_NAME_RE: Final = re.compile(r"[a-zA-Z0-9:/_-]{1,256}\Z")

_EVERY_KEY: Final = frozenset({"DescribeKey", "CreateGrant", "RetireGrant"})
_SYMMETRIC: Final = frozenset({
    "Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo"}) | _EVERY_KEY
_ASYMMETRIC_ENCRYPTION: Final = frozenset({
    "Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey"}) | _EVERY_KEY
_SIGNING: Final = frozenset({"Sign", "Verify", "GetPublicKey"}) | _EVERY_KEY
_MAC: Final = frozenset({"GenerateMac", "VerifyMac"}) | _EVERY_KEY
GRANT_OPERATIONS: Final = _SYMMETRIC | _ASYMMETRIC_ENCRYPTION | _SIGNING | _MAC


@dataclass(frozen=True, slots=True)
class NewGrant:
    grant_id: str
    grant_token: str


def operations_for(rec: KeyRecord) -> frozenset[str]:
    """The grant operations a key supports."""
    if rec.usage is KeyUsage.SIGN_VERIFY:
        return _SIGNING
    if rec.usage is KeyUsage.GENERATE_VERIFY_MAC:
        return _MAC
    return _SYMMETRIC if rec.info.symmetric else _ASYMMETRIC_ENCRYPTION


# --- tokens ------------------------------------------------------------------------------


def parse_tokens(tokens: object) -> tuple[tuple[str, str], ...]:
    """``GrantTokens`` as (grant id, token) pairs; ValidationException for the wrong type or
    too many, InvalidGrantTokenException for a token that is not one of ours."""
    if not tokens:
        return ()
    if not isinstance(tokens, list | tuple) or not all(isinstance(t, str) for t in tokens):
        raise E.Validation("GrantTokens must be a list of strings")
    if len(tokens) > MAX_TOKENS:
        raise E.Validation(f"at most {MAX_TOKENS} grant tokens")
    out = []
    for token in tokens:
        m = _TOKEN_RE.match(token)
        if m is None:
            raise E.InvalidGrantToken("the grant token is not valid")
        out.append((m.group(1), token))
    return tuple(out)


def _new_token(grant_id: str) -> str:
    return f"{TOKEN_PREFIX}{grant_id}.{secrets.token_urlsafe(32)}"


# --- arguments ---------------------------------------------------------------------------


def _principal(client: Caller, arn: object, what: str) -> tuple[str, str]:
    """(principal id, canonical ARN) of a principal ARN naming a principal of the caller's
    instance."""
    if not isinstance(arn, str) or not 1 <= len(arn) <= 256:
        raise E.Validation(f"{what} must be a principal ARN of at most 256 characters")
    try:
        account, name = parse_principal_arn(arn)
    except PolicyError as exc:
        raise E.InvalidArn(f"{what}: {exc}") from None
    if account != client._account or name is None:
        raise E.Validation(f"{what} must name a principal of this account "
                           f"(arn:aws:iam::{client._account}:user/<name>)")
    row = client._store.find_principal(client.instance_name, name)
    if row is None:
        raise E.Validation(f"{what}: there is no principal {name!r} in this account")
    return row.principal_id, principal_arn(account, name)


def _context_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise E.Validation(f"{what} must map strings to strings")
    return dict(value)


def _constraints(value: object) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(EncryptionContextSubset, EncryptionContextEquals) of a Constraints structure."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        raise E.Validation("Constraints must be a structure")
    unknown = set(value) - {"EncryptionContextSubset", "EncryptionContextEquals"}
    if unknown:
        raise E.Validation(f"unsupported grant constraints: {', '.join(sorted(unknown))}")
    subset = value.get("EncryptionContextSubset")
    equals = value.get("EncryptionContextEquals")
    return (None if subset is None else _context_map(subset, "EncryptionContextSubset"),
            None if equals is None else _context_map(equals, "EncryptionContextEquals"))


def _operations(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or not all(
            isinstance(op, str) for op in value):
        raise E.Validation("Operations must be a non-empty list of operation names")
    unknown = sorted(set(value) - GRANT_OPERATIONS)
    if unknown:
        raise E.Validation(f"not grant operations: {', '.join(unknown)}")
    return tuple(sorted(set(value)))


def _fits_key(rec: KeyRecord, ops: tuple[str, ...], constrained: bool) -> None:
    """The key supports the operations (and constraints): checked once the caller is known
    to be allowed to see the key."""
    unsupported = sorted(set(ops) - operations_for(rec))
    if unsupported:
        raise E.Validation(f"{rec.spec.value} {rec.usage.value} keys do not support "
                           f"{', '.join(unsupported)}")
    if constrained and not rec.info.symmetric:
        raise E.Validation("encryption context constraints need a symmetric encryption key")


def _name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise E.Validation("a grant Name is 1..256 of [a-zA-Z0-9:/_-]")
    return value


def _grant_id(value: object) -> str:
    if not isinstance(value, str) or not _GRANT_ID_RE.match(value):
        raise E.InvalidGrantId("the grant id is not valid")
    return value


def _limit(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise E.Validation("Limit must be 1..100")
    return value


def _marker(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _GRANT_ID_RE.match(value):
        raise E.InvalidMarker("the marker is not valid")
    return value


# --- operations --------------------------------------------------------------------------


def create_grant(client: Caller, key_id: str, grantee_principal: object,
                 operations: object, retiring_principal: object = None,
                 constraints: object = None, name: object = None,
                 grant_tokens: Sequence[str] = ()) -> NewGrant:
    tokens = parse_tokens(grant_tokens)
    ops = _operations(operations)
    subset, equals = _constraints(constraints)
    grant_name = _name(name)

    def through_grant(parent: Grant) -> bool:
        """CreateGrant allowed by a grant: no more operations, no looser constraints."""
        return ("kms:CreateGrant" in parent.actions and set(ops) <= set(parent.operations)
                and parent.implied_by(subset, equals))

    rec = client._key_for("kms:CreateGrant", key_id, tokens=tokens, grant_ok=through_grant)
    _fits_key(rec, ops, (subset, equals) != (None, None))
    if rec.state is KeyState.PENDING_DELETION:
        raise E.InvalidState(f"key {rec.arn} is pending deletion")
    grantee_id, grantee_arn = _principal(client, grantee_principal, "GranteePrincipal")
    retiring_id = retiring_arn = None
    if retiring_principal is not None:
        retiring_id, retiring_arn = _principal(client, retiring_principal,
                                               "RetiringPrincipal")
    grant_id = secrets.token_hex(32)
    kms = client.kms
    grant = Grant(grant_id=grant_id, key_id=rec.key_id, instance=client.instance_name,
                  name=grant_name, grantee_id=grantee_id, grantee_arn=grantee_arn,
                  retiring_id=retiring_id, retiring_arn=retiring_arn, operations=ops,
                  subset=subset, equals=equals, token=_new_token(grant_id),
                  issuing_account=account_root_arn(client._account), created=kms.now())
    stored = kms.store.create_grant(grant, per_grantee_limit=PER_GRANTEE_LIMIT)
    kms.forget_grants(rec.key_id)
    client._audit("kms:CreateGrant", rec, None, "ok",
                  extra={"grant_id": stored.grant_id, "grantee": grantee_arn})
    return NewGrant(stored.grant_id, stored.token)


def list_grants(client: Caller, key_id: str, limit: object = 50, marker: object = None,
                grant_id: object = None, grantee_principal: object = None) -> ListPage:
    lim = _limit(limit)
    after = _marker(marker)
    only_id = None if grant_id is None else _grant_id(grant_id)
    rec = client._key_for("kms:ListGrants", key_id)
    grantee_id: str | None = None
    if grantee_principal is not None:
        try:
            grantee_id = _principal(client, grantee_principal, "GranteePrincipal")[0]
        except E.Validation:
            grantee_id = "-"  # no such principal here: it has no grants
    rows = client.kms.store.list_grants(rec.key_id, after, lim + 1, grant_id=only_id,
                                        grantee_id=grantee_id)
    client._audit("kms:ListGrants", rec, None, "ok")
    return _page(rows, lim)


def list_retirable_grants(client: Caller, retiring_principal: object, limit: object = 50,
                          marker: object = None) -> ListPage:
    lim = _limit(limit)
    after = _marker(marker)
    if not client._allow("kms:ListRetirableGrants", ()):
        raise E.AccessDenied("not allowed to list retirable grants")
    try:
        retiring_id = _principal(client, retiring_principal, "RetiringPrincipal")[0]
    except E.Validation:
        retiring_id = "-"  # no such principal here: nothing is retirable by it
    rows = client.kms.store.list_retirable_grants(client.instance_name, retiring_id, after,
                                                  lim + 1)
    client._audit("kms:ListRetirableGrants", None, None, "ok")
    return _page(rows, lim)


def _page(rows: list[Grant], limit: int) -> ListPage:
    from kms.caller import ListPage

    more = len(rows) > limit
    rows = rows[:limit]
    return ListPage(tuple(rows), rows[-1].grant_id if more and rows else None)


def _find_grant(client: Caller, grant_token: object, key_id: object,
                grant_id: object) -> tuple[Grant, KeyRecord]:
    """The grant a RetireGrant names (by token, or by key and grant id) and its key;
    NotFound if there is none in the caller's instance."""
    if grant_token is not None:
        if not isinstance(grant_token, str):
            raise E.Validation("GrantToken must be a string")
        ((gid, token),) = parse_tokens([grant_token])
        if grant_id is not None and _grant_id(grant_id) != gid:
            raise E.Validation("GrantId does not match the grant token")
    elif key_id is not None and grant_id is not None:
        gid, token = _grant_id(grant_id), None
    else:
        raise E.Validation("give a GrantToken, or a KeyId and a GrantId")
    named = client._resolve(key_id)[0] if key_id is not None else None
    g = client.kms.store.get_grant(gid)
    rec = client.kms._key(g.key_id) if g is not None else None
    if g is None or rec is None or rec.instance != client.instance_name or rec.purged \
            or (named is not None and named.key_id != g.key_id) \
            or (token is not None and not secrets.compare_digest(g.token, token)):
        raise E.NotFound("the grant does not exist")
    return g, rec


def retire_grant(client: Caller, grant_token: object = None, key_id: object = None,
                 grant_id: object = None) -> None:
    g, rec = _find_grant(client, grant_token, key_id, grant_id)
    principal = client.principal
    if principal is not None:
        pid = principal.id
        may = (g.retiring_id == pid
               or (g.grantee_id == pid and "RetireGrant" in g.operations)
               or client._allow("kms:RetireGrant", client._names(rec), key=rec))
        if not may:
            raise E.NotFound("the grant does not exist")
    _delete(client, g, rec, "kms:RetireGrant")


def revoke_grant(client: Caller, key_id: str, grant_id: object) -> None:
    gid = _grant_id(grant_id)
    rec = client._key_for("kms:RevokeGrant", key_id)
    g = client.kms.store.get_grant(gid)
    if g is None or g.key_id != rec.key_id:
        raise E.NotFound("the grant does not exist")
    _delete(client, g, rec, "kms:RevokeGrant")


def _delete(client: Caller, g: Grant, rec: KeyRecord, action: str) -> None:
    kms = client.kms
    if not kms.store.delete_grant(g.grant_id, g.key_id):
        raise E.NotFound("the grant does not exist")
    kms.forget_grants(g.key_id)
    client._audit(action, rec, None, "ok", extra={"grant_id": g.grant_id})


class Grants(Caller):
    """Grants: the operations of the module docstring, as a caller's methods."""

    def create_grant(self, key_id: str, grantee_principal: str, operations: Sequence[str], *,
                     retiring_principal: str | None = None,
                     constraints: Mapping[str, Mapping[str, str]] | None = None,
                     name: str | None = None,
                     grant_tokens: Sequence[str] = ()) -> NewGrant:
        """Let ``grantee_principal`` (a principal ARN) run ``operations`` (AWS names:
        ``["Encrypt", "Decrypt"]``) on the key; returns the grant id and token."""
        return self._run("kms:CreateGrant", lambda: create_grant(
            self, key_id, grantee_principal, operations, retiring_principal, constraints,
            name, grant_tokens))

    def list_grants(self, key_id: str, limit: int = 50, marker: str | None = None, *,
                    grant_id: str | None = None,
                    grantee_principal: str | None = None) -> ListPage:
        """A key's grants (:class:`kms.model.Grant`), by grant id."""
        return self._run("kms:ListGrants", lambda: list_grants(
            self, key_id, limit, marker, grant_id, grantee_principal))

    def list_retirable_grants(self, retiring_principal: str, limit: int = 50,
                              marker: str | None = None) -> ListPage:
        """The instance's grants whose retiring principal is ``retiring_principal``."""
        return self._run("kms:ListRetirableGrants", lambda: list_retirable_grants(
            self, retiring_principal, limit, marker))

    def retire_grant(self, grant_token: str | None = None, key_id: str | None = None,
                     grant_id: str | None = None) -> None:
        """Delete a grant named by its token, or by key and grant id: its retiring
        principal, its grantee (if it allows RetireGrant), or a caller allowed
        kms:RetireGrant on the key may."""
        self._run("kms:RetireGrant", lambda: retire_grant(
            self, grant_token, key_id, grant_id))

    def revoke_grant(self, key_id: str, grant_id: str) -> None:
        """Delete a grant (kms:RevokeGrant on the key)."""
        self._run("kms:RevokeGrant", lambda: revoke_grant(self, key_id, grant_id))
