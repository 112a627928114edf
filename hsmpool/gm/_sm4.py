"""SM4 (GB/T 32907-2016): ECB, CBC (PKCS#7), CTR and GCM (RFC 8998) over the C kernels."""

from __future__ import annotations

import os
from typing import Any

from ._binding import BytesLike, alloc, buf, ffi, lib, new_output, out_bytes, releases_buffers
from .exceptions import InvalidTag

__all__ = ["SM4CBC", "SM4CTR", "SM4ECB", "SM4GCM"]

BLOCK = 16
_GCM_TAG = 16
_GCM_MAX_LEN = 2**36 - 32  # SP 800-38D limit on the plaintext of one invocation
_ALIGN = 64


def _check_key(key: object) -> tuple[Any, int]:
    k, n = buf("key", key)
    if n != 16:
        raise ValueError("SM4 key must be 16 bytes")
    return k, n


class _KeyedSM4:
    """A 16-byte key expanded once; the schedule is wiped when the object goes away."""

    __slots__ = ("_ks",)

    @releases_buffers
    def __init__(self, key: BytesLike) -> None:
        k, _ = _check_key(key)
        ks = ffi.new("hsm_sm4_key *")
        lib.hsm_sm4_set_key(ks, k)
        self._ks: Any = ks

    def __del__(self) -> None:
        ks = getattr(self, "_ks", None)
        if ks is not None:
            lib.hsm_sm4_wipe(ks)

    @staticmethod
    def generate_key() -> bytes:
        return os.urandom(16)


class SM4ECB(_KeyedSM4):
    """SM4 in ECB mode over whole 16-byte blocks (no padding)."""

    __slots__ = ()

    @releases_buffers
    def _run(self, data: BytesLike, encrypt: bool) -> bytes:
        d, n = buf("data", data)
        if n % BLOCK:
            raise ValueError("ECB data must be a multiple of 16 bytes")
        if n == 0:
            return b""
        res, out = new_output(n)
        if encrypt:
            lib.hsm_sm4_ecb_encrypt(self._ks, d, out, n // BLOCK)
        else:
            lib.hsm_sm4_ecb_decrypt(self._ks, d, out, n // BLOCK)
        return res

    def encrypt(self, data: BytesLike) -> bytes:
        return self._run(data, True)

    def decrypt(self, data: BytesLike) -> bytes:
        return self._run(data, False)


def _iv16(name: str, iv: object) -> Any:
    v, n = buf(name, iv)
    if n != BLOCK:
        raise ValueError(f"{name} must be 16 bytes")
    c = ffi.new("uint8_t[16]")
    ffi.memmove(c, v, BLOCK)
    return c


class SM4CBC(_KeyedSM4):
    """SM4 in CBC mode with PKCS#7 padding (encrypt always adds 1..16 bytes)."""

    __slots__ = ()

    @releases_buffers
    def encrypt(self, iv: BytesLike, data: BytesLike) -> bytes:
        ivc = _iv16("iv", iv)
        d, n = buf("data", data)
        full = n - n % BLOCK
        res, out = new_output(full + BLOCK)
        if full:
            lib.hsm_sm4_cbc_encrypt(self._ks, ivc, d, out, full // BLOCK)
        # The last block: the tail of data plus the padding, chained through ivc.
        pad = BLOCK - (n - full)
        last = ffi.new("uint8_t[16]", [pad] * BLOCK)
        if n - full:
            src = ffi.from_buffer("uint8_t[]", d) if isinstance(d, bytes) else d
            ffi.memmove(last, src + full, n - full)
        lib.hsm_sm4_cbc_encrypt(self._ks, ivc, last, out + full, 1)
        return res

    @releases_buffers
    def decrypt(self, iv: BytesLike, data: BytesLike) -> bytes:
        ivc = _iv16("iv", iv)
        d, n = buf("data", data)
        if n == 0 or n % BLOCK:
            raise ValueError("CBC ciphertext must be a non-empty multiple of 16 bytes")
        out = alloc("uint8_t[]", n)
        lib.hsm_sm4_cbc_decrypt(self._ks, ivc, d, out, n // BLOCK)
        last = bytes(ffi.buffer(out + (n - BLOCK), BLOCK))
        pad = last[-1]
        # Branch-free over the block: every byte is inspected whatever the padding value.
        bad = ((pad - 1) >> 8) | ((BLOCK - pad) >> 8)  # nonzero iff pad == 0 or pad > 16
        for i in range(BLOCK):
            in_pad = ((BLOCK - 1 - i) - pad) >> 8  # -1 if byte i is inside the padding
            bad |= (last[i] ^ pad) & in_pad
        if bad:
            raise ValueError("invalid padding")
        return out_bytes(out, n - pad)


class SM4CTR(_KeyedSM4):
    """SM4 in CTR mode with a full 128-bit big-endian counter block (as cryptography's CTR)."""

    __slots__ = ()

    @releases_buffers
    def encrypt(self, nonce: BytesLike, data: BytesLike) -> bytes:
        ctr = _iv16("nonce", nonce)
        d, n = buf("data", data)
        if n == 0:
            return b""
        res, out = new_output(n)
        lib.hsm_sm4_ctr(self._ks, ctr, d, out, n)
        return res

    decrypt = encrypt


class SM4GCM:
    """SM4-GCM AEAD (NIST SP 800-38D with SM4; RFC 8998), shaped like cryptography's AESGCM.

    ``encrypt`` returns ciphertext || 16-byte tag. Nonces of 8..128 bytes are accepted; 12 bytes
    (RFC 8998) is the fast path and the only length to use for new designs.
    """

    __slots__ = ("_gk", "_raw")

    @releases_buffers
    def __init__(self, key: BytesLike) -> None:
        k, _ = _check_key(key)
        # The struct wants 64-byte alignment for its GHASH tables; malloc gives 16.
        size = ffi.sizeof("hsm_sm4_gcm_key")
        raw = ffi.new("uint8_t[]", size + _ALIGN)
        addr = int(ffi.cast("uintptr_t", raw))
        gk = ffi.cast("hsm_sm4_gcm_key *", raw + (-addr % _ALIGN))
        lib.hsm_sm4_gcm_set_key(gk, k)
        self._raw: Any = raw
        self._gk: Any = gk

    def __del__(self) -> None:
        gk = getattr(self, "_gk", None)
        if gk is not None:
            lib.hsm_sm4_gcm_wipe(gk)

    @staticmethod
    def generate_key() -> bytes:
        return os.urandom(16)

    @staticmethod
    def _args(nonce: object, data: object, aad: object) -> tuple[Any, int, Any, int, Any, int]:
        nv, nn = buf("nonce", nonce)
        if not 8 <= nn <= 128:
            raise ValueError("nonce must be between 8 and 128 bytes")
        d, n = buf("data", data)
        a, an = (b"", 0) if aad is None else buf("associated_data", aad)
        return nv, nn, d, n, a, an

    def encrypt(
        self, nonce: BytesLike, data: BytesLike, associated_data: BytesLike | None = None
    ) -> bytes:
        """Returns ciphertext || tag. (All-``bytes`` arguments take a short path: no buffer
        exports to track, which matters for small messages.)"""
        if type(nonce) is bytes and type(data) is bytes and (
                associated_data is None or type(associated_data) is bytes):
            nn = len(nonce)
            if not 8 <= nn <= 128:
                raise ValueError("nonce must be between 8 and 128 bytes")
            n = len(data)
            if n > _GCM_MAX_LEN:
                raise OverflowError("data too long for one GCM invocation")
            aad = associated_data or b""
            res, out = new_output(n + _GCM_TAG)
            lib.hsm_sm4_gcm_encrypt(self._gk, nonce, nn, aad, len(aad), data, n, out, out + n,
                                    _GCM_TAG)
            return res
        return self._encrypt_buffers(nonce, data, associated_data)

    @releases_buffers
    def _encrypt_buffers(
        self, nonce: BytesLike, data: BytesLike, associated_data: BytesLike | None
    ) -> bytes:
        nv, nn, d, n, a, an = self._args(nonce, data, associated_data)
        if n > _GCM_MAX_LEN:
            raise OverflowError("data too long for one GCM invocation")
        res, out = new_output(n + _GCM_TAG)
        lib.hsm_sm4_gcm_encrypt(self._gk, nv, nn, a, an, d, n, out, out + n, _GCM_TAG)
        return res

    def decrypt(
        self, nonce: BytesLike, data: BytesLike, associated_data: BytesLike | None = None
    ) -> bytes:
        """Returns the plaintext, or raises InvalidTag."""
        if type(nonce) is bytes and type(data) is bytes and (
                associated_data is None or type(associated_data) is bytes):
            nn = len(nonce)
            if not 8 <= nn <= 128:
                raise ValueError("nonce must be between 8 and 128 bytes")
            n = len(data)
            if n < _GCM_TAG:
                raise InvalidTag()
            ct_len = n - _GCM_TAG
            aad = associated_data or b""
            res, out = new_output(ct_len)
            if ct_len == 0:
                out = ffi.new("uint8_t[1]")  # the C side may zero `out` on failure
            dp = ffi.from_buffer("uint8_t[]", data)
            if lib.hsm_sm4_gcm_decrypt(self._gk, nonce, nn, aad, len(aad), dp, ct_len,
                                       dp + ct_len, _GCM_TAG, out):
                raise InvalidTag()
            return res
        return self._decrypt_buffers(nonce, data, associated_data)

    @releases_buffers
    def _decrypt_buffers(
        self, nonce: BytesLike, data: BytesLike, associated_data: BytesLike | None
    ) -> bytes:
        nv, nn, d, n, a, an = self._args(nonce, data, associated_data)
        if n < _GCM_TAG:
            raise InvalidTag()
        ct_len = n - _GCM_TAG
        res, out = new_output(ct_len)
        if ct_len == 0:
            out = ffi.new("uint8_t[1]")  # the C side may zero `out` on failure
        # A pointer to do arithmetic on: buf()'s own cdata (released with the call), or, for
        # bytes, a view of the immutable object.
        dp = ffi.from_buffer("uint8_t[]", d) if isinstance(d, bytes) else d
        if lib.hsm_sm4_gcm_decrypt(self._gk, nv, nn, a, an, dp, ct_len, dp + ct_len, _GCM_TAG, out):
            raise InvalidTag()
        return res
