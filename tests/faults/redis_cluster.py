"""A real local Redis Cluster for the fault suite, and the faults done to it.

The cluster itself comes from :func:`cli.redis_cluster.start_redis_cluster` (the same
starter a local deployment uses); here are what only tests do: find keys on a given
shard, SIGKILL or SIGSTOP a master and wait for its replica to take over, and move a
slot from one master to another while clients use it, restart a shard empty; and start
``hubbub node`` processes on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from cli.cluster import free_port
from cli.redis_cluster import ClusterNode, LocalRedisCluster, start_redis_cluster

from ..integration.procs import Proc, require_binary, start_node

__all__ = ["cluster_client", "command", "freeze", "global_slots", "kill", "local_cluster",
           "master_serving", "migrate_slot", "names_on_each_master", "pubsub_links",
           "restart_empty", "room_key", "start_cluster_nodes", "wait_for_new_master",
           "wait_ready"]

READY_TIMEOUT = 20.0
"""Seconds a node on the cluster has from listening to ``/readyz`` saying 200."""


def room_key(name: str) -> str:
    """A room's stream key (the default prefix): its slot is the room's."""
    return f"hubbub:{{room:{name}}}:hist"


def global_slots() -> dict[str, str]:
    """The cluster-wide keys' hash tags and one key of each (names, room index, events,
    moderation, accounts)."""
    return {tag: f"hubbub:{{{tag}}}" for tag in ("nicks", "rooms", "events", "mod",
                                                   "accounts")}


async def master_serving(cluster: LocalRedisCluster, tag: str | None, *,
                         serving: bool = True) -> int:
    """The master serving the hash tag ``tag`` (``nicks``...), or with ``serving=False``
    one serving none of the cluster-wide tags if there is one, else the first that does
    not serve ``tag``."""
    keys = global_slots()
    if serving:
        assert tag is not None
        return await cluster.master_of(keys[tag])
    busy = {await cluster.master_of(k) for k in keys.values()}
    masters = [m.port for m in cluster.masters]
    free = [p for p in masters if p not in busy]
    if free:
        return free[0]
    avoid = await cluster.master_of(keys[tag]) if tag else None
    return next(p for p in masters if p != avoid)


@contextlib.asynccontextmanager
async def cluster_client(cluster: LocalRedisCluster) -> AsyncIterator[Any]:
    """The test's own cluster client (replies as ``str``; typed ``Any`` because
    redis-py's annotations cannot say so), started from a node that is running (the
    first master may have been killed)."""
    seed = next(n for n in cluster.nodes if n.running)
    client = RedisCluster(host="127.0.0.1", port=seed.port, decode_responses=True,
                          socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


async def wait_ready(http_port: int, proc: Proc, timeout: float = READY_TIMEOUT) -> None:
    """Until the node's ``/readyz`` answers 200: on a cluster, every shard's link is
    subscribed and its canary came back (polled: another process's state)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if proc.proc.returncode is not None:
            raise AssertionError(f"the node exited ({proc.proc.returncode}) before it was "
                                 "ready:\n" + "\n".join(proc.lines[-20:]))
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
                writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
                status = await reader.read()
                writer.close()
            last = status.decode(errors="replace").split("\r\n", 1)[0]
            if b" 200 " in status.split(b"\r\n", 1)[0]:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still says {last!r} after {timeout:g} s:\n"
                                 + "\n".join(proc.lines[-20:]))
        await asyncio.sleep(0.1)  # polling another process's readiness


def _refusal(text: str) -> str | None:
    """The error of a ``node cannot run`` event among a node's output lines."""
    for line in text.splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            event = json.loads(line)
            if event.get("event") == "node cannot run":
                return f"{event.get('error')} ({event.get('option')})"
    return None


async def start_cluster_nodes(cluster: LocalRedisCluster, ids: Sequence[str], *args: str,
                              user: tuple[str, str] | None = None
                              ) -> list[tuple[Proc, int]]:
    """``hubbub node --redis-cluster`` processes (concurrently), node ``i``'s URL naming
    master ``i`` (any node of the cluster will do: each must find the others), as the
    Redis ``user`` (name, password) when given; returns once each is ready.  A node that
    refuses to start fails the test with its reason."""
    masters = cluster.masters
    credentials = f"{user[0]}:{user[1]}@" if user else ""

    async def one(i: int, node_id: str) -> tuple[Proc, int]:
        http = free_port()
        url = f"redis://{credentials}{masters[i % len(masters)].address}/0"
        try:
            # the endpoint last: base_args() gives "--http-port 0", and the last one wins
            proc, port = await start_node(url, node_id, "--redis-cluster", *args,
                                          "--http-port", str(http), wait_ready=False)
        except RuntimeError as exc:
            reason = _refusal(str(exc))
            if reason is not None:
                pytest.fail(f"node {node_id} refused to start on the Redis Cluster: {reason}")
            raise
        try:
            await wait_ready(http, proc)
        except BaseException:
            await proc.stop()
            raise
        return proc, port

    started = await asyncio.gather(*(one(i, n) for i, n in enumerate(ids)),
                                   return_exceptions=True)
    failed = [r for r in started if isinstance(r, BaseException)]
    if failed:  # stop the ones that did start, then say why the others did not
        await asyncio.gather(*(r[0].stop() for r in started if not isinstance(r, BaseException)))
        raise failed[0]
    return [r for r in started if not isinstance(r, BaseException)]


async def pubsub_links(cluster: LocalRedisCluster) -> dict[int, int]:
    """Pub/sub connections on each running master now (``CLIENT LIST TYPE pubsub``)."""
    owners = set((await cluster.slot_owners()).values())
    out = {}
    for port in owners:
        out[port] = len(await cluster.node(port).client.client_list(_type="pubsub"))
    return out


async def restart_empty(cluster: LocalRedisCluster, master: int, within: float = 30.0
                        ) -> float:
    """SIGKILL the master on ``master`` and its replicas (replicas first: none takes
    over), then start them again on their ports with their ``nodes.conf``: the shard
    serves the same slots, with no data.  Returns ``time.monotonic()`` once every node
    says the cluster is ok again."""
    for replica in cluster.replicas_of(master):
        kill(cluster, replica.port)
    kill(cluster, master)
    await cluster.restart(master, within)
    for replica in cluster.replicas_of(master):
        await cluster.restart(replica.port, within)
    await cluster.wait_ok(within)
    return time.monotonic()


async def command(node: ClusterNode, *args: Any) -> Any:
    """Any command on one node of the cluster (``CLUSTER SETSLOT``, ``MIGRATE``, ``ACL``…)."""
    return await node.client.execute_command(*args)  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def local_cluster(shards: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000
                        ) -> AsyncIterator[LocalRedisCluster]:
    """A ready Redis Cluster (skips the test without redis-server, fails under CI=true)."""
    binary = require_binary("redis-server")
    async with start_redis_cluster(shards, replicas, binary=binary,
                                   node_timeout_ms=node_timeout_ms) as cluster:
        yield cluster


async def names_on_each_master(cluster: LocalRedisCluster, key: Callable[[str], str],
                               per_master: int = 1, stem: str = "room"
                               ) -> dict[int, list[str]]:
    """For each master now serving slots, ``per_master`` names (``stem0``, ``stem1``…)
    whose key ``key(name)`` hashes to a slot it serves: rooms spread over every shard."""
    owners = await cluster.slot_owners()
    found: dict[int, list[str]] = {port: [] for port in set(owners.values())}
    for i in range(100_000):
        name = f"{stem}{i}"
        port = await cluster.master_of_slot(await cluster.keyslot(key(name)))
        if len(found[port]) < per_master:
            found[port].append(name)
            if all(len(names) == per_master for names in found.values()):
                return found
    raise AssertionError("could not find names for every master")


def kill(cluster: LocalRedisCluster, port: int) -> None:
    """SIGKILL the node on ``port`` (no goodbye to the cluster, nothing saved)."""
    node = cluster.node(port)
    node.proc.kill()
    node.proc.wait()


@contextlib.contextmanager
def freeze(cluster: LocalRedisCluster, port: int) -> Iterator[None]:
    """SIGSTOP the node on ``port`` for the block, SIGCONT after it (whatever happened)."""
    pid = cluster.node(port).proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def wait_for_new_master(cluster: LocalRedisCluster, old: int, within: float = 30.0
                              ) -> tuple[int, float]:
    """Until the slots ``old`` served are served by another node and the running nodes
    say ``cluster_state:ok``.  Returns that node's port and the seconds it took."""
    began = time.monotonic()
    deadline = began + within
    while True:
        with contextlib.suppress(RuntimeError, OSError):
            owners = await cluster.slot_owners()
            if old not in owners.values() and len(set(owners.values())) == len(
                    {n.port for n in cluster.masters}):
                new = next(p for p in owners.values()
                           if p not in {m.port for m in cluster.masters})
                await cluster.wait_ok(max(0.1, deadline - time.monotonic()))
                return new, time.monotonic() - began
        if time.monotonic() > deadline:
            raise TimeoutError(f"no replica took over from {old} in {within:g} s")
        await asyncio.sleep(0.05)  # polling the cluster's view: there is no event to await


async def migrate_slot(cluster: LocalRedisCluster, slot: int, target: int, *,
                       batch: int = 10,
                       between: Callable[[], Awaitable[None]] | None = None) -> int:
    """Move ``slot`` to the master on ``target`` as ``redis-cli --cluster reshard`` does:
    IMPORTING on the target, MIGRATING on the source, MIGRATE the keys ``batch`` at a time
    (awaiting ``between()`` after each batch, so clients can act mid-move), then SETSLOT
    NODE on both and every other master.  Returns how many keys moved."""
    source = await cluster.master_of_slot(slot)
    if source == target:
        raise ValueError(f"slot {slot} is already on {target}")
    src, dst = cluster.node(source), cluster.node(target)
    src_id = await command(src, "CLUSTER", "MYID")
    dst_id = await command(dst, "CLUSTER", "MYID")
    await command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    await command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    moved = 0
    while keys := await command(src, "CLUSTER", "GETKEYSINSLOT", slot, batch):
        await command(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
        if between is not None:
            await between()
    await command(dst, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    await command(src, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    for node in cluster.nodes:
        if node.port not in (source, target) and node.running:
            with contextlib.suppress(Exception):  # a replica may refuse; gossip tells it
                await command(node, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    return moved

