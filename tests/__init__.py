"""The bundle's test suite; ``tests.helpers`` is shared with the benchmarks."""
