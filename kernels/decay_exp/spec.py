"""Declaration of the ``decay_exp`` op (groundthink.spec format)."""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec


def make_inputs(N, D, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    base = -6 + 5 * torch.rand(D, generator=g, device=device)
    d = torch.randn(N, D, generator=g, device=device).to(dtype)
    return {"base": base.requires_grad_(grad), "d": d.requires_grad_(grad)}

SPEC = OpSpec(
    name="decay_exp",
    doc="RWKV-6 log-decay: decay_exp(base [D], d [..., D], dtype=None) -> −exp(base + d) (fp32 math) in dtype",
    impls=(
        Impl("reference", "reference.decay_exp:decay_exp", role="reference", graph_safe=True),
        Impl("triton", "kernels.decay_exp:decay_exp", role="lab", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(16384, 128), (16384, 512)], cpu_shapes=[(16, 40)],
                shape_str=lambda N, D: f"N{N} D{D}", make_inputs=make_inputs,
                err_shape=lambda N, D: (min(N, 4096), D),
                nbytes=lambda N, D, pass_, es=2: N * D * es * (2 if pass_ == "fwd" else 5),
                model_shape=lambda cfg, batch, seq_len: (batch * seq_len, cfg.d_model)),
    kernels=("*_decay_exp*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.decay_exp.decay_exp:_decay_exp", inputs=lambda t: dict(base=t(9), d=t(2, 3, 9)),
                     op_args=lambda k: (k["base"], k["d"], torch.float32)),),
)
