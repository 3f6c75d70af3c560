"""Structured logging: JSON in containers, pretty in a terminal.

Log events are structured: an event name chosen in code plus key-values.  Values may hold
what users typed (nicknames, room names, reasons, error texts), so every string value,
at any depth, passes :func:`escape_controls` before a renderer sees it: a control
character (``\\n``, ``\\r``, ESC, C1), a format character (bidi overrides, zero-width
characters), a line/paragraph separator or a lone surrogate becomes a visible escape
(``\\x0a``, ``\\u202e``), so no value can start a forged log line, drive the terminal that
shows the log, or reorder what a reader sees.
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from typing import Any

import structlog

__all__ = ["configure_logging", "escape_controls", "escape_text", "processors"]

_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_TRACEBACK_KEYS = frozenset({"exception", "stack"})


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def escape_text(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control, format and separator character escaped.

    With ``keep_newlines`` (tracebacks in the console), ``\\n`` stays a line break but every
    following line is indented, so nothing in it can pass for a log line of its own.
    """
    if text.isprintable():  # fast path: nothing of those categories
        return text
    if keep_newlines:
        return "\n    ".join(escape_text(part) for part in text.split("\n"))
    return "".join(_escape_char(ch) if unicodedata.category(ch) in _UNSAFE else ch
                   for ch in text)


def _escape_value(value: Any) -> Any:
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_escape_value(v) for v in value]
    if isinstance(value, dict):
        return {_escape_value(k): _escape_value(v) for k, v in value.items()}
    return value


def escape_controls(*, keep_newlines_in_tracebacks: bool = False) -> structlog.typing.Processor:
    """A processor escaping control characters in every value (see the module docstring).

    It must run after ``format_exc_info`` (tracebacks are strings by then) and right
    before the renderer.
    """

    def processor(_: object, __: str, event_dict: structlog.typing.EventDict
                  ) -> structlog.typing.EventDict:
        for key, value in event_dict.items():
            if key in _TRACEBACK_KEYS and isinstance(value, str):
                event_dict[key] = escape_text(value, keep_newlines=keep_newlines_in_tracebacks)
            else:
                event_dict[key] = _escape_value(value)
        return event_dict

    return processor


def processors(*, json: bool, colors: bool = False) -> list[structlog.typing.Processor]:
    """The processor chain, renderer last (tests render with it too)."""
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        escape_controls(keep_newlines_in_tracebacks=not json),
        renderer,
    ]


def configure_logging(*, json: bool = False, level: str = "info") -> None:
    """Configure structlog once, at the edge (the CLI)."""
    structlog.configure(
        processors=processors(json=json, colors=sys.stderr.isatty()),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
