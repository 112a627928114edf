"""Principals for the service tests: real rows of the store (as ``credentials create``
writes them) and the :class:`kms.policy.Principal` objects built from the same documents."""

from __future__ import annotations

import json
import uuid
from typing import Any

from kms import Kms, KmsClient
from kms.policy import Policy, Principal

INSTANCE = "svc"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_principal(kms: Kms, name: str, *statements: dict[str, Any]) -> Principal:
    """A principal of instance "svc" stored with these policy statements."""
    doc = {"Version": "2012-10-17", "Statement": list(statements)}
    policy = Policy.from_json(doc)
    pid = "p-" + uuid.uuid4().hex[:20]
    kms.store.put_principal(pid, INSTANCE, name, json.dumps([policy.to_obj()]))
    return Principal(id=pid, name=name, instance=INSTANCE, policies=(policy,))


def allow(actions: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resource}


def as_principal(kms: Kms, principal: Principal) -> KmsClient:
    """The service client of ``principal`` calling from 127.0.0.1."""
    return kms.client(INSTANCE, principal, "127.0.0.1")


def principal_arn_of(kms: Kms, principal: Principal) -> str:
    return f"arn:aws:iam::{kms.account(INSTANCE)}:user/{principal.name}"
