"""Prometheus metrics of one server worker: requests by operation and result, latency
histograms, and the pool's per-token state, in-flight operations and errors."""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Final

from kms.service import TokenStats

BUCKETS: Final = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                  1.0, 2.5)
_STATES: Final = ("healthy", "ejected", "closed")


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = {}
        self.sums: defaultdict[str, float] = defaultdict(float)
        self.worker = str(os.getpid())

    def observe(self, operation: str, result: str, seconds: float) -> None:
        self.requests[(operation, result)] += 1
        h = self.hist.get(operation)
        if h is None:
            h = self.hist[operation] = [0] * (len(BUCKETS) + 1)
        h[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[operation] += seconds

    def render(self, stats: Mapping[str, TokenStats] | None) -> str:
        w = self.worker
        out = ["# HELP hsmpool_requests_total Requests by operation and result.",
               "# TYPE hsmpool_requests_total counter"]
        for (op, res), n in sorted(self.requests.items()):
            out.append(f'hsmpool_requests_total{{worker="{w}",operation="{op}",'
                       f'result="{res}"}} {n}')
        out += ["# HELP hsmpool_request_seconds Request latency by operation.",
                "# TYPE hsmpool_request_seconds histogram"]
        for op, h in sorted(self.hist.items()):
            cum = 0
            for le, n in zip((*BUCKETS, float("inf")), h, strict=True):
                cum += n
                le_s = "+Inf" if le == float("inf") else repr(le)
                out.append(f'hsmpool_request_seconds_bucket{{worker="{w}",operation="{op}",'
                           f'le="{le_s}"}} {cum}')
            out.append(f'hsmpool_request_seconds_sum{{worker="{w}",operation="{op}"}} '
                       f"{self.sums[op]:.6f}")
            out.append(f'hsmpool_request_seconds_count{{worker="{w}",operation="{op}"}} {cum}')
        if stats is not None:
            out += ["# HELP hsmpool_token_state 1 for the token's current state.",
                    "# TYPE hsmpool_token_state gauge"]
            for s in stats.values():
                for st in _STATES:
                    out.append(f'hsmpool_token_state{{worker="{w}",token="{s.name}",'
                               f'state="{st}"}} {int(s.state == st)}')
            for name, help_text, attr, kind in (
                    ("hsmpool_token_in_flight", "Operations in flight.", "in_flight", "gauge"),
                    ("hsmpool_token_operations_total", "Operations run.", "ops", "counter"),
                    ("hsmpool_token_errors_total", "Operations failed.", "errors", "counter"),
                    ("hsmpool_token_ejections_total", "Times ejected.", "ejections",
                     "counter")):
                out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                for s in stats.values():
                    out.append(f'{name}{{worker="{w}",token="{s.name}"}} {getattr(s, attr)}')
        return "\n".join(out) + "\n"
