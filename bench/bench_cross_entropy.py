"""``cross_entropy`` benchmark rows: every implementation declared in ``kernels/cross_entropy/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_cross_entropy = spec_test("cross_entropy")
