"""A forged resume token against a dead node's name, on real processes: the attacker loops
forged tokens from the node's death until past the reaping of the name and gets nothing.

The window the attack needs (the name's lease ran out, the name is not reaped yet) lasts
from the lease's expiry to the next reaper round after the dead node's heartbeat expired;
both keys expire together, so that window is anywhere from nothing to ``lease_ttl / 2``.
The test makes it certain by giving the dead node's heartbeat key 1.5 s more (as a slower
reaper would), and counts the attempts made inside it."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from node.keys import Keys

from ..helpers import JsonClient, json_user
from .procs import redis_server, start_node

pytestmark = [pytest.mark.redis_server, pytest.mark.timeout(60)]

LEASE_TTL = 2.0
WINDOW = 1.5
"""At least this long the name's lease is gone and the name not yet reaped."""


async def answer(c: JsonClient, ref: int) -> dict[str, Any]:
    """The welcome, or the error that answered the hello ``ref``."""
    while True:
        ev = await c.event()
        if ev["ev"] == "welcome" or (ev["ev"] == "error" and ev.get("ref") == ref):
            return ev


async def test_forged_resume_tokens_never_take_a_dead_operators_name(tmp_path: Path) -> None:
    secret = tmp_path / "oper"
    secret.write_text("oper-secret-file\n")
    async with redis_server() as (url, _), redis.asyncio.Redis.from_url(url) as probe:
        args = ("--auth", "accounts", "--oper-secret-file", str(secret),
                "--lease-ttl", str(LEASE_TTL))
        victim_node, pv = await start_node(url, "ra", *args)
        attacker_node, pa = await start_node(url, "rb", *args)
        try:
            victim = await JsonClient.connect(pv)
            await victim.op("hello", nick="alice")
            token = (await victim.event("welcome"))["token"]
            await victim.op("register", password="alice-password", ref=1)
            await victim.event("ack", ref=1)
            await victim.op("oper", secret="oper-secret-file", ref=2)
            await victim.event("ack", ref=2)
            watcher = await json_user(pa, "watcher")

            victim_node.signal(signal.SIGKILL)
            await victim_node.proc.wait()
            killed = time.monotonic()
            keys = Keys()
            left = await probe.pttl(keys.alive("ra"))
            assert left > 0
            await probe.pexpire(keys.alive("ra"), left + int(WINDOW * 1000))
            reaped = asyncio.ensure_future(watcher.event("quit", nick="alice", timeout=15))

            attacker = await JsonClient.connect(pa)
            forged = itertools.cycle([
                "{", "a", "ra/", '"token":"', "", token[:-1], token.upper(), token + "0",
                f" {token}", "ra/" + "0" * 32, "rb/" + token.partition("/")[2]])
            codes: list[str] = []
            in_window = after_reap = 0
            for ref in itertools.count(1):  # as fast as the node answers, never waiting
                await attacker.op("hello", nick="alice", token=next(forged), ref=ref)
                ev = await answer(attacker, ref)
                assert ev["ev"] == "error", f"a forged token got {ev}"
                codes.append(ev["code"])
                if not await probe.exists(keys.lease("alice")) and \
                        await probe.hexists(keys.info, "alice"):
                    in_window += 1
                if reaped.done():
                    after_reap += 1
                    if after_reap >= 50:
                        break
            reaped_after = time.monotonic() - killed
            # the loop covered the whole story: live lease, expired lease, reaped name
            assert in_window > 10, in_window
            assert set(codes) <= {"bad-args", "login-required", "auth-throttled"}, set(codes)
            assert "auth-throttled" in codes
            # the name is free now: taking it still needs alice's password
            await attacker.op("hello", nick="alice", ref=0)
            assert (await answer(attacker, 0))["code"] == "login-required"
            await attacker.op("bans", ref=-1)
            assert (await answer(attacker, -1))["code"] == "not-registered"
        finally:
            await attacker_node.stop()
            if victim_node.proc.returncode is None:
                await victim_node.stop()
        print(f"{len(codes)} forged resumes ({in_window} in the expired-lease window), name "
              f"reaped {reaped_after:.1f} s after the kill; answers: "
              f"{ {c: codes.count(c) for c in set(codes)} }")
