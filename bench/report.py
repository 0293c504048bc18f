"""Turn a benchmark run into a report: ``python -m bench.report [--gpu SLUG | --dir DIR]``.

Reads ``<dir>/bench.csv`` (written by ``pytest bench/ --benchmark``; dir = profiles/<gpu-slug>, default this
machine's GPU, else the only/newest profiles/*/bench.csv), ``<dir>/gates.json`` if present and the validity run
logs ``<dir>/validity/*.jsonl`` (JSONL records with step and loss; ``python -m bench.bench_train --validity``).
Writes ``<dir>/report.md`` with tables, per-op pivot CSVs (``report_<op>_ms.csv``) and PNG plots (matplotlib, Agg):
kernel time vs shape per implementation, % of copy bandwidth, speedup over the reference; the lab kernels against
the peers per timing mode (``lab_vs_peers``: CUDA-graph time first, then eager; ``report_peers.csv``,
``peers_speedup.png``); training tok/s and peak memory per fusion variant; loss curves of the validity run.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from groundthink.spec import specs  # noqa: E402

from bench.floors import floor_base  # noqa: E402
from bench.overfit import OVERFIT_TOL, overfit_mask  # noqa: E402
from bench.report_variants import sections as variants_sections

# the ops with a benchmark, and the implementations in the order reference, lab kernels, peers (from the specs)
KERNEL_OPS = tuple(op for op, s in specs().items() if s.bench is not None)
LAB = {op: tuple(i.name for i in s.role("lab")) for op, s in specs().items()}
PEER = {op: tuple(i.name for i in s.role("peer")) for op, s in specs().items()}
IMPL_ORDER = tuple(dict.fromkeys(i.name for role in ("reference", "lab", "peer") for s in specs().values()
                                 for i in s.role(role))) + ("peer",)


# ------------------------------------------------------------------------------------------------ helpers

def _fmt(v, kind: str = "g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, str):
        return v
    if kind == "ms":
        return f"{v:.4g}"
    if kind == "x":
        return f"{v:.2f}×"
    if kind == "pct":
        return f"{v:.0f}%"
    if kind == "e":
        return f"{v:.2e}"
    if kind == "int":
        return f"{v:,.0f}"
    return f"{v:.3g}"


def md_table(df: pd.DataFrame, kinds: dict | None = None) -> str:
    kinds = kinds or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [_fmt(r[c], kinds.get(c, "g")).replace("|", "/").replace("\n", " ") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _impl_key(impl: str) -> int:
    return IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)


def find_dir(gpu: str | None = None, directory: str | None = None) -> Path:
    if directory:
        return Path(directory)
    from groundthink.device import PROFILES, profiles_dir
    if gpu:
        return profiles_dir(gpu)
    here = profiles_dir()
    if (here / "bench.csv").exists():
        return here
    if (here / "validity").exists():
        return here
    found = sorted(PROFILES.glob("*/bench.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no profiles/*/bench.csv: run pytest bench/ --benchmark first (or pass --dir)")
    return found[-1].parent


NOT_A_MEASUREMENT_PREFIX = "NOT A PERFORMANCE MEASUREMENT"


def load_rows(d: Path) -> pd.DataFrame:
    if not (d / "bench.csv").exists():      # e.g. only a validity run so far
        from bench.common import CSV_COLUMNS
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("ms", "copy_gbps") else object)
                             for c in CSV_COLUMNS})
    df = pd.read_csv(d / "bench.csv")
    for c in ("op", "impl", "shape", "pass", "variant", "note", "timer", "err_shape", "errors", "measurement"):
        if c in df:
            df[c] = df[c].map(lambda v: "" if pd.isna(v) else str(v))
    if "note" in df:   # the CPU label is said once, at the top of the report
        df["note"] = df["note"].str.replace(r"(; )?NOT A PERFORMANCE MEASUREMENT \([^)]*\)", "", regex=True)
    return df


def _bar(ax, table: pd.DataFrame, ylabel: str, log: bool = False):
    """Grouped bars: index → x groups, columns → bars."""
    n = max(len(table.columns), 1)
    width = 0.8 / n
    xs = range(len(table.index))
    for i, col in enumerate(table.columns):
        vals = table[col].tolist()
        ax.bar([x + (i - (n - 1) / 2) * width for x in xs], [0 if pd.isna(v) else v for v in vals], width,
               label=str(col))
    ax.set_xticks(list(xs))
    ax.set_xticklabels([str(i) for i in table.index], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


_WATERMARK: list[str] = []   # set by build_report for CPU runs


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    if _WATERMARK:
        fig.text(0.5, 0.5, _WATERMARK[0], ha="center", va="center", fontsize=14, color="red", alpha=0.35,
                 rotation=20, transform=fig.transFigure)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ------------------------------------------------------------------------------------------------ sections

def kernel_section(df: pd.DataFrame, op: str, d: Path) -> list[str]:
    sub = df[df["op"] == op].copy()
    if sub.empty:
        return []
    sub["case"] = sub["shape"] + " " + sub["pass"]
    sub["_o"] = sub["impl"].map(_impl_key)
    sub = sub.sort_values(["pass", "shape", "_o"], kind="stable")
    out = [f"## {op}", ""]
    if "ms_graph" in sub:    # the best peer's CUDA-graph time over this row's (speedup_vs_best_peer: the eager one)
        best = sub[sub["impl"].isin(PEER.get(op, ()))].groupby("case")["ms_graph"].min()
        sub["× best peer (graph)"] = sub["case"].map(best) / sub["ms_graph"]
    cols = ["shape", "pass", "impl", "ms", "ms_graph", "gbps", "pct_bw", "tflops", "peak_mb", "speedup_vs_ref",
            "× best peer (graph)", "speedup_vs_best_peer", "max_rel_err", "warmup_s", "note"]
    t = sub[[c for c in cols if c in sub]].rename(columns={"speedup_vs_best_peer": "× best peer (eager)"})
    t["note"] = t["note"].str.slice(0, 80)
    out += [md_table(t, {"ms": "ms", "ms_graph": "ms", "gbps": "int", "pct_bw": "pct", "speedup_vs_ref": "x",
                         "× best peer (graph)": "x", "× best peer (eager)": "x", "max_rel_err": "e",
                         "peak_mb": "int", "warmup_s": "g"}), "",
            "ms: eager (host included); ms_graph: CUDA-graph replays (GPU time only, the captured step). "
            "warmup_s: wall time of the untimed first call (compilation, autotuning: fla's is minutes when cold).", ""]
    pivot = sub.pivot_table(index="case", columns="impl", values="ms", aggfunc="first")
    pivot = pivot[sorted(pivot.columns, key=_impl_key)]
    pivot.to_csv(d / f"report_{op}_ms.csv")
    out.append(f"Pivot (ms): `report_{op}_ms.csv`")
    imgs = []
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(pivot) + 3), 4))
    _bar(ax, pivot, "median ms (log)", log=True)
    ax.set_title(f"{op}: time per call")
    imgs.append(_save(fig, d / f"{op}_time.png"))
    bw = sub.pivot_table(index="case", columns="impl", values="pct_bw", aggfunc="first")
    if not bw.empty and bw.notna().any().any():
        bw = bw[sorted(bw.columns, key=_impl_key)]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bw) + 3), 4))
        _bar(ax, bw, "% of copy bandwidth")
        ax.axhline(100, color="k", lw=0.8, ls="--")
        ax.set_title(f"{op}: minimal bytes / time, % of measured copy bandwidth")
        imgs.append(_save(fig, d / f"{op}_pct_bw.png"))
    sp = sub[sub["impl"] != "reference"].pivot_table(index="case", columns="impl", values="speedup_vs_ref",
                                                     aggfunc="first")
    if not sp.empty and sp.notna().any().any():
        sp = sp[sorted(sp.columns, key=_impl_key)]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(sp) + 3), 4))
        _bar(ax, sp, "speedup over the reference (log)", log=True)
        ax.axhline(1, color="k", lw=0.8, ls="--")
        ax.set_title(f"{op}: speedup over the PyTorch reference")
        imgs.append(_save(fig, d / f"{op}_speedup.png"))
    out += [""] + [f"![{i}]({i})" for i in imgs] + [""]
    return out


def train_section(df: pd.DataFrame, d: Path) -> list[str]:
    sub = df[df["op"] == "train"].copy()
    if sub.empty:
        return []
    sub["_o"] = sub["impl"].map(_impl_key)
    sub = sub.sort_values(["shape", "variant", "_o"], kind="stable")
    out = ["## End to end: training throughput", "",
           "bf16 autocast, AdamW, fixed random batch, after warm-up; peak = absolute max_memory_allocated.", ""]
    t = sub[["shape", "variant", "impl", "tok_s", "ms", "peak_mb", "speedup_vs_ref", "speedup_vs_best_peer",
             "note"]].copy()
    t["note"] = t["note"].str.slice(0, 60)
    out += [md_table(t, {"tok_s": "int", "ms": "ms", "peak_mb": "int", "speedup_vs_ref": "x",
                         "speedup_vs_best_peer": "x"}), ""]
    sub.to_csv(d / "report_train.csv", index=False, columns=[c for c in sub.columns if not c.startswith("_")])
    imgs = []
    sizes = list(dict.fromkeys(sub["shape"]))
    for metric, label, name in (("tok_s", "training tok/s", "train_tok_s.png"),
                                ("peak_mb", "peak memory (MB)", "train_peak_mem.png")):
        fig, axes = plt.subplots(len(sizes), 1, figsize=(10, 3.6 * len(sizes)), squeeze=False)
        for ax, size in zip(axes[:, 0], sizes):
            s = sub[sub["shape"] == size]
            piv = s.pivot_table(index="variant", columns="impl", values=metric, aggfunc="first")
            if piv.empty:
                ax.set_visible(False)
                continue
            piv = piv[sorted(piv.columns, key=_impl_key)]
            _bar(ax, piv, label)
            ax.set_title(f"{label}, {size}")
        imgs.append(_save(fig, d / name))
    out += [f"![{i}]({i})" for i in imgs] + [""]
    return out


def read_jsonl(path: Path) -> list[dict]:
    recs = []
    for ln in path.read_text().splitlines():
        ln = ln.strip()
        if not ln:
            continue
        try:
            recs.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return recs


def validity_section(d: Path) -> list[str]:
    logs = sorted((d / "validity").glob("*.jsonl"))
    if not logs:
        return []
    out = ["## End-to-end validity (loss curves)", ""]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    rows = []
    _plot_validity_diffs(ax2, d)
    for p in logs:
        recs = read_jsonl(p)
        pts = [(r["step"], r["loss"]) for r in recs if "step" in r and "loss" in r
               and r.get("type", "train") == "train" and r["loss"] is not None]
        cfg = next((r for r in recs if r.get("type") == "config"), {})
        kern = cfg.get("ops")
        if not pts:
            continue
        xs, ys = zip(*pts)
        line, = ax.plot(xs, ys, label=f"{p.stem} (train)", lw=1.2)
        ev = [(r["step"], r["val_loss"]) for r in recs if r.get("type") == "eval" and r.get("val_loss") is not None]
        if ev:
            ax.plot(*zip(*ev), ls="--", marker="o", ms=3, color=line.get_color(), label=f"{p.stem} (val)")
        final = next((r for r in reversed(recs) if r.get("type") == "final"), {})
        graph = final.get("graph_reason") or cfg.get("graph_reason", "")   # the final record's: after capture
        rows.append({"run": p.stem, "steps": xs[-1], "last train loss": ys[-1],
                     "val loss": final.get("val_loss"), "graph": graph,
                     "overrides": " ".join((cfg.get("args") or {}).get("override") or []),
                     "kernels": json.dumps(kern) if kern else ""})
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("validity runs: same seed and data, different kernels / summation orders")
    if rows:
        img = _save(fig, d / "validity_loss.png")
        out += [md_table(pd.DataFrame(rows), {"last train loss": "g", "val loss": "g"}), ""]
        agree = validity_agreement(d)
        if not agree.empty:
            out += [md_table(agree, {"max rel diff": "e", "at last common step": "e", "common steps": "int",
                                     "at step": "int", "at first common step": "e"}), ""]
        out += validity_lines(d) + [""]
        out += [f"![{img}]({img})", ""]
    else:
        plt.close(fig)
        out += ["(logs present but no step/loss records)", ""]
    return out


# the timing modes of the lab-vs-peer comparison, graph first: (mode, the bench.csv column, what it is)
PEER_MODES = (("graph", "ms_graph", "CUDA-graph replays, GPU time only: what the captured training step pays"),
              ("eager", "ms", "ordinary calls, host time included: what a --graph off step pays"))
PEER_COLUMNS = ["op", "shape", "pass", "mode", "best lab", "lab ms", "peers ms", "best peer", "× vs best peer"]


def lab_vs_peers(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (op, shape, pass, timing mode) where a lab kernel and a peer were timed in that mode in this
    run (``PEER_MODES``: "graph" from ``ms_graph``, then "eager" from ``ms``): the fastest lab kernel, every
    peer's time, the fastest peer and the lab kernel's speedup over it (> 1: the lab wins). A peer without a
    graph time (not graph-safe, or its capture failed: its note says so) is in the eager row only."""
    rows = []
    kernels = df[df["op"] != "train"]
    for (op, shape, pass_), g in kernels.groupby(["op", "shape", "pass"], sort=False):
        for mode, col, _ in PEER_MODES:
            timed = g[g[col].notna()] if col in g else g.iloc[:0]
            lab = timed[timed["impl"].isin(LAB.get(op, ()))]
            peers = timed[timed["impl"].isin(PEER.get(op, ()))]
            if lab.empty or peers.empty:
                continue
            best_lab, best_peer = lab.loc[lab[col].idxmin()], peers.loc[peers[col].idxmin()]
            rows.append({"op": op, "shape": shape, "pass": pass_, "mode": mode, "best lab": best_lab["impl"],
                         "lab ms": best_lab[col],
                         "peers ms": ", ".join(f"{r['impl']} {r[col]:.4g}" for _, r in peers.iterrows()),
                         "best peer": best_peer["impl"], "× vs best peer": best_peer[col] / best_lab[col]})
    return pd.DataFrame(rows, columns=PEER_COLUMNS)


def peer_answer(t: pd.DataFrame) -> list[str]:
    """The "Lab kernels vs the best peer" answer lines: per timing mode (graph first), per op the range of the
    speedups over the best peer and in how many cases the lab kernel is no slower."""
    out = []
    for mode, _, what in PEER_MODES:
        m = t[t["mode"] == mode]
        if m.empty:
            continue
        parts = []
        for op, g in m.groupby("op", sort=False):
            x = g["× vs best peer"]
            parts.append(f"{op} {x.min():.2f}–{x.max():.2f}× (no slower in {int((x >= 1).sum())} of {len(x)} cases)")
        out.append(f"- **Lab kernels vs the best peer, {mode}** ({what}; fastest lab kernel, same run): "
                   + "; ".join(parts) + ".")
    return out


def _untimed_peers(df: pd.DataFrame, col: str) -> dict[str, list[str]]:
    """{op: its peers declared in the specs without a ``col`` figure in this run} (ops of the run only)."""
    out = {}
    for op in KERNEL_OPS:
        if not (df["op"] == op).any():
            continue
        timed = set(df[(df["op"] == op) & df[col].notna()]["impl"]) if col in df else set()
        missing = [p for p in PEER.get(op, ()) if p not in timed]
        if missing:
            out[op] = missing
    return out


def unmeasured_peers(df: pd.DataFrame) -> list[str]:
    """Peers declared in the specs that have no timed row in this run (not installed, skipped by the time
    budget or a -k filter, or failed: the run's log says which)."""
    return [f"{op}: {', '.join(ps)}" for op, ps in _untimed_peers(df, "ms").items()]


def eager_only_peers(df: pd.DataFrame) -> list[str]:
    """Peers timed in this run but without a CUDA-graph time anywhere (not graph-safe in their spec, or every
    capture failed: the row's note says why): the graph rows of the peer table lack them."""
    untimed = _untimed_peers(df, "ms")
    out = []
    for op, ps in _untimed_peers(df, "ms_graph").items():
        ps = [p for p in ps if p not in untimed.get(op, ())]
        if ps:
            out.append(f"{op}: {', '.join(ps)}")
    return out


def _peer_plot(t: pd.DataFrame, d: Path) -> str:
    """Grouped bars per case: the lab kernel's speedup over the best peer in each timing mode (log scale)."""
    t = t.assign(case=t["op"] + " " + t["shape"] + " " + t["pass"])
    piv = t.pivot_table(index="case", columns="mode", values="× vs best peer", aggfunc="first", sort=False)
    piv = piv[[m for m, _, _ in PEER_MODES if m in piv.columns]]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(piv) + 3), 4.2))
    _bar(ax, piv, "best lab kernel vs best peer (×, log)", log=True)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_title("lab kernels vs peers, same run (> 1: the lab kernel is faster); graph: GPU time, eager: host "
                 "included", fontsize=9)
    return _save(fig, d / "peers_speedup.png")


def peers_section(df: pd.DataFrame, d: Path) -> list[str]:
    t = lab_vs_peers(df)
    missing, eager_only = unmeasured_peers(df), eager_only_peers(df)
    if t.empty and not missing:
        return []
    out = ["## Lab kernels vs peers (same run)", "",
           "Per op, shape, pass and timing mode: the fastest lab kernel against every peer timed in the same run; "
           "× > 1: the lab kernel is faster than the best peer. *graph*: "
           f"{PEER_MODES[0][2]} (`ms_graph`); *eager*: {PEER_MODES[1][2]} (`ms`; at µs shapes mostly the host's "
           "launch cost).", ""]
    if not t.empty:
        t.to_csv(d / "report_peers.csv", index=False)
        out += [md_table(t, {"lab ms": "ms", "× vs best peer": "x"}), "", "Table: `report_peers.csv`", ""]
        img = _peer_plot(t, d)
        out += [f"![{img}]({img})", ""]
    if missing:
        out += ["Peers with no timing in this run: " + "; ".join(missing) + ".", ""]
    if eager_only:
        out += ["Peers without a CUDA-graph time in this run (not graph-safe, or the capture failed: the row's "
                "note): " + "; ".join(eager_only) + ".", ""]
    return out


def bench_json_files(d: Path) -> list[Path]:
    """pytest-benchmark's files of a results folder, oldest first: ``bench-<n>.json`` (earlier calls, kept aside by
    ``gpu_reports.sh`` before a merge call; n ascending) then ``bench.json`` (the latest call)."""
    earlier = sorted(d.glob("bench-*.json"), key=lambda p: int(p.stem[6:]) if p.stem[6:].isdigit() else 0)
    return earlier + [p for p in (d / "bench.json",) if p.exists()]


def pytest_benchmark_section(d: Path) -> list[str]:
    """pytest-benchmark's own entries (``bench.json``): host-clock, synchronized calls of the same functions, beside
    the CUDA-event medians of the CSV (``extra_info``). Every entry must time real work."""
    files = bench_json_files(d)
    if not files:
        return []
    by_name: dict = {}
    for p in files:   # a merge call's entries replace the earlier call's of the same test
        try:
            entries = json.loads(p.read_text()).get("benchmarks", [])
        except (OSError, ValueError):
            return ["## pytest-benchmark", "", f"({p.name} unreadable)", ""]
        by_name.update({e.get("name", ""): e for e in entries})
    rows = []
    for e in by_name.values():
        st, ex = e.get("stats", {}), e.get("extra_info", {})
        med = st.get("median")
        rows.append({"test": e.get("name", ""), "pytest-benchmark median ms": None if med is None else med * 1e3,
                     "rounds": st.get("rounds"), "row ms": ex.get("ms"),
                     "ratio": (med * 1e3 / ex["ms"]) if med and ex.get("ms") else None})
    if not rows:
        return []
    t = pd.DataFrame(rows).sort_values("test")
    return ["## pytest-benchmark's table", "",
            f"{len(t)} entries from {', '.join(f'`{p.name}`' for p in files)} (`--benchmark-json`): "
            "pytest-benchmark's median of synchronized host-clock calls of the very function the row times, beside "
            "the row's CUDA-event median; ratio ≈ 1 for long calls, > 1 where launch and host time dominate.", "",
            md_table(t, {"pytest-benchmark median ms": "ms", "row ms": "ms", "rounds": "int", "ratio": "g"}),
            ""]


VALIDITY_TOL = 0.01          # issue 10: the lab's training loss within 1 % of the reference's at every logged step


def _validity_runs(d: Path) -> dict[str, dict[int, float]]:
    runs = {}
    for p in sorted((d / "validity").glob("*.jsonl")):
        runs[p.stem] = {r["step"]: r["loss"] for r in read_jsonl(p) if r.get("type", "train") == "train"
                        and "step" in r and r.get("loss") is not None}
    return runs


def _plot_validity_diffs(ax, d: Path) -> None:
    """Relative train-loss difference per step of every compared run from its base (log scale), with 1 %."""
    runs = _validity_runs(d)
    for _, r in validity_agreement(d).iterrows():
        base, pts = runs[r["vs"]], runs[r["run"]]
        xs = [s for s in sorted(set(pts) & set(base)) if base[s]]
        ys = [max(abs(pts[s] - base[s]) / abs(base[s]), 1e-9) for s in xs]
        if xs:
            floor = floor_base(r["run"]) is not None
            ax.plot(xs, ys, lw=1.2, ls=":" if floor else "-",
                    label=f"{r['run']} vs {r['vs']}" + (" (noise floor)" if floor else ""))
    ax.axhline(VALIDITY_TOL, color="red", lw=0.8, ls="--", label="1 %")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("|loss − base loss| / base loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("relative train-loss difference (floor: dotted)")


def validity_agreement(d: Path) -> pd.DataFrame:
    """Per validity run: the largest relative difference of its train loss from its base run's at the steps both
    logged, the step where it occurs, the difference at the first common step (the size of the perturbation
    before training amplifies it) and at the last. The base is the reference run for the lab run (the kernels
    must not change learning) and the same path for a noise-floor run (``_floor_base``)."""
    runs = _validity_runs(d)
    ref = next((k for k in runs if k.endswith("_reference")), None)
    rows = []
    for name, pts in runs.items():
        base = floor_base(name) or ref
        if base is None or name == ref or base not in runs:
            continue
        common = [s for s in sorted(set(pts) & set(runs[base])) if runs[base][s]]
        rel = [abs(pts[s] - runs[base][s]) / abs(runs[base][s]) for s in common]
        worst = max(range(len(rel)), key=rel.__getitem__) if rel else None
        rows.append({"run": name, "vs": base, "common steps": len(common),
                     "max rel diff": rel[worst] if rel else None,
                     "at step": common[worst] if rel else None,
                     "at first common step": rel[0] if rel else None,
                     "at last common step": rel[-1] if rel else None})
    return pd.DataFrame(rows, columns=["run", "vs", "common steps", "max rel diff", "at step",
                                       "at first common step", "at last common step"])


def validity_verdict(d: Path) -> dict | None:
    """The criterion: the lab run's relative train-loss difference from the reference at every logged step ≤
    max(1 %, floor), floor = the largest difference of a noise-floor run (numerics alone) from its own path's run
    over the steps both logged. None without a lab run compared with a reference run. Keys: lab, worst,
    at_step, steps, floor (None: not measured), floor_run, floor_steps, threshold, decided_by, pass."""
    a = validity_agreement(d)
    if a.empty:
        return None
    a = a[a["common steps"] > 0]
    is_floor = a["run"].map(lambda run: floor_base(run) is not None).astype(bool)
    floors, labs = a[is_floor], a[~is_floor]
    if labs.empty:
        return None
    lab = labs.loc[labs["max rel diff"].idxmax()]
    fl = floors.loc[floors["max rel diff"].idxmax()] if not floors.empty else None
    floor = None if fl is None else float(fl["max rel diff"])
    threshold = max(VALIDITY_TOL, floor or 0.0)
    return {"lab": lab["run"], "worst": float(lab["max rel diff"]), "at_step": int(lab["at step"]),
            "steps": int(lab["common steps"]), "first": float(lab["at first common step"]), "floor": floor,
            "floor_run": None if fl is None else f"{fl['run']} vs {fl['vs']}",
            "floor_steps": 0 if fl is None else int(fl["common steps"]),
            "floor_first": None if fl is None else float(fl["at first common step"]),
            "threshold": threshold, "decided_by": "the noise floor" if floor and floor > VALIDITY_TOL else "1 %",
            "pass": float(lab["max rel diff"]) <= threshold}


FLOOR_TEXT = ("-reordered = the same path with its Mamba-2 scan summed in another order, -bf16init = the same path "
              "from weights rounded to bf16 precision")


def validity_lines(d: Path) -> list[str]:
    """The verdict in words (report, summary and ``bench_train --validity``)."""
    v = validity_verdict(d)
    if v is None:
        return ["Validity: no lab run compared with a reference run at a common step."]
    floor = (f"noise floor {_fmt(v['floor'], 'e')} ({v['floor_run']}, the largest of the floor runs: {FLOOR_TEXT}; "
             f"{v['floor_steps']} steps, {_fmt(v['floor_first'], 'e')} at the first)"
             if v["floor"] is not None else "noise floor not measured (no floor run)")
    return [f"Validity ({v['lab']} vs the reference, train loss at every logged step): worst relative difference "
            f"{_fmt(v['worst'], 'e')} at step {v['at_step']} over {v['steps']} common steps "
            f"({_fmt(v['first'], 'e')} at the first); {floor}; criterion ≤ max(1 %, floor) = "
            f"{_fmt(v['threshold'], 'e')}, decided by {v['decided_by']}: {'PASS' if v['pass'] else 'FAIL'}."]


def _ranked_variants(d: Path) -> pd.DataFrame | None:
    from bench.report_variants import ranked
    p = d / "variants.csv"
    if not p.exists():
        return None
    df = pd.read_csv(p)
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        return None
    tokens = ok["tokens"].max()
    rows = ok[ok["tokens"] == tokens]
    curves = pd.read_csv(d / "variants_curves.csv") if (d / "variants_curves.csv").exists() else pd.DataFrame()
    if not curves.empty:
        curves = curves[curves["budget"] == tokens]
    return ranked(rows, curves)[0]


def headline(df: pd.DataFrame, d: Path) -> list[str]:
    """The three answers the issue asks of one run, from the figures below (empty parts: not measured)."""
    out = []
    v = _ranked_variants(d)
    if v is not None:
        first = v.iloc[0]
        per_s = v.sort_values("best@equal time").iloc[0] if "best@equal time" in v and \
            v["best@equal time"].notna().any() else None
        fastest = v.loc[v["tok_s"].idxmax()] if v["tok_s"].notna().any() else None
        at = f" at step {first['best_step']:.0f}" if pd.notna(first["best_step"]) else ""
        n_over = int(overfit_mask(v).sum())
        out.append(f"- **Best variant per token:** {first['variant']} (best val loss {first['best_val_loss']:.4f}"
                   f"{at}, {first['best bpc']:.3f} bits/char) of {len(v)}" +
                   (f"; **per second:** {per_s['variant']} (best val {per_s['best@equal time']:.4f} within equal "
                    f"training time)" if per_s is not None else "") +
                   (f"; fastest: {fastest['variant']} ({fastest['tok_s']:,.0f} tok/s)" if fastest is not None
                    else "") +
                   (f"; {n_over} of {len(v)} runs overfit (final val > best by more than {OVERFIT_TOL:.0%}: ranked by "
                    f"their best eval)" if n_over else "") + ".")
    out += peer_answer(lab_vs_peers(df))
    tr = df[(df["op"] == "train") & df["ms"].notna()]
    for shape, g in tr.groupby("shape", sort=False):
        ours, peer = g[g["impl"].str.startswith("triton")], g[g["impl"] == "peer"]
        if ours.empty or peer.empty:
            continue
        o, q = ours.loc[ours["ms"].idxmin()], peer.loc[peer["ms"].idxmin()]
        out.append(f"- **Training step {shape}:** {o['variant']} --kernels {o['impl']} {o['ms']:.4g} ms vs the peer "
                   f"model's {q['ms']:.4g} ms ({q['ms'] / o['ms']:.2f}×).")
    a = validity_agreement(d) if (d / "validity").exists() else pd.DataFrame()
    if not a.empty:
        out.append("- **Do the kernels change learning?** " + "; ".join(
            f"{r['run']} vs {r['vs']}: max relative train-loss difference {_fmt(r['max rel diff'], 'e')} over "
            f"{r['common steps']} common steps" if r["common steps"] else
            f"{r['run']} vs {r['vs']}: no step logged by both runs" for _, r in a.iterrows()
            if floor_base(r["run"]) is None) + ". "
            + validity_lines(d)[0])
    return ["## Answers of this run", ""] + out + [""] if out else []


def gates_section(d: Path) -> list[str]:
    p = d / "gates.json"
    if not p.exists():
        return []
    data = json.loads(p.read_text())
    m = data.get("meta", {})
    rows = [{"op": op, "impl": impl, "step mode": mode, "allowed": e.get("allowed"), "reason": e.get("reason", "")}
            for op, impls in data.get("ops", {}).items() for impl, modes in impls.items()
            for mode, e in (modes.items() if isinstance(modes, dict) and "reason" not in modes else [("?", modes)])
            if isinstance(e, dict)]
    out = ["## Gate manifest (gates.json)", "",
           f"GPU {m.get('gpu')}, versions {m.get('versions')}, kernel hash {m.get('kernel_hash')}, "
           f"created {m.get('created')}", "",
           "One verdict per step mode: *graph* is for the CUDA-graph-captured training step (CUDA-graph times "
           "against graph-safe competitors), *eager* for `--graph off` (eager times, host overhead included); "
           "train.py reads the one for the mode it runs in.", ""]
    if rows:
        out += [md_table(pd.DataFrame(rows)), ""]
    return out


def build_report(d: Path) -> Path:
    df = load_rows(d)
    cpu = (df["measurement"] == "cpu-not-a-measurement").any() if "measurement" in df else False
    copy = df["copy_gbps"].dropna().iloc[0] if "copy_gbps" in df and df["copy_gbps"].notna().any() else None
    lines = [f"# Benchmark report: {d.name}", ""]
    _WATERMARK[:] = ["CPU: NOT A PERFORMANCE MEASUREMENT"] if cpu else []
    if cpu:
        lines += ["> **NOT A PERFORMANCE MEASUREMENT** — CPU run: tiny shapes through the Triton interpreter and "
                  "eager PyTorch; only the plumbing and the error figures mean anything.", ""]
    lines += [f"Rows: {len(df)}. Copy bandwidth measured in the run: "
              f"{_fmt(copy, 'int') + ' GB/s' if copy else 'n/a'}. "
              "Times are CUDA-event medians (see bench/common.py); GB/s counts each op's minimal bytes; "
              "speedups are against the PyTorch reference and the fastest peer at the same shape.", ""]
    lines += headline(df, d)
    lines += gates_section(d)
    lines += peers_section(df, d)
    for op in KERNEL_OPS:
        lines += kernel_section(df, op, d)
    others = [o for o in df["op"].unique() if o not in KERNEL_OPS and o != "train"]
    for op in others:
        lines += kernel_section(df, op, d)
    lines += train_section(df, d)
    lines += validity_section(d)
    lines += variants_sections(d)
    lines += pytest_benchmark_section(d)
    out = d / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def summary(d) -> str:
    """The run's answers and the lab-vs-peer table as plain text (no plots): the short table a GPU call prints
    last."""
    d = Path(d)
    df = load_rows(d)
    lines = headline(df, d)
    t = lab_vs_peers(df)
    if not t.empty:
        with pd.option_context("display.width", 160, "display.max_colwidth", 50):
            lines.append(t.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return "\n".join(lines) if lines else f"(no answers yet in {d.name}: no benchmark, study or validity results)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", help="profiles/<SLUG> to report on (default: this machine's GPU, else the newest)")
    p.add_argument("--dir", help="explicit results folder (holding bench.csv)")
    p.add_argument("--summary", action="store_true", help="print the report's answers and the lab-vs-peer table")
    a = p.parse_args(argv)
    d = find_dir(a.gpu, a.dir)
    out = build_report(d)
    if a.summary:
        print(summary(d))
    print(f"report -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
