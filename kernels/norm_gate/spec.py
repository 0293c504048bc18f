"""Declaration of the ``norm_gate`` op (groundthink.spec format; not imported until the spec module is merged)."""
from groundthink.spec import Impl, OpSpec

SPEC = OpSpec(
    name="norm_gate",
    doc="per-group LayerNorm/RMSNorm and SiLU gate: norm_gate(x, z, weight, bias=None, *, group_size, eps, norm, "
        "norm_before_gate) -> (norm_g(x)·W + b) ⊙ silu(z) or norm_g(x ⊙ silu(z))·W + b",
    impls=(
        Impl("reference", "reference.norm_gate:norm_gate", role="reference", graph_safe=True),
        Impl("triton", "kernels.norm_gate:norm_gate", role="lab", graph_safe=True),
        Impl("mamba_ssm", "kernels.norm_gate.peer:mamba_ssm_norm_gate", role="peer", needs="cuda"),
    ),
)
