"""``hubbub cluster``: one command brings up Redis and N nodes, Ctrl+C takes all down."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys

import pytest

from cli.cluster import LISTEN_PORTS

from ..helpers import text_user
from .procs import Proc, require_binary

pytestmark = pytest.mark.redis_server


def consecutive_free_ports(n: int) -> int:
    """A base port such that base .. base+n-1 are all free right now."""
    # below the ephemeral range: a node's outgoing connections cannot take these ports
    # between this check and the nodes binding them
    for base in random.sample(LISTEN_PORTS, 50):
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports found")


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("redis", ["redis-server", "embedded"])
async def test_cluster_command_runs_and_stops_cleanly(redis: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if redis == "redis-server":
        require_binary("redis-server")
    else:
        env["PATH"] = "/nonexistent"  # no redis-server: the embedded server takes over
    nodes = 3
    base = consecutive_free_ports(nodes)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "cluster", "--nodes", str(nodes), "--base-port", str(base),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    assert child.stdout is not None
    proc = Proc(child, child.stdout)
    try:
        await proc.wait_line(lambda s: s.startswith("hubbub cluster is up"), timeout=30)
        if redis == "embedded":
            assert any("embedded" in line for line in proc.lines)
        alice = await text_user(base, "alice")
        bob = await text_user(base + 1, "bob")
        carol = await text_user(base + 2, "carol")
        await alice.expect("* carol joined")
        await alice.send("hi all")
        assert await bob.expect("[lobby]") == "[lobby] alice: hi all"
        assert await carol.expect("[lobby]") == "[lobby] alice: hi all"
        proc.signal(signal.SIGINT)
        async with asyncio.timeout(30):
            code = await child.wait()
        assert code == 0, proc.lines[-20:]
        assert any(line == "cluster stopped" for line in proc.lines)
        assert all(refuses(p) for p in range(base, base + nodes))
    except BaseException:
        print("\n".join(proc.lines))  # the cluster's and its nodes' output, for the report
        raise
    finally:
        await proc.stop()
