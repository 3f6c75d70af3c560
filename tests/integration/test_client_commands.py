"""``hubbub say``, ``who`` and ``rooms`` as a user would run them, against real nodes."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from cli.cluster import free_port

from ..helpers import json_user
from .procs import redis_server, start_node

pytestmark = pytest.mark.redis_server


async def hubbub(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "100", **(env or {})})
    async with asyncio.timeout(30):
        out, err = await child.communicate()
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


async def test_say_who_and_rooms() -> None:
    async with redis_server() as (url, _):
        node, port = await start_node(url, "cmd", "--rooms-page", "1")
        addr = f"127.0.0.1:{port}"
        try:
            ops = await json_user(port, "ops_watcher")
            await ops.op("join", room="ops", ref=1)
            await ops.event("ack", ref=1)

            code, _, err = await hubbub("say", "--node", addr, "--nick", "bot", "--room", "ops",
                                        "deploy done")
            assert code == 0, err
            got = await ops.event("msg", room="ops")
            assert (got["from"], got["text"]) == ("bot", "deploy done")

            # the nickname is held by someone: a non-zero status and the reason
            code, _, err = await hubbub("say", "--nick", "OPS_WATCHER", "hello",
                                        env={"HUBBUB_NODES": addr})
            assert code == 1 and "nick-taken" in err

            # nothing listening: fails, and says so, instead of hanging
            code, _, err = await hubbub("say", "--node", f"127.0.0.1:{free_port()}",
                                        "--nick", "bot", "hello?")
            assert code == 1 and "no node answered" in err

            code, out, err = await hubbub("who", "ops", "--node", addr)
            assert code == 0, err
            assert "ops_watcher" in out and "#ops" in out
            # a page at a time (one room a page here), and the way to the next one
            code, out, err = await hubbub("rooms", "--node", addr)
            assert code == 0, err
            assert "lobby" in out and "ops" not in out
            assert "hubbub rooms --after lobby" in " ".join(out.split())
            code, out, err = await hubbub("rooms", "--node", addr, "--after", "lobby")
            assert code == 0, err
            assert "ops" in out and "lobby" not in out and "--after" not in out
        finally:
            assert await node.stop() == 0
