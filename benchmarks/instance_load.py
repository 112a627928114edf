"""Requests of the KMS-instance API (Alibaba's dkms-gcs protocol) for ``benchmarks.server``.

The "kms-instance" target is the benchmark's hsmpool server, on its KMS-instance port
(HTTPS, ``--kms-instance-port``), sent ``Encrypt`` requests (32 random bytes under the
same key as the AWS rows) as ``alibabacloud-dkms-gcs`` sends them: a protobuf body and the
headers the SDK signs, RSA PKCS#1 v1.5 SHA-256 signed by a client key of an application
access point made with ``hsmpool aap create``. Each request is distinct (its own plaintext)
and signed just before the run that sends it, since the server refuses a signed request
seen more than 2 s earlier (a replay); signing costs the benchmark about 1 ms of CPU per
request, outside the timed runs.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import json
import secrets
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kms.api import protowire
from kms.api.kms_instance import APIS
from kms.api.kms_instance_auth import string_to_sign

HOST: Final = "127.0.0.1"
PLAINTEXT_BYTES: Final = 32
FIRST_RATE: Final = 4_000.0  # req/s the first run's requests are made for
HEADROOM: Final = 1.5  # later runs: this times the fastest rate seen so far


@dataclass(frozen=True)
class ClientKey:
    client_key_id: str
    private_key: Any  # cryptography's RSAPrivateKey
    ca_file: Path


def make_client_key(hsmpool: str, cfg: Path, instance: str, out: Path) -> ClientKey:
    """``hsmpool aap create`` (the real CLI): an access point for the instance's keys, and
    its client key loaded from the files it wrote."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    done = subprocess.run([hsmpool, "--config", str(cfg), "aap", "create", "--instance",
                           instance, "--name", "bench", "--role", "CryptoServiceKeyUser",
                           "--resource", "key/*", "--network", "127.0.0.1/32", "--out",
                           str(out), "--json"], capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"aap create failed: {done.stderr.strip()}")
    doc = json.loads(done.stdout)
    key_doc = json.loads(Path(doc["KeyFile"]).read_text())
    password = Path(doc["PasswordFile"]).read_text().encode()
    private_key, _, _ = pkcs12.load_key_and_certificates(
        base64.b64decode(key_doc["PrivateKeyData"]), password)
    return ClientKey(doc["ClientKeyId"], private_key, cfg.parent / "kms-instance-tls" / "ca.pem")


def signed_request(private_key: Any, client_key_id: str, port: int, api: str, body: bytes,
                   date: str | None = None, extra: dict[str, str] | None = None) -> bytes:
    """One raw HTTP/1.1 request of the KMS-instance API ``api`` with ``body`` (protobuf, as
    given: it need not be a valid message), with the headers the SDK signs (and ``extra``
    ones: an ``x-kms-*`` header is signed too), RSA PKCS#1 v1.5 SHA-256 signed by
    ``private_key`` now (or with ``date``, an RFC 7231 date)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    headers = {"accept": "application/x-protobuf", "host": f"{HOST}:{port}",
               "date": date or email.utils.formatdate(usegmt=True),
               "user-agent": "benchmarks.server (kms-instance)",
               "x-kms-apiversion": "dkms-gcs-0.2", "x-kms-apiname": api,
               "x-kms-signaturemethod": "RSA_PKCS1_SHA_256",
               "x-kms-acccesskeyid": client_key_id,
               "content-type": "application/x-protobuf",
               "content-length": str(len(body)),
               "content-sha256": hashlib.sha256(body).hexdigest().upper(), **(extra or {})}
    signature = private_key.sign(string_to_sign("POST", headers), padding.PKCS1v15(),
                                 hashes.SHA256())
    headers["authorization"] = "Bearer " + base64.b64encode(signature).decode()
    head = "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def sign_encrypts(key: ClientKey, port: int, key_id: str, n: int) -> list[bytes]:
    """``n`` raw HTTP/1.1 Encrypt requests, each with its own plaintext, signed now."""
    schema = APIS["Encrypt"][0]
    date = email.utils.formatdate(usegmt=True)
    return [signed_request(key.private_key, key.client_key_id, port, "Encrypt",
                           protowire.encode({"KeyId": key_id,
                                             "Plaintext": secrets.token_bytes(PLAINTEXT_BYTES)},
                                            schema), date)
            for _ in range(n)]


def check(key: ClientKey, port: int, key_id: str, k: int = 4) -> None:
    """A few requests through Python's TLS client (not measured): each must succeed."""
    ctx = ssl.create_default_context(cafile=str(key.ca_file))
    for raw in sign_encrypts(key, port, key_id, k):
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=30)
        try:
            conn.request("POST", "/", body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        if r.status != 200:
            raise RuntimeError(f"kms-instance Encrypt failed: {r.status} {data[:200]!r}")


def verify_cost(key: ClientKey, n: int = 2000) -> float:
    """Microseconds of one RSA-2048 PKCS#1 v1.5 SHA-256 verification (what the server does
    per request), measured here."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    public = key.private_key.public_key()
    message = b"x" * 400
    signature = key.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    t0 = time.perf_counter()
    for _ in range(n):
        public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    return (time.perf_counter() - t0) / n * 1e6
