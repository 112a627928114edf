"""The cffi module and the helpers every wrapper shares (argument checks, error mapping)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

from hsmpool._gm_cffi import ffi, lib

from .exceptions import DecryptionError

__all__ = ["BytesLike", "alloc", "buf", "ensure", "ffi", "lib", "new_output", "out_bytes",
           "releases_buffers"]

BytesLike = bytes | bytearray | memoryview

# Output buffers are always fully written before they are read: skip the zero fill.
alloc = ffi.new_allocator(should_clear_after_alloc=False)


_local = threading.local()

P = ParamSpec("P")
R = TypeVar("R")


def buf(name: str, obj: object) -> tuple[Any, int]:
    """A (cdata-compatible pointer, length in bytes) pair for a bytes-like argument.

    bytes are passed to C as they are; bytearray and (C-contiguous) memoryview go through
    ``ffi.from_buffer`` without a copy. Anything else is a TypeError. Inside a function
    decorated with :func:`releases_buffers`, the buffer export is released when that
    function returns or raises.
    """
    if isinstance(obj, bytes):
        return obj, len(obj)
    if isinstance(obj, bytearray):
        n = len(obj)
    elif isinstance(obj, memoryview):
        if not obj.c_contiguous:
            raise TypeError(f"{name} must be a C-contiguous buffer")
        n = obj.nbytes
    else:
        raise TypeError(
            f"{name} must be bytes, bytearray or memoryview, not {type(obj).__name__}")
    if n == 0:
        return b"", 0
    c = ffi.from_buffer("uint8_t[]", obj)
    held = getattr(_local, "held", None)
    if held is not None:
        held.append(c)
    return c, n


def releases_buffers(fn: Callable[P, R]) -> Callable[P, R]:
    """Release every buffer export :func:`buf` took during a call, however the call ends.

    Without this, a failing call leaves its cffi buffer objects in the traceback's frames;
    if the caller then keeps the exception in a reference cycle, the garbage collector may
    clear an exported memoryview before the cffi object that holds the export, and CPython
    crashes (seen with cffi 2.0 on CPython 3.11). Releasing explicitly ends the export at
    the end of the call.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        outer = getattr(_local, "held", None)
        held: list[Any] = []
        _local.held = held
        try:
            return fn(*args, **kwargs)
        finally:
            _local.held = outer
            for c in held:
                ffi.release(c)

    return wrapper


def new_output(n: int) -> tuple[bytes, Any]:
    """A new n-byte result object and a C pointer through which to fill it.

    ``bytes(n)`` is, for n >= 1, a fresh, unshared, not-yet-hashed object, so the C code writes
    the result straight into it: no second buffer and no copy (about five times faster at 1 MiB
    than allocate-then-copy, and faster at 32 B too). The object must not escape before it is
    filled. This relies on CPython's bytes layout, which is the only runtime this extension
    (a CPython abi3 module) is built for.
    """
    if n == 0:
        return b"", ffi.NULL
    b = bytes(n)
    return b, ffi.from_buffer("uint8_t[]", b)


def out_bytes(cdata: Any, n: int) -> bytes:
    """Copy the first n bytes of a cdata buffer into a new bytes object."""
    if n == 0:
        return b""
    return bytes(ffi.buffer(cdata, n))


def _fail(rc: int, what: str) -> NoReturn:
    if rc == lib.HSM_SM2_EINVAL:
        raise ValueError(f"{what}: invalid or malformed input")
    if rc == lib.HSM_SM2_EDECRYPT:
        raise DecryptionError(f"{what}: decryption failed")
    if rc == lib.HSM_SM2_ENOPRIV:
        raise ValueError(f"{what}: a private key is required")
    if rc == lib.HSM_SM2_ESPACE:
        raise RuntimeError(f"{what}: internal error (output buffer too small)")
    raise RuntimeError(f"{what}: libcrypto failure (code {rc})")


def ensure(rc: int, what: str) -> None:
    """Map a native return code to an exception (the single place that does it)."""
    if rc != lib.HSM_SM2_OK:
        _fail(rc, what)
