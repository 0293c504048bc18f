"""``shift_lerp`` benchmark rows: every implementation declared in ``kernels/shift_lerp/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_shift_lerp = spec_test("shift_lerp")
