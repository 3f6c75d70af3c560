"""Key names: hash tags keep every multi-key step in one Redis Cluster slot."""

from __future__ import annotations

import re

import pytest

from node.keys import Keys


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag: what is between the first ``{`` and the next ``}``."""
    match = re.search(r"\{([^}]*)\}", key)
    assert match is not None and match.group(1), key
    return match.group(1)


@pytest.mark.parametrize("room", ["lobby", "dev-ops", "a", "x_9"])
def test_every_key_of_a_room_shares_its_hash_tag(room: str) -> None:
    k = Keys()
    keys = [k.members(room), k.history(room), k.room_channel(room)]
    assert {hash_tag(key) for key in keys} == {f"room:{room}"}
    assert len(set(keys)) == 3


def test_every_name_key_shares_the_nicks_tag() -> None:
    k = Keys()
    keys = [k.nicks, k.info, k.nodes, k.lease("alice"), k.lease("bob"), k.alive("n1"),
            k.owned("n1"), k.owned("n2")]
    assert {hash_tag(key) for key in keys} == {"nicks"}
    assert len(set(keys)) == len(keys)


def test_other_keys_have_their_own_tags() -> None:
    k = Keys()
    assert {hash_tag(k.rooms_live), hash_tag(k.rooms_count), hash_tag(k.rooms_idle)} \
        == {"rooms"}
    assert {hash_tag(k.members("r")), hash_tag(k.history("r")), hash_tag(k.topic("r")),
            hash_tag(k.room_channel("r")), hash_tag(k.once("r", "x"))} == {"room:r"}
    assert hash_tag(k.events) == "events"
    assert hash_tag(k.node_channel("n1")) == "node:n1"


def test_room_of_channel_is_the_inverse_of_room_channel() -> None:
    k = Keys()
    for room in ["lobby", "dev-ops", "0", "a_b-c"]:
        assert k.room_of_channel(k.room_channel(room)) == room


def test_room_of_channel_is_none_for_other_channels() -> None:
    k = Keys()
    assert k.room_of_channel(k.events) is None
    assert k.room_of_channel(k.node_channel("n1")) is None
    assert k.room_of_channel(k.members("lobby")) is None
    assert k.room_of_channel(k.history("lobby")) is None
    assert k.room_of_channel("lobby") is None
    # a room channel under another prefix is not ours
    assert k.room_of_channel(Keys("other:").room_channel("lobby")) is None


@pytest.mark.parametrize("prefix", ["hubbub:", "test:", "", "a:b:"])
def test_prefix_starts_every_key_and_channel(prefix: str) -> None:
    k = Keys(prefix)
    assert k.prefix == prefix
    keys = [k.nicks, k.info, k.nodes, k.rooms_live, k.rooms_idle, k.rooms_count, k.events,
            k.lease("x"), k.alive("n"), k.owned("n"), k.members("r"), k.history("r"),
            k.topic("r"), k.room_channel("r"),
            k.node_channel("n")]
    assert all(key.startswith(prefix + "{") for key in keys)
    assert k.room_of_channel(k.room_channel("r")) == "r"


def test_default_prefix_and_exact_shapes() -> None:
    k = Keys()
    assert k.nicks == "hubbub:{nicks}"
    assert k.lease("alice") == "hubbub:{nicks}:lease:alice"
    assert k.members("lobby") == "hubbub:{room:lobby}:members"
    assert k.history("lobby") == "hubbub:{room:lobby}:hist"
    assert k.room_channel("lobby") == "hubbub:{room:lobby}:ch"
    assert k.node_channel("n1") == "hubbub:{node:n1}:ch"
