"""Structured logging for programs that use fabric.

fabric logs through structlog with events as snake_case facts and key-values, bound to the
node's name (``log.info("nodedown", node=..., peer=..., reason=...)``). A library should not
decide where an application's logs go, so fabric never configures structlog on import;
programs call :func:`configure_logging` once (the node programs in ``nodes/`` do), or
configure structlog themselves.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str = "info", *, json: bool = False,
                      stream: TextIO | None = None) -> None:
    """Send structlog events at ``level`` and above to ``stream`` (default stderr).

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        json: one JSON object per line (for log shippers) instead of aligned text.
        stream: where to write; stderr keeps stdout free for the program's own output.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
