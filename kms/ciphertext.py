"""The symmetric ciphertext format and the canonical encryption context.

::

    format 0x01 (1) | key-version id (16, a UUID) | algorithm (1)
    | nonce (12) | ciphertext | tag (16)
    AAD = header (the first 18 bytes) || canonical(encryption context)

Algorithms: 1 = AES-256-GCM (inside a token), 2 = SM4-GCM (RFC 8998, in process memory).
The header is authenticated, so a changed version id or algorithm fails the tag check like
any other edit. Parsing happens before any key is loaded; every failure is
:class:`~kms.errors.InvalidCiphertext`.

The canonical context: entries sorted by key (UTF-8 byte order); each key and value as a
4-byte big-endian length and its UTF-8 bytes. The empty context encodes as nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from kms.errors import InvalidCiphertext, Validation

FORMAT_V1: Final = 1
ALG_AES_GCM: Final = 1
ALG_SM4_GCM: Final = 2
ALGORITHMS: Final = frozenset({ALG_AES_GCM, ALG_SM4_GCM})
HEADER_LEN: Final = 18
NONCE_LEN: Final = 12
TAG_LEN: Final = 16
MIN_LEN: Final = HEADER_LEN + NONCE_LEN + TAG_LEN
MAX_CONTEXT_BYTES: Final = 8192

_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Parsed:
    header: bytes
    version_id: str  # 32 hex digits
    algorithm: int
    body: bytes  # nonce || ciphertext || tag


def header(version_id: bytes, algorithm: int) -> bytes:
    return bytes((FORMAT_V1,)) + version_id + bytes((algorithm,))


def parse(blob: bytes) -> Parsed:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise InvalidCiphertext("ciphertext must be bytes")
    blob = bytes(blob)
    if len(blob) < MIN_LEN or blob[0] != FORMAT_V1 or blob[17] not in ALGORITHMS:
        raise InvalidCiphertext("the ciphertext is not valid")
    return Parsed(blob[:HEADER_LEN], blob[1:17].hex(), blob[17], blob[HEADER_LEN:])


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """Deterministic bytes for an encryption context (bound into the AAD)."""
    if not context:
        return b""
    if not isinstance(context, Mapping):
        raise Validation("EncryptionContext must be a map of strings")
    items: list[tuple[bytes, bytes]] = []
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise Validation("EncryptionContext keys and values must be strings")
        try:
            items.append((k.encode(), v.encode()))
        except UnicodeEncodeError:  # a lone surrogate (from a JSON "\ud800" escape)
            raise Validation("EncryptionContext keys and values must be valid Unicode "
                             "text") from None
    items.sort()
    out = bytearray()
    for kb, vb in items:
        out += _LEN.pack(len(kb)) + kb + _LEN.pack(len(vb)) + vb
    if len(out) > MAX_CONTEXT_BYTES:
        raise Validation("EncryptionContext is too large")
    return bytes(out)
