"""End to end: training throughput (tok/s) and peak memory of every fusion variant.

One row per (variant, size, kernels): bf16 autocast, AdamW (lr 1e-3), random tokens of vocabulary 97, a fixed
batch; after ``WARMUP`` untimed steps (Triton autotuning of the lab's kernels, mamba-ssm, fla), ``STEPS`` steps
are timed between two CUDA events; ``peak_mb`` is the absolute ``max_memory_allocated`` over the timed steps
(model, AdamW state, activations). Sizes: small (B64 × T256) and large (B16 × T1024).

* ``triton``    — ``registry.resolve("triton")``: the lab's kernels, mamba-ssm's scan (eager step);
* ``triton-graph`` — the same, the step replayed as one CUDA graph (GF-MH at both sizes);
* ``reference`` — ``registry.resolve("reference")``: PyTorch references (slow: few steps);
* ``peer``      — ``bench/peer_model.py``: fla's RWKV6Attention ∥ mamba-ssm's Mamba2, eager blend and RMSNorm
                  (only when both import; one model per size, compared with every variant as "best peer").

Quick grid (GT_BENCH_QUICK=1, the default): triton for every variant at small and HY/GF-MH/HGF-MH/CP at large,
reference for GF-MH at both sizes, the peer at both sizes. GT_BENCH_QUICK=0: every variant everywhere.
Run order: kernel rows of the lab and the references, triton small (all variants), kernel peers, peer small and
triton large, then peer large and the references; rows
that would start after the soft budget (GT_BENCH_BUDGET_S) are skipped and say so. The peer's first steps
autotune fla's and mamba-ssm's kernels (minutes on a cold machine, warmup_s in its row).
On CPU: GF-MH at size tiny (B2 × T32, fp32), one timed step — not a measurement.

``python -m bench.bench_train --step-table ours|peer [--out DIR]`` writes the training-step table instead: our
GF-MH (``--kernels triton``) eager and CUDA-graph steps and the peer's eager step at small and large, each with
tok/s, ms/step, peak memory, kernel launches and GPU busy % per step (``train_step.csv``) and a per-kernel GPU-time
breakdown (``step_profile.csv``).

``python -m bench.bench_train --validity [--steps N]`` runs the end-to-end validity check instead: ``train.py``
(GF-MH, small, same seed) with ``--kernels triton``, ``--kernels reference`` and the noise floor (the reference
path with its Mamba-2 scan summed in another order: ``validity_argv``), logging JSONL to
``profiles/<gpu>/validity/`` (plotted by ``python -m bench.report``, judged by ``report.validity_verdict``:
lab vs reference at every logged step ≤ max(1 %, the floor)).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from bench import common
from bench.floors import BF16INIT, FLOORS, REORDERED, floor_base

VOCAB = 97
ALL_VARIANTS = ("HY", "GF", "GF-MH", "GF-RH", "HGF", "HGF-MH", "HGF-RH", "CP", "WS", "RF", "rwkv6", "mamba2")
if common.ON_GPU:
    SIZES = {"small": (64, 256), "large": (16, 1024)}
else:
    SIZES = {"tiny": (2, 32)}


def _variants() -> tuple[str, ...]:
    try:
        import fused
        return tuple(fused.list_models())
    except Exception:  # noqa: BLE001 - the model package may be absent: rows skip with the reason
        return ALL_VARIANTS


def plan() -> list:
    """(kernels, variant, size, priority) of every row, in priority order."""
    q = common.quick()
    rows = []
    if not common.ON_GPU:
        return [("reference", "GF-MH", "tiny", 3), ("triton", "GF-MH", "tiny", 3)]
    variants = _variants()
    # priorities: 1 = kernel rows (lab + reference), 2 = these, 3 = kernel peers, 4-5 = the rest
    rows += [("triton", v, "small", 2) for v in variants]
    rows += [("triton-graph", "GF-MH", "small", 2), ("triton-graph", "GF-MH", "large", 4)]
    rows += [("peer", "peer", "small", 4)]
    large = variants if not q else [v for v in ("HY", "GF-MH", "HGF-MH", "CP") if v in variants]
    rows += [("triton", v, "large", 4) for v in large]
    rows += [("peer", "peer", "large", 5)]
    ref_vs = ("GF-MH",) if q else variants
    rows += [("reference", v, s, 5) for s in SIZES for v in ref_vs]
    return rows


def steps_for(kernels: str) -> tuple[int, int]:
    """(warm-up steps, timed steps)."""
    if not common.ON_GPU:
        return 1, 1
    if kernels == "reference":
        return (1, 2) if common.quick() else (2, 5)
    return (3, 8) if common.quick() else (5, 30)


def build(kernels: str, variant: str, size: str):
    if kernels == "peer":
        from bench.peer_model import build_peer, peer_available
        ok, why = peer_available()
        if not ok:
            pytest.skip(f"peer: {why}")
        return build_peer(size, VOCAB, common.DEVICE)
    try:
        import fused
    except ImportError as e:
        pytest.skip(f"fused (the model package) not importable: {e}")
    from groundthink.registry import resolve
    ops = resolve(kernels.removesuffix("-graph"))
    return fused.get_model(variant, size, vocab_size=VOCAB, ops=ops).to(common.DEVICE)


def measure_training(model, B: int, T: int, warmup: int, steps: int, seed: int = 0, graph: bool = False,
                     probes: bool = True, profile: int = 0, keep_step: bool = False) -> dict:
    """Time ``steps`` training steps of ``groundthink.step.TrainStep`` (bf16 autocast on GPU, fused AdamW
    lr 1e-3, clip 1.0) after ``warmup`` steps; ``graph``: the step replayed as one CUDA graph (its capture
    warm-up counts as the warm-up). ``peak_mb``: max_memory_allocated from the first step on (eager: from the
    first timed step; graph: from the capture on, which allocates the graph's pool); ``reserved_mb``: memory
    reserved after the timed steps and ``empty_cache`` (graph pool included). ``profile`` > 0 adds launches and
    GPU-busy time per step from that many profiled steps (``groundthink.monitor.profile_steps``). ``keep_step``:
    the result also holds ``step_fn`` (one more training step; it keeps the model and the graph's pool alive)."""
    from groundthink.step import TrainStep, group_params
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    data = torch.randint(0, VOCAB, (B, T + 1), generator=g, device=dev)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    opt = torch.optim.AdamW([{"params": ps} for ps in group_params(model).values() if ps], lr=1e-3,
                            weight_decay=0.1, fused=True, capturable=True)
    step = TrainStep(model, opt, batch_size=B, seq_len=T, device=dev, grad_clip=1.0, probes=probes)
    model.train()
    lrs = [1e-3] * len(opt.param_groups)
    t0 = time.perf_counter()
    if graph:
        common.sync()
        if common.ON_GPU:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step.load_batch(x, y)
        step.capture(warmup=warmup)
    else:
        for _ in range(warmup):
            step(x, y, lrs)
        common.sync()
        if common.ON_GPU:
            torch.cuda.reset_peak_memory_stats()
    common.sync()
    warmup_s = time.perf_counter() - t0
    if common.ON_GPU:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for _ in range(steps):
        row = step(x, y, lrs)
    if common.ON_GPU:
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / steps
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved() / 2**20
    else:
        ms = (time.perf_counter() - t0) * 1e3 / steps
        peak = reserved = None
    res = {"ms": ms, "tok_s": B * T / (ms * 1e-3), "peak_mb": peak, "reserved_mb": reserved, "warmup_s": warmup_s,
           "loss": float(row[0]), "steps": steps}
    if keep_step:
        res["step_fn"] = lambda: step(x, y, lrs)
    if profile and common.ON_GPU:
        from groundthink import monitor
        prof = monitor.profile_steps(lambda: step(x, y, lrs), profile)
        res.update(launches=prof["launches_per_step"], copies=prof["copies_per_step"],
                   busy_ms=prof["gpu_busy_ms_per_step"], busy_pct=100 * prof["gpu_busy_ms_per_step"] / ms,
                   breakdown=prof["breakdown"])
    return res


def cases():
    return [pytest.param(k, v, s, id=f"{k}-{v}-{s}", marks=pytest.mark.bench_priority(p)) for k, v, s, p in plan()]


@pytest.mark.parametrize("kernels,variant,size", cases())
def test_train(bench, kernels, variant, size):
    # the peer's first steps autotune fla and mamba-ssm (minutes when cold); the references are slow per step
    need = {"peer": 120.0, "reference": 30.0}.get(kernels, 10.0)
    common.require_budget(f"training {kernels} {variant} {size}", need_s=need)
    B, T = SIZES[size]
    warmup, steps = steps_for(kernels)
    try:
        model = build(kernels, variant, size)
    except ImportError as e:
        pytest.skip(f"{kernels} {variant} {size}: {e}")
    desc = model.describe() if hasattr(model, "describe") else ""
    shape = f"{size} B{B}xT{T}"
    try:
        res = measure_training(model, B, T, warmup, steps, graph=kernels.endswith("-graph"),
                               probes=kernels != "peer", keep_step=True)
    except Exception as e:  # noqa: BLE001
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        model = None  # noqa: F841 - free it before the next row
        if common.ON_GPU:
            torch.cuda.empty_cache()
        common.record(bench, op="train", impl=kernels, variant=variant, shape=shape, pass_="train",
                      dtype="bf16-autocast" if common.ON_GPU else "float32", ms=None,
                      note=f"{'out of memory' if oom else 'failed'}: {type(e).__name__}: {str(e)[:200]}")
        if kernels == "peer" or oom:
            pytest.skip(f"{kernels} {variant} {size}: {type(e).__name__}: {e}")
        raise
    note = [f"{res['steps']} timed steps after {warmup} warm-up", desc]
    if not math.isfinite(res["loss"]):
        note.append(f"NON-FINITE LOSS {res['loss']}")
    common.record(bench, op="train", impl=kernels, variant=variant, shape=shape, pass_="train",
                  dtype="bf16-autocast" if common.ON_GPU else "float32", ms=res["ms"], tok_s=res["tok_s"],
                  peak_mb=res["peak_mb"], warmup_s=res["warmup_s"], timer="cuda events over the timed steps"
                  if common.ON_GPU else "host clock (CPU)", reps=res["steps"], note="; ".join(n for n in note if n))
    # pytest-benchmark's own entry times real training steps (host clock, synchronized); the CUDA-event figures
    # are in extra_info
    common.host_benchmark(bench, res["step_fn"], slow=res["ms"] > common.SLOW_MS)
    del model
    if common.ON_GPU:
        torch.cuda.empty_cache()
    assert math.isfinite(res["loss"]), f"non-finite loss {res['loss']}"


# --------------------------------------------------------------------------------------- validity run

def validity_dir() -> Path:
    return common.out_dir() / "validity"


@contextlib.contextmanager
def bf16_init(train):
    """While active, ``train.build_model`` rounds every fp32 parameter of the seeded model to bf16 precision and
    back: weights equal to the unperturbed run's at bf16 precision (autocast's matmuls see the same bf16 weights;
    the embedding, decays, mixes and norms move by less than half a bf16 ulp)."""
    build = train.build_model

    def rounded(*args, **kwargs):
        m = build(*args, **kwargs)
        with torch.no_grad():
            for p in m.parameters():
                if p.dtype == torch.float32:
                    p.copy_(p.to(torch.bfloat16).to(torch.float32))
        return m

    train.build_model = rounded
    try:
        yield
    finally:
        train.build_model = build


def _chunk_size(model: str, size: str, extra: list[str]) -> int:
    """The model's Mamba-2 chunk length (the last ``--override chunk_size=`` in ``extra`` wins, as in train.py)."""
    import fused
    given = [a.split("=", 1)[1] for a in extra if a.startswith("chunk_size=")]
    return int(given[-1]) if given else fused.make_config(model, size).chunk_size


def validity_argv(kind: str, model: str, size: str, extra: list[str]) -> list[str]:
    """train.py flags of one validity run: ``triton`` and ``reference`` are ``--kernels``; ``<kernels>-reordered``
    (a noise-floor run) is that path with the Mamba-2 scan summed in chunks twice as long (the chunked SSD is exact
    at any chunk length and the parameters do not depend on it: the same function with other summation orders,
    so other roundings of the scan's output — the reference's fp32 scan rounded to bf16, mamba-ssm's bf16
    kernels in the lab path); ``<kernels>-bf16init`` is that path from weights rounded to bf16 precision
    (``bf16_init``). A floor run's distance from its own path's run is what numerics alone do to the loss curve."""
    base = floor_base(kind)
    if kind.endswith(REORDERED):
        return ["--kernels", base, "--override", f"chunk_size={2 * _chunk_size(model, size, extra)}"]
    return ["--kernels", base or kind]


def run_validity(steps: int = 300, model: str = "GF-MH", size: str = "small", seed: int = 1234,
                 kernels=("triton", "reference", *FLOORS), out: Path | None = None, extra: list[str] | None = None,
                 ref_steps: int | None = None) -> dict:
    """Short ``train.py`` runs of each kind (``validity_argv``), same seed, data and LR schedule: the lab's
    loss curve must stay within max(1 %, the noise floor) of the reference's (``report.validity_verdict``). The
    reference runs may stop early: ``ref_steps`` < ``steps`` adds ``--stop-at ref_steps`` (same schedule, fewer
    steps). No profile window (``--profile-steps 0``: the step part measures that). Returns {kind: summary or
    an error string}; {} when train.py is absent."""
    sys.path.insert(0, str(common.ROOT))
    try:
        import train
    except ImportError as e:
        print(f"validity: train.py not importable ({e}); skipped")
        return {}
    out = Path(out) if out else validity_dir()
    out.mkdir(parents=True, exist_ok=True)
    extra = list(extra or [])
    results = {}
    for k in kernels:
        log = out / f"{model}_{size}_{k}.jsonl"
        with tempfile.TemporaryDirectory() as ckdir:
            argv = ["--model", model, "--size", size, "--steps", str(steps), "--seed", str(seed),
                    "--log", str(log), "--out-dir", ckdir, "--no-progress", "--sample-tokens", "0",
                    "--eval-interval", str(max(steps // 4, 1)), "--eval-iters", "4", "--log-interval", "10",
                    "--profile-steps", "0"]
            if k.startswith("reference") and ref_steps and ref_steps < steps:
                argv += ["--stop-at", str(ref_steps)]
            argv += extra + validity_argv(k, model, size, extra)
            t0 = time.perf_counter()
            try:
                with bf16_init(train) if k.endswith(BF16INIT) else contextlib.nullcontext():
                    res = train.main(argv)
                results[k] = {"final_loss": res.get("final_loss") if isinstance(res, dict) else None,
                              "seconds": time.perf_counter() - t0, "log": str(log)}
            except Exception as e:  # noqa: BLE001 - report and go on with the other kernel set
                results[k] = f"{type(e).__name__}: {e}"
        print(f"validity {model} {size} {k} ({' '.join(validity_argv(k, model, size, extra))}): {results[k]}",
              flush=True)
    return results


# --------------------------------------------------------------------------------------- step table

STEP_ROWS = {"ours": [("eager", "small"), ("graph", "small"), ("eager", "large"), ("graph", "large")],
             "peer": [("eager", "small"), ("eager", "large")]}
STEP_SHAPES = {"small": (64, 256), "large": (16, 1024), "tiny": (2, 32)}
STEP_FIELDS = ("model", "mode", "size", "shape", "ms", "tok_s", "peak_mb", "reserved_mb", "launches", "copies",
               "busy_ms", "busy_pct", "warmup_s", "loss", "steps", "device", "note")


def _write_csv(path: Path, rows: list[dict], fields) -> None:
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _read_csv(path: Path) -> list[dict]:
    import csv
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def step_row(who: str, mode: str, size: str, variant: str, kernels: str, steps: int, profile: int) -> tuple:
    """One (summary row, breakdown rows) of the step table; failures become a row with a note."""
    B, T = STEP_SHAPES[size]
    peer = "peer fla RWKV6Attention ∥ mamba-ssm Mamba2"
    row = {"model": f"{variant} --kernels {kernels}" if who == "ours" else peer,
           "mode": mode, "size": size, "shape": f"B{B}xT{T}",
           "device": torch.cuda.get_device_name() if common.ON_GPU else "cpu (not a measurement)"}
    try:
        model = build("peer" if who == "peer" else kernels, variant, size)
        res = measure_training(model, B, T, 3, steps, graph=mode == "graph", probes=who == "ours", profile=profile)
        row.update({k: res.get(k) for k in STEP_FIELDS if k in res}, note=getattr(model, "describe", lambda: "")())
    except (Exception, pytest.skip.Exception) as e:  # noqa: BLE001 - the row says what failed
        row.update(note=f"failed: {type(e).__name__}: {str(e)[:300]}")
        res = {}
    model = None  # noqa: F841
    if common.ON_GPU:
        torch.cuda.empty_cache()
    prof = [{"model": row["model"], "mode": mode, "size": size, "rank": i + 1, **r}
            for i, r in enumerate(res.get("breakdown", []))]
    return row, prof


def step_table(out: Path, who: str = "ours", variant: str = "GF-MH", kernels: str = "triton", steps: int = 20,
               profile: int = 3, sizes: tuple[str, ...] = ("small", "large")) -> list[dict]:
    """Ours eager vs graph and the peer at small and large (``sizes``: those of them to run): ms, tok/s, peak memory,
    launches and GPU busy % per step. Appends to OUT/train_step.csv and OUT/step_profile.csv (per-kernel GPU time), rewritten after every
    row so that a run cut short keeps what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    rows, prof = _read_csv(out / "train_step.csv"), _read_csv(out / "step_profile.csv")
    for mode, size in [(m, z) for m, z in STEP_ROWS[who] if z in sizes]:
        t0 = time.perf_counter()
        row, p = step_row(who, mode, size, variant, kernels, steps, profile)
        rows.append(row)
        prof += p
        _write_csv(out / "train_step.csv", rows, STEP_FIELDS)
        _write_csv(out / "step_profile.csv", prof, ("model", "mode", "size", "rank", "name", "calls_per_step",
                                                    "us_per_step", "pct"))
        print(f"step-table {who:>4} {mode:>5} {size:>5}: " + ", ".join(
            f"{k} {row[k]:.4g}" if isinstance(row.get(k), float) else f"{k} {row.get(k)}"
            for k in ("ms", "tok_s", "peak_mb", "reserved_mb", "launches", "busy_pct")) +
            f" ({time.perf_counter() - t0:.0f} s){' ' + row['note'] if 'failed' in row['note'] else ''}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="end-to-end validity run (train.py, triton vs reference kernels)")
    p.add_argument("--validity", action="store_true", help="run the validity check")
    p.add_argument("--step-table", choices=["ours", "peer"], help="the training-step table (step_table)")
    p.add_argument("--timed-steps", type=int, default=20, help="--step-table: timed steps per row")
    p.add_argument("--step-sizes", default="small,large", help="--step-table: the sizes to run (comma-separated)")
    p.add_argument("--steps", type=int, default=int(os.environ.get("GT_VALIDITY_STEPS", "300")))
    p.add_argument("--ref-steps", type=int, default=int(os.environ.get("GT_VALIDITY_REF_STEPS", "100")),
                   help="the reference run stops here (--stop-at; same LR schedule); 0 = all steps")
    p.add_argument("--model", default="GF-MH")
    p.add_argument("--size", default="small")
    p.add_argument("--kernels", default=",".join(("triton", "reference") + FLOORS),
                   help="--validity: the runs (triton, reference; <kernels>-reordered, <kernels>-bf16init: noise "
                        "floors)")
    p.add_argument("--extra", default="", help="--validity: more train.py flags for every run (one string)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.step_table:
        kernels = a.kernels if "," not in a.kernels else "triton"
        sizes = tuple(a.step_sizes.split(","))
        if not sizes or any(z not in ("small", "large") for z in sizes):
            p.error(f"--step-sizes: small and/or large, comma-separated; got {a.step_sizes!r}")
        step_table(Path(a.out) if a.out else common.out_dir(), a.step_table, a.model, kernels, a.timed_steps,
                   sizes=sizes)
        return 0
    if not a.validity:
        p.print_help()
        return 2
    res = run_validity(a.steps, a.model, a.size, kernels=tuple(a.kernels.split(",")), out=a.out,
                       ref_steps=a.ref_steps or None, extra=a.extra.split() if a.extra else None)
    ok = bool(res) and all(isinstance(v, dict) for v in res.values())
    from bench.report import validity_lines, validity_verdict
    d = (Path(a.out) if a.out else validity_dir()).parent
    print("\n".join(validity_lines(d)))
    v = validity_verdict(d)
    return 0 if ok and v is not None and v["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
