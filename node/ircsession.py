"""One IRC client: registration, IRC commands translated into the command table, replies.

Theory of operation
-------------------
An :class:`IrcSession` is a :class:`~node.session.Session` whose wire is IRC: the same
connection, flood guard, ordered publishing and one cleanup, with an
:class:`~node.irccodec.IrcReader` instead of the text/JSON parser.  Each IRC line is
handled in order:

* **Registration.** ``CAP LS``/``REQ`` hold registration until ``CAP END``; ``PASS``
  (``--auth token``) and SASL PLAIN (``--auth accounts``: the account is the nick) are
  remembered; once both ``NICK`` and ``USER`` came, the session registers through the
  table's ``Hello`` (with no room: IRC users start in none) and sends the welcome burst
  (001-005, LUSERS, MOTD or 422).  A taken nick is 433 and the client may try another.
* **Commands** that the cluster knows (PRIVMSG/NOTICE, JOIN, PART, NICK, QUIT, OPER,
  KILL, REGISTER) become model commands and go through :func:`Session._handle`, so the
  table's policy (registered, operator, muted, the flood guard) applies as to every other
  session.  IRC-only queries (NAMES, WHO, WHOIS, LIST, LUSERS, MOTD, ISUPPORT, MODE) read
  the relay and answer with numerics; those that reach Redis pass the flood guard too.
* **Replies.** Handlers send model events; :meth:`IrcSession.send` turns them into IRC
  lines knowing the client's nick and the IRC command being handled (``_verb``,
  ``_target``), so an error code becomes the numeric that command expects (see
  :data:`~node.ircrender.ERROR_REPLIES`).  A NOTICE is never answered with an error.
  Room events reach the client through the hub's fan-out, rendered once per capability
  set by :class:`~node.ircrender.IrcCodec`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import time
from dataclasses import dataclass, field

import structlog

from .commands import Services
from .connection import Connection
from .errors import (
    BadNick,
    BadRoom,
    FatalProtocolError,
    HubbubError,
    LineTooLong,
    ProtocolError,
    RelayUnavailable,
)
from .irccodec import MAX_BODY_BYTES, IrcMessage, IrcReader, serialize
from .ircrender import (
    CAPS,
    IrcCodec,
    codec_for,
    error_lines,
    mask,
    numeric,
)
from .model import (
    Ack,
    Bye,
    Command,
    Error,
    Event,
    Hello,
    Join,
    Kick,
    Me,
    Msg,
    Nick,
    Notice,
    Oper,
    Part,
    Quit,
    Register,
    Say,
    Welcome,
)
from .names import (
    MAX_NICK,
    MAX_REASON,
    MAX_ROOM,
    check_nick,
    check_room,
    clean_reason,
    fold_nick,
)
from .relay import NameInfo
from .session import Session
from .stats import NodeStats

__all__ = ["IrcContext", "IrcSession", "isupport"]

log = structlog.get_logger("hubbub.session")

VERSION = "hubbub-0.1"

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class IrcContext:
    """What every IRC session of a node shares (built once by the server)."""

    server: str
    """The one server name of the cluster."""
    node_id: str
    motd: tuple[str, ...] | None = None
    """The message of the day's lines (None: no MOTD, numeric 422)."""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                time.gmtime()))


def isupport(ctx: IrcContext) -> list[str]:
    """The 005 tokens."""
    return [f"NETWORK={ctx.server}", "CASEMAPPING=ascii", "CHANTYPES=#",
            f"CHANNELLEN={MAX_ROOM + 1}", f"NICKLEN={MAX_NICK}", "UTF8ONLY",
            "PREFIX=(ov)@+", "CHANMODES=,,,", "TARGMAX=PRIVMSG:4,NOTICE:4,JOIN:,PART:",
            f"TOPICLEN={MAX_REASON}", "MODES=1", "SAFELIST"]


_MODE_LISTS = {"b": ("368", "End of channel ban list"),
               "e": ("349", "End of channel exception list"),
               "I": ("347", "End of channel invite list")}
"""Channel mode lists a client may query -> the numeric ending the (always empty) list:
bans are cluster-wide, not per room."""


def _is_channel(name: str) -> bool:
    return name.startswith("#")


class IrcSession(Session):
    """An IRC client (a :class:`~node.user.Member`; see the module docstring)."""

    def __init__(self, connection: Connection, services: Services, stats: NodeStats,
                 irc: IrcContext) -> None:
        super().__init__(connection, services, stats)
        self.irc = irc
        self.server = irc.server
        self.reader = IrcReader(services.config.max_buffer)
        self.caps: set[str] = set()
        self._codec: IrcCodec = codec_for(irc.server, frozenset())
        self._verb = ""
        """The IRC command being handled (replies and errors are shaped for it)."""
        self._target = ""
        """The nick or channel it names (errors name it)."""
        self._failed: HubbubError | None = None
        # registration
        self.wanted = ""
        self.ident = ""
        self.realname = ""
        self.secret: str | None = None
        self.cap_wait = False
        self.sasl_step = False
        self.sasl_chunks: list[str] = []
        self.sasl_login: tuple[str, str] | None = None
        self.registering = False

    # ------------------------------------------------------------------ the member

    @property
    def mode(self) -> str:
        return "irc"

    @property
    def codec(self) -> IrcCodec:
        return self._codec

    @property
    def me(self) -> str:
        return self.user.nick or "*"

    def write(self, *lines: IrcMessage) -> None:
        if lines:
            self.connection.send_bytes(b"".join(serialize(line) for line in lines),
                                       len(lines))

    def reply(self, code: str, *params: str) -> None:
        self.write(numeric(self.server, code, self.me, *params))

    def send(self, event: Event) -> None:
        match event:
            case Error(code=code, text=text):
                if self._verb == "NOTICE" and code not in ("rate-limited", "kicked"):
                    return  # a NOTICE is never answered with an error
                self.write(*error_lines(self.server, self.me, code, text, self._verb,
                                        self._target))
            case Welcome():
                self._welcome()
            case Ack():
                pass
            case Bye(reason=reason):
                why = self.user.quit_reason if reason == "goodbye" else reason
                self.write(IrcMessage("ERROR", (f"Closing link: {why or 'Quit'}",)))
            case Notice(text=text):
                self.write(*(IrcMessage("NOTICE", (self.me, line), self.server)
                             for line in text.split("\n") if line))
            case _:
                self.write(*self._codec.lines(event))

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        cfg = self.services.config
        try:
            try:
                await self.services.security.check_connect(self)
            except HubbubError as exc:
                self.connection.close_reason = "banned"
                self._verb = "*"
                self.send(Error(exc.code, exc.text))
                self.write(IrcMessage("ERROR", (f"Closing link: {exc.text}",)))
                return
            try:
                async with asyncio.timeout(cfg.register_timeout):
                    while not self.user.registered:
                        if not await self._receive():
                            return
            except TimeoutError:
                self.connection.close_reason = "registration timed out"
                self.write(IrcMessage("ERROR", ("Closing link: registration timed out",)))
                return
            while await self._receive():
                pass
        finally:
            self.connection.queue.close()

    async def _receive(self) -> bool:
        data = await self.connection.read()
        items = self.reader.feed(data) if data else self.reader.feed_eof()
        for item in items:
            if isinstance(item, ProtocolError):
                await self._settle()
                self._verb, self._target = "*", ""
                if isinstance(item, FatalProtocolError):
                    self.connection.close_reason = "protocol error"
                    self.send(Error(item.code, item.text))
                    return False
                self._refuse(item)
                continue
            if item.command not in ("PRIVMSG", "NOTICE"):
                await self._settle()  # replies go out in the order the commands came
            if not await self._dispatch(item):
                return False
            if self.connection.stopped:
                return False
        await self._settle()
        return bool(data)

    def _refuse(self, error: HubbubError) -> None:
        self._failed = error
        if isinstance(error, LineTooLong):
            self.reply("417", "Input line was too long")
            return
        self.send(Error(error.code, error.text, error.ref))

    async def _run(self, cmd: Command) -> bool:
        """Carry out a model command through the table; False when the session is over.
        ``self._failed`` says whether it was refused."""
        self._failed = None
        return await self._handle(cmd)

    async def _dispatch(self, msg: IrcMessage) -> bool:
        self._verb, self._target = msg.command, ""
        handler = _BEFORE.get(msg.command)
        if handler is None and self.user.registered:
            handler = _AFTER.get(msg.command)
        if handler is None:
            if msg.command in _AFTER:
                self.reply("451", "You have not registered")
            elif self.user.registered or msg.command.isalpha():
                self.reply("421", msg.command, "Unknown command")
            return True
        return await handler(self, msg)

    # ------------------------------------------------------------------ registration

    async def _cap(self, msg: IrcMessage) -> bool:
        sub = msg.params[0].upper() if msg.params else ""
        available = self._available_caps()
        if sub == "LS":
            if not self.user.registered:
                self.cap_wait = True
            v302 = len(msg.params) > 1 and msg.params[1].isdigit() and int(msg.params[1]) >= 302
            words = [f"{c}=PLAIN" if c == "sasl" and v302 else c for c in available]
            self.write(IrcMessage("CAP", (self.me, "LS", " ".join(words)), self.server))
        elif sub == "LIST":
            self.write(IrcMessage("CAP", (self.me, "LIST", " ".join(sorted(self.caps))),
                                  self.server))
        elif sub == "REQ":
            if not self.user.registered:
                self.cap_wait = True
            wanted = msg.params[1] if len(msg.params) > 1 else ""
            names = wanted.split()
            if all(n.lstrip("-") in available for n in names) and names:
                for n in names:
                    if n.startswith("-"):
                        self.caps.discard(n[1:])
                    else:
                        self.caps.add(n)
                self._codec = codec_for(self.server, frozenset(self.caps))
                self.write(IrcMessage("CAP", (self.me, "ACK", wanted), self.server))
            else:
                self.write(IrcMessage("CAP", (self.me, "NAK", wanted), self.server))
        elif sub == "END":
            if not self.user.registered:
                self.cap_wait = False
                return await self._try_register()
        else:
            self.reply("410", sub or "*", "Invalid CAP command")
        return True

    def _available_caps(self) -> list[str]:
        auth = self.services.config.auth
        return [c for c in CAPS if (c != "sasl" and c != "draft/account-registration")
                or auth == "accounts"]

    async def _pass(self, msg: IrcMessage) -> bool:
        if self.user.registered:
            self.reply("462", "You may not reregister")
        elif not msg.params:
            self.reply("461", "PASS", "Not enough parameters")
        else:
            self.secret = msg.params[0]
        return True

    async def _nick(self, msg: IrcMessage) -> bool:
        if not msg.params or not msg.params[0]:
            self.reply("431", "No nickname given")
            return True
        raw = msg.params[0]
        self._target = raw
        if not self.user.registered:
            try:
                self.wanted = check_nick(raw)
            except BadNick as exc:
                self.send(Error(exc.code, exc.text))
                return True
            if self.services.identity.holder(fold_nick(self.wanted)) is not None:
                self.reply("433", self.wanted, "Nickname is already in use")
                self.wanted = ""
                return True
            return await self._try_register()
        if raw == self.user.nick:
            return True
        old = self.user.folded
        if not await self._run(Nick(raw)):
            return False
        if self._failed is None and old != self.user.folded and self.user.rooms:
            try:
                await self.services.relay.rename_op(list(self.user.rooms), old,
                                                    self.user.folded)
            except RelayUnavailable:
                log.warning("could not move room operator status to the new nick")
        return True

    async def _user(self, msg: IrcMessage) -> bool:
        if self.user.registered or self.ident:
            self.reply("462", "You may not reregister")
            return True
        if len(msg.params) < 4 or not msg.params[3] or not msg.params[0]:
            self.reply("461", "USER", "Not enough parameters")
            return True
        self.ident = "".join(ch for ch in msg.params[0] if ch.isalnum())[:16] or "user"
        self.realname = " ".join(msg.params[3].split())[:MAX_REASON] or self.ident
        self.user.ident, self.user.realname = self.ident, self.realname
        return await self._try_register()

    async def _try_register(self) -> bool:
        if self.user.registered or self.registering or self.cap_wait or self.sasl_step:
            return True
        if not self.wanted or not self.ident:
            return True
        self.registering = True
        # the account is the nick: a SASL login registers under the account's name,
        # whatever NICK asked for (001 tells the client)
        nick, password = self.sasl_login or (self.wanted, None)
        self._verb, self._target = "NICK", nick
        try:
            alive = await self._run(Hello(nick, secret=self.secret, password=password,
                                          lobby=False))
        finally:
            self.registering = False
        if not alive:
            return False
        failed = self._failed
        if failed is not None:
            if failed.code in ("auth-required", "auth-failed", "banned", "auth-throttled"):
                self.connection.close_reason = failed.code
                self.write(IrcMessage("ERROR", (f"Closing link: {failed.text}",)))
                return False
            self.wanted = ""
            return True
        self._verb = "LUSERS"
        await self._lusers()
        self._motd()
        return True

    def _welcome(self) -> None:
        user, ctx = self.user, self.irc
        nick = user.nick
        self.write(
            numeric(self.server, "001", nick, f"Welcome to the {ctx.server} IRC network "
                    f"{mask(nick, self.ident, ctx.node_id)}"),
            numeric(self.server, "002", nick, f"Your host is {ctx.server}, running version "
                    f"{VERSION} (node {ctx.node_id})"),
            numeric(self.server, "003", nick, f"This server was created {ctx.created}"),
            numeric(self.server, "004", nick, ctx.server, VERSION, "io", "ov"),
            numeric(self.server, "005", nick, *isupport(ctx), "are supported by this server"),
        )

    async def _lusers(self) -> None:
        try:
            users = await self.services.relay.online()
            rooms = len(await self.services.relay.rooms())
        except RelayUnavailable as exc:
            self._refuse(exc)
            return
        self.reply("251", f"There are {users} users and 0 invisible on 1 servers")
        self.reply("252", "0", "operator(s) online")
        self.reply("254", str(rooms), "channels formed")
        self.reply("255", f"I have {users} clients and 1 servers")
        # one server: local and global are the same; no maximum is kept
        self.reply("265", f"Current local users {users}")
        self.reply("266", f"Current global users {users}")

    def _motd(self) -> None:
        motd = self.irc.motd
        if motd is None:
            self.reply("422", "MOTD File is missing")
            return
        self.reply("375", f"- {self.server} Message of the day - ")
        for line in motd:
            self.reply("372", f"- {line}")
        self.reply("376", "End of /MOTD command.")

    async def _authenticate(self, msg: IrcMessage) -> bool:
        if self.user.registered:
            self.reply("462", "You may not reregister")
            return True
        if "sasl" not in self.caps:
            self.reply("904", "SASL authentication failed")
            return True
        arg = msg.params[0] if msg.params else ""
        if arg == "*":
            self.sasl_step = False
            self.sasl_chunks = []
            self.reply("906", "SASL authentication aborted")
            return True
        if not self.sasl_step:
            if arg.upper() != "PLAIN":
                self.reply("908", "PLAIN", "are available SASL mechanisms")
                self.reply("904", "SASL authentication failed")
                return True
            self.sasl_step = True
            self.sasl_chunks = []
            self.write(IrcMessage("AUTHENTICATE", ("+",)))
            return True
        # the payload comes in pieces of 400 bytes; a shorter one (or "+") ends it
        if arg != "+":
            self.sasl_chunks.append(arg)
        if len(arg) == 400 and sum(map(len, self.sasl_chunks)) < 4 * 400:
            return True
        payload, self.sasl_chunks = "".join(self.sasl_chunks), []
        self.sasl_step = False
        try:
            raw = base64.b64decode(payload, validate=True).decode()
            authz, authc, password = raw.split("\0")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            self.reply("904", "SASL authentication failed")
            return True
        if not authc or not password or (authz and authz != authc):
            self.reply("904", "SASL authentication failed")
            return True
        try:
            await self.services.security.check_login(self, authc, password)
        except HubbubError:
            self.reply("904", "SASL authentication failed")
            return True
        self.sasl_login = (authc, password)
        self.wanted = authc
        self.reply("900", mask(authc, self.ident or None, self.irc.node_id), authc,
                   f"You are now logged in as {authc}")
        self.reply("903", "SASL authentication successful")
        return True

    # ------------------------------------------------------------------ always

    async def _ping(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("409", "No origin specified")
        else:
            self.write(IrcMessage("PONG", (self.server, msg.params[0]), self.server))
        return True

    async def _pong(self, _: IrcMessage) -> bool:
        return True

    async def _quit(self, msg: IrcMessage) -> bool:
        return await self._run(Quit(msg.params[0] if msg.params else None))

    # ------------------------------------------------------------------ rooms

    async def _join(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("461", "JOIN", "Not enough parameters")
            return True
        if msg.params[0] == "0":
            for room in list(self.user.rooms):
                self._target = "#" + room
                if not await self._run(Part(room)):
                    return False
            return True
        for name in msg.params[0].split(","):
            if not name:
                continue
            self._target = name
            if not _is_channel(name):
                self.reply("403", name, "No such channel")
                continue
            try:
                room = check_room(name)
            except BadRoom:
                self.reply("476", name, "Bad Channel Mask")
                continue
            if room in self.user.rooms:
                continue
            if not await self._run(Join(room)):
                return False
            if self._failed is None:
                await self._show_topic(room, quiet=True)
                await self._names(room, joined=True)
        return True

    async def _part(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("461", "PART", "Not enough parameters")
            return True
        reason = msg.params[1] if len(msg.params) > 1 else None
        for name in msg.params[0].split(","):
            if not name:
                continue
            self._target = name
            try:
                room = check_room(name)
            except BadRoom:
                self.reply("403", name, "No such channel")
                continue
            if not _is_channel(name):
                self.reply("403", name, "No such channel")
                continue
            if room not in self.user.rooms:
                if await self._room_exists(room):
                    self.reply("442", name, "You're not on that channel")
                else:
                    self.reply("403", name, "No such channel")
                continue
            if not await self._run(Part(room, reason)):
                return False
            if self._failed is None:
                await self._drop_ops([room])
        return True

    async def _drop_ops(self, rooms: list[str]) -> None:
        for room in rooms:
            try:
                await self.services.relay.drop_op(room, self.user.folded)
            except RelayUnavailable:
                log.warning("could not drop a room operator", room=room)

    async def _cleanup(self) -> None:
        """Give up operator status in the user's rooms, then the session's one cleanup
        (which runs whatever happened here, a cancellation included)."""
        try:
            if self.user.registered and self.user.rooms:
                async with asyncio.timeout(self.services.config.redis_timeout):
                    await asyncio.shield(self._drop_ops(list(self.user.rooms)))
        except TimeoutError:
            log.warning("could not drop room operator status in time")
        finally:
            await super()._cleanup()

    async def _room_exists(self, room: str) -> bool:
        try:
            return bool(await self.services.relay.who(room))
        except RelayUnavailable:
            return True

    async def _show_topic(self, room: str, *, quiet: bool = False) -> None:
        """332/333 for the room's topic; 331 when there is none (``quiet``: nothing)."""
        try:
            topic = await self.services.relay.topic(room)
        except RelayUnavailable as exc:
            self._refuse(exc)
            return
        channel = "#" + room
        if topic is None:
            if not quiet:
                self.reply("331", channel, "No topic is set")
            return
        self.reply("332", channel, topic.text)
        self.reply("333", channel, mask(topic.nick), str(int(topic.ts)))

    async def _topic(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("461", "TOPIC", "Not enough parameters")
            return True
        name = msg.params[0]
        self._target = name
        try:
            room = check_room(name)
        except BadRoom:
            room = ""
        if not room or not _is_channel(name):
            self.reply("403", name, "No such channel")
            return True
        if not await self._throttle_query():
            return False
        member = room in self.user.rooms
        if not member and not await self._room_exists(room):
            self.reply("403", name, "No such channel")
            return True
        if len(msg.params) == 1:
            await self._show_topic(room)
            return True
        if not member:
            self.reply("442", name, "You're not on that channel")
            return True
        try:
            self.services.security.check_muted(self)
            text = clean_reason(msg.params[1]) or ""
            await self.services.relay.set_topic(room, self.user.nick, text)
        except HubbubError as exc:
            self._refuse(exc)
        return True

    async def _names(self, room: str, *, joined: bool = False) -> None:
        """353/366; ``joined``: this user just joined (alone: the room's operator)."""
        relay = self.services.relay
        try:
            nicks = await relay.who(room)
            if joined and nicks == [self.user.nick]:
                await relay.found_ops(room, self.user.folded)
            ops = await relay.ops(room)
            if nicks and "userhost-in-names" in self.caps:
                infos = await relay.lookup_many([fold_nick(n) for n in nicks])
                nicks = [("@" if fold_nick(i.nick) in ops else "") +
                         mask(i.nick, i.ident, i.node) for i in infos]
            else:
                nicks = [("@" if fold_nick(n) in ops else "") + n for n in nicks]
        except RelayUnavailable as exc:
            self._refuse(exc)
            return
        channel = "#" + room
        if nicks:
            line: list[str] = []
            size = 0
            for nick in sorted(nicks, key=lambda n: n.lstrip("@").casefold()):
                if size + len(nick) + 1 > 400 and line:
                    self.reply("353", "=", channel, " ".join(line))
                    line, size = [], 0
                line.append(nick)
                size += len(nick.encode()) + 1
            self.reply("353", "=", channel, " ".join(line))
        self.reply("366", channel, "End of /NAMES list")

    async def _names_cmd(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("366", "*", "End of /NAMES list")
            return True
        if not await self._throttle_query():
            return False
        for name in msg.params[0].split(","):
            try:
                room = check_room(name)
            except BadRoom:
                self.reply("366", name, "End of /NAMES list")
                continue
            if not _is_channel(name):
                self.reply("366", name, "End of /NAMES list")
                continue
            await self._names(room)
        return True

    async def _list(self, msg: IrcMessage) -> bool:
        if not await self._throttle_query():
            return False
        rooms: list[tuple[str, int]] = []
        try:
            more, after = True, None
            while more:  # a page at a time: at most --max-rooms rooms in all
                page, more = await self.services.relay.rooms(after)
                rooms += page
                after = page[-1][0] if page else None
                more = more and after is not None
        except RelayUnavailable as exc:
            self._refuse(exc)
            return True
        wanted: set[str] | None = None
        if msg.params and msg.params[0]:
            wanted = set()
            for name in msg.params[0].split(","):
                try:
                    wanted.add(check_room(name))
                except BadRoom:
                    continue
        self.reply("321", "Channel", "Users  Name")
        for room, count in rooms:
            if wanted is None or room in wanted:
                self.reply("322", "#" + room, str(count), "")
        self.reply("323", "End of /LIST")
        return True

    # ------------------------------------------------------------------ messages

    async def _privmsg(self, msg: IrcMessage) -> bool:
        notice = msg.command == "NOTICE"
        if not msg.params or not msg.params[0]:
            if not notice:
                self.reply("411", f"No recipient given ({msg.command})")
            return True
        if len(msg.params) < 2 or not msg.params[1]:
            if not notice:
                self.reply("412", "No text to send")
            return True
        text = msg.params[1]
        client = tuple((k, v or "") for k, v in msg.tags if k.startswith("+")) \
            if "message-tags" in self.caps else ()
        action = False
        if text.startswith("\x01"):
            body = text.strip("\x01")
            verb, _, rest = body.partition(" ")
            if verb.upper() != "ACTION" or not rest.strip():
                return True  # other CTCPs are not relayed
            text, action = rest, True
        for target in msg.params[0].split(",")[:4]:
            if not target:
                continue
            self._target = target
            relayed = IrcMessage(msg.command, (target, msg.params[1]), mask(self.user.nick))
            if len(serialize(relayed)) > MAX_BODY_BYTES:
                # relayed with its sender's mask it would not fit one line: refused whole
                if not notice:
                    self.reply("417", "Input line was too long")
                continue
            cmd: Command
            if _is_channel(target):
                try:
                    room = check_room(target)
                except BadRoom:
                    if not notice:
                        self.reply("403", target, "No such channel")
                    continue
                cmd = Me(text, room) if action else Say(text, room, notice=notice,
                                                        tags=client)
            else:
                cmd = Msg(target, text, notice=notice, tags=client)
            if not await self._run(cmd):
                return False
            if isinstance(cmd, Msg) and not notice and self._failed is None:
                await self._tell_away(target)
        return True

    async def _tell_away(self, nick: str) -> None:
        """301 when the receiver of a private message is away."""
        try:
            info = await self.services.relay.lookup(fold_nick(nick))
        except (RelayUnavailable, ValueError):
            return
        if info is not None and info.away:
            self.reply("301", info.nick, info.away)

    # ------------------------------------------------------------------ users

    async def _whois(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("431", "No nickname given")
            return True
        if not await self._throttle_query():
            return False
        target = msg.params[-1].split(",")[0]
        self._target = target
        info = None
        try:
            info = await self.services.relay.lookup(fold_nick(target)) if target else None
        except RelayUnavailable as exc:
            self._refuse(exc)
            return True
        if info is None:
            self.reply("401", target, "No such nick/channel")
        else:
            nick = info.nick
            user, host = mask(nick, info.ident, info.node).split("!", 1)[1].split("@", 1)
            self.reply("311", nick, user, host, "*", info.real or nick)
            if info.rooms:
                try:
                    ops = await self.services.relay.op_in(info.rooms, fold_nick(nick))
                except RelayUnavailable:
                    ops = [False] * len(info.rooms)
                self.reply("319", nick, " ".join(("@#" if op else "#") + r
                                                 for r, op in zip(info.rooms, ops, strict=True)))
            self.reply("312", nick, self.server, f"hubbub node {info.node}")
            if info.oper:
                self.reply("313", nick, "is an IRC operator")
            if info.away:
                self.reply("301", nick, info.away)
            if info.account:
                self.reply("330", nick, info.account, "is logged in as")
            target = nick
        self.reply("318", target, "End of /WHOIS list")
        return True

    async def _who(self, msg: IrcMessage) -> bool:
        target = msg.params[0] if msg.params else "*"
        self._target = target
        if not await self._throttle_query():
            return False
        relay = self.services.relay
        try:
            if _is_channel(target):
                try:
                    room = check_room(target)
                    nicks = await relay.who(room)
                except BadRoom:
                    room, nicks = "", []
                infos = await relay.lookup_many([fold_nick(n) for n in nicks])
                ops = await relay.ops(room) if infos else set()
                for info in sorted(infos, key=lambda i: i.nick.casefold()):
                    # the room's own name in each reply; the end repeats the mask as given
                    self._who_line("#" + room, info, fold_nick(info.nick) in ops)
            else:
                for info in await self._who_mask(target):
                    self._who_line("*", info)
        except RelayUnavailable as exc:
            self._refuse(exc)
            return True
        self.reply("315", target, "End of WHO list")
        return True

    async def _who_mask(self, pattern: str) -> list[NameInfo]:
        """Who a nick mask names: an exact nick anywhere; a pattern (``*``, ``?``) among
        this user and the members of its rooms (a cluster is not listed whole)."""
        relay = self.services.relay
        if not any(ch in pattern for ch in "*?"):
            try:
                found = await relay.lookup(fold_nick(check_nick(pattern)))
            except BadNick:
                return []
            return [found] if found is not None else []
        nicks = {self.user.nick}
        for room in self.user.rooms:
            nicks.update(await relay.who(room))
        wanted = pattern.translate(_ASCII_LOWER)
        chosen = [n for n in nicks if fnmatch.fnmatchcase(n.translate(_ASCII_LOWER), wanted)]
        infos = await relay.lookup_many([fold_nick(n) for n in chosen])
        return sorted(infos, key=lambda i: i.nick.casefold())

    def _who_line(self, channel: str, info: NameInfo, op: bool = False) -> None:
        user, host = mask(info.nick, info.ident, info.node).split("!", 1)[1].split("@", 1)
        flags = ("G" if info.away else "H") + ("*" if info.oper else "") + ("@" if op else "")
        self.reply("352", channel, user, host, self.server, info.nick, flags,
                   f"0 {info.real or info.nick}")

    async def _lusers_cmd(self, _: IrcMessage) -> bool:
        if not await self._throttle_query():
            return False
        await self._lusers()
        return True

    async def _motd_cmd(self, _: IrcMessage) -> bool:
        self._motd()
        return True

    async def _version(self, _: IrcMessage) -> bool:
        self.reply("351", VERSION, self.server, f"node {self.irc.node_id}")
        self.reply("005", *isupport(self.irc), "are supported by this server")
        return True

    async def _info(self, _: IrcMessage) -> bool:
        self.reply("371", f"{VERSION}: a chat cluster of any number of nodes over Redis, "
                          "one IRC server to its clients")
        self.reply("374", "End of INFO list")
        return True

    async def _time(self, _: IrcMessage) -> bool:
        now = time.strftime("%A %B %d %Y -- %H:%M:%S +00:00", time.gmtime())
        self.reply("391", self.server, now)
        return True

    async def _userhost(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("461", "USERHOST", "Not enough parameters")
            return True
        if not await self._throttle_query():
            return False
        names = []
        for given in msg.params[:5]:
            with contextlib.suppress(BadNick):
                names.append(fold_nick(check_nick(given)))
        try:
            infos = await self.services.relay.lookup_many(names)
        except RelayUnavailable as exc:
            self._refuse(exc)
            return True
        self.reply("302", " ".join(
            f"{i.nick}{'*' if i.oper else ''}={'-' if i.away else '+'}"
            + mask(i.nick, i.ident, i.node).split("!", 1)[1] for i in infos))
        return True

    async def _mode(self, msg: IrcMessage) -> bool:
        if not msg.params:
            self.reply("461", "MODE", "Not enough parameters")
            return True
        target = msg.params[0]
        if _is_channel(target):
            listed = _MODE_LISTS.get(msg.params[1].lstrip("+")) if len(msg.params) == 2 \
                else None
            if len(msg.params) == 1:
                self.reply("324", target, "+")
            elif listed is not None:  # a list query (irssi asks for bans on join): empty
                self.reply(listed[0], target, listed[1])
            else:
                self.reply("482", target, "You're not channel operator")
        elif fold_nick(target) == self.user.folded:
            if len(msg.params) == 1:
                self.reply("221", "+")
            else:
                self.write(IrcMessage("MODE", (self.user.nick, msg.params[1]), self.user.nick))
        else:
            self.reply("502", "Can't change mode for other users")
        return True

    async def _oper(self, msg: IrcMessage) -> bool:
        if len(msg.params) < 2:
            self.reply("461", "OPER", "Not enough parameters")
            return True
        name = self.services.config.irc_oper_name
        if name and msg.params[0] != name:
            self.reply("491", "No O-lines for your host")
            return True
        if not await self._run(Oper(msg.params[1])):
            return False
        if self._failed is None:
            self.reply("381", "You are now an IRC operator")
            self.write(IrcMessage("MODE", (self.user.nick, "+o"), self.user.nick))
        return True

    async def _kill(self, msg: IrcMessage) -> bool:
        if len(msg.params) < 1:
            self.reply("461", "KILL", "Not enough parameters")
            return True
        self._target = msg.params[0]
        return await self._run(Kick(msg.params[0], msg.params[1] if len(msg.params) > 1
                                    else None))

    async def _register(self, msg: IrcMessage) -> bool:
        # draft/account-registration: REGISTER <account> <email> <password>
        if len(msg.params) < 3:
            self.write(IrcMessage("FAIL", ("REGISTER", "INVALID_PARAMS", "REGISTER needs an "
                                           "account, an email (or *) and a password"),
                                  self.server))
            return True
        account = msg.params[0]
        if account not in ("*", self.user.nick):
            self.write(IrcMessage("FAIL", ("REGISTER", "ACCOUNT_NAME_MUST_BE_NICK", account,
                                           "the account is your nickname"), self.server))
            return True
        if not await self._run(Register(msg.params[2])):
            return False
        if self._failed is None:
            self.write(IrcMessage("REGISTER", ("SUCCESS", self.user.nick,
                                               "Account created"), self.server))
        return True

    async def _away(self, msg: IrcMessage) -> bool:
        if not await self._throttle_query():
            return False
        user = self.user
        away = clean_reason(msg.params[0]) if msg.params else None
        previous, user.away = user.away, away
        try:
            await self.services.relay.update_info(user.folded,
                                                  user.info(self.irc.node_id))
        except RelayUnavailable as exc:
            user.away = previous
            self._refuse(exc)
            return True
        if away:
            self.reply("306", "You have been marked as being away")
        else:
            self.reply("305", "You are no longer marked as being away")
        return True

    async def _throttle_query(self) -> bool:
        """IRC-only commands that read Redis pass the flood guard like the others, and
        the listing pace like the other listings."""
        if not await self._throttle(Quit()):
            return False
        await self._pace()
        return True



_BEFORE = {
    "CAP": IrcSession._cap,
    "PASS": IrcSession._pass,
    "NICK": IrcSession._nick,
    "USER": IrcSession._user,
    "AUTHENTICATE": IrcSession._authenticate,
    "PING": IrcSession._ping,
    "PONG": IrcSession._pong,
    "QUIT": IrcSession._quit,
}
"""Commands served before registration (and after)."""

_AFTER = {
    "JOIN": IrcSession._join,
    "PART": IrcSession._part,
    "PRIVMSG": IrcSession._privmsg,
    "NOTICE": IrcSession._privmsg,
    "NAMES": IrcSession._names_cmd,
    "LIST": IrcSession._list,
    "WHO": IrcSession._who,
    "WHOIS": IrcSession._whois,
    "LUSERS": IrcSession._lusers_cmd,
    "MOTD": IrcSession._motd_cmd,
    "VERSION": IrcSession._version,
    "MODE": IrcSession._mode,
    "TOPIC": IrcSession._topic,
    "AWAY": IrcSession._away,
    "OPER": IrcSession._oper,
    "KILL": IrcSession._kill,
    "REGISTER": IrcSession._register,
    "USERHOST": IrcSession._userhost,
    "INFO": IrcSession._info,
    "TIME": IrcSession._time,
}
"""Commands served once registered."""
