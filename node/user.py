"""Who is connected: the user record of one connection, the :class:`Member` interface the
command handlers see, and the node's :class:`Roster`.

Pure: no I/O.  A member is whatever carries a user record and can be sent events: in the
node a :class:`~node.session.Session`; in tests a small fake that records what it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .limits import ip_key
from .model import Event
from .protocol import Codec
from .relay import NameInfo

__all__ = ["Member", "Roster", "User"]


@dataclass(eq=False, slots=True)
class User:
    """What the node knows of one connected user (one per connection)."""

    sid: str
    """The connection's id, ``<node id>/<n>`` (unique on this node, used in logs)."""
    host: str = ""
    """The client's address: the peer's, or the one its load balancer's PROXY header
    gave (limits, bans and logs use it)."""
    peer: str = "?"
    ip: str = "?"
    """The unit bans and login throttles count: an IPv4 address or an IPv6 /64."""
    nick: str = ""
    folded: str = ""
    """The folded nickname while the user holds it ("" before registration and after)."""
    token: str = ""
    """The lease token of the name (also the resume credential given to JSON clients)."""
    resumed_from: str | None = None
    """The token of the session this one resumed (it tells a stale copy to end)."""
    rooms: list[str] = field(default_factory=list)
    """Joined rooms; the last one is the current room."""
    authed: bool = True
    """Token mode: the access token was given (always True in other modes)."""
    account: str | None = None
    """The folded name of the account this user logged in to."""
    oper: bool = False
    muted_until: float = 0.0
    """Loop time until which the user's messages are refused (an operator's mute)."""
    ident: str | None = None
    """An IRC user's user name and real name (``USER``): the cluster records them."""
    realname: str | None = None
    away: str | None = None
    """The away message while an IRC user is away."""
    said_quit: bool = False
    quit_reason: str | None = None
    """The reason given with /quit, if the client quit itself."""

    @property
    def registered(self) -> bool:
        return bool(self.folded)

    @property
    def room(self) -> str | None:
        """The current room: the one joined last."""
        return self.rooms[-1] if self.rooms else None

    def info(self, node_id: str, nick: str | None = None) -> NameInfo:
        """What the cluster records of this user's name (``{nicks}:info``), held on
        ``node_id``; ``nick``: under a new nickname."""
        return NameInfo(nick or self.nick, self.token, node_id, tuple(self.rooms),
                        prev=self.resumed_from, oper=self.oper, account=self.account,
                        ident=self.ident, real=self.realname, away=self.away)

    def set_peer(self, peer: object) -> None:
        """Take the address of a socket's peer (or of a PROXY header's source)."""
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.host = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
            self.ip = ip_key(self.host)
        else:
            self.host = self.peer = self.ip = str(peer)


class Member(Protocol):
    """What a command handler, the hub and the name services may do with a connected
    user: read and change its record, send it events, end it."""

    @property
    def user(self) -> User: ...

    @property
    def mode(self) -> str:
        """The wire mode: ``"pending"`` (nothing received yet), ``"text"`` or ``"json"``."""
        ...

    @property
    def codec(self) -> Codec:
        """The wire mode's codec (fan-out renders once per codec)."""
        ...

    def send(self, event: Event) -> None:
        """Queue ``event`` to the client (never waits)."""
        ...

    def send_bytes(self, data: bytes, lines: int | None) -> None:
        """Queue bytes rendered by :attr:`codec` (``lines``: how many they hold)."""
        ...

    def end(self, reason: str, *farewell: Event) -> None:
        """Send ``farewell``, stop reading, close once the output is flushed."""
        ...


class Roster:
    """Who is on this node.  Only the node's event loop touches it."""

    __slots__ = ("members", "named")

    def __init__(self) -> None:
        self.members: set[Member] = set()
        """Every admitted connection (registered or not)."""
        self.named: dict[str, Member] = {}
        """Registered members by folded nickname."""
