"""Gate blend + residual add + norm in plain PyTorch: the oracle for ``kernels.gate_norm_residual``.

For rows of x, a (RWKV branch), b (Mamba branch), all ``[..., D]``:

    h = x + blend(a, b)                  new residual stream (kept in fp32 when ``residual_fp32``)
    y = norm(h) ⊙ weight (+ bias)        input of the next sublayer

Blend modes (``mode``), covering every fusion variant:
    "add"      h = x + a                               (FFN sublayers, CP, RF; b and gate must be None)
    "vector"   h = x + g⊙a + (1−g)⊙b, gate [D]         (HY: learned per-dim blend)
    "row"      h = x + g⊙a + (1−g)⊙b, gate [..., 1]    (GF family: one gate per position)
    "element"  h = x + g⊙a + (1−g)⊙b, gate [..., D]    (HGF family: per position and dim)
    "weights"  h = x + g₀·a + g₁·b,   gate [2]         (WS: learned global weights)
With ``gate_logits=True`` the gate of the vector/row/element modes is given as logits: g = σ(gate), or
g = σ(gate + gate_bias) with ``gate_bias`` ([1] for "row", [D] for "element"; the gate projection's bias, so
that the caller need not add it in a kernel of its own).

Norms: "rms"  y = h · rsqrt(mean(h²) + eps) · weight (+ bias)
       "layer" y = (h − mean(h)) · rsqrt(var(h) + eps) · weight (+ bias)

Dtypes: h comes back in x's dtype (float32 if ``residual_fp32``); y in a's dtype. Math in float32, or float64
when the inputs are float64.
"""
from __future__ import annotations

import math

import torch

MODES = ("add", "vector", "row", "element", "weights")
NORMS = ("rms", "layer")


def gate_shape(mode: str, x_shape, D: int):
    """The gate shape a mode expects (None for "add")."""
    return {"add": None, "vector": (D,), "row": (*x_shape[:-1], 1), "element": tuple(x_shape),
            "weights": (2,)}[mode]


def check_args(x, a, b, gate, mode, weight, bias, norm, eps=1e-5, gate_bias=None, gate_logits=False):
    """Shape/mode/eps validation shared by the reference and the kernel launcher (clear errors, named args)."""
    if gate_bias is not None:
        want = {"row": (1,), "element": (x.shape[-1],)}.get(mode)
        if want is None or not gate_logits or tuple(gate_bias.shape) != want:
            raise ValueError(f"gate_bias: a [1] (mode 'row') or [D] (mode 'element') bias of gate logits "
                             f"(gate_logits=True) expected; got shape {tuple(gate_bias.shape)} in mode {mode!r} "
                             f"with gate_logits={gate_logits}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0; got {eps!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    D = x.shape[-1]
    if a is None or a.shape != x.shape:
        raise ValueError(f"a must have the shape of x {tuple(x.shape)}; got {None if a is None else tuple(a.shape)}")
    if mode == "add":
        if b is not None or gate is not None:
            raise ValueError("mode 'add' takes neither b nor gate")
    else:
        if b is None or b.shape != x.shape:
            raise ValueError(f"b must have the shape of x {tuple(x.shape)} in mode {mode!r}; "
                             f"got {None if b is None else tuple(b.shape)}")
        want = gate_shape(mode, x.shape, D)
        if gate is None or tuple(gate.shape) != want:
            raise ValueError(f"gate must have shape {want} in mode {mode!r}; "
                             f"got {None if gate is None else tuple(gate.shape)}")
    if weight is None or tuple(weight.shape) != (D,):
        raise ValueError(f"weight must have shape ({D},); got {None if weight is None else tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"bias must have shape ({D},); got {tuple(bias.shape)}")


def blend(x, a, b, gate, mode: str, gate_logits: bool = False, gate_bias=None):
    """h = x + blend(a, b) in the dtype of the arguments."""
    if gate_bias is not None:
        gate = gate + gate_bias
    if mode == "add":
        return x + a
    if mode == "weights":
        return x + gate[0] * a + gate[1] * b
    g = torch.sigmoid(gate) if gate_logits else gate
    return x + g * a + (1 - g) * b


def normalize(h, weight, bias, norm: str, eps: float):
    if norm == "rms":
        hn = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    else:
        mu = h.mean(-1, keepdim=True)
        hn = (h - mu) * torch.rsqrt((h - mu).pow(2).mean(-1, keepdim=True) + eps)
    y = hn * weight
    return y + bias if bias is not None else y


def gate_norm_residual(x, a, b=None, gate=None, *, weight, bias=None, mode: str = "add", norm: str = "rms",
                       eps: float = 1e-5, gate_logits: bool = False, residual_fp32: bool = False,
                       gate_bias=None):
    """Returns ``(h, y)``; see the module docstring."""
    check_args(x, a, b, gate, mode, weight, bias, norm, eps, gate_bias, gate_logits)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    up = lambda t: None if t is None else t.to(cdt)  # noqa: E731
    h = blend(up(x), up(a), up(b), up(gate), mode, gate_logits, up(gate_bias))
    y = normalize(h, up(weight), up(bias), norm, eps)
    h_dtype = torch.float32 if (residual_fp32 and cdt == torch.float32) else x.dtype
    return h.to(h_dtype), y.to(a.dtype)
