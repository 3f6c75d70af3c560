"""Run one chat node in this process until SIGTERM/SIGINT (a second signal forces).

A node that cannot start raises :class:`~node.errors.StartupError` out of
:func:`run_node`; the command turns it into one line and exit status 2."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from urllib.parse import urlsplit, urlunsplit

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from node.config import NodeConfig
from node.errors import StartupError
from node.redis_errors import describe
from node.server import ChatNode
from node.startup import check_redis, redis_address
from node.topology import ClusterTopology

from .redis_client import connect_redis

__all__ = ["run_node"]

log = structlog.get_logger("hubbub.cli")


async def _main(config: NodeConfig) -> None:
    try:
        redis = connect_redis(config.redis_url, config.redis_timeout, config.redis_pool,
                              ca=config.redis_ca or None, pool_wait=config.redis_pool_wait)
    except ValueError as exc:  # what NodeConfig's own check of the URL let through
        raise StartupError(f"the Redis URL cannot be used: {exc}",
                           settings=("redis_url",)) from None
    topology: ClusterTopology | None = None
    if config.redis_cluster:
        try:
            topology = await discover_cluster(config, redis)
        except BaseException:
            await redis.aclose()
            raise
    node = ChatNode(config, topology if topology is not None else redis)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("signal received, draining", signal=signal.Signals(signum).name)
            node.stop()
        else:
            log.warning("second signal, exiting now")
            os._exit(1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await node.run()
    finally:
        if topology is not None:
            await topology.aclose()
        await redis.aclose()


def shard_url(url: str, host: str, port: int) -> str:
    """``url`` (credentials, scheme, database) pointing at another node of the cluster."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    where = f"[{host}]" if ":" in host else host
    netloc = f"{userinfo}@{where}:{port}" if userinfo else f"{where}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def discover_cluster(config: NodeConfig, seed: Redis) -> ClusterTopology:
    """The shards of the Redis Cluster whose node ``redis_url`` names (``seed``: its
    client): each master gets a client made like the seed's (same credentials, TLS,
    timeouts and pool).  Every master must be a Redis 7 cluster node that answers now.

    Raises:
        StartupError: the URL's node cannot be reached or is not a cluster node, the slot
            map cannot be read, or a master cannot serve the node.
    """
    url, timeout = config.redis_url, config.redis_timeout

    def connect(host: str, port: int) -> Redis:
        return connect_redis(shard_url(url, host, port), timeout, config.redis_pool,
                             ca=config.redis_ca or None, pool_wait=config.redis_pool_wait)

    unreachable = await check_redis(seed, url, timeout, cluster=True)
    if unreachable is not None:
        raise StartupError(f"cannot reach the Redis Cluster node at {redis_address(url)} "
                           f"({describe(unreachable)})", settings=("redis_url",))
    try:
        async with asyncio.timeout(timeout * 2):
            topology = await ClusterTopology.discover(seed, connect)
    except (RedisError, TimeoutError) as exc:
        raise StartupError(f"the slot map of the Redis Cluster at {redis_address(url)} "
                           f"cannot be read ({describe(exc)})",
                           settings=("redis_url",)) from None
    try:
        for shard in topology.shards:
            where = shard_url(url, *_host_port(shard.name))
            unreachable = await check_redis(shard.client, where, timeout, cluster=True)
            if unreachable is not None:
                raise StartupError(
                    f"the Redis Cluster master at {redis_address(where)} cannot be reached "
                    f"({describe(unreachable)})", settings=("redis_url",))
    except BaseException:
        await topology.aclose()
        raise
    log.info("redis cluster found", shards=[s.name for s in topology.shards])
    return topology


def _host_port(name: str) -> tuple[str, int]:
    host, _, port = name.rpartition(":")
    return host, int(port)


def run_node(config: NodeConfig) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is an optional speed-up
        asyncio.run(_main(config))
    else:
        if sys.version_info >= (3, 12):
            uvloop.run(_main(config))
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(_main(config))
