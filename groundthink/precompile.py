"""Parallel compilation of autotuned Triton kernels on first use (``parallel_autotune``, a context manager).

Why. On a fresh machine the first call of an ``@triton.autotune`` kernel compiles every config one after the
other, then benchmarks them. mamba-ssm's first use at the model's shape took 99.5 s on the H100 (run 5, ≈15
autotuned kernels × several configs), the lab's wkv6 kernels 17 s: most of it compilation (the Triton frontend,
MLIR passes, LLVM and ``ptxas``), which does not need the GPU.

What. Inside ``parallel_autotune()``, when an ``Autotuner`` (any: the lab's, mamba-ssm's, causal-conv1d's,
fla's) meets a tuning key it has not tuned yet, the configs it is about to benchmark (after its own pruning) are
first compiled concurrently — each as ``fn.warmup(...)`` with the call's own arguments, so with exactly the
specialisation the benchmark will use — under Triton's ``AsyncCompileMode`` (Triton ≥ 3.4; 3.6 and 3.9 have
it) on a thread pool. Then Triton's own ``Autotuner.run`` proceeds unchanged: it finds the kernels compiled,
benchmarks every config as before and keeps the fastest. Nothing about the choice or the computation changes:
only when the compile happens. Compilation releases the GIL while ``ptxas`` runs (a subprocess) and in the
native passes that do; how much this buys is measured on the GPU (notes/gate.md).

Shorter benchmarks. Triton benchmarks each config with ``do_bench(warmup=25, rep=100)``: ≥ 125 ms a config, ~15
s for mamba-ssm's 116 configs at its first use (run 6: 52.0 s in all, 25.1 s of it the parallel compile).
Inside the helper a tuner that uses Triton's default benchmarker gets the same benchmarker with ``BENCH_MS``
(warm-up 5 ms, repetitions 25 ms: still the median of hundreds of runs for a µs kernel, each after an L2 flush);
its own ``do_bench`` (a caller's choice) is left alone, and the default comes back on exit.
``GROUNDTHINK_AUTOTUNE_BENCH_MS="25,100"`` restores Triton's figures. Configs within the noise of each other
may then swap places; which config is fastest by a clear margin does not change.

Compile in the background (``Background``, ``python -m groundthink.compile_item ITEMS-JSON``): before data and model
(train.py, ``gate.early_background``) one group of subprocesses starts for the items expected to take long
(``gate.BACKGROUND_S``: mamba-ssm's first use; by default the lab kernels get a group of their own beside it,
``GROUNDTHINK_LAB_BACKGROUND=0`` turns it off: run 12 call 6's way), so that their compilation — CPU work —
overlaps the timing of the cheap items; a group compiles its items one after another, saying each item's line as
soon as its compiles are done, and the gate measures an item once its line is there (``Background.done`` asks
without waiting). Run 12: 6 shards did not shorten mamba-ssm's item (56.8 / 55.1 s vs 54.5 s in one process). Why
(session 10, from the sources): on a GPU autograd runs a backward on its device thread, where Triton's
``AsyncCompileMode`` (a ``ContextVar`` of the calling thread) is unset, so the backward's configs were compiled
one after another, in every shard, outside the split:
the item line counted 42 jobs, the main then found 116 kernels in the disk cache (so ≈ 74 compiled outside the
jobs). ``compile_only`` now keeps the backward on the calling thread (``torch.autograd.set_multithreading_enabled``).
A subprocess dry-runs each item: one forward + backward at the model's shape and at the spec's error shape (what
``gate.measure`` runs) inside ``compile_only``, in which no Triton kernel is launched: every kernel the call meets
is submitted to one thread pool (one ``AsyncCompileMode`` for the whole dry run), an autotuned kernel with every
config it would benchmark (nothing at a key it has met already: the error shape of a kernel whose key ignores the
batch), and its ``best_config`` is set, because host code reads it after a launch (mamba-ssm's backward; run 7's
subprocess died there, at its first backward kernel, so the main process compiled mamba-ssm's 116 configs again).
Only PyTorch's own small ops reach the GPU. It says one JSON line per item as soon as the item's compiles are done
and ends with a JSON summary; the binaries land in Triton's disk cache, which the main process reads when it
measures the item, right after that line. Per item the gate says how many Triton kernels the main process compiled
itself and how many it found in the disk cache (``counting_compiles``). The subprocesses run at the main process's
priority (train.py starts them before data and model: ``gate.early_background``). Any failure there costs nothing
but the overlap: the main process compiles what is missing, as before.

Two groups (``lab_shard_count``; on by default, ``GROUNDTHINK_LAB_BACKGROUND=0`` off). Run 12 call 5
queued the lab items in mamba-ssm's shards, behind its 57 s compile: every one was deferred. With the knob the
lab items start as a group of processes of their own (``Background.start(items, shards=)``: 3 on the 16-core
host, none below ``LAB_MIN_CORES``), beside mamba-ssm's group, compiling the shortest first; an item's shards are
its group's (``shards_for``), and ``wait_any`` returns whichever item of either group is done first, so that the
gate measures each as soon as it is ready.

Shards (``--shard I/N``, ``shard_count``). Triton's Python frontend passes hold the GIL, so one subprocess's
thread pool compiles little in parallel (run 11: mamba-ssm's 42 compiles took 50.9 s on a 14-thread pool, and
were the qualification's critical path). An item is therefore compiled by N subprocesses (6 on the GPU host's 16
cores, 1 on a 2-core machine; ``GROUNDTHINK_PRECOMPILE_SHARDS=1``: one, run 11's way): each runs the same dry
run — every autotuner's ``best_config`` set, every kernel met — but of the compile jobs, in the order the dry
run submits them (Triton submits each distinct compile once; the order does not depend on what compiled), it
compiles only job I, I + N, ... (``_Recording``); the others get a future that failed (``_Skipped``), which the
dry run drops as it drops a config that does not compile. The N shards together compile each job exactly once,
all into Triton's shared disk cache; the item is ready when every shard has said its line. A shard that dies
costs its share of the overlap only (the main process compiles that share).

Winners at the error shape (``compile_winners``): the fp64 check runs at a smaller batch, where kernels
specialise anew (an int argument divisible by 16 at B64 is not at B2: two of wkv6's kernels, most of
mamba-ssm's) and the winners chosen at the model's shape would compile one after another as the check meets
them. The main process first dry-runs the check's fwd+bwd with each autotuner compiling only its choice, all
concurrently; the check then finds them compiled.

Skipped (Triton's path as is): one config after pruning; a key already tuned; a tuning result already in
Triton's autotune disk cache (``TRITON_CACHE_AUTOTUNING=1``: only the winner would be compiled); the
interpreter (one config, nothing to compile). Fail safe: any error in the helper — an API that drifted, a config
that does not compile (``OutOfResources``), a nested ``AsyncCompileMode`` — is swallowed, counted in
``STATS["errors"]``, and Triton's normal path runs (it compiles whatever is missing itself and reports a bad
config as it always does). Not thread-safe for other threads launching kernels while the patch is in place
(the training driver and the gate run on one thread).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

_LOADED = time.monotonic()   # the subprocess's start (this module is its first import), for its item lines
STATS = {"keys": 0, "configs": 0, "seconds": 0.0, "errors": 0, "jit": 0}   # what the helpers did in this process
# ("jit": kernels without an autotuner compiled by compile_only)
BENCH_MS = (5, 25)    # warm-up and repetition ms of each config's benchmark inside the helper (Triton: 25, 100)


def _bench_ms() -> tuple[int, int]:
    raw = os.environ.get("GROUNDTHINK_AUTOTUNE_BENCH_MS", "")
    try:
        warmup, rep = (int(x) for x in raw.split(","))
        return (warmup, rep) if warmup >= 0 and rep > 0 else BENCH_MS
    except ValueError:
        return BENCH_MS


def _benchmarker():
    """Triton's default benchmarker for the active backend (``do_bench`` on NVIDIA)."""
    from triton.runtime.driver import driver
    return driver.active.get_benchmarker()


def _short_bench(tuner, patched: list) -> None:
    """Give ``tuner`` Triton's default benchmarker with ``BENCH_MS`` for the helper's duration (``patched``
    collects it for the restore), unless it has a benchmarker of its own. ``do_bench`` is a cached property of
    ``Autotuner``: the instance attribute takes its place."""
    if getattr(tuner, "_do_bench", False) is not None or "do_bench" in vars(tuner):
        return
    warmup, rep = _bench_ms()
    vars(tuner)["do_bench"] = functools.partial(_benchmarker(), warmup=warmup, rep=rep)
    patched.append(tuner)


def _workers() -> int:
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))


def _tuning_key(tuner, args: tuple, kwargs: dict) -> tuple:
    """The key ``Autotuner.run`` tunes under (the ``key`` arguments' values, then every tensor's dtype)."""
    named = {**dict(zip(tuner.arg_names, args)), **kwargs}
    named = {k: v for k, v in named.items() if k in tuner.arg_names}
    key = [named[k] for k in tuner.keys if k in named]
    key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return tuple(key)


def _disk_cached(tuner, key: tuple, configs: list) -> bool:
    """Whether Triton's autotune disk cache already holds the result for ``key`` (then Triton benchmarks
    nothing and compiles only the winner: precompiling every config would be waste). Mirrors
    ``Autotuner.check_disk_cache``'s file name; False whenever that cannot be told."""
    if not getattr(tuner, "cache_results", False) or any(c.pre_hook for c in configs):
        return False
    import hashlib

    from triton.compiler.compiler import make_backend
    from triton.runtime.cache import get_cache_manager, triton_key
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction
    from triton._C.libtriton import get_cache_invalidating_env_vars
    fn = tuner.fn
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    parts = [triton_key(), make_backend(driver.active.get_current_target()).hash(), fn.cache_key,
             str(sorted(get_cache_invalidating_env_vars().items())), str(key)] + [str(c) for c in configs]
    cache = get_cache_manager(hashlib.sha256("-".join(parts).encode("utf-8")).hexdigest())
    return cache.get_file(f"{fn.__name__[:150]}.autotune.json") is not None


def _precompile(tuner, args: tuple, kwargs: dict, pool) -> None:
    """Compile every config ``tuner`` will benchmark for this call, concurrently; returns when all are done."""
    from triton.runtime._async_compile import AsyncCompileMode, active_mode
    if len(tuner.configs) <= 1 or active_mode.get() is not None:
        return
    if _tuning_key(tuner, args, kwargs) in tuner.cache:     # the common case, before any pruning
        return
    key, meta, configs = _tuner_configs(tuner, args, kwargs)
    if len(configs) <= 1 or _disk_cached(tuner, key, configs):
        return
    t0 = time.monotonic()
    try:
        with AsyncCompileMode(pool, ignore_errors=True):
            for cfg in configs:
                tuner.fn.warmup(*args, grid=(1,), **meta, **cfg.all_kwargs())
    finally:
        active_mode.set(None)      # Triton 3.6 leaves the mode set when a compile raised during its exit
        STATS["keys"] += 1
        STATS["configs"] += len(configs)
        STATS["seconds"] += time.monotonic() - t0


def _interpreting() -> bool:
    from kernels import INTERPRET
    return INTERPRET


def switched_on(enabled: bool = True) -> bool:
    """Whether parallel and background compilation may run: asked for, not off by
    ``GROUNDTHINK_PARALLEL_COMPILE=0``, not the interpreter (nothing to compile)."""
    return enabled and os.environ.get("GROUNDTHINK_PARALLEL_COMPILE", "1") != "0" and not _interpreting()


@contextlib.contextmanager
def parallel_autotune(workers: int | None = None, enabled: bool = True):
    """Inside: every autotuned Triton kernel compiles all its configs for a new key in parallel before it
    benchmarks them (module docstring). ``enabled=False``, ``GROUNDTHINK_PARALLEL_COMPILE=0`` or no usable
    Triton: a no-op (Triton compiles one config after another). Re-entrant (an inner use does nothing)."""
    try:
        import triton.runtime._async_compile  # noqa: F401 - Triton ≥ 3.4
        from triton.runtime.autotuner import Autotuner
    except Exception:  # noqa: BLE001 - an older or absent Triton: its normal path
        enabled = False
    if not switched_on(enabled) or getattr(Autotuner.run, "_parallel_autotune", False):
        yield STATS
        return
    original = Autotuner.run
    pool = ThreadPoolExecutor(workers or _workers(), thread_name_prefix="precompile")
    patched: list = []

    def run(self, *args, **kwargs):
        try:
            _precompile(self, args, kwargs, pool)
            _short_bench(self, patched)
        except Exception:  # noqa: BLE001 - fail safe: Triton's own path compiles what is missing
            STATS["errors"] += 1
        return original(self, *args, **kwargs)

    run._parallel_autotune = True
    Autotuner.run = run
    try:
        yield STATS
    finally:
        Autotuner.run = original
        for tuner in patched:
            vars(tuner).pop("do_bench", None)
        pool.shutdown(wait=True)


COMPILES = {"compiled": 0, "cached": 0}   # Triton compiles in this process inside counting_compiles(): done
# here, or served by the disk cache (what the background compile left there)


@contextlib.contextmanager
def counting_compiles():
    """Inside: every Triton compile of this process is counted in ``COMPILES`` as compiled here or found in the
    disk cache (Triton's compilation listener; any listener already set still hears every compile). What says,
    per qualified item, whether the background compile's binaries were reused. A no-op without the knob."""
    try:
        from triton import knobs
        before = knobs.compilation.listener
    except Exception:  # noqa: BLE001 - an older Triton: nothing counted
        yield COMPILES
        return
    if getattr(before, "_counting", False):      # re-entrant: the outer one counts
        yield COMPILES
        return
    lock = threading.Lock()

    def listener(*, cache_hit: bool, **kwargs):
        with lock:
            COMPILES["cached" if cache_hit else "compiled"] += 1
        if before is not None:
            before(cache_hit=cache_hit, **kwargs)

    listener._counting = True
    knobs.compilation.listener = listener
    try:
        yield COMPILES
    finally:
        knobs.compilation.listener = before


def compiles_since(before: dict) -> str:
    """"; Triton kernels: N compiled here, M from the disk cache" since ``before`` (a copy of ``COMPILES``), or ""."""
    d = {k: COMPILES[k] - before[k] for k in COMPILES}
    return f"; Triton kernels: {d['compiled']} compiled here, {d['cached']} from the disk cache" if any(d.values()) \
        else ""


def _spec_key(value, constexpr: bool):
    """What Triton specialises a kernel argument on (so a new value of it is a new compile): a tensor's dtype and
    16-byte alignment, an int's being 1 or a multiple of 16 (and its width), a constexpr's value."""
    if constexpr or value is None or isinstance(value, (bool, str)):
        return repr(value)
    if hasattr(value, "data_ptr"):
        return f"*{str(value.dtype).removeprefix('torch.')}{':16' if value.data_ptr() % 16 == 0 else ''}"
    if isinstance(value, int):
        return "1" if value == 1 else ("i64" if abs(value) >= 2**31 else "i32") + (":16" if value % 16 == 0 else "")
    return type(value).__name__


@contextlib.contextmanager
def launched_specialisations(run: bool = True):
    """Inside, under the Triton interpreter (a CPU): every Triton kernel launch is recorded as (kernel name, its
    specialisation: ``_spec_key`` of each argument, the launch's meta-parameters) in the yielded set — on a GPU
    each distinct one is a compile. ``run=False``: the launches do nothing (counting only; the outputs stay
    unwritten). How the step's compiles and the qualification's are counted on a CPU (tests/test_gate.py)."""
    import inspect as _inspect

    from triton.runtime.interpreter import InterpretedFunction
    seen: set = set()
    original = InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        params = _inspect.signature(self.fn).parameters
        named = {**dict(zip(self.arg_names, args)), **kwargs}
        key = tuple((k, _spec_key(v, "constexpr" in str(getattr(params.get(k), "annotation", ""))))
                    for k, v in named.items())
        seen.add((self.fn.__name__, key))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs) if run else None

    InterpretedFunction.run = record
    try:
        yield seen
    finally:
        InterpretedFunction.run = original


# ------------------------------------------------------------------------------ compile in the background

class _Recording:
    """An executor that keeps every compile future it is given (the item's line counts them and their errors).
    ``shard=(i, n)``: of the compile jobs met, in the order the dry run meets them (``jobs`` counts them), only
    those whose index is i modulo n are compiled; any other gets a future that failed with ``_Skipped`` (what a
    config that does not compile gets: ``compile_only``'s ignore_errors drops it, Triton's placeholder removed).
    Triton's ``AsyncCompileMode`` submits each distinct compile once, and the dry run's order does not depend on
    what compiled, so every shard meets the same jobs in the same order: the n shards split them exactly.
    One for all the items of a subprocess (``_compile_items``): the job indices run on across them, so that an item
    of fewer jobs than shards does not always fall to the first shards."""

    def __init__(self, pool, shard: tuple[int, int] = (0, 1)):
        self.pool, self.futures, self.shard, self.jobs = pool, [], shard, 0

    def submit(self, fn, *args, **kwargs):
        index, (i, n) = self.jobs, self.shard
        self.jobs += 1
        if index % n != i:
            skipped = Future()
            skipped.set_exception(_Skipped(f"compile job {index}: shard {index % n}/{n}'s"))
            return skipped
        future = self.pool.submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future


class _Skipped(Exception):
    """A compile job another shard does (``_Recording``)."""


def _tuner_configs(tuner, args: tuple, kwargs: dict) -> tuple[tuple, dict, list]:
    """(tuning key, the call's meta-parameters, the configs ``Autotuner.run`` would benchmark after pruning)."""
    meta = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
    tuner.nargs = dict(zip(tuner.arg_names, args))
    try:
        return _tuning_key(tuner, args, kwargs), meta, tuner.prune_configs(meta)
    finally:
        tuner.nargs = None


class Untuned(Exception):
    """A winners-only dry run met an autotuner that has not chosen for this key: the real call would benchmark."""


@contextlib.contextmanager
def compile_only(workers: int | None = None, executor=None, winners: bool = False):
    """Inside: no Triton kernel runs; every kernel a call meets is compiled instead, all of them concurrently
    (one ``AsyncCompileMode`` for the whole block, on ``executor`` or a pool of ``workers`` threads; the block's end
    waits for them). An autotuned kernel meeting a new key compiles every config it would benchmark; at a key this
    dry run has met already (the error shape of a kernel whose key ignores the batch) it compiles none (the main
    process's benchmark chooses the winner, ``compile_winners`` compiles it there). Its ``best_config`` is set to
    the first config: host code reads it after a launch (mamba-ssm sizes its backward reductions by
    ``kernel.best_config``; without it the dry run stopped at the first backward kernel — run 7). Any other Triton
    kernel compiles with ``warmup=True``. A backward inside runs on the calling thread
    (``torch.autograd.set_multithreading_enabled(False)``): Triton's ``AsyncCompileMode`` is a ``ContextVar``, unset
    on the autograd engine's device thread, where every backward kernel compiled synchronously, outside the shards'
    split. For a subprocess whose only job is to fill Triton's disk cache: the outputs stay unwritten, and
    ``best_config`` is no benchmark's choice — never use it in a process that goes on to run kernels.

    ``winners=True`` (``compile_winners``: safe in a process that runs kernels): an autotuner compiles only the
    config it has already chosen for the key, and ``best_config`` is that choice (what a real call sets); one
    that has not chosen raises ``Untuned`` (its real call benchmarks: no dry run can stand in for it)."""
    import torch
    from triton.runtime._async_compile import AsyncCompileMode, active_mode
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    run_tuner, run_jit = Autotuner.run, JITFunction.run
    pool = None if executor else ThreadPoolExecutor(workers or _workers(), thread_name_prefix="precompile")
    seen, in_tuner = set(), []

    def tuner_run(self, *args, **kwargs):
        key, meta, configs = _tuner_configs(self, args, kwargs)
        if winners and key not in self.cache:
            raise Untuned(f"{getattr(self, 'base_fn', self.fn).__name__} has no choice for {key}")
        if winners:
            configs = [self.cache[key]]
        todo = [] if (id(self), key) in seen and not winners else configs
        seen.add((id(self), key))
        in_tuner.append(1)
        try:
            for cfg in todo:
                self.fn.warmup(*args, grid=(1,), **meta, **cfg.all_kwargs())
        finally:
            in_tuner.pop()
        STATS["keys"] += bool(todo)
        STATS["configs"] += len(todo)
        self.best_config = configs[0]

    def jit_run(self, *args, grid, warmup=False, **kwargs):
        STATS["jit"] += not in_tuner
        return run_jit(self, *args, grid=grid, warmup=True, **kwargs)

    Autotuner.run, JITFunction.run = tuner_run, jit_run
    try:
        # the backward on this thread: on a GPU autograd runs it on a device thread, where the mode (a ContextVar)
        # is unset, so every backward kernel compiled one after another in each shard (module docstring)
        with torch.autograd.set_multithreading_enabled(False), AsyncCompileMode(executor or pool, ignore_errors=True):
            yield
    finally:
        active_mode.set(None)      # Triton 3.6 leaves the mode set when a compile raised during its exit
        Autotuner.run, JITFunction.run = run_tuner, run_jit
        if pool:
            pool.shutdown(wait=True)


def compile_winners(call) -> None:
    """Compile every Triton kernel that ``call`` will launch, concurrently, before it runs: a winners-only dry
    run (``compile_only(winners=True)``). For the error check at the spec's error shape, where the batch differs
    from the model's: its kernels specialise anew (an int argument divisible by 16 at B64, not at B2) and would
    otherwise compile one after another as the check meets them (mamba-ssm's ≈15 kernels, 2 of wkv6's).
    Stops at an autotuner that has not chosen (the check then tunes it as always); any error: counted, nothing
    else changes (the call compiles what is missing itself). A no-op where ``switched_on`` is False."""
    if not switched_on():
        return
    try:
        with compile_only(winners=True):
            call()
    except Untuned:
        pass
    except Exception:  # noqa: BLE001 - fail safe: the real call compiles what is missing
        STATS["errors"] += 1


def _dry_run(op: str, impl: str, shape: list, device: str = "cuda") -> None:
    """One forward + backward of ``op``/``impl`` in each of the step's calls (``shape``: their
    ``groundthink.calls.Call.payload()``s) at its shape and at the spec's error shape (what
    ``gate.measure`` runs) inside an active ``compile_only``: the kernels' compiles are submitted, none is waited
    for."""
    import torch

    from groundthink.calls import from_payload, inputs, run_shapes, unused_outputs
    from groundthink.harness import fwd_bwd_step
    from groundthink.spec import get
    spec = get(op)
    fn, b = spec.impl(impl).load(), spec.bench
    for call in (from_payload(op, c) for c in shape):
        for shp in run_shapes(spec, call):
            kw = inputs(spec, shp, call.variant, b.dtype, device=torch.device(device))
            step, _ = fwd_bwd_step(unused_outputs(fn, call.variant), kw)
            step()


SHARD_CORES = 2      # cores per shard subprocess: its Python frontend (holding its GIL) beside ptxas / native passes
MAIN_CORES = 4       # cores left to the main process (its own items' parallel compiles, its timing) and the OS
MAX_SHARDS = 6


def shard_count() -> int:
    """How many subprocesses a background group has (``Background``): each compiles its share of every item's
    compile jobs. (Run 12 calls 5-6: 6 shards did not shorten mamba-ssm's item — 56.8 / 55.1 s vs 54.5 s in one.)

    Run 11 (H100 host, 16 cores): mamba-ssm's item, one subprocess with a 14-thread pool, needed 50.9 s for its 42
    compiles — Triton's Python frontend passes hold the GIL, so the threads gave little; the main process waited
    15.2 s for it. Processes do not share a GIL: ``(cores − MAIN_CORES) // SHARD_CORES``, at most ``MAX_SHARDS``,
    at least 1 — 6 on the 16-core host (12 cores, 7 compiles each), 1 on a 2-core machine (as before), 2 at 8.
    Every shard also repeats the item's set-up (imports, the model's step calls: a few seconds, in parallel).
    ``GROUNDTHINK_PRECOMPILE_SHARDS=N`` overrides (1: one subprocess, run 11's way: the opt-out)."""
    raw = os.environ.get("GROUNDTHINK_PRECOMPILE_SHARDS", "")
    if raw.strip().isdigit() and int(raw) >= 1:
        return min(int(raw), 64)
    return max(1, min(MAX_SHARDS, (_workers() - MAIN_CORES) // SHARD_CORES))


LAB_MIN_CORES = 12   # fewer cores: no lab group (CI's 2, an 8-core host): the lab items compile in the main's pool
LAB_MAX_SHARDS = 3   # processes of the lab group at most (beside mamba-ssm's ``shard_count`` and the main's 4 cores)


def lab_knob() -> bool:
    """The lab group: on by default since session 10 (the ≤ 60 s needs the lab compiles off the main's path:
    notes/gate.md); ``GROUNDTHINK_LAB_BACKGROUND=0`` switches it off (run 12 call 6's way: the lab items compile in
    the main process's pool)."""
    return os.environ.get("GROUNDTHINK_LAB_BACKGROUND", "1").strip() != "0"


def preload_knob() -> bool:
    """``GROUNDTHINK_PRELOAD=1``: the gate's imports on a thread beside data and model (``gate.preload``); off by
    default: two threads importing at once can meet a circular import in opposite orders (Python then raises in
    one of them, possibly the main's), for an overlap the GIL makes small (the main's data and model: ≈ 5 s)."""
    return os.environ.get("GROUNDTHINK_PRELOAD", "0").strip() == "1"


def lab_shard_count() -> int:
    """Processes of the lab group (module docstring), 0 when it is off (``GROUNDTHINK_LAB_BACKGROUND=0``;
    on by default), then ``(cores − MAIN_CORES) // 4`` at most ``LAB_MAX_SHARDS`` — 3 on
    the 16-core GPU host — and none below ``LAB_MIN_CORES`` cores (the lab items compile in the main process's
    pool, today's way); ``GROUNDTHINK_LAB_SHARDS=N`` (N ≥ 1) forces N while the knob is on."""
    if not lab_knob():
        return 0
    raw = os.environ.get("GROUNDTHINK_LAB_SHARDS", "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return min(int(raw), 64)
    cores = _workers()
    return 0 if cores < LAB_MIN_CORES else max(1, min(LAB_MAX_SHARDS, (cores - MAIN_CORES) // 4))


# Items whose first use is an Inductor compile (a ``torch.compile`` peer): Inductor compiles its own kernels (its
# FX graph and Triton kernels go to its on-disk caches: ``TORCHINDUCTOR_CACHE_DIR``, default /tmp/torchinductor_<user>,
# and ``TRITON_CACHE_DIR``; both inherited from the main process, which then loads the graph instead of compiling
# it), no ``JITFunction`` job that ``_Recording`` could split: shard 0 dry-runs such an item whole, the others say
# its line at once. Its group compiles it last (``gate._groups``), so that no later item's job order differs
# between the shards. Run 13: gate_norm_residual/compile measured in 13.3 s in the main process (25 Triton kernels
# compiled there), the gate's longest item after mamba-ssm's.
WHOLE_ITEMS = ("gate_norm_residual/compile",)


MATMUL_ENV = "GROUNDTHINK_FP32_MATMUL"   # the main's float32 matmul precision, for the subprocesses


def settings_env() -> dict:
    """The main process's settings that a background subprocess must share: torch's float32 matmul precision
    (train.py sets "high" on a GPU), part of the key of Inductor's FX graph cache — a subprocess left at "highest"
    would fill entries that the main never hits (``WHOLE_ITEMS``). {} before torch is imported."""
    torch = sys.modules.get("torch")
    return {MATMUL_ENV: torch.get_float32_matmul_precision()} if torch is not None else {}


def nice_knob(env=os.environ) -> int:
    """``GROUNDTHINK_BACKGROUND_NICE=N`` (1-19): the background subprocesses lower their priority by N as they
    start (``compile_item.main``); 0 (the default) or anything else: the main's priority. Off by default, untimed.
    Why: run 13's gate imports took 14.8 s (run 12 call 6: 8.5) while 9 subprocesses (6 mamba-ssm + 3 lab, ≈ 24
    compile threads and their ptxas) set up and compiled on 16 cores; the main — one Python thread, the critical
    path since nothing waits for the background any more (run 13: waiting 0.0 s) — got a share of a core. Run 10's
    nice 10 starved mamba-ssm only because the main then compiled the lab items on all cores itself."""
    raw = env.get("GROUNDTHINK_BACKGROUND_NICE", "").strip()
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= 19 else 0


def apply_settings(env=os.environ) -> None:
    """In a background subprocess: take the main's settings (``settings_env``) where given."""
    if nice_knob(env):
        os.nice(nice_knob(env))
    if env.get(MATMUL_ENV):
        import torch
        torch.set_float32_matmul_precision(env[MATMUL_ENV])


def _compile_item(op: str, impl: str, shape, say=print, shard: tuple[int, int] = (0, 1), payloads=None) -> dict:
    """``_compile_items`` of one item."""
    return _compile_items([(op, impl, shape)], say, shard, payloads)


def _compile_items(items: list, say=print, shard: tuple[int, int] = (0, 1), payloads=None) -> dict:
    """Dry-run each item in turn (``_dry_run``; its calls: ``payloads(op, shape)`` — ``compile_item.payloads``,
    which records a model's calls once —, or ``shape`` itself when None) under one ``compile_only`` (every compile
    concurrent; ``shard=(i, n)``: only job i, i + n, ... of them, ``_Recording``), and say each item's JSON line as
    soon as its own compiles are done (``Background.wait`` reads it; "jobs": the item's). One ``compile_only`` for
    all items — not one each — so that a kernel met again in a later item is no new job in any shard (Triton's
    ``AsyncCompileMode`` submits each compile once; a fresh mode would resubmit, in the shards that skipped it, what
    one shard compiled: their job orders would part). Returns the summary ("seconds": all items')."""
    import concurrent.futures

    import torch
    t0 = time.monotonic()
    pool = ThreadPoolExecutor(max(1, (_workers() - 2) // shard[1]), thread_name_prefix="precompile")
    recording = _Recording(pool, shard)
    try:
        with compile_only(executor=recording):
            for op, impl, shape in items:
                futures0, jobs0, failed = len(recording.futures), recording.jobs, ""
                began = submitted = None
                try:      # a model whose calls fail to record: the item fails
                    if shard[0] == 0 or f"{op}/{impl}" not in WHOLE_ITEMS:     # shard 0 dry-runs a whole item
                        calls = payloads(op, shape) if payloads is not None else shape   # may build the model
                        began = time.monotonic() - _LOADED
                        _dry_run(op, impl, calls)
                        submitted = time.monotonic() - _LOADED
                except Exception as e:  # noqa: BLE001 - what compiled so far still counts; the main compiles the rest
                    failed = f"{type(e).__name__}: {str(e)[:160]}"
                    STATS["errors"] += 1
                futures = recording.futures[futures0:]
                concurrent.futures.wait(futures)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                errors = sum(f.exception() is not None for f in futures)
                say(json.dumps({"item": f"{op}/{impl}", "shard": f"{shard[0]}/{shard[1]}", "kernels": len(futures),
                                "jobs": recording.jobs - jobs0, "errors": errors, "failed": failed,
                                "began": began and round(began, 1), "submitted": submitted and round(submitted, 1),
                                "at": round(time.monotonic() - _LOADED, 1)}))
    finally:
        pool.shutdown(wait=True)
    return dict(STATS, seconds=round(time.monotonic() - t0, 1))


class Background:
    """Subprocesses compiling items of the qualification while the main process times others (module
    docstring): ``Background([(op, impl, shape), ...])`` starts ``shards`` subprocesses (``shard_count``) that
    compile the items one after another in the order given, each its share of every item's compile jobs, and say
    each item's line as soon as its compiles are done (their imports, CUDA context and the model's step calls paid
    once for all items); ``done(name)`` asks without waiting whether an item's compiles are done (``state`` says
    how far its shards are, ``ahead`` which items they compile before it); ``wait(op, impl)`` before the item is
    measured returns (seconds waited, what the subprocesses say they did) as soon as every shard has said the
    item's line, waiting at most until ``timeout_s`` after the start (then what still runs is ended and the main
    process compiles what is missing; (0.0, "") if none runs for it). A shard that died costs only its share of the
    overlap: the item waits for the others, the main process compiles that share itself. ``close()`` ends what is
    left. Each subprocess writes into a log in its own temporary folder: its items' JSON lines, then a JSON
    summary; ``close()`` removes the log of a subprocess that succeeded or was ended, and keeps (its path said)
    that of one that failed."""

    def __init__(self, items, timeout_s: float = 90.0, shards: int | None = None):
        self.shards = shards or shard_count()
        self.timeout_s = timeout_s
        self.procs: dict[str, tuple[float, list[tuple[subprocess.Popen, Path]]]] = {}   # items not waited for yet
        self.started: list[tuple[subprocess.Popen, Path]] = []
        self.ended: set[int] = set()     # ids of the subprocesses ``wait`` ended at their time limit
        self.t0: dict[str, float] = {}   # each item's start (its subprocesses')
        self.groups: dict[str, list[str]] = {}   # each item: the items its subprocesses compile, in their order
        self.start(items)

    def start(self, items, shards: int | None = None) -> None:
        """Start the subprocesses of more items: a group of their own, ``shards`` processes (default
        ``self.shards``) for all of them, their time limit counted from now — the gate's own long items beside an
        early background's (``gate._background``), the lab group beside mamba-ssm's (``lab_shard_count``)."""
        items = list(items)
        if not items:
            return
        shards = shards or self.shards
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
                   **settings_env())
        arg, procs = json.dumps([list(item) for item in items], default=str), []
        for i in range(shards):
            log = Path(tempfile.mkdtemp()) / "precompile.log"    # tmpXXXXXXXX: scrub_paths.py knows it
            try:
                with open(log, "w") as out:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "groundthink.compile_item", arg, "--shard", f"{i}/{shards}"],
                        cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            except OSError:
                shutil.rmtree(log.parent, ignore_errors=True)
                continue
            procs.append((proc, log))
        if not procs:
            return
        self.started += procs
        names = [f"{op}/{impl}" for op, impl, _ in items]
        for name in names:
            self.t0[name] = time.monotonic()
            self.groups[name] = names
            self.procs[name] = (time.monotonic() + self.timeout_s, procs)

    def shards_for(self, name: str) -> int:
        """How many subprocesses compile the item (its group's; 1 for one not compiling here)."""
        return len(self.procs.get(name, (0.0, [None]))[1]) or 1

    def group(self, name: str) -> list[str]:
        """The items of the item's group, in their subprocesses' order."""
        return self.groups.get(name, [name])

    def wait_any(self, names) -> str:
        """The first of ``names`` whose compiles are done (``done``), waiting for one at most until the earliest of
        their time limits (then the item whose limit it is: its ``wait`` ends what still runs). What lets the gate
        measure each item as soon as it is ready, whichever group compiles it."""
        names = list(names)
        while True:
            for name in names:
                if self.done(name):
                    return name
            late = [name for name in names if self.procs[name][0] <= time.monotonic()]
            if late:
                return late[0]
            time.sleep(0.05)

    def since(self, name: str) -> float:
        """Seconds since the item's subprocesses started (early: before the gate)."""
        return time.monotonic() - self.t0[name]

    def names(self) -> list[str]:
        return list(self.procs)

    def ahead(self, name: str) -> list[str]:
        """The items the subprocesses of ``name`` compile up to it (itself last), in their order."""
        group = self.groups.get(name, [name])
        return group[: group.index(name) + 1]

    def order(self, name: str) -> tuple[float, int]:
        """When the item's compiles will be done relative to the others': its subprocesses' start, its place."""
        return self.t0[name], len(self.ahead(name))

    def _pending(self, name: str) -> list:
        """The item's shards still compiling it: no line for it yet, still alive."""
        return [(p, log) for p, log in self.procs.get(name, (0.0, []))[1]
                if _item_line(log, name) is None and p.poll() is None]

    def done(self, name: str) -> bool:
        """Whether the item's compiles are done (every shard has said its line or died), without waiting; True
        for an item not (or no longer) compiling here."""
        return not self._pending(name)

    def said(self, name: str) -> tuple[int, int]:
        """(how many of the item's subprocesses have said its line, how many it has)."""
        procs = self.procs.get(name, (0.0, []))[1]
        return sum(_item_line(log, name) is not None for _, log in procs), len(procs)

    def state(self, name: str) -> str:
        """One phrase on how far the item's subprocesses are, for the line that says the gate waits for it past its
        budget."""
        said, total = self.said(name)
        if not total:
            return "no background compile"
        dead = total - said - len(self._pending(name))
        ahead = self.ahead(name)[:-1]
        return (f"its background compile: {said} of {total} subprocesses done, {len(self._pending(name))} still "
                f"compiling" + (f", {dead} died" if dead else "") + f", {self.since(name):.0f} s after their start"
                + (f" (they compile {', '.join(ahead)} before it)" if ahead else ""))

    def wait(self, op: str, impl: str) -> tuple[float, str]:
        """Wait until every shard of the item has said its line or died, at most until the time limit, where what
        still runs is ended."""
        name = f"{op}/{impl}"
        deadline, procs = self.procs.get(name, (0.0, []))
        if not procs:
            return 0.0, ""
        t0 = time.monotonic()
        while self._pending(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        waited = time.monotonic() - t0
        ended = self._pending(name)          # past the time limit
        for proc, _ in ended:
            proc.kill()
            proc.wait()
            self.ended.add(id(proc))
        del self.procs[name]
        return waited, _shards_summary(name, procs, {id(p) for p, _ in ended})

    def close(self) -> None:
        """End what still runs and remove the logs; a failed subprocess keeps its log (its path was said), one that
        was ended here or by ``wait`` at its time limit does not."""
        for proc, log in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            elif proc.returncode != 0 and id(proc) not in self.ended:
                continue
            shutil.rmtree(log.parent, ignore_errors=True)
        self.procs.clear()
        self.started.clear()
        self.ended.clear()


def _shards_summary(name: str, procs: list, ended: set = frozenset()) -> str:
    """One line on an item's shards: their lines added up (``_item_summary``), then each shard without a line
    (``ended``: the ids of those ended at the time limit; or died: ``_summary``): the main process compiles their
    share itself."""
    lines = [_item_line(log, name) for _, log in procs]
    done = [d for d in lines if d is not None]
    parts = []
    if done:
        jobs = {d.get("jobs") for d in done}
        parts.append(_item_summary({"kernels": sum(d["kernels"] for d in done),
                                    "errors": sum(d["errors"] for d in done),
                                    "at": max(d["at"] for d in done),
                                    "began": max((d.get("began") or 0.0 for d in done), default=0.0),
                                    "submitted": max((d.get("submitted") or 0.0 for d in done), default=0.0),
                                    "failed": next((d["failed"] for d in done if d["failed"]), "")},
                                   by=f" by {len(done)} of {len(procs)} subprocesses" if len(procs) > 1 else "")
                     + (f"; the shards met different jobs: {sorted(jobs, key=str)}" if len(jobs) > 1 else ""))
    for i, ((proc, log), d) in enumerate(zip(procs, lines)):
        if d is None:
            parts.append((f"shard {i}/{len(procs)}: " if len(procs) > 1 else "")
                         + ("ended at its time limit; " if id(proc) in ended else "") + _summary(proc.returncode, log))
    return "; ".join(parts)


def _lines(log: Path) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []


def _item_line(log: Path, name: str) -> dict | None:
    """The JSON line the subprocess wrote when ``name``'s compiles were done, or None (not yet, or never)."""
    for ln in _lines(log):
        if ln.startswith('{"item": '):
            try:
                done = json.loads(ln)
            except ValueError:
                continue
            if done.get("item") == name:
                return done
    return None


def _item_summary(done: dict, by: str = "") -> str:
    """The item's line: its compiles, when they were done, and (where its subprocesses said so: "began",
    "submitted", the latest shard's) when its dry run began — the set-up and the items before it until then —
    and when it had submitted every compile: what of the wait was set-up, dry run or compiling."""
    when = (f" (its dry run began {done['began']:.1f} s after their start, every compile submitted by "
            f"{done['submitted']:.1f} s)" if done.get("submitted") else "")
    return (f"{done['kernels']} kernel compiles{by} done {done['at']:.1f} s after the subprocess started{when}, "
            f"{done['errors']} failed" + (f"; its dry run stopped early: {done['failed']}" if done["failed"] else ""))


def _summary(returncode: int, log: Path) -> str:
    """One line on a finished subprocess: what it compiled (its JSON last line) or why it failed (its last line)."""
    lines = _lines(log)
    if returncode == 0 and lines:
        try:
            done = json.loads(lines[-1])
            return (f"exit 0 after {done['seconds']:.1f} s: {done['configs']} configs of {done['keys']} autotuned "
                    f"kernels and {done.get('jit', 0)} other kernels compiled, {done['errors']} errors")
        except (ValueError, KeyError, TypeError):
            pass
    last = lines[-1][:200] if lines else "no output"
    return f"exit {returncode}: {last} (log {log})"
