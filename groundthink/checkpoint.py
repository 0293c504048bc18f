"""Atomic checkpoints: save, load, find the latest, capture and restore RNG states.

``save`` writes to a temporary file in the destination directory, flushes and fsyncs it, then ``os.replace``s it
over the destination (atomic on POSIX) and fsyncs the directory. A crash or kill at any point during a save leaves
the previous checkpoint at that path (and every other checkpoint) intact and loadable; the temp file is removed
when the failure is an exception.

Names: ``ckpt_{MODEL}_step{N}.pt`` and ``ckpt_{MODEL}_final.pt`` (see ``step_path`` / ``final_path``).
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch


def step_path(out_dir, model: str, step: int) -> Path:
    return Path(out_dir) / f"ckpt_{model}_step{step}.pt"


def final_path(out_dir, model: str) -> Path:
    return Path(out_dir) / f"ckpt_{model}_final.pt"


def save(obj, path) -> Path:
    """Atomically write ``obj`` with ``torch.save`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the checkpoint ordinary file permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
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


def load(path, map_location="cpu") -> dict:
    # weights_only=False: the checkpoint holds RNG states (numpy arrays, python tuples) and the args dict
    return torch.load(path, map_location=map_location, weights_only=False)


def list_checkpoints(out_dir, model: str) -> list[tuple[int, Path]]:
    """(step, path) of every ``step`` checkpoint of ``model`` in ``out_dir``, by step."""
    out = []
    pat = re.compile(rf"ckpt_{re.escape(model)}_step(\d+)\.pt$")
    for p in Path(out_dir).glob(f"ckpt_{model}_step*.pt"):
        m = pat.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(out_dir, model: str) -> Path | None:
    """The checkpoint of ``model`` in ``out_dir`` with the most steps (the final one wins a tie); None if none."""
    best: tuple[int, int, Path] | None = None
    for step, p in list_checkpoints(out_dir, model):
        best = max(best, (step, 0, p)) if best else (step, 0, p)
    fp = final_path(out_dir, model)
    if fp.exists():
        step = int(load(fp).get("step", -1))
        cand = (step, 1, fp)
        best = max(best, cand) if best else cand
    return best[2] if best else None


# ----------------------------------------------------------------------------------------------- RNG

def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # resumed on a different number of GPUs: restore what matches
            for i, s in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
