"""One spelling for the warnings of renamed and moved names (docs/API.md, "Deprecations").

Every old name keeps working for one release and warns once per call site (Python's
default filter) with a ``DeprecationWarning`` that names its replacement.
"""

from __future__ import annotations

import warnings

__all__ = ["REMOVED_IN", "deprecated"]

REMOVED_IN = "0.3"


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``; ``stacklevel`` 3 points at
    the caller of the function that calls this."""
    warnings.warn(f"{old} is deprecated, use {new} ({old} goes in fabric {REMOVED_IN})",
                  DeprecationWarning, stacklevel=stacklevel)
