"""The hosts-file strategy: node names read from a file, re-read when it changes.

Theory of operation
-------------------
Erlang's ``.hosts.erlang`` lists hosts and asks each one's EPMD for its nodes; a fabric
name carries its port, so the file lists full node names instead, one a line, with
``#`` comments and blank lines ignored. The file is polled every ``interval`` seconds and
re-read only when its identity, size or modification time changed. A line that is not a
valid full name is skipped, logged and counted (``hosts.bad_lines``); a missing file
lists no node (``hosts.missing`` counts the polls that found none), so deleting the file
is how to empty the list.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog

from fabric.discovery.config import HostsFileConfig
from fabric.discovery.source import Report, count
from fabric.errors import ConfigError
from fabric.types import parse_node_name

__all__ = ["HostsFileSource", "read_hosts_file"]


def read_hosts_file(text: str) -> tuple[frozenset[str], list[str]]:
    """The valid full names in ``text`` and the lines that are not."""
    names: set[str] = set()
    bad: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            parsed = parse_node_name(line)
        except ConfigError:
            bad.append(line)
            continue
        if parsed.port is None:
            bad.append(line)
        else:
            names.add(str(parsed))
    return frozenset(names), bad


class HostsFileSource:
    """Polls ``config.path``; reports its names when the file changed."""

    def __init__(self, config: HostsFileConfig, counters: dict[str, int]) -> None:
        self.config = config
        self.counters = counters
        self.log: Any = structlog.get_logger("fabric.discovery").bind(hosts=config.path)

    def _read(self) -> frozenset[str] | None:
        """The file's names, or None if it cannot be read now (tried again next poll)."""
        try:
            with open(self.config.path, encoding="utf-8") as fh:
                names, bad = read_hosts_file(fh.read())
        except (OSError, UnicodeDecodeError) as exc:
            self.log.warning("hosts_file_unreadable", error=str(exc))
            return None
        if bad:
            count(self.counters, "hosts.bad_lines", len(bad))
            self.log.warning("hosts_file_bad_lines", lines=bad[:5])
        return names

    async def run(self, report: Report) -> None:
        seen: tuple[int, int, int, int] | None = None
        first = True
        while True:
            try:
                st = os.stat(self.config.path)
                stamp: tuple[int, int, int, int] | None = (st.st_dev, st.st_ino, st.st_size,
                                                           st.st_mtime_ns)
            except FileNotFoundError:
                stamp = None
                count(self.counters, "hosts.missing")
            if stamp != seen or first:
                names = self._read() if stamp is not None else frozenset()
                if names is not None:
                    seen, first = stamp, False
                    report(names)
            await asyncio.sleep(self.config.interval)
