"""Case: Redis past its ``maxmemory`` (``noeviction``) while users talk.

A real redis-server with a 3 MiB ``maxmemory`` and two nodes on it.  The test fills Redis
with one key of its own until it refuses writes: both nodes stay up, a JSON and a text
user who say a line are told ``relay-unavailable`` (at once, not after a hang), each node
logs one ``redis out of memory`` warning for the episode, and /metrics shows the memory,
the limit, the names and the episode.  The episode outlasts twice the lease TTL, and no
node's names are reaped meanwhile (renewals write nothing new and go through).  Then the
test deletes its key: the nodes notice by themselves (``redis accepts writes again``) and
chat goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from cli.bench.spawn import scrape_metrics
from cli.cluster import free_port

from ..helpers import text_user
from ..integration.procs import Proc, log_events, redis_server
from .harness import (
    TIMEOUT,
    base_args,
    close_all,
    member,
    node_options,
    redis_client,
    start_nodes,
    stop_all,
    wait_event,
)

pytestmark = pytest.mark.redis_server

MAXMEMORY = 3 * 1024 * 1024
FILLER = "oom-test-filler"
"""The test's own key (outside the nodes' prefix): one string big enough to pass
maxmemory."""


def oom_warnings(proc: Proc) -> list[dict[str, object]]:
    return [e for e in log_events(proc) if e.get("event") == "redis out of memory"]


async def metrics_until(http: int, test: Callable[[dict[str, float]], bool],
                        timeout: float = TIMEOUT) -> dict[str, float]:
    """Scrape a node's /metrics until ``test`` holds for its samples (the node reads
    Redis every 0.2 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        values = await scrape_metrics("127.0.0.1", http)
        if test(values):
            return values
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never passed the test: {values}")
        await asyncio.sleep(0.1)  # polling another process's HTTP endpoint


@pytest.mark.timeout(90)
async def test_a_full_redis_refuses_lines_and_chat_resumes_when_memory_is_freed() -> None:
    async with redis_server(None, "--maxmemory", str(MAXMEMORY),
                            "--maxmemory-policy", "noeviction") as (url, _), \
            redis_client(url) as r:
        http = [free_port(), free_port()]
        nodes = await start_nodes(url, ["o1"], *base_args(
            "--http-port", str(http[0]), *node_options(redis_sample_interval=0.2)))
        nodes += await start_nodes(url, ["o2"], *base_args(
            "--http-port", str(http[1]), *node_options(redis_sample_interval=0.2)))
        (p1, port1), (p2, port2) = nodes
        users = []
        try:
            alice = await member(port1, "alice")
            bob = await member(port2, "bob")
            users = [alice, bob]
            carol = await text_user(port1, "carol")
            await alice.event("join", nick="carol")
            values = await metrics_until(http[0], lambda v: v.get("hubbub_names_online") == 3)
            assert values["hubbub_redis_maxmemory_bytes"] == MAXMEMORY
            assert 0 < values["hubbub_redis_used_memory_bytes"] < MAXMEMORY
            assert values["hubbub_redis_oom"] == 0

            # fill Redis past maxmemory with one key (allowed: Redis checks before a command)
            await r.setrange(FILLER, MAXMEMORY + (1 << 20), "x")
            assert (await r.info("memory"))["used_memory"] > MAXMEMORY
            filled = time.monotonic()

            alice.send("say", text="into a full redis", ref=1)
            await alice.until(lambda: 1 in alice.errors)
            assert alice.errors[1][0] == "relay-unavailable"
            assert alice.errors[1][1] - filled < TIMEOUT
            await carol.send("into a full redis, said as text")
            refused = await carol.expect(lambda s: s.startswith("! "))
            assert refused.startswith("! relay-unavailable:"), refused
            bob.send("join", room="newroom", ref=2)  # a join writes too
            await bob.until(lambda: 2 in bob.errors)
            assert bob.errors[2][0] == "relay-unavailable"
            alice.send("say", text="again", ref=3)
            await alice.until(lambda: 3 in alice.errors)
            assert alice.errors[3][0] == "relay-unavailable"
            await wait_event(p1, "redis out of memory", filled)
            await wait_event(p2, "redis out of memory", filled)
            values = await metrics_until(
                http[0], lambda v: v.get("hubbub_redis_used_memory_bytes", 0) > MAXMEMORY)
            assert values["hubbub_redis_oom"] == 1
            assert values["hubbub_redis_oom_episodes_total"] == 1
            assert values["hubbub_redis_oom_refusals_total"] >= 2
            # the episode outlasts twice the lease TTL (the heartbeat renews every TTL/3):
            # renewals add nothing and go on, so no node's names are reaped meanwhile
            renewals = [v["hubbub_lease_renewals_total"] for v in await asyncio.gather(
                *(metrics_until(h, lambda v: "hubbub_lease_renewals_total" in v)
                  for h in http))]

            def renewed_since(n: float) -> Callable[[dict[str, float]], bool]:
                return lambda v: v["hubbub_lease_renewals_total"] >= n + 7

            await asyncio.gather(*(metrics_until(h, renewed_since(n), timeout=15)
                                   for h, n in zip(http, renewals, strict=True)))
            assert (await r.info("memory"))["used_memory"] > MAXMEMORY  # still full
            for p in (p1, p2):
                assert [e for e in log_events(p)
                        if e.get("event") == "released names of a dead node"] == []
            assert not alice.has("quit") and not bob.has("quit")
            # reads and departures go through a full Redis (they begin by removing)
            bob.send("who", room="lobby")
            who = await bob.event("who")
            assert sorted(who["nicks"]) == ["alice", "bob", "carol"], who
            await carol.send("/quit")
            await carol.closed()
            await alice.event("quit", nick="carol")
            await bob.event("quit", nick="carol")
            assert p1.proc.returncode is None and p2.proc.returncode is None
            assert alice.closed_at is None and bob.closed_at is None

            # free the memory: the nodes find out by themselves, and chat goes on
            await r.delete(FILLER)
            freed = time.monotonic()
            back = await asyncio.gather(wait_event(p1, "redis accepts writes again", freed),
                                        wait_event(p2, "redis accepts writes again", freed))
            alice.send("say", text="after the memory was freed", ref=4)
            await alice.until(lambda: 4 in alice.acks or 4 in alice.errors)
            assert 4 in alice.acks, alice.errors.get(4)
            await bob.until(lambda: any(g.text == "after the memory was freed"
                                        for g in bob.msgs.get("lobby", [])))
            carol = await text_user(port1, "carol")  # the name was released at its quit
            await carol.send("text works again")
            await bob.until(lambda: any(g.text == "text works again"
                                        for g in bob.msgs.get("lobby", [])))
            bob.send("join", room="newroom", ref=5)
            await bob.until(lambda: 5 in bob.acks or 5 in bob.errors
                            or bob.has("join", room="newroom", nick="bob"))
            assert 5 not in bob.errors
            values = await metrics_until(http[0], lambda v: v.get("hubbub_redis_oom") == 0)
            assert values["hubbub_redis_oom_episodes_total"] == 1
            print(f"\nOOM: first line refused {alice.errors[1][1] - filled:.3f} s after the "
                  f"fill; episode {freed - filled:.1f} s, renewals went on (no names reaped); "
                  f"nodes saw writes again {max(back) - freed:.2f} s after the free; "
                  f"refusals counted by o1 {values['hubbub_redis_oom_refusals_total']:.0f}")

            # one warning per node for the whole episode, and no crash anywhere
            for p in (p1, p2):
                assert len(oom_warnings(p)) == 1, [json.dumps(e) for e in oom_warnings(p)]
                assert not [e for e in log_events(p) if e.get("level") in ("error", "critical")]
            assert p1.proc.returncode is None and p2.proc.returncode is None
        finally:
            await close_all(users)
            await stop_all([p for p, _ in nodes])
