"""The op registry and the gate manifest as training sees them."""
import json

import pytest
import torch

from groundthink import manifest, registry


def test_reference_mode_uses_references():
    ops = registry.resolve("reference")
    assert ops.impls() == {op: "reference" for op in registry.OPS}
    assert "reference" in ops.table()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_auto_on_cpu_uses_references_and_says_why():
    ops = registry.resolve("auto")
    assert set(ops.impls().values()) == {"reference"}
    assert "no GPU" in ops.table()


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="kernels mode"):
        registry.resolve("fast")


def test_unknown_impl_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown implementation"):
        registry.load("wkv6", "nope")


def test_decide_rule():
    fast = [{"shape": "s", "speedup": 3.0, "peak_mb": 10, "ref_peak_mb": 20}]
    assert manifest.decide(True, fast)[0]
    assert not manifest.decide(False, fast)[0], "wrong kernels are never allowed, whatever the speed"
    assert not manifest.decide(True, [{"shape": "s", "speedup": 0.9}])[0]
    assert not manifest.decide(True, [{"shape": "s", "speedup": 2.0, "peak_mb": 500, "ref_peak_mb": 20}])[0]
    assert not manifest.decide(True, [])[0]


def test_manifest_roundtrip_and_staleness(tmp_path, monkeypatch):
    path = tmp_path / "gates.json"
    manifest.write({"wkv6": {"triton": {"allowed": True, "reason": "allowed: test"}}}, path)
    data, status = manifest.load(path)
    assert status == "ok"
    assert manifest.verdict(data, status, "wkv6", "triton") == (True, "allowed: test")
    assert not manifest.verdict(data, status, "gate_norm_residual", "triton")[0]
    # a different source hash of the op's kernel makes its verdict stale
    raw = json.loads(path.read_text())
    raw["meta"]["op_hashes"]["wkv6"] = "0" * 16
    path.write_text(json.dumps(raw))
    data, status = manifest.load(path)
    ok, why = manifest.verdict(data, status, "wkv6", "triton")
    assert not ok and why.startswith("stale") and "re-run the benchmarks" in why
    # another GPU or torch/triton version makes the whole manifest stale
    raw["meta"]["versions"]["triton"] = "0.0"
    path.write_text(json.dumps(raw))
    data, status = manifest.load(path)
    assert status.startswith("stale") and "re-run the benchmarks" in status
    assert not manifest.verdict(data, status, "gate_norm_residual", "triton")[0]


def test_missing_manifest_says_how_to_make_one(tmp_path):
    data, status = manifest.load(tmp_path / "none.json")
    assert data is None and "pytest bench/ --benchmark" in status
