"""Tokens an operator ejected from the pool, in every worker of the server.

Each worker has its own pool, so an operator's "eject" (or "readmit") from the console is
applied at once in the worker that received it (:meth:`kms.Kms.hold_token`,
:meth:`kms.Kms.release_token`) and written to ``operator-holds.json`` in the server's state
folder (0600; a read-modify-write under an exclusive ``flock``); every other worker applies
it at its next metrics tick (within about a second), and so does a worker started later. A
one-worker server has no state folder and needs none. The file dies with the server's state
folder: a restarted server starts with every token in the pool.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from kms.service import Kms

log = logging.getLogger("hsmpool.server")
FILE: Final = "operator-holds.json"


class OperatorHolds:
    def __init__(self, kms: Kms, directory: str | os.PathLike[str] | None) -> None:
        self.kms = kms
        self.path = Path(directory) / FILE if directory is not None else None
        self._seen: int | None = None

    def set(self, token: str, held: bool) -> bool:
        """Eject (``held``) or readmit a token here and, through the file, in every worker.
        True if this worker's pool changed. :class:`kms.errors.NotFound` for a token this
        pool does not have."""
        changed = self.kms.hold_token(token) if held else self.kms.release_token(token)
        if self.path is not None:
            self._update(token, held)
        return changed

    def _update(self, token: str, held: bool) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            names = _parse(os.pread(fd, 1 << 20, 0))
            names = (names | {token}) if held else (names - {token})
            data = json.dumps({"held": sorted(names)}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)  # releases the lock

    def apply(self) -> None:
        """Bring this worker's pool in line with the file (when it changed)."""
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        stamp = st.st_mtime_ns ^ st.st_size
        if stamp == self._seen:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            names = _parse(os.pread(fd, 1 << 20, 0))
        finally:
            os.close(fd)
        self._seen = stamp
        for name, s in self.kms.token_stats().items():
            want = name in names
            if want != s.held:
                try:
                    if want:
                        self.kms.hold_token(name)
                    else:
                        self.kms.release_token(name)
                except Exception:  # noqa: BLE001 - the next change of the file retries
                    log.exception("console: could not apply the operator's hold on %r", name)


def _parse(raw: bytes) -> set[str]:
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return set()
    held = doc.get("held", []) if isinstance(doc, dict) else []
    return {h for h in held if isinstance(h, str)}
