"""The one loader for the known-answer data files in tests/gm/vectors/."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent / "vectors"


def load(name: str) -> dict[str, Any]:
    """The parsed file; every file names its source in a "source" field."""
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert data.get("source"), f"{name} must cite its source"
    return data


def params(
    name: str,
    section: str = "cases",
    slow_if: str | None = None,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> list[Any]:
    """pytest.param per case of a section, id'd by the case name. slow_if names a numeric field:
    cases where it exceeds 1000 are marked slow. where filters the cases."""
    out = []
    for case in load(name)[section]:
        if where is not None and not where(case):
            continue
        marks = []
        if slow_if is not None and int(case.get(slow_if, 0)) > 1000:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(case, id=case["name"], marks=marks))
    return out


def h(s: str) -> bytes:
    return bytes.fromhex(s)
