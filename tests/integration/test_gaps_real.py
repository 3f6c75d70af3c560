"""A gap that cannot be repaired is said, never silent — on a real redis-server.

Nodes run with a small ``--history-max`` and Redis with small stream nodes
(``stream-node-max-entries 4``), so ``MAXLEN ~`` really trims (Redis trims whole stream
nodes only).  While a user is away, more lines are said than the room keeps:

* a JSON client resumes on another node: its catch-up (``history`` after the last id it
  saw) says ``complete: false`` with the oldest id held, and brings every message still
  held, once, in order;
* the ``hubbub connect`` client does the same and prints the notice once;
* a text user whose node lost its subscription meanwhile is told once by the node's own
  gap repair, then gets what is still held.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from typing import Any

import pytest

from node import envelope as env
from node.keys import Keys

from ..faults.harness import id_key, port_of, redis_client
from ..faults.proxy import FaultProxy
from ..helpers import JsonClient, LineClient, json_user, text_user
from .procs import Proc, is_event, redis_server, start_node

pytestmark = pytest.mark.redis_server

KEEP = 10
"""``--history-max`` of every node here."""
AWAY = 60
"""Lines said while the user is away: far more than the room keeps."""
SMALL_NODES = ("--stream-node-max-entries", "4")
NOTICE = "some messages in #lobby are no longer in history"
HIST = Keys().history("lobby")


async def held_messages(r: Any) -> tuple[str, list[tuple[str, str]]]:
    """The oldest id the lobby's stream holds, and its messages as (id, text)."""
    entries = await r.xrange(HIST)
    out = []
    for entry_id, fields in entries:
        parsed = env.parse(fields["e"])
        if isinstance(parsed, env.RoomMsg):
            out.append((entry_id, parsed.text))
    return entries[0][0], out


async def say_all(bob: JsonClient, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        await bob.op("say", text=text, ref=f"s{text}{i}")
        await bob.event("ack", ref=f"s{text}{i}")


async def test_a_json_client_resuming_past_the_retention_is_told_and_gets_what_is_held(
        ) -> None:
    async with redis_server(None, *SMALL_NODES) as (url, _), redis_client(url) as r:
        a, pa = await start_node(url, "ga", "--history-max", str(KEEP))
        b, pb = await start_node(url, "gb", "--history-max", str(KEEP))
        try:
            alice = await JsonClient.connect(pa)
            await alice.op("hello", nick="alice")
            token = (await alice.event("welcome"))["token"]
            bob = await json_user(pb, "bob")
            await say_all(bob, ["seen"])
            last = (await alice.event("msg", text="seen"))["id"]
            a.signal(signal.SIGKILL)  # alice's node dies; she is away meanwhile
            await a.stop()
            await say_all(bob, [f"m{i}" for i in range(AWAY)])
            oldest, held = await held_messages(r)
            assert len(held) < AWAY and id_key(last) < id_key(oldest)  # some were dropped

            back = await JsonClient.connect(pb)
            await back.op("hello", nick="alice", token=token, rooms=["lobby"])
            assert (await back.event("welcome"))["resumed"] is True
            await back.op("history", room="lobby", after=last, limit=200, ref="c1")
            reply = await back.event("history", ref="c1")
            assert (reply["complete"], reply["oldest"]) == (False, oldest)
            assert [(m["id"], m["text"]) for m in reply["messages"]] == held
            print(f"\nJSON resume: {AWAY + 1} lines said, {len(held)} messages still held "
                  f"(--history-max {KEEP}); complete false, all {len(held)} returned")
            # a page asked after an id still held is complete
            await back.op("history", room="lobby", after=held[0][0], ref="c2")
            assert "complete" not in await back.event("history", ref="c2")
            await say_all(bob, ["after"])
            live = await back.event("msg", text="after")
            assert id_key(live["id"]) > id_key(held[-1][0])
            await back.close()
            await bob.close()
            await alice.close()
        finally:
            await a.stop()
            await b.stop()


MSG = re.compile(r"^\[lobby\] bob: (.+)$")


async def test_the_hubbub_client_shows_the_gap_once_then_every_message_held() -> None:
    async with redis_server(None, *SMALL_NODES) as (url, _), redis_client(url) as r:
        a, pa = await start_node(url, "ca", "--history-max", str(KEEP))
        b, pb = await start_node(url, "cb", "--history-max", str(KEEP))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "connect", f"127.0.0.1:{pa}", f"127.0.0.1:{pb}",
            "--nick", "alice", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert child.stdout is not None and child.stdin is not None
        alice = Proc(child, child.stdout)
        try:
            await alice.wait_line(lambda s: s.startswith("* connected to ca"))
            bob = await json_user(pb, "bob")
            await say_all(bob, ["seen"])
            await alice.wait_line(lambda s: s == "[lobby] bob: seen")
            # alice is away: her client frozen, her node gone before anything more is said
            alice.signal(signal.SIGSTOP)
            a.signal(signal.SIGKILL)
            await a.stop()
            await say_all(bob, [f"m{i}" for i in range(AWAY)])
            _, held = await held_messages(r)
            assert held[0][1] != "m0"
            mark = len(alice.lines)
            alice.signal(signal.SIGCONT)
            await alice.wait_line(lambda s: s == f"[lobby] bob: m{AWAY - 1}", start=mark,
                                  timeout=20)
            after = alice.lines[mark:]
            assert [line for line in after if NOTICE in line] == [f"* {NOTICE}"]
            shown = [m.group(1) for line in after if (m := MSG.match(line))]
            assert shown == [text for _, text in held]  # every message held, once, in order
            print(f"\nhubbub client: {AWAY} lines said while away, {len(held)} still held; "
                  f"notice printed once, then the {len(shown)} held, once, in order")
            assert after.index(f"* {NOTICE}") < after.index(f"[lobby] bob: {held[0][1]}")
            child.stdin.close()
            async with asyncio.timeout(15):
                await child.wait()
            await bob.close()
        except BaseException:
            print("\n".join(alice.lines))
            raise
        finally:
            alice.signal(signal.SIGCONT)
            await alice.stop()
            await a.stop()
            await b.stop()


async def test_a_repair_that_finds_its_mark_trimmed_tells_a_text_user_once() -> None:
    async with redis_server(None, *SMALL_NODES) as (url, _), redis_client(url) as r, \
            FaultProxy("127.0.0.1", port_of(url)) as link:
        a, pa = await start_node(link.url(), "ra", "--history-max", str(KEEP))
        b, pb = await start_node(url, "rb", "--history-max", str(KEEP))
        try:
            reader = await text_user(pa, "reader")
            bob = await json_user(pb, "bob")
            await reader.expect("* bob joined lobby")
            await say_all(bob, ["seen"])
            await reader.expect("[lobby] bob: seen")
            subscribers = {int(c["addr"].rsplit(":", 1)[1])
                           for c in await r.client_list(_type="pubsub")}
            [sub_link] = link.find(lambda lk: lk.target_local_port in subscribers)
            sub_link.blackhole = True  # the node hears nothing of what follows...
            await say_all(bob, [f"m{i}" for i in range(AWAY)])
            _, held = await held_messages(r)
            assert held[0][1] != "m0"
            mark = len(a.lines)
            sub_link.reset()  # ...and then loses it: it resubscribes and repairs
            await a.wait_line(is_event("relay subscribed"), start=mark)
            lines = await until_line(reader, f"[lobby] bob: m{AWAY - 1}")
            assert lines.count(f"* {NOTICE}") == 1
            shown = [m.group(1) for line in lines if (m := MSG.match(line))]
            assert shown == [text for _, text in held]
            print(f"\nnode repair: {AWAY} lines said while deaf, {len(held)} still held; "
                  f"text user told once, then the {len(shown)} held, once, in order")
            assert lines.index(f"* {NOTICE}") < lines.index(f"[lobby] bob: {held[0][1]}")
            found = is_event("gap repair found events no longer in history")
            await a.wait_line(found, start=mark)
            await say_all(bob, ["live again"])
            assert await reader.line() == "[lobby] bob: live again"  # nothing said twice
            gaps = [json.loads(line) for line in a.lines[mark:] if found(line)]
            assert [g["room"] for g in gaps] == ["lobby"]
            await reader.close()
            await bob.close()
        finally:
            await a.stop()
            await b.stop()


async def until_line(c: LineClient, last: str) -> list[str]:
    """Lines read until ``last`` (included)."""
    out = []
    while True:
        line = await c.line()
        out.append(line)
        if line == last:
            return out
