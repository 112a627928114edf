"""The PKCS#11 shim (native/p11shim.c), its loader (hsmpool._shim) and the fault injector
(tests/faults.py).

Everything runs against real SoftHSM2 tokens made by softhsm-config/make-tokens.sh. A module is
initialised once per process, so each scenario that loads one runs in its own interpreter
(tests/_shim_scenarios.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsmpool import _shim
from hsmpool._shim import shim_for, shim_library
from tests.faults import FaultInjector

ROOT = Path(__file__).resolve().parent.parent
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
SCENARIOS = Path(__file__).resolve().parent / "_shim_scenarios.py"
CKR_GENERAL_ERROR = 5

pytestmark = pytest.mark.skipif(
    not os.path.exists(SOFTHSM) or shutil.which("softhsm2-util") is None,
    reason="SoftHSM2 not installed",
)


@pytest.fixture(scope="module")
def shim_tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three SoftHSM2 tokens shimtest-0..2 in a private directory (PIN only in a 0600 file)."""
    base = tmp_path_factory.mktemp("shim-tokens")
    subprocess.run(
        ["bash", str(ROOT / "softhsm-config" / "make-tokens.sh"), str(base), "3", "shimtest"],
        check=True,
        capture_output=True,
    )
    return {
        "conf": str(base / "softhsm2.conf"),
        "pin_file": str(base / "user.pin"),
    }


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("HSMPOOL_CACHE_DIR", str(directory))
    return directory


def run_scenario(
    name: str, args: dict[str, Any], tokens: dict[str, str], **env: str
) -> dict[str, Any]:
    full_env = dict(os.environ)
    for var in ("HSMPOOL_P11_FAULTS", "HSMPOOL_P11_MODULE"):
        full_env.pop(var, None)
    full_env.update(env)
    full_env["SOFTHSM2_CONF"] = tokens["conf"]
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    args = {"pin_file": tokens["pin_file"], **args}
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS), name, json.dumps(args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"scenario {name} exited {proc.returncode}: {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def results(calls: list[dict[str, Any]]) -> list[str]:
    return [c["result"] for c in calls]


# --- loader -----------------------------------------------------------------------------------


def test_shim_for_makes_a_private_copy_with_sidecar(cache: Path) -> None:
    path = shim_for(SOFTHSM)
    copy = Path(path)
    assert copy.parent == cache
    assert copy.name.startswith("p11shim-") and copy.name.endswith(".so")
    assert len(copy.name) == len("p11shim-") + 16 + len(".so")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert Path(path + ".target").read_text() == os.path.realpath(SOFTHSM) + "\n"
    assert copy.read_bytes() == shim_library().read_bytes()
    assert copy.stat().st_ino != shim_library().stat().st_ino
    # Reused as is, and the copy is not rewritten.
    before = copy.stat().st_ino
    assert shim_for(SOFTHSM) == path
    assert copy.stat().st_ino == before


def test_shim_for_distinct_real_modules_get_distinct_copies(cache: Path, tmp_path: Path) -> None:
    other = tmp_path / "libother.so"
    shutil.copyfile(SOFTHSM, other)
    a, b = shim_for(SOFTHSM), shim_for(other)
    assert a != b
    assert Path(b + ".target").read_text().strip() == str(other.resolve())


def test_shim_for_missing_module_is_a_clear_error(cache: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-module.so"
    with pytest.raises(FileNotFoundError, match="no-such-module.so"):
        shim_for(missing)
    assert not list(cache.glob("p11shim-*")) if cache.exists() else True


def test_shim_library_missing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shim, "_PACKAGE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"native shim not built: pip install \."):
        shim_library()


def test_shim_for_concurrent_processes(cache: Path) -> None:
    code = f"from hsmpool._shim import shim_for; print(shim_for({SOFTHSM!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outs = {p.communicate(timeout=30)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1
    (path,) = outs
    assert Path(path).read_bytes() == shim_library().read_bytes()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_bad_sidecar_gives_general_error_not_a_crash(cache: Path, tmp_path: Path) -> None:
    path = shim_for(SOFTHSM)
    copy = tmp_path / "bad-shim.so"
    shutil.copyfile(path, copy)
    (tmp_path / "bad-shim.so.target").write_text(str(tmp_path / "gone.so") + "\n")
    lib = ctypes.CDLL(str(copy))
    fn = lib.C_GetFunctionList
    fn.restype = ctypes.c_ulong
    out = ctypes.c_void_p()
    assert fn(ctypes.byref(out)) == CKR_GENERAL_ERROR
    assert out.value is None
    # A sidecar pointing at a shim copy (a loop) is refused too.
    loop = tmp_path / "loop-shim.so"
    shutil.copyfile(path, loop)
    (tmp_path / "loop-shim.so.target").write_text(str(loop) + "\n")
    fn2 = ctypes.CDLL(str(loop)).C_GetFunctionList
    fn2.restype = ctypes.c_ulong
    assert fn2(ctypes.byref(out)) == CKR_GENERAL_ERROR


def test_no_sidecar_falls_back_to_env(shim_tokens: dict[str, str], tmp_path: Path) -> None:
    bare = tmp_path / "p11shim-nosidecar.so"
    shutil.copyfile(shim_library(), bare)
    ok = run_scenario("load", {"module": str(bare)}, shim_tokens, HSMPOOL_P11_MODULE=SOFTHSM)
    assert {"shimtest-0", "shimtest-1", "shimtest-2"} <= set(ok["labels"])
    err = run_scenario("load", {"module": str(bare)}, shim_tokens)
    assert err == {"error": "GeneralError"}


# --- locking ------------------------------------------------------------------------------------


def test_sixteen_threads_on_one_token(shim_tokens: dict[str, str], cache: Path) -> None:
    out = run_scenario(
        "hammer",
        {"module": shim_for(SOFTHSM), "label": "shimtest-0", "threads": 16, "seconds": 3},
        shim_tokens,
    )
    assert out["failures"] == []
    assert out["threads"] == 16
    assert out["bad"] == 0
    assert out["gcm"] > 0 and out["sign"] > 0


def test_sixteen_threads_with_fault_rules_changing(
    shim_tokens: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    out = run_scenario(
        "hammer",
        {
            "module": shim_for(SOFTHSM),
            "label": "shimtest-0",
            "other": "shimtest-1",
            "threads": 16,
            "seconds": 2,
            "faults_file": str(tmp_path / "faults"),
        },
        shim_tokens,
    )
    assert out["failures"] == []
    assert out["bad"] == 0
    assert out["gcm"] > 0 and out["sign"] > 0
    assert out["rewrites"] > 0


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error", "heal_all"),
    [("device_error", "DeviceError", False), ("device_removed", "DeviceRemoved", True)],
)
def test_error_faults(
    shim_tokens: dict[str, str], cache: Path, tmp_path: Path, kind: str, error: str, heal_all: bool
) -> None:
    out = run_scenario(
        "faults",
        {
            "module": shim_for(SOFTHSM),
            "faults_file": str(tmp_path / "faults"),
            "a": "shimtest-0",
            "b": "shimtest-1",
            "kind": kind,
            "every": 3,
            "heal_all": heal_all,
        },
        shim_tokens,
    )
    assert results(out["before_a"]) == ["ok"] * 3
    # every=1: every call on token A fails, slot calls (C_OpenSession) included ...
    assert results(out["every1_a"]) == [error] * 3
    assert out["every1_open_a"]["result"] == error
    # ... while token B, same module, keeps working.
    assert results(out["every1_b"]) == ["ok"] * 3
    assert out["every1_b_gcm"] is True
    # every=3: the 3rd and 6th call after the new rule fail.
    assert results(out["everyN_a"]) == ["ok", "ok", error, "ok", "ok", error]
    assert results(out["everyN_b"]) == ["ok"] * 3
    # heal: same sessions, no re-initialisation.
    assert results(out["healed_a"]) == ["ok"] * 3
    assert out["healed_a_gcm"] is True
    assert out["healed_open_a"]["result"] == "ok"


def test_hang_fault(shim_tokens: dict[str, str], cache: Path, tmp_path: Path) -> None:
    hang_s = 0.15
    out = run_scenario(
        "faults",
        {
            "module": shim_for(SOFTHSM),
            "faults_file": str(tmp_path / "faults"),
            "a": "shimtest-0",
            "b": "shimtest-1",
            "kind": "hang",
            "every": 2,
            "hang_ms": int(hang_s * 1000),
        },
        shim_tokens,
    )
    # A hang is a slow token: the call still succeeds.
    assert results(out["every1_a"]) == ["ok"] * 3
    assert all(c["seconds"] >= hang_s * 0.95 for c in out["every1_a"])
    assert out["every1_open_a"]["result"] == "ok"
    assert out["every1_open_a"]["seconds"] >= hang_s * 0.95
    assert results(out["every1_b"]) == ["ok"] * 3
    # every=2: calls 2 and 4 are slow (lower bounds only).
    assert results(out["everyN_a"]) == ["ok"] * 4
    assert out["everyN_a"][1]["seconds"] >= hang_s * 0.95
    assert out["everyN_a"][3]["seconds"] >= hang_s * 0.95
    assert results(out["healed_a"]) == ["ok"] * 3


def test_two_real_modules_in_one_process(
    shim_tokens: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    # A second, distinct real module: a copy of SoftHSM2 (another inode, its own globals).
    other = tmp_path / "libsofthsm2-copy.so"
    shutil.copyfile(SOFTHSM, other)
    m1, m2 = shim_for(SOFTHSM), shim_for(other)
    assert Path(m1 + ".target").read_text() != Path(m2 + ".target").read_text()
    out = run_scenario(
        "two_modules",
        {
            "module1": m1,
            "module2": m2,
            "faults_file": str(tmp_path / "faults"),
            "label": "shimtest-2",
        },
        shim_tokens,
    )
    # Only copy 1 was initialised with HSMPOOL_P11_FAULTS: the rule does not leak into copy 2.
    assert out == {
        "distinct": True,
        "lib1": "DeviceRemoved",
        "lib2": "ok",
        "lib2_gcm": True,
        "lib1_healed": "ok",
    }


def _ock_env() -> dict[str, str] | None:
    """openCryptoki soft token details from softhsm-config/opencryptoki.sh, if set up."""
    env_file = ROOT / "var" / "opencryptoki" / "ock.env"
    if not env_file.is_file():
        return None
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    needed = ("OCK_MODULE", "OCK_LABEL", "OCK_USER_PIN_FILE")
    if not all(values.get(k) for k in needed) or not os.path.exists(values["OCK_MODULE"]):
        return None
    if not os.access(values["OCK_USER_PIN_FILE"], os.R_OK):
        return None
    return values


def test_softhsm_and_opencryptoki_in_one_process(
    shim_tokens: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    ock = _ock_env()
    if ock is None:
        pytest.skip("openCryptoki soft token not set up (softhsm-config/opencryptoki.sh)")
    out = run_scenario(
        "mixed",
        {
            "faults_file": str(tmp_path / "faults"),
            "softhsm": {
                "module": shim_for(SOFTHSM),
                "label": "shimtest-0",
                "pin_file": shim_tokens["pin_file"],
            },
            "ock": {
                "module": shim_for(ock["OCK_MODULE"]),
                "label": ock["OCK_LABEL"],
                "pin_file": ock["OCK_USER_PIN_FILE"],
            },
        },
        shim_tokens,
    )
    assert out == {
        "softhsm_aes": True,
        "ock_aes": True,
        "softhsm_faulted": "ok",
        "ock_faulted": "DeviceError",
        "softhsm_healed": "ok",
        "ock_healed": "ok",
    }


# --- FaultInjector ------------------------------------------------------------------------------


def test_fault_injector_file_format(tmp_path: Path) -> None:
    path = tmp_path / "rules"
    inj = FaultInjector(path)
    assert inj.env() == {"HSMPOOL_P11_FAULTS": str(path)}
    inj.fail("tok-a", "device_error", every=4)
    inj.fail("tok b", "hang", hang_ms=50)
    text = path.read_text()
    assert "label=tok-a fault=device_error every=4\n" in text
    assert 'label="tok b" fault=hang every=1 hang_ms=50\n' in text
    inj.heal("tok-a")
    assert "tok-a" not in path.read_text()
    inj.heal()
    assert "label=" not in path.read_text()
    with pytest.raises(ValueError):
        inj.fail("x" * 33, "device_error")
    with pytest.raises(ValueError):
        inj.fail("ok", "device_error", every=0)
    with pytest.raises(ValueError):
        inj.fail("ok", "explode")  # type: ignore[arg-type]


def test_fault_injector_every_write_changes_mtime(tmp_path: Path) -> None:
    inj = FaultInjector(tmp_path / "rules")
    seen: list[tuple[int, int, int]] = []
    for _ in range(20):
        inj.fail("t", "device_error")
        inj.heal()
        st = os.stat(inj.path)
        seen.append((st.st_mtime_ns, st.st_size, st.st_ino))
    mtimes = [s[0] for s in seen]
    assert mtimes == sorted(mtimes) and len(set(mtimes)) == len(mtimes)


@pytest.fixture(autouse=True)
def _no_fault_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("HSMPOOL_P11_FAULTS", raising=False)
    yield
