"""Case 3: Redis frozen with SIGSTOP for 10 s, then SIGCONT, while users keep talking.

One run of the scenario serves both tests of this module (it is cached): the first checks
that nothing hangs and nothing is silently lost, the second the outbox that holds
messages through a short outage (``--outbox-seconds`` 5) and refuses them past it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass

import pytest

from ..helpers import text_user
from ..integration.procs import redis_server
from .harness import (
    Member,
    Talker,
    base_args,
    close_all,
    members,
    node_options,
    out_of_order,
    seqs_from,
    start_nodes,
    stop_all,
)

pytestmark = pytest.mark.redis_server

STOP = 10.0
REDIS_TIMEOUT = 1.0
OUTBOX_SECONDS = 5.0
EARLY_AT = 0.3
"""Seconds into the freeze at which the "early" user says one line: it would wait longer
than the outbox bound, so its sender must be told ``relay-unavailable``."""
LATE_AT = 7.5
"""Seconds into the freeze at which the "late" user says three lines: 2.5 s before
SIGCONT, inside the outbox bound, so they must be published, in order, once Redis
thaws."""


@dataclass
class Freeze:
    who_took: float
    who_line: str
    said: int
    said_frozen: int
    acked: int
    refused: int
    codes: set[str]
    undecided: int
    lost: int
    dups: int
    disorder: int
    ghosts: int
    recovered: float
    early: tuple[str, float]
    late: list[tuple[str, float]]
    late_order: list[list[int]]


_RUNS: list[Freeze] = []


async def scenario() -> Freeze:
    if not _RUNS:
        _RUNS.append(await _run())
    return _RUNS[0]


def outcome(m: Member, ref: int, since: float) -> tuple[str, float]:
    if ref in m.acks:
        return "ack", m.acks[ref][1] - since
    if ref in m.errors:
        return m.errors[ref][0], m.errors[ref][1] - since
    return "none", -1.0


async def _run() -> Freeze:
    outbox = node_options(outbox_seconds=OUTBOX_SECONDS, outbox_max=1000)
    async with redis_server() as (url, redis):
        nodes = await start_nodes(url, ["f1", "f2"], *base_args(*outbox))
        (_, port1), (_, port2) = nodes
        talkers: list[Talker] = []
        users: list[Member] = []
        try:
            s1, r1, early = await members(port1, ["s1", "r1", "early"])
            s2, r2, late = await members(port2, ["s2", "r2", "late"])
            users = [s1, r1, early, s2, r2, late]
            asker = await text_user(port1, "asker")
            await s1.event("join", nick="late")
            talkers = [Talker(s1, interval=0.25).start(), Talker(s2, interval=0.25).start()]
            for t in talkers:
                await t.m.until(lambda t=t: len(t.acked()) >= 5)

            stopped = time.monotonic()
            redis.signal(signal.SIGSTOP)
            sent_who = time.monotonic()
            await asker.send("/who")
            who_line = await asker.expect(lambda s: s.startswith(("! ", "* lobby:")))
            who_took = time.monotonic() - sent_who
            # the passing of time is the scenario: lines said at fixed points of the freeze
            await asyncio.sleep(max(0.0, stopped + EARLY_AT - time.monotonic()))
            early.send("say", text="early", ref=0)
            early_at = time.monotonic()
            await asyncio.sleep(max(0.0, stopped + LATE_AT - time.monotonic()))
            late_at = time.monotonic()
            for i in range(3):
                late.send("say", text=f"late {i}", ref=i)
            await asyncio.sleep(max(0.0, stopped + STOP - time.monotonic()))
            frozen_mark = {t.m.nick: max(t.sent) for t in talkers}
            redis.signal(signal.SIGCONT)
            resumed = time.monotonic()

            # after the thaw: every line gets its outcome, then the chat goes on
            for m, refs in ((early, [0]), (late, [0, 1, 2])):
                await m.until(lambda m=m, refs=refs: all(
                    r in m.acks or r in m.errors for r in refs), timeout=15)
            for t in talkers:
                await t.m.until(lambda t=t: any(s > frozen_mark[t.m.nick]
                                                for s in t.acked()), timeout=15)
            recovered = min(min(at for s, (_, at) in t.m.acks.items()
                                if isinstance(s, int) and s > frozen_mark[t.m.nick])
                            for t in talkers) - resumed
            for t in talkers:
                await t.stop()
            for t in talkers:
                await t.m.until(t.settled, timeout=15)
            last = {t.m.nick: t.acked()[max(t.sent)] for t in talkers}
            for r in (r1, r2):
                for t in talkers:  # the last line each talker said came through
                    await r.until(lambda r=r, t=t: last[t.m.nick] in r.ids("lobby"))

            lost = dups = disorder = ghosts = 0
            for t in talkers:
                acked, refused = t.acked(), t.refused()
                for r in (r1, r2):
                    got = seqs_from(r, "lobby", t.m.nick)
                    lost += len(set(acked) - set(got))
                    dups += len(got) - len(set(got))
                    disorder += out_of_order(got)
                    ghosts += len(set(refused) & set(got))
            late_ids = [late.acks[i][0] for i in range(3) if i in late.acks]
            for r in (r1, r2, s1):
                await r.until(lambda r=r: set(late_ids) <= set(r.ids("lobby")))
            late_order = [[int(g.text.split()[1]) for g in r.msgs.get("lobby", [])
                           if g.sender == "late"] for r in (r1, r2, s1)]
            return Freeze(
                who_took=who_took, who_line=who_line,
                said=sum(len(t.sent) for t in talkers),
                said_frozen=sum(1 for t in talkers for at in t.sent.values()
                                if stopped <= at < resumed),
                acked=sum(len(t.acked()) for t in talkers),
                refused=sum(len(t.refused()) for t in talkers),
                codes={c for t in talkers for c in t.refused().values()},
                undecided=sum(1 for t in talkers for s in t.sent
                              if s not in t.m.acks and s not in t.m.errors),
                lost=lost, dups=dups, disorder=disorder, ghosts=ghosts,
                recovered=recovered,
                early=outcome(early, 0, early_at),
                late=[outcome(late, i, late_at) for i in range(3)],
                late_order=late_order)
        finally:
            redis.signal(signal.SIGCONT)
            for t in talkers:
                await t.stop()
            await close_all(users)
            await stop_all(p for p, _ in nodes)


async def test_redis_frozen_commands_fail_fast_nothing_silently_lost() -> None:
    f = await scenario()
    print(f"\nredis SIGSTOP {STOP:.0f} s: /who answered in {f.who_took:.2f} s "
          f"({f.who_line!r}); talkers said {f.said} lines ({f.said_frozen} during the "
          f"freeze): {f.acked} acked, {f.refused} refused {sorted(f.codes)}, "
          f"{f.undecided} without an outcome; receivers: lost {f.lost}, duplicated "
          f"{f.dups}, out of order {f.disorder}; {f.ghosts} receiver-deliveries of lines "
          f"whose sender was told relay-unavailable; first line acked "
          f"{f.recovered:.2f} s after SIGCONT")
    assert f.who_line.startswith("! relay-unavailable:")
    assert f.who_took < REDIS_TIMEOUT + 0.5
    assert f.undecided == 0 and f.codes <= {"relay-unavailable"}
    assert (f.lost, f.dups, f.disorder) == (0, 0, 0)
    assert f.ghosts == 0  # nothing refused reached anyone (Redis ran it too late: no-op)
    assert f.recovered < 3.0


async def test_redis_frozen_outbox_holds_lines_up_to_its_bound() -> None:
    f = await scenario()
    print(f"\noutbox: line said {EARLY_AT} s into the freeze -> {f.early[0]} after "
          f"{f.early[1]:.2f} s; lines said {STOP - LATE_AT:.1f} s before SIGCONT -> "
          + ", ".join(f"{o} after {t:.2f} s" for o, t in f.late)
          + f"; their order at three receivers {f.late_order}")
    code, after = f.early
    assert code == "relay-unavailable"
    assert OUTBOX_SECONDS - 0.5 <= after <= OUTBOX_SECONDS + REDIS_TIMEOUT + 0.5
    assert [o for o, _ in f.late] == ["ack", "ack", "ack"]
    assert f.late_order == [[0, 1, 2]] * 3
