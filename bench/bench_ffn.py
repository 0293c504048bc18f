"""``ffn`` benchmark rows: every implementation declared in ``kernels/ffn/spec.py`` (shapes, inputs, bytes and
FLOPs there) vs the float64 reference."""
from bench.common import spec_test

test_ffn = spec_test("ffn")
