"""The lab harness's skip logic, without a lab: these run everywhere, root or not, and
never create a namespace (every check below fails before the namespace probe)."""

from __future__ import annotations

import os
from pathlib import Path

import labkit
import pytest


def test_lab_skips_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-root run gets a skip with the reason."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = labkit.lab_unavailable("flnever")
    assert reason is not None and "root" in reason


def test_lab_skips_without_netlab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Root without the shared folder (e.g. a lone clone) gets a skip naming the path."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(labkit, "NETLAB", tmp_path / "netlab.sh")
    reason = labkit.lab_unavailable("flnever")
    assert reason is not None and str(tmp_path) in reason
