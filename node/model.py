"""The wire-independent command/event model.

Clients send *commands*; the node sends *events*.  Every wire mode (text, JSON, and
later IRC) is a codec that turns lines into these commands and these events into
bytes, so sessions, rooms and the relay never know which mode a client speaks.

Every command may carry ``ref`` (a client-chosen string); replies to it echo it.

Both sets are closed: :data:`Command` and :data:`Event` are unions of their classes, so a
``match`` over either that ends in ``case _: assert_never(x)`` is checked for totality by
mypy.  A new command or event goes into its union here, and mypy then names every
dispatch that does not handle it yet (the codecs' parsers, encoder and renderers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias, get_args

__all__ = [
    "COMMAND_TYPES",
    "EVENT_TYPES",
    "Ack",
    "AskNick",
    "Auth",
    "Ban",
    "BanEntry",
    "Bans",
    "BansReply",
    "BlankLine",
    "Bye",
    "Command",
    "CommandBase",
    "Error",
    "Event",
    "Gap",
    "Hello",
    "Help",
    "History",
    "HistoryReply",
    "Join",
    "Joined",
    "Kick",
    "Login",
    "Me",
    "Message",
    "Msg",
    "Mute",
    "Nick",
    "NickChanged",
    "Notice",
    "Oper",
    "Part",
    "Parted",
    "Password",
    "Ping",
    "Pong",
    "Private",
    "Quit",
    "Quitted",
    "Register",
    "Rooms",
    "RoomsReply",
    "Say",
    "TopicChanged",
    "Unban",
    "Unmute",
    "Welcome",
    "Who",
    "WhoReply",
]


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class CommandBase:
    """What every command class shares: the client's ``ref``.  Annotate with
    :data:`Command` (the closed union), not with this class."""

    ref: str | int | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Hello(CommandBase):
    """Register with a nickname (first line in either mode).

    ``token`` is the resume credential a previous ``welcome`` carried: with it a client
    that lost its node takes its nickname over at once on another node, and ``rooms``
    are rejoined without join announcements.
    """

    nick: str
    token: str | None = None
    rooms: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    """The cluster's access token (``--auth token``)."""
    password: str | None = field(default=None, repr=False)
    """The account password of ``nick`` (``--auth accounts``): a login."""
    lobby: bool = True
    """Join the lobby when ``rooms`` is empty (IRC clients start in no room)."""


@dataclass(frozen=True, slots=True)
class Say(CommandBase):
    """Say ``text`` in ``room`` (None: the session's current room); ``notice``: an IRC
    NOTICE (never answered automatically), shown as a message by the other modes."""

    text: str
    room: str | None = None
    notice: bool = False
    tags: tuple[tuple[str, str], ...] = ()
    """IRCv3 client-only tags (``+name``) to relay with the message."""


@dataclass(frozen=True, slots=True)
class Me(CommandBase):
    """An action (``/me waves``) in ``room`` (None: current room)."""

    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Join(CommandBase):
    room: str


@dataclass(frozen=True, slots=True)
class Part(CommandBase):
    room: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Msg(CommandBase):
    """A private message to ``to`` (``notice``: as for :class:`Say`)."""

    to: str
    text: str
    notice: bool = False
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Nick(CommandBase):
    nick: str


@dataclass(frozen=True, slots=True)
class Who(CommandBase):
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Rooms(CommandBase):
    """A page of the room listing: rooms whose names sort after ``after`` (None: from
    the first), at most ``limit`` (None: the node's page size, which also caps it)."""

    after: str | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class History(CommandBase):
    """The last ``limit`` messages of a room, or (with ``after``) the first ``limit``
    messages whose id is greater than ``after``."""

    room: str | None = None
    limit: int | None = None
    after: str | None = None


@dataclass(frozen=True, slots=True)
class Ping(CommandBase):
    pass


@dataclass(frozen=True, slots=True)
class Help(CommandBase):
    pass


@dataclass(frozen=True, slots=True)
class Quit(CommandBase):
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BlankLine(CommandBase):
    """A blank line where a text-mode client owes its nickname: the node asks again.
    (Blank lines at any other time mean nothing and produce no command.)"""


@dataclass(frozen=True, slots=True)
class Auth(CommandBase):
    """Present the cluster's access token (``--auth token``), before the nickname."""

    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Login(CommandBase):
    """Use the registered name ``nick`` (``--auth accounts``): registers with it before
    a nickname is chosen, renames to it afterwards."""

    nick: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Register(CommandBase):
    """Protect the current nickname with ``password`` (create its account)."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Password(CommandBase):
    """Change the password of the account the session is logged in to."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Oper(CommandBase):
    """Become an operator with the cluster's operator secret."""

    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Kick(CommandBase):
    """Operators: disconnect ``nick``, wherever it is connected."""

    nick: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ban(CommandBase):
    """Operators: ban a nickname or an address (IPv4, or the /64 of an IPv6 address) for
    ``duration`` seconds (None: the node's default); online matches are disconnected."""

    target: str
    duration: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unban(CommandBase):
    target: str


@dataclass(frozen=True, slots=True)
class Mute(CommandBase):
    """Operators: refuse ``nick``'s messages for ``duration`` seconds (None: default)."""

    nick: str
    duration: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unmute(CommandBase):
    nick: str


@dataclass(frozen=True, slots=True)
class Bans(CommandBase):
    """Operators: list the bans and mutes in force, cluster-wide."""


Command: TypeAlias = (
    Hello | Say | Me | Join | Part | Msg | Nick | Who | Rooms | History | Ping | Help | Quit
    | BlankLine | Auth | Login | Register | Password | Oper | Kick | Ban | Unban | Mute
    | Unmute | Bans
)
"""Every command a client can send (what the codecs' parsers produce)."""

COMMAND_TYPES: tuple[type[Command], ...] = get_args(Command)
"""The classes of :data:`Command`, in declaration order."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Notice:
    """Free text from the node: greetings, help, command replies."""

    text: str


@dataclass(frozen=True, slots=True)
class AskNick:
    """The node asks for a nickname (last greeting line; repeated after a refusal)."""

    text: str = "GET_NAME: choose a nickname"


@dataclass(frozen=True, slots=True)
class Welcome:
    nick: str
    node: str
    rooms: tuple[str, ...]
    token: str | None = None
    """Secret resume credential (JSON mode only)."""
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A room message; ``id`` is the room stream's id, ``ts`` seconds since the epoch."""

    room: str
    sender: str
    text: str
    id: str
    ts: float
    action: bool = False
    notice: bool = False
    tags: tuple[tuple[str, str], ...] = ()
    """The sender's IRCv3 client-only tags (IRC clients with ``message-tags`` get them)."""


@dataclass(frozen=True, slots=True)
class Private:
    sender: str
    to: str
    text: str
    id: str
    ts: float
    notice: bool = False
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Joined:
    room: str
    nick: str


@dataclass(frozen=True, slots=True)
class Parted:
    room: str
    nick: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Quitted:
    nick: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NickChanged:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class TopicChanged:
    """``nick`` set the topic of ``room`` ("": cleared it)."""

    room: str
    nick: str
    text: str


@dataclass(frozen=True, slots=True)
class WhoReply:
    room: str
    nicks: tuple[str, ...]
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class RoomsReply:
    rooms: tuple[tuple[str, int], ...]
    ref: str | int | None = None
    more: bool = False
    """More rooms follow the last one of this page (ask again with it as ``after``)."""


@dataclass(frozen=True, slots=True)
class HistoryReply:
    room: str
    messages: tuple[Message, ...]
    ref: str | int | None = None
    complete: bool = True
    """False when some of what came after the ``after`` asked for is no longer held
    (trimmed by count or age, or lost with the store): ``messages`` are what is left."""
    oldest: str | None = None
    """With ``complete`` false: the oldest id the room still holds (None: it holds none)."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of ``room`` this member missed can no longer be had: the node found them
    gone from the room's history when it repaired its subscription (told once per room
    and repair).  ``oldest``: the oldest id the room still holds (None: it holds none)."""

    room: str
    oldest: str | None = None


@dataclass(frozen=True, slots=True)
class BanEntry:
    """One ban or mute in force: ``kind`` is ``nick-ban``, ``ip-ban`` or ``mute``."""

    kind: str
    target: str
    by: str
    reason: str | None
    expires_in: float
    """Seconds left."""


@dataclass(frozen=True, slots=True)
class BansReply:
    entries: tuple[BanEntry, ...]
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    ref: str | int | None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    text: str
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str
    reconnect: bool = False
    """True when the node is going away and the client should move to another node."""


Event: TypeAlias = (
    Notice | AskNick | Welcome | Message | Private | Joined | Parted | Quitted | NickChanged
    | TopicChanged | WhoReply | RoomsReply | HistoryReply | Gap | BansReply | Ack | Error | Pong
    | Bye
)
"""Every event the node sends (what the codecs' renderers encode)."""

EVENT_TYPES: tuple[type[Event], ...] = get_args(Event)
"""The classes of :data:`Event`, in declaration order."""
