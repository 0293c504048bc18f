"""``lowrank`` benchmark rows: every implementation declared in ``kernels/lowrank/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_lowrank = spec_test("lowrank")
