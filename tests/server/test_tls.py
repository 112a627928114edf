"""``hsmpool serve --tls-cert --tls-key``: boto3 over HTTPS, verifying the server's
certificate; a plain-HTTP request to the TLS port gets no answer, not a crash."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.server.conftest import (
    HSMPOOL,
    REGION,
    START_TIMEOUT,
    _stop,
    create_credential,
    free_port,
    write_server_config,
)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(token_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[int, Path, object]]:
    d = tmp_path_factory.mktemp("tls")
    config = write_server_config(d, token_dir, {"tls": [6]})
    cred = create_credential(config, "tls", "admin")
    cert, key = _self_signed(d)
    port = free_port()
    log = (d / "server.log").open("wb")
    proc = subprocess.Popen([str(HSMPOOL), "--config", str(config), "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx,
                                            timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((d / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        yield port, cert, cred
    finally:
        _stop(proc)
        log.close()


def test_boto3_over_https(tls_server: tuple[int, Path, object]) -> None:
    port, cert, cred = tls_server
    kms = boto3.client("kms", endpoint_url=f"https://127.0.0.1:{port}", region_name=REGION,
                       aws_access_key_id=cred.access_key_id,  # type: ignore[attr-defined]
                       aws_secret_access_key=cred.secret,  # type: ignore[attr-defined]
                       verify=str(cert))
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    ct = kms.encrypt(KeyId=key, Plaintext=b"over tls", EncryptionContext={"t": "1"})
    out = kms.decrypt(CiphertextBlob=ct["CiphertextBlob"], EncryptionContext={"t": "1"})
    assert out["Plaintext"] == b"over tls"
    assert len(kms.generate_random(NumberOfBytes=16)["Plaintext"]) == 16


def test_untrusted_certificate_is_refused_by_the_client(tls_server: tuple[int, Path, object]
                                                         ) -> None:
    port, _, _ = tls_server
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz",
                               context=ssl.create_default_context(), timeout=5)


def test_plain_http_to_the_tls_port_does_not_crash_it(tls_server: tuple[int, Path, object]
                                                       ) -> None:
    port, cert, _ = tls_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            s.recv(1024)
        except OSError:
            pass
    ctx = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx,
                                timeout=5) as resp:
        assert json.loads(resp.read())["status"] == "ok"


def test_the_console_cookie_is_secure_over_https(tls_server: tuple[int, Path, object]
                                                 ) -> None:
    import http.client
    import json

    port, cert, cred = tls_server
    ctx = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        body = json.dumps({"access_key_id": cred.access_key_id,  # type: ignore[attr-defined]
                           "secret_access_key": cred.secret})  # type: ignore[attr-defined]
        conn.request("POST", "/console/api/session", body=body,
                      headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        cookie = r.getheader("set-cookie") or ""
    finally:
        conn.close()
    assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_sigterm_stops_a_tls_server_with_idle_keep_alive_clients(token_dir: Path,
                                                                 tmp_path: Path) -> None:
    """A client that keeps its TLS connection open and idle (as every SDK does) must not hold
    the server's shutdown: it exits by itself on SIGTERM (status 0), where it used to wait
    for the client's close_notify until the test killed it."""
    import http.client

    from tests.server.conftest import serving

    config = write_server_config(tmp_path, token_dir, {"tlsq": [6]})
    cert, key = _self_signed(tmp_path)
    with serving(["--port", "0", "--workers", "2", "--tls-cert", str(cert), "--tls-key",
                  str(key)], tmp_path / "serve.log", config=config) as (run, url):
        port = int(url.rsplit(":", 1)[1])
        clients = []
        for _ in range(4):  # likely on both workers
            conn = http.client.HTTPSConnection(
                "127.0.0.1", port, context=ssl.create_default_context(cafile=str(cert)),
                timeout=30)
            conn.request("GET", "/livez")
            assert conn.getresponse().read() == b'{"status":"live"}'
            clients.append(conn)  # kept open, idle
        assert run.stop() == 0
    for conn in clients:
        conn.close()


def test_a_client_closing_its_tls_connection_logs_nothing(tls_server: tuple[int, Path, object]
                                                          ) -> None:
    """A client that ends its TLS connection politely (close_notify, then its end of the
    socket) is not a warning: every such client once logged "returning true from
    eof_received() has no effect when using ssl" (seen in ``benchmarks.fuzz``'s server log)."""
    port, cert, _ = tls_server
    log = cert.parent / "server.log"
    ctx = ssl.create_default_context(cafile=str(cert))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            got = b""
            while b'"live"' not in got:
                got += tls.recv(4096)
            tls.unwrap().close()  # close_notify: the server sees the end of the stream
    # One more request on the same one-worker server: the loop has handled those ends.
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/livez", context=ctx,
                                timeout=5) as resp:
        assert resp.status == 200
    assert "eof_received" not in log.read_text(errors="replace")
