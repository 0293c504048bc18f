"""Declaration of the ``lowrank`` op (groundthink.spec format).

Shape tuple (M, D, G, R, N, E): M rows of x [M, D]; G groups of rank R (G = 0: a 2-D w2 [R, N], one group
without the group dimension); E = 1: with base [N] (−exp(base + ·), the decay; needs G = 0)."""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec


def make_inputs(M, D, G, R, N, E, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    groups = max(G, 1)
    out = {"x": torch.randn(M, D, generator=g, device=device).to(dtype),
           "w1": (torch.randn(D, groups * R, generator=g, device=device) / D ** 0.5).to(dtype),
           "w2": (torch.randn(*((G,) if G else ()), R, N, generator=g, device=device) / R ** 0.5).to(dtype)}
    if E:
        out["base"] = -6 + 5 * torch.rand(N, generator=g, device=device)      # the model's time_decay range
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _shape_str(M, D, G, R, N, E):
    return f"M{M} D{D} " + (f"G{G} R{R}" if G else f"R{R}") + (f" N{N}" if N != D else "") + (" exp" if E else "")


def _nbytes(M, D, G, R, N, E, pass_, es=2):
    """x in, y out (forward); + dy in, dx out (backward); the weights and the [M, G·R] codes are small."""
    io = M * D + max(G, 1) * M * N
    return es * (io if pass_ == "fwd" else 2 * io)


def _flops(M, D, G, R, N, E, pass_):
    """Forward x W1 and h W2; the backward recomputes x W1 (and h W2 with base), then dh, dx, dW1, dW2."""
    per = 2 * M * max(G, 1) * R
    return per * (D + N) if pass_ == "fwd" else per * (4 * D + (4 if E else 3) * N)


SPEC = OpSpec(
    name="lowrank",
    doc="RWKV-6 low-rank terms: lowrank(x [..., D], w1 [D, G·R], w2 [G, R, N] or [R, N], base=None, dtype=None) "
        "-> tanh(x w1) w2 per group ([G, ..., N]); with base [N]: −exp(base + ·)",
    impls=(
        Impl("reference", "reference.lowrank:lowrank", role="reference", graph_safe=True),
        Impl("triton", "kernels.lowrank:lowrank", role="lab", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(16384, 128, 5, 32, 128, 0), (16384, 128, 0, 64, 128, 1),
                                (16384, 512, 5, 32, 512, 0), (16384, 512, 0, 64, 512, 1)],
                cpu_shapes=[(24, 40, 5, 8, 40, 0), (24, 40, 0, 16, 40, 1)],
                shape_str=_shape_str, make_inputs=make_inputs,
                err_shape=lambda M, D, G, R, N, E: (min(M, 4096), D, G, R, N, E),
                nbytes=_nbytes, flops=_flops,
                model_shape=lambda cfg, batch, seq_len: [
                    (batch * seq_len, cfg.d_model, 5, cfg.mix_lora, cfg.d_model, 0),
                    (batch * seq_len, cfg.d_model, 0, cfg.decay_lora, cfg.d_model, 1)]),
    kernels=("*_lowrank_*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.lowrank.lowrank:_lowrank",
                     inputs=lambda t: dict(x=t(6, 16), w1=t(16, 24), w2=t(3, 8, 16)),
                     op_args=lambda k: (k["x"], k["w1"], k["w2"], None, torch.float32)),
           EagerCase("kernels.lowrank.lowrank:_lowrank", name="lowrank_exp",
                     inputs=lambda t: dict(x=t(6, 16), w1=t(16, 8), w2=t(1, 8, 16), base=t(16)),
                     op_args=lambda k: (k["x"], k["w1"], k["w2"], k["base"], torch.float32))),
)
