"""``hubbub cluster``: a whole local cluster in one command.

Starts a Redis (a real ``redis-server`` on a free port when one is on PATH, otherwise an
embedded Redis-compatible server), then N node subprocesses on consecutive ports, prints
how to connect, and on Ctrl+C (or SIGTERM) stops every node and the Redis, leaving nothing
running.

With ``--redis-shards N`` the Redis is a local Redis Cluster of N masters (and
``--redis-replicas`` replicas of each) started from the ``redis-server`` binary by
:mod:`cli.redis_cluster`, and the nodes run with ``--redis-cluster``, their URL naming
its first master.  What it prints says which master serves which slots, and names a room
on each master, so a chat across every shard is one ``/join`` away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import typer

from node.keys import Keys
from node.topology import slot_of

from .options import node_args
from .redis_cluster import DEFAULT_NODE_TIMEOUT_MS, LocalRedisCluster, start_redis_cluster

__all__ = ["MAX_REDIS_REPLICAS", "MAX_REDIS_SHARDS", "free_port", "node_command",
           "room_on_each_master", "run_cluster", "start_redis_server", "wait_for_port"]

MAX_REDIS_SHARDS = 16
"""Most masters ``--redis-shards`` starts (each is a process on this host)."""
MAX_REDIS_REPLICAS = 4
"""Most replicas per master ``--redis-replicas`` starts."""
MIN_NODE_TIMEOUT_MS = 100
"""The shortest ``--redis-node-timeout``: shorter, and a busy host's pauses look like a
dead master."""


LISTEN_PORTS = range(20000, 32000)
"""Where free listening ports are picked: below Linux's ephemeral range (32768-60999), so
an outgoing connection (a node's Redis pool, say) cannot take a port between the moment
it is found free and the moment a server binds it."""


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=2000)
"""Ports this process handed out lately: two servers started together (a node's chat and
HTTP ports, say) are never given the same port, which a fresh check alone cannot ensure
because neither is bound yet."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, outside the ephemeral range if possible, and
    not one this process handed out lately."""
    for port in random.sample(LISTEN_PORTS, 50):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.append(port)
            return port
    with socket.socket() as s:  # that range is crowded: let the kernel choose
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1",
                  proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll until something accepts on ``port`` (or ``proc`` exits, or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def start_redis_server(binary: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server on 127.0.0.1:``port`` keeping nothing on disk."""
    with tempfile.TemporaryDirectory(prefix="hubbub-redis-") as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            if not wait_for_port(port, 10, proc=proc):
                raise RuntimeError(f"redis-server did not start on port {port}")
            yield proc
        finally:
            _stop(proc, 5)


@contextlib.contextmanager
def _embedded_redis(port: int) -> Iterator[None]:
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="embedded-redis")
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _stop(proc: subprocess.Popen[bytes], grace: float, *, signalled: bool = False) -> None:
    """SIGTERM (once: a second one would force a node to skip its drain), wait, then kill."""
    if proc.poll() is None and not signalled:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        _stop(proc, 12, signalled=True)


def node_command(port: int, http_port: int, redis_url: str, node_id: str,
                 **options: object) -> list[str]:
    """The command line of a ``hubbub node`` on loopback, with its HTTP endpoint and any
    further options by name."""
    return [sys.executable, "-m", "cli", "node", *node_args(
        host="127.0.0.1", port=port, http_host="127.0.0.1", http_port=http_port,
        redis_url=redis_url, node_id=node_id, **options)]


def _error(text: str) -> int:
    """An operator's mistake: one line, exit status 2 (as ``hubbub node``)."""
    typer.echo(f"hubbub cluster: error: {text}", err=True)
    return 2


def _redis_problem(url: str) -> str | None:
    """Why the given Redis cannot serve the cluster, or None (it answered a PING)."""
    import asyncio

    from node.config import ConfigError, NodeConfig
    from node.errors import StartupError
    from node.startup import wait_for_redis

    from .redis_client import connect_redis

    try:
        NodeConfig(node_id="cluster", redis_url=url)
    except ConfigError as exc:
        return str(exc)

    async def check() -> None:
        redis = connect_redis(url, 2.0, max_connections=2)
        try:
            await wait_for_redis(redis, url, redis_timeout=2.0, give_up_after=5.0,
                                 since=asyncio.get_running_loop().time())
        finally:
            await redis.aclose()

    try:
        asyncio.run(check())
    except StartupError as exc:
        return exc.text
    return None


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One master of a started Redis Cluster, for the operator."""

    address: str
    slots: list[tuple[int, int]]
    replicas: list[str]
    room: str
    """A room whose slot this master serves."""


def room_on_each_master(owners: dict[tuple[int, int], int], prefix: str = "hubbub:",
                        stem: str = "room") -> dict[int, str]:
    """For each master (port) of a slot map, the first room ``stem0``, ``stem1``… whose
    keys hash to a slot it serves."""
    found: dict[int, str] = {}
    keys = Keys(prefix)
    masters = set(owners.values())
    for i in range(100_000):
        slot = slot_of(keys.history(f"{stem}{i}"))
        port = next(p for (first, last), p in owners.items() if first <= slot <= last)
        found.setdefault(port, f"{stem}{i}")
        if len(found) == len(masters):
            break
    return found


@contextlib.contextmanager
def _local_redis_cluster(binary: str, shards: int, replicas: int, node_timeout_ms: int
                         ) -> Iterator[tuple[LocalRedisCluster, list[ShardInfo]]]:
    """A local Redis Cluster (see :mod:`cli.redis_cluster`) started and stopped on an event
    loop of its own, and what each master serves."""
    loop = asyncio.new_event_loop()
    started = start_redis_cluster(shards, replicas, binary=binary,
                                  node_timeout_ms=node_timeout_ms)
    try:
        cluster = loop.run_until_complete(started.__aenter__())
        try:
            owners = loop.run_until_complete(cluster.slot_owners())
            rooms = room_on_each_master(owners)
            info = [ShardInfo(master.address,
                              sorted(r for r, p in owners.items() if p == master.port),
                              [r.address for r in cluster.replicas_of(master.port)],
                              rooms[master.port])
                    for master in cluster.masters]
            yield cluster, info
        finally:
            loop.run_until_complete(started.__aexit__(None, None, None))
    finally:
        loop.close()


def _cluster_options_problem(redis_url: str | None, shards: int, replicas: int,
                             node_timeout_ms: int) -> str | None:
    if not 0 <= shards <= MAX_REDIS_SHARDS:
        return f"--redis-shards must be 0 to {MAX_REDIS_SHARDS}, got {shards}"
    if not 0 <= replicas <= MAX_REDIS_REPLICAS:
        return f"--redis-replicas must be 0 to {MAX_REDIS_REPLICAS}, got {replicas}"
    if node_timeout_ms < MIN_NODE_TIMEOUT_MS:
        return (f"--redis-node-timeout must be at least {MIN_NODE_TIMEOUT_MS} ms, got "
                f"{node_timeout_ms}")
    if shards == 0 and replicas:
        return "--redis-replicas needs --redis-shards (replicas of a Redis Cluster's masters)"
    if shards and redis_url is not None:
        return ("--redis-shards starts its own Redis Cluster: give it or --redis-url "
                "(HUBBUB_CLUSTER_REDIS_URL), not both")
    if shards and shutil.which("redis-server") is None:
        return ("--redis-shards needs the redis-server binary, which is not on PATH "
                "(install it, e.g. apt-get install redis-server)")
    return None


def run_cluster(*, nodes: int, base_port: int, redis_url: str | None, lease_ttl: float,
                redis_shards: int = 0, redis_replicas: int = 0,
                redis_node_timeout: int = DEFAULT_NODE_TIMEOUT_MS) -> int:
    problem = _cluster_options_problem(redis_url, redis_shards, redis_replicas,
                                       redis_node_timeout)
    if problem is not None:
        return _error(problem)
    if not 1 <= base_port <= 65536 - nodes:
        return _error(f"ports {base_port}-{base_port + nodes - 1} are not all valid port "
                      "numbers (--base-port)")
    for port in range(base_port, base_port + nodes):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the nodes will
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return _error(f"port {port} is already in use; stop what holds it or "
                              "choose other ports (--base-port)")
    if redis_url is not None and (problem := _redis_problem(redis_url)) is not None:
        return _error(f"{problem} (--redis-url / HUBBUB_CLUSTER_REDIS_URL)")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    with contextlib.ExitStack() as stack:
        shards: list[ShardInfo] = []
        if redis_shards:
            binary = shutil.which("redis-server")
            assert binary is not None  # checked with the options
            try:
                cluster, shards = stack.enter_context(_local_redis_cluster(
                    binary, redis_shards, redis_replicas, redis_node_timeout))
            except (OSError, RuntimeError, TimeoutError) as exc:
                typer.echo(f"hubbub cluster: the Redis Cluster did not start: {exc}", err=True)
                return 1
            redis_url = cluster.url
            typer.echo(f"Redis Cluster started: {redis_shards} masters, {redis_replicas} "
                       f"replica(s) each, cluster-node-timeout {redis_node_timeout} ms")
            for shard in shards:
                slots = ", ".join(f"{a}-{b}" for a, b in shard.slots)
                copies = f" (replicas {', '.join(shard.replicas)})" if shard.replicas else ""
                typer.echo(f"  master {shard.address}: slots {slots}{copies}")
        elif redis_url is None:
            port = free_port()
            binary = shutil.which("redis-server")
            if binary:
                stack.enter_context(start_redis_server(binary, port))
                typer.echo(f"redis-server started on 127.0.0.1:{port}")
            else:
                stack.enter_context(_embedded_redis(port))
                typer.echo("notice: redis-server is not on PATH; using the embedded "
                           "Redis-compatible server (fine for a demo, slow; install "
                           "redis-server for real use)")
            redis_url = f"redis://127.0.0.1:{port}/0"
        if stop.is_set():  # Ctrl+C while Redis was starting: no node to start
            typer.echo("stopping the cluster…")
            return 130
        procs: list[subprocess.Popen[bytes]] = []
        stack.callback(_stop_all, procs)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cwd = Path(__file__).resolve().parent.parent
        http_ports = [free_port() for _ in range(nodes)]
        for i in range(nodes):
            port = base_port + i
            procs.append(subprocess.Popen(
                node_command(port, http_ports[i], redis_url, f"node{i + 1}", lease_ttl=lease_ttl,
                             **({"redis_cluster": True} if redis_shards else {})),
                env=env,
                cwd=cwd, start_new_session=True))
        for i, proc in enumerate(procs):
            if not wait_for_port(base_port + i, 15, proc=proc):
                if proc.poll() == 2:  # a mistake it has named on stderr already
                    return _error(f"node{i + 1} could not start (see its error above)")
                typer.echo(f"node{i + 1} did not start", err=True)
                return 1
        typer.echo("")
        where = (f"the Redis Cluster of {redis_shards} masters at {redis_url}" if redis_shards
                 else f"Redis {redis_url}")
        typer.echo(f"hubbub cluster is up: {nodes} nodes on {where}")
        for i in range(nodes):
            typer.echo(f"  node{i + 1}: nc localhost {base_port + i}    "
                       f"(health: http://127.0.0.1:{http_ports[i]}/readyz)")
        typer.echo("Connect with nc (or telnet) to any node, type a nickname, then chat.")
        if shards:
            typer.echo("A room on each master: " + ", ".join(
                f"/join {shard.room} ({shard.address})" for shard in shards))
        typer.echo("Press Ctrl+C to stop the cluster.")
        reported: set[int] = set()
        while not stop.wait(0.5):
            for i, proc in enumerate(procs):
                if i not in reported and proc.poll() is not None:
                    reported.add(i)  # the others keep serving: that is what a cluster is for
                    typer.echo(f"node{i + 1} exited (status {proc.returncode}); "
                               f"{nodes - len(reported)} nodes still running", err=True)
            if len(reported) == nodes:
                typer.echo("every node has exited; stopping", err=True)
                return 1
        typer.echo("stopping the cluster…")
    typer.echo("cluster stopped")
    return 0
