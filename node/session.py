"""One client, from greeting to goodbye: the one task of a connection.

Theory of operation
-------------------
The :class:`~node.connection.Connection` buffers what the socket brings; the session's task
takes it, feeds it to the sans-I/O :class:`~node.protocol.ServerConnection` and carries
out each command in order through the command table (:mod:`node.commands`), so one
sender's messages are relayed in the order it sent them.  Consecutive ``say`` lines are
submitted without waiting for each other and acknowledged in order (see
:meth:`Session._publish`), at most ``max_inflight`` of them unanswered: past it, and while
the node's publishing queue is full (:meth:`~node.publisher.Publisher.admitted`), the task
waits, reads nothing, and the client's further lines wait in its socket — backpressure
through TCP, never a refusal for load.
Registration (choosing a free nickname) must finish within ``register_timeout`` of the
connect; a trickle of bytes does not extend it.  Commands that publish pass the session's
:class:`~node.limits.FloodGuard` first: past the burst the reader waits for a token (the
client's further lines wait in its socket), and a client that stays over budget is sent
``rate-limited`` and disconnected (quit reason ``flooding``); a command worth several
(a ``hello`` naming rooms) takes as many tokens.  Listing commands (``rooms``, ``who``,
``history``: each reads Redis and may answer with a lot) pass a second bucket of their
own, the :class:`~node.limits.Pacer`, before registration too: past its burst the session
waits for it, however long the client goes on, and never disconnects for it.  Whatever
ends the
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
from .limits import FloodGuard, Pacer
from .model import Ack, AskNick, Bye, Command, Error, Event, Notice
from .protocol import Codec, ServerConnection
from .redis_errors import describe
from .stats import NodeStats
from .user import User

__all__ = ["PARSE_SLICE", "Session"]

PARSE_SLICE = 8192
"""Bytes of input parsed at a time (see :meth:`Session._receive`)."""

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
        now = asyncio.get_running_loop().time()
        self.flood = FloodGuard(cfg.rate, cfg.burst, cfg.flood_disconnect, now)
        self.lister = Pacer(cfg.list_rate, cfg.list_burst, now)
        self.send_bytes = connection.send_bytes  # fan-out's hot path: no extra call
        self._said: deque[_Said] = deque()
        """Messages submitted for publishing whose reply is not sent yet, oldest first."""
        self._settled: asyncio.Future[None] | None = None
        """Set once at most :attr:`_settle_at` messages are unanswered."""
        self._settle_at = 0

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
                    if isinstance(exc, TimeoutError) and leaving.done() and \
                            not leaving.cancelled() and leaving.exception() is None:
                        pass  # it finished just as the wait ran out: nothing is deferred
                    else:
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
        """Read once and carry out what arrived; False when the session is over.

        What arrived is parsed a slice at a time (:data:`PARSE_SLICE`), each slice once
        the commands of the one before are carried out, and the loop gets a turn between
        two slices: a client whose commands wait (its flood or listing bucket) never makes
        the node parse hundreds of kilobytes of them long before they can run, and one
        whose commands need no wait (pings, or listings it left behind) holds the loop for
        one slice at a time, not for all it sent."""
        data = await self.connection.read()
        if not data:
            self.wire.receive_eof()
            await self._carry_out()
            await self._settle()
            return False
        for start in range(0, len(data), PARSE_SLICE):
            if start:
                await asyncio.sleep(0)
            self.wire.receive_data(data[start:start + PARSE_SLICE])
            if not await self._carry_out():
                return False
        await self._settle()
        return True

    async def _carry_out(self) -> bool:
        """Carry out every command parsed so far (the last messages may still be on their
        way to Redis); False when the session is over.  Once the socket is gone, listing
        commands (whose only effect is their answer) are skipped: a client that queued
        thousands of them and left is not paced through them for nobody."""
        transport = self.connection.transport
        while (item := self.wire.next_command()) is not None:
            spec = COMMANDS.get(type(item))
            if spec is not None and spec.listing and transport is not None and \
                    transport.is_closing():
                continue
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
        return True

    async def _settle(self, left: int = 0) -> None:
        """Wait until at most ``left`` of the messages this session submitted are
        unanswered (by default: every one answered)."""
        if len(self._said) > left:
            self._settle_at = left
            self._settled = asyncio.get_running_loop().create_future()
            try:
                await self._settled
            finally:
                self._settled = None

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
            settled = self._settled
            if settled is not None and len(self._said) <= self._settle_at and \
                    not settled.done():
                settled.set_result(None)

        self.services.relay.submit(msg, done)

    async def _admitted(self, room: str | None = None) -> None:
        """Wait until this session may submit one more message: fewer than
        ``max_inflight`` of its own unanswered, and room in the publishing queue of
        ``room``'s Redis shard.
        Meanwhile nothing is read: the client's further lines wait in its socket."""
        limit = self.services.config.max_inflight
        if len(self._said) >= limit:
            self.stats.inflight_waits += 1
            await self._settle(limit - 1)
        await self.services.relay.admitted(room)

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
            if spec.throttled and not await self._throttle(
                    cmd, spec.cost(self.services, cmd) if spec.cost is not None else 1):
                return False
            if spec.listing:
                await self._pace()
            result = await spec.handler(self.services, self, cmd)
            if spec.ends:
                self.connection.close_reason = user.quit_reason or "quit"
                return False
            if result is not None:
                await self._admitted(result.room)
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

    async def _pace(self) -> None:
        """Wait until the session's listing rate allows one more listing."""
        delay = self.lister.admit(asyncio.get_running_loop().time())
        if delay:
            await asyncio.sleep(delay)  # the client's next lines wait in its socket

    async def _throttle(self, cmd: Command, cost: int = 1) -> bool:
        """Wait until the session's rate allows ``cmd`` (worth ``cost`` tokens); False:
        flooding, disconnect."""
        delay = self.flood.admit(asyncio.get_running_loop().time(), cost)
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
