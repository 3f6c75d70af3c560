"""One client, from greeting to goodbye: the one task of a connection.

Theory of operation
-------------------
The :class:`~node.connection.Connection` buffers what the socket brings; the session's task
takes it, feeds it to the sans-I/O :class:`~node.protocol.ServerConnection` and carries
out each command in order through the command table (:mod:`node.commands`), so one
sender's messages are relayed in the order it sent them.  Consecutive ``say`` lines are
submitted without waiting for each other and acknowledged in order (see
:meth:`Session._publish`).
Registration (choosing a free nickname) must finish within ``register_timeout`` of the
connect; a trickle of bytes does not extend it.  Commands that publish pass the session's
:class:`~node.limits.FloodGuard` first: past the burst the reader waits for a token (the
client's further lines wait in its socket), and a client that stays over budget is sent
``rate-limited`` and disconnected (quit reason ``flooding``).  Whatever ends the
session — quit, EOF, a fatal protocol error, a slow reader, a flood, node shutdown, a
crash — one ``finally`` releases the nickname, leaves the rooms and closes the socket.
"""

from __future__ import annotations

import asyncio
from collections import deque

import structlog

from . import envelope as env
from .commands import COMMANDS, Services, check, spec_of
from .connection import Connection
from .errors import (
    FatalProtocolError,
    HubbubError,
    ProtocolError,
    RateLimited,
    RelayUnavailable,
)
from .limits import FloodGuard
from .model import Ack, AskNick, Bye, Command, Error, Event, Notice
from .protocol import Codec, ServerConnection
from .redis_errors import describe
from .stats import NodeStats
from .user import User

__all__ = ["Session"]

log = structlog.get_logger("hubbub.session")


def _departed_late(leaving: asyncio.Future[None]) -> None:
    """A departure that outlasted the session's cleanup finished (or failed: then the
    relay retries it and says so itself)."""
    if leaving.cancelled():
        return
    exc = leaving.exception()
    if exc is None:
        log.info("deferred departure done", after="a slow release")
    elif not isinstance(exc, RelayUnavailable):
        log.error("departure failed", error=describe(exc))


class _Said:
    """A message of this session on its way to Redis: its ref, then its id or error."""

    __slots__ = ("ref", "result")

    def __init__(self, ref: str | int | None) -> None:
        self.ref = ref
        self.result: str | RelayUnavailable | None = None


class Session:
    """A connected client (a :class:`~node.user.Member`): its user record, its wire
    codec and the task that serves it (:meth:`run`, started by the server)."""

    def __init__(self, connection: Connection, services: Services, stats: NodeStats) -> None:
        cfg = services.config
        self.connection = connection
        self.services = services
        self.stats = stats
        self.user = User(connection.sid, authed=cfg.auth != "token")
        self.user.set_peer(connection.address)
        self.wire = ServerConnection(max_line=cfg.max_line, max_buffer=cfg.max_buffer)
        self.flood = FloodGuard(cfg.rate, cfg.burst, cfg.flood_disconnect,
                                asyncio.get_running_loop().time())
        self.send_bytes = connection.send_bytes  # fan-out's hot path: no extra call
        self._said: deque[_Said] = deque()
        """Messages submitted for publishing whose reply is not sent yet, oldest first."""
        self._all_said: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ the member

    @property
    def mode(self) -> str:
        return self.wire.mode

    @property
    def codec(self) -> Codec:
        return self.wire.codec

    def send(self, event: Event) -> None:
        self.connection.send_bytes(self.wire.render(event))

    def end(self, reason: str, *farewell: Event) -> None:
        """Send ``farewell``, stop reading and close once the queue is flushed."""
        self.connection.close_reason = reason
        for event in farewell:
            self.send(event)
        self.connection.finish()

    def shutdown(self, reason: str) -> None:
        """Node shutdown: tell the client to move to another node, then end."""
        self.end(reason, Notice(f"{reason} — reconnect to another node"),
                 Bye(reason, reconnect=True))

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(conn=self.user.sid, peer=self.user.peer)
        log.debug("session opened")
        task = asyncio.current_task()
        assert task is not None
        connection = self.connection
        try:
            connection.reader = task
            try:
                await self._read_loop()
            except asyncio.CancelledError:
                if not connection.stopped or task.uncancel() > 0:
                    raise  # not ours: the node gave up on this session
            finally:
                connection.reader = None
        except Exception:
            log.exception("session crashed")
            connection.close_reason = "internal error"
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        user, connection = self.user, self.connection
        try:
            if user.registered:
                reason = user.quit_reason if user.said_quit else connection.close_reason
                leaving = asyncio.ensure_future(self.services.identity.unregister(self, reason))
                try:
                    async with asyncio.timeout(self.services.config.redis_timeout * 2):
                        # shielded: a cancelled session still leaves its rooms and frees
                        # its name; the cancellation itself goes on after the finally
                        await asyncio.shield(leaving)
                except (RelayUnavailable, TimeoutError) as exc:
                    log.warning("could not release name now; retrying in the background",
                                error=describe(exc))
                    if not leaving.done():  # slow, not failed: it goes on by itself
                        leaving.add_done_callback(_departed_late)
        finally:
            connection.close()
            (log.info if user.nick else log.debug)("session closed",
                                                   reason=connection.close_reason)

    async def _read_loop(self) -> None:
        cfg = self.services.config
        try:
            try:
                await self.services.security.check_connect(self)
            except HubbubError as exc:
                self.connection.close_reason = "banned"
                self.send(Error(exc.code, exc.text))
                return
            self.send(Notice(f"welcome to hubbub (node {cfg.node_id})"))
            self.send(Notice("type /help for commands, /quit to leave"))
            self.send(AskNick())
            try:
                async with asyncio.timeout(cfg.register_timeout):
                    while not self.user.registered:
                        if not await self._receive():
                            return
            except TimeoutError:
                self.connection.close_reason = "registration timed out"
                self.send(Error("register-timeout", "no nickname chosen in time; goodbye"))
                return
            while await self._receive():
                pass
        finally:
            self.connection.queue.close()

    async def _receive(self) -> bool:
        """Read once and carry out what arrived; False when the session is over."""
        data = await self.connection.read()
        if data:
            self.wire.receive_data(data)
        else:
            self.wire.receive_eof()
        while (item := self.wire.next_command()) is not None:
            spec = COMMANDS.get(type(item))
            if spec is None or not spec.pipelined:
                await self._settle()  # replies go out in the order the commands came
            if isinstance(item, FatalProtocolError):
                self.connection.close_reason = "protocol error"
                self.send(Error(item.code, item.text, item.ref))
                return False
            if isinstance(item, ProtocolError):
                self._refuse(item)
                continue
            if not await self._handle(item):
                return False
        await self._settle()
        return bool(data)

    async def _settle(self) -> None:
        """Wait until every message this session submitted has been answered."""
        if self._said:
            self._all_said = asyncio.get_running_loop().create_future()
            await self._all_said

    def _publish(self, msg: env.RoomMsg, ref: str | int | None) -> None:
        """Submit a message without waiting: lines that arrived together share Redis round
        trips.  Its ack (or error) is sent as soon as Redis answered and every earlier
        message of this session has been answered, so replies keep the commands' order."""
        said = _Said(ref)
        self._said.append(said)

        def done(result: str | RelayUnavailable) -> None:
            said.result = result
            while self._said and self._said[0].result is not None:
                head = self._said.popleft()
                if isinstance(head.result, RelayUnavailable):
                    if head.result.ref is None:
                        head.result.ref = head.ref
                    self._refuse(head.result)
                else:
                    self.send(Ack(head.ref, head.result))
            if not self._said and self._all_said is not None and not self._all_said.done():
                self._all_said.set_result(None)

        self.services.relay.submit(msg, done)

    def _refuse(self, error: HubbubError) -> None:
        self.send(Error(error.code, error.text, error.ref))
        if not self.user.registered and self.wire.mode != "json":
            self.send(AskNick())

    # ------------------------------------------------------------------ commands

    async def _handle(self, cmd: Command) -> bool:
        """Carry out one command; False when it ends the session."""
        user = self.user
        try:
            spec = spec_of(cmd)
            check(self.services, self, spec)
            if spec.throttled and not await self._throttle(cmd):
                return False
            result = await spec.handler(self.services, self, cmd)
            if spec.ends:
                self.connection.close_reason = user.quit_reason or "quit"
                return False
            if result is not None:
                self._publish(result, cmd.ref)
        except HubbubError as exc:
            await self._settle()
            if exc.ref is None:
                exc.ref = cmd.ref
            self._refuse(exc)
        finally:
            if user.folded:  # registered: the codec reads a bare line as a message now
                self.wire.registered = True
        return True

    async def _throttle(self, cmd: Command) -> bool:
        """Wait until the session's rate allows ``cmd``; False: flooding, disconnect."""
        delay = self.flood.admit(asyncio.get_running_loop().time())
        if delay is None:
            await self._settle()
            cfg = self.services.config
            self.stats.flood_disconnects += 1
            self.connection.close_reason = "flooding"
            log.warning("flooding client disconnected", over=self.flood.over)
            self.send(Error(RateLimited.code,
                            f"more than {cfg.flood_disconnect} messages over the rate limit "
                            f"({cfg.rate:g} per second, bursts of {cfg.burst}); goodbye",
                            cmd.ref))
            return False
        if delay:
            await asyncio.sleep(delay)  # the client's next lines wait in its socket
        return True
