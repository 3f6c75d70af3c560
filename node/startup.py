"""What a starting node checks, and how a failed check is told: one :class:`StartupError`
naming the settings that would fix it.

A mistake in a node's settings should stop it at once with one line, not leave a node
that runs and can never work.  Two kinds of trouble are told apart:

* **Mistakes**, which waiting cannot fix: a port another process holds, an address the
  host does not have, a Redis that answers but refuses the node (wrong or missing
  password, a database number Redis does not have), something that is not Redis at all,
  TLS to Redis that fails.  The start ends at once.
* **An unreachable Redis** (refused, timed out, a name that does not resolve yet): it may
  be starting too, so the node serves and waits for it for up to
  ``redis_start_timeout`` seconds, then gives up.  Once Redis has answered, losing it
  later is an outage, not a mistake: the relay waits for it however long it takes.

Once Redis answers, the node asks what it is (``HELLO``, which every ACL user may run):
the bus uses Redis 7's sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``) on a standalone Redis
too, so an older Redis is refused; and a Redis Cluster node without ``--redis-cluster``
(or a standalone Redis with it) is refused with one line naming that option.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from typing import Any, Final
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, InvalidResponse, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import backoff
from .errors import StartupError
from .pause import pause

__all__ = ["MIN_REDIS", "check_redis", "listen_error", "mode_problem", "redis_address",
           "server_problem", "wait_for_redis"]

MIN_REDIS: Final = (7, 0)
"""The oldest Redis the node runs on (sharded pub/sub arrived in 7.0)."""



def redis_address(url: str) -> str:
    """Where ``url`` points, without its credentials: ``redis://host:port/db``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{parts.port or 6379}/{parts.path.strip('/') or '0'}"


def listen_error(exc: OSError, host: str, port: int, setting: str,
                 host_setting: str) -> StartupError:
    """A listener that could not be opened, as the settings to change (``setting`` is the
    port's, ``host_setting`` the address's)."""
    where = f"port {port}" if host in ("", "0.0.0.0", "::") else f"port {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{where} is already in use", settings=(setting,))
    if exc.errno == errno.EACCES:
        return StartupError(f"not allowed to listen on {where} (ports below 1024 need "
                            "privileges)", settings=(setting,))
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot listen on {host}: not an address of this host",
                            settings=(host_setting,))
    if isinstance(exc, socket.gaierror):
        return StartupError(f"cannot listen on {host}: {exc.strerror}",
                            settings=(host_setting,))
    return StartupError(f"cannot listen on {where}: {exc.strerror or exc}",
                        settings=(setting, host_setting))


async def check_redis(redis: Redis, url: str, redis_timeout: float, *,
                      cluster: bool = False) -> Exception | None:
    """Ask Redis once (PING, within ``redis_timeout``).  None: it answered.  An exception: it
    could not be reached (worth waiting for).  ``cluster``: the node was told the URL
    names a Redis Cluster node (``redis_cluster``).

    Raises:
        StartupError: Redis answered but will never serve this node as configured.
    """
    where = redis_address(url)
    try:
        async with asyncio.timeout(redis_timeout):
            await redis.ping()
    except AuthenticationError as exc:  # before ConnectionError: it is one in redis-py
        parts = urlsplit(url)
        if parts.password is None and parts.username is None:
            text = (f"Redis at {where} wants a password and the URL gives none: "
                    "redis://:PASSWORD@HOST:PORT/DB (redis://USER:PASSWORD@… for an ACL "
                    "user)")
        else:
            text = f"Redis at {where} refused the URL's user or password ({exc})"
        raise StartupError(text, settings=("redis_url",)) from None
    except InvalidResponse:
        raise StartupError(f"{where} does not answer like a Redis server (is that the "
                           "right port?)", settings=("redis_url",)) from None
    except ResponseError as exc:  # e.g. "DB index is out of range", NOPERM
        raise StartupError(f"Redis at {where} refused this node: {exc}",
                           settings=("redis_url",)) from None
    except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError,
            RuntimeError) as exc:  # RuntimeError: uvloop on a reset connection (redis_errors)
        tls = _tls_failure(exc)
        if tls is not None:
            raise StartupError(f"TLS to Redis at {where} failed: {tls}",
                               settings=("redis_url", "redis_ca")) from None
        return exc
    except RedisError as exc:
        raise StartupError(f"Redis at {where} cannot be used: {exc}",
                           settings=("redis_url",)) from None
    try:
        async with asyncio.timeout(redis_timeout):
            hello = await redis.execute_command("HELLO")  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if "unknown command" not in str(exc).lower():
            raise StartupError(f"Redis at {where} refused this node: {exc}",
                               settings=("redis_url",)) from None
        hello = {"server": "redis", "version": "6"}  # HELLO arrived in Redis 6
    except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError,
            RuntimeError) as exc:
        return exc
    problem = server_problem(hello)
    if problem is not None:
        raise StartupError(f"Redis at {where} {problem}", settings=("redis_url",))
    problem = mode_problem(hello, cluster)
    if problem is not None:
        raise StartupError(f"Redis at {where} {problem}", settings=("redis_cluster",))
    return None


def server_problem(hello: Any) -> str | None:
    """Why the server that answered ``HELLO`` with ``hello`` (a map, or RESP2's flat list)
    cannot serve a node, or None: it is Redis 7 or later (or another server speaking the
    same commands at that level: Valkey; the embedded fakeredis)."""
    fields = _fields(hello)
    server, version = fields.get("server", "redis"), fields.get("version", "")
    if server != "fakeredis":  # the embedded server numbers its own releases
        try:
            found = tuple(int(part) for part in version.split(".")[:2])
        except ValueError:
            found = ()
        if found < MIN_REDIS:
            need = ".".join(map(str, MIN_REDIS))
            return (f"is {server} {version or '(unknown version)'}: hubbub needs Redis {need} "
                    "or later (sharded pub/sub)")
    return None


def mode_problem(hello: Any, cluster: bool) -> str | None:
    """Why the server that answered ``HELLO`` with ``hello`` does not match the mode the
    node was told (``cluster``: a Redis Cluster node), or None."""
    found = _fields(hello).get("mode") == "cluster"
    if found and not cluster:
        return ("is a Redis Cluster node: start the node with --redis-cluster to run on a "
                "Redis Cluster")
    if cluster and not found:
        return ("is not a Redis Cluster node: leave --redis-cluster off for a standalone "
                "Redis, or name a node of the cluster")
    return None


def _fields(hello: Any) -> dict[str, str]:
    if isinstance(hello, list | tuple):
        hello = dict(zip(hello[::2], hello[1::2], strict=False))
    return {_text(key): _text(value) for key, value in dict(hello).items()
            if isinstance(value, bytes | str)}


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def wait_for_redis(redis: Redis, url: str, *, redis_timeout: float,
                         give_up_after: float, since: float, cluster: bool = False) -> None:
    """Ask Redis until it answers.  ``give_up_after`` seconds (counted from loop time
    ``since``; 0: never) without an answer end the start.

    Raises:
        StartupError: Redis refused the node, or did not answer in time.
    """
    loop = asyncio.get_running_loop()
    delays = backoff(initial=0.1, maximum=1.0)
    while True:
        error = await check_redis(redis, url, redis_timeout, cluster=cluster)
        if error is None:
            return
        left = since + give_up_after - loop.time()
        if give_up_after and left <= 0:
            raise StartupError(
                f"cannot reach Redis at {redis_address(url)} within {give_up_after:g} s "
                f"({_reason(error)})", settings=("redis_url", "redis_start_timeout"))
        await pause(min(next(delays), left) if give_up_after else next(delays))


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS error behind a failed connection, if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {getattr(seen, 'verify_message', '') or seen}"
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(exc: BaseException) -> str:
    """The most telling message of a connection failure (redis-py's own often omits
    the operating system's)."""
    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, socket.gaierror) and inner.strerror:
        return inner.strerror
    if isinstance(inner, OSError) and inner.errno and inner.errno > 0:
        return os.strerror(inner.errno)
    return str(exc) or type(exc).__name__
