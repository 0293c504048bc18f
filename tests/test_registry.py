"""The op specs and the registry as training sees them: discovery, roles, resolve's three modes, and every lab
kernel of every spec against its float64 reference at the spec's CPU shape (the parametrisation reads the specs)."""
import pytest
import torch

import kernels  # noqa: F401
from groundthink import gate, registry
from groundthink.harness import check_op
from groundthink.spec import Impl, OpSpec, specs


def test_every_op_is_declared_once_by_its_spec():
    assert registry.OPS[:3] == ("wkv6", "gate_norm_residual", "mamba2")
    assert {"causal_conv1d", "mamba2_step"} <= set(registry.OPS)
    for op, spec in specs().items():
        assert spec.name == op and spec.reference.name == "reference"
        assert registry.IMPLS[op] == {i.name: i.target for i in spec.impls}
    assert registry.LAB_KERNEL["wkv6"] == ("triton", "triton_fused")


def test_spec_validation_is_a_clear_error():
    with pytest.raises(ValueError, match="role must be one of"):
        Impl("x", "m:f", role="boss")
    with pytest.raises(ValueError, match="module:attribute"):
        Impl("x", "m.f")
    with pytest.raises(ValueError, match="exactly one reference"):
        OpSpec("op", "doc", (Impl("a", "m:f"),))


def test_a_spec_file_is_all_an_op_needs(tmp_path):
    """Discovery reads kernels/<op>/spec.py by path: the folder names the op."""
    from groundthink.spec import _load_spec
    body = ('from groundthink.spec import Impl, OpSpec\n'
            'SPEC = OpSpec(name="{}", doc="y = x", impls=(Impl("reference", "torch:clone", role="reference"),))\n')
    (tmp_path / "myop").mkdir()
    (tmp_path / "myop" / "spec.py").write_text(body.format("myop"))
    spec = _load_spec(tmp_path / "myop" / "spec.py")
    assert spec.name == "myop" and spec.reference.load() is torch.clone
    (tmp_path / "myop" / "spec.py").write_text(body.format("other"))
    with pytest.raises(ValueError, match="declares op 'other'; the folder is 'myop'"):
        _load_spec(tmp_path / "myop" / "spec.py")


def test_reference_mode_uses_references():
    ops = registry.resolve("reference")
    assert ops.impls() == {op: "reference" for op in registry.OPS}
    assert "reference" in ops.table()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_auto_on_cpu_uses_references_and_says_why():
    ops = registry.resolve("auto")
    assert set(ops.impls().values()) == {"reference"}
    assert "no GPU" in ops.table()


def test_triton_mode_takes_the_first_lab_candidate_or_a_peer():
    ops = registry.resolve("triton", cuda=False)
    assert ops.impls()["wkv6"] == "triton" and ops.impls()["gate_norm_residual"] == "triton"
    assert ops.impls()["mamba2"] == "triton"             # the lab's kernel (its peer, mamba-ssm, needs a GPU)
    assert ops.impls()["causal_conv1d"] == "reference"   # no lab kernel; its peer needs a GPU


def test_bad_mode_and_overrides_are_clear_errors():
    with pytest.raises(ValueError, match="kernels mode"):
        registry.resolve("fast")
    with pytest.raises(KeyError, match="unknown op"):
        registry.resolve("reference", {"nope": "reference"})


def test_unknown_impl_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown implementation"):
        registry.load("wkv6", "nope")


class _Fixed:
    """A stand-in for gate.Verdicts: allowed where the test says, no timings (the spec's order decides)."""
    graph, mode, shapes = False, "eager", {}

    def __init__(self, allowed):
        self.allowed = allowed

    def verdict(self, op, impl):
        return ((True, f"allowed: test {impl}") if (op, impl) in self.allowed else (False, f"denied: test {impl}"))

    def ms_at(self, op, impl):
        return None

    _fastest = gate.Verdicts._fastest
    choose = gate.Verdicts.choose


def test_auto_picks_the_best_proven_implementation():
    """Without timings at the model's shape: the first allowed lab candidate; else an allowed peer, saying so;
    else the reference with every reason (the fastest-at-the-shape choice: tests/test_gate.py)."""
    v = _Fixed({("wkv6", "triton_fused")})
    c = registry.resolve("auto", cuda=True, verdicts=v).choices["wkv6"]
    assert c.impl == "triton_fused" and "allowed: test triton_fused" in c.reason
    v = _Fixed(set())
    c = registry.resolve("auto", cuda=True, verdicts=v).choices["wkv6"]
    assert c.impl == "reference" and "triton denied" in c.reason and "triton_fused denied" in c.reason
    spec = specs()["gate_norm_residual"]
    impl, why = _Fixed({("gate_norm_residual", "compile")}).choose(spec, lambda name: True)
    assert impl == "compile" and "peer compile" in why and "triton denied" in why


@pytest.mark.parametrize("op,impl", [(op, i.name) for op, s in specs().items() if s.bench is not None
                                     for i in s.role("lab")])
def test_lab_kernel_matches_reference_at_cpu_shape(op, impl):
    """Every lab kernel of every spec: output and every gradient vs float64, fp32 through the interpreter."""
    spec = specs()[op]
    shp = spec.bench.cpu_shapes[0]
    inputs = spec.bench.make_inputs(*shp, True, dtype=torch.float32, seed=2)
    check_op(registry.load(op, impl), spec.reference.load(), inputs, bound=spec.bound(torch.float32),
             context=f"{op}/{impl} {shp}")
