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


# ----------------------------------------------------------------------------------------------- bad corpora

import pytest  # noqa: E402


def test_non_utf8_byte_is_an_error_naming_its_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\u00e9 ok\n".encode("utf-8") * 3 + b"na\xefve\n")   # 0xef starts a 3-byte sequence: bad
    off = len("caf\u00e9 ok\n".encode("utf-8")) * 3 + 2
    with pytest.raises(gdata.DataError, match=rf"invalid byte 0xef at byte offset {off};.*UTF-8") as e:
        gdata.load_text(str(p))
    assert "\n" not in str(e.value)


def test_non_utf8_offset_across_read_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(gdata, "CHUNK", 7)
    p = tmp_path / "t.txt"
    good = "ab\u00e9\u20ac\u00e9xyz\n".encode("utf-8")          # multi-byte characters straddle the 7-byte blocks
    p.write_bytes(good + b"\xe2\x82" + b"q")                     # a truncated euro sign: bad at len(good)
    with pytest.raises(gdata.DataError, match=rf"invalid byte 0xe2 at byte offset {len(good)};"):
        gdata.check_text_file(p)
    p.write_bytes(good * 5)
    assert gdata.check_text_file(p) == len(good) * 5              # the same bytes, valid: no false alarm


@pytest.mark.parametrize("payload, what", [(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"binary file \(NUL byte at byte offset 8\)"),
                                           (b"text" + b"\x01\x02\x03\x1b" * 10 + b"more text", r"binary file \(40 of"),
                                           (b"", "the file is empty")])
def test_binary_or_empty_file_refused(tmp_path, payload, what):
    p = tmp_path / "f.bin"
    p.write_bytes(payload)
    with pytest.raises(gdata.DataError, match=what):
        gdata.load_text(str(p))


def test_missing_file_and_directory_refused(tmp_path):
    with pytest.raises(gdata.DataError, match="no such file"):
        gdata.load_text(str(tmp_path / "nope.txt"))
    with pytest.raises(gdata.DataError, match="is a directory"):
        gdata.load_text(str(tmp_path))


def test_ordinary_text_with_tabs_and_form_feeds_is_accepted(tmp_path):
    p = tmp_path / "t.txt"
    text = "col1\tcol2\r\n\fpage two \u2713\n" * 20
    p.write_text(text, encoding="utf-8", newline="")
    assert gdata.load_text(str(p))[0] == text.replace("\r\n", "\n")   # newlines as before: universal


def test_short_validation_split_detected_before_training():
    tok = gdata.CharTokenizer.train("abcdefghij")
    text = "abcdefghij" * 10                                        # 100 tokens: val 10 at val_frac 0.1
    with pytest.raises(gdata.DataError, match=r"validation split has 10 tokens, too few for --seq-len 16; "
                                              r"accepted: at least 18 tokens"):
        gdata.encode_corpus(tok, text, 0.1, seq_len=16)
    train, val = gdata.encode_corpus(tok, text, 0.1, seq_len=8)    # 10 >= 8 + 2: fine
    gdata.get_batch(val, 2, 8, seed=0, step=0)
    with pytest.raises(gdata.DataError, match="training split has 40 tokens"):
        gdata.encode_corpus(tok, text, 0.6, seq_len=45)              # val 60 is enough, train 40 is not
    with pytest.raises(gdata.DataError, match="at least 18 tokens"):
        gdata.get_batch(val, 2, 16, seed=0, step=0)
    assert gdata.encode_corpus(tok, text, 0.1)[1].shape == (10,)    # without seq_len: no check (old signature)
