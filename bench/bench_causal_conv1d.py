"""``causal_conv1d`` benchmark rows: every implementation declared in ``kernels/causal_conv1d/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_causal_conv1d = spec_test("causal_conv1d")
