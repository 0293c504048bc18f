"""kernels._eager: an eager glue-op call runs the custom op's implementation and formula through a plain
autograd.Function (no dispatcher), with results bit-identical to the custom op path (what torch.compile traces);
under torch.compile the custom ops are still what runs. CPU: Triton interpreter, tiny shapes."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401
from groundthink.spec import eager_cases, load

CASES = eager_cases()       # every op's EagerCase (kernels/<op>/spec.py): the ops on kernels._eager.EagerOp


def _t(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed + len(shape) * 7 + sum(shape))
    return torch.randn(*shape, generator=g).requires_grad_(grad)


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
    spec, case = CASES[name]
    public = spec.impl(case.impl).load()

    def fn(**k):
        return public(**k, **case.call)
    eager_op, op_args = load(case.eager_op), case.op_args
    inputs = case.inputs(_t)
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
    """Under torch.compile the custom op is what runs (one case: the smallest)."""
    spec, case = min(CASES.values(), key=lambda sc: sum(v.numel() for v in sc[1].inputs(_t).values()))
    public, inputs = spec.impl(case.impl).load(), case.inputs(_t)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(lambda **k: public(**k, **case.call), backend=backend, fullgraph=True)(**inputs)
    assert load(case.eager_op).fwd_op._qualname.replace("::", ".") in graphs[0].code
    torch.testing.assert_close(got, public(**inputs, **case.call), rtol=0, atol=0)
