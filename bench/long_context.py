"""Long context: does the model use what it saw thousands of characters ago? And is its recurrent state healthy?

    python -m bench.long_context [--quick] [--size small] [--variants GF-MH rwkv6 mamba2] [--contexts 512 2048 8192]
                                 [--steps N] [--tokens-per-step 16384] [--ckpt-dir DIR] [--out profiles/<gpu>/]
                                 [--budget-s S] [--force]

For every (variant, context length T) the model is trained by ``train.main`` on the embedded corpus with the same
seed and the same token budget (``--steps`` × ``--tokens-per-step``: batch = tokens_per_step / T), then its final
checkpoint is evaluated on ``--eval-windows`` validation windows of T characters: the next-token loss at every
position, averaged over the windows and grouped in log2 buckets [0, 8), [8, 16), [16, 32), …, [T/2, T). A model
that uses distant context has a lower loss in the late buckets than in the early ones.

The budget fits the data by bench.variants' rule (``fit_batch``, at most ``MAX_PASSES`` passes over the training
split, which train.py's own data path measures): without ``--tokens-per-step`` it is the largest of the default
(16,384 on a GPU) and its halves that still holds one window of the longest context and stays within the cap; when
the budget still exceeds the cap (one window a step is already too much, or an explicit ``--tokens-per-step``) and
``--steps`` is not given, the steps are lowered to fit (the full study's 1,000 steps at 8,192 tokens would be 18
passes over the embedded corpus: a memorised model's loss by position says little). Explicit values are kept,
with a warning above the cap. The passes go into the CSV. With ``--ckpt-dir`` the
checkpoints are kept there and a final checkpoint found there is loaded instead of trained again.

Writes ``<out>/long_context.csv`` — variant, context, position_bucket (first position of the bucket), loss, plus
bucket_end, bpc (loss / ln 2), n (predictions averaged), size, steps, tokens, passes, kernels, device — resumable: a
(variant, size, context, tokens) already in it is skipped unless ``--force``. ``bench.report_variants`` plots it.

The recurrent-state probe ``state_health`` (also a column group of bench/variants.py) is in ``bench.state_probe``.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.state_probe import load_model, val_split

QUICK = dict(variants=("GF-MH", "rwkv6", "mamba2"), contexts=(8192, 1024), steps=150, eval_windows=16)
FULL = dict(variants=("GF-MH", "HY", "CP", "rwkv6", "mamba2"), contexts=(512, 2048, 8192), steps=1000,
            eval_windows=64)
CSV_NAME = "long_context.csv"
KEYS = ("variant", "size", "context", "tokens")


def _amp(device):
    import contextlib
    dev = torch.device(device)
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------- loss by position

def buckets(context: int, first: int = 8) -> list[tuple[int, int]]:
    """Log2 position buckets covering [0, context): [0, first), [first, 2·first), …, the last ending at context."""
    edges = [0]
    e = first
    while e < context:
        edges.append(e)
        e *= 2
    edges.append(context)
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def position_losses(model, val_ids: torch.Tensor, context: int, windows: int, batch_size: int, seed: int,
                    device) -> torch.Tensor:
    """Mean next-token loss at each position [context] over ``windows`` validation windows (fixed, seeded)."""
    from groundthink import data as gdata
    total = torch.zeros(context, dtype=torch.float64)
    n = 0
    batches = math.ceil(windows / batch_size)
    for x, y in gdata.eval_batches(val_ids, batches, batch_size, context, seed, device=device):
        with _amp(device):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")    # [B, T]
        total += loss.sum(0).double().cpu()
        n += x.shape[0]
    return total / n


def bucket_rows(per_pos: torch.Tensor, n_windows: int) -> list[dict]:
    """[context] per-position losses → one row per log2 bucket."""
    rows = []
    for lo, hi in buckets(per_pos.numel()):
        loss = float(per_pos[lo:hi].mean())
        rows.append({"position_bucket": lo, "bucket_end": hi, "loss": loss, "bpc": loss / math.log(2),
                     "n": n_windows * (hi - lo)})
    return rows


# ----------------------------------------------------------------------------------------------- the study

def parse_args(argv=None):
    from bench.variants import ArgumentParser, check_common, common_flags
    p = ArgumentParser(prog="python -m bench.long_context", description=__doc__.split("\n\n")[0])
    common_flags(p)
    p.add_argument("--contexts", type=int, nargs="+", help=f"context lengths (quick {QUICK['contexts']}, full "
                                                           f"{FULL['contexts']})")
    p.add_argument("--tokens-per-step", type=int, help="tokens per optimizer step (default: 16384 on a GPU; on CPU "
                                                       "1024 or the longest context); batch = this / context")
    p.add_argument("--eval-windows", type=int, help=f"validation windows per context (quick "
                                                    f"{QUICK['eval_windows']}, full {FULL['eval_windows']})")
    p.add_argument("--ckpt-dir", help="keep checkpoints here; a final checkpoint found here is loaded, not retrained")
    a = p.parse_args(argv)
    mode = QUICK if a.quick else FULL
    a.variants = a.variants or list(mode["variants"])
    a.contexts = a.contexts or list(mode["contexts"])
    a.eval_windows = a.eval_windows or mode["eval_windows"]
    a.steps_given = a.steps is not None
    check_common(a, mode["steps"])
    if a.tokens_per_step is not None:
        check_contexts(a)
    if a.eval_windows < 1:
        from groundthink.cli import fail
        fail(f"--eval-windows {a.eval_windows}: out of range; accepted: an integer ≥ 1")
    return a


def check_contexts(a) -> None:
    """Every context ≥ 2 and a divisor of the tokens per step, or one line and exit 2."""
    bad = [c for c in a.contexts if c < 2 or a.tokens_per_step % c]
    if bad:
        from groundthink.cli import fail
        fail(f"--contexts {bad}: each context must be ≥ 2 and divide --tokens-per-step {a.tokens_per_step}; "
             f"accepted: e.g. 512 2048 8192 with 16384")


def fit_budget(a) -> str:
    """Fix ``a.tokens_per_step`` and ``a.steps`` to bench.variants' rule (module docstring), ``a.split_tokens``
    and ``a.passes``; the lines to print (data, budget)."""
    from bench.variants import MAX_PASSES, budget_line, fit_batch, train_split
    longest = max(a.contexts)
    a.split_tokens, data_line = train_split(a, longest)
    how = "tokens per step from --tokens-per-step"
    if a.tokens_per_step is None:       # CPU: the smallest default that holds one window of the longest context
        default = 16384 if torch.cuda.is_available() else max(1024, longest)
        a.tokens_per_step = fit_batch(a.steps, max(1, default // longest), longest, a.split_tokens) * longest
        how = (f"{a.tokens_per_step:,} tokens per step: the largest of {default:,} and its halves within {MAX_PASSES} "
               f"passes, at least one window of {longest:,}")
        check_contexts(a)
    if not a.steps_given and a.steps * a.tokens_per_step > MAX_PASSES * a.split_tokens:
        a.steps = max(1, MAX_PASSES * a.split_tokens // a.tokens_per_step)
        how += f"; steps lowered to {a.steps} to stay within {MAX_PASSES} passes"
    a.passes = a.steps * a.tokens_per_step / a.split_tokens
    return f"{data_line}\n{budget_line(a.steps, a.tokens_per_step // longest, longest, a.split_tokens, how)}"


def check_kernels(a) -> None:
    """On a GPU, a PyTorch-reference wkv6 at long contexts is a sequential loop of T steps per layer (minutes per
    step): refuse up front."""
    from groundthink.cli import fail
    from groundthink.registry import resolve
    if not torch.cuda.is_available() or max(a.contexts) <= 2048:
        return
    impl = resolve(a.kernels).impls().get("wkv6")
    if impl == "reference":
        fail(f"--kernels {a.kernels} resolves wkv6 to its PyTorch reference here (no valid gate verdict yet), far "
             f"too slow at context {max(a.contexts)}; accepted: --kernels triton (the lab kernels), or a gate that "
             f"admits the lab kernel first (pytest bench/ --benchmark, or a bench.variants run on this GPU)")


def same_budget(state: dict, a, batch: int) -> bool:
    """A kept checkpoint is reused only when it was trained with this study's steps, batch and seed."""
    args = state.get("args", {})
    return state.get("step") == a.steps and args.get("batch_size") == batch and args.get("seed") == a.seed


def run_one(a, variant: str, context: int, ckpt_root: Path, log) -> list[dict]:
    """Train (or load) ``variant`` at ``context`` and measure its loss by position; the CSV rows."""
    from bench.variants import fresh_cuda, train_argv, train_quietly
    from groundthink import checkpoint as ckpt
    out_dir = ckpt_root / f"ctx{context}"
    final = ckpt.final_path(out_dir, variant, size=a.size)
    batch = a.tokens_per_step // context
    if final.exists() and same_budget(ckpt.load(final), a, batch):
        how = "loaded"
    else:
        argv = train_argv(a, variant, out_dir, batch_size=batch, seq_len=context)
        res = train_quietly(argv, log)
        final, how = Path(res["final_checkpoint"]), "trained"
    fresh_cuda()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok, state = load_model(final, a.kernels, device)
    per_pos = position_losses(model, val_split(state, tok), context, a.eval_windows,
                              max(1, min(batch, a.eval_windows)), a.seed, device)
    kern = ",".join(f"{k}={v}" for k, v in model.ops.impls().items())
    del model
    rows = []
    for r in bucket_rows(per_pos, a.eval_windows):
        rows.append({"variant": variant, "size": a.size, "context": context, **r, "steps": a.steps,
                     "tokens": a.steps * a.tokens_per_step, "passes": a.passes, "batch_size": batch, "kernels": kern,
                     "device": "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device), "how": how})
    return rows


def main(argv=None) -> int:
    from bench.variants import cpu_threads, done_keys, merge_csv, over_budget, show
    from groundthink.cli import fail
    from groundthink.device import profiles_dir
    from groundthink.errors import InputError
    a = parse_args(argv)
    check_kernels(a)
    try:
        print(fit_budget(a), flush=True)
    except InputError as e:               # e.g. a context longer than the training or validation split
        fail(str(e))
    out = Path(a.out) if a.out else profiles_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / CSV_NAME
    done = set() if a.force else done_keys(path, KEYS)
    tmp = None if a.ckpt_dir else tempfile.TemporaryDirectory(prefix="gt-longctx-")
    ckpt_root = Path(a.ckpt_dir) if a.ckpt_dir else Path(tmp.name)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    jobs = [(v, c) for c in a.contexts for v in a.variants]
    print(f"long context: {len(jobs)} runs ({', '.join(a.variants)} × contexts {a.contexts}), {a.steps} steps × "
          f"{a.tokens_per_step:,} tokens each, size {a.size}, --kernels {a.kernels}", flush=True)
    log = ckpt_root / "train.log"      # train.py's output (it names temporary paths): never written to out/
    t_start = time.perf_counter()
    try:
        for i, (v, c) in enumerate(jobs, 1):
            if over_budget(a, t_start, [f"{v}@{c}" for v, c in jobs[i - 1:]]):
                break
            key = (v, a.size, str(c), str(a.steps * a.tokens_per_step))
            if key in done:
                print(f"[{i}/{len(jobs)}] {v} @ {c}: in {CSV_NAME} already (--force to redo)", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                with cpu_threads():
                    rows = run_one(a, v, c, ckpt_root, log)
            except InputError as e:           # e.g. a context longer than the validation split
                fail(str(e))
            merge_csv(path, rows, KEYS)
            print(f"[{i}/{len(jobs)}] {v} @ {c}: loss {rows[0]['loss']:.3f} at positions "
                  f"[0, {rows[0]['bucket_end']}) → {rows[-1]['loss']:.3f} at [{rows[-1]['position_bucket']}, "
                  f"{c}) ({rows[0]['how']}, {time.perf_counter() - t0:.1f} s)", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"long context -> {show(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
