"""``hsmpool pkcs11 credential``: the module's credential file (format in kms/cli/pkcs11.py),
written 0600, readable only with its PIN, never echoing the PIN or the secret."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from kms.cli.pkcs11 import CredentialError, decrypt_credential, encrypt_credential

ROOT = Path(__file__).resolve().parents[2]
HSMPOOL = ROOT / ".venv" / "bin" / "hsmpool"
KEY = {"AccessKeyId": "HSMPTESTTESTTESTTEST", "SecretAccessKey": "s3cr3t-value-for-the-test",
       "Instance": "default", "Principal": "app"}


def run(*args: str, pin: str | None = "1234", stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HSMPOOL_PKCS11_PIN"}
    if pin is not None:
        env["HSMPOOL_PKCS11_PIN"] = pin
    return subprocess.run([str(HSMPOOL), "pkcs11", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env)


def test_round_trip_and_wrong_pin() -> None:
    doc = encrypt_credential(KEY, "1234", n=1024)
    assert decrypt_credential(doc, "1234") == {"AccessKeyId": KEY["AccessKeyId"],
                                                "SecretAccessKey": KEY["SecretAccessKey"]}
    with pytest.raises(CredentialError, match="wrong PIN"):
        decrypt_credential(doc, "1235")
    tampered = {**doc, "n": 2048}  # the parameters are bound by the AAD
    with pytest.raises(CredentialError):
        decrypt_credential(tampered, "1234")
    assert KEY["SecretAccessKey"] not in json.dumps(doc)


def test_cli_writes_a_private_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "m.cred"
    done = run("credential", "--out", str(out), "--from-json", "-", stdin=json.dumps(KEY))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "1234" not in done.stdout + done.stderr
    assert KEY["SecretAccessKey"] not in done.stdout + done.stderr + out.read_text()
    assert decrypt_credential(json.loads(out.read_text()), "1234")["AccessKeyId"] == \
        KEY["AccessKeyId"]
    again = run("credential", "--out", str(out), "--from-json", "-", stdin=json.dumps(KEY))
    assert again.returncode == 2 and "exists" in again.stderr


def test_cli_needs_a_pin_and_an_access_key(tmp_path: Path) -> None:
    out = tmp_path / "m.cred"
    no_pin = run("credential", "--out", str(out), "--from-json", "-", pin=None,
                 stdin=json.dumps(KEY))
    assert no_pin.returncode == 2 and "no PIN" in no_pin.stderr and not out.exists()
    bad = run("credential", "--out", str(out), "--from-json", "-", stdin='{"AccessKeyId": "x"}')
    assert bad.returncode == 2 and "SecretAccessKey" in bad.stderr and not out.exists()
    empty = run("credential", "--out", str(out), "--from-json", "-", pin="",
                stdin=json.dumps(KEY))
    assert empty.returncode == 2 and not out.exists()


def test_module_path() -> None:
    done = run("module-path")
    assert done.returncode == 0 and done.stdout.strip().endswith("libhsmpool-pkcs11.so")
    assert Path(done.stdout.strip()).is_file()
