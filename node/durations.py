"""Durations as operators type them: ``90s``, ``10m``, ``2h``, ``7d``, ``1h30m``, ``45``.

Pure functions (no I/O); :func:`parse_duration` is the only way a typed duration enters
the node, and :func:`format_duration` turns seconds back into the same notation, so
``parse_duration(format_duration(n)) == n`` for every whole number of seconds ``n >= 1``.
"""

from __future__ import annotations

import re

__all__ = ["MAX_DURATION", "DurationError", "format_duration", "parse_duration"]

MAX_DURATION = 366 * 86400
"""The longest duration accepted (a bit over a year), in seconds."""

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"([0-9]{1,9})([wdhms])", re.ASCII)
_WHOLE = re.compile(r"(?:[0-9]{1,9}[wdhms])+", re.ASCII)
_BARE = re.compile(r"[0-9]{1,9}", re.ASCII)


class DurationError(ValueError):
    """Not a duration we accept; the message says what is expected."""


def parse_duration(text: str) -> int:
    """Whole seconds of ``text``: a bare number of seconds, or number+unit parts
    (``w d h m s``, each at most once, largest first), case-insensitive.

    Raises:
        DurationError: malformed, zero, or longer than :data:`MAX_DURATION`.
    """
    word = text.strip().lower()
    if _BARE.fullmatch(word):
        seconds = int(word)
    elif _WHOLE.fullmatch(word):
        parts = _PART.findall(word)
        units = [unit for _, unit in parts]
        order = list(_UNITS)
        if len(set(units)) != len(units) or units != sorted(units, key=order.index):
            raise DurationError(f"bad duration {text[:20]!r}: each unit once, largest first")
        seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
    else:
        raise DurationError(f"bad duration {text[:20]!r}: use e.g. 30s, 10m, 2h, 7d, 1h30m")
    if seconds < 1:
        raise DurationError("a duration must be at least 1 second")
    if seconds > MAX_DURATION:
        raise DurationError(f"a duration may be at most {MAX_DURATION // 86400} days")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` (rounded up to a whole second, at least 1) as ``1d2h3m4s``."""
    rest = max(1, int(-(-seconds // 1)))
    out = []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue  # days read better than weeks in listings
        count, rest = divmod(rest, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
