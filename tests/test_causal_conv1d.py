"""reference.causal_conv1d: the depthwise causal conv against its definition in float64 (the CPU path of
``ops.causal_conv1d``; causal-conv1d's CUDA kernel, the peer, is checked against it by the benchmark rows)."""
import pytest
import torch

from reference.causal_conv1d import causal_conv1d

F64 = torch.float64


def test_causal_conv1d_reference_matches_its_definition():
    """out[:, c, t] = Σ_k w[c, k] · x[:, c, t − (W − 1) + k] + bias[c] (x = 0 before the start), then SiLU."""
    gen = torch.Generator().manual_seed(0)
    b, c, t, w = 2, 5, 9, 4
    x, wt, bias = (torch.randn(*s, generator=gen, dtype=F64) for s in ((b, c, t), (c, w), (c,)))
    want = torch.zeros(b, c, t, dtype=F64)
    for i in range(t):
        for k in range(w):
            if i - (w - 1) + k >= 0:
                want[:, :, i] += wt[:, k] * x[:, :, i - (w - 1) + k]
    want += bias[:, None]
    torch.testing.assert_close(causal_conv1d(x, wt, bias), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(causal_conv1d(x, wt, bias, activation="silu"), torch.nn.functional.silu(want))
    with pytest.raises(ValueError, match="activation must be"):
        causal_conv1d(x, wt, bias, activation="relu")


@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv1d_reference_takes_fp32_parameters_with_a_bf16_input_as_the_peer_does(bias):
    """The step's call: a bf16 x (a [B, C, T] view) with the conv's fp32 weight and bias, outside autocast (as the
    gate measures it). Output in x's dtype, every gradient in its input's dtype, all within bf16 rounding of the
    float64 conv of the same values."""
    gen = torch.Generator().manual_seed(1)
    b, c, t, w = 2, 6, 11, 4
    x = torch.randn(b, t, c, generator=gen).to(torch.bfloat16).transpose(1, 2).requires_grad_()
    wt = (torch.randn(c, w, generator=gen) * 2).requires_grad_()
    bs = torch.randn(c, generator=gen).requires_grad_() if bias else None
    leaves = [x, wt] + ([bs] if bias else [])
    out = causal_conv1d(x, wt, bs, activation="silu")
    dy = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, leaves, dy.to(out.dtype))
    ref_leaves = [v.detach().to(F64).requires_grad_() for v in leaves]
    ref = causal_conv1d(*ref_leaves[:2], ref_leaves[2] if bias else None, activation="silu")
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.to(F64))
    assert out.dtype == torch.bfloat16 and [g.dtype for g in grads] == [v.dtype for v in leaves]
    for got, want in [(out, ref), *zip(grads, ref_grads)]:
        assert ((got.to(F64) - want).norm() / want.norm()).item() < 1e-2


def test_causal_conv1d_cl_rejects_what_it_does_not_run():
    """The adapter around causal-conv1d's kernels (kernels/causal_conv1d/adapter.py): the calls it does not run
    are one-line errors before any CUDA extension is touched."""
    from kernels.causal_conv1d.adapter import causal_conv1d as cl
    x, w = torch.zeros(1, 4, 5), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="activation"):
        cl(x, w, activation="relu")
    with pytest.raises(ValueError, match="not supported here"):
        cl(x, w, initial_states=torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="x \\[b, c, t\\] and weight"):
        cl(x, torch.zeros(5, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 77, 320, 4), (3, 256, 40, 4)])
def test_causal_conv1d_cl_equals_the_package(shape):
    """The adapter (one zero fill for dweight and dbias, dx into a gradient slot) against causal_conv1d_fn on the
    mixer's layout (a [b, c, t] view of a row-major [b, t, width] product, width > c), bf16 x with fp32 weight and
    bias: the output bit for bit, dx bit for bit, dweight / dbias to fp32 summation order (the package's kernel
    accumulates them with atomics)."""
    pytest.importorskip("causal_conv1d")
    from causal_conv1d import causal_conv1d_fn
    from kernels.causal_conv1d.adapter import causal_conv1d as cl
    B, T, C, W = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(B, T, C + 24, device="cuda", generator=g).to(torch.bfloat16)
    w = (torch.randn(C, W, device="cuda", generator=g) * 0.5)
    b = torch.randn(C, device="cuda", generator=g) * 0.1
    dy = torch.randn(B, T, C, device="cuda", generator=g).to(torch.bfloat16).transpose(1, 2)
    outs = []
    for fn in (causal_conv1d_fn, cl):
        xt = base[..., 8:8 + C].transpose(1, 2).detach().requires_grad_()     # the mixer's layout
        ww, bb = w.clone().requires_grad_(), b.clone().requires_grad_()
        y = fn(xt, ww, bb, activation="silu")
        y.backward(dy)
        outs.append((y, xt.grad, ww.grad, bb.grad))
    (y0, dx0, dw0, db0), (y1, dx1, dw1, db1) = outs
    assert torch.equal(y0, y1) and y0.stride() == y1.stride()
    assert torch.equal(dx0, dx1)
    torch.testing.assert_close(dw1, dw0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db1, db0, rtol=1e-5, atol=1e-5)
