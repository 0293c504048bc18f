"""The training step: forward, backward, gradient all-reduce, clipping and AdamW as one function on static
buffers, run eagerly (CPU, debugging) or replayed as ONE CUDA graph. Both paths run the same ``_body``.

    step = TrainStep(model, opt, batch_size=B, seq_len=T, device=dev, grad_clip=1.0, world=W)
    step.capture()                    # GPU: warm-up on a side stream (autotuning, cuBLAS/NCCL handles), capture
    row = step(x, y, lrs)             # copies the batch into the static buffers, sets the lrs, runs; returns
                                      # the stats row (groundthink.monitor.STATS) as a device tensor

Pieces (all exercised on CPU except ``torch.cuda.graph`` itself):

* ``GradBucket``: every trainable parameter's ``.grad`` is a view of one flat fp32 buffer, ordered
  rwkv | mamba | other, followed by a few slots for the values the ranks average with the gradient (loss,
  probes). Zeroing, the all-reduce, per-component norms and clipping are one kernel (or one foreach launch)
  each; the grads stay allocated (never set to None), so their addresses are the graph's.
* learning rates are 0-d device tensors (``param_group["lr"]``), set in place before each step from the
  schedule (one non-blocking copy from pinned memory): AdamW(fused=True, capturable=True) reads them on device.
* the guarded update: ``opt.found_inf`` (a device flag, read by the fused AdamW kernel) is 1 when the global
  grad norm or the loss is non-finite, so such a step leaves parameters and optimizer state (step counts
  included) unchanged. The warm-up iterations before capture run with the flag forced to 1: they change nothing.
* no host sync anywhere in ``_body``: the loss, grad norms and probes go into ``self.row`` (read later by
  ``monitor.MetricsRing``); clipping uses the norm tensor.

Multi-GPU: no DDP wrapper. After backward the bucket is summed with one ``dist.all_reduce`` (NCCL inside the
graph on GPU, gloo on CPU) and divided by the world size; every rank then computes the same norm, the same
guard and the same update.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from groundthink import monitor

COMPONENTS = ("rwkv", "mamba", "other")
N_TAIL = 1 + len(monitor.PROBES)          # loss and probes, averaged over ranks with the gradient


class GradBucket:
    """Flat gradient storage: ``p.grad`` of each parameter is a view into ``self.flat``."""

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]], device: torch.device):
        self.segments: dict[str, tuple[int, int]] = {}
        self.params: list[torch.nn.Parameter] = []
        offset = 0
        for comp in COMPONENTS:
            ps = [p for p in groups.get(comp, []) if p.requires_grad]
            start = offset
            for p in ps:
                if p.dtype != torch.float32 or not p.is_contiguous():
                    raise ValueError(f"the training step keeps fp32 contiguous parameters; got {p.dtype} "
                                     f"shape {tuple(p.shape)} contiguous={p.is_contiguous()}")
                offset += p.numel()
            self.params += ps
            self.segments[comp] = (start, offset)
        self.n = offset
        self.flat = torch.zeros(offset + N_TAIL, dtype=torch.float32, device=device)
        pos = 0
        for p in self.params:
            p.grad = self.flat[pos:pos + p.numel()].view_as(p)
            pos += p.numel()
        self.tail = self.flat[offset:]

    def zero_(self):
        self.flat.zero_()

    def all_reduce_mean_(self, world: int):
        if world > 1:
            dist.all_reduce(self.flat)
            self.flat.div_(world)

    def norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-component norms [3] in COMPONENTS order, global norm), fp32 device tensors; no sync."""
        segs = [self.flat[a:b] for a, b in self.segments.values()]
        nonempty = [s for s in segs if s.numel() > 0]
        got = iter(torch._foreach_norm(nonempty)) if nonempty else iter(())
        zero = self.flat.new_zeros(())
        per = torch.stack([next(got) if s.numel() > 0 else zero for s in segs])
        return per, torch.linalg.vector_norm(per)

    def clip_(self, total: torch.Tensor, max_norm: float):
        """Scale every gradient by min(1, max_norm / (total + 1e-6)) (clip_grad_norm_'s rule), on device."""
        if max_norm > 0:
            self.flat[:self.n].mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))


def group_params(model) -> dict[str, list[torch.nn.Parameter]]:
    """The model's components (``param_groups()`` when it has one), every trainable parameter once."""
    groups = {k: list(v) for k, v in model.param_groups().items()} if hasattr(model, "param_groups") else {}
    seen = {id(p) for ps in groups.values() for p in ps}
    groups.setdefault("other", [])
    groups["other"] += [p for p in model.parameters() if id(p) not in seen]
    return groups


def lr_tensors(opt, device: torch.device) -> torch.Tensor:
    """Make each param group's lr a 0-d view of one fp32 device tensor [G] (returned); values kept."""
    lrs = torch.tensor([float(g["lr"]) for g in opt.param_groups], dtype=torch.float32, device=device)
    for i, g in enumerate(opt.param_groups):
        g["lr"] = lrs[i]
    return lrs


class TrainStep:
    """One optimizer step over static batch buffers (see the module docstring)."""

    def __init__(self, model, opt, *, batch_size: int, seq_len: int, device: torch.device, grad_clip: float = 1.0,
                 world: int = 1, amp_dtype: torch.dtype | None = None, probes: bool = True):
        self.model, self.opt, self.device = model, opt, torch.device(device)
        self.grad_clip, self.world, self.probes = grad_clip, world, probes
        self.amp_dtype = amp_dtype if amp_dtype is not None else (
            torch.bfloat16 if self.device.type == "cuda" else None)
        self.groups = group_params(model)
        self.bucket = GradBucket(self.groups, self.device)
        self.x = torch.zeros(batch_size, seq_len, dtype=torch.long, device=self.device)
        self.y = torch.zeros_like(self.x)
        self.lrs = lr_tensors(opt, self.device)
        self.skip = torch.zeros((), device=self.device)
        opt.found_inf = torch.zeros((), device=self.device)    # read by the fused AdamW kernel (GradScaler's hook)
        self.row = torch.zeros(len(monitor.STATS), device=self.device)
        self.has: dict[str, bool] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    # ------------------------------------------------------------------ the step itself
    def _amp(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _forward(self):
        """(loss, probes dict) of the model on the static batch."""
        if self.probes:
            _, loss, probes = self.model(self.x, self.y, with_stats=True)
        else:
            _, loss = self.model(self.x, self.y)
            probes = {}
        return loss, probes

    def _body(self):
        """Zero grads, forward, backward, all-reduce, norms, guard, clip, AdamW, stats row. No host sync."""
        b = self.bucket
        b.zero_()
        with self._amp():
            loss, probes = self._forward()
        loss.backward()
        if self.has is None:
            self.has = monitor.present(probes, self.groups)
        zero = loss.new_zeros((), dtype=torch.float32)
        b.tail.copy_(torch.stack([loss.detach().float()] + [zero if probes.get(k) is None else
                                                            probes[k].detach().float() for k in monitor.PROBES]))
        b.all_reduce_mean_(self.world)
        per, total = b.norms()
        loss_avg = b.tail[0]
        bad = ~torch.isfinite(total) | ~torch.isfinite(loss_avg) | (self.skip > 0)
        self.opt.found_inf.copy_(bad.float())
        b.clip_(total, self.grad_clip)
        self.opt.step()
        self.row.copy_(monitor.pack(loss_avg, total, per, dict(zip(monitor.PROBES, b.tail[1:]))))

    # ------------------------------------------------------------------ driving it
    def load_batch(self, x: torch.Tensor, y: torch.Tensor):
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)

    def set_lrs(self, values):
        host = torch.tensor([float(v) for v in values], dtype=torch.float32,
                            pin_memory=self.device.type == "cuda")
        self.lrs.copy_(host, non_blocking=self.device.type == "cuda")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lrs=None) -> torch.Tensor:
        self.load_batch(x, y)
        if lrs is not None:
            self.set_lrs(lrs)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        return self.row

    def capture(self, warmup: int = 3):
        """Warm up on a side stream with the update disabled (Triton autotuning, cuBLAS workspaces, NCCL),
        then capture ``_body`` as one CUDA graph. The static batch must hold a real batch (``load_batch``)."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graph capture needs a CUDA device")
        self.skip.fill_(1.0)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._body()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
        finally:
            self.skip.fill_(0.0)   # a failed capture leaves an eager step that updates
        self.graph = graph
        return self
