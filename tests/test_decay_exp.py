"""kernels.decay_exp (RWKV-6 log-decay lw = −exp(base + d)) against reference/decay_exp.py. CPU: Triton
interpreter, fp32 and fp16, odd sizes, NaN-prefilled outputs; the reference against the model's original lines."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401
from groundthink.harness import assert_deterministic, bound_for, check_op, compare
from kernels.decay_exp import decay_exp
from reference import decay_exp as R


def make_inputs(lead, D, dtype=torch.float32, device="cpu", seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    base = -6 + 5 * torch.rand(D, generator=gen, dtype=torch.float64)   # the model's time_decay range
    d = torch.randn(*lead, D, generator=gen, dtype=torch.float64)
    return {"base": base.float().to(device).requires_grad_(grad), "d": d.to(dtype).to(device).requires_grad_(grad)}


def test_reference_matches_model_formulation():
    inp = make_inputs((3, 4), 10, grad=False)
    want = (-torch.exp(inp["base"].float() + inp["d"].float())).to(torch.bfloat16)
    torch.testing.assert_close(R.decay_exp(inp["base"], inp["d"], torch.bfloat16), want, rtol=0, atol=0)


@pytest.mark.parametrize("lead,D", [((2, 5), 37), ((9,), 70), ((1,), 1), ((3, 1), 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel(lead, D, dtype):
    check_op(decay_exp, R.decay_exp, make_inputs(lead, D, dtype), bound=bound_for(dtype), context=f"{lead} {D}")


def test_out_dtype_and_determinism():
    inp = make_inputs((7, 3), 20)
    lw = decay_exp(**inp, dtype=torch.float16)
    assert lw.dtype == torch.float16
    errs = compare(lambda **k: decay_exp(**k, dtype=torch.float16), lambda **k: R.decay_exp(**k), inp)
    assert max(errs.values()) < 2e-3, errs
    assert_deterministic(decay_exp, inp)


def test_opcheck_and_bad_input():
    from torch.library import opcheck
    inp = make_inputs((4,), 8)
    opcheck(torch.ops.groundthink.decay_exp_fwd.default, (inp["base"], inp["d"], torch.float16))
    with pytest.raises(ValueError, match="base must have shape"):
        decay_exp(inp["base"][:5], inp["d"])
    with pytest.raises(TypeError, match="dtype must be"):
        decay_exp(inp["base"], inp["d"], torch.float64)


@pytest.mark.gpu
def test_gpu_bf16_vs_eager():
    for lead, D in (((64, 256), 128), ((16, 1024), 512)):
        inp = make_inputs(lead, D, torch.bfloat16, device="cuda")
        ours = compare(decay_exp, R.decay_exp, inp, ref_device="cuda")
        eager = compare(lambda base, d: (-torch.exp(base.float() + d.float())).to(d.dtype), R.decay_exp, inp,
                        ref_device="cuda")
        for k in ours:
            assert ours[k] <= 2 * eager[k] + 1e-6, f"{k}: ours {ours[k]:.3g} eager {eager[k]:.3g}"
