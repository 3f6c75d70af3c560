"""The client's connection engine: connect, register, catch up, stay alive, fail over.

Theory of operation
-------------------
``run()`` loops over the node addresses: it connects, sends ``hello`` (with the resume
token once it has one), waits for ``welcome``, then reads events until the connection
ends.  Silence longer than ``ping_interval`` sends a ``ping``; nothing heard for
``pong_timeout`` counts as a dead node.  A lost node (closed, reset, silent) moves the
client to the next address after a capped, jittered backoff; a node that says ``bye``
with a reconnect hint is left at once, without an error.  What to show comes from
:class:`~cli.client.state.ClientState`, which also decides what to fetch after a
failover, so nothing is missed and nothing shown twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from typing import Any

from node.backoff import backoff

from .shown import Shown, safe
from .state import Address, ClientState, Op

__all__ = ["ChatClient", "ClientError"]

_FATAL = {"nick-taken", "bad-nick", "bad-room", "bad-args", "auth-required", "auth-failed",
          "auth-throttled", "auth-busy", "login-required", "no-such-account", "not-enabled",
          "banned"}
"""Refusals of a hello that another node would refuse too: the client stops."""
_REMOVED = {"kicked", "nick-lost"}
"""An operator removed the user, or the name was taken over (a login with its password
elsewhere, or this client's own resume on another node): the client stops instead of
reconnecting — reconnecting would take the name back and start a tug of war."""


class ClientError(Exception):
    """The cluster refused us for good (e.g. the nickname is taken)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class _Moved(Exception):
    """The node asked us to move on (graceful shutdown)."""


class ChatClient:
    def __init__(self, state: ClientState, *, show: Callable[[Shown], None],
                 on_status: Callable[[], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 ping_interval: float = 2.0, pong_timeout: float = 5.0,
                 backoff_max: float = 5.0, connect_timeout: float = 3.0,
                 max_attempts: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.state = state
        self.tls = tls
        """Speak TLS to every node, verifying its certificate with this context."""
        self._show = show
        self._on_status = on_status or (lambda: None)
        self._on_event = on_event
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.connected = False
        self.failovers = 0
        self._writer: asyncio.StreamWriter | None = None
        self._wake = asyncio.Event()
        self.welcomed = asyncio.Event()
        """Set on every welcome (tests and scripts wait on it)."""
        self.progress = asyncio.Event()
        """Set whenever an event was handled (waiters clear it and wait again)."""

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        """Stay connected until the user quits; raises :class:`ClientError` if refused."""
        delays = None
        failures = 0
        while not self.state.quitting:
            address = self.state.next_address()
            try:
                await self._session(address)
                failures = 0
                delays = None
                continue  # quit (loop ends) or moved on at once
            except ClientError:
                raise
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                if self.state.quitting:
                    break
                failures += 1
                if self.max_attempts is not None and failures >= self.max_attempts:
                    raise ClientError("unreachable", f"no node answered ({exc})") from exc
                delays = delays or backoff(initial=0.2, maximum=self.backoff_max)
                delay = next(delays)
                self._show(Shown("status", f"lost {address} ({_why(exc)}); trying "
                                           f"{self._peek()} in {delay:.1f} s"))
            finally:
                if self.connected:
                    self.failovers += 1
                await _closed(self._drop())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def submit(self, line: str) -> None:
        """A line the user typed."""
        shown, ops = self.state.command(line)
        for item in shown:
            self._show(item)
        for op in ops:
            if self.connected:
                self._send(op)
            elif op["op"] == "quit":
                self._wake.set()
            elif op["op"] not in ("say", "me"):  # pending messages wait for the reconnect
                self._show(Shown("error", "not connected right now; try again in a moment",
                                 code="offline"))

    def quit(self, reason: str | None = None) -> None:
        self.state.quitting = True
        if self.connected:
            self._send({"op": "quit", **({"reason": reason} if reason else {})})
        self._wake.set()

    # ------------------------------------------------------------------ internals

    def _peek(self) -> Address:
        s = self.state
        return s.addresses[s._next % len(s.addresses)]

    def _send(self, op: Op) -> None:
        if self._writer is not None:
            self._writer.write(json.dumps(op, ensure_ascii=False).encode() + b"\n")

    def _drop(self) -> asyncio.StreamWriter | None:
        """Forget the connection; the writer being closed is returned (to wait for)."""
        was = self.connected
        self.connected = False
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.state.disconnected()
        if was:
            self._on_status()
        return writer

    async def _session(self, address: Address) -> None:
        async with asyncio.timeout(self.connect_timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    address.host, address.port, limit=1 << 22, ssl=self.tls,
                    server_hostname=address.host if self.tls is not None else None)
            except ssl.SSLCertVerificationError as exc:  # not a node to fail over from
                raise ClientError("tls-unverified", f"{address}: {exc.verify_message}"
                                  ) from exc
        self._writer = writer
        self._send(self.state.hello())
        async with asyncio.timeout(self.connect_timeout * 2):
            while True:
                ev = await self._next_event(reader)
                if ev is None:
                    continue
                if ev.get("ev") == "welcome":
                    break
                if ev.get("ev") == "error":
                    code = str(ev.get("code"))
                    if code in _FATAL:
                        raise ClientError(safe(code), safe(str(ev.get("text", ""))))
                    raise ConnectionError(f"{code}: {ev.get('text', '')}")
        self.connected = True
        if self.state.quitting:  # the user quit while we were connecting
            self._send({"op": "quit"})
        self._dispatch(ev)
        for op in self.state.unsent():
            self._send(op)
        self.welcomed.set()
        self._on_status()
        await self._read_loop(reader)

    async def _next_event(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        line = await reader.readline()
        if not line:
            raise EOFError("connection closed")
        if not line.startswith(b"{"):
            return None  # greeting lines in text form
        try:
            ev = json.loads(line)
        except ValueError:
            return None
        if not isinstance(ev, dict):
            return None
        if self._on_event is not None:
            self._on_event(ev)
        return ev

    def _dispatch(self, ev: dict[str, Any]) -> None:
        shown, ops = self.state.handle(ev)
        for item in shown:
            self._show(item)
        for op in ops:
            self._send(op)
        self.progress.set()

    async def settled(self) -> None:
        """Wait until every message the user said has been acknowledged."""
        while self.state.pending:
            self.progress.clear()
            await self.progress.wait()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            try:
                ev = await asyncio.wait_for(self._next_event(reader), self.ping_interval)
            except TimeoutError:
                if loop.time() - heard > self.pong_timeout:
                    raise TimeoutError("no answer to ping") from None
                self._send({"op": "ping"})
                continue
            heard = loop.time()
            if ev is None:
                continue
            if ev.get("ev") == "error" and ev.get("code") in _REMOVED:
                raise ClientError(safe(str(ev["code"])), safe(str(ev.get("text", ""))))
            if ev.get("ev") == "bye":
                if ev.get("reconnect") and not self.state.quitting:
                    self._show(Shown("status", f"{self.state.node} is going away; moving to "
                                               "another node"))
                return
            self._dispatch(ev)
            if self._writer is not None:
                await self._writer.drain()


async def _closed(writer: asyncio.StreamWriter | None) -> None:
    """Wait (briefly) until a closed connection's socket is gone: over TLS, closing
    exchanges close_notify first, and a process that exits before then leaks the socket."""
    if writer is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 80 else text[:77] + "..."
