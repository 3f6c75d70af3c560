"""The cluster cases' arithmetic (tests/faults/cluster_rooms.py), on made-up traffic: no
processes, so it runs in the fast subset."""

from __future__ import annotations

from typing import Any, cast

from cli.redis_cluster import LocalRedisCluster

from .cluster_rooms import Spread
from .harness import Got, Member, Talker

ROOM = "room0"


def made_up(received: list[list[tuple[str, int, float]]]) -> Spread:
    """Room0 on master 1: talkers t0a1 (node 1) and t0a2 (node 2) each said lines 0-4,
    acked as ``<talker>-<seq>`` except line 4 of t0a2, refused; receivers r0a1 and r0a2
    got ``received`` (sender, seq, arrival time)."""
    sp = Spread(cast(LocalRedisCluster, None), {1: ROOM})
    talkers = []
    for nick in ("t0a1", "t0a2"):
        t = Talker(Member(cast(Any, None), nick), ROOM)
        for seq in range(5):
            t.sent[seq] = float(seq)
            if nick == "t0a2" and seq == 4:
                t.m.errors[seq] = ("relay-unavailable", 9.0)
            else:
                t.m.acks[seq] = (f"{seq + 1}-{nick[-1]}", float(seq))
        talkers.append(t)
    sp.talkers[ROOM] = talkers
    receivers = []
    for nick, got in zip(("r0a1", "r0a2"), received, strict=True):
        m = Member(cast(Any, None), nick)
        m.msgs[ROOM] = [Got(f"{seq + 1}-{sender[-1]}", sender, f"{sender} {seq} 0", at)
                        for sender, seq, at in got]
        receivers.append(m)
    sp.receivers[ROOM] = receivers
    return sp


def everything(at: float = 0.0) -> list[tuple[str, int, float]]:
    return [(t, s, at + s + (0.5 if t == "t0a2" else 0.0))
            for s in range(4) for t in ("t0a1", "t0a2")] + [("t0a1", 4, at + 4)]


def test_a_clean_room_counts_nothing_wrong() -> None:
    c = made_up([everything(), everything()]).count(ROOM)
    assert (c.said, c.acked, c.refused, c.codes, c.undecided) == (
        10, 9, 1, {"relay-unavailable"}, 0)
    assert (c.lost, c.dups, c.disorder, c.ghosts, c.one_order) == (0, 0, 0, 0, True)


def test_losses_doubles_disorder_and_ghosts_are_each_counted() -> None:
    got = everything()
    broken = [got[1], got[0], *got[2:5], got[4], *got[6:], ("t0a2", 4, 9.5)]  # lost got[5]
    c = made_up([everything(), broken]).count(ROOM)
    assert c.lost == 1 and c.dups == 1 and c.disorder >= 1 and c.ghosts == 1
    assert not c.one_order


def test_the_stall_is_the_longest_wait_for_the_other_nodes_lines() -> None:
    c = made_up([everything(), everything()]).count(ROOM, since=0.2, until=6.0)
    # r0a1 hears t0a2 at 0.5, 1.5, 2.5, 3.5: 0.3 from the start, 2.5 to the end
    # r0a2 hears t0a1 at 0, 1, 2, 3, 4: 0.8 from 0.2 to 1, 2.0 from 4 to the end
    assert c.stall == 2.5
