"""kernels.norm_gate against reference/norm_gate.py (and the reference against nn.GroupNorm / an independent
gated RMSNorm). CPU: Triton interpreter, fp32 and fp16, tiny odd shapes, NaN-prefilled outputs. GPU
(``@pytest.mark.gpu``): bf16 error ≤ 2× PyTorch's own bf16 eager computation, and the mamba-ssm peer agrees."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels  # noqa: F401
from groundthink.harness import check_op, compare
from kernels.norm_gate import norm_gate
from reference import norm_gate as R

COMBOS = [(n, b) for n in R.NORMS for b in (True, False)]


def make_inputs(lead, G, S, *, bias=True, dtype=torch.float32, param_dtype=torch.float32, device="cpu", seed=0,
                requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    D = G * S
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    inp = {"x": rnd(*lead, D).to(dtype), "z": (2 * rnd(*lead, D)).to(dtype),
           "weight": (1 + 0.3 * rnd(D)).to(param_dtype)}
    if bias:
        inp["bias"] = (0.2 * rnd(D)).to(param_dtype)
    return {k: v.to(device).requires_grad_(requires_grad) for k, v in inp.items()}


def run_check(lead, G, S, norm, before, bias=True, eps=1e-5, seed=0, **kw):
    inp = make_inputs(lead, G, S, bias=bias, seed=seed, **kw)
    opts = dict(group_size=S, eps=eps, norm=norm, norm_before_gate=before)
    return check_op(lambda **k: norm_gate(**k, **opts), lambda **k: R.norm_gate(**k, **opts), inp,
                    context=f"{lead} G{G} S{S} {opts}", seed=seed)


# ---------------------------------------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------------------------------------
def test_reference_matches_groupnorm_and_gated_rmsnorm():
    inp = make_inputs((5,), 4, 6, dtype=torch.float64, param_dtype=torch.float64, requires_grad=False)
    x, z, w, b = inp["x"], inp["z"], inp["weight"], inp["bias"]
    y = R.norm_gate(x, z, w, b, group_size=6, eps=64e-5, norm="layer", norm_before_gate=True)
    torch.testing.assert_close(y, F.group_norm(x, 4, w, b, 64e-5) * F.silu(z), rtol=1e-12, atol=1e-12)
    y = R.norm_gate(x, z, w, None, group_size=6, eps=1e-5, norm="rms", norm_before_gate=False)
    h = (x * F.silu(z)).view(5, 4, 6)
    want = (h / (h.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()).view(5, 24) * w
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm,before", COMBOS)
def test_reference_gradcheck(norm, before):
    inp = make_inputs((3,), 2, 3, dtype=torch.float64, param_dtype=torch.float64)
    names = list(inp)

    def f(*ts):
        return R.norm_gate(**dict(zip(names, ts)), group_size=3, norm=norm, norm_before_gate=before)

    assert torch.autograd.gradcheck(f, tuple(inp.values()))


# ---------------------------------------------------------------------------------------------------------
# The kernel, CPU interpreter: fp32 bound 1e-5, fp16 2e-3 on the output and every gradient
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,before", COMBOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_all_modes(norm, before, dtype):
    for bias in (True, False):
        run_check((2, 5), 3, 10, norm, before, bias=bias, eps=64e-5, dtype=dtype)


@pytest.mark.parametrize("lead,G,S", [((1,), 1, 37), ((9,), 4, 8), ((2, 3), 5, 3), ((13,), 2, 1), ((6,), 1, 64)])
def test_shapes(lead, G, S):
    run_check(lead, G, S, "layer", True, eps=1e-3)
    run_check(lead, G, S, "rms", False, bias=False, seed=1)


def test_half_params_and_half_weight():
    """fp16 rows with fp16 weight/bias: gradients come back in the inputs' dtypes."""
    inp = make_inputs((6,), 2, 16, dtype=torch.float16, param_dtype=torch.float16)
    y = norm_gate(**inp, group_size=16)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert all(v.grad.dtype == torch.float16 for v in inp.values())
    run_check((6,), 2, 16, "layer", True, dtype=torch.float16, param_dtype=torch.float16)


def test_non_contiguous_inputs():
    x = torch.randn(24, 10, dtype=torch.float64).t().float().requires_grad_()
    z = torch.randn(10, 48)[:, ::2].requires_grad_()
    w = torch.randn(48)[::2].requires_grad_()
    inp = {"x": x, "z": z, "weight": w}
    opts = dict(group_size=8, norm="rms", norm_before_gate=False)
    check_op(lambda **k: norm_gate(**k, **opts), lambda **k: R.norm_gate(**k, **opts), inp)
    # x and z split off one projection output (rows evenly spaced: read in place, no copy)
    proj = torch.randn(2, 5, 3 * 24 + 7, requires_grad=True)

    def split(proj, weight):
        z, x, _ = torch.split(proj, [24, 24, 24 + 7], dim=-1)
        return x, z, weight

    check_op(lambda proj, weight: norm_gate(*split(proj, weight), group_size=12, norm="layer"),
             lambda proj, weight: R.norm_gate(*split(proj, weight), group_size=12, norm="layer"),
             {"proj": proj, "weight": torch.randn(24, requires_grad=True)})


def test_zero_rows():
    inp = make_inputs((0,), 2, 8)
    y = norm_gate(**inp, group_size=8)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert inp["weight"].grad.abs().sum() == 0 and inp["bias"].grad.abs().sum() == 0


def test_backward_deterministic():
    """Bit-identical gradients on reruns (several persistent programs, partial-row reductions)."""
    inp = make_inputs((23,), 2, 12)
    cot = torch.randn(23, 24)
    grads = []
    for _ in range(3):
        for v in inp.values():
            v.grad = None
        norm_gate(**inp, group_size=12).backward(cot)
        grads.append([v.grad.clone() for v in inp.values()])
    for g in grads[1:]:
        assert all(torch.equal(p, q) for p, q in zip(grads[0], g))


def test_opcheck():
    from torch.library import opcheck
    inp = make_inputs((4,), 2, 8)
    opcheck(torch.ops.groundthink.norm_gate_fwd.default,
            (inp["x"], inp["z"], inp["weight"], inp["bias"], 8, 1e-5, "layer", True))
    opcheck(torch.ops.groundthink.norm_gate_fwd.default,
            (inp["x"], inp["z"], inp["weight"], None, 4, 1e-5, "rms", False))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    inp = make_inputs((3,), 2, 8)
    f = torch.compile(lambda x, z, w, b: norm_gate(x, z, w, b, group_size=8).sin().sum(), backend="aot_eager",
                      fullgraph=True)
    vals = list(inp.values())
    g = torch.autograd.grad(f(*vals), vals)
    gr = torch.autograd.grad(R.norm_gate(*vals, group_size=8).sin().sum(), vals)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case,exc,match", [
    ("z_shape", ValueError, "z must have the shape"),
    ("weight_shape", ValueError, "weight must have shape"),
    ("bias_shape", ValueError, "bias must have shape"),
    ("group", ValueError, "group_size must divide"),
    ("norm", ValueError, "norm must be one of"),
    ("eps", ValueError, "eps must be > 0"),
    ("dtype", TypeError, "x has dtype"),
    ("device", ValueError, "z is on meta"),
])
def test_bad_input(case, exc, match):
    inp = make_inputs((4,), 2, 8, requires_grad=False)
    opts = dict(group_size=8)
    if case == "z_shape":
        inp["z"] = torch.randn(4, 15)
    elif case == "weight_shape":
        inp["weight"] = torch.randn(15)
    elif case == "bias_shape":
        inp["bias"] = torch.randn(3)
    elif case == "group":
        opts["group_size"] = 5
    elif case == "norm":
        opts["norm"] = "batch"
    elif case == "eps":
        opts["eps"] = 0.0
    elif case == "dtype":
        inp["x"] = inp["x"].to(torch.int32)
    elif case == "device":
        inp["z"] = inp["z"].to("meta")
    with pytest.raises(exc, match=match):
        norm_gate(**inp, **opts)


# ---------------------------------------------------------------------------------------------------------
# GPU: bf16 against PyTorch's own bf16 eager computation; the mamba-ssm peer computes the same function
# ---------------------------------------------------------------------------------------------------------
def _eager_bf16(x, z, weight, bias=None, *, group_size, eps, norm, norm_before_gate):
    s = F.silu(z)
    h = x if norm_before_gate else x * s
    y = R.normalize_groups(h, group_size, norm, eps) * weight
    y = y + bias if bias is not None else y
    return y * s if norm_before_gate else y


@pytest.mark.gpu
@pytest.mark.parametrize("norm,before,G,S", [("layer", True, 16, 64), ("rms", False, 1, 1024),
                                              ("rms", False, 8, 96)])
def test_gpu_bf16_vs_eager_and_peer(norm, before, G, S):
    inp = make_inputs((4096,), G, S, dtype=torch.bfloat16, param_dtype=torch.bfloat16, device="cuda",
                      bias=norm == "layer")
    opts = dict(group_size=S, eps=64e-5 if norm == "layer" else 1e-5, norm=norm, norm_before_gate=before)
    ref = lambda **k: R.norm_gate(**k, **opts)  # noqa: E731
    ours = compare(lambda **k: norm_gate(**k, **opts), ref, inp, ref_device="cuda")
    eager = compare(lambda **k: _eager_bf16(**k, **opts), ref, inp, ref_device="cuda")
    for k in ours:
        assert ours[k] <= 2 * eager[k] + 1e-6, f"{k}: ours {ours[k]:.3g} eager {eager[k]:.3g}"
    try:
        from kernels.norm_gate.peer import mamba_ssm_norm_gate
        peer = compare(lambda **k: mamba_ssm_norm_gate(**k, **opts), ref, inp, ref_device="cuda")
    except ImportError:
        return
    assert peer["out0"] < 2e-2, peer
