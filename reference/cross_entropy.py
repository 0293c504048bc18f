"""Mean token cross-entropy in plain PyTorch: the oracle for ``kernels.cross_entropy``.

For logits ``[N, V]`` and integer targets ``[N]``:

    loss = mean over rows with target ≠ ignore_index of (logsumexp(logits_n) − logits_n[target_n])

computed in float32 (float64 for float64 logits), as ``F.cross_entropy(logits.float(), targets)`` (NaN when
every target is ignored, as PyTorch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_args(logits, targets):
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V]; got shape {tuple(logits.shape)}")
    if targets is None or tuple(targets.shape) != (logits.shape[0],):
        raise ValueError(f"targets must have shape ({logits.shape[0]},); got "
                         f"{None if targets is None else tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be int64 or int32; got {targets.dtype}")


def cross_entropy(logits, targets, ignore_index: int = -100):
    """Scalar mean loss (float32, float64 for float64 logits); see the module docstring."""
    check_args(logits, targets)
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.cross_entropy(logits.to(cdt), targets.long(), ignore_index=ignore_index)
