"""Capture fabric's log events in a test.

Theory of operation
-------------------
fabric's loggers (:func:`fabric.logs.get_logger`) are structlog loggers over the standard
library's ``fabric`` logger, with their own processor chain, so structlog's
``capture_logs`` (which swaps structlog's *global* processors) does not see them.
:func:`capture_logs` instead attaches a handler to the ``fabric`` stdlib logger and lowers
its level for the duration of the block; each record's message is fabric's event dict,
which it keeps (with its ``level``). On exit the logger's level and handlers are restored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from fabric.logs import ROOT_LOGGER

__all__ = ["capture_logs"]


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            event = dict(record.msg)
        else:  # a plain stdlib record under fabric's name
            event = {"event": record.getMessage()}
        event.setdefault("level", record.levelname.lower())
        self.events.append(event)


@contextlib.contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect the event dicts fabric logs at ``level`` and above inside the block::

        with capture_logs() as events:
            ...
        assert any(e["event"] == "nodedown" for e in events)
    """
    logger = logging.getLogger(ROOT_LOGGER)
    keep = _Keep()
    old_level = logger.level
    logger.addHandler(keep)
    logger.setLevel(level)
    try:
        yield keep.events
    finally:
        logger.removeHandler(keep)
        logger.setLevel(old_level)
