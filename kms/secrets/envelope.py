"""How a secret value is sealed: envelope encryption under a KMS key of the instance.

Each version gets its own 256-bit data key from ``GenerateDataKey`` on the secret's KMS key
(so the key's material never leaves its token, and the value may be up to 65,536 bytes,
beyond Encrypt's limit), with the encryption context ``{"SecretARN": <arn>,
"SecretVersionId": <version>}``: a version's envelope opens only as that version of that
secret. The value is AES-256-GCM under the data key, with the ARN and version id as AAD. Format::

    0x01 | len(wrapped data key): 2 bytes, big-endian | wrapped data key | nonce (12) | ct+tag

Opening calls ``Decrypt`` with the same context. The data key's plaintext is dropped at once.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms import errors as E
from kms.keys.crypto import DataKey, DecryptResult

FORMAT: Final = 1
NONCE: Final = 12


class Decrypter(Protocol):
    """What opening an envelope needs: Decrypt (of a :class:`kms.KmsClient`)."""

    def decrypt(self, ciphertext_blob: bytes,
                encryption_context: Mapping[str, str] | None = None) -> DecryptResult: ...


class KeyCaller(Decrypter, Protocol):
    """The two key operations an envelope needs (a :class:`kms.KmsClient`)."""

    def generate_data_key(self, key_id: str, key_spec: str | None = None,
                          number_of_bytes: int | None = None,
                          encryption_context: Mapping[str, str] | None = None) -> DataKey: ...


def context(arn: str, version_id: str) -> dict[str, str]:
    return {"SecretARN": arn, "SecretVersionId": version_id}


def _aad(arn: str, version_id: str) -> bytes:
    """The value's AAD: the secret ARN and version id (neither holds a NUL)."""
    return f"{arn}\x00{version_id}".encode()


def seal(keys: KeyCaller, key_id: str, arn: str, version_id: str, value: bytes) -> bytes:
    ctx = context(arn, version_id)
    dk = keys.generate_data_key(key_id, "AES_256", encryption_context=ctx)
    assert dk.plaintext is not None
    nonce = os.urandom(NONCE)
    body = AESGCM(dk.plaintext).encrypt(nonce, value, _aad(arn, version_id))
    wrapped = dk.ciphertext_blob
    return struct.pack(">BH", FORMAT, len(wrapped)) + wrapped + nonce + body


def open_(keys: Decrypter, arn: str, version_id: str, envelope: bytes) -> bytes:
    """The value; :class:`kms.errors.InvalidCiphertext` if the envelope is not this
    version's (tampered, or moved)."""
    return open_with_key(keys, arn, version_id, envelope)[0]


def open_with_key(keys: Decrypter | None, arn: str, version_id: str, envelope: bytes,
                  data_key: bytes | None = None) -> tuple[bytes, bytes]:
    """(value, data key): with ``data_key`` given (remembered from an earlier opening) no
    key operation runs; else ``keys.decrypt`` opens the wrapped data key."""
    if len(envelope) < 3 or envelope[0] != FORMAT:
        raise E.InvalidCiphertext("the stored secret value is not valid")
    (n,) = struct.unpack_from(">H", envelope, 1)
    wrapped = envelope[3:3 + n]
    nonce = envelope[3 + n:3 + n + NONCE]
    body = envelope[3 + n + NONCE:]
    if len(wrapped) != n or len(nonce) != NONCE or len(body) < 16:
        raise E.InvalidCiphertext("the stored secret value is not valid")
    if data_key is None:
        if keys is None:
            raise ValueError("no data key and no key caller")
        data_key = keys.decrypt(wrapped, encryption_context=context(arn, version_id)).plaintext
    try:
        return AESGCM(data_key).decrypt(nonce, body, _aad(arn, version_id)), data_key
    except InvalidTag:
        raise E.InvalidCiphertext("the stored secret value is not valid") from None
