"""The installed package's version, as nodes report it (heartbeats, ``/metrics``)."""

from __future__ import annotations

from importlib import metadata
from typing import Final

__all__ = ["VERSION"]


def _installed() -> str:
    try:
        return metadata.version("hsmpool")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION: Final = _installed()
