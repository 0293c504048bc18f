"""Weight-gradient GEMMs C = aᵀ b in plain PyTorch (cuBLAS on a GPU): the oracle for ``kernels.wgrad``.

    a [R, M], b [R, N]  →  C = aᵀ b  [M, N]            (R: the tokens, reduced over; M, N: a weight's shape)
    a [G, R, M], b [G, R, N]  →  C_g = a_gᵀ b_g  [G, M, N]   (G independent products, one bmm)

The training step's dW = dYᵀ X of every projection (fused/projections.py) and of the low-rank terms
(kernels/lowrank). ``a`` and ``b`` share one dtype (fp16, bf16, fp32 or fp64); strided views are accepted (a column
slice of a wider matrix). The product is computed in the inputs' dtype with autocast off (fp32 accumulation inside
cuBLAS for fp16/bf16) and returned, or written into ``out`` ([M, N] / [G, M, N], any float dtype, e.g. a row block
of a larger gradient buffer; copied with one rounding when its dtype differs) and ``out`` returned. A backward-only
op: no autograd through it (the inputs are read detached; the step calls it inside backwards, where the saved
activations may still say ``requires_grad``).
"""
from __future__ import annotations

import contextlib

import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_args(a, b, out=None):
    """One-line errors for inputs that do not fit together (what is wrong, what is accepted)."""
    for name, t in (("a", a), ("b", b)) + ((("out", out),) if out is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"wgrad: {name} must be a tensor; got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"wgrad: {name} has dtype {t.dtype}; accepted: float16, bfloat16, float32, float64")
    if a.dim() not in (2, 3) or b.dim() != a.dim() or a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"wgrad: a [R, M] and b [R, N] (or [G, R, M] and [G, R, N]) with the same leading "
                         f"dimensions expected; got a {tuple(a.shape)}, b {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"wgrad: a and b must share one dtype; got a {a.dtype}, b {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"wgrad: a is on {a.device}, b on {b.device}; both must be on one device")
    want = (*a.shape[:-2], a.shape[-1], b.shape[-1])
    if out is not None and (tuple(out.shape) != want or out.device != a.device):
        raise ValueError(f"wgrad: out must have shape {want} on {a.device}; got {tuple(out.shape)} on {out.device}")


def wgrad(a, b, out=None):
    """aᵀ b reduced over the rows ([R, M], [R, N] → [M, N]; batched [G, R, ·] → [G, M, N]), in the inputs' dtype
    or written into ``out`` (module docstring)."""
    check_args(a, b, out)
    a, b = a.detach(), b.detach()
    amp = a.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(a.device.type)
    with torch.autocast(a.device.type, enabled=False) if amp else contextlib.nullcontext():   # (meta: no autocast)
        mm = torch.mm if a.dim() == 2 else torch.bmm
        at = a.transpose(-1, -2)
        if out is None:
            return mm(at, b)
        if out.dtype == a.dtype:
            return mm(at, b, out=out)
        return out.copy_(mm(at, b))
