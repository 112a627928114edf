"""Locks between the processes of this host (server workers, tools, tests) that use the
same tokens: an exclusive ``flock`` on a file in a per-user folder of the temporary
directory, held only for a few short steps.

``token_files()`` is held around each ``C_Initialize``, ``C_GetTokenInfo`` and ``C_Login``.
SoftHSM2's file store rewrites a token's ``token.object`` at every login (the login flags),
and a process whose ``C_Initialize`` reads that file at the wrong moment keeps a token
without its user PIN for as long as the library stays initialised: every later ``C_Login``
answers ``CKR_USER_PIN_NOT_INITIALIZED``, and the label may read blank, so the token looks
missing. Retrying in that process cannot help. Several processes opening one token at once
(the workers of one ``hsmpool serve``) ran into it in CI. With the lock, the processes of
one host do those steps one at a time. Each step takes milliseconds; none is on a request
path. See docs/decisions.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("hsmpool")
_warned = False


@contextlib.contextmanager
def host_lock(name: str, *, required: bool = True) -> Iterator[None]:
    """Hold the host-wide lock ``name`` (a plain file name) for the ``with`` block. If the
    lock file cannot be opened (the temporary directory is not writable), an ``OSError``,
    or, when not ``required``, one warning per process and the block runs unlocked."""
    global _warned
    try:
        directory = Path(tempfile.gettempdir()) / f"hsmpool-{os.getuid()}"
        directory.mkdir(mode=0o700, exist_ok=True)
        fh = open(directory / f"{name}.lock", "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        if required:
            raise
        if not _warned:
            _warned = True
            log.warning("host lock %r unavailable, going on without it: %s", name, exc)
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def token_files() -> contextlib.AbstractContextManager[None]:
    """The lock around a ``C_Initialize``, ``C_GetTokenInfo`` or ``C_Login`` (see the
    module's text). Not required: without it only the SoftHSM2 race above comes back."""
    return host_lock("token-files", required=False)
