"""The Alibaba Cloud KMS OpenAPI front end (kms/api/alibaba.py) with the unmodified
``alibabacloud-kms20160120`` SDK (in its own virtual environment: its pins conflict with
boto3's), ACS3-HMAC-SHA256 and v1 HMAC-SHA1 signatures, against the session's real server;
the same keys and secrets through boto3."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.sdk.venvs import ALIBABA_OPENAPI, run_sdk, sdk_python
from tests.server.conftest import Server

PRELUDE = r'''
import base64, json, sys
from alibabacloud_kms20160120.client import Client
from alibabacloud_kms20160120 import models as m
from alibabacloud_tea_openapi import models as om
port, ak, sk, algo = sys.argv[1:5]
args = sys.argv[5:]
cfg = om.Config(access_key_id=ak, access_key_secret=sk, endpoint=f"127.0.0.1:{port}",
                protocol="http", region_id="us-east-1")
if algo == "v1":
    cfg.signature_algorithm = "v2"
c = Client(cfg)
out = {}
def code_of(fn):
    try:
        fn()
    except Exception as e:
        return [getattr(e, "code", type(e).__name__), getattr(e, "status_code", None)]
    return None
b64 = lambda b: base64.b64encode(b).decode()
'''


@pytest.fixture(scope="module")
def ali_python() -> Path:
    return sdk_python("alibaba-openapi", ALIBABA_OPENAPI)


def _run(py: Path, server: Server, body: str, *args: str, algo: str = "acs3",
         cred: str = "admin", secret: str | None = None) -> Any:
    c = server.creds[cred]
    return run_sdk(py, PRELUDE + body + "\nprint(json.dumps(out))", str(server.port),
                   c.access_key_id, secret if secret is not None else c.secret, algo, *args)


KEY_SCRIPT = r'''
k = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_AES_256", description="ali")).body
kid = k.key_metadata.key_id
out["meta"] = [k.key_metadata.key_spec, k.key_metadata.key_usage, k.key_metadata.key_state,
               k.key_metadata.arn]
out["describe"] = c.describe_key(m.DescribeKeyRequest(key_id=k.key_metadata.arn)).body.key_metadata.key_id
pt = b"hello +/= \x00\xff"
e = c.encrypt(m.EncryptRequest(key_id=kid, plaintext=b64(pt), encryption_context={"app": "x"})).body
d = c.decrypt(m.DecryptRequest(ciphertext_blob=e.ciphertext_blob, encryption_context={"app": "x"})).body
out["roundtrip"] = base64.b64decode(d.plaintext) == pt and d.key_id == kid
out["wrong_context"] = code_of(lambda: c.decrypt(m.DecryptRequest(
    ciphertext_blob=e.ciphertext_blob, encryption_context={"app": "y"})))
g = c.generate_data_key(m.GenerateDataKeyRequest(key_id=kid, key_spec="AES_256")).body
out["datakey"] = len(base64.b64decode(g.plaintext)) == 32 and base64.b64decode(
    c.decrypt(m.DecryptRequest(ciphertext_blob=g.ciphertext_blob)).body.plaintext) == base64.b64decode(g.plaintext)
alias = "alias/ali-" + args[0]
c.create_alias(m.CreateAliasRequest(alias_name=alias, key_id=kid))
by_alias = c.encrypt(m.EncryptRequest(key_id=alias, plaintext=b64(b"via alias"))).body
out["alias_encrypt"] = by_alias.key_id == kid
out["aliases_of_key"] = [a.alias_name for a in c.list_aliases_by_key_id(
    m.ListAliasesByKeyIdRequest(key_id=kid)).body.aliases.alias]
k2 = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_SM4")).body.key_metadata
r = c.re_encrypt(m.ReEncryptRequest(ciphertext_blob=e.ciphertext_blob, destination_key_id=k2.key_id,
                                    source_encryption_context={"app": "x"})).body
out["reencrypt"] = [r.key_id == k2.key_id, base64.b64decode(c.decrypt(m.DecryptRequest(
    ciphertext_blob=r.ciphertext_blob)).body.plaintext) == pt]
out["sm4_spec"] = k2.key_spec
c.disable_key(m.DisableKeyRequest(key_id=kid))
out["disabled"] = code_of(lambda: c.encrypt(m.EncryptRequest(key_id=kid, plaintext=b64(b"x"))))
c.enable_key(m.EnableKeyRequest(key_id=kid))
c.schedule_key_deletion(m.ScheduleKeyDeletionRequest(key_id=kid, pending_window_in_days=7))
out["pending"] = c.describe_key(m.DescribeKeyRequest(key_id=kid)).body.key_metadata.key_state
c.cancel_key_deletion(m.CancelKeyDeletionRequest(key_id=kid))
out["missing"] = code_of(lambda: c.describe_key(m.DescribeKeyRequest(key_id=str(__import__("uuid").uuid4()))))
keys = c.list_keys(m.ListKeysRequest(page_size=100)).body
out["listed"] = kid in [x.key_id for x in keys.keys.key]
c.delete_alias(m.DeleteAliasRequest(alias_name=alias))
out["alias_gone"] = code_of(lambda: c.encrypt(m.EncryptRequest(key_id=alias, plaintext=b64(b"x"))))
out["random"] = len(c.get_random_password(m.GetRandomPasswordRequest(password_length="24")).body.random_password)
'''


@pytest.mark.parametrize("algo", ["acs3", "v1"])
def test_keys_and_cryptography(ali_python: Path, server: Server, algo: str) -> None:
    out = _run(ali_python, server, KEY_SCRIPT, uuid.uuid4().hex[:8], algo=algo)
    assert out["meta"][:3] == ["Aliyun_AES_256", "ENCRYPT/DECRYPT", "Enabled"]
    assert out["meta"][3].startswith("acs:kms:us-east-1:")
    assert out["describe"] and out["roundtrip"] and out["datakey"] and out["alias_encrypt"]
    assert out["wrong_context"][0] == "Rejected.InvalidCiphertext"
    assert len(out["aliases_of_key"]) == 1 and out["reencrypt"] == [True, True]
    assert out["sm4_spec"] == "Aliyun_SM4"
    assert out["disabled"] == ["Rejected.Disabled", 400]
    assert out["pending"] == "PendingDeletion"
    assert out["missing"] == ["Forbidden.KeyNotFound", 404]
    assert out["listed"] and out["random"] == 24
    assert out["alias_gone"][0] in ("Forbidden.KeyNotFound", "Forbidden.AliasNotFound")


def test_one_key_any_protocol(ali_python: Path, server: Server, kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"from boto3")["CiphertextBlob"]
    out = _run(ali_python, server, r'''
d = c.decrypt(m.DecryptRequest(ciphertext_blob=args[0])).body
out["plaintext"] = base64.b64decode(d.plaintext).decode()
out["blob"] = c.encrypt(m.EncryptRequest(key_id=args[1], plaintext=b64(b"from alibaba"))).body.ciphertext_blob
''', base64.b64encode(blob).decode(), key["KeyId"])
    assert out["plaintext"] == "from boto3"
    assert kms.decrypt(CiphertextBlob=base64.b64decode(out["blob"]))["Plaintext"] == \
        b"from alibaba"


def test_secrets_with_acs_stages(ali_python: Path, server: Server) -> None:
    sm = server.client(server.creds["admin"], service="secretsmanager")
    name = f"ali/{uuid.uuid4().hex[:8]}"
    out = _run(ali_python, server, r'''
name = args[0]
c.create_secret(m.CreateSecretRequest(secret_name=name, secret_data="v1", version_id="v1-" + "0" * 29))
c.put_secret_value(m.PutSecretValueRequest(secret_name=name, secret_data="v2", version_id="v2-" + "0" * 29,
                                           version_stages='["ACSCurrent"]'))
cur = c.get_secret_value(m.GetSecretValueRequest(secret_name=name)).body
prev = c.get_secret_value(m.GetSecretValueRequest(secret_name=name, version_stage="ACSPrevious")).body
out["current"] = [cur.secret_data, cur.version_stages.version_stage]
out["previous"] = prev.secret_data
out["described"] = c.describe_secret(m.DescribeSecretRequest(secret_name=name)).body.secret_name
out["missing"] = code_of(lambda: c.get_secret_value(m.GetSecretValueRequest(secret_name=name + "-no")))
''', name)
    assert out["current"] == ["v2", ["ACSCurrent"]] and out["previous"] == "v1"
    assert out["described"] == name
    assert out["missing"] == ["Forbidden.ResourceNotFound", 404]
    assert sm.get_secret_value(SecretId=name)["SecretString"] == "v2"  # the same secret


REFUSALS = r'''
from alibabacloud_tea_openapi import utils as u
out["bad_secret"] = code_of(lambda: c.list_keys(m.ListKeysRequest()))
'''


def test_refusals(ali_python: Path, server: Server) -> None:
    out = _run(ali_python, server, REFUSALS, secret="wrong-secret")
    assert out["bad_secret"] == ["SignatureDoesNotMatch", 400]
    unknown = _run(ali_python, server, REFUSALS, cred="admin")  # a working baseline
    assert unknown["bad_secret"] is None
    replay = _run(ali_python, server, r'''
import alibabacloud_tea_openapi.client as oc
fixed = "nonce-" + args[0]
oc.Utils.get_nonce = staticmethod(lambda: fixed)
c.list_keys(m.ListKeysRequest())
out["replayed"] = code_of(lambda: c.list_keys(m.ListKeysRequest()))
oc.Utils.get_timestamp = staticmethod(lambda: "2020-01-01T00:00:00Z")
oc.Utils.get_nonce = staticmethod(lambda: fixed + "-2")
out["stale"] = code_of(lambda: c.list_keys(m.ListKeysRequest()))
''', uuid.uuid4().hex)
    assert replay["replayed"] == ["SignatureNonceUsed", 400]
    assert replay["stale"] == ["InvalidTimeStamp.Expired", 400]
