"""Secrets never leak into what operators and clients see.

A real ``hsmpool serve`` (debug logging, the JSON access log on) runs a mixed workload that
carries marker values: plaintexts (Encrypt, GenerateMac, Sign messages), the data keys it
returns, secret values (string and binary, created, put, updated), generated passwords, the
access key's secret, and the token PINs of its configuration; successful requests and
failing ones (an unknown or disabled key, invalid base64, a duplicate secret name, a bad
signature), whose error messages might echo their input. Then no marker may appear, raw,
in base64 or in hex, in:

* the server's stdout and stderr;
* every file the server wrote: the audit segments, the metadata store (SQLite files and
  their journals, raw bytes:
  secret values and access key secrets are stored wrapped, never in clear);
* any error message returned to a client;
* ``/metrics``.

A control checks that the search looks at the right places: the access key *id* (not
secret) appears in the log and the audit trail.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.reliability.load import metrics
from tests.server.conftest import (
    Cred,
    create_credential,
    raw_post,
    run_server,
    sign_headers,
    write_server_config,
)

TOKENS = [5, 6]


def _marker(kind: str) -> str:
    return f"MRK{kind}{secrets.token_hex(10)}"


def _forms(value: bytes) -> list[bytes]:
    """How a value could be written: raw, base64 (without its last, alignment-dependent
    characters), url-safe base64, hex."""
    b64 = base64.b64encode(value)
    out = [value, b64[:-4] if len(b64) > 8 else b64,
           base64.urlsafe_b64encode(value)[:-4], value.hex().encode()]
    if len(value) >= 16:
        out.append(value.hex().upper().encode())
    return [f for f in out if len(f) >= 8]


def _search(haystacks: dict[str, bytes], markers: dict[str, bytes]) -> list[str]:
    hits = []
    for where, data in haystacks.items():
        for name, value in markers.items():
            for form in _forms(value):
                if form in data:
                    hits.append(f"{name} ({form[:24]!r}...) in {where}")
    return hits


def test_no_secret_reaches_logs_audit_errors_or_metrics(
        token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("hygiene")
    cfg = write_server_config(directory, token_dir, {"hyg": TOKENS})
    cfg.write_text(cfg.read_text() + '[server]\nlog_level = "debug"\naccess_log = "json"\n')
    cred = create_credential(cfg, "hyg", "admin")
    markers: dict[str, bytes] = {
        "user PIN": (token_dir / "user.pin").read_bytes().strip(),
        "SO PIN": (token_dir / "so.pin").read_bytes().strip(),
        "secret access key": cred.secret.encode(),
    }
    errors: list[str] = []  # every error body a client saw

    def expect_error(fn: Any, **kw: Any) -> None:
        try:
            fn(**kw)
        except ClientError as exc:
            errors.append(json.dumps(exc.response["Error"]))
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] < 500, exc.response
        else:
            raise AssertionError(f"{fn.__name__} {kw} did not fail")

    with run_server(cfg) as srv:
        kms = srv.client(cred)
        sm = srv.client(cred, service="secretsmanager")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        disabled = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.disable_key(KeyId=disabled)
        mac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
        sign_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        for i in range(5):
            pt = _marker(f"plain{i}")
            markers[f"plaintext {i}"] = pt.encode()
            blob = kms.encrypt(KeyId=key, Plaintext=pt.encode(),
                               EncryptionContext={"purpose": "hygiene"})["CiphertextBlob"]
            assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={
                "purpose": "hygiene"})["Plaintext"] == pt.encode()
            dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
            markers[f"data key {i}"] = dk["Plaintext"]
            rk = kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key,
                                SourceEncryptionContext={"purpose": "hygiene"})
            # (re-encrypted without a destination context)
            assert kms.decrypt(CiphertextBlob=rk["CiphertextBlob"])["Plaintext"] \
                == pt.encode()
            # Failing requests that carry the plaintext.
            expect_error(kms.encrypt, KeyId=disabled, Plaintext=pt.encode())
            expect_error(kms.encrypt, KeyId="alias/does-not-exist", Plaintext=pt.encode())
            expect_error(kms.encrypt, KeyId=key, Plaintext=pt.encode() * 200)  # > 4096 bytes
            expect_error(kms.decrypt, CiphertextBlob=pt.encode() * 3)
        msg = _marker("macmsg")
        markers["MAC message"] = msg.encode()
        mac = kms.generate_mac(KeyId=mac_key["KeyMetadata"]["KeyId"], Message=msg.encode(),
                               MacAlgorithm="HMAC_SHA_256")["Mac"]
        markers["MAC"] = mac
        smsg = _marker("signmsg")
        markers["signed message"] = smsg.encode()
        kms.sign(KeyId=sign_key["KeyMetadata"]["KeyId"], Message=smsg.encode(),
                 SigningAlgorithm="ECDSA_SHA_256")
        pair = kms.generate_data_key_pair(KeyId=key, KeyPairSpec="ECC_NIST_P256")
        markers["data key pair private key"] = pair["PrivateKeyPlaintext"]

        # Invalid base64 in the plaintext field, sent raw: the message may not echo it.
        bad = _marker("badb64") + "!!"
        markers["invalid base64 plaintext"] = bad.encode()
        body = json.dumps({"KeyId": key, "Plaintext": bad}).encode()
        status, _, data = raw_post(srv.port, body,
                                   sign_headers(cred, srv.port, "TrentService.Encrypt", body))
        assert status == 400, data
        errors.append(data.decode(errors="replace"))
        # A wrong secret signing a request that carries a plaintext.
        wrong = Cred(cred.access_key_id, _marker("wrongsecret"), cred.instance)
        markers["wrong secret"] = wrong.secret.encode()
        wpt = _marker("wrongsig")
        markers["plaintext of a badly signed request"] = wpt.encode()
        body = json.dumps({"KeyId": key,
                           "Plaintext": base64.b64encode(wpt.encode()).decode()}).encode()
        status, _, data = raw_post(srv.port, body,
                                   sign_headers(wrong, srv.port, "TrentService.Encrypt", body))
        assert status == 400, data
        errors.append(data.decode(errors="replace"))

        for i in range(3):
            value, binary = _marker(f"secret{i}"), _marker(f"bin{i}").encode()
            put, updated = _marker(f"put{i}"), _marker(f"upd{i}")
            markers.update({f"secret {i}": value.encode(), f"secret binary {i}": binary,
                            f"put value {i}": put.encode(), f"updated value {i}":
                            updated.encode()})
            name = f"hygiene-{i}"
            sm.create_secret(Name=name, SecretString=value)
            expect_error(sm.create_secret, Name=name, SecretString=value)  # exists
            sm.put_secret_value(SecretId=name, SecretBinary=binary)
            sm.put_secret_value(SecretId=name, SecretString=put)
            sm.update_secret(SecretId=name, SecretString=updated)
            assert sm.get_secret_value(SecretId=name)["SecretString"] == updated
            expect_error(sm.put_secret_value, SecretId=f"missing-{i}", SecretString=put)
            expect_error(sm.create_secret, Name=f"bad-{i}", SecretString=value,
                         KmsKeyId="alias/does-not-exist")
            password = sm.get_random_password(PasswordLength=32)["RandomPassword"]
            markers[f"password {i}"] = password.encode()
        got = sm.batch_get_secret_value(SecretIdList=["hygiene-0", "hygiene-1"])
        assert len(got["SecretValues"]) == 2
        scrape = metrics(srv.port)
        log_while_running = srv.log_text()
    # The server has stopped (SIGTERM): its log and audit trail are complete.
    haystacks: dict[str, bytes] = {
        "server log": srv.log.read_bytes(),
        "error messages": "\n".join(errors).encode(),
        "/metrics": scrape.encode(),
    }
    # Every file the server wrote: the metadata store, the audit segments, their journals,
    # the workers' state files (the configuration names the PIN files, not the PINs).
    stored = sorted(p for p in directory.rglob("*") if p.is_file())
    for p in stored:
        haystacks[str(p.relative_to(directory))] = p.read_bytes()
    audit = [p for p in stored if "audit" in str(p.relative_to(directory))]
    print(f"\nsearched {len(markers)} markers ({sum(len(_forms(v)) for v in markers.values())}"
          f" forms) in {len(haystacks)} places, "
          f"{sum(len(h) for h in haystacks.values())} bytes; "
          f"{len(errors)} error bodies; audit files {[p.name for p in audit]}")

    # Control: the search looks where the traces are.
    assert audit, stored
    assert '"operation":"Encrypt"' in log_while_running, log_while_running[-2000:]
    # (the product logs nothing at DEBUG today; the bad signature is a WARNING)
    assert "WARNING" in log_while_running and "hsmpool.auth" in log_while_running, \
        log_while_running[-2000:]
    ak = cred.access_key_id.encode()
    assert ak in haystacks["server log"]
    assert any(ak in haystacks[str(p.relative_to(directory))] for p in audit)

    hits = _search(haystacks, markers)
    assert not hits, hits
