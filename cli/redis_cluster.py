"""A throwaway local Redis Cluster, started from the ``redis-server`` binary.

Theory of operation: ``shards`` masters and ``replicas`` replicas of each are started as
``redis-server --cluster-enabled yes`` processes on free loopback ports (each node also
listens on port + 10000, the cluster bus, so both must be free), keeping nothing on disk
but their ``nodes.conf`` in a temporary directory.  The cluster is then formed by hand,
the way ``redis-cli --cluster create`` does it, so that no other binary is needed and the
roles are known: each master gets its own config epoch and an equal range of the 16384
slots, every node meets the first one, and each replica replicates its master.  The start
ends when every node says ``cluster_state:ok``, knows every other node, has its cluster-bus
link to every other node connected (the state says ok before that, and a classic PUBLISH
made meanwhile is not carried across a link that is still down), and every replica's link
to its master is up.  Stopping sends SIGCONT (a frozen node cannot die gracefully),
then SIGTERM, then SIGKILL after a grace period, and removes the directory.

``cluster-node-timeout`` defaults to 2000 ms: short enough that a replica takes over from a
killed master within a few seconds (the 15 s default would outlast a node's outbox).
``cluster-require-full-coverage`` is off: while one shard has no master (between a kill
and its replica's promotion, or with no replica at all) the other shards go on serving
their slots, which is what per-shard isolation needs (with it on, every shard refuses
every command with ``CLUSTERDOWN`` meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["DEFAULT_NODE_TIMEOUT_MS", "SLOTS", "ClusterNode", "LocalRedisCluster",
           "cluster_ports", "slot_ranges", "start_redis_cluster"]

SLOTS: Final = 16384
"""Hash slots of a Redis Cluster."""

DEFAULT_NODE_TIMEOUT_MS: Final = 2000
"""``cluster-node-timeout`` of a local cluster: a killed master's replica serves its slots
about 3.6 s after the kill (Redis's default, 15000, outlasts a node's outbox)."""

BUS_OFFSET: Final = 10000
"""A cluster node's bus port is its port plus this."""

CLUSTER_PORTS: Final = range(20000, 32768 - BUS_OFFSET)
"""Where node ports are picked: the port and its bus port (+10000) both stay below Linux's
ephemeral range (32768-60999), so no outgoing connection can take one meanwhile."""


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """The slots of each of ``shards`` masters: equal consecutive ranges, first to last."""
    return [(i * SLOTS // shards, (i + 1) * SLOTS // shards - 1) for i in range(shards)]


def _free(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nothing listens on, each with its bus port free too."""
    found: list[int] = []
    for port in random.sample(CLUSTER_PORTS, len(CLUSTER_PORTS)):
        if port not in found and _free(port, host) and _free(port + BUS_OFFSET, host):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free port pairs (port, port + {BUS_OFFSET}) found")


@dataclass(eq=False)
class ClusterNode:
    """One redis-server process of the cluster."""

    port: int
    proc: subprocess.Popen[bytes]
    master: int | None = None
    """The port of the master this node was started to replicate; None: started as a
    master (a failover may have changed the roles since: ask the cluster)."""
    client: Redis = field(init=False)

    def __post_init__(self) -> None:
        self.client = Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0,
                            socket_connect_timeout=2.0, decode_responses=True,
                            retry=Retry(NoBackoff(), 0))  # a frozen node fails fast

    async def cluster(self, subcommand: str, *args: Any) -> Any:
        """``CLUSTER subcommand args…`` on this node; its reply as Redis gives it."""
        return await self.client.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", subcommand, *args)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass(eq=False)
class LocalRedisCluster:
    """A started cluster: its nodes, and the questions a caller asks it."""

    nodes: list[ClusterNode]
    node_timeout_ms: int
    binary: str = "redis-server"
    workdir: Path | None = None
    """Where each node keeps its ``nodes.conf`` (one directory per port)."""

    @property
    def masters(self) -> list[ClusterNode]:
        """The nodes started as masters, in slot order (roles may have changed since)."""
        return [n for n in self.nodes if n.master is None]

    @property
    def url(self) -> str:
        """A URL naming one node of the cluster (the first master)."""
        return f"redis://{self.masters[0].address}/0"

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def replicas_of(self, port: int) -> list[ClusterNode]:
        """The nodes started as replicas of the master on ``port``."""
        return [n for n in self.nodes if n.master == port]

    async def _any_node(self) -> ClusterNode:
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(OSError, RedisError):
                    await node.client.ping()
                    return node
        raise RuntimeError("no node of the cluster answers")

    async def keyslot(self, key: str) -> int:
        """The hash slot of ``key`` (as the cluster computes it)."""
        node = await self._any_node()
        return int(await node.cluster("KEYSLOT", key))

    async def slot_owners(self) -> dict[tuple[int, int], int]:
        """Each served slot range and the port of its master now (CLUSTER SLOTS, asked of
        a node that answers)."""
        node = await self._any_node()
        ranges = await node.cluster("SLOTS")
        return {(int(first), int(last)): int(master[1])
                for first, last, master, *_ in _slot_rows(ranges)}

    async def master_of_slot(self, slot: int) -> int:
        """The port of the master serving ``slot`` now."""
        for (first, last), port in (await self.slot_owners()).items():
            if first <= slot <= last:
                return port
        raise LookupError(f"no master serves slot {slot}")

    async def master_of(self, key: str) -> int:
        """The port of the master holding ``key``'s slot now."""
        return await self.master_of_slot(await self.keyslot(key))

    async def wait_ok(self, within: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok``, knows every node, has its
        cluster-bus link to every other running node up, and every running replica's link
        to its master is up."""
        deadline = time.monotonic() + within
        want = len(self.nodes)
        while True:
            problem = await self._problem(want)
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster did not settle in {within:g} s: "
                                   f"{problem}")
            await asyncio.sleep(0.05)  # polling a remote state: there is no event to await

    async def _problem(self, want: int) -> str | None:
        for node in self.nodes:
            if not node.running:
                continue
            try:
                info = await node.cluster("INFO")
                text = info if isinstance(info, str) else str(info)
                fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
                if fields.get("cluster_state") != "ok":
                    return f"{node.address} says cluster_state:{fields.get('cluster_state')}"
                if int(fields.get("cluster_known_nodes", 0)) < want:
                    return f"{node.address} knows {fields.get('cluster_known_nodes')} nodes"
                if (link := await self._link_down(node)) is not None:
                    return f"{node.address}'s cluster-bus link to {link} is not up"
                replication: Any = await node.client.info("replication")
                if (replication.get("role") == "slave"
                        and replication.get("master_link_status") != "up"):
                    return f"{node.address}'s link to its master is down"
            except (OSError, RedisError) as exc:
                return f"{node.address}: {exc}"
        return None

    async def _link_down(self, node: ClusterNode) -> str | None:
        """The first running node ``node`` has no connected cluster-bus link to, if any.
        ``cluster_state:ok`` comes before every link is up, and a classic PUBLISH is
        carried only over links that are: one made meanwhile is not heard across it."""
        running = {other.port for other in self.nodes if other.running}
        for line in str(await node.cluster("NODES")).splitlines():
            fields = line.split()
            if len(fields) < 8 or "myself" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            if port not in running:
                continue
            if fields[7] != "connected" or any(
                    flag in fields[2] for flag in ("handshake", "noaddr", "fail")):
                return f"127.0.0.1:{port}"
        return None

    async def restart(self, port: int, within: float = 30.0) -> None:
        """Start the node on ``port`` again (after it was killed), on the same port and
        with the same ``nodes.conf``: it rejoins the cluster as itself, in the role it had
        last, with no data (nothing is persisted)."""
        node = self.node(port)
        if node.running:
            raise RuntimeError(f"the node on port {port} is still running")
        if self.workdir is None:
            raise RuntimeError("this cluster was not started with a working directory")
        node.proc = _start_process(self.binary, port, self.workdir, self.node_timeout_ms)
        await node.client.connection_pool.disconnect()
        await _wait_answers(node, within)

    async def aclose(self) -> None:
        for node in self.nodes:
            await node.client.aclose()


def _slot_rows(reply: Any) -> list[Any]:
    return list(reply.values()) if isinstance(reply, dict) else list(reply)


def _start_process(binary: str, port: int, workdir: Path,
                   node_timeout_ms: int) -> subprocess.Popen[bytes]:
    home = workdir / str(port)
    home.mkdir(exist_ok=True)  # a restarted node finds its nodes.conf
    return subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms),
         "--dir", str(home), "--save", "", "--appendonly", "no",
         "--maxmemory-policy", "noeviction", "--repl-diskless-sync-delay", "0",
         "--cluster-require-full-coverage", "no",
         "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def _wait_answers(node: ClusterNode, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        if not node.running:
            raise RuntimeError(f"redis-server on port {node.port} exited at start "
                               f"(status {node.proc.returncode})")
        with contextlib.suppress(OSError, RedisError):
            await node.client.ping()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis-server on port {node.port} did not answer")
        await asyncio.sleep(0.05)  # the process gives no event when it is ready


async def _form(cluster: LocalRedisCluster) -> None:
    masters = cluster.masters
    for epoch, (node, (first, last)) in enumerate(
            zip(masters, slot_ranges(len(masters)), strict=True), start=1):
        await node.cluster("SET-CONFIG-EPOCH", epoch)
        await node.cluster("ADDSLOTSRANGE", first, last)
    first_node = cluster.nodes[0]
    for node in cluster.nodes[1:]:
        await node.cluster("MEET", "127.0.0.1", first_node.port)
    ids = {node.port: await node.cluster("MYID")
           for node in masters}
    deadline = time.monotonic() + 30
    for node in cluster.nodes:
        if node.master is None:
            continue
        while True:  # a replica can follow its master only once it has heard of it
            try:
                await node.cluster("REPLICATE", ids[node.master])
                break
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


def _stop(nodes: list[ClusterNode], grace: float) -> None:
    for node in nodes:
        if node.running:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGCONT)  # a frozen node cannot exit
                node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(grace)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


@contextlib.asynccontextmanager
async def start_redis_cluster(shards: int, replicas: int = 0, *, binary: str | None = None,
                              node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
                              within: float = 30.0
                              ) -> AsyncIterator[LocalRedisCluster]:
    """A local Redis Cluster of ``shards`` masters with ``replicas`` replicas each, ready
    (``cluster_state:ok`` everywhere, within ``within`` seconds) when yielded; every
    process is stopped on exit."""
    if not 1 <= shards <= 64 or not 0 <= replicas <= 8:
        raise ValueError("a local Redis Cluster has 1-64 shards and 0-8 replicas per shard")
    binary = binary or shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not on PATH")
    ports = cluster_ports(shards * (1 + replicas))
    nodes: list[ClusterNode] = []
    with tempfile.TemporaryDirectory(prefix="hubbub-redis-cluster-") as workdir:
        try:
            for i, port in enumerate(ports):
                master = None if i < shards else ports[(i - shards) % shards]
                nodes.append(ClusterNode(port, _start_process(binary, port, Path(workdir),
                                                               node_timeout_ms), master))
            cluster = LocalRedisCluster(nodes, node_timeout_ms, binary, Path(workdir))
            for node in nodes:
                await _wait_answers(node, within)
            await _form(cluster)
            await cluster.wait_ok(within)
            yield cluster
        finally:
            for node in nodes:
                await node.client.aclose()
            await asyncio.to_thread(_stop, nodes, 5.0)
