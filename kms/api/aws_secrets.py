"""The AWS Secrets Manager JSON 1.1 protocol, on the same server and port as AWS KMS.

``POST /`` with ``X-Amz-Target: secretsmanager.<Operation>``, SigV4 with service
``secretsmanager`` (checked before anything is dispatched); the request pipeline, limits,
deadlines and access log are those of every front end (:mod:`kms.api.pipeline`), the
operations those of :mod:`kms.secrets.manage`. Each handler below only maps fields: the
request's JSON to one service call, its result to the response's JSON (dates in epoch
seconds, ``SecretBinary`` in base64). Errors carry the names boto3 knows
(:data:`WIRE_ERRORS`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from kms import errors as E
from kms.api.aws_kms import AwsKmsFrontend, Body, _b64, _blob, _bool, _int, _req, _str
from kms.errors import KmsError
from kms.secrets.manage import SecretValue
from kms.secrets.model import SecretRecord, SecretVersion
from kms.service import KmsClient

_INVALID: Final = ("InvalidParameterException", 400)

#: The service's error kinds as AWS Secrets Manager names them, with the HTTP status.
WIRE_ERRORS: Final[dict[str, tuple[str, int]]] = {
    "NotFound": ("ResourceNotFoundException", 400),
    "Validation": _INVALID,
    "InvalidState": ("InvalidRequestException", 400),
    "AlreadyExists": ("ResourceExistsException", 400),
    "LimitExceeded": ("LimitExceededException", 400),
    "InvalidMarker": ("InvalidNextTokenException", 400),
    "MalformedPolicyDocument": ("MalformedPolicyDocumentException", 400),
    "AccessDenied": ("AccessDeniedException", 400),
    "Disabled": ("DecryptionFailure", 400),
    "InvalidCiphertext": ("DecryptionFailure", 400),
    "InvalidKeyUsage": ("EncryptionFailure", 400),
    "IncorrectKey": ("DecryptionFailure", 400),
    "InvalidSignature": _INVALID,
    "InvalidMac": _INVALID,
    "InvalidAliasName": _INVALID,
    "InvalidArn": _INVALID,
    "UnsupportedOperation": _INVALID,
    "InvalidImportToken": _INVALID,
    "ExpiredImportToken": _INVALID,
    "InvalidGrantToken": _INVALID,
    "InvalidGrantId": _INVALID,
    "IncorrectKeyMaterial": _INVALID,
    "InvalidTag": _INVALID,
    "KeyUnavailable": ("InternalServiceError", 500),
    "DependencyTimeout": ("InternalServiceError", 503),
    "Internal": ("InternalServiceError", 500),
}


def _names(rec: SecretRecord) -> dict[str, Any]:
    return {"ARN": rec.arn, "Name": rec.name}


def _value_out(sv: SecretValue) -> dict[str, Any]:
    out = {**_names(sv.secret), "VersionId": sv.version.version_id,
           "VersionStages": list(sv.version.stages), "CreatedDate": sv.version.created}
    if sv.binary:
        out["SecretBinary"] = _b64(sv.value)
    else:
        out["SecretString"] = sv.value.decode()
    return out


def _describe(rec: SecretRecord, versions: tuple[SecretVersion, ...],
              stages_field: str = "VersionIdsToStages") -> dict[str, Any]:
    out: dict[str, Any] = {**_names(rec), "CreatedDate": rec.created,
                           "RotationEnabled": rec.rotation_enabled}
    if rec.description:
        out["Description"] = rec.description
    if rec.kms_key_id is not None:
        out["KmsKeyId"] = rec.kms_key_id
    if rec.rotator is not None:
        out["RotationLambdaARN"] = f"arn:hsmpool:rotator:{rec.rotator}"
    if rec.rotation_rules is not None:
        out["RotationRules"] = json.loads(rec.rotation_rules)
    for field, value in (("LastRotatedDate", rec.last_rotated),
                         ("LastChangedDate", rec.last_changed),
                         ("DeletedDate", rec.deletion_date),
                         ("NextRotationDate", rec.next_rotation if rec.rotation_enabled
                          else None)):
        if value is not None:
            out[field] = value
    if rec.tags:
        out["Tags"] = [{"Key": k, "Value": v} for k, v in rec.tags]
    if rec.rotation_error is not None:  # not in AWS's shape: raw JSON and the CLI show it
        out["LastRotationError"] = rec.rotation_error
    out[stages_field] = {v.version_id: list(v.stages) for v in versions}
    return out


def _list_of_str(body: Body, name: str) -> list[str] | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _invalid(f"'{name}' must be a list of strings")
    return v


def _invalid(message: str) -> KmsError:
    return E.Validation(message)


def _secret_value_fields(body: Body) -> dict[str, Any]:
    return {"secret_string": _str(body, "SecretString", required=False),
            "secret_binary": _blob(body, "SecretBinary", required=False)}


# --- handlers -----------------------------------------------------------------------------


def create_secret(c: KmsClient, b: Body) -> dict[str, Any]:
    if b.get("AddReplicaRegions"):  # refused before anything is made
        raise _invalid("replica regions are not supported")
    rec, v = c.create_secret(
        _req(b, "Name"), description=_str(b, "Description", False, "") or "",
        kms_key_id=_str(b, "KmsKeyId", required=False), tags=b.get("Tags"),
        client_request_token=_str(b, "ClientRequestToken", required=False),
        **_secret_value_fields(b))
    out = _names(rec)
    if v is not None:
        out["VersionId"] = v.version_id
    return out


def get_secret_value(c: KmsClient, b: Body) -> dict[str, Any]:
    return _value_out(c.get_secret_value(
        _req(b, "SecretId"), _str(b, "VersionId", required=False),
        _str(b, "VersionStage", required=False)))


def batch_get_secret_value(c: KmsClient, b: Body) -> dict[str, Any]:
    ids = _list_of_str(b, "SecretIdList")
    filters = b.get("Filters")
    if (ids is None) == (filters is None):
        raise _invalid("give either SecretIdList or Filters")
    values: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    if ids is not None:
        if not 1 <= len(ids) <= 20:
            raise _invalid("SecretIdList holds 1..20 secrets")
        targets = ids
    else:
        page = c.list_secrets(_int(b, "MaxResults", 20), _str(b, "NextToken", required=False),
                              filters)
        targets = [rec.arn for rec, _ in page.items]
        if page.next_token is not None:
            out["NextToken"] = page.next_token
    for sid in targets:
        try:
            values.append(_value_out(c.get_secret_value(sid)))
        except KmsError as exc:
            code = WIRE_ERRORS[exc.kind][0]
            errors.append({"SecretId": sid, "ErrorCode": code, "Message": exc.message})
    out["SecretValues"] = values
    out["Errors"] = errors
    return out


def put_secret_value(c: KmsClient, b: Body) -> dict[str, Any]:
    rec, v = c.put_secret_value(
        _req(b, "SecretId"), client_request_token=_str(b, "ClientRequestToken",
                                                       required=False),
        version_stages=_list_of_str(b, "VersionStages"), **_secret_value_fields(b))
    return {**_names(rec), "VersionId": v.version_id, "VersionStages": list(v.stages)}


def describe_secret(c: KmsClient, b: Body) -> dict[str, Any]:
    rec, versions = c.describe_secret(_req(b, "SecretId"))
    return _describe(rec, versions)


def list_secrets(c: KmsClient, b: Body) -> dict[str, Any]:
    page = c.list_secrets(_int(b, "MaxResults"), _str(b, "NextToken", required=False),
                          b.get("Filters"), _bool(b, "IncludePlannedDeletion"),
                          _str(b, "SortOrder", False, "asc") or "asc")
    out: dict[str, Any] = {"SecretList": [_describe(rec, versions, "SecretVersionsToStages")
                                          for rec, versions in page.items]}
    if page.next_token is not None:
        out["NextToken"] = page.next_token
    return out


def list_secret_version_ids(c: KmsClient, b: Body) -> dict[str, Any]:
    rec, versions, nxt = c.list_secret_version_ids(
        _req(b, "SecretId"), _int(b, "MaxResults"), _str(b, "NextToken", required=False),
        _bool(b, "IncludeDeprecated"))
    out: dict[str, Any] = {**_names(rec), "Versions": [
        {"VersionId": v.version_id, "VersionStages": list(v.stages), "CreatedDate": v.created}
        for v in versions]}
    if nxt is not None:
        out["NextToken"] = nxt
    return out


def update_secret(c: KmsClient, b: Body) -> dict[str, Any]:
    rec, v = c.update_secret(
        _req(b, "SecretId"), client_request_token=_str(b, "ClientRequestToken",
                                                       required=False),
        description=_str(b, "Description", required=False),
        kms_key_id=_str(b, "KmsKeyId", required=False), **_secret_value_fields(b))
    out = _names(rec)
    if v is not None:
        out["VersionId"] = v.version_id
    return out


def update_secret_version_stage(c: KmsClient, b: Body) -> dict[str, Any]:
    rec = c.update_secret_version_stage(
        _req(b, "SecretId"), _req(b, "VersionStage"),
        remove_from_version_id=_str(b, "RemoveFromVersionId", required=False),
        move_to_version_id=_str(b, "MoveToVersionId", required=False))
    return _names(rec)


def rotate_secret(c: KmsClient, b: Body) -> dict[str, Any]:
    rules = b.get("RotationRules")
    immediately = b.get("RotateImmediately", True)
    rec, version = c.rotate_secret(
        _req(b, "SecretId"), client_request_token=_str(b, "ClientRequestToken",
                                                       required=False),
        rotation_lambda_arn=_str(b, "RotationLambdaARN", required=False),
        rotation_rules=rules, rotate_immediately=immediately)
    out = _names(rec)
    if version is not None:
        out["VersionId"] = version
    return out


def cancel_rotate_secret(c: KmsClient, b: Body) -> dict[str, Any]:
    rec, version = c.cancel_rotate_secret(_req(b, "SecretId"))
    out = _names(rec)
    if version is not None:
        out["VersionId"] = version
    return out


def delete_secret(c: KmsClient, b: Body) -> dict[str, Any]:
    rec = c.delete_secret(_req(b, "SecretId"),
                          recovery_window_in_days=_int(b, "RecoveryWindowInDays"),
                          force_delete_without_recovery=_bool(b,
                                                              "ForceDeleteWithoutRecovery"))
    return {**_names(rec), "DeletionDate": rec.deletion_date}


def restore_secret(c: KmsClient, b: Body) -> dict[str, Any]:
    return _names(c.restore_secret(_req(b, "SecretId")))


def get_random_password(c: KmsClient, b: Body) -> dict[str, Any]:
    flags = {name: _bool(b, field) for name, field in (
        ("exclude_numbers", "ExcludeNumbers"), ("exclude_punctuation", "ExcludePunctuation"),
        ("exclude_uppercase", "ExcludeUppercase"), ("exclude_lowercase", "ExcludeLowercase"),
        ("include_space", "IncludeSpace"))}
    require = b.get("RequireEachIncludedType", True)
    length = _int(b, "PasswordLength", 32)
    return {"RandomPassword": c.get_random_password(
        length, exclude_characters=_str(b, "ExcludeCharacters", False, "") or "",
        require_each_included_type=require, **flags)}


def tag_resource(c: KmsClient, b: Body) -> dict[str, Any]:
    c.tag_secret(_req(b, "SecretId"), b.get("Tags") or [])
    return {}


def untag_resource(c: KmsClient, b: Body) -> dict[str, Any]:
    c.untag_secret(_req(b, "SecretId"), _list_of_str(b, "TagKeys") or [])
    return {}


def get_resource_policy(c: KmsClient, b: Body) -> dict[str, Any]:
    rec = c.get_secret_policy(_req(b, "SecretId"))
    out = _names(rec)
    if rec.policy is not None:
        out["ResourcePolicy"] = rec.policy
    return out


def put_resource_policy(c: KmsClient, b: Body) -> dict[str, Any]:
    return _names(c.put_secret_policy(_req(b, "SecretId"), _req(b, "ResourcePolicy")))


def delete_resource_policy(c: KmsClient, b: Body) -> dict[str, Any]:
    return _names(c.delete_secret_policy(_req(b, "SecretId")))


OPERATIONS: Final[dict[str, Callable[[KmsClient, Body], dict[str, Any]]]] = {
    "CreateSecret": create_secret,
    "GetSecretValue": get_secret_value,
    "BatchGetSecretValue": batch_get_secret_value,
    "PutSecretValue": put_secret_value,
    "DescribeSecret": describe_secret,
    "ListSecrets": list_secrets,
    "ListSecretVersionIds": list_secret_version_ids,
    "UpdateSecret": update_secret,
    "UpdateSecretVersionStage": update_secret_version_stage,
    "RotateSecret": rotate_secret,
    "CancelRotateSecret": cancel_rotate_secret,
    "DeleteSecret": delete_secret,
    "RestoreSecret": restore_secret,
    "GetRandomPassword": get_random_password,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "GetResourcePolicy": get_resource_policy,
    "PutResourcePolicy": put_resource_policy,
    "DeleteResourcePolicy": delete_resource_policy,
}

#: Operations that write (durably, with their audit record) or may make a key: run on the
#: thread pool, not in the event loop's greenlets.
BLOCKING: Final = frozenset(OPERATIONS) - {"GetSecretValue", "BatchGetSecretValue",
                                           "DescribeSecret", "ListSecrets",
                                           "ListSecretVersionIds", "GetRandomPassword",
                                           "GetResourcePolicy"}


class AwsSecretsFrontend(AwsKmsFrontend):
    """AWS Secrets Manager JSON 1.1: the AWS KMS front end's request handling, with this
    protocol's target prefix, SigV4 service, handlers and error names."""

    name = "aws-secretsmanager"
    prefix = "secretsmanager."
    service = "secretsmanager"
    operations: Mapping[str, Callable[[Any, Body], dict[str, Any]]] = OPERATIONS
    blocking = BLOCKING
    wire_errors: Mapping[str, tuple[str, int]] = WIRE_ERRORS
