"""An answer means live: after ``welcome``, a join's answer or a resume, everything said in
the room reaches the newcomer -- its own join first, then every line, once, in order.

Two real nodes on one redis-server.  A speaker on node A is in the room; the newcomer
enters it on node B, where nobody else is in it (so node B subscribes to the room's
channel for it), and the moment the newcomer has its answer the speaker says three lines
and an end marker.  Each entry path runs many trials, each checking the exact sequence of
room events the newcomer saw up to the marker.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ..helpers import JsonClient, LineClient
from ..integration.procs import redis_server
from .harness import Member, base_args, member, start_nodes, stop_all

pytestmark = pytest.mark.redis_server

TRIALS = 100
LINES = ("one", "two", "three", "end")


def say_lines(speaker: Member, room: str, trial: int) -> None:
    for text in LINES:
        speaker.send("say", room=room, text=f"{trial} {text}")


async def text_until_end(c: LineClient, room: str, trial: int) -> list[str]:
    """The newcomer's lines about ``room`` up to the speaker's end marker."""
    end = f"[{room}] spk: {trial} end"
    seen: list[str] = []
    while (line := await c.line()) != end:
        if line.startswith((f"[{room}]", "* ")):
            seen.append(line)
    return [*seen, end]


async def json_until_end(c: JsonClient, room: str, trial: int) -> list[tuple[str, str]]:
    """The newcomer's events about ``room`` as (kind, nick or text), up to the marker."""
    seen: list[tuple[str, str]] = []
    while True:
        obj: dict[str, Any] = json.loads(await c.line())
        if obj.get("room") != room or obj.get("ev") not in ("msg", "join", "part"):
            continue
        seen.append((obj["ev"], obj["text"] if obj["ev"] == "msg" else obj["nick"]))
        if seen[-1] == ("msg", f"{trial} end"):
            return seen


def text_expected(nick: str, room: str, trial: int) -> list[str]:
    return [f"* {nick} joined {room}", *(f"[{room}] spk: {trial} {t}" for t in LINES)]


def json_expected(nick: str | None, trial: int) -> list[tuple[str, str]]:
    own = [("join", nick)] if nick is not None else []
    return [*own, *(("msg", f"{trial} {t}") for t in LINES)]


async def text_registration(a: int, b: int, speaker: Member, i: int) -> list[str]:
    nick = f"tr{i}"
    c = await LineClient.connect(b)
    await c.expect("* GET_NAME")
    await c.send(nick)
    await c.expect(f"* welcome {nick}")
    say_lines(speaker, "lobby", i)
    seen = await text_until_end(c, "lobby", i)
    await c.send("/quit")
    await speaker.event("quit", nick=nick)  # node B unsubscribed before the next trial
    return [] if seen == text_expected(nick, "lobby", i) else seen


async def hears(c: JsonClient, speaker: Member, nick: str, room: str, i: int
                ) -> list[tuple[str, str]]:
    """Once the newcomer has its answer: the speaker says its lines; what the newcomer
    heard of the room up to the marker; then it quits (its node unsubscribes)."""
    say_lines(speaker, room, i)
    seen = await json_until_end(c, room, i)
    await c.op("quit")
    await speaker.event("quit", nick=nick)
    return seen


async def json_registration(a: int, b: int, speaker: Member, i: int) -> list[Any]:
    nick = f"jr{i}"
    c = await JsonClient.connect(b)
    await c.op("hello", nick=nick)
    await c.event("welcome")
    seen = await hears(c, speaker, nick, "lobby", i)
    return [] if seen == json_expected(nick, i) else seen


async def text_join(a: int, b: int, speaker: Member, i: int) -> list[str]:
    nick, room = f"tj{i}", f"tj{i}"
    await enter(speaker, room)
    c = await LineClient.connect(b)
    await c.expect("* GET_NAME")
    await c.send(nick)
    await c.expect(f"* {nick} joined lobby")
    await c.send(f"/join {room}")
    await c.expect(f"* {nick} joined {room}")  # the text answer to /join
    say_lines(speaker, room, i)
    seen = [f"* {nick} joined {room}", *await text_until_end(c, room, i)]
    await c.send("/quit")
    await speaker.event("quit", nick=nick)
    return [] if seen == text_expected(nick, room, i) else seen


async def json_join(a: int, b: int, speaker: Member, i: int) -> list[Any]:
    nick, room = f"jj{i}", f"jj{i}"
    await enter(speaker, room)
    c = await JsonClient.connect(b)
    await c.op("hello", nick=nick, rooms=[f"home{i}"])
    await c.event("welcome")
    await c.op("join", room=room, ref="j")
    seen: list[tuple[str, str]] = []
    while (obj := json.loads(await c.line())).get("ev") != "ack":
        if obj.get("room") == room and obj.get("ev") == "join":
            seen.append(("join", obj["nick"]))
    seen += await hears(c, speaker, nick, room, i)
    return [] if seen == json_expected(nick, i) else seen


async def hello_with_rooms(a: int, b: int, speaker: Member, i: int) -> list[Any]:
    nick, room = f"hr{i}", f"hr{i}"
    await enter(speaker, room)
    c = await JsonClient.connect(b)
    await c.op("hello", nick=nick, rooms=[room])
    await c.event("welcome")
    seen = await hears(c, speaker, nick, room, i)
    return [] if seen == json_expected(nick, i) else seen


async def resume_elsewhere(a: int, b: int, speaker: Member, i: int) -> list[Any]:
    """The newcomer's session on node A is resumed on node B (with its token): silently,
    so no join -- but every line said after the resumed welcome."""
    nick, room = f"rs{i}", f"rs{i}"
    await enter(speaker, room)
    first = await JsonClient.connect(a)
    await first.op("hello", nick=nick, rooms=[room])
    token = (await first.event("welcome"))["token"]
    c = await JsonClient.connect(b)
    await c.op("hello", nick=nick, token=token, rooms=[room])
    welcome = await c.event("welcome")
    assert welcome.get("resumed") is True
    seen = await hears(c, speaker, nick, room, i)
    await first.close()  # told nick-lost by now or soon: its node ends it quietly
    return [] if seen == json_expected(None, i) else seen


async def enter(speaker: Member, room: str) -> None:
    speaker.send("join", room=room, ref=f"join {room}")
    await speaker.until(lambda: f"join {room}" in speaker.acks)


Path = Callable[[int, int, Member, int], Awaitable[list[Any]]]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", [text_registration, json_registration, text_join,
                                  json_join, hello_with_rooms, resume_elsewhere],
                         ids=lambda p: p.__name__)
async def test_the_answer_means_live(path: Path) -> None:
    async with redis_server() as (url, _):
        nodes = await start_nodes(url, ["a", "b"], *base_args())
        try:
            (_, a), (_, b) = nodes
            speaker = await member(a, "spk")
            failed = []
            for i in range(TRIALS):
                wrong = await path(a, b, speaker, i)
                if wrong:
                    failed.append((i, wrong))
            print(f"\n{path.__name__}: {len(failed)} of {TRIALS} trials missed or reordered "
                  "a line")
            assert not failed, failed[:3]
        finally:
            await stop_all(p for p, _ in nodes)
