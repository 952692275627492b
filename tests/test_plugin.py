"""fabric's pytest plugin: the documented example test runs with it, as a user's would."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fabric.testing import child_pythonpath

CHECKOUT = Path(__file__).resolve().parent.parent
EXAMPLE = CHECKOUT / "docs" / "examples" / "test_counter_partition.py"
PLUGIN = "fabric.testing.plugin"


def plugin_installed() -> bool:
    return any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))


def test_setup_cfg_registers_the_plugin() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(CHECKOUT / "setup.cfg")
    lines = cfg["options.entry_points"]["pytest11"].split("\n")
    assert f"fabric = {PLUGIN}" in [line.strip() for line in lines]
    if os.environ.get("FABRIC_TEST_INSTALLED") == "1":
        assert plugin_installed()  # pip installed it: users get the fixtures for free


@pytest.mark.procs
def test_the_documented_example_passes_with_the_plugin(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    # Installed, pytest loads the plugin by its entry point; from a checkout, by name.
    load = [] if plugin_installed() else ["-p", PLUGIN]
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load,
         EXAMPLE.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
