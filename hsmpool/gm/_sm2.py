"""SM2 (GB/T 32918-2016, recommended curve) keys, signatures and encryption.

Keys live in native handles (an ``EVP_PKEY`` parsed once); see ``native/sm2.h``.
"""

from __future__ import annotations

from typing import Any, Literal

from ._binding import BytesLike, alloc, buf, ensure, ffi, lib, out_bytes, releases_buffers
from .exceptions import InvalidSignature

__all__ = ["DEFAULT_UID", "SM2PrivateKey", "SM2PublicKey"]

#: The default distinguishing identifier of GB/T 32918 / GM/T 0009 (OpenSSL 3.0's own default
#: is an empty ID; we always pass one explicitly).
DEFAULT_UID = b"1234567812345678"

SigFormat = Literal["der", "raw"]
CtFormat = Literal["der", "raw"]

_EXPORT_CAP = 1024


def _fmt(fmt: object, what: str) -> int:
    if fmt == "der":
        return int(lib.HSM_SM2_FMT_DER)
    if fmt == "raw":
        return int(lib.HSM_SM2_FMT_RAW)
    raise ValueError(f"{what} format must be 'der' or 'raw'")


def _uid(uid: object) -> tuple[Any, int]:
    u, n = buf("uid", uid)
    if n > lib.HSM_SM2_MAX_ID_LEN:
        raise ValueError("uid too long (at most 8191 bytes)")
    return u, n


def _own(pp: Any) -> Any:
    return ffi.gc(pp[0], lib.hsm_sm2_free)


def _export(handle: Any, private: bool, fmt: int) -> bytes:
    out = alloc("uint8_t[]", _EXPORT_CAP)
    n = ffi.new("size_t *", _EXPORT_CAP)
    ensure(lib.hsm_sm2_export(handle, int(private), fmt, out, n), "SM2 key export")
    data = out_bytes(out, n[0])
    ffi.memmove(out, b"\0" * _EXPORT_CAP, _EXPORT_CAP)
    return data


def _encoded(name: str, data: object, pem: bool) -> tuple[Any, int]:
    if pem and isinstance(data, str):
        data = data.encode("ascii")
    return buf(name, data)


class SM2PublicKey:
    """An SM2 public key: verify signatures and encrypt."""

    __slots__ = ("_h",)

    def __init__(self, handle: Any) -> None:
        # Internal: use the from_* constructors.
        self._h = handle

    @classmethod
    @releases_buffers
    def from_bytes(cls, data: BytesLike) -> SM2PublicKey:
        """From the 65-byte uncompressed point 04 || x || y (checked to be on the curve)."""
        d, n = buf("data", data)
        pp = ffi.new("hsm_sm2_key **")
        ensure(lib.hsm_sm2_from_public_raw(d, n, pp), "SM2 public key")
        return cls(_own(pp))

    @classmethod
    @releases_buffers
    def _from_encoded(cls, data: object, fmt: int) -> SM2PublicKey:
        d, n = _encoded("data", data, fmt == lib.HSM_SM2_FMT_PEM)
        pp = ffi.new("hsm_sm2_key **")
        ensure(lib.hsm_sm2_from_public_encoded(d, n, fmt, pp), "SM2 public key")
        return cls(_own(pp))

    @classmethod
    def from_der(cls, data: BytesLike) -> SM2PublicKey:
        """From a DER SubjectPublicKeyInfo on the SM2 curve."""
        return cls._from_encoded(data, lib.HSM_SM2_FMT_DER)

    @classmethod
    def from_pem(cls, data: BytesLike | str) -> SM2PublicKey:
        """From a PEM ``PUBLIC KEY`` block on the SM2 curve."""
        return cls._from_encoded(data, lib.HSM_SM2_FMT_PEM)

    def to_bytes(self) -> bytes:
        out = ffi.new("uint8_t[65]")
        lib.hsm_sm2_public_raw(self._h, out)
        return out_bytes(out, 65)

    def to_der(self) -> bytes:
        return _export(self._h, False, lib.HSM_SM2_FMT_DER)

    def to_pem(self) -> bytes:
        return _export(self._h, False, lib.HSM_SM2_FMT_PEM)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SM2PublicKey):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"SM2PublicKey({self.to_bytes().hex()})"

    @releases_buffers
    def compute_z(self, uid: BytesLike = DEFAULT_UID) -> bytes:
        """ZA = SM3(ENTL || ID || a || b || xG || yG || xA || yA)."""
        u, un = _uid(uid)
        out = ffi.new("uint8_t[32]")
        ensure(lib.hsm_sm2_compute_z(self._h, u, un, out), "SM2 ZA")
        return out_bytes(out, 32)

    @releases_buffers
    def message_digest(self, data: BytesLike, uid: BytesLike = DEFAULT_UID) -> bytes:
        """e = SM3(ZA || data): what ``sign_digest`` / ``verify_digest`` take."""
        from ._sm3 import SM3

        h = SM3(self.compute_z(uid))
        h.update(data)
        return h.digest()

    @releases_buffers
    def verify(
        self,
        signature: BytesLike,
        data: BytesLike,
        uid: BytesLike = DEFAULT_UID,
        *,
        format: SigFormat = "der",
    ) -> None:
        """Raise InvalidSignature unless signature is valid for data under this key and uid."""
        f = _fmt(format, "signature")
        s, sn = buf("signature", signature)
        d, dn = buf("data", data)
        u, un = _uid(uid)
        rc = lib.hsm_sm2_verify(self._h, u, un, d, dn, f, s, sn)
        if rc != 1:
            if rc < 0:
                ensure(rc, "SM2 verify")
            raise InvalidSignature("SM2 signature did not verify")

    @releases_buffers
    def verify_digest(
        self, signature: BytesLike, digest: BytesLike, *, format: SigFormat = "der"
    ) -> None:
        """Verify a signature over a precomputed e = SM3(ZA || M) (32 bytes)."""
        f = _fmt(format, "signature")
        s, sn = buf("signature", signature)
        e, en = buf("digest", digest)
        if en != 32:
            raise ValueError("digest must be 32 bytes")
        rc = lib.hsm_sm2_verify_digest(self._h, e, f, s, sn)
        if rc != 1:
            if rc < 0:
                ensure(rc, "SM2 verify")
            raise InvalidSignature("SM2 signature did not verify")

    @releases_buffers
    def encrypt(self, data: BytesLike, *, format: CtFormat = "der") -> bytes:
        """SM2 public-key encryption, C1C3C2: GM/T 0009 DER, or raw 04||x||y||C3||C2."""
        f = _fmt(format, "ciphertext")
        d, n = buf("data", data)
        if n == 0:
            raise ValueError("SM2 cannot encrypt an empty message")
        cap = int(lib.hsm_sm2_ciphertext_size(n, f))
        out = alloc("uint8_t[]", cap)
        olen = ffi.new("size_t *", cap)
        ensure(lib.hsm_sm2_encrypt(self._h, d, n, f, out, olen), "SM2 encrypt")
        return out_bytes(out, olen[0])


class SM2PrivateKey:
    """An SM2 private key (with its public half): sign and decrypt."""

    __slots__ = ("_h",)

    def __init__(self, handle: Any) -> None:
        # Internal: use generate() or the from_* constructors.
        self._h = handle

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        pp = ffi.new("hsm_sm2_key **")
        ensure(lib.hsm_sm2_generate(pp), "SM2 key generation")
        return cls(_own(pp))

    @classmethod
    @releases_buffers
    def from_bytes(cls, data: BytesLike) -> SM2PrivateKey:
        """From the raw 32-byte big-endian scalar d, 1 <= d <= n - 2."""
        d, n = buf("data", data)
        pp = ffi.new("hsm_sm2_key **")
        ensure(lib.hsm_sm2_from_private_raw(d, n, pp), "SM2 private key")
        return cls(_own(pp))

    @classmethod
    @releases_buffers
    def _from_encoded(cls, data: object, fmt: int) -> SM2PrivateKey:
        d, n = _encoded("data", data, fmt == lib.HSM_SM2_FMT_PEM)
        pp = ffi.new("hsm_sm2_key **")
        ensure(lib.hsm_sm2_from_private_encoded(d, n, fmt, pp), "SM2 private key")
        return cls(_own(pp))

    @classmethod
    def from_der(cls, data: BytesLike) -> SM2PrivateKey:
        """From DER PKCS#8 PrivateKeyInfo (or an RFC 5915 ECPrivateKey) on the SM2 curve."""
        return cls._from_encoded(data, lib.HSM_SM2_FMT_DER)

    @classmethod
    def from_pem(cls, data: BytesLike | str) -> SM2PrivateKey:
        """From an unencrypted PEM ``PRIVATE KEY`` (or ``EC PRIVATE KEY``) block."""
        return cls._from_encoded(data, lib.HSM_SM2_FMT_PEM)

    def to_bytes(self) -> bytes:
        out = ffi.new("uint8_t[32]")
        ensure(lib.hsm_sm2_private_raw(self._h, out), "SM2 private key export")
        data = out_bytes(out, 32)
        ffi.memmove(out, b"\0" * 32, 32)
        return data

    def to_der(self) -> bytes:
        """DER PKCS#8 PrivateKeyInfo (unencrypted)."""
        return _export(self._h, True, lib.HSM_SM2_FMT_DER)

    def to_pem(self) -> bytes:
        """PEM PKCS#8 ``PRIVATE KEY`` (unencrypted)."""
        return _export(self._h, True, lib.HSM_SM2_FMT_PEM)

    def __repr__(self) -> str:
        return "SM2PrivateKey(<private>)"

    def public_key(self) -> SM2PublicKey:
        pp = ffi.new("hsm_sm2_key **")
        ensure(lib.hsm_sm2_public_handle(self._h, pp), "SM2 public key")
        return SM2PublicKey(_own(pp))

    @releases_buffers
    def sign(
        self, data: BytesLike, uid: BytesLike = DEFAULT_UID, *, format: SigFormat = "der"
    ) -> bytes:
        """Sign SM3(ZA || data); DER (SEQUENCE of r, s) or raw r || s (64 bytes)."""
        f = _fmt(format, "signature")
        d, dn = buf("data", data)
        u, un = _uid(uid)
        out = ffi.new("uint8_t[72]")
        n = ffi.new("size_t *", 72)
        ensure(lib.hsm_sm2_sign(self._h, u, un, d, dn, f, out, n), "SM2 sign")
        return out_bytes(out, n[0])

    @releases_buffers
    def sign_digest(self, digest: BytesLike, *, format: SigFormat = "der") -> bytes:
        """Sign a precomputed e = SM3(ZA || M) (32 bytes; see SM2PublicKey.message_digest)."""
        f = _fmt(format, "signature")
        e, en = buf("digest", digest)
        if en != 32:
            raise ValueError("digest must be 32 bytes")
        out = ffi.new("uint8_t[72]")
        n = ffi.new("size_t *", 72)
        ensure(lib.hsm_sm2_sign_digest(self._h, e, f, out, n), "SM2 sign")
        return out_bytes(out, n[0])

    @releases_buffers
    def decrypt(self, data: BytesLike, *, format: CtFormat = "der") -> bytes:
        """Decrypt C1C3C2 (DER or raw). Malformed input: ValueError; a well-formed ciphertext
        that fails its check value: DecryptionError (a ValueError)."""
        f = _fmt(format, "ciphertext")
        d, n = buf("data", data)
        cap = max(n, 1)
        out = alloc("uint8_t[]", cap)
        olen = ffi.new("size_t *", cap)
        ensure(lib.hsm_sm2_decrypt(self._h, d, n, f, out, olen), "SM2 decrypt")
        return out_bytes(out, olen[0])
