"""Hostile input through the real server: every answer is typed, nothing stored changes.

A real ``hsmpool serve`` (one worker, two SoftHSM2 tokens). Hypothesis (a bounded number of
examples, about 230 in all, no example database) sends it:

* signed AWS KMS and Secrets Manager requests whose bodies are random JSON: known field
  names and random ones, wrong types, huge and negative numbers, invalid base64, deep
  nesting, invalid UTF-8, bodies that are not JSON at all;
* truncated and bit-flipped ciphertexts of a real key;
* requests with garbled authentication (signature, credential scope, date), wrong content
  types, unknown targets, oversized headers and bodies;
* raw bytes on a socket: a valid request mutated byte by byte (the HTTP/1.1 parser).

Every answer must be a success or a typed 4xx (a JSON ``__type``), never a 5xx and never
slower than ANSWER_BOUND; the server stays up, logs no traceback, and the keys, alias, tags,
policy and secret stored before the run are unchanged after it.

Mutating operations never name the stored objects (a valid DisableKey on them would be a
legitimate change); read-only and cryptographic operations do.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import (
    JSON_CT,
    Cred,
    Server,
    create_credential,
    raw_post,
    run_server,
    sign_headers,
    write_server_config,
)

TOKENS = [5, 6]
ANSWER_BOUND = 5.0  # seconds: an answer slower than this is a hang (typically < 0.05 s)
FUZZ = settings(deadline=None, database=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

KMS_READ_ONLY = ["DescribeKey", "ListKeys", "ListResourceTags", "GetKeyPolicy",
                 "ListKeyPolicies", "ListAliases", "GetKeyRotationStatus", "ListKeyRotations",
                 "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey",
                 "GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair",
                 "GenerateDataKeyPairWithoutPlaintext", "Sign", "Verify", "GetPublicKey",
                 "GenerateMac", "VerifyMac", "GenerateRandom", "ListGrants",
                 "ListRetirableGrants"]
KMS_MUTATING = ["CreateKey", "EnableKey", "DisableKey", "ScheduleKeyDeletion",
                "CancelKeyDeletion", "UpdateKeyDescription", "TagResource", "UntagResource",
                "PutKeyPolicy", "CreateAlias", "UpdateAlias", "DeleteAlias",
                "EnableKeyRotation", "DisableKeyRotation", "RotateKeyOnDemand",
                "ImportKeyMaterial", "DeleteImportedKeyMaterial", "CreateGrant",
                "RetireGrant", "RevokeGrant"]
SM_READ_ONLY = ["GetSecretValue", "BatchGetSecretValue", "DescribeSecret", "ListSecrets",
                "ListSecretVersionIds", "GetRandomPassword", "GetResourcePolicy"]
SM_MUTATING = ["CreateSecret", "PutSecretValue", "UpdateSecret", "UpdateSecretVersionStage",
               "RotateSecret", "CancelRotateSecret", "DeleteSecret", "RestoreSecret",
               "TagResource", "UntagResource", "PutResourcePolicy", "DeleteResourcePolicy"]

FIELDS = ["KeyId", "Plaintext", "CiphertextBlob", "EncryptionContext", "GrantTokens",
          "KeySpec", "NumberOfBytes", "Message", "MessageType", "SigningAlgorithm",
          "Signature", "Description", "Tags", "TagKeys", "AliasName", "TargetKeyId", "Policy",
          "PolicyName", "Limit", "Marker", "PendingWindowInDays", "KeyUsage",
          "EncryptionAlgorithm", "DestinationKeyId", "SourceKeyId", "SourceEncryptionContext",
          "DestinationEncryptionContext", "MacAlgorithm", "Mac", "KeyPairSpec", "Origin",
          "GranteePrincipal", "Operations", "GrantId", "GrantToken", "Constraints",
          "ImportToken", "EncryptedKeyMaterial", "ValidTo", "ExpirationModel",
          "SecretId", "SecretIdList", "SecretString", "SecretBinary", "Name", "VersionId",
          "VersionStage", "VersionStages", "ClientRequestToken", "PasswordLength",
          "ExcludeCharacters", "MaxResults", "NextToken", "Filters", "KmsKeyId",
          "RotationLambdaARN", "RotationRules", "ForceDeleteWithoutRecovery",
          "RecoveryWindowInDays", "MoveToVersionId", "RemoveFromVersionId", "ResourcePolicy",
          "IncludePlannedDeletion"]

_B64 = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
_BAD_B64 = st.sampled_from(["", "=", "a", "abc", "!!!!", "YQ", "YQ==YQ==", "\u00e9\u00e9",
                            "A" * 10_001, "-_-_", "YWJj\n", " YWJj"])
_NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.sampled_from(
    [0, -1, 1, 2**31, 2**31 - 1, 2**63, -2**63, 2**64, 10**30, 1025, 4096]),
    st.floats(allow_nan=False, allow_infinity=False))
_TEXT = st.text(max_size=40)
_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _TEXT, _B64, _BAD_B64)
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=12)


@st.composite
def _bodies(draw: st.DrawFn, names: list[str]) -> bytes:
    """A request body: usually a JSON object of known and random fields with random values
    (``names``: the stored objects' ids, which may fill id fields); sometimes not JSON."""
    kind = draw(st.sampled_from(["object"] * 8 + ["raw", "nested", "array", "utf8"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "nested":
        depth = draw(st.integers(500, 5000))
        return b'{"KeyId":' + b"[" * depth + b"]" * depth + b"}"
    if kind == "array":
        return json.dumps(draw(st.lists(_SCALARS, max_size=3))).encode()
    if kind == "utf8":
        return b'{"KeyId": "' + draw(st.binary(min_size=1, max_size=20)) + b'\xff\xfe"}'
    ids = st.sampled_from(names) if names else _TEXT
    value = st.one_of(_JSON, ids, ids, _B64)
    fields = draw(st.dictionaries(st.one_of(st.sampled_from(FIELDS), _TEXT), value,
                                  max_size=6))
    return json.dumps(fields).encode()


class Fuzzed:
    """The server under attack and what it held before."""

    def __init__(self, server: Server, cred: Cred, kms: Any, sm: Any) -> None:
        self.server, self.cred, self.kms, self.sm = server, cred, kms, sm
        self.key = kms.create_key(Description="fuzz reference",
                                  Tags=[{"TagKey": "k", "TagValue": "v"}])["KeyMetadata"]
        kms.create_alias(AliasName="alias/fuzz-ref", TargetKeyId=self.key["KeyId"])
        self.sign_key = kms.create_key(KeySpec="ECC_NIST_P256",
                                       KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        self.secret = sm.create_secret(Name="fuzz-ref", SecretString="fuzz-ref-value")
        self.ciphertext = kms.encrypt(KeyId=self.key["KeyId"],
                                      Plaintext=b"fuzz reference plaintext")["CiphertextBlob"]
        self.names = [self.key["KeyId"], self.key["Arn"], "alias/fuzz-ref",
                      self.sign_key["KeyId"], self.secret["ARN"], "fuzz-ref"]
        self.answers: list[tuple[str, int, float]] = []  # (what, status, seconds)
        self.types: dict[str, int] = {}  # error type -> count

    def snapshot(self) -> dict[str, Any]:
        kms, sm, key_id = self.kms, self.sm, self.key["KeyId"]
        out: dict[str, Any] = {}
        for k in (key_id, self.sign_key["KeyId"]):
            out[k] = kms.describe_key(KeyId=k)["KeyMetadata"]
            out[k + "/tags"] = kms.list_resource_tags(KeyId=k)["Tags"]
            out[k + "/policy"] = kms.get_key_policy(KeyId=k, PolicyName="default")["Policy"]
            out[k + "/rotation"] = kms.get_key_rotation_status(KeyId=k)["KeyRotationEnabled"]
        out["aliases"] = sorted((a["AliasName"], a.get("TargetKeyId"))
                                for a in kms.list_aliases()["Aliases"])
        secret = sm.describe_secret(SecretId="fuzz-ref")
        secret.pop("ResponseMetadata", None)
        out["secret"] = secret
        out["secret/value"] = sm.get_secret_value(SecretId="fuzz-ref")["SecretString"]
        out["decrypt"] = kms.decrypt(CiphertextBlob=self.ciphertext)["Plaintext"]
        return out

    def post(self, what: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        t0 = time.monotonic()
        status, _, data = raw_post(self.server.port, body, headers)
        seconds = time.monotonic() - t0
        self.answers.append((what, status, seconds))
        assert seconds < ANSWER_BOUND, (what, seconds)
        assert status < 500, (what, status, data[:300], body[:300])
        if status >= 400 and status != 404:
            doc = json.loads(data)  # typed: a JSON error with its type and a message
            assert isinstance(doc, dict) and isinstance(doc.get("__type"), str) \
                and doc["__type"], (what, status, data[:300])
            self.types[doc["__type"]] = self.types.get(doc["__type"], 0) + 1
        return status, data

    def signed(self, service: str, target: str, body: bytes,
               content_type: str | None = JSON_CT) -> tuple[int, bytes]:
        headers = sign_headers(self.cred, self.server.port, target, body,
                               content_type=content_type, service=service)
        return self.post(target, body, headers)


@pytest.fixture(scope="module")
def fuzzed(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    cfg = write_server_config(tmp_path_factory.mktemp("fuzz"), token_dir, {"fuzz": TOKENS})
    cred = create_credential(cfg, "fuzz", "admin")
    with run_server(cfg) as srv:
        srv.creds["admin"] = cred
        f = Fuzzed(srv, cred, srv.client(cred), srv.client(cred, service="secretsmanager"))
        before = f.snapshot()
        yield f
        # The server is still up, logged no traceback, and holds what it held.
        assert srv.proc.poll() is None
        status, _, _ = srv.get("/healthz")
        assert status == 200
        assert f.snapshot() == before
        log = srv.log_text()
        assert "Traceback" not in log, log[-3000:]
        secs = [s for _, _, s in f.answers]
        codes: dict[int, int] = {}
        for _, status, _ in f.answers:
            codes[status] = codes.get(status, 0) + 1
        print(f"\nfuzz: {len(f.answers)} requests, statuses {sorted(codes.items())}, "
              f"max {max(secs, default=0) * 1e3:.1f} ms; error types {sorted(f.types.items())}")


@st.composite
def _signed_requests(draw: st.DrawFn, names: list[str]) -> tuple[str, str, bytes]:
    service = draw(st.sampled_from(["kms", "secretsmanager"]))
    read_only, mutating, prefix = (KMS_READ_ONLY, KMS_MUTATING, "TrentService.") \
        if service == "kms" else (SM_READ_ONLY, SM_MUTATING, "secretsmanager.")
    op = draw(st.sampled_from(read_only + mutating))
    body = draw(_bodies(names if op in read_only else []))
    return service, prefix + op, body


@settings(FUZZ, max_examples=110)
@given(data=st.data())
def test_signed_malformed_bodies_get_typed_answers(fuzzed: Fuzzed, data: st.DataObject
                                                   ) -> None:
    service, target, body = data.draw(_signed_requests(fuzzed.names))
    fuzzed.signed(service, target, body)


@settings(FUZZ, max_examples=45)
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 10_000),
                                                          st.integers(0, 7)), max_size=3),
       tail=st.binary(max_size=8))
def test_mutated_ciphertexts_never_decrypt(fuzzed: Fuzzed, cut: int,
                                           flips: list[tuple[int, int]], tail: bytes) -> None:
    ct = bytearray(fuzzed.ciphertext)
    ct = ct[:cut] if cut < len(ct) else ct
    for pos, bit in flips:
        if ct:
            ct[pos % len(ct)] ^= 1 << bit
    ct += tail
    if bytes(ct) == fuzzed.ciphertext:
        return
    body = json.dumps({"CiphertextBlob": base64.b64encode(bytes(ct)).decode()}).encode()
    status, data = fuzzed.signed("kms", "TrentService.Decrypt", body)
    assert status == 400, (status, data[:300])
    assert json.loads(data)["__type"] in {"InvalidCiphertextException", "ValidationException",
                                          "IncorrectKeyException", "NotFoundException"}, data


# What a header can carry on the wire (latin-1, no line breaks).
_HEADER_TEXT = st.text(st.characters(max_codepoint=255, blacklist_characters="\r\n"),
                       max_size=30)
_GARBLES = st.sampled_from(["flip-signature", "truncate-signature", "no-signature",
                            "bad-credential", "other-secret", "bad-date", "old-date",
                            "random-authorization", "no-authorization", "duplicate-auth",
                            "content-type", "no-target", "unknown-target", "huge-header"])


@settings(FUZZ, max_examples=45)
@given(garble=_GARBLES, junk=_HEADER_TEXT, body=_bodies([]))
def test_garbled_requests_get_typed_answers(fuzzed: Fuzzed, garble: str, junk: str,
                                            body: bytes) -> None:
    port, cred = fuzzed.server.port, fuzzed.cred
    target = "TrentService.DescribeKey"
    ctype: str | None = JSON_CT
    if garble == "content-type":
        ctype = junk or None
    elif garble == "no-target":
        target = ""
    elif garble == "unknown-target":
        target = "TrentService." + junk
    if garble == "other-secret":
        cred = Cred(cred.access_key_id, cred.secret[:-1] + "x", cred.instance)
    headers = sign_headers(cred, port, target or None, body, content_type=ctype)
    auth = headers.get("Authorization", "")
    if garble == "flip-signature":
        last = auth[-1]
        headers["Authorization"] = auth[:-1] + ("0" if last != "0" else "1")
    elif garble == "truncate-signature":
        headers["Authorization"] = auth[:max(0, len(auth) - 1 - len(junk))]
    elif garble == "no-signature":
        headers["Authorization"] = auth.split(", Signature=")[0]
    elif garble == "bad-credential":
        headers["Authorization"] = auth.replace("Credential=", "Credential=" + junk + "/", 1)
    elif garble == "bad-date":
        headers["X-Amz-Date"] = junk
    elif garble == "old-date":
        headers["X-Amz-Date"] = "20000101T000000Z"
    elif garble == "random-authorization":
        headers["Authorization"] = "AWS4-HMAC-SHA256 " + junk
    elif garble == "no-authorization":
        headers.pop("Authorization", None)
    elif garble == "duplicate-auth":
        headers["Authorization"] = auth + ", " + auth
    elif garble == "huge-header":
        headers["X-Padding"] = "a" * 20_000
    status, data = fuzzed.post(garble, body, headers)
    if garble not in {"content-type", "no-target", "unknown-target"} or not target:
        assert status >= 400, (garble, status, data[:300])


def test_oversized_and_odd_requests_get_typed_answers(fuzzed: Fuzzed) -> None:
    big = b'{"Plaintext": "' + b"A" * (300 * 1024) + b'"}'
    status, data = fuzzed.signed("kms", "TrentService.Encrypt", big)
    assert status == 413, (status, data[:200])
    for path_body in (b"", b"null", b"[]", b'"x"', b"{", b"\x00" * 10):
        status, _ = fuzzed.signed("kms", "TrentService.Encrypt", path_body)
        assert status == 400, (path_body, status)


def _raw_request(fuzzed: Fuzzed) -> bytes:
    body = json.dumps({"KeyId": fuzzed.key["KeyId"]}).encode()
    headers = sign_headers(fuzzed.cred, fuzzed.server.port, "TrentService.DescribeKey", body)
    head = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@settings(FUZZ, max_examples=30)
@given(edits=st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(["flip", "drop", "dup",
                                                                        "insert"]),
                                st.binary(min_size=1, max_size=4)), min_size=1, max_size=4))
def test_mutated_http_bytes_get_an_answer_or_a_close(fuzzed: Fuzzed,
                                                      edits: list[tuple[int, str, bytes]]
                                                      ) -> None:
    raw = bytearray(_raw_request(fuzzed))
    for pos, how, junk in edits:
        p = pos % len(raw)
        if how == "flip":
            raw[p] ^= junk[0] or 1
        elif how == "drop":
            del raw[p:p + len(junk)]
        elif how == "dup":
            raw[p:p] = raw[p:p + 16]
        else:
            raw[p:p] = junk
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", fuzzed.server.port), timeout=ANSWER_BOUND) \
            as sock:
        sock.sendall(bytes(raw))
        sock.shutdown(socket.SHUT_WR)  # the client is done: the server answers, then closes
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    seconds = time.monotonic() - t0
    fuzzed.answers.append(("raw", int(got[9:12]) if got[9:12].isdigit() else 0, seconds))
    assert seconds < ANSWER_BOUND
    for line in got.split(b"\r\n"):
        if line.startswith(b"HTTP/1."):
            assert line[9:10] in (b"1", b"2", b"4"), (got[:400], bytes(raw)[:400])
