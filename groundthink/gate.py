"""The gate: which implementation of each op training may use on this GPU — the rule, the evidence, the
verdict and the manifest file, in one place. The benchmarks (``pytest bench/ --benchmark``) and the
qualification on first use (``qualify``) both produce evidence rows; ``evidence`` turns rows into manifest
entries; ``rule`` decides; ``Verdicts`` reads the manifests back, re-checks everything and ``choose``s.

Rule (``rule``), per implementation, on its recorded evidence:
* correct: every output's and gradient's relative error vs float64 checked and within the op's bound
  (``OpSpec.bound``), at every shape checked, and no run failed; a wrong kernel is denied whatever its speed;
* faster than the reference at every timed shape, with no more extra peak memory;
* a lab kernel must also be no slower than every correct installed peer timed at the same shape (within
  ``NOISE``); where a peer wins, the lab kernel is denied and ``choose`` takes the peer, saying so.
``choose`` takes the first allowed lab candidate (the spec's preference order), else the allowed peer with the
best worst-case speedup, else the reference, and says why.

Fail closed (``Verdicts.verdict``): a missing, unreadable or malformed manifest, another GPU / torch / triton
(or a peer's package version), an entry whose ``allowed`` is not exactly ``true``, whose reason or recorded
decision disagrees with the rule re-applied to its evidence, or whose ``source_hash`` is absent or differs from
the op's current sources, all mean "not allowed", with a one-line reason.

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
     "ops": {op: {impl: {"allowed": bool, "reason": str, "role": str, "dtype": str, "bound": float,
                         "errors": {name: err}, "failed": [str], "source_hash": str, "sources": [path],
                         "shapes": [{"shape", "ms", "ref_ms", "speedup", "peak_mb", "ref_peak_mb",
                                     "peer_ms": {peer: ms}}]}}}}
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from groundthink.device import gpu_name, gpu_slug, versions
from groundthink.spec import ROOT, OpSpec, get, specs

NOISE = 0.03          # a lab kernel counts as "no slower" than a peer up to 3% slower (timing noise)
MEM_SLACK_MB = 1.0    # extra peak memory allowed over the reference: 0.1% + 1 MB
PEER_PACKAGES = ("fla", "mamba_ssm", "causal_conv1d")
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

def rule(entry: dict) -> tuple[bool, str]:
    """Apply the gate rule to one implementation's recorded evidence (see the module docstring)."""
    errors, bound = entry.get("errors") or {}, entry.get("bound")
    if not errors:
        return False, "denied: no correctness check completed"
    bad = sorted(k for k, v in errors.items() if not v <= bound)
    failed = entry.get("failed") or []
    if bad or failed:
        notes = ([f"relative error above {bound:g} in {', '.join(bad)}"] if bad else []) + \
                ([f"failed: {'; '.join(failed)}"] if failed else [])
        return False, "denied: fails correctness (" + "; ".join(notes) + ")"
    shapes = entry.get("shapes") or []
    if not shapes:
        return False, "denied: no timing evidence"
    slower = [s["shape"] for s in shapes if not s["ms"] < s["ref_ms"]]
    if slower:
        return False, f"denied: not faster than the reference at {', '.join(slower)}"
    fatter = [s["shape"] for s in shapes if s.get("peak_mb") is not None and s.get("ref_peak_mb") is not None
              and s["peak_mb"] > s["ref_peak_mb"] * 1.001 + MEM_SLACK_MB]
    if fatter:
        return False, f"denied: more peak memory than the reference at {', '.join(fatter)}"
    peers = sorted({p for s in shapes for p in s.get("peer_ms", {})})
    if entry.get("role") == "lab":
        beaten = [f"{p} at {s['shape']} ({pms:.4g} vs {s['ms']:.4g} ms)" for s in shapes
                  for p, pms in sorted(s.get("peer_ms", {}).items()) if s["ms"] > pms * (1 + NOISE)]
        if beaten:
            return False, "denied: slower than peer " + ", ".join(beaten)
    worst = min(s["ref_ms"] / s["ms"] for s in shapes)
    vs = f", no slower than {', '.join(peers)}" if peers and entry.get("role") == "lab" else ""
    return True, f"allowed: correct, ≥{worst:.1f}× the reference, no more memory{vs}"


# --------------------------------------------------------------------------------------------- evidence

def _row_errors(r: dict) -> dict:
    e = r.get("errors") or {}
    return json.loads(e) if isinstance(e, str) else dict(e)


def _entry(spec: OpSpec, impl: str, mine: list[dict], rows: list[dict]) -> dict:
    hashes = sorted({r.get("source_hash") or "" for r in mine})
    dtype = mine[0]["dtype"]
    bound = spec.bound(getattr(torch, dtype, torch.bfloat16))
    errors: dict[str, float] = {}
    failed = [f"{r['shape']} {r['pass']}" for r in mine if not r.get("ms")]
    for r in mine:
        for k, v in _row_errors(r).items():
            errors[k] = max(errors.get(k, 0.0), float(v))
    if len(hashes) > 1:
        failed.append("rows measured by different versions of the sources")
    same = [r for r in rows if r["op"] == spec.name and (r.get("source_hash") or "") == hashes[0] and r.get("ms")]
    refs = {(r["shape"], r["pass"]): r for r in same if r["impl"] == spec.reference.name}
    peer_names = {i.name for i in spec.role("peer")} - {impl}
    shapes = []
    for r in mine:
        rr = refs.get((r["shape"], r["pass"]))
        if not r.get("ms") or rr is None:
            continue
        peer_ms = {p["impl"]: p["ms"] for p in same if p["impl"] in peer_names and
                   (p["shape"], p["pass"]) == (r["shape"], r["pass"]) and
                   all(v <= bound for v in _row_errors(p).values()) and _row_errors(p)}
        shapes.append({"shape": f"{r['shape']} {r['pass']}", "ms": r["ms"], "ref_ms": rr["ms"],
                       "speedup": rr["ms"] / r["ms"], "peak_mb": r.get("peak_mb"),
                       "ref_peak_mb": rr.get("peak_mb"), "peer_ms": peer_ms})
    entry = {"role": spec.impl(impl).role, "dtype": dtype, "bound": bound, "errors": errors, "failed": failed,
             "shapes": shapes, "source_hash": hashes[0] or None, "sources": op_sources(spec.name)}
    entry["allowed"], entry["reason"] = rule(entry)
    return entry


def evidence(rows: list[dict]) -> dict:
    """Per op and non-reference implementation: the manifest entry (evidence + verdict) built from result rows
    (the benchmarks' or ``qualify``'s). Rows of ops without a spec (training) are ignored."""
    known = specs()
    ops: dict = {}
    for op, impl in sorted({(r["op"], r["impl"]) for r in rows if r["op"] in known}):
        spec = known[op]
        if impl == spec.reference.name or impl not in {i.name for i in spec.impls}:
            continue
        mine = [r for r in rows if r["op"] == op and r["impl"] == impl]
        ops.setdefault(op, {})[impl] = _entry(spec, impl, mine, rows)
    return ops


# ------------------------------------------------------------------------------------------------- files

def manifest_path(slug: str | None = None) -> Path:
    """The published evidence of this GPU: profiles/<slug>/gates.json (GROUNDTHINK_MANIFEST overrides)."""
    override = os.environ.get("GROUNDTHINK_MANIFEST")
    return Path(override) if override else ROOT / "profiles" / (slug or gpu_slug()) / "gates.json"


def machine_path(slug: str | None = None) -> Path:
    """The per-machine manifest written by ``qualify`` (outside the repository)."""
    base = os.environ.get("GROUNDTHINK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "groundthink")
    return Path(base) / (slug or gpu_slug()) / "gates.json"


def _versions() -> dict:
    v = versions()
    return {k: v[k] for k in ("torch", "triton", "cuda", *PEER_PACKAGES) if k in v}


def meta(source: str = "bench") -> dict:
    hashes = {op: op_hash(op) for op in specs()}
    return {"gpu": gpu_name(), "slug": gpu_slug(), "versions": _versions(),
            "kernel_hash": _hash_files(sorted({f for op in specs() for f in op_sources(op)}), ROOT),
            "op_hashes": hashes, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source}


def _same_machine(m: dict, now: dict) -> list[str]:
    problems = []
    if m.get("slug") != now["slug"]:
        problems.append(f"measured on {m.get('gpu')}, this is {now['gpu']}")
    for key in ("torch", "triton"):
        if (m.get("versions") or {}).get(key) != now["versions"][key]:
            problems.append(f"{key} {(m.get('versions') or {}).get(key)} → {now['versions'][key]}")
    return problems


def write(ops: dict, path: Path | None = None, source: str = "bench") -> Path:
    """Write the manifest atomically. Entries already in the file are kept when they were measured on this GPU
    with these torch/triton versions (each carries its own source hash, so it goes stale on its own)."""
    path = path or manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    current = {"meta": meta(source), "ops": {}}
    old, status = load(path)
    if old is not None and not _same_machine(old.get("meta") or {}, current["meta"]):
        current["ops"] = {op: dict(impls) for op, impls in (old.get("ops") or {}).items() if isinstance(impls, dict)}
    for op, impls in ops.items():
        current["ops"].setdefault(op, {}).update(impls)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


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

def _check_entry(entry) -> str | None:
    """None if the entry is well formed, else what is wrong."""
    if not isinstance(entry, dict):
        return "entry is not an object"
    if not isinstance(entry.get("reason"), str):
        return "no reason recorded"
    if not isinstance(entry.get("errors"), dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry["errors"].values()):
        return "errors must map names to numbers"
    if not isinstance(entry.get("bound"), (int, float)) or not isinstance(entry.get("shapes"), list):
        return "bound or shapes missing"
    if not isinstance(entry.get("failed", []), list) or not all(isinstance(x, str) for x in entry.get("failed", [])):
        return "failed must be a list of strings"
    for s in entry["shapes"]:
        if not isinstance(s, dict) or not isinstance(s.get("shape"), str) or not all(
                isinstance(s.get(k), (int, float)) and s[k] > 0 for k in ("ms", "ref_ms")):
            return "a shape row lacks a positive ms / ref_ms"
        if not isinstance(s.get("peer_ms", {}), dict):
            return "peer_ms must be an object"
    return None


def verdict_of(data: dict | None, status: str, op: str, impl: str, root: Path = ROOT) -> tuple[bool, str]:
    """Whether one manifest lets ``impl`` of ``op`` into training here, and why (fails closed)."""
    if data is None or status != "ok":
        return False, status
    try:
        spec = get(op)
        role = spec.impl(impl).role
    except KeyError as e:
        return False, str(e).strip("'\"")
    entry = (data["ops"].get(op) or {}).get(impl) if isinstance(data["ops"].get(op), dict) else None
    if entry is None:
        return False, f"no verdict for {op}/{impl}"
    bad = _check_entry(entry)
    if bad:
        return False, f"malformed verdict for {op}/{impl}: {bad}"
    if entry.get("source_hash") is None:
        return False, f"verdict for {op}/{impl} records no source hash — re-run the benchmarks"
    if entry["source_hash"] != op_hash(op, root):
        return False, f"stale: sources of {op} ({', '.join(op_sources(op, root))}) changed since the measurement"
    pkg = spec.impl(impl).module.split(".")[0]
    if pkg in PEER_PACKAGES and (data["meta"].get("versions") or {}).get(pkg) != versions().get(pkg):
        return False, f"stale: {pkg} {(data['meta'].get('versions') or {}).get(pkg)} → {versions().get(pkg)}"
    ok, why = rule(dict(entry, role=role))
    if entry.get("allowed") is not ok or not entry["reason"].startswith("allowed" if ok else "denied"):
        return False, (f"inconsistent verdict for {op}/{impl}: recorded allowed={entry.get('allowed')!r} "
                       f"({entry['reason'][:60]}), the rule says {why}")
    return ok, why


_UNDECIDED = ("no manifest", "no verdict", "stale", "unreadable")   # reasons that defer to the next manifest


class Verdicts:
    """The verdicts of this machine's manifests: the per-machine one (qualification here, at the model's
    shapes) first, the published one second. The first manifest with a verdict for an implementation decides
    (a malformed or inconsistent one decides too: not allowed); missing, stale and unreadable ones defer."""

    def __init__(self, paths: list[Path] | None = None):
        self.paths = paths if paths is not None else [machine_path(), manifest_path()]
        self.loaded = [(p, *load(p)) for p in self.paths]

    def _decide(self, op: str, impl: str) -> tuple[bool, str, dict | None]:
        """(allowed, why, the valid entry or None)."""
        whys = []
        for path, data, status in self.loaded:
            ok, why = verdict_of(data, status, op, impl)
            if ok or not why.startswith(_UNDECIDED):
                valid = ok or why.startswith("denied")
                return ok, f"{why} [{_show(path)}]", data["ops"][op][impl] if valid else None
            whys.append(why)
        return False, "; ".join(dict.fromkeys(whys)) or "no manifest", None

    def verdict(self, op: str, impl: str) -> tuple[bool, str]:
        ok, why, _ = self._decide(op, impl)
        return ok, why

    def has(self, op: str, impl: str, shape: str | None = None) -> bool:
        """A valid verdict (allowed or denied) exists; with ``shape`` (a spec's ``shape_str``), one measured at
        that shape."""
        _, _, entry = self._decide(op, impl)
        if entry is None or shape is None:
            return entry is not None
        return any(x.startswith(shape + " ") for x in [s["shape"] for s in entry["shapes"]] + entry.get("failed", []))

    def speed(self, op: str, impl: str) -> float:
        """The worst speedup over the reference recorded by the valid verdict of ``impl`` (0 without one)."""
        ok, _, entry = self._decide(op, impl)
        return min(s["speedup"] for s in entry["shapes"]) if ok else 0.0

    def choose(self, spec: OpSpec, usable: Callable[[str], bool]) -> tuple[str, str]:
        """(implementation, why): the best proven implementation of ``spec``'s op; ``usable(impl)``: imports
        and runs here."""
        whys = []
        for impl in spec.role("lab"):
            ok, why = self.verdict(spec.name, impl.name)
            if ok and usable(impl.name):
                return impl.name, f"gate: {why}"
            whys.append(f"{impl.name}: {why}" if ok else f"{impl.name} {why}")
        best = None
        for impl in spec.role("peer"):
            ok, why = self.verdict(spec.name, impl.name)
            if ok and usable(impl.name):
                worst = self.speed(spec.name, impl.name)
                if best is None or worst > best[0]:
                    best = (worst, impl.name, why)
        if best is not None:
            lab = f" (lab: {'; '.join(whys)})" if whys else ""
            return best[1], f"gate: peer {best[1]} {best[2]}{lab}"
        return spec.reference.name, "gate: " + ("; ".join(whys) if whys else "no qualified implementation")


# ------------------------------------------------------------------------------------- gate on first use

def _time_ms(fn: Callable, cuda: bool, reps: int = 5) -> float:
    """Median of ``reps`` timed calls of a warmed-up ``fn`` (CUDA events on a GPU, host clock otherwise)."""
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_mb(fn: Callable, cuda: bool) -> float | None:
    if not cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _grad_outputs(res) -> list[torch.Tensor]:
    return [o for o in (res if isinstance(res, (tuple, list)) else (res,))
            if isinstance(o, torch.Tensor) and o.requires_grad]


def fwd_bwd_step(fn: Callable, inputs: dict, seed: int = 0) -> tuple[Callable, list[torch.Tensor]]:
    """A forward + backward of ``fn(**inputs)`` with fixed random cotangents; returns (step, the leaves whose
    ``.grad`` a caller clears between calls)."""
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    outs = _grad_outputs(fn(**inputs))
    dev = outs[0].device
    gen = torch.Generator(device=dev).manual_seed(seed)
    cots = [torch.randn(o.shape, generator=gen, device=dev, dtype=torch.float32).to(o.dtype) for o in outs]
    del outs
    for t in leaves:
        t.grad = None

    def step():
        torch.autograd.backward(_grad_outputs(fn(**inputs)), cots)

    return step, leaves


def measure(spec: OpSpec, impl: str, fn: Callable, shp: tuple, device) -> dict:
    """One evidence row of ``impl`` at shape ``shp``, fwd+bwd: errors of the output and every gradient vs the
    float64 reference (at the spec's error shape), time and extra peak memory (at ``shp``). On a CUDA device
    in the spec's dtype with CUDA-event timing; elsewhere (the interpreter) in float32 by the host clock."""
    from groundthink.harness import compare
    b = spec.bench
    cuda = torch.device(device).type == "cuda"
    dtype = b.dtype if cuda else torch.float32
    row = {"op": spec.name, "impl": impl, "shape": b.shape_str(*shp), "pass": "fwdbwd", "dtype": str(dtype)[6:],
           "ms": None, "peak_mb": None, "errors": {}, "source_hash": op_hash(spec.name), "note": ""}
    try:
        if impl != spec.reference.name:
            err = b.err_shape(*shp) if b.err_shape else shp
            ref = spec.reference.load()
            row["errors"] = compare(fn, ref, b.make_inputs(*err, True, dtype=dtype, seed=1, device=device))
        step, leaves = fwd_bwd_step(fn, b.make_inputs(*shp, True, dtype=dtype, device=device))

        def run():
            for t in leaves:
                t.grad = None
            step()

        run()                                   # autotuning / compilation outside the memory and time figures
        row["peak_mb"] = _peak_mb(run, cuda)
        row["ms"] = _time_ms(run, cuda)
    except Exception as e:  # noqa: BLE001 - recorded: the rule denies a kernel that fails to run
        row["note"] = f"{type(e).__name__}: {str(e)[:200]}"
        row["ms"] = None
    return row


def _plan(shapes: dict, cuda: bool, known: Verdicts, force: bool) -> list[tuple]:
    """(spec, impl, fn or the import error, shape) to measure: the ops whose lab candidates (or, without lab
    kernels, installed peers) lack a valid verdict. Ordered so that a spent time budget costs the least: every
    op's reference and first lab candidate, then the second candidates, and so on, peers last."""
    heads, tails, peers = [], [], []
    for op, shp in shapes.items():
        spec = get(op)
        cands = []
        for impl in spec.impls:
            if impl.role == "reference" or not impl.runs_here(cuda):
                continue
            try:
                cands.append((impl, impl.load()))
            except Exception as e:  # noqa: BLE001 - an absent peer is no candidate; an absent lab kernel fails
                if impl.role == "lab":
                    cands.append((impl, e))
        gated = [i for i, _ in cands if i.role == "lab"] or [i for i, _ in cands]
        if spec.bench is None or not gated or (
                not force and all(known.has(op, i.name, spec.bench.shape_str(*shp)) for i in gated)):
            continue
        labs = [(spec, impl, fn, shp) for impl, fn in cands if impl.role != "peer"]
        peers += [(spec, impl, fn, shp) for impl, fn in cands if impl.role == "peer"]
        heads += [(spec, spec.reference, spec.reference.load(), shp)] + labs[:1]
        tails.append(labs[1:])
    seconds = [item for rank in itertools.zip_longest(*tails) for item in rank if item is not None]
    return heads + seconds + peers


def qualify(shapes: dict[str, tuple], *, cuda: bool | None = None, path: Path | None = None, device=None,
            say: Callable[[str], None] = print, progress: bool = True, force: bool = False,
            budget_s: float = 60.0) -> dict:
    """Gate on first use: for every op in ``shapes`` (op -> the spec's shape tuple, e.g. ``model_shapes``)
    whose lab candidates (or, for an op without lab kernels, its installed peers) have no valid verdict at that
    shape in the per-machine manifest (``force``: all of them), measure the reference, every lab candidate and
    every installed peer at that shape (``measure``: errors of the output and every gradient vs float64,
    fwd+bwd time, extra peak memory), decide with ``rule`` and write the per-machine manifest
    (``machine_path()``; ``path`` overrides).
    Peers are measured last; what would start after ``budget_s`` seconds is skipped and said. Returns the new
    entries ({op: {impl: entry}}). ``cuda`` and ``device`` may be injected (tests: the interpreter on CPU)."""
    from tqdm import tqdm
    cuda = torch.cuda.is_available() if cuda is None else cuda
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = path or machine_path()
    plan = _plan(shapes, cuda, Verdicts([path]), force)
    if not plan:
        return {}
    say(f"gate: qualifying {', '.join(sorted({p[0].name for p in plan}))} on this machine (errors vs float64, "
        f"time vs the reference and installed peers, ≤ {budget_s:g} s) -> {path}")
    t0, rows, skipped = time.monotonic(), [], []
    for spec, impl, fn, shp in tqdm(plan, desc="gate", unit="impl", disable=not progress):
        if time.monotonic() - t0 > budget_s:
            skipped.append(f"{spec.name}/{impl.name}")
        elif isinstance(fn, Exception):
            rows.append({"op": spec.name, "impl": impl.name, "shape": spec.bench.shape_str(*shp), "pass": "fwdbwd",
                         "dtype": "", "ms": None, "errors": {}, "source_hash": op_hash(spec.name),
                         "note": f"not importable: {type(fn).__name__}: {fn}"})
        else:
            rows.append(measure(spec, impl.name, fn, shp, device))
    if skipped:
        say(f"gate: time budget of {budget_s:g} s spent; not measured: {', '.join(skipped)}")
    ops = evidence([dict(r, errors=json.dumps(r["errors"])) for r in rows])
    notes = {(r["op"], r["impl"]): r["note"] for r in rows if r.get("note")}
    for op, impls in ops.items():
        for impl, e in impls.items():
            if (op, impl) in notes:
                e["failed"].append(notes[(op, impl)])
                e["allowed"], e["reason"] = rule(e)
            say(f"gate {op}/{impl}: {e['reason']}")
    write(ops, path, source="qualify")
    say(f"gate: per-machine manifest -> {path}")
    return ops


def model_shapes(cfg, batch_size: int, seq_len: int) -> dict[str, tuple]:
    """{op: shape} of every op with a ``model_shape`` in its spec, for a model of config ``cfg``."""
    return {op: s.bench.model_shape(cfg, batch_size, seq_len) for op, s in specs().items()
            if s.bench is not None and s.bench.model_shape is not None}


def qualify_model(cfg, batch_size: int, seq_len: int, **kw) -> dict:
    """``qualify`` at the shapes of a model of config ``cfg`` (fused.configs.ModelConfig) with this batch."""
    return qualify(model_shapes(cfg, batch_size, seq_len), **kw)

