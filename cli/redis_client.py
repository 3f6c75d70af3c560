"""Build the production Redis client (the relay only ever receives one)."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["connect_redis"]


def connect_redis(url: str, timeout: float, max_connections: int = 64,
                  ca: str | None = None, pool_wait: float | None = None) -> Redis:
    """A client that fails fast: every command is bounded by ``timeout`` and a timeout is
    never retried (the relay has its own backoff), so a hung Redis never hangs a node.  A
    broken connection is retried once at once: a pooled connection that died while idle
    (Redis restarted, or closed it) costs one reconnect, not a failed command.  The pool
    is bounded and *waits* up to ``pool_wait`` (default: ``timeout``) for a free
    connection (a burst of registrations queues up instead of failing with "too many
    connections").

    The URL carries the credentials: ``redis://USER:PASSWORD@host:6379/0`` (an ACL user;
    ``redis://:PASSWORD@…`` for the default user).  ``rediss://`` speaks TLS 1.2 or later
    and always verifies the server's certificate and host name, against ``ca`` (PEM CA
    certificates) or the system's CAs."""
    tls: dict[str, Any] = {}
    if urlsplit(url).scheme == "rediss":
        tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True,
               "ssl_min_version": ssl.TLSVersion.TLSv1_2, "ssl_ca_certs": ca or None}
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        # wait this long for a free connection instead of failing at once
        timeout=timeout if pool_wait is None else pool_wait,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_timeout=False,
        health_check_interval=0,
        **tls,
    )
    return Redis(connection_pool=pool)
