"""The whole suite's configuration: which ``fabric`` is under test, and where ``nodes``
and ``bench`` come from.

tox installs fabric (as a user's ``pip install`` would) and runs the suite from a folder
outside the checkout, with ``FABRIC_TEST_INSTALLED=1``: the tests then exercise what users
get, and a module missing from the wheel fails them. The checkout is *appended* to
``sys.path`` so that the tests can import the demo (``nodes``) and the benchmarks
(``bench``), which are not installed, without its ``fabric/`` shadowing the installed one.
Run from a checkout without that variable (``python -m pytest``), the source tree is tested.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent

if str(CHECKOUT) not in sys.path:
    sys.path.append(str(CHECKOUT))


def pytest_configure(config: pytest.Config) -> None:
    import fabric

    where = Path(fabric.__file__).resolve().parent
    if os.environ.get("FABRIC_TEST_INSTALLED") == "1" and where == CHECKOUT / "fabric":
        raise pytest.UsageError(
            f"FABRIC_TEST_INSTALLED=1 but fabric was imported from the checkout ({where}): "
            "run the tests from a folder outside it so the installed package is tested")


def pytest_report_header(config: pytest.Config) -> str:
    import fabric

    return f"fabric under test: {Path(fabric.__file__).resolve().parent}"
