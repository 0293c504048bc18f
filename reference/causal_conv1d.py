"""Depthwise causal conv1d in plain PyTorch: the CPU path of ``ops.causal_conv1d`` (the Mamba-2 mixer's conv) and
the oracle for the causal-conv1d package's CUDA kernel (the peer).

    out[:, c, t] = Σ_k weight[c, k] · x[:, c, t − (w − 1) + k] (+ bias[c]),  x = 0 before the start

then SiLU when asked. Layouts follow causal-conv1d's ``causal_conv1d_fn``: x ``[b, c, t]``, weight ``[c, w]``,
bias ``[c]``. Numerics: one grouped ``F.conv1d`` in x's dtype.
"""
from __future__ import annotations

import torch.nn.functional as F


def causal_conv1d(x, weight, bias=None, activation=None):
    """Depthwise causal conv over time with causal-conv1d's ``causal_conv1d_fn`` signature: x ``[b, c, t]``,
    weight ``[c, w]``, bias ``[c]`` or None, activation None or "silu" -> ``[b, c, t]`` in x's dtype.
    out[:, c, t] = Σ_k weight[c, k] · x[:, c, t − (w − 1) + k] (+ bias[c]), x = 0 before the start."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu'; got {activation!r}")
    w = weight.shape[-1]
    out = F.conv1d(F.pad(x, (w - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return out if activation is None else F.silu(out)
