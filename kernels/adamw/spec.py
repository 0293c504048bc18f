"""Declaration of the ``adamw`` op (groundthink.spec format).

Shape tuple (N, P, G): N elements of the flat buffers, P parameters, G param groups. ``make_inputs`` cuts the N
elements into P parameters of whole 64-element chunks (no gaps: every element is a parameter's), in groups
i mod G (even groups with weight decay 0.1, odd ones without, as the training step's decay / no-decay groups), a
gradient norm of 2.5 (the clip at max_norm 1 is active), steps 1-1000. The op has no backward: only its one
in-place call is timed ("fwd"); repeated calls keep updating the same buffers (bounded: an AdamW step moves a
parameter by ≤ lr). Bytes: 16 read and 12 written per element (fp32 param, grad, m, v)."""
import torch

from groundthink.spec import Bench, Impl, OpSpec


def make_inputs(N, P, G, grad: bool = False, dtype=torch.float32, seed: int = 0, device="cpu") -> dict:
    del grad, dtype                       # an optimizer: no gradient, fp32 master buffers whatever the bench dtype
    g = torch.Generator(device=device).manual_seed(seed)
    chunks = -(-N // 64)
    if P > chunks:
        raise ValueError(f"adamw inputs: {P} parameters need at least {P} chunks of 64 elements; N = {N}")
    owner = torch.arange(chunks, device=device) * P // chunks                 # P runs of whole chunks
    f32 = dict(dtype=torch.float32, device=device)
    return {"param": 0.02 * torch.randn(N, generator=g, **f32), "grad": 0.01 * torch.randn(N, generator=g, **f32),
            "exp_avg": 1e-3 * torch.randn(N, generator=g, **f32),
            "exp_avg_sq": 1e-5 * torch.rand(N, generator=g, **f32),
            "step": torch.randint(1, 1000, (P,), generator=g, device=device).float(),
            "chunk_param": owner.to(torch.int32), "group": (torch.arange(P, device=device) % G).to(torch.int32),
            "lr": 1e-3 * (1 + torch.arange(G, **f32)), "weight_decay": 0.1 * (torch.arange(G, **f32) % 2 == 0),
            "total_norm": torch.tensor(2.5, **f32), "found_inf": torch.zeros((), **f32),
            "max_norm": 1.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8}


def model_shape(cfg, batch: int, seq_len: int) -> tuple:
    """(N, P, G) of the training step's flat buffers for a model of config ``cfg`` (built on the meta device)."""
    del batch, seq_len
    from fused.model import HybridLM
    from groundthink.step import adamw_shape, group_params
    with torch.device("meta"):
        model = HybridLM(cfg)
    return adamw_shape(group_params(model))


def bench_shapes() -> list[tuple]:
    """The GF-MH small and large models' (N, P, G) (vocabulary 97)."""
    from fused import get_model
    from groundthink.step import adamw_shape, group_params
    out = []
    for size in ("small", "large"):
        with torch.device("meta"):
            model = get_model("GF-MH", size)
        out.append(adamw_shape(group_params(model)))
    return out


SPEC = OpSpec(
    name="adamw",
    doc="the training step's optimizer update: adamw(param, grad, exp_avg, exp_avg_sq [N] fp32, step [P], "
        "chunk_param [N/64] int32, group [P] int32, lr, weight_decay [G], total_norm, found_inf, max_norm, beta1, "
        "beta2, eps) -> (param, exp_avg, exp_avg_sq) updated in place (clip and skip inside)",
    impls=(
        Impl("reference", "reference.adamw:adamw", role="reference", graph_safe=True),
        Impl("triton", "kernels.adamw:adamw", role="lab", graph_safe=True),
        Impl("torch_fused", "kernels.adamw.peer:adamw", role="peer", needs="cuda", graph_safe=True,
             package="torch"),
    ),
    bench=Bench(shapes=bench_shapes, cpu_shapes=[(1000, 5, 3), (4096, 9, 2)],
                shape_str=lambda N, P, G: f"N{N} P{P} G{G}", make_inputs=make_inputs,
                err_shape=lambda N, P, G: (min(N, 1 << 18), min(P, (1 << 18) // 64), G),
                nbytes=lambda N, P, G, pass_: 28 * N, passes=("fwd",), dtype=torch.float32,
                model_shape=model_shape),
    kernels=("_adamw_kernel",),
    kernels_group="AdamW + norms",
)
