"""BYOK: importing customer key material into EXTERNAL keys (GetParametersForImport,
ImportKeyMaterial, DeleteImportedKeyMaterial), as in AWS KMS, plus SM2PKE (AWS China /
Alibaba Cloud) for the Chinese algorithms.

The :class:`~kms.service.Caller` methods of the same names are thin wrappers over the
functions here.

Wrapping keys. ``get_parameters_for_import`` makes a fresh key pair per call: RSA in the
pool (``Instance.generate``; the private key exists in process memory only as a token-wrapped
blob, and RSA-OAEP decryption runs in a token), SM2 in process memory with its scalar
wrapped at once by a token (``Instance.import_secret``). The wrapped private key, its public
key, the wrapping algorithm and the expiry (``now + settings.import_token_ttl``) are stored in
the ``import_tokens`` table.

Import tokens. The token handed to the caller is 32 random bytes from a token's RNG. The store
keeps only ``SHA-256(token)`` (hex) as the row id, so a copy of the database does not yield
usable tokens. A token is bound to its key and consumed by a successful import (in the same
transaction that writes the material).

Wrapped material, per wrapping algorithm:

- ``RSAES_OAEP_SHA_1`` / ``RSAES_OAEP_SHA_256``: RSA-OAEP (MGF1 with the same hash, empty
  label) of the material under the wrapping public key.
- ``RSA_AES_KEY_WRAP_SHA_1`` / ``RSA_AES_KEY_WRAP_SHA_256``: the first k bytes (k = the
  modulus length) are an ephemeral AES-256 key under RSA-OAEP; the rest is the material under
  AES Key Wrap with Padding (RFC 5649) with that key.
- ``SM2PKE``: SM2 public-key encryption (C1C3C2) under the SM2 wrapping key, GM/T 0009 DER
  or raw ``04||x||y||C3||C2``.

Material, per key spec (checked after unwrapping):

===================  ====================================================================
SYMMETRIC_DEFAULT    32 raw bytes (AES-256)
SM4                  16 raw bytes
HMAC_256/384/512     raw, 32..64 / 48..128 / 64..128 bytes (AWS: at least the hash length,
                     at most the block size for HMAC_256)
HMAC_SM3             raw, 16..64 bytes
RSA_*, ECC_*         DER PKCS#8 PrivateKeyInfo (unencrypted) of that size / curve
SM2                  DER PKCS#8 on the SM2 curve, or the raw 32-byte scalar
===================  ====================================================================

Errors (AWS semantics): a token that is unknown, malformed, consumed or for another key:
InvalidImportToken; expired: ExpiredImportToken; wrapped material that does not decrypt:
InvalidCiphertext; decrypted material of the wrong size or type, or not the material
imported before: IncorrectKeyMaterial; bad arguments (algorithm and spec, ExpirationModel,
ValidTo in the past or more than 365 days ahead): Validation; a key whose origin is not
EXTERNAL: UnsupportedOperation; a key pending deletion: KMSInvalidState.

Re-import. A key remembers a keyed fingerprint of its material (``keys.material_id``, an
HMAC-SHA256 under a per-key random salt kept beside it, over a canonical form of the
material), so only the same material can be imported again, whatever its encoding. A key in
PendingImport whose material was deleted or expired gets its old versions' blobs back, so
ciphertexts made before decrypt again; a key that is Enabled or Disabled keeps its state and
only takes the new expiration.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

import hsmpool
from hsmpool.blob import KeySpec as PoolSpec
from hsmpool.gm import SM2PrivateKey
from kms import errors as E
from kms.caller import Caller, any_state, declare
from kms.keys.lifecycle import CAS_ATTEMPTS, conflict_pause
from kms.model import SPECS, ImportToken, KeyRecord, KeySpec, KeyState, KeyVersion, Origin
from kms.store import Conflict

GET_PARAMETERS_FOR_IMPORT: Final = any_state("kms:GetParametersForImport", durable=True)
IMPORT_KEY_MATERIAL: Final = any_state("kms:ImportKeyMaterial", durable=True)
DELETE_IMPORTED_KEY_MATERIAL: Final = any_state("kms:DeleteImportedKeyMaterial", durable=True)
declare(GET_PARAMETERS_FOR_IMPORT, IMPORT_KEY_MATERIAL, DELETE_IMPORTED_KEY_MATERIAL)

DAY: Final = 86400.0
MAX_VALID_DAYS: Final = 365
TOKEN_LEN: Final = 32
EXPIRES: Final = "KEY_MATERIAL_EXPIRES"
DOES_NOT_EXPIRE: Final = "KEY_MATERIAL_DOES_NOT_EXPIRE"
MAX_WRAPPED: Final = 16384

WRAPPING_ALGORITHMS: Final = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256",
                              "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256", "SM2PKE")
_RSA_WRAPPING: Final = {"RSA_2048": PoolSpec.RSA_2048, "RSA_3072": PoolSpec.RSA_3072,
                        "RSA_4096": PoolSpec.RSA_4096}
WRAPPING_KEY_SPECS: Final = (*_RSA_WRAPPING, "SM2")
_HMAC_SIZES: Final = {KeySpec.HMAC_256: (32, 64), KeySpec.HMAC_384: (48, 128),
                      KeySpec.HMAC_512: (64, 128), KeySpec.HMAC_SM3: (16, 64)}
_RSA_BITS: Final = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}
_CURVES: Final = {KeySpec.ECC_NIST_P256: "secp256r1", KeySpec.ECC_SECG_P256K1: "secp256k1"}


@dataclass(frozen=True, slots=True)
class ImportParameters:
    key_id: str  # ARN
    import_token: bytes
    public_key: bytes  # DER SubjectPublicKeyInfo of the wrapping key
    parameters_valid_to: float


@dataclass(frozen=True, slots=True)
class _CheckedMaterial:
    """Checked material: what goes into the pool, and its canonical identity."""

    spec: KeySpec
    identity: bytes  # canonical form, fingerprinted (never stored)
    value: bytes  # what the pool imports (raw key, PKCS#8 DER, or SM2 scalar)
    public_key: bytes = b""


def _token_id(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


def _fingerprint(salt: bytes, identity: bytes) -> bytes:
    return hmac.new(salt, b"hsmpool-kms-material-v1\x00" + identity, hashlib.sha256).digest()


def _external(rec: KeyRecord) -> None:
    if rec.origin is not Origin.EXTERNAL:
        raise E.UnsupportedOperation(f"key {rec.arn} does not have origin EXTERNAL")


def _pending_deletion(rec: KeyRecord) -> None:
    if rec.state is KeyState.PENDING_DELETION:
        raise E.InvalidState(f"key {rec.arn} is pending deletion")


# --- GetParametersForImport ------------------------------------------------------------

MAX_IMPORT_TOKENS: Final = 8  # unexpired, unused import tokens per key


def get_parameters_for_import(client: Caller, key_id: str, wrapping_algorithm: str,
                              wrapping_key_spec: str) -> ImportParameters:
    if wrapping_algorithm not in WRAPPING_ALGORITHMS:
        raise E.Validation(f"unknown WrappingAlgorithm {wrapping_algorithm!r}")
    if wrapping_key_spec not in WRAPPING_KEY_SPECS:
        raise E.Validation(f"unknown WrappingKeySpec {wrapping_key_spec!r}")
    if (wrapping_algorithm == "SM2PKE") != (wrapping_key_spec == "SM2"):
        raise E.Validation("the SM2PKE wrapping algorithm goes with the SM2 wrapping key spec, "
                           "and only with it")
    rec = client._key_for(GET_PARAMETERS_FOR_IMPORT.action, key_id)
    _external(rec)
    _pending_deletion(rec)
    kms = client.kms
    inst = client.inst
    # Each token holds a wrapping key made in a token (RSA generation takes a second or
    # more): cap the live ones per key, before making another.
    kms.store.delete_expired_import_tokens(rec.key_id, kms.now())
    if kms.store.count_import_tokens(rec.key_id) >= MAX_IMPORT_TOKENS:
        raise E.LimitExceeded(f"key {rec.arn} has {MAX_IMPORT_TOKENS} unused import tokens; "
                              "use one or wait until they expire")
    if wrapping_key_spec == "SM2":
        priv = SM2PrivateKey.generate()
        blob = bytes(inst.import_secret(priv.to_bytes()))
        public = priv.public_key().to_der()
        del priv
    else:
        kb = inst.generate(_RSA_WRAPPING[wrapping_key_spec])
        blob, public = bytes(kb), kb.public_key
    token = inst.random(TOKEN_LEN)
    store = kms.store
    now = kms.now()
    expires = now + kms.settings.import_token_ttl
    store.delete_expired_import_tokens(rec.key_id, now)
    store.put_import_token(ImportToken(_token_id(token), rec.key_id, wrapping_algorithm,
                                       wrapping_key_spec, blob, public, expires))
    client._audit(GET_PARAMETERS_FOR_IMPORT.action, rec, None, "ok")
    return ImportParameters(rec.arn, token, public, expires)


# --- ImportKeyMaterial -----------------------------------------------------------------


def _valid_to(client: Caller, valid_to: float | None, expiration_model: str) -> float | None:
    if expiration_model == DOES_NOT_EXPIRE:
        if valid_to is not None:
            raise E.Validation("ValidTo is only valid with KEY_MATERIAL_EXPIRES")
        return None
    if expiration_model != EXPIRES:
        raise E.Validation(f"unknown ExpirationModel {expiration_model!r}")
    if valid_to is None:
        raise E.Validation("KEY_MATERIAL_EXPIRES needs ValidTo")
    if isinstance(valid_to, bool) or not isinstance(valid_to, int | float):
        raise E.Validation("ValidTo must be a time (seconds since the epoch)")
    now = client.kms.now()
    if not now < valid_to <= now + MAX_VALID_DAYS * DAY:
        raise E.Validation(f"ValidTo must be in the future and at most {MAX_VALID_DAYS} days "
                           "ahead")
    return float(valid_to)


def _token(client: Caller, rec: KeyRecord, import_token: object) -> ImportToken:
    if not isinstance(import_token, bytes | bytearray | memoryview) \
            or len(import_token) != TOKEN_LEN:
        raise E.InvalidImportToken("the import token is not valid")
    row = client.kms.store.get_import_token(_token_id(bytes(import_token)))
    if row is None or row.key_id != rec.key_id:
        raise E.InvalidImportToken("the import token is not valid for this key")
    if row.expires <= client.kms.now():
        client.kms.store.delete_import_token(row.token_id)
        raise E.ExpiredImportToken("the import token has expired")
    return row


def _rsa_oaep(client: Caller, tok: ImportToken, data: bytes) -> bytes:
    hash_name = "sha1" if tok.wrapping_algorithm.endswith("SHA_1") else "sha256"
    try:
        return client.inst.rsa_decrypt(tok.wrapping_blob, data, hash_name)
    except hsmpool.DecryptionError:
        raise E.InvalidCiphertext("the wrapped key material could not be decrypted") from None


def _unwrap(client: Caller, tok: ImportToken, wrapped: bytes) -> bytes:
    alg = tok.wrapping_algorithm
    if alg == "SM2PKE":
        try:
            priv = SM2PrivateKey.from_bytes(client.inst.export_secret(tok.wrapping_blob))
        except hsmpool.InvalidBlobError:
            raise E.Internal("the wrapping key could not be used") from None
        for fmt in ("der", "raw"):
            try:
                return priv.decrypt(wrapped, format=fmt)
            except ValueError:  # includes hsmpool.gm.DecryptionError
                continue
        raise E.InvalidCiphertext("the wrapped key material could not be decrypted")
    if alg.startswith("RSAES_OAEP_"):
        return _rsa_oaep(client, tok, wrapped)
    k = _rsa_bytes(tok)
    if len(wrapped) <= k:
        raise E.InvalidCiphertext("the wrapped key material is too short")
    aes_key = _rsa_oaep(client, tok, wrapped[:k])
    if len(aes_key) != 32:
        raise E.InvalidCiphertext("the ephemeral key must be an AES-256 key")
    try:
        return aes_key_unwrap_with_padding(aes_key, wrapped[k:])
    except InvalidUnwrap:
        raise E.InvalidCiphertext("the wrapped key material could not be decrypted") from None


def _rsa_bytes(tok: ImportToken) -> int:
    return {"RSA_2048": 256, "RSA_3072": 384, "RSA_4096": 512}[tok.wrapping_key_spec]


def _is_pkcs8(der: bytes) -> bool:
    """Outer form of a PrivateKeyInfo: SEQUENCE { INTEGER version, SEQUENCE algorithm, ...}
    (PKCS#1 and SEC 1 keys have an INTEGER or OCTET STRING second)."""

    def skip(pos: int) -> int | None:  # the position after the TLV at pos
        if pos + 2 > len(der):
            return None
        n = der[pos + 1]
        pos += 2
        if n & 0x80:
            w = n & 0x7F
            if not 1 <= w <= 3 or pos + w > len(der):
                return None
            n = int.from_bytes(der[pos:pos + w], "big")
            pos += w
        return pos + n if pos + n <= len(der) else None

    if len(der) < 4 or der[0] != 0x30:
        return False
    inner = skip(0)
    if inner != len(der):
        return False
    pos = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    if pos >= len(der) or der[pos] != 0x02:  # (an empty SEQUENCE: nothing at pos)
        return False
    nxt = skip(pos)
    return nxt is not None and nxt < len(der) and der[nxt] == 0x30


def _bad(spec: KeySpec, what: str) -> E.IncorrectKeyMaterial:
    return E.IncorrectKeyMaterial(f"the key material is not {what} for a {spec.value} key")


def _check_material(spec: KeySpec, material: bytes) -> _CheckedMaterial:
    if spec is KeySpec.SYMMETRIC_DEFAULT or spec is KeySpec.SM4:
        n = 32 if spec is KeySpec.SYMMETRIC_DEFAULT else 16
        if len(material) != n:
            raise _bad(spec, f"{n} bytes")
        return _CheckedMaterial(spec, material, material)
    if spec in _HMAC_SIZES:
        lo, hi = _HMAC_SIZES[spec]
        if not lo <= len(material) <= hi:
            raise _bad(spec, f"{lo}..{hi} bytes")
        return _CheckedMaterial(spec, material, material)
    if spec is KeySpec.SM2:
        try:
            if len(material) == 32:
                priv = SM2PrivateKey.from_bytes(material)
            elif _is_pkcs8(material):
                priv = SM2PrivateKey.from_der(material)
            else:
                raise ValueError("not PKCS#8")
        except (ValueError, TypeError):
            raise _bad(spec, "an SM2 private key (PKCS#8 DER or 32 raw bytes)") from None
        scalar = priv.to_bytes()
        return _CheckedMaterial(spec, b"sm2:" + scalar, scalar, priv.public_key().to_der())
    if not _is_pkcs8(material):
        raise _bad(spec, "a DER PKCS#8 private key")
    try:
        key = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        raise _bad(spec, "a DER PKCS#8 private key") from None
    if spec in _RSA_BITS:
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != _RSA_BITS[spec]:
            raise _bad(spec, f"an RSA {_RSA_BITS[spec]}-bit private key")
        nums = key.private_numbers()
        identity = (f"rsa:{nums.public_numbers.n}:{nums.public_numbers.e}:"
                    f"{min(nums.p, nums.q)}").encode()
    elif spec in _CURVES:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVES[spec]:
            raise _bad(spec, f"an EC private key on {_CURVES[spec]}")
        identity = f"ec:{key.curve.name}:{key.private_numbers().private_value}".encode()
    else:
        raise E.UnsupportedOperation(f"{spec.value} keys cannot be imported")
    return _CheckedMaterial(spec, identity, material)


def _to_pool(client: Caller, m: _CheckedMaterial) -> tuple[bytes, bytes]:
    """Import checked material into a token; returns (wrapped blob, public key DER)."""
    info = SPECS[m.spec]
    try:
        if info.pool_spec is PoolSpec.SECRET:
            return bytes(client.inst.import_secret(m.value)), m.public_key
        kb = client.inst.import_key(info.pool_spec, m.value)
    except ValueError:
        raise E.IncorrectKeyMaterial(f"the key material is not valid for a {m.spec.value} "
                                     "key") from None
    return bytes(kb), kb.public_key


def import_key_material(client: Caller, key_id: str, import_token: bytes,
                        encrypted_key_material: bytes, valid_to: float | None = None,
                        expiration_model: str = DOES_NOT_EXPIRE) -> KeyRecord:
    if not isinstance(encrypted_key_material, bytes | bytearray | memoryview) \
            or not 1 <= len(encrypted_key_material) <= MAX_WRAPPED:
        raise E.Validation(f"EncryptedKeyMaterial must be 1..{MAX_WRAPPED} bytes")
    wrapped = bytes(encrypted_key_material)
    kms = client.kms
    with kms._write_lock:  # one discipline for every key change (kms.keys.lifecycle)
        return _import_cas(client, key_id, import_token, wrapped, valid_to, expiration_model)


def _import_cas(client: Caller, key_id: str, import_token: bytes, wrapped: bytes,
                valid_to: float | None, expiration_model: str) -> KeyRecord:
    kms = client.kms
    store = kms.store
    for attempt in range(CAS_ATTEMPTS):
        rec = client._key_for(IMPORT_KEY_MATERIAL.action, key_id)
        _external(rec)
        _pending_deletion(rec)
        expiry = _valid_to(client, valid_to, expiration_model)
        tok = _token(client, rec, import_token)
        material = _check_material(rec.spec, _unwrap(client, tok, wrapped))
        known = store.material_fingerprint(rec.key_id)
        if known is None:
            salt = secrets.token_bytes(32)
            fp = _fingerprint(salt, material.identity)
        else:
            salt = known[0]
            fp = _fingerprint(salt, material.identity)
            if not hmac.compare_digest(fp, known[1]):
                raise E.IncorrectKeyMaterial("the key material is not the material imported "
                                             "into this key before")
        version: KeyVersion | None = None
        restore: bytes | None = None
        if rec.state is KeyState.PENDING_IMPORT:
            blob, public = _to_pool(client, material)
            versions = store.list_versions(rec.key_id)
            if versions:
                restore, primary = blob, versions[-1].version_id
            else:
                version = KeyVersion(uuid.uuid4().hex, rec.key_id, 1, kms.now(), blob, public,
                                     imported=True)
                primary = version.version_id
            new = rec.evolve(state=KeyState.ENABLED, primary_version=primary,
                             import_valid_to=expiry)
        else:  # Enabled or Disabled: the same material again, a new expiration
            new = rec.evolve(import_valid_to=expiry)
        try:
            store.import_material(rec, new, token_id=tok.token_id, salt=salt, material_id=fp,
                                  version=version, restore_blob=restore)
        except Conflict:
            kms._drop_caches()
            conflict_pause(attempt)
            continue
        except LookupError:
            raise E.InvalidImportToken("the import token is not valid for this key") from None
        except ValueError:
            raise E.IncorrectKeyMaterial("the key material is not the material imported "
                                         "into this key before") from None
        kms._evict_key(new)
        client.inst.invalidate(tok.wrapping_blob)
        client._audit(IMPORT_KEY_MATERIAL.action, new, new.primary_version, "ok")
        return new
    raise E.Internal("the key is changing too fast; retry")


# --- DeleteImportedKeyMaterial ---------------------------------------------------------


def delete_imported_key_material(client: Caller, key_id: str) -> KeyRecord:
    kms = client.kms
    with kms._write_lock:
        for attempt in range(CAS_ATTEMPTS):
            rec = client._key_for(DELETE_IMPORTED_KEY_MATERIAL.action, key_id)
            _external(rec)
            state = (KeyState.PENDING_DELETION if rec.state is KeyState.PENDING_DELETION
                     else KeyState.PENDING_IMPORT)
            new = rec.evolve(state=state, primary_version=None, import_valid_to=None)
            versions = kms.store.list_versions(rec.key_id)
            try:
                kms.store.shred_imported_material(rec, new)
            except Conflict:
                kms._drop_caches()
                conflict_pause(attempt)
                continue
            kms._forget_versions(versions, client.inst)
            kms._evict_key(new)
            client._audit(DELETE_IMPORTED_KEY_MATERIAL.action, new, None, "ok")
            return new
    raise E.Internal("the key is changing too fast; retry")


class KeyImport(Caller):
    """Bring your own key: the operations of the module docstring, as a caller's methods."""

    def get_parameters_for_import(self, key_id: str, wrapping_algorithm: str,
                                  wrapping_key_spec: str) -> ImportParameters:
        """A wrapping public key and an import token for an EXTERNAL key."""
        return self._run("kms:GetParametersForImport",
                         lambda: get_parameters_for_import(
                             self, key_id, wrapping_algorithm, wrapping_key_spec))

    def import_key_material(self, key_id: str, import_token: bytes,
                            encrypted_key_material: bytes, valid_to: float | None = None,
                            expiration_model: str = "KEY_MATERIAL_DOES_NOT_EXPIRE"
                            ) -> KeyRecord:
        """Import wrapped key material (or the same material again) into an EXTERNAL key."""
        return self._run("kms:ImportKeyMaterial", lambda: import_key_material(
            self, key_id, import_token, encrypted_key_material, valid_to, expiration_model))

    def delete_imported_key_material(self, key_id: str) -> KeyRecord:
        """Shred an EXTERNAL key's material (state PendingImport, unless pending deletion);
        the same material can be imported again."""
        return self._run("kms:DeleteImportedKeyMaterial",
                         lambda: delete_imported_key_material(self, key_id))
