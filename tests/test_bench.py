"""CPU tests of the benchmark plumbing: the gate manifest (rule / write / load / stale) built from result rows,
speedups, the report from a small fake results CSV, and ``pytest bench/`` itself (fast skip without
``--benchmark``; tiny interpreter shapes with it, labelled as not a measurement, no manifest on CPU)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from bench import common
from groundthink import gate

ROOT = Path(__file__).resolve().parent.parent


def _row(op, impl, shape, pass_, ms, peak=100.0, errors=None, variant="", tok_s=None):
    gbps = 1000.0 / ms if (ms and op != "train") else None
    return {"op": op, "impl": impl, "shape": shape, "pass": pass_, "dtype": "bfloat16", "ms": ms, "gbps": gbps,
            "pct_bw": gbps / 30.0 if gbps else None, "tflops": None, "peak_mb": peak, "speedup_vs_ref": None,
            "speedup_vs_best_peer": None,
            "max_rel_err": max(errors.values()) if errors else None, "variant": variant, "tok_s": tok_s,
            "timer": "fake", "reps": 1, "warmup_s": 0.0, "err_shape": shape,
            "errors": json.dumps(errors) if errors else "", "copy_gbps": 3000.0, "ms_graph": None,
            "measurement": "fake-gpu", "note": "", "source_hash": gate.op_hash(op) if op != "train" else "",
            "timing_mode": "eager"}


def fake_rows():
    ok = {"out0": 1e-3, "dr": 2e-3, "dw": 3e-3}
    rows = []
    for shape, ref_ms, tri_ms, fla_ms in (("B8 T4096", 100.0, 1.0, 2.0), ("B64 T256", 10.0, 0.5, 0.9)):
        for pass_ in ("fwd", "fwdbwd"):
            rows.append(_row("wkv6", "reference", shape, pass_, ref_ms, peak=1000.0, errors=ok))
            rows.append(_row("wkv6", "triton", shape, pass_, tri_ms, peak=50.0, errors=ok))
            rows.append(_row("wkv6", "fla_chunk", shape, pass_, fla_ms, peak=500.0, errors=ok))
            rows.append(_row("wkv6", "fla_recurrent", shape, pass_, fla_ms * 2, peak=10.0,
                             errors={"out0": 1e-3, "dw": 8e-2}))           # wrong gradient: denied
    # gate_norm_residual: triton slower than the reference at one shape, compile uses more memory
    rows.append(_row("gate_norm_residual", "reference", "N16384 D128 row", "fwd", 0.14, peak=10.0,
                     errors={"out0": 1e-3}))
    rows.append(_row("gate_norm_residual", "triton", "N16384 D128 row", "fwd", 0.20, peak=10.0,
                     errors={"out0": 1e-3}))
    rows.append(_row("gate_norm_residual", "compile", "N16384 D128 row", "fwd", 0.10, peak=99.0,
                     errors={"out0": 1e-3}))
    # mamba2: mamba_ssm failed to run at one shape
    rows.append(_row("mamba2", "reference", "B64 T256", "fwd", 5.0, errors={"out0": 1e-3}))
    rows.append(_row("mamba2", "mamba_ssm", "B64 T256", "fwd", None, errors={"out0": 1e-3}))
    # training
    for v, tri, ref in (("GF-MH", 100.0, 4000.0), ("HY", 90.0, None)):
        rows.append(_row("train", "triton", "small B64xT256", "train", tri, variant=v, tok_s=16384e3 / tri))
        if ref:
            rows.append(_row("train", "reference", "small B64xT256", "train", ref, variant=v, tok_s=16384e3 / ref))
    rows.append(_row("train", "peer", "small B64xT256", "train", 140.0, variant="peer", tok_s=16384e3 / 140))
    return rows


def _evidence(errors, shapes, role="lab", failed=()):
    shapes = [dict(s, timing_mode=s.get("timing_mode", "eager")) for s in shapes]
    return {"mode": "eager", "errors": errors, "bound": 5e-3, "failed": list(failed), "shapes": shapes,
            "role": role}


def test_rule():
    ok_err = {"out0": 1e-3}
    fast = [{"shape": "s", "ms": 1.0, "ref_ms": 3.0, "peak_mb": 1.0, "ref_peak_mb": 2.0}]
    assert gate.rule(_evidence({"out0": 8e-2}, fast))[0] is False           # correctness first, whatever the speed
    assert "fails correctness" in gate.rule(_evidence({"out0": 8e-2}, fast))[1]
    assert gate.rule(_evidence(ok_err, fast, failed=["B1 fwd"]))[0] is False
    assert gate.rule(_evidence({}, fast))[0] is False                        # unchecked
    assert gate.rule(_evidence(ok_err, []))[0] is False                      # untimed
    assert gate.rule(_evidence(ok_err, [{"shape": "s", "ms": 1.1, "ref_ms": 1.0}]))[0] is False
    assert gate.rule(_evidence(ok_err, [{"shape": "s", "ms": 1.0, "ref_ms": 2.0, "peak_mb": 500.0,
                                         "ref_peak_mb": 10.0}]))[0] is False
    ok, why = gate.rule(_evidence(ok_err, fast))
    assert ok and why.startswith("allowed")
    # a lab kernel slower than a correct installed peer is denied; a peer is not compared with peers
    beaten = [dict(fast[0], peer_ms={"fla_chunk": 0.5})]
    ok, why = gate.rule(_evidence(ok_err, beaten))
    assert not ok and "slower than peer fla_chunk" in why
    assert gate.rule(_evidence(ok_err, beaten, role="peer"))[0] is True
    assert gate.rule(_evidence(ok_err, [dict(fast[0], peer_ms={"fla_chunk": 0.99})]))[0] is True   # noise
    # against a peer, the totals over the calls decide (one implementation serves them all; count-weighted)
    two = [dict(fast[0], shape="a", ms=1.0, peer_ms={"compile": 0.9}),
           dict(fast[0], shape="b", ms=1.0, peer_ms={"compile": 1.3})]
    assert gate.rule(_evidence(ok_err, two))[0] is True                      # loses call a, wins the total
    ok, why = gate.rule(_evidence(ok_err, [dict(two[0], count=5), two[1]]))  # a made 5 times: 5.4 + 1.3 < 6
    assert not ok and "slower than peer compile over its 2 timed calls (5.8 vs 6 ms)" in why, why


def test_finalize_speedups():
    rows = common.finalize(fake_rows())
    tri = next(r for r in rows if r["op"] == "wkv6" and r["impl"] == "triton" and r["shape"] == "B8 T4096"
               and r["pass"] == "fwd")
    assert tri["speedup_vs_ref"] == pytest.approx(100.0)
    assert tri["speedup_vs_best_peer"] == pytest.approx(2.0)                # fla_chunk 2 ms is the best peer
    ref = next(r for r in rows if r["impl"] == "reference" and r["op"] == "wkv6")
    assert ref["speedup_vs_ref"] == pytest.approx(1.0)
    gf = next(r for r in rows if r["op"] == "train" and r["variant"] == "GF-MH" and r["impl"] == "triton")
    assert gf["speedup_vs_ref"] == pytest.approx(40.0)
    assert gf["speedup_vs_best_peer"] == pytest.approx(1.4)
    hy = next(r for r in rows if r["op"] == "train" and r["variant"] == "HY")
    assert hy["speedup_vs_ref"] is None and hy["speedup_vs_best_peer"] == pytest.approx(140 / 90)
    failed = next(r for r in rows if r["impl"] == "mamba_ssm")
    assert failed["speedup_vs_ref"] is None


def test_manifest_from_rows_write_load_stale(tmp_path, monkeypatch):
    ops = gate.evidence(common.finalize(fake_rows()))
    tri = ops["wkv6"]["triton"]["eager"]
    assert tri["allowed"] is True and "no slower than fla_chunk" in tri["reason"]
    assert len(tri["shapes"]) == 4                                          # 2 shapes × fwd, fwdbwd
    assert tri["errors"]["dw"] == pytest.approx(3e-3)
    assert set(tri["shapes"][0]["peer_ms"]) == {"fla_chunk"}                 # fla_recurrent is wrong: no peer
    assert tri["source_hash"] == gate.op_hash("wkv6") and "kernels/wkv6/__init__.py" in tri["sources"]
    assert ops["wkv6"]["fla_chunk"]["eager"]["allowed"] is True
    assert ops["wkv6"]["fla_recurrent"]["eager"]["allowed"] is False                 # fast enough, but dw is wrong
    assert "dw" in ops["wkv6"]["fla_recurrent"]["eager"]["reason"]
    assert ops["gate_norm_residual"]["triton"]["eager"]["allowed"] is False          # slower than the reference
    assert "not faster" in ops["gate_norm_residual"]["triton"]["eager"]["reason"]
    assert ops["gate_norm_residual"]["compile"]["eager"]["allowed"] is False         # more memory
    assert "memory" in ops["gate_norm_residual"]["compile"]["eager"]["reason"]
    assert ops["mamba2"]["mamba_ssm"]["eager"]["allowed"] is False                   # failed to run somewhere
    assert "reference" not in ops["wkv6"]
    assert "train" not in ops

    path = tmp_path / "gates.json"
    gate.write(ops, path)
    data, status = gate.load(path)
    assert status == "ok", status
    assert set(data["meta"]) >= {"gpu", "slug", "versions", "kernel_hash", "op_hashes", "created"}
    assert gate.verdict_of(data, status, "wkv6", "triton")[0] is True
    assert gate.verdict_of(data, status, "gate_norm_residual", "triton")[0] is False
    # stale: one entry's source hash differs from the op's sources now -> only that verdict is void
    data["ops"]["wkv6"]["triton"]["eager"]["source_hash"] = "0" * 16
    path.write_text(json.dumps(data))
    data2, status2 = gate.load(path)
    assert status2 == "ok"
    ok, why = gate.verdict_of(data2, status2, "wkv6", "triton")
    assert not ok and why.startswith("stale") and "kernels/wkv6/__init__.py" in why
    assert gate.verdict_of(data2, status2, "wkv6", "fla_chunk")[0] is True
    # an older manifest without per-entry hashes allows nothing
    del data["ops"]["wkv6"]["fla_chunk"]["eager"]["source_hash"]
    path.write_text(json.dumps(data))
    ok, why = gate.verdict_of(*gate.load(path), "wkv6", "fla_chunk")
    assert not ok and "no source hash" in why
    # another torch version makes the whole manifest stale
    data["meta"]["versions"]["torch"] = "0.0"
    path.write_text(json.dumps(data))
    d3, s3 = gate.load(path)
    assert s3.startswith("stale") and "torch" in s3
    # missing
    d4, s4 = gate.load(tmp_path / "nope.json")
    assert d4 is None and "no manifest" in s4


def test_ms_graph_gives_the_verdict_for_the_captured_step(tmp_path):
    """Run 6's contradiction: eager timings at the model's small shape are host overhead, and fla (not
    graph-safe) won there, so the eager verdict denied wkv6/triton while the captured step could not use fla at
    all. A benchmark row's ``ms_graph`` (graph-safe implementations only) makes the graph verdict: CUDA-graph
    times against the graph-safe competitors. It survives the CSV; a failed capture denies the graph verdict."""
    ok = {"out0": 1e-3}
    rows = [dict(_row("wkv6", "reference", "B64 T256", "fwdbwd", 30.0, errors=ok), ms_graph=20.0),
            dict(_row("wkv6", "triton", "B64 T256", "fwdbwd", 1.65, peak=50.0, errors=ok), ms_graph=0.30),
            _row("wkv6", "fla_recurrent", "B64 T256", "fwdbwd", 1.12, peak=50.0, errors=ok)]
    rows = common.read_csv_rows(common.write_csv(common.finalize(rows), tmp_path / "bench.csv"))
    ops = gate.evidence(rows)
    eager, graph = ops["wkv6"]["triton"]["eager"], ops["wkv6"]["triton"]["graph"]
    assert not eager["allowed"] and "slower than peer fla_recurrent at B64 T256 fwdbwd (eager)" in eager["reason"]
    assert graph["allowed"] and graph["mode"] == "graph" and graph["shapes"][0]["ms"] == pytest.approx(0.30)
    assert graph["shapes"][0]["peer_ms"] == {} and "(graph)" in graph["reason"]
    assert set(ops["wkv6"]["fla_recurrent"]) == {"eager"}
    path = gate.write(ops, tmp_path / "gates.json")
    assert gate.Verdicts([path], shapes={"wkv6": "B64 T256"}, graph=True).choose(
        gate.get("wkv6"), lambda n: True)[0] == "triton"
    assert gate.Verdicts([path], shapes={"wkv6": "B64 T256"}).choose(gate.get("wkv6"), lambda n: True)[0] == \
        "fla_recurrent"
    rows[1].update(ms_graph=None, note=f"{gate.GRAPH_FAILED}: RuntimeError: capture")
    graph = gate.evidence(rows)["wkv6"]["triton"]["graph"]
    assert not graph["allowed"] and "failed: B64 T256 fwdbwd" in graph["reason"]


def test_graph_verdicts_compare_graph_timed_lab_kernels_with_graph_timed_peers(tmp_path):
    """Issue 11's rule where the step runs (captured): a peer faster in CUDA-graph replays denies the lab kernel's
    graph verdict (and is chosen there) while its eager verdict stands; a peer whose capture failed, or that was
    timed eagerly only, is no competitor of the graph verdict (and has no graph verdict that could be chosen)."""
    ok = {"out0": 1e-3}

    def rows(chunk_graph, note=""):
        return [dict(_row("wkv6", "reference", "B64 T256", "fwdbwd", 30.0, errors=ok), ms_graph=20.0),
                dict(_row("wkv6", "triton", "B64 T256", "fwdbwd", 1.65, peak=50.0, errors=ok), ms_graph=0.30),
                dict(_row("wkv6", "fla_chunk", "B64 T256", "fwdbwd", 2.0, peak=50.0, errors=ok),
                     ms_graph=chunk_graph, note=note),
                _row("wkv6", "fla_recurrent", "B64 T256", "fwdbwd", 3.0, peak=50.0, errors=ok)]   # eager only

    ops = gate.evidence(common.read_csv_rows(common.write_csv(common.finalize(rows(0.25)), tmp_path / "a.csv")))
    graph, eager = ops["wkv6"]["triton"]["graph"], ops["wkv6"]["triton"]["eager"]
    assert not graph["allowed"] and graph["shapes"][0]["peer_ms"] == {"fla_chunk": 0.25}
    assert "slower than peer fla_chunk at B64 T256 fwdbwd (graph) (0.25 vs 0.3 ms)" in graph["reason"]
    assert eager["allowed"] and "no slower than fla_chunk, fla_recurrent" in eager["reason"]
    assert ops["wkv6"]["fla_chunk"]["graph"]["allowed"] and set(ops["wkv6"]["fla_recurrent"]) == {"eager"}
    path = gate.write(ops, tmp_path / "gates.json")
    impl, why = gate.Verdicts([path], shapes={"wkv6": "B64 T256"}, graph=True).choose(gate.get("wkv6"),
                                                                                        lambda n: True)
    assert impl == "fla_chunk" and "(graph)" in why
    # the peer's capture failed: it does not count, and its own graph verdict denies
    ops = gate.evidence(common.finalize(rows(None, f"{gate.GRAPH_FAILED}: RuntimeError: capture")))
    graph = ops["wkv6"]["triton"]["graph"]
    assert graph["allowed"] and graph["shapes"][0]["peer_ms"] == {} and "no slower than" not in graph["reason"]
    assert not ops["wkv6"]["fla_chunk"]["graph"]["allowed"] and "failed" in ops["wkv6"]["fla_chunk"]["graph"]["reason"]


def test_batched_eager_timing_clears_gradients_and_sizes_its_batches():
    """``ms``'s timer (``gate._time_ms`` in the bench's box, ``gate._clearing``): ``MAX_SAMPLES`` batches of
    back-to-back calls within the box, at most ``MAX_BATCH`` calls a batch, every call after clearing the leaves'
    gradients; a call longer than half the box is its own time."""
    leaf, calls = torch.zeros(1, requires_grad=True), []

    def fn():
        calls.append(leaf.grad)
        leaf.grad = torch.ones(1)
    run = gate._clearing(fn, [leaf])
    ms, reps = gate._time_ms(run, False, first_ms=1e-4, box_ms=60.0)
    assert reps == len(calls) == gate.MAX_SAMPLES * gate.MAX_BATCH and set(calls) == {None} and ms >= 0
    calls.clear()
    assert gate._time_ms(run, False, first_ms=10.0, box_ms=60.0)[1] == len(calls) == gate.MAX_SAMPLES
    calls.clear()
    assert gate._time_ms(run, False, first_ms=40.0, box_ms=60.0) == (40.0, 1) and not calls


@pytest.mark.gpu
@pytest.mark.parametrize("op,impl", [("decay_exp", "reference"), ("decay_exp", "triton"),
                                     ("gate_norm_residual", "compile"), ("gate_norm_residual", "fla_rmsnorm"),
                                     ("norm_gate", "mamba_ssm"), ("wkv6", "fla_recurrent")])
def test_bench_times_graph_safe_implementations_as_graph_replays(op, impl):
    """``ms_graph`` on a GPU: a CUDA-graph time for graph-safe implementations — the peers included (issue 12:
    torch.compile, fla's norm and wkv6, mamba-ssm's gated norm capture after their warm-up)."""
    spec = gate.get(op)
    shp = spec.bench.cpu_shapes[0]
    try:
        fn = spec.impl(impl).load()
    except ImportError as e:
        pytest.skip(f"{op}/{impl} not installed: {e}")
    step, leaves = common.make_backward(fn, spec.bench.make_inputs(*shp, True, dtype=spec.bench.dtype,
                                                                   device=common.DEVICE))
    step()
    ms, note = common.time_graph(op, impl, step, leaves)
    assert ms is not None and ms > 0 and not note, note


def test_csv_columns_and_report(tmp_path):
    from bench import report
    rows = common.finalize(fake_rows())
    common.write_csv(rows, tmp_path / "bench.csv")
    header = (tmp_path / "bench.csv").read_text().splitlines()[0].split(",")
    assert header[:13] == ["op", "impl", "shape", "pass", "dtype", "ms", "gbps", "pct_bw", "tflops", "peak_mb",
                           "speedup_vs_ref", "speedup_vs_best_peer", "max_rel_err"]
    gate.write(gate.evidence(rows), tmp_path / "gates.json")
    (tmp_path / "validity").mkdir()
    for k, off in (("triton", 0.0), ("reference", 0.01)):
        recs = [{"type": "config", "step": 0, "ops": {"wkv6": k}}] + \
               [{"type": "train", "step": s, "loss": 4 - s / 100 + off} for s in range(10, 110, 10)] + \
               [{"type": "final", "step": 100, "final_loss": 3.0, "val_loss": 3.1}]
        (tmp_path / "validity" / f"GF-MH_small_{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = report.build_report(tmp_path)
    text = out.read_text()
    for needle in ("## wkv6", "## gate_norm_residual", "## mamba2", "## End to end", "## Gate manifest",
                   "## End-to-end validity", "wkv6_time.png", "train_tok_s.png", "validity_loss.png"):
        assert needle in text, needle
    assert "NOT A PERFORMANCE MEASUREMENT" not in text                      # fake GPU rows
    for png in ("wkv6_time.png", "wkv6_pct_bw.png", "wkv6_speedup.png", "train_tok_s.png",
                "train_peak_mem.png", "validity_loss.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    assert (tmp_path / "report_wkv6_ms.csv").exists()
    # CPU rows: the report says so up front
    cpu_rows = [dict(r, measurement="cpu-not-a-measurement", note=common.NOT_A_MEASUREMENT) for r in rows[:4]]
    d2 = tmp_path / "cpu"
    common.write_csv(cpu_rows, d2 / "bench.csv")
    assert "NOT A PERFORMANCE MEASUREMENT" in report.build_report(d2).read_text()


def test_the_bench_writes_the_same_manifest_and_csv_fields(tmp_path):
    """The files' contract (issue 13: "the bench still writes the same manifest fields"): the manifest's keys at
    every level and the CSV's columns, as run 11's qualification manifest and run 6's bench.csv have them. A change
    here is a format change: the readers (gate.load, bench.report, the studies) must follow it."""
    rows = common.finalize(fake_rows())
    data = json.loads(gate.write(gate.evidence(rows), tmp_path / "gates.json").read_text())
    assert set(data) == {"meta", "ops"}
    assert set(data["meta"]) == {"created", "gpu", "kernel_hash", "op_hashes", "slug", "source", "versions"}
    entries = [e for impls in data["ops"].values() for modes in impls.values() for e in modes.values()]
    assert entries and all(set(e) == {"allowed", "bound", "dtype", "errors", "failed", "mode", "reason", "role",
                                      "shapes", "source_hash", "sources"} for e in entries)
    assert all(set(s) == {"bound", "dtype", "errors", "ms", "peak_mb", "peer_ms", "ref_ms", "ref_peak_mb", "shape",
                          "speedup", "timing_mode"} for e in entries for s in e["shapes"])
    header = common.write_csv(rows, tmp_path / "bench.csv").read_text().splitlines()[0].split(",")
    assert header == ["op", "impl", "shape", "pass", "dtype", "ms", "gbps", "pct_bw", "tflops", "peak_mb",
                      "speedup_vs_ref", "speedup_vs_best_peer", "max_rel_err", "variant", "tok_s", "timer", "reps",
                      "warmup_s", "err_shape", "errors", "copy_gbps", "ms_graph", "measurement", "note",
                      "source_hash", "timing_mode"]


def _pytest(args, env_extra, monkeypatch, capsys):
    """``pytest ARGS`` in this process (the benchmarks' conftest, collector and session hooks as in a run of their
    own, without a second start of Python, torch and Triton): (exit code, its output, seconds). The benchmarks'
    result list and session state start empty and are restored afterwards."""
    for k, v in env_extra.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    for k in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):   # under xdist: still a run of its own
        monkeypatch.delenv(k, raising=False)                         # (pytest-benchmark would switch itself off)
    monkeypatch.setattr(common, "RESULTS", [])
    monkeypatch.setattr(common, "SESSION", {"start": time.monotonic(), "copy_gbps": None})
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    t0 = time.monotonic()
    rc = pytest.main([*args, "-q", "-p", "no:cacheprovider"])
    out = capsys.readouterr()
    return int(rc), out.out + out.err, time.monotonic() - t0


def test_pytest_bench_without_flag_skips_fast(tmp_path, monkeypatch, capsys):
    rc, out, dt = _pytest(["bench/"], {"GT_BENCH_OUT": str(tmp_path)}, monkeypatch, capsys)
    assert rc == 0, out[-3000:]
    assert "skipped" in out and " passed" not in out, out[-2000:]
    assert "run with pytest bench/ --benchmark" in out
    assert not (tmp_path / "bench.csv").exists()
    assert dt < 45, dt


@pytest.mark.skipif(common.ON_GPU, reason="the CPU path (interpreter shapes) is what this checks")
def test_pytest_bench_cpu_run(tmp_path, monkeypatch, capsys):
    gates = tmp_path / "gates_should_not_exist.json"
    # the lab's gate_norm_residual kernel through the interpreter, the wkv6 and mamba2 references (the wkv6
    # kernel's own tests cover it; this checks the plumbing)
    rc, out, dt = _pytest(["bench/bench_gate_norm_residual.py", "bench/bench_wkv6.py", "bench/bench_mamba2.py",
                           "--benchmark", "-k", "(gate_norm and (reference or triton) and row and not res32) or "
                                                "((wkv6 or mamba2) and reference)"],
                          {"GT_BENCH_OUT": str(tmp_path), "GROUNDTHINK_MANIFEST": str(gates)}, monkeypatch, capsys)
    assert rc == 0, out[-4000:]
    assert "NOT A PERFORMANCE MEASUREMENT" in out
    assert "no gate manifest written on CPU" in out
    assert not gates.exists()
    text = (tmp_path / "bench.csv").read_text()
    lines = text.splitlines()
    assert len(lines) >= 1 + 8, text[:2000]                                 # 4 gate + 2 wkv6 + 2 mamba2
    assert all("NOT A PERFORMANCE MEASUREMENT" in ln for ln in lines[1:])
    assert "gate_norm_residual,triton,N16 D32 row,fwdbwd" in text
    assert "wkv6,reference," in text and "mamba2,reference," in text
    rows = json.loads((tmp_path / "bench_rows.json").read_text())["rows"]
    tri = [r for r in rows if r["impl"] == "triton"]
    assert tri and all(r["max_rel_err"] is not None and r["max_rel_err"] < 5e-2 for r in tri)
    assert all(r["speedup_vs_ref"] is not None for r in tri)
    assert {r["timing_mode"] for r in rows} == {"eager"}                    # every row says how it was timed


def test_rows_read_back_keep_their_timing_mode_and_old_ones_allow_nothing(tmp_path):
    """The CSV round-trips ``timing_mode``; rows of an older bench.csv (no such column) deny (fail closed)."""
    import csv
    path = common.write_csv(common.finalize(fake_rows()), tmp_path / "bench.csv")
    back = common.read_csv_rows(path)
    assert {r["timing_mode"] for r in back} == {"eager"}
    assert gate.evidence(back)["wkv6"]["triton"]["eager"]["allowed"] is True
    with open(path, newline="") as f:
        old = [{k: v for k, v in r.items() if k != "timing_mode"} for r in csv.DictReader(f)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(old[0]))
        w.writeheader()
        w.writerows(old)
    assert gate.evidence(common.read_csv_rows(path)) == {}                  # no mode, no verdict


def test_merge_partial_rerun(tmp_path, monkeypatch):
    """GT_BENCH_MERGE=1: a partial re-run replaces the rows it re-measures and keeps the others."""
    old = common.finalize(fake_rows())
    common.write_csv(old, tmp_path / "bench.csv")
    monkeypatch.setenv("GT_BENCH_OUT", str(tmp_path))
    monkeypatch.setenv("GT_BENCH_MERGE", "1")
    monkeypatch.setattr(common, "RESULTS", [])
    monkeypatch.setattr(common, "SESSION", {"start": time.monotonic(), "copy_gbps": None})
    new = _row("wkv6", "triton", "B8 T4096", "fwd", 0.5, errors={"out0": 1e-3})
    common.RESULTS.append(new)
    common.checkpoint()
    back = common.read_csv_rows(tmp_path / "bench.csv")
    assert len(back) == len(old)
    tri = [r for r in back if r["impl"] == "triton" and r["shape"] == "B8 T4096" and r["pass"] == "fwd"
           and r["op"] == "wkv6"]
    assert len(tri) == 1 and tri[0]["ms"] == pytest.approx(0.5)
    assert tri[0]["speedup_vs_ref"] == pytest.approx(200.0)                 # vs the kept reference row
    ops = gate.evidence(common.all_rows())
    assert ops["wkv6"]["triton"]["eager"]["allowed"] is True
    # rows kept from a run of other sources keep their hash: a verdict never mixes them, nor gets the new hash
    old_code = [dict(r, source_hash="0" * 16) for r in old]
    common.write_csv(old_code, tmp_path / "bench.csv")
    monkeypatch.setattr(common, "SESSION", {"start": time.monotonic(), "copy_gbps": None})
    common.checkpoint()
    ops = gate.evidence(common.all_rows())
    tri = ops["wkv6"]["triton"]["eager"]
    assert tri["allowed"] is False and "different versions" in tri["reason"]
    assert ops["wkv6"]["fla_chunk"]["eager"]["source_hash"] == "0" * 16
    path = gate.write(ops, tmp_path / "gates.json")
    ok, why = gate.verdict_of(*gate.load(path), "wkv6", "fla_chunk")
    assert not ok and why.startswith("stale")
    # without the flag a run starts a fresh CSV
    monkeypatch.setenv("GT_BENCH_MERGE", "0")
    monkeypatch.setattr(common, "SESSION", {"start": time.monotonic(), "copy_gbps": None})
    common.checkpoint()
    assert len(common.read_csv_rows(tmp_path / "bench.csv")) == 1


def test_sass_ops_counts_opcodes_without_predicates_or_modifiers():
    """``bench.sm90.sass_ops`` (the offline proxy for shared / local memory traffic, ``gpu_wkv6.py --regs``)."""
    from bench.sm90 import sass_ops
    listing = "\n".join([
        "        /*0000*/                   MOV R1, c[0x0][0x28] ;",
        "        /*0010*/                   STS.128 [R2], R4 ;",
        "        /*0020*/              @P0  LDS.64 R6, [R3] ;",
        "        /*0030*/             @!P1  STL [R1+0x10], R8 ;",
        "        /*0040*/                   LDSM.16.M88.4 R8, [R9] ;",
        "        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;",
        "        /* 0x000fe20000000f00 */",
        "        /*0060*/                   STS [R2+0x4], R5 ;"])
    ops = sass_ops(listing)
    assert ops == {"MOV": 1, "STS": 2, "LDS": 1, "STL": 1, "LDSM": 1, "BAR": 1}, ops


def test_sass_digest_names_the_instruction_stream():
    """``bench.sm90.sass_digest``: the same instructions at other addresses (and other encodings, spacing) give the
    same digest; one changed operand, or two instructions swapped, another."""
    from bench.sm90 import sass_digest
    a = ["        /*0000*/                   MOV R1, c[0x0][0x28] ;", "        /* 0x000fe20000000f00 */",
         "        /*0010*/              @P0  LDS.64 R6, [R3] ;", "        /*0020*/                   EXIT ;"]
    moved = [ln.replace("/*00", "/*10").replace("0x000fe2", "0x111111") for ln in a]
    moved[2] = moved[2].replace("   LDS.64", " LDS.64")
    assert sass_digest("\n".join(a)) == sass_digest("\n".join(moved))
    assert sass_digest("\n".join(a)) != sass_digest("\n".join(a).replace("R6", "R8"))
    assert sass_digest("\n".join(a)) != sass_digest("\n".join([a[0], a[1], a[3], a[2]]))
    assert len(sass_digest("\n".join(a))) == 12


def test_ncu_summary_reads_the_committed_export():
    """``scripts/ncu_summary.py`` on run 29's Nsight Compute export: one row per kernel, L1 before DRAM, the
    bank conflicts from ncu's rule text; a file that is not such an export is a one-line error."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "scripts"))
    try:
        from ncu_summary import summarize
    finally:
        sys.path.pop(0)
    rows = {r["kernel"]: r for r in summarize(str(root / "profiles/nvidia-h200/run29-2026-11-29/c6/ncu_details.csv"))}
    assert set(rows) == {"_fwd_walk", "_bwd_own_kernel", "_bwd_cross_kernel"}
    cross = rows["_bwd_cross_kernel"]
    assert (cross["L1/TEX %"], cross["DRAM %"], cross["registers"]) == ("77.66", "21.48", "168")
    assert cross["shared stores"].startswith("37,535,872 req, 3.6-way")
    r = subprocess.run([sys.executable, str(root / "scripts/ncu_summary.py"), str(root / "README.md")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout.startswith("error: ") and len(r.stdout.strip().splitlines()) == 1


def test_ncu_lines_by_source_line(tmp_path):
    """``scripts/ncu_lines.py`` on a source-view export laid out as Nsight Compute 2025.3 writes it (``--page source
    --csv --print-source cuda,sass``: per file and kernel a header, each source line's row, then its SASS rows):
    the lines' samples, shared wavefronts (their excess over the ideal), spill instructions (STL / LDL rows), files
    relative to their package (no machine path), the top stall; a file that is not such an export is a one-line
    error."""
    import csv
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    head = ["Line No", "Source", "Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed",
            "L1 Wavefronts Shared", "L1 Wavefronts Shared Ideal", "stall_long_sb", "stall_wait"]
    rows = [["File Path", "/some/where/site-packages/triton/language/standard.py"], ["Function Name", "_k"], head,
            ["293", "return core.reduce(...)", "-", "-", "40", "100", "80", "10", "5", "30"],
            ["", "", "0x10", "  STS [R1], R2", "20", "50", "40", "5", "0", "15"],
            ["File Path", "/a/checkout/kernels/wkv6/chunk.py"], ["Function Name", "_k"], head,
            ["97", "return tl.load(p)", "-", "-", "60", "200", "0", "0", "50", "10"],
            ["", "", "0x20", "  STL [R1+0x8], R3", "0", "7", "-", "-", "0", "0"],
            ["", "", "0x30", "  LDL R3, [R1+0x8]", "0", "5", "-", "-", "0", "0"]]
    p = tmp_path / "source.csv"
    with open(p, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    r = subprocess.run([sys.executable, str(root / "scripts/ncu_lines.py"), str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "### _k" in out and "/some/where" not in out and "/a/checkout" not in out
    load, red = (next(ln for ln in out.splitlines() if ln.startswith(f"| {f}")) for f in
                 ("kernels/wkv6/chunk.py:97", "triton/language/standard.py:293"))
    assert "60 (60.0%)" in load and "| 12 |" in load and "long_sb 83%" in load     # STL 7 + LDL 5 executed
    assert "80 (88%)" in red and "wait 75%" in red
    assert out.index("chunk.py:97") < out.index("standard.py:293")                     # by samples
    bad = subprocess.run([sys.executable, str(root / "scripts/ncu_lines.py"), str(root / "README.md")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stdout.strip().splitlines()) == 1
