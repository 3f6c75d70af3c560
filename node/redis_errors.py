"""Redis failures as hubbub sees them: translated at the relay boundary, never beyond it.

Two kinds, both :class:`~node.errors.RelayUnavailable` to the code that copes with relay
failures:

* Redis **unavailable**: unreachable, slow, or answering with an error about a state of its
  own — loading its data (``LOADING``), running a long script (``BUSY``), out of memory
  (``OOM``), a read-only replica (``READONLY``), a cluster that is down or moving slots
  (``CLUSTERDOWN``, ``MASTERDOWN``, ``TRYAGAIN``, ``MOVED``, ``ASK``), unable to persist
  (``MISCONF``) or to reach its replicas (``NOREPLICAS``), a script it forgot
  (``NOSCRIPT``), an account without the right (``NOPERM``, ``NOAUTH``: the operator's to
  fix).  The client is told ``relay-unavailable``: try again shortly.
* Redis **refused the command** itself — its arguments, a key of the wrong type
  (``WRONGTYPE``), an error in a script: :class:`~node.errors.RelayRefused`.  Retrying will
  not help, and Redis is not down: it is logged as a warning with the command and the
  client is told ``internal``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from redis.exceptions import (
    AskError,
    ClusterError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RelayRefused, RelayUnavailable

__all__ = ["describe", "refused", "transient", "translated", "unavailable"]

log = structlog.get_logger("hubbub.relay")

_STATE_ERRORS = (NoScriptError, OutOfMemoryError, ReadOnlyError, NoPermissionError,
                 ClusterError, TryAgainError, AskError)
"""redis-py's own classes for error replies about Redis's state (AskError covers MOVED)."""
_STATE_CODES = frozenset({"BUSY", "LOADING", "OOM", "READONLY", "MASTERDOWN", "CLUSTERDOWN",
                          "TRYAGAIN", "MOVED", "ASK", "MISCONF", "NOREPLICAS", "NOSCRIPT",
                          "NOPERM", "NOAUTH", "UNBLOCKED"})
"""Error codes (the reply's first word) of the same, for those redis-py has no class for."""


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn any Redis (or transport) failure inside into :class:`RelayUnavailable` (or,
    for a command Redis refused, :class:`RelayRefused`, logged); ``what`` names the
    command in the message and the log."""
    try:
        yield
    except (RedisError, OSError, RuntimeError) as exc:
        # RuntimeError: uvloop's "unable to perform operation on <TCPTransport closed=True>"
        # when redis-py writes to a connection that was reset under it
        raise unavailable(exc, what) from exc


def unavailable(exc: BaseException, what: str) -> RelayUnavailable:
    """The error for a Redis failure ``exc`` of the command ``what`` (see the module
    docstring); a refusal is logged here.  The caller sets ``__cause__`` (``from exc``)."""
    if refused(exc):
        log.warning("redis refused a command", command=what, error=describe(exc))
        return RelayRefused()
    return RelayUnavailable(f"the cluster relay (Redis) is unavailable ({what}); "
                            "try again shortly")


def refused(exc: BaseException) -> bool:
    """Redis answered ``exc`` and refused the command itself, not for a state of its own."""
    if not isinstance(exc, ResponseError) or isinstance(exc, _STATE_ERRORS):
        return False
    status = getattr(exc, "status_code", None)  # set by redis-py for codes it knows
    code = status if status and status != "ERR" else str(exc).partition(" ")[0]
    return code not in _STATE_CODES


def transient(exc: RelayUnavailable) -> bool:
    """Redis unreachable or slow (worth waiting for), not a command Redis refused."""
    return isinstance(exc.__cause__, OSError | RedisConnectionError | RedisTimeoutError |
                      RuntimeError)


def describe(exc: BaseException) -> str:
    """``Type: message`` (redis-py's own repr leaves the message out)."""
    return f"{type(exc).__name__}: {exc}"
