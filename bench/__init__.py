"""Benchmarks: ``pytest bench/ --benchmark`` (kernels vs references and peers, end-to-end training tok/s),
the gate manifest writer (``bench.conftest``) and the report (``python -m bench.report``).

Without ``--benchmark`` every benchmark is skipped. See ``bench/common.py`` for how figures are measured.
"""
