"""OpenSSL 3 with the pkcs11-provider (Debian's package) on ``libhsmpool-pkcs11.so``: ``openssl
pkeyutl -sign`` with KMS RSA and ECDSA keys named by PKCS#11 URI, the signatures checked with
the public keys GetPublicKey exports, and ``openssl s_server`` using a KMS key as its
certificate key while ``openssl s_client`` completes a TLS handshake."""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from tests.pkcs11_module.conftest import LISTED, PIN, P11Env, need_tool
from tests.server.conftest import free_port


def provider_path() -> Path:
    out = subprocess.run([need_tool("openssl"), "version", "-m"], capture_output=True,
                         text=True, check=True).stdout
    path = Path(out.split('"')[1]) / "pkcs11.so"
    if not path.is_file():
        pytest.skip(f"{path} is missing: the pkcs11-provider package is not installed "
                    "(scripts/setup.sh --test installs it)")
    return path


@pytest.fixture(scope="module")
def ossl(p11: P11Env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("openssl")
    (d / "pin").write_text(PIN)
    (d / "pin").chmod(0o600)
    cnf = d / "openssl.cnf"
    cnf.write_text(f"""openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = {provider_path()}
pkcs11-module-path = {p11.module}
pkcs11-module-token-pin = file:{d / "pin"}
activate = 1
""")
    return {**p11.env(), "OPENSSL_CONF": str(cnf), "HSMPOOL_PKCS11_QUIET": "1"}


def openssl(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(["openssl", *args], env=env, capture_output=True, timeout=120, **kw)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-3000:]
    return done


def uri(label: str) -> str:
    return f"pkcs11:token={LISTED};object={label};type=private"


def public_key(p11: P11Env, label: str) -> Any:
    return serialization.load_der_public_key(
        p11.admin.get_public_key(KeyId=f"alias/p11-{label}")["PublicKey"])


@pytest.mark.parametrize("label", ["ec", "rsa-sign"])
def test_pkeyutl_sign_verifies_with_the_exported_public_key(
        p11: P11Env, ossl: dict[str, str], tmp_path: Path, label: str) -> None:
    msg = tmp_path / "msg"
    msg.write_bytes(b"signed by openssl through PKCS#11 " * 10)
    sig = tmp_path / "sig"
    openssl(ossl, "pkeyutl", "-sign", "-inkey", uri(label), "-rawin", "-digest", "sha256",
            "-in", str(msg), "-out", str(sig))
    pk = public_key(p11, label)
    if label == "ec":
        pk.verify(sig.read_bytes(), msg.read_bytes(), ec.ECDSA(hashes.SHA256()))
    else:
        pk.verify(sig.read_bytes(), msg.read_bytes(), padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("label", ["ec", "rsa-sign"])
def test_tls_server_with_a_kms_key(p11: P11Env, ossl: dict[str, str], tmp_path: Path,
                                   label: str) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(public_key(p11, label)).serial_number(2)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                               "-cert", str(tmp_path / "cert.pem"), "-key", uri(label),
                               "-naccept", "1", "-quiet"], env=ossl, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = b""
        for _ in range(100):
            if server.poll() is not None:
                break
            client = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile",
                 str(tmp_path / "ca.pem"), "-verify_return_error", "-verify_hostname",
                 "localhost", "-brief"], env={**os.environ, "OPENSSL_CONF": "/dev/null"},
                input=b"hello over TLS\n", capture_output=True, timeout=60)
            out = client.stdout + client.stderr
            if client.returncode == 0 or b"Connection refused" not in out:
                break
            time.sleep(0.1)
        assert b"Verification: OK" in out, out.decode(errors="replace")
        assert b"CONNECTION ESTABLISHED" in out
    finally:
        server.kill()
        server.communicate(timeout=30)
    # the handshake's signature was made by the KMS, under the module's principal
    last = [r for r in p11.audit(200) if r["Principal"] == p11.principal][-1]
    assert last["Action"] == "kms:Sign" and last["KeyId"] == p11.keys[label]["KeyId"]
