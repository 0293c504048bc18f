"""kernels.lowrank (RWKV-6's tanh(x W1) W2 low-rank terms, optionally −exp(base + ·)) against reference/lowrank.py.
CPU: Triton interpreter, fp32 and fp16 (bf16 dots are not exact there), odd sizes, NaN-prefilled outputs, the
model's tiny-code regime (|x W1| ~ 1e-3, where tanh must not cancel) and saturated codes (|x W1| ≫ 1, where
1 − tanh² must not); the reference against the model's original lines."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401
from groundthink.harness import assert_deterministic, bound_for, check_op
from kernels.lowrank import lowrank
from reference import lowrank as R


def make_inputs(lead, D, G, Rk, N, base=False, dtype=torch.float32, scale=1.0, seed=0, grad=True):
    """x [*lead, D], w1 [D, G·R], w2 [G, R, N] (G None: [R, N]); codes x w1 of size ~scale."""
    gen = torch.Generator().manual_seed(seed)
    out = {"x": torch.randn(*lead, D, generator=gen, dtype=torch.float64),
           "w1": scale * torch.randn(D, (G or 1) * Rk, generator=gen, dtype=torch.float64) / D ** 0.5,
           "w2": torch.randn(*((G,) if G else ()), Rk, N, generator=gen, dtype=torch.float64) / Rk ** 0.5}
    out = {k: v.to(dtype) for k, v in out.items()}
    if base:
        out["base"] = -6 + 5 * torch.rand(N, generator=gen, dtype=torch.float64).float()
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def test_reference_matches_model_formulation():
    """The model's two chains as RWKV-LM writes them (fused/blocks.py before this op)."""
    inp = make_inputs((2, 3), 12, 5, 4, 12, grad=False)
    x, w1, w2 = inp["x"], inp["w1"], inp["w2"]
    h = torch.tanh(x @ w1).view(6, 5, 4).transpose(0, 1)                      # RWKV-LM: view(5, …) then bmm
    torch.testing.assert_close(R.lowrank(x, w1, w2), torch.bmm(h, w2).view(5, 2, 3, 12), rtol=0, atol=1e-6)
    d = make_inputs((7,), 12, None, 4, 12, base=True, grad=False)
    want = (-torch.exp(d["base"] + torch.tanh(d["x"] @ d["w1"]) @ d["w2"])).to(torch.bfloat16)
    torch.testing.assert_close(R.lowrank(**d, dtype=torch.bfloat16), want, rtol=0, atol=0)


CASES = [((2, 37), 40, 5, 8, 40, False, 1.0), ((70,), 24, None, 16, 24, True, 1.0),   # odd rows: masked tiles
         ((3, 11), 33, 3, 5, 20, False, 1.0), ((5,), 130, 2, 16, 72, False, 1.0),     # D, N past one tile
         ((9, 10), 40, 5, 8, 40, False, 1e-3), ((9, 10), 40, None, 16, 40, True, 1e-3),  # the model's tiny codes
         ((33,), 16, 2, 16, 16, False, 30.0)]                                          # saturated tanh


@pytest.mark.parametrize("lead,D,G,Rk,N,base,scale", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel(lead, D, G, Rk, N, base, scale, dtype):
    if dtype == torch.float16 and scale == 30.0:
        pytest.skip("fp16 codes of 30 overflow nothing but say nothing new")
    check_op(lowrank, R.lowrank, make_inputs(lead, D, G, Rk, N, base, dtype, scale), bound=bound_for(dtype),
             context=f"{lead} D{D} G{G} R{Rk} N{N} base={base} scale={scale}")


def test_determinism_and_out_dtype():
    inp = make_inputs((7, 3), 20, 2, 8, 20)
    assert lowrank(**inp, dtype=torch.float16).dtype == torch.float16
    assert_deterministic(lowrank, inp)


def test_autocast_casts_like_matmul():
    """Under CPU autocast (bf16) the inputs are cast first, as x @ w1 would; the output is bf16 (the op itself is
    stubbed: the interpreter's bf16 dots are not exact)."""
    import sys
    inp = make_inputs((4,), 16, 2, 8, 16, grad=False)
    seen = {}

    def fake(x, w1, w2, base, dtype):
        seen.update(x=x.dtype, w1=w1.dtype, w2=w2.dtype, out=dtype)
        return torch.zeros(w2.shape[0], x.shape[0], w2.shape[2], dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys.modules["kernels.lowrank.lowrank"], "_lowrank", fake)
        y = lowrank(**inp)
    assert seen == {"x": torch.bfloat16, "w1": torch.bfloat16, "w2": torch.bfloat16, "out": torch.bfloat16}
    assert y.dtype == torch.bfloat16
    d = make_inputs((4,), 16, None, 8, 16, base=True, grad=False)         # fp32 x; the reference agrees (review)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert R.lowrank(**d).dtype == torch.bfloat16


def test_weights_cast_to_x_dtype():
    """Outside autocast (the gate measures the step's calls that way) fp32 weights beside fp16 x: the products in
    fp16, the weights' gradients in fp32 — as the reference."""
    inp = make_inputs((6,), 16, 2, 8, 16)
    inp["x"] = inp["x"].detach().half().requires_grad_()
    errs = check_op(lowrank, R.lowrank, inp, bound=bound_for(torch.float16))
    assert set(errs) == {"out0", "dx", "dw1", "dw2"}
    y = lowrank(**inp)
    y.float().sum().backward()
    assert y.dtype == torch.float16 and inp["w1"].grad.dtype == torch.float32 and inp["x"].grad.dtype == torch.float16


def test_opcheck_and_bad_input():
    from torch.library import opcheck
    inp = make_inputs((4,), 8, 2, 4, 8)
    opcheck(torch.ops.groundthink.lowrank_fwd.default, (inp["x"], inp["w1"], inp["w2"], None, torch.float32))
    with pytest.raises(ValueError, match="w1 must be"):
        lowrank(inp["x"], inp["w1"][:, :6], inp["w2"])
    with pytest.raises(ValueError, match="w1 must be"):
        lowrank(inp["x"][:, :5], inp["w1"], inp["w2"])
    with pytest.raises(ValueError, match="base must have shape"):
        lowrank(inp["x"], inp["w1"], inp["w2"], base=torch.zeros(8))               # two groups
    with pytest.raises(TypeError, match="dtype must be"):
        lowrank(**inp, dtype=torch.float64)
    with pytest.raises(ValueError, match="expected"):
        lowrank(inp["x"], inp["w1"][0], inp["w2"])


GPU_SHAPES = [(16384, 128, 5, 32, 128, False), (16384, 128, None, 64, 128, True), (16384, 512, 5, 32, 512, False),
              (4096, 512, None, 64, 512, True)]


@pytest.mark.gpu
@pytest.mark.parametrize("M,D,G,Rk,N,base", GPU_SHAPES)
def test_gpu_bf16(M, D, G, Rk, N, base):
    """bf16 on the GPU's tensor cores, the models' shapes: within the bf16 bound of fp64, and no worse than twice
    the unfused bf16 chain's own error (the reference run in bf16)."""
    from groundthink.harness import compare
    inp = {k: v.cuda().detach().requires_grad_() for k, v in
           make_inputs((M,), D, G, Rk, N, base, torch.bfloat16, scale=1.0).items()}
    ours = compare(lowrank, R.lowrank, inp, ref_device="cuda")
    eager = compare(R.lowrank, R.lowrank, inp, ref_device="cuda")
    assert max(ours.values()) <= bound_for(torch.bfloat16), ours
    for k in ours:
        assert ours[k] <= 2 * eager[k] + 1e-6, f"{k}: ours {ours[k]:.3g} eager {eager[k]:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
@pytest.mark.parametrize("M,D,G,Rk,N,base", [GPU_SHAPES[0], GPU_SHAPES[3]])
def test_gpu_fp32(M, D, G, Rk, N, base, scale):
    """fp32 on the GPU ("ieee" dots, the hardware's approximate exp in tanh): the fp32 bound, tiny to saturated
    codes."""
    inp = {k: v.cuda().detach().requires_grad_() for k, v in
           make_inputs((M // 4,), D, G, Rk, N, base, torch.float32, scale=scale).items()}
    check_op(lowrank, R.lowrank, inp, bound=bound_for(torch.float32), ref_device="cuda")
