"""Unmodified boto3 ``secretsmanager`` and ``aws-secretsmanager-caching`` against a real
``hsmpool serve`` (the session's server): every operation of the Secrets Manager front end,
its errors as boto3 knows them, and tenant isolation."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from aws_secretsmanager_caching import SecretCache, SecretCacheConfig

from tests.server.conftest import REGION, Server, raises_code


@pytest.fixture(scope="module")
def sm(server: Server) -> Any:
    return server.client(server.creds["admin"], service="secretsmanager")


@pytest.fixture(scope="module")
def sm2(server: Server) -> Any:
    return server.client(server.creds["admin2"], service="secretsmanager")


def _name(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def test_lifecycle_of_a_secret(sm: Any) -> None:
    name = _name("app/db")
    created = sm.create_secret(Name=name, SecretString='{"password": "one"}',
                               Description="the app's database",
                               Tags=[{"Key": "team", "Value": "blue"}])
    arn, v1 = created["ARN"], created["VersionId"]
    assert arn.startswith(f"arn:aws:secretsmanager:{REGION}:") and created["Name"] == name
    for sid in (name, arn, arn[:-7]):
        got = sm.get_secret_value(SecretId=sid)
        assert got["SecretString"] == '{"password": "one"}' and got["VersionId"] == v1
        assert got["VersionStages"] == ["AWSCURRENT"]
    v2 = sm.put_secret_value(SecretId=name, SecretString="two")["VersionId"]
    assert sm.get_secret_value(SecretId=name, VersionStage="AWSPREVIOUS")["VersionId"] == v1
    desc = sm.describe_secret(SecretId=arn)
    assert desc["VersionIdsToStages"] == {v1: ["AWSPREVIOUS"], v2: ["AWSCURRENT"]}
    assert desc["Description"] == "the app's database"
    assert desc["Tags"] == [{"Key": "team", "Value": "blue"}]
    versions = sm.list_secret_version_ids(SecretId=name)["Versions"]
    assert {v["VersionId"] for v in versions} == {v1, v2}
    sm.update_secret(SecretId=name, Description="renamed")
    v3 = sm.update_secret(SecretId=name, SecretString="three")["VersionId"]
    assert sm.get_secret_value(SecretId=name)["SecretString"] == "three"
    sm.update_secret_version_stage(SecretId=name, VersionStage="AWSCURRENT",
                                   MoveToVersionId=v1, RemoveFromVersionId=v3)
    assert sm.get_secret_value(SecretId=name)["SecretString"] == '{"password": "one"}'
    sm.tag_resource(SecretId=name, Tags=[{"Key": "env", "Value": "prod"}])
    sm.untag_resource(SecretId=name, TagKeys=["team"])
    assert sm.describe_secret(SecretId=name)["Tags"] == [{"Key": "env", "Value": "prod"}]
    deleted = sm.delete_secret(SecretId=name, RecoveryWindowInDays=7)
    assert deleted["DeletionDate"] is not None
    with raises_code(sm, "InvalidRequestException"):
        sm.get_secret_value(SecretId=name)
    sm.restore_secret(SecretId=name)
    assert sm.get_secret_value(SecretId=name)["VersionId"] == v1
    sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    with raises_code(sm, "ResourceNotFoundException"):
        sm.describe_secret(SecretId=name)


def test_binary_values_and_idempotent_tokens(sm: Any) -> None:
    name = _name("bin")
    token = uuid.uuid4().hex
    blob = os.urandom(4096)
    first = sm.create_secret(Name=name, SecretBinary=blob, ClientRequestToken=token)
    again = sm.create_secret(Name=name, SecretBinary=blob, ClientRequestToken=token)
    assert first["VersionId"] == again["VersionId"] == token
    with raises_code(sm, "ResourceExistsException"):
        sm.create_secret(Name=name, SecretBinary=b"other", ClientRequestToken=token)
    assert sm.get_secret_value(SecretId=name)["SecretBinary"] == blob
    with raises_code(sm, "InvalidParameterException"):
        sm.put_secret_value(SecretId=name, SecretBinary=b"x" * 65537)
    with raises_code(sm, "ResourceExistsException"):
        sm.put_secret_value(SecretId=name, SecretBinary=b"new", ClientRequestToken=token)


def test_rotation_random_passwords_and_policies(sm: Any) -> None:
    name = _name("rot")
    sm.create_secret(Name=name, SecretString=json.dumps({"username": "u", "password": "p"}))
    out = sm.rotate_secret(SecretId=name, RotationLambdaARN="arn:hsmpool:rotator:generic",
                           RotationRules={"ScheduleExpression": "rate(4 hours)"})
    value = json.loads(sm.get_secret_value(SecretId=name)["SecretString"])
    assert value["username"] == "u" and value["password"] != "p"
    desc = sm.describe_secret(SecretId=name)
    assert desc["RotationEnabled"] and desc["VersionIdsToStages"][out["VersionId"]] == \
        ["AWSCURRENT"]
    assert desc["RotationRules"]["ScheduleExpression"] == "rate(4 hours)"
    assert "NextRotationDate" in desc and "LastRotatedDate" in desc
    sm.cancel_rotate_secret(SecretId=name)
    assert not sm.describe_secret(SecretId=name)["RotationEnabled"]
    with raises_code(sm, "InvalidParameterException"):
        sm.rotate_secret(SecretId=name, RotationLambdaARN="arn:hsmpool:rotator:nope")
    pw = sm.get_random_password(PasswordLength=40, ExcludePunctuation=True)["RandomPassword"]
    assert len(pw) == 40 and pw.isalnum()
    with raises_code(sm, "InvalidParameterException"):
        sm.get_random_password(PasswordLength=4097)
    policy = json.dumps({"Version": "2012-10-17", "Statement": []})
    sm.put_resource_policy(SecretId=name, ResourcePolicy=policy)
    assert sm.get_resource_policy(SecretId=name)["ResourcePolicy"] == policy
    sm.delete_resource_policy(SecretId=name)
    assert "ResourcePolicy" not in sm.get_resource_policy(SecretId=name)


def test_list_and_batch_get(sm: Any) -> None:
    prefix = _name("batch")
    names = [f"{prefix}/{i}" for i in range(5)]
    for i, n in enumerate(names):
        sm.create_secret(Name=n, SecretString=f"value-{i}")
    seen: list[str] = []
    kwargs: dict[str, Any] = {"MaxResults": 2, "Filters": [{"Key": "name", "Values": [prefix]}]}
    while True:
        page = sm.list_secrets(**kwargs)
        seen += [s["Name"] for s in page["SecretList"]]
        if "NextToken" not in page:
            break
        kwargs["NextToken"] = page["NextToken"]
    assert seen == names
    got = sm.batch_get_secret_value(SecretIdList=[names[0], names[3], "missing/secret"])
    assert sorted(v["SecretString"] for v in got["SecretValues"]) == ["value-0", "value-3"]
    assert got["Errors"][0]["SecretId"] == "missing/secret"
    assert got["Errors"][0]["ErrorCode"] == "ResourceNotFoundException"
    by_filter = sm.batch_get_secret_value(Filters=[{"Key": "name", "Values": [prefix]}])
    assert len(by_filter["SecretValues"]) == 5


def test_other_tenants_see_nothing(sm: Any, sm2: Any) -> None:
    name = _name("tenant")
    arn = sm.create_secret(Name=name, SecretString="ours")["ARN"]
    for sid in (name, arn):
        with raises_code(sm2, "ResourceNotFoundException"):
            sm2.get_secret_value(SecretId=sid)
        with raises_code(sm2, "ResourceNotFoundException"):
            sm2.put_secret_value(SecretId=sid, SecretString="theirs")
        with raises_code(sm2, "ResourceNotFoundException"):
            sm2.rotate_secret(SecretId=sid, RotationLambdaARN="arn:hsmpool:rotator:generic")
    listed = sm2.list_secrets(Filters=[{"Key": "name", "Values": [name]}])["SecretList"]
    assert listed == []
    assert sm.get_secret_value(SecretId=name)["SecretString"] == "ours"


def test_a_wrong_signature_is_refused(server: Server) -> None:
    import boto3

    cred = server.creds["admin"]
    bad = boto3.client("secretsmanager", endpoint_url=server.url, region_name=REGION,
                       aws_access_key_id=cred.access_key_id,
                       aws_secret_access_key=base64.b64encode(os.urandom(30)).decode())
    with raises_code(bad, "InvalidSignatureException"):
        bad.list_secrets()


def test_secret_cache_with_an_explicit_client(sm: Any) -> None:
    name = _name("cache")
    sm.create_secret(Name=name, SecretString="cached-value")
    cache = SecretCache(config=SecretCacheConfig(), client=sm)
    assert cache.get_secret_string(name) == "cached-value"
    assert cache.get_secret_string(name) == "cached-value"


def test_secret_cache_with_a_default_client_from_the_environment(server: Server,
                                                                 sm: Any) -> None:
    """A default boto3 client configured only by the environment
    (AWS_ENDPOINT_URL_SECRETS_MANAGER), in a fresh interpreter."""
    name = _name("envcache")
    sm.create_secret(Name=name, SecretString="from-env")
    cred = server.creds["admin"]
    env = {**os.environ, "AWS_ENDPOINT_URL_SECRETS_MANAGER": server.url,
           "AWS_ACCESS_KEY_ID": cred.access_key_id, "AWS_SECRET_ACCESS_KEY": cred.secret,
           "AWS_DEFAULT_REGION": REGION}
    code = ("import sys; from aws_secretsmanager_caching import SecretCache; "
            "print(SecretCache().get_secret_string(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "from-env"


def test_secret_values_never_reach_logs_audit_errors_or_metrics(server: Server,
                                                                sm: Any) -> None:
    marker = "MARKER" + uuid.uuid4().hex
    name = _name("hygiene")
    token = uuid.uuid4().hex
    sm.create_secret(Name=name, SecretString=marker, ClientRequestToken=token)
    sm.get_secret_value(SecretId=name)
    sm.put_secret_value(SecretId=name, SecretString=marker + "-2")
    sm.batch_get_secret_value(SecretIdList=[name])
    errors = []
    for call in (lambda: sm.create_secret(Name=name, SecretString=marker + "-3",
                                          ClientRequestToken=token),
                 lambda: sm.put_secret_value(SecretId=name, SecretString=marker + "-4",
                                             ClientRequestToken=token),
                 lambda: sm.put_secret_value(SecretId=name, SecretString=marker * 2000),
                 lambda: sm.get_secret_value(SecretId=marker)):
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - each must fail; its text is checked
            errors.append(str(exc))
    assert len(errors) == 4
    _, _, metrics = server.get("/metrics")
    audit = b"".join(p.read_bytes() for p in (server.config.parent / "audit").rglob("*")
                     if p.is_file())
    texts = {"errors": " ".join(errors[:3]), "metrics": metrics.decode(),
             "log": server.log_text(), "audit": audit.decode("utf-8", "replace")}
    assert "secretsmanager:GetSecretValue" in texts["audit"]
    for where, text in texts.items():
        assert marker not in text, where


def test_a_refused_create_makes_no_secret(sm: Any) -> None:
    """CreateSecret with replica regions (not supported) is refused, and leaves no secret
    behind: the refusal once came after the secret was made, so the error answer hid a
    change (seen while building ``benchmarks.fuzz``)."""
    name = _name("replica")
    with raises_code(sm, "InvalidParameterException"):
        sm.create_secret(Name=name, SecretString="v",
                         AddReplicaRegions=[{"Region": "eu-west-1"}])
    with raises_code(sm, "ResourceNotFoundException"):
        sm.describe_secret(SecretId=name)
    assert sm.create_secret(Name=name, SecretString="v")["Name"] == name  # the name is free


@pytest.mark.parametrize("filters", [[{"Key": ["name"], "Values": ["a"]}],
                                     [{"Key": {"a": 1}, "Values": ["a"]}], [{"Key": 5}],
                                     [["name"]]])
def test_malformed_filters_are_refused_not_500(server: Server, filters: Any) -> None:
    """ListSecrets with a filter Key that is not a string (a list once failed the set lookup
    as unhashable: a 500; found by benchmarks.fuzz). boto3 checks the types itself, so this
    is a signed request of our own."""
    from tests.server.conftest import raw_post, sign_headers

    cred = server.creds["admin"]
    body = json.dumps({"Filters": filters}).encode()
    headers = sign_headers(cred, server.port, "secretsmanager.ListSecrets", body,
                           service="secretsmanager")
    status, _, data = raw_post(server.port, body, headers)
    assert (status, json.loads(data)["__type"]) == (400, "InvalidParameterException"), data
