"""Mamba-2 chunked SSD scan: mamba-ssm's Triton ``mamba_chunk_scan_combined`` (the lab's choice on GPU) vs the
PyTorch reference ``reference.mamba2.mamba_chunk_scan``, forward and forward+backward, bf16 x/dt/B/C with fp32
A, D, dt_bias (as mamba-ssm's ``Mamba2`` calls it: ``dt_softplus=True``).

Shapes (B, T, H, P, G, N, chunk): the small model's (64, 256, 8, 32, 1, 32, 64), the large model's
(16, 1024, 16, 64, 1, 64, 256), and a long one (8, 4096, 32, 64, 1, 128, 256).

Bytes (minimal I/O): fwd reads x, dt, B, C and writes y; bwd reads dy, x, dt, B, C and writes dx, ddt, dB, dC.
TFLOP/s are *nominal*: fwd B·T·(2·G·Q·N + H·(2·Q·P + 4·N·P)) with Q the chunk (C·Bᵀ per group, its product
with x, state in and out), 3× for fwd+bwd. Errors: vs float64 reference at B ≤ 2, T ≤ 512.
"""
from __future__ import annotations

import math

import pytest
import torch

from bench import common

OP = "mamba2"
if common.ON_GPU:
    SHAPES = [(64, 256, 8, 32, 1, 32, 64), (16, 1024, 16, 64, 1, 64, 256), (8, 4096, 32, 64, 1, 128, 256)]
else:
    SHAPES = [(1, 40, 2, 8, 1, 8, 16)]
PASSES = ("fwd", "fwdbwd")
IMPLS = ("reference", "mamba_ssm")


def shape_str(B, T, H, P, G, N, Q) -> str:
    return f"B{B} T{T} H{H} P{P} G{G} N{N} Q{Q}"


def make_inputs(B, T, H, P, G, N, Q, grad: bool, dtype=torch.bfloat16, seed: int = 0) -> dict:
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=dev, dtype=torch.float32)

    def ur(lo, hi, *s):
        return torch.rand(*s, generator=g, device=dev, dtype=torch.float32) * (hi - lo) + lo

    x, dt = rn(B, T, H, P), rn(B, T, H) * 0.1
    Bm, Cm = rn(B, T, G, N), rn(B, T, G, N)
    A = -torch.exp(ur(math.log(1.0), math.log(16.0), H))            # Mamba2's A_init_range (1, 16)
    dt0 = torch.exp(ur(math.log(1e-3), math.log(1e-1), H))           # dt_min..dt_max
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))                    # inverse softplus
    D = torch.ones(H, device=dev)
    out = {"x": x.to(dtype), "dt": dt.to(dtype), "A": A, "B": Bm.to(dtype), "C": Cm.to(dtype), "D": D,
           "dt_bias": dt_bias}
    out = {k: v.requires_grad_(grad) for k, v in out.items()}
    out.update(chunk_size=Q, dt_softplus=True)
    return out


def nbytes(B, T, H, P, G, N, Q, pass_, es=2) -> float:
    io = B * T * (H * P + H + 2 * G * N) * es          # x, dt, B, C
    fwd = io + B * T * H * P * es                      # + y
    if pass_ == "fwd":
        return fwd
    return fwd + io + B * T * H * P * es + io          # reads dy + inputs, writes their grads


def flops(B, T, H, P, G, N, Q, pass_) -> float:
    f = B * T * (2 * G * Q * N + H * (2 * Q * P + 4 * N * P))
    return f * (1 if pass_ == "fwd" else 3)


def cases():
    return common.kernel_cases(SHAPES, PASSES, IMPLS, shape_str)

@pytest.mark.parametrize("impl,shp,pass_", cases())
def test_mamba2(bench, impl, shp, pass_):
    from groundthink import registry
    try:
        ref64 = registry.load(OP, "reference")
    except ImportError as e:
        pytest.skip(f"reference.mamba2 not importable: {e}")
    fn = common.load_impl(OP, impl)
    B, T, H, P, G, N, Q = shp
    eB, eT = min(B, 2), min(T, 512)
    common.run_case(
        bench, op=OP, impl=impl, fn=fn, ref64=ref64, shape=shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: make_inputs(*shp, grad),
        make_err_inputs=lambda grad: make_inputs(eB, eT, H, P, G, N, Q, grad, seed=1),
        err_shape=shape_str(eB, eT, H, P, G, N, Q), nbytes=nbytes(*shp, pass_), flops=flops(*shp, pass_))
