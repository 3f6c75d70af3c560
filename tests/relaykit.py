"""What the tests of the Redis side share: a sink that records reports, a config, loops
run as tasks, and the ``fake_redis`` fixture (a test module takes it in with
``fake_redis = relaykit.fake_redis``).  No node and no socket: everything runs on
fakeredis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import fakeredis
import pytest

from node import envelope as env
from node.config import NodeConfig

TIMEOUT = 5.0

T = TypeVar("T")


class Sink:
    """Records what a relay (or its bus, or its lease side) reports; ``wait_for`` waits
    for a condition, never a delay."""

    def __init__(self) -> None:
        self.envelopes: list[env.Envelope] = []
        """What came, a batch's messages one by one (``batches`` counts the batches)."""
        self.batches = 0
        self.lost: list[str] = []
        self.resubscribed = 0
        self.resubscribed_which: list[frozenset[str] | None] = []
        """What each resubscription named (channels from a bus, rooms from a relay;
        None: all)."""
        self.resets = 0
        self._changed = asyncio.Event()

    def on_envelope(self, envelope: env.Envelope) -> None:
        if isinstance(envelope, env.RoomBatch):
            self.batches += 1
            self.envelopes.extend(envelope.msgs)
        else:
            self.envelopes.append(envelope)
        self._changed.set()

    def on_lease_lost(self, folded: str) -> None:
        self.lost.append(folded)
        self._changed.set()

    def on_resubscribed(self, which: frozenset[str] | None = None) -> None:
        self.resubscribed += 1
        self.resubscribed_which.append(which)
        self._changed.set()

    def on_redis_reset(self) -> None:
        self.resets += 1
        self._changed.set()

    async def wait_for(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    def of_type(self, kind: type[T]) -> list[T]:
        return [e for e in self.envelopes if isinstance(e, kind)]


def config(node_id: str, **overrides: Any) -> NodeConfig:
    return NodeConfig(node_id=node_id, lease_ttl=15.0, redis_timeout=1.0, **overrides)


@contextlib.asynccontextmanager
async def running(*loops: Callable[[], Coroutine[Any, Any, object]],
                  ready: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """Each of ``loops`` in a task, cancelled on exit; entered once ``ready`` returned."""
    tasks = [asyncio.create_task(loop()) for loop in loops]
    try:
        async with asyncio.timeout(TIMEOUT):
            await ready()
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def fake_redis(fake_server: fakeredis.FakeServer
                     ) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """A client of the test's fake Redis (``fake_server``, from conftest)."""
    client = fakeredis.FakeAsyncRedis(server=fake_server)
    yield client
    await client.aclose()
