"""Per-group norm and SiLU gate in plain PyTorch: the oracle for ``kernels.norm_gate``.

For rows of x and z, both ``[..., D]`` with D = G · group_size (G groups of contiguous features):

    norm_before_gate=True   y = (norm_g(x) ⊙ weight + bias) ⊙ silu(z)       RWKV-6 output: GroupNorm(o) ⊙ g
    norm_before_gate=False  y =  norm_g(x ⊙ silu(z)) ⊙ weight + bias        Mamba-2 output: gated RMSNorm

norm_g normalises each group of ``group_size`` features of a row on its own:
    "layer"  (h − mean_g(h)) · rsqrt(mean_g((h − mean_g h)²) + eps)    (= nn.GroupNorm on a [N, D] row batch)
    "rms"     h · rsqrt(mean_g(h²) + eps)                             (= mamba-ssm's RMSNormGated)

silu(z) = z · σ(z). These are mamba-ssm's ``layernorm_fn`` / ``rmsnorm_fn`` (mamba_ssm.ops.triton.layernorm_gated)
semantics. Math in float32 (float64 for float64 inputs); y comes back in x's dtype.
"""
from __future__ import annotations

import torch

NORMS = ("layer", "rms")


def check_args(x, z, weight, bias, group_size, norm, eps):
    """Shape/option validation shared by the reference and the kernel launcher; returns group_size."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension (…, D); got shape {tuple(x.shape)}")
    D = x.shape[-1]
    if z is None or tuple(z.shape) != tuple(x.shape):
        raise ValueError(f"z must have the shape of x {tuple(x.shape)}; got {None if z is None else tuple(z.shape)}")
    if weight is None or tuple(weight.shape) != (D,):
        raise ValueError(f"weight must have shape ({D},); got {None if weight is None else tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"bias must have shape ({D},); got {tuple(bias.shape)}")
    gs = D if group_size is None else int(group_size)
    if gs < 1 or D % gs:
        raise ValueError(f"group_size must divide the feature dimension D={D}; got {group_size}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}")
    return gs


def normalize_groups(h, group_size: int, norm: str, eps: float):
    """norm_g(h) over groups of ``group_size`` contiguous features of the last dimension."""
    shape = h.shape
    hg = h.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    if norm == "layer":
        hg = hg - hg.mean(-1, keepdim=True)
    hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    return hg.reshape(shape)


def norm_gate(x, z, weight, bias=None, *, group_size=None, eps: float = 1e-5, norm: str = "layer",
              norm_before_gate: bool = True):
    """y; see the module docstring."""
    gs = check_args(x, z, weight, bias, group_size, norm, eps)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, zf, wf = x.to(cdt), z.to(cdt), weight.to(cdt)
    s = zf * torch.sigmoid(zf)
    h = xf if norm_before_gate else xf * s
    y = normalize_groups(h, gs, norm, eps) * wf
    if bias is not None:
        y = y + bias.to(cdt)
    if norm_before_gate:
        y = y * s
    return y.to(x.dtype)
