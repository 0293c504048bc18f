"""Depthwise causal conv1d in plain PyTorch: the CPU path of ``ops.causal_conv1d`` (the Mamba-2 mixer's conv) and
the oracle for the causal-conv1d package's CUDA kernel (the peer).

    out[:, c, t] = Σ_k weight[c, k] · x[:, c, t − (w − 1) + k] (+ bias[c]),  x = 0 before the start

then SiLU when asked. Layouts follow causal-conv1d's ``causal_conv1d_fn``: x ``[b, c, t]``, weight ``[c, w]``,
bias ``[c]``.

Numerics. Like the peer, the weight and bias may be of another dtype than x (the training step passes a bf16 x
with the fp32 parameters of the conv; causal-conv1d's kernel takes the weight's dtype as its own template
parameter): one grouped ``F.conv1d`` in the widest of the three dtypes (x, weight and bias are cast to it; all
of one dtype: that dtype, nothing cast), the output cast back to x's dtype, the gradients in each input's own
dtype. The peer accumulates in fp32 whatever its inputs, this conv in the compute dtype (``F.conv1d``'s own
accumulation). Under autocast ``F.conv1d`` runs in the autocast dtype whatever this function casts.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def causal_conv1d(x, weight, bias=None, activation=None):
    """Depthwise causal conv over time with causal-conv1d's ``causal_conv1d_fn`` signature: x ``[b, c, t]``,
    weight ``[c, w]``, bias ``[c]`` or None (each of any floating dtype), activation None or "silu" ->
    ``[b, c, t]`` in x's dtype, computed in the widest dtype of x, weight and bias (module docstring).
    out[:, c, t] = Σ_k weight[c, k] · x[:, c, t − (w − 1) + k] (+ bias[c]), x = 0 before the start."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu'; got {activation!r}")
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in (x, weight, bias) if t is not None))
    w = weight.shape[-1]
    out = F.conv1d(F.pad(x.to(dtype), (w - 1, 0)), weight.to(dtype).unsqueeze(1),
                   None if bias is None else bias.to(dtype), groups=x.shape[1])
    return (out if activation is None else F.silu(out)).to(x.dtype)
