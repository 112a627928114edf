"""The Python side's copies of C declarations agree with the headers they copy: the
PKCS#11 constants of hsmpool/_p11.py with the system's PKCS#11 header (p11-kit's), and every
function prototype of the cffi ``cdef`` strings (native/build_*.py) with the declaration in
this project's own headers (native/*.h). A constant or a prototype changed on one side only
fails here, not at run time."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

import hsmpool._p11 as p11

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
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


def _load_build(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_build_{name}", NATIVE / f"build_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prototypes(text: str) -> dict[str, str]:
    """Function declarations in C text: name -> normalised declaration."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)  # preprocessor lines
    out = {}
    for m in re.finditer(r"([A-Za-z_][\w \t\n*]*?)\b(\w+)\s*\(([^;{}()]*)\)\s*;", text):
        ret, name, args = m.group(1), m.group(2), m.group(3)
        if ret.strip().startswith(("typedef", "return")) or not ret.strip():
            continue
        norm = " ".join(f"{ret} {name}({args})".replace("*", " * ").split())
        out[name] = norm.replace("( ", "(").replace(" )", ")").replace(" ,", ",")
    return out


@pytest.mark.parametrize(("build", "headers"), [
    ("p11", ["p11glue.h", "p11exec.h"]),
    ("audit", ["auditw.h"]),
])
def test_cdef_prototypes_match_the_headers(build: str, headers: list[str]) -> None:
    cdef = _prototypes(_load_build(build).CDEF)
    declared: dict[str, str] = {}
    for h in headers:
        declared.update(_prototypes((NATIVE / h).read_text()))
    assert len(cdef) >= 5
    missing = sorted(set(cdef) - set(declared))
    assert missing == [], f"in the cdef but not in {headers}: {missing}"
    assert {n: cdef[n] for n in cdef} == {n: declared[n] for n in cdef}
