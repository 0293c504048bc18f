"""mamba2_step: one step of the Mamba-2 recurrence from a carried state (generation). Reference only: a few
small tensor ops per token; no benchmark."""
from groundthink.spec import Impl, OpSpec

SPEC = OpSpec(
    name="mamba2_step",
    doc="(state [b,h,p,n], x [b,h,p], dt [b,h], A [h], B, C [b,g,n], D=None, z=None, dt_bias=None, "
        "dt_softplus=False) -> (y [b,h,p], new_state)",
    impls=(Impl("reference", "reference.mamba2:mamba_recurrent_step", role="reference", graph_safe=True),),
)
