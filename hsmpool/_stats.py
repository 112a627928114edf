"""A cheap latency histogram: log-scale buckets, four per power of two (about ±10 %)."""

from __future__ import annotations

_SUB = 2  # 2**_SUB buckets per octave
_NBUCKETS = 64 << _SUB


def bucket_of(ns: int) -> int:
    """The bucket index of a duration in nanoseconds."""
    bl = ns.bit_length()
    if bl <= _SUB + 1:
        return ns
    return (bl << _SUB) | ((ns >> (bl - _SUB - 1)) & ((1 << _SUB) - 1))


def bucket_upper_ns(index: int) -> int:
    """An upper bound (exclusive) of the durations that fall into a bucket."""
    if index < (1 << (_SUB + 1)):
        return index + 1
    bl = index >> _SUB
    frac = index & ((1 << _SUB) - 1)
    return ((1 << _SUB) | frac) + 1 << (bl - _SUB - 1)


class Histogram:
    """Counts per bucket; not locked (callers update it under their own lock)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.total = 0

    def add(self, ns: int) -> None:
        self.counts[bucket_of(ns)] += 1
        self.total += 1

    def percentile(self, q: float) -> float:
        """The q-quantile (0 < q <= 1) in seconds, or 0.0 with no samples."""
        if self.total == 0:
            return 0.0
        rank = q * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return bucket_upper_ns(i) / 1e9
        return 0.0

    def coarse(self, bounds_s: tuple[float, ...]) -> tuple[list[int], float]:
        """Counts per coarser bucket (durations up to each bound in seconds, then one more
        for the rest: not cumulative), and an estimate of the sum of durations in seconds
        (each fine bucket at its midpoint: within about 10 %). For Prometheus histograms."""
        bounds_ns = [b * 1e9 for b in bounds_s]
        out = [0] * (len(bounds_s) + 1)
        total = 0.0
        counts = list(self.counts)  # a copy: the owner may be adding meanwhile
        j = 0
        for i, c in enumerate(counts):
            if not c:
                continue
            upper = bucket_upper_ns(i)
            lower = bucket_upper_ns(i - 1) if i else 0
            while j < len(bounds_ns) and upper > bounds_ns[j] + 1:
                j += 1
            out[j] += c
            total += c * (upper + lower) / 2e9
        return out, total
