"""kernels.shift_lerp (RWKV-6 token shift, stage A: x + (shift(x) − x) ⊙ mu) against reference/shift_lerp.py:
output and every gradient vs float64 through the interpreter (fp32, fp16), with and without the carried previous
row, and the custom op's registration (opcheck). Shared cases with ddlerp (the model's formulation, bad input,
GPU bf16) are in tests/test_ddlerp.py."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401
from groundthink.harness import check_op
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
