"""Every client command in one table: its handler and the policy the session applies
before calling it.

A handler is ``async def handler(services, member, command)``: it reads and changes the
member's :class:`~node.user.User`, sends it events, and refuses by raising a
:class:`~node.errors.HubbubError` (the session sends the error, with the command's ref).
A *pipelined* handler (``say``, ``me``) returns the message to publish instead: the
session submits it without waiting and acknowledges it in order.  Handlers never see a
session or a socket, so each is tested with a fake member and fakeredis.

Policy, checked by the session in this order (see :func:`check`): registered first
(unless ``unregistered``; ``access``: the access token before registration), operator
only, refused while muted, then the flood guard (``throttled``: waits, or ends a client
that stays over its rate; ``cost``: how many of its tokens the command takes, for a
command doing the work of several), then the listing pace (``listing``: waits for the
session's listing bucket, never refuses).  ``ends``: the session is over once the
handler ran.

What one session may hold is bounded here too: at most ``max_rooms_per_user`` rooms at
once (operators exempt), a ``hello`` naming more joins the first ones and says which it
did not join (``too-many-rooms``), and it costs one flood token per room it joins.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from . import envelope as env
from .config import NodeConfig
from .durations import format_duration
from .errors import (
    BadArguments,
    CommandError,
    HubbubError,
    NickTaken,
    NoSuchNick,
    NotInRoom,
    NotOperator,
    NotRegistered,
    RelayUnavailable,
    RoomCreateThrottled,
    RoomsFull,
    TooManyRooms,
)
from .hub import Hub
from .identity import Identity
from .model import (
    Ack,
    AskNick,
    Auth,
    Ban,
    Bans,
    BlankLine,
    Bye,
    Error,
    Hello,
    Help,
    History,
    HistoryReply,
    Join,
    Kick,
    Login,
    Me,
    Message,
    Msg,
    Mute,
    Nick,
    Notice,
    Oper,
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
    Unban,
    Unmute,
    Welcome,
    Who,
    WhoReply,
)
from .moderation import Moderation
from .names import (
    check_message_id,
    check_nick,
    check_room,
    check_token,
    clean_reason,
    clean_text,
    fold_nick,
)
from .relay import Relay
from .security import Security
from .user import Member

__all__ = ["COMMANDS", "HELP", "LOBBY", "Services", "Spec", "check", "hello_cost", "join_room",
           "room_cap", "spec_of"]

log = structlog.get_logger("hubbub.session")

LOBBY = "lobby"

HELP = """commands:
/join ROOM          join a room (it becomes your current room)
/part [ROOM]        leave a room (default: the current one)
/msg NICK TEXT      private message, to anyone on any node
/me TEXT            action in the current room
/nick NEW           change your nickname
/who [ROOM]         who is in a room, cluster-wide
/rooms [AFTER]      rooms and member counts, cluster-wide, a page at a time
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


@dataclass(frozen=True, slots=True)
class Services:
    """What command handlers may use besides the member."""

    config: NodeConfig
    relay: Relay
    hub: Hub
    identity: Identity
    security: Security
    moderation: Moderation


Handler = Callable[[Services, Member, Any], Awaitable[env.RoomMsg | None]]
Cost = Callable[[Services, Any], int]


@dataclass(frozen=True, slots=True)
class Spec:
    """A command's handler and policy (see the module docstring)."""

    handler: Handler
    unregistered: bool = False
    access: bool = False
    operator: bool = False
    muted: bool = False
    throttled: bool = False
    cost: Cost | None = None
    """Flood tokens the command takes (None: one)."""
    listing: bool = False
    pipelined: bool = False
    ends: bool = False


def check(services: Services, m: Member, spec: Spec) -> None:
    """Refuse ``m`` a command it may not give now (the flood guard is the session's)."""
    user = m.user
    if not user.registered:
        if not spec.unregistered:
            raise NotRegistered()
        if spec.access:
            services.security.require_access(m)
    if spec.operator and not user.oper:
        raise NotOperator("only operators may do that (/oper SECRET)")
    if spec.muted:
        services.security.check_muted(m)


# --------------------------------------------------------------------------- session


async def blank_line(_: Services, m: Member, __: BlankLine) -> None:
    if not m.user.registered and m.mode != "json":  # Enter at the name prompt: ask again
        m.send(AskNick())


async def quit_(_: Services, m: Member, cmd: Quit) -> None:
    user = m.user
    user.said_quit = True
    user.quit_reason = clean_reason(cmd.reason)
    m.send(Bye("goodbye"))


async def ping(_: Services, m: Member, cmd: Ping) -> None:
    m.send(Pong(cmd.ref))


async def help_(_: Services, m: Member, cmd: Help) -> None:
    m.send(Notice(HELP))
    m.send(Ack(cmd.ref))


def room_cap(svc: Services, m: Member) -> int:
    """Rooms ``m`` may be in at once (0: no cap; operators have none)."""
    return 0 if m.user.oper else svc.config.max_rooms_per_user


def hello_cost(svc: Services, cmd: Hello) -> int:
    """A ``hello`` joins its rooms (the lobby when it names none): one flood token per
    room it may join, as many separate joins would take."""
    count = len(dict.fromkeys(cmd.rooms)) or 1
    cap = svc.config.max_rooms_per_user
    return min(count, cap) if cap else count


def _not_joined(rooms: tuple[str, ...], cap: int) -> TooManyRooms:
    shown = ", ".join(rooms[:10]) + (f" and {len(rooms) - 10} more" if len(rooms) > 10 else "")
    return TooManyRooms(f"a session may be in {cap} rooms at most: joined the first {cap}, "
                        f"not {shown}")


async def hello(svc: Services, m: Member, cmd: Hello) -> None:
    """Register (or resume, or log in to) a nickname; see docs/PROTOCOL.md."""
    user = m.user
    if user.registered:
        raise BadArguments(f"you are already registered as {user.nick}")
    nick = check_nick(cmd.nick)
    folded = fold_nick(nick)
    rooms = tuple(dict.fromkeys(check_room(r) for r in cmd.rooms)) or (
        (LOBBY,) if cmd.lobby else ())
    if cmd.token is not None:
        check_token(cmd.token)  # empty or malformed: bad-args
    security, identity, hub = svc.security, svc.identity, svc.hub
    admission = await security.admit(m, cmd, folded)
    resumed = False
    if cmd.token:
        outcome = await identity.resume(m, nick, folded, cmd.token)
        if outcome.wrong_token:
            await security.resume_refused(m, folded)
        if outcome.previous is not None:
            await security.restore(m, outcome.previous)
        resumed = outcome.ok
    if not resumed:
        await security.login_hello(m, cmd, folded, admission)
        try:
            await identity.register(m, nick, folded)
        except NickTaken:
            if admission.account is None:
                raise
            # the password was right: the name's other session gives way
            await identity.take_over(nick, folded,
                                     lambda: identity.register(m, nick, folded))
    structlog.contextvars.bind_contextvars(nick=nick)
    log.info("registered", mode=m.mode, resumed=resumed)
    await security.registered(m, admission, folded)  # login, operator, mute
    cap = room_cap(svc, m)
    over: tuple[str, ...] = ()
    if cap and len(rooms) > cap:  # the first ones are joined; the rest is said below
        rooms, over = rooms[:cap], rooms[cap:]
    # the welcome says the rooms are live: join them first (their events are kept
    # for this member meanwhile), answer, then hand over what it is owed
    joined: list[tuple[str, str]] = []
    refused: list[CommandError] = []
    failure: HubbubError | None = None
    for room in rooms:
        try:
            joined.append((room, await join_room(svc, m, room, announce=not resumed)))
        except (RoomsFull, RoomCreateThrottled) as exc:
            refused.append(exc)  # that room only: the others are joined all the same
        except RelayUnavailable as exc:
            failure = exc  # registered all the same: say so after the welcome
            break
    token = user.token if m.mode == "json" else None
    m.send(Welcome(nick, svc.config.node_id, tuple(r for r, _ in joined), token, resumed))
    if cmd.ref is not None:
        m.send(Ack(cmd.ref))
    for room, floor in joined:
        hub.go_live(m, room, floor, announce=not resumed)
    for refusal in refused:
        m.send(Error(refusal.code, refusal.text, cmd.ref))
    if failure is not None:
        raise failure
    if over:
        raise _not_joined(over, cap)


async def login(svc: Services, m: Member, cmd: Login) -> None:
    svc.security.require_accounts()
    if not m.user.registered:  # choosing a name: a hello with a password
        await hello(svc, m, Hello(nick=cmd.nick, password=cmd.password, ref=cmd.ref))
    else:
        await svc.security.login(m, cmd)


# --------------------------------------------------------------------------- rooms


def in_room(m: Member, raw: str | None) -> str:
    """The room ``raw`` names (default: the current one), which ``m`` must be in."""
    rooms = m.user.rooms
    room = check_room(raw) if raw is not None else (rooms[-1] if rooms else None)
    if room is None:
        raise NotInRoom("you are in no room; /join one first")
    if room not in rooms:
        raise NotInRoom(f"you are not in {room}; /join {room} first")
    return room


async def join_room(svc: Services, m: Member, room: str, *, announce: bool = True) -> str:
    """Join ``room`` (see :meth:`~node.hub.Hub.join`); returns the floor for ``go_live``.

    A join that may create the room is charged to the member's address first (new rooms
    per address per minute, cluster-wide) and refunded when the room existed; at the cap
    it may join only a room that exists.  Operators are not charged, nor is a join to a
    room this node has members in (it exists)."""
    user, hub = m.user, svc.hub
    quota = svc.security.creates
    if user.oper or not quota.cap or room in hub.rooms:
        return (await hub.join(m, room, announce=announce)).floor
    wait = await quota.charge(user.ip)
    try:
        joined = await hub.join(m, room, announce=announce, may_create=not wait)
    except RoomCreateThrottled:
        quota.refused += 1
        raise RoomCreateThrottled(
            f"{room} does not exist, and your address created {quota.cap} new rooms in the "
            f"last minute; join an existing room, or create one in "
            f"{format_duration(max(1.0, math.ceil(wait)))}") from None
    except BaseException:
        if not wait:
            with contextlib.suppress(RelayUnavailable):  # else it expires with the minute
                await quota.refund(user.ip)
        raise
    if not wait and not joined.created:
        with contextlib.suppress(RelayUnavailable):
            await quota.refund(user.ip)
    return joined.floor


async def say(_: Services, m: Member, cmd: Say | Me) -> env.RoomMsg:
    room = in_room(m, cmd.room)
    text = clean_text(cmd.text)
    user = m.user
    return env.RoomMsg(room, user.nick, user.sid, text, isinstance(cmd, Me),
                       notice=isinstance(cmd, Say) and cmd.notice,
                       tags=cmd.tags if isinstance(cmd, Say) else ())


async def join(svc: Services, m: Member, cmd: Join) -> None:
    room = check_room(cmd.room)
    rooms = m.user.rooms
    if room in rooms:
        rooms.remove(room)
        rooms.append(room)
        m.send(Notice(f"current room is now {room}"))
    else:  # its own join, then what was said since, then the ack
        cap = room_cap(svc, m)
        if cap and len(rooms) >= cap:
            raise TooManyRooms(f"you are in {len(rooms)} rooms, the most one session may be "
                               f"in ({cap}); /part one first")
        svc.hub.go_live(m, room, await join_room(svc, m, room))
    m.send(Ack(cmd.ref))


async def part(svc: Services, m: Member, cmd: Part) -> None:
    room = in_room(m, cmd.room)
    reason = clean_reason(cmd.reason)
    await svc.hub.part(m, room, reason)
    m.send(Parted(room, m.user.nick, reason))
    m.send(Ack(cmd.ref))


async def who(svc: Services, m: Member, cmd: Who) -> None:
    room = check_room(cmd.room) if cmd.room is not None else in_room(m, None)
    m.send(WhoReply(room, tuple(await svc.relay.who(room)), cmd.ref))


async def rooms_(svc: Services, m: Member, cmd: Rooms) -> None:
    after = check_room(cmd.after) if cmd.after is not None else None
    page = svc.config.rooms_page
    rooms, more = await svc.relay.rooms(after, min(cmd.limit or page, page))
    m.send(RoomsReply(tuple(rooms), cmd.ref, more))


async def history(svc: Services, m: Member, cmd: History) -> None:
    room = in_room(m, cmd.room)  # members only, as /history of the current room
    cfg = svc.config
    count = min(cmd.limit or cfg.history_default, cfg.history_limit)
    after = check_message_id(cmd.after) if cmd.after is not None else None
    msgs = await svc.relay.history(room, count, after)
    # asked after the read: a trim racing it can only make the reply say incomplete
    held = await svc.relay.continuity(room, after) if after is not None else None
    m.send(HistoryReply(room, tuple(
        Message(e.room, e.sender, e.text, e.id, e.ts, e.action, e.notice, e.tags)
        for e in msgs), cmd.ref,
        complete=held is None or held.complete,
        oldest=held.oldest if held is not None and not held.complete else None))


# --------------------------------------------------------------------------- users


async def msg(svc: Services, m: Member, cmd: Msg) -> None:
    to = check_nick(cmd.to)
    text = clean_text(cmd.text)
    to_folded = fold_nick(to)
    info = await svc.relay.lookup(to_folded)
    if info is None:
        raise NoSuchNick(f"{to} is not online")
    user = m.user
    now = time.time()
    pm = env.DirectMsg(sender=user.nick, sid=user.sid, to=info.nick, to_folded=to_folded,
                       text=text, id=f"pm-{int(now * 1000)}-{user.sid}", ts=now,
                       notice=cmd.notice, tags=cmd.tags)
    await svc.relay.private(pm, info.node)
    if m.codec.echo_own:
        m.send(Private(pm.sender, pm.to, pm.text, pm.id, pm.ts, pm.notice, pm.tags))
    m.send(Ack(cmd.ref, pm.id))


async def nick(svc: Services, m: Member, cmd: Nick) -> None:
    new = check_nick(cmd.nick)
    await svc.security.check_rename(m, new)
    await svc.identity.rename(m, new)
    m.send(Ack(cmd.ref))


# --------------------------------------------------------------------------- the table

COMMANDS: dict[type, Spec] = {
    Hello: Spec(hello, unregistered=True, throttled=True, cost=hello_cost),
    BlankLine: Spec(blank_line, unregistered=True),
    Quit: Spec(quit_, unregistered=True, ends=True),
    Ping: Spec(ping, unregistered=True),
    Help: Spec(help_, unregistered=True),
    Say: Spec(say, muted=True, throttled=True, pipelined=True),
    Me: Spec(say, muted=True, throttled=True, pipelined=True),
    Msg: Spec(msg, muted=True, throttled=True),
    Nick: Spec(nick, throttled=True),
    Join: Spec(join, throttled=True),
    Part: Spec(part, throttled=True),
    Who: Spec(who, unregistered=True, access=True, listing=True),
    Rooms: Spec(rooms_, unregistered=True, access=True, listing=True),
    History: Spec(history, listing=True),
    # accounts and access (each says itself when it needs a name: see node.security)
    Auth: Spec(lambda s, m, c: s.security.auth(m, c), unregistered=True),
    Login: Spec(login, unregistered=True),
    Register: Spec(lambda s, m, c: s.security.register(m, c), unregistered=True, throttled=True),
    Password: Spec(lambda s, m, c: s.security.password(m, c), unregistered=True, throttled=True),
    Oper: Spec(lambda s, m, c: s.security.oper(m, c)),
    # operators
    Kick: Spec(lambda s, m, c: s.moderation.kick(m, c), operator=True),
    Ban: Spec(lambda s, m, c: s.moderation.ban(m, c), operator=True),
    Unban: Spec(lambda s, m, c: s.moderation.unban(m, c), operator=True),
    Mute: Spec(lambda s, m, c: s.moderation.mute(m, c), operator=True),
    Unmute: Spec(lambda s, m, c: s.moderation.unmute(m, c), operator=True),
    Bans: Spec(lambda s, m, c: s.moderation.bans(m, c), operator=True),
}
"""Every command the node carries out, by its class."""


def spec_of(cmd: object) -> Spec:
    spec = COMMANDS.get(type(cmd))
    if spec is None:
        raise BadArguments(f"{type(cmd).__name__.lower()} is not supported here")
    return spec
