"""RWKV-6 token-shift lerp (the input of the low-rank mix) in plain PyTorch: the oracle for
``kernels.shift_lerp``.

For x ``[B, T, D]`` and mu ``[D]`` (time_maa_x):

    y = x + (shift(x) − x) ⊙ mu,     shift(x)[:, t] = x[:, t−1],  shift(x)[:, 0] = x_prev (or 0)

``x_prev`` ``[B, D]`` is the last row of the previous segment (recurrent state; not differentiated). Math in
float32 (float64 for float64 inputs); y comes back in x's dtype.
"""
from __future__ import annotations

import torch

from reference.ddlerp import check_x_prev, token_shift_diff


def check_args(x, mu, x_prev):
    check_x_prev(x, x_prev)
    if mu is None or tuple(mu.shape) != (x.shape[-1],):
        raise ValueError(f"mu must have shape ({x.shape[-1]},); got {None if mu is None else tuple(mu.shape)}")


def shift_lerp(x, mu, x_prev=None, tee: bool = False):
    """y; see the module docstring. ``tee``: (y, x) — x for the caller's other consumers (the lab kernel returns a
    view and adds their gradient in its backward; here autograd adds it)."""
    check_args(x, mu, x_prev)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cdt)
    xx = token_shift_diff(xf, None if x_prev is None else x_prev.to(cdt))
    y = (xf + xx * mu.to(cdt)).to(x.dtype)
    return (y, x) if tee else y
