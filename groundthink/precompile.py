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

Compile in the background (``Background``, ``python -m groundthink.precompile OP IMPL SHAPE``): the gate starts
a subprocess at the beginning of the qualification for an item expected to take long (mamba-ssm's first use),
so that its compilation — CPU work — overlaps the timing of the other items. The subprocess builds the op's
inputs at the model's shape and runs one forward + backward in which no Triton kernel is launched
(``compile_only``: every autotuned kernel compiles all its configs in parallel and benchmarks none, every other
Triton kernel compiles with ``warmup=True``); only PyTorch's own small ops between them reach the GPU. The
binaries land in Triton's disk cache, which the main process then reads when it measures the item (after
waiting for the subprocess). It runs at a lower CPU priority with two cores fewer than the machine has. Any
failure there costs nothing but the overlap: the main process compiles what is missing, as before.

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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    key = _tuning_key(tuner, args, kwargs)
    if key in tuner.cache:
        return
    meta = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
    tuner.nargs = dict(zip(tuner.arg_names, args))
    try:
        configs = tuner.prune_configs(meta)
    finally:
        tuner.nargs = None
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


# ------------------------------------------------------------------------------ compile in the background

@contextlib.contextmanager
def compile_only(workers: int | None = None):
    """Inside: no Triton kernel runs. An autotuned kernel meeting a new key compiles every config in parallel
    (``_precompile``), takes the first without benchmarking and compiles it for the call; any other Triton
    kernel compiles (``warmup=True``) instead of launching. For a subprocess whose only job is to fill Triton's
    disk cache; the outputs of the kernels stay unwritten."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    run_tuner, run_jit = Autotuner.run, JITFunction.run
    pool = ThreadPoolExecutor(workers or _workers(), thread_name_prefix="precompile")

    def tuner_run(self, *args, **kwargs):
        try:
            _precompile(self, args, kwargs, pool)
        except Exception:  # noqa: BLE001 - fail safe: the call below compiles what is missing
            STATS["errors"] += 1
        self.nargs = dict(zip(self.arg_names, args))
        config = self.prune_configs(kwargs)[0]
        self.nargs = None
        return self.fn.run(*args, **dict(kwargs, warmup=True), **config.all_kwargs())

    def jit_run(self, *args, grid, warmup=False, **kwargs):
        STATS["jit"] += 1
        return run_jit(self, *args, grid=grid, warmup=True, **kwargs)

    Autotuner.run, JITFunction.run = tuner_run, jit_run
    try:
        yield
    finally:
        Autotuner.run, JITFunction.run = run_tuner, run_jit
        pool.shutdown(wait=True)


def _compile_op(op: str, impl: str, shape: list) -> dict:
    """One forward + backward of ``op``/``impl`` at ``shape`` on the GPU under ``compile_only``; returns what it
    compiled: ``STATS`` (its "jit": the other kernels' warm-ups), "seconds" = the whole call's."""
    import torch
    t0 = time.monotonic()

    from groundthink.gate import fwd_bwd_step
    from groundthink.spec import get
    spec = get(op)
    fn = spec.impl(impl).load()
    inputs = spec.bench.make_inputs(*shape, True, dtype=spec.bench.dtype, device=torch.device("cuda"))
    with compile_only(max(1, _workers() - 2)):
        step, _ = fwd_bwd_step(fn, inputs)
        step()
    torch.cuda.synchronize()
    return dict(STATS, seconds=round(time.monotonic() - t0, 1))


class Background:
    """Subprocesses compiling items of the qualification while the main process times others (module
    docstring): ``Background([(op, impl, shape), ...])`` starts them, ``wait(op, impl)`` before the item is
    measured returns (seconds waited, what the subprocess says it did), waiting at most until ``timeout_s`` after
    the start (then it is ended and the main process compiles what is missing; (0.0, "") if none runs for it);
    ``close()`` ends what is left. Each subprocess writes into a log in its own temporary folder: its last line is
    a JSON summary of what it compiled; the log is removed after a success and kept (its path said) otherwise."""

    def __init__(self, items, timeout_s: float = 60.0):
        self.procs: dict[str, tuple[subprocess.Popen, float, Path]] = {}
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        for op, impl, shape in items:
            log = Path(tempfile.mkdtemp()) / "precompile.log"    # tmpXXXXXXXX: scrub_paths.py knows it
            try:
                with open(log, "w") as out:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "groundthink.precompile", op, impl, json.dumps(list(shape))],
                        cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            except OSError:
                shutil.rmtree(log.parent, ignore_errors=True)
                continue
            self.procs[f"{op}/{impl}"] = (proc, time.monotonic() + timeout_s, log)

    def names(self) -> list[str]:
        return list(self.procs)

    def wait(self, op: str, impl: str) -> tuple[float, str]:
        proc, deadline, log = self.procs.pop(f"{op}/{impl}", (None, 0.0, None))
        if proc is None:
            return 0.0, ""
        t0, ended = time.monotonic(), ""
        try:
            proc.wait(timeout=max(0.0, deadline - t0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            ended = "ended at its time limit; "
        return time.monotonic() - t0, ended + _summary(proc.returncode, log)

    def close(self) -> None:
        for proc, _, log in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(log.parent, ignore_errors=True)
        self.procs.clear()


def _summary(returncode: int, log: Path) -> str:
    """One line on a finished subprocess: what it compiled (its JSON last line) or why it failed (its last line)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    if returncode == 0 and lines:
        try:
            done = json.loads(lines[-1])
            shutil.rmtree(log.parent, ignore_errors=True)
            return (f"exit 0 after {done['seconds']:.1f} s: {done['configs']} configs of {done['keys']} autotuned "
                    f"kernels and {done.get('jit', 0)} other kernels compiled, {done['errors']} errors")
        except (ValueError, KeyError, TypeError):
            pass
    last = lines[-1][:200] if lines else "no output"
    return f"exit {returncode}: {last} (log {log})"


if __name__ == "__main__":      # python -m groundthink.precompile OP IMPL SHAPE-JSON (Background's subprocess)
    os.nice(10)                 # the main process's timing comes first
    import kernels  # noqa: F401 - the Triton interpreter switch, before any kernel is defined
    print(json.dumps(_compile_op(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))), flush=True)
