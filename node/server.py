"""The chat node: accepts TCP clients, keeps local room membership, fans out bus events.

Theory of operation
-------------------
* ``sessions`` holds every open connection; ``local`` the registered ones by folded name;
  ``rooms`` the local members of each room.  Only the node's own event loop touches them.
* A room's channel is subscribed when its first local member joins (the join waits for
  Redis to confirm the subscription, so the joiner sees its own join) and unsubscribed when
  the last one leaves.
* Every room event reaches local members through the bus, so all members on all nodes see
  one order.  Fan-out is synchronous: each event is rendered once per wire mode and the
  same bytes are queued to every recipient (:meth:`Session.send_bytes` never waits).
* Shutdown reads top to bottom in :meth:`ChatNode._shutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import assert_never

import structlog
from redis.asyncio import Redis

from . import envelope as env
from . import startup
from .backoff import backoff
from .config import NodeConfig
from .errors import NickTaken, NoSuchNick, RedisMisconfigured, RelayUnavailable, StartupError
from .gate import Gate
from .http import HttpEndpoint
from .limits import REFUSALS
from .localroom import LocalRoom
from .model import (
    Bye,
    Error,
    Event,
    Joined,
    Message,
    NickChanged,
    Notice,
    Parted,
    Private,
    Quitted,
)
from .names import MAX_NICK, fold_nick
from .pause import pause
from .redis_errors import describe
from .relay import NameInfo, Relay
from .security import Security
from .session import Session
from .tls import server_context

__all__ = ["ChatNode", "NodeStats"]

log = structlog.get_logger("hubbub.node")

_TOLD_KEPT = 4096
"""User events (quits, renames) remembered for telling each member once."""


@dataclass(slots=True)
class NodeStats:
    connections: int = 0
    slow_consumers: int = 0
    delivered: int = 0
    repaired: int = 0
    flood_disconnects: int = 0
    accept_pauses: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))
    """Connections refused at connect, by reason (see :data:`node.limits.REFUSALS`)."""


class ChatNode:
    """One chat node.  ``await node.run()`` serves until :meth:`stop` is called."""

    def __init__(self, config: NodeConfig, redis: Redis) -> None:
        self.config = config
        self.relay = Relay(redis, config, self)
        self.stats = NodeStats()
        self.sessions: set[Session] = set()
        self.awaiting_header: set[Session] = set()
        """Connections from a trusted load balancer whose PROXY header has not come yet
        (not admitted, no task: closed at shutdown)."""
        self.local: dict[str, Session] = {}
        self.by_sid: dict[str, Session] = {}
        self.rooms: dict[str, LocalRoom[Session]] = {}
        self._told: OrderedDict[str, set[Session]] = OrderedDict()
        """Recipients of recent quits and renames by ``eid`` (one per room of the user),
        so a member of several of its rooms is told once."""
        self.port: int | None = None
        self._subs: dict[str, asyncio.Task[None]] = {}
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._to_flush: list[Session] = []
        """Sessions with output queued in this loop iteration (see flush_soon)."""
        self._stopping = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self.tls_port: int | None = None
        """The port serving TLS: ``port`` itself, an extra one, or None (no TLS)."""
        self.http = HttpEndpoint(self)
        self.gate = Gate(config, self.stats)
        self.security = Security(self, redis)
        self._redis = redis
        self._start_failed: StartupError | None = None
        """Set when Redis never answered (or refused the node) after the start."""

    # ------------------------------------------------------------------ lifecycle

    async def run(self, started: Callable[[int], None] | None = None) -> None:
        """Open the listeners, start the relay, serve until :meth:`stop`, then shut down.

        Raises:
            StartupError: the node cannot start as configured (see :mod:`node.startup`):
                raised before serving, or after the drain when Redis never answered.
        """
        structlog.contextvars.bind_contextvars(node=self.config.node_id)
        since = asyncio.get_running_loop().time()
        try:
            unreachable = await self._start()
        except BaseException:
            await self._abandon_start()
            raise
        relay_task = asyncio.create_task(self.relay.run(), name="relay")
        relay_task.add_done_callback(lambda _: self._stopping.set())  # it only ends on error
        watch = None if unreachable is None else asyncio.create_task(
            self._await_redis(unreachable, since), name="await-redis")
        try:
            if started is not None:
                assert self.port is not None
                started(self.port)
            await self._stopping.wait()
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            await self._shutdown(relay_task)
        if self._start_failed is not None:
            raise self._start_failed

    async def _start(self) -> Exception | None:
        """Open every listener, then ask Redis once.  Returns None when Redis answered,
        the error when it could not be reached yet."""
        cfg = self.config
        tls = server_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        self._server = await self._listen(cfg.port, None if cfg.tls_port else tls, "port")
        self.port = self._server.sockets[0].getsockname()[1]
        if tls is not None and cfg.tls_port:
            self._tls_server = await self._listen(cfg.tls_port, tls, "tls_port")
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        elif tls is not None:
            self.tls_port = self.port
        self.gate.start(*(s for s in (self._server, self._tls_server) if s is not None))
        if cfg.http_port:
            try:
                await self.http.start(cfg.http_host, cfg.http_port)
            except OSError as exc:
                raise startup.listen_error(exc, cfg.http_host, cfg.http_port, "http_port",
                                           "http_host") from None
        unreachable = await startup.check_redis(self._redis, cfg.redis_url, cfg.redis_timeout)
        log.info("node listening", host=cfg.host, port=self.port, tls_port=self.tls_port,
                 plaintext=tls is None or bool(cfg.tls_port))
        return unreachable

    async def _abandon_start(self) -> None:
        """Close what a failed start opened (a client that connected meanwhile had no
        name yet: its connection is just closed)."""
        self._stopping.set()
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        self.gate.stop()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.wait(self._conn_tasks, timeout=1.0)
        await self.http.stop()
        self.security.close()

    async def _await_redis(self, first: Exception, since: float) -> None:
        """Redis could not be reached at start: serve meanwhile (clients are told the relay
        is unavailable), and stop the node if it stays away past ``redis_start_timeout``
        or turns out to refuse it."""
        cfg = self.config
        log.warning("waiting for redis", redis=startup.redis_address(cfg.redis_url),
                    error=describe(first), gives_up_after=cfg.redis_start_timeout or None)
        try:
            await startup.wait_for_redis(self._redis, cfg.redis_url,
                                         redis_timeout=cfg.redis_timeout,
                                         give_up_after=cfg.redis_start_timeout, since=since)
        except StartupError as exc:
            self._start_failed = exc
            self.stop()

    async def _listen(self, port: int, tls: ssl.SSLContext | None,
                      setting: str) -> asyncio.Server:
        """A listener on ``port``: plaintext, or TLS with a bounded handshake (a client that
        stalls in it, or speaks plaintext, is dropped and never becomes a session)."""
        cfg = self.config
        proxied = bool(cfg.proxy_from) and tls is None  # PROXY headers: plaintext only
        try:
            return await asyncio.get_running_loop().create_server(
                lambda: Session(self, proxied=proxied), cfg.host, port, backlog=cfg.backlog,
                reuse_address=True, ssl=tls,
                ssl_handshake_timeout=cfg.tls_handshake_timeout if tls else None)
        except OSError as exc:
            raise startup.listen_error(exc, cfg.host, port, setting, "host") from None

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _shutdown(self, relay_task: asyncio.Task[None]) -> None:
        log.info("node shutting down", sessions=len(self.sessions))
        # 1. stop accepting
        if self._server is not None:
            self._server.close()
            self.gate.stop()
        if self._tls_server is not None:
            self._tls_server.close()
        for waiting in list(self.awaiting_header):  # a load balancer's, never admitted
            waiting.abandon()
        # 2. tell every client, stop reading; each session's cleanup releases its name
        for session in list(self.sessions):
            session.shutdown("node shutting down")
        # 3. wait a bounded grace period for sessions to finish, then cancel the rest
        if self._conn_tasks:
            _, pending = await asyncio.wait(self._conn_tasks, timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        # 4. drop our heartbeat (if Redis ever answered), then stop listening to the bus
        try:
            if self._start_failed is None:
                async with asyncio.timeout(self.config.redis_timeout):
                    await self.relay.close()
        except (RelayUnavailable, TimeoutError):
            log.warning("could not remove heartbeat; it will expire")
        relay_task.cancel()
        failure = (await asyncio.gather(relay_task, return_exceptions=True))[0]
        # 5. the HTTP endpoint last: /readyz said "shutting down" all along the drain
        await self.http.stop()
        self.security.close()
        log.info("node stopped")
        if isinstance(failure, BaseExceptionGroup):
            fatal = failure.subgroup(RedisMisconfigured)
            if fatal is not None:
                raise fatal.exceptions[0]

    def flush_soon(self, session: Session) -> None:
        """Write ``session``'s queued output at the end of this loop iteration.  One
        callback flushes every session that got output in the iteration (a message to a
        room of 500 schedules one callback, not 500)."""
        if not self._to_flush:
            asyncio.get_running_loop().call_soon(self._flush_all)
        self._to_flush.append(session)

    def _flush_all(self) -> None:
        sessions, self._to_flush = self._to_flush, []
        for session in sessions:
            try:
                session.flush_scheduled()
            except Exception:  # one broken transport must not keep the others' output
                log.exception("flushing a session failed", conn=session.sid)

    def on_connection(self, session: Session) -> None:
        """A client connected (called by its protocol): admit it and start its task."""
        transport = session.transport
        assert transport is not None
        if self._stopping.is_set() or transport.is_closing():
            # (over TLS a client can finish the handshake and be gone before this runs:
            # its transport is closed already and knows no peer any more)
            transport.close()
            return
        if not self.gate.admit(transport, session.host):
            return
        session.task = asyncio.create_task(self._serve(session, transport))

    async def _serve(self, session: Session, transport: asyncio.Transport) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self.sessions.add(session)
        self.by_sid[session.sid] = session
        self.stats.connections += 1
        try:
            await session.run()
        except asyncio.CancelledError:
            # Shutdown cancelled this connection after its grace period; the session has
            # cleaned up, and this task ends normally.
            pass
        finally:
            self.sessions.discard(session)
            self.by_sid.pop(session.sid, None)
            self._conn_tasks.discard(task)
            self.gate.release(session.host)

    # ------------------------------------------------------------------ names

    def name_info(self, s: Session, nick: str | None = None) -> NameInfo:
        """What the cluster records of ``s``'s name (``{nicks}:info``)."""
        return NameInfo(nick or s.nick, s.token, self.config.node_id, tuple(s.rooms),
                        prev=s.resumed_from, oper=s.oper, account=s.account)

    async def register(self, s: Session, nick: str, folded: str) -> None:
        if folded in self.local:
            raise NickTaken(f"{nick} is in use")
        token = self.relay.new_token()
        s.token = token
        result = await self.relay.claim(folded, NameInfo(nick, token, self.config.node_id, ()))
        if not result.ok:
            raise NickTaken(f"{nick} is in use")
        if folded in self.local:  # a local session won the same name while we waited
            await self.relay.release(folded, token)
            raise NickTaken(f"{nick} is in use")
        s.nick, s.folded = nick, folded
        self.local[folded] = s
        if result.stale is not None:
            await self._bury(folded, result.stale)

    async def take_over(self, nick: str, folded: str,
                        claim: Callable[[], Awaitable[None]]) -> None:
        """A login with the password of a name another session holds (a connection that
        died without the node noticing yet, or the same user elsewhere): that session is
        ended — it quits, ``logged in elsewhere`` — and ``claim`` (a registration or a
        rename) retried until the name is free, for up to ``takeover_wait`` seconds."""
        holder = self.local.get(folded)
        if holder is not None:
            self.security.ghost(holder)
        else:
            info = await self.relay.lookup(folded)
            if info is not None and not await self.relay.sanction(
                    env.Sanction("ghost", folded, "", by=nick), info.node):
                raise NickTaken(f"{nick} is held by a session on a node that stopped "
                                f"answering; it is freed within "
                                f"{2 * self.config.lease_ttl:g} s")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.takeover_wait
        delays = backoff(initial=0.02, maximum=0.25)
        while True:
            try:
                await claim()
                return
            except NickTaken:
                delay = next(delays)
                if loop.time() + delay > give_up:
                    raise NickTaken(f"{nick} is in use: its other session did not end "
                                    f"within {self.config.takeover_wait:g} s") from None
                await pause(delay)

    async def resume(self, s: Session, nick: str, folded: str, token: str) -> bool:
        """Take over a name with its previous session's credential; False if refused.
        A token that is not the holder's is charged like a failed login (AuthThrottled
        past a cap); a resumed session gets back what its previous session had recorded
        (operator status, account login), nothing more."""
        holder = self.local.get(folded)
        if holder is not None:
            if holder.token != token:
                await self.security.resume_refused(s, folded)
            return False
        s.token = self.relay.new_token()
        s.resumed_from = token
        result = await self.relay.resume(folded, token, self.name_info(s, nick))
        if not result.ok:
            s.resumed_from = None
            if result.wrong_token:
                await self.security.resume_refused(s, folded)
            return False
        s.nick, s.folded = nick, folded
        self.local[folded] = s
        if result.stale is not None and result.stale.token == token:
            await self.security.restore(s, result.stale)
        return True

    async def _bury(self, folded: str, stale: NameInfo) -> None:
        """Announce the quit of a holder whose lease ran out before anyone reaped it."""
        await self.relay.leave_all(folded, stale.nick, stale.rooms, "connection lost")

    async def rename(self, s: Session, new: str) -> None:
        new_folded = fold_nick(new)
        holder = self.local.get(new_folded)
        if holder is not None and holder is not s:
            raise NickTaken(f"{new} is in use")
        result = await self.relay.rename(s.folded, new_folded, self.name_info(s, new))
        if not result.ok:
            raise NickTaken(f"{new} is in use")
        old, old_folded = s.nick, s.folded
        del self.local[old_folded]
        self.local[new_folded] = s
        s.nick, s.folded = new, new_folded
        structlog.contextvars.bind_contextvars(nick=new)
        s.send(NickChanged(old, new))  # the rooms tell everyone else
        if result.stale is not None:
            await self._bury(new_folded, result.stale)
        await self.relay.rename_in_rooms(old_folded, new_folded, old, new, s.rooms, s.sid)

    async def unregister(self, s: Session) -> None:
        """Leave every room, announce the quit and release the name (session cleanup)."""
        folded, token, rooms = s.folded, s.token, list(s.rooms)
        for room in rooms:
            await self._leave_local(s, room)
        s.rooms.clear()
        if self.local.get(folded) is s:
            del self.local[folded]
        s.folded = ""
        await self.relay.depart(folded, token, s.nick, rooms, s.announced_reason)

    def on_lease_lost(self, folded: str) -> None:
        s = self.local.get(folded)
        if s is not None:
            task = asyncio.create_task(self._reassert(s, folded))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _reassert(self, s: Session, folded: str) -> None:
        """Our lease ran out (Redis was away or lost its data): take the name back.  If
        the session resumed elsewhere, this one is stale and ends; if someone else claimed
        the name meanwhile, the first claimant keeps it and this user gets a free variant."""
        try:
            result = await self.relay.claim(folded, self.name_info(s))
            if result.ok:
                log.info("lease re-asserted", nick=s.nick)
                return
            holder = await self.relay.lookup(folded)
        except RelayUnavailable:
            return  # still away; the next renewal reports it again
        if self.local.get(folded) is not s:
            return  # the session moved on meanwhile
        if holder is not None and holder.token == s.token:
            return  # re-asserted by another path already
        if holder is not None and holder.prev == s.token:
            await self._stale(s, folded)
        else:
            await self._rename_away(s, folded)

    async def _stale(self, s: Session, folded: str) -> None:
        """The user resumed this session on another node: end this copy quietly."""
        log.warning("nickname resumed elsewhere; closing this session", nick=s.nick)
        self.relay.forget(folded)
        del self.local[folded]
        for room in list(s.rooms):  # local only: the new holder keeps its membership
            await self._leave_local(s, room)
        s.rooms.clear()
        s.folded = ""
        with contextlib.suppress(RelayUnavailable):
            await self.relay.release(folded, s.token)  # compare-and-delete: tidies only
        s.end("nickname lost",
              Error("nick-lost", "your nickname was taken over by your session on "
                                 "another node"),
              Bye("nickname lost"))

    async def _rename_away(self, s: Session, folded: str) -> None:
        """Someone else claimed this user's name while the cluster could not vouch for it:
        they keep it (first claimant wins); this user gets the first free ``NICK_2``..."""
        old = s.nick
        self.relay.forget(folded)
        base = old[: MAX_NICK - 3]
        for n in range(2, 100):
            new = f"{base}_{n}"
            new_folded = fold_nick(new)
            if new_folded in self.local:
                continue
            try:
                result = await self.relay.claim(new_folded, self.name_info(s, new))
            except RelayUnavailable:
                break
            if result.ok:
                break
        else:
            result = None
        if result is None or not result.ok:
            await self._stale(s, folded)  # no variant to be had: end the session
            return
        if self.local.get(folded) is s:
            del self.local[folded]
        self.local[new_folded] = s
        s.nick, s.folded = new, new_folded
        log.warning("nickname claimed by someone else; renamed", old=old, new=new)
        s.send(Notice(f"your nickname {old} was claimed by someone else while the cluster "
                      f"could not vouch for it; you are now {new}"))
        s.send(NickChanged(old, new))
        with contextlib.suppress(RelayUnavailable):
            for room in s.rooms:
                await self.relay.join(room, new_folded, self.name_info(s), announce=False)
            await self.relay.rename_in_rooms(folded, new_folded, old, new, s.rooms, s.sid,
                                             move_members=False)

    def on_redis_reset(self) -> None:
        task = asyncio.create_task(self._after_reset())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _after_reset(self) -> None:
        """Redis lost its data: re-assert every name, rebuild room membership, restart
        the gap bookkeeping, and tell room members their history may have a hole."""
        try:
            await self.relay.renew()  # heartbeat back; every lease reported lost
            for s in list(self.local.values()):
                for room in s.rooms:
                    await self.relay.join(room, s.folded, self.name_info(s), announce=False)
            for room, local in self.rooms.items():
                local.feed.last = None
                local.feed.start = await self.relay.latest_id(room)
        except RelayUnavailable:
            log.warning("could not rebuild after the data loss yet")
        notice = Notice("the cluster's store restarted: history before this point may be "
                        "incomplete")
        for local in self.rooms.values():
            self._fan_out(notice, local.everyone())

    # ------------------------------------------------------------------ rooms

    async def join(self, s: Session, room: str, *, announce: bool = True) -> str:
        """Join ``room``: subscribed (confirmed by Redis), then the membership recorded and
        (unless ``announce`` is false: a resume) the join announced.  The room's events are
        kept for ``s`` until :meth:`go_live`; returns the floor to hand to it."""
        local = self.rooms.get(room)
        if local is None:
            local = self.rooms[room] = LocalRoom()
        local.begin_join(s)
        s.rooms.append(room)
        try:
            await self._subscribed(room)
            return await self.relay.join(room, s.folded, self.name_info(s), announce=announce)
        except BaseException:
            s.rooms.remove(room)
            await self._leave_local(s, room)
            raise

    def go_live(self, s: Session, room: str, floor: str, *, announce: bool = True) -> None:
        """``s`` was answered (welcome, join acknowledgement, resume): from here on it gets
        the room's events — first its own join, then what came after ``floor``."""
        local = self.rooms.get(room)
        if local is None:
            return
        if announce:
            s.send(Joined(room, s.nick))
        for event in local.go_live(s, floor):
            self._deliver(event, (s,))

    async def part(self, s: Session, room: str) -> None:
        s.rooms.remove(room)
        await self._leave_local(s, room)
        await self.relay.part(room, s.folded, self.name_info(s))

    async def _subscribed(self, room: str) -> None:
        task = self._subs.get(room)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.create_task(self._subscribe(room))
            self._subs[room] = task
        try:
            await asyncio.shield(task)
        except BaseException:
            if self._subs.get(room) is task and task.done() and not self.rooms.get(room):
                del self._subs[room]
            raise

    async def _subscribe(self, room: str) -> None:
        """Subscribe, then note where the room's stream stood (the start of any repair)."""
        await self.relay.subscribe_room(room)
        start = await self.relay.latest_id(room)
        if (local := self.rooms.get(room)) is not None:
            local.feed.start = start

    async def _leave_local(self, s: Session, room: str) -> None:
        local = self.rooms.get(room)
        if local is None:
            return
        local.remove(s)
        if not local:
            del self.rooms[room]
            self._subs.pop(room, None)
            await self.relay.unsubscribe_room(room)

    # ------------------------------------------------------------------ private messages

    async def private(self, s: Session, to: str, text: str) -> env.DirectMsg:
        to_folded = fold_nick(to)
        info = await self.relay.lookup(to_folded)
        if info is None:
            raise NoSuchNick(f"{to} is not online")
        now = time.time()
        msg = env.DirectMsg(sender=s.nick, sid=s.sid, to=info.nick, to_folded=to_folded,
                            text=text, id=f"pm-{int(now * 1000)}-{s.sid}", ts=now)
        await self.relay.private(msg, info.node)
        return msg

    # ------------------------------------------------------------------ bus fan-out

    def on_envelope(self, e: env.Envelope) -> None:
        match e:
            case env.RoomMsg() | env.RoomJoin() | env.RoomPart() | env.RoomQuit() | \
                    env.RoomNick():
                if (local := self.rooms.get(e.room)) is not None:
                    for event in local.feed.live(e):
                        self._deliver(event, local.recipients(event))
            case env.Sanction():
                self.security.on_sanction(e)
            case env.DirectMsg():
                target = self.local.get(e.to_folded)
                if target is not None:
                    target.send(Private(e.sender, e.to, e.text, e.id, e.ts))
                    self.stats.delivered += 1
            case env.Canary():
                pass  # the relay's own
            case _:
                assert_never(e)

    def _deliver(self, e: env.RoomEvent, targets: Collection[Session]) -> None:
        """One event of a room's feed to ``targets`` (its members, or one joiner)."""
        match e:
            case env.RoomMsg():
                self._fan_out(Message(e.room, e.sender, e.text, e.id, e.ts, e.action),
                              targets, skip_sid=e.sid)
            case env.RoomJoin():
                self._fan_out(Joined(e.room, e.nick), targets)
            case env.RoomPart():
                self._fan_out(Parted(e.room, e.nick), targets)
            case env.RoomQuit():
                self._fan_out(Quitted(e.nick, e.reason), self._untold(e.eid, targets))
            case env.RoomNick():  # the renaming session was told by its node
                self._fan_out(NickChanged(e.old, e.new),
                              [s for s in self._untold(e.eid, targets) if s.sid != e.sid])
            case _:
                assert_never(e)

    def _untold(self, eid: str, targets: Collection[Session]) -> list[Session]:
        """Those of ``targets`` not yet told of the user event ``eid`` (a quit or rename
        comes once through each of the user's rooms)."""
        told = self._told.get(eid)
        if told is None:
            told = self._told[eid] = set()
            while len(self._told) > _TOLD_KEPT:
                self._told.popitem(last=False)
        fresh = [s for s in targets if s not in told]
        told.update(fresh)
        return fresh

    def on_resubscribed(self) -> None:
        """The bus subscription came back: repair every room from its stream."""
        for room in list(self.rooms):
            task = asyncio.create_task(self._repair(room))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _repair(self, room: str) -> None:
        local = self.rooms.get(room)
        if local is None or local.feed.held is not None:
            return
        feed = local.feed
        after = feed.begin_repair()
        fetched: list[env.RoomEvent] = []
        # the fault that cut the subscription often breaks the next command too: try
        # again (live events wait meanwhile) for as long as the outbox holds messages
        give_up = asyncio.get_running_loop().time() + self.config.outbox_seconds
        delays = backoff(initial=0.05, maximum=0.5)
        try:
            page = self.config.history_limit
            while after is not None:
                try:
                    got = await self.relay.events(room, after, page)
                except RelayUnavailable:
                    delay = next(delays)
                    if asyncio.get_running_loop().time() + delay > give_up:
                        raise
                    await pause(delay)
                    continue
                fetched.extend(got)
                if len(got) < page:
                    break
                after = got[-1].id
        except RelayUnavailable:
            log.warning("gap repair failed; some events may be missing", room=room)
        finally:  # whatever happened, stop holding the room's live events
            self._end_repair(room, local, fetched)

    def _end_repair(self, room: str, local: LocalRoom[Session],
                    fetched: list[env.RoomEvent]) -> None:
        if self.rooms.get(room) is local:
            events = local.feed.end_repair(fetched)
            from_stream = {e.id for e in fetched}
            repaired = sum(1 for e in events if e.id in from_stream)
            if repaired:
                self.stats.repaired += repaired
                log.info("gap repaired", room=room, events=repaired)
            for event in events:
                self._deliver(event, local.recipients(event))

    def _fan_out(self, event: Event, targets: Iterable[Session], skip_sid: str = "") -> None:
        """Render once per wire mode; queue the same bytes to every recipient."""
        rendered: dict[str, tuple[bytes, int]] = {}
        delivered = 0
        for s in list(targets):
            codec = s.conn.codec
            if s.sid == skip_sid and not codec.echo_own:
                continue
            out = rendered.get(codec.name)
            if out is None:
                data = codec.render(event)
                out = rendered[codec.name] = (data, data.count(b"\n"))
            s.send_bytes(*out)
            delivered += 1
        self.stats.delivered += delivered

