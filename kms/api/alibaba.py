"""Alibaba Cloud KMS OpenAPI (RPC style, version 2016-01-20) on the main port.

Requests are ``POST /`` (or ``GET``) with the action in ``x-acs-action`` (ACS3 signatures)
or in the ``Action`` parameter (v1 signatures), the parameters in the query string and/or a
form body; both signatures are checked by :mod:`kms.api.acs_sign` before anything runs.
Answers are JSON with a ``RequestId``; errors ``{"Code", "Message", "RequestId"}`` with
Alibaba's codes and statuses (:data:`WIRE_ERRORS`, with per-resource not-found codes).

Each handler maps the action's parameters to one service call (the same calls as every
other front end: a key made here is the key boto3 sees) and the result to Alibaba's
response shape: key specs ``Aliyun_AES_256`` (SYMMETRIC_DEFAULT), ``Aliyun_SM4``, RSA and
``EC_P256``/``EC_P256K``/``EC_SM2``; usages ``ENCRYPT/DECRYPT`` and ``SIGN/VERIFY``; key ARNs
``acs:kms:<region>:<account>:key/<id>`` (accepted wherever a KeyId is); secrets with the
stages ``ACSCurrent``/``ACSPrevious``/``ACSPending`` (the same stages as AWS's).

Bring your own key: CreateKey with ``Origin=EXTERNAL``, GetParametersForImport
(``WrappingKeySpec`` RSA_2048 with RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1, or EC_SM2 with
SM2PKE; Alibaba's RSAES_PKCS1_V1_5 is refused with UnsupportedOperation) and
ImportKeyMaterial (``KeyMaterialExpireUnix``, 0 for never), over
:mod:`kms.keys.importing`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote_plus

import orjson

from kms import errors as E
from kms.api.acs_sign import AcsVerifier
from kms.api.auth import Authenticator
from kms.api.pipeline import Answer, Call, Request
from kms.api.sigv4 import AuthError
from kms.model import KeyRecord
from kms.secrets.model import CURRENT, PENDING, PREVIOUS
from kms.service import KmsClient

log = logging.getLogger("hsmpool.server")

Params = Mapping[str, str]
VERSION: Final = "2016-01-20"
_JSON: Final = b"application/json;charset=utf-8"
MAX_PLAINTEXT: Final = 6144

SPECS: Final = {"Aliyun_AES_256": "SYMMETRIC_DEFAULT", "Aliyun_SM4": "SM4",
                "RSA_2048": "RSA_2048", "RSA_3072": "RSA_3072", "EC_P256": "ECC_NIST_P256",
                "EC_P256K": "ECC_SECG_P256K1", "EC_SM2": "SM2"}
_SPEC_NAMES: Final = {v: k for k, v in SPECS.items()}
USAGES: Final = {"ENCRYPT/DECRYPT": "ENCRYPT_DECRYPT", "SIGN/VERIFY": "SIGN_VERIFY"}
_USAGE_NAMES: Final = {v: k for k, v in USAGES.items()}
STAGES: Final = {"ACSCurrent": CURRENT, "ACSPrevious": PREVIOUS, "ACSPending": PENDING}
_STAGE_NAMES: Final = {v: k for k, v in STAGES.items()}

#: The service's error kinds as Alibaba names them, with the HTTP status. A not-found
#: depends on the resource (:data:`_NOT_FOUND`).
WIRE_ERRORS: Final[dict[str, tuple[str, int]]] = {
    "NotFound": ("Forbidden.KeyNotFound", 404),
    "Disabled": ("Rejected.Disabled", 400),
    "InvalidState": ("Rejected.UnexpectedState", 400),
    "InvalidCiphertext": ("Rejected.InvalidCiphertext", 400),
    "IncorrectKey": ("Rejected.IncorrectKey", 400),
    "InvalidKeyUsage": ("Rejected.InvalidKeyUsage", 400),
    "InvalidSignature": ("Rejected.InvalidSignature", 400),
    "InvalidMac": ("Rejected.InvalidSignature", 400),
    "AlreadyExists": ("Rejected.ResourceExist", 400),
    "InvalidAliasName": ("InvalidParameter", 400),
    "InvalidArn": ("InvalidParameter", 400),
    "InvalidMarker": ("InvalidParameter", 400),
    "UnsupportedOperation": ("UnsupportedOperation", 400),
    "LimitExceeded": ("Rejected.LimitExceeded", 400),
    "InvalidImportToken": ("Rejected.InvalidImportToken", 400),
    "ExpiredImportToken": ("Rejected.ImportTokenExpired", 400),
    "InvalidGrantToken": ("InvalidParameter", 400),
    "InvalidGrantId": ("InvalidParameter", 400),
    "IncorrectKeyMaterial": ("Rejected.IncorrectKeyMaterial", 400),
    "InvalidTag": ("InvalidParameter", 400),
    "MalformedPolicyDocument": ("InvalidParameter", 400),
    "Validation": ("InvalidParameter", 400),
    "AccessDenied": ("Forbidden.NoPermission", 403),
    "KeyUnavailable": ("ServiceUnavailable", 503),
    "DependencyTimeout": ("ServiceUnavailable", 503),
    "Internal": ("InternalFailure", 500),
}
_NOT_FOUND: Final = {"alias": ("Forbidden.AliasNotFound", 404),
                     "secret": ("Forbidden.ResourceNotFound", 404)}
_AUTH_STATUS: Final = {"InvalidAccessKeyId.NotFound": 404}


# --- parameters ---------------------------------------------------------------------------


def parse_query(text: str) -> dict[str, str]:
    """``dict(parse_qsl(text, keep_blank_values=True))`` (``&``-separated, ``+`` is a
    space, UTF-8 percent-escapes with errors replaced, the last of a repeated name), in a
    third of its time: most names and values have no escape to undo."""
    out: dict[str, str] = {}
    for piece in text.split("&"):
        if not piece:
            continue
        k, _, v = piece.partition("=")
        if "%" in k or "+" in k:
            k = unquote_plus(k)
        if "%" in v or "+" in v:
            v = unquote_plus(v)
        out[k] = v
    return out


def _p(params: Params, name: str) -> str:
    v = params.get(name)
    if v is None or v == "":
        raise E.Validation(f"the parameter {name} is missing")
    return v


def _opt(params: Params, name: str) -> str | None:
    v = params.get(name)
    return None if v is None or v == "" else v


_INTEGER: Final = re.compile(r"-?[0-9]{1,19}")


def _int(params: Params, name: str, default: int) -> int:
    """An integer parameter: ASCII digits, in the signed 64-bit range of Alibaba's Long
    (not Python's ``int()``, which takes any size, other scripts' digits and ``1_000``: a
    value past 64 bits could not even be echoed in a JSON answer)."""
    v = params.get(name)
    if v is None or v == "":
        return default
    if _INTEGER.fullmatch(v) is None or not -2**63 <= (n := int(v)) < 2**63:
        raise E.Validation(f"the parameter {name} must be a 64-bit integer")
    return n


def _json(raw: str, name: str, what: str) -> Any:
    """A parameter that holds JSON. orjson, as the AWS front end parses bodies: it refuses
    lone surrogates (which could not be encoded as UTF-8 later, in the ciphertext's context
    or in SQLite) and nesting deeper than 1024 (the standard parser's RecursionError), with a
    ValueError, as it does any other malformed JSON."""
    try:
        return orjson.loads(raw)
    except ValueError:
        raise E.Validation(f"the parameter {name} must be {what}") from None


def _b64(params: Params, name: str) -> bytes:
    try:
        return base64.b64decode(_p(params, name), validate=True)
    except (binascii.Error, ValueError):
        raise E.Validation(f"the parameter {name} is not valid base64") from None


def _ctx(params: Params, name: str = "EncryptionContext") -> dict[str, str] | None:
    raw = _opt(params, name)
    if raw is None:
        return None
    doc = _json(raw, name, "a JSON object")
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in doc.items()):
        raise E.Validation(f"the parameter {name} must map strings to strings")
    return doc


def _key_id(params: Params, name: str = "KeyId") -> str:
    """A KeyId: a key id, an alias name or an ``acs:kms:...`` ARN of either."""
    v = _p(params, name)
    if v.startswith("acs:kms:"):
        tail = v.split(":", 5)[-1]
        return tail[len("key/"):] if tail.startswith("key/") else tail
    return v


def _short(arn: str) -> str:
    """The key id of a key ARN (Alibaba's answers name keys by id)."""
    return arn.rsplit("/", 1)[-1]


def _time(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _key_arn(c: KmsClient, key_id: str) -> str:
    return f"acs:kms:{c.kms.settings.region}:{c._account}:key/{key_id}"


def _metadata(c: KmsClient, rec: KeyRecord) -> dict[str, Any]:
    out = {"KeyId": rec.key_id, "Arn": _key_arn(c, rec.key_id), "KeyState": rec.state.value,
           "KeySpec": _SPEC_NAMES.get(rec.spec.value, rec.spec.value),
           "KeyUsage": _USAGE_NAMES.get(rec.usage.value, rec.usage.value),
           "Origin": "Aliyun_KMS" if rec.origin.value == "AWS_KMS" else rec.origin.value,
           "ProtectionLevel": rec.info.protection.value, "Description": rec.description,
           "CreationDate": _time(rec.created), "Creator": c._account,
           "PrimaryKeyVersion": rec.primary_version or "",
           "AutomaticRotation": "Enabled" if rec.rotation_enabled else "Disabled"}
    if rec.deletion_date is not None:
        out["DeleteDate"] = _time(rec.deletion_date)
    if rec.rotation_enabled:
        out["RotationInterval"] = f"{rec.rotation_period_days * 86400}s"
        out["NextRotationDate"] = _time(rec.next_rotation)
    return out


# --- key handlers -------------------------------------------------------------------------


def create_key(c: KmsClient, p: Params) -> dict[str, Any]:
    spec = _opt(p, "KeySpec") or "Aliyun_AES_256"
    if spec not in SPECS:
        raise E.Validation(f"KeySpec must be one of {sorted(SPECS)}")
    usage = _opt(p, "KeyUsage")
    if usage is not None and usage not in USAGES:
        raise E.Validation(f"KeyUsage must be one of {sorted(USAGES)}")
    origin = _opt(p, "Origin") or "Aliyun_KMS"
    if origin not in ("Aliyun_KMS", "EXTERNAL"):
        raise E.Validation("Origin must be Aliyun_KMS or EXTERNAL")
    rec = c.create_key(SPECS[spec], USAGES[usage] if usage else None,
                       description=_opt(p, "Description") or "",
                       origin="AWS_KMS" if origin == "Aliyun_KMS" else "EXTERNAL")
    return {"KeyMetadata": _metadata(c, rec)}


def describe_key(c: KmsClient, p: Params) -> dict[str, Any]:
    return {"KeyMetadata": _metadata(c, c.describe_key(_key_id(p)))}


def _page(p: Params) -> tuple[int, int]:
    number, size = _int(p, "PageNumber", 1), _int(p, "PageSize", 10)
    if number < 1 or not 1 <= size <= 100:
        raise E.Validation("PageNumber is 1 or more, PageSize 1..100")
    return number, size


def _all(fetch: Callable[[str | None], Any]) -> list[Any]:
    items: list[Any] = []
    marker = None
    while True:
        page = fetch(marker)
        items += page.items
        marker = page.next_marker
        if marker is None:
            return items


def list_keys(c: KmsClient, p: Params) -> dict[str, Any]:
    number, size = _page(p)
    keys = _all(lambda m: c.list_keys(1000, m))
    chosen = keys[(number - 1) * size:number * size]
    return {"Keys": {"Key": [{"KeyId": k.key_id, "KeyArn": _key_arn(c, k.key_id)}
                             for k in chosen]},
            "TotalCount": len(keys), "PageNumber": number, "PageSize": size}


def _simple(method: str) -> Callable[[KmsClient, Params], dict[str, Any]]:
    def handler(c: KmsClient, p: Params) -> dict[str, Any]:
        getattr(c, method)(_key_id(p))
        return {}

    return handler


def schedule_key_deletion(c: KmsClient, p: Params) -> dict[str, Any]:
    days = _int(p, "PendingWindowInDays", 30)
    c.schedule_key_deletion(_key_id(p), days)
    return {}


def create_alias(c: KmsClient, p: Params) -> dict[str, Any]:
    c.create_alias(_p(p, "AliasName"), _key_id(p))
    return {}


def update_alias(c: KmsClient, p: Params) -> dict[str, Any]:
    c.update_alias(_p(p, "AliasName"), _key_id(p))
    return {}


def delete_alias(c: KmsClient, p: Params) -> dict[str, Any]:
    c.delete_alias(_p(p, "AliasName"))
    return {}


def _aliases(c: KmsClient, p: Params, key: str | None) -> dict[str, Any]:
    number, size = _page(p)
    rows = _all(lambda m: c.list_aliases(key, 1000, m))
    chosen = rows[(number - 1) * size:number * size]
    return {"Aliases": {"Alias": [
        {"AliasName": a.name, "KeyId": a.key_id,
         "AliasArn": f"acs:kms:{c.kms.settings.region}:{c._account}:{a.name}"}
        for a in chosen]}, "TotalCount": len(rows), "PageNumber": number, "PageSize": size}


def list_aliases(c: KmsClient, p: Params) -> dict[str, Any]:
    return _aliases(c, p, None)


def list_aliases_by_key_id(c: KmsClient, p: Params) -> dict[str, Any]:
    return _aliases(c, p, _key_id(p))


def encrypt(c: KmsClient, p: Params) -> dict[str, Any]:
    data = _b64(p, "Plaintext")
    if len(data) > MAX_PLAINTEXT:
        raise E.Validation(f"Plaintext is at most {MAX_PLAINTEXT} bytes")
    r = c.encrypt(_key_id(p), data, _ctx(p))
    return {"CiphertextBlob": _b(r.ciphertext_blob), "KeyId": _short(r.key_id),
            "KeyVersionId": c.ciphertext_version(r.ciphertext_blob)}


def decrypt(c: KmsClient, p: Params) -> dict[str, Any]:
    r = c.decrypt(_b64(p, "CiphertextBlob"), _ctx(p))
    return {"Plaintext": _b(r.plaintext), "KeyId": _short(r.key_id),
            "KeyVersionId": r.key_version}


def re_encrypt(c: KmsClient, p: Params) -> dict[str, Any]:
    r, _ = c.re_encrypt(_b64(p, "CiphertextBlob"), _key_id(p, "DestinationKeyId"),
                        _ctx(p, "SourceEncryptionContext"),
                        _ctx(p, "DestinationEncryptionContext"))
    return {"CiphertextBlob": _b(r.ciphertext_blob), "KeyId": _short(r.key_id),
            "KeyVersionId": c.ciphertext_version(r.ciphertext_blob)}


def _data_key(c: KmsClient, p: Params, with_plaintext: bool) -> dict[str, Any]:
    spec = _opt(p, "KeySpec")
    n = _opt(p, "NumberOfBytes")
    if spec is not None and spec not in ("AES_256", "AES_128"):
        raise E.Validation("KeySpec must be AES_256 or AES_128")
    r = c.generate_data_key(_key_id(p), spec if n is None else None,
                            _int(p, "NumberOfBytes", 0) if n is not None else None, _ctx(p),
                            with_plaintext=with_plaintext)
    out = {"CiphertextBlob": _b(r.ciphertext_blob), "KeyId": _short(r.key_id),
           "KeyVersionId": c.ciphertext_version(r.ciphertext_blob)}
    if r.plaintext is not None:
        out["Plaintext"] = _b(r.plaintext)
    return out


def generate_data_key(c: KmsClient, p: Params) -> dict[str, Any]:
    return _data_key(c, p, True)


def generate_data_key_without_plaintext(c: KmsClient, p: Params) -> dict[str, Any]:
    return _data_key(c, p, False)


_WRAPPING_SPECS: Final = {"RSA_2048": ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"),
                          "EC_SM2": ("SM2PKE",)}


def _wrapping(p: Params) -> tuple[bytes, str]:
    spec, alg = _p(p, "WrappingKeySpec"), _p(p, "WrappingAlgorithm")
    if alg not in _WRAPPING_SPECS.get(spec, ()):
        raise E.Validation("WrappingKeySpec/WrappingAlgorithm must be RSA_2048 with "
                           "RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1, or EC_SM2 with SM2PKE")
    return _b64(p, "PublicKeyBlob"), alg


def export_data_key(c: KmsClient, p: Params) -> dict[str, Any]:
    public, alg = _wrapping(p)
    r = c.export_data_key(_b64(p, "CiphertextBlob"), public, alg, _ctx(p))
    return {"ExportedDataKey": _b(r.exported), "KeyId": _short(r.key_id),
            "KeyVersionId": r.key_version}


def generate_and_export_data_key(c: KmsClient, p: Params) -> dict[str, Any]:
    public, alg = _wrapping(p)
    spec = _opt(p, "KeySpec")
    n = _opt(p, "NumberOfBytes")
    r = c.generate_and_export_data_key(
        _key_id(p), public, alg, spec if n is None else None,
        _int(p, "NumberOfBytes", 0) if n is not None else None, _ctx(p))
    assert r.ciphertext_blob is not None
    return {"CiphertextBlob": _b(r.ciphertext_blob), "ExportedDataKey": _b(r.exported),
            "KeyId": _short(r.key_id), "KeyVersionId": r.key_version}


# --- bring your own key (Origin=EXTERNAL) --------------------------------------------------

#: Alibaba's wrapping key specs, as the service names them.
_IMPORT_WRAPPING_SPECS: Final = {"RSA_2048": "RSA_2048", "EC_SM2": "SM2"}


def get_parameters_for_import(c: KmsClient, p: Params) -> dict[str, Any]:
    spec, alg = _p(p, "WrappingKeySpec"), _p(p, "WrappingAlgorithm")
    if alg == "RSAES_PKCS1_V1_5":
        # Alibaba offers it; PKCS#1 v1.5 decryption of caller-chosen data is a padding
        # oracle (Bleichenbacher), so the service does not.
        raise E.UnsupportedOperation("the wrapping algorithm RSAES_PKCS1_V1_5 is not "
                                     "supported; use RSAES_OAEP_SHA_256")
    if alg not in _WRAPPING_SPECS.get(spec, ()):
        raise E.Validation("WrappingKeySpec/WrappingAlgorithm must be RSA_2048 with "
                           "RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1, or EC_SM2 with SM2PKE")
    r = c.get_parameters_for_import(_key_id(p), alg, _IMPORT_WRAPPING_SPECS[spec])
    return {"KeyId": _short(r.key_id), "ImportToken": _b(r.import_token),
            "PublicKey": _b(r.public_key), "TokenExpireTime": _time(r.parameters_valid_to)}


def import_key_material(c: KmsClient, p: Params) -> dict[str, Any]:
    expire = _int(p, "KeyMaterialExpireUnix", 0)  # seconds since the epoch; 0: never
    if expire < 0:
        raise E.Validation("KeyMaterialExpireUnix is 0 (never) or a time in seconds")
    c.import_key_material(_key_id(p), _b64(p, "ImportToken"), _b64(p, "EncryptedKeyMaterial"),
                          float(expire) if expire else None,
                          "KEY_MATERIAL_EXPIRES" if expire else "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return {}


def get_random_password(c: KmsClient, p: Params) -> dict[str, Any]:
    def flag(name: str) -> bool:
        v = (_opt(p, name) or "false").lower()
        if v not in ("true", "false"):
            raise E.Validation(f"the parameter {name} must be true or false")
        return v == "true"

    pw = c.get_random_password(
        _int(p, "PasswordLength", 32), exclude_characters=_opt(p, "ExcludeCharacters") or "",
        exclude_numbers=flag("ExcludeNumbers"), exclude_punctuation=flag("ExcludePunctuation"),
        exclude_uppercase=flag("ExcludeUppercase"), exclude_lowercase=flag("ExcludeLowercase"),
        require_each_included_type=(_opt(p, "RequireEachIncludedType") or "true").lower()
        == "true")
    return {"RandomPassword": pw}


# --- key versions, asymmetric keys, tags ---------------------------------------------------

SIGNING: Final = {"RSA_PSS_SHA_256": "RSASSA_PSS_SHA_256",
                  "RSA_PKCS1_SHA_256": "RSASSA_PKCS1_V1_5_SHA_256",
                  "ECDSA_SHA_256": "ECDSA_SHA_256", "SM2DSA": "SM2DSA"}
ENCRYPTION: Final = {"RSAES_OAEP_SHA_256": "RSAES_OAEP_SHA_256",
                     "RSAES_OAEP_SHA_1": "RSAES_OAEP_SHA_1", "SM2PKE": "SM2PKE"}


def _version_out(key_id: str, v: Any) -> dict[str, Any]:
    return {"KeyId": key_id, "KeyVersionId": v.version_id, "CreationDate": _time(v.created)}


def create_key_version(c: KmsClient, p: Params) -> dict[str, Any]:
    v = c.rotate_key_on_demand(_key_id(p))
    return {"KeyVersion": _version_out(v.key_id, v)}


def _versions(c: KmsClient, key_id: str) -> tuple[Any, ...]:
    return c.list_key_rotations(key_id)


def list_key_versions(c: KmsClient, p: Params) -> dict[str, Any]:
    number, size = _page(p)
    versions = _versions(c, _key_id(p))
    chosen = versions[(number - 1) * size:number * size]
    return {"KeyVersions": {"KeyVersion": [_version_out(v.key_id, v) for v in chosen]},
            "TotalCount": len(versions), "PageNumber": number, "PageSize": size}


def describe_key_version(c: KmsClient, p: Params) -> dict[str, Any]:
    wanted = _p(p, "KeyVersionId")
    for v in _versions(c, _key_id(p)):
        if v.version_id == wanted:
            return {"KeyVersion": _version_out(v.key_id, v)}
    raise E.NotFound(f"key version {wanted} does not exist")


def _asymmetric(c: KmsClient, p: Params) -> KeyRecord:
    """The key, once the given KeyVersionId is its version (an asymmetric key has one)."""
    rec = c.describe_key(_key_id(p))
    if _p(p, "KeyVersionId") != rec.primary_version:
        raise E.NotFound("the key version does not exist")
    return rec


def _algorithm(p: Params, table: Mapping[str, str]) -> str:
    name = _p(p, "Algorithm")
    if name not in table:
        raise E.Validation(f"Algorithm must be one of {sorted(table)}")
    return table[name]


def asymmetric_sign(c: KmsClient, p: Params) -> dict[str, Any]:
    rec = _asymmetric(c, p)
    sig, _ = c.sign(rec.key_id, _b64(p, "Digest"), _algorithm(p, SIGNING), "DIGEST")
    return {"KeyId": rec.key_id, "KeyVersionId": rec.primary_version, "Value": _b(sig)}


def asymmetric_verify(c: KmsClient, p: Params) -> dict[str, Any]:
    rec = _asymmetric(c, p)
    try:
        c.verify(rec.key_id, _b64(p, "Digest"), _b64(p, "Value"), _algorithm(p, SIGNING),
                 "DIGEST")
        ok = True
    except E.InvalidSignature:
        ok = False
    return {"KeyId": rec.key_id, "KeyVersionId": rec.primary_version, "Value": ok}


def asymmetric_encrypt(c: KmsClient, p: Params) -> dict[str, Any]:
    rec = _asymmetric(c, p)
    r = c.encrypt(rec.key_id, _b64(p, "Plaintext"), None, _algorithm(p, ENCRYPTION))
    return {"KeyId": rec.key_id, "KeyVersionId": rec.primary_version,
            "CiphertextBlob": _b(r.ciphertext_blob)}


def asymmetric_decrypt(c: KmsClient, p: Params) -> dict[str, Any]:
    rec = _asymmetric(c, p)
    r = c.decrypt(_b64(p, "CiphertextBlob"), None, rec.key_id, _algorithm(p, ENCRYPTION))
    return {"KeyId": rec.key_id, "KeyVersionId": rec.primary_version,
            "Plaintext": _b(r.plaintext)}


def public_key_pem(der: bytes) -> str:
    """A SubjectPublicKeyInfo (DER) as PEM, as Alibaba's GetPublicKey answers."""
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"


def get_public_key(c: KmsClient, p: Params) -> dict[str, Any]:
    rec = _asymmetric(c, p)
    pem = public_key_pem(c.get_public_key(rec.key_id).public_key)
    return {"KeyId": rec.key_id, "KeyVersionId": rec.primary_version, "PublicKey": pem}


_INTERVAL: Final = re.compile(r"(\d{1,9})([dhms])")
_UNIT_SECONDS: Final = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def update_rotation_policy(c: KmsClient, p: Params) -> dict[str, Any]:
    enable = (_p(p, "EnableAutomaticRotation")).lower()
    if enable not in ("true", "false"):
        raise E.Validation("EnableAutomaticRotation must be true or false")
    key = _key_id(p)
    if enable == "false":
        c.disable_key_rotation(key)
        return {}
    m = _INTERVAL.fullmatch(_p(p, "RotationInterval"))
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else -1
    if seconds % 86400 or not 7 <= seconds // 86400 <= 730:
        raise E.Validation("RotationInterval is 7 to 730 whole days, e.g. 30d or 2592000s")
    c.enable_key_rotation(key, seconds // 86400)
    return {}


def _json_list(p: Params, name: str) -> list[Any]:
    doc = _json(_p(p, name), name, "a JSON list")
    if not isinstance(doc, list):
        raise E.Validation(f"the parameter {name} must be a JSON list")
    return doc


def tag_resource(c: KmsClient, p: Params) -> dict[str, Any]:
    pairs = []
    for t in _json_list(p, "Tags"):
        if not isinstance(t, dict) or not isinstance(t.get("TagKey"), str) \
                or not isinstance(t.get("TagValue", ""), str):
            raise E.Validation("Tags is a JSON list of {TagKey, TagValue}")
        pairs.append((t["TagKey"], t.get("TagValue", "")))
    c.tag_resource(_key_id(p), pairs)
    return {}


def untag_resource(c: KmsClient, p: Params) -> dict[str, Any]:
    keys = _json_list(p, "TagKeys")
    c.untag_resource(_key_id(p), keys)
    return {}


def list_resource_tags(c: KmsClient, p: Params) -> dict[str, Any]:
    key = _key_id(p)
    tags = c.list_resource_tags(key)
    return {"Tags": {"Tag": [{"KeyId": key, "TagKey": k, "TagValue": v} for k, v in tags]}}


# --- secret handlers ----------------------------------------------------------------------


def _stage_list(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    stages = _json(raw, "VersionStages", "a JSON list")
    if not isinstance(stages, list):
        raise E.Validation("VersionStages must be a JSON list")
    return [STAGES.get(s, s) if isinstance(s, str) else s for s in stages]


def _stages_out(stages: tuple[str, ...]) -> dict[str, list[str]]:
    return {"VersionStage": [_STAGE_NAMES.get(s, s) for s in stages]}


def _secret_value(p: Params) -> dict[str, Any]:
    data = _p(p, "SecretData")
    kind = _opt(p, "SecretDataType") or "text"
    if kind == "binary":
        try:
            return {"secret_binary": base64.b64decode(data, validate=True)}
        except (binascii.Error, ValueError):
            raise E.Validation("binary SecretData must be base64") from None
    if kind != "text":
        raise E.Validation("SecretDataType must be text or binary")
    return {"secret_string": data}


def create_secret(c: KmsClient, p: Params) -> dict[str, Any]:
    rec, v = c.create_secret(_p(p, "SecretName"), description=_opt(p, "Description") or "",
                             kms_key_id=_opt(p, "EncryptionKeyId"),
                             client_request_token=_p(p, "VersionId"), **_secret_value(p))
    return {"Arn": rec.arn, "SecretName": rec.name,
            "VersionId": v.version_id if v is not None else None}


def get_secret_value(c: KmsClient, p: Params) -> dict[str, Any]:
    stage = _opt(p, "VersionStage")
    sv = c.get_secret_value(_p(p, "SecretName"), _opt(p, "VersionId"),
                            STAGES.get(stage, stage) if stage is not None else None)
    return {"SecretName": sv.secret.name, "VersionId": sv.version.version_id,
            "SecretDataType": "binary" if sv.binary else "text",
            "SecretData": _b(sv.value) if sv.binary else sv.value.decode(),
            "VersionStages": _stages_out(sv.version.stages),
            "CreateTime": _time(sv.version.created)}


def put_secret_value(c: KmsClient, p: Params) -> dict[str, Any]:
    rec, v = c.put_secret_value(_p(p, "SecretName"), client_request_token=_p(p, "VersionId"),
                                version_stages=_stage_list(_opt(p, "VersionStages")),
                                **_secret_value(p))
    return {"SecretName": rec.name, "VersionId": v.version_id,
            "VersionStages": _stages_out(v.stages)}


def describe_secret(c: KmsClient, p: Params) -> dict[str, Any]:
    rec, _ = c.describe_secret(_p(p, "SecretName"))
    out: dict[str, Any] = {"Arn": rec.arn, "SecretName": rec.name,
                           "Description": rec.description, "CreateTime": _time(rec.created),
                           "UpdateTime": _time(rec.last_changed),
                           "AutomaticRotation": "Enabled" if rec.rotation_enabled
                           else "Disabled", "SecretType": "Generic"}
    if rec.kms_key_id is not None:
        out["EncryptionKeyId"] = rec.kms_key_id
    if rec.deletion_date is not None:
        out["PlannedDeleteTime"] = _time(rec.deletion_date)
    if rec.last_rotated is not None:
        out["LastRotationDate"] = _time(rec.last_rotated)
    if rec.next_rotation is not None and rec.rotation_enabled:
        out["NextRotationDate"] = _time(rec.next_rotation)
    if rec.tags:
        out["Tags"] = {"Tag": [{"TagKey": k, "TagValue": v} for k, v in rec.tags]}
    return out


def list_secrets(c: KmsClient, p: Params) -> dict[str, Any]:
    number, size = _page(p)
    rows: list[Any] = []
    token = None
    while True:
        page = c.list_secrets(100, token)
        rows += page.items
        token = page.next_token
        if token is None:
            break
    chosen = rows[(number - 1) * size:number * size]
    return {"SecretList": {"Secret": [
        {"SecretName": r.name, "CreateTime": _time(r.created),
         "UpdateTime": _time(r.last_changed),
         "PlannedDeleteTime": _time(r.deletion_date)} for r, _ in chosen]},
        "TotalCount": len(rows), "PageNumber": number, "PageSize": size}


def delete_secret(c: KmsClient, p: Params) -> dict[str, Any]:
    force = (_opt(p, "ForceDeleteWithoutRecovery") or "false").lower() == "true"
    days = _opt(p, "RecoveryWindowInDays")
    rec = c.delete_secret(_p(p, "SecretName"), force_delete_without_recovery=force,
                          recovery_window_in_days=None if force or days is None
                          else _int(p, "RecoveryWindowInDays", 30))
    return {"SecretName": rec.name, "PlannedDeleteTime": _time(rec.deletion_date)}


def restore_secret(c: KmsClient, p: Params) -> dict[str, Any]:
    return {"SecretName": c.restore_secret(_p(p, "SecretName")).name}


def rotate_secret(c: KmsClient, p: Params) -> dict[str, Any]:
    rec, version = c.rotate_secret(_p(p, "SecretName"),
                                   client_request_token=_opt(p, "VersionId"))
    return {"Arn": rec.arn, "SecretName": rec.name, "VersionId": version}


_KEY_OPS: Final[dict[str, Callable[[KmsClient, Params], dict[str, Any]]]] = {
    "CreateKey": create_key,
    "DescribeKey": describe_key,
    "ListKeys": list_keys,
    "EnableKey": _simple("enable_key"),
    "DisableKey": _simple("disable_key"),
    "ScheduleKeyDeletion": schedule_key_deletion,
    "CancelKeyDeletion": _simple("cancel_key_deletion"),
    "Encrypt": encrypt,
    "Decrypt": decrypt,
    "ReEncrypt": re_encrypt,
    "GenerateDataKey": generate_data_key,
    "GenerateDataKeyWithoutPlaintext": generate_data_key_without_plaintext,
    "GetRandomPassword": get_random_password,
    "ExportDataKey": export_data_key,
    "GenerateAndExportDataKey": generate_and_export_data_key,
    "GetParametersForImport": get_parameters_for_import,
    "ImportKeyMaterial": import_key_material,
    "CreateKeyVersion": create_key_version,
    "UpdateRotationPolicy": update_rotation_policy,
    "ListKeyVersions": list_key_versions,
    "DescribeKeyVersion": describe_key_version,
    "AsymmetricSign": asymmetric_sign,
    "AsymmetricVerify": asymmetric_verify,
    "AsymmetricEncrypt": asymmetric_encrypt,
    "AsymmetricDecrypt": asymmetric_decrypt,
    "GetPublicKey": get_public_key,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListResourceTags": list_resource_tags,
}
_ALIAS_OPS: Final[dict[str, Callable[[KmsClient, Params], dict[str, Any]]]] = {
    "CreateAlias": create_alias,
    "UpdateAlias": update_alias,
    "DeleteAlias": delete_alias,
    "ListAliases": list_aliases,
    "ListAliasesByKeyId": list_aliases_by_key_id,
}
_SECRET_OPS: Final[dict[str, Callable[[KmsClient, Params], dict[str, Any]]]] = {
    "CreateSecret": create_secret,
    "GetSecretValue": get_secret_value,
    "PutSecretValue": put_secret_value,
    "DescribeSecret": describe_secret,
    "ListSecrets": list_secrets,
    "DeleteSecret": delete_secret,
    "RestoreSecret": restore_secret,
    "RotateSecret": rotate_secret,
}
#: Every action, with the kind of resource a not-found refers to.
OPERATIONS: Final[dict[str, tuple[str, Callable[[KmsClient, Params], dict[str, Any]]]]] = {
    **{a: ("key", h) for a, h in _KEY_OPS.items()},
    **{a: ("alias", h) for a, h in _ALIAS_OPS.items()},
    **{a: ("secret", h) for a, h in _SECRET_OPS.items()},
}
BLOCKING: Final = frozenset({"CreateKey", "CreateKeyVersion", "UpdateRotationPolicy",
                             "GetParametersForImport", "ImportKeyMaterial",
                             "TagResource", "UntagResource",
                             "EnableKey", "DisableKey", "ScheduleKeyDeletion",
                             "CancelKeyDeletion", "CreateAlias", "UpdateAlias", "DeleteAlias",
                             "CreateSecret", "PutSecretValue", "DeleteSecret",
                             "RestoreSecret", "RotateSecret"})


# --- the front end ------------------------------------------------------------------------


def _request_id() -> str:
    """A RequestId in Alibaba's shape (a UUID's, upper case) of 16 random bytes (a third
    of uuid4()'s cost, on every request)."""
    h = os.urandom(16).hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class AlibabaFrontend:
    """Alibaba Cloud KMS OpenAPI, RPC style (see the module docstring)."""

    name = "alibaba-openapi"

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.verifier = AcsVerifier(auth.creds.secret_for)

    def accepts(self, req: Request) -> bool:
        if req.path != "/" or req.method not in ("POST", "GET"):
            return False
        if "x-acs-action" in req.headers:
            return True
        return "Action=" in req.query and "SignatureMethod=" in req.query

    def _answer(self, status: int, code: str, message: str, op: str, request_id: str
                ) -> Answer:
        body = orjson.dumps({"Code": code, "Message": message, "RequestId": request_id,
                             "Recommend": "", "HostId": "hsmpool"})
        return Answer(status, body, _JSON, op, code)

    def prepare(self, req: Request) -> Call | Answer:
        request_id = _request_id()
        params = parse_query(req.query)
        query_params = dict(params)
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if req.body and ctype == "application/x-www-form-urlencoded":
            try:
                form = parse_query(req.body.decode())
            except UnicodeDecodeError:
                return self._answer(400, "InvalidParameter", "the body is not UTF-8", "-",
                                    request_id)
            params.update(form)
        # ACS3 signs in the Authorization header; v1 in the parameters (its requests may
        # carry x-acs-action too).
        acs3 = "Signature" not in params
        op = params.get("Action") or req.headers.get("x-acs-action", "")
        version = params.get("Version") or req.headers.get("x-acs-version", "")
        entry = OPERATIONS.get(op)
        if entry is None:
            return self._answer(404, "InvalidAction.NotFound",
                                "Specified api is not found, please check your url and "
                                "method.", "-", request_id)
        if version != VERSION:
            return self._answer(400, "InvalidVersion", f"the API version is {VERSION}", op,
                                request_id)
        try:
            self.auth.fresh()  # a revoked access key is refused within 50 ms
            if acs3:
                akid = self.verifier.verify_acs3(req.method, req.path, query_params,
                                                 req.headers, req.body)
            else:
                akid = self.verifier.verify_v1(req.method, params)
            client = self.auth.client(akid, req.peer, req.headers.get("x-forwarded-for"))
        except AuthError as exc:
            return self._answer(_AUTH_STATUS.get(exc.code, 400), exc.code, exc.message, op,
                                request_id)
        except (E.KeyUnavailable, E.DependencyTimeout) as exc:
            code, status = WIRE_ERRORS[exc.kind]
            return self._answer(status, code, exc.message, op, request_id)
        except E.KmsError:
            return self._answer(404, "InvalidAccessKeyId.NotFound",
                                "Specified access key is not found.", op, request_id)
        resource, handler = entry

        def run() -> Answer:
            try:
                out = handler(client, params)
            except E.KmsError as exc:
                code, status = (_NOT_FOUND.get(resource, WIRE_ERRORS["NotFound"])
                                if exc.kind == "NotFound" else WIRE_ERRORS[exc.kind])
                return self._answer(status, code, exc.message, op, request_id)
            except Exception:  # noqa: BLE001 - a bug of ours: log the type, never the data
                log.exception("internal error in %s", op)
                return self._answer(500, "InternalFailure", "internal error", op, request_id)
            out["RequestId"] = request_id
            return Answer(200, orjson.dumps(out), _JSON, op, "ok")

        p = client.principal
        caller = f"{p.instance}/{p.name}" if p is not None else None
        return Call(op, client.principal_id, op in BLOCKING, run, caller, client.source_ip)

    def throttled(self, operation: str) -> Answer:
        return self._answer(400, "Throttling.User", "Request was denied due to user flow "
                            "control.", operation, _request_id())

    def timed_out(self, operation: str) -> Answer:
        return self._answer(503, "ServiceUnavailable", "the request did not finish in time; "
                            "retry", operation, _request_id())

    def internal_error(self, operation: str) -> Answer:
        return self._answer(500, "InternalFailure", "internal error", operation,
                            _request_id())
