"""The KMS-instance API's TLS material (``[server] kms_instance_tls_dir``).

The KMS-instance SDKs speak HTTPS only and verify the server against a CA file they are
given (``ca_file_path``), as with Alibaba's KMS instances. At the first start with
``kms_instance_port`` set, :func:`ensure` makes in the folder (0700):

* ``ca.pem``: a CA certificate (EC P-256, 10 years) — the file to give the SDKs;
* ``ca.key``: its private key (0600), kept so the server certificate can be re-issued;
* ``server.pem``/``server.key``: a certificate (2 years) for ``localhost``, ``127.0.0.1``,
  ``::1``, the host name and ``[server] host``, signed by that CA.

Existing files are used as they are (an operator may put a certificate of their own CA
there); a server certificate that expired or is about to (30 days) is re-issued with the
kept CA key at start.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Any, Final

from kms.private_files import private_dir

CA_DAYS: Final = 3650
SERVER_DAYS: Final = 730
RENEW_DAYS: Final = 30


def _names(host: str) -> list[Any]:
    from cryptography import x509

    names: list[Any] = []
    dns = {"localhost", socket.gethostname()}
    ips = {"127.0.0.1", "::1"}
    if host not in ("0.0.0.0", "::", ""):
        try:
            ipaddress.ip_address(host)
            ips.add(host)
        except ValueError:
            dns.add(host)
    names += [x509.DNSName(d) for d in sorted(dns)]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips)]
    return names


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return pem


def _make_ca(folder: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmpool KMS-instance CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(folder / "ca.key", _key_pem(key), 0o600)
    _write(folder / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key, cert


def _issue(folder: Path, ca_key: Any, ca_cert: Any, host: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(folder / "server.key", _key_pem(key), 0o600)
    _write(folder / "server.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _due(cert_file: Path) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left < datetime.timedelta(days=RENEW_DAYS)


def ensure(folder: str, host: str) -> Path:
    """Make what is missing (see the module docstring); returns the folder."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d = Path(folder)
    private_dir(d)
    server_cert, server_key = d / "server.pem", d / "server.key"
    if server_cert.exists() and server_key.exists() and not _due(server_cert):
        return d
    if (d / "ca.pem").exists() and (d / "ca.key").exists():
        ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    elif server_cert.exists() and server_key.exists():
        return d  # an operator's certificate without its CA key here: theirs to renew
    else:
        ca_key, ca_cert = _make_ca(d)
    _issue(d, ca_key, ca_cert, host)
    return d


def context(folder: str) -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2 or later) from the folder's certificate and key."""
    d = Path(folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(d / "server.pem"), str(d / "server.key"))
    return ctx
