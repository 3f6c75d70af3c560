"""A log-linear latency histogram in microseconds.

Values below 128 µs have a bucket each; above, every power of two is cut into 64 buckets,
so a bucket is at most 1/64 (1.6 %) wide relative to its value.  Recording is one index
computation and one list increment; histograms from several processes merge by adding
counts, and travel as a sparse ``{index: count}`` mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["Histogram", "bucket_bounds", "bucket_of"]

_SUB = 64
_LINEAR = 2 * _SUB  # values below this have one bucket each
_MAX_EXP = 48  # 2**48 µs is about nine years: nothing real is slower
SIZE = _MAX_EXP * _SUB + _LINEAR


def bucket_of(value: int) -> int:
    """The bucket index of ``value`` µs (negative values count as 0)."""
    if value < _LINEAR:
        return value if value > 0 else 0
    e = value.bit_length() - 7
    return min((e << 6) + (value >> e), SIZE - 1)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The values ``[low, high)`` that fall into bucket ``index``."""
    if index < _LINEAR:
        return index, index + 1
    e = (index >> 6) - 1
    low = (index - (e << 6)) << e
    return low, low + (1 << e)


class Histogram:
    """Counts of latencies by bucket; :meth:`record` is the hot path."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * SIZE
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, value: int) -> None:
        self.counts[bucket_of(value)] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> int | None:
        """The value (µs, the middle of its bucket, never above the max) at or below which
        ``p`` percent of the values fall; ``None`` when empty."""
        if not self.count:
            return None
        rank = max(1, -(-self.count * p // 100))  # ceil, at least the first value
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, high = bucket_bounds(i)
                return min((low + high - 1) // 2, self.max)
        return self.max  # pragma: no cover - unreachable: counts add up to count

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_sparse(self) -> dict[str, int]:
        """``{index: count}`` for the non-empty buckets (string keys: JSON-ready)."""
        return {str(i): n for i, n in enumerate(self.counts) if n}

    @classmethod
    def from_sparse(cls, sparse: Mapping[str, int], total: int, maximum: int) -> Histogram:
        h = cls()
        for i, n in sparse.items():
            h.counts[int(i)] += n
            h.count += n
        h.total = total
        h.max = maximum
        return h

    @classmethod
    def of(cls, values: Iterable[int]) -> Histogram:
        h = cls()
        for v in values:
            h.record(v)
        return h
