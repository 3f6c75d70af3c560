"""Against a real redis-server started by the test, with ``hubbub node`` subprocesses."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
import redis.asyncio as aioredis

from cli.cluster import free_port

from ..helpers import JsonClient, LineClient, json_user, text_user
from .procs import is_event, redis_server, start_node

pytestmark = pytest.mark.redis_server

TTL = 2.0


async def test_two_cli_nodes_chat_across_real_redis() -> None:
    async with redis_server() as (url, _):
        a, pa = await start_node(url, "ia")
        b, pb = await start_node(url, "ib")
        try:
            alice = await text_user(pa, "alice")
            bob = await text_user(pb, "bob")
            await alice.expect("* bob joined lobby")
            await alice.send("hello across real redis ✓")
            assert await bob.expect("[lobby]") == "[lobby] alice: hello across real redis ✓"
            carol = await json_user(pb, "carol")
            await carol.op("say", text="from json", ref=1)
            ack = await carol.event("ack", ref=1)
            assert await alice.expect("[lobby] carol") == "[lobby] carol: from json"
            await alice.send("/msg carol secret")
            pm = await carol.event("pm")
            assert pm["text"] == "secret"
            await carol.op("history", limit=2, ref="h")
            hist = await carol.event("history", ref="h")
            assert [m["id"] for m in hist["messages"]][-1] == ack["id"]
        finally:
            assert await a.stop() == 0
            assert await b.stop() == 0


async def test_history_ids_redis_refuses_are_bad_args_and_a_refusal_is_not_unavailable(
        ) -> None:
    """Stream ids are two unsigned 64-bit numbers: a larger one is the client's mistake
    (``bad-args``), the largest one there is has nothing after it, and a command Redis
    refuses (here a room's stream that is not a stream) is logged and answered
    ``internal`` — never ``relay-unavailable``, which tells a client to retry."""
    top = 2**64 - 1
    async with redis_server() as (url, _):
        a, pa = await start_node(url, "ha")
        try:
            c = await json_user(pa, "c")
            await c.op("say", text="one", ref="s")
            first = (await c.event("ack", ref="s"))["id"]
            for ref, after in enumerate([f"{top}-{top}", f"{top}-0", f"{top - 1}-{top}"]):
                await c.op("history", after=after, ref=ref)
                assert (await c.event("history", ref=ref))["messages"] == [], after
            await c.op("history", after="0000000000-0", ref="z")  # leading zeros are fine
            assert [m["id"] for m in (await c.event("history", ref="z"))["messages"]] == [
                first]
            for ref, after in enumerate([f"{top + 1}-0", f"0-{top + 1}", "9" * 20 + "-0"]):
                await c.op("history", after=after, ref=f"bad{ref}")
                error = await c.event("error", ref=f"bad{ref}")
                assert error["code"] == "bad-args" and "18446744073709551615" in error["text"]
            await c.op("join", room="broken", ref="j")
            await c.event("ack", ref="j")
            r = aioredis.Redis.from_url(url)
            try:
                await r.delete("hubbub:{room:broken}:hist")
                await r.set("hubbub:{room:broken}:hist", "not a stream")
            finally:
                await r.aclose()
            await c.op("history", room="broken", ref="w")
            assert (await c.event("error", ref="w"))["code"] == "internal"
            logged = json.loads(await a.wait_line(is_event("redis refused a command")))
            assert logged["level"] == "warning" and logged["command"] == "history"
            assert "WRONGTYPE" in logged["error"]
            await c.op("ping", ref="p")  # and the session goes on
            await c.event("pong", ref="p")
        finally:
            assert await a.stop() == 0


async def test_sigkilled_node_names_released_within_two_ttl() -> None:
    async with redis_server() as (url, _):
        a, pa = await start_node(url, "ka", "--lease-ttl", str(TTL))
        b, pb = await start_node(url, "kb", "--lease-ttl", str(TTL))
        try:
            victims = [await text_user(pa, f"victim{i}") for i in range(3)]
            watcher = await text_user(pb, "watcher")
            for i, v in enumerate(victims):
                await v.send("/join side")
                await v.expect(f"* victim{i} joined side")
            killed_at = time.monotonic()
            a.signal(signal.SIGKILL)
            quits: set[str] = set()
            while len(quits) < 3:
                line = await watcher.expect(lambda s: " quit" in s, timeout=2 * TTL + 2)
                quits.add(line.split()[1])
            released = time.monotonic() - killed_at
            print(f"names of a SIGKILLed node released after {released:.2f} s (TTL {TTL} s)")
            assert quits == {"victim0", "victim1", "victim2"}
            assert released < 2 * TTL
            # every name is claimable again, on the surviving node
            again = await text_user(pb, "victim0")
            await again.send("/who side")
            assert "victim" not in await again.expect("* side")
            # nothing of the dead node is left in Redis
            r = aioredis.Redis.from_url(url)
            try:
                keys = {k.decode() if isinstance(k, bytes) else k
                        for k in await r.keys("hubbub:*")}
            finally:
                await r.aclose()
            assert not [k for k in keys if k.endswith(":ka") or "victim1" in k
                        or "victim2" in k], keys
        finally:
            await a.stop()
            await b.stop()


async def test_nick_race_on_real_redis_exactly_one_winner() -> None:
    async with redis_server() as (url, _):
        a, pa = await start_node(url, "ra")
        b, pb = await start_node(url, "rb")
        try:
            for trial in range(100):
                c1 = await JsonClient.connect(pa)
                c2 = await JsonClient.connect(pb)
                nick = f"race{trial}"
                await asyncio.gather(c1.op("hello", nick=nick), c2.op("hello", nick=nick))
                outcomes = await asyncio.gather(_first(c1), _first(c2))
                assert sorted(outcomes) == ["error", "welcome"], (trial, outcomes)
                await c1.close()
                await c2.close()
        finally:
            await a.stop()
            await b.stop()


async def _first(c: JsonClient) -> str:
    while True:
        ev = await c.event()
        if ev["ev"] in ("welcome", "error"):
            return str(ev["ev"])


async def test_node_survives_redis_absence_and_recovers() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    node, pn = await start_node(url, "lonely", "--redis-timeout", "0.5", wait_ready=False)
    try:
        c = await LineClient.connect(pn)
        await c.expect("* GET_NAME")
        await c.send("early")
        assert (await c.expect("!")).startswith("! relay-unavailable:")
        await c.expect("* GET_NAME")  # asked again on the same connection
        async with redis_server(port):
            await node.wait_line(lambda s: "relay subscribed" in s, timeout=15)
            await c.send("early")
            assert (await c.expect("* welcome")).startswith("* welcome early")
    finally:
        assert await node.stop() == 0


async def test_a_redis_that_may_evict_keys_is_refused_unless_allowed() -> None:
    async with redis_server(None, "--maxmemory-policy", "allkeys-lru") as (url, _):
        node, _port = await start_node(url, "ev", wait_ready=False)
        line = await node.wait_line(lambda s: "maxmemory-policy" in s)
        assert "allkeys-lru" in line and "--allow-eviction" in line
        async with asyncio.timeout(15):
            assert await node.proc.wait() == 2
        await node.stop()
        allowed, port = await start_node(url, "ev2", "--allow-eviction")
        try:
            user = await text_user(port, "risky")
            await user.send("/ping")
            await user.expect("* pong")
        finally:
            assert await allowed.stop() == 0
