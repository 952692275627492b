"""What remote nodes may run here: functions marked with :func:`export` or allow-listed.

fabric never ships code: a remote spawn or rpc names a function as ``"module:function"``
and the target node imports it itself, only if that function was exported on purpose.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from fabric.errors import NotExportedError

__all__ = ["export", "resolve_export"]

F = TypeVar("F", bound=Callable[..., Any])


def export(fn: F) -> F:
    """Mark ``fn`` as callable by remote nodes (``spawn_on`` and ``rpc``)."""
    fn.__fabric_export__ = True  # type: ignore[attr-defined]
    return fn


def resolve_export(spec: str, allowed: frozenset[str]) -> Callable[..., Any]:
    """Import ``"module:function"`` if it is exported or in ``allowed``.

    Raises:
        NotExportedError: bad spec, unknown function, or not exported.
    """
    if type(spec) is not str or spec.count(":") != 1:
        raise NotExportedError(f"{spec!r} is not of the form 'module:function'")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        fn = module
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise NotExportedError(f"{spec} cannot be found here: {exc}") from None
    if not callable(fn):
        raise NotExportedError(f"{spec} is not callable")
    if spec not in allowed and not getattr(fn, "__fabric_export__", False):
        raise NotExportedError(f"{spec} is not exported (decorate it with @fabric.export)")
    return fn
