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
