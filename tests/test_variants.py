"""bench.variants, bench.long_context and bench.report_variants end to end on CPU at a tiny size: every code path
the GPU study takes (in-process runs, --isolate subprocesses, resume and --force, a failed variant, checkpoint
reuse, the report's tables and plots), plus one-line errors for bad arguments; the token budget's rule (at most
MAX_PASSES passes over train.py's training split) and the ranking by best validation loss, old CSVs included.
"""
from __future__ import annotations

import math
import os
import sys

import pandas as pd
import pytest
import torch

from bench import long_context as lc
from bench import report_variants as rv
from bench import variants as bv

TINY = ["--size", "tiny", "--override", "n_layer=2", "--override", "d_model=32", "--override", "head_size=16",
        "--override", "headdim=16", "--override", "mix_lora=4", "--override", "decay_lora=8",
        "--override", "d_state=8", "--override", "chunk_size=16"]
STUDY = ["--steps", "3", "--batch-size", "4", "--seq-len", "32", "--eval-interval", "2", "--eval-iters", "1", *TINY]
REQUIRED = ("variant", "size", "tokens", "val_loss", "bpc", "tok_s", "ms_step", "peak_mb", "grad_ratio_rm",
            "gate_mean", "gate_drift")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    assert bv.main([*STUDY, "--variants", "GF-MH", "rwkv6", "--out", str(out)]) == 0
    return out


def test_study_writes_rows_curves_and_state_columns(study):
    from groundthink.data import default_corpus
    df = pd.read_csv(study / "variants.csv")
    assert list(df["variant"]) == ["GF-MH", "rwkv6"] and set(REQUIRED) <= set(df.columns)
    assert (df["status"] == "ok").all() and (df["tokens"] == 3 * 4 * 32).all() and (df["device"] == "cpu").all()
    split = int(len(default_corpus()) * 0.9)                          # char tokens, train.py's --val-frac 0.1
    assert df["passes"].tolist() == pytest.approx([384 / split] * 2) and set(df["best_step"]) <= {2, 3}
    assert (df["overfit"] == (df["val_loss"] > 1.02 * df["best_val_loss"])).all()
    for _, r in df.iterrows():
        assert math.isclose(r["bpc"], r["val_loss"] / math.log(2))
        assert r["tok_s"] > 0 and r["ms_step"] > 0 and r["peak_mb"] > 0 and r["params"] > 0
        assert r["state_finite"] and r["state_rms_rwkv"] > 0 and r["state_var_rwkv"] > 0
        assert "wkv6=reference" in r["kernels"]
    gf, rw = df.iloc[0], df.iloc[1]
    assert gf["grad_ratio_rm"] > 0 and 0 < gf["gate_mean"] < 1 and gf["state_var_ratio"] > 0
    assert math.isnan(rw["grad_ratio_rm"]) and math.isnan(rw["gate_mean"]) and math.isnan(rw["state_var_mamba"])
    curves = pd.read_csv(study / "variants_curves.csv")
    for v in ("GF-MH", "rwkv6"):
        c = curves[curves["variant"] == v]
        assert list(c["step"]) == [2, 3] and list(c["tokens"]) == [256, 384] and (c["train_s"] > 0).all()
    assert curves.groupby("variant")["val_loss"].last().to_dict() == pytest.approx(
        df.set_index("variant")["val_loss"].to_dict())


def test_resume_skips_done_variants_and_force_redoes_one(study, capsys):
    before = (study / "variants.csv").read_text()
    assert bv.main([*STUDY, "--variants", "GF-MH", "rwkv6", "--out", str(study)]) == 0
    out = capsys.readouterr().out
    assert out.count("in variants.csv already") == 2
    assert (study / "variants.csv").read_text() == before
    old = pd.read_csv(study / "variants.csv").set_index("variant")["wall_s"]
    assert bv.main([*STUDY, "--variants", "rwkv6", "--out", str(study), "--force"]) == 0
    df = pd.read_csv(study / "variants.csv").set_index("variant")
    assert sorted(df.index) == ["GF-MH", "rwkv6"]                    # replaced, not appended
    assert df.loc["GF-MH", "wall_s"] == old["GF-MH"] and df.loc["rwkv6", "wall_s"] != old["rwkv6"]
    assert len(pd.read_csv(study / "variants_curves.csv")) == 4


def test_a_failed_variant_is_recorded_and_retried(tmp_path, monkeypatch, capsys):
    import train
    real = train.main

    def flaky(argv):
        if "HY" in argv:
            raise RuntimeError("simulated crash")
        return real(argv)

    monkeypatch.setattr(train, "main", flaky)
    assert bv.main([*STUDY, "--steps", "2", "--variants", "HY", "mamba2", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "variants.csv").set_index("variant")
    assert df.loc["HY", "status"] == "RuntimeError: simulated crash" and df.loc["mamba2", "status"] == "ok"
    assert "simulated crash" in capsys.readouterr().err               # the train log's tail, where the user sees it
    assert "HY" not in set(pd.read_csv(tmp_path / "variants_curves.csv")["variant"])
    lines = rv.variants_section(tmp_path)
    assert any("did not finish" in ln for ln in lines)
    monkeypatch.setattr(train, "main", real)
    assert bv.main([*STUDY, "--steps", "2", "--variants", "HY", "mamba2", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "variants.csv").set_index("variant")
    assert (df["status"] == "ok").all() and len(df) == 2


# ----------------------------------------------------------------------------------------------- the token budget

@pytest.fixture
def small_corpus(tmp_path):
    """10,000 characters: train.py's split keeps 9,000 for training (5 passes = 45,000 tokens)."""
    path = tmp_path / "small.txt"
    path.write_text(("the quick brown fox jumps over the lazy dog\n" * 300)[:10_000])
    return str(path)


def test_fit_batch_halves_the_default_to_fit_max_passes():
    assert bv.MAX_PASSES == 5
    assert bv.fit_batch(1000, 64, 256, 448_518) == 8           # run 8's corpus (H100): 4.57 passes, full study
    assert bv.fit_batch(200, 64, 256, 448_518) == 32           # --quick: 3.65 passes
    assert bv.fit_batch(10, 64, 256, 10**9) == 64              # a large corpus keeps the default
    assert bv.fit_batch(1000, 64, 256, 1000) == 1              # never below 1
    assert "warning: 5.7 passes > 5" in bv.budget_line(1000, 1, 256, 45_000, "batch 1")
    assert "warning" not in bv.budget_line(1000, 8, 256, 448_518, "batch 8")


def test_budget_from_train_py_split(small_corpus, capsys):
    a = bv.parse_args(["--data", small_corpus, "--steps", "100", "--seq-len", "64", "--variants", "HY"])
    text = bv.fit_budget(a)                   # CPU default batch 8: 51,200 tokens > 45,000 -> 4
    assert (a.split_tokens, a.batch_size, a.tokens) == (9000, 4, 25_600) and a.passes == pytest.approx(25600 / 9000)
    assert "9,000 train" in text and "2.84 passes" in text and "batch 4: the largest of 8" in text
    a = bv.parse_args(["--data", small_corpus, "--steps", "100", "--seq-len", "64", "--batch-size", "16"])
    text = bv.fit_budget(a)                   # explicit: kept, with a warning
    assert a.batch_size == 16 and "batch 16 from --batch-size" in text and "warning: 11.4 passes > 5" in text
    a = lc.parse_args(["--data", small_corpus, "--contexts", "16", "64"])
    text = lc.fit_budget(a)                   # one window of 64 a step, 1,000 steps -> lowered to 703
    assert (a.tokens_per_step, a.steps) == (64, 703) and a.passes <= 5 and "steps lowered to 703" in text
    a = lc.parse_args(["--data", small_corpus, "--contexts", "64", "--steps", "1000", "--tokens-per-step", "128"])
    assert "warning: 14.2 passes" in lc.fit_budget(a) and (a.tokens_per_step, a.steps) == (128, 1000)


def test_train_py_rejecting_a_flag_is_one_line(tmp_path, capsys):
    """A value only train.py checks (--lr 100): its one-line error is repeated, the study stops."""
    with pytest.raises(SystemExit) as e:
        bv.main([*STUDY, "--variants", "GF-MH", "--lr", "100", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: --lr 100") and "\n" not in err


def test_budget_and_default_order(tmp_path, capsys):
    import fused
    names = bv.default_variants()
    assert sorted(names) == sorted(fused.list_models()) and names[:3] == ["GF-MH", "rwkv6", "mamba2"]
    assert bv.main([*STUDY, "--out", str(tmp_path), "--budget-s", "0"]) == 0
    assert f"{len(names)} runs not started (GF-MH, rwkv6, mamba2" in capsys.readouterr().out
    assert not (tmp_path / "variants.csv").exists()


def test_isolate_runs_each_variant_in_a_subprocess(tmp_path, capfd):
    env_path = os.environ.get("PYTHONPATH")
    assert bv.main([*STUDY, "--steps", "2", "--variants", "mamba2", "--out", str(tmp_path), "--isolate"]) == 0
    assert os.environ.get("PYTHONPATH") == env_path
    df = pd.read_csv(tmp_path / "variants.csv")
    assert list(df["variant"]) == ["mamba2"] and df["status"].iloc[0] == "ok"
    out = capfd.readouterr().out
    assert "[1/1] mamba2: best val" in out and out.count("variants ->") == 1   # the child's line; one final table


@pytest.mark.parametrize("argv,msg", [
    (["--variants", "nope"], "--variants nope: unknown variant; accepted: HY"),
    (["--steps", "0"], "--steps 0: out of range"),
    (["--size", "huge"], "--size huge: unknown size"),
    (["--override", "n_layers=2"], "unknown key 'n_layers'"),
    (["--data", "/nonexistent/corpus.txt"], "no such file"),
    (["--budget-s", "-1"], "--budget-s -1.0: out of range"),
])
def test_bad_arguments_are_one_line_errors(argv, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bv.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err
    assert not (tmp_path / "variants.csv").exists()


def test_a_bad_train_setting_stops_the_study(tmp_path, capsys):
    """train.py refuses --seq-len longer than the validation split: the study stops, no row is written."""
    with pytest.raises(SystemExit) as e:
        bv.main([*STUDY, "--variants", "GF-MH", "--seq-len", "100000", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "too few for --seq-len" in err and "\n" not in err
    assert not (tmp_path / "variants.csv").exists()


# ----------------------------------------------------------------------------------------------- long context

LC = ["--steps", "2", "--variants", "GF-MH", "--contexts", "16", "64", "--tokens-per-step", "128",
      "--eval-windows", "4", "--eval-interval", "2", "--eval-iters", "1", *TINY]


def test_buckets_cover_the_window():
    assert lc.buckets(64) == [(0, 8), (8, 16), (16, 32), (32, 64)]
    assert lc.buckets(100) == [(0, 8), (8, 16), (16, 32), (32, 64), (64, 100)]
    assert lc.buckets(6) == [(0, 6)]


def test_long_context_csv_resume_and_checkpoint_reuse(tmp_path, capsys):
    out, ck = tmp_path / "out", tmp_path / "ck"
    assert lc.main([*LC, "--out", str(out), "--ckpt-dir", str(ck)]) == 0
    df = pd.read_csv(out / "long_context.csv")
    assert {"variant", "context", "position_bucket", "loss"} <= set(df.columns)
    for ctx, g in df.groupby("context"):
        assert list(zip(g["position_bucket"], g["bucket_end"])) == lc.buckets(ctx)
        assert (g["n"] == 4 * (g["bucket_end"] - g["position_bucket"])).all() and g["loss"].between(0, 10).all()
    assert set(df["batch_size"]) == {8, 2} and (df["tokens"] == 256).all() and (df["how"] == "trained").all()
    assert lc.main([*LC, "--out", str(out), "--ckpt-dir", str(ck)]) == 0
    assert capsys.readouterr().out.count("in long_context.csv already") == 2
    assert lc.main([*LC, "--out", str(tmp_path / "none"), "--budget-s", "0"]) == 0
    assert "2 runs not started (GF-MH@16, GF-MH@64)" in capsys.readouterr().out
    assert lc.main([*LC, "--out", str(out), "--ckpt-dir", str(ck), "--force", "--contexts", "16"]) == 0
    df2 = pd.read_csv(out / "long_context.csv")
    assert set(df2[df2["context"] == 16]["how"]) == {"loaded"} and len(df2) == len(df)
    assert df2[df2["context"] == 16]["loss"].tolist() == pytest.approx(df[df["context"] == 16]["loss"].tolist())
    # a kept checkpoint of another budget is not reused (retrained): checked on the kept state, no third training
    import groundthink.checkpoint as ckpt
    state = ckpt.load(ckpt.final_path(ck / "ctx64", "GF-MH", size="tiny"))
    a = lc.parse_args([*LC, "--steps", "3"])
    assert lc.same_budget(state, lc.parse_args(LC), 2) and not lc.same_budget(state, a, 2)
    assert not lc.same_budget(state, lc.parse_args(LC), 4)
    lines = rv.long_context_section(out)
    assert lines[0].startswith("## Long context") and (out / "long_context_loss.png").stat().st_size > 0
    assert any(ln.startswith("| GF-MH | 64 |") for ln in lines)


def test_long_context_arguments(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        lc.main(["--contexts", "48", "--tokens-per-step", "128", "--out", str(tmp_path)])
    assert e.value.code == 2 and "divide --tokens-per-step 128" in capsys.readouterr().err
    # on a GPU whose gate leaves wkv6 on its reference, 8K contexts are refused up front
    import groundthink.registry as reg
    monkeypatch.setattr(lc.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(reg, "resolve", lambda mode: type("O", (), {"impls": lambda self: {"wkv6": "reference"}})())
    a = lc.parse_args(["--contexts", "8192", "--tokens-per-step", "16384", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        lc.check_kernels(a)
    assert e.value.code == 2 and "--kernels triton" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- report

def test_report_sections_tables_and_plots(study):
    assert rv.main(["--dir", str(study)]) == 0                  # sections() written to variants.md, plots beside it
    text = (study / "variants.md").read_text()
    lines = text.splitlines()
    assert text.startswith("# Variant study") and lines[2].startswith("## Fusion variants: which learns best per")
    assert "NOT A PERFORMANCE MEASUREMENT" in text and "### size tiny, 384 tokens per variant" in text
    rows = [ln for ln in lines if ln.startswith("| 1 |") or ln.startswith("| 2 |")]
    df = pd.read_csv(study / "variants.csv").sort_values(["best_val_loss", "val_loss"])
    assert [r.split("|")[2].strip() for r in rows] == list(df["variant"])      # ranked by best validation loss
    for png in ("variants_val_curves.png", "variants_speed_loss.png"):
        assert (study / png).stat().st_size > 0 and f"![{png}]({png})" in text


def test_equal_time_loss_interpolates_on_each_curve():
    curves = pd.DataFrame({"variant": ["a", "a", "a", "b", "b"], "train_s": [1.0, 2.0, 3.0, 3.0, 6.0],
                           "val_loss": [3.0, 2.0, 2.6, 2.5, 1.0]})
    at = rv.equal_time_loss(curves, 1.5)
    assert at["a"] == pytest.approx(2.5) and math.isnan(at["b"])     # b had not reached its first eval yet
    assert rv.equal_time_loss(curves, 4.5)["b"] == pytest.approx(1.75)
    assert rv.equal_time_loss(curves, 2.5)["a"] == pytest.approx(2.0)  # the best reached by then, not the last


def _old_study(d, with_curves: bool):
    """A variants.csv of run 8's columns minus best_val_loss (and older ones): b ends lower, a learnt more."""
    rows = pd.DataFrame({"variant": ["a", "b"], "size": "small", "tokens": 300, "steps": 3, "batch_size": 4,
                         "seq_len": 25, "val_loss": [2.0, 1.5], "bpc": [2.0 / math.log(2), 1.5 / math.log(2)],
                         "tok_s": [100.0, 50.0], "ms_step": [1.0, 2.0], "peak_mb": 1.0, "train_s": [0.003, 0.006],
                         "params": 10, "kernels": "x", "graph": False, "device": "cpu", "seed": 1, "status": "ok"})
    rows.to_csv(d / "variants.csv", index=False)
    if with_curves:
        pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 3, "size": "small", "budget": 300, "step": [1, 2, 3] * 2,
                      "tokens": [100, 200, 300] * 2, "train_s": [0.001, 0.002, 0.003, 0.002, 0.004, 0.006],
                      "val_loss": [1.8, 1.2, 2.0, 1.9, 1.7, 1.5]}).to_csv(d / "variants_curves.csv", index=False)


def test_ranking_by_best_val_loss_old_csv_with_and_without_curves(tmp_path):
    _old_study(tmp_path, with_curves=True)
    lines = rv.variants_section(tmp_path)
    rows = [ln.split("|") for ln in lines if ln.startswith("| 1 |") or ln.startswith("| 2 |")][:2]
    assert [(r[2].strip(), r[3].strip(), r[5].strip(), r[8].strip()) for r in rows] == [
        ("a", "1.2000", "2", "True"), ("b", "1.5000", "3", "False")]     # best val, best step, overfit
    assert "(1 of 2 runs" in "\n".join(lines) and (tmp_path / "variants_speed_loss.png").stat().st_size > 0
    (tmp_path / "variants_curves.csv").unlink()
    table, _ = rv.ranked(pd.read_csv(tmp_path / "variants.csv"), pd.DataFrame())
    assert list(table["variant"]) == ["b", "a"] and list(table["best_step"]) == [3, 3]   # no curves: the final
    assert not table["overfit"].any()


def test_report_of_an_empty_folder(tmp_path, capsys):
    assert rv.sections(tmp_path) == []
    assert rv.main(["--dir", str(tmp_path)]) == 2 and "no variants.csv" in capsys.readouterr().out


def test_module_entry_points_exist():
    for mod in (bv, lc, rv):
        assert callable(mod.main) and mod.__doc__.strip()
    assert sys.modules["bench.variants"] is bv
