"""The console's secrets panel: a hook for the secrets manager.

The panel is shown only when the service offers secrets: when the caller's service client
(:class:`kms.KmsClient`) has a ``list_secrets(limit, marker)`` method returning a page (an
object with ``items`` and ``next_marker``, as ``list_keys`` does). Of each item the console
reads only these attributes (any may be missing), never a secret's value:

* ``name`` (str), ``arn`` (str), ``description`` (str);
* ``stages``: a mapping of version id -> stage names (``AWSCURRENT``, ``AWSPENDING``...);
* ``rotation_enabled`` (bool), ``last_rotated`` and ``next_rotation`` (epoch seconds);
* ``rotation_failures`` (int) and ``last_rotation_error`` (a short text, no secret);
* ``deletion_date`` (epoch seconds, for a secret scheduled for deletion).

Whatever the service's secrets look like, only the names above are read (``getattr``), so
a value held by an item never reaches the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

MAX_SECRETS: Final = 10_000
_TEXT: Final = ("name", "arn", "description", "last_rotation_error")
_TIMES: Final = ("last_rotated", "next_rotation", "deletion_date")


def available(client: Any) -> bool:
    return callable(getattr(client, "list_secrets", None))


def rows(client: Any, page_size: int = 100) -> list[dict[str, Any]]:
    """Every secret of the client's instance it may list, as plain rows (see above)."""
    out: list[dict[str, Any]] = []
    marker: str | None = None
    while len(out) < MAX_SECRETS:
        page = client.list_secrets(page_size, marker)
        for item in page.items:
            out.append(row(item))
        marker = page.next_marker
        if not marker:
            break
    return out


def row(item: Any) -> dict[str, Any]:
    r: dict[str, Any] = {}
    for name in _TEXT:
        v = getattr(item, name, None)
        r[name] = v[:300] if isinstance(v, str) else None
    for name in _TIMES:
        v = getattr(item, name, None)
        r[name] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    stages = getattr(item, "stages", None)
    r["stages"] = sorted({str(s) for v in stages.values() for s in v}) \
        if isinstance(stages, Mapping) else []
    r["rotation_enabled"] = bool(getattr(item, "rotation_enabled", False))
    failures = getattr(item, "rotation_failures", 0)
    r["rotation_failures"] = failures if isinstance(failures, int) else 0
    return r
