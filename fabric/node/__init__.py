"""A fabric node, composed of objects with one job each (see :mod:`fabric.node.node`).

The package's modules, one object each: ``node`` (the :class:`Node`: wiring, life cycle,
public API), ``sockets``, ``channels``, ``processes``, ``signals``, ``services``,
``reactor``, ``effects`` (the one effect executor) and ``metrics``. Code outside this
package uses the public API of :class:`Node` and the documented low-level interface of
its objects (``node.signals``, ``node.channels``, ``node.processes``, ``node.services``;
ARCHITECTURE.md, "Low-level interface"), never their underscore names; a test enforces it.
"""

from fabric.node.node import Node, NodeDown, NodeMonitor, NodeUp

__all__ = ["Node", "NodeDown", "NodeMonitor", "NodeUp"]
