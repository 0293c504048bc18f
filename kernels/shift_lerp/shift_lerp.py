"""RWKV-6 token-shift lerp (the input of the low-rank mix): one Triton kernel forward, one backward.

Math (see reference/shift_lerp.py): x [B, T, D], mu [D] (time_maa_x)::

    y = x + (shift(x) − x) ⊙ mu            shift(x)[:, t] = x[:, t−1]; x_prev[b] (or 0) at t = 0

Backward (dy on y)::

    dx[t] = dy[t] ⊙ (1 − mu) + dy[t+1] ⊙ mu        (the last term only inside a sequence: t + 1 < T)
    dmu   = Σ_rows dy ⊙ (shift(x) − x)

``tee=True`` (the RWKV-6 time mix: x is also read by ddlerp) returns (y, x′) with x′ a view of x; the backward
kernel adds x′'s gradient to dx as it stores it (fp32, one rounding) instead of an autograd add of the two.

Nothing is saved but the inputs (shift(x) − x is recomputed from x). The shifted loads are one-row halos of
the tile: the rest of those rows is in the tile already, so they come from cache.

Layouts: x, y [B, T, D] contiguous, viewed as [N = B·T, D]; mu [D]; x_prev [B, D] (the carried state, not
differentiated). Tiles of [BR rows, BD columns]; the kernels share ``kernels.ddlerp``'s shifted-row helper.

Kernels: forward a 2-D grid of tiles; backward a persistent grid (P programs per column block striding over
row blocks) writing dx; each program sums dmu per element of its tile in fp32 registers (the tile's rows summed
once, after the loop: no cross-warp sum per row block) and writes one fp32 partial row ([P, D]), summed in two
fixed-order levels (groups of ~√P programs, then the group sums) and stored as dmu (``kernels._colsum``: one
launch, no atomics on data, bit-identical run to run), no host syncs, no autotuning (CUDA-graph capturable).
H100, run 10 (scripts/glue_bwd_sweep.py, B16 T1024 D512 bf16, same call): 37.6 µs at the old setting (a
cross-warp row sum per 2048-element block) → 24.1 µs (512-element tiles, 2 warps, 16 programs per SM; 86 % of the
copy bandwidth measured in the run; byte floor 3E: dy, x in, dx out).

Numerics: fp32 arithmetic, one rounding on store, int64 offsets. Dtypes: x fp32/fp16/bf16, mu any float dtype;
y and dx in x's dtype, dmu in mu's.

torch.library: ``groundthink::shift_lerp_fwd`` / ``groundthink::shift_lerp_bwd`` custom ops with fake
implementations and one registered autograd formula; eager calls run the same implementations and formula
through ``kernels._eager`` (no dispatcher on the way).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels._colsum import counters, finish_rows, store_and_finish, tree
from kernels._common import cdiv as _cdiv, check_tensor, new_empty
from kernels._eager import EagerOp, pick, traced
from kernels.ddlerp.ddlerp import _blocks, _cols, _rows, _tile, _x_and_shift, persistent_grid
from reference.shift_lerp import check_args

__all__ = ["shift_lerp"]

# elements per forward / backward tile, persistent backward programs per SM, backward warps (run 10's sweep)
TUNING = {"fwd_tile": 4096, "bwd_tile": 512, "bwd_per_sm": 16, "bwd_warps": 2}


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _shift_lerp_fwd_kernel(p_x, p_prev, p_mu, p_y, N, T, D,
                           HAS_PREV: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    # p_x, p_y: [N, D]; p_prev: [B, D], None unless HAS_PREV; p_mu: [D]; T: rows per sequence (N = B·T);
    # BR × BD: the tile
    o_r, o_c, m_r, m_c = _tile(N, D, BR, BD)
    offs, m, b_x, b_xx = _x_and_shift(p_x, p_prev, o_r, o_c, m_r, m_c, T, D, HAS_PREV)
    b_mu = tl.load(p_mu + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
    tl.store(p_y + offs, (b_x + b_xx * b_mu).to(p_y.dtype.element_ty), mask=m)


@triton.jit
def _shift_lerp_bwd_kernel(p_dy, p_x, p_prev, p_mu, p_dxin, p_dx, p_part, p_dmu, p_count, N, T, D, n_blocks,
                           n_progs, GS, NG, HAS_PREV: tl.constexpr, HAS_DXIN: tl.constexpr, BR: tl.constexpr,
                           BD: tl.constexpr, BP: tl.constexpr):
    # p_dy, p_x, p_dx: [N, D]; p_prev: [B, D]; p_mu, p_dmu: [D]; p_part: [n_progs, D] fp32 partial rows of dmu;
    # p_dxin: [N, D], another gradient of x added to dx (the tee's; ``shift_lerp(..., tee=True)``), None unless
    # HAS_DXIN;
    # p_count: [column blocks, 1 + NG] int32 arrival counters (zero between launches); GS, NG: kernels._colsum.tree;
    # p_prev: None unless HAS_PREV; n_blocks: row blocks of BR rows, strided over by the n_progs programs of a
    # column block (BD columns); BP: partial rows summed per step of the final sums (kernels._colsum.finish_rows)
    pid, o_c, m_c = _cols(D, BD)
    b_mu = tl.load(p_mu + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
    b_acc = tl.zeros([BR, BD], dtype=tl.float32)     # per element: summed over rows once, after the loop
    for blk in range(pid, n_blocks, n_progs):
        o_r, m_r = _rows(blk, N, BR)
        m_next = (m_r & ((o_r % T) + 1 < T))[:, None] & m_c[None, :]
        offs, m, b_x, b_xx = _x_and_shift(p_x, p_prev, o_r, o_c, m_r, m_c, T, D, HAS_PREV)
        b_dy = tl.load(p_dy + offs, mask=m, other=0.).to(tl.float32)
        b_dy_n = tl.load(p_dy + offs + D, mask=m_next, other=0.).to(tl.float32)
        b_acc += b_dy * b_xx
        b_dx = b_dy * (1. - b_mu) + b_dy_n * b_mu
        if HAS_DXIN:
            b_dx += tl.load(p_dxin + offs, mask=m, other=0.).to(tl.float32)
        tl.store(p_dx + offs, b_dx.to(p_dx.dtype.element_ty), mask=m)
    store_and_finish(p_part, tl.sum(b_acc, axis=0), pid, n_progs, D, o_c, m_c, p_count, GS, NG, p_dmu, BP, BD)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
def _fwd_impl(x, mu, x_prev):
    B, T, D = x.shape
    N = B * T
    y = new_empty(x.shape, x.dtype, x.device)
    if N and D:
        BR, BD = _blocks(N, D, TUNING["fwd_tile"])
        _shift_lerp_fwd_kernel[(_cdiv(N, BR), _cdiv(D, BD))](x, x_prev, mu, y, N, T, D,
                                                           HAS_PREV=x_prev is not None, BR=BR, BD=BD, num_warps=4)
    return y


def _bwd_impl(dy, x, mu, x_prev, dx_in=None):
    B, T, D = x.shape
    N = B * T
    dev = x.device
    dx = new_empty(x.shape, x.dtype, dev)
    if N == 0 or D == 0:
        return dx, torch.zeros_like(mu)
    if dx_in is not None and not dx_in.is_contiguous():
        dx_in = dx_in.contiguous()
    BR, BD, n_blocks, n_progs, n_cb = persistent_grid(N, D, TUNING["bwd_tile"], TUNING["bwd_per_sm"], dev)
    part = new_empty((n_progs, D), torch.float32, dev)
    dmu = new_empty(mu.shape, mu.dtype, dev)
    GS, NG = tree(n_progs)
    _shift_lerp_bwd_kernel[(n_progs, n_cb)](dy, x, x_prev, mu, dx_in, dx, part, dmu, counters(dev, n_cb, NG), N, T,
                                            D, n_blocks, n_progs, GS, NG, HAS_PREV=x_prev is not None,
                                            HAS_DXIN=dx_in is not None, BR=BR, BD=BD,
                                            BP=finish_rows(BD, 512 * TUNING["bwd_warps"]),
                                            num_warps=TUNING["bwd_warps"])
    return dx, dmu


# ----------------------------------------------------------------------------------------------------------
# torch.library custom ops + autograd (eager: the same formula through kernels._eager)
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("groundthink::shift_lerp_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, mu: torch.Tensor, x_prev: Optional[torch.Tensor]) -> torch.Tensor:
    return _fwd_impl(x, mu, x_prev)


@_fwd_op.register_fake
def _(x, mu, x_prev):
    return torch.empty_like(x)


@torch.library.custom_op("groundthink::shift_lerp_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, x_prev: Optional[torch.Tensor],
            dx_in: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _bwd_impl(dy, x, mu, x_prev, dx_in)


@_bwd_op.register_fake
def _(dy, x, mu, x_prev, dx_in=None):
    return torch.empty_like(x), torch.empty_like(mu)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    x, mu, x_prev = ctx.saved_tensors
    dx, dmu = pick(_bwd_op, _bwd_impl, dy)(dy.contiguous(), x, mu, x_prev)
    return dx, dmu, None


_shift_lerp = EagerOp("ShiftLerp", _fwd_op, _fwd_impl, _setup_context, _backward)


class _ShiftLerpTee(torch.autograd.Function):
    """x, mu, x_prev → (y, x′): x′ a view of x for the caller's other consumers of x (the RWKV-6 ddlerp); the
    backward's kernel adds their gradient dx′ into dx (one rounding; no autograd add of two gradients of x)."""

    @staticmethod
    def forward(ctx, x, mu, x_prev):
        ctx.save_for_backward(x, mu, x_prev)
        ctx.set_materialize_grads(False)
        y = (_fwd_op if traced(x) else _fwd_impl)(x, mu, x_prev)
        return y, x.view_as(x)

    @staticmethod
    def backward(ctx, dy, dx_tee):
        x, mu, x_prev = ctx.saved_tensors
        if dy is None:      # only the tee was used: its gradient is x's, mu gets none
            return dx_tee, None, None
        dx, dmu = pick(_bwd_op, _bwd_impl, dy)(dy.contiguous(), x, mu, x_prev, dx_tee)
        return dx, dmu, None


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def shift_lerp(x, mu, x_prev=None, tee: bool = False):
    """y = x + (shift(x) − x) ⊙ mu; x [B, T, D], mu [D], x_prev [B, D] or None. See the module docstring.
    ``tee``: return (y, x′), x′ a view of x for other consumers, their gradient added by the backward kernel."""
    check_tensor("x", x, ndim=3)
    check_tensor("mu", mu, device=x.device)
    if x_prev is not None:
        check_tensor("x_prev", x_prev, device=x.device)
    check_args(x, mu, x_prev)
    c = lambda t: t if t is None or t.is_contiguous() else t.contiguous()  # noqa: E731
    if tee:
        return _ShiftLerpTee.apply(c(x), c(mu), c(x_prev))
    return _shift_lerp(c(x), c(mu), c(x_prev))
