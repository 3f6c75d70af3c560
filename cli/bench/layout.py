"""Who talks to which node and sits in which room: a pure function of the run's shape.

Client ``i`` of ``C`` sits in room ``i % R`` and uses node ``(i // R) % N``: rooms get
``C / R`` members each (give or take one), and consecutive members of a room are on
consecutive nodes, so a room of two or more spans nodes and a message crosses them.
Workers and the driver compute the same layout independently; nothing about it travels
between processes but the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Layout"]


@dataclass(frozen=True, slots=True)
class Layout:
    clients: int
    nodes: int
    rooms: int

    def __post_init__(self) -> None:
        if self.clients < 0 or self.nodes < 1 or self.rooms < 1:
            raise ValueError("clients >= 0, nodes >= 1 and rooms >= 1")

    def node_of(self, i: int) -> int:
        return (i // self.rooms) % self.nodes

    def room_of(self, i: int) -> int:
        return i % self.rooms

    def member_index(self, i: int) -> int:
        """``i``'s position among its room's members (0 … room size - 1)."""
        return i // self.rooms

    def room_sizes(self) -> list[int]:
        sizes = [0] * self.rooms
        for i in range(self.clients):
            sizes[self.room_of(i)] += 1
        return sizes
