"""The KMS-instance API (kms/api/kms_instance.py) with the unmodified Alibaba SDKs
``alibabacloud-dkms-gcs`` (its Client) and ``alibabacloud-kms-python-sdk`` (its
TransferClient), in their own virtual environment, over HTTPS with the CA file the server
made, authenticated by client keys of application access points made by the real
``hsmpool aap`` CLI; against the session's real server, on keys made with boto3."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.database import connect
from tests.sdk.venvs import ALIBABA_KMS_INSTANCE, run_sdk, sdk_python
from tests.server.conftest import HSMPOOL, Server, config_database

PRELUDE = r'''
import base64, hashlib, json, sys
from openapi.models import Config
from openapi_util.models import RuntimeOptions
from sdk.client import Client
from sdk import models as m
port, key_file, password_file, ca = sys.argv[1:5]
args = sys.argv[5:]
cfg = Config(protocol="https", client_key_file=key_file, password=open(password_file).read(),
             endpoint=f"127.0.0.1:{port}", ca_file_path=ca)
c = Client(cfg)
out = {}
b64 = lambda b: base64.b64encode(b).decode()
def code_of(fn):
    try:
        fn()
    except Exception as e:
        data = getattr(e, "data", None) or {}
        return [getattr(e, "code", type(e).__name__), data.get("httpCode")]
    return None
'''


def _aap(server: Server, out: Path, name: str, roles: str, resources: list[str],
         network: str) -> tuple[str, Path, Path]:
    """``hsmpool aap create`` (the real CLI) -> (client key id, key file, password file)."""
    cmd = [str(HSMPOOL), "--config", str(server.config), "aap", "create", "--instance", "srv",
           "--name", name, "--role", roles, "--network", network, "--out", str(out), "--json"]
    for r in resources:
        cmd += ["--resource", r]
    doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                    timeout=60).stdout)
    return doc["ClientKeyId"], Path(doc["KeyFile"]), Path(doc["PasswordFile"])


@pytest.fixture(scope="module")
def dkms_python() -> Path:
    return sdk_python("alibaba-kms-instance", ALIBABA_KMS_INSTANCE)


@pytest.fixture(scope="module")
def app_key(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    return _aap(server, tmp_path_factory.mktemp("aap"), "app", "CryptoServiceKeyUser,SecretUser",
                ["key/*", "secret/inst/*"], "127.0.0.1/32")


def _ca(server: Server) -> Path:
    return server.config.parent / "kms-instance-tls" / "ca.pem"


def _run(py: Path, server: Server, key: tuple[str, Path, Path], body: str, *args: str) -> Any:
    assert server.instance_port is not None
    return run_sdk(py, PRELUDE + body + "\nprint(json.dumps(out))", str(server.instance_port),
                   str(key[1]), str(key[2]), str(_ca(server)), *args)


SYMMETRIC = r'''
aes, sm4 = args[0], args[1]
for name, kid in (("aes", aes), ("sm4", sm4)):
    e = c.encrypt(m.EncryptRequest(key_id=kid, plaintext=b"hello instance", aad=b"ctx"))
    d = c.decrypt(m.DecryptRequest(key_id=kid, ciphertext_blob=e.ciphertext_blob, iv=e.iv,
                                   aad=b"ctx"))
    out[name] = [d.plaintext == b"hello instance", e.algorithm, d.algorithm, len(e.iv)]
    out[name + "_wrong_aad"] = code_of(lambda: c.decrypt(m.DecryptRequest(
        key_id=kid, ciphertext_blob=e.ciphertext_blob, iv=e.iv, aad=b"other")))
    a = c.advance_encrypt(m.AdvanceEncryptRequest(key_id=kid, plaintext=b"advance", aad=b"x"))
    blob = a.ciphertext_blob
    out[name + "_advance_layout"] = [blob[:3].hex(), blob[3:39].decode() == a.key_version_id,
                                     blob[39:51] == a.iv]
    ad = c.advance_decrypt(m.AdvanceDecryptRequest(ciphertext_blob=blob, aad=b"x"))
    out[name + "_advance"] = [ad.plaintext == b"advance", ad.key_version_id == a.key_version_id]
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    out[name + "_tampered"] = code_of(lambda: c.advance_decrypt(m.AdvanceDecryptRequest(
        ciphertext_blob=tampered, aad=b"x")))
g = c.generate_data_key(m.GenerateDataKeyRequest(key_id=aes, number_of_bytes=16))
back = c.decrypt(m.DecryptRequest(key_id=aes, ciphertext_blob=g.ciphertext_blob, iv=g.iv))
out["datakey"] = [len(g.plaintext), back.plaintext == g.plaintext]
ag = c.advance_generate_data_key(m.AdvanceGenerateDataKeyRequest(key_id=aes, number_of_bytes=32))
out["advance_datakey"] = c.advance_decrypt(m.AdvanceDecryptRequest(
    ciphertext_blob=ag.ciphertext_blob)).plaintext == ag.plaintext
out["caller_iv"] = code_of(lambda: c.encrypt(m.EncryptRequest(key_id=aes, plaintext=b"x",
                                                               iv=b"\x00" * 12)))
out["random"] = len(c.generate_random(m.GenerateRandomRequest(length=48)).random)
out["made_here"] = b64(c.encrypt(m.EncryptRequest(key_id=aes, plaintext=b"to boto3")).ciphertext_blob)
out["from_boto3"] = c.decrypt(m.DecryptRequest(ciphertext_blob=base64.b64decode(args[2]))).plaintext.decode()
out["unknown_key"] = code_of(lambda: c.encrypt(m.EncryptRequest(key_id="no-such-key", plaintext=b"x")))
out["disabled"] = code_of(lambda: c.encrypt(m.EncryptRequest(key_id=args[3], plaintext=b"x")))
'''


def test_symmetric_apis_and_cross_protocol_ciphertexts(dkms_python: Path, server: Server,
                                                       kms: Any, app_key: Any) -> None:
    aes = kms.create_key()["KeyMetadata"]["KeyId"]
    sm4 = kms.create_key(KeySpec="SM4")["KeyMetadata"]["KeyId"]
    off = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=off)
    from_boto3 = kms.encrypt(KeyId=aes, Plaintext=b"from boto3")["CiphertextBlob"]
    out = _run(dkms_python, server, app_key, SYMMETRIC, aes, sm4,
               base64.b64encode(from_boto3).decode(), off)
    assert out["aes"] == [True, "AES_GCM", "AES_GCM", 12]
    assert out["sm4"] == [True, "SM4_GCM", "SM4_GCM", 12]
    for name in ("aes", "sm4"):
        assert out[name + "_wrong_aad"] == ["Rejected.InvalidCiphertext", 400]
        assert out[name + "_advance_layout"] == ["240002", True, True]
        assert out[name + "_advance"] == [True, True]
        assert out[name + "_tampered"] == ["Rejected.InvalidCiphertext", 400]
    assert out["datakey"] == [16, True]
    assert out["advance_datakey"] is True
    assert out["caller_iv"] == ["InvalidParameter", 400]
    assert out["random"] == 48
    assert out["from_boto3"] == "from boto3"
    made_here = base64.b64decode(out["made_here"])
    assert kms.decrypt(CiphertextBlob=made_here)["Plaintext"] == b"to boto3"
    assert out["unknown_key"][0] == "Forbidden.KeyNotFound"
    assert out["disabled"] == ["Rejected.Disabled", 400]
    # Each API is one service call, audited as itself (no extra DescribeKey records).
    actions = _audited_actions(server, "aap/app")
    assert "kms:Encrypt" in actions and "kms:Decrypt" in actions
    assert "kms:DescribeKey" not in actions


def _audited_actions(server: Server, principal: str) -> set[str]:
    time.sleep(0.3)  # the audit writer commits within about 10 ms
    actions: set[str] = set()
    for path in sorted((server.config.parent / "audit").glob("audit-*.db")):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            actions |= {a for (a,) in db.execute(
                "SELECT DISTINCT action FROM audit WHERE principal = ?", (principal,))}
        finally:
            db.close()
    return actions


ASYMMETRIC = r'''
rsa, sm2, rsa_enc, hmac_key = args[0], args[1], args[2], args[3]
msg = b"signed through the KMS-instance SDK"
s = c.sign(m.SignRequest(key_id=rsa, algorithm="RSA_PSS_SHA_256", message=msg, message_type="RAW"))
out["rsa_sig"] = b64(s.signature)
out["rsa_verify"] = [c.verify(m.VerifyRequest(key_id=rsa, algorithm="RSA_PSS_SHA_256", message=msg,
                                              signature=s.signature, message_type="RAW")).value,
                     c.verify(m.VerifyRequest(key_id=rsa, algorithm="RSA_PSS_SHA_256", message=msg + b"!",
                                              signature=s.signature, message_type="RAW")).value]
d = c.sign(m.SignRequest(key_id=rsa, algorithm="RSA_PKCS1_SHA_256",
                         message=hashlib.sha256(msg).digest(), message_type="DIGEST"))
out["rsa_pkcs1_sig"] = b64(d.signature)
out["rsa_pem"] = c.get_public_key(m.GetPublicKeyRequest(key_id=rsa)).public_key
out["sm2_sig"] = b64(c.sign(m.SignRequest(key_id=sm2, algorithm="SM2DSA", message=msg,
                                          message_type="RAW")).signature)
out["sm2_pem"] = c.get_public_key(m.GetPublicKeyRequest(key_id=sm2)).public_key
ct = c.encrypt(m.EncryptRequest(key_id=rsa_enc, algorithm="RSAES_OAEP_SHA_256", plaintext=b"rsa secret"))
out["rsa_decrypt"] = c.decrypt(m.DecryptRequest(key_id=rsa_enc, algorithm="RSAES_OAEP_SHA_256",
                                                ciphertext_blob=ct.ciphertext_blob)).plaintext.decode()
# Hmac: an API of the KMS instance that this SDK version has no method for; sent through the
# SDK's own request signing.
from openapi_util.protobuf import api_pb2
from openapi_util.models import RuntimeOptions
req = api_pb2.HmacRequest(KeyId=hmac_key, Message=b"mac me")
r = c.do_request("Hmac", "dkms-gcs-0.2", "https", "POST", "RSA_PKCS1_SHA_256",
                 req.SerializeToString(), RuntimeOptions(), {})
resp = api_pb2.HmacResponse()
resp.ParseFromString(r["bodyBytes"])
out["hmac"] = b64(resp.Signature)
out["wrong_usage"] = code_of(lambda: c.sign(m.SignRequest(key_id=rsa_enc, algorithm="RSA_PSS_SHA_256",
                                                          message=msg, message_type="RAW")))
'''


def test_signatures_public_keys_hmac_cross_checked(dkms_python: Path, server: Server, kms: Any,
                                                   app_key: Any) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from tests.kms.test_service import der_to_raw, gmssl_verifier

    def key(spec: str, usage: str) -> str:
        return str(kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"])

    rsa_id, sm2_id = key("RSA_2048", "SIGN_VERIFY"), key("SM2", "SIGN_VERIFY")
    enc_id, mac_id = key("RSA_2048", "ENCRYPT_DECRYPT"), key("HMAC_256", "GENERATE_VERIFY_MAC")
    out = _run(dkms_python, server, app_key, ASYMMETRIC, rsa_id, sm2_id, enc_id, mac_id)
    msg = b"signed through the KMS-instance SDK"
    pub = serialization.load_pem_public_key(out["rsa_pem"].encode())
    assert isinstance(pub, rsa.RSAPublicKey)
    pub.verify(base64.b64decode(out["rsa_sig"]), msg,
               padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
               hashes.SHA256())
    pub.verify(base64.b64decode(out["rsa_pkcs1_sig"]), msg, padding.PKCS1v15(), hashes.SHA256())
    assert out["rsa_verify"] == [True, False]
    # SM2DSA over SM3(Z || M) with the default user id: gmssl agrees.
    sm2_der = base64.b64decode("".join(line for line in out["sm2_pem"].splitlines()
                                       if line and not line.startswith("-----")))
    raw = der_to_raw(base64.b64decode(out["sm2_sig"]))
    assert gmssl_verifier(sm2_der).verify_with_sm3(raw.hex(), msg)
    assert not gmssl_verifier(sm2_der).verify_with_sm3(raw.hex(), msg + b"!")
    assert out["rsa_decrypt"] == "rsa secret"
    mac = base64.b64decode(out["hmac"])
    assert kms.verify_mac(KeyId=mac_id, Message=b"mac me", Mac=mac,
                          MacAlgorithm="HMAC_SHA_256")["MacValid"] is True
    assert out["wrong_usage"] == ["Rejected.InvalidKeyUsage", 400]


TRANSFER = r'''
from alibabacloud_kms_kms20160120.transfer_client import TransferClient
from alibabacloud_kms_kms20160120.models import KmsConfig
from alibabacloud_kms20160120 import models as om
kc = KmsConfig(protocol="https", client_key_file=key_file, password=open(password_file).read(),
               endpoint=f"127.0.0.1:{port}")
kc.ca_file_path = ca  # KmsConfig's constructor does not take it; its base class has it
t = TransferClient(kms_config=kc)
aes, rsa, secret = args[0], args[1], args[2]
e = t.encrypt(om.EncryptRequest(key_id=aes, plaintext="transfer client",
                                encryption_context={"app": "one"})).body
d = t.decrypt(om.DecryptRequest(ciphertext_blob=e.ciphertext_blob,
                                encryption_context={"app": "one"})).body
out["roundtrip"] = [d.plaintext, d.key_id == aes, e.key_version_id == d.key_version_id]
out["wrong_context"] = code_of(lambda: t.decrypt(om.DecryptRequest(
    ciphertext_blob=e.ciphertext_blob, encryption_context={"app": "two"})))
g = t.generate_data_key(om.GenerateDataKeyRequest(key_id=aes, number_of_bytes=32)).body
out["datakey"] = base64.b64decode(t.decrypt(om.DecryptRequest(
    ciphertext_blob=g.ciphertext_blob)).body.plaintext) == base64.b64decode(g.plaintext)
digest = b64(hashlib.sha256(b"transfer").digest())
ver = t.get_public_key(om.GetPublicKeyRequest(key_id=rsa, key_version_id="x")).body
sig = t.asymmetric_sign(om.AsymmetricSignRequest(key_id=rsa, key_version_id="x",
                                                 algorithm="RSA_PKCS1_SHA_256", digest=digest)).body
out["sign"] = t.asymmetric_verify(om.AsymmetricVerifyRequest(
    key_id=rsa, key_version_id="x", algorithm="RSA_PKCS1_SHA_256", digest=digest,
    value=sig.value)).body.value
out["pem"] = ver.public_key.startswith("-----BEGIN PUBLIC KEY-----")
s = t.get_secret_value(om.GetSecretValueRequest(secret_name=secret)).body
out["secret"] = [s.secret_data, s.secret_data_type, list(s.version_stages.version_stage)]
out["secret_outside"] = code_of(lambda: t.get_secret_value(om.GetSecretValueRequest(
    secret_name=args[3])))
'''


def test_transfer_client_speaks_openapi_shapes(dkms_python: Path, server: Server, kms: Any,
                                               app_key: Any) -> None:
    aes = kms.create_key()["KeyMetadata"]["KeyId"]
    rsa_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    sm = server.client(server.creds["admin"], service="secretsmanager")
    sm.create_secret(Name="inst/db", SecretString="s3cret-value")
    sm.create_secret(Name="other/db", SecretString="not yours")
    out = _run(dkms_python, server, app_key, TRANSFER, aes, rsa_id, "inst/db", "other/db")
    assert out["roundtrip"] == ["transfer client", True, True]
    assert out["wrong_context"][0] == "Rejected.InvalidCiphertext"
    assert out["datakey"] is True
    assert out["sign"] is True and out["pem"] is True
    assert out["secret"] == ["s3cret-value", "text", ["ACSCurrent"]]
    # Outside its resources: as if it did not exist (the service never says which exist).
    assert out["secret_outside"] == ["Forbidden.ResourceNotFound", 404]


REFUSALS = r'''
import email.utils, requests
from openapi_util.client import Client as U
from alibabacloud_openapi_util.client import Client as OU
from openapi_util.protobuf import api_pb2
kid = args[0]
out["outside_network"] = None
def signed(body, api="Encrypt", key=c):
    h = {"accept": "application/x-protobuf", "host": f"127.0.0.1:{port}",
         "date": email.utils.formatdate(usegmt=True), "x-kms-apiversion": "dkms-gcs-0.2",
         "x-kms-apiname": api, "x-kms-signaturemethod": "RSA_PKCS1_SHA_256",
         "x-kms-acccesskeyid": key._credential.get_access_key_id(),
         "content-type": "application/x-protobuf",
         "content-sha256": OU.hex_encode(OU.hash(body, "ACS3-RSA-SHA256")).upper()}
    h["authorization"] = key._credential.get_signature(U.get_string_to_sign("POST", "/", h, None))
    return h
def send(body, headers):
    r = requests.post(f"https://127.0.0.1:{port}/", data=body, headers=headers, verify=ca)
    if r.status_code == 200:
        return "ok"
    e = api_pb2.Error()
    e.ParseFromString(r.content)
    return [e.ErrorCode, r.status_code]
body = api_pb2.EncryptRequest(KeyId=kid, Plaintext=b"once").SerializeToString()
h = signed(body)
out["first"] = send(body, h)
out["again_at_once"] = send(body, h)  # the same request within the grace period: served
out["tampered_body"] = send(api_pb2.EncryptRequest(KeyId=kid, Plaintext=b"twice").SerializeToString(), h)
stale = dict(h, date="Mon, 07 Dec 2020 00:00:00 GMT")
out["stale_date"] = send(body, stale)
import time
time.sleep(float(args[1]))
out["replayed"] = send(body, h)
forged = dict(signed(body), **{"x-kms-acccesskeyid": "KAAP.00000000-0000-0000-0000-000000000000"})
out["unknown_key"] = send(body, forged)
'''


def test_refusals_tampering_replay_dates(dkms_python: Path, server: Server, kms: Any,
                                         app_key: Any) -> None:
    from kms.api.kms_instance_auth import REPLAY_GRACE

    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    out = _run(dkms_python, server, app_key, REFUSALS, kid, str(REPLAY_GRACE + 0.5))
    assert out["first"] == "ok" and out["again_at_once"] == "ok"
    assert out["tampered_body"] == ["InvalidParam", 400]
    assert out["stale_date"] == ["InvalidParam", 400]
    assert out["replayed"] == ["InvalidParam", 400]
    assert out["unknown_key"] == ["Unauthorized", 401]


ONE_CALL = r'''
out["encrypt"] = code_of(lambda: c.encrypt(m.EncryptRequest(key_id=args[0], plaintext=b"x")))
out["secret"] = code_of(lambda: c.get_secret_value(m.GetSecretValueRequest(secret_name=args[1])))
'''


def test_access_point_rules_network_role_revoked_expired(
        dkms_python: Path, server: Server, kms: Any, tmp_path: Path) -> None:
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    sm = server.client(server.creds["admin"], service="secretsmanager")
    sm.create_secret(Name="rules/db", SecretString="v")

    far = _aap(server, tmp_path / "far", "far-away", "CryptoServiceKeyUser", ["key/*"],
               "10.0.0.0/8")
    out = _run(dkms_python, server, far, ONE_CALL, kid, "rules/db")
    assert out["encrypt"] == ["Forbidden.NoPermission", 403]  # outside the network rule

    secrets_only = _aap(server, tmp_path / "so", "secrets-only", "SecretUser",
                        ["secret/rules/*"], "127.0.0.0/8")
    out = _run(dkms_python, server, secrets_only, ONE_CALL, kid, "rules/db")
    # The role does not cover keys: as if the key did not exist (nothing said about which do).
    assert out["encrypt"] == ["Forbidden.KeyNotFound", 404]
    assert out["secret"] is None  # ...but does this secret

    user = _aap(server, tmp_path / "rv", "revocable", "CryptoServiceKeyUser", ["key/*"],
                "127.0.0.1/32")
    assert _run(dkms_python, server, user, ONE_CALL, kid, "rules/db")["encrypt"] is None
    subprocess.run([str(HSMPOOL), "--config", str(server.config), "aap", "revoke", user[0]],
                   check=True, capture_output=True, timeout=60)
    time.sleep(0.1)  # servers notice a revocation within 50 ms
    out = _run(dkms_python, server, user, ONE_CALL, kid, "rules/db")
    assert out["encrypt"] == ["Unauthorized", 401]

    expiring = _aap(server, tmp_path / "ex", "expiring", "CryptoServiceKeyUser", ["key/*"],
                    "127.0.0.1/32")
    db = connect(config_database(server.config))
    with db:  # its validity ended a minute ago (a clock cannot be moved on demand)
        db.execute("UPDATE client_keys SET not_after = ? WHERE client_key_id = ?",
                   (time.time() - 60, expiring[0]))
    db.close()
    time.sleep(0.1)
    out = _run(dkms_python, server, expiring, ONE_CALL, kid, "rules/db")
    assert out["encrypt"] == ["Unauthorized", 401]
    listed = json.loads(subprocess.run(
        [str(HSMPOOL), "--config", str(server.config), "aap", "list", "--instance", "srv",
         "--json"], check=True, capture_output=True, text=True, timeout=60).stdout)
    states = {k["ClientKeyId"]: k["State"] for p in listed["AccessPoints"]
              for k in p["ClientKeys"]}
    assert states[user[0]] == "revoked" and states[expiring[0]] == "expired"
    assert states[far[0]] == "valid"
