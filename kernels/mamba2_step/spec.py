"""mamba2_step: one step of the Mamba-2 recurrence from a carried state (generation). Reference only so far (a
few small tensor ops per token); its benchmark times the decode step of the models' shapes, forward only, as the
baseline a lab kernel (or mamba-ssm's ``selective_state_update`` as a peer) would have to beat.

Shapes (b, h, p, g, n): the small model's (B64, 8 heads × 32, d_state 32) and the large one's (B16, 16 × 64,
d_state 64). Bytes: the state is read and written once (fp32), x, y once."""
import torch

from groundthink.spec import Bench, Impl, OpSpec


def make_inputs(b, h, p, g, n, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device=device)  # noqa: E731
    return {"state": r(b, h, p, n), "x": r(b, h, p).to(dtype), "dt": r(b, h).to(dtype),
            "A": -(torch.rand(h, generator=gen, device=device) * 2 + 0.05), "B": r(b, g, n).to(dtype),
            "C": r(b, g, n).to(dtype), "D": r(h), "dt_bias": r(h), "dt_softplus": True}


SPEC = OpSpec(
    name="mamba2_step",
    doc="(state [b,h,p,n], x [b,h,p], dt [b,h], A [h], B, C [b,g,n], D=None, z=None, dt_bias=None, "
        "dt_softplus=False) -> (y [b,h,p], new_state)",
    impls=(Impl("reference", "reference.mamba2_step:mamba2_step", role="reference", graph_safe=True),),
    bench=Bench(shapes=lambda: [(64, 8, 32, 1, 32), (16, 16, 64, 1, 64)], cpu_shapes=[(2, 2, 4, 1, 4)],
                shape_str=lambda b, h, p, g, n: f"B{b} H{h} P{p} G{g} N{n}", make_inputs=make_inputs,
                nbytes=lambda b, h, p, g, n, pass_, es=2: b * h * p * (8 * n + 2 * es), passes=("fwd",)),
)
