"""Benchmarks for fabric, each measured against a raw pyzmq baseline in the same run."""
