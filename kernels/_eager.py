"""The eager path of the glue ops: their custom ops' own implementations under a plain ``autograd.Function``.

Every glue op is a ``torch.library.custom_op`` pair (forward, backward) with fake implementations and one
registered autograd formula (``setup_context`` + ``backward``): what torch.compile traces (opaque nodes) and
opcheck tests. Called eagerly, an op pays host time that its kernel does not: the dispatcher, the autograd
wrapper's redispatch, the dynamo-disable wrapper around the implementation, then all of it again for the
backward op (CPU, launches stubbed, decay_exp N4 D8, scripts/glue_host_us.py: 48–50 µs forward, 222–272 µs
forward + backward against 19–20 / 103–108 µs for the PyTorch reference; through this module 17–18 / 135–141).
On the GPU machine's slower host that was ~0.5 ms per fwd+bwd: the lab glue kernels lost to the reference in
the eager benchmark although their GPU time is a fraction of it.

``EagerOp(name, fwd_op, fwd_impl, setup_context, backward)`` registers the formula on ``fwd_op`` (the custom op's
autograd) and is called like the forward op. When nothing is being
traced (``traced``: no torch.compile / dynamo, plain tensors, not FakeTensor or functional tensors) it runs
``fwd_impl`` (the forward op's body) through an ``autograd.Function`` built from the same ``setup_context`` and
``backward``, or bare when no gradient is needed; the formula calls ``pick(bwd_op, bwd_impl, grad)`` for the
backward, which is the implementation itself on plain tensors. Same kernels, launches, saved tensors and
numerics; only the dispatch differs. Under a tracer the custom ops run as before. CUDA-graph capture records the
same launches either way (nothing here syncs or allocates).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.autograd.function import once_differentiable

__all__ = ["EagerOp", "pick", "traced"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def traced(t) -> bool:
    """True under torch.compile/dynamo or when ``t`` is a tensor subclass (FakeTensor, FunctionalTensor, …)."""
    return torch.compiler.is_compiling() or (t is not None and type(t) not in _PLAIN)


def pick(op: Callable, impl: Callable, t) -> Callable:
    """The backward to call from a registered formula: the op under a tracer, else its implementation."""
    return op if traced(t) else impl


class EagerOp:
    """Call like ``fwd_op``; see the module docstring."""

    def __init__(self, name: str, fwd_op: Callable, fwd_impl: Callable, setup_context: Callable,
                 backward: Callable):
        def forward(ctx, *args):   # ctx-first form: Function.apply binds no signature per call (setup_context does)
            out = fwd_impl(*args)
            out = tuple(out) if isinstance(out, list) else out
            setup_context(ctx, args, out)
            return out

        fwd_op.register_autograd(backward, setup_context=setup_context)   # the formula torch.compile traces
        self.fwd_op, self.fwd_impl = fwd_op, fwd_impl
        self.function = type(name, (torch.autograd.Function,), {   # no double backward (the ops have none either)
            "forward": staticmethod(forward), "backward": staticmethod(once_differentiable(backward))})

    def __call__(self, *args):
        if traced(args[0]):
            return self.fwd_op(*args)
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.function.apply(*args)
        out = self.fwd_impl(*args)
        return tuple(out) if isinstance(out, list) else out
