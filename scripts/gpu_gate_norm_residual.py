"""GPU check + timing of kernels.gate_norm_residual (bf16).

    PYTHONUNBUFFERED=1 python3 scripts/gpu_gate_norm_residual.py 2>&1 | tee $OUT/gnr.log

1. copy bandwidth (1 GiB device-to-device copy, bytes read + written);
2. correctness: bf16 error of ours vs float64 ≤ 2× the error of PyTorch's own bf16 eager computation
   (reference blend/normalize on bf16 tensors), outputs and every gradient; the int64-offset case;
3. timing (triton.testing.do_bench, median): forward and forward+backward (autograd.grad with cotangents on h
   and y) of ours, the eager reference and torch.compile of the reference, grad-enabled inputs for all three.
A time guard (GNR_BUDGET seconds, default 135) skips what no longer fits; the compact table prints last.
Without CUDA it runs a tiny smoke version (interpreter, no timings) to check the script itself.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import kernels  # noqa: E402,F401
import triton  # noqa: E402
from kernels.gate_norm_residual import gate_norm_residual  # noqa: E402
from reference import gate_norm_residual as R  # noqa: E402
try:
    import pytest  # noqa: F401  (the test module uses it; the device machine may not have it)
except ImportError:
    import types

    class _Mark:
        def __getattr__(self, name):
            def deco(*a, **k):
                if len(a) == 1 and callable(a[0]) and not k:
                    return a[0]
                return lambda f: f
            return deco

    def _skip(msg):
        raise RuntimeError(f"skipped: {msg}")

    sys.modules["pytest"] = types.SimpleNamespace(mark=_Mark(), skip=_skip, fixture=lambda f: f)

from tests.test_gate_norm_residual import GATED, bf16_vs_eager, int64_case  # noqa: E402

T0 = time.time()
BUDGET = float(os.environ.get("GNR_BUDGET", "135"))
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
S = 1 if CUDA else 0  # smoke scale
OUT = os.environ.get("OUT", "/tmp")
FWD_PASSES = {"add": 4, "vector": 5, "row": 5, "weights": 5, "element": 6}
BWD_PASSES = {"add": 5, "vector": 8, "row": 8, "weights": 8, "element": 10}

for name, val in (("cache_size_limit", 256), ("recompile_limit", 256), ("accumulated_cache_size_limit", 4096),
                  ("accumulated_recompile_limit", 4096)):
    if hasattr(torch._dynamo.config, name):
        setattr(torch._dynamo.config, name, val)


def left() -> float:
    return BUDGET - (time.time() - T0)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def bench(fn) -> float:
    if not CUDA:
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def bench_graph(fn) -> float:
    if not CUDA:
        return float("nan")
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median")
    except Exception as e:  # capture can fail (e.g. a host sync): report, don't stop
        log("cudagraph failed:", repr(e)[:200])
        torch.cuda.synchronize()
        return float("nan")


def copy_bandwidth() -> float:
    if not CUDA:
        return float("nan")
    n = 2**29  # 1 GiB of bf16
    src = torch.empty(n, dtype=torch.bfloat16, device=DEV).normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * n * 2 / (ms * 1e-3) / 1e9  # GB/s


def make(N, D, mode, logits):
    t = lambda *s: torch.randn(*s, device=DEV, dtype=torch.bfloat16)  # noqa: E731
    inp = {"x": t(N, D), "a": t(N, D)}
    if mode != "add":
        inp["b"] = t(N, D)
        gs = R.gate_shape(mode, (N, D), D)
        inp["gate"] = t(*gs) if (logits or mode == "weights") else torch.rand(*gs, device=DEV).bfloat16()
    inp["weight"] = 1 + 0.1 * t(D)
    for v in inp.values():
        v.requires_grad_(True)
    return inp


def time_case(mode, N, D, copy_bw, impls=("ours", "eager", "compile")):
    logits = mode in GATED
    opts = dict(mode=mode, norm="rms", gate_logits=logits)
    inp = make(N, D, mode, logits)
    leaves = list(inp.values())
    cot = (torch.randn(N, D, device=DEV, dtype=torch.bfloat16), torch.randn(N, D, device=DEV, dtype=torch.bfloat16))

    def ref(x, a, b=None, gate=None, weight=None):
        return R.gate_norm_residual(x, a, b, gate, weight=weight, **opts)

    fns = {"ours": lambda **k: gate_norm_residual(**k, **opts), "eager": ref}
    if "compile" in impls:
        fns["compile"] = torch.compile(ref, dynamic=False)
    row = {"mode": mode, "N": N, "D": D}
    for name in impls:
        fn = fns[name]
        try:
            def fwd():
                return fn(**inp)

            def step():
                h, y = fn(**inp)
                return torch.autograd.grad((h, y), leaves, cot)

            step(), step()  # warm up: Triton autotune / Inductor compile of forward and backward
            fwd()
            if CUDA:
                torch.cuda.synchronize()
            row[f"{name}_fwd"] = bench(fwd)
            row[f"{name}_fb"] = bench(step)
            if name != "eager":  # GPU time without host launch overhead (CUDA-graph replay, no L2 flush)
                row[f"{name}_fwd_g"] = bench_graph(fwd)
                row[f"{name}_fb_g"] = bench_graph(step)
        except Exception as e:  # keep going: report the failure in the table
            traceback.print_exc()
            for k in ("fwd", "fb", "fwd_g", "fb_g"):
                row[f"{name}_{k}"] = float("nan")
            row[f"{name}_err"] = repr(e)[:200]
    fb = N * D * 2 * FWD_PASSES[mode]
    row["fwd_GBs"] = fb / (row["ours_fwd"] * 1e-3) / 1e9
    row["fwd_pct_copy"] = 100 * row["fwd_GBs"] / copy_bw
    bb = N * D * 2 * (FWD_PASSES[mode] + BWD_PASSES[mode])
    row["fb_floor_ms"] = bb / (copy_bw * 1e9) * 1e3
    log("timing", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return row


def check_case(N, D, mode, norm, logits):
    ours, eager = bf16_vs_eager(N, D, mode, norm, logits=logits, device=DEV)
    ratio = {k: ours[k] / eager[k] if eager[k] > 0 else (0.0 if ours[k] == 0 else float("inf")) for k in ours}
    ok = all(r <= 2 for r in ratio.values())
    res = {"N": N, "D": D, "mode": mode, "norm": norm, "logits": logits, "ok": ok,
           "worst": max(ratio, key=ratio.get), "worst_ratio": max(ratio.values()),
           "ours": {k: f"{v:.2e}" for k, v in ours.items()}, "eager": {k: f"{v:.2e}" for k, v in eager.items()}}
    log("check", json.dumps(res))
    return res


def main():
    results = {"timing": [], "checks": [], "skipped": [], "int64": None}
    if CUDA:
        log("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    copy_bw = copy_bandwidth() if CUDA else 3000.0
    results["copy_GBs"] = copy_bw
    log(f"copy bandwidth {copy_bw:.0f} GB/s")
    big, small = (32768, 16384) if CUDA else (64, 32)
    Dbig = 2048 if CUDA else 64
    plan = [
        ("check", (4096 if CUDA else 16, Dbig, "row", "rms", True)),
        ("time", ("row", big, Dbig)),
        ("time", ("add", big, Dbig)),
        ("time", ("vector", big, Dbig)),
        ("time", ("element", big, Dbig)),
        ("time", ("weights", big, Dbig)),
        ("time", ("row", small, 128)),
        ("time", ("row", small, 768 if CUDA else 40)),
        ("time", ("row", small, 4096 if CUDA else 100)),
    ]
    n_chk = 4096 if CUDA else 16
    for mode in ("add", "vector", "element", "weights"):
        plan.append(("check", (n_chk, Dbig, mode, "rms", mode in GATED)))
    plan += [
        ("check", (n_chk, Dbig, "row", "layer", True)),
        ("check", (n_chk, Dbig, "element", "layer", False)),
        ("check", (n_chk, 768 if CUDA else 24, "row", "rms", True)),
        ("check", (n_chk, 768 if CUDA else 24, "row", "layer", False)),
        ("check", (n_chk, 1000 if CUDA else 37, "row", "rms", True)),
        ("check", (n_chk, 1000 if CUDA else 37, "vector", "layer", False)),
        ("int64", None),
    ]
    need = {"check": 6, "time": 14, "int64": 25}
    for kind, args in plan:
        if left() < need[kind]:
            results["skipped"].append(f"{kind} {args}")
            log("skip (time)", kind, args)
            continue
        try:
            if kind == "check":
                results["checks"].append(check_case(*args))
            elif kind == "time":
                results["timing"].append(time_case(*args, copy_bw))
            elif kind == "int64" and CUDA:
                results["int64"] = int64_case(backward=True)
                log("int64", results["int64"])
        except Exception as e:
            traceback.print_exc()
            results["skipped"].append(f"{kind} {args} FAILED {e!r}"[:300])
        if CUDA:
            torch.cuda.empty_cache()
    if CUDA and left() > 12:
        try:
            results["sweep"] = sweep(copy_bw)
        except Exception:
            traceback.print_exc()
    with open(os.path.join(OUT, "gnr.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print_table(results)


def sweep(copy_bw):
    """Launch heuristics on the headline case (row, N32768 D2048) and D128: ours only."""
    import kernels.gate_norm_residual as K
    out = []
    base = dict(K.TUNING)
    trials = [("bwd_per_sm", None)] + [("bwd_per_sm", v) for v in (1, 2, 8)] + \
        [("fwd_tile", v) for v in (2048, 8192)] + [("bwd_tile", v) for v in (1024, 4096)]
    for D, N in ((2048, 32768), (128, 16384), (768, 16384)):
        for key, val in trials:
            if left() < 6:
                break
            K.TUNING.update(base)
            K.TUNING[key] = val
            r = time_case("row", N, D, copy_bw, impls=("ours",))
            out.append({"D": D, key: val, "fwd": r["ours_fwd"], "fb": r["ours_fb"], "fwd_g": r["ours_fwd_g"],
                        "fb_g": r["ours_fb_g"]})
    K.TUNING.update(base)
    return out


def print_table(results):
    print("\n=== gate_norm_residual, bf16, times in ms (do_bench median) ===")
    print(f"copy bandwidth: {results['copy_GBs']:.0f} GB/s")
    hdr = (f"{'mode':8}{'N×D':>12} | {'ours fwd':>9}{'eager':>8}{'compile':>8}{'%copy':>7} | "
           f"{'ours f+b':>9}{'eager':>8}{'compile':>8}{'floor':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in results["timing"]:
        print(f"{r['mode']:8}{str(r['N']) + '×' + str(r['D']):>12} | {r['ours_fwd']:9.4f}{r['eager_fwd']:8.3f}"
              f"{r['compile_fwd']:8.3f}{r['fwd_pct_copy']:6.1f}% | {r['ours_fb']:9.4f}{r['eager_fb']:8.3f}"
              f"{r['compile_fb']:8.3f}{r['fb_floor_ms']:7.3f}")
    print("\nCUDA-graph replay (GPU time, no host overhead, no L2 flush), ms:")
    print(f"{'mode':8}{'N×D':>12} | {'ours fwd':>9}{'compile':>8}{'%copy':>7} | {'ours f+b':>9}{'compile':>8}")
    for r in results["timing"]:
        pct = 100 * r["N"] * r["D"] * 2 * FWD_PASSES[r["mode"]] / (r["ours_fwd_g"] * 1e-3) / 1e9 / results["copy_GBs"]
        print(f"{r['mode']:8}{str(r['N']) + '×' + str(r['D']):>12} | {r['ours_fwd_g']:9.4f}{r['compile_fwd_g']:8.3f}"
              f"{pct:6.1f}% | {r['ours_fb_g']:9.4f}{r['compile_fb_g']:8.3f}")
    print("\nbf16 error vs float64: worst ratio ours/eager (bar ≤ 2)")
    for c in results["checks"]:
        print(f"  {c['mode']:8} {c['norm']:6} N{c['N']} D{c['D']} logits={c['logits']!s:5} "
              f"{'OK ' if c['ok'] else 'BAD'} worst {c['worst']}={c['worst_ratio']:.2f}  y={c['ours'].get('out1')} "
              f"(eager {c['eager'].get('out1')})")
    print("int64 case:", results["int64"])
    if results["skipped"]:
        print("skipped:", results["skipped"])
    for r in results.get("sweep", []):
        print("  sweep", r)
    print(f"total {time.time() - T0:.1f}s")


if __name__ == "__main__":
    main()
