"""Declaration of the ``decay_exp`` op (groundthink.spec format; not imported until the spec module is merged)."""
from groundthink.spec import Impl, OpSpec

SPEC = OpSpec(
    name="decay_exp",
    doc="RWKV-6 log-decay: decay_exp(base [D], d [..., D], dtype=None) -> −exp(base + d) (fp32 math) in dtype",
    impls=(
        Impl("reference", "reference.decay_exp:decay_exp", role="reference", graph_safe=True),
        Impl("triton", "kernels.decay_exp:decay_exp", role="lab", graph_safe=True),
    ),
)
