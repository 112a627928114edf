"""The real AWS Encryption SDK (v4, legacy master-key API) against the server: KMSMasterKey
with an explicit boto3 client, StrictAwsKmsMasterKeyProvider and
DiscoveryAwsKmsMasterKeyProvider configured only by the environment (AWS_ENDPOINT_URL_KMS)."""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

import aws_encryption_sdk
import pytest
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError
from aws_encryption_sdk.key_providers.kms import (
    DiscoveryAwsKmsMasterKeyProvider,
    DiscoveryFilter,
    KMSMasterKey,
    StrictAwsKmsMasterKeyProvider,
)
from cryptography.exceptions import InvalidSignature, InvalidTag

from tests.server.conftest import REGION, Server, raises_code

CONTEXT = {"purpose": "esdk-test", "tenant": "blue"}
# A tampered message fails in the SDK (a refused data key, a bad header) or in cryptography
# (the body's AES-GCM tag, the footer's ECDSA signature).
REFUSED = (AWSEncryptionSDKClientError, InvalidTag, InvalidSignature)


@pytest.fixture(scope="module")
def esdk() -> Any:
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


@pytest.fixture(scope="module")
def keys(kms: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(kms.create_key(KeySpec=spec, Description=f"esdk {name}")["KeyMetadata"])
            for name, spec in (("a", "SYMMETRIC_DEFAULT"), ("b", "SYMMETRIC_DEFAULT"),
                               ("sm4", "SM4"))}


@pytest.fixture
def aws_env(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Only the environment tells botocore where and who: the server's URL and the admin."""
    cred = server.creds["admin"]
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cred.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", cred.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("which", ["a", "sm4"])
def test_kms_master_key_with_explicit_client(esdk: Any, kms: Any,
                                             keys: dict[str, dict[str, Any]],
                                             which: str) -> None:
    arn = keys[which]["Arn"]
    mk = KMSMasterKey(key_id=arn, client=kms)
    plaintext = os.urandom(3000)
    ct, enc_header = esdk.encrypt(source=plaintext, key_provider=mk,
                                  encryption_context=CONTEXT)
    assert ct != plaintext and plaintext not in ct
    (edk,) = enc_header.encrypted_data_keys
    assert edk.key_provider.provider_id == "aws-kms"
    assert edk.key_provider.key_info == arn.encode()  # the ARN the server answered
    out, header = esdk.decrypt(source=ct, key_provider=KMSMasterKey(key_id=arn, client=kms))
    assert out == plaintext
    for k, v in CONTEXT.items():
        assert header.encryption_context[k] == v
    # The data key is a real KMS ciphertext bound to the message's context.
    edk_blob = edk.encrypted_data_key
    data_key = kms.decrypt(CiphertextBlob=edk_blob,
                           EncryptionContext=header.encryption_context)
    assert data_key["KeyId"] == arn and len(data_key["Plaintext"]) == 32
    wrong = dict(header.encryption_context, tenant="red")
    with raises_code(kms, "InvalidCiphertextException"):
        kms.decrypt(CiphertextBlob=edk_blob, EncryptionContext=wrong)


def test_tampered_messages_fail(esdk: Any, kms: Any, keys: dict[str, dict[str, Any]]) -> None:
    arn = keys["a"]["Arn"]
    mk = KMSMasterKey(key_id=arn, client=kms)
    plaintext = b"tamper-evident " * 200
    ct, _ = esdk.encrypt(source=plaintext, key_provider=mk, encryption_context=CONTEXT,
                         frame_length=512)
    assert esdk.decrypt(source=ct, key_provider=mk)[0] == plaintext
    # A changed context value in the header, a changed byte of the framed body, a changed
    # footer signature, a truncated message: each refused.
    changed_ctx = ct.replace(b"esdk-test", b"esdk-tesT", 1)
    assert changed_ctx != ct
    for bad in (changed_ctx, _flip(ct, len(ct) // 2), _flip(ct, len(ct) - 1), ct[:-40]):
        with pytest.raises(REFUSED):
            esdk.decrypt(source=bad, key_provider=mk)


def test_decrypt_needs_the_right_key(esdk: Any, kms: Any,
                                     keys: dict[str, dict[str, Any]]) -> None:
    ct, _ = esdk.encrypt(source=b"only a", key_provider=KMSMasterKey(key_id=keys["a"]["Arn"],
                                                                      client=kms))
    with pytest.raises(AWSEncryptionSDKClientError):
        esdk.decrypt(source=ct, key_provider=KMSMasterKey(key_id=keys["b"]["Arn"], client=kms))


def test_strict_provider_from_environment(esdk: Any, kms: Any, aws_env: None,
                                          keys: dict[str, dict[str, Any]]) -> None:
    a, b = keys["a"]["Arn"], keys["b"]["Arn"]
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[a, b])
    plaintext = os.urandom(10_000)
    ct, header = esdk.encrypt(source=plaintext, key_provider=provider,
                              encryption_context=CONTEXT)
    # One data key, wrapped under both keys (GenerateDataKey on a, Encrypt on b).
    assert {e.key_provider.key_info for e in header.encrypted_data_keys} == {a.encode(),
                                                                              b.encode()}
    out, _ = esdk.decrypt(source=ct, key_provider=StrictAwsKmsMasterKeyProvider(key_ids=[b]))
    assert out == plaintext
    out, _ = esdk.decrypt(source=ct, key_provider=StrictAwsKmsMasterKeyProvider(key_ids=[a]))
    assert out == plaintext
    # And with the explicit-client master key.
    assert esdk.decrypt(source=ct, key_provider=KMSMasterKey(key_id=b, client=kms))[0] \
        == plaintext
    with pytest.raises(REFUSED):
        esdk.decrypt(source=_flip(ct, len(ct) - 100), key_provider=provider)


def test_streaming_many_frames(esdk: Any, aws_env: None,
                               keys: dict[str, dict[str, Any]]) -> None:
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[keys["sm4"]["Arn"]])
    plaintext = os.urandom(200_000)
    sink = io.BytesIO()
    with esdk.stream(mode="e", source=io.BytesIO(plaintext), key_provider=provider,
                     encryption_context=CONTEXT, frame_length=4096) as enc:
        for chunk in enc:
            sink.write(chunk)
    out = io.BytesIO()
    with esdk.stream(mode="d", source=io.BytesIO(sink.getvalue()),
                     key_provider=provider) as dec:
        for chunk in dec:
            out.write(chunk)
        assert dec.header.encryption_context["tenant"] == "blue"
    assert out.getvalue() == plaintext


def test_discovery_provider_with_account_filter(esdk: Any, kms: Any, aws_env: None,
                                                keys: dict[str, dict[str, Any]]) -> None:
    arn = keys["a"]["Arn"]
    account = keys["a"]["AWSAccountId"]
    ct, _ = esdk.encrypt(source=b"discover me",
                         key_provider=StrictAwsKmsMasterKeyProvider(key_ids=[arn]))
    found = DiscoveryAwsKmsMasterKeyProvider(
        discovery_filter=DiscoveryFilter(account_ids=[account], partition="aws"))
    assert esdk.decrypt(source=ct, key_provider=found)[0] == b"discover me"
    other = DiscoveryAwsKmsMasterKeyProvider(
        discovery_filter=DiscoveryFilter(account_ids=["000000000000"], partition="aws"))
    with pytest.raises(AWSEncryptionSDKClientError):
        esdk.decrypt(source=ct, key_provider=other)


def test_disabled_key_and_other_instance_fail(esdk: Any, server: Server, kms: Any,
                                              kms2: Any) -> None:
    md = kms.create_key(Description="esdk disabled")["KeyMetadata"]
    mk = KMSMasterKey(key_id=md["Arn"], client=kms)
    ct, _ = esdk.encrypt(source=b"then disabled", key_provider=mk)
    kms.disable_key(KeyId=md["KeyId"])
    try:
        with pytest.raises(AWSEncryptionSDKClientError):
            esdk.encrypt(source=b"x", key_provider=KMSMasterKey(key_id=md["Arn"], client=kms))
        with pytest.raises(AWSEncryptionSDKClientError):
            esdk.decrypt(source=ct, key_provider=KMSMasterKey(key_id=md["Arn"], client=kms))
    finally:
        kms.enable_key(KeyId=md["KeyId"])
    assert esdk.decrypt(source=ct, key_provider=mk)[0] == b"then disabled"
    # The srv2 credential, naming the srv key's ARN, cannot use it.
    with pytest.raises(AWSEncryptionSDKClientError):
        esdk.decrypt(source=ct, key_provider=KMSMasterKey(key_id=md["Arn"], client=kms2))


def test_many_messages_unique_data_keys(esdk: Any, kms: Any,
                                        keys: dict[str, dict[str, Any]]) -> None:
    mk = KMSMasterKey(key_id=keys["b"]["Arn"], client=kms)
    blobs = set()
    for i in range(10):
        msg = f"message {i} {uuid.uuid4()}".encode()
        ct, header = esdk.encrypt(source=msg, key_provider=mk)
        (edk,) = header.encrypted_data_keys
        blobs.add(edk.encrypted_data_key)
        assert esdk.decrypt(source=ct, key_provider=mk)[0] == msg
    assert len(blobs) == 10


def test_encrypt_through_an_alias_arn(esdk: Any, kms: Any, aws_env: None,
                                      keys: dict[str, dict[str, Any]]) -> None:
    """The SDK encrypts with an alias ARN and records the key ARN the server answered
    (GenerateDataKey's KeyId), so a provider naming the key ARN decrypts."""
    a = keys["a"]
    name = "alias/esdk-" + uuid.uuid4().hex[:8]
    kms.create_alias(AliasName=name, TargetKeyId=a["KeyId"])
    alias_arn = f"arn:aws:kms:{REGION}:{a['AWSAccountId']}:{name}"
    ct, header = esdk.encrypt(source=b"via alias",
                              key_provider=StrictAwsKmsMasterKeyProvider(key_ids=[alias_arn]))
    (edk,) = header.encrypted_data_keys
    assert edk.key_provider.key_info == a["Arn"].encode()
    out, _ = esdk.decrypt(source=ct,
                          key_provider=StrictAwsKmsMasterKeyProvider(key_ids=[a["Arn"]]))
    assert out == b"via alias"
