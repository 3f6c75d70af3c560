"""Tests for node.protocol: framing, both codecs and the per-connection state machine.

No sockets, no event loop: bytes go in, commands and bytes come out.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import (
    BadArguments,
    BadEncoding,
    BadJson,
    BufferOverflow,
    LineTooLong,
    ProtocolError,
    UnknownCommand,
)
from node.model import (
    Ack,
    AskNick,
    Auth,
    Ban,
    BanEntry,
    Bans,
    BansReply,
    BlankLine,
    Bye,
    Command,
    Error,
    Event,
    Hello,
    Help,
    History,
    HistoryReply,
    Join,
    Joined,
    Kick,
    Login,
    Me,
    Message,
    Msg,
    Mute,
    Nick,
    NickChanged,
    Notice,
    Oper,
    Part,
    Parted,
    Password,
    Ping,
    Pong,
    Private,
    Quit,
    Quitted,
    Register,
    Rooms,
    RoomsReply,
    Say,
    Unban,
    Unmute,
    Welcome,
    Who,
    WhoReply,
)
from node.protocol import JSON, TEXT, LineFramer, ServerConnection

Output = list[str | ProtocolError]


def describe(items: list[object]) -> list[object]:
    """Errors compare by identity; compare them by type instead."""
    return [type(item) if isinstance(item, ProtocolError) else item for item in items]


def feed_chunks(framer: LineFramer, chunks: list[bytes], eof: bool = False) -> list[object]:
    out: Output = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    if eof:
        out.extend(framer.feed_eof())
    return describe(list(out))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --------------------------------------------------------------------------- framer


def test_framer_splits_lines() -> None:
    framer = LineFramer()
    assert framer.feed(b"one\ntwo\n") == ["one", "two"]
    assert framer.feed(b"thr") == []
    assert framer.feed(b"ee\n") == ["three"]


def test_framer_crlf() -> None:
    framer = LineFramer()
    assert framer.feed(b"one\r\ntwo\r\n\r\n") == ["one", "two", ""]
    # only one trailing \r is dropped; inner ones stay (text cleaning removes them later)
    assert framer.feed(b"a\rb\r\r\n") == ["a\rb\r"]


def test_framer_splits_on_newline_only() -> None:
    data = "a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g\n".encode()
    assert LineFramer().feed(data) == ["a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g"]


def test_framer_crlf_split_across_chunks() -> None:
    framer = LineFramer()
    assert framer.feed(b"hi\r") == []
    assert framer.feed(b"\n") == ["hi"]


def test_exactly_max_line_accepted() -> None:
    framer = LineFramer(max_line=10)
    assert framer.feed(b"x" * 10 + b"\n") == ["x" * 10]
    assert framer.feed(b"y" * 10 + b"\r\n") == ["y" * 10]
    # trickled, the \r after max_line bytes may still be the end of a CRLF
    assert feed_chunks(framer, [b"z" * 10, b"\r", b"\n"]) == ["z" * 10]


def test_over_long_line_reported_once_and_tail_discarded() -> None:
    framer = LineFramer(max_line=10)
    out = framer.feed(b"x" * 11 + b"\nnext\n")
    assert describe(list(out)) == [LineTooLong, "next"]
    assert out[0].code == "line-too-long"  # type: ignore[union-attr]


def test_over_long_line_in_small_chunks() -> None:
    framer = LineFramer(max_line=10, max_buffer=1000)
    chunks = [b"abc"] * 100 + [b"tail of the long line\nnext line\n"]
    assert feed_chunks(framer, chunks) == [LineTooLong, "next line"]


def test_over_long_line_one_byte_at_a_time() -> None:
    data = b"A" * 50 + b"TAIL\r\nok\n"
    framer = LineFramer(max_line=10, max_buffer=1000)
    assert feed_chunks(framer, [bytes([b]) for b in data]) == [LineTooLong, "ok"]


def test_over_long_by_one_crlf() -> None:
    framer = LineFramer(max_line=10)
    assert feed_chunks(framer, [b"z" * 10, b"\r", b"x\n", b"ok\n"]) == [LineTooLong, "ok"]


def test_buffer_overflow_then_input_ignored() -> None:
    framer = LineFramer(max_line=10, max_buffer=100)
    out = feed_chunks(framer, [b"ok\n", b"x" * 60, b"x" * 41])
    assert out == ["ok", LineTooLong, BufferOverflow]
    assert framer.closed
    assert framer.feed(b"\nhello\n") == []
    assert framer.feed_eof() == []


def test_buffer_overflow_whole() -> None:
    framer = LineFramer(max_line=10, max_buffer=100)
    assert feed_chunks(framer, [b"x" * 101 + b"\nhello\n"]) == [LineTooLong, BufferOverflow]


def test_buffer_limit_is_inclusive() -> None:
    framer = LineFramer(max_line=10, max_buffer=100)
    assert feed_chunks(framer, [b"x" * 100, b"\nhello\n"]) == [LineTooLong, "hello"]


def test_buffer_overflow_without_line_limit_hit() -> None:
    framer = LineFramer(max_line=1000, max_buffer=100)
    assert feed_chunks(framer, [b"x" * 101]) == [BufferOverflow]


def test_overflow_error_is_fatal() -> None:
    framer = LineFramer(max_line=10, max_buffer=20)
    out = framer.feed(b"x" * 30)
    assert isinstance(out[-1], BufferOverflow)
    assert out[-1].code == "buffer-overflow"


def test_bad_encoding_then_next_line_fine() -> None:
    framer = LineFramer()
    out = framer.feed(b"caf\xe9\nnext\n\xff\xfe\n")
    assert describe(list(out)) == [BadEncoding, "next", BadEncoding]
    assert framer.feed("héllo 😀\n".encode()) == ["héllo 😀"]


def test_utf8_split_across_chunks() -> None:
    data = "😀\n".encode()
    assert feed_chunks(LineFramer(), [data[:1], data[1:3], data[3:]]) == ["😀"]


def test_feed_eof_delivers_partial_line() -> None:
    framer = LineFramer()
    assert framer.feed(b"one\ntwo") == ["one"]
    assert framer.feed_eof() == ["two"]
    assert framer.feed(b"more\n") == []


def test_feed_eof_partial_errors() -> None:
    assert feed_chunks(LineFramer(), [b"\xff"], eof=True) == [BadEncoding]
    assert feed_chunks(LineFramer(max_line=3), [b"abcd"], eof=True) == [LineTooLong]
    assert feed_chunks(LineFramer(), [b"done\n"], eof=True) == ["done"]


def test_framer_does_not_rescan() -> None:
    framer = LineFramer(max_line=100_000, max_buffer=100_000)
    for _ in range(5000):
        framer.feed(b"x")
    assert framer._searched == 5000
    assert framer.feed(b"\n") == ["x" * 5000]


_stream = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b"\n", b"\r\n", b"\r", b"\xff", "é".encode(), b"x" * 25]),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=200)
@given(data=_stream, cuts=st.lists(st.integers(min_value=0), max_size=20), eof=st.booleans())
def test_framer_chunking_does_not_matter(data: bytes, cuts: list[int], eof: bool) -> None:
    def fresh() -> LineFramer:
        return LineFramer(max_line=16, max_buffer=48)

    whole = feed_chunks(fresh(), [data], eof)
    assert feed_chunks(fresh(), [bytes([b]) for b in data], eof) == whole
    assert feed_chunks(fresh(), split_at(data, cuts), eof) == whole
    for item in whole:
        assert not (isinstance(item, str) and len(item.encode()) > 16)


@settings(max_examples=200)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_server_connection_never_raises(data: bytes, cuts: list[int]) -> None:
    conn = ServerConnection(max_line=64, max_buffer=256)
    out: list[Command | ProtocolError] = []
    for chunk in split_at(data, cuts):
        out.extend(conn.receive_data(chunk))
    out.extend(conn.receive_eof())
    assert all(isinstance(item, Command | ProtocolError) for item in out)


_near_line = st.lists(
    st.sampled_from(
        ["/", "{", "}", '"', ":", "op", "say", "hello", "join", "q", " ", "\n", "\r", "x", "é", "1"]
    ),
    max_size=12,
).map("".join)


@settings(max_examples=200)
@given(
    lines=st.lists(_near_line, max_size=8),
    registered=st.booleans(),
)
def test_server_connection_never_raises_on_near_commands(
    lines: list[str], registered: bool
) -> None:
    for first in ("alice\n", '{"op":"hello","nick":"x"}\n'):
        conn = ServerConnection()
        conn.registered = registered
        out = conn.receive_data((first + "".join(lines)).encode())
        assert all(isinstance(item, Command | ProtocolError) for item in out)


# --------------------------------------------------------------------------- text parsing


def parse_text(line: str, registered: bool = True) -> Command | None:
    return TEXT.parse(line, registered)


def text_error(line: str, registered: bool = True) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        TEXT.parse(line, registered)
    return info.value


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello there", Say(text="hello there")),
        ("  spaced  out  ", Say(text="  spaced  out  ")),
        ("//join is a command", Say(text="/join is a command")),
        ("//", Say(text="/")),
        ("/join dev", Join(room="dev")),
        ("/JOIN #Dev", Join(room="#Dev")),
        ("/join   dev  ", Join(room="dev")),
        ("/part", Part()),
        ("/part dev", Part(room="dev")),
        ("/msg bob hi  there ", Msg(to="bob", text="hi  there ")),
        ("/msg   bob   hi", Msg(to="bob", text="hi")),
        ("/Msg bob x", Msg(to="bob", text="x")),
        ("/me waves  twice", Me(text="waves  twice")),
        ("/nick carol", Nick(nick="carol")),
        ("/who", Who()),
        ("/who dev", Who(room="dev")),
        ("/rooms", Rooms()),
        ("/history", History()),
        ("/history 20", History(limit=20)),
        ("/help", Help()),
        ("/ping", Ping()),
        ("/quit", Quit()),
        ("/quit gone  fishing ", Quit(reason="gone  fishing")),
        ("/QUIT", Quit()),
        ("/exit", Quit()),
        ("/q", Quit()),
        ("/close", Quit()),
        ("/disconnect", Quit()),
        ("/exit later", Quit(reason="later")),
        ("q", Quit()),
        ("Q", Quit()),
        ("  exit  ", Quit()),
        ("CLOSE", Quit()),
        ("disconnect", Quit()),
        ("quit", Say(text="quit")),
        ("q please", Say(text="q please")),
    ],
)
def test_text_registered_commands(line: str, command: Command) -> None:
    assert parse_text(line) == command


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_text_blank_is_nothing_once_registered_and_asks_again_before(line: str) -> None:
    assert parse_text(line) is None
    assert parse_text(line, registered=False) == BlankLine()


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("alice", Hello(nick="alice")),
        ("  alice  ", Hello(nick="alice")),
        ("not a nick", Hello(nick="not a nick")),
        ("/join dev", Hello(nick="/join dev")),
        ("/quit", Quit()),
        ("/quit bye", Quit(reason="bye")),
        ("/disconnect", Quit()),
        ("exit", Quit()),
        (" Q ", Quit()),
    ],
)
def test_text_unregistered(line: str, command: Command) -> None:
    assert parse_text(line, registered=False) == command


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("/join", "usage: /join ROOM"),
        ("/join a b", "usage: /join ROOM"),
        ("/part a b", "usage: /part [ROOM]"),
        ("/msg", "usage: /msg NICK TEXT"),
        ("/msg bob", "usage: /msg NICK TEXT"),
        ("/msg bob   ", "usage: /msg NICK TEXT"),
        ("/me", "usage: /me TEXT"),
        ("/me   ", "usage: /me TEXT"),
        ("/nick", "usage: /nick NEW"),
        ("/nick a b", "usage: /nick NEW"),
        ("/who a b", "usage: /who [ROOM]"),
        ("/history 0", "usage: /history [N] (N a positive integer)"),
        ("/history -3", "usage: /history [N] (N a positive integer)"),
        ("/history ten", "usage: /history [N] (N a positive integer)"),
        ("/history 1.5", "usage: /history [N] (N a positive integer)"),
        ("/history ٣", "usage: /history [N] (N a positive integer)"),
        ("/history 1 2", "usage: /history [N] (N a positive integer)"),
    ],
)
def test_text_bad_arguments(line: str, usage: str) -> None:
    error = text_error(line)
    assert isinstance(error, BadArguments)
    assert error.code == "bad-args"
    assert error.text == usage
    assert error.ref is None


@pytest.mark.parametrize("line", ["/frobnicate", "/", "/ join", "/joinx dev"])
def test_text_unknown_command(line: str) -> None:
    error = text_error(line)
    assert isinstance(error, UnknownCommand)
    assert error.code == "unknown-command"


def test_text_unknown_command_names_it() -> None:
    assert text_error("/frob\x1b[2J x").text == "unknown command /frob[2J; try /help"


# --------------------------------------------------------------------------- JSON parsing


def parse_json(obj: object) -> Command | None:
    return JSON.parse(json.dumps(obj), True)


def json_error(line: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        JSON.parse(line, True)
    return info.value


@pytest.mark.parametrize(
    ("obj", "command"),
    [
        ({"op": "hello", "nick": "alice"}, Hello(nick="alice")),
        ({"op": "say", "text": "hi"}, Say(text="hi")),
        ({"op": "say", "text": "hi", "room": "dev"}, Say(text="hi", room="dev")),
        ({"op": "say", "text": "hi", "room": None}, Say(text="hi")),
        ({"op": "me", "text": "waves"}, Me(text="waves")),
        ({"op": "me", "text": "waves", "room": "dev"}, Me(text="waves", room="dev")),
        ({"op": "join", "room": "dev"}, Join(room="dev")),
        ({"op": "part"}, Part()),
        ({"op": "part", "room": "dev"}, Part(room="dev")),
        ({"op": "msg", "to": "bob", "text": "psst"}, Msg(to="bob", text="psst")),
        ({"op": "nick", "nick": "carol"}, Nick(nick="carol")),
        ({"op": "who"}, Who()),
        ({"op": "who", "room": "dev"}, Who(room="dev")),
        ({"op": "rooms"}, Rooms()),
        ({"op": "history"}, History()),
        ({"op": "history", "room": "dev", "limit": 5}, History(room="dev", limit=5)),
        ({"op": "ping"}, Ping()),
        ({"op": "help"}, Help()),
        ({"op": "quit"}, Quit()),
        ({"op": "quit", "reason": "bye"}, Quit(reason="bye")),
        ({"op": "ping", "extra": [1, 2], "x": None}, Ping()),
    ],
)
def test_json_ops(obj: dict[str, object], command: Command) -> None:
    assert parse_json(obj) == command
    for ref in ("r-1", 7, 0, -2, ""):
        with_ref = parse_json({**obj, "ref": ref})
        assert with_ref is not None
        assert with_ref.ref == ref
        assert type(with_ref.ref) is type(ref)


def test_json_blank_is_nothing() -> None:
    assert JSON.parse("", True) is None
    assert JSON.parse("  \t", False) is None


@pytest.mark.parametrize(
    "line", ["hello", "[1,2]", '"op"', "42", "null", "{", '{"op":"ping"} x', "{'op':'ping'}"]
)
def test_json_not_an_object(line: str) -> None:
    error = json_error(line)
    assert isinstance(error, BadJson)
    assert error.code == "bad-json"


def test_json_deep_nesting_is_bad_json() -> None:
    assert isinstance(json_error("[" * 100_000), BadJson)


@pytest.mark.parametrize(
    ("line", "ref"),
    [
        ("{}", None),
        ('{"ref":"a"}', "a"),
        ('{"op":5,"ref":1}', 1),
        ('{"op":"frob","ref":"z"}', "z"),
        ('{"op":"PING","ref":2}', 2),
    ],
)
def test_json_unknown_op(line: str, ref: str | int | None) -> None:
    error = json_error(line)
    assert isinstance(error, UnknownCommand)
    assert error.code == "unknown-command"
    assert error.ref == ref


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"op": "hello"}, "nick"),
        ({"op": "hello", "nick": 3}, "nick"),
        ({"op": "say"}, "text"),
        ({"op": "say", "text": ["hi"]}, "text"),
        ({"op": "say", "text": "hi", "room": 1}, "room"),
        ({"op": "me", "text": True}, "text"),
        ({"op": "join"}, "room"),
        ({"op": "join", "room": {"a": 1}}, "room"),
        ({"op": "part", "room": 5}, "room"),
        ({"op": "msg", "text": "hi"}, "to"),
        ({"op": "msg", "to": "bob"}, "text"),
        ({"op": "nick"}, "nick"),
        ({"op": "who", "room": False}, "room"),
        ({"op": "history", "limit": 0}, "limit"),
        ({"op": "history", "limit": -1}, "limit"),
        ({"op": "history", "limit": "5"}, "limit"),
        ({"op": "history", "limit": 2.5}, "limit"),
        ({"op": "history", "limit": True}, "limit"),
        ({"op": "quit", "reason": 1}, "reason"),
    ],
)
def test_json_bad_fields_name_the_field_and_echo_ref(obj: dict[str, object], field: str) -> None:
    error = json_error(json.dumps({**obj, "ref": "r9"}))
    assert isinstance(error, BadArguments)
    assert error.code == "bad-args"
    assert repr(field) in error.text
    assert error.ref == "r9"


@pytest.mark.parametrize("ref", [True, False, 1.5, [1], {"a": 1}])
def test_json_bad_ref(ref: object) -> None:
    error = json_error(json.dumps({"op": "ping", "ref": ref}))
    assert isinstance(error, BadArguments)
    assert "'ref'" in error.text
    assert error.ref is None


def test_json_lone_surrogate_refused() -> None:
    error = json_error('{"op":"say","text":"\\ud800","ref":1}')
    assert isinstance(error, BadArguments)
    assert error.ref == 1
    assert isinstance(json_error('{"op":"ping","ref":"\\udfff"}'), BadArguments)


# --------------------------------------------------------------------------- rendering

MSG = Message(room="lobby", sender="alice", text="hi there", id="1700000000000-0", ts=3661.25)
ACTION = Message(room="lobby", sender="alice", text="waves", id="1-1", ts=0.0, action=True)
PM = Private(sender="alice", to="bob", text="psst", id="p-1", ts=1700000000.5)

# (event, text bytes, JSON bytes)
RENDERED: list[tuple[Event, bytes, bytes]] = [
    (Notice(text="hello"), b"* hello\n", b'{"ev":"notice","text":"hello"}\n'),
    (
        Notice(text="line one\nline two"),
        b"* line one\n* line two\n",
        b'{"ev":"notice","text":"line one\\nline two"}\n',
    ),
    (
        AskNick(),
        b"* GET_NAME: choose a nickname\n",
        b'{"ev":"ask_nick","text":"GET_NAME: choose a nickname"}\n',
    ),
    (
        Welcome(nick="alice", node="n1", rooms=("lobby",)),
        "* welcome alice — you are in #lobby on node n1; /help lists commands\n".encode(),
        b'{"ev":"welcome","nick":"alice","node":"n1","rooms":["lobby"]}\n',
    ),
    (
        Welcome(nick="alice", node="n1", rooms=("lobby", "dev")),
        "* welcome alice — you are in #lobby, #dev on node n1; /help lists commands\n".encode(),
        b'{"ev":"welcome","nick":"alice","node":"n1","rooms":["lobby","dev"]}\n',
    ),
    (
        MSG,
        b"[lobby] alice: hi there\n",
        b'{"ev":"msg","room":"lobby","from":"alice","text":"hi there",'
        b'"id":"1700000000000-0","ts":3661.25}\n',
    ),
    (
        ACTION,
        b"[lobby] * alice waves\n",
        b'{"ev":"msg","room":"lobby","from":"alice","text":"waves","id":"1-1","ts":0.0,'
        b'"action":true}\n',
    ),
    (
        PM,
        b"[pm] alice: psst\n",
        b'{"ev":"pm","from":"alice","to":"bob","text":"psst","id":"p-1","ts":1700000000.5}\n',
    ),
    (
        Joined(room="dev", nick="bob"),
        b"* bob joined dev\n",
        b'{"ev":"join","room":"dev","nick":"bob"}\n',
    ),
    (
        Parted(room="dev", nick="bob"),
        b"* bob left dev\n",
        b'{"ev":"part","room":"dev","nick":"bob"}\n',
    ),
    (Quitted(nick="bob"), b"* bob quit\n", b'{"ev":"quit","nick":"bob"}\n'),
    (
        Quitted(nick="bob", reason="gone"),
        b"* bob quit (gone)\n",
        b'{"ev":"quit","nick":"bob","reason":"gone"}\n',
    ),
    (
        NickChanged(old="bob", new="robert"),
        b"* bob is now robert\n",
        b'{"ev":"nick","old":"bob","new":"robert"}\n',
    ),
    (
        WhoReply(room="lobby", nicks=("carol", "Bob", "alice")),
        b"* lobby: 3 users: alice, Bob, carol\n",
        b'{"ev":"who","room":"lobby","nicks":["alice","Bob","carol"]}\n',
    ),
    (
        WhoReply(room="dev", nicks=("bob",), ref="w"),
        b"* dev: 1 user: bob\n",
        b'{"ev":"who","room":"dev","nicks":["bob"],"ref":"w"}\n',
    ),
    (
        WhoReply(room="dev", nicks=()),
        b"* dev: 0 users\n",
        b'{"ev":"who","room":"dev","nicks":[]}\n',
    ),
    (
        RoomsReply(rooms=(("lobby", 3), ("dev", 1)), ref=4),
        b"* 2 rooms: lobby (3), dev (1)\n",
        b'{"ev":"rooms","rooms":[{"room":"lobby","members":3},{"room":"dev","members":1}],'
        b'"ref":4}\n',
    ),
    (RoomsReply(rooms=()), b"* 0 rooms\n", b'{"ev":"rooms","rooms":[]}\n'),
    (
        HistoryReply(room="lobby", messages=(MSG, ACTION), ref="h"),
        b"* history lobby: 2 messages\n"
        b"* [lobby] 01:01:01 alice: hi there\n"
        b"* [lobby] 00:00:00 * alice waves\n"
        b"* end of history\n",
        b'{"ev":"history","room":"lobby","messages":['
        b'{"room":"lobby","from":"alice","text":"hi there","id":"1700000000000-0","ts":3661.25},'
        b'{"room":"lobby","from":"alice","text":"waves","id":"1-1","ts":0.0,"action":true}],'
        b'"ref":"h"}\n',
    ),
    (
        HistoryReply(room="dev", messages=()),
        b"* history dev: 0 messages\n* end of history\n",
        b'{"ev":"history","room":"dev","messages":[]}\n',
    ),
    (Ack(ref="r1", id="5-0"), b"", b'{"ev":"ack","ref":"r1","id":"5-0"}\n'),
    (Ack(ref=2), b"", b'{"ev":"ack","ref":2}\n'),
    (Ack(ref=None), b"", b'{"ev":"ack","ref":null}\n'),
    (
        Error(code="nick-taken", text="that nickname is in use"),
        b"! nick-taken: that nickname is in use\n",
        b'{"ev":"error","code":"nick-taken","text":"that nickname is in use"}\n',
    ),
    (
        Error(code="bad-args", text="usage: /msg NICK TEXT", ref=3),
        b"! bad-args: usage: /msg NICK TEXT\n",
        b'{"ev":"error","code":"bad-args","text":"usage: /msg NICK TEXT","ref":3}\n',
    ),
    (Pong(), b"* pong\n", b'{"ev":"pong"}\n'),
    (Pong(ref="p"), b"* pong\n", b'{"ev":"pong","ref":"p"}\n'),
    (
        Bye(reason="server shutting down"),
        b"* bye: server shutting down\n",
        b'{"ev":"bye","reason":"server shutting down"}\n',
    ),
    (
        BansReply(entries=(BanEntry("nick-ban", "bob", "op", "spam", 3599.5),
                           BanEntry("ip-ban", "10.0.0.1", "op", None, 60.0)), ref=4),
        "* 2 bans or mutes in force\n* nick-ban bob — 1h left, by op: spam\n"
        "* ip-ban 10.0.0.1 — 1m left, by op\n* end of bans\n".encode(),
        b'{"ev":"bans","bans":[{"kind":"nick-ban","target":"bob","by":"op","reason":"spam",'
        b'"expires_in":3599.5},{"kind":"ip-ban","target":"10.0.0.1","by":"op",'
        b'"expires_in":60.0}],"ref":4}\n',
    ),
]


@pytest.mark.parametrize(("event", "text", "_json"), RENDERED)
def test_render_text(event: Event, text: bytes, _json: bytes) -> None:
    assert TEXT.render(event) == text


@pytest.mark.parametrize(("event", "_text", "expected"), RENDERED)
def test_render_json(event: Event, _text: bytes, expected: bytes) -> None:
    assert JSON.render(event) == expected


def test_every_event_type_is_covered() -> None:
    # by name: dataclass(slots=True) leaves the pre-slots classes among the subclasses
    covered = {type(event).__name__ for event, _, _ in RENDERED}
    assert covered == {cls.__name__ for cls in Event.__subclasses__()}


def test_render_non_ascii() -> None:
    event = Message(room="lobby", sender="Дима", text="привет 😀", id="1-0", ts=0.0)
    assert TEXT.render(event) == "[lobby] Дима: привет 😀\n".encode()
    assert JSON.render(event) == (
        '{"ev":"msg","room":"lobby","from":"Дима","text":"привет 😀","id":"1-0","ts":0.0}\n'
    ).encode()


def test_text_render_is_defensive_about_line_breaks() -> None:
    event = Message(room="lobby", sender="a\nb", text="x\r\ny", id="1-0", ts=0.0)
    assert TEXT.render(event) == b"[lobby] a b: x  y\n"
    assert TEXT.render(Bye(reason="a\nb")) == b"* bye: a b\n"
    assert TEXT.render(Notice(text="a\r\nb")) == b"* a \n* b\n"
    assert JSON.render(event).count(b"\n") == 1


def test_history_time_is_utc() -> None:
    message = Message(room="r", sender="a", text="t", id="1", ts=1700000000.9)
    assert TEXT.render(HistoryReply(room="r", messages=(message,))).splitlines()[1] == (
        b"* [r] 22:13:20 a: t"
    )


def test_history_single_message_wording() -> None:
    reply = HistoryReply(room="r", messages=(MSG,))
    assert TEXT.render(reply).startswith(b"* history r: 1 message\n")


def test_text_render_does_not_depend_on_the_local_time_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # history lines carry HH:MM:SS in UTC whatever the node's zone; POSIX TZ strings
    # need no tz database: UTC+14 and UTC-3:30
    try:
        for zone, hour in (("KIR-14", 14), ("NST+3:30", 20)):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            assert time.localtime(0).tm_hour == hour  # the zone is really in effect
            for event, text, _ in RENDERED:
                assert TEXT.render(event) == text
    finally:
        monkeypatch.undo()
        time.tzset()


_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
"""Any text a node can hold (it decodes UTF-8, so never a lone surrogate): newlines,
U+2028, quotes, backslashes, control characters included."""


@given(a=_ANY_TEXT, b=_ANY_TEXT)
def test_json_events_parse_back_to_what_was_rendered(a: str, b: str) -> None:
    # what a JSON client does: cut at b"\n", json.loads each line
    cases: list[tuple[Event, dict[str, object]]] = [
        (Message(room=b, sender=a, text=b, id="1-0", ts=1.5),
         {"ev": "msg", "room": b, "from": a, "text": b, "id": "1-0", "ts": 1.5}),
        (Message(room="r", sender=a, text=b, id="2-0", ts=0.0, action=True),
         {"ev": "msg", "room": "r", "from": a, "text": b, "id": "2-0", "ts": 0.0,
          "action": True}),
        (Private(sender=a, to=b, text=a + b, id="p-1", ts=2.0),
         {"ev": "pm", "from": a, "to": b, "text": a + b, "id": "p-1", "ts": 2.0}),
        (Error(code="bad-args", text=a, ref=b),
         {"ev": "error", "code": "bad-args", "text": a, "ref": b}),
        (Quitted(nick=a, reason=b), {"ev": "quit", "nick": a, "reason": b}),
        (NickChanged(old=a, new=b), {"ev": "nick", "old": a, "new": b}),
        (WhoReply(room="r", nicks=(a, b), ref=a),
         {"ev": "who", "room": "r",
          "nicks": sorted((a, b), key=lambda n: (n.casefold(), n)), "ref": a}),
        (Notice(text=a), {"ev": "notice", "text": a}),
    ]
    for event, fields in cases:
        line = JSON.render(event)
        assert line.index(b"\n") == len(line) - 1  # one line, whatever the text holds
        assert json.loads(line) == fields
        if not isinstance(event, Notice):  # a notice may be several text lines
            shown = TEXT.render(event)
            assert shown.index(b"\n") == len(shown) - 1
            assert b"\r" not in shown


# --------------------------------------------------------------------------- connection


def test_text_mode_detected() -> None:
    conn = ServerConnection()
    assert conn.mode == "pending"
    assert conn.codec is TEXT
    conn = ServerConnection()
    assert conn.render(AskNick()) == b"* GET_NAME: choose a nickname\n"
    assert conn.receive_data(b"\r\n  \nalice\n") == [BlankLine(), BlankLine(),
                                                    Hello(nick="alice")]
    assert conn.mode == "text"
    assert conn.codec is TEXT


def test_blank_lines_before_a_name_ask_again_and_choose_no_mode() -> None:
    conn = ServerConnection()
    assert conn.receive_data(b"\n") == [BlankLine()]
    assert conn.receive_data(b" \t\r\n") == [BlankLine()]
    assert (conn.mode, conn.registered) == ("pending", False)
    assert conn.render(AskNick()) == b"* GET_NAME: choose a nickname\n"
    # after a name in the same batch a blank line is parsed as registered: nothing (a
    # refused name is asked for again anyway)
    assert conn.receive_data(b"bad nick!\n\n") == [Hello(nick="bad nick!")]
    assert conn.mode == "text"
    assert conn.receive_data(b"\n") == [BlankLine()]  # the name was refused
    assert conn.receive_data(b"alice\n\n/ping\n") == [Hello(nick="alice"), Ping()]
    conn.registered = True
    assert conn.receive_data(b"\n  \n") == []
    json_conn = ServerConnection()
    assert json_conn.receive_data(b'{"op":"hello","nick":"x"}\n\n') == [Hello(nick="x")]
    assert json_conn.receive_data(b"\n") == []


def test_json_mode_detected() -> None:
    conn = ServerConnection()
    out = conn.receive_data(b'  {"op":"hello","nick":"x","ref":1}\n{"op":"ping"}\n')
    assert out == [Hello(nick="x", ref=1), Ping()]
    assert conn.mode == "json"
    assert conn.codec is JSON
    assert conn.render(Pong(ref=1)) == b'{"ev":"pong","ref":1}\n'


def test_mode_is_chosen_once() -> None:
    conn = ServerConnection()
    conn.receive_data(b"alice\n")
    conn.registered = True
    assert conn.receive_data(b'{"op":"ping"}\n') == [Say(text='{"op":"ping"}')]
    assert conn.mode == "text"

    conn = ServerConnection()
    conn.receive_data(b'{"op":"hello","nick":"x"}\n')
    out = conn.receive_data(b"/ping\n")
    assert describe(list(out)) == [BadJson]
    assert conn.mode == "json"


def test_mode_not_chosen_by_errors() -> None:
    conn = ServerConnection(max_line=8)
    out = conn.receive_data(b"\xff\n{{{{{{{{{{{{\nalice\n")
    assert describe(list(out)) == [BadEncoding, LineTooLong, Hello(nick="alice")]
    assert conn.mode == "text"


def test_text_registration_follows_session_flag() -> None:
    conn = ServerConnection()
    assert conn.receive_data(b"alice\n") == [Hello(nick="alice")]
    # the session refused the name: the next line is another attempt
    assert conn.receive_data(b"alice2\n") == [Hello(nick="alice2")]
    conn.registered = True
    assert conn.receive_data(b"hello all\n/who\n") == [Say(text="hello all"), Who()]


def test_lines_after_hello_in_one_batch_are_registered_commands() -> None:
    conn = ServerConnection()
    out = conn.receive_data(b"alice\nhi everyone\n/join dev\n")
    assert out == [Hello(nick="alice"), Say(text="hi everyone"), Join(room="dev")]


def test_errors_come_back_in_order() -> None:
    conn = ServerConnection(max_line=20)
    conn.receive_data(b"alice\n")
    conn.registered = True
    out = conn.receive_data(b"one\n/frob\n" + b"x" * 30 + b"\n/msg\ntwo\n")
    assert describe(list(out)) == [
        Say(text="one"),
        UnknownCommand,
        LineTooLong,
        BadArguments,
        Say(text="two"),
    ]


def test_json_errors_carry_ref() -> None:
    conn = ServerConnection()
    out = conn.receive_data(b'{"op":"hello","nick":"x"}\n{"op":"join","ref":"j1"}\n')
    assert isinstance(out[1], BadArguments)
    assert out[1].ref == "j1"


def test_nothing_after_fatal_error() -> None:
    conn = ServerConnection(max_line=10, max_buffer=50)
    out = conn.receive_data(b"alice\n" + b"x" * 60 + b"\nbob\n")
    assert describe(list(out)) == [Hello(nick="alice"), LineTooLong, BufferOverflow]
    assert conn.receive_data(b"more\n") == []
    assert conn.receive_eof() == []


def test_receive_eof() -> None:
    conn = ServerConnection()
    assert conn.receive_data(b"alice\n") == [Hello(nick="alice")]
    conn.registered = True
    assert conn.receive_data(b"bye for now") == []
    assert conn.receive_eof() == [Say(text="bye for now")]
    assert conn.receive_eof() == []
    assert conn.receive_data(b"late\n") == []


def test_one_byte_at_a_time_equals_whole() -> None:
    data = b'\n{"op":"hello","nick":"x"}\r\n{"op":"say","text":"hi","ref":3}\n{bad\n\xff\n'

    def run(chunks: list[bytes]) -> list[object]:
        conn = ServerConnection()
        out: list[Command | ProtocolError] = []
        for chunk in chunks:
            out.extend(conn.receive_data(chunk))
        return describe(list(out))

    whole = run([data])
    assert whole == [BlankLine(), Hello(nick="x"), Say(text="hi", ref=3), BadJson,
                     BadEncoding]
    assert run([bytes([b]) for b in data]) == whole


def test_next_command_pulls_the_same_items() -> None:
    conn = ServerConnection()
    conn.receive_data(b"alice\nhi\n")
    assert conn.next_command() == Hello(nick="alice")
    conn.registered = True
    assert conn.next_command() == Say(text="hi")
    assert conn.next_command() is None
    # once pulling, batches queue up until pulled
    conn.receive_data(b"one\n")
    conn.receive_data(b"two\n/frob\n")
    conn.receive_eof()
    pulled = []
    while (item := conn.next_command()) is not None:
        pulled.append(item)
    assert describe(list(pulled)) == [Say(text="one"), Say(text="two"), UnknownCommand]


def test_list_callers_accumulate_nothing() -> None:
    conn = ServerConnection()
    for _ in range(100):
        conn.receive_data(b"line\n")
    assert conn.next_command() == Hello(nick="line")
    assert conn.next_command() is None


def test_next_command_after_fatal_error() -> None:
    conn = ServerConnection(max_line=10, max_buffer=20)
    conn.receive_data(b"alice\n" + b"x" * 30)
    assert conn.next_command() == Hello(nick="alice")
    assert isinstance(conn.next_command(), LineTooLong)
    assert isinstance(conn.next_command(), BufferOverflow)
    conn.receive_data(b"\nmore\n")
    assert conn.next_command() is None


def test_json_hello_carries_resume_token_and_rooms() -> None:
    cmd = JSON.parse('{"op":"hello","nick":"a","token":"n1/ff","rooms":["lobby","dev"]}', False)
    assert cmd == Hello(nick="a", token="n1/ff", rooms=("lobby", "dev"))
    with pytest.raises(BadArguments):
        JSON.parse('{"op":"hello","nick":"a","rooms":"lobby"}', False)
    with pytest.raises(BadArguments):
        JSON.parse('{"op":"hello","nick":"a","rooms":[1]}', False)


def test_json_history_after() -> None:
    cmd = JSON.parse('{"op":"history","room":"dev","after":"17-0","limit":50}', True)
    assert cmd == History(room="dev", limit=50, after="17-0")


def test_json_welcome_token_and_bye_reconnect_rendered() -> None:
    welcome = json.loads(JSON.render(Welcome("a", "n1", ("lobby",), "n1/ff", True)))
    assert welcome == {"ev": "welcome", "nick": "a", "node": "n1", "rooms": ["lobby"],
                       "token": "n1/ff", "resumed": True}
    assert json.loads(JSON.render(Bye("node shutting down", reconnect=True))) == {
        "ev": "bye", "reason": "node shutting down", "reconnect": True}
    # text mode never shows the credential
    assert b"n1/ff" not in TEXT.render(Welcome("a", "n1", ("lobby",), "n1/ff", True))


# --------------------------------------------------------------------------- security commands


@pytest.mark.parametrize(("line", "command"), [
    ("/auth  tok en ", Auth(secret="tok en")),
    ("/login alice my pass phrase", Login(nick="alice", password="my pass phrase")),
    ("/register hunter22", Register(password="hunter22")),
    ("/password  new pass phrase ", Password(password="new pass phrase")),
    ("/oper s3cret", Oper(secret="s3cret")),
    ("/kick bob", Kick(nick="bob")),
    ("/kick bob  go  away ", Kick(nick="bob", reason="go  away")),
    ("/ban bob", Ban(target="bob")),
    ("/ban bob 10m", Ban(target="bob", duration=600)),
    ("/ban bob 2h spam links", Ban(target="bob", duration=7200, reason="spam links")),
    ("/ban 10.0.0.1 spam", Ban(target="10.0.0.1", reason="spam")),
    ("/BAN bob spam 10m", Ban(target="bob", reason="spam 10m")),
    ("/unban 10.0.0.1", Unban(target="10.0.0.1")),
    ("/mute bob 30s", Mute(nick="bob", duration=30)),
    ("/mute bob hush", Mute(nick="bob", reason="hush")),
    ("/unmute bob", Unmute(nick="bob")),
    ("/bans", Bans()),
])
def test_text_security_commands(line: str, command: Command) -> None:
    assert parse_text(line) == command


@pytest.mark.parametrize("line", [
    "/auth", "/login alice", "/login", "/register", "/password", "/password  ", "/oper  ",
    "/kick", "/ban",
    "/ban bob 0m", "/ban bob 99999d", "/ban bob 5x", "/unban", "/unban a b", "/mute",
    "/unmute", "/bans all",
])
def test_text_security_bad_args(line: str) -> None:
    assert isinstance(text_error(line), BadArguments)


def test_auth_and_login_work_before_a_name_the_rest_are_nick_attempts() -> None:
    assert parse_text("/auth tok", registered=False) == Auth(secret="tok")
    assert parse_text("/login a pw", registered=False) == Login(nick="a", password="pw")
    assert parse_text("/oper x", registered=False) == Hello(nick="/oper x")


def test_secrets_never_show_in_a_repr() -> None:
    for cmd in (Auth(secret="S1"), Login(nick="a", password="S1"), Register(password="S1"),
                Password(password="S1"), Oper(secret="S1"),
                Hello(nick="a", secret="S1", password="S1")):
        assert "S1" not in repr(cmd)


def test_a_login_line_counts_as_the_hello_of_its_batch() -> None:
    conn = ServerConnection()
    out = conn.receive_data(b"/login alice pw\n/join dev\n")
    assert out == [Login(nick="alice", password="pw"), Join(room="dev")]


@pytest.mark.parametrize(("obj", "command"), [
    ({"op": "hello", "nick": "a", "secret": "t", "password": "p"},
     Hello(nick="a", secret="t", password="p")),
    ({"op": "auth", "secret": "t", "ref": 1}, Auth(secret="t", ref=1)),
    ({"op": "login", "nick": "a", "password": "p"}, Login(nick="a", password="p")),
    ({"op": "register", "password": "p"}, Register(password="p")),
    ({"op": "password", "password": "p", "ref": 2}, Password(password="p", ref=2)),
    ({"op": "oper", "secret": "s"}, Oper(secret="s")),
    ({"op": "kick", "nick": "b", "reason": "r"}, Kick(nick="b", reason="r")),
    ({"op": "ban", "target": "b", "duration": "1h30m"}, Ban(target="b", duration=5400)),
    ({"op": "ban", "target": "::1", "duration": 60, "reason": "r"},
     Ban(target="::1", duration=60, reason="r")),
    ({"op": "unban", "target": "b"}, Unban(target="b")),
    ({"op": "mute", "nick": "b", "duration": 5}, Mute(nick="b", duration=5)),
    ({"op": "unmute", "nick": "b"}, Unmute(nick="b")),
    ({"op": "bans", "ref": "x"}, Bans(ref="x")),
])
def test_json_security_ops(obj: dict[str, object], command: Command) -> None:
    assert parse_json(obj) == command


@pytest.mark.parametrize("obj", [
    {"op": "ban", "target": "b", "duration": 0},
    {"op": "ban", "target": "b", "duration": True},
    {"op": "ban", "target": "b", "duration": 1.5},
    {"op": "ban", "target": "b", "duration": "soon"},
    {"op": "mute", "nick": "b", "duration": 10**12},
    {"op": "login", "nick": "a"},
    {"op": "oper"},
])
def test_json_security_bad_fields(obj: dict[str, object]) -> None:
    assert isinstance(json_error(json.dumps(obj)), BadArguments)


@given(st.text(max_size=60))
def test_ban_and_mute_lines_never_raise_anything_else(rest: str) -> None:
    for word in ("ban", "mute", "kick", "login", "unban"):
        try:
            cmd = parse_text(f"/{word} {rest}")
        except ProtocolError:
            continue
        assert cmd is not None
        if isinstance(cmd, Ban | Mute):
            assert cmd.duration is None or cmd.duration >= 1
