"""Key specs and the wrapped-key blob format.

A blob is what the pool hands out for a key: its material wrapped inside a token under the
instance's domain key (``CKM_AES_KEY_WRAP_PAD``), plus the public half for key pairs::

    magic "HPK" | version 1 (1) | spec (1) | domain-key id (16) | public length (2, BE)
    | public key, DER SubjectPublicKeyInfo (0 for secret keys) | wrapped material

``HSM`` keys (AES, RSA, EC, HMAC) are unwrapped only as sensitive, non-extractable session
objects. ``SECRET`` blobs hold material that is used in process memory (SM4, SM2 and other
keys of protection level SOFTWARE); they are wrapped under a *separate* domain key, so an
HSM key's blob relabelled as ``SECRET`` fails the key-wrap integrity check instead of
yielding its material. The header is parsed before any token is touched.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from hsmpool.errors import InvalidBlobError

MAGIC = b"HPK\x01"
_HEADER = struct.Struct(">4sB16sH")
KEK_ID_LEN = 16


class KeySpec(enum.IntEnum):
    """What a blob holds. Values are part of the blob format: never renumber."""

    AES_256 = 1
    RSA_2048 = 2
    RSA_3072 = 3
    RSA_4096 = 4
    EC_P256 = 5
    EC_SECP256K1 = 6
    HMAC_SHA256 = 7
    HMAC_SHA384 = 8
    HMAC_SHA512 = 9
    SECRET = 10

    @property
    def is_pair(self) -> bool:
        return self in _PAIRS

    @property
    def is_rsa(self) -> bool:
        return self in (KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096)

    @property
    def is_ec(self) -> bool:
        return self in (KeySpec.EC_P256, KeySpec.EC_SECP256K1)

    @property
    def is_hmac(self) -> bool:
        return self in (KeySpec.HMAC_SHA256, KeySpec.HMAC_SHA384, KeySpec.HMAC_SHA512)

    @property
    def domain(self) -> str:
        """Which domain key wraps this spec: ``"kek"`` (HSM keys) or ``"swkek"``."""
        return "swkek" if self is KeySpec.SECRET else "kek"


_PAIRS = frozenset(
    {KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096, KeySpec.EC_P256, KeySpec.EC_SECP256K1}
)

_SPEC_BY_NUMBER = {int(s): s for s in KeySpec}

RSA_BITS = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}
HMAC_BYTES = {KeySpec.HMAC_SHA256: 32, KeySpec.HMAC_SHA384: 48, KeySpec.HMAC_SHA512: 64}
# DER OIDs of the named curves, as CKA_EC_PARAMS wants them.
EC_PARAMS = {
    KeySpec.EC_P256: bytes.fromhex("06082a8648ce3d030107"),
    KeySpec.EC_SECP256K1: bytes.fromhex("06052b8104000a"),
}


@dataclass(frozen=True, slots=True)
class KeyBlob:
    """A parsed blob. ``raw`` (the exact bytes) is the identity used by the handle caches."""

    spec: KeySpec
    kek_id: bytes
    public_key: bytes
    wrapped: bytes
    raw: bytes

    def __bytes__(self) -> bytes:
        return self.raw

    def __repr__(self) -> str:
        return f"KeyBlob(spec={self.spec.name}, kek_id={self.kek_id.hex()[:8]}...)"

    @classmethod
    def build(cls, spec: KeySpec, kek_id: bytes, public_key: bytes, wrapped: bytes) -> KeyBlob:
        if len(kek_id) != KEK_ID_LEN:
            raise ValueError("domain key id must be 16 bytes")
        raw = _HEADER.pack(MAGIC, spec, kek_id, len(public_key)) + public_key + wrapped
        return cls(spec, kek_id, public_key, wrapped, raw)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview | KeyBlob) -> KeyBlob:
        """Parse and check a blob's structure; raises :class:`InvalidBlobError`."""
        if isinstance(data, KeyBlob):
            return data
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("a key blob must be bytes")
        raw = bytes(data)
        if len(raw) < _HEADER.size:
            raise InvalidBlobError("key blob is truncated")
        magic, spec_no, kek_id, pub_len = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise InvalidBlobError("not a key blob (bad magic or unknown version)")
        spec = _SPEC_BY_NUMBER.get(spec_no)
        if spec is None:
            raise InvalidBlobError("key blob names an unknown key spec")
        rest = raw[_HEADER.size :]
        if spec.is_pair != (pub_len > 0) or len(rest) < pub_len + 16:
            raise InvalidBlobError("key blob is truncated or malformed")
        wrapped = rest[pub_len:]
        if len(wrapped) % 8:
            raise InvalidBlobError("key blob is truncated or malformed")
        return cls(spec, kek_id, rest[:pub_len], wrapped, raw)
