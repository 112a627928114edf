"""Application access points (kms/access_points.py): the policy made from roles and
resources, validation, client keys (only the public key is stored) and revocation, on a real
service over SoftHSM2 and SQLite."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kms import access_points as ap
from kms.errors import InstanceNotFound, NotFound, Validation


def test_policy_of_roles_over_resources() -> None:
    doc = ap.policy_for(["CryptoServiceKeyUser", "SecretUser"],
                        ["key/*", "alias/app-*", "secret/db", "secret/team/*"])
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["CryptoServiceKeyUser"]["Resource"] == ["arn:aws:kms:*:*:alias/app-*",
                                                          "arn:aws:kms:*:*:key/*"]
    assert "kms:Encrypt" in by_sid["CryptoServiceKeyUser"]["Action"]
    assert "kms:CreateKey" not in by_sid["CryptoServiceKeyUser"]["Action"]
    assert by_sid["SecretUser"]["Resource"] == [
        "arn:aws:secretsmanager:*:*:secret:db-??????",
        "arn:aws:secretsmanager:*:*:secret:team/*"]
    assert by_sid["Random"]["Action"] == ["kms:GenerateRandom"]


@pytest.mark.parametrize(("roles", "resources"), [
    (["Admin"], ["key/*"]),                      # no such role
    (["SecretUser"], ["key/*"]),                 # the role covers none of the resources
    (["CryptoServiceKeyUser"], ["keys/*"]),      # not a resource form
    (["CryptoServiceKeyUser"], ["key/a b"]),     # not a resource name
])
def test_bad_roles_and_resources_are_refused(roles: list[str], resources: list[str]) -> None:
    with pytest.raises(Validation):
        ap.policy_for(roles, resources)


def test_create_issue_list_revoke(kms: Any) -> None:
    service = kms
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12

    with pytest.raises(Validation):
        ap.create_access_point(service, "svc", "app", ["SecretUser"], ["secret/*"], [])
    with pytest.raises(Validation):
        ap.create_access_point(service, "svc", "app", ["SecretUser"], ["secret/*"],
                               ["10.0.0.0/33"])
    with pytest.raises(Validation):
        ap.create_access_point(service, "svc", "bad name", ["SecretUser"], ["secret/*"],
                               ["10.0.0.0/8"])
    with pytest.raises(InstanceNotFound):
        ap.create_access_point(service, "nope", "app", ["SecretUser"], ["secret/*"],
                               ["10.0.0.0/8"])
    point = ap.create_access_point(service, "svc", "app", ["SecretUser"], ["secret/*"],
                                   ["10.1.2.3", "10.0.0.0/8"])
    assert point.networks == ("10.1.2.3/32", "10.0.0.0/8")
    principal = service.store.find_principal("svc", "aap/app")
    assert principal is not None and principal.principal_id == point.principal_id
    assert json.loads(principal.policies)[0]["Statement"][0]["Sid"] == "SecretUser"
    with pytest.raises(NotFound):
        ap.issue_client_key(service, "svc", "other")
    for bad in (0, True, ap.MAX_VALID_DAYS + 1, "30"):  # True: an int, not a day count
        with pytest.raises(Validation):
            ap.issue_client_key(service, "svc", "app", valid_days=bad)  # type: ignore[arg-type]
    new = ap.issue_client_key(service, "svc", "app", valid_days=30)
    doc = json.loads(new.key_file())
    assert doc["KeyId"] == new.client_key_id and new.client_key_id.startswith("KAAP.")
    key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(doc["PrivateKeyData"]),
                                                    new.password.encode())
    assert key is not None and cert is not None
    stored = service.store.get_client_key(new.client_key_id)
    assert stored.public_key == key.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # the public key, nothing else
    assert 29 * 86400 < stored.not_after - stored.created <= 30 * 86400
    with pytest.raises(ValueError):  # a wrong password opens nothing
        pkcs12.load_key_and_certificates(base64.b64decode(doc["PrivateKeyData"]), b"wrong")
    [(listed, keys)] = ap.list_access_points(service.store, "svc")
    assert listed.name == "app" and [k.client_key_id for k in keys] == [new.client_key_id]
    assert ap.revoke_client_key(service, new.client_key_id).revoked is not None
    first = service.store.get_client_key(new.client_key_id).revoked
    assert ap.revoke_client_key(service, new.client_key_id).revoked == first  # once
    with pytest.raises(NotFound):
        ap.revoke_client_key(service, "KAAP.none")
