"""Peers of the fused gate blend + residual + norm (benchmarks and the gate): ``torch.compile`` of the
reference, and fla's fused residual add + RMSNorm/LayerNorm after an eager blend. Factories: each returns the
callable (``Impl(..., factory=True)``)."""
from __future__ import annotations

import torch


def compiled_reference():
    """torch.compile of the reference, compiled afresh (no recompile limit, no cache from earlier shapes)."""
    from reference.gate_norm_residual import gate_norm_residual
    torch._dynamo.reset()
    return torch.compile(gate_norm_residual, dynamic=False)


def fla_blend_add_norm():
    """Eager blend of the branches in the input dtype, then fla's fused residual add + norm (prenorm)."""
    try:
        from fla.modules.norm.layernorm import layer_norm, rms_norm
    except ImportError:
        from fla.modules.layernorm import layer_norm, rms_norm

    def fn(x, a, b=None, gate=None, *, weight, bias=None, mode="add", norm="rms", eps=1e-5, gate_logits=False,
           residual_fp32=False):
        if mode == "add":
            branch = a
        elif mode == "weights":
            branch = gate[0] * a + gate[1] * b
        else:
            gg = torch.sigmoid(gate) if gate_logits else gate
            branch = gg * a + (1 - gg) * b
        f = rms_norm if norm == "rms" else layer_norm
        y, h = f(branch, weight, bias, residual=x, eps=eps, prenorm=True, residual_in_fp32=residual_fp32)
        return h, y

    return fn
