"""Measurement plumbing shared by the benchmark modules.

How a figure is measured (GPU):
* time (``ms``, the eager step's cost, host included): the median of up to ``gate.MAX_SAMPLES`` CUDA-event-timed
  batches of back-to-back calls (``gate._time_ms``, the qualification's eager timer: up to ``gate.MAX_BATCH`` calls a
  batch, the batches sized to the grid's do_bench budget) — per call max(its GPU time, its host time), what a step of
  ordinary calls pays. Before (run 12 and earlier) ``triton.testing.do_bench``'s median of single calls, each behind a
  256 MB L2 flush: the flush's ~0.1 ms of GPU work hid up to that much host time, so an op whose host time is near it
  (torch.compile's guards, a Triton launcher at the models' µs shapes) read GPU-bound in one call and host-bound in
  the next (gnr N16384 D128 fwd: triton 0.0516 vs compile 0.0123 ms, then 0.0133 vs 0.0621); a batch of back-to-back
  calls has no such edge and its mean over ≤ 100 calls smooths the host's jitter. ``GT_BENCH_EAGER=do_bench``: the old
  timer (for comparisons with older runs). A function slower than ``SLOW_MS`` per call (the PyTorch references at big
  shapes) gets a time-boxed loop of a few CUDA-event-timed calls instead, so that no row takes minutes. ``timer`` in
  the row says which.
* CUDA-graph time (``ms_graph``, GPU, every graph-safe implementation — spec ``graph_safe``, the reference
  included): the call is captured as a CUDA graph and its replays are timed (``groundthink.gate.graph_ms``, the
  same code as the qualification's graph rows: a step shorter than 1 ms is captured several times into one
  graph; no host time). That is what the op costs inside the captured training step; ``ms`` is what it costs
  in an eager step (``--graph off``), host overhead included. A failed capture is said in the note
  (``gate.GRAPH_FAILED``). ``GT_BENCH_GRAPH=0`` skips it (then no graph verdicts are written).
* warm-up: the first call of every function is untimed (Triton autotuning of the lab's kernels and the peers,
  torch.compile) and its wall time is recorded as ``warmup_s``.
* bandwidth: ``gbps`` = the op's minimal bytes (inputs read once, outputs written once; see each module) / time;
  ``pct_bw`` = that as % of the device-to-device copy bandwidth measured in the same run (``copy_gbps``).
* memory: ``peak_mb`` = ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus the memory
  allocated before the call (the inputs), i.e. the extra peak of one call (outputs, saved tensors, workspaces).
  Training rows report the absolute peak instead (model, optimizer state and activations).
* error: ``harness.compare`` against the float64 reference in the same run, on the benchmarked shape or a sliced
  one (``err_shape``); ``max_rel_err`` is the largest of the outputs' (and, for fwd+bwd, every gradient's) errors.

On a CPU machine the same code runs tiny shapes (Triton interpreter, host clock); every row is labelled
``NOT_A_MEASUREMENT`` and no gate manifest is written.

Every row carries ``source_hash``: the hash of the op's sources that measured it (``groundthink.gate.op_hash``),
so that the gate builds a verdict only from rows of one version of the code, and ``timing_mode`` ("eager": how
``ms`` was timed). The gate builds two verdicts from the rows (``gate.mode_rows``): for the eager step from
``ms``, for the CUDA-graph-captured step from ``ms_graph`` against the graph-safe competitors only.

What to benchmark comes from the ops' specs (``kernels/<op>/spec.py``: implementations, roles, shapes, inputs,
bytes, FLOPs; ``spec_cases`` / ``run_spec_case``). Results accumulate in ``RESULTS`` (one dict per row);
``bench.conftest`` finishes them at session end (speedups, CSV, JSON, manifest). Environment:
    GT_BENCH_QUICK     1 (default): the bounded grid (~7 min on an H100); 0: every variant and shape, more reps
    GT_BENCH_BUDGET_S  soft wall-clock budget for starting new benchmarks (default 400 s quick, 0 = none);
                       lower-priority rows (peers, training) are skipped once it is spent, and say so
    GT_BENCH_OUT       output folder (default profiles/<gpu-slug>/)
    GT_BENCH_MERGE     1: keep the rows of the bench.csv already there that this run does not re-measure (for a
                       partial re-run with -k); the CSV and the manifest are then built from the merged rows,
                       each verdict from rows of one source hash (kept rows keep theirs)
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

import pytest
import torch

from groundthink import gate, harness
from groundthink.device import gpu_slug, profiles_dir
from groundthink.spec import get, specs

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
NOT_A_MEASUREMENT = "NOT A PERFORMANCE MEASUREMENT (CPU: Triton interpreter / eager PyTorch, tiny shapes)"
SLOW_MS = 50.0          # above this per call, time a few calls by hand instead of batches
ROOT = Path(__file__).resolve().parent.parent

CSV_COLUMNS = ["op", "impl", "shape", "pass", "dtype", "ms", "gbps", "pct_bw", "tflops", "peak_mb",
               "speedup_vs_ref", "speedup_vs_best_peer", "max_rel_err",
               # extra context (the first 13 columns are the contract)
               "variant", "tok_s", "timer", "reps", "warmup_s", "err_shape", "errors", "copy_gbps", "ms_graph",
               "measurement", "note", "source_hash", "timing_mode"]

# Which implementations count as "peers" (speedup_vs_best_peer), per op: the specs' peers, training's peer model
PEERS = {**{op: tuple(i.name for i in s.role("peer")) for op, s in specs().items()}, "train": ("peer",)}
REFERENCE = "reference"

RESULTS: list[dict] = []
SESSION: dict = {"start": time.monotonic(), "copy_gbps": None}


# --------------------------------------------------------------------------------------------- configuration

def quick() -> bool:
    return os.environ.get("GT_BENCH_QUICK", "1") != "0"


def budget_s() -> float:
    default = "400" if quick() else "0"
    return float(os.environ.get("GT_BENCH_BUDGET_S", default))


def budget_left() -> float:
    b = budget_s()
    return math.inf if b <= 0 else b - (time.monotonic() - SESSION["start"])


def require_budget(what: str, need_s: float = 0.0) -> None:
    """Skip (with a clear reason) a lower-priority benchmark once the soft time budget is spent."""
    left = budget_left()
    if left <= need_s:
        pytest.skip(f"time budget GT_BENCH_BUDGET_S={budget_s():g}s spent ({left:.0f}s left): {what} not run "
                    "(GT_BENCH_BUDGET_S=0 for no limit)")


def out_dir() -> Path:
    env = os.environ.get("GT_BENCH_OUT")
    return Path(env) if env else profiles_dir()


def measurement_label() -> str:
    if not ON_GPU:
        return "cpu-not-a-measurement"
    return gpu_slug()


# ------------------------------------------------------------------------------------------------- timing

def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def _call(fn: Callable, grad_to_none: Iterable[torch.Tensor] | None):
    if grad_to_none is not None:
        for t in grad_to_none:
            t.grad = None
    return fn()


def _event_ms(fn: Callable, grad_to_none=None) -> float:
    if not ON_GPU:
        t0 = time.perf_counter()
        _call(fn, grad_to_none)
        return (time.perf_counter() - t0) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    _call(fn, grad_to_none)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def warm_up(fn: Callable, grad_to_none=None, calls: int = 1) -> float:
    """Untimed first call(s): autotuning, compilation. Returns their wall time in seconds."""
    t0 = time.perf_counter()
    for _ in range(calls):
        _call(fn, grad_to_none)
    sync()
    return time.perf_counter() - t0


def peak_extra_mb(fn: Callable, grad_to_none=None) -> tuple[float | None, float]:
    """(extra peak MB of one call, that call's time in ms). MB is None on CPU."""
    if not ON_GPU:
        return None, _event_ms(fn, grad_to_none)
    if grad_to_none is not None:
        for t in grad_to_none:
            t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms = _event_ms(fn, grad_to_none)
    peak = torch.cuda.max_memory_allocated() - base
    return peak / 2**20, ms


def time_fn(fn: Callable, grad_to_none=None, first_ms: float | None = None,
            warm_rep: tuple[int, int] | None = None) -> tuple[float, str, int]:
    """(median ms, timer description, reps). ``first_ms``: a timing already taken (e.g. by the memory call);
    ``warm_rep``: the warm-up and timed ms (default: the grid's, 10 / 60 quick, 25 / 200 full): do_bench's
    arguments with ``GT_BENCH_EAGER=do_bench``, else their sum is the box of ``gate._time_ms`` (the warm-up is
    done: ``measure``'s first call, its memory call), each call clearing ``grad_to_none``'s gradients inside the
    timed batch (``gate._clearing``, as the qualification's eager rows)."""
    q = quick()
    if not ON_GPU:
        times = [first_ms] if first_ms is not None else []
        while len(times) < 2:
            times.append(_event_ms(fn, grad_to_none))
        return statistics.median(times), "host clock (CPU)", len(times)
    if first_ms is None:
        first_ms = _event_ms(fn, grad_to_none)
    if first_ms > SLOW_MS:
        times, t0 = [first_ms], time.monotonic()
        max_reps, box_s = (3, 2.0) if q else (5, 10.0)
        while len(times) < max_reps and time.monotonic() - t0 < box_s:
            times.append(_event_ms(fn, grad_to_none))
        return statistics.median(times), "cuda events (slow fn, time-boxed)", len(times)
    warm, rep = warm_rep or ((10, 60) if q else (25, 200))
    if os.environ.get("GT_BENCH_EAGER", "batched") != "do_bench":
        ms, reps = gate._time_ms(gate._clearing(fn, list(grad_to_none or [])), ON_GPU, first_ms, box_ms=warm + rep)
        return ms, "median of batches of back-to-back calls (cuda events)", reps
    import triton.testing
    ms = triton.testing.do_bench(fn, warmup=warm, rep=rep, grad_to_none=list(grad_to_none or []) or None,
                                 return_mode="median")
    reps = max(1, int(rep / max(first_ms, 1e-3)))
    return float(ms), "do_bench median (cuda events)", reps


def time_graph(op: str, impl: str, step: Callable, leaves) -> tuple[float | None, str]:
    """(``ms_graph``: ms per call over CUDA-graph replays of ``step`` — ``gate.graph_ms`` — or None, a note):
    for graph-safe implementations on a GPU (``GT_BENCH_GRAPH=0``: none). A capture that fails is said in the
    note (the graph verdict then denies)."""
    if not ON_GPU or os.environ.get("GT_BENCH_GRAPH", "1") == "0" or not get(op).impl(impl).graph_safe:
        return None, ""
    try:
        return gate.graph_ms(step, list(leaves or []))[0], ""
    except Exception as e:  # noqa: BLE001 - recorded: the graph verdict denies
        return None, f"{gate.GRAPH_FAILED}: {type(e).__name__}: {str(e)[:160]}"
    finally:
        torch.cuda.synchronize()


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float | None:
    """Device-to-device copy bandwidth (read + write bytes / time), the 100% of ``pct_bw``."""
    if not ON_GPU:
        return None
    import triton.testing
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    src = dst = None  # noqa: F841 - free 2 GiB before the benchmarks
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------- results

def as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


make_backward = harness.fwd_bwd_step   # (fn, inputs, seed) -> (fwd+bwd step, leaves to clear)


def measure(fn: Callable, inputs: dict, grad: bool, warm_rep: tuple[int, int] | None = None) -> dict:
    """One implementation at one shape: ``fn(**inputs)`` (``grad``: forward + backward with fixed random
    cotangents, ``make_backward``). Its first call, untimed (autotuning, compilation: ``warmup_s`` in s), the extra
    peak memory of one call (``peak_mb``, None on CPU), the median time (``time_fn``: ``ms``, ``timer``, ``reps``;
    ``warm_rep`` passed on), and the ``step`` and its ``leaves`` (the graph timing, pytest-benchmark's entry)."""
    t0 = time.perf_counter()
    if grad:
        step, leaves = make_backward(fn, inputs)
    else:
        def step():
            return fn(**inputs)
        leaves = None
    warmup_s = time.perf_counter() - t0 + warm_up(step, leaves)
    peak, first_ms = peak_extra_mb(step, leaves)
    ms, timer, reps = time_fn(step, leaves, first_ms, warm_rep)
    return dict(ms=ms, timer=timer, reps=reps, warmup_s=warmup_s, peak_mb=peak, step=step, leaves=leaves)


def record(benchmark, *, op: str, impl: str, shape: str, pass_: str, dtype: str, ms: float | None,
           nbytes: float | None = None, flops: float | None = None, peak_mb: float | None = None,
           errors: dict | None = None, err_shape: str = "", timer: str = "", reps: int | None = None,
           warmup_s: float | None = None, variant: str = "", tok_s: float | None = None,
           ms_graph: float | None = None, note: str = "", timing_mode: str = "eager") -> dict:
    """Append one result row (and mirror it into ``benchmark.extra_info``). ``timing_mode``: how ``ms`` was
    timed (``groundthink.gate.TIMINGS``; the benchmarks time eagerly); ``ms_graph``: the CUDA-graph time."""
    copy_gbps = SESSION.get("copy_gbps")
    gbps = nbytes / (ms * 1e-3) / 1e9 if (nbytes and ms) else None
    finite_errs = {k: float(v) for k, v in (errors or {}).items()}
    row = {
        "op": op, "impl": impl, "shape": shape, "pass": pass_, "dtype": dtype,
        "ms": ms, "gbps": gbps,
        "pct_bw": 100.0 * gbps / copy_gbps if (gbps and copy_gbps) else None,
        "tflops": flops / (ms * 1e-3) / 1e12 if (flops and ms) else None,
        "peak_mb": peak_mb, "speedup_vs_ref": None, "speedup_vs_best_peer": None,
        "max_rel_err": max(finite_errs.values()) if finite_errs else None,
        "variant": variant, "tok_s": tok_s, "timer": timer, "reps": reps, "warmup_s": warmup_s,
        "err_shape": err_shape, "errors": json.dumps(finite_errs) if finite_errs else "",
        "copy_gbps": copy_gbps, "ms_graph": ms_graph, "measurement": measurement_label(),
        "note": "; ".join(x for x in (note, "" if ON_GPU else NOT_A_MEASUREMENT) if x),
        "source_hash": gate.op_hash(op) if op in specs() else "", "timing_mode": timing_mode,
    }
    RESULTS.append(row)
    if benchmark is not None:
        benchmark.extra_info.update(row)
        row["_extra_info"] = benchmark.extra_info       # updated again with speedups at session end
    checkpoint()
    return row


def checkpoint() -> None:
    """Rewrite <out>/bench.csv after every row: a run cut short (timeout, crash) still leaves its figures."""
    try:
        write_csv(finalize(all_rows()), out_dir() / "bench.csv")
    except OSError:
        pass


NUMERIC = {"ms", "gbps", "pct_bw", "tflops", "peak_mb", "speedup_vs_ref", "speedup_vs_best_peer", "max_rel_err",
           "tok_s", "reps", "warmup_s", "copy_gbps", "ms_graph"}


def read_csv_rows(path: Path) -> list[dict]:
    """Rows of an earlier bench.csv, numbers as floats (None where empty)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k in CSV_COLUMNS:
                v = r.get(k, "")
                if k in NUMERIC:
                    try:
                        row[k] = float(v) if v not in ("", None) else None
                    except ValueError:
                        row[k] = None
                else:
                    row[k] = v or ""
            out.append(row)
    return out


def row_key(r: dict) -> tuple:
    return (r["op"], r["impl"], r.get("variant", "") or "", r["shape"], r["pass"], r["dtype"])


def _old_rows() -> list[dict]:
    """With GT_BENCH_MERGE=1: the rows of the bench.csv already in the output folder (read once, at the first
    row of this run), so that a partial re-run (``-k …``) adds to / replaces rows of an earlier run."""
    if "old_rows" not in SESSION:
        SESSION["old_rows"] = []
        path = out_dir() / "bench.csv"
        if os.environ.get("GT_BENCH_MERGE", "0") == "1" and path.exists():
            try:
                SESSION["old_rows"] = read_csv_rows(path)
            except (OSError, csv.Error, KeyError):
                SESSION["old_rows"] = []
    return SESSION["old_rows"]


def all_rows() -> list[dict]:
    """This run's rows, plus (GT_BENCH_MERGE=1) the earlier run's rows this run did not re-measure."""
    mine = {row_key(r) for r in RESULTS}
    return [r for r in _old_rows() if row_key(r) not in mine] + RESULTS


def host_benchmark(benchmark, fn: Callable, grad_to_none=None, slow: bool = False) -> None:
    """Give pytest-benchmark its own (host-clock, synchronized) entry; the real figures are in extra_info."""
    if benchmark is None:
        return

    def target():
        _call(fn, grad_to_none)
        sync()

    benchmark.pedantic(target, rounds=1 if slow else 3, iterations=1, warmup_rounds=0)


def finalize(rows: list[dict]) -> list[dict]:
    """Fill speedup_vs_ref / speedup_vs_best_peer (same op, variant, shape, pass, dtype)."""
    def key(r):
        return (r["op"], r.get("variant", ""), r["shape"], r["pass"], r["dtype"])

    def peer_key(r):  # training peers are one model per size, not per variant
        return (r["op"], "" if r["op"] == "train" else r.get("variant", ""), r["shape"], r["pass"],
                r["dtype"])

    ref = {key(r): r for r in rows if r["impl"] == REFERENCE and r.get("ms")}
    best_peer: dict = {}
    for r in rows:
        if r["impl"] in PEERS.get(r["op"], ()) and r.get("ms"):
            k = peer_key(r)
            if k not in best_peer or r["ms"] < best_peer[k]["ms"]:
                best_peer[k] = r
    for r in rows:
        if not r.get("ms"):
            continue
        rr = ref.get(key(r))
        if rr is not None:
            r["speedup_vs_ref"] = rr["ms"] / r["ms"]
        bp = best_peer.get(peer_key(r))
        if bp is not None:
            r["speedup_vs_best_peer"] = bp["ms"] / r["ms"]
        extra = r.get("_extra_info")
        if extra is not None:
            extra["speedup_vs_ref"] = r["speedup_vs_ref"]
            extra["speedup_vs_best_peer"] = r["speedup_vs_best_peer"]
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return path


def write_rows_json(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    path.write_text(json.dumps({"measurement": measurement_label(), "copy_gbps": SESSION.get("copy_gbps"),
                                "rows": clean}, indent=1, default=str) + "\n")
    return path


# ---------------------------------------------------------------------------------------- one kernel row

def must_pass(op: str, impl: str) -> bool:
    """The lab's kernels and the reference run (and must pass) on every machine; peers may be absent."""
    return get(op).impl(impl).role in ("reference", "lab")


def load_impl(op: str, impl: str, extra: dict | None = None) -> Callable:
    """The implementation to benchmark; skips the row (with the reason) when it is absent on this machine.
    ``extra``: impl -> a zero-argument maker overriding the spec's target."""
    entry = get(op).impl(impl)
    if not entry.runs_here(ON_GPU):
        pytest.skip(f"{op}/{impl}: GPU-only peer")
    try:
        return extra[impl]() if extra and impl in extra else entry.load()
    except ImportError as e:
        if must_pass(op, impl):
            raise
        pytest.skip(f"{op}/{impl} not installed here: {e}")


def run_case(bench, *, op: str, impl: str, fn: Callable, ref64: Callable, shape: str, pass_: str,
             make_inputs: Callable[[bool], dict], make_err_inputs: Callable[[bool], dict], err_shape: str,
             nbytes: float | None, flops: float | None, dtype: str = "bfloat16") -> dict:
    """Time ``fn`` and measure its extra peak memory at the benchmarked shape (``make_inputs``; its first call
    there — autotuning, compilation — is ``warmup_s``, and an autotuner whose key ignores the batch tunes at this
    shape, not at the error shape), then check it against the float64 reference (``make_err_inputs``), and
    record the row.

    A failure of the lab's kernel or the reference fails the test (the row says so, the manifest denies); a
    failing peer is recorded and skipped."""
    from groundthink.harness import compare
    grad = pass_ == "fwdbwd"
    notes: list[str] = []
    common_kw = dict(op=op, impl=impl, shape=shape, pass_=pass_, dtype=dtype, err_shape=err_shape)

    def check() -> dict:
        try:
            return compare(fn, ref64, make_err_inputs(grad), backward=grad)
        except Exception as e:  # noqa: BLE001 - recorded: the manifest denies an unchecked kernel
            notes.insert(0, f"error check failed: {type(e).__name__}: {str(e)[:200]}")
            return {}
        finally:
            sync()

    try:
        m = measure(fn, make_inputs(grad), grad)
        ms = m["ms"]
        host_benchmark(bench, m["step"], m["leaves"], slow=ms > SLOW_MS)
        ms_graph, graph_note = time_graph(op, impl, m["step"], m["leaves"])
        notes += [graph_note] if graph_note else []
    except Exception as e:  # noqa: BLE001
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        msg = f"{'out of memory' if oom else 'failed'}: {type(e).__name__}: {str(e)[:200]}"
        m = None
    if m is None:          # (out of the except clause: its traceback no longer holds the inputs)
        if ON_GPU:
            torch.cuda.empty_cache()
        errors = check()
        row = record(bench, ms=None, errors=errors, note="; ".join(notes + [msg]), **common_kw)
        if must_pass(op, impl) and not oom:
            pytest.fail(f"{op}/{impl} {shape} {pass_}: {msg}")
        pytest.skip(f"{op}/{impl} {shape} {pass_}: {msg}")
        return row
    peak, timer, reps, warmup_s = m["peak_mb"], m["timer"], m["reps"], m["warmup_s"]
    m = None  # free the inputs and the step before the check
    errors = check()
    row = record(bench, ms=ms, nbytes=nbytes, flops=flops, peak_mb=peak, errors=errors, timer=timer, reps=reps,
                 warmup_s=warmup_s, ms_graph=ms_graph, note="; ".join(notes), **common_kw)
    if notes and must_pass(op, impl):      # a failed check, or a capture failed: the spec's graph_safe is wrong
        pytest.fail(f"{op}/{impl} {shape} {pass_}: {notes[0]}")
    return row


def kernel_cases(shapes, passes, impls, shape_str, priority=None, keep=None) -> list:
    """pytest params (impl, shape, pass) for a kernel benchmark, ordered by ``priority[impl]`` (default 1);
    ``keep(impl, shape)`` may drop a combination."""
    out = []
    for shp in shapes:
        for pass_ in passes:
            for impl in impls:
                if keep is not None and not keep(impl, shp):
                    continue
                out.append(pytest.param(impl, shp, pass_, id=case_id(impl, shape_str(*shp), pass_),
                                        marks=pytest.mark.bench_priority((priority or {}).get(impl, 1))))
    return out


def case_id(impl: str, shape: str, pass_: str) -> str:
    return f"{impl}-{shape.replace(' ', '_')}-{pass_}"


# ------------------------------------------------------------------------------------ cases from the specs

def bench_shapes(op: str) -> list:
    b = get(op).bench
    return b.shapes() if ON_GPU else list(b.cpu_shapes)


def spec_cases(ops=None) -> list:
    """pytest params (op, impl, shape, pass) of every op with a ``bench`` in its spec (``ops``: only these), in
    the spec's priority order; in the quick grid the peers only where the spec's ``quick_peer`` says so."""
    out = []
    for op, spec in specs().items():
        if spec.bench is None or (ops is not None and op not in ops):
            continue
        prio = {i.name: spec.priority(i) for i in spec.impls}
        qp = spec.bench.quick_peer

        def keep(impl, shp, prio=prio, qp=qp):
            return not (prio[impl] > 1 and ON_GPU and quick() and qp is not None and not qp(*shp))

        for p in kernel_cases(bench_shapes(op), spec.bench.passes, [i.name for i in spec.impls],
                              spec.bench.shape_str, prio, keep):
            out.append(pytest.param(op, *p.values, id=f"{op}-{p.id}", marks=p.marks))
    return out


def spec_test(op: str):
    """The benchmark of one op declared in its spec: ``bench/bench_<op>.py`` is ``test_<op> = spec_test(op)``.
    Every implementation (reference, lab kernels, installed peers), forward and forward+backward, checked against
    the float64 reference and timed (``run_spec_case``)."""
    cases = [pytest.param(*p.values[1:], id=p.id[len(op) + 1:], marks=p.marks) for p in spec_cases([op])]

    @pytest.mark.parametrize("impl,shp,pass_", cases)
    def test(bench, impl, shp, pass_):
        run_spec_case(bench, op, impl, shp, pass_)

    test.__name__ = test.__qualname__ = f"test_{op}"
    return test


def run_spec_case(bench, op: str, impl: str, shp: tuple, pass_: str) -> dict:
    """One row of an op declared in its spec: its reference at float64 for the errors, its inputs, bytes,
    FLOPs and error shape."""
    spec = get(op)
    b = spec.bench
    if spec.priority(spec.impl(impl)) > 1:
        require_budget(f"{op}/{impl}")
    fn = load_impl(op, impl)
    err = b.err_shape(*shp) if b.err_shape else shp
    return run_case(
        bench, op=op, impl=impl, fn=fn, ref64=spec.reference.load(), shape=b.shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: b.make_inputs(*shp, grad, dtype=b.dtype, device=DEVICE),
        make_err_inputs=lambda grad: b.make_inputs(*err, grad, dtype=b.dtype, seed=1, device=DEVICE),
        err_shape=b.shape_str(*err), nbytes=b.nbytes(*shp, pass_) if b.nbytes else None,
        flops=b.flops(*shp, pass_) if b.flops else None, dtype=str(b.dtype).replace("torch.", ""))
