"""Shared pieces of the wkv6 algorithms: @triton.jit helpers, launch helpers, the custom-op factory, validation.

The math, layouts and numerics of every algorithm are in the package docstring (``kernels/wkv6/__init__.py``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._common import autotune_configs, cdiv as _cdiv, check_same_dtype, check_tensor, pow2 as _pow2
from kernels._dot import _rna_tf32, mma
from kernels._eager import EagerOp, pick

# dot precision for half (bf16/fp16) inputs, forward and backward; fp32 inputs always use "ieee". "tf32": the fp32
# operands rounded to nearest tf32 (``kernels._dot.mma``); "tf32_trunc": the tensor cores' own truncating read — in
# the backward dw 2.15e-3 > 2e-3 at bf16 K32 V96 strong (H200 run 27), in the forward harmless (every gradient the
# same to four digits; all 101 wkv6 GPU tests pass; run 28: forward 1.517 -> 1.394 ms, fwd+bwd -2.3 % at B8 T4096 H32)
FWD_PRECISION = "tf32_trunc"
BWD_PRECISION = "tf32"
CROSS_PRECISION = None   # the split backward's cross kernel (state operands); None: BWD_PRECISION
# the own pairs' dw span dots for half inputs (``chunk._span_dot``): "tf32x2" (the default: the 0/1 span exact, only
# c split into hi + lo, two passes; H200 run 31: the own kernel 1,099 -> 972 µs at B8 T4096 H32, 162 -> 142 at B4
# T2048 H16, 586 -> 534 at B1 T16384 H32) or "tf32x3" (Triton's three passes; gpu_wkv6's chunk_dwx3)
DW_PRECISION = "tf32x2"


def _prec(dtype: torch.dtype, bwd: bool = False, cross: bool = False) -> str:
    if dtype == torch.float32:
        return "ieee"
    if cross and CROSS_PRECISION:
        return CROSS_PRECISION
    return BWD_PRECISION if bwd else FWD_PRECISION


def _half_dot(dtype: torch.dtype) -> bool:
    """Whether a dot of two input values (e.g. B = do vᵀ) runs on them in their own half dtype: exact (a product of
    two bf16 or fp16 values fits the fp32 accumulator), and the kernel keeps fewer fp32 operand copies live (offline
    sm_90 compile, Triton 3.9, 8 warps: 255 registers + 40 B spill -> 194, no spills; on the H100, Triton 3.6, the
    autotuner keeps 4 warps and run 7 measured no speed change: ``_bwd_kernel`` 6.09 vs 5.97 ms). Not for bf16 under
    the interpreter (its bf16 dots are wrong on the CPU; fp16 ones are right and tested there)."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not INTERPRET)


def _w_for_dots(w: torch.Tensor) -> torch.Tensor:
    """w as the kernels whose dots read it raw take it (the span sums, ``_decay_sums``): as it is, except bf16 under
    the interpreter, whose bf16 dots are wrong on the CPU (then an fp32 copy). Taken once per pass
    (``chunk._chunk_fwd_impl``, ``chunk._bwd_piece``): every kernel of the pass reads that w."""
    return w if w.dtype == torch.float32 or _half_dot(w.dtype) else w.float()


def _dw_prec(prec: str) -> str:
    """The own pairs' dw span dots' precision (``DW_PRECISION``) for the kernels' PREC: "ieee" stays "ieee"."""
    return "ieee" if prec == "ieee" else DW_PRECISION


def _warp_configs():
    return autotune_configs([triton.Config({}, num_warps=4, num_stages=1),
                             triton.Config({}, num_warps=8, num_stages=1)])


@triton.jit
def _clamp_w(b_w):
    """min(w, 0) that keeps NaN (tl.minimum drops it): a NaN log-decay reaches the outputs instead of acting as 0."""
    return tl.where(b_w > 0, 0., b_w)


# ---- the decay sums as dots (the scored walk's 32-row steps, the chunk-parallel output kernel, the state passes,
# the split backward's cross kernel). A sum of w over some rows of a tile is one row of a dot of a 0/1 pattern with
# the w tile: products of bf16 / fp16 values with 0 or 1 are exact and the tensor cores accumulate them in fp32 (fp32
# inputs: "ieee", an FMA dot), every sum of terms of one sign. The scans and column sums they replaced run along the
# rows of a [rows, K] tile, which 4 warps split: each went through shared memory (H200 run 30, Nsight Compute's
# source view at B8 T4096 H32: 47 % of the walk's stall samples in its scans; the cross kernel's two column sums
# 70 M of its 219 M shared wavefronts, at 8-way bank conflicts). With the dots: walk 1,164 -> 924 µs, cross kernel
# 2,502 -> 1,993 (the same run); the one-kernel state pass 164 -> 89 µs at B4 T2048 H16 (run 30 call 7).
SUM_FLOOR = tl.constexpr(-256.)    # exp of any sum holding a term ≤ this is 0 in fp32 (and flushed by ex2.ftz)
NAN_MARK = tl.constexpr(32768.)    # > 63 · |SUM_FLOOR|: a sum over a NaN's mark stays > 0; exact in bf16 and fp16


@triton.jit
def _sum_operand(b_wr):
    """The raw log-decay tile (its dtype) as the decay-sum dots' operand: the clamp min(w, 0) of ``_clamp_w``, then
    floored at SUM_FLOOR (exact: exp of a sum holding such a term underflows to 0 either way), and a NaN as
    NAN_MARK, which ``_decay_sums`` turns back into NaN in exactly the sums over it (a 0/1 dot would spread a NaN
    itself to every row: 0 · NaN)."""
    return tl.where(b_wr < 0, tl.maximum(b_wr, SUM_FLOOR), tl.where(b_wr >= 0, 0., NAN_MARK)).to(b_wr.dtype)


@triton.jit
def _decay_sums(m_pat, b_ws):
    """Σ_x pat[r, x] · w_x [R, BK] fp32 for a 0/1 pattern m_pat [R, C] (bool, R ≥ 16) over the rows of b_ws [C, BK]
    (``_sum_operand``): one dot in the operand's dtype, every sum of terms ≤ 0; NaN where a NaN w is summed."""
    b_s = tl.dot(tl.where(m_pat, 1., 0.).to(b_ws.dtype), b_ws, input_precision="ieee")
    return tl.where(b_s > 0, float("nan"), b_s)


@triton.jit
def _decay_total(b_ws):
    """W = Σ over all rows of b_ws [C, BK] (``_sum_operand``) as a [BK] fp32 vector: the one nonzero row of a
    16-row ``_decay_sums`` dot (the column sum of zeros and one value is exact) — the state's decay."""
    m_row0 = (tl.arange(0, 16)[:, None] == 0) & (tl.arange(0, b_ws.shape[0])[None, :] >= 0)
    return tl.sum(_decay_sums(m_row0, b_ws), axis=0)


@triton.jit
def _state_or_zeros(p_state, i_nh, o_kv, m_kv, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                    BV: tl.constexpr, HAS):
    """The [BK, BV] block (offsets o_kv, mask m_kv) of state i_nh of a [N·H, K, V] tensor in fp32, or zeros when
    HAS is false (``p_state`` None): the initial state of a walk (or the final state's gradient)."""
    if HAS:
        b_s = tl.load(p_state + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    else:
        b_s = tl.zeros([BK, BV], dtype=tl.float32)
    return b_s


@triton.jit
def _kv_ranges(i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and masks every wkv6 kernel starts from, for the K columns and the i_v-th BV-wide block of V:
    (o_k [BK], o_v [BV], m_k, m_v, o_kv [BK, BV] offsets in a [K, V] state, m_kv [BK, BV])."""
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    return o_k, o_v, m_k, m_v, o_k[:, None] * V + o_v[None, :], m_k[:, None] & m_v[None, :]


@triton.jit
def _row_offsets(bos, r0, L, i_h, o_t, o_k, o_v, m_k, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
    """Offsets and masks of rows r0 + t (t < len(o_t)) of one head: (m_t [BT] rows inside the sequence length L,
    p_k [BT, BK] into a [B·T, H, K] tensor, p_v [BT, BV] into a [B·T, H, V] tensor, m_tk, m_tv their masks)."""
    m_t = r0 + o_t < L
    tok = (bos + r0 + o_t) * H + i_h
    return (m_t, tok[:, None] * K + o_k[None, :], tok[:, None] * V + o_v[None, :], m_t[:, None] & m_k[None, :],
            m_t[:, None] & m_v[None, :])


@triton.jit
def _load_rows(p_ptr, bos, r0, L, i_h, o_t, o_c, m_c, H: tl.constexpr, C: tl.constexpr, ROWS: tl.constexpr,
               SHIFT: tl.constexpr):
    """The tile every wkv6 kernel starts from: rows r0 + t + SHIFT (t < ROWS) of one head of a [B·T, H, C] tensor
    (token bos + row, columns o_c), as fp32 [ROWS, BC]. Rows outside [r0, r0 + ROWS) (SHIFT = ±1: the neighbour
    block's) or past the sequence length L read 0."""
    return _raw_rows(p_ptr, bos, r0, L, i_h, o_t, o_c, m_c, H, C, ROWS, SHIFT).to(tl.float32)


@triton.jit
def _raw_rows(p_ptr, bos, r0, L, i_h, o_t, o_c, m_c, H: tl.constexpr, C: tl.constexpr, ROWS: tl.constexpr,
              SHIFT: tl.constexpr):
    """``_load_rows`` in the tensor's own dtype (the decay-sum dots' w: ``_sum_operand``)."""
    rows = r0 + o_t + SHIFT
    m_t = (rows < L) & (o_t + SHIFT >= 0) & (o_t + SHIFT < ROWS)
    p = p_ptr + ((bos + rows) * H + i_h)[:, None] * C + o_c[None, :]
    return tl.load(p, mask=m_t[:, None] & m_c[None, :], other=0.)


@triton.jit
def _seq_bounds(cu_ptr, i_n, T, VARLEN):
    """(bos, eos) int64 of sequence i_n: from cu_ptr [N + 1] int32 when VARLEN (constexpr; cu_ptr None otherwise),
    else i_n·T and i_n·T + T."""
    if VARLEN:
        bos = tl.load(cu_ptr + i_n).to(tl.int64)
        eos = tl.load(cu_ptr + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@triton.jit
def _intra_bwd(k_ptr, p_row, row0, L, b_q, b_wt, b_B, o_t, o_k, m_k, H: tl.constexpr, K: tl.constexpr,
               ROWS: tl.constexpr, BK: tl.constexpr, UNROLL: tl.constexpr):
    """Exact backward of the intra-block part for ROWS rows starting at row0, shared by both algorithms.
    Keys j are walked upwards; P = E[:, j], E[t, j] = exp(sum_{j<i<t} w_i) for t > j (exponent <= 0):
        A[t, j] = sum_k q_t k_j P          (o_t = sum_j A[t, j] v_j  ->  dv_j += sum_t A[t, j] do_t)
        dq_t   += B[t, j] k_j P[t]         (B[t, s] = do_t . v_s)
        dk_j    = sum_t B[t, j] q_t P[t]
        dw_j   += sum_{t>j} sum_{s<j} q_t B[t, s] k_s E[t, s]   (pairs spanning j; F = running sum over s < j)
    The exponent of P is summed directly per column: a difference of two prefix sums loses ~|G|·eps absolute
    when large decays precede a near-1 pair (fp32 dw error 1e-5 at w = -60). Returns (A, dq, dk, dw), fp32."""
    b_A = tl.zeros([ROWS, ROWS], dtype=tl.float32)
    b_dq = tl.zeros([ROWS, BK], dtype=tl.float32)
    b_dk = tl.zeros([ROWS, BK], dtype=tl.float32)
    b_dw = tl.zeros([ROWS, BK], dtype=tl.float32)
    b_F = tl.zeros([ROWS, BK], dtype=tl.float32)
    for j in tl.range(0, ROWS, loop_unroll_factor=UNROLL):
        m_j = m_k & (o_k * 0 + row0 + j < L)
        b_kj = tl.load(k_ptr + p_row + j * H * K, mask=m_j, other=0.).to(tl.float32)
        m_after = o_t[:, None] > j
        b_dw = tl.where(o_t[:, None] == j, tl.sum(tl.where(m_after, b_F, 0.), axis=0)[None, :], b_dw)
        b_wa = tl.where(m_after, b_wt, 0.)
        b_P = tl.where(m_after, tl.exp(tl.cumsum(b_wa, axis=0) - b_wa), 0.)
        b_bj = tl.sum(tl.where(o_t[None, :] == j, b_B, 0.), axis=1)
        b_qbp = b_q * b_bj[:, None] * b_P
        b_dk = tl.where(o_t[:, None] == j, tl.sum(b_qbp, axis=0)[None, :], b_dk)
        b_dq += b_bj[:, None] * b_kj[None, :] * b_P
        b_F += b_qbp * b_kj[None, :]
        b_A = tl.where(o_t[None, :] == j, tl.sum(b_q * b_kj[None, :] * b_P, axis=1)[:, None], b_A)
    return b_A, b_dq, b_dk, b_dw


@triton.jit
def _span_dot(b_span, b_c, DWP: tl.constexpr):
    """b_span [R, R] (0 / 1: exact at any precision) · b_c [R, BKC] fp32 at DWP: "ieee", "tf32x3" (Triton's three
    tf32 passes: hi·hi + hi·lo + lo·hi of both operands' splits) or "tf32x2" (``DW_PRECISION``'s default):
    only c split, hi = c rounded to tf32 and lo = c − hi (exact in fp32), two tf32 passes — the span's lo is zero, so
    Triton's third pass multiplies zeros; lo's own truncating tf32 read drops < 2^-10 of |lo| ≤ 2^-11 |c|."""
    if DWP == "tf32x2":
        b_hi = _rna_tf32(b_c)
        b_s = tl.dot(b_span, b_c - b_hi, tl.dot(b_span, b_hi, input_precision="tf32"), input_precision="tf32")
    else:
        b_s = tl.dot(b_span, b_c, input_precision=DWP)
    return b_s


@triton.jit
def _excl_combine(s_a, l_a, s_b, l_b):
    """Joins two adjacent segments, each held as (sum of all its terms but the last, its last term), into one:
    an associative scan of (0, x) with it gives the exclusive prefix sums Σ_{i<j} x_i (with ``reverse=True`` the
    exclusive suffix sums Σ_{i>j} x_i: the scan of the flipped sequence), each formed from those terms only."""
    return s_a + l_a + s_b, l_b


@triton.jit
def _cross_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, PREC: tl.constexpr):
    """The block-crossing terms of one block's backward, given S at the block start (b_h, K×V) and dL/dS at its end
    (b_dh), with b_w the clamped log-decay: dq^s_t = exp(Gp_t) (S0 do_t), dk^s_t = exp(G_L − G_t) (D v_t)
    (G_L − G_t as a suffix sum), dv^s_t = (k_t ⊙ exp(G_L − G_t)) D, and dw over the pairs crossing the block
    boundary: queries here vs earlier keys, keys here vs later queries, and earlier keys vs later queries
    (exp(G_L) S0 : D), its sums by the scan (the fused backward's form). Returns (dq^s, dk^s, dv^s, dw^s) fp32; b_h
    and b_dh are dead afterwards."""
    return _cross_terms(b_q, b_k, b_v, b_do, b_h, b_dh, tl.sum(b_w, axis=0), tl.exp(tl.cumsum(b_w, axis=0) - b_w),
                        tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w), PREC, False)


@triton.jit
def _cross_bwd_dots(b_q, b_k, b_ws, b_v, b_do, b_h, b_dh, o_t, PREC: tl.constexpr):
    """``_cross_bwd`` (its dw by the triangle dots) with the decay sums as
    ``_decay_sums`` dots of b_ws [SB, BK] (``_sum_operand`` of the block's raw w; o_t = arange(SB)): no scan, no
    column sum across the warps."""
    r, x = o_t[:, None], o_t[None, :]
    return _cross_terms(b_q, b_k, b_v, b_do, b_h, b_dh, _decay_total(b_ws), tl.exp(_decay_sums(x < r, b_ws)),
                        tl.exp(_decay_sums(x > r, b_ws)), PREC, True)


@triton.jit
def _cross_terms(b_q, b_k, b_v, b_do, b_h, b_dh, b_gl, b_egp, b_egl, PREC: tl.constexpr, DW_DOTS: tl.constexpr):
    """``_cross_bwd`` given the block's decays: b_gl = G_L [BK], b_egp / b_egl [R, BK] the exp of the exclusive
    prefix / suffix sums of the clamped w. Returns (dq^s, dk^s, dv^s, dw^s) fp32."""
    b_dwx = (tl.exp(b_gl) * tl.sum(b_h * b_dh, axis=1))[None, :]
    b_dqx = mma(b_do, tl.trans(b_h), PREC, A_EXACT=True) * b_egp
    b_dkx = mma(b_v, tl.trans(b_dh), PREC, A_EXACT=True) * b_egl
    b_dvx = mma(b_k * b_egl, b_dh, PREC)
    # dw_j += Σ_{t>j} a_t + Σ_{s<j} b_s, each sum formed from the other rows' terms only (an inclusive cumsum minus
    # the row's own term cancelled: absolute error ulp(a_j), 33 % of a small dw_j beside a large one, fp32 dw 2.3e-5
    # found by the fuzz). Two exact forms, chosen per kernel by the GPU (DW_DOTS):
    #   dots of the strict triangular 0/1 patterns (ieee / tf32x3; the own kernel's two-pass form, ``_span_dot``,
    #   saved < 1 % here in H200 run 33 for a less exact dw: not taken): the split backward's cross kernel
    #   (H100 run 19: _bwd_cross_kernel 2,351 us at B8 T4096 H32 with them, 3,229 with the scan);
    #   an associative scan of (0, x) pairs (``_excl_combine``): the fused backward, where the dots spilled
    #   (offline sm_90, 2 warps: 528 → 776 B; run 18 LOWMEM 9.07 → 10.13 ms, run 19 with the scan 9.21)
    b_a = b_q * b_dqx
    b_b = b_k * b_dkx
    if DW_DOTS:
        o_r = tl.arange(0, b_q.shape[0])
        b_after = tl.where(o_r[None, :] > o_r[:, None], 1., 0.)
        if PREC == "ieee":
            b_dwx += (tl.dot(b_after, b_a, input_precision="ieee")
                      + tl.dot(tl.trans(b_after), b_b, input_precision="ieee"))
        else:
            b_dwx += (tl.dot(b_after, b_a, input_precision="tf32x3")
                      + tl.dot(tl.trans(b_after), b_b, input_precision="tf32x3"))
    else:
        b_after, _ = tl.associative_scan((tl.zeros_like(b_a), b_a), 0, _excl_combine, reverse=True)
        b_before, _ = tl.associative_scan((tl.zeros_like(b_b), b_b), 0, _excl_combine)
        b_dwx += b_after + b_before
    return b_dqx, b_dkx, b_dvx, b_dwx


@triton.jit
def _state_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, b_A, b_dq, b_dk, b_dw, PREC: tl.constexpr):
    """``_cross_bwd`` added to a block's intra parts (b_A the block's scores, dv gets Aᵀ do).
    Returns (dq, dk, dv, dw, exp(Gp), G_L)."""
    b_dqx, b_dkx, b_dvx, b_dwx = _cross_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, PREC)
    b_dv = b_dvx + mma(tl.trans(b_A), b_do, PREC, B_EXACT=True)
    return (b_dq + b_dqx, b_dk + b_dkx, b_dv, b_dw + b_dwx, tl.exp(tl.cumsum(b_w, axis=0) - b_w),
            tl.sum(b_w, axis=0))


@triton.jit
def _bonus_bwd(b_q, b_k, b_v, b_do, b_u, b_dq, b_dk):
    """The bonus term's backward for rows [R, BK] (q already scaled; fp32): dq += u ⊙ k (v·do), dk += u ⊙ q (v·do).
    Returns (dq, dk, du part [BK] = Σ_t q ⊙ k (v·do))."""
    b_vd = tl.sum(b_v * b_do, axis=1)
    b_dq += b_u[None, :] * b_k * b_vd[:, None]
    b_dk += b_u[None, :] * b_q * b_vd[:, None]
    return b_dq, b_dk, tl.sum(b_q * b_k * b_vd[:, None], axis=0)


@triton.jit
def _store_dqkw(b_dq, b_dk, b_dw, b_wr, dq_ptr, dk_ptr, dw_ptr, p_k, m_tk, scale):
    """Stores rows of dq (× scale), dk and dw (0 where the raw w > 0: the clamp passes no gradient) in the
    gradients' dtypes; p_k / m_tk: offsets and mask [R, BK] of the rows."""
    tl.store(dq_ptr + p_k, (b_dq * scale).to(dq_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dk_ptr + p_k, b_dk.to(dk_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dw_ptr + p_k, tl.where(b_wr > 0, 0., b_dw).to(dw_ptr.dtype.element_ty), mask=m_tk)


@triton.jit
def _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT: tl.constexpr, VARLEN):
    """Chunk slot i_s -> (sequence n, chunk index in the sequence, bos, sequence length). Slots of a sequence:
    n·NT + i (fixed length) or bos//BT + n + i (varlen; cmap_ptr [slots] int32: cmap[slot] = n, host-computed;
    unused slots get a chunk index past the sequence end, i.e. every row masked). VARLEN (constexpr) off: cu_ptr and
    cmap_ptr are None."""
    i_s64 = i_s.to(tl.int64)
    if VARLEN:
        i_n = tl.load(cmap_ptr + i_s).to(tl.int64)
        bos = tl.load(cu_ptr + i_n).to(tl.int64)
        eos = tl.load(cu_ptr + i_n + 1).to(tl.int64)
        i_c = i_s64 - (bos // BT + i_n)
    else:
        i_n = i_s64 // NT
        i_c = i_s64 % NT
        bos = i_n * T
        eos = bos + T
    return i_n, i_c, bos, eos - bos



def _blocks(K, V):
    return max(16, _pow2(K)), max(16, min(64, _pow2(V)))


def _cu(cu_seqlens):
    """cu_seqlens as int32 for the kernels' cu_ptr, or None (fixed-length batches: the kernels' VARLEN off)."""
    return None if cu_seqlens is None else cu_seqlens.to(torch.int32)


def _dims(r, v, cu_seqlens):
    B, T, H, K = r.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return B, T, H, K, V, N


def _nh_bucket(nh: int) -> int:
    """Autotune key for the forward: the number of (sequence, head) programs, coarsely. Few programs (e.g. B1 H32)
    need a smaller BV (more V-blocks) to fill the GPU; many want BV = 64. Unused by the kernel body."""
    return min(_pow2(nh), 1024)





# ----------------------------------------------------------------------------------------------------------------
# custom ops (torch.compile) + autograd: one pair of ops per algorithm, made by the same factory
# ----------------------------------------------------------------------------------------------------------------
def _make_ops(name: str, fwd_impl, bwd_impl, state_shape):
    """Register ``groundthink::{name}_fwd`` / ``{name}_bwd`` for one algorithm, with fake (meta) kernels and the
    autograd formula; return the forward op wrapped in ``kernels._eager.EagerOp`` (the custom ops while torch.compile
    traces; eager calls run the same impls and formula through a plain autograd.Function, or the forward impl alone
    when no gradient is needed). ``state_shape(B, T, H, K, V, N, varlen, device)`` is the shape of the fp32 chunk
    states the forward saves for the backward when ``save_states``."""

    @torch.library.custom_op(f"groundthink::{name}_fwd", mutates_args=())
    def fwd_op(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
               scale: float, initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
               save_states: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return fwd_impl(r, k, v, w, u, scale, initial_state, cu_seqlens, save_states)

    @fwd_op.register_fake
    def _(r, k, v, w, u, scale, initial_state, cu_seqlens, save_states=False):
        B, T, H, K, V, N = _dims(r, v, cu_seqlens)
        hs = r.new_empty(state_shape(B, T, H, K, V, N, cu_seqlens is not None, r.device) if save_states else (0,),
                         dtype=torch.float32)
        return r.new_empty((B, T, H, V)), r.new_empty((N, H, K, V), dtype=torch.float32), hs

    @torch.library.custom_op(f"groundthink::{name}_bwd", mutates_args=())
    def bwd_op(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
               do: torch.Tensor, dht: Optional[torch.Tensor], initial_state: Optional[torch.Tensor],
               cu_seqlens: Optional[torch.Tensor], scale: float, states: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dr, dk, dv, dw, du, dh0 = bwd_impl(r, k, v, w, u, do, dht, initial_state, cu_seqlens, scale, states)
        if dh0 is None:
            dh0 = r.new_empty((0,), dtype=torch.float32)
        return dr, dk, dv, dw, du, dh0

    @bwd_op.register_fake
    def _(r, k, v, w, u, do, dht, initial_state, cu_seqlens, scale, states):
        dh0 = (torch.empty_like(initial_state, dtype=torch.float32) if initial_state is not None
               else r.new_empty((0,), dtype=torch.float32))
        return (torch.empty_like(r), torch.empty_like(k), torch.empty_like(v), torch.empty_like(w),
                torch.empty_like(u), dh0)

    def setup_context(ctx, inputs, output):
        r, k, v, w, u, scale, initial_state, cu_seqlens, save_states = inputs
        # outputs without a gradient reach the backward as None, not as zeros: the saved fp32 states (never used
        # downstream) would otherwise get a zero gradient of their size (268 MB at B8 T4096 H32 K=V=64)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(r, k, v, w, u, initial_state, cu_seqlens, output[2])
        ctx.scale = scale
        ctx.has_h0 = initial_state is not None

    def backward(ctx, do, dht, _dstates):
        r, k, v, w, u, initial_state, cu_seqlens, states = ctx.saved_tensors
        if do is None:
            do = torch.zeros((*r.shape[:3], v.shape[-1]), dtype=r.dtype, device=r.device)
        dr, dk, dv, dw, du, dh0 = pick(bwd_op, bwd_impl, do)(r, k, v, w, u, do.contiguous(),
                                                             dht.contiguous() if dht is not None else None,
                                                             initial_state, cu_seqlens, ctx.scale, states)
        return dr, dk, dv, dw, du, None, (dh0 if ctx.has_h0 else None), None, None

    return EagerOp(name, fwd_op, fwd_impl, setup_context, backward)



# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def _check_offsets(cu_seqlens, T):
    """The values of cu_seqlens: 0 first, T last, non-decreasing (a bad offset would make the kernels read and write
    out of bounds). Costs one small device-to-host copy (N+1 integers, a sync); skipped while a CUDA graph is being
    captured or torch.compile traces (the shape and dtype checks still run there)."""
    if torch.compiler.is_compiling() or (cu_seqlens.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
        shown = cu if len(cu) <= 8 else cu[:4] + ["..."] + cu[-3:]
        raise ValueError(f"cu_seqlens must start at 0, end at T = {T} and never decrease; got {shown}")


_VALID: set = set()     # argument signatures that passed _validate (shapes, dtypes, devices)


def _signature(*ts):
    return tuple((t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else t is None for t in ts)


def _validate(r, k, v, w, u, initial_state, cu_seqlens):
    """Shape, dtype and device checks, run once per argument signature (a set lookup afterwards); the values of
    cu_seqlens are checked on every call (``_check_offsets``)."""
    sig = _signature(r, k, v, w, u, initial_state, cu_seqlens)
    if sig not in _VALID:
        _validate_signature(r, k, v, w, u, initial_state, cu_seqlens)
        if len(_VALID) > 256:
            _VALID.clear()
        _VALID.add(sig)
    if cu_seqlens is not None:
        _check_offsets(cu_seqlens, r.shape[1])


def _validate_signature(r, k, v, w, u, initial_state, cu_seqlens):
    check_tensor("r", r, ndim=4)
    dev = r.device
    check_tensor("k", k, ndim=4, device=dev)
    check_tensor("v", v, ndim=4, device=dev)
    check_tensor("w", w, ndim=4, device=dev)
    check_same_dtype(r=r, k=k, v=v, w=w)
    B, T, H, K = r.shape
    check_tensor("k", k, shape=(B, T, H, K))
    check_tensor("w", w, shape=(B, T, H, K))
    check_tensor("v", v, shape=(B, T, H, None))
    check_tensor("u", u, ndim=2, device=dev, shape=(H, K))
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64), device=dev)
        if B != 1:
            raise ValueError(f"cu_seqlens packs sequences into B = 1; got r with B = {B}")
        if cu_seqlens.shape[0] < 2:
            raise ValueError("cu_seqlens must hold at least 2 offsets [0, ..., T]")
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    if initial_state is not None:
        check_tensor("initial_state", initial_state, ndim=4, device=dev, shape=(N, H, K, v.shape[-1]))
    if T == 0:
        raise ValueError("r has T = 0 tokens; need T >= 1")



def _run(fwd_op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens):
    """The public entry of every differentiable algorithm: validate, default the scale, run its custom op (saving
    the chunk states for the backward only when a gradient will be needed)."""
    _validate(r, k, v, w, u, initial_state, cu_seqlens)
    scale = float(r.shape[-1] ** -0.5 if scale is None else scale)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (r, k, v, w, u, h0))
    args = (r.contiguous(), k.contiguous(), v.contiguous(), w.contiguous(), u.contiguous(), scale, h0,
            cu_seqlens.contiguous() if cu_seqlens is not None else None, save)
    o, ht, _ = fwd_op(*args)    # kernels._eager.EagerOp: the custom ops under torch.compile, else the same impls
    return o, (ht if output_final_state else None)
