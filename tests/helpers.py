"""Test helpers: in-process nodes on fakeredis, and a line-oriented TCP test client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Self

import fakeredis

from node.config import NodeConfig
from node.server import ChatNode

TIMEOUT = 5.0


def node_config(node_id: str, **overrides: Any) -> NodeConfig:
    # Tests connect many clients from 127.0.0.1 and send bursts: no flood control, no
    # listing pace and no per-address caps unless a test sets them (tests/test_abuse.py
    # does).
    return replace(NodeConfig(node_id=node_id, host="127.0.0.1", port=0, lease_ttl=2.0,
                              redis_timeout=1.0, shutdown_grace=2.0, http_port=0,
                              rate=0, max_per_ip=0, conn_rate_per_ip=0, list_rate=0,
                              room_create_rate=0),
                   **overrides)


@contextlib.asynccontextmanager
async def running_node(server: fakeredis.FakeServer, node_id: str = "n1",
                       **overrides: Any) -> AsyncIterator[ChatNode]:
    """A ChatNode on 127.0.0.1:<free port> whose Redis is ``server``; stopped on exit."""
    redis = fakeredis.FakeAsyncRedis(server=server)
    node = ChatNode(node_config(node_id, **overrides), redis)
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(node.run(started=started.set_result))
    try:
        async with asyncio.timeout(TIMEOUT):
            await started
            await node.relay.wait_ready()
        yield node
    finally:
        node.stop()
        async with asyncio.timeout(TIMEOUT):
            await task
        await redis.aclose()


OPEN_CLIENTS: list[LineClient] = []
"""Every client a test opened; the autouse fixture in conftest closes them afterwards."""


class LineClient:
    """A raw TCP client that reads and writes lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[str] = []
        OPEN_CLIENTS.append(self)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1",
                      rcvbuf: int | None = None, source: str | None = None) -> Self:
        """Connect; ``rcvbuf`` shrinks the socket's receive buffer (a slow reader);
        ``source`` binds the socket to that address first (any 127.x.y.z works on Linux
        loopback: tests use them as different client addresses)."""
        sock = socket.socket()
        if source is not None:
            sock.bind((source, 0))
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode() + b"\n"
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = TIMEOUT) -> str:
        async with asyncio.timeout(timeout):
            raw = await self.reader.readline()
        if not raw:
            raise EOFError("connection closed")
        text = raw.decode().rstrip("\n")
        self.seen.append(text)
        return text

    async def expect(self, match: str | Callable[[str], bool],
                     timeout: float = TIMEOUT) -> str:
        """Read lines until one starts with ``match`` (or satisfies it); return it."""
        test = match if callable(match) else (lambda s: s.startswith(match))
        async with asyncio.timeout(timeout):
            while True:
                text = await self.line(timeout)
                if test(text):
                    return text

    async def closed(self, timeout: float = TIMEOUT) -> None:
        """Wait for the server to close the connection (reading what is left)."""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.reader.read(65536)
                if not raw:
                    return

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def text_user(port: int, nick: str) -> LineClient:
    """Connect in text mode and register; returns once the user is in the lobby."""
    c = await LineClient.connect(port)
    await c.expect("* GET_NAME")
    await c.send(nick)
    await c.expect(f"* welcome {nick}")
    await c.expect(f"* {nick} joined lobby")
    return c


async def registered_user(port: int, nick: str, password: str) -> LineClient:
    """A text user who protected its nickname with ``password`` (an accounts node)."""
    c = await text_user(port, nick)
    await c.send(f"/register {password}")
    await c.expect(f"* {nick} is now registered")
    return c


async def register_account(port: int, nick: str, password: str) -> None:
    """Create the account ``nick`` with ``password`` and leave: the name is free again,
    for its login."""
    c = await registered_user(port, nick, password)
    await c.send("/quit")
    await c.closed()


class JsonClient(LineClient):
    async def op(self, op: str, **fields: Any) -> None:
        await self.send(json.dumps({"op": op, **fields}))

    async def event(self, ev: str | None = None, timeout: float = TIMEOUT,
                    **match: Any) -> dict[str, Any]:
        """Read until a JSON event with ``ev`` and the given field values arrives."""
        async with asyncio.timeout(timeout):
            while True:
                text = await self.line(timeout)
                if not text.startswith("{"):
                    continue
                obj: dict[str, Any] = json.loads(text)
                if (ev is None or obj.get("ev") == ev) and all(
                        obj.get(k) == v for k, v in match.items()):
                    return obj


async def json_user(port: int, nick: str) -> JsonClient:
    c = await JsonClient.connect(port)
    await c.op("hello", nick=nick)
    await c.event("welcome")
    await c.event("join", nick=nick, room="lobby")
    return c


async def wait_until(check: Callable[[], Any], timeout: float = TIMEOUT,
                     step: float = 0.05) -> Any:
    """Re-check ``check`` (sync or async) until it returns something truthy.

    Only for conditions that *are* the passing of time, with no event to wait on (a
    readiness window expiring, a lease running out); everything else waits on its event.
    """
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(step)
