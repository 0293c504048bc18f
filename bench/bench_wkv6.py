"""``wkv6`` benchmark rows: every implementation declared in ``kernels/wkv6/spec.py`` (shapes, inputs,
bytes and FLOPs there) vs the float64 reference and the installed peers."""
from bench.common import spec_test

test_wkv6 = spec_test("wkv6")
