"""Mean token cross-entropy, loss and dlogits in one pass over the logits (never materialised in fp32).

Math (per row n of logits x [N, V], target t_n; rows with t_n = ignore_index count nowhere)::

    lse_n  = logsumexp(x_n)                    online over V in BV-wide chunks (running max and rescaled sum)
    loss   = Σ_n valid_n (lse_n − x_n[t_n]) / Σ_n valid_n
    g_n    = valid_n (softmax(x_n) − onehot(t_n))        computed in the same program, second sweep over V
    dlogits = g · dloss / Σ_n valid_n                    (backward: one scaled copy)

The forward kernel writes g (in the logits' dtype, only when a gradient is needed) and per-row [loss_n, valid_n]
fp32 stats, and finishes the mean itself: the last program to arrive sums the rows' stats in a fixed order
(``kernels._colsum``: groups of ~√N rows, then the group sums; deterministic, no atomics on data) into
tot = [Σ loss_n, Σ valid_n] and stores loss = tot₀ / tot₁ (IEEE division) — no torch sum or division after it.
The backward is one elementwise kernel, dlogits = g · (dloss / tot₁) in fp32, stored in g's dtype (no fp32 copy
of the logits anywhere).
Memory: g has the logits' size and dtype (the eager path keeps an fp32 copy of the logits and an fp32
log-softmax instead).

Layouts: logits [N, V] with unit column stride and any row stride (a view of [B, T, V] head output is read in
place); targets [N] int64/int32. One program per row (BV = min(next pow2 ≥ V, 4096)). No host syncs, no
autotuning. Out-of-range targets (other than ignore_index) give NaN-free garbage, as in any fused CE: validated
by the reference, not checked on device.

torch.library: ``groundthink::cross_entropy_fwd`` custom op (fake impl) with a registered autograd formula; eager
calls run the same implementation and formula through ``kernels._eager`` (no dispatcher on the way).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._colsum import arrive_tree, counters, finish_columns, tree
from kernels._common import check_tensor, new_empty
from kernels._eager import EagerOp, pick
from reference.cross_entropy import check_args

__all__ = ["cross_entropy"]


@triton.jit
def _ce_fwd_kernel(p_x, p_t, p_g, p_stats, p_tot, p_loss, p_count, N, V, sx, ignore_index, GS, NG,
                   GRAD: tl.constexpr, BV: tl.constexpr, BP: tl.constexpr):
    # p_x: [N, V] rows sx apart; p_t: [N]; p_g: [N, V] contiguous (None unless GRAD); p_stats: [N, 2] fp32
    # (loss_n, valid_n) per row, overwritten by the group sums; p_tot: [2] fp32 out (Σ loss_n, Σ valid_n);
    # p_loss: [] fp32 out (tot₀ / tot₁); p_count: [1 + NG] int32 arrival counters (kernels._colsum, zero between
    # launches); GS, NG: kernels._colsum.tree(N); BP: stats rows summed per step of the finish
    row = tl.program_id(0).to(tl.int64)
    p_row = p_x + row * sx
    o_v = tl.arange(0, BV)
    b_m = tl.full([BV], float("-inf"), tl.float32)
    b_s = tl.zeros([BV], dtype=tl.float32)
    for v0 in range(0, V, BV):              # online logsumexp, lane-wise (one max/sum per lane, merged below)
        b_x = tl.load(p_row + v0 + o_v, mask=v0 + o_v < V, other=float("-inf")).to(tl.float32)
        b_mn = tl.maximum(b_m, b_x)
        b_ref = tl.where(b_mn == float("-inf"), 0., b_mn)     # lanes that saw only masked columns stay 0
        b_s = b_s * tl.exp(b_m - b_ref) + tl.exp(b_x - b_ref)
        b_m = b_mn
    m = tl.max(b_m, axis=0)                                    # finite: V ≥ 1
    lse = m + tl.log(tl.sum(b_s * tl.exp(b_m - m), axis=0))
    t = tl.load(p_t + row).to(tl.int64)
    valid = t != ignore_index
    t_safe = tl.where(valid, t, 0)
    x_t = tl.load(p_row + t_safe).to(tl.float32)
    tl.store(p_stats + row * 2, tl.where(valid, lse - x_t, 0.))
    tl.store(p_stats + row * 2 + 1, tl.where(valid, 1., 0.))
    if GRAD:
        for v0 in range(0, V, BV):
            m_v = v0 + o_v < V
            b_x = tl.load(p_row + v0 + o_v, mask=m_v, other=0.).to(tl.float32)
            b_g = tl.exp(b_x - lse) - tl.where(v0 + o_v == t_safe, 1., 0.)
            b_g = tl.where(valid, b_g, 0.)
            tl.store(p_g + row * V + v0 + o_v, b_g.to(p_g.dtype.element_ty), mask=m_v)
    if arrive_tree(p_stats, 2, p_count, row, N, GS, NG, 0, 2, 1, 0, BP, 2):
        finish_columns(p_stats, GS * 2, NG, p_tot, 0, 2, BP, 2)
        tl.debug_barrier()          # the sums stored above, read back by this program
        tl.store(p_loss, tl.math.div_rn(tl.load(p_tot), tl.load(p_tot + 1)))


@triton.jit
def _ce_bwd_kernel(p_g, p_dloss, p_tot, p_out, n, BLOCK: tl.constexpr):
    # p_g, p_out: [n] (the saved g and dlogits, g's dtype); p_dloss: [] the loss's gradient; p_tot: [2] fp32
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    scale = tl.math.div_rn(tl.load(p_dloss).to(tl.float32), tl.load(p_tot + 1))
    b_g = tl.load(p_g + o, mask=m, other=0.).to(tl.float32)
    tl.store(p_out + o, (b_g * scale).to(p_out.dtype.element_ty), mask=m)


def _row_stride(x) -> int:
    return x.stride(0) if x.shape[0] > 1 else x.shape[1]


def _fwd_impl(logits, targets, ignore_index, need_grad):
    N, V = logits.shape
    dev = logits.device
    g = new_empty((N, V) if need_grad else (0,), logits.dtype, dev)
    if N == 0:                              # no program to finish the mean: 0 / 0 = NaN, as PyTorch
        tot = torch.zeros(2, dtype=torch.float32, device=dev)
        return tot[0] / tot[1], g, tot
    stats = new_empty((N, 2), torch.float32, dev)
    tot = new_empty((2,), torch.float32, dev)
    loss = new_empty((), torch.float32, dev)
    BV = min(triton.next_power_of_2(V), 32 if INTERPRET else 4096)
    GS, NG = tree(N)
    _ce_fwd_kernel[(N,)](logits, targets, g if need_grad else None, stats, tot, loss, counters(dev, 1, NG), N, V,
                         _row_stride(logits), ignore_index, GS, NG, GRAD=need_grad, BV=BV,
                         BP=1 if INTERPRET else 64, num_warps=4 if BV <= 1024 else 8)
    return loss, g, tot


@torch.library.custom_op("groundthink::cross_entropy_fwd", mutates_args=())
def _fwd_op(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, need_grad: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(logits, targets, ignore_index, need_grad)


@_fwd_op.register_fake
def _(logits, targets, ignore_index, need_grad):
    N, V = logits.shape
    return (logits.new_empty((), dtype=torch.float32), logits.new_empty((N, V) if need_grad else (0,)),
            logits.new_empty((2,), dtype=torch.float32))


def _bwd_impl(g, dloss, tot):
    """dlogits = g · (dloss / tot₁) in fp32, stored in g's dtype: one kernel."""
    out = new_empty(g.shape, g.dtype, g.device)
    n = out.numel()
    if n:
        BLOCK = 1024 if INTERPRET else 4096
        _ce_bwd_kernel[(triton.cdiv(n, BLOCK),)](g, dloss.contiguous(), tot, out, n, BLOCK=BLOCK, num_warps=4)
    return out


@torch.library.custom_op("groundthink::cross_entropy_bwd", mutates_args=())
def _bwd_op(g: torch.Tensor, dloss: torch.Tensor, tot: torch.Tensor) -> torch.Tensor:
    return _bwd_impl(g, dloss, tot)


@_bwd_op.register_fake
def _(g, dloss, tot):
    return torch.empty_like(g)


def _setup_context(ctx, inputs, output):
    logits = inputs[0]
    _, g, tot = output
    ctx.save_for_backward(g, tot)
    ctx.shape = logits.shape
    ctx.set_materialize_grads(False)   # g and tot never get a gradient: no zero tensors made for them


def _backward(ctx, dloss, _dg, _dtot):
    if dloss is None:
        return None, None, None, None
    g, tot = ctx.saved_tensors
    if g.numel() == 0 and ctx.shape[0] * ctx.shape[1] != 0:
        raise RuntimeError("cross_entropy: the forward ran without a gradient buffer (need_grad=False)")
    return pick(_bwd_op, _bwd_impl, dloss)(g, dloss, tot).view(ctx.shape), None, None, None


_cross_entropy = EagerOp("CrossEntropy", _fwd_op, _fwd_impl, _setup_context, _backward)


def cross_entropy(logits, targets, ignore_index: int = -100):
    """Mean cross-entropy of logits [N, V] (any float dtype; unit column stride) against targets [N]; fp32 scalar.
    Same value and gradient as ``F.cross_entropy(logits.float(), targets, ignore_index=...)``."""
    check_tensor("logits", logits, ndim=2)
    check_tensor("targets", targets, dtypes=(torch.int64, torch.int32), device=logits.device)
    check_args(logits, targets)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _, _ = _cross_entropy(logits, targets.contiguous(), int(ignore_index), bool(need_grad))
    return loss
