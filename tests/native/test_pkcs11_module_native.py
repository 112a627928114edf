"""The PKCS#11 module's C (native/pkcs11mod/): it compiles without a warning under -Wall
-Wextra, and its parsers' unit checks (native/tests_c/p11mod_units.c: JSON, base64, DER,
the configuration file, with every truncation of valid input) pass under AddressSanitizer
and UBSan. tests/pkcs11_module/test_sanitizers.py runs the whole module under them against a
server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOD = ROOT / "native" / "pkcs11mod"
SOURCES = [str(p) for p in sorted(MOD.glob("*.c"))]
FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{MOD}", "-I/usr/include/p11-kit-1"]
LIBS = ["-lssl", "-lcrypto", "-lpthread"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@needs_gcc
def test_module_compiles_without_warnings(tmp_path: Path) -> None:
    out = subprocess.run(["gcc", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", *FLAGS,
                          "-o", str(tmp_path / "m.so"), *SOURCES, *LIBS],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    syms = subprocess.run(["nm", "-D", "--defined-only", str(tmp_path / "m.so")],
                          capture_output=True, text=True, timeout=60).stdout
    exported = {line.split()[-1] for line in syms.splitlines() if " T " in line}
    assert "C_GetFunctionList" in exported
    assert all(name.startswith("C_") for name in exported), exported


@needs_gcc
def test_parser_units_under_sanitizers(tmp_path: Path) -> None:
    exe = tmp_path / "units"
    subprocess.run(["gcc", "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", *FLAGS, "-o", str(exe),
                    str(ROOT / "native" / "tests_c" / "p11mod_units.c"), *SOURCES, *LIBS],
                   check=True, capture_output=True, text=True, timeout=300)
    out = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HSMPOOL_PKCS11_QUIET": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "all checks passed" in out.stdout
