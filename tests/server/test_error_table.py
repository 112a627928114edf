"""The AWS front end's table of the service's error kinds: complete, and as boto3 knows them."""

from __future__ import annotations

import botocore.session

from kms import errors as E
from kms.api.aws_kms import WIRE_ERRORS


def _kinds() -> set[str]:
    seen: set[str] = set()
    todo: list[type[E.KmsError]] = [E.KmsError]
    while todo:
        cls = todo.pop()
        seen.add(cls.kind)
        todo.extend(cls.__subclasses__())
    return seen


def test_every_kind_has_a_wire_code() -> None:
    assert _kinds() == set(WIRE_ERRORS)
    assert {cls.kind for cls in E.ALL_ERRORS} == set(WIRE_ERRORS)


def test_the_wire_codes_are_aws_kms_errors() -> None:
    model = botocore.session.get_session().get_service_model("kms")
    known = {shape for shape in model.shape_names
             if getattr(model.shape_for(shape), "metadata", {}).get("exception")}
    # AWS KMS's own error shapes, and two that every AWS JSON service answers (boto3 knows
    # them from its common errors, not from the KMS model)
    common = {"ValidationException", "AccessDeniedException"}
    missing = {code for code, _ in WIRE_ERRORS.values()} - known - common
    assert not missing, missing
