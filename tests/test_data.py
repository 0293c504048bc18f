"""groundthink.data: default corpus, tokenizers, deterministic batching (CPU, fast)."""
import torch

from groundthink import data as gdata


def test_default_corpus_loads():
    text, name = gdata.load_text(None)
    assert name == "pydoc_data.topics"
    assert len(text) > 400_000
    assert text == gdata.default_corpus()  # deterministic (sorted keys)


def test_load_text_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world\n", encoding="utf-8")
    assert gdata.load_text(str(p)) == ("hello world\n", "t.txt")


def test_char_tokenizer_round_trip():
    text = gdata.default_corpus()
    tok = gdata.CharTokenizer.train(text)
    assert tok.vocab_size == len(set(text))
    sample = text[:5000]
    ids = tok.encode(sample)
    assert max(ids) < tok.vocab_size and tok.decode(ids) == sample
    tok2 = gdata.tokenizer_from_state(tok.state())
    assert tok2.encode(sample) == ids


def test_bpe_tokenizer_trains_round_trips_and_caches(tmp_path):
    text = gdata.default_corpus()[:60_000] + "ünïcödé ✓ tabs\tand\nnewlines  spaces"
    tok, note = gdata.build_tokenizer("bpe", text, vocab_size=400, cache_dir=tmp_path)
    assert "trained" in note and 256 < tok.vocab_size <= 400
    for s in (text[:3000], "ünïcödé ✓ tabs\tand\nnewlines  spaces", "  leading spaces\n\n"):
        assert tok.decode(tok.encode(s)) == s
    ids = tok.encode(text[:3000])
    assert len(ids) < 3000 * 0.7  # merges actually compress
    tok2, note2 = gdata.build_tokenizer("bpe", text, vocab_size=400, cache_dir=tmp_path)
    assert note2.startswith("byte-level BPE, cached") and tok2.encode(text[:3000]) == ids
    assert gdata.tokenizer_from_state(tok.state()).encode(text[:3000]) == ids


def test_split_and_batches_are_deterministic_and_sharded():
    text = gdata.default_corpus()[:50_000]
    tok = gdata.CharTokenizer.train(text)
    train, val = gdata.encode_corpus(tok, text, 0.1)
    assert len(train) + len(val) == len(text) and abs(len(val) - 5000) <= 1
    x, y = gdata.get_batch(train, 4, 32, seed=1, step=7)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = gdata.get_batch(train, 4, 32, seed=1, step=7)
    assert torch.equal(x, x2)  # pure function of (seed, step)
    x3, _ = gdata.get_batch(train, 4, 32, seed=1, step=8)
    assert not torch.equal(x, x3)
    r0, _ = gdata.get_batch(train, 4, 32, seed=1, step=7, rank=0, world=2)
    r1, _ = gdata.get_batch(train, 4, 32, seed=1, step=7, rank=1, world=2)
    assert not torch.equal(r0, r1)  # ranks see different data
    ev1 = [b[0] for b in gdata.eval_batches(val, 2, 4, 32, seed=1)]
    ev2 = [b[0] for b in gdata.eval_batches(val, 2, 4, 32, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(ev1, ev2))
