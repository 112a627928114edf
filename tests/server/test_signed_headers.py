"""SigV4 must cover the headers that say what a request does: a request whose
``X-Amz-Target``, ``Content-Type`` or another ``x-amz-*`` header is present but not named in
``SignedHeaders`` is refused (``IncompleteSignatureException``), through the real server,
before anything runs. Requests are signed by botocore's own ``SigV4Auth``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from tests.server.conftest import JSON_CT, Server, raw_post, sign_headers


def _refused(status: int, body: bytes, header: str) -> None:
    assert status == 400, (status, body[:300])
    doc = json.loads(body)
    assert doc["__type"] == "IncompleteSignatureException", doc
    assert f"'{header}'" in doc["message"], doc


def _post(server: Server, body: bytes, signed: Mapping[str, str],
          added: Mapping[str, str]) -> tuple[int, bytes]:
    """Sign a request carrying only ``signed`` headers, then add ``added`` unsigned."""
    headers = sign_headers(server.creds["admin"], server.port, signed.get("X-Amz-Target"),
                           body, content_type=signed.get("Content-Type"),
                           extra={k: v for k, v in signed.items()
                                  if k not in ("X-Amz-Target", "Content-Type")})
    status, _, data = raw_post(server.port, body, {**headers, **added})
    return status, data


@pytest.fixture
def key(kms: Any) -> str:
    return str(kms.create_key(Description="test_signed_headers")["KeyMetadata"]["KeyId"])


def test_an_unsigned_target_cannot_turn_describe_into_disable(server: Server, kms: Any,
                                                              key: str) -> None:
    """Signed with SignedHeaders=host;x-amz-date (a DescribeKey body), sent as DisableKey."""
    body = json.dumps({"KeyId": key}).encode()
    headers = sign_headers(server.creds["admin"], server.port, None, body, content_type=None)
    assert "SignedHeaders=host;x-amz-date," in headers["Authorization"]
    status, _, data = raw_post(server.port, body, {
        **headers, "X-Amz-Target": "TrentService.DisableKey", "Content-Type": JSON_CT})
    _refused(status, data, "x-amz-target")
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_an_unsigned_content_type_or_amz_header_is_refused(server: Server, key: str) -> None:
    body = json.dumps({"KeyId": key}).encode()
    status, data = _post(server, body, {"X-Amz-Target": "TrentService.DescribeKey"},
                         {"Content-Type": JSON_CT})
    _refused(status, data, "content-type")
    status, data = _post(server, body, {"X-Amz-Target": "TrentService.DescribeKey",
                                        "Content-Type": JSON_CT},
                         {"X-Amz-Security-Token": "anything"})
    _refused(status, data, "x-amz-security-token")
    status, data = _post(server, body, {"X-Amz-Target": "TrentService.DescribeKey",
                                        "Content-Type": JSON_CT},
                         {"X-Amz-Meta-Whatever": "1"})
    _refused(status, data, "x-amz-meta-whatever")


def test_signed_headers_and_unsigned_others_are_accepted(server: Server, key: str) -> None:
    """Everything that must be signed is: other headers may travel unsigned (User-Agent,
    X-Forwarded-For, the SDK's amz-sdk-* and x-amzn-trace-id)."""
    body = json.dumps({"KeyId": key}).encode()
    status, data = _post(server, body, {"X-Amz-Target": "TrentService.DescribeKey",
                                        "Content-Type": JSON_CT, "X-Amz-Extra": "signed"},
                         {"User-Agent": "test", "X-Forwarded-For": "10.1.2.3",
                          "amz-sdk-invocation-id": "1", "X-Amzn-Trace-Id": "Root=1"})
    assert status == 200, data
    assert json.loads(data)["KeyMetadata"]["KeyId"] == key


def test_boto3_signs_what_it_must(kms: Any, key: str) -> None:
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    kms.disable_key(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    kms.enable_key(KeyId=key)
