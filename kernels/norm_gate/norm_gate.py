"""Per-group norm and SiLU gate (RWKV-6 GroupNorm ⊙ g, Mamba-2 gated RMSNorm): one Triton kernel forward, one
backward.

Math (per row of D = G·S features, G groups of S = ``group_size``; s = silu(z) = z·σ(z); see
reference/norm_gate.py)::

    h  = x                  (norm_before_gate)      h = x ⊙ s        (gate first)
    μ  = mean_g(h) (LayerNorm) or 0 (RMSNorm);      rstd = rsqrt(mean_g((h − μ)²) + eps)
    x̂  = (h − μ)·rstd;      q = x̂ ⊙ W (+ bias)
    y  = q ⊙ s              (norm_before_gate)      y = q             (gate first)

Backward (dq = dy ⊙ s before-gate, dq = dy gate-first; σ' = silu'(z) = σ(z)(1 + z(1 − σ(z)))), per group::

    dx̂ = dq ⊙ W;   dh = rstd · (dx̂ − x̂·mean_g(dx̂ ⊙ x̂) − mean_g(dx̂))     (the last term for LayerNorm only)
    before-gate:   dx = dh;        dz = dy ⊙ q ⊙ σ'
    gate-first:    dx = dh ⊙ s;    dz = dh ⊙ x ⊙ σ'
    dW = Σ_rows dq ⊙ x̂;   dbias = Σ_rows dq

Nothing is saved for the backward but the inputs: μ and rstd are recomputed from x and z (one more read of a
row the backward reads anyway), so the op keeps no fp32 activation alive between forward and backward.

Layouts: x, z, y viewed as [N, D] (N = product of the leading dims). x and z may have evenly spaced rows with unit
column stride (e.g. z split off mamba's in_proj output: no copy); other layouts are copied once. y and the
gradients are contiguous; weight, bias [D]. A row is loaded as a [BR, BG, BS] tile (BR rows, BG = next pow2 ≥ G groups, BS = next
pow2 ≥ S features) at offset row·D + g·S + s, so the group reductions are reductions over the last axis.

Kernels:
* forward: one [BR, BG, BS] tile per program, BR chosen for ~4K elements per tile (fewer rows when the grid
  would not fill the GPU).
* backward: a persistent grid of P programs (a few per SM, never more than the row blocks) striding over row
  blocks; each accumulates dW and dbias per element of its tile in fp32 registers (no cross-warp sum per row
  block: the tile's rows are summed once, after the loop) and writes one partial row of [P, 2·D] fp32, summed
  inside the kernel in two fixed-order levels (groups of ~√P programs, then the group sums) and stored as dW and
  dbias in their dtypes (``kernels._colsum``: no second launch, no atomics on data, bit-identical run to run).
* launches use fixed warp counts by tile size (no autotuner: nothing to tune before CUDA-graph capture) and no
  host syncs.

Byte floor (E = N·D·elem): forward x, z in + y out = 3E; backward dy, x, z in + dx, dz out = 5E (dW, dbias
partial rows < 1 %). bf16 at the large model (N16384): RWKV D512 84 MB → 28 µs, Mamba D1024 168 MB → 56 µs at
2996 GB/s. H100, run 10 (scripts/glue_bwd_sweep.py, CUDA-graph replay, same call): RWKV 59.8 → 43.7 µs, Mamba
103.6 → 87.4 µs (79 % of the copy bandwidth measured in the run; the old setting, one cross-warp row sum per
block at 2048-element tiles, 58 and 66 %); in the large captured step 1,330 µs (run 9) → 1,073 µs for the 16 calls.

Numerics: loads upcast to fp32, every reduction in fp32, outputs rounded once on store; int64 row offsets.
Dtypes: x, z one of fp32/fp16/bf16 (they may differ); weight, bias any of those; y in x's dtype, every gradient
in its input's dtype.

torch.library: ``groundthink::norm_gate_fwd`` / ``groundthink::norm_gate_bwd`` custom ops with fake
implementations and one registered autograd formula, what torch.compile traces; eager calls (and CUDA-graph
capture of eager code) run the same implementations and formula through ``kernels._eager`` (no dispatcher).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._colsum import arrive_tree, counters, finish_columns, finish_rows, tree
from kernels._common import cdiv as _cdiv, check_tensor, new_empty, num_sms, pow2 as _pow2
from kernels._slots import grad_slot
from kernels._eager import EagerOp, pick
from reference.norm_gate import check_args

__all__ = ["norm_gate"]

MAX_D = 16384
# elements per forward / backward tile (GPU), persistent backward programs per SM
# (bwd_warps None: ~8 elements per thread; run 10's sweep at both model shapes: 1024-element tiles at 4 warps, 4
# per SM beat 6 per SM, 2 warps, and 2048-element tiles at 8 warps by 15-25 %)
TUNING = {"fwd_tile": 4096, "bwd_tile": 1024, "bwd_per_sm": 4, "bwd_warps": None}


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _tile(row0, N, S, G, BR: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr):
    """Row indices [BR, 1, 1] (int64) of BR rows from ``row0``, column offsets [1, BG, BS], the tile mask, and the
    column offsets [BG, BS] with their mask (a tensor's offsets: rows · row_stride + columns)."""
    o_r = row0 + tl.arange(0, BR).to(tl.int64)
    o_g = tl.arange(0, BG)
    o_s = tl.arange(0, BS)
    o_c = o_g[:, None] * S + o_s[None, :]
    m_c = (o_g[:, None] < G) & (o_s[None, :] < S)
    m = (o_r < N)[:, None, None] & m_c[None, :, :]
    return o_r[:, None, None], o_c[None, :, :], m, o_c, m_c


@triton.jit
def _normalize(b_x, b_z, m, S, eps, LAYER: tl.constexpr, BEFORE: tl.constexpr):
    """(x̂, rstd [BR, BG], s = silu(z), σ(z)) of one tile; masked elements of x̂ are 0."""
    b_sig = 1. / (1. + tl.exp(-b_z))
    b_s = b_z * b_sig
    if BEFORE:
        b_h = b_x
    else:
        b_h = b_x * b_s
    if LAYER:
        b_mu = tl.sum(b_h, axis=2) / S
        b_d = tl.where(m, b_h - b_mu[:, :, None], 0.)
    else:
        b_d = b_h
    b_rstd = tl.rsqrt(tl.sum(b_d * b_d, axis=2) / S + eps)
    return b_d * b_rstd[:, :, None], b_rstd, b_s, b_sig


@triton.jit
def _norm_gate_fwd_kernel(p_x, p_z, p_w, p_b, p_y, N, D, S, G, sx, sz, eps,
                          LAYER: tl.constexpr, BEFORE: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BR: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr):
    # p_x, p_z: [N, D] rows sx / sz elements apart (unit column stride); p_y: [N, D] contiguous; p_w, p_b: [D]
    # (p_b: None unless HAS_BIAS); D = G·S; LAYER: LayerNorm (else RMSNorm); BEFORE: norm then gate (else gate
    # then norm); BR rows × BG groups × BS channels: the tile
    pid = tl.program_id(0).to(tl.int64)
    o_r, o_c3, m, o_c, m_c = _tile(pid * BR, N, S, G, BR, BG, BS)
    b_x = tl.load(p_x + o_r * sx + o_c3, mask=m, other=0.).to(tl.float32)
    b_z = tl.load(p_z + o_r * sz + o_c3, mask=m, other=0.).to(tl.float32)
    b_xh, b_rstd, b_s, b_sig = _normalize(b_x, b_z, m, S, eps, LAYER, BEFORE)
    b_y = b_xh * tl.load(p_w + o_c, mask=m_c, other=0.).to(tl.float32)[None, :, :]
    if HAS_BIAS:
        b_y += tl.load(p_b + o_c, mask=m_c, other=0.).to(tl.float32)[None, :, :]
    if BEFORE:
        b_y = b_y * b_s
    tl.store(p_y + o_r * D + o_c3, b_y.to(p_y.dtype.element_ty), mask=m)


@triton.jit
def _norm_gate_bwd_kernel(p_dy, p_x, p_z, p_w, p_b, p_dx, p_dz, p_part, p_dw, p_db, p_count, N, D, S, G, sx,
                          sz, eps, n_blocks, n_progs, GS, NG, LAYER: tl.constexpr, BEFORE: tl.constexpr,
                          HAS_BIAS: tl.constexpr, BR: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr,
                          BP: tl.constexpr, BC: tl.constexpr):
    # p_x, p_z: [N, D] rows sx / sz elements apart; p_dy, p_dx, p_dz: [N, D] contiguous; p_w, p_b, p_dw, p_db:
    # [D] (p_db: None unless HAS_BIAS); p_part: [n_progs, 2·D] fp32 partial rows dW | dbias; p_count: [1 + NG]
    # int32 arrival counters, GS, NG: kernels._colsum.tree; BP × BC: the tile of the final sums; n_blocks: row
    # blocks of BR rows, strided over by the n_progs programs; LAYER, BEFORE, HAS_BIAS, BG, BS: as in the forward
    pid = tl.program_id(0)
    o_r0, o_c0, m0, o_c, m_c = _tile(0, N, S, G, BR, BG, BS)   # (only the column offsets are used here)
    b_w = tl.load(p_w + o_c, mask=m_c, other=0.).to(tl.float32)[None, :, :]
    if HAS_BIAS:
        b_bias = tl.load(p_b + o_c, mask=m_c, other=0.).to(tl.float32)[None, :, :]
    b_acc_dw = tl.zeros([BR, BG, BS], dtype=tl.float32)   # per element: summed over rows once, after the loop
    b_acc_db = tl.zeros([BR, BG, BS], dtype=tl.float32)
    for blk in range(pid, n_blocks, n_progs):
        o_r, o_c3, m, o_cb, m_cb = _tile(blk * BR, N, S, G, BR, BG, BS)
        offs = o_r * D + o_c3
        b_x = tl.load(p_x + o_r * sx + o_c3, mask=m, other=0.).to(tl.float32)
        b_z = tl.load(p_z + o_r * sz + o_c3, mask=m, other=0.).to(tl.float32)
        b_dy = tl.load(p_dy + offs, mask=m, other=0.).to(tl.float32)
        b_xh, b_rstd, b_s, b_sig = _normalize(b_x, b_z, m, S, eps, LAYER, BEFORE)
        b_dsilu = b_sig * (1. + b_z * (1. - b_sig))
        if BEFORE:
            b_dq = b_dy * b_s
        else:
            b_dq = b_dy
        b_acc_dw += b_dq * b_xh
        if HAS_BIAS:
            b_acc_db += b_dq
        b_dxh = b_dq * b_w
        b_c1 = tl.sum(b_dxh * b_xh, axis=2) / S
        b_dh = b_dxh - b_xh * b_c1[:, :, None]
        if LAYER:
            b_dh -= (tl.sum(b_dxh, axis=2) / S)[:, :, None]
        b_dh = b_dh * b_rstd[:, :, None]
        if BEFORE:
            b_q = b_xh * b_w
            if HAS_BIAS:
                b_q += b_bias
            b_dx = b_dh
            b_dz = b_dy * b_q * b_dsilu
        else:
            b_dx = b_dh * b_s
            b_dz = b_dh * b_x * b_dsilu
        tl.store(p_dx + offs, b_dx.to(p_dx.dtype.element_ty), mask=m)
        tl.store(p_dz + offs, b_dz.to(p_dz.dtype.element_ty), mask=m)
    p_row = p_part + pid.to(tl.int64) * 2 * D
    tl.store(p_row + o_c, tl.sum(b_acc_dw, axis=0), mask=m_c)
    if HAS_BIAS:
        tl.store(p_row + D + o_c, tl.sum(b_acc_db, axis=0), mask=m_c)
    c1 = D
    if HAS_BIAS:
        c1 = 2 * D
    if arrive_tree(p_part, 2 * D, p_count, pid, n_progs, GS, NG, 0, c1, 1, 0, BP, BC):
        finish_columns(p_part, GS * 2 * D, NG, p_dw, 0, D, BP, BC)
        if HAS_BIAS:
            finish_columns(p_part + D, GS * 2 * D, NG, p_db, 0, D, BP, BC)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
def _rows(N: int, row_elems: int, tile: int, min_programs: int) -> int:
    """Rows per program: a tile of ~``tile`` elements, fewer when the grid would have < ``min_programs``."""
    BR = max(1, tile // row_elems)
    while BR > 1 and _cdiv(N, BR) < min_programs:
        BR //= 2
    return BR


def _warps(elems: int) -> int:
    return 2 if elems <= 1024 else 4 if elems <= 4096 else 8 if elems <= 16384 else 16


def _rows_view(t):
    """``t`` if its rows are evenly spaced with unit column stride (e.g. a split of a projection), else a copy."""
    if t is None or t.dim() == 0 or t.is_contiguous():
        return t
    try:
        if t.stride(-1) == 1 and t.view(-1, t.shape[-1]) is not None:
            return t
    except RuntimeError:
        pass
    return t.contiguous()


def _row_stride(t) -> int:
    """Elements between consecutive rows of ``t`` viewed as [N, D] (``_rows_view`` made that possible)."""
    return t.view(-1, t.shape[-1]).stride(0) if t.numel() else t.shape[-1]


def _dims(x, group_size):
    D = x.shape[-1]
    N = x.numel() // D if D else 0
    S = int(group_size)
    return N, D, S, D // S, _pow2(D // S), _pow2(S)


def _fwd_impl(x, z, weight, bias, group_size, eps, norm, norm_before_gate):
    N, D, S, G, BG, BS = _dims(x, group_size)
    y = new_empty(x.shape, x.dtype, x.device)
    if N == 0:
        return y
    if INTERPRET:
        BR = min(4, _pow2(N))
    else:
        BR = _rows(N, BG * BS, TUNING["fwd_tile"], 2 * num_sms(x.device))
    _norm_gate_fwd_kernel[(_cdiv(N, BR),)](
        x, z, weight, bias, y, N, D, S, G, _row_stride(x), _row_stride(z), eps,
        LAYER=norm == "layer", BEFORE=norm_before_gate, HAS_BIAS=bias is not None, BR=BR, BG=BG, BS=BS,
        num_warps=_warps(BR * BG * BS))
    return y


def _bwd_impl(dy, x, z, weight, bias, group_size, eps, norm, norm_before_gate):
    """(dx, dz, dweight, dbias or an empty tensor)."""
    N, D, S, G, BG, BS = _dims(x, group_size)
    dev = x.device
    dx = new_empty(x.shape, x.dtype, dev)
    dz = grad_slot(z)                   # in a producer's buffer when offered (kernels._slots), else fresh
    dz = new_empty(z.shape, z.dtype, dev) if dz is None else dz
    if N == 0:
        return dx, dz, torch.zeros_like(weight), (torch.zeros_like(bias) if bias is not None else x.new_empty((0,)))
    dw = new_empty(weight.shape, weight.dtype, dev)
    db = new_empty(bias.shape, bias.dtype, dev) if bias is not None else x.new_empty((0,))
    if INTERPRET:
        BR, n_progs = min(4, _pow2(N)), 2
    else:
        n_progs = num_sms(dev) * TUNING["bwd_per_sm"]
        BR = _rows(N, BG * BS, TUNING["bwd_tile"], n_progs)
    n_blocks = _cdiv(N, BR)
    n_progs = max(1, min(n_progs, n_blocks))
    part = new_empty((n_progs, 2 * D), torch.float32, dev)
    BC = min(_pow2(D), 256)
    GS, NG = tree(n_progs)
    warps = TUNING["bwd_warps"] or max(1, min(16, BR * BG * BS // 256))
    _norm_gate_bwd_kernel[(n_progs,)](
        dy, x, z, weight, bias, dx, dz, part, dw, db if bias is not None else None, counters(dev, 1, NG), N, D, S,
        G, _row_stride(x), _row_stride(z), eps, n_blocks, n_progs, GS, NG,
        LAYER=norm == "layer", BEFORE=norm_before_gate, HAS_BIAS=bias is not None, BR=BR, BG=BG, BS=BS,
        BP=finish_rows(BC, 512 * warps), BC=BC, num_warps=warps)
    return dx, dz, dw, db


# ----------------------------------------------------------------------------------------------------------
# torch.library custom ops + autograd (eager: the same formula through kernels._eager)
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("groundthink::norm_gate_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            group_size: int, eps: float, norm: str, norm_before_gate: bool) -> torch.Tensor:
    return _fwd_impl(x, z, weight, bias, group_size, eps, norm, norm_before_gate)


@_fwd_op.register_fake
def _(x, z, weight, bias, group_size, eps, norm, norm_before_gate):
    return torch.empty_like(x)


@torch.library.custom_op("groundthink::norm_gate_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
            bias: Optional[torch.Tensor], group_size: int, eps: float, norm: str,
            norm_before_gate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(dy, x, z, weight, bias, group_size, eps, norm, norm_before_gate)


@_bwd_op.register_fake
def _(dy, x, z, weight, bias, group_size, eps, norm, norm_before_gate):
    db = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    return torch.empty_like(x), torch.empty_like(z), torch.empty_like(weight), db


def _setup_context(ctx, inputs, output):
    x, z, weight, bias, group_size, eps, norm, norm_before_gate = inputs
    ctx.save_for_backward(x, z, weight, bias)
    ctx.cfg = (group_size, eps, norm, norm_before_gate)


def _backward(ctx, dy):
    x, z, weight, bias = ctx.saved_tensors
    dx, dz, dw, db = pick(_bwd_op, _bwd_impl, dy)(dy.contiguous(), x, z, weight, bias, *ctx.cfg)
    return dx, dz, dw, (db if bias is not None else None), None, None, None, None


_norm_gate = EagerOp("NormGate", _fwd_op, _fwd_impl, _setup_context, _backward)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def _validate(x, z, weight, bias, group_size, norm, eps):
    check_tensor("x", x)
    dev = x.device
    check_tensor("z", z, device=dev)
    check_tensor("weight", weight, device=dev)
    if bias is not None:
        check_tensor("bias", bias, device=dev)
    gs = check_args(x, z, weight, bias, group_size, norm, eps)
    if not 1 <= x.shape[-1] <= MAX_D:
        raise ValueError(f"x has feature dimension D={x.shape[-1]}; supported 1..{MAX_D}")
    return gs


def norm_gate(x, z, weight, bias=None, *, group_size=None, eps: float = 1e-5, norm: str = "layer",
              norm_before_gate: bool = True):
    """y = (norm_g(x)·W + b) ⊙ silu(z) (``norm_before_gate``) or norm_g(x ⊙ silu(z))·W + b, groups of
    ``group_size`` features (default: the whole row); ``norm`` "layer" or "rms". See the module docstring."""
    gs = _validate(x, z, weight, bias, group_size, norm, eps)
    c = lambda t: t if t is None or t.is_contiguous() else t.contiguous()  # noqa: E731
    return _norm_gate(_rows_view(x), _rows_view(z), c(weight), c(bias), gs, float(eps), norm,
                      bool(norm_before_gate))
