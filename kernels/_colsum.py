"""Column sums finished inside the kernel that made the partials (the glue ops' parameter gradients).

A persistent backward program accumulates its share of a column reduction (dW = Σ_rows …) in fp32 registers and
stores it as one partial row of a workspace ``part [P, W]`` (P programs). Instead of a separate ``part.sum(0)``
launch (plus a cast or copy per gradient), the program that finishes LAST sums the P partial rows and stores the
gradient in its final dtype:

    every program:   store its partial row;  barrier;  n = atomic_add(count, 1)        (release + acquire, gpu)
    the last one:    (n == P − 1)  count ← 0;  out[c] = Σ_{i = 0 … P−1} part[i, c]     (fixed order, fp32)

The sum runs over the rows in index order in fixed [BP, BC] tiles, so the result does not depend on which program
arrives last or on timing: bit-identical run to run, no atomics on data. The counter resets itself, so a captured
CUDA graph can replay the kernel; the counters are one cached zero-initialised int32 buffer per device
(``counters``), shared by the kernels of a stream (launches on one stream never overlap). Two grids over the same
counters must not run concurrently on different streams.

Memory ordering (the pattern of Inductor's cooperative reductions): the CTA barrier orders the program's partial
stores before its release atomic; the acquire in the last program orders its loads after every release; the
partials are loaded with ``.cg`` (L2, not a stale L1 line). Under the interpreter programs run one after another
and barriers are no-ops: the last program is the last one run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import INTERPRET

__all__ = ["counters", "finish_rows", "arrive_last", "finish_columns", "N_COUNTERS"]

N_COUNTERS = 1024            # column blocks of one grid (a grid uses counters[0 : its column blocks])
_CACHE: dict[torch.device, torch.Tensor] = {}


def counters(device: torch.device, n: int = 1) -> torch.Tensor:
    """The device's arrival counters (int32 zeros between launches); at least ``n`` of them."""
    device = torch.device(device)
    if n > N_COUNTERS:
        raise ValueError(f"a grid with {n} column blocks needs more than the {N_COUNTERS} arrival counters")
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
