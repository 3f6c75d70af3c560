"""The fault proxy itself, against a small in-process upstream (no Redis, no nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from .proxy import FaultProxy, rst

TIMEOUT = 5.0


class Upstream:
    """An echo server that also records everything it received, per connection."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.eof_at: list[float] = []
        self.reset_seen = 0
        self.port = 0
        self._changed = asyncio.Condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        async with self._changed:
            self.received.append(got)
            self.writers.append(writer)
            self._changed.notify_all()
        try:
            while data := await reader.read(65536):
                got.extend(data)
                writer.write(data)
                await writer.drain()
            self.eof_at.append(time.monotonic())
        except ConnectionError:
            self.reset_seen += 1
        finally:
            writer.close()
            async with self._changed:
                self._changed.notify_all()

    async def until(self, test: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(test)

    async def connections(self, n: int) -> None:
        await self.until(lambda: len(self.writers) >= n)


@contextlib.asynccontextmanager
async def proxied() -> AsyncIterator[tuple[FaultProxy, Upstream]]:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    try:
        async with FaultProxy("127.0.0.1", up.port) as proxy:
            yield proxy, up
    finally:
        server.close()
        for w in up.writers:
            w.close()
        await server.wait_closed()


async def client(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(TIMEOUT):
        return await reader.readexactly(n)


async def test_forwards_both_ways_and_counts_bytes() -> None:
    async with proxied() as (proxy, up):
        reader, writer = await client(proxy)
        writer.write(b"hello proxy\n")
        assert await read_exactly(reader, 12) == b"hello proxy\n"
        payload = bytes(range(256)) * 1024  # 256 KiB, binary
        writer.write(payload)
        assert await read_exactly(reader, len(payload)) == payload
        assert bytes(up.received[0]) == b"hello proxy\n" + payload
        assert proxy.stats.up == proxy.stats.down == 12 + len(payload)
        assert proxy.stats.accepted == 1 and len(proxy.links) == 1
        writer.close()
        await up.connections(1)


async def test_latency_is_added_each_way_and_order_kept() -> None:
    async with proxied() as (proxy, _up):
        reader, writer = await client(proxy)
        writer.write(b"warm\n")
        await read_exactly(reader, 5)
        proxy.latency = 0.1
        started = time.monotonic()
        for i in range(20):  # pipelined: 20 chunks cost one latency, not twenty
            writer.write(f"{i:02d}\n".encode())
            await writer.drain()
        data = await read_exactly(reader, 60)
        took = time.monotonic() - started
        print(f"proxy latency 0.1 s each way: round trip of 20 pipelined chunks {took:.3f} s")
        assert data == b"".join(f"{i:02d}\n".encode() for i in range(20))
        assert 0.2 <= took < 0.5
        writer.close()


async def test_blackhole_accepts_and_holds_until_lifted() -> None:
    async with proxied() as (proxy, up):
        reader, writer = await client(proxy)
        writer.write(b"before\n")
        assert await read_exactly(reader, 7) == b"before\n"
        proxy.blackhole = True
        writer.write(b"held\n")
        await writer.drain()
        late_r, late_w = await client(proxy)  # new connections are accepted, too
        late_w.write(b"late\n")
        await late_w.drain()
        # nothing gets through while the hole is open: the passing time is the test
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)
        assert bytes(up.received[0]) == b"before\n"
        proxy.blackhole = False  # the partition heals: what was held goes through, in order
        writer.write(b"after\n")
        assert await read_exactly(reader, 11) == b"held\nafter\n"
        assert await read_exactly(late_r, 5) == b"late\n"
        assert bytes(up.received[0]) == b"before\nheld\nafter\n"
        assert proxy.stats.held == len(b"held\n") + len(b"late\n")
        late_w.close()
        writer.close()


async def test_one_link_can_be_blackholed_alone() -> None:
    async with proxied() as (proxy, _up):
        r1, w1 = await client(proxy)
        r2, w2 = await client(proxy)
        for w in (w1, w2):
            w.write(b"x")
        await read_exactly(r1, 1)
        await read_exactly(r2, 1)
        first = next(link for link in proxy.links
                     if link.client.get_extra_info("peername")[1]
                     == w1.get_extra_info("sockname")[1])
        first.blackhole = True
        w1.write(b"held")
        w2.write(b"free")
        assert await read_exactly(r2, 4) == b"free"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await r1.read(1)
        first.blackhole = False
        assert await read_exactly(r1, 4) == b"held"
        w1.close()
        w2.close()


async def test_reset_sends_rst_to_both_sides_and_refuses_while_set() -> None:
    async with proxied() as (proxy, up):
        reader, writer = await client(proxy)
        writer.write(b"x")
        await read_exactly(reader, 1)
        proxy.resetting = True
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(TIMEOUT):
                await reader.read(1)
        await up.until(lambda: up.reset_seen == 1)  # the upstream saw a reset, not an EOF
        assert not up.eof_at
        r2, w2 = await client(proxy)  # accepted, then reset at once
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(TIMEOUT):
                await r2.read(1)
        assert proxy.stats.reset == 2
        proxy.resetting = False
        r3, w3 = await client(proxy)
        w3.write(b"back")
        assert await read_exactly(r3, 4) == b"back"
        for w in (writer, w2, w3):
            w.close()


async def test_a_refused_target_resets_the_client() -> None:
    async with proxied() as (proxy, _up):
        proxy.target = ("127.0.0.1", 1)  # nothing listens on port 1
        reader, writer = await client(proxy)
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(TIMEOUT):
                await reader.read(1)
        writer.close()


async def test_slow_close_delays_the_end_of_stream() -> None:
    async with proxied() as (proxy, up):
        proxy.slow_close = 0.3
        reader, writer = await client(proxy)
        writer.write(b"bye")
        await read_exactly(reader, 3)
        await up.connections(1)
        started = time.monotonic()
        up.writers[0].close()  # the upstream hangs up
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read(1) == b""
        took = time.monotonic() - started
        print(f"slow close 0.3 s: client saw the end after {took:.3f} s")
        assert 0.3 <= took < 0.8
        writer.close()


async def test_byte_limit_cuts_the_connection_at_the_limit() -> None:
    async with proxied() as (proxy, up):
        proxy.byte_limit = 1000  # both directions together
        reader, writer = await client(proxy)
        writer.write(b"a" * 300)
        assert await read_exactly(reader, 300) == b"a" * 300  # 600 forwarded
        writer.write(b"b" * 700)
        async with asyncio.timeout(TIMEOUT):
            rest = await reader.read()  # until the proxy closes: EOF, not a reset
        assert len(up.received[0]) == 300 + 400  # the 700-byte chunk was cut at the limit
        assert rest == b""  # the echo of the cut chunk came after the limit: not forwarded
        assert proxy.stats.limited == 1 and not proxy.links
        writer.close()


async def test_close_ends_every_connection() -> None:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    try:
        proxy = await FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]).start()
        readers = [await client(proxy) for _ in range(3)]
        await up.connections(3)
        await proxy.close()
        for reader, writer in readers:
            async with asyncio.timeout(TIMEOUT):
                assert await reader.read() == b""
            writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
    finally:
        server.close()
        for w in up.writers:
            rst(w)
        await server.wait_closed()
