"""The container image: its entrypoint for real (outside a container: first start makes
tokens, configuration and an admin credential in the data folder, the server answers with
that credential, a second start reuses everything), and ``docker build`` when a container
engine is there (skipped otherwise: this machine has none)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from tests.server.conftest import ServeRun

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def _env(data: Path) -> dict[str, str]:
    return {"HSMPOOL_DATA": str(data), "HSMPOOL_HOME": str(ROOT), "HSMPOOL_TOKENS": "2",
            "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
            "HSMPOOL_CONFIG": str(data / "hsmpool.toml")}


def _start(data: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(["bash", str(ENTRYPOINT), "hsmpool", "serve", "--host",
                                 "127.0.0.1", "--port", "0", "--workers", "1"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **_env(data)})


def test_entrypoint_first_start_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    urls = []
    for n in range(2):
        run = ServeRun(_start(data, tmp_path / f"start{n}.log"), tmp_path / f"start{n}.log")
        try:
            line = run.wait_for("hsmpool: serving AWS KMS on ")
            urls.append(line.split(" on ", 1)[1].split(" (", 1)[0])
            cred = json.loads((data / "credentials.json").read_text())
            kms = boto3.client("kms", endpoint_url=urls[-1], region_name="us-east-1",
                               aws_access_key_id=cred["AccessKeyId"],
                               aws_secret_access_key=cred["SecretAccessKey"])
            if n == 0:
                assert "admin credential" in run.text()
                key = kms.create_key()["KeyMetadata"]["KeyId"]
            else:
                assert "admin credential" not in run.text()  # made once, kept in /data
            assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
        finally:
            run.stop()
    assert (data / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert re.search(r"tokens = \[\"t0\",\"t1\"\]", (data / "hsmpool.toml").read_text())


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30
                              ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _docker_works(), reason="no container engine (docker info fails)")
def test_the_image_builds_and_serves(tmp_path: Path) -> None:
    tag = "hsmpool-test:latest"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1800)
    name = f"hsmpool-test-{os.getpid()}"
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8080", tag],
                   check=True, timeout=120)
    try:
        port = subprocess.run(["docker", "port", name, "8080"], capture_output=True,
                              text=True, check=True).stdout.split(":")[-1].strip()
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                            timeout=3) as r:
                    assert json.loads(r.read())["status"] == "ok"
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(1)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
