"""Benchmarks of turnstore: runnable scripts, not part of the test suite.

``python -m benchmarks`` runs everything (``--quick`` for a smoke run); ``benchmarks.scale``
checks every repository query's plan at a million turns; ``benchmarks.bench`` compares
turnstore's latency and throughput with plain psycopg and pgbench running the same SQL.
Results are written as JSON under ``benchmarks/results/``. See ``docs/performance.md``.
"""
