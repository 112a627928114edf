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
