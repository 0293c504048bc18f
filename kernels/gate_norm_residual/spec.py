"""gate_norm_residual: its implementations, benchmark grid, bytes model and model shape.

Benchmarks: bf16, RMSNorm, eps 1e-5, gates as logits (g = σ(gate)) for vector/row/element. Shapes: N32768 × D2048
for every blend mode (add, vector, row, element, weights), row mode at N32768 × D2048 with an fp32 residual
stream (``res32``: x and h fp32, as the model's ``residual_fp32=True``), and row mode at N16384 × D128 / D512 /
D768 / D4096 (D128 and D512 are the small and large models' rows). The quick grid times the peers at N32768
D2048 row and at the models' rows (N16384 D128 / D512 row) only: torch.compile compiles afresh per shape and
pass. Errors vs float64 at N ≤ 4096 rows of the same D.

Bytes (minimal I/O): fwd reads x, a, b, an element-wise gate and writes h, y; bwd reads dy, dh, h, a, b (and the
element gate) and writes dx, da, db (and dgate) — 5 + 8 passes over N·D for the gated modes in bf16. No
TFLOP/s: memory-bound.
"""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec

MODES = ("add", "vector", "row", "element", "weights")
QUICK_PEER_SHAPES = {(32768, 2048, "row", False), (16384, 128, "row", False), (16384, 512, "row", False)}


def shapes():
    return [(32768, 2048, m, False) for m in MODES] + [(32768, 2048, "row", True)] + \
           [(16384, d, "row", False) for d in (128, 512, 768, 4096)]


def shape_str(N, D, mode, res32) -> str:
    return f"N{N} D{D} {mode}" + (" res32" if res32 else "")


def make_inputs(N, D, mode, res32, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    from reference.gate_norm_residual import gate_shape
    g = torch.Generator(device=device).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32)

    x, a = rn(N, D), rn(N, D)
    b = None if mode == "add" else rn(N, D)
    gs = gate_shape(mode, (N, D), D)
    gate = None if gs is None else (rn(*gs).abs() * 0.5 if mode == "weights" else rn(*gs))
    weight = 1.0 + 0.1 * rn(D)
    out = {"x": x.to(torch.float32 if res32 else dtype).requires_grad_(grad)}
    for name, t in (("a", a), ("b", b), ("gate", gate), ("weight", weight)):
        out[name] = None if t is None else t.to(dtype).requires_grad_(grad)
    out.update(bias=None, mode=mode, norm="rms", eps=1e-5, gate_logits=mode in ("vector", "row", "element"),
               residual_fp32=res32)
    if mode in ("row", "element"):   # the gate projection's bias, fp32, added in the op (as the models call it)
        out["gate_bias"] = (0.5 * rn(gs[-1])).requires_grad_(grad)
    return out


def nbytes(N, D, mode, res32, pass_, es=2) -> float:
    ex = 4 if res32 else es                      # x and h in fp32 with res32
    gated = mode != "add"
    elem = mode == "element"
    fwd = N * D * (ex + es + (es if gated else 0) + (es if elem else 0) + ex + es)
    if mode == "row":
        fwd += N * es
    if pass_ == "fwd":
        return fwd
    bwd = N * D * (es + ex + ex + (2 * es if gated else 0) + (es if elem else 0)      # reads dy, dh, h, a, b, g
                   + ex + es + (es if gated else 0) + (es if elem else 0))           # writes dx, da, db, dg
    return fwd + bwd


def model_shape(cfg, batch: int, seq_len: int) -> list[tuple]:
    """The model's calls: the mixer sublayer's (rows B·T of d_model, the variant's blend mode), then the FFN
    sublayer's ("add")."""
    from fused.variants import VARIANTS
    n, res32 = batch * seq_len, bool(cfg.residual_fp32)
    return [(n, cfg.d_model, VARIANTS[cfg.name]["mode"], res32), (n, cfg.d_model, "add", res32)]


SPEC = OpSpec(
    name="gate_norm_residual",
    doc="(h, y) = (x + blend(a, b; gate, mode), norm(h)·weight + bias): "
        "(x, a, b=None, gate=None, *, weight, bias=None, mode, norm, eps, gate_logits, residual_fp32, gate_bias=None)",
    impls=(
        Impl("reference", "reference.gate_norm_residual:gate_norm_residual", role="reference", graph_safe=True),
        Impl("triton", "kernels.gate_norm_residual:gate_norm_residual", role="lab", graph_safe=True),
        Impl("compile", "kernels.gate_norm_residual.peers:compiled_reference", role="peer", needs="cuda",
             factory=True, package="torch", graph_safe=True),
        Impl("fla_rmsnorm", "kernels.gate_norm_residual.peers:fla_blend_add_norm", role="peer", needs="cuda",
             factory=True, package="fla", graph_safe=True),
    ),
    bench=Bench(shapes=shapes, cpu_shapes=[(16, 32, m, False) for m in MODES] + [(16, 32, "row", True)],
                shape_str=shape_str, make_inputs=make_inputs,
                err_shape=lambda N, D, mode, res32: (min(N, 4096), D, mode, res32),
                nbytes=nbytes, quick_peer=lambda *shp: shp in QUICK_PEER_SHAPES, model_shape=model_shape),
    kernels=("*_gnr_*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.gate_norm_residual.kernel:_gnr", call=dict(mode="row", gate_logits=True),
                     inputs=lambda t: dict(x=t(5, 9), a=t(5, 9), b=t(5, 9), gate=t(5, 1), weight=t(9)),
                     op_args=lambda k: (k["x"], k["a"], k["b"], k["gate"], k["weight"], None, "row", "rms", 1e-5,
                                        True, False)),),
)
