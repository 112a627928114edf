"""SM3 (GB/T 32905-2016) and HMAC-SM3 over the C implementation."""

from __future__ import annotations

import hmac as _hmac
from typing import Any

from ._binding import BytesLike, buf, ffi, lib, out_bytes, releases_buffers
from .exceptions import InvalidSignature

__all__ = ["HMACSM3", "SM3", "hmac_sm3", "sm3"]

DIGEST_SIZE = 32
BLOCK_SIZE = 64


@releases_buffers
def sm3(data: BytesLike) -> bytes:
    """The SM3 digest of data (one call into C)."""
    d, n = buf("data", data)
    out = ffi.new("uint8_t[32]")
    lib.hsm_sm3(d, n, out)
    return out_bytes(out, DIGEST_SIZE)


@releases_buffers
def hmac_sm3(key: BytesLike, data: BytesLike) -> bytes:
    """HMAC-SM3 (RFC 2104 construction) of data under key."""
    k, kn = buf("key", key)
    d, n = buf("data", data)
    out = ffi.new("uint8_t[32]")
    lib.hsm_hmac_sm3(k, kn, d, n, out)
    return out_bytes(out, DIGEST_SIZE)


class SM3:
    """Incremental SM3, hashlib-style. ``digest()`` does not finalise the object.

    One object must not be updated from two threads at once (share the result of ``copy()``
    instead); the one-shot :func:`sm3` has no such restriction."""

    __slots__ = ("_ctx",)
    name = "sm3"
    digest_size = DIGEST_SIZE
    block_size = BLOCK_SIZE

    def __init__(self, data: BytesLike = b"") -> None:
        self._ctx: Any = ffi.new("hsm_sm3_ctx *")
        lib.hsm_sm3_init(self._ctx)
        if data:
            self.update(data)

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            lib.hsm_sm3_wipe(ctx)

    @releases_buffers
    def update(self, data: BytesLike) -> None:
        d, n = buf("data", data)
        lib.hsm_sm3_update(self._ctx, d, n)

    def digest(self) -> bytes:
        tmp = ffi.new("hsm_sm3_ctx *")
        tmp[0] = self._ctx[0]
        out = ffi.new("uint8_t[32]")
        lib.hsm_sm3_final(tmp, out)  # wipes tmp
        return out_bytes(out, DIGEST_SIZE)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> SM3:
        other = SM3.__new__(SM3)
        other._ctx = ffi.new("hsm_sm3_ctx *")
        other._ctx[0] = self._ctx[0]
        return other


class HMACSM3:
    """Incremental HMAC-SM3. ``digest()`` does not finalise the object. Not for concurrent
    updates from several threads (like :class:`SM3`)."""

    __slots__ = ("_ctx",)
    name = "hmac-sm3"
    digest_size = DIGEST_SIZE
    block_size = BLOCK_SIZE

    @releases_buffers
    def __init__(self, key: BytesLike, data: BytesLike = b"") -> None:
        k, kn = buf("key", key)
        self._ctx: Any = ffi.new("hsm_hmac_sm3_ctx *")
        lib.hsm_hmac_sm3_init(self._ctx, k, kn)
        if data:
            self.update(data)

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            lib.hsm_hmac_sm3_wipe(ctx)

    @releases_buffers
    def update(self, data: BytesLike) -> None:
        d, n = buf("data", data)
        lib.hsm_hmac_sm3_update(self._ctx, d, n)

    def digest(self) -> bytes:
        tmp = ffi.new("hsm_hmac_sm3_ctx *")
        tmp[0] = self._ctx[0]
        out = ffi.new("uint8_t[32]")
        lib.hsm_hmac_sm3_final(tmp, out)  # wipes tmp
        return out_bytes(out, DIGEST_SIZE)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> HMACSM3:
        other = HMACSM3.__new__(HMACSM3)
        other._ctx = ffi.new("hsm_hmac_sm3_ctx *")
        other._ctx[0] = self._ctx[0]
        return other

    @releases_buffers
    def verify(self, tag: BytesLike) -> None:
        """Raise InvalidSignature unless tag equals the current digest (constant time)."""
        buf("tag", tag)  # type check
        if not _hmac.compare_digest(self.digest(), bytes(tag)):
            raise InvalidSignature("HMAC-SM3 tag mismatch")
