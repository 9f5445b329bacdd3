"""A consistency harness for the real :class:`cachelayer.Cache`: actors under a scheduler, an oracle, mutants.

See ``universe.py`` for one universe, ``explore.py`` for exhaustive and random runs, and
``python -m benchmarks.consistency`` for the benchmark.
"""
