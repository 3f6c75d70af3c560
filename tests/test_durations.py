"""Tests for node.durations: the duration notation operators type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.durations import MAX_DURATION, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("45", 45), ("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1w", 604800),
    ("1h30m", 5400), ("1d2h3m4s", 93784), (" 10M ", 600), ("366d", MAX_DURATION),
])
def test_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "0", "0s", "m", "10x", "1.5h", "-5m", "10m 5s", "5s10m", "1h1h", "367d", "forever",
    "1e3", "٣m", "9999999999",
])
def test_refused(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "1s"), (59.2, "1m"), (60, "1m"), (600, "10m"), (3661, "1h1m1s"), (0.001, "1s"),
    (MAX_DURATION, "366d"),
])
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=MAX_DURATION))
def test_format_then_parse_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=30))
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except DurationError:
        return
    assert 1 <= seconds <= MAX_DURATION


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=400), st.sampled_from("wdhms")),
                min_size=1, max_size=5, unique_by=lambda p: p[1]))
def test_unit_sums(parts: list[tuple[int, str]]) -> None:
    order = "wdhms"
    parts.sort(key=lambda p: order.index(p[1]))
    text = "".join(f"{n}{u}" for n, u in parts)
    size = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    total = sum(n * size[u] for n, u in parts)
    if 1 <= total <= MAX_DURATION:
        assert parse_duration(text) == total
    else:
        with pytest.raises(DurationError):
            parse_duration(text)
