"""The reconnect delay generator: pure, so tested with a seeded RNG and no sleeping."""

from __future__ import annotations

import itertools
import random

import pytest

from node.backoff import backoff


def take(n: int, **kwargs: float) -> list[float]:
    return list(itertools.islice(backoff(rng=random.Random(42), **kwargs), n))


def test_each_delay_lies_between_half_the_ceiling_and_the_ceiling() -> None:
    delays = take(10, initial=0.1, factor=2.0, maximum=100.0)
    ceilings = [0.1 * 2**n for n in range(10)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_ceiling_grows_by_factor_then_caps_at_maximum() -> None:
    delays = take(12, initial=1.0, factor=3.0, maximum=20.0)
    ceilings = [1.0, 3.0, 9.0] + [20.0] * 9
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    # once capped, the delays stay in [maximum/2, maximum]
    assert all(10.0 <= d <= 20.0 for d in delays[3:])


def test_never_exceeds_maximum_over_100_draws() -> None:
    delays = take(100, initial=0.1, factor=2.0, maximum=5.0)
    assert len(delays) == 100
    assert max(delays) <= 5.0
    assert min(delays) >= 0.05
    assert all(d >= 2.5 for d in delays[10:])  # 0.1 * 2**6 > 5: capped long before


def test_same_seed_same_delays_different_seeds_differ() -> None:
    def draws(seed: int) -> list[float]:
        return list(itertools.islice(backoff(rng=random.Random(seed)), 20))

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_jitter_varies_between_draws_at_the_cap() -> None:
    delays = take(50, initial=5.0, factor=2.0, maximum=5.0)
    assert len(set(delays)) > 1


@pytest.mark.parametrize("initial", [0.01, 0.5, 5.0])
def test_defaults_cap_at_five_seconds(initial: float) -> None:
    delays = list(itertools.islice(backoff(initial, rng=random.Random(0)), 30))
    assert all(0 < d <= 5.0 for d in delays)
