"""Tests for node.ircrender: events as IRC lines, and every error code's IRC answer (in the
code and in docs/IRC.md)."""

from __future__ import annotations

import re
from pathlib import Path

import node.envelope as env
import node.errors as errors
import node.model as m
from node.irccodec import MAX_BODY_BYTES, parse
from node.ircrender import ERROR_REPLIES, codec_for, error_lines, mask, server_time

DOC = Path(__file__).resolve().parents[1] / "docs" / "IRC.md"


def _codes() -> set[str]:
    found: set[str] = set()
    todo: list[type[errors.HubbubError]] = [errors.HubbubError]
    while todo:
        cls = todo.pop()
        found.add(cls.code)
        todo.extend(cls.__subclasses__())
    return found | {env.BadEnvelope.code, "register-timeout"}


def test_every_error_code_has_an_irc_answer() -> None:
    missing = sorted(_codes() - set(ERROR_REPLIES))
    assert not missing, f"add these codes to ERROR_REPLIES: {missing}"


def test_the_numeric_table_in_the_docs_is_the_code() -> None:
    rows = dict(re.findall(r"^\| `([a-z][a-z-]*)` \| ([^|]+?) \|", DOC.read_text(), re.M))
    assert set(rows) == set(ERROR_REPLIES), "docs/IRC.md: one row per error code"
    for code, reply in ERROR_REPLIES.items():
        shown = f"`FAIL … {reply.fail}`" if reply.kind == "FAIL" else f"`{reply.kind}`"
        assert rows[code] == shown, f"docs/IRC.md row of {code}: {rows[code]} != {shown}"


def test_error_lines() -> None:
    [line] = error_lines("srv", "me", "nick-taken", "in use", "NICK", "bob")
    assert (line.source, line.command, line.params) == ("srv", "433", ("me", "bob", "in use"))
    [line] = error_lines("srv", "me", "not-in-room", "no", "PRIVMSG", "#dev")
    assert line.command == "404" and line.params[1] == "#dev"
    [line] = error_lines("srv", "me", "relay-unavailable", "later", "JOIN", "#dev")
    assert line.command == "FAIL" and line.params == ("JOIN", "TEMPORARILY_UNAVAILABLE", "later")
    [line] = error_lines("srv", "me", "kicked", "bye", "*", "")
    assert line.command == "ERROR"


def test_messages_by_capability() -> None:
    msg = m.Message("dev", "ann", "hi there", "1700000000123-0", 1700000000.123)
    plain = codec_for("srv", frozenset())
    tagged = codec_for("srv", frozenset({"server-time", "message-tags"}))
    assert codec_for("srv", frozenset()) is plain and plain.name != tagged.name
    assert plain.render(msg) == b":ann!~ann@hubbub PRIVMSG #dev :hi there\r\n"
    line = parse(tagged.render(msg).decode()[:-2])
    assert line.tag("time") == "2023-11-14T22:13:20.123Z"
    assert line.tag("msgid") == "1700000000123-0"
    action = m.Message("dev", "ann", "waves", "1-0", 1.0, action=True)
    assert plain.render(action).endswith(b":\x01ACTION waves\x01\r\n")
    notice = m.Message("dev", "ann", "fyi", "1-0", 1.0, notice=True)
    assert b" NOTICE #dev " in plain.render(notice)
    assert not plain.echo_own and codec_for("srv", frozenset({"echo-message"})).echo_own


def test_long_text_is_split_within_the_limit() -> None:
    text = "é" * 1000
    out = codec_for("srv", frozenset()).render(m.Message("dev", "ann", text, "1-0", 1.0))
    lines = out.split(b"\r\n")[:-1]
    assert len(lines) > 1
    assert all(len(line) + 2 <= MAX_BODY_BYTES for line in lines)
    assert "".join(parse(line.decode()).params[1] for line in lines) == text


def test_room_events() -> None:
    c = codec_for("srv", frozenset())
    assert c.render(m.Joined("dev", "ann")) == b":ann!~ann@hubbub JOIN #dev\r\n"
    assert c.render(m.Parted("dev", "ann", "bye now")) == b":ann!~ann@hubbub PART #dev :bye now\r\n"
    assert c.render(m.Quitted("ann", "tired")) == b":ann!~ann@hubbub QUIT :Quit: tired\r\n"
    assert c.render(m.NickChanged("ann", "Ann")) == b":ann!~ann@hubbub NICK Ann\r\n"
    assert c.render(m.TopicChanged("dev", "ann", "a b")) == b":ann!~ann@hubbub TOPIC #dev :a b\r\n"
    assert c.render(m.Private("ann", "bob", "psst", "pm-1", 1.0)) == \
        b":ann!~ann@hubbub PRIVMSG bob psst\r\n"
    assert c.render(m.Ack("r")) == b""


def test_masks_and_time() -> None:
    assert mask("ann") == "ann!~ann@hubbub"
    assert mask("ann", "a", "n1") == "ann!~a@n1.hubbub"
    assert server_time(0.9996) == "1970-01-01T00:00:01.000Z"
