"""The training step's optimizer update in ONE launch: AdamW over flat buffers, with the gradient-norm clip and
the non-finite skip applied inside (issue 10: torch's fused AdamW is one launch per param group and per 36
parameters — 9 a step at the small model — plus the step counters' adds, the clip factor's scalar kernels and
the multi-tensor multiply that clips the gradients in place: ~15 launches and one extra pass over the gradients).

Math and layout: reference/adamw.py (chunks of 64 elements, each owned by one parameter: ``chunk_param``; per
parameter its group and step count; per group lr and weight decay). The kernel reads ``grad`` (fp32) and the
clip factor c = min(1, max_norm / (total_norm + 1e-6)) (1 for a NaN norm) and updates ``param``, ``exp_avg``,
``exp_avg_sq`` in place; with ``found_inf`` ≠ 0 it loads and stores nothing (the masks are off).

``_adamw_kernel``, grid (⌈N / (RC·64)⌉,): a program updates an [RC, 64] tile, RC chunks of 64 elements; each
chunk's parameter, group, lr, weight decay and step are loaded once per row ([RC] gathers from tables of ≤ a few
hundred entries, L1/L2-resident) and broadcast along the row. fp32 math throughout, in torch's fused AdamW's
order (decay, moments, bias corrections from βᵗ = exp2(t · log2 β), step); one store per buffer. Bytes per
element: 16 read (param, grad, m, v), 12 written — the floor of any AdamW, and 8 fewer than a separate clip pass.
No atomics, no host syncs (total_norm, found_inf, lr and step are device tensors): CUDA-graph safe; deterministic.

Dtypes: param, grad, exp_avg, exp_avg_sq, step, lr, weight_decay, total_norm, found_inf fp32 (the training step's
master buffers); chunk_param and group int32. Every tensor contiguous, on one device. The tables' VALUES are not
checked (that would read them on the host, a sync): ``groundthink.step.FlatAdamW`` builds them from the
parameters and checks them once, on the host.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._common import cdiv as _cdiv
from reference.adamw import CHUNK, check_args

__all__ = ["adamw"]

# chunks per program (rows of the tile) and warps: 16 × 64 = 1,024 elements a program on a GPU; the interpreter
# runs each program in ~5 ms whatever its size, so it takes big tiles
TUNING = {"rows": 256 if INTERPRET else 16, "warps": 4}


@triton.jit
def _adamw_kernel(p_param, p_grad, p_m, p_v, p_step, p_cparam, p_group, p_lr, p_wd, p_norm, p_found, N,
                  max_norm, beta1, beta2, eps, log2_b1, log2_b2, CLIP: tl.constexpr, RC: tl.constexpr,
                  CH: tl.constexpr):
    # p_param, p_grad, p_m, p_v: [N] fp32 (param, gradient, first and second moments; grad only read);
    # p_step: [P] fp32 step count of each parameter (this step included); p_cparam: [⌈N/CH⌉] int32 the parameter
    # of each chunk of CH elements; p_group: [P] int32 each parameter's group; p_lr, p_wd: [G] fp32 per group;
    # p_norm: [] fp32 the gradients' global norm (the clip reads it when CLIP); p_found: [] fp32 skip flag;
    # log2_b1, log2_b2: log2 β1, log2 β2 (βᵗ = exp2(t log2 β))
    pid = tl.program_id(0)
    o_c = pid * RC + tl.arange(0, RC)
    n_run = tl.where(tl.load(p_found) == 0., tl.cdiv(N, CH), 0)     # a set skip flag: nothing loaded or stored
    m_c = o_c < n_run
    o = o_c.to(tl.int64)[:, None] * CH + tl.arange(0, CH)[None, :]
    m = m_c[:, None] & (o < N)
    b_pi = tl.load(p_cparam + o_c, mask=m_c, other=0)
    b_gi = tl.load(p_group + b_pi, mask=m_c, other=0)
    b_lr = tl.load(p_lr + b_gi, mask=m_c, other=0.)[:, None]
    b_wd = tl.load(p_wd + b_gi, mask=m_c, other=0.)[:, None]
    b_t = tl.load(p_step + b_pi, mask=m_c, other=1.)
    b_bc1 = (1. - tl.exp2(b_t * log2_b1))[:, None]
    b_bc2 = tl.sqrt(1. - tl.exp2(b_t * log2_b2))[:, None]
    b_g = tl.load(p_grad + o, mask=m, other=0.)
    if CLIP:
        b_c = max_norm / (tl.load(p_norm) + 1e-6)
        b_g = b_g * tl.where(b_c < 1., b_c, 1.)           # a NaN factor (NaN norm) fails the test: 1
    b_p = tl.load(p_param + o, mask=m, other=0.)
    b_m = tl.load(p_m + o, mask=m, other=0.)
    b_v = tl.load(p_v + o, mask=m, other=0.)
    b_p = b_p * (1. - b_lr * b_wd)
    b_m = b_m + (1. - beta1) * (b_g - b_m)
    b_v = beta2 * b_v + (1. - beta2) * b_g * b_g
    b_p = b_p - (b_lr / b_bc1) * b_m / (tl.sqrt(b_v) / b_bc2 + eps)
    tl.store(p_param + o, b_p, mask=m)
    tl.store(p_m + o, b_m, mask=m)
    tl.store(p_v + o, b_v, mask=m)


def adamw(param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm, found_inf,
          max_norm: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """One AdamW update of the flat buffers in place (reference/adamw.py); returns (param, exp_avg, exp_avg_sq).
    One launch; no host sync."""
    check_args(param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm, found_inf)
    dev = param.device
    for name, t in (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq),
                    ("step", step), ("lr", lr), ("weight_decay", weight_decay), ("total_norm", total_norm),
                    ("found_inf", found_inf), ("chunk_param", chunk_param), ("group", group)):
        if t.device != dev or not t.is_contiguous() or (t.is_floating_point() and t.dtype != torch.float32):
            raise ValueError(f"adamw (Triton): {name} must be contiguous, on {dev}, and float32 (int32 for the "
                             f"tables); got {t.dtype} on {t.device}, contiguous={t.is_contiguous()}")
    if not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or eps <= 0:
        raise ValueError(f"adamw: need 0 ≤ beta1, beta2 < 1 and eps > 0; got {beta1}, {beta2}, {eps}")
    n = param.shape[0]
    if n:
        rc = TUNING["rows"]
        _adamw_kernel[(_cdiv(_cdiv(n, CHUNK), rc),)](
            param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm, found_inf,
            n, float(max_norm), float(beta1), float(beta2), float(eps),
            math.log2(beta1) if beta1 > 0 else -1e30, math.log2(beta2) if beta2 > 0 else -1e30,
            CLIP=max_norm > 0, RC=rc, CH=CHUNK, num_warps=TUNING["warps"])
    return param, exp_avg, exp_avg_sq
