"""torchrun parses its own options out of the whole command line (abbreviations included), so a train.py flag that
is a prefix of one of torchrun's (``--log`` of ``--log-dir``) stops the two-GPU run before it starts (run 8 on the
H100: "ambiguous option: --log"). Every flag that scripts/gpu_ddp.sh passes to train.py must reach it."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ddp_flags() -> set[str]:
    text = (ROOT / "scripts" / "gpu_ddp.sh").read_text()
    common = text[text.index("COMMON=("):]
    common = common[:common.index(")")]
    runs = [ln.split("train.py", 1)[1] for ln in text.splitlines() if "train.py" in ln and "torchrun" in ln]
    runs += [ln for ln in text.splitlines() if ln.lstrip().startswith("--")]     # continuation lines
    from bench.bench_train import validity_argv      # the noise-floor run's flags ("${FLOOR[@]}")
    runs += validity_argv("triton-reordered", "GF-MH", "large", [])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", common + " ".join(runs)))


def test_torchrun_passes_every_ddp_flag_to_train():
    run = pytest.importorskip("torch.distributed.run")
    flags = ddp_flags()
    assert {"--log-file", "--batch-size", "--model", "--graph", "--override"} <= flags, flags
    for flag in sorted(flags):
        args = run.get_args_parser().parse_args(["--standalone", "--nproc_per_node", "2", "train.py", flag, "x"])
        assert args.training_script_args == [flag, "x"], flag


def test_log_file_is_the_log_flag():
    from groundthink.cli import build_parser
    p = build_parser()
    assert p.parse_args(["--log-file", "a.jsonl"]).log == p.parse_args(["--log", "a.jsonl"]).log == "a.jsonl"
