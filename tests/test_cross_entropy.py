"""kernels.cross_entropy (loss and dlogits in one pass) against reference/cross_entropy.py (= F.cross_entropy on
fp32 logits). CPU: Triton interpreter (V split in 32-wide chunks), fp32 and fp16 logits, ignored targets, strided
rows, NaN-prefilled buffers; the mean finished in the kernel (37 rows: a 7-group tree)."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401
from groundthink.harness import bound_for, check_op, compare
from kernels.cross_entropy import cross_entropy
from reference import cross_entropy as R


def make_inputs(N, V, dtype=torch.float32, device="cpu", seed=0, ignore=True):
    gen = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(N, V, generator=gen, dtype=torch.float64)).to(dtype).to(device).requires_grad_()
    t = torch.randint(0, V, (N,), generator=gen)
    if ignore and N > 2:
        t[1] = -100
    return {"logits": x, "targets": t.to(device)}


@pytest.mark.parametrize("N,V", [(7, 37), (5, 97), (3, 1), (4, 200), (1, 64), (37, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_loss_and_grad(N, V, dtype):
    check_op(cross_entropy, R.cross_entropy, make_inputs(N, V, dtype), bound=bound_for(dtype), context=f"{N} {V}")


def test_strided_rows_int32_targets_and_ignore_index():
    base = torch.randn(2, 5, 40, requires_grad=True)
    t = torch.randint(0, 30, (10,), dtype=torch.int32)
    t[3] = 7
    fn = lambda base, targets: cross_entropy(base[..., :30].reshape(10, 30), targets, ignore_index=7)  # noqa: E731
    ref = lambda base, targets: R.cross_entropy(base[..., :30].reshape(10, 30), targets, ignore_index=7)  # noqa
    check_op(fn, ref, {"base": base, "targets": t})


def test_no_grad_and_scaled_backward():
    inp = make_inputs(6, 50)
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy(**inp), R.cross_entropy(**inp), rtol=1e-6, atol=1e-6)
    (3.5 * cross_entropy(**inp)).backward()
    x2 = inp["logits"].detach().clone().requires_grad_()
    (3.5 * R.cross_entropy(x2, inp["targets"])).backward()
    torch.testing.assert_close(inp["logits"].grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_opcheck_and_bad_input():
    from torch.library import opcheck
    inp = make_inputs(4, 20)
    opcheck(torch.ops.groundthink.cross_entropy_fwd.default, (inp["logits"], inp["targets"], -100, True))
    with pytest.raises(ValueError, match="targets must have shape"):
        cross_entropy(inp["logits"], inp["targets"][:3])
    with pytest.raises(TypeError, match="targets has dtype"):
        cross_entropy(inp["logits"], inp["targets"].float())


@pytest.mark.gpu
def test_gpu_bf16_vs_eager():
    for N, V in ((16384, 97), (4096, 50304)):
        inp = make_inputs(N, V, torch.bfloat16, device="cuda")
        ours = compare(cross_entropy, R.cross_entropy, inp, ref_device="cuda")
        eager = compare(lambda logits, targets: torch.nn.functional.cross_entropy(logits.float(), targets),
                        R.cross_entropy, inp, ref_device="cuda")
        for k in ours:
            assert ours[k] <= 2 * eager[k] + 1e-6, f"{N} {V} {k}: ours {ours[k]:.3g} eager {eager[k]:.3g}"
