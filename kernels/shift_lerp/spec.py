"""Declaration of the ``shift_lerp`` op (groundthink.spec format; not imported until the spec module is merged)."""
from groundthink.spec import Impl, OpSpec

SPEC = OpSpec(
    name="shift_lerp",
    doc="RWKV-6 token-shift lerp: shift_lerp(x [B,T,D], mu [D], x_prev=None) -> x + (shift(x) − x) ⊙ mu",
    impls=(
        Impl("reference", "reference.shift_lerp:shift_lerp", role="reference", graph_safe=True),
        Impl("triton", "kernels.shift_lerp:shift_lerp", role="lab", graph_safe=True),
    ),
)
