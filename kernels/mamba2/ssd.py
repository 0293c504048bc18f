"""Mamba-2 SSD chunk scan in Triton: one "walk" kernel forward, one walk kernel + one reduction kernel backward.

    mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                              initial_states=None, return_final_states=False) -> y or (y, final_states)

the signature and layouts of ``reference.mamba2.mamba_chunk_scan`` (mamba-ssm's ``mamba_chunk_scan_combined``):
x ``[b, l, h, p]``, dt ``[b, l, h]``, A ``[h]``, B, C ``[b, l, g, n]``, D ``[h]`` or ``[h, p]``, dt_bias ``[h]``,
initial/final states ``[b, h, p, n]`` (final states fp32). ``z`` (gating), ``seq_idx``, ``cu_seqlens`` and a
non-default ``dt_limit`` are not supported (a clear error). Any strides (the model's x, B, C are transposed
views, dt a column slice: no copy); y and the gradients are contiguous, in their input's dtype (x's, B's and
C's are written into their producer's gradient buffer instead when it offers one: ``kernels._slots``).

Math (per sequence b and head h, group g = h // (H/G); Δ_t = softplus(dt_t + dt_bias) or dt_t + dt_bias,
a_t = Δ_t·A_h ≤ 0; state S ∈ R^{P×N}):

    S_t = exp(a_t) S_{t-1} + Δ_t x_t B_tᵀ,        y_t = S_t C_t + D ⊙ x_t

Chunked over BT rows (the kernel's own tile; ``chunk_size`` is validated and ignored: the result does not depend
on it mathematically, only the rounding does). Inside a chunk, c_t = Σ_{j≤t} a_j (chunk-local; fp32, in two parts:
see Numerics), c_L = c of the last row, S0 the state entering the chunk:

    y   = (C Bᵀ ⊙ L)(Δ ⊙ x) + exp(c) ⊙ (C S0ᵀ) + D x,     L_ts = exp(c_t − c_s) for s ≤ t, else 0
    S_L = exp(c_L) S0 + (x ⊙ Δ exp(c_L − c))ᵀ B

Every decay's exponent is ≤ 0 (differences of a scalar cumsum of non-positive terms inside one chunk; clamped at 0
against rounding; the forward's exp(c_lo) factors ≤ e^{BT/1024}, see Numerics), so any decay is safe (a_t = −16 per
step underflows to the correct 0).

Forward (``_ssd_fwd_kernel``): one program per (p-block, batch·head) walks its sequence chunk by chunk with the
[BP, N] fp32 state in registers; per chunk three dots (C Bᵀ, the masked scores times x, C S0ᵀ) and one for the
state. One launch.

Backward (``_ssd_bwd_kernel`` + ``_ssd_reduce_kernel``): the forward saves only its inputs (by default). Each
program walks its chunks in reverse carrying dS = ∂L/∂S at the chunk end (dS_final, or 0, at the end), in groups
of CK chunks: a group's chunk-entry states S0 are re-walked forward from a checkpoint into a transient fp32
workspace first. One group (CK = all chunks: each state computed once, b·H·NPB·BP·BN·4 bytes a chunk, BN the
padded N) while that fits ``TUNING["ws_bytes"]``; else checkpoints every CK ≈ √chunks chunks, stored by a first forward pass (each state
computed twice, NCK + CK states a program); with ``TUNING["save"]`` the forward stores the state entering each of its
chunks and those are the checkpoints (no first pass; groups of fwd BT / bwd BT chunks). With R = dy xᵀ (the p-block's
share), Z = R ⊙ L ⊙ Δ_s, U = B dSᵀ, V = C S0ᵀ:

    dx  = ((C Bᵀ ⊙ L) ⊙ Δ_s)ᵀ dy + (Δ e) ⊙ U + D dy                    e_s = exp(c_L − c_s)
    dC  = Z B + exp(c) ⊙ (dy S0)              dB = Zᵀ C + (Δ e) ⊙ (x dS)
    dS0 = exp(c_L) dS + (dy ⊙ exp(c))ᵀ C      (carried to the previous chunk; d initial_states at the start)
    dΔ_s = Σ_t (C Bᵀ ⊙ L ⊙ R)_ts + e_s (x_s · U_s) + A·da_s
    da_j = Σ_{s<j≤t} K_ts + Σ_{t≥j} exp(c_t)(dy_t · V_t) + Σ_{s<j} Δ_s e_s (x_s · U_s) + exp(c_L)⟨S0, dS⟩

with K = C Bᵀ ⊙ L ⊙ R ⊙ Δ_s: da_j sums exactly the terms whose decay contains a_j (pairs spanning j inside the
chunk — an exclusive cumsum along s, no rowsum − colsum cancellation —, earlier state read here, state written
here read later, state passing through). ddt = dΔ ⊙ softplus'(dt + dt_bias), ddt_bias = Σ ddt, dD = Σ dy ⊙ x,
dA = Σ_j Δ_j da_j (summed per program as a [BT] vector over the chunks, reduced once at the end).
The two exclusive sums (Σ_{s<j}) are the inclusive cumsums read one column / row earlier — Σ_{s<j} K_ts as the
cumsum along s of K at column j − 1 (``tl.gather`` along the [BT, BT] tile's rows), the written terms' cumsum at
row j − 1 —, not "inclusive cumsum − own term": that difference cancels where the own term (the diagonal and near
pairs, L ≈ 1) outweighs the sum before it, and the rounding it leaves in every da_j adds coherently in
Σ_j Δ_j da_j: dA was off by up to 5.5e-5 relative on draws with one head and strong decay, where autograd through
the fp32 recurrence is ~1e-6 (the same draws now ≤ 1.3e-6). Session 14's term-by-term A·dA (each term times its own exponent, divided by A) was as
precise and 16–23 % more instructions in the reverse step; H100 run 19: 0.2603 / 0.9407 ms graph fwd+bwd at the
small / large model vs 0.246 / 0.8642 with this form — removed (notes/mamba2.md, session 15).
``TUNING["lean"]`` ≥ 1 takes the state term from dC's state part instead of the dot V:
exp(c_t)(dy_t · V_t) = Σ_n C_tn (exp(c_t) dy_t S0)_n (one dot fewer a chunk; the same sums in another order).

Reductions, deterministic (no atomics): dB, dC are sums over the heads of a group and over p-blocks, ddt over
p-blocks, dA, ddt_bias, dD over batch (and time, summed inside each program): the walk kernel writes fp32 partials
(dB, dC ``[b·l, h·NPB, n]``, ddt ``[b·l, h, NPB]``, per-program scalars, dD ``[b, h, p]``), the reduction kernel
sums them in a fixed order and stores every gradient in its input's dtype. Two launches backward.

Numerics: the decays' exponents from a split cumsum (``_split_cumsum``): a = max(Δ A, −128) (any exponent holding
a clamped row underflows to 0 either way), a_hi = a rounded down to a multiple of 2⁻¹⁰, a_lo = a − a_hi ∈ [0, 2⁻¹⁰)
(exact); c_hi = cumsum(a_hi) is exact in fp32 (|c_hi| ≤ 128·BT ≤ 2¹³ at BT ≤ 64: 23 bits, any summation order),
c_lo = cumsum(a_lo) ≤ BT·2⁻¹⁰ (absolute error ~1e-8). Each exponent of a difference — c_L − c_t, c_t − c_s — is
(exact difference of c_hi) + (difference of c_lo): its absolute error stays ~1e-8 however large |c| grows inside
the chunk. (A plain fp32 cumsum's partial sums carry rounding of order ulp(|c|)·√t — |c| reaches ~100 in a 64-row
chunk at ordinary decays, ulp(100) = 7.6e-6 — which the differences keep: the final state was 1.2e-5 relative off
at 64-row chunks, 2.4e-5 / 4.8e-5 at 32 / 64 rows with strong decay.) Per chunk: one more [BT] cumsum, a min and
a max over [BT] and a few [BT] ops; the forward's pair tile and state weights hold exp of the c_hi differences
alone (the exp(±c_lo) factors scale Δ_s, the output's rows and the new state: no tile op more than before), the
backward's pair tile (bwd BT rows) the full split exponent (``_pair_decay``: two more elementwise ops on the tile).
Elementwise math on fp32 upcasts; cumsums, states, every accumulation fp32; ``tl.dot`` with fp32 accumulation:
fp32 inputs on fp32 operands at input_precision "ieee"; fp16/bf16 inputs (``TUNING["dot"]`` 1) the two dots of
input tiles (C Bᵀ, dy xᵀ) on the inputs themselves (exact products), the others on fp32 operands at "tf32"
(``PRECISION``; ``TUNING["prec"]`` overrides, e.g. "tf32x3"); outputs rounded once.
Softplus as mamba-ssm: identity above 20; max(v, 0) + log1p(u), u = exp(−|v|), with log1p(u) = log(w)·u/(w − 1),
w = 1 + u rounded (u where w rounds to 1): exact to fp32 rounding at any v. (log(1 + u) lost digits for v in about
(−9.2, −5): Δ's relative error up to 5.9e-4 near −9.2, 6.8e-5 at −7 — dt ≈ 1e-3, the model's dt_min; mamba-ssm's
softplus does the same.)

Tiles: BT rows (``TUNING["fwd_bt"]``, ``["bwd_bt"]``: the backward holds more live tiles and takes 16 rows; see
TUNING's comment for the register counts), BP = the p-block (``TUNING["bp"]``: None = all of P up to 64; smaller
blocks give more programs), BN = next pow2 ≥ N (every tile ≥ 16 for the dots). Under the interpreter BT = 16.

torch.library: ``groundthink::mamba2_fwd`` / ``groundthink::mamba2_bwd`` with fake implementations and one
autograd formula (torch.compile); eager calls run the same implementations through ``kernels._eager.EagerOp``. The
forward op's outputs: y, the final states (empty unless asked), the saved chunk-entry states (empty unless save).
CUDA-graph safe: no host syncs; outputs and workspaces from ``torch.empty`` (``new_empty``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._common import (autotune_configs, cdiv as _cdiv, check_tensor, grid_bucket, launch, new_empty,
                             pow2 as _pow2)
from kernels._slots import grad_slot
from kernels._eager import EagerOp, pick
from reference.mamba2 import _check

__all__ = ["mamba_chunk_scan_combined", "TUNING"]

# fwd_bt / bwd_bt: rows per chunk of the forward / backward walk (fwd None: 64 for states of ≤ 2048 elements, else
# 32); bp: p-block (None: P up to 64); prec: the fp32 dots' input_precision for fp16/bf16 inputs (None: PRECISION's;
# fp32 inputs always "ieee"); dot: DOT of the walk kernels for half inputs (0: every dot on fp32 operands, 1: the
# dots of two input tiles in the input dtype — exact —, 2: every dot in the input dtype); ckpt: chunks per
# checkpoint of the backward's state re-walk (None: all of them — one group, each state computed once — while the
# workspace of every chunk-entry state fits ws_bytes, else ≈ √chunks: NCK + CK states a program, each state
# computed twice); fwd_warps / bwd_warps: None = autotuned (read at import).
# Offline sm_90 compile (Triton 3.9, bf16, DOT 1, ptxas registers / spill bytes; session 13): forward P = N = 64
# BT 32 252/0 (4 warps), 201/0 (8); P = N = 32 BT 64 255/72 (4), 251/0 (8). Backward BT 16, 4 / 8 warps (1 stage):
# P = N = 64 255/584, 255/184 (lean 2: 280, 32); P = N = 32 255/160, 255/88 (lean 2: 136, 16); BT 32 (lean 2)
# 232–1,200. The mma layouts of the backward's chained dots at 4 warps are [4, 1] and [2, 2] (16-row tiles partly
# replicated across warps); 1 or 2 warps spill more (P = N = 32, 2 warps: 280), not less. At 255 registers 4 warps
# give 2 programs a SM, 8 warps 1, 2 warps 4 (bwd_cfg).
# lean: the backward's reverse step (0: as written in the module docstring; 1: without the dot V = C S0ᵀ, the
# state's share of dy·y taken from dC's state part; 2: that and the next chunk's inputs loaded a step ahead; see
# _ssd_bwd_kernel's LEAN; default 2: H100 run 17, graph fwd+bwd 0.258 / 0.818 ms at the small / large model vs
# lean 0's 0.318 / 1.051 and mamba-ssm's 0.269 / 0.701, same run); bwd_cfg: None (the backward walk autotuned over its configs) or (num_warps, num_stages),
# launched as is (the sweep's way to try configs outside the autotuner's list, e.g. (2, 1): 4 programs a SM at 255
# registers — the small model's 512 programs in one wave instead of two); save: the forward stores its chunk-entry
# states (fp32, b·H·NPB·cdiv(T, fwd BT)·BP·BN·4 bytes kept for the backward: 128 MiB at the large model) and the
# backward takes them as its checkpoints — no checkpoint pass, groups of fwd BT / bwd BT chunks (1 re-walk step a
# group at the large model, 3 at the small; with fwd_bt = bwd_bt none: the chain is the reverse steps alone). Only
# when a gradient is needed and the forward's rows are a multiple of the backward's.
TUNING = {"fwd_bt": None, "bwd_bt": 16, "bp": None, "prec": None, "dot": 1, "ckpt": None, "ws_bytes": 128 << 20,
          "fwd_warps": None, "bwd_warps": None, "lean": 2, "bwd_cfg": None,
          "save": False}
PRECISION = {torch.float32: "ieee", torch.float16: "tf32", torch.bfloat16: "tf32"}


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else (TUNING["prec"] or PRECISION[dtype])


def _dot_mode(dtype: torch.dtype) -> int:
    """DOT of the walk kernels: 0 for fp32 inputs (and bf16 under the interpreter, whose bf16 dots are wrong),
    else ``TUNING["dot"]``."""
    return 0 if dtype == torch.float32 or (dtype == torch.bfloat16 and INTERPRET) else TUNING["dot"]


def _dot_mode_of(x, B, C) -> int:
    return _dot_mode(x.dtype) if B.dtype == C.dtype == x.dtype else 0   # (mixed dtypes: fp32 operands)


def _configs(warps, stages):
    """(num_warps, num_stages) pairs (or ``warps`` at the first pair's stages): few configs keep the first call's
    autotuning short."""
    pairs = [(warps, stages[0][1])] if warps else stages
    return autotune_configs([triton.Config({}, num_warps=w, num_stages=s) for w, s in pairs])


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _delta_of(b_raw, p_bias, i_h, m_t, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(v = dt + dt_bias, Δ) of BT rows, fp32 [BT], from the loaded dt rows ``b_raw`` (0 on rows past the
    sequence); Δ = 0 there."""
    b_v = b_raw.to(tl.float32)
    if HAS_BIAS:
        b_v += tl.load(p_bias + i_h).to(tl.float32)
    if SOFTPLUS:
        b_u = tl.exp(-tl.abs(b_v))                                    # softplus = max(v, 0) + log1p(exp(−|v|))
        b_w = 1. + b_u                                 # log1p(u) = log(w)·u/(w − 1): the rounding of w cancels
        b_l = tl.where(b_w == 1., b_u, tl.log(b_w) * (b_u / tl.where(b_w == 1., 1., b_w - 1.)))
        b_d = tl.where(b_v <= 20., tl.maximum(b_v, 0.) + b_l, b_v)
    else:
        b_d = b_v
    return b_v, tl.where(m_t, b_d, 0.)


@triton.jit
def _split_cumsum(b_a):
    """The chunk-local cumsum of a = Δ A ≤ 0 [BT] in two fp32 parts, c = c_hi + c_lo (see the module docstring's
    Numerics): a clamped at −128 (exp of any exponent holding it underflows to 0 either way), a_hi = a rounded down
    to a multiple of 2⁻¹⁰ — its cumsum is exact (|c_hi| ≤ 128·BT ≤ 2¹³ for BT ≤ 64: 23 bits) in any summation
    order —, a_lo = a − a_hi ∈ [0, 2⁻¹⁰) exact, its cumsum ≤ BT·2⁻¹⁰ (absolute error ~1e-8)."""
    b_a = tl.maximum(b_a, -128.)
    b_h = tl.floor(b_a * 1024.) * (1. / 1024.)
    return tl.cumsum(b_h, 0), tl.cumsum(b_a - b_h, 0)


@triton.jit
def _decays(b_ch, b_cl):
    """(c, c_L, r) fp32 [BT], [], [BT] from the split cumsum: c_t = c_hi + c_lo (for exp(c_t)), c_L the last row's
    (c_hi non-increasing, c_lo non-decreasing: their min / max are the last row's), r_t = c_L − c_t = Σ_{t<x≤L} a_x
    as (c_hi,L − c_hi,t) + (c_lo,L − c_lo,t) (the first difference exact, the second of small sums; clamped ≤ 0)."""
    b_chL = tl.min(b_ch, 0)
    b_clL = tl.max(b_cl, 0)
    return b_ch + b_cl, b_chL + b_clL, tl.minimum((b_chL - b_ch) + (b_clL - b_cl), 0.)


@triton.jit
def _pair_decay(b_ch, b_cl, causal):
    """L_ts = exp(c_t − c_s) for s ≤ t (``causal`` [BT, BT]), else 0: the exponent Σ_{s<x≤t} a_x as the exact
    difference of c_hi plus the difference of c_lo (clamped ≤ 0), fp32 [BT(t), BT(s)]."""
    b_g = (b_ch[:, None] - b_ch[None, :]) + (b_cl[:, None] - b_cl[None, :])
    return tl.exp(tl.where(causal, tl.minimum(b_g, 0.), float("-inf")))


@triton.jit
def _chunk_setup(p_dt, p_bias, b_A, i_h, rows, m_t, sdt_t, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """``_chunk_setup_of`` of the dt rows ``rows`` (``p_dt``: this sequence's and head's dt, rows ``sdt_t`` apart)."""
    return _chunk_setup_of(tl.load(p_dt + rows * sdt_t, mask=m_t, other=0.), p_bias, b_A, i_h, m_t, HAS_BIAS,
                           SOFTPLUS)


@triton.jit
def _chunk_setup_of(b_raw, p_bias, b_A, i_h, m_t, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(v, Δ, c_hi, c_lo) of one chunk from its loaded dt rows ``b_raw`` (fp32 [BT]; c = c_hi + c_lo the
    chunk-local cumsum of a = Δ A, split by ``_split_cumsum``)."""
    b_v, b_d = _delta_of(b_raw, p_bias, i_h, m_t, HAS_BIAS, SOFTPLUS)
    b_ch, b_cl = _split_cumsum(b_d * b_A)
    return b_v, b_d, b_ch, b_cl


@triton.jit
def _chunk_in(p_x, p_B, p_C, rows, m_t, o_p, m_p, o_n, m_n, sx_t, sx_p, sb_t, sb_n, sc_t, sc_n):
    """x [BT, BP], B, C [BT, BN] of one chunk in their dtypes (0 outside)."""
    m_tp = m_t[:, None] & m_p[None, :]
    m_tn = m_t[:, None] & m_n[None, :]
    b_x = tl.load(p_x + rows[:, None] * sx_t + o_p[None, :] * sx_p, mask=m_tp, other=0.)
    b_B = tl.load(p_B + rows[:, None] * sb_t + o_n[None, :] * sb_n, mask=m_tn, other=0.)
    b_C = tl.load(p_C + rows[:, None] * sc_t + o_n[None, :] * sc_n, mask=m_tn, other=0.)
    return b_x, b_B, b_C


@triton.jit
def _chunk_next(p_x, p_dt, p_B, p_C, p_dy, ic, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p, sdt_t, sb_t, sb_n, sc_t, sc_n,
                sy_t, sy_p, BT: tl.constexpr):
    """x, B, C, dy tiles and the raw dt rows of chunk ``ic`` in their dtypes (all 0 when ic < 0: past the start)."""
    rows = ic * BT + o_t
    m_t = (rows >= 0) & (rows < T)
    b_x, b_B, b_C = _chunk_in(p_x, p_B, p_C, rows, m_t, o_p, m_p, o_n, m_n, sx_t, sx_p, sb_t, sb_n, sc_t, sc_n)
    b_dy = tl.load(p_dy + rows[:, None] * sy_t + o_p[None, :] * sy_p, mask=m_t[:, None] & m_p[None, :], other=0.)
    return b_x, b_B, b_C, b_dy, tl.load(p_dt + rows * sdt_t, mask=m_t, other=0.)


@triton.jit
def _head_inputs(p_x, p_dt, p_B, p_C, i_bh, H, HG, sx_b, sx_h, sdt_b, sdt_h, sb_b, sb_g, sc_b, sc_g):
    """Program (sequence·head) i_bh's batch i_b (int64) and head i_h, and its bases of x, dt (its head) and B, C
    (its group i_h // HG) in their layouts ([b, T, H, P], [b, T, H], [b, T, G, N] at the given strides)."""
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_g = i_h // HG
    return (i_b, i_h, p_x + i_b * sx_b + i_h * sx_h, p_dt + i_b * sdt_b + i_h * sdt_h,
            p_B + i_b * sb_b + i_g * sb_g, p_C + i_b * sc_b + i_g * sc_g)


@triton.jit
def _cols(i_p, P, N, BP: tl.constexpr, BN: tl.constexpr):
    """The p-block i_p's columns of P and the padded columns of N, with their masks: (o_p, o_n, m_p, m_n)."""
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    return o_p, o_n, o_p < P, o_n < N


@triton.jit
def _load_D(p_D, i_h, o_p, m_p, P, BP: tl.constexpr, D_PER_P: tl.constexpr):
    """Head i_h's skip weights D for the columns o_p, fp32 [BP] (p_D [H, P] when D_PER_P, else [H])."""
    if D_PER_P:
        b_D = tl.load(p_D + i_h * P + o_p, mask=m_p, other=0.).to(tl.float32)
    else:
        b_D = tl.load(p_D + i_h).to(tl.float32) + tl.zeros([BP], dtype=tl.float32)
    return b_D


@triton.jit
def _mm(a, b, HALF: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr):
    """a @ b accumulated in fp32: operands in the half dtype T when HALF (exact for two input tiles: a product of
    two bf16/fp16 values fits the fp32 accumulator; a rounding for computed fp32 operands), else in fp32 at
    input_precision PREC."""
    if HALF:
        return tl.dot(a.to(T), b.to(T))
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)


@triton.jit
def _state_step(b_S, b_x, b_B, b_d, b_ch, b_cl, HALF: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr):
    """S_L = exp(c_L) S0 + (x ⊙ Δ exp(c_L − c))ᵀ B  ([BP, BN] fp32; c = c_hi + c_lo, the split cumsum), as
    exp(c_lo,L) · (exp(c_hi,L) S0 + (x ⊙ Δ e^{−c_lo} exp(c_hi,L − c_hi))ᵀ B): the exact c_hi difference in the
    exponent (≤ 0), the c_lo factors within e^{±BT/1024} of 1 (c_hi non-increasing, c_lo non-decreasing: their min /
    max are the last row's)."""
    b_chL = tl.min(b_ch, 0)
    b_w = b_d * tl.exp(-b_cl) * tl.exp(b_chL - b_ch)
    b_S = tl.exp(b_chL) * b_S + _mm(tl.trans(b_x.to(tl.float32) * b_w[:, None]), b_B, HALF, T, PREC)
    return tl.exp(tl.max(b_cl, 0)) * b_S


@triton.jit
def _chunk_state(b_S, ic, p_x, p_dt, p_B, p_bias, b_A, i_h, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p, sdt_t, sb_t, sb_n,
                 BT: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HALF: tl.constexpr,
                 T_: tl.constexpr, PREC: tl.constexpr):
    """The state after chunk ``ic`` from the state entering it (the backward's forward re-walk; x, B only)."""
    b_x, b_B, b_raw = _state_next(p_x, p_dt, p_B, ic, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p, sdt_t, sb_t, sb_n, BT)
    return _chunk_state_of(b_S, ic, b_x, b_B, b_raw, p_bias, b_A, i_h, o_t, T, HAS_BIAS, SOFTPLUS, HALF, T_, PREC)


@triton.jit
def _state_next(p_x, p_dt, p_B, ic, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p, sdt_t, sb_t, sb_n, BT: tl.constexpr):
    """x, B tiles and the raw dt rows of chunk ``ic`` (the re-walk's inputs, loaded a step ahead under LEAN 2)."""
    rows = ic * BT + o_t
    m_t = rows < T
    b_x = tl.load(p_x + rows[:, None] * sx_t + o_p[None, :] * sx_p, mask=m_t[:, None] & m_p[None, :], other=0.)
    b_B = tl.load(p_B + rows[:, None] * sb_t + o_n[None, :] * sb_n, mask=m_t[:, None] & m_n[None, :], other=0.)
    return b_x, b_B, tl.load(p_dt + rows * sdt_t, mask=m_t, other=0.)


@triton.jit
def _chunk_state_of(b_S, ic, b_x, b_B, b_raw, p_bias, b_A, i_h, o_t, T, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, HALF: tl.constexpr, T_: tl.constexpr, PREC: tl.constexpr):
    """``_chunk_state`` from chunk ``ic``'s loaded x, B tiles and raw dt rows."""
    m_t = (ic * o_t.shape[0] + o_t) < T
    b_v, b_d, b_ch, b_cl = _chunk_setup_of(b_raw, p_bias, b_A, i_h, m_t, HAS_BIAS, SOFTPLUS)
    return _state_step(b_S, b_x, b_B, b_d, b_ch, b_cl, HALF, T_, PREC)


@triton.autotune(configs=_configs(TUNING["fwd_warps"], [(4, 2), (8, 2)]),
                 key=["BT", "BP", "BN", "HAS_H0", "STORE_HT", "STORE_ST", "GRID_BUCKET"])
@triton.jit(do_not_specialize=["GRID_BUCKET"])
def _ssd_fwd_kernel(p_x, p_dt, p_A, p_B, p_C, p_D, p_bias, p_h0, p_y, p_hT, p_st,
                    T, H, P, N, HG, GRID_BUCKET,
                    sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h, sb_b, sb_t, sb_g, sb_n, sc_b, sc_t, sc_g, sc_n,
                    BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                    D_PER_P: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                    STORE_HT: tl.constexpr, STORE_ST: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr):
    # p_x [b, T, H, P] (strides sx_*), p_dt [b, T, H] (sdt_*), p_B, p_C [b, T, G, N] (sb_*, sc_*), G = H / HG;
    # p_A [H] fp32, p_D [H] or [H, P] (D_PER_P; None unless HAS_D), p_bias [H] (None unless HAS_BIAS),
    # p_h0 [b, H, P, N] contiguous (None unless HAS_H0); p_y [b, T, H, P] contiguous; p_hT [b, H, P, N] fp32
    # (written when STORE_HT); p_st [b·H·NPB, cdiv(T, BT), BP, BN] fp32 (STORE_ST, ``TUNING["save"]``; else None):
    # the state entering each chunk, the backward's checkpoints. Grid (b·H, NPB = cdiv(P, BP)): program (i_bh, i_p)
    # walks rows 0..T of one head for columns [i_p·BP, i_p·BP + BP) of P; BT rows per chunk, BN = next pow2 ≥ N.
    # DOT: 0 every dot on fp32 operands at PREC, 1 the dots of two input tiles (C Bᵀ, dy xᵀ) in x's dtype, 2 every
    # dot in x's dtype. GRID_BUCKET: autotune key only (``kernels._common.grid_bucket`` of b·H·NPB; unused here).
    i_bh, i_p = tl.program_id(0), tl.program_id(1)
    i_b, i_h, p_x, p_dt, p_B, p_C = _head_inputs(p_x, p_dt, p_B, p_C, i_bh, H, HG, sx_b, sx_h, sdt_b, sdt_h, sb_b,
                                                 sb_g, sc_b, sc_g)
    HT = p_x.dtype.element_ty                        # the half dtype of the DOT ≥ 1 dots
    o_t = tl.arange(0, BT)
    o_p, o_n, m_p, m_n = _cols(i_p, P, N, BP, BN)
    p_y += (i_b * T * H + i_h) * P
    o_pn = o_p[:, None] * N + o_n[None, :]
    m_pn = m_p[:, None] & m_n[None, :]
    b_A = tl.load(p_A + i_h).to(tl.float32)
    if HAS_D:
        b_D = _load_D(p_D, i_h, o_p, m_p, P, BP, D_PER_P)
    if HAS_H0:
        b_S = tl.load(p_h0 + i_bh.to(tl.int64) * P * N + o_pn, mask=m_pn, other=0.).to(tl.float32)
    else:
        b_S = tl.zeros([BP, BN], dtype=tl.float32)
    causal = o_t[:, None] >= o_t[None, :]
    if STORE_ST:
        p_st += (i_bh.to(tl.int64) * tl.num_programs(1) + i_p) * tl.cdiv(T, BT) * BP * BN
        o_st = tl.arange(0, BP)[:, None] * BN + o_n[None, :]
    for r0 in range(0, T, BT):
        if STORE_ST:
            tl.store(p_st + (r0 // BT) * BP * BN + o_st, b_S)
        rows = r0 + o_t
        m_t = rows < T
        b_v, b_d, b_ch, b_cl = _chunk_setup(p_dt, p_bias, b_A, i_h, rows, m_t, sdt_t, HAS_BIAS, SOFTPLUS)
        b_x, b_B, b_C = _chunk_in(p_x, p_B, p_C, rows, m_t, o_p, m_p, o_n, m_n, sx_t, sx_p, sb_t, sb_n, sc_t,
                                  sc_n)
        b_G = _mm(b_C, tl.trans(b_B), DOT >= 1, HT, PREC)                           # [BT(t), BT(s)]
        # L_ts = exp(c_hi,t − c_hi,s) · exp(c_lo,t) · exp(−c_lo,s): the tile holds the exact c_hi difference alone
        # (≤ 0), the c_lo factors (within e^{±BT/1024} of 1) scale Δ_s and the rows of the product
        b_L = tl.exp(tl.where(causal, b_ch[:, None] - b_ch[None, :], float("-inf")))
        b_y = _mm(b_G * b_L * (b_d * tl.exp(-b_cl))[None, :], b_x, DOT >= 2, HT, PREC)
        b_y += tl.exp(b_ch)[:, None] * _mm(b_C, tl.trans(b_S), DOT >= 2, HT, PREC)     # exp(c) = e^{c_hi} e^{c_lo}
        b_y = tl.exp(b_cl)[:, None] * b_y
        if HAS_D:
            b_y += b_x.to(tl.float32) * b_D[None, :]
        tl.store(p_y + rows.to(tl.int64)[:, None] * H * P + o_p[None, :], b_y.to(p_y.dtype.element_ty),
                 mask=m_t[:, None] & m_p[None, :])
        b_S = _state_step(b_S, b_x, b_B, b_d, b_ch, b_cl, DOT >= 2, HT, PREC)
    if STORE_HT:
        tl.store(p_hT + i_bh.to(tl.int64) * P * N + o_pn, b_S, mask=m_pn)


@triton.autotune(configs=_configs(TUNING["bwd_warps"], [(8, 1), (4, 1), (8, 2)]),
                 key=["BT", "BP", "BN", "HAS_H0", "HAS_DHT", "LEAN", "SAVED", "GRID_BUCKET"])
@triton.jit(do_not_specialize=["GRID_BUCKET"])
def _ssd_bwd_kernel(p_x, p_dt, p_A, p_B, p_C, p_D, p_bias, p_h0, p_dy, p_dhT, p_scr, p_st,
                    p_dx, p_ddtp, p_dBp, p_dCp, p_par, p_dDp, p_dh0,
                    T, H, P, N, HG, NPB, NC, CK, NCK, GRID_BUCKET,
                    sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h, sb_b, sb_t, sb_g, sb_n, sc_b, sc_t, sc_g, sc_n,
                    sy_b, sy_t, sy_h, sy_p, sdx_t,
                    BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                    D_PER_P: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                    HAS_DHT: tl.constexpr, LEAN: tl.constexpr, SAVED: tl.constexpr, PREC: tl.constexpr,
                    DOT: tl.constexpr):
    # inputs as in _ssd_fwd_kernel; p_dy [b, T, H, P] (strides sy_*), p_dhT [b, H, P, N] contiguous (None unless
    # HAS_DHT); p_scr [b·H·NPB, NCK + CK, BP, BN] fp32 workspace: NCK checkpoints (the state entering chunk
    # g·CK), then the CK chunk-entry states of the group being walked (NC = cdiv(T, BT) chunks, NCK = cdiv(NC, CK));
    # outputs: p_dx [b, T, H, P] (x's dtype; rows sdx_t elements apart, a sequence T rows, each row's H·P
    # contiguous: contiguous, or a slot in a wider buffer, kernels._slots); fp32 partials p_ddtp [b, T, H, NPB],
    # p_dBp, p_dCp [b, T, H·NPB, N], p_par [b·H·NPB, 2] (dA, ddt_bias of this program), p_dDp [b, H, P] (None unless HAS_D);
    # p_dh0 [b, H, P, N] fp32 (None unless HAS_H0). Grid (b·H, NPB), NPB = cdiv(P, BP). GRID_BUCKET: autotune key
    # only (``kernels._common.grid_bucket`` of b·H·NPB).
    # SAVED (``TUNING["save"]``): the checkpoints are the forward's chunk-entry states p_st [b·H·NPB, NCK, BP, BN]
    # fp32 (the forward's chunks of CK·BT rows): no checkpoint pass; p_scr [b·H·NPB, CK, BP, BN] (None unless
    # SAVED: p_st None).
    # LEAN (``TUNING["lean"]``): the reverse step without the dot V = C S0ᵀ — the state's part of dy·y,
    # eo_t = exp(c_t) dy_t·(S0 C_t), is Σ_n C_tn · (exp(c_t) dy_t S0)_n, the state part of dC already computed
    # (one [BT, BN]·[BN, BP] dot, one fp32 [BT, BP] tile and S0's transposed operand copy fewer a chunk).
    # LEAN 2: also every walk's inputs loaded one step ahead — the next chunk's x, B, C, dy tiles and dt rows in the
    # reverse walk, x, B, dt in the state re-walks — so their memory latency overlaps this step's work instead of
    # opening the next step (a few more registers: a [16, 64] bf16 tile is 4 a thread at 4 warps).
    i_bh, i_p = tl.program_id(0), tl.program_id(1)
    i_b, i_h, p_x, p_dt, p_B, p_C = _head_inputs(p_x, p_dt, p_B, p_C, i_bh, H, HG, sx_b, sx_h, sdt_b, sdt_h, sb_b,
                                                 sb_g, sc_b, sc_g)
    HT = p_x.dtype.element_ty                        # the half dtype of the DOT ≥ 1 dots
    prog = i_bh.to(tl.int64) * NPB + i_p
    o_t = tl.arange(0, BT)
    o_p, o_n, m_p, m_n = _cols(i_p, P, N, BP, BN)
    p_dy += i_b * sy_b + i_h * sy_h
    o_pn = o_p[:, None] * N + o_n[None, :]
    m_pn = m_p[:, None] & m_n[None, :]
    o_sc = tl.arange(0, BP)[:, None] * BN + o_n[None, :]        # a [BP, BN] tile of the workspace
    if SAVED:
        p_st += prog * NCK * BP * BN
        p_grp = p_scr + prog * CK * BP * BN
    else:
        p_scr += prog * (NCK + CK) * BP * BN
        p_grp = p_scr + NCK * BP * BN
    b_A = tl.load(p_A + i_h).to(tl.float32)
    if HAS_D:
        b_D = _load_D(p_D, i_h, o_p, m_p, P, BP, D_PER_P)
    # ---- pass 1: the checkpoints, forward (none but the initial state when NCK = 1; the forward's when SAVED)
    if not SAVED:
        if HAS_H0:
            b_S = tl.load(p_h0 + i_bh.to(tl.int64) * P * N + o_pn, mask=m_pn, other=0.).to(tl.float32)
        else:
            b_S = tl.zeros([BP, BN], dtype=tl.float32)
        tl.store(p_scr + o_sc, b_S)
        if LEAN >= 2:                                 # (inputs loaded a step ahead)
            w_x, w_B, w_dt = _state_next(p_x, p_dt, p_B, 0, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p, sdt_t, sb_t,
                                         sb_n, BT)
            for ic in range(0, (NCK - 1) * CK):
                b_x, b_B, b_raw = w_x, w_B, w_dt
                w_x, w_B, w_dt = _state_next(p_x, p_dt, p_B, ic + 1, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p, sdt_t,
                                             sb_t, sb_n, BT)
                b_S = _chunk_state_of(b_S, ic, b_x, b_B, b_raw, p_bias, b_A, i_h, o_t, T, HAS_BIAS, SOFTPLUS,
                                      DOT >= 2, HT, PREC)
                if (ic + 1) % CK == 0:
                    tl.store(p_scr + ((ic + 1) // CK) * BP * BN + o_sc, b_S)
        else:
            for ic in range(0, (NCK - 1) * CK):
                b_S = _chunk_state(b_S, ic, p_x, p_dt, p_B, p_bias, b_A, i_h, o_t, o_p, m_p, o_n, m_n, T, sx_t,
                                   sx_p, sdt_t, sb_t, sb_n, BT, HAS_BIAS, SOFTPLUS, DOT >= 2, HT, PREC)
                if (ic + 1) % CK == 0:
                    tl.store(p_scr + ((ic + 1) // CK) * BP * BN + o_sc, b_S)
    # ---- pass 2: groups of CK chunks in reverse, carrying dS = ∂L/∂S at the chunk end
    if HAS_DHT:
        b_dS = tl.load(p_dhT + i_bh.to(tl.int64) * P * N + o_pn, mask=m_pn, other=0.).to(tl.float32)
    else:
        b_dS = tl.zeros([BP, BN], dtype=tl.float32)
    causal = o_t[:, None] >= o_t[None, :]             # [t, s] s ≤ t   (also [t, j]: t ≥ j)
    acc_dA = tl.zeros([BT], dtype=tl.float32)       # Σ Δ_j da_j
    acc_db = tl.zeros([BT], dtype=tl.float32)
    acc_dD = tl.zeros([BP], dtype=tl.float32)
    if LEAN >= 2:                                     # the next chunk's inputs, loaded one reverse step ahead
        n_x, n_B, n_C, n_dy, n_dt = _chunk_next(p_x, p_dt, p_B, p_C, p_dy, NC - 1, o_t, o_p, m_p, o_n, m_n, T, sx_t,
                                                sx_p, sdt_t, sb_t, sb_n, sc_t, sc_n, sy_t, sy_p, BT)
    for kg in range(0, NCK):
        c0 = (NCK - 1 - kg) * CK
        n_c = tl.minimum(CK, NC - c0)
        tl.debug_barrier()                            # the checkpoints stored, the previous group's states read
        if SAVED:
            b_S = tl.load(p_st + (NCK - 1 - kg) * BP * BN + o_sc)
        else:
            b_S = tl.load(p_scr + (NCK - 1 - kg) * BP * BN + o_sc)
        if LEAN >= 2:                                 # the group's chunk-entry states, forward from its checkpoint
            w_x, w_B, w_dt = _state_next(p_x, p_dt, p_B, c0, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p, sdt_t, sb_t,
                                         sb_n, BT)
            for j in range(0, n_c - 1):
                tl.store(p_grp + j * BP * BN + o_sc, b_S)
                b_x, b_B, b_raw = w_x, w_B, w_dt
                w_x, w_B, w_dt = _state_next(p_x, p_dt, p_B, c0 + j + 1, o_t, o_p, m_p, o_n, m_n, T, sx_t, sx_p,
                                             sdt_t, sb_t, sb_n, BT)
                b_S = _chunk_state_of(b_S, c0 + j, b_x, b_B, b_raw, p_bias, b_A, i_h, o_t, T, HAS_BIAS, SOFTPLUS,
                                      DOT >= 2, HT, PREC)
        else:
            for j in range(0, n_c - 1):               # the group's chunk-entry states, forward from its checkpoint
                tl.store(p_grp + j * BP * BN + o_sc, b_S)
                b_S = _chunk_state(b_S, c0 + j, p_x, p_dt, p_B, p_bias, b_A, i_h, o_t, o_p, m_p, o_n, m_n, T, sx_t,
                                   sx_p, sdt_t, sb_t, sb_n, BT, HAS_BIAS, SOFTPLUS, DOT >= 2, HT, PREC)
        tl.store(p_grp + (n_c - 1) * BP * BN + o_sc, b_S)
        tl.debug_barrier()
        for k in range(0, n_c):
            j = n_c - 1 - k
            ic = c0 + j
            rows = ic * BT + o_t
            m_t = rows < T
            rows64 = rows.to(tl.int64)
            m_tp = m_t[:, None] & m_p[None, :]
            m_tn = m_t[:, None] & m_n[None, :]
            if LEAN >= 2:
                b_x, b_B, b_C, b_dyh, b_raw = n_x, n_B, n_C, n_dy, n_dt
                n_x, n_B, n_C, n_dy, n_dt = _chunk_next(p_x, p_dt, p_B, p_C, p_dy, ic - 1, o_t, o_p, m_p, o_n, m_n, T,
                                                        sx_t, sx_p, sdt_t, sb_t, sb_n, sc_t, sc_n, sy_t, sy_p, BT)
                b_v, b_d, b_ch, b_cl = _chunk_setup_of(b_raw, p_bias, b_A, i_h, m_t, HAS_BIAS, SOFTPLUS)
            else:
                b_v, b_d, b_ch, b_cl = _chunk_setup(p_dt, p_bias, b_A, i_h, rows, m_t, sdt_t, HAS_BIAS, SOFTPLUS)
            b_c, b_cL, b_r = _decays(b_ch, b_cl)
            b_ec = tl.exp(b_c)
            b_e = tl.exp(b_r)                                                            # e_s = exp(c_L − c_s) ≤ 1
            b_de = b_d * b_e
            # (ordered for short live ranges: S0's uses first, then B's, then the [t, s] tiles')
            if LEAN < 2:
                b_x, b_B, b_C = _chunk_in(p_x, p_B, p_C, rows, m_t, o_p, m_p, o_n, m_n, sx_t, sx_p, sb_t, sb_n, sc_t,
                                          sc_n)
                b_dyh = tl.load(p_dy + rows[:, None] * sy_t + o_p[None, :] * sy_p, mask=m_tp, other=0.)
            b_dy = b_dyh.to(tl.float32)
            b_S0 = tl.load(p_grp + j * BP * BN + o_sc)
            if LEAN:
                b_dC = b_ec[:, None] * _mm(b_dyh, b_S0, DOT >= 2, HT, PREC)             # [t, n] e^{c_t} dy_t S0
                b_eo = tl.sum(b_C.to(tl.float32) * b_dC, 1)                             # [t] e^{c_t} dy_t·(S0 C_t)
            else:
                b_V = _mm(b_C, tl.trans(b_S0), DOT >= 2, HT, PREC)                      # [t, p] (S0 C_t)_p
                b_eo = b_ec * tl.sum(b_dy * b_V, 1)                                     # [t]
                b_dC = b_ec[:, None] * _mm(b_dyh, b_S0, DOT >= 2, HT, PREC)
            b_X = tl.exp(b_cL) * tl.sum(tl.sum(b_S0 * b_dS, 1), 0)                     # [] state passing through
            b_da = tl.zeros([BT], dtype=tl.float32) + b_X
            b_da += tl.cumsum(b_eo, 0, reverse=True)                                    # Σ_{t≥j} eo_t
            b_GL = _mm(b_C, tl.trans(b_B), DOT >= 1, HT, PREC)                          # [t, s]
            b_L = _pair_decay(b_ch, b_cl, causal)
            b_GL = b_GL * b_L
            b_R = _mm(b_dyh, tl.trans(b_x), DOT >= 1, HT, PREC)                          # [t, s] dy_t · x_s
            b_Z = b_R * b_L * b_d[None, :]
            b_dC += _mm(b_Z, b_B, DOT >= 2, HT, PREC)
            o_part = ((i_b * T + rows64) * H * NPB + i_h * NPB + i_p)[:, None] * N + o_n[None, :]
            tl.store(p_dCp + o_part, b_dC, mask=m_tn)
            b_U = _mm(b_B, tl.trans(b_dS), DOT >= 2, HT, PREC)                          # [s, p] (dS B_s)_p
            b_dx = _mm(tl.trans(b_GL * b_d[None, :]), b_dyh, DOT >= 2, HT, PREC) + b_de[:, None] * b_U
            b_xf = b_x.to(tl.float32)
            b_xu = tl.sum(b_xf * b_U, 1)                                                 # [s] x_s · (dS B_s)
            if HAS_D:
                b_dx += b_dy * b_D[None, :]
                acc_dD += tl.sum(b_dy * b_xf, 0)
            tl.store(p_dx + (i_b * T + rows64)[:, None] * sdx_t + i_h * P + o_p[None, :],
                     b_dx.to(p_dx.dtype.element_ty), mask=m_tp)
            b_dB = _mm(tl.trans(b_Z), b_C, DOT >= 2, HT, PREC) + b_de[:, None] * _mm(b_x, b_dS, DOT >= 2, HT, PREC)
            tl.store(p_dBp + o_part, b_dB, mask=m_tn)
            # dΔ: direct terms, then the decay's da_j (every term whose exponent contains a_j)
            b_K = b_GL * b_R                                                            # [t, s]
            b_dd = tl.sum(b_K, 0) + b_e * b_xu
            b_K = b_K * b_d[None, :]
            b_vs = b_de * b_xu
            # the exclusive sums as inclusive ones read a column / row earlier (no "cumsum − own term")
            o_prev = tl.maximum(o_t - 1, 0)                                             # j − 1 (j > 0)
            b_Pcs = tl.gather(tl.cumsum(b_K, 1), tl.broadcast_to(o_prev[None, :], (BT, BT)), 1)  # [t, j] Σ_{s<j}
            b_da += tl.sum(tl.where(causal & (o_t > 0)[None, :], b_Pcs, 0.), 0)        # Σ_{t≥j}
            b_da += tl.where(o_t > 0, tl.gather(tl.cumsum(b_vs, 0), o_prev, 0), 0.)   # Σ_{s<j} Δ_s e_s x_s·U_s
            b_da = tl.where(m_t, b_da, 0.)
            acc_dA += b_d * b_da
            b_dd += b_A * b_da
            if SOFTPLUS:
                b_dd = tl.where(b_v <= 20., b_dd / (1. + tl.exp(-b_v)), b_dd)
            b_dd = tl.where(m_t, b_dd, 0.)
            acc_db += b_dd
            tl.store(p_ddtp + ((i_b * T + rows64) * H + i_h) * NPB + i_p, b_dd, mask=m_t)
            b_dS = tl.exp(b_cL) * b_dS + _mm(tl.trans(b_dy * b_ec[:, None]), b_C, DOT >= 2, HT, PREC)
    if HAS_H0:
        if LEAN:   # (offsets and mask formed anew: the [BP, BN] tiles of the start are not kept live)
            tl.store(p_dh0 + (i_bh.to(tl.int64) * P + o_p)[:, None] * N + o_n[None, :], b_dS,
                     mask=(o_p[:, None] < P) & (o_n[None, :] < N))
        else:
            tl.store(p_dh0 + i_bh.to(tl.int64) * P * N + o_pn, b_dS, mask=m_pn)
    tl.store(p_par + prog * 2, tl.sum(acc_dA, 0))
    tl.store(p_par + prog * 2 + 1, tl.sum(acc_db, 0))
    if HAS_D:
        tl.store(p_dDp + i_bh.to(tl.int64) * P + o_p, acc_dD, mask=m_p)


@triton.jit
def _ssd_reduce_kernel(p_dBp, p_dCp, p_ddtp, p_par, p_dDp, p_dB, p_dC, p_ddt, p_dA, p_dbias, p_dD,
                       BL, NB, H, G, HG, NPB, P, N, n_row_blocks, sdb_r, sdc_r,
                       BR: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, BQ: tl.constexpr, BPP: tl.constexpr,
                       BS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_BIAS: tl.constexpr):
    # partials of _ssd_bwd_kernel: p_dBp, p_dCp [BL, H·NPB, N], p_ddtp [BL, H, NPB], p_par [NB, H, NPB, 2],
    # p_dDp [NB, H, P] (BL = b·T rows, NB = b); outputs in their inputs' dtypes: p_dB, p_dC [BL, G, N] (rows
    # sdb_r / sdc_r elements apart, each row's G·N contiguous),
    # p_ddt [BL, H], p_dA [H], p_dbias [H] (None unless HAS_BIAS), p_dD [H] or [H, P] (D_PER_P; None unless
    # HAS_D). Programs 0..n_row_blocks-1 sum BR rows each (over the HG·NPB partials of a group, in index order);
    # the last program sums the parameter partials over the batch BS rows a load, in a fixed order
    # (deterministic). BH, BQ, BPP: pow2 ≥ H, NPB, P.
    pid = tl.program_id(0)
    if pid < n_row_blocks:
        o_r = pid.to(tl.int64) * BR + tl.arange(0, BR)
        m_r = o_r < BL
        o_n = tl.arange(0, BN)
        m = m_r[:, None] & (o_n < N)[None, :]
        W = HG * NPB
        for g in range(0, G):
            acc_B = tl.zeros([BR, BN], dtype=tl.float32)
            acc_C = tl.zeros([BR, BN], dtype=tl.float32)
            for j in range(0, W):
                o = (o_r * (H * NPB) + g * W + j)[:, None] * N + o_n[None, :]
                acc_B += tl.load(p_dBp + o, mask=m, other=0.)
                acc_C += tl.load(p_dCp + o, mask=m, other=0.)
            o = g * N + o_n[None, :]
            tl.store(p_dB + o_r[:, None] * sdb_r + o, acc_B.to(p_dB.dtype.element_ty), mask=m)
            tl.store(p_dC + o_r[:, None] * sdc_r + o, acc_C.to(p_dC.dtype.element_ty), mask=m)
        o_h = tl.arange(0, BH)
        o_q = tl.arange(0, BQ)
        m3 = m_r[:, None, None] & (o_h < H)[None, :, None] & (o_q < NPB)[None, None, :]
        o3 = (o_r[:, None, None] * H + o_h[None, :, None]) * NPB + o_q[None, None, :]
        b_dt = tl.sum(tl.load(p_ddtp + o3, mask=m3, other=0.), 2)
        tl.store(p_ddt + o_r[:, None] * H + o_h[None, :], b_dt.to(p_ddt.dtype.element_ty),
                 mask=m_r[:, None] & (o_h < H)[None, :])
    else:
        o_h = tl.arange(0, BH)
        o_q = tl.arange(0, BQ)
        m_h = o_h < H
        m2 = m_h[:, None] & (o_q < NPB)[None, :]
        o2 = (o_h[:, None] * NPB + o_q[None, :]) * 2
        o_s = tl.arange(0, BS)
        acc_A = tl.zeros([BH, BQ], dtype=tl.float32)
        acc_b = tl.zeros([BH, BQ], dtype=tl.float32)
        for b0 in range(0, NB, BS):      # BS partial rows a load
            m_s = (b0 + o_s) < NB
            o = (b0 + o_s)[:, None, None] * (H * NPB * 2) + o2[None, :, :]
            acc_A += tl.sum(tl.load(p_par + o, mask=m_s[:, None, None] & m2[None, :, :], other=0.), 0)
            acc_b += tl.sum(tl.load(p_par + o + 1, mask=m_s[:, None, None] & m2[None, :, :], other=0.), 0)
        tl.store(p_dA + o_h, tl.sum(acc_A, 1).to(p_dA.dtype.element_ty), mask=m_h)
        if HAS_BIAS:
            tl.store(p_dbias + o_h, tl.sum(acc_b, 1).to(p_dbias.dtype.element_ty), mask=m_h)
        if HAS_D:
            o_pp = tl.arange(0, BPP)
            mD = m_h[:, None] & (o_pp < P)[None, :]
            oD = o_h[:, None] * P + o_pp[None, :]
            acc_D = tl.zeros([BH, BPP], dtype=tl.float32)
            for b0 in range(0, NB, BS):
                m_s = (b0 + o_s) < NB
                o = (b0 + o_s)[:, None, None] * (H * P) + oD[None, :, :]
                acc_D += tl.sum(tl.load(p_dDp + o, mask=m_s[:, None, None] & mD[None, :, :], other=0.), 0)
            if D_PER_P:
                tl.store(p_dD + oD, acc_D.to(p_dD.dtype.element_ty), mask=mD)
            else:
                tl.store(p_dD + o_h, tl.sum(acc_D, 1).to(p_dD.dtype.element_ty), mask=m_h)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
def _tiles(P: int, N: int, bwd: bool):
    """(BT, BP, BN): rows per chunk, the p-block, the padded state width (every tile ≥ 16 for tl.dot)."""
    bp = TUNING["bp"] or min(_pow2(P), 64)
    BP, BN = max(16, min(_pow2(bp), _pow2(P))), max(16, _pow2(N))
    if bwd:
        BT = TUNING["bwd_bt"]
    else:   # (the interpreter: 16 rows unless set)
        BT = TUNING["fwd_bt"] or (16 if INTERPRET else 64 if BP * BN <= 2048 else 32)
    return BT, BP, BN


def _save_ck(P: int, N: int) -> int:
    """Backward chunks per forward chunk when the forward saves its chunk-entry states (``TUNING["save"]``; the
    forward's rows a multiple of the backward's), else 0."""
    BTF, BTB = _tiles(P, N, bwd=False)[0], _tiles(P, N, bwd=True)[0]
    return BTF // BTB if TUNING["save"] and BTF % BTB == 0 else 0


def _states_shape(x, N):
    """Shape of the forward's saved chunk-entry states (``TUNING["save"]``): [b·H·NPB, cdiv(T, BT), BP, BN]."""
    b, T, H, P = x.shape
    BT, BP, BN = _tiles(P, N, bwd=False)
    return (b * H * _cdiv(P, BP), _cdiv(T, BT), BP, BN)


def _fwd_impl(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus: bool, return_final_states: bool,
              save_states: bool = False):
    """(y, final states or empty, the chunk-entry states for the backward (save_states) or empty)."""
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dev = x.device
    y = new_empty((b, T, H, P), x.dtype, dev)
    hT = new_empty((b, H, P, N), torch.float32, dev) if return_final_states else x.new_empty((0,), dtype=torch.float32)
    save = bool(save_states) and b * H * P * T > 0
    st = new_empty(_states_shape(x, N), torch.float32, dev) if save else x.new_empty((0,), dtype=torch.float32)
    if b * H == 0 or P == 0:
        return y, hT, st
    BT, BP, BN = _tiles(P, N, bwd=False)
    h0 = initial_states.contiguous() if initial_states is not None else None
    grid = (b * H, _cdiv(P, BP))
    launch(_ssd_fwd_kernel)[grid](
        x, dt, A, B, C, D, dt_bias, h0, y, hT if return_final_states else None, st if save else None,
        T, H, P, N, H // G, grid_bucket(b * H * _cdiv(P, BP)), *x.stride(), *dt.stride(), *B.stride(),
        *C.stride(), BT=BT, BP=BP, BN=BN, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_H0=h0 is not None,
        STORE_HT=bool(return_final_states), STORE_ST=save, PREC=_prec(x.dtype), DOT=_dot_mode_of(x, B, C))
    return y, hT, st


def _grad_out(t):
    """The gradient buffer of x, B or C [b, T, *, *]: its slot in a producer's buffer (``kernels._slots``: the
    mixer's split of the conv output, so that no concatenation follows) when that slot keeps each row's last two
    dimensions contiguous and a sequence T rows, else a fresh contiguous tensor."""
    b, T, n1, n2 = t.shape
    rows = t.stride(3) == 1 and t.stride(2) == n2 and t.stride(0) == T * t.stride(1)   # a slot has t's strides
    d = grad_slot(t, contiguous=False) if rows else None
    return new_empty(t.shape, t.dtype, t.device) if d is None else d


def _bwd_impl(dy, dhT, x, dt, A, B, C, D, dt_bias, initial_states, states, dt_softplus: bool):
    """(dx, ddt, dA, dB, dC, dD, ddt_bias, d initial_states); absent inputs get an empty gradient. ``states``: the
    forward's chunk-entry states (``TUNING["save"]``) or None / empty (the checkpoint pass recomputes them)."""
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dev = x.device
    empty = lambda: x.new_empty((0,), dtype=torch.float32)   # noqa: E731 - one each: outputs may not alias
    BT, BP, BN = _tiles(P, N, bwd=True)
    NPB, NC = _cdiv(P, BP), max(1, _cdiv(T, BT))
    saved = states is not None and states.numel() > 0
    if saved:                  # the forward's states (its tiling must still be this one's: else recompute)
        CK = _save_ck(P, N)
        saved = CK > 0 and tuple(states.shape) == _states_shape(x, N)
    if saved:
        NCK = _cdiv(NC, CK)
    else:
        CK = TUNING["ckpt"] or (NC if b * H * NPB * (NC + 1) * BP * BN * 4 <= TUNING["ws_bytes"]
                                else max(1, round(math.sqrt(NC))))
        CK = min(CK, NC)
        NCK = _cdiv(NC, CK)
    dx, dB, dC = (_grad_out(t) for t in (x, B, C))
    ddt = new_empty(dt.shape, dt.dtype, dev)
    dA = new_empty(A.shape, A.dtype, dev)
    dD = new_empty(D.shape, D.dtype, dev) if D is not None else empty()
    dbias = new_empty(dt_bias.shape, dt_bias.dtype, dev) if dt_bias is not None else empty()
    h0 = initial_states.contiguous() if initial_states is not None else None
    dh0 = new_empty((b, H, P, N), torch.float32, dev) if h0 is not None else empty()
    if b * H * P == 0 or T == 0:   # nothing flows (T = 0: the initial state passes through to the final one)
        for t in (dx, ddt, dB, dC):
            t.zero_()
        for t in (dA, dD, dbias):
            t.zero_()
        if h0 is not None:
            dh0.copy_(dhT if dhT is not None else torch.zeros_like(dh0))
        return dx, ddt, dA, dB, dC, dD, dbias, dh0
    scr = new_empty((b * H * NPB, CK if saved else NCK + CK, BP, BN), torch.float32, dev)
    ddtp = new_empty((b, T, H, NPB), torch.float32, dev)
    dBp = new_empty((b, T, H * NPB, N), torch.float32, dev)
    dCp = new_empty((b, T, H * NPB, N), torch.float32, dev)
    par = new_empty((b, H, NPB, 2), torch.float32, dev)
    dDp = new_empty((b, H, P), torch.float32, dev) if D is not None else None
    dhT = dhT.contiguous() if dhT is not None else None
    if dy.dtype != x.dtype:   # (autograd gives y's dtype; the half dots take dy in x's)
        dy = dy.to(x.dtype)
    kern, cfg = launch(_ssd_bwd_kernel), {}
    if TUNING["bwd_cfg"]:                             # one fixed (num_warps, num_stages): the JIT function itself
        kern, cfg = _ssd_bwd_kernel.fn, dict(zip(("num_warps", "num_stages"), TUNING["bwd_cfg"]))
    kern[(b * H, NPB)](
        x, dt, A, B, C, D, dt_bias, h0, dy, dhT, scr, states if saved else None, dx, ddtp, dBp, dCp, par, dDp,
        dh0 if h0 is not None else None,
        T, H, P, N, H // G, NPB, NC, CK, NCK, grid_bucket(b * H * NPB), *x.stride(), *dt.stride(), *B.stride(),
        *C.stride(), *dy.stride(), dx.stride(1), BT=BT, BP=BP, BN=BN, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_H0=h0 is not None,
        HAS_DHT=dhT is not None, LEAN=int(TUNING["lean"]), SAVED=saved, PREC=_prec(x.dtype), DOT=_dot_mode_of(x, B, C),
        **cfg)
    BL = b * T
    BR = 4 if INTERPRET else max(1, min(64, 4096 // (_pow2(N) * max(1, H * NPB // 8))))
    BR = max(1, min(BR, _pow2(BL)))
    n_rb = _cdiv(BL, BR)
    launch(_ssd_reduce_kernel)[(n_rb + 1,)](
        dBp, dCp, ddtp, par, dDp, dB, dC, ddt, dA, dbias if dt_bias is not None else None,
        dD if D is not None else None,
        BL, b, H, G, H // G, NPB, P, N, n_rb, dB.stride(1), dC.stride(1),
        BR=BR, BN=_pow2(N), BH=_pow2(H), BQ=_pow2(NPB), BPP=_pow2(P),
        BS=max(1, min(_pow2(b), 4096 // (_pow2(H) * max(_pow2(NPB), _pow2(P))))), HAS_D=D is not None,
        D_PER_P=D is not None and D.dim() == 2, HAS_BIAS=dt_bias is not None, num_warps=4)
    return dx, ddt, dA, dB, dC, dD, dbias, dh0


# ----------------------------------------------------------------------------------------------------------
# torch.library custom ops + autograd (eager: the same formula through kernels._eager)
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("groundthink::mamba2_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], initial_states: Optional[torch.Tensor],
            dt_softplus: bool, return_final_states: bool, save_states: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, return_final_states, save_states)


@_fwd_op.register_fake
def _(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, return_final_states, save_states):
    b, T, H, P = x.shape
    hT = (x.new_empty((b, H, P, B.shape[3]), dtype=torch.float32) if return_final_states
          else x.new_empty((0,), dtype=torch.float32))
    st = (x.new_empty(_states_shape(x, B.shape[3]), dtype=torch.float32) if save_states and b * H * P * T > 0
          else x.new_empty((0,), dtype=torch.float32))
    return x.new_empty((b, T, H, P)), hT, st


@torch.library.custom_op("groundthink::mamba2_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, dhT: Optional[torch.Tensor], x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
            B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
            initial_states: Optional[torch.Tensor], states: Optional[torch.Tensor], dt_softplus: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                       torch.Tensor, torch.Tensor]:
    return _bwd_impl(dy, dhT, x, dt, A, B, C, D, dt_bias, initial_states, states, dt_softplus)


@_bwd_op.register_fake
def _(dy, dhT, x, dt, A, B, C, D, dt_bias, initial_states, states, dt_softplus):
    e = lambda: x.new_empty((0,), dtype=torch.float32)   # noqa: E731 - one each: outputs may not alias
    return (torch.empty_like(x, memory_format=torch.contiguous_format), dt.new_empty(dt.shape),
            A.new_empty(A.shape), B.new_empty(B.shape), C.new_empty(C.shape),
            D.new_empty(D.shape) if D is not None else e(),
            dt_bias.new_empty(dt_bias.shape) if dt_bias is not None else e(),
            x.new_empty(initial_states.shape, dtype=torch.float32) if initial_states is not None else e())


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, return_final_states, save_states = inputs
    st = output[2]
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(st)
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_states, st if save_states else None)
    ctx.softplus = dt_softplus
    ctx.has = (D is not None, dt_bias is not None, initial_states is not None)


def _backward(ctx, dy, dhT, dst):
    x, dt, A, B, C, D, dt_bias, h0, st = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    if dhT is not None and dhT.numel() == 0:
        dhT = None
    dx, ddt, dA, dB, dC, dD, dbias, dh0 = pick(_bwd_op, _bwd_impl, dy)(dy, dhT, x, dt, A, B, C, D, dt_bias, h0, st,
                                                                      ctx.softplus)
    has_D, has_bias, has_h0 = ctx.has
    return (dx, ddt, dA, dB, dC, dD if has_D else None, dbias if has_bias else None,
            dh0.to(h0.dtype) if has_h0 else None, None, None, None)


_mamba2 = EagerOp("Mamba2SSD", _fwd_op, _fwd_impl, _setup_context, _backward)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def _check_offsets(x, dt, B, C) -> None:
    """The kernels' in-sequence offsets (row · row stride + head · head stride + column) are 32-bit (the batch
    offset is 64-bit): one sequence of each input, and of the contiguous dy / y, must span < 2^31 elements."""
    b, T, H, P = x.shape
    for name, t in (("x", x), ("dt", dt), ("B", B), ("C", C), ("y", None)):
        span = T * H * P if t is None else 1 + sum((t.shape[d] - 1) * t.stride(d) for d in range(1, t.dim()))
        if span >= 2**31:
            raise ValueError(f"mamba2 (triton): one sequence of {name} spans {span:,} elements (T={T}); the "
                             f"kernels' in-sequence offsets are 32-bit (< 2^31): split the sequence")


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                              initial_states=None, return_final_states=False, *, seq_idx=None, cu_seqlens=None,
                              dt_limit=(0.0, math.inf)):
    """The SSD chunk scan (see the module docstring): y ``[b, l, h, p]`` in x's dtype, or ``(y, final_states
    [b, h, p, n] fp32)`` with ``return_final_states``."""
    if z is not None:
        raise ValueError("mamba2 (triton): z (output gating) is not supported; gate outside (the lab's mixer "
                         "does: ops.norm_gate)")
    if seq_idx is not None or cu_seqlens is not None:
        raise ValueError("mamba2 (triton): seq_idx / cu_seqlens are not supported; pass equal-length sequences")
    if tuple(dt_limit) != (0.0, math.inf):
        raise ValueError(f"mamba2 (triton): dt_limit must be (0.0, inf); got {dt_limit}")
    check_tensor("x", x, ndim=4)
    dev = x.device
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("dt_bias", dt_bias),
                    ("initial_states", initial_states)):
        if t is not None:
            check_tensor(name, t, device=dev)
    _check(x, dt, A, B, C, D, None, initial_states)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be ≥ 1; got {chunk_size}")
    b, T, H, P = x.shape
    if dt_bias is not None and tuple(dt_bias.shape) != (H,):
        raise ValueError(f"dt_bias must have shape ({H},) (one per head); got {tuple(dt_bias.shape)}")
    _check_offsets(x, dt, B, C)
    # the kernels index A, D, dt_bias as contiguous (free when they are; x, dt, B, C go in with their strides)
    A, D, dt_bias = (t.contiguous() if t is not None else None for t in (A, D, dt_bias))
    save = bool(TUNING["save"] and torch.is_grad_enabled() and _save_ck(x.shape[3], B.shape[3])
                and any(t is not None and t.requires_grad for t in (x, dt, A, B, C, D, dt_bias, initial_states)))
    y, hT, _ = _mamba2(x, dt, A, B, C, D, dt_bias, initial_states, bool(dt_softplus), bool(return_final_states),
                       save)
    return (y, hT) if return_final_states else y
