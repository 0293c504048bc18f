"""Projections whose one product is used as several pieces, with backwards that never concatenate the pieces'
gradients (issue 10: at the large model autograd's concatenations cost ~1.1 ms of a 33.6 ms step).

    pieces = linear_pieces(x, weights, sizes)
        x [..., K]; weights: [n_j, K] matrices, the row blocks of one W [N, K] (N = Σ n_j); sizes: the widths of
        the output pieces (Σ = N). Forward: ONE GEMM  P = x [W; 0]ᵀ  [..., N8], N8 = N rounded up to 8 (zero rows:
        P's rows stay 16-byte aligned for cuBLAS and channel-last consumers); the pieces are column views of P.
        [W; 0] is concatenated (and saved) only when it must be: one weight with N a multiple of 8 is used as is.
        Backward, per *group* of pieces (a piece that starts and ends at multiples of 8 and is ≥ 64 wide is a
        group alone; consecutive other pieces and the pad form one group, their gradients concatenated — at the
        models' shapes ≤ 24 columns: Mamba's dt and the row gate):
            dW[group rows] = dP_groupᵀ x          (torch.mm(..., out=) into the group's rows of one dW buffer)
            dx = Σ_groups dP_group W_group        (mm, then addmm with beta = 1 into the same buffer)
        ``tee=True`` also returns x (a view) for the caller's other consumers; their gradient d_t is the first dx
        GEMM's C operand (dx = d_t + dP_0 W_0, addmm) instead of an autograd add of two gradients of x.
        ``wgrad``: the dW GEMM (the registry's ``ops.wgrad``: ``wgrad(a, b, out=)`` = aᵀ b; None: torch.mm).
    outs = stacked_proj(xs, w)
        xs [G, M, K], w [G, K, N] → G products xs_i w_i [M, N] (views of one bmm's [G, M, N]). Backward (with
        ``GROUNDTHINK_STACKED_BMM=0``, or a gradient missing): for each
        i, dxs[i] = dY_i w_iᵀ and dw[i] = xs_iᵀ dY_i, 2·G GEMMs into slices of a [G, M, K] and a [G, K, N]
        buffer (autograd's unbind backward stacks the G gradients into [G, M, N] first: at large 64 MB read and
        written per layer); the dw GEMMs by ``wgrad`` as in linear_pieces. By default, when every gradient is present,
        they are stacked (one copy) and dxs and dw run as ONE bmm each — 2·G GEMMs (+ cuBLAS's split-K reduce of
        each dw: G more) become 1 copy + 2 batched GEMMs. H200 run 20, GF-MH step, --kernels triton, graph: small
        721 → 649 launches, 8.99 → 8.92 ms, 1,929 → 1,761 MB; large 747 → 675, 29.88 → 29.70 ms, 7,236 MB both.
        ``GROUNDTHINK_STACKED_BMM=0``: the per-slice GEMMs (a gradient missing takes that path too).
        The stack's copy itself goes when the consumers write their gradients into the [G, M, N] buffer the
        forward offers (``kernels._slots``: wkv6's dr, dk, dv and norm_gate's dz of the gate pre-activation in the
        time mix): the backward finds them in place and runs the two bmm on it (``GROUNDTHINK_GRAD_SLOTS=0``: the
        copy).
    packed = pack_weights(groups, device_type)
        Every group's [W; 0] (what linear_pieces would concatenate per call) from ONE torch.cat, as row views of one
        buffer, handed to linear_pieces(..., packed=): HybridLM's per-layer in_proj + gate weights, one copy kernel a
        step instead of one a layer (session 16; ``GROUNDTHINK_PACK_WEIGHTS=0``: the per-layer cat).
    s = stack(ts)
        torch.stack(ts) as a VIEW when the ts are equal contiguous tensors evenly spaced in one storage (the
        training step's flat parameters: RWKV's five maa vectors end to end; every layer's Mamba A_log, equal
        gaps apart), with a backward that hands each t its row of the gradient: no copy kernel either way; else
        torch.stack.
    xs = split(x, sizes)
        torch.split(x, sizes, -1) whose backward skips its concatenation when the consumers wrote the pieces'
        gradients side by side into the buffer it offers (``kernels._slots``; the Mamba-2 mixer's x, B, C).
    h = embedding(idx, weight)
        idx [...] int64, weight [V, D] → weight[idx] [..., D] (F.embedding). Backward: dW = onehot(idx)ᵀ dh, ONE
        GEMM [V, N]·[N, D] (N = idx.numel()) after one comparison kernel writing the one-hot [N, V] in dh's dtype.
        torch's CUDA embedding backward sorts the N indices instead (a 64-bit radix sort: 8 passes, then ~10
        segment kernels, a zero fill: ~20 launches a step); ``GROUNDTHINK_EMB_GEMM=0`` restores it. ``wgrad``: the
        GEMM as ``wgrad(onehot, dh, out=)`` (``ops.wgrad``: one launch; None: torch.mm).

Numerics: every GEMM accumulates in fp32 and rounds once into its output's dtype; linear_pieces' dx rounds after
each GEMM of its chain (bf16 under autocast: one rounding per group, as autograd rounds when it adds the
gradients of a tensor used several times); fp64 inputs give fp64 results equal to autograd's (tests/test_model.py).
Pieces whose gradient is None (unused) cost nothing in a group of their own (their dW rows are zeroed) and read
cached zeros in a shared group. CUDA-graph safe: no host syncs, every allocation's size fixed by the shapes.
The embedding gradient's GEMM (torch.mm or ops.wgrad alike) runs in dh's dtype at the process's fp32 matmul precision (train.py on a GPU: TF32,
dh rounded to 10 mantissa bits, sums in fp32; the sort path adds in fp32); the one-hot factor is exact; in
float64 equal to autograd's up to summation order. Indices outside [0, V) are caught by the forward.
"""
from __future__ import annotations

from itertools import accumulate

import os

import torch
import torch.nn.functional as F

from groundthink.device import autocast_dtype
from kernels._slots import offer, release, take

WIDE = 64                     # a piece at least this wide (and 8-aligned) gets GEMMs of its own in the backward
_CONSTANTS: dict = {}         # (kind, shape, dtype, device) -> a constant tensor, made once (never written)
_empty_like = torch.empty_like  # the backwards' gradient buffers (tests make them NaN-filled)


def _constant(kind: str, shape, dtype, device, make) -> torch.Tensor:
    """``make()``, a tensor no one writes, made once per process per (kind, shape, dtype, device) (eagerly; freshly
    when traced by torch.compile, which allows no cache and folds it)."""
    if torch.compiler.is_compiling():
        return make()
    key = (kind, tuple(shape), dtype, torch.device(device))
    if key not in _CONSTANTS:
        with torch.inference_mode(False), torch.no_grad():
            _CONSTANTS[key] = make()
    return _CONSTANTS[key]


def _zeros(shape, like: torch.Tensor) -> torch.Tensor:
    """Zeros of ``shape`` in ``like``'s dtype and device (``_constant``)."""
    return _constant("zeros", shape, like.dtype, like.device,
                     lambda: torch.zeros(shape, dtype=like.dtype, device=like.device))


def _arange(n: int, device) -> torch.Tensor:
    """arange(n) int64 on ``device`` (``_constant``)."""
    return _constant("arange", (n,), torch.int64, device, lambda: torch.arange(n, device=device))


def _groups(sizes: list[int], n8: int) -> list[tuple[int, int, list[int]]]:
    """(start, end, piece indices) of the backward's GEMM groups over the columns [0, n8) (see the module
    docstring); the pad columns [Σ sizes, n8) belong to the last narrow group (index len(sizes): no piece)."""
    out, narrow = [], []
    starts = list(accumulate(sizes, initial=0))
    edges = [(s, a, j) for j, (s, a) in enumerate(zip(sizes, starts))] + [(n8 - starts[-1], starts[-1], len(sizes))]
    for width, a, j in edges:
        if width >= WIDE and a % 8 == 0 and width % 8 == 0:
            if narrow:
                out.append((narrow[0][0], a, [i for _, i in narrow]))
                narrow = []
            out.append((a, a + width, [j]))
        elif width:
            narrow.append((a, j))
    if narrow:
        out.append((narrow[0][0], n8, [i for _, i in narrow]))
    return out


def _dw(wgrad, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out = aᵀ b, a weight gradient: by ``wgrad`` (``ops.wgrad``: one launch, no split-K reduce kernel) or, when
    None, torch.mm (cuBLAS)."""
    if wgrad is None:
        torch.mm(a.t(), b, out=out)
    else:
        wgrad(a, b, out=out)


def _rows8(n: int) -> int:
    """n rounded up to a multiple of 8: the concatenated weight's rows, zero-padded (cuBLAS's aligned kernels)."""
    return -(-n // 8) * 8


class _LinearPieces(torch.autograd.Function):
    """x [M, K], weights [n_j, K] → the pieces of x [W; 0]ᵀ (see ``linear_pieces``)."""

    @staticmethod
    def forward(ctx, x, sizes, tee, wgrad, packed, *weights):
        n = sum(w.shape[0] for w in weights)
        n8 = _rows8(n)
        if packed is not None:      # [W; 0] made by the caller (``pack_weights``: every layer's in one launch)
            w8 = packed
        elif n8 > n:
            w8 = torch.cat([*weights, _zeros((n8 - n, x.shape[1]), x)])
        else:   # no pad: one weight is used (and saved) as is, not copied every forward
            w8 = weights[0] if len(weights) == 1 else torch.cat(weights)
        p = torch.mm(x, w8.t())
        ctx.save_for_backward(x, w8)
        ctx.sizes, ctx.groups = list(sizes), _groups(sizes, n8)
        ctx.rows = list(accumulate((w.shape[0] for w in weights), initial=0))
        ctx.set_materialize_grads(False)
        bounds = list(accumulate(sizes, initial=0))
        ctx.tee, ctx.wgrad = tee, wgrad
        return tuple(p[:, a:b] for a, b in zip(bounds, bounds[1:])) + ((x.view_as(x),) if tee else ())

    @staticmethod
    def backward(ctx, *grads):
        x, w8 = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[5:])
        if ctx.tee:
            *grads, d_tee = grads
        else:
            d_tee = None
        dx = None
        dw = _empty_like(w8) if need_w else None
        for a, b, members in ctx.groups:
            g = _group_grad(grads, members, ctx.sizes, x, b - a)
            if g is None:
                if need_w:
                    dw[a:b].zero_()
                continue
            if need_w:
                _dw(ctx.wgrad, g, x, dw[a:b])
            if need_x and dx is None:      # the tee's gradient enters as the first GEMM's C operand (no add)
                dx = torch.mm(g, w8[a:b]) if d_tee is None else torch.addmm(d_tee, g, w8[a:b])
            elif need_x:
                dx.addmm_(g, w8[a:b])
        if need_x and dx is None:   # every piece's gradient None: reached (a Function downstream returned None)
            dx = torch.zeros_like(x) if d_tee is None else d_tee
        dws = [dw[a:b] if need_w and ctx.needs_input_grad[5 + j] else None
               for j, (a, b) in enumerate(zip(ctx.rows, ctx.rows[1:]))]
        return (dx, None, None, None, None, *dws)


def _group_grad(grads, members, sizes, x, width):
    """The gradient of one backward group's columns as an [M, width] matrix, or None when none of its pieces has
    one: a piece's own gradient for a group of one, else the concatenation (cached zeros for the pad and for
    pieces without a gradient)."""
    if all(j == len(sizes) or grads[j] is None for j in members):
        return None
    if len(members) == 1:
        return grads[members[0]]
    m, pad = x.shape[0], width - sum(sizes[j] for j in members if j < len(sizes))
    parts = []
    for j in members:
        if j == len(sizes):
            parts.append(_zeros((m, pad), x))
        else:
            parts.append(grads[j] if grads[j] is not None else _zeros((m, sizes[j]), x))
    return torch.cat(parts, 1)


def pack_weights(groups: list[list[torch.Tensor]], device_type: str) -> list[torch.Tensor] | None:
    """Every group's [W; 0] (its weights' rows, then zero rows up to a multiple of 8: what ``linear_pieces`` would
    concatenate in each call) made by ONE concatenation, as views [n8_i, K] of one buffer: for callers running
    several ``linear_pieces`` of fixed weights per step (the hybrid's per-layer in_proj + gate projection: one copy
    kernel a step instead of one a layer). Not differentiable (made under no_grad): pass the weights to
    ``linear_pieces`` too, which routes their gradients. None when the weights are not already in the dtype the
    product runs in (autocast's, else their own): their casts would be extra copies (the step without its bf16
    weight copy)."""
    amp = autocast_dtype(device_type)
    ws = [w for g in groups for w in g]
    if not ws or any(w.dtype != (amp or ws[0].dtype) for w in ws) or len({w.shape[1] for w in ws}) != 1:
        return None
    parts, rows = [], []
    for g in groups:
        n = sum(w.shape[0] for w in g)
        n8 = _rows8(n)
        parts += list(g) + ([_zeros((n8 - n, ws[0].shape[1]), ws[0])] if n8 > n else [])
        rows.append(n8)
    with torch.no_grad():
        return list(torch.cat(parts).split(rows))


def linear_pieces(x: torch.Tensor, weights: list[torch.Tensor], sizes: list[int],
                  tee: bool = False, wgrad=None, packed: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The pieces (widths ``sizes``, along the last dimension) of x Wᵀ with W the row concatenation of
    ``weights`` (each [n_j, K]; no bias): ONE GEMM forward, and a backward that reads each piece's gradient where
    it lies (module docstring). Under autocast x and the weights are cast first (as F.linear would: the
    weights' casts stay the only ops reading them, so the training step keeps them in its bf16 copy).
    ``tee``: also return x itself (a view, last) for the caller's other consumers of x; its gradient is added by
    the backward's first dx GEMM (``addmm`` with it as C: one rounding) instead of by an autograd add. When the
    cast would change x's dtype, the returned x is the uncast one (no fold: autograd adds as without ``tee``).
    ``wgrad``: the weight gradients' GEMM ``wgrad(a, b, out=)`` = aᵀ b (``ops.wgrad``); None: torch.mm.
    ``packed``: [W; 0] made beforehand (``pack_weights``; used only when x's dtype matches it), else concatenated here."""
    k = x.shape[-1]
    if any(w.dim() != 2 or w.shape[1] != k for w in weights) or sum(w.shape[0] for w in weights) != sum(sizes):
        raise ValueError(f"linear_pieces: weights must be [n_j, {k}] with Σ n_j = Σ sizes = {sum(sizes)}; got "
                         f"{[tuple(w.shape) for w in weights]}")
    amp = autocast_dtype(x.device.type)
    x0 = x
    if amp is not None:
        x, weights = x.to(amp), [w.to(amp) for w in weights]
    fold = tee and x.dtype == x0.dtype
    lead = x.shape[:-1]
    if packed is not None and (packed.dtype != x.dtype or packed.shape[0] != _rows8(sum(sizes))):
        packed = None
    outs = _LinearPieces.apply(x.reshape(-1, k), list(sizes), fold, wgrad, packed, *weights)
    outs = tuple(p.view(*lead, p.shape[-1]) for p in outs)
    return outs + ((x0,) if tee and not fold else ())


class _Split(torch.autograd.Function):
    """x [..., N] → its column pieces (views; see ``split``)."""

    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes = sizes
        ctx.slot = offer(x)
        ctx.set_materialize_grads(False)
        return tuple(x.split(sizes, -1))

    @staticmethod
    def backward(ctx, *grads):
        g = take(ctx.slot, grads, lambda buf: buf.split(ctx.sizes, -1))
        if g is None:
            ref = next((d for d in grads if d is not None), None)
            if ref is None:
                return None, None
            g = torch.cat([d if d is not None else ref.new_zeros(*ref.shape[:-1], n)
                           for d, n in zip(grads, ctx.sizes)], -1)
        return g, None


def split(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """``torch.split(x, sizes, -1)`` (views) whose backward concatenates the pieces' gradients only when their
    consumers did not already write them side by side: the pieces are offered as gradient slots
    (``kernels._slots``; the lab's Mamba-2 scan writes dx, dB, dC there), so at the mixer's split of the conv
    output the backward's concatenation (one copy kernel a layer) goes."""
    if sum(sizes) != x.shape[-1]:
        raise ValueError(f"split: sizes {list(sizes)} must add up to the last dimension {x.shape[-1]}")
    return _Split.apply(x, list(sizes))


class _StackedProj(torch.autograd.Function):
    """xs [G, M, K], w [G, K, N] → the G products xs_i w_i [M, N] (see ``stacked_proj``)."""

    @staticmethod
    def forward(ctx, xs, w, wgrad):
        ctx.save_for_backward(xs, w)
        ctx.wgrad = wgrad
        ctx.set_materialize_grads(False)
        y = torch.bmm(xs, w)
        ctx.slot = offer(y)                         # the consumers may write the gradients into one [G, M, N]
        return y.unbind(0)

    @staticmethod
    def backward(ctx, *grads):
        xs, w = ctx.saved_tensors
        dxs = _empty_like(xs) if ctx.needs_input_grad[0] else None
        dw = _empty_like(w) if ctx.needs_input_grad[1] else None
        if os.environ.get("GROUNDTHINK_STACKED_BMM", "1") != "0" and all(g is not None for g in grads):
            g = take(ctx.slot, grads, lambda buf: buf.unbind(0))    # written in place by the consumers, or
            g = torch.stack(grads) if g is None else g                # [G, M, N]: one copy; then two batched GEMMs
            if dxs is not None:
                torch.bmm(g, w.transpose(1, 2), out=dxs)
            if dw is not None:
                if ctx.wgrad is None:
                    torch.bmm(xs.transpose(1, 2), g, out=dw)
                else:
                    ctx.wgrad(xs, g, out=dw)
            return dxs, dw, None
        release(ctx.slot)
        for i, g in enumerate(grads):
            if g is None:
                for buf in (dxs, dw):
                    if buf is not None:
                        buf[i].zero_()
            else:
                if dxs is not None:
                    torch.mm(g, w[i].t(), out=dxs[i])
                if dw is not None:
                    _dw(ctx.wgrad, xs[i], g, dw[i])
        return dxs, dw, None


def stacked_proj(xs: torch.Tensor, w: torch.Tensor, wgrad=None) -> tuple[torch.Tensor, ...]:
    """The G products xs[i] @ w[i] (xs [G, M, K], w [G, K, N]) as G tensors [M, N]: one bmm forward; a backward
    of two bmm over the stacked gradients, or per-slice GEMMs (module docstring). Under autocast both are cast first
    (as bmm would). ``wgrad``: the dw GEMMs (``ops.wgrad``; None: torch.mm)."""
    if xs.dim() != 3 or w.dim() != 3 or xs.shape[0] != w.shape[0] or xs.shape[2] != w.shape[1]:
        raise ValueError(f"stacked_proj: xs [G, M, K] and w [G, K, N] expected; got {tuple(xs.shape)} and "
                         f"{tuple(w.shape)}")
    amp = autocast_dtype(xs.device.type)
    if amp is not None:
        xs, w = xs.to(amp), w.to(amp)
    return _StackedProj.apply(xs, w, wgrad)


class _Embedding(torch.autograd.Function):
    """idx [...] int64, weight [V, D] → weight[idx] [..., D]; backward one-hot GEMM (see ``embedding``)."""

    @staticmethod
    def forward(ctx, idx, weight, wgrad):
        ctx.save_for_backward(idx)
        ctx.vocab, ctx.wgrad = weight.shape[0], wgrad
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, dh):
        (idx,) = ctx.saved_tensors
        dh = dh.reshape(-1, dh.shape[-1])
        onehot = dh.new_empty(dh.shape[0], ctx.vocab)                           # [N, V], every element written
        torch.eq(idx.reshape(-1, 1), _arange(ctx.vocab, dh.device), out=onehot)  # one kernel, cast included
        if ctx.wgrad is not None:              # [V, D] in dh's dtype (autocast off inside), one launch
            return None, ctx.wgrad(onehot, dh, out=dh.new_empty(ctx.vocab, dh.shape[1])), None
        if autocast_dtype(dh.device.type) is None:
            return None, torch.mm(onehot.t(), dh), None                         # [V, D]
        with torch.autocast(dh.device.type, enabled=False):                    # in dh's dtype, not autocast's
            return None, torch.mm(onehot.t(), dh), None


def embedding(idx: torch.Tensor, weight: torch.Tensor, wgrad=None) -> torch.Tensor:
    """``F.embedding(idx, weight)`` whose weight gradient is one GEMM of a one-hot matrix (module docstring);
    torch's own backward with ``GROUNDTHINK_EMB_GEMM=0`` or where no weight gradient is needed."""
    if weight.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"embedding: weight [V, D] and integer indices expected; got weight "
                         f"{tuple(weight.shape)}, indices {idx.dtype}")
    if not (weight.requires_grad and torch.is_grad_enabled()) or os.environ.get("GROUNDTHINK_EMB_GEMM") == "0":
        return F.embedding(idx, weight)
    return _Embedding.apply(idx, weight, wgrad)


class _AdjacentStack(torch.autograd.Function):
    """ts evenly spaced in one storage → the [len(ts), *shape] view over them (see ``stack``)."""

    @staticmethod
    def forward(ctx, step, *ts):
        t = ts[0]
        return t.as_strided((len(ts), *t.shape), (step, *t.stride()), t.storage_offset())

    @staticmethod
    def backward(ctx, g):
        return (None, *g.unbind(0))


def _spacing(ts) -> int | None:
    """The elements between consecutive ts when they are equal contiguous tensors of one storage, each starting
    that many elements after the previous one (≥ its size: no overlap; end to end, or with the training step's
    alignment gaps between flat parameters), else None."""
    t0 = ts[0]
    es = t0.element_size()
    diff = ts[1].data_ptr() - t0.data_ptr()
    if t0.device.type == "meta" or diff % es or diff // es < t0.numel() or t0.numel() == 0:
        return None
    base = t0.untyped_storage().data_ptr()
    ok = all(t.is_contiguous() and t.shape == t0.shape and t.dtype == t0.dtype and t.device == t0.device
             and t.untyped_storage().data_ptr() == base and t.data_ptr() == t0.data_ptr() + i * diff
             for i, t in enumerate(ts))
    return diff // es if ok else None


def stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(ts)``, as a view without a copy where the ts lie evenly spaced in one storage (module
    docstring; the training step's flat parameters: RWKV's five maa vectors end to end, the layers' Mamba A_log
    with equal gaps); under torch.compile always torch.stack (dynamo traces no storage pointers)."""
    if len(ts) > 1 and not torch.compiler.is_compiling():
        step = _spacing(ts)
        if step is not None:
            return _AdjacentStack.apply(step, *ts)
    return torch.stack(ts)
