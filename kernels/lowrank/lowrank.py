"""RWKV-6's low-rank terms y = tanh(x W1) W2 (G groups; optionally −exp(base + y)): one Triton kernel forward,
one Triton kernel + the weight-gradient GEMMs (``kernels.wgrad``) backward (issue 10: the time mix's LoRA chains were 8 and 10
launches a layer as separate GEMMs, tanh, decay_exp and their autograd backwards; now 4 each).

Math (see reference/lowrank.py): x [M, D], W1 [D, G·R], W2 [G, R, N], optional base [N] (one group only)::

    P = x W1;  h = tanh(P)                   [M, G·R]   (group g: columns gR … (g+1)R − 1)
    y_g = h_g W2_g                           [G, M, N]
    with base:  lw = −exp(base + y)          (fp32; y is not rounded before the exponential)

Backward (dy_g on y_g; with base dlw on lw, then dy = dlw ⊙ lw, dbase = Σ_rows dy)::

    dh_g = dy_g W2_gᵀ;   dP = dh ⊙ (1 − h²);   dx = Σ_g dP_g W1_gᵀ
    dW1 = xᵀ dP;         dW2_g = h_gᵀ dy_g

Kernels:
* ``_lowrank_fwd_kernel``, grid (row blocks of BM, G): P's [BM, R] tile by a D-loop of dots, tanh in fp32 (h
  rounded to x's dtype, as the unfused bf16 path rounds tanh's output), then y by an N-loop of dots, stored once.
  Nothing is saved for the backward but the inputs.
* ``_lowrank_bwd_kernel``, grid (row blocks of BM): per group, P recomputed, h and dh (N-loop over dy and W2; with
  base, lw recomputed from h W2 and dy = dlw ⊙ lw stored, with one fp32 partial row of dbase per program), dP;
  h and dP stored ([M, G·R] in x's dtype: the weight-gradient GEMMs' operands); then, after a barrier, dx by a
  D-loop over the stored dP rows of this block (written by this program) and W1.
* ``kernels.wgrad`` (one launch each, the split over the rows reduced in-kernel; cuBLAS's split-K ran a second
  reduce kernel per GEMM): dW1 = xᵀ dP, dW2 = one batched call over the strided [G, M, R] view of h's column groups
  (with base: one call over the stored dy ⊙ lw); with base the partial rows of dbase (one per block of BM rows) summed inside the backward kernel
  by the last program to arrive (``kernels._colsum``: fixed order, no atomics on data).
  Deterministic (no atomics on data), no host syncs, no autotuning.

tanh is computed in fp32 to a few ulp everywhere (``_tanh``: a 5-term odd series below |P| = 1/4, where
(1 − e)/(1 + e), e = exp(−2|P|), would cancel — the model's maa LoRA starts with |P| ~ 1e-3 — and that form
above), and its derivative as 4e/(1 + e)² there (1 − h² cancels where h → ±1).

Layouts: x [..., D] viewed as [M, D]; every tensor contiguous. Dtypes: x, W1, W2 each fp32 / fp16 / bf16, the
products in x's dtype (W1, W2 cast to it; under autocast all three cast to autocast's dtype first, as matmul would);
base fp32 / fp16 / bf16; y in ``dtype`` (default: the products' dtype); dx, dW1, dW2 in their inputs' dtypes, dbase in
base's. fp32 inputs take "ieee" dots (fp32-accurate); fp16 / bf16
inputs native tensor-core dots with fp32 accumulation.

Custom ops ``groundthink::lowrank_fwd`` / ``_bwd`` (fake implementations, one registered autograd formula), run
eagerly without the dispatcher through ``kernels._eager``, as every glue op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from groundthink.device import autocast_dtype
from kernels._colsum import arrive_tree, counters, finish_columns, finish_rows, tree
from kernels._common import cdiv as _cdiv, check_tensor, dot_precision, new_empty, pow2 as _pow2
from kernels._eager import EagerOp, pick
from kernels.wgrad.wgrad import wgrad
from reference.lowrank import check_args

__all__ = ["lowrank"]

# rows per program, D / N columns per dot step, warps. H100 run 19 (scripts/gpu_lowrank.py, CUDA-graph fwd+bwd, bf16,
# M 16384; profiles/.../run19-2026-11-28/check/gpu_lowrank.txt): BM 64 × 4 warps fastest at all four model calls
# (D128 G5 R32 0.0741 ms, D128 R64 exp 0.0392, D512 G5 R32 0.1902, D512 R64 exp 0.1104; BM 32 or 8 warps 3-15 %
# slower); the unfused reference chain 0.0843 / 0.1066 / 0.1642 / 0.3000 (faster at D512 G5: the five wide
# outputs, where cuBLAS's tiles win). Offline sm_90 compile as launched (Triton 3.9, bf16, 3 stages): 4 warps fwd
# 76-90 registers, bwd 168-250, 8 warps fwd 56-66, bwd 110-200; no spill either way (fp32 inputs spill: tests only)
TUNING = {"bm": 64, "bk": 64, "bn": 64, "warps": 4}


@triton.jit
def _tanh(b_p):
    """(tanh(p), 1 − tanh²(p)) in fp32, a few ulp relative everywhere (module docstring)."""
    b_a = tl.abs(b_p)
    b_e = tl.exp(-2. * b_a)
    b_big = (1. - b_e) / (1. + b_e)
    b_p2 = b_p * b_p
    b_small = b_p * (1. + b_p2 * (-1. / 3 + b_p2 * (2. / 15 + b_p2 * (-17. / 315 + b_p2 * (62. / 2835)))))
    small = b_a < 0.25
    b_h = tl.where(small, b_small, tl.where(b_p < 0, -b_big, b_big))
    b_d = tl.where(small, 1. - b_h * b_h, 4. * b_e / ((1. + b_e) * (1. + b_e)))
    return b_h, b_d


@triton.jit
def _pre(p_x, p_w1, o_m, m_m, o_r, m_r, i_g, D, R, GR, PREC: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
         BR: tl.constexpr):
    """P = x W1 for this block's rows and group i_g's R columns: [BM, BR] fp32 (masked rows / columns 0)."""
    b_p = tl.zeros([BM, BR], dtype=tl.float32)
    for k0 in range(0, D, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < D
        b_x = tl.load(p_x + o_m[:, None] * D + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.)
        b_w1 = tl.load(p_w1 + o_k[:, None] * GR + i_g * R + o_r[None, :], mask=m_k[:, None] & m_r[None, :],
                       other=0.)
        b_p += tl.dot(b_x, b_w1, input_precision=PREC)
    return b_p


@triton.jit
def _lowrank_fwd_kernel(p_x, p_w1, p_w2, p_base, p_y, M, D, N, R, HAS_BASE: tl.constexpr, PREC: tl.constexpr,
                        BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr):
    # p_x: [M, D]; p_w1: [D, G·R]; p_w2: [G, R, N]; p_base: [N] (HAS_BASE, one group) or None; p_y: [G, M, N]
    i_m, i_g = tl.program_id(0), tl.program_id(1)
    G = tl.num_programs(1)
    o_m = (i_m * BM + tl.arange(0, BM)).to(tl.int64)
    m_m = o_m < M
    o_r = tl.arange(0, BR)
    m_r = o_r < R
    b_h, _ = _tanh(_pre(p_x, p_w1, o_m, m_m, o_r, m_r, i_g, D, R, G * R, PREC, BM, BK, BR))
    b_h = b_h.to(p_x.dtype.element_ty)
    p_w2g = p_w2 + (i_g * R).to(tl.int64) * N
    p_yg = p_y + i_g.to(tl.int64) * M * N
    for n0 in range(0, N, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < N
        b_w2 = tl.load(p_w2g + o_r[:, None] * N + o_n[None, :], mask=m_r[:, None] & m_n[None, :], other=0.)
        b_y = tl.dot(b_h, b_w2, input_precision=PREC)
        if HAS_BASE:
            b_y = -tl.exp(b_y + tl.load(p_base + o_n, mask=m_n, other=0.).to(tl.float32)[None, :])
        tl.store(p_yg + o_m[:, None] * N + o_n[None, :], b_y.to(p_y.dtype.element_ty),
                 mask=m_m[:, None] & m_n[None, :])


@triton.jit
def _lowrank_bwd_kernel(p_dy, p_x, p_w1, p_w2, p_base, p_h, p_dp, p_dyb, p_part, p_dbase, p_count, p_dx, M, D, N,
                        R, GS, NG, G: tl.constexpr, HAS_BASE: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr,
                        BK: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr):
    # p_dy: [G, M, N] (dL/dy; with base dL/dlw); p_x: [M, D]; p_w1: [D, G·R]; p_w2: [G, R, N]; p_base: [N] or None;
    # p_h, p_dp: [M, G·R] out (tanh(P) and dL/dP, x's dtype); p_dyb: [M, N] out with base (dL/d(h W2), x's dtype),
    # else None; p_part: [row blocks, N] fp32 workspace with base (this block's rows of dL/d(h W2) summed), else None;
    # p_dbase: [N] out with base (the partial rows summed in-kernel: kernels._colsum; p_count its arrival counters,
    # GS, NG its tree, BP rows per finishing step), else None; p_dx: [M, D] out
    i_m = tl.program_id(0)
    o_m = (i_m * BM + tl.arange(0, BM)).to(tl.int64)
    m_m = o_m < M
    o_r = tl.arange(0, BR)
    m_r = o_r < R
    m_mr = m_m[:, None] & m_r[None, :]
    for i_g in range(G):
        b_h, b_d = _tanh(_pre(p_x, p_w1, o_m, m_m, o_r, m_r, i_g, D, R, G * R, PREC, BM, BK, BR))
        b_h = b_h.to(p_x.dtype.element_ty)
        b_dh = tl.zeros([BM, BR], dtype=tl.float32)
        i_g64 = tl.full([], 0, tl.int64) + i_g         # int64 offsets (the loop index is an int32 / a Python int)
        p_w2g = p_w2 + i_g64 * R * N
        p_dyg = p_dy + i_g64 * M * N
        for n0 in range(0, N, BN):
            o_n = n0 + tl.arange(0, BN)
            m_n = o_n < N
            m_mn = m_m[:, None] & m_n[None, :]
            b_w2 = tl.load(p_w2g + o_r[:, None] * N + o_n[None, :], mask=m_r[:, None] & m_n[None, :], other=0.)
            b_dy = tl.load(p_dyg + o_m[:, None] * N + o_n[None, :], mask=m_mn, other=0.)
            if HAS_BASE:
                b_lw = -tl.exp(tl.dot(b_h, b_w2, input_precision=PREC)
                               + tl.load(p_base + o_n, mask=m_n, other=0.).to(tl.float32)[None, :])
                b_g = tl.where(m_mn, b_dy.to(tl.float32) * b_lw, 0.)
                tl.store(p_dyb + o_m[:, None] * N + o_n[None, :], b_g.to(p_dyb.dtype.element_ty), mask=m_mn)
                tl.store(p_part + i_m * N + o_n, tl.sum(b_g, axis=0), mask=m_n)
                b_g = b_g.to(p_x.dtype.element_ty)
            else:
                b_g = b_dy.to(p_x.dtype.element_ty)
            b_dh += tl.dot(b_g, tl.trans(b_w2), input_precision=PREC)
        o_hr = o_m[:, None] * (G * R) + i_g * R + o_r[None, :]
        tl.store(p_h + o_hr, b_h, mask=m_mr)
        tl.store(p_dp + o_hr, (b_dh * b_d).to(p_dp.dtype.element_ty), mask=m_mr)
    tl.debug_barrier()      # the dP rows this program stored are read back below by other threads of it
    for d0 in range(0, D, BK):
        o_d = d0 + tl.arange(0, BK)
        m_d = o_d < D
        b_dx = tl.zeros([BM, BK], dtype=tl.float32)
        for i_g in range(G):
            b_dp = tl.load(p_dp + o_m[:, None] * (G * R) + i_g * R + o_r[None, :], mask=m_mr, other=0.)
            b_w1 = tl.load(p_w1 + o_d[:, None] * (G * R) + i_g * R + o_r[None, :], mask=m_d[:, None] & m_r[None, :],
                           other=0.)
            b_dx += tl.dot(b_dp, tl.trans(b_w1), input_precision=PREC)
        tl.store(p_dx + o_m[:, None] * D + o_d[None, :], b_dx.to(p_dx.dtype.element_ty),
                 mask=m_m[:, None] & m_d[None, :])
    if HAS_BASE:            # dbase: the grid's partial rows summed by the last program to arrive (fixed order)
        if arrive_tree(p_part, N, p_count, i_m, tl.num_programs(0), GS, NG, 0, N, 1, 0, BP, BN):
            finish_columns(p_part, GS * N, NG, p_dbase, 0, N, BP, BN)


def _tiles(D, N, R):
    """BM, BK, BR, BN: dot tiles are powers of two ≥ 16."""
    t = TUNING
    return t["bm"], min(t["bk"], max(16, _pow2(D))), max(16, _pow2(R)), min(t["bn"], max(16, _pow2(N)))


def _fwd_impl(x, w1, w2, base, dtype):
    M, D = x.shape
    G, R, N = w2.shape
    y = new_empty((G, M, N), dtype, x.device)
    if M:
        BM, BK, BR, BN = _tiles(D, N, R)
        _lowrank_fwd_kernel[(_cdiv(M, BM), G)](x, w1, w2, base, y, M, D, N, R, HAS_BASE=base is not None,
                                               PREC=dot_precision(x.dtype), BM=BM, BK=BK, BR=BR, BN=BN,
                                               num_warps=TUNING["warps"])
    return y


def _bwd_impl(dy, x, w1, w2, base):
    M, D = x.shape
    G, R, N = w2.shape
    dev, dt = x.device, x.dtype
    dx = new_empty((M, D), dt, dev)
    h = new_empty((M, G * R), dt, dev)
    dp = new_empty((M, G * R), dt, dev)
    BM, BK, BR, BN = _tiles(D, N, R)
    nb = _cdiv(M, BM)
    dyb = part = count = None
    GS, NG = tree(max(nb, 1))
    dbase = new_empty((0,), torch.float32, dev) if base is None else \
        (new_empty(base.shape, base.dtype, dev) if M else torch.zeros_like(base))
    if base is not None:
        dyb = new_empty((M, N), dt, dev)
        part = new_empty((nb, N), torch.float32, dev)
        count = counters(dev, 1, NG)
    if M:
        _lowrank_bwd_kernel[(nb,)](dy, x, w1, w2, base, h, dp, dyb, part, dbase if base is not None else None, count,
                                   dx, M, D, N, R, GS, NG, G=G, HAS_BASE=base is not None, PREC=dot_precision(dt),
                                   BM=BM, BK=BK, BR=BR, BN=BN, BP=finish_rows(BN), num_warps=TUNING["warps"])
    # the weight gradients in the inputs' dtype, one launch each (torch.mm for float64 or under a tracer)
    dw1 = wgrad(x, dp)
    if base is None:        # one batched call over the [G, M, R] view of h's column groups: no copy
        dw2 = wgrad(h.view(M, G, R).transpose(0, 1), dy.to(dt))
    else:
        dw2 = wgrad(h, dyb).unsqueeze(0)
    return dx, dw1, dw2, dbase


@torch.library.custom_op("groundthink::lowrank_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, base: torch.Tensor | None,
            dtype: torch.dtype) -> torch.Tensor:
    return _fwd_impl(x, w1, w2, base, dtype)


@_fwd_op.register_fake
def _(x, w1, w2, base, dtype):
    return x.new_empty((w2.shape[0], x.shape[0], w2.shape[2]), dtype=dtype)


@torch.library.custom_op("groundthink::lowrank_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
            base: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(dy, x, w1, w2, base)


@_bwd_op.register_fake
def _(dy, x, w1, w2, base):
    dbase = base.new_empty(base.shape) if base is not None else x.new_empty((0,), dtype=torch.float32)
    return torch.empty_like(x), torch.empty_like(w1), torch.empty_like(w2), dbase


def _setup_context(ctx, inputs, output):
    x, w1, w2, base, _ = inputs
    ctx.save_for_backward(x, w1, w2, base)


def _backward(ctx, dy):
    x, w1, w2, base = ctx.saved_tensors
    dx, dw1, dw2, dbase = pick(_bwd_op, _bwd_impl, dy)(dy.contiguous(), x, w1, w2, base)
    return dx, dw1, dw2, (dbase if base is not None else None), None


_lowrank = EagerOp("Lowrank", _fwd_op, _fwd_impl, _setup_context, _backward)


def lowrank(x, w1, w2, base=None, dtype=None):
    """tanh(x w1) w2 per group: x [..., D], w1 [D, G·R], w2 [G, R, N] → [G, ..., N] (w2 [R, N] → [..., N]); with
    base [N] (one group): −exp(base + ·) in ``dtype`` (default: the products' dtype). See the module docstring."""
    for name, t in (("x", x), ("w1", w1), ("w2", w2)) + ((("base", base),) if base is not None else ()):
        check_tensor(name, t, device=x.device if name != "x" else None)
    check_args(x, w1, w2, base)
    cdt = autocast_dtype(x.device.type) or x.dtype       # the products' dtype (reference/lowrank.py): casts only if
    x, w1, w2 = x.to(cdt), w1.to(cdt), w2.to(cdt)    # needed (the step's bf16 weight views are not cast again)
    dtype = dtype or x.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"lowrank: dtype must be float32, float16 or bfloat16; got {dtype}")
    lead, D = x.shape[:-1], x.shape[-1]
    w23 = w2 if w2.dim() == 3 else w2.unsqueeze(0)
    y = _lowrank(x.reshape(-1, D).contiguous(), w1.contiguous(), w23.contiguous(),
                 None if base is None else base.contiguous(), dtype)
    shape = (*((w23.shape[0],) if w2.dim() == 3 else ()), *lead, w23.shape[2])
    return y if y.shape == shape else y.view(shape)
