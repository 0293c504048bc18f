"""The gate: which implementation of each op training may use on this GPU — the rule, the evidence, the
verdict and the manifest file, in one place. The benchmarks (``pytest bench/ --benchmark``) and the
qualification on first use (``qualify``) both produce evidence rows; ``evidence`` turns rows into manifest
entries; ``rule`` decides; ``Verdicts`` reads the manifests back, re-checks everything and ``choose``s.

One verdict per step mode. A verdict is for one mode of the training step (``TIMINGS``): ``"graph"`` for use
inside the CUDA-graph-captured step (train.py's default on a GPU), ``"eager"`` for ``--graph off``. It rests
only on rows timed in that mode: the graph verdict judges a graph-safe implementation by CUDA-graph timing
against the reference and the graph-safe peers (an implementation that is not graph-safe has none: it cannot be
in the captured step), the eager verdict by eager timing against every installed peer. The manifest keeps both
(``ops[op][impl][mode]``, each entry recording its ``mode``) and ``Verdicts(graph=...)`` reads the one for the
mode the step runs in. Run 6 showed why: the benchmarks' eager rows denied every glue kernel and wkv6/triton at
the model's small shapes (host overhead; fla_recurrent, not graph-safe, "won"), while the graph-timed first use
allowed them all.

Rule (``rule``), per implementation and mode, on its recorded evidence:
* correct: every output's and gradient's relative error vs float64 checked and within the op's bound
  (``OpSpec.bound``), at every shape checked, and no run failed; a wrong kernel is denied whatever its speed;
* faster than the reference in total over its timed shapes (an op runs one implementation for all of the step's
  calls: the step pays the sum; a shape where it is slower is named in the verdict; read for a step, each call
  counts as often as the step makes it), and no more memory: where the rows carry what a forward holds until its
  backward (``retained_mb``: the qualification measures it), the step's estimate — the held memory summed over
  the calls plus the largest extra backward burst (``_step_memory``) — else the extra peak at each shape;
* a lab kernel must also be no slower than every correct installed peer (within ``NOISE``), in total over the
  calls the peer was timed at (count-weighted, as against the reference); where a peer wins, the lab kernel is
  denied and ``choose`` takes the peer, saying so.
Every comparison is like with like: each timing row records its ``timing_mode`` (``TIMINGS``), and a row is
compared only with the reference's and the peers' rows of the same shape, pass and mode. A shape row without a
known mode, or of another mode than its verdict's, denies (fail closed).

Timing modes. ``"eager"``: CUDA events around ordinary calls (host overhead included: what an eager step
pays; the benchmarks' ``ms``). ``"graph"``: the fwd+bwd is warmed up on a side stream, captured once as a CUDA
graph and its replays are timed (no host time: what a CUDA-graph-captured training step pays; a step shorter
than ``GRAPH_MIN_MS`` is captured several times into one graph, so that the graph's own launch is spread as in
the step's one graph, and the time is per step; ``graph_ms``, also the benchmarks' ``ms_graph``). The
qualification uses ``"graph"`` when the training step will be captured (train.py: ``--graph`` auto/on on a GPU)
— eager timing there had denied µs-sized kernels for launch overhead that the captured step does not have (run
3: gate_norm_residual and decay_exp). Decision for implementations that are not graph-safe (spec
``graph_safe``) while the step is captured: they are not candidates and are not timed. Choosing one would turn
the graph off for the whole step (run 3, small model: 126 ms eager vs 15 ms captured), which no single op can win
back, and timing it eagerly against graph-timed lab kernels would compare host overhead with none. So a
graph-timed lab kernel is compared with the graph-safe peers only (graph-timed in the same run); the verdict
names no eager peer, and ``choose`` (``Verdicts(graph=True)``) skips non-graph-safe implementations, saying so.
If the reference itself cannot be captured, it is timed eagerly and that time stands in for it in the graph
verdicts (``ref_timing_mode``; the candidates stay graph-timed: the captured step cannot hold the reference, so a
capturable kernel competes with no graph); where it fails to run a call at all, nothing is timed against it there,
and a line and the verdicts' reason say so ("no timing evidence (the reference fails at …)").

``choose`` takes the fastest allowed lab candidate at the model's own shape (``Verdicts(shapes=...)``; fwd+bwd
time in the step's mode); an allowed peer is taken only where it beats every allowed
lab kernel there by more than ``NOISE`` (or no lab kernel is allowed), and the reason says so. Candidates
without a timing at that shape rank after those with one, in the spec's order (with no shapes: the spec's
order, the first allowed lab candidate, else the first allowed peer, else the reference).

Fail closed (``Verdicts.verdict``): a missing, unreadable or malformed manifest, another GPU / torch / triton
(or a peer's package version), an entry whose ``allowed`` is not exactly ``true``, whose reason or recorded
decision disagrees with the rule re-applied to its evidence, whose error bound is not the op's bound for the
recorded dtype now (a loosened bound would agree with itself), whose ``source_hash`` is absent or differs from
the op's current sources, or whose timing rows lack a known mode; a value not keyed by step mode (a manifest of
the older format), an entry filed under another mode than it records, or a graph verdict of an implementation
that is not graph-safe: all mean "not allowed", with a one-line reason.

Gate on first use (``qualify``, from train.py ``--kernels auto`` on a GPU): what lacks a valid verdict covering
the step's calls in the step's timing mode is measured and decided in ≤ 60 s for all ops together; the order,
what is skipped to stay in the budget and what is never cut are in ``qualify``'s docstring. A lab kernel slower
than a peer at a call is re-timed beside it before the verdict (``_retime_losses``).

Background compiles (``early_background``, ``_background``; ``groundthink.precompile.Background``): the items
whose compiles dominate their time compile in subprocesses while the main process measures the cheap ones, and
each is measured as soon as its compiles are done (``_ready_order``, ``_next``). One group for mamba-ssm's first
use (expected ≥ ``BACKGROUND_S``, ``GROUNDTHINK_BACKGROUND_S``), ``precompile.shard_count`` processes; by default
(on; ``GROUNDTHINK_LAB_BACKGROUND=0`` turns it off, run 12 call 6's way) a second group of its own
(``precompile.lab_shard_count``: 3 processes on the 16-core GPU host, ``GROUNDTHINK_LAB_SHARDS=N``; none below 12
cores — CI's 2: today's way) for the lab items expected ≥ ``LAB_BACKGROUND_S`` (wkv6, gate_norm_residual,
norm_gate, ddlerp, shift_lerp), the shortest first, never queued behind mamba-ssm's (run 12 call 5), then
torch.compile's peer (``precompile.WHOLE_ITEMS``: one subprocess fills Inductor's on-disk caches, the main loads).
``GROUNDTHINK_PRELOAD=1``: the candidates' imports on a thread beside data and model (``preload``). The seconds
line says the gate's total as imports + measuring + waiting for background compiles.

The step's calls (``groundthink.calls.step_calls``): every distinct (op, variant) one training step makes —
dtypes, flags, modes, outputs without a gradient — recorded from the model itself, at the step's shape (the
spec's ``model_shape`` entry it matches). Each is measured as its own row (labelled by the shape string and the
variant, "B64 T256 D128 [x float32]"), checked against the bound of its own least precise dtype; a verdict
covers the calls it has rows for, and ``Verdicts(shapes=calls)`` lets an implementation into the step only where
its verdict covers every call (rows measured at the spec's inputs — the benchmarks', an older qualification's —
cover only a call that passes exactly those: the first use measures the others).

Sources (``op_sources``): every repository file the op's implementations and its reference execute — found by
following their imports inside the repository (package ``__init__``s and reference helpers included).
``op_hash`` is a sha256 over them. Every evidence row carries the hash of the code that measured it
(``source_hash``); an entry is built only from rows of one hash and keeps it, so a partial re-run
(GT_BENCH_MERGE) never stamps earlier rows with new hashes.

Files: the published evidence ``profiles/<gpu-slug>/gates.json`` (written by the benchmarks;
``GROUNDTHINK_MANIFEST`` overrides the path) and the per-machine manifest written by ``qualify``
(``machine_path()``: ``$GROUNDTHINK_CACHE/<gpu-slug>/gates.json``, default the user cache dir
``~/.cache/groundthink``). Format::

    {"meta": {"gpu", "slug", "versions": {"torch", "triton", "cuda", <peer packages>}, "kernel_hash",
              "op_hashes": {op: hash}, "created", "source": "bench" | "qualify"},
     "ops": {op: {impl: {mode: {"mode": "graph" | "eager", "allowed": bool, "reason": str, "role": str,
                                "dtype": str, "bound": float, "errors": {name: err}, "failed": [str],
                                "source_hash": str, "sources": [path],
                                "shapes": [{"shape", "timing_mode", "ms", "ref_ms", "speedup", "peak_mb",
                                            "ref_peak_mb", "peer_ms": {peer: ms},
                                            "dtype", "bound", "errors": {name: err}}]}}}}}

    (a row's ``shape`` is a call's label and the pass; its dtype, bound and errors are that call's — the entry's
    ``dtype``/``bound`` are its least precise row's, its ``errors`` the largest of all rows; entries written
    before rows carried them are checked on the entry's alone)
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from groundthink.calls import (Call, as_calls, inputs as call_inputs, row_dtype, run_shapes, step_calls,  # noqa: F401
                              unused_outputs)
from groundthink.device import gpu_name, gpu_slug, profiles_dir, versions, warm_on_side_stream
from groundthink.harness import fwd_bwd_step
from groundthink.precompile import COMPILES, STATS as COMPILE_STATS, compile_winners, compiles_since
from groundthink.spec import ROOT, OpSpec, get, peer_packages, specs

TIMINGS = ("eager", "graph")   # timing modes (module docstring); rows of other or no mode deny
NOISE = 0.03          # a lab kernel counts as "no slower" than a peer up to 3% slower (timing noise)
MEM_SLACK_MB = 1.0    # extra peak memory allowed over the reference: 0.1% + 1 MB
_PACKAGES = ("kernels", "reference", "groundthink", "fused")


# ------------------------------------------------------------------------------------------------ sources

def _module_file(mod: str, root: Path) -> Path | None:
    parts = mod.split(".")
    if parts[0] not in _PACKAGES:
        return None
    base = root.joinpath(*parts)
    for cand in (base / "__init__.py", base.with_suffix(".py")):
        if cand.is_file():
            return cand
    return None


_PARSED: dict = {}   # (path, mtime, size, module) -> imports: a file is parsed again only when it changes


def _imports(path: Path, mod: str) -> set[str]:
    """Modules ``path`` (module ``mod``) imports: absolute names, ``from a import b`` also as ``a.b``."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, mod)
    if key not in _PARSED:
        _PARSED[key] = _parse_imports(path, mod)
    return _PARSED[key]


def _parse_imports(path: Path, mod: str) -> set[str]:
    out: set[str] = set()
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def module_sources(modules, root: Path = ROOT) -> list[str]:
    """Repository-relative files that importing ``modules`` executes (parent packages included)."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            f = _module_file(name, root)
            if f is None or name in seen:
                continue
            seen[name] = f
            todo.extend(_imports(f, name))
    return sorted({f.relative_to(root).as_posix() for f in seen.values()})


def op_sources(op: str, root: Path = ROOT) -> list[str]:
    """Every repository file that the op's implementations and its reference execute."""
    return module_sources([i.module for i in get(op).impls], root)


def _hash_files(paths, root: Path) -> str:
    h = hashlib.sha256()
    for rel in sorted(paths):
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def op_hash(op: str, root: Path = ROOT) -> str:
    return _hash_files(op_sources(op, root), root)


# ------------------------------------------------------------------------------------------------- rule

def _at(s: dict) -> str:
    return f"{s['shape']} ({s.get('timing_mode')})"


def rule(entry: dict) -> tuple[bool, str]:
    """Apply the gate rule to one implementation's recorded evidence for one step mode (``entry["mode"]``: every
    timing row must be timed in that mode; see the module docstring)."""
    mode = entry.get("mode")
    if mode not in TIMINGS:
        return False, f"denied: the verdict names no known step mode ({'|'.join(TIMINGS)})"
    errors, bound = entry.get("errors") or {}, entry.get("bound")
    failed = entry.get("failed") or []
    if not errors:
        return False, "denied: no correctness check completed" + (f" (failed: {'; '.join(failed)})" if failed else "")
    bad = sorted(k for k, v in errors.items() if not v <= bound)
    if bad or failed:
        notes = ([f"relative error above {bound:g} in {', '.join(bad)}"] if bad else []) + \
                ([f"failed: {'; '.join(failed)}"] if failed else [])
        return False, "denied: fails correctness (" + "; ".join(notes) + ")"
    shapes = entry.get("shapes") or []
    wrong = [f"{', '.join(sorted(k for k, v in s['errors'].items() if not v <= s.get('bound')))} at {s['shape']}"
             for s in shapes if any(not v <= s.get("bound") for v in (s.get("errors") or {}).values())]
    if wrong:
        return False, f"denied: fails correctness (relative error above its call's bound in {'; '.join(wrong)})"
    if not shapes:
        broken = entry.get("ref_failed") or []
        return False, "denied: no timing evidence" + (f" (the reference fails at {broken[0]})" if broken else "")
    unknown = [s["shape"] for s in shapes if s.get("timing_mode") not in TIMINGS]
    if unknown:
        return False, f"denied: no known timing mode ({'|'.join(TIMINGS)}) at {', '.join(unknown)}"
    other = [_at(s) for s in shapes if s["timing_mode"] != mode]
    if other:
        return False, f"denied: timed in another mode than its {mode} verdict at {', '.join(other)}"
    # faster than the reference in its total over the timed calls: an op runs one implementation for all of its
    # calls, so what the step pays is the sum (run 20, H200: lowrank/triton was denied for 0.19 vs 0.16 ms at the
    # G5 mix call although it wins the decay call by more; in the step the reference cost +0.9-1.2 ms and +320 MB)
    slower = [_at(s) for s in shapes if not s["ms"] < s["ref_ms"]]
    total = sum(s.get("count", 1) * s["ms"] for s in shapes)
    ref_total = sum(s.get("count", 1) * s["ref_ms"] for s in shapes)
    if not total < ref_total:
        return False, (f"denied: not faster than the reference at {', '.join(slower)}" if len(shapes) == 1 else
                       f"denied: not faster than the reference over its {len(shapes)} timed calls ({total:.4g} vs "
                       f"{ref_total:.4g} ms; slower at {', '.join(slower)})")
    more = _step_memory(shapes)
    if more:
        return False, more
    peers = sorted({p for s in shapes for p in s.get("peer_ms", {})})
    if entry.get("role") == "lab":
        beaten = _beaten_by_peers(shapes)
        if beaten:
            return False, "denied: slower than peer " + ", ".join(beaten)
    worst = min(s["ref_ms"] / s["ms"] for s in shapes)
    speed = (f"≥{worst:.1f}× the reference" if not slower else
             f"{ref_total / total:.2f}× the reference over its {len(shapes)} timed calls (slower at "
             f"{', '.join(slower)})")
    vs = f", no slower than {', '.join(peers)}" if peers and entry.get("role") == "lab" else ""
    eager = any(s.get("ref_timing_mode", mode) != mode for s in shapes)
    return True, (f"allowed: correct, {speed} ({mode}"
                  + ("; the reference timed eagerly: it cannot be captured" if eager else "")
                  + f"), no more memory{vs}")


def _beaten_by_peers(shapes: list[dict]) -> list[str]:
    """The peers a lab kernel loses to: each peer's total over the calls it was timed at (count-weighted, like the
    reference's) against the lab kernel's total over the same calls, beyond ``NOISE``. Totals, not calls: the step
    runs one implementation for all of an op's calls (run 21, H200 small: gate_norm_residual/triton 73.9 µs over its
    three calls vs compile 82.9, but 0.0230 vs 0.0216 ms at one of them — that call alone handed the step to compile,
    which cost it 0.15 ms and 49 launches)."""
    out = []
    for p in sorted({p for s in shapes for p in s.get("peer_ms", {})}):
        rows = [s for s in shapes if p in s.get("peer_ms", {})]
        mine = sum(s.get("count", 1) * s["ms"] for s in rows)
        theirs = sum(s.get("count", 1) * s["peer_ms"][p] for s in rows)
        if mine > theirs * (1 + NOISE):
            out.append(f"{p} at {_at(rows[0])} ({theirs:.4g} vs {mine:.4g} ms)" if len(rows) == 1 else
                       f"{p} over its {len(rows)} timed calls ({theirs:.4g} vs {mine:.4g} ms)")
    return out


def _step_memory(shapes: list[dict]) -> str | None:
    """The memory half of ``rule``: a denial, or None. Where every row has the memory a forward holds until its
    backward (``retained_mb``, the qualification's rows), the step's estimate: the calls' held memory adds up over
    the step's forward (each row × its ``count``, the step's calls of that shape; 1 where not given) and one
    backward's extra burst comes on top, so the implementation may not raise
        Σ count · (retained − ref_retained) + max(0, max over calls of (peak − retained) − (ref_peak − ref_retained))
    by more than the slack (run 20, H200: lowrank/triton held less than the reference at each call, 320 MB over the
    large step, yet its isolated peak at the G5 call was higher — the per-call rule took the reference, and the step
    with it peaked 8.2 GB against the triton step's 7.2). Rows without it (the benchmarks'): the peak at each call."""
    keys = ("peak_mb", "ref_peak_mb", "retained_mb", "ref_retained_mb")
    if shapes and all(s.get(k) is not None for s in shapes for k in keys):
        held = sum(s.get("count", 1) * (s["retained_mb"] - s["ref_retained_mb"]) for s in shapes)
        burst = max(0.0, max((s["peak_mb"] - s["retained_mb"]) - (s["ref_peak_mb"] - s["ref_retained_mb"])
                             for s in shapes))
        if held + burst > max(s["ref_peak_mb"] for s in shapes) * 0.001 + MEM_SLACK_MB:
            return (f"denied: more memory in the step than the reference ({held:+.1f} MB held by its calls until "
                    f"their backward, {burst:+.1f} MB more at a backward's peak; {len(shapes)} timed calls)")
        return None
    fatter = [_at(s) for s in shapes if s.get("peak_mb") is not None and s.get("ref_peak_mb") is not None
              and s["peak_mb"] > s["ref_peak_mb"] * 1.001 + MEM_SLACK_MB]
    return f"denied: more peak memory than the reference at {', '.join(fatter)}" if fatter else None


# --------------------------------------------------------------------------------------------- evidence

def _row_errors(r: dict) -> dict:
    e = r.get("errors") or {}
    return json.loads(e) if isinstance(e, str) else dict(e)


def _within(spec_or_bound, r: dict) -> bool:
    """``r`` has errors and every one is within the bound (a float, or an OpSpec: the bound of ``r``'s dtype)."""
    bound = spec_or_bound if isinstance(spec_or_bound, float) else _bound_of(spec_or_bound, r["dtype"])
    errors = _row_errors(r)
    return bool(errors) and all(v <= bound for v in errors.values())


def _key(r: dict) -> tuple:
    """Rows compared with each other: same shape, pass and timing mode (like with like)."""
    return r["shape"], r["pass"], r.get("timing_mode")


def _bound_of(spec: OpSpec, dtype: str) -> float:
    """The spec's error bound for a row's dtype name ("bfloat16", ...; unknown: bf16's)."""
    return spec.bound(getattr(torch, dtype, torch.bfloat16))


def _entry(spec: OpSpec, impl: str, mine: list[dict], rows: list[dict], mode: str) -> dict:
    """The ``mode`` verdict of ``impl`` from its rows ``mine`` and the op's other ``rows`` (of that mode, and the
    reference's of every mode). A graph row whose reference could not be captured (its graph row failed) is
    compared with the reference's eager time (``ref_timing_mode``: the reference cannot be in a captured step at
    all, so the alternative to a capturable kernel is no graph); a call where the reference fails in every mode has no
    timing (``ref_failed`` says why)."""
    hashes = sorted({r.get("source_hash") or "" for r in mine})
    dtype = max((r["dtype"] for r in mine), key=lambda d: _bound_of(spec, d))
    bound = _bound_of(spec, dtype)
    errors: dict[str, float] = {}
    failed = [f"{r['shape']} {r['pass']}" for r in mine if not r.get("ms")]
    for r in mine:
        for k, v in _row_errors(r).items():
            errors[k] = max(errors.get(k, 0.0), float(v))
    if len(hashes) > 1:
        failed.append("rows measured by different versions of the sources")
    ours = [r for r in rows if r["op"] == spec.name and (r.get("source_hash") or "") == hashes[0]]
    same = [r for r in ours if r.get("ms")]
    refs = {_key(r): r for r in same if r["impl"] == spec.reference.name}
    labels = {(r["shape"], r["pass"]) for r in mine}
    # the reference's rows without a time, by (shape, pass, timing mode): the mode tells an uncaptured reference
    untimed = {_key(r): r for r in ours if r["impl"] == spec.reference.name and not r.get("ms")}
    timed = {k[:2] for k in refs}
    ref_failed = sorted({f"{s} {p}: {(r.get('note') or 'no time')[:120]}" for (s, p, _), r in untimed.items()
                         if (s, p) in labels and (s, p) not in timed})
    uncaptured = {k[:2] for k in untimed if k[2] == "graph"}
    peer_names = {i.name for i in spec.role("peer") if mode == "eager" or i.graph_safe} - {impl}
    shapes = []
    for r in mine:
        rr = refs.get(_key(r)) or (refs.get((r["shape"], r["pass"], "eager")) if mode == "graph" and
                                   (r["shape"], r["pass"]) in uncaptured else None)
        if not r.get("ms") or rr is None:
            continue
        rb = _bound_of(spec, r["dtype"])          # the row's own bound: a peer competes where it meets it
        peer_ms = {p["impl"]: p["ms"] for p in same if p["impl"] in peer_names and _key(p) == _key(r) and
                   _within(rb, p)}
        shapes.append({"shape": f"{r['shape']} {r['pass']}", "timing_mode": r.get("timing_mode"), "ms": r["ms"],
                       "ref_ms": rr["ms"],
                       "speedup": rr["ms"] / r["ms"], "peak_mb": r.get("peak_mb"),
                       "ref_peak_mb": rr.get("peak_mb"), "peer_ms": peer_ms, "dtype": r["dtype"],
                       "bound": rb, "errors": _row_errors(r)})
        if r.get("retained_mb") is not None and rr.get("retained_mb") is not None:
            shapes[-1].update(retained_mb=r["retained_mb"], ref_retained_mb=rr["retained_mb"])
        if rr.get("timing_mode") != mode:
            shapes[-1]["ref_timing_mode"] = rr.get("timing_mode")
    entry = {"mode": mode, "role": spec.impl(impl).role, "dtype": dtype, "bound": bound, "errors": errors,
             "failed": failed, "shapes": shapes, "source_hash": hashes[0] or None, "sources": op_sources(spec.name)}
    if ref_failed:
        entry["ref_failed"] = ref_failed
    entry["allowed"], entry["reason"] = rule(entry)
    return entry


GRAPH_FAILED = "graph capture failed"   # a benchmark row's note when a graph-safe implementation did not capture


def mode_rows(rows: list[dict]) -> list[dict]:
    """One timing row per mode: a benchmark row times eagerly (``ms``) and, for a graph-safe implementation, as
    CUDA-graph replays (``ms_graph``): it becomes an eager row and a graph row (``ms`` = its ``ms_graph``; a
    failed capture, said in its note, a graph row without a time: the graph verdict denies). The memory figure
    of both is the row's ``peak_mb``. Rows already of one mode without ``ms_graph`` (``qualify``'s) pass."""
    out = []
    for r in rows:
        out.append(r)
        if r.get("timing_mode") != "eager" or r.get("op") not in specs():
            continue
        if r.get("ms_graph") is not None:
            out.append(dict(r, ms=r["ms_graph"], ms_graph=None, timing_mode="graph"))
        elif GRAPH_FAILED in (r.get("note") or ""):
            out.append(dict(r, ms=None, ms_graph=None, timing_mode="graph"))
    return out


def evidence(rows: list[dict]) -> dict:
    """Per op, non-reference implementation and step mode (``TIMINGS``): the manifest entry (evidence + verdict)
    built from result rows (the benchmarks' or ``qualify``'s), ``{op: {impl: {mode: entry}}}``. A mode's
    verdict rests on the rows timed in that mode only (``mode_rows``); the graph verdict of an implementation
    that is not graph-safe is never built. Rows of ops without a spec (training) are ignored."""
    known = specs()
    ops: dict = {}
    rows = mode_rows(rows)
    for op, impl, mode in sorted({(r["op"], r["impl"], r.get("timing_mode") or "") for r in rows
                                  if r["op"] in known}):
        spec = known[op]
        if impl == spec.reference.name or impl not in {i.name for i in spec.impls} or mode not in TIMINGS:
            continue
        if mode == "graph" and not spec.impl(impl).graph_safe:
            continue
        same = [r for r in rows if r["op"] == op and (r.get("timing_mode") == mode or r["impl"] == spec.reference.name)]
        mine = [r for r in same if r["impl"] == impl and r.get("timing_mode") == mode]
        ops.setdefault(op, {}).setdefault(impl, {})[mode] = _entry(spec, impl, mine, same, mode)
    return ops


# ------------------------------------------------------------------------------------------------- files

def manifest_path(slug: str | None = None) -> Path:
    """The published evidence of this GPU: profiles/<slug>/gates.json (GROUNDTHINK_MANIFEST overrides)."""
    override = os.environ.get("GROUNDTHINK_MANIFEST")
    return Path(override) if override else profiles_dir(slug) / "gates.json"


def machine_path(slug: str | None = None) -> Path:
    """The per-machine manifest written by ``qualify`` (outside the repository)."""
    base = os.environ.get("GROUNDTHINK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "groundthink")
    return Path(base) / (slug or gpu_slug()) / "gates.json"


def _versions() -> dict:
    v = versions()
    return {k: v[k] for k in ("torch", "triton", "cuda", *peer_packages()) if k in v}


def meta(source: str = "bench") -> dict:
    hashes = {op: op_hash(op) for op in specs()}
    return {"gpu": gpu_name(), "slug": gpu_slug(), "versions": _versions(),
            "kernel_hash": _hash_files(sorted({f for op in specs() for f in op_sources(op)}), ROOT),
            "op_hashes": hashes, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source}


def _recorded_versions(m: dict) -> dict:
    v = m.get("versions")
    return v if isinstance(v, dict) else {}


def _same_machine(m: dict, now: dict) -> list[str]:
    problems = []
    if m.get("slug") != now["slug"]:
        problems.append(f"measured on {m.get('gpu')}, this is {now['gpu']}")
    for key in ("torch", "triton"):
        if _recorded_versions(m).get(key) != now["versions"][key]:
            problems.append(f"{key} {_recorded_versions(m).get(key)} → {now['versions'][key]}")
    return problems


def write(ops: dict, path: Path | None = None, source: str = "bench", history: dict | None = None) -> Path:
    """Write the manifest atomically. Entries already in the file are kept when they were measured on this GPU
    with these torch/triton versions (each carries its own source hash, so it goes stale on its own), and so is
    the qualification's ``history`` (``{"seconds": {"op/impl": s}, "deferred": ["op/impl"]}``; new seconds
    update it, ``deferred`` is replaced)."""
    path = path or manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    current = {"meta": meta(source), "ops": {}}
    old, status = load(path)
    if old is not None and not _same_machine(old.get("meta") or {}, current["meta"]):
        current["ops"] = {op: {impl: _modes_of(e) for impl, e in impls.items()}
                          for op, impls in (old.get("ops") or {}).items() if isinstance(impls, dict)}
        if isinstance(old.get("history"), dict):
            current["history"] = old["history"]
    for op, impls in ops.items():
        for impl, modes in impls.items():
            current["ops"].setdefault(op, {}).setdefault(impl, {}).update(modes)
    if history is not None:
        seconds = dict(_history(current)[0], **history.get("seconds", {}))
        current["history"] = {"seconds": seconds, "deferred": sorted(history.get("deferred", []))}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _modes_of(entry) -> dict:
    """The per-mode verdicts of an implementation's manifest value (entries of an older format are dropped)."""
    return {m: e for m, e in entry.items() if m in TIMINGS} if isinstance(entry, dict) else {}


def _show(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def load(path: Path | None = None) -> tuple[dict | None, str]:
    """(manifest, status), never raising: status "ok", or a one-line reason (missing, unreadable, malformed,
    stale) — a manifest that is not "ok" allows nothing."""
    path = path or manifest_path()
    if not path.exists():
        return None, (f"no manifest at {_show(path)} — run pytest bench/ --benchmark or train.py --kernels auto "
                      "on a GPU")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"unreadable manifest {_show(path)}: {type(e).__name__}: {str(e)[:120]}"
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict) or not isinstance(data.get("ops"), dict):
        return None, f"malformed manifest {_show(path)}: expected an object with 'meta' and 'ops' objects"
    problems = _same_machine(data["meta"], meta())
    if problems:
        return data, "stale: " + "; ".join(problems) + " — re-run the benchmarks or the qualification"
    return data, "ok"


# ------------------------------------------------------------------------------------------------ verdict

def _num(v, positive: bool = False) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 if positive else True)


def _check_entry(entry) -> str | None:
    """None if the entry is well formed, else what is wrong."""
    if not isinstance(entry, dict):
        return "entry is not an object"
    if not isinstance(entry.get("reason"), str):
        return "no reason recorded"
    if not isinstance(entry.get("errors"), dict) or not all(_num(v) for v in entry["errors"].values()):
        return "errors must map names to numbers"
    if not _num(entry.get("bound")) or not isinstance(entry.get("shapes"), list):
        return "bound or shapes missing"
    if not isinstance(entry.get("dtype"), str):
        return "no dtype recorded"
    if not isinstance(entry.get("failed", []), list) or not all(isinstance(x, str) for x in entry.get("failed", [])):
        return "failed must be a list of strings"
    for s in entry["shapes"]:
        if not isinstance(s, dict) or not isinstance(s.get("shape"), str) or not all(
                _num(s.get(k), positive=True) for k in ("ms", "ref_ms")):
            return "a shape row lacks a positive ms / ref_ms"
        if not isinstance(s.get("peer_ms", {}), dict) or not all(_num(v, True) for v in s.get("peer_ms", {}).values()):
            return "peer_ms must map peers to positive times"
        if not all(s.get(k) is None or _num(s[k]) for k in ("peak_mb", "ref_peak_mb", "retained_mb",
                                                             "ref_retained_mb", "count")):
            return "peak_mb / ref_peak_mb / retained_mb / ref_retained_mb / count must be numbers"
        if s.get("timing_mode") not in TIMINGS:
            return f"a shape row has no known timing_mode ({'|'.join(TIMINGS)})"
        if "errors" in s and not (isinstance(s["errors"], dict) and all(_num(v) for v in s["errors"].values())
                                  and _num(s.get("bound")) and isinstance(s.get("dtype"), str)):
            return "a shape row's errors, bound and dtype must be numbers, a number and a string"
    return None


def _mode_entry(data: dict, op: str, impl: str, mode: str):
    """(the recorded ``mode`` verdict of ``op``/``impl`` or None, what is wrong with the value around it or None)."""
    impls = data["ops"].get(op)
    value = impls.get(impl) if isinstance(impls, dict) else None
    if value is None:
        return None, None
    if not isinstance(value, dict) or "reason" in value or set(value) - set(TIMINGS):
        return None, (f"not one verdict per step mode ({'|'.join(TIMINGS)}) — a manifest of an older format; "
                      "re-run the benchmarks or the qualification")
    return value.get(mode), None


def verdict_of(data: dict | None, status: str, op: str, impl: str, root: Path = ROOT,
               mode: str = "eager") -> tuple[bool, str]:
    """Whether one manifest lets ``impl`` of ``op`` into a training step run in ``mode`` (``TIMINGS``: "graph"
    for the CUDA-graph-captured step, "eager" for ``--graph off``) here, and why (fails closed)."""
    if data is None or status != "ok":
        return False, status
    try:
        spec = get(op)
        role = spec.impl(impl).role
    except KeyError as e:
        return False, str(e).strip("'\"")
    if mode not in TIMINGS:
        return False, f"unknown step mode {mode!r}; known: {'|'.join(TIMINGS)}"
    entry, bad = _mode_entry(data, op, impl, mode)
    if bad:
        return False, f"malformed verdict for {op}/{impl}: {bad}"
    if entry is None:
        return False, f"no verdict for {op}/{impl} ({mode})"
    if mode == "graph" and not spec.impl(impl).graph_safe:
        return False, f"malformed verdict for {op}/{impl}: a graph verdict for an implementation that is not graph-safe"
    if isinstance(entry, dict) and entry.get("mode") != mode:
        return False, f"malformed verdict for {op}/{impl}: filed under {mode}, records mode {entry.get('mode')!r}"
    bad = _check_entry(entry)
    if bad:
        return False, f"malformed verdict for {op}/{impl}: {bad}"
    if entry.get("source_hash") is None:
        return False, f"verdict for {op}/{impl} records no source hash — re-run the benchmarks"
    if entry["source_hash"] != op_hash(op, root):
        return False, f"stale: sources of {op} ({', '.join(op_sources(op, root))}) changed since the measurement"
    dtype = getattr(torch, entry["dtype"], None)
    if not isinstance(dtype, torch.dtype) or entry["bound"] != spec.bound(dtype):
        return False, (f"stale: the error bound of {op} for {entry['dtype']} is "
                       f"{spec.bound(dtype) if isinstance(dtype, torch.dtype) else 'unknown'}, the verdict used "
                       f"{entry['bound']:g}")
    for s in entry["shapes"]:
        dt = getattr(torch, s.get("dtype") or "", None)
        if "errors" in s and (not isinstance(dt, torch.dtype) or s["bound"] != spec.bound(dt)):
            return False, (f"stale: the error bound of {op} for {s['dtype']} is "
                           f"{spec.bound(dt) if isinstance(dt, torch.dtype) else 'unknown'}, the verdict used "
                           f"{s['bound']:g} at {s['shape']}")
    pkg = spec.impl(impl).package
    if pkg in peer_packages() and _recorded_versions(data["meta"]).get(pkg) != versions().get(pkg):
        return False, f"stale: {pkg} {_recorded_versions(data['meta']).get(pkg)} → {versions().get(pkg)}"
    ok, why = rule(dict(entry, role=role))
    if entry.get("allowed") is not ok or not entry["reason"].startswith("allowed" if ok else "denied"):
        return False, (f"inconsistent verdict for {op}/{impl}: recorded allowed={entry.get('allowed')!r} "
                       f"({entry['reason'][:60]}), the rule says {why}")
    return ok, why


_UNDECIDED = ("no manifest", "no verdict", "stale", "unreadable")   # reasons that defer to the next manifest


def _call_of(row_shape: str) -> str:
    """The call label of a verdict row's ``shape`` ("<label> <pass>")."""
    return row_shape.rsplit(" ", 1)[0]


class Verdicts:
    """The verdicts of this machine's manifests: the per-machine one (qualification here, at the model's
    shapes) first, the published one second. The first manifest with a verdict for an implementation decides
    (a malformed or inconsistent one decides too: not allowed); missing, stale and unreadable ones defer.

    ``shapes`` ({op: the step's ``Call``s (``step_calls``), or one spec shape tuple or ``shape_str``}): the
    calls the step makes — an implementation is chosen only where its verdict covers every one of them (a row
    at each call's label: its variant was qualified), and ``choose`` compares the time per step (each call's
    fwd+bwd time × how often the step makes it); ``graph``: the training step will be captured, so the verdicts
    for the graph mode are read (CUDA-graph timing against graph-safe competitors; implementations that are not
    graph-safe never chosen), else the eager ones (``--graph off``). ``mode`` is that step mode."""

    def __init__(self, paths: list[Path] | None = None, *, shapes: dict | None = None, graph: bool = False):
        self.paths = paths if paths is not None else [machine_path(), manifest_path()]
        self.loaded = [(p, *load(p)) for p in self.paths]
        self.shapes = {op: [(shp, 1)] if isinstance(shp, str) else [(c.label, c.count) for c in as_calls(op, shp)]
                       for op, shp in (shapes or {}).items()}
        self.graph = graph
        self.mode = "graph" if graph else "eager"
        self._decided: dict = {}      # (op, impl, mode) -> _decide's answer: the sources are hashed once per object

    def _decide(self, op: str, impl: str, mode: str | None = None) -> tuple[bool, str, dict | None]:
        """(allowed, why, the valid entry or None) of the verdict for ``mode`` (default: this step's), decided
        once per object (``has`` asks per call and implementation; each decision hashes the op's sources)."""
        key = (op, impl, mode or self.mode)
        if key not in self._decided:
            self._decided[key] = self._decide_now(*key)
        return self._decided[key]

    def _decide_now(self, op: str, impl: str, mode: str) -> tuple[bool, str, dict | None]:
        whys = []
        for path, data, status in self.loaded:
            ok, why = verdict_of(data, status, op, impl, mode=mode)
            if ok or not why.startswith(_UNDECIDED):
                valid = ok or why.startswith("denied")
                entry = data["ops"][op][impl][mode] if valid else None
                if entry is not None:
                    ok, why = self._for_this_step(op, impl, entry, ok, why)
                return ok, f"{why} [{_show(path)}]", entry
            whys.append(why)
        return False, "; ".join(dict.fromkeys(whys)) or "no manifest", None

    def _for_this_step(self, op: str, impl: str, entry: dict, ok: bool, why: str) -> tuple[bool, str]:
        """The rule applied to the timing rows of this step's calls only (``shapes``), each weighted by how often
        the step makes it (``count``: time and held memory add up over the calls), where the entry has a row for
        each: a per-machine manifest gathers every model's calls (run 20: the small model's lowrank stayed on the
        reference for a row of the large model's call). Correctness stays the whole entry's; without the step's
        calls, or rows for them all, the entry's own verdict (every row once) stands."""
        counts = dict(self.shapes.get(op, []))
        if not counts or not why.startswith(("allowed", "denied: not faster", "denied: more",
                                              "denied: slower than peer")):
            return ok, why
        rows = [dict(s, count=counts[_call_of(s["shape"])]) for s in entry["shapes"] if _call_of(s["shape"]) in counts]
        if {_call_of(s["shape"]) for s in rows} != set(counts):
            return ok, why
        return rule(dict(entry, shapes=rows, role=get(op).impl(impl).role))

    def verdict(self, op: str, impl: str) -> tuple[bool, str]:
        """(allowed, why) of ``impl`` for this step mode."""
        ok, why, _ = self._decide(op, impl)
        return ok, why

    def has(self, op: str, impl: str, shape: str | None = None, timing: str | None = None) -> bool:
        """A valid verdict (allowed or denied) for the step mode ``timing`` (default: this step's) exists; with
        ``shape`` (a call's label: a spec's ``shape_str`` and its variant), one measured at exactly that call (a
        failure there counts)."""
        _, _, entry = self._decide(op, impl, timing)
        if entry is None or shape is None:
            return entry is not None
        return any(_call_of(x) == shape for x in [s["shape"] for s in entry["shapes"]] +
                   entry.get("failed", []))

    def uncovered(self, op: str, impl: str) -> list[str]:
        """The step's calls of ``op`` (``shapes``) that the verdict of ``impl`` has no row for."""
        return [label for label, _ in self.shapes.get(op, []) if not self.has(op, impl, label)]

    def ms_at(self, op: str, impl: str) -> float | None:
        """The time of ``impl`` per step in ``op``'s calls (``shapes``: each call's fwd+bwd, else fwd, time × its
        count), from its valid verdict for this step mode; None without one or without a row for every call."""
        _, _, entry = self._decide(op, impl)
        if entry is None or not self.shapes.get(op):
            return None
        ms = {s["shape"]: s["ms"] for s in entry["shapes"]}
        total = 0.0
        for label, count in self.shapes[op]:
            row = ms.get(f"{label} fwdbwd", ms.get(f"{label} fwd"))
            if row is None:
                return None
            total += count * row
        return total

    def _fastest(self, op: str, names: list[str]) -> tuple[str, float | None]:
        """(name, ms) of the fastest of ``names`` at the op's model shape in this step mode; without any timing
        there: (the first name, None)."""
        timed = [(ms, i, n) for i, n in enumerate(names) if (ms := self.ms_at(op, n)) is not None]
        if timed:
            ms, _, name = min(timed)
            return name, ms
        return names[0], None

    def choose(self, spec: OpSpec, usable: Callable[[str], bool]) -> tuple[str, str]:
        """(implementation, why): the best proven implementation of ``spec``'s op (module docstring);
        ``usable(impl)``: imports and runs here."""
        op, labels = spec.name, self.shapes.get(spec.name, [])
        shape = labels[0][0] if len(labels) == 1 else f"the step's {len(labels)} calls"
        whys, allowed = [], {"lab": [], "peer": []}
        for impl in spec.impls:
            if impl.role == "reference":
                continue
            if self.graph and not impl.graph_safe:
                whys.append(f"{impl.name}: not graph-safe (the step is captured)")
                continue
            ok, why = self.verdict(op, impl.name)
            missing = self.uncovered(op, impl.name) if ok and labels else []
            if missing:
                ok, why = False, (f"not qualified for the step's call {missing[0]}"
                                  + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                                  + " (its verdict covers other calls)")
            if ok and usable(impl.name):
                allowed[impl.role].append(impl.name)
            elif impl.role == "lab":
                whys.append(f"{impl.name}: {why}, but it does not import here" if ok else f"{impl.name} {why}")
        lab = self._fastest(op, allowed["lab"]) if allowed["lab"] else None
        peer = self._fastest(op, allowed["peer"]) if allowed["peer"] else None
        if peer is not None and (lab is None or (peer[1] is not None and lab[1] is not None and
                                                 peer[1] * (1 + NOISE) < lab[1])):
            vs = (f" — beats every allowed lab kernel at {shape} ({self.mode}: {peer[1]:.4g} vs {lab[0]} "
                  f"{lab[1]:.4g} ms per step)" if lab else f" (lab: {'; '.join(whys)})" if spec.role("lab") else
                  " (no lab kernel)")
            return peer[0], f"gate: peer {peer[0]} {self.verdict(op, peer[0])[1]}{vs}"
        if lab is not None:
            why = self.verdict(op, lab[0])[1]
            if len(allowed["lab"]) > 1:
                why += (f"; fastest allowed at {shape} ({self.mode}: {lab[1]:.4g} ms per step of "
                        f"{len(allowed['lab'])})"
                        if lab[1] is not None else "; no timing at the model's shape: the spec's order")
            return lab[0], f"gate: {why}"
        return spec.reference.name, "gate: " + ("; ".join(whys) if whys else "no qualified implementation")


# ------------------------------------------------------------------------------------- gate on first use

TIME_BOX_MS = 100.0   # timed work per implementation after its warm-up (at least one timed call)
MAX_SAMPLES = 5       # samples (batches of back-to-back calls) whose median is the time
MAX_BATCH = 100       # calls per sample at most (µs ops: a batch hides the event's own overhead)
GRAPH_MIN_MS = 1.0    # a graph replay shorter than this is captured again with several steps in it
MAX_COPIES = 64       # steps in one graph at most
RETIMES = "re-times"  # the per-op seconds line's entry for ``_retime_losses``
RETIME_S = 3.0        # budget left for a re-time of a lab kernel and the peer it lost to (``_retime_losses``; an
                      # estimate: a µs op's two graph timings ≈ 2 × TIME_BOX_MS plus two captures)


def _once_ms(fn: Callable, cuda: bool, n: int = 1) -> float:
    """Time per call of ``n`` back-to-back calls of ``fn`` (CUDA events on a GPU, host clock otherwise)."""
    if not cuda:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1e3 / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def _time_ms(fn: Callable, cuda: bool, first_ms: float | None = None,
             box_ms: float = TIME_BOX_MS) -> tuple[float, int]:
    """(median ms per call, calls timed) of a warmed-up ``fn``, the timed work sized to about ``box_ms``: an op
    slower than half the box is timed by one call (``first_ms``, a call already timed, is reused), a µs op by
    ``MAX_SAMPLES`` batches of up to ``MAX_BATCH`` calls (no sync between the calls of a batch: the steady state
    of a step, host launches overlapping GPU work; also the benchmarks' eager ``ms``)."""
    if first_ms is None:
        first_ms = _once_ms(fn, cuda)
    if first_ms >= box_ms / 2:
        return first_ms, 1
    n = max(1, min(MAX_BATCH, int(box_ms / MAX_SAMPLES / max(first_ms, 1e-4))))
    samples = max(1, min(MAX_SAMPLES, int(box_ms / (n * max(first_ms, 1e-4)))))
    return statistics.median(_once_ms(fn, cuda, n) for _ in range(samples)), n * samples


def _peak_mb(fn: Callable, cuda: bool) -> tuple[float | None, float]:
    """(extra peak MB of one call of ``fn`` over what is allocated before it, None off CUDA; that call's ms)."""
    if not cuda:
        return None, _once_ms(fn, cuda)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms = _once_ms(fn, cuda)
    return (torch.cuda.max_memory_allocated() - base) / 2**20, ms


def _capture(run: Callable, leaves: list[torch.Tensor], cuda: bool) -> tuple[Callable, float | None, int]:
    """CUDA-graph timing of ``run`` (one fwd+bwd, clearing ``leaves``' gradients first): warm it up on a side
    stream (compilation, autotuning, lazy initialisation stay out of the graph), capture it once and return
    (a replay, the extra peak MB of that capture — what one step allocates in the graph's pool, the number of
    steps one replay runs). A replay shorter than ``GRAPH_MIN_MS`` is captured again with up to ``MAX_COPIES``
    steps in it, so that the graph's own launch (µs of host time per replay) is spread as it is in the training
    step's one graph, where an op is a few nodes among thousands. The first replay (the upload) is untimed."""
    if not cuda:
        raise RuntimeError("CUDA-graph timing needs a CUDA device")
    warm_on_side_stream(run)
    graph, peak = _record(run, leaves, 1, cuda)
    one = _once_ms(graph.replay, cuda)
    copies = 1
    if one < GRAPH_MIN_MS:
        copies = min(MAX_COPIES, math.ceil(GRAPH_MIN_MS / max(one, 1e-3)))
        for t in leaves:                      # the gradients live in the old graph's pool
            t.grad = None
        del graph
        graph, _ = _record(run, leaves, copies, cuda)
    return graph.replay, peak, copies


def _record(run: Callable, leaves: list[torch.Tensor], copies: int, cuda: bool):
    """(a CUDA graph of ``copies`` calls of ``run``, replayed once; the extra peak MB of its capture)."""
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()

    def record():
        with torch.cuda.graph(graph):
            for _ in range(copies):
                run()

    peak, _ = _peak_mb(record, cuda)     # the capture's own time is not a measurement
    graph.replay()
    return graph, peak


def _clearing(step: Callable, leaves: list[torch.Tensor]) -> Callable:
    """``step`` preceded by clearing ``leaves``' gradients (each call computes them afresh)."""
    def run():
        for t in leaves:
            t.grad = None
        step()
    return run


def graph_ms(step: Callable, leaves: list[torch.Tensor], cuda: bool = True) -> tuple[float, float | None, int]:
    """CUDA-graph timing of ``step`` (a forward, or a fwd+bwd whose ``leaves``' gradients are cleared first):
    (ms per step over replays of its graph, the extra peak MB of the capture, steps timed) — ``_capture``, then
    ``_time_ms`` of the replays. What the gate's "graph" rows and the benchmarks' ``ms_graph`` are."""
    replay, peak, copies = _capture(_clearing(step, leaves), leaves, cuda)
    ms, reps = _time_ms(replay, cuda)
    return ms / copies, peak, reps * copies


def _time_call(fn: Callable, kw: dict, cuda: bool, timing: str) -> tuple[float, float | None, int]:
    """(ms, extra peak MB, calls timed) of one fwd+bwd of ``fn(**kw)`` in ``timing`` mode (``measure``'s timing)."""
    step, leaves = fwd_bwd_step(fn, kw)
    if timing == "graph":
        return graph_ms(step, leaves, cuda)
    run = _clearing(step, leaves)
    run()                               # autotuning / compilation outside the memory and time figures
    for t in leaves:
        t.grad = None
    peak, first = _peak_mb(run, cuda)
    ms, reps = _time_ms(run, cuda, first)
    return ms, peak, reps


def _retained_mb(fn: Callable, kw: dict, cuda: bool) -> float | None:
    """MB that one forward of ``fn(**kw)`` leaves allocated until its backward — its outputs and the tensors saved
    for the backward: what a training step holds for each such call from the call to its backward, so across the
    forward's peak (``rule``'s step estimate). None off CUDA or if the forward fails here (the timing stands)."""
    if not cuda:
        return None
    try:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()      # the caching allocator's count: host-side, no sync needed after
        outs = fn(**kw)
        held = (torch.cuda.memory_allocated() - base) / 2**20
        del outs
        return max(held, 0.0)
    except Exception:  # noqa: BLE001 - a measurement, not a verdict: without it the per-call peak rule applies
        return None


def _call_inputs(spec: OpSpec, call: Call, at, device, seed: int = 0) -> dict:
    """The inputs of ``call``'s variant at shape ``at``: on a CUDA device in the spec's dtype with the variant's
    dtypes (exact), elsewhere all in float32."""
    cuda = torch.device(device).type == "cuda"
    return call_inputs(spec, at, call.variant, spec.bench.dtype if cuda else torch.float32, seed=seed,
                       device=device, exact=cuda)


def retime(spec: OpSpec, fn: Callable, shp, device, timing: str) -> tuple[float, int]:
    """A second timing of ``fn`` in one call of the step: ``measure``'s shapes, dtypes and mode, new inputs (seed 2)
    and a new capture. (ms per fwd+bwd, calls timed)."""
    call = as_calls(spec.name, shp)[0]
    ms, _, reps = _time_call(unused_outputs(fn, call.variant), _call_inputs(spec, call, call.shape, device, seed=2),
                             torch.device(device).type == "cuda", timing)
    return ms, reps


def measure(spec: OpSpec, impl: str, fn: Callable, shp, device, timing: str = "eager") -> dict:
    """One evidence row of ``impl`` in one call of the step (``shp``: a ``Call`` — the spec's shape and the
    step's variant —, or a spec shape tuple), fwd+bwd: time and extra peak memory (at the call's shape), timed in
    ``timing`` mode (``TIMINGS``; "graph": CUDA-graph replays, ``graph_ms``), then errors of the output and every
    gradient vs the float64 reference (at the spec's error shape, the same variant). Timing first: an autotuned
    kernel tunes at its first call, and whose key ignores the batch (mamba-ssm's) would otherwise be tuned at the
    error shape (B ≤ 2) and train with that choice. On a CUDA device in the spec's dtype with the variant's
    dtypes, with CUDA events; elsewhere (the interpreter) all in float32 by the host clock. The row's ``dtype``
    is the call's least precise one (its error bound)."""
    from groundthink.harness import compare
    call = as_calls(spec.name, shp)[0]
    cuda = torch.device(device).type == "cuda"
    base = spec.bench.dtype if cuda else torch.float32

    def make(at, seed=0):
        return _call_inputs(spec, call, at, device, seed)
    row = {"op": spec.name, "impl": impl, "shape": call.label, "pass": "fwdbwd", "dtype": str(base)[6:],
           "timing_mode": timing, "ms": None, "reps": 0, "peak_mb": None, "retained_mb": None, "errors": {},
           "source_hash": op_hash(spec.name), "note": ""}
    try:
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}; got {timing!r}")
        kw, fn = make(call.shape), unused_outputs(fn, call.variant)
        row["dtype"] = str(row_dtype(kw))[6:]
        row["ms"], row["peak_mb"], row["reps"] = _time_call(fn, kw, cuda, timing)
        row["retained_mb"] = _retained_mb(fn, kw, cuda)
        del kw
        if impl != spec.reference.name:         # after the timing: the kernels' first call (autotuning) was at
            err = run_shapes(spec, call)[-1]     # the step's shape
            if cuda and err != tuple(call.shape):   # its kernels specialise anew: compile them all at once first
                compile_winners(lambda: fwd_bwd_step(fn, make(err, 1))[0]())
            row["errors"] = compare(fn, unused_outputs(spec.reference.load(), call.variant), make(err, 1))
    except Exception as e:  # noqa: BLE001 - recorded: the rule denies a kernel that fails to run
        row["note"] = f"{type(e).__name__}: {str(e)[:200]}"
        row["ms"] = None
    return row


def _candidates(spec: OpSpec, cuda: bool, graph: bool, load: bool = True) -> tuple[list, list[str]]:
    """([(impl, fn or its import error)] that may run in this step, [why others are left out]): implementations
    that run here, graph-safe ones only when the step is captured; an absent peer is no candidate, an absent
    lab kernel is (it fails). ``load=False``: nothing is imported (``early_background``): fn is None for an
    installed implementation (its top-level package found by ``importlib.util.find_spec``), a
    ``ModuleNotFoundError`` for an absent one."""
    import importlib.util
    cands, out = [], []
    for impl in spec.impls:
        if impl.role == "reference" or not impl.runs_here(cuda):
            continue
        if graph and not impl.graph_safe:
            out.append(f"{spec.name}/{impl.name} (not graph-safe: the step is captured)")
            continue
        if load:
            try:
                fn = impl.load()
            except Exception as e:  # noqa: BLE001
                fn = e
        else:
            package = impl.package
            fn = None if importlib.util.find_spec(package) else ModuleNotFoundError(f"{package} is not installed")
        if impl.role == "lab" or not isinstance(fn, Exception):
            cands.append((impl, fn))
    return cands, out


def _gated_role(impls) -> str:
    """The role whose implementations an op's gate decides on: "lab" when it has a lab candidate, else "peer"."""
    return "lab" if any(i.role == "lab" for i in impls) else "peer"


def _timing(spec: OpSpec, graph: bool) -> str:
    """The op's timing mode: CUDA-graph replays when the step is captured and the reference can be."""
    return "graph" if graph and spec.reference.graph_safe else "eager"


BUDGET_S = 60.0      # the first-use budget of all ops together (``qualify``)
LATE_PEER_S = 10.0   # a deferred peer of a settled op is measured by a later run up to this long (``_late_peer``)

# What measuring one implementation costs on a cold machine, where the per-machine manifest has no figure yet
# (its ``history`` of seconds, written by every qualification, takes over from the next run on). The lab kernels:
# run 12 call 1 (fresh H100, GF-MH small's calls, every compile in the main process: parallel configs, the plain
# kernels one after another; run12-2026-11-27/call1/shards-auto/logs/first-use.log); mamba-ssm: run 6 (its whole
# first use in the main process with parallel compile; run 5, serial: 99.5 s), ≈15 autotuned kernels.
FIRST_USE_S = {"mamba2/mamba_ssm": 52.0, "wkv6/triton": 15.4, "wkv6/triton_fused": 5.8,
               "gate_norm_residual/triton": 9.8, "norm_gate/triton": 5.5, "ddlerp/triton": 4.6,
               "shift_lerp/triton": 3.1, "decay_exp/triton": 1.9, "cross_entropy/triton": 0.8,
               "lowrank/triton": 4.0,                  # not yet measured: two kernels, one config each (as ddlerp)
               "ffn/triton": 12.0,    # not yet measured: two GEMM kernels, 8 autotune configs each (16 compiles)
               "gate_norm_residual/compile": 13.3,     # run 13 (gate12-default): its Inductor compile, 3 calls
               # fla's peers (``_autotune_configs`` undercounts them: fla_chunk's kernels live in fla.ops.common and
               # fla.ops.gla, fla_rmsnorm's module is the lab's peers module): run 12 full's bench.csv warmup_s, the
               # sum over what the qualification calls — a cold fwd and bwd at the step's call, then the error
               # shape's (same H, K, V: a further autotune) — fla_chunk 26.4 + 26.3 + 9.9 + 4.5, fla_recurrent
               # 1.4 + 18.0 + 0.2 + 2.1, fla_rmsnorm 18.1 + 12.2 + 0.9 + 0.8 (its cold D512 row: 18 s per pass)
               "wkv6/fla_chunk": 67.1, "wkv6/fla_recurrent": 21.7, "gate_norm_residual/fla_rmsnorm": 32.0}
# An item expected to take this long compiles in background subprocesses from the start (``early_background``,
# ``_background``); the main process then only loads its kernels from the disk cache and measures. 20 s: mamba-ssm
# alone. Run 12 call 5 tried 2.5 s (the lab items too, in the same shards): they queued behind mamba-ssm, whose
# compile took 56.8 s there (no faster than one subprocess's 50.9 s in run 11), every lab item was deferred and the
# newcomer's step ran on the references (98.95 ms). GROUNDTHINK_BACKGROUND_S=<seconds> sets it (``_background_s``);
# the lab items' own group is ``LAB_BACKGROUND_S`` below.
BACKGROUND_S = 20.0
# The lab group (``precompile.lab_shard_count``: on by default, ``GROUNDTHINK_LAB_BACKGROUND=0`` off): the
# lab items expected to take this long compile in a group of subprocesses of their own, started beside mamba-ssm's —
# never queued behind it (run 12 call 5) — the shortest first, so that the main process measures each as soon as it
# is ready (``_next``). Run 12 call 1: above 2.5 s an item's time was mostly its compiles (shift_lerp 3.1 …
# wkv6/triton 15.4: 44 s of the 50 s qualification); below it the main has ≈ 6 s of cheap work of its own while the
# subprocesses start.
LAB_BACKGROUND_S = 2.5
BACKGROUND_SETUP_S = 10.0   # a background subprocess's start before its first compile (estimate, not measured)
# Measured: seconds from its group's start until an item's background compile was done, whatever the processes —
# mamba-ssm: 56.8 s (run 12 call 5, 6 shards, the main idle), 55.1 (call 6, 6 shards), 54.5 (call 6, one process);
# the estimate from its compile seconds over the shards said 17 s. ``_group_compile_s`` takes the larger. Those were
# before session 10's fix (``precompile.compile_only``: the backward's compiles ran outside the shards' split, one
# after another); run 13 (gate12-default, 6 shards, 116 compiles): 27.6 s. It orders, never defers.
BACKGROUND_DONE_S = {"mamba2/mamba_ssm": 27.6}
# What measuring an item takes once its background compile is done (its kernels read from the disk cache, the
# autotune configs benchmarked, the winners at the error shape compiled, the timing and the float64 check).
# mamba-ssm: run 11 call 3, 27.4 s of which 15.2 s waiting (14 kernels compiled there, 116 from the disk cache, 140
# configs benchmarked: the 14 compiled one after another — the check's backward ran on autograd's device thread,
# outside ``compile_winners``' concurrent mode, until session 10); run 13 (after the fix): 12.5 s, 13 kernels
# compiled there, 116 from the disk cache; others: BACKGROUND_REST of their expected time.
REST_S = {"mamba2/mamba_ssm": 12.5}
BACKGROUND_REST = 0.4
REFERENCE_S = 0.5         # a PyTorch reference otherwise: nothing to compile
BASE_S, CONFIG_S = 1.5, 0.2   # a kernel otherwise: 1.5 s + 0.2 s per autotune config in its package (run 5 with
                              # parallel compile: glue kernels without autotuning 0.9-2.4 s, gate_norm_residual's
                              # 8 configs 2.8 s)


def _history(data) -> tuple[dict, set]:
    """(seconds per "op/impl" measured by earlier qualifications here, the items the last one deferred) of a
    loaded manifest; empty when it has none or it is malformed."""
    h = data.get("history") if isinstance(data, dict) else None
    if not isinstance(h, dict):
        return {}, set()
    seconds = {k: v for k, v in (h.get("seconds") or {}).items() if isinstance(k, str) and _num(v, positive=True)} \
        if isinstance(h.get("seconds"), dict) else {}
    deferred = {x for x in h.get("deferred") or [] if isinstance(x, str)} if isinstance(h.get("deferred"), list) \
        else set()
    return seconds, deferred


def _autotune_configs(module: str) -> int:
    """Autotune configs of every ``@triton.autotune`` kernel in the (imported) package of ``module``."""
    import sys
    try:
        from triton.runtime.autotuner import Autotuner
    except Exception:  # noqa: BLE001
        return 0
    mod = sys.modules.get(module)
    pkg = module if mod is not None and hasattr(mod, "__path__") else module.rpartition(".")[0] or module
    return sum(len(v.configs) for name, m in list(sys.modules.items()) if m is not None and
               (name == pkg or name.startswith(pkg + ".")) for v in list(vars(m).values()) if isinstance(v, Autotuner))


def expected_s(spec: OpSpec, impl, history: dict, calls: int = 1) -> tuple[float, str]:
    """(seconds that measuring ``impl`` in the step's ``calls`` calls is expected to take here, where that figure
    comes from): the last qualification's measurement on this machine, else the known first use
    (``FIRST_USE_S``), else a PyTorch reference's ``REFERENCE_S`` per call, else the number of autotune configs of
    the kernel's package and ``BASE_S`` per call (each call's variant is a specialisation of its own)."""
    key = f"{spec.name}/{impl.name}"
    if key in history:
        return history[key], "measured here by an earlier run"
    if key in FIRST_USE_S:
        return FIRST_USE_S[key], "its first use on a cold H100"
    if impl.role == "reference":
        return REFERENCE_S * calls, "a PyTorch reference" + (f", {calls} calls" if calls > 1 else "")
    n = _autotune_configs(impl.module)
    return BASE_S * calls + CONFIG_S * n, f"{n} autotune configs to compile" + (f", {calls} calls" if calls > 1
                                                                                 else "")


def _rest_s(spec: OpSpec, impl, history: dict, calls: int = 1) -> float:
    """What measuring ``impl`` takes once its background compile is done (``REST_S``, else ``BACKGROUND_REST`` of
    its expected time)."""
    name = f"{spec.name}/{impl.name}"
    return REST_S.get(name, BACKGROUND_REST * expected_s(spec, impl, history, calls)[0])


def _compile_s(name: str, history: dict) -> float:
    """What compiling item ``name`` ("op/impl") takes in one process: its expected time less its measuring."""
    op, _, impl = name.partition("/")
    spec = get(op)
    return max(0.0, expected_s(spec, spec.impl(impl), history)[0] - _rest_s(spec, spec.impl(impl), history))


def background_expected(spec: OpSpec, impl, history: dict, calls: int, background) -> tuple[float, str]:
    """(seconds, where from) that an item compiling in ``background`` is expected to take from now: once its
    compiles are done (``background.done``, asked without waiting), only its measuring (``_rest_s``); before,
    also what is left of the compile — the items its subprocesses compile up to it (``background.ahead``), each
    ``_compile_s`` split over the shards, after ``BACKGROUND_SETUP_S``, less the time since they started; where
    subprocesses died before the item's line (``background.said``), their share of its compile, done here."""
    name = f"{spec.name}/{impl.name}"
    rest, since = _rest_s(spec, impl, history, calls), background.since(name)
    if background.done(name):
        said, total = background.said(name)
        if said == total:
            return rest, f"its measuring only: its background compile is done ({since:.0f} s after its start)"
        here = _compile_s(name, history) * (total - said) / max(total, 1)    # the share of the dead subprocesses
        return here + rest, (f"{total - said} of its {total} background subprocesses died: their share compiles "
                             f"here, {here:.1f} s, + {rest:.1f} s of measuring")
    shards = background.shards_for(name)
    compile_s = _group_compile_s(name, background, history)
    left = max(0.0, compile_s - since)
    return left + rest, (f"{left:.1f} s left of its background compile (≈{compile_s:.0f} s with {shards} "
                         f"processes, {since:.0f} s since their start) + {rest:.1f} s of measuring")


def _group_compile_s(name: str, background, history: dict) -> float:
    """Seconds after its group's start that item ``name``'s background compile is expected done:
    ``BACKGROUND_SETUP_S`` + the items its subprocesses compile up to it (``background.ahead``), each
    ``_compile_s`` split over the group's processes (``background.shards_for``); at least its measured
    ``BACKGROUND_DONE_S``."""
    shards = max(1, background.shards_for(name))
    return max(BACKGROUND_DONE_S.get(name, 0.0),
               BACKGROUND_SETUP_S + sum(_compile_s(n, history) for n in background.ahead(name)) / shards)


def _ready_order(plan: list, background, history: dict | None = None) -> list:
    """The plan with the items compiling in ``background`` moved after the others, in the order their compiles
    are expected done (``_group_compile_s`` after their group's start), whichever group compiles them: the lab
    group's short items before mamba-ssm's. ``_next`` then takes whichever is ready first."""
    if not background:
        return plan
    names, history = set(background.names()), history or {}
    named = [(f"{it[0].name}/{it[1].name}", it) for it in plan]
    return [it for n, it in named if n not in names] + [it for n, it in sorted(
        ((n, it) for n, it in named if n in names),
        key=lambda x: (_group_compile_s(x[0], background, history) - background.since(x[0]),
                       background.order(x[0])))]


def _groups_line(background, since: str) -> str:
    """"gate: compiling A, B in the background <since> (N processes, item by item)", a part per group of
    processes (mamba-ssm's, the lab group's) in the order they compile their items."""
    groups, seen = [], set()
    for name in background.names():
        if name not in seen:
            group = [n for n in background.group(name) if n in background.names()]
            seen.update(group)
            groups.append(f"{', '.join(group)} ({background.shards_for(name)} processes, item by item)"
                          if background.shards_for(name) > 1 else ", ".join(group))
    return f"gate: compiling {'; beside it '.join(groups)} in the background {since}"


def _next(todo: list, background, skip: set, say: Callable | None = None) -> tuple[int, float]:
    """(index of the item of ``todo`` to measure next, seconds waited to choose it): the first, unless it compiles
    in ``background`` and is not done yet — then whichever background item is done first
    (``Background.wait_any``; ``skip``: ops whose reference was deferred), so that a lab item is measured as soon
    as its group has compiled it, never kept behind mamba-ssm's longer compile (run 12 call 5). ``say``: a line
    before waiting (no progress bar: a run cut inside the wait shows what it waited for)."""
    names = [f"{s.name}/{i.name}" for s, i, *_ in todo]
    if not background or names[0] not in background.names() or background.done(names[0]):
        return 0, 0.0
    waiting = [n for n in names if n in background.names() and n.partition("/")[0] not in skip]
    if not waiting:
        return 0, 0.0
    if say is not None:
        say(f"gate: waiting for the first of {', '.join(waiting)} to finish compiling in the background")
    t0 = time.monotonic()
    return names.index(background.wait_any(waiting)), time.monotonic() - t0


def _late_peer(spec: OpSpec, impl, history: dict, deferred: set, calls: int = 1) -> bool:
    """A peer the last qualification deferred that a later run measures even though its op's lab kernels have
    verdicts (run 14: mamba-ssm's gated norm, 3 s, deferred behind the background items' reserve — never compared
    otherwise): one expected within ``LATE_PEER_S``, so that it fits beside the imports in any later run and is
    not planned and deferred again run after run; fla's (21–67 s cold) stay with the benchmark."""
    return impl.role == "peer" and f"{spec.name}/{impl.name}" in deferred and \
        expected_s(spec, impl, history, calls)[0] <= LATE_PEER_S


def _plan(shapes: dict, cuda: bool, known: Verdicts, force: bool, graph: bool = False,
          history: dict | None = None, deferred: set = frozenset()) -> tuple[list, list]:
    """([(spec, impl, fn or the import error, [Call])] to measure, [what is left out and why]).

    ``shapes``: {op: the step's ``Call``s (``step_calls``) or one spec shape tuple}. An op is qualified when one
    of its gated candidates (lab kernels, or for an op without any, its peers) has no valid verdict covering
    every call (a row at each call's label) in that timing mode in the per-machine manifest (``force``: always);
    then its reference, those candidates and its peers without one are measured in every call (a peer that has
    one is not measured again).
    Ordered so that a spent time budget costs the least: first every op's decisive pair (its reference and first
    choice: the first lab kernel, or for an op without one its first peer), cheapest pair first by
    ``expected_s`` (``history``: seconds measured here before) — so that an op with one cheap candidate, such
    as causal_conv1d, is never starved by a peer that autotunes for a minute; then the second candidates rank
    by rank; then the remaining peers. An op whose gated candidates all have verdicts is planned for its
    ``deferred`` peers that ``_late_peer`` admits, with its decisive pair measured again (its reference and first
    gated candidate: the peer is judged beside them on this run's rows, re-timed on a loss by ``_retime_losses``)."""
    history = history or {}
    pairs, out = [], []      # (expected s of the pair, spec order, the pair, further candidates, other peers)
    for op, value in shapes.items():
        spec = get(op)
        calls = [c for c in as_calls(op, value) if c.shape is not None]    # an unmatched call: never allowed
        if spec.bench is None or not calls:
            continue
        cands, left = _candidates(spec, cuda, graph)
        role = _gated_role(i for i, _ in cands)
        timing = _timing(spec, graph)
        todo = [(spec, i, fn, calls) for i, fn in cands
                if force or not all(known.has(op, i.name, c.label, timing) for c in calls)]
        gated = [t for t in todo if t[1].role == role]
        others = [t for t in todo if t[1].role != role] if gated else \
            [t for t in todo if _late_peer(spec, t[1], history, deferred, len(calls))]
        if not gated and not others:
            continue
        if not gated:            # late peers: the settled first choice measured again beside them
            gated = [(spec, i, fn, calls) for i, fn in cands if i.role == role][:1]
        out += left
        pair = [(spec, spec.reference, spec.reference.load(), calls)] + gated[:1]
        pairs.append((sum(expected_s(spec, it[1], history, len(calls))[0] for it in pair), len(pairs), pair,
                      gated[1:], others))
    pairs.sort(key=lambda p: p[:2])
    heads = [item for p in pairs for item in p[2]]
    seconds = [item for rank in itertools.zip_longest(*(p[3] for p in pairs)) for item in rank if item is not None]
    return heads + seconds + [item for p in pairs for item in p[4]], out


def _failed_row(spec: OpSpec, impl, call: Call, timing: str, err: Exception, device) -> dict:
    dtype = spec.bench.dtype if torch.device(device).type == "cuda" else torch.float32
    return {"op": spec.name, "impl": impl.name, "shape": call.label, "pass": "fwdbwd",
            "dtype": str(dtype)[6:], "timing_mode": timing, "ms": None, "errors": {}, "source_hash": op_hash(spec.name),
            "note": f"not importable: {type(err).__name__}: {err}"}


def _used_anyway(plan: list, path: Path, graph: bool) -> set[str]:
    """The planned peers of ops without a lab kernel that another manifest (not ``path``, the one being
    written) already allows for this step mode: training takes such a peer whether or not it is measured now."""
    others = Verdicts([p for p in (machine_path(), manifest_path()) if p != path], graph=graph)
    return {f"{spec.name}/{impl.name}" for spec, impl, _, _ in plan if impl.role == "peer" and
            not spec.role("lab") and others.verdict(spec.name, impl.name)[0]}


def _background_s() -> float:
    """The expected seconds from which an item compiles in the background: GROUNDTHINK_BACKGROUND_S, else
    ``BACKGROUND_S``."""
    import os
    env = os.environ.get("GROUNDTHINK_BACKGROUND_S", "").strip()
    try:
        return float(env) if env else BACKGROUND_S
    except ValueError:
        raise SystemExit(f"GROUNDTHINK_BACKGROUND_S must be a number of seconds; got {env!r}") from None


def _by_cost(items: list, history: dict) -> list:
    """Background items ``(op, impl, shape)`` in the order their subprocesses compile them: the longest first (its
    compile the largest share and its measuring the longest: mamba-ssm's; the lab items are compiled while the main
    process measures it)."""
    return sorted(items, key=lambda it: -expected_s(get(it[0]), get(it[0]).impl(it[1]), history)[0])


def _lab_peer(spec: OpSpec, impl) -> bool:
    """A peer of an op that has lab kernels: optional (the lab kernel is the alternative), so it never compiles in
    mamba-ssm's background group (fla_chunk's 67 s would queue before mamba-ssm's) and is deferred where it does
    not fit (``_run_plan``)."""
    return impl.role == "peer" and bool(spec.role("lab"))


def _groups(items: list, history: dict) -> tuple[list, list]:
    """The background items ``(op, impl, shape)`` of ``items`` split into (mamba-ssm's group: expected ≥
    ``_background_s()``, the longest first, ``_by_cost`` — never a peer of an op with lab kernels (``_lab_peer``);
    the lab group: lab kernels expected ≥ ``LAB_BACKGROUND_S``, however long, the shortest first, then
    ``precompile.WHOLE_ITEMS`` (torch.compile's peer) whatever their expected time, last — none while
    ``precompile.lab_shard_count()`` is 0: ``GROUNDTHINK_LAB_BACKGROUND=0`` or few cores)."""
    from groundthink.precompile import WHOLE_ITEMS, lab_shard_count

    def exp(it):
        spec = get(it[0])
        return expected_s(spec, spec.impl(it[1]), history, len(it[2]) if isinstance(it[2], list) else 1)[0]
    lab_on = lab_shard_count() > 0

    def whole(it):       # an Inductor compile (``precompile.WHOLE_ITEMS``): in the lab group, last
        return f"{it[0]}/{it[1]}" in WHOLE_ITEMS

    def in_lab(it):      # with the lab group on, a lab item never queues behind mamba-ssm, whatever its history
        return lab_on and (get(it[0]).impl(it[1]).role == "lab" or whole(it))
    long = [it for it in items if not in_lab(it) and not (_lab_peer(get(it[0]), get(it[0]).impl(it[1])) and
                                                          not whole(it)) and exp(it) >= _background_s()]
    lab = [it for it in items if in_lab(it) and (exp(it) >= LAB_BACKGROUND_S or whole(it))]
    return _by_cost(long, history), sorted(lab, key=lambda it: (whole(it), exp(it)))


def _start(into, long: list, lab: list):
    """Start ``_groups``' two groups: ``long`` in ``into`` (a new ``precompile.Background`` when None), ``lab`` in a
    group of ``lab_shard_count()`` processes of its own beside it. Returns the background (``into``, or None when
    nothing starts)."""
    from groundthink.precompile import Background, lab_shard_count
    if not (long or lab):
        return into
    if into is None:
        into = Background(long)     # ended at its time limit, its compiles would be redone here
    else:
        into.start(long)
    if lab:
        into.start(lab, shards=lab_shard_count())
    return into


def _background(plan: list, cuda: bool, parallel: bool, history: dict, into=None):
    """``precompile.Background`` compiling, from the start, each item expected to take ``_background_s()`` or more
    (mamba-ssm's first use) in subprocesses (one group of ``shard_count``, ``_by_cost``) and, with the lab group on
    (on by default), the lab items whose compiles dominate their time in a group of their own
    (``_groups``), so that the main process measures each after its compiles instead of doing them. ``into``: an
    early background (``early_background``) — the items it does not cover yet start in it. Returns ``into`` (or
    None) without a GPU or parallel compile, or with no such item.

    Run 9 compiled every lab kernel in one subprocess that reported once, after 26.1 s (its imports, then all at
    once): the first lab item waited its 20 s cap for it (65.5 s against run 8's 53.2); run 12 call 5 queued them
    behind mamba-ssm's 57 s in one group: all deferred. Now each item's line comes as soon as its own compiles are
    done, the lab items have processes of their own, the cheap items and the references are measured first, and
    the background items after them as they become ready (``_ready_order``, ``_next``)."""
    from groundthink.precompile import switched_on
    if not (cuda and switched_on(parallel)):
        return into
    have = set(into.names()) if into else set()
    items = [(s.name, i.name, [c.payload() for c in calls]) for s, i, fn, calls in plan
             if i is not s.reference and not isinstance(fn, Exception) and f"{s.name}/{i.name}" not in have]
    return _start(into, *_groups(items, history))


def early_background(ops, graph: bool, model: dict, path: Path | None = None):
    """The background compile of the qualification's long items (mamba-ssm's first use, the lab kernels whose
    compiles dominate), started before the qualification itself: train.py starts it before data and model (run
    11: mamba-ssm's subprocess needed 55 s and started 12.6 s after the start; the mamba2 item waited 16.6 s for it
    at the end of the qualification, 69.7 s). An item per gated candidate of ``ops`` (as ``_plan``'s: the lab
    kernels, or for an op without any its peers) that is installed, has no verdict at all for the step's mode in
    ``path`` (the per-machine manifest; a verdict for other calls: the qualification's own background covers the
    new ones) and is expected to take ``_background_s()`` or more; nothing is imported here. Their calls are recorded
    in the subprocesses (``model``: the run's model arguments, ``compile_item.model_calls``; an op the model does not
    call compiles nothing), the step's own strides included (mamba2's dt is a column slice: ``[dt rows 592]`` at
    GF-MH small). ``precompile.WHOLE_ITEMS`` (torch.compile's peer: an Inductor compile) start too where one of
    their op's gated candidates does, last in the lab group: their dry run fills Inductor's on-disk caches, the
    main process then loads. Pass the result to ``qualify`` (``background=``) and end it (``close()``) once
    qualify returns; None when there is nothing to start. With the lab group on (the default) the lab items
    above ``LAB_BACKGROUND_S`` start too, in processes of their own (``_groups``)."""
    from groundthink.precompile import WHOLE_ITEMS, switched_on
    if not switched_on():
        return None
    path = path or machine_path()
    history, _ = _history(load(path)[0])
    known, items = Verdicts([path]), []
    for op in ops:
        spec = get(op)
        cands = [i for i, fn in _candidates(spec, True, graph, load=False)[0]      # train.py: on a GPU only
                 if not isinstance(fn, Exception)]
        role = _gated_role(cands)
        unknown = [i for i in cands if not known.has(op, i.name, timing=_timing(spec, graph))]
        gated = [i for i in unknown if i.role == role]
        # torch.compile's dry run only where the op is qualified (a gated candidate without a verdict): else it
        # would compete with the imports every run for an item the qualification does not plan
        items += [(op, i.name, {"model": model}) for i in unknown if i in gated or
                  (gated and f"{op}/{i.name}" in WHOLE_ITEMS)]
    return _start(None, *_groups(items, history))


PRELOADS: list = []   # ``preload``'s threads not yet joined by ``qualify`` ([thread, seconds it took or None])


def preload(ops, graph: bool) -> None:
    """Import the qualification's candidates of ``ops`` (``_candidates``: the lab kernels and installed peers,
    mamba-ssm's and fla's package imports among them) on a thread now, beside data and model, instead of inside
    the gate's clock (run 12 call 6: "imports 8.5" of its 66.2 s). ``qualify`` joins it first and says both
    figures (what the thread took, what was left to wait for). Only with ``GROUNDTHINK_PRELOAD=1`` (train.py's
    ``early_background``; ``precompile.preload_knob`` says why not by default). An import that fails here fails
    again, said, in ``qualify``."""
    import threading

    def run():
        t0 = time.monotonic()
        for op in ops:
            try:
                _candidates(get(op), True, graph)
            except Exception:  # noqa: BLE001 - the main thread's own import says what is wrong
                pass
        entry[1] = time.monotonic() - t0

    entry = [threading.Thread(target=run, name="gate-preload", daemon=True), None]
    PRELOADS.append(entry)
    entry[0].start()


def _join_preloads() -> str:
    """Wait for ``preload``'s threads; "" or " (after N s of imports on a thread beside data and model)"."""
    took = []
    while PRELOADS:
        thread, _ = entry = PRELOADS.pop()
        thread.join()
        took.append(entry[1] or 0.0)
    return f" (after {sum(took):.1f} s of imports on a thread beside data and model)" if took else ""


def _anyway(spec: OpSpec, impl, deferred_before: set, used_anyway: set, in_background: set) -> str | None:
    """Why item ``impl`` of ``spec`` is measured even where its expected time does not fit (``_run_plan``), or None.
    A peer of an op with lab kernels (``_lab_peer``: fla's, torch.compile's) is optional — the op trains on its
    lab kernel meanwhile —, so "the last run deferred it" does not hold for it (fla's minutes would blow a later
    run's budget); only a compile already paid in the background (``precompile.WHOLE_ITEMS``) is waited for."""
    name, lab_peer = f"{spec.name}/{impl.name}", _lab_peer(spec, impl)
    if name in deferred_before and not lab_peer:
        return "the last run deferred it"
    if name in used_anyway:
        return "training uses it anyway: its compilation would move into the first step"
    if name in in_background:
        return ("its compile is under way in the background: measuring it now costs less than compiling it again "
                "in a later run (the op trains on its lab kernel meanwhile)" if lab_peer else
                "its compile is under way in the background: waiting for it costs less than training on the "
                "reference")
    return None


def _reserved(todo: list, history: dict, background, dropped: set) -> tuple[dict[str, float], float]:
    """({item: seconds of its measuring}, seconds until the last of their compiles is done) for the items of
    ``todo`` (the plan's items still to do) compiling in ``background``, measured whatever their estimate
    (``_anyway``; each ``background_expected`` = what is left of its compile + its measuring). An item not exempt
    fits only in what is left once their measuring is kept out of it, or in the time the main process would wait
    for their compiles anyway: a peer that fits by itself must not eat the time mamba-ssm's and the lab items'
    measuring needs (their compiles run beside the main process: counting them too would defer the cheap items
    that run 13 measured meanwhile). ``dropped``: ops whose items are not kept for (deferred references; the op
    whose reference is being decided: its items need it)."""
    names = set(background.names()) if background else set()
    kept, idle = {}, 0.0
    for s, i, _, shp in todo:
        if f"{s.name}/{i.name}" in names and s.name not in dropped:
            total = background_expected(s, i, history, len(shp), background)[0]
            kept[f"{s.name}/{i.name}"] = rest = min(total, _rest_s(s, i, history, len(shp)))
            idle = max(idle, total - rest)
    return kept, idle


def _run_plan(plan: list, timing: dict, device, say: Callable, progress: bool, deadline: float,
              history: dict | None = None, deferred_before: set | None = None, used_anyway: set | None = None,
              background=None, waits: dict | None = None):
    """Measure the plan's items in order (``timing``: op -> mode; a reference that fails: ``_reference_fallback``)
    within ``deadline`` (time.monotonic()). An item starts only if its expected time
    (``expected_s``; for a further candidate of an op, at least what its first candidate took) fits before the
    deadline; otherwise it is deferred to the next run, and so is the rest of its op when its reference is.
    Not deferred whatever its estimate (``_anyway``; the plan has put the cheap items before them): an item the
    previous qualification deferred (waiting makes it no cheaper; not a peer of an op with lab kernels), an item
    compiling in ``background`` (its compile is paid for; run 12 call 1 deferred mamba-ssm with its compile done
    and trained on the reference Mamba-2 at 2.4× the step time), and one in ``used_anyway`` — the peer that
    training uses anyway on another manifest's verdict (run 5: mamba-ssm, deferred here, then compiled in the
    training step's first forward and capture instead; measured here, the step reuses its compiled and tuned
    kernels). An item compiling in ``background`` is expected to take what is left of that compile (nothing once it
    is done) and its measuring (``background_expected``), and is measured after its subprocesses have finished it;
    the measuring of the items still to do that compile there is kept out of the budget an item not exempt must
    fit, unless it ends before their compiles would (``_reserved``); the line that says it is waited for past the
    budget says how far they are (``background.state``).
    A lab kernel slower than a peer at a call is then re-timed beside it (``_retime_losses``).
    Returns (rows, [(item, why)] deferred, {op: {impl: seconds}})."""
    from tqdm import tqdm
    history, deferred_before, used_anyway = history or {}, deferred_before or set(), used_anyway or set()
    rows, deferred, spent, first, dropped, timed = [], [], {}, {}, set(), {}
    in_background = set(background.names()) if background else set()
    bar = tqdm(total=len(plan), desc="gate", unit="impl", disable=not progress, dynamic_ncols=True)
    todo = list(plan)
    while todo:
        k, chose = _next(todo, background, dropped, None if progress else say)   # a background item: the first ready
        spec, impl, fn, shp = todo.pop(k)
        bar.update(1)
        op, name = spec.name, f"{spec.name}/{impl.name}"
        exp, source = expected_s(spec, impl, history, len(shp))
        if name in in_background:
            exp, source = background_expected(spec, impl, history, len(shp), background)
        elif impl is not spec.reference and op in first and name not in history:
            exp, source = max(exp, first[op]), "what its first candidate took"
        left = deadline - time.monotonic()
        if op in dropped:
            deferred.append((name, f"{op}/reference deferred"))
            continue
        anyway = _anyway(spec, impl, deferred_before, used_anyway, in_background)
        kept, idle = _reserved(todo, history, background, dropped | ({op} if impl is spec.reference else set())) \
            if anyway is None else ({}, 0.0)
        if anyway is None and exp > max(idle, left - sum(kept.values())):
            deferred.append((name, f"expected {exp:.1f} s ({source}), {max(left, 0):.1f} s of the budget left"
                             + (f", {sum(kept.values()):.1f} s of it kept for measuring {', '.join(kept)} (measured "
                                "anyway)" if kept else "")))
            if impl is spec.reference:
                dropped.add(op)
            continue
        if exp > left:
            say(f"gate: {name} expected {exp:.1f} s ({source}), {max(left, 0):.1f} s of the budget left; "
                f"measured anyway: {anyway}" + (f"; {background.state(name)}" if name in in_background else ""))
        bar.set_postfix_str(name, refresh=True)
        if not progress and exp >= 20:   # a long item: say so before it starts, so a run cut inside it shows which
            say(f"gate: {name} started (expected {exp:.1f} s: {source})")
        t1, c1, k1, waited = time.monotonic(), dict(COMPILE_STATS), dict(COMPILES), 0.0
        if name in in_background:      # wait for its own subprocesses, however long
            waited, what = background.wait(op, impl.name)
            waited += chose
            if waits is not None:
                waits[name] = waited
            say(f"gate: {name}: waited {waited:.1f} s for its background compile ({what})")
        if isinstance(fn, Exception):
            rows += [_failed_row(spec, impl, c, timing[op], fn, device) for c in shp]
        else:
            got = [measure(spec, impl.name, fn, c, device, timing[op]) for c in shp]
            rows += got
            timed[(op, impl.name)] = (spec, fn, shp)
            if impl is spec.reference:
                rows += _reference_fallback(spec, fn, shp, got, timing[op], device, say)
        spent.setdefault(op, {})[impl.name] = time.monotonic() - t1 + chose
        if not progress:   # no bar: one line per item, so a run cut short still shows where its time went
            say(f"gate: {name} measured in {spent[op][impl.name]:.1f} s (expected {exp:.1f} s: {source})"
                + _compiled_since(c1) + compiles_since(k1))
        if impl is not spec.reference:
            first.setdefault(op, spent[op][impl.name] - waited)
    bar.close()
    retimed = _retime_losses(rows, timed, device, say, deadline)
    if retimed:
        spent.setdefault(RETIMES, {})["lab vs peer"] = retimed
    return rows, deferred, spent


def _retime_losses(rows: list[dict], timed: dict, device, say: Callable, deadline: float) -> float:
    """Where a correct lab kernel's row is slower than a correct peer's at the same call by more than ``NOISE``,
    both are timed once more (``retime``) and each row keeps the faster of its two times: one slow sample (a clock
    dip, an unlucky graph pool) does not hand the op to the peer (run 14: gate_norm_residual/triton timed 0.0232 ms
    in one first use and 0.0311 in the next at the same call, beside compile's 0.0297 / 0.0272: the second run
    trained on compile). Within a pair neither side gets a try the other lacks (a row is re-timed at most once,
    and a pair keeps its first times unless both re-times ran); only a lab kernel's loss is re-examined, as the
    ``NOISE`` margin already leans to the lab kernel. It cannot undo a slow config that an autotuner picked and
    cached. ``timed``: (op, impl) -> (spec, fn, calls) of this run's measured items. Only while ``RETIME_S`` of
    the budget is left; otherwise the line says it was not re-timed. Returns the seconds its re-times took (0.0:
    none; run 14's final first uses printed "re-times 0.0" for a pass that re-timed nothing)."""
    t0, done = time.monotonic(), set()
    index = {(r["op"], r["impl"], r["shape"], r["pass"], r["timing_mode"]): r for r in rows if r.get("ms")}
    for (op, impl, shape, pas, mode), lab in index.items():
        if (op, impl) not in timed or timed[(op, impl)][0].impl(impl).role != "lab":
            continue
        spec = timed[(op, impl)][0]
        for peer in spec.role("peer"):
            other = index.get((op, peer.name, shape, pas, mode))
            if other is None or (op, peer.name) not in timed or not lab["ms"] > other["ms"] * (1 + NOISE) \
                    or not _within(spec, lab) or not _within(_bound_of(spec, lab["dtype"]), other) \
                    or id(lab) in done or id(other) in done:
                continue
            was = f"{op}/{impl} slower than {peer.name} at {shape} {pas} ({lab['ms']:.4g} vs {other['ms']:.4g} ms)"
            if deadline - time.monotonic() < RETIME_S:
                say(f"gate: {was}: not re-timed, {max(deadline - time.monotonic(), 0):.1f} s of the budget left")
                continue
            again = []
            for row in (lab, other):
                _, fn, calls = timed[(op, row["impl"])]
                call = next(c for c in calls if as_calls(op, c)[0].label == shape)
                try:
                    again.append(retime(spec, fn, call, device, mode))
                except Exception as e:  # noqa: BLE001 - both keep their first times: no one-sided second try
                    say(f"gate: {was}: the re-time of {row['impl']} failed ({type(e).__name__}); both keep their "
                        "first times")
                    break
            done.update((id(lab), id(other)))
            if len(again) < 2:
                continue
            for row, (ms, reps) in zip((lab, other), again):
                if ms < row["ms"]:
                    row["ms"], row["reps"] = ms, reps
            say(f"gate: {was}: both re-timed ({again[0][0]:.4g} vs {again[1][0]:.4g} ms), the faster of two each: "
                f"{lab['ms']:.4g} vs {other['ms']:.4g} ms")
    return time.monotonic() - t0 if done else 0.0


def _reference_fallback(spec: OpSpec, fn, calls: list, got: list[dict], timing: str, device, say) -> list[dict]:
    """The reference's rows ``got`` (in ``timing``) have failed calls: where the graph capture failed, the
    reference is timed eagerly and that time stands in for it (``_entry``: the candidates stay timed as
    CUDA-graph replays, the captured step could not hold the reference anyway); where it fails eagerly as well,
    nothing can be timed against it in that call: one line says so (the verdicts then say "no timing evidence
    (the reference fails at …)"). Returns the extra rows."""
    bad_rows = [r for r in got if r["ms"] is None]
    if not bad_rows:
        return []
    op, note = spec.name, bad_rows[0]["note"][:120]
    extra = [measure(spec, spec.reference.name, fn, c, device, "eager") for c, r in zip(calls, got)
             if r["ms"] is None] if timing == "graph" else []
    broken = [r for r in (extra or bad_rows) if r["ms"] is None]     # extra: in graph timing, bad_rows' eager times
    if broken:
        say(f"gate {op}: the reference fails in the step's call {broken[0]['shape']} ({broken[0]['note'][:120]}): "
            f"no {op} implementation can be timed against it there, none is allowed; the step keeps the "
            f"reference (fix {spec.reference.module.replace('.', '/')}.py to accept this call)")
    else:
        say(f"gate {op}: the reference could not be captured ({note}); its eager time stands in for it (the "
            f"candidates are still timed as CUDA-graph replays)")
    return extra


def _compiled_since(before: dict) -> str:
    """What the parallel compile did since ``before`` (a copy of ``COMPILE_STATS``), for the per-item line."""
    d = {k: COMPILE_STATS[k] - before[k] for k in COMPILE_STATS}
    if not (d["keys"] or d["errors"]):
        return ""
    return (f"; {d['configs']} configs of {d['keys']} autotuned kernels compiled in parallel in {d['seconds']:.1f} s"
            + (f", {d['errors']} fell back to Triton's own path" if d["errors"] else ""))


def qualify(shapes: dict[str, tuple], *, cuda: bool | None = None, path: Path | None = None, device=None,
            say: Callable[[str], None] = print, progress: bool = True, force: bool = False,
            budget_s: float = BUDGET_S, graph: bool = False, parallel: bool = True, background=None) -> dict:
    """Gate on first use: for every op in ``shapes`` (op -> the step's ``Call``s, ``step_calls``: each distinct
    variant the training step calls at its shape; or one spec shape tuple) whose lab candidates (or, for an op
    without lab kernels, its installed peers) have no valid verdict covering every call in the per-machine
    manifest (``force``: all of them), measure the reference, those candidates and the installed peers in each
    call (``measure``: errors of the output and every gradient vs float64, fwd+bwd
    time, extra peak memory; ``graph``: the training step will be captured, so CUDA-graph timing and graph-safe
    implementations only), decide with ``rule`` and write the per-machine manifest (``machine_path()``;
    ``path`` overrides).

    Budget: ``budget_s`` (60 s) for all ops together. The cheapest decisive pairs go first (``_plan``); an item
    whose expected time (``expected_s``: measured here before, a known first use, or its autotune configs) does
    not fit what is left is deferred, said with the reason and measured by the next run, which runs it whatever
    its estimate (``_run_plan``); the op keeps its current choice meanwhile (train.py says which, in one line).
    Every autotuned kernel compiles all its configs in parallel before it benchmarks them
    (``groundthink.precompile``; ``parallel=False``: one after another, as Triton alone); the items whose compiles
    dominate (expected ≥ ``BACKGROUND_S``) compile in background subprocesses from the start and are measured
    after the cheap ones, as they become ready (``_ready_order``; expected: ``background_expected``). To stay in
    it: timing reps sized to the op (``_time_ms``: about ``TIME_BOX_MS`` of timed work, one call for a slow reference),
    the memory figure taken from a timed call, every op's first choice before any second candidate, peers with a
    verdict not measured again, implementations that cannot be used in the step (not graph-safe while it is
    captured) not timed; a lab kernel that lost to a peer is re-timed beside it only while ``RETIME_S`` is left
    (``_retime_losses``: its seconds are the "re-times" entry of the per-op line). Not cut: the errors vs
    float64 (at the spec's ``err_shape``), the warm-up (compilation, autotuning) of every candidate. A progress
    bar shows the implementation being measured; the time of each op is said at the end. Returns the new entries
    ({op: {impl: entry}}). ``cuda`` and ``device`` may be injected (tests: the interpreter on CPU).
    ``background``: the long items' compile already started (``early_background``; its caller ends it: train.py's
    ``build_run``); None: started here (``_background``) and ended here."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = path or machine_path()
    t0 = time.monotonic()                       # the budget counts the imports of the candidates too
    preloaded = _join_preloads()
    for op, value in shapes.items():
        for c in as_calls(op, value):
            if c.shape is None:
                say(f"gate: {op}: the step makes a call that kernels/{op}/spec.py's model_shape does not describe "
                    f"({c.why}); only the reference may run it")
    history, deferred_before = _history(load(path)[0])
    plan, left = _plan(shapes, cuda, Verdicts([path]), force, graph, history, deferred_before)
    if not plan:
        return {}
    timing = {spec.name: _timing(spec, graph) for spec, *_ in plan}
    say(f"gate: qualifying {', '.join(sorted(timing))} on this machine (errors vs float64, "
        f"{'CUDA-graph' if graph else 'eager'} fwd+bwd time vs the reference and installed peers, "
        f"≤ {budget_s:g} s) -> {path}" + (f"; not timed: {', '.join(left)}" if left else ""))
    imports = time.monotonic() - t0
    from groundthink.precompile import counting_compiles, parallel_autotune
    c0 = dict(COMPILE_STATS)
    early = background is not None
    background = _background(plan, cuda, parallel, history, into=background)
    plan, waits = _ready_order(plan, background, history), {}
    if background:
        say(_groups_line(background, "since the start" if early else "meanwhile"))
    try:
        with parallel_autotune(enabled=parallel), counting_compiles():
            rows, deferred, spent = _run_plan(plan, timing, device, say, progress, t0 + budget_s, history,
                                              deferred_before, _used_anyway(plan, path, graph), background, waits)
    finally:
        if background and not early:    # only the one started here: an early one is its caller's to end
            background.close()
    for name, why in deferred:
        say(f"gate: {name} deferred to the next run: {why}")
    if _compiled_since(c0):
        say(f"gate: qualification{_compiled_since(c0)}")
    total, waited = time.monotonic() - t0, sum(waits.values())
    say(f"gate: seconds per op: imports {imports:.1f}{preloaded}; " + "; ".join(
        f"{op} {sum(v.values()):.1f} ({', '.join(f'{i} {t:.1f}' for i, t in v.items())})"
        for op, v in spent.items()) + f"; total {total:.1f} s of ≤ {budget_s:g} s = imports {imports:.1f} + "
        f"measuring {total - imports - waited:.1f} + waiting for background compiles {waited:.1f}")
    ops = evidence([dict(r, errors=json.dumps(r["errors"])) for r in rows])
    notes = {(r["op"], r["impl"], r["timing_mode"]): r["note"] for r in rows if r.get("note")}
    for op, impls in ops.items():
        for impl, modes in impls.items():
            for mode, e in modes.items():
                if (op, impl, mode) in notes:
                    e["failed"].append(notes[(op, impl, mode)])
                    e["allowed"], e["reason"] = rule(e)
                say(f"gate {op}/{impl} ({mode} step): {e['reason']}")
    write(ops, path, source="qualify", history={
        "seconds": {f"{op}/{i}": t for op, v in spent.items() if op != RETIMES for i, t in v.items()},
        "deferred": [name for name, _ in deferred]})
    say(f"gate: per-machine manifest -> {path}")
    return ops


def deferred_notes(ops, path: Path | None = None) -> list[str]:
    """One line per op whose qualification the last run deferred and that has no verdict since (in either step
    mode): which implementation it uses instead (``ops``: the ``OpSet`` resolved after the qualification) and
    why."""
    path = path or machine_path()
    history, deferred = _history(load(path)[0])
    known = Verdicts([path])
    by_op: dict[str, list[str]] = {}
    for name in sorted(deferred):
        op, _, impl = name.partition("/")
        if impl != "reference" and any(known.has(op, impl, timing=m) for m in TIMINGS):     # measured since
            continue
        by_op.setdefault(op, []).append(name)
    return [f"gate: {op} uses {ops.choices[op].impl} this run ({ops.choices[op].reason.removeprefix('gate: ')}); "
            f"{_when_measured(op, names, known, history, deferred)}" for op, names in by_op.items()
            if op in ops.choices]


def _when_measured(op: str, names: list[str], known: Verdicts, history: dict | None = None,
                   deferred: set = frozenset()) -> str:
    """"A, B deferred, measured by the next run" — or, for a peer of an op whose lab kernels all have verdicts
    that ``_late_peer`` does not admit (expected beyond ``LATE_PEER_S``), "measured when the op re-qualifies"."""
    spec, history = get(op), history or {}
    labs, peers = spec.role("lab"), {i.name for i in spec.role("peer")}
    settled = bool(labs) and all(any(known.has(op, i.name, timing=m) for m in TIMINGS) for i in labs)
    later = [n for n in names if settled and n.partition("/")[2] in peers
             and not _late_peer(spec, spec.impl(n.partition("/")[2]), history, deferred)]
    now = [n for n in names if n not in later]
    return "; ".join(f"{', '.join(group)} deferred, {when}" for group, when in
                     ((now, "measured by the next run"), (later, f"measured when {op} re-qualifies")) if group)
