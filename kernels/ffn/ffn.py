"""The feed-forward y = act(x W_upᵀ) W_downᵀ with the activation in the GEMMs' epilogues (issue 10: the FFN's
GELU forward and backward were two elementwise launches a layer over [B·T, 4D], 16 a step of 8 layers).

Math (see reference/ffn.py): x [M, D], W_up [F, D], W_down [D, F] (nn.Linear layouts, no bias)::

    h = x W_upᵀ;   a = act(h);   y = a W_downᵀ                               (forward)
    dA = dY W_down;   dH = dA ⊙ act'(h)                                         (backward)
    dW_down = dYᵀ a;   dX = dH W_up;   dW_up = dHᵀ x

    gelu (exact, erf):  act(h) = h Φ(h) = h/2 (1 + erf(h/√2)),   act'(h) = Φ(h) + h φ(h),  φ(h) = e^{−h²/2}/√(2π)
    relu2:              act(h) = relu(h)²,                         act'(h) = 2 relu(h)

Launches (4 + 2 = 6 a layer; the unfused chain: up, GELU, down forward, down's two GEMMs, GELU backward, up's two
GEMMs = 3 + 5 = 8):
* ``_ffn_up_kernel``, grid (row blocks of BM × column blocks of BN over F): the [BM, BN] tile of h by a D-loop of
  dots (fp32 accumulation); epilogue: h rounded to x's dtype and stored (the backward's act'(h)), a = act(h) from
  the unrounded fp32 h, rounded and stored. Then y = a W_downᵀ on cuBLAS (``torch.mm``).
* ``_ffn_dact_kernel``, same grid: the [BM, BN] tile of dA = dY W_down by a D-loop of dots; epilogue: the saved h
  tile loaded, dH = dA ⊙ act'(h) in fp32, rounded once and stored. Then dW_down, dX, dW_up on cuBLAS.
Both kernels hold their tile as two [BM, BN/2] column halves (two dots a K step on one A tile) and run the epilogue
on one half, then the other: the erf / exp epilogue over a whole 64-value-a-thread tile took 255 registers (two
4-warp programs an SM) where one half at a time takes ≤ 168 (three). The dact kernel's constexpr HE (0, 1, 2; an
autotune choice) is how many of the saved h halves are loaded before the K loop, their latency under the mainloop's
(each one early costs ~16-32 registers a thread: 136 / 168 / 174 at 64×128, 4 warps).
Saved for the backward: x, h, a (and the weights), as autograd saves for the unfused chain; no workspace.

Tiles: ``@triton.autotune`` over ≤ 8 (BM, BN, BK, warps, stages[, HE]) configs a kernel (BN/2 ≥ 16: a dot's least
width) keyed on (N, K) = (F, D) and the dtype, never on M (the step's M = B·T is fixed; a new M must not re-tune);
one small config under the interpreter (``kernels._common.autotune_configs``). The kernels' constexprs: ACT (0 gelu,
1 relu2), PREC (tl.dot's input_precision, ``kernels._common.dot_precision``: "ieee" for fp32 inputs, else "tf32",
ignored by fp16 / bf16 dots), BM × BN × BK (the tile and K step), HE (the dact kernel's early h halves, above). The
kernels only write their outputs, so the autotuner's repeated runs are harmless. Row offsets are int64 (M·F may
exceed 2³¹).

Layouts: x [..., D] viewed as [M, D]; weights and every tensor contiguous. Dtypes: x fp32 / fp16 / bf16; the
weights cast to x's dtype (under autocast all three cast to autocast's dtype first, as nn.Linear would; the step's
bf16 weight copy is then not cast again); h, a, y, dH in that dtype; dx, dW_up, dW_down in their inputs' dtypes.
fp32 inputs take "ieee" dots (fp32-accurate); fp16 / bf16 native tensor-core dots with fp32 accumulation.

Custom ops ``groundthink::ffn_fwd`` / ``_bwd`` (fake implementations, one registered autograd formula), run eagerly
without the dispatcher through ``kernels._eager``, as every glue op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from groundthink.device import autocast_dtype
from kernels import INTERPRET
from kernels._common import (autotune_configs, cdiv as _cdiv, check_tensor, dot_precision, grid_bucket, launch,
                             new_empty)
from kernels._eager import EagerOp, pick
from reference.ffn import ACTS, check_args

__all__ = ["ffn"]

_ACT = {a: i for i, a in enumerate(ACTS)}          # the ACT constexpr: 0 gelu, 1 relu2


def _cfg(bm, bn, bk, warps, stages, maxnreg=None, **kw):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, **kw}, num_warps=warps, num_stages=stages, maxnreg=maxnreg)


# the GPU candidates (the step's shapes: M 16384, (F, D) = (512, 128) small and (2048, 512) large), ≤ 8 a kernel
# (each one is compiled at the first call: the gate's first-use budget); run 22's picks (up 128×128×64 w8 s3 small,
# 64×64×64 w4 s4 large; dact 64×128×64 w4 s3 both) are kept. Registers a thread and programs an SM from the offline
# sm_90 compile (scripts/gpu_ffn.py --regs, Triton 3.9 and 3.6; notes/glue.md): up 69-161 (1-7 programs); dact 72-168,
# the 4-warp 64×128 / 128×64 tiles at 168 with one h half loaded early (three programs an SM, as with none), the
# small tiles at 4-7 programs an SM (the small shape's dact is memory-bound: more loads in flight). The 8-warp
# 128×128 tiles take 132-138 registers, one program an SM; capped at 128 (maxnreg) two fit (shared memory 96 KB):
# dact then spills nothing (Triton 3.6), up 48 B, all after the K loop (its GELU epilogue, once a program).
# The interpreter's one config is small, so that CPU tests cross tile edges in every dimension.
_UP = [_cfg(128, 128, 64, 8, 3), _cfg(128, 64, 64, 4, 3), _cfg(64, 128, 64, 4, 3), _cfg(64, 64, 64, 4, 4),
       _cfg(128, 64, 64, 4, 2), _cfg(64, 64, 32, 4, 3), _cfg(128, 64, 128, 4, 2), _cfg(128, 128, 64, 8, 3, maxnreg=128)]
_DACT = [_cfg(64, 128, 64, 4, 3, HE=1), _cfg(128, 64, 64, 4, 3, HE=1), _cfg(128, 64, 32, 4, 4, HE=0),
         _cfg(64, 64, 64, 4, 3, HE=2), _cfg(64, 64, 32, 4, 3, HE=1), _cfg(256, 64, 64, 8, 2, HE=0),
         _cfg(128, 64, 128, 4, 2, HE=0), _cfg(128, 128, 64, 8, 3, maxnreg=128, HE=0)]
UP_CONFIGS = autotune_configs([_cfg(32, 32, 16, 4, 1)] if INTERPRET else _UP)
DACT_CONFIGS = autotune_configs([_cfg(32, 32, 16, 4, 1, HE=1)] if INTERPRET else _DACT)


@triton.jit
def _gelu_parts(b_h):
    """(Φ(h), φ(h)) in fp32: the normal CDF and density."""
    b_cdf = 0.5 * (1. + tl.math.erf(b_h * 0.7071067811865476))
    b_pdf = tl.exp(-0.5 * b_h * b_h) * 0.3989422804014327
    return b_cdf, b_pdf


@triton.jit
def _mm2(p_a, p_b, o_m, m_m, o_n, m_n0, m_n1, K, sbk, sbn, PREC: tl.constexpr, BM: tl.constexpr,
         BH: tl.constexpr, BK: tl.constexpr):
    """The [BM, 2·BH] fp32 tile of A B, as its two [BM, BH] column halves (columns o_n and o_n + BH, masks m_n0 and
    m_n1), for A [M, K] row-major and B [K, N] with strides (sbk, sbn); masked rows / columns give 0. Two dots a
    K step share the A tile; the halves let the epilogue run on one half at a time (fewer live registers). The
    pointer tiles are formed once (o_m is int64) and advanced by BK."""
    o_k = tl.arange(0, BK)
    p_at = p_a + o_m[:, None] * K + o_k[None, :]
    p_bt = p_b + o_k[:, None] * sbk + o_n[None, :] * sbn
    b_acc0 = tl.zeros([BM, BH], dtype=tl.float32)
    b_acc1 = tl.zeros([BM, BH], dtype=tl.float32)
    for k0 in range(0, K, BK):
        m_k = o_k < K - k0
        b_a = tl.load(p_at, mask=m_m[:, None] & m_k[None, :], other=0.)
        b_b0 = tl.load(p_bt, mask=m_k[:, None] & m_n0[None, :], other=0.)
        b_b1 = tl.load(p_bt + BH * sbn, mask=m_k[:, None] & m_n1[None, :], other=0.)
        b_acc0 += tl.dot(b_a, b_b0, input_precision=PREC)
        b_acc1 += tl.dot(b_a, b_b1, input_precision=PREC)
        p_at += BK
        p_bt += BK * sbk
    return b_acc0, b_acc1


@triton.jit
def _tile(M, N, BM: tl.constexpr, BN: tl.constexpr):
    """This program's rows (int64) and first column half (BN/2 columns; the second is BN/2 further), with their
    masks: the N tiles of one row block run adjacently (its x / dY rows are read once from HBM; the weights, ≤ 2 MB,
    stay in L2)."""
    i_p = tl.program_id(0)
    n_n = tl.cdiv(N, BN)
    o_m = ((i_p // n_n) * BM + tl.arange(0, BM)).to(tl.int64)
    o_n = (i_p % n_n) * BN + tl.arange(0, BN // 2)
    return o_m, o_m < M, o_n, o_n < N, o_n + BN // 2 < N


@triton.jit
def _up_epilogue(b_h, p_h, p_a, o_mn, m_mn, ACT: tl.constexpr):
    """One column half of the up kernel's epilogue: h stored rounded, a = act(h) from the fp32 h."""
    tl.store(p_h + o_mn, b_h.to(p_h.dtype.element_ty), mask=m_mn)
    if ACT == 0:
        b_cdf, _ = _gelu_parts(b_h)
        b_a = b_h * b_cdf
    else:
        b_r = tl.maximum(b_h, 0.)
        b_a = b_r * b_r
    tl.store(p_a + o_mn, b_a.to(p_a.dtype.element_ty), mask=m_mn)


@triton.jit
def _dact_epilogue(b_da, b_h, p_dh, o_mn, m_mn, ACT: tl.constexpr):
    """One column half of the dact kernel's epilogue: dH = dA ⊙ act'(h) in fp32, rounded once and stored."""
    b_h = b_h.to(tl.float32)
    if ACT == 0:
        b_cdf, b_pdf = _gelu_parts(b_h)
        b_d = b_cdf + b_h * b_pdf
    else:
        b_d = 2. * tl.maximum(b_h, 0.)
    tl.store(p_dh + o_mn, (b_da * b_d).to(p_dh.dtype.element_ty), mask=m_mn)


@triton.autotune(configs=UP_CONFIGS, key=["N", "K", "ACT", "GRID_BUCKET"])
@triton.jit(do_not_specialize=["GRID_BUCKET"])
def _ffn_up_kernel(p_x, p_w, p_h, p_a, M, N, K, GRID_BUCKET, ACT: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr):
    # p_x: [M, K] (x, K = D); p_w: [N, K] (W_up, N = F); p_h, p_a: [M, N] out (h = x W_upᵀ and act(h), x's dtype);
    # GRID_BUCKET: autotune key only (``kernels._common.grid_bucket`` of M: the programs scale with the rows)
    BH: tl.constexpr = BN // 2
    o_m, m_m, o_n, m_n0, m_n1 = _tile(M, N, BM, BN)
    b_h0, b_h1 = _mm2(p_x, p_w, o_m, m_m, o_n, m_n0, m_n1, K, 1, K, PREC, BM, BH, BK)
    o_mn = o_m[:, None] * N + o_n[None, :]
    _up_epilogue(b_h0, p_h, p_a, o_mn, m_m[:, None] & m_n0[None, :], ACT)
    _up_epilogue(b_h1, p_h, p_a, o_mn + BH, m_m[:, None] & m_n1[None, :], ACT)


@triton.autotune(configs=DACT_CONFIGS, key=["N", "K", "ACT", "GRID_BUCKET"])
@triton.jit(do_not_specialize=["GRID_BUCKET"])
def _ffn_dact_kernel(p_dy, p_w, p_h, p_dh, M, N, K, GRID_BUCKET, ACT: tl.constexpr, PREC: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HE: tl.constexpr):
    # p_dy: [M, K] (dL/dy, K = D); p_w: [K, N] (W_down, N = F); p_h: [M, N] (the forward's saved h);
    # p_dh: [M, N] out (dL/dh = (dY W_down) ⊙ act'(h), h's dtype); HE: how many of the two [BM, BN/2] saved-h
    # column halves are loaded before the K loop (0, 1, 2; the rest after it, each just before its epilogue);
    # GRID_BUCKET as the up kernel's
    BH: tl.constexpr = BN // 2
    o_m, m_m, o_n, m_n0, m_n1 = _tile(M, N, BM, BN)
    o_mn = o_m[:, None] * N + o_n[None, :]
    m_mn0 = m_m[:, None] & m_n0[None, :]
    m_mn1 = m_m[:, None] & m_n1[None, :]
    if HE >= 1:
        b_h0 = tl.load(p_h + o_mn, mask=m_mn0, other=0.)
    if HE >= 2:
        b_h1 = tl.load(p_h + o_mn + BH, mask=m_mn1, other=0.)
    b_da0, b_da1 = _mm2(p_dy, p_w, o_m, m_m, o_n, m_n0, m_n1, K, N, 1, PREC, BM, BH, BK)
    if HE < 1:
        b_h0 = tl.load(p_h + o_mn, mask=m_mn0, other=0.)
    _dact_epilogue(b_da0, b_h0, p_dh, o_mn, m_mn0, ACT)
    if HE < 2:
        b_h1 = tl.load(p_h + o_mn + BH, mask=m_mn1, other=0.)
    _dact_epilogue(b_da1, b_h1, p_dh, o_mn + BH, m_mn1, ACT)


def _grid(M, N):
    return lambda meta: (_cdiv(M, meta["BM"]) * _cdiv(N, meta["BN"]),)


def _fwd_impl(x, w_up, w_down, act):
    M, D = x.shape
    Fh = w_up.shape[0]
    h = new_empty((M, Fh), x.dtype, x.device)
    a = new_empty((M, Fh), x.dtype, x.device)
    if M:
        launch(_ffn_up_kernel)[_grid(M, Fh)](x, w_up, h, a, M, Fh, D, grid_bucket(M), ACT=_ACT[act],
                                             PREC=dot_precision(x.dtype))
    y = torch.mm(a, w_down.t())           # cuBLAS; autocast (if on) leaves it alone: all in one dtype already
    return y, h, a


def _bwd_impl(dy, x, w_up, w_down, h, a, act):
    M, D = x.shape
    Fh = w_up.shape[0]
    dh = new_empty((M, Fh), h.dtype, h.device)
    if M:
        launch(_ffn_dact_kernel)[_grid(M, Fh)](dy, w_down, h, dh, M, Fh, D, grid_bucket(M), ACT=_ACT[act],
                                               PREC=dot_precision(h.dtype))
    else:
        dh.zero_()
    dw_down = torch.mm(dy.t(), a)         # [D, F]
    dx = torch.mm(dh, w_up)               # [M, D]
    dw_up = torch.mm(dh.t(), x)           # [F, D]
    return dx, dw_up, dw_down


@torch.library.custom_op("groundthink::ffn_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
            act: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(x, w_up, w_down, act)


@_fwd_op.register_fake
def _(x, w_up, w_down, act):
    hid = x.new_empty((x.shape[0], w_up.shape[0]))
    return x.new_empty((x.shape[0], w_down.shape[0])), hid, torch.empty_like(hid)


@torch.library.custom_op("groundthink::ffn_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, h: torch.Tensor,
            a: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(dy, x, w_up, w_down, h, a, act)


@_bwd_op.register_fake
def _(dy, x, w_up, w_down, h, a, act):
    return torch.empty_like(x), torch.empty_like(w_up), torch.empty_like(w_down)


def _setup_context(ctx, inputs, output):
    x, w_up, w_down, act = inputs
    _, h, a = output
    ctx.save_for_backward(x, w_up, w_down, h, a)
    ctx.act = act
    ctx.mark_non_differentiable(h, a)
    ctx.set_materialize_grads(False)   # no zero tensors made for h's and a's (never given) gradients


def _backward(ctx, dy, _dh, _da):
    x, w_up, w_down, h, a = ctx.saved_tensors
    dx, dw_up, dw_down = pick(_bwd_op, _bwd_impl, dy)(dy.contiguous(), x, w_up, w_down, h, a, ctx.act)
    return dx, dw_up, dw_down, None


_ffn = EagerOp("FFN", _fwd_op, _fwd_impl, _setup_context, _backward)


def ffn(x, w_up, w_down, act="gelu"):
    """act(x w_upᵀ) w_downᵀ: x [..., D], w_up [F, D], w_down [D, F] → [..., D]; act "gelu" (exact) or "relu2".
    See the module docstring."""
    for name, t in (("x", x), ("w_up", w_up), ("w_down", w_down)):
        check_tensor(name, t, device=x.device if name != "x" else None)
    check_args(x, w_up, w_down, act)
    cdt = autocast_dtype(x.device.type) or x.dtype       # the products' dtype (reference/ffn.py): casts only if
    x, w_up, w_down = x.to(cdt), w_up.to(cdt), w_down.to(cdt)   # needed (the step's bf16 weights are not cast again)
    lead, D = x.shape[:-1], x.shape[-1]
    y, _, _ = _ffn(x.reshape(-1, D).contiguous(), w_up.contiguous(), w_down.contiguous(), act)
    return y if x.dim() == 2 else y.view(*lead, D)
