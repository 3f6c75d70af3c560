"""The IRC line codec: bytes in, :class:`IrcMessage` out; messages in, bytes out (sans-I/O).

Theory of operation
-------------------
An IRC line is ``[@tags ][:source ]COMMAND[ param...][ :trailing]\\r\\n``.  Reading, a
:class:`IrcReader` cuts the byte stream with the node's bounded
:class:`~node.framing.LineFramer` (at ``\\n`` only, one ``\\r`` dropped, UTF-8 decoded, an
over-long line discarded whole and reported once), then :func:`parse` splits the line.
Limits (as IRCv3 message-tags sets them): at most :data:`MAX_TAG_BYTES` bytes of tags
(``@`` and the space included) and at most :data:`MAX_BODY_BYTES` bytes of the rest
(``\\r\\n`` included); past either the line is refused with :class:`~node.errors.LineTooLong`
(numeric 417).  A line that is not UTF-8 is :class:`~node.errors.BadEncoding` (``FAIL …
INVALID_UTF8``): IRC sessions are UTF-8 only.

Writing, :func:`serialize` never emits CR, LF or NUL inside a parameter (each becomes a
space), never a space or a leading ``:`` in a middle parameter, and escapes tag values;
:func:`fit_text` cuts a long text into pieces that keep a line within the body limit.

Pure: no I/O, no event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadArguments, LineTooLong, ProtocolError
from .framing import LineFramer

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LINE_BYTES",
    "MAX_TAG_BYTES",
    "IrcMessage",
    "IrcReader",
    "escape_tag_value",
    "fit_text",
    "parse",
    "serialize",
    "unescape_tag_value",
]

MAX_BODY_BYTES = 512
"""Bytes of a line without its tags, ``\\r\\n`` included (RFC 1459)."""
MAX_TAG_BYTES = 4096
"""Bytes of a client's tags, the leading ``@`` and the trailing space included."""
MAX_LINE_BYTES = MAX_TAG_BYTES + MAX_BODY_BYTES
"""The longest line a client may send (without its ``\\r\\n``: a little slack)."""

_TAG_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_UNSAFE = str.maketrans({"\r": " ", "\n": " ", "\0": " "})


def escape_tag_value(value: str) -> str:
    """A tag value as written on the wire (``;`` → ``\\:``, space → ``\\s`` …)."""
    return "".join(_TAG_ESCAPES.get(ch, ch) for ch in value.replace("\0", ""))


def unescape_tag_value(raw: str) -> str:
    """The value a wire tag value stands for; an unknown escape is the bare character and
    a trailing lone backslash is dropped (IRCv3 message-tags)."""
    if "\\" not in raw:
        return raw
    out: list[str] = []
    chars = iter(raw)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars, None)
        if nxt is not None:
            out.append(_TAG_UNESCAPES.get(nxt, nxt))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class IrcMessage:
    """One IRC message.  ``command`` is upper case for words; ``tags`` keep their order
    (a value of None: a tag without ``=``)."""

    command: str
    params: tuple[str, ...] = ()
    source: str | None = None
    tags: tuple[tuple[str, str | None], ...] = ()

    def tag(self, name: str) -> str | None:
        """The value of tag ``name`` ("" for a tag without a value; None when absent)."""
        for key, value in self.tags:
            if key == name:
                return "" if value is None else value
        return None

    def has_tag(self, name: str) -> bool:
        return any(key == name for key, _ in self.tags)

    def serialize(self) -> bytes:
        return serialize(self)


def _parse_tags(raw: str) -> tuple[tuple[str, str | None], ...]:
    tags: dict[str, str | None] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not key:
            continue
        tags[key] = unescape_tag_value(value) if eq and value else None
    return tuple(tags.items())


def parse(line: str) -> IrcMessage:
    """Split one line (without ``\\r\\n``) into an :class:`IrcMessage`.

    Raises:
        LineTooLong: more than :data:`MAX_TAG_BYTES` of tags or :data:`MAX_BODY_BYTES` of
            the rest (numeric 417).
        BadArguments: no command at all.
    """
    rest = line
    tags: tuple[tuple[str, str | None], ...] = ()
    if rest.startswith("@"):
        raw_tags, _, rest = rest.partition(" ")
        if len(raw_tags.encode()) + 1 > MAX_TAG_BYTES:
            raise LineTooLong("input line too long: tags over 4096 bytes")
        tags = _parse_tags(raw_tags[1:])
    rest = rest.lstrip(" ")
    if len(rest.encode()) + 2 > MAX_BODY_BYTES:
        raise LineTooLong("input line too long: over 512 bytes")
    source: str | None = None
    if rest.startswith(":"):
        raw_source, _, rest = rest.partition(" ")
        source = raw_source[1:]
        rest = rest.lstrip(" ")
    trailing: str | None = None
    head, sep, tail = rest.partition(" :")
    if sep:
        trailing = tail
        rest = head
    elif rest.startswith(":"):
        trailing, rest = rest[1:], ""
    words = [w for w in rest.split(" ") if w]
    if not words:
        raise BadArguments("empty command")
    command = words[0]
    if command.isascii() and command.isalpha():
        command = command.upper()
    params = words[1:]
    if trailing is not None:
        params.append(trailing)
    return IrcMessage(command, tuple(params), source, tags)


def _safe(param: str) -> str:
    return param.translate(_UNSAFE)


def serialize(msg: IrcMessage) -> bytes:
    """Encode ``msg`` with ``\\r\\n``.  Parameters never carry CR, LF or NUL (each becomes a
    space); a middle parameter that is empty, holds a space or starts with ``:`` is cut at
    its first space (it cannot be written otherwise); the last one gets a ``:`` when it
    needs one."""
    parts: list[str] = []
    if msg.tags:
        parts.append("@" + ";".join(
            key if value is None or value == "" else f"{key}={escape_tag_value(value)}"
            for key, value in msg.tags))
    if msg.source:
        parts.append(":" + _safe(msg.source).replace(" ", ""))
    parts.append(_safe(msg.command).replace(" ", ""))
    params = [_safe(p) for p in msg.params]
    for index, param in enumerate(params):
        last = index == len(params) - 1
        if last:
            if not param or " " in param or param.startswith(":"):
                param = ":" + param
        else:
            param = param.lstrip(":").split(" ", 1)[0] or "*"
        parts.append(param)
    return (" ".join(parts) + "\r\n").encode()


def fit_text(text: str, budget: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``budget`` UTF-8 bytes each, at a space when one
    is near, never inside a character; at least one piece (perhaps "")."""
    budget = max(budget, 16)
    data = text.encode()
    if len(data) <= budget:
        return [text]
    pieces: list[str] = []
    while len(data) > budget:
        cut = budget
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not inside a character
            cut -= 1
        space = data.rfind(b" ", budget // 2, cut + 1)
        if space > 0:
            cut = space
        pieces.append(data[:cut].decode())
        data = data[cut:].lstrip(b" ") if space > 0 else data[cut:]
    if data:
        pieces.append(data.decode())
    return pieces


class IrcReader:
    """The read side of one IRC connection: bytes → messages and protocol errors, in
    order.  The output does not depend on how the input is chunked; after a fatal error
    (a stream that never ends its line) nothing more comes out."""

    def __init__(self, max_buffer: int = 16384) -> None:
        self._framer = LineFramer(MAX_LINE_BYTES, max(max_buffer, MAX_LINE_BYTES + 2))

    @property
    def closed(self) -> bool:
        return self._framer.closed

    def feed(self, data: bytes) -> list[IrcMessage | ProtocolError]:
        return self._parse(self._framer.feed(data))

    def feed_eof(self) -> list[IrcMessage | ProtocolError]:
        return self._parse(self._framer.feed_eof())

    @staticmethod
    def _parse(items: list[str | ProtocolError]) -> list[IrcMessage | ProtocolError]:
        out: list[IrcMessage | ProtocolError] = []
        for item in items:
            if isinstance(item, ProtocolError):
                if isinstance(item, LineTooLong):
                    item = LineTooLong("input line too long")
                out.append(item)
                continue
            if not item.strip(" "):
                continue  # empty lines are ignored, as every IRC server does
            try:
                out.append(parse(item))
            except ProtocolError as exc:
                out.append(exc)
        return out
