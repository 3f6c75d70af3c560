"""Gap repair bookkeeping, without I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.envelope import RoomEvent, RoomMsg
from node.feeds import RoomFeed


def m(i: int) -> RoomMsg:
    return RoomMsg("r", "bob", "s", f"t{i}", id=f"{1000 + i}-0")


def ids(msgs: list[RoomEvent]) -> list[int]:
    return [int(x.id.split("-")[0]) - 1000 for x in msgs]


def test_live_messages_delivered_once_in_order() -> None:
    f = RoomFeed()
    assert ids(f.live(m(1))) == [1]
    assert ids(f.live(m(1))) == []
    assert ids(f.live(m(2))) == [2]


def test_repair_fills_the_gap_and_merges_held_messages() -> None:
    f = RoomFeed()
    f.start = "999-0"
    f.live(m(1))
    assert f.begin_repair() == m(1).id
    assert f.live(m(5)) == []  # held while the repair runs
    assert ids(f.end_repair([m(2), m(3), m(4), m(5)])) == [2, 3, 4, 5]
    assert ids(f.live(m(6))) == [6]


def test_repair_starts_at_the_subscription_when_nothing_was_delivered() -> None:
    f = RoomFeed()
    f.start = m(3).id
    assert f.begin_repair() == m(3).id
    assert f.begin_repair() == m(3).id  # idempotent mark
    assert ids(f.end_repair([m(4)])) == [4]


def test_no_mark_no_repair() -> None:
    f = RoomFeed()
    assert f.begin_repair() is None
    assert ids(f.end_repair([])) == []


@given(st.lists(st.integers(0, 50)), st.lists(st.integers(0, 50)))
def test_whatever_arrives_twice_or_late_comes_out_once_in_order(
        live: list[int], stream: list[int]) -> None:
    f = RoomFeed()
    f.start = "999-0"
    out = []
    for i in live[: len(live) // 2]:
        out += f.live(m(i))
    f.begin_repair()
    for i in live[len(live) // 2:]:
        out += f.live(m(i))
    out += f.end_repair([m(i) for i in stream])
    got = ids(out)
    assert got == sorted(set(got))
