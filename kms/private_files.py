"""Files and folders only their owner may read: the metadata store and the audit trail.

The store holds wrapped key material and access-key secrets (wrapped), the audit trail who
used which key when; neither is for other local users. SQLite creates a database file with
mode 0644 (less the umask) and gives its ``-wal`` and ``-shm`` files the mode of the
database file, so a database file that exists, empty, with mode 0600 before SQLite opens
it keeps all three private. Files and folders that already exist keep their modes.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create the folder (and missing parents) with mode 0700 if it does not exist."""
    p = Path(path)
    if p.is_dir():
        return
    missing = [d for d in (p, *p.parents) if not d.exists()]
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile by another process
        else:
            os.chmod(d, DIR_MODE)  # mkdir's mode is reduced by the umask


def private_file(path: str | os.PathLike[str]) -> None:
    """Create an empty file with mode 0600 if it does not exist (never follows a symlink
    at ``path`` when creating)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)
