"""Report sections of the variant study and the long-context study: ``sections(dir) -> list of markdown lines``.

    python -m bench.report_variants [--dir profiles/<gpu>/]      # writes <dir>/variants.md on its own
    lines += sections(d)                                         # inside bench/report.py's build_report

Reads ``variants.csv`` / ``variants_curves.csv`` (``python -m bench.variants``) and ``long_context.csv``
(``python -m bench.long_context``) from the folder; writes the plots next to them (matplotlib, Agg):

* ``variants_val_curves.png`` — every variant's validation loss against tokens seen and against training seconds,
  its best eval marked;
* ``variants_speed_loss.png`` — tok/s and best validation loss side by side, one bar per variant (the final loss
  marked where it ended above the best);
* ``long_context_loss.png`` — loss by position bucket within the window, one panel per context length.

The ranked table orders the variants by their best validation loss at the shared token budget (the lowest of the
evals: what a model learnt, where the final loss of a run that overfits would rank memorisation), with its step
and an ``overfit`` flag (final loss above the best by more than 2 %), learning per token; and by the best
validation loss each had reached within the same training time — the total training time of the fastest variant,
on its running-minimum curve interpolated between evals — learning per second. Runs at other budgets get their own
table. Old variants.csv files without best_step / overfit / best_val_loss get them from variants_curves.csv (else
from the final loss). Rows measured on a CPU are labelled as not a performance measurement.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.overfit import OVERFIT_TOL, is_overfit, overfit_mask  # noqa: E402

CPU_NOTE = ("> **NOT A PERFORMANCE MEASUREMENT** — these rows were measured on a CPU (eager PyTorch references, tiny "
            "shapes): only the plumbing means anything.")


# ----------------------------------------------------------------------------------------------- helpers

def _fmt(v, kind: str) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (str, bool, np.bool_)):
        return str(v)
    return {"int": f"{v:,.0f}", "loss": f"{v:.4f}", "x": f"{v:.3g}", "s": f"{v:.1f}", "pm": f"{v:+.3f}",
            "ms": f"{v:.2f}"}.get(kind, f"{v:.3g}")


def md_table(df: pd.DataFrame, kinds: dict[str, str]) -> list[str]:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(_fmt(r[c], kinds.get(c, "g")).replace("|", "/") for c in cols) + " |")
    return out


def _save(fig, path: Path, cpu: bool) -> str:
    fig.tight_layout()
    if cpu:
        fig.text(0.5, 0.5, "CPU: NOT A PERFORMANCE MEASUREMENT", ha="center", va="center", fontsize=14, color="red",
                 alpha=0.35, rotation=20, transform=fig.transFigure)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _is_cpu(df: pd.DataFrame) -> bool:
    return "device" in df and (df["device"].astype(str) == "cpu").any()


# ----------------------------------------------------------------------------------------------- variants



def equal_time_loss(curves: pd.DataFrame, t: float) -> dict[str, float]:
    """Each variant's best validation loss reached within ``t`` training seconds (its running minimum, linear
    between evals; NaN before its first eval)."""
    out = {}
    for v, c in curves.groupby("variant"):
        c = c.dropna(subset=["train_s", "val_loss"]).sort_values("train_s")
        if c.empty or t < c["train_s"].iloc[0] - 1e-9:
            out[v] = float("nan")
        else:
            out[v] = float(np.interp(t, c["train_s"], c["val_loss"].cummin()))
    return out


def learning_columns(rows: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with best_val_loss, best_step and overfit filled where missing (a variants.csv older than these
    columns): from the variant's curve when there is one, else best = the final loss at the last step."""
    df = rows.copy()
    for c in ("best_val_loss", "best_step", "overfit"):
        if c not in df:
            df[c] = np.nan
    df["overfit"] = df["overfit"].astype(object)
    for i, r in df.iterrows():
        c = curves[curves["variant"] == r["variant"]].dropna(subset=["val_loss"]) if not curves.empty else curves
        if pd.isna(r["best_step"]) and not c.empty:
            b = c.loc[c["val_loss"].idxmin()]
            df.loc[i, ["best_val_loss", "best_step"]] = [b["val_loss"], b["step"]]
        elif pd.isna(r["best_val_loss"]):
            df.loc[i, ["best_val_loss", "best_step"]] = [r["val_loss"], r.get("steps", np.nan)]
        over = is_overfit(r["val_loss"], df.loc[i, "best_val_loss"])
        if pd.isna(df.loc[i, "overfit"]) and over is not None:
            df.loc[i, "overfit"] = over
    return df


def ranked(rows: pd.DataFrame, curves: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """The ranked table of one (size, budget) group (by best validation loss) and the equal-time point in
    seconds."""
    t = rows["train_s"].min() if rows["train_s"].notna().any() else None
    df = learning_columns(rows, curves).sort_values(["best_val_loss", "val_loss"])
    df["rank"] = range(1, len(df) + 1)
    df["best bpc"] = df["best_val_loss"] / math.log(2)
    df["Δ best"] = df["best_val_loss"] - df["best_val_loss"].min()
    if t is not None and not curves.empty:
        df["best@equal time"] = df["variant"].map(equal_time_loss(curves, t))
        df["rank/s"] = df["best@equal time"].rank(method="min").astype("Int64")
    cols = ["rank", "variant", "best_val_loss", "best bpc", "best_step", "Δ best", "val_loss", "overfit",
            "best@equal time", "rank/s", "tok_s", "ms_step", "peak_mb", "train_s", "params"]
    return df[[c for c in cols if c in df]], t


def balance(rows: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """The component-balance and state columns of ``rows``, in ``order`` (the ranking's variants)."""
    cols = ["variant", "grad_ratio_rm", "gate_mean", "gate_drift", "rms_rwkv", "rms_mamba", "state_var_ratio",
            "state_signal_rwkv", "state_signal_mamba", "state_growth_rwkv", "state_growth_mamba", "state_finite"]
    return rows.set_index("variant").loc[order].reset_index()[[c for c in cols if c in rows]]


COLORS = list(plt.get_cmap("tab10").colors) + ["black", "olive", "navy", "maroon"]


def plot_curves(table: pd.DataFrame, curves: pd.DataFrame, path: Path, cpu: bool, split_tokens=None) -> str:
    """Validation curves against tokens (and passes over the ``split_tokens`` of the training split, when known) and
    seconds, in the ranking's order (``table``), each best eval starred."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    if split_tokens:
        top = axes[0].secondary_xaxis("top", functions=(lambda m: m * 1e6 / split_tokens,
                                                        lambda p: p * split_tokens / 1e6))
        top.set_xlabel("passes over the training split")
    for i, v in enumerate(table["variant"]):
        c = curves[curves["variant"] == v].sort_values("step")
        if c.empty:
            continue
        ls = "--" if v in ("rwkv6", "mamba2") else "-"
        best = c.loc[c["val_loss"].idxmin()]
        line, = axes[0].plot(c["tokens"] / 1e6, c["val_loss"], ls, marker="o", ms=3, lw=1.3, label=v,
                             color=COLORS[i % len(COLORS)])
        axes[0].plot(best["tokens"] / 1e6, best["val_loss"], "*", ms=10, color=line.get_color())
        if c["train_s"].notna().any():
            axes[1].plot(c["train_s"], c["val_loss"], ls, marker="o", ms=3, lw=1.3, color=line.get_color(), label=v)
            axes[1].plot(best["train_s"], best["val_loss"], "*", ms=10, color=line.get_color())
    axes[0].set_xlabel("tokens seen (millions)")
    axes[1].set_xlabel("training seconds (steady-state ms/step × steps)")
    axes[0].set_ylabel("validation loss (nats/char)")
    axes[0].set_title("learning per token (★ best eval)")
    axes[1].set_title("learning per second (★ best eval)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    return _save(fig, path, cpu)


def plot_speed_loss(table: pd.DataFrame, path: Path, cpu: bool) -> str:
    """tok/s and best validation loss, one bar per variant in the ranking's order (``table``); the final loss of an
    overfit run marked ×."""
    df = table
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.5, 0.38 * len(df) + 1.5)), sharey=True)
    ys = np.arange(len(df))
    axes[0].barh(ys, df["tok_s"].fillna(0) / 1e3, color="tab:blue")
    axes[0].set_xlabel("training tok/s (thousands)")
    axes[1].barh(ys, df["best_val_loss"], color="tab:orange", label="best eval")
    over = overfit_mask(df).to_numpy()
    if over.any():
        axes[1].plot(df["val_loss"].to_numpy()[over], ys[over], "x", color="black", label="final (overfit)")
        axes[1].legend(fontsize=7, loc="lower right")
    hi = max(df["best_val_loss"].max(), df["val_loss"][over].max() if over.any() else -np.inf)
    lo = df["best_val_loss"].min()
    axes[1].set_xlim(lo - 0.1 * max(hi - lo, 0.05), hi + 0.03 * max(hi - lo, 0.05))
    axes[1].set_xlabel("best validation loss (lower is better)")
    axes[0].set_yticks(list(ys))
    axes[0].set_yticklabels(df["variant"])
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_title("speed")
    axes[1].set_title("learning")
    return _save(fig, path, cpu)


def variants_section(d: Path) -> list[str]:
    path = d / "variants.csv"
    if not path.exists():
        return []
    df = pd.read_csv(path)
    curves = pd.read_csv(d / "variants_curves.csv") if (d / "variants_curves.csv").exists() else pd.DataFrame()
    ok = df[df["status"] == "ok"] if "status" in df else df
    cpu = _is_cpu(ok)
    out = ["## Fusion variants: which learns best per token and per second", ""]
    if cpu:
        out += [CPU_NOTE, ""]
    groups = sorted(ok.groupby(["size", "tokens"]), key=lambda kv: -kv[0][1])
    for gi, ((size, tokens), rows) in enumerate(groups):
        c = curves[(curves["size"] == size) & (curves["budget"] == tokens)] if not curves.empty else curves
        r0 = rows.iloc[0]
        kern = sorted(set(rows["kernels"].astype(str)))
        passes = f" = {r0['passes']:.2f} passes over the training split" if pd.notna(r0.get("passes")) else ""
        out += [f"### size {size}, {int(tokens):,} tokens per variant", "",
                f"{int(r0['steps'])} steps × batch {int(r0['batch_size'])} × {int(r0['seq_len'])} characters"
                f"{passes}, seed "
                f"{int(r0['seed'])}, same batches for every variant; device {r0['device']}; CUDA graph "
                f"{'/'.join(sorted(set(rows['graph'].astype(str))))}; kernels {' | '.join(kern)}.", ""]
        table, t = ranked(rows, c)
        out += md_table(table, {"val_loss": "loss", "best_val_loss": "loss", "best bpc": "x", "Δ best": "pm",
                                "best@equal time": "loss", "tok_s": "int", "ms_step": "ms", "peak_mb": "int",
                                "train_s": "s", "params": "int", "rank/s": "int", "rank": "int", "best_step": "int"})
        n_over = int(overfit_mask(table).sum())
        out += ["", "best_val_loss: the lowest validation loss of the evals (nats per character; best bpc = it / "
                    "ln 2), reached at best_step — the ranking (learning per token); val_loss: the final one; "
                    f"overfit: final above best by more than {OVERFIT_TOL:.0%} ({n_over} of {len(table)} runs: "
                    "past its best eval the model memorised the training split). best@equal time: the best loss "
                    f"each variant had reached within {_fmt(t, 's')} s of training (the fastest variant's whole "
                    "run), interpolated between evals (empty: no eval that early); rank/s ranks by it.", ""]
        out += ["Component balance and recurrent state (final model):", ""]
        out += md_table(balance(rows, list(table["variant"])), {"gate_drift": "pm"})
        out += ["", "grad_ratio_rm: median over the evals of ‖∇RWKV‖/‖∇Mamba‖; gate_mean: mean RWKV weight g "
                    "(drift since step 1); rms_*: branch output RMS; state_var_ratio: variance across inputs of the "
                    "RWKV wkv state / of the Mamba SSM state; state_signal_*: that variance / the state's mean "
                    "square; state_growth_*: state RMS over the second half of a 4-window input / over the first "
                    "half (≈ 1: bounded).", ""]
        sfx = "" if gi == 0 else f"_{size}_{int(tokens)}"
        split = r0["tokens"] / r0["passes"] if pd.notna(r0.get("passes")) and r0["passes"] > 0 else None
        imgs = [plot_curves(table, c, d / f"variants_val_curves{sfx}.png", cpu, split) if not c.empty else None,
                plot_speed_loss(table, d / f"variants_speed_loss{sfx}.png", cpu)]
        out += [f"![{i}]({i})" for i in imgs if i] + [""]
    bad = df[df["status"] != "ok"] if "status" in df else df.iloc[0:0]
    if not bad.empty:
        out += ["Runs that did not finish (retried by the next `python -m bench.variants`):", ""]
        out += md_table(bad[["variant", "size", "steps", "status"]], {})
        out += [""]
    return out


# ----------------------------------------------------------------------------------------------- long context

def plot_long_context(df: pd.DataFrame, path: Path, cpu: bool) -> str:
    ctxs = sorted(df["context"].unique())
    fig, axes = plt.subplots(1, len(ctxs), figsize=(5.2 * len(ctxs), 4.2), squeeze=False, sharey=True)
    for ax, ctx in zip(axes[0], ctxs):
        sub = df[df["context"] == ctx]
        for v, s in sub.groupby("variant"):
            s = s.sort_values("position_bucket")
            mid = (s["position_bucket"] + s["bucket_end"]) / 2
            ax.plot(mid, s["loss"], marker="o", ms=3, lw=1.3, label=v)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position in the window (bucket middle)")
        ax.set_title(f"context {ctx:,}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss (nats/char)")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, path, cpu)


def long_context_section(d: Path) -> list[str]:
    path = d / "long_context.csv"
    if not path.exists():
        return []
    df = pd.read_csv(path)
    cpu = _is_cpu(df)
    out = ["## Long context: loss by position within the window", ""]
    if cpu:
        out += [CPU_NOTE, ""]
    r0 = df.iloc[0]
    passes = f" = {r0['passes']:.2f} passes over the training split" if pd.notna(r0.get("passes")) else ""
    out += [f"Each variant trained at each context length with the same token budget ({int(r0['tokens']):,} tokens"
            f"{passes}, size {r0['size']}; batch = tokens per step / context), then evaluated on validation "
            f"windows of that length: mean next-token loss per log2 position bucket. Lower loss late in the window = "
            f"distant context used. Device {r0['device']}.", ""]
    piv = df.pivot_table(index=["variant", "context"], columns="position_bucket", values="loss", aggfunc="first")
    piv = piv.sort_index(axis=1)
    first = df.sort_values("position_bucket").groupby(["variant", "context"])["loss"].first()
    last = df.sort_values("position_bucket").groupby(["variant", "context"])["loss"].last()
    piv.columns = [f"@{int(c)}" for c in piv.columns]
    piv["early − late"] = first - last
    t = piv.reset_index().sort_values(["context", "variant"])
    out += md_table(t, {c: "loss" for c in t.columns if c.startswith("@")} | {"early − late": "pm", "context": "int"})
    img = plot_long_context(df, d / "long_context_loss.png", cpu)
    out += ["", "@N: loss over positions [N, 2N) (the first bucket [0, 8), the last ends at the context length).", "",
            f"![{img}]({img})", ""]
    return out


# ----------------------------------------------------------------------------------------------- entry points

def sections(d) -> list[str]:
    """Markdown lines of both studies found in ``d`` (nothing when neither CSV is there); plots written to ``d``."""
    d = Path(d)
    return variants_section(d) + long_context_section(d)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="results folder (default: profiles/<this GPU>/)")
    a = p.parse_args(argv)
    if a.dir:
        d = Path(a.dir)
    else:
        from groundthink.device import profiles_dir
        d = profiles_dir()
    lines = sections(d)
    if not lines:
        print(f"error: no variants.csv or long_context.csv in {d}; accepted: a folder written by python -m "
              f"bench.variants or bench.long_context", flush=True)
        return 2
    out = d / "variants.md"
    out.write_text(f"# Variant study: {d.name}\n\n" + "\n".join(lines) + "\n")
    print(f"report -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
