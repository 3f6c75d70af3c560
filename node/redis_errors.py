"""Redis failures as hubbub sees them: translated at the relay boundary, never beyond it.

Two kinds, both :class:`~node.errors.RelayUnavailable` to the code that copes with relay
failures:

* Redis **unavailable**: unreachable, slow, or answering with an error about a state of its
  own — loading its data (``LOADING``), running a long script (``BUSY``), out of memory
  (``OOM``), a read-only replica (``READONLY``), a cluster that is down or moving slots
  (``CLUSTERDOWN``, ``MASTERDOWN``, ``TRYAGAIN``, ``MOVED``, ``ASK``), unable to persist
  (``MISCONF``) or to reach its replicas (``NOREPLICAS``), a script it forgot
  (``NOSCRIPT``), an account without the right (``NOPERM``, ``NOAUTH``: the operator's to
  fix), and redis-py's own cluster conditions (``RedisClusterException``, which is not a
  ``RedisError``: a slot no shard serves, a slot map it could not read).  The client is
  told ``relay-unavailable``: try again shortly.  Of these, a cluster moving a slot or
  failing over (:func:`moving`) is *transient* like an unreachable Redis: messages wait in
  the outbox and claims are retried.
* Redis **refused the command** itself — its arguments, a key of the wrong type
  (``WRONGTYPE``), an error in a script: :class:`~node.errors.RelayRefused`.  Retrying will
  not help, and Redis is not down: it is logged as a warning with the command and the
  client is told ``internal``.

Out of memory
-------------
A Redis past its ``maxmemory`` (hubbub requires ``noeviction``) refuses every command that
could add data with ``OOM``, while reads and deletions still work.  A node says so once
per *episode* (:class:`OomEpisodes`): one warning ``redis out of memory`` at the first
``OOM`` reply, then nothing more until a write succeeds again, which ends the episode with
one info ``redis accepts writes again`` (:mod:`node.redis_watch` tries one while an episode
lasts: commands that begin by deleting or expiring something go through a full Redis, so
the success of just any command proves nothing).  The node hands its :class:`OomEpisodes`
to every translation below it with :func:`watching_oom` (a context variable: tasks and
callbacks started under it inherit it, so several nodes in one process each keep their
own; outside one, an ``OOM`` is still ``relay-unavailable``, just not counted).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

import structlog
from redis.exceptions import (
    AskError,
    ClusterError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RelayRefused, RelayUnavailable

__all__ = ["OomEpisodes", "describe", "moving", "out_of_memory", "refused", "transient",
           "translated", "unavailable", "watching_oom"]

log = structlog.get_logger("hubbub.relay")

_STATE_ERRORS = (NoScriptError, OutOfMemoryError, ReadOnlyError, NoPermissionError,
                 ClusterError, TryAgainError, AskError)
"""redis-py's own classes for error replies about Redis's state (AskError covers MOVED)."""
_STATE_CODES = frozenset({"BUSY", "LOADING", "OOM", "READONLY", "MASTERDOWN", "CLUSTERDOWN",
                          "TRYAGAIN", "MOVED", "ASK", "MISCONF", "NOREPLICAS", "NOSCRIPT",
                          "NOPERM", "NOAUTH", "UNBLOCKED"})
"""Error codes (the reply's first word) of the same, for those redis-py has no class for."""


class OomEpisodes:
    """Whether Redis is refusing writes for want of memory, as one node has seen it.

    Theory of operation: closed until an ``OOM`` reply arrives (:meth:`refused`), which
    opens an episode and logs one warning; further ``OOM`` replies only count.  The next
    write Redis accepts (:meth:`wrote`) closes it and logs one info.  Nothing here waits or
    talks to Redis: it is told what happened."""

    __slots__ = ("episodes", "open", "refusals", "since")

    def __init__(self) -> None:
        self.open = False
        """True from the first OOM reply until a write succeeds again."""
        self.episodes = 0
        """Episodes begun (each logged once)."""
        self.refusals = 0
        """OOM replies seen, all episodes."""
        self.since: float | None = None
        """``time.monotonic()`` when the open episode began."""

    def refused(self, what: str, exc: BaseException) -> None:
        """Redis answered the command ``what`` with ``OOM``."""
        self.refusals += 1
        if not self.open:
            self.open = True
            self.episodes += 1
            self.since = time.monotonic()
            log.warning("redis out of memory", command=what, error=describe(exc),
                        hint="writes are refused until memory is freed; users are told "
                             "relay-unavailable (see docs/OPERATIONS.md)")

    def wrote(self, what: str) -> None:
        """Redis accepted a write of the command ``what``."""
        if self.open:
            lasted = None if self.since is None else round(time.monotonic() - self.since, 3)
            self.open = False
            self.since = None
            log.info("redis accepts writes again", command=what, seconds=lasted,
                     refused=self.refusals)


_EPISODES: ContextVar[OomEpisodes | None] = ContextVar("hubbub_oom_episodes", default=None)


@contextmanager
def watching_oom(episodes: OomEpisodes) -> Iterator[OomEpisodes]:
    """Report the ``OOM`` replies translated inside (and in every task started inside)
    to ``episodes``."""
    token = _EPISODES.set(episodes)
    try:
        yield episodes
    finally:
        _EPISODES.reset(token)


def out_of_memory(exc: BaseException) -> bool:
    """Redis answered ``exc`` because it is past its ``maxmemory``."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("OOM "))


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn any Redis (or transport) failure inside into :class:`RelayUnavailable` (or,
    for a command Redis refused, :class:`RelayRefused`, logged); ``what`` names the
    command in the message and the log."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError, RuntimeError) as exc:
        # RuntimeError: uvloop's "unable to perform operation on <TCPTransport closed=True>"
        # when redis-py writes to a connection that was reset under it;
        # RedisClusterException: redis-py's cluster conditions (a slot no shard serves, the
        # slot map unreadable) are not RedisErrors
        raise unavailable(exc, what) from exc


def unavailable(exc: BaseException, what: str) -> RelayUnavailable:
    """The error for a Redis failure ``exc`` of the command ``what`` (see the module
    docstring); a refusal is logged here.  The caller sets ``__cause__`` (``from exc``)."""
    if out_of_memory(exc):
        episodes = _EPISODES.get()
        if episodes is not None:
            episodes.refused(what, exc)
    elif refused(exc):
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


_MOVING_CODES = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})
"""A Redis Cluster moving a slot or failing over: the command is worth sending again
shortly (after reading the slot map again, for MOVED and ASK)."""


def moving(exc: BaseException | None) -> bool:
    """``exc`` says a Redis Cluster is moving the key's slot, failing over, or has no
    shard for it now (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, as a redis-py
    class or as a reply's text): transient, like an unreachable Redis."""
    if isinstance(exc, AskError | TryAgainError | ClusterError | RedisClusterException):
        return True  # AskError covers MovedError; ClusterError covers ClusterDownError
    return isinstance(exc, ResponseError) and str(exc).partition(" ")[0] in _MOVING_CODES


def transient(exc: RelayUnavailable) -> bool:
    """Redis unreachable or slow, or a cluster moving a slot (worth waiting for), not a
    command Redis refused."""
    cause = exc.__cause__
    return isinstance(cause, OSError | RedisConnectionError | RedisTimeoutError |
                      RuntimeError) or moving(cause)


def describe(exc: BaseException) -> str:
    """``Type: message`` (redis-py's own repr leaves the message out)."""
    return f"{type(exc).__name__}: {exc}"
