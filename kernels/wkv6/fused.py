"""Sequential chunked algorithm (``wkv6_fused``): one program per (V-block, sequence·head) walks its sequence in
16-token chunks with the state in registers; exact per-key loops inside a chunk (see the package docstring)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import autotune_configs, launch, new_empty
from kernels._dot import mma
from kernels.wkv6.common import (_blocks, _bonus_bwd, _clamp_w, _cu, _dims, _intra_bwd, _kv_ranges, _make_ops,
                                 _nh_bucket, _prec, _row_offsets, _run, _seq_bounds, _state_bwd, _state_or_zeros,
                                 _store_dqkw, _warp_configs)

BT_CHUNK = 16
CKPT = 4          # backward: chunk states checkpointed every CKPT chunks, the others recomputed into L2 scratch

# Layouts shared by the kernels below (a token is row bos + t of the flattened [B·T, H, *] tensors; N sequences: B,
# or len(cu) − 1 with VARLEN, where B = 1):
#   q_ptr, k_ptr, w_ptr [B·T, H, K] (q = r; w the raw log-decay, clamped inside), v_ptr, o_ptr, do_ptr [B·T, H, V],
#   u_ptr [H, K] (all in the inputs' dtype; o = the output, do its gradient); dq_ptr, dk_ptr, dw_ptr [B·T, H, K] and
#   dv_ptr [B·T, H, V] the input gradients in the inputs' dtypes (``_wkv6_bwd_main_kernel`` without DIRECT: dq_ptr,
#   dk_ptr, dw_ptr are fp32 partials [NV, B·T, H, K], read back as pq_ptr, pk_ptr, pw_ptr [NV, B·T, H, K] by
#   ``_wkv6_bwd_combine_kernel``); du_ptr [N, H, K] fp32 per-sequence du rows (summed over N by the launcher);
#   h0_ptr / ht_ptr [N, H, K, V] fp32 the initial / final state, dht_ptr / dh0_ptr [N, H, K, V] fp32 their
#   gradients; hs_ptr [slots, H, K, V] fp32: the state at every CK-th chunk start, slot c0 + i_c // CK with
#   c0 = bos // (BT·CK) + n (``_ckpt_shape``); sc_ptr [NV·N·H, CK, BK, BV] fp32 per-program scratch; cu_ptr [N + 1]
#   int32 sequence offsets (None unless VARLEN); scale (float) multiplies q·k; T the padded length (fixed-length
#   batches); NTOK = B·T, the rows of one partial; NH_BUCKET = min(pow2(N·H), 1024), an autotune key only
#   (``_nh_bucket``: unused by the kernel body).
# Constexprs: H heads; K, V head sizes; BT = 16 chunk rows (``BT_CHUNK``); BK = max(16, pow2(K)) ≥ K and BV (≤ 64)
#   the V-block width (``_blocks``; the forward autotunes BV), BVF ≥ V: all of V in one block; NV = cdiv(V, BV)
#   V-blocks; CK chunks per checkpoint (``CKPT``); PREC the dots' input precision ("ieee" for fp32, else "tf32";
#   ``common._prec``); UNROLL the key loop's unroll factor (autotuned); DIRECT: one V-block, gradients written
#   final. Optional tensors are None with their constexpr flag off (USE_H0, USE_DHT, VARLEN, SAVE).


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=autotune_configs([triton.Config({"BV": 64, "UNROLL": 1}, num_warps=4, num_stages=1),
                                           triton.Config({"BV": 64, "UNROLL": 4}, num_warps=4, num_stages=1),
                                           triton.Config({"BV": 64, "UNROLL": 1}, num_warps=8, num_stages=1),
                                           triton.Config({"BV": 32, "UNROLL": 1}, num_warps=4, num_stages=1),
                                           triton.Config({"BV": 16, "UNROLL": 1}, num_warps=4, num_stages=1)]),
                 key=["K", "V", "BK", "PREC", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NH_BUCKET'])
def _wkv6_fwd_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, h0_ptr, o_ptr, ht_ptr, hs_ptr, cu_ptr, scale, T, NH_BUCKET,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, USE_H0: tl.constexpr, VARLEN: tl.constexpr, SAVE: tl.constexpr,
                     PREC: tl.constexpr, CK: tl.constexpr, UNROLL: tl.constexpr):
    """Grid (V-blocks, N·H): one program walks the BT-token chunks of one (sequence, head) for BV columns of V.
    Writes o_ptr [B·T, H, V] (q's dtype), the final state ht_ptr and, when SAVE, the checkpoints hs_ptr; reads
    h0_ptr when USE_H0 (layouts above). NH_BUCKET: autotune key only (``_nh_bucket``); UNROLL: the key loop's
    unroll factor."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    o_t = tl.arange(0, BT)
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    m_eq = o_t[:, None] == o_t[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = _state_or_zeros(h0_ptr, i_nh, o_kv, m_kv, K, V, BK, BV, USE_H0)
    c0 = bos // (BT * CK) + i_n     # checkpoint slots for the backward (see _bwd_impl)
    for i_c in range(0, tl.cdiv(L, BT)):
        if SAVE:
            if i_c % CK == 0:
                tl.store(hs_ptr + ((c0 + i_c // CK) * H + i_h) * K * V + o_kv, b_h, mask=m_kv)
        m_t, p_k, p_v, m_tk, m_tv = _row_offsets(bos, i_c * BT, L, i_h, o_t, o_k, o_v, m_k, m_v, H, K, V)
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
            b_e1 = tl.exp(_clamp_w(tl.load(w_ptr + p_row + (j + 1) * H * K, mask=m_j1, other=0.)
                                     .to(tl.float32)))
            b_P = tl.where(o_t[:, None] == j + 1, 1., b_P * b_e1[None, :])
            b_kj = tl.load(k_ptr + p_row + j * H * K, mask=m_k & (o_k * 0 + i_c * BT + j < L), other=0.).to(tl.float32)
            b_a = tl.sum(b_q * b_kj[None, :] * b_P, axis=1)
            b_A = tl.where(o_t[None, :] == j, b_a[:, None], b_A)
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = _clamp_w(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32))
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_g = tl.cumsum(b_w, axis=0)
        b_gp = b_g - b_w
        b_gl = tl.sum(b_w, axis=0)
        b_A += tl.where(m_eq, tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
        b_o = mma(b_q * tl.exp(b_gp), b_h, PREC)
        b_o += mma(b_A, b_v, PREC, B_EXACT=True)
        tl.store(o_ptr + p_v, b_o.to(o_ptr.dtype.element_ty), mask=m_tv)
        b_kd = b_k * tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w)  # G_L - G_t as a suffix sum
        b_h = b_h * tl.exp(b_gl)[:, None] + mma(tl.trans(b_kd), b_v, PREC, B_EXACT=True)
    tl.store(ht_ptr + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


# ----------------------------------------------------------------------------------------------------------------
# backward 1: forward walk storing the chunk-start states S0_c (fp32)
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=_warp_configs(), key=["K", "V", "BK", "BV", "PREC", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NH_BUCKET'])
def _wkv6_bwd_states_kernel(k_ptr, v_ptr, w_ptr, h0_ptr, hs_ptr, cu_ptr, T, NH_BUCKET,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                            BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, VARLEN: tl.constexpr,
                            PREC: tl.constexpr, CK: tl.constexpr):
    """Grid (V-blocks, N·H): the forward's state walk without outputs, storing the checkpoints hs_ptr (written
    here, layouts above) when the forward did not save them. NH_BUCKET: autotune key only."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    c0 = bos // (BT * CK) + i_n     # first checkpoint slot of this sequence (slots never overlap, see _bwd_impl)
    o_t = tl.arange(0, BT)
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    b_h = _state_or_zeros(h0_ptr, i_nh, o_kv, m_kv, K, V, BK, BV, USE_H0)
    for i_c in range(0, tl.cdiv(L, BT)):
        if i_c % CK == 0:
            tl.store(hs_ptr + ((c0 + i_c // CK) * H + i_h) * K * V + o_kv, b_h, mask=m_kv)
        m_t, p_k, p_v, m_tk, m_tv = _row_offsets(bos, i_c * BT, L, i_h, o_t, o_k, o_v, m_k, m_v, H, K, V)
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = _clamp_w(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32))
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_gl = tl.sum(b_w, axis=0)
        b_kd = b_k * tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w)  # G_L - G_t as a suffix sum
        b_h = b_h * tl.exp(b_gl)[:, None] + mma(tl.trans(b_kd), b_v, PREC, B_EXACT=True)


@triton.jit
def _bonus_store(b_q, b_k, b_wr, b_v, b_do, b_u, b_dq, b_dk, b_dw, b_du, dq_ptr, dk_ptr, dw_ptr, p_k, m_tk,
                 scale):
    """One chunk's last step of dq, dk, dw [BT, BK] (fp32): add the bonus terms u·k·(v·do) and u·q·(v·do), zero
    dw where the raw w > 0 (the clamp passes no gradient), store all three in their dtypes (dq times ``scale``);
    returns du [BK] plus this chunk's Σ_t q·k·(v·do). ``b_q`` is already scaled; ``b_wr`` is the unclamped w."""
    b_dq, b_dk, b_dur = _bonus_bwd(b_q, b_k, b_v, b_do, b_u, b_dq, b_dk)
    _store_dqkw(b_dq, b_dk, b_dw, b_wr, dq_ptr, dk_ptr, dw_ptr, p_k, m_tk, scale)
    return b_du + b_dur


# ----------------------------------------------------------------------------------------------------------------
# backward 2: reverse walk carrying D = dL/dS -> dq, dk, dw (partials over V-blocks or final), dv, dh0
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=autotune_configs([triton.Config({"UNROLL": 1}, num_warps=8, num_stages=1),
                                           triton.Config({"UNROLL": 4}, num_warps=8, num_stages=1),
                                           triton.Config({"UNROLL": 1}, num_warps=4, num_stages=1)]),
                 key=["K", "V", "BK", "BV", "PREC", "DIRECT", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NTOK', 'NH_BUCKET'])
def _wkv6_bwd_main_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, dht_ptr, hs_ptr, sc_ptr, dq_ptr, dk_ptr, dw_ptr,
                          dv_ptr, du_ptr, dh0_ptr, cu_ptr, scale, T, NTOK, NH_BUCKET,
                          H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                          BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr,
                          VARLEN: tl.constexpr, PREC: tl.constexpr, DIRECT: tl.constexpr, CK: tl.constexpr,
                          UNROLL: tl.constexpr):
    """Grid (V-blocks, N·H): the reverse walk of one (sequence, head) for BV columns of V (layouts above).
    do_ptr [B·T, H, V] the output's gradient; dht_ptr the final state's (None unless USE_DHT); hs_ptr the
    checkpoints; sc_ptr [V-blocks·N·H, CK, BK, BV] fp32 scratch (one program's recomputed chunk-start states).
    Writes dv_ptr [B·T, H, V] (v's dtype) and dh0_ptr (None unless USE_H0). DIRECT (one V-block): dq_ptr, dk_ptr,
    dw_ptr [B·T, H, K] are the final gradients (input dtypes, bonus terms added) and du_ptr [N, H, K] fp32 the
    per-sequence du rows; otherwise dq/dk/dw_ptr are fp32 partials [V-blocks, B·T, H, K] (NTOK = B·T rows per
    block) finished by ``_wkv6_bwd_combine_kernel``, and du_ptr is unused."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    NT = tl.cdiv(L, BT)
    c0 = bos // (BT * CK) + i_n
    o_t = tl.arange(0, BT)
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    m_eq = o_t[:, None] == o_t[None, :]
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_dh = _state_or_zeros(dht_ptr, i_nh, o_kv, m_kv, K, V, BK, BV, USE_DHT)
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
                b_wg = _clamp_w(tl.load(w_ptr + tok_g[:, None] * K + o_k[None, :], mask=m_gk, other=0.)
                                  .to(tl.float32))
                b_vg = tl.load(v_ptr + tok_g[:, None] * V + o_v[None, :], mask=m_g[:, None] & m_v[None, :],
                               other=0.).to(tl.float32)
                b_glg = tl.sum(b_wg, axis=0)
                b_kdg = b_kg * tl.exp(tl.cumsum(b_wg, axis=0, reverse=True) - b_wg)   # G_L - G_t as a suffix sum
                b_s = b_s * tl.exp(b_glg)[:, None] + mma(tl.trans(b_kdg), b_vg, PREC, B_EXACT=True)
                tl.store(p_sc + (i_g - g0 + 1) * BK * BV, b_s)
            tl.debug_barrier()
        m_t, p_k, p_v, m_tk, m_tv = _row_offsets(bos, i_c * BT, L, i_h, o_t, o_k, o_v, m_k, m_v, H, K, V)
        b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_wt = _clamp_w(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32))
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        # ---- exact intra-chunk part (see _intra_bwd)
        b_B = mma(b_do, tl.trans(b_v), PREC, A_EXACT=True, B_EXACT=True)
        p_row = ((bos + i_c * BT) * H + i_h) * K + o_k
        b_A, b_dq, b_dk, b_dw = _intra_bwd(k_ptr, p_row, i_c * BT, L, b_q, b_wt, b_B, o_t, o_k, m_k, H, K, BT, BK,
                                           UNROLL)
        # tiles reloaded here (L1/L2 hits) rather than kept live through the unrolled loop
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_wr = tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = _clamp_w(b_wr)
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_A += tl.where(m_eq, tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
        # ---- state-crossing parts (see _state_bwd)
        b_h = tl.load(p_sc + (i_c % CK) * BK * BV)
        b_dq, b_dk, b_dv, b_dw, b_egp, b_gl = _state_bwd(b_q, b_k, b_w, b_v, b_do, b_h, b_dh, b_A, b_dq, b_dk,
                                                         b_dw, PREC)
        tl.store(dv_ptr + p_v, b_dv.to(dv_ptr.dtype.element_ty), mask=m_tv)
        if DIRECT:
            b_du = _bonus_store(b_q, b_k, b_wr, b_v, b_do, b_u, b_dq, b_dk, b_dw, b_du, dq_ptr, dk_ptr, dw_ptr,
                                p_k, m_tk, scale)
        else:
            tl.store(dq_ptr + part + p_k, b_dq, mask=m_tk)
            tl.store(dk_ptr + part + p_k, b_dk, mask=m_tk)
            tl.store(dw_ptr + part + p_k, b_dw, mask=m_tk)
        b_dh = b_dh * tl.exp(b_gl)[:, None] + mma(tl.trans(b_q * b_egp), b_do, PREC, B_EXACT=True)
    if USE_H0:
        tl.store(dh0_ptr + i_nh.to(tl.int64) * K * V + o_kv, b_dh, mask=m_kv)
    if DIRECT:
        tl.store(du_ptr + i_nh.to(tl.int64) * K + o_k, b_du, mask=m_k)


# ----------------------------------------------------------------------------------------------------------------
# backward 3 (only with several V-blocks): sum the fp32 partials, add the bonus terms, du partial rows
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=_warp_configs(), key=["K", "V", "BK", "BVF", "NV", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NTOK', 'NH_BUCKET'])
def _wkv6_bwd_combine_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, pq_ptr, pk_ptr, pw_ptr,
                             dq_ptr, dk_ptr, dw_ptr, du_ptr, cu_ptr, scale, T, NTOK, NH_BUCKET,
                             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                             BK: tl.constexpr, BVF: tl.constexpr, NV: tl.constexpr, VARLEN: tl.constexpr):
    """Grid (N·H,): sums the NV fp32 partials pq_ptr, pk_ptr, pw_ptr [NV, B·T, H, K] (fixed order; NTOK = B·T rows
    each) of one (sequence, head), adds the bonus terms (``_bonus_store``: q, k, u, v and do_ptr [B·T, H, V]) and
    writes dq_ptr, dk_ptr, dw_ptr [B·T, H, K] in the inputs' dtype and du_ptr [N, H, K] fp32 rows (layouts above);
    BVF ≥ V: all of V in one block."""
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
        m_t, p_k, p_v, m_tk, m_tv = _row_offsets(bos, i_c * BT, L, i_h, o_t, o_k, o_v, m_k, m_v, H, K, V)
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
        b_du = _bonus_store(b_q, b_k, b_w, b_v, b_do, b_u, b_dq, b_dk, b_dw, b_du, dq_ptr, dk_ptr, dw_ptr,
                            p_k, m_tk, scale)
    tl.store(du_ptr + i_nh.to(tl.int64) * K + o_k, b_du, mask=m_k)



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
    launch(_wkv6_fwd_kernel)[grid](r, k, v, w, u, h0, o, ht, hs if save else None, _cu(cu_seqlens), scale, T,
                                   _nh_bucket(N * H), H=H, K=K, V=V, BT=BT_CHUNK, BK=BK, USE_H0=h0 is not None,
                                   VARLEN=cu_seqlens is not None, SAVE=save, PREC=_prec(r.dtype), CK=CKPT)
    return o, ht, hs


def _bwd_impl(r, k, v, w, u, do, dht, h0, cu_seqlens, scale, hs=None):
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK, BV = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    dev = r.device
    NTOK = B * T
    prec = _prec(r.dtype, bwd=True)
    cu = _cu(cu_seqlens)
    use_h0, varlen = h0 is not None, cu_seqlens is not None
    # checkpointed chunk-start states (every CKPT chunks): sequence n uses slots bos//(BT·CKPT) + n + i_c//CKPT
    # (disjoint: the next sequence starts at slot (bos+len)//(BT·CKPT) + n + 1 >= bos//(BT·CKPT) + n +
    # cdiv(len, BT·CKPT)), at most cdiv(B·T, BT·CKPT) + N slots
    scratch = new_empty((NV * N * H, CKPT, BK, BV), torch.float32, dev)
    grid = (NV, N * H)
    if hs is None or hs.numel() == 0:     # checkpoints not saved by the forward: recompute them
        hs = new_empty(_ckpt_shape(B, T, H, K, V, N), torch.float32, dev)
        launch(_wkv6_bwd_states_kernel)[grid](k, v, w, h0, hs, cu, T, _nh_bucket(N * H), H=H, K=K, V=V, BT=BT_CHUNK,
                                              BK=BK, BV=BV, USE_H0=use_h0, VARLEN=varlen, PREC=prec, CK=CKPT)
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
    launch(_wkv6_bwd_main_kernel)[grid](
        r, k, v, w, u, do, dht, hs, scratch, pq, pk, pw, dv, du_part, dh0, cu, scale, T, NTOK, _nh_bucket(N * H),
        H=H, K=K, V=V, BT=BT_CHUNK, BK=BK, BV=BV, USE_H0=use_h0, USE_DHT=dht is not None, VARLEN=varlen, PREC=prec,
        DIRECT=direct, CK=CKPT)
    if not direct:
        launch(_wkv6_bwd_combine_kernel)[(N * H,)](
            r, k, v, w, u, do, pq, pk, pw, dr, dk, dw, du_part, cu, scale, T, NTOK, _nh_bucket(N * H), H=H, K=K, V=V,
            BT=BT_CHUNK, BK=BK, BVF=max(16, triton.next_power_of_2(V)), NV=NV, VARLEN=varlen)
    du = du_part.sum(0).to(u.dtype)
    return dr, dk, dv, dw, du, dh0



_wkv6_fused_fwd_op = _make_ops("wkv6_fused", _fwd_impl, _bwd_impl,
                         lambda B, T, H, K, V, N, varlen, device: _ckpt_shape(B, T, H, K, V, N))


def wkv6_fused(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6 wkv, the sequential chunked Triton kernels (one program per (V-block, sequence·head) walking its
    16-token chunks; custom ops ``groundthink::wkv6_fused_fwd`` / ``_bwd``). Same arguments, results and gradients
    as ``kernels.wkv6.wkv6``."""
    return _run(_wkv6_fused_fwd_op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
