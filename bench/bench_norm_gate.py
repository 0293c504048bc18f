"""Per-group norm + SiLU gate (``norm_gate``): the lab's Triton kernel vs the eager PyTorch reference, torch.compile
of the reference and mamba-ssm's gated norm (``mamba_ssm``: layernorm_fn / rmsnorm_fn), forward and
forward+backward, bf16 rows, fp32 weight/bias.

Shapes: the two uses in the model at the small and large sizes, N = B·T = 16384 rows: RWKV-6 GroupNorm ⊙ silu(g)
(LayerNorm per head, norm before gate, bias, eps 64e-5: D128 = 4 heads × 32, D512 = 8 × 64) and Mamba-2's gated
RMSNorm (RMS, gate first, no bias, one group: d_inner 256 / 1024).

Bytes (minimal I/O): fwd reads x, z and writes y; bwd reads dy, x, z and writes dx, dz: 3 + 5 passes over N·D.
Errors: vs the float64 reference at N ≤ 4096 rows (``err_shape``).
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "norm_gate"
common.PEERS.setdefault(OP, ("compile", "mamba_ssm"))
if common.ON_GPU:
    SHAPES = [(16384, 4, 32, "layer", True), (16384, 8, 64, "layer", True), (16384, 1, 256, "rms", False),
              (16384, 1, 1024, "rms", False)]
else:   # Triton interpreter: tiny, not a measurement
    SHAPES = [(16, 2, 16, "layer", True), (16, 1, 32, "rms", False)]
PASSES = ("fwd", "fwdbwd")
IMPLS = ("reference", "triton", "compile", "mamba_ssm")
PRIORITY = {"reference": 1, "triton": 1, "compile": 3, "mamba_ssm": 3}


def shape_str(N, G, S, norm, before) -> str:
    return f"N{N} G{G} S{S} {norm}" + (" norm-then-gate" if before else " gate-then-norm")


def make_inputs(N, G, S, norm, before, grad: bool, dtype=torch.bfloat16, seed: int = 0) -> dict:
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, device=dev, dtype=torch.float32)  # noqa: E731
    D = G * S
    out = {"x": rn(N, D).to(dtype), "z": (2 * rn(N, D)).to(dtype), "weight": 1 + 0.1 * rn(D),
           "bias": 0.1 * rn(D) if norm == "layer" else None}
    out = {k: None if v is None else v.requires_grad_(grad) for k, v in out.items()}
    out.update(group_size=S, eps=64e-5 if norm == "layer" else 1e-5, norm=norm, norm_before_gate=before)
    return out


def _compile_maker():
    torch._dynamo.reset()
    from reference.norm_gate import norm_gate
    return torch.compile(norm_gate, dynamic=False)


EXTRA = {"compile": _compile_maker}


def nbytes(N, G, S, norm, before, pass_, es=2) -> float:
    return N * G * S * es * (3 if pass_ == "fwd" else 8)


@pytest.mark.parametrize("impl,shp,pass_", common.kernel_cases(SHAPES, PASSES, IMPLS, shape_str, PRIORITY))
def test_norm_gate(bench, impl, shp, pass_):
    if PRIORITY[impl] > 1:
        common.require_budget(f"{OP}/{impl}")
    from groundthink import registry
    fn = common.load_impl(OP, impl, EXTRA)
    eN = min(shp[0], 4096)
    common.run_case(
        bench, op=OP, impl=impl, fn=fn, ref64=registry.load(OP, "reference"), shape=shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: make_inputs(*shp, grad),
        make_err_inputs=lambda grad: make_inputs(eN, *shp[1:], grad, seed=1),
        err_shape=shape_str(eN, *shp[1:]), nbytes=nbytes(*shp, pass_), flops=None)
