"""Declaration of the ``ddlerp`` op (groundthink.spec format; not imported until the spec module is merged)."""
from groundthink.spec import Impl, OpSpec

SPEC = OpSpec(
    name="ddlerp",
    doc="RWKV-6 five data-dependent lerps: ddlerp(x [B,T,D], m [5,B,T,D], maa [5,D], x_prev=None) -> "
        "5 × (x + (shift(x) − x) ⊙ (maa_i + m_i))",
    impls=(
        Impl("reference", "reference.ddlerp:ddlerp", role="reference", graph_safe=True),
        Impl("triton", "kernels.ddlerp:ddlerp", role="lab", graph_safe=True),
    ),
)
