"""Local rooms and gap repair, with fake members on fakeredis (no socket, no node)."""

from __future__ import annotations

import json

from node import envelope as env

from .fakes import FakeMember, World, world
from .helpers import wait_until


def texts(m: FakeMember) -> list[str]:
    """The room messages ``m`` was sent (fan-out bytes), in order."""
    out = []
    for chunk in m.raw:
        for line in chunk.splitlines():
            obj = json.loads(line)
            if obj.get("ev") == "msg":
                out.append(obj["text"])
    return out


async def stored(w: World, text: str) -> str:
    """A lobby message in the stream only: what a node whose subscription was down
    never received."""
    msg = env.RoomMsg("lobby", "bob", "n2/1", text)
    raw = await w.redis.xadd(w.relay.keys.history("lobby"), {"e": msg.serialize()})
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def test_a_live_event_right_after_a_resubscription_waits_for_the_repair() -> None:
    """The listener hands over the next live event at once after it resubscribed, before
    the repair has read the stream: that event must not move the room's mark past the
    gap (it did, and the gap's messages were never shown)."""
    async with world() as w:
        alice = await w.named("alice")
        await stored(w, "missed")
        live = await stored(w, "live after the gap")
        w.hub.on_resubscribed()
        w.hub.on_envelope(env.RoomMsg("lobby", "bob", "n2/1", "live after the gap", id=live))
        await wait_until(lambda: len(texts(alice)) >= 2)
        assert texts(alice) == ["missed", "live after the gap"]


async def test_a_gap_during_a_repair_is_repaired_too() -> None:
    """The subscription breaks again while a repair reads the stream: what the second gap
    missed is read once the first repair is done."""
    async with world() as w:
        alice = await w.named("alice")
        await stored(w, "first gap")
        events = w.relay.events
        second_gap: list[str] = []

        async def slow_read(room: str, after: str, limit: int) -> list[env.RoomEvent]:
            got = await events(room, after, limit)
            if not second_gap:  # the stream was read; now the second gap happens
                second_gap.append(await stored(w, "second gap"))
                w.hub.on_resubscribed()
            return got

        w.relay.events = slow_read
        w.hub.on_resubscribed()
        await wait_until(lambda: len(texts(alice)) >= 2)
        assert texts(alice) == ["first gap", "second gap"]
