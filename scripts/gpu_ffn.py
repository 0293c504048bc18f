"""The ffn op's GPU check, last step: the autotuner's choice per kernel and shape (one bf16 fwd+bwd each; with
TRITON_CACHE_AUTOTUNING=1 the bench's tuning is read back from Triton's cache, not redone); with ``--configs`` each
kernel's µs a call at each of its autotune configs, launched raw, beside the ops it replaces (cuBLAS's GEMM + torch's
GELU forward / backward) and its HBM floor; then a short table of its bench rows (``RUN/bench.csv``: eager and
CUDA-graph ms of the lab kernel and the reference — cuBLAS + torch's GELU — at the models' two FFN shapes, fwd and
fwd+bwd, the speedup and the error vs float64).

    PYTHONPATH=. python scripts/gpu_ffn.py --run profiles/<gpu>/run-... [--configs]
    TRITON_INTERPRET=0 PYTHONPATH=. python scripts/gpu_ffn.py --regs       # no GPU needed

``--regs``: registers, spill bytes and the wgmma / cp.async instruction counts of both kernels in each of their
autotune configurations (HE: how many of the dact kernel's two saved-h column halves are loaded before its K loop;
cap: the config's maxnreg;
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


def configs_table(shapes=None, timer=None, device="cuda") -> list[str]:
    """µs a call of each kernel launched raw at each of its autotune configs (bf16, GELU, the bench's shapes),
    beside what it replaces: cuBLAS x W_upᵀ + torch's GELU forward (up), cuBLAS dY W_down + torch's GELU backward
    (dact), and the kernel's HBM floor at 4.8 TB/s (up: x in, h and a out; dact: dY and h in, dH out). ``timer``
    (default ``triton.testing.do_bench``, median ms) and ``shapes`` let a CPU smoke run it through the
    interpreter."""
    if timer is None:
        if not torch.cuda.is_available():
            return ["(no CUDA: no per-config times)"]
        import triton.testing

        def timer(fn):
            return triton.testing.do_bench(fn, return_mode="median")
    import torch.nn.functional as F

    from kernels._common import cdiv
    mod = importlib.import_module("kernels.ffn.ffn")
    spec = importlib.import_module("groundthink.spec").get("ffn")
    out = [f"{'shape':18} {'kernel':5} {'BM':>4} {'BN':>4} {'BK':>4} {'HE':>2} warps stages cap {'us':>8} "
           f"{'x_ref':>6}"]
    for M, D, Fh in shapes or spec.bench.shapes():
        kw = spec.bench.make_inputs(M, D, Fh, False, dtype=torch.bfloat16, device=device)
        x, w_up, w_down = kw["x"], kw["w_up"], kw["w_down"]
        dy = torch.randn(M, D, device=device).to(torch.bfloat16)
        h, a, dh = (torch.empty(M, Fh, device=device, dtype=torch.bfloat16) for _ in range(3))
        h.copy_(x @ w_up.t())
        ref = {"up": 1e3 * timer(lambda: F.gelu(torch.mm(x, w_up.t()))),
               "dact": 1e3 * timer(lambda: torch.ops.aten.gelu_backward(torch.mm(dy, w_down), h))}
        floor = {k: 2 * (M * D + 2 * M * Fh) / 4.8e6 for k in ("up", "dact")}   # the same bytes, both
        shp = spec.bench.shape_str(M, D, Fh)
        for name in ("up", "dact"):
            out.append(f"{shp:18} {name:5} {'cuBLAS + torch GELU' + (' bwd' if name == 'dact' else ''):>42} "
                       f"{ref[name]:8.1f}   (HBM floor {floor[name]:.1f} us)")
        for name, kern, configs, args in (("up", mod._ffn_up_kernel, mod._UP, (x, w_up, h, a)),
                                          ("dact", mod._ffn_dact_kernel, mod._DACT, (dy, w_down, h, dh))):
            for c in configs:
                grid = (cdiv(M, c.kwargs["BM"]) * cdiv(Fh, c.kwargs["BN"]),)
                us = 1e3 * timer(lambda: kern.fn[grid](*args, M, Fh, D, 0, ACT=0, PREC="tf32", **c.all_kwargs()))
                out.append(f"{shp:18} {name:5} {c.kwargs['BM']:4} {c.kwargs['BN']:4} {c.kwargs['BK']:4} "
                           f"{c.kwargs.get('HE', '-'):>2} {c.num_warps:5} {c.num_stages:6} {c.maxnreg or '-':>3} "
                           f"{us:8.1f} "
                           f"{ref[name] / us:6.2f}")
    return out


def _programs_per_sm(regs: int, smem: int, warps: int) -> int:
    """Programs resident on one sm_90 SM (H100 / H200): 64K registers allocated per warp in 256s (a thread's count
    rounded up to 8), 228 KB of shared memory with 1 KB reserved per program, 64 warps."""
    by_regs = 65536 // (-(-regs // 8) * 8 * 32) // warps
    return min(by_regs, 228 * 1024 // (smem + 1024), 64 // warps)


def regs() -> list[str]:
    """Offline sm_90 compile of every configuration (module docstring)."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from bench.sm90 import sm90_usage
    mod = importlib.import_module("kernels.ffn.ffn")
    out = [f"{'kernel':17} {'BM':>4} {'BN':>4} {'BK':>4} {'HE':>2} warps stages cap registers spill smem_KB "
           f"prog/SM HGMMA LDGSTS"]
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
            u = sm90_usage(src, cfg.num_warps, cfg.num_stages, cfg.maxnreg)
            progs = _programs_per_sm(u["regs"], u["shared"], cfg.num_warps) if u["regs"] else "?"
            out.append(f"{name:17} {cfg.kwargs['BM']:4} {cfg.kwargs['BN']:4} {cfg.kwargs['BK']:4} "
                       f"{cfg.kwargs.get('HE', '-'):>2} {cfg.num_warps:5} {cfg.num_stages:6} {cfg.maxnreg or '-':>3} "
                       f"{u['regs'] or '?':>9} {u['stack'] if u['stack'] is not None else '?':>5} "
                       f"{u['shared'] / 1024:7.0f} {progs:>7} {u['sass'].count('HGMMA'):5} "
                       f"{u['sass'].count('LDGSTS'):6}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="the results folder of gpu_reports.sh (GT_RUN)")
    ap.add_argument("--regs", action="store_true", help="offline sm_90 registers of every configuration (no GPU)")
    ap.add_argument("--configs", action="store_true",
                    help="with --run: also µs a call of each kernel at each autotune config vs cuBLAS + torch GELU")
    a = ap.parse_args()
    if a.regs:
        print("\n".join(regs()))
        return
    if not a.run:
        ap.error("--run is required (or --regs)")
    print("== ffn: autotuned configs (bf16)")
    print("\n".join(tuned()))
    if a.configs:
        print("== ffn: each kernel at each config (bf16 GELU, µs a call, median; x_ref = the replaced ops' µs / µs)")
        print("\n".join(configs_table()))
    print("== ffn: bench rows (ms per call; x_ref = reference ms / ms)")
    print("\n".join(bench_table(Path(a.run))))


if __name__ == "__main__":
    main()
