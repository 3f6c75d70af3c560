"""The bounded, coalescing send queue."""

from __future__ import annotations

import pytest

from node.outbox import SendQueue


def test_several_puts_are_taken_as_one_chunk_in_order() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    assert q.put(b"one\n")
    assert q.put(b"two\n")
    assert q.put(b"three\n")
    assert (q.size, q.lines) == (14, 3)
    assert q.take() == b"one\ntwo\nthree\n"
    assert (q.size, q.lines) == (0, 0)


def test_single_put_is_taken_as_is() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    assert q.put(b"only\n")
    assert q.take() == b"only\n"


def test_take_of_an_empty_queue_is_empty() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    assert q.take() == b""
    assert q.put(b"late\n")
    assert q.take() == b"late\n"
    assert q.take() == b""


def test_byte_bound_refuses_and_queues_nothing() -> None:
    q = SendQueue(max_bytes=10, max_lines=100)
    assert q.put(b"12345\n")
    assert not q.put(b"12345\n")  # 12 bytes > 10
    assert (q.size, q.lines) == (6, 1)
    assert q.put(b"123\n")  # exactly 10
    assert (q.size, q.lines) == (10, 2)
    assert not q.put(b"x")


def test_line_bound_refuses_and_queues_nothing() -> None:
    q = SendQueue(max_bytes=1000, max_lines=2)
    assert q.put(b"a\n")
    assert not q.put(b"b\nc\n")
    assert (q.size, q.lines) == (2, 1)
    assert q.put(b"b\n")
    assert not q.put(b"c\n")
    assert q.put(b"no newline")  # bytes without a newline do not count as a line
    assert (q.size, q.lines) == (14, 2)


def test_refused_put_leaves_the_queue_as_it_was() -> None:
    q = SendQueue(max_bytes=8, max_lines=100)
    assert q.put(b"ab\n")
    assert not q.put(b"123456789\n")
    assert q.take() == b"ab\n"


def test_empty_put_is_accepted_and_queues_nothing() -> None:
    q = SendQueue(max_bytes=1, max_lines=1)
    assert q.put(b"")
    assert (q.size, q.lines) == (0, 0)


def test_close_refuses_puts_but_keeps_what_is_queued() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    q.put(b"a\n")
    q.put(b"b\n")
    q.close()
    assert q.closed
    assert not q.put(b"c\n")
    assert q.take() == b"a\nb\n"
    assert q.take() == b""


@pytest.mark.parametrize("data", [b"x\n", b""])
def test_put_after_close_is_refused(data: bytes) -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    q.close()
    assert not q.put(data)
    assert (q.size, q.lines) == (0, 0)
    assert q.take() == b""


def test_a_line_count_given_by_the_caller_is_used() -> None:
    q = SendQueue(max_bytes=1000, max_lines=3)
    assert q.put(b"a\nb\n", lines=2)
    assert (q.size, q.lines) == (4, 2)
    assert not q.put(b"c\nd\n", lines=2)
