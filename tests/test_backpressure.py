"""Backpressure: a session's unanswered messages are bounded (``max_inflight``) and the
publishing queue admits no more than Redis takes before a deadline; past either bound the
sender waits (its socket is not read), nothing is refused.  On fakeredis, with rounds
held back by a gate instead of a slow Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from node import envelope as env
from node.errors import RelayUnavailable
from node.relay import Relay
from node.server import ChatNode

from .helpers import TIMEOUT, JsonClient, running_node, wait_until
from .relaykit import Sink, config


class HeldRounds:
    """Holds every publishing round (pipeline) of ``redis`` until :meth:`release`,
    recording the number of messages in each (a round's script per room carries one
    once-key per message after its three other keys)."""

    def __init__(self, redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.gate = asyncio.Event()
        real = redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real(*args, **kwargs)
            execute = pipe.execute

            async def held(*a: Any, **kw: Any) -> Any:
                self.sizes.append(sum(int(args[2]) - 3 for args, _ in pipe.command_stack
                                      if args[0] == "EVALSHA"))
                await self.gate.wait()
                return await execute(*a, **kw)

            pipe.execute = held
            return pipe

        monkeypatch.setattr(redis, "pipeline", pipeline)

    def release(self) -> None:
        self.gate.set()


def say_ops(refs: range) -> bytes:
    return b"".join(f'{{"op":"say","text":"line {r}","ref":{r}}}\n'.encode() for r in refs)


def session_of(node: ChatNode, nick: str) -> Any:
    (session,) = [s for s in node.sessions if s.user.nick == nick]
    return session


async def test_a_session_stops_taking_lines_at_max_inflight_and_loses_none(
        fake_server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_node(fake_server, rate=0, max_inflight=4) as node:
        alice = await JsonClient.connect(node.port or 0)
        await alice.op("hello", nick="alice")
        await alice.event("join", nick="alice")
        session = session_of(node, "alice")
        rounds = HeldRounds(node.relay._redis, monkeypatch)
        await alice.send(say_ops(range(40)))
        await wait_until(lambda: rounds.sizes)
        await asyncio.sleep(0.05)  # time to take more lines, were it not waiting
        assert rounds.sizes == [4] and len(session._said) == 4
        assert node.stats.inflight_waits == 1
        rounds.release()
        acks = [await alice.event("ack") for _ in range(40)]
        assert [a["ref"] for a in acks] == list(range(40))
        assert max(rounds.sizes) <= 4 and sum(rounds.sizes) == 40
        history = await node.relay.history("lobby", 100)
        assert [m.text for m in history] == [f"line {i}" for i in range(40)]


@pytest.fixture
async def relay(fake_server: fakeredis.FakeServer) -> AsyncIterator[Relay]:
    client = fakeredis.FakeAsyncRedis(server=fake_server)
    relay = Relay(client, config("n1", publish_batch=2, outbox_seconds=4.0), Sink())
    await relay.bus.load_scripts()
    yield relay
    await client.aclose()


def msg(i: int) -> env.RoomMsg:
    return env.RoomMsg("lobby", "ann", "s/ann", f"ann {i}")


async def test_the_publishing_queue_admits_a_round_then_makes_submitters_wait_in_turn(
        relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = relay.publisher
    rounds = HeldRounds(publisher._redis, monkeypatch)
    told: list[str | RelayUnavailable] = []
    for i in range(2):  # the first round, now held in flight
        await publisher.admitted()
        publisher.submit(msg(i), told.append)
    await wait_until(lambda: rounds.sizes == [2])
    assert publisher.queue_bound == 2  # nothing measured yet: one round
    for i in range(2, 4):  # the next round fills while one is in flight
        await publisher.admitted()
        publisher.submit(msg(i), told.append)
    order: list[int] = []

    async def sender(i: int) -> None:
        await publisher.admitted()
        order.append(i)
        publisher.submit(msg(i), told.append)

    waiting = [asyncio.create_task(sender(i)) for i in range(4, 8)]
    await asyncio.sleep(0.05)
    assert order == [] and publisher.stats.admission_waits == 4
    rounds.release()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*waiting)
        await wait_until(lambda: len(told) == 8)
    assert order == [4, 5, 6, 7]  # first come, first served
    assert all(isinstance(r, str) for r in told)
    assert max(rounds.sizes) == 2


async def test_a_cancelled_waiter_passes_its_turn_on(
        relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = relay.publisher
    rounds = HeldRounds(publisher._redis, monkeypatch)
    told: list[str | RelayUnavailable] = []
    for i in range(4):
        await publisher.admitted()
        publisher.submit(msg(i), told.append)
    first = asyncio.create_task(publisher.admitted())
    second = asyncio.create_task(publisher.admitted())
    await asyncio.sleep(0)
    first.cancel()
    rounds.release()
    async with asyncio.timeout(TIMEOUT):
        await second
    assert first.cancelled() and not publisher._lane(None).admitting


def test_the_queue_bound_follows_the_measured_rate(relay: Relay) -> None:
    publisher = relay.publisher
    lane = publisher._lane(None)  # a standalone Redis: one shard
    publisher._measured(lane, 1, 0.001)  # a partial round says nothing about Redis's rate
    assert publisher.rate == 0 and publisher.queue_bound == 2
    publisher._measured(lane, 2, 0.001)  # 2,000 messages/s
    assert publisher.rate == pytest.approx(2000)
    # half of the 4 s deadline window at 2,000/s
    assert publisher.queue_bound == 4000
