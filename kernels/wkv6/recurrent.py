"""Recurrent (decode) path ``wkv6_recurrent``: token by token, forward only."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import new_empty
from kernels.wkv6.common import _clamp_w, _kv_ranges, _state_or_zeros, _validate


# ----------------------------------------------------------------------------------------------------------------
# recurrent (decode) path: token by token, forward only
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _wkv6_recurrent_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, h0_ptr, o_ptr, ht_ptr, scale, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                           BV: tl.constexpr, USE_H0: tl.constexpr):
    """Grid (V-blocks, B·H): one program steps through the T tokens of one (sequence, head) for BV columns of V.

    q_ptr, k_ptr, w_ptr [B, T, H, K] (q = r, w the raw log-decay), v_ptr [B, T, H, V], u_ptr [H, K];
    h0_ptr [B, H, K, V] fp32 initial state (None unless USE_H0); o_ptr [B, T, H, V] out (q's dtype);
    ht_ptr [B, H, K, V] fp32 out, the final state; scale multiplies q·k; BK ≥ K, BV the V-block width."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = _state_or_zeros(h0_ptr, i_nh, o_kv, m_kv, K, V, BK, BV, USE_H0)
    for t in range(0, T):
        tok = (i_n.to(tl.int64) * T + t) * H + i_h
        b_q = tl.load(q_ptr + tok * K + o_k, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(k_ptr + tok * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_w = _clamp_w(tl.load(w_ptr + tok * K + o_k, mask=m_k, other=0.).to(tl.float32))
        b_v = tl.load(v_ptr + tok * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_kv = b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_q[:, None] * (b_h + b_u[:, None] * b_kv), axis=0)
        tl.store(o_ptr + tok * V + o_v, b_o.to(o_ptr.dtype.element_ty), mask=m_v)
        b_h = b_h * tl.exp(b_w)[:, None] + b_kv
    tl.store(ht_ptr + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)



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
        _wkv6_recurrent_kernel[(triton.cdiv(V, BV), B * H)](r, k, v, w, u, h0, o, ht, scale, T, H=H, K=K, V=V,
                                                             BK=BK, BV=BV, USE_H0=h0 is not None, num_warps=4)
    return o, (ht if output_final_state else None)

