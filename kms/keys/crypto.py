"""Cryptographic operations on keys: encrypt, decrypt, re-encrypt, data keys and data key
pairs, sign and verify, public keys, MACs, random bytes.

Each runs the pipeline of :mod:`kms.caller` (its :class:`~kms.caller.Op` below) and does
its work through the key's material backend (:mod:`kms.keys.material`), so nothing here
depends on where a key's material lives. Symmetric ciphertexts are the self-describing
format of :mod:`kms.ciphertext`: the header and the canonical encryption context are the
AAD.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hsmpool.gm import SM2PrivateKey
from kms import ciphertext as ctf
from kms import errors as E
from kms.caller import Caller, Op, check_bytes, declare, int_in
from kms.keys import grants as _grants
from kms.keys.material import backend
from kms.model import KeyRecord, KeyUsage, KeyVersion

_ENC: Final = KeyUsage.ENCRYPT_DECRYPT
ENCRYPT: Final = Op("kms:Encrypt", usage=_ENC)
DECRYPT: Final = Op("kms:Decrypt", usage=_ENC)
RE_ENCRYPT_FROM: Final = Op("kms:ReEncryptFrom", usage=_ENC)
RE_ENCRYPT_TO: Final = Op("kms:ReEncryptTo", usage=_ENC)
RE_ENCRYPT: Final = Op("kms:ReEncrypt", usage=_ENC)
GENERATE_DATA_KEY: Final = Op("kms:GenerateDataKey", usage=_ENC)
GENERATE_DATA_KEY_WITHOUT_PLAINTEXT: Final = Op("kms:GenerateDataKeyWithoutPlaintext",
                                                usage=_ENC)
GENERATE_DATA_KEY_PAIR: Final = Op("kms:GenerateDataKeyPair", usage=_ENC)
GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT: Final = Op(
    "kms:GenerateDataKeyPairWithoutPlaintext", usage=_ENC)
SIGN: Final = Op("kms:Sign", usage=KeyUsage.SIGN_VERIFY)
VERIFY: Final = Op("kms:Verify", usage=KeyUsage.SIGN_VERIFY)
GET_PUBLIC_KEY: Final = Op("kms:GetPublicKey")
GENERATE_MAC: Final = Op("kms:GenerateMac", usage=KeyUsage.GENERATE_VERIFY_MAC)
VERIFY_MAC: Final = Op("kms:VerifyMac", usage=KeyUsage.GENERATE_VERIFY_MAC)
GENERATE_RANDOM: Final = Op("kms:GenerateRandom")
declare(ENCRYPT, DECRYPT, RE_ENCRYPT_FROM, RE_ENCRYPT_TO, RE_ENCRYPT, GENERATE_DATA_KEY,
        GENERATE_DATA_KEY_WITHOUT_PLAINTEXT, GENERATE_DATA_KEY_PAIR,
        GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT, SIGN, VERIFY, GET_PUBLIC_KEY, GENERATE_MAC,
        VERIFY_MAC, GENERATE_RANDOM)
_DATA_KEY_OPS: Final = {True: GENERATE_DATA_KEY, False: GENERATE_DATA_KEY_WITHOUT_PLAINTEXT}
_DATA_KEY_PAIR_OPS: Final = {True: GENERATE_DATA_KEY_PAIR,
                             False: GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT}

_DATA_KEY_SPECS: Final = {"AES_256": 32, "AES_128": 16, "SM4": 16}
_PAIR_SPECS: Final = ("RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
                      "ECC_NIST_P521", "ECC_SECG_P256K1", "SM2")
_SYMMETRIC_NAMES: Final = frozenset({"SYMMETRIC_DEFAULT", "SM4_GCM"})
MAX_MESSAGE: Final = 4096


@dataclass(frozen=True, slots=True)
class EncryptResult:
    ciphertext_blob: bytes
    key_id: str  # ARN
    encryption_algorithm: str


@dataclass(frozen=True, slots=True)
class DecryptResult:
    plaintext: bytes
    key_id: str  # ARN
    encryption_algorithm: str
    key_version: str


@dataclass(frozen=True, slots=True)
class DataKey:
    plaintext: bytes | None
    ciphertext_blob: bytes
    key_id: str


@dataclass(frozen=True, slots=True)
class DataKeyPair:
    private_key_plaintext: bytes | None
    private_key_ciphertext_blob: bytes
    public_key: bytes
    key_id: str
    key_pair_spec: str


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    key_id: str
    public_key: bytes
    key_spec: str
    key_usage: str
    encryption_algorithms: tuple[str, ...]
    signing_algorithms: tuple[str, ...]


class KeyCrypto(Caller):
    """The cryptographic operations (see the module docstring)."""

    def _seal(self, rec: KeyRecord, plaintext: bytes, context: Mapping[str, str] | None
              ) -> tuple[bytes, KeyVersion]:
        v = self._primary(rec)
        b = backend(rec.spec)
        headers = self.kms._headers
        hdr = headers.get(v.version_id)
        if hdr is None:
            hdr = headers[v.version_id] = ctf.header(v.version_bytes, b.algorithm)
        aad = hdr + ctf.canonical_context(context) if context else hdr
        return hdr + b.seal(self._versions_cache, self.inst, v, plaintext, aad), v

    def _open(self, blob: object, context: Mapping[str, str] | None, action: str,
              expect_key: str | None, tokens: Sequence[tuple[str, str]] = ()
              ) -> tuple[KeyRecord, KeyVersion, bytes]:
        parsed = ctf.parse(blob)  # type: ignore[arg-type]
        self.kms._fresh()
        v = self.kms._version(parsed.version_id)
        if v is None:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        rec = self.kms._key(v.key_id)
        if rec is None or rec.instance != self.instance_name or rec.purged:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        # Authorised on the ciphertext's key first: a caller who may not use it learns
        # nothing about the KeyId it named (whether that alias or key exists).
        if self.principal is not None and not self._allow(
                action, self._names(rec), context, key=rec, tokens=tokens):
            raise E.NotFound("key does not exist")
        if expect_key is not None:
            self._expect_key(rec, expect_key)
        DECRYPT.check(rec)
        if not rec.info.symmetric:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        if v.number < rec.min_decrypt_version:
            raise E.InvalidCiphertext(
                f"the ciphertext was made with version {v.number}, below the key's minimum "
                f"decryption version {rec.min_decrypt_version}")
        if v.blob is None:
            raise E.InvalidCiphertext("the key material of this ciphertext has been deleted")
        b = backend(rec.spec)
        if parsed.algorithm != b.algorithm:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        aad = parsed.header + ctf.canonical_context(context)
        return rec, v, b.open(self._versions_cache, self.inst, v, parsed.body, aad)

    def _expect_key(self, rec: KeyRecord, expect_key: str) -> None:
        """Decrypt's KeyId must name the ciphertext's key (IncorrectKey if it names another;
        NotFound if it names none). Checked only once the caller may use that key."""
        wanted, _ = self._resolve(expect_key)
        if wanted.key_id != rec.key_id:
            raise E.IncorrectKey("the ciphertext was not made with the given key")

    def ciphertext_version(self, blob: bytes) -> str:
        """The key version id a symmetric ciphertext of this service names (no check of
        its integrity: that is Decrypt's)."""
        return ctf.parse(blob).version_id

    def used_version(self, key_arn: str) -> str | None:
        """The primary version of the key a result of this caller just named (its
        ``key_id`` ARN): for protocols whose answers name the version used (the KMS-instance
        API). Not an operation: no authorisation and no audit record, so front ends pass
        only ARNs that a successful call of this caller returned."""
        rec = self.kms._key(key_arn.rsplit("/", 1)[-1])
        if rec is None or rec.instance != self.instance_name:
            return None
        return rec.primary_version

    def ciphertext_from_parts(self, version_id: str, body: bytes) -> bytes:
        """This service's ciphertext of key version ``version_id`` (32 hex digits) whose
        nonce, ciphertext and tag are ``body``, for a protocol that carries the parts apart
        (:mod:`kms.api.kms_instance`). No check of access or integrity: Decrypt does both.
        Raises InvalidCiphertext for a version of no symmetric key."""
        self.kms._fresh()
        v = self.kms._version(version_id)
        rec = self.kms._key(v.key_id) if v is not None else None
        if v is None or rec is None or not rec.info.symmetric:
            raise E.InvalidCiphertext("the ciphertext is not valid")
        return ctf.header(v.version_bytes, backend(rec.spec).algorithm) + bytes(body)

    def encrypt(self, key_id: str, plaintext: bytes,
                encryption_context: Mapping[str, str] | None = None,
                encryption_algorithm: str = "SYMMETRIC_DEFAULT", *,
                grant_tokens: Sequence[str] = ()) -> EncryptResult:
        """Encrypt under a key. For SM4 keys ``encryption_algorithm`` may also be
        ``"SM4_GCM"`` (a name for their SYMMETRIC_DEFAULT); the result names the algorithm
        as asked."""

        def body() -> EncryptResult:
            data = check_bytes(plaintext, "Plaintext", max_len=self.kms.settings.max_plaintext)
            rec = self._key_op(ENCRYPT, key_id, encryption_context,
                               tokens=_grants.parse_tokens(grant_tokens) if grant_tokens
                               else ())
            info = rec.info
            if encryption_algorithm not in info.encryption_algorithms and \
                    encryption_algorithm not in info.encryption_aliases:
                raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support "
                                        f"{encryption_algorithm}")
            if info.symmetric:
                blob, v = self._seal(rec, data, encryption_context)
            else:
                if encryption_context:
                    raise E.Validation("asymmetric encryption takes no EncryptionContext")
                v = self._primary(rec)
                blob = backend(rec.spec).encrypt_to_public(v, data, encryption_algorithm)
            self._audit(ENCRYPT.action, rec, v.version_id, "ok", encryption_context)
            return EncryptResult(blob, rec.arn, encryption_algorithm)

        return self._run(ENCRYPT.action, body)

    def decrypt(self, ciphertext_blob: bytes,
                encryption_context: Mapping[str, str] | None = None,
                key_id: str | None = None,
                encryption_algorithm: str = "SYMMETRIC_DEFAULT", *,
                grant_tokens: Sequence[str] = ()) -> DecryptResult:
        def body() -> DecryptResult:
            tokens = _grants.parse_tokens(grant_tokens) if grant_tokens else ()
            if not isinstance(encryption_algorithm, str):
                raise E.Validation("EncryptionAlgorithm must be a string")
            if encryption_algorithm not in _SYMMETRIC_NAMES:
                if key_id is None:
                    raise E.Validation("KeyId is required for asymmetric decryption")
                return self._asym_decrypt(key_id, ciphertext_blob, encryption_algorithm,
                                          tokens)
            rec, v, plaintext = self._open(ciphertext_blob, encryption_context, DECRYPT.action,
                                           key_id, tokens)
            if encryption_algorithm != "SYMMETRIC_DEFAULT" and \
                    not rec.info.offers_encryption(encryption_algorithm):
                raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support "
                                        f"{encryption_algorithm}")
            self._audit(DECRYPT.action, rec, v.version_id, "ok", encryption_context)
            return DecryptResult(plaintext, rec.arn, encryption_algorithm, v.version_id)

        return self._run(DECRYPT.action, body)

    def _asym_decrypt(self, key_id: str, blob: bytes, algorithm: str,
                      tokens: Sequence[tuple[str, str]]) -> DecryptResult:
        rec = self._key_op(DECRYPT, key_id, tokens=tokens)
        if algorithm not in rec.info.encryption_algorithms:
            raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support {algorithm}")
        data = check_bytes(blob, "CiphertextBlob", max_len=6144)
        v = self._primary(rec)
        plaintext = backend(rec.spec).decrypt(self._versions_cache, self.inst, v, data,
                                              algorithm)
        self._audit(DECRYPT.action, rec, v.version_id, "ok")
        return DecryptResult(plaintext, rec.arn, algorithm, v.version_id)

    def re_encrypt(self, ciphertext_blob: bytes, destination_key_id: str,
                   source_encryption_context: Mapping[str, str] | None = None,
                   destination_encryption_context: Mapping[str, str] | None = None,
                   source_key_id: str | None = None, *,
                   grant_tokens: Sequence[str] = ()) -> tuple[EncryptResult, str]:
        """Decrypt under the source key, encrypt under the destination (any symmetric key).
        Returns the new ciphertext and the source key ARN."""

        def body() -> tuple[EncryptResult, str]:
            tokens = _grants.parse_tokens(grant_tokens)
            src, v, plaintext = self._open(ciphertext_blob, source_encryption_context,
                                           RE_ENCRYPT_FROM.action, source_key_id, tokens)
            dst = self._key_op(RE_ENCRYPT_TO, destination_key_id,
                               destination_encryption_context, tokens=tokens)
            if not dst.info.symmetric:
                raise E.InvalidKeyUsage("ReEncrypt needs a symmetric destination key")
            blob, dv = self._seal(dst, plaintext, destination_encryption_context)
            self._audit(RE_ENCRYPT.action, dst, dv.version_id, "ok",
                        destination_encryption_context)
            return EncryptResult(blob, dst.arn, "SYMMETRIC_DEFAULT"), src.arn

        return self._run(RE_ENCRYPT.action, body)

    def generate_data_key(self, key_id: str, key_spec: str | None = None,
                          number_of_bytes: int | None = None,
                          encryption_context: Mapping[str, str] | None = None,
                          *, with_plaintext: bool = True,
                          grant_tokens: Sequence[str] = ()) -> DataKey:
        op = _DATA_KEY_OPS[with_plaintext]
        action = op.action

        def body() -> DataKey:
            # Either KeySpec or NumberOfBytes; neither means AES_256.
            if key_spec is not None and number_of_bytes is not None:
                raise E.Validation("give either KeySpec or NumberOfBytes, not both")
            if number_of_bytes is None:
                spec = "AES_256" if key_spec is None else key_spec
                n = _DATA_KEY_SPECS.get(spec) if isinstance(spec, str) else None
                if n is None:
                    raise E.Validation(f"unknown data key spec {key_spec!r}")
            else:
                n = number_of_bytes
                if not int_in(n, 1, 1024):
                    raise E.Validation("NumberOfBytes must be 1..1024")
            rec = self._key_op(op, key_id, encryption_context,
                               tokens=_grants.parse_tokens(grant_tokens) if grant_tokens
                               else ())
            if not rec.info.symmetric:
                raise E.InvalidKeyUsage("data keys need a symmetric key")
            plaintext = self.inst.random(n)
            blob, v = self._seal(rec, plaintext, encryption_context)
            self._audit(action, rec, v.version_id, "ok", encryption_context)
            return DataKey(plaintext if with_plaintext else None, blob, rec.arn)

        return self._run(action, body)

    def generate_data_key_without_plaintext(self, key_id: str, key_spec: str | None = None,
                                            number_of_bytes: int | None = None,
                                            encryption_context: Mapping[str, str] | None = None,
                                            *, grant_tokens: Sequence[str] = ()) -> DataKey:
        return self.generate_data_key(key_id, key_spec, number_of_bytes, encryption_context,
                                      with_plaintext=False, grant_tokens=grant_tokens)

    def generate_data_key_pair(self, key_id: str, key_pair_spec: str,
                               encryption_context: Mapping[str, str] | None = None,
                               *, with_plaintext: bool = True,
                               grant_tokens: Sequence[str] = ()) -> DataKeyPair:
        op = _DATA_KEY_PAIR_OPS[with_plaintext]
        action = op.action

        def body() -> DataKeyPair:
            if key_pair_spec not in _PAIR_SPECS:
                raise E.Validation(f"unknown KeyPairSpec {key_pair_spec!r}")
            rec = self._key_op(op, key_id, encryption_context,
                               tokens=_grants.parse_tokens(grant_tokens))
            if not rec.info.symmetric:
                raise E.InvalidKeyUsage("data key pairs need a symmetric key")
            private_der, public_der = _make_pair(key_pair_spec)
            blob, v = self._seal(rec, private_der, encryption_context)
            self._audit(action, rec, v.version_id, "ok", encryption_context)
            return DataKeyPair(private_der if with_plaintext else None, blob, public_der,
                               rec.arn, key_pair_spec)

        return self._run(action, body)

    def generate_data_key_pair_without_plaintext(
            self, key_id: str, key_pair_spec: str,
            encryption_context: Mapping[str, str] | None = None, *,
            grant_tokens: Sequence[str] = ()) -> DataKeyPair:
        return self.generate_data_key_pair(key_id, key_pair_spec, encryption_context,
                                           with_plaintext=False, grant_tokens=grant_tokens)

    # --- signing and MAC ---------------------------------------------------------------

    def sign(self, key_id: str, message: bytes, signing_algorithm: str,
             message_type: str = "RAW", *, grant_tokens: Sequence[str] = ()
             ) -> tuple[bytes, str]:
        """Returns (signature, key ARN). ECDSA and SM2 signatures are DER."""

        def body() -> tuple[bytes, str]:
            data = check_bytes(message, "Message", max_len=MAX_MESSAGE)
            rec = self._key_op(SIGN, key_id, tokens=_grants.parse_tokens(grant_tokens))
            _check_sign_args(rec, signing_algorithm, message_type, data)
            v = self._primary(rec)
            sig = backend(rec.spec).sign(self._versions_cache, self.inst, v, data,
                                         signing_algorithm, message_type == "DIGEST")
            self._audit(SIGN.action, rec, v.version_id, "ok")
            return sig, rec.arn

        return self._run(SIGN.action, body)

    def verify(self, key_id: str, message: bytes, signature: bytes, signing_algorithm: str,
               message_type: str = "RAW", *, grant_tokens: Sequence[str] = ()) -> str:
        """Returns the key ARN; raises KMSInvalidSignature if the signature is wrong."""

        def body() -> str:
            data = check_bytes(message, "Message", max_len=MAX_MESSAGE)
            sig = check_bytes(signature, "Signature", max_len=6144)
            rec = self._key_op(VERIFY, key_id, tokens=_grants.parse_tokens(grant_tokens))
            _check_sign_args(rec, signing_algorithm, message_type, data)
            v = self._primary(rec)
            if not backend(rec.spec).verify(v, data, sig, signing_algorithm,
                                            message_type == "DIGEST"):
                self._audit(VERIFY.action, rec, v.version_id, E.InvalidSignature.kind)
                raise E.InvalidSignature("the signature is not valid")
            self._audit(VERIFY.action, rec, v.version_id, "ok")
            return rec.arn

        return self._run(VERIFY.action, body)

    def get_public_key(self, key_id: str, *, grant_tokens: Sequence[str] = ()
                       ) -> PublicKeyInfo:
        def body() -> PublicKeyInfo:
            rec = self._key_op(GET_PUBLIC_KEY, key_id, tokens=_grants.parse_tokens(grant_tokens))
            if rec.info.symmetric or rec.usage is KeyUsage.GENERATE_VERIFY_MAC:
                raise E.UnsupportedOperation("only asymmetric keys have a public key")
            v = self._primary(rec)
            self._audit(GET_PUBLIC_KEY.action, rec, v.version_id, "ok")
            info = rec.info
            return PublicKeyInfo(
                rec.arn, v.public_key, rec.spec.value, rec.usage.value,
                info.encryption_algorithms if rec.usage is KeyUsage.ENCRYPT_DECRYPT else (),
                info.signing_algorithms if rec.usage is KeyUsage.SIGN_VERIFY else ())

        return self._run(GET_PUBLIC_KEY.action, body)

    def _mac(self, op: Op, key_id: str, message: bytes, algorithm: str | None,
             grant_tokens: Sequence[str]) -> tuple[KeyRecord, KeyVersion, bytes]:
        data = check_bytes(message, "Message", max_len=MAX_MESSAGE)
        rec = self._key_op(op, key_id, tokens=_grants.parse_tokens(grant_tokens))
        if algorithm is None and rec.info.mac_algorithms:
            algorithm = rec.info.mac_algorithms[0]  # an HMAC key has one
        if algorithm not in rec.info.mac_algorithms:
            raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support {algorithm}")
        v = self._primary(rec)
        return rec, v, backend(rec.spec).mac(self._versions_cache, self.inst, v, data)

    def generate_mac(self, key_id: str, message: bytes, mac_algorithm: str | None, *,
                     grant_tokens: Sequence[str] = ()) -> tuple[bytes, str]:
        """The MAC of ``message`` and the key's ARN; ``mac_algorithm`` None: the key's own
        (each HMAC key spec has one), for protocols that do not name it."""

        def body() -> tuple[bytes, str]:
            rec, v, mac = self._mac(GENERATE_MAC, key_id, message, mac_algorithm,
                                    grant_tokens)
            self._audit(GENERATE_MAC.action, rec, v.version_id, "ok")
            return mac, rec.arn

        return self._run(GENERATE_MAC.action, body)

    def verify_mac(self, key_id: str, message: bytes, mac: bytes, mac_algorithm: str, *,
                   grant_tokens: Sequence[str] = ()) -> str:
        def body() -> str:
            given = check_bytes(mac, "Mac", max_len=128)
            rec, v, expected = self._mac(VERIFY_MAC, key_id, message, mac_algorithm,
                                         grant_tokens)
            if not hmac.compare_digest(expected, given):
                self._audit(VERIFY_MAC.action, rec, v.version_id, E.InvalidMac.kind)
                raise E.InvalidMac("the MAC is not valid")
            self._audit(VERIFY_MAC.action, rec, v.version_id, "ok")
            return rec.arn

        return self._run(VERIFY_MAC.action, body)

    def generate_random(self, number_of_bytes: int) -> bytes:
        def body() -> bytes:
            if not int_in(number_of_bytes, 1, 1024):
                raise E.Validation("NumberOfBytes must be 1..1024")
            if not self._allow(GENERATE_RANDOM.action, ()):
                raise E.AccessDenied("not allowed to generate random bytes")
            out = self.inst.random(number_of_bytes)
            self._audit(GENERATE_RANDOM.action, None, None, "ok")
            return out

        return self._run(GENERATE_RANDOM.action, body)


def _check_sign_args(rec: KeyRecord, algorithm: str, message_type: str, data: bytes) -> None:
    if message_type not in ("RAW", "DIGEST"):
        raise E.Validation("MessageType must be RAW or DIGEST")
    if algorithm not in rec.info.signing_algorithms:
        raise E.InvalidKeyUsage(f"{rec.spec.value} keys do not support {algorithm}")
    if message_type == "DIGEST":
        size = backend(rec.spec).digest_size(algorithm)
        if len(data) != size:
            raise E.Validation(f"a {algorithm} digest is {size} bytes")


def _make_pair(spec: str) -> tuple[bytes, bytes]:
    """A data key pair made in process memory: (PKCS#8 DER private, SPKI DER public)."""
    if spec == "SM2":
        sm2 = SM2PrivateKey.generate()
        return sm2.to_der(), sm2.public_key().to_der()
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if spec.startswith("RSA_"):
        key = rsa.generate_private_key(65537, int(spec[4:]))
    else:
        curve = {"ECC_NIST_P256": ec.SECP256R1(), "ECC_NIST_P384": ec.SECP384R1(),
                 "ECC_NIST_P521": ec.SECP521R1(), "ECC_SECG_P256K1": ec.SECP256K1()}[spec]
        key = ec.generate_private_key(curve)
    private = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


