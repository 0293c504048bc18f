"""RWKV-6 wkv in hand-written Triton: two chunked algorithms (forward + backward), recurrent decode path, custom ops.

* ``wkv6`` (default): chunk-PARALLEL algorithm, custom ops ``groundthink::wkv6_chunk_fwd`` / ``wkv6_chunk_bwd``;
* ``wkv6_fused``: the sequential chunked algorithm (one program walks a whole sequence), custom ops
  ``groundthink::wkv6_fwd`` / ``wkv6_bwd``;
* ``wkv6_recurrent``: token by token, forward only (decode).

Math (per sequence and head; state S ∈ R^{K×V}; log-decay w_t ≤ 0 per key channel; bonus u ∈ R^K;
q_t = scale · r_t):

    o_t = q_t · (S_{t-1} + diag(u) k_tᵀ v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_tᵀ v_t                 (S_{-1} = initial_state, final state = S_{T-1})

Layouts (fla style): r, k, w ``[B, T, H, K]``; v ``[B, T, H, V]``; u ``[H, K]``; initial/final state
``[N, H, K, V]`` fp32 (N = B, or the number of packed sequences with ``cu_seqlens`` and B = 1). All inputs are
made contiguous; a token is row ``bos + t`` of the flattened ``[B·T, H, *]`` tensors.

Chunk-parallel algorithm (``wkv6``; chunks of BT_PAR = 64 tokens, exact 16-row sub-blocks; chunks never straddle
sequences: with ``cu_seqlens`` sequence n owns chunk slots cu[n]//64 + n + i, i < cdiv(len_n, 64), the slot →
sequence map is computed on the device by searchsorted, no host sync):
  forward  1. ``_chunk_state_kernel`` (grid chunks × V-blocks × heads): G_L and ΔS_c = (k ⊙ exp(G_L − G))ᵀ v
              (G_L − G as a suffix sum: exponents ≤ 0 and no long-prefix-sum cancellation);
           2. ``_chunk_scan_kernel`` (grid V-blocks × sequence·heads, sequential over chunks, in place):
              S_c (state at each chunk start) ← S, S ← diag(exp(G_L)) S + ΔS_c; final state;
           3. ``_chunk_fwd_out_kernel`` (grid chunks·4 sub-blocks × V-blocks × heads): the state at the sub-block
              start S_m = S_c advanced over the m earlier sub-blocks (16-row state updates, exponents ≤ 0), then the
              exact 16-row output of the sequential kernel (below) from S_m.
  backward (states S_c saved by the forward when a gradient is needed, else recomputed):
           1. ``_chunk_state_kernel`` (MODE 2, or 3 to recompute S): ΔD_c = (q ⊙ exp(Gp))ᵀ do per chunk;
           2. ``_chunk_scan_kernel`` reversed: D_c = dL/dS at each chunk end (D ← diag(exp(G_L)) D + ΔD_c from
              dS_final), dh0 = D at the start;
           3. ``_chunk_bwd_kernel`` (grid chunks·4 sub-blocks × heads, all of V per program): S_m from S_c and the
              earlier sub-blocks, D_m (dL/dS after the sub-block) from D_c and the later sub-blocks
              (D ← diag(exp(gl)) D + (q ⊙ exp(gp))ᵀ do), then the exact 16-row backward of the sequential kernel
              (dq, dk, dv, the cancellation-free dw below, per-program du rows summed once: deterministic).
  Everything the sequential kernel computes per 16-row chunk from (S at its start, D at its end) is computed
  here per sub-block from (S_m, D_m): the same exact formulas, so the same errors.

Sequential chunked algorithm (``wkv6_fused``; chunk BT = 16 tokens, one program per (V-block, sequence·head) walking
its sequence chunk by chunk with the K×BV state in registers, fp32). Inside a chunk, G_t = Σ_{j≤t} w_j
(chunk-local cumsum, fp32), Gp_t = G_{t-1} = G_t − w_t, G_L = G of the last row:

* inter-chunk:  o_t += (q_t ⊙ exp(Gp_t)) · S                    (exponent ≤ 0)
* intra-chunk:  A_ts = Σ_k q_tk k_sk E_tsk (s < t), E_ts = exp(Gp_t − G_s) = Π_{s<i<t} exp(w_i);
  A_tt = Σ_k q_tk u_k k_tk;  o_t += Σ_s A_ts v_s (a dot).
  The chunk is a single 16-row "diagonal sub-block" computed *exactly*, no factorization: a loop over the keys j
  (downwards) keeps the decay column P = E[:, j] ([BT, BK], fp32) and updates it by products of the per-step
  decays exp(w) ≤ 1 (no exponent anywhere can be positive), A[:, j] = Σ_k q ⊙ k_j ⊙ P. Any decay works
  (w = −40 per step and beyond: the products underflow to the correct 0).
* state:        S ← diag(exp(G_L)) S + Σ_s (k_s ⊙ exp(G_L − G_s))ᵀ v_s   (exponents ≤ 0)
* with autograd, the forward also stores the state at every CKPT-th chunk start (fp32 checkpoints for the
  backward; K·V·4 bytes per 64 tokens and head).

Backward (one launch, two with several V-blocks; a checkpoint pass first if the forward did not save them; no
atomics, deterministic): a reverse walk carrying D_t = ∂L/∂S_t (D_{T-1} = dS_final,
D_{t-1} = diag(exp(w_t)) D_t + q_tᵀ do_t, dh0 = D_{-1}); at the end of each group of CKPT chunks it recomputes the
group's chunk-start states S0 from the checkpoint into a small per-program scratch (L2-resident):
   dq_t = S_{t-1} do_t + u k_t (v_t·do_t), dk_t = D_t v_t + u q_t (v_t·do_t), dv_t = k_t D_t + (Σ_k q_t u k_t) do_t,
   du = Σ_t q_t k_t (v_t·do_t) (per-program fp32 rows, summed once), each split into the S0/D parts (dots) and
   the exact intra-chunk parts (``_intra_bwd``: a loop over keys j upwards with exp columns
   E[:, j] = exp(Σ_{j<i<t} w_i), t > j, exponent ≤ 0, summed directly rather than as Gp_t − G_j).
   With several V-blocks dq, dk, dw are per-V-block fp32 partials summed by a second kernel.

dw without cancellation. The usual formula dw_j = Σ_{t>j} q_t⊙dq^s_t − Σ_{t≥j} k_t⊙dk^s_t (+ S_final⊙dS_final)
subtracts O(1) terms of nearby (undecayed) pairs to get a result that is tiny where the decay is strong, which
amplifies rounding (fp32 rel err ~1e-5 on CPU, far worse with tf32 dots). Instead each pair (key s, query t)
contributes to dw_j exactly when s < j < t (its decay exp(G_{t-1} − G_s) contains w_j), so for j in chunk c:

    dw_j = Σ_{t>j, s<j, both in c} q_t k_s E_ts (do_t·v_s)                    (exact, running sum over keys s < j)
         + Σ_{t>j in c} q_t ⊙ exp(Gp_t) ⊙ (S0_c do_t)                          (earlier keys, queries here)
         + Σ_{s<j in c} k_s ⊙ exp(G_L − G_s) ⊙ (D_c v_s)                       (keys here, later queries)
         + exp(G_L) ⊙ Σ_v S0_c ⊙ D_c                                            (earlier keys, later queries)

with D_c = ∂L/∂S at the chunk's last row (dS_final included): no structured cancellation. Hence w of the last
step only acts through the final state. This needs S0_c in the reverse walk, hence the checkpoints.

Numerics: state, cumsums and every accumulation in fp32. ``tl.dot`` runs on fp32 operands with
``input_precision`` = "ieee" for fp32 inputs (≤ 1e-5 vs fp64) and "tf32" for bf16/fp16 inputs (relative
error ~1e-4, far below the bf16 rounding of o and the gradients, which is the ~1.6e-3 floor);
``FWD_PRECISION`` / ``BWD_PRECISION`` override the choice for half inputs (e.g. "ieee" or "tf32x3").

Positive log-decay: w is clamped to ≤ 0 (decay ≤ 1) inside the kernels and dw is 0 where w > 0 (the gradient of
``min(w, 0)``), i.e. the op computes exactly ``reference(min(w, 0))``. w must be finite.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels._common import autotune_configs, check_same_dtype, check_tensor, new_empty

BT_CHUNK = 16
BT_PAR = 64       # chunk-parallel algorithm: chunk length
SUB_PAR = 16      # ... and its exact sub-block length
CKPT = 4          # backward: chunk states checkpointed every CKPT chunks, the others recomputed into L2 scratch
# dot precision for half (bf16/fp16) inputs, forward and backward; fp32 inputs always use "ieee"
FWD_PRECISION = "tf32"
BWD_PRECISION = "tf32"


def _prec(dtype: torch.dtype, bwd: bool = False) -> str:
    if dtype == torch.float32:
        return "ieee"
    return BWD_PRECISION if bwd else FWD_PRECISION


def _warp_configs():
    return autotune_configs([triton.Config({}, num_warps=4, num_stages=1),
                             triton.Config({}, num_warps=8, num_stages=1)])


@triton.jit
def _seq_bounds(cu_ptr, i_n, T, VARLEN):
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
def _state_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, b_A, b_dq, b_dk, b_dw, PREC: tl.constexpr):
    """The state-crossing terms of one block's backward, shared by both algorithms, given S at the block start
    (b_h, K×V) and dL/dS at its end (b_dh): dq^s_t += exp(Gp_t) (S0 do_t), dk^s_t += exp(G_L − G_t) (D v_t)
    (G_L − G_t as a suffix sum), dv_t = (k_t ⊙ exp(G_L − G_t)) D + Σ_t' A[t', t] do_t', and dw over the pairs
    crossing the block boundary: queries here vs earlier keys, keys here vs later queries, and earlier keys vs
    later queries (exp(G_L) S0 : D). Returns (dq, dk, dv, dw, exp(Gp), G_L)."""
    b_gp = tl.cumsum(b_w, axis=0) - b_w
    b_gl = tl.sum(b_w, axis=0)
    b_egp = tl.exp(b_gp)
    b_egl = tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w)
    b_dqx = tl.dot(b_do, tl.trans(b_h), input_precision=PREC) * b_egp
    b_dkx = tl.dot(b_v, tl.trans(b_dh), input_precision=PREC) * b_egl
    b_dv = tl.dot(b_k * b_egl, b_dh, input_precision=PREC) + tl.dot(tl.trans(b_A), b_do, input_precision=PREC)
    b_a = b_q * b_dqx
    b_b = b_k * b_dkx
    b_dw += tl.cumsum(b_a, axis=0, reverse=True) - b_a + tl.cumsum(b_b, axis=0) - b_b
    b_dw += (tl.exp(b_gl) * tl.sum(b_h * b_dh, axis=1))[None, :]
    return b_dq + b_dqx, b_dk + b_dkx, b_dv, b_dw, b_egp, b_gl


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=autotune_configs([triton.Config({"BV": 64, "UNROLL": 1}, num_warps=4, num_stages=1),
                                           triton.Config({"BV": 64, "UNROLL": 4}, num_warps=4, num_stages=1),
                                           triton.Config({"BV": 64, "UNROLL": 1}, num_warps=8, num_stages=1),
                                           triton.Config({"BV": 32, "UNROLL": 1}, num_warps=4, num_stages=1),
                                           triton.Config({"BV": 16, "UNROLL": 1}, num_warps=4, num_stages=1)]),
                 key=["K", "V", "BK", "PREC", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'USE_H0', 'VARLEN', 'SAVE', 'NH_BUCKET'])
def _wkv6_fwd_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, h0_ptr, o_ptr, ht_ptr, hs_ptr, cu_ptr, scale, T, NH_BUCKET,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, USE_H0, VARLEN, SAVE, PREC: tl.constexpr, CK: tl.constexpr,
                     UNROLL: tl.constexpr):
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
    m_eq = o_t[:, None] == o_t[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    p_hs = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        b_h = tl.load(h0_ptr + p_hs, mask=m_kv, other=0.).to(tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    c0 = bos // (BT * CK) + i_n     # checkpoint slots for the backward (see _bwd_impl)
    for i_c in range(0, tl.cdiv(L, BT)):
        if SAVE:
            if i_c % CK == 0:
                tl.store(hs_ptr + ((c0 + i_c // CK) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :], b_h,
                         mask=m_kv)
        rows = i_c * BT + o_t
        m_t = rows < L
        tok = (bos + rows) * H + i_h
        p_k = tok[:, None] * K + o_k[None, :]
        p_v = tok[:, None] * V + o_v[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        # exact intra-chunk scores A[t, j] = sum_k q_tk k_jk E[t, j, k], E[t, j] = prod_{j<i<t} exp(w_i) (s < t):
        # keys walked downwards, the decay column P = E[:, j] updated by products (no exponent, all factors <= 1)
        p_row = ((bos + i_c * BT) * H + i_h) * K + o_k
        b_A = tl.zeros([BT, BT], dtype=tl.float32)
        b_P = tl.zeros([BT, BK], dtype=tl.float32)
        for jj in tl.range(0, BT, loop_unroll_factor=UNROLL):
            j = BT - 1 - jj
            # (j = BT-1: the row j+1 lies outside the chunk: masked to w = 0, decay 1, no row set)
            m_j1 = m_k & (o_k * 0 + i_c * BT + j + 1 < L) & (o_k * 0 + j + 1 < BT)
            b_e1 = tl.exp(tl.minimum(tl.load(w_ptr + p_row + (j + 1) * H * K, mask=m_j1, other=0.)
                                     .to(tl.float32), 0.))
            b_P = tl.where(o_t[:, None] == j + 1, 1., b_P * b_e1[None, :])
            b_kj = tl.load(k_ptr + p_row + j * H * K, mask=m_k & (o_k * 0 + i_c * BT + j < L), other=0.).to(tl.float32)
            b_a = tl.sum(b_q * b_kj[None, :] * b_P, axis=1)
            b_A = tl.where(o_t[None, :] == j, b_a[:, None], b_A)
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = tl.minimum(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32), 0.)
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_g = tl.cumsum(b_w, axis=0)
        b_gp = b_g - b_w
        b_gl = tl.sum(b_w, axis=0)
        b_A += tl.where(m_eq, tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
        b_o = tl.dot(b_q * tl.exp(b_gp), b_h, input_precision=PREC)
        b_o += tl.dot(b_A, b_v, input_precision=PREC)
        tl.store(o_ptr + p_v, b_o.to(o_ptr.dtype.element_ty), mask=m_tv)
        b_kd = b_k * tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w)  # G_L - G_t as a suffix sum
        b_h = b_h * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    tl.store(ht_ptr + p_hs, b_h, mask=m_kv)


# ----------------------------------------------------------------------------------------------------------------
# backward 1: forward walk storing the chunk-start states S0_c (fp32)
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=_warp_configs(), key=["K", "V", "BK", "BV", "PREC"])
@triton.jit(do_not_specialize=['T', 'USE_H0', 'VARLEN'])
def _wkv6_bwd_states_kernel(k_ptr, v_ptr, w_ptr, h0_ptr, hs_ptr, cu_ptr, T,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                            BK: tl.constexpr, BV: tl.constexpr, USE_H0, VARLEN,
                            PREC: tl.constexpr, CK: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    c0 = bos // (BT * CK) + i_n     # first checkpoint slot of this sequence (slots never overlap, see _bwd_impl)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        b_h = tl.load(h0_ptr + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    for i_c in range(0, tl.cdiv(L, BT)):
        if i_c % CK == 0:
            tl.store(hs_ptr + ((c0 + i_c // CK) * H + i_h) * K * V + o_kv, b_h, mask=m_kv)
        rows = i_c * BT + o_t
        m_t = rows < L
        tok = (bos + rows) * H + i_h
        p_k = tok[:, None] * K + o_k[None, :]
        p_v = tok[:, None] * V + o_v[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = tl.minimum(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32), 0.)
        b_v = tl.load(v_ptr + p_v, mask=m_t[:, None] & m_v[None, :], other=0.).to(tl.float32)
        b_g = tl.cumsum(b_w, axis=0)
        b_gl = tl.sum(b_w, axis=0)
        b_kd = b_k * tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w)  # G_L - G_t as a suffix sum
        b_h = b_h * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)


# ----------------------------------------------------------------------------------------------------------------
# backward 2: reverse walk carrying D = dL/dS -> dq, dk, dw (partials over V-blocks or final), dv, dh0
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=autotune_configs([triton.Config({"UNROLL": 1}, num_warps=8, num_stages=1),
                                           triton.Config({"UNROLL": 4}, num_warps=8, num_stages=1),
                                           triton.Config({"UNROLL": 1}, num_warps=4, num_stages=1)]),
                 key=["K", "V", "BK", "BV", "PREC", "DIRECT"])
@triton.jit(do_not_specialize=['T', 'NTOK', 'USE_H0', 'USE_DHT', 'VARLEN'])
def _wkv6_bwd_main_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, dht_ptr, hs_ptr, sc_ptr, dq_ptr, dk_ptr, dw_ptr,
                          dv_ptr, du_ptr, dh0_ptr, cu_ptr, scale, T, NTOK,
                          H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                          BK: tl.constexpr, BV: tl.constexpr, USE_H0, USE_DHT,
                          VARLEN, PREC: tl.constexpr, DIRECT: tl.constexpr, CK: tl.constexpr,
                          UNROLL: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    NT = tl.cdiv(L, BT)
    c0 = bos // (BT * CK) + i_n
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    m_eq = o_t[:, None] == o_t[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    if USE_DHT:
        b_dh = tl.load(dht_ptr + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    else:
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    b_du = tl.zeros([BK], dtype=tl.float32)
    part = i_v.to(tl.int64) * NTOK * H * K
    # per-program scratch for the CK chunk-start states of the current checkpoint group (stays in L2)
    p_sc = sc_ptr + (i_v * tl.num_programs(1) + i_nh).to(tl.int64) * CK * BK * BV \
        + tl.arange(0, BK)[:, None] * BV + tl.arange(0, BV)[None, :]
    for i_r in range(0, NT):
        i_c = NT - 1 - i_r
        if ((i_c % CK) == (CK - 1)) | (i_r == 0):
            # entering a checkpoint group from its end: recompute its chunk-start states from the checkpoint
            g0 = i_c - i_c % CK
            b_s = tl.load(hs_ptr + ((c0 + g0 // CK) * H + i_h) * K * V + o_kv, mask=m_kv, other=0.)
            tl.store(p_sc, b_s)
            for i_g in range(g0, i_c):
                tok_g = (bos + i_g * BT + o_t) * H + i_h
                m_g = (i_g * BT + o_t) < L
                m_gk = m_g[:, None] & m_k[None, :]
                b_kg = tl.load(k_ptr + tok_g[:, None] * K + o_k[None, :], mask=m_gk, other=0.).to(tl.float32)
                b_wg = tl.minimum(tl.load(w_ptr + tok_g[:, None] * K + o_k[None, :], mask=m_gk, other=0.)
                                  .to(tl.float32), 0.)
                b_vg = tl.load(v_ptr + tok_g[:, None] * V + o_v[None, :], mask=m_g[:, None] & m_v[None, :],
                               other=0.).to(tl.float32)
                b_glg = tl.sum(b_wg, axis=0)
                b_kdg = b_kg * tl.exp(tl.cumsum(b_wg, axis=0, reverse=True) - b_wg)   # G_L - G_t as a suffix sum
                b_s = b_s * tl.exp(b_glg)[:, None] + tl.dot(tl.trans(b_kdg), b_vg, input_precision=PREC)
                tl.store(p_sc + (i_g - g0 + 1) * BK * BV, b_s)
            tl.debug_barrier()
        rows = i_c * BT + o_t
        m_t = rows < L
        tok = (bos + rows) * H + i_h
        p_k = tok[:, None] * K + o_k[None, :]
        p_v = tok[:, None] * V + o_v[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_wt = tl.minimum(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32), 0.)
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        # ---- exact intra-chunk part (see _intra_bwd)
        b_B = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        p_row = ((bos + i_c * BT) * H + i_h) * K + o_k
        b_A, b_dq, b_dk, b_dw = _intra_bwd(k_ptr, p_row, i_c * BT, L, b_q, b_wt, b_B, o_t, o_k, m_k, H, K, BT, BK,
                                           UNROLL)
        # tiles reloaded here (L1/L2 hits) rather than kept live through the unrolled loop
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_wr = tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = tl.minimum(b_wr, 0.)
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_A += tl.where(m_eq, tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
        # ---- state-crossing parts (see _state_bwd)
        b_h = tl.load(p_sc + (i_c % CK) * BK * BV)
        b_dq, b_dk, b_dv, b_dw, b_egp, b_gl = _state_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, b_A, b_dq, b_dk,
                                                         b_dw, PREC)
        tl.store(dv_ptr + p_v, b_dv.to(dv_ptr.dtype.element_ty), mask=m_tv)
        if DIRECT:
            b_vd = tl.sum(b_v * b_do, axis=1)
            b_du += tl.sum(b_q * b_k * b_vd[:, None], axis=0)
            b_dq += b_u[None, :] * b_k * b_vd[:, None]
            b_dk += b_u[None, :] * b_q * b_vd[:, None]
            b_dw = tl.where(b_wr > 0, 0., b_dw)
            tl.store(dq_ptr + p_k, (b_dq * scale).to(dq_ptr.dtype.element_ty), mask=m_tk)
            tl.store(dk_ptr + p_k, b_dk.to(dk_ptr.dtype.element_ty), mask=m_tk)
            tl.store(dw_ptr + p_k, b_dw.to(dw_ptr.dtype.element_ty), mask=m_tk)
        else:
            tl.store(dq_ptr + part + p_k, b_dq, mask=m_tk)
            tl.store(dk_ptr + part + p_k, b_dk, mask=m_tk)
            tl.store(dw_ptr + part + p_k, b_dw, mask=m_tk)
        b_dh = b_dh * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_q * b_egp), b_do, input_precision=PREC)
    if USE_H0:
        tl.store(dh0_ptr + i_nh.to(tl.int64) * K * V + o_kv, b_dh, mask=m_kv)
    if DIRECT:
        tl.store(du_ptr + i_nh.to(tl.int64) * K + o_k, b_du, mask=m_k)


# ----------------------------------------------------------------------------------------------------------------
# backward 3 (only with several V-blocks): sum the fp32 partials, add the bonus terms, du partial rows
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=_warp_configs(), key=["K", "V", "BK", "BVF", "NV"])
@triton.jit(do_not_specialize=['T', 'NTOK', 'VARLEN'])
def _wkv6_bwd_combine_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, pq_ptr, pk_ptr, pw_ptr,
                             dq_ptr, dk_ptr, dw_ptr, du_ptr, cu_ptr, scale, T, NTOK,
                             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                             BK: tl.constexpr, BVF: tl.constexpr, NV: tl.constexpr, VARLEN):
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BVF)
    m_k = o_k < K
    m_v = o_v < V
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_du = tl.zeros([BK], dtype=tl.float32)
    part_stride = NTOK * H * K
    for i_c in range(0, tl.cdiv(L, BT)):
        rows = i_c * BT + o_t
        m_t = rows < L
        tok = (bos + rows) * H + i_h
        p_k = tok[:, None] * K + o_k[None, :]
        p_v = tok[:, None] * V + o_v[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_dq = tl.zeros([BT, BK], dtype=tl.float32)
        b_dk = tl.zeros([BT, BK], dtype=tl.float32)
        b_dw = tl.zeros([BT, BK], dtype=tl.float32)
        p_pq, p_pk, p_pw = pq_ptr + p_k, pk_ptr + p_k, pw_ptr + p_k
        for i_v in range(NV):                      # fixed order: deterministic
            b_dq += tl.load(p_pq, mask=m_tk, other=0.)
            b_dk += tl.load(p_pk, mask=m_tk, other=0.)
            b_dw += tl.load(p_pw, mask=m_tk, other=0.)
            p_pq += part_stride
            p_pk += part_stride
            p_pw += part_stride
        b_vd = tl.sum(b_v * b_do, axis=1)
        b_du += tl.sum(b_q * b_k * b_vd[:, None], axis=0)
        b_dq += b_u[None, :] * b_k * b_vd[:, None]
        b_dk += b_u[None, :] * b_q * b_vd[:, None]
        b_dw = tl.where(b_w > 0, 0., b_dw)
        tl.store(dq_ptr + p_k, (b_dq * scale).to(dq_ptr.dtype.element_ty), mask=m_tk)
        tl.store(dk_ptr + p_k, b_dk.to(dk_ptr.dtype.element_ty), mask=m_tk)
        tl.store(dw_ptr + p_k, b_dw.to(dw_ptr.dtype.element_ty), mask=m_tk)
    tl.store(du_ptr + i_nh.to(tl.int64) * K + o_k, b_du, mask=m_k)


# ----------------------------------------------------------------------------------------------------------------
# recurrent (decode) path: token by token, forward only
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _wkv6_recurrent_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, h0_ptr, o_ptr, ht_ptr, scale, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                           BV: tl.constexpr, USE_H0: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    p_hs = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        b_h = tl.load(h0_ptr + p_hs, mask=m_kv, other=0.).to(tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    for t in range(0, T):
        tok = (i_n.to(tl.int64) * T + t) * H + i_h
        b_q = tl.load(q_ptr + tok * K + o_k, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(k_ptr + tok * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_w = tl.minimum(tl.load(w_ptr + tok * K + o_k, mask=m_k, other=0.).to(tl.float32), 0.)
        b_v = tl.load(v_ptr + tok * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_kv = b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_q[:, None] * (b_h + b_u[:, None] * b_kv), axis=0)
        tl.store(o_ptr + tok * V + o_v, b_o.to(o_ptr.dtype.element_ty), mask=m_v)
        b_h = b_h * tl.exp(b_w)[:, None] + b_kv
    tl.store(ht_ptr + p_hs, b_h, mask=m_kv)


# ================================================================================================================
# chunk-PARALLEL algorithm (the default behind ``wkv6``): BT_PAR = 64-token chunks, 16-row sub-blocks
# ================================================================================================================
@triton.jit
def _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT: tl.constexpr, VARLEN):
    """Chunk slot i_s -> (sequence n, chunk index in the sequence, bos, sequence length). Slots of a sequence:
    n·NT + i (fixed length) or bos//BT + n + i (varlen; cmap[slot] = n, host-computed; unused slots get a chunk
    index past the sequence end, i.e. every row masked)."""
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


@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=4, num_stages=1),
                                           triton.Config({}, num_warps=8, num_stages=1),
                                           triton.Config({}, num_warps=4, num_stages=3)]),
                 key=["K", "V", "BK", "BV", "PREC", "MODE"])
@triton.jit(do_not_specialize=['T', 'NT', 'VARLEN'])
def _chunk_state_kernel(q_ptr, k_ptr, v_ptr, w_ptr, do_ptr, hs_ptr, hd_ptr, gl_ptr, cu_ptr, cmap_ptr, scale, T, NT,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                        BV: tl.constexpr, VARLEN, MODE: tl.constexpr, PREC: tl.constexpr):
    """Per chunk (parallel): the chunk decay G_L and (MODE & 1) ΔS = (k ⊙ exp(G_L − G))ᵀ v, (MODE & 2, backward)
    ΔD = (q ⊙ exp(Gp))ᵀ do (the chunk's own contribution to dL/dS at its start). Every exponent ≤ 0."""
    i_s, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    rows = i_c * BT + o_t
    m_t = rows < L
    tok = (bos + rows) * H + i_h
    p_k = tok[:, None] * K + o_k[None, :]
    p_v = tok[:, None] * V + o_v[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_w = tl.minimum(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32), 0.)
    b_gl = tl.sum(b_w, axis=0)
    p_s = (i_s.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    tl.store(gl_ptr + (i_s.to(tl.int64) * H + i_h) * K + o_k, b_gl, mask=m_k & (o_k * 0 + i_v == 0))
    if MODE % 2 == 1:
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        # G_L − G_t as a suffix sum (not a difference of two long prefix sums: at w ≈ −40 those lose the exponent)
        b_ds = tl.dot(tl.trans(b_k * tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w)), b_v,
                      input_precision=PREC)
        tl.store(hs_ptr + p_s, b_ds, mask=m_kv)
    if MODE >= 2:
        b_g = tl.cumsum(b_w, axis=0)
        b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_dd = tl.dot(tl.trans(b_q * tl.exp(b_g - b_w)), b_do, input_precision=PREC)
        tl.store(hd_ptr + p_s, b_dd, mask=m_kv)


@triton.jit(do_not_specialize=['T', 'NT', 'SLOTS', 'USE0', 'USE1', 'REV0', 'VARLEN'])
def _chunk_scan_kernel(hs_ptr, gl_ptr, init0_ptr, init1_ptr, fin0_ptr, fin1_ptr, cu_ptr, T, NT, SLOTS, USE0, USE1,
                       REV0, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                       BV: tl.constexpr, VARLEN):
    """Grid (sequence·heads, V-blocks, directions). Sequential over the chunks of one (sequence, head, V-block),
    in place on the per-chunk buffer:
    direction 0 (program_id 2 = 0): X_c = ΔS_c -> S_c (state at chunk start), carry S ← diag(exp(G_L)) S + ΔS_c,
    start init0 (h0), end fin0 (final state). Direction 1: X_c = ΔD_c -> D_c (dL/dS at chunk end), walked
    backwards, D ← diag(exp(G_L)) D + ΔD_c, start init1 (dht), end fin1 (dh0). Same recursion, mirrored.
    Direction = program_id(2) + REV0 (REV0 = 1: the reverse walk alone); buffer = hs + program_id(2)·SLOTS."""
    i_nh, i_v, i_dir = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rev = i_dir + REV0
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    nt = tl.cdiv(L, BT)
    if VARLEN:
        base = bos // BT + i_n
    else:
        base = i_n.to(tl.int64) * NT
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    p_nh = i_nh.to(tl.int64) * K * V + o_kv
    if rev == 0:
        b_h = tl.load(init0_ptr + p_nh, mask=m_kv & (o_k[:, None] * 0 + USE0 != 0), other=0.).to(tl.float32)
    else:
        b_h = tl.load(init1_ptr + p_nh, mask=m_kv & (o_k[:, None] * 0 + USE1 != 0), other=0.).to(tl.float32)
    buf = hs_ptr + i_dir.to(tl.int64) * SLOTS * H * K * V
    for i in range(0, nt):
        i_c = i + rev * (nt - 1 - 2 * i)          # i (forward) or nt-1-i (reverse)
        slot = (base + i_c).to(tl.int64)
        p = buf + (slot * H + i_h) * K * V + o_kv
        b_x = tl.load(p, mask=m_kv, other=0.)
        tl.store(p, b_h, mask=m_kv)
        b_e = tl.exp(tl.load(gl_ptr + (slot * H + i_h) * K + o_k, mask=m_k, other=0.))
        b_h = b_h * b_e[:, None] + b_x
    if rev == 0:
        tl.store(fin0_ptr + p_nh, b_h, mask=m_kv)
    else:
        tl.store(fin1_ptr + p_nh, b_h, mask=m_kv)


@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=4, num_stages=1),
                                           triton.Config({}, num_warps=8, num_stages=1),
                                           triton.Config({}, num_warps=4, num_stages=2)]),
                 key=["K", "V", "BK", "BV", "PREC"])
@triton.jit(do_not_specialize=['T', 'NT', 'VARLEN'])
def _chunk_fwd_out_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, hs_ptr, o_ptr, cu_ptr, cmap_ptr, scale, T, NT,
                          H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, SB: tl.constexpr,
                          BK: tl.constexpr, BV: tl.constexpr, VARLEN, PREC: tl.constexpr):
    """One 16-row sub-block m of one chunk (parallel): state at the sub-block start S_m from the chunk-start state
    S_c and the m earlier sub-blocks (exponents ≤ 0), then o = q·(decayed S_m) + exact intra-sub-block part."""
    pid, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_s = pid // (BT // SB)
    i_m = pid % (BT // SB)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    c0 = i_c * BT
    o_t = tl.arange(0, SB)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    m_eq = o_t[:, None] == o_t[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = tl.load(hs_ptr + (i_s.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_kv & (o_k[:, None] * 0 + c0 < L), other=0.)
    for j in range(0, i_m):
        rj = c0 + j * SB + o_t
        m_j = rj < L
        tj = (bos + rj) * H + i_h
        m_jk = m_j[:, None] & m_k[None, :]
        b_kj = tl.load(k_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32)
        b_wj = tl.minimum(tl.load(w_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32), 0.)
        b_vj = tl.load(v_ptr + tj[:, None] * V + o_v[None, :], mask=m_j[:, None] & m_v[None, :],
                       other=0.).to(tl.float32)
        b_glj = tl.sum(b_wj, axis=0)
        b_kdj = b_kj * tl.exp(tl.cumsum(b_wj, axis=0, reverse=True) - b_wj)
        b_h = b_h * tl.exp(b_glj)[:, None] + tl.dot(tl.trans(b_kdj), b_vj, input_precision=PREC)
    r0 = c0 + i_m * SB
    rows = r0 + o_t
    m_t = rows < L
    tok = (bos + rows) * H + i_h
    p_k = tok[:, None] * K + o_k[None, :]
    p_v = tok[:, None] * V + o_v[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
    # exact intra-sub-block scores (keys walked downwards, decay column by products of exp(w) <= 1)
    p_row = ((bos + r0) * H + i_h) * K + o_k
    b_A = tl.zeros([SB, SB], dtype=tl.float32)
    b_P = tl.zeros([SB, BK], dtype=tl.float32)
    for jj in range(0, SB):
        j = SB - 1 - jj
        m_j1 = m_k & (o_k * 0 + r0 + j + 1 < L) & (o_k * 0 + j + 1 < SB)
        b_e1 = tl.exp(tl.minimum(tl.load(w_ptr + p_row + (j + 1) * H * K, mask=m_j1, other=0.)
                                 .to(tl.float32), 0.))
        b_P = tl.where(o_t[:, None] == j + 1, 1., b_P * b_e1[None, :])
        b_kj = tl.load(k_ptr + p_row + j * H * K, mask=m_k & (o_k * 0 + r0 + j < L), other=0.).to(tl.float32)
        b_a = tl.sum(b_q * b_kj[None, :] * b_P, axis=1)
        b_A = tl.where(o_t[None, :] == j, b_a[:, None], b_A)
    b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_w = tl.minimum(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32), 0.)
    b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_gp = tl.cumsum(b_w, axis=0) - b_w
    b_A += tl.where(m_eq, tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
    b_o = tl.dot(b_q * tl.exp(b_gp), b_h, input_precision=PREC)
    b_o += tl.dot(b_A, b_v, input_precision=PREC)
    tl.store(o_ptr + p_v, b_o.to(o_ptr.dtype.element_ty), mask=m_tv)


@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=4, num_stages=1),
                                           triton.Config({}, num_warps=8, num_stages=1),
                                           triton.Config({}, num_warps=8, num_stages=2)]),
                 key=["K", "V", "BK", "BV", "PREC"])
@triton.jit(do_not_specialize=['T', 'NT', 'VARLEN'])
def _chunk_bwd_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, hs_ptr, hd_ptr, dq_ptr, dk_ptr, dv_ptr, dw_ptr,
                      du_ptr, cu_ptr, cmap_ptr, scale, T, NT,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, SB: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, VARLEN, PREC: tl.constexpr):
    """One 16-row sub-block m of one chunk (parallel), all of V (BV >= V): S_m (state at the sub-block start) from
    S_c and the earlier sub-blocks, D_m (dL/dS after the sub-block) from D_c and the later sub-blocks, then the
    exact 16-row backward of the sequential kernel (see the module docstring: dq, dk, dv, the cancellation-free
    dw, du partial row per program)."""
    pid, i_h = tl.program_id(0), tl.program_id(1)
    i_s = pid // (BT // SB)
    i_m = pid % (BT // SB)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    c0 = i_c * BT
    o_t = tl.arange(0, SB)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    m_eq = o_t[:, None] == o_t[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    p_s = (i_s.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    b_h = tl.load(hs_ptr + p_s, mask=m_kv & (o_k[:, None] * 0 + c0 < L), other=0.)
    b_dh = tl.load(hd_ptr + p_s, mask=m_kv & (o_k[:, None] * 0 + c0 < L), other=0.)
    for j in range(0, i_m):
        rj = c0 + j * SB + o_t
        m_j = rj < L
        tj = (bos + rj) * H + i_h
        m_jk = m_j[:, None] & m_k[None, :]
        b_kj = tl.load(k_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32)
        b_wj = tl.minimum(tl.load(w_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32), 0.)
        b_vj = tl.load(v_ptr + tj[:, None] * V + o_v[None, :], mask=m_j[:, None] & m_v[None, :],
                       other=0.).to(tl.float32)
        b_glj = tl.sum(b_wj, axis=0)
        b_kdj = b_kj * tl.exp(tl.cumsum(b_wj, axis=0, reverse=True) - b_wj)
        b_h = b_h * tl.exp(b_glj)[:, None] + tl.dot(tl.trans(b_kdj), b_vj, input_precision=PREC)
    for jr in range(0, BT // SB - 1 - i_m):
        rj = c0 + (BT // SB - 1 - jr) * SB + o_t
        m_j = rj < L
        tj = (bos + rj) * H + i_h
        m_jk = m_j[:, None] & m_k[None, :]
        b_qj = tl.load(q_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32) * scale
        b_wj = tl.minimum(tl.load(w_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32), 0.)
        b_doj = tl.load(do_ptr + tj[:, None] * V + o_v[None, :], mask=m_j[:, None] & m_v[None, :],
                        other=0.).to(tl.float32)
        b_gj = tl.cumsum(b_wj, axis=0)
        b_glj = tl.sum(b_wj, axis=0)
        b_dh = b_dh * tl.exp(b_glj)[:, None] + tl.dot(tl.trans(b_qj * tl.exp(b_gj - b_wj)), b_doj,
                                                       input_precision=PREC)
    r0 = c0 + i_m * SB
    rows = r0 + o_t
    m_t = rows < L
    tok = (bos + rows) * H + i_h
    p_k = tok[:, None] * K + o_k[None, :]
    p_v = tok[:, None] * V + o_v[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
    b_wt = tl.minimum(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32), 0.)
    b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    # exact intra-sub-block part (see _intra_bwd)
    b_B = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
    p_row = ((bos + r0) * H + i_h) * K + o_k
    b_A, b_dq, b_dk, b_dw = _intra_bwd(k_ptr, p_row, r0, L, b_q, b_wt, b_B, o_t, o_k, m_k, H, K, SB, BK, 1)
    b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_wr = tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_w = tl.minimum(b_wr, 0.)
    b_A += tl.where(m_eq, tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
    b_dq, b_dk, b_dv, b_dw, b_egp, b_gl = _state_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, b_A, b_dq, b_dk, b_dw,
                                                     PREC)
    tl.store(dv_ptr + p_v, b_dv.to(dv_ptr.dtype.element_ty), mask=m_tv)
    b_vd = tl.sum(b_v * b_do, axis=1)
    b_du = tl.sum(b_q * b_k * b_vd[:, None], axis=0)
    b_dq += b_u[None, :] * b_k * b_vd[:, None]
    b_dk += b_u[None, :] * b_q * b_vd[:, None]
    b_dw = tl.where(b_wr > 0, 0., b_dw)
    tl.store(dq_ptr + p_k, (b_dq * scale).to(dq_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dk_ptr + p_k, b_dk.to(dk_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dw_ptr + p_k, b_dw.to(dw_ptr.dtype.element_ty), mask=m_tk)
    tl.store(du_ptr + (pid.to(tl.int64) * H + i_h) * K + o_k, b_du, mask=m_k)


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------
def _blocks(K, V):
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    return BK, BV


def _cu(cu_seqlens, device):
    """cu_seqlens as int32, or an unread int32 placeholder (one kernel specialization for both cases)."""
    if cu_seqlens is None:
        return torch.empty(1, dtype=torch.int32, device=device)
    return cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)


def _dims(r, v, cu_seqlens):
    B, T, H, K = r.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return B, T, H, K, V, N


def _nh_bucket(nh: int) -> int:
    """Autotune key for the forward: the number of (sequence, head) programs, coarsely. Few programs (e.g. B1 H32)
    need a smaller BV (more V-blocks) to fill the GPU; many want BV = 64. Unused by the kernel body."""
    return min(triton.next_power_of_2(nh), 1024)


def _ckpt_shape(B, T, H, K, V, N):
    return (triton.cdiv(B * T, BT_CHUNK * CKPT) + N, H, K, V)


def _fwd_impl(r, k, v, w, u, scale, h0, cu_seqlens, save=False):
    """o, final state, and (if save) the fp32 state checkpoints the backward starts from (else an empty tensor)."""
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK, BV = _blocks(K, V)
    o = new_empty((B, T, H, V), r.dtype, r.device)
    ht = new_empty((N, H, K, V), torch.float32, r.device)
    hs = new_empty(_ckpt_shape(B, T, H, K, V, N) if save else (0,), torch.float32, r.device)
    grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)  # noqa: E731
    _wkv6_fwd_kernel[grid](r, k, v, w, u, h0 if h0 is not None else ht, o, ht, hs if save else ht,
                           _cu(cu_seqlens, r.device), scale, T, _nh_bucket(N * H),
                           H=H, K=K, V=V, BT=BT_CHUNK, BK=BK, USE_H0=int(h0 is not None),
                           VARLEN=int(cu_seqlens is not None), SAVE=int(save), PREC=_prec(r.dtype), CK=CKPT)
    return o, ht, hs


def _bwd_impl(r, k, v, w, u, do, dht, h0, cu_seqlens, scale, hs=None):
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK, BV = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    dev = r.device
    NTOK = B * T
    prec = _prec(r.dtype, bwd=True)
    cu = _cu(cu_seqlens, dev)
    use_h0, use_dht, varlen = int(h0 is not None), int(dht is not None), int(cu_seqlens is not None)
    # checkpointed chunk-start states (every CKPT chunks): sequence n uses slots bos//(BT·CKPT) + n + i_c//CKPT
    # (disjoint: the next sequence starts at slot (bos+len)//(BT·CKPT) + n + 1 >= bos//(BT·CKPT) + n +
    # cdiv(len, BT·CKPT)), at most cdiv(B·T, BT·CKPT) + N slots
    scratch = new_empty((NV * N * H, CKPT, BK, BV), torch.float32, dev)
    grid = (NV, N * H)
    if hs is None or hs.numel() == 0:     # checkpoints not saved by the forward: recompute them
        hs = new_empty(_ckpt_shape(B, T, H, K, V, N), torch.float32, dev)
        _wkv6_bwd_states_kernel[grid](k, v, w, h0 if h0 is not None else hs, hs, cu, T, H=H, K=K, V=V,
                                      BT=BT_CHUNK, BK=BK, BV=BV, USE_H0=use_h0, VARLEN=varlen, PREC=prec, CK=CKPT)
    direct = NV == 1
    dv = new_empty(v.shape, v.dtype, dev)
    dh0 = new_empty((N, H, K, V), torch.float32, dev) if h0 is not None else None
    du_part = new_empty((N, H, K), torch.float32, dev)
    dr = new_empty(r.shape, r.dtype, dev)
    dk = new_empty(k.shape, k.dtype, dev)
    dw = new_empty(w.shape, w.dtype, dev)
    if direct:
        pq, pk, pw = dr, dk, dw
    else:
        pq, pk, pw = (new_empty((NV, B, T, H, K), torch.float32, dev) for _ in range(3))
    _wkv6_bwd_main_kernel[grid](r, k, v, w, u, do, dht if dht is not None else hs, hs, scratch, pq, pk, pw, dv, du_part,
                                dh0 if dh0 is not None else hs, cu, scale, T, NTOK, H=H, K=K, V=V, BT=BT_CHUNK,
                                BK=BK, BV=BV, USE_H0=use_h0, USE_DHT=use_dht, VARLEN=varlen, PREC=prec,
                                DIRECT=direct, CK=CKPT)
    if not direct:
        _wkv6_bwd_combine_kernel[(N * H,)](r, k, v, w, u, do, pq, pk, pw, dr, dk, dw, du_part, cu, scale, T, NTOK,
                                           H=H, K=K, V=V, BT=BT_CHUNK, BK=BK,
                                           BVF=max(16, triton.next_power_of_2(V)), NV=NV,
                                           VARLEN=varlen)
    du = du_part.sum(0).to(u.dtype)
    return dr, dk, dv, dw, du, dh0


# ----------------------------------------------------------------------------------------------------------------
# custom ops (torch.compile) + autograd: one pair of ops per algorithm, made by the same factory
# ----------------------------------------------------------------------------------------------------------------
def _make_ops(name: str, fwd_impl, bwd_impl, state_shape):
    """Register ``groundthink::{name}_fwd`` / ``{name}_bwd`` for one algorithm, with fake (meta) kernels and the
    autograd formula; return the forward op. ``state_shape(B, T, H, K, V, N, varlen)`` is the shape of the fp32
    chunk states the forward saves for the backward when ``save_states``."""

    @torch.library.custom_op(f"groundthink::{name}_fwd", mutates_args=())
    def fwd_op(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
               scale: float, initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
               save_states: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return fwd_impl(r, k, v, w, u, scale, initial_state, cu_seqlens, save_states)

    @fwd_op.register_fake
    def _(r, k, v, w, u, scale, initial_state, cu_seqlens, save_states=False):
        B, T, H, K, V, N = _dims(r, v, cu_seqlens)
        hs = r.new_empty(state_shape(B, T, H, K, V, N, cu_seqlens is not None) if save_states else (0,),
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
        ctx.save_for_backward(r, k, v, w, u, initial_state, cu_seqlens, output[2])
        ctx.scale = scale
        ctx.has_h0 = initial_state is not None

    def backward(ctx, do, dht, _dstates):
        r, k, v, w, u, initial_state, cu_seqlens, states = ctx.saved_tensors
        if do is None:
            do = torch.zeros((*r.shape[:3], v.shape[-1]), dtype=r.dtype, device=r.device)
        dr, dk, dv, dw, du, dh0 = bwd_op(r, k, v, w, u, do.contiguous(),
                                         dht.contiguous() if dht is not None else None,
                                         initial_state, cu_seqlens, ctx.scale, states)
        return dr, dk, dv, dw, du, None, (dh0 if ctx.has_h0 else None), None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)
    return fwd_op


_wkv6_fwd_op = _make_ops("wkv6", _fwd_impl, _bwd_impl,
                         lambda B, T, H, K, V, N, varlen: _ckpt_shape(B, T, H, K, V, N))



# ----------------------------------------------------------------------------------------------------------------
# chunk-parallel launchers, custom ops (the default ``wkv6``)
# ----------------------------------------------------------------------------------------------------------------
def _par_slots(B, T, N, cu_seqlens, device):
    """Number of chunk slots and the int32 slot -> sequence map (varlen; else an unread placeholder)."""
    NT = triton.cdiv(T, BT_PAR)
    if cu_seqlens is None:
        return B * NT, NT, torch.empty(1, dtype=torch.int32, device=device)
    S = NT + N        # sequence n: slots cu[n]//BT + n + i, i < cdiv(len_n, BT) (disjoint, see _bwd_impl)
    cu = cu_seqlens.to(torch.int64)
    starts = cu[:-1] // BT_PAR + torch.arange(N, device=device)
    cmap = torch.searchsorted(starts, torch.arange(S, device=device), right=True) - 1
    return S, NT, cmap.clamp_(min=0).to(torch.int32)


def _par_states(r, k, v, w, do, scale, h0, dht, cu_seqlens, mode):
    """Per-chunk states (parallel state kernel + sequential scan over chunks).

    mode "fwd": S_c (state at each chunk start, [S, H, K, V] fp32) and the final state;
    "bwd": S_c and D_c (dL/dS at each chunk end) and dh0; "bwd_d" (S_c saved by the forward): D_c and dh0 only.
    Returns (buf [1 or 2, S, H, K, V]: S_c then D_c, ht or None, dh0 or None, S, NT, cmap, cu)."""
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK, BV = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    dev = r.device
    S, NT, cmap = _par_slots(B, T, N, cu_seqlens, dev)
    cu = _cu(cu_seqlens, dev)
    varlen = int(cu_seqlens is not None)
    prec = _prec(r.dtype, mode != "fwd")
    kmode = {"fwd": 1, "bwd": 3, "bwd_d": 2}[mode]
    buf = new_empty((2 if mode == "bwd" else 1, S, H, K, V), torch.float32, dev)
    gl = new_empty((S, H, K), torch.float32, dev)
    _chunk_state_kernel[(S, NV, H)](r, k, v, w, do if do is not None else v, buf[0], buf[-1], gl, cu, cmap, scale,
                                    T, NT, H=H, K=K, V=V, BT=BT_PAR, BK=BK, BV=BV, VARLEN=varlen, MODE=kmode,
                                    PREC=prec)
    ht = new_empty((N, H, K, V), torch.float32, dev) if mode != "bwd_d" else None
    dh0 = new_empty((N, H, K, V), torch.float32, dev) if mode != "fwd" else None
    any_ = ht if ht is not None else dh0
    _chunk_scan_kernel[(N * H, NV, 2 if mode == "bwd" else 1)](
        buf, gl, h0 if h0 is not None else any_, dht if dht is not None else any_, any_ if ht is None else ht,
        any_ if dh0 is None else dh0, cu, T, NT, S, int(h0 is not None), int(dht is not None),
        int(mode == "bwd_d"), H=H, K=K, V=V, BT=BT_PAR, BK=BK, BV=BV, VARLEN=varlen, num_warps=4)
    return buf, ht, dh0, S, NT, cmap, cu


def _par_state_shape(B, T, H, K, V, N, varlen):
    NT = triton.cdiv(T, BT_PAR)
    return ((NT + N) if varlen else B * NT, H, K, V)


def _par_fwd_impl(r, k, v, w, u, scale, h0, cu_seqlens, save=False):
    """o, final state and (if save) the chunk-start states S_c for the backward (else an empty tensor)."""
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK, BV = _blocks(K, V)
    buf, ht, _, S, NT, cmap, cu = _par_states(r, k, v, w, None, scale, h0, None, cu_seqlens, "fwd")
    o = new_empty((B, T, H, V), r.dtype, r.device)
    _chunk_fwd_out_kernel[(S * (BT_PAR // SUB_PAR), triton.cdiv(V, BV), H)](
        r, k, v, w, u, buf, o, cu, cmap, scale, T, NT, H=H, K=K, V=V, BT=BT_PAR, SB=SUB_PAR, BK=BK, BV=BV,
        VARLEN=int(cu_seqlens is not None), PREC=_prec(r.dtype))
    return o, ht, (buf[0] if save else buf.new_empty((0,)))


def _par_bwd_impl(r, k, v, w, u, do, dht, h0, cu_seqlens, scale, states=None):
    """Gradients (dr, dk, dv, dw, du, dh0 or None). ``states``: the forward's S_c (else recomputed here)."""
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK = max(16, triton.next_power_of_2(K))
    BVF = max(16, triton.next_power_of_2(V))
    dev = r.device
    if states is None or states.numel() == 0:
        buf, _, dh0, S, NT, cmap, cu = _par_states(r, k, v, w, do, scale, h0, dht, cu_seqlens, "bwd")
        hs, hd = buf[0], buf[1]
    else:
        buf, _, dh0, S, NT, cmap, cu = _par_states(r, k, v, w, do, scale, h0, dht, cu_seqlens, "bwd_d")
        hs, hd = states, buf[0]
    NP = S * (BT_PAR // SUB_PAR)
    dr = new_empty(r.shape, r.dtype, dev)
    dk = new_empty(k.shape, k.dtype, dev)
    dv = new_empty(v.shape, v.dtype, dev)
    dw = new_empty(w.shape, w.dtype, dev)
    du_part = new_empty((NP, H, K), torch.float32, dev)
    _chunk_bwd_kernel[(NP, H)](r, k, v, w, u, do, hs, hd, dr, dk, dv, dw, du_part, cu, cmap, scale, T, NT,
                               H=H, K=K, V=V, BT=BT_PAR, SB=SUB_PAR, BK=BK, BV=BVF,
                               VARLEN=int(cu_seqlens is not None), PREC=_prec(r.dtype, bwd=True))
    du = du_part.sum(0).to(u.dtype)
    return dr, dk, dv, dw, du, (dh0 if h0 is not None else None)


_wkv6_chunk_fwd_op = _make_ops("wkv6_chunk", _par_fwd_impl, _par_bwd_impl, _par_state_shape)


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def _validate(r, k, v, w, u, initial_state, cu_seqlens):
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


def wkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6 wkv, chunk-parallel Triton kernels (drop-in for fla's ``chunk_rwkv6``); the default.

    Same arguments, results and gradients as ``wkv6_fused`` (below), computed by the chunk-parallel algorithm
    (64-token chunks: per-chunk states in parallel, a short sequential scan over chunks, then every chunk's
    output / gradients in parallel; see the module docstring).
    """
    _validate(r, k, v, w, u, initial_state, cu_seqlens)
    scale = float(r.shape[-1] ** -0.5 if scale is None else scale)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (r, k, v, w, u, h0))
    o, ht, _ = _wkv6_chunk_fwd_op(r.contiguous(), k.contiguous(), v.contiguous(), w.contiguous(), u.contiguous(),
                                  scale, h0, cu_seqlens.contiguous() if cu_seqlens is not None else None, save)
    return o, (ht if output_final_state else None)


def wkv6_fused(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6 wkv, the sequential chunked Triton kernels (one program per (V-block, sequence·head) walking its
    16-token chunks; custom ops ``groundthink::wkv6_fwd`` / ``wkv6_bwd``)."

    r, k, w ``[B, T, H, K]``, v ``[B, T, H, V]`` (one dtype: fp32/fp16/bf16), u ``[H, K]``, w = log-decay
    (positive entries are clamped to 0 with zero gradient), ``scale`` multiplies r·k (default K**-0.5),
    ``initial_state`` ``[N, H, K, V]`` (computed in fp32), ``cu_seqlens`` int ``[N+1]`` with B = 1.
    Returns ``(o [B, T, H, V] in r's dtype, final_state [N, H, K, V] fp32 or None)``. Differentiable in r, k, v, w,
    u and initial_state (and through the final state). Non-contiguous inputs are made contiguous.
    """
    _validate(r, k, v, w, u, initial_state, cu_seqlens)
    scale = float(r.shape[-1] ** -0.5 if scale is None else scale)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (r, k, v, w, u, h0))
    o, ht, _ = _wkv6_fwd_op(r.contiguous(), k.contiguous(), v.contiguous(), w.contiguous(), u.contiguous(), scale,
                            h0, cu_seqlens.contiguous() if cu_seqlens is not None else None, save)
    return o, (ht if output_final_state else None)


def wkv6_recurrent(r, k, v, w, u, scale=None, initial_state=None, output_final_state=True):
    """Token-by-token RWKV-6 (decoding a few tokens from a carried state); forward only, no autograd.

    Same arguments and math as ``wkv6`` (no ``cu_seqlens``). Returns ``(o, final_state fp32 or None)``.
    """
    _validate(r, k, v, w, u, initial_state, None)
    B, T, H, K = r.shape
    V = v.shape[-1]
    scale = float(K ** -0.5 if scale is None else scale)
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    with torch.no_grad():
        r, k, v, w, u = (x.detach().contiguous() for x in (r, k, v, w, u))
        h0 = initial_state.detach().float().contiguous() if initial_state is not None else None
        o = new_empty((B, T, H, V), r.dtype, r.device)
        ht = new_empty((B, H, K, V), torch.float32, r.device)
        _wkv6_recurrent_kernel[(triton.cdiv(V, BV), B * H)](r, k, v, w, u, h0 if h0 is not None else ht, o, ht,
                                                             scale, T, H=H, K=K, V=V, BK=BK, BV=BV,
                                                             USE_H0=h0 is not None, num_warps=4)
    return o, (ht if output_final_state else None)


__all__ = ["wkv6", "wkv6_fused", "wkv6_recurrent"]
