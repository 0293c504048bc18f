"""The fused hybrid models: ``get_model(name, size, vocab_size, ops=None, **overrides)``.

    from fused import get_model, list_models, SIZES
    model = get_model("HY", size="small", vocab_size=97)     # ops=None -> groundthink.registry.resolve("auto")
    logits, loss = model(idx, targets)

Names (case-insensitive): HY, GF, GF-MH, GF-RH, HGF, HGF-MH, HGF-RH, CP, WS, RF, rwkv6, mamba2 — see
fused/variants.py. Sizes: tiny, small, medium, large, xl — see fused/configs.py.
"""
from __future__ import annotations

from fused.configs import PARAMS_APPROX, SIZES, ModelConfig, make_config
from fused.model import HybridLM
from fused.variants import VARIANTS, canonical_name

__all__ = ["get_model", "list_models", "list_sizes", "size_table", "SIZES", "PARAMS_APPROX", "VARIANTS", "ModelConfig",
           "HybridLM", "make_config"]


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
