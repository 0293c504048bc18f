"""groundthink.cli: every bad argument or input is one line `error: ...; accepted ...` and exit 2, before any work;
--list-models; the automatic CPU thread count (CPU, fast; train.py as a script: tests/test_train.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from groundthink import checkpoint as ckpt
from groundthink import cli

ROOT = Path(__file__).resolve().parent.parent


def error_of(capsys, argv) -> str:
    """parse_args(argv) must exit 2 with exactly one stderr line starting `error: `; returns that line."""
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["--model", "XX"], "unknown variant; accepted: HY, GF, GF-MH"),
    (["--size", "huge"], "unknown size; accepted: tiny, small, medium, large, xl"),
    (["--override", "foo=1"], "unknown key 'foo'; accepted: batch_size, chunk_size"),
    (["--override", "n_layer"], "not KEY=VALUE"),
    (["--override", "vocab_size=9"], "unknown key 'vocab_size'"),
    (["--override", "n_layer=abc"], "'abc' is not of type int"),
    (["--override", "d_model=30"], "d_model 30 is not a multiple of head_size"),
    (["--steps", "0"], "--steps 0: out of range; accepted: an integer ≥ 1"),
    (["--steps", "-5"], "--steps -5: out of range"),
    (["--steps", "abc"], "invalid int value: 'abc'"),
    (["--batch-size", "0"], "--batch-size 0: out of range"),
    (["--seq-len", "0"], "--seq-len 0: out of range"),
    (["--eval-interval", "-1"], "--eval-interval -1"),
    (["--ckpt-interval", "0"], "--ckpt-interval 0"),
    (["--log-interval", "0"], "--log-interval 0"),
    (["--eval-iters", "0"], "--eval-iters 0"),
    (["--stop-at", "0"], "--stop-at 0"),
    (["--warmup-rwkv", "-1"], "--warmup-rwkv -1"),
    (["--val-frac", "0"], "--val-frac 0.0: out of range; accepted: a fraction strictly between 0 and 1"),
    (["--val-frac", "1.5"], "--val-frac 1.5"),
    (["--lr", "nan"], "--lr nan: out of range; accepted: a finite number > 0"),
    (["--lr", "0"], "--lr 0.0"),
    (["--lr=-1e-3"], "--lr -0.001"),
    (["--min-lr-frac", "2"], "--min-lr-frac 2.0"),
    (["--grad-clip", "inf"], "--grad-clip inf"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1"),
    (["--seed", "-1"], "--seed -1"),
    (["--vocab-size", "10"], "--vocab-size 10: out of range; accepted: an integer from 256"),
    (["--threads", "-2"], "--threads -2"),
    (["--sample-tokens", "-1"], "--sample-tokens -1"),
    (["--kernels", "fast"], "invalid choice: 'fast'"),
    (["--pin", "foo=bar"], "--pin 'foo=bar': not OP=IMPL with a known op; accepted ops: wkv6,"),
    (["--pin", "lowrank"], "not OP=IMPL"),
    (["--pin", "lowrank=cuda"], "--pin lowrank=cuda: unknown implementation of lowrank; accepted: reference, triton"),
    (["--tokenizer", "word"], "invalid choice: 'word'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flag_is_one_line_exit_2(capsys, argv, expected):
    assert expected in error_of(capsys, argv)


def test_bad_files_are_one_line_exit_2(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("na\u00efve text\n".encode("latin-1"))
    cases = [
        (["--data", str(tmp_path / "nope.txt")], "no such file"),
        (["--data", str(tmp_path)], "is a directory"),
        (["--data", str(empty)], "the file is empty"),
        (["--data", str(binary)], "binary file (NUL byte at byte offset 0)"),
        (["--data", str(latin)], "invalid byte 0xef at byte offset 2; accepted: a UTF-8 text file"),
        (["--config", str(tmp_path / "nope.yaml")], "no such file"),
        (["--config", str(tmp_path)], "is a directory"),
        (["--config", str(empty)], "the file is empty"),
        (["--resume", str(tmp_path / "nope.pt")], "--resume " + str(tmp_path / "nope.pt") + ": no such checkpoint"),
        (["--resume", str(tmp_path)], "is a directory"),
        (["--resume", str(empty)], "not a groundthink checkpoint"),
        (["--out-dir", str(empty)], "exists and is not a directory"),
        (["--log", str(tmp_path)], "--log " + str(tmp_path) + ": is a directory"),
    ]
    for argv, expected in cases:
        assert expected in error_of(capsys, argv), argv


def test_damaged_resume_checkpoint_refused(capsys, tmp_path):
    path = ckpt.save({"step": 3, "w": torch.randn(256)}, tmp_path / "ckpt_HY_step3.pt")
    path.write_bytes(path.read_bytes()[:-50])
    assert "truncated" in error_of(capsys, ["--resume", str(path)])


@pytest.mark.parametrize("text, expected", [
    ("steps: [1\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "a YAML list, not a mapping"),
    ("nonsense_key: 1\n", "unknown key 'nonsense_key'; accepted: batch-size, ckpt-interval"),
    ("steps: abc\n", "steps: 'abc' is not an integer"),
    ("steps: true\n", "steps: True is not an integer"),
    ("lr: fast\n", "lr: 'fast' is not a number"),
    ("kernels: fast\n", "kernels: 'fast' is not one of auto, triton, reference"),
    ("no-progress: 3\n", "no-progress: 3 is not true or false"),
    ("override: [1, 2]\n", "is not a KEY=VALUE string"),
    ("steps: 0\n", "--steps 0: out of range"),
    ("model: XX\n", "--model XX: unknown variant"),
])
def test_bad_config_is_one_line_exit_2(capsys, tmp_path, text, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert expected in error_of(capsys, ["--config", str(cfg)])


def test_good_settings_pass_and_keep_the_old_defaults(tmp_path):
    a = cli.parse_args([])
    assert (a.model, a.size, a.tokenizer, a.kernels, a.data, a.out_dir) == ("GF-MH", "small", "char", "auto", None,
                                                                             "checkpoints")
    assert cli.parse_args(["--model", "gf-mh"]).model == "GF-MH"          # canonical name: one run folder
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: HY\nbatch-size: 3\nlr_mult_mamba: 1\nsteps: 7\noverride: n_layer=2\n")
    b = cli.parse_args(["--config", str(cfg), "--steps", "9"])
    assert (b.model, b.batch_size, b.lr_mult_mamba, b.steps, b.override) == ("HY", 3, 1.0, 9, ["n_layer=2"])
    for name in ("default", "small-gpu", "large-gpu"):
        cli.parse_args(["--config", str(ROOT / "configs" / f"{name}.yaml")])
    c = cli.parse_args(["--steps", "7"])
    assert cli.fill_device_defaults(c, "cuda") and (c.steps, c.batch_size, c.seq_len) == (7, 64, 256)


def test_list_models_prints_every_variant_with_counts(capsys):
    import fused
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--list-models"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in fused.list_models():
        line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == name)
        assert fused.DESCRIPTIONS[name] in line
    assert all(s in out for s in fused.SIZES)
    assert "3.08M" in out.splitlines()[2] and "118.02M" in out.splitlines()[2]   # HY small / xl at vocab 103


@pytest.mark.parametrize("overrides", [{}, {"norm": "layer", "tie_embeddings": True},
                                       {"ngroups": 2, "d_conv": 3, "ffn_mult": 2.5}])
def test_param_count_is_exact_for_every_variant(overrides):
    import fused
    from groundthink.registry import resolve
    ops = resolve("reference")
    for name in fused.list_models():
        kw = dict(n_layer=1, **overrides)
        model = fused.get_model(name, "tiny", vocab_size=37, ops=ops, **kw)
        assert fused.param_count(name, "tiny", 37, **kw) == model.num_params(), (name, overrides)


# ----------------------------------------------------------------------------------------------- CPU threads

def test_threads_use_idle_cores_not_the_load_average(monkeypatch):
    """An idle 2-core machine right after an install: the load average still says 1.5 busy, a fresh measurement
    says 0 — the automatic count must be 2, not 1."""
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.2, 0.8), raising=False)
    assert cli.cpu_threads(0, cpus={0, 1}, busy=0.0, torch_threads=2) == 2
    assert cli.cpu_threads(0, cpus={0, 1}, busy=0.3, torch_threads=2) == 2   # a little background noise
    assert cli.cpu_threads(0, cpus={0, 1}, busy=1.0, torch_threads=2) == 1   # another job holds one core
    assert cli.cpu_threads(0, cpus={0, 1}, busy=2.0, torch_threads=2) == 1   # never 0
    assert cli.cpu_threads(0, cpus=set(range(8)), busy=0.0, torch_threads=4) == 4   # torch's default caps it
    assert cli.cpu_threads(0, cpus={3}, busy=0.0, torch_threads=16) == 1     # taskset -c 3: one core
    assert cli.cpu_threads(3, cpus={0}, busy=1.0, torch_threads=1) == 3      # --threads N is taken as given


def test_busy_cores_counts_only_the_cores_this_process_may_use():
    before = cli.read_cpu_times("cpu  9 9 9 9 9 9 9 9\n"
                                "cpu0 100 0 50 1000 10 0 0 0 0 0\ncpu1 100 0 50 1000 10 0 0 0 0 0\n"
                                "cpu2 100 0 50 1000 10 0 0 0 0 0\nintr 1 2 3\n")
    after = cli.read_cpu_times("cpu  9 9 9 9 9 9 9 9\n"
                               "cpu0 190 0 60 1000 10 0 0 0 0 0\ncpu1 100 0 50 1100 10 0 0 0 0 0\n"
                               "cpu2 150 0 50 1050 10 0 0 0 0 0\n")
    assert before[0] == (150, 1160)
    assert cli.busy_cores({0, 1}, before=before, after=after) == pytest.approx(1.0)
    assert cli.busy_cores({1}, before=before, after=after) == 0.0
    assert cli.busy_cores({0, 1, 2}, before=before, after=after) == pytest.approx(1.5)  # cpu2: half busy
    assert cli.busy_cores({0}, before=after, after=before) == 0.0           # counters reset (hotplug): no harm
    assert cli.read_cpu_times("") == {}


def test_fresh_measurement_on_this_machine_is_sane():
    busy = cli.busy_cores(cli.allowed_cpus(), interval=0.05)
    assert 0.0 <= busy <= len(cli.allowed_cpus()) + 0.01
    assert 1 <= cli.cpu_threads(0) <= len(cli.allowed_cpus())


# ----------------------------------------------------------------------------------------------- the test suite

def test_training_tests_error_when_the_model_package_does_not_import(monkeypatch):
    """tests/test_train.py used to swap in a stub model when `fused` failed to import (and pass); now a broken
    model package fails the module's import, which pytest reports as a collection error (checked in this process:
    the file imported with `fused` unimportable raises ImportError)."""
    import importlib.util
    monkeypatch.setitem(sys.modules, "fused", None)          # import fused -> ImportError
    spec = importlib.util.spec_from_file_location("_test_train_without_fused", ROOT / "tests" / "test_train.py")
    with pytest.raises(ImportError, match="fused"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


# ----------------------------------------------------------------------------------------------- repository

MACHINE_PATH_FREE = ["README.md", "docs", "configs", "scripts/*.sh", "profiles", "notes/gate_norm_residual.md",
                     "groundthink", "tests", "train.py", "pyproject.toml"]


def test_no_machine_paths_in_docs_scripts_and_committed_logs(capsys):
    """No absolute path of one machine (checkout, shared folder, fixed /tmp files, home folders) in what a user
    reads or runs (scripts/scrub_paths.py --check; the lead widens the list as the other folders are cleaned)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("scrub_paths", ROOT / "scripts" / "scrub_paths.py")
    scrub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scrub)
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        rc = scrub.main(["--check", *MACHINE_PATH_FREE])
    finally:
        os.chdir(cwd)
    assert rc == 0, capsys.readouterr().out


def test_pins_name_implementations_that_win_over_the_mode():
    """--pin op=impl[,op=impl]: what registry.resolve is given as overrides (bisecting a step by op)."""
    from groundthink.registry import resolve
    pins = cli.parse_pins("lowrank=triton, wgrad=reference")
    assert pins == {"lowrank": "triton", "wgrad": "reference"} and cli.parse_pins(None) == {}
    ops = resolve("reference", pins, cuda=False)
    assert ops.impls()["lowrank"] == "triton" and ops.impls()["wkv6"] == "reference"
