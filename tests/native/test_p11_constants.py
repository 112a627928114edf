"""The PKCS#11 constants of hsmpool/_p11.py are the system PKCS#11 header's (p11-kit's):
every ``CK?_`` value and every return-code name, so a constant changed on one side only
fails here, not against a token. (The cffi cdefs are checked against our headers by
test_cdefs.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hsmpool._p11 as p11

PKCS11_H = Path("/usr/include/p11-kit-1/p11-kit/pkcs11.h")
_DEFINE = re.compile(r"^#define\s+(CK[A-Z]_\w+)\s+([^\n/]+)", re.M)
_NUMERIC = re.compile(r"[\s()0-9a-fA-FxUL<|]+")
#: Vendor-defined values the standard header does not have (GM/T 0018 style SM mechanisms
#: as SoftHSM2/openCryptoki number them), checked where they are defined, not here.
_VENDOR = re.compile(r"SM[234]|VENDOR")


def _header_constants() -> dict[str, int]:
    """``#define CK?_NAME <number expression>`` (``0x10UL``, ``(1UL << 30)``, ``A | B``, of
    numbers and of names defined above it); any other define is left out."""
    out: dict[str, int] = {}
    for name, expr in _DEFINE.findall(PKCS11_H.read_text()):
        expr = re.sub(r"\bCK[A-Z]_\w+\b", lambda m: str(out.get(m.group(0), m.group(0))),
                      expr.strip())
        if not _NUMERIC.fullmatch(expr) or not re.search(r"\d", expr):
            continue
        out[name] = int(eval(re.sub(r"(?<=[0-9a-fA-F])UL\b", "", expr), {"__builtins__": {}}))
    return out


def _python_constants() -> dict[str, int]:
    return {name: value for name, value in vars(p11).items()
            if re.fullmatch(r"CK[A-Z]_[A-Z0-9_]+", name) and isinstance(value, int)}


@pytest.mark.skipif(not PKCS11_H.exists(), reason="p11-kit's pkcs11.h is not installed")
def test_pkcs11_constants_match_the_header() -> None:
    header = _header_constants()
    ours = _python_constants()
    assert len(ours) > 50
    compared = {n for n in ours if n in header}
    assert len(compared) > 50
    assert {n: ours[n] for n in compared} == {n: header[n] for n in compared}
    unknown = sorted(n for n in ours if n not in header and not _VENDOR.search(n))
    assert unknown == [], f"not in {PKCS11_H}: {unknown}"
    # The names of return values: each is the header's name for that number.
    by_value: dict[int, set[str]] = {}
    for name, value in header.items():
        if name.startswith("CKR_"):
            by_value.setdefault(value, set()).add(name)
    ours_only = {v: n for v, n in p11.CKR_NAMES.items() if not n.startswith("CKR_")}
    assert all(v >= 1 << 31 for v in ours_only), ours_only  # ours: CKR_VENDOR_DEFINED range
    wrong = {hex(v): n for v, n in p11.CKR_NAMES.items() if v not in ours_only
             and n not in by_value.get(v, set()) and not _VENDOR.search(n)}
    assert wrong == {}
