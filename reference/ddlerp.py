"""RWKV-6 data-dependent lerps (the five token-shift mixes) in plain PyTorch: the oracle for ``kernels.ddlerp``.

For x ``[B, T, D]``, the low-rank mix terms m ``[5, B, T, D]`` (m_i = tanh(x_mix W1_i) W2_i, computed outside) and
the static mixes maa ``[5, D]`` (time_maa_w, _k, _v, _r, _g):

    xx   = shift(x) − x,      shift(x)[:, t] = x[:, t−1],  shift(x)[:, 0] = x_prev (or 0)
    out_i = x + xx ⊙ (maa_i + m_i)          i = w, k, v, r, g  → five tensors [B, T, D]

``x_prev`` ``[B, D]`` is the last row of the previous segment (recurrent state; not differentiated). Math in
float32 (float64 for float64 inputs); the outputs come back in x's dtype.

``order`` (a permutation of 0…4) groups the outputs for a batched projection: (out[order[0]] ``[B, T, D]``, the
other four stacked ``[4, B, T, D]`` in the order order[1:]) — the model feeds the stack to ONE batched matmul.
"""
from __future__ import annotations

import torch

N_MIX = 5


def check_x_prev(x, x_prev):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D]; got shape {tuple(x.shape)}")
    if x_prev is not None:
        if tuple(x_prev.shape) != (x.shape[0], x.shape[2]):
            raise ValueError(f"x_prev must have shape {(x.shape[0], x.shape[2])} ([B, D]); got {tuple(x_prev.shape)}")
        if x_prev.requires_grad and torch.is_grad_enabled():
            raise ValueError("x_prev (the carried token-shift state) is not differentiated; pass it detached")


def check_args(x, m, maa, x_prev):
    check_x_prev(x, x_prev)
    B, T, D = x.shape
    if m is None or tuple(m.shape) != (N_MIX, B, T, D):
        raise ValueError(f"m must have shape {(N_MIX, B, T, D)} ([5, B, T, D]); got "
                         f"{None if m is None else tuple(m.shape)}")
    if maa is None or tuple(maa.shape) != (N_MIX, D):
        raise ValueError(f"maa must have shape {(N_MIX, D)} ([5, D]); got {None if maa is None else tuple(maa.shape)}")


def check_order(order):
    """None or a permutation of 0…4 (returned as a tuple of ints)."""
    if order is None:
        return None
    try:
        got = tuple(int(i) for i in order)
    except (TypeError, ValueError):
        got = None
    if got is None or sorted(got) != list(range(N_MIX)):
        raise ValueError(f"order must be a permutation of 0..{N_MIX - 1}; got {order!r}")
    return got


def token_shift_diff(x, x_prev=None):
    """xx = shift(x) − x in x's dtype (x_prev or zeros before the first token)."""
    first = torch.zeros_like(x[:, :1]) if x_prev is None else x_prev[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], 1) - x


def ddlerp(x, m, maa, x_prev=None, order=None):
    """(xw, xk, xv, xr, xg), or grouped by ``order``; see the module docstring."""
    check_args(x, m, maa, x_prev)
    order = check_order(order)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cdt)
    xx = token_shift_diff(xf, None if x_prev is None else x_prev.to(cdt))
    out = (xf + xx * (maa.to(cdt)[:, None, None, :] + m.to(cdt))).to(x.dtype)
    if order is None:
        return tuple(out.unbind(0))
    # a stack of selects, not out[list]: a list index is built on the host and copied to the device, which a
    # CUDA-graph capture refuses (run 6)
    return out[order[0]], torch.stack([out[i] for i in order[1:]])
