"""Build the production Redis client (the relay only ever receives one)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["connect_redis"]


def connect_redis(url: str, timeout: float, max_connections: int = 64) -> Redis:
    """A client that fails fast: every command is bounded by ``timeout`` and a timeout is
    never retried (the relay has its own backoff), so a hung Redis never hangs a node.  A
    broken connection is retried once at once: a pooled connection that died while idle
    (Redis restarted, or closed it) costs one reconnect, not a failed command.  The pool
    is bounded and *waits* for a free connection (a burst of registrations queues up
    instead of failing with "too many connections")."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,  # wait this long for a free connection instead of failing at once
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    return Redis(connection_pool=pool)
