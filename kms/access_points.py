"""Application access points (AAP): how applications reach an instance over the
KMS-instance protocol (:mod:`kms.api.kms_instance`), as Alibaba Cloud's KMS instances do.

An access point is a role-based policy (roles over resources) plus network rules (the source
addresses it admits); it authenticates applications by **client keys**. A client key is an
RSA key pair made here for the client: its private key leaves at once in a password-protected
PKCS#12 file (``clientKey_<id>.json``, ``{"KeyId", "PrivateKeyData"}``, and its password
file, as Alibaba's console writes them) and is never stored; the store keeps only the public
key, its validity period and whether it was revoked. Requests are signed with the private key
(RSA PKCS#1 v1.5, SHA-256) and verified with the public one.

Each access point is backed by a principal of its instance named ``aap/<name>`` whose policy
is made from the roles and resources (:func:`policy_for`), so authorisation is the one every
front end uses (:mod:`kms.policy`); the network rules are checked before anything runs.

Roles (:data:`ROLES`): ``CryptoServiceKeyUser`` (use keys: encrypt, decrypt, data keys, sign,
verify, public keys, MACs; random bytes), ``SecretUser`` (read secrets). Resources: ``key/*``,
``key/<id>``, ``alias/<name>``, ``secret/<name>`` (``*`` and ``?`` as wildcards) or ``*``.
Creating, issuing and revoking are audited as ``aap:<Operation>``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from kms.caller import int_in
from kms.errors import InstanceNotFound, NotFound, Validation
from kms.store import AccessPointRecord, ClientKeyRecord

if TYPE_CHECKING:
    from kms.service import Kms
    from kms.store import MetadataStore

__all__ = ["ROLES", "AccessPoint", "ClientKeyRecord", "NewClientKey", "create_access_point",
           "describe", "find_client_key", "issue_client_key", "list_access_points",
           "policy_for", "revoke_client_key"]

_KEY_ACTIONS: Final = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey",
                       "kms:GenerateDataKeyWithoutPlaintext", "kms:Sign", "kms:Verify",
                       "kms:GetPublicKey", "kms:GenerateMac", "kms:VerifyMac",
                       "kms:DescribeKey")
_SECRET_ACTIONS: Final = ("secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret")

#: Role -> (the resource kinds it covers, its actions).
ROLES: Final[dict[str, tuple[frozenset[str], tuple[str, ...]]]] = {
    "CryptoServiceKeyUser": (frozenset({"key", "alias"}), _KEY_ACTIONS),
    "SecretUser": (frozenset({"secret"}), _SECRET_ACTIONS),
}
_NAME: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_RESOURCE: Final = re.compile(r"^(key|alias|secret)/([A-Za-z0-9_.\-/*?+=@]{1,256})$")
MAX_VALID_DAYS: Final = 3650
PRINCIPAL_PREFIX: Final = "aap/"


@dataclass(frozen=True, slots=True)
class AccessPoint:
    """An access point as configured (no secrets)."""

    instance: str
    name: str
    roles: tuple[str, ...]
    resources: tuple[str, ...]
    networks: tuple[str, ...]
    description: str
    created: float
    principal_id: str

    @classmethod
    def from_record(cls, rec: AccessPointRecord) -> AccessPoint:
        spec = json.loads(rec.spec)
        return cls(rec.instance, rec.name, tuple(spec["roles"]), tuple(spec["resources"]),
                   tuple(spec["networks"]), spec.get("description", ""), rec.created,
                   rec.principal_id)


@dataclass(frozen=True, slots=True)
class NewClientKey:
    """A client key just issued: its file's content and password (shown once, kept
    nowhere)."""

    client_key_id: str
    instance: str
    access_point: str
    private_key_data: bytes  # PKCS#12, encrypted with ``password``
    password: str
    not_after: float

    def key_file(self) -> str:
        """``clientKey_<id>.json`` as the KMS-instance SDKs read it."""
        return json.dumps({"KeyId": self.client_key_id,
                           "PrivateKeyData": base64.b64encode(self.private_key_data).decode()})


# --- the policy of an access point -----------------------------------------------------------


def _resource_arn(kind: str, pattern: str) -> str:
    if kind == "secret":
        # A secret's ARN ends in "-" and six random characters: a name matches itself.
        tail = pattern if pattern.endswith("*") else pattern + "-??????"
        return f"arn:aws:secretsmanager:*:*:secret:{tail}"
    return f"arn:aws:kms:*:*:{kind}/{pattern}"


def _parse_resources(resources: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for r in resources:
        if not isinstance(r, str):
            raise Validation("resources must be strings")
        if r == "*":
            out += [("key", "*"), ("alias", "*"), ("secret", "*")]
            continue
        m = _RESOURCE.match(r)
        if m is None:
            raise Validation(f"resource {r!r} is not key/<id>, alias/<name>, secret/<name> or *")
        out.append((m.group(1), m.group(2)))
    return out


def policy_for(roles: list[str], resources: list[str]) -> dict[str, Any]:
    """The policy document of an access point's principal: each role's actions on the given
    resources of the kinds it covers (a role covering none of them is refused)."""
    parsed = _parse_resources(resources)
    statements: list[dict[str, Any]] = []
    for role in roles:
        if role not in ROLES:
            raise Validation(f"role {role!r} is not one of {sorted(ROLES)}")
        kinds, actions = ROLES[role]
        arns = sorted({_resource_arn(k, p) for k, p in parsed if k in kinds})
        if not arns:
            raise Validation(f"role {role} covers none of the resources given "
                             f"({', '.join(sorted(kinds))} resources)")
        statements.append({"Sid": role, "Effect": "Allow", "Action": list(actions),
                           "Resource": arns})
        if role == "CryptoServiceKeyUser":
            statements.append({"Sid": "Random", "Effect": "Allow",
                               "Action": ["kms:GenerateRandom"], "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


def _networks(networks: list[str]) -> list[str]:
    if not networks:
        raise Validation("an access point needs at least one network rule (e.g. 10.0.0.0/8)")
    out = []
    for n in networks:
        try:
            out.append(str(ipaddress.ip_network(n.strip(), strict=False)))
        except (ValueError, AttributeError):
            raise Validation(f"network {n!r} is not an address or CIDR block") from None
    return out


# --- operations ------------------------------------------------------------------------------


def _check_instance(kms: Kms, instance: str) -> None:
    if instance not in kms.pool.instances:
        raise InstanceNotFound(f"instance {instance!r} is not configured in the pool")


def _audit(kms: Kms, instance: str, actor: str, operation: str, **details: str) -> None:
    if kms.audit is not None:
        kms.audit.record(time.time(), instance, actor, "aap:" + operation, None, None, "ok",
                         "aap-" + uuid.uuid4().hex, details)


def create_access_point(kms: Kms, instance: str, name: str, roles: list[str],
                        resources: list[str], networks: list[str], *, description: str = "",
                        actor: str = "") -> AccessPoint:
    """Create access point ``name`` in ``instance`` (or replace its roles, resources and
    networks; its client keys stay valid)."""
    _check_instance(kms, instance)
    if not isinstance(name, str) or not _NAME.match(name):
        raise Validation("an access point name is 1-64 letters, digits, '_', '.' or '-'")
    doc = policy_for(roles, resources)
    nets = _networks(networks)
    principal_name = PRINCIPAL_PREFIX + name
    row = kms.store.find_principal(instance, principal_name)
    principal_id = row.principal_id if row else "p-" + uuid.uuid4().hex[:20]
    kms.store.put_principal(principal_id, instance, principal_name, json.dumps([doc]))
    spec = {"roles": list(roles), "resources": list(resources), "networks": nets,
            "description": description}
    kms.store.put_access_point(AccessPointRecord(instance, name, principal_id,
                                                 json.dumps(spec), time.time()))
    _audit(kms, instance, actor, "CreateAccessPoint", access_point=name)
    return describe(kms.store, instance, name)


def describe(store: MetadataStore, instance: str, name: str) -> AccessPoint:
    rec = store.get_access_point(instance, name)
    if rec is None:
        raise NotFound(f"access point {name!r} does not exist in instance {instance!r}")
    return AccessPoint.from_record(rec)


def find_client_key(kms: Kms, client_key_id: str
                    ) -> tuple[ClientKeyRecord, AccessPoint] | None:
    """A client key and its access point, for authentication (None if either is gone)."""
    rec = kms.store.get_client_key(client_key_id)
    if rec is None:
        return None
    point = kms.store.get_access_point(rec.instance, rec.access_point)
    return None if point is None else (rec, AccessPoint.from_record(point))


def list_access_points(store: MetadataStore, instance: str | None = None
                       ) -> list[tuple[AccessPoint, list[ClientKeyRecord]]]:
    """Every access point (of ``instance``) with its client keys."""
    return [(AccessPoint.from_record(r), store.list_client_keys(r.instance, r.name))
            for r in store.list_access_points(instance)]


def _certificate(key: Any, client_key_id: str, not_before: float, not_after: float) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_key_id)])
    utc = datetime.UTC
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(not_before, utc))
            .not_valid_after(datetime.datetime.fromtimestamp(not_after, utc))
            .sign(key, hashes.SHA256()))


def issue_client_key(kms: Kms, instance: str, access_point: str, *, valid_days: int = 365,
                     actor: str = "") -> NewClientKey:
    """A new client key of an access point, valid ``valid_days`` from now: an RSA-2048 key
    pair made here; the private key is returned (PKCS#12 under a random password), only the
    public key is stored."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12

    if not int_in(valid_days, 1, MAX_VALID_DAYS):
        raise Validation(f"valid days must be 1..{MAX_VALID_DAYS}")
    describe(kms.store, instance, access_point)
    client_key_id = f"KAAP.{uuid.uuid4()}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = time.time()
    not_before, not_after = now - 300, now + valid_days * 86400
    cert = _certificate(key, client_key_id, not_before, not_after)
    password = secrets.token_urlsafe(24)
    data = pkcs12.serialize_key_and_certificates(
        client_key_id.encode(), key, cert, None,
        serialization.BestAvailableEncryption(password.encode()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    kms.store.put_client_key(ClientKeyRecord(client_key_id, instance, access_point, spki,
                                             not_before, not_after, None, now))
    _audit(kms, instance, actor, "CreateClientKey", access_point=access_point,
           client_key_id=client_key_id)
    return NewClientKey(client_key_id, instance, access_point, data, password, not_after)


def revoke_client_key(kms: Kms, client_key_id: str, *, actor: str = "") -> ClientKeyRecord:
    """Refuse a client key from now on, for good (servers notice within about 50 ms)."""
    rec = kms.store.get_client_key(client_key_id) if isinstance(client_key_id, str) else None
    if rec is None:
        raise NotFound(f"client key {client_key_id!r} does not exist")
    if rec.revoked is None:
        kms.store.revoke_client_key(client_key_id, time.time())
        _audit(kms, rec.instance, actor, "RevokeClientKey", access_point=rec.access_point,
               client_key_id=client_key_id)
    got = kms.store.get_client_key(client_key_id)
    assert got is not None
    return got
