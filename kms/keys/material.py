"""Key material backends: where a key version's material lives and how it is used.

Every key spec has one backend (:func:`backend`), so the operations never branch on the
spec:

* **HSM** backends keep the material in a blob wrapped by the instance's domain key and use
  it only inside a token (:class:`hsmpool.Instance`): AES-256-GCM, RSA and EC signing, RSA
  decryption, HMAC-SHA-2;
* **software** backends keep a secret in a SOFTWARE blob, unwrapped by a token once per
  process, and compute in this process with :mod:`hsmpool.gm` (SM4-GCM, SM2, HMAC-SM3);
  the key objects are cached per version (:class:`VersionCache`).

Public-key work (verifying, encrypting to a public key) needs no token: the backends do it
with the version's SubjectPublicKeyInfo. Failures of the pool become service errors here.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import hsmpool
from hsmpool import Instance, KeyBlob
from hsmpool.gm import SM4GCM, SM2PrivateKey, SM2PublicKey, hmac_sm3
from hsmpool.gm import DecryptionError as GmDecryptionError
from hsmpool.gm import InvalidSignature as GmInvalidSignature
from hsmpool.gm import InvalidTag as GmInvalidTag
from hsmpool.instance import SignAlgorithm
from kms import ciphertext as ctf
from kms import errors as E
from kms.model import SPECS, KeySpec, KeyVersion

T = TypeVar("T")

__all__ = ["Backend", "VersionCache", "backend", "pool_error"]

_SIGN_ALG: Final = {a.value: a for a in SignAlgorithm}
_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "SHA_1": hashes.SHA1(), "SHA_256": hashes.SHA256(), "SHA_384": hashes.SHA384(),
    "SHA_512": hashes.SHA512()}


def pool_error(exc: hsmpool.HsmPoolError) -> E.KmsError:
    """The service's error for a failure of the pool (never its message: it names tokens)."""
    if isinstance(exc, hsmpool.InvalidTagError):
        return E.InvalidCiphertext("the ciphertext is not valid")
    if isinstance(exc, hsmpool.InvalidBlobError):
        return E.Internal("stored key material could not be used")
    if isinstance(exc, hsmpool.DecryptionError):
        return E.InvalidCiphertext("the ciphertext could not be decrypted")
    if isinstance(exc, hsmpool.DeadlineExceededError):
        return E.DependencyTimeout("the HSMs did not answer in time; retry")
    if isinstance(exc, hsmpool.PoolUnavailableError):
        # Every token of the partition is down or failed: the HSMs are a dependency that is
        # out for now (a 503 on every front end, retried by the SDKs), as a store outage is.
        return E.DependencyTimeout("no HSM is available to serve the request; retry")
    if isinstance(exc, hsmpool.UnsupportedOperationError):
        return E.KeyUnavailable("no HSM is available to serve the request")
    return E.Internal("the HSM pool failed")


class VersionCache:
    """Per process: parsed blobs and software key objects, by version id (LRU)."""

    def __init__(self, size: int = 4096) -> None:
        self._blobs: dict[str, KeyBlob] = {}
        self._objects: OrderedDict[str, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def blob(self, v: KeyVersion) -> KeyBlob:
        kb = self._blobs.get(v.version_id)
        if kb is None:
            if v.blob is None:
                raise E.InvalidState("the key material of this key has been deleted")
            kb = KeyBlob.parse(v.blob)
            self._blobs[v.version_id] = kb
        return kb

    def software(self, inst: Instance, v: KeyVersion, make: Callable[[bytes], T]) -> T:
        """The software key object of a version, made from its secret on first use."""
        obj = self._objects.get(v.version_id)
        if obj is None:
            obj = make(self.secret(inst, v))
            with self._lock:
                self._objects[v.version_id] = obj
                while len(self._objects) > self._size:
                    self._objects.popitem(last=False)
        return obj

    def secret(self, inst: Instance, v: KeyVersion) -> bytes:
        try:
            return inst.export_secret(self.blob(v))
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None

    def forget(self, versions: Sequence[KeyVersion], inst: Instance) -> None:
        """Drop the cached objects of these versions (and their handles in the tokens)."""
        with self._lock:
            for v in versions:
                self._objects.pop(v.version_id, None)
                kb = self._blobs.pop(v.version_id, None)
                if kb is not None:
                    inst.invalidate(kb)


class Backend:
    """The operations of one key spec's material. Each backend offers only what its keys
    do; the operations check usage and algorithms before they get here."""

    #: The ciphertext format's algorithm byte (symmetric backends).
    algorithm: int = 0

    def __init__(self, spec: KeySpec) -> None:
        self.spec = spec
        self.info = SPECS[spec]

    # material

    def make(self, inst: Instance) -> tuple[bytes, bytes]:
        """New material: (blob, DER public key or b"")."""
        kb = inst.generate(self.info.pool_spec)
        return bytes(kb), kb.public_key

    def new_version(self, inst: Instance, key_id: str, number: int, now: float) -> KeyVersion:
        try:
            blob, public = self.make(inst)
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None
        return KeyVersion(uuid.uuid4().hex, key_id, number, now, blob, public)

    # symmetric encryption: body = nonce || ciphertext || tag

    def seal(self, cache: VersionCache, inst: Instance, v: KeyVersion, plaintext: bytes,
             aad: bytes) -> bytes:
        raise E.UnsupportedOperation(f"{self.spec.value} keys do not encrypt")

    def open(self, cache: VersionCache, inst: Instance, v: KeyVersion, body: bytes,
             aad: bytes) -> bytes:
        raise E.InvalidCiphertext("the ciphertext is not valid")

    # asymmetric

    def sign(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes,
             algorithm: str, digest: bool) -> bytes:
        raise E.UnsupportedOperation(f"{self.spec.value} keys do not sign")

    def verify(self, v: KeyVersion, data: bytes, signature: bytes, algorithm: str,
               digest: bool) -> bool:
        return False

    def digest_size(self, algorithm: str) -> int:
        return _HASHES["SHA_" + algorithm[-3:]].digest_size

    def encrypt_to_public(self, v: KeyVersion, data: bytes, algorithm: str) -> bytes:
        raise E.UnsupportedOperation(f"{self.spec.value} keys do not encrypt")

    def decrypt(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes,
                algorithm: str) -> bytes:
        raise E.UnsupportedOperation(f"{self.spec.value} keys do not decrypt")

    # MAC

    def mac(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes) -> bytes:
        raise E.UnsupportedOperation(f"{self.spec.value} keys do not make MACs")


class _HsmAes(Backend):
    algorithm = ctf.ALG_AES_GCM

    def seal(self, cache: VersionCache, inst: Instance, v: KeyVersion, plaintext: bytes,
             aad: bytes) -> bytes:
        try:
            return inst.encrypt(cache.blob(v), plaintext, aad)
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None

    def open(self, cache: VersionCache, inst: Instance, v: KeyVersion, body: bytes,
             aad: bytes) -> bytes:
        try:
            return inst.decrypt(cache.blob(v), body, aad)
        except hsmpool.InvalidTagError:
            raise _bad_tag() from None
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None


class _SoftwareSm4(Backend):
    algorithm = ctf.ALG_SM4_GCM

    def make(self, inst: Instance) -> tuple[bytes, bytes]:
        return bytes(inst.generate_secret(self.info.secret_len)), b""

    def seal(self, cache: VersionCache, inst: Instance, v: KeyVersion, plaintext: bytes,
             aad: bytes) -> bytes:
        nonce = os.urandom(ctf.NONCE_LEN)
        return nonce + cache.software(inst, v, SM4GCM).encrypt(nonce, plaintext, aad)

    def open(self, cache: VersionCache, inst: Instance, v: KeyVersion, body: bytes,
             aad: bytes) -> bytes:
        try:
            return cache.software(inst, v, SM4GCM).decrypt(body[:ctf.NONCE_LEN],
                                                           body[ctf.NONCE_LEN:], aad)
        except (GmInvalidTag, ValueError):
            raise _bad_tag() from None


class _HsmAsymmetric(Backend):
    """RSA and EC keys in a token: signing (hash outside), RSA-OAEP decryption."""

    def sign(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes,
             algorithm: str, digest: bool) -> bytes:
        alg = _SIGN_ALG[algorithm]
        try:
            if digest:
                return inst.sign_digest(cache.blob(v), data, alg)
            return inst.sign(cache.blob(v), data, alg)
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None

    def verify(self, v: KeyVersion, data: bytes, signature: bytes, algorithm: str,
               digest: bool) -> bool:
        pk = serialization.load_der_public_key(v.public_key)
        h = _HASHES["SHA_" + algorithm[-3:]]
        chosen: Any = utils.Prehashed(h) if digest else h
        try:
            if isinstance(pk, rsa.RSAPublicKey):
                pad: Any = (padding.PSS(padding.MGF1(h), h.digest_size) if "PSS" in algorithm
                            else padding.PKCS1v15())
                pk.verify(signature, data, pad, chosen)
            elif isinstance(pk, ec.EllipticCurvePublicKey):
                pk.verify(signature, data, ec.ECDSA(chosen))
            else:
                return False
        except (InvalidSignature, ValueError):
            return False
        return True

    def encrypt_to_public(self, v: KeyVersion, data: bytes, algorithm: str) -> bytes:
        pk = serialization.load_der_public_key(v.public_key)
        assert isinstance(pk, rsa.RSAPublicKey)
        h = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
        max_len = pk.key_size // 8 - 2 * h.digest_size - 2
        if len(data) > max_len:
            raise E.Validation(f"the plaintext must be at most {max_len} bytes for this key")
        return pk.encrypt(data, padding.OAEP(padding.MGF1(h), h, None))

    def decrypt(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes,
                algorithm: str) -> bytes:
        try:
            return inst.rsa_decrypt(cache.blob(v), data,
                                    "sha1" if algorithm.endswith("SHA_1") else "sha256")
        except (hsmpool.DecryptionError, ValueError):
            raise _undecryptable() from None
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None


class _SoftwareSm2(Backend):
    def make(self, inst: Instance) -> tuple[bytes, bytes]:
        priv = SM2PrivateKey.generate()
        return bytes(inst.import_secret(priv.to_bytes())), priv.public_key().to_der()

    def _key(self, cache: VersionCache, inst: Instance, v: KeyVersion) -> SM2PrivateKey:
        return cache.software(inst, v, SM2PrivateKey.from_bytes)

    def sign(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes,
             algorithm: str, digest: bool) -> bytes:
        key = self._key(cache, inst, v)
        return key.sign_digest(data) if digest else key.sign(data)

    def verify(self, v: KeyVersion, data: bytes, signature: bytes, algorithm: str,
               digest: bool) -> bool:
        pub = SM2PublicKey.from_der(v.public_key)
        try:
            if digest:
                pub.verify_digest(signature, data)
            else:
                pub.verify(signature, data)
        except (GmInvalidSignature, ValueError):
            return False
        return True

    def digest_size(self, algorithm: str) -> int:
        return 32  # SM3

    def encrypt_to_public(self, v: KeyVersion, data: bytes, algorithm: str) -> bytes:
        try:
            return SM2PublicKey.from_der(v.public_key).encrypt(data)
        except ValueError:
            raise E.Validation("the plaintext cannot be encrypted with SM2") from None

    def decrypt(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes,
                algorithm: str) -> bytes:
        try:
            return self._key(cache, inst, v).decrypt(data)
        except (GmDecryptionError, ValueError):
            raise _undecryptable() from None


class _HsmHmac(Backend):
    def mac(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes) -> bytes:
        try:
            return inst.hmac(cache.blob(v), data)
        except hsmpool.HsmPoolError as exc:
            raise pool_error(exc) from None


class _SoftwareHmacSm3(Backend):
    def make(self, inst: Instance) -> tuple[bytes, bytes]:
        return bytes(inst.generate_secret(self.info.secret_len)), b""

    def mac(self, cache: VersionCache, inst: Instance, v: KeyVersion, data: bytes) -> bytes:
        return hmac_sm3(cache.software(inst, v, bytes), data)


def _bad_tag() -> E.KmsError:
    return E.InvalidCiphertext("the ciphertext is not valid or the encryption context does "
                               "not match")


def _undecryptable() -> E.KmsError:
    return E.InvalidCiphertext("the ciphertext could not be decrypted")


_BACKENDS: Final[dict[KeySpec, Backend]] = {
    KeySpec.SYMMETRIC_DEFAULT: _HsmAes(KeySpec.SYMMETRIC_DEFAULT),
    KeySpec.SM4: _SoftwareSm4(KeySpec.SM4),
    **{s: _HsmAsymmetric(s) for s in (KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096,
                                      KeySpec.ECC_NIST_P256, KeySpec.ECC_SECG_P256K1)},
    KeySpec.SM2: _SoftwareSm2(KeySpec.SM2),
    **{s: _HsmHmac(s) for s in (KeySpec.HMAC_256, KeySpec.HMAC_384, KeySpec.HMAC_512)},
    KeySpec.HMAC_SM3: _SoftwareHmacSm3(KeySpec.HMAC_SM3),
}
assert set(_BACKENDS) == set(KeySpec), "every key spec needs a backend"


def backend(spec: KeySpec) -> Backend:
    return _BACKENDS[spec]
