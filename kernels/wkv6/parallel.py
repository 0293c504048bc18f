"""Chunk-parallel algorithm (``wkv6_parallel``): 64-token chunks, per-chunk states by the state pass
(``states.py``), then every 16-row sub-block's output / gradients in parallel with exact per-key loops (see the
package docstring)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import autotune_configs, new_empty
from kernels.wkv6.common import (_blocks, _chunk_loc, _clamp_w, _dims, _intra_bwd, _make_ops, _prec, _run,
                                 _state_bwd)
from kernels.wkv6.states import BT_PAR, _par_state_shape, _par_states

SUB_PAR = 16      # exact sub-block length


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
        b_wj = _clamp_w(tl.load(w_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32))
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
        b_e1 = tl.exp(_clamp_w(tl.load(w_ptr + p_row + (j + 1) * H * K, mask=m_j1, other=0.)
                                 .to(tl.float32)))
        b_P = tl.where(o_t[:, None] == j + 1, 1., b_P * b_e1[None, :])
        b_kj = tl.load(k_ptr + p_row + j * H * K, mask=m_k & (o_k * 0 + r0 + j < L), other=0.).to(tl.float32)
        b_a = tl.sum(b_q * b_kj[None, :] * b_P, axis=1)
        b_A = tl.where(o_t[None, :] == j, b_a[:, None], b_A)
    b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_w = _clamp_w(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32))
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
        b_wj = _clamp_w(tl.load(w_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32))
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
        b_wj = _clamp_w(tl.load(w_ptr + tj[:, None] * K + o_k[None, :], mask=m_jk, other=0.).to(tl.float32))
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
    b_wt = _clamp_w(tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32))
    b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    # exact intra-sub-block part (see _intra_bwd)
    b_B = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
    p_row = ((bos + r0) * H + i_h) * K + o_k
    b_A, b_dq, b_dk, b_dw = _intra_bwd(k_ptr, p_row, r0, L, b_q, b_wt, b_B, o_t, o_k, m_k, H, K, SB, BK, 1)
    b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_wr = tl.load(w_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_w = _clamp_w(b_wr)
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


_wkv6_parallel_fwd_op = _make_ops("wkv6_parallel", _par_fwd_impl, _par_bwd_impl, _par_state_shape)


def wkv6_parallel(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6 wkv, chunk-parallel Triton kernels (custom ops ``groundthink::wkv6_parallel_fwd`` / ``_bwd``).

    Same arguments, results and gradients as ``kernels.wkv6.wkv6``, computed by the chunk-parallel algorithm
    (64-token chunks: per-chunk states in parallel, a short sequential scan over chunks, then every 16-row
    sub-block's output / gradients in parallel with exact per-key loops).
    """
    return _run(_wkv6_parallel_fwd_op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
