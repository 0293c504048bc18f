"""Declaration of the ``cross_entropy`` op (groundthink.spec format; not imported until the spec module is merged)."""
from groundthink.spec import Impl, OpSpec

SPEC = OpSpec(
    name="cross_entropy",
    doc="mean token cross-entropy, loss and dlogits in one pass: cross_entropy(logits [N,V], targets [N], "
        "ignore_index=-100) -> fp32 scalar",
    impls=(
        Impl("reference", "reference.cross_entropy:cross_entropy", role="reference"),
        Impl("triton", "kernels.cross_entropy:cross_entropy", role="lab", graph_safe=True),
    ),
)
