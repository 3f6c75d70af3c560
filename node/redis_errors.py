"""Redis failures as hubbub sees them: translated at the relay boundary, never beyond it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RelayUnavailable

__all__ = ["describe", "transient", "translated"]


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn any Redis (or transport) failure inside into :class:`RelayUnavailable`."""
    try:
        yield
    except (RedisError, OSError, RuntimeError) as exc:
        # RuntimeError: uvloop's "unable to perform operation on <TCPTransport closed=True>"
        # when redis-py writes to a connection that was reset under it
        raise RelayUnavailable(f"the cluster relay (Redis) is unavailable ({what}); "
                               "try again shortly") from exc


def transient(exc: RelayUnavailable) -> bool:
    """Redis unreachable or slow (worth waiting for), not a command Redis refused."""
    return isinstance(exc.__cause__, OSError | RedisConnectionError | RedisTimeoutError |
                      RuntimeError)


def describe(exc: BaseException) -> str:
    """``Type: message`` (redis-py's own repr leaves the message out)."""
    return f"{type(exc).__name__}: {exc}"
