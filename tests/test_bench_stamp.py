"""The benchmark's message stamp: round trips, and damage is always detected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.bench import stamp
from cli.bench.stamp import MIN_SIZE, Stamp, encode, fields, parse, valid_size

senders = st.integers(0, (1 << 24) - 1)
seqs = st.integers(0, (1 << 32) - 1)
times = st.integers(0, (1 << 64) - 1)
sizes = st.one_of(st.just(MIN_SIZE), st.integers(MIN_SIZE + 2, 600))


@given(senders, seqs, times, sizes)
def test_round_trip(sender: int, seq: int, sent_us: int, size: int) -> None:
    text = encode(sender, seq, sent_us, size)
    assert len(text) == size
    assert parse(text) == Stamp(sender, seq, sent_us, size)
    assert fields(text) == (sender, seq, sent_us)


@given(senders, seqs, times, sizes)
def test_no_whitespace_at_either_end(sender: int, seq: int, sent_us: int, size: int) -> None:
    text = encode(sender, seq, sent_us, size)  # servers strip surrounding whitespace
    assert text == text.strip()
    assert b"\n" not in text and text.isascii()


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    got = parse(data)
    assert got is None or encode(got.sender, got.seq, got.sent_us, got.size) == data


@given(senders, seqs, times, sizes, st.data())
def test_any_single_byte_change_is_caught(sender: int, seq: int, sent_us: int, size: int,
                                          data: st.DataObject) -> None:
    text = bytearray(encode(sender, seq, sent_us, size))
    i = data.draw(st.integers(0, len(text) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != text[i]))
    text[i] = new
    assert parse(bytes(text)) is None


@given(senders, seqs, times, sizes, st.data())
def test_cut_or_glued_text_is_caught(sender: int, seq: int, sent_us: int, size: int,
                                     data: st.DataObject) -> None:
    text = encode(sender, seq, sent_us, size)
    cut = data.draw(st.integers(0, len(text) - 1))
    assert parse(text[:cut]) is None
    assert parse(text[cut + 1:]) is None
    glue = data.draw(st.binary(min_size=1, max_size=60))
    assert parse(text + glue) is None


def test_sizes() -> None:
    assert valid_size(MIN_SIZE) and valid_size(MIN_SIZE + 2) and valid_size(stamp.MAX_SIZE)
    assert not valid_size(MIN_SIZE - 1) and not valid_size(MIN_SIZE + 1)
    with pytest.raises(ValueError):
        encode(0, 0, 0, MIN_SIZE + 1)  # the padding would be one trailing space
    with pytest.raises(ValueError):
        encode(1 << 24, 0, 0)
