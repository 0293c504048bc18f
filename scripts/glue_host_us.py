"""Host time per call of the glue ops (CPU machine, Triton launches stubbed to no-ops) beside their PyTorch references.

    PYTHONPATH=. python scripts/glue_host_us.py [case ...]

The cases are the ops' ``EagerCase``s (``eager`` in kernels/<op>/spec.py, the inputs tests/test_eager_path.py
checks): every op on ``kernels._eager.EagerOp``, by the case's name (the op's; ddlerp_grouped).

What it isolates: everything an eager call costs on the host except the kernel launch itself (argument checks,
allocations, the autograd node, the custom-op dispatch, the backward's bookkeeping). Tiny CPU tensors (the
references' own arithmetic is negligible there), one intra-op thread, CPU time of this process (less sensitive to
other processes on a shared machine than the wall clock), the minimum over 40 rounds of 50 calls, lab and
reference interleaved. ``fwd``: a no-grad forward; ``fwd+bwd``: forward + ``torch.autograd.backward`` with
fixed cotangents, leaves' .grad cleared each call (what bench/'s fwd+bwd rows time).
"""
from __future__ import annotations

import sys
import time

import torch

import kernels  # noqa: F401  (the interpreter on a machine without CUDA)
from groundthink.spec import eager_cases

CASES = eager_cases()   # the glue ops on kernels._eager.EagerOp, each op's EagerCase (kernels/<op>/spec.py)


def _no_launch(*args, **kwargs):
    return None


def stub_launches() -> None:
    """Every Triton launch ``kernel[grid](...)`` (a JIT function's or an autotuner's) becomes a no-op."""
    from triton.runtime.jit import KernelInterface
    KernelInterface.__getitem__ = lambda self, grid: _no_launch


def _t(*shape, grad=True):
    return torch.randn(*shape).requires_grad_(grad)


def calls(name: str):
    """(lab, reference, inputs maker) of one case: the public functions; the inputs with the case's other keyword
    arguments."""
    spec, case = CASES[name]
    return spec.impl(case.impl).load(), spec.reference.load(), (lambda: {**case.inputs(_t), **case.call})


def _outs(r):
    return [o for o in (r if isinstance(r, (tuple, list)) else (r,)) if o.requires_grad]


def steps(fn, inputs):
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    cots = [torch.randn_like(o) for o in _outs(fn(**inputs))]

    def fwd():
        with torch.no_grad():
            fn(**inputs)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        torch.autograd.backward(_outs(fn(**inputs)), cots)

    return fwd, fwd_bwd


def best_us(calls, rounds: int = 40, n: int = 50) -> list[float]:
    for c in calls:
        for _ in range(10):
            c()
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, c in enumerate(calls):
            t0 = time.process_time()
            for _ in range(n):
                c()
            best[i] = min(best[i], (time.process_time() - t0) / n * 1e6)
    return best


def main(ops) -> None:
    unknown = [n for n in ops if n not in CASES]
    if unknown:
        sys.exit(f"glue_host_us: unknown case {', '.join(unknown)}; accepted: {', '.join(CASES)}")
    torch.set_num_threads(1)
    stub_launches()
    print(f"host µs per call, launches stubbed (torch {torch.__version__}); lab / reference")
    print(f"{'op':20s} {'fwd':>15s} {'fwd+bwd':>17s}")
    for name in ops:
        lab, ref, make = calls(name)
        lf, lfb = steps(lab, make())
        rf, rfb = steps(ref, make())
        a, b, c, d = best_us([lf, lfb, rf, rfb])
        print(f"{name:20s} {a:6.1f} / {c:6.1f}   {b:6.1f} / {d:6.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
