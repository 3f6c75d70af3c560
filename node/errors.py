"""One exception tree for hubbub.

    HubbubError                      base; ``code`` is a stable machine code sent to clients
    ├── ProtocolError                a client sent something we cannot accept (line stays open)
    │   ├── LineTooLong              ``line-too-long``
    │   ├── BadEncoding              ``bad-encoding``
    │   ├── BadJson                  ``bad-json``
    │   ├── UnknownCommand           ``unknown-command``
    │   ├── BadArguments             ``bad-args``
    │   ├── BadNick                  ``bad-nick``
    │   ├── BadRoom                  ``bad-room``
    │   ├── EmptyText                ``empty-text``
    │   └── FatalProtocolError       the connection must close
    │       ├── BufferOverflow       ``buffer-overflow`` (no newline within the hard limit)
    │       └── BadProxyHeader       ``bad-proxy-header`` (a trusted proxy's header is bad)
    ├── CommandError                 a well-formed command that cannot be carried out
    │   ├── NickTaken                ``nick-taken``
    │   ├── NoSuchNick               ``no-such-nick``
    │   ├── NotInRoom                ``not-in-room``
    │   ├── NotRegistered            ``not-registered``
    │   ├── AuthRequired             ``auth-required`` (token mode: the access token first)
    │   ├── AuthFailed               ``auth-failed`` (wrong token, password or operator secret)
    │   ├── AuthThrottled            ``auth-throttled`` (too many failed attempts lately)
    │   ├── AuthBusy                 ``auth-busy`` (too many password hashes waiting)
    │   ├── LoginRequired            ``login-required`` (the name has an account)
    │   ├── AccountExists            ``account-exists``
    │   ├── NoSuchAccount            ``no-such-account``
    │   ├── NotEnabled               ``not-enabled`` (not in this cluster's auth mode)
    │   ├── NotOperator              ``not-operator``
    │   ├── Banned                   ``banned`` (a nickname or address ban)
    │   ├── Muted                    ``muted``
    │   ├── TooManyRooms             ``too-many-rooms`` (a session's cap of rooms)
    │   ├── RoomsFull                ``rooms-full`` (the cluster holds ``max_rooms`` rooms)
    │   └── RoomCreateThrottled      ``room-create-throttled`` (may not create a room now)
    ├── RelayUnavailable             ``relay-unavailable`` (Redis cannot be reached)
    │   └── RelayRefused             ``internal`` (Redis refused the command itself: logged)
    ├── StartupError                 the node cannot start as configured (``settings``)
    │   └── RedisMisconfigured       Redis is set up so that names could be granted twice
    └── SessionClosed                the session is over (``reason`` says why)
        ├── SendQueueExceeded        ``send-queue-exceeded`` (a slow reader)
        ├── RateLimited              ``rate-limited`` (a flood went on past its delays)
        ├── Kicked                   ``kicked`` (an operator removed the user)
        └── TooManyConnections       ``too-many-connections`` (refused at connect)

Errors raised by redis-py are translated into :class:`RelayUnavailable` at the relay
boundary (``raise RelayUnavailable(...) from exc``, :mod:`node.redis_errors`); nothing above
the relay sees them.  A command Redis answered with a refusal of the command itself (its
arguments, a key of the wrong type, a script's error) rather than of its own state is
:class:`RelayRefused`: still "the relay did not do it" to the code that handles relay
failures, but a distinct code for the client (``internal``: retrying will not help) and a
warning in the log.
"""

from __future__ import annotations

__all__ = [
    "AccountExists",
    "AuthBusy",
    "AuthFailed",
    "AuthRequired",
    "AuthThrottled",
    "BadArguments",
    "BadEncoding",
    "BadJson",
    "BadNick",
    "BadProxyHeader",
    "BadRoom",
    "Banned",
    "BufferOverflow",
    "CommandError",
    "EmptyText",
    "FatalProtocolError",
    "HubbubError",
    "Kicked",
    "LineTooLong",
    "LoginRequired",
    "Muted",
    "NickTaken",
    "NoSuchAccount",
    "NoSuchNick",
    "NotEnabled",
    "NotInRoom",
    "NotOperator",
    "NotRegistered",
    "ProtocolError",
    "RateLimited",
    "RedisMisconfigured",
    "RelayRefused",
    "RelayUnavailable",
    "RoomCreateThrottled",
    "RoomsFull",
    "SendQueueExceeded",
    "SessionClosed",
    "StartupError",
    "TooManyConnections",
    "TooManyRooms",
    "UnknownCommand",
]


class HubbubError(Exception):
    """Base of every error hubbub raises on purpose."""

    code: str = "internal"
    default_text: str = "internal error"

    def __init__(self, text: str | None = None, *, ref: str | int | None = None) -> None:
        self.text = text if text is not None else self.default_text
        self.ref = ref
        super().__init__(self.text)


class ProtocolError(HubbubError):
    code = "protocol-error"
    default_text = "malformed input"


class LineTooLong(ProtocolError):
    code = "line-too-long"
    default_text = "line too long; it was discarded"


class BadEncoding(ProtocolError):
    code = "bad-encoding"
    default_text = "line is not valid UTF-8; it was discarded"


class BadJson(ProtocolError):
    code = "bad-json"
    default_text = "line is not a JSON object"


class UnknownCommand(ProtocolError):
    code = "unknown-command"
    default_text = "unknown command; try /help"


class BadArguments(ProtocolError):
    code = "bad-args"
    default_text = "bad arguments"


class BadNick(ProtocolError):
    code = "bad-nick"
    default_text = (
        "nicknames are 1-32 letters, digits or _-[]{}|^` with no spaces"
    )


class BadRoom(ProtocolError):
    code = "bad-room"
    default_text = "room names are 1-32 of a-z 0-9 _ - starting with a letter or digit"


class EmptyText(ProtocolError):
    code = "empty-text"
    default_text = "nothing left to send once control characters were removed"


class FatalProtocolError(ProtocolError):
    """The peer broke the protocol so badly that the connection is closed."""


class BufferOverflow(FatalProtocolError):
    code = "buffer-overflow"
    default_text = "too much data without a newline; closing"


class BadProxyHeader(FatalProtocolError):
    """A connection from a trusted proxy did not start with a valid PROXY protocol header
    (nothing is sent back: the peer is a load balancer, not a chat client)."""

    code = "bad-proxy-header"
    default_text = "bad PROXY protocol header"


class CommandError(HubbubError):
    code = "command-error"


class NickTaken(CommandError):
    code = "nick-taken"
    default_text = "that nickname is in use"


class NoSuchNick(CommandError):
    code = "no-such-nick"
    default_text = "no such nickname online"


class NotInRoom(CommandError):
    code = "not-in-room"
    default_text = "you are not in that room"


class NotRegistered(CommandError):
    code = "not-registered"
    default_text = "choose a nickname first"


class AuthRequired(CommandError):
    code = "auth-required"
    default_text = "this cluster needs its access token first"


class AuthFailed(CommandError):
    code = "auth-failed"
    default_text = "authentication failed"


class AuthThrottled(CommandError):
    code = "auth-throttled"
    default_text = "too many failed attempts; try again later"


class AuthBusy(CommandError):
    code = "auth-busy"
    default_text = "too many logins at once; try again in a moment"


class LoginRequired(CommandError):
    code = "login-required"
    default_text = "that nickname is registered; log in to use it"


class AccountExists(CommandError):
    code = "account-exists"
    default_text = "that nickname is already registered"


class NoSuchAccount(CommandError):
    code = "no-such-account"
    default_text = "no account has that name"


class NotEnabled(CommandError):
    code = "not-enabled"
    default_text = "not available on this cluster"


class NotOperator(CommandError):
    code = "not-operator"
    default_text = "only operators may do that"


class Banned(CommandError):
    code = "banned"
    default_text = "you are banned"


class Muted(CommandError):
    code = "muted"
    default_text = "you are muted"


class TooManyRooms(CommandError):
    """The session is in as many rooms as one session may be (``--max-rooms-per-user``)."""

    code = "too-many-rooms"
    default_text = "you are in as many rooms as one session may be; /part one first"


class RoomsFull(CommandError):
    """A join that would create a room while the cluster already holds ``max_rooms``
    rooms (joining an existing room is never refused for this)."""

    code = "rooms-full"
    default_text = "the cluster holds as many rooms as it may; join an existing room"


class RoomCreateThrottled(CommandError):
    """A join that would create a room its sender may not create now."""

    code = "room-create-throttled"
    default_text = "you may not create new rooms right now; try again later"


class RelayUnavailable(HubbubError):
    code = "relay-unavailable"
    default_text = "the cluster relay (Redis) is unavailable; try again shortly"


class RelayRefused(RelayUnavailable):
    """Redis answered, and refused the command for what it was (not for being down, busy,
    loading, read-only or out of memory): a fault of this node or of the data in Redis,
    logged with the command.  Sending the same command again will not help."""

    code = "internal"
    default_text = ("the cluster relay (Redis) refused that command; the fault is logged on "
                    "the node, and trying again will not help")


class StartupError(HubbubError):
    """The node cannot start as configured: a port in use, a Redis that refuses it or
    cannot be reached in time.  ``settings`` names the :class:`~node.config.NodeConfig`
    fields that would fix it; the CLI turns them into its options (the node knows no flag
    spellings).  Never sent to a client."""

    code = "startup"
    default_text = "the node cannot start"
    default_settings: tuple[str, ...] = ()

    def __init__(self, text: str | None = None, *, settings: tuple[str, ...] = ()) -> None:
        super().__init__(text)
        self.settings = settings or self.default_settings


class RedisMisconfigured(StartupError):
    """Fatal at start: e.g. an eviction policy that could silently drop a name's lease."""

    code = "redis-misconfigured"
    default_text = "Redis is misconfigured for hubbub"
    default_settings = ("allow_eviction",)


class SessionClosed(HubbubError):
    code = "closed"
    default_text = "session closed"


class SendQueueExceeded(SessionClosed):
    code = "send-queue-exceeded"
    default_text = "send queue exceeded"


class RateLimited(SessionClosed):
    """A client kept sending faster than its rate after its lines were delayed."""

    code = "rate-limited"
    default_text = "too many messages too fast; goodbye"


class Kicked(SessionClosed):
    """An operator removed the user (a kick, or a ban of its name or address)."""

    code = "kicked"
    default_text = "you were removed by an operator"


class TooManyConnections(SessionClosed):
    """A connection refused by a connection cap before its session began."""

    code = "too-many-connections"
    default_text = "too many connections; try again later"
