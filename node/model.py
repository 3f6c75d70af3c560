"""The wire-independent command/event model.

Clients send *commands*; the node sends *events*.  Every wire mode (text, JSON, and
later IRC) is a codec that turns lines into these commands and these events into
bytes, so sessions, rooms and the relay never know which mode a client speaks.

Every command may carry ``ref`` (a client-chosen string); replies to it echo it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
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
    "Error",
    "Event",
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
    "Unban",
    "Unmute",
    "Welcome",
    "Who",
    "WhoReply",
]


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    ref: str | int | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Hello(Command):
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


@dataclass(frozen=True, slots=True)
class Say(Command):
    """Say ``text`` in ``room`` (None: the session's current room)."""

    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Me(Command):
    """An action (``/me waves``) in ``room`` (None: current room)."""

    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Join(Command):
    room: str


@dataclass(frozen=True, slots=True)
class Part(Command):
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Msg(Command):
    """A private message to ``to``."""

    to: str
    text: str


@dataclass(frozen=True, slots=True)
class Nick(Command):
    nick: str


@dataclass(frozen=True, slots=True)
class Who(Command):
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Rooms(Command):
    pass


@dataclass(frozen=True, slots=True)
class History(Command):
    """The last ``limit`` messages of a room, or (with ``after``) the first ``limit``
    messages whose id is greater than ``after``."""

    room: str | None = None
    limit: int | None = None
    after: str | None = None


@dataclass(frozen=True, slots=True)
class Ping(Command):
    pass


@dataclass(frozen=True, slots=True)
class Help(Command):
    pass


@dataclass(frozen=True, slots=True)
class Quit(Command):
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BlankLine(Command):
    """A blank line where a text-mode client owes its nickname: the node asks again.
    (Blank lines at any other time mean nothing and produce no command.)"""


@dataclass(frozen=True, slots=True)
class Auth(Command):
    """Present the cluster's access token (``--auth token``), before the nickname."""

    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Login(Command):
    """Use the registered name ``nick`` (``--auth accounts``): registers with it before
    a nickname is chosen, renames to it afterwards."""

    nick: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Register(Command):
    """Protect the current nickname with ``password`` (create its account)."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Password(Command):
    """Change the password of the account the session is logged in to."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Oper(Command):
    """Become an operator with the cluster's operator secret."""

    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Kick(Command):
    """Operators: disconnect ``nick``, wherever it is connected."""

    nick: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ban(Command):
    """Operators: ban a nickname or an address (IPv4, or the /64 of an IPv6 address) for
    ``duration`` seconds (None: the node's default); online matches are disconnected."""

    target: str
    duration: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unban(Command):
    target: str


@dataclass(frozen=True, slots=True)
class Mute(Command):
    """Operators: refuse ``nick``'s messages for ``duration`` seconds (None: default)."""

    nick: str
    duration: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unmute(Command):
    nick: str


@dataclass(frozen=True, slots=True)
class Bans(Command):
    """Operators: list the bans and mutes in force, cluster-wide."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class Notice(Event):
    """Free text from the node: greetings, help, command replies."""

    text: str


@dataclass(frozen=True, slots=True)
class AskNick(Event):
    """The node asks for a nickname (last greeting line; repeated after a refusal)."""

    text: str = "GET_NAME: choose a nickname"


@dataclass(frozen=True, slots=True)
class Welcome(Event):
    nick: str
    node: str
    rooms: tuple[str, ...]
    token: str | None = None
    """Secret resume credential (JSON mode only)."""
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class Message(Event):
    """A room message; ``id`` is the room stream's id, ``ts`` seconds since the epoch."""

    room: str
    sender: str
    text: str
    id: str
    ts: float
    action: bool = False


@dataclass(frozen=True, slots=True)
class Private(Event):
    sender: str
    to: str
    text: str
    id: str
    ts: float


@dataclass(frozen=True, slots=True)
class Joined(Event):
    room: str
    nick: str


@dataclass(frozen=True, slots=True)
class Parted(Event):
    room: str
    nick: str


@dataclass(frozen=True, slots=True)
class Quitted(Event):
    nick: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NickChanged(Event):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class WhoReply(Event):
    room: str
    nicks: tuple[str, ...]
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class RoomsReply(Event):
    rooms: tuple[tuple[str, int], ...]
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class HistoryReply(Event):
    room: str
    messages: tuple[Message, ...]
    ref: str | int | None = None


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
class BansReply(Event):
    entries: tuple[BanEntry, ...]
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class Ack(Event):
    ref: str | int | None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Error(Event):
    code: str
    text: str
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class Pong(Event):
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class Bye(Event):
    reason: str
    reconnect: bool = False
    """True when the node is going away and the client should move to another node."""
