"""Logging: fabric's events are quiet until the application says where logs go.

Theory of operation
-------------------
fabric logs *events* with structlog: snake_case facts with key-values, bound to the node's
name (``log.info("nodedown", node=..., peer=..., reason=...)``). A library must not decide
where an application's logs go, and must not print by default (structlog's default
configuration prints to stdout). So fabric's loggers (:func:`get_logger`) are structlog
loggers *wrapped around the standard library's* ``logging.getLogger("fabric...")``, with
their own processor chain, independent of structlog's global configuration:

* the ``fabric`` stdlib logger carries a :class:`logging.NullHandler`, so with no logging
  configured nothing is printed (not even warnings through ``logging.lastResort``);
* an application that configures the standard library (``logging.basicConfig``, dictConfig,
  its handlers on the root logger) receives fabric's records under the ``fabric`` name; the
  record's message is the event dict, rendered nicely by a structlog
  :class:`structlog.stdlib.ProcessorFormatter`, and as the dict's text otherwise;
* a disabled level costs one ``isEnabledFor`` check (``filter_by_level`` runs first).

:func:`configure_logging` is the one-call setup for programs (the ``fabric`` command, the
node REPL, the programs in ``nodes/``): readable lines, or one JSON object per line for
production, on stderr (stdout stays the program's), for fabric's records and the
application's own stdlib and structlog logs alike.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

import structlog

__all__ = ["TextSink", "configure_logging", "get_logger"]

ROOT_LOGGER = "fabric"

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())

# Runs when a fabric logger emits: drop disabled levels first (cheap), then hand the event
# dict to whatever stdlib handler the application configured.
_LIBRARY_CHAIN: list[structlog.typing.Processor] = [
    structlog.stdlib.filter_by_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


class TextSink(Protocol):
    """Where log lines can go: a text stream (``sys.stderr``, an open file, ...)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def get_logger(name: str = ROOT_LOGGER, **context: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger for fabric's events, quiet unless logging is configured.

    Args:
        name: the stdlib logger's name; ``fabric`` or ``fabric.<something>``.
        context: key-values bound to every event (e.g. ``node=...``).
    """
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger(name), processors=_LIBRARY_CHAIN,
        wrapper_class=structlog.stdlib.BoundLogger, context_class=dict)
    return logger.bind(**context) if context else logger


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (found again to be replaced)."""


def configure_logging(level: str = "info", *, json: bool = False,
                      stream: TextSink | None = None) -> None:
    """Send log events at ``level`` and above to ``stream`` (default stderr).

    Installs one handler on the root logger (replacing the one a previous call installed),
    so fabric's events and the application's own stdlib logs share one format; and
    configures structlog's global loggers to go through it too.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        json: one JSON object per line (for log shippers) instead of aligned text.
        stream: where to write; stderr keeps stdout free for the program's own output.

    Raises:
        ValueError: an unknown level.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level],  # the application's stdlib records
        processors=[
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    structlog.configure(
        processors=list(_LIBRARY_CHAIN),
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
