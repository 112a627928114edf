"""The module over HTTPS: a second ``hsmpool serve`` on the same store with --tls-cert; the
module checks the certificate against ca_file and the host name (an untrusted certificate,
or a name it does not carry, is CKR_DEVICE_ERROR at C_Login)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pkcs11_module.conftest import PIN, P11Env
from tests.server.conftest import HSMPOOL, _stop, free_port
from tests.server.test_tls import _self_signed

PROBE = r"""
import sys, pkcs11
from pkcs11 import Mechanism, ObjectClass
lib = pkcs11.lib(sys.argv[1])
tok = lib.get_slots()[0].get_token()
try:
    with tok.open(user_pin=sys.argv[2]) as s:
        k = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
        assert len(k.sign(b"over TLS", mechanism=Mechanism.ECDSA_SHA256)) == 64
        assert len(s.generate_random(8 * 32)) == 32
    print("OK")
except pkcs11.exceptions.PKCS11Error as exc:
    print(type(exc).__name__)
"""


@pytest.fixture(scope="module")
def tls_port(p11: P11Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    d = tmp_path_factory.mktemp("p11tls")
    cert, key = _self_signed(d)
    port = free_port()
    with (d / "server.log").open("wb") as log:
        proc = subprocess.Popen([str(HSMPOOL), "--config", str(p11.server.config), "serve",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--tls-cert", str(cert), "--tls-key", str(key)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}"],
                               input=b"", capture_output=True, timeout=5, check=True)
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((d / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        yield port, cert
    finally:
        _stop(proc)


def probe(p11: P11Env, tmp_path: Path, port: int, extra: str) -> str:
    conf = tmp_path / "tls.conf"
    conf.write_text(f"[slot]\nendpoint = https://127.0.0.1:{port}\n"
                    f"credential_file = {p11.cred_file}\nkey = ec alias/p11-ec\n"
                    f"timeout_ms = 5000\n{extra}\n")
    out = subprocess.run([sys.executable, "-c", PROBE, p11.module, PIN], capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "HSMPOOL_PKCS11_CONF": str(conf)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_https_with_the_servers_ca(p11: P11Env, tls_port: tuple[int, Path],
                                   tmp_path: Path) -> None:
    port, cert = tls_port
    assert probe(p11, tmp_path, port, f"ca_file = {cert}") == "OK"


def test_untrusted_certificate_is_device_error(p11: P11Env, tls_port: tuple[int, Path],
                                               tmp_path: Path) -> None:
    port, _ = tls_port
    other, _ = _self_signed(tmp_path)
    assert probe(p11, tmp_path, port, f"ca_file = {other}") == "DeviceError"


def test_wrong_server_name_is_device_error(p11: P11Env, tls_port: tuple[int, Path],
                                           tmp_path: Path) -> None:
    port, cert = tls_port
    assert probe(p11, tmp_path, port,
                 f"ca_file = {cert}\nserver_name = kms.example") == "DeviceError"
