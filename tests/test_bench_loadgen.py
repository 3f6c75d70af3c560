"""The load generator end to end: against the ceiling server and two hubbub nodes (in this
process, on fakeredis), and its line classification fed bytes directly."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import fakeredis
import pytest

from cli.bench.loadgen import GenSpec, LoadGen
from cli.bench.stamp import encode

from .helpers import running_node

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(30)


def _ceiling() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ceiling_server", ROOT / "benchmarks" / "ceiling_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ceiling_server", module)
    spec.loader.exec_module(module)
    return module


async def _ceiling_port() -> AsyncIterator[int]:
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_ceiling().serve("127.0.0.1", 0, started.set_result))
    try:
        yield await started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _one_step(gen: LoadGen, rate: float, seconds: float) -> dict[str, Any]:
    setup = await gen.setup()
    assert setup["ready"] == gen.spec.clients, setup
    gen.begin(rate)
    await asyncio.sleep(seconds)  # the load itself lasts this long; nothing waits on it
    ended = gen.end()
    assert await gen.drain({int(k): v for k, v in ended["by_room"].items()}, 5.0)
    return gen.collect()


def _clean(fig: dict[str, Any]) -> None:
    assert fig["sent"] > 0
    assert fig["deliveries"] == fig["expected"] > 0
    for key in ("lost", "duplicates", "late", "corrupted", "misrouted", "disconnects"):
        assert fig[key] == 0, (key, fig)
    assert sum(fig["hist"].values()) == fig["deliveries"]


async def test_against_the_ceiling_server() -> None:
    async for port in _ceiling_port():
        gen = LoadGen(GenSpec(targets=(("127.0.0.1", port),), clients=6, profile="plain",
                              tag="t"))
        try:
            fig = await _one_step(gen, 300, 0.5)
        finally:
            await gen.close()
        _clean(fig)
        assert fig["deliveries"] == fig["sent"] * 5  # no echo in the ceiling server


async def test_across_two_hubbub_nodes_in_two_rooms(fake_server: fakeredis.FakeServer
                                                    ) -> None:
    async with running_node(fake_server, "n1") as a, running_node(fake_server, "n2") as b:
        assert a.port is not None and b.port is not None
        targets = (("127.0.0.1", a.port), ("127.0.0.1", b.port))
        gen = LoadGen(GenSpec(targets=targets, clients=8, rooms=2, tag="t"))
        try:
            fig = await _one_step(gen, 100, 0.5)
        finally:
            await gen.close()
    _clean(fig)
    assert fig["deliveries"] == fig["sent"] * 3  # rooms of four


async def test_lines_are_classified() -> None:
    """Feed one client bytes directly: message, notice, error, damaged and foreign lines."""
    gen = LoadGen(GenSpec(targets=(("127.0.0.1", 1),), clients=3, profile="plain", tag="t"))
    from cli.bench.loadgen import _Client

    client = _Client(gen, 0, 0, 0, 3, "tc0")
    client.ready.set_result(None)
    good = encode(1, 0, 1, 60)
    damaged = bytearray(encode(1, 1, 1, 60))
    damaged[20] ^= 1
    client.data_received(
        b"[lobby] tc1: " + good + b"\n"          # a delivery
        b"[lobby] tc1: " + good + b"\n"          # the same again: a duplicate
        b"* tc2 joined lobby\n"                  # a notice
        b"! nick-taken: that nickname is in use\n"
        b"[lobby] tc1: " + bytes(damaged) + b"\n"  # damaged stamp: corrupted
        + encode(2, 0, 1, 60) + b"\n"            # no prefix (an unframed server): corrupted
        b"[lobby] tc0: " + encode(0, 0, 1, 60) + b"\n"  # its own message echoed
        b"[lobby] tc2: " + encode(2, 2, 1, 60) + b"\n"  # from tc2, numbers 0-1 skipped
        b"[lobby] tc2: " + encode(2, 1, 1, 60)   # split across reads...
    )
    client.data_received(b"\n")                  # ...completed: late (out of order)
    c = gen.counters
    assert (c.deliveries, c.duplicates, c.corrupted, c.echoes, c.late) == (3, 1, 2, 1, 1)
    assert dict(c.errors) == {"nick-taken": 1}
    assert client.tracker.missing() == 1  # tc2's number 0 never came


def test_server_side_state_of_a_local_connection() -> None:
    from cli.bench.loadgen import _server_side_state

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            assert _server_side_state(client.getsockname(), client.getpeername()) == 1
            server.close()  # the server's end goes to FIN_WAIT; ours reads as CLOSE_WAIT
            assert _server_side_state(client.getsockname(), client.getpeername()) != 1
