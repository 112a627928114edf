"""A NUL character in any string of a request - a top-level field, or a string inside a
list, a map or a structure (a tag's key or value, a filter's values) - is answered with a
client error, never a 500, by every operation of the AWS KMS and Secrets Manager front ends
of the session's server; and no description, tag, alias, grant name, policy or secret name
holding one is stored. (Encryption contexts, and so grant constraints, may hold any
character: they are kept as JSON, on every engine.)

Found on the PostgreSQL pass (``HSMPOOL_TEST_DATABASE=postgresql``): PostgreSQL text cannot
hold a NUL, so psycopg refused the statement and the server answered 500 where SQLite had
stored the string or looked it up (a Description, a list Marker). The service now refuses
NUL in what it stores and looks up, on every engine alike.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any

from tests.server.conftest import Server, sign_headers

NUL = "x\u0000y"


def _plain(shape: Any) -> Any:
    """A harmless value of ``shape`` (its required members only, for a structure)."""
    kind = shape.type_name
    if kind == "structure":
        return {name: _plain(shape.members[name])
                for name in getattr(shape, "required_members", ())}
    return {"string": "x", "blob": "eA==", "integer": 1, "long": 1, "boolean": True,
            "timestamp": 1_900_000_000, "map": {"a": "b"}, "list": []}.get(kind, "x")


def _with_nul(shape: Any, base: Any, depth: int = 0) -> Iterator[Any]:
    """Values of ``shape``, each with one of its string leaves replaced by :data:`NUL` (every
    leaf in turn: list members, map keys and values, structure members; four levels)."""
    kind = shape.type_name
    if kind == "string":
        yield NUL
    elif depth >= 4:
        return
    elif kind == "list":
        item = base[0] if isinstance(base, list) and base else _plain(shape.member)
        for value in _with_nul(shape.member, item, depth + 1):
            yield [value]
    elif kind == "map":
        if shape.key.type_name == "string":
            yield {NUL: _plain(shape.value)}
        for value in _with_nul(shape.value, _plain(shape.value), depth + 1):
            yield {"a": value}
    elif kind == "structure":
        whole = dict(base) if isinstance(base, dict) else _plain(shape)
        for name, member in shape.members.items():
            for value in _with_nul(member, whole.get(name, _plain(member)), depth + 1):
                yield {**whole, name: value}


def _strings(doc: Any) -> Iterator[str]:
    """Every string in a decoded answer (keys of maps too)."""
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(doc, list | tuple):
        for v in doc:
            yield from _strings(v)


def _send_all(server: Server, client: Any, target: str, service: str,
              bases: dict[str, dict[str, Any]], fresh: Any) -> tuple[int, list[str], set[str]]:
    """For each operation of ``bases``: its base request (which the operations that matter
    must accept, else the probe would test nothing), then every NUL variant of each field of
    its input shape on top of it (``fresh(op, params)`` gives each request new names where
    they must be unique). (Requests sent, failures, operations whose base was refused.)"""
    model = client.meta.service_model
    cred = server.creds["admin"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    failures: list[str] = []
    refused: set[str] = set()
    sent = 0

    def send(op: str, params: dict[str, Any]) -> tuple[int, bytes]:
        nonlocal sent
        body = json.dumps(params).encode()
        conn.request("POST", "/", body=body, headers=sign_headers(
            cred, server.port, f"{target}.{op}", body, service=service))
        r = conn.getresponse()
        sent += 1
        return r.status, r.read()

    try:
        for op, base in bases.items():
            status, data = send(op, fresh(op, dict(base)))
            if status >= 400:
                refused.add(f"{op}: {data[:120]!r}")
            members = model.operation_model(op).input_shape.members
            for field, shape in members.items():
                for value in _with_nul(shape, base.get(field)):
                    params = fresh(op, {**base, field: value}) | {field: value}
                    status, data = send(op, params)
                    if status >= 500:
                        failures.append(f"{op} {field}={json.dumps(value)[:60]}: {status} "
                                        f"{data[:100]!r}")
    finally:
        conn.close()
    return sent, failures, refused


def test_nul_in_any_kms_string_is_a_client_error(server: Server, kms: Any) -> None:
    from kms.api.aws_kms import OPERATIONS
    from tests.server.test_auth import _b64, _plausible

    key = kms.create_key(Description="nul")["KeyMetadata"]
    key_id, account = key["KeyId"], key["AWSAccountId"]
    alias = "alias/nul-" + uuid.uuid4().hex[:8]
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    refs = {"key": key_id, "alias": alias,
            "ciphertext": _b64(kms.encrypt(KeyId=key_id, Plaintext=b"n",
                                           EncryptionContext={"a": "b"})["CiphertextBlob"])}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": "kms:*", "Resource": "*"}]})
    model = kms.meta.service_model
    bases: dict[str, dict[str, Any]] = {}
    for op in sorted(OPERATIONS):
        shape = model.operation_model(op).input_shape
        bases[op] = {n: _plausible(n, shape.members[n], refs)
                     for n in shape.required_members}
    bases["GenerateDataKey"] = {"KeyId": key_id, "KeySpec": "AES_256"}
    bases["GenerateDataKeyWithoutPlaintext"] = {"KeyId": key_id, "KeySpec": "AES_256"}
    bases["CreateGrant"] = {"KeyId": key_id, "Operations": ["Encrypt"],
                            "GranteePrincipal": f"arn:aws:iam::{account}:user/admin"}
    bases["PutKeyPolicy"] = {"KeyId": key_id, "PolicyName": "default", "Policy": policy}
    bases["GetKeyPolicy"] = {"KeyId": key_id, "PolicyName": "default"}
    bases["Decrypt"] = {"CiphertextBlob": refs["ciphertext"], "EncryptionContext": {"a": "b"}}
    # What would take the probe's key or alias away acts on others.
    victim = kms.create_key(Description="nul victim")["KeyMetadata"]["KeyId"]
    victim_alias = "alias/nul-victim-" + uuid.uuid4().hex[:8]
    kms.create_alias(AliasName=victim_alias, TargetKeyId=victim)
    for op in ("ScheduleKeyDeletion", "CancelKeyDeletion", "DisableKey"):
        bases[op]["KeyId"] = victim
    bases["DeleteAlias"] = {"AliasName": victim_alias}

    def fresh(op: str, params: dict[str, Any]) -> dict[str, Any]:
        if op == "CreateAlias":  # a new alias each time, on the probe's key
            params["AliasName"] = "alias/nul-" + uuid.uuid4().hex[:8]
        return params

    sent, failures, refused = _send_all(server, kms, "TrentService", "kms", bases, fresh)
    assert not failures, "\n".join(failures)
    must_accept = {"CreateKey", "CreateAlias", "UpdateAlias", "UpdateKeyDescription",
                   "TagResource", "UntagResource", "ListKeys", "ListAliases", "ListGrants",
                   "ListResourceTags", "ListKeyRotations", "CreateGrant", "PutKeyPolicy",
                   "GetKeyPolicy", "Encrypt", "Decrypt", "DescribeKey", "GenerateDataKey"}
    assert not [r for r in refused if r.split(":")[0] in must_accept], sorted(refused)
    assert sent > 100
    # The key's description, tags and policy, the aliases and the grants' names hold no NUL
    # afterwards (the grants' constraints are encryption contexts: any character, as in
    # Encrypt's EncryptionContext, kept as JSON on every engine).
    grants = kms.list_grants(KeyId=key_id, Limit=100)["Grants"]
    assert grants, "no grant was made: CreateGrant's variants tested nothing"
    stored = [kms.describe_key(KeyId=key_id)["KeyMetadata"],
              kms.list_resource_tags(KeyId=key_id),
              kms.get_key_policy(KeyId=key_id, PolicyName="default"),
              kms.list_aliases(Limit=100), [g.get("Name", "") for g in grants]]
    assert not [t for t in _strings(stored) if "\u0000" in t], stored


def test_nul_in_any_secrets_manager_string_is_a_client_error(server: Server, kms: Any
                                                             ) -> None:
    from kms.api.aws_secrets import OPERATIONS

    sm = server.client(server.creds["admin"], service="secretsmanager")
    name = f"nul/{uuid.uuid4().hex[:10]}"
    sm.create_secret(Name=name, SecretString="s")
    account = kms.describe_key(KeyId=kms.create_key()["KeyMetadata"]["KeyId"])[
        "KeyMetadata"]["AWSAccountId"]
    policy = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": "secretsmanager:*", "Resource": "*"}]})
    plausible: dict[str, Any] = {
        "SecretId": name, "SecretString": "s", "VersionStage": "AWSCURRENT",
        "Tags": [{"Key": "a", "Value": "b"}], "TagKeys": ["a"], "ResourcePolicy": policy,
    }
    model = sm.meta.service_model
    bases: dict[str, dict[str, Any]] = {}
    for op in sorted(OPERATIONS):
        shape = model.operation_model(op).input_shape
        if shape is None:
            bases[op] = {}
            continue
        bases[op] = {n: plausible.get(n) or _plain(shape.members[n])
                     for n in shape.required_members}
    bases["CreateSecret"] = {"Name": "", "SecretString": "s"}
    bases["UpdateSecret"] = {"SecretId": name, "Description": "d"}
    bases["PutSecretValue"] = {"SecretId": name, "SecretString": "s"}
    for op in ("DeleteSecret", "RotateSecret", "CancelRotateSecret"):
        bases[op]["SecretId"] = "nul/not-there"  # the probe's secret stays as it is

    def fresh(op: str, params: dict[str, Any]) -> dict[str, Any]:
        if op == "CreateSecret":  # a new secret each time
            params["Name"] = f"nul/{uuid.uuid4().hex[:10]}"
        return params

    sent, failures, refused = _send_all(server, sm, "secretsmanager", "secretsmanager",
                                        bases, fresh)
    assert not failures, "\n".join(failures)
    must_accept = {"CreateSecret", "UpdateSecret", "PutSecretValue", "TagResource",
                   "UntagResource", "DescribeSecret", "GetSecretValue", "ListSecrets",
                   "ListSecretVersionIds", "PutResourcePolicy", "GetResourcePolicy"}
    assert not [r for r in refused if r.split(":")[0] in must_accept], sorted(refused)
    assert sent > 50
    listed = sm.list_secrets(MaxResults=100, Filters=[{"Key": "name", "Values": ["nul/"]}])
    described = sm.describe_secret(SecretId=name)
    assert not [t for t in _strings([listed, described]) if "\u0000" in t], described
