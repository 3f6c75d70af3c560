"""The ceiling: the fastest plain broadcast server Python manages on one core.

No Redis, no nickname rules, no rooms but one, no commands but quitting: only what any
chat server must do, done the cheap way —

* ``asyncio.Protocol`` (uvloop when installed); lines framed on ``\\n`` only, a ``\\r``
  before it dropped, a partial line kept for the next read, a line over 4096 bytes
  discarded whole, more than 64 KiB without a newline closes the connection;
* the first line is the nickname (answered ``* welcome NICK``), every later line is sent
  to every other client as ``[lobby] NICK: TEXT`` (the hubbub text protocol's shape);
  ``q``, ``exit``, ``close``, ``disconnect`` or ``/quit`` leaves;
* output is coalesced: lines owed to a recipient go into its buffer, and every buffer is
  flushed with one ``write()`` once per loop iteration (``loop.call_soon``);
* a recipient with more than 1 MiB unsent (it does not read) is disconnected, as
  hubbub does by default.

    python benchmarks/ceiling_server.py --port 5060

hubbub bench measures it with ``--plain`` (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import cast

__all__ = ["CeilingServer", "serve"]

MAX_LINE = 4096
MAX_PENDING = 64 * 1024
MAX_UNSENT = 1024 * 1024  # as hubbub's default send queue
QUIT = {b"q", b"exit", b"close", b"disconnect", b"/quit"}


class _Conn(asyncio.Protocol):
    __slots__ = ("discarding", "nick", "out", "pending", "prefix", "server", "transport")

    def __init__(self, server: CeilingServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.nick: bytes | None = None
        self.prefix = b""
        self.pending = b""
        self.discarding = False
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(b"* ceiling server\n* GET_NAME: choose a nickname\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.members.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if self.discarding:  # the tail of an over-long line, up to its newline
            if not lines:
                self.pending = b""
                return
            lines[0] = b""
            self.discarding = False
        if len(rest) > MAX_LINE:
            if len(rest) > MAX_PENDING and self.transport is not None:
                self.transport.close()
                return
            rest = b""
            self.discarding = True
        self.pending = rest
        server = self.server
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip() or len(line) > MAX_LINE:
                continue
            if self.nick is None:
                self.nick = line.strip()
                self.prefix = b"[lobby] " + self.nick + b": "
                server.send(self, b"* welcome " + self.nick + b"\n")
                server.members.add(self)
            elif line.strip().lower() in QUIT:
                if self.transport is not None:
                    self.transport.close()
                return
            else:
                server.broadcast(self, self.prefix + line + b"\n")


class CeilingServer:
    """One room; :meth:`broadcast` only appends, :meth:`_flush` writes once per tick."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.members: set[_Conn] = set()
        self.dirty: list[_Conn] = []
        self.scheduled = False

    def protocol(self) -> _Conn:
        return _Conn(self)

    def send(self, conn: _Conn, line: bytes) -> None:
        if not conn.out:
            self.dirty.append(conn)
        conn.out.append(line)
        self._schedule()

    def broadcast(self, sender: _Conn, line: bytes) -> None:
        dirty = self.dirty
        for conn in self.members:
            if conn is not sender:
                out = conn.out
                if not out:
                    dirty.append(conn)
                out.append(line)
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            out, conn.out = conn.out, []
            transport = conn.transport
            if transport is None:
                continue
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            if transport.get_write_buffer_size() > MAX_UNSENT:
                transport.abort()  # it does not read: nobody else waits for it


async def serve(host: str, port: int, started: Callable[[int], None] | None = None) -> None:
    """Serve until cancelled; ``started`` gets the bound port."""
    server = CeilingServer()
    listener = await asyncio.get_running_loop().create_server(
        server.protocol, host, port, backlog=4096, reuse_address=True)
    try:
        if started is not None:
            started(listener.sockets[0].getsockname()[1])
        await asyncio.Future()  # until cancelled
    finally:
        listener.close()
        for conn in list(server.members):
            if conn.transport is not None:
                conn.transport.abort()


async def _main(host: str, port: int) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(host, port, lambda p: print(f"listening on {host}:{p}", flush=True))


def main() -> None:
    ap = argparse.ArgumentParser(description="A minimal coalescing broadcast server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5060, help="0: any free port")
    ap.add_argument("--no-uvloop", action="store_true", help="plain asyncio")
    args = ap.parse_args()
    try:
        if args.no_uvloop:
            raise ImportError
        import uvloop
    except ImportError:
        asyncio.run(_main(args.host, args.port))
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
