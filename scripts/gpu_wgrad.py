"""The ``wgrad`` op's tile / split sweep beside torch.mm (cuBLAS: a split-K GEMM and, where it splits, its
``splitKreduce`` kernel), CUDA-graph µs per call at the spec's benchmark shapes (the models' dW = dYᵀ X at R = 16,384
tokens, small D128 and large D512), bf16, kernels per call, one table last.

    python3 scripts/gpu_wgrad.py              # GPU: the configurations of DEFAULT (TUNING overrides, CONFIGS)
    WGRAD_CONFIGS=auto,coopew8 python3 ...    # others of CONFIGS
    WGRAD_BUDGET_S=80 (default)               # no new shape after that many seconds: the table still prints
    WGRAD_SHAPES=small                        # only outputs below 128K elements (the small model's dW)

Every configuration runs the kernel (the cuBLAS shape rule off: ``cublas_at`` = ∞) and is checked against float64 at
the spec's error shape first (a wrong one is reported, not timed); after its timing, the output the CUDA graph's
replays left must equal an eager call's and a second eager call's bit for bit (else the cell says NDET) and every
arrival counter must be back at zero (else CNT): the coope finish's wait and the counters' resets checked under
real concurrency, in this one call. "auto" is TUNING as committed; the "best" column is
the fastest configuration per shape, "lab/mm" its time over cuBLAS's. Without CUDA: the interpreter at the spec's CPU
shapes in fp32, plumbing only (no timing)."""
from __future__ import annotations

import importlib
import math
import os
import time

import torch

import kernels  # noqa: F401  (the interpreter without CUDA)
from groundthink.gate import graph_ms
from groundthink.harness import bound_for, compare
from groundthink.spec import get
from kernels import _colsum

WG = importlib.import_module("kernels.wgrad.wgrad")
INF = 1 << 62
CONFIGS = {                         # name -> TUNING overrides (module docstring of kernels/wgrad/wgrad.py)
    "auto": {},                                                   # TUNING as committed (the wide finish)
    "wide1": dict(waves=1),                                       # wide, half the split
    "wideflat": dict(waves=1, flat=64),                           # wide, one level
    "coope": dict(finish="coope"),                                # coope: 64² tiles, split = SMs // tiles
    "coope128": dict(finish="coope", small=(64, 64, 128, 4)),     # coope, 128 rows per dot
    "coope2": dict(finish="coope", coop_waves=2),                 # coope, two programs per SM (half the rows)
    "coopebig": dict(finish="coope", big_at=0, min_rows=128),     # coope, 128² tiles (8 warps): inputs read once
    "coope128x64": dict(finish="coope", small=(128, 64, 64, 8)),  # coope, 128 × 64 tiles: a read once
    "coope32": dict(finish="coope", small=(32, 64, 64, 4)),       # coope, 32 × 64 tiles
    "coopew8": dict(finish="coope", small=(64, 64, 64, 8)),       # coope, 8 warps
}
# (run 19's finish — "old", "t64w*", "t128w1" — was the fastest at no shape of run 21's sweep, the "coop" twin at one
# by 0.3 µs: both removed from the kernel)


DEFAULT = "auto,coope,coope2,coopebig,coope128x64"


def kernels_per_call(fn, kw, n: int = 5) -> float:
    """CUDA kernels launched per call (torch.profiler over n calls)."""
    from torch.profiler import ProfilerActivity, profile
    fn(**kw)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn(**kw)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / n


def _cell(lab, ref, kw, err_kw, dtype, dev, cuda):
    """(cell text, µs or None) of the configuration in TUNING at one shape: fp64 error at the error shape, then
    CUDA-graph µs; NDET when the graph's replays, an eager call and a second one are not bit-identical, CNT when an
    arrival counter is not back at zero."""
    err = max(compare(lab, ref, err_kw, ref_device=dev, backward=False).values())
    if not err <= bound_for(dtype):
        return f"ERR {err:.1e}", None
    if not cuda:
        return f"ok {err:.0e}", None
    us = graph_ms(lambda: lab(**kw), [])[0] * 1e3
    cell = f"{us:.1f}"
    replayed = kw["out"].clone()                               # written by the graph's last replay
    again = lab(kw["a"], kw["b"])
    if not torch.equal(replayed, again) or not torch.equal(again, lab(kw["a"], kw["b"])):
        cell += " NDET"
    cnt = _colsum._CACHE.get(torch.device("cuda", torch.cuda.current_device()))
    if cnt is not None and int(cnt.abs().sum()):
        cell += " CNT"
    return cell, us


def main() -> None:
    cuda = torch.cuda.is_available()
    spec = get("wgrad")
    ref, lab = spec.reference.load(), spec.impl("triton").load()
    dtype = torch.bfloat16 if cuda else torch.float32
    dev = "cuda" if cuda else "cpu"
    names = os.environ.get("WGRAD_CONFIGS", DEFAULT).split(",")
    base = dict(WG.TUNING)
    shapes = spec.bench.shapes() if cuda else spec.bench.cpu_shapes
    if os.environ.get("WGRAD_SHAPES") == "small":                # outputs below 128K elements: the small model's
        shapes = [s for s in shapes if max(s[3], 1) * s[1] * s[2] < 131072]
    rows, t0, budget = [], time.time(), float(os.environ.get("WGRAD_BUDGET_S", "80"))
    for shp in shapes:
        if time.time() - t0 > budget:
            print(f"budget of {budget:.0f} s spent: {spec.bench.shape_str(*shp)} and later shapes not run", flush=True)
            break
        name = spec.bench.shape_str(*shp)
        kw = spec.bench.make_inputs(*shp, False, dtype=dtype, device=dev)
        err_kw = spec.bench.make_inputs(*spec.bench.err_shape(*shp), False, dtype=dtype, device=dev)
        cells, times = {}, {}
        mm_us = graph_ms(lambda: ref(**kw), [])[0] * 1e3 if cuda else math.nan
        k_mm = kernels_per_call(ref, kw) if cuda else math.nan
        for c in names:
            WG.TUNING.clear()
            WG.TUNING.update(base, cublas_at=INF, two_d=True, **CONFIGS[c])
            try:
                cells[c], t = _cell(lab, ref, kw, err_kw, dtype, dev, cuda)
            except Exception as e:  # noqa: BLE001 - one configuration's failure is a cell, not the end of the table
                cells[c], t = f"EXC {type(e).__name__}", None
                print(name, c, "failed:", " ".join(str(e).split())[:300], flush=True)
            if t is not None:
                times[c] = t
            print(name, c, WG._plan(shp[0], shp[1], shp[2], max(shp[3], 1), torch.device(dev)), cells[c], flush=True)
        WG.TUNING.clear()
        WG.TUNING.update(base, cublas_at=INF, two_d=True)       # "lab kern": the committed kernel, forced
        k_lab = kernels_per_call(lab, kw) if cuda else math.nan
        WG.TUNING.clear()
        WG.TUNING.update(base)
        best = min(times, key=times.get) if times else "-"
        ratio = f"{times[best] / mm_us:.2f}" if times else "-"
        rows.append([name, f"{mm_us:.1f}", f"{k_mm:.0f}", f"{k_lab:.0f}", *(cells[c] for c in names), best, ratio])
    head = ["shape", "mm µs", "mm kern", "lab kern", *names, "best", "lab/mm"]
    print(f"\n==== wgrad C = aᵀb, {'CUDA-graph µs per call, bf16' if cuda else 'interpreter, fp32: errors only'}")
    print("| " + " | ".join(head) + " |")
    for line in rows:
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
