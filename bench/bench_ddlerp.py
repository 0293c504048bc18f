"""RWKV-6 token-shift lerps: ``shift_lerp`` (x + (shift(x) − x) ⊙ maa_x) and ``ddlerp`` (the five
x + (shift(x) − x) ⊙ (maa_i + m_i)), the lab's Triton kernels vs the eager PyTorch references and torch.compile of
them, forward and forward+backward, bf16 x and m, fp32 maa.

Shapes: the small (B64 T256 D128) and large (B16 T1024 D512) models' time-mix inputs.
Bytes (minimal I/O): shift_lerp fwd reads x, writes y (2 passes over B·T·D), bwd reads dy, x, writes dx (+3);
ddlerp fwd reads x and m (6 passes), writes 5 outputs (5), bwd reads 5 douts, x, m (11), writes dx, dm (6).
Errors: vs the float64 references on B ≤ 4 sequences of the same T, D (``err_shape``).
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OPS = ("shift_lerp", "ddlerp")
for _op in OPS:
    common.PEERS.setdefault(_op, ("compile",))
if common.ON_GPU:
    SHAPES = [(op, 64, 256, 128) for op in OPS] + [(op, 16, 1024, 512) for op in OPS]
else:   # Triton interpreter: tiny, not a measurement
    SHAPES = [(op, 2, 8, 40) for op in OPS]
PASSES = ("fwd", "fwdbwd")
IMPLS = ("reference", "triton", "compile")
PRIORITY = {"reference": 1, "triton": 1, "compile": 3}


def shape_str(op, B, T, D) -> str:
    return f"B{B} T{T} D{D}"


def make_inputs(op, B, T, D, grad: bool, dtype=torch.bfloat16, seed: int = 0) -> dict:
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    out = {"x": torch.randn(B, T, D, generator=g, device=dev).to(dtype)}
    if op == "ddlerp":
        out["m"] = (0.1 * torch.randn(5, B, T, D, generator=g, device=dev)).to(dtype)
        out["maa"] = torch.rand(5, D, generator=g, device=dev)
    else:
        out["mu"] = torch.rand(D, generator=g, device=dev)
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _compile_maker(op):
    def make():
        torch._dynamo.reset()
        from groundthink import registry
        return torch.compile(registry.load(op, "reference"), dynamic=False)
    return make


def nbytes(op, B, T, D, pass_, es=2) -> float:
    passes = {("shift_lerp", "fwd"): 2, ("shift_lerp", "fwdbwd"): 5, ("ddlerp", "fwd"): 11,
              ("ddlerp", "fwdbwd"): 28}[(op, pass_)]
    return B * T * D * es * passes


@pytest.mark.parametrize("impl,shp,pass_", common.kernel_cases(SHAPES, PASSES, IMPLS, lambda *s: "-".join(
    (s[0], shape_str(*s))), PRIORITY))
def test_ddlerp(bench, impl, shp, pass_):
    op = shp[0]
    if PRIORITY[impl] > 1:
        common.require_budget(f"{op}/{impl}")
    from groundthink import registry
    fn = common.load_impl(op, impl, {"compile": _compile_maker(op)})
    eB = min(shp[1], 4)
    common.run_case(
        bench, op=op, impl=impl, fn=fn, ref64=registry.load(op, "reference"), shape=shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: make_inputs(*shp, grad),
        make_err_inputs=lambda grad: make_inputs(op, eB, *shp[2:], grad, seed=1),
        err_shape=shape_str(op, eB, *shp[2:]), nbytes=nbytes(*shp, pass_), flops=None)
