"""``mamba2_step`` benchmark rows: every implementation declared in ``kernels/mamba2_step/spec.py`` (shapes,
inputs, bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_mamba2_step = spec_test("mamba2_step")
