"""Issue 13's structure checks, kept: the import graph of the repository's modules (imports at any level, function
bodies included) has no cycle, no function in train.py is longer than 60 lines, and the shared places that read
the ops' specs (bench/, the step's GPU time by op, the eager-path cases) name no op: a new op touches its own
folder (W1)."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "fused", "groundthink", "kernels", "reference", "scripts", "tests")


def _modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / "train.py"]
    out = {}
    for p in files:
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, known) -> set[str]:
    """The repository modules ``name`` imports anywhere in its body (``from a import b``: a.b when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order), or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


def test_the_import_graph_has_no_cycle():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]        # the check itself


def test_no_function_in_train_py_is_over_60_lines():
    tree = ast.parse((ROOT / "train.py").read_text())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long


# where an op's name would be a per-op declaration outside kernels/<op>/ (these read the specs instead)
SPEC_READERS = ("bench/*.py", "groundthink/monitor.py", "tests/test_eager_path.py", "scripts/glue_host_us.py")
# (file, op) spelled there for another reason
NOT_DECLARATIONS = {
    ("bench/bench_train.py", "mamba2"): "the pure Mamba-2 model variant",
    ("bench/variants.py", "mamba2"): "the pure Mamba-2 model variant",
    ("bench/report_variants.py", "mamba2"): "the pure Mamba-2 model variant",
    ("bench/long_context.py", "mamba2"): "the pure Mamba-2 model variant",
    ("bench/long_context.py", "wkv6"): "the study refuses a wkv6 that resolves to the reference at long context",
}


def _docstrings(tree) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, kinds) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def op_names_in(path: Path, ops) -> set[str]:
    """The ops ``path`` names outside its docstrings: in a string literal (as a word) or by importing
    ``kernels.<op>`` / ``reference.<op>``."""
    word = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(ops, key=len, reverse=True)) + r")(?![A-Za-z0-9_])")
    tree = ast.parse(path.read_text())
    docs, found = _docstrings(tree), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            found.update(word.findall(n.value))
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module or ""] + [f"{n.module}.{a.name}" for a in n.names]
            found.update(m.split(".")[1] for m in mods
                         if m.split(".")[0] in ("kernels", "reference") and len(m.split(".")) > 1)
    return found & set(ops)


def test_a_new_op_touches_its_own_folder_only(tmp_path):
    """No op is named where the specs are read (its GPU kernels, its eager-path case come from kernels/<op>/spec.py)
    except in its own files of the mirrored layout: bench/bench_<op>.py (one line, ``test_<op> = spec_test(op)``)
    exists for every op whose spec declares a benchmark and names no other op."""
    from groundthink.spec import specs
    ops = list(specs())
    named = {(p.relative_to(ROOT).as_posix(), op) for pattern in SPEC_READERS for p in sorted(ROOT.glob(pattern))
             for op in op_names_in(p, ops) if p.name != f"bench_{op}.py"}
    assert named - set(NOT_DECLARATIONS) == set(), sorted(named - set(NOT_DECLARATIONS))
    assert set(NOT_DECLARATIONS) <= named, sorted(set(NOT_DECLARATIONS) - named)      # no stale exception
    benched = sorted(op for op, s in specs().items() if s.bench is not None)
    assert sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py")
                  if p.stem.removeprefix("bench_") in ops) == benched
    probe = tmp_path / "probe.py"                                                       # the check itself
    probe.write_text('"""decay_exp here is prose."""\nimport kernels.ddlerp\nCASES = {"wkv6": 1, "x": "mamba2_step"}\n')
    assert op_names_in(probe, ops) == {"ddlerp", "wkv6", "mamba2_step"}


_AUTOTUNE_SCAN = r"""
import importlib, json, pkgutil
import kernels
from triton.runtime.autotuner import Autotuner
found = []
for m in pkgutil.walk_packages(kernels.__path__, "kernels."):
    for name, obj in vars(importlib.import_module(m.name)).items():
        if isinstance(obj, Autotuner):
            found.append([m.name, name, len(obj.configs), list(obj.keys)])
print(json.dumps(found))
"""


@functools.lru_cache(maxsize=1)
def _autotuned_kernels() -> tuple:
    """(module, name, configs, key) of every ``Autotuner`` in kernels/ as built for a GPU (``_AUTOTUNE_SCAN``)."""
    import json
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _AUTOTUNE_SCAN], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(found) >= 10, found          # the scan saw the kernels (wkv6, mamba2, gate_norm_residual, ffn)
    return tuple(tuple(f) for f in found)


def test_every_multi_config_autotuned_kernel_is_keyed_by_its_size():
    """Triton's autotuner keeps one pick per key (in the process, and on disk with TRITON_CACHE_AUTOTUNING=1): a
    kernel with several configs whose key holds no size gets the first shape's pick at every shape — H200 run 25:
    wkv6's B8 T4096 H32 fwd+bwd 6.93 ms after the GPU tests' small shapes had autotuned it, 5.84 with the key. So
    every autotuned kernel in kernels/ with more than one config on a GPU names a ``*_BUCKET`` argument
    (``kernels._common.grid_bucket``, or wkv6's NH_BUCKET for its walks) in its key. The scan imports the kernel
    modules with TRITON_INTERPRET=0 (no launch: nothing needs a GPU) so that the GPU's config lists are built."""
    bad = [f"{mod}.{name} (configs {n}, key {keys})" for mod, name, n, keys in _autotuned_kernels()
           if n > 1 and not any(k.endswith("_BUCKET") for k in keys)]
    assert not bad, "autotuned kernels without a size in their key: " + "; ".join(bad)


def test_every_multi_config_autotuned_kernel_launches_through_the_launcher():
    """``kernel[grid](...)`` on an autotuned kernel pays Triton's ``Autotuner.run`` dispatch on every call (~20-40
    µs of host time on the H200 machine, run 26: a small-shape wkv6 fwd+bwd is host-bound); its modules launch it
    as ``launch(kernel)[grid](...)`` (``kernels._common.Launcher``). A subscript of the kernel's name anywhere in
    its module is a launch around the launcher."""
    bad = []
    for mod, name, n, _ in _autotuned_kernels():
        text = (ROOT / (mod.replace(".", "/") + ".py")).read_text()
        if n > 1 and re.search(rf"(?<![\w.]){re.escape(name)}\[", text):
            bad.append(f"{mod}.{name}")
    assert not bad, "autotuned kernels launched without kernels._common.launch: " + "; ".join(bad)


def test_every_wkv6_dot_at_the_input_precision_goes_through_mma():
    """wkv6's dots at the inputs' precision (``PREC``: "tf32" for half inputs) go through ``kernels._dot.mma``, which
    rounds their fp32 operands to nearest tf32 (the tensor cores truncate them: dw 2.15e-3 > 2e-3 at bf16 K32 V96,
    H200 run 27). A ``tl.dot`` given ``input_precision=PREC`` directly reads them truncated."""
    bad = []
    for path in sorted((ROOT / "kernels" / "wkv6").glob("*.py")):
        text = path.read_text()
        bad += [f"{path.name}:{text[:m.start()].count(chr(10)) + 1}"
                for m in re.finditer(r"input_precision\s*=\s*PREC\b", text)]
    assert not bad, "tl.dot at PREC outside kernels._dot.mma: " + ", ".join(bad)
