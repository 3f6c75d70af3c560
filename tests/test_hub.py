"""Local rooms and gap repair, with fake members on fakeredis (no socket, no node)."""

from __future__ import annotations

import dataclasses
import gc
import json
import weakref
from typing import Any

import fakeredis
import pytest

import node.model as model
from node import envelope as env
from node.errors import RelayUnavailable

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


# --------------------------------------------------------------------------- memory


async def test_a_room_costs_the_node_nothing_once_its_last_local_member_left() -> None:
    async with world(max_rooms_per_user=0) as w:
        bus = w.relay.bus
        fixed = bus.channels  # the node's own channel and the events channel
        ms = [await w.named(f"u{i}") for i in range(3)]
        for i, m in enumerate(ms):  # overlapping rooms: quits are told once per member
            for r in range(12):
                await w.do(m, model.Join(room=f"r{(r + i * 5) % 20}"))
            await w.do(m, model.Say(text="hi"))
        real_join = w.relay.join

        async def refused(*args: Any, **kwargs: Any) -> Any:
            raise RelayUnavailable()

        w.relay.join = refused  # a join that fails half-way
        with pytest.raises(RelayUnavailable):
            await w.do(ms[0], model.Join(room="nowhere"))
        w.relay.join = real_join
        await w.do(ms[0], model.Part(room="lobby"))
        gone = [weakref.ref(m) for m in ms]
        for m in ms:
            await w.identity.unregister(m, "bye")
            w.members.remove(m)
            w.roster.members.discard(m)
        assert w.hub.rooms == {} and w.hub._subs == {} and w.hub._again == set()
        (link,) = bus.links
        assert bus.channels == fixed and link._waiters == {} and link.channels == fixed
        pubsub = bus.pubsub
        assert pubsub is not None
        # Redis confirms each unsubscribe; only then does the client library forget it
        await wait_until(lambda: {c.decode() for c in pubsub.shard_channels}
                         == {link.canary_channel})
        assert {c.decode() for c in pubsub.channels} == fixed
        assert not pubsub.pending_unsubscribe_shard_channels
        del ms, m
        gc.collect()
        assert [ref() for ref in gone] == [None, None, None]  # nothing holds a member


# --------------------------------------------------------------------------- batches


def lines_of(m: FakeMember) -> list[str]:
    return [line for chunk in m.raw for line in chunk.decode().split("\n") if line]


async def test_a_batch_reaches_each_member_in_one_chunk_in_order() -> None:
    """A round's messages come as one batch: a JSON member gets them all (its own
    echoed), a text member all but its own, each in one chunk, in the room's order."""
    async with world() as w:
        alice = await w.named("alice")
        bob = await w.named("bob", mode="text")
        alice.raw.clear()
        bob.raw.clear()
        ids = [await stored(w, f"m{i}") for i in range(4)]
        msgs = tuple(env.RoomMsg("lobby", sender, sid, f"m{i}", id=ids[i]) for i, (sender, sid)
                     in enumerate([("alice", alice.user.sid), ("bob", bob.user.sid),
                                   ("carol", "n2/9"), ("bob", bob.user.sid)]))
        before = w.hub.stats.delivered
        w.hub.on_envelope(env.RoomBatch("lobby", msgs))
        assert len(alice.raw) == 1 and texts(alice) == ["m0", "m1", "m2", "m3"]
        assert len(bob.raw) == 1
        assert [line.rsplit(" ", 1)[-1] for line in lines_of(bob)] == ["m0", "m2"]
        assert w.hub.stats.delivered - before == 6
        # a batch seen again (a duplicate) delivers nothing more
        w.hub.on_envelope(env.RoomBatch("lobby", msgs))
        assert texts(alice) == ["m0", "m1", "m2", "m3"]


async def test_a_batch_while_a_repair_runs_is_held_and_delivered_once() -> None:
    async with world() as w:
        alice = await w.named("alice")
        alice.raw.clear()
        missed = await stored(w, "missed")
        later = [await stored(w, f"live {i}") for i in range(2)]
        w.hub.on_resubscribed()
        w.hub.on_envelope(env.RoomBatch("lobby", tuple(
            env.RoomMsg("lobby", "bob", "n2/1", f"live {i}", id=later[i]) for i in range(2))))
        await wait_until(lambda: len(texts(alice)) >= 3)
        assert texts(alice) == ["missed", "live 0", "live 1"]
        assert missed


# --------------------------------------------------------------------------- upgrade mode


def room_lines(m: FakeMember) -> list[tuple[str, str]]:
    """(event, text or nick) of every message and join ``m`` was sent, in order."""
    out = []
    for line in lines_of(m):
        obj = json.loads(line)
        if obj.get("ev") in ("msg", "join"):
            out.append((obj["ev"], obj.get("text") or obj.get("nick")))
    return out


async def say(w: World, m: FakeMember, text: str) -> None:
    """``m`` says ``text`` in the lobby, published as its session would."""
    msg = await w.do(m, model.Say(text=text))
    assert msg is not None
    await w.relay.say(msg)


async def old_release_publish(w: World, text: str) -> str:
    """What a node of the previous release did for a room message: stored in the stream,
    then a format-1 envelope with its id on the room's channel with classic PUBLISH."""
    msg = env.RoomMsg("lobby", "old", "old/1", text)
    raw = await w.redis.xadd(w.relay.keys.history("lobby"), {"e": msg.serialize()})
    stream_id = raw.decode() if isinstance(raw, bytes) else str(raw)
    await w.redis.publish(w.relay.keys.room_channel("lobby"),
                          dataclasses.replace(msg, id=stream_id).serialize())
    return stream_id


async def test_the_upgrade_mode_hears_classic_publishes_and_shows_a_double_once() -> None:
    """With --bus-format 1 a node hears a previous-release node's classic PUBLISH of a
    room event, and an event a format-1 node publishes both ways (classic and sharded)
    reaches its members once, whichever copy comes first."""
    server = fakeredis.FakeServer()
    async with world(server, "n1", bus_format=1) as w, \
            world(server, "n2", bus_format=1) as w1, world(server, "n3") as w2:
        alice = await w.named("alice")
        alice.raw.clear()
        heard: list[env.Envelope] = []  # what the bus handed the hub, copies included
        on_envelope = w.hub.on_envelope

        def hear(e: env.Envelope) -> None:
            heard.append(e)
            on_envelope(e)

        w.hub.on_envelope = hear  # type: ignore[method-assign,assignment]
        await old_release_publish(w, "from the old node")
        await wait_until(lambda: len(room_lines(alice)) >= 1)
        bob = await w1.named("bob")  # a format-1 node: its join and message go both ways
        await say(w1, bob, "from a format-1 node")
        carol = await w2.named("carol")  # a format-2 node: sharded only
        await say(w2, carol, "from a format-2 node")
        await old_release_publish(w, "the old node again")
        expected = [("msg", "from the old node"), ("join", "bob"),
                    ("msg", "from a format-1 node"), ("join", "carol"),
                    ("msg", "from a format-2 node"), ("msg", "the old node again")]
        await wait_until(lambda: len(room_lines(alice)) >= len(expected), timeout=3)
        assert room_lines(alice) == expected
        # bob's two events came twice (classic and sharded), the others once each
        await wait_until(lambda: len(heard) >= 8, timeout=3)
        ids = [m.id for e in heard
               for m in (e.msgs if isinstance(e, env.RoomBatch) else (e,))
               if isinstance(m, env.RoomEvent)]
        assert len(ids) == 8 and len(set(ids)) == 6
        # and a format-2 node hears neither the old node's classic publishes nor a double
        carol_saw = [t for e, t in room_lines(carol) if e == "msg"]
        assert carol_saw == ["from a format-2 node"]


async def test_doubles_of_a_format_1_node_during_a_repair_are_delivered_once() -> None:
    """A gap repair reads an event from the stream while both its live copies (classic
    and sharded) are held: it is delivered once, in order."""
    async with world(bus_format=1) as w:
        alice = await w.named("alice")
        alice.raw.clear()
        missed = await stored(w, "missed")
        live = await stored(w, "live, twice")
        w.hub.on_resubscribed()
        copy = env.RoomMsg("lobby", "bob", "n2/1", "live, twice", id=live)
        w.hub.on_envelope(copy)
        w.hub.on_envelope(copy)
        await wait_until(lambda: len(texts(alice)) >= 2)
        w.hub.on_envelope(copy)  # a late third copy
        assert texts(alice) == ["missed", "live, twice"] and missed
