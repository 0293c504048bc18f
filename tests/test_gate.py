"""The gate fails closed, covers every source file a kernel executes, and qualifies kernels on first use.

Qualification runs here on CPU: the device check is injected (``cuda=True``) and the lab kernel runs tiny shapes
through the Triton interpreter; the per-machine manifest goes to a temporary folder."""
from __future__ import annotations

import json
import shutil
import time

import pytest

import kernels  # noqa: F401
from groundthink import gate, registry
from groundthink.spec import ROOT

OP = "gate_norm_residual"
SHAPE = (16, 32, "row", False)


def _rows(tri_ms=1.0, ref_ms=3.0, peer_ms=None, err=1e-3):
    """Evidence rows of one op measured by the current sources: reference, triton and (optionally) a peer."""
    h = gate.op_hash(OP)
    out = []
    for impl, ms in (("reference", ref_ms), ("triton", tri_ms), ("compile", peer_ms)):
        if ms is not None:
            out.append({"op": OP, "impl": impl, "shape": "N16 D32 row", "pass": "fwdbwd", "dtype": "bfloat16",
                        "ms": ms, "peak_mb": 1.0, "errors": json.dumps({"out0": err}), "source_hash": h})
    return out


def _manifest(tmp_path, rows=None):
    path = tmp_path / "gates.json"
    gate.write(gate.evidence(rows or _rows()), path)
    return path


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data["ops"][OP]["triton"])
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------------------------- fail closed

@pytest.mark.parametrize("content", ["", "{", "[]", '{"meta": 1, "ops": {}}', '{"ops": {}}', "\udcff"])
def test_bad_manifest_allows_nothing_with_a_one_line_reason(tmp_path, content):
    path = tmp_path / "gates.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    data, status = gate.load(path)
    assert data is None and status.startswith(("unreadable", "malformed")) and "\n" not in status
    ops = registry.resolve("auto", cuda=True, verdicts=gate.Verdicts([path]))
    assert set(ops.impls().values()) == {"reference"}


def test_a_good_entry_is_allowed(tmp_path):
    ok, why = gate.Verdicts([_manifest(tmp_path)]).verdict(OP, "triton")
    assert ok and why.startswith("allowed")


@pytest.mark.parametrize("tamper,words", [
    (lambda e: e.update(allowed="false"), "inconsistent"),                 # a string is not true
    (lambda e: e.update(allowed=1), "inconsistent"),
    (lambda e: e.pop("allowed"), "inconsistent"),
    (lambda e: e.update(reason="denied: by hand"), "inconsistent"),       # allowed beside a denial
    (lambda e: e["shapes"][0].update(ms=9.0), "inconsistent"),            # the rule re-applied disagrees
    (lambda e: e["errors"].update(out0=0.5), "inconsistent"),
    (lambda e: e["errors"].update(out0="0.001"), "malformed"),
    (lambda e: e.update(shapes="fast"), "malformed"),
    (lambda e: e["shapes"][0].update(ref_ms=None), "malformed"),
    (lambda e: e.update(failed="none"), "malformed"),
    (lambda e: e.pop("source_hash"), "no source hash"),
    (lambda e: e.update(source_hash="0" * 16), "stale"),
])
def test_tampered_or_inconsistent_entries_are_refused(tmp_path, tamper, words):
    path = _manifest(tmp_path)
    _edit(path, tamper)
    ok, why = gate.Verdicts([path]).verdict(OP, "triton")
    assert not ok and words in why and "\n" not in why, why


def test_allowed_must_agree_with_the_rule_also_when_denied(tmp_path):
    path = _manifest(tmp_path, _rows(tri_ms=5.0))          # slower than the reference: denied
    _edit(path, lambda e: e.update(allowed=True, reason="allowed: by hand"))
    ok, why = gate.Verdicts([path]).verdict(OP, "triton")
    assert not ok and "inconsistent" in why


def test_a_peer_that_wins_is_used_and_said(tmp_path):
    path = _manifest(tmp_path, _rows(tri_ms=1.0, peer_ms=0.5))
    v = gate.Verdicts([path])
    ok, why = v.verdict(OP, "triton")
    assert not ok and "slower than peer compile" in why
    impl, why = v.choose(registry.SPECS[OP], lambda name: True)
    assert impl == "compile" and "peer compile" in why and "triton" in why


# ------------------------------------------------------------------------------------------------ sources

@pytest.mark.parametrize("op", ["gate_norm_residual", "wkv6"])
def test_verdict_covers_every_source_file(tmp_path, op):
    """Editing any file the op's implementations execute (reference helpers included) voids the verdict."""
    root = tmp_path / "repo"
    for pkg in ("kernels", "reference", "groundthink", "fused"):
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    files = gate.op_sources(op, root)
    assert files == gate.op_sources(op)
    assert {"kernels/__init__.py", "kernels/_common.py", "reference/__init__.py", f"reference/{op}.py"} <= set(files)
    if op == OP:
        assert "kernels/gate_norm_residual/kernel.py" in files
    entry = {"allowed": True, "role": "lab", "errors": {"out0": 1e-3}, "bound": 5e-3, "failed": [],
             "shapes": [{"shape": "s fwd", "ms": 1.0, "ref_ms": 2.0, "speedup": 2.0}],
             "source_hash": gate.op_hash(op, root)}
    entry["reason"] = gate.rule(entry)[1]
    data = {"meta": gate.meta(), "ops": {op: {"triton": entry}}}
    assert gate.verdict_of(data, "ok", op, "triton", root)[0]
    for rel in files:
        f = root / rel
        original = f.read_bytes()
        f.write_bytes(original + b"\n# edited\n")
        ok, why = gate.verdict_of(data, "ok", op, "triton", root)
        assert not ok and why.startswith("stale"), rel
        f.write_bytes(original)
    assert gate.verdict_of(data, "ok", op, "triton", root)[0]


# ------------------------------------------------------------------------------------- gate on first use

@pytest.fixture
def no_compile_peer(monkeypatch):
    """torch.compile on CPU would build C++ for minutes: the peer counts as not installed here."""
    import kernels.gate_norm_residual.peers as peers

    def absent():
        raise ImportError("not on this test machine")

    monkeypatch.setattr(peers, "compiled_reference", absent)


def test_qualify_refuses_a_wrong_kernel_and_says_why(tmp_path, monkeypatch, no_compile_peer):
    import kernels.gate_norm_residual as K
    right = K.gate_norm_residual

    def wrong(*a, **k):
        h, y = right(*a, **k)
        return h, y * 1.01

    monkeypatch.setattr(K, "gate_norm_residual", wrong)
    said = []
    path = tmp_path / "cache" / "gates.json"
    ops = gate.qualify({OP: SHAPE}, cuda=True, path=path, say=said.append, progress=False)
    e = ops[OP]["triton"]
    assert e["allowed"] is False and "fails correctness" in e["reason"] and "out1" in e["reason"]
    assert any(str(path) in s for s in said) and any("fails correctness" in s for s in said)
    ok, why = gate.Verdicts([path]).verdict(OP, "triton")
    assert not ok and "fails correctness" in why


def test_qualify_on_first_use_then_auto_uses_the_kernel(tmp_path, monkeypatch, no_compile_peer):
    """No verdict -> qualify measures the kernel against the fp64 reference and times it against the reference
    (made slow here, so that the interpreted kernel is faster), writes the per-machine manifest under
    GROUNDTHINK_CACHE, and resolve("auto") then uses the kernel; a second call has nothing to do."""
    import reference.gate_norm_residual as R
    real = R.gate_norm_residual

    def slow_reference(*a, **k):
        time.sleep(0.3)
        return real(*a, **k)

    monkeypatch.setattr(R, "gate_norm_residual", slow_reference)
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GROUNDTHINK_MANIFEST", str(tmp_path / "no-published.json"))
    ops = registry.resolve("auto", cuda=True)
    assert ops.impls()[OP] == "reference" and "no manifest" in ops.choices[OP].reason
    said = []
    t0 = time.monotonic()
    new = gate.qualify({OP: SHAPE}, cuda=True, say=said.append, progress=False)
    assert time.monotonic() - t0 < 60
    e = new[OP]["triton"]
    assert e["allowed"] is True, e["reason"]
    assert set(e["errors"]) >= {"out0", "out1", "dx", "da", "db", "dgate", "dweight"}
    assert gate.machine_path().is_file() and gate.machine_path().is_relative_to(tmp_path / "cache")
    ops = registry.resolve("auto", cuda=True)
    assert ops.impls()[OP] == "triton" and "allowed" in ops.choices[OP].reason
    assert gate.qualify({OP: SHAPE}, cuda=True, say=said.append, progress=False) == {}
    # another model shape: qualified again there (a verdict holds at the shapes it was measured at)
    assert OP in gate.qualify({OP: (8, 32, "row", False)}, cuda=True, say=said.append, progress=False)


def test_qualify_keeps_to_its_time_budget(tmp_path, no_compile_peer):
    said = []
    assert gate.qualify({OP: SHAPE}, cuda=True, path=tmp_path / "g.json", say=said.append, progress=False,
                        budget_s=0.0) == {}
    assert any("time budget" in s for s in said)


def test_model_shapes_come_from_the_specs():
    from fused.configs import ModelConfig
    cfg = ModelConfig(name="GF-MH")
    shapes = gate.model_shapes(cfg, 4, 32)
    assert shapes["wkv6"] == (4, 32, cfg.n_head, cfg.head_size, cfg.head_size)
    assert shapes[OP] == (128, cfg.d_model, "row", cfg.residual_fp32)
    assert shapes["mamba2"][:2] == (4, 32)


def test_qualify_plan_measures_every_first_choice_before_second_ones(tmp_path):
    """A spent budget must cost the least: every op's reference and first lab kernel come before any op's
    second candidate, peers last (run 3 on the H100: three wkv6 candidates first had starved the other ops)."""
    from groundthink.spec import get
    shapes = {"wkv6": get("wkv6").bench.cpu_shapes[0], "norm_gate": get("norm_gate").bench.cpu_shapes[0]}
    plan = gate._plan(shapes, False, gate.Verdicts([tmp_path / "none.json"]), force=False)
    order = [(spec.name, impl.name) for spec, impl, _, _ in plan]
    assert order == [("wkv6", "reference"), ("wkv6", "triton"), ("norm_gate", "reference"), ("norm_gate", "triton"),
                     ("wkv6", "triton_fused"), ("wkv6", "triton_parallel")]
