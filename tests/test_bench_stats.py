"""The benchmark's histogram, order tracker and client layout."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cli.bench.histogram import Histogram, bucket_bounds, bucket_of
from cli.bench.layout import Layout
from cli.bench.tracker import DUPLICATE, LATE, NEW, SeqTracker

values = st.integers(0, 10**12)


@given(values)
def test_bucket_holds_its_value_and_is_narrow(v: int) -> None:
    low, high = bucket_bounds(bucket_of(v))
    assert low <= v < high
    assert high - low <= max(1, low / 64)


@given(values, values)
def test_buckets_are_monotonic(a: int, b: int) -> None:
    if a <= b:
        assert bucket_of(a) <= bucket_of(b)


@given(st.lists(values, min_size=1, max_size=300), st.floats(0.1, 100))
def test_percentile_is_within_bucket_precision(vals: list[int], p: float) -> None:
    h = Histogram.of(vals)
    exact = sorted(vals)[max(0, math.ceil(len(vals) * p / 100) - 1)]
    got = h.percentile(p)
    assert got is not None
    assert abs(got - exact) <= max(1, exact / 64)
    assert got <= max(vals)


@given(st.lists(values, max_size=100), st.lists(values, max_size=100))
def test_merge_and_sparse_round_trip(a: list[int], b: list[int]) -> None:
    h = Histogram.of(a)
    h.merge(Histogram.of(b))
    whole = Histogram.of(a + b)
    assert h.counts == whole.counts and h.count == whole.count and h.max == whole.max
    back = Histogram.from_sparse(h.to_sparse(), h.total, h.max)
    assert back.counts == h.counts and back.count == h.count


def test_empty_histogram() -> None:
    assert Histogram().percentile(99) is None and Histogram().mean() is None


@given(st.lists(st.integers(0, 40), max_size=120))
def test_tracker_classifies_every_arrival(arrivals: list[int]) -> None:
    t = SeqTracker(1)
    kinds = [t.see(0, s) for s in arrivals]
    unique = set(arrivals)
    assert kinds.count(NEW) + kinds.count(LATE) == len(unique)
    assert kinds.count(DUPLICATE) == len(arrivals) - len(unique)
    highest = max(arrivals, default=-1)
    assert t.missing() == highest + 1 - len(unique)


def test_tracker_in_order_late_and_duplicate() -> None:
    t = SeqTracker(2)
    assert [t.see(0, s) for s in (0, 1, 3, 2, 2, 4)] == [NEW, NEW, NEW, LATE, DUPLICATE, NEW]
    assert t.see(1, 0) == NEW and t.missing() == 0


@given(st.integers(0, 300), st.integers(1, 4), st.integers(1, 20))
def test_layout(clients: int, nodes: int, rooms: int) -> None:
    layout = Layout(clients, nodes, rooms)
    sizes = layout.room_sizes()
    assert sum(sizes) == clients
    assert max(sizes) - min(sizes) <= 1
    members: dict[int, list[int]] = {}
    for i in range(clients):
        members.setdefault(layout.room_of(i), []).append(i)
    for ms in members.values():
        assert [layout.member_index(i) for i in ms] == list(range(len(ms)))
        if len(ms) >= 2 and nodes >= 2:
            assert len({layout.node_of(i) for i in ms}) >= 2  # a room spans nodes
