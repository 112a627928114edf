"""The console's secrets panel: the caller's secrets as plain rows, never a value.

Each row holds a secret's name, ARN, description, the stages its versions carry, its
rotation state (enabled, last and next rotation, the last failure's reason: a short text,
never a value) and its deletion date. Only the records are read (``list_secrets``), never
an envelope or a value.
"""

from __future__ import annotations

from typing import Any, Final

from kms import errors as E
from kms.service import KmsClient

MAX_SECRETS: Final = 10_000


def panel(client: KmsClient) -> dict[str, Any]:
    """The panel's answer: the rows, or ``available: False`` if the caller may not list
    the instance's secrets."""
    try:
        return {"available": True, "secrets": rows(client)}
    except E.AccessDenied:
        return {"available": False, "secrets": []}


def rows(client: KmsClient, page_size: int = 100) -> list[dict[str, Any]]:
    """Every secret of the client's instance (those scheduled for deletion too)."""
    out: list[dict[str, Any]] = []
    token: str | None = None
    while len(out) < MAX_SECRETS:
        page = client.list_secrets(page_size, token, include_planned_deletion=True)
        for rec, versions in page.items:
            out.append({
                "name": rec.name, "arn": rec.arn, "description": rec.description[:300],
                "stages": sorted({s for v in versions for s in v.stages}),
                "rotation_enabled": rec.rotation_enabled, "last_rotated": rec.last_rotated,
                "next_rotation": rec.next_rotation if rec.rotation_enabled else None,
                "last_rotation_error": (rec.rotation_error or "")[:300] or None,
                "rotation_failures": 1 if rec.rotation_error else 0,
                "deletion_date": rec.deletion_date})
        token = page.next_token
        if not token:
            break
    return out
