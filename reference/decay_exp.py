"""RWKV-6 log-decay from the data-dependent decay term, in plain PyTorch: the oracle for ``kernels.decay_exp``.

For base ``[D]`` (time_decay) and d ``[..., D]`` (tanh(x_w W1) W2, computed outside):

    lw = −exp(base + d)          (the log-decay ≤ 0 that wkv6 takes)

computed in float32 (float64 for float64 inputs) and returned in ``dtype`` (default d's dtype).
"""
from __future__ import annotations

import torch


def check_args(base, d):
    if d.dim() < 1 or base is None or tuple(base.shape) != (d.shape[-1],):
        raise ValueError(f"base must have shape ({d.shape[-1] if d.dim() else '?'},) (d's last dimension); got "
                         f"{None if base is None else tuple(base.shape)}")


def decay_exp(base, d, dtype=None):
    """lw = −exp(base + d) in ``dtype`` (default d's dtype)."""
    check_args(base, d)
    cdt = torch.float64 if d.dtype == torch.float64 else torch.float32
    return (-torch.exp(base.to(cdt) + d.to(cdt))).to(dtype or d.dtype)
