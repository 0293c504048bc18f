"""python -m groundthink.generate: sampling from a checkpoint on the recurrent path (CPU, a tiny checkpoint made
here), one-line errors for bad input."""
from __future__ import annotations

import sys

import pytest
import torch

import fused
from groundthink import checkpoint as ckpt
from groundthink import generate as gen
from groundthink.data import CharTokenizer
from groundthink.registry import resolve

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 4
SMALL = dict(n_layer=2, d_model=32, head_size=16, headdim=16, mix_lora=4, decay_lora=8, d_state=8, chunk_size=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny train.py-style checkpoint (random weights: enough to test the plumbing and the recurrent path)."""
    tok = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    model = fused.get_model("GF-MH", "tiny", vocab_size=tok.vocab_size, ops=resolve("reference"), **SMALL)
    state = {"model": model.state_dict(), "tokenizer": tok.state(), "model_name": "GF-MH", "size": "tiny",
             "vocab_size": tok.vocab_size, "config": model.config.to_dict(), "step": 1}
    return ckpt.save(state, tmp_path_factory.mktemp("gen") / "ckpt_GF-MH_final.pt")


def run(*argv):
    return gen.main(list(argv))


def test_samples_continue_the_prompt_and_repeat_with_the_seed(checkpoint, capsys):
    a = run("--ckpt", str(checkpoint), "--prompt", "the ", "--tokens", "12", "--temperature", "1.0", "--top-k", "5")
    assert a.startswith("the ") and len(a) == 4 + 12 and set(a) <= set(TEXT)   # char-level: one char per token
    assert capsys.readouterr().out == a + "\n"
    b = run("--ckpt", str(checkpoint), "--prompt", "the ", "--tokens", "12", "--temperature", "1.0", "--top-k", "5")
    c = run("--ckpt", str(checkpoint), "--prompt", "the ", "--tokens", "12", "--temperature", "1.0", "--top-k", "5",
            "--seed", "7")
    assert a == b and a != c


def test_greedy_recurrent_path_matches_the_parallel_forward(checkpoint):
    """--temperature 0 through prefill + model.step must pick the argmax of the full parallel forward each time."""
    out = run("--ckpt", str(checkpoint), "--prompt", "quick ", "--tokens", "8", "--temperature", "0")
    model, tok = gen.load_model(checkpoint, "reference", torch.device("cpu"))
    ids = tok.encode("quick ")
    with torch.no_grad():
        for _ in range(8):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert out == tok.decode(ids)


def test_top_k_one_is_greedy(checkpoint):
    greedy = run("--ckpt", str(checkpoint), "--prompt", "lazy", "--tokens", "6", "--temperature", "0")
    top1 = run("--ckpt", str(checkpoint), "--prompt", "lazy", "--tokens", "6", "--temperature", "2.0", "--top-k", "1")
    assert greedy == top1


@pytest.mark.parametrize("argv, expected", [
    (["--tokens", "0"], "--tokens 0: out of range"),
    (["--temperature", "-1"], "--temperature -1.0: out of range"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--top-k", "0"], "--top-k 0: out of range"),
    (["--top-k", "1000"], "--top-k 1000: larger than the vocabulary"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "Zebra!"], "character 'Z' is not in the tokenizer's vocabulary"),
    (["--tokens", "x"], "invalid int value: 'x'"),
])
def test_bad_input_is_one_line_exit_2(checkpoint, capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        run("--ckpt", str(checkpoint), *argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and err.startswith("error: ") and expected in err, err


def test_bad_checkpoints_refused(tmp_path, capsys):
    plain = ckpt.save({"step": 1}, tmp_path / "ckpt_X_step1.pt")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(plain.read_bytes()[:-10])
    for path, expected in ((tmp_path / "nope.pt", "no such checkpoint"), (tmp_path, "is a directory"),
                           (damaged, "truncated"), (plain, "not a train.py checkpoint (no model, tokenizer")):
        with pytest.raises(SystemExit):
            run("--ckpt", str(path), "--tokens", "2")
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --ckpt ") and expected in err and "\n" not in err, err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            run("--ckpt", str(plain), "--device", "cuda")
        assert "no CUDA device here" in capsys.readouterr().err


def test_as_a_module(checkpoint, capsys, monkeypatch):
    """``python -m groundthink.generate`` (its ``__main__`` block, run here by runpy as ``-m`` runs it: no second
    start of Python and torch) prints the sample and exits 0."""
    import runpy
    import warnings
    monkeypatch.setattr(sys, "argv", ["generate", "--ckpt", str(checkpoint), "--prompt", "dog", "--tokens", "5",
                                      "--temperature", "0"])
    capsys.readouterr()
    with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
        warnings.simplefilter("ignore", RuntimeWarning)     # "found in sys.modules ... prior to execution"
        runpy.run_module("groundthink.generate", run_name="__main__", alter_sys=True)
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("dog") and len(out) == 3 + 5 + 1, out
