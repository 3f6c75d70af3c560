"""Tests for node.protocol: the per-connection state machine, and every event in every
mode it serves.

No sockets, no event loop: bytes go in, commands and bytes come out.
"""

from __future__ import annotations

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
    EVENT_TYPES,
    Ack,
    AskNick,
    BanEntry,
    BansReply,
    BlankLine,
    Bye,
    Command,
    Error,
    Event,
    Gap,
    Hello,
    HistoryReply,
    Join,
    Joined,
    Login,
    Message,
    NickChanged,
    Notice,
    Parted,
    Ping,
    Pong,
    Private,
    Quitted,
    RoomsReply,
    Say,
    TopicChanged,
    Welcome,
    Who,
    WhoReply,
)
from node.protocol import JSON, TEXT, ServerConnection

from .test_framing import describe, split_at


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
        TopicChanged(room="dev", nick="bob", text="ship it"),
        b"* bob set the topic of dev: ship it\n",
        b'{"ev":"topic","room":"dev","nick":"bob","text":"ship it"}\n',
    ),
    (
        TopicChanged(room="dev", nick="bob", text=""),
        b"* bob cleared the topic of dev\n",
        b'{"ev":"topic","room":"dev","nick":"bob","text":""}\n',
    ),
    (
        Parted(room="dev", nick="bob", reason="lunch"),
        b"* bob left dev\n",
        b'{"ev":"part","room":"dev","nick":"bob","reason":"lunch"}\n',
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
        RoomsReply(rooms=(("dev", 1), ("lobby", 3)), ref=5, more=True),
        b"* 2 rooms: dev (1), lobby (3)\n* more rooms follow: /rooms lobby\n",
        b'{"ev":"rooms","rooms":[{"room":"dev","members":1},{"room":"lobby","members":3}],'
        b'"more":true,"ref":5}\n',
    ),
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
    (
        HistoryReply(room="dev", messages=(MSG,), ref="c1", complete=False,
                     oldest="1700000000000-0"),
        b"* history dev: 1 message\n"
        b"* some messages in #dev are no longer in history\n"
        b"* [lobby] 01:01:01 alice: hi there\n"
        b"* end of history\n",
        b'{"ev":"history","room":"dev","messages":['
        b'{"room":"lobby","from":"alice","text":"hi there","id":"1700000000000-0","ts":3661.25}],'
        b'"ref":"c1","complete":false,"oldest":"1700000000000-0"}\n',
    ),
    (
        Gap(room="dev", oldest="5-0"),
        b"* some messages in #dev are no longer in history\n",
        b'{"ev":"gap","room":"dev","oldest":"5-0"}\n',
    ),
    (Gap(room="dev"), b"* some messages in #dev are no longer in history\n",
     b'{"ev":"gap","room":"dev"}\n'),
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
    assert {type(event) for event, _, _ in RENDERED} == set(EVENT_TYPES)


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


def test_json_welcome_token_and_bye_reconnect_rendered() -> None:
    welcome = json.loads(JSON.render(Welcome("a", "n1", ("lobby",), "n1/ff", True)))
    assert welcome == {"ev": "welcome", "nick": "a", "node": "n1", "rooms": ["lobby"],
                       "token": "n1/ff", "resumed": True}
    assert json.loads(JSON.render(Bye("node shutting down", reconnect=True))) == {
        "ev": "bye", "reason": "node shutting down", "reconnect": True}
    # text mode never shows the credential
    assert b"n1/ff" not in TEXT.render(Welcome("a", "n1", ("lobby",), "n1/ff", True))


def test_a_login_line_counts_as_the_hello_of_its_batch() -> None:
    conn = ServerConnection()
    out = conn.receive_data(b"/login alice pw\n/join dev\n")
    assert out == [Login(nick="alice", password="pw"), Join(room="dev")]


def test_the_wire_names_stay_importable_from_protocol() -> None:
    # the node and the client import these from node.protocol, wherever they are defined
    import node.framing
    import node.jsoncodec
    import node.protocol as protocol
    import node.textcodec

    assert protocol.LineFramer is node.framing.LineFramer
    assert (protocol.TEXT, protocol.USAGE) == (node.textcodec.TEXT, node.textcodec.USAGE)
    assert protocol.JSON is node.jsoncodec.JSON
    assert protocol.CODECS == {"text": TEXT, "json": JSON}
    assert {codec.name for codec in protocol.CODECS.values()} == set(protocol.CODECS)
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None
