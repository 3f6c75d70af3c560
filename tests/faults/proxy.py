"""A TCP fault proxy for the fault suite (toxiproxy is not installable here).

Theory of operation
-------------------
:class:`FaultProxy` listens on 127.0.0.1 and forwards every accepted connection to one
target.  Each accepted connection is a :class:`Link`: two pumps (client -> target "up",
target -> client "down"), each a reader task that stamps every chunk with the time it is
due and a writer task that forwards chunks in order once they are due.  The faults are
plain attributes the test flips at any moment, in-process, and each takes effect on the
next chunk:

* ``latency`` -- seconds added to every chunk in each direction (order is kept; chunks
  are pipelined, so throughput is not capped by the latency).
* ``blackhole`` -- accept connections and read what arrives, but forward nothing; the
  connections stay open.  What was read meanwhile is held, in order, and forwarded when
  the blackhole is lifted: a partition that heals, as TCP would see it (TCP never drops
  bytes from the middle of a stream that goes on).  Also per link (``Link.blackhole``),
  e.g. to silence only a node's pub/sub connection.
* ``resetting`` -- setting it resets every open connection with RST (``SO_LINGER`` 0) on
  both sides; while it stays set, each new connection is reset as soon as it is accepted.
  :meth:`FaultProxy.reset_all` resets the open ones once.
* ``slow_close`` -- when one side ends its stream, wait this many seconds before passing
  the end (FIN) on.
* ``byte_limit`` -- a connection is closed (FIN both ways) once it has forwarded this many
  bytes, counting both directions; the chunk that crosses the limit is cut at it.

A target that refuses the connection gets the client reset at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

__all__ = ["FaultProxy", "Link", "ProxyStats", "rst"]

_CHUNK = 65536


def rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with RST instead of FIN (``SO_LINGER`` on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(slots=True)
class ProxyStats:
    accepted: int = 0
    reset: int = 0
    """Connections ended with RST by the proxy (``resetting``, :meth:`reset_all`, or a
    target that refused)."""
    limited: int = 0
    """Connections closed because they reached ``byte_limit``."""
    up: int = 0
    """Bytes forwarded client -> target."""
    down: int = 0
    """Bytes forwarded target -> client."""
    held: int = 0
    """Bytes that had to wait for a blackhole to be lifted."""


@dataclass(eq=False)
class Link:
    """One proxied connection (see the module docstring)."""

    proxy: FaultProxy
    client: asyncio.StreamWriter
    target: asyncio.StreamWriter
    forwarded: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _eofs: int = 0
    closed: bool = False
    _blackhole: bool = False
    _flowing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def target_local_port(self) -> int:
        """The proxy's own port on the target side (what ``CLIENT LIST`` shows as addr)."""
        return int(self.target.get_extra_info("sockname")[1])

    @property
    def blackhole(self) -> bool:
        """Hold this link's data both ways (in addition to the proxy-wide switch)."""
        return self._blackhole

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        self._blackhole = on
        self.update()

    def update(self) -> None:
        if self._blackhole or self.proxy.blackhole:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def flowing(self) -> bool:
        """Wait until no blackhole holds this link; True if it had to wait."""
        if self._flowing.is_set():
            return False
        await self._flowing.wait()
        return True

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.stats.reset += 1
        rst(self.client)
        rst(self.target)
        self._cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.target):
            writer.close()
        self._cancel()

    def _cancel(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.proxy.links.discard(self)

    def ended_one_way(self) -> None:
        self._eofs += 1
        if self._eofs == 2:
            self.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``target``, with switchable faults."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._port = port
        self.latency = 0.0
        self._blackhole = False
        self.slow_close = 0.0
        self.byte_limit: int | None = None
        self._resetting = False
        self.links: set[Link] = set()
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and close every connection (FIN)."""
        if self._server is not None:
            self._server.close()
        tasks = [t for link in self.links for t in link.tasks] + list(self._handlers)
        for link in list(self.links):
            link.close()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://{self.host}:{self._port}{path}"

    # ------------------------------------------------------------------ faults

    @property
    def blackhole(self) -> bool:
        return self._blackhole

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        self._blackhole = on
        for link in self.links:
            link.update()

    @property
    def resetting(self) -> bool:
        return self._resetting

    @resetting.setter
    def resetting(self, on: bool) -> None:
        self._resetting = on
        if on:
            self.reset_all()

    def reset_all(self) -> int:
        """Reset every open connection with RST; returns how many."""
        links = list(self.links)
        for link in links:
            link.reset()
        return len(links)

    def find(self, test: Callable[[Link], bool]) -> list[Link]:
        return [link for link in self.links if test(link)]

    # ------------------------------------------------------------------ forwarding

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            self.stats.accepted += 1
            if self._resetting:
                self.stats.reset += 1
                rst(writer)
                return
            try:
                t_reader, t_writer = await asyncio.open_connection(*self.target)
            except OSError:
                self.stats.reset += 1
                rst(writer)
                return
            if self._resetting:  # switched on while we connected
                self.stats.reset += 1
                rst(writer)
                rst(t_writer)
                return
            link = Link(self, writer, t_writer)
            link.update()
            self.links.add(link)
            up: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
            down: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
            link.tasks = [
                asyncio.create_task(self._read(link, reader, up)),
                asyncio.create_task(self._write(link, up, t_writer, "up")),
                asyncio.create_task(self._read(link, t_reader, down)),
                asyncio.create_task(self._write(link, down, writer, "down")),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._handlers.discard(task)

    async def _read(self, link: Link, reader: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes | None]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                queue.put_nowait((loop.time() + self.latency, data))
        except (ConnectionError, OSError):
            link.reset()  # a side that reset: pass the reset on
            return
        queue.put_nowait((loop.time() + self.latency, None))

    async def _write(self, link: Link, queue: asyncio.Queue[tuple[float, bytes | None]],
                     writer: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if await link.flowing() and data:
                    self.stats.held += len(data)
                if data is None:
                    if self.slow_close > 0:
                        await asyncio.sleep(self.slow_close)
                    if writer.can_write_eof():
                        writer.write_eof()
                    link.ended_one_way()
                    return
                cut = False
                if self.byte_limit is not None and \
                        link.forwarded + len(data) >= self.byte_limit:
                    data = data[: max(0, self.byte_limit - link.forwarded)]
                    cut = True
                link.forwarded += len(data)
                if direction == "up":
                    self.stats.up += len(data)
                else:
                    self.stats.down += len(data)
                writer.write(data)
                await writer.drain()
                if cut:
                    self.stats.limited += 1
                    link.close()
                    return
        except (ConnectionError, OSError):
            link.reset()
