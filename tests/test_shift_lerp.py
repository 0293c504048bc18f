"""kernels.shift_lerp (RWKV-6 token shift, stage A: x + (shift(x) − x) ⊙ mu) against reference/shift_lerp.py:
output and every gradient vs float64 through the interpreter (fp32, fp16), with and without the carried previous
row, and the custom op's registration (opcheck). Shared cases with ddlerp (the model's formulation, bad input,
GPU bf16) are in tests/test_ddlerp.py."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401
from groundthink.harness import assert_close_all, check_op, compare
from kernels.shift_lerp import shift_lerp
from reference.shift_lerp import shift_lerp as shift_lerp_ref

SHAPES = [(2, 5, 37), (1, 9, 70), (3, 1, 8), (1, 6, 1)]


def make_inputs(B, T, D, *, dtype=torch.float32, prev=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inp = {"x": torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(),
           "mu": torch.rand(D, generator=gen, dtype=torch.float64).float().requires_grad_()}
    if prev:
        inp["x_prev"] = torch.randn(B, D, generator=gen, dtype=torch.float64).to(dtype)
    return inp


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_shift_lerp(shape, dtype):
    for prev in (False, True):
        check_op(shift_lerp, shift_lerp_ref, make_inputs(*shape, dtype=dtype, prev=prev),
                 context=f"{shape} prev={prev}")


def test_opcheck():
    from torch.library import opcheck
    inp = make_inputs(2, 3, 8)
    opcheck(torch.ops.groundthink.shift_lerp_fwd.default, (inp["x"], inp["mu"].detach(), None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_shift_lerp_tee(dtype):
    """``tee=True`` (the time mix: x also feeds ddlerp): (y, x′) with x′'s gradient added by the backward kernel
    (HAS_DXIN) — output, tee and every gradient vs float64 of the reference (where autograd adds), with and
    without the carried row; kernel outputs NaN-prefilled (check_op)."""
    lab = lambda **k: shift_lerp(**k, tee=True)          # noqa: E731
    ref = lambda **k: shift_lerp_ref(**k, tee=True)      # noqa: E731
    for shape in ((2, 5, 37), (1, 9, 70)):
        for prev in (False, True):
            check_op(lab, ref, make_inputs(*shape, dtype=dtype, prev=prev, seed=3), context=f"tee {shape} {prev}")


def test_shift_lerp_tee_only_the_tee_used():
    """y unused: x's gradient is the tee's alone, mu gets none."""
    inp = make_inputs(1, 4, 8)
    y, xt = shift_lerp(**inp, tee=True)
    g = torch.randn_like(xt)
    dx, dmu = torch.autograd.grad(xt, [inp["x"], inp["mu"]], g, allow_unused=True)
    assert torch.equal(dx, g) and dmu is None


@pytest.mark.gpu
def test_gpu_shift_lerp_tee_fp32():
    """``tee=True`` on the GPU at the small and large models' shapes, fp32: output, tee, every gradient ≤ 1e-5."""
    lab = lambda **k: shift_lerp(**k, tee=True)          # noqa: E731
    ref = lambda **k: shift_lerp_ref(**k, tee=True)      # noqa: E731
    for shape in ((64, 256, 128), (16, 1024, 512)):
        inp = {k: v.detach().cuda().requires_grad_() for k, v in make_inputs(*shape, seed=4).items()}
        assert_close_all(compare(lab, ref, inp, ref_device="cuda"), 1e-5, f"tee {shape}")
