"""Tests for node.jsoncodec: JSON ops to commands and back, events to JSON lines."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import node.model as m
from node.durations import MAX_DURATION
from node.errors import BadArguments, BadJson, ProtocolError, UnknownCommand
from node.jsoncodec import JSON, OPS

# --------------------------------------------------------------------------- JSON parsing


def parse_json(obj: object) -> m.Command | None:
    return JSON.parse(json.dumps(obj), True)


def json_error(line: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        JSON.parse(line, True)
    return info.value


@pytest.mark.parametrize(
    ("obj", "command"),
    [
        ({"op": "hello", "nick": "alice"}, m.Hello(nick="alice")),
        ({"op": "say", "text": "hi"}, m.Say(text="hi")),
        ({"op": "say", "text": "hi", "room": "dev"}, m.Say(text="hi", room="dev")),
        ({"op": "say", "text": "hi", "room": None}, m.Say(text="hi")),
        ({"op": "me", "text": "waves"}, m.Me(text="waves")),
        ({"op": "me", "text": "waves", "room": "dev"}, m.Me(text="waves", room="dev")),
        ({"op": "join", "room": "dev"}, m.Join(room="dev")),
        ({"op": "part"}, m.Part()),
        ({"op": "part", "room": "dev"}, m.Part(room="dev")),
        ({"op": "msg", "to": "bob", "text": "psst"}, m.Msg(to="bob", text="psst")),
        ({"op": "nick", "nick": "carol"}, m.Nick(nick="carol")),
        ({"op": "who"}, m.Who()),
        ({"op": "who", "room": "dev"}, m.Who(room="dev")),
        ({"op": "rooms"}, m.Rooms()),
        ({"op": "rooms", "after": "dev", "limit": 50}, m.Rooms(after="dev", limit=50)),
        ({"op": "history"}, m.History()),
        ({"op": "history", "room": "dev", "limit": 5}, m.History(room="dev", limit=5)),
        ({"op": "ping"}, m.Ping()),
        ({"op": "help"}, m.Help()),
        ({"op": "quit"}, m.Quit()),
        ({"op": "quit", "reason": "bye"}, m.Quit(reason="bye")),
        ({"op": "ping", "extra": [1, 2], "x": None}, m.Ping()),
    ],
)
def test_json_ops(obj: dict[str, object], command: m.Command) -> None:
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


def test_json_hello_carries_resume_token_and_rooms() -> None:
    cmd = JSON.parse('{"op":"hello","nick":"a","token":"n1/ff","rooms":["lobby","dev"]}', False)
    assert cmd == m.Hello(nick="a", token="n1/ff", rooms=("lobby", "dev"))
    with pytest.raises(BadArguments):
        JSON.parse('{"op":"hello","nick":"a","rooms":"lobby"}', False)
    with pytest.raises(BadArguments):
        JSON.parse('{"op":"hello","nick":"a","rooms":[1]}', False)


def test_json_history_after() -> None:
    cmd = JSON.parse('{"op":"history","room":"dev","after":"17-0","limit":50}', True)
    assert cmd == m.History(room="dev", limit=50, after="17-0")


@pytest.mark.parametrize(("obj", "command"), [
    ({"op": "hello", "nick": "a", "secret": "t", "password": "p"},
     m.Hello(nick="a", secret="t", password="p")),
    ({"op": "auth", "secret": "t", "ref": 1}, m.Auth(secret="t", ref=1)),
    ({"op": "login", "nick": "a", "password": "p"}, m.Login(nick="a", password="p")),
    ({"op": "register", "password": "p"}, m.Register(password="p")),
    ({"op": "password", "password": "p", "ref": 2}, m.Password(password="p", ref=2)),
    ({"op": "oper", "secret": "s"}, m.Oper(secret="s")),
    ({"op": "kick", "nick": "b", "reason": "r"}, m.Kick(nick="b", reason="r")),
    ({"op": "ban", "target": "b", "duration": "1h30m"}, m.Ban(target="b", duration=5400)),
    ({"op": "ban", "target": "::1", "duration": 60, "reason": "r"},
     m.Ban(target="::1", duration=60, reason="r")),
    ({"op": "unban", "target": "b"}, m.Unban(target="b")),
    ({"op": "mute", "nick": "b", "duration": 5}, m.Mute(nick="b", duration=5)),
    ({"op": "unmute", "nick": "b"}, m.Unmute(nick="b")),
    ({"op": "bans", "ref": "x"}, m.Bans(ref="x")),
])
def test_json_security_ops(obj: dict[str, object], command: m.Command) -> None:
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


# --------------------------------------------------------------------------- encoding commands

_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
"""Any string a JSON op can carry (no lone surrogates): quotes, newlines, "" included."""

_BY_TYPE: dict[object, st.SearchStrategy[Any]] = {
    str: _TEXT,
    str | None: st.none() | _TEXT,
    tuple[str, ...]: st.lists(_TEXT, max_size=3).map(tuple),
}
_BY_FIELD: dict[str, st.SearchStrategy[Any]] = {
    "ref": st.none() | _TEXT | st.integers(),
    "duration": st.none() | st.integers(min_value=1, max_value=MAX_DURATION),
    "limit": st.none() | st.integers(min_value=1),
    # what only IRC sessions give (a NOTICE; registering in no room)
    "notice": st.just(False),
    "lobby": st.just(True),
    "tags": st.just(()),
}
"""Fields whose values the parser accepts only in part (or of a type not above)."""

_WIRE_COMMANDS = [cls for cls in m.COMMAND_TYPES if cls is not m.BlankLine]
"""Every command a JSON client can send (a blank line only means something in text mode)."""


def any_command(cls: type[m.Command]) -> st.SearchStrategy[m.Command]:
    """Instances of ``cls`` with any field values the JSON parser accepts."""
    hints = get_type_hints(cls)
    return st.builds(cls, **{
        f.name: _BY_FIELD[f.name] if f.name in _BY_FIELD else _BY_TYPE[hints[f.name]]
        for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("cls", _WIRE_COMMANDS, ids=lambda cls: cls.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_every_command_parses_back_from_its_op(cls: type[m.Command], data: st.DataObject) -> None:
    cmd = data.draw(any_command(cls))
    op = JSON.encode_command(cmd)
    assert op["op"] in OPS
    line = json.dumps(op, ensure_ascii=False)
    assert "\n" not in line  # one line, whatever the fields hold
    assert JSON.parse(line, True) == cmd


def test_each_op_is_the_op_of_one_command_type() -> None:
    every_field = {"nick": "a", "text": "t", "room": "r", "to": "b", "secret": "s",
                   "password": "p", "target": "t"}
    built = [type(parse_json({"op": op, **every_field})) for op in OPS]
    assert len(built) == len(_WIRE_COMMANDS) and set(built) == set(_WIRE_COMMANDS)


@pytest.mark.parametrize(("command", "op"), [
    (m.Say(text="hi"), {"op": "say", "text": "hi"}),
    (m.Say(text="hi", room="dev", ref=0), {"op": "say", "text": "hi", "room": "dev", "ref": 0}),
    (m.Hello(nick="a"), {"op": "hello", "nick": "a"}),
    (m.Hello(nick="a", rooms=("x", "y"), token="n1/f"),
     {"op": "hello", "nick": "a", "rooms": ["x", "y"], "token": "n1/f"}),
    (m.History(room="r", limit=5, after="1-0", ref="c1"),
     {"op": "history", "room": "r", "limit": 5, "after": "1-0", "ref": "c1"}),
    (m.Ban(target="bob", duration=7200, reason="spam"),
     {"op": "ban", "target": "bob", "duration": 7200, "reason": "spam"}),
    (m.Quit(), {"op": "quit"}),
    (m.Bans(ref=3), {"op": "bans", "ref": 3}),
])
def test_encoded_ops_leave_out_what_is_none(command: m.Command, op: dict[str, object]) -> None:
    assert JSON.encode_command(command) == op


def test_a_blank_line_has_no_op() -> None:
    with pytest.raises(ValueError, match="no JSON op"):
        JSON.encode_command(m.BlankLine())
