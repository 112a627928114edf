"""Fault injection for tests, driven through the native PKCS#11 shim (test tooling: it is
not shipped in the package).

The shim (see :mod:`hsmpool._shim`) reads the environment variable ``HSMPOOL_P11_FAULTS``
**when the module is initialised** (``C_Initialize``). If it names a file, every call that
concerns a token consults the rules in that file, re-reading it whenever it changes. So:

* set ``HSMPOOL_P11_FAULTS`` to the injector's path (:meth:`FaultInjector.env`) *before* the
  shim copy is initialised (e.g. before ``pkcs11.lib(shim_for(...))``); setting it later has
  no effect until the module is finalised and initialised again;
* without the variable the shim never looks at any file (production pays nothing).

Example::

    faults = FaultInjector(tmp_path / "faults")
    os.environ.update(faults.env())
    lib = pkcs11.lib(shim_for(SOFTHSM))
    faults.fail("hsmpool-0", "device_error", every=3)   # every 3rd call to that token fails
    faults.fail("hsmpool-1", "hang", hang_ms=200)       # a slow token
    faults.heal("hsmpool-0")                            # back to normal, no re-initialise
    faults.heal()                                       # all tokens

Rules file format (one rule per line, ``#`` comments)::

    label=<token label> fault=device_error|device_removed|hang [every=N] [hang_ms=M]

``device_error`` returns ``CKR_DEVICE_ERROR``, ``device_removed`` ``CKR_DEVICE_REMOVED``, and
``hang`` sleeps ``hang_ms`` then performs the call. With ``every=N`` only every Nth call to the
token (counted from the moment the shim notices the new rules) is affected.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ENV_VAR", "FaultInjector", "FaultKind"]

ENV_VAR = "HSMPOOL_P11_FAULTS"

FaultKind = Literal["device_error", "device_removed", "hang"]
_KINDS: frozenset[str] = frozenset({"device_error", "device_removed", "hang"})
_NEEDS_QUOTES = re.compile(r"[\s#=]")


@dataclass(frozen=True)
class _Rule:
    kind: FaultKind
    every: int
    hang_ms: int


def _label_field(label: str) -> str:
    if not label or len(label.encode("utf-8")) > 32:
        raise ValueError("a token label is 1 to 32 bytes")
    if '"' in label or "\n" in label or "\r" in label:
        raise ValueError("a token label for fault rules may not contain quotes or newlines")
    return f'"{label}"' if _NEEDS_QUOTES.search(label) else label


class FaultInjector:
    """Writes the shim's fault rules file (atomically; each write changes its mtime)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._rules: dict[str, _Rule] = {}
        self._lock = threading.Lock()
        self._last_mtime_ns = 0
        self._write()

    def env(self) -> dict[str, str]:
        """The environment entry that makes a shim initialised afterwards obey this file."""
        return {ENV_VAR: str(self.path)}

    def fail(self, label: str, kind: FaultKind, every: int = 1, hang_ms: int = 0) -> None:
        """Make calls to the token ``label`` fail (or hang), replacing its previous rule."""
        _label_field(label)
        if kind not in _KINDS:
            raise ValueError(f"unknown fault kind: {kind!r}")
        if every < 1:
            raise ValueError("every must be >= 1")
        if hang_ms < 0:
            raise ValueError("hang_ms must be >= 0")
        with self._lock:
            self._rules[label] = _Rule(kind, every, hang_ms)
            self._write()

    def heal(self, label: str | None = None) -> None:
        """Remove the rule for ``label``, or every rule when ``label`` is None."""
        with self._lock:
            if label is None:
                self._rules.clear()
            else:
                self._rules.pop(label, None)
            self._write()

    def rules(self) -> dict[str, tuple[FaultKind, int, int]]:
        """The current rules: label -> (kind, every, hang_ms)."""
        with self._lock:
            return {k: (r.kind, r.every, r.hang_ms) for k, r in self._rules.items()}

    def _render(self) -> str:
        lines = ["# hsmpool fault rules (written by tests/faults.py FaultInjector)"]
        for label, rule in self._rules.items():
            line = f"label={_label_field(label)} fault={rule.kind} every={rule.every}"
            if rule.kind == "hang":
                line += f" hang_ms={rule.hang_ms}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _write(self) -> None:
        """Replace the file atomically with a strictly newer mtime than the last write.

        The shim notices a change by inode, size or mtime (ns); a fresh temp file already has a
        new inode, and the mtime is bumped too so two writes in the same tick still differ.
        """
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self._render())
                f.flush()
                os.fsync(f.fileno())
            mtime_ns = max(time.time_ns(), self._last_mtime_ns + 1)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            self._last_mtime_ns = mtime_ns
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
