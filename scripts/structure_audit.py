"""Issue 13's structure audit, the checks that are not tests (tests/test_structure.py keeps the import graph and
train.py's function lengths; tests/test_bench.py the manifest's fields). notes/structure.md has the results.

    PYTHONPATH=. python scripts/structure_audit.py names     # every implementation: declared in its spec only?
    PYTHONPATH=. python scripts/structure_audit.py params    # kernel parameters undocumented / pointers without shape
    PYTHONPATH=. python scripts/structure_audit.py dump OUT  # lab kernels' outputs + gradients (bit-identity)
    python scripts/structure_audit.py compare A B            # which cases of two dumps differ (torch.equal)

``dump`` runs every lab implementation of every spec at its ``cpu_shapes`` in fp32 (seed 0, fixed cotangents,
Triton interpreter on a CPU machine) in the checkout of the current directory; dump two checkouts (``git archive
REV | tar x -C DIR``, then ``cd DIR && PYTHONPATH=. python <this script> dump OUT``) and compare them.
"""
from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _word(name: str) -> str:
    return r"(?<![A-Za-z0-9_])%s(?![A-Za-z0-9_])" % re.escape(name)


def names() -> None:
    """Each implementation's spec entry, its definition, and other files that spell its name or target as a string
    (outside tests/; roles, modes and package names share some of these words: read each hit)."""
    from groundthink.spec import specs
    files = [p for d in ("bench", "fused", "groundthink", "kernels", "reference", "scripts") for p in
             (ROOT / d).rglob("*.py")] + [ROOT / "train.py"]
    text = {p.relative_to(ROOT).as_posix(): p.read_text() for p in files}
    for op, spec in specs().items():
        for impl in spec.impls:
            decl = [f for f, s in text.items() if f.endswith("spec.py") and f'"{impl.target}"' in s]
            other = sorted({f for f, s in text.items() if f not in decl and f != "scripts/structure_audit.py"
                            and (f'"{impl.target}"' in s or (impl.name not in ("reference", "triton")
                                                              and re.search(r"[\"']%s[\"']" % impl.name, s)))})
            print(f"{op}/{impl.name} ({impl.role}): declared in {decl}" + (f"; also spelt in {other}" if other else ""))


def _comments(src: str) -> dict[int, str]:
    return {t.start[0]: t.string for t in tokenize.generate_tokens(io.StringIO(src).readline)
            if t.type == tokenize.COMMENT}


def _documented(fn: ast.FunctionDef, lines: list[str], comments: dict) -> str:
    """A jit function's docstring and the comments from its def line through its leading comment lines."""
    doc = ast.get_docstring(fn) or ""
    k = fn.body[1 if doc and len(fn.body) > 1 else 0].lineno
    while k <= fn.end_lineno and (not lines[k - 1].strip() or lines[k - 1].strip().startswith("#")):
        k += 1
    return doc + " " + " ".join(comments.get(i, "") for i in range(fn.lineno, k + 1))


def _launched(trees) -> set[str]:
    """Names launched as ``f[grid](...)`` (also ``mod.f[grid]``) or wrapped as ``triton.autotune(...)(f)``."""
    out = set()
    for n in (n for t in trees for n in ast.walk(t) if isinstance(n, ast.Call)):
        if isinstance(n.func, ast.Subscript):
            v = n.func.value
            out.add(v.id if isinstance(v, ast.Name) else getattr(v, "attr", ""))
        elif isinstance(n.func, ast.Call) and "autotune" in ast.unparse(n.func.func):
            out.update(a.id for a in n.args if isinstance(a, ast.Name))
    return out


def _has_shape(name: str, text: str) -> bool:
    """Some mention of ``name`` has a shape "[...]" in its clause (before a ";" and within 90 characters: "q_ptr,
    k_ptr, w_ptr [B·T, H, K]"), or a "*" name covering it does ("p_o* [...]")."""
    stems = [name] + [g for g in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\*", text)
                      if name.startswith(g) and name[len(g):].isdigit()]
    return any(re.search(_word(st) + r"\*?[^;\[]{0,90}\[", text) for st in stems)


def params() -> None:
    """Every ``@triton.jit`` kernel under kernels/ (a jit function that is launched or autotuned: decorated, or
    ``f[grid](...)`` / ``triton.autotune(...)(f)`` anywhere in kernels/): parameters that neither its own
    docstring/comments nor the module's docstring and top-level comments (layout blocks) name ("p_o*" names
    p_o0 ... p_o4), and pointer parameters (``*_ptr``) named without a shape ``[...]`` in the same clause."""
    paths = sorted((ROOT / "kernels").rglob("*.py"))
    srcs = {p: p.read_text() for p in paths}
    trees = {p: ast.parse(s) for p, s in srcs.items()}
    launched = _launched(trees.values())
    count = n_kernels = 0
    for path in paths:
        src, tree = srcs[path], trees[path]
        lines, comments = src.splitlines(), _comments(src)
        fns = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
               and any("jit" in ast.unparse(d) for d in n.decorator_list)
               and (n.name in launched or any("autotune" in ast.unparse(d) for d in n.decorator_list))]
        inside = {i for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                  for i in range(n.lineno, n.end_lineno + 1)}
        module = (ast.get_docstring(tree) or "") + " ".join(c for i, c in comments.items() if i not in inside)
        for fn in fns:
            n_kernels += 1
            text = _documented(fn, lines, comments) + " " + module
            globs = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\*", text)
            missing = [a.arg for a in fn.args.args if not re.search(_word(a.arg), text)
                       and not any(a.arg.startswith(g) and a.arg[len(g):].isdigit() for g in globs)]
            shapeless = [a.arg for a in fn.args.args if a.arg.endswith("_ptr") and a.arg not in missing
                         and not _has_shape(a.arg, text)]
            count += bool(missing or shapeless)
            if missing or shapeless:
                print(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: unnamed {missing}, no shape {shapeless}")
    print(f"{count} of {n_kernels} kernels with a parameter their docs do not name or a pointer without a shape")


def dump(out: str) -> None:
    import torch
    torch.set_num_threads(1)
    import kernels  # noqa: F401 - the interpreter switch before any kernel is defined
    from groundthink.spec import specs
    res = {}
    for op, spec in specs().items():
        for impl in (spec.role("lab") if spec.bench else ()):
            fn = impl.load()
            for shp in spec.bench.cpu_shapes:
                kw = spec.bench.make_inputs(*shp, grad=True, dtype=torch.float32, seed=0, device="cpu")
                leaves = [v for v in kw.values() if isinstance(v, torch.Tensor) and v.requires_grad]
                out_ = fn(**kw)
                outs = [o for o in (out_ if isinstance(out_, (tuple, list)) else (out_,))
                        if isinstance(o, torch.Tensor)]
                diff = [o for o in outs if o.requires_grad]
                g = torch.Generator().manual_seed(1)
                cots = [torch.randn(o.shape, generator=g).to(o.dtype) for o in diff]
                grads = torch.autograd.grad(diff, leaves, cots, allow_unused=True)
                res[f"{op}/{impl.name}/{shp}"] = [o.detach().clone() for o in outs] + \
                    [x if x is not None else torch.empty(0) for x in grads]
    torch.save(res, out)
    print(f"{len(res)} cases, {sum(map(len, res.values()))} tensors -> {out}")


def compare(a: str, b: str) -> None:
    import torch
    x, y = torch.load(a), torch.load(b)
    differ = [k for k in sorted(set(x) | set(y)) if k not in x or k not in y or len(x[k]) != len(y[k])
              or not all(p.shape == q.shape and torch.equal(p, q) for p, q in zip(x[k], y[k]))]
    for k in differ:
        print("DIFFERS:", k)
    print(f"{len(set(x) | set(y)) - len(differ)} cases bit-identical, {len(differ)} differ")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:] or ["help"]
    commands = {"names": names, "params": params, "dump": dump, "compare": compare}
    if cmd not in commands:
        sys.exit(f"error: unknown command {cmd!r}; accepted: {', '.join(commands)} (see the module docstring)")
    commands[cmd](*args)
