"""The fusion-variant study: which variant learns best per token and per second, with the lab's kernels.

    python -m bench.variants [--quick] [--size small] [--steps N] [--variants GF-MH HY ...] [--out profiles/<gpu>/]
                             [--force] [--isolate] [--budget-s S] [--kernels auto]

Every variant of ``fused.list_models()`` — the fusion variants and the pure ``rwkv6`` / ``mamba2`` baselines — is
trained by ``train.main`` on the embedded corpus (or ``--data``) with the same seed, the same batches and the same
token budget (steps × batch × sequence length), one after the other in this process (CUDA caches emptied and the
peak-memory counter reset between variants) or, with ``--isolate``, each in its own subprocess.

The token budget fits the data. Without ``--batch-size`` the study takes the largest of train.py's device default
batch, its half, its quarter, … (≥ 1) whose budget is at most ``MAX_PASSES`` passes over the training split (its
tokens computed by train.py's own data path: tokenizer, ``--val-frac``); the steps stay (1,000 for the full study).
An explicit ``--batch-size`` is kept, with a warning above ``MAX_PASSES``. The start of the study prints the split,
the batch and the passes. Why 5 passes: run 8 (H100, 1,000 steps × 64 × 256 = 36.5 passes over the embedded
corpus's 448,518-token split) had every model's validation loss still falling at its first eval (3.7 passes),
lowest at 7.3 passes (step 200; pure RWKV-6 at 14.6) and rising from 11 passes on to 2.36–2.49 while train loss
fell to 0.09: past ~7 passes the models memorise. A smaller batch takes more optimizer updates per pass, so the
cap sits below that minimum, at 5: the embedded corpus gives the full study batch 8 (1,000 × 8 × 256 = 2.05M
tokens = 4.6 passes) and the quick one batch 32 (200 × 32 × 256 = 3.7 passes). The corpus is the running
Python's own pydoc text: 448,518 training tokens under Python 3.12 (the H100's), 418,473 under 3.11 (4.9 and 3.9
passes). The ranking still guards against memorisation: it uses each variant's best validation loss and flags a
run that ended above it (``overfit``).

Per variant:

    val_loss, bpc                      final validation loss (nats per token); bits per character = loss/ln 2
                                       (char tokenizer)
    best_val_loss, best_step, overfit  the lowest validation loss of the evals and its step (what the report ranks
                                       by: learning, not memorisation); overfit: the final loss is more than
                                       ``bench.overfit.OVERFIT_TOL`` (2 %) above it
    passes                             the token budget / the training split's tokens
    tok_s, ms_step, peak_mb            steady-state training throughput (train.py's summary: CUDA-graph replays
                                       when --graph auto captures), peak memory (GPU: max_memory_allocated
                                       during the run minus held_before_mb)
    held_before_mb                     GPU memory still allocated when the run started (what earlier variants of
                                       the same process left: run 15's in-process study grew it run by run; it is
                                       not this variant's, so peak_mb leaves it out; --isolate makes it 0)
    grad_ratio_rm                      median over the evals of ‖∇ RWKV‖ / ‖∇ Mamba‖ (before clipping)
    gate_mean, gate_drift              mean RWKV weight g of the blend at the end, and its change since step 1
    rms_rwkv, rms_mamba                RMS of each branch's output (train.py's state health)
    state_*                            the recurrent-state probe of the final model (bench.state_probe.state_health:
                                       RMS, growth over a long input, variance across inputs, their ratio)
    train_s, wall_s                    steady training seconds (steps × ms_step) and the variant's wall time

Writes ``<out>/variants.csv`` (one row per variant and budget) and ``<out>/variants_curves.csv`` (the validation
curve: variant, size, budget, step, tokens, train_s, train_loss, val_loss, bpc). Resumable: a variant whose
(variant, size, tokens) row is in variants.csv with status ok is skipped unless ``--force``; a diverged or failed
variant gets a row with its status and is retried next time. ``--quick``: 200 steps, eval every 50 (minutes on
one GPU); default: 1,000 steps, eval every 100. ``--budget-s S``: start no new variant after S seconds (the
default order puts GF-MH and the two baselines first; the same command later resumes with the rest). On a CPU,
``--size tiny --steps 3`` runs end to end (a plumbing check, not a measurement: the device column says cpu).
``python -m bench.report_variants`` turns the CSVs into tables and plots.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from groundthink.cli import ArgumentParser, fail
from groundthink.device import profiles_dir

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(steps=200, eval_interval=50, eval_iters=5)
FULL = dict(steps=1000, eval_interval=100, eval_iters=20)
CSV_NAME, CURVES_NAME = "variants.csv", "variants_curves.csv"
CHILD_ENV = "GT_VARIANTS_CHILD"      # set in --isolate subprocesses: the parent prints the final table
MAX_PASSES = 5            # the default token budget's cap in passes over the training split (docstring: why 5)
# the default order: the default variant and the two baselines first, so that a study cut short by --budget-s
# (and resumed later) has the comparisons that matter most; variants not listed here follow in list_models() order
PRIORITY = ("GF-MH", "rwkv6", "mamba2", "HY", "GF", "CP", "HGF", "WS", "RF", "GF-RH", "HGF-MH", "HGF-RH")
KEYS, CURVE_KEYS = ("variant", "size", "tokens"), ("variant", "size", "budget")
COLUMNS = ("variant", "size", "tokens", "passes", "steps", "batch_size", "seq_len", "params", "val_loss",
           "best_val_loss", "best_step", "overfit", "bpc", "train_loss", "tok_s", "ms_step", "peak_mb", "held_before_mb",
           "grad_ratio_rm", "gate_mean", "gate_drift", "rms_rwkv", "rms_mamba", "state_rms_rwkv", "state_rms_mamba",
           "state_growth_rwkv", "state_growth_mamba", "state_var_rwkv", "state_var_mamba", "state_var_ratio",
           "state_signal_rwkv", "state_signal_mamba", "state_finite", "state_note", "train_s", "wall_s", "graph",
           "kernels", "device", "seed", "status")


# ----------------------------------------------------------------------------------------------- arguments

def common_flags(p) -> None:
    """Flags shared with bench.long_context."""
    p.add_argument("--quick", action="store_true", help="a short study (minutes on one GPU)")
    p.add_argument("--size", default="small", help="model size (tiny|small|medium|large|xl)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (quick 200, full 1000)")
    p.add_argument("--variants", nargs="+", help="variants to run (default: see --help of the module)")
    p.add_argument("--out", help="results folder (default: profiles/<this GPU>/, profiles/cpu/ without one)")
    p.add_argument("--force", action="store_true", help="redo runs already in the CSV")
    p.add_argument("--kernels", default="auto", choices=["auto", "triton", "reference"],
                   help="train.py --kernels (auto: the lab kernels the gate admits on this GPU)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--lr", type=float, help="train.py --lr (default: train.py's)")
    p.add_argument("--eval-interval", type=int, help="steps between evals (quick 50, full 100)")
    p.add_argument("--eval-iters", type=int, help="batches per eval (quick 5, full 20)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="model config override (repeatable)")
    p.add_argument("--data", help="UTF-8 corpus (default: the embedded pydoc_data.topics)")
    p.add_argument("--budget-s", type=float, help="start no new run after this many seconds (the rest: run the "
                                                  "same command again, it resumes)")


def default_variants() -> list[str]:
    """Every variant of ``fused.list_models()``, in ``PRIORITY`` order first."""
    import fused
    names = fused.list_models()
    return [v for v in PRIORITY if v in names] + [v for v in names if v not in PRIORITY]


def check_common(a, default_steps: int) -> None:
    """Canonical variant names and checked values, or one line and exit 2."""
    import fused
    from groundthink.cli import parse_overrides
    from groundthink.errors import InputError
    try:
        a.variants = [fused.variants.canonical_name(v) for v in (a.variants or default_variants())]
    except KeyError:
        bad = next(v for v in a.variants if v.lower() not in {m.lower() for m in fused.list_models()})
        fail(f"--variants {bad}: unknown variant; accepted: {', '.join(fused.list_models())}")
    a.variants = list(dict.fromkeys(a.variants))
    if a.size not in fused.SIZES:
        fail(f"--size {a.size}: unknown size; accepted: {', '.join(fused.SIZES)}")
    a.steps = default_steps if a.steps is None else a.steps
    if a.budget_s is not None and not a.budget_s >= 0:
        fail(f"--budget-s {a.budget_s}: out of range; accepted: seconds ≥ 0")
    for name in ("steps", "eval_interval", "eval_iters", "batch_size", "seq_len"):
        v = getattr(a, name, None)
        if v is not None and v < 1:
            fail(f"--{name.replace('_', '-')} {v}: out of range; accepted: an integer ≥ 1")
    try:
        parse_overrides(a.override)
        if a.data is not None:
            from groundthink.data import check_text_file
            check_text_file(a.data)
    except InputError as e:
        fail(str(e))


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m bench.variants", description=__doc__.split("\n\n")[0])
    common_flags(p)
    p.add_argument("--batch-size", type=int, help=f"sequences per step (default: train.py's by device, halved until "
                                                  f"the budget is at most {MAX_PASSES} passes over the training split)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: train.py's by device)")
    p.add_argument("--isolate", action="store_true", help="each variant in its own subprocess")
    a = p.parse_args(argv)
    mode = QUICK if a.quick else FULL
    check_common(a, mode["steps"])
    a.eval_interval = a.eval_interval or min(mode["eval_interval"], a.steps)
    a.eval_iters = a.eval_iters or mode["eval_iters"]
    from groundthink.cli import DEVICE_DEFAULTS
    dev = DEVICE_DEFAULTS["cuda" if torch.cuda.is_available() else "cpu"]
    a.default_batch = dev["batch_size"]  # halved by fit_budget (which knows the split) unless --batch-size is given
    a.seq_len = a.seq_len or dev["seq_len"]
    return a


# ----------------------------------------------------------------------------------------------- the token budget

def train_split(a, seq_len: int) -> tuple[int, str]:
    """(tokens of the training split, train.py's data line) for the study's data, computed by train.py's own data
    path (its flag defaults: tokenizer, --val-frac; ``train.prepare_data``), so it is the split every run trains on.
    A corpus too short for ``seq_len`` raises train.py's one-line ``DataError``."""
    import train
    from groundthink.cli import parse_args as train_args
    said = []
    with tempfile.TemporaryDirectory(prefix="gt-split-") as tmp:
        args = train_args(train_argv(a, a.variants[0], Path(tmp), batch_size=1, seq_len=seq_len))
        split = train.prepare_data(args, None, True, 1, said.append)[2]
    return len(split), said[-1]


def fit_batch(steps: int, batch: int, seq_len: int, split_tokens: int, max_passes: float = MAX_PASSES) -> int:
    """The largest of ``batch``, its half, its quarter, … (≥ 1) whose budget steps × batch × seq_len is at most
    ``max_passes`` passes over ``split_tokens`` (1 when none is)."""
    while batch > 1 and steps * batch * seq_len > max_passes * split_tokens:
        batch //= 2
    return max(batch, 1)


def budget_line(steps: int, batch: int, seq_len: int, split_tokens: int, how: str) -> str:
    """The printed budget: tokens, passes, how the batch was chosen (``how``), a warning above ``MAX_PASSES``."""
    tokens = steps * batch * seq_len
    out = (f"token budget: {steps} steps × {batch} × {seq_len} tokens = {tokens:,} tokens = "
           f"{tokens / split_tokens:.2f} passes over the {split_tokens:,}-token training split; {how}")
    if tokens > MAX_PASSES * split_tokens:
        out += (f"\nwarning: {tokens / split_tokens:.1f} passes > {MAX_PASSES}: the models will memorise the training "
                f"split (validation loss rises); a smaller budget or a larger --data measures learning")
    return out


def fit_budget(a) -> str:
    """Fix ``a.batch_size`` (``fit_batch`` unless given), ``a.tokens``, ``a.split_tokens`` and ``a.passes``; the
    lines to print (data, budget)."""
    a.split_tokens, data_line = train_split(a, a.seq_len)
    if a.batch_size is None:
        a.batch_size = fit_batch(a.steps, a.default_batch, a.seq_len, a.split_tokens)
        how = f"batch {a.batch_size}: the largest of {a.default_batch}, its halves, … within {MAX_PASSES} passes"
    else:
        how = f"batch {a.batch_size} from --batch-size"
    a.tokens = a.steps * a.batch_size * a.seq_len
    a.passes = a.tokens / a.split_tokens
    return f"{data_line}\n{budget_line(a.steps, a.batch_size, a.seq_len, a.split_tokens, how)}"


def show(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (printed logs name no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------- one training run

def train_argv(a, variant: str, out_dir: Path, batch_size=None, seq_len=None) -> list[str]:
    """train.py's flags for one run of the study (no checkpoints but the final one, no sample, no profile)."""
    argv = ["--model", variant, "--size", a.size, "--steps", str(a.steps), "--seed", str(a.seed),
            "--eval-interval", str(a.eval_interval or a.steps), "--eval-iters", str(a.eval_iters or 8),
            "--log-interval", str(min(10, a.eval_interval or a.steps)), "--ckpt-interval", str(a.steps),
            "--out-dir", str(out_dir), "--sample-tokens", "0", "--profile-steps", "0", "--no-progress",
            "--kernels", a.kernels]
    bs = batch_size if batch_size is not None else getattr(a, "batch_size", None)
    sl = seq_len if seq_len is not None else getattr(a, "seq_len", None)
    for flag, v in (("--batch-size", bs), ("--seq-len", sl), ("--lr", a.lr), ("--data", a.data)):
        if v is not None:
            argv += [flag, str(v)]
    for item in a.override or []:
        argv += ["--override", item]
    return argv


def fresh_cuda() -> float:
    """Free what the previous run left (its CUDA graph pool included), restart the peak-memory counter and
    return the MB still allocated (0 without CUDA)."""
    gc.collect()
    if not torch.cuda.is_available():
        return 0.0
    torch.cuda.synchronize()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:   # cuBLAS keeps a workspace per (handle, stream): each run's graph capture adds one
        clear()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def train_quietly(argv: list[str], log: Path) -> dict:
    """``train.main(argv)`` with its output appended to ``log``. A bad setting (InputError) passes through for the
    caller's one-line error; train.py's own one-line error (SystemExit) is repeated on stderr; any other failure
    puts the log's tail on stderr. Each is re-raised."""
    import train
    from groundthink.errors import InputError
    held_mb = fresh_cuda()
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"$ train.py {' '.join(argv)}", flush=True)
        try:
            return {**train.main(argv), "held_before_mb": held_mb}
        except InputError:
            raise
        except BaseException as e:  # noqa: BLE001 - say it where the user sees it, then re-raise
            print(f"error: {type(e).__name__}: {e}", flush=True)
            err = e
    lines = Path(log).read_text().splitlines()
    if isinstance(err, SystemExit):
        print(next((ln for ln in reversed(lines) if ln.startswith("error: ") and "SystemExit" not in ln), lines[-1]),
              file=sys.stderr)
    else:
        print("\n".join("  | " + ln for ln in lines[-15:]), file=sys.stderr)
    raise err


def _minus(a, b):
    return None if a is None else a - (b or 0.0)


def _median(vals) -> float | None:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def _config_record(log_path) -> dict:
    try:
        with open(log_path) as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return {}


def summarize(a, variant: str, res: dict, batch: int, seq: int) -> dict:
    """variants.csv's row (without state_* and wall_s) from train.main's result."""
    cfg = _config_record(res["log"])
    evals = res["evals"]
    last = evals[-1] if evals else {}
    s = res["summary"]
    val = res["final_val_loss"]
    ms = s.get("ms_per_step")
    best = min(evals, key=lambda e: e["val_loss"], default={})
    from bench.overfit import is_overfit
    return {"variant": variant, "size": a.size, "tokens": a.steps * batch * seq,
            "passes": a.steps * batch * seq / a.split_tokens, "steps": a.steps, "batch_size": batch, "seq_len": seq,
            "params": cfg.get("num_params"), "val_loss": val, "best_val_loss": best.get("val_loss"),
            "best_step": best.get("step"), "overfit": is_overfit(val, best.get("val_loss")),
            "bpc": val / math.log(2) if val is not None else None, "train_loss": res["final_train_loss"],
            "tok_s": s.get("tok_s"), "ms_step": ms, "peak_mb": _minus(s.get("peak_mem_mb"), res.get("held_before_mb")),
            "held_before_mb": res.get("held_before_mb"),
            "grad_ratio_rm": _median(e.get("grad_ratio") for e in evals), "gate_mean": last.get("gate_mean"),
            "gate_drift": last.get("gate_drift"), "rms_rwkv": last.get("rms_rwkv"), "rms_mamba": last.get("rms_mamba"),
            "train_s": a.steps * ms / 1e3 if ms else None, "graph": s.get("graph"),
            "kernels": ",".join(f"{k}={v}" for k, v in res["ops"].items()),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "seed": a.seed,
            "status": "ok"}


def curve_rows(row: dict, res: dict) -> list[dict]:
    per_step = row["batch_size"] * row["seq_len"]
    ms = row["ms_step"]
    return [{"variant": row["variant"], "size": row["size"], "budget": row["tokens"], "step": e["step"],
             "tokens": e["step"] * per_step, "passes": e["step"] * per_step * row["passes"] / row["tokens"],
             "train_s": e["step"] * ms / 1e3 if ms else None,
             "train_loss": e["train_loss"], "val_loss": e["val_loss"], "bpc": e["val_loss"] / math.log(2)}
            for e in res["evals"]]


def state_columns(a, final_ckpt: str, seq: int) -> dict:
    """The recurrent-state probe of the final model: 4 validation windows of 4 × seq_len tokens, seq_len at a
    time (bench.state_probe.state_health)."""
    from bench import state_probe as sp
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok, state = sp.load_model(final_ckpt, a.kernels, device)
    ids = sp.probe_ids(sp.val_split(state, tok), 4, 4 * seq, a.seed, device)
    h = sp.state_health(model, ids, seq)
    del model
    out = {"state_finite": h["finite"], "state_var_ratio": h["var_ratio"]}
    for c in sp.COMPONENTS:
        for k in ("rms", "growth", "var", "signal"):
            out[f"state_{k}_{c}"] = h[f"{k}_{c}"]
    return out


def run_variant(a, variant: str, work: Path, log: Path) -> tuple[dict, list[dict]]:
    """Train one variant; (variants.csv row, curve rows). A diverged or failed run gives a row with its status."""
    from groundthink.errors import InputError
    t0 = time.perf_counter()
    try:
        res = train_quietly(train_argv(a, variant, work), log)
    except InputError:
        raise                        # the user's mistake (e.g. a too-long --seq-len): stop the study
    except Exception as e:  # noqa: BLE001 - a diverged / crashed variant must not end the study
        return {"variant": variant, "size": a.size, "tokens": a.tokens, "passes": a.passes, "steps": a.steps,
                "batch_size": a.batch_size, "seq_len": a.seq_len, "seed": a.seed,
                "status": f"{type(e).__name__}: {str(e)[:160]}", "wall_s": time.perf_counter() - t0}, []
    cfg = _config_record(res["log"])["args"]
    row = summarize(a, variant, res, cfg["batch_size"], cfg["seq_len"])
    try:
        row.update(state_columns(a, res["final_checkpoint"], cfg["seq_len"]))
    except Exception as e:  # noqa: BLE001 - a failed probe must not lose the training result
        row["state_note"] = f"state probe failed: {type(e).__name__}: {str(e)[:160]}"
    row["wall_s"] = time.perf_counter() - t0
    return row, curve_rows(row, res)


# ----------------------------------------------------------------------------------------------- CSV files

def done_keys(path: Path, keys) -> set[tuple]:
    """The key tuples (as strings) of the rows in ``path`` whose status is ok (all rows without a status)."""
    import pandas as pd
    if not Path(path).exists():
        return set()
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "status" in df:
        df = df[df["status"] == "ok"]
    return {tuple(r) for r in df[list(keys)].itertuples(index=False)}


def _key_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return "" if v is None else str(v)


def merge_csv(path: Path, rows: list[dict], keys, columns=()) -> None:
    """Replace the rows of ``path`` with the same key as a new row (or the same variant/size for keyless failed
    rows), append the new ones; atomic write. ``columns`` come first, in that order."""
    import pandas as pd
    if not rows:
        return
    new = pd.DataFrame(rows)
    if Path(path).exists():
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
        new_keys = {tuple(_key_str(r.get(k)) for k in keys) for r in rows}
        keep = [tuple(r) not in new_keys for r in old.reindex(columns=list(keys)).fillna("").itertuples(index=False)]
        new = pd.concat([old[keep], new.astype(object)], ignore_index=True)
    cols = [c for c in columns if c in new] + [c for c in new.columns if c not in columns]
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    new[cols].to_csv(tmp, index=False)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- the study

def over_budget(a, t0: float, rest: list[str]) -> bool:
    """--budget-s spent (said, with what is left)?"""
    if a.budget_s is None or time.perf_counter() - t0 <= a.budget_s:
        return False
    print(f"--budget-s {a.budget_s:g} spent: {len(rest)} runs not started ({', '.join(rest)}); run the same command "
          f"again to continue", flush=True)
    return True


def child_argv(a, variant: str, out: Path) -> list[str]:
    """The command line of one variant's subprocess (--isolate)."""
    argv = ["--size", a.size, "--steps", str(a.steps), "--eval-interval", str(a.eval_interval), "--eval-iters",
            str(a.eval_iters), "--kernels", a.kernels, "--seed", str(a.seed), "--out", str(out.resolve()),
            "--variants", variant]
    for flag, v in (("--batch-size", a.batch_size), ("--seq-len", a.seq_len), ("--lr", a.lr),
                    ("--data", None if a.data is None else str(Path(a.data).resolve()))):
        if v is not None:
            argv += [flag, str(v)]
    for item in a.override or []:
        argv += ["--override", item]
    return argv + (["--force"] if a.force else [])


def line(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row['variant']}: {row.get('status')}"
    f = (lambda v, fmt: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt))  # noqa
    return (f"{row['variant']}: best val {f(row['best_val_loss'], '.4f')} at step {row['best_step']}, final "
            f"{f(row['val_loss'], '.4f')} ({f(row['bpc'], '.3f')} bpc){', overfit' if row['overfit'] else ''}, "
            f"{f(row['tok_s'], ',.0f')} tok/s, {f(row['ms_step'], '.2f')} ms/step, "
            f"peak {f(row['peak_mb'], ',.0f')} MB, "
            f"rwkv/mamba grad {f(row['grad_ratio_rm'], '.3g')}, gate {f(row['gate_mean'], '.3f')} "
            f"(drift {f(row['gate_drift'], '+.3f')}), state var ratio {f(row['state_var_ratio'], '.3g')}, "
            f"{row['wall_s']:.1f} s")


def final_table(path: Path, variants: list[str], size: str) -> str:
    import pandas as pd
    df = pd.read_csv(path)
    df = df[df["variant"].isin(variants) & (df["size"] == size)]
    cols = [c for c in ("variant", "tokens", "passes", "best_val_loss", "best_step", "overfit", "val_loss", "bpc",
                        "tok_s", "ms_step", "peak_mb", "grad_ratio_rm", "gate_mean", "gate_drift", "state_var_ratio",
                        "status") if c in df]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        return df.sort_values("best_val_loss" if "best_val_loss" in df else "val_loss")[cols].to_string(index=False)


def main(argv=None) -> int:
    from groundthink.errors import InputError
    a = parse_args(argv)
    try:
        budget = fit_budget(a)
        if not os.environ.get(CHILD_ENV):      # an --isolate child: the parent said it
            print(budget, flush=True)
        with cpu_threads():
            return study(a)
    except InputError as e:                   # e.g. a --seq-len longer than the validation split
        fail(str(e))


@contextlib.contextmanager
def cpu_threads():
    """On a CPU, the probes run on the cores that are free (train.py sets its own threads per run)."""
    old = torch.get_num_threads()
    if not torch.cuda.is_available():
        from groundthink.cli import cpu_threads as free_cores
        torch.set_num_threads(free_cores(0))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def study(a) -> int:
    out = Path(a.out) if a.out else profiles_dir()
    out.mkdir(parents=True, exist_ok=True)
    path, curves = out / CSV_NAME, out / CURVES_NAME
    steps_tokens = f"{a.steps} steps, eval every {a.eval_interval} ({a.eval_iters} batches)"
    print(f"variant study: {len(a.variants)} variants ({', '.join(a.variants)}), size {a.size}, {steps_tokens}, "
          f"seed {a.seed}, --kernels {a.kernels}{', one subprocess each' if a.isolate else ''}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gt-variants-") as tmp:
        log = Path(tmp) / "train.log"    # train.py's output (it names temporary paths): never written to out/
        for i, v in enumerate(a.variants, 1):
            if over_budget(a, t0, a.variants[i - 1:]):
                break
            if not a.force and (v, a.size, str(a.tokens)) in done_keys(path, KEYS):
                print(f"[{i}/{len(a.variants)}] {v}: in {CSV_NAME} already (--force to redo)", flush=True)
                continue
            if a.isolate:
                rc = subprocess.call([sys.executable, "-m", "bench.variants", *child_argv(a, v, out)], cwd=ROOT,
                                     env={**os.environ, CHILD_ENV: "1", "PYTHONPATH": os.pathsep.join(
                                         [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
                if rc:
                    print(f"[{i}/{len(a.variants)}] {v}: subprocess exit status {rc}", flush=True)
                continue
            row, crows = run_variant(a, v, Path(tmp) / v, log)
            merge_csv(path, [row], KEYS, COLUMNS)
            if row.get("status") == "ok":
                merge_csv(curves, crows, CURVE_KEYS)
            print(f"[{i}/{len(a.variants)}] {line(row)}", flush=True)
    if path.exists() and not os.environ.get(CHILD_ENV):
        print(f"\n{final_table(path, a.variants, a.size)}\n\nvariants -> {show(path)}, curves -> {show(curves)}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
