"""The cffi ``cdef`` strings of the build scripts are second copies of the C headers: every
function they declare must be declared the same way (types, names, order) in a header."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "native"
_PROTO = re.compile(r"[A-Za-z_][\w\s\*]*?\b(\w+)\s*\(([^;{}]*)\)\s*;")


def _load(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_cdefcheck_{script}", NATIVE / script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _prototypes(text: str) -> dict[str, str]:
    """name -> normalised prototype, for every function declaration in C text."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#.*$", " ", text, flags=re.M)
    out = {}
    for m in _PROTO.finditer(text):
        proto = " ".join(m.group(0).split())
        proto = re.sub(r"\s*([(),*\[\]])\s*", r"\1", proto)
        out[m.group(1)] = proto
    return out


@pytest.mark.parametrize(("script", "attr", "headers"), [
    ("build_p11.py", "CDEF", ["p11glue.h", "p11exec.h"]),
    ("build_audit.py", "CDEF", ["auditw.h"]),
    ("build_gm.py", "SM4_CDEF", ["sm4.h", "gm_cpu.h"]),
    ("build_gm.py", "SM3_CDEF", ["sm3.h"]),
    ("build_gm.py", "SM2_CDEF", ["sm2.h"]),
])
def test_cdef_matches_the_headers(script: str, attr: str, headers: list[str]) -> None:
    declared = _prototypes(getattr(_load(script), attr))
    assert declared, f"{script}: no functions found in {attr}"
    in_headers: dict[str, str] = {}
    for h in headers:
        in_headers.update(_prototypes((NATIVE / h).read_text()))
    missing = sorted(set(declared) - set(in_headers))
    assert not missing, f"{script} declares functions no header has: {missing}"
    differ = {n: (declared[n], in_headers[n]) for n in declared if declared[n] != in_headers[n]}
    assert not differ, f"{script}: cdef and header disagree: {differ}"
