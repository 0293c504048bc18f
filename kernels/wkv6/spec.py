"""wkv6: the RWKV-6 recurrence. Lab candidates in preference order: the tensor-core chunk kernel
(``kernels/wkv6/chunk.py``, the public ``kernels.wkv6.wkv6``) and the sequential fused-chunk kernel (``fused.py``); both are CUDA-graph safe without
``cu_seqlens`` (with it, one small device-to-host copy checks the offsets). fla's chunk and fused-recurrent
kernels are the peers. Order by the H100 timings of run 4 (profiles/nvidia-h100-80gb-hbm3/run4-2026-11-27/
wkv6_chunk16_call{1,2}_*.log; bf16, do_bench ms fwd+bwd, each comparison within one call): chunk first
(B8 T4096 H32 10.4 vs fused 12.7; B4 T2048 H16 1.66 vs parallel 2.07, fused 3.75; B1 T16384 H32 7.6 vs 9.5,
29.9; large model B16 T1024 H8 1.83 vs fused 2.65; small model B64 T256 H4 K32 1.33 vs fused 1.30, a tie, fwd
0.17 vs 0.30), fused second (B64 T256 H2: 1.03 vs chunk 1.37). The chunk-parallel kernel with exact per-key loops
(``parallel.py``) is retired: its one win (B64 T256 H2 in the other call: 1.40 vs chunk 1.62, fused 1.61) is within
the host-bound shapes' ±50 % between calls, and the chunk algorithm has its structure. Run 4's benchmark (bench.csv):
chunk 1.93 / 9.48 ms at B8 T4096 H32, 1.375 ms fwd+bwd at the large model's shape, 1.22 at the small one's.

Benchmarks: bf16 inputs; shapes (B, T, H, K=V): B8 T4096 H32 64, B4 T2048 H16 64, B64 T256 H2 64,
B1 T16384 H32 64, and the models' own (small: B64 T256 H4 32; large: B16 T1024 H8 64). Errors vs float64 on the
shape sliced to B ≤ 2, T ≤ 512. Bytes (minimal I/O): fwd reads r, k, w, v and writes o (B·T·H·(3K+2V)
elements), fwd+bwd adds reading r, k, w, v, do and writing dr, dk, dw, dv (9K+5V in all); TFLOP/s are nominal:
4·B·T·H·K·V for the forward (r·S and the k⊗v state update), 3× that for fwd+bwd.
"""
import torch
import torch.nn.functional as F

from groundthink.spec import Bench, Impl, OpSpec


def shape_str(B, T, H, K, V) -> str:
    return f"B{B} T{T} H{H} K{K} V{V}"


def make_inputs(B, T, H, K, V, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32)

    r, k, v = rn(B, T, H, K), rn(B, T, H, K), rn(B, T, H, V)
    w = F.logsigmoid(rn(B, T, H, K))           # log-decay ≤ 0, typical range (-3, 0)
    u = rn(H, K) * 0.5
    out = {name: t.to(dtype).requires_grad_(grad) for name, t in dict(r=r, k=k, v=v, w=w, u=u).items()}
    out["scale"] = K ** -0.5
    return out


def nbytes(B, T, H, K, V, pass_, es=2) -> float:
    return B * T * H * ((3 * K + 2 * V) if pass_ == "fwd" else (9 * K + 5 * V)) * es


def flops(B, T, H, K, V, pass_) -> float:
    return 4.0 * B * T * H * K * V * (1 if pass_ == "fwd" else 3)


def model_shape(cfg, batch: int, seq_len: int):
    return (batch, seq_len, cfg.n_head, cfg.head_size, cfg.head_size)


SPEC = OpSpec(
    name="wkv6",
    doc="(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None) "
        "-> (o, final_state)",
    impls=(
        Impl("reference", "reference.wkv6:wkv6_chunked", role="reference", graph_safe=True),
        Impl("triton", "kernels.wkv6.chunk:wkv6_chunk", role="lab", graph_safe=True),
        Impl("triton_fused", "kernels.wkv6.fused:wkv6_fused", role="lab", graph_safe=True),
        Impl("fla_chunk", "fla.ops.rwkv6:chunk_rwkv6", role="peer", needs="cuda", graph_safe=True),
        Impl("fla_recurrent", "fla.ops.rwkv6:fused_recurrent_rwkv6", role="peer", needs="cuda", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(8, 4096, 32, 64, 64), (4, 2048, 16, 64, 64), (64, 256, 2, 64, 64),
                                (1, 16384, 32, 64, 64), (64, 256, 4, 32, 32), (16, 1024, 8, 64, 64)],
                cpu_shapes=[(1, 40, 2, 16, 16)], shape_str=shape_str, make_inputs=make_inputs,
                err_shape=lambda B, T, H, K, V: (min(B, 2), min(T, 512), H, K, V),
                nbytes=nbytes, flops=flops, model_shape=model_shape),
    # the step's GPU time by op: the chunk kernels' generic names exactly, the fused ones by their prefix
    kernels=("_bwd_own_kernel", "_bwd_cross_kernel", "_bwd_fused_kernel",
             "_chunk_scan_kernel", "_chunk_state_kernel", "_fwd_par_kernel", "_fwd_walk",
             "_fwd_scores_kernel", "_fwd_states_kernel", "_bwd_states_kernel",
             "*_wkv6_*"),
)
