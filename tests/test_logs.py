"""fabric's logging: quiet by default, readable or JSON on a stream once configured."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fabric.logs import configure_logging, get_logger
from fabric.testing import capture_logs, child_pythonpath


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.procs
def test_unconfigured_fabric_logs_print_nothing() -> None:
    """In a fresh interpreter, a warning and an info from fabric reach neither stream."""
    code = ("from fabric.logs import get_logger\n"
            "log = get_logger(node='n@h:1')\n"
            "log.warning('bad_input', what='x')\n"
            "log.info('nodeup', peer='p')\n"
            "print('done')\n")
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert (done.stdout, done.stderr) == ("done\n", "")


def test_configured_console_output_goes_to_the_stream(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    get_logger("fabric.test", node="n@h:1").info("nodeup", peer="p@h:2")
    get_logger("fabric.test").debug("below_the_level")
    logging.getLogger("app").warning("the application's own %s", "line")
    text = out.getvalue()
    assert "nodeup" in text and "peer=p@h:2" in text and "node=n@h:1" in text
    assert "below_the_level" not in text
    assert "the application's own line" in text


def test_configured_json_output_is_one_object_per_line(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("warning", json=True, stream=out)
    configure_logging("warning", json=True, stream=out)  # a second call replaces, not adds
    get_logger(node="n@h:1").warning("bad_input", what="garbage", total=3)
    get_logger(node="n@h:1").info("nodeup", peer="p")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "bad_input" and record["total"] == 3
    assert record["level"] == "warning" and record["logger"] == "fabric"
    assert "timestamp" in record


def test_configure_logging_refuses_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")


def test_capture_logs_sees_fabric_events_and_restores_the_level() -> None:
    before = logging.getLogger("fabric").level
    with capture_logs() as events:
        get_logger(node="n").debug("detail", x=1)
    assert events == [{"node": "n", "event": "detail", "x": 1, "logger": "fabric",
                       "level": "debug"}]
    assert logging.getLogger("fabric").level == before
