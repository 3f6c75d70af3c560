"""Case 10: bad input from clients -- framing, encoding, terminal control, names, rooms,
and a registration trickled in slower than the registration timeout."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from ..helpers import LineClient, text_user
from ..integration.procs import redis_server
from .harness import (
    Member,
    base_args,
    claim,
    close_all,
    connect,
    member,
    redis_client,
    start_nodes,
    stop_all,
)

pytestmark = pytest.mark.redis_server

REGISTER_TIMEOUT = 2.0


def said_by(m: Member, nick: str) -> list[str]:
    return [g.text for g in m.msgs.get("lobby", []) if g.sender == nick]


async def test_framing_encoding_and_buffer_limits() -> None:
    async with redis_server() as (url, _):
        nodes = await start_nodes(url, ["frames"], *base_args())
        [(_, port)] = nodes
        users: list[Member] = []
        try:
            obs = await member(port, "obs")
            users = [obs]
            alice = await text_user(port, "alice")
            alice.writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            # a line over the 4096-byte limit: refused whole, not a byte of it relayed
            await alice.send(b"A" * 5000 + b" TAIL\n")
            long_ = await alice.expect("!")
            await alice.send("after-long")
            await obs.until(lambda: "after-long" in said_by(obs, "alice"))
            assert said_by(obs, "alice") == ["after-long"]
            # invalid UTF-8: refused, the connection stays
            await alice.send(b"bad \xff\xfe bytes\n")
            encoding = await alice.expect("!")
            # one byte per write, several lines per write, lines split across writes, CRLF
            for byte in b"one byte at a time\n":
                await alice.send(bytes([byte]))
            await alice.send(b"c1\nc2\nc3\n")
            for part in (b"sp", b"lit\nnex", b"t\n"):
                await alice.send(part)
            await alice.send(b"crlf line\r\n")
            await alice.send("/ping")
            await alice.expect("* pong")
            expected = ["after-long", "one byte at a time", "c1", "c2", "c3", "split", "next",
                        "crlf line"]
            await obs.until(lambda: said_by(obs, "alice") == expected)

            # 64 KiB without a newline: refused and closed; the name is free again
            bob = await text_user(port, "bob")
            bob.writer.write(b"B" * 65536)
            errors = []
            async with asyncio.timeout(5):
                while raw := await bob.reader.readline():
                    if raw.startswith(b"!"):
                        errors.append(raw.decode().rstrip("\n"))
            overflow = errors[-1]
            quit_ = await obs.event("quit", nick="bob")
            again, outcome = await claim(port, ["bob"])
            users += again
            print(f"\nbad framing: {long_!r}; {encoding!r}; byte-by-byte, coalesced, split "
                  f"and CRLF lines relayed as {len(expected) - 1} lines, exactly; 64 KiB "
                  f"without a newline: {errors!r}, closed (quit reason "
                  f"{quit_.get('reason')!r}), name claimable again: {outcome['bob']}")
            assert long_.startswith("! line-too-long:")
            assert encoding.startswith("! bad-encoding:")
            assert len(errors) == 2 and errors[0].startswith("! line-too-long:")
            assert overflow.startswith("! buffer-overflow:")
            assert said_by(obs, "bob") == [] and outcome == {"bob": "welcome"}
            assert not [t for t in said_by(obs, "alice") if "TAIL" in t or "AAAA" in t]
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)


async def test_control_characters_names_and_room_names() -> None:
    async with redis_server() as (url, _), redis_client(url) as r:
        nodes = await start_nodes(url, ["names"], *base_args())
        [(_, port)] = nodes
        users: list[Member] = []
        try:
            obs = await member(port, "obs")
            first = await member(port, "Alice")
            users = [obs, first]
            mallory = await text_user(port, "mallory")
            await mallory.send("\x1b[31mred\x1b[0m plain \x07bell \u202eevil\u202c "
                               "\x1b]0;title\x07end")
            await mallory.send("\x9b31mc1 csi \x00nul\x7fdel")
            await mallory.send("\x1b[2J\x07\u200f")
            empty = await mallory.expect("!")
            await mallory.send("emoji 👍🏽 zwj 👨‍👩‍👧")
            await obs.until(lambda: len(said_by(obs, "mallory")) == 3)
            cleaned = said_by(obs, "mallory")
            assert cleaned == ["red plain bell evil end", "c1 csi nuldel",
                               "emoji 👍🏽 zwj 👨\u200d👩\u200d👧"]
            assert empty.startswith("! empty-text:")

            tries = ["ALICE", "ＡＬＩＣＥ", "alice", "", "   ", "two words", "x" * 33,
                     "evil\u202ename", "zero\u200bwidth", "x" * 32, "Ünïcödé"]
            clients, outcomes = await claim(port, tries)
            users += clients
            print(f"\nbad text and names: relayed {cleaned!r}; an invisible-only line: "
                  f"{empty!r}; name claims: {outcomes}")
            assert outcomes == {
                "ALICE": "nick-taken", "ＡＬＩＣＥ": "nick-taken", "alice": "nick-taken",
                "": "bad-nick", "   ": "bad-nick", "two words": "bad-nick",
                "x" * 33: "bad-nick", "evil\u202ename": "bad-nick",
                "zero\u200bwidth": "bad-nick", "x" * 32: "welcome", "Ünïcödé": "welcome"}

            # room names that look like Redis patterns or keys are refused as such
            rooms = ["a:*", "[x]", "*", "?", "a}b", "{nicks}", "café", "x" * 33, "#Lobby",
                     "ok-room_1"]
            for i, room in enumerate(rooms):
                first.send("join", room=room, ref=i)
            await first.until(lambda: all(i in first.acks or i in first.errors
                                          for i in range(len(rooms))))
            got = {room: ("ok" if i in first.acks else first.errors[i][0])
                   for i, room in enumerate(rooms)}
            await mallory.send("/join a:*")
            text_room = await mallory.expect("!")
            bad_key = re.compile(r"hubbub:\{room:(?![a-z0-9][a-z0-9_-]{0,31}\})")
            keys = await r.keys("*")
            print(f"room names: {got}; text mode '/join a:*': {text_room!r}; "
                  f"{len(keys)} Redis keys, none for a refused room")
            assert got == {"a:*": "bad-room", "[x]": "bad-room", "*": "bad-room",
                           "?": "bad-room", "a}b": "bad-room", "{nicks}": "bad-room",
                           "café": "bad-room", "x" * 33: "bad-room", "#Lobby": "ok",
                           "ok-room_1": "ok"}
            assert text_room.startswith("! bad-room:")
            assert not [k for k in keys if bad_key.search(k)]
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)


async def test_registration_trickled_past_the_timeout_is_cut() -> None:
    async with redis_server() as (url, _):
        nodes = await start_nodes(url, ["slowreg"],
                                  *base_args("--register-timeout", str(REGISTER_TIMEOUT)))
        [(_, port)] = nodes
        users: list[Member] = []
        try:
            # timed from before connecting: the node's timer starts when it accepts, which
            # may be before connect() returns here
            connecting = time.monotonic()
            trickler = await connect(port, cls=LineClient)
            await trickler.expect("* GET_NAME")
            sent = 0
            reply = ""
            for byte in b"trickler\n":  # one byte every 0.5 s: 4.5 s for the whole name
                try:
                    await trickler.send(bytes([byte]))
                except ConnectionError:
                    break
                sent += 1
                try:  # the passing of time is the point; a reply may come meanwhile
                    reply = await trickler.line(timeout=0.5)
                    break
                except TimeoutError:
                    continue
            await trickler.closed()
            cut = time.monotonic() - connecting
            # meanwhile, and after, others register normally; the name was never taken
            others, outcomes = await claim(port, ["punctual", "trickler"])
            users = others
            print(f"\ntrickled registration (--register-timeout {REGISTER_TIMEOUT:g}): "
                  f"{sent} bytes sent, {reply!r}, closed {cut:.2f} s after connecting; the "
                  f"name afterwards: {outcomes['trickler']}")
            assert reply.startswith("! register-timeout:")
            assert REGISTER_TIMEOUT <= cut < REGISTER_TIMEOUT + 0.5
            assert sent < len(b"trickler\n")
            assert outcomes == {"punctual": "welcome", "trickler": "welcome"}
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)

