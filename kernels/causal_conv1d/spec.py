"""causal_conv1d: the Mamba-2 mixer's depthwise causal conv over time (+ SiLU), causal-conv1d's
``causal_conv1d_fn`` signature. The reference is ``F.conv1d`` on the left-padded input; the causal-conv1d CUDA
package is the peer, twice: as the package calls its kernels and as ``kernels/causal_conv1d/adapter.py`` does
(``causal_conv1d_cl``: one zero fill a backward instead of two, dx into a gradient slot).

Benchmarks: bf16, x as the mixer passes it (a [B, C, T] view of a [B, T, C] tensor), width 4, SiLU. Shapes
(B, T, C, W): the small model's (64, 256, 320, 4) and the large model's (16, 1024, 1280, 4) conv channels
(d_inner + 2·ngroups·d_state). Bytes: fwd reads x and writes y; bwd reads dy and x and writes dx.
"""
import torch

from groundthink.spec import Bench, Impl, OpSpec


def shape_str(B, T, C, W) -> str:
    return f"B{B} T{T} C{C} W{W}"


def make_inputs(B, T, C, W, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32)

    x = rn(B, T, C).to(dtype).transpose(1, 2).requires_grad_(grad)
    weight = (rn(C, W) * W ** -0.5).to(dtype).requires_grad_(grad)
    bias = (rn(C) * 0.1).to(dtype).requires_grad_(grad)
    return {"x": x, "weight": weight, "bias": bias, "activation": "silu"}


def nbytes(B, T, C, W, pass_, es=2) -> float:
    return B * T * C * es * (2 if pass_ == "fwd" else 5)


def model_shape(cfg, batch: int, seq_len: int):
    return (batch, seq_len, cfg.d_inner + 2 * cfg.ngroups * cfg.d_state, cfg.d_conv)


SPEC = OpSpec(
    name="causal_conv1d",
    doc="(x [b, c, t], weight [c, w], bias [c] or None, activation None | 'silu') -> y [b, c, t]",
    impls=(
        Impl("reference", "reference.causal_conv1d:causal_conv1d", role="reference", graph_safe=True),
        # the package's kernels with one zero fill for dweight and dbias and dx into a gradient slot (first: the
        # peer ``--kernels triton`` takes, the gate times both)
        Impl("causal_conv1d_cl", "kernels.causal_conv1d.adapter:causal_conv1d", role="peer", needs="cuda",
             priority=1, graph_safe=True),
        Impl("causal_conv1d", "causal_conv1d:causal_conv1d_fn", role="peer", needs="cuda", priority=1, graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(64, 256, 320, 4), (16, 1024, 1280, 4)], cpu_shapes=[(2, 19, 12, 4)],
                shape_str=shape_str, make_inputs=make_inputs,
                err_shape=lambda B, T, C, W: (min(B, 2), min(T, 512), C, W), nbytes=nbytes,
                model_shape=model_shape),
    kernels=("*causal_conv1d*",),
)
