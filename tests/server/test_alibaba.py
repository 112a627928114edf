"""The Alibaba Cloud KMS OpenAPI front end (kms/api/alibaba.py) with the unmodified
``alibabacloud-kms20160120`` SDK (in its own virtual environment: its pins conflict with
boto3's), ACS3-HMAC-SHA256 and v1 HMAC-SHA1 signatures, against the session's real server;
the same keys and secrets through boto3."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Final

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


def test_a_key_made_through_alibaba_serves_boto3(ali_python: Path, server: Server,
                                                 kms: Any) -> None:
    """The other way round: keys made with the Alibaba SDK (SM4, and SM2 for signing) are
    described, used and checked by boto3, and what boto3 made is opened and verified
    through the Alibaba SDK."""
    from hsmpool.gm import SM2PublicKey

    made = _run(ali_python, server, r'''
sm4 = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_SM4")).body.key_metadata
sm2 = c.create_key(m.CreateKeyRequest(key_spec="EC_SM2", key_usage="SIGN/VERIFY")).body.key_metadata
vid = c.list_key_versions(m.ListKeyVersionsRequest(key_id=sm2.key_id)).body.key_versions.key_version[0].key_version_id
out["ids"] = [sm4.key_id, sm2.key_id, vid]
''')
    sm4_id, sm2_id, version = made["ids"]
    assert kms.describe_key(KeyId=sm4_id)["KeyMetadata"]["KeySpec"] == "SM4"
    meta = kms.describe_key(KeyId=sm2_id)["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"]) == ("SM2", "SIGN_VERIFY")
    blob = kms.encrypt(KeyId=sm4_id, Plaintext=b"from boto3 under an alibaba key",
                       EncryptionAlgorithm="SM4_GCM")["CiphertextBlob"]
    msg = b"signed by boto3, verified through alibaba"
    sig = kms.sign(KeyId=sm2_id, Message=msg, MessageType="RAW",
                   SigningAlgorithm="SM2DSA")["Signature"]
    public = kms.get_public_key(KeyId=sm2_id)["PublicKey"]
    e = SM2PublicKey.from_der(public).message_digest(msg)
    e_other = SM2PublicKey.from_der(public).message_digest(msg + b"!")
    out = _run(ali_python, server, r'''
blob, sm2_id, vid, sig, e, e_other = args
d = c.decrypt(m.DecryptRequest(ciphertext_blob=blob)).body
out["plain"] = [base64.b64decode(d.plaintext).decode(), d.key_id]
out["verified"] = [c.asymmetric_verify(m.AsymmetricVerifyRequest(
    key_id=sm2_id, key_version_id=vid, algorithm="SM2DSA", digest=digest, value=sig)).body.value
    for digest in (e, e_other)]
out["alibaba_sig"] = c.asymmetric_sign(m.AsymmetricSignRequest(
    key_id=sm2_id, key_version_id=vid, algorithm="SM2DSA", digest=e)).body.value
''', base64.b64encode(blob).decode(), sm2_id, version,
               *(base64.b64encode(x).decode() for x in (sig, e, e_other)))
    assert out["plain"] == ["from boto3 under an alibaba key", sm4_id]
    assert out["verified"] == [True, False]
    assert kms.verify(KeyId=sm2_id, Message=msg, MessageType="RAW", SigningAlgorithm="SM2DSA",
                      Signature=base64.b64decode(out["alibaba_sig"]))["SignatureValid"]


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
out["bad_secret"] = code_of(lambda: c.list_keys(m.ListKeysRequest()))
'''


def test_refusals(ali_python: Path, server: Server) -> None:
    out = _run(ali_python, server, REFUSALS, secret="wrong-secret")
    assert out["bad_secret"] == ["SignatureDoesNotMatch", 400]
    baseline = _run(ali_python, server, REFUSALS)  # the right secret: served
    assert baseline["bad_secret"] is None
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


def test_a_request_changed_after_signing_is_refused(ali_python: Path, server: Server) -> None:
    """The SDK signs, then its request is changed (a parameter, as a man in the middle
    would): refused, and nothing runs (the key is not disabled)."""
    out = _run(ali_python, server, r'''
import alibabacloud_tea_openapi.client as oc
k = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_AES_256")).body.key_metadata
other = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_AES_256")).body.key_metadata
real = oc.Utils.get_authorization
def tampered(request, *a):
    auth = real(request, *a)
    request.query["KeyId"] = other.key_id  # signed for k, sent for other
    return auth
oc.Utils.get_authorization = staticmethod(tampered)
out["tampered"] = code_of(lambda: c.disable_key(m.DisableKeyRequest(key_id=k.key_id)))
oc.Utils.get_authorization = staticmethod(real)
out["states"] = [c.describe_key(m.DescribeKeyRequest(key_id=x.key_id)).body.key_metadata.key_state
                 for x in (k, other)]
''')
    assert out["tampered"] == ["SignatureDoesNotMatch", 400]
    assert out["states"] == ["Enabled", "Enabled"]


ASYM_SCRIPT = r"""
res = {}
for spec, algs in (("RSA_2048", ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256")),
                   ("EC_P256", ("ECDSA_SHA_256",))):
    k = c.create_key(m.CreateKeyRequest(key_spec=spec, key_usage="SIGN/VERIFY")).body.key_metadata
    vid = c.list_key_versions(m.ListKeyVersionsRequest(key_id=k.key_id)).body.key_versions.key_version[0].key_version_id
    pem = c.get_public_key(m.GetPublicKeyRequest(key_id=k.key_id, key_version_id=vid)).body.public_key
    for alg in algs:
        sig = c.asymmetric_sign(m.AsymmetricSignRequest(key_id=k.key_id, key_version_id=vid, algorithm=alg, digest=args[0])).body.value
        ok = c.asymmetric_verify(m.AsymmetricVerifyRequest(key_id=k.key_id, key_version_id=vid, algorithm=alg, digest=args[0], value=sig)).body.value
        bad = c.asymmetric_verify(m.AsymmetricVerifyRequest(key_id=k.key_id, key_version_id=vid, algorithm=alg, digest=args[1], value=sig)).body.value
        res[alg] = [pem, sig, ok, bad]
e = c.create_key(m.CreateKeyRequest(key_spec="RSA_2048", key_usage="ENCRYPT/DECRYPT")).body.key_metadata
evid = c.list_key_versions(m.ListKeyVersionsRequest(key_id=e.key_id)).body.key_versions.key_version[0].key_version_id
ct = c.asymmetric_encrypt(m.AsymmetricEncryptRequest(key_id=e.key_id, key_version_id=evid, algorithm="RSAES_OAEP_SHA_256", plaintext=b64(b"rsa secret"))).body.ciphertext_blob
res["rsa_decrypt"] = base64.b64decode(c.asymmetric_decrypt(m.AsymmetricDecryptRequest(key_id=e.key_id, key_version_id=evid, algorithm="RSAES_OAEP_SHA_256", ciphertext_blob=ct)).body.plaintext).decode()
res["wrong_version"] = code_of(lambda: c.asymmetric_encrypt(m.AsymmetricEncryptRequest(key_id=e.key_id, key_version_id="0" * 32, algorithm="RSAES_OAEP_SHA_256", plaintext=b64(b"x"))))
k = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_AES_256")).body.key_metadata
c.tag_resource(m.TagResourceRequest(key_id=k.key_id, tags=json.dumps([{"TagKey": "team", "TagValue": "blue"}])))
res["tags"] = [(t.tag_key, t.tag_value) for t in c.list_resource_tags(m.ListResourceTagsRequest(key_id=k.key_id)).body.tags.tag]
v2 = c.create_key_version(m.CreateKeyVersionRequest(key_id=k.key_id)).body.key_version.key_version_id
res["versions"] = len(c.list_key_versions(m.ListKeyVersionsRequest(key_id=k.key_id)).body.key_versions.key_version)
c.update_rotation_policy(m.UpdateRotationPolicyRequest(key_id=k.key_id, enable_automatic_rotation=True, rotation_interval="7d"))
res["rotation"] = c.describe_key(m.DescribeKeyRequest(key_id=k.key_id)).body.key_metadata.rotation_interval
res["bad_interval"] = code_of(lambda: c.update_rotation_policy(m.UpdateRotationPolicyRequest(key_id=k.key_id, enable_automatic_rotation=True, rotation_interval="6d")))
res["described"] = c.describe_key_version(m.DescribeKeyVersionRequest(key_id=k.key_id, key_version_id=v2)).body.key_version.key_version_id == v2
out.update(res)
"""

SM2_KEY = r"""
k = c.create_key(m.CreateKeyRequest(key_spec="EC_SM2", key_usage="SIGN/VERIFY")).body.key_metadata
vid = c.list_key_versions(m.ListKeyVersionsRequest(key_id=k.key_id)).body.key_versions.key_version[0].key_version_id
out["key"] = [k.key_id, vid, c.get_public_key(m.GetPublicKeyRequest(key_id=k.key_id, key_version_id=vid)).body.public_key]
"""

SM2_SIGN = r"""
out["sig"] = c.asymmetric_sign(m.AsymmetricSignRequest(key_id=args[0], key_version_id=args[1], algorithm="SM2DSA", digest=args[2])).body.value
"""


def test_asymmetric_keys_cross_checked(ali_python: Path, server: Server,
                                       tmp_path: Path) -> None:
    import hashlib

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    from hsmpool.gm import SM2PublicKey
    from tests.kms.test_service import der_to_raw, gmssl_verifier

    msg = b"signed through the Alibaba SDK"
    digest = base64.b64encode(hashlib.sha256(msg).digest()).decode()
    other = base64.b64encode(hashlib.sha256(msg + b"!").digest()).decode()
    out = _run(ali_python, server, ASYM_SCRIPT, digest, other)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    for alg in ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256", "ECDSA_SHA_256"):
        pem, sig, ok, bad = out[alg]
        assert ok is True and bad is False, alg
        pub = serialization.load_pem_public_key(pem.encode())
        raw = base64.b64decode(sig)
        if alg.startswith("RSA_"):  # made by the token, checked by cryptography
            assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
            pad = pss if alg == "RSA_PSS_SHA_256" else padding.PKCS1v15()
            pub.verify(raw, msg, pad, hashes.SHA256())
            with pytest.raises(InvalidSignature):
                pub.verify(raw, msg + b"!", pad, hashes.SHA256())
        else:
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            pub.verify(raw, msg, ec.ECDSA(hashes.SHA256()))
    # PSS and PKCS#1 v1.5 are not confused: each fails the other's check
    with pytest.raises(InvalidSignature):
        pub_rsa = serialization.load_pem_public_key(out["RSA_PSS_SHA_256"][0].encode())
        assert isinstance(pub_rsa, rsa.RSAPublicKey)
        pub_rsa.verify(base64.b64decode(out["RSA_PSS_SHA_256"][1]), msg, padding.PKCS1v15(),
                       hashes.SHA256())
    assert out["rsa_decrypt"] == "rsa secret"
    assert out["wrong_version"][0] == "Forbidden.KeyNotFound"
    assert out["tags"] == [["team", "blue"]]
    assert out["versions"] == 2 and out["described"]
    assert out["rotation"] == f"{7 * 86400}s" and out["bad_interval"][0] == "InvalidParameter"
    # SM2DSA over SM3(Z || M) with the default user id, verified by gmssl.
    key_id, version, pem = _run(ali_python, server, SM2_KEY)["key"]
    der = base64.b64decode("".join(line for line in pem.splitlines()
                                   if line and not line.startswith("-----")))
    e = SM2PublicKey.from_der(der).message_digest(msg)
    sig = base64.b64decode(_run(ali_python, server, SM2_SIGN, key_id, version,
                                base64.b64encode(e).decode())["sig"])
    verifier = gmssl_verifier(der)
    assert verifier.verify_with_sm3(der_to_raw(sig).hex(), msg)
    assert not verifier.verify_with_sm3(der_to_raw(sig).hex(), msg + b"!")
    # ... and by OpenSSL, which computes Z itself (the default id given as distid)
    for tool in ("dgst", "pkeyutl"):
        assert _openssl_sm2_verifies(tmp_path, tool, pem, sig, msg), tool
        assert not _openssl_sm2_verifies(tmp_path, tool, pem, sig, msg + b"!"), tool


SM2_DEFAULT_ID: Final = "1234567812345678"


def _openssl_sm2_verifies(tmp: Path, tool: str, pem: str, sig: bytes, msg: bytes) -> bool:
    """Whether the ``openssl`` command accepts an SM2DSA signature (DER) of ``msg`` with
    SM3 and the default user id, by ``openssl dgst`` or ``openssl pkeyutl``; anything but
    a plain yes or no (a key or signature it cannot read) fails the test."""
    assert shutil.which("openssl"), "the openssl command (scripts/setup.sh installs it)"
    (tmp / "pub.pem").write_text(pem)
    (tmp / "sig.der").write_bytes(sig)
    (tmp / "msg.bin").write_bytes(msg)
    if tool == "dgst":
        argv = ["openssl", "dgst", "-sm3", "-verify", "pub.pem", "-signature", "sig.der",
                "-sigopt", f"distid:{SM2_DEFAULT_ID}", "msg.bin"]
        yes, no = "Verified OK", "Verification failure"
    else:
        argv = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin",
                "-digest", "sm3", "-in", "msg.bin", "-sigfile", "sig.der", "-pkeyopt",
                f"distid:{SM2_DEFAULT_ID}"]
        yes, no = "Signature Verified Successfully", "Signature Verification Failure"
    done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=30)
    said = done.stdout + done.stderr
    if done.returncode == 0 and yes in said:
        return True
    assert done.returncode == 1 and no in said, said
    return False


EXPORT_SCRIPT = r"""
k = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_AES_256")).body.key_metadata
g = c.generate_and_export_data_key(m.GenerateAndExportDataKeyRequest(
    key_id=k.key_id, key_spec="AES_256", public_key_blob=args[0], wrapping_key_spec="RSA_2048",
    wrapping_algorithm="RSAES_OAEP_SHA_256", encryption_context={"use": "export"})).body
plain = c.decrypt(m.DecryptRequest(ciphertext_blob=g.ciphertext_blob, encryption_context={"use": "export"})).body.plaintext
e = c.export_data_key(m.ExportDataKeyRequest(
    ciphertext_blob=g.ciphertext_blob, public_key_blob=args[1], wrapping_key_spec="EC_SM2",
    wrapping_algorithm="SM2PKE", encryption_context={"use": "export"})).body
out["rsa"] = g.exported_data_key
out["sm2"] = e.exported_data_key
out["plain"] = plain
out["mismatch"] = code_of(lambda: c.export_data_key(m.ExportDataKeyRequest(
    ciphertext_blob=g.ciphertext_blob, public_key_blob=args[1], wrapping_key_spec="RSA_2048",
    wrapping_algorithm="RSAES_OAEP_SHA_256", encryption_context={"use": "export"})))
"""


def test_data_keys_exported_under_a_callers_public_key(ali_python: Path,
                                                       server: Server) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from hsmpool.gm import SM2PrivateKey

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pub = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    sm2_key = SM2PrivateKey.generate()
    out = _run(ali_python, server, EXPORT_SCRIPT, base64.b64encode(rsa_pub).decode(),
               base64.b64encode(sm2_key.public_key().to_der()).decode())
    plain = base64.b64decode(out["plain"])
    assert len(plain) == 32
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    assert rsa_key.decrypt(base64.b64decode(out["rsa"]), oaep) == plain
    assert sm2_key.decrypt(base64.b64decode(out["sm2"])) == plain
    assert out["mismatch"][0] == "InvalidParameter"  # an SM2 key is not an RSA key


# --- bring your own key -------------------------------------------------------------------

BYOK_PARAMETERS = r'''
spec, wrap_spec, wrap_alg = args
k = c.create_key(m.CreateKeyRequest(key_spec=spec, origin="EXTERNAL")).body.key_metadata
other = c.create_key(m.CreateKeyRequest(key_spec=spec, origin="EXTERNAL")).body.key_metadata
plain = c.create_key(m.CreateKeyRequest(key_spec=spec)).body.key_metadata
out["meta"] = [k.origin, k.key_state]
out["encrypt_before_import"] = code_of(lambda: c.encrypt(m.EncryptRequest(key_id=k.key_id, plaintext=b64(b"x"))))
def params(key_id, spec=wrap_spec, alg=wrap_alg):
    return c.get_parameters_for_import(m.GetParametersForImportRequest(
        key_id=key_id, wrapping_key_spec=spec, wrapping_algorithm=alg)).body
p = params(k.arn)  # an ARN names the key too
out["params"] = [p.key_id, p.import_token, p.public_key, p.token_expire_time]
out["foreign_token"] = params(other.key_id).import_token
out["not_external"] = code_of(lambda: params(plain.key_id))
out["pkcs1"] = code_of(lambda: params(k.key_id, "RSA_2048", "RSAES_PKCS1_V1_5"))
out["mismatch"] = code_of(lambda: params(k.key_id, "EC_SM2", "RSAES_OAEP_SHA_256"))
'''

BYOK_IMPORT = r'''
kid, token, good, wrong_size, garbage, foreign = args
def imp(material, token=token, expire=None):
    c.import_key_material(m.ImportKeyMaterialRequest(
        key_id=kid, import_token=token, encrypted_key_material=material,
        key_material_expire_unix=expire))
out["foreign_token"] = code_of(lambda: imp(good, foreign))
out["unknown_token"] = code_of(lambda: imp(good, b64(bytes(32))))
out["garbage"] = code_of(lambda: imp(garbage))
out["wrong_size"] = code_of(lambda: imp(wrong_size))
out["negative_expiry"] = code_of(lambda: imp(good, expire=-5))
out["state_after_refusals"] = c.describe_key(m.DescribeKeyRequest(key_id=kid)).body.key_metadata.key_state
imp(good, expire=0)
out["state"] = c.describe_key(m.DescribeKeyRequest(key_id=kid)).body.key_metadata.key_state
out["token_reused"] = code_of(lambda: imp(good))
e = c.encrypt(m.EncryptRequest(key_id=kid, plaintext=b64(b"imported through alibaba"),
                               encryption_context={"byok": "1"})).body
out["blob"] = e.ciphertext_blob
out["decrypted"] = base64.b64decode(c.decrypt(m.DecryptRequest(
    ciphertext_blob=e.ciphertext_blob, encryption_context={"byok": "1"})).body.plaintext).decode()
'''


def _wrap_for_import(public_der: bytes, algorithm: str, material: bytes) -> bytes:
    """The customer's side of BYOK: the material under the downloaded wrapping key, with
    ``cryptography`` (RSA-OAEP) or ``gmssl`` (SM2PKE, C1C3C2), not with hsmpool's code."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from tests.kms.test_service import gmssl_verifier

    if algorithm == "SM2PKE":
        return b"\x04" + gmssl_verifier(public_der).encrypt(material)
    pub = serialization.load_der_public_key(public_der)
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    h = hashes.SHA256() if algorithm == "RSAES_OAEP_SHA_256" else hashes.SHA1()
    return pub.encrypt(material, padding.OAEP(padding.MGF1(h), h, None))


def _open_with_material(blob: bytes, material: bytes, context: dict[str, str]) -> bytes:
    """Open an Encrypt ciphertext with the customer's own copy of the imported key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from hsmpool.gm import SM4GCM
    from kms import ciphertext as ctf

    aad = blob[:ctf.HEADER_LEN] + ctf.canonical_context(context)
    body = blob[ctf.HEADER_LEN:]
    nonce, sealed = body[:ctf.NONCE_LEN], body[ctf.NONCE_LEN:]
    aead = AESGCM(material) if len(material) == 32 else SM4GCM(material)
    return aead.decrypt(nonce, sealed, aad)


@pytest.mark.parametrize(("spec", "wrap_spec", "wrap_alg", "size"), [
    ("Aliyun_AES_256", "RSA_2048", "RSAES_OAEP_SHA_256", 32),
    ("Aliyun_SM4", "EC_SM2", "SM2PKE", 16),
])
def test_bring_your_own_key(ali_python: Path, server: Server, spec: str, wrap_spec: str,
                            wrap_alg: str, size: int) -> None:
    """CreateKey Origin=EXTERNAL, GetParametersForImport, the material wrapped here,
    ImportKeyMaterial; then the key encrypts with exactly that material. Refusals on the
    way, each with its Alibaba code, none of them a 500 and none changing the key."""
    import os
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import serialization

    from hsmpool.gm import SM2PublicKey

    first = _run(ali_python, server, BYOK_PARAMETERS, spec, wrap_spec, wrap_alg)
    assert first["meta"] == ["EXTERNAL", "PendingImport"]
    assert first["encrypt_before_import"] == ["Rejected.UnexpectedState", 400]
    assert first["not_external"] == ["UnsupportedOperation", 400]
    assert first["pkcs1"] == ["UnsupportedOperation", 400]
    assert first["mismatch"] == ["InvalidParameter", 400]
    key_id, token, public_b64, expires = first["params"]
    public = base64.b64decode(public_b64)
    # a DER SubjectPublicKeyInfo (cryptography knows no SM2 curve)
    (SM2PublicKey.from_der if wrap_spec == "EC_SM2" else serialization.load_der_public_key)(
        public)
    assert len(base64.b64decode(token)) == 32
    left = (datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            - datetime.now(UTC)).total_seconds()
    assert 86400 - 120 < left <= 86400  # 24 hours, as Alibaba's
    material = os.urandom(size)
    wrapped = {name: base64.b64encode(data).decode() for name, data in (
        ("good", _wrap_for_import(public, wrap_alg, material)),
        ("wrong_size", _wrap_for_import(public, wrap_alg, os.urandom(size + 8))),
        ("garbage", os.urandom(256 if wrap_spec == "RSA_2048" else 160)))}
    out = _run(ali_python, server, BYOK_IMPORT, key_id, token, wrapped["good"],
               wrapped["wrong_size"], wrapped["garbage"], first["foreign_token"])
    assert out["foreign_token"] == ["Rejected.InvalidImportToken", 400]
    assert out["unknown_token"] == ["Rejected.InvalidImportToken", 400]
    assert out["garbage"] == ["Rejected.InvalidCiphertext", 400]
    assert out["wrong_size"] == ["Rejected.IncorrectKeyMaterial", 400]
    assert out["negative_expiry"] == ["InvalidParameter", 400]
    assert out["state_after_refusals"] == "PendingImport"
    assert out["state"] == "Enabled"
    assert out["token_reused"] == ["Rejected.InvalidImportToken", 400]  # consumed
    assert out["decrypted"] == "imported through alibaba"
    assert _open_with_material(base64.b64decode(out["blob"]), material, {"byok": "1"}) \
        == b"imported through alibaba"


def test_expired_import_token(ali_python: Path, token_dir: Path, tmp_path: Path) -> None:
    """A token past its TokenExpireTime (a server whose tokens live 2 s) is refused with
    Rejected.ImportTokenExpired, before the material is looked at."""
    from tests.server.conftest import create_credential, run_server, write_server_config

    config = write_server_config(tmp_path, token_dir, {"aliexp": [4]})
    config.write_text(config.read_text() + "import_token_ttl = 2\n")  # [kms] is last
    cred = create_credential(config, "aliexp", "admin")
    with run_server(config) as srv:
        srv.creds["admin"] = cred
        out = _run(ali_python, srv, r'''
import time
k = c.create_key(m.CreateKeyRequest(key_spec="Aliyun_SM4", origin="EXTERNAL")).body.key_metadata
p = c.get_parameters_for_import(m.GetParametersForImportRequest(
    key_id=k.key_id, wrapping_key_spec="EC_SM2", wrapping_algorithm="SM2PKE")).body
time.sleep(3)
out["expired"] = code_of(lambda: c.import_key_material(m.ImportKeyMaterialRequest(
    key_id=k.key_id, import_token=p.import_token, encrypted_key_material=b64(b"\x04" * 113))))
out["state"] = c.describe_key(m.DescribeKeyRequest(key_id=k.key_id)).body.key_metadata.key_state
''')
    assert out["expired"] == ["Rejected.ImportTokenExpired", 400]
    assert out["state"] == "PendingImport"


def test_benchmark_acs3_requests_are_valid_once(server: Server, kms: Any) -> None:
    """benchmarks.server's ACS3 request generator (the "Alibaba Encrypt (ACS3)" row): each
    request is served, and refused when sent again (its nonce), so a run never replays."""
    import json

    from benchmarks.server import Target, raw_call, sign_acs3_requests

    cred = server.creds["admin"]
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    target = Target("alibaba", server.port, cred.access_key_id, cred.secret, key_id, [])
    reqs = sign_acs3_requests("Encrypt", target, server.port, 4)
    assert len({r.split(b"x-acs-signature-nonce: ")[1][:32] for r in reqs}) == 4
    for r in reqs:
        status, body = raw_call(server.port, r)
        assert status == 200, body
        blob = base64.b64decode(json.loads(body)["CiphertextBlob"])
        assert len(kms.decrypt(CiphertextBlob=blob)["Plaintext"]) == 32
    status, body = raw_call(server.port, reqs[0])
    assert (status, json.loads(body)["Code"]) == (400, "SignatureNonceUsed")
    wrong = Target("alibaba", server.port, cred.access_key_id, "not-the-secret", key_id, [])
    status, body = raw_call(server.port, sign_acs3_requests("Encrypt", wrong, server.port,
                                                            1)[0])
    assert (status, json.loads(body)["Code"]) == (400, "SignatureDoesNotMatch")


def test_readme_lists_every_action() -> None:
    """README's table of Alibaba actions is OPERATIONS, no more and no less."""
    import re

    from kms.api.alibaba import OPERATIONS

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text[text.index("| what | actions |"):]
    table = table[:table.index("\n\n")]
    named = {n for row in table.splitlines()[2:] for n in
             re.findall(r"\b[A-Z][A-Za-z]+\b", re.sub(r"`[^`]*`|\([^)]*\)", "", row))}
    assert named == set(OPERATIONS)


@pytest.mark.parametrize("action, params, code", [
    # JSON nested past any parser's depth: once the standard parser's RecursionError, a 500
    ("Encrypt", {"Plaintext": "aGk=", "EncryptionContext": "[" * 1100 + "]" * 1100},
     "InvalidParameter"),
    ("TagResource", {"Tags": '[{"a":' * 520 + "1" + "}]" * 520}, "InvalidParameter"),
    ("UntagResource", {"TagKeys": "[" * 2000 + "]" * 2000}, "InvalidParameter"),
    # lone surrogates: once a UnicodeEncodeError in the ciphertext's context, a 500
    ("Encrypt", {"Plaintext": "aGk=", "EncryptionContext": '{"\\ud800": "x"}'},
     "InvalidParameter"),
    ("Encrypt", {"Plaintext": "aGk=", "EncryptionContext": '{"k": "\\udc00"}'},
     "InvalidParameter"),
    ("TagResource", {"Tags": '[{"TagKey": "\\ud83d", "TagValue": "v"}]'}, "InvalidParameter"),
    # integers past 64 bits: once echoed into a JSON answer orjson cannot write, a 500
    ("ListKeys", {"PageNumber": str(2**64)}, "InvalidParameter"),
    ("ListAliases", {"PageNumber": "9" * 30}, "InvalidParameter"),
    ("ListKeys", {"PageSize": "1_0"}, "InvalidParameter"),
    ("ListKeys", {"PageSize": "\u0661\u0660"}, "InvalidParameter"),  # Arabic-Indic "10"
])
def test_malformed_parameters_are_refused_not_500(server: Server, kms: Any, action: str,
                                                  params: dict[str, str], code: str) -> None:
    """Found by ``benchmarks.fuzz``: parameters that made the Alibaba front end fail with a
    500 (and a traceback in the log) are refused as the invalid parameters they are."""
    import json

    from benchmarks.server import raw_call, sign_acs3

    cred = server.creds["admin"]
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    req = sign_acs3(cred.access_key_id, cred.secret, server.port, action,
                    [{"KeyId": key_id, **params}])[0]
    status, body = raw_call(server.port, req)
    assert (status, json.loads(body)["Code"]) == (400, code), body
    assert kms.list_resource_tags(KeyId=key_id)["Tags"] == []  # nothing was tagged
    ok = sign_acs3(cred.access_key_id, cred.secret, server.port, "ListKeys",
                   [{"PageNumber": "1", "PageSize": str(2**31)}])[0]  # a Long: in range
    status, body = raw_call(server.port, ok)
    assert (status, json.loads(body)["Code"]) == (400, "InvalidParameter")  # (1..100)


def test_non_ascii_signatures_are_refused_not_500(server: Server) -> None:
    """A signature or body hash with non-ASCII characters (latin-1 bytes in a header, or
    percent-escapes in a v1 query) is a signature that does not match: constant-time string
    comparison raises TypeError for such text, which was a 500 (found by benchmarks.fuzz)."""
    import json

    from benchmarks.server import raw_call, sign_acs3

    cred = server.creds["admin"]
    req = sign_acs3(cred.access_key_id, cred.secret, server.port, "ListKeys", [{}])[0]
    head, _, rest = req.partition(b"\r\n\r\n")
    bad_sig = head[:head.index(b"Signature=") + 10] + b"\xe9" * 64 + head[head.index(
        b"\r\n", head.index(b"Signature=")):]
    sha = head.index(b"x-acs-content-sha256: ") + 22
    bad_sha = head[:sha] + b"\xe9" * 64 + head[sha + 64:]
    v1 = ("POST /?Action=ListKeys&Version=2016-01-20&AccessKeyId=" + cred.access_key_id
          + "&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&SignatureNonce=n1"
          "&Timestamp=2026-01-01T00:00:00Z&Signature=%C3%A9%C3%BF HTTP/1.1\r\n"
          f"Host: 127.0.0.1:{server.port}\r\nContent-Length: 0\r\n\r\n").encode()
    for raw, code in ((bad_sig + b"\r\n\r\n" + rest, "SignatureDoesNotMatch"),
                      (bad_sha + b"\r\n\r\n" + rest, "ContentSHA256NotMatched"),
                      (v1, "SignatureDoesNotMatch")):
        status, body = raw_call(server.port, raw)
        assert (status, json.loads(body)["Code"]) == (400, code), body
