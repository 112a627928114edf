"""The HTTP and authentication surface of the server: malformed and badly signed requests
(each a 4xx with a JSON ``{"__type", "message"}`` body, never a 500), per-credential
policies and instance isolation, ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import re
import socket
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
from botocore.exceptions import ClientError

from tests.server.conftest import (
    JSON_CT,
    Cred,
    Server,
    create_credential,
    raises_code,
    raw_post,
    run_server,
    sign_headers,
    write_server_config,
)


def _assert_error(status: int, headers: Mapping[str, str], body: bytes, code: str,
                  http_status: int | None = None) -> dict[str, Any]:
    assert 400 <= status < 500, (status, body[:300])
    if http_status is not None:
        assert status == http_status
    assert headers.get("content-type", "").startswith("application/x-amz-json-1.1")
    doc = json.loads(body)
    assert set(doc) == {"__type", "message"}, doc
    assert doc["__type"] == code, doc
    assert isinstance(doc["message"], str) and doc["message"]
    return dict(doc)


def _signed(server: Server, target: str | None, body: bytes, cred: Cred | None = None,
            **kw: Any) -> tuple[int, dict[str, str], bytes]:
    cred = cred or server.creds["admin"]
    return raw_post(server.port, body, sign_headers(cred, server.port, target, body, **kw))


@pytest.fixture(scope="module")
def key(kms: Any) -> dict[str, Any]:
    return dict(kms.create_key(Description="test_auth")["KeyMetadata"])


@pytest.fixture(scope="module")
def sign_key(kms: Any) -> dict[str, Any]:
    return dict(kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- a well-formed request, signed by hand, for reference --------------------------------


def test_hand_signed_request_succeeds(server: Server, key: dict[str, Any]) -> None:
    body = json.dumps({"KeyId": key["KeyId"], "Plaintext": _b64(b"hi")}).encode()
    status, headers, data = _signed(server, "TrentService.Encrypt", body)
    assert status == 200, data
    assert headers["content-type"].startswith("application/x-amz-json-1.1")
    assert json.loads(data)["KeyId"] == key["Arn"]
    # application/x-amz-json-1.0 is accepted too.
    status, _, data = _signed(server, "TrentService.DescribeKey",
                              json.dumps({"KeyId": key["KeyId"]}).encode(),
                              content_type="application/x-amz-json-1.0")
    assert status == 200, data


# --- authentication ----------------------------------------------------------------------


def test_bad_signature(server: Server, key: dict[str, Any]) -> None:
    admin = server.creds["admin"]
    wrong = Cred(admin.access_key_id, admin.secret[:-1] + ("A" if admin.secret[-1] != "A"
                                                            else "B"), admin.instance)
    body = json.dumps({"KeyId": key["KeyId"]}).encode()
    _assert_error(*_signed(server, "TrentService.DescribeKey", body, cred=wrong),
                  "InvalidSignatureException")
    # A body changed after signing.
    headers = sign_headers(admin, server.port, "TrentService.DescribeKey", body)
    other = json.dumps({"KeyId": str(uuid.uuid4())}).encode()
    _assert_error(*raw_post(server.port, other, headers), "InvalidSignatureException")
    # A signed header changed after signing.
    headers = sign_headers(admin, server.port, "TrentService.DescribeKey", body)
    headers["X-Amz-Target"] = "TrentService.ListKeys"
    _assert_error(*raw_post(server.port, body, headers), "InvalidSignatureException")
    # The signature itself altered.
    headers = sign_headers(admin, server.port, "TrentService.DescribeKey", body)
    sig = headers["Authorization"][-64:]
    headers["Authorization"] = headers["Authorization"][:-64] + (
        ("0" if sig[0] != "0" else "1") + sig[1:])
    _assert_error(*raw_post(server.port, body, headers), "InvalidSignatureException")


def test_bad_signature_through_boto3(server: Server) -> None:
    admin = server.creds["admin"]
    client = server.client(Cred(admin.access_key_id, "not-the-secret", "srv"))
    with pytest.raises(ClientError) as info:
        client.list_keys()
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500


def test_unknown_access_key(server: Server) -> None:
    nobody = Cred("HSMP" + "Z" * 16, "whatever-secret", "srv")
    _assert_error(*_signed(server, "TrentService.ListKeys", b"{}", cred=nobody),
                  "UnrecognizedClientException")
    with pytest.raises(ClientError) as info:
        server.client(nobody).list_keys()
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"


@pytest.mark.parametrize("skew", [dt.timedelta(minutes=-6), dt.timedelta(minutes=6),
                                  dt.timedelta(days=-2), dt.timedelta(days=400)],
                         ids=["stale-6min", "future-6min", "stale-2days", "future-400days"])
def test_request_time_out_of_range(server: Server, monkeypatch: pytest.MonkeyPatch,
                                   skew: dt.timedelta) -> None:
    """X-Amz-Date more than 5 minutes from the server's clock, signed correctly for that
    date (botocore's signer, with its clock moved)."""
    when = dt.datetime.now(dt.UTC).replace(tzinfo=None) + skew
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    headers = sign_headers(server.creds["admin"], server.port, "TrentService.ListKeys", b"{}")
    assert headers["X-Amz-Date"] == when.strftime("%Y%m%dT%H%M%SZ")
    doc = _assert_error(*raw_post(server.port, b"{}", headers), "InvalidSignatureException")
    assert "expired" in doc["message"].lower() or "time" in doc["message"].lower()


def test_small_clock_skew_is_accepted(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    when = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=2)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    status, _, data = _signed(server, "TrentService.ListKeys", b"{}")
    assert status == 200, data


def test_missing_and_malformed_authorization(server: Server) -> None:
    base = {"X-Amz-Target": "TrentService.ListKeys", "Content-Type": JSON_CT}
    _assert_error(*raw_post(server.port, b"{}", base), "MissingAuthenticationTokenException")
    for auth in ("Bearer abc", "AWS4-HMAC-SHA256 Credential=x",
                 "AWS4-HMAC-SHA256 Credential=AK/20250101/us-east-1/kms/aws4_request, "
                 "SignedHeaders=x-amz-date, Signature=" + "0" * 64):
        _assert_error(*raw_post(server.port, b"{}", base | {"Authorization": auth}),
                      "IncompleteSignatureException")
    # X-Amz-Date missing from a well-formed Authorization header.
    headers = sign_headers(server.creds["admin"], server.port, "TrentService.ListKeys", b"{}")
    headers.pop("X-Amz-Date")
    _assert_error(*raw_post(server.port, b"{}", headers), "IncompleteSignatureException")


def test_wrong_region_or_service_in_scope(server: Server) -> None:
    _assert_error(*_signed(server, "TrentService.ListKeys", b"{}", region="eu-west-1"),
                  "InvalidSignatureException")
    _assert_error(*_signed(server, "TrentService.ListKeys", b"{}", service="s3"),
                  "InvalidSignatureException")


# --- the protocol ------------------------------------------------------------------------


def test_unknown_operation_and_missing_target(server: Server) -> None:
    _assert_error(*_signed(server, "TrentService.Nope", b"{}"), "UnknownOperationException")
    _assert_error(*_signed(server, "OtherService.ListKeys", b"{}"),
                  "UnknownOperationException")
    _assert_error(*_signed(server, None, b"{}"), "UnknownOperationException")


def test_wrong_content_type(server: Server) -> None:
    for ctype in ("application/json", "text/plain", None):
        _assert_error(*_signed(server, "TrentService.ListKeys", b"{}", content_type=ctype),
                      "SerializationException")


@pytest.mark.parametrize("body", [
    b"{", b"not json", b"\xff\xfe{}", b"[]", b'["KeyId"]', b"null", b"42", b'"str"',
    b'{"a": 1} trailing', b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 30_000 + b"1" +
    b"}" * 30_000,
], ids=["truncated", "text", "bad-utf8", "array", "array2", "null", "number", "string",
        "trailing", "deep-array", "deep-object"])
def test_malformed_json_signed(server: Server, body: bytes) -> None:
    _assert_error(*_signed(server, "TrentService.ListKeys", body), "SerializationException")


def test_empty_body_is_an_empty_object(server: Server) -> None:
    status, _, data = _signed(server, "TrentService.ListKeys", b"")
    assert status == 200, data


def test_oversized_body(server: Server) -> None:
    body = json.dumps({"KeyId": "x", "Plaintext": "A" * (256 * 1024)}).encode()
    _assert_error(*_signed(server, "TrentService.Encrypt", body),
                  "RequestEntityTooLargeException", 413)


def test_oversized_body_chunked(server: Server) -> None:
    """No Content-Length: the limit holds while reading."""
    body = b'{"Plaintext": "' + b"A" * (300 * 1024) + b'"}'
    headers = sign_headers(server.creds["admin"], server.port, "TrentService.Encrypt", body)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(body), 16384):
            chunk = body[i:i + 16384]
            try:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                break  # the server answered and closed early
        try:
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass
        r = conn.getresponse()
        _assert_error(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(),
                      "RequestEntityTooLargeException", 413)
    finally:
        conn.close()


def test_get_unknown_path_and_other_methods(server: Server) -> None:
    _assert_error(*server.get("/nope"), "UnknownOperationException", 404)
    _assert_error(*server.get("/"), "UnknownOperationException", 404)
    body = b"{}"
    headers = sign_headers(server.creds["admin"], server.port, "TrentService.ListKeys", body)
    _assert_error(*raw_post(server.port, body, headers, path="/other"),
                  "UnknownOperationException", 404)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("PUT", "/", body=body, headers=headers)
        r = conn.getresponse()
        _assert_error(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(),
                      "UnknownOperationException", 404)
    finally:
        conn.close()


@pytest.mark.parametrize(("op", "params", "code"), [
    ("Encrypt", {"KeyId": "@key", "Plaintext": "!!not base64!!"}, "ValidationException"),
    ("Encrypt", {"KeyId": "@key", "Plaintext": "QUJ"}, "ValidationException"),
    ("Encrypt", {"KeyId": "@key", "Plaintext": 123}, "ValidationException"),
    ("Encrypt", {"KeyId": "@key"}, "ValidationException"),
    ("Encrypt", {"KeyId": 5, "Plaintext": "eA=="}, "ValidationException"),
    ("Encrypt", {"KeyId": "@key", "Plaintext": "eA==", "EncryptionContext": "a=b"},
     "ValidationException"),
    ("Encrypt", {"KeyId": "@key", "Plaintext": "eA==", "EncryptionContext": {"a": 1}},
     "ValidationException"),
    ("Encrypt", {"KeyId": "@key", "Plaintext": "eA==", "GrantTokens": "t"},
     "ValidationException"),
    ("Decrypt", {"CiphertextBlob": "***"}, "ValidationException"),
    ("GenerateDataKey", {"KeyId": "@key", "NumberOfBytes": "32"}, "ValidationException"),
    ("GenerateDataKey", {"KeyId": "@key", "NumberOfBytes": 32.5}, "ValidationException"),
    ("GenerateDataKey", {"KeyId": "@key", "NumberOfBytes": True}, "ValidationException"),
    ("GenerateRandom", {"NumberOfBytes": "16"}, "ValidationException"),
    ("GenerateRandom", {"NumberOfBytes": 10**30}, "ValidationException"),
    ("GenerateRandom", {}, "ValidationException"),
    ("ListKeys", {"Limit": "10"}, "ValidationException"),
    ("ListKeys", {"Limit": 0}, "ValidationException"),
    ("ListKeys", {"Limit": -1}, "ValidationException"),
    ("ListKeys", {"Marker": 12}, "ValidationException"),
    ("ListAliases", {"Limit": 0}, "ValidationException"),
    ("ScheduleKeyDeletion", {"KeyId": "@key", "PendingWindowInDays": "7"},
     "ValidationException"),
    ("TagResource", {"KeyId": "@key", "Tags": [{"TagKey": "a"}]}, "TagException"),
    ("TagResource", {"KeyId": "@key", "Tags": "a=b"}, "ValidationException"),
    ("UntagResource", {"KeyId": "@key", "TagKeys": "a"}, "ValidationException"),
    ("CreateKey", {"KeySpec": 7}, "ValidationException"),
    ("CreateKey", {"Description": ["x"]}, "ValidationException"),
    ("CreateAlias", {"AliasName": "alias/x"}, "ValidationException"),
    ("Sign", {"KeyId": "@sign", "Message": "eA==", "SigningAlgorithm": "ECDSA_SHA_256",
              "MessageType": "HASHED"}, "ValidationException"),
    ("ImportKeyMaterial", {"KeyId": "@key", "ImportToken": "eA==",
                           "EncryptedKeyMaterial": "eA==", "ValidTo": "tomorrow"},
     "ValidationException"),
    # Lone UTF-16 surrogates (valid JSON escapes, not valid text).
    ("Encrypt", {"KeyId": "@key", "Plaintext": "eA==", "EncryptionContext": {"\ud800": "x"}},
     None),
    ("UpdateKeyDescription", {"KeyId": "@key", "Description": "\udc00"}, None),
    ("CreateKey", {"Description": "\ud800"}, None),
    ("CreateKey", {"Policy": "\ud800"}, None),
    ("ListKeys", {"Marker": "\ud800"}, None),
    ("CreateAlias", {"AliasName": "alias/\ud800", "TargetKeyId": "@key"}, None),
])
def test_bad_fields_are_4xx(server: Server, key: dict[str, Any], sign_key: dict[str, Any],
                            op: str, params: dict[str, Any], code: str | None) -> None:
    refs = {"@key": key["KeyId"], "@sign": sign_key["KeyId"]}
    params = {k: refs.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
    body = json.dumps(params).encode()
    status, headers, data = _signed(server, "TrentService." + op, body)
    assert status < 500, data
    if code is None:  # any client error, as long as it is a well-formed one
        doc = json.loads(data)
        assert 400 <= status < 500 and set(doc) == {"__type", "message"}, doc
    else:
        _assert_error(status, headers, data, code)


def test_server_survives_a_half_sent_request(server: Server, kms: Any) -> None:
    """A client that sends headers and part of the body, then disconnects."""
    body = b'{"NumberOfBytes": 16}'
    headers = sign_headers(server.creds["admin"], server.port, "TrentService.GenerateRandom",
                           body)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        head = f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "host")
        head += f"Content-Length: {len(body) + 100}\r\n\r\n"
        s.sendall(head.encode() + body)
    assert len(kms.generate_random(NumberOfBytes=16)["Plaintext"]) == 16


# --- policies and instances --------------------------------------------------------------


@pytest.fixture(scope="module")
def encrypt_only(server: Server, key: dict[str, Any]) -> Any:
    cred = server.credential("srv", "encrypt-only-" + uuid.uuid4().hex[:6], {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": key["Arn"]}]})
    return server.client(cred)


def test_policy_allows_only_encrypt_on_one_key(kms: Any, encrypt_only: Any,
                                               key: dict[str, Any]) -> None:
    r = encrypt_only.encrypt(KeyId=key["KeyId"], Plaintext=b"allowed",
                             EncryptionContext={"p": "1"})
    assert r["KeyId"] == key["Arn"]
    r2 = encrypt_only.encrypt(KeyId=key["Arn"], Plaintext=b"by arn")
    # The admin can decrypt what it encrypted...
    assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"],
                       EncryptionContext={"p": "1"})["Plaintext"] == b"allowed"
    # ...the encrypt-only principal is told the key does not exist.
    for blob, ctx in ((r["CiphertextBlob"], {"p": "1"}), (r2["CiphertextBlob"], {})):
        with raises_code(encrypt_only, "NotFoundException"):
            encrypt_only.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
    for op in (lambda: encrypt_only.describe_key(KeyId=key["KeyId"]),
               lambda: encrypt_only.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256"),
               lambda: encrypt_only.disable_key(KeyId=key["KeyId"]),
               lambda: encrypt_only.schedule_key_deletion(KeyId=key["KeyId"])):
        with raises_code(encrypt_only, "NotFoundException"):
            op()
    # Other keys do not exist for it either.
    other = kms.create_key()["KeyMetadata"]
    with raises_code(encrypt_only, "NotFoundException"):
        encrypt_only.encrypt(KeyId=other["KeyId"], Plaintext=b"x")
    # Account-level actions are refused outright.
    with raises_code(encrypt_only, "AccessDeniedException"):
        encrypt_only.create_key()
    with raises_code(encrypt_only, "AccessDeniedException"):
        encrypt_only.list_keys()
    with raises_code(encrypt_only, "AccessDeniedException"):
        encrypt_only.generate_random(NumberOfBytes=8)
    # The key is untouched.
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"


def test_policy_through_alias_and_context_condition(server: Server, kms: Any) -> None:
    k = kms.create_key()["KeyMetadata"]
    name = "alias/" + "ctx-" + uuid.uuid4().hex[:8]
    kms.create_alias(AliasName=name, TargetKeyId=k["KeyId"])
    cred = server.credential("srv", "ctx-" + uuid.uuid4().hex[:6], {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"],
                       "Resource": f"arn:aws:kms:*:*:{name}",
                       "Condition": {"StringEquals": {
                           "kms:EncryptionContext:tenant": "blue"}}}]})
    c = server.client(cred)
    ct = c.encrypt(KeyId=name, Plaintext=b"blue data",
                   EncryptionContext={"tenant": "blue"})["CiphertextBlob"]
    with raises_code(c, "NotFoundException"):
        c.encrypt(KeyId=name, Plaintext=b"x", EncryptionContext={"tenant": "red"})
    # The key's aliases are its resource names (kms:ResourceAliases): by key id too, and
    # Decrypt (which names no key) too.
    c.encrypt(KeyId=k["KeyId"], Plaintext=b"x", EncryptionContext={"tenant": "blue"})
    assert c.decrypt(CiphertextBlob=ct,
                     EncryptionContext={"tenant": "blue"})["Plaintext"] == b"blue data"
    with raises_code(c, "NotFoundException"):
        c.decrypt(CiphertextBlob=ct, EncryptionContext={"tenant": "red"})
    # Once the alias is gone, the policy no longer names the key.
    kms.delete_alias(AliasName=name)
    with raises_code(c, "NotFoundException"):
        c.decrypt(CiphertextBlob=ct, EncryptionContext={"tenant": "blue"})
    assert kms.decrypt(CiphertextBlob=ct,
                       EncryptionContext={"tenant": "blue"})["Plaintext"] == b"blue data"


def test_deny_overrides_allow(server: Server, kms: Any, key: dict[str, Any]) -> None:
    cred = server.credential("srv", "deny-" + uuid.uuid4().hex[:6], {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
                      {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": key["Arn"]}]})
    c = server.client(cred)
    ct = c.encrypt(KeyId=key["KeyId"], Plaintext=b"d")["CiphertextBlob"]
    with raises_code(c, "NotFoundException"):
        c.decrypt(CiphertextBlob=ct)
    other = c.create_key()["KeyMetadata"]
    ct2 = c.encrypt(KeyId=other["KeyId"], Plaintext=b"e")["CiphertextBlob"]
    assert c.decrypt(CiphertextBlob=ct2)["Plaintext"] == b"e"


def test_source_ip_condition(server: Server, key: dict[str, Any]) -> None:
    def cred_for(cidr: str) -> Any:
        return server.client(server.credential("srv", "ip-" + uuid.uuid4().hex[:6], {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:DescribeKey", "Resource": "*",
                           "Condition": {"IpAddress": {"aws:SourceIp": [cidr]}}}]}))

    assert cred_for("127.0.0.0/8").describe_key(KeyId=key["KeyId"])["KeyMetadata"]
    outside = cred_for("10.0.0.0/8")
    with raises_code(outside, "NotFoundException"):
        outside.describe_key(KeyId=key["KeyId"])


def test_instances_are_isolated(kms: Any, kms2: Any, key: dict[str, Any]) -> None:
    ct = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"srv only")["CiphertextBlob"]
    for ref in (key["KeyId"], key["Arn"]):
        with raises_code(kms2, "NotFoundException"):
            kms2.describe_key(KeyId=ref)
        with raises_code(kms2, "NotFoundException"):
            kms2.encrypt(KeyId=ref, Plaintext=b"x")
    with pytest.raises(ClientError) as info:
        kms2.decrypt(CiphertextBlob=ct)
    assert info.value.response["Error"]["Code"] in ("InvalidCiphertextException",
                                                    "NotFoundException")
    assert key["KeyId"] not in {k["KeyId"] for k in kms2.list_keys(Limit=1000)["Keys"]}
    # And the other way round; the two instances have their own accounts.
    own = kms2.create_key()["KeyMetadata"]
    assert own["AWSAccountId"] != key["AWSAccountId"]
    with raises_code(kms, "NotFoundException"):
        kms.describe_key(KeyId=own["KeyId"])
    ct2 = kms2.encrypt(KeyId=own["KeyId"], Plaintext=b"srv2 only")["CiphertextBlob"]
    with pytest.raises(ClientError) as info:
        kms.decrypt(CiphertextBlob=ct2)
    assert info.value.response["Error"]["Code"] in ("InvalidCiphertextException",
                                                    "NotFoundException")
    # An alias name may exist in both instances, for different keys.
    name = "alias/shared-" + uuid.uuid4().hex[:8]
    kms.create_alias(AliasName=name, TargetKeyId=key["KeyId"])
    kms2.create_alias(AliasName=name, TargetKeyId=own["KeyId"])
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == key["KeyId"]
    assert kms2.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == own["KeyId"]


# --- health and metrics ------------------------------------------------------------------


def test_healthz(server: Server) -> None:
    status, headers, body = server.get("/healthz")
    assert status == 200 and headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["status"] == "ok" and doc["store"] == "ok"
    assert doc["tokens"] == {f"t{i}": "healthy" for i in range(5)}
    assert doc["healthy_tokens_per_instance"] == {"srv": 3, "srv2": 2}


def test_metrics(server: Server, kms: Any, key: dict[str, Any]) -> None:
    def count(text: str, op: str, result: str) -> int:
        m = re.search(rf'^hsmpool_requests_total\{{operation="{op}",'
                      rf'result="{result}"\}} (\d+)$', text, re.M)
        return int(m.group(1)) if m else 0

    _, _, before = server.get("/metrics")
    for _ in range(3):
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"m")
    with raises_code(kms, "NotFoundException"):
        kms.encrypt(KeyId=str(uuid.uuid4()), Plaintext=b"m")
    status, headers, body = server.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert "# TYPE hsmpool_requests_total counter" in text
    assert count(text, "Encrypt", "ok") == count(before.decode(), "Encrypt", "ok") + 3
    assert count(text, "Encrypt", "NotFoundException") >= 1
    assert re.search(r'^hsmpool_request_seconds_count\{operation="Encrypt"\} \d+$',
                     text, re.M)
    # One worker: the server process itself answers, and labels its samples with its pid.
    for i in range(5):
        for state, value in (("healthy", 1), ("ejected", 0), ("closed", 0)):
            assert (f'hsmpool_token_state{{worker="{server.proc.pid}",token="t{i}",'
                    f'state="{state}"}} {value}') in text.splitlines()
    # Every sample line is "name{labels} value".
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$', line), line


def test_policy_update_applies_to_existing_access_keys(server: Server, kms: Any,
                                                       key: dict[str, Any]) -> None:
    """``credentials create`` for an existing principal replaces its policies (and adds a
    key); the running server must apply the new policies to the principal's old key too."""
    name = "narrowed-" + uuid.uuid4().hex[:6]
    allow = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]}
    old = server.client(server.credential("srv", name, allow))
    old.encrypt(KeyId=key["KeyId"], Plaintext=b"allowed")
    narrowed = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:DescribeKey",
                               "Resource": "*"}]}
    new = server.client(server.credential("srv", name, narrowed))
    assert new.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyId"] == key["KeyId"]
    with raises_code(new, "NotFoundException"):
        new.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    with raises_code(old, "NotFoundException"):
        old.encrypt(KeyId=key["KeyId"], Plaintext=b"no longer allowed")


def test_credential_of_an_instance_no_longer_configured(token_dir: Path,
                                                        tmp_path: Path) -> None:
    """An access key whose instance was removed from the configuration: the request is
    refused as from an unknown client, never answered with a 500."""
    both = write_server_config(tmp_path, token_dir, {"srv": [0, 1, 2], "srv2": [3, 4]})
    gone = create_credential(both, "srv2", "gone")
    kept = create_credential(both, "srv", "kept")
    only_srv = write_server_config(tmp_path, token_dir, {"srv": [0, 1, 2]})
    assert only_srv == both  # same file, same database: srv2 is no longer configured
    with run_server(only_srv) as srv:
        status, headers, body = raw_post(srv.port, b"{}", sign_headers(
            gone, srv.port, "TrentService.ListKeys", b"{}"))
        _assert_error(status, headers, body, "UnrecognizedClientException")
        assert srv.client(kept).list_keys()["Truncated"] is False


# --- every operation, every field, odd values: never a 500 ---------------------------------

_ODD_VALUES: list[Any] = [None, 0, -1, 2**70, 1.5, True, "", "x" * 3000, [], {}, [{}],
                          {"a": {"b": 1}}, "\u0000", "\ud800", "alias/../x", "eA=="]


def _plausible(name: str, shape: Any, refs: dict[str, str]) -> Any:
    by_name: dict[str, Any] = {
        "KeyId": refs["key"], "TargetKeyId": refs["key"], "DestinationKeyId": refs["key"],
        "SourceKeyId": refs["key"], "AliasName": refs["alias"],
        "CiphertextBlob": refs["ciphertext"], "Plaintext": "eA==", "Message": "eA==",
        "SigningAlgorithm": "RSASSA_PSS_SHA_256", "MacAlgorithm": "HMAC_SHA_256",
        "NumberOfBytes": 16, "KeySpec": "AES_256", "Limit": 10, "PendingWindowInDays": 7,
        "EncryptionContext": {"a": "b"}, "SourceEncryptionContext": {"a": "b"},
        "DestinationEncryptionContext": {"a": "b"}, "Tags": [{"TagKey": "a", "TagValue": "b"}],
        "TagKeys": ["a"], "KeyPairSpec": "ECC_NIST_P256", "RotationPeriodInDays": 90,
    }
    if name in by_name:
        return by_name[name]
    kind = shape.type_name
    return {"string": "x", "blob": "eA==", "integer": 1, "long": 1, "boolean": True,
            "timestamp": 1_900_000_000, "map": {"a": "b"}, "list": ["x"],
            "structure": {}}.get(kind, "x")


def test_every_operation_and_field_with_odd_values(server: Server, kms: Any) -> None:
    """Each operation of the table, each field of its boto3 input shape replaced by odd
    values (wrong types, empty, huge, nested): always a well-formed answer below 500."""
    from kms.api.aws_kms import OPERATIONS

    fuzz_key = kms.create_key(Description="fuzz")["KeyMetadata"]["KeyId"]
    refs = {"key": fuzz_key, "alias": "alias/fuzz-" + uuid.uuid4().hex[:8],
            "ciphertext": _b64(kms.encrypt(KeyId=fuzz_key, Plaintext=b"f",
                                           EncryptionContext={"a": "b"})["CiphertextBlob"])}
    model = kms.meta.service_model
    cred = server.creds["admin"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    failures: list[str] = []
    outcomes: Counter[Any] = Counter()
    sent = 0
    try:
        for op in sorted(OPERATIONS):
            if op == "CreateKey":
                continue  # every variation would make a key; CreateKey is fuzzed below
            members = model.operation_model(op).input_shape.members
            base = {n: _plausible(n, s, refs) for n, s in members.items()}
            for field_name in members:
                for odd in _ODD_VALUES:
                    params = dict(base)
                    if odd is None:
                        params.pop(field_name)
                    else:
                        params[field_name] = odd
                    body = json.dumps(params).encode()
                    headers = sign_headers(cred, server.port, "TrentService." + op, body)
                    conn.request("POST", "/", body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    sent += 1
                    outcomes[r.status >= 400 and json.loads(data).get("__type")] += 1
                    if r.status >= 500:
                        failures.append(f"{op} {field_name}={odd!r:.40}: {r.status} "
                                        f"{data[:120]!r}")
                    elif r.status >= 400:
                        doc = json.loads(data)
                        if set(doc) != {"__type", "message"}:
                            failures.append(f"{op} {field_name}: malformed error {doc}")
        for field_name in ("KeySpec", "KeyUsage", "Origin", "Description", "Tags", "Policy",
                           "CustomerMasterKeySpec"):
            for odd in _ODD_VALUES:
                body = json.dumps({field_name: odd, "KeySpec": "NOPE"}
                                  if field_name != "KeySpec" else {field_name: odd}).encode()
                headers = sign_headers(cred, server.port, "TrentService.CreateKey", body)
                conn.request("POST", "/", body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                sent += 1
                if r.status >= 500:
                    failures.append(f"CreateKey {field_name}={odd!r:.40}: {r.status} "
                                    f"{data[:120]!r}")
    finally:
        conn.close()
    assert sent > 500
    assert not failures, "\n".join(failures)
    # The requests reached the operations: many succeeded, few failed authentication.
    assert outcomes[False] > 100, outcomes
    assert not {"InvalidSignatureException", "UnrecognizedClientException"} & set(outcomes)


def test_body_size_limit_boundary(server: Server, key: dict[str, Any]) -> None:
    """256 KiB exactly is read and answered by the operation; one byte more is 413."""
    limit = 256 * 1024

    def body_of(size: int) -> bytes:
        head = json.dumps({"KeyId": key["KeyId"], "Plaintext": "eA==", "Description": ""})
        pad = size - len(head.encode()) - len(', "Pad": ""')
        body = (head[:-1] + ', "Pad": "' + "p" * pad + '"}').encode()
        assert len(body) == size
        return body

    status, headers, data = _signed(server, "TrentService.Encrypt", body_of(limit))
    assert status == 200, data[:200]
    _assert_error(*_signed(server, "TrentService.Encrypt", body_of(limit + 1)),
                  "RequestEntityTooLargeException", 413)


def test_credential_scope_date_must_match(server: Server) -> None:
    headers = sign_headers(server.creds["admin"], server.port, "TrentService.ListKeys", b"{}")
    today = headers["X-Amz-Date"][:8]
    other = (dt.datetime.strptime(today, "%Y%m%d") - dt.timedelta(days=1)).strftime("%Y%m%d")
    headers["Authorization"] = headers["Authorization"].replace(f"/{today}/", f"/{other}/")
    _assert_error(*raw_post(server.port, b"{}", headers), "InvalidSignatureException")
