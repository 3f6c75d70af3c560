"""Case 4: the nodes' pub/sub connections are killed (CLIENT KILL TYPE pubsub) while
messages flow; each node resubscribes and repairs the gap from the room's stream."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from typing import Any

import pytest

from node import envelope as env
from node.keys import Keys

from ..helpers import JsonClient, LineClient
from ..integration.procs import is_event, redis_server
from .harness import (
    Talker,
    base_args,
    close_all,
    heard_last,
    members,
    out_of_order,
    redis_client,
    seqs_from,
    start_nodes,
    stop_all,
    wait_event,
)

pytestmark = pytest.mark.redis_server

KILLS = 3
RESUBSCRIBE = 2.0
"""Seconds within which each node must have resubscribed (its "relay subscribed" event)."""

SILENT_RECONNECT = (
    "BUG, not a feature being built: the node's redis-py client (cli/redis_client.py: "
    "Retry(NoBackoff(), 1) on ConnectionError) makes PubSub reconnect and resubscribe by "
    "itself after CLIENT KILL, behind the relay's back: no 'relay subscription lost', no "
    "'relay subscribed', no gap repair, and lines published in between never reach that "
    "node's users (0-14 receiver-deliveries lost per 3 kills in our runs)")


BUS_FORMATS = pytest.mark.parametrize("bus_format", ["2", "1"])
"""Also in the upgrade mode (``--bus-format 1``): each event then arrives twice, classic
and sharded, on the one connection that is killed, and must still be shown once."""


@BUS_FORMATS
async def test_pubsub_killed_resubscribed_and_gap_repaired(bus_format: str) -> None:
    async with redis_server() as (url, _), redis_client(url) as r:
        nodes = await start_nodes(url, ["p1", "p2"], *base_args("--bus-format", bus_format))
        (n1, port1), (n2, port2) = nodes
        users = []
        talkers: list[Talker] = []
        try:
            ta, ra = await members(port1, ["ta", "ra"])
            tb, rb = await members(port2, ["tb", "rb"])
            users = [ta, ra, tb, rb]
            await ta.event("join", nick="rb")
            talkers = [Talker(ta, interval=0.01).start(), Talker(tb, interval=0.01).start()]
            resub: list[float] = []
            for k in range(1, KILLS + 1):
                for t in talkers:  # traffic is flowing
                    await t.m.until(lambda t=t, k=k: len(t.acked()) >= 60 * k)
                killed_at = time.monotonic()
                killed = await r.client_kill_filter(_type="pubsub")
                assert killed == 2  # one subscription per node, never one per client
                back = await asyncio.gather(*(
                    wait_event(proc, "relay subscribed", killed_at, timeout=RESUBSCRIBE)
                    for proc in (n1, n2)), return_exceptions=True)
                resub += [b - killed_at if isinstance(b, float) else math.inf for b in back]
            for t in talkers:
                await t.m.until(lambda t=t: len(t.acked()) >= 60 * (KILLS + 1))
                await t.stop()
            for t in talkers:
                await t.m.until(t.settled)
            await heard_last(talkers, [ra, rb], "lobby")

            said = sum(len(t.sent) for t in talkers)
            lost = dups = disorder = 0
            for t in talkers:
                acked = t.acked()
                assert len(acked) == len(t.sent)  # Redis stayed up: every line acked
                for m in (ra, rb):
                    got = seqs_from(m, "lobby", t.m.nick)
                    lost += len(set(acked) - set(got))
                    dups += len(got) - len(set(got))
                    disorder += out_of_order(got)
            repaired = sum(json.loads(line).get("events", 0)
                           for proc in (n1, n2) for line in proc.lines
                           if is_event("gap repaired")(line))
            noticed = sum(1 for b in resub if b < math.inf)
            print(f"\npub/sub killed {KILLS} times on 2 nodes while {said} lines flowed: "
                  f"the relay noticed and resubscribed {noticed} of {len(resub)} times"
                  + (f" (after {min(resub):.2f}-{max(b for b in resub if b < math.inf):.2f} s)"
                     if noticed else "") + f"; {repaired} "
                  f"events repaired from the streams; receivers: lost {lost}, duplicated "
                  f"{dups}, out of order {disorder}")
            assert max(resub) < RESUBSCRIBE
            assert (lost, dups, disorder) == (0, 0, 0)
        finally:
            for t in talkers:
                await t.stop()
            await close_all(users)
            await stop_all(p for p, _ in nodes)


def as_text(e: env.Envelope) -> str:
    """How a text user is shown a lobby event (docs/PROTOCOL.md)."""
    match e:
        case env.RoomMsg():
            return f"[lobby] {e.sender}: {e.text}"
        case env.RoomJoin():
            return f"* {e.nick} joined lobby"
        case env.RoomPart():
            return f"* {e.nick} left lobby"
        case env.RoomQuit():
            return f"* {e.nick} quit ({e.reason})" if e.reason else f"* {e.nick} quit"
        case env.RoomNick():
            return f"* {e.old} is now {e.new}"
    raise AssertionError(e)


@BUS_FORMATS
async def test_a_text_user_on_a_cut_node_sees_every_notice_and_line_once_in_order(
        bus_format: str) -> None:
    """Users join, talk, rename, part and quit on node 2 while node 1's subscription is
    killed (node 1 held still meanwhile, so the users' comings and goings fall in the
    gap): node 1's text user is shown exactly the room's stream from its own join on --
    notices and lines, once each, in the stream's order."""
    async with redis_server() as (url, _), redis_client(url) as r:
        nodes = await start_nodes(url, ["p1", "p2"], *base_args("--bus-format", bus_format))
        (n1, port1), (_, port2) = nodes
        try:
            watcher = await LineClient.connect(port1)
            await watcher.expect("* GET_NAME")
            await watcher.send("watch")
            await watcher.expect("* watch joined lobby")
            start = len(watcher.seen) - 1

            async def churn(k: int) -> None:
                c = await JsonClient.connect(port2)
                await c.op("hello", nick=f"c{k}", rooms=["lobby", "side"])
                await c.event("welcome")
                for n, (op, args) in enumerate([
                        ("say", {"room": "lobby", "text": f"hello from c{k}"}),
                        ("nick", {"nick": f"d{k}"}),
                        ("say", {"room": "lobby", "text": f"now d{k}"}),
                        ("part", {"room": "lobby"}), ("join", {"room": "lobby"})]):
                    await c.op(op, ref=n, **args)
                    await c.event("ack", ref=n)
                await c.op("quit", reason=f"bye {k}")
                await c.closed()

            killed = 0
            for k in range(30):
                await churn(k)
                if k % 10 == 3:  # cut node 1 off while the next user comes and goes
                    n1.signal(signal.SIGSTOP)  # (so it cannot resubscribe at once)
                    assert await r.client_kill_filter(_type="pubsub") == 2
                    killed += 1
                    await churn(100 + k)
                    thawed_at = time.monotonic()
                    n1.signal(signal.SIGCONT)
                    await wait_event(n1, "relay subscribed", thawed_at, timeout=RESUBSCRIBE)
            mark = await JsonClient.connect(port2)
            await mark.op("hello", nick="mark")
            await mark.event("welcome")
            await mark.op("say", text="end", ref=1)
            await mark.event("ack", ref=1)
            await watcher.expect("[lobby] mark: end")

            stream = [as_text(e) for _, e in await lobby_stream(r)]
            own = stream.index("* watch joined lobby")
            shown = [line for line in watcher.seen[start:]
                     if line.startswith(("[lobby]", "* ")) and not line.startswith("* welcome")]
            repaired = sum(json.loads(line).get("events", 0) for line in n1.lines
                           if is_event("gap repaired")(line))
            print(f"\n{killed} cuts of node 1's subscription while 33 users came and went: "
                  f"{len(shown)} lobby events shown to its text user, {repaired} "
                  "repaired from the stream")
            assert shown == stream[own:]
            assert repaired >= 3 * 7  # each cut: a user's join, 2 lines, rename, part...
        finally:
            await stop_all(p for p, _ in nodes)


async def lobby_stream(r: Any) -> list[tuple[str, env.Envelope]]:
    entries = await r.xrange(Keys("hubbub:").history("lobby"))  # the default prefix
    return [(i, env.parse(fields["e"])) for i, fields in entries]
