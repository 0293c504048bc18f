"""RWKV-6 wkv: the lab's Triton kernel vs the PyTorch reference (``wkv6_chunked``) and fla's chunk / recurrent
kernels, forward and forward+backward, bf16 inputs.

Shapes (B, T, H, K=V): the issue's B8 T4096 H32 64, B4 T2048 H16 64, B64 T256 H2 64, B1 T16384 H32 64, and the
model's own (small: B64 T256 H4 32; large: B16 T1024 H8 64).

Figures per row (see bench/common.py): bytes = the minimal I/O, fwd reads r, k, w, v and writes o
(B·T·H·(3K+2V) elements), fwd+bwd adds reading r, k, w, v, do and writing dr, dk, dw, dv (9K+5V in all);
TFLOP/s are *nominal*: 4·B·T·H·K·V for the forward (r·S and the k⊗v state update), 3× that for fwd+bwd.
Errors: vs the float64 reference on the shape sliced to B ≤ 2, T ≤ 512 (``err_shape``).
The reference is timed at the full shape with a time-boxed handful of calls (it is a Python loop over chunks).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import common

OP = "wkv6"
if common.ON_GPU:
    SHAPES = [(8, 4096, 32, 64, 64), (4, 2048, 16, 64, 64), (64, 256, 2, 64, 64), (1, 16384, 32, 64, 64),
              (64, 256, 4, 32, 32), (16, 1024, 8, 64, 64)]
else:   # Triton interpreter: tiny, not a measurement
    SHAPES = [(1, 40, 2, 16, 16)]
PASSES = ("fwd", "fwdbwd")
IMPLS = ("reference", "triton", "triton_fused", "triton_parallel", "fla_chunk", "fla_recurrent")
# triton: the tensor-core chunk kernel (default); triton_fused: the sequential one; triton_parallel: the
# chunk-parallel one with exact per-key loops (the registry's LAB_KERNEL orders the candidates)
PRIORITY = {"reference": 1, "triton": 1, "triton_fused": 2, "triton_parallel": 2, "fla_chunk": 3, "fla_recurrent": 3}


def shape_str(B, T, H, K, V) -> str:
    return f"B{B} T{T} H{H} K{K} V{V}"


def make_inputs(B, T, H, K, V, grad: bool, dtype=torch.bfloat16, seed: int = 0) -> dict:
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=dev, dtype=torch.float32)

    r, k, v = rn(B, T, H, K), rn(B, T, H, K), rn(B, T, H, V)
    w = F.logsigmoid(rn(B, T, H, K))           # log-decay ≤ 0, typical range (-3, 0)
    u = rn(H, K) * 0.5
    out = {name: t.to(dtype).requires_grad_(grad) for name, t in
           dict(r=r, k=k, v=v, w=w, u=u).items()}
    out["scale"] = K ** -0.5
    return out


def cases():
    return common.kernel_cases(SHAPES, PASSES, IMPLS, shape_str, PRIORITY)

@pytest.mark.parametrize("impl,shp,pass_", cases())
def test_wkv6(bench, impl, shp, pass_):
    if PRIORITY[impl] > 1:
        common.require_budget(f"{OP}/{impl}")
    from groundthink import registry
    fn = common.load_impl(OP, impl)
    ref64 = registry.load(OP, "reference")
    B, T, H, K, V = shp
    eB, eT = min(B, 2), min(T, 512)
    es = 2  # bf16
    ntok = B * T * H
    nbytes = ntok * ((3 * K + 2 * V) if pass_ == "fwd" else (9 * K + 5 * V)) * es
    flops = 4.0 * ntok * K * V * (1 if pass_ == "fwd" else 3)
    common.run_case(
        bench, op=OP, impl=impl, fn=fn, ref64=ref64, shape=shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: make_inputs(B, T, H, K, V, grad),
        make_err_inputs=lambda grad: make_inputs(eB, eT, H, K, V, grad, seed=1),
        err_shape=shape_str(eB, eT, H, K, V), nbytes=nbytes, flops=flops)
