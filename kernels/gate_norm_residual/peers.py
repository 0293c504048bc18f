"""Peers of the fused gate blend + residual + norm (benchmarks and the gate): ``torch.compile`` of the
reference, and fla's fused residual add + RMSNorm/LayerNorm after an eager blend. Factories: each returns the
callable (``Impl(..., factory=True)``).

``compiled_reference``: each call compiles its own copy of the reference (``dynamic=False``: one graph per
flavor — blend mode, dtypes, residual_fp32, grad mode, autocast — and shape). Two traps of dynamo it avoids:

* A call while a ``TorchDispatchMode`` is active (``groundthink.step.TrainStep``'s weight watch under autocast,
  the launch counters of scripts/count_step_ops.py) makes dynamo skip the frame AND mark its code object
  "skip" for good: every later call ran the reference eagerly (run 14, fu-fla: the step's 16 calls launched
  ≈ 33 eager kernels each, 1,669 launches and 12.05 ms of GPU vs 1,142 and 9.57 ms with the lab kernel, while
  the gate had timed the compiled graph). Such a call runs the plain reference here, outside dynamo.
* Dynamo keeps its compiled code and its recompile limit (8) per code object. Every instance compiles a copy of
  the reference's code object: its own cache and limit, freed with it, and no ``torch._dynamo.reset()`` (which
  dropped every compiled function of the process, the instances the gate or the step had built included).
"""
from __future__ import annotations

import functools
import types

import torch


def _own_copy(fn):
    """``fn`` with a code object of its own (dynamo's cache and recompile limit live on the code object)."""
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    own.__kwdefaults__, own.__qualname__, own.__doc__ = fn.__kwdefaults__, fn.__qualname__, fn.__doc__
    return own


def _dispatch_mode_active() -> bool:
    """A user (non-infra) ``TorchDispatchMode`` is active: dynamo would skip the frame and mark its code skipped
    for good."""
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode
    return not torch.compiler.is_compiling() and is_in_torch_dispatch_mode(include_infra_modes=False)


def compiled_reference(backend: str = "inductor"):
    """torch.compile of the reference, compiled afresh (its own code object: see the module docstring); under an
    active dispatch mode the plain reference. ``backend``: dynamo's (tests: "eager", no C++ build)."""
    from reference.gate_norm_residual import gate_norm_residual
    compiled = torch.compile(_own_copy(gate_norm_residual), dynamic=False, backend=backend)

    @functools.wraps(gate_norm_residual)
    def fn(*args, **kwargs):
        if _dispatch_mode_active():
            return gate_norm_residual(*args, **kwargs)
        return compiled(*args, **kwargs)

    return fn


def fla_blend_add_norm():
    """Eager blend of the branches in the input dtype, then fla's fused residual add + norm (prenorm)."""
    try:
        from fla.modules.norm.layernorm import layer_norm, rms_norm
    except ImportError:
        from fla.modules.layernorm import layer_norm, rms_norm

    def fn(x, a, b=None, gate=None, *, weight, bias=None, mode="add", norm="rms", eps=1e-5, gate_logits=False,
           residual_fp32=False, gate_bias=None):
        if gate_bias is not None:
            gate = gate + gate_bias
        if mode == "add":
            branch = a
        elif mode == "weights":
            branch = gate[0] * a + gate[1] * b
        else:
            gg = torch.sigmoid(gate) if gate_logits else gate
            branch = gg * a + (1 - gg) * b
        f = rms_norm if norm == "rms" else layer_norm
        y, h = f(branch, weight, bias, residual=x, eps=eps, prenorm=True, residual_in_fp32=residual_fp32)
        return h, y

    return fn
