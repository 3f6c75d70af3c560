"""Reconnect delays: a pure generator, tested without sleeping."""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["backoff"]


def backoff(
    initial: float = 0.1,
    factor: float = 2.0,
    maximum: float = 5.0,
    *,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield capped, jittered delays forever: full jitter over an exponential ceiling.

    The n-th delay is uniform in ``[ceiling/2, ceiling]`` where the ceiling grows from
    ``initial`` by ``factor`` up to ``maximum``; the floor of half keeps a fleet of nodes
    from hammering a Redis that just came back, the jitter keeps them from doing it in step.
    """
    rand = rng or random.Random()
    ceiling = initial
    while True:
        yield rand.uniform(ceiling / 2, ceiling)
        ceiling = min(maximum, ceiling * factor)
