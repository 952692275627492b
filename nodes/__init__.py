"""Runnable node programs: ``python -m nodes.<name>``.

``nodes.node`` is the general-purpose node (an interactive REPL, or a headless member of a
cluster); the others are demos built on it.
"""
