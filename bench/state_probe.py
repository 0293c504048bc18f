"""A trained model and its recurrent state: loading a train.py checkpoint, its validation split, and the
state probe shared by bench.variants (state_* columns) and bench.long_context.

The recurrent-state probe ``state_health(model, ids, chunk)`` (the seeds' state tests, also a column group of
bench/variants.py) feeds B different sequences through ``model.forward_with_state`` chunk by chunk from a zero
state and reports, per component (RWKV-6 wkv state S [B, H, K, V], Mamba-2 SSM state [B, nheads, headdim,
d_state]): whether it exists, its RMS, how much it changes per chunk (it evolves), the growth of its RMS from the
first to the second half of the input (bounded: ≈ 1), the variance across the B inputs (it carries signal) and
the ratio of the two components' variances.
"""
from __future__ import annotations

import torch

COMPONENTS = ("rwkv", "mamba")


# ----------------------------------------------------------------------------------------------- models

def load_model(path, kernels: str = "reference", device="cpu"):
    """(model in eval mode on ``device``, tokenizer, checkpoint state) from a train.py checkpoint."""
    import fused
    from groundthink import checkpoint as ckpt
    from groundthink import data as gdata
    from groundthink.registry import resolve
    state = ckpt.load(path)
    cfg = dict(state["config"])
    name, size, vocab = cfg.pop("name"), cfg.pop("size"), cfg.pop("vocab_size")
    model = fused.get_model(name, size, vocab, ops=resolve(kernels), **cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), gdata.tokenizer_from_state(state["tokenizer"]), state


def val_split(state, tok):
    """The validation ids of the checkpoint's corpus (the same split train.py used)."""
    from groundthink import data as gdata
    text, _ = gdata.load_text(state["args"].get("data"))
    return gdata.encode_corpus(tok, text, state["data"]["val_frac"])[1]


# ----------------------------------------------------------------------------------------------- state health

def _states(state) -> dict[str, list[torch.Tensor]]:
    """Per component, the per-layer recurrent states (index 1 of each layer's tuple: wkv S / SSM state)."""
    out = {c: [] for c in COMPONENTS}
    for layer in state:
        for c in COMPONENTS:
            if layer[c] is not None:
                out[c].append(layer[c][1].float())
    return out


def _rms(ts: list[torch.Tensor]) -> float:
    return float(torch.stack([t.pow(2).mean() for t in ts]).mean().sqrt())


@torch.no_grad()
def state_health(model, ids: torch.Tensor, chunk: int) -> dict:
    """The recurrent state of ``model`` over ``ids`` [B ≥ 2, T] fed ``chunk`` tokens at a time from zero (see the
    module docstring). Keys per component c ∈ {rwkv, mamba}: exists_c, rms_c (final), change_c (mean relative
    change per chunk over the second half), growth_c (max RMS over the second half / max over the first half),
    var_c (variance across the B inputs, mean over entries and layers), signal_c (var_c / mean square: the share
    of the state that depends on the input); and finite, var_ratio (var_rwkv / var_mamba, None without both)."""
    B, T = ids.shape
    if B < 2:
        raise ValueError(f"state_health needs at least 2 sequences to measure variance across inputs; got B={B}")
    state = model.init_state(B)
    trace = {c: [] for c in COMPONENTS}
    change = {c: [] for c in COMPONENTS}
    prev = None
    for s in range(0, T, chunk):
        _, state = model.forward_with_state(ids[:, s:s + chunk], state)      # fp32: the states' own precision
        cur = _states(state)
        for c in COMPONENTS:
            if cur[c]:
                trace[c].append(_rms(cur[c]))
                if prev is not None:
                    d = [(a - b).pow(2).mean() / b.pow(2).mean().clamp_min(1e-30) for a, b in zip(cur[c], prev[c])]
                    change[c].append(float(torch.stack(d).mean().sqrt()))
        prev = {c: [t.clone() for t in v] for c, v in cur.items()}
    final = _states(state)
    out = {"finite": all(bool(torch.isfinite(t).all()) for ts in final.values() for t in ts)}
    for c in COMPONENTS:
        ts = final[c]
        out[f"exists_{c}"] = bool(ts)
        if not ts:
            out.update({f"{k}_{c}": None for k in ("rms", "change", "growth", "var", "signal")})
            continue
        half = max(1, len(trace[c]) // 2)
        ch = change[c][len(change[c]) // 2:]
        var = float(torch.stack([t.var(0, unbiased=False).mean() for t in ts]).mean())
        ms = float(torch.stack([t.pow(2).mean() for t in ts]).mean())
        out.update({f"rms_{c}": trace[c][-1], f"change_{c}": sum(ch) / len(ch) if ch else None,
                    f"growth_{c}": max(trace[c][half:] or trace[c]) / max(max(trace[c][:half]), 1e-30),
                    f"var_{c}": var, f"signal_{c}": var / ms if ms > 0 else 0.0})
    vr, vm = out.get("var_rwkv"), out.get("var_mamba")
    out["var_ratio"] = vr / vm if vr is not None and vm else None
    return out


def probe_ids(val_ids: torch.Tensor, batch: int, length: int, seed: int, device) -> torch.Tensor:
    """``batch`` validation windows of ``length`` tokens (seeded), the input of ``state_health``."""
    from groundthink import data as gdata
    length = min(length, len(val_ids) - 2)
    return gdata.get_batch(val_ids, batch, length, seed, 0, device=device)[0]
