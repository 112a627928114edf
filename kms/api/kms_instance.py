"""The KMS-instance API (Alibaba Cloud's ``dkms-gcs`` protocol) on its own HTTPS port.

What the KMS-instance SDKs (``alibabacloud-dkms-gcs``; ``alibabacloud-kms-python-sdk``'s
clients) send: ``POST /`` with a protobuf body, the API's name in ``x-kms-apiname``
(version ``dkms-gcs-0.2``), signed with an application access point's client key
(:mod:`kms.api.kms_instance_auth`). Answers are protobuf messages; errors the ``Error``
message (``StatusCode``, ``ErrorCode``, ``ErrorMessage``, ``RequestId``) with the HTTP status,
which is how the SDKs decode them. Every API is one call of the same service the other front
ends use, with a caller whose policy is the access point's.

Ciphertexts (symmetric keys):

* ``Encrypt``: ``CiphertextBlob`` is this service's ciphertext (:mod:`kms.ciphertext`),
  ``Iv`` its nonce, and the header ``x-kms-migrationkeyversionid`` names the key version
  (36-character UUID) as the SDKs' transfer client expects; ``Decrypt`` takes them back (an
  ``Iv`` or version header that disagrees with the blob is refused). The service chooses
  every IV: a caller's ``Iv`` on Encrypt is refused.
* ``AdvanceEncrypt`` / ``AdvanceGenerateDataKey``: the self-describing layout the SDKs
  expect, ``"$" | 0x00 | 0x02 | key version (36 ASCII) | nonce (12) | ciphertext | tag (16)``;
  ``AdvanceDecrypt`` needs nothing else (the transfer client re-attaches the first three
  bytes, so the algorithm is taken from the key, not from them).
* ``Aad`` is authenticated: it is bound as the encryption context
  ``{"kms-instance:Aad": base64(Aad)}`` (so a ciphertext made here with an Aad decrypts
  through the other front ends with that context, and only with it).
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from kms import ciphertext as ctf
from kms import errors as E
from kms.api import protowire as pw
from kms.api.alibaba import ENCRYPTION, SIGNING, STAGES, WIRE_ERRORS, public_key_pem
from kms.api.auth import Authenticator
from kms.api.kms_instance_auth import ClientKeyVerifier, Refused
from kms.api.netaddr import source_address
from kms.api.pipeline import Answer, Call, Headers, Request
from kms.service import KmsClient

log = logging.getLogger("hsmpool.server")

API_VERSION: Final = "dkms-gcs-0.2"
_PROTOBUF: Final = b"application/x-protobuf"
AAD_CONTEXT_KEY: Final = "kms-instance:Aad"
VERSION_HEADER: Final = "x-kms-migrationkeyversionid"
#: In a handler's parameters and answer: the key version (32 hex digits) of the request's
#: version header / of the answer's (sent as that header, as a 36-character UUID).
_VERSION: Final = "_version"
_VERSION_HEADER_B: Final = VERSION_HEADER.encode()
_ADVANCE_HEAD: Final = b"$\x00\x02"
_EKT_LEN: Final = 36
_MIN_ADVANCE: Final = len(_ADVANCE_HEAD) + _EKT_LEN + ctf.NONCE_LEN + ctf.TAG_LEN
MAX_PLAINTEXT: Final = 6144
_STAGE_NAMES: Final = {v: k for k, v in STAGES.items()}
_SYMMETRIC_ALGORITHMS: Final = {"AES_GCM": "SYMMETRIC_DEFAULT", "SM4_GCM": "SYMMETRIC_DEFAULT"}

Handler = Callable[[KmsClient, dict[str, Any]], dict[str, Any]]

_S, _B, _I, _BOOL, _R = "string", "bytes", "int32", "bool", "repeated string"
ERROR: Final[pw.Schema] = {1: ("StatusCode", _I), 2: ("ErrorCode", _S),
                           3: ("ErrorMessage", _S), 4: ("RequestId", _S)}


# --- helpers -------------------------------------------------------------------------------


def _dashed(version_hex: str) -> str:
    return str(uuid.UUID(hex=version_hex))


def _version_hex(text: str) -> str:
    try:
        return uuid.UUID(text).hex
    except ValueError:
        raise E.InvalidCiphertext("the ciphertext is not valid") from None


def _context(p: Mapping[str, Any]) -> dict[str, str] | None:
    aad = p.get("Aad")
    return {AAD_CONTEXT_KEY: base64.b64encode(aad).decode()} if aad else None


def _need(p: Mapping[str, Any], name: str) -> Any:
    v = p.get(name)
    if v is None or v == "" or v == b"":
        raise E.Validation(f"the parameter {name} is missing")
    return v


def _plaintext(p: Mapping[str, Any]) -> bytes:
    data: bytes = _need(p, "Plaintext")
    if len(data) > MAX_PLAINTEXT:
        raise E.Validation(f"Plaintext is longer than {MAX_PLAINTEXT} bytes")
    return data


def _symmetric(p: Mapping[str, Any]) -> None:
    """A symmetric request: the IV is the service's, the algorithm one it offers."""
    if p.get("Iv"):
        raise E.Validation("the service chooses the IV: send no Iv")
    algorithm = p.get("Algorithm")
    if algorithm and algorithm not in _SYMMETRIC_ALGORITHMS:
        raise E.Validation(f"Algorithm must be one of {sorted(_SYMMETRIC_ALGORITHMS)} "
                           f"or an asymmetric one")


def _algorithm_name(native: bytes) -> str:
    """The algorithm of one of this service's ciphertexts, as the SDKs name it."""
    return "SM4_GCM" if native[ctf.HEADER_LEN - 1] == ctf.ALG_SM4_GCM else "AES_GCM"


def _advance(native: bytes) -> tuple[bytes, str]:
    parsed = ctf.parse(native)
    dashed = _dashed(parsed.version_id)
    return _ADVANCE_HEAD + dashed.encode() + parsed.body, dashed


def _from_advance(c: KmsClient, blob: bytes) -> bytes:
    if len(blob) < _MIN_ADVANCE or blob[:1] != b"$":
        raise E.InvalidCiphertext("the ciphertext is not valid")
    start = len(_ADVANCE_HEAD)
    try:
        version = blob[start:start + _EKT_LEN].decode("ascii")
    except UnicodeDecodeError:
        raise E.InvalidCiphertext("the ciphertext is not valid") from None
    return c.ciphertext_from_parts(_version_hex(version), blob[start + _EKT_LEN:])


def _short(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _primary(c: KmsClient, arn: str) -> str | None:
    """The version an asymmetric or HMAC key used (its primary) in the call that just
    returned ``arn``."""
    return c.used_version(arn)


def _nonce(native: bytes) -> bytes:
    return native[ctf.HEADER_LEN:ctf.HEADER_LEN + ctf.NONCE_LEN]


# --- handlers ------------------------------------------------------------------------------


def encrypt(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    key_id = _need(p, "KeyId")
    algorithm = p.get("Algorithm") or ""
    if algorithm in ENCRYPTION:
        r = c.encrypt(key_id, _plaintext(p), None, ENCRYPTION[algorithm])
        return {"KeyId": _short(r.key_id), "CiphertextBlob": r.ciphertext_blob,
                "Algorithm": algorithm, _VERSION: _primary(c, r.key_id)}
    _symmetric(p)
    r = c.encrypt(key_id, _plaintext(p), _context(p))
    return {"KeyId": _short(r.key_id), "CiphertextBlob": r.ciphertext_blob,
            "Iv": _nonce(r.ciphertext_blob), "Algorithm": algorithm or
            _algorithm_name(r.ciphertext_blob), "PaddingMode": p.get("PaddingMode", ""),
            _VERSION: c.ciphertext_version(r.ciphertext_blob)}


def decrypt(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    blob: bytes = _need(p, "CiphertextBlob")
    algorithm = p.get("Algorithm") or ""
    if algorithm in ENCRYPTION:
        r = c.decrypt(blob, None, _need(p, "KeyId"), ENCRYPTION[algorithm])
        return {"KeyId": _short(r.key_id), "Plaintext": r.plaintext, "Algorithm": algorithm,
                _VERSION: r.key_version}
    if algorithm and algorithm not in _SYMMETRIC_ALGORITHMS:
        raise E.Validation(f"Algorithm must be one of {sorted(_SYMMETRIC_ALGORITHMS)} or an "
                           "asymmetric one")
    parsed = ctf.parse(blob)
    iv = p.get("Iv")
    version = p.get(_VERSION)  # the x-kms-migrationkeyversionid request header
    if (iv and iv != _nonce(blob)) or (version and _version_hex(version) != parsed.version_id):
        raise E.InvalidCiphertext("the ciphertext is not valid")
    r = c.decrypt(blob, _context(p), p.get("KeyId") or None)
    return {"KeyId": _short(r.key_id), "Plaintext": r.plaintext,
            "Algorithm": algorithm or ("SM4_GCM" if parsed.algorithm == ctf.ALG_SM4_GCM
                                       else "AES_GCM"),
            "PaddingMode": p.get("PaddingMode", ""), _VERSION: r.key_version}


def advance_encrypt(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    key_id = _need(p, "KeyId")
    _symmetric(p)
    r = c.encrypt(key_id, _plaintext(p), _context(p))
    blob, version = _advance(r.ciphertext_blob)
    return {"KeyId": _short(r.key_id), "CiphertextBlob": blob,
            "Iv": _nonce(r.ciphertext_blob), "Algorithm": _algorithm_name(r.ciphertext_blob),
            "KeyVersionId": version, _VERSION: _version_hex(version)}


def advance_decrypt(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    native = _from_advance(c, _need(p, "CiphertextBlob"))
    iv = p.get("Iv")
    if iv and iv != _nonce(native):
        raise E.InvalidCiphertext("the ciphertext is not valid")
    r = c.decrypt(native, _context(p), p.get("KeyId") or None)
    return {"KeyId": _short(r.key_id), "Plaintext": r.plaintext,
            "Algorithm": "SM4_GCM" if native[17] == ctf.ALG_SM4_GCM else "AES_GCM",
            "KeyVersionId": _dashed(r.key_version), _VERSION: r.key_version}


def _data_key(c: KmsClient, p: dict[str, Any]) -> tuple[Any, str]:
    key_id = _need(p, "KeyId")
    n = p.get("NumberOfBytes") or 32
    if not 1 <= n <= 1024:
        raise E.Validation("NumberOfBytes must be 1..1024")
    return c.generate_data_key(key_id, None, n, _context(p)), key_id


def generate_data_key(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    algorithm = p.get("Algorithm")
    if algorithm and algorithm not in _SYMMETRIC_ALGORITHMS:
        raise E.Validation(f"Algorithm must be one of {sorted(_SYMMETRIC_ALGORITHMS)}")
    r, key_id = _data_key(c, p)
    return {"KeyId": _short(r.key_id), "Iv": _nonce(r.ciphertext_blob),
            "Plaintext": r.plaintext, "CiphertextBlob": r.ciphertext_blob,
            "Algorithm": algorithm or _algorithm_name(r.ciphertext_blob),
            _VERSION: c.ciphertext_version(r.ciphertext_blob)}


def advance_generate_data_key(c: KmsClient, p: dict[str, Any]
                              ) -> dict[str, Any]:
    r, key_id = _data_key(c, p)
    blob, version = _advance(r.ciphertext_blob)
    return {"KeyId": _short(r.key_id), "Iv": _nonce(r.ciphertext_blob),
            "Plaintext": r.plaintext, "CiphertextBlob": blob,
            "Algorithm": _algorithm_name(r.ciphertext_blob), "KeyVersionId": version,
            _VERSION: _version_hex(version)}


def _signing(p: Mapping[str, Any]) -> tuple[str, str]:
    name = _need(p, "Algorithm")
    if name not in SIGNING:
        raise E.Validation(f"Algorithm must be one of {sorted(SIGNING)}")
    kind = p.get("MessageType") or "RAW"
    if kind not in ("RAW", "DIGEST"):
        raise E.Validation("MessageType must be RAW or DIGEST")
    return SIGNING[name], kind


def sign(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    algorithm, kind = _signing(p)
    message = p.get("Message") or p.get("Digest") or b""
    key_id = _need(p, "KeyId")
    signature, arn = c.sign(key_id, message, algorithm, kind)
    return {"KeyId": _short(arn), "Signature": signature, "Algorithm": p["Algorithm"],
            "MessageType": kind, _VERSION: _primary(c, arn)}


def verify(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    algorithm, kind = _signing(p)
    message = p.get("Message") or p.get("Digest") or b""
    key_id = _need(p, "KeyId")
    try:
        arn = c.verify(key_id, message, _need(p, "Signature"), algorithm, kind)
        ok = True
    except E.InvalidSignature:
        arn, ok = key_id, False
    return {"KeyId": _short(arn), "Value": ok, "Algorithm": p["Algorithm"],
            "MessageType": kind, _VERSION: _primary(c, arn)}


def get_public_key(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    info = c.get_public_key(_need(p, "KeyId"))
    return {"KeyId": _short(info.key_id), "PublicKey": public_key_pem(info.public_key),
            _VERSION: _primary(c, info.key_id)}


def hmac(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    mac, arn = c.generate_mac(_need(p, "KeyId"), _need(p, "Message"), None)
    return {"KeyId": _short(arn), "Signature": mac, _VERSION: _primary(c, arn)}


def generate_random(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    return {"Random": c.generate_random(p.get("Length") or 32)}


def get_secret_value(c: KmsClient, p: dict[str, Any]) -> dict[str, Any]:
    from kms.api.alibaba import _time  # one time format for both Alibaba front ends

    stage = p.get("VersionStage") or None
    sv = c.get_secret_value(_need(p, "SecretName"), p.get("VersionId") or None,
                            STAGES.get(stage, stage) if stage is not None else None)
    rec = sv.secret
    out: dict[str, Any] = {
        "SecretName": rec.name, "SecretType": "Generic",
        "SecretData": base64.b64encode(sv.value).decode() if sv.binary else sv.value.decode(),
        "SecretDataType": "binary" if sv.binary else "text",
        "VersionStages": [_STAGE_NAMES.get(s, s) for s in sv.version.stages],
        "VersionId": sv.version.version_id, "CreateTime": _time(sv.version.created),
        "AutomaticRotation": "Enabled" if rec.rotation_enabled else "Disabled"}
    if rec.last_rotated is not None:
        out["LastRotationDate"] = _time(rec.last_rotated)
    if rec.rotation_enabled and rec.next_rotation is not None:
        out["NextRotationDate"] = _time(rec.next_rotation)
    return out


# --- the APIs ------------------------------------------------------------------------------

_KEY_ENC: Final[pw.Schema] = {1: ("KeyId", _S), 2: ("Plaintext", _B), 3: ("Algorithm", _S),
                              4: ("Aad", _B), 5: ("Iv", _B), 6: ("PaddingMode", _S)}
_KEY_DEC: Final[pw.Schema] = {1: ("CiphertextBlob", _B), 2: ("KeyId", _S),
                              3: ("Algorithm", _S), 4: ("Aad", _B), 5: ("Iv", _B),
                              6: ("PaddingMode", _S)}

#: API name -> (request schema, handler, response schema).
APIS: Final[dict[str, tuple[pw.Schema, Handler, pw.Schema]]] = {
    "Encrypt": (_KEY_ENC, encrypt, {
        1: ("KeyId", _S), 2: ("CiphertextBlob", _B), 3: ("Iv", _B), 4: ("RequestId", _S),
        5: ("Algorithm", _S), 6: ("PaddingMode", _S)}),
    "Decrypt": (_KEY_DEC, decrypt, {
        1: ("KeyId", _S), 2: ("Plaintext", _B), 3: ("RequestId", _S), 4: ("Algorithm", _S),
        5: ("PaddingMode", _S)}),
    "AdvanceEncrypt": (_KEY_ENC, advance_encrypt, {
        1: ("KeyId", _S), 2: ("CiphertextBlob", _B), 3: ("Iv", _B), 4: ("RequestId", _S),
        5: ("Algorithm", _S), 6: ("PaddingMode", _S), 7: ("KeyVersionId", _S)}),
    "AdvanceDecrypt": (_KEY_DEC, advance_decrypt, {
        1: ("KeyId", _S), 2: ("Plaintext", _B), 3: ("RequestId", _S), 4: ("Algorithm", _S),
        5: ("PaddingMode", _S), 6: ("KeyVersionId", _S)}),
    "GenerateDataKey": ({1: ("KeyId", _S), 2: ("Algorithm", _S), 3: ("NumberOfBytes", _I),
                         4: ("Aad", _B)}, generate_data_key, {
        1: ("KeyId", _S), 2: ("Iv", _B), 3: ("Plaintext", _B), 4: ("CiphertextBlob", _B),
        5: ("RequestId", _S), 6: ("Algorithm", _S)}),
    "AdvanceGenerateDataKey": ({1: ("KeyId", _S), 2: ("NumberOfBytes", _I), 3: ("Aad", _B)},
                               advance_generate_data_key, {
        1: ("KeyId", _S), 2: ("Iv", _B), 3: ("Plaintext", _B), 4: ("CiphertextBlob", _B),
        5: ("RequestId", _S), 6: ("Algorithm", _S), 7: ("KeyVersionId", _S)}),
    "Sign": ({1: ("KeyId", _S), 2: ("Digest", _B), 3: ("Algorithm", _S), 4: ("Message", _B),
              5: ("MessageType", _S)}, sign, {
        1: ("KeyId", _S), 2: ("Signature", _B), 3: ("RequestId", _S), 4: ("Algorithm", _S),
        5: ("MessageType", _S)}),
    "Verify": ({1: ("KeyId", _S), 2: ("Digest", _B), 3: ("Signature", _B),
                4: ("Algorithm", _S), 5: ("Message", _B), 6: ("MessageType", _S)}, verify, {
        1: ("KeyId", _S), 2: ("Value", _BOOL), 3: ("RequestId", _S), 4: ("Algorithm", _S),
        5: ("MessageType", _S)}),
    "GetPublicKey": ({1: ("KeyId", _S)}, get_public_key, {
        1: ("KeyId", _S), 2: ("PublicKey", _S), 3: ("RequestId", _S)}),
    "Hmac": ({1: ("KeyId", _S), 2: ("Message", _B)}, hmac, {
        1: ("KeyId", _S), 2: ("Signature", _B), 3: ("RequestId", _S)}),
    "GenerateRandom": ({1: ("Length", _I)}, generate_random, {
        1: ("Random", _B), 2: ("RequestId", _S)}),
    "GetSecretValue": ({1: ("SecretName", _S), 2: ("VersionStage", _S), 3: ("VersionId", _S),
                        4: ("FetchExtendedConfig", _BOOL)}, get_secret_value, {
        1: ("SecretName", _S), 2: ("SecretType", _S), 3: ("SecretData", _S),
        4: ("SecretDataType", _S), 5: ("VersionStages", _R), 6: ("VersionId", _S),
        7: ("CreateTime", _S), 8: ("RequestId", _S), 9: ("LastRotationDate", _S),
        10: ("NextRotationDate", _S), 11: ("ExtendedConfig", _S),
        12: ("AutomaticRotation", _S), 13: ("RotationInterval", _S)}),
}
_SECRET_APIS: Final = frozenset({"GetSecretValue"})


class KmsInstanceFrontend:
    """The KMS-instance protocol, on the KMS-instance listener (see the module docstring)."""

    name = "alibaba-kms-instance"
    listener = "kms-instance"

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.verifier = ClientKeyVerifier(auth.kms, auth.creds)
        auth.on_forget.append(self.verifier.forget)
        self._clients: dict[tuple[str, str | None], KmsClient] = {}
        auth.on_forget.append(self._clients.clear)

    def accepts(self, req: Request) -> bool:
        return req.listener == self.listener and req.method == "POST" and req.path == "/"

    def _error(self, status: int, code: str, message: str, op: str, request_id: str
               ) -> Answer:
        body = pw.encode({"StatusCode": status, "ErrorCode": code, "ErrorMessage": message,
                          "RequestId": request_id}, ERROR)
        return Answer(status, body, _PROTOBUF, op, code)

    def prepare(self, req: Request) -> Call | Answer:
        request_id = str(uuid.uuid4())
        op = req.headers.get("x-kms-apiname", "")
        api = APIS.get(op)
        if api is None:
            return self._error(404, "InvalidAction.NotFound", f"unknown API {op[:64]!r}",
                               "-", request_id)
        if req.headers.get("x-kms-apiversion") != API_VERSION:
            return self._error(400, "InvalidParam", f"the API version is {API_VERSION}", op,
                               request_id)
        source_ip = source_address(req.peer, req.headers.get("x-forwarded-for"),
                                   self.auth.trusted_proxies)
        try:
            self.auth.fresh()  # a revoked client key is refused within 50 ms
            key = self.verifier.verify(req.method, req.headers, req.body, source_ip)
        except Refused as exc:
            return self._error(exc.status, exc.code, exc.message, op, request_id)
        except (E.KeyUnavailable, E.DependencyTimeout) as exc:  # the store, or the HSMs
            code, status = WIRE_ERRORS[exc.kind]
            return self._error(status, code, exc.message, op, request_id)
        schema, handler, out_schema = api
        try:
            params = pw.decode(req.body, schema)
        except pw.ProtoError as exc:
            return self._error(400, "InvalidParam", f"the request body is not a valid {op} "
                               f"message: {exc}", op, request_id)
        version = req.headers.get(VERSION_HEADER)
        if version:
            params[_VERSION] = version
        try:
            client = self._client(key.principal, key.client_key_id, source_ip)
        except (E.KeyUnavailable, E.DependencyTimeout) as exc:  # the instance's account
            code, status = WIRE_ERRORS[exc.kind]
            return self._error(status, code, exc.message, op, request_id)
        secret = op in _SECRET_APIS

        def run() -> Answer:
            try:
                out = handler(client, params)
            except E.KmsError as exc:
                code, status = (("Forbidden.ResourceNotFound", 404)
                                if secret and exc.kind == "NotFound"
                                else WIRE_ERRORS[exc.kind])
                return self._error(status, code, exc.message, op, request_id)
            except Exception:  # noqa: BLE001 - a bug of ours: log the type, never the data
                log.exception("internal error in %s", op)
                return self._error(500, "InternalFailure", "internal error", op, request_id)
            out["RequestId"] = request_id
            used = out.pop(_VERSION, None)
            headers: Headers = () if not used else (
                (_VERSION_HEADER_B, _dashed(used).encode()),)
            return Answer(200, pw.encode(out, out_schema), _PROTOBUF, op, "ok", headers)

        p = key.principal
        return Call(op, p.id, False, run, f"{p.instance}/{p.name}", source_ip)

    def _client(self, principal: Any, client_key_id: str, source_ip: str | None) -> KmsClient:
        cache_key = (client_key_id, source_ip)
        client = self._clients.get(cache_key)
        if client is None:
            client = self.auth.kms.client(principal.instance, principal, source_ip)
            if len(self._clients) > 10_000:
                self._clients.clear()
            self._clients[cache_key] = client
        return client

    def throttled(self, operation: str) -> Answer:
        return self._error(429, "Rejected.Throttling", "QPS Limit Exceeded", operation,
                           str(uuid.uuid4()))

    def timed_out(self, operation: str) -> Answer:
        return self._error(503, "ServiceUnavailable", "the request did not finish in time; "
                           "retry", operation, str(uuid.uuid4()))

    def internal_error(self, operation: str) -> Answer:
        return self._error(500, "InternalFailure", "internal error", operation,
                           str(uuid.uuid4()))
