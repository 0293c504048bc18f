"""groundthink.precompile: an autotuner meeting a new key compiles all its configs in parallel first, then
benchmarks and chooses exactly as Triton does alone; anything going wrong falls back to Triton's path.

No GPU here: Triton's real ``Autotuner`` drives a fake JIT function whose "compile" sleeps (and goes through
Triton's ``AsyncCompileMode`` exactly as ``JITFunction._do_compile`` does) and whose benchmark time depends on the
config only."""
from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import triton
from triton.runtime._async_compile import active_mode
from triton.runtime.autotuner import Autotuner

from groundthink import precompile

COMPILE_S = 0.1
MS = {2: 3.0, 4: 1.0, 8: 2.0, 16: 5.0}     # fake benchmark time per num_warps: 4 warps wins


class FakeJIT:
    """Compiles (sleeps) once per config, in the calling thread or, under AsyncCompileMode, in its executor."""

    def __init__(self, fail_warps=()):
        self.fn = lambda x, N: None        # the Autotuner looks for the Python function under .fn
        self.arg_names = ["x", "N"]
        self.compiled, self.threads, self.fail_warps = {}, [], set(fail_warps)
        self.lock = threading.Lock()

    def _compile(self, warps):
        time.sleep(COMPILE_S)
        if warps in self.fail_warps:
            raise RuntimeError("out of resources")
        with self.lock:
            self.threads.append(threading.current_thread().name)
        return f"kernel{warps}"

    def run(self, *args, grid=None, warmup=False, num_warps=4, **kw):
        mode = active_mode.get()
        if num_warps not in self.compiled:
            if mode is not None:
                def finalize(kernel, w=num_warps):
                    self.compiled[w] = kernel
                extra = [lambda fk: None] if len(inspect.signature(mode.submit).parameters) == 4 else []
                return mode.submit(("k", id(self), num_warps), lambda: self._compile(num_warps), finalize, *extra)
            self.compiled[num_warps] = self._compile(num_warps)
        return self.compiled[num_warps]

    def warmup(self, *args, grid, **kwargs):
        return self.run(*args, grid=grid, warmup=True, **kwargs)


def _tuner(fn):
    configs = [triton.Config({}, num_warps=w) for w in MS]
    return Autotuner(fn, fn.arg_names, configs, ["N"], None, None, do_bench=_bench)


def _bench(call, quantiles):
    call()
    return [MS[_warps(call)]] * len(quantiles)


def _warps(call):
    """The config's num_warps from the autotuner's kernel_call closure (its `current` dict)."""
    for cell in call.__closure__:
        if isinstance(cell.cell_contents, dict) and "num_warps" in cell.cell_contents:
            return cell.cell_contents["num_warps"]
    raise AssertionError("no config in the kernel call")


@pytest.fixture
def on_gpu(monkeypatch):
    """Pretend not to run under the interpreter (the helper is a no-op there)."""
    monkeypatch.setattr(precompile, "_interpreting", lambda: False)
    monkeypatch.setattr(precompile, "STATS", {"keys": 0, "configs": 0, "seconds": 0.0, "errors": 0, "jit": 0})


def _call(tuner, n=64):
    return tuner.run("x", n, grid=(1,), warmup=False)


def test_all_configs_compile_in_parallel_and_the_same_config_wins(on_gpu):
    serial_fn, par_fn = FakeJIT(), FakeJIT()
    serial, par = _tuner(serial_fn), _tuner(par_fn)
    t0 = time.monotonic()
    _call(serial)
    t_serial = time.monotonic() - t0
    with precompile.parallel_autotune(workers=4) as stats:
        t0 = time.monotonic()
        _call(par)
        t_par = time.monotonic() - t0
    assert serial.best_config.num_warps == par.best_config.num_warps == 4
    assert serial.configs_timings.keys() == par.configs_timings.keys()
    assert t_serial >= len(MS) * COMPILE_S and t_par < t_serial / 2, (t_serial, t_par)
    assert all(t.startswith("precompile") for t in par_fn.threads) and len(par_fn.threads) == len(MS)
    assert stats["keys"] == 1 and stats["configs"] == len(MS) and stats["errors"] == 0
    with precompile.parallel_autotune(workers=4):
        _call(par)                       # a key already tuned: nothing compiled again
    assert len(par_fn.threads) == len(MS) and precompile.STATS["keys"] == 1


def test_a_config_that_fails_to_compile_falls_back_to_tritons_path(on_gpu):
    """A config that does not compile in the pool is compiled again by Triton's own benchmark loop (which
    raises or reports it as always); the helper itself never raises and leaves no compile mode active."""
    fn = FakeJIT(fail_warps={16})
    with precompile.parallel_autotune(workers=4):
        with pytest.raises(RuntimeError, match="out of resources"):
            _call(_tuner(fn))
    assert active_mode.get() is None
    assert set(fn.compiled) == {2, 4, 8}


def test_any_error_in_the_helper_falls_back_and_is_counted(on_gpu, monkeypatch):
    def broken(*a, **k):
        raise AttributeError("Triton's API drifted")

    monkeypatch.setattr(precompile, "_tuning_key", broken)
    fn = FakeJIT()
    with precompile.parallel_autotune(workers=4) as stats:
        tuner = _tuner(fn)
        _call(tuner)
    assert tuner.best_config.num_warps == 4 and stats["errors"] == 1
    assert not any(t.startswith("precompile") for t in fn.threads)


def test_default_benchmarks_are_shorter_inside_the_helper_and_restored_after(on_gpu, monkeypatch):
    """A tuner on Triton's default benchmarker benchmarks each config with ``BENCH_MS`` inside the helper (the
    same winner here), gets the default back on exit; a tuner with its own benchmarker keeps it."""
    seen = []

    def default_bench(call, quantiles, warmup=25, rep=100):
        seen.append((warmup, rep))
        return _bench(call, quantiles)

    monkeypatch.setattr(precompile, "_benchmarker", lambda: default_bench)
    fn = FakeJIT()
    tuner = Autotuner(fn, fn.arg_names, [triton.Config({}, num_warps=w) for w in MS], ["N"], None, None)
    own = _tuner(FakeJIT())
    with precompile.parallel_autotune(workers=4):
        _call(tuner)
        _call(own)
    assert tuner.best_config.num_warps == own.best_config.num_warps == 4
    assert seen == [precompile.BENCH_MS] * len(MS) and "do_bench" not in vars(tuner)
    assert own.do_bench is _bench


def test_the_patch_is_removed_and_is_a_no_op_under_the_interpreter():
    original = Autotuner.run
    with precompile.parallel_autotune():
        assert Autotuner.run is original           # this CPU machine runs the interpreter
    with precompile.parallel_autotune(enabled=False):
        assert Autotuner.run is original
    assert Autotuner.run is original


def test_compile_only_compiles_every_config_and_launches_none(on_gpu):
    """The background subprocess's mode: every config of a new key compiled in parallel, no benchmark, no
    launch (the first config is compiled for the call with warmup=True)."""
    benched, launched = [], []

    def bench(call, quantiles):
        benched.append(call)
        return [1.0] * len(quantiles)

    fn = FakeJIT()
    real_run = fn.run

    def run(*args, warmup=False, **kw):
        if not warmup:
            launched.append(kw.get("num_warps"))
        return real_run(*args, warmup=warmup, **kw)

    fn.run = run
    tuner = Autotuner(fn, fn.arg_names, [triton.Config({}, num_warps=w) for w in MS], ["N"], None, None,
                      do_bench=bench)
    with precompile.compile_only(workers=4):
        _call(tuner)
    assert set(fn.compiled) == set(MS) and not benched and not launched
    assert sum(t.startswith("precompile") for t in fn.threads) == len(MS)
    assert Autotuner.run is not None and "compile_only" not in repr(Autotuner.run)


def test_a_backward_inside_compile_only_compiles_through_its_mode_on_the_calling_thread(on_gpu):
    """On a GPU autograd runs a backward on its device thread, where Triton's AsyncCompileMode (a ContextVar of
    the calling thread) is unset: the background's backward kernels compiled one after another, in every shard,
    outside the split (run 12: mamba-ssm's item ≈ 55 s whatever the shard count). Inside compile_only the backward
    stays on the calling thread (multithreaded backward off, restored after): its compiles are pool jobs."""
    import torch
    fn, seen = FakeJIT(), []
    tuner = _tuner(fn)

    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            seen.append((torch._C._is_multithreading_enabled(), active_mode.get() is None))
            _call(tuner)
            return g * 2

    with precompile.compile_only(workers=4):
        Op.apply(torch.ones(3, requires_grad=True)).sum().backward()
    assert seen == [(False, False)] and set(fn.compiled) == set(MS)
    assert sum(t.startswith("precompile") for t in fn.threads) == len(MS)
    assert torch._C._is_multithreading_enabled() and active_mode.get() is None
    # restored also when the dry run raises inside compile_only
    with pytest.raises(RuntimeError, match="dry run failed"):
        with precompile.compile_only(workers=4):
            assert not torch._C._is_multithreading_enabled()
            raise RuntimeError("dry run failed")
    assert torch._C._is_multithreading_enabled() and active_mode.get() is None


def test_background_says_why_its_subprocess_failed_and_what_a_success_compiled(tmp_path):
    """A background item whose dry run failed says why in its line; a subprocess that died says its exit code and
    last line (its log kept, path said); a success reports its JSON summary (its log removed). On this CPU machine
    the dry run fails: no CUDA device. One subprocess compiles both items, one after the other, a line each."""
    bg = precompile.Background([("ddlerp", "triton", [{"shape": [4, 8]}]),
                                ("decay_exp", "triton", [{"shape": [4, 8]}])], timeout_s=120, shards=1)
    assert len(bg.started) == 1 and bg.ahead("decay_exp/triton") == ["ddlerp/triton", "decay_exp/triton"]
    for op in ("ddlerp", "decay_exp"):
        waited, what = bg.wait(op, "triton")
        assert waited >= 0 and what.startswith("0 kernel compiles done ") and "its dry run stopped early: " in what
    assert bg.done("decay_exp/triton") and bg.wait("decay_exp", "triton") == (0.0, "")
    bg.close()
    log = tmp_path / "dead" / "precompile.log"
    log.parent.mkdir()
    log.write_text("Traceback (most recent call last):\nImportError: no module named torch\n")
    assert precompile._summary(1, log) == f"exit 1: ImportError: no module named torch (log {log})"
    ok = tmp_path / "one" / "precompile.log"
    ok.parent.mkdir()
    ok.write_text('warming up\n{"keys": 2, "configs": 6, "seconds": 3.31, "errors": 0, "jit": 4}\n')
    assert precompile._summary(0, ok) == ("exit 0 after 3.3 s: 6 configs of 2 autotuned kernels and 4 other kernels "
                                          "compiled, 0 errors")


def test_compile_only_sets_best_config_and_compiles_a_met_key_once(on_gpu, monkeypatch):
    """Host code that reads ``kernel.best_config`` right after a launch (mamba-ssm's backward sizes its
    reductions by it) runs through a dry run: run 7's background compile died there, at its first backward
    kernel, and the main process compiled mamba-ssm's 116 configs again. A key met again (the error shape of a
    kernel whose key ignores the batch) compiles nothing more; a plain kernel compiles instead of launching."""
    from triton.runtime.jit import JITFunction
    warmups = []
    monkeypatch.setattr(JITFunction, "run", lambda self, *a, grid, warmup=False, **kw: warmups.append(warmup))
    plain = object.__new__(JITFunction)
    fn = FakeJIT()
    tuner = _tuner(fn)

    def wrapper(n):                 # the shape of mamba-ssm's _state_passing_bwd
        _call(tuner, n)
        plain.run("x", n, grid=(1,), warmup=False, num_warps=tuner.best_config.num_warps)

    with precompile.compile_only(workers=4):
        wrapper(64)
        wrapper(64)
    assert set(fn.compiled) == set(MS) and precompile.STATS["configs"] == len(MS)
    assert warmups == [True, True] and precompile.STATS["jit"] == 2
    assert "compile_only" not in repr(Autotuner.run) and active_mode.get() is None


def test_compile_item_says_when_its_compiles_are_done(on_gpu, monkeypatch):
    """The background subprocess dry-runs its item under one compile_only (all compiles concurrent), then says one
    line; an item whose dry run fails says why, and what it compiled still counts."""
    fns = {"a/x": FakeJIT(), "b/y": FakeJIT()}

    def dry_run(op, impl, shape):
        _call(_tuner(fns[f"{op}/{impl}"]), shape[0])
        if op == "b":
            raise ValueError("bad shape")

    monkeypatch.setattr(precompile, "_dry_run", dry_run)
    monkeypatch.setattr(precompile, "_workers", lambda: 14)         # as on the H100 host: 12 compile threads
    lines = []
    precompile._compile_item("a", "x", [64], say=lines.append)
    summary = precompile._compile_item("b", "y", [32], say=lines.append)
    done = [json.loads(ln) for ln in lines]
    assert [d["item"] for d in done] == ["a/x", "b/y"] and [d["kernels"] for d in done] == [len(MS)] * 2
    assert done[0]["failed"] == "" and done[1]["failed"] == "ValueError: bad shape"
    assert 0 <= done[0]["began"] <= done[0]["submitted"] <= done[0]["at"] and done[1]["submitted"] is None
    assert precompile._item_summary(dict(done[0], kernels=42, at=55.1, began=9.8, submitted=21.0)) == (
        "42 kernel compiles done 55.1 s after the subprocess started (its dry run began 9.8 s after their start, "
        "every compile submitted by 21.0 s), 0 failed")
    assert summary["configs"] == 2 * len(MS) and summary["errors"] == 1
    assert set(fns["a/x"].compiled) == set(fns["b/y"].compiled) == set(MS)


def test_a_model_item_dry_runs_the_calls_its_model_makes(monkeypatch):
    """``gate.early_background``'s item: {"model": the run's model arguments}; the subprocess
    (``groundthink.compile_item``) records that model's step calls (``model_calls``: step_calls of the model it
    builds) and dry-runs the op's calls among them (``payloads``)."""
    from groundthink import calls as C
    from groundthink import compile_item
    from groundthink import registry
    from groundthink.spec import get

    import fused
    model = {"name": "rwkv6", "size": "tiny", "batch_size": 4, "seq_len": 32}
    got = compile_item.model_calls(model, device="cpu")
    net = fused.get_model("rwkv6", size="tiny", vocab_size=256, ops=registry.resolve("reference"))   # its vocab
    assert {op: [(c.shape, c.variant) for c in cs] for op, cs in got.items()} == {
        op: [(c.shape, c.variant) for c in cs] for op, cs in C.step_calls(net, 4, 32).items()}
    call = C.Call("decay_exp", get("decay_exp").bench.cpu_shapes[0])
    monkeypatch.setattr(compile_item, "model_calls", lambda m, device: {"decay_exp": [call]} if m == model else {})
    assert compile_item.payloads("decay_exp", {"model": model}, device="cpu") == [call.payload()]
    assert compile_item.payloads("decay_exp", [call.payload()]) == [call.payload()]


def test_background_wait_returns_when_its_item_is_done_not_when_the_subprocess_ends(tmp_path):
    """The main process measures an item as soon as the subprocess says its compiles are done; close() ends a
    subprocess that still runs."""
    bg = precompile.Background([])
    log = Path(tempfile.mkdtemp()) / "precompile.log"
    line = json.dumps({"item": "a/x", "kernels": 3, "errors": 0, "failed": "", "at": 1.25})
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", f"import time; print({line!r}, flush=True); time.sleep(60)"],
                                stdout=out)
    bg.procs = {"a/x": (time.monotonic() + 30, [(proc, log)]), "b/y": (time.monotonic() + 30, [(proc, log)])}
    waited, what = bg.wait("a", "x")
    assert waited < 20 and what == "3 kernel compiles done 1.2 s after the subprocess started, 0 failed"
    assert proc.poll() is None and bg.names() == ["b/y"]
    bg.started = [(proc, log)]
    bg.close()
    assert proc.poll() is not None and not log.exists() and bg.names() == []


def test_shards_split_the_compile_jobs_exactly_once_and_each_sets_best_config(on_gpu, monkeypatch):
    """``--shard i/n``: every shard dry-runs the whole item (each autotuner's ``best_config`` set: host code reads
    it) but compiles only jobs i, i + n, ... in the order the dry run meets them; together the n shards compile
    every job exactly once, and a skipped job is no error."""
    n, got = 3, []
    monkeypatch.setattr(precompile, "_workers", lambda: 14)         # 4 compile threads a shard
    for i in range(n):                      # one "process" per shard: fresh kernels
        fns = [FakeJIT(), FakeJIT()]
        tuners = [_tuner(fn) for fn in fns]

        def dry_run(op, impl, shape, tuners=tuners):
            for t in tuners + tuners[:1]:        # the first met again: no job
                _call(t, shape[0])

        monkeypatch.setattr(precompile, "_dry_run", dry_run)
        lines = []
        precompile._compile_item("a", "x", [64], say=lines.append, shard=(i, n))
        got.append((json.loads(lines[0]), {(k, w) for k, fn in enumerate(fns) for w in fn.compiled}))
        assert all(t.best_config is not None for t in tuners)
    done, compiled = zip(*got)
    assert [d["shard"] for d in done] == ["0/3", "1/3", "2/3"] and {d["jobs"] for d in done} == {2 * len(MS)}
    assert [d["kernels"] for d in done] == [len(c) for c in compiled] == [3, 3, 2]
    assert set().union(*compiled) == {(k, w) for k in range(2) for w in MS} and sum(map(len, compiled)) == 8
    assert all(d["errors"] == 0 and d["failed"] == "" for d in done)


def test_a_subprocess_compiles_its_items_in_turn_and_the_shards_split_each_exactly_once(on_gpu, monkeypatch):
    """A background subprocess compiles several items one after another (its imports and the model's calls paid
    once: ``recorded``), saying each item's line as soon as that item is done; the job indices run on across the
    items, so the n shards together still compile every job of every item exactly once, and an item of few jobs
    does not always fall to the first shards."""
    n, got, models = 3, [], []
    monkeypatch.setattr(precompile, "_workers", lambda: 14)
    from groundthink import compile_item
    monkeypatch.setattr(compile_item, "model_calls", lambda model, device: models.append(model) or {})
    for i in range(n):                      # one "process" per shard: fresh kernels
        fns = {"a/x": FakeJIT(), "b/y": FakeJIT()}
        tuners = {k: _tuner(fn) for k, fn in fns.items()}

        def dry_run(op, impl, shape, tuners=tuners):
            if f"{op}/{impl}" in tuners:            # c/z: an op the model does not call
                _call(tuners[f"{op}/{impl}"], 64)
            _call(tuners["a/x"], 64)                # met again in a later item: no new job in any shard

        monkeypatch.setattr(precompile, "_dry_run", dry_run)
        lines = []
        recorded: dict = {}                 # as compile_item.main passes it: the model's calls recorded once
        summary = precompile._compile_items([("a", "x", [64]), ("b", "y", {"model": {"name": "m"}}),
                                             ("c", "z", {"model": {"name": "m"}})], say=lines.append, shard=(i, n),
                                            payloads=lambda op, shape: compile_item.payloads(op, shape,
                                                                                             recorded=recorded))
        got.append(([json.loads(ln) for ln in lines], {(k, w) for k, fn in fns.items() for w in fn.compiled}))
        assert summary["seconds"] >= 0 and "jobs_met" not in summary
    assert models == [{"name": "m"}] * n          # each shard records its model once for its two model items
    for lines, _ in got:
        assert [d["item"] for d in lines] == ["a/x", "b/y", "c/z"] and [d["jobs"] for d in lines] == [4, 4, 0]
        assert not any(d["failed"] for d in lines)
    compiled = [c for _, c in got]
    assert sorted(map(len, compiled)) == [2, 3, 3]          # jobs 0-3 of a/x, 4-7 of b/y over 3 shards
    assert set().union(*compiled) == {(k, w) for k in ("a/x", "b/y") for w in MS} and sum(map(len, compiled)) == 8


def test_a_whole_item_is_dry_run_by_shard_0_only_and_every_shard_says_its_line(monkeypatch):
    """An Inductor compile (``WHOLE_ITEMS``) has no Triton jobs to split: shard 0 dry-runs it, the others say its
    line at once (the item is done when every shard has said it), and other items run in every shard."""
    monkeypatch.setattr(precompile, "_workers", lambda: 4)
    name = precompile.WHOLE_ITEMS[0]
    op, impl = name.split("/")
    for i in range(2):
        ran, lines = [], []
        monkeypatch.setattr(precompile, "_dry_run", lambda op, impl, shape: ran.append(f"{op}/{impl}"))
        precompile._compile_items([("a", "x", [64]), (op, impl, [64])], say=lines.append, shard=(i, 2))
        assert ran == (["a/x", name] if i == 0 else ["a/x"])
        assert [json.loads(ln)["item"] for ln in lines] == ["a/x", name]


def test_the_subprocesses_take_the_mains_matmul_precision_part_of_inductors_cache_key(monkeypatch):
    """train.py sets "high" on a GPU; a subprocess left at "highest" would fill FX graph cache entries the main
    never hits."""
    import torch
    was = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        env = precompile.settings_env()
        torch.set_float32_matmul_precision("highest")
        precompile.apply_settings(env)
        assert torch.get_float32_matmul_precision() == "high"
        precompile.apply_settings({})          # nothing given: left alone
        assert torch.get_float32_matmul_precision() == "high"
        niced = []
        monkeypatch.setattr(precompile.os, "nice", niced.append)
        for raw in ("5", "0", "x", "25", ""):
            precompile.apply_settings({"GROUNDTHINK_BACKGROUND_NICE": raw})
        assert niced == [5]                    # GROUNDTHINK_BACKGROUND_NICE: 1-19 only, off by default
    finally:
        torch.set_float32_matmul_precision(was)


def test_background_says_without_waiting_whether_an_item_is_done_and_how_far_its_shards_are(tmp_path):
    """``done`` asks the shards' logs without waiting (the gate then expects only the item's measuring); ``state``
    is the phrase the gate's over-budget line says; ``ahead`` the items the shards compile up to it; a shard that
    died counts as done (the main process compiles its share)."""
    line = json.dumps({"item": "a/x", "shard": "", "kernels": 1, "jobs": 2, "errors": 0, "failed": "", "at": 0.1})
    logs = [tmp_path / f"s{i}" / "precompile.log" for i in range(3)]
    for log in logs:
        log.parent.mkdir()
    procs = [_shard(logs[0], f"import time; print({line!r}, flush=True); time.sleep(60)"),
             _shard(logs[1], "import time; time.sleep(60)"),
             _shard(logs[2], "import sys; sys.exit(1)")]
    bg = precompile.Background([])
    bg.started = list(zip(procs, logs))
    deadline = time.monotonic() + 20
    while (not logs[0].read_text() or procs[2].poll() is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name in ("a/x", "b/y"):     # their start 5 s ago, set after the wait (a loaded CI: "5 s" stays 5 s)
        bg.procs[name] = (time.monotonic() + 30, list(zip(procs, logs)))
        bg.t0[name], bg.groups[name] = time.monotonic() - 5, ["a/x", "b/y"]
    try:
        assert not bg.done("a/x") and bg.done("c/z") and bg.ahead("b/y") == ["a/x", "b/y"]
        assert bg.order("a/x") < bg.order("b/y")
        assert bg.state("b/y") == ("its background compile: 0 of 3 subprocesses done, 2 still compiling, 1 died, 5 s "
                                   "after their start (they compile a/x before it)")
        assert bg.state("a/x").startswith("its background compile: 1 of 3 subprocesses done, 1 still compiling, 1 died")
        procs[1].kill()
        procs[1].wait()
        assert bg.done("a/x") and not bg.done("b/y")       # shard 0 is still on b/y
    finally:                 # a failed assert must not leave the sleeping stand-ins behind
        bg.close()


def test_two_groups_of_processes_and_the_first_item_ready_whichever_group(monkeypatch):
    """The lab group (``start(items, shards=)``) runs processes of its own beside the long items' group; an item's
    shards are its group's; ``wait_any`` returns the first item done in either group, without waiting for the
    other (stand-in subprocesses: nothing is compiled)."""
    argv = []

    class Proc:
        returncode = None

        def __init__(self, args, **kw):
            argv.append(args[-3:])

        def poll(self):
            return self.returncode

        def kill(self):
            self.returncode = -9

        def wait(self):
            return self.returncode

    monkeypatch.setattr(precompile.subprocess, "Popen", Proc)
    bg = precompile.Background([("mamba2", "mamba_ssm", [])], shards=2)
    bg.start([("shift_lerp", "triton", []), ("ddlerp", "triton", [])], shards=3)
    assert [a[-1] for a in argv] == ["0/2", "1/2", "0/3", "1/3", "2/3"]
    assert json.loads(argv[2][0]) == [["shift_lerp", "triton", []], ["ddlerp", "triton", []]]
    assert [bg.shards_for(n) for n in bg.names()] == [2, 3, 3] and bg.group("ddlerp/triton") == [
        "shift_lerp/triton", "ddlerp/triton"] and bg.ahead("ddlerp/triton") == bg.group("ddlerp/triton")
    line = {"item": "shift_lerp/triton", "shard": "", "kernels": 1, "jobs": 3, "errors": 0, "failed": "", "at": 1.0}
    for _, log in bg.procs["shift_lerp/triton"][1]:
        log.write_text(json.dumps(line) + "\n")
    t0 = time.monotonic()
    assert bg.wait_any(["mamba2/mamba_ssm", "ddlerp/triton", "shift_lerp/triton"]) == "shift_lerp/triton"
    assert time.monotonic() - t0 < 1 and not bg.done("mamba2/mamba_ssm")
    bg.procs["mamba2/mamba_ssm"] = (time.monotonic() - 1, bg.procs["mamba2/mamba_ssm"][1])   # past its time limit
    assert bg.wait_any(["ddlerp/triton", "mamba2/mamba_ssm"]) == "mamba2/mamba_ssm"
    procs = [proc for proc, _ in bg.started]
    bg.close()
    assert len(procs) == 5 and all(proc.returncode == -9 for proc in procs)     # every group's ended


def test_shard_count_leaves_the_main_process_cores_and_has_an_opt_out(monkeypatch):
    monkeypatch.delenv("GROUNDTHINK_PRECOMPILE_SHARDS", raising=False)
    for cores, shards in [(2, 1), (4, 1), (8, 2), (16, 6), (64, 6)]:
        monkeypatch.setattr(precompile, "_workers", lambda c=cores: c)
        assert precompile.shard_count() == shards
    for raw, shards in [("1", 1), ("3", 3), ("0", 6), ("many", 6)]:
        monkeypatch.setenv("GROUNDTHINK_PRECOMPILE_SHARDS", raw)
        assert precompile.shard_count() == shards


def _shard(log: Path, script: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)


def test_background_waits_for_every_shard_and_a_dead_shard_costs_only_its_share(tmp_path):
    """An item's wait returns when every live shard has said its line (their counts added up); a shard that died
    is said (exit code, last line, log) and not waited for; one still silent at the time limit is ended."""
    def line(kernels, at):
        return json.dumps({"item": "a/x", "shard": "", "kernels": kernels, "jobs": 9, "errors": 0, "failed": "",
                           "at": at})
    logs = [tmp_path / f"s{i}" / "precompile.log" for i in range(4)]      # a folder each, as Background's
    for log in logs:
        log.parent.mkdir()
    procs = [_shard(logs[0], f"import time; print({line(3, 0.5)!r}, flush=True); time.sleep(60)"),
             _shard(logs[1], f"import time; time.sleep(0.4); print({line(4, 2.5)!r}, flush=True); time.sleep(60)"),
             _shard(logs[2], "import sys; print('ImportError: no module named torch'); sys.exit(1)")]
    bg = precompile.Background([])
    bg.procs = {"a/x": (time.monotonic() + 30, list(zip(procs, logs)))}
    bg.started = list(zip(procs, logs))
    waited, what = bg.wait("a", "x")
    assert 0.2 <= waited < 20 and what == (
        "7 kernel compiles by 2 of 3 subprocesses done 2.5 s after the subprocess started, 0 failed; "
        f"shard 2/3: exit 1: ImportError: no module named torch (log {logs[2]})")
    silent = _shard(logs[3], "import time; time.sleep(60)")
    bg.procs = {"a/x": (time.monotonic() + 0.3, [(procs[0], logs[0]), (silent, logs[3])])}
    waited, what = bg.wait("a", "x")
    assert what.startswith("3 kernel compiles by 1 of 2 subprocesses done 0.5 s after the subprocess started, 0 ")
    assert "; shard 1/2: ended at its time limit; exit -9: no output" in what and silent.poll() is not None
    logs[3].write_text(line(2, 0.7).replace('"jobs": 9', '"jobs": 8') + "\n")     # a dry run not deterministic
    assert precompile._shards_summary("a/x", list(zip(procs[:1] + [silent], logs[:1] + logs[3:]))).endswith(
        "; the shards met different jobs: [8, 9]")
    bg.close()
    assert all(p.poll() is not None for p in procs) and logs[2].exists() and not logs[0].exists()


def test_counting_compiles_tells_compiled_from_cached_and_keeps_a_listener():
    from triton import knobs
    heard = []
    knobs.compilation.listener = lambda **kw: heard.append(kw["cache_hit"])
    try:
        before = dict(precompile.COMPILES)
        with precompile.counting_compiles(), precompile.counting_compiles():      # nested: counted once
            for hit in (True, False, True):
                knobs.compilation.listener(src=None, metadata={}, metadata_group={}, times=None, cache_hit=hit)
            assert precompile.compiles_since(before) == "; Triton kernels: 1 compiled here, 2 from the disk cache"
        assert precompile.COMPILES["cached"] - before["cached"] == 2
        assert precompile.COMPILES["compiled"] - before["compiled"] == 1 and heard == [True, False, True]
        assert knobs.compilation.listener is not None and not getattr(knobs.compilation.listener, "_counting", 0)
    finally:
        knobs.compilation.listener = None


def test_compile_winners_compiles_only_the_chosen_config_and_stops_at_an_untuned_key(on_gpu):
    """The main process's dry run before the error check (a new specialisation of kernels already tuned at the
    model's shape): each autotuner compiles only its choice and reports it as best_config, as a real call does;
    at a key it has not tuned the dry run stops (the real call benchmarks) without error."""
    fn = FakeJIT()
    tuner = _tuner(fn)
    _call(tuner, 64)                                  # Triton's own path: tuned, 4 warps won
    fn.compiled.clear()
    tuner.best_config = None
    precompile.compile_winners(lambda: _call(tuner, 64))
    assert list(fn.compiled) == [4] and tuner.best_config.num_warps == 4
    fn.compiled.clear()
    precompile.compile_winners(lambda: (_call(tuner, 64), _call(tuner, 32)))
    assert list(fn.compiled) == [4] and precompile.STATS["errors"] == 0 and active_mode.get() is None
