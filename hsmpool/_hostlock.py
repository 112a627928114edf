"""Locks between the processes of this host (server workers, tools, tests) that use the
same tokens: an exclusive ``flock`` on a file in a per-user folder of the temporary
directory, held only for a few short steps.

``token_files()`` is held around each ``C_Initialize`` and each ``C_Login``. SoftHSM2's file
store rewrites a token's ``token.object`` at every login (the login flags), and a process
whose ``C_Initialize`` reads that file at the wrong moment keeps a token without its user
PIN for as long as the library stays initialised: every later ``C_Login`` answers
``CKR_USER_PIN_NOT_INITIALIZED``, and the label may read blank, so the token looks missing.
Retrying in that process cannot help. Several processes opening one token at once (the
workers of one ``hsmpool serve``) ran into it in CI. With the lock, the processes of one
host do those steps one at a time. Each step takes milliseconds, and a real HSM pays the
same small cost.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def host_lock(name: str) -> Iterator[None]:
    """Hold the host-wide lock ``name`` (a plain file name) for the ``with`` block."""
    directory = Path(tempfile.gettempdir()) / f"hsmpool-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    with open(directory / f"{name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def token_files() -> contextlib.AbstractContextManager[None]:
    """The lock around a ``C_Initialize`` or a ``C_Login`` (see the module's text)."""
    return host_lock("token-files")
