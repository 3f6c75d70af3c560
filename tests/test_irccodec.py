"""Tests for node.irccodec: IRC lines parsed and written, limits, and round trips checked
against an independent IRC tokeniser (irctokens)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from irctokens.line import Line, build, tokenise

from node.errors import BadArguments, BadEncoding, BufferOverflow, LineTooLong, ProtocolError
from node.irccodec import (
    MAX_BODY_BYTES,
    IrcMessage,
    IrcReader,
    escape_tag_value,
    fit_text,
    parse,
    serialize,
    unescape_tag_value,
)


def kinds(items: list[IrcMessage | ProtocolError]) -> list[object]:
    return [type(i) if isinstance(i, ProtocolError) else i for i in items]


def test_parse_full_line() -> None:
    msg = parse(r"@a=b\sc;d;+x/y=1 :nick!~u@h privmsg #dev :hello  there")
    assert msg.command == "PRIVMSG"
    assert msg.params == ("#dev", "hello  there")
    assert msg.source == "nick!~u@h"
    assert msg.tags == (("a", "b c"), ("d", None), ("+x/y", "1"))
    assert msg.tag("d") == "" and msg.tag("a") == "b c" and msg.tag("zz") is None


def test_parse_shapes() -> None:
    assert parse("PING") == IrcMessage("PING")
    assert parse("NICK  foo ") == IrcMessage("NICK", ("foo",))
    assert parse("USER u 0 * :Real Name") == IrcMessage("USER", ("u", "0", "*", "Real Name"))
    assert parse("PRIVMSG #a :") == IrcMessage("PRIVMSG", ("#a", ""))
    assert parse("PRIVMSG #a ::)") == IrcMessage("PRIVMSG", ("#a", ":)"))
    assert parse("001 me :hi").command == "001"
    assert parse("TOPIC #a :a : b").params == ("#a", "a : b")


def test_parse_refuses_empty() -> None:
    for line in ("@a=b", ":src", "@a :src "):
        try:
            parse(line)
        except BadArguments:
            continue
        raise AssertionError(line)


def test_body_limit_is_512_with_crlf() -> None:
    ok = "PRIVMSG #a :" + "x" * (MAX_BODY_BYTES - 2 - len("PRIVMSG #a :"))
    assert parse(ok).params[1].startswith("x")
    try:
        parse(ok + "x")
    except LineTooLong:
        pass
    else:
        raise AssertionError("513 bytes accepted")
    # tags do not count against the body
    assert parse("@" + "a=" + "b" * 4000 + " " + ok).command == "PRIVMSG"


def test_tag_limit() -> None:
    try:
        parse("@" + "a=" + "b" * 4094 + " PING x")
    except LineTooLong:
        pass
    else:
        raise AssertionError("over-long tags accepted")


def test_reader_chunking_and_errors() -> None:
    data = b"NICK a\r\nUSER u 0 * :R\nPRIVMSG #x :\xff\xfe\r\n\r\nPING :t\r\n"
    whole = kinds(IrcReader().feed(data))
    reader = IrcReader()
    trickled: list[IrcMessage | ProtocolError] = []
    for i in range(len(data)):
        trickled.extend(reader.feed(data[i:i + 1]))
    assert kinds(trickled) == whole
    assert whole == [IrcMessage("NICK", ("a",)), IrcMessage("USER", ("u", "0", "*", "R")),
                     BadEncoding, IrcMessage("PING", ("t",))]


def test_reader_too_long_line_is_dropped_whole() -> None:
    reader = IrcReader()
    out = reader.feed(b"PRIVMSG #a :" + b"x" * 6000 + b"\r\nPING :after\r\n")
    assert kinds(out) == [LineTooLong, IrcMessage("PING", ("after",))]
    assert kinds(reader.feed(b"PRIVMSG #a :" + b"y" * 600 + b"\r\n")) == [LineTooLong]


def test_reader_buffer_overflow_is_fatal() -> None:
    reader = IrcReader(max_buffer=8192)
    out = reader.feed(b"x" * 9000)
    assert kinds(out)[-1] is BufferOverflow
    assert reader.closed and reader.feed(b"PING\r\n") == []


def test_reader_eof_delivers_last_line() -> None:
    reader = IrcReader()
    assert reader.feed(b"QUIT :bye") == []
    assert reader.feed_eof() == [IrcMessage("QUIT", ("bye",))]


def test_serialize_never_breaks_lines() -> None:
    out = serialize(IrcMessage("PRIVMSG", ("#a", "one\r\ntwo\0three"), "n!u@h"))
    assert out == b":n!u@h PRIVMSG #a :one  two three\r\n"
    assert serialize(IrcMessage("X", ("a b", ":c", "", "last"))) == b"X a c * last\r\n"
    assert serialize(IrcMessage("X", ("",))) == b"X :\r\n"
    assert serialize(IrcMessage("X", (":)",))) == b"X ::)\r\n"


def test_tag_escapes_round_trip() -> None:
    value = "a;b c\\d\re\nf"
    assert unescape_tag_value(escape_tag_value(value)) == value
    assert unescape_tag_value("a\\") == "a"
    assert unescape_tag_value("\\b") == "b"


def test_fit_text() -> None:
    assert fit_text("short", 100) == ["short"]
    text = "é" * 300
    pieces = fit_text(text, 101)
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= 101 for p in pieces)
    words = " ".join(["word"] * 100)
    assert all(len(p.encode()) <= 50 for p in fit_text(words, 50))
    assert " ".join(fit_text(words, 50)) == words


# --------------------------------------------------------------------------- oracle

_word = st.text(st.characters(blacklist_characters="\r\n\0 ", blacklist_categories=["Cs"]),
                min_size=1, max_size=12).filter(lambda s: not s.startswith(":"))
_command = st.from_regex(r"[A-Z]{1,10}|[0-9]{3}", fullmatch=True)
_tag_key = st.from_regex(r"\+?[a-z][a-z0-9-]{0,8}(/[a-z]{1,5})?", fullmatch=True)
_tag_value = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]),
                     max_size=20)
_trailing = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"]),
                    max_size=60)


@st.composite
def messages(draw: st.DrawFn) -> IrcMessage:
    tags = draw(st.dictionaries(_tag_key, _tag_value, max_size=4))
    source = draw(st.none() | _word)
    params = draw(st.lists(_word, max_size=5))
    if draw(st.booleans()):
        params.append(draw(_trailing))
    return IrcMessage(draw(_command), tuple(params), source,
                      tuple((k, v or None) for k, v in tags.items()))


def _oracle(line: Line) -> tuple[object, ...]:
    tags = {k: v or None for k, v in (line.tags or {}).items()}  # irctokens sorts them
    return (line.command, tuple(line.params), line.source, tags)


@given(messages())
def test_serialize_matches_irctokens(msg: IrcMessage) -> None:
    wire = serialize(msg)
    assert wire.endswith(b"\r\n") and wire.count(b"\n") == 1 and b"\0" not in wire
    line = wire.decode()[:-2]
    assert _oracle(tokenise(line)) == (msg.command, msg.params, msg.source,
                                                 dict(msg.tags))
    assert parse(line) == msg


@given(messages())
def test_parse_matches_irctokens(msg: IrcMessage) -> None:
    built = build(msg.command, list(msg.params), msg.source,
                            {k: v or "" for k, v in msg.tags} or None).format()
    assert _oracle(tokenise(built)) == (
        msg.command, msg.params, msg.source, dict(msg.tags))
    parsed = parse(built)
    assert (parsed.command, parsed.params, parsed.source, dict(parsed.tags)) == (
        msg.command, msg.params, msg.source, dict(msg.tags))


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_reader_never_raises_and_ignores_chunking(data: bytes, cuts: list[int]) -> None:
    whole = kinds(IrcReader().feed(data))
    reader = IrcReader()
    out: list[IrcMessage | ProtocolError] = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out.extend(reader.feed(data[last:cut]))
        last = cut
    out.extend(reader.feed(data[last:]))
    assert kinds(out) == whole
    for item in out:
        if isinstance(item, IrcMessage):
            assert serialize(item).count(b"\n") == 1
