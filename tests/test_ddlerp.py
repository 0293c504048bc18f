"""kernels.ddlerp (and, where they share cases, kernels.shift_lerp: the RWKV-6 token-shift lerps) against
reference/ddlerp.py and reference/shift_lerp.py (tests/test_shift_lerp.py has shift_lerp's own kernel tests),
and the references against the model's original formulation. CPU: Triton interpreter,
fp32 and fp16, odd sizes (several column blocks, T = 1, a carried x_prev), NaN-prefilled outputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels  # noqa: F401
from groundthink.harness import assert_deterministic, check_op, compare
from kernels.ddlerp import ddlerp
from kernels.shift_lerp import shift_lerp
from reference import ddlerp as RD
from reference import shift_lerp as RS

SHAPES = [(2, 5, 37), (1, 9, 70), (3, 1, 8), (1, 6, 1)]


def make_inputs(B, T, D, *, op="ddlerp", dtype=torch.float32, prev=False, device="cpu", seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    inp = {"x": rnd(B, T, D).to(dtype)}
    if op == "ddlerp":
        inp["m"] = rnd(5, B, T, D).to(dtype)
        inp["maa"] = torch.rand(5, D, generator=gen, dtype=torch.float64).float()
    else:
        inp["mu"] = torch.rand(D, generator=gen, dtype=torch.float64).float()
    inp = {k: v.to(device).requires_grad_(grad) for k, v in inp.items()}
    if prev:
        inp["x_prev"] = rnd(B, D).to(dtype).to(device)
    return inp


# ---------------------------------------------------------------------------------------------------------
# The references against the model's original code (F.pad token shift, broadcast lerps)
# ---------------------------------------------------------------------------------------------------------
def test_references_match_model_formulation():
    inp = make_inputs(2, 7, 12, dtype=torch.float64, grad=False)
    x, m, maa = inp["x"], inp["m"], inp["maa"].double()
    xx = F.pad(x, (0, 0, 1, -1)) - x
    want = (x + xx * (maa[:, None, None, :] + m)).unbind(0)
    for got, w in zip(RD.ddlerp(x, m, maa), want):
        torch.testing.assert_close(got, w, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(RS.shift_lerp(x, maa[0]), x + xx * maa[0], rtol=1e-14, atol=1e-14)
    prev = torch.randn(2, 12, dtype=torch.float64)
    xx = torch.cat([prev[:, None], x[:, :-1]], 1) - x
    torch.testing.assert_close(RS.shift_lerp(x, maa[1], prev), x + xx * maa[1], rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# The kernels, CPU interpreter: fp32 bound 1e-5, fp16 2e-3 on every output and gradient
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ddlerp(shape, dtype):
    for prev in (False, True):
        check_op(ddlerp, RD.ddlerp, make_inputs(*shape, dtype=dtype, prev=prev), context=f"{shape} prev={prev}")


@pytest.mark.parametrize("order", [(0, 3, 1, 2, 4), (4, 3, 2, 1, 0)])
def test_ddlerp_grouped(order):
    """order=…: (out[order[0]], the other four as one stack [4, B, T, D]) written in place by the kernel, output
    and every gradient vs float64 (several column blocks, a carried x_prev); the reference groups the same way."""
    check_op(lambda **k: ddlerp(**k, order=order), lambda **k: RD.ddlerp(**k, order=order),
             make_inputs(2, 5, 37, prev=True), context=f"order={order}")


def test_gradient_through_some_outputs_only():
    """Unused outputs give no gradient (None): their share is zero."""
    inp = make_inputs(2, 5, 20)
    ref_in = {k: v.detach().double().requires_grad_() for k, v in inp.items()}
    outs, refs = ddlerp(**inp), RD.ddlerp(**ref_in)
    (outs[1].sum() + 2 * outs[3].sum()).backward()
    (refs[1].sum() + 2 * refs[3].sum()).backward()
    for k in inp:
        torch.testing.assert_close(inp[k].grad.double(), ref_in[k].grad, rtol=1e-5, atol=1e-5)


def test_backward_deterministic():
    assert_deterministic(ddlerp, make_inputs(2, 7, 40))


def test_opcheck():
    from torch.library import opcheck
    inp = make_inputs(2, 3, 8, prev=True)
    opcheck(torch.ops.groundthink.ddlerp_fwd.default, (inp["x"], inp["m"], inp["maa"], inp["x_prev"]))
    opcheck(torch.ops.groundthink.ddlerp_grouped_fwd.default,
            (inp["x"], inp["m"], inp["maa"], inp["x_prev"], [0, 3, 1, 2, 4]))


@pytest.mark.parametrize("case,match", [
    ("x_dim", "x must have 3 dimensions"),
    ("m_shape", "m must have shape"),
    ("maa_shape", "maa must have shape"),
    ("prev_shape", "x_prev must have shape"),
    ("prev_grad", "not differentiated"),
    ("order", "order must be a permutation of 0..4"),
])
def test_bad_input(case, match):
    inp = make_inputs(2, 3, 8, prev=True, grad=False)
    if case == "x_dim":
        inp["x"] = inp["x"][0]
    elif case == "m_shape":
        inp["m"] = inp["m"][:4]
    elif case == "maa_shape":
        inp["maa"] = inp["maa"][:, :7]
    elif case == "prev_shape":
        inp["x_prev"] = inp["x_prev"][:1]
    elif case == "prev_grad":
        inp["x_prev"].requires_grad_()
    elif case == "order":
        inp["order"] = (0, 1, 2, 3, 3)
    with pytest.raises(ValueError, match=match):
        ddlerp(**inp)


# ---------------------------------------------------------------------------------------------------------
# GPU: bf16 against PyTorch's own bf16 eager computation (the model's original lines)
# ---------------------------------------------------------------------------------------------------------
def _eager_ddlerp(x, m, maa, x_prev=None):
    xx = F.pad(x, (0, 0, 1, -1)) - x
    return (x + xx * (maa[:, None, None, :].to(x.dtype) + m)).unbind(0)


def _eager_shift(x, mu, x_prev=None):
    return x + (F.pad(x, (0, 0, 1, -1)) - x) * mu.to(x.dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["ddlerp", "shift"])
def test_gpu_bf16_vs_eager(op):
    fn, ref, eager = ((ddlerp, RD.ddlerp, _eager_ddlerp) if op == "ddlerp" else
                      (shift_lerp, RS.shift_lerp, _eager_shift))
    for B, T, D in ((64, 256, 128), (16, 1024, 512), (3, 77, 200)):
        inp = make_inputs(B, T, D, op=op, dtype=torch.bfloat16, device="cuda")
        ours = compare(fn, ref, inp, ref_device="cuda")
        theirs = compare(eager, ref, inp, ref_device="cuda")
        for k in ours:
            assert ours[k] <= 2 * theirs[k] + 1e-6, f"{op} {(B, T, D)} {k}: ours {ours[k]:.3g} eager {theirs[k]:.3g}"
