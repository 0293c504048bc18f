"""kernels._eager: an eager glue-op call runs the custom op's implementation and formula through a plain
autograd.Function (no dispatcher), with results bit-identical to the custom op path (what torch.compile traces);
under torch.compile the custom ops are still what runs. CPU: Triton interpreter, tiny shapes."""
from __future__ import annotations

import sys

import pytest
import torch

import kernels  # noqa: F401
from kernels.cross_entropy import cross_entropy
from kernels.ddlerp import ddlerp
from kernels.decay_exp import decay_exp
from kernels.gate_norm_residual import gate_norm_residual
from kernels.norm_gate import norm_gate
from kernels.shift_lerp import shift_lerp


def _t(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed + len(shape) * 7 + sum(shape))
    return torch.randn(*shape, generator=g).requires_grad_(grad)


# (public function, its module's eager op attribute, inputs, the positional args of the custom op)
CASES = {
    "decay_exp": (decay_exp, "kernels.decay_exp.decay_exp", "_decay_exp",
                  lambda: dict(base=_t(9), d=_t(2, 3, 9)), lambda k: (k["base"], k["d"], torch.float32)),
    "shift_lerp": (shift_lerp, "kernels.shift_lerp.shift_lerp", "_shift_lerp",
                   lambda: dict(x=_t(2, 5, 9), mu=_t(9)), lambda k: (k["x"], k["mu"], None)),
    "ddlerp": (ddlerp, "kernels.ddlerp.ddlerp", "_ddlerp",
               lambda: dict(x=_t(1, 5, 5), m=_t(5, 1, 5, 5), maa=_t(5, 5)),
               lambda k: (k["x"], k["m"], k["maa"], None)),
    "ddlerp_grouped": (lambda **k: ddlerp(**k, order=(2, 0, 1, 3, 4)), "kernels.ddlerp.ddlerp", "_ddlerp_grouped",
                       lambda: dict(x=_t(1, 5, 5), m=_t(5, 1, 5, 5), maa=_t(5, 5)),
                       lambda k: (k["x"], k["m"], k["maa"], None, [2, 0, 1, 3, 4])),
    "norm_gate": (lambda **k: norm_gate(**k, group_size=3), "kernels.norm_gate.norm_gate", "_norm_gate",
                  lambda: dict(x=_t(5, 9), z=_t(5, 9), weight=_t(9), bias=_t(9)),
                  lambda k: (k["x"], k["z"], k["weight"], k["bias"], 3, 1e-5, "layer", True)),
    "cross_entropy": (lambda **k: cross_entropy(**k), "kernels.cross_entropy.cross_entropy", "_cross_entropy",
                      lambda: dict(logits=_t(7, 11), targets=torch.tensor([0, 3, -100, 10, 5, 5, 1])),
                      lambda k: (k["logits"], k["targets"], -100, True)),
    "gate_norm_residual": (lambda **k: gate_norm_residual(**k, mode="row", gate_logits=True),
                           "kernels.gate_norm_residual.kernel", "_gnr",
                           lambda: dict(x=_t(5, 9), a=_t(5, 9), b=_t(5, 9), gate=_t(5, 1), weight=_t(9)),
                           lambda k: (k["x"], k["a"], k["b"], k["gate"], k["weight"], None, "row", "rms", 1e-5,
                                      True, False)),
}


def _outs(r):
    return [o for o in (r if isinstance(r, (tuple, list)) else (r,)) if o.requires_grad]


def _fwd_bwd(call, inputs):
    leaves = [v for v in inputs.values() if v.requires_grad]
    for v in leaves:
        v.grad = None
    outs = _outs(call())
    torch.autograd.backward(outs, [torch.cos(torch.arange(o.numel(), dtype=o.dtype)).view(o.shape) for o in outs])
    return [o.detach().clone() for o in outs] + [v.grad.clone() for v in leaves]


@pytest.mark.parametrize("name", list(CASES))
def test_eager_path_matches_custom_op(name):
    fn, module, attr, make, op_args = CASES[name]
    eager_op = getattr(sys.modules[module], attr)
    inputs = make()
    outs = _outs(fn(**inputs))
    assert type(outs[0].grad_fn).__name__ == eager_op.function.__name__ + "Backward"   # not the dispatcher
    n_out = len(outs)                                      # the op may return more (stats): compare the public ones
    eager = _fwd_bwd(lambda: fn(**inputs), inputs)
    op = _fwd_bwd(lambda: _outs(eager_op.fwd_op(*op_args(inputs)))[:n_out], inputs)   # the op and its formula
    assert len(eager) == len(op)
    for e, o in zip(eager, op):
        assert torch.equal(e, o)
    def no_apply(*args):
        raise AssertionError("the autograd.Function ran although no gradient is needed")
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:   # no gradient needed: the implementation, bare
        mp.setattr(eager_op.function, "apply", no_apply)
        fn(**inputs)


def test_compile_traces_the_custom_op():
    inputs = CASES["decay_exp"][3]()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(lambda base, d: decay_exp(base, d), backend=backend, fullgraph=True)(**inputs)
    assert "groundthink.decay_exp_fwd" in graphs[0].code
    torch.testing.assert_close(got, decay_exp(**inputs), rtol=0, atol=0)
