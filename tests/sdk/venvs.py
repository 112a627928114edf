"""Virtual environments for SDKs whose pins conflict with the test environment's (the
Alibaba Cloud SDKs beside boto3): made once per checkout under ``var/sdk-venvs``, keyed by
their requirements, and reused while those stay the same."""

from __future__ import annotations

import hashlib
import json
import subprocess
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "var" / "sdk-venvs"

ALIBABA_OPENAPI = ("alibabacloud-kms20160120==3.3.1", "alibabacloud-tea-openapi>=0.4,<0.5")
#: The KMS-instance SDKs: dkms-gcs's Client and kms-python-sdk's TransferClient (which pins
#: its own alibabacloud-kms20160120).
ALIBABA_KMS_INSTANCE = ("alibabacloud-dkms-gcs==1.0.2", "alibabacloud-kms-python-sdk==1.1.3")


def sdk_python(name: str, requirements: tuple[str, ...]) -> Path:
    """The interpreter of a venv with ``requirements`` installed (made if needed)."""
    tag = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    home = BASE / f"{name}-{tag}"
    python = home / "bin" / "python"
    stamp = home / ".installed"
    if not stamp.exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        out = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"pip install {requirements} failed: {out.stderr[-2000:]}")
        stamp.write_text(json.dumps(list(requirements)))
    return python


def run_sdk(python: Path, code: str, *args: str, timeout: float = 120) -> Any:
    """Run ``code`` in the SDK's interpreter; it prints one JSON document (its result)."""
    out = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"SDK script failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


__all__ = ["ALIBABA_KMS_INSTANCE", "ALIBABA_OPENAPI", "run_sdk", "sdk_python"]
