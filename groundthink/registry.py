"""The op registry: which implementation of each op the model uses.

Ops, their implementations, roles and device needs are declared once, in ``kernels/<op>/spec.py``
(``groundthink.spec``); this module reads them. ``OPS`` lists the ops; an ``OpSet`` hands the model one callable
per op (``ops.wkv6(...)``, ``ops.gate_norm_residual(...)``, ``ops.mamba2(...)``, ``ops.mamba2_step(...)``,
``ops.causal_conv1d(...)``): the model never imports a kernel.

``resolve(mode)`` picks one implementation per op and says why:
    "reference"  every op on its reference;
    "triton"     the first lab candidate of every op (under the interpreter on CPU); an op without a lab
                 kernel takes its first peer that runs here (mamba-ssm's scan, causal-conv1d on a GPU), else
                 its reference;
    "auto"       on GPU, the best proven implementation (``groundthink.gate``: the per-machine manifest of the
                 qualification, then the published one): the fastest allowed lab candidate at the model's shape
                 (``Verdicts(shapes=...)``; the spec's order where no timing there exists), a peer only where
                 it beats every allowed lab kernel, else the reference — each with the gate's reason; on CPU,
                 the references. ``graph``: the step will be captured as a CUDA graph, so the verdicts for that
                 mode are read (``--graph off``: the eager ones).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from groundthink.spec import get, specs

SPECS = specs()
OPS = tuple(SPECS)
# read-only views of the specs (op -> impl -> "module:attr"; op -> lab candidates in preference order)
IMPLS: dict[str, dict[str, str]] = {op: {i.name: i.target for i in s.impls} for op, s in SPECS.items()}
LAB_KERNEL: dict[str, tuple[str, ...]] = {op: tuple(i.name for i in s.role("lab")) for op, s in SPECS.items()}
MODES = ("auto", "triton", "reference")


def load(op: str, impl: str) -> Callable:
    """Import and return one implementation; raises ImportError if it is not installed here."""
    try:
        spec = get(op)
        entry = spec.impl(impl)
    except KeyError:
        raise KeyError(f"unknown implementation {op}/{impl}; known: "
                       f"{ {o: sorted(i) for o, i in IMPLS.items()} }") from None
    return entry.load()


def available(op: str) -> list[str]:
    """Implementations of ``op`` that import on this machine (GPU-only ones need CUDA)."""
    cuda = torch.cuda.is_available()
    out = []
    for impl in get(op).impls:
        if not impl.runs_here(cuda):
            continue
        try:
            impl.load()
            out.append(impl.name)
        except Exception:  # noqa: BLE001 - absent or broken peer: not available
            pass
    return out


@dataclass
class Choice:
    op: str
    impl: str
    reason: str
    fn: Callable = field(repr=False)
    graph_safe: bool = False


@dataclass
class OpSet:
    """The implementations a model calls: ``ops.<op>(...)`` for every op in ``OPS``."""
    choices: dict[str, Choice]

    def __getattr__(self, op):
        try:
            return self.__dict__["choices"][op].fn
        except KeyError:
            raise AttributeError(op) from None

    def table(self) -> str:
        rows = [("op", "implementation", "why")] + [(c.op, c.impl, c.reason) for c in self.choices.values()]
        w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
        return "\n".join(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}" for r in rows)

    def impls(self) -> dict[str, str]:
        return {op: c.impl for op, c in self.choices.items()}

    def graph_safe(self) -> tuple[bool, str]:
        """(every chosen implementation may be captured in a CUDA graph, why not)."""
        bad = [f"{c.op}/{c.impl}" for c in self.choices.values() if not c.graph_safe]
        return (not bad, "not graph-safe: " + ", ".join(bad) if bad else "every op graph-safe")


def _pick(op: str, impl: str, reason: str) -> Choice:
    entry = get(op).impl(impl)
    return Choice(op, impl, reason, entry.load(), entry.graph_safe)


def _importable(op: str, impl: str) -> bool:
    try:
        load(op, impl)
        return True
    except Exception:  # noqa: BLE001
        return False


def _triton_choice(op: str, cuda: bool) -> Choice:
    spec = get(op)
    cands = spec.role("lab") or tuple(i for i in spec.role("peer") if i.runs_here(cuda))
    whys = []
    for cand in cands:
        if not cand.runs_here(cuda):
            whys.append(f"{cand.name} needs a GPU")
            continue
        try:
            return _pick(op, cand.name, "--kernels triton" + ("" if cuda else " (Triton interpreter)")
                         + ("" if cand.role == "lab" else f" (no lab kernel: peer {cand.name})"))
        except ImportError as e:
            whys.append(f"{cand.name} not importable: {e}")
    return _pick(op, "reference", "; ".join(whys) or "no lab kernel")


def resolve(mode: str = "auto", overrides: dict[str, str] | None = None, *, cuda: bool | None = None,
            verdicts=None, graph: bool = False) -> OpSet:
    """Choose one implementation per op (see the module docstring). ``overrides`` pins op -> impl; ``cuda`` and
    ``verdicts`` (a ``groundthink.gate.Verdicts``; else one for ``graph``) may be injected (tests)."""
    if mode not in MODES:
        raise ValueError(f"kernels mode must be auto, triton or reference; got {mode!r}")
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(OPS))
    if unknown:
        raise KeyError(f"unknown op(s) {unknown} in overrides; known: {list(OPS)}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if mode == "auto" and cuda and verdicts is None:
        from groundthink.gate import Verdicts
        verdicts = Verdicts(graph=graph)
    choices = {}
    for op in OPS:
        if op in overrides:
            choices[op] = _pick(op, overrides[op], "pinned by the caller")
        elif mode == "reference":
            choices[op] = _pick(op, "reference", "--kernels reference")
        elif mode == "triton":
            choices[op] = _triton_choice(op, cuda)
        elif not cuda:
            choices[op] = _pick(op, "reference", "no GPU: references (Triton kernels would only run in the "
                                                 "interpreter)")
        else:
            impl, why = verdicts.choose(get(op), lambda name, op=op: _importable(op, name))
            choices[op] = _pick(op, impl, why)
    return OpSet(choices)
