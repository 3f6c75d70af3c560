"""One client connection, from greeting to goodbye.

Theory of operation
-------------------
A session is the listening socket's ``asyncio.Protocol`` for one connection plus one task.
The protocol callbacks only buffer what arrives (pausing the socket past ``_READ_AHEAD``
unhandled bytes) and wake the task; the task feeds the bytes to the sans-I/O
:class:`~node.protocol.ServerConnection` and carries out each command in order (so one
sender's messages are relayed in the order it sent them; consecutive ``say`` lines are
submitted without waiting for each other and acknowledged in order, see
:meth:`Session._publish`).  Output needs no task: events are put in the bounded
:class:`~node.outbox.SendQueue` and everything queued during one loop iteration is handed
to the transport in one write at its end; ``pause_writing``/``resume_writing`` hold the
queue back while the client does not read.
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
import itertools
from collections import deque
from typing import TYPE_CHECKING, cast

import structlog

from . import envelope as env
from . import proxyproto
from .errors import (
    BadArguments,
    BadProxyHeader,
    FatalProtocolError,
    HubbubError,
    NickTaken,
    NotInRoom,
    NotRegistered,
    ProtocolError,
    RateLimited,
    RelayUnavailable,
)
from .limits import FloodGuard, ip_key
from .model import (
    Ack,
    AskNick,
    BlankLine,
    Bye,
    Command,
    Error,
    Event,
    Hello,
    Help,
    History,
    HistoryReply,
    Join,
    Me,
    Message,
    Msg,
    Nick,
    Notice,
    Part,
    Parted,
    Password,
    Ping,
    Pong,
    Private,
    Quit,
    Register,
    Rooms,
    RoomsReply,
    Say,
    Welcome,
    Who,
    WhoReply,
)
from .names import (
    check_message_id,
    check_nick,
    check_room,
    check_token,
    clean_reason,
    clean_text,
    fold_nick,
)
from .outbox import SendQueue
from .protocol import ServerConnection
from .redis_errors import describe
from .security import SECURITY_COMMANDS

if TYPE_CHECKING:
    from .server import ChatNode

__all__ = ["HELP", "LOBBY", "Session"]

log = structlog.get_logger("hubbub.session")

LOBBY = "lobby"

HELP = """commands:
/join ROOM          join a room (it becomes your current room)
/part [ROOM]        leave a room (default: the current one)
/msg NICK TEXT      private message, to anyone on any node
/me TEXT            action in the current room
/nick NEW           change your nickname
/who [ROOM]         who is in a room, cluster-wide
/rooms              rooms and member counts, cluster-wide
/history [N]        the last N messages of the current room
/ping               check the connection
/quit [REASON]      leave (also /exit /q /close /disconnect)
//text              say a line that starts with /
accounts (when the cluster has them):
/register PASSWORD  protect your nickname with a password
/password NEW       change your password (logged in)
/login NICK PASS    use your registered nickname
operators:
/oper SECRET        become an operator
/kick NICK [REASON]            disconnect a user
/ban NICK|ADDRESS [DUR] [WHY]  ban a nickname or address (DUR like 10m, 2h, 7d)
/unban NICK|ADDRESS            lift a ban
/mute NICK [DUR] [WHY]         refuse a user's messages for a while
/unmute NICK                   lift a mute
/bans                          bans and mutes in force"""

_ids = itertools.count(1)
_PUBLISHING = (Say, Me, Msg, Nick, Join, Part)
"""Commands that publish to the cluster: these are subject to flood control."""
_HIGH_WATER = 64 * 1024
"""Bytes the transport may hold for a client before it pauses the session's writing."""
_FLUSH_AT = 16 * 1024
"""Queued bytes handed to the transport at once rather than at the end of the iteration
(a burst of events in one iteration must not count against a healthy client's bounds)."""
_READ_AHEAD = 64 * 1024
"""Received bytes not yet handled at which the session stops reading its socket."""


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


class Session(asyncio.Protocol):
    """A connected client: the listener's protocol, driven by :class:`~node.server.ChatNode`
    (which starts :meth:`run` once the connection is admitted)."""

    def __init__(self, node: ChatNode, *, proxied: bool = False) -> None:
        """``proxied``: the listener takes PROXY headers from trusted load balancers."""
        cfg = node.config
        self._loop = asyncio.get_running_loop()
        self.node = node
        self.sid = f"{cfg.node_id}/{next(_ids)}"
        self.conn = ServerConnection(max_line=cfg.max_line, max_buffer=cfg.max_buffer)
        self.queue = SendQueue(cfg.send_queue_bytes, cfg.send_queue_lines)
        self._flush_bytes = min(_FLUSH_AT, max(1, cfg.send_queue_bytes // 2))
        self._flush_lines = max(1, cfg.send_queue_lines // 2)
        self.flood = FloodGuard(cfg.rate, cfg.burst, cfg.flood_disconnect,
                                asyncio.get_running_loop().time())
        self.nick = ""
        self.folded = ""
        self.token = ""
        self.resumed_from: str | None = None
        """The token of the session this one resumed (it tells a stale copy to end)."""
        self.rooms: list[str] = []  # joined rooms; the last one is the current room
        self.close_reason = "connection closed"
        """Why the session ended, for the log."""
        self.quit_reason: str | None = None
        """The reason given with /quit, if the client quit itself."""
        self.said_quit = False
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        """The task running :meth:`run` (set by the node when it admits the connection)."""
        self.peer = "?"
        self._inbox: list[bytes] = []  # received, not yet parsed
        self._inbox_size = 0
        self._eof = False
        self._wakeup: asyncio.Future[None] | None = None  # the reader waits for bytes
        self._reading_paused = False
        self._writing_paused = False  # the transport is above its high-water mark
        self._flush_soon = False  # a flush is scheduled for the end of this iteration
        self._reading = False  # run() is in its read loop (end() and kill() stop it)
        self._stopping = False  # we cancelled our own task to stop reading
        self._said: deque[_Said] = deque()
        """Messages submitted for publishing whose reply is not sent yet, oldest first."""
        self._all_said: asyncio.Future[None] | None = None
        self.host = ""
        """The client's address: the peer's, or the one its load balancer's PROXY header
        gave (limits, bans and logs use it)."""
        self.ip = "?"
        """The unit bans and login throttles count: an IPv4 address or an IPv6 /64."""
        self._proxied = proxied
        self._proxy_header: bytearray | None = None  # a trusted proxy's header, being read
        self._proxy_timer: asyncio.TimerHandle | None = None
        self.authed = cfg.auth != "token"
        """Token mode: the access token was given (always True in other modes)."""
        self.account: str | None = None
        """The folded name of the account this session logged in to."""
        self.oper = False
        self.muted_until = 0.0
        """Loop time until which the user's messages are refused (an operator's mute)."""

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._set_peer(transport.get_extra_info("peername"))
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        if self._proxied and self.node.gate.trusted(self.host):
            # admitted once the header says who the client is (node/gate.py)
            self._proxy_header = bytearray()
            self._proxy_timer = self._loop.call_later(self.node.config.proxy_timeout,
                                                      self._proxy_late)
            self.node.awaiting_header.add(self)
            return
        self.node.on_connection(self)

    def _set_peer(self, peer: object) -> None:
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.host = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
            self.ip = ip_key(self.host)
        else:
            self.host = self.peer = self.ip = str(peer)

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
            self._set_peer(header.source)
        self.node.on_connection(self)
        if rest and self.task is not None:  # admitted: the client's own first bytes
            self.data_received(rest)

    def _proxy_late(self) -> None:
        if self._proxy_header is not None:
            self._proxy_refused(f"no PROXY header within {self.node.config.proxy_timeout:g} s")

    def _proxy_refused(self, why: str) -> None:
        self._proxy_done()
        assert self.transport is not None
        self.node.gate.refuse_proxied(self.transport, why)

    def abandon(self) -> None:
        """Node shutdown: close a connection still waiting for its PROXY header."""
        self._proxy_done()
        if self.transport is not None:
            self.transport.close()

    def _proxy_done(self) -> None:
        self.node.awaiting_header.discard(self)
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
        if self._inbox_size >= _READ_AHEAD and not self._reading_paused:
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

    async def _read(self) -> bytes:
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

    # ------------------------------------------------------------------ state

    @property
    def registered(self) -> bool:
        return bool(self.folded)

    @property
    def announced_reason(self) -> str | None:
        """What the quit announcement says: the user's own reason, or why it ended."""
        return self.quit_reason if self.said_quit else self.close_reason

    @property
    def room(self) -> str | None:
        """The current room: the one joined last."""
        return self.rooms[-1] if self.rooms else None

    # ------------------------------------------------------------------ output

    def send(self, event: Event) -> None:
        self.send_bytes(self.conn.render(event))

    def send_bytes(self, data: bytes, lines: int | None = None) -> None:
        """Queue bytes without waiting; a reader too slow to keep up is disconnected.

        Everything queued in one loop iteration goes out in one transport write at its
        end (one system call per recipient, not one per line), or at once when a lot is
        queued; while the transport is above its high-water mark (the client does not
        read) bytes stay queued, up to the queue's bounds."""
        queue = self.queue
        if not queue.put(data, lines):
            if not queue.closed:
                self.node.stats.slow_consumers += 1
                log.warning("slow consumer disconnected", queued=queue.size,
                            lines=queue.lines)
                self.kill("send queue exceeded")
            return
        if queue.size >= self._flush_bytes or queue.lines >= self._flush_lines:
            self._flush()
        elif not self._flush_soon:
            self._flush_soon = True
            self.node.flush_soon(self)

    def flush_scheduled(self) -> None:
        """The node's end-of-iteration flush (see :meth:`ChatNode.flush_soon`)."""
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
        """End the session now, dropping whatever is queued."""
        self.close_reason = reason
        self.queue.close()
        if self.transport is not None:
            self.transport.abort()
        self._stop_reading()

    def end(self, reason: str, *farewell: Event) -> None:
        """Send ``farewell``, stop reading and close once the queue is flushed."""
        self.close_reason = reason
        for event in farewell:
            self.send(event)
        self.queue.close()
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading and self.task is not None and not self._stopping:
            self._stopping = True
            self.task.cancel()  # run() takes it as "stop reading" and cleans up

    def shutdown(self, reason: str) -> None:
        """Node shutdown: tell the client to move to another node, then end."""
        self.end(reason, Notice(f"{reason} — reconnect to another node"),
                 Bye(reason, reconnect=True))

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(conn=self.sid, peer=self.peer)
        log.debug("session opened")
        task = asyncio.current_task()
        assert task is not None
        try:
            self._reading = True
            try:
                await self._read_loop()
            except asyncio.CancelledError:
                if not self._stopping or task.uncancel() > 0:
                    raise  # not ours: the node gave up on this session
            finally:
                self._reading = False
        except Exception:
            log.exception("session crashed")
            self.close_reason = "internal error"
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        try:
            if self.registered:
                leaving = asyncio.ensure_future(self.node.unregister(self))
                try:
                    async with asyncio.timeout(self.node.config.redis_timeout * 2):
                        # shielded: a cancelled session still leaves its rooms and frees
                        # its name; the cancellation itself goes on after the finally
                        await asyncio.shield(leaving)
                except (RelayUnavailable, TimeoutError) as exc:
                    log.warning("could not release name now; retrying in the background",
                                error=describe(exc))
                    if not leaving.done():  # slow, not failed: it goes on by itself
                        leaving.add_done_callback(_departed_late)
        finally:
            self._flush()
            assert self.transport is not None
            if self.queue.size:
                self.transport.abort()  # never wait on a reader that stopped reading
            else:
                self.transport.close()  # what the transport holds is sent first
            (log.info if self.nick else log.debug)("session closed", reason=self.close_reason)

    async def _read_loop(self) -> None:
        try:
            try:
                await self.node.security.check_connect(self)
            except HubbubError as exc:
                self.close_reason = "banned"
                self.send(Error(exc.code, exc.text))
                return
            self.send(Notice(f"welcome to hubbub (node {self.node.config.node_id})"))
            self.send(Notice("type /help for commands, /quit to leave"))
            self.send(AskNick())
            try:
                async with asyncio.timeout(self.node.config.register_timeout):
                    while not self.registered:
                        if not await self._receive():
                            return
            except TimeoutError:
                self.close_reason = "registration timed out"
                self.send(Error("register-timeout", "no nickname chosen in time; goodbye"))
                return
            while await self._receive():
                pass
        finally:
            self.queue.close()

    async def _receive(self) -> bool:
        """Read once and carry out what arrived; False when the session is over."""
        data = await self._read()
        if data:
            self.conn.receive_data(data)
        else:
            self.conn.receive_eof()
        while (item := self.conn.next_command()) is not None:
            if not isinstance(item, Say | Me):
                await self._settle()  # replies go out in the order the commands came
            if isinstance(item, FatalProtocolError):
                self.close_reason = "protocol error"
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

        self.node.relay.submit(msg, done)

    def _refuse(self, error: HubbubError) -> None:
        self.send(Error(error.code, error.text, error.ref))
        if not self.registered and self.conn.mode != "json":
            self.send(AskNick())

    # ------------------------------------------------------------------ commands

    async def _handle(self, cmd: Command) -> bool:
        """Carry out one command; False when it ends the session."""
        if isinstance(cmd, BlankLine):  # Enter at the name prompt: ask again
            if not self.registered and self.conn.mode != "json":
                self.send(AskNick())
            return True
        if isinstance(cmd, Quit):
            self.said_quit = True
            self.quit_reason = clean_reason(cmd.reason)
            self.close_reason = self.quit_reason or "quit"
            self.send(Bye("goodbye"))
            return False
        try:
            if isinstance(cmd, Hello):
                await self._hello(cmd)
            elif isinstance(cmd, Ping):
                self.send(Pong(cmd.ref))
            elif isinstance(cmd, Help):
                self.send(Notice(HELP))
                self.send(Ack(cmd.ref))
            elif isinstance(cmd, SECURITY_COMMANDS):
                if isinstance(cmd, Register | Password) and not await self._throttle(cmd):
                    return False  # creating accounts counts against the rate like /nick
                await self.node.security.handle(self, cmd)
            elif not self.registered and not isinstance(cmd, Who | Rooms):
                raise NotRegistered()  # /who ROOM and /rooms may look before joining
            else:
                if not self.registered:
                    self.node.security.require_access(self)
                if isinstance(cmd, Say | Me | Msg):
                    self.node.security.check_muted(self)
                if isinstance(cmd, _PUBLISHING) and not await self._throttle(cmd):
                    return False
                await self._command(cmd)
        except HubbubError as exc:
            await self._settle()
            if exc.ref is None:
                exc.ref = cmd.ref
            self._refuse(exc)
        return True

    async def _throttle(self, cmd: Command) -> bool:
        """Wait until the session's rate allows ``cmd``; False: flooding, disconnect."""
        delay = self.flood.admit(asyncio.get_running_loop().time())
        if delay is None:
            await self._settle()
            cfg = self.node.config
            self.node.stats.flood_disconnects += 1
            self.close_reason = "flooding"
            log.warning("flooding client disconnected", over=self.flood.over)
            self.send(Error(RateLimited.code,
                            f"more than {cfg.flood_disconnect} messages over the rate limit "
                            f"({cfg.rate:g} per second, bursts of {cfg.burst}); goodbye",
                            cmd.ref))
            return False
        if delay:
            await asyncio.sleep(delay)  # the client's next lines wait in its socket
        return True

    async def hello(self, cmd: Hello) -> None:
        """Register (or resume, or log in to) a nickname; see docs/PROTOCOL.md."""
        await self._hello(cmd)

    async def _hello(self, cmd: Hello) -> None:
        if self.registered:
            raise BadArguments(f"you are already registered as {self.nick}")
        nick = check_nick(cmd.nick)
        folded = fold_nick(nick)
        rooms = tuple(dict.fromkeys(check_room(r) for r in cmd.rooms)) or (LOBBY,)
        if cmd.token is not None:
            check_token(cmd.token)  # empty or malformed: bad-args
        security = self.node.security
        admission = await security.admit(self, cmd, folded)
        resumed = bool(cmd.token) and await self.node.resume(self, nick, folded, cmd.token or "")
        if not resumed:
            await security.login_hello(self, cmd, folded, admission)
            try:
                await self.node.register(self, nick, folded)
            except NickTaken:
                if admission.account is None:
                    raise
                # the password was right: the name's other session gives way
                await self.node.take_over(nick, folded,
                                          lambda: self.node.register(self, nick, folded))
        self.conn.registered = True
        structlog.contextvars.bind_contextvars(nick=nick)
        log.info("registered", mode=self.conn.mode, resumed=resumed)
        await security.registered(self, admission, folded)  # login, operator, mute
        # the welcome says the rooms are live: join them first (their events are kept
        # for this session meanwhile), answer, then hand over what it is owed
        joined: list[tuple[str, str]] = []
        failure: RelayUnavailable | None = None
        for room in rooms:
            try:
                joined.append((room, await self.node.join(self, room, announce=not resumed)))
            except RelayUnavailable as exc:
                failure = exc  # registered all the same: say so after the welcome
                break
        token = self.token if self.conn.mode == "json" else None
        self.send(Welcome(nick, self.node.config.node_id, tuple(r for r, _ in joined),
                          token, resumed))
        if cmd.ref is not None:
            self.send(Ack(cmd.ref))
        for room, floor in joined:
            self.node.go_live(self, room, floor, announce=not resumed)
        if failure is not None:
            raise failure

    def _in_room(self, raw: str | None) -> str:
        room = check_room(raw) if raw is not None else self.room
        if room is None:
            raise NotInRoom("you are in no room; /join one first")
        if room not in self.rooms:
            raise NotInRoom(f"you are not in {room}; /join {room} first")
        return room

    async def _command(self, cmd: Command) -> None:
        node = self.node
        match cmd:
            case Say() | Me():
                room = self._in_room(cmd.room)
                text = clean_text(cmd.text)
                self._publish(env.RoomMsg(room, self.nick, self.sid, text,
                                          isinstance(cmd, Me)), cmd.ref)
            case Join(room=raw):
                room = check_room(raw)
                if room in self.rooms:
                    self.rooms.remove(room)
                    self.rooms.append(room)
                    self.send(Notice(f"current room is now {room}"))
                else:  # its own join, then what was said since, then the ack
                    node.go_live(self, room, await node.join(self, room))
                self.send(Ack(cmd.ref))
            case Part(room=raw):
                room = self._in_room(raw)
                await node.part(self, room)
                self.send(Parted(room, self.nick))
                self.send(Ack(cmd.ref))
            case Msg(to=to, text=raw_text):
                await self._private(check_nick(to), clean_text(raw_text), cmd.ref)
            case Nick(nick=raw):
                new = check_nick(raw)
                await node.security.check_rename(self, new)
                await node.rename(self, new)
                self.send(Ack(cmd.ref))
            case Who(room=raw):
                room = check_room(raw) if raw is not None else self._in_room(None)
                self.send(WhoReply(room, tuple(await node.relay.who(room)), cmd.ref))
            case Rooms():
                self.send(RoomsReply(tuple(await node.relay.rooms()), cmd.ref))
            case History(room=raw, limit=limit, after=after):
                room = self._in_room(raw)  # members only, as /history of the current room
                count = min(limit or node.config.history_default, node.config.history_limit)
                if after is not None:
                    after = check_message_id(after)
                msgs = await node.relay.history(room, count, after)
                self.send(HistoryReply(room, tuple(
                    Message(m.room, m.sender, m.text, m.id, m.ts, m.action) for m in msgs),
                    cmd.ref))
            case _:
                raise BadArguments(f"{type(cmd).__name__.lower()} is not supported here")

    async def _private(self, to: str, text: str, ref: str | int | None) -> None:
        pm = await self.node.private(self, to, text)
        if self.conn.codec.echo_own:
            self.send(Private(pm.sender, pm.to, pm.text, pm.id, pm.ts))
        self.send(Ack(ref, pm.id))
