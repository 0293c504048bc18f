"""The ffn op's GPU check, last step: a short table of its bench rows (``RUN/bench.csv``: eager and CUDA-graph ms of
the lab kernel and the reference — cuBLAS + torch's GELU — at the models' two FFN shapes, fwd and fwd+bwd, the
speedup and the error vs float64), then the autotuner's choice per kernel and shape (one bf16 fwd+bwd each; with
TRITON_CACHE_AUTOTUNING=1 the bench's tuning is read back from Triton's cache, not redone).

    PYTHONPATH=. python scripts/gpu_ffn.py --run profiles/<gpu>/run-...
    TRITON_INTERPRET=0 PYTHONPATH=. python scripts/gpu_ffn.py --regs       # no GPU needed

``--regs``: registers, spill bytes and the wgmma / cp.async instruction counts of both kernels in each of their
autotune configurations (HE: how many of the dact kernel's two saved-h column halves are loaded before its K loop;
smem_KB: the dynamic shared memory; prog/SM: the programs an SM holds by registers, shared memory and warps),
compiled for sm_90 on this machine with the launch's specialisation (``tt.divisibility`` 16 on the pointers and on
M, N, K, as the step's shapes get: without it the compile is not the GPU's — 255 registers and spills everywhere,
no cp.async).
"""
from __future__ import annotations

import argparse
import csv
import importlib
from pathlib import Path

import torch


def bench_table(run: Path) -> list[str]:
    path = run / "bench.csv"
    if not path.exists():
        return [f"(no {path.as_posix()}: the bench part wrote no rows)"]
    rows = [r for r in csv.DictReader(path.open()) if r["op"] == "ffn"]
    out = [f"{'shape':18} {'pass':7} {'impl':10} {'ms':>9} {'ms_graph':>9} {'x_ref':>6} {'max_err':>9}"]

    def num(v, fmt):
        try:
            return format(float(v), fmt)
        except (TypeError, ValueError):
            return "-"
    for r in sorted(rows, key=lambda r: (r["shape"], r["pass"], r["impl"])):
        out.append(f"{r['shape']:18} {r['pass']:7} {r['impl']:10} {num(r['ms'], '9.4f')} "
                   f"{num(r.get('ms_graph'), '9.4f')} {num(r['speedup_vs_ref'], '6.2f')} "
                   f"{num(r['max_rel_err'], '9.2e')}")
    return out


def tuned() -> list[str]:
    if not torch.cuda.is_available():
        return ["(no CUDA: no autotuned configs)"]
    mod = importlib.import_module("kernels.ffn.ffn")
    spec = importlib.import_module("groundthink.spec").get("ffn")
    out = []
    for shp in spec.bench.shapes():
        kw = spec.bench.make_inputs(*shp, True, dtype=torch.bfloat16, device="cuda")
        mod.ffn(**kw).sum().backward()
        torch.cuda.synchronize()
        for k in (mod._ffn_up_kernel, mod._ffn_dact_kernel):
            c = k.best_config
            out.append(f"{spec.bench.shape_str(*shp):18} {k.fn.__name__:17} {c.kwargs} warps {c.num_warps} "
                       f"stages {c.num_stages}")
    return out


def _programs_per_sm(regs: int, smem: int, warps: int) -> int:
    """Programs resident on one sm_90 SM (H100 / H200): 64K registers allocated per warp in 256s (a thread's count
    rounded up to 8), 228 KB of shared memory with 1 KB reserved per program, 64 warps."""
    by_regs = 65536 // (-(-regs // 8) * 8 * 32) // warps
    return min(by_regs, 228 * 1024 // (smem + 1024), 64 // warps)


def regs() -> list[str]:
    """Offline sm_90 compile of every configuration (module docstring)."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
    mod = importlib.import_module("kernels.ffn.ffn")
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out = [f"{'kernel':17} {'BM':>4} {'BN':>4} {'BK':>4} {'HE':>2} warps stages registers spill smem_KB prog/SM "
           f"HGMMA LDGSTS"]
    for name, configs in (("_ffn_up_kernel", mod._UP), ("_ffn_dact_kernel", mod._DACT)):
        fn = getattr(mod, name)
        while not isinstance(fn, JITFunction):
            fn = fn.fn
        for cfg in configs:
            consts = {"ACT": 0, "PREC": "tf32", **cfg.kwargs}
            types = {n: "constexpr" if n in consts else "*bf16" if n.startswith("p_") else "i32"
                     for n in fn.arg_names}
            attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n not in consts}
            src = ASTSource(fn, types, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                            attrs=attrs)
            kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={
                "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
            cubin, smem = kern.asm["cubin"], kern.metadata.shared
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(cubin)
                f.flush()
                res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
                sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
            m = re.search(r"REG:(\d+) STACK:(\d+)", res)
            progs = _programs_per_sm(int(m.group(1)), smem, cfg.num_warps) if m else "?"
            out.append(f"{name:17} {cfg.kwargs['BM']:4} {cfg.kwargs['BN']:4} {cfg.kwargs['BK']:4} "
                       f"{cfg.kwargs.get('HE', '-'):>2} {cfg.num_warps:5} {cfg.num_stages:6} "
                       f"{m.group(1) if m else '?':>9} {m.group(2) if m else '?':>5} {smem / 1024:7.0f} {progs:>7} "
                       f"{sass.count('HGMMA'):5} {sass.count('LDGSTS'):6}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="the results folder of gpu_reports.sh (GT_RUN)")
    ap.add_argument("--regs", action="store_true", help="offline sm_90 registers of every configuration (no GPU)")
    a = ap.parse_args()
    if a.regs:
        print("\n".join(regs()))
        return
    if not a.run:
        ap.error("--run is required (or --regs)")
    print("== ffn: autotuned configs (bf16)")
    print("\n".join(tuned()))
    print("== ffn: bench rows (ms per call; x_ref = reference ms / ms)")
    print("\n".join(bench_table(Path(a.run))))


if __name__ == "__main__":
    main()
