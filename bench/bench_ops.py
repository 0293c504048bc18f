"""Every op that declares a benchmark in its spec (``kernels/<op>/spec.py``: shapes, inputs, bytes, FLOPs,
error shape): each implementation — reference, lab kernels, installed peers — forward and forward+backward,
checked against the float64 reference and timed (``bench.common.run_case``). An op with a module of its own
here (``bench/bench_<op>.py``) is left to that module."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import common
from groundthink.spec import specs

OWN_MODULES = {p.stem[len("bench_"):] for p in Path(__file__).parent.glob("bench_*.py")}
OPS = [op for op in specs() if op not in OWN_MODULES]


@pytest.mark.parametrize("op,impl,shp,pass_", common.spec_cases(OPS))
def test_op(bench, op, impl, shp, pass_):
    common.run_spec_case(bench, op, impl, shp, pass_)
