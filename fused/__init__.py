"""The fused hybrid models: ``get_model(name, size, vocab_size, ops=None, **overrides)``.

    from fused import get_model, list_models, SIZES
    model = get_model("HY", size="small", vocab_size=97)     # ops=None -> groundthink.registry.resolve("auto")
    logits, loss = model(idx, targets)

Names (case-insensitive): HY, GF, GF-MH, GF-RH, HGF, HGF-MH, HGF-RH, CP, WS, RF, rwkv6, mamba2 — see
fused/variants.py. Sizes: tiny, small, medium, large, xl — see fused/configs.py.
"""
from __future__ import annotations

from fused.blocks import MAMBA_OPS
from fused.configs import PARAMS_APPROX, SIZES, ModelConfig, make_config
from fused.model import HybridLM
from fused.variants import VARIANTS, canonical_name

__all__ = ["get_model", "list_models", "list_sizes", "size_table", "param_count", "DESCRIPTIONS", "SIZES", "PARAMS_APPROX", "VARIANTS", "ModelConfig",
           "HybridLM", "make_config", "MAMBA_OPS"]


# one line per variant (fused/variants.py has the full table); --list-models prints them
DESCRIPTIONS: dict[str, str] = {
    "HY": "RWKV-6 ∥ Mamba-2, blended by a learned per-dimension gate vector",
    "GF": "RWKV-6 ∥ Mamba-2, blended by a per-position gate Linear(D→1) of the input",
    "GF-MH": "GF with a Mamba-heavy gate bias (g ≈ 0.18 on RWKV at init); the default",
    "GF-RH": "GF with an RWKV-heavy gate bias (g ≈ 0.82 on RWKV at init)",
    "HGF": "RWKV-6 ∥ Mamba-2, per-position per-dimension gate Linear(D→D)",
    "HGF-MH": "HGF with a Mamba-heavy gate bias",
    "HGF-RH": "HGF with an RWKV-heavy gate bias",
    "CP": "RWKV-6 ∥ Mamba-2, concatenated and projected by Linear(2D→D)",
    "WS": "RWKV-6 ∥ Mamba-2, two learned global weights (softmax)",
    "RF": "residual fusion: Mamba-2 refines the RWKV-6-updated stream, h = x + a + b",
    "rwkv6": "pure RWKV-6 baseline (no Mamba-2 branch)",
    "mamba2": "pure Mamba-2 baseline (no RWKV-6 branch)",
}


def param_count(name: str, size: str = "small", vocab_size: int = 97, **overrides) -> int:
    """The exact parameter count of ``get_model(name, size, vocab_size, **overrides)`` without building it
    (instant, no torch work; tests/test_cli.py checks it against built models of every variant)."""
    name = canonical_name(name)
    cfg, spec = make_config(name, size, vocab_size, **overrides), VARIANTS[name]
    D = cfg.d_model
    norm = D * (2 if cfg.norm == "layer" else 1)
    rwkv = 5 * D * D + 10 * cfg.mix_lora * D + 2 * cfg.decay_lora * D + 10 * D   # r k v g out, ddlerp, decay, u, ln_x
    gn = cfg.ngroups * cfg.d_state
    conv_dim = cfg.d_inner + 2 * gn
    mamba = (D * (2 * cfg.d_inner + 2 * gn + cfg.mamba_nheads) + conv_dim * (cfg.d_conv + 1)   # in_proj, conv
             + 3 * cfg.mamba_nheads + cfg.d_inner + cfg.d_inner * D)                          # dt A D, norm, out
    gate = {"vector": D, "concat": 2 * D * D, "weights": 2, None: 0,
            "linear": (D + 1) if spec["mode"] == "row" else D * D + D}[spec["gate"]]
    layer = (2 * norm + 2 * D * cfg.d_ffn + gate + (rwkv if spec["branches"] != "mamba" else 0)
             + (mamba if spec["branches"] != "rwkv" else 0))
    return cfg.n_layer * layer + D + cfg.vocab_size * D * (1 if cfg.tie_embeddings else 2)


def list_models() -> list[str]:
    return list(VARIANTS)


def list_sizes() -> list[str]:
    return list(SIZES)


def get_model(name: str, size: str = "small", vocab_size: int = 97, ops=None, **overrides) -> HybridLM:
    """Build a model. ``ops``: an ``OpSet`` (``groundthink.registry.resolve(...)``); None → resolve("auto")."""
    cfg = make_config(canonical_name(name), size, vocab_size, **overrides)
    return HybridLM(cfg, ops=ops)


def size_table(name: str = "HY", vocab_size: int = 97) -> str:
    """One line per size: the real parameter count of ``name`` (builds each model on CPU, a few seconds for xl)."""
    from groundthink.registry import resolve
    ops = resolve("reference")
    lines = []
    for size in SIZES:
        lines.append(get_model(name, size, vocab_size=vocab_size, ops=ops).describe())
    return "\n".join(lines)
