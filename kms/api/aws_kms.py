"""The AWS KMS JSON 1.1 protocol: request and response shapes for every operation.

Each handler takes a :class:`~kms.KmsClient` and the decoded JSON body and returns the
response body. Blobs are base64 in JSON; dates are epoch seconds; key ids in responses are
ARNs where AWS returns ARNs. ``GrantTokens`` are passed to the service wherever AWS takes
them (a token makes its grant effective at once; see :mod:`kms.keys.grants`). Any malformed field
raises :class:`~kms.errors.Validation`. Each handler makes one service call, so a request is
authorised and audited once, under its own action.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, overload

import orjson

from kms import errors as E
from kms.api.auth import Authenticator
from kms.api.pipeline import Answer, Call, Request
from kms.api.sigv4 import AuthError
from kms.model import Grant, KeyRecord, KeyState, Origin
from kms.service import KmsClient

log = logging.getLogger("hsmpool.server")

Body = Mapping[str, Any]
#: The service's error kinds as AWS KMS names them on the wire, with the HTTP status.
WIRE_ERRORS: Final[dict[str, tuple[str, int]]] = {
    "NotFound": ("NotFoundException", 400),
    "Disabled": ("DisabledException", 400),
    "InvalidState": ("KMSInvalidStateException", 400),
    "InvalidCiphertext": ("InvalidCiphertextException", 400),
    "IncorrectKey": ("IncorrectKeyException", 400),
    "InvalidKeyUsage": ("InvalidKeyUsageException", 400),
    "InvalidSignature": ("KMSInvalidSignatureException", 400),
    "InvalidMac": ("KMSInvalidMacException", 400),
    "AlreadyExists": ("AlreadyExistsException", 400),
    "InvalidAliasName": ("InvalidAliasNameException", 400),
    "InvalidArn": ("InvalidArnException", 400),
    "InvalidMarker": ("InvalidMarkerException", 400),
    "UnsupportedOperation": ("UnsupportedOperationException", 400),
    "LimitExceeded": ("LimitExceededException", 400),
    "InvalidImportToken": ("InvalidImportTokenException", 400),
    "ExpiredImportToken": ("ExpiredImportTokenException", 400),
    "InvalidGrantToken": ("InvalidGrantTokenException", 400),
    "InvalidGrantId": ("InvalidGrantIdException", 400),
    "IncorrectKeyMaterial": ("IncorrectKeyMaterialException", 400),
    "InvalidTag": ("TagException", 400),
    "MalformedPolicyDocument": ("MalformedPolicyDocumentException", 400),
    "Validation": ("ValidationException", 400),
    "AccessDenied": ("AccessDeniedException", 400),
    "KeyUnavailable": ("KeyUnavailableException", 500),
    "DependencyTimeout": ("DependencyTimeoutException", 503),
    "Internal": ("KMSInternalException", 500),
}

Handler = Callable[[KmsClient, Body], dict[str, Any]]


# --- field helpers -----------------------------------------------------------------------


def _str(body: Body, name: str, required: bool = True, default: str | None = None
         ) -> str | None:
    v = body.get(name)
    if v is None:
        if required:
            raise E.Validation(f"1 validation error detected: '{name}' must not be null")
        return default
    if not isinstance(v, str):
        raise E.Validation(f"'{name}' must be a string")
    return v


def _req(body: Body, name: str) -> str:
    """A required string field."""
    v = body.get(name)
    if v is None:
        raise E.Validation(f"1 validation error detected: '{name}' must not be null")
    if not isinstance(v, str):
        raise E.Validation(f"'{name}' must be a string")
    return v


@overload
def _int(body: Body, name: str, default: int) -> int: ...
@overload
def _int(body: Body, name: str, default: None = None) -> int | None: ...
def _int(body: Body, name: str, default: int | None = None) -> int | None:
    """An integer field (``default`` when absent: with a default, never None)."""
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool):
        raise E.Validation(f"'{name}' must be an integer")
    return v


@overload
def _blob(body: Body, name: str, required: Literal[True] = True) -> bytes: ...
@overload
def _blob(body: Body, name: str, required: bool) -> bytes | None: ...
def _blob(body: Body, name: str, required: bool = True) -> bytes | None:
    """A base64 field, decoded (required by default: then never None)."""
    v = body.get(name)
    if v is None:
        if required:
            raise E.Validation(f"1 validation error detected: '{name}' must not be null")
        return None
    if not isinstance(v, str):
        raise E.Validation(f"'{name}' must be base64 text")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise E.Validation(f"'{name}' is not valid base64") from None


def _ctx(body: Body, name: str = "EncryptionContext") -> dict[str, str] | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str)
                                          for k, x in v.items()):
        raise E.Validation(f"'{name}' must map strings to strings")
    return v


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _grant_tokens(body: Body) -> list[str]:
    g = body.get("GrantTokens")
    if g is None:
        return []
    if not isinstance(g, list) or not all(isinstance(x, str) for x in g):
        raise E.Validation("'GrantTokens' must be a list of strings")
    return g


def _bool(body: Body, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise E.Validation(f"'{name}' must be a boolean")
    return v


def key_metadata(c: KmsClient, rec: KeyRecord) -> dict[str, Any]:
    info = rec.info
    md: dict[str, Any] = {
        "AWSAccountId": c.kms.account(rec.instance),
        "KeyId": rec.key_id,
        "Arn": rec.arn,
        "CreationDate": rec.created,
        "Enabled": rec.state is KeyState.ENABLED,
        "Description": rec.description,
        "KeyUsage": rec.usage.value,
        "KeyState": rec.state.value,
        "Origin": rec.origin.value,
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": rec.spec.value,
        "KeySpec": rec.spec.value,
        "MultiRegion": False,
    }
    if rec.deletion_date is not None:
        md["DeletionDate"] = rec.deletion_date
    if info.encryption_algorithms and rec.usage.value == "ENCRYPT_DECRYPT":
        md["EncryptionAlgorithms"] = list(info.encryption_algorithms)
    if info.signing_algorithms and rec.usage.value == "SIGN_VERIFY":
        md["SigningAlgorithms"] = list(info.signing_algorithms)
    if info.mac_algorithms:
        md["MacAlgorithms"] = list(info.mac_algorithms)
    if rec.origin is Origin.EXTERNAL:
        md["ExpirationModel"] = ("KEY_MATERIAL_EXPIRES" if rec.import_valid_to
                                 else "KEY_MATERIAL_DOES_NOT_EXPIRE")
        if rec.import_valid_to:
            md["ValidTo"] = rec.import_valid_to
    return md


def _tags_in(body: Body, name: str = "Tags") -> list[tuple[str, str]]:
    v = body.get(name)
    if v is None:
        return []
    if not isinstance(v, list):
        raise E.Validation(f"'{name}' must be a list")
    out = []
    for t in v:
        if not isinstance(t, dict) or not isinstance(t.get("TagKey"), str) \
                or not isinstance(t.get("TagValue"), str):
            raise E.InvalidTag("each tag needs a TagKey and a TagValue")
        out.append((t["TagKey"], t["TagValue"]))
    return out


def _page(items: list[dict[str, Any]], field: str, marker: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {field: items, "Truncated": marker is not None}
    if marker is not None:
        out["NextMarker"] = marker
    return out


# --- key lifecycle -----------------------------------------------------------------------


def create_key(c: KmsClient, b: Body) -> dict[str, Any]:
    spec = _str(b, "KeySpec", False) or _str(b, "CustomerMasterKeySpec", False) \
        or "SYMMETRIC_DEFAULT"
    rec = c.create_key(key_spec=spec, key_usage=_str(b, "KeyUsage", False),
                       description=_str(b, "Description", False, "") or "",
                       origin=_str(b, "Origin", False, "AWS_KMS") or "AWS_KMS",
                       tags=_tags_in(b), policy=_str(b, "Policy", False),
                       bypass_policy_lockout_safety_check=_bool(
                           b, "BypassPolicyLockoutSafetyCheck"))
    return {"KeyMetadata": key_metadata(c, rec)}


def describe_key(c: KmsClient, b: Body) -> dict[str, Any]:
    rec = c.describe_key(_req(b, "KeyId"), grant_tokens=_grant_tokens(b))
    return {"KeyMetadata": key_metadata(c, rec)}


def list_keys(c: KmsClient, b: Body) -> dict[str, Any]:
    limit = _int(b, "Limit", 100)
    page = c.list_keys(limit, _str(b, "Marker", False))
    return _page([{"KeyId": r.key_id, "KeyArn": r.arn} for r in page.items], "Keys",
                 page.next_marker)


def enable_key(c: KmsClient, b: Body) -> dict[str, Any]:
    c.enable_key(_req(b, "KeyId"))
    return {}


def disable_key(c: KmsClient, b: Body) -> dict[str, Any]:
    c.disable_key(_req(b, "KeyId"))
    return {}


def schedule_key_deletion(c: KmsClient, b: Body) -> dict[str, Any]:
    days = _int(b, "PendingWindowInDays", 30)
    rec = c.schedule_key_deletion(_req(b, "KeyId"), days)
    return {"KeyId": rec.arn, "DeletionDate": rec.deletion_date, "KeyState": rec.state.value,
            "PendingWindowInDays": days}


def cancel_key_deletion(c: KmsClient, b: Body) -> dict[str, Any]:
    return {"KeyId": c.cancel_key_deletion(_req(b, "KeyId")).arn}


def update_key_description(c: KmsClient, b: Body) -> dict[str, Any]:
    c.update_key_description(_req(b, "KeyId"), _req(b, "Description"))
    return {}


def tag_resource(c: KmsClient, b: Body) -> dict[str, Any]:
    c.tag_resource(_req(b, "KeyId"), _tags_in(b))
    return {}


def untag_resource(c: KmsClient, b: Body) -> dict[str, Any]:
    keys = b.get("TagKeys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise E.Validation("'TagKeys' must be a list of strings")
    c.untag_resource(_req(b, "KeyId"), keys)
    return {}


def list_resource_tags(c: KmsClient, b: Body) -> dict[str, Any]:
    tags = c.list_resource_tags(_req(b, "KeyId"))
    return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in tags], "Truncated": False}


def get_key_policy(c: KmsClient, b: Body) -> dict[str, Any]:
    name = _str(b, "PolicyName", False) or "default"
    return {"Policy": c.get_key_policy(_req(b, "KeyId"), name), "PolicyName": name}


def put_key_policy(c: KmsClient, b: Body) -> dict[str, Any]:
    c.put_key_policy(_req(b, "KeyId"), _req(b, "Policy"),
                     _str(b, "PolicyName", False) or "default",
                     bypass_policy_lockout_safety_check=_bool(
                         b, "BypassPolicyLockoutSafetyCheck"))
    return {}


def list_key_policies(c: KmsClient, b: Body) -> dict[str, Any]:
    _int(b, "Limit")
    _str(b, "Marker", False)
    return {"PolicyNames": list(c.list_key_policies(_req(b, "KeyId"))), "Truncated": False}


# --- aliases -----------------------------------------------------------------------------


def create_alias(c: KmsClient, b: Body) -> dict[str, Any]:
    c.create_alias(_req(b, "AliasName"), _req(b, "TargetKeyId"))
    return {}


def update_alias(c: KmsClient, b: Body) -> dict[str, Any]:
    c.update_alias(_req(b, "AliasName"), _req(b, "TargetKeyId"))
    return {}


def delete_alias(c: KmsClient, b: Body) -> dict[str, Any]:
    c.delete_alias(_req(b, "AliasName"))
    return {}


def list_aliases(c: KmsClient, b: Body) -> dict[str, Any]:
    limit = _int(b, "Limit", 100)
    page = c.list_aliases(_str(b, "KeyId", False), limit, _str(b, "Marker", False))
    items = [{"AliasName": a.name, "AliasArn": c.kms.alias_arn(a.instance, a.name),
              "TargetKeyId": a.key_id, "CreationDate": a.created,
              "LastUpdatedDate": a.updated} for a in page.items]
    return _page(items, "Aliases", page.next_marker)


# --- rotation ----------------------------------------------------------------------------


def enable_key_rotation(c: KmsClient, b: Body) -> dict[str, Any]:
    period = _int(b, "RotationPeriodInDays", 365)
    if not 90 <= period <= 2560:
        raise E.Validation("RotationPeriodInDays must be 90..2560")
    c.enable_key_rotation(_req(b, "KeyId"), period)
    return {}


def disable_key_rotation(c: KmsClient, b: Body) -> dict[str, Any]:
    c.disable_key_rotation(_req(b, "KeyId"))
    return {}


def get_key_rotation_status(c: KmsClient, b: Body) -> dict[str, Any]:
    rec = c.get_key_rotation_status(_req(b, "KeyId"))
    out: dict[str, Any] = {"KeyRotationEnabled": rec.rotation_enabled, "KeyId": rec.arn}
    if rec.rotation_enabled:
        out["RotationPeriodInDays"] = rec.rotation_period_days
        out["NextRotationDate"] = rec.next_rotation
    return out


def rotate_key_on_demand(c: KmsClient, b: Body) -> dict[str, Any]:
    return {"KeyId": c.rotate_key_on_demand(_req(b, "KeyId")).key_id}


def list_key_rotations(c: KmsClient, b: Body) -> dict[str, Any]:
    versions = c.list_key_rotations(_req(b, "KeyId"))
    items = [{"KeyId": v.key_id, "RotationDate": v.created,
              "RotationType": "ON_DEMAND"} for v in versions[1:]]
    return {"Rotations": items, "Truncated": False}


# --- cryptography ------------------------------------------------------------------------


def encrypt(c: KmsClient, b: Body) -> dict[str, Any]:
    plaintext = _blob(b, "Plaintext")
    r = c.encrypt(_req(b, "KeyId"), plaintext, _ctx(b),
                  _str(b, "EncryptionAlgorithm", False) or "SYMMETRIC_DEFAULT",
                  grant_tokens=_grant_tokens(b))
    return {"CiphertextBlob": _b64(r.ciphertext_blob), "KeyId": r.key_id,
            "EncryptionAlgorithm": r.encryption_algorithm}


def decrypt(c: KmsClient, b: Body) -> dict[str, Any]:
    blob = _blob(b, "CiphertextBlob")
    r = c.decrypt(blob, _ctx(b), _str(b, "KeyId", False),
                  _str(b, "EncryptionAlgorithm", False) or "SYMMETRIC_DEFAULT",
                  grant_tokens=_grant_tokens(b))
    return {"KeyId": r.key_id, "Plaintext": _b64(r.plaintext),
            "EncryptionAlgorithm": r.encryption_algorithm}


def re_encrypt(c: KmsClient, b: Body) -> dict[str, Any]:
    blob = _blob(b, "CiphertextBlob")
    r, source = c.re_encrypt(blob, _req(b, "DestinationKeyId"), _ctx(b, "SourceEncryptionContext"),
                             _ctx(b, "DestinationEncryptionContext"),
                             _str(b, "SourceKeyId", False), grant_tokens=_grant_tokens(b))
    return {"CiphertextBlob": _b64(r.ciphertext_blob), "SourceKeyId": source, "KeyId": r.key_id,
            "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}


def _data_key(c: KmsClient, b: Body, with_plaintext: bool) -> dict[str, Any]:
    spec = _str(b, "KeySpec", False)
    n = _int(b, "NumberOfBytes")
    if spec is None and n is None:
        raise E.Validation("one of KeySpec and NumberOfBytes is required")
    r = c.generate_data_key(_req(b, "KeyId"), spec, n, _ctx(b), with_plaintext=with_plaintext,
                            grant_tokens=_grant_tokens(b))
    out = {"CiphertextBlob": _b64(r.ciphertext_blob), "KeyId": r.key_id}
    if r.plaintext is not None:
        out["Plaintext"] = _b64(r.plaintext)
    return out


def generate_data_key(c: KmsClient, b: Body) -> dict[str, Any]:
    return _data_key(c, b, True)


def generate_data_key_without_plaintext(c: KmsClient, b: Body) -> dict[str, Any]:
    return _data_key(c, b, False)


def _data_key_pair(c: KmsClient, b: Body, with_plaintext: bool) -> dict[str, Any]:
    r = c.generate_data_key_pair(_req(b, "KeyId"), _req(b, "KeyPairSpec"), _ctx(b),
                                 with_plaintext=with_plaintext, grant_tokens=_grant_tokens(b))
    out = {"PrivateKeyCiphertextBlob": _b64(r.private_key_ciphertext_blob),
           "PublicKey": _b64(r.public_key), "KeyId": r.key_id, "KeyPairSpec": r.key_pair_spec}
    if r.private_key_plaintext is not None:
        out["PrivateKeyPlaintext"] = _b64(r.private_key_plaintext)
    return out


def generate_data_key_pair(c: KmsClient, b: Body) -> dict[str, Any]:
    return _data_key_pair(c, b, True)


def generate_data_key_pair_without_plaintext(c: KmsClient, b: Body) -> dict[str, Any]:
    return _data_key_pair(c, b, False)


def sign(c: KmsClient, b: Body) -> dict[str, Any]:
    msg = _blob(b, "Message")
    alg = _req(b, "SigningAlgorithm")
    sig, arn = c.sign(_req(b, "KeyId"), msg, alg, _str(b, "MessageType", False) or "RAW",
                      grant_tokens=_grant_tokens(b))
    return {"KeyId": arn, "Signature": _b64(sig), "SigningAlgorithm": alg}


def verify(c: KmsClient, b: Body) -> dict[str, Any]:
    msg, sig = _blob(b, "Message"), _blob(b, "Signature")
    alg = _req(b, "SigningAlgorithm")
    arn = c.verify(_req(b, "KeyId"), msg, sig, alg, _str(b, "MessageType", False) or "RAW",
                   grant_tokens=_grant_tokens(b))
    return {"KeyId": arn, "SignatureValid": True, "SigningAlgorithm": alg}


def get_public_key(c: KmsClient, b: Body) -> dict[str, Any]:
    info = c.get_public_key(_req(b, "KeyId"), grant_tokens=_grant_tokens(b))
    out: dict[str, Any] = {"KeyId": info.key_id, "PublicKey": _b64(info.public_key),
                           "CustomerMasterKeySpec": info.key_spec, "KeySpec": info.key_spec,
                           "KeyUsage": info.key_usage}
    if info.encryption_algorithms:
        out["EncryptionAlgorithms"] = list(info.encryption_algorithms)
    if info.signing_algorithms:
        out["SigningAlgorithms"] = list(info.signing_algorithms)
    return out


def generate_mac(c: KmsClient, b: Body) -> dict[str, Any]:
    msg = _blob(b, "Message")
    alg = _req(b, "MacAlgorithm")
    mac, arn = c.generate_mac(_req(b, "KeyId"), msg, alg, grant_tokens=_grant_tokens(b))
    return {"Mac": _b64(mac), "MacAlgorithm": alg, "KeyId": arn}


def verify_mac(c: KmsClient, b: Body) -> dict[str, Any]:
    msg, mac = _blob(b, "Message"), _blob(b, "Mac")
    alg = _req(b, "MacAlgorithm")
    arn = c.verify_mac(_req(b, "KeyId"), msg, mac, alg, grant_tokens=_grant_tokens(b))
    return {"KeyId": arn, "MacValid": True, "MacAlgorithm": alg}


def generate_random(c: KmsClient, b: Body) -> dict[str, Any]:
    n = _int(b, "NumberOfBytes")
    if n is None:
        raise E.Validation("'NumberOfBytes' must not be null")
    return {"Plaintext": _b64(c.generate_random(n))}


# --- import ------------------------------------------------------------------------------


def get_parameters_for_import(c: KmsClient, b: Body) -> dict[str, Any]:
    p = c.get_parameters_for_import(_req(b, "KeyId"), _req(b, "WrappingAlgorithm"),
                                    _req(b, "WrappingKeySpec"))
    return {"KeyId": p.key_id, "ImportToken": _b64(p.import_token),
            "PublicKey": _b64(p.public_key), "ParametersValidTo": p.parameters_valid_to}


def import_key_material(c: KmsClient, b: Body) -> dict[str, Any]:
    token, material = _blob(b, "ImportToken"), _blob(b, "EncryptedKeyMaterial")
    valid_to = b.get("ValidTo")
    if valid_to is not None and not isinstance(valid_to, int | float):
        raise E.Validation("'ValidTo' must be a timestamp")
    c.import_key_material(_req(b, "KeyId"), token, material, valid_to,
                          _str(b, "ExpirationModel", False) or "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return {}


def delete_imported_key_material(c: KmsClient, b: Body) -> dict[str, Any]:
    c.delete_imported_key_material(_req(b, "KeyId"))
    return {}


# --- grants ------------------------------------------------------------------------------


def _constraints_out(g: Grant) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if g.subset is not None:
        out["EncryptionContextSubset"] = dict(g.subset)
    if g.equals is not None:
        out["EncryptionContextEquals"] = dict(g.equals)
    return out or None


def _grant_entry(c: KmsClient, g: Grant) -> dict[str, Any]:
    entry: dict[str, Any] = {"KeyId": c.kms.key_arn(g.instance, g.key_id),
                             "GrantId": g.grant_id, "CreationDate": g.created,
                             "GranteePrincipal": g.grantee_arn,
                             "IssuingAccount": g.issuing_account,
                             "Operations": list(g.operations)}
    if g.name is not None:
        entry["Name"] = g.name
    if g.retiring_arn is not None:
        entry["RetiringPrincipal"] = g.retiring_arn
    constraints = _constraints_out(g)
    if constraints is not None:
        entry["Constraints"] = constraints
    return entry


def _grant_page(c: KmsClient, items: tuple[Any, ...], marker: str | None) -> dict[str, Any]:
    return _page([_grant_entry(c, g) for g in items], "Grants", marker)


def create_grant(c: KmsClient, b: Body) -> dict[str, Any]:
    if b.get("GranteeServicePrincipal") is not None or \
            b.get("RetiringServicePrincipal") is not None:
        raise E.UnsupportedOperation("service principals are not supported")
    ops = b.get("Operations")
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise E.Validation("'Operations' must be a list of strings")
    constraints = b.get("Constraints")
    if constraints is not None and not isinstance(constraints, dict):
        raise E.Validation("'Constraints' must be a structure")
    r = c.create_grant(_req(b, "KeyId"), _req(b, "GranteePrincipal"), ops,
                       retiring_principal=_str(b, "RetiringPrincipal", False),
                       constraints=constraints, name=_str(b, "Name", False),
                       grant_tokens=_grant_tokens(b))
    return {"GrantId": r.grant_id, "GrantToken": r.grant_token}


def list_grants(c: KmsClient, b: Body) -> dict[str, Any]:
    limit = _int(b, "Limit", 50)
    page = c.list_grants(_req(b, "KeyId"), limit, _str(b, "Marker", False),
                         grant_id=_str(b, "GrantId", False),
                         grantee_principal=_str(b, "GranteePrincipal", False))
    return _grant_page(c, page.items, page.next_marker)


def list_retirable_grants(c: KmsClient, b: Body) -> dict[str, Any]:
    limit = _int(b, "Limit", 50)
    page = c.list_retirable_grants(_req(b, "RetiringPrincipal"), limit,
                                   _str(b, "Marker", False))
    return _grant_page(c, page.items, page.next_marker)


def retire_grant(c: KmsClient, b: Body) -> dict[str, Any]:
    c.retire_grant(_str(b, "GrantToken", False), _str(b, "KeyId", False),
                   _str(b, "GrantId", False))
    return {}


def revoke_grant(c: KmsClient, b: Body) -> dict[str, Any]:
    c.revoke_grant(_req(b, "KeyId"), _req(b, "GrantId"))
    return {}


#: Operations that write state or generate keys: they wait for durable commits (the store's,
#: the audit trail's) or for key generation, so the server runs them off its event loop.
BLOCKING: Final = frozenset({
    "CreateKey", "EnableKey", "DisableKey", "ScheduleKeyDeletion", "CancelKeyDeletion",
    "UpdateKeyDescription", "TagResource", "UntagResource", "CreateAlias", "UpdateAlias",
    "DeleteAlias", "EnableKeyRotation", "DisableKeyRotation", "RotateKeyOnDemand",
    "GetParametersForImport", "ImportKeyMaterial", "DeleteImportedKeyMaterial",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "PutKeyPolicy",
    "CreateGrant", "RetireGrant", "RevokeGrant",
})

OPERATIONS: Final[dict[str, Handler]] = {
    "CreateKey": create_key,
    "DescribeKey": describe_key,
    "ListKeys": list_keys,
    "EnableKey": enable_key,
    "DisableKey": disable_key,
    "ScheduleKeyDeletion": schedule_key_deletion,
    "CancelKeyDeletion": cancel_key_deletion,
    "UpdateKeyDescription": update_key_description,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListResourceTags": list_resource_tags,
    "GetKeyPolicy": get_key_policy,
    "PutKeyPolicy": put_key_policy,
    "ListKeyPolicies": list_key_policies,
    "CreateAlias": create_alias,
    "UpdateAlias": update_alias,
    "DeleteAlias": delete_alias,
    "ListAliases": list_aliases,
    "EnableKeyRotation": enable_key_rotation,
    "DisableKeyRotation": disable_key_rotation,
    "GetKeyRotationStatus": get_key_rotation_status,
    "RotateKeyOnDemand": rotate_key_on_demand,
    "ListKeyRotations": list_key_rotations,
    "Encrypt": encrypt,
    "Decrypt": decrypt,
    "ReEncrypt": re_encrypt,
    "GenerateDataKey": generate_data_key,
    "GenerateDataKeyWithoutPlaintext": generate_data_key_without_plaintext,
    "GenerateDataKeyPair": generate_data_key_pair,
    "GenerateDataKeyPairWithoutPlaintext": generate_data_key_pair_without_plaintext,
    "Sign": sign,
    "Verify": verify,
    "GetPublicKey": get_public_key,
    "GenerateMac": generate_mac,
    "VerifyMac": verify_mac,
    "GenerateRandom": generate_random,
    "GetParametersForImport": get_parameters_for_import,
    "ImportKeyMaterial": import_key_material,
    "DeleteImportedKeyMaterial": delete_imported_key_material,
    "CreateGrant": create_grant,
    "ListGrants": list_grants,
    "ListRetirableGrants": list_retirable_grants,
    "RetireGrant": retire_grant,
    "RevokeGrant": revoke_grant,
}


# --- the front end --------------------------------------------------------------------------

JSON_TYPES: Final = frozenset({"application/x-amz-json-1.1", "application/x-amz-json-1.0"})
_JSON_TYPE: Final = b"application/x-amz-json-1.1"
_PREFIX: Final = "TrentService."
_UNRECOGNIZED: Final = "The security token included in the request is invalid."


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"__type": code, "message": message})


class AwsKmsFrontend:
    """AWS KMS JSON 1.1 on ``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` and
    SigV4 (service ``kms``). Every failure is a 4xx ``{"__type", "message"}`` named as boto3
    expects; 503 ``DependencyTimeoutException`` past the deadline; 500 only for our bugs."""

    name = "aws-kms"
    #: What a front end of this family (AWS JSON 1.1 over SigV4) is made of: the target
    #: prefix, the SigV4 service, the handlers, the operations that block, the error table.
    #: :class:`kms.api.aws_secrets.AwsSecretsFrontend` is the same with its own.
    prefix: str = _PREFIX
    service: str = "kms"
    operations: Mapping[str, Callable[[Any, Body], dict[str, Any]]] = OPERATIONS
    blocking: frozenset[str] = BLOCKING
    wire_errors: Mapping[str, tuple[str, int]] = WIRE_ERRORS
    throttling: tuple[str, int] = ("ThrottlingException", 400)

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    def accepts(self, req: Request) -> bool:
        return req.method == "POST" and req.path == "/" \
            and req.headers.get("x-amz-target", "").startswith(self.prefix)

    def _answer(self, status: int, code: str, message: str, op: str) -> Answer:
        return Answer(status, _error(code, message), _JSON_TYPE, op, code)

    def _failed(self, exc: E.KmsError, op: str) -> Answer:
        code, status = self.wire_errors[exc.kind]
        return self._answer(status, code, exc.message, op)

    def prepare(self, req: Request) -> Call | Answer:
        op = req.headers["x-amz-target"][len(self.prefix):]
        handler = self.operations.get(op)
        if handler is None:
            return self._answer(400, "UnknownOperationException", "unknown operation", "-")
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            return self._answer(400, "SerializationException",
                                "Content-Type must be application/x-amz-json-1.1", op)
        try:
            cred = self.auth.sigv4(self.service, req.method, req.path, req.query, req.headers,
                                   req.body)
            client = self.auth.client(cred.access_key_id, req.peer,
                                      req.headers.get("x-forwarded-for"))
        except AuthError as exc:
            return self._answer(400, exc.code, exc.message, op)
        except (E.KeyUnavailable, E.DependencyTimeout) as exc:
            # The access key's secret is unwrapped in a token on first use: no token could
            # do it now (all ejected, or past the deadline). Retryable, like the operation.
            return self._failed(exc, op)
        except E.KmsError:  # a principal or instance that is gone
            return self._answer(400, "UnrecognizedClientException", _UNRECOGNIZED, op)
        try:
            # orjson (about 10x faster than json here) refuses lone surrogates and nesting
            # deeper than 1024 with a JSONDecodeError, a ValueError: both would otherwise fail
            # later, in UTF-8 encoding (SQLite, the ciphertext context), as a 500.
            body = orjson.loads(req.body) if req.body else {}
        except (ValueError, UnicodeError, RecursionError):
            return self._answer(400, "SerializationException", "the body is not valid JSON", op)
        if not isinstance(body, dict):
            return self._answer(400, "SerializationException",
                                "the body must be a JSON object", op)

        def run() -> Answer:
            try:
                out = handler(client, body)
            except E.KmsError as exc:
                return self._failed(exc, op)
            except Exception:  # noqa: BLE001 - a bug of ours: log the type, never the data
                log.exception("internal error in %s", op)
                return self.internal_error(op)
            return Answer(200, orjson.dumps(out), _JSON_TYPE, op, "ok")

        p = client.principal
        caller = f"{p.instance}/{p.name}" if p is not None else None
        return Call(op, client.principal_id, op in self.blocking, run, caller,
                    client.source_ip)

    def throttled(self, operation: str) -> Answer:
        code, status = self.throttling
        return self._answer(status, code, "Rate exceeded", operation)

    def timed_out(self, operation: str) -> Answer:
        code, status = self.wire_errors["DependencyTimeout"]
        return self._answer(status, code, "the request did not finish in time; retry",
                            operation)

    def internal_error(self, operation: str) -> Answer:
        return self._answer(500, self.wire_errors["Internal"][0], "internal error", operation)
