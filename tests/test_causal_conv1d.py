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
