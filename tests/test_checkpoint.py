"""groundthink.checkpoint: plain data only, integrity check, newest intact checkpoint, one folder per run,
resume guards, temp-file clean-up, torn log lines, RNG restore (CPU, fast)."""
from __future__ import annotations

import builtins
import json
import os
import random
import subprocess
import sys
import time
from argparse import Namespace

import numpy as np
import pytest
import torch

from groundthink import checkpoint as ckpt
from groundthink.data import text_hash


class Payload:
    """A pickle that runs code when loaded unsafely."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins.GT_PWNED = True",))


def write_with_header(path, obj):
    """A file with a valid integrity header around an arbitrary (unsafe) torch.save payload."""
    import hashlib
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    path.write_bytes(ckpt.MAGIC + hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "little") + payload)


@pytest.fixture(autouse=True)
def no_pwn():
    yield
    assert not hasattr(builtins, "GT_PWNED"), "a checkpoint ran code"


def test_planted_pickle_is_refused_and_runs_nothing(tmp_path):
    raw = tmp_path / "ckpt_GF-MH_step9.pt"
    torch.save({"step": 9, "evil": Payload()}, raw)                     # a plain torch.save file (no header)
    with pytest.raises(ckpt.CheckpointError, match="not a groundthink checkpoint"):
        ckpt.load(raw)
    framed = tmp_path / "framed.pt"
    write_with_header(framed, {"step": 9, "evil": Payload()})           # even with a valid header
    with pytest.raises(ckpt.CheckpointError, match="holds objects other than tensors and plain data, refused"):
        ckpt.load(framed)


def test_save_accepts_only_plain_data(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['rng'\]\['numpy'\]: numpy.ndarray is not plain data"):
        ckpt.save({"rng": {"numpy": np.zeros(3)}}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_round_trip_of_a_training_state(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": ckpt.rng_state(), "args": {"model": "HY", "override": ["n_layer=2"], "data": None}, "step": 3}
    back = ckpt.load(ckpt.save(state, tmp_path / "ckpt_HY_step3.pt"))
    assert back["step"] == 3 and back["args"] == state["args"]
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    torch.optim.AdamW(model.parameters(), lr=1e-3).load_state_dict(back["optimizer"])


def test_flipped_bytes_inside_a_tensor_are_refused(tmp_path):
    w = torch.randn(4096)
    path = ckpt.save({"w": w, "step": 1}, tmp_path / "c.pt")
    blob = bytearray(path.read_bytes())
    at = bytes(blob).find(w.numpy().tobytes())
    assert at > 0
    for i in range(at + 1000, at + 1064):                                # 64 flipped bytes inside the tensor
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ckpt.CheckpointError, match="corrupted \\(SHA-256 mismatch\\)"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        ckpt.verify(path)


def test_missing_directory_and_empty_files_refused(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.load(tmp_path / "nope.pt")
    with pytest.raises(ckpt.CheckpointError, match="is a directory"):
        ckpt.load(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="not a groundthink checkpoint"):
        ckpt.load(tmp_path / "empty.pt")


def test_latest_skips_truncated_and_corrupted_newest(tmp_path):
    out = tmp_path
    for step in (2, 4):
        ckpt.save({"step": step, "w": torch.full((64,), float(step))}, ckpt.step_path(out, "GF-MH", step, "tiny"))
    final = ckpt.save({"step": 6, "w": torch.zeros(64)}, ckpt.final_path(out, "GF-MH", "tiny"))
    assert ckpt.latest(out, "GF-MH", "tiny") == final
    warnings = []
    final.write_bytes(final.read_bytes()[:-100])                         # killed mid-copy / disk full
    assert ckpt.latest(out, "GF-MH", "tiny", warn=warnings.append) == ckpt.step_path(out, "GF-MH", 4, "tiny")
    assert len(warnings) == 1 and "truncated" in warnings[0] and "ckpt_GF-MH_final.pt" in warnings[0]
    p4 = ckpt.step_path(out, "GF-MH", 4, "tiny")
    blob = bytearray(p4.read_bytes())
    blob[-300] ^= 1
    p4.write_bytes(bytes(blob))
    warnings.clear()
    assert ckpt.latest(out, "GF-MH", "tiny", warn=warnings.append) == ckpt.step_path(out, "GF-MH", 2, "tiny")
    assert len(warnings) == 2 and "corrupted" in " ".join(warnings)
    assert ckpt.load(ckpt.latest(out, "GF-MH", "tiny", warn=lambda m: None))["step"] == 2


def test_runs_of_other_variants_or_sizes_never_share_a_file(tmp_path):
    paths = {(m, s): ckpt.step_path(tmp_path, m, 4, s) for m in ("GF-MH", "HY") for s in ("tiny", "small")}
    assert len(set(paths.values())) == 4
    assert all(p.name == f"ckpt_{m}_step4.pt" for (m, _), p in paths.items())   # the names are kept
    assert ckpt.final_path(tmp_path, "GF-MH", "tiny") != ckpt.final_path(tmp_path, "GF-MH", "small")
    ckpt.save({"step": 4, "size": "small"}, paths["GF-MH", "small"])
    ckpt.save({"step": 2, "size": "tiny"}, ckpt.step_path(tmp_path, "GF-MH", 2, "tiny"))
    # --resume auto for GF-MH/tiny finds tiny's checkpoint, never small's newer one, nor another variant's
    assert ckpt.load(ckpt.latest(tmp_path, "GF-MH", "tiny"))["size"] == "tiny"
    assert ckpt.latest(tmp_path, "HY", "tiny") is None
    assert ckpt.step_path(tmp_path, "GF-MH", 4) == tmp_path / "ckpt_GF-MH_step4.pt"   # no size: the flat layout


def test_resume_refuses_another_corpus_or_tokenizer():
    state = {"data": {"corpus_hash": text_hash("abc" * 100), "corpus": "a.txt"}, "tokenizer": {"kind": "char"},
             "args": {"tokenizer": "char", "vocab_size": 512}}
    ckpt.check_resume(state, Namespace(tokenizer="char", vocab_size=512), "abc" * 100)
    with pytest.raises(ckpt.CheckpointError, match=r"--resume: the corpus changed .*'a.txt'.*accepted"):
        ckpt.check_resume(state, Namespace(tokenizer="char", vocab_size=512), "abd" * 100)
    with pytest.raises(ckpt.CheckpointError, match="--tokenizer bpe but the checkpoint was trained with the char"):
        ckpt.check_resume(state, Namespace(tokenizer="bpe", vocab_size=512), "abc" * 100)
    bpe = {**state, "tokenizer": {"kind": "bpe", "json": "{}"}, "args": {"tokenizer": "bpe", "vocab_size": 300}}
    with pytest.raises(ckpt.CheckpointError, match="--vocab-size 512 but .* 300"):
        ckpt.check_resume(bpe, Namespace(tokenizer="bpe", vocab_size=512), "abc" * 100)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphan_temp_files_of_killed_runs_are_removed(tmp_path):
    host = ckpt._host()
    orphan = tmp_path / f".ckpt_X_step4.pt.{host}.{dead_pid()}.k2j3h4g5.tmp"
    mine = tmp_path / f".ckpt_X_step8.pt.{host}.{os.getpid()}.a1b2c3d4.tmp"   # a live writer: kept
    other_host_new = tmp_path / ".ckpt_X_step8.pt.otherbox.12.abcdefgh.tmp"
    other_host_old = tmp_path / ".ckpt_X_step6.pt.otherbox.13.abcdefgh.tmp"
    old_format = tmp_path / ".ckpt_X_step2.pt.zz9_yy8x.tmp"                    # the previous version's name
    for p in (orphan, mine, other_host_new, other_host_old, old_format):
        p.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for p in (other_host_old, old_format):
        os.utime(p, (hours_ago, hours_ago))
    ckpt.save({"step": 1}, tmp_path / "ckpt_X_step1.pt")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([mine.name, other_host_new.name, "ckpt_X_step1.pt"])


def test_interrupted_save_leaves_no_temp_file_and_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_X_step1.pt"
    ckpt.save({"step": 1}, path)

    def crash(obj, f, *a, **k):
        f.write(b"PARTIAL" * 100)
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_torn_last_log_line_is_tolerated(tmp_path):
    log = tmp_path / "log.jsonl"
    recs = [{"type": "config", "step": 0}] + [{"type": "train", "step": s} for s in range(1, 7)]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"type": "train", "st')   # killed mid-write
    warnings = []
    assert ckpt.trim_log(log, 4, warn=warnings.append) == 5
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert len(warnings) == 1 and "line 8" in warnings[0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_restore_continues_every_generator(tmp_path):
    """A restore that does nothing (or skips one of Python / NumPy / torch) fails this test: the draws after the
    restore must repeat those after the capture, and each generator was moved elsewhere in between."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.rng_state()
    expected = draws()
    ckpt.save({"rng": state}, tmp_path / "r.pt")
    random.seed(10), np.random.seed(20), torch.manual_seed(30)          # move every generator somewhere else
    moved = draws()
    ckpt.set_rng_state(ckpt.load(tmp_path / "r.pt")["rng"])
    assert draws() == expected
    assert all(a != b for a, b in zip(moved, expected))

