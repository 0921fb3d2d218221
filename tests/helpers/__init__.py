"""Helpers shared by the tests and the benchmarks: the bundle's configs with tiny overlays, tiny networks,
synthetic data, exact sampling problems, and running the bundle's command line.

Tests import them as ``helpers.<module>`` (``tests/`` is on pytest's path); benchmarks, run from the bundle
root, as ``tests.helpers.<module>``. Nothing here downloads anything.
"""
