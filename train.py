"""Train a groundthink hybrid LM (RWKV-6 ∥ Mamba-2) on a text file — or, with no arguments, on the text that
ships inside CPython (pydoc_data.topics), nothing downloaded.

    python train.py                                   # GF-MH, size small, char-level, defaults chosen by device
    python train.py --model HGF --size medium --data my.txt --tokenizer bpe
    python train.py --config configs/small-gpu.yaml --steps 5000
    python train.py --resume auto                     # continue the latest checkpoint in --out-dir, exactly
    torchrun --nproc_per_node 4 train.py --config configs/large-gpu.yaml

Precedence of settings: built-in defaults < --config YAML (keys = flag names) < the checkpoint's settings when
resuming < flags on the command line. Unset steps / batch size / sequence length / intervals are chosen by device.

Reproducibility: the batch at step s is a pure function of (seed, s, rank) (groundthink.data.get_batch), and a
checkpoint stores model, optimizer, step and RNG states (the learning rate is a pure function of the step), so
--resume continues exactly (bit for bit on CPU). Checkpoints are written atomically (groundthink.checkpoint.save).

The step (groundthink/step.py) is one function without host syncs — on a GPU replayed as one CUDA graph
(--graph); its loss, gradient norms and component stats are read asynchronously at log intervals. A step with a
non-finite loss or gradient norm leaves the parameters unchanged (guarded AdamW); the run stops at the next log
interval (at the latest before the next checkpoint), so nothing bad is ever saved; the last good one stays.
The summary prints tok/s, peak memory, GPU busy % and kernel launches per step (torch.profiler window).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_T0 = time.monotonic()   # before torch and the kernels are imported: the start, for the time to the first step

import kernels  # noqa: F401  (on a CPU-only machine: Triton interpreter, before any kernel module is imported)
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from groundthink import checkpoint as ckpt
from groundthink import data as gdata
from groundthink.cli import (DEVICE_DEFAULTS, build_parser, cpu_threads, fill_device_defaults,  # noqa: F401
                             parse_args, parse_pins)
from groundthink.errors import InputError
from groundthink.precompile import COMPILES, compiles_since, counting_compiles, parallel_autotune
from groundthink import monitor
from groundthink.registry import resolve
from groundthink.device import live_cuda
from groundthink.step import TrainStep, adamw_groups, capture_failure, group_params

# never taken from a checkpoint's args
NOT_INHERITED = {"resume", "config", "stop_at", "no_progress", "graph", "profile_steps"}


class NonFiniteLoss(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the run stopped without saving that state."""


# ----------------------------------------------------------------------------------------------- pieces

def model_overrides(args) -> dict:
    """--override KEY=VALUE ... as a dict (each value read as YAML)."""
    overrides = {}
    for item in args.override or []:
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def build_model(args, vocab_size: int, ops):
    import fused
    return fused.get_model(args.model, size=args.size, vocab_size=vocab_size, ops=ops, **model_overrides(args))


def make_optimizer(model, args):
    """Fused, capturable AdamW with one param group per (component, decay/no-decay); each group knows its
    component and base lr (the schedule multiplies it)."""
    groups = []
    for comp, decay, ps in adamw_groups(group_params(model)):
        mult = getattr(args, f"lr_mult_{comp}")
        groups.append({"params": ps, "lr": args.lr * mult, "base_lr": args.lr * mult, "component": comp,
                       "weight_decay": args.weight_decay if decay else 0.0})
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True, capturable=True)


def load_optimizer(opt, saved: dict):
    """Load AdamW moments, steps and hyperparameters from a checkpoint, keeping what this run decides: the fused,
    capturable implementation (older checkpoints hold CPU-side, non-fused groups) and each group's base lr (from
    the current flags; the schedule is a function of the step)."""
    saved = {**saved, "param_groups": [{**g, "fused": True, "capturable": True, "foreach": None}
                                       for g in saved["param_groups"]]}
    bases = [g["base_lr"] for g in opt.param_groups]
    opt.load_state_dict(saved)
    for g, base in zip(opt.param_groups, bases):
        g["base_lr"] = base
    for p, st in opt.state.items():   # the fused kernel trusts shapes: a mismatch would corrupt memory
        if "exp_avg" in st and st["exp_avg"].shape != p.shape:
            raise InputError(f"checkpoint optimizer state does not fit this model: moment of shape "
                             f"{tuple(st['exp_avg'].shape)} for a parameter of shape {tuple(p.shape)}")


def lr_factor(step: int, warmup: int, total: int, min_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_frac`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_values(opt, args, step: int) -> list[float]:
    """Every group's learning rate at ``step`` (0-based): a pure function of the step, so resuming needs no
    scheduler state."""
    return [g["base_lr"] * lr_factor(step, getattr(args, f"warmup_{g['component']}"), args.steps, args.min_lr_frac)
            for g in opt.param_groups]


def choose_graph(args, device, ops) -> tuple[bool, str]:
    """--graph auto|on|off → (capture the step, why)."""
    if args.graph == "off":
        return False, "--graph off"
    if device.type != "cuda":
        if args.graph == "on":
            raise InputError("--graph on needs a CUDA device; use --graph auto or off on CPU")
        return False, "no CUDA device: eager step"
    ok, why = ops.graph_safe()
    if not ok and args.graph == "on":
        raise InputError(f"--graph on: {why}; choose other --kernels or --graph off")
    return ok, f"--graph {args.graph}: {why}"


def amp_context(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of this process (Linux: KiB)


def all_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= world
    return t


@torch.no_grad()
def evaluate(model, split, args, device, rank, world) -> float:
    model.eval()
    losses = []
    for x, y in gdata.eval_batches(split, args.eval_iters, args.batch_size, args.seq_len, args.seed, rank, world,
                                   device):
        with amp_context(device):
            _, loss = model(x, y)
        losses.append(loss.float())
    model.train()
    return all_mean(torch.stack(losses).mean(), world).item()


def config_dict(model):
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else cfg


def all_finite(model) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


class RunLog:
    """The JSONL run log, written by rank 0: a resumed run drops records past its starting step, then appends."""

    def __init__(self, path: Path, master: bool, start: int, resumed: bool):
        self.path, self.f = path, None
        if not master:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resumed and path.exists():
            ckpt.trim_log(path, start)
        elif not resumed:
            path.write_text("")
        self.f = open(path, "a")

    def __call__(self, rec: dict):
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self):
        if self.f:
            self.f.close()
            self.f = None


@dataclass
class Run:
    """Everything the training loop reads and updates."""
    args: argparse.Namespace
    device: torch.device
    rank: int
    world: int
    master: bool
    say: object
    out_dir: Path
    tok: object
    corpus: dict            # {"name", "hash"}
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    ops: object
    model: object
    opt: object
    step: TrainStep
    ring: monitor.MetricsRing
    log: RunLog
    start: int
    stop: int
    graph: tuple[bool, str]
    gate0: float | None = None
    last_ckpt: Path | None = None
    bar: object = None
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    windows: list = field(default_factory=list)      # (last step, steps, seconds) per metrics window
    last: dict = field(default_factory=dict)         # the latest step's stats (monitor.unpack)
    val_loss: float | None = None
    train_eval: float | None = None
    profile: dict | None = None
    profiler: object = None
    profile_span: tuple[int, int] = (0, 0)


# ----------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(argv)
    # distributed set-up (torchrun sets WORLD_SIZE / RANK / LOCAL_RANK)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if world > 1:
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    threads = torch.get_num_threads()
    try:
        with counting_compiles():       # the gate's per-item lines and the first step say what compiled where
            return _train(args, device, rank, world, master, say)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests): leave the process as found
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, device, rank, world, master, say) -> dict:
    state, resumed_from = load_resume(args, say)
    chosen = fill_device_defaults(args, device.type)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(args.threads))
    if chosen and state is None:
        say(f"device {device.type}: " + ", ".join(f"{k}={getattr(args, k)}" for k in chosen)
            + " (chosen by device; flags override)")
    ops = resolve(args.kernels, pins(args), graph=args.graph != "off")  # one implementation per op, and why
    say(f"kernels (--kernels {args.kernels}):\n" + ops.table())
    background = early_background(args, device, master)
    run = build_run(args, device, rank, world, master, say, ops, state, background)
    run.last_ckpt = resumed_from
    try:
        train_loop(run)
        return finish(run)
    except BaseException:
        run.bar.close()
        run.log.close()
        raise
    finally:
        run.step.release()   # before destroy_process_group (a live graph with NCCL work hangs it)


def load_resume(args, say):
    """--resume: (checkpoint state, its path), with the checkpoint's settings filling what the command line
    did not give; (None, None) for a fresh run."""
    if not args.resume:
        return None, None
    out_dir = Path(args.out_dir)
    path = (ckpt.latest(out_dir, args.model, size=args.size, warn=say) if args.resume == "auto"
            else Path(args.resume))
    if path is None:
        say(f"--resume auto: no checkpoint of {args.model}/{args.size} in {out_dir}; starting fresh")
        return None, None
    state = ckpt.load(path)
    for k, v in state["args"].items():
        if k not in args._explicit and k not in NOT_INHERITED and not k.startswith("_"):
            setattr(args, k, v)
    say(f"resuming from {path} (step {state['step']})")
    return state, path


def prepare_data(args, state, master, world, say):
    """(tokenizer, corpus name, train ids, val ids). Rank 0 trains a BPE tokenizer and caches it next to the
    checkpoints; the other ranks read the cache."""
    out_dir = Path(args.out_dir)
    text, corpus_name = gdata.load_text(args.data)
    if state is not None:
        ckpt.check_resume(state, args, text)
        tok = gdata.tokenizer_from_state(state["tokenizer"])
        tok_note = f"{tok.kind}, from the checkpoint"
    else:
        if master:
            out_dir.mkdir(parents=True, exist_ok=True)
        if world > 1 and not master:
            dist.barrier()
        tok, tok_note = gdata.build_tokenizer(args.tokenizer, text, args.vocab_size, out_dir)
        if world > 1 and master:
            dist.barrier()
    train_ids, val_ids = gdata.encode_corpus(tok, text, args.val_frac, seq_len=args.seq_len)
    say(f"data: {corpus_name}, {len(text):,} chars -> {len(train_ids):,} train / {len(val_ids):,} val tokens; "
        f"tokenizer {tok_note}, vocab {tok.vocab_size}")
    return tok, {"name": corpus_name, "hash": gdata.text_hash(text)}, train_ids, val_ids


def pins(args) -> dict[str, str]:
    """--pin's {op: implementation} (none when the namespace has no --pin: a caller's own args)."""
    return parse_pins(getattr(args, "pin", None))


def qualify_kernels(args, model, ops, device, master, world, say, background=None):
    """--kernels auto on a GPU: the gate on first use qualifies every lab kernel that has no valid verdict for
    this GPU covering each call the training step makes (``gate.step_calls``: every distinct op variant —
    dtypes, flags, modes — at the step's shape; ≤ 60 s, per-machine manifest) — timed as CUDA-graph replays when
    the step will be captured (--graph auto/on) — then the ops are chosen again: the fastest proven in those calls.
    Before any capture: the step must see the final kernels."""
    if args.kernels != "auto" or device.type != "cuda":
        return ops
    from groundthink import gate
    graph = args.graph != "off"
    shapes = gate.step_calls(model, args.batch_size, args.seq_len)     # every (op, variant) the step calls
    if master:
        say(f"gate: {time.monotonic() - _T0:.1f} s after the start (imports, data, model)")
        gate.qualify(shapes, graph=graph, say=say, progress=not args.no_progress, background=background)
    if world > 1:
        dist.barrier()
    ops = resolve(args.kernels, pins(args), verdicts=gate.Verdicts(shapes=shapes, graph=graph))
    model.set_ops(ops)
    say(f"kernels after qualification ({time.monotonic() - _T0:.1f} s after the start):\n" + ops.table())
    for line in gate.deferred_notes(ops) if master else ():
        say(line)
    if torch.cuda.is_available():
        say(apart_from_training(device))
    return ops


def apart_from_training(device) -> str:
    """The qualification's own peak memory (its reference runs, the recording of the step's calls) is reported
    here and then left out of the run's peak: the peak in the summary is the training's, as on a run whose verdicts
    are cached (issue 10: run 21's first-use auto run said 7,908 MB at large, the same step 7,236 MB)."""
    gc.collect()        # the qualification's inputs and graphs
    held0 = torch.cuda.memory_allocated(device) / 2**20
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:   # cuBLAS's workspace per stream it ran on (run 21: ~700 MB after the qualification)
        clear()
    peak, held = torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return (f"gate: the qualification's peak {peak:,.0f} MB; {held0:,.0f} MB allocated after it, {held:,.0f} MB "
            f"once cuBLAS's workspaces are released ({live_cuda()}); the peak reported from here on is the "
            f"training's")


def early_background(args, device, master):
    """--kernels auto on a GPU (rank 0): start the qualification's long compiles (mamba-ssm's first use; the lab
    kernels' too, on by default: ``gate.early_background``) now, before data and model — run 11 started
    mamba-ssm's 12.6 s after the start and its 55 s were the qualification's critical path. The subprocesses record
    the step's calls themselves (their own copy of the model on the GPU: mamba2's dt is a column slice, ``[dt rows
    592]`` at GF-MH small; recording them here on the CPU first took 5-30 s on a 2-core machine); ``step_calls`` and
    the qualification follow after the model. None when there is nothing to start (another mode or device, another
    rank); a model without a Mamba-2 branch asks for none of its ops. By default the lab items compile in a group
    of their own beside mamba-ssm's (``GROUNDTHINK_LAB_BACKGROUND=0`` turns it off, run 12 call 6's way); with
    ``GROUNDTHINK_PRELOAD=1`` the gate's candidates are imported on a thread meanwhile (``gate.preload``)."""
    import fused
    if args.kernels != "auto" or device.type != "cuda" or not master:
        return None
    from groundthink import gate
    from groundthink.precompile import preload_knob
    from groundthink.spec import specs
    rwkv_only = fused.VARIANTS[fused.canonical_name(args.model)]["branches"] == "rwkv"
    model = {"name": args.model, "size": args.size, "overrides": model_overrides(args), "batch_size": args.batch_size,
             "seq_len": args.seq_len}
    ops = tuple(op for op in specs() if not (rwkv_only and op in fused.MAMBA_OPS))
    background = gate.early_background(ops, graph=args.graph != "off", model=model)
    if background is not None and preload_knob():       # GROUNDTHINK_PRELOAD=1: the gate's imports start now
        gate.preload(ops, graph=args.graph != "off")
    return background


def build_run(args, device, rank, world, master, say, ops, state, background=None) -> Run:
    """Data, model, optimizer (restored when resuming), the training step, the metrics ring and the run log
    (``background``: the qualification's long compile, ``early_background``: ended here once the gate is done,
    its one owner — ``gate.qualify`` ends only a background it started itself)."""
    try:
        tok, corpus, train_ids, val_ids = prepare_data(args, state, master, world, say)
        torch.manual_seed(args.seed)
        model = build_model(args, tok.vocab_size, ops).to(device)
        ops = qualify_kernels(args, model, ops, device, master, world, say, background)
    finally:
        if background is not None:     # a compile the gate left running (its item deferred) ends before the step
            background.close()
    opt = make_optimizer(model, args)
    start, gate0 = 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        load_optimizer(opt, state["optimizer"])
        start, gate0 = state["step"], state.get("gate0")
        ckpt.set_rng_state(state["rng"])
    k0 = dict(COMPILES)
    with parallel_autotune():   # its one forward (which weights autocast reads) is the first call of the kernels
        step = TrainStep(model, opt, batch_size=args.batch_size, seq_len=args.seq_len, device=device,
                         grad_clip=args.grad_clip, world=world)
    if device.type == "cuda":
        say(f"training step built {time.monotonic() - _T0:.1f} s after the start{compiles_since(k0)}")
    graph = choose_graph(args, device, ops)
    say(f"model {args.model}/{args.size}: {model.num_params():,} parameters; world size {world}; "
        f"{'bf16 autocast' if device.type == 'cuda' else f'fp32, {torch.get_num_threads()} CPU threads'}; "
        f"CUDA graph {'on' if graph[0] else 'off'} ({graph[1]})")
    log_path = (Path(args.log) if args.log
                else ckpt.run_dir(args.out_dir, args.model, args.size) / f"log_{args.model}.jsonl")
    log = RunLog(log_path, master, start,
                 state is not None)
    stop = min(args.steps, args.stop_at) if args.stop_at else args.steps
    run = Run(args, device, rank, world, master, say, Path(args.out_dir), tok, corpus, train_ids, val_ids, ops,
              model, opt, step, monitor.MetricsRing(len(monitor.STATS), args.log_interval, device), log, start, stop,
              graph, gate0=gate0)
    run.bar = tqdm(total=stop, initial=start, disable=args.no_progress or not master, dynamic_ncols=True,
                   desc=args.model)
    log({"type": "config", "step": start, "args": clean_args(args), "ops": ops.impls(), "device": str(device),
         "world": world, "num_params": model.num_params(), "vocab_size": tok.vocab_size, "graph": graph[0],
         "graph_reason": graph[1]})
    return run


def clean_args(args) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def write(run, msg: str):
    if run.master:
        (tqdm.write if not run.bar.disable else print)(msg)


# ----------------------------------------------------------------------------------------------- the loop

def train_loop(run: Run):
    a = run.args
    run.model.train()
    for step in range(run.start, run.stop):
        x, y = gdata.get_batch(run.train_ids, a.batch_size, a.seq_len, a.seed, step, run.rank, run.world,
                               run.device)
        if step == run.start:
            first_step(run, x, y, step)
        else:
            run.ring.push(run.step(x, y, lr_values(run.opt, a, step)), step + 1)
        run.bar.update(1)
        profile_hook(run, step + 1)
        at_boundary(run, step + 1)
    run.bar.close()


def first_step(run: Run, x, y, step: int):
    """The run's first step: its first call compiles (every autotuned kernel compiles its configs in parallel,
    ``groundthink.precompile``) and, with the graph on, is captured; says how long after the start it launched."""
    k0 = dict(COMPILES)
    with parallel_autotune():
        if run.graph[0]:
            capture(run, x, y)
        run.ring.push(run.step(x, y, lr_values(run.opt, run.args, step)), step + 1)
    write(run, f"first step launched {time.monotonic() - _T0:.1f} s after the start (imports, data, "
               "qualification, compilation, autotuning and capture included)" + compiles_since(k0))


def capture(run: Run, x, y):
    """Capture the step as one CUDA graph (warm-up included); with --graph auto a failure falls back to eager."""
    run.step.load_batch(x, y)
    try:
        run.step.capture()
    except Exception as e:  # noqa: BLE001 - auto: say why and train eagerly
        if run.args.graph == "on":
            raise
        run.graph = (False, f"capture failed: {capture_failure(e)}")
        run.say(f"CUDA graph off: {run.graph[1]}")
        torch.cuda.synchronize()
    run.ring.restart_clock()


def at_boundary(run: Run, done: int):
    """Log records, evals and checkpoints due after step ``done``."""
    a = run.args
    is_eval = done % a.eval_interval == 0 or done == run.stop
    is_ckpt = done < a.steps and (done % a.ckpt_interval == 0 or done == run.stop)
    if done % a.log_interval == 0 or is_eval or is_ckpt:
        run.ring.snapshot()
    drain(run, block=is_eval or is_ckpt or run.world > 1)   # ranks drain together: they fail together
    if is_eval:
        run_eval(run, done)
    if is_ckpt and run.master:
        run.last_ckpt = save_checkpoint(run, ckpt.step_path(run.out_dir, a.model, done, size=a.size), done)
    if is_eval or is_ckpt:
        run.ring.restart_clock()   # throughput counts training time only


def drain(run: Run, block: bool):
    """Read the finished metrics windows: per-step losses, train records, the non-finite check."""
    a = run.args
    for steps, rows, secs in run.ring.collect(block):
        run.windows.append((steps[-1], len(steps), secs))
        tok_s = a.batch_size * a.seq_len * run.world * len(steps) / max(secs, 1e-9)
        for s, row in zip(steps, rows):
            d = monitor.unpack(row, run.step.has or {})
            check_finite(run, s, d)
            if run.gate0 is None:
                run.gate0 = d["gate_mean"] if d["gate_mean"] is not None else float("nan")  # nan: no gate
            run.losses.append((s, d["loss"]))
            run.last = {**d, "tok_s": tok_s}
            if s % a.log_interval == 0 or s % a.eval_interval == 0 or s == run.stop:
                lrs = {f"lr_{g['component']}": lr for g, lr in zip(run.opt.param_groups, lr_values(run.opt, a, s - 1))}
                run.log({"type": "train", "step": s, "tokens": s * a.batch_size * a.seq_len * run.world,
                         "loss": d["loss"], "grad_norm": d["grad_norm"], **lrs, "tok_s": tok_s,
                         "peak_mem_mb": peak_mem_mb(run.device), "time": time.time()})
        run.bar.set_postfix(loss=f"{run.last['loss']:.4f}", tok_s=f"{tok_s:,.0f}")


def check_finite(run: Run, step: int, d: dict):
    """A non-finite loss or grad norm stops the run. That step's update was skipped on the device (guarded
    AdamW), and no checkpoint is written from here on; the last good one stays."""
    what = ("loss", d["loss"]) if not math.isfinite(d["loss"]) else (
        ("gradient norm", d["grad_norm"]) if not math.isfinite(d["grad_norm"]) else None)
    if what is None:
        return
    msg = (f"non-finite {what[0]} ({what[1]}) at step {step}: stopping. The optimizer skipped that step and nothing "
           f"was saved from this state; last good checkpoint: {run.last_ckpt or 'none'}")
    run.log({"type": "error", "step": step, "error": msg})
    raise NonFiniteLoss(msg)


def run_eval(run: Run, done: int):
    a, d = run.args, run.last
    run.train_eval = evaluate(run.model, run.train_ids, a, run.device, run.rank, run.world)
    run.val_loss = evaluate(run.model, run.val_ids, a, run.device, run.rank, run.world)
    gm, g0 = d.get("gate_mean"), run.gate0
    drift = gm - g0 if gm is not None and g0 is not None and math.isfinite(g0) else None
    rec = {"type": "eval", "step": done, "train_loss": run.train_eval, "val_loss": run.val_loss,
           "tok_s": d.get("tok_s"), "peak_mem_mb": peak_mem_mb(run.device), "gate_drift": drift,
           **{k: d.get(k) for k in ("grad_norm_rwkv", "grad_norm_mamba", "grad_ratio", "gate_mean", "state_norm",
                                   "rms_rwkv", "rms_mamba")}}
    run.evals.append(rec)
    run.log(rec)
    fmt = (lambda v, f=".3g": "n/a" if v is None else format(v, f))  # noqa: E731
    write(run, f"step {done:>6}/{a.steps}: train {run.train_eval:.4f}  val {run.val_loss:.4f}  "
               f"{d.get('tok_s') or 0:,.0f} tok/s  peak {rec['peak_mem_mb']:,.0f} MB  |  rwkv/mamba grad "
               f"{fmt(rec['grad_ratio'])}  gate {fmt(gm)} (drift {fmt(drift, '+.3g')})  state {fmt(rec['state_norm'])}")


def save_checkpoint(run: Run, path: Path, step: int) -> Path:
    """Atomic save (metrics drained first: a non-finite step stops the run before anything is written)."""
    drain(run, block=True)
    if not all_finite(run.model):  # never replace a good checkpoint with a bad state
        raise NonFiniteLoss(f"non-finite parameters at step {step}; not saving {path}")
    a = run.args
    ckpt.save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": {"step": step},
               "step": step, "args": clean_args(a), "rng": ckpt.rng_state(), "tokenizer": run.tok.state(),
               "data": {"seed": a.seed, "step": step, "world": run.world, "corpus": run.corpus["name"],
                        "corpus_hash": run.corpus["hash"],
                        "val_frac": a.val_frac},
               "model_name": a.model, "size": a.size, "vocab_size": run.tok.vocab_size,
               "config": config_dict(run.model), "gate0": run.gate0, "world": run.world}, path)
    return path


# ----------------------------------------------------------------------------------------------- where the time goes

def profile_window(args, start: int, stop: int, n: int) -> int | None:
    """The step after which the --profile-steps window starts: the first metrics window done (autotuning and
    capture behind), and no eval or checkpoint inside the window (their kernels would count as the step's);
    None when the run is too short."""
    first = start + max(args.log_interval, 5)
    while first + n <= stop:
        if not any(d % args.eval_interval == 0 or d % args.ckpt_interval == 0 for d in range(first, first + n)):
            return first
        first += 1
    return None


def profile_hook(run: Run, done: int):
    """Profile --profile-steps steps (``profile_window``)."""
    n = run.args.profile_steps
    if n is None:
        n = 5 if run.device.type == "cuda" else 0
    if n <= 0 or run.device.type != "cuda":
        return
    first = profile_window(run.args, run.start, run.stop, n)
    if first is None:
        return
    if done == first:
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.synchronize()
        run.profiler = profile(activities=[ProfilerActivity.CUDA])
        run.profiler.start()
    elif done == first + n and run.profiler is not None:
        torch.cuda.synchronize()
        run.profiler.stop()
        run.profile = monitor.summarize_profiler(run.profiler, n, top=80)   # the run log keeps 80 kernels
        run.profile_span = (first, done)
        run.profiler = None
        run.ring.snapshot()
        run.ring.restart_clock()


def steady_ms(run: Run) -> float | None:
    """ms per step over the metrics windows after the first (capture/autotuning) and outside the profile."""
    lo, hi = run.profile_span
    keep = [(n, s) for last, n, s in run.windows[1:] if not lo < last <= hi]
    steps = sum(n for n, _ in keep)
    return 1e3 * sum(s for _, s in keep) / steps if steps else None


def summary(run: Run) -> dict:
    """tok/s, peak memory and where the step's time goes; printed and logged."""
    a, ms = run.args, steady_ms(run)
    tok = a.batch_size * a.seq_len * run.world
    out = {"tok_s": tok / (ms / 1e3) if ms else None, "ms_per_step": ms, "peak_mem_mb": peak_mem_mb(run.device),
           "graph": run.graph[0], "graph_reason": run.graph[1]}
    line = (f"summary: {out['tok_s'] or 0:,.0f} tok/s, {ms or 0:.2f} ms/step (steady state), peak "
            f"{out['peak_mem_mb']:,.0f} MB, CUDA graph {'on' if run.graph[0] else 'off'}")
    if run.profile and ms:
        p = run.profile
        out.update({k: p[k] for k in ("launches_per_step", "copies_per_step", "gpu_busy_ms_per_step")})
        out["gpu_busy_pct"] = 100 * p["gpu_busy_ms_per_step"] / ms
        line += (f"; GPU busy {out['gpu_busy_pct']:.0f}% ({p['gpu_busy_ms_per_step']:.2f} ms of {ms:.2f}), "
                 f"{p['launches_per_step']:.0f} kernel launches + {p['copies_per_step']:.0f} copies per step")
        run.log({"type": "profile", "step": run.profile_span[1], "steps": run.profile_span[1] - run.profile_span[0],
                 **{k: v for k, v in p.items()}})
        top = ", ".join(f"{r['name'][:40]} {r['pct']:.0f}%" for r in p["breakdown"][:4])
        ops = ", ".join(f"{op} {us / 1e3:.2f} ms ({pct:.0f}%)" for op, us, pct in monitor.by_op(p["breakdown"]))
        line += (f"\n  GPU time per step by op: {ops}\n  top kernels: {top} (per-kernel breakdown in the run log)")
    elif run.device.type == "cuda":
        line += "; no profile (--profile-steps 0 or too few steps)"
    write(run, line)
    return out


# ----------------------------------------------------------------------------------------------- the end

def finish(run: Run) -> dict:
    a = run.args
    final = None
    done = max(run.start, run.stop)
    drain(run, block=True)
    stats = summary(run)
    if run.master and done >= a.steps:
        final = save_checkpoint(run, ckpt.final_path(run.out_dir, a.model, size=a.size), done)
        write(run, f"final checkpoint: {final}")
    elif run.master:
        write(run, f"stopped at step {done} (--stop-at); continue with --resume: {run.last_ckpt}")
    if run.world > 1:
        dist.barrier()
    text = sample(run) if run.master and a.sample_tokens > 0 and done >= a.steps else None
    loss_f = run.losses[-1][1] if run.losses else None
    result = {"final_loss": loss_f, "final_train_loss": run.train_eval, "final_val_loss": run.val_loss,
              "final_checkpoint": str(final) if final else None,
              "last_checkpoint": str(run.last_ckpt) if run.last_ckpt else None, "step": done, "losses": run.losses,
              "evals": run.evals, "log": str(run.log.path), "sample": text, "ops": run.ops.impls(),
              "world": run.world, "summary": stats}
    run.log({"type": "final", "step": done, "final_loss": loss_f, "val_loss": run.val_loss,
             "checkpoint": result["final_checkpoint"], "sample": text, **stats})
    run.log.close()
    return result


def sample(run: Run) -> str:
    run.model.eval()
    torch.manual_seed(run.args.seed)
    prompt = torch.tensor([run.tok.encode("\n")], dtype=torch.long, device=run.device)
    with torch.no_grad():
        # the references: the training kernels were compiled for B×T bf16, sampling is B1 T1 fp32 (model.generate)
        out = run.model.generate(prompt, run.args.sample_tokens, temperature=0.8, top_k=None,
                                 ops=resolve("reference"))
    text = run.tok.decode(out[0, prompt.shape[1]:].tolist())
    write(run, "sample:\n" + text)
    return text


if __name__ == "__main__":
    try:
        main()
    except (NonFiniteLoss, InputError) as e:  # a user's bad input or a diverged run: one line, exit 2
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)
