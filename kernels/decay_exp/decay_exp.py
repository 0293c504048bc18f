"""RWKV-6 log-decay lw = −exp(base + d): one Triton kernel forward, one backward.

Math (see reference/decay_exp.py): base [D] (time_decay), d [N, D] (the low-rank decay term)::

    lw = −exp(base + d)                   computed in fp32, stored once in the output dtype
    dd = dlw ⊙ (−exp(base + d));  dbase = Σ_rows dd

The exponential is recomputed in the backward from the inputs (no fp32 activation is saved).

Layouts: d, lw [..., D] contiguous, viewed as [N, D]; base [D]. Forward: a 2-D grid of [BR, BD] tiles. Backward:
a persistent grid (P programs per column block striding over row blocks) writing dd; each program sums dbase per
element of its tile in fp32 registers (the tile's rows are summed once, after the loop: no cross-warp sum per row
block) and writes one fp32 partial row ([P, D]), summed inside the kernel in two fixed-order levels (groups of ~√P
programs, then the group sums) and stored as dbase (``kernels._colsum``). No atomics on data, no host syncs, no
autotuning. H100, run 10 (scripts/glue_bwd_sweep.py, N16384 D512 bf16, same call): 30.3 µs at the old setting (a
cross-warp row sum per 2048-element block) → 23.5 µs (512-element tiles, 2 warps, 16 programs per SM; 88 % of the
copy bandwidth measured in the run; byte floor 3E: dy, d in, dd out).

Dtypes: d fp32/fp16/bf16, base any float dtype, lw in the requested dtype (default d's); dd in d's dtype, dbase in
base's.

Custom ops ``groundthink::decay_exp_fwd`` / ``_bwd`` (fake implementations, one registered autograd formula),
run eagerly without the dispatcher through ``kernels._eager``, as every glue op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._colsum import counters, finish_rows, store_and_finish, tree
from kernels._common import cdiv as _cdiv, check_tensor, new_empty
from kernels._eager import EagerOp, pick
from kernels.ddlerp.ddlerp import _blocks, _cols, _rows, _tile, persistent_grid
from reference.decay_exp import check_args

__all__ = ["decay_exp"]

# elements per forward / backward tile, persistent backward programs per SM, backward warps (run 10's sweep)
TUNING = {"fwd_tile": 4096, "bwd_tile": 512, "bwd_per_sm": 16, "bwd_warps": 2}


@triton.jit
def _decay_exp_fwd_kernel(p_base, p_d, p_lw, N, D, BR: tl.constexpr, BD: tl.constexpr):
    # p_base: [D]; p_d, p_lw: [N, D]
    o_r, o_c, m_r, m_c = _tile(N, D, BR, BD)
    m = m_r[:, None] & m_c[None, :]
    offs = o_r[:, None] * D + o_c[None, :]
    b_w = tl.load(p_d + offs, mask=m, other=0.).to(tl.float32) + \
        tl.load(p_base + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
    tl.store(p_lw + offs, (-tl.exp(b_w)).to(p_lw.dtype.element_ty), mask=m)


@triton.jit
def _decay_exp_bwd_kernel(p_dlw, p_base, p_d, p_dd, p_part, p_dbase, p_count, N, D, n_blocks, n_progs, GS, NG,
                          BR: tl.constexpr, BD: tl.constexpr, BP: tl.constexpr):
    # p_dlw, p_d, p_dd: [N, D]; p_base, p_dbase: [D]; p_part: [n_progs, D] fp32 partial rows of dbase;
    # p_count: [column blocks, 1 + NG] int32 arrival counters; GS, NG: kernels._colsum.tree; n_blocks: row blocks of
    # BR rows, strided over by the n_progs programs of a column block (BD columns); BP: partial rows summed per step
    # of the final sums (kernels._colsum.finish_rows)
    pid, o_c, m_c = _cols(D, BD)
    b_base = tl.load(p_base + o_c, mask=m_c, other=0.).to(tl.float32)[None, :]
    b_acc = tl.zeros([BR, BD], dtype=tl.float32)     # per element: summed over rows once, after the loop
    for blk in range(pid, n_blocks, n_progs):
        o_r, m_r = _rows(blk, N, BR)
        m = m_r[:, None] & m_c[None, :]
        offs = o_r[:, None] * D + o_c[None, :]
        b_d = tl.load(p_d + offs, mask=m, other=0.).to(tl.float32)
        b_dlw = tl.load(p_dlw + offs, mask=m, other=0.).to(tl.float32)
        b_dd = tl.where(m, -b_dlw * tl.exp(b_base + b_d), 0.)
        b_acc += b_dd
        tl.store(p_dd + offs, b_dd.to(p_dd.dtype.element_ty), mask=m)
    store_and_finish(p_part, tl.sum(b_acc, axis=0), pid, n_progs, D, o_c, m_c, p_count, GS, NG, p_dbase, BP, BD)


def _fwd_impl(base, d, dtype):
    D = d.shape[-1]
    N = d.numel() // D if D else 0
    lw = new_empty(d.shape, dtype, d.device)
    if N:
        BR, BD = _blocks(N, D, TUNING["fwd_tile"])
        _decay_exp_fwd_kernel[(_cdiv(N, BR), _cdiv(D, BD))](base, d, lw, N, D, BR=BR, BD=BD, num_warps=4)
    return lw


def _bwd_impl(dlw, base, d):
    D = d.shape[-1]
    N = d.numel() // D if D else 0
    dev = d.device
    dd = new_empty(d.shape, d.dtype, dev)
    if N == 0:
        return dd, torch.zeros_like(base)
    BR, BD, n_blocks, n_progs, n_cb = persistent_grid(N, D, TUNING["bwd_tile"], TUNING["bwd_per_sm"], dev)
    part = new_empty((n_progs, D), torch.float32, dev)
    dbase = new_empty(base.shape, base.dtype, dev)
    GS, NG = tree(n_progs)
    _decay_exp_bwd_kernel[(n_progs, n_cb)](dlw, base, d, dd, part, dbase, counters(dev, n_cb, NG), N, D, n_blocks,
                                           n_progs, GS, NG, BR=BR, BD=BD, BP=finish_rows(BD, 512 * TUNING["bwd_warps"]),
                                           num_warps=TUNING["bwd_warps"])
    return dd, dbase


@torch.library.custom_op("groundthink::decay_exp_fwd", mutates_args=())
def _fwd_op(base: torch.Tensor, d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _fwd_impl(base, d, dtype)


@_fwd_op.register_fake
def _(base, d, dtype):
    return torch.empty_like(d, dtype=dtype)


@torch.library.custom_op("groundthink::decay_exp_bwd", mutates_args=())
def _bwd_op(dlw: torch.Tensor, base: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _bwd_impl(dlw, base, d)


@_bwd_op.register_fake
def _(dlw, base, d):
    return torch.empty_like(d), torch.empty_like(base)


def _setup_context(ctx, inputs, output):
    base, d, _ = inputs
    ctx.save_for_backward(base, d)


def _backward(ctx, dlw):
    base, d = ctx.saved_tensors
    dd, dbase = pick(_bwd_op, _bwd_impl, dlw)(dlw.contiguous(), base, d)
    return dbase, dd, None


_decay_exp = EagerOp("DecayExp", _fwd_op, _fwd_impl, _setup_context, _backward)


def decay_exp(base, d, dtype=None):
    """lw = −exp(base + d) in ``dtype`` (default d's dtype); base [D], d [..., D]. See the module docstring."""
    check_tensor("d", d)
    check_tensor("base", base, device=d.device)
    check_args(base, d)
    dtype = dtype or d.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be float32, float16 or bfloat16; got {dtype}")
    c = lambda t: t if t.is_contiguous() else t.contiguous()  # noqa: E731
    return _decay_exp(c(base), c(d), dtype)
