"""The ffn op's GPU check, last step: a short table of its bench rows (``RUN/bench.csv``: eager and CUDA-graph ms of
the lab kernel and the reference — cuBLAS + torch's GELU — at the models' two FFN shapes, fwd and fwd+bwd, the
speedup and the error vs float64), then the autotuner's choice per kernel and shape (one bf16 fwd+bwd each; with
TRITON_CACHE_AUTOTUNING=1 the bench's tuning is read back from Triton's cache, not redone).

    PYTHONPATH=. python scripts/gpu_ffn.py --run profiles/<gpu>/run-...
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the results folder of gpu_reports.sh (GT_RUN)")
    a = ap.parse_args()
    print("== ffn: autotuned configs (bf16)")
    print("\n".join(tuned()))
    print("== ffn: bench rows (ms per call; x_ref = reference ms / ms)")
    print("\n".join(bench_table(Path(a.run))))


if __name__ == "__main__":
    main()
