"""``hubbub cluster``: one command brings up Redis and N nodes, Ctrl+C takes all down."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import sys

import pytest

from cli.cluster import LISTEN_PORTS

from ..helpers import text_user
from .procs import Proc, hubbub_exit, require_binary

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


SHARD_LINE = re.compile(r"^  master 127\.0\.0\.1:(\d+): slots ([\d, -]+)(?: \(replicas (.*)\))?$")


def started_redis_ports(lines: list[str]) -> list[int]:
    """Every redis-server port the command said it started (masters and replicas)."""
    ports = []
    for line in lines:
        if m := SHARD_LINE.match(line):
            ports.append(int(m[1]))
            ports += [int(r.rsplit(":", 1)[1]) for r in (m[3] or "").split(", ") if r]
    return ports


async def test_cluster_on_a_redis_cluster_chats_in_rooms_on_every_master() -> None:
    """``hubbub cluster --redis-shards 3``: a Redis Cluster of three masters (a replica
    each), nodes on it; two text users on different nodes chat in a room on each master
    (the rooms the command names), and Ctrl+C stops nodes and Redis alike."""
    require_binary("redis-server")
    nodes = 2
    base = consecutive_free_ports(nodes)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "cluster", "--nodes", str(nodes), "--base-port", str(base),
        "--redis-shards", "3", "--redis-replicas", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert child.stdout is not None
    proc = Proc(child, child.stdout)
    try:
        await proc.wait_line(lambda s: s.startswith("Redis Cluster started: 3 masters"),
                             timeout=60)
        rooms_line = await proc.wait_line(lambda s: s.startswith("A room on each master: "),
                                          timeout=60)
        assert any(line.startswith("hubbub cluster is up: 2 nodes on the Redis Cluster")
                   for line in proc.lines)
        masters = [line for line in proc.lines if SHARD_LINE.match(line)]
        assert len(masters) == 3 and all("replicas 127.0.0.1:" in m for m in masters)
        rooms = re.findall(r"/join (\S+) \(127\.0\.0\.1:(\d+)\)", rooms_line)
        assert len(rooms) == 3 and len({port for _, port in rooms}) == 3
        alice = await text_user(base, "alice")
        bob = await text_user(base + 1, "bob")
        for room, _ in rooms:
            await alice.send(f"/join {room}")
            await alice.expect(f"* alice joined {room}")
            await bob.send(f"/join {room}")
            await bob.expect(f"* bob joined {room}")
            await alice.expect(f"* bob joined {room}")
            await alice.send(f"hello {room}")
            assert await bob.expect(f"[{room}]") == f"[{room}] alice: hello {room}"
            await bob.send(f"back from {room}")
            assert await alice.expect(f"[{room}] bob") == f"[{room}] bob: back from {room}"
        proc.signal(signal.SIGINT)
        async with asyncio.timeout(60):
            code = await child.wait()
        assert code == 0, proc.lines[-20:]
        assert any(line == "cluster stopped" for line in proc.lines)
        assert all(refuses(p) for p in range(base, base + nodes))
        assert all(refuses(p) for p in started_redis_ports(proc.lines))
    except BaseException:
        print("\n".join(proc.lines))
        raise
    finally:
        await proc.stop()


async def test_a_redis_cluster_it_started_is_stopped_when_its_nodes_cannot_start() -> None:
    """Whatever becomes of the nodes, the Redis Cluster the command started does not
    outlive it (here the nodes are given an option value they refuse)."""
    require_binary("redis-server")
    base = consecutive_free_ports(1)
    code, out = await hubbub_exit("cluster", "--nodes", "1", "--base-port", str(base),
                                  "--redis-shards", "2", "--lease-ttl", "-1", timeout=60)
    lines = out.splitlines()
    ports = started_redis_ports(lines)
    assert code == 2, out
    assert len(ports) == 2, out
    assert all(refuses(p) for p in ports)


@pytest.mark.parametrize(("args", "names"), [
    (["--redis-replicas", "1"], "--redis-replicas"),
    (["--redis-shards", "17"], "--redis-shards"),
    (["--redis-shards", "2", "--redis-replicas", "5"], "--redis-replicas"),
    (["--redis-shards", "2", "--redis-node-timeout", "10"], "--redis-node-timeout"),
    (["--redis-shards", "2", "--redis-url", "redis://127.0.0.1:1/0"], "--redis-url"),
])
async def test_a_bad_redis_cluster_option_is_one_line_and_status_2(args: list[str],
                                                                   names: str) -> None:
    code, out = await hubbub_exit("cluster", *args)
    assert code == 2, out
    (line,) = out.strip().splitlines()
    assert line.startswith("hubbub cluster: error: ") and names in line


async def test_redis_shards_without_redis_server_is_one_line_and_status_2() -> None:
    code, out = await hubbub_exit("cluster", "--redis-shards", "3",
                                  env={"PATH": "/nonexistent"})
    assert code == 2, out
    (line,) = out.strip().splitlines()
    assert "--redis-shards" in line and "redis-server" in line
