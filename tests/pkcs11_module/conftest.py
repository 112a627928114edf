"""Fixtures of the PKCS#11 module tests: a real ``hsmpool serve`` (instance "p11" on token 7,
which no other server fixture uses), real KMS keys made with boto3, a module credential made
with ``hsmpool credentials create`` and written with ``hsmpool pkcs11 credential``, and the
module's configuration with two slots over that credential:

* slot 0, token "kms-listed": the configured keys (by alias), plus "hidden", a key the
  credential's policy denies;
* slot 1, token "kms-all": ``discover = true``.

The module principal may do anything except touch the "hidden" key (an explicit Deny).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hsmpool import pkcs11_module_path
from tests.server.conftest import (
    HSMPOOL,
    Cred,
    Server,
    create_credential,
    run_server,
    write_server_config,
)

PIN = "p11-test-pin-0000"
INSTANCE = "p11"
TOKENS = {INSTANCE: [7]}
#: label -> (KeySpec, KeyUsage) of the keys the module shows.
KEYS: dict[str, tuple[str, str]] = {
    "rsa-sign": ("RSA_2048", "SIGN_VERIFY"),
    "rsa-enc": ("RSA_2048", "ENCRYPT_DECRYPT"),
    "ec": ("ECC_NIST_P256", "SIGN_VERIFY"),
    "sm2": ("SM2", "SIGN_VERIFY"),
    "aes": ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
}
LISTED = "kms-listed"
DISCOVER = "kms-all"


@dataclass
class P11Env:
    server: Server
    admin: Any  # boto3 kms client of the instance admin
    module: str
    conf: Path
    cred_file: Path
    principal: str
    cred: Cred
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> KeyMetadata
    hidden: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, "HSMPOOL_PKCS11_CONF": str(self.conf)}

    def audit(self, n: int = 100000) -> list[dict[str, Any]]:
        out = subprocess.run([str(HSMPOOL), "--config", str(self.server.config), "audit",
                              "tail", "-n", str(n), "--json"], capture_output=True, text=True,
                             timeout=60, check=True)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def write_module_conf(path: Path, server: Server, cred_file: Path, hidden_arn: str,
                      extra: str = "") -> None:
    lines = ["# written by tests/pkcs11_module/conftest.py", "[slot]", f"token_label = {LISTED}",
             f"endpoint = {server.url}", "region = us-east-1", f"credential_file = {cred_file}",
             "refresh_seconds = 0"]
    lines += [f"key = {label} alias/p11-{label}" for label in KEYS]
    lines += [f"key = hidden {hidden_arn}", extra, "[slot]", f"token_label = {DISCOVER}",
              f"endpoint = {server.url}", f"credential_file = {cred_file}", "discover = true"]
    path.write_text("\n".join(lines) + "\n")


def write_credential(out: Path, cred: Cred, pin: str = PIN) -> None:
    doc = json.dumps({"AccessKeyId": cred.access_key_id, "SecretAccessKey": cred.secret})
    subprocess.run([str(HSMPOOL), "pkcs11", "credential", "--out", str(out), "--from-json",
                    "-", "--force"], input=doc, text=True, check=True, timeout=60,
                   capture_output=True, env={**os.environ, "HSMPOOL_PKCS11_PIN": pin})


@pytest.fixture(scope="package")
def p11(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[P11Env]:
    d = tmp_path_factory.mktemp("pkcs11")
    config = write_server_config(d / "server", token_dir, TOKENS)
    admin_cred = create_credential(config, INSTANCE, "admin")
    with run_server(config, workers=1) as srv:
        admin = srv.client(admin_cred)
        keys = {}
        for label, (spec, usage) in KEYS.items():
            md = admin.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
            admin.create_alias(AliasName=f"alias/p11-{label}", TargetKeyId=md["KeyId"])
            keys[label] = md
        hidden = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        admin.create_alias(AliasName="alias/p11-hidden", TargetKeyId=hidden["KeyId"])
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "kms:*", "Resource": hidden["Arn"]}]}
        principal = "pkcs11-module"
        cred = create_credential(config, INSTANCE, principal, policy)
        cred_file = d / "module.cred"
        write_credential(cred_file, cred)
        conf = d / "module.conf"
        write_module_conf(conf, srv, cred_file, hidden["Arn"])
        yield P11Env(srv, admin, pkcs11_module_path(), conf, cred_file, principal, cred,
                     keys, hidden)


@pytest.fixture(scope="package")
def p11lib(p11: P11Env) -> Iterator[Any]:
    """The module loaded in this process by python-pkcs11 (C_Initialize reads the
    configuration named by HSMPOOL_PKCS11_CONF, so it is set first), with the slot of
    LISTED logged in by one session kept open: PKCS#11 login state is per slot, so the
    tests' sessions are opened without a PIN (python-pkcs11 treats the second C_Login's
    CKR_USER_ALREADY_LOGGED_IN as an error, and logs every session out when a session
    that logged in closes)."""
    import pkcs11

    os.environ["HSMPOOL_PKCS11_CONF"] = str(p11.conf)
    lib = pkcs11.lib(p11.module)
    login = lib.get_token(token_label=LISTED).open(user_pin=PIN)
    yield lib
    login.close()


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh --test installs it)")
    return path
