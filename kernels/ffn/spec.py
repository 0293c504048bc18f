"""Declaration of the ``ffn`` op (groundthink.spec format).

Shape tuple (M, D, F): M rows of x [M, D], hidden width F (the models: 4D); GELU (the models' ffn_act default;
a relu2 call is the variant act='relu2')."""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec


def make_inputs(M, D, F, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    out = {"x": torch.randn(M, D, generator=g, device=device).to(dtype),
           "w_up": (torch.randn(F, D, generator=g, device=device) / D ** 0.5).to(dtype),
           "w_down": (torch.randn(D, F, generator=g, device=device) / F ** 0.5).to(dtype)}
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _nbytes(M, D, F, pass_, es=2):
    """Forward: x in, h and a out (the backward's), y out; backward + dy in, h and a in again, dH out and in, dx out
    (the weights are small)."""
    fwd = M * (2 * D + 2 * F)
    return es * (fwd if pass_ == "fwd" else fwd + M * (2 * D + 4 * F))


def _flops(M, D, F, pass_):
    """Two GEMMs forward, four backward."""
    return 2 * M * D * F * (2 if pass_ == "fwd" else 6)


SPEC = OpSpec(
    name="ffn",
    doc="The model's MLP: ffn(x [..., D], w_up [F, D], w_down [D, F], act='gelu'|'relu2') -> act(x w_upᵀ) w_downᵀ",
    impls=(
        Impl("reference", "reference.ffn:ffn", role="reference", graph_safe=True),
        Impl("triton", "kernels.ffn:ffn", role="lab", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(16384, 128, 512), (16384, 512, 2048)],
                cpu_shapes=[(37, 40, 72)],
                shape_str=lambda M, D, F: f"M{M} D{D} F{F}", make_inputs=make_inputs,
                err_shape=lambda M, D, F: (min(M, 4096), D, F),
                nbytes=_nbytes, flops=_flops,
                model_shape=lambda cfg, batch, seq_len: (batch * seq_len, cfg.d_model, cfg.d_ffn)),
    kernels=("*_ffn_*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.ffn.ffn:_ffn", inputs=lambda t: dict(x=t(6, 16), w_up=t(24, 16), w_down=t(16, 24)),
                     op_args=lambda k: (k["x"], k["w_up"], k["w_down"], "gelu")),),
)
