"""Declaration of the ``wgrad`` op (groundthink.spec format).

Shape tuple (R, M, N, G): a [R, M], b [R, N] → C = aᵀ b [M, N] (G = 0: 2-D, the projections' calls; G ≥ 1: a batch
of G products [G, R, ·] → [G, M, N], lowrank's dW2). Every call writes into ``out`` (the step's calls do: a row
block of a projection's dW buffer); ``make_inputs`` makes it NaN-filled, so an unwritten element fails the check.
The op has no backward: its inputs never require a gradient (``grad`` is ignored) and only the forward is timed."""
import torch

from groundthink.spec import Bench, Impl, OpSpec


def make_inputs(R, M, N, G, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    lead = (G,) if G else ()
    return {"a": torch.randn(*lead, R, M, generator=g, device=device).to(dtype),
            "b": torch.randn(*lead, R, N, generator=g, device=device).to(dtype),
            "out": torch.full((*lead, M, N), float("nan"), dtype=dtype, device=device)}


def _shape_str(R, M, N, G):
    return f"R{R} M{M} N{N}" + (f" G{G}" if G else "")


def _nbytes(R, M, N, G, pass_, es=2):
    """a and b read once, C written once."""
    return es * max(G, 1) * (R * (M + N) + M * N)


def _flops(R, M, N, G, pass_):
    return 2 * max(G, 1) * R * M * N


def _dw_shapes(D, d_inner, conv_dim, d_ffn, nheads, mix_lora=32, decay_lora=64):
    """(M, N) of the projections' dW = dYᵀ X of one layer (fused/projections.py): r, k, v, g (D, D); in_proj's z
    and xBC pieces (d_inner, D), (conv_dim, D); the plain Linear layers' shapes (out_proj (D, d_inner), the FFN
    (d_ffn, D), (D, d_ffn): bench rows, their dW is autograd's since run 19); the narrow group of in_proj (dt, a folded gate, the pad: a multiple of 8 below 64 wide) — then
    lowrank's dW1 / dW2 (called by kernels/lowrank directly: benchmark rows only)."""
    del nheads
    proj = [(D, D), (d_inner, D), (conv_dim, D), (D, d_inner), (d_ffn, D), (D, d_ffn)]
    return proj, [(w, D) for w in range(8, 64, 8)], [(D, 5 * mix_lora, 0), (mix_lora, D, 5), (D, decay_lora, 0),
                                                    (decay_lora, D, 0)]


def _cfg_shapes(cfg):
    conv_dim = cfg.d_inner + 2 * cfg.ngroups * cfg.d_state
    return _dw_shapes(cfg.d_model, cfg.d_inner, conv_dim, cfg.d_ffn, cfg.mamba_nheads, cfg.mix_lora, cfg.decay_lora)


def model_shape(cfg, batch: int, seq_len: int) -> list[tuple]:
    """The step's wgrad calls, one per distinct (M, N): the projections, the embedding's one-hot GEMM (vocab × D;
    lowrank calls the kernel itself) and the r/k/v/g dW of fused.projections.stacked_proj as one batch of four
    (its default backward; per slice, (D, D), with ``GROUNDTHINK_STACKED_BMM=0``)."""
    proj, narrow, _ = _cfg_shapes(cfg)
    R = batch * seq_len
    return [(R, M, N, 0) for M, N in dict.fromkeys(proj + narrow + [(cfg.vocab_size, cfg.d_model)])] + \
        [(R, cfg.d_model, cfg.d_model, 4)]


def bench_shapes() -> list[tuple]:
    """The models' dW shapes at R = 16,384 tokens: small (D128: d_inner 256, xBC 320, FFN 512) and large (D512:
    d_inner 1024, xBC 1152, FFN 2048), one narrow in_proj group each, the embedding (vocabulary 97), lowrank's
    dW1 / dW2 and the stacked r/k/v/g dW (a batch of four D × D)."""
    out = []
    for D, di, cd, df in ((128, 256, 320, 512), (512, 1024, 1152, 2048)):
        proj, narrow, lr = _dw_shapes(D, di, cd, df, 0)
        out += [(16384, M, N, 0) for M, N in dict.fromkeys(proj + narrow[1:2] + [(97, D)])] + \
            [(16384, *s) for s in lr] + [(16384, D, D, 4)]
    return out


SPEC = OpSpec(
    name="wgrad",
    doc="weight-gradient GEMM: wgrad(a [R, M], b [R, N], out=None) -> aᵀ b [M, N] (batched [G, R, ·] -> [G, M, N]), "
        "reduced over the R rows in one launch, written into out when given",
    impls=(
        Impl("reference", "reference.wgrad:wgrad", role="reference", graph_safe=True),
        Impl("triton", "kernels.wgrad:wgrad", role="lab", graph_safe=True),
    ),
    bench=Bench(shapes=bench_shapes,
                cpu_shapes=[(70, 24, 40, 0), (45, 16, 33, 3)],
                shape_str=_shape_str, make_inputs=make_inputs,
                err_shape=lambda R, M, N, G: (min(R, 4096), M, N, G),
                nbytes=_nbytes, flops=_flops, passes=("fwd",), model_shape=model_shape),
    kernels=("_wgrad_kernel",),
    kernels_group="wgrad GEMMs",
)
