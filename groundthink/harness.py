"""The correctness harness: one way to say "this kernel is right".

``compare(fn, ref, inputs)`` runs ``fn`` on the inputs as given and ``ref`` on float64 copies of them,
back-propagates the same random cotangents (rounded to the output's dtype) through both, and returns the relative error
``‖out − ref‖ / ‖ref‖`` (computed in float64) of every output and of the gradient of every input that requires
one. ``assert_close_all`` turns that into a test with the dtype's bound. NaN or Inf anywhere is an infinite error.
While ``fn`` runs, every kernel output starts NaN-filled (``kernels._common.nan_prefill``), so an element a
kernel never writes cannot pass.

``fwd_bwd_step(fn, inputs)`` is the forward + backward with fixed random cotangents that the gate, the benchmarks
and the background compile time or dry-run (one definition: it lives here, below every caller).

Bounds are stated once, here. They are the relative RMS errors a correct kernel with fp32 accumulation reaches
against float64; an op whose issue sets a tighter bar passes it explicitly.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

# Relative error bounds by input dtype (fp32: exact fp32 math with ieee dots; half types: rounding of I/O).
BOUNDS: dict[torch.dtype, float] = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 5e-3,
}


def bound_for(dtype: torch.dtype) -> float:
    return BOUNDS[dtype]


def rel_err(out: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; inf if out has NaN/Inf or is missing; absolute error if ref is 0."""
    if out is None and ref is None:
        return 0.0
    if out is None or ref is None:
        return math.inf
    if out.shape != ref.shape:
        raise AssertionError(f"shape mismatch: {tuple(out.shape)} vs reference {tuple(ref.shape)}")
    o = out.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    if not torch.isfinite(o).all():
        return math.inf
    den = r.norm().item()
    num = (o - r).norm().item()
    return num / den if den > 0 else num


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _clone_inputs(inputs: Mapping[str, object], dtype: torch.dtype | None, device=None) -> dict:
    """Detached copies of the inputs (gradient flags kept); with ``dtype`` their floating tensors in it, and an
    output-dtype argument (decay_exp's ``dtype``) becomes it too (the float64 oracle computes in float64)."""
    out = {}
    for name, v in inputs.items():
        if isinstance(v, torch.Tensor):
            t = v.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            if device is not None:
                t = t.to(device)
            out[name] = t.requires_grad_(v.requires_grad)
        elif dtype is not None and isinstance(v, torch.dtype):
            out[name] = dtype
        else:
            out[name] = v
    return out


def compare(fn: Callable, ref: Callable, inputs: Mapping[str, object], *, ref_device: str | None = None,
            seed: int = 0, backward: bool = True, floors: dict | None = None) -> dict[str, float]:
    """Errors of ``fn(**inputs)`` against ``ref(**float64 inputs)``, outputs ("out0", "out1", …) and
    gradients ("d<name>") of every input tensor with ``requires_grad``.

    Outputs that are None in both are skipped. Cotangents are random normal, shared by both sides.
    ``floors``: a dict to fill, for every output and gradient ``fn`` returns in half precision, with the error of
    the exact (float64) value merely rounded to that dtype — the floor no implementation returning it can beat
    (``assert_close_all``'s ``floors``).
    """
    from kernels._common import nan_prefill

    run_in = _clone_inputs(inputs, None)
    ref_in = _clone_inputs(inputs, torch.float64, ref_device)
    with nan_prefill():
        outs = _as_tuple(fn(**run_in))
    refs = _as_tuple(ref(**ref_in))
    if len(outs) != len(refs):
        raise AssertionError(f"fn returned {len(outs)} outputs, reference {len(refs)}")
    errs: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o is None and r is None:
            continue
        errs[f"out{i}"] = rel_err(o, r)
        _floor(floors, f"out{i}", o, r)
        if backward and isinstance(o, torch.Tensor) and o.requires_grad:
            # round the cotangent to the output's dtype first: both sides then get the very same values
            cot = torch.randn(r.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(torch.float64)
            pairs.append((o, r, cot))
    if backward and pairs:
        with nan_prefill():
            torch.autograd.backward([o for o, _, _ in pairs], [c.to(o.device, o.dtype) for o, _, c in pairs])
        torch.autograd.backward([r for _, r, _ in pairs], [c.to(r.device) for _, r, c in pairs])
        for name, v in run_in.items():
            if isinstance(v, torch.Tensor) and v.requires_grad:
                errs[f"d{name}"] = rel_err(v.grad, ref_in[name].grad)
                _floor(floors, f"d{name}", v.grad, ref_in[name].grad)
    return errs


def _floor(floors: dict | None, name: str, out, exact) -> None:
    """``floors[name]``: the error of ``exact`` rounded to ``out``'s dtype, where that is fp16 / bf16."""
    if floors is not None and isinstance(out, torch.Tensor) and out.dtype in (torch.float16, torch.bfloat16):
        floors[name] = rel_err(exact.to(out.dtype), exact)


def assert_deterministic(fn: Callable, inputs: Mapping[str, torch.Tensor], runs: int = 2) -> None:
    """``runs`` forward + backward passes of ``fn(**inputs)`` (loss Σ_i (i + 1)·Σ sin(out_i)) give bit-identical
    gradients of every input that requires one (no atomics, no order-dependent sums)."""
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = []
    for _ in range(runs):
        for v in leaves:
            v.grad = None
        sum((i + 1) * o.sin().sum() for i, o in enumerate(_as_tuple(fn(**inputs)))).backward()
        grads.append([v.grad.clone() for v in leaves])
    for g in grads[1:]:
        assert all(torch.equal(p, q) for p, q in zip(grads[0], g)), "gradients differ between identical runs"


FLOOR_MARGIN = 1.1      # a half-precision result may sit this far above its rounding floor (see assert_close_all)


def assert_close_all(errs: Mapping[str, float], bound: float, context: str = "",
                     floors: Mapping[str, float] | None = None) -> None:
    """Every error finite and within the bound; the message lists them all. ``floors`` (from ``compare``, or the
    entries a test chooses): an entry given a floor is held to max(bound, FLOOR_MARGIN × floor), the floor being the
    error of the exact value merely rounded to its fp16 / bf16 dtype on this draw — for results whose floor alone
    can pass the bound (wkv6's du: H·K entries, above 2e-3 in bf16 on rare draws); the margin leaves the kernel's
    own error at most ~0.46 × the floor (errors add in quadrature). Every other entry keeps the bound."""
    floors = floors or {}
    limit = {k: max(bound, FLOOR_MARGIN * floors.get(k, 0.0)) for k in errs}
    bad = {k: v for k, v in errs.items() if not (v <= limit[k])}
    if bad:
        table = ", ".join(f"{k}={v:.3g}" + (f" (floor {floors[k]:.3g})" if k in floors else "")
                          for k, v in errs.items())
        raise AssertionError(f"{context} relative error above {bound:g} in {sorted(bad)}: {table}")


def check_op(fn: Callable, ref: Callable, inputs: Mapping[str, object], bound: float | None = None,
             context: str = "", **kw) -> dict[str, float]:
    """One-line kernel test: compare and assert with the bound of the inputs' dtype (or the given one)."""
    if bound is None:
        dt = next(v.dtype for v in inputs.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
        bound = bound_for(dt)
    errs = compare(fn, ref, inputs, **kw)
    assert_close_all(errs, bound, context)
    return errs


def _grad_outputs(res) -> list[torch.Tensor]:
    return [o for o in (res if isinstance(res, (tuple, list)) else (res,))
            if isinstance(o, torch.Tensor) and o.requires_grad]


def fwd_bwd_step(fn: Callable, inputs: dict, seed: int = 0) -> tuple[Callable, list[torch.Tensor]]:
    """A forward + backward of ``fn(**inputs)`` with fixed random cotangents; returns (step, the leaves whose
    ``.grad`` a caller clears between calls). Where no output takes a gradient, the step is the call alone."""
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    outs = _grad_outputs(fn(**inputs))
    if not outs:        # an op without a backward (wgrad: its outputs never take a gradient): the step is its call
        return (lambda: fn(**inputs)), leaves
    dev = outs[0].device
    gen = torch.Generator(device=dev).manual_seed(seed)
    cots = [torch.randn(o.shape, generator=gen, device=dev, dtype=torch.float32).to(o.dtype) for o in outs]
    del outs
    for t in leaves:
        t.grad = None

    def step():
        torch.autograd.backward(_grad_outputs(fn(**inputs)), cots)

    return step, leaves


def assert_compiled_matches_eager(model: Callable, inputs: Mapping[str, torch.Tensor], names) -> None:
    """``torch.compile(model, fullgraph=True)`` (Inductor on a GPU; aot_eager on a CPU, where the kernels run in the
    interpreter inside the graph) traces the op into one graph, and its loss and the gradients of ``names`` equal
    eager's (rtol 1e-5 on the loss, 1e-4 / atol 1e-5 on the gradients). ``model(**inputs)`` returns a scalar."""
    x1 = {n: inputs[n].detach().clone().requires_grad_(True) for n in names}
    x2 = {n: inputs[n].detach().clone().requires_grad_(True) for n in names}
    f = torch.compile(model, backend="inductor" if torch.cuda.is_available() else "aot_eager", fullgraph=True)
    l1 = f(**x1)
    l1.backward()
    l2 = model(**x2)
    l2.backward()
    assert torch.allclose(l1, l2, rtol=1e-5)
    for n in names:
        assert torch.allclose(x1[n].grad, x2[n].grad, rtol=1e-4, atol=1e-5), n
