"""Host time per call of the glue ops (CPU machine, Triton launches stubbed to no-ops) beside their PyTorch references.

    PYTHONPATH=. python scripts/glue_host_us.py [op ...]

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
import kernels.cross_entropy  # noqa: F401
import kernels.ddlerp  # noqa: F401
import kernels.decay_exp  # noqa: F401
import kernels.gate_norm_residual  # noqa: F401
import kernels.norm_gate  # noqa: F401
import kernels.shift_lerp  # noqa: F401
from reference import cross_entropy as r_ce, ddlerp as r_dd, decay_exp as r_de, gate_norm_residual as r_gnr, \
    norm_gate as r_ng, shift_lerp as r_sl

M = sys.modules


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_launches() -> None:
    for mod, names in (("kernels.decay_exp.decay_exp", ["_decay_exp_fwd_kernel", "_decay_exp_bwd_kernel"]),
                       ("kernels.shift_lerp.shift_lerp", ["_shift_lerp_fwd_kernel", "_shift_lerp_bwd_kernel"]),
                       ("kernels.ddlerp.ddlerp", ["_ddlerp_fwd_kernel", "_ddlerp_bwd_rows_kernel"]),
                       ("kernels.norm_gate.norm_gate", ["_norm_gate_fwd_kernel", "_norm_gate_bwd_kernel"]),
                       ("kernels.cross_entropy.cross_entropy", ["_ce_fwd_kernel"])):
        for name in names:
            if hasattr(M[mod], name):
                setattr(M[mod], name, _NoLaunch())
    gnr = M["kernels.gate_norm_residual.kernel"]
    gnr._launch_fwd.kernel = gnr._launch_bwd.kernel = _NoLaunch()


def _t(*shape, grad=True):
    return torch.randn(*shape).requires_grad_(grad)


CASES = {
    "decay_exp": (lambda: M["kernels.decay_exp.decay_exp"].decay_exp, r_de.decay_exp,
                  lambda: dict(base=_t(8), d=_t(4, 8))),
    "shift_lerp": (lambda: M["kernels.shift_lerp.shift_lerp"].shift_lerp, r_sl.shift_lerp,
                   lambda: dict(x=_t(2, 4, 8), mu=_t(8))),
    "ddlerp": (lambda: M["kernels.ddlerp.ddlerp"].ddlerp, r_dd.ddlerp,
               lambda: dict(x=_t(2, 4, 8), m=_t(5, 2, 4, 8), maa=_t(5, 8))),
    "norm_gate": (lambda: M["kernels.norm_gate.norm_gate"].norm_gate, r_ng.norm_gate,
                  lambda: dict(x=_t(8, 8), z=_t(8, 8), weight=_t(8), bias=_t(8), group_size=4)),
    "cross_entropy": (lambda: M["kernels.cross_entropy.cross_entropy"].cross_entropy, r_ce.cross_entropy,
                      lambda: dict(logits=_t(8, 11), targets=torch.randint(0, 11, (8,)))),
    "gate_norm_residual": (lambda: M["kernels.gate_norm_residual.kernel"].gate_norm_residual,
                           r_gnr.gate_norm_residual,
                           lambda: dict(x=_t(4, 8), a=_t(4, 8), b=_t(4, 8), gate=_t(4, 1), weight=_t(8), mode="row",
                                        gate_logits=True)),
}


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
    torch.set_num_threads(1)
    stub_launches()
    print(f"host µs per call, launches stubbed (torch {torch.__version__}); lab / reference")
    print(f"{'op':20s} {'fwd':>15s} {'fwd+bwd':>17s}")
    for name in ops:
        lab, ref, make = CASES[name]
        lf, lfb = steps(lab(), make())
        rf, rfb = steps(ref, make())
        a, b, c, d = best_us([lf, lfb, rf, rfb])
        print(f"{name:20s} {a:6.1f} / {c:6.1f}   {b:6.1f} / {d:6.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
