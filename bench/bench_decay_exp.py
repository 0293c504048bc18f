"""``decay_exp`` benchmark rows: every implementation declared in ``kernels/decay_exp/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_decay_exp = spec_test("decay_exp")
