"""``norm_gate`` benchmark rows: every implementation declared in ``kernels/norm_gate/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_norm_gate = spec_test("norm_gate")
