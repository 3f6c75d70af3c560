"""Logs carry user text only as escaped values: no value can forge a line or drive a terminal."""

from __future__ import annotations

import io
import json
import unicodedata
from collections.abc import Iterator

import fakeredis
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from node.logs import escape_text, processors

from .helpers import JsonClient, json_user, running_node

EVIL = ("evan\n2026-01-01T00:00:00Z [info     ] forged\r\x1b[2J\x1b]0;owned\x07"
        "\u202egnp.exe\u2028x\x85")
"""A value that would forge a line, clear the screen, retitle the terminal and flip text."""

_UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _raw_unsafe(text: str) -> list[str]:
    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in _UNSAFE]


@pytest.fixture(params=["json", "console"])
def rendered(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    """structlog configured with the production chain, writing to a buffer."""
    buf = io.StringIO()
    structlog.configure(processors=processors(json=request.param == "json"),
                        logger_factory=structlog.PrintLoggerFactory(buf),
                        cache_logger_on_first_use=False)
    try:
        yield request.param, buf
    finally:
        structlog.reset_defaults()


def test_every_value_is_escaped_on_one_line(rendered: tuple[str, io.StringIO]) -> None:
    kind, buf = rendered
    structlog.get_logger("t").info("registered", nick=EVIL, room=EVIL, rooms=(EVIL, "ok"),
                                   info={"text": EVIL})
    out = buf.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")
    assert not _raw_unsafe(out)
    assert "forged" in out  # the text is kept, visibly
    if kind == "json":
        record = json.loads(out)
        assert record["nick"].startswith("evan\\x0a2026")
        assert "\\u202e" in record["room"]
    else:
        # (the console renderer may repr a value, doubling the backslashes)
        assert "x0a2026" in out and "x1b[2J" in out and "u202egnp" in out


def test_traceback_lines_cannot_pass_for_log_lines(rendered: tuple[str, io.StringIO]) -> None:
    kind, buf = rendered
    try:
        raise ValueError(EVIL)
    except ValueError:
        structlog.get_logger("t").exception("session crashed")
    out = buf.getvalue()
    assert not _raw_unsafe(out)
    lines = out.rstrip("\n").split("\n")
    if kind == "json":
        assert len(lines) == 1
    else:  # the traceback keeps its line breaks, every continuation indented
        assert lines[1] == "Traceback (most recent call last):"
        assert len(lines) > 3 and all(line.startswith(" ") for line in lines[2:])
        assert not any(line.startswith("2026-01-01") for line in lines)


@given(st.text())
def test_escape_text_leaves_nothing_unsafe_and_is_identity_on_printable(text: str) -> None:
    out = escape_text(text)
    assert not _raw_unsafe(out) and "\n" not in out
    if text.isprintable():
        assert out == text


async def test_user_text_reaching_the_logs_of_a_node_is_escaped(
        fake_server: fakeredis.FakeServer) -> None:
    """End to end: a node's own log lines while clients send nicknames, rooms, quit
    reasons and messages full of control characters."""
    buf = io.StringIO()
    structlog.configure(processors=processors(json=True),
                        logger_factory=structlog.PrintLoggerFactory(buf),
                        cache_logger_on_first_use=False)
    try:
        async with running_node(fake_server) as node:
            alice = await json_user(node.port or 0, "alice")
            bad = await JsonClient.connect(node.port or 0)
            await bad.op("hello", nick=EVIL)
            await bad.event("error")
            await bad.op("hello", nick="ok", rooms=[EVIL])
            await bad.event("error")
            await alice.op("say", text=EVIL, ref=1)
            await alice.event("ack")
            await alice.op("quit", reason=EVIL)
            await alice.closed()
    finally:
        structlog.reset_defaults()
    lines = buf.getvalue().splitlines()
    assert any(json.loads(line)["event"] == "session closed" for line in lines)
    for line in buf.getvalue().split("\n")[:-1]:
        json.loads(line)  # each line is one whole record
        assert not _raw_unsafe(line)
