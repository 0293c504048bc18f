"""causal-conv1d's CUDA kernels called with the training step's allocations (``causal_conv1d_cl``, a peer Impl).

    causal_conv1d(x, weight, bias=None, activation=None) -> y      (``causal_conv1d_fn``'s signature and results)

The package's own autograd path (``causal_conv1d.causal_conv1d_fn``, 1.7) allocates the weight and bias gradients
of its backward as two fp32 zero tensors (two fill kernels a call) and casts them back with ``type_as``. Here the
same two CUDA entry points (``causal_conv1d_cuda.causal_conv1d_fwd`` / ``_bwd``) run with:
* dweight and dbias as views of ONE fp32 zero buffer (one fill kernel a backward instead of two: the kernel
  accumulates into them);
* dx written into its gradient slot when a producer offers one (``kernels._slots``), else allocated as the
  package does (``empty_like(x)``: x's channel-last layout);
* no ``seq_idx``, initial or final states (the mixer's training path; the generation path uses the reference
  conv): a call that needs them is a one-line error pointing at ``causal_conv1d_fn``.
The kernels, their numerics (fp32 accumulation, fp32 dweight / dbias before the cast to the parameters' dtype)
and the output layout are the package's; only where the buffers come from differs. GPU only (the peer's CUDA
extension); CUDA-graph safe like the package (no host syncs).
"""
from __future__ import annotations

import torch

from kernels._slots import grad_slot


def _ext():
    import causal_conv1d_cuda           # the causal-conv1d wheel's compiled extension
    return causal_conv1d_cuda


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        bias = bias.contiguous() if bias is not None else None
        out = torch.empty_like(x)
        _ext().causal_conv1d_fwd(x, weight, bias, None, None, out, None, silu)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        if dout.stride(2) != 1 and dout.stride(1) != 1:
            dout = dout.contiguous()
        dx = grad_slot(x, contiguous=False)       # x's strides (channel-last or contiguous), as the kernel needs
        dx = torch.empty_like(x) if dx is None else dx
        C, W = weight.shape
        acc = torch.zeros(C * W + (C if bias is not None else 0), dtype=torch.float32, device=x.device)
        dweight = acc[:C * W].view(C, W)
        dbias = acc[C * W:] if bias is not None else None
        _ext().causal_conv1d_bwd(x, weight, bias, dout, None, None, None, dx, dweight, dbias, None, ctx.silu)
        dweight = dweight if weight.dtype == torch.float32 else dweight.to(weight.dtype)
        if dbias is not None and bias.dtype != torch.float32:
            dbias = dbias.to(bias.dtype)
        return dx, dweight, dbias, None


def causal_conv1d(x, weight, bias=None, activation=None, *, seq_idx=None, initial_states=None,
                  return_final_states=False):
    """Depthwise causal conv over time, causal-conv1d's kernels (module docstring): x ``[b, c, t]`` (channel-last
    or contiguous), weight ``[c, w]``, bias ``[c]`` or None, activation None or "silu" -> ``[b, c, t]``."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu'; got {activation!r}")
    if seq_idx is not None or initial_states is not None or return_final_states:
        raise ValueError("causal_conv1d (causal_conv1d_cl): seq_idx, initial states and final states are not "
                         "supported here; call causal_conv1d.causal_conv1d_fn for those")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: x [b, c, t] and weight [c, w] expected; got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    return _CausalConv1d.apply(x, weight, bias, activation is not None)
