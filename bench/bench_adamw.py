"""``adamw`` benchmark rows: the lab's one-launch update vs torch's fused AdamW (one launch per group and per 36
parameters, after a multi-tensor clip) at the GF-MH small and large models' flat buffers (``kernels/adamw/spec.py``)."""
from bench.common import spec_test

test_adamw = spec_test("adamw")
