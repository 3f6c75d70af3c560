"""Tests for node.framing: the byte stream cut into lines, the line and buffer limits.

Whole, one byte at a time and in random chunks: the same lines and errors come out.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import BadEncoding, BufferOverflow, LineTooLong, ProtocolError
from node.framing import LineFramer

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
