"""Accept keeps working when a node runs out of file descriptors, and recovers.

The node runs as a subprocess (tests/integration/fd_node.py, on fakeredis) so its
open-file limit can be lowered from here (``prlimit``) after it started, below what its
connection cap allows: the limit is then really hit, as when something else takes the
descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ..helpers import LineClient, text_user
from .procs import Proc, is_event

ROOT = Path(__file__).resolve().parents[2]
SPARE = 8
"""Descriptors the node may still open once its limit is lowered."""

pytestmark = [pytest.mark.redis_server,  # a node subprocess (on fakeredis): not the fast set
              pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                                 reason="needs /proc to count a process's descriptors")]


@contextlib.asynccontextmanager
async def fd_node(loop: str, fd_limit: int | None = None
                  ) -> AsyncIterator[tuple[Proc, int]]:
    """The node subprocess, started with open-file limit ``fd_limit`` if given."""

    def limit() -> None:
        if fd_limit is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))

    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.fd_node", loop, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=limit)
    assert child.stderr is not None
    proc = Proc(child, child.stderr)
    try:
        port = json.loads(await proc.wait_line(is_event("node listening")))["port"]
        await proc.wait_line(is_event("relay subscribed"))
        yield proc, port
    finally:
        assert await proc.stop() == 0, "\n".join(proc.lines[-20:])


async def greeted_or_not(client: LineClient, proc: Proc, mark: int) -> str:
    """``greeted``, ``closed`` (accepted and closed at once) or ``paused`` (the node
    logged that it stopped accepting; the client waits in the listen backlog)."""
    greeting = asyncio.create_task(client.reader.readline())
    paused = asyncio.create_task(proc.wait_line(is_event("accept paused"), start=mark))
    done, _ = await asyncio.wait({greeting, paused}, timeout=10,
                                 return_when=asyncio.FIRST_COMPLETED)
    for task in (greeting, paused):
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if greeting in done:
        return "greeted" if greeting.result() else "closed"
    assert paused in done, "neither greeted, closed nor paused within 10 s"
    return "paused"


async def wait_events(proc: Proc, name: str, count: int, start: int) -> None:
    """Wait until ``count`` log events ``name`` were logged after line ``start``."""
    for _ in range(count):
        line = await proc.wait_line(is_event(name), start=start)
        start = proc.lines.index(line, start) + 1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_accept_survives_running_out_of_file_descriptors(loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    async with fd_node(loop) as (proc, port):
        pid = proc.proc.pid
        in_use = open_fds(pid)
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + SPARE, hard))
        mark = len(proc.lines)
        held: list[LineClient] = []
        outcome = "greeted"
        while outcome == "greeted":
            assert len(held) <= SPARE + 4, "the node never ran out"
            held.append(await LineClient.connect(port))
            outcome = await greeted_or_not(held[-1], proc, mark)
        # every descriptor the node could open is a client connection now
        assert open_fds(pid) == in_use + SPARE
        print(f"{loop}: {SPARE} connections accepted, then {outcome}")
        if loop == "asyncio":
            # the standard loop stops accepting for a second, says so once, and retries;
            # clients past the limit wait in the listen backlog
            assert outcome == "paused"
            if len(held) == SPARE:  # the pause was logged as the last one got in
                held.append(await LineClient.connect(port))
            waiting = held[SPARE:]
        else:
            # libuv accepts each connection past the limit and closes it at once, silently
            assert outcome == "closed"
            assert len(held) == SPARE + 1
            waiting = []
        held = held[:SPARE]
        # sessions already open go on working meanwhile
        await held[0].send("holder")
        await held[0].expect("* welcome holder")
        # free the descriptors: the node recovers by itself
        closing = len(proc.lines)
        for c in held:
            await c.close()
        await wait_events(proc, "session closed", SPARE, closing)
        for i, c in enumerate(waiting):  # served now, in order
            await c.expect("* GET_NAME")
            await c.send(f"patient{i}")
            await c.expect(f"* welcome patient{i}")
        if waiting:
            await proc.wait_line(is_event("accept resumed"), start=mark)
        survivor = await text_user(port, "survivor")
        await survivor.send("/ping")
        await survivor.expect("* pong")
        # asyncio reports a failed accept() up to `backlog` times per attempt: the node
        # turns that into one event per episode instead of a flood of tracebacks
        after = proc.lines[mark:]
        assert sum(is_event("accept paused")(s) for s in after) == (
            1 if loop == "asyncio" else 0)
        assert not [s for s in after if "out of system resource" in s]


async def test_a_node_started_with_few_descriptors_caps_connections_below_them() -> None:
    async with fd_node("asyncio", fd_limit=100) as (proc, port):
        line = await proc.wait_line(is_event("connection cap lowered to fit the open-file "
                                             "limit"))
        assert json.loads(line)["max_connections"] == 100 - 64
        held = [await LineClient.connect(port) for _ in range(36)]
        for c in held:
            await c.expect("* GET_NAME")
        extra = await LineClient.connect(port)
        assert await extra.line() == ("! too-many-connections: this node is full (36 "
                                      "connections); try another node or later")
        await extra.closed()
        assert not [s for s in proc.lines if is_event("accept paused")(s)]
