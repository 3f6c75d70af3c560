"""The sans-I/O wire protocol: bytes in, commands out; events in, bytes out.

Theory of operation
-------------------
One :class:`ServerConnection` exists per TCP connection.  The session hands it whatever it
read (``receive_data``) and, at end of stream, calls ``receive_eof``; both return the
commands and protocol errors those bytes contained, in input order.  Nothing here raises on
bad input, sleeps or touches a socket, so all of it is tested without an event loop.

Layers, bottom up:

1. :class:`~node.framing.LineFramer` (``node/framing.py``) cuts the byte stream at ``\\n``
   (only there), drops one trailing ``\\r`` and decodes UTF-8.  It enforces the line limit
   itself: an over-long line is reported once and discarded up to its newline (no tail of
   it is ever delivered), and a stream that goes on for ``max_buffer`` bytes without any
   newline is fatal.  It remembers how far it has searched, so trickled input is not
   rescanned.
2. A :class:`~node.codec.Codec` turns one line into a :data:`~node.model.Command` (or
   raises a :class:`~node.errors.ProtocolError`) and one :data:`~node.model.Event` into
   bytes.  :data:`TEXT` (``node/textcodec.py``) serves people with ``nc``/``telnet``;
   :data:`JSON` (``node/jsoncodec.py``) serves programs.  ``render`` is pure: the node
   encodes an event once per mode and sends the same bytes to every recipient.
3. :class:`ServerConnection` (here) ties them together.  Its ``mode`` is ``"pending"``
   until the first non-blank line, which picks the codec for the rest of the connection: a
   line that starts with ``{`` (after whitespace) selects JSON, anything else text.  While
   pending, events are rendered as text (the greeting), and a blank line is a
   ``BlankLine`` (as in text mode before registration: the session asks for the name
   again).  Its caller either uses the lists that ``receive_data``/``receive_eof`` return
   or pulls the same items with ``next_command``.

State: ``mode`` (pending -> text | json, once), ``registered`` (set by the session after a
successful ``Hello``; in text mode it decides whether a line is a nickname or a command),
the framer's buffer and the queue behind ``next_command``.  Lines are parsed as soon as
they arrive, so lines that follow a ``Hello`` in the same batch are parsed as if it will
succeed.  After a fatal error the connection returns nothing more; the session is expected
to close it.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from node.codec import Codec
from node.errors import FatalProtocolError, ProtocolError
from node.framing import LineFramer
from node.jsoncodec import JSON, JsonCodec
from node.model import BlankLine, Command, Event, Hello, Login
from node.textcodec import TEXT, USAGE, TextCodec

__all__ = [
    "CODECS",
    "JSON",
    "TEXT",
    "USAGE",
    "Codec",
    "JsonCodec",
    "LineFramer",
    "Mode",
    "ServerConnection",
    "TextCodec",
]

Mode = Literal["pending", "text", "json"]

CODECS: dict[str, Codec] = {"text": TEXT, "json": JSON}
"""Every wire mode by name."""


class ServerConnection:
    """The protocol state of one client connection (see the module docstring).

    ``registered`` is set by the session after a successful ``Hello``.  Within one batch
    of input, lines that follow a ``Hello`` are parsed as if it will succeed (a client that
    sends its name and first message in one packet gets that message said); if it fails,
    the session refuses those commands as not registered.
    """

    def __init__(self, max_line: int = 4096, max_buffer: int = 16384) -> None:
        self._framer = LineFramer(max_line, max_buffer)
        self.mode: Mode = "pending"
        self.registered = False
        self._dead = False
        self._ready: deque[Command | ProtocolError] = deque()
        self._pulling = False  # next_command() has been used: keep every batch queued

    @property
    def codec(self) -> Codec:
        """The current codec (text while the mode is pending)."""
        return JSON if self.mode == "json" else TEXT

    def receive_data(self, data: bytes) -> list[Command | ProtocolError]:
        """Process received bytes; return commands and protocol errors in input order."""
        if self._dead:
            return self._batch([])
        return self._batch(self._process(self._framer.feed(data)))

    def receive_eof(self) -> list[Command | ProtocolError]:
        """The peer closed its side: process an unterminated last line, if any."""
        if self._dead:
            return self._batch([])
        out = self._process(self._framer.feed_eof())
        self._dead = True
        return self._batch(out)

    def next_command(self) -> Command | ProtocolError | None:
        """Pull-style access: the next command or error received, None when none is left.

        A caller may ignore the lists returned by ``receive_data``/``receive_eof`` and pull
        the same items one at a time instead (as h11's ``next_event``).  Until this method
        is first called, each batch replaces the previous one, so a caller that uses the
        lists never accumulates anything here.
        """
        self._pulling = True
        return self._ready.popleft() if self._ready else None

    def render(self, event: Event) -> bytes:
        """Encode ``event`` for this connection's current mode."""
        return self.codec.render(event)

    def _batch(self, items: list[Command | ProtocolError]) -> list[Command | ProtocolError]:
        if not self._pulling:
            self._ready.clear()
        self._ready.extend(items)
        return items

    def _process(self, items: list[str | ProtocolError]) -> list[Command | ProtocolError]:
        out: list[Command | ProtocolError] = []
        hello_seen = False
        for item in items:
            if isinstance(item, ProtocolError):
                out.append(item)
                if isinstance(item, FatalProtocolError):
                    self._dead = True
                    break
                continue
            if self.mode == "pending":
                start = item.lstrip()
                if not start:  # no mode yet: a person at a terminal pressed Enter
                    out.append(BlankLine())
                    continue
                self.mode = "json" if start.startswith("{") else "text"
            try:
                command = self.codec.parse(item, self.registered or hello_seen)
            except ProtocolError as exc:
                out.append(exc)
                continue
            if command is not None:
                out.append(command)
                hello_seen = hello_seen or isinstance(command, Hello | Login)
        return out
