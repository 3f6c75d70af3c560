"""Bus envelopes: symmetric serialize/parse, and nothing but BadEnvelope for garbage."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import envelope as env
from node.envelope import (
    BadEnvelope,
    DirectMsg,
    RoomJoin,
    RoomMsg,
    RoomNick,
    RoomPart,
    RoomQuit,
    parse,
    ts_of_id,
)
from node.errors import HubbubError

EXAMPLES: list[env.Envelope] = [
    RoomMsg("lobby", "alice", "n1/1", "hello"),
    RoomMsg("dev", "bob", "n2/7", "waves", action=True),
    RoomMsg("dev", "bob", "n2/7", "with id", id="1700000000000-3"),
    RoomMsg("dev", "bob", "n2/7", "both", action=True, id="1-0"),
    RoomJoin("lobby", "alice"),
    RoomJoin("lobby", "alice", id="1700000000000-1"),
    RoomPart("lobby", "alice"),
    RoomQuit("lobby", "alice", "e1", "bye now"),
    RoomQuit("dev", "alice", "e1", id="5-0"),
    RoomNick("lobby", "alice", "alicia", "n1/1", "e2"),
    RoomNick("dev", "alice", "ALICE", "n1/1", "e3", id="7-1"),
    DirectMsg("alice", "n1/1", "Bob", "bob", "psst", "pm-1-n1/1", 1700000000.25),
    env.Sanction("kick", "bob", "", "op", "spam"),
    env.Sanction("ban", "", "10.0.0.1", "op", None, 3600.0),
    env.Sanction("mute", "bob", "", "op", None, 30.5),
]


@pytest.mark.parametrize("envelope", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_kind_round_trips(envelope: env.Envelope) -> None:
    data = envelope.serialize()
    assert isinstance(data, bytes)
    assert parse(data) == envelope
    assert parse(data.decode()) == envelope


def test_every_kind_is_covered() -> None:
    assert {type(e) for e in EXAMPLES} == {RoomMsg, RoomJoin, RoomPart, RoomQuit, RoomNick,
                                          DirectMsg, env.Sanction}


def test_room_msg_without_id_serializes_without_id() -> None:
    obj = json.loads(RoomMsg("lobby", "alice", "n1/1", "hi").serialize())
    assert "id" not in obj
    assert "act" not in obj
    assert obj["v"] == env.VERSION and obj["t"] == "msg"


def splice_id(body: bytes, stream_id: str) -> bytes:
    """What the publish script does: ``{"id":"<id>",`` + the body without its ``{``."""
    assert body.startswith(b"{")
    return b'{"id":"' + stream_id.encode() + b'",' + body[1:]


@pytest.mark.parametrize("action", [False, True])
def test_room_msg_with_id_spliced_in_by_the_publish_script_parses(action: bool) -> None:
    msg = RoomMsg("lobby", "alice", "n1/1", 'say "hi" \\ ✓', action=action)
    published = splice_id(msg.serialize(), "1700000000123-4")
    parsed = parse(published)
    assert isinstance(parsed, RoomMsg)
    assert parsed.id == "1700000000123-4"
    assert parsed.ts == 1700000000.123
    assert parsed == RoomMsg(msg.room, msg.sender, msg.sid, msg.text, action, "1700000000123-4")


# JSON text with everything awkward: quotes, backslashes, controls, astral, lone surrogates
# are excluded since they cannot be encoded as UTF-8 bytes on the bus.
texts = st.text(st.characters(exclude_categories=["Cs"]))
names = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(deadline=None)  # no timing assertions: a loaded machine must not flake
@given(room=names, sender=names, sid=names, text=texts, action=st.booleans(),
       stream_id=st.one_of(st.just(""), st.from_regex(r"[0-9]{1,13}-[0-9]{1,4}",
                                                       fullmatch=True)))
def test_room_msg_round_trips_any_text(room: str, sender: str, sid: str, text: str,
                                       action: bool, stream_id: str) -> None:
    msg = RoomMsg(room, sender, sid, text, action, stream_id)
    assert parse(msg.serialize()) == msg
    if stream_id:
        bare = RoomMsg(room, sender, sid, text, action)
        assert parse(splice_id(bare.serialize(), stream_id)) == msg


@settings(deadline=None)
@given(nick=names, room=names, eid=names, reason=st.one_of(st.none(), texts))
def test_room_quit_round_trips_any_text(nick: str, room: str, eid: str,
                                        reason: str | None) -> None:
    quit_ = RoomQuit(room, nick, eid, reason)
    assert parse(quit_.serialize()) == quit_
    stored = RoomQuit(room, nick, eid, reason, id="1700000000000-0")
    assert parse(splice_id(quit_.serialize(), stored.id)) == stored


@pytest.mark.parametrize("event", [RoomJoin("lobby", "a"), RoomPart("lobby", "a"),
                                   RoomQuit("lobby", "a", "e"),
                                   RoomNick("lobby", "a", "b", "s", "e")],
                         ids=lambda e: type(e).__name__)
def test_every_notice_takes_the_id_its_script_splices_in(event: env.RoomEvent) -> None:
    """The stream scripts add the id as the first member of what they publish."""
    assert parse(splice_id(event.serialize(), "42-7")) == dataclasses.replace(event, id="42-7")


def test_ensure_ascii_is_off_and_text_is_utf8() -> None:
    data = RoomMsg("lobby", "zoë", "s", "→ ✓ 𝄞").serialize()
    assert "→ ✓ 𝄞".encode() in data
    assert "zoë".encode() in data


@settings(deadline=None)
@given(st.binary())
def test_arbitrary_bytes_raise_only_bad_envelope(data: bytes) -> None:
    with contextlib.suppress(BadEnvelope):
        parse(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@settings(deadline=None)
@given(json_values)
def test_arbitrary_json_values_raise_only_bad_envelope(value: Any) -> None:
    with contextlib.suppress(BadEnvelope):
        parse(json.dumps(value))


envelope_like = st.fixed_dictionaries(
    {"v": st.just(env.VERSION), "t": st.sampled_from(["msg", "join", "part", "quit", "nick",
                                                      "pm"])},
    optional={key: json_values for key in ["room", "from", "sid", "text", "act", "id",
                                           "nick", "rooms", "reason", "old", "new", "to",
                                           "tof", "ts"]},
)


@settings(deadline=None)
@given(envelope_like)
def test_known_kinds_with_arbitrary_fields_raise_only_bad_envelope(obj: dict[str, Any]) -> None:
    with contextlib.suppress(BadEnvelope):
        parse(json.dumps(obj))


@settings(deadline=None)
@given(kind=json_values, extra=st.dictionaries(st.text(max_size=6), json_values, max_size=4))
def test_current_version_with_any_type_field_raises_only_bad_envelope(
        kind: Any, extra: dict[str, Any]) -> None:
    with contextlib.suppress(BadEnvelope):
        parse(json.dumps({**extra, "v": env.VERSION, "t": kind}))


@pytest.mark.parametrize("data", [
    b"[" * 100_000,  # deeper than the JSON decoder's recursion limit
    b'{"a":' * 100_000,
    b'{"v":1,"t":"pm","ts":' + b"9" * 400 + b"}",  # an int too large for a float
    b'{"v":1,"t":"pm","ts":Infinity}',
    b'{"v":1,"t":"pm","ts":NaN}',
    b'{"v":1,"t":"pm","ts":1e999}',
    b"", b"not json", b"\xff\xfe", b"[]", b"42", b'"text"', b"null",
    b'{"v":1,"t":"msg","room":"x"', b"{]",
])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(BadEnvelope):
        parse(data)


@pytest.mark.parametrize("version", [None, 0, 2, "1", 1.5, True, [1]])
def test_wrong_version_is_refused(version: Any) -> None:
    body = json.loads(RoomJoin("lobby", "alice").serialize())
    if version is None:
        del body["v"]
    else:
        body["v"] = version
    with pytest.raises(BadEnvelope, match="version"):
        parse(json.dumps(body))


@pytest.mark.parametrize("kind", [None, "", "message", "MSG", 1, ["msg"], {"t": "msg"}])
def test_unknown_type_is_refused(kind: Any) -> None:
    body: dict[str, Any] = {"v": env.VERSION, "room": "lobby", "nick": "alice"}
    if kind is not None:
        body["t"] = kind
    with pytest.raises(BadEnvelope, match="type"):
        parse(json.dumps(body))


@pytest.mark.parametrize(("envelope", "field", "value"), [
    (RoomMsg("lobby", "a", "s", "t"), "text", 5),
    (RoomMsg("lobby", "a", "s", "t"), "room", None),
    (RoomMsg("lobby", "a", "s", "t"), "from", ["a"]),
    (RoomMsg("lobby", "a", "s", "t"), "id", 17),
    (RoomJoin("lobby", "a"), "nick", {"n": 1}),
    (RoomPart("lobby", "a"), "room", True),
    (RoomQuit("lobby", "a", "e"), "room", ["lobby"]),
    (RoomQuit("lobby", "a", "e"), "eid", 3),
    (RoomQuit("lobby", "a", "e"), "nick", 1.5),
    (RoomNick("lobby", "a", "b", "s", "e"), "new", 0),
    (RoomNick("lobby", "a", "b", "s", "e"), "room", {"lobby": 1}),
    (RoomJoin("lobby", "a"), "id", 5),
    (DirectMsg("a", "s", "b", "b", "t", "i", 1.0), "ts", "1.0"),
    (DirectMsg("a", "s", "b", "b", "t", "i", 1.0), "ts", True),
    (DirectMsg("a", "s", "b", "b", "t", "i", 1.0), "ts", None),
    (DirectMsg("a", "s", "b", "b", "t", "i", 1.0), "to", 3),
])
def test_wrong_field_types_are_refused(envelope: env.Envelope, field: str, value: Any) -> None:
    body = json.loads(envelope.serialize())
    body[field] = value
    with pytest.raises(BadEnvelope):
        parse(json.dumps(body))


def test_bad_envelope_is_a_hubbub_error_with_a_code() -> None:
    assert issubclass(BadEnvelope, HubbubError)
    assert BadEnvelope.code == "bad-envelope"


def test_quit_reason_of_wrong_type_is_dropped_not_fatal() -> None:
    body = json.loads(RoomQuit("lobby", "a", "e", "r").serialize())
    body["reason"] = 5
    assert parse(json.dumps(body)) == RoomQuit("lobby", "a", "e", None)


@pytest.mark.parametrize(("stream_id", "ts"), [
    ("1700000000123-0", 1700000000.123),
    ("1700000000123-42", 1700000000.123),
    ("0-1", 0.0),
    ("5", 0.005),
    ("", 0.0),
    ("garbage", 0.0),
    ("x-1", 0.0),
])
def test_ts_of_id(stream_id: str, ts: float) -> None:
    assert ts_of_id(stream_id) == ts


def test_room_msg_ts_comes_from_its_id() -> None:
    assert RoomMsg("r", "a", "s", "t", id="2000-1").ts == 2.0
    assert RoomMsg("r", "a", "s", "t").ts == 0.0


@pytest.mark.parametrize("seconds", ["1", None, True, 10**400, [1]])
def test_sanction_needs_finite_numeric_seconds(seconds: object) -> None:
    data = json.dumps({"v": 1, "t": "sanction", "action": "mute", "folded": "b", "ip": "",
                       "by": "op", "seconds": seconds})
    with pytest.raises(env.BadEnvelope):
        env.parse(data)


def test_a_batch_round_trips_and_keeps_each_message_id() -> None:
    msgs = (env.RoomMsg("lobby", "ann", "s1", "hi", id="5-0"),
            env.RoomMsg("lobby", "bob", "s2", "yo", action=True, id="5-1"))
    batch = env.RoomBatch("lobby", msgs)
    data = batch.serialize()
    assert data.startswith(b'{"v":2,"t":"batch","e":[{"id":"5-0","v":1,"t":"msg"')
    assert env.parse(data) == batch


@pytest.mark.parametrize("data", [
    b'{"v":2,"t":"batch","e":[]}',
    b'{"v":2,"t":"batch"}',
    b'{"v":2,"t":"msg","room":"r","from":"a","sid":"s","text":"x"}',
    b'{"v":1,"t":"batch","e":[{"id":"1-0","v":1,"t":"msg","room":"r"}]}',
    b'{"v":2,"t":"batch","e":[{"id":"1-0","v":1,"t":"join","room":"r","nick":"a"}]}',
    b'{"v":2,"t":"batch","e":[{"id":"1-0","v":3,"t":"msg","room":"r"}]}',
    b'{"v":2,"t":"batch","e":[{"v":1,"t":"msg","room":"r"}]}',
    b'{"v":2,"t":"batch","e":[{"id":"1-0","v":1,"t":"msg","room":"r"},'
    b'{"id":"1-1","v":1,"t":"msg","room":"s"}]}',
    b'{"v":2,"t":"batch","e":[7]}',
    b'{"v":3,"t":"batch","e":[]}',
])
def test_a_malformed_batch_is_a_bad_envelope(data: bytes) -> None:
    with pytest.raises(env.BadEnvelope):
        env.parse(data)


batch_like = st.fixed_dictionaries(
    {"v": st.just(env.BATCH_VERSION), "t": st.just("batch"),
     "e": st.lists(st.one_of(envelope_like, json_values), max_size=4)})


@settings(deadline=None)
@given(batch_like)
def test_batch_like_objects_parse_or_raise_bad_envelope(value: dict[str, Any]) -> None:
    try:
        parsed = parse(json.dumps(value))
    except BadEnvelope:
        return
    assert isinstance(parsed, env.RoomBatch) and parsed.msgs
    assert parse(parsed.serialize()) == parsed
