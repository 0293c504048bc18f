"""Tensor-core chunk algorithm (``wkv6``, the default): 16-row blocks whose scores are ``tl.dot``s that stay exact
under any decay, states carried every 16 rows (custom ops ``groundthink::wkv6_fwd`` / ``wkv6_bwd``).

Every program holds only [16, K] / [16, V] / [16, 16] tiles plus one or two [K, BV] fp32 states (no [64, 64]
operands: the previous 64-row level version spilled 236–920 registers per thread on the H100).

Blocks. The sequence is cut into blocks of SB = 16 rows. Within a block, with w the clamped log-decay:
    P_t = Σ_{block start ≤ x < t} w_x   (exclusive prefix),   R_s = Σ_{s < x ≤ block end} w_x   (exclusive suffix),
    W = Σ_block w                        (every one a sum of terms of one sign; exp(P), exp(R) ≤ 1)
and with S the state at the block start (K×V, fp32):
    o = (q ⊙ exp(P)) S + A v,      S ← diag(exp(W)) S + (k ⊙ exp(R))ᵀ v.

Diagonal scores A [16, 16] by level: a pair (query t, key s < t) has the level m = highest bit in which t and s
differ (t in the upper, s in the lower 2^m-half of one 2^(m+1)-row segment), and its decay splits exactly at that
boundary: E_ts = exp(Σ_{s<x<t} w_x) = exp(P^m_t) · exp(R^m_s) with P^m, R^m the segment-local exclusive prefix /
suffix sums (both ≤ 0). So level m is one masked dot of decayed operands:
    A = Σ_{m<4} M_m ⊙ ((q ⊙ exp(P^m)) (k ⊙ exp(R^m))ᵀ) + diag(Σ_k q u k)      (level 0: adjacent rows, no decay)
exp(P^m), exp(R^m) are segmented cumprods of exp(w) shifted by one row (w_{t−1}, w_{t+1} loaded as tiles): every
factor ≤ 1, no difference of prefix sums, safe at w = −60 per step (the products underflow to the correct 0).

Forward. ``SEQ`` mode (grid V-blocks × sequence·heads): one program walks its sequence block by block with S in
registers (and stores S at every ``state_rows``-row chunk start when the backward will need it; BV 64 or 32: the
autotuner's pick). Otherwise the chunk-state pass of ``states.py`` gives S at every 64-row chunk start and one
program per (chunk, V-block, head) walks the chunk's four blocks. (The walk split in two — ``fwd_split``: every
block's state-free work in one parallel pass through fp32 intermediates first, H100 run 10: 309 vs 397 µs of forward
at B16 T1024 H8 — was removed in session 28 once the scored walk had replaced the level walk it sped up; H200 run 32
at B64 T256 H2, its last default place: 231 vs 187 GPU µs per fwd+bwd.)

Forward with the scores kernel (``TUNING["fwd_scores"]``; default None: the state pass at T ≥ 1024 and the walk at
any T — ``_use_scores``, ``_fwd_plan``; so the level walk above runs only with ``fwd_scores`` False
since H200 run 32, where the scored walk won at T = 256: B64 T256 H2 227 → 187 GPU µs per fwd+bwd). The
level work above costs the forward most of its time (4-warp programs on [16, K] tiles repeat it across warps and
convert layouts through shared memory). ``_fwd_scores_kernel`` (one 1-warp program per 64-row chunk) computes every
block's A [16, 16] (× scale, bonus included) into an fp32 buffer [B, T, H, 16]: level m's exponents P^m (query rows)
and R^m (key rows, disjoint from the query rows, so one tile per level) are sums of w over segments, taken as one
dot each of a constant 0/1 [16, 16] matrix with w in the inputs' dtype (``_span_sums``: bf16 / fp16 values times 0
or 1 are exact, the sums accumulate in fp32 like a cumsum, every sum has terms of one sign; fp32 inputs run the dot
in "ieee"); exp by one ex2.approx.ftz on the GPU. Then the walk (N·H ≥ #SMs) or the one-kernel state pass
(``states._fwd_states_kernel``: S at every chunk start, at the backward's 32-row spacing when it saves them) + the
chunk-parallel output kernel read A and keep the block-level decays (``common._decay_sums`` dots of the w tile) and
three dots per block. H100 run 12 (wkv6i; GPU µs per fwd+bwd, forward in parentheses): B8 T4096 H32 8068 (2068)
→ 7517 (1702), B16 T1024 H8 1092 (317) → 1051 (277), B8 T1024 H8 597 → 563 (171). The scored walk goes in 32-row steps
(``TUNING["fwd_step"]``, default on; ``_step_block``: the pairs of a step's two blocks by one more level, half the
walk's serial iterations; at 64-row states it keeps 16-row blocks): H100 run 16, B8 T4096 H32 forward 1.487 →
1.341 ms (the walk 1401 → 1199 µs).

Backward. Two forms of the per-block work below: the split backward (``TUNING["bwd_split"]`` "block", the default
since H100 run 13: the blocks' own pairs in 1-warp programs, then a state kernel) and the fused backward ("fused",
``LOWMEM``'s since run 17: one program per chunk, no partials). The one-kernel ``_bwd_kernel`` (one 4-warp program
per block; ``bwd_split`` False, the default until run 13 and ``LOWMEM``'s until run 17) lost to both at every
timed shape and was removed in session 13.

Per block (all of V per program). S_c (chunk start, from the forward) and D_c
(dL/dS at the chunk end, the reverse state pass of ``states.py``: where the forward saved S_c and T <= 4096 one
kernel walking each sequence's chunks from the last, ``_bwd_states_kernel``, else the per-chunk ΔD kernel + the
reverse scan; ``TUNING["bwd_states"]``, H200 run 33) are moved to the block: S_m by the earlier blocks'
updates, D_m by the later blocks' (D ← diag(exp(W)) D + (q ⊙ exp(P))ᵀ do). Then, with B = do vᵀ (a dot of the
half inputs themselves when they are bf16/fp16: exact, ``HALF_B``), per level
dA = M_m ⊙ B:
    dq += exp(P^m) ⊙ (dA k̂),  dk += exp(R^m) ⊙ (dAᵀ q̂),   q̂ = q ⊙ exp(P^m), k̂ = k ⊙ exp(R^m),
and the cancellation-free dw (only pairs that span j contribute to dw_j): a level-m pair (t, s) spans j iff j is
in t's segment before t or in s's segment after s, so
    dw += segmented-reverse-exclusive-cumsum(q̂ ⊙ (dA k̂)) + segmented-exclusive-cumsum(k̂ ⊙ (dAᵀ q̂)),
plus the block-crossing terms of ``common._cross_bwd`` (through S_m and D_m, computed first so that the two
[K, V] states are dead before the level dots). du: per-program fp32 partial rows summed once in fp32
(deterministic, no atomics) and rounded to u's dtype once: du = Σ q k (v·do) has only H·K entries, so in bf16 its
own rounding is ~1.65e-3 (median over draws) and above 2e-3 on rare draws — a floor no implementation can beat
(the GPU tests bound du by max(2e-3, 1.1 × that floor) for half-precision u; an fp32 u gets du in fp32, 2e-3).

The split backward (``TUNING["bwd_split"]``, default "block"): the work above in two kernels joined through fp32
partials. ``_bwd_own_kernel`` (1-warp programs, one per chunk, the forward scores kernel's lesson: level work on
[16, K] tiles at 4 warps repeats every exp and layout change across warps) does the blocks' own pairs and bonus
terms, the level decays from ``_span_sums`` dots and one ex2 per element, the segmented dw sums as one dot of the
transposed span pattern each ("tf32x3"; "ieee" for fp32), the key columns in 16- or 32-wide slices (autotuned); then
``_bwd_cross_kernel`` (4 warps, one program per block: S_m, D_m, the crossing terms) adds the partials and stores
the gradients (one program per chunk walking its blocks lost: run 16, 3565 vs 2469 µs at B8 T4096 H32; one program
per 32-row chunk on [32, K] tiles, no moves, "pair", lost at every shape: run 17, 5028 / 645 / 239 vs 2454 / 323 /
85 µs, removed).
H100 run 13 (wkv6j; GPU µs per fwd+bwd, ``_bwd_kernel`` vs own + cross): B8 T4096 H32 5210 vs 1340 + 2412, B16 T1024
H8 672 vs 178 + 323, B64 T256 H4 K32 154 vs 46 + 85; the partials cost 4 bytes × (3K + V) per token and head of
transient memory (extra peak at B8 T4096 H32 1.68 → 2.68 GiB). Since session 20 the own kernel hands the cross kernel
each block's scores A (4 × 16 bytes per token and head) instead of dv's own part Aᵀ do (4 × V): the cross kernel
takes that one [16, 16] × [16, V] dot (it holds do already), and the partials are 4 × (3K + 16) bytes (−192 MiB
written and read at B8 T4096 H32 K = V = 64; H200 run 25: own 1,304 → 1,167 µs, extra peak 2.64 → 2.46 GiB). Since
session 21, where the forward computed those scores itself (``_fwd_scores_kernel``: T ≥ 1024 by default) and keeps
states, it keeps the scores too (``_keeps_scores``: one flat saved buffer, the states then a [B, T, H, SB], 64 B per
token and head) and the own kernel computes none (``HAS_A``: no A dots, no pa store; offline sm_90 SASS 3,176 →
2,824 at 1 warp; H200 run 26: own 1,167 → 968 µs at B8 T4096 H32, 620 → 542 at B1 T16384 H32): the cross
kernel reads the forward's. Earlier splits with both halves at 4 warps lost (run
6: 10.3 vs 9.3 ms at B8 T4096 H32; run 11 call 6: own 2841 + cross 2442 vs 5162 µs).

The decay sums of the scored walk, the chunk-parallel output kernel, the state passes (``states.py``) and the
cross kernel (its state moves included) are dots of 0/1 patterns with the raw w tile (``common._decay_sums``: exact
products, fp32 accumulation, a NaN w marked so that exactly the sums over it are NaN), not scans and column sums
along the rows of a tile that 4 warps split (each through shared memory): H200 run 30, B8 T4096 H32 GPU µs per
fwd+bwd 5,770 -> 4,711 (walk 1,164 -> 616 with its 2 pipeline stages, cross 2,502 -> 1,993), B1 T16384 H32 3,583
-> 3,153, B4 T2048 H16 917 -> 777 (the one-kernel state pass 164 -> 89). (The cross kernel taking its one state move
at 32-row states as M = 16 dots of the other block's rows, ``cross_moves`` "dots", lost in run 30: 4,530 vs 2,611
µs, and was removed.)

The fused backward (``bwd_split`` "fused", ``_bwd_fused_kernel``; ``LOWMEM``'s since run 17): the own kernel's
program (one per chunk, key columns in BKC = 16-wide slices, not unrolled) does the crossing terms too, so nothing
goes through partials. Every crossing term but dv sums over V only or over nothing, so it is separable in K: a slice
of S and D (rows o_c of the [K, V] states, [BKC, BV]) moves over a block with that slice's k̂ / q̂ and w alone, and
``_cross_bwd`` on the slice's columns gives the slice's dq, dk, dw (final: the own pairs' parts are in registers, so
they are stored once, in the gradients' dtypes) and its share of dv = (k ⊙ exp(R)) D; only A (dv's own part Aᵀ do)
and dv accumulate across the slices. Block i of a chunk re-reads its slices of S_c and D_c (L1 / L2: the chunk's
states come from HBM once) and moves them over the i earlier / nb − 1 − i later blocks: 1 move per block at 32-row
states, 3 at 64. Memory: no partials (at B8 T4096 H32 K = V = 64 the extra peak of fwd+bwd is the 128 MiB output,
512 MiB of gradients and the fp32 states S, D, 512 MiB each at 32 rows and 256 at 64: ≈ 1.68 / 1.18 GiB against the
split's 2.68; with ``LOWMEM``'s recomputed states in 128 MiB batch pieces ≈ 0.76 GiB). H100 run 16, ms fwd+bwd at B8
T4096 H32: 7.456 (32-row states), 8.173 (64) against the split's 6.381; with ``LOWMEM`` 9.062. One block per chunk
(no state moves, levels up to the chunk) lost at 17.7 / 32.1 ms and was removed. H100 run 17 (ms fwd / fwd+bwd,
``LOWMEM`` with ``_bwd_kernel`` and the level forward -> with this kernel and ``fwd_scores`` None, same extra peak):
B8 T4096 H32 1.962 / 9.674 -> 1.504 / 9.067, B16 T1024 H8 0.395 / 1.348 -> 0.295 / 1.255, B64 T256 H4 K32 0.115 /
1.351 -> 0.189 / 1.297; the kernels 5877 vs 5996, 760 vs 771, 147 vs 179 µs.

Memory (``TUNING``; ``wkv6_chunk_lowmem``): the forward may skip saving S_c (the backward's state pass then
recomputes it with D_c) and the backward may run batch slices one after another, so that its transient fp32
state buffers stay bounded: at B8 T4096 H32 ``LOWMEM``'s extra peak of fwd+bwd is 0.76 GiB for 9.067 ms against the
default's 2.68 GiB and 6.233 ms (H100 run 17). Splitting V across backward programs
([K, 32] states, fp32 partial sums) was measured too and lost (bwd kernel 6.7 → 12.4 ms: still 255 registers).

Backward state knob (``TUNING["state_rows"]``; default None = 32 with the walk forward, 64 with the state pass):
the chunk length BT of the state pass, the saved states and the backward grid, 64 or 32. A block program moves
S_c / D_c over 0–3 other blocks at 64 (12 block updates per 64 rows), 0–1 at 32 (4), for 64 / BT times the fp32
state memory and the reverse scan's serial steps. The scans keep a second chunk's loads in flight
(``TUNING["scan_pipe"]``, the scan kernel's PIPE) instead of a load wait per step, which made the scan
latency-bound. H100, run 10 (GPU µs per fwd+bwd, all kernels, profiler, bf16; run 9's default = 64 without
PIPE → 64 with PIPE → the default): B8 T4096 H32 8949 → 8630 → 8028 (reverse scan 538 → 186 µs at 64, 377 at 32;
``_bwd_kernel`` 6077 → 5179 at 32; extra peak 1.18 → 1.68 GiB), B16 T1024 H8 1289 → 1235 → 1177, B64 T256 H4 K32
310 → 315 → 288; with the state-pass forward (B4 T2048 H16) 1504 → 1212 at 64, 1242 at 32 (there the forward
keeps 64-row states and a 32-row backward recomputes S beside D): hence 32 only with the walk. Run 8 (without PIPE)
had 32 neutral at the large model because its scan doubled. Timed and removed (slower at every shape):
state_rows 16 (run 8: the scan ×4, 9.72 ms at B8 T4096 H32, 1578 / 318 µs of GPU time at the models' shapes); S_m
/ D_m moved by one masked [K, BT] × [BT, V] dot each over the chunk ("dot", run 8: `_bwd_kernel` 7076 vs 6105 µs at
B8 T4096 H32, 1446 vs 1290 and 356 vs 311 µs at the models' shapes); one program per chunk walking its blocks
downwards with D carried and S saved every 16 rows ("carry", run 9: 3 block updates per 64 rows instead of 12, but
255 registers with spills and the finer saves: its kernel 8411 vs 6087 µs, fwd+bwd 11.55 vs 8.79 ms at B8 T4096
H32, 1.68 vs 1.29 ms at B16 T1024 H8, 1.11 vs 0.87 at B64 T256 H4 K32, extra peak 1.93 vs 1.18 GiB).
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._common import autotune_configs, grid_bucket as _grid_bucket, launch, new_empty, num_sms
from kernels._dot import mma
from kernels._slots import grad_slot
from kernels.wkv6.common import (_cdiv, _chunk_loc, _clamp_w, _cross_bwd, _cross_bwd_dots, _cu,
                                 _decay_sums, _decay_total, _dims, _dw_prec, _half_dot, _kv_ranges, _load_rows,
                                 _make_ops, _nh_bucket, _pow2, _prec, _raw_rows, _row_offsets, _run, _seq_bounds,
                                 _span_dot, _state_or_zeros, _store_dqkw, _sum_operand, _w_for_dots, _warp_configs)
from kernels.wkv6.states import BT_PAR, _par_slots, _par_state_shape, _par_states, _walk_pass

BT = BT_PAR       # chunk length of the state pass and of the saved states (default; ``TUNING["state_rows"]``)
SB = 16           # block length
LOG = SB.bit_length() - 1   # log2(SB): number of pair levels


@triton.jit
def _seg_scan(b_x, S: tl.constexpr, SB: tl.constexpr, REVERSE: tl.constexpr, PROD: tl.constexpr):
    """Inclusive cumsum (PROD: cumprod) of b_x [SB, BK] along the rows, restarted at every S-row segment: reshape to
    [SB/S, S, BK] and scan the middle axis (a flagged associative scan in place measured 1.2–1.3× slower on the
    H100, run 4)."""
    if S == SB:
        if PROD:
            return tl.cumprod(b_x, axis=0, reverse=REVERSE)
        return tl.cumsum(b_x, axis=0, reverse=REVERSE)
    b_z = tl.reshape(b_x, (SB // S, S, b_x.shape[1]))
    if PROD:
        b_z = tl.cumprod(b_z, axis=1, reverse=REVERSE)
    else:
        b_z = tl.cumsum(b_z, axis=1, reverse=REVERSE)
    return tl.reshape(b_z, (SB, b_x.shape[1]))


@triton.jit
def _level(b_em1, b_ep1, o_t, S: tl.constexpr, SB: tl.constexpr):
    """exp(P) and exp(R) [SB, BK] of the S-row segments: P_t = Σ w from t's segment start to t−1, R_s = Σ w from
    s+1 to s's segment end, as segmented products of the per-step decays (every factor ≤ 1). b_em1 / b_ep1 hold
    exp(w_{t−1}) / exp(w_{t+1}) in row t."""
    b_ep = _seg_scan(tl.where((o_t % S == 0)[:, None], 1., b_em1), S, SB, False, True)
    b_er = _seg_scan(tl.where((o_t % S == S - 1)[:, None], 1., b_ep1), S, SB, True, True)
    return b_ep, b_er


@triton.jit
def _level_mask(o_t, S: tl.constexpr):
    """Pairs (t, s) of level log2(S): t in the upper, s in the lower S-half of one 2S-row segment."""
    return ((o_t[:, None] // S) == (o_t[None, :] // S) + 1) & ((o_t[None, :] // S) % 2 == 0)


@triton.jit
def _block_qkw(q_ptr, k_ptr, w_ptr, bos, r0, L, i_h, scale, o_t, o_k, m_k, H: tl.constexpr, K: tl.constexpr,
               SB: tl.constexpr):
    """q (scaled), k, raw w, exp(w_{t−1}), exp(w_{t+1}) [SB, BK] fp32 of the block starting at row r0 (w clamped
    to ≤ 0 in the shifted copies; 0 outside the block, i.e. exp = 1, unused there)."""
    b_q = _load_rows(q_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0) * scale
    b_k = _load_rows(k_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0)
    b_wr = _load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0)
    b_em1 = tl.exp(_clamp_w(_load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, -1)))
    b_ep1 = tl.exp(_clamp_w(_load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 1)))
    return b_q, b_k, b_wr, b_em1, b_ep1


@triton.jit
def _diag_scores(b_q, b_k, b_u, b_em1, b_ep1, o_t, SB: tl.constexpr, LOG: tl.constexpr, PREC: tl.constexpr):
    """A [SB, SB] of one block: s < t by level (one masked dot each) plus the bonus diagonal Σ_k q u k."""
    b_A = tl.where(_level_mask(o_t, 1), mma(b_q, tl.trans(b_k), PREC, B_EXACT=True), 0.)
    for m in tl.static_range(1, LOG):
        b_ep, b_er = _level(b_em1, b_ep1, o_t, 2 ** m, SB)
        b_s = mma(b_q * b_ep, tl.trans(b_k * b_er), PREC)
        b_A += tl.where(_level_mask(o_t, 2 ** m), b_s, 0.)
    return b_A + tl.where(o_t[:, None] == o_t[None, :], tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)


@triton.jit
def _fwd_block(q_ptr, k_ptr, v_ptr, w_ptr, o_ptr, b_u, b_h, bos, L, r0, i_h, scale, o_t, o_k, o_v, m_k, m_v,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, SB: tl.constexpr, LOG: tl.constexpr,
               PREC: tl.constexpr):
    """Output rows r0..r0+SB from the state at the block start b_h [BK, BV]; returns the state at its end."""
    b_q, b_k, b_wr, b_em1, b_ep1 = _block_qkw(q_ptr, k_ptr, w_ptr, bos, r0, L, i_h, scale, o_t, o_k, m_k, H, K, SB)
    b_v = _load_rows(v_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, SB, 0)
    b_A = _diag_scores(b_q, b_k, b_u, b_em1, b_ep1, o_t, SB, LOG, PREC)
    b_egp, b_egs = _level(b_em1, b_ep1, o_t, SB, SB)
    b_o = mma(b_q * b_egp, b_h, PREC) + mma(b_A, b_v, PREC, B_EXACT=True)
    _store_o(o_ptr, b_o, bos, r0, L, i_h, o_t, o_v, m_v, H, V)
    b_gl = tl.sum(_clamp_w(b_wr), axis=0)
    return b_h * tl.exp(b_gl)[:, None] + mma(tl.trans(b_k * b_egs), b_v, PREC, B_EXACT=True)


@triton.jit
def _store_o(o_ptr, b_o, bos, r0, L, i_h, o_t, o_v, m_v, H: tl.constexpr, V: tl.constexpr):
    """Rows r0..r0+SB of o [B·T, H, V] (o's dtype; rows past the sequence length L masked)."""
    rows = r0 + o_t
    p_o = o_ptr + ((bos + rows) * H + i_h)[:, None] * V + o_v[None, :]
    tl.store(p_o, b_o.to(o_ptr.dtype.element_ty), mask=(rows < L)[:, None] & m_v[None, :])


@triton.jit
def _scored_block(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, o_ptr, b_h, bos, L, r0, i_h, scale, o_t, o_k, o_v, m_k, m_v,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, SB: tl.constexpr, PREC: tl.constexpr):
    """``_fwd_block`` with the block's scores A [SB, SB] read from a_ptr (``_fwd_scores_kernel``): only the
    block-level decays here, exp(P) and exp(R) and the state's exp(W) from ``common._decay_sums`` dots of the raw w
    tile (w_ptr as ``_w_for_dots`` gives it; exclusive sums of terms of one sign, no difference; they were cumsums of
    the shifted w tiles and a column sum until session 26). (The scores computed here instead, no A round trip, lost
    at every shape: H100 run 12, GPU us of the forward at B8 T4096 H32 2178 vs 1743, B16 T1024 H8 324 vs 277, B8
    T1024 H8 196 vs 171.)"""
    b_q = _load_rows(q_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0) * scale
    b_k = _load_rows(k_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0)
    b_ws = _sum_operand(_raw_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0))
    r, x = o_t[:, None], o_t[None, :]
    b_v = _load_rows(v_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, SB, 0)
    b_a = _load_rows(a_ptr, bos, r0, L, i_h, o_t, o_t, o_t < SB, H, SB, SB, 0)
    b_o = mma(b_q * tl.exp(_decay_sums(x < r, b_ws)), b_h, PREC) + mma(b_a, b_v, PREC, B_EXACT=True)
    _store_o(o_ptr, b_o, bos, r0, L, i_h, o_t, o_v, m_v, H, V)
    b_kd = b_k * tl.exp(_decay_sums(x > r, b_ws))
    return b_h * tl.exp(_decay_total(b_ws))[:, None] + mma(tl.trans(b_kd), b_v, PREC, B_EXACT=True)


@triton.jit
def _scored_out(b_q, b_k, b_w, b_ep, b_er, b_v, b_a, o_ptr, b_h, bos, L, r0, i_h, o_t, o_v, m_v, H: tl.constexpr,
                V: tl.constexpr, PREC: tl.constexpr):
    """The block's three dots: o rows r0..r0+SB (stored) and the state after the block (returned)."""
    b_o = mma(b_q * b_ep, b_h, PREC) + mma(b_a, b_v, PREC, B_EXACT=True)
    _store_o(o_ptr, b_o, bos, r0, L, i_h, o_t, o_v, m_v, H, V)
    return b_h * tl.exp(tl.sum(b_w, axis=0))[:, None] + mma(tl.trans(b_k * b_er), b_v, PREC, B_EXACT=True)


@triton.jit
def _scored_tiles(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, bos, L, r0, i_h, scale, o_t, o_k, o_v, m_k, m_v,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, SB: tl.constexpr):
    """The tiles ``_scored_step`` takes for the block at r0 (fp32): q (scaled), k [SB, BK], the clamped w and w
    shifted by −1 and +1 rows [SB, BK] (0 outside the block), v [SB, BV], A [SB, SB]; rows past L read 0."""
    b_q = _load_rows(q_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0) * scale
    b_k = _load_rows(k_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0)
    b_w = _clamp_w(_load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0))
    b_wm = _clamp_w(_load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, -1))
    b_wp = _clamp_w(_load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 1))
    b_v = _load_rows(v_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, SB, 0)
    b_a = _load_rows(a_ptr, bos, r0, L, i_h, o_t, o_t, o_t < SB, H, SB, SB, 0)
    return b_q, b_k, b_w, b_wm, b_wp, b_v, b_a


@triton.jit
def _scored_step(b_q, b_k, b_w, b_wm, b_wp, b_v, b_a, o_ptr, b_h, bos, L, r0, i_h, o_t, o_v, m_v, H: tl.constexpr,
                 V: tl.constexpr, PREC: tl.constexpr):
    """o rows r0..r0+SB and the state after the block from the state before it b_h [BK, BV] and the block's
    ``_scored_tiles``."""
    return _scored_out(b_q, b_k, b_w, tl.exp(tl.cumsum(b_wm, axis=0)), tl.exp(tl.cumsum(b_wp, axis=0, reverse=True)),
                       b_v, b_a, o_ptr, b_h, bos, L, r0, i_h, o_t, o_v, m_v, H, V, PREC)


@triton.jit
def _step_block(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, o_ptr, b_h, bos, L, r0, i_h, scale, o_c, o_k, o_v, m_k, m_v,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SB: tl.constexpr,
                PREC: tl.constexpr, FAST: tl.constexpr):
    """``_scored_block`` over a whole C = 2·SB-row step (the walk's ``fwd_step``): o rows r0..r0+C (stored) and the
    state after them (returned) from the state before them b_h [BK, BV]. The step's scores A [C, C]: the two SB-row
    diagonal blocks read from a_ptr (``_fwd_scores_kernel``, × scale, bonus included), the pairs of the two blocks
    (query in the upper, key in the lower) by level log2(SB) here, one masked dot with one exp tile: the upper rows
    take exp(P) (Σ w from the upper block's start to t − 1), the lower rows exp(R) (Σ w from s + 1 to the lower
    block's end). The step-level decays exp(Σ_{x<t} w) on the queries, exp(Σ_{x>s} w) on the keys, and exp(W) on
    the state. Every one of these sums is a ``common._decay_sums`` dot of a 0/1 pattern with the step's w tile
    (w_ptr in the inputs' dtype, ``_w_for_dots``): exclusive sums of terms of one sign, ≤ 0, and a NaN w makes NaN of
    exactly the sums over it. (They were scans and a column sum of the shifted w tiles, each through shared memory
    across the 4 warps, and three w loads: H200 run 30, the walk 1,164 -> 924 µs at B8 T4096 H32, 616 with 2
    pipeline stages.) o_c = arange(C); rows past L read 0 and are not stored. (64-row steps, two more levels, lost:
    H100 run 16, 1.744 vs 1.489 ms forward at B8 T4096 H32.)"""
    tl.static_assert(C == 2 * SB, "fwd_step: 32-row steps (C = 2 SB) only")
    b_q = _load_rows(q_ptr, bos, r0, L, i_h, o_c, o_k, m_k, H, K, C, 0) * scale
    b_k = _load_rows(k_ptr, bos, r0, L, i_h, o_c, o_k, m_k, H, K, C, 0)
    b_ws = _sum_operand(_raw_rows(w_ptr, bos, r0, L, i_h, o_c, o_k, m_k, H, K, C, 0))
    rows = r0 + o_c
    r, x = o_c[:, None], o_c[None, :]
    # the diagonal SB-blocks: row t's scores sit at a_ptr's row t, columns s mod SB
    b_a = tl.load(a_ptr + ((bos + rows) * H + i_h)[:, None] * SB + (o_c % SB)[None, :],
                  mask=(rows < L)[:, None] & ((r // SB) == (x // SB)), other=0.)
    b_e = _exp_ftz(_decay_sums(_span_mask(r, x, SB), b_ws), FAST)
    b_s = mma(b_q * b_e, tl.trans(b_k * b_e), PREC)
    b_a += tl.where(_level_mask(o_c, SB), b_s, 0.)
    b_v = _load_rows(v_ptr, bos, r0, L, i_h, o_c, o_v, m_v, H, V, C, 0)
    b_o = mma(b_q * _exp_ftz(_decay_sums(x < r, b_ws), FAST), b_h, PREC)
    b_o += mma(b_a, b_v, PREC, B_EXACT=True)
    _store_o(o_ptr, b_o, bos, r0, L, i_h, o_c, o_v, m_v, H, V)
    b_kd = b_k * _exp_ftz(_decay_sums(x > r, b_ws), FAST)
    b_gl = _decay_total(b_ws)
    return b_h * _exp_ftz(b_gl, FAST)[:, None] + mma(tl.trans(b_kd), b_v, PREC, B_EXACT=True)


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------
# Layouts shared by the kernels of this module (a token is row bos + t of the flattened [B·T, H, *] tensors):
#   q_ptr, k_ptr, w_ptr [B·T, H, K] (q = r; w the raw log-decay, clamped inside), v_ptr, o_ptr, do_ptr [B·T, H, V],
#   u_ptr [H, K] (all in the inputs' dtype; dq_ptr, dk_ptr, dw_ptr, dv_ptr: the gradients, same layouts and dtypes);
#   h0_ptr / ht_ptr [N, H, K, V] fp32 initial / final state; hs_ptr / hd_ptr [slots, H, K, V] fp32 the state at
#   each BT-row chunk start / dL/dS at each chunk end, slot n·NT + i (fixed length) or cu[n]//BT + n + i (VARLEN;
#   ``states._par_slots``); cu_ptr [N + 1] int32 sequence offsets, cmap_ptr [slots] int32 the sequence of each slot
#   (both None unless VARLEN); a_ptr [B·T, H, SB] fp32 the blocks' scores (``_fwd_scores_kernel``: a block's row t
#   at token t); du_ptr [slots · BT/SB, H, K] fp32 per-block du rows (the backward); scale (float)
#   multiplies q·k; T the padded length (fixed-length batches), NT = cdiv(T, BT) chunks per sequence; NH_BUCKET =
#   min(pow2(N·H), 1024) and GRID_BUCKET = min(pow2(programs), 2^16), autotune keys only (``_nh_bucket``,
#   ``kernels._common.grid_bucket``: unused by the kernel bodies).
# Constexprs: H heads; K, V head sizes; BK = max(16, pow2(K)), BV the V tile width; SB = 16 block rows, LOG =
#   log2(SB) pair levels; BT the chunk rows (``state_rows``: 32 or 64; SB where the slots are blocks); PREC the dots'
#   input precision ("ieee" for fp32, "tf32"); VARLEN: cu_seqlens given; SCORES: the blocks' scores read from
#   a_ptr; PIPE: the walk loads the next block ahead; FAST: exp by ex2.approx.ftz (GPU); HALF_B: B = do vᵀ in the
#   half inputs' dtype. Optional tensors are None with their constexpr flag off (USE_H0, SAVE, SCORES, VARLEN).
def _four_warps():
    """The forward kernels' one config (H100 run 10 offered 8 warps too: the autotuner kept 4 at every shape)."""
    return autotune_configs([triton.Config({}, num_warps=4, num_stages=1)])


# the scores kernel's floor for w (its span sums are dots: 0 · −inf would be NaN; exp(−1e4) = 0 like exp(−inf))
W_FLOOR = tl.constexpr(-1e4)


@triton.jit
def _span_sums(b_w, o_t, S: tl.constexpr):
    """Segment-local sums of the log-decay as one dot with a 0/1 [SB, SB] matrix (``b_w`` [SB, BK] in the inputs'
    dtype: bf16 / fp16 values times 0 or 1 are exact, the sums accumulate in fp32 like a cumsum; fp32 runs the dot
    in "ieee"). Row r gets Σ w_x over x in r's S-row segment with x < r if r is in the upper S-half of its 2S-row
    segment (P: the query side of level log2(S)), else with x > r (R: the key side). Every sum has terms of one sign
    (no cancellation) and is ≤ 0."""
    m = _span_mask(o_t[:, None], o_t[None, :], S)
    return tl.dot(tl.where(m, 1., 0.).to(b_w.dtype), b_w, input_precision="ieee")


@triton.jit
def _span_mask(r, x, S: tl.constexpr):
    """``_span_sums``' 0/1 pattern: x in r's S-row segment and before r (r in the upper S-half of its 2S-row
    segment) or after r (lower half). With r and x swapped it gives the rows j whose dw a level-log2(S) pair term
    at row x feeds (the pairs spanning j: the backward's ``_own_block``)."""
    return ((r // S) == (x // S)) & tl.where((r // S) % 2 == 1, x < r, x > r)


@triton.jit
def _exp_ftz(x, FAST: tl.constexpr):
    """exp(x) for x ≤ 0 as one ex2.approx.ftz (FAST; results below 2^-126 flush to 0) instead of tl.exp's
    denormal-safe sequence (two more instructions per element on sm_90); tl.exp under the interpreter."""
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x * 1.4426950408889634],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.exp(x)


@triton.jit
def _block_scores(q_ptr, k_ptr, w_ptr, b_u, a_ptr, bos, r0, L, i_h, o_t, o_k, m_k, scale, H: tl.constexpr,
                  K: tl.constexpr, SB: tl.constexpr, LOG: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr):
    """A [SB, SB] of the block at row r0 (``_fwd_scores_kernel``) -> a_ptr rows r0..r0+SB (rows ≥ L masked)."""
    rows = r0 + o_t
    m_tk = (rows < L)[:, None] & m_k[None, :]
    p_k = ((bos + r0) * H + i_h) * K + (o_t * H * K)[:, None] + o_k[None, :]
    b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_A = _scores_tile(b_q, b_k, tl.load(w_ptr + p_k, mask=m_tk, other=0.), b_u, o_t, LOG, PREC, FAST)
    p_a = ((bos + r0) * H + i_h) * SB + (o_t * H * SB)[:, None] + o_t[None, :]
    tl.store(a_ptr + p_a, b_A * scale, mask=(rows < L)[:, None])


@triton.jit
def _scores_tile(b_q, b_k, b_w, b_u, o_t, LOG: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr):
    """A [SB, SB] / scale of one block from its q, k [SB, BK] fp32 and raw w [SB, BK] in the inputs' dtype: pairs
    s < t by level (``_span_sums``), the bonus diagonal, zero above."""
    # w > 0 and NaN -> 0 (a NaN reaches the outputs after its row through the output kernel's own cumsum and the
    # state, as in the reference; in the span sums 0 · NaN would spread it over its whole block, rows before it too)
    b_w = tl.where(b_w < 0, tl.where(b_w < W_FLOOR, W_FLOOR, b_w), 0.).to(b_w.dtype)
    b_A = tl.where(_level_mask(o_t, 1), mma(b_q, tl.trans(b_k), PREC, B_EXACT=True), 0.)
    for m in tl.static_range(1, LOG):
        b_e = _exp_ftz(_span_sums(b_w, o_t, 2 ** m), FAST)
        b_s = mma(b_q * b_e, tl.trans(b_k * b_e), PREC)
        b_A += tl.where(_level_mask(o_t, 2 ** m), b_s, 0.)
    return b_A + tl.where(o_t[:, None] == o_t[None, :], tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)


@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=1, num_stages=1)]),
                 key=["K", "BK", "BT", "PREC"])
@triton.jit(do_not_specialize=['T', 'NT'])
def _fwd_scores_kernel(q_ptr, k_ptr, w_ptr, u_ptr, a_ptr, cu_ptr, cmap_ptr, scale, T, NT, H: tl.constexpr,
                       K: tl.constexpr, BT: tl.constexpr, SB: tl.constexpr, BK: tl.constexpr, LOG: tl.constexpr,
                       VARLEN: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr):
    """Grid (BT-row chunk slots, H): for each SB-row block of the chunk its scores A [SB, SB] (pairs s < t by level,
    the bonus diagonal, zero above; × scale) -> a_ptr [B·T, H, SB] fp32 (the block's row t at token t). Level m's
    decays come from ``_span_sums`` (one dot each; one exp tile per level, its query and key rows being disjoint),
    not from cumprods. Slots, NT and cmap_ptr as ``_chunk_loc``'s (cu_ptr, cmap_ptr None unless VARLEN). FAST:
    ``_exp_ftz``'s ex2.approx.ftz (GPU). Other layouts above."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    o_t = tl.arange(0, SB)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    L32 = (L - i_c * BT).to(tl.int32)      # rows left from the chunk start (row masks in int32)
    for i_b in range(0, tl.minimum(tl.cdiv(L32, SB), BT // SB)):
        _block_scores(q_ptr, k_ptr, w_ptr, b_u, a_ptr, bos + i_c * BT, i_b * SB, L32, i_h, o_t, o_k, m_k, scale, H, K,
                      SB, LOG, PREC, FAST)


@triton.jit(do_not_specialize=['T', 'NT', 'NH_BUCKET'])
def _fwd_walk(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, a_ptr, h0_ptr, o_ptr, ht_ptr, hs_ptr, cu_ptr, scale, T, NT,
              NH_BUCKET, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, SB: tl.constexpr,
              BK: tl.constexpr, BV: tl.constexpr, LOG: tl.constexpr, USE_H0: tl.constexpr, VARLEN: tl.constexpr,
              SAVE: tl.constexpr, SCORES: tl.constexpr, PREC: tl.constexpr, PIPE: tl.constexpr = False,
              STEP: tl.constexpr = False, FAST: tl.constexpr = False):
    """Grid (V-blocks, N·H). Walks the SB-row blocks of one (sequence, head, V-block) with the state in registers:
    writes o_ptr and the final state ht_ptr, starts from h0_ptr (USE_H0; else None and zeros), and stores the state
    at every BT-row chunk start into hs_ptr when SAVE (else None; layouts above; cmap_ptr unused: a sequence's slots
    follow from cu). SCORES: the blocks' scores come from ``_fwd_scores_kernel`` (a_ptr [B·T, H, SB] fp32, else
    None and the level work runs here, ``_fwd_block``; u unread with SCORES);
    with PIPE the next block's tiles are loaded before this block's dots (``fwd_pipe``). STEP (with
    SCORES and BT = 2·SB; ``fwd_step``): one BT-row step per iteration (``_step_block``: the pairs of its two
    blocks by one more level, the state stored at every step start when SAVE) instead of one SB-row block; FAST:
    its exps by ex2.approx.ftz (GPU); w_ptr then as ``_w_for_dots`` gives it (its decay sums are dots).
    NH_BUCKET: autotune key only (``_nh_bucket``). Autotuned as ``_fwd_seq_kernel``, ``_fwd_scored_kernel`` and
    ``_fwd_step_kernel``."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    o_t = tl.arange(0, SB)
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = _state_or_zeros(h0_ptr, i_nh, o_kv, m_kv, K, V, BK, BV, USE_H0)
    if VARLEN:
        slot0 = bos // BT + i_n
    else:
        slot0 = i_n.to(tl.int64) * NT
    if STEP:    # BT = 2·SB-row steps: half the serial iterations, the state stored at every step start
        o_c = tl.arange(0, BT)
        for i_c in range(0, tl.cdiv(L, BT)):
            if SAVE:
                tl.store(hs_ptr + ((slot0 + i_c) * H + i_h) * K * V + o_kv, b_h, mask=m_kv)
            b_h = _step_block(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, o_ptr, b_h, bos, L, i_c * BT, i_h, scale, o_c, o_k,
                              o_v, m_k, m_v, H, K, V, BT, SB, PREC, FAST)
    else:
        if PIPE:
            t_q, t_k, t_w, t_wm, t_wp, t_v, t_a = _scored_tiles(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, bos, L, 0, i_h,
                                                                scale, o_t, o_k, o_v, m_k, m_v, H, K, V, SB)
        for i_b in range(0, tl.cdiv(L, SB)):
            if SAVE:
                tl.store(hs_ptr + ((slot0 + i_b // (BT // SB)) * H + i_h) * K * V + o_kv, b_h,
                         mask=m_kv & (o_k[:, None] * 0 + i_b % (BT // SB) == 0))
            if PIPE:    # the next block's loads in flight during this block's dots (past the end: masked, unused)
                n_q, n_k, n_w, n_wm, n_wp, n_v, n_a = _scored_tiles(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, bos, L,
                                                                    (i_b + 1) * SB, i_h, scale, o_t, o_k, o_v, m_k,
                                                                    m_v, H, K, V, SB)
                b_h = _scored_step(t_q, t_k, t_w, t_wm, t_wp, t_v, t_a, o_ptr, b_h, bos, L, i_b * SB, i_h, o_t, o_v,
                                   m_v, H, V, PREC)
                t_q, t_k, t_w, t_wm, t_wp, t_v, t_a = n_q, n_k, n_w, n_wm, n_wp, n_v, n_a
            elif SCORES:
                b_h = _scored_block(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, o_ptr, b_h, bos, L, i_b * SB, i_h, scale, o_t,
                                    o_k, o_v, m_k, m_v, H, K, V, SB, PREC)
            else:
                b_h = _fwd_block(q_ptr, k_ptr, v_ptr, w_ptr, o_ptr, b_u, b_h, bos, L, i_b * SB, i_h, scale, o_t, o_k,
                                 o_v, m_k, m_v, H, K, V, SB, LOG, PREC)
    tl.store(ht_ptr + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


def _walk_configs(bvs, stages=1):
    """The walks' configs: BV in ``bvs`` at 4 warps (see ``_four_warps``), ``stages`` software-pipeline stages."""
    return autotune_configs([triton.Config({"BV": bv}, num_warps=4, num_stages=stages) for bv in bvs])


# the level walk (``fwd_scores`` False; BV 64 or 32). 4 warps: H100 run 10 offered 8 too and the autotuner kept 4 at
# every shape and kernel (call 2's compile report), so 8 only cost first-use compiles
_fwd_seq_kernel = triton.autotune(configs=_walk_configs((64, 32)), key=["K", "V", "BT", "BK", "PREC", "NH_BUCKET"])(
    _fwd_walk)
# the walk with the blocks' scores precomputed (``fwd_scores``), BV 64 or 32; ``PIPE`` in its key, so that the
# pipelined walk (``fwd_pipe``) is tuned on its own
_fwd_scored_kernel = triton.autotune(configs=_walk_configs((64, 32)),
                                     key=["K", "V", "BT", "BK", "PREC", "NH_BUCKET", "PIPE"])(_fwd_walk)
# the walk in 32-row steps (``fwd_step``), BV 64 or 32 at 4 warps (H100 run 16 offered 8 warps too: picked only for
# the 64-row steps, since removed), 2 pipeline stages: the next step's loads in flight during this one's dots (H200
# run 30, BV 64: the walk 924 -> 616 µs at B8 T4096 H32 with the decay-sum dots; 1,164 -> 1,086 with the scans)
_fwd_step_kernel = triton.autotune(configs=_walk_configs((64, 32), stages=2),
                                   key=["K", "V", "BT", "BK", "PREC", "NH_BUCKET"])(_fwd_walk)


@triton.jit(do_not_specialize=['T', 'NT', 'GRID_BUCKET'])
def _fwd_par_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, a_ptr, hs_ptr, o_ptr, cu_ptr, cmap_ptr, scale, T, NT,
                    GRID_BUCKET, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, SB: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, LOG: tl.constexpr, VARLEN: tl.constexpr,
                    SCORES: tl.constexpr, PREC: tl.constexpr):
    """Grid (chunk slots, V-blocks, H): writes o_ptr for the BT // SB blocks of one chunk from its start state
    hs_ptr [slots, H, K, V] fp32 (the state pass's, ``states._par_states`` or ``states._walk_pass``; layouts
    above). SCORES as in ``_fwd_walk``: the blocks' scores from a_ptr [B·T, H, SB] fp32 (else None; u unread).
    GRID_BUCKET: autotune key only (``_grid_bucket`` of the slots · H)."""
    i_s, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    o_t = tl.arange(0, SB)
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    b_u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = tl.load(hs_ptr + (i_s.to(tl.int64) * H + i_h) * K * V + o_kv, mask=m_kv & (o_kv * 0 + i_c * BT < L),
                  other=0.)
    for i_b in range(0, tl.minimum(tl.cdiv(L - i_c * BT, SB), BT // SB)):     # the blocks that hold rows
        if SCORES:
            b_h = _scored_block(q_ptr, k_ptr, v_ptr, w_ptr, a_ptr, o_ptr, b_h, bos, L, i_c * BT + i_b * SB, i_h,
                                scale, o_t, o_k, o_v, m_k, m_v, H, K, V, SB, PREC)
        else:
            b_h = _fwd_block(q_ptr, k_ptr, v_ptr, w_ptr, o_ptr, b_u, b_h, bos, L, i_c * BT + i_b * SB, i_h, scale,
                             o_t, o_k, o_v, m_k, m_v, H, K, V, SB, LOG, PREC)


# with the scores precomputed (``fwd_scores``) the blocks are light: BV 64 at 2 or 4 warps (offline sm_90 compile,
# bf16, K = V = 64, registers / spill B / SASS at 1 stage: 2 warps 255 / 24 / 2032, 4 warps 196 / 0 / 1272), 2
# software-pipeline stages: the next block's loads in flight during this one's dots (H200 run 31: 119 -> 84 µs at
# B4 T2048 H16, 415 -> 281 at B1 T16384 H32)
_fwd_par_scored_kernel = triton.autotune(
    configs=autotune_configs([triton.Config({"BV": bv}, num_warps=nw, num_stages=2)
                              for bv, nw in ((64, 2), (64, 4))]),
    key=["K", "V", "BT", "BK", "PREC", "GRID_BUCKET"])(_fwd_par_kernel)
_fwd_par_kernel = triton.autotune(configs=_four_warps(), key=["K", "V", "BT", "BK", "BV", "PREC"])(_fwd_par_kernel)


# ----------------------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _state_over_block(b_h, k_ptr, v_ptr, w_ptr, bos, r0, L, i_h, o_t, o_k, o_v, m_k, m_v, H: tl.constexpr,
                      K: tl.constexpr, V: tl.constexpr, SB: tl.constexpr, PREC: tl.constexpr,
                      SUM_DOTS: tl.constexpr = False):
    """S at the end of the block starting at r0 from S at its start: diag(exp(W)) S + (k ⊙ exp(R))ᵀ v. SUM_DOTS:
    R and W as ``_decay_sums`` dots (w_ptr as ``_w_for_dots`` gives it; the cross kernel), else by a scan and a
    column sum (the fused backward's key slices)."""
    b_k = _load_rows(k_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0)
    b_v = _load_rows(v_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, SB, 0)
    if SUM_DOTS:
        b_ws = _sum_operand(_raw_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0))
        b_kd = b_k * tl.exp(_decay_sums(o_t[None, :] > o_t[:, None], b_ws))
        b_gl = _decay_total(b_ws)
    else:
        b_w = _clamp_w(_load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0))
        b_kd = b_k * tl.exp(tl.cumsum(b_w, axis=0, reverse=True) - b_w)
        b_gl = tl.sum(b_w, axis=0)
    return b_h * tl.exp(b_gl)[:, None] + mma(tl.trans(b_kd), b_v, PREC, B_EXACT=True)


@triton.jit
def _grad_over_block(b_dh, q_ptr, do_ptr, w_ptr, bos, r0, L, i_h, scale, o_t, o_k, o_v, m_k, m_v,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, SB: tl.constexpr, PREC: tl.constexpr,
                     SUM_DOTS: tl.constexpr = False):
    """dL/dS before the block starting at r0 from dL/dS after it: diag(exp(W)) D + (q ⊙ exp(P))ᵀ do. SUM_DOTS: as
    ``_state_over_block``'s."""
    b_q = _load_rows(q_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0) * scale
    b_do = _load_rows(do_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, SB, 0)
    if SUM_DOTS:
        b_ws = _sum_operand(_raw_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0))
        b_qd = b_q * tl.exp(_decay_sums(o_t[None, :] < o_t[:, None], b_ws))
        b_gl = _decay_total(b_ws)
    else:
        b_w = _clamp_w(_load_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0))
        b_qd = b_q * tl.exp(tl.cumsum(b_w, axis=0) - b_w)
        b_gl = tl.sum(b_w, axis=0)
    return b_dh * tl.exp(b_gl)[:, None] + mma(tl.trans(b_qd), b_do, PREC, B_EXACT=True)


@triton.jit
def _level_pairs_bwd(b_qh, b_kh, b_B, b_A, o_t, S: tl.constexpr, PREC: tl.constexpr, WANT_A: tl.constexpr):
    """Level log2(S)'s pairs from the decayed q̂, k̂ [SB, BK] and B = do vᵀ [SB, SB]: (A plus their scores — unless
    not WANT_A: A returned as given —, dA k̂, dAᵀ q̂) with dA = M ⊙ B (the decays' own factors are applied by the
    caller)."""
    m_lv = _level_mask(o_t, S)
    if WANT_A:
        b_A += tl.where(m_lv, mma(b_qh, tl.trans(b_kh), PREC), 0.)
    b_dA = tl.where(m_lv, b_B, 0.)
    return (b_A, mma(b_dA, b_kh, PREC), mma(tl.trans(b_dA), b_qh, PREC))


@triton.jit
def _chunk_states(hs_ptr, hd_ptr, i_s, i_h, c0, L, o_kv, m_kv, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
    """S_c and D_c [BK, BV] fp32 of chunk slot i_s, head i_h (offsets o_kv, mask m_kv in a [K, V] state); zeros
    for a slot past its sequence (c0 >= L)."""
    p_s = (i_s.to(tl.int64) * H + i_h) * K * V + o_kv
    m_kv = m_kv & (o_kv * 0 + c0 < L)
    return tl.load(hs_ptr + p_s, mask=m_kv, other=0.), tl.load(hd_ptr + p_s, mask=m_kv, other=0.)


@triton.jit
def _block_rows(q_ptr, k_ptr, w_ptr, v_ptr, do_ptr, bos, r0, L, i_h, scale, o_t, o_k, o_v, m_k, m_v,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, SB: tl.constexpr):
    """The block's rows r0 + o_t: q (scaled), k [SB, BK] and v, do [SB, BV] as fp32 tiles, the raw w [SB, BK] in
    w_ptr's dtype."""
    return (_load_rows(q_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0) * scale,
            _load_rows(k_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0),
            _raw_rows(w_ptr, bos, r0, L, i_h, o_t, o_k, m_k, H, K, SB, 0),
            _load_rows(v_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, SB, 0),
            _load_rows(do_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, SB, 0))


@triton.jit
def _block_states(q_ptr, k_ptr, v_ptr, w_ptr, do_ptr, hs_ptr, hd_ptr, i_s, i_m, i_h, bos, L, c0, scale, o_t, o_k,
                  o_v, m_k, m_v, o_kv, m_kv, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                  SB: tl.constexpr, PREC: tl.constexpr):
    """S at the start of block i_m of the chunk at c0 (slot i_s) and dL/dS at its end [BK, BV] fp32: S_c / D_c
    moved over the chunk's earlier / later blocks, block by block (their decay sums as dots: SUM_DOTS)."""
    b_h, b_dh = _chunk_states(hs_ptr, hd_ptr, i_s, i_h, c0, L, o_kv, m_kv, H, K, V)
    nb = tl.minimum(tl.cdiv(L - c0, SB), BT // SB)     # blocks of this chunk that hold rows (the rest: no-ops)
    for j in range(0, tl.minimum(i_m, nb)):
        b_h = _state_over_block(b_h, k_ptr, v_ptr, w_ptr, bos, c0 + j * SB, L, i_h, o_t, o_k, o_v, m_k, m_v, H, K,
                                V, SB, PREC, True)
    for j in range(0, nb - 1 - i_m):
        b_dh = _grad_over_block(b_dh, q_ptr, do_ptr, w_ptr, bos, c0 + (nb - 1 - j) * SB, L, i_h, scale, o_t, o_k,
                                o_v, m_k, m_v, H, K, V, SB, PREC, True)
    return b_h, b_dh


@triton.jit
def _block_loc(cu_ptr, cmap_ptr, T, NT, BT: tl.constexpr, SB: tl.constexpr, VARLEN: tl.constexpr):
    """Where a backward program of grid (chunk slots · BT/SB blocks, H) works: (pid, head, chunk slot, block index
    in the chunk, bos, sequence length, chunk start row, block start row)."""
    pid, i_h = tl.program_id(0), tl.program_id(1)
    i_s = pid // (BT // SB)
    i_m = pid % (BT // SB)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    c0 = i_c * BT
    return pid, i_h, i_s, i_m, bos, L, c0, c0 + i_m * SB


def _capped_configs(cap):
    """At most ``cap`` registers per thread (Triton's ``maxnreg``; the rest spills to local memory) at 4 warps (168:
    3 programs per SM, against 2 at the default's 255). The uncapped configs are offered beside it, so the
    autotuner can keep them."""
    return autotune_configs([triton.Config({}, num_warps=4, num_stages=1, maxnreg=cap)] + _warp_configs())


# ---- the split backward (``TUNING["bwd_split"]`` "block"): the per-block backward in two kernels. The blocks' own
# pairs first, in 1-warp programs (the forward's lesson, run 12: level work on [16, K] tiles at 4 warps repeats every
# exp and layout change across warps), their decays by span-sum dots and one ex2 per element, into fp32 partials; then
# the lean 4-warp state kernel (S_m, D_m, the block-crossing terms) adds the partials and stores the gradients.
@triton.jit
def _slice_qkw(q_ptr, k_ptr, w_ptr, u_ptr, p_c, m_tc, o_c, m_c, i_h, scale, K: tl.constexpr):
    """The key columns o_c [BKC] (mask m_c) of one block's rows (offsets p_c, mask m_tc [SB, BKC]): u [BKC] and q
    (scaled), k [SB, BKC] in fp32, the raw w [SB, BKC] in its own dtype."""
    b_u = tl.load(u_ptr + i_h * K + o_c, mask=m_c, other=0.).to(tl.float32)
    b_q = tl.load(q_ptr + p_c, mask=m_tc, other=0.).to(tl.float32) * scale
    b_k = tl.load(k_ptr + p_c, mask=m_tc, other=0.).to(tl.float32)
    return b_u, b_q, b_k, tl.load(w_ptr + p_c, mask=m_tc, other=0.)


@triton.jit
def _own_slice(b_q, b_k, b_wr, b_u, b_B, b_vd, b_A, du_ptr, o_t, o_c, m_c, LOG: tl.constexpr, PREC: tl.constexpr,
               FAST: tl.constexpr, DWP: tl.constexpr, WANT_A: tl.constexpr):
    """The own pairs and bonus terms of one block on the key columns o_c [BKC] (``_own_block``'s math), given the
    slice's q (scaled), k [SB, BKC] fp32, raw w (its dtype), u [BKC], B = do vᵀ [SB, SB] and v·do [SB]: stores the
    du row entries (du_ptr: the block's row), returns (A [SB, SB] plus these columns' part of the scores, and the
    columns' dq (for the scaled q), dk, dw before the clamp's mask [SB, BKC] fp32). Not WANT_A: A returned as given
    (its dots skipped: the caller has the forward's scores)."""
    b_w = tl.where(b_wr < 0, tl.where(b_wr < W_FLOOR, W_FLOOR, b_wr), 0.).to(b_wr.dtype)   # as ``_scores_tile``
    m_lv = _level_mask(o_t, 1)                    # level 0: adjacent rows, no decay
    if WANT_A:
        b_A += tl.where(m_lv, mma(b_q, tl.trans(b_k), PREC, B_EXACT=True), 0.)
        b_A += tl.where(o_t[:, None] == o_t[None, :], tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], 0.)
    b_dA = tl.where(m_lv, b_B, 0.)
    b_dq = mma(b_dA, b_k, PREC, B_EXACT=True) + b_u[None, :] * b_k * b_vd[:, None]
    b_dk = mma(tl.trans(b_dA), b_q, PREC) + b_u[None, :] * b_q * b_vd[:, None]
    tl.store(du_ptr + o_c, tl.sum(b_q * b_k * b_vd[:, None], axis=0), mask=m_c)
    b_dw = tl.zeros_like(b_dq)
    for m in tl.static_range(1, LOG):
        b_e = _exp_ftz(_span_sums(b_w, o_t, 2 ** m), FAST)
        b_qh = b_q * b_e
        b_kh = b_k * b_e
        b_A, b_dqh, b_dkh = _level_pairs_bwd(b_qh, b_kh, b_B, b_A, o_t, 2 ** m, PREC, WANT_A)
        b_dq += b_e * b_dqh
        b_dk += b_e * b_dkh
        b_span = tl.where(_span_mask(o_t[None, :], o_t[:, None], 2 ** m), 1., 0.)
        b_dw += _span_dot(b_span, b_qh * b_dqh + b_kh * b_dkh, DWP)
    return b_A, b_dq, b_dk, b_dw


@triton.jit
def _slice_loads(q_ptr, k_ptr, w_ptr, u_ptr, tok, m_t, o_c, i_h, K: tl.constexpr):
    """One key slice's tiles as loaded (``_own_block``: the next slice's, during this one's work; rows
    tok [SB], mask m_t, columns o_c [BKC], zeros past K): u [BKC], q, k, w [SB, BKC], each in its input dtype."""
    m_c = o_c < K
    m_tc = m_t[:, None] & m_c[None, :]
    p_c = tok[:, None] * K + o_c[None, :]
    return (tl.load(u_ptr + i_h * K + o_c, mask=m_c, other=0.), tl.load(q_ptr + p_c, mask=m_tc, other=0.),
            tl.load(k_ptr + p_c, mask=m_tc, other=0.), tl.load(w_ptr + p_c, mask=m_tc, other=0.))


@triton.jit
def _own_cols(b_ur, b_qr, b_kr, b_wr, pq_ptr, pk_ptr, pw_ptr, du_ptr, b_B, b_vd, b_A, tok, m_t, o_t, o_c, scale,
              K: tl.constexpr, LOG: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, DWP: tl.constexpr,
              WANT_A: tl.constexpr):
    """``_own_block``'s work on the key columns o_c [BKC] of one block (rows tok [SB], m_t), given their tiles as
    ``_slice_loads`` loaded them (u, q, k, w in their dtypes): stores their partials of dq, dk, dw and their du row
    entries (du_ptr: the block's row); returns b_A [SB, SB] plus these columns' part of the scores (levels and
    bonus; as given unless WANT_A)."""
    m_c = o_c < K
    m_tc = m_t[:, None] & m_c[None, :]
    p_c = tok[:, None] * K + o_c[None, :]
    b_A, b_dq, b_dk, b_dw = _own_slice(b_qr.to(tl.float32) * scale, b_kr.to(tl.float32), b_wr,
                                       b_ur.to(tl.float32), b_B, b_vd, b_A, du_ptr, o_t, o_c, m_c, LOG, PREC, FAST,
                                       DWP, WANT_A)
    tl.store(pq_ptr + p_c, b_dq, mask=m_tc)
    tl.store(pk_ptr + p_c, b_dk, mask=m_tc)
    tl.store(pw_ptr + p_c, b_dw, mask=m_tc)
    return b_A


@triton.jit
def _block_do_v(v_ptr, do_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, HALF_B: tl.constexpr, PREC: tl.constexpr):
    """The backward's per-block start (block rows r0 + o_t of a sequence starting at token bos, L rows long, head
    i_h; v_ptr, do_ptr [tokens, H, V]): (m_t row mask, tok token·head index, m_tv, p_v offsets of v / do,
    B = do vᵀ [SB, SB] fp32 (HALF_B: a dot of the half inputs themselves, exact), vd = Σ_v v·do [SB] fp32)."""
    rows = r0 + o_t
    m_t = rows < L
    tok = (bos + rows) * H + i_h
    m_tv = m_t[:, None] & m_v[None, :]
    p_v = tok[:, None] * V + o_v[None, :]
    b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.)
    b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.)
    if HALF_B:      # exact: products of two half values fit the fp32 accumulator
        b_B = tl.dot(b_do, tl.trans(b_v))
    else:
        b_B = mma(b_do.to(tl.float32), tl.trans(b_v.to(tl.float32)), PREC, A_EXACT=True, B_EXACT=True)
    b_vd = tl.sum(b_v.to(tl.float32) * b_do.to(tl.float32), axis=1)
    return m_t, tok, m_tv, p_v, b_B, b_vd


@triton.jit
def _own_block(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, pq_ptr, pk_ptr, pa_ptr, pw_ptr, du_ptr, bos, r0, L, i_h,
               scale, o_t, o_v, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
               BKC: tl.constexpr, LOG: tl.constexpr, PREC: tl.constexpr, HALF_B: tl.constexpr, FAST: tl.constexpr,
               DWP: tl.constexpr, HAS_A: tl.constexpr):
    """The own pairs and bonus terms of the SB-row block at row r0 (``_bwd_own_kernel``): fp32 partials of dq (for
    the scaled q), dk, dw (before the clamp's mask) -> pq/pk/pw_ptr, the block's scores A (levels and bonus, fp32;
    dv's own part Aᵀ do is the cross kernel's) -> pa_ptr unless HAS_A (the forward's scores are kept: pa_ptr None,
    no A computed), the du row -> du_ptr [K].
    The key columns in BKC-wide slices (``_own_cols``: fewer live registers; only A needs all of K). Level m's pairs
    (t, s): exp(P^m_t) on the query rows, exp(R^m_s) on the key rows, one tile e (``_span_sums``, disjoint rows);
    with dA = M_m ⊙ (do vᵀ), dq += e ⊙ (dA k̂), dk += e ⊙ (dAᵀ q̂), and the pairs spanning j give
    dw_j = Σ_{x in j's segment, after j (j a query row) or before j (a key row)} c_x, c = q̂ ⊙ (dA k̂) + k̂ ⊙ (dAᵀ q̂)
    (the two terms live on disjoint rows): one dot of the transposed span pattern with c (``_span_dot`` at DWP:
    ``common._dw_prec``; terms of one sign per row, no cancellation).
    The next slice's q, k, w, u loaded (in their dtypes, ``_slice_loads``) before this slice's work (session 27's
    ``own_pipe``, default since H200 run 32: own kernel GPU µs 965 -> 963 at B8 T4096 H32, 141 -> 132 at B4 T2048
    H16, 528 -> 507 at B1 T16384 H32, 39 -> 40 at B64 T256 H2; Nsight Compute in run 31 had put 45 % of its stall
    samples on those loads). A rotation is right here — unlike the state scans' (``states._chunk_scan_kernel``),
    whose back-edge copy waited on a load issued a few instructions before, this copy comes a whole slice's work
    after its load; unrolled by two over a ring of slices instead, the loop doubled its code and its spills (offline
    sm_90, Triton 3.9, 1 warp, cap 168: spill stores 99 -> 384). The slice past the last (K) loads zeros and is
    never used."""
    m_t, tok, _, _, b_B, b_vd = _block_do_v(v_ptr, do_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, HALF_B, PREC)
    b_A = tl.zeros([o_t.shape[0], o_t.shape[0]], dtype=tl.float32)
    o_c = tl.arange(0, BKC)
    b_u, b_q, b_k, b_w = _slice_loads(q_ptr, k_ptr, w_ptr, u_ptr, tok, m_t, o_c, i_h, K)
    for i_c in tl.range(0, BK // BKC, loop_unroll_factor=1):
        b_un, b_qn, b_kn, b_wn = _slice_loads(q_ptr, k_ptr, w_ptr, u_ptr, tok, m_t, (i_c + 1) * BKC + o_c, i_h, K)
        b_A = _own_cols(b_u, b_q, b_k, b_w, pq_ptr, pk_ptr, pw_ptr, du_ptr, b_B, b_vd, b_A, tok, m_t, o_t,
                        i_c * BKC + o_c, scale, K, LOG, PREC, FAST, DWP, not HAS_A)
        b_u, b_q, b_k, b_w = b_un, b_qn, b_kn, b_wn
    if not HAS_A:
        tl.store(pa_ptr + tok[:, None] * o_t.shape[0] + o_t[None, :], b_A, mask=m_t[:, None])


def _own_prune(configs, nargs, **kw):
    """The own kernel's configs whose key slice BKC fits BK."""
    bk = kw["BK"] if "BK" in kw else nargs["BK"]
    return [c for c in configs if c.kwargs["BKC"] <= bk]


# 1 warp (the scores kernel's lesson) or 2, key slices of 16 or 32 columns (offline sm_90 compile, bf16, K = V = 64,
# registers / spill B / SASS of the loop bodies: BKC 16 at 1 warp 255 / 376 / 3680, at 2 255 / 184 / 3008; BKC 32
# at 1 warp 255 / 1048 / 5912, at 2 255 / 248 / 3440); and BKC 16 capped at 168 registers (Triton's maxnreg; 12
# 1-warp programs an SM instead of 8, more spill: session 20 offline, Triton 3.9, 1 warp 168 / 1136 / 4000, 2 warps
# 168 / 608 / 3208) — offered untimed: the autotuner keeps them only if they win (the state kernel's cap did, run 13)
@triton.autotune(configs=autotune_configs([triton.Config({"BKC": bkc}, num_warps=nw, num_stages=1)
                                           for bkc in (16, 32) for nw in (1, 2)]
                                          + [triton.Config({"BKC": 16}, num_warps=nw, num_stages=1, maxnreg=168)
                                             for nw in (1, 2)]),
                 key=["K", "V", "BT", "BK", "BV", "PREC", "HALF_B", "HAS_A", "GRID_BUCKET"],
                 prune_configs_by={"early_config_prune": _own_prune})
@triton.jit(do_not_specialize=['T', 'NT', 'GRID_BUCKET'])
def _bwd_own_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, pq_ptr, pk_ptr, pa_ptr, pw_ptr, du_ptr, cu_ptr, cmap_ptr,
                    scale, T, NT, GRID_BUCKET, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                    SB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKC: tl.constexpr, LOG: tl.constexpr,
                    VARLEN: tl.constexpr, PREC: tl.constexpr, HALF_B: tl.constexpr, FAST: tl.constexpr,
                    DWP: tl.constexpr, HAS_A: tl.constexpr):
    """Grid (chunk slots, H), no state read: the own pairs and bonus terms of the BT // SB blocks of one chunk
    (``_own_block``, key columns BKC at a time) -> fp32 partials pq_ptr, pk_ptr, pw_ptr [B·T, H, K] (dq for the
    scaled q, dw before the clamp's mask), pa_ptr [B·T, H, SB] (each row's scores A in its block, levels and
    bonus), and du_ptr [slots · BT/SB, H, K] fp32 partial rows
    (one per block; every block of the chunk writes its row, rows past the sequence zeros). w_ptr in the inputs'
    dtype (fp32 under the interpreter for bf16: its bf16 dots are wrong there). FAST: ``_exp_ftz``; DWP: the dw
    span dots' precision (the next key slice's loads in flight: ``_own_block``).
    GRID_BUCKET: autotune key only (``_grid_bucket`` of the grid). HAS_A: the forward kept
    its scores (``_fwd_scores_kernel``'s a, the same A), which the cross kernel reads: pa_ptr None, no A dots here.
    Other layouts above."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    o_t = tl.arange(0, SB)
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    for i_b in tl.range(0, BT // SB, loop_unroll_factor=1):
        p_du = du_ptr + ((i_s.to(tl.int64) * (BT // SB) + i_b) * H + i_h) * K
        _own_block(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, pq_ptr, pk_ptr, pa_ptr, pw_ptr, p_du, bos,
                   i_c * BT + i_b * SB, L, i_h, scale, o_t, o_v, m_v, H, K, V, BK, BKC, LOG, PREC, HALF_B, FAST, DWP,
                   HAS_A)


@triton.jit
def _cross_block(q_ptr, k_ptr, v_ptr, w_ptr, do_ptr, pq_ptr, pk_ptr, pa_ptr, pw_ptr, dq_ptr, dk_ptr, dv_ptr, dw_ptr,
                 b_h, b_dh, bos, r0, L, i_h, scale, o_t, o_k, o_v, m_k, m_v, H: tl.constexpr, K: tl.constexpr,
                 V: tl.constexpr, SB: tl.constexpr, PREC: tl.constexpr):
    """The block at row r0 given S at its start (b_h) and dL/dS at its end (b_dh): its block-crossing terms
    (``common._cross_bwd_dots``) plus ``_bwd_own_kernel``'s fp32 partials -> the gradients in the inputs' dtypes."""
    b_q, b_k, b_wr, b_v, b_do = _block_rows(q_ptr, k_ptr, w_ptr, v_ptr, do_ptr, bos, r0, L, i_h, scale, o_t, o_k,
                                            o_v, m_k, m_v, H, K, V, SB)
    b_dq, b_dk, b_dv, b_dw = _cross_bwd_dots(b_q, b_k, _sum_operand(b_wr), b_v, b_do, b_h, b_dh, o_t, PREC)
    _cross_store(pq_ptr, pk_ptr, pa_ptr, pw_ptr, dq_ptr, dk_ptr, dv_ptr, dw_ptr, b_do, b_wr, b_dq, b_dk, b_dv, b_dw,
                 bos, r0, L, i_h, scale, o_t, o_k, o_v, m_k, m_v, H, K, V, SB, PREC)


@triton.jit
def _cross_store(pq_ptr, pk_ptr, pa_ptr, pw_ptr, dq_ptr, dk_ptr, dv_ptr, dw_ptr, b_do, b_wr, b_dq, b_dk, b_dv, b_dw,
                 bos, r0, L, i_h, scale, o_t, o_k, o_v, m_k, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 SB: tl.constexpr, PREC: tl.constexpr):
    """A block's crossing terms (fp32) plus ``_bwd_own_kernel``'s partials and the own pairs' dv Aᵀ do -> the
    gradients of rows r0 + o_t in their dtypes."""
    m_t, p_k, p_v, m_tk, m_tv = _row_offsets(bos, r0, L, i_h, o_t, o_k, o_v, m_k, m_v, H, K, V)
    b_A = tl.load(pa_ptr + ((bos + r0 + o_t) * H + i_h)[:, None] * SB + o_t[None, :], mask=m_t[:, None], other=0.)
    b_dv += mma(tl.trans(b_A), b_do, PREC, B_EXACT=True)     # the own pairs' dv from their scores
    tl.store(dv_ptr + p_v, b_dv.to(dv_ptr.dtype.element_ty), mask=m_tv)
    _store_dqkw(b_dq + tl.load(pq_ptr + p_k, mask=m_tk, other=0.), b_dk + tl.load(pk_ptr + p_k, mask=m_tk, other=0.),
                b_dw + tl.load(pw_ptr + p_k, mask=m_tk, other=0.), b_wr, dq_ptr, dk_ptr, dw_ptr, p_k, m_tk, scale)


@triton.autotune(configs=_capped_configs(168), key=["K", "V", "BT", "BK", "BV", "PREC", "GRID_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NT', 'GRID_BUCKET'])
def _bwd_cross_kernel(q_ptr, k_ptr, v_ptr, w_ptr, do_ptr, hs_ptr, hd_ptr, pq_ptr, pk_ptr, pa_ptr, pw_ptr, dq_ptr,
                      dk_ptr, dv_ptr, dw_ptr, dup_ptr, du_ptr, cu_ptr, cmap_ptr, scale, T, NT, NDU, GRID_BUCKET,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, SB: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr,
                      FINISH_DU: tl.constexpr):
    """Grid (chunk slots · BT/SB blocks, H), all of V per program (BV >= V) (``bwd_split`` "block"), the state
    half of the split backward, one SB-row block per program: S_m, D_m
    (``_block_states``) and ``_cross_block``, adding ``_bwd_own_kernel``'s fp32 partials pq_ptr, pk_ptr, pw_ptr
    [B·T, H, K] and the own pairs' dv Aᵀ do from its scores pa_ptr [B·T, H, SB] -> dq_ptr, dk_ptr, dw_ptr [B·T, H,
    K], dv_ptr [B·T, H, V] (other layouts
    above). Offered a 168-register cap at 4 warps beside the uncapped 4 / 8 warps (H100 run 13: the cap picked).
    Every decay sum a ``common._decay_sums`` dot (w_ptr as ``_w_for_dots`` gives it; H200 run 30: 2,502 -> 1,993 µs
    at B8 T4096 H32 against scans and column sums).
    FINISH_DU: one more program per head (the last of axis 0) sums the own kernel's du partial rows dup_ptr
    [NDU, H, K] fp32 in row order into du_ptr [H, K] fp32 (deterministic; no separate reduction launch); else
    both are None and NDU 0. GRID_BUCKET: autotune key only (``_grid_bucket`` of the grid)."""
    if FINISH_DU and tl.program_id(0) == tl.num_programs(0) - 1:
        _sum_du(dup_ptr, du_ptr, NDU, tl.program_id(1), H, K, BK)
    else:
        pid, i_h, i_s, i_m, bos, L, c0, r0 = _block_loc(cu_ptr, cmap_ptr, T, NT, BT, SB, VARLEN)
        o_t = tl.arange(0, SB)
        o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(0, K, V, BK, BV)
        b_h, b_dh = _block_states(q_ptr, k_ptr, v_ptr, w_ptr, do_ptr, hs_ptr, hd_ptr, i_s, i_m, i_h, bos, L, c0,
                                  scale, o_t, o_k, o_v, m_k, m_v, o_kv, m_kv, H, K, V, BT, SB, PREC)
        _cross_block(q_ptr, k_ptr, v_ptr, w_ptr, do_ptr, pq_ptr, pk_ptr, pa_ptr, pw_ptr, dq_ptr, dk_ptr, dv_ptr,
                     dw_ptr, b_h, b_dh, bos, r0, L, i_h, scale, o_t, o_k, o_v, m_k, m_v, H, K, V, SB, PREC)


@triton.jit
def _sum_du(dup_ptr, du_ptr, NDU, i_h, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    """du_ptr[i_h] = Σ_r dup_ptr[r, i_h] over the NDU partial rows (dup_ptr [NDU, H, K], du_ptr [H, K], fp32), 32
    rows a load in row order."""
    o_r = tl.arange(0, 32)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    acc = tl.zeros([BK], dtype=tl.float32)
    for r0 in range(0, NDU, 32):
        rows = (r0 + o_r).to(tl.int64)
        acc += tl.sum(tl.load(dup_ptr + (rows[:, None] * H + i_h) * K + o_k[None, :],
                              mask=(rows < NDU)[:, None] & m_k[None, :], other=0.), 0)
    tl.store(du_ptr + i_h * K + o_k, acc, mask=m_k)


# ---- the fused backward (``bwd_split`` "fused"): the own pairs and the block-crossing terms in one program per chunk,
# the key columns in BKC-wide slices. Every term but A = q kᵀ (the own dv) and the crossing dv = (k ⊙ exp(R)) D sums
# over keys is separable in K: a slice of S and D ([BKC, BV] rows of the states) moves over a block with that slice's
# k, q, w alone (``_state_over_block`` / ``_grad_over_block`` on the slice's columns), and ``_cross_bwd`` on the
# slice's columns gives that slice's dq, dk, dw and its part of dv. So dq, dk, dw are final per slice (stored once, in
# the gradients' dtypes) and only A and dv accumulate over the slices: no fp32 partials, S_c and D_c read once per
# chunk from HBM (a block re-reads its slices: L1 / L2).
@triton.jit
def _fused_cols(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, hs_ptr, hd_ptr, dq_ptr, dk_ptr, dw_ptr, du_ptr, b_B, b_vd,
                b_A, b_dv, p_v, m_tv, p_s, tok, m_t, o_t, o_c, o_v, m_v, bos, c0, i_b, nb, L, i_h, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, SB: tl.constexpr, LOG: tl.constexpr,
                PREC: tl.constexpr, FAST: tl.constexpr, DWP: tl.constexpr):
    """Key columns o_c [BKC] of block i_b (rows tok [SB], m_t; chunk start c0, nb blocks of the chunk hold rows) in
    ``_bwd_fused_kernel``: the own pairs and bonus terms (as ``_own_cols``) and the block-crossing terms from this
    slice of S at the block start and dL/dS at its end (S_c / D_c rows o_c at p_s, moved over the chunk's earlier /
    later blocks; none when c0 >= L) -> the final dq (× scale), dk, dw of these columns and their du row
    entries (du_ptr: the block's row). Returns b_A [SB, SB] and b_dv [SB, BV] plus these columns' parts."""
    m_c = o_c < K
    m_tc = m_t[:, None] & m_c[None, :]
    p_c = tok[:, None] * K + o_c[None, :]
    b_u, b_q, b_k, b_wr = _slice_qkw(q_ptr, k_ptr, w_ptr, u_ptr, p_c, m_tc, o_c, m_c, i_h, scale, K)
    b_A, b_dq, b_dk, b_dw = _own_slice(b_q, b_k, b_wr, b_u, b_B, b_vd, b_A, du_ptr, o_t, o_c, m_c, LOG, PREC, FAST,
                                       DWP, True)     # the own pairs (``_own_cols``)
    # ---- this slice of S at the block start and of dL/dS at its end, then the crossing terms (``_cross_bwd``)
    o_cv = o_c[:, None] * V + o_v[None, :]
    m_cv = m_c[:, None] & m_v[None, :] & (o_cv * 0 + c0 < L)
    b_h = tl.load(hs_ptr + p_s + o_cv, mask=m_cv, other=0.)
    for j in range(0, tl.minimum(i_b, nb)):
        b_h = _state_over_block(b_h, k_ptr, v_ptr, w_ptr, bos, c0 + j * SB, L, i_h, o_t, o_c, o_v, m_c, m_v, H, K, V,
                                SB, PREC)
    b_dh = tl.load(hd_ptr + p_s + o_cv, mask=m_cv, other=0.)
    for j in range(0, nb - 1 - i_b):
        b_dh = _grad_over_block(b_dh, q_ptr, do_ptr, w_ptr, bos, c0 + (nb - 1 - j) * SB, L, i_h, scale, o_t, o_c, o_v,
                                m_c, m_v, H, K, V, SB, PREC)
    b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)       # re-read (L1): not live across slices
    b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_dqx, b_dkx, b_dvx, b_dwx = _cross_bwd(b_q, b_k, _clamp_w(b_wr.to(tl.float32)), b_v, b_do, b_h, b_dh, PREC)
    _store_dqkw(b_dq + b_dqx, b_dk + b_dkx, b_dw + b_dwx, b_wr, dq_ptr, dk_ptr, dw_ptr, p_c, m_tc, scale)
    return b_A, b_dv + b_dvx


# key slices of 16 columns at 2, 4 or 8 warps (offline sm_90 compile, Triton 3.9, bf16, K = V = 64, 32-row states:
# registers / spill-stack B / SASS 255 / 504 / 4688 at 2 warps, 255 / 360 / 3520 at 4, 255 / 152 / 2960 at 8; not
# offered: 1 warp 255 / 1368 / 6992, BKC 32 1256, 864, 456 B of spill at 2, 4, 8 warps)
@triton.autotune(configs=autotune_configs([triton.Config({"BKC": 16}, num_warps=nw, num_stages=1)
                                           for nw in (4, 2, 8)]),
                 key=["K", "V", "BT", "BK", "BV", "PREC", "HALF_B", "GRID_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NT', 'GRID_BUCKET'])
def _bwd_fused_kernel(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, hs_ptr, hd_ptr, dq_ptr, dk_ptr, dv_ptr, dw_ptr, du_ptr,
                      cu_ptr, cmap_ptr, scale, T, NT, GRID_BUCKET, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      BT: tl.constexpr, SB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKC: tl.constexpr,
                      LOG: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr, HALF_B: tl.constexpr,
                      FAST: tl.constexpr, DWP: tl.constexpr):
    """Grid (chunk slots, H), all of V per program (BV >= V) (``bwd_split`` "fused"): every gradient of the BT // SB
    blocks of one chunk, the block's own pairs and its block-crossing terms together (``_fused_cols``, key columns
    BKC at a time; not unrolled), from hs_ptr / hd_ptr (the state at each chunk start / dL/dS at each chunk end) ->
    dq_ptr, dk_ptr, dw_ptr, dv_ptr (layouts above) and du_ptr [slots · BT/SB, H, K] fp32 partial rows (one per block;
    rows past the sequence zeros). No partials: A [SB, SB] and dv [SB, BV] accumulate over the slices in registers.
    w_ptr in the inputs' dtype (fp32 under the interpreter for bf16); FAST, DWP, GRID_BUCKET as
    ``_bwd_own_kernel``'s."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    c0 = i_c * BT
    o_t = tl.arange(0, SB)
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    p_s = (i_s.to(tl.int64) * H + i_h) * K * V
    nb = tl.minimum(tl.cdiv(L - c0, SB), BT // SB)     # blocks of this chunk that hold rows (the rest: no-ops)
    for i_b in tl.range(0, BT // SB, loop_unroll_factor=1):
        r0 = c0 + i_b * SB
        m_t, tok, m_tv, p_v, b_B, b_vd = _block_do_v(v_ptr, do_ptr, bos, r0, L, i_h, o_t, o_v, m_v, H, V, HALF_B,
                                                     PREC)
        b_A = tl.zeros([SB, SB], dtype=tl.float32)
        b_dv = tl.zeros([SB, BV], dtype=tl.float32)
        p_du = du_ptr + ((i_s.to(tl.int64) * (BT // SB) + i_b) * H + i_h) * K
        for i_kc in tl.range(0, BK // BKC, loop_unroll_factor=1):   # not unrolled: one slice's tiles live at a time
            b_A, b_dv = _fused_cols(q_ptr, k_ptr, v_ptr, w_ptr, u_ptr, do_ptr, hs_ptr, hd_ptr, dq_ptr, dk_ptr, dw_ptr,
                                    p_du, b_B, b_vd, b_A, b_dv, p_v, m_tv, p_s, tok, m_t, o_t,
                                    i_kc * BKC + tl.arange(0, BKC), o_v, m_v, bos, c0, i_b, nb, L, i_h, scale, H, K,
                                    V, SB, LOG, PREC, FAST, DWP)
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)      # reloaded (L1): fewer live registers
        b_dv += mma(tl.trans(b_A), b_do, PREC, B_EXACT=True)
        tl.store(dv_ptr + p_v, b_dv.to(dv_ptr.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------
def _bk(K: int) -> int:
    return max(16, _pow2(K))


def _use_seq(N: int, H: int, V: int, device) -> bool:
    """The sequential walk when (sequence·head, 32-wide V-block) programs fill every SM; else the state pass +
    chunk-parallel output. H100, run 4 (profiles/.../run4-2026-11-27/wkv6_chunk16_*): the walk won the forward at
    B8 T4096 H32, B16 T1024 H8, B64 T256 H2 and H4 (K32), the state pass at B4 T2048 H16 and B1 T16384 H32."""
    return N * H * _cdiv(V, 32) >= num_sms(device)


_FORCED_SEQ: bool | None = None   # set only by forward_mode


@contextlib.contextmanager
def forward_mode(seq: bool):
    """Force the forward's launch mode inside the block (True: the sequential walk, False: the state pass +
    chunk-parallel output) instead of ``_use_seq``'s choice — for the tests and the dev harness that check and time
    both modes. Not thread-safe."""
    global _FORCED_SEQ
    old, _FORCED_SEQ = _FORCED_SEQ, seq
    try:
        yield
    finally:
        _FORCED_SEQ = old


def _use_scores(T: int, knobs) -> bool:
    """``fwd_scores``; None: on where T >= ``SCORES_MIN_T`` (H100 run 12, wkv6i: timed and won at T = 1024 and
    4096; the per-chunk work does not depend on T, so longer sequences take it too since session 21 — H200 run
    26 at B1 T16384 H32: forward 1.441 → 0.997 ms, with ``_one_state_pass``'s two-kernel pass). Below it the level
    forward — but where the level forward would take the walk (``_use_seq``), ``_fwd_plan`` takes the scored walk in
    32-row steps instead: H200 run 32 at B64 T256 H2 (the small model's shape), GPU µs per fwd+bwd 227 -> 194, forward
    kernels 81 -> 48 (levels + split walk -> scores + step walk), do_bench forward 0.201 -> 0.109 ms. T is the
    padded length, for varlen the packed total (a per-sequence rule would need the offsets on the host: a sync)."""
    if knobs["fwd_scores"] is None:
        return T >= SCORES_MIN_T
    return bool(knobs["fwd_scores"])


def _one_state_pass(T: int, knobs) -> bool:
    """``fwd_states`` for the scored state-pass forward: "one" the one-kernel state pass (``states._walk_pass``:
    each (sequence, head, K-block, V-block) walks its T / state_rows chunks in series, saving S at the backward's
    spacing), "two" the two-kernel one (``states._par_states``: every chunk's ΔS in parallel, then the scan over
    64-row chunks; the backward then runs at 64-row states). None: "one" where T <= ``ONE_PASS_MAX_T`` (timed at
    T = 1024 and 2048), "two" above — at B1 T16384 H32 the level forward it replaces (the two-kernel pass + the
    level output kernel) took 1,025 µs in its output kernel alone and 1.45 ms in all against fla's 1.20 (H200 run
    25); the one-kernel pass would walk 512 chunks in series there. H200 run 26: forward 0.997 ms (fla 1.200),
    GPU µs per fwd+bwd 3,466 against the level forward's 3,981 and the one-kernel pass's 4,190."""
    mode = knobs["fwd_states"]
    return T <= ONE_PASS_MAX_T if mode is None else mode == "one"


def _one_bwd_state_pass(T: int, saved: bool, knobs) -> bool:
    """``bwd_states`` for the backward's D_c: "one" kernel (``states._walk_pass``: each (sequence, head, K-block,
    V-block) walks its T / state_rows chunks in series from the last) or "two" (``states._par_states``: every
    chunk's ΔD in parallel, then the scan). None: "one" where the forward saved S_c and T <= ``ONE_PASS_MAX_T`` (the
    forward's rule, the same serial walk), else "two". H200 run 33, GPU µs per fwd+bwd, two / one: B8 T4096 H32
    4,629 / 4,270 (the ΔD kernel + scan ~650 -> 316), B4 T2048 H16 712 / 715, B64 T256 H2 191 / 189, B1 T16384 H32
    2,794 / 3,104 (256 chunks in series: 605 µs). Where S_c is not saved (``save_states`` False) the one-kernel form
    (S_c from ``_walk_pass`` first) is untimed: "two" (its scan folds both directions side by side)."""
    mode = knobs["bwd_states"]
    return saved and T <= ONE_PASS_MAX_T if mode is None else mode == "one"


SCORES_MIN_T, ONE_PASS_MAX_T = 1024, 4096


def _fwd_plan(N, H, V, T, device, knobs):
    """(sequential walk?, whether the forward keeps its states for the backward, the backward's ``state_rows``,
    scores kernel?). With ``fwd_scores`` (``_use_scores``) the walk runs where N·H >= #SMs, else a state pass (the
    one-kernel one up to ``ONE_PASS_MAX_T``, ``_one_state_pass``) + chunk-parallel output (H100 run 12, wkv6i: GPU
    us per fwd+bwd, walk / one-kernel state pass: B8 T4096 H32 7517 / 7582, B16 T1024 H8 1089 / 1051, B8 T1024 H8
    656 / 563); both save states at any spacing, so ``state_rows`` None is 32 (64 with the two-kernel pass).
    Without it (``_use_seq``) ``state_rows`` None is 32 with the walk forward, 64 with the two-kernel state pass
    (H100 run 10), which always runs at 64-row chunks (its scan is latency-bound: shorter
    chunks would add serial steps to the forward) and keeps them only when the backward wants 64-row states; else
    the backward's state pass recomputes S_c beside D_c (its two scan directions run side by side)."""
    scores = _use_scores(T, knobs)
    auto = N * H >= num_sms(device) if scores else _use_seq(N, H, V, device)
    seq = auto if _FORCED_SEQ is None else _FORCED_SEQ
    scores = scores or (seq and knobs["fwd_scores"] is None)    # below SCORES_MIN_T the walk is scored all the same
    own = seq or (scores and _one_state_pass(T, knobs))   # saves states at any spacing (walk, one-kernel pass)
    rows = knobs["state_rows"] or (32 if own else BT)
    return seq, knobs["save_states"] and (own or rows == BT), rows, scores


def _fwd_scores(r, k, w, u, scale, cu, prec, out=None):
    """Every block's scores A (``_fwd_scores_kernel``): [B, T, H, SB] fp32 (into ``out`` when given), one program per
    64-row chunk and head. ``cu``: cu_seqlens as the kernels take it (``common._cu``: int32, or None)."""
    B, T, H, K = r.shape
    N = B if cu is None else cu.shape[0] - 1
    a = new_empty((B, T, H, SB), torch.float32, r.device) if out is None else out
    S, NT, cmap = _par_slots(B, T, N, cu, r.device, BT)
    launch(_fwd_scores_kernel)[(S, H)](r, k, w, u, a, cu, cmap, scale, T, NT, H=H, K=K, BT=BT, SB=SB, BK=_bk(K),
                                       LOG=LOG, VARLEN=cu is not None, PREC=prec, FAST=not INTERPRET)
    return a


def _keeps_scores(keep: bool, scores: bool, kn) -> bool:
    """Whether the forward keeps its blocks' scores A for the backward (``_fwd_scores_kernel``'s a, the same A the
    own kernel would compute: then it computes none, and the cross kernel reads this one): where it computes them,
    keeps states and the backward is the split one ("block"). 64 B per token and head held between the
    passes (16 MiB at the large model's B16 T1024 H8), the backward's 64-B scores partial gone."""
    return scores and keep and kn["bwd_split"] == "block"


def _saved_views(buf, B, T, H, N, K, V, varlen, rows):
    """The states view [slots, H, K, V] at ``rows`` and the scores view [B, T, H, SB] of the flat fp32 buffer the
    forward saves when it keeps its scores (``_keeps_scores``): the states first, then the scores."""
    shape = _par_state_shape(B, T, H, K, V, N, varlen, rows)
    n_h = math.prod(shape)
    return buf[:n_h].view(shape), buf[n_h:].view(B, T, H, SB)


def _saved_buffers(B, T, H, K, V, N, varlen, rows, device):
    """(one flat fp32 buffer, its ``_saved_views``): what the forward saves when it keeps its scores."""
    n = math.prod(_par_state_shape(B, T, H, K, V, N, varlen, rows)) + B * T * H * SB
    buf = new_empty((n,), torch.float32, device)
    return (buf, *_saved_views(buf, B, T, H, N, K, V, varlen, rows))


def _chunk_fwd_impl(r, k, v, w, u, scale, h0, cu_seqlens, save=False, knobs=None):
    """o, final state and (if save) the chunk-start states for the backward (else an empty tensor). ``knobs``:
    the memory knobs (default ``TUNING``; ``wkv6_chunk_lowmem`` passes ``LOWMEM``)."""
    w = _w_for_dots(w)       # the span and decay sums are dots of w as it is (CPU: bf16 as fp32)
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK = _bk(K)
    dev = r.device
    prec = _prec(r.dtype)
    varlen = cu_seqlens is not None
    kn = knobs or TUNING
    seq, keep, rows, scores = _fwd_plan(N, H, V, T, dev, kn)
    save, bt = save and keep, (rows if seq else BT)
    o = new_empty((B, T, H, V), r.dtype, dev)
    saved, hs_out, a_out = (_saved_buffers(B, T, H, K, V, N, varlen, rows, dev) if save and _keeps_scores(
        keep, scores, kn) else (None, None, None))      # the states and the scores in one saved buffer
    if seq:
        NT = _cdiv(T, bt)
        ht = new_empty((N, H, K, V), torch.float32, dev)
        hs = hs_out if hs_out is not None else new_empty(
            _par_state_shape(B, T, H, K, V, N, varlen, bt) if save else (0,), torch.float32, dev)
        grid = lambda meta: (_cdiv(V, meta["BV"]), N * H)  # noqa: E731
        cu = _cu(cu_seqlens)
        a = _fwd_scores(r, k, w, u, scale, cu, prec, a_out) if scores else None
        step = scores and bool(kn["fwd_step"]) and bt == 2 * SB     # 32-row steps; at 64-row states 16-row blocks
        kernel = _fwd_step_kernel if step else _fwd_scored_kernel if scores else _fwd_seq_kernel
        launch(kernel)[grid](r, k, v, w, u, a, h0, o, ht, hs if save else None, cu, scale, T, NT,
                             _nh_bucket(N * H), H=H, K=K, V=V, BT=bt, SB=SB, BK=BK, LOG=LOG, USE_H0=h0 is not None,
                             VARLEN=varlen, SAVE=save, SCORES=scores, PREC=prec,
                             PIPE=scores and not step and kn["fwd_pipe"], STEP=step, FAST=step and not INTERPRET)
        return o, ht, (saved if saved is not None else hs)
    BV = max(16, min(64, _pow2(V)))
    if scores and _one_state_pass(T, kn):   # one state kernel at the backward's spacing (64 rows if none saved)
        bt = rows if save else BT
        hs, ht, S, NT, cmap, cu = _walk_pass(k, v, w, h0, cu_seqlens, bt, False, out=hs_out)
    else:                                   # the chunk states in parallel, then the scan (64-row chunks)
        buf, ht, _, S, NT, cmap, cu = _par_states(r, k, v, w, None, scale, h0, None, cu_seqlens, "fwd",
                                                  _scan_bv(N, H, V, dev, kn), bt, kn["scan_pipe"], hs_out)
        hs = buf[0]
    if scores:
        a = _fwd_scores(r, k, w, u, scale, cu, prec, a_out)
        launch(_fwd_par_scored_kernel)[lambda meta: (S, _cdiv(V, meta["BV"]), H)](
            r, k, v, w, u, a, hs, o, cu, cmap, scale, T, NT, _grid_bucket(S * H), H=H, K=K, V=V, BT=bt, SB=SB,
            BK=BK, LOG=LOG, VARLEN=varlen, SCORES=True, PREC=prec)
    else:
        launch(_fwd_par_kernel)[(S, _cdiv(V, BV), H)](r, k, v, w, u, None, hs, o, cu, cmap, scale, T, NT,
                                                      _grid_bucket(S * H), H=H, K=K, V=V, BT=bt, SB=SB, BK=BK, BV=BV,
                                                      LOG=LOG, VARLEN=varlen, SCORES=False, PREC=prec)
    return o, ht, (saved if saved is not None else hs if save else hs.new_empty((0,)))


# Memory knobs of the chunk algorithm, measured on the H100 (scripts/gpu_wkv6.py variants, notes/wkv6.md run 5);
# the defaults are the fastest; ``LOWMEM`` (``wkv6_chunk_lowmem``) the smallest; ``tuning`` overrides them (tests,
# dev harness):
#   save_states  the forward keeps the fp32 chunk-start states for the backward (False: the backward recomputes
#                them in its state pass: one more dot per chunk, 4·K·V bytes per 64 tokens and head less held
#                between the passes);
#   piece_bytes  the backward runs batch slices one after another so that its transient fp32 state buffers stay
#                under this many bytes (None: one piece; varlen: always one piece). H200 run 32 at B8 T4096 H32
#                (GPU µs per fwd+bwd / extra peak GiB, gradients included): None 4,577 / 2.46, 2**27 (pieces of two
#                batch elements) 4,738 / 1.51, with save_states False and 2**26 5,661 / 0.86;
#   scan_fill    the state scans use narrower V-blocks (down to 16) until they have >= scan_fill × #SMs
#                programs (a piece of one or two batch elements has few (sequence, head) pairs; 0 / False: off);
#   scan_pipe    the state scans keep a second chunk's loads in flight (``states._chunk_scan_kernel``'s PIPE: a
#                ring of two register tiles since H200 run 31, both scans 417 -> 278 us at B1 T16384 H32, 60 -> 44
#                at B4 T2048 H16, 290 -> 304 at B8 T4096 H32 against the one-ahead rotation before; that one against
#                none in H100 run 10: the reverse scan 538 -> 186 us at B8 T4096 H32; no memory cost);
#   state_rows   rows between the fp32 states of the state pass, the forward's saved states and the backward's
#                chunks (64 or 32; ``BT`` in the kernels; None: 32 with the walk forward, 64 with the state
#                pass): each backward program (one 16-row block) moves S_c and D_c over the other blocks of its
#                chunk, 0-3 block updates each at 64 (12 per 64 rows), 0-1 at 32 (4); the state buffers and the
#                reverse scan's serial steps grow as 64 / state_rows. The state-pass forward (few programs) stays
#                at 64 and keeps no states at 32 (``_fwd_plan``). H100 run 10 (with scan_pipe; GPU us per
#                fwd+bwd): 32 wins where the walk runs (B8 T4096 H32 8028 vs 8630, B16 T1024 H8 1177 vs 1235,
#                B64 T256 H4 K32 288 vs 315; +0.5 GiB at B8 T4096 H32), 64 where the state pass does (B4 T2048
#                H16 1212 vs 1242): hence None;
#   fwd_scores   the blocks' scores A (the level work) from ``_fwd_scores_kernel``: one 1-warp program per 64-row
#                chunk (on [16, K] tiles the compiler's 4-warp code repeats work: offline sm_90 compile, bf16
#                K = 64, ~2,000 SASS instructions per block at 1 warp against ~8,000 warp-instructions of the
#                4-warp level code), the decays by span-sum dots (``_span_sums``) instead of cumprods; the walk or
#                the chunk-parallel output kernel then reads A (64 bytes per token and head) and keeps only the
#                block-level decays and three dots; the state-pass forward becomes the one-kernel state pass
#                (``states._fwd_states_kernel``) saving states at the backward's spacing (32 rows) up to
#                T = 4096 (``fwd_states``). None (default): the state pass scored where T >= 1024 (``_use_scores``:
#                timed at 1024 and 4096; above 4096 since session 21, timed in H200 run 26), the walk (where N·H >=
#                #SMs, or below T 1024 where ``_use_seq`` picks it) scored at any T since H200 run 32 (``_fwd_plan``).
#                H100 run 12 (wkv6i; GPU us per fwd+bwd, old default -> new: B8 T4096 H32 8068 -> 7517, forward
#                2068 -> 1702; B16 T1024 H8 1092 -> 1051, forward 317 -> 277; B8 T1024 H8 597 -> 563);
#   fwd_states   the scored state-pass forward's state pass (``_one_state_pass``): "one" the one-kernel pass
#                (serial over the T / state_rows chunks of a sequence, saves at the backward's spacing), "two" the
#                chunk-state kernel + scan of the level forward (parallel over chunks, 64-row states); None
#                (default): "one" up to T = 4096, "two" above (session 21; for B1 T16384 H32, where the level
#                forward lost 0.83x to fla's in H200 run 25: run 26, forward 1.441 -> 0.997 ms, fla 1.200);
#   fwd_pipe     the scored walk loads the next block's tiles before this block's dots (``_fwd_walk``'s PIPE; the
#                walk is a latency chain: 5.3 us per block at B8 T4096 H32, run 12). On since H200 run 33 (the
#                16-row walk at 32-row states, GPU µs of the walk kernel without / with: B8 T4096 H32 1,220 /
#                1,083, B64 T256 H2 48 / 51); applies only where the 16-row walk runs (``fwd_step`` False, or
#                64-row states: ``LOWMEM``, untimed there with it);
#   fwd_step     the scored walk in 32-row steps (``_step_block``) instead of 16-row blocks: half the serial
#                iterations (the walk is a latency chain: ~1,880 SASS instructions per warp and 24 barriers per
#                16-row block, offline sm_90), the pairs of a step's two blocks by one more level, the state stored
#                at every step start (no masked stores). Applies where the scored walk runs at 32-row states (the
#                default's; at state_rows 64 the walk keeps its 16-row blocks). Default True since H100 run 16
#                (session 13; do_bench ms fwd / fwd+bwd at B8 T4096 H32: 1.487 / 6.332 -> 1.341 / 6.197, the walk
#                1401 -> 1199 GPU us; 64-row steps, since removed: 1.744 / 7.049 and dw 2.07e-3 > 2e-3 at bf16 K32
#                V96);
#   bwd_split    "block" or "fused": the backward in two kernels (``_bwd_own_kernel`` then the state
#                kernel): the blocks' own pairs in 1-warp programs, one per chunk (span-sum decays, one ex2 per
#                element), into fp32 partials of dq, dk, dw and the blocks' scores (4 bytes × (3K + 16) per token
#                and head, transient: 0.81 GiB at B8 T4096 H32 K = V = 64; 4 × (3K + V) before session 20),
#                then the 4-warp state kernel (S_m, D_m, block-crossing terms),
#                one program per block ("block", ``_bwd_cross_kernel``), that adds them. Run 11's split (both halves
#                at 4 warps) lost: own 2,841 + cross 2,442 vs 5,162 us at B8 T4096 H32. H100 run 13 (wkv6j call A;
#                GPU us per fwd+bwd, ``_bwd_kernel`` vs own + cross, "block"): B8 T4096 H32 5210 vs 1340 + 2412
#                (do_bench fwd+bwd 7.539 -> 6.230 ms, extra peak 1.68 -> 2.68 GiB), B16 T1024 H8 672 vs 178 + 323,
#                B64 T256 H4 K32 154 vs 46 + 85; the default "block" since (the do_bench fwd+bwd of the large model,
#                host-bound, read 1.341 vs 1.565 ms in that table, with its unchanged forward at 0.379 vs 0.319);
#                "fused": ``_bwd_fused_kernel`` alone, one program per chunk (2, 4 or 8 warps) doing the own
#                pairs and the crossing terms per key slice (no partials, S_c / D_c from HBM once per chunk; module
#                docstring). H100 run 16 (session 13; ms fwd+bwd / extra peak GiB, "block" vs "fused"): B8 T4096
#                H32 6.381 / 2.68 vs 7.456 / 1.68 (8.173 / 1.18 at 64-row states), B16 T1024 H8 891 vs 1025 GPU
#                us; slower at the default's memory; ``LOWMEM``'s since run 17 (beats ``_bwd_kernel`` at every shape,
#                same memory: module docstring, notes/wkv6.md "session 13: run 17"). Timed and removed (slower at
#                every shape): run 16 "chunk" (the state kernel one program per chunk, S_c and D_c loaded once:
#                3565 vs 2469 us at B8 T4096 H32) and "fused_chunk" (the fused kernel with one block per chunk, no
#                state moves: 17.7 / 32.1 ms fwd+bwd at 32- / 64-row states); run 17 "pair" (the state kernel one
#                program per 32-row chunk on [32, K] tiles: 5028 / 645 / 239 vs 2454 / 323 / 85 us) and False
#                (``_bwd_kernel`` alone, one 4-warp program per block, with its register-cap knob ``bwd_maxnreg``,
#                notes/wkv6.md run 11: 5996 / 771 / 179 vs "fused"'s 5877 / 760 / 147 us at 64-row states);
#                Timed and removed in session 20 (H200 run 24, GPU µs per fwd+bwd at B8 T4096 H32 / B16 T1024 H8 /
#                B64 T256 H4 K32 against the default's 5,859 / 836 / 230; code in git history, branch own32b):
#                "bwd_block" 32, this split on 32-row blocks — the state kernel one program per 32-row chunk with
#                no state moves (cross 2,377 -> 2,077-2,110 µs), the own kernel either on whole [32, 32] tiles
#                (levels 0-4: own 2,693 µs, 6,954 in all) or as two 16-row halves plus the pairs between them
#                read back and added into the partials (own 2,097 µs, 6,389 / 914 / 263); at 64-row states 6,566
#                (2.14 GiB extra peak vs 2.64). "bwd_overlap", the own kernel on a side stream beside the state
#                pass (bit-identical, graph-safe): 5.914 vs 5.915 ms — the own kernel alone fills the GPU (a knob
#                again since session 29, below);
#                Timed and removed in session 28 (H200 run 32, GPU µs per fwd+bwd at B8 T4096 H32 / B4 T2048 H16 /
#                B64 T256 H2 / B1 T16384 H32 against the default's 4,577 / 711 / 227 / 2,781): ``cross_early``, the
#                cross kernel's block loads (rows, partials, scores) issued before its state moves — 4,672 / 730 /
#                233 / 3,117 (cross kernel 2,002 -> 2,105 and 1,228 -> 1,566 µs: the ~46 registers held across the
#                moves); code in git history (session 27). ``own_pipe`` won (own kernel 965 -> 963, 141 -> 132,
#                39 -> 40, 528 -> 507 µs) and is the own kernel's only form since (``_own_block``);
#   bwd_states   the backward's chunk states from "two" kernels (None, the default: ``states._chunk_state_kernel``'s
#                per-chunk ΔD (and ΔS when S_c is not saved), then ``_chunk_scan_kernel``'s scans) or "one" kernel
#                per direction (``states._bwd_states_kernel``: each (sequence, head, K-block, V-block) walks its
#                chunks from the last; S_c, when not saved, from the forward's ``_fwd_states_kernel``, so the same
#                values the forward would have saved): no per-chunk Δ round trip through HBM — 1 GiB less traffic
#                at B8 T4096 H32 for D alone — but T / state_rows serial steps. None: ``_one_bwd_state_pass``
#                ("one" where S_c is saved and T <= ONE_PASS_MAX_T; H200 run 33);
#   bwd_overlap  with ``bwd_split`` "block" in one slice on a GPU, the own kernel (it reads no state) runs on a
#                side stream beside the backward's state pass (the D walk, or the ΔD kernel + scan), joined before
#                the cross kernel; the same kernels, bitwise the same results (tests/test_wkv6.py::
#                test_wkv6_gpu_bwd_overlap, eager and CUDA-graph captured). H200 run 24 timed it at B8 T4096 H32
#                only (5.914 vs 5.915 ms: the own kernel fills that GPU alone) and it went; back in session 29 for
#                the shapes that leave the GPU part idle (run 33, GPU µs: B4 T2048 H16 own 131 beside D 93, B64
#                T256 H2 own 35 beside D 17, of 706 and 189 in all). Untimed, off;
#   split_bytes  with ``bwd_split`` "block", the own and state kernels run on batch slices one after
#                another so that the fp32 partials stay under this many bytes (e.g. 2**28: 4 slices and 0.25
#                instead of 1 GiB at B8 T4096 H32; None: one slice; varlen: always one). Untimed, off;
TUNING = {"save_states": True, "piece_bytes": None, "scan_fill": 0, "scan_pipe": True,
          "state_rows": None, "fwd_scores": None, "fwd_states": None,
          "fwd_pipe": True, "fwd_step": True, "bwd_split": "block", "split_bytes": None, "bwd_states": None,
          "bwd_overlap": False}
LOWMEM = {"save_states": False, "piece_bytes": 2**27, "scan_fill": 1, "scan_pipe": True,
          "state_rows": BT, "fwd_scores": None, "fwd_states": None,
          "fwd_pipe": True, "fwd_step": True, "bwd_split": "fused", "split_bytes": None, "bwd_states": None,
          "bwd_overlap": False}
STATE_ROWS = (None, 32, 64)
FWD_SCORES = (None, False, True)
FWD_STATES = (None, "one", "two")
BWD_SPLIT = ("block", "fused")     # the ``bwd_split`` knob's values
BWD_STATES = (None, "two", "one")


@contextlib.contextmanager
def tuning(**knobs):
    """Override ``TUNING`` inside the block (tests and the dev harness). Not thread-safe; ``save_states`` must be the
    same while torch.compile traces the op (its fake states' shape) and when it runs."""
    bad = set(knobs) - set(TUNING)
    if bad:
        raise ValueError(f"unknown wkv6 chunk knobs {sorted(bad)}; known: {sorted(TUNING)}")
    if knobs.get("state_rows") not in STATE_ROWS:
        raise ValueError(f"wkv6 chunk knob state_rows must be one of {STATE_ROWS}; got {knobs['state_rows']!r}")
    if not isinstance(knobs.get("fwd_step", False), bool):
        raise ValueError(f"wkv6 chunk knob fwd_step must be True or False (32-row steps where the scored walk runs "
                         f"at 32-row states); got {knobs['fwd_step']!r}")
    if not isinstance(knobs.get("bwd_overlap", False), bool):
        raise ValueError(f"wkv6 chunk knob bwd_overlap must be True or False (the own kernel on a side stream beside "
                         f"the backward's state pass); got {knobs['bwd_overlap']!r}")
    if knobs.get("fwd_scores") not in FWD_SCORES:
        raise ValueError(f"wkv6 chunk knob fwd_scores must be one of {FWD_SCORES}; got {knobs['fwd_scores']!r}")
    if knobs.get("fwd_states") not in FWD_STATES:
        raise ValueError(f"wkv6 chunk knob fwd_states must be one of {FWD_STATES}; got {knobs['fwd_states']!r}")
    if knobs.get("bwd_states") not in BWD_STATES:
        raise ValueError(f"wkv6 chunk knob bwd_states must be one of {BWD_STATES}; got {knobs['bwd_states']!r}")
    if knobs.get("bwd_split", "block") not in BWD_SPLIT:
        raise ValueError(f"wkv6 chunk knob bwd_split must be one of {BWD_SPLIT}; got {knobs['bwd_split']!r}")
    if not isinstance(knobs.get("scan_pipe", True), bool):
        raise ValueError(f"wkv6 chunk knob scan_pipe must be True or False (the state scans keep a second chunk's "
                         f"loads in flight); got {knobs['scan_pipe']!r}")
    for name in ("split_bytes", "piece_bytes"):
        val = knobs.get(name)
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val <= 0):
            raise ValueError(f"wkv6 chunk knob {name} must be None or a positive int (bytes); got {val!r}")
    old = dict(TUNING)
    TUNING.update(knobs)
    try:
        yield
    finally:
        TUNING.clear()
        TUNING.update(old)


def _state_shape(B, T, H, K, V, N, varlen, device):
    """Shape of the states the forward saves (empty when it keeps none: ``_fwd_plan``)."""
    _, keep, rows, scores = _fwd_plan(N, H, V, T, device, TUNING)
    if not keep:
        return (0,)
    shape = _par_state_shape(B, T, H, K, V, N, varlen, rows)
    if _keeps_scores(keep, scores, TUNING):     # one flat buffer: the states, then the scores
        return (math.prod(shape) + B * T * H * SB,)
    return shape


def _bwd_pieces(B, T, H, K, V, recompute, varlen, limit, bt):
    """Batch ranges [b0, b1) the backward runs one after another (``limit``: the ``piece_bytes`` knob; ``bt``: the
    ``state_rows`` knob)."""
    if varlen or limit is None:
        return [(0, B)]
    per_b = _cdiv(T, bt) * H * K * V * 4 * (2 if recompute else 1)
    nb = max(1, min(B, limit // per_b))
    return [(b0, min(B, b0 + nb)) for b0 in range(0, B, nb)]


def _scan_bv(N, H, V, device, kn):
    """The state scan's V-block width: None (the state kernel's) unless ``scan_fill``, then narrowed (down to 16)
    until the scan has >= scan_fill × #SMs programs."""
    if not kn["scan_fill"]:
        return None
    scan_bv = 64
    while scan_bv > 16 and N * H * _cdiv(V, scan_bv) < kn["scan_fill"] * num_sms(device):
        scan_bv //= 2
    return scan_bv


def _bwd_piece(r, k, v, w, u, do, dht, h0, cu_seqlens, scale, hs, outs, kn, bt, a=None):
    """One backward piece: state pass (D_c, and S_c unless ``hs`` is given) + ``_bwd_split`` (``bwd_split``),
    writing into the gradient views ``outs`` = (dr, dk, dv, dw); ``bt``: the state rows; ``a``: the forward's
    scores [B, T, H, SB] fp32 when it kept them (else None). Returns (du [H, K] fp32, dh0 or None)."""
    w = _w_for_dots(w)       # as ``_chunk_fwd_impl``'s
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    dev = r.device
    own = None
    if _overlaps(r, kn):     # the own kernel reads no state: on a side stream beside the state pass
        S, NT, cmap = _par_slots(B, T, N, cu_seqlens, dev, bt)
        own = _own_buffers(B, T, H, K, S, bt, a, dev)     # made on this stream, freed here after the cross kernel
        main, side = torch.cuda.current_stream(dev), _side_stream(dev)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            _launch_own(r, k, v, w, u, do, *own, _cu(cu_seqlens), cmap, scale, NT, bt, a is not None)
    if _one_bwd_state_pass(T, hs is not None, kn):  # D_c in one kernel; S_c (unless saved): the forward's pass
        if hs is None:
            hs = _walk_pass(k, v, w, h0, cu_seqlens, bt, False)[0]
        hd, dh0, S, NT, cmap, cu = _walk_pass(r, do, w, dht, cu_seqlens, bt, True, scale)
    else:
        mode = "bwd" if hs is None else "bwd_d"
        buf, _, dh0, S, NT, cmap, cu = _par_states(r, k, v, w, do, scale, h0, dht, cu_seqlens, mode,
                                                   _scan_bv(N, H, V, dev, kn), bt, kn["scan_pipe"])
        hs, hd = (buf[0], buf[1]) if hs is None else (hs, buf[0])
    if own is not None:
        main.wait_stream(side)
    return _bwd_split(r, k, v, w, u, do, hs, hd, outs, cu, cmap, scale, NT, S, bt, kn, a, own), dh0


def _overlaps(r, kn) -> bool:
    """``bwd_overlap``: the split backward in one slice on a GPU (the interpreter runs one stream)."""
    return (kn["bwd_overlap"] and r.is_cuda and not INTERPRET and kn["bwd_split"] == "block"
            and not kn["split_bytes"])


@functools.lru_cache(maxsize=None)
def _side_stream(dev: torch.device) -> "torch.cuda.Stream":
    """One side stream per device for ``bwd_overlap`` (cached: a stream per call would cost a host-side create)."""
    return torch.cuda.Stream(device=dev)


def _own_buffers(B, T, H, K, S, bt, a, dev):
    """``_bwd_own_kernel``'s outputs for B batch elements (a slice's worth when the backward runs in slices): ([pq,
    pk, pa (None when the forward kept the scores ``a``), pw] fp32 partials [B, T, H, K or SB], du partial rows
    [S · bt/SB, H, K] fp32 for all S slots)."""
    parts = [new_empty((B, T, H, n), torch.float32, dev) if i != 2 or a is None else None
             for i, n in enumerate((K, K, SB, K))]
    return parts, new_empty((S * (bt // SB), H, K), torch.float32, dev)


def _launch_own(r, k, v, w, u, do, parts, du_part, cu, cmap, scale, NT, bt, has_a):
    """``_bwd_own_kernel`` over the slots of the batch slice r, ... (du_part: their du rows): the own pairs' fp32
    partials into ``parts`` (``_own_buffers``)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    prec = _prec(r.dtype, bwd=True)
    S = du_part.shape[0] // (bt // SB)
    launch(_bwd_own_kernel)[(S, H)](
        r, k, v, w, u, do, *parts, du_part, cu, cmap, scale, T, NT, _grid_bucket(S * H), H=H, K=K, V=V, BT=bt, SB=SB,
        BK=_bk(K), BV=_bk(V), VARLEN=cu is not None, PREC=prec, LOG=LOG, HALF_B=_half_dot(r.dtype),
        FAST=not INTERPRET, DWP=_dw_prec(prec), HAS_A=has_a)


def _bwd_split(r, k, v, w, u, do, hs, hd, outs, cu, cmap, scale, NT, S, bt, kn, a=None, own=None):
    """The backward's kernels (``bwd_split``): "block", ``_bwd_own_kernel`` then ``_bwd_cross_kernel``, or
    "fused", ``_bwd_fused_kernel`` alone, into the gradient views
    ``outs``, given the chunk states hs / hd [S, H, K, V] fp32 (S slots, NT per sequence, ``bt`` rows). With
    ``split_bytes`` (fixed-length batches) the two kernels run on batch slices one after another, so that the fp32
    partials stay under that many bytes (one batch element at least). ``a``: the forward's scores [B, T, H, SB]
    fp32 (``_keeps_scores``), read by the cross kernel in place of the own kernel's (which then computes none), or
    None. ``own``: the own kernel's outputs (``_own_buffers``) when it already ran (``bwd_overlap``; one slice).
    Returns du [H, K] fp32."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    nb = bt // SB
    per_b = T * H * (3 * K + (0 if a is not None else SB)) * 4
    step = B if cu is not None or not kn["split_bytes"] else max(1, min(B, kn["split_bytes"] // per_b))
    prec, cross_prec = _prec(r.dtype, bwd=True), _prec(r.dtype, bwd=True, cross=True)
    meta = dict(H=H, K=K, V=V, BT=bt, SB=SB, BK=_bk(K), BV=_bk(V), VARLEN=cu is not None, PREC=prec)
    if kn["bwd_split"] == "fused":     # one kernel, no partials
        du_part = new_empty((S * nb, H, K), torch.float32, r.device)
        launch(_bwd_fused_kernel)[(S, H)](r, k, v, w, u, do, hs, hd, *outs, du_part, cu, cmap, scale, T, NT,
                                          _grid_bucket(S * H), LOG=LOG,
                                          HALF_B=_half_dot(r.dtype), FAST=not INTERPRET,
                                          DWP=_dw_prec(prec), **meta)
        return du_part.sum(0)
    # the own pairs' dq, dk, scores A, dw (the own kernel's pq, pk, pa, pw) and du rows
    parts, du_part = own or _own_buffers(step, T, H, K, S, bt, a, r.device)
    finish = step == B              # one cross launch: its extra programs sum du (no reduction kernel)
    du = new_empty((H, K), torch.float32, r.device) if finish else None
    for b0 in range(0, B, step):
        b1 = min(B, b0 + step)
        cut = (lambda x: x) if step == B else (lambda x: x[b0:b1])  # noqa: E731
        s0, s1 = (0, S) if step == B else (b0 * NT, b1 * NT)        # the slice's slots (fixed length: n·NT + i)
        ps = [None if x is None else x[:b1 - b0] for x in parts]
        if own is None:
            _launch_own(cut(r), cut(k), cut(v), cut(w), u, cut(do), ps, du_part[s0 * nb:s1 * nb], cu, cmap, scale,
                        NT, bt, a is not None)
        if a is not None:
            ps[2] = cut(a)
        launch(_bwd_cross_kernel)[((s1 - s0) * nb + finish, H)](
            cut(r), cut(k), cut(v), cut(w), cut(do), hs[s0:s1], hd[s0:s1], *ps, *[cut(g) for g in outs],
            du_part if finish else None, du, cu, cmap, scale, T, NT, S * nb if finish else 0,
            _grid_bucket(((s1 - s0) * nb + finish) * H), FINISH_DU=finish,
            **{**meta, "PREC": cross_prec})
    return du if finish else du_part.sum(0)


def _bwd_rows(B, T, H, K, V, N, cu_seqlens, device, kn, states):
    """The backward's ``state_rows``: the forward's rule (``_fwd_plan``); with the default (None), the spacing of the
    saved ``states`` when they have the other one's shape (e.g. a forward forced to the other mode); a flat buffer
    (``_saved_buffers``: the states, then the forward's scores) by its size. A saved shape that fits neither is a
    one-line error."""
    rows = _fwd_plan(N, H, V, T, device, kn)[2]
    if states is None:
        return rows
    varlen = cu_seqlens is not None
    n_a = B * T * H * SB if states.dim() == 1 else 0

    def fit(b):
        shape = _par_state_shape(B, T, H, K, V, N, varlen, b)
        return states.numel() == math.prod(shape) + n_a if n_a else states.shape == shape
    fits = [b for b in ((rows,) if kn["state_rows"] else (rows, 96 - rows)) if fit(b)]
    if not fits:
        raise ValueError(f"wkv6: the forward saved states of shape {tuple(states.shape)}, not those of state_rows = "
                         f"{rows}; keep the chunk knobs the same for the forward and its backward")
    return fits[0]


def _chunk_bwd_impl(r, k, v, w, u, do, dht, h0, cu_seqlens, scale, states=None, knobs=None):
    """Gradients (dr, dk, dv, dw, du, dh0 or None). ``states``: the forward's chunk-start states (else recomputed),
    or one flat buffer of them and its blocks' scores (``_keeps_scores``).
    du is summed in fp32 and rounded to u's dtype once. ``knobs`` as in ``_chunk_fwd_impl``."""
    kn = knobs or TUNING
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    saved = states is not None and states.numel() > 0
    outs = [grad_slot(x) if x is not w else None for x in (r, k, v, w)]     # in a producer's buffer (_slots)
    outs = [o if o is not None else new_empty(x.shape, x.dtype, r.device) for o, x in zip(outs, (r, k, v, w))]
    rows = _bwd_rows(B, T, H, K, V, N, cu_seqlens, r.device, kn, states if saved else None)
    a = None
    if saved and states.dim() == 1:     # the states and the forward's scores in one buffer (``_saved_buffers``)
        states, a = _saved_views(states, B, T, H, N, K, V, cu_seqlens is not None, rows)
    NT = _cdiv(T, rows)
    pieces = _bwd_pieces(B, T, H, K, V, not saved, cu_seqlens is not None, kn["piece_bytes"], rows)
    dus, dh0s = [], []
    for b0, b1 in pieces:
        cut = lambda x: x if x is None or len(pieces) == 1 else x[b0:b1]  # noqa: E731
        hs = None if not saved else states if len(pieces) == 1 else states[b0 * NT:b1 * NT]
        du, dh0 = _bwd_piece(cut(r), cut(k), cut(v), cut(w), u, cut(do), cut(dht), cut(h0), cu_seqlens, scale, hs,
                             [cut(g) for g in outs], kn, rows, cut(a))
        dus.append(du)
        dh0s.append(dh0)
    du = (dus[0] if len(dus) == 1 else torch.stack(dus).sum(0)).to(u.dtype)
    dh0 = None if h0 is None else dh0s[0] if len(dh0s) == 1 else torch.cat(dh0s)
    return (*outs, du, dh0)


_wkv6_chunk_fwd_op = _make_ops("wkv6", _chunk_fwd_impl, _chunk_bwd_impl, _state_shape)
_wkv6_lowmem_fwd_op = _make_ops("wkv6_lowmem", functools.partial(_chunk_fwd_impl, knobs=LOWMEM),
                                functools.partial(_chunk_bwd_impl, knobs=LOWMEM), lambda *shape: (0,))


MAX_BKV = 160     # BK + BV above this: the backward's fp32 tiles exceed the H100's shared memory (K=V=128 needs
#                   256 KiB; K=32 V=96 ran on the H100)


def _chunk_entry(op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens):
    if r.dim() == 4 and v.dim() == 4 and _bk(r.shape[-1]) + _bk(v.shape[-1]) > MAX_BKV:
        from kernels.wkv6.fused import wkv6_fused
        return wkv6_fused(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
    return _run(op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)


def wkv6_chunk(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6 wkv, tensor-core chunk algorithm (the default behind ``kernels.wkv6.wkv6``). Where
    pow2(K) + pow2(V) > 160 (e.g. K = V = 128; not supported by its backward yet) it runs the sequential
    ``wkv6_fused`` instead (same results)."""
    return _chunk_entry(_wkv6_chunk_fwd_op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)


def wkv6_chunk_lowmem(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """``wkv6_chunk`` with the ``LOWMEM`` knobs (custom ops ``groundthink::wkv6_lowmem_*``): nothing saved between
    forward and backward but the inputs, the fused backward (``bwd_split`` "fused": no fp32 partials), its fp32
    state buffers ≤ 128 MiB per batch slice. Same results; H100 run 17 at B8 T4096 H32: extra peak of fwd+bwd 0.76
    GiB vs the default's 2.68, fwd+bwd 9.067 vs 6.233 ms."""
    return _chunk_entry(_wkv6_lowmem_fwd_op, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
