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


def _check_every_config(act, dtype, device, M, D, Fh, bound, small=()):
    """Both kernels launched raw (no autotuner) at every GPU autotune config (``_UP``, ``_DACT``) and the extra
    ``small`` ones, into NaN-filled outputs, against fp64 of the same (rounded) inputs: h and a = act(h) of the up
    kernel, dH = (dY W_down) ⊙ act'(h) of the dact kernel (h given, |h| up to ~9)."""
    import importlib

    from kernels._common import cdiv, dot_precision
    mod = importlib.import_module("kernels.ffn.ffn")
    gen = torch.Generator().manual_seed(1)
    x, w_up, dy, w_down, h = (torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype).to(device)
                              for s in ((M, D), (Fh, D), (M, D), (D, Fh), (M, Fh)))
    w_up, w_down, h = w_up / D ** 0.5, w_down / Fh ** 0.5, 3 * h        # exact in every dtype (powers of 2)
    x64, wu64, dy64, wd64, h64 = (t.double() for t in (x, w_up, dy, w_down, h))
    hh = x64 @ wu64.t()
    if act == "gelu":
        ref_a = hh * torch.special.ndtr(hh)
        d = torch.special.ndtr(h64) + h64 * torch.exp(-0.5 * h64 * h64) / (2 * torch.pi) ** 0.5
    else:
        ref_a, d = hh.clamp_min(0).square(), 2 * h64.clamp_min(0)
    ref_dh = (dy64 @ wd64) * d

    def err(o, r):
        return ((o.double() - r).norm() / r.norm()).item()
    kw = dict(ACT=mod._ACT[act], PREC=dot_precision(dtype))
    for cfg in [*mod._UP, *mod._DACT, *small]:
        name = "dact" if "HE" in cfg.kwargs else "up"
        grid = (cdiv(M, cfg.kwargs["BM"]) * cdiv(Fh, cfg.kwargs["BN"]),)
        opts = {**cfg.all_kwargs(), **kw}                   # as the autotuner launches it
        if name == "up":
            o_h, o_a = (torch.full((M, Fh), float("nan"), dtype=dtype, device=device) for _ in range(2))
            mod._ffn_up_kernel.fn[grid](x, w_up, o_h, o_a, M, Fh, D, 0, **opts)
            errs = {"h": err(o_h, hh), "a": err(o_a, ref_a)}
        else:
            o_dh = torch.full((M, Fh), float("nan"), dtype=dtype, device=device)
            mod._ffn_dact_kernel.fn[grid](dy, w_down, h, o_dh, M, Fh, D, 0, **opts)
            errs = {"dh": err(o_dh, ref_dh)}
        assert max(errs.values()) <= bound, f"{name} {cfg} {act}: {errs}"


def test_every_config():
    """Every GPU autotune config of both kernels (the interpreter's autotuner runs only its first, small one) and
    the dact kernel's HE 0 / 1 / 2 (how many saved-h column halves are loaded before its K loop) at the
    interpreter's tile, fp32, GELU (relu2's epilogue: test_kernel), sizes crossing tile edges (M 70 past BM
    64 and short of 128 / 256, F 136 past BN 64 / 128 with a fully masked second column half, K 72 past BK 64 and
    short of 128)."""
    import importlib
    cfg = importlib.import_module("kernels.ffn.ffn")._cfg
    _check_every_config("gelu", torch.float32, "cpu", 70, 72, 136, bound_for(torch.float32),
                        small=[cfg(32, 32, 16, 4, 1, HE=he) for he in (0, 1, 2)])


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


@pytest.mark.gpu
def test_gpu_every_config():
    """bf16 on the GPU, every autotune config of both kernels launched raw (the autotuner checks none of them; the
    bench and test_gpu_bf16 check only its pick): within the bf16 bound of fp64. The shapes' divisibility is the
    small model's, so the compiled variants are test_gpu_bf16's."""
    _check_every_config("gelu", torch.bfloat16, "cuda", 4096, 128, 512, bound_for(torch.bfloat16))
