"""GPU time of the glue ops' backward kernels at the large model's shapes under a few launch settings (TUNING),
the committed setting beside alternatives, measured in the same run. Prints one line per (op, setting): CUDA-graph
replay median (no host time), GB/s of the kernel's bytes, % of the copy bandwidth measured in the same run.

    PYTHONPATH=. python scripts/glue_bwd_sweep.py [--csv PATH]

ddlerp: the row-walking backward at its committed setting (BD 128, 14 programs per SM; run 8 on the H100: 150.7 µs,
78 % of the copy bandwidth, against 272.8 µs for the tiled backward it replaced) beside other column widths and
program counts.
gnr (gate_norm_residual, row gate, RMSNorm, h and y both with a gradient): its per-SM program count, 4 committed
(run 2's sweep: 1 → 0.93, 2 → 0.695, 4 → 0.610, 8 → 0.626 ms fwd+bwd) while its backward at BR 1 × BD 2048 now
compiles to 79 registers at 8 warps (3 programs per SM fit: 4 launched run as 3 + 1) or 55 at 16 (2 fit).
Bytes (bf16, E = N·D·2): gnr 8E (h, dy, dh, a, b in; dx, da, db out), ddlerp 17E (do×5, x, m×5 in; dx, dm×5 out), shift_lerp and decay_exp 3E, norm_gate 5E
(dy, x, z in; dx, dz out); the fp32 partial rows of the column sums are < 1 % and not counted.
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


def cases(dev, smoke=False):
    bf = dict(dtype=torch.bfloat16 if not smoke else torch.float32, device=dev)
    B, T, D, DM = (16, 1024, 512, 1024) if not smoke else (1, 8, 128, 32)
    N, E = B * T, B * T * D * 2
    x, dy = torch.randn(B, T, D, **bf), torch.randn(B, T, D, **bf)
    m, douts = torch.randn(5, B, T, D, **bf), [torch.randn(B, T, D, **bf) for _ in range(5)]
    maa, mu = torch.randn(5, D, device=dev), torch.randn(D, device=dev)
    xn, zn, dyn = (torch.randn(N, D, **bf) for _ in range(3))
    xm, zm, dym = (torch.randn(N, DM, **bf) for _ in range(3))
    w, b, wm = torch.randn(D, device=dev), torch.randn(D, device=dev), torch.randn(DM, device=dev)
    dl, sl, de, ng = _mod("ddlerp"), _mod("shift_lerp"), _mod("decay_exp"), _mod("norm_gate")
    alt = lambda pairs: [("committed", {})] + [(f"tile {t} per_sm {p}", dict(bwd_tile=t, bwd_per_sm=p))  # noqa: E731
                                               for t, p in pairs]
    dl_settings = [("committed", {})] + [                      # committed = rows BD 128, 14 per SM (run 8's best)
        (f"rows BD {b} per_sm {p}", dict(rows_bd=b, rows_per_sm=p)) for b, p in ((128, 28), (256, 12))]
    per = alt(((2048, 8), (1024, 12)))
    importlib.import_module("kernels.gate_norm_residual")
    gn = sys.modules["kernels.gate_norm_residual.kernel"]
    NR, DR = (32768, 2048) if not smoke else (8, 64)
    xg, ag, bg, dyg, dhg = (torch.randn(NR, DR, **bf) for _ in range(5))
    gate, wg = torch.randn(NR, 1, **bf), torch.randn(DR, device=dev)
    h, _, stats = gn._fwd_impl(xg, ag, bg, gate, wg, None, "row", "rms", 1e-5, True, False)
    gnr_settings = [("committed", {})] + [(f"per_sm {p}", dict(bwd_per_sm=p)) for p in (6, 12)]
    return [
        ("gnr row N32768 D2048", gn, 8 * NR * DR * 2, gnr_settings,
         lambda: gn._bwd_impl(dhg, dyg, h, ag, bg, gate, wg, None, stats, "row", "rms", True, bf["dtype"])),
        ("ddlerp B16 T1024 D512", dl, 17 * E, dl_settings, lambda: dl._bwd_impl(douts, x, m, maa, None)),
        ("shift_lerp B16 T1024 D512", sl, 3 * E, per, lambda: sl._bwd_impl(dy, x, mu, None)),
        ("decay_exp N16384 D512", de, 3 * E, per, lambda: de._bwd_impl(dyn, mu, xn)),
        ("norm_gate N16384 G8 S64 layer", ng, 5 * E, per,
         lambda: ng._bwd_impl(dyn, xn, zn, w, b, 64, 64e-5, "layer", True)),
        ("norm_gate N16384 G1 S1024 rms", ng, 5 * E * 2, per,
         lambda: ng._bwd_impl(dym, xm, zm, wm, None, DM, 1e-5, "rms", False)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default=None)
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
    for name, mod, nbytes, settings, call in cases(dev, args.smoke):
        committed = dict(mod.TUNING)
        for label, upd in settings:
            mod.TUNING.update(committed)
            mod.TUNING.update(upd)
            try:
                call()
                torch.cuda.synchronize()
                ms = triton.testing.do_bench_cudagraph(call, rep=50, return_mode="median")
            except Exception as e:  # noqa: BLE001 - one setting failing must not hide the others
                print(f"{name:32s} {label:22s} FAIL {type(e).__name__}: {str(e).splitlines()[:1]}", flush=True)
                continue
            gbps = nbytes / ms / 1e6
            rows.append(dict(op=name, setting=label, tuning=dict(mod.TUNING), ms=ms, gbps=gbps,
                             pct_copy=100 * gbps / copy_gbps))
            print(f"{name:32s} {label:22s} {ms * 1e3:8.1f} µs {gbps:7.0f} GB/s {100 * gbps / copy_gbps:5.1f} %",
                  flush=True)
        mod.TUNING.clear()
        mod.TUNING.update(committed)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
