"""Virtual environments for SDKs whose pins conflict with the test environment's (the
Alibaba Cloud SDKs beside boto3): made once per checkout under ``var/sdk-venvs``, keyed by
their requirements, and reused while those stay the same. Two test processes of one checkout
(CI runs the PostgreSQL pass beside the main one) make each venv once: the making is under
a lock file beside it as well as a thread lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import threading
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "var" / "sdk-venvs"

ALIBABA_OPENAPI = ("alibabacloud-kms20160120==3.3.1", "alibabacloud-tea-openapi>=0.4,<0.5")
#: The KMS-instance SDKs: dkms-gcs's Client and kms-python-sdk's TransferClient (which pins
#: its own alibabacloud-kms20160120).
ALIBABA_KMS_INSTANCE = ("alibabacloud-dkms-gcs==1.0.2", "alibabacloud-kms-python-sdk==1.1.3")


#: Every SDK venv the tests use: :func:`prepare_in_background` makes them at the start of a
#: session, beside the first tests (a fresh checkout spends about 20 s on each).
ALL: dict[str, tuple[str, ...]] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(home: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(home), threading.Lock())


def prepare_in_background() -> None:
    """Start making every venv of :data:`ALL` that is missing, each in a thread; a test that
    needs one before it is ready waits for it in :func:`sdk_python` (whose errors it sees)."""
    for name, requirements in ALL.items():
        def make(name: str = name, requirements: tuple[str, ...] = requirements) -> None:
            try:
                sdk_python(name, requirements)
            except Exception:  # noqa: BLE001 - sdk_python raises it again for the test
                pass

        threading.Thread(target=make, name=f"sdk-venv-{name}", daemon=True).start()


def sdk_python(name: str, requirements: tuple[str, ...]) -> Path:
    """The interpreter of a venv with ``requirements`` installed (made if needed)."""
    tag = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    home = BASE / f"{name}-{tag}"
    python = home / "bin" / "python"
    stamp = home / ".installed"
    with _lock(home):
        if not stamp.exists():
            home.parent.mkdir(parents=True, exist_ok=True)
            with open(home.parent / f"{home.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be making it
                if not stamp.exists():
                    _make(home, python, stamp, requirements)
    return python


def _make(home: Path, python: Path, stamp: Path, requirements: tuple[str, ...]) -> None:
    home.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    out = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"pip install {requirements} failed: {out.stderr[-2000:]}")
    stamp.write_text(json.dumps(list(requirements)))


def run_sdk(python: Path, code: str, *args: str, timeout: float = 120) -> Any:
    """Run ``code`` in the SDK's interpreter; it prints one JSON document (its result)."""
    out = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"SDK script failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


ALL.update({"alibaba-openapi": ALIBABA_OPENAPI, "alibaba-kms-instance": ALIBABA_KMS_INSTANCE})

__all__ = ["ALIBABA_KMS_INSTANCE", "ALIBABA_OPENAPI", "ALL", "prepare_in_background", "run_sdk",
           "sdk_python"]
