"""``wgrad`` benchmark rows: the lab kernel vs torch.mm (cuBLAS: split-K GEMM + its reduce kernel) at the models'
weight-gradient shapes, all declared in ``kernels/wgrad/spec.py`` (``bench_shapes``: R = 16,384 tokens, small D128
and large D512, projections and lowrank's dW1 / dW2)."""
from bench.common import spec_test

test_wgrad = spec_test("wgrad")
