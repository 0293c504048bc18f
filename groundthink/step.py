"""The training step: forward, backward, gradient all-reduce, clipping and AdamW as one function on static
buffers, run eagerly (CPU, debugging) or replayed as ONE CUDA graph. Both paths run the same ``_body``.

    step = TrainStep(model, opt, batch_size=B, seq_len=T, device=dev, grad_clip=1.0, world=W)
    step.capture()                    # GPU: warm-up on a side stream (autotuning, cuBLAS/NCCL handles), capture
    row = step(x, y, lrs)             # copies the batch into the static buffers, sets the lrs, runs; returns
                                      # the stats row (groundthink.monitor.STATS) as a device tensor

Flat parameters and gradients (``FlatParams``): every trainable parameter is a view of one fp32 *master* buffer
and its ``.grad`` a view of one fp32 gradient buffer ``flat`` of the same layout, followed by a few slots for
the values the ranks average with the gradient (loss, probes). The layout is (kind, component)-major::

    master / flat:  [ low: rwkv | mamba | other ][ fp32: rwkv | mamba | other ][ tail (flat only) ]

Every parameter starts at a multiple of ``ALIGN`` = 64 elements, the gaps hold zeros: the bf16 views of ``low``
that the matmuls read as weights are 128-byte aligned (packed, a 1-element bias such as GF's gate bias shifted
every later weight off 16 bytes, and cuBLAS ran those GEMMs on its slow CUTLASS align1/align2 kernels:
``GemmWatch`` finds such operands).

*low* holds the parameters that bf16 autocast would cast before every use (matmul weights: found once by running
the forward under autocast and watching which parameters only ever enter ``aten._to_copy(dtype=bf16)``);
their bf16 copy ``low`` is refreshed by ONE copy kernel at the start of each step, so the forward runs no
per-weight casts. The forward sees the parameters through ``_Compute`` (``torch.func.functional_call``):
low parameters as bf16 views of ``low``, the others as themselves. Its backward writes the gradients straight
into ``flat`` (one multi-tensor copy per kind, widening bf16 to fp32 as it copies: no per-parameter accumulation
kernel, no concatenation, no zeroing; the gaps are never written). The values are
the ones autocast produces: the same bf16 rounding of the same fp32 weights, the same bf16 weight gradients
widened to fp32.

Around it (all exercised on CPU except ``torch.cuda.graph`` itself):

* learning rates are 0-d device tensors (``param_group["lr"]``), set in place before each step from the
  schedule (one non-blocking copy from pinned memory): AdamW(fused=True, capturable=True) reads them on device.
* norms: one ``torch._foreach_norm`` over the six segments gives per-component and global norms; clipping
  multiplies ``flat`` by min(1, max_norm / (norm + 1e-6)) on device — or, with the lab's ``adamw`` op
  (``FlatAdamW``: chosen by the registry / gate), the update applies that factor as it reads the gradients.
* the update: torch's fused capturable AdamW (``grouped_adamw_step``), or the ``adamw`` op's ONE launch over the
  flat buffers (moments and step counts kept flat, ``opt.state`` holding views of them: ``FlatAdamW``).
* the guarded update: ``opt.found_inf`` (a device flag, read by either update) is 1 when the global
  grad norm or the loss is non-finite, so such a step leaves parameters and optimizer state (step counts
  included) unchanged. The warm-up iterations before capture run with the flag forced to 1: they change nothing.
* no host sync anywhere in ``_body``: the loss, grad norms and probes go into ``self.row`` (read later by
  ``monitor.MetricsRing``).

Multi-GPU: no DDP wrapper. After backward ``flat`` is summed with one ``dist.all_reduce`` (NCCL inside the
graph on GPU, gloo on CPU) and divided by the world size; every rank then computes the same norm, the same
guard and the same update. The warm-up iterations before capture run the all-reduce too, so NCCL's
communicator exists before the graph records it.

Invariant: the parameters stay views of ``master`` (``model.to``, ``load_state_dict(assign=True)`` or a new
``p.data`` would break it): the step checks this before every eager run and before capture. Nothing outside the
step may keep an autograd graph of the parameters alive (their gradient accumulators would belong to the stream
that made them, and the captured backward's final sync would wait on uncaptured work: run 20's auto failure).

A failed capture (train.py then runs eagerly) is said in one line by ``capture_failure`` — the error raised inside
the body first (it reaches the caller only as the capture's end failing) — and resets the CUDA generators, which
the aborted capture left in capture mode. Debugging knobs: ``GROUNDTHINK_CAPTURE_PROBE=1`` (``CaptureProbe``:
the first aten op or Triton launch after which the capture was invalid), ``GROUNDTHINK_CAPTURE_ERROR_MODE``
(``torch.cuda.graph``'s capture_error_mode: "thread_local" tells another thread's unsafe call from the step's).
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from groundthink import monitor
from groundthink.device import warm_on_side_stream
from groundthink.spec import get as get_spec
from reference.adamw import CHUNK

COMPONENTS = ("rwkv", "mamba", "other")
KINDS = ("low", "fp32")
N_TAIL = 1 + len(monitor.PROBES)          # loss and probes, averaged over ranks with the gradient
ALIGN = 64                                # every parameter starts at a multiple of 64 elements in the buffers
assert ALIGN % CHUNK == 0                 # so every adamw chunk (reference/adamw.py) belongs to one parameter


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# ----------------------------------------------------------------------------------------------- which weights

class _CastWatch(TorchDispatchMode):
    """Records, per parameter, whether every op that reads it (or a view of it) is a cast to ``dtype``
    (autocast's weight cast). Views of a parameter are followed, not counted as uses."""

    def __init__(self, params, dtype):
        super().__init__()
        self.ids = {id(p): i for i, p in enumerate(params)}
        self.only_cast = [None] * len(params)       # None: unused; True: only cast to dtype; False: other use
        self.dtype = dtype
        self.keep = []                              # the views followed (their ids must stay unique)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        hits = [self.ids[id(a)] for a in torch.utils._pytree.tree_leaves((args, kwargs)) if id(a) in self.ids]
        if not hits:
            return out
        rets = func._schema.returns
        if rets and all(r.alias_info is not None and not r.alias_info.is_write for r in rets):
            for t in torch.utils._pytree.tree_leaves(out):
                self.ids[id(t)] = hits[0]
                self.keep.append(t)
            return out
        cast = func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == self.dtype and set(kwargs) <= {
            "dtype", "layout", "device", "pin_memory", "non_blocking", "memory_format"}
        for i in hits:
            self.only_cast[i] = cast and self.only_cast[i] is not False
        return out


def autocast_weights(model, params, run_forward, device_type: str, dtype) -> list[bool]:
    """For each of ``params``: True when one forward (``run_forward()``, under autocast to ``dtype``) reads it
    only through casts to ``dtype`` — the weights whose low-precision copy can be made once per step."""
    watch = _CastWatch(params, dtype)
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype, cache_enabled=False), watch:
        run_forward()
    return [bool(c) for c in watch.only_cast]


class GemmWatch(TorchDispatchMode):
    """Records the operands of every matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``) as cuBLAS would
    see them, and which of them are *misaligned*: cuBLAS picks its fast kernels (sm90: ``nvjet``, TMA) only when
    every matrix has a 16-byte aligned base pointer and a 16-byte multiple leading dimension; otherwise it falls
    back to CUTLASS ``align1``/``align2`` kernels (run 6: 7.2 ms of a 43.4 ms step at large). A matrix of the
    product [M, K] @ [K, N] → [M, N] counts as misaligned when its pointer % 16 ≠ 0, its leading dimension
    (the stride that is not 1) × element size % 16 ≠ 0, a batch stride is not 16-byte aligned, or when M, N
    or K is below 8 (a vector-shaped GEMM: ``[M, D] @ [D, 1]`` or the K = 1 outer product of its backward run on
    align1 kernels too). ``opaque(opset)`` stops recording inside the registry's ops (their references'
    products are not the model's). ``records``: (op, [(shape, strides, pointer % 16)] per operand and the output, problems)."""

    OPS = {"mm": (0, 1), "addmm": (1, 2), "bmm": (0, 1), "baddbmm": (1, 2)}

    def __init__(self):
        super().__init__()
        self.records: list[tuple[str, list, list[str]]] = []
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in self.OPS and not self.paused:
            ia, ib = self.OPS[name]
            mats = [args[ia], args[ib], out]
            self.records.append((name, [(tuple(t.shape), t.stride(), t.data_ptr() % 16) for t in mats],
                                 self.problems(*mats)))
        return out

    @staticmethod
    def problems(a, b, out) -> list[str]:
        bad = []
        if min(a.shape[-2], b.shape[-1], a.shape[-1]) < 8:
            bad.append(f"vector-shaped (M {a.shape[-2]}, N {b.shape[-1]}, K {a.shape[-1]})")
        for what, t in (("A", a), ("B", b), ("C", out)):
            esize = t.element_size()
            *batch, sr, sc = t.stride()
            ld = sr if sc == 1 else sc
            if t.data_ptr() % 16:
                bad.append(f"{what} pointer % 16 = {t.data_ptr() % 16}")
            if (ld * esize) % 16 and min(t.shape[-2:]) > 1:
                bad.append(f"{what} leading dimension {ld}")
            if batch and (batch[0] * esize) % 16:
                bad.append(f"{what} batch stride {batch[0]}")
        return bad

    def opaque(self, opset):
        """Record nothing inside the ops of ``opset`` (a ``groundthink.registry.OpSet``)."""
        for c in opset.choices.values():
            c.fn = self._paused(c.fn)

    def _paused(self, fn):
        """``fn`` with nothing recorded in its forward or its backward (an autograd Function around it)."""
        watch, out_spec = self, [None]

        class Opaque(torch.autograd.Function):
            @staticmethod
            def forward(ctx, spec, n, *flat):
                leaves = [t.detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
                          for t in flat]
                args = torch.utils._pytree.tree_unflatten(leaves, spec)
                watch.paused += 1
                try:
                    with torch.enable_grad():
                        outs, out_spec[0] = torch.utils._pytree.tree_flatten(fn(*args[:n], **args[n]))
                finally:
                    watch.paused -= 1
                ctx.graph = (outs, leaves)
                return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in outs)

            @staticmethod
            def backward(ctx, *grads):
                outs, leaves = ctx.graph
                pairs = [(o, g) for o, g in zip(outs, grads)
                         if isinstance(o, torch.Tensor) and o.requires_grad and g is not None]
                need = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
                watch.paused += 1
                try:
                    got = iter(torch.autograd.grad([o for o, _ in pairs], need, [g for _, g in pairs],
                                                   allow_unused=True) if pairs else [None] * len(need))
                finally:
                    watch.paused -= 1
                return (None, None, *(next(got) if isinstance(t, torch.Tensor) and t.requires_grad else None
                                      for t in leaves))

        def call(*a, **k):
            flat, spec = torch.utils._pytree.tree_flatten((*a, k))
            outs = Opaque.apply(spec, len(a), *flat)
            return torch.utils._pytree.tree_unflatten(list(outs), out_spec[0])
        return call

    def misaligned(self) -> list[str]:
        """One line per misaligned product."""
        return [f"{op} {' @ '.join(str(s) for s, _, _ in mats[:2])} -> {mats[2][0]}: {', '.join(bad)}"
                for op, mats, bad in self.records if bad]


# ----------------------------------------------------------------------------------------------- flat buffers

class FlatParams:
    """The master / gradient / low-precision buffers (see the module docstring)."""

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]], device: torch.device,
                 low: set[int] = frozenset(), low_dtype: torch.dtype | None = None):
        comp_of = {}
        for comp in COMPONENTS:
            for p in groups.get(comp, []):
                if p.requires_grad:
                    if p.dtype != torch.float32:
                        raise ValueError(f"the training step keeps fp32 parameters; got {p.dtype} shape "
                                         f"{tuple(p.shape)}")
                    comp_of.setdefault(id(p), (comp, p))
        self.params: list[torch.nn.Parameter] = []
        self.spans: list[tuple[int, int]] = []        # (start, end) per (kind, component), KINDS × COMPONENTS
        self.views = []                               # (start, end, shape) of each parameter
        offset = 0
        for kind in KINDS:
            for comp in COMPONENTS:
                start = offset
                for c, p in comp_of.values():
                    if c == comp and (id(p) in low) == (kind == "low"):
                        self.params.append(p)
                        self.views.append((offset, offset + p.numel(), p.shape))
                        offset = _aligned(offset + p.numel())
                self.spans.append((start, offset))
        self.n, self.n_low = offset, self.spans[len(COMPONENTS) - 1][1]
        self.k_low = sum(1 for p in self.params if id(p) in low)
        # the gaps after each parameter up to the next aligned offset hold zeros in every buffer: nothing writes them
        self.master = torch.zeros(self.n, dtype=torch.float32, device=device)
        self.flat = torch.zeros(self.n + N_TAIL, dtype=torch.float32, device=device)
        self.low = torch.zeros(self.n_low, dtype=low_dtype or torch.bfloat16, device=device)
        with torch.no_grad():
            for p, (a, b, _) in zip(self.params, self.views):
                m = self.master[a:b].view_as(p)
                m.copy_(p)
                p.data = m
                p.grad = self.flat[a:b].view_as(p)
        self.grad_flat = [self.flat[a:b] for a, b, _ in self.views]     # 1-D: what _Compute's backward writes
        self.tail = self.flat[self.n:]
        self.whole = [self.flat[:self.n]]                               # the gradients, gaps included
        self.zero = torch.zeros((), device=device)       # a 0-d fp32 zero made once (never written)
        self.one = torch.ones((), device=device)        # a 0-d fp32 one made once (never written)

    def check(self):
        """Raise if a parameter no longer lives in ``master`` (see the module docstring)."""
        for p, (a, _, _) in zip(self.params, self.views):
            if p.data_ptr() != self.master.data_ptr() + 4 * a or p.grad is None or \
                    p.grad.data_ptr() != self.flat.data_ptr() + 4 * a:
                raise RuntimeError("the training step's flat parameter buffer was replaced (model.to() or a new "
                                   ".data/.grad after TrainStep was built); build the TrainStep again")

    def refresh_low(self):
        """The bf16 copy of the low-precision weights from the masters: one kernel."""
        if self.n_low:
            self.low.copy_(self.master[:self.n_low])

    def compute_params(self) -> tuple[torch.Tensor, ...]:
        """What the forward uses for each parameter (``_Compute``): differentiable, gradients into ``flat``."""
        return _Compute.apply(self, self.low, *self.params)

    def zero_(self):
        self.flat.zero_()

    def all_reduce_mean_(self, world: int):
        if world > 1:
            dist.all_reduce(self.flat)
            self.flat.div_(world)

    def norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-component norms [3] in COMPONENTS order, global norm), fp32 device tensors; no sync."""
        segs = [self.flat[a:b] for a, b in self.spans]
        got = iter(torch._foreach_norm([s for s in segs if s.numel()]))
        each = torch.stack([next(got) if s.numel() else self.zero for s in segs])
        # the component norms over the kinds: one 2-norm kernel along dim 0 (was square, sum, sqrt: three)
        per = torch.linalg.vector_norm(each.view(len(KINDS), len(COMPONENTS)), dim=0)
        return per, torch.linalg.vector_norm(per)

    def clip_(self, total: torch.Tensor, max_norm: float):
        """Scale every gradient by min(1, max_norm / (total + 1e-6)) (clip_grad_norm_'s rule), on device. A NaN
        norm scales by 1 (``fmin``), never by NaN: the gaps between parameters stay zero (nothing else writes them)
        and the step that follows a skipped one is clean. The multiply is a multi-tensor one: ``Tensor.mul_`` by
        a 0-d device tensor runs the strided (broadcast) elementwise kernel, not the vectorized one (run 8, large:
        ``elementwise_kernel<128, 2, …MulFunctor<float>>``, 256 µs a step for this and four tiny multiplies)."""
        if max_norm > 0:
            torch._foreach_mul_(self.whole, torch.fmin(max_norm / (total + 1e-6), self.one))


class _Compute(torch.autograd.Function):
    """Parameters → the tensors the forward computes with (bf16 views of ``low`` for the first ``k_low``, the
    parameters themselves after); backward writes every gradient into ``flat`` and returns none."""

    @staticmethod
    def forward(ctx, fp: FlatParams, low, *params):
        ctx.fp = fp
        outs = [low[a:b].view(shape) for a, b, shape in fp.views[:fp.k_low]]
        return tuple(outs + [p.view_as(p) for p in params[fp.k_low:]])

    @staticmethod
    def backward(ctx, *grads):
        fp = ctx.fp
        _write_grads(fp.grad_flat[:fp.k_low], grads[:fp.k_low])
        _write_grads(fp.grad_flat[fp.k_low:], grads[fp.k_low:])
        return (None, None) + (None,) * len(grads)


def _write_grads(dst: list[torch.Tensor], grads) -> None:
    """``dst[i] = grads[i]`` (1-D fp32 slices of ``flat``; bf16 or fp32 gradients, one dtype per call): one
    multi-tensor copy that widens as it copies (``_foreach_copy_``: on a GPU one kernel per ~110 tensors, reading
    each gradient once; it needs equal sizes and strides, hence flat gradients: views of contiguous ones, a copy
    of one autograd hands over non-contiguous, none in the models here)."""
    if grads:
        torch._foreach_copy_(list(dst), [g.reshape(-1) for g in grads])


def grouped_adamw_step(opt) -> bool:
    """``opt.step()`` of a fused AdamW (or Adam) with fewer launches, when it can: the step counters of EVERY group
    incremented by one multi-tensor add (and decremented by ``opt.found_inf`` by one multi-tensor subtract) instead
    of one add and one subtract per group (torch's ``_fused_adam``: six groups, twelve launch sites), then one
    ``_fused_adamw_`` per group as torch calls it. The same kernels on the same tensors with the same arguments,
    in a different order only across independent groups: results bit-identical to ``opt.step()``
    (tests/test_step.py). Returns False (nothing done; call ``opt.step()``) unless every group is fused without
    amsgrad / maximize / differentiable, every parameter with a gradient has its state (the first step creates it
    through ``opt.step()``), and all parameters, gradients and step counters share one device and dtype."""
    if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        return False
    groups, every = [], []
    for g in opt.param_groups:
        if not g.get("fused") or g.get("amsgrad") or g.get("maximize") or g.get("differentiable"):
            return False
        ps = [p for p in g["params"] if p.grad is not None]
        for p in ps:
            st = opt.state.get(p)
            if not st or "step" not in st:
                return False
        groups.append((g, ps))
        every += ps
    if not every:
        return False
    dev, dt = every[0].device, every[0].dtype
    steps = [opt.state[p]["step"] for p in every]
    if any(p.device != dev or p.dtype != dt or p.grad.dtype != dt or p.grad.is_sparse or p.is_complex()
           for p in every) or any(s.device != dev for s in steps):
        return False
    found_inf, grad_scale = getattr(opt, "found_inf", None), getattr(opt, "grad_scale", None)
    for t in (found_inf, grad_scale):
        if t is not None and t.device != dev:
            return False
    for g, _ in groups:
        if isinstance(g["lr"], torch.Tensor) and g["lr"].device.type != "cpu" and g["lr"].device != dev:
            return False
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        i = 0
        for g, ps in groups:
            n = len(ps)
            if n:
                decoupled = g.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW))
                fn = torch._fused_adamw_ if decoupled else torch._fused_adam_
                b1, b2 = (float(b) if isinstance(b, torch.Tensor) else b for b in g["betas"])
                st = [opt.state[p] for p in ps]
                fn(ps, [p.grad for p in ps], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [],
                   steps[i:i + n], amsgrad=False, lr=g["lr"], beta1=b1, beta2=b2, weight_decay=g["weight_decay"],
                   eps=g["eps"], maximize=False, grad_scale=grad_scale, found_inf=found_inf)
            i += n
        if found_inf is not None:
            torch._foreach_sub_(steps, [found_inf] * len(steps))
    return True


def adamw_groups(groups: dict[str, list[torch.nn.Parameter]]) -> list[tuple[str, bool, list[torch.nn.Parameter]]]:
    """The optimizer's param groups (train.py's ``make_optimizer`` makes them from this): (component, with weight
    decay, its trainable parameters) — per component, those with weight decay (dim ≥ 2), then those without;
    empty groups left out."""
    out = []
    for comp, params in groups.items():
        for decay in (True, False):
            ps = [p for p in params if p.requires_grad and (p.dim() >= 2) == decay]
            if ps:
                out.append((comp, decay, ps))
    return out


def adamw_shape(groups: dict[str, list[torch.nn.Parameter]]) -> tuple[int, int, int]:
    """(N, P, G) of the ``adamw`` op's call in the training step: the flat buffers' elements (every parameter
    padded to ``ALIGN``), parameters, param groups."""
    gs = adamw_groups(groups)
    ps = {id(p): p for _, _, g in gs for p in g}
    return sum(_aligned(p.numel()) for p in ps.values()), len(ps), len(gs)


class FlatAdamW:
    """The optimizer's state laid out like the flat buffers, for the one-launch ``adamw`` op (kernels/adamw): the
    moments ``m``, ``v`` [N] fp32 in ``master``'s layout, every parameter's step count in ``steps`` [P], the tables
    the kernel reads (each 64-element chunk's parameter, each parameter's group, each group's weight decay; the
    lrs are the step's ``lrs`` [G]). ``opt.state[p]`` holds views of them ("step", "exp_avg", "exp_avg_sq": the
    keys and shapes of torch's AdamW), so checkpoints and ``opt.state_dict()`` are unchanged and torch's own
    ``opt.step()`` would update the same values. ``adopt()`` copies state that ``opt`` holds elsewhere (a loaded
    checkpoint) into the buffers; parameters without state start at zero moments and step 0, as torch's lazy
    initialisation. ``build`` returns None (the step keeps torch's optimizer) when the optimizer is not an
    AdamW / Adam that this layout covers: amsgrad, maximize, differentiable, per-group betas or eps, or a
    parameter the buffers do not hold."""

    def __init__(self, fp: FlatParams, opt, lrs: torch.Tensor, fn):
        self.fp, self.opt, self.lrs, self.fn = fp, opt, lrs, fn
        dev = fp.master.device
        g0 = opt.param_groups[0]
        self.betas = tuple(float(b) for b in g0["betas"])
        self.eps = float(g0["eps"])
        index = {id(p): i for i, p in enumerate(fp.params)}
        group = [-1] * len(fp.params)
        for j, g in enumerate(opt.param_groups):
            for p in g["params"]:
                group[index[id(p)]] = j
        owner = [-1] * (-(-fp.n // CHUNK))       # every parameter starts at a multiple of ALIGN: one owner a chunk
        for i, (a, b, _) in enumerate(fp.views):
            for c in range(a // CHUNK, -(-b // CHUNK)):
                owner[c] = i
        if min(group, default=0) < 0 or min(owner, default=0) < 0:
            raise RuntimeError("FlatAdamW: a parameter without a group or a chunk without a parameter")
        self.chunk_param = torch.tensor(owner, dtype=torch.int32, device=dev)
        self.group = torch.tensor(group, dtype=torch.int32, device=dev)
        self.wd = torch.tensor([float(g["weight_decay"]) for g in opt.param_groups], dtype=torch.float32,
                               device=dev)
        self.m = torch.zeros(fp.n, dtype=torch.float32, device=dev)
        self.v = torch.zeros_like(self.m)
        self.steps = torch.zeros(len(fp.params), dtype=torch.float32, device=dev)
        self.adopt()

    @classmethod
    def build(cls, fp: FlatParams, opt, lrs: torch.Tensor, fn):
        if not isinstance(opt, torch.optim.AdamW) or not opt.param_groups:
            return None
        g0 = opt.param_groups[0]
        for g in opt.param_groups:
            if g.get("amsgrad") or g.get("maximize") or g.get("differentiable") or \
                    tuple(g["betas"]) != tuple(g0["betas"]) or g["eps"] != g0["eps"] or \
                    not g.get("decoupled_weight_decay", True):
                return None
        held = {id(p) for p in fp.params}
        in_opt = [p for g in opt.param_groups for p in g["params"]]
        if len(in_opt) != len(held) or {id(p) for p in in_opt} != held:
            return None
        return cls(fp, opt, lrs, fn)

    def _views(self, i: int, p) -> dict:
        a, b, _ = self.fp.views[i]
        return {"step": self.steps[i], "exp_avg": self.m[a:b].view_as(p), "exp_avg_sq": self.v[a:b].view_as(p)}

    def _held(self, i: int, p) -> bool:
        """Whether ``opt.state[p]`` already is this buffer's views."""
        st = self.opt.state.get(p)
        return bool(st) and st.get("exp_avg") is not None and \
            st["exp_avg"].data_ptr() == self.m.data_ptr() + 4 * self.fp.views[i][0]

    def adopt(self):
        """Point ``opt.state`` at the buffers, copying any state held elsewhere (a loaded checkpoint) into them."""
        with torch.no_grad():
            for i, p in enumerate(self.fp.params):
                if self._held(i, p):
                    continue
                st, mine = self.opt.state.get(p), self._views(i, p)
                for k in ("exp_avg", "exp_avg_sq"):
                    if st and k in st:
                        if tuple(st[k].shape) != tuple(p.shape):
                            raise RuntimeError(f"optimizer state {k} of shape {tuple(st[k].shape)} for a parameter "
                                               f"of shape {tuple(p.shape)}")
                        mine[k].copy_(st[k])
                    else:
                        mine[k].zero_()
                mine["step"].copy_(st["step"] if st and "step" in st else torch.zeros(()))
                self.opt.state[p] = mine

    def check(self):
        """Re-adopt when the optimizer's state was replaced (``opt.load_state_dict`` after the step was built)."""
        if not all(self._held(i, p) for i, p in enumerate(self.fp.params)):
            self.adopt()

    def step(self, total: torch.Tensor, found_inf: torch.Tensor, max_norm: float):
        """Steps += 1 − found_inf, then the one-launch update (clip by ``total`` inside; nothing when found_inf)."""
        self.steps.add_(self.fp.one - found_inf)
        b1, b2 = self.betas
        self.fn(self.fp.master[:self.fp.n], self.fp.flat[:self.fp.n], self.m, self.v, self.steps, self.chunk_param,
                self.group, self.lrs, self.wd, total, found_inf, max_norm=max_norm, beta1=b1, beta2=b2, eps=self.eps)


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
    """One optimizer step over static batch buffers (see the module docstring). ``flat_weights=False`` keeps
    autocast's per-use weight casts (the earlier path; same values)."""

    def __init__(self, model, opt, *, batch_size: int, seq_len: int, device: torch.device, grad_clip: float = 1.0,
                 world: int = 1, amp_dtype: torch.dtype | None = None, probes: bool = True,
                 flat_weights: bool = True):
        self.model, self.opt, self.device = model, opt, torch.device(device)
        self.grad_clip, self.world, self.probes = grad_clip, world, probes
        self.amp_dtype = amp_dtype if amp_dtype is not None else (
            torch.bfloat16 if self.device.type == "cuda" else None)
        self.groups = group_params(model)
        self.x = torch.zeros(batch_size, seq_len, dtype=torch.long, device=self.device)
        self.y = torch.zeros_like(self.x)
        low = set()
        if self.amp_dtype is not None:
            ps = [p for g in self.groups.values() for p in g if p.requires_grad]
            low = {id(p) for p, c in zip(ps, autocast_weights(model, ps, self._call_model, self.device.type,
                                                              self.amp_dtype)) if c}
        self.bucket = FlatParams(self.groups, self.device, low, self.amp_dtype)
        names = {id(p): n for n, p in model.named_parameters()}
        self.names = [names[id(p)] for p in self.bucket.params]
        self.flat_weights = flat_weights
        self.lrs = lr_tensors(opt, self.device)
        self.adamw = self._lab_adamw()
        self.skip = torch.zeros((), device=self.device)
        opt.found_inf = torch.zeros((), device=self.device)    # read by either update (fused AdamW: GradScaler's hook)
        self.row = torch.zeros(len(monitor.STATS), device=self.device)
        self.has: dict[str, bool] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def _lab_adamw(self) -> FlatAdamW | None:
        """The lab's ``adamw`` op over the flat buffers when the model's ops chose a lab kernel for it (registry
        / gate); None: torch's fused AdamW (the op's reference and its peer compute the same update)."""
        ops = getattr(self.model, "ops", None)
        impl = ops.impls().get("adamw") if hasattr(ops, "impls") else None
        if impl is None or get_spec("adamw").impl(impl).role != "lab":
            return None
        return FlatAdamW.build(self.bucket, self.opt, self.lrs, ops.adamw)

    def _check(self):
        self.bucket.check()
        if self.adamw is not None:
            self.adamw.check()

    # ------------------------------------------------------------------ the step itself
    def _amp(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _call_model(self, params: dict | None = None):
        kw = {"with_stats": True} if self.probes else {}
        if params is None:
            return self.model(self.x, self.y, **kw)
        return torch.func.functional_call(self.model, params, (self.x, self.y), kw)

    def _forward(self):
        """(loss, probes dict) of the model on the static batch."""
        b = self.bucket
        params = None
        if self.flat_weights:
            b.refresh_low()
            params = dict(zip(self.names, b.compute_params()))
        with self._amp():
            out = self._call_model(params)
        return out[1], (out[2] if self.probes else {})

    def _body(self):
        """Forward, backward (gradients written into the flat buffer), then ``_update``. No host sync."""
        if not self.flat_weights:
            self.bucket.zero_()
        loss, probes = self._forward()
        loss.backward(self.bucket.one)  # d loss / d loss made once: backward() would fill a fresh one every step
        self._update(loss, probes)

    def _update(self, loss, probes):
        """All-reduce, norms, guard, clip, AdamW, stats row."""
        b = self.bucket
        if self.has is None:
            self.has = monitor.present(probes, self.groups)
        torch.stack([loss.detach().float()] + [b.zero if probes.get(k) is None else probes[k].detach().float()
                                               for k in monitor.PROBES], out=b.tail)    # in place: no fill, no copy
        b.all_reduce_mean_(self.world)
        per, total = b.norms()
        loss_avg = b.tail[0]
        # (total + loss) · 0 is NaN exactly when either is ±inf or NaN (a finite fp32 norm is < 2e19 — its
        # squares would overflow first — so the sum of two finite values cannot overflow): 3 kernels, not 2 × 5
        # found_inf = 1 where that is NaN, else skip (0, or 1 in the warm-up before capture): one where kernel
        # writing the flag (was isnan | (skip > 0) and a copy: four)
        torch.where(torch.isnan((total + loss_avg) * 0), self.bucket.one, self.skip, out=self.opt.found_inf)
        if self.adamw is not None:               # the lab's one launch: clip and skip inside
            self.adamw.step(total, self.opt.found_inf, self.grad_clip)
        else:
            b.clip_(total, self.grad_clip)
            if not grouped_adamw_step(self.opt):     # the first step (state created) or an optimizer it cannot take
                self.opt.step()
        monitor.pack(loss_avg, total, per, dict(zip(monitor.PROBES, b.tail[1:])), out=self.row)

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
            self._check()
            self._body()
        return self.row

    def capture(self, warmup: int = 3):
        """Warm up on a side stream with the update disabled (Triton autotuning, cuBLAS workspaces, NCCL's
        communicator), then capture ``_body`` as one CUDA graph. The static batch must hold a real batch
        (``load_batch``)."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graph capture needs a CUDA device")
        self._check()
        self.skip.fill_(1.0)
        try:
            warm_on_side_stream(self._body, warmup)
            torch.cuda.synchronize()
            if self.world > 1:
                dist.barrier()
            graph = torch.cuda.CUDAGraph()
            probe = CaptureProbe() if os.environ.get("GROUNDTHINK_CAPTURE_PROBE", "0") == "1" else None
            try:
                with torch.cuda.graph(graph, capture_error_mode=capture_error_mode()):
                    with probe or contextlib.nullcontext():
                        self._body()
            except Exception as e:
                if probe is not None:
                    e.add_note(probe.finding())
                reset_generators_after_failed_capture()
                raise
        finally:
            self.skip.fill_(0.0)   # a failed capture leaves an eager step that updates
        self.graph = graph
        return self

    def release(self):
        """Drop the captured graph (later calls run eagerly). Call before ``dist.destroy_process_group``: a live
        graph holding NCCL work makes the communicator's destruction hang (pytorch issue 115388)."""
        if self.graph is not None:
            self.graph.reset()
            self.graph = None


# ----------------------------------------------------------------------------------------------- failed captures

def _lab_frames(frames) -> list:
    """The frames of the lab's own code (not torch's, not an installed package's)."""
    return [f for f in frames if "site-packages" not in f.filename and "/torch/" not in f.filename]


def _where(f) -> str:
    """``file:line function`` of a frame, the file relative to its package (no machine path)."""
    parts = Path(f.filename).parts
    for root in ("site-packages", "groundthink", "kernels", "fused", "reference"):
        if root in parts:
            parts = parts[parts.index(root) + (root == "site-packages"):]
            break
    else:
        parts = parts[-2:]
    return f"{'/'.join(parts)}:{f.lineno} {f.name}"


def capture_failure(e: BaseException) -> str:
    """One line on a failed capture: the error's type and first line, where it surfaced (the innermost frame) and
    the innermost frame of the lab's own code. An error raised inside the captured body reaches the caller as the
    capture's end failing ("operation failed due to a previous error during capture") with the body's error as its
    context: that one is said first."""
    import traceback

    def one(err: BaseException) -> str:
        frames = traceback.extract_tb(err.__traceback__)
        lab = _lab_frames(frames)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        at = f" (at {_where(frames[-1])}" if frames else ""
        if lab and lab[-1] is not frames[-1]:
            at += f"; from {_where(lab[-1])}"
        return f"{type(err).__name__}: {first[:200]}{at + ')' if at else ''}"

    inner = e.__cause__ or e.__context__
    said = f"{one(inner)}; then {one(e)}" if inner is not None else one(e)
    notes = "; ".join(getattr(e, "__notes__", ()))
    return said + (f"; {notes}" if notes else "")


CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")


def capture_error_mode() -> str:
    """``torch.cuda.graph``'s capture_error_mode: ``GROUNDTHINK_CAPTURE_ERROR_MODE`` (a debugging knob; default
    "global": an unsafe CUDA call from any thread during the capture invalidates it). "thread_local" tells a
    capture broken by another thread from one broken by the step itself."""
    mode = os.environ.get("GROUNDTHINK_CAPTURE_ERROR_MODE", "global")
    if mode not in CAPTURE_ERROR_MODES:
        raise ValueError(f"GROUNDTHINK_CAPTURE_ERROR_MODE={mode!r}; accepted: {', '.join(CAPTURE_ERROR_MODES)}")
    return mode


def reset_generators_after_failed_capture() -> None:
    """A capture that fails at its end leaves the CUDA generators in capture mode (torch's capture epilogue never
    ran): the next random op outside a graph raises "Offset increment outside graph capture encountered
    unexpectedly" (run 20: ``train.py --sample-tokens`` after the eager fallback). A clone of each generator's
    state (same seed and offset, not capturing) takes its place."""
    for gen in torch.cuda.default_generators:
        with contextlib.suppress(Exception):      # a device never initialised has nothing to reset
            gen.graphsafe_set_state(gen.clone_state())


@functools.lru_cache(maxsize=1)
def _libcuda():
    import ctypes
    return ctypes.CDLL("libcuda.so.1")


def _stream_capture_status(stream) -> int | None:
    """cuStreamIsCapturing of ``stream``: 0 not capturing, 1 active, 2 invalidated; None if it cannot be asked."""
    import ctypes
    try:
        status = ctypes.c_int(-1)
        if _libcuda().cuStreamIsCapturing(ctypes.c_void_p(stream.cuda_stream), ctypes.byref(status)) != 0:
            return None
        return status.value
    except OSError:
        return None


class CaptureProbe(TorchDispatchMode):
    """``GROUNDTHINK_CAPTURE_PROBE=1``: during the step's capture, asks the driver after every aten op (forward and
    backward) and every Triton launch whether the capture is still valid, and remembers the first call after which
    it was not, the calls just before it and where in the lab's code it was made; a Triton launch that raised
    (even where a caller swallowed the error) is remembered too. A capture invalidated by a call whose error was
    swallowed (cudaErrorStreamCaptureInvalidated surfaces only at the capture's end) is located this way: the
    culprit ran between the last good call and the first bad one. Host cost: one driver call per op, during the
    capture only."""

    def __init__(self, context: int = 6):
        super().__init__()
        self.calls = 0
        self.recent: list[str] = []
        self.context = context
        self.first: str | None = None
        self.raised: list[str] = []
        self._unpatch = None

    def check(self, what: str) -> None:
        if self.first is not None:
            return
        self.calls += 1
        if _stream_capture_status(torch.cuda.current_stream()) == 2:
            import traceback
            where = " <- ".join(_where(f) for f in _lab_frames(traceback.extract_stack()[:-2])[::-1][:4])
            self.first = (f"capture probe: invalid after call {self.calls} ({what}, called at {where or '?'}); "
                          f"the calls before it: {', '.join(self.recent)}")
        else:
            self.recent = (self.recent + [what])[-self.context:]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.check(str(func))
        return out

    def __enter__(self):
        try:
            from triton.runtime.jit import JITFunction
        except ImportError:
            return super().__enter__()
        original, probe = JITFunction.run, self

        def run(fn, *args, **kwargs):
            name = f"triton {getattr(fn, '__name__', '?')}"
            try:
                out = original(fn, *args, **kwargs)
            except Exception as e:
                probe.raised.append(f"{name} raised {type(e).__name__}: {str(e).strip()[:120]}")
                raise
            probe.check(name)
            return out

        JITFunction.run = run
        self._unpatch = lambda: setattr(JITFunction, "run", original)
        return super().__enter__()

    def __exit__(self, *exc):
        if self._unpatch is not None:
            self._unpatch()
        if exc[1] is not None:
            self.raised.append(f"the body raised {type(exc[1]).__name__}: {str(exc[1]).strip()[:200]}")
        self.check("end of the step's body")
        return super().__exit__(*exc)

    def finding(self) -> str:
        said = self.first or (f"capture probe: still valid after all {self.calls} calls (the last: "
                              f"{', '.join(self.recent)})")
        if self.raised:
            said += f"; raised during the capture: {'; '.join(self.raised[:3])}"
        return said
