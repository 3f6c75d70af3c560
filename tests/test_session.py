"""One client session over real TCP, against an in-process node on fakeredis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from structlog.testing import capture_logs

from node.server import ChatNode

from .helpers import (
    TIMEOUT,
    JsonClient,
    LineClient,
    json_user,
    running_node,
    text_user,
    wait_until,
)


def port(node: ChatNode) -> int:
    assert node.port is not None
    return node.port


@contextlib.asynccontextmanager
async def node_with_observer(server: fakeredis.FakeServer, **overrides: Any
                             ) -> AsyncIterator[tuple[ChatNode, LineClient]]:
    """A node, and "bob" in its lobby watching what others say."""
    async with running_node(server, **overrides) as node:
        bob = await text_user(port(node), "bob")
        yield node, bob


async def alice_joins(node: ChatNode, bob: LineClient, nick: str = "alice") -> LineClient:
    alice = await text_user(port(node), nick)
    await bob.expect(f"* {nick} joined lobby")
    return alice


async def read_all(client: LineClient) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    async with asyncio.timeout(TIMEOUT):
        while chunk := await client.reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- framing limits


async def test_over_long_line_is_refused_and_its_tail_never_relayed(
        fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        line = b"A" * 5000 + b"\n"
        for i in range(0, len(line), 100):
            await alice.send(line[i:i + 100])
        assert (await alice.expect("!")).startswith("! line-too-long:")
        await alice.send("normal")
        assert await bob.expect("[lobby]") == "[lobby] alice: normal"
        assert not any("A" * 10 in seen for seen in bob.seen)
        await alice.send("/ping")  # the connection is still fine
        await alice.expect("* pong")


async def test_twenty_kib_without_newline_closes_with_buffer_overflow(
        fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        await alice.send(b"B" * 20 * 1024)
        rest = (await read_all(alice)).decode()
        errors = [line.split(":")[0] for line in rest.split("\n") if line.startswith("!")]
        # the line is reported too long first (as trickled input would be), then fatal
        assert errors == ["! line-too-long", "! buffer-overflow"]
        # the name is released and the others told
        assert await bob.expect("* alice quit") == "* alice quit (protocol error)"
        assert not any("BBBB" in seen for seen in bob.seen)


async def test_invalid_utf8_is_refused_and_the_connection_stays(
        fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        await alice.send(b"caf\xe9 \xff\xfe\n")
        assert (await alice.expect("!")).startswith("! bad-encoding:")
        await alice.send("still here")
        assert await bob.expect("[lobby]") == "[lobby] alice: still here"


# --------------------------------------------------------------------------- text cleaning


async def test_escape_bidi_and_control_characters_are_stripped_before_relaying(
        fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        await alice.send("\x1b[31mred\x1b[0m \u202eevil\u202c \x07bell\x9b2Jok "
                         "\x1b]0;title\x07done\u200b.")
        assert await bob.expect("[lobby]") == "[lobby] alice: red evil bellok done."
        await alice.send("/me \x1b[5mblinks\x1b[0m\r")
        assert await bob.expect("[lobby]") == "[lobby] * alice blinks"


async def test_a_wall_of_blanks_reaches_nobody_as_such(fake_server: fakeredis.FakeServer
                                                     ) -> None:
    """``x`` + 200 spaces + ``* bob quit`` would wrap on an 80-column terminal into what
    looks like a notice of its own: every run of blanks is relayed as one space, to text
    and JSON members alike, in messages, actions and quit reasons."""
    async with node_with_observer(fake_server) as (node, bob):
        carol = await json_user(port(node), "carol")
        alice = await alice_joins(node, bob)
        await carol.event("join", nick="alice")
        await alice.send("x" + " " * 200 + "* bob quit")
        assert await bob.expect("[lobby]") == "[lobby] alice: x * bob quit"
        assert (await carol.event("msg"))["text"] == "x * bob quit"
        await alice.send("/me x" + "\t" * 30 + "\u3000" * 30 + "* bob quit")
        assert await bob.expect("[lobby]") == "[lobby] * alice x * bob quit"
        assert (await carol.event("msg"))["text"] == "x * bob quit"
        await alice.send("/quit x" + " \u00a0" * 100 + "* bob quit")
        assert await bob.expect("* alice quit") == "* alice quit (x * bob quit)"
        assert (await carol.event("quit", nick="alice"))["reason"] == "x * bob quit"
        assert not any("  " in line for line in bob.seen + carol.seen)


async def test_only_control_characters_is_empty_text(fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        await alice.send("\x1b[31m\x07\x01\u202e\x1b[0m")
        assert (await alice.expect("!")).startswith("! empty-text:")
        await alice.send("visible")
        assert await bob.expect("[lobby]") == "[lobby] alice: visible"


# --------------------------------------------------------------------------- registration


async def test_registration_timeout_closes_even_with_a_partial_line(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, register_timeout=0.5) as node:
        loop = asyncio.get_running_loop()
        started = loop.time()
        c = await LineClient.connect(port(node))
        await c.expect("* GET_NAME")
        await c.send(b"ali")  # a partial nickname, never finished
        assert (await c.expect("!", timeout=3.0)).startswith("! register-timeout:")
        await c.closed(timeout=3.0)
        assert loop.time() - started < 0.5 + 2.0
        assert node.roster.named == {}


async def test_an_empty_line_at_the_name_prompt_is_asked_again(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server) as node:
        c = await LineClient.connect(port(node))
        await c.expect("* GET_NAME")
        await c.send("")  # Enter before any mode is chosen
        assert await c.line() == "* GET_NAME: choose a nickname"
        await c.send("not a nick!")  # text mode now; refused, asked again
        await c.expect("* GET_NAME")
        await c.send(" \t\r")  # whitespace only, CRLF
        assert await c.line() == "* GET_NAME: choose a nickname"
        await c.send("alice")
        assert (await c.line()).startswith("* welcome alice")
        await c.expect("* alice joined lobby")
        await c.send("")  # once registered a blank line means nothing
        await c.send("/ping")
        assert await c.line() == "* pong"


async def test_commands_before_registration_in_json_mode(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server) as node:
        c = await JsonClient.connect(port(node))
        for ref, (op, fields) in enumerate([("join", {"room": "dev"}), ("say", {"text": "x"}),
                                            ("part", {}), ("nick", {"nick": "z"}),
                                            ("msg", {"to": "bob", "text": "x"}),
                                            ("history", {})]):
            await c.op(op, ref=ref, **fields)
            error = await c.event("error", ref=ref)
            assert error["code"] == "not-registered", op
        # looking is allowed before joining: who (of a named room) and rooms
        await c.op("who", room="lobby", ref="w")
        assert (await c.event("who", ref="w"))["nicks"] == []
        await c.op("rooms", ref="r")
        await c.event("rooms", ref="r")
        await c.op("who", ref="w2")  # no room named, and in none: nothing to show
        assert (await c.event("error", ref="w2"))["code"] == "not-in-room"
        await c.op("ping", ref="p")
        await c.event("pong", ref="p")
        await c.op("hello", nick="late", ref="h")
        await c.event("welcome", nick="late")
        await c.event("ack", ref="h")


# --------------------------------------------------------------------------- quitting


@pytest.mark.parametrize(("line", "shown"), [
    ("/quit bye now", "(bye now)"),
    ("/QUIT   spaced  out  ", "(spaced out)"),
    ("/exit", ""),
    ("/q", ""),
    ("/close", ""),
    ("/disconnect", ""),
    ("q", ""),
    ("  Q  ", ""),
])
async def test_quit_words_close_and_the_others_see_the_quit(
        fake_server: fakeredis.FakeServer, line: str, shown: str) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        await alice.send(line)
        assert await alice.expect("* bye") == "* bye: goodbye"
        await alice.closed()
        expected = f"* alice quit {shown}".rstrip()
        assert await bob.expect("* alice quit") == expected


# --------------------------------------------------------------------------- rooms


async def test_saying_after_part_is_not_in_room(fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        await alice.send("/part")
        assert await alice.expect("* alice left") == "* alice left lobby"
        assert await bob.expect("* alice left") == "* alice left lobby"
        await alice.send("anyone?")
        assert (await alice.expect("!")).startswith("! not-in-room:")
        await alice.send("/me waves")
        assert (await alice.expect("!")).startswith("! not-in-room:")
        await alice.send("/part lobby")
        assert (await alice.expect("!")).startswith("! not-in-room:")


@pytest.mark.parametrize("room", ["bad:name", "#", "-dash", "a" * 33, "über", "two words"])
async def test_join_bad_room_name(fake_server: fakeredis.FakeServer, room: str) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await alice_joins(node, bob)
        await alice.send(f"/join {room}")
        error = await alice.expect("!")
        assert error.startswith(("! bad-room:", "! bad-args:")), error
        if " " not in room:
            assert error.startswith("! bad-room:")
        await alice.send("still in the lobby")
        assert await bob.expect("[lobby]") == "[lobby] alice: still in the lobby"


# --------------------------------------------------------------------------- batching


async def test_nick_and_first_line_in_one_packet(fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, bob):
        alice = await LineClient.connect(port(node))
        await alice.expect("* GET_NAME")
        await alice.send(b"alice\nhello\n")
        await alice.expect("* welcome alice")
        assert await bob.expect("* alice") == "* alice joined lobby"
        assert await bob.expect("[lobby]") == "[lobby] alice: hello"


SCRIPT = b"carol\nhello one\n/join dev\nin dev\n\xff\nx" + b"y" * 5000 + b"\n/quit done\n"

OBSERVED = [
    "* carol joined lobby",
    "[lobby] carol: hello one",
    "* carol joined dev",
    "[dev] carol: in dev",
    "* carol quit (done)",
]


async def run_script(server: fakeredis.FakeServer, chunk: int) -> tuple[list[str], list[str]]:
    """Send SCRIPT ``chunk`` bytes at a time; return what carol and bob got."""
    async with running_node(server) as node:
        bob = await text_user(port(node), "bob")
        await bob.send("/join dev")
        await bob.expect("* bob joined dev")
        bob.seen.clear()
        carol = await LineClient.connect(port(node))
        for i in range(0, len(SCRIPT), chunk):
            await carol.send(SCRIPT[i:i + chunk])
        got = (await read_all(carol)).decode().split("\n")
        await bob.expect("* carol quit")
        return got, list(bob.seen)


async def test_byte_at_a_time_gives_the_same_session() -> None:
    whole_carol, whole_bob = await run_script(fakeredis.FakeServer(), len(SCRIPT))
    bytes_carol, bytes_bob = await run_script(fakeredis.FakeServer(), 1)
    assert whole_bob == bytes_bob == OBSERVED
    # what carol is sent directly comes in one order; bus events may interleave differently
    assert sorted(whole_carol) == sorted(bytes_carol)
    starts = ("!", "* welcome carol", "* bye")
    direct = [line for line in whole_carol if line.startswith(starts)]
    assert direct == [line for line in bytes_carol if line.startswith(starts)]
    assert [line.split(":")[0] for line in direct] == [
        "* welcome carol — you are in #lobby on node n1; /help lists commands",
        "! bad-encoding", "! line-too-long", "* bye"]


# --------------------------------------------------------------------------- hot path


def say_ops(refs: range, room: str | None = None) -> bytes:
    extra = f',"room":"{room}"' if room else ""
    return b"".join(f'{{"op":"say","text":"line {r}","ref":{r}{extra}}}\n'.encode()
                    for r in refs)


class CountingTransport:
    """Wraps a session's transport and counts its writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def only_session(node: ChatNode, nick: str) -> Any:
    (session,) = [s for s in node.sessions if s.user.nick == nick]
    return session


async def test_lines_sent_together_share_round_trips_and_are_acked_in_order(
        fake_server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_node(fake_server) as node:
        alice = await JsonClient.connect(port(node))
        await alice.op("hello", nick="alice")
        await alice.event("join", nick="alice")
        rounds = 0
        real = node.relay._redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            nonlocal rounds
            rounds += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(node.relay._redis, "pipeline", pipeline)
        await alice.send(say_ops(range(100)))
        acks = [await alice.event("ack") for _ in range(100)]
        assert [a["ref"] for a in acks] == list(range(100))
        ids = [tuple(map(int, a["id"].split("-"))) for a in acks]
        assert ids == sorted(ids)
        assert rounds < 10  # one round trip for every line that arrived together
        history = await node.relay.history("lobby", 200)
        assert [m.text for m in history] == [f"line {i}" for i in range(100)]


async def test_replies_keep_the_order_of_the_commands(fake_server: fakeredis.FakeServer
                                                      ) -> None:
    """Says in flight are answered before a later refusal or reply, in order."""
    async with running_node(fake_server) as node:
        alice = await JsonClient.connect(port(node))
        await alice.op("hello", nick="alice")
        await alice.event("join", nick="alice")
        await alice.send(say_ops(range(1, 3)) + say_ops(range(3, 4), room="nowhere")
                         + say_ops(range(4, 6)) + b'{"op":"ping","ref":6}\n'
                         + say_ops(range(7, 8)))
        replies: list[tuple[str, Any]] = []
        while len(replies) < 7:
            ev = await alice.event()
            if ev["ev"] in ("ack", "error", "pong"):
                replies.append((ev["ev"], ev["ref"]))
        assert replies == [("ack", 1), ("ack", 2), ("error", 3), ("ack", 4), ("ack", 5),
                           ("pong", 6), ("ack", 7)]


async def test_events_of_one_loop_iteration_are_one_write(fake_server: fakeredis.FakeServer
                                                          ) -> None:
    from node.model import Notice

    async with node_with_observer(fake_server) as (node, bob):
        session = only_session(node, "bob")
        counting = CountingTransport(session.connection.transport)
        session.connection.transport = counting
        for i in range(200):
            node.hub.fan_out(Notice(f"event {i}"), [session])
        assert counting.writes == []  # queued; written once at the end of the iteration
        for i in range(200):
            assert await bob.expect("*") == f"* event {i}"
        assert len(counting.writes) == 1
        assert counting.writes[0].count(b"\n") == 200


async def test_output_to_many_sessions_is_flushed_by_one_callback(
        fake_server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message to a room of many schedules one end-of-iteration flush for them all,
    not one callback per recipient."""
    from node.model import Notice

    async with running_node(fake_server) as node:
        clients = [await text_user(port(node), f"u{i}") for i in range(20)]
        sessions = [only_session(node, f"u{i}") for i in range(20)]
        scheduled = 0
        real = asyncio.get_running_loop().call_soon

        def call_soon(callback: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal scheduled
            if "flush" in getattr(callback, "__name__", ""):
                scheduled += 1
            return real(callback, *args, **kwargs)

        monkeypatch.setattr(asyncio.get_running_loop(), "call_soon", call_soon)
        node.hub.fan_out(Notice("to everyone"), sessions)
        monkeypatch.undo()
        assert scheduled == 1
        for c in clients:
            assert await c.expect("* to everyone") == "* to everyone"


async def test_a_large_burst_is_handed_over_early_and_is_no_slow_reader(
        fake_server: fakeredis.FakeServer) -> None:
    """A burst bigger than the send queue, in one iteration, to a client that reads:
    it goes to the socket as it comes, so the client is not taken for a slow reader."""
    from node.model import Notice

    async with node_with_observer(fake_server, send_queue_bytes=64 * 1024,
                                  send_queue_lines=100) as (node, bob):
        session = only_session(node, "bob")
        counting = CountingTransport(session.connection.transport)
        session.connection.transport = counting
        text = "x" * 1000
        for i in range(300):  # ~300 KB, 300 lines
            node.hub.fan_out(Notice(f"{i} {text}"), [session])
        for i in range(300):
            assert (await bob.expect("*")).startswith(f"* {i} x")
        assert node.stats.slow_consumers == 0
        assert 300 // 50 <= len(counting.writes) < 300


async def test_a_connection_costs_one_task(fake_server: fakeredis.FakeServer) -> None:
    async with node_with_observer(fake_server) as (node, _):
        before = len(asyncio.all_tasks())
        clients = [await LineClient.connect(port(node)) for _ in range(10)]
        for c in clients:
            await c.expect("* GET_NAME")
        assert len(asyncio.all_tasks()) - before == 10


async def test_a_departure_slower_than_the_cleanup_says_when_it_is_done(
        fake_server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleanup waits 2 x --redis-timeout for the departure, then logs that it goes on
    in the background; the departure goes on, and its end is logged like a retried one's
    (operators and the reconnect-storm fault case count on that line)."""
    async with running_node(fake_server, redis_timeout=0.1) as node:
        c = await text_user(node.port or 0, "slowpoke")
        gate = asyncio.Event()
        unregister = node.identity.unregister

        async def slow(member: Any, reason: str | None) -> None:
            await gate.wait()
            await unregister(member, reason)

        monkeypatch.setattr(node.identity, "unregister", slow)
        with capture_logs() as logs:
            await c.send("/quit")
            await c.closed()
            await wait_until(lambda: any(e["event"].startswith("could not release")
                                         for e in logs))
            assert not any(e["event"] == "deferred departure done" for e in logs)
            gate.set()
            await wait_until(lambda: any(e["event"] == "deferred departure done"
                                         for e in logs))
        assert await node.relay.lookup("slowpoke") is None
