"""Failover with no gap: a client's node is SIGKILLed while another user keeps talking."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from typing import Any

import pytest

from ..helpers import json_user
from .procs import Proc, redis_server, start_node

pytestmark = pytest.mark.redis_server

MSG = re.compile(r"^\[lobby\] bob: m(\d+)$")


async def failover_once(sig: int = signal.SIGKILL, before: int = 5, during: int = 25
                        ) -> float:
    """Run the scenario once; returns seconds from the signal to the client's welcome on B.

    alice (``hubbub connect`` with both nodes, stdin piped) sits on node A; bob on node B
    says ``before`` lines, A gets ``sig`` (SIGKILL: gone; SIGSTOP: frozen, so only the
    missing pong tells; SIGTERM: graceful, ``bye`` with a reconnect hint), bob says
    ``during`` more.  alice must come back on B with the same nick and room, without an
    error, and must have printed every line of bob's exactly once, in order.
    """
    async with redis_server() as (url, _):
        a, pa = await start_node(url, "fa")
        b, pb = await start_node(url, "fb")
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "connect", f"127.0.0.1:{pa}", f"127.0.0.1:{pb}",
            "--nick", "alice", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert child.stdout is not None and child.stdin is not None
        alice = Proc(child, child.stdout)
        try:
            await alice.wait_line(lambda s: s.startswith("* connected to fa"))
            bob = await json_user(pb, "bob")
            n = 0
            for _ in range(before):
                await bob.op("say", text=f"m{n}", ref=n)
                await bob.event("ack", ref=n)
                n += 1
            await alice.wait_line(lambda s: s == f"[lobby] bob: m{before - 1}")
            mark = len(alice.lines)
            killed = time.monotonic()
            a.signal(sig)
            back = ("* resumed on fb", "* connected to fb")
            resumed = asyncio.ensure_future(alice.wait_line(
                lambda s: s.startswith(back), start=mark, timeout=20))
            for _ in range(during):
                await bob.op("say", text=f"m{n}", ref=n)
                await bob.event("ack", ref=n)
                n += 1
            line = await resumed
            took = alice.times[alice.lines.index(line, mark)] - killed
            await alice.wait_line(lambda s: s == f"[lobby] bob: m{n - 1}")
            said = [int(m.group(1)) for line in alice.lines if (m := MSG.match(line))]
            assert said == list(range(n)), said  # every line, once, in order
            assert not [line for line in alice.lines if line.startswith("!")]
            if sig != signal.SIGTERM:  # a graceful node released the name; others resume
                assert line.startswith("* resumed on fb")
            await bob.op("who", room="lobby", ref="w")
            assert "alice" in (await bob.event("who", ref="w"))["nicks"]
            child.stdin.write(b"back on B\n")
            await child.stdin.drain()
            from_alice: dict[str, Any] = {"from": "alice"}
            assert (await bob.event("msg", **from_alice))["text"] == "back on B"
            child.stdin.close()
            async with asyncio.timeout(15):
                assert await child.wait() == 0
            return took
        except BaseException:
            print("\n".join(alice.lines))  # what the client printed, for the report
            raise
        finally:
            a.signal(signal.SIGCONT)
            await alice.stop()
            await a.stop()
            await b.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM],
                         ids=["killed", "frozen", "graceful"])
async def test_client_fails_over_to_another_node_without_a_gap(sig: int) -> None:
    took = await failover_once(sig)
    print(f"failover: back on the other node {took:.2f} s after {signal.Signals(sig).name}")
    assert took < 15
