"""The model's feed-forward y = act(x W_upᵀ) W_downᵀ in plain PyTorch: the oracle for ``kernels.ffn``.

For x ``[..., D]``, w_up ``[F, D]`` and w_down ``[D, F]`` (nn.Linear weight layouts, no bias; the models use
F = 4D)::

    h = x W_upᵀ           [..., F]
    a = act(h)            act = "gelu": exact GELU  h · Φ(h) = h/2 · (1 + erf(h/√2))   (F.gelu's default)
                              "relu2": squared ReLU relu(h)²
    y = a W_downᵀ         [..., D]

Products in x's dtype (the weights cast to it; under autocast all three in autocast's dtype, as nn.Linear computes
them); ``act`` on the rounded h, as the unfused chain (up, GELU, down: fused/blocks.py's ``FFN`` before this op).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTS = ("gelu", "relu2")


def check_args(x, w_up, w_down, act):
    """One-line errors for arguments that do not fit together (what is wrong, what is accepted)."""
    if act not in ACTS:
        raise ValueError(f"ffn: act must be one of {ACTS}; got {act!r}")
    if x.dim() < 1 or w_up.dim() != 2 or w_down.dim() != 2:
        raise ValueError(f"ffn: x [..., D], w_up [F, D] and w_down [D, F] expected; got x {tuple(x.shape)}, "
                         f"w_up {tuple(w_up.shape)}, w_down {tuple(w_down.shape)}")
    D, Fh = x.shape[-1], w_up.shape[0]
    if w_up.shape[1] != D or tuple(w_down.shape) != (D, Fh) or D == 0 or Fh == 0:
        raise ValueError(f"ffn: w_up must be [F, D] and w_down [D, F] with D = {D} (x's last dimension), F ≥ 1; "
                         f"got w_up {tuple(w_up.shape)}, w_down {tuple(w_down.shape)}")


def ffn(x, w_up, w_down, act="gelu"):
    """act(x w_upᵀ) w_downᵀ: x [..., D], w_up [F, D], w_down [D, F] → [..., D]."""
    check_args(x, w_up, w_down, act)
    h = F.linear(x, w_up.to(x.dtype))
    a = F.gelu(h) if act == "gelu" else torch.relu(h).square()
    return F.linear(a, w_down.to(x.dtype))
