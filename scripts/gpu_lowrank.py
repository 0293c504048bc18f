"""The ``lowrank`` op's tile / warp sweep beside its reference (the unfused cuBLAS + tanh chain), CUDA-graph fwd+bwd
ms at the spec's benchmark shapes (the models' two calls at small and large), bf16, one table last.

    python3 scripts/gpu_lowrank.py            # GPU: every TUNING combination of LOWRANK_BM × LOWRANK_WARPS
    LOWRANK_BM=32,64 LOWRANK_WARPS=4,8 ...    # the grid (defaults)

Each configuration's errors vs float64 are checked at the spec's error shape first (a wrong configuration is
reported, not timed). Without CUDA: the interpreter at the spec's CPU shapes in fp32, plumbing only (no timing)."""
from __future__ import annotations

import importlib
import os

import torch

import kernels  # noqa: F401  (the interpreter without CUDA)
from groundthink.gate import graph_ms
from groundthink.harness import bound_for, compare, fwd_bwd_step
from groundthink.spec import get

LR = importlib.import_module("kernels.lowrank.lowrank")   # the module (the package's ``lowrank`` is the function)


def main() -> None:
    cuda = torch.cuda.is_available()
    spec = get("lowrank")
    ref, lab = spec.reference.load(), spec.impl("triton").load()
    dtype = torch.bfloat16 if cuda else torch.float32
    dev = "cuda" if cuda else "cpu"
    grid = [(bm, w) for bm in (int(v) for v in os.environ.get("LOWRANK_BM", "32,64").split(","))
            for w in (int(v) for v in os.environ.get("LOWRANK_WARPS", "4,8").split(","))]
    shapes = spec.bench.shapes() if cuda else spec.bench.cpu_shapes
    rows = []
    for shp in shapes:
        name = spec.bench.shape_str(*shp)
        kw = spec.bench.make_inputs(*shp, grad=True, dtype=dtype, device=dev)
        err_kw = spec.bench.make_inputs(*spec.bench.err_shape(*shp), grad=True, dtype=dtype, device=dev)
        line = [name]
        if cuda:
            line.append(f"{graph_ms(*fwd_bwd_step(ref, kw))[0]:.4f}")
        for bm, w in grid:
            LR.TUNING.update(bm=bm, warps=w)
            errs = compare(lab, ref, err_kw, ref_device=dev)
            bad = max(errs.values()) > bound_for(dtype)
            cell = f"ERR {max(errs.values()):.2e}" if bad else \
                (f"{graph_ms(*fwd_bwd_step(lab, kw))[0]:.4f}" if cuda else f"ok {max(errs.values()):.1e}")
            line.append(cell)
            print(name, f"bm {bm} warps {w}:", cell, flush=True)
        rows.append(line)
    head = ["shape"] + (["reference"] if cuda else []) + [f"bm{bm}/w{w}" for bm, w in grid]
    print(f"\n==== lowrank fwd+bwd, {'CUDA-graph ms, bf16' if cuda else 'interpreter, fp32: errors only'}")
    print("| " + " | ".join(head) + " |")
    for line in rows:
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
