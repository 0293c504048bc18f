"""RWKV-6 data-dependent lerps (the five token-shift mixes): one Triton kernel forward, one backward.

Math (see reference/ddlerp.py): x [B, T, D], m [5, B, T, D] (the low-rank mix terms), maa [5, D]::

    xx    = shift(x) − x                      shift(x)[:, t] = x[:, t−1]; x_prev[b] (or 0) at t = 0
    out_i = x + xx ⊙ (maa_i + m_i)            i = w, k, v, r, g: five tensors [B, T, D]

Backward (do_i on out_i; a_i = maa_i + m_i; dxx = Σ_i do_i ⊙ a_i)::

    dm_i   = do_i ⊙ xx;   dmaa_i = Σ_rows do_i ⊙ xx
    dx[t]  = Σ_i do_i[t] − dxx[t] + dxx[t+1]          (the last term: row t feeds shift(x) at t+1, same sequence)

xx is recomputed from x in the backward (nothing but the inputs is saved); dxx[t+1] is recomputed from the next
row's do_i and m_i (a one-row halo: the rest of those rows is in the tile already, so it comes from cache).

Layouts: x [B, T, D] and every output contiguous, viewed as [N = B·T, D]; m one contiguous [5, N, D]; maa [5, D];
x_prev [B, D] (the carried state, not differentiated). Tiles of [BR rows, BD columns].

Kernels:
* forward: a 2-D grid (row blocks, column blocks), one tile each: reads x, the previous rows, the five m_i, writes
  the five outputs.
* backward: the row-walking kernel ``_ddlerp_bwd_rows_kernel``: P programs per column block, each taking a chunk
  of rows in two halves walked together from their last row to their first, one [BD] row of each per step (all
  loads of both rows issued before either row's arithmetic), each half carrying dxx of the row after; every element
  is loaded once (no halo tiles), the dmaa partial sums stay per column in registers. H100 (glue_bwd_sweep, B16
  T1024 D512, CUDA-graph replay, same call): run 10 127.4 µs (BD 128, 2 warps, 16 programs per SM; 92 % of the
  copy bandwidth measured in the run) against 150.9 µs for one walker per program at run 8's setting (14 per SM;
  run 8: 150.7 µs against 272.8 for the tiled persistent backward before it).
It writes dx, dm and one fp32 partial row of dmaa per program ([P, 5, D]), summed inside the kernel in two
fixed-order levels (groups of ~√P programs, then the group sums) and stored as dmaa (``kernels._colsum``: no second launch, no
atomics on data, bit-identical run to run). No host syncs, no autotuning (CUDA-graph capturable).

Byte floor (bf16, E = N·D·2): forward x, m_0..4 in + 5 outputs = 11E; backward do_0..4, x, m_0..4 in + dx, dm_0..4
out = 17E (B16 T1024 D512: 285 MB, 95 µs at 2996 GB/s); the dmaa partial rows add ~3 %.

Numerics: fp32 arithmetic, outputs rounded once on store, int64 offsets. Dtypes: x, m fp32/fp16/bf16 (may
differ), maa any float dtype; outputs in x's dtype; dx, dm, dmaa in their inputs' dtypes.

torch.library: ``groundthink::ddlerp_fwd`` / ``groundthink::ddlerp_bwd`` custom ops with fake implementations and
one registered autograd formula (eager calls run the same implementations and formula through ``kernels._eager``); ``groundthink::ddlerp_grouped_fwd`` is the same forward kernel
writing the outputs grouped by ``order`` (one [B, T, D] tensor and one [4, B, T, D] stack: the model's batched r/k/v/g
projection reads the stack without a copy), with the same backward kernel reading the stack's gradient slices.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._colsum import arrive_tree, counters, finish_columns, finish_rows, tree
from kernels._common import cdiv as _cdiv, check_tensor, new_empty, num_sms, pow2 as _pow2
from kernels._eager import EagerOp, pick
from reference.ddlerp import N_MIX, check_args, check_order

__all__ = ["ddlerp"]

# elements per forward tile (GPU); the backward's columns per program (rows_bd, at rows_warps warps, None: rows_bd /
# 64) and programs per SM over all column blocks (rows_per_sm): run 10's fastest (see the module docstring; 4 and 8
# per SM: 132.5 and 138.2 µs). At BD 128, 2 warps, finish tile [8, 128]: 214 registers (offline sm_90 compile,
# Triton 3.9; one walker: 140), 4 programs per SM fit; the partial rows are 3 % of the kernel's bytes at D512.
# max_bd: the forward's column block.
TUNING = {"fwd_tile": 2048, "max_bd": 128, "rows_bd": 128, "rows_per_sm": 16, "rows_warps": None}


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _shifted(p_x, p_prev, o_r, o_c, m_r, m_c, T, D, HAS_PREV: tl.constexpr):
    """shift(x) on a tile: rows o_r − 1 of x inside each sequence, x_prev[b] (or 0) at t = 0; fp32 [BR, BD]."""
    o_t = o_r % T
    m_in = (m_r & (o_t > 0))[:, None] & m_c[None, :]
    b_s = tl.load(p_x + (o_r - 1)[:, None] * D + o_c[None, :], mask=m_in, other=0.).to(tl.float32)
    if HAS_PREV:
        m0 = (m_r & (o_t == 0))[:, None] & m_c[None, :]
        b_s += tl.load(p_prev + (o_r // T)[:, None] * D + o_c[None, :], mask=m0, other=0.).to(tl.float32)
    return b_s


@triton.jit
def _tile(N, D, BR: tl.constexpr, BD: tl.constexpr):
    """This program's tile of a 2-D grid over [N, D]: rows o_r [BR] (int64), columns o_c [BD], their masks."""
    o_r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    o_c = tl.program_id(1) * BD + tl.arange(0, BD)
    return o_r, o_c, o_r < N, o_c < D


@triton.jit
def _cols(D, BD: tl.constexpr):
    """A persistent backward program (grid [programs, column blocks]): (pid, its columns o_c [BD], their mask)."""
    o_c = tl.program_id(1) * BD + tl.arange(0, BD)
    return tl.program_id(0), o_c, o_c < D


@triton.jit
def _rows(blk, N, BR: tl.constexpr):
    """Row block ``blk`` of a persistent backward program: (rows o_r [BR] int64, their mask)."""
    o_r = blk * BR + tl.arange(0, BR).to(tl.int64)
    return o_r, o_r < N


@triton.jit
def _x_and_shift(p_x, p_prev, o_r, o_c, m_r, m_c, T, D, HAS_PREV: tl.constexpr):
    """The tile of x [N, D] at rows o_r × columns o_c: (offs, mask [BR, BD], x, shift(x) − x), fp32."""
    m = m_r[:, None] & m_c[None, :]
    offs = o_r[:, None] * D + o_c[None, :]
    b_x = tl.load(p_x + offs, mask=m, other=0.).to(tl.float32)
    return offs, m, b_x, _shifted(p_x, p_prev, o_r, o_c, m_r, m_c, T, D, HAS_PREV) - b_x


@triton.jit
def _mix_out(p_o, p_m, p_maa, i, ND, D, offs, m, o_c, m_c, b_x, b_xx):
    """out_i = x + xx ⊙ (maa_i + m_i) on a tile."""
    b_m = tl.load(p_m + i * ND + offs, mask=m, other=0.).to(tl.float32)
    b_maa = tl.load(p_maa + i * D + o_c, mask=m_c, other=0.).to(tl.float32)
    tl.store(p_o + offs, (b_x + b_xx * (b_maa[None, :] + b_m)).to(p_o.dtype.element_ty), mask=m)


@triton.jit
def _ddlerp_fwd_kernel(p_x, p_prev, p_m, p_maa, p_o0, p_o1, p_o2, p_o3, p_o4, N, T, D, ND,
                       HAS_PREV: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    # p_x, p_o*: [N, D]; p_prev: [B, D], None unless HAS_PREV; p_m: [5, N, D] (ND = N·D); p_maa: [5, D];
    # T: rows per sequence (N = B·T); BR × BD: the tile
    o_r, o_c, m_r, m_c = _tile(N, D, BR, BD)
    offs, m, b_x, b_xx = _x_and_shift(p_x, p_prev, o_r, o_c, m_r, m_c, T, D, HAS_PREV)
    _mix_out(p_o0, p_m, p_maa, 0, ND, D, offs, m, o_c, m_c, b_x, b_xx)
    _mix_out(p_o1, p_m, p_maa, 1, ND, D, offs, m, o_c, m_c, b_x, b_xx)
    _mix_out(p_o2, p_m, p_maa, 2, ND, D, offs, m, o_c, m_c, b_x, b_xx)
    _mix_out(p_o3, p_m, p_maa, 3, ND, D, offs, m, o_c, m_c, b_x, b_xx)
    _mix_out(p_o4, p_m, p_maa, 4, ND, D, offs, m, o_c, m_c, b_x, b_xx)


@triton.jit
def _finish_dmaa(p_part, b_a0, b_a1, b_a2, b_a3, b_a4, pid, n_progs, D, o_c, m_c, p_count, GS, NG, p_dmaa,
                 BP: tl.constexpr, BD: tl.constexpr):
    """Store this program's five partial rows of dmaa (row ``pid`` of p_part [n_progs, 5, D]); the last program
    of the column block sums them into dmaa [5, D] (kernels._colsum)."""
    p_row = p_part + pid.to(tl.int64) * 5 * D + o_c
    tl.store(p_row, b_a0, mask=m_c)
    tl.store(p_row + D, b_a1, mask=m_c)
    tl.store(p_row + 2 * D, b_a2, mask=m_c)
    tl.store(p_row + 3 * D, b_a3, mask=m_c)
    tl.store(p_row + 4 * D, b_a4, mask=m_c)
    c0 = tl.program_id(1) * BD
    c1 = tl.minimum(c0 + BD, D)
    if arrive_tree(p_part, 5 * D, p_count, pid, n_progs, GS, NG, c0, c1, 5, D, BP, BD):
        for i in range(5):
            finish_columns(p_part + i * D, GS * 5 * D, NG, p_dmaa + i * D, c0, c1, BP, BD)


@triton.jit
def _dxx_row(p_do0, p_do1, p_do2, p_do3, p_do4, p_m, b_maa0, b_maa1, b_maa2, b_maa3, b_maa4, ND, offs, m):
    """dxx = Σ_i do_i ⊙ (maa_i + m_i) on one row (0 where ``m`` is false)."""
    b = tl.load(p_do0 + offs, mask=m, other=0.).to(tl.float32) * \
        (b_maa0 + tl.load(p_m + offs, mask=m, other=0.).to(tl.float32))
    b += tl.load(p_do1 + offs, mask=m, other=0.).to(tl.float32) * \
        (b_maa1 + tl.load(p_m + ND + offs, mask=m, other=0.).to(tl.float32))
    b += tl.load(p_do2 + offs, mask=m, other=0.).to(tl.float32) * \
        (b_maa2 + tl.load(p_m + 2 * ND + offs, mask=m, other=0.).to(tl.float32))
    b += tl.load(p_do3 + offs, mask=m, other=0.).to(tl.float32) * \
        (b_maa3 + tl.load(p_m + 3 * ND + offs, mask=m, other=0.).to(tl.float32))
    b += tl.load(p_do4 + offs, mask=m, other=0.).to(tl.float32) * \
        (b_maa4 + tl.load(p_m + 4 * ND + offs, mask=m, other=0.).to(tl.float32))
    return tl.where(m, b, 0.)


@triton.jit
def _load_row(p_do0, p_do1, p_do2, p_do3, p_do4, p_x, p_prev, p_m, r, o_c, m, T, D, ND, HAS_PREV: tl.constexpr):
    """Every load of one row r ([BD] block of row indices, mask ``m``), fp32: (x, shift(x), do_0..4, m_0..4)."""
    t = r % T
    offs = r * D + o_c
    b_xs = tl.load(p_x + offs - D, mask=m & (t > 0), other=0.).to(tl.float32)
    if HAS_PREV:
        b_xs += tl.load(p_prev + (r // T) * D + o_c, mask=m & (t == 0), other=0.).to(tl.float32)
    return (tl.load(p_x + offs, mask=m, other=0.).to(tl.float32), b_xs,
            tl.load(p_do0 + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_do1 + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_do2 + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_do3 + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_do4 + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_m + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_m + ND + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_m + 2 * ND + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_m + 3 * ND + offs, mask=m, other=0.).to(tl.float32),
            tl.load(p_m + 4 * ND + offs, mask=m, other=0.).to(tl.float32))


@triton.jit
def _row_grads(p_dx, p_dm, r, o_c, m, T, D, ND, b_xx, b_do0, b_do1, b_do2, b_do3, b_do4, b_m0, b_m1, b_m2, b_m3,
               b_m4, b_maa0, b_maa1, b_maa2, b_maa3, b_maa4, b_next):
    """One row's gradients from its loads (``_load_row``; xx = shift(x) − x): stores dm_i = do_i ⊙ xx and
    dx = Σ do_i − dxx + dxx(row after) (``b_next``); returns this row's dxx as the next step's ``b_next`` (0 at
    t = 0: the row before is another sequence's)."""
    offs = r * D + o_c
    ty = p_dm.dtype.element_ty
    tl.store(p_dm + offs, (b_do0 * b_xx).to(ty), mask=m)
    tl.store(p_dm + ND + offs, (b_do1 * b_xx).to(ty), mask=m)
    tl.store(p_dm + 2 * ND + offs, (b_do2 * b_xx).to(ty), mask=m)
    tl.store(p_dm + 3 * ND + offs, (b_do3 * b_xx).to(ty), mask=m)
    tl.store(p_dm + 4 * ND + offs, (b_do4 * b_xx).to(ty), mask=m)
    b_dxx = b_do0 * (b_maa0 + b_m0) + b_do1 * (b_maa1 + b_m1) + b_do2 * (b_maa2 + b_m2) + \
        b_do3 * (b_maa3 + b_m3) + b_do4 * (b_maa4 + b_m4)
    b_sdo = b_do0 + b_do1 + b_do2 + b_do3 + b_do4
    tl.store(p_dx + offs, (b_sdo - b_dxx + b_next).to(p_dx.dtype.element_ty), mask=m)
    return tl.where(r % T > 0, b_dxx, 0.)


@triton.jit
def _ddlerp_bwd_rows_kernel(p_do0, p_do1, p_do2, p_do3, p_do4, p_x, p_prev, p_m, p_maa, p_dx, p_dm, p_part,
                            p_dmaa, p_count, N, T, D, ND, L, n_progs, GS, NG,
                            HAS_PREV: tl.constexpr, BD: tl.constexpr, BP: tl.constexpr):
    """The backward walking rows: program (pid, column block) takes rows [pid·L, pid·L + L) ∩ [0, N), split in two
    halves walked together from their last row to their first, one row of each (BD columns) per step: all loads of
    both rows are issued before either row's arithmetic (twice the bytes in flight of one walker; stores in
    between would keep the compiler from hoisting the next row's loads). Each walker carries dxx of the row after
    (dx[t] needs dxx[t+1]; its first step computes that one-row halo): every element is loaded once (x twice: as
    x[t] and as shift(x) of row t+1, the second from cache), no halo tiles, no cross-warp reduction in the loop
    (the dmaa partial sums are per column, in the thread that owns it).
    p_do*, p_x, p_dx: [N, D]; p_prev: [B, D], None unless HAS_PREV; p_m, p_dm: [5, N, D] (ND = N·D); p_maa, p_dmaa:
    [5, D]; p_part: [n_progs, 5, D] fp32 partial rows of dmaa; p_count: [column blocks, 1 + NG] int32 arrival
    counters; GS, NG: kernels._colsum.tree; T: rows per sequence (N = B·T); L: rows per program; BD: columns per
    program; BP: partial rows summed per step of the final sums (kernels._colsum.finish_rows)."""
    pid, o_c, m_c = _cols(D, BD)
    b_maa0 = tl.load(p_maa + o_c, mask=m_c, other=0.).to(tl.float32)
    b_maa1 = tl.load(p_maa + D + o_c, mask=m_c, other=0.).to(tl.float32)
    b_maa2 = tl.load(p_maa + 2 * D + o_c, mask=m_c, other=0.).to(tl.float32)
    b_maa3 = tl.load(p_maa + 3 * D + o_c, mask=m_c, other=0.).to(tl.float32)
    b_maa4 = tl.load(p_maa + 4 * D + o_c, mask=m_c, other=0.).to(tl.float32)
    r_lo = pid.to(tl.int64) * L
    r_hi = tl.minimum(r_lo + L, N)
    n_a = (r_hi - r_lo + 1) // 2                 # walker a: rows [r_lo, r_mid), b: [r_mid, r_hi) (≤ n_a rows)
    r_mid = r_lo + n_a
    z_c = o_c.to(tl.int64) * 0          # row indices are kept as [BD] blocks (masks stay block-shaped)
    # each walker's halo: dxx of the row after its last when it continues the same sequence (else 0)
    r = r_mid + z_c
    b_next_a = _dxx_row(p_do0, p_do1, p_do2, p_do3, p_do4, p_m, b_maa0, b_maa1, b_maa2, b_maa3, b_maa4, ND,
                        r * D + o_c, m_c & (r < N) & (r % T != 0))
    r = r_hi + z_c
    b_next_b = _dxx_row(p_do0, p_do1, p_do2, p_do3, p_do4, p_m, b_maa0, b_maa1, b_maa2, b_maa3, b_maa4, ND,
                        r * D + o_c, m_c & (r < N) & (r % T != 0))
    b_a0 = tl.zeros([BD], dtype=tl.float32)
    b_a1 = tl.zeros([BD], dtype=tl.float32)
    b_a2 = tl.zeros([BD], dtype=tl.float32)
    b_a3 = tl.zeros([BD], dtype=tl.float32)
    b_a4 = tl.zeros([BD], dtype=tl.float32)
    for k in range(0, n_a.to(tl.int32)):
        r_a = r_mid - 1 - k + z_c
        r_b = r_hi - 1 - k + z_c
        m_b = m_c & (r_b >= r_mid)          # walker b has one row fewer when the chunk's length is odd
        xa, sa, da0, da1, da2, da3, da4, ma0, ma1, ma2, ma3, ma4 = _load_row(
            p_do0, p_do1, p_do2, p_do3, p_do4, p_x, p_prev, p_m, r_a, o_c, m_c, T, D, ND, HAS_PREV)
        xb, sb, db0, db1, db2, db3, db4, mb0, mb1, mb2, mb3, mb4 = _load_row(
            p_do0, p_do1, p_do2, p_do3, p_do4, p_x, p_prev, p_m, r_b, o_c, m_b, T, D, ND, HAS_PREV)
        xa = sa - xa                         # xx = shift(x) − x
        xb = sb - xb
        b_next_a = _row_grads(p_dx, p_dm, r_a, o_c, m_c, T, D, ND, xa, da0, da1, da2, da3, da4, ma0, ma1, ma2, ma3,
                              ma4, b_maa0, b_maa1, b_maa2, b_maa3, b_maa4, b_next_a)
        b_next_b = _row_grads(p_dx, p_dm, r_b, o_c, m_b, T, D, ND, xb, db0, db1, db2, db3, db4, mb0, mb1, mb2, mb3,
                              mb4, b_maa0, b_maa1, b_maa2, b_maa3, b_maa4, b_next_b)
        b_a0 += da0 * xa + db0 * xb          # (a masked row of b loads zeros: adds 0)
        b_a1 += da1 * xa + db1 * xb
        b_a2 += da2 * xa + db2 * xb
        b_a3 += da3 * xa + db3 * xb
        b_a4 += da4 * xa + db4 * xb
    _finish_dmaa(p_part, b_a0, b_a1, b_a2, b_a3, b_a4, pid, n_progs, D, o_c, m_c, p_count, GS, NG, p_dmaa, BP, BD)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
def _blocks(N: int, D: int, tile: int):
    """(BR, BD): column block ≤ max_bd (the interpreter: 32, so that tests cross column blocks), ~tile elements."""
    BD = min(_pow2(D), 32 if INTERPRET else TUNING["max_bd"])
    BR = 4 if INTERPRET else max(1, min(tile // BD, _pow2(N)))
    return BR, BD


def persistent_grid(N: int, D: int, tile: int, per_sm: int, dev):
    """The backward's persistent grid over [N, D]: (BR, BD, row blocks, programs per column block, column
    blocks); ``per_sm`` programs per SM over all column blocks, never more than the row blocks (2 in the
    interpreter, so that tests stride)."""
    BR, BD = _blocks(N, D, tile)
    n_blocks, n_cb = _cdiv(N, BR), _cdiv(D, BD)
    n_progs = 2 if INTERPRET else max(1, num_sms(dev) * per_sm // n_cb)
    return BR, BD, n_blocks, min(n_progs, n_blocks), n_cb


def _fwd_impl(x, m, maa, x_prev, outs=None):
    """The five outputs in mix order (into ``outs`` when given: five [B, T, D] tensors, e.g. views of one buffer)."""
    B, T, D = x.shape
    N = B * T
    if outs is None:
        outs = [new_empty(x.shape, x.dtype, x.device) for _ in range(N_MIX)]
    if N == 0 or D == 0:
        return outs
    BR, BD = _blocks(N, D, TUNING["fwd_tile"])
    _ddlerp_fwd_kernel[(_cdiv(N, BR), _cdiv(D, BD))](
        x, x_prev, m, maa, *outs, N, T, D, N * D, HAS_PREV=x_prev is not None, BR=BR, BD=BD,
        num_warps=4)
    return outs


def _bwd_impl(douts, x, m, maa, x_prev):
    B, T, D = x.shape
    N = B * T
    dev = x.device
    dx = new_empty(x.shape, x.dtype, dev)
    dm = new_empty(m.shape, m.dtype, dev)
    if N == 0 or D == 0:
        return dx, dm, torch.zeros_like(maa)
    dmaa = new_empty(maa.shape, maa.dtype, dev)
    BD = min(_pow2(D), 32 if INTERPRET else TUNING["rows_bd"])
    n_cb = _cdiv(D, BD)
    n_progs = min(3, N) if INTERPRET else max(1, min(_cdiv(N, 4), num_sms(dev) * TUNING["rows_per_sm"] // n_cb))
    L = _cdiv(N, n_progs)
    n_progs = _cdiv(N, L)
    part = new_empty((n_progs, N_MIX, D), torch.float32, dev)
    GS, NG = tree(n_progs)
    # warps: by default the finish's [BP, BD] tile at ~16 fp32 per thread (it sets registers)
    warps = TUNING["rows_warps"] or max(1, min(8, BD // 64))
    _ddlerp_bwd_rows_kernel[(n_progs, n_cb)](
        *douts, x, x_prev, m, maa, dx, dm, part, dmaa, counters(dev, n_cb, NG), N, T, D, N * D, L, n_progs, GS, NG,
        HAS_PREV=x_prev is not None, BD=BD, BP=finish_rows(BD, 512 * warps), num_warps=warps)
    return dx, dm, dmaa


# ----------------------------------------------------------------------------------------------------------
# torch.library custom ops + autograd (eager: the same formula through kernels._eager)
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("groundthink::ddlerp_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, m: torch.Tensor, maa: torch.Tensor, x_prev: Optional[torch.Tensor]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(_fwd_impl(x, m, maa, x_prev))


@_fwd_op.register_fake
def _(x, m, maa, x_prev):
    return tuple(torch.empty_like(x) for _ in range(N_MIX))


@torch.library.custom_op("groundthink::ddlerp_grouped_fwd", mutates_args=())
def _grouped_op(x: torch.Tensor, m: torch.Tensor, maa: torch.Tensor, x_prev: Optional[torch.Tensor],
                order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _grouped_impl(x, m, maa, x_prev, order)


def _grouped_impl(x, m, maa, x_prev, order):
    first = new_empty(x.shape, x.dtype, x.device)
    rest = new_empty((N_MIX - 1, *x.shape), x.dtype, x.device)
    slots = [first, *rest.unbind(0)]
    outs = [slots[order.index(i)] for i in range(N_MIX)]      # mix i is written to slot order.index(i)
    _fwd_impl(x, m, maa, x_prev, outs)
    return first, rest


@_grouped_op.register_fake
def _(x, m, maa, x_prev, order):
    return torch.empty_like(x), x.new_empty((N_MIX - 1, *x.shape))


@torch.library.custom_op("groundthink::ddlerp_bwd", mutates_args=())
def _bwd_op(douts: list[torch.Tensor], x: torch.Tensor, m: torch.Tensor, maa: torch.Tensor,
            x_prev: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(douts, x, m, maa, x_prev)


@_bwd_op.register_fake
def _(douts, x, m, maa, x_prev):
    return torch.empty_like(x), torch.empty_like(m), torch.empty_like(maa)


def _setup_context(ctx, inputs, output):
    x, m, maa, x_prev = inputs
    ctx.save_for_backward(x, m, maa, x_prev)


def _backward(ctx, *douts):
    x, m, maa, x_prev = ctx.saved_tensors
    douts = [torch.zeros_like(x) if d is None else d.contiguous() for d in douts]
    dx, dm, dmaa = pick(_bwd_op, _bwd_impl, douts[0])(douts, x, m, maa, x_prev)
    return dx, dm, dmaa, None


_ddlerp = EagerOp("Ddlerp", _fwd_op, _fwd_impl, _setup_context, _backward)


def _grouped_setup_context(ctx, inputs, output):
    x, m, maa, x_prev, order = inputs
    ctx.save_for_backward(x, m, maa, x_prev)
    ctx.order = list(order)
    ctx.set_materialize_grads(False)


def _grouped_backward(ctx, d_first, d_rest):
    x, m, maa, x_prev = ctx.saved_tensors
    if d_rest is None:
        d_rest = x.new_zeros((N_MIX - 1, *x.shape))
    slots = [torch.zeros_like(x) if d_first is None else d_first.contiguous(), *d_rest.contiguous().unbind(0)]
    dx, dm, dmaa = pick(_bwd_op, _bwd_impl, slots[0])([slots[ctx.order.index(i)] for i in range(N_MIX)], x, m, maa,
                                                      x_prev)
    return dx, dm, dmaa, None, None


_ddlerp_grouped = EagerOp("DdlerpGrouped", _grouped_op, _grouped_impl, _grouped_setup_context, _grouped_backward)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def ddlerp(x, m, maa, x_prev=None, order=None):
    """(xw, xk, xv, xr, xg) = x + (shift(x) − x) ⊙ (maa_i + m_i); x [B, T, D], m [5, B, T, D], maa [5, D],
    x_prev [B, D] or None. With ``order`` (a permutation of 0…4): (out[order[0]], the other four stacked
    [4, B, T, D] in order[1:]), written in place by the kernel (no stack copy; its backward reads the stack's
    gradient in place). See the module docstring."""
    check_tensor("x", x, ndim=3)
    check_tensor("m", m, device=x.device)
    check_tensor("maa", maa, device=x.device)
    if x_prev is not None:
        check_tensor("x_prev", x_prev, device=x.device)
    check_args(x, m, maa, x_prev)
    order = check_order(order)
    c = lambda t: t if t is None or t.is_contiguous() else t.contiguous()  # noqa: E731
    if order is not None:
        return _ddlerp_grouped(c(x), c(m), c(maa), c(x_prev), list(order))
    return _ddlerp(c(x), c(m), c(maa), c(x_prev))
