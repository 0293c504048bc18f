"""What the training step reports about itself, without stopping the GPU to ask.

Component balance (device tensors, written by the step on every step):

    STATS = loss, grad_norm, grad_norm_rwkv, grad_norm_mamba, gate_mean, rms_rwkv, rms_mamba

    grad_norm_*   gradient norms of the parameter groups (``model.param_groups()``), before clipping, after the
                  all-reduce (the global gradient); grad_norm is the norm over every parameter
    gate_mean     mean of the RWKV weight g of the blend (h = x + g·a + (1 − g)·b) over the layers (WS: w_a)
    rms_*         RMS of each branch's output, mean over the layers: "state health"

``unpack`` turns one row into the eval record's keys (absent probes → None, plus grad_ratio = rwkv / mamba
and state_norm = the mean of the branch RMS). ``MetricsRing`` keeps one row per step on the device and hands
them to the host through a non-blocking copy into pinned memory and an event (no host sync in the step).

Where the time goes (host side, GPU only): ``profile_steps`` runs a few steps under torch.profiler and
returns kernel launches per step, GPU-busy time per step and a per-kernel GPU-time breakdown.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import tempfile
import time
from collections import deque

import torch

STATS = ("loss", "grad_norm", "grad_norm_rwkv", "grad_norm_mamba", "gate_mean", "rms_rwkv", "rms_mamba")
PROBES = ("gate_mean", "rms_rwkv", "rms_mamba")     # what the model's forward reports (with_stats=True)


# ----------------------------------------------------------------------------------------------- rows

def pack(loss, grad_norm, norms3, probes: dict, out=None) -> torch.Tensor:
    """One row [len(STATS)] fp32 on the loss's device; absent probes are 0 (``present`` tells them apart).
    ``out``: the row written in place (one launch, no copy after)."""
    zero = loss.new_zeros((), dtype=torch.float32) if any(probes.get(k) is None for k in PROBES) else None
    vals = [loss.detach().float(), grad_norm.float(), norms3[0].float(), norms3[1].float()]
    vals += [zero if probes.get(k) is None else probes[k].detach().float() for k in PROBES]
    return torch.stack(vals, out=out)


def present(probes: dict, groups: dict) -> dict[str, bool]:
    """Which STATS this model reports: every probe the forward returned (a branch without parameters has grad
    norm 0 and no ratio)."""
    out = {k: True for k in STATS}
    out.update({k: probes.get(k) is not None for k in PROBES})
    return out


def unpack(row, has: dict[str, bool]) -> dict:
    """Host row (floats in STATS order) → the eval record's component keys."""
    d = {k: (float(v) if has.get(k, True) else None) for k, v in zip(STATS, row)}
    gr, gm = d["grad_norm_rwkv"], d["grad_norm_mamba"]
    d["grad_ratio"] = gr / gm if gr and gm and gr > 0 and gm > 0 else None
    both = [v for v in (d["rms_rwkv"], d["rms_mamba"]) if v is not None]
    d["state_norm"] = sum(both) / len(both) if both else None
    return d


def rms(t) -> torch.Tensor | None:
    """RMS of a branch output as a 0-d fp32 tensor (one reduction kernel); None passes through."""
    if t is None:
        return None
    return torch.linalg.vector_norm(t.detach(), dtype=torch.float32) / math.sqrt(max(t.numel(), 1))


def branch_rms(*branches: list) -> list[torch.Tensor | None]:
    """For each list of per-layer branch outputs: the mean over its layers of their RMS (0-d fp32; None for a list
    of Nones). All lists in ONE multi-tensor norm (two kernels on a GPU, where a norm per tensor is ~2 launches),
    then, when the lists are equally long and the outputs equally large, one stack, mean and divide for all."""
    lists = [[t.detach() for t in b if t is not None] for b in branches]
    flat = [t for ts in lists for t in ts]
    norms = iter(torch._foreach_norm(flat, 2, dtype=torch.float32)) if flat else iter(())
    full = [ts for ts in lists if ts]
    if full and len({len(ts) for ts in full}) == 1 and len({t.numel() for t in flat}) == 1:
        # the usual case (every branch list as long, every output as large): one stack, one mean, one divide
        rows = iter((torch.stack(list(norms)).view(len(full), -1).mean(1) / math.sqrt(max(flat[0].numel(), 1)))
                    .unbind(0))
        return [next(rows) if ts else None for ts in lists]
    out = []
    for ts in lists:
        got = [next(norms) for _ in ts]
        if not ts:
            out.append(None)
        elif len({t.numel() for t in ts}) == 1:
            out.append(torch.stack(got).mean() / math.sqrt(max(ts[0].numel(), 1)))
        else:
            out.append(torch.stack([v / math.sqrt(max(t.numel(), 1)) for v, t in zip(got, ts)]).mean())
    return out


def gate_mean(gates: list) -> torch.Tensor | None:
    """Mean RWKV weight over the layers from per-layer ``(kind, tensor)`` gate probes (``fused.variants``): kind
    "logit" → mean of sigmoid(tensor) (of sigmoid(tensor + bias) for ``("logit", tensor, bias)``, the logits
    of a projection whose bias the fused op adds), "weight" → mean of the tensor; one stack for all layers. None
    entries are skipped (None when there are none). Layers of one model have equal gate shapes: the mean of the per-layer
    means is the mean of everything."""
    gs = [g for g in gates if g is not None]
    if not gs:
        return None
    t = torch.stack([g[1] for g in gs])
    if len(gs[0]) > 2:      # ("logit", logits without their bias, bias): one stack of the biases, one add (fp32)
        bias = torch.stack([g[2] for g in gs]).float()
        t = t + bias.view(len(gs), *[1] * (t.dim() - bias.dim()), *bias.shape[1:])
    else:
        t = t.float()
    return (torch.sigmoid(t) if gs[0][0] == "logit" else t).mean()


# ----------------------------------------------------------------------------------------------- ring

class MetricsRing:
    """Per-step rows on the device, read by the host in batches without a sync.

    ``push(row, step)`` copies the step's row into a device buffer (one copy kernel); ``snapshot()`` starts a
    non-blocking copy of the rows so far into pinned memory and records an event (with the GPU time since the
    last snapshot or ``restart_clock``); ``collect(block)`` returns the windows whose copy is done (all of them
    with ``block=True``) as ``(steps, rows, seconds)``. On CPU everything is synchronous.
    """

    def __init__(self, width: int, capacity: int, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.buf = torch.zeros(max(1, capacity), width, device=device)
        self.steps: list[int] = []
        self.pending: deque = deque()
        self.restart_clock()

    def _mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def restart_clock(self):
        """The next window's time starts now (call after evals, checkpoints, profiling)."""
        self.start = self._mark()

    def push(self, row: torch.Tensor, step: int):
        if len(self.steps) == self.buf.shape[0]:
            self.snapshot()
        self.buf[len(self.steps)].copy_(row)
        self.steps.append(step)

    def snapshot(self):
        n = len(self.steps)
        if n == 0:
            return
        host = torch.empty((n, self.buf.shape[1]), pin_memory=self.cuda)
        host.copy_(self.buf[:n], non_blocking=self.cuda)
        end = self._mark()
        self.pending.append((self.steps, host, self.start, end))
        self.steps, self.start = [], end

    def collect(self, block: bool = False) -> list[tuple[list[int], list[list[float]], float]]:
        out = []
        while self.pending:
            steps, host, start, end = self.pending[0]
            if self.cuda:
                if not block and not end.query():
                    break
                end.synchronize()
                secs = start.elapsed_time(end) / 1e3
            else:
                secs = end - start
            self.pending.popleft()
            out.append((steps, host.tolist(), secs))
        return out


# ----------------------------------------------------------------------------------------------- profile

def merged_busy_us(intervals) -> float:
    """Length of the union of (start, end) intervals (µs): time the GPU ran at least one kernel or copy."""
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return busy + (cur_e - cur_s if cur_e is not None else 0.0)


def summarize_trace(events: list[dict], steps: int, top: int = 25) -> dict:
    """Chrome-trace events of ``steps`` steps → launches and busy µs per step and a per-kernel breakdown."""
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    kernels = [e for e in gpu if e["cat"] == "kernel"]
    by_name: dict[str, list] = {}
    for e in gpu:
        name = e["name"] if e["cat"] == "kernel" else e["cat"]
        rec = by_name.setdefault(name[:160], [0, 0.0])
        rec[0] += 1
        rec[1] += float(e.get("dur", 0.0))
    total = sum(v[1] for v in by_name.values()) or 1.0
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    breakdown = [{"name": n, "calls_per_step": c / steps, "us_per_step": us / steps, "pct": 100 * us / total}
                 for n, (c, us) in rows[:top]]
    rest = rows[top:]
    if rest:
        breakdown.append({"name": f"({len(rest)} other kernels)", "calls_per_step": sum(v[0] for _, v in rest) / steps,
                          "us_per_step": sum(v[1] for _, v in rest) / steps,
                          "pct": 100 * sum(v[1] for _, v in rest) / total})
    busy = merged_busy_us((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in gpu)
    return {"launches_per_step": len(kernels) / steps, "copies_per_step": (len(gpu) - len(kernels)) / steps,
            "gpu_busy_ms_per_step": busy / steps / 1e3, "kernel_ms_per_step": total / steps / 1e3,
            "breakdown": breakdown}


# kernel name → the op it belongs to: the ops' own kernel names and patterns (``OpSpec.kernels``, labelled by
# ``OpSpec.kernels_group``: exact names first, then patterns in the specs' order), then substrings of cuBLAS's and
# PyTorch's kernels; anything else is "other" (tests/test_step.py checks that wkv6's spec names every Triton kernel
# of kernels/wkv6)
OTHER_KERNELS = (
    ("matmul (cuBLAS)", ("nvjet", "gemm", "cutlass", "splitKreduce", "cublas")),
    ("AdamW + norms", ("FusedOptimizer", "LpNorm", "multi_tensor_apply")),
    ("reductions", ("reduce_kernel",)),
    ("copies, casts, cat", ("copy", "Cat", "gpu_memcpy", "gpu_memset")),
    ("embedding", ("embedding", "radix_sort", "RadixSort")),
    ("elementwise", ("elementwise_kernel", "Functor")),
)


@functools.cache
def _op_kernels() -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """({exact kernel name: label}, ((pattern, label), ...)) from every op's spec."""
    from groundthink.spec import specs
    exact, patterns = {}, []
    for op, s in specs().items():
        label = s.kernels_group or op
        for k in s.kernels:
            if any(c in k for c in "*?["):
                patterns.append((k, label))
            else:
                exact[k] = label
    return exact, tuple(patterns)


def op_of(kernel: str) -> str:
    """The op (its ``kernels_group``) or other group a profiled GPU kernel's time counts to."""
    exact, patterns = _op_kernels()
    if kernel in exact:
        return exact[kernel]
    for pattern, label in patterns:
        if fnmatch.fnmatchcase(kernel, pattern):
            return label
    for group, keys in OTHER_KERNELS:
        if any(k in kernel for k in keys):
            return group
    return "other"


def by_op(breakdown: list[dict]) -> list[tuple[str, float, float]]:
    """The per-kernel breakdown grouped by op: (op, µs per step, % of GPU time), largest first (the summed
    "(N other kernels)" row counts as "other")."""
    acc: dict[str, list[float]] = {}
    for r in breakdown:
        a = acc.setdefault(op_of(r["name"]) if not r["name"].startswith("(") else "other", [0.0, 0.0])
        a[0] += r["us_per_step"]
        a[1] += r["pct"]
    return sorted(((op, us, pct) for op, (us, pct) in acc.items()), key=lambda t: -t[1])


def summarize_profiler(prof, steps: int, top: int = 25) -> dict:
    """A finished torch.profiler session of ``steps`` steps → ``summarize_trace`` of its kernels and copies (the
    ``top`` kernels by GPU time, the rest summed in one row)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    return summarize_trace(events, steps, top)


def profile_steps(run_step, steps: int) -> dict:
    """Run ``run_step()`` ``steps`` times under torch.profiler (CUDA activity only) and summarize the kernels.
    The caller divides ``gpu_busy_ms_per_step`` by an unprofiled ms/step for the GPU-busy fraction."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run_step()
        torch.cuda.synchronize()
    return summarize_profiler(prof, steps)
