"""What the node counts, and the read-only view /metrics and /readyz take of it.

Counters are plain integers bumped on the hot path; :class:`NodeState` gathers the
objects that hold them so :mod:`node.http` and :mod:`node.metrics` read the node without
knowing how it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .limits import REFUSALS

if TYPE_CHECKING:
    from .config import NodeConfig
    from .redis_errors import OomEpisodes
    from .redis_watch import RedisWatch
    from .relay import Relay
    from .user import Roster

__all__ = ["AuthCounters", "NodeState", "NodeStats"]


@dataclass(slots=True)
class NodeStats:
    connections: int = 0
    slow_consumers: int = 0
    delivered: int = 0
    repaired: int = 0
    flood_disconnects: int = 0
    inflight_waits: int = 0
    """Times a session stopped reading its client for ``max_inflight`` unanswered messages."""
    accept_pauses: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))
    """Connections refused at connect, by reason (see :data:`node.limits.REFUSALS`)."""


class AuthCounters(Protocol):
    """The authentication counters /metrics shows (kept by :class:`node.security.Security`)."""

    @property
    def login_failures(self) -> int: ...

    @property
    def operator_actions(self) -> int: ...

    def refusals(self) -> tuple[int, int, int]:
        """(throttled, busy, hashes in flight)."""
        ...


@dataclass(frozen=True, slots=True)
class NodeState:
    """What /metrics and /readyz read of a node."""

    config: NodeConfig
    stats: NodeStats
    relay: Relay
    roster: Roster
    auth: AuthCounters
    local_rooms: Callable[[], int]
    """How many rooms have members on this node."""
    stopping: Callable[[], bool]
    """True once the node is shutting down."""
    redis_watch: RedisWatch | None = None
    """The node's readings of Redis (memory, rooms, names), when it takes them."""
    oom: OomEpisodes | None = None
    """Whether Redis refuses writes for want of memory, as this node has seen it."""

    def modes(self) -> Iterator[str]:
        """The wire mode of every open connection."""
        return (m.mode for m in list(self.roster.members))
