"""The bounded, coalescing send queue."""

from __future__ import annotations

import asyncio

import pytest

from node.outbox import SendQueue


async def test_several_puts_are_taken_as_one_chunk_in_order() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    assert q.put(b"one\n")
    assert q.put(b"two\n")
    assert q.put(b"three\n")
    assert (q.size, q.lines) == (14, 3)
    assert await q.take() == b"one\ntwo\nthree\n"
    assert (q.size, q.lines) == (0, 0)


async def test_single_put_is_taken_as_is() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    assert q.put(b"only\n")
    assert await q.take() == b"only\n"


async def test_take_waits_for_a_put() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    taker = asyncio.create_task(q.take())
    await asyncio.sleep(0)  # let it start waiting (a scheduling step, not a timing wait)
    assert not taker.done()
    assert q.put(b"late\n")
    assert await asyncio.wait_for(taker, 1) == b"late\n"


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


async def test_refused_put_leaves_the_queue_as_it_was() -> None:
    q = SendQueue(max_bytes=8, max_lines=100)
    assert q.put(b"ab\n")
    assert not q.put(b"123456789\n")
    assert await q.take() == b"ab\n"


def test_empty_put_is_accepted_and_queues_nothing() -> None:
    q = SendQueue(max_bytes=1, max_lines=1)
    assert q.put(b"")
    assert (q.size, q.lines) == (0, 0)


async def test_close_drains_then_take_returns_none() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    q.put(b"a\n")
    q.put(b"b\n")
    q.close()
    assert q.closed
    assert await q.take() == b"a\nb\n"
    assert await q.take() is None
    assert await q.take() is None


async def test_close_wakes_a_waiting_taker() -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    taker = asyncio.create_task(q.take())
    await asyncio.sleep(0)
    assert not taker.done()
    q.close()
    assert await asyncio.wait_for(taker, 1) is None


@pytest.mark.parametrize("data", [b"x\n", b""])
async def test_put_after_close_is_refused(data: bytes) -> None:
    q = SendQueue(max_bytes=1000, max_lines=100)
    q.close()
    assert not q.put(data)
    assert (q.size, q.lines) == (0, 0)
    assert await q.take() is None
