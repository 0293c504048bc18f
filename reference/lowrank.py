"""RWKV-6's low-rank data-dependent terms, in plain PyTorch: the oracle for ``kernels.lowrank``.

For x ``[..., D]``, w1 ``[D, G·R]`` and w2 ``[G, R, N]`` (G groups of rank R; a 2-D w2 ``[R, N]`` is one group
without the group dimension)::

    h   = tanh(x w1)                               [..., G·R]   (group g: the columns gR … (g+1)R − 1)
    y_g = h[..., gR:(g+1)R] w2[g]                  [G, ..., N]  (2-D w2: [..., N])
    with base [N] (one group: w2 [R, N] or [1, R, N]):  lw = −exp(base + y)   in fp32, returned in ``dtype``
                                                                     (default: the products' dtype)

The model's two uses (fused/blocks.py, ``RWKV6TimeMix``): the five token-shift mixes' LoRA (G = 5, R = mix_lora,
N = D) and the decay LoRA with its exponential (G = 1, R = decay_lora, base = time_decay): RWKV-LM's
``tanh(xxx @ time_maa_w1) … @ time_maa_w2`` and ``time_decay + tanh(xw @ time_decay_w1) @ time_decay_w2``.
Products in x's dtype (w1 and w2 cast to it; under autocast all three in autocast's dtype, as the model computes them),
the exponential in fp32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch


def check_args(x, w1, w2, base=None):
    """One-line errors for shapes that do not fit together (what is wrong, what is accepted)."""
    if x.dim() < 1 or w1.dim() != 2 or w2.dim() not in (2, 3):
        raise ValueError(f"lowrank: x [..., D], w1 [D, G·R] and w2 [G, R, N] or [R, N] expected; got x "
                         f"{tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    G, R = (w2.shape[0], w2.shape[1]) if w2.dim() == 3 else (1, w2.shape[0])
    if w1.shape[0] != x.shape[-1] or w1.shape[1] != G * R or G * R == 0:
        raise ValueError(f"lowrank: w1 must be [D, G·R] = [{x.shape[-1]}, {G}·{R}] (x's last dimension; w2's "
                         f"groups × rank, both ≥ 1); got {tuple(w1.shape)}")
    if base is not None and (G != 1 or tuple(base.shape) != (w2.shape[-1],)):
        raise ValueError(f"lowrank: base must have shape (N,) = ({w2.shape[-1]},) and w2 one group ([R, N] or "
                         f"[1, R, N]) with base; got base {tuple(base.shape)}, w2 {tuple(w2.shape)}")


def lowrank(x, w1, w2, base=None, dtype=None):
    """tanh(x w1) w2 per group ([G, ..., N], or [..., N] for a 2-D w2); with base: −exp(base + ·) in ``dtype``."""
    check_args(x, w1, w2, base)
    w1, w2 = w1.to(x.dtype), w2.to(x.dtype)      # the products in x's dtype (autocast may then cast all three)
    h = torch.tanh(x @ w1)
    if w2.dim() == 2:
        y = h @ w2
    else:                   # RWKV-LM's form: the codes as [G, M, R], one bmm
        G, R, N = w2.shape
        y = torch.bmm(h.reshape(-1, G, R).transpose(0, 1), w2).view(G, *x.shape[:-1], N)
    if base is None:
        return y if dtype is None else y.to(dtype)
    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    return (-torch.exp(base.to(cdt) + y.to(cdt))).to(dtype or y.dtype)
