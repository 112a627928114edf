"""The C-level SM4 self-tests, built and run from the test suite so CI runs them:

- ``native/tools/gen_sm4_tables.py --check``: the GFNI/AES-NI constants in the C sources are
  the ones derived from the standard's S-box;
- ``native/tests_c/sbox_selftest.c``: every vector S-box family on all 256 inputs in every
  byte position, with the real instructions;
- ``native/tests_c/diff_sm4.c`` under AddressSanitizer and UBSan: every implementation
  against the portable one on exact-size misaligned buffers, with CPU features hidden too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
SOURCES = [str(p) for p in sorted(NATIVE.glob("sm4*.c"))] + [str(NATIVE / "gm_cpu.c")]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def _build_and_run(tmp_path: Path, name: str, flags: list[str]) -> str:
    exe = tmp_path / name
    subprocess.run(["gcc", *flags, "-o", str(exe), str(NATIVE / "tests_c" / f"{name}.c"),
                    *SOURCES], check=True, capture_output=True, text=True, timeout=300)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_derived_constants_match_the_sources() -> None:
    proc = subprocess.run([sys.executable, str(NATIVE / "tools" / "gen_sm4_tables.py"),
                           "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 mismatches" in proc.stdout


@needs_gcc
def test_sbox_selftest(tmp_path: Path) -> None:
    _build_and_run(tmp_path, "sbox_selftest", ["-O2"])


@needs_gcc
def test_differential_under_sanitizers(tmp_path: Path) -> None:
    _build_and_run(tmp_path, "diff_sm4", ["-O1", "-g", "-fsanitize=address,undefined",
                                          "-fno-sanitize-recover=all"])
