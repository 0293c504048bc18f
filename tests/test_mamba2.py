"""mamba2: reference.mamba2 (the chunked SSD scan against the step-by-step recurrence, float64, and gradients) and
the lab's Triton kernel kernels.mamba2 (interpreter on CPU, GPU tests marked ``gpu``).

The chunked form (segment sums inside chunks, state passing between chunks) and the direct recurrence are two
independent algorithms for the same function; they must agree to float64 round-off for every option.

The Triton kernel: output, final state and every gradient (x, dt, A, B, C, D, dt_bias, initial_states) against the
float64 recurrence, NaN-prefilled outputs (``groundthink.harness.compare``), fp32 bound 1e-5 and fp16 2e-3 on CPU
(tiny odd shapes: T not a multiple of the kernel's 16-row chunk, G > 1, D [h] and [h, p], strong decay, several
p-blocks, the model's strided views; the lean reverse step, TUNING["lean"]; the forward's saved states,
TUNING["save"]); on the GPU (in this order): CUDA-graph replay and determinism at both model shapes, the lean step's
(alone and with save) bf16 errors and replay, bf16 / fp32 at both model shapes beside mamba-ssm (bound 5e-3, errors
printed).
"""
import pytest
import torch

import kernels  # noqa: F401  (interpreter on CPU)
from groundthink.harness import BOUNDS, assert_compiled_matches_eager, check_op, compare
from reference.mamba2 import mamba_chunk_scan, ssd_recurrence

F64 = torch.float64


def _inputs(b=2, l=37, h=4, p=3, g=2, n=5, seed=0, dtype=F64, strong=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    A = -(torch.rand(h, generator=gen, dtype=dtype) * (8.0 if strong else 2.0) + 0.05)
    return dict(x=r(b, l, h, p), dt=r(b, l, h), A=A, B=r(b, l, g, n), C=r(b, l, g, n))


def _close(a, b, tol=1e-10):
    err = (a - b).norm() / b.norm().clamp_min(1e-30)
    assert err < tol, f"relative error {err:.3g}"


@pytest.mark.parametrize("l", [1, 7, 16, 37, 64])
@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
def test_chunked_matches_recurrence_plain(l, chunk):
    t = _inputs(l=l)
    t["dt"] = torch.nn.functional.softplus(t["dt"])          # positive Δ without dt_softplus
    y1, s1 = mamba_chunk_scan(**t, chunk_size=chunk, return_final_states=True)
    y2, s2 = ssd_recurrence(**t, return_final_states=True)
    _close(y1, y2)
    _close(s1, s2)


@pytest.mark.parametrize("D_shape", ["h", "hp", None])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chunked_matches_recurrence_options(D_shape, groups):
    t = _inputs(l=29, h=4, g=groups, seed=groups)
    h, p, n = 4, 3, 5
    gen = torch.Generator().manual_seed(7)
    D = {"h": torch.randn(h, dtype=F64, generator=gen), "hp": torch.randn(h, p, dtype=F64, generator=gen),
         None: None}[D_shape]
    kw = dict(D=D, z=torch.randn(2, 29, h, p, dtype=F64, generator=gen),
              dt_bias=torch.randn(h, dtype=F64, generator=gen), dt_softplus=True,
              initial_states=torch.randn(2, h, p, n, dtype=F64, generator=gen))
    y1, s1 = mamba_chunk_scan(**t, chunk_size=8, return_final_states=True, **kw)
    y2, s2 = ssd_recurrence(**t, return_final_states=True, **kw)
    _close(y1, y2)
    _close(s1, s2)


def test_strong_decay_and_large_dt():
    t = _inputs(l=50, strong=True)
    t["dt"] = t["dt"] * 10                                    # Δ up to ~30 through softplus: exp(ΔA) ≈ 1e-100
    y1, s1 = mamba_chunk_scan(**t, chunk_size=16, dt_softplus=True, return_final_states=True)
    y2, s2 = ssd_recurrence(**t, dt_softplus=True, return_final_states=True)
    assert torch.isfinite(y1).all()
    _close(y1, y2)
    _close(s1, s2)


def test_padding_invariance_and_state_passing():
    """Splitting a sequence in two with the final state carried over equals one pass."""
    t = _inputs(l=45)
    kw = dict(dt_softplus=True, D=torch.ones(4, dtype=F64))
    y, s = mamba_chunk_scan(**t, chunk_size=16, return_final_states=True, **kw)
    first = {k: (v[:, :20] if v.dim() > 1 else v) for k, v in t.items()}
    second = {k: (v[:, 20:] if v.dim() > 1 else v) for k, v in t.items()}
    ya, sa = mamba_chunk_scan(**first, chunk_size=16, return_final_states=True, **kw)
    yb, sb = mamba_chunk_scan(**second, chunk_size=16, initial_states=sa, return_final_states=True, **kw)
    _close(torch.cat([ya, yb], 1), y)
    _close(sb, s)


def test_dtypes_fp32_and_bf16():
    t64 = _inputs(l=33)
    ref = ssd_recurrence(**t64, dt_softplus=True)
    for dt_, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        t = {k: v.to(dt_) for k, v in t64.items()}
        y, s = mamba_chunk_scan(**t, chunk_size=16, dt_softplus=True, return_final_states=True)
        assert y.dtype == dt_ and s.dtype == torch.float32
        _close(y.double(), ref, tol)


def test_bad_shapes_raise():
    t = _inputs(l=8, h=4, g=3)
    with pytest.raises(ValueError, match="groups"):
        mamba_chunk_scan(**t, chunk_size=4)
    t = _inputs(l=8)
    with pytest.raises(ValueError, match="dt"):
        mamba_chunk_scan(t["x"], t["dt"][:, :, :2], t["A"], t["B"], t["C"], 4)


def test_gradcheck_chunked():
    t = _inputs(b=1, l=6, h=2, p=2, g=1, n=3)
    gen = torch.Generator().manual_seed(3)
    extra = dict(D=torch.randn(2, dtype=F64, generator=gen), dt_bias=torch.randn(2, dtype=F64, generator=gen),
                 init=torch.randn(1, 2, 2, 3, dtype=F64, generator=gen),
                 z=torch.randn(1, 6, 2, 2, dtype=F64, generator=gen))
    args = [t["x"], t["dt"], t["A"], t["B"], t["C"], extra["D"], extra["dt_bias"], extra["init"], extra["z"]]
    args = [a.clone().requires_grad_() for a in args]

    def f(x, dt, A, B, C, D, dtb, init, z):
        y, s = mamba_chunk_scan(x, dt, A, B, C, 4, D=D, z=z, dt_bias=dtb, dt_softplus=True, initial_states=init,
                                return_final_states=True)
        return y, s

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)


def test_chunked_gradients_match_recurrence():
    t = {k: v.clone().requires_grad_() for k, v in _inputs(l=21).items()}
    g1 = torch.autograd.grad(mamba_chunk_scan(**t, chunk_size=8, dt_softplus=True).pow(2).sum(), list(t.values()))
    g2 = torch.autograd.grad(ssd_recurrence(**t, dt_softplus=True).pow(2).sum(), list(t.values()))
    for a, b in zip(g1, g2):
        _close(a, b, 1e-9)


# ------------------------------------------------------------------------------------------ the Triton kernel
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def _tri_inputs(b=1, l=37, h=4, p=5, g=2, n=6, dtype=torch.float32, D="h", bias=True, softplus=True, init=True,
                final=True, a_max=2.0, dt_scale=0.5, seed=0, zero_head=False, device=DEV):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    A = -(torch.rand(h, generator=gen) * (a_max - 0.5) + 0.5)
    if zero_head:
        A[0] = 0.                # no decay in head 0: the backward's dA takes its Σ Δ·da path there
    d = dict(x=r(b, l, h, p), dt=r(b, l, h) * dt_scale, A=A, B=r(b, l, g, n), C=r(b, l, g, n))
    if D:
        d["D"] = r(h) if D == "h" else r(h, p)
    if bias:
        d["dt_bias"] = r(h) * 0.5
    if not softplus:
        d["dt"] = torch.nn.functional.softplus(d["dt"])
    if init:
        d["initial_states"] = r(b, h, p, n)
    half = ("x", "dt", "B", "C")
    d = {k: v.to(device=device, dtype=dtype if k in half else torch.float32).requires_grad_() for k, v in d.items()}
    d.update(chunk_size=16, dt_softplus=softplus, return_final_states=final)
    return d


def _ref(**kw):
    kw.pop("chunk_size")
    return ssd_recurrence(**kw)


CASES = {   # name: (inputs, TUNING overrides)
    "groups2_odd": (dict(), {}),
    "Dhp_no_state": (dict(D="hp", init=False, final=False, bias=False, softplus=False, l=21), {}),
    "strong_decay": (dict(l=50, a_max=16.0, dt_scale=1.0, g=1), {"ckpt": 2}),   # A to −16, Δ ~ softplus(N(0, 1));
    #                                                                        4 chunks: 2 checkpoint groups
    "pblocks_N17": (dict(h=4, g=1, p=20, n=17, l=33, b=2), {"bp": 16, "ckpt": 2}),   # two p-blocks: partial sums;
    #                                                                        3 chunks: groups of 2 and 1
    "T1": (dict(l=1), {}),
    # the lean reverse step (TUNING["lean"] 1: no V dot, eo from dC's state part; 2: and every walk's inputs loaded a
    # step ahead — across the checkpoint pass, the group re-walks and the group boundaries of the reverse walk)
    "lean_strong_decay": (dict(l=50, a_max=16.0, dt_scale=1.0, g=1), {"lean": 1, "ckpt": 2}),
    "lean0_strong_decay": (dict(l=50, a_max=16.0, dt_scale=1.0, g=1), {"lean": 0, "ckpt": 2}),   # 4 chunks, 2 groups
    "lean2_pblocks_N17": (dict(h=4, g=1, p=20, n=17, l=33, b=2, D="hp"), {"lean": 2, "bp": 16, "ckpt": 2,
                                                                           "bwd_cfg": (2, 1)}),
    #   two p-blocks, D [h, p], 3 chunks in groups of 2 and 1 (a one-chunk group: no re-walk step); the fixed-config
    #   launch (bwd_cfg: the JIT function without the autotuner)
    # the forward's chunk-entry states as the backward's checkpoints (TUNING["save"]; fwd_bt honoured under the
    # interpreter): groups of 1 (no re-walk), of 2 (the last one partial), one partial group of 4.
    "save_strong_decay": (dict(l=50, a_max=16.0, dt_scale=1.0, g=1), {"save": True, "fwd_bt": 16}),
    "save_groups2": (dict(l=50, g=1), {"save": True, "fwd_bt": 32}),
    "save_lean2_pblocks": (dict(h=4, g=1, p=20, n=17, l=33, b=2, D="hp"), {"save": True, "fwd_bt": 64, "lean": 2,
                                                                            "bp": 16}),
    # 32- and 64-row chunks (the GPU's forward tiles) at ordinary and strong decay: the split cumsum c_hi + c_lo
    # (before it, the fp32 final state was 1.2e-5 / 2.4e-5 / 4.8e-5 off in these three cases: the rounding of the
    # chunk-local cumsum of a in exp(c_L − c_t); dx 1.0e-5 at 32-row backward chunks); the last with Δ to ~15
    # (a to −232: the clamp at −128; before: 1.7e-4)
    "ordinary_fwd64": (dict(b=1, l=49, h=4, p=33, n=17, D=None, init=False, seed=201519, g=1), {"fwd_bt": 64}),
    "strong_decay_bt32": (dict(l=50, a_max=16.0, dt_scale=1.0, g=1), {"fwd_bt": 32, "bwd_bt": 32}),
    "strong_decay_fwd64_save": (dict(l=50, a_max=16.0, dt_scale=1.0, g=1), {"fwd_bt": 64, "save": True}),
    "extreme_decay_fwd64": (dict(l=50, a_max=16.0, dt_scale=10.0, g=1), {"fwd_bt": 64}),
    # dA at strong decay with one head (a random sweep's worst draws): dA = Σ_j Δ_j da_j with da's exclusive sums as
    # shifted inclusive cumsums: 2.6e-7 / 1.3e-6; with "inclusive cumsum − own term" (before session 14): 5.5e-5 /
    # 2.3e-5; session 14's term-by-term form (removed: slower on the H100, run 19): 4.5e-7 / 2.4e-6 (autograd
    # through the fp32 recurrence 7e-8 / 1.7e-6)
    "dA_strong_h1": (dict(b=2, l=25, h=1, p=1, n=6, g=1, a_max=16.0, dt_scale=1.0, seed=817620), {}),
    "dA_strong_p3": (dict(l=28, h=1, p=3, n=8, g=1, a_max=12.0, dt_scale=1.0, seed=882633, D=None), {}),
    "A_zero_head": (dict(l=21, h=2, g=1, zero_head=True), {}),   # a head with A = 0
}


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_fp64(case):
    from kernels.mamba2 import mamba_chunk_scan_combined, ssd
    kw, tuning = CASES[case]
    old = dict(ssd.TUNING)
    ssd.TUNING.update(tuning)
    try:
        check_op(mamba_chunk_scan_combined, _ref, _tri_inputs(**kw), bound=BOUNDS[torch.float32], context=case)
    finally:
        ssd.TUNING.clear()
        ssd.TUNING.update(old)


def test_triton_fp16_and_model_views():
    """fp16 inputs (the dots' fp16 path on CPU), and x, B, C as the mixer passes them: views of a transposed
    [b, T, C] projection (T-stride 1), dt a column slice (no copies)."""
    from kernels.mamba2 import mamba_chunk_scan_combined as tri
    check_op(tri, _ref, _tri_inputs(dtype=torch.float16, l=40), bound=BOUNDS[torch.float16], context="fp16")
    b, T, h, p, g, n = 2, 23, 4, 4, 1, 8
    gen = torch.Generator().manual_seed(5)
    xBC = torch.randn(b, h * p + 2 * g * n, T, generator=gen).to(DEV).transpose(1, 2)
    dt = torch.randn(b, T, h + 3, generator=gen).to(DEV)[..., 1:1 + h]
    x, Bm, Cm = torch.split(xBC, [h * p, g * n, g * n], dim=-1)
    x, Bm, Cm = x.reshape(b, T, h, p), Bm.reshape(b, T, g, n), Cm.reshape(b, T, g, n)
    assert x.stride(1) == 1 and dt.stride(2) == 1          # the strided views themselves reach the kernel
    A, D, bias = -torch.rand(h, generator=gen).to(DEV) * 4, torch.randn(h).to(DEV), torch.randn(h).to(DEV)
    y = tri(x, dt, A, Bm, Cm, 64, D=D, dt_bias=bias, dt_softplus=True)
    ref = ssd_recurrence(*(t.double() for t in (x, dt, A, Bm, Cm)), D=D.double(), dt_bias=bias.double(),
                         dt_softplus=True)
    assert (y.double() - ref).norm() / ref.norm() < 1e-5


def test_triton_softplus_keeps_small_steps_exact():
    """dt + dt_bias in (−9.2, −5), where Δ = softplus is ~1e-4 – 7e-3 (the model's dt_min is 1e-3): log(1 + u)
    lost up to 5.9e-4 of Δ in fp32 (y 1.9e-4 off at bias −9); the log1p form keeps fp32 at its 1e-5 bound."""
    from kernels.mamba2 import mamba_chunk_scan_combined as tri
    gen = torch.Generator().manual_seed(0)
    b, l, h, p, g, n = 1, 20, 4, 3, 1, 4
    x, dt = torch.randn(b, l, h, p, generator=gen), torch.randn(b, l, h, generator=gen) * 0.3
    A = -torch.rand(h, generator=gen) - 0.5
    Bm, Cm = torch.randn(b, l, g, n, generator=gen), torch.randn(b, l, g, n, generator=gen)
    for bias in (-9.0, -7.0, -5.5):
        db = torch.full((h,), bias)
        args = [t.to(DEV) for t in (x, dt, A, Bm, Cm)]
        y = tri(*args, 16, dt_bias=db.to(DEV), dt_softplus=True)
        ref = ssd_recurrence(*(t.double() for t in (x, dt, A, Bm, Cm)), dt_bias=db.double(), dt_softplus=True)
        assert ((y.double().cpu() - ref).norm() / ref.norm()).item() < 1e-5, bias


def test_triton_lean0_fp16():
    """The plain reverse step (lean 0: the V dot, no loads ahead; the default is lean 2) with fp16 inputs, D [h, p],
    odd T, initial and final states."""
    from kernels.mamba2 import mamba_chunk_scan_combined, ssd
    old = dict(ssd.TUNING)
    try:
        ssd.TUNING.update(lean=0)
        check_op(mamba_chunk_scan_combined, _ref, _tri_inputs(dtype=torch.float16, l=45, D="hp"),
                 bound=BOUNDS[torch.float16], context="lean0 fp16")
    finally:
        ssd.TUNING.clear()
        ssd.TUNING.update(old)


def test_triton_bad_input_is_a_clear_error():
    from kernels.mamba2 import mamba_chunk_scan_combined as tri
    t = _tri_inputs(l=8, final=False)
    t = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
    with pytest.raises(ValueError, match="z .* not supported"):
        tri(**t, z=torch.zeros_like(t["x"]))
    with pytest.raises(ValueError, match="seq_idx"):
        tri(**t, seq_idx=torch.zeros(1, 8, dtype=torch.int32))
    bad = dict(t, dt=t["dt"][:, :, :2])
    with pytest.raises(ValueError, match="dt must be"):
        tri(**bad)
    with pytest.raises(ValueError, match="groups"):
        tri(**dict(t, B=torch.randn(1, 8, 3, 6, device=DEV), C=torch.randn(1, 8, 3, 6, device=DEV)))
    with pytest.raises(ValueError, match="dt_bias must have shape"):
        tri(**dict(t, dt_bias=torch.zeros(1, device=DEV)))


def test_triton_kernels_compile_for_sm90():
    """The Triton front end and ptxas (no GPU: ``scripts/gpu_mamba2.py --compile``, the small model's tiles) catch
    what the interpreter lets through."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("triton.backends.nvidia.compiler")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(root), MAMBA2_COMPILE_QUICK="1")
    r = subprocess.run([sys.executable, str(root / "scripts" / "gpu_mamba2.py"), "--compile"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "FAIL" not in r.stdout:
        pytest.skip(f"no sm_90 toolchain here: {r.stderr.strip().splitlines()[-1:]}")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_triton_torch_compile():
    """The public call traces into one graph (fullgraph: the custom ops, no break) with the eager gradients."""
    from kernels.mamba2 import mamba_chunk_scan_combined as tri
    t = _tri_inputs(b=1, l=9, h=2, p=3, g=1, n=4)
    names = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states")

    def model(x, dt, A, B, C, D, dt_bias, initial_states):
        y, s = tri(x * 1.0, dt, A, B, C, 16, D=D, dt_bias=dt_bias, dt_softplus=True,
                   initial_states=initial_states, return_final_states=True)
        return y.sin().sum() + s.square().sum()

    assert_compiled_matches_eager(model, t, names)


def test_triton_strided_parameters_and_absent_optionals():
    """A, D [h, p] and dt_bias as strided views give the contiguous inputs' y (the kernels index them contiguously:
    the wrapper makes them so); without D, dt_bias and initial_states the backward op's three empty gradients are
    distinct tensors (custom-op outputs may not alias), so the call compiles into one graph."""
    from kernels.mamba2 import mamba_chunk_scan_combined as tri
    t = _tri_inputs(b=1, l=9, h=2, p=3, g=1, n=4, D="hp", init=False, final=False)
    t = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
    views = dict(A=torch.stack([t["A"], t["A"]], 1)[:, 0], D=t["D"].t().contiguous().t(),
                 dt_bias=torch.stack([t["dt_bias"], t["dt_bias"]], 1)[:, 0])
    assert not any(v.is_contiguous() for v in views.values())
    assert torch.equal(tri(**dict(t, **views)), tri(**t))
    u = {k: t[k] for k in ("x", "dt", "A", "B", "C")}

    def model(x, dt, A, B, C):
        return tri(x * 1.0, dt, A, B, C, 16).sin().sum()

    assert_compiled_matches_eager(model, u, tuple(u))


def test_triton_opcheck():
    """The custom ops (fake implementations, autograd registration) as torch.compile sees them."""
    from torch.library import opcheck
    t = _tri_inputs(b=1, l=5, h=2, p=3, g=1, n=4)
    for save in (False, True):   # (True: the third output holds the forward's chunk-entry states)
        args = (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["dt_bias"], t["initial_states"], True, True, save)
        opcheck(torch.ops.groundthink.mamba2_fwd.default, args,
                test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ------------------------------------------------------------------------------------------------- GPU
MODEL_SHAPES = {"small": (64, 256, 8, 32, 1, 32, 64), "large": (16, 1024, 16, 64, 1, 64, 256)}   # (…, chunk)


def _model_inputs(B, T, H, P, G, N, Q, dtype, seed=0):
    from kernels.mamba2.spec import make_inputs
    d = make_inputs(B, T, H, P, G, N, Q, True, dtype=dtype, seed=seed, device="cuda")
    d["initial_states"] = (torch.randn(B, H, P, N, device="cuda") * 0.5).requires_grad_()
    d["return_final_states"] = True
    return d


def _assert_deterministic_and_replays(tri, inputs):
    """fwd+bwd of ``tri`` twice: bit-identical; captured as a CUDA graph: its replay gives the same values.

    Each step returns detached tensors, so no autograd graph outlives it: a kept graph (``y.grad_fn``) keeps its
    leaves' AccumulateGrad nodes alive, the next steps reuse them, and each remembers the stream current when it
    was made (the default stream, before the capture). Inside the capture the engine then makes that stream wait
    on the capturing one: "operation would make the legacy stream depend on a capturing blocking stream" (what
    the removed segmented form's test hit at its first case; pytorch issue 164302, PR 180090). The kernels launch
    on the current stream only and never sync (the timed graph captures of gpu_mamba2.py run the same op)."""
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    dy = torch.randn(inputs["x"].shape, device="cuda", dtype=torch.bfloat16)

    def step():
        y, s = tri(**inputs)
        grads = torch.autograd.grad((y, s), leaves, (dy, torch.ones_like(s)))
        return [y.detach(), s.detach(), *grads]

    a, b = step(), step()
    assert all(torch.equal(u, v) for u, v in zip(a, b)), "not deterministic"
    st = torch.cuda.Stream()
    st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        step()
    torch.cuda.current_stream().wait_stream(st)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    g.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(u, v) for u, v in zip(out, a)), "graph replay differs"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(MODEL_SHAPES))
def test_gpu_deterministic_and_graph_capture(shape):
    """Two runs are bit-identical (no atomics); a captured CUDA graph of fwd+bwd replays to the same values (first
    of the GPU tests: the walk's graph replay had never run on a GPU)."""
    from kernels.mamba2 import mamba_chunk_scan_combined as tri
    _assert_deterministic_and_replays(tri, _model_inputs(*MODEL_SHAPES[shape], torch.bfloat16))


LEAN_GPU = {"lean0": {"lean": 0}, "save_lean2": {"lean": 2, "save": True}}   # the knob forms beside the default


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(MODEL_SHAPES))
@pytest.mark.parametrize("form", list(LEAN_GPU))
def test_gpu_lean_model_shapes(shape, form):
    """The lean reverse step (TUNING["lean"] 2; lean 1 is its subset: the sweep's "vs walk" column checks it), alone
    and with the forward's saved states (TUNING["save"]), in bf16 at the models' shapes: every gradient vs float64
    (printed), bit-identical reruns and CUDA-graph replay."""
    from kernels.mamba2 import mamba_chunk_scan_combined as tri, ssd
    old = dict(ssd.TUNING)
    ssd.TUNING.update(LEAN_GPU[form])
    try:
        inputs = _model_inputs(*MODEL_SHAPES[shape], torch.bfloat16)
        errs = compare(tri, mamba_chunk_scan, inputs)
        line = f"mamba2 {shape} bf16 triton {form}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items())
        print("\n" + line)
        assert all(v <= BOUNDS[torch.bfloat16] for v in errs.values()), line
        _assert_deterministic_and_replays(tri, inputs)
    finally:
        ssd.TUNING.clear()
        ssd.TUNING.update(old)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(MODEL_SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_gpu_model_shapes(shape, dtype):
    """Output, final state and every gradient vs float64 (the chunked reference on the GPU) at the models' shapes,
    beside mamba-ssm's errors on the same inputs when it is installed; printed (-s)."""
    from kernels.mamba2 import mamba_chunk_scan_combined as tri
    inputs = _model_inputs(*MODEL_SHAPES[shape], dtype)
    errs = compare(tri, mamba_chunk_scan, inputs)
    line = f"mamba2 {shape} {str(dtype)[6:]} triton: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items())
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as peer
        pe = compare(lambda **kw: peer(**kw), mamba_chunk_scan, inputs)
        line += "\n" + " " * len(f"mamba2 {shape} {str(dtype)[6:]} ") + "mamba_ssm: " + " ".join(
            f"{k}={v:.2e}" for k, v in pe.items())
    except ImportError:
        pass
    print("\n" + line)
    bound = BOUNDS[dtype]
    assert all(v <= bound for v in errs.values()), line
