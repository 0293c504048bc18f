"""train.py end to end on CPU: a tiny run, exact resume, atomic saves, non-finite stop, two gloo ranks (same
losses as one rank with the same global batch), and Triton-interpreter vs reference kernels.

Every test runs the real model: if ``fused`` fails to import, this module fails to load (an error, never a
stand-in model).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused  # noqa: F401  (the model package: a failed import is an error, no stand-in)
import train
from groundthink import checkpoint as ckpt
from groundthink.errors import InputError

ROOT = Path(__file__).resolve().parent.parent

# the smallest model that still exercises both branches and the fusion
TINY = ["--size", "tiny", "--override", "n_layer=2", "--override", "d_model=32", "--override", "head_size=16",
        "--override", "headdim=16", "--override", "mix_lora=4", "--override", "decay_lora=8",
        "--override", "d_state=8", "--override", "chunk_size=16"]


def run(tmp_path, *extra, steps=8):
    argv = ["--steps", str(steps), "--batch-size", "4", "--seq-len", "32", "--eval-interval", "4",
            "--eval-iters", "2", "--log-interval", "1", "--ckpt-interval", "4", "--out-dir", str(tmp_path),
            "--sample-tokens", "20", "--no-progress", "--kernels", "reference", "--lr", "3e-3", "--threads", "1", *TINY,
            *extra]
    return train.main(argv)


def records(path, kind):
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["type"] == kind]


def test_tiny_run_trains_logs_and_checkpoints(tmp_path, capsys):
    res = run(tmp_path, steps=12)
    out = capsys.readouterr().out
    assert "op" in out and "implementation" in out and "wkv6" in out and "--kernels reference" in out
    assert "step     12/12: train" in out and "sample:" in out
    losses = [loss for _, loss in res["losses"]]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    assert res["evals"][-1]["val_loss"] < res["evals"][0]["val_loss"] + 0.5
    model = "GF-MH"
    for p in (ckpt.step_path(tmp_path, model, 4, size="tiny"), ckpt.step_path(tmp_path, model, 8, size="tiny"),
              ckpt.final_path(tmp_path, model, size="tiny")):
        assert p.exists(), p
    state = ckpt.load(res["final_checkpoint"])
    assert state["step"] == 12 and {"model", "optimizer", "scheduler", "rng", "args", "tokenizer",
                                     "data"} <= set(state)
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    train_recs, eval_recs = records(res["log"], "train"), records(res["log"], "eval")
    assert [r["step"] for r in train_recs] == list(range(1, 13))
    assert {"step", "loss", "grad_norm", "lr_rwkv", "lr_mamba", "lr_other", "tok_s", "peak_mem_mb"} <= set(train_recs[0])
    assert [r["step"] for r in eval_recs] == [4, 8, 12]
    assert {"train_loss", "val_loss", "tok_s", "peak_mem_mb", "grad_norm_rwkv", "grad_norm_mamba", "grad_ratio",
            "gate_mean", "gate_drift", "state_norm"} <= set(eval_recs[0])
    assert records(res["log"], "config")[0]["ops"]["wkv6"] == "reference"
    assert isinstance(res["sample"], str) and len(res["sample"]) > 0


def test_lr_schedule_warmup_and_cosine():
    f = [train.lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)


def test_config_yaml_and_cli_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: HY\nbatch-size: 3\nlr_mult_mamba: 0.5\nsteps: 7\n")
    a = train.parse_args(["--config", str(cfg), "--steps", "9"])
    assert (a.model, a.batch_size, a.lr_mult_mamba, a.steps) == ("HY", 3, 0.5, 9)
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_key: 1\n")
    with pytest.raises(SystemExit):
        train.parse_args(["--config", str(bad)])
    for name in ("default", "small-gpu", "large-gpu"):
        train.parse_args(["--config", str(ROOT / "configs" / f"{name}.yaml")])


def test_resume_is_exact(tmp_path):
    a = run(tmp_path / "a", steps=8)
    run(tmp_path / "b", "--stop-at", "4", steps=8)
    assert not ckpt.final_path(tmp_path / "b", "GF-MH", size="tiny").exists()
    assert ckpt.step_path(tmp_path / "b", "GF-MH", 4, size="tiny").exists()
    b = run(tmp_path / "b", "--resume", "auto", steps=8)
    assert b["losses"][0][0] == 5  # continued, did not restart
    assert [loss for _, loss in a["losses"][4:]] == [loss for _, loss in b["losses"]]
    assert a["final_loss"] == b["final_loss"] and a["final_val_loss"] == b["final_val_loss"]
    sa, sb = ckpt.load(a["final_checkpoint"]), ckpt.load(b["final_checkpoint"])
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    # the resumed run's log holds each step once
    assert [r["step"] for r in records(b["log"], "train")] == list(range(1, 9))
    # an explicit path works too (a periodic checkpoint of the uninterrupted run), settings from the checkpoint
    c = train.main(["--resume", str(ckpt.step_path(tmp_path / "a", "GF-MH", 4, size="tiny")),
                    "--out-dir", str(tmp_path / "c"),
                    "--no-progress", "--sample-tokens", "0"])
    assert c["step"] == 8 and [loss for _, loss in c["losses"]] == [loss for _, loss in a["losses"][4:]]


def test_no_argument_defaults():
    a = train.parse_args([])
    assert (a.model, a.size, a.tokenizer, a.kernels, a.data, a.out_dir) == ("GF-MH", "small", "char", "auto", None,
                                                                             "checkpoints")
    chosen = train.fill_device_defaults(a, "cpu")
    assert (a.steps, a.batch_size, a.seq_len) == (150, 8, 64) and "steps" in chosen
    b = train.parse_args(["--steps", "7"])
    train.fill_device_defaults(b, "cuda")
    assert (b.steps, b.batch_size, b.seq_len) == (7, 64, 256)


def test_atomic_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_X_step1.pt"
    ckpt.save({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def crash_mid_write(obj, f, *a, **k):  # write part of the file, then die
        f.write(b"PARTIAL" * 100)
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.load(path)["step"] == 1 and torch.equal(ckpt.load(path)["w"], torch.ones(3))

    def replace_fails(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError):
        ckpt.save({"step": 3}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind
    assert ckpt.latest(tmp_path, "X") == path


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_build = train.build_model

    def poisoned(args, vocab_size, ops):
        model = real_build(args, vocab_size, ops)
        forward, calls = model.forward, {"n": 0}

        def fwd(idx, targets=None, **kw):
            logits, loss, *probes = forward(idx, targets, **kw)
            if model.training:
                calls["n"] += 1
                if calls["n"] == 6:
                    loss = loss * float("nan")
            return (logits, loss, *probes)

        model.forward = fwd
        return model

    monkeypatch.setattr(train, "build_model", poisoned)
    with pytest.raises(train.NonFiniteLoss, match=r"non-finite loss \(nan\) at step 6.*last good checkpoint"):
        run(tmp_path, steps=8)
    good = ckpt.step_path(tmp_path, "GF-MH", 4, size="tiny")
    state = ckpt.load(good)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not ckpt.final_path(tmp_path, "GF-MH", size="tiny").exists()
    assert ckpt.latest(tmp_path, "GF-MH", size="tiny") == good
    err = records(tmp_path / "GF-MH-tiny" / "log_GF-MH.jsonl", "error")
    assert len(err) == 1 and err[0]["step"] == 6 and "non-finite loss" in err[0]["error"]


def test_data_file_and_bpe_tokenizer(tmp_path):
    from groundthink.data import default_corpus
    data = tmp_path / "corpus.txt"
    data.write_text(default_corpus()[:30_000], encoding="utf-8")
    res = run(tmp_path, "--data", str(data), "--tokenizer", "bpe", "--vocab-size", "300", steps=2)
    state = ckpt.load(res["final_checkpoint"])
    assert state["tokenizer"]["kind"] == "bpe" and state["vocab_size"] == 300
    assert list(tmp_path.glob("tokenizer_bpe300_*.json"))  # cached next to the checkpoints
    assert isinstance(res["sample"], str)


POISON = """
import runpy, sys, fused
real = fused.get_model
def get_model(*a, **k):
    m = real(*a, **k)
    fwd, n = m.forward, [0]
    def forward(idx, targets=None, **kw):
        logits, loss, *probes = fwd(idx, targets, **kw)
        if m.training:
            n[0] += 1
            if n[0] == 5:
                loss = loss * float("inf")
        return (logits, loss, *probes)
    m.forward = forward
    return m
fused.get_model = get_model
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_non_finite_exit_code(tmp_path):
    """As a script: a loss that turns inf at step 5 exits with code 2 and a one-line error, no traceback; the
    step-3 checkpoint is still there and loads."""
    r = subprocess.run([sys.executable, "-c", POISON, "--steps", "6", "--batch-size", "2", "--seq-len", "16",
                        "--eval-interval", "3", "--eval-iters", "1", "--ckpt-interval", "3", "--out-dir", str(tmp_path),
                        "--sample-tokens", "0", "--no-progress", "--threads", "1", "--kernels", "reference", *TINY],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "error: non-finite loss (inf) at step 5" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert ckpt.load(ckpt.step_path(tmp_path, "GF-MH", 3, size="tiny"))["step"] == 3
    assert not ckpt.final_path(tmp_path, "GF-MH", size="tiny").exists()


def test_ddp_two_gloo_processes(tmp_path):
    """Two gloo ranks of batch 2 train like one rank of batch 4 (same global batch): same losses."""
    torchrun = shutil.which("torchrun")
    flags = ["--steps", "3", "--seq-len", "16", "--eval-interval", "3", "--eval-iters", "1", "--ckpt-interval", "3",
             "--log-interval", "1", "--no-progress", "--kernels", "reference", *TINY]
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--standalone", "--nproc_per_node", "2", "train.py", "--batch-size", "2", "--out-dir", str(tmp_path),
        "--sample-tokens", "10", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "world size 2" in r.stdout and r.stdout.count("sample:") == 1  # rank 0 alone talks
    state = ckpt.load(ckpt.final_path(tmp_path, "GF-MH", size="tiny"))
    assert state["step"] == 3 and state["world"] == 2
    one = train.main(["--batch-size", "4", "--out-dir", str(tmp_path / "one"), "--sample-tokens", "0",
                      "--threads", "1", *flags])
    two = [r["loss"] for r in records(tmp_path / "GF-MH-tiny" / "log_GF-MH.jsonl", "train")]
    assert len(two) == 3
    for (_, l1), l2 in zip(one["losses"], two):
        assert abs(l1 - l2) <= 1e-5 * abs(l1), (one["losses"], two)
    import fused as f
    model = f.get_model("GF-MH", size="tiny", vocab_size=state["vocab_size"], **state_overrides())
    model.load_state_dict(state["model"])


def state_overrides():
    it = iter(TINY[2:])
    return {k: int(v) for k, v in (pair.split("=") for flag, pair in zip(it, it))}


def test_triton_interpreter_matches_reference(tmp_path):
    """Same seed, --kernels triton (interpreter on CPU) vs --kernels reference: losses within 1% at every step."""
    common = ["--steps", "3", "--batch-size", "2", "--seq-len", "16", "--eval-interval", "3", "--eval-iters", "1",
              "--log-interval", "1", "--ckpt-interval", "100", "--sample-tokens", "0", "--no-progress", "--threads", "1",
              *TINY]
    ref = train.main(common + ["--out-dir", str(tmp_path / "r"), "--kernels", "reference"])
    tri = train.main(common + ["--out-dir", str(tmp_path / "t"), "--kernels", "triton"])
    assert tri["ops"]["wkv6"] == "triton" and tri["ops"]["gate_norm_residual"] == "triton"
    for (s1, l1), (s2, l2) in zip(ref["losses"], tri["losses"]):
        assert s1 == s2 and abs(l1 - l2) <= 0.01 * abs(l1), (s1, l1, l2)
    assert abs(ref["final_val_loss"] - tri["final_val_loss"]) <= 0.01 * ref["final_val_loss"]


def test_graph_flag_choice():
    """--graph: off on CPU (auto says why, on refuses); on a GPU, on only when the OpSet says every op is
    graph-safe."""
    from types import SimpleNamespace as NS
    ops = NS(graph_safe=lambda: (False, "not graph-safe: wkv6/x"))
    safe = NS(graph_safe=lambda: (True, "every op graph-safe"))
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert train.choose_graph(NS(graph="auto"), cpu, safe) == (False, "no CUDA device: eager step")
    assert train.choose_graph(NS(graph="off"), gpu, safe)[0] is False
    assert train.choose_graph(NS(graph="auto"), gpu, safe)[0] is True
    assert train.choose_graph(NS(graph="auto"), gpu, ops) == (False, "--graph auto: not graph-safe: wkv6/x")
    for dev, o in ((cpu, safe), (gpu, ops)):
        with pytest.raises(InputError, match="--graph on"):
            train.choose_graph(NS(graph="on"), dev, o)


def tiny_model(vocab_size: int):
    """The TINY model built directly (reference ops)."""
    from groundthink.registry import resolve
    over = dict(o.split("=") for o in TINY[3::2])
    return fused.get_model("GF-MH", size="tiny", vocab_size=vocab_size, ops=resolve("reference"),
                           **{k: int(v) for k, v in over.items()})


def test_old_optimizer_state_loads_fused_and_guarded():
    """A checkpoint of a plain (non-fused, non-capturable) AdamW resumes into the fused, guarded one."""
    from types import SimpleNamespace as NS
    from groundthink.step import TrainStep
    args = NS(lr=1e-2, weight_decay=0.1, lr_mult_rwkv=1.0, lr_mult_mamba=1.0, lr_mult_other=1.0)
    old_model = tiny_model(7)   # the old optimizer: same groups, plain AdamW (no fused/capturable, no base_lr)
    old = torch.optim.AdamW([{"params": g["params"], "lr": 1e-2, "weight_decay": g["weight_decay"]}
                             for g in train.make_optimizer(old_model, args).param_groups], lr=1e-2)
    x = torch.randint(7, (2, 5))
    old_model(x, x)[1].backward()
    old.step()
    model = tiny_model(7)
    opt = train.make_optimizer(model, args)
    saved = old.state_dict()
    bad = {**saved, "state": {i: s for i, s in enumerate(reversed(list(saved["state"].values())))}}
    with pytest.raises(InputError, match="does not fit this model"):
        train.load_optimizer(train.make_optimizer(tiny_model(7), args), bad)
    train.load_optimizer(opt, saved)
    assert all(g["fused"] and g["capturable"] and "base_lr" in g for g in opt.param_groups)
    step = TrainStep(model, opt, batch_size=2, seq_len=5, device="cpu")
    row = step(x, x, [1e-2] * len(opt.param_groups))
    assert torch.isfinite(row).all() and all(float(s["step"]) == 2 for s in opt.state.values())


def test_validity_floor_runs_perturb_a_path_by_numerics_only():
    from types import SimpleNamespace as NS

    from bench.bench_train import FLOORS, bf16_init, validity_argv
    assert validity_argv("triton", "GF-MH", "small", []) == ["--kernels", "triton"]
    assert [validity_argv(f, "GF-MH", "small", []) for f in FLOORS] == [
        ["--kernels", "reference", "--override", "chunk_size=128"], ["--kernels", "reference"]]
    assert validity_argv("triton-reordered", "GF-MH", "small", [])[1] == "triton"
    tiny = ["--override", "chunk_size=8", "--override", "chunk_size=16"]                  # the last one wins
    assert validity_argv(FLOORS[0], "GF-MH", "tiny", tiny)[-1] == "chunk_size=32"
    # -bf16init: the seeded model's fp32 weights rounded to bf16 precision, then train.build_model restored
    fake = NS(build_model=lambda: torch.nn.Linear(7, 5))
    build = fake.build_model
    with bf16_init(fake):
        torch.manual_seed(0)
        w = fake.build_model().weight
    torch.manual_seed(0)
    w0 = build().weight
    assert fake.build_model is build and w.dtype == torch.float32
    assert torch.equal(w, w.bfloat16().float()) and not torch.equal(w, w0)
    assert ((w - w0).abs() <= w0.abs() * 2 ** -8).all()                                # under half an ulp


def test_profile_window_avoids_evals_and_checkpoints():
    from types import SimpleNamespace as NS
    a = NS(log_interval=10, eval_interval=7, ckpt_interval=1000)
    first = train.profile_window(a, 0, 30, 5)
    assert first == 15 and not any(d % 7 == 0 for d in range(first, first + 5))   # 14 is an eval: 15..19
    assert train.profile_window(a, 0, 19, 5) is None
    assert train.profile_window(NS(log_interval=50, eval_interval=300, ckpt_interval=500), 0, 300, 5) == 50
