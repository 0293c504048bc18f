"""``gate_norm_residual`` benchmark rows: every implementation declared in ``kernels/gate_norm_residual/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_gate_norm_residual = spec_test("gate_norm_residual")
