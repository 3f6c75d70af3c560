"""Rolling upgrade, both restarts of it, on a real Redis: every message once, in one order
per room, on every node.

1. **The previous release beside format-1 nodes.**  Nodes of the previous release carry
   room events on classic pub/sub (``PUBLISH``/``SUBSCRIBE``), one ``"v":1`` envelope per
   event; this release carries them sharded, a batch per round.  The previous release's
   own code (``PREVIOUS``, read out of git into a directory and run as a node process
   from there) runs beside nodes of this release started with ``--bus-format 1``, which
   publish both ways and subscribe both ways.  An extra reader does what the previous
   release's bus does (it subscribes the room channels classic and keeps only ``"v":1``
   messages), and must see everything too.
2. **This release in both formats** (the second restart): format-1 and format-2 nodes in
   one cluster.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path as FilePath

import pytest
import redis.asyncio as aioredis

from node.keys import Keys

from ..integration.procs import Proc, redis_server, start_node
from .harness import Member, base_args, delivery, member, members, stop_all
from .test_newcomer import Path, hello_with_rooms, json_join, text_registration

pytestmark = pytest.mark.redis_server

PREVIOUS = "1e20fcb"
"""The previous release: room channels on classic pub/sub, one ``"v":1`` envelope per
event, no room index."""
PREVIOUS_LACKS = frozenset({"--list-rate", "--room-create-rate", "--max-rooms-per-user"})
"""Options of the suite's nodes that the previous release does not have."""

CLIENTS = 12
PER_USER = 150
ROOMS = ("red", "blue")
ROOT = FilePath(__file__).resolve().parents[2]
NEWCOMER_TRIALS = 50


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A directory holding the previous release's ``cli`` and ``node`` packages."""
    found = subprocess.run(["git", "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], cwd=ROOT,
                           capture_output=True, check=False)
    if found.returncode != 0:  # a shallow clone: nothing to install can bring it back
        pytest.skip(f"revision {PREVIOUS} (the previous release) is not in this checkout "
                    "(a shallow clone; fetch the full history to run this)")
    where = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(["git", "archive", PREVIOUS, "node", "cli"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    yield str(where)


def previous_args() -> tuple[str, ...]:
    """The suite's node options (:func:`base_args`), those the previous release knows."""
    args = base_args()
    pairs = zip(args[::2], args[1::2], strict=True)
    return tuple(part for flag, value in pairs if flag not in PREVIOUS_LACKS
                 for part in (flag, value))


@asynccontextmanager
async def old_reader(url: str, rooms: Sequence[str]) -> AsyncIterator[dict[str, list[str]]]:
    """A reader as a release before the batch had it: the room channels subscribed
    classic, ``"v":1`` messages kept (ids, per room, in arrival order), anything else
    dropped."""
    got: dict[str, list[str]] = {room: [] for room in rooms}
    keys = Keys("hubbub:")
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(*(keys.room_channel(room) for room in rooms))

    async def read() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is None:
                continue
            obj = json.loads(message["data"])
            if obj.get("v") == 1 and obj.get("t") == "msg":
                got[obj["room"]].append(obj["id"])

    confirmed = 0
    while confirmed < len(rooms):  # every room's subscription in force before any node
        message = await pubsub.get_message(timeout=5)
        if message is not None and message["type"] == "subscribe":
            confirmed += 1
    task = asyncio.create_task(read())
    try:
        yield got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def talk_and_check(nodes: Sequence[tuple[Proc, int]],
                         reader: dict[str, list[str]] | None = None) -> None:
    """Members of both rooms spread over ``nodes`` all talk at once; every member, and
    ``reader``, must see every message once, in one order per room, and each join once."""
    users: list[Member] = []
    for i in range(CLIENTS):  # each room spread over every node
        users += await members(nodes[i // len(ROOMS) % len(nodes)][1], [f"v{i:02d}"],
                               [ROOMS[i % len(ROOMS)]])
    room_of = {u.nick: ROOMS[i % len(ROOMS)] for i, u in enumerate(users)}
    per_room = PER_USER * CLIENTS // len(ROOMS)
    for seq in range(PER_USER):  # everyone at once: rounds of several messages
        for u in users:
            u.send("say", text=f"{u.nick} {seq}", ref=seq)
    for u in users:
        await u.drain()
    for u in users:
        await u.until(lambda u=u: len(u.acks) == PER_USER
                      and len(u.msgs.get(room_of[u.nick], [])) >= per_room, timeout=45)
    for room in ROOMS:
        senders = [u for u in users if room_of[u.nick] == room]
        acked = [i for u in senders for i, _ in u.acks.values() if i]
        assert len(set(acked)) == per_room
        orders = set()
        for u in senders:
            d = delivery(acked, u.ids(room))
            assert (d.lost, d.duplicated, d.out_of_order) == (0, 0, 0), u.nick
            orders.add(tuple(u.ids(room)))
            for s in senders:
                seqs = [int(g.text.split()[1]) for g in u.msgs[room] if g.sender == s.nick]
                assert seqs == list(range(PER_USER)), (u.nick, s.nick)
            joins = Counter(e["nick"] for e in u.events
                            if e.get("ev") == "join" and e.get("room") == room)
            assert set(joins.values()) == {1}, (u.nick, joins)
        assert len(orders) == 1, f"members of {room} saw different orders"
        if reader is not None:
            d = delivery(acked, reader[room])
            assert (d.lost, d.duplicated, d.out_of_order) == (0, 0, 0), \
                f"a release before the batch would not see {room} whole: {d}"
            assert tuple(reader[room]) in orders


async def test_previous_release_and_format_1_nodes_in_one_cluster_lose_nothing(
        previous_release: str) -> None:
    """The first restart: nodes of the previous release (its own code) and nodes of this
    release with ``--bus-format 1``; a reader as the previous release reads sees
    everything too."""
    async with redis_server() as (url, _), old_reader(url, ROOMS) as reader:
        old = [start_node(url, f"old{i}", *previous_args(), cwd=previous_release)
               for i in range(2)]
        new = [start_node(url, f"new{i}", *base_args("--bus-format", "1")) for i in range(2)]
        started = await asyncio.gather(*old, *new)
        nodes = [started[0], started[2], started[1], started[3]]  # old, new, old, new
        try:
            for proc, _ in started[:2]:  # the previous release's code, not this tree's:
                subscribed = [json.loads(line) for line in proc.lines  # its bus had no
                              if '"relay subscribed"' in line]          # shard links
                assert subscribed and all("shard" not in e for e in subscribed)
            await talk_and_check(nodes, reader)
        finally:
            await stop_all(p for p, _ in nodes)


async def test_old_and_new_bus_formats_in_one_cluster_lose_nothing() -> None:
    """The second restart: nodes of this release in format 1 and in format 2."""
    async with redis_server() as (url, _):
        nodes = list(await asyncio.gather(*(
            start_node(url, f"u{i}", *base_args("--bus-format", fmt))
            for i, fmt in enumerate(("1", "2", "1")))))
        try:
            await talk_and_check(nodes)
        finally:
            await stop_all(p for p, _ in nodes)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("speaker_node", ["previous", "format 2"])
@pytest.mark.parametrize("path", [json_join, hello_with_rooms, text_registration],
                         ids=lambda p: p.__name__)
async def test_the_answer_means_live_on_a_format_1_node(
        previous_release: str, speaker_node: str, path: Path) -> None:
    """A format-1 node subscribes a room both ways before its newcomer's membership is
    recorded: a speaker on a node of the previous release (heard classic only) or on a
    format-2 node (heard sharded only) is heard by the newcomer from its own join on,
    every line once, in order (see test_newcomer.py for the paths)."""
    async with redis_server() as (url, _):
        if speaker_node == "previous":
            speaking = start_node(url, "a", *previous_args(), cwd=previous_release)
        else:
            speaking = start_node(url, "a", *base_args())
        nodes = list(await asyncio.gather(
            speaking, start_node(url, "b", *base_args("--bus-format", "1"))))
        try:
            (_, a), (_, b) = nodes
            speaker = await member(a, "spk")
            failed = []
            for i in range(NEWCOMER_TRIALS):
                wrong = await path(a, b, speaker, i)
                if wrong:
                    failed.append((i, wrong))
            assert not failed, failed[:3]
        finally:
            await stop_all(p for p, _ in nodes)
