"""bench.report's answers to issue 12 from a small fake run folder: every kernel beside its peers (best lab
kernel vs best peer, peers that were not timed), pytest-benchmark's table from bench.json, the validity runs'
agreement with the reference, the headline answers; the CSV columns and plots they write."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import common, report


def _row(op, impl, shape, pass_, ms, variant="", ms_graph=None):
    return {"op": op, "impl": impl, "shape": shape, "pass": pass_, "dtype": "bfloat16", "ms": ms, "variant": variant,
            "measurement": "fake-gpu", "note": "", "copy_gbps": 3000.0, "ms_graph": ms_graph}


# (shape, eager ms and CUDA-graph ms of triton, triton_fused, fla_chunk, fla_recurrent): the peer wins both modes at
# B8 T4096; at B64 T256 the lab kernel wins eagerly (host time) and fla_recurrent in GPU time; fla_recurrent has no
# graph time at B8 T4096 (its capture failed there, say)
WKV = (("B8 T4096", (12.0, 11.5), (9.0, 8.5), (8.0, 7.5), (20.0, None)),
       ("B64 T256", (1.2, 0.3), (1.0, 0.35), (2.0, 0.5), (4.0, 0.2)))


def fake_rows():
    rows = []
    for shape, *times in WKV:
        rows += [_row("wkv6", "reference", shape, "fwdbwd", 900.0, ms_graph=800.0)]
        rows += [_row("wkv6", impl, shape, "fwdbwd", ms, ms_graph=g)
                 for impl, (ms, g) in zip(("triton", "triton_fused", "fla_chunk", "fla_recurrent"), times)]
    rows += [_row("gate_norm_residual", "reference", "N16384 D128 row", "fwd", 0.3),
             _row("gate_norm_residual", "triton", "N16384 D128 row", "fwd", 0.1),
             _row("gate_norm_residual", "compile", "N16384 D128 row", "fwd", 0.15)]   # fla_rmsnorm not timed
    rows += [_row("train", "triton", "small B64xT256", "train", 15.0, "GF-MH"),
             _row("train", "peer", "small B64xT256", "train", 146.0, "peer")]
    return common.finalize(rows)


@pytest.fixture
def run_dir(tmp_path):
    common.write_csv(fake_rows(), tmp_path / "bench.csv")
    return tmp_path


def test_lab_vs_peers_takes_the_fastest_of_each_side(run_dir):
    t = report.lab_vs_peers(report.load_rows(run_dir))
    assert list(t.columns) == ["op", "shape", "pass", "mode", "best lab", "lab ms", "peers ms", "best peer",
                               "× vs best peer"]
    assert list(t["mode"]) == ["graph", "eager"] * 2 + ["eager"]                  # graph first; compile: eager only
    g = t[(t["op"] == "wkv6") & (t["mode"] == "graph")].set_index("shape")
    assert (g.loc["B8 T4096", "best lab"], g.loc["B8 T4096", "peers ms"]) == ("triton_fused", "fla_chunk 7.5")
    assert g.loc["B8 T4096", "× vs best peer"] == pytest.approx(7.5 / 8.5)
    assert (g.loc["B64 T256", "best lab"], g.loc["B64 T256", "best peer"]) == ("triton", "fla_recurrent")
    assert g.loc["B64 T256", "× vs best peer"] == pytest.approx(0.2 / 0.3)       # the eager winner loses on the GPU
    w = t[(t["op"] == "wkv6") & (t["mode"] == "eager")].set_index("shape")
    assert w.loc["B8 T4096", "best lab"] == "triton_fused" and w.loc["B8 T4096", "best peer"] == "fla_chunk"
    assert w.loc["B8 T4096", "× vs best peer"] == pytest.approx(8.0 / 9.0)          # the peer wins here
    assert w.loc["B64 T256", "× vs best peer"] == pytest.approx(2.0)
    assert w.loc["B64 T256", "peers ms"] == "fla_chunk 2, fla_recurrent 4"
    g = t[t["op"] == "gate_norm_residual"].iloc[0]
    assert (g["best peer"], g["× vs best peer"]) == ("compile", pytest.approx(1.5))
    assert "train" not in set(t["op"])                                              # training has its own table
    assert report.unmeasured_peers(report.load_rows(run_dir)) == ["gate_norm_residual: fla_rmsnorm"]
    assert report.eager_only_peers(report.load_rows(run_dir)) == ["gate_norm_residual: compile"]


def test_report_sections_csv_and_plots(run_dir):
    entries = [{"name": "test_wkv6[triton-B8_T4096-fwdbwd]", "stats": {"median": 0.0125, "rounds": 3},
                "extra_info": {"ms": 12.0}},
               {"name": "test_train[triton-GF-MH-small]", "stats": {"median": 0.016, "rounds": 1},
                "extra_info": {"ms": 15.0}}]
    (run_dir / "bench.json").write_text(json.dumps({"benchmarks": entries}))
    (run_dir / "validity").mkdir()
    for k, off in (("triton", 0.002), ("reference", 0.0)):
        recs = [{"type": "train", "step": s, "loss": 4.0 - s / 100 + off * (s == 20)} for s in (10, 20, 30)]
        if k == "triton":
            recs.append({"type": "train", "step": 40, "loss": 3.6})                    # past the reference's stop
        (run_dir / "validity" / f"GF-MH_small_{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = report.build_report(run_dir).read_text()
    assert text.index("## Answers of this run") < text.index("## Lab kernels vs peers") < text.index("## wkv6")
    graph, eager = (next(ln for ln in text.splitlines() if ln.startswith(f"- **Lab kernels vs the best peer, {m}**"))
                    for m in ("graph", "eager"))
    assert text.index(graph) < text.index(eager) and "GPU time only" in graph and "host time included" in eager
    assert "wkv6 0.67–0.88× (no slower in 0 of 2 cases)." in graph and "gate_norm_residual" not in graph
    assert "wkv6 0.89–2.00× (no slower in 1 of 2 cases)" in eager
    assert "gate_norm_residual 1.50–1.50× (no slower in 1 of 1 cases)" in eager
    assert "Peers with no timing in this run: gate_norm_residual: fla_rmsnorm." in text
    assert "Peers without a CUDA-graph time in this run (not graph-safe, or the capture failed: the row's note): " \
        "gate_norm_residual: compile." in text
    assert "**Training step small B64xT256:** GF-MH --kernels triton 15 ms vs the peer model's 146 ms (9.73×)" in text
    assert pd.read_csv(run_dir / "report_peers.csv").shape == (5, 9)
    # the op's own table: the best peer's time over the row's, CUDA-graph and eager
    assert "| × best peer (graph) | × best peer (eager) |" in text and "| 750.00× | 0.67× | 1.67× |" in text
    assert (run_dir / "peers_speedup.png").stat().st_size > 1000
    # pytest-benchmark's entries beside the rows' own figures
    assert "| test_wkv6[triton-B8_T4096-fwdbwd] | 12.5 | 3 | 12 | 1.04 |" in text
    # validity: compared at the 3 steps both runs logged
    a = report.validity_agreement(run_dir).iloc[0]
    assert (a["run"], a["common steps"]) == ("GF-MH_small_triton", 3)
    assert a["max rel diff"] == pytest.approx(0.002 / 3.8)
    assert "GF-MH_small_triton vs GF-MH_small_reference: max relative train-loss difference 5.26e-04" in text
    assert "criterion ≤ max(1 %, floor) = 1.00e-02, decided by 1 %: PASS" in text and "not measured" in text


def test_validity_verdict_takes_the_larger_of_1_percent_and_the_noise_floor(tmp_path):
    (tmp_path / "validity").mkdir()

    def write(kind, losses):
        recs = [{"type": "train", "step": s, "loss": v} for s, v in enumerate(losses, 1)]
        (tmp_path / "validity" / f"GF-MH_small_{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))

    write("reference", [4.0, 3.0, 2.0])
    write("triton", [4.0, 3.03, 2.03])                                             # 1.5 % at step 3
    write("reference-reordered", [4.0, 2.94, 2.0])                                 # floor 2 % at step 2
    write("triton-bf16init", [4.0, 3.03, 2.04015])                                 # vs triton: 0.5 % at step 3
    v = report.validity_verdict(tmp_path)
    assert (v["lab"], v["at_step"], v["decided_by"], v["pass"]) == ("GF-MH_small_triton", 3, "the noise floor", True)
    assert v["worst"] == pytest.approx(0.015) and v["threshold"] == pytest.approx(0.02)
    assert v["floor_run"] == "GF-MH_small_reference-reordered vs GF-MH_small_reference"
    write("reference-reordered", [4.0, 3.0, 2.004])                                # floor 0.2 %: 1 % decides
    v = report.validity_verdict(tmp_path)
    assert (v["decided_by"], v["pass"], v["floor_steps"]) == ("1 %", False, 3)
    assert v["floor"] == pytest.approx(0.005) and v["floor_run"].endswith("vs GF-MH_small_triton")
    assert "decided by 1 %: FAIL" in report.validity_lines(tmp_path)[0]


def test_summary_is_the_answers_and_the_peer_table(run_dir, tmp_path):
    out = report.summary(run_dir)
    assert "Lab kernels vs the best peer" in out and "triton_fused" in out and "× vs best peer" in out
    assert not list(run_dir.glob("*.png"))                                          # text only, no plots
    assert "no answers yet" in report.summary(tmp_path / "empty")


def test_run_order_puts_first_choices_then_peers_then_other_candidates_then_training():
    """bench/conftest.py's order: every op's reference and first lab kernel, then the peers, then the other lab
    candidates (wkv6 first within each), then training; a spent budget cuts from the end."""
    import types

    from bench import conftest

    def item(module, prio):
        mark = types.SimpleNamespace(args=(prio,))
        return types.SimpleNamespace(module=types.SimpleNamespace(__name__=f"bench.{module}"), name=f"{module}-{prio}",
                                     get_closest_marker=lambda name, m=mark: m)

    items = [item("bench_ddlerp", 1), item("bench_train", 2), item("bench_gate_norm_residual", 3),
             item("bench_wkv6", 3), item("bench_wkv6", 2), item("bench_gate_norm_residual", 1), item("bench_wkv6", 1),
             item("bench_train", 5)]
    order = [it.name for it in sorted(items, key=conftest._run_order)]
    assert order == ["bench_wkv6-1", "bench_gate_norm_residual-1", "bench_ddlerp-1", "bench_wkv6-3",
                     "bench_gate_norm_residual-3", "bench_wkv6-2", "bench_train-2", "bench_train-5"]
