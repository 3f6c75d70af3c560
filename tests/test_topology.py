"""node.topology: which shard holds a key."""

from __future__ import annotations

from typing import Any

from node.topology import SLOTS, Shard, StandaloneTopology, Topology, slot_of


def test_hash_tags_decide_the_slot() -> None:
    assert slot_of("{room:dev}:ch") == slot_of("{room:dev}:hist") == slot_of("room:dev")
    assert 0 <= slot_of("{nicks}") < SLOTS


def test_a_standalone_redis_is_one_shard_for_every_slot() -> None:
    redis: Any = object()
    topology = StandaloneTopology(redis)
    (shard,) = topology.shards
    assert shard.client is redis and topology.client_of("{room:x}:ch") is redis
    assert topology.shard_of_slot(0) is topology.shard_of_slot(SLOTS - 1) is shard


def test_ranges_route_to_their_shard() -> None:
    a, b = Shard("a:1", object()), Shard("b:2", object())  # type: ignore[arg-type]
    topology = Topology(object())  # type: ignore[arg-type]
    topology._set([(8192, SLOTS - 1, b), (0, 8191, a)])
    assert topology.shard_of_slot(0) is a and topology.shard_of_slot(8191) is a
    assert topology.shard_of_slot(8192) is b and topology.version == 1
    assert {s.name for s in topology.shards} == {"a:1", "b:2"}


def test_a_changed_map_is_told_to_its_listeners() -> None:
    a, b = Shard("a:1", object()), Shard("b:2", object())  # type: ignore[arg-type]
    topology = Topology(object())  # type: ignore[arg-type]
    told: list[int] = []
    topology.on_change(lambda: told.append(topology.version))
    topology._set([(0, SLOTS - 1, a)])
    topology._set([(0, 99, b), (100, SLOTS - 1, a)])
    assert told == [1, 2]
