"""The benchmark's local cluster (cli.bench.spawn.LocalCluster) survives a port that was
free when picked and taken before its node bound it."""

from __future__ import annotations

import itertools
import socket

import pytest

from cli.bench import spawn
from cli.cluster import free_port

from .procs import require_binary

pytestmark = pytest.mark.redis_server


async def test_a_node_whose_port_was_taken_meanwhile_is_started_on_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_binary("redis-server")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        calls = itertools.count()

        def pick() -> int:  # Redis's port first, then the first node's: the squatter's
            return taken if next(calls) == 1 else free_port()

        monkeypatch.setattr(spawn, "free_port", pick)
        async with spawn.LocalCluster(2) as cluster:
            ports = [n.port for n in cluster.probe.nodes]
            assert len(ports) == 2 and taken not in ports
            for port in ports:
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass


async def test_a_local_cluster_on_a_redis_cluster_reads_redis_cpu_per_master() -> None:
    """``LocalCluster(2, redis_shards=3)``: three masters, two nodes on them; the probe
    reads each master's CPU; everything is stopped after, Redis Cluster included, also
    when a node could not start."""
    require_binary("redis-server")
    shards: list[spawn.RedisShard] = []
    cluster = spawn.LocalCluster(2, redis_shards=3)
    try:
        async with cluster:
            shards = list(cluster.probe.redis_shards)
            assert len(shards) == 3 and len({s.pid for s in shards}) == 3
            assert [s.slots for s in shards] == ["0-5460", "5461-10921", "10922-16383"]
            reading = await cluster.probe.sample()
            assert all(c is not None for c in reading["redis_shards_cpu"])
            for node in cluster.probe.nodes:
                with socket.create_connection(("127.0.0.1", node.port), timeout=5):
                    pass
    finally:
        shards = shards or list(cluster.probe.redis_shards)
        assert shards, "the Redis Cluster was not started"
        for shard in shards:  # every master stopped with the rest
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", int(shard.address.rsplit(":", 1)[1])))
