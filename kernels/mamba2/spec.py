"""mamba2: the chunked SSD scan. The lab's Triton kernel (``kernels/mamba2/ssd.py``: one walk kernel forward, a
walk kernel and a reduction kernel backward, custom ops ``groundthink::mamba2_fwd`` / ``_bwd``) is the lab candidate;
mamba-ssm's Triton ``mamba_chunk_scan_combined`` (5 kernels forward, ~13 Triton kernels and ~24 torch launches
backward) the peer the gate may prefer when it is faster; the PyTorch SSD (reference/mamba2.py) the oracle.

Benchmarks: bf16 x/dt/B/C with fp32 A, D, dt_bias (as mamba-ssm's ``Mamba2`` calls it: ``dt_softplus=True``).
Shapes (B, T, H, P, G, N, chunk): the small model's (64, 256, 8, 32, 1, 32, 64), the large model's
(16, 1024, 16, 64, 1, 64, 256), and a long one (8, 4096, 32, 64, 1, 128, 256). Errors vs float64 at B ≤ 2,
T ≤ 512.

Bytes (minimal I/O): fwd reads x, dt, B, C and writes y; bwd reads dy, x, dt, B, C and writes dx, ddt, dB, dC.
TFLOP/s are *nominal*: fwd B·T·(2·G·Q·N + H·(2·Q·P + 4·N·P)) with Q the chunk (C·Bᵀ per group, its product
with x, state in and out), 3× for fwd+bwd.
"""
import math

import torch

from groundthink.spec import Bench, Impl, OpSpec


def shape_str(B, T, H, P, G, N, Q) -> str:
    return f"B{B} T{T} H{H} P{P} G{G} N{N} Q{Q}"


def make_inputs(B, T, H, P, G, N, Q, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32)

    def ur(lo, hi, *s):
        return torch.rand(*s, generator=g, device=device, dtype=torch.float32) * (hi - lo) + lo

    x, dt = rn(B, T, H, P), rn(B, T, H) * 0.1
    Bm, Cm = rn(B, T, G, N), rn(B, T, G, N)
    A = -torch.exp(ur(math.log(1.0), math.log(16.0), H))            # Mamba2's A_init_range (1, 16)
    dt0 = torch.exp(ur(math.log(1e-3), math.log(1e-1), H))           # dt_min..dt_max
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))                    # inverse softplus
    D = torch.ones(H, device=device)
    out = {"x": x.to(dtype), "dt": dt.to(dtype), "A": A, "B": Bm.to(dtype), "C": Cm.to(dtype), "D": D,
           "dt_bias": dt_bias}
    out = {k: v.requires_grad_(grad) for k, v in out.items()}
    out.update(chunk_size=Q, dt_softplus=True)
    return out


def nbytes(B, T, H, P, G, N, Q, pass_, es=2) -> float:
    io = B * T * (H * P + H + 2 * G * N) * es          # x, dt, B, C
    fwd = io + B * T * H * P * es                      # + y
    if pass_ == "fwd":
        return fwd
    return fwd + io + B * T * H * P * es + io          # reads dy + inputs, writes their grads


def flops(B, T, H, P, G, N, Q, pass_) -> float:
    f = B * T * (2 * G * Q * N + H * (2 * Q * P + 4 * N * P))
    return f * (1 if pass_ == "fwd" else 3)


def model_shape(cfg, batch: int, seq_len: int):
    return (batch, seq_len, cfg.mamba_nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.chunk_size)


SPEC = OpSpec(
    name="mamba2",
    doc="chunked SSD scan, mamba-ssm's mamba_chunk_scan_combined signature: (x, dt, A, B, C, chunk_size, D=None, "
        "dt_bias=None, dt_softplus=False, initial_states=None, return_final_states=False) -> y or (y, final)",
    impls=(
        Impl("reference", "reference.mamba2:mamba_chunk_scan", role="reference", graph_safe=True),
        Impl("triton", "kernels.mamba2:mamba_chunk_scan_combined", role="lab", graph_safe=True),
        Impl("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined:mamba_chunk_scan_combined", role="peer",
             needs="cuda", priority=1, graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(64, 256, 8, 32, 1, 32, 64), (16, 1024, 16, 64, 1, 64, 256),
                                (8, 4096, 32, 64, 1, 128, 256)],
                cpu_shapes=[(1, 40, 2, 8, 1, 8, 16)], shape_str=shape_str, make_inputs=make_inputs,
                err_shape=lambda B, T, *rest: (min(B, 2), min(T, 512), *rest),
                nbytes=nbytes, flops=flops, model_shape=model_shape),
    # the lab's kernels (``_ssd_fwd_kernel``, ``_ssd_bwd_kernel``, ``_ssd_reduce_kernel``) and mamba-ssm's
    kernels=("*_ssd_*", "*_chunk_cumsum*", "*_chunk_state_*", "*_state_passing*", "*_bmm_chunk*", "*_chunk_scan_*"),
)
