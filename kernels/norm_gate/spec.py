"""Declaration of the ``norm_gate`` op (groundthink.spec format)."""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec


def make_inputs(N, G, S, norm, before, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    """N rows of G groups of S channels; norm "layer" (with bias) or "rms"; ``before``: norm then gate."""
    g = torch.Generator(device=device).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float32)  # noqa: E731
    D = G * S
    out = {"x": rn(N, D).to(dtype), "z": (2 * rn(N, D)).to(dtype), "weight": 1 + 0.1 * rn(D),
           "bias": 0.1 * rn(D) if norm == "layer" else None}
    out = {k: None if v is None else v.requires_grad_(grad) for k, v in out.items()}
    out.update(group_size=S, eps=64e-5 if norm == "layer" else 1e-5, norm=norm, norm_before_gate=before)
    return out


def shape_str(N, G, S, norm, before) -> str:
    return f"N{N} G{G} S{S} {norm}" + (" norm-then-gate" if before else " gate-then-norm")

def model_shape(cfg, batch: int, seq_len: int) -> list[tuple]:
    """The model's two calls: the RWKV-6 output side (per-head GroupNorm with bias, then the gate) and the Mamba-2
    side (gated RMSNorm without bias per group of d_inner / ngroups channels, gate first)."""
    n = batch * seq_len
    return [(n, cfg.n_head, cfg.head_size, "layer", True),
            (n, cfg.ngroups, cfg.d_inner // cfg.ngroups, "rms", False)]


SPEC = OpSpec(
    name="norm_gate",
    doc="per-group LayerNorm/RMSNorm and SiLU gate: norm_gate(x, z, weight, bias=None, *, group_size, eps, norm, "
        "norm_before_gate) -> (norm_g(x)·W + b) ⊙ silu(z) or norm_g(x ⊙ silu(z))·W + b",
    impls=(
        Impl("reference", "reference.norm_gate:norm_gate", role="reference", graph_safe=True),
        Impl("triton", "kernels.norm_gate:norm_gate", role="lab", graph_safe=True),
        Impl("mamba_ssm", "kernels.norm_gate.peer:mamba_ssm_norm_gate", role="peer", needs="cuda",
             package="mamba_ssm", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(16384, 4, 32, "layer", True), (16384, 8, 64, "layer", True),
                                (16384, 1, 256, "rms", False), (16384, 1, 1024, "rms", False)],
                cpu_shapes=[(16, 2, 16, "layer", True), (16, 1, 32, "rms", False)], shape_str=shape_str,
                make_inputs=make_inputs, err_shape=lambda N, *rest: (min(N, 4096), *rest),
                nbytes=lambda N, G, S, norm, before, pass_, es=2: N * G * S * es * (3 if pass_ == "fwd" else 8),
                model_shape=model_shape),
    kernels=("*_norm_gate*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.norm_gate.norm_gate:_norm_gate", call=dict(group_size=3),
                     inputs=lambda t: dict(x=t(5, 9), z=t(5, 9), weight=t(9), bias=t(9)),
                     op_args=lambda k: (k["x"], k["z"], k["weight"], k["bias"], 3, 1e-5, "layer", True)),),
)
