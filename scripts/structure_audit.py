"""Issue 13's structure audit, the checks that are not tests (tests/test_structure.py keeps the import graph and
train.py's function lengths; tests/test_bench.py the manifest's fields). notes/structure.md has the results.

    PYTHONPATH=. python scripts/structure_audit.py names     # every implementation: declared in its spec only?
    PYTHONPATH=. python scripts/structure_audit.py params    # kernel parameters their docs/comments do not name
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


def params() -> None:
    """Parameters of every ``@triton.jit`` kernel under kernels/ that neither its own docstring/comments nor the
    module's docstring and top-level comments (layout blocks) name ("p_o*" names p_o0 ... p_o4)."""
    count = 0
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        src = path.read_text()
        lines, tree, comments = src.splitlines(), ast.parse(src), _comments(src)
        fns = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and ("kernel" in n.name or n.name ==
               "_fwd_walk") and any("jit" in ast.unparse(d) for d in n.decorator_list)]
        inside = {i for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                  for i in range(n.lineno, n.end_lineno + 1)}
        module = (ast.get_docstring(tree) or "") + " ".join(c for i, c in comments.items() if i not in inside)
        for fn in fns:
            text = _documented(fn, lines, comments) + " " + module
            globs = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\*", text)
            missing = [a.arg for a in fn.args.args if not re.search(_word(a.arg), text)
                       and not any(a.arg.startswith(g) and a.arg[len(g):].isdigit() for g in globs)]
            count += bool(missing)
            if missing:
                print(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: {missing}")
    print(f"{count} kernels with a parameter their docs do not name")


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
