"""Data keys exported under a caller's public key (Alibaba Cloud's ExportDataKey and
GenerateAndExportDataKey): the data key leaves the service only encrypted to a public key
the caller gives (RSA with OAEP, or SM2), never in the clear.

``export_data_key`` opens a data key's ciphertext (authorised and audited as
``kms:Decrypt``) and encrypts the data key to the public key; ``generate_and_export_data_key``
makes a new data key (``kms:GenerateDataKey``) and returns both its ciphertext under the KMS
key and its encryption to the public key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hsmpool.gm import SM2PublicKey
from kms import errors as E
from kms.keys.crypto import KeyCrypto

WRAPPING: Final = ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1", "SM2PKE")
MAX_PUBLIC_KEY: Final = 4096


@dataclass(frozen=True, slots=True)
class ExportedDataKey:
    exported: bytes  # the data key encrypted to the caller's public key
    ciphertext_blob: bytes | None  # the data key under the KMS key (generate-and-export)
    key_id: str  # ARN of the KMS key
    key_version: str


def encrypt_to(public_key_der: bytes, algorithm: str, data: bytes) -> bytes:
    """``data`` encrypted to a DER SubjectPublicKeyInfo (RSA with OAEP, or SM2)."""
    if algorithm not in WRAPPING:
        raise E.Validation(f"the wrapping algorithm must be one of {list(WRAPPING)}")
    if not isinstance(public_key_der, bytes) or not 0 < len(public_key_der) <= MAX_PUBLIC_KEY:
        raise E.Validation("the public key must be a DER SubjectPublicKeyInfo")
    if algorithm == "SM2PKE":
        try:
            return SM2PublicKey.from_der(public_key_der).encrypt(data)
        except ValueError:
            raise E.Validation("the public key is not an SM2 public key") from None
    try:
        pk = serialization.load_der_public_key(public_key_der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise E.Validation("the public key is not a valid RSA public key") from None
    if not isinstance(pk, rsa.RSAPublicKey) or pk.key_size < 2048:
        raise E.Validation("the public key must be RSA of 2048 bits or more")
    h: hashes.HashAlgorithm = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    return pk.encrypt(data, padding.OAEP(padding.MGF1(h), h, None))


class DataKeyExport(KeyCrypto):
    """The export operations (see the module docstring)."""

    def export_data_key(self, ciphertext_blob: bytes, public_key: bytes,
                        wrapping_algorithm: str,
                        encryption_context: Mapping[str, str] | None = None
                        ) -> ExportedDataKey:
        def body() -> ExportedDataKey:
            rec, v, data_key = self._open(ciphertext_blob, encryption_context, "kms:Decrypt",
                                          None)
            out = encrypt_to(public_key, wrapping_algorithm, data_key)
            self._audit("kms:Decrypt", rec, v.version_id, "ok", encryption_context)
            return ExportedDataKey(out, None, rec.arn, v.version_id)

        result: ExportedDataKey = self._run("kms:Decrypt", body)
        return result

    def generate_and_export_data_key(self, key_id: str, public_key: bytes,
                                     wrapping_algorithm: str, key_spec: str | None = None,
                                     number_of_bytes: int | None = None,
                                     encryption_context: Mapping[str, str] | None = None
                                     ) -> ExportedDataKey:
        encrypt_to(public_key, wrapping_algorithm, b"\x00" * 16)  # refuse a bad key first
        dk = self.generate_data_key(key_id, key_spec, number_of_bytes, encryption_context)
        assert dk.plaintext is not None
        exported = encrypt_to(public_key, wrapping_algorithm, dk.plaintext)
        return ExportedDataKey(exported, dk.ciphertext_blob, dk.key_id,
                               self.ciphertext_version(dk.ciphertext_blob))
