"""GPU time of the glue ops' backward kernels at the large model's shapes (GF-MH D512 × 8, B16 × T1024: N = 16,384
rows) under a few launch settings (each op's TUNING), the committed setting beside alternatives, measured in the
same run. Prints one line per (op, setting): CUDA-graph replay median (no host time), the byte floor at the copy
bandwidth measured in the same run, GB/s of the kernel's bytes and % of that copy bandwidth.

    PYTHONPATH=. python scripts/glue_bwd_sweep.py [--csv PATH] [--committed-only] [--ops norm_gate,ddlerp,...]

``--committed-only`` times each op's committed setting only: run it on an older tree (PYTHONPATH at that tree) for
the "before" column of the same call.

Bytes per call at the model's dtypes (bf16 activations, E = N·D·2; the residual stream h and its gradient are fp32,
``residual_fp32``): norm_gate 5E (dy, x, z in; dx, dz out; RWKV: D 512, 8 groups of 64, LayerNorm, bias, norm
before gate; Mamba: D 1024, one group, RMSNorm, gate first), ddlerp 17E (do×5, x, m×5 in; dx, dm×5 out),
shift_lerp and decay_exp 3E, gate_norm_residual row 22·N·D bytes (dh, h fp32, dy, a, b in; dx fp32, da, db out),
add 16·N·D (dh, h, dy in; dx, da out). The fp32 partial rows of the column sums (< 3 %) are not counted.
Run 9's captured large step spent per call: norm_gate 83 µs (both shapes' mean), ddlerp 158, gnr 59, shift_lerp
37, decay_exp 30 (profiles/nvidia-h100-80gb-hbm3/run9-2026-11-27/step_large.jsonl).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import sys

import torch


def _mod(name):
    importlib.import_module(f"kernels.{name}")
    return sys.modules[f"kernels.{name}.{name}"]


def _settings(pairs, keys):
    """[("committed", {})] + one labelled TUNING update per tuple of values for ``keys``."""
    return [("committed", {})] + [(" ".join(f"{k} {v}" for k, v in zip(keys, vals)), dict(zip(keys, vals)))
                                  for vals in pairs]


def cases(dev, smoke=False):
    bf = dict(dtype=torch.bfloat16 if not smoke else torch.float32, device=dev)
    f32 = dict(dtype=torch.float32, device=dev)
    B, T, D, DM = (16, 1024, 512, 1024) if not smoke else (1, 8, 128, 32)
    N, E = B * T, B * T * D * 2
    x, dy = torch.randn(B, T, D, **bf), torch.randn(B, T, D, **bf)
    m, douts = torch.randn(5, B, T, D, **bf), [torch.randn(B, T, D, **bf) for _ in range(5)]
    maa, mu = torch.randn(5, D, device=dev), torch.randn(D, device=dev)
    xn, zn, dyn = (torch.randn(N, D, **bf) for _ in range(3))
    xm, zm, dym = (torch.randn(N, DM, **bf) for _ in range(3))
    w, b, wm = torch.randn(D, device=dev), torch.randn(D, device=dev), torch.randn(DM, device=dev)
    dl, sl, de, ng = _mod("ddlerp"), _mod("shift_lerp"), _mod("decay_exp"), _mod("norm_gate")
    importlib.import_module("kernels.gate_norm_residual")
    gn = sys.modules["kernels.gate_norm_residual.kernel"]
    # norm_gate: (bwd_tile, bwd_warps, bwd_per_sm); rows of 512 (RWKV) and 1024 (Mamba) elements. The settings of
    # run 10's second call, around its winners (the committed ones); call 1 swept wider (notes/glue.md "Run 10")
    ng_tw = ("bwd_tile", "bwd_warps", "bwd_per_sm")
    ng_rwkv = _settings(((1024, 4, 6), (2048, 8, 3)), ng_tw)
    ng_mamba = _settings(((1024, 4, 6), (1024, 2, 4)), ng_tw)
    flat = _settings(((1024, 4, 16),), ng_tw)        # beside the committed (512, 2, 16), which its own row times
    dl_settings = _settings(((128, 2, 4), (256, 4, 8)), ("rows_bd", "rows_warps", "rows_per_sm"))   # ditto (128, 2, 16)
    gate, wg = torch.randn(N, 1, **bf), torch.randn(D, device=dev)
    hr, dhr = torch.randn(N, D, **f32), torch.randn(N, D, **f32)
    ar, br_ = torch.randn(N, D, **bf), torch.randn(N, D, **bf)
    stats = torch.rand(1, N, **f32) + 0.5
    return [
        ("norm_gate N16384 G8 S64 layer", ng, 5 * E, ng_rwkv,
         lambda: ng._bwd_impl(dyn, xn, zn, w, b, 64, 64e-5, "layer", True)),
        ("norm_gate N16384 G1 S1024 rms", ng, 5 * E * 2, ng_mamba,
         lambda: ng._bwd_impl(dym, xm, zm, wm, None, DM, 1e-5, "rms", False)),
        ("ddlerp B16 T1024 D512", dl, 17 * E, dl_settings, lambda: dl._bwd_impl(douts, x, m, maa, None)),
        ("shift_lerp B16 T1024 D512", sl, 3 * E, flat, lambda: sl._bwd_impl(dy, x, mu, None)),
        ("decay_exp N16384 D512", de, 3 * E, flat, lambda: de._bwd_impl(dyn, mu, xn)),
        ("gnr row N16384 D512", gn, 11 * E, [("committed", {})],
         lambda: gn._bwd_impl(dhr, dyn, hr, ar, br_, gate, wg, None, stats, "row", "rms", True, torch.float32)),
        ("gnr add N16384 D512", gn, 8 * E, [("committed", {})],
         lambda: gn._bwd_impl(dhr, dyn, hr, ar.new_empty((0,)), None, None, wg, None, stats, "add", "rms", False,
                              torch.float32)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default=None)
    ap.add_argument("--committed-only", action="store_true", help="time each op's committed setting only")
    ap.add_argument("--ops", default="", help="comma-separated name prefixes (default: every op)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes, host clock: a syntax check")
    args = ap.parse_args()
    import kernels  # noqa: F401
    import triton.testing
    if args.smoke:
        import time
        triton.testing.do_bench_cudagraph = lambda fn, **kw: (lambda t0: (fn(), time.perf_counter() - t0)[1] * 1e3)(
            time.perf_counter())
        torch.cuda.synchronize = lambda: None
        torch.cuda.get_device_name = lambda: "CPU smoke run"
    dev = torch.device("cpu" if args.smoke else "cuda")
    src, dst = torch.empty(1 << 28, dtype=torch.float32, device=dev), torch.empty(1 << 28, dtype=torch.float32,
                                                                                   device=dev)
    copy_ms = triton.testing.do_bench_cudagraph(lambda: dst.copy_(src), rep=50, return_mode="median")
    copy_gbps = 2 * src.numel() * 4 / copy_ms / 1e6
    del src, dst
    rows = []
    print(f"copy bandwidth {copy_gbps:.0f} GB/s ({torch.cuda.get_device_name()})")
    wanted = [p for p in args.ops.split(",") if p]
    for name, mod, nbytes, settings, call in cases(dev, args.smoke):
        if wanted and not any(name.startswith(p) for p in wanted):
            continue
        committed = dict(mod.TUNING)
        for label, upd in settings[:1] if args.committed_only else settings:
            mod.TUNING.update(committed)
            mod.TUNING.update(upd)
            try:
                call()
                torch.cuda.synchronize()
                ms = triton.testing.do_bench_cudagraph(call, rep=50, return_mode="median")
            except Exception as e:  # noqa: BLE001 - one setting failing must not hide the others
                print(f"{name:30s} {label:34s} FAIL {type(e).__name__}: {str(e).splitlines()[:1]}", flush=True)
                continue
            gbps = nbytes / ms / 1e6
            floor_us = nbytes / copy_gbps / 1e3
            rows.append(dict(op=name, setting=label, tuning=dict(mod.TUNING), us=round(ms * 1e3, 2),
                             floor_us=round(floor_us, 2), gbps=round(gbps), pct_copy=round(100 * gbps / copy_gbps, 1)))
            print(f"{name:30s} {label:34s} {ms * 1e3:8.1f} µs  floor {floor_us:6.1f} µs {gbps:6.0f} GB/s "
                  f"{100 * gbps / copy_gbps:5.1f} %", flush=True)
        mod.TUNING.clear()
        mod.TUNING.update(committed)
    if args.csv and rows:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
