"""A joiner's cut of a room's one order, without I/O (node/localroom.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.envelope import RoomEvent, RoomJoin, RoomMsg
from node.localroom import LocalRoom


def ev(i: int) -> RoomEvent:
    return RoomMsg("r", "bob", "s", f"t{i}", id=f"{1000 + i}-0")


def num(e: RoomEvent) -> int:
    return int(e.id.split("-")[0]) - 1000


def feed(room: LocalRoom[str], events: range, got: dict[str, list[int]]) -> None:
    for i in events:
        e = ev(i)
        for member in room.recipients(e):
            got.setdefault(member, []).append(num(e))


@given(st.data())
def test_a_joiner_gets_exactly_what_follows_its_floor(data: st.DataObject) -> None:
    """Events 1..n pass through the feed; the joiner begins before its floor event f was
    published (b <= f - 1 events seen by then) and goes live after any number g >= b of
    them: it gets f+1..n, once, in order, whatever the interleaving; old members get all."""
    n = data.draw(st.integers(1, 30))
    f = data.draw(st.integers(1, n))
    b = data.draw(st.integers(0, f - 1))
    g = data.draw(st.integers(b, n))
    room: LocalRoom[str] = LocalRoom()
    room.members.add("old")
    got: dict[str, list[int]] = {}
    feed(room, range(1, b + 1), got)
    room.begin_join("new")
    feed(room, range(b + 1, g + 1), got)
    got.setdefault("new", []).extend(num(e) for e in room.go_live("new", ev(f).id))
    feed(room, range(g + 1, n + 1), got)
    assert got.get("new", []) == list(range(f + 1, n + 1))
    assert got["old"] == list(range(1, n + 1))
    if g >= f:  # the feed passed the floor: an ordinary member now
        assert "new" in room.members and not room.joining


def test_nothing_is_kept_for_a_member_that_leaves_while_joining() -> None:
    room: LocalRoom[str] = LocalRoom()
    room.begin_join("new")
    assert room and room.everyone() == {"new"}
    assert list(room.recipients(ev(1))) == []
    room.remove("new")
    assert not room
    assert room.go_live("new", ev(1).id) == []


def test_a_join_notice_is_an_event_like_any_other() -> None:
    room: LocalRoom[str] = LocalRoom()
    room.begin_join("new")
    own = RoomJoin("r", "new", id="1005-0")
    assert list(room.recipients(own)) == []
    assert room.go_live("new", own.id) == []
    assert room.members == {"new"}  # its own join came through: nothing more to check
    assert list(room.recipients(ev(6))) == ["new"]
