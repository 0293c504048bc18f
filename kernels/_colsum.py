"""Column sums finished inside the kernel that made the partials (the glue ops' parameter gradients).

A persistent backward program accumulates its share of a column reduction (dW = Σ_rows …) in fp32 registers and
stores it as one partial row of a workspace ``part [P, W]`` (P programs). Instead of a separate ``part.sum(0)``
launch (plus a cast or copy per gradient), the sum is finished inside the same kernel, in two levels so that no
program sums more than ~2·√P rows (P ≈ 500 at a few programs per SM; one program summing all P rows of a
512-wide row would be a long serial tail):

    every program:   store its partial row; arrive at its group's counter (groups of GS consecutive programs)
    a group's last:  row g·GS ← Σ of the group's rows (fixed order);  arrive at the column block's counter
    the last group:  out[c] = Σ_g row[g·GS, c]  (fixed order, fp32), stored in the gradient's dtype

"Arrive" is a CTA barrier and one ``atomic_add(count, 1)`` (acq_rel, gpu scope); the program that sees count =
n − 1 is the last of n and resets the counter to 0. Every sum runs over rows in index order in fixed [BP, BC]
tiles, so results do not depend on which program arrives last: bit-identical run to run, no atomics on data.
The counters reset themselves, so a captured CUDA graph can replay the kernel; they are one cached
zero-initialised int32 buffer per device (``counters``), shared by the kernels of a stream (launches on one stream
never overlap). Two grids using them must not run concurrently on different streams.

Memory ordering (the pattern of Inductor's cooperative reductions): the CTA barrier orders the program's stores
before its release atomic; the acquire in the last program orders its loads after every release (transitively
through the group level); partial rows are loaded with ``.cg`` (L2, not a stale L1 line). Under the interpreter
programs run one after another and barriers are no-ops: the last program is the last one run.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import INTERPRET

__all__ = ["tree", "counters", "finish_rows", "arrive_last", "arrive_tree", "finish_columns", "store_and_finish",
           "N_COUNTERS"]

N_COUNTERS = 8192            # a grid uses counters[0 : column blocks · (1 + groups)]
_CACHE: dict[torch.device, torch.Tensor] = {}


def tree(n_progs: int) -> tuple[int, int]:
    """(GS, NG): programs per group (~√P) and the number of groups for ``n_progs`` programs."""
    gs = max(1, math.isqrt(n_progs))
    return gs, -(-n_progs // gs)


def counters(device: torch.device, n_blocks: int, n_groups: int) -> torch.Tensor:
    """The device's arrival counters (int32 zeros between launches) for a grid of ``n_blocks`` column blocks of
    ``n_groups`` groups each: block j uses [j·(1 + NG), (j + 1)·(1 + NG)) (its own counter, then its groups')."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    n = n_blocks * (1 + n_groups)
    if n > N_COUNTERS:
        raise ValueError(f"a grid of {n_blocks} column blocks × {n_groups} groups needs more than the "
                         f"{N_COUNTERS} arrival counters")
    buf = _CACHE.get(device)
    if buf is None:
        buf = _CACHE[device] = torch.zeros(N_COUNTERS, dtype=torch.int32, device=device)
    return buf


def finish_rows(BC: int, tile: int = 4096) -> int:
    """BP, the partial rows summed per step of ``finish_columns`` for BC columns: ~``tile`` fp32 elements (1 under
    the interpreter, so that tests run the row loop more than once)."""
    return 1 if INTERPRET else max(1, min(64, tile // BC))


@triton.jit
def arrive_last(p_count, n_progs):
    """Call in every program of a grid after its partial row is stored (``p_count``: this column block's counter,
    ``n_progs``: the programs sharing it). True in exactly one program, the last to arrive, which may then read
    every partial row; it resets the counter for the next launch."""
    tl.debug_barrier()
    n = tl.atomic_add(p_count, 1, sem="acq_rel", scope="gpu")
    last = n == n_progs - 1
    if last:
        tl.atomic_xchg(p_count, 0, sem="relaxed", scope="gpu")
    return last


@triton.jit
def finish_columns(p_part, stride, n_rows, p_out, c0, c1, BP: tl.constexpr, BC: tl.constexpr):
    """out[c] = Σ_{i < n_rows} part[i·stride + c] for c in [c0, c1), summed in fp32 in a fixed order and stored in
    ``p_out``'s dtype (``p_part``: fp32 partial rows ``stride`` elements apart; ``p_out``: the gradient [≥ c1])."""
    for cb in range(c0, c1, BC):
        o_c = cb + tl.arange(0, BC)
        m_c = o_c < c1
        b_acc = tl.zeros([BP, BC], dtype=tl.float32)
        for r0 in range(0, n_rows, BP):
            o_p = r0 + tl.arange(0, BP)
            m = (o_p < n_rows)[:, None] & m_c[None, :]
            b_acc += tl.load(p_part + o_p.to(tl.int64)[:, None] * stride + o_c[None, :], mask=m, other=0.,
                             cache_modifier=".cg")
        tl.store(p_out + o_c, tl.sum(b_acc, axis=0).to(p_out.dtype.element_ty), mask=m_c)


@triton.jit
def arrive_tree(p_part, W, p_count, pid, n_progs, GS, NG, c0, c1, n_seg, seg_stride,
                BP: tl.constexpr, BC: tl.constexpr):
    """Call in every program after its partial row ``pid`` of ``p_part`` (rows W elements apart) is stored. The last
    program of each group of GS sums the group's rows into its first row (columns [c0, c1) of each of ``n_seg``
    segments ``seg_stride`` apart); True in exactly one program, the last group's last, which then finishes from
    rows 0, GS, 2·GS, … (NG of them: ``finish_columns(p_part + segment, GS·W, NG, …)``). ``p_count``: the grid's
    counters (``counters``); column block ``tl.program_id(1)`` (0 in a 1-D grid) uses its own 1 + NG of them."""
    p_count += tl.program_id(1) * (1 + NG)
    g = pid // GS
    g0 = g * GS
    n = tl.minimum(GS, n_progs - g0)
    last = pid < 0
    if arrive_last(p_count + 1 + g, n):
        for s in range(n_seg):
            p_row = p_part + g0.to(tl.int64) * W + s * seg_stride
            finish_columns(p_row, W, n, p_row, c0, c1, BP, BC)
        last = arrive_last(p_count, NG)
    return last


@triton.jit
def store_and_finish(p_part, b_acc, pid, n_progs, D, o_c, m_c, p_count, GS, NG, p_out, BP: tl.constexpr,
                     BD: tl.constexpr):
    """The whole finish of ONE [D] parameter gradient whose columns the grid's second axis blocks by BD: store
    this program's fp32 partial row ``b_acc`` [BD] (row ``pid``, columns ``o_c``, mask ``m_c``), arrive, and in
    the one program that arrives last sum every row into ``p_out`` (``p_count``: the grid's counters)."""
    tl.store(p_part + pid.to(tl.int64) * D + o_c, b_acc, mask=m_c)
    c0 = tl.program_id(1) * BD
    c1 = tl.minimum(c0 + BD, D)
    if arrive_tree(p_part, D, p_count, pid, n_progs, GS, NG, c0, c1, 1, 0, BP, BD):
        finish_columns(p_part, GS * D, NG, p_out, c0, c1, BP, BD)
