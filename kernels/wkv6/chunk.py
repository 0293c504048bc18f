"""Tensor-core chunk algorithm (``wkv6``, the default): 64-token chunks whose intra-chunk scores are ``tl.dot``s
that stay exact under any decay (custom ops ``groundthink::wkv6_fwd`` / ``wkv6_bwd``).

Intra-chunk pairs by level. Inside a chunk of BT = 2^LOG rows, every pair (query t, key s < t) has a level
m = the highest bit in which t and s differ: t lies in the upper and s in the lower half of one 2^(m+1)-row
segment. With S = 2^m, the pair's decay splits at the boundary between the halves:

    E_ts = exp(Σ_{s<x<t} w_x) = exp(P^m_t) · exp(R^m_s),
    P^m_t = Σ_{x from the start of t's S-segment to t−1} w_x,   R^m_s = Σ_{x from s+1 to the end of s's S-segment} w_x

(segment-local exclusive prefix / suffix sums of w, both ≤ 0; exp(P), exp(R) are computed as segmented products
of the per-step decays exp(w) ≤ 1: no overflow, no difference of long prefix sums). So the level-m scores are one dot of decayed operands, masked to the level's pairs:

    A = Σ_m M_m ⊙ ((q ⊙ exp(P^m)) (k ⊙ exp(R^m))ᵀ) + diag(Σ_k q u k)      (level 0: P = R = 0, no decay)

with every exponent ≤ 0, so the products are safe for any decay (w = −60 per step underflows to the correct 0).
LOG dots of [BT, K] × [K, BT] per chunk, fp32 operands (tf32 tensor cores for half inputs, never cast to bf16).
The factors come from segmented cumprods of exp(w) shifted by one row (w_{t−1}, w_{t+1} loaded as tiles).

Forward per chunk (state S ∈ R^{K×V} at the chunk start, fp32; Gp / Gs = the chunk-level P / R, G_L = Σ w):
    o = (q ⊙ exp(Gp)) S + A v,      S ← diag(exp(G_L)) S + (k ⊙ exp(Gs))ᵀ v.
Two launch modes: ``SEQ`` (grid V-blocks × sequence·heads, each program walks its sequence's chunks with S in
registers, and stores S at every chunk start when the backward will need it) when that gives enough programs to
fill the GPU; otherwise the state pass of ``states.py`` (per-chunk ΔS in parallel + a short scan) and then
one program per (chunk, V-block, head).

Backward per chunk (one program per (chunk, head), all of V; S_c from the forward, D_c = dL/dS at the chunk end
from the reverse state pass of ``states.py``): B = do vᵀ; per level dA = M_m ⊙ B,
    dq += exp(P^m) ⊙ (dA k̂),  dk += exp(R^m) ⊙ (dAᵀ q̂),  q̂ = q ⊙ exp(P^m), k̂ = k ⊙ exp(R^m),
and the cancellation-free dw (only pairs that span j contribute to dw_j): a level-m pair (t, s) spans j iff j is
in t's S-segment before t (query side) or in s's S-segment after s (key side), so
    dw += segmented-reverse-exclusive-cumsum(q̂ ⊙ (dA k̂)) + segmented-exclusive-cumsum(k̂ ⊙ (dAᵀ q̂)),
plus the state-crossing terms of ``common._state_bwd`` (dq, dk, dv, dw through S_c and D_c). du: per-program
partial rows summed once (deterministic, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import autotune_configs, new_empty, num_sms
from kernels.wkv6.common import (_chunk_loc, _clamp_w, _dims, _make_ops, _nh_bucket, _prec, _run, _seq_bounds,
                                 _state_bwd)
from kernels.wkv6.states import BT_PAR, _par_slots, _par_state_shape, _par_states

BT = BT_PAR       # chunk length (the state pass's, so its per-chunk buffers serve this algorithm too)
LOG = 6           # log2(BT): number of pair levels
SEG = 1           # segmented scans: 1 reshape + scan along the middle axis, 0 associative scan (_seg_scan)


@triton.jit
def _seg_add(a, fa, b, fb):
    """Segmented-sum combine: (a, fa) then (b, fb) -> b restarts the sum where it opens a segment (fb != 0)."""
    return tl.where(fb != 0, b, a + b), fa | fb


@triton.jit
def _seg_mul(a, fa, b, fb):
    """Segmented-product combine (as ``_seg_add``)."""
    return tl.where(fb != 0, b, a * b), fa | fb


@triton.jit
def _seg_scan(b_x, o_t, S: tl.constexpr, BT: tl.constexpr, REVERSE: tl.constexpr, PROD: tl.constexpr,
              SEG: tl.constexpr):
    """Inclusive cumsum (PROD: cumprod) of b_x [BT, BK] along the rows, restarted at every S-row segment (S divides
    BT). SEG = 1: reshape to [BT/S, S, BK] and scan the middle axis; 0: a segmented associative scan."""
    if S == BT:
        if PROD:
            return tl.cumprod(b_x, axis=0, reverse=REVERSE)
        return tl.cumsum(b_x, axis=0, reverse=REVERSE)
    if SEG == 1:
        b_z = tl.reshape(b_x, (BT // S, S, b_x.shape[1]))
        if PROD:
            b_z = tl.cumprod(b_z, axis=1, reverse=REVERSE)
        else:
            b_z = tl.cumsum(b_z, axis=1, reverse=REVERSE)
        return tl.reshape(b_z, (BT, b_x.shape[1]))
    if REVERSE:
        b_f = (o_t % S == S - 1).to(tl.int32)[:, None] + tl.zeros_like(b_x).to(tl.int32)
    else:
        b_f = (o_t % S == 0).to(tl.int32)[:, None] + tl.zeros_like(b_x).to(tl.int32)
    if PROD:
        b_y, _ = tl.associative_scan((b_x, b_f), 0, _seg_mul, reverse=REVERSE)
    else:
        b_y, _ = tl.associative_scan((b_x, b_f), 0, _seg_add, reverse=REVERSE)
    return b_y


@triton.jit
def _level(b_em1, b_ep1, o_t, S: tl.constexpr, BT: tl.constexpr, SEG: tl.constexpr):
    """exp(P) and exp(R) [BT, BK] of the S-row segments (see the module docstring): P_t = Σ w from t's segment
    start to t−1, R_s = Σ w from s+1 to s's segment end, as segmented products of the per-step decays (every
    factor ≤ 1: no overflow, no cancellation). b_em1 / b_ep1 hold exp(w_{t−1}) / exp(w_{t+1}) in row t."""
    b_ep = _seg_scan(tl.where((o_t % S == 0)[:, None], 1., b_em1), o_t, S, BT, False, True, SEG)
    b_er = _seg_scan(tl.where((o_t % S == S - 1)[:, None], 1., b_ep1), o_t, S, BT, True, True, SEG)
    return b_ep, b_er


@triton.jit
def _level_mask(o_t, S: tl.constexpr):
    """Pairs (t, s) of level log2(S): t in the upper, s in the lower S-half of one 2S-row segment."""
    return ((o_t[:, None] // S) == (o_t[None, :] // S) + 1) & ((o_t[None, :] // S) % 2 == 0)


@triton.jit
def _load_chunk_k(p_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                  SHIFT: tl.constexpr):
    """Rows r0 + t + SHIFT (t < BT) of a [*, H, K] tensor, fp32; rows outside [r0, r0 + BT) ∩ [0, L) read 0."""
    rows = r0 + o_t + SHIFT
    m_t = (rows < L) & (o_t + SHIFT >= 0) & (o_t + SHIFT < BT)
    p = p_ptr + ((bos + rows) * H + i_h)[:, None] * K + o_k[None, :]
    return tl.load(p, mask=m_t[:, None] & m_k[None, :], other=0.).to(tl.float32)


@triton.jit
def _intra_scores(b_q, b_k, b_em1, b_ep1, o_t, BT: tl.constexpr, BK: tl.constexpr, LOG: tl.constexpr,
                  PREC: tl.constexpr, SEG: tl.constexpr):
    """A [BT, BT] (s < t, without the bonus diagonal): one masked dot per level."""
    b_A = tl.where(_level_mask(o_t, 1), tl.dot(b_q, tl.trans(b_k), input_precision=PREC), 0.)
    for m in tl.static_range(1, LOG):
        b_ep, b_er = _level(b_em1, b_ep1, o_t, 2 ** m, BT, SEG)
        b_s = tl.dot(b_q * b_ep, tl.trans(b_k * b_er), input_precision=PREC)
        b_A += tl.where(_level_mask(o_t, 2 ** m), b_s, 0.)
    return b_A


@triton.jit
def _fwd_chunk(q_ptr, k_ptr, v_ptr, w_ptr, b_u, o_ptr, b_h, bos, L, r0, i_h, scale, o_t, o_k, o_v, m_k, m_v,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               LOG: tl.constexpr, PREC: tl.constexpr, SEG: tl.constexpr):
    """Output rows r0..r0+BT of one chunk from the state at its start b_h [BK, BV]; returns the state at its end."""
    b_q = _load_chunk_k(q_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 0) * scale
    b_k = _load_chunk_k(k_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 0)
    b_w = _clamp_w(_load_chunk_k(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 0))
    b_em1 = tl.exp(_clamp_w(_load_chunk_k(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, -1)))
    b_ep1 = tl.exp(_clamp_w(_load_chunk_k(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 1)))
    rows = r0 + o_t
    m_tv = (rows < L)[:, None] & m_v[None, :]
    p_v = ((bos + rows) * H + i_h)[:, None] * V + o_v[None, :]
    b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_A = _intra_scores(b_q, b_k, b_em1, b_ep1, o_t, BT, BK, LOG, PREC, SEG)
    b_A += tl.where(o_t[:, None] == o_t[None, :], tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
    b_egp, b_egs = _level(b_em1, b_ep1, o_t, BT, BT, SEG)
    b_o = tl.dot(b_q * b_egp, b_h, input_precision=PREC) + tl.dot(b_A, b_v, input_precision=PREC)
    tl.store(o_ptr + p_v, b_o.to(o_ptr.dtype.element_ty), mask=m_tv)
    b_gl = tl.sum(b_w, axis=0)
    return b_h * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_k * b_egs), b_v, input_precision=PREC)


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=autotune_configs([triton.Config({"BV": 64}, num_warps=4, num_stages=1),
                                           triton.Config({"BV": 32}, num_warps=4, num_stages=1)]),
                 key=["K", "V", "BK", "PREC", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NT', 'NH_BUCKET'])
def _fwd_seq_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, h0_ptr, o_ptr, ht_ptr, hs_ptr, cu_ptr, scale, T, NT,
                    NH_BUCKET, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, LOG: tl.constexpr, USE_H0: tl.constexpr,
                    VARLEN: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr, SEG: tl.constexpr):
    """Grid (V-blocks, N·H). Walks the chunks of one (sequence, head, V-block) with the state in registers.
    q/k/w [B·T, H, K], v/o [B·T, H, V], u [H, K], h0/ht [N, H, K, V] fp32, hs [slots, H, K, V] fp32 (chunk-start
    states when SAVE; slot of chunk i: n·NT + i, or cu[n]//BT + n + i with VARLEN), cu [N+1] int32."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    if USE_H0:
        b_h = tl.load(h0_ptr + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if VARLEN:
        slot0 = bos // BT + i_n
    else:
        slot0 = i_n.to(tl.int64) * NT
    for i_c in range(0, tl.cdiv(L, BT)):
        if SAVE:
            tl.store(hs_ptr + ((slot0 + i_c) * H + i_h) * K * V + o_kv, b_h, mask=m_kv)
        b_h = _fwd_chunk(q_ptr, k_ptr, v_ptr, w_ptr, b_u, o_ptr, b_h, bos, L, i_c * BT, i_h, scale, o_t, o_k, o_v,
                         m_k, m_v, H, K, V, BT, BK, LOG, PREC, SEG)
    tl.store(ht_ptr + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=4, num_stages=1)]),
                 key=["K", "V", "BK", "BV", "PREC"])
@triton.jit(do_not_specialize=['T', 'NT'])
def _fwd_par_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, hs_ptr, o_ptr, cu_ptr, cmap_ptr, scale, T, NT,
                    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                    BV: tl.constexpr, LOG: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr,
                    SEG: tl.constexpr):
    """Grid (chunk slots, V-blocks, H): one chunk's output from its start state hs [slots, H, K, V] fp32 (the state
    pass's); cmap [slots] int32 = the sequence of each slot (VARLEN). Other layouts as ``_fwd_seq_kernel``."""
    i_s, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = tl.load(hs_ptr + (i_s.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_k[:, None] & m_v[None, :] & (o_k[:, None] * 0 + i_c * BT < L), other=0.)
    _fwd_chunk(q_ptr, k_ptr, v_ptr, w_ptr, b_u, o_ptr, b_h, bos, L, i_c * BT, i_h, scale, o_t, o_k, o_v, m_k, m_v,
               H, K, V, BT, BK, LOG, PREC, SEG)


# ----------------------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=8, num_stages=1),
                                           triton.Config({}, num_warps=4, num_stages=1)]),
                 key=["K", "V", "BK", "BV", "PREC"])
@triton.jit(do_not_specialize=['T', 'NT'])
def _bwd_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, hs_ptr, hd_ptr, dq_ptr, dk_ptr, dv_ptr, dw_ptr, du_ptr,
                cu_ptr, cmap_ptr, scale, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOG: tl.constexpr, VARLEN: tl.constexpr,
                PREC: tl.constexpr, SEG: tl.constexpr):
    """Grid (chunk slots, H), all of V per program (BV >= V). hs / hd [slots, H, K, V] fp32: the state at each
    chunk start / dL/dS at each chunk end; do/dv [B·T, H, V], dq/dk/dw [B·T, H, K] (input dtypes),
    du [slots, H, K] fp32 partial rows. Other layouts as ``_fwd_par_kernel``."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    r0 = i_c * BT
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    rows = r0 + o_t
    m_t = rows < L
    tok = (bos + rows) * H + i_h
    p_k = tok[:, None] * K + o_k[None, :]
    p_v = tok[:, None] * V + o_v[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_q = _load_chunk_k(q_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 0) * scale
    b_k = _load_chunk_k(k_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 0)
    b_wr = _load_chunk_k(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 0)
    b_em1 = tl.exp(_clamp_w(_load_chunk_k(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, -1)))
    b_ep1 = tl.exp(_clamp_w(_load_chunk_k(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, BT, 1)))
    b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_B = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
    # ---- intra-chunk pairs, level by level (level 0: adjacent rows, no decay, no dw)
    m_lv = _level_mask(o_t, 1)
    b_A = tl.where(m_lv, tl.dot(b_q, tl.trans(b_k), input_precision=PREC), 0.)
    b_dA = tl.where(m_lv, b_B, 0.)
    b_dq = tl.dot(b_dA, b_k, input_precision=PREC)
    b_dk = tl.dot(tl.trans(b_dA), b_q, input_precision=PREC)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    for m in tl.static_range(1, LOG):
        b_ep, b_er = _level(b_em1, b_ep1, o_t, 2 ** m, BT, SEG)
        b_qh = b_q * b_ep
        b_kh = b_k * b_er
        m_lv = _level_mask(o_t, 2 ** m)
        b_A += tl.where(m_lv, tl.dot(b_qh, tl.trans(b_kh), input_precision=PREC), 0.)
        b_dA = tl.where(m_lv, b_B, 0.)
        b_dqh = tl.dot(b_dA, b_kh, input_precision=PREC)
        b_dkh = tl.dot(tl.trans(b_dA), b_qh, input_precision=PREC)
        b_dq += b_ep * b_dqh
        b_dk += b_er * b_dkh
        # dw_j: queries t > j of j's segment (reverse exclusive), keys s < j of j's segment (exclusive)
        b_a = b_qh * b_dqh
        b_b = b_kh * b_dkh
        b_dw += (_seg_scan(b_a, o_t, 2 ** m, BT, True, False, SEG) - b_a
                  + _seg_scan(b_b, o_t, 2 ** m, BT, False, False, SEG) - b_b)
    b_A += tl.where(o_t[:, None] == o_t[None, :], tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
    # ---- state-crossing terms
    p_s = (i_s.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :] & (o_k[:, None] * 0 + r0 < L)
    b_h = tl.load(hs_ptr + p_s, mask=m_kv, other=0.)
    b_dh = tl.load(hd_ptr + p_s, mask=m_kv, other=0.)
    b_w = _clamp_w(b_wr)
    b_dq, b_dk, b_dv, b_dw, b_egp, b_gl = _state_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, b_A, b_dq, b_dk, b_dw,
                                                     PREC)
    tl.store(dv_ptr + p_v, b_dv.to(dv_ptr.dtype.element_ty), mask=m_tv)
    # ---- bonus u
    b_vd = tl.sum(b_v * b_do, axis=1)
    b_du = tl.sum(b_q * b_k * b_vd[:, None], axis=0)
    b_dq += b_u[None, :] * b_k * b_vd[:, None]
    b_dk += b_u[None, :] * b_q * b_vd[:, None]
    b_dw = tl.where(b_wr > 0, 0., b_dw)
    tl.store(dq_ptr + p_k, (b_dq * scale).to(dq_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dk_ptr + p_k, b_dk.to(dk_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dw_ptr + p_k, b_dw.to(dw_ptr.dtype.element_ty), mask=m_tk)
    tl.store(du_ptr + (i_s.to(tl.int64) * H + i_h) * K + o_k, b_du, mask=m_k)


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------
def _bk(K: int) -> int:
    return max(16, triton.next_power_of_2(K))


def _use_seq(N: int, H: int, V: int, device) -> bool:
    """The sequential walk when (sequence·head, 32-wide V-block) programs fill the GPU twice over (B8 H32 on an
    H100: 512 programs), else the state pass + chunk-parallel output. Provisional: scripts/gpu_wkv6.py times both
    modes at every benchmark shape."""
    return N * H * triton.cdiv(V, 32) >= 2 * num_sms(device)


def _chunk_fwd_impl(r, k, v, w, u, scale, h0, cu_seqlens, save=False, seq=None):
    """o, final state and (if save) the chunk-start states for the backward (else an empty tensor)."""
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK = _bk(K)
    dev = r.device
    prec = _prec(r.dtype)
    varlen = cu_seqlens is not None
    if seq is None:
        seq = _use_seq(N, H, V, dev)
    o = new_empty((B, T, H, V), r.dtype, dev)
    S, NT, cmap = _par_slots(B, T, N, cu_seqlens, dev)
    if seq:
        ht = new_empty((N, H, K, V), torch.float32, dev)
        hs = new_empty((S, H, K, V) if save else (0,), torch.float32, dev)
        cu = cu_seqlens.to(torch.int32) if varlen else cmap
        grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)  # noqa: E731
        _fwd_seq_kernel[grid](r, k, v, w, u, h0 if h0 is not None else ht, o, ht, hs if save else ht, cu, scale, T,
                              NT, _nh_bucket(N * H), H=H, K=K, V=V, BT=BT, BK=BK, LOG=LOG, USE_H0=h0 is not None,
                              VARLEN=varlen, SAVE=save, PREC=prec, SEG=SEG)
        return o, ht, hs
    buf, ht, _, S, NT, cmap, cu = _par_states(r, k, v, w, None, scale, h0, None, cu_seqlens, "fwd")
    BV = max(16, min(64, triton.next_power_of_2(V)))
    _fwd_par_kernel[(S, triton.cdiv(V, BV), H)](r, k, v, w, u, buf, o, cu, cmap, scale, T, NT, H=H, K=K, V=V, BT=BT,
                                                 BK=BK, BV=BV, LOG=LOG, VARLEN=varlen, PREC=prec, SEG=SEG)
    return o, ht, (buf[0] if save else buf.new_empty((0,)))


def _chunk_bwd_impl(r, k, v, w, u, do, dht, h0, cu_seqlens, scale, states=None):
    """Gradients (dr, dk, dv, dw, du, dh0 or None). ``states``: the forward's chunk-start states (else recomputed)."""
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    dev = r.device
    if states is None or states.numel() == 0:
        buf, _, dh0, S, NT, cmap, cu = _par_states(r, k, v, w, do, scale, h0, dht, cu_seqlens, "bwd")
        hs, hd = buf[0], buf[1]
    else:
        buf, _, dh0, S, NT, cmap, cu = _par_states(r, k, v, w, do, scale, h0, dht, cu_seqlens, "bwd_d")
        hs, hd = states, buf[0]
    dr = new_empty(r.shape, r.dtype, dev)
    dk = new_empty(k.shape, k.dtype, dev)
    dv = new_empty(v.shape, v.dtype, dev)
    dw = new_empty(w.shape, w.dtype, dev)
    du_part = new_empty((S, H, K), torch.float32, dev)
    _bwd_kernel[(S, H)](r, k, v, w, u, do, hs, hd, dr, dk, dv, dw, du_part, cu, cmap, scale, T, NT, H=H, K=K, V=V,
                        BT=BT, BK=_bk(K), BV=max(16, triton.next_power_of_2(V)), LOG=LOG,
                        VARLEN=cu_seqlens is not None, PREC=_prec(r.dtype, bwd=True), SEG=SEG)
    du = du_part.sum(0).to(u.dtype)
    return dr, dk, dv, dw, du, (dh0 if h0 is not None else None)


_wkv6_chunk_fwd_op = _make_ops("wkv6", _chunk_fwd_impl, _chunk_bwd_impl, _par_state_shape)


MAX_BKV = 160     # BK + BV above this: the backward's fp32 tiles exceed the H100's shared memory (K=V=128 needs
#                   256 KiB; K=32 V=96 ran on the H100)


def wkv6_chunk(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6 wkv, tensor-core chunk algorithm (the default behind ``kernels.wkv6.wkv6``). Where
    pow2(K) + pow2(V) > 160 (e.g. K = V = 128; not supported by its backward yet) it runs the sequential
    ``wkv6_fused`` instead (same results)."""
    if r.dim() == 4 and v.dim() == 4 and _bk(r.shape[-1]) + _bk(v.shape[-1]) > MAX_BKV:
        from kernels.wkv6.fused import wkv6_fused
        return wkv6_fused(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
    return _run(_wkv6_chunk_fwd_op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
