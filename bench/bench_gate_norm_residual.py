"""Fused gate blend + residual + norm: the lab's Triton kernel vs the eager PyTorch reference, torch.compile of
the reference, and fla's fused residual-add + RMSNorm/LayerNorm after an eager blend (``fla_rmsnorm``),
forward and forward+backward, bf16.

Shapes: N32768 × D2048 for every blend mode (add, vector, row, element, weights), plus row mode at N32768 × D2048
with an fp32 residual stream (``res32``: x and h fp32, as the model's ``residual_fp32=True``), and row mode at
N16384 × D128 / D512 / D768 / D4096 (D128 and D512 are the small and large models' rows). RMSNorm, eps 1e-5,
gates as logits (g = σ(gate)). The quick grid (default) times the peers at D2048 row/element and N16384 D128/D4096
row only (``QUICK_PEER_SHAPES``); GT_BENCH_QUICK=0 times them everywhere.

Bytes (minimal I/O): fwd reads x, a, b, an element-wise gate and writes h, y; bwd reads dy, dh, h, a, b (and the
element gate) and writes dx, da, db (and dgate) — 5 + 8 passes over N·D for the gated modes in bf16. No
TFLOP/s: memory-bound. Errors: vs the float64 reference at N ≤ 4096 rows of the same D (``err_shape``).
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "gate_norm_residual"
MODES = ("add", "vector", "row", "element", "weights")
if common.ON_GPU:
    SHAPES = [(32768, 2048, m, False) for m in MODES] + [(32768, 2048, "row", True)] + \
             [(16384, d, "row", False) for d in (128, 512, 768, 4096)]
else:   # Triton interpreter: tiny, not a measurement
    SHAPES = [(16, 32, m, False) for m in MODES] + [(16, 32, "row", True)]
PASSES = ("fwd", "fwdbwd")
IMPLS = ("reference", "triton", "compile", "fla_rmsnorm")
PRIORITY = {"reference": 1, "triton": 1, "compile": 3, "fla_rmsnorm": 3}


def shape_str(N, D, mode, res32) -> str:
    return f"N{N} D{D} {mode}" + (" res32" if res32 else "")


def make_inputs(N, D, mode, res32, grad: bool, dtype=torch.bfloat16, seed: int = 0) -> dict:
    from reference.gate_norm_residual import gate_shape
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=dev, dtype=torch.float32)

    x, a = rn(N, D), rn(N, D)
    b = None if mode == "add" else rn(N, D)
    gs = gate_shape(mode, (N, D), D)
    gate = None if gs is None else (rn(*gs).abs() * 0.5 if mode == "weights" else rn(*gs))
    weight = 1.0 + 0.1 * rn(D)
    out = {"x": x.to(torch.float32 if res32 else dtype).requires_grad_(grad)}
    for name, t in (("a", a), ("b", b), ("gate", gate), ("weight", weight)):
        out[name] = None if t is None else t.to(dtype).requires_grad_(grad)
    out.update(bias=None, mode=mode, norm="rms", eps=1e-5, gate_logits=mode in ("vector", "row", "element"),
               residual_fp32=res32)
    return out


def _compile_maker():
    torch._dynamo.reset()     # a fresh compile per row: no recompile limit, no cache from earlier shapes
    from groundthink import registry
    return registry.load(OP, "compile")


def _fla_maker():
    """Eager blend of the branches in the input dtype, then fla's fused residual add + norm (prenorm)."""
    try:
        from fla.modules.norm.layernorm import layer_norm, rms_norm
    except ImportError:
        from fla.modules.layernorm import layer_norm, rms_norm

    def fla_blend_add_norm(x, a, b=None, gate=None, *, weight, bias=None, mode="add", norm="rms", eps=1e-5,
                           gate_logits=False, residual_fp32=False):
        if mode == "add":
            branch = a
        elif mode == "weights":
            branch = gate[0] * a + gate[1] * b
        else:
            gg = torch.sigmoid(gate) if gate_logits else gate
            branch = gg * a + (1 - gg) * b
        f = rms_norm if norm == "rms" else layer_norm
        y, h = f(branch, weight, bias, residual=x, eps=eps, prenorm=True, residual_in_fp32=residual_fp32)
        return h, y

    return fla_blend_add_norm


EXTRA = {"compile": _compile_maker, "fla_rmsnorm": _fla_maker}


def nbytes(N, D, mode, res32, pass_, es=2) -> float:
    ex = 4 if res32 else es                      # x and h in fp32 with res32
    gated = mode != "add"
    elem = mode == "element"
    fwd = N * D * (ex + es + (es if gated else 0) + (es if elem else 0) + ex + es)
    if mode == "row":
        fwd += N * es
    if pass_ == "fwd":
        return fwd
    bwd = N * D * (es + ex + ex + (2 * es if gated else 0) + (es if elem else 0)      # reads dy, dh, h, a, b, g
                   + ex + es + (es if gated else 0) + (es if elem else 0))           # writes dx, da, db, dg
    return fwd + bwd


# quick grid: the peers only at these shapes (every shape with GT_BENCH_QUICK=0): torch.compile costs
# seconds per shape and pass
QUICK_PEER_SHAPES = {(32768, 2048, "row", False), (32768, 2048, "element", False), (16384, 128, "row", False),
                     (16384, 4096, "row", False)}


def cases():
    # in the quick grid the peers are timed only at QUICK_PEER_SHAPES
    return common.kernel_cases(SHAPES, PASSES, IMPLS, shape_str, PRIORITY, keep=lambda impl, shp: not (
        PRIORITY[impl] > 1 and common.ON_GPU and common.quick() and shp not in QUICK_PEER_SHAPES))

@pytest.mark.parametrize("impl,shp,pass_", cases())
def test_gate_norm_residual(bench, impl, shp, pass_):
    if PRIORITY[impl] > 1:
        common.require_budget(f"{OP}/{impl}")
    from groundthink import registry
    fn = common.load_impl(OP, impl, EXTRA)
    ref64 = registry.load(OP, "reference")
    N, D, mode, res32 = shp
    eN = min(N, 4096)
    common.run_case(
        bench, op=OP, impl=impl, fn=fn, ref64=ref64, shape=shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: make_inputs(N, D, mode, res32, grad),
        make_err_inputs=lambda grad: make_inputs(eN, D, mode, res32, grad, seed=1),
        err_shape=shape_str(eN, D, mode, res32), nbytes=nbytes(N, D, mode, res32, pass_), flops=None)
