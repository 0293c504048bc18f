"""mamba-ssm's gated norm (``mamba_ssm.ops.triton.layernorm_gated``) behind the ``norm_gate`` signature: the peer.

mamba-ssm computes the same function: ``layernorm_fn`` / ``rmsnorm_fn`` with ``z`` the gate, ``group_size`` and
``norm_before_gate``. Imported lazily (GPU only).
"""
from __future__ import annotations


def mamba_ssm_norm_gate(x, z, weight, bias=None, *, group_size=None, eps: float = 1e-5, norm: str = "layer",
                        norm_before_gate: bool = True):
    from mamba_ssm.ops.triton.layernorm_gated import layernorm_fn, rmsnorm_fn
    fn = rmsnorm_fn if norm == "rms" else layernorm_fn
    return fn(x, weight, bias, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
