"""One client socket: the listener's ``asyncio.Protocol``, below the session.

Theory of operation
-------------------
The protocol callbacks only buffer what arrives (pausing the socket past
:data:`READ_AHEAD` unread bytes) and wake the session's task, which takes the bytes with
:meth:`Connection.read`.  Output needs no task: bytes are put in the bounded
:class:`~node.outbox.SendQueue` and everything queued during one loop iteration is handed
to the transport in one write at its end (:class:`Flusher`: one callback per iteration for
every connection with output); ``pause_writing``/``resume_writing`` hold the queue back
while the client does not read, and a client whose queue overflows is disconnected.

A connection from a trusted load balancer first reads its PROXY protocol header
(:mod:`node.proxyproto`); either way, once the client's address is known the connection
calls the one thing it knows above it, ``on_admitted(connection)``, handed in by the
server.  :meth:`Connection.kill` and :meth:`Connection.finish` stop the reading task (the
one registered as :attr:`Connection.reader`), which then cleans up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog

from . import proxyproto
from .config import NodeConfig
from .errors import BadProxyHeader
from .gate import Gate
from .outbox import SendQueue
from .stats import NodeStats

__all__ = ["HIGH_WATER", "READ_AHEAD", "Connection", "ConnectionContext", "Flusher"]

log = structlog.get_logger("hubbub.session")

HIGH_WATER = 64 * 1024
"""Bytes the transport may hold for a client before it pauses the connection's writing."""
FLUSH_AT = 16 * 1024
"""Queued bytes handed to the transport at once rather than at the end of the iteration
(a burst of events in one iteration must not count against a healthy client's bounds)."""
READ_AHEAD = 64 * 1024
"""Received bytes not yet handled at which the connection stops reading its socket."""

_ids = itertools.count(1)


class Flusher:
    """Writes every connection's queued output at the end of the loop iteration: one
    callback for all of them (a message to a room of 500 schedules one, not 500)."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: list[Connection] = []

    def soon(self, connection: Connection) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self._flush_all)
        self._due.append(connection)

    def _flush_all(self) -> None:
        due, self._due = self._due, []
        for connection in due:
            try:
                connection.flush_scheduled()
            except Exception:  # one broken transport must not keep the others' output
                log.exception("flushing a session failed", conn=connection.sid)


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What every connection of one listener shares (built once by the server)."""

    config: NodeConfig
    stats: NodeStats
    flusher: Flusher
    gate: Gate
    awaiting_header: set[Connection]
    """Connections from a trusted load balancer whose PROXY header has not come yet."""
    on_admitted: Callable[[Connection], None]
    """The one call upward: the client's address is known, start serving it."""
    proxied: bool = False
    """The listener takes PROXY headers from trusted load balancers."""


class Connection(asyncio.Protocol):
    """One client socket (see the module docstring)."""

    def __init__(self, ctx: ConnectionContext) -> None:
        cfg = ctx.config
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        self.sid = f"{cfg.node_id}/{next(_ids)}"
        self.queue = SendQueue(cfg.send_queue_bytes, cfg.send_queue_lines)
        self._flush_bytes = min(FLUSH_AT, max(1, cfg.send_queue_bytes // 2))
        self._flush_lines = max(1, cfg.send_queue_lines // 2)
        self.transport: asyncio.Transport | None = None
        self.address: object = "?"
        """The client's address as the socket (or its balancer's PROXY header) gave it."""
        self.host = ""
        self.close_reason = "connection closed"
        """Why the connection ended, for the log."""
        self.admitted = False
        """A session serves this connection (set by whoever ``on_admitted`` calls)."""
        self.reader: asyncio.Task[None] | None = None
        """The task reading this connection (:meth:`kill` and :meth:`finish` stop it)."""
        self.stopped = False
        """The reader was cancelled by :meth:`kill` or :meth:`finish`, not from outside."""
        self._inbox: list[bytes] = []  # received, not yet read
        self._inbox_size = 0
        self._eof = False
        self._wakeup: asyncio.Future[None] | None = None  # the reader waits for bytes
        self._reading_paused = False
        self._writing_paused = False  # the transport is above its high-water mark
        self._flush_soon = False  # a flush is scheduled for the end of this iteration
        self._proxy_header: bytearray | None = None  # a trusted proxy's header, being read
        self._proxy_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._set_address(transport.get_extra_info("peername"))
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        ctx = self._ctx
        if ctx.proxied and ctx.gate.trusted(self.host):
            # admitted once the header says who the client is (node/gate.py)
            self._proxy_header = bytearray()
            self._proxy_timer = self._loop.call_later(ctx.config.proxy_timeout,
                                                      self._proxy_late)
            ctx.awaiting_header.add(self)
            return
        ctx.on_admitted(self)

    def _set_address(self, peer: object) -> None:
        self.address = peer
        self.host = str(peer[0]) if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)

    def _proxy_data(self, data: bytes) -> None:
        assert self._proxy_header is not None
        self._proxy_header += data
        try:
            header = proxyproto.parse(bytes(self._proxy_header))
        except BadProxyHeader as exc:
            self._proxy_refused(str(exc))
            return
        if header is None:
            return
        rest = bytes(self._proxy_header[header.length:])
        self._proxy_done()
        if header.source is not None:
            self._set_address(header.source)
        self._ctx.on_admitted(self)
        if rest and self.admitted:  # admitted: the client's own first bytes
            self.data_received(rest)

    def _proxy_late(self) -> None:
        if self._proxy_header is not None:
            self._proxy_refused(f"no PROXY header within {self._ctx.config.proxy_timeout:g} s")

    def _proxy_refused(self, why: str) -> None:
        self._proxy_done()
        assert self.transport is not None
        self._ctx.gate.refuse_proxied(self.transport, why)

    def abandon(self) -> None:
        """Node shutdown: close a connection still waiting for its PROXY header."""
        self._proxy_done()
        if self.transport is not None:
            self.transport.close()

    def _proxy_done(self) -> None:
        self._ctx.awaiting_header.discard(self)
        self._proxy_header = None
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
            self._proxy_timer = None

    def data_received(self, data: bytes) -> None:
        if self._proxy_header is not None:
            self._proxy_data(data)
            return
        self._inbox.append(data)
        self._inbox_size += len(data)
        if self._inbox_size >= READ_AHEAD and not self._reading_paused:
            # the session is busy (a Redis round trip): the rest waits in the socket
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # keep the socket open for writing: the replies still go out

    def connection_lost(self, exc: Exception | None) -> None:
        self._proxy_done()
        if exc is not None and self.close_reason == "connection closed":
            self.close_reason = "connection lost"
        self._eof = True
        self.queue.close()  # nobody to write to
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._flush()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def read(self) -> bytes:
        """What arrived since the last call, waiting for some; ``b""`` at EOF."""
        while not self._inbox:
            if self._eof:
                return b""
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        data = self._inbox[0] if len(self._inbox) == 1 else b"".join(self._inbox)
        self._inbox.clear()
        self._inbox_size = 0
        if self._reading_paused:
            self._reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        return data

    # ------------------------------------------------------------------ output

    def send_bytes(self, data: bytes, lines: int | None = None) -> None:
        """Queue bytes without waiting; a reader too slow to keep up is disconnected.

        Everything queued in one loop iteration goes out in one transport write at its
        end (one system call per recipient, not one per line), or at once when a lot is
        queued; while the transport is above its high-water mark (the client does not
        read) bytes stay queued, up to the queue's bounds."""
        queue = self.queue
        if not queue.put(data, lines):
            if not queue.closed:
                self._ctx.stats.slow_consumers += 1
                log.warning("slow consumer disconnected", queued=queue.size,
                            lines=queue.lines)
                self.kill("send queue exceeded")
            return
        if queue.size >= self._flush_bytes or queue.lines >= self._flush_lines:
            self._flush()
        elif not self._flush_soon:
            self._flush_soon = True
            self._ctx.flusher.soon(self)

    def flush_scheduled(self) -> None:
        """The end-of-iteration flush (see :class:`Flusher`)."""
        self._flush_soon = False
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if self._writing_paused or transport is None or transport.is_closing():
            return
        data = self.queue.take()
        if data:
            transport.write(data)

    def kill(self, reason: str) -> None:
        """End the connection now, dropping whatever is queued."""
        self.close_reason = reason
        self.queue.close()
        if self.transport is not None:
            self.transport.abort()
        self._stop_reading()

    def finish(self) -> None:
        """Stop reading; close once what is queued is flushed (see :meth:`close`)."""
        self.queue.close()
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self.reader is not None and not self.stopped:
            self.stopped = True
            self.reader.cancel()  # the reader takes it as "stop reading" and cleans up

    def close(self) -> None:
        """Hand over what is queued and close; abort if the client stopped reading."""
        self._flush()
        assert self.transport is not None
        if self.queue.size:
            self.transport.abort()  # never wait on a reader that stopped reading
        else:
            self.transport.close()  # what the transport holds is sent first
