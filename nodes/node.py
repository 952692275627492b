"""``python -m nodes.node --name n1@127.0.0.1:9100 --cookie secret``: an interactive node.

The program lives in :mod:`fabric.console` (so that ``pip install`` users get it as
``fabric node``); this module is the runnable entry point for a checkout.
"""

from __future__ import annotations

import sys

from fabric.console import main

if __name__ == "__main__":
    sys.exit(main())
