"""Where each key lives: the Redis shards a node talks to.

Theory of operation
-------------------
* A **shard** is one Redis master and the hash slots it serves.  A standalone Redis is one
  shard serving every slot; a Redis Cluster has one shard per master.  Each shard has its
  own client (its own connection pool): a sick shard's errors never close another's
  connections.
* :class:`Topology` maps a key (or channel: sharded pub/sub routes channels by slot like
  keys) to its shard, and lists the shards.  On a cluster it is read from ``CLUSTER
  SLOTS`` (asked of any shard that answers) and read again by :meth:`Topology.refresh`:
  after ``MOVED``, after a ``sunsubscribe`` push, after a link error and periodically.  A
  refresh that changed the map bumps :attr:`Topology.version`; callers that cache a shard
  per room compare it.
* The node never creates a Redis client itself: the cluster topology is handed a
  ``connect(host, port)`` factory built at the edge (credentials, TLS and timeouts as the
  URL given).  A shard whose master changed gets a new client; the old one is closed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

__all__ = ["SLOTS", "ClusterTopology", "RoutedScript", "Shard", "ShardPipes", "SlotUnserved",
           "StandaloneTopology", "Topology", "as_topology", "slot_of"]

log = structlog.get_logger("hubbub.relay")

SLOTS = 16384

Connect = Callable[[str, int], Redis]
"""Makes a client for the master at (host, port), as configured at the edge."""


def slot_of(key: str) -> int:
    """The hash slot of a key or sharded channel (its hash tag's, when it has one)."""
    return int(key_slot(key.encode()))


class SlotUnserved(RedisClusterException):
    """No shard serves a slot in the slot map as last read (a cluster that is down or
    being changed): as transient as a shard that does not answer."""


@dataclass(eq=False)
class Shard:
    """One Redis master: its address (``host:port``, or ``standalone``) and its client."""

    name: str
    client: Redis


class Topology:
    """The shards and which slots each serves.  See the module docstring."""

    cluster: bool = False

    def __init__(self, seed: Redis) -> None:
        self.seed = seed
        """The client the node was handed: the whole Redis when standalone; on a cluster,
        the node the URL named (a way in to read the slot map)."""
        self.version = 0
        self._starts: list[int] = []   # sorted first slots of the ranges
        self._owners: list[Shard] = []  # the shard of each range, same order
        self._ends: list[int] = []
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (synchronously, so it must only note the fact) whenever a
        refresh changed the slot map, whoever asked for the refresh: the bus follows a
        map the publisher read after a MOVED at once, not at its next periodic read."""
        self._listeners.append(listener)

    @property
    def shards(self) -> tuple[Shard, ...]:
        """Every shard serving slots now (each once)."""
        return tuple({id(s): s for s in self._owners}.values())

    def shard_of_slot(self, slot: int) -> Shard:
        i = bisect.bisect_right(self._starts, slot) - 1
        if i < 0 or slot > self._ends[i]:
            raise SlotUnserved(f"no shard serves slot {slot}")
        return self._owners[i]

    def shard_of(self, key: str) -> Shard:
        """The shard serving ``key``'s (or a sharded channel's) slot."""
        return self.shard_of_slot(slot_of(key))

    def client_of(self, key: str) -> Redis:
        return self.shard_of(key).client

    async def refresh(self) -> bool:
        """Read the slot map again; True if it changed."""
        return False

    async def aclose(self) -> None:
        """Close the clients this topology made (not the one it was handed)."""

    def _set(self, ranges: Sequence[tuple[int, int, Shard]]) -> None:
        ranges = sorted(ranges, key=lambda r: r[0])
        self._starts = [first for first, _, _ in ranges]
        self._ends = [last for _, last, _ in ranges]
        self._owners = [shard for _, _, shard in ranges]
        self.version += 1
        for listener in self._listeners:
            listener()


class StandaloneTopology(Topology):
    """One Redis serving every slot (also fakeredis in tests)."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self._set([(0, SLOTS - 1, Shard("standalone", redis))])


class ClusterTopology(Topology):
    """A Redis Cluster, read from ``CLUSTER SLOTS``; one client per master."""

    cluster = True

    def __init__(self, seed: Redis, connect: Connect) -> None:
        """``seed``: a client of the node the URL named (asked first, and kept as a way
        in while any other shard is known); ``connect``: makes a master's client."""
        super().__init__(seed)
        self._connect = connect
        self._clients: dict[str, Redis] = {}
        self._shards: dict[str, Shard] = {}  # by name, kept: a shard's object stays the same
        self._map: tuple[tuple[int, int, str], ...] = ()

    @classmethod
    async def discover(cls, seed: Redis, connect: Connect) -> ClusterTopology:
        topology = cls(seed, connect)
        if not await topology._read(seed):
            raise RedisError("the Redis Cluster's slot map could not be read")
        return topology

    async def refresh(self) -> bool:
        """Ask the shards known (then the seed) for the slot map; the first that answers
        is believed."""
        before = self._map
        for client in [*self._clients.values(), self.seed]:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                if self._apply(await _slots(client)):
                    break
        return self._map != before

    async def _read(self, client: Redis) -> bool:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            return self._apply(await _slots(client))
        return False

    def _apply(self, reply: Any) -> bool:
        rows = list(reply.values()) if isinstance(reply, dict) else list(reply or ())
        ranges: list[tuple[int, int, str]] = []
        for row in rows:
            first, last, master = int(row[0]), int(row[1]), row[2]
            host, port = _text(master[0]) or "127.0.0.1", int(master[1])
            ranges.append((first, last, f"{host}:{port}"))
        if not ranges:
            return False
        ranges.sort()
        if tuple(ranges) == self._map:
            return True
        for _, _, name in ranges:
            if name not in self._shards:
                host, _, port_text = name.rpartition(":")
                client = self._clients[name] = self._connect(host, int(port_text))
                self._shards[name] = Shard(name, client)
        self._map = tuple(ranges)
        self._set([(first, last, self._shards[name]) for first, last, name in ranges])
        if self.version > 1:  # changed since it was discovered (the caller says that)
            log.info("redis cluster slot map changed", shards=len({n for *_, n in ranges}),
                     version=self.version)
        return True

    async def aclose(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose(close_connection_pool=True)
        self._clients.clear()


class ShardPipes:
    """One step's commands over any number of shards: one pipeline per shard, the shards'
    pipelines sent concurrently, the replies handed back in the order the commands were
    queued.

    Queue each command on the pipeline :meth:`on` returns for its key, one command per
    call (a script called with ``client=`` that pipeline is one command).  On a
    standalone Redis there is one shard: one pipeline and one round trip, as before.
    """

    def __init__(self, topology: Topology, *, transaction: bool = False) -> None:
        self._topology = topology
        self._transaction = transaction
        self._pipes: dict[int, tuple[Shard, Pipeline]] = {}
        self._order: list[tuple[int, int]] = []  # (shard id, position in its pipeline)
        self._sizes: dict[int, int] = {}

    def on(self, key: str) -> Pipeline:
        """The pipeline of ``key``'s shard, to queue exactly one command on."""
        return self.on_shard(self._topology.shard_of(key))

    def on_shard(self, shard: Shard) -> Pipeline:
        """The pipeline of ``shard``, to queue exactly one command on."""
        sid = id(shard)
        if sid not in self._pipes:
            self._pipes[sid] = (shard, shard.client.pipeline(transaction=self._transaction))
            self._sizes[sid] = 0
        self._order.append((sid, self._sizes[sid]))
        self._sizes[sid] += 1
        return self._pipes[sid][1]

    def __len__(self) -> int:
        return len(self._order)

    async def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Send every shard's pipeline (concurrently) and return the replies in queued
        order.  A shard whose pipeline failed as a whole (unreachable, slow) raises its
        error once every shard answered, so what the others did is done; with
        ``raise_on_error=False`` a command Redis refused is its reply, as redis-py does.
        """
        if not self._order:
            return []
        try:
            return await self._execute(raise_on_error)
        finally:
            # redis-py leaves a pipeline unreset when loading its scripts failed
            for _, pipe in self._pipes.values():
                await pipe.reset()  # type: ignore[no-untyped-call]

    async def _execute(self, raise_on_error: bool) -> list[Any]:
        pipes = list(self._pipes.items())
        if len(pipes) == 1:
            (sid, (_, pipe)), = pipes
            got = {sid: await pipe.execute(raise_on_error=raise_on_error)}
        else:
            answers = await asyncio.gather(
                *(pipe.execute(raise_on_error=raise_on_error) for _, (_, pipe) in pipes),
                return_exceptions=True)
            got = {}
            for (sid, _), answer in zip(pipes, answers, strict=True):
                if isinstance(answer, BaseException):
                    raise answer
                got[sid] = answer
        return [got[sid][i] for sid, i in self._order]


class RoutedScript:
    """A Lua script sent to the shard of its first key (every script's keys share one
    slot), unless a client (a pipeline) is given.  redis-py loads it again on a shard that
    answers NOSCRIPT (a promoted replica has no scripts) and retries that call only."""

    def __init__(self, topology: Topology, source: str) -> None:
        self._topology = topology
        self.script: AsyncScript = topology.seed.register_script(source)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any] = (),
                       client: Redis | Pipeline | None = None) -> Any:
        target = client if client is not None else self._topology.client_of(keys[0])
        return await self.script(keys=keys, args=args, client=target)


def as_topology(redis: Redis | Topology) -> Topology:
    """A topology as given, or a standalone one around a plain client."""
    return redis if isinstance(redis, Topology) else StandaloneTopology(redis)


async def _slots(client: Redis) -> Any:
    return await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
