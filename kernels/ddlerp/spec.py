"""Declaration of the ``ddlerp`` op (groundthink.spec format)."""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec


def make_inputs(B, T, D, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    out = {"x": torch.randn(B, T, D, generator=g, device=device).to(dtype),
           "m": (0.1 * torch.randn(5, B, T, D, generator=g, device=device)).to(dtype),
           "maa": torch.rand(5, D, generator=g, device=device)}
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _eager_inputs(t) -> dict:
    return dict(x=t(1, 5, 5), m=t(5, 1, 5, 5), maa=t(5, 5))


SPEC = OpSpec(
    name="ddlerp",
    doc="RWKV-6 five data-dependent lerps: ddlerp(x [B,T,D], m [5,B,T,D], maa [5,D], x_prev=None) -> "
        "5 × (x + (shift(x) − x) ⊙ (maa_i + m_i))",
    impls=(
        Impl("reference", "reference.ddlerp:ddlerp", role="reference", graph_safe=True),
        Impl("triton", "kernels.ddlerp:ddlerp", role="lab", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(64, 256, 128), (16, 1024, 512)], cpu_shapes=[(2, 8, 40)],
                shape_str=lambda B, T, D: f"B{B} T{T} D{D}", make_inputs=make_inputs,
                err_shape=lambda B, T, D: (min(B, 4), T, D),
                nbytes=lambda B, T, D, pass_, es=2: B * T * D * es * (11 if pass_ == "fwd" else 28),
                model_shape=lambda cfg, batch, seq_len: (batch, seq_len, cfg.d_model)),
    kernels=("*_ddlerp*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.ddlerp.ddlerp:_ddlerp", inputs=_eager_inputs,
                     op_args=lambda k: (k["x"], k["m"], k["maa"], None)),
           EagerCase("kernels.ddlerp.ddlerp:_ddlerp_grouped", inputs=_eager_inputs, name="ddlerp_grouped",
                     op_args=lambda k: (k["x"], k["m"], k["maa"], None, [2, 0, 1, 3, 4]),
                     call=dict(order=(2, 0, 1, 3, 4)))),
)
