"""An IRC test client, and in-process nodes that serve IRC (on fakeredis)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis

from cli.cluster import free_port
from node.irccodec import IrcMessage, parse
from node.server import ChatNode

from .helpers import TIMEOUT, LineClient, running_node


@contextlib.asynccontextmanager
async def irc_node(server: fakeredis.FakeServer, node_id: str = "n1",
                   **overrides: Any) -> AsyncIterator[ChatNode]:
    """A node serving IRC on a free port (``node.irc_port``) besides its chat port."""
    async with running_node(server, node_id, irc_port=free_port(), **overrides) as node:
        yield node


def irc_port(node: ChatNode) -> int:
    assert node.irc_port is not None
    return node.irc_port


class IrcClient(LineClient):
    """Writes IRC lines, reads :class:`IrcMessage` (answers the server's PING itself)."""

    nick = "*"

    async def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode() + b"\r\n"
        self.writer.write(data)
        await self.writer.drain()

    async def msg(self, timeout: float = TIMEOUT) -> IrcMessage:
        while True:
            text = await self.line(timeout)
            assert text.endswith("\r"), text
            msg = parse(text[:-1])
            if msg.command == "PING":
                await self.send(f"PONG :{msg.params[-1]}")
                continue
            return msg

    async def expect_msg(self, command: str, *params: str,
                         check: Callable[[IrcMessage], bool] | None = None,
                         timeout: float = TIMEOUT) -> IrcMessage:
        """Read until a message ``command`` whose first params are ``params``."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.msg(timeout)
                if msg.command == command and msg.params[:len(params)] == params and (
                        check is None or check(msg)):
                    return msg

    async def sync(self, token: str = "sync") -> list[IrcMessage]:
        """Everything the server sent before its answer to a PING of ours."""
        await self.send(f"PING :{token}")
        seen: list[IrcMessage] = []
        while True:
            msg = await self.msg()
            if msg.command == "PONG" and msg.params[-1] == token:
                return seen
            seen.append(msg)


async def irc_user(port: int, nick: str, *, caps: str = "", password: str | None = None,
                   sasl: tuple[str, str] | None = None) -> IrcClient:
    """Connect and register as ``nick``; returns after the end of the welcome burst."""
    c = await IrcClient.connect(port)
    if caps or sasl:
        await c.send("CAP LS 302")
    if password is not None:
        await c.send(f"PASS {password}")
    await c.send(f"NICK {nick}")
    await c.send(f"USER {nick[:8]} 0 * :{nick} real")
    if caps or sasl:
        wanted = " ".join(filter(None, [caps, "sasl" if sasl else ""]))
        await c.send(f"CAP REQ :{wanted}")
        await c.expect_msg("CAP", "*", "ACK")
        if sasl:
            await c.send("AUTHENTICATE PLAIN")
            await c.expect_msg("AUTHENTICATE", "+")
            blob = base64.b64encode(f"{sasl[0]}\0{sasl[0]}\0{sasl[1]}".encode()).decode()
            await c.send(f"AUTHENTICATE {blob}")
            await c.expect_msg("903")
        await c.send("CAP END")
    await c.expect_msg("001", nick)
    await c.expect_msg("422")
    c.nick = nick
    return c
