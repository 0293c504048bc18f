"""Noise-floor runs of the validity study: their names, shared by the runner (``bench.bench_train --validity``) and
the report (``bench.report``), which read each other's results but import neither each other.

A floor run is a path perturbed by numerics only; its kind is the path's plus a suffix:
``<kernels>-reordered`` sums the same Mamba-2 scan in another order, ``<kernels>-bf16init`` starts from weights
rounded to bf16 precision. Its distance from its own path's run is what numerics alone do to the loss curve.
"""
from __future__ import annotations

REORDERED = "-reordered"
BF16INIT = "-bf16init"
FLOORS = ("reference" + REORDERED, "reference" + BF16INIT)


def floor_base(kind: str) -> str | None:
    """The path a noise-floor run perturbs (None: not a floor run)."""
    return next((kind.removesuffix(s) for s in (REORDERED, BF16INIT) if kind.endswith(s)), None)
