"""Fusion variants: how the RWKV-6 branch a and the Mamba-2 branch b of a block are combined.

Every variant ends in ONE call of ``ops.gate_norm_residual`` (blend + residual add + norm):

    name     branches  gate (from xn = the block's normalized input)               mode
    HY       a ∥ b     learned per-dim logit vector [D], g = σ(·)                   "vector" (gate_logits)
    GF       a ∥ b     per-position logit Linear(D → 1)(xn), g = σ(·)               "row"    (gate_logits)
    GF-MH    a ∥ b     GF with gate bias −gate_bias_mag (g ≈ 0.18: Mamba-heavy)    "row"
    GF-RH    a ∥ b     GF with gate bias +gate_bias_mag (g ≈ 0.82: RWKV-heavy)     "row"
    HGF      a ∥ b     per-position per-dim logits Linear(D → D)(xn)                "element" (gate_logits)
    HGF-MH   a ∥ b     HGF with bias −gate_bias_mag                                 "element"
    HGF-RH   a ∥ b     HGF with bias +gate_bias_mag                                 "element"
    CP       a ∥ b     none: c = Linear(2D → D)([a, b]) (init ½[I, I] + noise)      "add" with c
    WS       a ∥ b     learned global weights softmax(2 logits) = (w_a, w_b)        "weights"
    RF       a → b     residual fusion: a = RWKV(xn), b = Mamba(xn + a) (Mamba refines the RWKV-updated
                       stream), h = x + a + b                                       "add" with a + b
    rwkv6    a         pure RWKV-6 baseline                                         "add"
    mamba2   b         pure Mamba-2 baseline                                        "add"

g always weighs the RWKV branch: h = x + g⊙a + (1−g)⊙b. ``gate_mean`` in the stats is the mean of g (WS: w_a).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fused.configs import ModelConfig

VARIANTS: dict[str, dict] = {
    "HY": dict(branches="both", mode="vector", gate="vector", bias=0.0),
    "GF": dict(branches="both", mode="row", gate="linear", bias=0.0),
    "GF-MH": dict(branches="both", mode="row", gate="linear", bias=-1.0),
    "GF-RH": dict(branches="both", mode="row", gate="linear", bias=+1.0),
    "HGF": dict(branches="both", mode="element", gate="linear", bias=0.0),
    "HGF-MH": dict(branches="both", mode="element", gate="linear", bias=-1.0),
    "HGF-RH": dict(branches="both", mode="element", gate="linear", bias=+1.0),
    "CP": dict(branches="both", mode="add", gate="concat", bias=None),
    "WS": dict(branches="both", mode="weights", gate="weights", bias=None),
    "RF": dict(branches="sequential", mode="add", gate=None, bias=None),
    "rwkv6": dict(branches="rwkv", mode="add", gate=None, bias=None),
    "mamba2": dict(branches="mamba", mode="add", gate=None, bias=None),
}
_CANON = {k.lower(): k for k in VARIANTS}


def canonical_name(name: str) -> str:
    try:
        return _CANON[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model variant {name!r}; known: {list(VARIANTS)}") from None


class Fusion(nn.Module):
    """The variant's gate parameters and the one ``ops.gate_norm_residual`` call of the mixer sublayer."""

    def __init__(self, cfg: ModelConfig, name: str):
        super().__init__()
        spec = VARIANTS[name]
        self.kind, self.mode, self.branches = spec["gate"], spec["mode"], spec["branches"]
        D = cfg.d_model
        if spec["bias"] is not None:
            bias = cfg.gate_bias if cfg.gate_bias is not None else spec["bias"] * cfg.gate_bias_mag
        if self.kind == "vector":
            self.gate_logit = nn.Parameter(torch.full((D,), float(bias)))
        elif self.kind == "linear":
            out = 1 if self.mode == "row" else D
            self.gate_proj = nn.Linear(D, out, bias=True)
            nn.init.normal_(self.gate_proj.weight, std=cfg.init_std / 2)
            nn.init.constant_(self.gate_proj.bias, float(bias))
        elif self.kind == "concat":
            self.proj = nn.Linear(2 * D, D, bias=False)
            with torch.no_grad():
                eye = torch.eye(D)
                self.proj.weight.copy_(0.5 * torch.cat([eye, eye], 1)
                                       + cfg.init_std * torch.randn(D, 2 * D) / 2)
        elif self.kind == "weights":
            self.weight_logits = nn.Parameter(torch.zeros(2))

    def _gate_logits(self, xn, proj=None):
        """The gate projection of xn; ``proj``: its product xn Wᵀ when the caller computed it (``HybridBlock``: one
        GEMM with Mamba's in_proj), then only the bias is added. Row mode (D → 1) as a matrix-vector product: as a
        GEMM ([N, D] @ [D, 1], and K = 1 for its input gradient) cuBLAS runs it on slow CUTLASS align1 kernels (run
        6, large: 5.5 ms a step); ``mv`` runs a gemv, its backward one outer-product multiply and a gemv. Same
        parameters, same math; the logits keep the product's dtype (bf16 under autocast, as the Linear's)."""
        if proj is not None:
            return proj + self.gate_proj.bias.to(proj.dtype)
        if self.mode != "row":
            return self.gate_proj(xn)
        logits = torch.matmul(xn, self.gate_proj.weight.view(-1))
        return (logits + self.gate_proj.bias.to(logits.dtype)).unsqueeze(-1)

    def forward(self, h, a, b, xn, ops, norm, cfg: ModelConfig, collect: bool, proj=None):
        """h: residual in; a, b: branch outputs (either may be None for baselines); xn: normalized input;
        ``proj``: the gate projection's product xn Wᵀ [..., out] without its bias when the caller computed it
        (``HybridBlock``: one GEMM with Mamba's in_proj), else it is computed here.
        Returns (h, y, gate): when ``collect`` and the variant has a gate, ``gate`` is its probe for
        ``groundthink.monitor.gate_mean`` — ("logit", detached logits[, their bias]) or ("weight", w_a) — else
        None."""
        kw = dict(weight=norm.weight, bias=norm.bias, norm=cfg.norm, eps=cfg.norm_eps,
                  residual_fp32=cfg.residual_fp32)
        gate = None
        if self.kind is None:          # baselines and RF: mode add
            c = a if b is None else (b if a is None else a + b)
            out = ops.gate_norm_residual(h, c, weight=kw.pop("weight"), mode="add", **kw)
        elif self.kind == "concat":
            c = self.proj(torch.cat([a, b], -1))
            out = ops.gate_norm_residual(h, c, weight=kw.pop("weight"), mode="add", **kw)
        elif self.kind == "weights":
            wts = torch.softmax(self.weight_logits.float(), 0)
            if collect:
                gate = ("weight", wts[0].detach())
            out = ops.gate_norm_residual(h, a, b, wts, weight=kw.pop("weight"), mode="weights", **kw)
        elif proj is not None:
            # the product xn Wᵀ as the gate logits and the projection's bias added inside the op (its gradient
            # summed there too): no add kernel forward, no column sum backward (issue 10: launches)
            if collect:
                gate = ("logit", proj.detach(), self.gate_proj.bias.detach())
            out = ops.gate_norm_residual(h, a, b, proj, weight=kw.pop("weight"), mode=self.mode, gate_logits=True,
                                         gate_bias=self.gate_proj.bias, **kw)
        else:
            logits = self.gate_logit if self.kind == "vector" else self._gate_logits(xn, proj)
            if collect:
                gate = ("logit", logits.detach())
            out = ops.gate_norm_residual(h, a, b, logits, weight=kw.pop("weight"), mode=self.mode,
                                         gate_logits=True, **kw)
        return (*out, gate)
