"""Fused gate blend + residual add + RMSNorm/LayerNorm: one Triton kernel forward, one backward.

Math (per row of D features; x: residual in, a / b: the two branches, see reference/gate_norm_residual.py)::

    h  = x + blend(a, b)                      mode "add":     a
                                              "vector" / "row" / "element":  g⊙a + (1−g)⊙b
                                              "weights":      g₀·a + g₁·b
         g = σ(gate) when gate_logits (vector/row/element only); σ(gate + gate_bias) with the logits' bias
         (row [1] / element [D]: the gate projection's bias, added here instead of by a kernel of its own; its
         gradient Σ_rows dlogit finished in the backward's partial-row sums)
    μ  = mean(h) (LayerNorm) or 0 (RMSNorm);  rstd = rsqrt(mean((h−μ)²) + eps)
    x̂  = (h − μ)·rstd;   y = x̂⊙W (+ bias)

Backward (dy on y, dh_in on h, both may arrive; c₁ = mean(x̂⊙W⊙dy), c₂ = mean(W⊙dy) for LayerNorm, else 0)::

    dh = dh_in + rstd·(W⊙dy − x̂·c₁ − c₂)
    dx = dh;  da = g⊙dh;  db = (1−g)⊙dh;  dg = (a−b)⊙dh  (· g(1−g) for logits)
         row gate: Σ over the row;  vector gate: Σ over rows;  weights: dg₀ = Σ a⊙dh, dg₁ = Σ b⊙dh
    dW = Σ_rows dy⊙x̂;  dbias = Σ_rows dy

Layouts: every row tensor is viewed as a contiguous [N, D] matrix (N = product of the leading dims; a
non-contiguous input is copied once). Row gate → [N], element gate → [N, D], vector gate / W / bias → [D],
weights gate → [2]. Saved for backward: h (its output dtype) and stats [1, N] fp32 (rstd) or [2, N] (rstd, μ
for LayerNorm); x̂ is recomputed from h (exact when h is fp32, within one bf16/fp16 rounding otherwise); a and b
only where the gate gradients read them (mode "add" keeps no branch alive: the FFN output, at large 16 MB a layer).

Kernels:
* forward: a [BR, BD] tile per program (BD = next power of two ≥ D, the whole row in registers; BR rows per
  program so that small D still moves a useful tile, shrunk when N is small so that the grid fills the GPU).
* backward: a persistent grid of G programs (a few per SM, never more than the row blocks), each striding over
  row blocks and accumulating the column reductions (dW, dbias, vector-gate grad, weights-gate grads) in fp32
  registers; each program writes one fp32 partial row of only the columns the launch needs ([G, W]:
  dW | dbias when there is a bias | the vector gate's D or the weights gate's 2 columns; ``_part_width``),
  summed inside the kernel in two fixed-order levels (groups of ~√G programs, then the group sums) and stored as
  dW, dbias and the vector / weights gate gradient in their dtypes (``kernels._colsum``: no second launch, no atomics on data, results
  bit-identical run to run).
* launches: ``@triton.autotune`` over num_warps (two candidates per tile size; one config under the
  interpreter), keyed by the tile and every flavour constexpr (MODE, LAYER, GATE_LOGITS, HAS_BIAS, HAS_DH: each
  flavour is its own compiled kernel and gets its own tuned warps); launched through ``kernels._common.launch``
  (once a key is tuned, the JIT function with the cached config directly: the autotuner's per-call dispatch is
  measurable host time at small sizes).
* optional tensors (b, gate, bias, the incoming dh) are passed as None; the constexprs MODE, HAS_BIAS, HAS_DH
  say which are present, so no branch that reads an absent tensor is compiled.

Numerics: every load is upcast to fp32, all arithmetic and every reduction is fp32; outputs are rounded once
on store. Row offsets are int64 (N·D may exceed 2³¹).

Dtypes: a and b share one dtype; x may be that dtype or float32 (an fp32 residual stream); gate, weight, bias
may be a's dtype or float32. h is x's dtype (float32 when ``residual_fp32``), y is a's dtype; every gradient
has its input's dtype.

Autograd and torch.compile: the forward and backward are ``torch.library.custom_op``s (``groundthink::gnr_fwd`` /
``groundthink::gnr_bwd``) with fake implementations and a registered autograd formula, opaque nodes in compiled
models; eager calls run the same implementations and formula through ``kernels._eager`` (an autograd.Function:
no dispatcher, no redispatch, ~half the host time of the ops per fwd+bwd).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._colsum import arrive_tree, counters, finish_columns, finish_rows, tree
from kernels._common import (autotune_configs, cdiv as _cdiv, check_tensor, grid_bucket, launch, new_empty, num_sms,
                             pow2 as _pow2)
from kernels._eager import EagerOp, pick
from reference.gate_norm_residual import check_args

__all__ = ["gate_norm_residual"]

_MODE_ID = {"add": 0, "vector": 1, "row": 2, "element": 3, "weights": 4}
MAX_D = 16384
# Launch heuristics (GPU): elements per forward / backward tile, persistent backward programs per SM
# (None: 4 for rows up to 4096 wide, 2 above).
TUNING = {"fwd_tile": 4096, "bwd_tile": 2048, "bwd_per_sm": None}


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
def _prune_warps(configs, named_args, **kwargs):
    """Keep the two warp counts closest to ~16 fp32 elements per thread and tensor (bounds tuning time)."""
    tile = kwargs["BR"] * kwargs["BD"]
    dist = lambda c: abs(math.log2(max(tile / (32 * c.num_warps), 1e-3) / 16))  # noqa: E731
    return sorted(configs, key=dist)[:2]


@triton.jit
def _row_or_element_gate(p_g, p_gb, o_r, o_c, m_r, m_c, m, SG, MODE: tl.constexpr, GATE_LOGITS: tl.constexpr,
                         HAS_GB: tl.constexpr):
    """The gate of rows o_r [BR] in fp32, σ applied for logits: [BR, 1] for the row gate (MODE 2, p_g: N rows
    SG elements apart) or [BR, BD] for the element gate (MODE 3, p_g: N rows of D, SG elements apart: a column
    slice of a wider product is read in place); HAS_GB: the logits' bias p_gb ([1] row, [D] element) added
    first; m_r [BR] / m_c [BD] / m [BR, BD] masks."""
    if MODE == 2:
        b_g = tl.load(p_g + o_r * SG, mask=m_r, other=0.).to(tl.float32)[:, None]
        if HAS_GB:
            b_g += tl.load(p_gb).to(tl.float32)
    else:
        b_g = tl.load(p_g + o_r[:, None] * SG + o_c[None, :], mask=m, other=0.).to(tl.float32)
        if HAS_GB:
            b_g += tl.load(p_gb + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
    if GATE_LOGITS:
        b_g = 1. / (1. + tl.exp(-b_g))
    return b_g


_TUNE = dict(prune_configs_by={"early_config_prune": _prune_warps}, warmup=5, rep=25) if not INTERPRET else {}


@triton.autotune(
    configs=autotune_configs([triton.Config({}, num_warps=w) for w in (4, 8, 16, 2)]),
    key=["D", "BR", "BD", "MODE", "LAYER", "GATE_LOGITS", "HAS_BIAS", "HAS_GB", "GRID_BUCKET"], **_TUNE,
)
@triton.jit(do_not_specialize=["GRID_BUCKET"])
def _gnr_fwd_kernel(p_x, p_a, p_b, p_g, p_gb, p_w, p_bias, p_h, p_y, p_stats, N, D, SG, eps, GRID_BUCKET,
                    MODE: tl.constexpr, LAYER: tl.constexpr, GATE_LOGITS: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_GB: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """One program: rows [pid·BR, pid·BR + BR) of h and y, and their stats.

    p_x      [N, D]   residual stream in (a's dtype or fp32)
    p_a      [N, D]   first branch
    p_b      [N, D]   second branch (a's dtype); None in mode "add" (MODE 0)
    p_g      gate: [D] vector (MODE 1), [N] row (2), [N, D] element (3), [2] weights (4); None in MODE 0;
             row / element gates: rows SG elements apart
    p_gb     the gate logits' bias: [1] row, [D] element; None unless HAS_GB
    p_w      [D]      norm weight
    p_bias   [D]      norm bias; None unless HAS_BIAS
    p_h      [N, D]   out: x + blend(a, b) (x's dtype, fp32 with residual_fp32)
    p_y      [N, D]   out: norm(h)·w (+ bias), a's dtype
    p_stats  [1 or 2, N] fp32 out: row 0 rstd, row 1 μ (LAYER only)
    N, D     rows, features; eps: the norm's epsilon (> 0); GRID_BUCKET: autotune key only
             (``kernels._common.grid_bucket`` of the ⌈N / BR⌉ row blocks)
    MODE     blend mode id (_MODE_ID); LAYER: LayerNorm (else RMSNorm); GATE_LOGITS: g = σ(gate)
    BR, BD   rows per program, BD = next power of two ≥ D (the whole row in registers)
    """
    pid = tl.program_id(0).to(tl.int64)
    o_r = pid * BR + tl.arange(0, BR).to(tl.int64)
    o_c = tl.arange(0, BD)
    m_r = o_r < N
    m_c = o_c < D
    m = m_r[:, None] & m_c[None, :]
    offs = o_r[:, None] * D + o_c[None, :]

    b_x = tl.load(p_x + offs, mask=m, other=0.).to(tl.float32)
    b_a = tl.load(p_a + offs, mask=m, other=0.).to(tl.float32)
    if MODE == 0:
        b_h = b_x + b_a
    elif MODE == 4:
        b_b = tl.load(p_b + offs, mask=m, other=0.).to(tl.float32)
        b_g0 = tl.load(p_g).to(tl.float32)
        b_g1 = tl.load(p_g + 1).to(tl.float32)
        b_h = b_x + b_g0 * b_a + b_g1 * b_b
    else:
        b_b = tl.load(p_b + offs, mask=m, other=0.).to(tl.float32)
        if MODE == 1:
            b_g = tl.load(p_g + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
            if GATE_LOGITS:
                b_g = 1. / (1. + tl.exp(-b_g))
        else:
            b_g = _row_or_element_gate(p_g, p_gb, o_r, o_c, m_r, m_c, m, SG, MODE, GATE_LOGITS, HAS_GB)
        b_h = b_x + b_g * b_a + (1. - b_g) * b_b
    tl.store(p_h + offs, b_h.to(p_h.dtype.element_ty), mask=m)

    if LAYER:
        b_mean = tl.sum(b_h, axis=1) / D
        b_d = tl.where(m, b_h - b_mean[:, None], 0.)
    else:
        b_d = b_h
    b_rstd = tl.rsqrt(tl.sum(b_d * b_d, axis=1) / D + eps)
    b_w = tl.load(p_w + o_c, mask=m_c, other=0.).to(tl.float32)
    b_y = b_d * b_rstd[:, None] * b_w[None, :]
    if HAS_BIAS:
        b_y += tl.load(p_bias + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
    tl.store(p_y + offs, b_y.to(p_y.dtype.element_ty), mask=m)
    # stats [1 or 2, N] fp32: row 0 rstd, row 1 μ (LayerNorm)
    tl.store(p_stats + o_r, b_rstd, mask=m_r)
    if LAYER:
        tl.store(p_stats + N + o_r, b_mean, mask=m_r)


@triton.autotune(
    configs=autotune_configs([triton.Config({}, num_warps=w) for w in (8, 4, 16, 2)]),
    key=["D", "BR", "BD", "MODE", "LAYER", "GATE_LOGITS", "HAS_DH", "HAS_BIAS", "HAS_GB", "GRID_BUCKET"], **_TUNE,
)
@triton.jit(do_not_specialize=["GRID_BUCKET"])
def _gnr_bwd_kernel(p_dhin, p_dy, p_h, p_a, p_b, p_g, p_gb, p_w, p_stats,
                    p_dx, p_da, p_db, p_dg, p_part, p_dw, p_dbias, p_dgb, p_count,
                    N, D, SG, n_blocks, n_progs, GS, NG, GRID_BUCKET,
                    MODE: tl.constexpr, LAYER: tl.constexpr, GATE_LOGITS: tl.constexpr,
                    HAS_DH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GB: tl.constexpr, BR: tl.constexpr,
                    BD: tl.constexpr, BP: tl.constexpr):
    """A persistent program: row blocks pid, pid + n_progs, … of the row gradients, and one partial row of the
    column reductions.

    p_dhin   [N, D]   incoming gradient on h; None unless HAS_DH
    p_dy     [N, D]   incoming gradient on y (zeros when y got none)
    p_h      [N, D]   saved h (x̂ is recomputed from it and the stats)
    p_a      [N, D]   first branch (read for the gate gradients); None in MODE 0
    p_b      [N, D]   second branch; None in MODE 0
    p_g      gate as in the forward ([D], [N], [N, D] or [2]; row / element rows SG elements apart); None in MODE 0
    p_gb     the gate logits' bias as in the forward; None unless HAS_GB
    p_w      [D]      norm weight
    p_stats  [1 or 2, N] fp32: rstd (and μ for LAYER)
    p_dx     [N, D]   out: dx (x's dtype)
    p_da     [N, D]   out: da
    p_db     [N, D]   out: db; None in MODE 0
    p_dg     out: gate grad, the gate's shape: row [N] (MODE 2), element [N, D] (MODE 3), vector [D] (MODE 1) or
             weights [2] (MODE 4; the last two are column reductions, finished from p_part); None in MODE 0
    p_part   [n_progs, W] fp32 workspace, one row per program: dW [D] | dbias [D] (HAS_BIAS) | the gate's column
             reductions from column C_G: vector [D] (MODE 1), weights [2] (MODE 4), the logits' bias (HAS_GB:
             [1] row, [D] element); W = C_G + their width
             (derived here from D and the constexprs, as ``_part_width`` does for the allocation)
    p_dw     [D]      out: dW (the weight's dtype), the fixed-order sum of the partial rows
    p_dbias  [D]      out: dbias; None unless HAS_BIAS
    p_dgb    out: the logits' bias gradient (Σ of the logit gradients over rows), p_gb's shape; None unless HAS_GB
    p_count  [1 + NG] int32 arrival counters (zero between launches; kernels._colsum)
    N, D     rows, features; n_blocks = ⌈N / BR⌉ row blocks; n_progs programs in NG groups of GS (the final sums);
             GRID_BUCKET: autotune key only (``kernels._common.grid_bucket`` of n_blocks: the work per program)
    MODE, LAYER, GATE_LOGITS as in the forward; HAS_DH: p_dhin is given; HAS_BIAS: the norm has a bias;
    BR, BD: rows per block, row width; BP: partial rows per step of the final sum
    """
    pid = tl.program_id(0)
    o_c = tl.arange(0, BD)
    m_c = o_c < D
    b_w = tl.load(p_w + o_c, mask=m_c, other=0.).to(tl.float32)
    b_acc_dw = tl.zeros([BD], dtype=tl.float32)
    b_acc_db = tl.zeros([BD], dtype=tl.float32)
    b_acc_g0 = tl.zeros([BD], dtype=tl.float32)
    b_acc_g1 = tl.zeros([BD], dtype=tl.float32)
    if MODE == 1:
        b_gv = tl.load(p_g + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
        if GATE_LOGITS:
            b_gv = 1. / (1. + tl.exp(-b_gv))
    if MODE == 4:
        b_g0 = tl.load(p_g).to(tl.float32)
        b_g1 = tl.load(p_g + 1).to(tl.float32)

    for blk in range(pid, n_blocks, n_progs):
        o_r = tl.arange(0, BR).to(tl.int64) + blk * BR  # int64 (blk·BR < N fits int32)
        m_r = o_r < N
        m = m_r[:, None] & m_c[None, :]
        offs = o_r[:, None] * D + o_c[None, :]

        b_h = tl.load(p_h + offs, mask=m, other=0.).to(tl.float32)
        b_dy = tl.load(p_dy + offs, mask=m, other=0.).to(tl.float32)
        b_rstd = tl.load(p_stats + o_r, mask=m_r, other=0.)
        if LAYER:
            b_mean = tl.load(p_stats + N + o_r, mask=m_r, other=0.)
            b_xh = tl.where(m, (b_h - b_mean[:, None]) * b_rstd[:, None], 0.)
        else:
            b_xh = b_h * b_rstd[:, None]
        b_wdy = b_w[None, :] * b_dy
        b_c1 = tl.sum(b_xh * b_wdy, axis=1) / D
        if LAYER:
            b_c2 = tl.sum(b_wdy, axis=1) / D
            b_dh = (b_wdy - b_xh * b_c1[:, None] - b_c2[:, None]) * b_rstd[:, None]
        else:
            b_dh = (b_wdy - b_xh * b_c1[:, None]) * b_rstd[:, None]
        if HAS_DH:
            b_dh += tl.load(p_dhin + offs, mask=m, other=0.).to(tl.float32)
        b_acc_dw += tl.sum(b_dy * b_xh, axis=0)
        if HAS_BIAS:
            b_acc_db += tl.sum(b_dy, axis=0)

        tl.store(p_dx + offs, b_dh.to(p_dx.dtype.element_ty), mask=m)
        if MODE == 0:
            tl.store(p_da + offs, b_dh.to(p_da.dtype.element_ty), mask=m)
        elif MODE == 4:
            b_a = tl.load(p_a + offs, mask=m, other=0.).to(tl.float32)
            b_b = tl.load(p_b + offs, mask=m, other=0.).to(tl.float32)
            tl.store(p_da + offs, (b_g0 * b_dh).to(p_da.dtype.element_ty), mask=m)
            tl.store(p_db + offs, (b_g1 * b_dh).to(p_db.dtype.element_ty), mask=m)
            b_acc_g0 += tl.sum(b_a * b_dh, axis=0)
            b_acc_g1 += tl.sum(b_b * b_dh, axis=0)
        else:
            b_a = tl.load(p_a + offs, mask=m, other=0.).to(tl.float32)
            b_b = tl.load(p_b + offs, mask=m, other=0.).to(tl.float32)
            if MODE == 1:
                b_g = b_gv
            else:
                b_g = _row_or_element_gate(p_g, p_gb, o_r, o_c, m_r, m_c, m, SG, MODE, GATE_LOGITS, HAS_GB)
            tl.store(p_da + offs, (b_g * b_dh).to(p_da.dtype.element_ty), mask=m)
            tl.store(p_db + offs, ((1. - b_g) * b_dh).to(p_db.dtype.element_ty), mask=m)
            b_dg = (b_a - b_b) * b_dh
            if MODE == 1:
                b_acc_g0 += tl.sum(b_dg, axis=0)
            elif MODE == 2:
                b_dgr = tl.sum(b_dg, axis=1)
                if GATE_LOGITS:
                    b_gr = tl.sum(b_g, axis=1)  # [BR, 1] → [BR]
                    b_dgr = b_dgr * b_gr * (1. - b_gr)
                tl.store(p_dg + o_r, b_dgr.to(p_dg.dtype.element_ty), mask=m_r)
                if HAS_GB:     # the bias's gradient: Σ over rows, kept in column 0 of the accumulator
                    b_acc_g0 += tl.where(o_c == 0, tl.sum(tl.where(m_r, b_dgr, 0.), axis=0), 0.)
            else:
                if GATE_LOGITS:
                    b_dg = b_dg * b_g * (1. - b_g)
                tl.store(p_dg + offs, b_dg.to(p_dg.dtype.element_ty), mask=m)
                if HAS_GB:
                    b_acc_g0 += tl.sum(b_dg, axis=0)

    C_G = D                            # the partial row's layout (``_part_width``)
    if HAS_BIAS:
        C_G = 2 * D
    W = C_G
    if MODE == 1:
        W = C_G + D
    if MODE == 4:
        W = C_G + 2
    if HAS_GB:
        if MODE == 2:
            W = C_G + 1
        else:
            W = C_G + D
    p_row = p_part + pid.to(tl.int64) * W
    tl.store(p_row + o_c, b_acc_dw, mask=m_c)
    if HAS_BIAS:
        tl.store(p_row + D + o_c, b_acc_db, mask=m_c)
    if MODE == 1:
        if GATE_LOGITS:
            b_acc_g0 = b_acc_g0 * tl.sum(b_gv * (1. - b_gv), axis=0)
        tl.store(p_row + C_G + o_c, b_acc_g0, mask=m_c)
    if MODE == 4:
        tl.store(p_row + C_G, tl.sum(b_acc_g0, axis=0))
        tl.store(p_row + C_G + 1, tl.sum(b_acc_g1, axis=0))
    if HAS_GB:
        if MODE == 2:
            tl.store(p_row + C_G + o_c, b_acc_g0, mask=o_c < 1)
        else:
            tl.store(p_row + C_G + o_c, b_acc_g0, mask=m_c)
    if arrive_tree(p_part, W, p_count, pid, n_progs, GS, NG, 0, W, 1, 0, BP, BD):
        finish_columns(p_part, GS * W, NG, p_dw, 0, D, BP, BD)
        if HAS_BIAS:
            finish_columns(p_part + D, GS * W, NG, p_dbias, 0, D, BP, BD)
        if MODE == 1:
            finish_columns(p_part + C_G, GS * W, NG, p_dg, 0, D, BP, BD)
        if MODE == 4:
            finish_columns(p_part + C_G, GS * W, NG, p_dg, 0, 2, BP, BD)
        if HAS_GB:
            if MODE == 2:
                finish_columns(p_part + C_G, GS * W, NG, p_dgb, 0, 1, BP, BD)
            else:
                finish_columns(p_part + C_G, GS * W, NG, p_dgb, 0, D, BP, BD)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
def _block_d(D: int) -> int:
    return _pow2(D)


def _part_width(D: int, mode_id: int, has_bias: bool, has_gb: bool = False) -> int:
    """W, the width of a backward partial row: only what the launch sums, dW [D], dbias [D] with a bias, then
    (from column C_G = D or 2·D) the vector gate's D or the weights gate's 2 columns. The kernel derives the same
    layout from D and its constexprs: C_G and W passed as arguments cost registers (sm_90, Triton 3.9, mode add
    D2048 at 8 warps: 64 → 74, 3 programs per SM fit instead of 4)."""
    if has_gb:          # the gate logits' bias: 1 column (row gate) or D (element gate)
        return (2 * D if has_bias else D) + (1 if mode_id == 2 else D)
    return (2 * D if has_bias else D) + {1: D, 4: 2}.get(mode_id, 0)


def _rows_per_program(N: int, BD: int, tile: int, min_programs: int) -> int:
    """Rows per program: a tile of ~``tile`` elements, fewer when that would leave the grid too small."""
    BR = max(1, tile // BD)
    while BR > 1 and _cdiv(N, BR) < min_programs:
        BR //= 2
    return BR


def _gate_rows(gate, mode_id: int):
    """(gate, SG): the gate as the kernels read it and the element distance of its rows. A row ([..., 1]) or
    element ([..., D], unit column stride) gate whose rows are evenly spaced — a column slice of a wider product,
    e.g. the gate logits of ``HybridBlock``'s in_proj + gate GEMM — is read in place; anything else is made
    contiguous (SG = its row width). Other modes: contiguous, SG unused (0)."""
    if gate is None:
        return None, 0
    if mode_id in (2, 3) and gate.dim() >= 2 and (mode_id == 2 or gate.shape[-1] == 1 or gate.stride(-1) == 1):
        lead = [(n, st) for n, st in zip(gate.shape[:-1], gate.stride()[:-1]) if n != 1]
        sg = lead[-1][1] if lead else gate.shape[-1]
        if all(lead[i][1] == lead[i + 1][1] * lead[i + 1][0] for i in range(len(lead) - 1)):
            return gate, sg
    g2 = gate if gate.is_contiguous() else gate.contiguous()
    return g2, (g2.shape[-1] if mode_id in (2, 3) else 0)


def _fwd_impl(x, a, b, gate, weight, bias, mode, norm, eps, gate_logits, residual_fp32, gate_bias=None):
    """Returns h, y and stats ([1, N] rstd, or [2, N] rstd and μ for LayerNorm)."""
    D = x.shape[-1]
    N = x.numel() // D if D else 0
    mode_id = _MODE_ID[mode]
    layer = norm == "layer"
    dev = x.device
    h = new_empty(x.shape, torch.float32 if residual_fp32 else x.dtype, dev)
    y = new_empty(x.shape, a.dtype, dev)
    stats = new_empty((2 if layer else 1, N), torch.float32, dev)
    x2 = x if x.is_contiguous() else x.contiguous()
    a2 = a if a.is_contiguous() else a.contiguous()
    b2 = b if b is None or b.is_contiguous() else b.contiguous()
    g2, SG = _gate_rows(gate, mode_id)
    w2 = weight if weight.is_contiguous() else weight.contiguous()
    bias2 = bias if bias is None or bias.is_contiguous() else bias.contiguous()
    gb = gate_bias if gate_bias is None or gate_bias.is_contiguous() else gate_bias.contiguous()
    if N > 0:
        BD = _block_d(D)
        if INTERPRET:
            BR = min(8, _pow2(N))
        else:
            BR = _rows_per_program(N, BD, TUNING["fwd_tile"], 2 * num_sms(dev))
        logits = gate_logits and mode_id in (1, 2, 3)
        bucket = grid_bucket(_cdiv(N, BR))
        launch(_gnr_fwd_kernel)[(_cdiv(N, BR),)](x2, a2, b2, g2, gb, w2, bias2, h, y, stats, N, D, SG, eps, bucket,
                                                 MODE=mode_id, LAYER=layer, GATE_LOGITS=logits,
                                                 HAS_BIAS=bias is not None, HAS_GB=gb is not None, BR=BR, BD=BD)
    return h, y, stats


def _bwd_impl(dh, dy, h, a, b, gate, weight, bias, stats, mode, norm, gate_logits, x_dtype, gate_bias=None):
    """Gradients (dx, da, db, dgate, dweight, dbias, dgate_bias); None where the input is None. The small
    reductions are separate tensors (custom-op outputs may not alias)."""
    D = h.shape[-1]
    N = h.numel() // D if D else 0
    mode_id = _MODE_ID[mode]
    layer = norm == "layer"
    dev = h.device
    a = a if a.is_contiguous() else a.contiguous()
    b = b if b is None or b.is_contiguous() else b.contiguous()
    gate, SG = _gate_rows(gate, mode_id)
    gb = gate_bias if gate_bias is None or gate_bias.is_contiguous() else gate_bias.contiguous()
    weight = weight if weight.is_contiguous() else weight.contiguous()
    dx = new_empty(h.shape, x_dtype, dev)
    da = new_empty(h.shape, a.dtype, dev)
    db = new_empty(h.shape, a.dtype, dev) if b is not None else None
    dg = new_empty(gate.shape, gate.dtype, dev) if gate is not None else None
    dw = new_empty(weight.shape, weight.dtype, dev)
    dbias = new_empty(bias.shape, bias.dtype, dev) if bias is not None else None
    dgb = new_empty(gb.shape, gb.dtype, dev) if gb is not None else None
    if N == 0:
        for t in (db, dg, dw, dbias, dgb):
            if t is not None:
                t.zero_()
    else:
        dy = dy if dy.is_contiguous() else dy.contiguous()
        dh = dh if dh is None or dh.is_contiguous() else dh.contiguous()
        BD = _block_d(D)
        if INTERPRET:
            BR, n_progs = min(4, _pow2(N)), 2
        else:
            sms = num_sms(dev)
            per_sm = TUNING["bwd_per_sm"] or (4 if BD <= 4096 else 2)
            BR = _rows_per_program(N, BD, TUNING["bwd_tile"], sms * per_sm)
            n_progs = sms * per_sm
        n_blocks = _cdiv(N, BR)
        n_progs = max(1, min(n_progs, n_blocks))
        part = new_empty((n_progs, _part_width(D, mode_id, bias is not None, gb is not None)), torch.float32, dev)
        logits = gate_logits and mode_id in (1, 2, 3)
        bucket = grid_bucket(n_blocks)
        GS, NG = tree(n_progs)
        launch(_gnr_bwd_kernel)[(n_progs,)](
            dh, dy, h, None if mode_id == 0 else a, b, gate, gb, weight, stats, dx, da, db, dg, part, dw, dbias, dgb,
            counters(dev, 1, NG), N, D, SG, n_blocks, n_progs, GS, NG, bucket, MODE=mode_id, LAYER=layer,
            GATE_LOGITS=logits, HAS_DH=dh is not None, HAS_BIAS=bias is not None, HAS_GB=gb is not None, BR=BR, BD=BD,
            BP=finish_rows(BD))
    return dx, da, db, dg, dw, dbias, dgb


# ----------------------------------------------------------------------------------------------------------
# torch.library custom ops and their autograd formula (eager: the same formula through kernels._eager)
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("groundthink::gnr_fwd", mutates_args=())
def _gnr_fwd_op(x: torch.Tensor, a: torch.Tensor, b: Optional[torch.Tensor], gate: Optional[torch.Tensor],
                weight: torch.Tensor, bias: Optional[torch.Tensor], mode: str, norm: str, eps: float,
                gate_logits: bool, residual_fp32: bool, gate_bias: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(x, a, b, gate, weight, bias, mode, norm, eps, gate_logits, residual_fp32, gate_bias)


@_gnr_fwd_op.register_fake
def _(x, a, b, gate, weight, bias, mode, norm, eps, gate_logits, residual_fp32, gate_bias=None):
    D = x.shape[-1]
    N = x.numel() // D
    h = x.new_empty(x.shape, dtype=torch.float32 if residual_fp32 else x.dtype)
    y = a.new_empty(x.shape)
    stats = x.new_empty((2 if norm == "layer" else 1, N), dtype=torch.float32)
    return h, y, stats


@torch.library.custom_op("groundthink::gnr_bwd", mutates_args=())
def _gnr_bwd_op(dh: Optional[torch.Tensor], dy: torch.Tensor, h: torch.Tensor, a: torch.Tensor,
                b: Optional[torch.Tensor], gate: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], stats: torch.Tensor, mode: str, norm: str,
                gate_logits: bool, x_dtype: torch.dtype, gate_bias: Optional[torch.Tensor] = None
                ) -> list[torch.Tensor]:
    dx, da, db, dg, dw, dbias, dgb = _bwd_impl(dh, dy, h, a, b, gate, weight, bias, stats, mode, norm,
                                               gate_logits, x_dtype, gate_bias)
    empty = lambda: h.new_empty((0,))  # noqa: E731  (distinct placeholders: outputs may not alias)
    return [dx, da, empty() if db is None else db, empty() if dg is None else dg, dw,
            empty() if dbias is None else dbias, empty() if dgb is None else dgb]


@_gnr_bwd_op.register_fake
def _(dh, dy, h, a, b, gate, weight, bias, stats, mode, norm, gate_logits, x_dtype, gate_bias=None):
    empty = lambda: h.new_empty((0,))  # noqa: E731
    return [h.new_empty(h.shape, dtype=x_dtype), a.new_empty(h.shape),
            empty() if b is None else a.new_empty(h.shape),
            empty() if gate is None else gate.new_empty(gate.shape),
            weight.new_empty(weight.shape), empty() if bias is None else bias.new_empty(bias.shape),
            empty() if gate_bias is None else gate_bias.new_empty(gate_bias.shape)]


def _setup_context(ctx, inputs, output):
    x, a, b, gate, weight, bias, mode, norm, eps, gate_logits, residual_fp32, *rest = inputs
    gate_bias = rest[0] if rest else None
    h, _, stats = output
    ctx.set_materialize_grads(False)   # no zero tensors for unused outputs (stats; the last block's h)
    if mode == "add":          # the backward reads only a's dtype (da's): keep a 0-element tensor of it, not the
        # branch (the kernel gets None for it)
        a = a.new_empty((0,))
    ctx.save_for_backward(h, a, b, gate, weight, bias, stats, gate_bias)
    ctx.cfg = (mode, norm, gate_logits, x.dtype, len(inputs))


def _backward(ctx, dh, dy, _dstats):
    h, a, b, gate, weight, bias, stats, gate_bias = ctx.saved_tensors
    mode, norm, gate_logits, x_dtype, n_in = ctx.cfg
    if dy is None:
        dy = torch.zeros_like(h, dtype=a.dtype)
    bwd = pick(_gnr_bwd_op, _bwd_impl, dy)
    dx, da, db, dg, dw, dbias, dgb = bwd(dh, dy, h, a, b, gate, weight, bias, stats, mode, norm, gate_logits,
                                         x_dtype, gate_bias)
    return (dx, da, db if b is not None else None, dg if gate is not None else None, dw,
            dbias if bias is not None else None, None, None, None, None, None,
            dgb if gate_bias is not None else None)[:n_in]


_gnr = EagerOp("GateNormResidual", _gnr_fwd_op, _fwd_impl, _setup_context, _backward)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def _validate(x, a, b, gate, weight, bias, mode, norm, eps, gate_bias=None, gate_logits=False):
    check_tensor("x", x)
    dev = x.device
    check_tensor("a", a, device=dev)
    for name, t in (("b", b), ("gate", gate), ("bias", bias), ("gate_bias", gate_bias)):
        if t is not None:
            check_tensor(name, t, device=dev)
    check_tensor("weight", weight, device=dev)
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension (…, D); got shape {tuple(x.shape)}")
    check_args(x, a, b, gate, mode, weight, bias, norm, eps, gate_bias, gate_logits)
    D = x.shape[-1]
    if not 1 <= D <= MAX_D:
        raise ValueError(f"x has feature dimension D={D}; supported 1..{MAX_D}")
    adt = a.dtype
    if b is not None and b.dtype != adt:
        raise TypeError(f"dtype mismatch: b has dtype {b.dtype} but a has {adt} (they must match)")
    if x.dtype not in (adt, torch.float32):
        raise TypeError(f"dtype mismatch: x has dtype {x.dtype}; expected a's dtype {adt} or torch.float32")
    for name, t in (("gate", gate), ("weight", weight), ("bias", bias), ("gate_bias", gate_bias)):
        if t is not None and t.dtype not in (adt, torch.float32):
            raise TypeError(f"dtype mismatch: {name} has dtype {t.dtype}; expected a's dtype {adt} or "
                            "torch.float32")


def gate_norm_residual(x, a, b=None, gate=None, *, weight, bias=None, mode: str = "add", norm: str = "rms",
                       eps: float = 1e-5, gate_logits: bool = False, residual_fp32: bool = False,
                       gate_bias=None):
    """``(h, y)``: h = x + blend(a, b), y = norm(h)·weight (+ bias). See the module docstring and
    reference/gate_norm_residual.py for the semantics of ``mode``, ``norm``, ``gate_logits``, ``residual_fp32``,
    ``gate_bias`` (the logits' bias, added in the kernel; its gradient summed there)."""
    _validate(x, a, b, gate, weight, bias, mode, norm, eps, gate_bias, gate_logits)
    eps = float(eps)
    gate_logits, residual_fp32 = bool(gate_logits), bool(residual_fp32)
    if gate_bias is None:
        h, y, _ = _gnr(x, a, b, gate, weight, bias, mode, norm, eps, gate_logits, residual_fp32)
    else:
        h, y, _ = _gnr(x, a, b, gate, weight, bias, mode, norm, eps, gate_logits, residual_fp32, gate_bias)
    return h, y
