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
checkpoint stores model, optimizer, scheduler, step and RNG states, so --resume continues exactly (bit for bit on
CPU). Checkpoints are written atomically (groundthink.checkpoint.save). A non-finite loss or gradient norm stops
the run before the optimizer step, so nothing bad is ever saved; the last good checkpoint stays.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import kernels  # noqa: F401  (on a CPU-only machine: Triton interpreter, before any kernel module is imported)
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from groundthink import checkpoint as ckpt
from groundthink import data as gdata
from groundthink.cli import DEVICE_DEFAULTS, build_parser, cpu_threads, fill_device_defaults, parse_args  # noqa: F401
from groundthink.errors import InputError
from groundthink.registry import resolve

NOT_INHERITED = {"resume", "config", "stop_at", "no_progress"}  # never taken from a checkpoint's args


class NonFiniteLoss(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the run stopped without saving that state."""


# ----------------------------------------------------------------------------------------------- pieces

def build_model(args, vocab_size: int, ops):
    import fused
    overrides = {}
    for item in args.override or []:
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return fused.get_model(args.model, size=args.size, vocab_size=vocab_size, ops=ops, **overrides)


def make_optimizer(model, args, use_fused: bool):
    """AdamW with one param group per (component, decay/no-decay); each group knows its component."""
    groups_by_comp = model.param_groups()
    seen = {id(p) for ps in groups_by_comp.values() for p in ps}
    leftover = [p for p in model.parameters() if id(p) not in seen]
    groups = []
    for comp in ("rwkv", "mamba", "other"):
        params = [p for p in groups_by_comp.get(comp, []) if p.requires_grad]
        if comp == "other":
            params += [p for p in leftover if p.requires_grad]
        mult = getattr(args, f"lr_mult_{comp}")
        for decay in (True, False):
            ps = [p for p in params if (p.dim() >= 2) == decay]
            if ps:
                groups.append({"params": ps, "lr": args.lr * mult, "component": comp,
                               "weight_decay": args.weight_decay if decay else 0.0})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=use_fused)
    return opt


def lr_factor(step: int, warmup: int, total: int, min_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_frac`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(opt, args):
    fns = [(lambda s, w=getattr(args, f"warmup_{g['component']}"): lr_factor(s, w, args.steps, args.min_lr_frac))
           for g in opt.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(opt, fns)


def peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of this process (Linux: KiB)


def as_float(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().float().item()
    return float(x)


def all_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= world
    return t


@torch.no_grad()
def evaluate(model, split, args, amp, device, rank, world) -> float:
    model.eval()
    losses = []
    for x, y in gdata.eval_batches(split, args.eval_iters, args.batch_size, args.seq_len, args.seed, rank, world,
                                   device):
        with amp:
            _, loss = model(x, y)
        losses.append(loss.float())
    model.train()
    return all_mean(torch.stack(losses).mean(), world).item()


def config_dict(model):
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else cfg


def all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


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
        return _train(args, device, rank, world, master, say)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests): leave the process as found
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, device, rank, world, master, say) -> dict:
    # resume: the checkpoint's settings fill in whatever the command line did not give
    out_dir = Path(args.out_dir)
    state = resumed_from = None
    if args.resume:
        path = ckpt.latest(out_dir, args.model) if args.resume == "auto" else Path(args.resume)
        if path is None:
            say(f"--resume auto: no checkpoint of {args.model} in {out_dir}; starting fresh")
        else:
            state, resumed_from = ckpt.load(path), path
            for k, v in state["args"].items():
                if k not in args._explicit and k not in NOT_INHERITED and not k.startswith("_"):
                    setattr(args, k, v)
            say(f"resuming from {path} (step {state['step']})")
    chosen = fill_device_defaults(args, device.type)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(args.threads))
    if chosen and state is None:
        say(f"device {device.type}: " + ", ".join(f"{k}={getattr(args, k)}" for k in chosen)
            + " (chosen by device; flags override)")

    # kernels: one implementation per op, and why
    ops = resolve(args.kernels)
    say(f"kernels (--kernels {args.kernels}):\n" + ops.table())

    # data
    text, corpus_name = gdata.load_text(args.data)
    if state is not None:
        tok = gdata.tokenizer_from_state(state["tokenizer"])
        tok_note = f"{tok.kind}, from the checkpoint"
    else:  # rank 0 trains (BPE) and caches the tokenizer next to the checkpoints; the other ranks read the cache
        if master:
            out_dir.mkdir(parents=True, exist_ok=True)
        if world > 1 and not master:
            dist.barrier()
        tok, tok_note = gdata.build_tokenizer(args.tokenizer, text, args.vocab_size, out_dir)
        if world > 1 and master:
            dist.barrier()
    train_ids, val_ids = gdata.encode_corpus(tok, text, args.val_frac)
    say(f"data: {corpus_name}, {len(text):,} chars -> {len(train_ids):,} train / {len(val_ids):,} val tokens; "
        f"tokenizer {tok_note}, vocab {tok.vocab_size}")

    # model, optimizer, schedule
    torch.manual_seed(args.seed)
    model = build_model(args, tok.vocab_size, ops).to(device)
    opt = make_optimizer(model, args, use_fused=device.type == "cuda")
    sched = make_scheduler(opt, args)
    start, gate0 = 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, gate0 = state["step"], state.get("gate0")
        ckpt.set_rng_state(state["rng"])
    say(f"model {args.model}/{args.size}: {model.num_params():,} parameters; world size {world}; "
        f"{'bf16 autocast' if device.type == 'cuda' else f'fp32, {torch.get_num_threads()} CPU threads'}")
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())

    # run log (JSONL): a resumed run drops records past its starting step, then appends
    log_path = Path(args.log) if args.log else out_dir / f"log_{args.model}.jsonl"
    if master:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if state is not None and log_path.exists():
            keep = [ln for ln in log_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= start]
            log_path.write_text("".join(ln + "\n" for ln in keep))
        elif state is None:
            log_path.write_text("")
    logf = open(log_path, "a") if master else None

    def log(rec):
        if logf:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()

    clean_args = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    log({"type": "config", "step": start, "args": clean_args, "ops": ops.impls(), "device": str(device),
         "world": world, "num_params": model.num_params(), "vocab_size": tok.vocab_size})

    def save(path, step):
        if not all_finite(model):  # never replace a good checkpoint with a bad state
            raise NonFiniteLoss(f"non-finite parameters at step {step}; not saving {path}")
        ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "step": step, "args": clean_args, "rng": ckpt.rng_state(), "tokenizer": tok.state(),
                   "data": {"seed": args.seed, "step": step, "world": world, "corpus": corpus_name,
                            "val_frac": args.val_frac},
                   "model_name": args.model, "size": args.size, "vocab_size": tok.vocab_size,
                   "config": config_dict(model), "gate0": gate0, "world": world}, path)
        return path

    # training loop
    stop = min(args.steps, args.stop_at) if args.stop_at else args.steps
    last_ckpt = resumed_from
    tokens_per_step = args.batch_size * args.seq_len * world
    losses, evals = [], []
    loss_f = val_loss = train_eval = None
    t_last, steps_since = time.perf_counter(), 0
    tok_s = 0.0
    bar = tqdm(total=stop, initial=start, disable=args.no_progress or not master, dynamic_ncols=True,
               desc=args.model)
    write = tqdm.write if not bar.disable else print

    def fail(msg, step):
        bar.close()
        log({"type": "error", "step": step, "error": msg})
        if logf:
            logf.close()
        raise NonFiniteLoss(msg)

    model.train()
    for step in range(start, stop):
        x, y = gdata.get_batch(train_ids, args.batch_size, args.seq_len, args.seed, step, rank, world, device)
        with amp:
            _, loss = ddp(x, y)
        loss_f = all_mean(loss.detach().float(), world).item()
        if not math.isfinite(loss_f):
            fail(f"non-finite loss ({loss_f}) at step {step + 1}: stopping. Nothing was saved from this state; "
                 f"last good checkpoint: {last_ckpt or 'none'}", step + 1)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else 1e30)
        gnorm = gnorm.item()
        if not math.isfinite(gnorm):
            fail(f"non-finite gradient norm ({gnorm}) at step {step + 1}: stopping before the optimizer step; "
                 f"last good checkpoint: {last_ckpt or 'none'}", step + 1)
        done = step + 1
        is_eval = done % args.eval_interval == 0 or done == stop
        stats = model.component_stats() if (is_eval or gate0 is None) else None
        if stats is not None and gate0 is None:
            gate0 = as_float(stats.get("gate_mean"))
            gate0 = gate0 if gate0 is not None else float("nan")  # nan: this variant has no gate
        lrs = {f"lr_{g['component']}": g["lr"] for g in opt.param_groups}
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append((done, loss_f))
        steps_since += 1
        bar.update(1)

        if done % args.log_interval == 0 or is_eval:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            tok_s = tokens_per_step * steps_since / max(now - t_last, 1e-9)
            t_last, steps_since = now, 0
            mem = peak_mem_mb(device)
            bar.set_postfix(loss=f"{loss_f:.4f}", tok_s=f"{tok_s:,.0f}", mem=f"{mem:,.0f}MB")
            log({"type": "train", "step": done, "tokens": done * tokens_per_step, "loss": loss_f, "grad_norm": gnorm,
                 **lrs, "tok_s": tok_s,
                 "peak_mem_mb": mem, "time": time.time()})
        if is_eval:
            train_eval = evaluate(model, train_ids, args, amp, device, rank, world)
            val_loss = evaluate(model, val_ids, args, amp, device, rank, world)
            gm = as_float(stats.get("gate_mean"))
            drift = gm - gate0 if gm is not None and gate0 is not None and math.isfinite(gate0) else None
            rec = {"type": "eval", "step": done, "train_loss": train_eval, "val_loss": val_loss, "tok_s": tok_s,
                   "peak_mem_mb": peak_mem_mb(device),
                   "grad_norm_rwkv": as_float(stats.get("grad_norm_rwkv")),
                   "grad_norm_mamba": as_float(stats.get("grad_norm_mamba")),
                   "grad_ratio": as_float(stats.get("grad_ratio")), "gate_mean": gm, "gate_drift": drift,
                   "state_norm": as_float(stats.get("state_norm"))}
            rec.update({k: as_float(v) for k, v in stats.items()  # whatever else the model reports
                        if k not in rec and (v is None or isinstance(v, (int, float, torch.Tensor)))})
            evals.append(rec)
            log(rec)
            fmt = (lambda v, f=".3g": "n/a" if v is None else format(v, f))
            if master:
                write(f"step {done:>6}/{args.steps}: train {train_eval:.4f}  val {val_loss:.4f}  "
                      f"{tok_s:,.0f} tok/s  peak {rec['peak_mem_mb']:,.0f} MB  |  rwkv/mamba grad {fmt(rec['grad_ratio'])}"
                      f"  gate {fmt(gm)} (drift {fmt(drift, '+.3g')})  state {fmt(rec['state_norm'])}")
            t_last = time.perf_counter()  # throughput counts training time only
        if master and done < args.steps and (done % args.ckpt_interval == 0 or done == stop):  # final: below
            last_ckpt = save(ckpt.step_path(out_dir, args.model, done), done)
    bar.close()

    final = None
    done = max(start, stop)
    if master and done >= args.steps:
        final = save(ckpt.final_path(out_dir, args.model), done)
        write(f"final checkpoint: {final}")
    elif master:
        write(f"stopped at step {done} (--stop-at); continue with --resume: {last_ckpt}")
    if world > 1:
        dist.barrier()

    sample = None
    if master and args.sample_tokens > 0 and done >= args.steps:
        model.eval()
        torch.manual_seed(args.seed)
        prompt = torch.tensor([tok.encode("\n")], dtype=torch.long, device=device)
        with torch.no_grad():
            out = model.generate(prompt, args.sample_tokens, temperature=0.8, top_k=None)
        sample = tok.decode(out[0, prompt.shape[1]:].tolist())
        write("sample:\n" + sample)
    result = {"final_loss": loss_f, "final_train_loss": train_eval, "final_val_loss": val_loss,
              "final_checkpoint": str(final) if final else None, "last_checkpoint": str(last_ckpt) if last_ckpt
              else None, "step": done, "losses": losses, "evals": evals, "log": str(log_path), "sample": sample,
              "ops": ops.impls(), "world": world}
    log({"type": "final", "step": done, "final_loss": loss_f, "val_loss": val_loss,
         "checkpoint": result["final_checkpoint"], "sample": sample})
    if logf:
        logf.close()
    return result


if __name__ == "__main__":
    try:
        main()
    except (NonFiniteLoss, InputError) as e:  # a user's bad input or a diverged run: one line, exit 2
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)
