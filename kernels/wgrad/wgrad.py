"""Weight-gradient GEMMs C = aᵀ b in ONE Triton launch, the split over the rows reduced inside the kernel (issue 10:
cuBLAS runs every dW = dYᵀ X of the small model's step as a split-K GEMM plus a second ``splitKreduce_kernel``
launch: 113 of the 757 launches of a step, H100 run 19).

Math (reference/wgrad.py): a [R, M], b [R, N] → C = aᵀ b [M, N] (batched: a [G, R, M], b [G, R, N] → [G, M, N]),
R the tokens (16,384 in the models' steps), M × N a weight's shape (128 × 128 … 2048 × 512)::

    C[m, n] = Σ_r a[r, m] b[r, n]          fp32 accumulation, one rounding into C's dtype

Kernel ``_wgrad_kernel``, grid (SPLIT, G · tiles): program (s, t) owns the [BM, BN] tile t of C (batch g = t //
tiles) and the rows [s·RS, (s + 1)·RS) of the reduction (RS a multiple of BR): a loop of ``tl.dot(aᵀ tile [BM, BR],
b tile [BR, BN])`` into an fp32 [BM, BN] accumulator. SPLIT = 1: the tile is stored into C. SPLIT > 1: the partial is
stored as row s of the tile's fp32 workspace ``part [G · tiles, SPLIT, BM · BN]`` and the SPLIT rows are summed
inside the kernel by one of three finishes (``TUNING["finish"]``). No atomics on data, every sum in a fixed order
that does not depend on which program arrives when: bit-identical run to run. One launch, no second reduce kernel,
no host sync. Counters: ``kernels._colsum.counters`` (zero between launches, reset by their last user: graph-safe).

* "wide" (session 17): run 19's arrival tree (``_colsum.tree``; one level — the tile's last program sums all
  SPLIT rows — up to ``flat`` rows, else two of ~√SPLIT), each level's rows summed by ``_sum_rows``: one
  [fin_rows, BF] load (every row of a column block in flight at once) summed by ``tl.sum`` over its rows (a fixed
  order for a given compile). Run 19's finish summed row by row, one L2 round trip per step (~16 serial round trips
  at a 64 × 64 tile: its time grew with the partial tile's size, not the work); it was the fastest configuration at
  no shape of run 21's sweep ("old") and is gone. What is left serial: one program per tile reads (GS + NG)
  partial tiles.
* "coope" (session 17): every program of a tile takes part in its finish — it reads the tile's epoch word
  (``_epochs``, its own buffer: not zero between launches), stores its partial, arrives (acq_rel) on the tile's
  counter; the last arrival resets the counter and moves the epoch on (release); every program waits for the
  epoch to move (acquire polls), then sums column blocks s, s + SPLIT, … of ``coop_cols`` columns of all SPLIT
  rows ([fin // coop_cols, coop_cols] loads, ``_sum_rows``) and stores them into C: each program reads one tile's
  worth of partials, all of them in parallel, instead of one program reading SPLIT tiles. The wait needs every
  program of the grid resident at once: ``_plan`` keeps G · tiles · SPLIT ≤ coop_waves × the SM count (every
  kernel that launches fits one program per SM; the wait only ends, never deadlocks, while other kernels hold SMs
  for a while); it is bounded (``_SPIN`` polls, tens of ms): a grid that could not be resident writes NaN, never
  a silent partial sum. Ordering as in _colsum: a CTA barrier before the release, loads ``.cg``. Under the
  interpreter (programs run one after another) the wait cannot be run: the host launches the grid twice, up to
  the arrival (PH 1) and from the finish on (PH 2). (A "coop" twin with a departure counter instead of the epoch
  was the fastest at one shape of run 21's sweep, 16 × 128 by 0.3 µs (6.0 vs 6.3): gone.)

Tiles and split (``_plan``, ``TUNING``): [BM, BN] = "small" tiles (64 × 64, 4 warps) unless the output has at least
``big_at`` elements (128 × 128, 8 warps); the tiles shrink to a power of two ≥ 16 for narrow outputs. SPLIT fills the
GPU ``waves`` times over (G · tiles · SPLIT ≈ waves × SMs; coope: ≤ coop_waves × SMs), with at least
``min_rows`` rows per program. The finish's load shapes depend on the tile alone (row / column-block loops at run
time, the split-like arguments not specialised): one compile per tile shape.
Shape rule (H100 run 19, `profiles/nvidia-h100-80gb-hbm3/run19-2026-11-28/kernels/`: the bench rows and
scripts/gpu_wgrad.py's sweep, CUDA-graph µs per call, run 19's finish): cuBLAS's split-K GEMM + its reduce kernel
beat this kernel at every 2-D model shape (128 × 128: 6.6 vs 13–15 µs; 512 × 512: 24.7 vs 39–51; 2048 × 512: 49.8 vs
111–143; a tie at 16 × 128 and 97 × 128), so 2-D calls go to torch.mm (``TUNING["two_d"]`` False). The kernel wins
where cuBLAS runs a batched GEMM one group at a time: the lowrank's five-group dW2 at the small model (G5 32 × 128:
13.2 vs 26.2 µs), not at the large (G5 32 × 512: 41–54 vs 31.8), hence the output bound ``cublas_at`` (G · M · N <
32,768). The session-17 finishes on an H200 (run 21, `profiles/nvidia-h200/run21-2026-11-28/final/wgrad/`): wide
12.7, coope 7.0 µs at 128 × 128 (cuBLAS 6.1); coope 9.6 / 15.1 at 256 / 512 × 128 (8.6 / 9.6): still behind at the
small model's 2-D shapes, so the rule stays run 19's (the small step with coope for every 2-D dW: 592 launches, 1–2 %
slower). The 64² tiles read each input twice; the sweep's 128² / 128 × 64 coope columns are untimed. Float64 inputs
(the oracle's dtype; the kernel's dots are fp32 at best) and calls under a tracer
(torch.compile) go to torch.mm too. Tests and the sweep force the kernel (``two_d`` True, ``cublas_at`` ∞).

Layouts: any strides (a column slice of a wider matrix, h's column groups as a strided [G, R, M] view): every
operand's pointer arithmetic takes its strides, Triton specialises unit strides. ``out`` any strides as well (a row
block ``dw[a:b]`` of a larger buffer). int64 row offsets. Dtypes: a, b fp16 / bf16 (tensor-core dots, fp32
accumulation) or fp32: "ieee" dots (fp32-exact, FMA) at ``torch.get_float32_matmul_precision()`` "highest" (tests,
the CPU interpreter), else "tf32x3" (three TF32 tensor-core products: fp32-level error — the gate checks fp32 calls
against the fp32 bound — at a fraction of FMA's time; train.py on a GPU sets "high", and the embedding's one-hot
GEMM reads the fp32 dh); C in the inputs' dtype, or ``out``'s (fp32 allowed: the fp32 sum is
rounded once into it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._colsum import arrive_last, counters, tree, N_COUNTERS
from kernels._common import cdiv, new_empty, num_sms, pow2
from kernels._eager import traced
from reference.wgrad import check_args, wgrad as _reference

__all__ = ["wgrad"]

# "small"/"big": (BM, BN, BR, warps); big tiles from big_at output elements on; SPLIT so that G·tiles·SPLIT ≈ waves ×
# SMs, ≥ min_rows rows each; stages: the software pipeline depth of the row loop. The shape rule (module docstring):
# 2-D calls to torch.mm unless two_d, outputs of cublas_at elements or more to torch.mm. H100 run 19 sweep: the
# tiles and waves as here were best or within 10 % where the kernel is used (G5 32 × 128)
# finish (of split > 1, module docstring): "wide" or "coope"; flat: the wide finish sums up to flat splits in ONE
# level, more in two of ~√split rows; fin: fp32 elements per finish load, [fin_rows, fin // fin_rows] (wide) or
# [fin // coop_cols, coop_cols] (coope); coop_waves: the coope grid ≤
# coop_waves × SMs programs (2 needs two programs resident per SM: 64² tiles, 4 warps, ≤ 96 KB shared do)
TUNING = {"small": (64, 64, 64, 4), "big": (128, 128, 64, 8), "big_at": 256 * 512, "waves": 2, "min_rows": 256,
          "stages": 3, "two_d": False, "cublas_at": 32768, "finish": "wide", "flat": 8, "fin": 8192, "fin_rows": 8,
          "coop_cols": 128, "coop_waves": 1}


FINISHES = ("wide", "coope")
_EPOCHS: dict[torch.device, torch.Tensor] = {}
_SPIN = 1 << 15                         # the coope wait's most polls (~tens of ms): a grid that cannot be resident
                                        # at once writes NaN instead of hanging


@triton.jit
def _sum_rows(p_rows, stride, n, o_f, RP: tl.constexpr, BF: tl.constexpr):
    """Σ_{i < n} rows[i·stride + o_f] → [BF] fp32 in [RP, BF] loads (one when n ≤ RP: every row in flight at once;
    masked rows 0), each summed by tl.sum over its rows: a fixed reduction order for a given compile, so the same
    bits every run. ``p_rows``: fp32 partial rows ``stride`` elements apart; ``o_f`` [BF]: the columns."""
    b_s = tl.zeros([BF], dtype=tl.float32)
    for r0 in range(0, n, RP):
        o_i = r0 + tl.arange(0, RP)
        b_s += tl.sum(tl.load(p_rows + o_i.to(tl.int64)[:, None] * stride + o_f[None, :], mask=(o_i < n)[:, None],
                              other=0., cache_modifier=".cg"), axis=0)
    return b_s


@triton.jit(do_not_specialize=["n_tn", "tiles", "split", "GS", "NG", "CS"])
def _wgrad_kernel(p_a, p_b, p_c, p_part, p_count, p_epoch, R, M, N, RS, n_tn, tiles, split, GS, NG, CS,
                  s_ag, s_ar, s_am, s_bg, s_br, s_bn, s_cg, s_cm, s_cn,
                  ONE: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
                  COOP: tl.constexpr, TWO: tl.constexpr, RP: tl.constexpr, BF: tl.constexpr, CW: tl.constexpr,
                  RB: tl.constexpr, PH: tl.constexpr, SPIN: tl.constexpr):
    # p_a: [G, R, M] (strides s_ag, s_ar, s_am); p_b: [G, R, N] (s_bg, s_br, s_bn); p_c: [G, M, N] out (s_cg, s_cm,
    # s_cn), C = aᵀ b per batch; p_part: [G·tiles, split, BM·BN] fp32 workspace (split > 1) else None; p_count: the
    # arrival counters (kernels._colsum.counters: CS per tile) or None; p_epoch: coope's epoch words (_epochs, one
    # per tile) or None; R, M, N: the sizes; RS: rows per split (a multiple of BR); n_tn: tiles along N; tiles:
    # tiles per batch; split: programs per tile along the rows (the grid's first axis); ONE: split == 1 (C stored
    # directly); PREC: the dots' input precision; BM, BN: C's tile; BR: rows per dot. The finish of split > 1: COOP
    # False "wide" (TWO: groups of GS programs, NG groups, else one level: GS = 1, NG = split; [RP, BF]: rows and
    # columns per _sum_rows load), True "coope" (every program of the tile waits for all split partial rows, then
    # sums column blocks i_s, i_s + split, … of CW columns of them in [RB, CW] loads; SPIN: the most polls of the
    # wait; PH: 0 all, 1 up to the arrival, 2 from the wait on — the interpreter runs programs one after another, so
    # it launches PH 1 then PH 2). CS: counters per tile (two-level wide: 1 + NG; flat wide and coope: 1)
    i_s, i_t = tl.program_id(0), tl.program_id(1)
    i_g = i_t // tiles
    i_mn = i_t % tiles
    i_m, i_n = i_mn // n_tn, i_mn % n_tn
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = i_n * BN + tl.arange(0, BN)
    m_m, m_n = o_m < M, o_n < N
    p_ag = p_a + i_g.to(tl.int64) * s_ag
    p_bg = p_b + i_g.to(tl.int64) * s_bg
    b_acc = tl.zeros([BM, BN], dtype=tl.float32)
    if COOP and not ONE and PH != 2:                         # coope: the tile's epoch, read before arriving
        e0 = tl.atomic_add(p_epoch + i_t, 0, sem="relaxed", scope="gpu")
    if PH != 2:
        r0 = i_s * RS
        r1 = tl.minimum(r0 + RS, R)
        for r in range(r0, r1, BR):
            o_r = (r + tl.arange(0, BR)).to(tl.int64)
            m_r = o_r < r1
            b_a = tl.load(p_ag + o_r[:, None] * s_ar + o_m[None, :] * s_am, mask=m_r[:, None] & m_m[None, :],
                          other=0.)
            b_b = tl.load(p_bg + o_r[:, None] * s_br + o_n[None, :] * s_bn, mask=m_r[:, None] & m_n[None, :],
                          other=0.)
            b_acc += tl.dot(tl.trans(b_a), b_b, input_precision=PREC)
    p_cg = p_c + i_g.to(tl.int64) * s_cg
    p_ct = p_cg + o_m[:, None] * s_cm + o_n[None, :] * s_cn
    m_c = m_m[:, None] & m_n[None, :]
    if ONE:
        tl.store(p_ct, b_acc.to(p_c.dtype.element_ty), mask=m_c)
    else:
        W: tl.constexpr = BM * BN
        o_w = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        p_tile = p_part + i_t.to(tl.int64) * split * W          # this tile's split partial rows
        if PH != 2:
            tl.store(p_tile + i_s * W + o_w, b_acc)
        p_cnt = p_count + i_t * CS                               # this tile's counters: [tile, group 0, 1, …]
        if not COOP:                                             # wide
            if TWO:
                g0 = (i_s // GS) * GS
                last = i_s < 0
                if arrive_last(p_cnt + 1 + i_s // GS, tl.minimum(GS, split - g0)):
                    p_g = p_tile + g0.to(tl.int64) * W           # the group's sum → its first row
                    for f0 in range(0, W, BF):
                        o_f = f0 + tl.arange(0, BF)
                        tl.store(p_g + o_f, _sum_rows(p_g, W, tl.minimum(GS, split - g0), o_f, RP, BF))
                    last = arrive_last(p_cnt, NG)
            else:
                last = arrive_last(p_cnt, split)
            if last:                                             # C's tile = Σ of rows 0, GS, 2·GS, … (NG)
                for f0 in range(0, W, BF):
                    o_f = f0 + tl.arange(0, BF)
                    b_s = _sum_rows(p_tile, GS * W, NG, o_f, RP, BF)
                    o_fm = i_m * BM + o_f // BN
                    o_fn = i_n * BN + o_f % BN
                    tl.store(p_cg + o_fm * s_cm + o_fn * s_cn, b_s.to(p_c.dtype.element_ty),
                             mask=(o_fm < M) & (o_fn < N))
        else:                                                    # coope: every program finishes CW columns
            if PH != 2:
                tl.debug_barrier()                               # the CTA's partial stores before the release
                if tl.atomic_add(p_cnt, 1, sem="acq_rel", scope="gpu") == split - 1:
                    tl.atomic_xchg(p_cnt, 0, sem="relaxed", scope="gpu")   # the last arrival resets the counter,
                    tl.atomic_add(p_epoch + i_t, 1, sem="release", scope="gpu")   # then opens the epoch
            if PH != 1:
                if PH == 2:                                      # (interpreter: every program has arrived)
                    ok = i_s >= 0
                else:
                    e = tl.atomic_add(p_epoch + i_t, 0, sem="acquire", scope="gpu")
                    k = 0
                    while (e == e0) & (k < SPIN):                # the epoch moves once all split rows are stored
                        e = tl.atomic_add(p_epoch + i_t, 0, sem="acquire", scope="gpu")
                        k += 1
                    ok = e != e0
                tl.debug_barrier()
                for f0 in range(i_s * CW, W, split * CW):       # this program's column blocks
                    o_f = f0 + tl.arange(0, CW)
                    b_s = _sum_rows(p_tile, W, split, o_f, RB, CW)
                    b_s = tl.where(ok, b_s, float("nan"))        # a timed-out wait: NaN, never a partial sum
                    o_fm = i_m * BM + o_f // BN
                    o_fn = i_n * BN + o_f % BN
                    tl.store(p_cg + o_fm * s_cm + o_fn * s_cn, b_s.to(p_c.dtype.element_ty),
                             mask=(o_fm < M) & (o_fn < N))


def _tile(M, N, G):
    """(BM, BN, BR, warps) for a [G, M, N] output: TUNING's small or big tiles, shrunk to M, N (powers of 2 ≥ 16)."""
    t = TUNING
    bm, bn, br, warps = t["big"] if G * M * N >= t["big_at"] else t["small"]
    return min(bm, max(16, pow2(M))), min(bn, max(16, pow2(N))), br, warps


def _plan(R, M, N, G, device):
    """(BM, BN, BR, warps, SPLIT, RS): the tiles, then SPLIT programs per tile of RS rows each (module docstring)."""
    BM, BN, BR, warps = _tile(M, N, G)
    n_tiles = G * cdiv(M, BM) * cdiv(N, BN)
    if TUNING["finish"] == "coope":      # every program resident at once: the grid within coop_waves waves of SMs
        split = max(1, min(TUNING["coop_waves"] * num_sms(device) // n_tiles, R // TUNING["min_rows"]))
    else:
        split = max(1, min(cdiv(TUNING["waves"] * num_sms(device), n_tiles), R // TUNING["min_rows"]))
    while split > 1 and n_tiles * _levels(split)[3] > N_COUNTERS:         # the counters of one grid
        split //= 2
    rs = cdiv(cdiv(R, split), BR) * BR
    return BM, BN, BR, warps, cdiv(R, rs) if R else 1, rs


def _levels(split):
    """(TWO, GS, NG, CS): the finish's arrival tree for ``split`` partial rows per tile — "wide": one level (GS 1,
    NG = split: the tile's last program sums every row) up to TUNING["flat"] rows, else two of ~√split
    (``_colsum.tree``); "coope": one counter, no tree; CS the counters per tile."""
    if TUNING["finish"] not in FINISHES:
        raise ValueError(f"wgrad: TUNING finish {TUNING['finish']!r}; accepted: {', '.join(FINISHES)}")
    if TUNING["finish"] == "coope":
        return False, split, 1, 1
    if split <= TUNING["flat"]:
        return False, 1, split, 1
    gs, ng = tree(split)
    return True, gs, ng, 1 + ng


def _epochs(device) -> torch.Tensor:
    """The coope finish's epoch words, one int32 per tile of a grid (``N_COUNTERS``), cached per device: NOT the
    shared zero-between-launches counters (an epoch only moves on, by one per launch, wrapping harmlessly)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    buf = _EPOCHS.get(device)
    if buf is None:
        buf = _EPOCHS[device] = torch.zeros(N_COUNTERS, dtype=torch.int32, device=device)
    return buf


def _use_kernel(a, b) -> bool:
    """The module docstring's shape rule: False for torch.mm (2-D calls unless ``two_d``, outputs of ≥ cublas_at
    elements, float64, a tracer)."""
    G = a.shape[0] if a.dim() == 3 else 1
    return (a.dtype != torch.float64 and not traced(a) and not traced(b) and (a.dim() == 3 or TUNING["two_d"])
            and G * a.shape[-1] * b.shape[-1] < TUNING["cublas_at"])


def _prec(dtype) -> str:
    """The dots' input precision (module docstring; fp16 / bf16 dots ignore it)."""
    if dtype != torch.float32:
        return "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32x3"


def wgrad(a, b, out=None):
    """C = aᵀ b: a [R, M], b [R, N] → [M, N] (batched a [G, R, M], b [G, R, N] → [G, M, N]), in the inputs' dtype or
    written into ``out`` and returned. One launch; see the module docstring."""
    check_args(a, b, out)
    if not _use_kernel(a, b):
        return _reference(a, b, out)
    if a.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"wgrad: a is on {a.device}: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1)")
    a3, b3 = (a, b) if a.dim() == 3 else (a.unsqueeze(0), b.unsqueeze(0))
    G, R, M = a3.shape
    N = b3.shape[2]
    c = out if out is not None else new_empty((*a.shape[:-2], M, N), a.dtype, a.device)
    if c.numel() == 0:
        return c
    if R == 0:
        return c.zero_()
    c3 = c if c.dim() == 3 else c.unsqueeze(0)
    BM, BN, BR, warps, split, rs = _plan(R, M, N, G, a.device)
    n_tn = cdiv(N, BN)
    tiles = cdiv(M, BM) * n_tn
    two, GS, NG, CS = _levels(split)
    part = count = None
    W = BM * BN
    if split > 1:
        part = new_empty((G * tiles, split, W), torch.float32, a.device)
        count = counters(a.device, G * tiles, CS - 1)
    coop = TUNING["finish"] == "coope"
    epoch = _epochs(a.device) if split > 1 and coop else None
    RP = TUNING["fin_rows"]
    CW = min(W, TUNING["coop_cols"])
    for ph in ((1, 2) if coop and split > 1 and INTERPRET else (0,)):
        _wgrad_kernel[(split, G * tiles)](
            a3, b3, c3, part, count, epoch, R, M, N, rs, n_tn, tiles, split, GS, NG, CS,
            *a3.stride(), *b3.stride(), *c3.stride(),
            ONE=split == 1, PREC=_prec(a.dtype), BM=BM, BN=BN, BR=BR, COOP=coop, TWO=two, RP=RP,
            BF=min(W, max(1, TUNING["fin"] // RP)), CW=CW, RB=max(1, TUNING["fin"] // CW), PH=ph, SPIN=_SPIN,
            num_warps=warps, num_stages=TUNING["stages"])
    return c
