"""Rotation schedules, as AWS Secrets Manager's RotationRules give them.

Either ``AutomaticallyAfterDays`` (1..1000) or a ``ScheduleExpression`` ``rate(N hours)``
(4..23: AWS's lower bound, and whole days are written as days) or ``rate(N days)``
(1..1000); optionally a ``Duration`` (``"3h"``, ``"1d"``...) that AWS uses as a rotation
window: accepted and kept, rotations start at the due time. ``cron(...)`` expressions are
refused with a clear error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["RotationRules", "ScheduleError", "parse_rules"]

HOUR: Final = 3600.0
DAY: Final = 86400.0
_RATE: Final = re.compile(r"rate\(\s*(\d{1,4})\s+(hour|hours|day|days)\s*\)")
_DURATION: Final = re.compile(r"(\d{1,2})([hd])")


class ScheduleError(ValueError):
    """Rotation rules that AWS would refuse (or that we do not support: cron)."""


@dataclass(frozen=True, slots=True)
class RotationRules:
    interval: float  # seconds between rotations
    automatically_after_days: int | None = None
    schedule_expression: str | None = None
    duration: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.automatically_after_days is not None:
            out["AutomaticallyAfterDays"] = self.automatically_after_days
        if self.schedule_expression is not None:
            out["ScheduleExpression"] = self.schedule_expression
        if self.duration is not None:
            out["Duration"] = self.duration
        return out


def parse_rules(raw: object) -> RotationRules:
    if not isinstance(raw, dict):
        raise ScheduleError("RotationRules must be an object")
    unknown = set(raw) - {"AutomaticallyAfterDays", "ScheduleExpression", "Duration"}
    if unknown:
        raise ScheduleError(f"unknown RotationRules field(s) {sorted(unknown)}")
    days, expr, duration = (raw.get("AutomaticallyAfterDays"), raw.get("ScheduleExpression"),
                            raw.get("Duration"))
    if (days is None) == (expr is None):
        raise ScheduleError("give either AutomaticallyAfterDays or ScheduleExpression")
    if duration is not None and (
            not isinstance(duration, str) or not (m := _DURATION.fullmatch(duration))
            or not 1 <= int(m.group(1)) * (24 if m.group(2) == "d" else 1) <= 24):
        raise ScheduleError("Duration must be 1h..24h (or 1d)")
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 1000:
            raise ScheduleError("AutomaticallyAfterDays must be 1..1000")
        return RotationRules(days * DAY, automatically_after_days=days, duration=duration)
    if not isinstance(expr, str):
        raise ScheduleError("ScheduleExpression must be a string")
    text = expr.strip()
    if text.startswith("cron("):
        raise ScheduleError("cron() schedule expressions are not supported; use rate()")
    m = _RATE.fullmatch(text)
    if m is None:
        raise ScheduleError("ScheduleExpression must be rate(N hours) or rate(N days)")
    n, unit = int(m.group(1)), m.group(2)
    if unit.startswith("hour"):
        if not 4 <= n <= 23:
            raise ScheduleError("rate(N hours) takes N = 4..23 (use days beyond that)")
        interval = n * HOUR
    else:
        if not 1 <= n <= 1000:
            raise ScheduleError("rate(N days) takes N = 1..1000")
        interval = n * DAY
    return RotationRules(interval, schedule_expression=text, duration=duration)
