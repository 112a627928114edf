"""Locate the native PKCS#11 shim and make per-module copies of it.

The shim (``native/p11shim.c``, built to ``hsmpool/_p11shim*.so``) is a PKCS#11 module that
forwards every call to a *real* module. It fixes two things for the pool:

* python-pkcs11 calls ``C_Initialize(NULL)``; the shim turns that into
  ``C_Initialize({flags=CKF_OS_LOCKING_OK})`` so modules such as SoftHSM2 lock internally and
  survive concurrent sessions;
* fault injection for tests (``HSMPOOL_P11_FAULTS``, see tests/faults.py).

A shared object is mapped only once per process (glibc deduplicates by inode), so one shim file
cannot front two different real modules. :func:`shim_for` therefore gives every real module
its own copy of the shim in a per-user cache directory, next to a ``<copy>.target`` sidecar
holding the real module's path, which the shim reads when it is loaded::

    lib = pkcs11.lib(shim_for("/usr/lib/softhsm/libsofthsm2.so"))
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sysconfig
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "shim_for", "shim_library"]

_PACKAGE_DIR = Path(__file__).resolve().parent
_GLOB = "_p11shim*.so"


def shim_library() -> Path:
    """Return the path of the built shim next to this package.

    Raises :class:`FileNotFoundError` when the native part has not been built.
    """
    found = sorted(_PACKAGE_DIR.glob(_GLOB))
    if not found:
        raise FileNotFoundError(
            f"native shim not built: pip install . (no {_GLOB} in {_PACKAGE_DIR})"
        )
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for candidate in found:
        if isinstance(suffix, str) and candidate.name.endswith(suffix):
            return candidate
    return found[0]


def cache_dir() -> Path:
    """The per-user directory holding shim copies (created with mode 0700).

    ``$HSMPOOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/hsmpool``, else ``~/.cache/hsmpool``.
    """
    explicit = os.environ.get("HSMPOOL_CACHE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
        path = base / "hsmpool"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def _atomic_write(dest: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``dest`` through a temp file in the same directory + os.replace."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def shim_for(real_module: str | os.PathLike[str]) -> str:
    """Return the path of a shim copy that forwards to ``real_module``; make it if needed.

    The copy is ``<cache>/p11shim-<digest>.so`` where the digest covers the real module's
    resolved path and the shim build (mtime and size), with ``<copy>.target`` naming the real
    module. Safe when several processes call it at once: files only appear by atomic rename.

    Raises :class:`FileNotFoundError` when ``real_module`` (or the built shim) does not exist.
    """
    given = os.fspath(real_module)
    real = os.path.realpath(given)
    if not os.path.isfile(real):
        raise FileNotFoundError(f"PKCS#11 module not found: {given}")
    shim = shim_library()
    shim_st = shim.stat()
    key = f"{real}\0{shim_st.st_mtime_ns}\0{shim_st.st_size}".encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    directory = cache_dir()
    copy = directory / f"p11shim-{digest}.so"
    sidecar = directory / f"p11shim-{digest}.so.target"
    target_text = real + "\n"

    try:
        sidecar_ok = sidecar.read_text(encoding="utf-8") == target_text
    except (FileNotFoundError, UnicodeDecodeError):
        sidecar_ok = False
    if not sidecar_ok:
        # The sidecar goes first: whenever the copy exists, its sidecar does too.
        _atomic_write(sidecar, target_text.encode("utf-8"), 0o600)

    try:
        copy_ok = copy.stat().st_size == shim_st.st_size
    except FileNotFoundError:
        copy_ok = False
    if not copy_ok:
        _atomic_write(copy, shim.read_bytes(), 0o700)
    return str(copy)
