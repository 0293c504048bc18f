"""The end-to-end peer: the same parallel RWKV-6 ∥ Mamba-2 hybrid built from the public libraries.

Per layer (pre-norm residual stream h, the normalized input y shared by both branches, as in ``fused``):

    a = fla.layers.RWKV6Attention(y)          (fla's chunk_rwkv6, its own token shift / ddlerp / GroupNorm)
    b = mamba_ssm.modules.mamba2.Mamba2(y)    (mamba-ssm's Triton SSD + causal-conv1d when installed)
    g = σ(Linear(y) → 1)                      one gate per position (GF), eager
    h = h + g·a + (1−g)·b ;  y' = RMSNorm(h) ;  h = h + MLP(y') ;  y = RMSNorm(h)    eager PyTorch
    MLP = Linear(D, 4D) → GELU → Linear(4D, D);  vocabulary 97, untied head

Dimensions follow ``fused.configs.SIZES`` (RWKV heads of ``head_size`` with K = V, ddlerp/decay LoRA ranks, Mamba
d_state / headdim / chunk) so the peer does the same work as the lab's model. GPU only: fla's and mamba-ssm's
kernels are Triton/CUDA (``peer_available()`` says why not). ``model(idx, targets) -> (logits, loss)``.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

_FALLBACK_SIZES = {   # used only if fused.configs is absent; mirrors it
    "tiny": dict(d_model=64, n_layer=5, head_size=32, mix_lora=8, decay_lora=16, d_state=16, headdim=16,
                 chunk_size=32),
    "small": dict(d_model=128, n_layer=8, head_size=32, mix_lora=32, decay_lora=64, d_state=32, headdim=32,
                  chunk_size=64),
    "large": dict(d_model=512, n_layer=8, head_size=64, mix_lora=32, decay_lora=64, d_state=64, headdim=64,
                  chunk_size=256),
}


def size_config(size: str) -> dict:
    try:
        from fused.configs import SIZES
        cfg = dict(SIZES[size])
    except ImportError:
        cfg = dict(_FALLBACK_SIZES[size])
    cfg.setdefault("expand", 2)
    cfg.setdefault("d_conv", 4)
    cfg.setdefault("ngroups", 1)
    return cfg


def peer_available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "the peer needs CUDA (fla and mamba-ssm kernels)"
    try:
        import fla.layers.rwkv6  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"fla not importable: {type(e).__name__}: {e}"
    try:
        import mamba_ssm.modules.mamba2  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"mamba-ssm not importable: {type(e).__name__}: {e}"
    return True, "ok"


def _has_causal_conv1d() -> bool:
    try:
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


class PeerBlock(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int, mem_eff: bool):
        super().__init__()
        from fla.layers.rwkv6 import RWKV6Attention
        from mamba_ssm.modules.mamba2 import Mamba2
        D = cfg["d_model"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # fla's "potentially buggy FLA implementation of RWKV" notice
            self.rwkv = RWKV6Attention(mode="chunk", hidden_size=D, expand_k=1.0, expand_v=1.0,
                                       num_heads=D // cfg["head_size"], proj_low_rank_dim=cfg["mix_lora"],
                                       gate_low_rank_dim=cfg["decay_lora"], norm_eps=1e-5, layer_idx=layer_idx)
        self.mamba = Mamba2(d_model=D, d_state=cfg["d_state"], d_conv=cfg["d_conv"], expand=cfg["expand"],
                            headdim=cfg["headdim"], ngroups=cfg["ngroups"], chunk_size=cfg["chunk_size"],
                            use_mem_eff_path=mem_eff, layer_idx=layer_idx)
        self.gate = nn.Linear(D, 1)
        self.norm1 = nn.RMSNorm(D, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))
        self.norm2 = nn.RMSNorm(D, eps=1e-5)

    def forward(self, h, y):
        a = self.rwkv(y)[0]
        b = self.mamba(y)
        g = torch.sigmoid(self.gate(y))
        h = h + g * a + (1 - g) * b
        h = h + self.mlp(self.norm1(h))
        return h, self.norm2(h)


class PeerHybridLM(nn.Module):
    def __init__(self, size: str = "small", vocab_size: int = 97):
        super().__init__()
        cfg = size_config(size)
        self.cfg, self.size = cfg, size
        D = cfg["d_model"]
        mem_eff = _has_causal_conv1d()
        self.mem_eff_path = mem_eff
        self.emb = nn.Embedding(vocab_size, D)
        self.norm0 = nn.RMSNorm(D, eps=1e-5)
        self.blocks = nn.ModuleList(PeerBlock(cfg, i, mem_eff) for i in range(cfg["n_layer"]))
        self.head = nn.Linear(D, vocab_size, bias=False)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, idx, targets=None):
        h = self.emb(idx)
        y = self.norm0(h)
        for blk in self.blocks:
            h, y = blk(h, y)
        logits = self.head(y)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.cfg
        return (f"peer fla RWKV6Attention ∥ mamba-ssm Mamba2 ({self.size}): {self.num_params() / 1e6:.2f}M params, "
                f"D {c['d_model']}, {c['n_layer']} layers, rwkv head {c['head_size']}, mamba headdim {c['headdim']} "
                f"d_state {c['d_state']} chunk {c['chunk_size']}, causal-conv1d path {self.mem_eff_path}")


def build_peer(size: str = "small", vocab_size: int = 97, device=None) -> PeerHybridLM:
    ok, why = peer_available()
    if not ok:
        raise ImportError(why)
    model = PeerHybridLM(size, vocab_size)
    return model.to(device or "cuda")
