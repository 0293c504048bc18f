"""Model sizes (char-level vocabulary ~100) and the model config dataclass.

``SIZES[size]`` holds the per-size overrides of ``ModelConfig``; ``make_config(name, size, **overrides)`` builds
one. Real parameter counts (vocab 97, untied head, variant HY) are listed in ``PARAMS_APPROX`` and checked by
tests/test_model.py; ``fused.model.HybridLM.describe()`` prints the exact count of a built model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass
class ModelConfig:
    name: str = "HY"                 # fusion variant (see fused.variants.VARIANTS)
    size: str = "small"
    vocab_size: int = 97
    d_model: int = 128
    n_layer: int = 8
    seq_len: int = 256               # suggested training context (train.py may override)
    batch_size: int = 64             # suggested training batch
    # RWKV-6 time mix
    head_size: int = 32              # K = V per head; n_head = d_model / head_size
    mix_lora: int = 32               # rank of the ddlerp (time_maa) low-rank projections
    decay_lora: int = 64             # rank of the data-dependent decay projection
    # Mamba-2 mixer (mamba-ssm Mamba2 parameterisation)
    d_state: int = 32
    headdim: int = 32
    expand: int = 2
    d_conv: int = 4
    ngroups: int = 1
    chunk_size: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    # feed-forward
    ffn_mult: float = 4.0
    ffn_act: str = "gelu"            # "gelu" or "relu2" (squared ReLU)
    # norms / residual
    norm: str = "rms"                # "rms" or "layer" (passed to ops.gate_norm_residual)
    norm_eps: float = 1e-5
    residual_fp32: bool = True
    tie_embeddings: bool = False
    # fusion
    gate_bias: float | None = None   # initial gate-logit bias (GF/HGF); MH/RH variants set ±gate_bias_mag
    gate_bias_mag: float = 1.5
    init_std: float = 0.02

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_size

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def mamba_nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def d_ffn(self) -> int:
        return int(self.ffn_mult * self.d_model)

    def validate(self) -> "ModelConfig":
        if self.d_model % self.head_size:
            raise ValueError(f"d_model {self.d_model} is not a multiple of head_size {self.head_size}")
        if self.head_size < 16:
            raise ValueError(f"head_size must be ≥ 16; got {self.head_size}")
        if self.d_inner % self.headdim:
            raise ValueError(f"d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.mamba_nheads % self.ngroups:
            raise ValueError(f"ngroups {self.ngroups} must divide the Mamba heads {self.mamba_nheads}")
        if self.d_conv < 2:
            raise ValueError(f"d_conv must be ≥ 2; got {self.d_conv}")
        if self.ffn_act not in ("gelu", "relu2"):
            raise ValueError(f"ffn_act must be gelu or relu2; got {self.ffn_act!r}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be rms or layer; got {self.norm!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, dict] = {
    # ~0.5M: CPU tests
    "tiny": dict(d_model=64, n_layer=5, seq_len=64, batch_size=16, head_size=32, mix_lora=8, decay_lora=16,
                 d_state=16, headdim=16, chunk_size=32),
    # ~3.1M: the peer benchmark's small (D128, 8 layers, T256)
    "small": dict(d_model=128, n_layer=8, seq_len=256, batch_size=64, head_size=32, mix_lora=32, decay_lora=64,
                  d_state=32, headdim=32, chunk_size=64),
    # ~8.5M
    "medium": dict(d_model=256, n_layer=6, seq_len=512, batch_size=32, head_size=64, mix_lora=32, decay_lora=64,
                   d_state=64, headdim=32, chunk_size=128),
    # ~42M: the peer benchmark's large (D512, 8 layers, T1024)
    "large": dict(d_model=512, n_layer=8, seq_len=1024, batch_size=16, head_size=64, mix_lora=32, decay_lora=64,
                  d_state=64, headdim=64, chunk_size=256),
    # ~120M
    "xl": dict(d_model=768, n_layer=10, seq_len=1024, batch_size=8, head_size=64, mix_lora=32, decay_lora=64,
               d_state=128, headdim=64, chunk_size=256),
}

# approximate parameter counts of variant HY at vocab 97 (tests check the real count within ±10%)
PARAMS_APPROX = {"tiny": 0.5e6, "small": 3.1e6, "medium": 8.5e6, "large": 42e6, "xl": 120e6}


def make_config(name: str, size: str = "small", vocab_size: int = 97, **overrides) -> ModelConfig:
    if size not in SIZES:
        raise KeyError(f"unknown size {size!r}; known: {list(SIZES)}")
    known = {f.name for f in fields(ModelConfig)}
    bad = set(overrides) - known
    if bad:
        raise TypeError(f"unknown config fields {sorted(bad)}; known: {sorted(known)}")
    cfg = replace(ModelConfig(), name=name, size=size, vocab_size=vocab_size, **SIZES[size])
    return replace(cfg, **overrides).validate()
