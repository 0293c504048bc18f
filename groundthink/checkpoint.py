"""Checkpoints that are safe to load: plain data only, integrity-checked, atomic, one folder per run.

File format: a 48-byte header, then a ``torch.save`` payload (zip)::

    b"GTCKPT1\\n"  |  SHA-256 of the payload (32 bytes)  |  payload length (8 bytes, little-endian)  |  payload

* ``save(obj, path)`` accepts only tensors and plain data (dict / list / tuple / str / int / float / bool /
  None; ``check_plain`` names the first offending entry). It streams the payload through SHA-256 into a
  temporary file in the destination folder, writes the header, fsyncs, ``os.replace``s it over ``path`` (atomic
  on POSIX) and fsyncs the folder: a crash or kill at any point leaves every earlier checkpoint intact. The
  temporary file is named ``.<name>.<host>.<pid>.<random>.tmp``; ``clean_temp`` (called by every save) removes
  those whose writer is gone (a dead pid on this host, or untouched for an hour), i.e. the orphans of killed runs.
* ``load(path)`` checks the header, length and SHA-256, then ``torch.load(weights_only=True)``: a file that was
  truncated, has a flipped byte, is not a groundthink checkpoint, or holds anything but tensors and plain data
  (a pickle that would run code) is refused with ``CheckpointError`` (one line).
* Names: ``ckpt_{MODEL}_step{N}.pt`` and ``ckpt_{MODEL}_final.pt`` in the run's folder ``OUT_DIR/{MODEL}-{SIZE}/``
  (``run_dir``; ``step_path`` / ``final_path`` with ``size``), so runs of different variants or sizes never
  overwrite each other. Without ``size`` the names sit directly in ``out_dir`` (the older layout).
* ``latest(out_dir, model, size)`` — the newest INTACT checkpoint of that run (the final one wins a tie); every
  damaged newer one is skipped and reported through ``warn``.
* ``check_resume(state, args, text)`` — refuse to continue on a changed corpus or tokenizer.
* ``trim_log(path, step)`` — cut the JSONL run log back to ``step`` on resume, tolerating a torn last line.
* ``rng_state()`` / ``set_rng_state()`` — Python, NumPy, torch (CPU and CUDA) generators as tensors and plain types.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from groundthink.errors import InputError

MAGIC = b"GTCKPT1\n"
HEADER_BYTES = len(MAGIC) + 32 + 8
ORPHAN_AGE_S = 3600.0        # a temp file of another host (or an older version) untouched this long is an orphan
PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
_OLD_TMP_RE = re.compile(r"^\.ckpt_.+\.pt\.[A-Za-z0-9_]+\.tmp$")


class CheckpointError(InputError):
    """A checkpoint that cannot be trusted or used (damaged, not ours, unsafe, or from another corpus)."""


# ----------------------------------------------------------------------------------------------- names

def run_dir(out_dir, model: str, size: str) -> Path:
    """The folder of one run: ``OUT_DIR/{MODEL}-{SIZE}``."""
    return Path(out_dir) / f"{model}-{size}"


def _base(out_dir, model: str, size: str | None) -> Path:
    return Path(out_dir) if size is None else run_dir(out_dir, model, size)


def step_path(out_dir, model: str, step: int, size: str | None = None) -> Path:
    return _base(out_dir, model, size) / f"ckpt_{model}_step{step}.pt"


def final_path(out_dir, model: str, size: str | None = None) -> Path:
    return _base(out_dir, model, size) / f"ckpt_{model}_final.pt"


# ----------------------------------------------------------------------------------------------- save

def check_plain(obj, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first entry of ``obj`` that is not a tensor or plain data."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} is not plain data")
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN):
        raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} is not plain data; accepted: "
                        f"tensors, dict, list, tuple, str, int, float, bool, None")


class _HashingWriter:
    """File wrapper for ``torch.save``: hashes and counts every byte written."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]


def save(obj, path) -> Path:
    """Atomically write ``obj`` (tensors and plain data only) with an integrity header to ``path``."""
    check_plain(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_temp(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the checkpoint ordinary file permissions
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(HEADER_BYTES))
            w = _HashingWriter(f)
            torch.save(obj, w)
            f.seek(0)
            f.write(MAGIC + w.sha.digest() + w.n.to_bytes(8, "little"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temp(directory, now: float | None = None) -> list[Path]:
    """Remove the temporary files of saves that can no longer finish (writer dead, or untouched for an hour);
    returns what it removed."""
    now = time.time() if now is None else now
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    host = _host()
    for p in d.iterdir():
        if not p.name.endswith(".tmp") or not p.name.startswith("."):
            continue
        m = _TMP_RE.match(p.name)
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        if m:
            orphan = (not _alive(int(m["pid"]))) if m["host"] == host else age > ORPHAN_AGE_S
        else:
            orphan = bool(_OLD_TMP_RE.match(p.name)) and age > ORPHAN_AGE_S
        if orphan:
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


# ----------------------------------------------------------------------------------------------- load

def _read_header(f, path) -> tuple[bytes, int]:
    head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a groundthink checkpoint (no integrity header; written by another "
                              f"program or an older version); accepted: files written by groundthink.checkpoint.save")
    return head[len(MAGIC):len(MAGIC) + 32], int.from_bytes(head[len(MAGIC) + 32:], "little")


def _check(path, digest: bytes, length: int, sha, n: int) -> None:
    if n != length:
        raise CheckpointError(f"{path}: truncated ({n:,} of {length:,} payload bytes); accepted: an intact "
                              f"checkpoint (resume from an earlier one)")
    if sha.digest() != digest:
        raise CheckpointError(f"{path}: corrupted (SHA-256 mismatch); accepted: an intact checkpoint (resume from "
                              f"an earlier one)")


def _exists(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{path}: no such checkpoint; accepted: a file written by train.py")
    if not p.is_file():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file; accepted: a ckpt_*.pt file")
    return p


def verify(path) -> None:
    """Raise ``CheckpointError`` unless ``path`` is an intact groundthink checkpoint (streams; little memory)."""
    p = _exists(path)
    with open(p, "rb") as f:
        digest, length = _read_header(f, path)
        sha, n = hashlib.sha256(), 0
        while block := f.read(1 << 22):
            sha.update(block)
            n += len(block)
    _check(path, digest, length, sha, n)


def load(path, map_location="cpu") -> dict:
    """The checkpoint at ``path`` after its integrity check, read with ``torch.load(weights_only=True)``."""
    p = _exists(path)
    with open(p, "rb") as f:
        digest, length = _read_header(f, path)
        payload = f.read()
    sha = hashlib.sha256(payload)
    _check(path, digest, length, sha, len(payload))
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: holds objects other than tensors and plain data, refused (loading it could "
                              f"run code: {first[:120]}); accepted: checkpoints written by train.py") from None


# ----------------------------------------------------------------------------------------------- find

def list_checkpoints(out_dir, model: str, size: str | None = None) -> list[tuple[int, Path]]:
    """(step, path) of every ``step`` checkpoint of ``model`` (of ``size``: in its run folder), by step."""
    out = []
    pat = re.compile(rf"ckpt_{re.escape(model)}_step(\d+)\.pt$")
    base = _base(out_dir, model, size)
    if not base.is_dir():
        return out
    for p in base.iterdir():
        m = pat.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _stderr_warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def latest(out_dir, model: str, size: str | None = None, *, warn=_stderr_warn) -> Path | None:
    """The newest intact checkpoint of ``model`` (and ``size``) in ``out_dir`` — most steps, the final one wins a
    tie — or None. Each damaged or unreadable newer one is skipped and reported through ``warn(message)``."""
    cands = [(step, 0, p) for step, p in list_checkpoints(out_dir, model, size)]
    verified = set()
    fp = final_path(out_dir, model, size)
    if fp.is_file():
        try:
            cands.append((int(load(fp).get("step", -1)), 1, fp))
            verified.add(fp)  # load checked it while reading its step
        except CheckpointError as e:
            warn(f"skipping {e}")
    for _, _, p in sorted(cands, reverse=True):
        try:
            if p not in verified:
                verify(p)
            return p
        except CheckpointError as e:
            warn(f"skipping {e}")
    return None


# ----------------------------------------------------------------------------------------------- resume checks

def check_resume(state: dict, args, text: str) -> None:
    """Refuse (``CheckpointError``, one line) to continue ``state`` on another corpus or another tokenizer.

    ``args``: the run's settings after the checkpoint's were filled in (explicit flags win); ``text``: the corpus
    now loaded. The corpus is compared by ``state["data"]["corpus_hash"]`` (``groundthink.data.text_hash``) when the
    checkpoint has one."""
    from groundthink.data import text_hash
    data = state.get("data") or {}
    saved_args = state.get("args") or {}
    want = data.get("corpus_hash")
    if want is not None and want != text_hash(text):
        raise CheckpointError(f"--resume: the corpus changed (hash {text_hash(text)}, checkpoint {want}, trained on "
                              f"{data.get('corpus')!r}); accepted: the --data the run started with, or a new run in "
                              f"another --out-dir")
    kind = (state.get("tokenizer") or {}).get("kind")
    if kind is not None and getattr(args, "tokenizer", kind) != kind:
        raise CheckpointError(f"--resume: --tokenizer {args.tokenizer} but the checkpoint was trained with the {kind} "
                              f"tokenizer; accepted: --tokenizer {kind}, or a new run in another --out-dir")
    if kind == "bpe" and "vocab_size" in saved_args and getattr(args, "vocab_size", None) != saved_args["vocab_size"]:
        raise CheckpointError(f"--resume: --vocab-size {args.vocab_size} but the checkpoint's BPE was trained with "
                              f"{saved_args['vocab_size']}; accepted: --vocab-size {saved_args['vocab_size']}")


def trim_log(path, step: int, *, warn=_stderr_warn) -> int:
    """Keep the records of the JSONL log at ``path`` up to ``step`` (a resumed run appends after them); a torn
    (unparsable) line — a run killed mid-write — is dropped with a warning. Returns the number of kept records."""
    path = Path(path)
    if not path.exists():
        return 0
    keep = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            rec_step = rec.get("step", 0) if isinstance(rec, dict) else None
        except json.JSONDecodeError:
            rec_step = None
        if rec_step is None or not isinstance(rec_step, (int, float)) or not math.isfinite(rec_step):
            warn(f"{path}: dropping unreadable line {i + 1} (a run killed mid-write)")
            continue
        if rec_step <= step:
            keep.append(ln)
    tmp = path.with_name(f".{path.name}.{_host()}.{os.getpid()}.trim.tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(keep)


# ----------------------------------------------------------------------------------------------- RNG

def rng_state() -> dict:
    """Every generator the run draws from, as tensors and plain types (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["name"], np.asarray(npst["keys"].numpy() if isinstance(npst["keys"], torch.Tensor)
                                         else npst["keys"], dtype=np.uint32),
                npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # resumed on a different number of GPUs: restore what matches
            for i, s in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
