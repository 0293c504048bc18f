"""Declaration of the ``shift_lerp`` op (groundthink.spec format)."""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec


def make_inputs(B, T, D, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    out = {"x": torch.randn(B, T, D, generator=g, device=device).to(dtype)}
    out["mu"] = torch.rand(D, generator=g, device=device)
    return {k: v.requires_grad_(grad) for k, v in out.items()}

SPEC = OpSpec(
    name="shift_lerp",
    doc="RWKV-6 token-shift lerp: shift_lerp(x [B,T,D], mu [D], x_prev=None) -> x + (shift(x) − x) ⊙ mu",
    impls=(
        Impl("reference", "reference.shift_lerp:shift_lerp", role="reference", graph_safe=True),
        Impl("triton", "kernels.shift_lerp:shift_lerp", role="lab", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(64, 256, 128), (16, 1024, 512)], cpu_shapes=[(2, 8, 40)],
                shape_str=lambda B, T, D: f"B{B} T{T} D{D}", make_inputs=make_inputs,
                err_shape=lambda B, T, D: (min(B, 4), T, D),
                nbytes=lambda B, T, D, pass_, es=2: B * T * D * es * (2 if pass_ == "fwd" else 5),
                model_shape=lambda cfg, batch, seq_len: (batch, seq_len, cfg.d_model)),
    kernels=("*_shift_lerp*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.shift_lerp.shift_lerp:_shift_lerp", inputs=lambda t: dict(x=t(2, 5, 9), mu=t(9)),
                     op_args=lambda k: (k["x"], k["mu"], None)),),
)
