"""kernels.ffn (the MLP act(x W_upᵀ) W_downᵀ, act in the GEMMs' epilogues) against reference/ffn.py.
CPU: Triton interpreter, fp32 and fp16 (bf16 dots are not exact there), odd sizes (M odd, D not a multiple of 16,
F past one tile), both activations, large pre-activations (GELU's tails, relu2's growth), NaN-prefilled outputs;
the reference against the model's original lines."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels  # noqa: F401
from groundthink.harness import assert_deterministic, bound_for, check_op
from kernels.ffn import ffn
from reference import ffn as R


def make_inputs(lead, D, Fh, dtype=torch.float32, scale=1.0, seed=0, grad=True):
    """x [*lead, D], w_up [F, D], w_down [D, F]; pre-activations x W_upᵀ of size ~scale."""
    gen = torch.Generator().manual_seed(seed)
    out = {"x": torch.randn(*lead, D, generator=gen, dtype=torch.float64),
           "w_up": scale * torch.randn(Fh, D, generator=gen, dtype=torch.float64) / D ** 0.5,
           "w_down": torch.randn(D, Fh, generator=gen, dtype=torch.float64) / Fh ** 0.5}
    return {k: v.to(dtype).requires_grad_(grad) for k, v in out.items()}


def test_reference_matches_model_formulation():
    """fused/blocks.py's FFN before this op: down(act(up(x))) with bias-free nn.Linear."""
    inp = make_inputs((2, 3), 12, 48, grad=False)
    up, down = torch.nn.Linear(12, 48, bias=False).double(), torch.nn.Linear(48, 12, bias=False).double()
    with torch.no_grad():
        up.weight.copy_(inp["w_up"].double()), down.weight.copy_(inp["w_down"].double())
    x = inp["x"].double()
    torch.testing.assert_close(R.ffn(x, up.weight, down.weight), down(F.gelu(up(x))), rtol=0, atol=0)
    torch.testing.assert_close(R.ffn(x, up.weight, down.weight, act="relu2"), down(torch.relu(up(x)).square()),
                               rtol=0, atol=0)


CASES = [((37,), 40, 72, 1.0), ((3, 11), 16, 64, 1.0),     # odd rows, D not a multiple of 16; exact tiles
         ((5,), 64, 40, 6.0)]                               # K past one tile, F not a power of 2; large |h|


@pytest.mark.parametrize("lead,D,Fh,scale", CASES)
@pytest.mark.parametrize("act", ["gelu", "relu2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel(lead, D, Fh, scale, act, dtype):
    check_op(lambda **k: ffn(**k, act=act), lambda **k: R.ffn(**k, act=act),
             make_inputs(lead, D, Fh, dtype, scale), bound=bound_for(dtype),
             context=f"{lead} D{D} F{Fh} {act} scale={scale}")


def test_determinism_and_empty():
    inp = make_inputs((7, 3), 20, 36)
    assert_deterministic(ffn, inp)
    e = make_inputs((0,), 20, 36)
    y = ffn(**e)
    y.sum().backward()
    assert y.shape == (0, 20) and e["w_up"].grad.abs().sum() == 0 and e["w_down"].grad.abs().sum() == 0


def test_autocast_casts_like_linear():
    """Under CPU autocast (bf16) the inputs are cast first, as nn.Linear would; the output is bf16 (the op itself
    is stubbed: the interpreter's bf16 dots are not exact). The reference agrees on the dtype."""
    import sys
    inp = make_inputs((4,), 16, 32, grad=False)
    seen = {}

    def fake(x, w_up, w_down, act):
        seen.update(x=x.dtype, w_up=w_up.dtype, w_down=w_down.dtype, act=act)
        return torch.zeros(x.shape[0], w_down.shape[0], dtype=x.dtype), None, None
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys.modules["kernels.ffn.ffn"], "_ffn", fake)
        y = ffn(**inp, act="relu2")
    assert seen == {"x": torch.bfloat16, "w_up": torch.bfloat16, "w_down": torch.bfloat16, "act": "relu2"}
    assert y.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert R.ffn(**inp).dtype == torch.bfloat16


def test_weights_cast_to_x_dtype():
    """Outside autocast (the gate measures the step's calls that way) fp32 weights beside fp16 x: the products in
    fp16, the weights' gradients in fp32 — as the reference."""
    inp = make_inputs((6,), 16, 32)
    inp["x"] = inp["x"].detach().half().requires_grad_()
    errs = check_op(ffn, R.ffn, inp, bound=bound_for(torch.float16))
    assert set(errs) == {"out0", "dx", "dw_up", "dw_down"}
    y = ffn(**inp)
    y.float().sum().backward()
    assert y.dtype == torch.float16 and inp["w_up"].grad.dtype == torch.float32
    assert inp["x"].grad.dtype == torch.float16


def test_opcheck_and_bad_input():
    from torch.library import opcheck
    inp = make_inputs((4,), 8, 16)
    opcheck(torch.ops.groundthink.ffn_fwd.default, (inp["x"], inp["w_up"], inp["w_down"], "gelu"))
    with pytest.raises(ValueError, match="act must be one of"):
        ffn(**inp, act="silu")
    with pytest.raises(ValueError, match="w_up must be"):
        ffn(inp["x"], inp["w_up"][:, :5], inp["w_down"])
    with pytest.raises(ValueError, match="w_up must be"):
        ffn(inp["x"], inp["w_up"], inp["w_down"][:, :6])
    with pytest.raises(ValueError, match="expected"):
        ffn(inp["x"], inp["w_up"][0], inp["w_down"])
    with pytest.raises(TypeError, match="dtype"):
        ffn(inp["x"].double(), inp["w_up"], inp["w_down"])


@pytest.mark.parametrize("act", ["gelu", "relu2"])
def test_dact_h_early_variants(act):
    """The dact kernel's HE constexpr (how many of its two saved-h column halves are loaded before the K loop; the
    GPU's autotune configs take 0, 1 and 2, the interpreter's one config 1): every value gives dH within the fp32
    bound of fp64 (dY W_down) ⊙ act'(h), at sizes crossing every tile edge (the last column tile's second half
    fully masked), into a NaN-filled output."""
    import importlib

    from kernels._common import cdiv
    mod = importlib.import_module("kernels.ffn.ffn")
    M, D, Fh = 37, 40, 72
    gen = torch.Generator().manual_seed(1)
    dy, w_down, h = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((M, D), (D, Fh), (M, Fh)))
    h = 3 * h
    d = (torch.special.ndtr(h) + h * torch.exp(-0.5 * h * h) / (2 * torch.pi) ** 0.5 if act == "gelu"
         else 2 * h.clamp_min(0))
    ref = (dy @ w_down) * d
    grid = (cdiv(M, 32) * cdiv(Fh, 32),)
    for he in (0, 1, 2):
        dh = torch.full((M, Fh), float("nan"))
        mod._ffn_dact_kernel.fn[grid](dy.float(), w_down.float(), h.float(), dh, M, Fh, D, ACT=mod._ACT[act],
                                      PREC="ieee", BM=32, BN=32, BK=16, HE=he)
        err = ((dh.double() - ref).norm() / ref.norm()).item()
        assert err <= bound_for(torch.float32), f"HE={he} {act}: {err:.3g}"


GPU_SHAPES = [(16384, 128, 512), (16384, 512, 2048)]


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["gelu", "relu2"])
@pytest.mark.parametrize("M,D,Fh", GPU_SHAPES)
def test_gpu_bf16(M, D, Fh, act):
    """bf16 on the GPU's tensor cores, the models' shapes: within the bf16 bound of fp64, and no worse than twice
    the unfused bf16 chain's own error (the reference run in bf16)."""
    from groundthink.harness import compare
    inp = {k: v.cuda().detach().requires_grad_() for k, v in make_inputs((M,), D, Fh, torch.bfloat16).items()}
    fn, ref = (lambda **k: ffn(**k, act=act)), (lambda **k: R.ffn(**k, act=act))
    ours = compare(fn, ref, inp, ref_device="cuda")
    eager = compare(ref, ref, inp, ref_device="cuda")
    assert max(ours.values()) <= bound_for(torch.bfloat16), ours
    for k in ours:
        assert ours[k] <= 2 * eager[k] + 1e-6, f"{k}: ours {ours[k]:.3g} eager {eager[k]:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["gelu"])
def test_gpu_fp32(act):
    """fp32 on the GPU ("ieee" dots): the fp32 bound, odd sizes, large pre-activations (GELU only: each (dtype, act)
    compiles both kernels' 8 autotune configs; relu2's epilogue is checked in bf16 above and in fp32 on CPU)."""
    inp = {k: v.cuda().detach().requires_grad_() for k, v in make_inputs((1001,), 200, 700, scale=4.0).items()}
    check_op(lambda **k: ffn(**k, act=act), lambda **k: R.ffn(**k, act=act), inp, bound=bound_for(torch.float32),
             ref_device="cuda")
