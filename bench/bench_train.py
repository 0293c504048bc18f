"""End to end: training throughput (tok/s) and peak memory of every fusion variant.

One row per (variant, size, kernels): bf16 autocast, AdamW (lr 1e-3), random tokens of vocabulary 97, a fixed
batch; after ``WARMUP`` untimed steps (Triton autotuning of the lab's kernels, mamba-ssm, fla), ``STEPS`` steps
are timed between two CUDA events; ``peak_mb`` is the absolute ``max_memory_allocated`` over the timed steps
(model, AdamW state, activations). Sizes: small (B64 × T256) and large (B16 × T1024).

* ``triton``    — ``registry.resolve("triton")``: the lab's kernels, mamba-ssm's scan;
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

``python -m bench.bench_train --validity [--steps N]`` runs the end-to-end validity check instead: ``train.py``
(GF-MH, small, same seed) with ``--kernels triton`` and ``--kernels reference``, logging JSONL to
``profiles/<gpu>/validity/`` (plotted by ``python -m bench.report``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from bench import common

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
    ops = resolve(kernels)
    return fused.get_model(variant, size, vocab_size=VOCAB, ops=ops).to(common.DEVICE)


def measure_training(model, B: int, T: int, warmup: int, steps: int, seed: int = 0) -> dict:
    """Warm up, then time ``steps`` AdamW steps under bf16 autocast (fp32 on CPU)."""
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    data = torch.randint(0, VOCAB, (B, T + 1), generator=g, device=dev)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=common.ON_GPU)
    model.train()

    def step():
        with torch.autocast(**amp):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    common.sync()
    warmup_s = time.perf_counter() - t0
    if common.ON_GPU:
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if common.ON_GPU:
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / steps
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        ms = (time.perf_counter() - t0) * 1e3 / steps
        peak = None
    lossf = float(loss.detach())
    return {"ms": ms, "tok_s": B * T / (ms * 1e-3), "peak_mb": peak, "warmup_s": warmup_s, "loss": lossf,
            "steps": steps}


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
        res = measure_training(model, B, T, warmup, steps)
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
    if bench is not None:
        bench.pedantic(lambda: None, rounds=1, iterations=1)   # the figures are in extra_info
    del model
    if common.ON_GPU:
        torch.cuda.empty_cache()
    assert math.isfinite(res["loss"]), f"non-finite loss {res['loss']}"


# --------------------------------------------------------------------------------------- validity run

def validity_dir() -> Path:
    return common.out_dir() / "validity"


def run_validity(steps: int = 300, model: str = "GF-MH", size: str = "small", seed: int = 1234,
                 kernels=("triton", "reference"), out: Path | None = None, extra: list[str] | None = None,
                 ref_steps: int | None = None) -> dict:
    """Short ``train.py`` runs with each kernel set, same seed, data and LR schedule: their loss curves must
    agree. The reference (slow) may stop early: ``ref_steps`` < ``steps`` adds ``--stop-at ref_steps`` (same
    schedule, fewer steps). Returns {kernels: summary or an error string}; {} when train.py is absent."""
    sys.path.insert(0, str(common.ROOT))
    try:
        import train
    except ImportError as e:
        print(f"validity: train.py not importable ({e}); skipped")
        return {}
    out = Path(out) if out else validity_dir()
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for k in kernels:
        log = out / f"{model}_{size}_{k}.jsonl"
        with tempfile.TemporaryDirectory() as ckdir:
            argv = ["--model", model, "--size", size, "--kernels", k, "--steps", str(steps), "--seed", str(seed),
                    "--log", str(log), "--out-dir", ckdir, "--no-progress", "--sample-tokens", "0",
                    "--eval-interval", str(max(steps // 4, 1)), "--eval-iters", "4", "--log-interval", "10"]
            if k == "reference" and ref_steps and ref_steps < steps:
                argv += ["--stop-at", str(ref_steps)]
            argv += list(extra or [])
            t0 = time.perf_counter()
            try:
                res = train.main(argv)
                results[k] = {"final_loss": res.get("final_loss") if isinstance(res, dict) else None,
                              "seconds": time.perf_counter() - t0, "log": str(log)}
            except Exception as e:  # noqa: BLE001 - report and go on with the other kernel set
                results[k] = f"{type(e).__name__}: {e}"
        print(f"validity {model} {size} --kernels {k}: {results[k]}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="end-to-end validity run (train.py, triton vs reference kernels)")
    p.add_argument("--validity", action="store_true", help="run the validity check (the only action)")
    p.add_argument("--steps", type=int, default=int(os.environ.get("GT_VALIDITY_STEPS", "300")))
    p.add_argument("--ref-steps", type=int, default=int(os.environ.get("GT_VALIDITY_REF_STEPS", "100")),
                   help="the reference run stops here (--stop-at; same LR schedule); 0 = all steps")
    p.add_argument("--model", default="GF-MH")
    p.add_argument("--size", default="small")
    p.add_argument("--kernels", default="triton,reference")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if not a.validity:
        p.print_help()
        return 2
    res = run_validity(a.steps, a.model, a.size, kernels=tuple(a.kernels.split(",")), out=a.out,
                       ref_steps=a.ref_steps or None)
    return 0 if res and all(isinstance(v, dict) for v in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
