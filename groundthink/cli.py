"""train.py's command line: the flags, the --config YAML, device defaults, CPU threads — and the validation of
every argument and input BEFORE any work.

A bad flag, config key or value, a missing / directory / empty / non-UTF-8 / binary --data, --config or --resume
file, a damaged or unsafe checkpoint, ... ends in ONE line on stderr, ``error: <what is wrong>; <what is
accepted>``, and exit status 2 (``parse_args``) — never a traceback. ``--list-models`` prints the variants with a
one-line description and their parameter counts per size (no GPU, nothing built).

    from groundthink.cli import parse_args, fill_device_defaults, cpu_threads, DEVICE_DEFAULTS
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import yaml

from groundthink.errors import InputError

DESCRIPTION = ("Train a groundthink hybrid LM (RWKV-6 ∥ Mamba-2) on a text file — or, with no arguments, on the text "
               "that ships inside CPython (pydoc_data.topics), nothing downloaded.")

# steps, batch size, sequence length, intervals by device — used for whatever the flags / config leave unset
DEVICE_DEFAULTS = {
    # CPU: the reference ops run a few hundred tokens/s for size small on 2 cores, so the default CPU run is a
    # short demonstration (~77K tokens, ~3 minutes); pass --steps/--batch-size/--seq-len for more
    "cpu": dict(steps=150, batch_size=8, seq_len=64, eval_interval=50, ckpt_interval=50, log_interval=5,
                eval_iters=4),
    "cuda": dict(steps=2000, batch_size=64, seq_len=256, eval_interval=250, ckpt_interval=500, log_interval=10,
                 eval_iters=20),
}
SEED_MAX = 2**32 - 1
VOCAB_RANGE = (256, 1 << 20)     # byte-level BPE starts from the 256 byte symbols
NOT_OVERRIDABLE = {"name", "size", "vocab_size"}   # set by --model / --size / the tokenizer, not --override


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...``, exit 2) instead of the usage block."""

    def error(self, message):
        fail(f"{message} (see {self.prog} --help)")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ----------------------------------------------------------------------------------------------- flags

def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The flags. ``suppress=True`` gives a parser without defaults: it tells which flags were given."""
    p = ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)

    def add(*flags, default=None, **kw):
        p.add_argument(*flags, default=argparse.SUPPRESS if suppress else default, **kw)

    add("--config", help="YAML file; keys are flag names (dashes or underscores)")
    add("--list-models", action="store_true", default=False,
        help="print the variants, what each does and its parameter counts per size, then exit")
    add("--model", default="GF-MH", help="variant (--list-models)")
    add("--size", default="small", help="tiny|small|medium|large|xl")
    add("--override", action="append", metavar="KEY=VALUE",
        help="model config override passed to fused.get_model (repeatable), e.g. --override n_layer=2")
    add("--data", help="UTF-8 text file to train on (default: CPython's pydoc_data.topics)")
    add("--tokenizer", default="char", choices=["char", "bpe"])
    add("--vocab-size", type=int, default=512, help="BPE vocabulary size (--tokenizer bpe; 256 or more)")
    add("--val-frac", type=float, default=0.1, help="fraction of the corpus (its end) held out for validation")
    add("--steps", type=int, help="optimizer steps (default by device: CPU 150, GPU 2000)")
    add("--batch-size", type=int, help="sequences per step per process (CPU 8, GPU 64)")
    add("--seq-len", type=int, help="tokens per sequence (CPU 64, GPU 256)")
    add("--lr", type=float, default=2e-3, help="peak learning rate (times the group multiplier)")
    add("--min-lr-frac", type=float, default=0.1, help="cosine decays to lr * this")
    add("--lr-mult-rwkv", type=float, default=1.0)
    add("--lr-mult-mamba", type=float, default=1.0)
    add("--lr-mult-other", type=float, default=1.0)
    add("--warmup-rwkv", type=int, help="linear warm-up steps of the RWKV group (default steps // 10, max 200)")
    add("--warmup-mamba", type=int, help="same for the Mamba group")
    add("--warmup-other", type=int, help="same for everything else (embeddings, head, gates, norms)")
    add("--weight-decay", type=float, default=0.1, help="AdamW decay on matrices (not on vectors)")
    add("--grad-clip", type=float, default=1.0, help="max global gradient norm (0: off)")
    add("--seed", type=int, default=1337)
    add("--eval-interval", type=int, help="steps between validation evals (CPU 50, GPU 250)")
    add("--eval-iters", type=int, help="batches per eval (CPU 4, GPU 20)")
    add("--log-interval", type=int, help="steps between JSONL train records (CPU 5, GPU 10)")
    add("--ckpt-interval", type=int, help="steps between checkpoints (CPU 50, GPU 500)")
    add("--out-dir", default="checkpoints", help="checkpoints go to OUT_DIR/MODEL-SIZE/ (one folder per run)")
    add("--resume", nargs="?", const="auto",
        help="continue from a checkpoint: PATH, or auto = the newest intact checkpoint of --model/--size in --out-dir")
    add("--stop-at", type=int, help="stop after this step (checkpoint saved) without changing the schedule; "
                                    "continue later with --resume")
    add("--kernels", default="auto", choices=["auto", "triton", "reference"])
    add("--pin", help="OP=IMPL[,OP=IMPL...]: these ops use these implementations whatever --kernels chooses "
                      "(e.g. lowrank=reference; debugging and bisecting)")
    add("--log-file", "--log", dest="log", help="JSONL run log (default: in the run's folder, log_MODEL.jsonl); "
                                           "under torchrun write --log-file (torchrun reads --log as its own --log-dir)")
    add("--sample-tokens", type=int, default=200, help="tokens sampled at the end (0: none)")
    add("--threads", type=int, default=0, help="CPU threads for torch (0: auto = the cores this process may run "
                                               "on, less those busy right now; oversubscribed cores slow training "
                                               "many-fold)")
    add("--no-progress", action="store_true", default=False, help="no tqdm bar")
    add("--graph", default="auto", choices=["auto", "on", "off"],
        help="capture the training step as one CUDA graph (auto: on a GPU when every op is graph-safe)")
    add("--profile-steps", type=int, help="steps profiled for the summary's GPU busy %% and launches per step "
                                          "(default: GPU 5, CPU 0 = no profile)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Flags < --config < command line; every value checked. Exits 2 with one line on any bad input;
    ``--list-models`` prints the table and exits 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = vars(build_parser(suppress=True).parse_args(argv))
    if args.list_models:
        print(models_table())
        raise SystemExit(0)
    settings = vars(args)
    try:
        if args.config:
            for k, v in read_config(args.config, parser).items():
                settings[k] = v
        settings.update(explicit)
        ns = argparse.Namespace(**settings, _explicit=sorted(explicit))
        validate(ns)
    except InputError as e:
        fail(str(e))
    return ns


def read_config(path, parser) -> dict:
    """The --config YAML as {dest: value}, each key known and each value of the flag's type."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--config {path}: no such file; accepted: a YAML file of flag names")
    if not p.is_file():
        raise InputError(f"--config {path}: is a directory; accepted: a YAML file of flag names")
    try:
        text = p.read_text(encoding="utf-8")
        cfg = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise InputError(f"--config {path}: not UTF-8 (byte offset {e.start}); accepted: a UTF-8 YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"--config {path}: not valid YAML{where} ({getattr(e, 'problem', None) or type(e).__name__})"
                         f"; accepted: a YAML mapping of flag names to values") from None
    if not text.strip() or cfg is None:
        raise InputError(f"--config {path}: the file is empty; accepted: a YAML mapping of flag names to values")
    if not isinstance(cfg, dict):
        raise InputError(f"--config {path}: a YAML {type(cfg).__name__}, not a mapping; accepted: a YAML mapping "
                         f"of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "list_models")}
    out = {}
    for key, value in cfg.items():
        k = str(key).replace("-", "_")
        if k not in actions:
            raise InputError(f"--config {path}: unknown key {key!r}; accepted: "
                             + ", ".join(sorted(a.replace("_", "-") for a in actions)))
        out[k] = _config_value(path, key, value, actions[k])
    return out


def _config_value(path, key, value, action):
    def bad(expected):
        return InputError(f"--config {path}: {key}: {value!r} is not {expected}")

    if value is None:
        return None
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise bad("a KEY=VALUE string or a list of them")
        return items
    if action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif not isinstance(value, str):
        raise bad("a string")
    if action.choices is not None and value not in action.choices:
        raise bad("one of " + ", ".join(map(str, action.choices)))
    return value


# ----------------------------------------------------------------------------------------------- checks

def _int_at_least(args, name: str, low: int, what: str = "", optional: bool = True, high: int | None = None):
    v = getattr(args, name)
    if v is None and optional:
        return
    if high is not None and v is not None and low <= v <= high:
        return
    if high is None and v is not None and v >= low:
        return
    rng = f"an integer from {low} to {high}" if high is not None else f"an integer ≥ {low}"
    raise InputError(f"--{name.replace('_', '-')} {v}: out of range; accepted: {rng}{what}")


def _float_in(args, name: str, ok, accepted: str):
    v = getattr(args, name)
    if v is None or not math.isfinite(v) or not ok(v):
        raise InputError(f"--{name.replace('_', '-')} {v}: out of range; accepted: {accepted}")


def parse_pins(text) -> dict[str, str]:
    """--pin "op=impl,op=impl" as {op: impl}, each op and implementation known (``InputError`` otherwise)."""
    if not text:
        return {}
    from groundthink.spec import specs
    known = specs()
    pins = {}
    for item in str(text).split(","):
        op, sep, impl = item.strip().partition("=")
        if not sep or op not in known:
            raise InputError(f"--pin {item.strip()!r}: not OP=IMPL with a known op; accepted ops: {', '.join(known)}")
        names = [i.name for i in known[op].impls]
        if impl not in names:
            raise InputError(f"--pin {op}={impl}: unknown implementation of {op}; accepted: {', '.join(names)}")
        pins[op] = impl
    return pins


def validate(args) -> None:
    """Raise ``InputError`` (one line) for the first bad setting; normalizes ``args.model`` to its canonical name."""
    import fused
    try:
        args.model = fused.variants.canonical_name(str(args.model))
    except KeyError:
        raise InputError(f"--model {args.model}: unknown variant; accepted: {', '.join(fused.list_models())} "
                         f"(--list-models)") from None
    if args.size not in fused.SIZES:
        raise InputError(f"--size {args.size}: unknown size; accepted: {', '.join(fused.SIZES)}")
    overrides = parse_overrides(args.override)
    parse_pins(args.pin)
    _int_at_least(args, "steps", 1)
    _int_at_least(args, "batch_size", 1)
    _int_at_least(args, "seq_len", 1)
    for name in ("eval_interval", "eval_iters", "log_interval", "ckpt_interval", "stop_at"):
        _int_at_least(args, name, 1)
    for name in ("warmup_rwkv", "warmup_mamba", "warmup_other"):
        _int_at_least(args, name, 0)
    _int_at_least(args, "sample_tokens", 0, optional=False)
    _int_at_least(args, "profile_steps", 0)
    _int_at_least(args, "threads", 0, " (0: automatic)", optional=False)
    _int_at_least(args, "seed", 0, optional=False, high=SEED_MAX)
    _int_at_least(args, "vocab_size", VOCAB_RANGE[0], optional=False, high=VOCAB_RANGE[1])
    _float_in(args, "val_frac", lambda v: 0 < v < 1, "a fraction strictly between 0 and 1, e.g. 0.1")
    _float_in(args, "lr", lambda v: 0 < v <= 10, "a finite number > 0 (and ≤ 10), e.g. 2e-3")
    _float_in(args, "min_lr_frac", lambda v: 0 <= v <= 1, "a number from 0 to 1")
    for name in ("lr_mult_rwkv", "lr_mult_mamba", "lr_mult_other", "weight_decay", "grad_clip"):
        _float_in(args, name, lambda v: v >= 0, "a finite number ≥ 0")
    if args.data is not None:
        from groundthink.data import check_text_file
        check_text_file(args.data)
    _check_out_paths(args)
    if args.resume is not None and args.resume != "auto":
        from groundthink import checkpoint as ckpt
        try:
            ckpt.verify(args.resume)
        except ckpt.CheckpointError as e:
            raise InputError(f"--resume {e}") from None
    elif overrides:  # a fresh run: the overridden config must build (a resumed run takes the checkpoint's)
        try:
            fused.make_config(args.model, args.size, 97, **overrides)
        except (ValueError, TypeError) as e:
            raise InputError(f"--override: {e}; accepted: a consistent model config") from None


def parse_overrides(items) -> dict:
    """``["KEY=VALUE", ...]`` → {key: YAML value}; each key a ``fused.ModelConfig`` field of the right type."""
    from dataclasses import fields

    import fused
    kinds = {f.name: f.type for f in fields(fused.ModelConfig)}
    accepted = ", ".join(sorted(k for k in kinds if k not in NOT_OVERRIDABLE))
    out = {}
    for item in items or []:
        key, eq, raw = str(item).partition("=")
        key = key.strip()
        if not eq or not key:
            raise InputError(f"--override {item!r}: not KEY=VALUE; accepted: e.g. --override n_layer=2")
        if key not in kinds or key in NOT_OVERRIDABLE:
            raise InputError(f"--override {item}: unknown key {key!r}; accepted: {accepted}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        kind = str(kinds[key])
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "str": isinstance(value, str),
              "float | None": value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))}
        if not ok.get(kind, True):
            raise InputError(f"--override {item}: {raw!r} is not of type {kind}; accepted: a {kind} value for {key}")
        out[key] = value
    return out


def _check_out_paths(args) -> None:
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out-dir {args.out_dir}: exists and is not a directory; accepted: a directory (created "
                         f"when missing)")
    anc = out
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"--out-dir {args.out_dir}: {anc} is not writable; accepted: a writable directory")
    if args.log is not None and Path(args.log).is_dir():
        raise InputError(f"--log {args.log}: is a directory; accepted: a file path for the JSONL log")


# ----------------------------------------------------------------------------------------------- models

def models_table(vocab_size: int | None = None) -> str:
    """Every variant: its description and parameter counts per size (exact, computed without building)."""
    import fused
    if vocab_size is None:
        from groundthink.data import default_corpus
        vocab_size = len(set(default_corpus()))
    sizes = list(fused.SIZES)
    head = f"{'variant':<8} " + " ".join(f"{s:>8}" for s in sizes) + "  description"
    lines = [f"parameters per size (vocabulary {vocab_size}: the default corpus, char-level)", head]
    for name in fused.list_models():
        counts = " ".join(f"{_human(fused.param_count(name, s, vocab_size)):>8}" for s in sizes)
        lines.append(f"{name:<8} {counts}  {fused.DESCRIPTIONS.get(name, '')}")
    return "\n".join(lines)


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


# ----------------------------------------------------------------------------------------------- device

def fill_device_defaults(args, device_type: str) -> list[str]:
    """Fill unset steps/batch/seq/intervals and warm-ups; returns the names it chose."""
    chosen = []
    for k, v in DEVICE_DEFAULTS[device_type].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
            chosen.append(k)
    for g in ("rwkv", "mamba", "other"):
        if getattr(args, f"warmup_{g}") is None:
            setattr(args, f"warmup_{g}", min(200, args.steps // 10))
    return chosen


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; cgroup / taskset aware), else all."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def read_cpu_times(text: str | None = None) -> dict[int, tuple[int, int]]:
    """{cpu: (busy jiffies, total jiffies)} from /proc/stat (or ``text``); {} where there is none."""
    if text is None:
        try:
            text = Path("/proc/stat").read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu") or parts[0] == "cpu":
            continue
        try:
            vals = [int(x) for x in parts[1:9]]
            cpu = int(parts[0][3:])
        except ValueError:
            continue
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)          # idle + iowait
        total = sum(vals)
        out[cpu] = (total - idle, total)
    return out


def busy_cores(cpus: set[int], interval: float = 0.1, before=None, after=None) -> float:
    """How many of ``cpus`` other processes keep busy, measured now over ``interval`` seconds (not the load
    average, which still counts an install that just finished). 0.0 where /proc/stat is unavailable."""
    if before is None:
        before = read_cpu_times()
        time.sleep(interval)
        after = read_cpu_times()
    busy = 0.0
    for c in cpus:
        if c in before and c in after:
            db, dt = after[c][0] - before[c][0], after[c][1] - before[c][1]
            busy += min(1.0, max(0.0, db / dt)) if dt > 0 else 0.0
    return busy


def cpu_threads(requested: int, *, cpus: set[int] | None = None, busy: float | None = None,
                torch_threads: int | None = None) -> int:
    """--threads 0: the cores this process may run on (affinity), less those other processes keep busy right now
    (a fresh 0.1 s measurement, rounded: a core counts as busy from half load), at most torch's default (physical
    cores or OMP_NUM_THREADS), at least 1. The keyword arguments inject the measurements (tests)."""
    if requested > 0:
        return requested
    cpus = allowed_cpus() if cpus is None else cpus
    if torch_threads is None:
        import torch
        torch_threads = torch.get_num_threads()
    busy = busy_cores(cpus) if busy is None else busy
    return max(1, min(torch_threads, len(cpus) - int(busy + 0.5)))
