"""RWKV-6 log-decay lw = −exp(time_decay + d) (``decay_exp``): the lab's Triton kernel vs the eager PyTorch
reference and torch.compile of it, forward and forward+backward, bf16 d and lw, fp32 time_decay.

Shapes: the small (N16384 × D128) and large (N16384 × D512) models' rows (N = B·T).
Bytes (minimal I/O): fwd reads d, writes lw (2 passes over N·D); bwd reads dlw, d, writes dd (+3).
Errors: vs the float64 reference at N ≤ 4096 rows.
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "decay_exp"
common.PEERS.setdefault(OP, ("compile",))
SHAPES = [(16384, 128), (16384, 512)] if common.ON_GPU else [(16, 40)]
PASSES = ("fwd", "fwdbwd")
IMPLS = ("reference", "triton", "compile")
PRIORITY = {"reference": 1, "triton": 1, "compile": 3}


def shape_str(N, D) -> str:
    return f"N{N} D{D}"


def make_inputs(N, D, grad: bool, dtype=torch.bfloat16, seed: int = 0) -> dict:
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    base = -6 + 5 * torch.rand(D, generator=g, device=dev)
    d = torch.randn(N, D, generator=g, device=dev).to(dtype)
    return {"base": base.requires_grad_(grad), "d": d.requires_grad_(grad)}


def _compile_maker():
    torch._dynamo.reset()
    from reference.decay_exp import decay_exp
    return torch.compile(decay_exp, dynamic=False)


@pytest.mark.parametrize("impl,shp,pass_", common.kernel_cases(SHAPES, PASSES, IMPLS, shape_str, PRIORITY))
def test_decay_exp(bench, impl, shp, pass_):
    if PRIORITY[impl] > 1:
        common.require_budget(f"{OP}/{impl}")
    from groundthink import registry
    fn = common.load_impl(OP, impl, {"compile": _compile_maker})
    eN = min(shp[0], 4096)
    common.run_case(
        bench, op=OP, impl=impl, fn=fn, ref64=registry.load(OP, "reference"), shape=shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: make_inputs(*shp, grad),
        make_err_inputs=lambda grad: make_inputs(eN, shp[1], grad, seed=1),
        err_shape=shape_str(eN, shp[1]), nbytes=shp[0] * shp[1] * 2 * (2 if pass_ == "fwd" else 5), flops=None)
