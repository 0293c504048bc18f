"""The gate manifest: per GPU, which kernel implementation training may use, and the evidence.

Written by the benchmark run (``pytest bench/ --benchmark``) to ``profiles/<gpu-slug>/gates.json``; read by the
op registry when training asks for ``--kernels auto``. A manifest is trusted only for the GPU, torch and triton
versions it was measured with; an op's verdict only for the exact kernel sources it was measured with (sha256 over
the shared ``kernels/__init__.py``, ``kernels/_common.py`` and ``kernels/<op>.py``: ``op_hashes``), so editing one
kernel does not discard the others' evidence. Anything else is reported as "stale — re-run the benchmarks".

Format::

    {"meta": {"gpu": ..., "slug": ..., "versions": {...}, "kernel_hash": ..., "op_hashes": {op: ...}, "created": ...},
     "ops": {"wkv6": {"triton": {"allowed": true, "reason": "...", "dtype": "bfloat16",
                                 "errors": {"out0": 1e-3, "dr": ...},
                                 "shapes": [{"shape": "...", "ms": ..., "ref_ms": ..., "speedup": ...,
                                             "peak_mb": ..., "ref_peak_mb": ...}]}}}}

The rule (``decide``): a kernel is allowed only if it passed correctness everywhere it was checked, is faster than
the reference at every benchmarked shape and uses no more peak memory. Failing correctness denies it whatever
its speed.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from groundthink.device import gpu_name, gpu_slug, versions

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"


SHARED_KERNEL_SOURCES = ("kernels/__init__.py", "kernels/_common.py")


def _hash_files(paths, read=lambda rel: (ROOT / rel).read_bytes()) -> str:
    h = hashlib.sha256()
    for rel in sorted(paths):
        h.update(rel.encode())
        h.update(read(rel))
    return h.hexdigest()[:16]


def kernel_sources(op: str | None = None) -> list[str]:
    """Repository-relative kernel sources: all of kernels/ (op None), or those one op's verdict depends on: the
    shared plumbing plus kernels/<op>.py or kernels/<op>/ (none of its own for an op served by a peer package)."""
    if op is None:
        return [p.relative_to(ROOT).as_posix() for p in (ROOT / "kernels").rglob("*.py")]
    own = [p.relative_to(ROOT).as_posix() for p in [ROOT / "kernels" / f"{op}.py", *(ROOT / "kernels" / op).rglob("*.py")]
           if p.is_file()]
    return [*SHARED_KERNEL_SOURCES, *own]


def kernel_hash(op: str | None = None) -> str:
    """sha256 (16 hex) over the kernel sources: all of kernels/, or one op's (``kernel_sources(op)``)."""
    return _hash_files(kernel_sources(op))


def op_hashes() -> dict[str, str]:
    from groundthink.registry import OPS
    return {op: kernel_hash(op) for op in OPS}


def manifest_path(slug: str | None = None) -> Path:
    override = os.environ.get("GROUNDTHINK_MANIFEST")
    if override:
        return Path(override)
    return PROFILES / (slug or gpu_slug()) / "gates.json"


def meta() -> dict:
    v = versions()
    return {"gpu": gpu_name(), "slug": gpu_slug(), "versions": {k: v[k] for k in ("torch", "triton", "cuda")},
            "kernel_hash": kernel_hash(), "op_hashes": op_hashes(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def decide(errors_ok: bool, shapes: list[dict], error_note: str = "") -> tuple[bool, str]:
    """Apply the gate rule to one implementation's evidence."""
    if not errors_ok:
        return False, f"denied: fails correctness ({error_note})" if error_note else "denied: fails correctness"
    if not shapes:
        return False, "denied: no timing evidence"
    slower = [s["shape"] for s in shapes if not s.get("speedup", 0) > 1.0]
    if slower:
        return False, f"denied: not faster than the reference at {', '.join(slower)}"
    fatter = [s["shape"] for s in shapes
              if s.get("peak_mb") is not None and s.get("ref_peak_mb") is not None
              and s["peak_mb"] > s["ref_peak_mb"] * 1.001 + 1.0]
    if fatter:
        return False, f"denied: more peak memory than the reference at {', '.join(fatter)}"
    worst = min(s["speedup"] for s in shapes)
    return True, f"allowed: correct, ≥{worst:.1f}× the reference, no more memory"


def write(ops: dict, path: Path | None = None) -> Path:
    """Write the manifest (merging with ops already recorded there by an earlier bench module of this run)."""
    path = path or manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    current = {"meta": meta(), "ops": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("meta", {}).get("kernel_hash") == current["meta"]["kernel_hash"]:
            current["ops"] = old.get("ops", {})
    for op, impls in ops.items():
        current["ops"].setdefault(op, {}).update(impls)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def load(path: Path | None = None) -> tuple[dict | None, str]:
    """(manifest, status). status is "ok", "missing: …" or "stale: … — re-run the benchmarks"."""
    path = path or manifest_path()
    if not path.exists():
        return None, f"no manifest for this GPU ({path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})" \
                     " — run pytest bench/ --benchmark"
    data = json.loads(path.read_text())
    m, now = data.get("meta", {}), meta()
    problems = []
    if m.get("slug") != now["slug"]:
        problems.append(f"measured on {m.get('gpu')}, this is {now['gpu']}")
    for key in ("torch", "triton"):
        if m.get("versions", {}).get(key) != now["versions"][key]:
            problems.append(f"{key} {m.get('versions', {}).get(key)} → {now['versions'][key]}")
    if "op_hashes" not in m and m.get("kernel_hash") != now["kernel_hash"]:
        problems.append("kernel sources changed since the benchmark")  # (older manifests: one hash for all ops)
    if problems:
        return data, "stale: " + "; ".join(problems) + " — re-run the benchmarks"
    return data, "ok"


def verdict(data: dict | None, status: str, op: str, impl: str) -> tuple[bool, str]:
    """Whether the manifest lets ``impl`` of ``op`` into training here, and why."""
    if data is None or status != "ok":
        return False, status
    entry = data.get("ops", {}).get(op, {}).get(impl)
    if entry is None:
        return False, f"manifest has no verdict for {op}/{impl} — run pytest bench/ --benchmark"
    measured = data.get("meta", {}).get("op_hashes", {}).get(op)
    if measured is not None and measured != kernel_hash(op):
        return False, (f"stale: {', '.join(kernel_sources(op))} changed since the benchmark — re-run the "
                       "benchmarks")
    return bool(entry.get("allowed")), entry.get("reason", "")
