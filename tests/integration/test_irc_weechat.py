"""A real IRC client: headless WeeChat on node A (driven through its FIFO, checked on its
logs), a scripted IRC client on node B and a text user on node C, in one room."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cli.cluster import free_port

from ..helpers import text_user, wait_until
from ..irchelpers import irc_user
from .procs import redis_server, require_binary, start_node

pytestmark = pytest.mark.redis_server


class WeeChat:
    """weechat-headless with its own directory: commands through the FIFO plugin, what it
    shows read from the logger plugin's files (flushed at once)."""

    def __init__(self, proc: asyncio.subprocess.Process, home: Path) -> None:
        self.proc = proc
        self.home = home

    @property
    def fifo(self) -> Path:
        found = sorted(self.home.glob("weechat_fifo*"))
        assert found, "no FIFO yet"
        return found[0]

    async def command(self, buffer: str, text: str) -> None:
        """Send ``text`` (a command or a line) to WeeChat's ``buffer`` through its FIFO."""
        line = f"{buffer} *{text}\n".encode()
        path = self.fifo
        await asyncio.to_thread(path.write_bytes, line)

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.weechatlog"
        return path.read_text(errors="replace") if path.exists() else ""

    async def shows(self, name: str, text: str) -> None:
        """Wait until the log of buffer ``name`` holds ``text``."""
        await wait_until(lambda: text in self.log(name), timeout=15)


@contextlib.asynccontextmanager
async def weechat(home: Path, port: int, nick: str) -> AsyncIterator[WeeChat]:
    binary = require_binary("weechat-headless")
    setup = ";".join([
        "/set logger.file.flush_delay 0",
        f"/set irc.server_default.nicks {nick}",
        f"/set irc.server_default.username {nick}",
        "/set irc.server_default.realname Real WeeChat",
        f"/server add hub 127.0.0.1/{port} -notls",
        "/connect hub",
    ])
    proc = await asyncio.create_subprocess_exec(
        binary, "--dir", str(home), "-r", setup, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    client = WeeChat(proc, home)
    try:
        await wait_until(lambda: any(home.glob("weechat_fifo*")), timeout=15)
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.command("core.weechat", "/quit")
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_weechat_irc_client_and_text_user(tmp_path: Path) -> None:
    async with redis_server() as (url, _):
        irc_a, irc_b = free_port(), free_port()
        a, _ = await start_node(url, "na", "--irc-port", str(irc_a))
        b, _ = await start_node(url, "nb", "--irc-port", str(irc_b))
        c, port_c = await start_node(url, "nc")
        try:
            async with weechat(tmp_path / "weechat", irc_a, "wee") as wee:
                await wee.shows("irc.server.hub", "Welcome to the hubbub IRC network wee")
                bob = await irc_user(irc_b, "bob")
                await bob.send("JOIN #dev")
                await bob.expect_msg("366")
                tom = await text_user(port_c, "tom")
                await tom.send("/join dev")
                await tom.expect("* tom joined dev")

                await wee.command("irc.server.hub", "/join #dev")
                await wee.shows("irc.hub.#dev", "has joined #dev")
                await bob.expect_msg("JOIN", "#dev", check=lambda m: (m.source or "")
                                     .startswith("wee!"))
                await wee.command("irc.hub.#dev", "hello from weechat")
                heard = await bob.expect_msg("PRIVMSG", "#dev", "hello from weechat")
                assert (heard.source or "").startswith("wee!")
                await tom.expect("[dev] wee: hello from weechat")
                await wee.command("irc.hub.#dev", "/me waves")
                await bob.expect_msg("PRIVMSG", "#dev", "\x01ACTION waves\x01")
                await tom.expect("[dev] * wee waves")

                await bob.send("PRIVMSG #dev :hi wee, from node b")
                await wee.shows("irc.hub.#dev", "bob\thi wee, from node b")
                await tom.send("hi all, from a text user")
                await wee.shows("irc.hub.#dev", "tom\thi all, from a text user")
                await tom.send("/me nods")
                await wee.shows("irc.hub.#dev", "tom nods")
                await bob.send("TOPIC #dev :weechat works")
                await wee.shows("irc.hub.#dev", "weechat works")
                await tom.send("/quit bedtime")
                await wee.shows("irc.hub.#dev", "bedtime")
        finally:
            for proc in (a, b, c):
                await proc.stop()
