"""One declaration per op: ``kernels/<op>/spec.py`` holds ``SPEC = OpSpec(...)``, and everything that needs to
know about the op reads it: the registry (which implementations exist, their roles, device needs and preference
order), the benchmarks (shapes, inputs, bytes and FLOPs), the tests' parametrisation and the gate (tolerance,
the shapes a kernel is qualified at).

Minimal spec (valid on its own: the op is registered, resolvable and benchmark-free)::

    from groundthink.spec import Impl, OpSpec
    SPEC = OpSpec(
        name="<op>",
        doc="one line: what it computes and its signature",
        impls=(
            Impl("reference", "reference.<op>:<fn>", role="reference"),
            Impl("triton", "kernels.<op>.<module>:<fn>", role="lab", graph_safe=True),   # lab candidates in
            Impl("triton_fused", "kernels.<op>.<module>:<fn>", role="lab"),               # preference order
            Impl("fla_chunk", "fla.ops....:fn", role="peer", needs="cuda"),
        ),
    )

``Impl`` fields:
    name        the implementation's name (``--kernels`` overrides, CSV ``impl`` column, manifest key)
    target      "module:attribute", imported lazily (kernels pull in Triton, peers may be absent)
    role        "reference" (exactly one: the PyTorch oracle, runs anywhere), "lab" (the lab's candidates, in
                preference order) or "peer" (someone else's implementation: benchmarks, and the gate may pick
                it when it is proven better)
    needs       "any" or "cuda" (never imported or run without CUDA)
    graph_safe  the implementation may be captured in a CUDA graph (no host syncs, no allocation surprises)
    factory     target is a zero-argument function returning the callable (e.g. a ``torch.compile`` wrapper)
    priority    benchmark run order (lower first; default 1 for the reference and the first lab candidate,
                2 for the other lab candidates, 3 for peers): a spent time budget cuts the highest first
    package     the installed package the implementation comes from (default: the target's top-level module);
                name it for a peer behind a wrapper in the op's folder (``package="fla"``): the versions of the
                peers' packages key a verdict (``peer_packages``)

Optional fields of ``OpSpec`` (an op without ``bench`` is simply not benchmarked):
    bench       ``Bench``: how to benchmark and qualify the op (below)
    tolerance   {dtype: bound} overriding ``groundthink.harness.BOUNDS`` for this op (relative error vs fp64)
    kernels     the GPU kernel names its implementations launch, as the profiler shows them, for the training
                step's "GPU time by op" (``groundthink.monitor.op_of``): ``fnmatch`` patterns ("_bwd_own_kernel" the
                exact name, "*_wkv6_*" any name containing it); exact names are matched before any pattern
    kernels_group   the label of those kernels in that table (default: the op's name; the small fused ops share
                "glue kernels")
    eager       ``EagerCase``s: the op's public call on ``kernels._eager.EagerOp`` (below), checked bit for bit
                against its custom op by tests/test_eager_path.py and timed on the host by scripts/glue_host_us.py

``Bench`` fields (every callable takes the op's shape tuple ``*shp``):
    shapes          () -> list of shape tuples benchmarked on a GPU
    cpu_shapes      list of tiny shape tuples for the CPU interpreter (tests and CPU benchmark smoke runs)
    shape_str       (*shp) -> str, the CSV ``shape`` column ("B8 T4096 H32 K64 V64")
    make_inputs     (*shp, grad, dtype, seed, device) -> keyword arguments of one call
    err_shape       (*shp) -> the (smaller) shape at which errors vs float64 are measured; default: shp
    nbytes          (*shp, pass_) -> minimal bytes moved (for GB/s and % of copy bandwidth), or None
    flops           (*shp, pass_) -> nominal FLOPs (for TFLOP/s), or None
    passes          ("fwd", "fwdbwd") by default
    dtype           the benchmarked input dtype (torch.bfloat16 by default)
    quick_peer      (*shp) -> whether the peers are timed at this shape in the quick grid (default: always)
    model_shape     (cfg, batch, seq_len) -> the shape tuple of the op inside a model of config ``cfg``
                    (fused.configs.ModelConfig), or a list of them: one per kind of call the model makes
                    (norm_gate's RWKV and Mamba sides). The gate records the step's calls and matches each to
                    one of these (``groundthink.calls``): what it qualifies a kernel at (gate on first use)

``EagerCase`` fields (tiny CPU inputs; ``t(*shape, grad=True)`` is the caller's random-tensor maker):
    eager_op    "module:attribute" of the op's ``EagerOp``
    inputs      (t) -> the tensor keyword arguments of the public call
    op_args     (inputs) -> the custom op's positional arguments for those inputs
    call        other keyword arguments of the public call (default none)
    impl        the implementation whose public function is called (default "triton")
    name        the case's name (default: the op's; a second case of one op needs its own)

Discovery: ``specs()`` reads every ``kernels/*/spec.py`` by path (no kernel module is imported: the spec files
import only torch and this module), ordered by ``ORDER`` then by name. Adding an op or an algorithm touches
its own folder only.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
ROLES = ("reference", "lab", "peer")
NEEDS = ("any", "cuda")
ORDER = ("wkv6", "gate_norm_residual", "mamba2")   # the model's main ops first, the rest by name


def load(target: str):
    """The object named by "module:attribute", imported now."""
    mod, attr = target.split(":")
    return getattr(importlib.import_module(mod), attr)


@dataclass(frozen=True)
class Impl:
    name: str
    target: str
    role: str = "lab"
    needs: str = "any"
    graph_safe: bool = False
    factory: bool = False
    priority: int | None = None
    package: str | None = None

    def __post_init__(self):
        if self.package is None:
            object.__setattr__(self, "package", self.target.split(":")[0].split(".")[0])
        if self.role not in ROLES:
            raise ValueError(f"Impl {self.name!r}: role must be one of {ROLES}; got {self.role!r}")
        if self.needs not in NEEDS:
            raise ValueError(f"Impl {self.name!r}: needs must be one of {NEEDS}; got {self.needs!r}")
        if self.target.count(":") != 1:
            raise ValueError(f"Impl {self.name!r}: target must be 'module:attribute'; got {self.target!r}")

    @property
    def module(self) -> str:
        return self.target.split(":")[0]

    def load(self) -> Callable:
        """Import and return the callable (ImportError when it is not installed here)."""
        fn = load(self.target)
        return fn() if self.factory else fn

    def runs_here(self, cuda: bool) -> bool:
        return self.needs == "any" or cuda


@dataclass(frozen=True)
class Bench:
    shapes: Callable[[], list]
    cpu_shapes: list
    shape_str: Callable[..., str]
    make_inputs: Callable[..., dict]
    err_shape: Callable[..., tuple] | None = None
    nbytes: Callable[..., float | None] | None = None
    flops: Callable[..., float | None] | None = None
    passes: tuple[str, ...] = ("fwd", "fwdbwd")
    dtype: torch.dtype = torch.bfloat16
    quick_peer: Callable[..., bool] | None = None
    model_shape: Callable[..., tuple] | None = None


@dataclass(frozen=True)
class EagerCase:
    eager_op: str
    inputs: Callable[[Callable], dict]
    op_args: Callable[[dict], tuple]
    call: dict = field(default_factory=dict)
    impl: str = "triton"
    name: str | None = None


@dataclass(frozen=True)
class OpSpec:
    name: str
    doc: str
    impls: tuple[Impl, ...]
    bench: Bench | None = None
    tolerance: dict = field(default_factory=dict)
    kernels: tuple[str, ...] = ()
    kernels_group: str | None = None
    eager: tuple[EagerCase, ...] = ()

    def __post_init__(self):
        names = [i.name for i in self.impls]
        if len(set(names)) != len(names):
            raise ValueError(f"op {self.name}: implementation names repeat: {names}")
        refs = [i for i in self.impls if i.role == "reference"]
        if len(refs) != 1 or refs[0].needs != "any":
            raise ValueError(f"op {self.name}: exactly one reference implementation that runs anywhere is needed")
        if isinstance(self.kernels, str):
            raise ValueError(f"op {self.name}: kernels must be a tuple of kernel names or patterns; got a string")
        for c in self.eager:
            self.impl(c.impl)                     # KeyError naming the known implementations
        cases = [c.name or self.name for c in self.eager]
        if len(set(cases)) != len(cases):
            raise ValueError(f"op {self.name}: eager case names repeat: {cases} (name the second case)")

    def impl(self, name: str) -> Impl:
        for i in self.impls:
            if i.name == name:
                return i
        raise KeyError(f"unknown implementation {self.name}/{name}; known: {[i.name for i in self.impls]}")

    @property
    def reference(self) -> Impl:
        return next(i for i in self.impls if i.role == "reference")

    def role(self, role: str) -> tuple[Impl, ...]:
        return tuple(i for i in self.impls if i.role == role)

    def priority(self, impl: Impl) -> int:
        if impl.priority is not None:
            return impl.priority
        labs = self.role("lab")
        if impl.role == "reference" or (labs and impl is labs[0]):
            return 1
        return 2 if impl.role == "lab" else 3

    def bound(self, dtype: torch.dtype) -> float:
        """The relative-error bound for inputs of ``dtype`` (the op's own, else the harness's)."""
        from groundthink.harness import BOUNDS
        return self.tolerance.get(dtype, BOUNDS.get(dtype, BOUNDS[torch.bfloat16]))


def _show(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def _load_spec(path: Path) -> OpSpec:
    mod_name = f"_groundthink_spec_{path.parent.name}"
    loader = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)
    spec = getattr(mod, "SPEC", None)
    if not isinstance(spec, OpSpec):
        raise TypeError(f"{_show(path)} must define SPEC = OpSpec(...)")
    if spec.name != path.parent.name:
        raise ValueError(f"{_show(path)} declares op {spec.name!r}; the folder is {path.parent.name!r}")
    return spec


_SPECS: dict[str, OpSpec] = {}


def specs() -> dict[str, OpSpec]:
    """Every op's spec, discovered from kernels/*/spec.py (read once)."""
    if not _SPECS:
        found = {p.parent.name: _load_spec(p) for p in sorted(KERNELS.glob("*/spec.py"))}
        rank = {n: i for i, n in enumerate(ORDER)}
        for name in sorted(found, key=lambda n: (rank.get(n, len(ORDER)), n)):
            _SPECS[name] = found[name]
    return _SPECS


def peer_packages() -> tuple[str, ...]:
    """The installed packages the peers come from (``Impl.package``), whose versions key a verdict: neither the
    repository's own packages nor torch (its version keys the whole manifest)."""
    found = {i.package for s in specs().values() for i in s.role("peer")}
    return tuple(sorted(p for p in found if p != "torch" and not (ROOT / p / "__init__.py").exists()))


def get(op: str) -> OpSpec:
    try:
        return specs()[op]
    except KeyError:
        raise KeyError(f"unknown op {op!r}; known: {list(specs())}") from None


def eager_cases() -> dict[str, tuple[OpSpec, EagerCase]]:
    """Every op's ``EagerCase`` by its name (the op's, or the case's own), with its op's spec; a name two ops
    give is an error (one case would silently replace the other)."""
    out: dict[str, tuple[OpSpec, EagerCase]] = {}
    for s in specs().values():
        for c in s.eager:
            name = c.name or s.name
            if name in out:
                raise ValueError(f"eager case {name!r} of op {s.name} repeats op {out[name][0].name}'s")
            out[name] = (s, c)
    return out
