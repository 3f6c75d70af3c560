"""Structured logging: JSON in containers, pretty in a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def _escape_controls(_: object, __: str, event_dict: structlog.typing.EventDict
                     ) -> structlog.typing.EventDict:
    """Escape control characters in string values so no value can forge a log line."""
    for key, value in event_dict.items():
        if isinstance(value, str) and any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in value):
            event_dict[key] = value.encode("unicode_escape").decode("ascii")
    return event_dict


def configure_logging(*, json: bool = False, level: str = "info") -> None:
    """Configure structlog once, at the edge (the CLI)."""
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _escape_controls,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
