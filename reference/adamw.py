"""AdamW over flat buffers with gradient clipping and a skip flag, in plain PyTorch: the oracle for
``kernels.adamw`` (the training step's whole optimizer update in one launch).

Layout. Every parameter is a slice of one flat buffer ``param`` [N] (the training step's master weights,
``groundthink.step.FlatParams``); ``grad``, ``exp_avg``, ``exp_avg_sq`` [N] share that layout. The buffer is cut
into chunks of ``CHUNK`` = 64 elements and every chunk belongs to ONE parameter (parameters start at multiples of
64; the gap after a parameter up to the next multiple holds zeros in every buffer and is updated as the
parameter's own elements, so it stays zero): ``chunk_param`` [⌈N/64⌉] int32 names it. ``group`` [P] int32 gives
each parameter's param group, ``lr`` and ``weight_decay`` [G] fp32 each group's values, ``step`` [P] fp32 each
parameter's step count *including* this step (torch's AdamW increments it before its update).

Math, per element of parameter i in group j, with c = min(1, max_norm / (total_norm + 1e-6)) (1 when the norm is
NaN, or when max_norm ≤ 0: no clipping — ``torch.nn.utils.clip_grad_norm_``'s rule) and t = step[i]::

    g = c · grad
    param ← param · (1 − lr_j · wd_j)                       (decoupled weight decay)
    m ← m + (1 − β1) (g − m);   v ← β2 v + (1 − β2) g²
    param ← param − (lr_j / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)

exactly torch.optim.AdamW's (its ``_fused_adamw_`` with ``capturable=True``), applied only when ``found_inf`` is
0: otherwise nothing changes (the training step's guard against a non-finite loss or norm). ``grad`` is read,
never written (the clip factor is applied on the fly). Returns (param, exp_avg, exp_avg_sq), updated in place.
Computed in the inputs' dtype (float64 for the oracle).
"""
from __future__ import annotations

import torch

CHUNK = 64          # elements per chunk: every chunk belongs to one parameter


def check_args(param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm,
               found_inf):
    """One-line errors for inconsistent shapes or dtypes (values are the caller's: see the module docstring)."""
    n = param.shape[0] if isinstance(param, torch.Tensor) and param.dim() == 1 else None
    for name, t in (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point() or t.shape[0] != n:
            raise ValueError(f"adamw: {name} must be a 1-D float tensor of param's length {n}; got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    p = step.shape[0] if step.dim() == 1 else -1
    checks = (("step", step, (p,), True), ("chunk_param", chunk_param, (-(-n // CHUNK),), False),
              ("group", group, (p,), False), ("weight_decay", weight_decay, tuple(lr.shape), True),
              ("lr", lr, tuple(lr.shape), True), ("total_norm", total_norm, (), True),
              ("found_inf", found_inf, (), True))
    for name, t, shape, flt in checks:
        if tuple(t.shape) != shape or t.is_floating_point() != flt or (not flt and t.dtype != torch.int32):
            raise ValueError(f"adamw: {name} must be {'a float' if flt else 'an int32'} tensor of shape {shape} "
                             f"(module docstring); got {t.dtype} {tuple(t.shape)}")
    if lr.dim() != 1:
        raise ValueError(f"adamw: lr must be a 1-D tensor (one per group); got shape {tuple(lr.shape)}")


def adamw(param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm, found_inf,
          max_norm: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """One AdamW update of the flat buffers in place (module docstring); returns (param, exp_avg, exp_avg_sq)."""
    check_args(param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm, found_inf)
    n = param.shape[0]
    owner = chunk_param.long().repeat_interleave(CHUNK)[:n]           # the parameter of every element
    gi = group.long()[owner]
    t, lr_e, wd_e = step[owner].to(param.dtype), lr[gi].to(param.dtype), weight_decay[gi].to(param.dtype)
    one = torch.ones((), dtype=param.dtype, device=param.device)
    c = torch.fmin(max_norm / (total_norm.to(param.dtype) + 1e-6), one) if max_norm > 0 else one
    g = grad * c
    p = param * (1 - lr_e * wd_e)
    m = exp_avg + (1 - beta1) * (g - exp_avg)
    v = beta2 * exp_avg_sq + (1 - beta2) * g * g
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    p = p - (lr_e / bc1) * m / (v.sqrt() / bc2.sqrt() + eps)
    keep = found_inf != 0
    for dst, new in ((param, p), (exp_avg, m), (exp_avg_sq, v)):
        dst.copy_(torch.where(keep, dst, new))
    return param, exp_avg, exp_avg_sq
