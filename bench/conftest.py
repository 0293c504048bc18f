"""pytest set-up of the benchmarks: the ``--benchmark`` flag, run order, the session-end writers.

* ``--benchmark`` (added here; pytest-benchmark has no such flag): without it every test under bench/ is skipped,
  so ``pytest bench/`` is fast. ``--benchmark-json`` / ``--benchmark-compare`` (pytest-benchmark) keep working:
  each row's figures are in ``extra_info``.
* Order (``_run_order``): tests carry ``@pytest.mark.bench_priority(n)``: the references and first lab
  candidates of every op first, then the peers, then the other lab candidates (ops in the specs' order, wkv6
  first, within each), then the training rows, so a spent time budget (``GT_BENCH_BUDGET_S``) cuts the least
  important rows.
* At session end (before pytest-benchmark writes its JSON): speedups are filled in, the flat CSV
  ``<out>/bench.csv`` and ``<out>/bench_rows.json`` are written, and on a GPU the gate manifest
  ``profiles/<gpu-slug>/gates.json`` (``groundthink.gate``: evidence from the rows, the rule, the file) — one
  run, one manifest, with one verdict per step mode: "graph" (CUDA-graph times, graph-safe competitors only:
  what train.py's captured step reads) and "eager" (``--graph off``). On a CPU machine no
  manifest is written: interpreter timings are not evidence, and the registry never reads a manifest without CUDA.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import kernels  # noqa: F401  (sets TRITON_INTERPRET=1 when CUDA is absent, before any kernel is defined)

_HERE = Path(__file__).resolve().parent


def pytest_addoption(parser):
    group = parser.getgroup("groundthink")
    group.addoption("--benchmark", action="store_true", default=False,
                    help="run the groundthink benchmarks under bench/ (skipped otherwise); writes "
                         "profiles/<gpu>/bench.csv and, on a GPU, the gate manifest gates.json")


def pytest_collect_file(file_path, parent):
    """Collect bench/bench_*.py (pytest's default pattern is test_*.py)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and \
            file_path.resolve().parent == _HERE and not parent.session.isinitpath(file_path):
        # (a file named on the command line is collected by pytest's python plugin already)
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_sessionstart(session):
    """Say up front (also under -q) what a budgeted run skips and how to raise the budget."""
    config = session.config
    if not config.getoption("--benchmark", default=False):
        return
    from bench import common
    b = common.budget_s()
    grid = "quick grid (GT_BENCH_QUICK=0: every shape, peer and variant)" if common.quick() else "full grid"
    lim = (f"soft budget {b:g} s: rows not started by then are skipped and say so (GT_BENCH_BUDGET_S=0: none)"
           if b > 0 else "no time budget")
    line = (f"groundthink bench: {grid}; {lim}; fla's first call autotunes for ~3 min on a cold machine "
            f"(its rows' warmup_s)")
    tr = config.pluginmanager.get_plugin("terminalreporter")
    tr.write_line(line) if tr else print(line)


def pytest_configure(config):
    config.addinivalue_line("markers", "bench_priority(n): run order of a benchmark (lower first)")


def _in_bench(item) -> bool:
    try:
        return Path(str(item.fspath)).resolve().is_relative_to(_HERE)
    except (OSError, ValueError):
        return False


def _priority(item) -> int:
    m = item.get_closest_marker("bench_priority")
    return m.args[0] if m and m.args else 5


def _op_rank(item) -> int:
    from groundthink.spec import specs
    ops = list(specs())
    op = item.module.__name__.rsplit(".", 1)[-1].removeprefix("bench_") if item is not None else ""
    return ops.index(op) if op in ops else len(ops)


def _run_order(item) -> tuple[int, int]:
    """(rank, op): every op's reference and first lab candidate first (priority 1: a complete manifest); then the
    peers (priority 3: a lab row is worth little without its peer beside it); then the other lab candidates
    (priority 2); ops in the specs' order within each (wkv6 first); training rows last, by their priorities."""
    p, rank = _priority(item), _op_rank(item)
    if rank == _op_rank(None):                  # training (or anything that is not an op's benchmark)
        return 10 + p, rank
    return {1: 1, 3: 2}.get(p, 3), rank


def pytest_collection_modifyitems(config, items):
    bench_items = [it for it in items if _in_bench(it)]
    if not bench_items:
        return
    if not config.getoption("--benchmark"):
        skip = pytest.mark.skip(reason="benchmark: run with pytest bench/ --benchmark")
        for it in bench_items:
            it.add_marker(skip)
        return
    # stable sort of the bench items by priority, then by the specs' op order (wkv6 first: its peer rows must not
    # be the ones a spent budget cuts), training last; other items keep their places
    order = sorted(bench_items, key=_run_order)
    it_order = iter(order)
    items[:] = [next(it_order) if _in_bench(it) else it for it in items]


@pytest.fixture(scope="session", autouse=True)
def _parallel_compile(request):
    """Under ``--benchmark``: every autotuned kernel met for the first time (the lab's and the peers' alike:
    fla's minutes of first-use tuning) compiles its configs in parallel before Triton benchmarks them
    (``groundthink.precompile``); which config wins is Triton's choice as always. Each row's ``warmup_s`` is
    then the first-call cost with parallel compilation. ``GROUNDTHINK_PARALLEL_COMPILE=0``: one at a time."""
    if not request.config.getoption("--benchmark"):
        yield
        return
    from groundthink.precompile import parallel_autotune
    with parallel_autotune():
        yield


@pytest.fixture(scope="session")
def copy_gbps(request):
    """Device-to-device copy bandwidth of this GPU, measured once per run (None on CPU)."""
    from bench import common
    if common.SESSION.get("copy_gbps") is None:
        common.SESSION["copy_gbps"] = common.copy_bandwidth_gbps()
    return common.SESSION["copy_gbps"]


class _LazyBenchmark:
    """pytest-benchmark's ``benchmark`` fixture, fetched only when a row is recorded (a skipped row then never
    instantiates it, so pytest-benchmark does not warn "fixture was not used"). Without the plugin the figures
    still go to the CSV: ``extra_info`` is a plain dict and ``pedantic`` does nothing."""

    def __init__(self, request):
        self._request = request
        self._bm = None
        self._fallback = {}

    def _get(self):
        if self._bm is None:
            try:
                self._bm = self._request.getfixturevalue("benchmark")
            except pytest.FixtureLookupError:
                self._bm = False
        return self._bm

    @property
    def extra_info(self) -> dict:
        bm = self._get()
        return bm.extra_info if bm else self._fallback

    def pedantic(self, *args, **kw):
        bm = self._get()
        return bm.pedantic(*args, **kw) if bm else None


@pytest.fixture
def bench(request, copy_gbps):
    """Lazy handle on pytest-benchmark's ``benchmark`` fixture (see ``_LazyBenchmark``)."""
    return _LazyBenchmark(request)


def _show(path) -> str:
    """``path`` relative to the working directory where it lies below it (logs name no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--benchmark", default=False):
        return
    from bench import common
    if not common.RESULTS:
        return
    rows = common.all_rows()
    common.finalize(rows)
    out = common.out_dir()
    csv_path = common.write_csv(rows, out / "bench.csv")
    common.write_rows_json(rows, out / "bench_rows.json")
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    say = (lambda s: tr.write_line(s)) if tr else print
    merged = len(rows) - len(common.RESULTS)
    say(f"groundthink bench: {len(common.RESULTS)} rows" + (f" (+{merged} kept from the earlier run, "
        "GT_BENCH_MERGE=1)" if merged else "") + f" -> {_show(csv_path)}")
    if not common.ON_GPU:
        say(f"groundthink bench: {common.NOT_A_MEASUREMENT}; no gate manifest written on CPU")
        return
    from groundthink import gate
    ops = gate.evidence(rows)
    if ops:
        path = gate.write(ops, None if "GT_BENCH_OUT" not in os.environ else common.out_dir() / "gates.json")
        for op, impls in ops.items():
            for impl, modes in impls.items():
                for mode, entry in modes.items():
                    say(f"gate {op}/{impl} ({mode} step): {entry['reason']}")
        say(f"groundthink bench: gate manifest -> {_show(path)}")
