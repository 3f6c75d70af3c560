"""The stamp a benchmark message carries in its chat text.

A message's text is the stamp, optionally followed by a space and padding up to the
message size::

    ~B0000a1.0000002f.00000a3b2c4d5e6f.0040.1c2e3f4a xxxxxxxxxxx
      sender  sequence send time (µs)    size crc32

Every field is fixed-width lowercase hex.  ``size`` is the length of the whole text, so a
cut or glued line is caught; ``crc32`` covers the four fields, so a damaged field is caught.
:func:`parse` returns ``None`` for anything that is not exactly what :func:`encode` made —
that is how a receiver counts a corrupted line.  No asyncio here: bytes in, values out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["MAGIC", "MAX_SIZE", "MIN_SIZE", "Stamp", "encode", "fields", "parse", "valid_size"]

MAGIC = b"~B"
MIN_SIZE = 48
"""A bare stamp's length; a text is this long or at least ``MIN_SIZE + 2``."""
MAX_SIZE = 0xFFFF
_HEAD = slice(2, 39)
_PADS: dict[int, bytes] = {}


@dataclass(frozen=True, slots=True)
class Stamp:
    sender: int
    """The sending client's index in the run (0 … 2**24-1)."""
    seq: int
    """The sender's message number, from 0, over the whole run."""
    sent_us: int
    """``time.monotonic_ns() // 1000`` when it was written (one clock for the host)."""
    size: int
    """Length of the whole text in bytes."""


def valid_size(size: int) -> bool:
    """Sizes :func:`encode` accepts: padding never ends in a space (servers strip it)."""
    return size == MIN_SIZE or MIN_SIZE + 2 <= size <= MAX_SIZE


def _pad(size: int) -> bytes:
    pad = _PADS.get(size)
    if pad is None:
        pad = _PADS[size] = b" " + b"x" * (size - MIN_SIZE - 1) if size > MIN_SIZE else b""
    return pad


def encode(sender: int, seq: int, sent_us: int, size: int = MIN_SIZE) -> bytes:
    """The text of one message (no newline)."""
    if not valid_size(size):
        raise ValueError(f"size must be {MIN_SIZE} or {MIN_SIZE + 2}..{MAX_SIZE}")
    if not (0 <= sender < 1 << 24 and 0 <= seq < 1 << 32 and 0 <= sent_us < 1 << 64):
        raise ValueError("sender, seq or time out of range")
    head = b"%06x.%08x.%016x.%04x" % (sender, seq, sent_us, size)
    return b"%s%s.%08x%s" % (MAGIC, head, zlib.crc32(head), _pad(size))


def parse(text: bytes) -> Stamp | None:
    """The stamp in a message text, or ``None`` if the text is not intact."""
    got = fields(text)
    return None if got is None else Stamp(got[0], got[1], got[2], len(text))


def fields(text: bytes) -> tuple[int, int, int] | None:
    """``(sender, seq, sent_us)`` of an intact text, else ``None`` (the receivers' hot
    path: no object is built)."""
    if len(text) < MIN_SIZE or text[:2] != MAGIC or text[39:40] != b".":
        return None
    head = text[_HEAD]  # the separators inside it are covered by the crc
    if b"%08x" % zlib.crc32(head) != text[40:48]:
        return None
    try:
        size = int(head[33:37], 16)
        if size != len(text) or text[MIN_SIZE:] != _pad(size):
            return None
        return int(head[0:6], 16), int(head[7:15], 16), int(head[16:32], 16)
    except ValueError:  # only a crafted line gets a matching crc over non-hex fields
        return None
