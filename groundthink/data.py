"""Corpus loading, tokenizers and batching for train.py.

* ``default_corpus()`` — the text that ships inside CPython: ``pydoc_data.topics`` (the ``topics`` dict values
  joined in sorted key order, ~465K characters). Nothing is downloaded.
* ``CharTokenizer`` — one id per distinct character of the corpus (the default).
* ``BPETokenizer`` — a byte-level BPE trained locally with the ``tokenizers`` library, cached as JSON.
* ``load_text(path)`` — strict UTF-8; a missing, empty, binary or non-UTF-8 file is a one-line ``DataError``.
* ``get_batch(data, B, T, seed, step, rank, world)`` — batch sampling is a pure function of (seed, step, rank):
  a ``torch.Generator`` seeded with ``seed * 1_000_003 + step`` draws ``B * world`` window starts and each rank
  takes its own ``B``. Resuming at step N therefore continues the exact data order with no state to restore, and
  ranks see different (deterministic) batches.
"""
from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path

import torch

from groundthink.errors import InputError

SEED_STRIDE = 1_000_003
EVAL_SEED_OFFSET = 7_777_777  # eval batches come from their own stream, independent of the training step
CONTROL_MAX_FRAC = 0.01   # more control characters (not tab/newline/CR/FF/VT) than this: not a text file
CHUNK = 1 << 20
CONTROL_BYTES = bytes(b for b in range(32) if chr(b) not in "\t\n\r\f\v") + b"\x7f"


class DataError(InputError):
    """A corpus the trainer cannot use (missing, empty, binary, not UTF-8, too short); one-line message."""


# ----------------------------------------------------------------------------------------------- corpus

def default_corpus() -> str:
    """The pydoc topics text bundled with CPython (deterministic: sorted keys)."""
    from pydoc_data import topics
    return "".join(topics.topics[k] for k in sorted(topics.topics))


def check_text_file(path) -> int:
    """Check that ``path`` is a non-empty UTF-8 text file without reading it whole; returns its size in bytes.

    Raises ``DataError`` (one line) for a missing path, a directory, an empty file, a binary file (a NUL byte, or
    more than 1% control characters) or bytes that are not UTF-8 (the message names the byte offset)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"--data {path}: no such file; accepted: a UTF-8 text file")
    if not p.is_file():
        raise DataError(f"--data {path}: is a directory, not a file; accepted: a UTF-8 text file")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = controls = 0
    with open(p, "rb") as f:
        while True:
            block = f.read(CHUNK)
            final = not block
            nul = block.find(b"\0")
            if nul >= 0:
                raise DataError(f"--data {path}: binary file (NUL byte at byte offset {offset + nul}); "
                                f"accepted: a UTF-8 text file")
            try:
                decoder.decode(block, final)
            except UnicodeDecodeError as e:
                bad = offset - len(decoder.getstate()[0]) + e.start  # e.object = bytes held back + block
                raise DataError(f"--data {path}: not UTF-8: invalid byte 0x{e.object[e.start]:02x} at byte offset "
                                f"{bad}; accepted: a UTF-8 text file (convert it, e.g. iconv -t UTF-8)") from None
            controls += len(block) - len(block.translate(None, CONTROL_BYTES))
            if final:
                break
            offset += len(block)
    if offset == 0:
        raise DataError(f"--data {path}: the file is empty; accepted: a non-empty UTF-8 text file")
    if controls > CONTROL_MAX_FRAC * offset:
        raise DataError(f"--data {path}: binary file ({controls:,} of {offset:,} bytes are control characters); "
                        f"accepted: a UTF-8 text file")
    return offset


def load_text(path: str | None = None) -> tuple[str, str]:
    """(text, name): the file at ``path`` (strict UTF-8, checked by ``check_text_file``), or the default corpus
    when ``path`` is None. Raises ``DataError`` (one line) for a file that is not usable text."""
    if path is None:
        return default_corpus(), "pydoc_data.topics"
    check_text_file(path)
    p = Path(path)
    text = p.read_bytes().decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n"), p.name   # universal newlines, as read_text did


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- tokenizers

class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        try:
            return [self.stoi[c] for c in s]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary; accepted: the "
                            f"{len(self.chars)} characters of the corpus it was built from") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def state(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization, lossless round trip for any text)."""
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int = 512) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        chunk = 1 << 16
        tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, s: str) -> "BPETokenizer":
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_str(s))

    @classmethod
    def load_or_train(cls, text: str, vocab_size: int, cache_dir: str | Path | None) -> tuple["BPETokenizer", str]:
        """Train once per (corpus, vocab size) and cache next to the checkpoints; returns (tokenizer, how)."""
        if cache_dir is None:
            return cls.train(text, vocab_size), "trained"
        path = Path(cache_dir) / f"tokenizer_bpe{vocab_size}_{text_hash(text)}.json"
        if path.exists():
            return cls.from_json(path.read_text(encoding="utf-8")), f"cached {path}"
        tok = cls.train(text, vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tok.tok.to_str(), encoding="utf-8")
        tmp.replace(path)
        return tok, f"trained, cached at {path}"

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def state(self) -> dict:
        return {"kind": "bpe", "json": self.tok.to_str()}


def tokenizer_from_state(state: dict):
    if state["kind"] == "char":
        return CharTokenizer(state["chars"])
    if state["kind"] == "bpe":
        return BPETokenizer.from_json(state["json"])
    raise ValueError(f"unknown tokenizer kind {state['kind']!r}")


def build_tokenizer(kind: str, text: str, vocab_size: int = 512, cache_dir=None):
    """(tokenizer, note) for ``kind`` in {"char", "bpe"}."""
    if kind == "char":
        return CharTokenizer.train(text), "char-level"
    if kind == "bpe":
        tok, how = BPETokenizer.load_or_train(text, vocab_size, cache_dir)
        return tok, f"byte-level BPE, {how}"
    raise ValueError(f"--tokenizer must be char or bpe; got {kind!r}")


# ----------------------------------------------------------------------------------------------- batching

def min_split_tokens(seq_len: int) -> int:
    """The fewest tokens a split needs for ``get_batch`` at ``seq_len``: one window of seq_len + 1, plus one."""
    return seq_len + 2


def check_splits(train: torch.Tensor, val: torch.Tensor, seq_len: int) -> None:
    """Raise ``DataError`` (one line, with the minimum) when a split is too short for ``seq_len``; call it before
    training, not at the first eval."""
    need = min_split_tokens(seq_len)
    for name, split, hint in (("validation", val, "raise --val-frac, "), ("training", train, "lower --val-frac, ")):
        if len(split) < need:
            raise DataError(f"the {name} split has {len(split):,} tokens, too few for --seq-len {seq_len}; "
                            f"accepted: at least {need:,} tokens (seq_len + 2): {hint}lower --seq-len or give a "
                            f"longer --data")


def encode_corpus(tok, text: str, val_frac: float = 0.1, *, seq_len: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids as int64 tensors, split by position: the first (1 - val_frac) for training, the rest validation.
    With ``seq_len``, both splits are checked to be long enough (``check_splits``)."""
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    n = int(len(ids) * (1.0 - val_frac))
    train, val = ids[:n], ids[n:]
    if seq_len is not None:
        check_splits(train, val, seq_len)
    return train, val


def batch_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * SEED_STRIDE + step)
    return g


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int,
              rank: int = 0, world: int = 1, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of shape [batch_size, seq_len]; a pure function of (data, seed, step, rank, world)."""
    if len(data) < min_split_tokens(seq_len):
        raise DataError(f"split has {len(data)} tokens, too few for --seq-len {seq_len}; accepted: at least "
                        f"{min_split_tokens(seq_len)} tokens (seq_len + 2)")
    g = batch_generator(seed, step)
    starts = torch.randint(len(data) - seq_len - 1, (batch_size * world,), generator=g)
    starts = starts[rank * batch_size:(rank + 1) * batch_size]
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    chunk = data[idx]
    x, y = chunk[:, :-1], chunk[:, 1:]
    if torch.device(device).type == "cuda" and chunk.is_cpu:      # a host split: pinned, copied asynchronously
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def eval_batches(data: torch.Tensor, n: int, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world: int = 1, device="cpu"):
    """The same ``n`` evaluation batches at every eval (a fixed subset: comparable numbers across evals)."""
    for i in range(n):
        yield get_batch(data, batch_size, seq_len, seed + EVAL_SEED_OFFSET, i, rank, world, device)


def describe(tok, train: torch.Tensor, val: torch.Tensor) -> str:
    return json.dumps({"tokenizer": tok.kind, "vocab_size": tok.vocab_size,
                       "train_tokens": len(train), "val_tokens": len(val)})
